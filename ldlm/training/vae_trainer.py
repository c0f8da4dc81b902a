"""Stage 1 training: the TextVAE with reconstruction + β·KL + λ·alignment, as a LightningModule."""
from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ldlm.align.losses import AlignmentHead, AlignmentSchedule, repa_loss, vavae_loss
from ldlm.align.teacher import FrozenTeacher, load_tokenizer, pad_id_of
from ldlm.data.token_blocks import BlockDataModule, latent_mask
from ldlm.errors import LdlmError
from ldlm.pipelines.loading import load_vae, vae_folder
from ldlm.training.checkpoint_io import atomic_dir
from ldlm.training.config import VAEExperiment
from ldlm.training.optim import adamw_warmup_cosine
from ldlm.training.runner import Job, run
from ldlm.vae.model import TextVAE


class TextVAEModule(L.LightningModule):
    """Trains a TextVAE; optional MLP heads align its latents to standardized teacher features."""

    def __init__(self, vae: TextVAE, cfg: dict, seen_tokens: torch.Tensor, teacher_hidden: int | None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["vae", "seen_tokens"])
        self.vae = vae
        loss, align = cfg["loss"], cfg["align"]
        self.loss_cfg, self.train_cfg = loss, cfg["train"]
        self.aligned = align["weight"] > 0 and teacher_hidden is not None
        self.heads = nn.ModuleList(
            AlignmentHead(vae.config.latent_channels, teacher_hidden, align["head_hidden"])
            for _ in cfg["teacher"]["layers"]
        ) if self.aligned else nn.ModuleList()
        self.align_fn = repa_loss if align["loss"] == "repa" else partial(
            vavae_loss, margin_cos=align["margin_cos"], margin_dist=align["margin_dist"],
            dist_weight=align["dist_weight"])
        self.schedule = AlignmentSchedule(align["weight"], align["warmup_steps"], align["stop_step"])
        vocab = vae.config.vocab_size
        lookup = torch.full((vocab,), -1, dtype=torch.long)
        lookup[seen_tokens] = torch.arange(len(seen_tokens))
        unseen = torch.ones(vocab, dtype=torch.bool)
        unseen[seen_tokens] = False
        self.register_buffer("seen", seen_tokens.clone(), persistent=False)
        self.register_buffer("lookup", lookup, persistent=False)
        self.register_buffer("unseen", torch.nonzero(unseen).squeeze(1), persistent=False)

    def _perturb(self, z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Training-time robustness: Gaussian noise of random σ in units of ``scale`` (the batch's per-channel latent
        std) and latent dropout."""
        sigma = torch.rand(z.shape[0], 1, 1, device=z.device) * self.loss_cfg["latent_noise"]
        z = z + sigma * scale * torch.randn_like(z)
        keep = torch.rand(z.shape[0], z.shape[1], 1, device=z.device) >= self.loss_cfg["latent_dropout"]
        return z * keep

    def _candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax rows while training: every seen token plus random unseen ones as negatives."""
        count = min(self.loss_cfg["negatives"], len(self.unseen))
        pick = self.unseen[torch.randint(len(self.unseen), (count,), device=self.unseen.device)]
        return torch.cat([self.seen, pick]), self.lookup

    def _latents(self, batch: dict[str, torch.Tensor], train: bool):
        """Posterior (mean, log-variance) of the batch's blocks and the latents their decoder reads: each block's
        own (B, K, C), and for a context decoder its neighbours' (B, 2c, K, C) and which of them it sees (B, 2c); the
        neighbours are encoded with the blocks, perturbed alike, and each hidden at random while training."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        neighbours = present = None
        if "context_ids" in batch:
            present = batch["context_mask"].any(-1)
            if train:
                present &= torch.rand(present.shape, device=present.device) >= self.loss_cfg["context_dropout"]
            context_mask = batch["context_mask"].clone()
            context_mask[..., 0] = 1  # an absent neighbour is encoded as one pad token, and never read
            ids = torch.cat([ids[:, None], batch["context_ids"]], 1).flatten(0, 1)
            mask = torch.cat([mask[:, None], context_mask], 1).flatten(0, 1)
        mean, logvar = self.vae.encode_distribution(ids, mask, self.loss_cfg["token_dropout"] if train else 0.0)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if train else mean
        if train:  # noise in units of the batch's own blocks, not of the neighbours' padding stand-ins
            own = z if present is None else z.reshape(len(present), -1, *z.shape[1:])[:, 0]
            z = self._perturb(z, own.detach().std(dim=(0, 1)))
        if present is not None:
            shape = (len(present), -1, *mean.shape[1:])
            z = z.reshape(shape)
            neighbours, z = z[:, 1:], z[:, 0]
            mean, logvar = mean.reshape(shape)[:, 0], logvar.reshape(shape)[:, 0]
        return mean, logvar, z, neighbours, present

    def _common_step(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        mean, logvar, z, neighbours, present = self._latents(batch, train)
        states = self.vae.decoder_states(z, neighbours, present)[mask.bool()]
        targets = ids[mask.bool()]
        if train:
            candidates, lookup = self._candidates()
            logits, targets = self.vae.logits(states, candidates), lookup[targets]
        else:
            logits = self.vae.logits(states)
        metrics = {"rec": F.cross_entropy(logits, targets), "acc": (logits.argmax(-1) == targets).float().mean()}
        lat_mask = latent_mask(mask, self.vae.config.latents_per_block).float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar)
        per_channel = (kl * lat_mask[..., None]).sum((0, 1)) / lat_mask.sum().clamp(min=1)
        metrics["kl"] = per_channel.sum()
        loss = metrics["rec"] + self.loss_cfg["kl_weight"] * per_channel.clamp(min=self.loss_cfg["free_bits"]).sum()
        if self.aligned and "features" in batch:
            pairs = [self.align_fn(head(mean), batch["features"][:, i].float(), lat_mask)
                     for i, head in enumerate(self.heads)]
            metrics["align"] = torch.stack([p[0] for p in pairs]).mean()
            metrics["align_cos"] = torch.stack([p[1] for p in pairs]).mean()
            weight = self.schedule(self.global_step)
            metrics["align_weight"] = torch.tensor(weight)
            loss = loss + weight * metrics["align"]
        metrics["loss"] = loss
        return metrics

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        metrics = self._common_step(batch, train=True)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, prog_bar=False)
        self.log("acc", metrics["acc"], prog_bar=True, logger=False)
        return metrics["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        metrics = self._common_step(batch, train=False)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=False, sync_dist=True)
        self.log("val_acc", metrics["acc"], prog_bar=True, logger=False, sync_dist=True)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.train_cfg)


@torch.no_grad()
def measure_latent_stats(vae: TextVAE, blocks, batch_size: int = 512) -> None:
    """Store per-channel mean/std of posterior means over the valid latents of ``blocks`` in the VAE."""
    vae.eval()
    total, sq, count = 0.0, 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks.input_ids[start : start + batch_size].to(vae.device)
        mask = blocks.attention_mask[start : start + batch_size].to(vae.device)
        mean = vae.encode(ids, mask).double()[latent_mask(mask, vae.config.latents_per_block).bool()]
        total, sq, count = total + mean.sum(0), sq + mean.pow(2).sum(0), count + len(mean)
    mu = total / count
    vae.latent_mean.copy_(mu.float())
    vae.latent_std.copy_((sq / count - mu.pow(2)).clamp(min=1e-8).sqrt().float())


def build_vae(cfg, tokenizer, teacher: FrozenTeacher) -> TextVAE:
    m = cfg.model
    vae = TextVAE(
        vocab_size=teacher.input_embeddings().shape[0], block_length=cfg.data.block_length,
        latents_per_block=m.latents_per_block, latent_channels=m.latent_channels, d_model=m.d_model,
        d_embed=m.d_embed, heads=m.heads, encoder_layers=m.encoder_layers, decoder_layers=m.decoder_layers,
        dropout=m.dropout, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id_of(tokenizer),
        context_blocks=m.context_blocks,
    )
    vae.set_token_table(teacher.input_embeddings().cpu())
    return vae


def start_vae(cfg, tokenizer, teacher: FrozenTeacher) -> TextVAE:
    """A new VAE, or the one ``cfg.init`` names, its decoder deepened or given context as the config asks and its
    encoder frozen when ``model.freeze_encoder``."""
    if cfg.init is None:
        return build_vae(cfg, tokenizer, teacher)
    vae, _ = load_vae(cfg.init)
    if cfg.model.context_blocks != vae.config.context_blocks:
        vae = vae.with_context(cfg.model.context_blocks)
    if cfg.model.decoder_layers != vae.config.decoder_layers:
        vae = vae.with_decoder_layers(cfg.model.decoder_layers)
    vae.train().requires_grad_(True)
    if cfg.model.freeze_encoder:
        vae.freeze_encoder()
    return vae


def check_init(cfg: VAEExperiment) -> None:
    """The VAE in ``cfg.init`` must fit the configured blocks and latents (checked before any heavy work)."""
    if cfg.init is None:
        return
    saved = TextVAE.load_config(vae_folder(cfg.init))
    for key, value in (("block_length", cfg.data.block_length), ("latents_per_block", cfg.model.latents_per_block),
                       ("latent_channels", cfg.model.latent_channels)):
        if saved.get(key) != value:
            raise LdlmError(f"init: the VAE in {cfg.init} has {key}={saved.get(key)}, the config {value}")
    if (layers := saved.get("decoder_layers", 3)) > cfg.model.decoder_layers:
        raise LdlmError(f"init: the VAE in {cfg.init} has decoder_layers={layers}, the config "
                        f"{cfg.model.decoder_layers} (a decoder can be deepened, not cut)")
    if saved.get("context_blocks", 0) not in (0, cfg.model.context_blocks):
        raise LdlmError(f"init: the VAE in {cfg.init} reads context_blocks={saved['context_blocks']}, the config "
                        f"{cfg.model.context_blocks} (only a decoder without context can be given one)")


def train_vae(cfg: VAEExperiment) -> Path | None:
    """Train a TextVAE (see :func:`ldlm.training.runner.run`); export it with its tokenizer to ``output_dir/vae``
    (diffusers layout) and return that path on the first process (None on the others)."""
    check_init(cfg)
    return run(cfg, _prepare)


def _prepare(cfg: VAEExperiment, out: Path) -> Job:
    tokenizer = load_tokenizer(cfg.teacher.name, cfg.teacher.gguf_file)
    aligned = cfg.align.weight > 0
    teacher = FrozenTeacher(cfg.teacher.name, list(cfg.teacher.layers) if aligned else [0],
                            gguf_file=cfg.teacher.gguf_file, device_map=cfg.teacher.device_map)
    data = BlockDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.model.latents_per_block,
                           teacher if aligned else None, cfg.teacher, cfg.model.context_blocks)
    data.setup()
    data.teacher = None  # features are cached; free the teacher's layers
    module = TextVAEModule(start_vae(cfg, tokenizer, teacher), asdict(cfg), data.seen_tokens(),
                           teacher.hidden_size if aligned else None)
    del teacher

    def export() -> Path:
        vae = module.vae.cpu()
        if not cfg.model.freeze_encoder:  # a frozen encoder keeps the code, and so its statistics
            measure_latent_stats(vae, data.train_set)
        with atomic_dir(out / "vae") as tmp:
            vae.save_pretrained(tmp)
        with atomic_dir(out / "tokenizer") as tmp:
            tokenizer.save_pretrained(tmp)
        return out / "vae"

    return Job(module, data, export)
