"""LatentDiT: a Diffusion Transformer with adaLN-Zero blocks over sequences of block latents (B, N, C)."""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.distributed import is_available as distributed_available


@functools.lru_cache(maxsize=None)
def _xformers_attention():
    """xformers' memory-efficient attention when CUDA and xformers are both present, else None."""
    if not torch.cuda.is_available():
        return None
    try:
        from xformers.ops import memory_efficient_attention
    except ImportError:
        return None
    return memory_efficient_attention


@functools.lru_cache(maxsize=None)
def _fsdp_module():
    """FSDP2's module class when torch.distributed is built, else None."""
    if not distributed_available():
        return None
    from torch.distributed.fsdp import FSDPModule
    return FSDPModule


def _unchanged(weights: list[torch.Tensor], state: list[tuple[torch.Tensor, int]]) -> bool:
    """Whether ``weights`` are the tensors recorded in ``state`` (``_versions``), none updated in place since."""
    return len(weights) == len(state) and all(p is q and p._version == v for p, (q, v) in zip(weights, state))


def _versions(weights: list[torch.Tensor]) -> list[tuple[torch.Tensor, int]]:
    return [(p, p._version) for p in weights]  # an in-place update bumps a tensor's version


KeysValues = tuple[torch.Tensor, torch.Tensor]  # one layer's attention keys and values (B, H, M, D/H)


class TimestepMemo:
    """Values computed from the timestep alone, kept as one row each per timestep (up to ``size`` timesteps) while
    the weights they come from are the same tensors, unchanged in place: at inference the same timesteps recur in
    every group of a long generation."""

    def __init__(self, size: int = 256) -> None:
        self.size, self.values, self.weights = size, {}, []

    def get(self, key: tuple, weights: list[torch.Tensor],
            compute: Callable[[], list[torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """The rows (1, ·) of ``compute()`` (a batch whose rows are all at the timestep of ``key``), from the memo
        when it holds them."""
        if any(p.is_inference() for p in weights):  # made under inference_mode: no version to see updates by
            return tuple(value[:1] for value in compute())
        if not _unchanged(weights, self.weights):
            self.values, self.weights = {}, _versions(weights)
        rows = self.values.get(key)
        if rows is None:
            rows = tuple(value[:1] for value in compute())
            if len(self.values) < self.size:
                self.values[key] = rows
        return rows


class ContextMemo:
    """What a ``cached_context`` model computes from its clean context alone (each layer's keys and values at the
    context positions, and the output there), kept for the last context seen while the weights are unchanged: every
    denoising step of a group reads the same context."""

    def __init__(self) -> None:
        self.inputs: torch.Tensor | None = None
        self.value: tuple[list[KeysValues], torch.Tensor] | None = None
        self.weights: list[tuple[torch.Tensor, int]] = []

    def get(self, inputs: torch.Tensor, weights: list[torch.Tensor], compute: Callable[[], tuple]) -> tuple:
        """``compute()`` for the embedded context ``inputs`` (B, M, D), from the memo when it was the last one."""
        if any(p.is_inference() for p in weights):
            return compute()
        same = (self.inputs is not None and self.inputs.shape == inputs.shape and self.inputs.dtype == inputs.dtype
                and self.inputs.device == inputs.device and torch.equal(self.inputs, inputs))
        if not (same and _unchanged(weights, self.weights)):
            self.inputs, self.value, self.weights = inputs, compute(), _versions(weights)
        return self.value


def by_position(rows: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """Per-row conditioning ``rows`` (B, 1 or 2, F) for each position: the second row at the clean ``context``
    positions (B, N), the first elsewhere (``rows`` as they are without a context)."""
    return rows if context is None else torch.where(context[..., None], rows[:, 1:], rows[:, :1])


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N, D) shifted and scaled per row (B, 1, D) or per position (B, N, D)."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Bidirectional multi-head self-attention (SDPA; xformers' kernel on CUDA when installed and nothing is masked,
    cached or kept)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: KeysValues | None = None,
                sink: list[KeysValues] | None = None) -> torch.Tensor:
        """Attention over ``x`` (B, N, D). ``mask`` (B, 1, N, N): which positions each may read; ``memory``: the keys
        and values of positions outside ``x`` that it reads too (a cached context); ``sink`` receives ``x``'s own."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).unbind(2)  # each (B, N, H, D)
        xformers = _xformers_attention() if x.is_cuda and mask is None and memory is None else None
        if xformers is not None and sink is None:
            out = xformers(q, k, v)
        else:
            q, k, v = (u.transpose(1, 2) for u in (q, k, v))  # (B, H, N, D)
            if sink is not None:
                sink.append((k, v))
            if memory is not None:
                k, v = torch.cat([memory[0], k], dim=2), torch.cat([memory[1], v], dim=2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
        return self.proj(out.reshape(b, n, d))


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP, each shifted/scaled/gated by the conditioning vector (adaLN-Zero)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None, modulation: torch.Tensor | None = None,
                context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                memory: KeysValues | None = None, sink: list[KeysValues] | None = None) -> torch.Tensor:
        """``x`` (B, N, D) through the block at conditioning ``c`` (B, D) or (B, 1, D), or (B, 2, D) with a second row
        for the clean ``context`` positions (B, N); ``modulation`` is ``ada(c)`` when the caller already has it
        (LatentDiT's memo), else the block computes it (inside its own forward, as FSDP needs). ``mask``, ``memory``
        and ``sink`` go to the attention."""
        modulation = self.ada(c) if modulation is None else modulation
        modulation = by_position(modulation[:, None] if modulation.ndim == 2 else modulation, context)
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), mask, memory, sink)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class LatentDiT(ModelMixin, ConfigMixin):
    """Denoiser over standardized latent sequences (B, N, C), N = blocks × latents_per_block.

    The timestep embedding and the adaLN modulations depend on the timestep alone: without autograd, on a CPU, when
    every row is at one timestep, they come from a memo (:class:`TimestepMemo`, not for a model FSDP shards), which
    makes a batch-1 sampling call about 1.2× as fast.

    Input per position: the noisy latent, the self-conditioning estimate of the clean latent (zeros when absent) and
    a flag saying whether the position is a clean context latent (a prompt or earlier blocks, given as is) or one to
    denoise. Context can be swapped for a learned null vector (``drop_context``), the unconditional branch of
    classifier-free guidance. Positions are learned per block and per latent slot within a block. The objective,
    prediction type, beta schedule and timestep count are recorded so a pipeline can refuse a scheduler that does not
    match them.

    With ``cached_context`` the context positions are conditioned on timestep 0 and read only each other, so what
    the model computes there depends on the context alone. Without autograd, when every row has the same context
    positions (and FSDP does not shard the model), that part is computed once per context (:class:`ContextMemo`)
    and each step runs the positions to denoise only, which still read the whole context.
    """

    presets = ("tiny", "small", "base", "large")  # the constructors below

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        latents_per_block: int = 4,
        max_blocks: int = 8,
        hidden_size: int = 256,
        num_layers: int = 8,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        objective: str = "vp",
        prediction_type: str = "v_prediction",
        beta_schedule: str = "squaredcos_cap_v2",
        num_train_timesteps: int = 1000,
        cached_context: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.x_embed = nn.Linear(2 * latent_channels, hidden_size)
        self.block_pos = nn.Parameter(torch.randn(max_blocks, hidden_size) * 0.02)
        self.slot_pos = nn.Parameter(torch.randn(latents_per_block, hidden_size) * 0.02)
        self.context_flag = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.null_context = nn.Parameter(torch.zeros(latent_channels))
        self.t_embed = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.out = nn.Linear(hidden_size, latent_channels)
        for layer in (self.final_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.memo, self.context_memo = TimestepMemo(), ContextMemo()

    @classmethod
    def tiny(cls, **kwargs) -> "LatentDiT":
        """~0.2M parameters (with 32 channels): tests and smoke runs."""
        return cls(**{"hidden_size": 64, "num_layers": 2, "num_heads": 4, **kwargs})

    @classmethod
    def small(cls, **kwargs) -> "LatentDiT":
        """~9.8M parameters: the shipped E2E model (trains on a laptop CPU)."""
        return cls(**{"hidden_size": 256, "num_layers": 8, "num_heads": 4, **kwargs})

    @classmethod
    def base(cls, **kwargs) -> "LatentDiT":
        """~58M parameters."""
        return cls(**{"hidden_size": 512, "num_layers": 12, "num_heads": 8, **kwargs})

    @classmethod
    def large(cls, **kwargs) -> "LatentDiT":
        """~190M parameters: a GPU model."""
        return cls(**{"hidden_size": 768, "num_layers": 18, "num_heads": 12, **kwargs})

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        self_cond: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        drop_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Model output (B, N, C) for ``sample`` (B, N, C) at ``timestep`` (scalar or (B,)).

        ``context_mask`` (B, N) marks clean context positions (their ``sample`` entries are the clean latents);
        ``drop_context`` (B,) replaces a row's context by the null condition.
        """
        b, n, c = sample.shape
        k = self.config.latents_per_block
        if n % k or n // k > self.config.max_blocks:
            raise ValueError(f"sequence of {n} latents is not 1..{self.config.max_blocks} blocks of {k}")
        if context_mask is None:
            context_mask = torch.zeros(b, n, dtype=torch.bool, device=sample.device)
        context_mask = context_mask.bool()
        if drop_context is not None:
            null = context_mask & drop_context.bool()[:, None]
            sample = torch.where(null[..., None], self.null_context.to(sample.dtype), sample)
        if self_cond is None:
            self_cond = torch.zeros_like(sample)
        self_cond = torch.where(context_mask[..., None], sample, self_cond)
        pos = (self.block_pos[: n // k, None] + self.slot_pos[None]).reshape(n, -1)
        x = self.x_embed(torch.cat([sample, self_cond], dim=-1)) + pos + context_mask[..., None] * self.context_flag
        t = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32).reshape(-1).expand(b)
        if not (self.config.cached_context and bool(context_mask.any())):
            return self._run(x, t)
        shared = context_mask[0]
        if (torch.is_grad_enabled() or self._sharded() or not bool((context_mask == shared).all())
                or bool(shared.all())):
            mask = (~context_mask[:, :, None] | context_mask[:, None, :])[:, None]  # the context reads the context
            return self._run(x, t, context_mask, mask)
        clean, noisy = shared.nonzero()[:, 0], (~shared).nonzero()[:, 0]
        inputs = x[:, clean]
        memory, clean_out = self.context_memo.get(inputs, list(self.parameters()), lambda: self._context(inputs))
        out = x.new_empty(b, n, self.config.latent_channels)
        out[:, clean], out[:, noisy] = clean_out, self._run(x[:, noisy], t, memory=memory)
        return out

    def _run(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, memory: list[KeysValues] | None = None,
             sink: list[KeysValues] | None = None) -> torch.Tensor:
        """The output (B, N, C) for embedded inputs ``x`` (B, N, D) at timesteps ``t`` (B,); ``context`` (B, N) marks
        positions conditioned on timestep 0; ``mask``, ``memory`` (one entry per block) and ``sink`` go to the
        attention of every block."""
        with_clean = context is not None
        cond, modulations = None, [None] * len(self.blocks)
        if self._memoizes(t):
            sources = (self.t_embed, self.final_ada, *(block.ada for block in self.blocks))
            weights = [p for module in sources for p in module.parameters()]
            rows = [self.memo.get((float(u[0]), x.dtype), weights, lambda u=u: self._conditioning(u, x.dtype))
                    for u in (t, torch.zeros_like(t))[: 1 + with_clean]]
            final, *modulations = (torch.stack(parts, dim=1).expand(len(x), -1, -1) for parts in zip(*rows))
        else:
            cond = self._embed(t, x.dtype)[:, None]
            if with_clean:
                cond = torch.cat([cond, self._embed(torch.zeros_like(t), x.dtype)[:, None]], dim=1)
            final = self.final_ada(cond)
        memory = memory or [None] * len(self.blocks)
        for block, modulation, kv in zip(self.blocks, modulations, memory):
            x = block(x, cond, modulation, context, mask, kv, sink)
        shift, scale = by_position(final, context).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(x), shift, scale))

    def _context(self, x: torch.Tensor) -> tuple[list[KeysValues], torch.Tensor]:
        """Each block's keys and values at the embedded context ``x`` (B, M, D), and the output there: the context
        alone at timestep 0 (it reads nothing else)."""
        sink: list[KeysValues] = []
        out = self._run(x, torch.zeros(len(x), device=x.device), sink=sink)
        return sink, out

    def _embed(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.t_embed(get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0).to(dtype))

    def _conditioning(self, t: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """The final layer's adaLN modulation, then each block's, at timesteps ``t``."""
        cond = self._embed(t, dtype)
        return [self.final_ada(cond), *(block.ada(cond) for block in self.blocks)]

    def _memoizes(self, t: torch.Tensor) -> bool:
        """Whether this forward reads the timestep's conditioning from the memo (see the class docstring)."""
        return not (torch.is_grad_enabled() or t.device.type != "cpu" or not bool((t == t[0]).all())
                    or self._sharded())

    def _sharded(self) -> bool:
        """Whether FSDP shards this model: it gathers weights into tensors it reuses (no memo), and every rank must
        run the same forwards (no context computed on one rank and reused on another)."""
        fsdp = _fsdp_module()
        return fsdp is not None and isinstance(self, fsdp)
