"""Efficiency: achieved GFLOP/s of the DiT forward pass against a large ``torch.matmul`` on the same machine.

    python benchmarks/efficiency.py                  # the shipped DiT over one full window, batch 1, 16, 64
    python benchmarks/efficiency.py --device cuda
    python benchmarks/efficiency.py --quick          # CI smoke run

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention, 2·m·n·k each; the CPU
attention kernel is taught to it here) and checked against an analytic count from the config, which replaces it if
they differ (xformers attention on CUDA is invisible to the counter); elementwise work (norms, activations, adaLN
modulation) is not counted, as usual. The forward is timed as a sampler runs it: on a CPU, the timestep's adaLN
modulation comes from the DiT's memo (``ldlm.dit.model.TimestepMemo``) and is neither counted nor timed.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from bench_common import out_path, run_script, setup, sync
from ldlm.dit.model import LatentDiT
from ldlm.pipelines.loading import load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as FlopCounterMode counts them (CPU attention included)."""
    extra = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=extra) as counter:
        fn()
    return counter.get_total_flops()


def analytic_flops(cfg, batch: int, n: int, modulation: bool = True) -> int:
    """Matmul FLOPs (2·m·n·k each) of a LatentDiT forward over (batch, n) latents: input embedding, per layer
    qkv + attention (QKᵀ and AV) + output projection + MLP, then the output; with ``modulation``, also the timestep
    embedding and every adaLN modulation (which a sampler's forward reuses from the memo instead)."""
    d, c, hidden = cfg.hidden_size, cfg.latent_channels, int(cfg.hidden_size * cfg.mlp_ratio)
    tokens = batch * n
    per_layer = 2 * tokens * d * 3 * d + 4 * batch * n * n * d + 2 * tokens * d * d + 2 * 2 * tokens * d * hidden
    timestep = 2 * batch * (256 * d + d * d) + cfg.num_layers * 2 * batch * d * 6 * d + 2 * batch * d * 2 * d
    return 2 * tokens * 2 * c * d + cfg.num_layers * per_layer + 2 * tokens * d * c + (timestep if modulation else 0)


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int, min_time: float) -> float:
    """Median over ``repeats`` of the mean time per call in a run of calls lasting about ``min_time``."""
    def run(calls: int) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        return (time.perf_counter() - start) / calls

    calls = max(1, math.ceil(min_time / run(1)))  # the first call warms up and sizes the runs
    return statistics.median(run(calls) for _ in range(repeats))


def dit_inputs(dit: LatentDiT, batch: int, n: int, device: torch.device) -> tuple:
    """A sampling step's inputs: noisy latents, timesteps, a self-conditioning estimate, no context."""
    c = dit.config.latent_channels
    gen = torch.Generator(device).manual_seed(0)
    sample = torch.randn(batch, n, c, generator=gen, device=device)
    return (sample, torch.full((batch,), 500, device=device), torch.randn(batch, n, c, generator=gen, device=device),
            torch.zeros(batch, n, dtype=torch.bool, device=device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--latents", type=int, default=None, help="latents per sequence (default: a full window)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="the reference: n×n @ n×n, fp32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per timed run of calls")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="1 repeat of 0.2 s runs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "efficiency"))
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.min_time = 1, 0.2
    device = setup(args.device, args.threads)

    dit = load_pipeline(args.model).transformer.float().eval().to(device)
    cfg = dit.config
    n = args.latents or cfg.max_blocks * cfg.latents_per_block
    size = args.matmul_size
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    matmul_gflops = 2 * size**3 / seconds_per_call(lambda: torch.matmul(a, b), device, args.repeats,
                                                   args.min_time) / 1e9
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{torch.get_num_threads()} threads; DiT {cfg.num_layers}×{cfg.hidden_size}, {n} latents; "
          f"torch.matmul {size}³ fp32: {matmul_gflops:.1f} GFLOP/s", flush=True)

    rows = []
    for batch in args.batch_sizes:
        inputs = dit_inputs(dit, batch, n, device)
        dit(*inputs)  # a sampler's forward: on a CPU, the timestep's modulation comes from the memo
        flops = counted_flops(lambda: dit(*inputs))
        analytic = analytic_flops(cfg, batch, n, modulation=device.type != "cpu")
        if abs(flops - analytic) > 0.01 * analytic:  # e.g. xformers attention, which the counter does not see
            print(f"  note: FlopCounterMode counts {flops / 1e9:.3f} GFLOP, the analytic count {analytic / 1e9:.3f}"
                  " (used instead)")
            flops = analytic
        seconds = seconds_per_call(lambda: dit(*inputs), device, args.repeats, args.min_time)
        rows.append({"batch": batch, "latents": n, "gflop": flops / 1e9, "analytic_gflop": analytic / 1e9,
                     "ms": 1e3 * seconds, "gflops": flops / seconds / 1e9,
                     "share_of_matmul": flops / seconds / 1e9 / matmul_gflops})
        print(f"  batch {batch:3d}: {1e3 * seconds:8.2f} ms", flush=True)

    print("\n| batch | latents | GFLOP / forward | ms / forward | GFLOP/s | share of matmul |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['latents']} | {r['gflop']:.3f} | {r['ms']:.2f} | {r['gflops']:.1f} | "
              f"{100 * r['share_of_matmul']:.1f} % |")
    print(f"| torch.matmul {size}³ | | {2 * size**3 / 1e9:.1f} | | {matmul_gflops:.1f} | 100 % |")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out_path(out, ".json").write_text(json.dumps(
        {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
         "model": args.model or "shipped", "config": dict(cfg), "matmul_size": size,
         "matmul_gflops": matmul_gflops, "rows": rows, "quick": args.quick}, indent=1))
    plot(rows, matmul_gflops, size, out_path(out, ".png"))
    print(f"wrote {out_path(out, '.json')} and {out_path(out, '.png')}")


def plot(rows: list[dict], matmul_gflops: float, size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    labels = [str(r["batch"]) for r in rows]
    ax.bar(labels, [r["gflops"] for r in rows], label="DiT forward")
    ax.axhline(matmul_gflops, color="black", linestyle="--", label=f"torch.matmul {size}³")
    for i, r in enumerate(rows):
        ax.annotate(f"{100 * r['share_of_matmul']:.0f} %", (i, r["gflops"]), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel(f"batch ({rows[0]['latents']} latents each)")
    ax.set_ylabel("achieved GFLOP/s (fp32)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_script(main)
