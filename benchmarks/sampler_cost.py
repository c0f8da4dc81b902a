"""What a sampler option costs: wall time of a sampling call with ``snap`` or ``autoguidance`` against the same call
with neither, interleaved.

    python benchmarks/sampler_cost.py                       # snap 0.2 / 0.5 / 1 at 10 steps, batch 1 and 16
    python benchmarks/sampler_cost.py --snap --autoguidance 3 --steps 10 25   # the shipped weak transformer's cost
    python benchmarks/sampler_cost.py --model runs/x/pipeline --snap 0.3 --pairs 30

For each batch size, step count and option the two calls alternate (plain, with the option, plain, …) in one
process, so a busy machine slows both alike; the figure is the median of the per-pair ratios with its interquartile
range and range, flagged when that spread is too wide to trust (``bench_common.RatioSummary``). Each call is a whole
``pipe(batch_size=B, num_inference_steps=steps)``, texts included; "plain" is ``snap=0, autoguidance=1``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench_common import interleaved_seconds, out_path, run_script, setup, summarize
from ldlm.pipelines.loading import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"snap": 0.0, "autoguidance": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--snap", type=float, nargs="*", default=[0.2, 0.5, 1.0])
    parser.add_argument("--autoguidance", type=float, nargs="*", default=[], help="weights against the pipeline's "
                        "weak transformer")
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "sampler_cost"))
    args = parser.parse_args()
    options = [{"snap": s} for s in args.snap] + [{"autoguidance": w} for w in args.autoguidance]
    if args.pairs < 3 or not options or not all(0 < s <= 1 for s in args.snap) or not all(
            w > 1 for w in args.autoguidance):
        raise SystemExit("--pairs must be at least 3, with at least one option: --snap in (0, 1], --autoguidance > 1")
    device = setup(args.device, args.threads)
    pipe = load_pipeline(args.model).to(device)
    pipe.set_progress_bar_config(disable=True)
    if args.autoguidance and pipe.weak_transformer is None:
        raise SystemExit(f"--autoguidance: the pipeline {args.model or 'shipped'} has no weak transformer")
    rows = []
    for batch in args.batch_sizes:
        for steps in args.steps:
            for option in options:
                def call(settings: dict):
                    return lambda: pipe(batch_size=batch, num_inference_steps=steps, **settings,
                                        generator=torch.Generator(device).manual_seed(0))
                plain, varied = call(PLAIN), call({**PLAIN, **option})
                plain(), varied()  # warm-up
                plain_s, varied_s = interleaved_seconds([plain, varied], args.pairs, device)
                summary = summarize([v / p for p, v in zip(plain_s, varied_s)])
                rows.append({"batch": batch, "steps": steps, **option, **summary.record()})
                (name, value), = option.items()
                print(f"batch {batch:3d}  {steps:3d} steps  {name} {value:<4g}  time ×{summary.describe()}",
                      flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {**vars(args), "threads": torch.get_num_threads()}
    out_path(out, ".json").write_text(json.dumps({"config": config, "rows": rows}, indent=1))
    print(f"wrote {out_path(out, '.json')}")


if __name__ == "__main__":
    run_script(main)
