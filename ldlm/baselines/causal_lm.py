"""CausalLM: the autoregressive baseline — a pre-norm decoder-only transformer over the VAE's fixed token table,
generating with a key/value cache."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ldlm.errors import LdlmError


class KVCache:
    """Keys and values of every layer, preallocated as (B, heads, capacity, head_dim); ``length`` positions have been
    written. A growing cache holds them all and is full at ``capacity``. A ``sliding`` one keeps the last ``capacity``
    (a ring: position p in slot p % capacity), so memory stays flat; after its first chunk it takes one position at a
    time."""

    def __init__(self, layers: int, batch: int, heads: int, capacity: int, head_dim: int, device, dtype,
                 sliding: bool = False) -> None:
        shape = (batch, heads, capacity, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.length, self.capacity, self.sliding = 0, capacity, sliding

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` (B, H, n, D) after the written positions; return the keys and values the new positions
        attend to: all cached so far (a sliding cache's first chunk: the chunk itself, for a banded mask)."""
        n, end = k.shape[2], self.length + k.shape[2]
        if not self.sliding:
            if end > self.capacity:
                raise ValueError(f"KV cache of {self.capacity} positions is full")
            self.keys[layer][:, :, self.length : end] = k
            self.values[layer][:, :, self.length : end] = v
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        if self.length and n > 1:
            raise ValueError("a sliding KV cache takes one position at a time after its first chunk")
        keep = min(n, self.capacity)
        slots = torch.arange(end - keep, end, device=k.device) % self.capacity
        self.keys[layer][:, :, slots] = k[:, :, n - keep :]
        self.values[layer][:, :, slots] = v[:, :, n - keep :]
        if not self.length:
            return k, v
        filled = min(end, self.capacity)
        return self.keys[layer][:, :, :filled], self.values[layer][:, :, :filled]


def rotary(positions: torch.Tensor, dim: int, base: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines (n, dim) of rotary position embeddings at ``positions`` (n,)."""
    inv_freq = base ** -(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.float()[:, None] * inv_freq
    angles = torch.cat([angles, angles], -1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of ``x`` (B, H, n, D) by the position angles."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], -1) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (SDPA) with rotary positions, reading and extending a KV cache."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None,
                layer: int, window: int | None = None) -> torch.Tensor:
        """``window``: each position attends to itself and the ``window`` - 1 before it (a sliding cache's size)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, n, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.update(layer, k, v)
        mask = None
        if past and n > 1:  # a chunk after cached positions: row i sees keys up to past + i
            mask = torch.ones(n, past + n, dtype=torch.bool, device=x.device).tril(past)
        elif window is not None and n > window:  # a chunk longer than the window: a causal band
            ones = torch.ones(n, n, dtype=torch.bool, device=x.device)
            mask = ones.tril() & ~ones.tril(-window)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and not past and n > 1)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DecoderBlock(nn.Module):
    """Pre-norm causal attention + GELU MLP, each a residual branch."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None,
                layer: int, window: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, cache, layer, window)
        return x + self.mlp(self.norm2(x))


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V): argmax at temperature 0, else a draw from the tempered
    distribution restricted to its top-``top_p`` nucleus."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p >= 1:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    probs, order = probs.sort(-1, descending=True)
    probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)  # the mass before a token already reaches p
    return order.gather(-1, torch.multinomial(probs, 1, generator=generator)).squeeze(-1)


class CausalLM(ModelMixin, ConfigMixin):
    """Next-token model over token ids (B, T) → logits (B, T, V).

    Tokens are read and predicted through a fixed table (V, d_embed) — the TextVAE's PCA projection of the teacher's
    input embeddings, set with :meth:`set_token_table` — so, as in the VAE decoder, no weight matrix scales with the
    49,152-token vocabulary: ``embed_in`` maps a table row to the model width, ``embed_out`` maps the final state back,
    and a token's logit is 2·state·row plus a learned per-token bias initialised to −|row|² (so it starts as the
    VAE's negative squared distance, up to a per-position constant; the bias is the only per-token parameter).
    Positions are rotary (no position table: any length, which the 1,024-token speed benchmarks need, though quality
    beyond the trained window is not promised). A document starts after an EOS token, as training windows do.
    """

    presets = ("tiny", "small", "base")  # the constructors below

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        d_embed: int = 128,
        hidden_size: int = 288,
        num_layers: int = 12,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        rope_base: float = 10000.0,
        eos_token_id: int = 0,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(f"hidden_size {hidden_size} / num_heads {num_heads} must be an even integer")
        self.register_buffer("token_table", torch.randn(vocab_size, d_embed) / d_embed**0.5)
        self.token_bias = nn.Parameter(-self.token_table.pow(2).sum(-1))
        self.embed_in = nn.Linear(d_embed, hidden_size)
        self.blocks = nn.ModuleList(DecoderBlock(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.embed_out = nn.Linear(hidden_size, d_embed)

    @classmethod
    def tiny(cls, **kwargs) -> "CausalLM":
        """Tests and smoke runs."""
        return cls(**{"hidden_size": 32, "num_layers": 2, "num_heads": 2, **kwargs})

    @classmethod
    def small(cls, **kwargs) -> "CausalLM":
        """12.11M trainable parameters with the 49,152 × 128 table (49k of them the token bias), as many as a
        three-layer VAE decoder (2.44M) + DiT small (9.76M) = 12.20M; the shipped E2E decoder has six (4.81M)."""
        return cls(**{"hidden_size": 288, "num_layers": 12, "num_heads": 4, **kwargs})

    @classmethod
    def base(cls, **kwargs) -> "CausalLM":
        """59.30M trainable parameters with the 49,152 × 128 table: the VAE decoder (2.44M) + DiT base (57.69M with
        5 blocks) = 60.13M."""
        return cls(**{"hidden_size": 640, "num_layers": 12, "num_heads": 10, **kwargs})

    def set_token_table(self, table: torch.Tensor) -> None:
        """Use ``table`` (V, d_embed), e.g. a TextVAE's ``token_table``, and reset the token bias to −|row|²."""
        with torch.no_grad():
            self.token_table.copy_(table)
            self.token_bias.copy_(-self.token_table.pow(2).sum(-1))

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                      window: int | None = None) -> torch.Tensor:
        """Final states in token-table space (B, T, d_embed); with ``cache``, ``input_ids`` continue the cached
        positions, and the cache is extended by them. ``window`` limits attention to the last ``window`` positions
        (a sliding cache's capacity)."""
        past = 0 if cache is None else cache.length
        if cache is not None and cache.sliding:
            window = cache.capacity
        elif cache is not None and window is not None and window < cache.capacity:
            raise ValueError("a window shorter than a growing cache needs a sliding cache (new_cache(sliding=True))")
        x = self.embed_in(self.token_table[input_ids])
        positions = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)
        cos, sin = rotary(positions, x.shape[-1] // self.config.num_heads, self.config.rope_base, x.dtype)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, layer, window)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.embed_out(self.norm(x))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of states (..., d_embed): 2·state·row + token bias, in one matmul."""
        flat = torch.addmm(self.token_bias, states.reshape(-1, states.shape[-1]), self.token_table.T, alpha=2)
        return flat.view(*states.shape[:-1], -1)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.logits(self.hidden_states(input_ids, cache))

    def new_cache(self, batch: int, capacity: int, sliding: bool = False) -> KVCache:
        cfg = self.config
        return KVCache(cfg.num_layers, batch, cfg.num_heads, capacity, cfg.hidden_size // cfg.num_heads, self.device,
                       self.dtype, sliding)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        batch_size: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        stop_at_eos: bool = True,
        use_cache: bool = True,
        window: int | None = None,
    ) -> torch.Tensor:
        """New token ids (B, ≤ max_new_tokens) continuing EOS + ``input_ids`` (B, T) (all rows one prompt length;
        default: ``batch_size`` empty prompts, i.e. unconditional). Temperature 0 decodes greedily. With
        ``stop_at_eos`` a row holds EOS from its first EOS on and generation ends once every row has one; else
        exactly ``max_new_tokens`` are generated (speed benchmarks). ``use_cache=False`` reruns the whole sequence
        every step (tests). ``window``: every position attends to the last ``window`` only (a sliding KV cache, so
        memory stays flat however long the text; the trained window length keeps positions within training)."""
        if window is not None and window < 1:
            raise ValueError(f"window must be positive, got {window}")
        eos = self.config.eos_token_id
        if input_ids is None:
            input_ids = torch.empty(batch_size, 0, dtype=torch.long)
        b = len(input_ids)
        ids = torch.cat([torch.full((b, 1), eos, dtype=torch.long), input_ids.cpu()], 1).to(self.device)
        total = ids.shape[1] + max_new_tokens
        sliding = window is not None and window < total
        cache = self.new_cache(b, window if sliding else total, sliding) if use_cache else None
        # one preallocated row per sample: thousands of one-token tensors kept alive between the step's large
        # temporaries fragment the heap, and resident memory then grows with the text
        new = torch.empty(b, max_new_tokens, dtype=torch.long, device=self.device)
        step_ids, done, count = ids, torch.zeros(b, dtype=torch.bool, device=self.device), 0
        for _ in range(max_new_tokens):
            states = self.hidden_states(step_ids, cache, window)[:, -1]
            token = sample_next(self.logits(states), temperature, top_p, generator)
            if stop_at_eos:
                token = token.masked_fill(done, eos)
                done |= token == eos
            new[:, count] = token
            count += 1
            if stop_at_eos and bool(done.all()):
                break
            if use_cache:
                step_ids = token[:, None]
            else:
                ids = step_ids = torch.cat([ids, token[:, None]], 1)
        return new[:, :count]


def load_ar(path: str | Path) -> tuple[CausalLM, object]:
    """A CausalLM in eval mode and its tokenizer, from a training output (``model/`` + ``tokenizer/``) or a model
    folder holding ``tokenizer/``."""
    from ldlm.align.teacher import load_tokenizer

    root = Path(path)
    folder = root / "model" if (root / "model" / "config.json").is_file() else root
    if not (folder / "config.json").is_file() or not (root / "tokenizer").is_dir():
        raise LdlmError(f"{path} holds no exported autoregressive model with a tokenizer/ folder")
    kind = json.loads((folder / "config.json").read_text()).get("_class_name")
    if kind != CausalLM.__name__:
        raise LdlmError(f"{folder} holds a {kind}, not an autoregressive CausalLM")
    try:
        model = CausalLM.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise LdlmError(f"{folder} holds no loadable CausalLM: {str(err).splitlines()[0]}") from None
    tokenizer = load_tokenizer(str(root / "tokenizer"))
    if tokenizer.eos_token_id != model.config.eos_token_id or len(tokenizer) > model.config.vocab_size:
        raise LdlmError(f"the tokenizer in {path} does not match its model (EOS id or vocabulary size)")
    return model.float().eval(), tokenizer


def load_baseline(path: str | Path | None, vae) -> tuple[CausalLM, str]:
    """The trained baseline at ``path``, or (``None``) an untrained ``CausalLM.small()`` over ``vae``'s token table —
    the same size, for timing and memory, which do not depend on the weights; and a note saying which."""
    if path is not None:
        return load_ar(path)[0], f"trained CausalLM from {path}"
    cfg = vae.config
    model = CausalLM.small(vocab_size=cfg.vocab_size, d_embed=cfg.d_embed, eos_token_id=cfg.eos_token_id)
    model.set_token_table(vae.token_table.float().cpu())
    return model.eval(), "untrained CausalLM.small() (same size and token table; timing does not depend on the weights)"


def generate_texts(model: CausalLM, tokenizer, prompts: list[str] | None = None, num_samples: int = 1,
                   **generate_kwargs) -> list[str]:
    """``num_samples`` texts per prompt (or unconditional), each the prompt followed by its continuation up to the
    first EOS; ``generate_kwargs`` go to :meth:`CausalLM.generate`."""
    eos = model.config.eos_token_id
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else [[]]
    texts = []
    for prompt in rows:  # one prompt at a time: rows of a batch share a length
        ids = torch.tensor([prompt] * num_samples, dtype=torch.long).view(num_samples, len(prompt))
        for row in model.generate(ids, **generate_kwargs).tolist():
            rest = row[: row.index(eos)] if eos in row else row
            texts.append(tokenizer.decode(prompt + rest, skip_special_tokens=True))
    return texts
