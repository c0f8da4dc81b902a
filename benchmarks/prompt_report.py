"""Prompted continuations: held-out E2E texts cut inside their first block, continued by a pipeline; the
continuation's gen-PPL given its prompt and how often it echoes the prompt's last words right after it ("coffee shop
coffee shop") and their diversity (Div), beside the references' own continuations and the README's quick-start prompt.

    python benchmarks/prompt_report.py                  # the shipped checkpoint, 48 prompts × 4 samples, 25 steps
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import torch

from bench_common import run_script
from ldlm.data.corpus import read_corpus
from ldlm.evaluation.metrics import GenerativePerplexity, diversity
from ldlm.pipelines.loading import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
QUICK_START = "The Eagle is a coffee shop"  # the README's first command


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9£']+", text.lower())


def echoes(prompt: str, continuation: str, reach: int = 8) -> bool:
    """Whether the continuation's first ``reach`` words repeat the prompt's last two words as a pair, or open with
    its last word."""
    head, tail = words(prompt)[-2:], words(continuation)[:reach]
    if not head or not tail:
        return False
    if tail[0] == head[-1]:
        return True
    return len(head) == 2 and any(tail[i : i + 2] == head for i in range(len(tail) - 1))


def score(prompts: list[str], continuations: list[str], ppl: GenerativePerplexity) -> dict:
    rate = sum(echoes(p, c) for p, c in zip(prompts, continuations)) / len(prompts)
    return {"gen_ppl": ppl(continuations, prompts), "echo_rate": rate, "div": diversity(continuations),
            "words": sum(len(c.split()) for c in continuations) / len(continuations),
            "empty": sum(not c.strip() for c in continuations)}  # (not in gen-PPL: nothing to score)


def continue_prompts(pipe, prompts: list[str], samples: int, steps: int, seed: int) -> list[str]:
    """``samples`` continuations of each prompt (the text after it), seeded per prompt."""
    out = []
    for i, prompt in enumerate(prompts):
        texts = pipe([prompt] * samples, num_inference_steps=steps,
                     generator=torch.Generator().manual_seed(seed + i)).texts
        if not all(text.startswith(prompt) for text in texts):
            raise SystemExit(f"a continuation of {prompt!r} does not start with it")
        out += [text[len(prompt):] for text in texts]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--references", default=str(SHARED / "e2e" / "test.jsonl"), help="held-out texts to cut")
    parser.add_argument("--ppl-model", default="smollm2", help="the LM that scores continuations")
    parser.add_argument("--prompts", type=int, default=48, help="held-out texts to cut")
    parser.add_argument("--samples", type=int, default=4, help="continuations per prompt")
    parser.add_argument("--quick-start-samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "docs" / "img" / "prompts.json"))
    args = parser.parse_args()
    for name in ("prompts", "samples", "quick_start_samples", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    out = Path(args.output)
    if out.exists():
        raise SystemExit(f"{out} exists; pass another --output")
    if not out.parent.is_dir():
        raise SystemExit(f"no folder {out.parent} for --output")
    references = read_corpus(args.references)
    if len(references) < args.prompts:
        raise SystemExit(f"{args.references} has {len(references)} texts; --prompts {args.prompts} needs as many")

    torch.set_grad_enabled(False)
    pipe = load_pipeline(args.model)
    ppl = GenerativePerplexity(args.ppl_model)
    rng = random.Random(args.seed)
    texts = rng.sample(references, args.prompts)
    block = pipe.vae.config.block_length
    cuts = []
    for text in texts:  # a prompt shorter than one block: its tokens are held, not encoded
        ids = pipe.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 4:
            continue
        k = rng.randint(3, min(block - 1, len(ids) - 1))
        prompt = pipe.tokenizer.decode(ids[:k])
        if text.startswith(prompt):  # (a tokenizer may decode a prefix differently; such texts are skipped)
            cuts.append((prompt, text[len(prompt):]))
    if not cuts:
        raise SystemExit(f"no text of {args.references} is long enough to cut")
    prompts = [p for p, _ in cuts]
    generated = continue_prompts(pipe, prompts, args.samples, args.steps, args.seed)
    quick = continue_prompts(pipe, [QUICK_START], args.quick_start_samples, args.steps, args.seed)
    rows = {
        "references (their own continuations)": score(prompts, [c for _, c in cuts], ppl),
        f"ldlm, {args.steps} steps": score([p for p in prompts for _ in range(args.samples)], generated, ppl),
        f"ldlm, quick-start prompt, {args.steps} steps": score([QUICK_START] * len(quick), quick, ppl),
    }
    print("| continuations | gen-PPL given the prompt | echo rate | Div | words | empty |")
    print("|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {m['gen_ppl']:.1f} | {m['echo_rate']:.3f} | {m['div']:.3f} | {m['words']:.1f} | "
              f"{m['empty']} |")
    print("\nQuick start:")
    for text in quick[:8]:
        print(f"- {QUICK_START}{text}")
    sampling = {"model": args.model, "steps": args.steps, "seed": args.seed, "prompts": len(prompts),
                "temperature": pipe.config.temperature, "autoguidance": pipe.config.autoguidance}
    with open(out, "x") as f:  # never over a file that appeared meanwhile
        f.write(json.dumps({"sampling": sampling, "rows": rows, "prompts": prompts,
                            "continuations": generated, "quick_start": quick}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main)
