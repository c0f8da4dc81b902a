"""VAE reconstruction metrics on held-out text: token accuracy (all / seen / unseen types), exact blocks, noise."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ldlm.config import VAEExperiment, load_config
from ldlm.corpus import read_corpus
from ldlm.data import pad_id_of, to_blocks, tokenize, training_documents
from ldlm.errors import LdlmError
from ldlm.latents import load_vae
from ldlm.vae.model import TextVAE


@torch.no_grad()
def reconstruction_metrics(
    vae: TextVAE,
    blocks,
    seen_types: torch.Tensor | None = None,
    noise: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Greedy reconstruction of every block from its posterior mean plus ``noise``·σ Gaussian noise (standardized
    units). ``seen_types``: bool (V,) marking token types that occur in the training corpora."""
    vae.eval()
    generator = torch.Generator().manual_seed(seed)
    hits = {"all": [0, 0], "seen": [0, 0], "unseen": [0, 0]}
    exact = 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks.input_ids[start : start + batch_size]
        mask = blocks.attention_mask[start : start + batch_size].bool()
        z = vae.encode(ids.to(vae.device), mask.to(vae.device).long())
        if noise > 0:
            eps = torch.randn(z.shape, generator=generator).to(z.device)
            z = z + noise * vae.latent_std * eps
        correct = (vae.decode_ids(z).cpu() == ids) | ~mask
        exact += int(correct.all(-1).sum())
        groups = {"all": mask}
        if seen_types is not None:
            seen = seen_types[ids]
            groups |= {"seen": mask & seen, "unseen": mask & ~seen}
        for name, where in groups.items():
            hits[name][0] += int(correct[where].sum())
            hits[name][1] += int(where.sum())
    out = {f"acc_{k}": h / n for k, (h, n) in hits.items() if n}
    out |= {f"tokens_{k}": n for k, (_, n) in hits.items() if n}
    out["exact_blocks"] = exact / len(blocks)
    return out


def _exported_run(run: str | Path) -> Path:
    run_dir = Path(run)
    if not (run_dir / "vae" / "config.json").is_file():
        raise LdlmError(f"{run_dir} has no exported VAE (expected {run_dir / 'vae'})")
    return run_dir


def evaluate_run(run: str | Path, texts: list[str], noise: list[float]) -> dict[float, dict[str, float]]:
    """Reconstruction metrics of a training run's exported VAE on ``texts`` at each latent noise level; a token
    type counts as seen when it occurs in the run's training corpora."""
    run_dir = _exported_run(run)
    cfg = load_config(VAEExperiment, run_dir / "config.yaml")
    vae, tokenizer = load_vae(run_dir)
    blocks = to_blocks(tokenize(texts, tokenizer), vae.config.block_length, pad_id_of(tokenizer))
    seen = torch.zeros(vae.config.vocab_size, dtype=torch.bool)
    seen[torch.tensor([t for doc in training_documents(cfg.data, tokenizer) for t in doc])] = True
    return {sigma: reconstruction_metrics(vae, blocks, seen, sigma) for sigma in noise}


def evaluate_vae_cli(run: str, corpus: str, text_field: str, limit: int | None, skip: int, noise: list[float],
                     holdout_every: int, output: str | None) -> None:
    """Print (and optionally save as JSON) reconstruction metrics of a run's exported VAE on a corpus."""
    _exported_run(run)
    texts = read_corpus(corpus, text_field, limit, skip, holdout_every=holdout_every, heldout=holdout_every > 0)
    results = evaluate_run(run, texts, noise)
    for sigma, metrics in results.items():
        print(f"σ={sigma:<4} " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in metrics.items()))
    if output:
        Path(output).write_text(json.dumps({"corpus": corpus, "documents": len(texts),
                                            "noise": {str(k): v for k, v in results.items()}}, indent=2))
