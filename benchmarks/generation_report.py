"""Stage-2 report: unconditional samples of a pipeline at several step counts — generative perplexity under the
frozen SmolLM2 teacher, distinct-1/2/3, wall time — beside the same metrics on E2E-test reference texts.

    python benchmarks/generation_report.py            # the shipped checkpoint, 200 samples at 10/25/50/100 steps
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from bench_common import out_path, run_script
from ldlm.data.corpus import read_corpus
from ldlm.evaluation.metrics import GenerativePerplexity, distinct_n
from ldlm.evaluation.suite import sample_texts
from ldlm.pipelines.loading import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
PROMPTS = ["The Eagle is a coffee shop", "Zizzi is a cheap pub near the riverside that",  # partial blocks only
           "Browns Cambridge is a family-friendly Italian restaurant in the city centre. It"]  # one complete block


def describe(texts: list[str], ppl: GenerativePerplexity) -> dict:
    return {"gen_ppl": ppl(texts), **{f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)},
            "words": sum(len(t.split()) for t in texts) / len(texts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=10, help="samples to print (from the largest step count)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "img" / "generation.json"))
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    pipe = load_pipeline(args.model)
    ppl = GenerativePerplexity("smollm2")
    reference = read_corpus(str(SHARED / "e2e" / "test.jsonl"))
    reference = random.Random(args.seed).sample(reference, args.samples)
    rows = {"E2E test (reference)": describe(reference, ppl)}
    samples = {}
    for steps in args.steps:
        start = time.perf_counter()
        texts = sample_texts(pipe, args.samples, steps, args.seed, args.batch_size)
        seconds = time.perf_counter() - start
        rows[f"ldlm, {steps} steps"] = {**describe(texts, ppl), "seconds": seconds}
        samples[steps] = texts
    print("| texts | gen-PPL (SmolLM2) | distinct-1 | distinct-2 | distinct-3 | words/text | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {m['gen_ppl']:.1f} | {m['distinct_1']:.3f} | {m['distinct_2']:.3f} | "
              f"{m['distinct_3']:.3f} | {m['words']:.1f} | {m.get('seconds', float('nan')):.1f} |")
    shown = max(args.steps)
    print(f"\nSamples ({shown} steps, seed {args.seed}):")
    for text in samples[shown][: args.show]:
        print(f"- {text}")
    prompted = {}
    for scale in (1.0, 2.0):
        texts = pipe(PROMPTS, num_inference_steps=shown, guidance_scale=scale,
                     generator=torch.Generator().manual_seed(args.seed)).texts
        prompted[str(scale)] = texts
        print(f"\nPrompted ({shown} steps, guidance scale {scale}):")
        for text in texts:
            print(f"- {text}")
    sampling = {"temperature": pipe.config.temperature, "autoguidance": pipe.config.autoguidance}
    Path(args.output).write_text(json.dumps({"sampling": sampling, "rows": rows,
                                             "samples": {str(k): v for k, v in samples.items()},
                                             "prompted": prompted}, indent=1))
    plot(rows, args.steps, out_path(args.output, ".png"))


def plot(rows: dict, steps: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    ours = [rows[f"ldlm, {s} steps"] for s in steps]
    ref = rows["E2E test (reference)"]
    for ax, key, label in ((axes[0], "gen_ppl", "gen-PPL under SmolLM2"), (axes[1], "distinct_2", "distinct-2")):
        ax.plot(steps, [m[key] for m in ours], "o-", label="ldlm (shipped E2E checkpoint)")
        ax.axhline(ref[key], color="gray", linestyle="--", label="E2E test references")
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xlabel("denoising steps (the pipeline's scheduler)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_script(main)
