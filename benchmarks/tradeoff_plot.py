"""The README's key plot: quality against speed, ldlm at each step count beside the autoregressive baseline, from the
JSON that benchmarks/speed.py and benchmarks/quality.py wrote (no new measurement).

    python benchmarks/tradeoff_plot.py        # docs/img/speed.json + docs/img/quality.json → docs/img/tradeoff.png

Speed is tokens/s for 64-token outputs (one DiT window; the quality samples are E2E texts of at most 80 tokens),
quality is gen-PPL under SmolLM2 (MAUVE and the rest are in quality.json and RESULTS), at the step counts both
benchmarks ran; the held-out references' gen-PPL is the dashed line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_common import plain_log_ticks

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 64


def points(speed: dict, quality: dict, batch: int) -> tuple[list[tuple[int, float, dict]], tuple[float, dict]]:
    """(steps, tokens/s, quality row) for ldlm at each step count measured by both, and the baseline's pair."""
    rate = {r["steps"]: r["tokens_per_s"] for r in speed["rows"] if r["batch"] == batch and r["tokens"] == TOKENS}
    if None not in rate:
        raise SystemExit(f"speed.json has no AR row at batch {batch} and {TOKENS} tokens")
    rows = quality["systems"]
    ours = [(s, rate[s], rows[f"ldlm, {s} steps"]) for s in sorted(k for k in rate if k is not None)
            if f"ldlm, {s} steps" in rows]
    if not ours:
        raise SystemExit("speed.json and quality.json share no step count")
    return ours, (rate[None], rows["AR baseline"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", default=str(ROOT / "docs" / "img" / "speed.json"))
    parser.add_argument("--quality", default=str(ROOT / "docs" / "img" / "quality.json"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "tradeoff.png"))
    args = parser.parse_args()
    for path in (args.speed, args.quality):
        if not Path(path).is_file():
            raise SystemExit(f"{path} not found: run benchmarks/speed.py and benchmarks/quality.py first")
    speed, quality = json.loads(Path(args.speed).read_text()), json.loads(Path(args.quality).read_text())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in speed["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.6 * len(batches), 3.6), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        ours, (ar_rate, ar_row) = points(speed, quality, batch)
        ax.plot([p[1] for p in ours], [p[2]["gen_ppl"] for p in ours], "o-", label="ldlm")
        for steps, rate, values in ours:
            ax.annotate(f"{steps} steps", (rate, values["gen_ppl"]), textcoords="offset points", xytext=(-10, 6),
                        fontsize=7)
        ax.plot([ar_rate], [ar_row["gen_ppl"]], "ks", label="AR baseline (KV cache)")
        ax.axhline(quality["systems"]["references"]["gen_ppl"], color="gray", linestyle="--",
                   label="held-out references")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax.xaxis)
        plain_log_ticks(ax.yaxis)
        ax.margins(x=0.15, y=0.15)
        ax.set_xlabel(f"tokens/s, batch {batch}, {TOKENS}-token outputs ({speed['device']})")
        ax.set_ylabel("gen-PPL under SmolLM2 (lower is better)", fontsize=8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
