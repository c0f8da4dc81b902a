import math
from collections import Counter

import pytest

from ldlm.evaluation.diagnostics import frequency_collapse, marginal_trap
from ldlm.pipelines.text import ngram_set


def test_frequency_collapse_on_a_constructed_example():
    train = Counter({1: 10, 2: 5, 3: 1, 4: 1})  # top-1: token 1
    generated, references = [[1, 1, 1, 1]], [[1, 3, 1, 4]]  # block length 2: positions 0 1 0 1
    out = frequency_collapse(generated, references, train, block_length=2, top_k=1, smoothing=0.5)
    first, second = out["positions"]
    assert first == {"top_k_share_generated": 1.0, "top_k_share_reference": 1.0, "top_k_drift": 0.0, "kl": 0.0}
    assert second["top_k_share_generated"] == 1.0 and second["top_k_share_reference"] == 0.0
    assert second["top_k_drift"] == 1.0
    # position 1, add-0.5 over {1, 3, 4}: generated (2.5, .5, .5)/3.5 against references (.5, 1.5, 1.5)/3.5
    kl = 5 / 7 * math.log(5) + 2 / 7 * math.log(1 / 3)
    assert second["kl"] == pytest.approx(kl)
    assert out["top_k_drift"] == pytest.approx(0.5) and out["kl_mean"] == pytest.approx(kl / 2)
    assert out["top_k_share_generated"] == 1.0 and out["top_k_share_reference"] == 0.5


def test_frequency_collapse_leaves_empty_positions_out():
    out = frequency_collapse([[1, 1]], [[1, 2]], Counter({1: 3, 2: 1}), block_length=3, top_k=1)
    assert out["positions"][2] == {"top_k_share_generated": None, "top_k_share_reference": None,
                                   "top_k_drift": None, "kl": None}
    assert out["top_k_drift"] == pytest.approx(0.5) and out["kl_mean"] > 0


def test_marginal_trap_side_by_side():
    train = [[1, 2, 3, 4]]
    bigrams, trigrams = ngram_set(train, 2), ngram_set(train, 3)
    diffusion = marginal_trap([[1, 1, 2, 3], [4, 4]], bigrams, trigrams)
    autoregressive = marginal_trap([[1, 2, 3, 4]], bigrams, trigrams)
    assert diffusion == pytest.approx({"adjacent_duplicate_rate": 2 / 4, "novel_bigram_rate": 2 / 4,
                                       "novel_trigram_rate": 1 / 2})
    assert autoregressive == {"adjacent_duplicate_rate": 0.0, "novel_bigram_rate": 0.0, "novel_trigram_rate": 0.0}
    assert marginal_trap([[1, 1]]) == {"adjacent_duplicate_rate": 1.0}
