"""Generation metrics: perplexity under a frozen causal LM, distinct-n and Div, repetition, memorization, corpus
BLEU, n-gram novelty and duplicated tokens, and MAUVE on precomputed features."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch

from ldlm.align import registry
from ldlm.errors import LdlmError
from ldlm.pipelines.text import known_and_total, ngram_overlap, ngrams


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
    def token_nll(self, texts: list[str], prefixes: list[str] | None = None) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) and token count over ``texts``, each read after its prefix in
        ``prefixes`` when given (the prefix's tokens are context, not scored)."""
        total, count = 0.0, 0
        if prefixes is not None and len(prefixes) != len(texts):
            raise LdlmError(f"{len(prefixes)} prefixes for {len(texts)} texts")
        bodies = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        heads = self.tokenizer(prefixes, add_special_tokens=False)["input_ids"] if prefixes else [[]] * len(texts)
        rows = [([self.bos] + head + body, 1 + len(head)) for head, body in zip(heads, bodies) if body]
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            width = max(len(seq) for seq, _ in batch)
            x = torch.zeros(len(batch), width, dtype=torch.long)
            mask, scored = torch.zeros_like(x), torch.zeros_like(x)
            for row, (seq, first) in enumerate(batch):
                x[row, : len(seq)], mask[row, : len(seq)], scored[row, first : len(seq)] = torch.tensor(seq), 1, 1
            x, mask, scored = x.to(self.device), mask.to(self.device), scored.to(self.device)
            logits = self.model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            total += float((nll * scored[:, 1:]).sum())
            count += int(scored[:, 1:].sum())
        return total, count

    def __call__(self, texts: list[str], prefixes: list[str] | None = None) -> float:
        """Perplexity of ``texts``, each read after its prefix in ``prefixes`` when given (see :meth:`token_nll`)."""
        total, count = self.token_nll(texts, prefixes)
        if not count:
            raise LdlmError("no tokens to score")
        return math.exp(total / count)


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams ÷ all n-grams of whitespace-separated words, pooled over all texts."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 4) -> float:
    """rep_n of one text: the share of its word n-grams that repeat an earlier n-gram of the same text."""
    grams = ngrams(text.split(), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def diversity(texts: list[str], orders: Sequence[int] = (2, 3, 4)) -> float:
    """Div = ∏ₙ (1 − rep_n) for n = 2..4, where rep_n = 1 − unique ÷ all word n-grams pooled over the texts."""
    return math.prod(distinct_n(texts, n) for n in orders)


def novel_ngram_rate(sequences: Iterable[Sequence[Hashable]], known: set[tuple], n: int) -> float:
    """Share of the n-grams of ``sequences`` (every occurrence counted) not in ``known``; 0 when there are none."""
    inside, total = known_and_total(sequences, known, n)
    return 1 - inside / total if total else 0.0


def memorization(texts: list[str], train_ngrams: set[tuple], n: int = 4) -> float:
    """Share of the generated word n-grams (default 4-grams) found in the training set (``ngram_set`` of its
    whitespace-split texts)."""
    return ngram_overlap((t.split() for t in texts), train_ngrams, n)


def adjacent_duplicate_rate(sequences: Iterable[Sequence[Hashable]]) -> float:
    """Share of adjacent pairs with token t == token t−1 (the "the the" of per-position decoding), pooled."""
    pairs = repeats = 0
    for seq in sequences:
        pairs += max(len(seq) - 1, 0)
        repeats += sum(a == b for a, b in zip(seq, seq[1:]))
    return repeats / pairs if pairs else 0.0


def corpus_bleu(references: list[str], hypotheses: list[str], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` in [0, 1] of hypotheses against one reference each, on whitespace words: the geometric
    mean of clipped n-gram precisions (counts pooled over the corpus) times the brevity penalty."""
    if len(references) != len(hypotheses):
        raise LdlmError(f"BLEU needs one reference per hypothesis, got {len(references)} and {len(hypotheses)}")
    matches, totals = [0] * max_n, [0] * max_n
    ref_len = hyp_len = 0
    for ref, hyp in zip(references, hypotheses):
        ref_words, hyp_words = ref.split(), hyp.split()
        ref_len, hyp_len = ref_len + len(ref_words), hyp_len + len(hyp_words)
        for n in range(1, max_n + 1):
            hyp_counts, ref_counts = Counter(ngrams(hyp_words, n)), Counter(ngrams(ref_words, n))
            matches[n - 1] += sum(min(c, ref_counts[g]) for g, c in hyp_counts.items())
            totals[n - 1] += sum(hyp_counts.values())
    if not hyp_len or 0 in matches:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 0) -> float:
    """MAUVE (the ``mauve-text`` package) between two sets of text features (N, D), e.g. generated vs reference
    embeddings; 1 means indistinguishable. Seeded k-means, so a fixed seed gives a fixed score."""
    try:
        import mauve
    except ImportError:
        raise LdlmError("MAUVE needs the mauve-text package: pip install 'ldlm[eval]'") from None
    p, q = np.asarray(p_features, dtype=np.float32), np.asarray(q_features, dtype=np.float32)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1] or min(len(p), len(q)) < 2:
        raise LdlmError(f"MAUVE needs two (N >= 2, D) feature arrays of one width, got {p.shape} and {q.shape}")
    return float(mauve.compute_mauve(p_features=p, q_features=q, seed=seed, device_id=-1, verbose=False).mauve)
