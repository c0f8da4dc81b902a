"""Alignment ablation: DiT runs with the same budget on the aligned and the λ=0 VAE — validation loss and
generative perplexity (SmolLM2) of the samples each run logged during training, and the steps each needs to reach
the other's final value.

    python benchmarks/ablation_report.py runs/e2e-dit runs/e2e-dit-noalign --labels aligned "λ=0"
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from bench_common import out_path, run_script
from ldlm.evaluation.metrics import GenerativePerplexity

ROOT = Path(__file__).resolve().parents[1]


def curves(run: Path, ppl: GenerativePerplexity) -> dict[str, list[tuple[int, float]]]:
    with open(run / "logs" / "metrics.csv") as handle:
        val = [(int(r["step"]) + 1, float(r["val/loss"])) for r in csv.DictReader(handle) if r.get("val/loss")]
    with open(run / "samples.jsonl") as handle:
        samples = [json.loads(line) for line in handle]
    return {"val_loss": val, "gen_ppl": [(s["step"], ppl(s["texts"])) for s in samples]}


def steps_to_reach(curve: list[tuple[int, float]], value: float) -> int | None:
    return next((step for step, v in curve if v <= value), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs=2, type=Path)
    parser.add_argument("--labels", nargs=2, default=["aligned", "λ=0"])
    parser.add_argument("--output", default=str(ROOT / "docs" / "img" / "ablation.json"))
    args = parser.parse_args()

    ppl = GenerativePerplexity("smollm2")
    results = {label: curves(run, ppl) for label, run in zip(args.labels, args.runs)}
    a, b = args.labels
    for metric in ("val_loss", "gen_ppl"):
        print(f"\n{metric}: step | " + " | ".join(args.labels))
        for (step, va), (_, vb) in zip(results[a][metric], results[b][metric]):
            print(f"  {step:5d} | {va:.4f} | {vb:.4f}")
        final = {label: results[label][metric][-1][1] for label in args.labels}
        for x, y in ((a, b), (b, a)):
            print(f"  {x} reaches {y}'s final {final[y]:.4f} at step {steps_to_reach(results[x][metric], final[y])}")
    Path(args.output).write_text(json.dumps(results, indent=1))
    plot(results, out_path(args.output, ".png"))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, curve in results.items():
        for ax, metric in zip(axes, ("val_loss", "gen_ppl")):
            ax.plot(*zip(*curve[metric]), "o-", label=f"DiT on {label} VAE")
    axes[0].set_ylabel("validation loss (EMA, v-MSE)")
    axes[1].set_ylabel("gen-PPL (SmolLM2)")
    axes[1].set_yscale("log")
    axes[1].set_title("64 samples, 25 DPM-Solver++ steps", fontsize=9)
    for ax in axes:
        ax.set_xlabel("DiT training step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_script(main)
