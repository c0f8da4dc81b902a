"""Memory: peak memory of generating one long document of 1k, 4k and 16k tokens, ldlm (block by block) against the
autoregressive baseline (KV cache), each measurement in a fresh process.

    python benchmarks/memory.py --ar runs/e2e-ar                # docs/img/memory.{json,png}
    python benchmarks/memory.py --device cuda --ar runs/e2e-ar   # CUDA: torch.cuda.max_memory_allocated
    python benchmarks/memory.py --quick                          # CI smoke run: 256 and 1,024 tokens

On CPU the figure is the process's peak resident set (VmHWM, reset once the models are loaded) and its rise over
the resident set at that point; on CUDA, the peak of allocated tensor memory and its rise over the loaded weights.
Both systems generate exactly the requested tokens: ldlm with ``LongGeneration.fixed_ids`` (its group steps with the
bounded context window, no EOS or anti-loop handling) at ``--steps`` denoising steps, the baseline sampling every
token with a cache sized for the whole document, as a KV-cache decoder must; with ``--ar-window N`` also with a
sliding cache of its last N tokens (system ``ar-window``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench_common import out_path, run_script, setup
from ldlm.baselines.causal_lm import CausalLM, load_ar
from ldlm.pipelines.loading import SHIPPED, load_pipeline
from ldlm.pipelines.long_generation import LongGeneration
from ldlm.vae.model import TextVAE

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"ldlm": "ldlm (block by block)", "ar": "AR (KV cache)", "ar-window": "AR (sliding KV cache)"}


def resident_mb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS: now, VmHWM: peak) in MB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def reset_peak(device: torch.device) -> None:
    """Start the peak over from now (loading has its own, higher transient peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as refs:  # "5": reset the peak resident set (Linux)
            refs.write("5")


def used_mb(device: torch.device, peak: bool) -> float:
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**20
    return resident_mb("VmHWM" if peak else "VmRSS")


def child(args: argparse.Namespace, tokens: int) -> dict:
    """One measurement: load ``args.system``, generate one document of ``tokens`` tokens, report its memory."""
    device = setup(args.device, args.threads)
    generator = torch.Generator(device).manual_seed(args.seed)
    if args.system == "ldlm":
        pipe = load_pipeline(args.model).to(device)
        reset_peak(device)
        loaded = used_mb(device, peak=False)
        start = time.perf_counter()
        run = LongGeneration(pipe, None, tokens, num_inference_steps=args.steps, generator=generator)
        tokens = run.fixed_ids(tokens).shape[1]
    else:
        if args.ar is not None:
            model = load_ar(args.ar)[0].to(device)
        else:  # the stand-in needs only the VAE's sizes; a loaded-and-freed pipeline would leave RSS to reuse
            cfg = TextVAE.load_config(Path(args.model or SHIPPED) / "vae")
            model = CausalLM.small(vocab_size=cfg["vocab_size"], d_embed=cfg["d_embed"],
                                   eos_token_id=cfg["eos_token_id"]).eval().to(device)
        reset_peak(device)
        loaded = used_mb(device, peak=False)
        start = time.perf_counter()
        window = args.ar_window if args.system == "ar-window" else None
        tokens = model.generate(max_new_tokens=tokens, stop_at_eos=False, generator=generator,
                                window=window).shape[1]
    seconds = time.perf_counter() - start
    return {"system": args.system, "tokens": tokens, "seconds": seconds, "loaded_mb": loaded,
            "peak_mb": used_mb(device, peak=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--ar", default=None,
                        help="trained AR baseline (e.g. runs/e2e-ar); default: an untrained one of the same size")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ar-window", type=int, default=None,
                        help="also measure the AR model with a sliding KV cache of its last N tokens")
    parser.add_argument("--quick", action="store_true", help="256 and 1,024 tokens")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "memory"))
    parser.add_argument("--system", choices=tuple(LABELS), help=argparse.SUPPRESS)  # set in the measuring child
    args = parser.parse_args()
    if args.ar_window is not None and args.ar_window < 1 or args.system == "ar-window" and args.ar_window is None:
        raise SystemExit("--ar-window must be given, and be at least 1, for the sliding-cache AR")
    setup(args.device)
    if args.system is not None:
        print(json.dumps(child(args, args.tokens[0])))
        return
    if args.quick:
        args.tokens = [256, 1024]

    systems = ["ldlm", "ar"] + (["ar-window"] if args.ar_window else [])
    rows = []
    for system in systems:
        for tokens in args.tokens:
            command = [sys.executable, __file__, "--system", system, "--tokens", str(tokens), "--steps",
                       str(args.steps), "--threads", str(args.threads), "--device", args.device, "--seed",
                       str(args.seed)]
            command += ["--model", args.model] if args.model else []
            command += ["--ar", args.ar] if args.ar else []
            command += ["--ar-window", str(args.ar_window)] if args.ar_window else []
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{system} at {tokens} tokens failed: {done.stderr.strip().splitlines()[-1]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {system:9s} {r['tokens']:6d} tokens: peak {r['peak_mb']:7.0f} MB "
                  f"({r['peak_mb'] - r['loaded_mb']:+6.0f} MB over the loaded model), {r['seconds']:.1f} s", flush=True)

    what = "peak allocated MiB" if args.device.startswith("cuda") else "peak RSS MB"
    print("\n| system | " + " | ".join(f"{n} tokens" for n in args.tokens)
          + f" |  ({what}; rise over the loaded model)")
    print("|---|" + "---|" * len(args.tokens))
    for system in systems:
        cells = [f"{r['peak_mb']:.0f} ({r['peak_mb'] - r['loaded_mb']:+.0f})" for r in rows if r["system"] == system]
        print(f"| {LABELS[system]} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(args).items() if k != "system"}
    meta |= {"torch": torch.__version__, "measure": what}
    out_path(out, ".json").write_text(json.dumps({"config": meta, "rows": rows}, indent=1))
    plot(rows, what, out_path(out, ".png"))
    print(f"wrote {out_path(out, '.json')} and {out_path(out, '.png')}")


def plot(rows: list[dict], what: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    styles = {"ldlm": {}, "ar": dict(color="black", linestyle="--"), "ar-window": dict(color="gray", linestyle=":")}
    for system, style in styles.items():
        points = [(r["tokens"], r["peak_mb"] - r["loaded_mb"]) for r in rows if r["system"] == system]
        if points:
            ax.plot(*zip(*points), marker="o", label=LABELS[system], **style)
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel(f"rise of the {what} over the loaded model", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_script(main)
