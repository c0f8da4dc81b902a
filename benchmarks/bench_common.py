"""What the benchmark scripts share: the device setup, synchronised timing, and interleaved paired ratios with their
spread."""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

WIDE_IQR = 0.25  # a paired ratio whose interquartile range is wider than this fraction of its median is not trusted


def run_script(main: Callable[[], object]) -> None:
    """Run a benchmark's ``main``; a user-facing error (no model at a path, a mismatched folder) ends it in one line
    with a non-zero exit, as the CLI does."""
    from ldlm.errors import LdlmError

    try:
        main()
    except LdlmError as err:
        raise SystemExit(f"error: {err}") from None


def out_path(out: str | Path, suffix: str) -> Path:
    """Where a benchmark writes its ``suffix`` file (.json, .png) for ``--out``: a .json or .png ending is replaced,
    and any other dot stays part of the name (``--out runs/T0.9`` writes ``T0.9.json``, not ``T0.json``)."""
    path = Path(out)
    return path.with_suffix(suffix) if path.suffix in (".json", ".png") else path.with_name(path.name + suffix)


def add_scheduler_option(parser: argparse.ArgumentParser) -> None:
    """``--scheduler``: sample with another scheduler (a short name, as ``ldlm generate --scheduler`` takes) instead
    of the pipeline's; the script hands it to ``load_pipeline``."""
    parser.add_argument("--scheduler", default=None, help="sample with this scheduler (short name, e.g. ddim) "
                        "instead of the pipeline's")


def setup(device: str, threads: int | None = None) -> torch.device:
    """The start of every benchmark: torch's thread count (when given), a clear exit for an unknown device or when
    CUDA is asked for but absent, and no autograd."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise SystemExit(f"unknown device '{device}' (expected cpu, cuda or cuda:N)") from None
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"device {device} requested but CUDA is not available")
    torch.set_grad_enabled(False)
    return parsed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_seconds(fns: Sequence[Callable[[], object]], rounds: int, device: torch.device) -> list[list[float]]:
    """Wall times of ``rounds`` rounds that each call every function of ``fns`` once, in order (A, B, A, B, …), so
    a load that comes and goes slows them alike: one list of ``rounds`` synchronised times per function."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, seconds in zip(fns, times):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            seconds.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``repeats`` synchronised calls of ``fn`` (the caller warms up)."""
    return statistics.median(interleaved_seconds([fn], repeats, device)[0])


@dataclass(frozen=True)
class RatioSummary:
    """The median of paired ratios, their quartiles (``statistics.quantiles``' default, exclusive method) and
    range."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    pairs: int

    @property
    def doubt(self) -> str | None:
        """Why the median cannot be trusted (its IQR crosses 1×, or is wider than ``WIDE_IQR`` of the median), or
        None."""
        if self.q1 < 1 < self.q3:
            return "its IQR crosses 1×"
        if self.q3 - self.q1 > WIDE_IQR * self.median:
            return f"its IQR is wider than {WIDE_IQR:.0%} of the median"
        return None

    def record(self) -> dict:
        """The fields and the doubt (None when trusted), for a JSON file."""
        return {**asdict(self), "doubt": self.doubt}

    def describe(self) -> str:
        """``3.42 (IQR 3.30–3.55, range 3.10–3.61, 9 pairs)``, with a warning when the spread is too wide."""
        text = (f"{self.median:.2f} (IQR {self.q1:.2f}–{self.q3:.2f}, range {self.min:.2f}–{self.max:.2f}, "
                f"{self.pairs} pairs)")
        if self.doubt is not None:
            text += f" NOT TRUSTWORTHY: {self.doubt} (a busy machine?): rerun on a quiet one or with more pairs"
        return text


def summarize(ratios: Sequence[float]) -> RatioSummary:
    """The summary of at least three paired ratios."""
    if len(ratios) < 3:
        raise ValueError(f"a spread needs at least 3 paired ratios, got {len(ratios)}")
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return RatioSummary(median, q1, q3, min(ratios), max(ratios), len(ratios))


def plain_log_ticks(axis, subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """Label a log-scaled matplotlib ``axis`` with plain numbers at ``subs`` of each decade, and no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())
