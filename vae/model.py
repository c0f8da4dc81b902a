"""TextVAE: a block of L tokens ↔ K continuous latents, with a parallel (non-autoregressive) decoder."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ldlm.vae.blocks import join_blocks, mask_after_eos, split_into_blocks


def pca_token_table(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """Project teacher input embeddings (V, H) onto their top ``dim`` principal axes, scaled to unit mean row norm
    (so distance logits start near unit scale whatever ``dim`` is)."""
    centered = embeddings.float() - embeddings.float().mean(0)
    sample = torch.randperm(len(centered), generator=torch.Generator().manual_seed(0))[:20000]
    _, _, v = torch.linalg.svd(centered[sample], full_matrices=False)  # principal axes from a 20k-row sample
    table = centered @ v[:dim].T
    return table / table.norm(dim=-1).mean()


def _stack(d_model: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model, heads, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


ENCODER_PARTS = ("embed_in", "pad_embedding", "mask_embedding", "enc_pos", "encoder", "enc_norm", "to_moments")
CONTEXT_PARTS = ("from_context", "context_pos")


def context_offsets(context_blocks: int) -> list[int]:
    """Where a block's neighbours sit, in the order the decoder reads them: −c … −1, +1 … +c."""
    return [*range(-context_blocks, 0), *range(1, context_blocks + 1)]


class TextVAE(ModelMixin, ConfigMixin):
    """Token block (B, L) → diagonal Gaussian over latents (B, K, C) → token logits (B, L, V).

    Tokens are represented through a fixed table derived from the teacher's input embeddings (PCA), used for both
    input and output (logits are negative squared distances to every row), so no parameter belongs to a single
    token: a token never seen in training still has a meaningful embedding and can be reconstructed. Latent ``k``
    is produced from the encoder states of its own span of ``L // K`` tokens. With ``context_blocks`` c > 0 the
    decoder of each block also attends to the latents of the c blocks on either side (one decoder position per
    latent), so block boundaries and noisy latents are read in context; a neighbour may be absent.
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        block_length: int = 16,
        latents_per_block: int = 4,
        latent_channels: int = 32,
        d_model: int = 256,
        d_embed: int = 128,
        heads: int = 4,
        encoder_layers: int = 3,
        decoder_layers: int = 3,
        dropout: float = 0.0,
        eos_token_id: int = 0,
        pad_token_id: int = 0,
        context_blocks: int = 0,
    ) -> None:
        super().__init__()
        if block_length % latents_per_block:
            raise ValueError(f"block_length {block_length} is not a multiple of latents_per_block {latents_per_block}")
        span = block_length // latents_per_block
        self.register_buffer("token_table", torch.randn(vocab_size, d_embed) / d_embed**0.5)
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))
        self.embed_in = nn.Linear(d_embed, d_model)
        self.pad_embedding = nn.Parameter(torch.zeros(d_model))
        self.mask_embedding = nn.Parameter(torch.zeros(d_model))
        self.enc_pos = nn.Parameter(torch.randn(block_length, d_model) * 0.02)
        self.encoder = _stack(d_model, heads, encoder_layers, dropout)
        self.enc_norm = nn.LayerNorm(d_model)
        self.to_moments = nn.Linear(span * d_model, 2 * latent_channels)
        self.from_latent = nn.Linear(latent_channels, span * d_model)
        self.dec_pos = nn.Parameter(torch.randn(block_length, d_model) * 0.02)
        self.decoder = _stack(d_model, heads, decoder_layers, dropout)
        self.dec_norm = nn.LayerNorm(d_model)
        self.embed_out = nn.Linear(d_model, d_embed)
        if context_blocks:
            self.from_context = nn.Linear(latent_channels, d_model)
            self.context_pos = nn.Parameter(torch.randn(2 * context_blocks * latents_per_block, d_model) * 0.02)

    def freeze_encoder(self) -> None:
        """Stop gradients to every encoder weight, so training moves the decoder only and the latent code stays."""
        for name, param in self.named_parameters():
            if name.split(".")[0] in ENCODER_PARTS:
                param.requires_grad_(False)

    def with_context(self, context_blocks: int) -> "TextVAE":
        """This VAE with a decoder that also reads ``context_blocks`` neighbours on either side: every weight is kept,
        the new context weights start fresh. Only a VAE without context can be extended."""
        if self.config.context_blocks:
            raise ValueError(f"this VAE's decoder already reads {self.config.context_blocks} neighbours")
        return self._extended(CONTEXT_PARTS, context_blocks=context_blocks)

    def with_decoder_layers(self, layers: int) -> "TextVAE":
        """This VAE with a decoder of ``layers`` layers: every weight is kept and the new layers, appended after the
        old, start as the identity (N(0, 0.02) weights, zero biases and zero output projections), so it decodes as
        before until trained."""
        old = self.config.decoder_layers
        if layers < old:
            raise ValueError(f"a decoder of {old} layers cannot be cut to {layers}")
        vae = self._extended(tuple(f"decoder.layers.{i}." for i in range(old, layers)), decoder_layers=layers)
        for new in vae.decoder.layers[old:]:
            for name, param in new.named_parameters():
                if name.startswith("norm"):  # LayerNorm keeps its ones and zeros
                    continue
                if param.dim() > 1 and not name.startswith(("self_attn.out_proj", "linear2")):
                    nn.init.normal_(param, std=0.02)
                else:
                    nn.init.zeros_(param)
        return vae

    def _extended(self, fresh: tuple[str, ...], **changes) -> "TextVAE":
        """A VAE of this config with ``changes``, holding every weight of this one; only weights whose names start
        with ``fresh`` are new."""
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        vae = TextVAE(**{**config, **changes}).to(self.device)
        missing, unexpected = vae.load_state_dict(self.state_dict(), strict=False)
        if unexpected or any(not key.startswith(fresh) for key in missing):
            raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
        return vae if vae.dtype == self.dtype else vae.to(self.dtype)

    def set_token_table(self, teacher_embeddings: torch.Tensor) -> None:
        """Fill the fixed token table from the teacher's input embedding matrix (V, H)."""
        self.token_table.copy_(pca_token_table(teacher_embeddings, self.config.d_embed))

    def encode_distribution(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_dropout: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, K, C)."""
        cfg = self.config
        x = self.embed_in(self.token_table[input_ids])
        if token_dropout > 0:
            drop = torch.rand(input_ids.shape, device=x.device) < token_dropout
            x = torch.where(drop[..., None], self.mask_embedding, x)
        pad = attention_mask == 0
        x = torch.where(pad[..., None], self.pad_embedding, x) + self.enc_pos
        h = self.enc_norm(self.encoder(x, src_key_padding_mask=pad))
        moments = self.to_moments(h.reshape(h.shape[0], cfg.latents_per_block, -1))
        mean, logvar = moments.chunk(2, dim=-1)
        return mean, logvar.clamp(-12.0, 6.0)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Latents (B, K, C) in the VAE's own units: the posterior mean, or a sample of it."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mean, logvar = self.encode_distribution(input_ids, attention_mask)
        if not sample:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * noise

    def decoder_states(self, latents: torch.Tensor, neighbours: torch.Tensor | None = None,
                       present: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output in token-table space (B, L, d_embed) of block latents (B, K, C) in VAE units. A context
        decoder also reads ``neighbours`` (B, 2c, K, C), the latents of the blocks at :func:`context_offsets`, where
        ``present`` (B, 2c) is True; given none, the block is read alone."""
        cfg = self.config
        if (neighbours is None) != (present is None) or (neighbours is not None and not cfg.context_blocks):
            raise ValueError("neighbours need present (and a decoder with context_blocks > 0), and present needs them")
        b, length = latents.shape[0], cfg.block_length
        x = self.from_latent(latents).reshape(b, length, -1) + self.dec_pos
        if not cfg.context_blocks:
            return self.embed_out(self.dec_norm(self.decoder(x)))
        slots = 2 * cfg.context_blocks
        if neighbours is None:
            neighbours = latents.new_zeros(b, slots, *latents.shape[1:])
            present = torch.zeros(b, slots, dtype=torch.bool, device=latents.device)
        context = self.from_context(neighbours.flatten(1, 2)) + self.context_pos
        absent = torch.cat([present.new_zeros(b, length), ~present.repeat_interleave(cfg.latents_per_block, 1)], 1)
        h = self.decoder(torch.cat([x, context], 1), src_key_padding_mask=absent)[:, :length]
        return self.embed_out(self.dec_norm(h))

    def logits(self, states: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Negative squared distances (up to a per-position constant) to every table row, or to ``candidates`` (a
        1-D index shared by all positions)."""
        table = self.token_table if candidates is None else self.token_table[candidates]
        # one fused pass over the (positions, rows) output: -|e|² + 2 s·e
        flat = torch.addmm(table.pow(2).sum(-1).neg(), states.reshape(-1, states.shape[-1]), table.T, alpha=2)
        return flat.reshape(*states.shape[:-1], -1)

    def decode(self, latents: torch.Tensor, neighbours: torch.Tensor | None = None,
               present: torch.Tensor | None = None) -> torch.Tensor:
        """Token logits (B, L, V) for latents (B, K, C) (neighbours as for :meth:`decoder_states`)."""
        return self.logits(self.decoder_states(latents, neighbours, present))

    def decode_ids(self, latents: torch.Tensor, neighbours: torch.Tensor | None = None,
                   present: torch.Tensor | None = None) -> torch.Tensor:
        """Most likely token ids (B, L)."""
        return self.decode(latents, neighbours, present).argmax(-1)

    def standardize(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE units → per-channel zero mean, unit variance (measured on the training set)."""
        return (latents - self.latent_mean) / self.latent_std

    def unstandardize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.latent_std + self.latent_mean

    def encode_sequence(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token sequences (B, T), T a multiple of ``block_length`` → standardized fp32 latents (B, T / L · K, C):
        the posterior means of their consecutive blocks."""
        cfg = self.config
        blocks = input_ids.reshape(-1, cfg.block_length)
        mask = None if attention_mask is None else attention_mask.reshape(-1, cfg.block_length)
        latents = self.standardize(self.encode(blocks, mask)).float()
        return latents.reshape(len(input_ids), -1, cfg.latent_channels)

    def _blocks(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Standardized sequences (B, N, C) → block latents (B · N / K, K, C) in VAE units and the VAE's dtype, with
        each block's neighbours in its sequence and where they exist (None, None for a decoder without context)."""
        cfg = self.config
        blocks = self.unstandardize(latents).reshape(len(latents), -1, cfg.latents_per_block, cfg.latent_channels)
        blocks = blocks.to(self.dtype)
        if not cfg.context_blocks:
            return blocks.flatten(0, 1), None, None
        n = blocks.shape[1]
        index = torch.arange(n, device=latents.device)[:, None] + torch.tensor(
            context_offsets(cfg.context_blocks), device=latents.device)
        present = ((index >= 0) & (index < n)).expand(len(blocks), -1, -1)
        return blocks.flatten(0, 1), blocks[:, index.clamp(0, n - 1)].flatten(0, 1), present.flatten(0, 1)

    def sequence_states(self, latents: torch.Tensor) -> torch.Tensor:
        """Decoder states (B, N / K · L, d_embed) of standardized latent sequences (B, N, C), differentiable."""
        return self.decoder_states(*self._blocks(latents)).reshape(len(latents), -1, self.config.d_embed)

    def decode_sequence(self, latents: torch.Tensor) -> torch.Tensor:
        """Most likely token ids (B, N / K · L) of standardized latent sequences (B, N, C)."""
        return self.decode_ids(*self._blocks(latents)).reshape(len(latents), -1)

    def snap_sequence(self, latents: torch.Tensor) -> torch.Tensor:
        """Standardized latent sequences (B, N, C) moved onto the code: decoded to their most likely tokens and
        encoded again, each block masked after its first EOS as training blocks are."""
        ids = self.decode_sequence(latents).reshape(-1, self.config.block_length)
        return self.encode_sequence(ids, mask_after_eos(ids, self.config.eos_token_id)).reshape(latents.shape)

    @torch.no_grad()
    def end_block_latents(self) -> torch.Tensor:
        """Standardized latents (K, C) of a block holding only EOS: what follows the end of a document."""
        cfg = self.config
        ids = torch.full((1, cfg.block_length), cfg.pad_token_id, dtype=torch.long, device=self.device)
        ids[0, 0] = cfg.eos_token_id
        mask = torch.zeros_like(ids)
        mask[0, 0] = 1
        return self.encode_sequence(ids, mask)[0].cpu()

    @torch.no_grad()
    def encode_text(self, texts: list[str], tokenizer) -> list[torch.Tensor]:
        """Each text (EOS appended) → its standardized block latents (num_blocks · K, C)."""
        cfg = self.config
        out = []
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            blocks, mask = split_into_blocks(ids, cfg.block_length, cfg.eos_token_id, cfg.pad_token_id)
            out.append(self.encode_sequence(blocks.view(1, -1).to(self.device), mask.view(1, -1).to(self.device))[0])
        return out

    @torch.no_grad()
    def decode_text(self, latents: torch.Tensor, tokenizer) -> list[str]:
        """Standardized latent sequences (B, num_blocks · K, C) → texts, cut at the first EOS."""
        ids = self.decode_sequence(latents).cpu()
        return [tokenizer.decode(join_blocks(row, self.config.eos_token_id)) for row in ids]
