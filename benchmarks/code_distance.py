"""Code distance: how far from the VAE's code a pipeline's samples land, read as an equivalent latent noise σ.

    python benchmarks/code_distance.py --model runs/x/pipeline --out docs/img/code_distance

The distance of standardized latents is the RMS difference to their snapped version (decoded to tokens and encoded
again, ``TextVAE.snap_sequence``), over each text's blocks up to the one holding its EOS. Held-out references with
σ·ε noise give the reference curve; each DiT row (unconditional samples at a step count and temperature) is placed on
it. A DiT row far worse in gen-PPL than the VAE row of its σ has a content problem, not a decoding one.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from bench_common import out_path, run_script, setup
from ldlm.data.corpus import read_corpus
from ldlm.pipelines.loading import load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def distance(vae, latents: list[torch.Tensor]) -> float:
    """RMS distance of standardized latent sequences (each (n, C)) to their snapped version, pooled over all."""
    squared, count = 0.0, 0
    for z in latents:
        gap = z[None] - vae.snap_sequence(z[None])
        squared, count = squared + float(gap.pow(2).sum()), count + gap.numel()
    return (squared / count) ** 0.5


def text_blocks(vae, latents: torch.Tensor) -> list[torch.Tensor]:
    """Standardized sample latents (B, N, C) cut after the block that holds each decoded text's first EOS."""
    cfg = vae.config
    ids = vae.decode_sequence(latents)
    out = []
    for row, z in zip(ids, latents):
        eos = (row == cfg.eos_token_id).nonzero()
        blocks = int(eos[0]) // cfg.block_length + 1 if len(eos) else len(row) // cfg.block_length
        out.append(z[: blocks * cfg.latents_per_block])
    return out


def sigma_equivalent(curve: list[tuple[float, float]], value: float) -> float | None:
    """The noise σ at which the reference curve (σ, distance), increasing in σ, reads ``value``: its first σ below
    the curve, None beyond its end."""
    if value < curve[0][1]:
        return curve[0][0]
    for (s0, d0), (s1, d1) in zip(curve, curve[1:]):
        if d0 <= value <= d1:
            return s0 + (s1 - s0) * (value - d0) / (d1 - d0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped checkpoint)")
    parser.add_argument("--references", default=str(ROOT / ".." / "shared" / "data" / "e2e" / "test.jsonl"))
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 100])
    parser.add_argument("--temperatures", type=float, nargs="+", default=None, help="starting-noise temperatures "
                        "(default: the pipeline's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "code_distance"))
    args = parser.parse_args()
    if args.samples < 1 or min(args.steps) < 1:
        raise SystemExit("--samples and --steps must be at least 1")
    if sorted(args.sigmas) != args.sigmas or any(s < 0 for s in args.sigmas):
        raise SystemExit("--sigmas must be non-negative and increasing")
    if not Path(args.references).is_file():
        raise SystemExit(f"corpus not found: {args.references}")
    device = setup(args.device)
    pipe = load_pipeline(args.model).to(device)
    vae = pipe.vae
    texts = random.Random(args.seed).sample(read_corpus(args.references), args.samples)
    clean = vae.encode_text(texts, pipe.tokenizer)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    curve = [(s, distance(vae, [z + s * torch.randn(z.shape, generator=generator, device=device) for z in clean]))
             for s in args.sigmas]
    rows = {f"references, σ={s:g}": {"distance": d, "sigma": s} for s, d in curve}
    for steps in args.steps:
        for temperature in args.temperatures or [pipe.config.temperature]:
            generator = torch.Generator(device=device).manual_seed(args.seed)
            latents = pipe(batch_size=args.samples, num_inference_steps=steps, generator=generator,
                           temperature=temperature, output_type="latent").latents
            d = distance(vae, text_blocks(vae, vae.standardize(latents.to(device))))
            name = f"ldlm, {steps} steps" + (f", T={temperature:g}" if temperature != 1 else "")
            rows[name] = {"distance": d, "sigma": sigma_equivalent(curve, d)}
    print("| latents | distance to the code | noise-σ equivalent |\n|---|---|---|")
    for name, row in rows.items():
        sigma = "–" if row["sigma"] is None else f"{row['sigma']:.2f}"
        print(f"| {name} | {row['distance']:.3f} | {sigma} |")
    out = out_path(args.out, ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "rows": rows}, indent=1, ensure_ascii=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main)
