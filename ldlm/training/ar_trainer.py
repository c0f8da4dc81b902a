"""Training of the autoregressive baseline: next-token cross-entropy on EOS-terminated documents of the DiT's corpus,
with the pipeline's tokenizer and token table, through the shared runner; exported as ``model/`` + ``tokenizer/``."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from ldlm.baselines.causal_lm import CausalLM, generate_texts, load_ar
from ldlm.data import IGNORE
from ldlm.data.token_windows import TokenDataModule
from ldlm.errors import LdlmError
from ldlm.pipelines.loading import load_vae
from ldlm.training.checkpoint_io import atomic_dir
from ldlm.training.config import ARExperiment, build_preset
from ldlm.training.optim import adamw_warmup_cosine
from ldlm.training.runner import Job, SampleTexts, run


class ARModule(L.LightningModule):
    """Next-token cross-entropy per predicted token (logits only at positions with a target); validation logs the
    token-weighted mean loss."""

    def __init__(self, model: CausalLM, cfg: dict) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model, self.train_cfg = model, cfg["train"]
        self.val_loss = MeanMetric()

    def _common_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss over the batch's predicted tokens, and their count. Trailing padding is cut to the longest
        document first (causal attention: the kept positions are unchanged)."""
        width = int((batch["targets"] != IGNORE).sum(1).max())
        targets = batch["targets"][:, :width]
        keep = targets != IGNORE
        logits = self.model.logits(self.model.hidden_states(batch["input_ids"][:, :width])[keep])
        return F.cross_entropy(logits.float(), targets[keep]), keep.sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._common_step(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, count = self._common_step(batch)
        self.val_loss.update(loss, count)  # weighted by tokens, synced across ranks at epoch end
        self.log("val/loss", self.val_loss)
        self.log("val_loss", loss, prog_bar=True, logger=False, sync_dist=True, batch_size=len(batch["targets"]))

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.train_cfg)


def build_model(cfg: ARExperiment, token_table: torch.Tensor, eos_token_id: int) -> CausalLM:
    """The configured preset over ``token_table`` (V, d_embed)."""
    model = build_preset(CausalLM, cfg.model, vocab_size=token_table.shape[0], d_embed=token_table.shape[1],
                         eos_token_id=eos_token_id)
    model.set_token_table(token_table)
    return model


def load_weights(model: CausalLM, baseline: str) -> None:
    """Start from the weights of an exported baseline, which must have the same shape and token table."""
    trained, _ = load_ar(baseline)
    diff = sorted(k for k in model.config if not k.startswith("_") and trained.config.get(k) != model.config[k])
    if diff:
        raise LdlmError(f"init: the baseline in {baseline} differs from the configured one in {', '.join(diff)}")
    if not torch.equal(trained.token_table, model.token_table):
        raise LdlmError(f"init: the baseline in {baseline} reads another token table than the configured VAE's")
    model.load_state_dict(trained.state_dict())


def train_ar(cfg: ARExperiment) -> Path | None:
    """Train the baseline (see :func:`ldlm.training.runner.run`); export it with the VAE's tokenizer to
    ``output_dir/model`` and ``output_dir/tokenizer`` (load both with :func:`ldlm.baselines.causal_lm.load_ar`) and
    return the output folder on the first process (None on the others)."""
    return run(cfg, _prepare)


def _prepare(cfg: ARExperiment, out: Path) -> Job:
    vae, tokenizer = load_vae(cfg.vae)
    model = build_model(cfg, vae.token_table, tokenizer.eos_token_id)
    if cfg.init is not None:
        load_weights(model, cfg.init)

    def sample(module: ARModule) -> list[str]:
        generator = torch.Generator(device=module.device).manual_seed(0)
        return generate_texts(module.model, tokenizer, None, cfg.sample.num_samples,
                              max_new_tokens=cfg.sample.max_new_tokens, top_p=cfg.sample.top_p, generator=generator)

    def export() -> Path:
        with atomic_dir(out / "tokenizer") as tmp:
            tokenizer.save_pretrained(tmp)
        with atomic_dir(out / "model") as tmp:
            model.cpu().save_pretrained(tmp)
        return out

    data = TokenDataModule(cfg.data, tokenizer, cfg.train.batch_size)
    samples = SampleTexts(sample, out / "samples.jsonl", cfg.sample.every)
    return Job(ARModule(model, asdict(cfg)), data, export, [samples])
