"""What the benchmark scripts share: the device setup and synchronised timing."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def setup(device: str, threads: int | None = None) -> torch.device:
    """The start of every benchmark: torch's thread count (when given), a clear exit when CUDA is asked for but
    absent, and no autograd."""
    if threads is not None:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device {device} requested but CUDA is not available")
    torch.set_grad_enabled(False)
    return torch.device(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``repeats`` synchronised calls of ``fn`` (the caller warms up)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
