"""What snapping costs: wall time of a sampling call with ``snap`` against the same call without, interleaved.

    python benchmarks/snap_cost.py                          # snap 0.2 / 0.5 / 1 at 10 steps, batch 1 and 16
    python benchmarks/snap_cost.py --model runs/x/pipeline --snap 0.3 --pairs 30

For each batch size and snapping fraction the two calls alternate (plain, snapped, plain, snapped, …) in one process,
so a busy machine slows both alike; the figure is the median of the per-pair ratios with its interquartile range and
range, flagged when that spread is too wide to trust (``bench_common.RatioSummary``).
Each call is a whole ``pipe(batch_size=B, num_inference_steps=steps)``, texts included.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench_common import interleaved_seconds, run_script, setup, summarize
from ldlm.pipelines.loading import load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--snap", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "snap_cost"))
    args = parser.parse_args()
    if args.pairs < 3 or not all(0 < s <= 1 for s in args.snap):
        raise SystemExit("--pairs must be at least 3 and every --snap in (0, 1]")
    device = setup(args.device, args.threads)
    pipe = load_pipeline(args.model).to(device)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for batch in args.batch_sizes:
        for snap in args.snap:
            def call(s: float = 0.0):
                return lambda: pipe(batch_size=batch, num_inference_steps=args.steps, snap=s,
                                    generator=torch.Generator(device).manual_seed(0))
            call()()  # warm-up
            call(snap)()
            plain, snapped = interleaved_seconds([call(), call(snap)], args.pairs, device)
            summary = summarize([snap_s / plain_s for plain_s, snap_s in zip(plain, snapped)])
            rows.append({"batch": batch, "snap": snap, **summary.record()})
            print(f"batch {batch:3d}  snap {snap:<4g}  time ×{summary.describe()}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {**vars(args), "threads": torch.get_num_threads()}
    out.with_suffix(".json").write_text(json.dumps({"config": config, "rows": rows}, indent=1))
    print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
    run_script(main)
