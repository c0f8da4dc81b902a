"""Long documents along their length: gen-PPL and rep-4 per 512-token segment (distinct-4 across the documents'
same segments), how often the anti-loop guard fired and tokens/s, for ldlm (``LongGeneration``, EOS ignored) and
with ``--ar`` the same-size AR model, beside the same figures on held-out reference documents (memory at 1k/4k/10k
tokens: benchmarks/memory.py; the ``new_blocks`` dial: benchmarks/new_blocks.py). ldlm writes at each of ``--steps``.
The systems write their documents in turn (ldlm's first at each step count, the AR's first, ldlm's second, …), so
each speed ratio to the AR is read pair by pair on a noisy machine.

    python benchmarks/longgen_report.py --ar runs/kjv-ar --ar-window 256 --tokens 10000 --documents 3 \
        --references ../shared/data/kjv/chapters.jsonl --holdout-every 10 --steps 25 10
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from bench_common import add_scheduler_option, out_path, run_script  # noqa: E402

SEGMENT = 512  # tokens of the pipeline's tokenizer per measured segment


def segments(text: str, tokenizer, size: int = SEGMENT) -> list[str]:
    """``text`` cut into consecutive segments of ``size`` tokens (a shorter tail is dropped)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[i : i + size]) for i in range(0, len(ids) - size + 1, size)]


def segment_rows(texts: list[str], scorer) -> list[dict]:
    """gen-PPL and rep-4 of each segment (each scored on its own)."""
    from ldlm.evaluation.metrics import repetition_rate

    return [{"gen_ppl": scorer([t]), "rep4": repetition_rate(t)} for t in texts]


def ldlm_document(pipe, prompt: str, tokens: int, steps: int, max_repeat: float, seed: int,
                  new_blocks: int | None = None, temperature: float | None = None) -> dict:
    """One document of ``tokens`` tokens from ``prompt``, EOS ignored (``temperature``: the pipeline's when None):
    its continuation, time and guard counts."""
    import torch

    from ldlm.pipelines.long_generation import LongGeneration

    run = LongGeneration(pipe, prompt, tokens, new_blocks=new_blocks, num_inference_steps=steps, max_repeat=max_repeat,
                         stop_at_eos=False, generator=torch.Generator().manual_seed(seed), temperature=temperature)
    start = time.perf_counter()
    text = "".join(chunk for (chunk,) in run)
    seconds = time.perf_counter() - start
    skip = len(pipe.tokenizer(prompt, add_special_tokens=False)["input_ids"])  # the continuation, as for the AR
    ids = pipe.tokenizer(text, add_special_tokens=False)["input_ids"][skip:]
    return {"text": pipe.tokenizer.decode(ids), "tokens": len(ids), "seconds": seconds, "stop": run.stop_reasons[0],
            "groups": run.groups, "guarded": run.guarded}


def ar_document(model, tokenizer, prompt: str, tokens: int, temperature: float, seed: int,
                window: int | None) -> dict:
    """The AR model's continuation of ``prompt`` to ``tokens`` tokens in all; its KV cache holds the whole text, or
    with ``window`` the last ``window`` tokens (a sliding cache)."""
    import torch

    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    start = time.perf_counter()
    new = model.generate(torch.tensor([ids]), max_new_tokens=max(1, tokens - len(ids)), temperature=temperature,
                         stop_at_eos=False, generator=torch.Generator().manual_seed(seed),
                         window=window)[0].tolist()
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new),
            "seconds": time.perf_counter() - start}


def summarize(docs: list[dict], tokenizer, scorer) -> dict:
    """Per-segment means over documents (as far as every document reaches), distinct-4 over the documents' same
    segments, the last/first gen-PPL ratio, the guard rate, tokens/s and why each document stopped."""
    from ldlm.evaluation.metrics import distinct_n

    texts = [segments(d["text"], tokenizer) for d in docs]
    per_doc = [segment_rows(t, scorer) for t in texts]
    count = min(map(len, per_doc))
    stops = [d.get("stop", "length") for d in docs]
    if not count:
        raise SystemExit(f"a document is shorter than one {SEGMENT}-token segment (stopped: {', '.join(stops)})")
    means = {k: [statistics.mean(rows[i][k] for rows in per_doc) for i in range(count)] for k in ("gen_ppl", "rep4")}
    means["distinct4"] = [distinct_n([t[i] for t in texts], 4) for i in range(count)]
    out = {**means, "last_over_first": means["gen_ppl"][-1] / means["gen_ppl"][0],
           "tokens_per_second": sum(d["tokens"] for d in docs) / sum(d["seconds"] for d in docs), "stops": stops}
    if "groups" in docs[0]:
        out["guard_rate"] = sum(d["guarded"] for d in docs) / sum(d["groups"] for d in docs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped long-document one)")
    add_scheduler_option(parser)
    parser.add_argument("--ar", default=None, help="the AR baseline (ldlm train-ar output); no AR rows without it")
    parser.add_argument("--prompt", default="And it came to pass, when the king had heard these words,")
    parser.add_argument("--documents", type=int, default=1, help="documents per system (seeds 0, 1, …)")
    parser.add_argument("--tokens", type=int, default=10000)
    parser.add_argument("--steps", type=int, nargs="+", default=[25], help="ldlm's denoising steps (one row each)")
    parser.add_argument("--new-blocks", type=int, default=None, help="ldlm's blocks per group (default: the "
                        "pipeline's)")
    parser.add_argument("--max-repeat", type=float, default=0.5, help="the anti-loop threshold (1: off)")
    parser.add_argument("--dit-temperature", type=float, default=None,
                        help="ldlm's sampling temperature (default: the pipeline's)")
    parser.add_argument("--temperature", type=float, default=1.0, help="the AR model's sampling temperature")
    parser.add_argument("--ar-window", type=int, default=None,
                        help="the AR model attends to its last N tokens (a sliding KV cache; default: all)")
    parser.add_argument("--references", default=None, help="corpus whose held-out documents give reference rows")
    parser.add_argument("--holdout-every", type=int, default=10, help="held-out documents: i %% N == 0")
    parser.add_argument("--ppl-model", default="smollm2")
    parser.add_argument("--out", default="docs/img/longgen")
    args = parser.parse_args()
    if args.tokens < SEGMENT or args.documents < 1:
        raise SystemExit(f"--tokens must be at least {SEGMENT} and --documents at least 1")
    if min(args.steps) < 1:
        raise SystemExit(f"--steps must be at least 1, got {min(args.steps)}")
    if args.dit_temperature is not None:
        from ldlm.pipelines.latent_diffusion import check_temperature

        try:
            check_temperature(args.dit_temperature)
        except ValueError as err:
            raise SystemExit(f"--dit-temperature: {err}") from None
    if args.ar_window is not None and args.ar_window < 1:
        raise SystemExit(f"--ar-window must be at least 1, got {args.ar_window}")
    if args.references is not None and not Path(args.references).is_file():
        raise SystemExit(f"corpus not found: {args.references}")

    from ldlm.baselines.causal_lm import load_ar
    from ldlm.data.corpus import read_corpus
    from ldlm.evaluation.metrics import GenerativePerplexity, distinct_n
    from ldlm.pipelines.loading import SHIPPED_LONG, load_pipeline

    pipe = load_pipeline(args.model, args.scheduler, default=SHIPPED_LONG)
    tokenizer = pipe.tokenizer
    scorer = GenerativePerplexity(args.ppl_model)
    writers = {(f"ldlm, {steps} steps" if len(args.steps) > 1 else "ldlm"): lambda seed, steps=steps: ldlm_document(
        pipe, args.prompt, args.tokens, steps, args.max_repeat, seed, args.new_blocks, args.dit_temperature)
        for steps in args.steps}
    if args.ar is not None:
        model, ar_tokenizer = load_ar(args.ar)
        if ar_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise SystemExit(f"the baseline in {args.ar} does not share the pipeline's tokenizer")
        window = "" if args.ar_window is None else f", window {args.ar_window}"
        ar_name = f"AR, T={args.temperature:g}{window}"
        writers[ar_name] = lambda seed: ar_document(
            model, tokenizer, args.prompt, args.tokens, args.temperature, seed, args.ar_window)
    docs = {name: [] for name in writers}
    for seed in range(args.documents):  # in turn: a slow spell of the machine slows both systems' pair
        for name, write in writers.items():
            docs[name].append(write(seed))
    systems = {name: summarize(written, tokenizer, scorer) for name, written in docs.items()}
    speed = None
    if args.ar is not None:
        rate = lambda doc: doc["tokens"] / doc["seconds"]  # noqa: E731
        speed = {}
        for name in writers:
            if name != ar_name:
                ratios = sorted(rate(a) / rate(b) for a, b in zip(docs[name], docs[ar_name]))
                speed[name] = {"over_ar": ratios, "median": statistics.median(ratios)}
    reference = None
    if args.references is not None:
        held = read_corpus(args.references, holdout_every=args.holdout_every, heldout=True)
        pieces = [piece for text in held for piece in segments(text, tokenizer)]
        if not pieces:
            raise SystemExit(f"no held-out document of {args.references} is {SEGMENT} tokens long")
        rows = segment_rows(pieces, scorer)
        reference = {k: statistics.mean(r[k] for r in rows) for k in ("gen_ppl", "rep4")}
        reference |= {"distinct4": distinct_n(pieces, 4), "segments": len(rows)}
    for name, s in systems.items():
        guard = f", guard fired in {s['guard_rate']:.1%} of groups" if "guard_rate" in s else ""
        print(f"{name}: {len(s['gen_ppl'])} segments, gen-PPL first {s['gen_ppl'][0]:.1f} last {s['gen_ppl'][-1]:.1f}"
              f" (×{s['last_over_first']:.2f}), rep-4 mean {statistics.mean(s['rep4']):.3f}, "
              f"{s['tokens_per_second']:.0f} tokens/s{guard}", flush=True)
    for name, ratio in (speed or {}).items():
        print(f"tokens/s, {name} ÷ AR, pair by pair: median {ratio['median']:.2f} (range {ratio['over_ar'][0]:.2f}"
              f"–{ratio['over_ar'][-1]:.2f}, {len(ratio['over_ar'])} pairs)")
    if reference is not None:
        print(f"references: gen-PPL {reference['gen_ppl']:.1f}, rep-4 {reference['rep4']:.3f}, distinct-4 "
              f"{reference['distinct4']:.3f} over {reference['segments']} segments")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out_path(out, ".json").write_text(json.dumps({"args": vars(args), "systems": systems, "speed": speed,
                                                  "references": reference}, indent=1, ensure_ascii=False))
    plot(systems, reference, out_path(out, ".png"))
    print(f"wrote {out_path(out, '.json')} and {out_path(out, '.png')}")


def plot(systems: dict[str, dict], reference: dict | None, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "gen_ppl", "gen-PPL (SmolLM2)"), (axes[1], "rep4", "rep-4 within the segment")):
        for name, s in systems.items():
            ax.plot([(i + 1) * SEGMENT for i in range(len(s[key]))], s[key], marker="o", markersize=3, label=name)
        if reference is not None:
            ax.axhline(reference[key], color="grey", linestyle="--", label="held-out references")
        ax.set_xlabel("tokens into the document")
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_script(main)
