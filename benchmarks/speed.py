"""Speed: generated tokens per second of ldlm against the autoregressive baseline, measured in one process run, with
a profile of where ldlm's time goes (DiT, VAE decoder, vocabulary projection).

    python benchmarks/speed.py                           # 5/10/25/50 steps × 64/256/1024 tokens × batch 1/16
    python benchmarks/speed.py --ar runs/e2e-ar --device cuda
    python benchmarks/speed.py --quick                   # CI smoke run (< 2 min on CPU)
    python benchmarks/speed.py --model checkpoints/ldlm-kjv-smollm2 --tokens 10000 --steps 25 --batch-sizes 1 \
        --ar-window 256                                  # long documents, the AR with a sliding cache

Both systems produce token ids and nothing else (no detokenization) for exactly ``tokens`` positions per row.
ldlm: an output that fits one window is one ``pipe.denoise`` call (the sampler of ``pipe(batch_size=B,
num_blocks=tokens / L)``) plus the VAE decode; a longer one runs ``LongGeneration.fixed_ids``: its own group steps
(``new_blocks`` new blocks denoised after the clean context of the blocks before them, then the VAE decode) for
⌈tokens / (new_blocks·L)⌉ groups.
Iterating LongGeneration itself would not give a fixed amount of work: with ``stop_at_eos=False`` it drops EOS
tokens before counting towards ``max_tokens``, encodes its context again from the text and resamples silent groups.
AR: ``generate``
with the KV cache (of the whole output, or with ``--ar-window N`` of its last N tokens), sampling ``tokens`` new
tokens per row (``stop_at_eos=False``).

Timing is interleaved so that a busy machine slows both systems alike: for each batch size and output length, every
round calls ldlm at each step count and then the baseline once (A, B, A, B, …), ``--repeats`` rounds (``--pairs`` at
the headline configuration). A table figure is the median over rounds; a speedup is the median of the per-round
ratios AR time / ldlm time. The last line gives the headline speedup with its interquartile range and range, and says
when that spread is too wide to trust (``bench_common.RatioSummary``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from bench_common import interleaved_seconds, out_path, run_script, setup, summarize, sync
from ldlm.baselines.causal_lm import CausalLM, load_baseline
from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline
from ldlm.pipelines.loading import load_pipeline
from ldlm.pipelines.long_generation import LongGeneration

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = dict(batch=1, tokens=256, steps=10)  # the configuration of the speedup line


def peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Call ``fn`` once (the warm-up) and return, on CUDA, its peak allocated memory in MiB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fn()
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def ldlm_ids(pipe: LatentDiffusionLMPipeline, batch: int, tokens: int, steps: int, new_blocks: int | None,
             generator: torch.Generator) -> torch.Tensor:
    """Token ids (batch, tokens) from ldlm: one window when the output fits, else block by block."""
    vae, cfg = pipe.vae, pipe.vae.config
    if tokens % cfg.block_length:
        raise ValueError(f"output length {tokens} is not a multiple of the block length {cfg.block_length}")
    blocks = tokens // cfg.block_length
    if blocks <= pipe.transformer.config.max_blocks:
        known = torch.zeros(batch, blocks * cfg.latents_per_block, cfg.latent_channels, device=pipe.device)
        unknown = torch.zeros(known.shape[:2], dtype=torch.bool, device=known.device)
        return vae.decode_sequence(pipe.denoise(known, unknown, num_inference_steps=steps, generator=generator))
    run = LongGeneration(pipe, None, max_tokens=tokens, num_documents=batch, new_blocks=new_blocks,
                         num_inference_steps=steps, generator=generator)
    return run.fixed_ids(tokens)


def ar_ids(model: CausalLM, batch: int, tokens: int, generator: torch.Generator,
           window: int | None = None) -> torch.Tensor:
    return model.generate(batch_size=batch, max_new_tokens=tokens, stop_at_eos=False, generator=generator,
                          window=window)


@contextmanager
def profiled(pipe: LatentDiffusionLMPipeline, device: torch.device) -> Iterator[dict[str, float]]:
    """Accumulate seconds spent in the DiT forward, the weak DiT's (autoguidance) and the VAE decode's parts
    (decoder layers, vocabulary projection ``vae.logits``, and the rest of ``decode_ids``: the argmax) while the block
    runs."""
    totals = {"dit": 0.0, "weak_dit": 0.0, "vae_decoder": 0.0, "vocab_projection": 0.0, "decode_ids": 0.0}
    models = {"dit": pipe.transformer, "weak_dit": pipe.weak_transformer}
    wrapped = {"decoder_states": "vae_decoder", "logits": "vocab_projection", "decode_ids": "decode_ids"}

    def timer(fn: Callable, key: str) -> Callable:
        def run(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            totals[key] += time.perf_counter() - start
            return out
        return run

    for name, key in wrapped.items():  # instance attributes shadow the methods that decode/decode_ids call
        setattr(pipe.vae, name, timer(getattr(pipe.vae, name), key))
    for key, model in models.items():
        if model is not None:
            model.forward = timer(model.forward, key)
    try:
        yield totals
    finally:
        for name in wrapped:
            delattr(pipe.vae, name)
        for model in models.values():
            if model is not None:
                del model.forward


def profile(pipe: LatentDiffusionLMPipeline, new_blocks: int | None, device: torch.device, seed: int) -> dict:
    """Shares of ldlm's time at the headline configuration."""
    b, n, s = HEADLINE["batch"], HEADLINE["tokens"], HEADLINE["steps"]
    with profiled(pipe, device) as totals:
        sync(device)
        start = time.perf_counter()
        ldlm_ids(pipe, b, n, s, new_blocks, torch.Generator(device).manual_seed(seed))
        sync(device)
        total = time.perf_counter() - start
    parts = {"DiT forward": totals["dit"], "weak DiT forward (autoguidance)": totals["weak_dit"],
             "VAE decoder layers": totals["vae_decoder"],
             "vocabulary projection (vae.logits)": totals["vocab_projection"],
             "argmax over the vocabulary": totals["decode_ids"] - totals["vae_decoder"] - totals["vocab_projection"]}
    parts["rest (scheduler, noise, glue)"] = total - sum(parts.values())
    return {"seconds": total, "parts": parts}


def shipped_longgen_tokens_per_s(pipe: LatentDiffusionLMPipeline, new_blocks: int | None, device: torch.device,
                                 seed: int) -> float:
    """Iterating LongGeneration as shipped (texts, anti-loop check) at the headline configuration, in decoded
    positions per second (groups run × new blocks × L): shows the cost of what the timed path leaves out."""
    b, n, s = HEADLINE["batch"], HEADLINE["tokens"], HEADLINE["steps"]
    run = LongGeneration(pipe, None, max_tokens=n, num_documents=b, new_blocks=new_blocks, num_inference_steps=s,
                         generator=torch.Generator(device).manual_seed(seed), stop_at_eos=False, max_repeat=1.0,
                         retries=0)
    positions = 0
    group = run._group

    def counted(context, held):
        nonlocal positions
        latents = group(context, held)
        positions += latents.shape[0] * latents.shape[1] // pipe.vae.config.latents_per_block
        return latents

    run._group = counted
    sync(device)
    start = time.perf_counter()
    for _ in run:
        pass
    sync(device)
    return positions * pipe.vae.config.block_length / (time.perf_counter() - start)


def time_cell(pipe: LatentDiffusionLMPipeline, model: CausalLM, batch: int, tokens: int, steps: list[int],
              rounds: int, new_blocks: int | None, seed: int, device: torch.device,
              ar_window: int | None = None) -> list[dict]:
    """Rows for one batch size and output length: ldlm at each step count and the baseline (its cache the last
    ``ar_window`` tokens, if given), each warmed up once, then timed in ``rounds`` interleaved rounds. An ldlm row
    carries its per-round speedups (AR time / ldlm time)."""
    gen = lambda: torch.Generator(device).manual_seed(seed)  # noqa: E731
    # the warm-ups give the peak memory: ldlm's shapes are the same at any step count
    ldlm_peak = peak_mib(lambda: ldlm_ids(pipe, batch, tokens, min(steps), new_blocks, gen()), device)
    ar = lambda: ar_ids(model, batch, tokens, gen(), ar_window)  # noqa: E731
    ar_peak = peak_mib(ar, device)
    calls = [lambda s=s: ldlm_ids(pipe, batch, tokens, s, new_blocks, gen()) for s in steps]
    *ldlm_times, ar_times = interleaved_seconds([*calls, ar], rounds, device)

    def row(system: str, s: int | None, times: list[float], peak: float | None) -> dict:
        seconds = statistics.median(times)
        return {"system": system, "steps": s, "batch": batch, "tokens": tokens, "seconds": seconds,
                "tokens_per_s": batch * tokens / seconds, "peak_mib": peak}

    rows = [{**row("ldlm", s, times, ldlm_peak), "speedups": [ar / t for ar, t in zip(ar_times, times)]}
            for s, times in zip(steps, ldlm_times)]
    return rows + [row("ar", None, ar_times, ar_peak)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--ar", default=None, help="trained AR baseline (e.g. runs/e2e-ar); default: untrained")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50])
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-blocks", type=int, default=None,
                        help="new blocks per group past the window (default: LongGeneration's, window // 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per batch size and length")
    parser.add_argument("--pairs", type=int, default=9,
                        help="rounds at the headline configuration (batch 1, 256 tokens), at least 3")
    parser.add_argument("--ar-window", type=int, default=None,
                        help="the AR's KV cache holds its last N tokens (a sliding window; default: the whole output)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", help="weights of ldlm's DiTs and of the AR model alike "
                        "(float32 | bfloat16 | float16; ldlm's VAE stays fp32)")
    parser.add_argument("--quick", action="store_true",
                        help="batch 1 and 16, 256 tokens, 10 steps, 1 round, 5 headline pairs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "speed"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.tokens, args.batch_sizes, args.repeats, args.pairs = [10], [256], [1, 16], 1, 5
    if min(args.steps + args.tokens + args.batch_sizes + [args.repeats]) < 1 or args.pairs < 3:
        raise SystemExit("--steps, --tokens, --batch-sizes and --repeats must be positive and --pairs at least 3")
    if args.ar_window is not None and args.ar_window < 1:
        raise SystemExit(f"--ar-window must be at least 1, got {args.ar_window}")
    device = setup(args.device, args.threads)
    # the speedup line's configuration is always measured
    steps = sorted(set(args.steps) | {HEADLINE["steps"]})
    lengths = sorted(set(args.tokens) | {HEADLINE["tokens"]})
    batches = sorted(set(args.batch_sizes) | {HEADLINE["batch"]})

    pipe = load_pipeline(args.model, dtype=args.dtype).to(device)
    block = pipe.vae.config.block_length
    if any(n % block for n in lengths):
        raise SystemExit(f"--tokens must be multiples of the block length {block}, got {' '.join(map(str, lengths))}")
    model, ar_note = load_baseline(args.ar, pipe.vae)
    ar_name = "AR (KV cache)" if args.ar_window is None else f"AR (sliding KV cache, {args.ar_window} tokens)"
    model = model.to(device, getattr(torch, args.dtype))
    window = pipe.transformer.config.max_blocks * block
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{torch.get_num_threads()} threads, {args.dtype} weights; ldlm window {window} tokens; AR baseline: "
          f"{ar_note}", flush=True)

    b, n, s = HEADLINE["batch"], HEADLINE["tokens"], HEADLINE["steps"]
    rows = []
    for batch in batches:
        for tokens in lengths:
            rounds = max(args.repeats, args.pairs) if (batch, tokens) == (b, n) else args.repeats
            cell = time_cell(pipe, model, batch, tokens, steps, rounds, args.new_blocks, args.seed, device,
                             args.ar_window)
            rows += cell
            for r in cell:
                name = f"ldlm {r['steps']:3d} steps" if r["system"] == "ldlm" else ar_name
                print(f"  {name}, batch {batch:3d}, {tokens:5d} tokens: {r['seconds']:8.3f} s"
                      + (f", peak {r['peak_mib']:.0f} MiB" if r["peak_mib"] else "")
                      + (f", ×{statistics.median(r['speedups']):.2f} the AR speed" if "speedups" in r else ""),
                      flush=True)

    print("\n| system | batch | " + " | ".join(f"{length} tokens" for length in lengths) + " |  (tokens/s)")
    print("|---|---|" + "---|" * len(lengths))
    by_key = {(r["system"], r["steps"], r["batch"], r["tokens"]): r for r in rows}
    for batch in batches:
        for system, k in [("ldlm", k) for k in steps] + [("ar", None)]:
            name = f"ldlm, {k} steps" if system == "ldlm" else ar_name
            print(f"| {name} | {batch} | "
                  + " | ".join(f"{by_key[system, k, batch, length]['tokens_per_s']:.0f}" for length in lengths) + " |")

    prof = profile(pipe, args.new_blocks, device, args.seed)
    print(f"\nldlm time at {s} steps, {n} tokens, batch {b} ({prof['seconds']:.3f} s, timers synchronize):")
    for part, seconds in prof["parts"].items():
        print(f"  {part:36s} {seconds:8.4f} s  {100 * seconds / prof['seconds']:5.1f} %")
    shipped = shipped_longgen_tokens_per_s(pipe, args.new_blocks, device, args.seed)
    headline = by_key["ldlm", s, b, n]
    print(f"LongGeneration iterated as shipped (texts, anti-loop check): {shipped:.0f} decoded positions/s "
          f"(timed path: {headline['tokens_per_s']:.0f} tokens/s)")

    speedup = summarize(headline["speedups"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": args.dtype,
            "model": args.model or "shipped", "ar": ar_note, "ar_window": args.ar_window, "new_blocks": args.new_blocks,
            "repeats": args.repeats, "pairs": args.pairs, "quick": args.quick}
    out_path(out, ".json").write_text(json.dumps({**meta, "rows": rows, "profile": prof,
                                                  "shipped_longgen_positions_per_s": shipped,
                                                  "speedup@10steps": speedup.median,
                                                  "speedup@10steps_spread": speedup.record()}, indent=1))
    plot(rows, steps, batches, out_path(out, ".png"), window, ar_name)
    print(f"wrote {out_path(out, '.json')} and {out_path(out, '.png')}")
    print(f"speedup@10steps: {speedup.describe()}")


def plot(rows: list[dict], steps: list[int], batches: list[int], path: Path, window: int, ar_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 3.6), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for system, s in [("ldlm", s) for s in steps] + [("ar", None)]:
            points = sorted((r["tokens"], r["tokens_per_s"]) for r in rows
                            if r["system"] == system and r["steps"] == s and r["batch"] == batch)
            style = dict(color="black", linestyle="--") if system == "ar" else {}
            ax.plot(*zip(*points), marker="o", label=f"ldlm, {s} steps" if s else ar_name, **style)
        ax.axvline(window, color="gray", linewidth=0.8, linestyle=":", label=f"one DiT window ({window} tokens)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lengths = sorted({r["tokens"] for r in rows})
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("output length (tokens)")
        ax.set_ylabel("generated tokens / s")
        ax.set_title(f"batch {batch}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_script(main)
