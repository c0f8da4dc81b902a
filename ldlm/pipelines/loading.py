"""Loading exported models: the shipped checkpoint, pipelines, VAEs with their tokenizer, and latent classifiers."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from torch import nn

from ldlm.align.teacher import load_tokenizer, pad_id_of
from ldlm.dit.objective import scheduler_class
from ldlm.errors import LdlmError
from ldlm.pipelines.latent_classifier import LatentClassifier
from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline
from ldlm.vae.model import TextVAE

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "ldlm-e2e-smollm2"
SHIPPED_LONG = SHIPPED.parent / "ldlm-kjv-smollm2"  # the long-document pipeline (KJV), `ldlm longgen`'s default
SHIPPED_CONTENT = SHIPPED.parent / "e2e-guidance" / "content"  # trained on the shipped VAE's latents
DIT_DTYPES = ("float32", "bfloat16", "float16")


def load_pipeline(path: str | Path | None = None, scheduler: str | None = None, default: Path = SHIPPED,
                  dtype: str = "float32") -> LatentDiffusionLMPipeline:
    """A pipeline from a folder (None: the shipped ``default``, the E2E one unless told), optionally with another
    scheduler by short name (built from the saved scheduler's config, so the noise schedule and prediction type carry
    over) and its DiTs (the transformer and the weak one) in another ``dtype``, one of :data:`DIT_DTYPES`; the VAE
    and the sampler state stay fp32. bfloat16 keeps gen-PPL and is faster on CPUs with bf16 instructions
    (docs/RESULTS.md)."""
    if dtype not in DIT_DTYPES:
        raise LdlmError(f"dtype must be one of {', '.join(DIT_DTYPES)}, got {dtype!r}")
    folder = Path(path) if path is not None else default
    if not (folder / "model_index.json").is_file():
        hint = "" if path is not None else " (the shipped checkpoint comes with a source checkout; pass --model)"
        raise LdlmError(f"no pipeline at {folder}{hint}")
    diffusers_logging.disable_progress_bar()
    try:
        pipe = LatentDiffusionLMPipeline.from_pretrained(folder)
    except (OSError, ValueError, KeyError, AttributeError, RuntimeError) as err:
        raise LdlmError(f"cannot load the pipeline at {folder}: {str(err).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    for model in (pipe.transformer, pipe.weak_transformer):
        if model is not None:  # nn.Module.to: ModelMixin.to warns of fp32-only modules, and a LatentDiT has none
            nn.Module.to(model, getattr(torch, dtype))
    if scheduler is not None:
        try:
            pipe.scheduler = scheduler_class(scheduler).from_config(pipe.scheduler.config)
            _ = pipe.objective
        except ValueError as err:
            raise LdlmError(str(err).splitlines()[0]) from None
    return pipe


def vae_folder(path: str | Path) -> Path:
    """The exported VAE folder of a VAE training output or pipeline folder (``vae/`` beside ``tokenizer/``) or of a
    VAE folder holding ``tokenizer/``; LdlmError when there is none."""
    root = Path(path)
    folder = root / "vae" if (root / "vae" / "config.json").is_file() else root
    if not (folder / "config.json").is_file() or not (root / "tokenizer").is_dir():
        raise LdlmError(f"{path} holds no exported VAE with a tokenizer/ folder")
    return folder


def load_vae(path: str | Path) -> tuple[TextVAE, object]:
    """A frozen VAE and its tokenizer from a folder that :func:`vae_folder` accepts."""
    folder = vae_folder(path)
    try:
        vae = TextVAE.from_pretrained(folder).float().eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError) as err:
        raise LdlmError(f"cannot load the VAE at {folder}: {str(err).splitlines()[0]}") from None
    root = Path(path)
    tokenizer = load_tokenizer(str(root / "tokenizer"))
    if pad_id_of(tokenizer) != vae.config.pad_token_id or tokenizer.eos_token_id != vae.config.eos_token_id:
        raise LdlmError(f"the tokenizer in {path} does not match its VAE (pad/EOS ids)")
    return vae, tokenizer


def load_classifier(path: str | Path) -> LatentClassifier:
    """A frozen classifier in eval mode from its exported folder or the training output holding ``classifier/``
    (gradients still reach its input latents)."""
    root = Path(path)
    folder = root / "classifier" if (root / "classifier" / "config.json").is_file() else root
    if not (folder / "config.json").is_file():
        raise LdlmError(f"{path} holds no exported latent classifier (config.json)")
    return LatentClassifier.from_pretrained(folder).float().eval().requires_grad_(False)
