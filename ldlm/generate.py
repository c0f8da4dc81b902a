"""``ldlm generate``: text from a saved pipeline (by default the checkpoint shipped in ``checkpoints/``)."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from ldlm.dit.objective import scheduler_class
from ldlm.errors import LdlmError
from ldlm.pipeline import LatentDiffusionLMPipeline

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "ldlm-e2e-smollm2"


def load_pipeline(path: str | Path | None = None, scheduler: str | None = None) -> LatentDiffusionLMPipeline:
    """A pipeline from a folder (default: the shipped checkpoint), optionally with another scheduler by short name
    (built from the saved scheduler's config, so the noise schedule and prediction type carry over)."""
    folder = Path(path) if path is not None else SHIPPED
    if not (folder / "model_index.json").is_file():
        hint = "" if path is not None else " (the shipped checkpoint comes with a source checkout; pass --model)"
        raise LdlmError(f"no pipeline at {folder}{hint}")
    diffusers_logging.disable_progress_bar()
    try:
        pipe = LatentDiffusionLMPipeline.from_pretrained(folder)
    except (OSError, ValueError, KeyError, AttributeError, RuntimeError) as err:
        raise LdlmError(f"cannot load the pipeline at {folder}: {str(err).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        try:
            pipe.scheduler = scheduler_class(scheduler).from_config(pipe.scheduler.config)
            pipe.objective()
        except ValueError as err:
            raise LdlmError(str(err).splitlines()[0]) from None
    return pipe


def generate(path: str | None, prompts: list[str] | None, num_samples: int, steps: int, seed: int,
             scheduler: str | None, guidance_scale: float, num_blocks: int | None, device: str) -> list[str]:
    """Texts for the command line; argument errors become one-line LdlmErrors."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LdlmError(f"device '{device}' requested but CUDA is not available")
    pipe = load_pipeline(path, scheduler).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        if prompts:
            return pipe(prompts, num_blocks=num_blocks, num_inference_steps=steps, guidance_scale=guidance_scale,
                        num_samples_per_prompt=num_samples, generator=generator).texts
        return pipe(batch_size=num_samples, num_blocks=num_blocks, num_inference_steps=steps, generator=generator).texts
    except ValueError as err:
        raise LdlmError(str(err)) from None
