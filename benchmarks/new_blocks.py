"""The new_blocks dial of long documents: blocks denoised per group set how many DiT calls a token costs and how much
context each group sees. Speed and quality of one long-document pipeline at each value, in one run.

    python benchmarks/new_blocks.py --model runs/kjv-long/pipeline     # docs/img/new_blocks.{json,png}
    python benchmarks/new_blocks.py --model runs/kjv-long/pipeline --quick

Speed: tokens/s of ``LongGeneration.fixed_ids`` (exactly ``--tokens`` positions, batch 1, median of ``--repeats``
after a warm-up). Quality: ``--samples`` unconditional documents through LongGeneration (anti-loop off, EOS dropped),
scored by gen-PPL under SmolLM2, Div and distinct-2, with the tokens each document reached. ``new_blocks`` equal to
the window means no context at all. On the E2E pipeline, whose texts fit one window, the documents are streams of
texts, as the 256-token outputs of ``speed.py`` are.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from bench_common import add_scheduler_option, median_seconds, out_path, run_script, setup
from ldlm.evaluation.suite import evaluate_systems, format_table
from ldlm.pipelines.loading import SHIPPED_LONG, load_pipeline
from ldlm.pipelines.long_generation import LongGeneration

ROOT = Path(__file__).resolve().parents[1]


def documents(pipe, new_blocks: int, args: argparse.Namespace) -> list[str]:
    """``args.samples`` unconditional documents of up to ``args.tokens`` tokens."""
    run = LongGeneration(pipe, None, args.tokens, num_documents=args.samples, new_blocks=new_blocks,
                         num_inference_steps=args.steps, generator=torch.Generator(args.device).manual_seed(args.seed),
                         stop_at_eos=False, max_repeat=1.0, retries=0)
    return ["".join(parts) for parts in zip(*run)]


def tokens_per_s(pipe, new_blocks: int, args: argparse.Namespace) -> float:
    def call() -> None:
        LongGeneration(pipe, None, args.tokens, new_blocks=new_blocks, num_inference_steps=args.steps,
                       generator=torch.Generator(args.device).manual_seed(args.seed)).fixed_ids(args.tokens)

    call()  # warm-up
    return args.tokens / median_seconds(call, args.repeats, torch.device(args.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a long-document pipeline (default: the shipped one)")
    parser.add_argument("--new-blocks", type=int, nargs="+", default=None, help="values (default: 1 to the window)")
    add_scheduler_option(parser)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ppl-model", default="smollm2")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="8 documents, 1 repeat")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "new_blocks"))
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats = 8, 1
    setup(args.device, args.threads)
    hf_logging.disable_progress_bar()

    pipe = load_pipeline(args.model, args.scheduler, default=SHIPPED_LONG).to(args.device)
    window = pipe.transformer.config.max_blocks
    values = args.new_blocks or list(range(1, window + 1))
    if any(not 1 <= k <= window for k in values):
        raise SystemExit(f"--new-blocks values must lie in 1..{window} (the model's window)")
    names = {k: f"new_blocks {k}" + (" (no context)" if k == window else "") for k in values}
    speed = {}
    for k in values:
        speed[names[k]] = tokens_per_s(pipe, k, args)
        print(f"  {names[k]}: {speed[names[k]]:.0f} tokens/s", flush=True)
    texts = {names[k]: documents(pipe, k, args) for k in values}
    rows = evaluate_systems(texts, tokenizer=pipe.tokenizer, ppl_model=args.ppl_model, device=args.device)
    for name, row in rows.items():
        row["tokens_per_s"] = speed[name]
    print(format_table(rows))
    print("tokens/s (batch 1): " + ", ".join(f"{n} {r['tokens_per_s']:.0f}" for n, r in rows.items()))
    print("tokens per document: " + ", ".join(f"{n} {r['tokens_per_text']:.0f}" for n, r in rows.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {**vars(args), "threads": torch.get_num_threads(), "window": window}
    out_path(out, ".json").write_text(json.dumps({"config": config, "systems": rows, "samples": texts}, indent=1,
                                                 ensure_ascii=False))
    plot(rows, values, window, out_path(out, ".png"))
    print(f"wrote {out_path(out, '.json')} and {out_path(out, '.png')}")


def plot(rows: dict, values: list[int], window: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = list(rows)
    left.plot(values, [rows[n]["tokens_per_s"] for n in names], "o-")
    left.set_ylabel("tokens/s (batch 1)")
    right.plot(values, [rows[n]["gen_ppl"] for n in names], "o-")
    right.set_ylabel("gen-PPL under SmolLM2")
    for ax in (left, right):
        ax.set_xticks(values)
        ax.set_xlabel(f"new blocks per group (window {window}; {window} = no context)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_script(main)
