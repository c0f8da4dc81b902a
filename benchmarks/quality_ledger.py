"""Quality ledger: where a pipeline loses text quality, stage by stage, on held-out E2E.

    python benchmarks/quality_ledger.py --ar runs/e2e-ar                 # docs/img/ledger.{json,png}
    python benchmarks/quality_ledger.py --model runs/x/pipeline --out /tmp/ledger-x --steps 25

Rows, each scored on the same number of texts: the held-out references, two MAUVE sanity rows (training texts, and
the references themselves, against a disjoint set of held-out texts), the references through the VAE (encode → σ·ε
noise in standardized units → decode) at each ``--sigmas``, the DiT's unconditional samples at each ``--steps`` (and
at each ``--snap`` fraction, ``--dit-temperatures`` and ``--autoguidance`` weight), and the AR baseline at each
``--temperatures``. Columns: gen-PPL under SmolLM2 and its ratio to the references', corpus unigram entropy over the
pipeline's tokens (bits; a model that collapses onto frequent tokens reads low), MAUVE against the held-out MAUVE set
(MiniLM features), Div, and for VAE rows the token accuracy of the reconstruction.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from bench_common import add_scheduler_option, out_path, run_script, setup
from ldlm.align.teacher import pad_id_of
from ldlm.baselines.causal_lm import generate_texts, load_ar
from ldlm.data.corpus import read_corpus
from ldlm.data.token_blocks import to_blocks, tokenize
from ldlm.evaluation.reconstruction import reconstructed_ids
from ldlm.evaluation.suite import evaluate_systems, sample_texts
from ldlm.pipelines.loading import load_pipeline, load_vae
from ldlm.vae.blocks import join_blocks

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data" / "e2e"


def unigram_entropy(texts: list[str], tokenizer) -> float:
    """Entropy (bits) of the token unigram distribution pooled over all ``texts``."""
    counts = Counter(t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def reconstruct(vae, tokenizer, texts: list[str], sigma: float, seed: int) -> tuple[list[str], float]:
    """``texts`` through the VAE with σ·ε noise on the standardized posterior means: decoded texts, token accuracy."""
    blocks = to_blocks(tokenize(texts, tokenizer), vae.config.block_length, pad_id_of(tokenizer))
    ids = reconstructed_ids(vae, blocks, sigma, batch_size=128, seed=seed)
    accuracy = float((ids == blocks.input_ids)[blocks.attention_mask.bool()].float().mean())
    eos = vae.config.eos_token_id
    decoded = [tokenizer.decode(join_blocks(ids[blocks.doc_id == d], eos)) for d in range(len(texts))]
    return decoded, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--vae", default=None, help="decode with this VAE (+ tokenizer/) instead of the pipeline's")
    add_scheduler_option(parser)
    parser.add_argument("--ar", default=None, help="the AR baseline (ldlm train-ar output); no AR rows without it")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, nargs="*", default=[10, 25, 100])
    parser.add_argument("--snap", type=float, nargs="*", default=[], help="also sample at each step count with "
                        "each of these snapping fractions (see LatentDiffusionLMPipeline.denoise)")
    parser.add_argument("--dit-temperatures", type=float, nargs="+", default=None, help="sample ldlm at each "
                        "step count with each of these starting-noise temperatures (default: the pipeline's)")
    parser.add_argument("--autoguidance", type=float, nargs="+", default=None, help="sample ldlm at each step "
                        "count with each of these autoguidance weights (default: the pipeline's)")
    parser.add_argument("--sigmas", type=float, nargs="*", default=[0.0, 0.3, 0.5])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.8], help="AR sampling temperatures")
    parser.add_argument("--mauve-features", default="minilm", help="minilm | none (skips MAUVE)")
    parser.add_argument("--references", default=str(SHARED / "test.jsonl"))
    parser.add_argument("--train", default=str(SHARED / "train.jsonl"))
    parser.add_argument("--ppl-model", default="smollm2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "ledger"))
    args = parser.parse_args()
    if args.samples < 1:
        raise SystemExit("--samples must be at least 1")
    for path in (args.references, args.train):
        if not Path(path).is_file():
            raise SystemExit(f"corpus not found: {path}")
    setup(args.device)
    hf_logging.disable_progress_bar()

    pipe = load_pipeline(args.model, args.scheduler).to(args.device)
    if args.vae is not None:
        pipe.vae = load_vae(args.vae)[0].to(args.device)
    held_out, train = read_corpus(args.references), read_corpus(args.train)
    if len(held_out) < 2 * args.samples:
        raise SystemExit(f"{args.references} has {len(held_out)} texts; --samples {args.samples} needs twice that")
    picked = random.Random(args.seed).sample(held_out, 2 * args.samples)
    references, mauve_set = picked[: args.samples], picked[args.samples :]
    systems = {"references": references,
               "sanity: training texts": random.Random(args.seed).sample(train, args.samples)}
    accuracy = {}
    for sigma in args.sigmas:
        name = f"VAE reconstruction, σ={sigma:g}"
        systems[name], accuracy[name] = reconstruct(pipe.vae, pipe.tokenizer, references, sigma, args.seed)
    for steps in args.steps:
        for snap, temperature, weight in itertools.product([0.0, *args.snap],
                                                           args.dit_temperatures or [pipe.config.temperature],
                                                           args.autoguidance or [pipe.config.autoguidance]):
            name = (f"ldlm, {steps} steps" + (f", snap {snap:g}" if snap else "")
                    + (f", T={temperature:g}" if temperature != 1 else "") + (f", w={weight:g}" if weight != 1 else ""))
            systems[name] = sample_texts(pipe, args.samples, steps, args.seed, snap=snap, temperature=temperature,
                                         autoguidance=weight)
            print(f"sampled {name}", flush=True)
    if args.ar is not None:
        model, tokenizer = load_ar(args.ar)
        if tokenizer.get_vocab() != pipe.tokenizer.get_vocab():
            raise SystemExit(f"the baseline in {args.ar} does not share the pipeline's tokenizer")
        window = pipe.transformer.config.max_blocks * pipe.vae.config.block_length
        for temperature in args.temperatures:
            generator = torch.Generator(device=args.device).manual_seed(args.seed)
            systems[f"AR baseline, T={temperature:g}"] = generate_texts(
                model.to(args.device), tokenizer, None, args.samples, max_new_tokens=window,
                temperature=temperature, generator=generator)
    rows = evaluate_systems(systems, mauve_set, tokenizer=pipe.tokenizer, ppl_model=args.ppl_model,
                            mauve_features=None if args.mauve_features == "none" else args.mauve_features,
                            seed=args.seed, device=args.device, reference_row=False)
    for name, row in rows.items():
        row["ppl_ratio"] = row["gen_ppl"] / rows["references"]["gen_ppl"]
        row["unigram_entropy"] = unigram_entropy(systems[name], pipe.tokenizer)
        row["token_accuracy"] = accuracy.get(name)
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {**vars(args), "threads": torch.get_num_threads()}
    out_path(out, ".json").write_text(json.dumps({"config": config, "rows": rows, "samples": systems},
                                                 indent=1, ensure_ascii=False))
    plot(rows, out_path(out, ".png"))
    print(f"wrote {out_path(out, '.json')} and {out_path(out, '.png')}")


def table(rows: dict[str, dict]) -> str:
    """The ledger as a Markdown table."""
    lines = ["| texts | gen-PPL | × refs | unigram H (bits) | MAUVE | Div | token acc. |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        acc = f"{100 * r['token_accuracy']:.2f} %" if r["token_accuracy"] is not None else ""
        lines.append(f"| {name} | {r['gen_ppl']:.1f} | {r['ppl_ratio']:.2f} | {r['unigram_entropy']:.2f} | "
                     f"{'' if r.get('mauve') is None else format(r['mauve'], '.3f')} | {r['diversity']:.3f} | {acc} |")
    return "\n".join(lines)


def plot(rows: dict[str, dict], path: Path) -> None:
    """gen-PPL against unigram entropy, one point per row: low and to the reference's entropy is good."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in rows.items():
        ax.scatter(r["unigram_entropy"], r["gen_ppl"], s=18)
        ax.annotate(name, (r["unigram_entropy"], r["gen_ppl"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("unigram entropy (bits, pooled tokens)")
    ax.set_ylabel("gen-PPL under SmolLM2 (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_script(main)
