"""Representation-alignment losses between VAE latents and frozen-teacher features."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class AlignmentHead(nn.Module):
    """MLP projecting latents (…, C) to one teacher layer's feature space (…, H)."""

    def __init__(self, latent_channels: int, teacher_hidden: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, teacher_hidden),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def repa_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """REPA: negative cosine similarity. ``pred``/``target`` (…, H), ``mask`` (…). Returns (loss, mean cosine)."""
    cos = _masked_mean(F.cosine_similarity(pred, target, dim=-1), mask)
    return -cos, cos.detach()


def vavae_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    margin_cos: float = 0.5,
    margin_dist: float = 0.25,
    dist_weight: float = 1.0,
    max_pairs: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VA-VAE: margin cosine ``relu(1 - m1 - cos)`` plus the distance-matrix margin
    ``relu(|cos(p_i, p_j) - cos(t_i, t_j)| - m2)`` over (up to ``max_pairs``) valid latents of the batch."""
    cos = F.cosine_similarity(pred, target, dim=-1)
    margin = _masked_mean(F.relu(1 - margin_cos - cos), mask)
    valid = mask.reshape(-1).bool()
    p = F.normalize(pred.reshape(-1, pred.shape[-1])[valid][:max_pairs], dim=-1)
    t = F.normalize(target.reshape(-1, target.shape[-1])[valid][:max_pairs], dim=-1)
    off_diag = ~torch.eye(p.shape[0], dtype=torch.bool, device=p.device)
    gap = (p @ p.T - t @ t.T).abs()[off_diag]
    distance = F.relu(gap - margin_dist).mean() if gap.numel() else gap.sum()
    return margin + dist_weight * distance, _masked_mean(cos, mask).detach()


@dataclass
class AlignmentSchedule:
    """λ(step): linear warm-up to ``weight``, then constant; 0 from ``stop_step`` on (None: never stops)."""

    weight: float
    warmup_steps: int = 0
    stop_step: int | None = None

    def __call__(self, step: int) -> float:
        if self.stop_step is not None and step >= self.stop_step:
            return 0.0
        if self.warmup_steps and step < self.warmup_steps:
            return self.weight * (step + 1) / self.warmup_steps
        return self.weight
