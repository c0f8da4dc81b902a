import pytest
import torch

from ldlm.align.cache import ShardCache, cache_key, tokenizer_fingerprint
from ldlm.align.teacher import load_tokenizer
from ldlm.pipelines.loading import SHIPPED


def _counting(calls):
    def compute(i):
        calls.append(i)
        return {"features": torch.full((3, 2), float(i))}
    return compute


def test_hit_miss_and_key(tmp_path):
    calls = []
    cache = ShardCache(tmp_path, cache_key({"layers": [1]}))
    first = cache.get(3, _counting(calls))
    assert calls == [0, 1, 2]
    again = cache.get(3, _counting(calls))
    assert calls == [0, 1, 2]
    assert all(torch.equal(a["features"], b["features"]) for a, b in zip(first, again))
    other = ShardCache(tmp_path, cache_key({"layers": [2]}))
    other.get(3, _counting(calls))
    assert calls == [0, 1, 2, 0, 1, 2]


def test_corrupt_or_unfinished_shard_is_recomputed(tmp_path):
    calls = []
    cache = ShardCache(tmp_path, "k")
    cache.get(2, _counting(calls))
    shard = tmp_path / "k" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    (tmp_path / "k" / "shard-00000.sha256").unlink()  # as if killed between shard and sidecar
    calls.clear()
    shards = cache.get(2, _counting(calls))
    assert sorted(calls) == [0, 1]
    assert torch.equal(shards[1]["features"], torch.full((3, 2), 1.0))


def test_ranks_write_disjoint_shards(tmp_path):
    calls = []
    cache = ShardCache(tmp_path, "k")
    assert cache.get(5, _counting(calls), rank=1, world_size=2) is None
    assert calls == [1, 3]
    cache.get(5, _counting(calls), rank=0, world_size=2)
    calls.clear()
    assert len(cache.get(5, _counting(calls))) == 5 and calls == []


def test_tokenizer_key_changes_with_behaviour(tokenizer, tmp_path):
    from tokenizers import normalizers

    tokenizer.save_pretrained(tmp_path)
    assert tokenizer_fingerprint(load_tokenizer(str(tmp_path))) == tokenizer_fingerprint(tokenizer)
    lowercase = load_tokenizer(str(tmp_path))  # same class, vocabulary and EOS; "The" now reads as "the"
    lowercase.backend_tokenizer.normalizer = normalizers.Lowercase()
    unk_pads = load_tokenizer(str(tmp_path))
    unk_pads.pad_token = "<unk>"
    keys = {tokenizer_fingerprint(t) for t in (tokenizer, lowercase, unk_pads)}
    assert len(keys) == 3


@pytest.mark.skipif(not (SHIPPED / "tokenizer").is_dir(), reason="no source checkout")
def test_tokenizer_key_ignores_the_class():
    from transformers import GPT2Tokenizer, Qwen2Tokenizer

    folder = SHIPPED / "tokenizer"  # SmolLM2's byte-level BPE
    key = tokenizer_fingerprint(load_tokenizer(str(folder)))
    assert tokenizer_fingerprint(GPT2Tokenizer.from_pretrained(folder)) == key  # another class, same behaviour
    assert tokenizer_fingerprint(Qwen2Tokenizer.from_pretrained(folder)) != key  # its pre-tokenizer splits "\n\n"


def test_feature_caches_key_tokenizers_by_behaviour():
    from ldlm.data import token_blocks

    assert token_blocks.tokenizer_fingerprint is tokenizer_fingerprint
