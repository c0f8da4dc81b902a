"""Gradient-guided control on held-out E2E-test targets: success rate and fluency (gen-PPL under SmolLM2) with and
without guidance, for length, keyword, semantic content, parts of speech, and length + keyword together.

    python benchmarks/control_report.py     # the shipped pipeline, classifiers and tagger (checkpoints/)
"""
from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import matplotlib
import torch

from bench_common import out_path, run_script
from ldlm.data.label_windows import parse_mr
from ldlm.data.postags import LexiconTagger
from ldlm.evaluation.metrics import GenerativePerplexity
from ldlm.pipelines.guidance import (ClassifierControl, Control, GradientGuidance, KeywordControl, LengthControl,
                                     TaggingControl)
from ldlm.pipelines.loading import load_classifier, load_pipeline
from ldlm.pipelines.text import word_spans

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GUIDANCE = Path(__file__).resolve().parent.parent / "checkpoints" / "e2e-guidance"
CONTENT_FIELDS = ("food", "area", "eatType", "priceRange", "customer rating")
KEYWORD_FIELDS = ("name", "near")


def pos_control(text: str, tokenizer, tagger: LexiconTagger, model) -> TaggingControl:
    """Target: the lexicon tags of a reference's words, spread over its subword tokens."""
    spans = word_spans(text)
    word_tags = tagger.tag([text[a:b] for a, b in spans])
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    tags = [next((tag for (a, b), tag in zip(spans, word_tags) if a <= start < b or start < a < end), None)
            for start, end in offsets]
    return TaggingControl(model, tags, word_tags, judge=tagger, min_accuracy=0.5)


def targets(references: list[dict], count: int, seed: int, args, pipe) -> dict[str, list[list[Control]]]:
    """Per control kind, one list of controls (all to be met) per sampled reference."""
    rng = random.Random(seed)
    tok = pipe.tokenizer
    room = pipe.transformer.config.max_blocks * pipe.vae.config.block_length - 1  # a length target must fit
    rows = rng.sample([r for r in references if len(tok(r["text"])["input_ids"]) < room], count)
    out: dict[str, list[list[Control]]] = {name: [] for name in ("length", "keyword", "content", "pos",
                                                                  "length+keyword")}
    content, pos, tagger = load_classifier(args.content), load_classifier(args.pos), LexiconTagger.load(args.tagger)
    for row in rows:
        labels = parse_mr(row["mr"])
        length = LengthControl(len(tok(row["text"], add_special_tokens=False)["input_ids"]))
        names = [label for label in labels if label.partition("[")[0] in KEYWORD_FIELDS]
        keyword = KeywordControl(re.fullmatch(r".*\[(.*)\]", rng.choice(names)).group(1))
        out["length"].append([length])
        out["keyword"].append([keyword])
        out["length+keyword"].append([length, keyword])
        usable = [label for label in labels
                  if label.partition("[")[0] in CONTENT_FIELDS and label in content.config.labels]
        if usable:  # the classifier knows only the values E2E-train has (e.g. food: Chinese, English)
            out["content"].append([ClassifierControl(content, rng.choice(usable))])
        out["pos"].append([pos_control(row["text"], tok, tagger, pos)])
    return out


def run(pipe, targets: list[list[Control]], guided: bool, args) -> tuple[list[str], list[list[Control]]]:
    """``args.samples`` texts per target, each with the target's controls (guided) or none (plain)."""
    texts, owners = [], []
    for i, controls in enumerate(targets):
        guidance = GradientGuidance(controls, steps=args.guidance_steps, lr=args.lr, proximity=args.proximity,
                                    until=args.until) if guided else None
        generator = torch.Generator().manual_seed(args.seed + i)
        texts += pipe(batch_size=args.samples, num_inference_steps=args.steps, generator=generator,
                      guidance=guidance).texts
        owners += [controls] * args.samples
    return texts, owners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped one)")
    parser.add_argument("--references", default="../shared/data/e2e/test.jsonl")
    parser.add_argument("--content", default=str(GUIDANCE / "content"), help="content classifier folder")
    parser.add_argument("--pos", default=str(GUIDANCE / "pos"), help="POS tagger (latent classifier) folder")
    parser.add_argument("--tagger", default=str(GUIDANCE / "pos-lexicon.json"),
                        help="lexicon tagger JSON that judges POS success")
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="samples per target")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--proximity", type=float, default=0.01)
    parser.add_argument("--until", type=float, default=1.0)
    parser.add_argument("--only", nargs="*", default=None, help="controls to run (default: all available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/img/control")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    pipe = load_pipeline(args.model)
    references = [json.loads(line) for line in Path(args.references).read_text().splitlines() if line.strip()]
    by_name = targets(references, args.targets, args.seed, args, pipe)
    ppl = GenerativePerplexity()
    results, examples = {}, {}
    for name, controls in by_name.items():
        if args.only and name not in args.only:
            continue
        results[name] = {}
        for guided in (False, True):
            start = time.perf_counter()
            texts, owners = run(pipe, controls, guided, args)
            key = "guided" if guided else "plain"
            hits = [all(c.success(t, pipe.tokenizer) for c in cs) for t, cs in zip(texts, owners)]
            row = {"success": sum(hits) / len(hits), "gen_ppl": ppl(texts), "seconds": time.perf_counter() - start}
            if name == "pos":
                row["tag_accuracy"] = sum(cs[0].accuracy(t) for t, cs in zip(texts, owners)) / len(texts)
            results[name][key] = row
            examples.setdefault(name, []).append({key: texts[: 2 * args.samples : args.samples]})
            print(f"{name:15s} {key:6s} success {row['success']:.3f} gen-PPL {row['gen_ppl']:8.1f} "
                  f"({row['seconds']:.0f} s)" + (f" tag acc {row['tag_accuracy']:.3f}" if "tag_accuracy" in row
                                                 else ""), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out_path(out, ".json").write_text(json.dumps({"args": vars(args), "results": results, "examples": examples},
                                                 indent=2, ensure_ascii=False))
    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j, key in enumerate(("plain", "guided")):
        ax.bar([i + 0.4 * j for i in range(len(names))], [results[n][key]["success"] for n in names], width=0.4,
               label="no guidance" if key == "plain" else "gradient guidance")
    ax.set_xticks([i + 0.2 for i in range(len(names))], names)
    ax.set_ylabel("success rate")
    ax.set_title(f"Control on E2E-test targets ({args.targets}×{args.samples} samples, {args.steps} steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path(out, ".png"), dpi=120)
    print(f"wrote {out_path(out, '.json')} and {out_path(out, '.png')}")


if __name__ == "__main__":
    run_script(main)
