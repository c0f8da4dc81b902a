"""Context use: does a long-document model read what came before? The same held-out continuations scored after
their true context, after the same context blocks in shuffled order, and after none.

    python benchmarks/context_use.py --model runs/kjv-long/pipeline --ar runs/kjv-ar \
        --references ../shared/data/kjv/chapters.jsonl --holdout-every 10

Each window of a held-out document is ``window − new_blocks`` context blocks followed by ``new_blocks`` continuation
blocks (the split long generation uses); windows are taken from the documents in turn. ldlm's score is the DiT's
clean-latent error on the continuation (mean squared, standardized units, averaged over a fixed grid of timesteps with
fixed noise; its training loss weighs the same errors per timestep differently). With no context the layout stays
and the context is the learned null one (the unconditional branch of classifier-free guidance). The AR model's score
is its per-token negative log-likelihood of the continuation's tokens (no context: the continuation alone). Lower is
better for both; a model that reads its context scores clearly lower with the true one than with a shuffled one or
none.

The clean-latent error moves little even for a model that reads its context, because the latents of unseen text are
hardly predictable from those before it. So each system also writes the continuation itself (ldlm in ``--steps``
steps, at each ``--guidance-scale`` of classifier-free guidance on the context; the AR model at temperature 1), after
the true context, after the shuffled one, and with nothing given (it writes the whole window and its last
``new_blocks`` blocks are kept), and an independent LM (``--ppl-model``) scores
every written continuation after the true context (NLL per token): continuations that follow from what came before
score lower. The held-out continuation itself, scored after the true, shuffled and no context, is the yardstick, and
the same continuation through ldlm's VAE (encoded and decoded) is the best ldlm's decoder can write. Each condition
is written from the same noise (the same seed), so how alike a system's continuations after the true and the
shuffled context are (word-level similarity, 1: the same words in the same order) says how much the context's order
changes what it writes: a model that follows its context writes something else after it. (For the AR the same seed
is the same random stream, which lines up only until the first token that differs.)
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
from pathlib import Path

import torch

from bench_common import out_path, run_script, setup

CONDITIONS = ("true", "shuffled", "none")


def windows(documents: list[list[int]], block: int, context: int, new: int, limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` token windows ((context + new) · block,), non-overlapping within a document, taken from the
    documents in turn (each document's first window, then each one's second, …)."""
    size = (context + new) * block
    per_doc = [[torch.tensor(ids[i : i + size]) for i in range(0, len(ids) - size + 1, size)] for ids in documents]
    rounds = max(map(len, per_doc), default=0)
    return [w[r] for r in range(rounds) for w in per_doc if r < len(w)][:limit]


def arrange(window: torch.Tensor, block: int, context: int, condition: str, generator: torch.Generator):
    """The window's context blocks (in order, or shuffled for ``shuffled``) and its continuation blocks."""
    blocks = window.view(-1, block)
    before, after = blocks[:context], blocks[context:]
    if condition == "shuffled":
        before = before[torch.randperm(context, generator=generator)]
    return before, after


@torch.no_grad()
def dit_error(pipe, before: torch.Tensor, after: torch.Tensor, timesteps: list[int], seed: int,
              null_context: bool = False) -> float:
    """Mean squared clean-latent error of the DiT on the continuation blocks ``after`` given ``before`` as clean
    context (swapped for the learned null context with ``null_context``), averaged over ``timesteps`` (fixed noise
    from ``seed``)."""
    vae, dit, objective = pipe.vae, pipe.transformer, pipe.objective
    device = pipe._execution_device
    ctx = vae.encode_sequence(before.reshape(1, -1).to(device))
    x0 = vae.encode_sequence(after.reshape(1, -1).to(device))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    n = ctx.shape[1]
    flags = torch.zeros(1, n + x0.shape[1], dtype=torch.bool, device=device)
    flags[:, :n] = True
    drop = torch.full((1,), null_context, device=device)
    total = 0.0
    for t in timesteps:
        step = torch.full((1,), t, device=device)
        x_in = torch.cat([ctx, objective.add_noise(x0, noise, step)], 1)
        out = dit(x_in.to(dit.dtype), step, None, flags, drop).float()
        total += float((objective.to_x0(x_in, out, step)[:, n:] - x0).pow(2).mean())
    return total / len(timesteps)


@torch.no_grad()
def ar_nll(model, before: torch.Tensor, after: torch.Tensor) -> float:
    """The AR model's per-token negative log-likelihood (nats) of ``after``'s tokens read after EOS + ``before``
    (``before`` may be empty)."""
    eos = model.config.eos_token_id
    ids = torch.cat([torch.tensor([eos]), before.reshape(-1), after.reshape(-1)])[None].to(model.device)
    logits = model(ids[:, :-1]).float()[0]  # logits[j] predicts ids[j + 1]; after starts at 1 + len(before)
    return float(torch.nn.functional.cross_entropy(logits[before.numel() :], ids[0, before.numel() + 1 :]))


@torch.no_grad()
def dit_continuations(pipe, befores: torch.Tensor, new: int, steps: int, seed: int, written: bool = False,
                      guidance_scale: float = 1.0) -> list[str]:
    """The pipeline's continuations of ``new`` blocks after the clean context blocks ``befores`` (W, context, L), or,
    with ``written``, of a context it writes itself (the whole window generated; the same noise either way), with
    classifier-free guidance of the context at ``guidance_scale`` (1: off; no context, no guidance)."""
    cfg, device = pipe.vae.config, pipe._execution_device
    k, (w, context, _) = cfg.latents_per_block, befores.shape
    ctx = pipe.vae.encode_sequence(befores.reshape(w, -1).to(device))
    known = torch.cat([ctx, torch.zeros(w, new * k, ctx.shape[-1], device=device)], 1)
    known_mask = torch.zeros(known.shape[:2], dtype=torch.bool, device=device)
    known_mask[:, : context * k] = not written
    generator = torch.Generator(device=device).manual_seed(seed)
    latents = pipe.denoise(known, known_mask, num_inference_steps=steps, guidance_scale=guidance_scale,
                           generator=generator)
    ids = pipe.vae.decode_sequence(latents)[:, context * cfg.block_length :]  # a context decoder reads the block before
    return pipe.tokenizer.batch_decode(ids, skip_special_tokens=True)


@torch.no_grad()
def ar_continuations(model, tokenizer, befores: torch.Tensor, new_tokens: int, seed: int,
                     written: bool = False) -> list[str]:
    """The AR model's continuations (temperature 1) of ``new_tokens`` after the context tokens ``befores`` (W, T), or,
    with ``written``, after a context of the same length it writes itself."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    if written:
        ids = model.generate(None, batch_size=len(befores), max_new_tokens=befores[0].numel() + new_tokens,
                             generator=generator, stop_at_eos=False)[:, -new_tokens:]
    else:
        ids = model.generate(befores.reshape(len(befores), -1).to(model.device), max_new_tokens=new_tokens,
                             generator=generator, stop_at_eos=False)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def with_ratios(row: dict[str, float]) -> dict[str, float]:
    """A row of per-condition scores with the shuffled and no-context scores over the true-context one."""
    return {**row, "shuffled_over_true": row["shuffled"] / row["true"], "none_over_true": row["none"] / row["true"]}


def word_similarity(texts: list[str], others: list[str]) -> float:
    """Mean word-level similarity (difflib's ratio: twice the matched words over all words) of paired texts."""
    return sum(difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()
               for a, b in zip(texts, others, strict=True)) / len(texts)


def mean_nll(scorer, texts: list[str], prefixes: list[str] | None) -> float:
    """``scorer``'s NLL per token (nats) of ``texts``, each after its prefix (NaN when no text has a token)."""
    total, count = scorer.token_nll(texts, prefixes)
    return total / count if count else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped long-document one)")
    parser.add_argument("--ar", default=None, help="the AR baseline (ldlm train-ar output); no AR rows without it")
    parser.add_argument("--references", required=True, help="corpus of documents (jsonl/txt)")
    parser.add_argument("--holdout-every", type=int, default=10, help="held-out documents: i %% N == 0")
    parser.add_argument("--new-blocks", type=int, default=None, help="continuation blocks (default: half the window)")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500, 700, 900])
    parser.add_argument("--steps", type=int, default=25, help="ldlm's denoising steps for written continuations")
    parser.add_argument("--guidance-scale", type=float, nargs="+", default=[1.0],
                        help="classifier-free guidance of the context for ldlm's written continuations (one row each)")
    parser.add_argument("--ppl-model", default="smollm2", help="the LM that scores written continuations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="docs/img/context_use")
    args = parser.parse_args()
    if args.windows < 1 or args.steps < 1:
        raise SystemExit("--windows and --steps must be at least 1")
    if not all(math.isfinite(s) and s >= 1 for s in args.guidance_scale):
        raise SystemExit("--guidance-scale must be finite numbers ≥ 1 (1: off)")
    if not Path(args.references).is_file():
        raise SystemExit(f"corpus not found: {args.references}")
    device = setup(args.device)

    from ldlm.baselines.causal_lm import load_ar
    from ldlm.data.corpus import read_corpus
    from ldlm.evaluation.metrics import GenerativePerplexity
    from ldlm.pipelines.loading import SHIPPED_LONG, load_pipeline

    pipe = load_pipeline(args.model, default=SHIPPED_LONG).to(device)
    scorer = GenerativePerplexity(args.ppl_model, device=str(device))
    window = pipe.transformer.config.max_blocks
    new = window // 2 if args.new_blocks is None else args.new_blocks
    if not 1 <= new < window:
        raise SystemExit(f"--new-blocks must be in 1..{window - 1} (the window holds {window} blocks)")
    limit = pipe.transformer.config.num_train_timesteps
    if not all(0 <= t < limit for t in args.timesteps):
        raise SystemExit(f"--timesteps must lie in 0..{limit - 1}")
    context, block = window - new, pipe.vae.config.block_length
    texts = read_corpus(args.references, holdout_every=args.holdout_every, heldout=True)
    docs = pipe.tokenizer(texts, add_special_tokens=False)["input_ids"]
    picked = windows(docs, block, context, new, args.windows)
    if not picked:
        raise SystemExit(f"no held-out document of {args.references} fills a window of {window} blocks")
    generator = torch.Generator().manual_seed(args.seed)  # the same shuffles for every system and score
    contexts = {c: torch.stack([arrange(w, block, context, c, generator)[0] for w in picked]) for c in CONDITIONS}
    afters = torch.stack([w.view(-1, block)[context:] for w in picked])
    scorers = {"ldlm (DiT clean-latent MSE)": lambda b, a, i, c: dit_error(
        pipe, b, a, args.timesteps, args.seed + i, null_context=c == "none")}
    writers = {f"ldlm, {args.steps} steps" + (f", CFG {s:g}" if s != 1 else ""):
               lambda c, s=s: dit_continuations(pipe, contexts[c], new, args.steps, args.seed, c == "none", s)
               for s in args.guidance_scale}
    if args.ar is not None:
        model, tokenizer = load_ar(args.ar)
        if tokenizer.get_vocab() != pipe.tokenizer.get_vocab():
            raise SystemExit(f"the baseline in {args.ar} does not share the pipeline's tokenizer")
        model = model.to(device)
        scorers["AR (NLL per token)"] = lambda b, a, i, c: ar_nll(model, b[:0] if c == "none" else b, a)
        writers["AR, T=1"] = lambda c: ar_continuations(model, tokenizer, contexts[c], new * block, args.seed,
                                                         written=c == "none")
    rows = {name: with_ratios({c: sum(score(contexts[c][i], afters[i], i, c) for i in range(len(picked)))
                                  / len(picked) for c in CONDITIONS}) for name, score in scorers.items()}

    with torch.no_grad():  # what ldlm's decoder makes of the held-out continuation's own latents: its ceiling
        rebuilt = pipe.vae.decode_sequence(pipe.vae.encode_sequence(afters.flatten(1).to(device)))
    held_out = {"": pipe.tokenizer.batch_decode(afters.flatten(1)),
                " through ldlm's VAE": pipe.tokenizer.batch_decode(rebuilt, skip_special_tokens=True)}
    prefixes = {c: None if c == "none" else pipe.tokenizer.batch_decode(contexts[c].flatten(1)) for c in CONDITIONS}
    written = {f"held-out continuation{through} (scored after each context)": with_ratios(
        {c: mean_nll(scorer, texts, prefixes[c]) for c in CONDITIONS}) for through, texts in held_out.items()}
    for name, write in writers.items():
        continuations = {c: write(c) for c in CONDITIONS}
        written[f"{name}: its continuation after the true context"] = with_ratios(
            {c: mean_nll(scorer, continuations[c], prefixes["true"]) for c in CONDITIONS}) | {
                "same_words_shuffled": word_similarity(continuations["true"], continuations["shuffled"])}
    print(f"{len(picked)} windows of {context} context + {new} continuation blocks")
    header = "| {} | true context | shuffled | none | shuffled ÷ true | none ÷ true |\n|---|---|---|---|---|---|"
    for title, table in (("system (continuation scored)", rows), (f"written, NLL/token under {args.ppl_model}",
                                                                   written)):
        print(header.format(title))
        for name, r in table.items():
            print(f"| {name} | {r['true']:.4f} | {r['shuffled']:.4f} | {r['none']:.4f} | "
                  f"{r['shuffled_over_true']:.3f} | {r['none_over_true']:.3f} |")
    for name, r in written.items():
        if "same_words_shuffled" in r:
            print(f"{name.split(':')[0]}: after the true and the shuffled context (same noise), word similarity "
                  f"{r['same_words_shuffled']:.3f}")
    out = out_path(args.out, ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {**vars(args), "windows_used": len(picked), "context_blocks": context,
                                          "new_blocks": new}, "rows": rows, "written": written}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main)
