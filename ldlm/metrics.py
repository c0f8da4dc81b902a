"""Generation metrics: perplexity of texts under a frozen causal LM, and distinct-n."""
from __future__ import annotations

import math

import torch

from ldlm.align import registry
from ldlm.errors import LdlmError


class GenerativePerplexity:
    """Token-weighted perplexity of texts under a frozen causal LM (default: the SmolLM2 teacher), each text read
    from a BOS token with the LM's own tokenizer."""

    def __init__(self, name_or_path: str = "smollm2", device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoModelForCausalLM

        from ldlm.align.teacher import load_tokenizer

        source = registry.resolve(name_or_path)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(source).to(device).eval().requires_grad_(False)
        except OSError as err:
            raise LdlmError(f"cannot load LM '{name_or_path}': {str(err).splitlines()[0]}") from None
        self.tokenizer = load_tokenizer(source)
        self.device, self.batch_size = device, batch_size
        tok = self.tokenizer
        self.bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @torch.no_grad()
    def token_nll(self, texts: list[str]) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) and token count over ``texts``."""
        total, count = 0.0, 0
        ids = [[self.bos] + row for row in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        ids = [row for row in ids if len(row) > 1]
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start : start + self.batch_size]
            width = max(map(len, batch))
            x = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros_like(x)
            for row, seq in enumerate(batch):
                x[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
            x, mask = x.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            total += float((nll * mask[:, 1:]).sum())
            count += int(mask[:, 1:].sum())
        return total, count

    def __call__(self, texts: list[str]) -> float:
        total, count = self.token_nll(texts)
        if not count:
            raise LdlmError("no tokens to score")
        return math.exp(total / count)


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams ÷ all n-grams of whitespace-separated words, pooled over all texts."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
