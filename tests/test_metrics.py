import math

import pytest
import torch

from ldlm.errors import LdlmError
from ldlm.metrics import GenerativePerplexity, distinct_n


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


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n(["a"], 2) == 0.0
