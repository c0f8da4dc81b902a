"""VAE reconstruction on held-out text: token accuracy (all / seen / unseen types), exact blocks, robustness to
latent noise, and corpus BLEU of decoded texts; ``ldlm eval-vae``."""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from ldlm.align.teacher import pad_id_of
from ldlm.data.corpus import read_corpus
from ldlm.data.token_blocks import AFTER_END, BEFORE_START, to_blocks, tokenize, training_documents
from ldlm.evaluation.metrics import corpus_bleu
from ldlm.pipelines.loading import load_vae, vae_folder
from ldlm.training.config import VAEExperiment, load_config
from ldlm.vae.model import TextVAE


@torch.no_grad()
def reconstructed_ids(vae: TextVAE, blocks, noise: float = 0.0, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Greedy token ids (n, L) of every block decoded from its posterior mean plus ``noise``·σ Gaussian noise
    (standardized units); a context decoder reads each block with its noisy neighbours in the same document and an
    end-of-text block after the document's last."""
    vae.eval()
    generator = torch.Generator().manual_seed(seed)

    def noisy(z: torch.Tensor) -> torch.Tensor:
        return z if noise == 0 else z + noise * vae.latent_std * torch.randn(z.shape, generator=generator).to(z.device)

    batches = zip(blocks.input_ids.split(batch_size), blocks.attention_mask.split(batch_size))
    latents = torch.cat([noisy(vae.encode(ids.to(vae.device), mask.to(vae.device))) for ids, mask in batches])
    neighbours = present = None
    if vae.config.context_blocks:
        end = noisy(vae.unstandardize(vae.end_block_latents().to(vae.device))[None].to(latents.dtype))
        index = blocks.neighbour_index(vae.config.context_blocks).to(vae.device)
        present = index != BEFORE_START
        neighbours = torch.cat([latents, end])[torch.where(index == AFTER_END, len(blocks), index.clamp(min=0))]
    out = []
    for start in range(0, len(blocks), batch_size):
        part = slice(start, start + batch_size)
        context = () if neighbours is None else (neighbours[part], present[part])
        out.append(vae.decode_ids(latents[part], *context).cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstruction_metrics(
    vae: TextVAE,
    blocks,
    seen_types: torch.Tensor | None = None,
    noise: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Token accuracy (all / seen / unseen types) and exact blocks of :func:`reconstructed_ids`. ``seen_types``: bool
    (V,) marking token types that occur in the training corpora."""
    ids, mask = blocks.input_ids, blocks.attention_mask.bool()
    correct = (reconstructed_ids(vae, blocks, noise, batch_size, seed) == ids) | ~mask
    groups = {"all": mask}
    if seen_types is not None:
        seen = seen_types[ids]
        groups |= {"seen": mask & seen, "unseen": mask & ~seen}
    out = {}
    for name, where in groups.items():
        if where.any():
            out[f"acc_{name}"] = int(correct[where].sum()) / int(where.sum())
    out |= {f"tokens_{name}": int(where.sum()) for name, where in groups.items() if where.any()}
    out["exact_blocks"] = int(correct.all(-1).sum()) / len(blocks)
    return out


@torch.no_grad()
def vae_reconstruction(vae: TextVAE, tokenizer, texts: list[str]) -> dict[str, float]:
    """Greedy reconstruction of ``texts`` from their posterior means: token accuracy and exact blocks (as in
    ``ldlm eval-vae``) and corpus BLEU-4 of the decoded texts against the inputs."""
    blocks = to_blocks(tokenize(texts, tokenizer), vae.config.block_length, pad_id_of(tokenizer))
    latents = vae.encode_text(texts, tokenizer)
    by_length = defaultdict(list)
    for i, z in enumerate(latents):
        by_length[len(z)].append(i)
    decoded = [""] * len(texts)
    for index in by_length.values():
        for i, text in zip(index, vae.decode_text(torch.stack([latents[i] for i in index]), tokenizer)):
            decoded[i] = text
    return {**reconstruction_metrics(vae, blocks), "bleu4": corpus_bleu(texts, decoded)}


def evaluate_run(run: str | Path, texts: list[str], noise: list[float]) -> dict[float, dict[str, float]]:
    """Reconstruction metrics on ``texts`` at each latent noise level of the VAE in ``run``: a training output, a
    pipeline, or any folder :func:`~ldlm.pipelines.loading.vae_folder` accepts. For a training output (with its
    ``config.yaml``) a token type counts as seen when it occurs in the training corpora (``acc_seen`` /
    ``acc_unseen``)."""
    vae, tokenizer = load_vae(run)
    config = Path(run) / "config.yaml"
    blocks = to_blocks(tokenize(texts, tokenizer), vae.config.block_length, pad_id_of(tokenizer))
    seen = None
    if config.is_file():
        cfg = load_config(VAEExperiment, config)
        seen = torch.zeros(vae.config.vocab_size, dtype=torch.bool)
        seen[torch.tensor([t for doc in training_documents(cfg.data, tokenizer) for t in doc])] = True
    return {sigma: reconstruction_metrics(vae, blocks, seen, sigma) for sigma in noise}


def eval_vae_command(args: argparse.Namespace) -> None:
    """``ldlm eval-vae``: print (and with ``--output`` save as JSON) reconstruction metrics of the VAE in ``--vae``
    (see :func:`evaluate_run`) on a corpus (``--corpus``, ``--text-field``, ``--limit``, ``--skip``,
    ``--holdout-every``) at each ``--noise``."""
    vae_folder(args.vae)
    texts = read_corpus(args.corpus, args.text_field, args.limit, args.skip, holdout_every=args.holdout_every,
                        heldout=args.holdout_every > 0)
    results = evaluate_run(args.vae, texts, args.noise)
    for sigma, metrics in results.items():
        print(f"σ={sigma:<4} " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in metrics.items()))
    if args.output:
        Path(args.output).write_text(json.dumps({"corpus": args.corpus, "documents": len(texts),
                                                 "noise": {str(k): v for k, v in results.items()}}, indent=2))
