"""Block-by-block long documents: a ≥5,000-token document with its repetition rate (anti-loop on and off), and the
peak memory of generating 1k, 4k and 16k tokens (each in a fresh process).

    python benchmarks/longgen_report.py --model runs/kjv-long/pipeline
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MEASURE = """
import json, sys, torch
from ldlm.generate import load_pipeline
from ldlm.longgen import LongGeneration

def rss(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) / 1024

model, tokens, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
pipe = load_pipeline(None if model == "shipped" else model)
loaded = rss("VmRSS")
run = LongGeneration(pipe, None, tokens, num_inference_steps=steps, stop_at_eos=False, max_repeat=1.0,
                     generator=torch.Generator().manual_seed(0))
count = sum(len(pipe.tokenizer(t, add_special_tokens=False)["input_ids"]) for (t,) in run)
print(json.dumps({"tokens": count, "loaded_mb": loaded, "peak_mb": rss("VmHWM"), "stop": run.stop_reasons[0]}))
"""


def document(model: str | None, prompt: str, max_tokens: int, steps: int, max_repeat: float) -> dict:
    import torch

    from ldlm.generate import load_pipeline
    from ldlm.longgen import LongGeneration
    from ldlm.metrics import repetition_rate

    pipe = load_pipeline(model)
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
    parser.add_argument("--memory-tokens", type=int, nargs="*", default=[1000, 4000, 16000])
    parser.add_argument("--memory-steps", type=int, default=10)
    parser.add_argument("--out", default="docs/img/longgen")
    args = parser.parse_args()

    docs = [document(args.model, args.prompt, args.tokens, args.steps, max_repeat) for max_repeat in (0.5, 1.0)]
    for d in docs:
        label = "anti-loop on " if d["max_repeat"] < 1 else "anti-loop off"
        print(f"{label}: {d['tokens']} tokens in {d['seconds']:.0f} s ({d['tokens'] / d['seconds']:.0f} tok/s), "
              f"rep-4 {d['rep4']:.3f}, stop {d['stop']}, resampled groups {d['resampled']}", flush=True)
    memory = []
    for tokens in args.memory_tokens:
        out = subprocess.run([sys.executable, "-c", MEASURE, args.model or "shipped", str(tokens),
                              str(args.memory_steps)], capture_output=True, text=True, check=True)
        memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
        m = memory[-1]
        print(f"{m['tokens']:6d} tokens: peak RSS {m['peak_mb']:.0f} MB ({m['peak_mb'] - m['loaded_mb']:+.0f} MB over "
              f"the loaded model)", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "documents": docs, "memory": memory},
                                                   indent=2, ensure_ascii=False))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for d in docs:
        left.plot(range(1, len(d["rep4_per_750_words"]) + 1), d["rep4_per_750_words"], marker="o",
                  label="anti-loop on" if d["max_repeat"] < 1 else "anti-loop off")
    left.set_xlabel("750-word chunk of the document")
    left.set_ylabel("rep-4 within the chunk")
    left.legend()
    right.plot([m["tokens"] for m in memory], [m["peak_mb"] for m in memory], marker="o")
    right.set_xscale("log")
    right.set_xlabel("generated tokens")
    right.set_ylabel("peak RSS (MB)")
    right.set_ylim(0, max(m["peak_mb"] for m in memory) * 1.2)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
