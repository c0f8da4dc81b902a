"""LatentDiffusionLMPipeline: noise → LatentDiT + diffusers scheduler → block latents → TextVAE decoder → text."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ldlm.dit.model import LatentDiT
from ldlm.dit.objective import DiffusionObjective
from ldlm.pipelines.text import check_text
from ldlm.vae.blocks import mask_after_eos
from ldlm.vae.model import TextVAE

DIVERGED = 1e4  # a sample this many times the starting noise scale has left the standardized latents for good
Layout = list[list[int] | None]  # per block of a window: its fixed token ids (all L, or a held prefix) or None
StepCallback = Callable[["LatentDiffusionLMPipeline", int, torch.Tensor, dict], dict]  # (pipe, i, t, tensors) → updates


@dataclass
class LatentDiffusionLMOutput(BaseOutput):
    """``texts``: one string per sample (None for ``output_type="latent"``); ``latents``: (B, blocks·K, C) in VAE
    units, ready for ``vae.decode`` after a reshape to blocks."""

    texts: list[str] | None
    latents: torch.Tensor


def autoguide(strong: torch.Tensor, weak: torch.Tensor, weight: float) -> torch.Tensor:
    """Autoguidance: the strong model's output extrapolated away from the weak one's, ``weak + w · (strong − weak)``."""
    return weak + weight * (strong - weak)


def check_weak_transformer(transformer: LatentDiT, weak: LatentDiT) -> None:
    """ValueError unless ``weak`` reads and writes ``transformer``'s latents on its noise schedule (autoguidance)."""
    keys = ("latent_channels", "latents_per_block", "objective", "prediction_type", "beta_schedule",
            "num_train_timesteps")
    differ = [k for k in keys if weak.config[k] != transformer.config[k]]
    if differ or weak.config.max_blocks < transformer.config.max_blocks:
        raise ValueError(f"the weak transformer does not fit the transformer ({', '.join(differ) or 'max_blocks'} "
                         "differ)")


def check_new_blocks(new_blocks, window: int) -> None:
    """ValueError unless ``new_blocks`` (blocks per long-document group) is an integer in 1..``window``."""
    if isinstance(new_blocks, bool) or not isinstance(new_blocks, int) or not 1 <= new_blocks <= window:
        raise ValueError(f"new_blocks must be an integer in 1..{window} (the transformer's window), got "
                         f"{new_blocks!r}")


def check_temperature(temperature) -> None:
    """ValueError unless ``temperature`` (the scale of the starting noise) is a number in (0, 2]."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature <= 2:
        raise ValueError(f"temperature must be a number in (0, 2], got {temperature!r}")


def window_starts(blocks: int, window: int) -> list[int]:
    """First blocks of the windows that cover ``blocks`` blocks half a window apart, the last one flush with the end."""
    starts = list(range(0, blocks - window + 1, max(1, window // 2)))
    return starts if starts[-1] == blocks - window else starts + [blocks - window]


ECHO_REACH = 4  # how far after held tokens a clean estimate's copy of their last two is looked for


def echo(tokens: list[int], ids: list[int], reach: int = ECHO_REACH) -> int:
    """The shift past a clean estimate's own copy of the end of the ``ids`` held at its start: its last token right
    after them (1), or its last two ending within ``reach`` tokens after them; 0 if none. (The estimate phrased their
    start in other words: "The Eagle is an average priced coffee shop serving" under "The Eagle is a coffee shop".)"""
    n = len(ids)
    for shift in range(1, reach + 1):
        size = min(shift, 2)
        if n >= size and tokens[n + shift - size : n + shift] == ids[n - size :]:
            return shift
    return 0


def hold(tokens: list[int], ids: list[int], eos_id: int, reach: int = ECHO_REACH) -> list[int]:
    """A clean estimate's tokens from a held block's start on, with ``ids`` written at the start. Where the estimate
    has its own copy of their end (:func:`echo`) and its text ends after it (an EOS follows, none is skipped), what
    lies up to the copy is dropped and the rest moves up, EOS filling the end, so the text does not say it twice."""
    n, shift = len(ids), echo(tokens, ids, reach)
    if shift and eos_id in tokens[n + shift :] and eos_id not in tokens[n : n + shift]:
        tokens = tokens[shift:] + [eos_id] * shift
    return ids + tokens[n:]


class LatentDiffusionLMPipeline(DiffusionPipeline):
    """Generates text by denoising all blocks of a sequence in parallel, optionally continuing a prompt.

    A prompt's complete blocks become clean context latents; a trailing partial block is generated with its first
    tokens held to the prompt (each step's clean estimate is decoded, the prompt tokens written back, and the block
    re-encoded; where the estimate says the prompt's end again just after it, the text moves up over the copy:
    :func:`hold`). ``guidance_scale > 1`` applies classifier-free guidance against the null context, so it acts only
    when a prompt has at least one complete block. ``guidance`` (e.g. ``ldlm.pipelines.guidance.GradientGuidance``)
    steers every step's clean estimate by gradients; ``infill`` fixes any blocks; ``LongGeneration`` goes on block by
    block past the window. All three run :meth:`denoise`.

    Autoguidance: with a ``weak_transformer`` (a weaker LatentDiT of the same latent code: smaller or less trained),
    every step's model output is ``weak + w · (transformer − weak)``: steering away from what the weak model predicts
    sharpens the samples. ``autoguidance`` is the default ``w`` (1: off), saved with the pipeline, as are
    ``temperature``, the default scale of the starting noise, and ``new_blocks``, the blocks per group
    ``LongGeneration`` writes by default (None: half the window), each chosen by measuring the model.
    """

    model_cpu_offload_seq = "transformer->weak_transformer->vae"
    _optional_components = ["weak_transformer"]

    def __init__(self, vae: TextVAE, transformer: LatentDiT, scheduler, tokenizer,
                 weak_transformer: LatentDiT | None = None, autoguidance: float = 1.0,
                 new_blocks: int | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        if new_blocks is not None:
            check_new_blocks(new_blocks, transformer.config.max_blocks)
        check_temperature(temperature)
        for name, module in (("vae", vae), ("transformer", transformer), ("weak_transformer", weak_transformer)):
            weights = {} if module is None else module.state_dict()
            bad = next((k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()), None)
            if bad is not None:
                raise ValueError(f"the {name} weights hold NaN or infinite values (first in {bad})")
        self.register_modules(vae=vae, transformer=transformer, scheduler=scheduler, tokenizer=tokenizer,
                              weak_transformer=weak_transformer)
        self.register_to_config(autoguidance=autoguidance, new_blocks=new_blocks, temperature=temperature)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if isinstance(value, (TextVAE, LatentDiT)):
            # diffusers takes the `dit` of `ldlm.dit.model` for its own DiT pipeline folder: record the true module
            self.register_to_config(**{name: (type(value).__module__, type(value).__name__)})
        if name in ("scheduler", "transformer"):
            super().__setattr__("_objective", None)  # built again, and checked, on next use

    @property
    def objective(self) -> DiffusionObjective:
        """The objective the scheduler samples, built once per scheduler and transformer; it must be the one the
        transformer was trained with (ValueError otherwise)."""
        if self._objective is None:
            self._objective = self._check_scheduler()
        return self._objective

    def _check_scheduler(self) -> DiffusionObjective:
        if self.scheduler.config.get("clip_sample") or self.scheduler.config.get("thresholding"):
            raise ValueError(f"{type(self.scheduler).__name__} clips clean-latent estimates (clip_sample/"
                             "thresholding); standardized latents need clip_sample=False, thresholding=False")
        objective = DiffusionObjective.from_scheduler(self.scheduler)
        cfg = self.transformer.config
        trained = "flow_prediction" if cfg.objective == "flow" else cfg.prediction_type
        if (objective.family, objective.prediction_type) != (cfg.objective, trained):
            raise ValueError(f"scheduler {type(self.scheduler).__name__} samples a {objective.family}/"
                             f"{objective.prediction_type} model, but the transformer was trained as {cfg.objective}/"
                             f"{trained}")
        schedule = self.scheduler.config.get("beta_schedule", cfg.beta_schedule) if cfg.objective == "vp" else None
        if self.scheduler.config.num_train_timesteps != cfg.num_train_timesteps or schedule not in (
                None, cfg.beta_schedule):
            raise ValueError(f"scheduler {type(self.scheduler).__name__} uses a {schedule} schedule over "
                             f"{self.scheduler.config.num_train_timesteps} steps; the transformer was trained with "
                             f"{cfg.beta_schedule} over {cfg.num_train_timesteps} (build it with from_config)")
        return objective

    def check_inputs(self, num_inference_steps: int, guidance_scale: float, guidance, num_samples_per_prompt: int = 1,
                     output_type: str = "text", snap: float = 0.0, temperature: float | None = None,
                     autoguidance: float | None = None) -> None:
        """ValueError for the arguments every entry point shares, for a scheduler that does not fit the
        transformer (see :attr:`objective`), and for autoguidance without a weak transformer that fits it."""
        if not isinstance(num_samples_per_prompt, int) or num_samples_per_prompt < 1:
            raise ValueError(f"num_samples_per_prompt must be a positive integer, got {num_samples_per_prompt!r}")
        limit = self.scheduler.config.num_train_timesteps
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= limit:
            raise ValueError(f"num_inference_steps must be an integer in 1..{limit} (the scheduler's training "
                             f"timesteps), got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not (math.isfinite(guidance_scale) and guidance_scale >= 1):
            raise ValueError(f"guidance_scale must be a finite number ≥ 1 (1: off), got {guidance_scale!r}")
        if guidance is not None and not callable(guidance):
            raise ValueError("guidance must be callable as guidance(pipe, x0, t), e.g. "
                             "ldlm.pipelines.guidance.GradientGuidance")
        if isinstance(snap, bool) or not isinstance(snap, (int, float)) or not 0 <= snap <= 1:
            raise ValueError(f"snap must be a fraction of the steps in [0, 1], got {snap!r}")
        check_temperature(self.config.temperature if temperature is None else temperature)
        if output_type not in ("text", "latent"):
            raise ValueError(f"output_type must be 'text' or 'latent', got {output_type!r}")
        _ = self.objective
        w = self.config.autoguidance if autoguidance is None else autoguidance
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 1):
            raise ValueError(f"autoguidance must be a finite number ≥ 1 (1: off), got {w!r}")
        if w > 1 and self.weak_transformer is None:
            raise ValueError("autoguidance > 1 needs a weak_transformer in the pipeline")
        if w > 1:
            check_weak_transformer(self.transformer, self.weak_transformer)

    def _model_output(self, x: torch.Tensor, timestep: torch.Tensor, self_cond: torch.Tensor | None,
                      flagged: torch.Tensor, drop: torch.Tensor | None, autoguidance: float) -> torch.Tensor:
        """The transformer's output (fp32) for standardized fp32 inputs (B, N, C), autoguided against the weak one if
        > 1. A sequence longer than the transformer's window is read in overlapping windows half a window apart (all
        in one batch), and each position's outputs are averaged, weighted towards each window's centre: over the
        denoising steps the fixed blocks at either end reach every block between them."""
        def run(model: LatentDiT, x, timestep, self_cond, flagged, drop) -> torch.Tensor:
            sc = None if self_cond is None else self_cond.to(model.dtype)  # each model in its own dtype; the
            return model(x.to(model.dtype), timestep, sc, flagged, drop).float()  # sampler state stays fp32

        def output(*inputs) -> torch.Tensor:
            strong = run(self.transformer, *inputs)
            return strong if autoguidance == 1 else autoguide(strong, run(self.weak_transformer, *inputs),
                                                              autoguidance)

        b, n, _ = x.shape
        k, window = self.transformer.config.latents_per_block, self.transformer.config.max_blocks
        if n <= window * k:
            return output(x, timestep, self_cond, flagged, drop)
        starts = window_starts(n // k, window)
        spans = [slice(s * k, (s + window) * k) for s in starts]
        pieces = lambda u: None if u is None else torch.cat([u[:, span] for span in spans])  # noqa: E731
        repeat = lambda u: None if u is None else u.reshape(-1).expand(b).repeat(len(spans))  # noqa: E731
        outs = output(pieces(x), repeat(timestep), pieces(self_cond), pieces(flagged), repeat(drop)).split(b)
        centre = torch.arange(window, device=x.device)
        weight = torch.minimum(centre + 1, window - centre).repeat_interleave(k).float()[:, None]  # (window·K, 1)
        total, norm = x.new_zeros(b, n, outs[0].shape[-1]), x.new_zeros(n, 1)
        for span, out in zip(spans, outs):
            total[:, span] += weight * out
            norm[span] += weight
        return total / norm

    def encode_layout(self, blocks: Layout) -> tuple[torch.Tensor, torch.Tensor, dict[int, list[int]]]:
        """Known standardized latents (N, C) and their mask (N,) for a window of ``blocks``, N = blocks·K: complete
        blocks are encoded (together, in order); a shorter block's tokens are held at its start (returned as
        ``{block: ids}`` for :meth:`denoise`); None blocks are generated."""
        cfg, device = self.vae.config, self._execution_device
        k = cfg.latents_per_block
        known = torch.zeros(len(blocks) * k, cfg.latent_channels, device=device)
        known_mask = torch.zeros(len(blocks) * k, dtype=torch.bool, device=device)
        full = [i for i, ids in enumerate(blocks) if ids is not None and len(ids) == cfg.block_length]
        if full:
            ids = torch.tensor([blocks[i] for i in full], device=device)
            spans = torch.tensor([i * k + j for i in full for j in range(k)], device=device)
            known[spans] = self.vae.encode_sequence(ids.view(1, -1))[0]
            known_mask[spans] = True
        held = {i: ids for i, ids in enumerate(blocks) if ids is not None and len(ids) < cfg.block_length}
        return known, known_mask, held

    def _hold_tokens(self, x0: torch.Tensor, held: list[dict[int, list[int]]],
                     known_mask: torch.Tensor) -> torch.Tensor:
        """Write the held tokens at the start of their blocks into the clean estimate (decode, overwrite,
        re-encode), leaving the rest of each such block to the model; where the generated blocks after it run to the
        window's end, the text there may move up too (:func:`hold`)."""
        cfg = self.vae.config
        k, length, eos = cfg.latents_per_block, cfg.block_length, cfg.eos_token_id
        count = x0.shape[1] // k
        x0 = x0.clone()
        for row, blocks in enumerate(held):
            fixed = known_mask[row, ::k].tolist()
            for index, ids in blocks.items():
                end = index + 1  # the held block and the generated ones after it, up to a known or held one
                while end < count and end not in blocks and not fixed[end]:
                    end += 1
                tokens = self._decode_blocks(x0[row], index, index + 1).tolist()
                if end == count > index + 1 and (len(ids) + ECHO_REACH > length or echo(tokens, ids)):
                    tokens += self._decode_blocks(x0[row], index + 1, end).tolist()
                new = hold(tokens, ids, eos)
                new, old = ([seq[i : i + length] for i in range(0, len(seq), length)] for seq in (new, tokens))
                changed = [i for i, (block, before) in enumerate(zip(new, old)) if i == 0 or block != before]
                rewritten = torch.tensor([new[i] for i in changed], device=x0.device)
                latents = self.vae.encode_sequence(rewritten, mask_after_eos(rewritten, eos))
                for i, block in zip(changed, latents.view(len(changed), k, -1)):
                    x0[row, (index + i) * k : (index + i + 1) * k] = block
        return x0

    def _decode_blocks(self, latents: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Most likely tokens of blocks ``start`` to ``stop`` of one standardized sequence (N, C), read with the
        neighbours a context decoder sees."""
        cfg = self.vae.config
        k, c = cfg.latents_per_block, cfg.context_blocks
        first, last = max(0, start - c), min(latents.shape[0] // k, stop + c)
        window = self.vae.decode_sequence(latents[None, first * k : last * k])[0]
        return window[(start - first) * cfg.block_length : (stop - first) * cfg.block_length]

    def _renoise(self, x0: torch.Tensor, t: torch.Tensor, generator) -> torch.Tensor:
        """Known clean latents noised to the scheduler's level at ``t``, in its sample space (replacement)."""
        noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if hasattr(self.scheduler, "scale_noise"):  # flow matching
            return self.scheduler.scale_noise(x0, t[None], noise)
        return self.scheduler.add_noise(x0, noise, t[None])

    @torch.no_grad()
    def denoise(
        self,
        known: torch.Tensor,
        known_mask: torch.Tensor,
        held: list[dict[int, list[int]]] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance: Callable | None = None,
        replace: bool = False,
        snap: float = 0.0,
        temperature: float | None = None,
        autoguidance: float | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> torch.Tensor:
        """Sample standardized latents (B, N, C) given ``known`` standardized latents (B, N, C) where ``known_mask``
        (B, N) is set: as flagged clean context (default; classifier-free guidance applies), or re-noised into the
        sample at every step (``replace``). ``held[b]`` maps a block of row ``b`` to token ids written at its start
        into every clean estimate. ``guidance(pipe, x0, t)`` returns an improved clean estimate (gradient guidance).
        ``snap``: in this last fraction of the steps the clean estimate is snapped onto the VAE's code (decoded to
        tokens and encoded again, :meth:`TextVAE.snap_sequence`): one decoder and encoder pass per such step.
        ``temperature`` scales the starting noise (None: the pipeline's default): below 1 the sampler trades
        diversity for fluency, above 1 fluency for diversity, at no cost. ``autoguidance``: the weight ``w`` of the
        strong transformer against the weak one (None: the pipeline's default; 1: off, and the weak one is not run).
        ``latents``: the starting unit noise (B, N, C), scaled by the temperature as drawn noise is, drawn from
        ``generator`` when None.
        ``callback_on_step_end(pipe, i, t, {name: value})`` sees the step's locals named in
        ``callback_on_step_end_tensor_inputs`` after each step and may return new ``latents``."""
        self.check_inputs(num_inference_steps, guidance_scale, guidance, snap=snap, temperature=temperature,
                          autoguidance=autoguidance)
        objective = self.objective
        autoguidance = self.config.autoguidance if autoguidance is None else autoguidance
        temperature = self.config.temperature if temperature is None else temperature
        held = held if held and any(held) else None  # rows with nothing held are no work
        b, n, c = known.shape
        device = known.device
        if latents is not None and latents.shape != (b, n, c):
            raise ValueError(f"latents must have the shape {(b, n, c)} of the window, got {tuple(latents.shape)}")
        if not (generator is None or isinstance(generator, torch.Generator) or (
                isinstance(generator, list) and len(generator) == b
                and all(isinstance(g, torch.Generator) for g in generator))):
            raise ValueError(f"generator must be a torch.Generator or a list of {b} (one per sample), got "
                             f"{generator!r}")
        flagged = torch.zeros_like(known_mask) if replace else known_mask
        guided = guidance_scale > 1 and bool(flagged.any())
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if latents is None:
            latents = randn_tensor((b, n, c), generator=generator, device=device, dtype=torch.float32)
        latents = latents.to(device, torch.float32) * getattr(self.scheduler, "init_noise_sigma", 1.0) * temperature
        bound = DIVERGED * float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        accepts_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if accepts_generator else {}
        scales_input = hasattr(self.scheduler, "scale_model_input")
        snap_from = len(self.scheduler.timesteps) - round(snap * len(self.scheduler.timesteps))
        x0 = x0_uncond = None
        with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
            for i, t in enumerate(self.scheduler.timesteps):
                if replace:
                    latents = torch.where(known_mask[..., None], self._renoise(known, t, generator), latents)
                x_in = self.scheduler.scale_model_input(latents, t) if scales_input else latents
                x_in = torch.where(flagged[..., None], known, x_in)
                timestep = t.expand(b)
                if guided:  # each branch feeds back its own previous estimate
                    self_cond = None if x0 is None else torch.cat([x0, x0_uncond])
                    both = self._model_output(torch.cat([x_in, x_in]), torch.cat([timestep, timestep]), self_cond,
                                              torch.cat([flagged, flagged]), torch.arange(2 * b, device=device) >= b,
                                              autoguidance)
                    cond, uncond = both.chunk(2)
                    x0_uncond = objective.to_x0(x_in, uncond, t)
                    output = uncond + guidance_scale * (cond - uncond)
                else:
                    output = self._model_output(x_in, timestep, x0, flagged, None, autoguidance)
                x0 = torch.where(known_mask[..., None], known, objective.to_x0(x_in, output, t))
                snapped = i >= snap_from
                if guidance is not None or held or snapped:
                    if snapped:
                        x0 = torch.where(known_mask[..., None], known, self.vae.snap_sequence(x0))
                    if guidance is not None:
                        x0 = guidance(self, x0, t)
                    if held:
                        x0 = self._hold_tokens(x0, held, known_mask)
                    output = objective.from_x0(x_in, x0, t)
                latents = self.scheduler.step(output, t, latents, **step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    frame = locals()  # (a comprehension has its own locals before Python 3.12)
                    values = {name: frame[name] for name in callback_on_step_end_tensor_inputs}
                    latents = callback_on_step_end(self, i, t, values).get("latents", latents)
                bar.update()
        if not latents.abs().max() < bound:  # also catches NaN; checked once, so a GPU never waits on it per step
            raise FloatingPointError(f"the sample diverged (NaN, infinite or beyond {bound:.0e}); guidance too strong?")
        latents = torch.where(known_mask[..., None], known, latents)
        return self._hold_tokens(latents, held, known_mask) if held else latents

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_blocks: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        num_samples_per_prompt: int = 1,
        batch_size: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance: Callable | None = None,
        snap: float = 0.0,
        temperature: float | None = None,
        autoguidance: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "text",
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
        return_dict: bool = True,
    ) -> LatentDiffusionLMOutput | tuple:
        """Generate ``num_samples_per_prompt`` texts per prompt (or per each of ``batch_size`` unconditional rows,
        default 1) of ``num_blocks`` blocks (default: the transformer's window), prompt included. ``guidance``,
        ``snap``, ``temperature``, ``autoguidance``, ``latents`` and the callback are as for :meth:`denoise`."""
        num_blocks = self.transformer.config.max_blocks if num_blocks is None else num_blocks
        max_blocks = self.transformer.config.max_blocks
        if not isinstance(num_blocks, int) or not 1 <= num_blocks <= max_blocks:
            raise ValueError(f"num_blocks must be an integer in 1..{max_blocks}, got {num_blocks!r}")
        self.check_inputs(num_inference_steps, guidance_scale, guidance, num_samples_per_prompt, output_type, snap,
                          temperature, autoguidance)
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if prompts is not None and (not isinstance(prompts, list) or not prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        for i, text in enumerate(prompts or []):
            check_text(text, f"prompt {i}")
        if prompt is not None and batch_size is not None:
            raise ValueError("pass either prompt or batch_size, not both")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if prompts is None:
            layouts = [[None] * num_blocks] * (batch_size or 1)
        else:
            layouts = self._prompt_layouts(prompts, num_blocks)
            length = self.vae.config.block_length
            if guidance_scale != 1 and all(len(layout[0]) < length for layout in layouts):
                raise ValueError(f"guidance_scale acts on complete prompt blocks, and no prompt fills one block "
                                 f"({length} tokens)")
        return self._generate(layouts, num_samples_per_prompt, output_type, return_dict,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              generator=generator, guidance=guidance, snap=snap, temperature=temperature,
                              autoguidance=autoguidance, latents=latents,
                              callback_on_step_end=callback_on_step_end,
                              callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)

    def _prompt_layouts(self, prompts: list[str], num_blocks: int) -> list[Layout]:
        """Each prompt's blocks (the last one possibly partial), then generated blocks up to ``num_blocks``."""
        length = self.vae.config.block_length
        layouts = []
        for text, ids in zip(prompts, self.tokenizer(prompts, add_special_tokens=False)["input_ids"]):
            if len(ids) >= num_blocks * length:
                raise ValueError(f"prompt of {len(ids)} tokens leaves no room in {num_blocks} blocks "
                                 f"({num_blocks * length} tokens): raise num_blocks or shorten {text[:40]!r}")
            blocks = [ids[start : start + length] for start in range(0, len(ids), length)]
            layouts.append(blocks + [None] * (num_blocks - len(blocks)))
        return layouts

    @torch.no_grad()
    def infill(
        self,
        segments: list[str | None],
        gap_blocks: int = 1,
        method: str = "condition",
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        num_samples_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance: Callable | None = None,
        snap: float = 0.0,
        temperature: float | None = None,
        autoguidance: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "text",
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
        return_dict: bool = True,
    ) -> LatentDiffusionLMOutput | tuple:
        """Generate around fixed text: each string of ``segments`` is kept verbatim from the start of a block,
        each ``None`` becomes ``gap_blocks`` generated blocks, and the rest of a segment's last block is generated
        too, e.g. ``pipe.infill(["The Eagle is a coffee shop", None, "It is not family-friendly."])``. Complete
        fixed blocks enter as clean context (``method="condition"``) or are re-noised into the sample at every
        step (``method="replace"``). Layouts longer than the transformer's window (a chapter between its first and
        last paragraphs) are denoised whole, in overlapping windows (:meth:`_model_output`); their memory grows with
        the length. The other arguments are as for ``__call__``."""
        if method not in ("condition", "replace"):
            raise ValueError(f"method must be 'condition' or 'replace', got {method!r}")
        if not isinstance(gap_blocks, int) or gap_blocks < 1:
            raise ValueError(f"gap_blocks must be a positive integer, got {gap_blocks!r}")
        if (not isinstance(segments, list) or not any(isinstance(s, str) for s in segments)
                or not all(s is None or isinstance(s, str) for s in segments)):
            raise ValueError("segments must be a list of strings and None (gaps) with at least one string")
        self.check_inputs(num_inference_steps, guidance_scale, guidance, num_samples_per_prompt, output_type, snap,
                          temperature, autoguidance)
        return self._generate([self._infill_layout(segments, gap_blocks)], num_samples_per_prompt, output_type,
                              return_dict, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              generator=generator, guidance=guidance, replace=method == "replace", snap=snap,
                              temperature=temperature, autoguidance=autoguidance, latents=latents,
                              callback_on_step_end=callback_on_step_end,
                              callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)

    def _infill_layout(self, segments: list[str | None], gap_blocks: int) -> Layout:
        """Per block: its fixed tokens (all of them, or a prefix of a segment's last block), or None (generated)."""
        length = self.vae.config.block_length
        blocks: Layout = []
        for i, segment in enumerate(segments):
            if segment is None:
                blocks += [None] * gap_blocks
                continue
            check_text(segment, f"segment {i}")
            text = segment if i == 0 or segment[:1].isspace() else " " + segment  # a continuation, mid-text
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            blocks += [ids[start : start + length] for start in range(0, len(ids), length)]
        return blocks

    def _generate(self, layouts: list[Layout], num_samples: int, output_type: str, return_dict: bool,
                  **sampling) -> LatentDiffusionLMOutput | tuple:
        """Denoise ``num_samples`` rows per layout (known blocks encoded, partial blocks held), then decode."""
        rows = [layout for layout in layouts for _ in range(num_samples)]
        known, known_mask, held = zip(*(self.encode_layout(layout) for layout in layouts))
        known = torch.stack(known).repeat_interleave(num_samples, 0)
        known_mask = torch.stack(known_mask).repeat_interleave(num_samples, 0)
        held = [blocks for blocks in held for _ in range(num_samples)]
        latents = self.denoise(known, known_mask, held, **sampling)
        texts = self._texts(self.vae.decode_sequence(latents), rows) if output_type == "text" else None
        latents = self.vae.unstandardize(latents).float()
        self.maybe_free_model_hooks()
        if not return_dict:
            return texts, latents
        return LatentDiffusionLMOutput(texts=texts, latents=latents)

    def _texts(self, ids: torch.Tensor, layouts: list[Layout]) -> list[str]:
        """Fixed tokens verbatim, generated tokens up to their block's first EOS; after the last fixed block the
        text ends at the first EOS."""
        eos = self.vae.config.eos_token_id
        texts = []
        for row, layout in zip(ids.reshape(len(layouts), len(layouts[0]), -1).tolist(), layouts):
            last_fixed = max((i for i, fixed in enumerate(layout) if fixed is not None), default=-1)
            out = []
            for i, (decoded, fixed) in enumerate(zip(row, layout)):
                fixed = fixed or []
                rest = decoded[len(fixed) :]
                ended = eos in rest
                out += fixed + (rest[: rest.index(eos)] if ended else rest)
                if ended and i >= last_fixed:
                    break
            texts.append(self.tokenizer.decode(out, skip_special_tokens=True))
        return texts
