"""Quality vs denoising steps: gen-PPL, MAUVE and Div of ldlm's unconditional samples at 5, 10, 25, 50 and 100 steps,
with the autoregressive baseline (same size, same corpus) and the reference texts as lines, plus the marginal-trap
diagnostics of each system.

    python benchmarks/quality.py --ar runs/e2e-ar               # 400 samples each; docs/img/quality.{json,png}
    python benchmarks/quality.py --ar runs/e2e-ar --quick       # CI smoke run: 24 samples at 5 and 10 steps

Both systems sample unconditionally from one seed: ldlm through ``ldlm.evaluation.suite.sample_texts`` (the
pipeline's saved sampler and defaults), the baseline with its KV cache and plain sampling (temperature 1, top-p 1) up
to EOS or 80 tokens, the length of ldlm's window. gen-PPL is under the frozen SmolLM2 teacher; MAUVE uses offline
MiniLM features against as many E2E-test references as samples; memorization and the marginal-trap rates are against
E2E train.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from bench_common import out_path, run_script, setup
from ldlm.baselines.causal_lm import generate_texts, load_ar
from ldlm.data.corpus import read_corpus
from ldlm.evaluation.suite import REFERENCES, evaluate_systems, format_table, sample_texts
from ldlm.pipelines.loading import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data" / "e2e"
AR = "AR baseline"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--ar", required=True, help="the trained AR baseline (ldlm train-ar output, e.g. runs/e2e-ar)")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    parser.add_argument("--references", default=str(SHARED / "test.jsonl"))
    parser.add_argument("--train", default=str(SHARED / "train.jsonl"))
    parser.add_argument("--ppl-model", default="smollm2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="24 samples at 5 and 10 steps")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "quality"))
    args = parser.parse_args()
    if args.quick:
        args.samples, args.steps = 24, [5, 10]
    setup(args.device)
    hf_logging.disable_progress_bar()

    pipe = load_pipeline(args.model).to(args.device)
    model, tokenizer = load_ar(args.ar)
    model = model.to(args.device)
    if tokenizer.get_vocab() != pipe.tokenizer.get_vocab():
        raise SystemExit(f"the baseline in {args.ar} does not share the pipeline's tokenizer")
    window = pipe.transformer.config.max_blocks * pipe.vae.config.block_length
    systems, seconds = {}, {}
    for steps in args.steps:
        start = time.perf_counter()
        systems[f"ldlm, {steps} steps"] = sample_texts(pipe, args.samples, steps, args.seed)
        seconds[f"ldlm, {steps} steps"] = time.perf_counter() - start
        print(f"sampled ldlm at {steps} steps in {seconds[f'ldlm, {steps} steps']:.1f} s", flush=True)
    start = time.perf_counter()
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    systems[AR] = generate_texts(model, tokenizer, None, args.samples, max_new_tokens=window, generator=generator)
    seconds[AR] = time.perf_counter() - start
    print(f"sampled the AR baseline in {seconds[AR]:.1f} s", flush=True)

    references = random.Random(args.seed).sample(read_corpus(args.references), args.samples)
    rows = evaluate_systems(systems, references, read_corpus(args.train), tokenizer=pipe.tokenizer,
                            block_length=pipe.vae.config.block_length, ppl_model=args.ppl_model,
                            mauve_features="minilm", seed=args.seed, device=args.device)
    for name, row in rows.items():
        row["seconds"] = seconds.get(name)
    print(format_table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {**vars(args), "device": args.device, "threads": torch.get_num_threads(), "ar_tokens": window,
              "temperature": pipe.config.temperature, "autoguidance": pipe.config.autoguidance}
    out_path(out, ".json").write_text(json.dumps({"config": config, "systems": rows, "samples": systems},
                                                 indent=1, ensure_ascii=False))
    plot(rows, args.steps, out_path(out, ".png"))
    print(f"wrote {out_path(out, '.json')} and {out_path(out, '.png')}")


def plot(rows: dict, steps: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("gen_ppl", "gen-PPL under SmolLM2 (lower is better)"), ("mauve", "MAUVE vs E2E test"),
              ("diversity", "Div = ∏(1 − rep-n), n = 2..4"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(steps, [rows[f"ldlm, {s} steps"][key] for s in steps], "o-", label="ldlm")
        ax.axhline(rows[AR][key], color="black", linestyle="--", label="AR baseline (KV cache)")
        if rows[REFERENCES].get(key) is not None:
            ax.axhline(rows[REFERENCES][key], color="gray", linestyle=":", label="E2E test references")
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("denoising steps")
        ax.set_title(label, fontsize=9)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_script(main)
