"""Block-by-block long documents: a ≥5,000-token document with its repetition rate, anti-loop on and off (memory
at 1k/4k/16k tokens against the AR baseline: benchmarks/memory.py).

    python benchmarks/longgen_report.py --model runs/kjv-long/pipeline
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def document(pipe, prompt: str, max_tokens: int, steps: int, max_repeat: float) -> dict:
    import torch

    from ldlm.evaluation.metrics import repetition_rate
    from ldlm.pipelines.long_generation import LongGeneration

    run = LongGeneration(pipe, prompt, max_tokens, num_inference_steps=steps, max_repeat=max_repeat,
                         stop_at_eos=False, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    text = "".join(chunk for (chunk,) in run)
    seconds = time.perf_counter() - start
    tokens = len(pipe.tokenizer(text, add_special_tokens=False)["input_ids"])
    words = text.split()
    per_1k = [repetition_rate(" ".join(words[i : i + 750])) for i in range(0, len(words), 750)]
    return {"max_repeat": max_repeat, "tokens": tokens, "seconds": seconds, "stop": run.stop_reasons[0],
            "resampled": run.resampled, "rep4": repetition_rate(text), "rep4_per_750_words": per_1k, "text": text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped one)")
    parser.add_argument("--prompt", default="And it came to pass, when the king had heard these words,")
    parser.add_argument("--tokens", type=int, default=5200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", default="docs/img/longgen")
    args = parser.parse_args()

    from ldlm.pipelines.loading import load_pipeline

    pipe = load_pipeline(args.model)
    docs = [document(pipe, args.prompt, args.tokens, args.steps, max_repeat) for max_repeat in (0.5, 1.0)]
    for d in docs:
        label = "anti-loop on " if d["max_repeat"] < 1 else "anti-loop off"
        print(f"{label}: {d['tokens']} tokens in {d['seconds']:.0f} s ({d['tokens'] / d['seconds']:.0f} tok/s), "
              f"rep-4 {d['rep4']:.3f}, stop {d['stop']}, resampled groups {d['resampled']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "documents": docs}, indent=2,
                                                   ensure_ascii=False))
    plot(docs, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


def plot(docs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.8, 3.5))
    for d in docs:
        ax.plot(range(1, len(d["rep4_per_750_words"]) + 1), d["rep4_per_750_words"], marker="o",
                label="anti-loop on" if d["max_repeat"] < 1 else "anti-loop off")
    ax.set_xlabel("750-word chunk of the document")
    ax.set_ylabel("rep-4 within the chunk")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
