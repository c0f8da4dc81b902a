"""Typed config of the autoregressive baseline (load with ``ldlm.config.load_config(ARExperiment, ...)``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ldlm.config import CorpusConfig, TrainConfig


@dataclass
class ARDataConfig:
    train: list[CorpusConfig] = field(default_factory=lambda: [CorpusConfig()])
    max_tokens: int = 80  # predicted positions per window (the DiT's 5 blocks of 16); longer documents are cropped
    val_fraction: float = 0.02  # the same document-level split as the DiT's for the same corpus and seed
    seed: int = 0
    num_workers: int = 0


@dataclass
class ARModelConfig:
    preset: str = "small"  # tiny | small (≈ VAE decoder + DiT small) | base (≈ VAE decoder + DiT base)
    hidden_size: Optional[int] = None  # set any of these to override the preset
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: float = 4.0


@dataclass
class ARSampleConfig:
    every: int = 500  # write unconditional samples to samples.jsonl every N steps (0: never)
    num_samples: int = 4
    max_new_tokens: int = 80
    top_p: float = 1.0


@dataclass
class ARExperiment:
    vae: str = "checkpoints/ldlm-e2e-smollm2"  # VAE or pipeline folder: its tokenizer and fixed token table are used
    data: ARDataConfig = field(default_factory=ARDataConfig)
    model: ARModelConfig = field(default_factory=ARModelConfig)
    sample: ARSampleConfig = field(default_factory=ARSampleConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/ar", lr=3e-4))
