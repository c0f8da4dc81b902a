"""Latent classifiers for gradient guidance: a small transformer over standardized VAE latents predicting content
labels of a whole window (multilabel) or a coarse POS tag for every token position (tagging)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from omegaconf import OmegaConf
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MultilabelF1Score

from ldlm.checkpoint_io import atomic_dir
from ldlm.classifier_config import TASKS, ClassifierExperiment
from ldlm.classifier_data import ClassifierDataModule, label_field
from ldlm.errors import LdlmError
from ldlm.latents import end_block_latents, load_vae
from ldlm.optim import adamw_warmup_cosine
from ldlm.postags import IGNORE
from ldlm.trainer import fit


class LatentClassifier(ModelMixin, ConfigMixin):
    """Standardized latents (B, N, C), N = blocks·K ≤ max_blocks·K → logits: (B, labels) for ``multilabel``
    (mean-pooled), (B, N / K · block_length, labels) for ``tagging`` (one distribution per token position; latent
    ``i`` predicts the tags of its ``block_length / K`` tokens). Inputs shorter than ``max_blocks`` blocks are
    padded with the stored end-of-text block latents, as in training."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        latents_per_block: int = 4,
        block_length: int = 16,
        max_blocks: int = 5,
        task: str = "multilabel",
        labels: list[str] | None = None,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got '{task}'")
        if not labels:
            raise ValueError("a classifier needs at least one label")
        if block_length % latents_per_block:
            raise ValueError(f"block_length {block_length} is not a multiple of latents_per_block {latents_per_block}")
        self.span = block_length // latents_per_block
        self.register_buffer("end_block", torch.zeros(latents_per_block, latent_channels))
        self.proj_in = nn.Linear(latent_channels, hidden_size)
        self.pos = nn.Parameter(torch.randn(max_blocks * latents_per_block, hidden_size) * 0.02)
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, 4 * hidden_size, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, len(labels) * (self.span if task == "tagging" else 1))

    def label_ids(self, labels: list[str]) -> list[int]:
        """Output indices of ``labels`` (e.g. ``food[Italian]``, or ``NOUN`` for tagging)."""
        known = self.config.labels
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise LdlmError(f"the classifier has no label '{unknown[0]}' (it knows: {', '.join(known)})")
        return [known.index(label) for label in labels]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        b, n, _ = latents.shape
        k, full = cfg.latents_per_block, cfg.max_blocks * cfg.latents_per_block
        if n % k or n > full:
            raise LdlmError(f"the classifier reads up to {cfg.max_blocks} blocks of {k} latents, got {n} latents")
        pad = self.end_block.to(latents.dtype).expand(b, -1, -1).repeat(1, (full - n) // k, 1)
        h = self.proj_in(torch.cat([latents, pad], 1)) + self.pos
        h = self.norm(self.encoder(h))
        if cfg.task == "multilabel":
            return self.head(h.mean(1))
        return self.head(h[:, :n]).reshape(b, n * self.span, len(cfg.labels))


def load_classifier(path: str | Path) -> LatentClassifier:
    """A frozen classifier in eval mode from its exported folder or the training output holding ``classifier/``
    (gradients still reach its input latents)."""
    root = Path(path)
    folder = root / "classifier" if (root / "classifier" / "config.json").is_file() else root
    if not (folder / "config.json").is_file():
        raise LdlmError(f"{path} holds no exported latent classifier (config.json)")
    return LatentClassifier.from_pretrained(folder).float().eval().requires_grad_(False)


class ClassifierModule(L.LightningModule):
    """Classifier loss (BCE or token cross-entropy) with noise-augmented training latents; validation logs loss,
    accuracy and F1 (multilabel: micro-F1, and the accuracy of each MR field's value, absence included; tagging:
    token accuracy and macro-F1 over tags)."""

    def __init__(self, classifier: LatentClassifier, cfg: dict) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["classifier"])
        self.classifier, self.data_cfg, self.train_cfg = classifier, cfg["data"], cfg["train"]
        labels = classifier.config.labels
        if classifier.config.task == "multilabel":
            self.fields = {f: [i for i, label in enumerate(labels) if label_field(label) == f]
                           for f in dict.fromkeys(map(label_field, labels))}
            self.val_f1 = MultilabelF1Score(len(labels), average="micro")
            self.val_fields = nn.ModuleDict({f.replace(" ", "_"): MeanMetric() for f in self.fields})
        else:
            self.val_accuracy = MulticlassAccuracy(len(labels), average="micro", ignore_index=IGNORE)
            self.val_f1 = MulticlassF1Score(len(labels), average="macro", ignore_index=IGNORE)

    def _common_step(self, batch: dict[str, torch.Tensor], noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and logits of a batch; with ``noise``, some batches get Gaussian noise of a random σ per window."""
        latents, targets = batch["latents"], batch["targets"]
        if noise and float(torch.rand(())) < self.data_cfg["noise_prob"]:
            std = torch.rand(len(latents), 1, 1, device=latents.device) * self.data_cfg["noise_std"]
            latents = latents + std * torch.randn_like(latents)
        logits = self.classifier(latents)
        if self.classifier.config.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, targets), logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._common_step(batch, noise=True)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._common_step(batch, noise=False)
        targets, size = batch["targets"], len(batch["targets"])
        self.log("val/loss", loss, sync_dist=True, batch_size=size)
        self.log("val_loss", loss, prog_bar=True, logger=False, sync_dist=True, batch_size=size)
        if self.classifier.config.task == "tagging":
            self.val_accuracy.update(logits.flatten(0, 1), targets.flatten())
            self.val_f1.update(logits.flatten(0, 1), targets.flatten())
            self.log("val/accuracy", self.val_accuracy)
            self.log("val/f1", self.val_f1)
            return
        self.val_f1.update(logits, targets.long())
        self.log("val/f1", self.val_f1)
        correct = []
        for (name, metric), columns in zip(self.val_fields.items(), self.fields.values()):
            right = field_value(logits[:, columns]) == field_value(targets[:, columns] * 2 - 1)
            metric.update(right.float())
            self.log(f"val/accuracy_{name}", metric)
            correct.append(right.float())
        self.log("val/accuracy", torch.stack(correct).mean(), sync_dist=True, batch_size=size)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.classifier, self.train_cfg)


def field_value(logits: torch.Tensor) -> torch.Tensor:
    """Predicted value of one MR field from its labels' logits (B, values): the most likely label if its logit is
    positive (probability > 0.5), else -1 (field absent)."""
    best, index = logits.max(-1)
    return torch.where(best > 0, index, -1)


def build_classifier(cfg: ClassifierExperiment, vae_config, labels: list[str]) -> LatentClassifier:
    m = cfg.model
    return LatentClassifier(latent_channels=vae_config.latent_channels, latents_per_block=vae_config.latents_per_block,
                            block_length=vae_config.block_length, max_blocks=cfg.data.max_blocks, task=cfg.task,
                            labels=labels, hidden_size=m.hidden_size, num_layers=m.num_layers,
                            num_heads=m.num_heads, dropout=m.dropout)


def train_classifier(cfg: ClassifierExperiment) -> Path | None:
    """Train a latent classifier from a validated config on the latents of ``cfg.vae``; export it (diffusers
    layout, safetensors) to ``output_dir/classifier`` and return that path (None on processes other than the
    first)."""
    if cfg.task not in TASKS:
        raise LdlmError(f"task must be one of {', '.join(TASKS)}, got '{cfg.task}'")
    if not 0 <= cfg.data.noise_prob <= 1 or cfg.data.noise_std < 0:
        raise LdlmError("data.noise_prob must lie in [0, 1] and data.noise_std be non-negative")
    if cfg.model.hidden_size % cfg.model.num_heads:
        raise LdlmError(f"model.hidden_size {cfg.model.hidden_size} is not a multiple of model.num_heads "
                        f"{cfg.model.num_heads}")
    L.seed_everything(cfg.train.seed, workers=True)
    vae, tokenizer = load_vae(cfg.vae)
    data = ClassifierDataModule(cfg.task, cfg.data, vae, tokenizer, cfg.train.batch_size)
    classifier = build_classifier(cfg, vae.config, data.labels)
    classifier.end_block.copy_(end_block_latents(vae))
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    module = ClassifierModule(classifier, OmegaConf.to_container(cfg))
    trainer = fit(module, data, cfg.train, out)
    if not trainer.is_global_zero:
        return None
    with atomic_dir(out / "classifier") as tmp:
        classifier.cpu().save_pretrained(tmp)
    return out / "classifier"
