"""Diagnostics for diffusion-LM failure modes, on token ids: frequency collapse per block position and the marginal
trap (duplicated adjacent tokens, n-grams never seen in training)."""
from __future__ import annotations

import math
from collections import Counter

from ldlm.evaluation.metrics import adjacent_duplicate_rate, novel_ngram_rate


def _position_counts(sequences: list[list[int]], position: int, block_length: int) -> Counter:
    return Counter(t for seq in sequences for t in seq[position::block_length])


def _kl(p: Counter, q: Counter, smoothing: float) -> float:
    """KL(p ‖ q) of two count tables, add-``smoothing`` over the types either one has."""
    support = p.keys() | q.keys()
    p_total, q_total = sum(p.values()) + smoothing * len(support), sum(q.values()) + smoothing * len(support)
    return sum((p[t] + smoothing) / p_total * math.log((p[t] + smoothing) / p_total * q_total / (q[t] + smoothing))
               for t in support)


def _top_share(counts: Counter, top: set[int]) -> float | None:
    total = sum(counts.values())
    return sum(counts[t] for t in top) / total if total else None


def frequency_collapse(generated: list[list[int]], references: list[list[int]], train_counts: Counter,
                       block_length: int, top_k: int = 50, smoothing: float = 0.5) -> dict:
    """How far generated tokens drift toward the ``top_k`` most frequent training tokens, per position in the VAE
    block (token index mod ``block_length`` of each text's ids): the share of tokens among them, generated minus
    references (``top_k_drift`` > 0: collapse toward frequent tokens), and ``kl`` = KL(generated ‖ reference unigram
    at that position), add-``smoothing``. Pooled over positions too (``kl_mean``: mean of the per-position KLs);
    a position either side has no token at gets None."""
    top = {t for t, _ in train_counts.most_common(top_k)}
    positions = []
    for p in range(block_length):
        gen, ref = _position_counts(generated, p, block_length), _position_counts(references, p, block_length)
        share_gen, share_ref = _top_share(gen, top), _top_share(ref, top)
        both = share_gen is not None and share_ref is not None
        positions.append({"top_k_share_generated": share_gen, "top_k_share_reference": share_ref,
                          "top_k_drift": share_gen - share_ref if both else None,
                          "kl": _kl(gen, ref, smoothing) if both else None})
    share_gen = _top_share(Counter(t for seq in generated for t in seq), top)
    share_ref = _top_share(Counter(t for seq in references for t in seq), top)
    kls = [row["kl"] for row in positions if row["kl"] is not None]
    return {"top_k": top_k, "top_k_share_generated": share_gen, "top_k_share_reference": share_ref,
            "top_k_drift": share_gen - share_ref if share_gen is not None and share_ref is not None else None,
            "kl_mean": sum(kls) / len(kls) if kls else None, "positions": positions}


def marginal_trap(sequences: list[list[int]], train_bigrams: set[tuple] | None = None,
                  train_trigrams: set[tuple] | None = None) -> dict[str, float]:
    """Symptoms of sampling each token from its marginal: the rate of adjacent duplicated tokens and, given the
    training set's token n-grams, the shares of bigrams / trigrams never seen in training. Run it per system (ldlm,
    an AR baseline, the references) to compare them side by side."""
    out = {"adjacent_duplicate_rate": adjacent_duplicate_rate(sequences)}
    if train_bigrams is not None:
        out["novel_bigram_rate"] = novel_ngram_rate(sequences, train_bigrams, 2)
    if train_trigrams is not None:
        out["novel_trigram_rate"] = novel_ngram_rate(sequences, train_trigrams, 3)
    return out
