"""Training of the autoregressive baseline: next-token cross-entropy on EOS-terminated documents of the DiT's corpus,
with the pipeline's tokenizer and token table, through the shared Lightning Trainer; exported as ``model/`` +
``tokenizer/``."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanMetric

from ldlm.ar_config import ARDataConfig, ARExperiment
from ldlm.ar_model import CausalLM, generate_texts
from ldlm.checkpoint_io import atomic_dir
from ldlm.data import make_loader, split_documents, training_documents
from ldlm.errors import LdlmError
from ldlm.latents import load_vae
from ldlm.optim import adamw_warmup_cosine
from ldlm.trainer import fit

IGNORE = -100  # target of positions past a document's end


class TokenWindows(Dataset):
    """EOS + an EOS-terminated document as ``max_tokens`` next-token pairs (``input_ids``, ``targets``): a random
    window of a longer document when ``crop`` is set, else its start; shorter ones are padded (targets ``IGNORE``)."""

    def __init__(self, documents: list[list[int]], eos: int, max_tokens: int, crop: bool = True) -> None:
        self.documents, self.eos, self.max_tokens, self.crop = documents, eos, max_tokens, crop

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        tokens = torch.tensor([self.eos, *self.documents[i]])
        extra = len(tokens) - 1 - self.max_tokens
        start = int(torch.randint(extra + 1, ())) if self.crop and extra > 0 else 0
        window = tokens[start : start + self.max_tokens + 1]
        n = len(window) - 1
        input_ids = torch.full((self.max_tokens,), self.eos, dtype=torch.long)
        targets = torch.full((self.max_tokens,), IGNORE, dtype=torch.long)
        input_ids[:n], targets[:n] = window[:-1], window[1:]
        return {"input_ids": input_ids, "targets": targets}


class TokenDataModule(L.LightningDataModule):
    """Train/val token windows of the configured corpora (the document split of ``ldlm.data.split_documents``)."""

    def __init__(self, cfg: ARDataConfig, tokenizer, batch_size: int) -> None:
        super().__init__()
        self.cfg, self.tokenizer, self.batch_size = cfg, tokenizer, batch_size
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        documents = training_documents(self.cfg, self.tokenizer)
        train, val = split_documents(len(documents), self.cfg.val_fraction, self.cfg.seed)
        eos, n = self.tokenizer.eos_token_id, self.cfg.max_tokens
        self.train_set = TokenWindows([documents[i] for i in train], eos, n)
        self.val_set = TokenWindows([documents[i] for i in val], eos, n, crop=False)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.batch_size, self.cfg.num_workers, train=True)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.batch_size, self.cfg.num_workers, train=False)


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


class SampleTexts(L.Callback):
    """Every ``cfg['every']`` steps, append a few unconditional samples (seed 0) to ``samples.jsonl``."""

    def __init__(self, tokenizer, path: Path, cfg: dict) -> None:
        self.tokenizer, self.path, self.cfg = tokenizer, path, cfg

    def on_train_batch_end(self, trainer: L.Trainer, module: ARModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.cfg["every"] or step % self.cfg["every"] or not trainer.is_global_zero:
            return
        generator = torch.Generator(device=module.device).manual_seed(0)
        texts = generate_texts(module.model, self.tokenizer, None, self.cfg["num_samples"],
                               max_new_tokens=self.cfg["max_new_tokens"], top_p=self.cfg["top_p"],
                               generator=generator)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "texts": texts}) + "\n")


def build_model(cfg: ARExperiment, token_table: torch.Tensor, eos_token_id: int) -> CausalLM:
    """The configured preset over ``token_table`` (V, d_embed)."""
    m = cfg.model
    presets = {"tiny": CausalLM.tiny, "small": CausalLM.small, "base": CausalLM.base}
    if m.preset not in presets:
        raise LdlmError(f"model.preset must be one of {', '.join(presets)}, got '{m.preset}'")
    overrides = {k: getattr(m, k) for k in ("hidden_size", "num_layers", "num_heads") if getattr(m, k) is not None}
    try:
        model = presets[m.preset](vocab_size=token_table.shape[0], d_embed=token_table.shape[1],
                                  mlp_ratio=m.mlp_ratio, eos_token_id=eos_token_id, **overrides)
    except ValueError as err:
        raise LdlmError(f"config error in model: {err}") from None
    model.set_token_table(token_table)
    return model


def train_ar(cfg: ARExperiment) -> Path | None:
    """Train the baseline from a validated config; export it with the VAE's tokenizer to ``output_dir/model`` and
    ``output_dir/tokenizer`` (load both with :func:`ldlm.ar_model.load_ar`). Returns the output folder on the first
    process (None on the others)."""
    if cfg.data.max_tokens < 1 or not 0 < cfg.sample.top_p <= 1:
        raise LdlmError("data.max_tokens must be positive and sample.top_p lie in (0, 1]")
    L.seed_everything(cfg.train.seed, workers=True)
    vae, tokenizer = load_vae(cfg.vae)
    model = build_model(cfg, vae.token_table, tokenizer.eos_token_id)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    data = TokenDataModule(cfg.data, tokenizer, cfg.train.batch_size)
    module = ARModule(model, OmegaConf.to_container(cfg))
    samples = SampleTexts(tokenizer, out / "samples.jsonl", OmegaConf.to_container(cfg.sample))
    trainer = fit(module, data, cfg.train, out, [samples])
    if not trainer.is_global_zero:
        return None
    with atomic_dir(out / "tokenizer") as tmp:
        tokenizer.save_pretrained(tmp)
    with atomic_dir(out / "model") as tmp:
        model.cpu().save_pretrained(tmp)
    return out
