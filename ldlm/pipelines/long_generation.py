"""Documents of any length, block by block: each group of new blocks is denoised in parallel, conditioned on the
clean latents of the blocks before it within the transformer's window, so memory stays flat as the text grows."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Callable

import torch

from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline, check_new_blocks
from ldlm.pipelines.text import check_text, ngram_overlap, ngram_set


def repeated_share(new: list[int], history: list[int], n: int = 4) -> float:
    """Share of the token n-grams of ``new`` (read on from ``history``) already present in ``history``."""
    return ngram_overlap([history[-(n - 1) :] + new], ngram_set([history], n), n)


class LongGeneration:
    """Iterate to generate ``num_documents`` documents together, one group of ``new_blocks`` blocks at a time;
    each item is the list of the documents' new text (empty once a document has stopped).

    The context is the last ``window − new_blocks`` blocks (prompt blocks included; ``new_blocks`` defaults to the
    pipeline's ``new_blocks``, else half the window); a prompt's trailing partial block is finished in the first group
    with its tokens held. Anti-loop: a group whose token 4-grams repeat more than ``max_repeat`` of the last
    ``history`` tokens is resampled up to ``retries`` times (the least repetitive draw is kept), and a document stops
    after ``patience`` looping groups in a row. A document also stops at ``max_tokens`` tokens (``token_counts``) or at
    its end-of-text. With ``stop_at_eos=False`` EOS and padding are dropped and each group's context is encoded again
    from the text so far (its last blocks' worth of tokens, ending where the text ends, so nothing is held unless the
    text is shorter than a block), so the model never reads an ending; after a group of nothing but EOS the context
    is halved, down to none (a new text starts), and only ``patience`` such groups in a row from there end the
    document. ``stop_reasons``, ``resampled`` (extra draws) and ``guarded`` (of ``groups``, the document groups whose
    first draw looped) report it.
    """

    def __init__(
        self,
        pipe: LatentDiffusionLMPipeline,
        prompt: str | None = None,
        max_tokens: int = 1024,
        num_documents: int = 1,
        new_blocks: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        guidance: Callable | None = None,
        snap: float = 0.0,
        temperature: float | None = None,
        autoguidance: float | None = None,
        stop_at_eos: bool = True,
        max_repeat: float = 0.5,
        retries: int = 2,
        patience: int = 3,
        history: int = 512,
    ) -> None:
        window = pipe.transformer.config.max_blocks
        if new_blocks is None:
            new_blocks = pipe.config.get("new_blocks") or max(1, window // 2)
        check_new_blocks(new_blocks, window)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if not isinstance(num_documents, int) or num_documents < 1:
            raise ValueError(f"num_documents must be a positive integer, got {num_documents!r}")
        if not 0 < max_repeat <= 1 or retries < 0 or patience < 1 or history < 4:
            raise ValueError("anti-loop settings need 0 < max_repeat ≤ 1, retries ≥ 0, patience ≥ 1, history ≥ 4")
        if prompt is not None:
            check_text(prompt, "prompt")
        pipe.check_inputs(num_inference_steps, guidance_scale, guidance, snap=snap, temperature=temperature,
                          autoguidance=autoguidance)
        self.pipe, self.window, self.new_blocks = pipe, window, new_blocks
        self.prompt, self.max_tokens, self.num_documents = prompt, max_tokens, num_documents
        self.sampling = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             generator=generator, guidance=guidance, snap=snap, temperature=temperature,
                             autoguidance=autoguidance)
        self.stop_at_eos, self.max_repeat, self.retries, self.patience = stop_at_eos, max_repeat, retries, patience
        self.history_size = history
        self.stop_reasons: list[str | None] = [None] * num_documents
        self.token_counts = [0] * num_documents  # tokens of each document so far, prompt included
        self.resampled = self.groups = self.guarded = 0

    def _prompt(self) -> tuple[list[int], torch.Tensor]:
        """The prompt's token ids and the standardized latents (blocks·K, C) of its complete blocks."""
        cfg = self.pipe.vae.config
        ids = [] if self.prompt is None else self.pipe.tokenizer(self.prompt, add_special_tokens=False)["input_ids"]
        known, _, _ = self.pipe.encode_layout([ids[start : start + cfg.block_length]
                                               for start in range(0, len(ids), cfg.block_length)])
        return ids, known[: len(ids) // cfg.block_length * cfg.latents_per_block]

    @torch.no_grad()
    def _group(self, context: torch.Tensor, held: list[dict[int, list[int]]] | None) -> torch.Tensor:
        """Standardized latents (D, new_blocks·K, C) of the next group after ``context`` (D, ctx·K, C)."""
        pipe, cfg = self.pipe, self.pipe.vae.config
        d, c = len(context), context.shape[1]
        n = c + self.new_blocks * cfg.latents_per_block
        known = torch.cat([context, context.new_zeros(d, n - c, cfg.latent_channels)], dim=1)
        mask = torch.zeros(d, n, dtype=torch.bool, device=known.device)
        mask[:, :c] = True
        return pipe.denoise(known, mask, held, **self.sampling)[:, c:]

    def _ids(self, latents: torch.Tensor, context: torch.Tensor) -> list[list[int]]:
        """Token ids of a group's blocks, decoded after the context blocks a context decoder reads."""
        cfg = self.pipe.vae.config
        before = context[:, max(0, context.shape[1] - cfg.context_blocks * cfg.latents_per_block) :]
        ids = self.pipe.vae.decode_sequence(torch.cat([before, latents], dim=1))
        return ids[:, before.shape[1] // cfg.latents_per_block * cfg.block_length :].tolist()

    @torch.no_grad()
    def fixed_ids(self, tokens: int) -> torch.Tensor:
        """Token ids (D, ``tokens``) of unconditional documents, group after group with the same bounded context, but
        without EOS, anti-loop or text handling: a fixed amount of work, for speed and memory benchmarks."""
        cfg = self.pipe.vae.config
        keep = (self.window - self.new_blocks) * cfg.latents_per_block
        context = torch.zeros(self.num_documents, 0, cfg.latent_channels, device=self.pipe._execution_device)
        rows: list[list[int]] = [[] for _ in range(self.num_documents)]
        for _ in range(-(-tokens // (self.new_blocks * cfg.block_length))):
            latents = self._group(context, None)
            for row, ids in zip(rows, self._ids(latents, context)):
                row.extend(ids)
            context = torch.cat([context, latents], dim=1)[:, -keep:] if keep else context
        return torch.tensor(rows)[:, :tokens]

    def __iter__(self) -> Iterator[list[str]]:
        pipe, cfg = self.pipe, self.pipe.vae.config
        k, length, eos = cfg.latents_per_block, cfg.block_length, cfg.eos_token_id
        prompt_ids, prompt_latents = self._prompt()
        full = len(prompt_ids) // length
        context_blocks = self.window - self.new_blocks
        keep = context_blocks * k
        context = prompt_latents[max(0, len(prompt_latents) - keep) :][None].expand(self.num_documents, -1, -1)
        partials = [prompt_ids[full * length :]] * self.num_documents  # held at the start of the next group
        pending = len(partials[0])  # held tokens not yet in the output: only the prompt's partial block
        histories = [deque(prompt_ids[-self.history_size :], maxlen=self.history_size)
                     for _ in range(self.num_documents)]
        counts = self.token_counts = [len(prompt_ids)] * self.num_documents
        looping, silent = [0] * self.num_documents, [0] * self.num_documents
        if prompt_ids:
            yield [pipe.tokenizer.decode(prompt_ids[: full * length])] * self.num_documents
        while any(reason is None for reason in self.stop_reasons):
            self.groups += sum(reason is None for reason in self.stop_reasons)
            held = [{context.shape[1] // k: p} if p else {} for p in partials]
            latents, ids, overlap = self._least_repetitive(context, held, histories, list(map(len, partials)))
            texts = []
            for doc, (row, partial) in enumerate(zip(ids, partials)):
                if self.stop_reasons[doc] is not None:
                    texts.append("")
                    continue
                row = partial + row[len(partial) :]  # held tokens verbatim (the VAE may not reproduce them)
                if eos in row[len(partial) :] and self.stop_at_eos:
                    row = row[: row.index(eos, len(partial))]
                    self.stop_reasons[doc] = "eos"
                row = partial + self._clean(row[len(partial) :])
                silent[doc] = silent[doc] + 1 if len(row) == len(partial) else 0
                if silent[doc] >= self.patience + context_blocks.bit_length() and not self.stop_at_eos:
                    self.stop_reasons[doc] = "eos"  # not even a new text starts
                row = row[: len(partial) + max(0, self.max_tokens - counts[doc])]
                counts[doc] += len(row) - len(partial)
                before = list(histories[doc])
                texts.append(self._decode_after(before[: len(before) - pending][-8:], row[len(partial) - pending :]))
                histories[doc].extend(row[len(partial) :])
                looping[doc] = looping[doc] + 1 if overlap[doc] > self.max_repeat else 0
                if self.stop_reasons[doc] is None and counts[doc] >= self.max_tokens:
                    self.stop_reasons[doc] = "length"
                elif self.stop_reasons[doc] is None and looping[doc] >= self.patience:
                    self.stop_reasons[doc] = "loop"
            yield texts
            pending = 0
            if self.stop_at_eos:
                context = torch.cat([context, latents], dim=1)[:, -keep:] if keep else context
                partials = [[]] * self.num_documents
            elif active := [quiet for quiet, reason in zip(silent, self.stop_reasons) if reason is None]:
                context, partials = self._text_context(histories, context_blocks >> max(active))

    def _text_context(self, histories: list[deque], blocks: int):
        """The next group's context encoded from each document's text so far: its last tokens, as many whole blocks'
        worth (at most ``blocks``) as every unstopped document has, ending where the text ends, so nothing is held;
        only when that is none (an unstopped text shorter than a block) is each document's trailing partial block
        held instead. A stopped document's row is a placeholder (its output is dropped). Returns the context latents
        (D, n·K, C) and the partial blocks (none when ``blocks`` is 0: a new text)."""
        length = self.pipe.vae.config.block_length
        texts = [list(history) for history in histories]
        live = [reason is None for reason in self.stop_reasons]
        n = min([blocks, *(len(text) // length for text, alive in zip(texts, live) if alive)])
        device = self.pipe._execution_device
        if n:
            tails = [text[max(0, len(text) - n * length) :] for text in texts]
            filler = next(tail for tail, alive in zip(tails, live) if alive)
            ids = torch.tensor([tail if len(tail) == n * length else filler for tail in tails], device=device)
            return self.pipe.vae.encode_sequence(ids), [[] for _ in texts]
        context = torch.zeros(len(texts), 0, self.pipe.vae.config.latent_channels, device=device)
        return context, [text[len(text) - len(text) % length :] if blocks else [] for text in texts]

    def _clean(self, ids: list[int]) -> list[int]:
        """Generated ids without padding, and without EOS when it does not end the document."""
        cfg = self.pipe.vae.config
        drop = {cfg.pad_token_id} if self.stop_at_eos else {cfg.pad_token_id, cfg.eos_token_id}
        return [token for token in ids if token not in drop]

    def _decode_after(self, before: list[int], ids: list[int]) -> str:
        """The text ``ids`` add after ``before`` (decoding in context keeps word-initial spaces, which some
        tokenizers drop at the start of a decode)."""
        decode = lambda row: self.pipe.tokenizer.decode(row, skip_special_tokens=True)  # noqa: E731
        head, full = decode(before), decode(before + ids)
        return full[len(head) :] if full.startswith(head) else decode(ids)

    def _least_repetitive(self, context, held, histories, skips: list[int]):
        """The next group (latents, token ids, 4-gram overlap per document, read after each document's ``skips``
        held tokens), resampling looping ones."""
        best = None
        for attempt in range(self.retries + 1):
            latents = self._group(context, held)
            ids = self._ids(latents, context)
            overlap = torch.tensor([repeated_share(self._clean(row[skip:]), list(h))
                                    for row, h, skip in zip(ids, histories, skips)])
            active = torch.tensor([r is None for r in self.stop_reasons])
            if best is None:
                best = (latents, ids, overlap)
                self.guarded += int(((overlap > self.max_repeat) & active).sum())
            else:
                self.resampled += 1
                better = overlap < best[2]
                best = (torch.where(better[:, None, None], latents, best[0]),
                        [new if b else old for new, old, b in zip(ids, best[1], better.tolist())],
                        torch.minimum(overlap, best[2]))
            if not bool(((best[2] > self.max_repeat) & active).any()):
                break
        return best
