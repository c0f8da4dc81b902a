"""Infilling: fix the first and last blocks of held-out texts, generate the middle, and score how much of the true
middle's content comes back (word F1), for the two ways of fixing blocks (clean context vs re-noised replacement)
against a continuation that sees only the first blocks (ldlm's, and with ``--ar`` the AR baseline's at temperature
1). Also prints E2E examples from the shipped pipeline.

    python benchmarks/infill_report.py --ar runs/kjv-ar           # the shipped long-document pipeline, held-out KJV
    python benchmarks/infill_report.py --ar runs/kjv-ar --ar-window 256 --span-blocks 32 --fixed-blocks 4 --min-tokens 512 \
        --out docs/img/infill-kjv-passage                         # 384 tokens between two 64-token paragraphs
    python benchmarks/infill_report.py --model checkpoints/ldlm-e2e-smollm2 --corpus ../shared/data/e2e/test.jsonl \
        --holdout-every 1 --fixed-blocks 1 --min-tokens 56 --texts 32 --out docs/img/infill-e2e

Each case is the first ``--span-blocks`` blocks of a held-out text (default: one window), with its first and last
``--fixed-blocks`` fixed; a span longer than the window is denoised whole, in overlapping windows. Held-out texts are
the corpus's documents ``i % --holdout-every == 0`` (the long-document runs' split; 1: every text of a held-out file).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import matplotlib
import torch

from bench_common import out_path, run_script
from ldlm.baselines.causal_lm import generate_texts, load_ar
from ldlm.data.corpus import read_corpus
from ldlm.evaluation.metrics import GenerativePerplexity
from ldlm.pipelines.loading import SHIPPED_LONG, load_pipeline

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

E2E_EXAMPLES = [
    ["The Eagle is a coffee shop", None, "It is not family-friendly."],
    ["Zizzi is a pub near the river.", None, "Prices are high."],
]


def word_f1(generated: str, reference: str) -> float:
    """Unigram F1 of lower-cased words (bag overlap)."""
    a, b = Counter(generated.lower().split()), Counter(reference.lower().split())
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def split_case(text: str, tok, span: int, fixed: int) -> tuple[str, str, str]:
    """The first ``span`` tokens of ``text`` as whole words: (start, middle, end), start and end being the most
    words that tokenize to at most ``fixed`` tokens each (so each takes at most fixed / L blocks)."""
    words = tok.decode(tok(text, add_special_tokens=False)["input_ids"][:span]).split()[:-1]  # drop a cut word
    fits = lambda text: len(tok(text, add_special_tokens=False)["input_ids"]) <= fixed  # noqa: E731
    head = next(n for n in range(len(words), 0, -1) if fits(" ".join(words[:n])))
    tail = next(n for n in range(len(words) - head, 0, -1) if fits(" " + " ".join(words[-n:])))  # mid-text
    return " ".join(words[:head]), " ".join(words[head:-tail]), " ".join(words[-tail:])


def middle(text: str, first: str, last: str | None) -> str:
    """The generated text between the fixed segments."""
    rest = text[len(first) :]
    return rest[: rest.find(last.strip())] if last and last.strip() in rest else rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped long-document one)")
    parser.add_argument("--corpus", default="../shared/data/kjv/chapters.jsonl")
    parser.add_argument("--holdout-every", type=int, default=10, help="held-out texts: i %% N == 0")
    parser.add_argument("--ar", default=None, help="the AR baseline (ldlm train-ar output): a prefix-only row")
    parser.add_argument("--ar-window", type=int, default=None,
                        help="the AR's sliding attention window (its training length) for spans longer than it")
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--min-tokens", type=int, default=0, help="only texts at least this long")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--fixed-blocks", type=int, default=2, help="blocks fixed at each end")
    parser.add_argument("--span-blocks", type=int, default=None, help="blocks per case (default: the window)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--ppl-model", default="smollm2", help="the LM that scores the middles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/img/infill")
    args = parser.parse_args()

    pipe = load_pipeline(args.model, default=SHIPPED_LONG)
    tok, length = pipe.tokenizer, pipe.vae.config.block_length
    window = pipe.transformer.config.max_blocks
    span = window if args.span_blocks is None else args.span_blocks
    gap = span - 2 * args.fixed_blocks
    if args.holdout_every < 1:
        raise SystemExit("--holdout-every must be at least 1")
    if args.ar_window is not None and args.ar_window < 1:
        raise SystemExit(f"--ar-window must be at least 1, got {args.ar_window}")
    if args.fixed_blocks < 1 or gap < 1:
        raise SystemExit(f"--fixed-blocks must be at least 1 and leave a gap in the {span}-block span")
    texts = read_corpus(args.corpus, holdout_every=args.holdout_every, heldout=True)
    texts = [text for text in texts if len(tok(text)["input_ids"]) >= args.min_tokens][: args.texts]
    cases = [split_case(text, tok, span * length, args.fixed_blocks * length) for text in texts]
    methods = ["condition", "replace", "prefix only"]
    if args.ar is not None:
        ar, ar_tok = load_ar(args.ar)
        if ar_tok.get_vocab() != tok.get_vocab():
            raise SystemExit(f"the baseline in {args.ar} does not share the pipeline's tokenizer")
        methods.append("AR, prefix only")
    ppl = GenerativePerplexity(args.ppl_model)
    results, examples = {}, {}
    for method in methods:
        start = time.perf_counter()
        scores, middles = [], []
        for j, (first, truth, last) in enumerate(cases):
            generator = torch.Generator().manual_seed(args.seed + j)
            if method == "AR, prefix only":
                outs = generate_texts(ar, tok, [first], args.samples, generator=generator,
                                      max_new_tokens=(span - args.fixed_blocks) * length, window=args.ar_window)
            else:
                segments = [first, None] if method == "prefix only" else [first, None, last]
                outs = pipe.infill(segments, gap_blocks=gap if method != "prefix only" else span - args.fixed_blocks,
                                   method="replace" if method == "replace" else "condition",
                                   num_samples_per_prompt=args.samples, num_inference_steps=args.steps,
                                   generator=generator).texts
            for text in outs:
                found = middle(text, first, None if "prefix only" in method else last)
                found = " ".join(found.split()[: len(truth.split())])  # the same span length as the truth
                middles.append(found)
                scores.append(word_f1(found, truth))
        results[method] = {"word_f1": sum(scores) / len(scores), "gen_ppl": ppl(middles),
                           "seconds": time.perf_counter() - start}
        examples[method] = middles[: args.samples]
        print(f"{method:12s} word F1 vs the true middle {results[method]['word_f1']:.3f}  gen-PPL of the middles "
              f"{results[method]['gen_ppl']:.0f}  ({results[method]['seconds']:.0f} s)", flush=True)
    shipped = load_pipeline()
    e2e = {" / ".join(s or "_" for s in segments): shipped.infill(
        segments, num_samples_per_prompt=2, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0)).texts
        for segments in E2E_EXAMPLES}
    for key, outs in e2e.items():
        print(key, "→", outs)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out_path(out, ".json").write_text(json.dumps(
        {"args": vars(args), "results": results, "case": cases[0], "middles": examples, "e2e": e2e},
        indent=2, ensure_ascii=False))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = list(results)
    ax.bar(names, [results[n]["word_f1"] for n in names], color=["C0", "C1", "C7", "C3"][: len(names)])
    ax.set_ylabel("word F1 with the true middle")
    ends = f"{args.fixed_blocks}+{args.fixed_blocks}"
    ax.set_title(f"Infilling {gap} blocks between {ends} fixed (held-out {Path(args.corpus).parent.name})")
    fig.tight_layout()
    fig.savefig(out_path(out, ".png"), dpi=120)
    print(f"wrote {out_path(out, '.json')} and {out_path(out, '.png')}")


if __name__ == "__main__":
    run_script(main)
