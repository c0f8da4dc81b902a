"""The optimizer both stages use: AdamW (no decay on biases, norms and positions), linear warmup, cosine to 10 %."""
from __future__ import annotations

import math

import torch
from torch import nn


def adamw_warmup_cosine(module: nn.Module, cfg: dict, betas: tuple[float, float] = (0.9, 0.999)) -> dict:
    """Lightning's ``configure_optimizers`` result for ``module``'s trainable parameters under a ``train`` config."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "pos" not in n]
    rest = [p for n, p in params if not (p.ndim >= 2 and "pos" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                                   {"params": rest, "weight_decay": 0.0}], lr=cfg["lr"], betas=betas)

    def factor(step: int) -> float:
        if step < cfg["warmup_steps"]:
            return (step + 1) / cfg["warmup_steps"]
        progress = min(1.0, (step - cfg["warmup_steps"]) / max(1, cfg["max_steps"] - cfg["warmup_steps"]))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
