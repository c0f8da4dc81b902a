import math

import numpy as np
import pytest
import torch

from ldlm.errors import LdlmError
from ldlm.evaluation.metrics import (GenerativePerplexity, adjacent_duplicate_rate, corpus_bleu, distinct_n,
                                     diversity, mauve_score, memorization, novel_ngram_rate, repetition_rate)
from ldlm.pipelines.text import ngram_overlap, ngram_set


def test_generative_perplexity_matches_the_lm_loss(teacher_dirs):
    ppl = GenerativePerplexity(teacher_dirs["qwen2"], batch_size=2)
    texts = ["The Eagle is a pub in the city centre.", "Zizzi is a cheap restaurant.", "Aromi is a pub."]
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([[ppl.bos] + ppl.tokenizer(text, add_special_tokens=False)["input_ids"]])
        loss = ppl.model(input_ids=ids, labels=ids).loss
        total, count = total + float(loss) * (ids.shape[1] - 1), count + ids.shape[1] - 1
    assert ppl(texts) == pytest.approx(math.exp(total / count), rel=1e-4)
    with pytest.raises(LdlmError, match="no tokens"):
        ppl([""])


def test_token_nll_after_a_prefix_scores_only_the_text_given_the_prefix(teacher_dirs):
    ppl = GenerativePerplexity(teacher_dirs["qwen2"], batch_size=2)
    prefixes, texts = ["The Eagle is a pub", "Zizzi"], [" in the city centre.", " is a cheap restaurant near it."]
    total, count = 0.0, 0
    for head, body in zip(prefixes, texts):
        head_ids, body_ids = (ppl.tokenizer(s, add_special_tokens=False)["input_ids"] for s in (head, body))
        ids = torch.tensor([[ppl.bos] + head_ids + body_ids])
        labels = ids.clone()
        labels[0, : 1 + len(head_ids)] = -100  # the prefix is context only
        total += float(ppl.model(input_ids=ids, labels=labels).loss) * len(body_ids)
        count += len(body_ids)
    got_total, got_count = ppl.token_nll(texts, prefixes)
    assert got_count == count and got_total == pytest.approx(total, rel=1e-4)
    assert got_total != pytest.approx(ppl.token_nll(texts)[0], rel=1e-3)  # the prefix changes the score
    assert ppl(texts, prefixes) == pytest.approx(math.exp(total / count), rel=1e-4)
    with pytest.raises(LdlmError, match="2 prefixes for 1 texts"):
        ppl.token_nll(texts[:1], prefixes)


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n(["a"], 2) == 0.0


def test_diversity_is_the_product_of_one_minus_pooled_rep_n():
    assert diversity(["a b a b"]) == pytest.approx(2 / 3)  # rep_2 = 1/3, rep_3 = rep_4 = 0
    assert diversity(["a b c a b c"]) == pytest.approx(3 / 5 * 3 / 4 * 1)
    assert diversity(["a b c d", "a b c d"]) == pytest.approx(1 / 2 * 1 / 2 * 1 / 2)
    assert diversity(["a b c"]) == 0.0  # no 4-grams


def test_repetition_rate_is_per_text():
    assert repetition_rate("a b c d a b c d", 4) == pytest.approx(1 / 5)
    assert repetition_rate("a b c d") == 0.0 and repetition_rate("a b") == 0.0


def test_memorization_counts_generated_4grams_found_in_training():
    train = ngram_set((t.split() for t in ["the cat sat on the mat"]), 4)
    assert train == {("the", "cat", "sat", "on"), ("cat", "sat", "on", "the"), ("sat", "on", "the", "mat")}
    assert memorization(["the cat sat on a mat", "too short"], train) == pytest.approx(1 / 3)
    assert memorization(["the cat sat on the mat", "the cat sat on"], train) == 1.0
    assert memorization(["short"], train) == 0.0


def test_token_ngram_novelty_and_adjacent_duplicates():
    known = ngram_set([[1, 2, 3]], 2)
    assert novel_ngram_rate([[1, 2, 3, 4], [2, 3]], known, 2) == pytest.approx(1 / 4)
    assert ngram_overlap([[1, 2, 3, 4], [2, 3]], known, 2) == pytest.approx(3 / 4)
    assert novel_ngram_rate([[1]], known, 2) == 0.0
    assert adjacent_duplicate_rate([[1, 1, 2], [3, 3, 3], [5]]) == pytest.approx(3 / 4)
    assert adjacent_duplicate_rate(["the the cat".split()]) == 0.5


def test_corpus_bleu_by_hand():
    # hypothesis precisions 5/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5)
    expected = (1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25 * math.exp(1 - 6 / 5)
    assert corpus_bleu(["the cat is on the mat"], ["the cat is on mat"]) == pytest.approx(expected)
    texts = ["The Eagle is a pub in the city centre.", "Zizzi is a cheap restaurant near the river."]
    assert corpus_bleu(texts, texts) == pytest.approx(1.0)
    # counts are pooled over the corpus: the second pair has no 4-gram match on its own
    pooled = corpus_bleu(["a b c d e", "x y"], ["a b c d e", "x y"])
    assert pooled == pytest.approx(1.0)
    assert corpus_bleu(["a b c d"], ["a a a a"]) == 0.0  # clipped: no bigram matches
    assert corpus_bleu(["a b c d"], [""]) == 0.0
    with pytest.raises(LdlmError, match="one reference per hypothesis"):
        corpus_bleu(["a"], [])


def test_mauve_identical_vs_disjoint_features():
    pytest.importorskip("mauve")
    rng = np.random.default_rng(0)
    p = rng.normal(size=(100, 8)).astype(np.float32)
    assert mauve_score(p, p.copy()) == pytest.approx(1.0, abs=1e-6)
    assert mauve_score(p, rng.normal(size=(100, 8)) + 10) < 0.05
    assert mauve_score(p, p.copy(), seed=3) == mauve_score(p, p.copy(), seed=3)
    with pytest.raises(LdlmError, match="feature arrays"):
        mauve_score(p, p[:, :4])
