"""Training of latent classifiers for gradient guidance (content labels of a window, or a POS tag per token) on a
frozen VAE's latents, through the shared runner; exported as ``classifier/``."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MultilabelF1Score

from ldlm.data import IGNORE
from ldlm.data.label_windows import ClassifierDataModule, label_field
from ldlm.pipelines.latent_classifier import LatentClassifier
from ldlm.pipelines.loading import load_vae
from ldlm.training.checkpoint_io import atomic_dir
from ldlm.training.config import ClassifierExperiment
from ldlm.training.optim import adamw_warmup_cosine
from ldlm.training.runner import Job, run


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
    """Train a latent classifier on the latents of ``cfg.vae`` (see :func:`ldlm.training.runner.run`); export it
    (diffusers layout, safetensors) to ``output_dir/classifier`` and return that path on the first process (None on
    the others)."""
    return run(cfg, _prepare)


def _prepare(cfg: ClassifierExperiment, out: Path) -> Job:
    vae, tokenizer = load_vae(cfg.vae)
    data = ClassifierDataModule(cfg.task, cfg.data, vae, tokenizer, cfg.train.batch_size)
    classifier = build_classifier(cfg, vae.config, data.labels)
    classifier.end_block.copy_(vae.end_block_latents())

    def export() -> Path:
        with atomic_dir(out / "classifier") as tmp:
            classifier.cpu().save_pretrained(tmp)
        return out / "classifier"

    return Job(ClassifierModule(classifier, asdict(cfg)), data, export)
