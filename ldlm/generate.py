"""``ldlm generate``, ``infill`` and ``longgen``: text from a saved pipeline (by default the checkpoint shipped in
``checkpoints/``)."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from ldlm.dit.objective import scheduler_class
from ldlm.errors import LdlmError
from ldlm.guidance import ClassifierControl, GradientGuidance, KeywordControl, LengthControl
from ldlm.longgen import LongGeneration
from ldlm.pipeline import LatentDiffusionLMPipeline

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "ldlm-e2e-smollm2"
SHIPPED_CONTENT = SHIPPED.parent / "e2e-guidance" / "content"  # trained on the shipped VAE's latents


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


def _device_pipeline(path: str | None, scheduler: str | None, device: str) -> LatentDiffusionLMPipeline:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LdlmError(f"device '{device}' requested but CUDA is not available")
    return load_pipeline(path, scheduler).to(device)


def build_guidance(model: str | None, length: int | None = None, keywords: list[str] = (), content: list[str] = (),
                   classifier: str | None = None, steps: int = 3, lr: float = 0.3,
                   proximity: float = 0.01) -> GradientGuidance | None:
    """Gradient guidance from command-line targets (None when there are none); content labels use ``classifier``,
    by default the one shipped for the shipped pipeline (``model`` None)."""
    try:
        controls = [KeywordControl(word) for word in keywords]
        if length is not None:
            controls.append(LengthControl(length))
        if content:
            classifier = classifier or (str(SHIPPED_CONTENT) if model is None else None)
            if classifier is None:
                raise LdlmError("--content needs --classifier (a content classifier trained on this model's VAE)")
            from ldlm.classifier import load_classifier

            model = load_classifier(classifier)
            controls += [ClassifierControl(model, label) for label in content]
        return GradientGuidance(controls, steps=steps, lr=lr, proximity=proximity) if controls else None
    except ValueError as err:
        raise LdlmError(str(err)) from None


def generate(path: str | None, prompts: list[str] | None, num_samples: int, steps: int, seed: int,
             scheduler: str | None, guidance_scale: float, num_blocks: int | None, device: str,
             guidance: GradientGuidance | None = None) -> list[str]:
    """Texts for the command line; argument errors become one-line LdlmErrors."""
    pipe = _device_pipeline(path, scheduler, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        if prompts:
            return pipe(prompts, num_blocks=num_blocks, num_inference_steps=steps, guidance_scale=guidance_scale,
                        num_samples_per_prompt=num_samples, generator=generator, guidance=guidance).texts
        return pipe(batch_size=num_samples, num_blocks=num_blocks, num_inference_steps=steps, generator=generator,
                    guidance=guidance).texts
    except ValueError as err:
        raise LdlmError(str(err)) from None


def infill(path: str | None, segments: list[str], gap_blocks: int, method: str, num_samples: int, steps: int,
           seed: int, device: str) -> list[str]:
    """Infilled texts for the command line: ``_`` in ``segments`` marks a gap."""
    pipe = _device_pipeline(path, None, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        return pipe.infill([None if s == "_" else s for s in segments], gap_blocks=gap_blocks, method=method,
                           num_samples=num_samples, num_inference_steps=steps, generator=generator).texts
    except ValueError as err:
        raise LdlmError(str(err)) from None


def write_long_document(path: str | None, output: str, prompt: str | None, max_tokens: int,
                        new_blocks: int | None, steps: int, seed: int, stop_at_eos: bool, max_repeat: float,
                        device: str) -> tuple[int, str]:
    """Generate one long document block by block, appending each finished group to ``output`` as it is decoded
    (an interrupted run keeps what it wrote), with a progress bar; returns (tokens, stop reason)."""
    from tqdm.auto import tqdm

    target = Path(output)
    if not target.parent.is_dir() or target.is_dir():
        raise LdlmError(f"cannot write {output}: " + ("it is a folder" if target.is_dir() else
                                                       f"no folder {target.parent}"))
    pipe = _device_pipeline(path, None, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        run = LongGeneration(pipe, prompt, max_tokens, new_blocks=new_blocks, num_inference_steps=steps,
                             generator=generator, stop_at_eos=stop_at_eos, max_repeat=max_repeat)
    except ValueError as err:
        raise LdlmError(str(err)) from None
    with open(target, "w", encoding="utf-8") as handle, tqdm(total=max_tokens, unit="tok") as bar:
        for (text,) in run:
            handle.write(text)
            handle.flush()
            bar.update(min(run.token_counts[0], max_tokens) - bar.n)
    return run.token_counts[0], run.stop_reasons[0]
