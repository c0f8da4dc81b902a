"""Typed config of latent-classifier training (load with ``ldlm.config.load_config(ClassifierExperiment, ...)``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ldlm.config import TrainConfig

TASKS = ("multilabel", "tagging")


@dataclass
class ClassifierDataConfig:
    path: str = "../shared/data/e2e/train.jsonl"  # multilabel: E2E JSON lines {"mr", "text"}; tagging: Brown docs
    max_blocks: int = 5  # window length in blocks; shorter texts are padded with end-of-text block latents
    holdout_every: int = 10  # validation: every n-th distinct MR (multilabel) or document (tagging), never trained on
    min_label_count: int = 5  # multilabel: labels seen fewer times in the file are dropped
    noise_prob: float = 0.5  # share of training batches whose latents get Gaussian noise ...
    noise_std: float = 0.5  # ... of a per-window σ drawn uniformly in [0, noise_std]
    num_workers: int = 0


@dataclass
class ClassifierModelConfig:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.1


@dataclass
class ClassifierExperiment:
    vae: str = "checkpoints/ldlm-e2e-smollm2"  # the VAE whose standardized latents the classifier reads
    task: str = "multilabel"  # multilabel (E2E content labels) | tagging (a coarse POS tag per token)
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/classifier", max_steps=1500,
                                                                   val_every=500, checkpoint_every=500))
