"""Stage-1 report: held-out reconstruction of trained VAEs under latent noise; a Markdown table and a PNG plot.

    python benchmarks/vae_report.py runs/e2e-smollm2 runs/e2e-smollm2-noalign
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_common import out_path, run_script
from ldlm.data.corpus import read_corpus
from ldlm.evaluation.reconstruction import evaluate_run

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
NOISE = [0.0, 0.1, 0.3, 0.5]


def held_out_sets(e2e_limit: int | None) -> dict[str, list[str]]:
    return {
        "E2E test": read_corpus(str(SHARED / "e2e" / "test.jsonl"), limit=e2e_limit),
        "Brown held-out (i % 10 == 0)": read_corpus(str(SHARED / "brown" / "docs.jsonl"), holdout_every=10,
                                                    heldout=True),
    }


def table(results: dict) -> str:
    lines = ["| run | corpus | σ | acc (all) | acc (seen types) | acc (unseen types) | exact blocks | unseen share |",
             "|---|---|---|---|---|---|---|---|"]
    for run, per_corpus in results.items():
        for corpus, per_noise in per_corpus.items():
            for sigma, m in per_noise.items():
                unseen = m.get("tokens_unseen", 0) / m["tokens_all"]
                lines.append(f"| {run} | {corpus} | {sigma} | {m['acc_all']:.4f} | {m['acc_seen']:.4f} | "
                             f"{m.get('acc_unseen', float('nan')):.4f} | {m['exact_blocks']:.4f} | {unseen:.4f} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    corpora = next(iter(results.values())).keys()
    for ax, corpus in zip(axes, corpora):
        for run, per_corpus in results.items():
            noise = list(per_corpus[corpus])
            ax.plot(noise, [per_corpus[corpus][s]["acc_all"] for s in noise], marker="o", label=run)
        ax.set(title=corpus, xlabel="latent noise σ (standardized units)", ylabel="token accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--e2e-limit", type=int, default=None)
    parser.add_argument("--out", default="docs/img/vae_noise.png")
    args = parser.parse_args()
    sets = held_out_sets(args.e2e_limit)
    results = {Path(run).name: {name: evaluate_run(run, texts, NOISE) for name, texts in sets.items()}
               for run in args.runs}
    print(table(results))
    plot(results, Path(args.out))
    out_path(args.out, ".json").write_text(json.dumps(results, indent=2))
    print(f"plot: {args.out}")


if __name__ == "__main__":
    run_script(main)
