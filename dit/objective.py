"""Training objectives that match diffusers schedulers, and conversions between model outputs and clean latents.

Two families:
- ``vp``: variance preserving, x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, with ᾱ from the scheduler's beta schedule; the model
  predicts ε (``epsilon``), v = √ᾱ·ε − √(1−ᾱ)·x0 (``v_prediction``) or x0 (``sample``). Sampled with DDPM, DDIM,
  DPM-Solver++, Euler, UniPC.
- ``flow``: rectified flow, x_σ = (1−σ)·x0 + σ·ε with σ = t / T, the model predicts the velocity ε − x0. Sampled
  with FlowMatchEuler / FlowMatchHeun.
"""
from __future__ import annotations

import diffusers
import torch
from diffusers import DDPMScheduler

VP_SCHEDULERS = {
    "ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler", "unipc": "UniPCMultistepScheduler",
}
FLOW_SCHEDULERS = {"flow-euler": "FlowMatchEulerDiscreteScheduler", "flow-heun": "FlowMatchHeunDiscreteScheduler"}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def is_flow_scheduler(scheduler) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch") or bool(getattr(scheduler.config, "use_flow_sigmas", False))


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class behind a short name."""
    names = {**VP_SCHEDULERS, **FLOW_SCHEDULERS}
    if name not in names:
        raise ValueError(f"unknown scheduler '{name}'; choose from {', '.join(names)}")
    return getattr(diffusers, names[name])


def make_scheduler(name: str, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                   prediction_type: str = "v_prediction", shift: float = 1.0):
    """A diffusers scheduler by short name (``VP_SCHEDULERS`` / ``FLOW_SCHEDULERS``)."""
    cls = scheduler_class(name)
    if name in FLOW_SCHEDULERS:
        return cls(num_train_timesteps=num_train_timesteps, shift=shift)
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpm++" else {}
    # Settings given explicitly travel in the config, so a scheduler swapped in with from_config keeps them: never
    # clip (standardized latents are not in [-1, 1]) and start sampling from the last timestep (pure noise).
    return cls.from_config({
        "num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule, "prediction_type": prediction_type,
        "clip_sample": False, "thresholding": False, "timestep_spacing": "trailing", **extra})


class DiffusionObjective:
    """Noising, regression targets, timestep sampling and output ↔ x0 conversions for one objective: a ``family``
    (``vp`` or ``flow``) and its prediction type."""

    def __init__(self, family: str = "vp", prediction_type: str = "v_prediction", num_train_timesteps: int = 1000,
                 beta_schedule: str = "squaredcos_cap_v2", timestep_sampling: str = "uniform",
                 logit_mean: float = 0.0, logit_std: float = 1.0,
                 alphas_cumprod: torch.Tensor | None = None, min_snr_gamma: float | None = None) -> None:
        if family not in ("vp", "flow"):
            raise ValueError(f"objective must be 'vp' or 'flow', got '{family}'")
        if family == "vp" and prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got '{prediction_type}'")
        if timestep_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"timestep_sampling must be 'uniform' or 'logit_normal', got '{timestep_sampling}'")
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        self.min_snr_gamma = min_snr_gamma
        self.family = family
        self.prediction_type = "flow_prediction" if family == "flow" else prediction_type
        self.num_train_timesteps = num_train_timesteps
        self.timestep_sampling, self.logit_mean, self.logit_std = timestep_sampling, logit_mean, logit_std
        if family == "vp" and alphas_cumprod is None:
            alphas_cumprod = DDPMScheduler(num_train_timesteps=num_train_timesteps,
                                           beta_schedule=beta_schedule).alphas_cumprod
        self.alphas_cumprod = None if alphas_cumprod is None else alphas_cumprod.float()

    @classmethod
    def from_scheduler(cls, scheduler) -> "DiffusionObjective":
        """The objective a scheduler samples: its family, prediction type and ᾱ (whatever betas it was given)."""
        cfg = scheduler.config
        if is_flow_scheduler(scheduler):
            return cls("flow", num_train_timesteps=cfg.num_train_timesteps)
        return cls("vp", cfg.prediction_type, cfg.num_train_timesteps, alphas_cumprod=scheduler.alphas_cumprod)

    def sample_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None = None):
        """Training timesteps in [0, T): integers for ``vp``, reals (σ·T) for ``flow``."""
        if self.timestep_sampling == "uniform":
            u = torch.rand(batch, device=device, generator=generator)
        else:
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, device=device, generator=generator))
        t = u * self.num_train_timesteps
        return t.floor().clamp(max=self.num_train_timesteps - 1) if self.family == "vp" else t

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) with x_t = a·x0 + s·ε, broadcastable to ``like``. Fractional VP timesteps (Euler) interpolate the
        noise-to-signal ratio σ = s/a linearly, as diffusers' Euler scheduler does."""
        t = torch.as_tensor(t, device=like.device).float().reshape(-1)
        if self.family == "flow":
            sigma = (t / self.num_train_timesteps).clamp(0.0, 1.0)
            a, s = 1 - sigma, sigma
        else:
            ab = self.alphas_cumprod.to(like.device)
            table = ((1 - ab) / ab).sqrt()
            t = t.clamp(0, len(table) - 1)
            lo = t.floor().long()
            hi = (lo + 1).clamp(max=len(table) - 1)
            sigma = table[lo] + (t - lo) * (table[hi] - table[lo])
            a = (1 + sigma**2).rsqrt()
            s = sigma * a
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.to(like.dtype).reshape(shape), s.to(like.dtype).reshape(shape)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weights (B,) of the regression loss at timesteps ``t``: ones, or with ``min_snr_gamma`` the
        Min-SNR-γ weighting, min(SNR, γ) times the factor that turns this prediction type's squared error into the
        clean latents' squared error (SNR = a²/s²)."""
        t = torch.as_tensor(t).float().reshape(-1)
        if self.min_snr_gamma is None:
            return torch.ones_like(t)
        a, s = self._coefficients(t, t)
        snr = (a / s.clamp(min=1e-8)).pow(2)
        to_x0 = {"epsilon": 1 / snr.clamp(min=1e-8), "sample": torch.ones_like(snr)}.get(self.prediction_type, s**2)
        return snr.clamp(max=self.min_snr_gamma) * to_x0

    def _ddim_coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) at integer VP timesteps, where t = −1 is the clean end of a DDIM chain (a = 1, s = 0)."""
        t = torch.as_tensor(t, device=like.device).reshape(-1)
        a, s = self._coefficients(t.clamp(min=0), like)
        clean = (t < 0).reshape(a.shape)
        return torch.where(clean, torch.ones_like(a), a), torch.where(clean, torch.zeros_like(s), s)

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        """The deterministic DDIM step from ``x_t`` at ``t`` to ``t_prev`` (−1: clean) given the clean estimate
        ``x0`` (diffusers' DDIMScheduler with η = 0 and ᾱ = 1 at the end)."""
        a, s = self._ddim_coefficients(t, x_t)
        a_prev, s_prev = self._ddim_coefficients(t_prev, x_t)
        return a_prev * x0 + s_prev * (x_t - a * x0) / s.clamp(min=1e-8)

    def ddim_x0(self, x_t: torch.Tensor, x_prev: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        """The clean estimate with which one DDIM step from ``x_t`` at ``t`` lands on ``x_prev`` at ``t_prev``
        (the inverse of :meth:`ddim_step` in ``x0``: progressive distillation's target)."""
        a, s = self._ddim_coefficients(t, x_t)
        a_prev, s_prev = self._ddim_coefficients(t_prev, x_t)
        ratio = s_prev / s.clamp(min=1e-8)
        return (x_prev - ratio * x_t) / (a_prev - ratio * a)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(t, x0)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(t, x0)
        if self.family == "flow":
            return noise - x0
        return {"epsilon": noise, "v_prediction": a * noise - s * x0, "sample": x0}[self.prediction_type]

    def to_x0(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Clean-latent estimate from a model output."""
        a, s = self._coefficients(t, x_t)
        if self.family == "flow":
            return x_t - s * output
        if self.prediction_type == "epsilon":
            return (x_t - s * output) / a.clamp(min=1e-4)
        if self.prediction_type == "v_prediction":
            return a * x_t - s * output
        return output

    def from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model output that corresponds to the clean-latent estimate ``x0`` at ``x_t``."""
        a, s = self._coefficients(t, x_t)
        if self.family == "flow":
            return (x_t - x0) / s.clamp(min=1e-4)
        if self.prediction_type == "sample":
            return x0
        eps = (x_t - a * x0) / s.clamp(min=1e-4)
        return eps if self.prediction_type == "epsilon" else a * eps - s * x0
