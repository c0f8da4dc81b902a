"""LatentClassifier: a small transformer over standardized VAE latents predicting content labels of a whole window
(multilabel) or a coarse tag for every token position (tagging); gradient guidance reads it."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ldlm.errors import LdlmError

TASKS = ("multilabel", "tagging")


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
