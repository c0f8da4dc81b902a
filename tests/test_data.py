import json

import pytest

from ldlm.data.corpus import read_corpus, restaurant_sentences
from ldlm.data.token_blocks import split_documents, to_blocks, tokenize
from ldlm.errors import LdlmError


def test_readers(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": f"doc {i}"}) for i in range(5)) + "\n")
    (tmp_path / "b.csv").write_text("id,text\n1,hello there\n2,\"a, b\"\n")
    (tmp_path / "c.txt").write_text("first doc\nline two\n\n\nsecond doc\n")
    assert read_corpus(str(tmp_path / "a.jsonl"), "body") == [f"doc {i}" for i in range(5)]
    assert read_corpus(str(tmp_path / "a.jsonl"), "body", limit=2, skip=1) == ["doc 1", "doc 2"]
    assert read_corpus(str(tmp_path / "a.jsonl"), "body", stride=2) == ["doc 0", "doc 2", "doc 4"]
    assert read_corpus(str(tmp_path / "a.jsonl"), "body", holdout_every=2) == ["doc 1", "doc 3"]
    assert read_corpus(str(tmp_path / "a.jsonl"), "body", holdout_every=2, heldout=True) == ["doc 0", "doc 2", "doc 4"]
    assert read_corpus(str(tmp_path / "b.csv")) == ["hello there", "a, b"]
    assert read_corpus(str(tmp_path / "c.txt")) == ["first doc\nline two", "second doc"]
    assert len(read_corpus("builtin:restaurants:7")) == 7


def test_reader_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(LdlmError, match="bad.jsonl:2"):
        read_corpus(str(tmp_path / "bad.jsonl"))
    with pytest.raises(LdlmError, match="not found"):
        read_corpus(str(tmp_path / "missing.jsonl"))
    with pytest.raises(LdlmError, match="no column"):
        (tmp_path / "x.csv").write_text("a,b\n1,2\n")
        read_corpus(str(tmp_path / "x.csv"))


def test_blocks_keep_document_positions(tokenizer):
    docs = tokenize(restaurant_sentences(20), tokenizer)
    blocks = to_blocks(docs, 8, tokenizer.pad_token_id)
    for d, doc in enumerate(docs):
        rows = blocks.doc_id == d
        assert blocks.block_index[rows].tolist() == list(range(int(rows.sum())))
        flat = blocks.input_ids[rows][blocks.attention_mask[rows].bool()].tolist()
        assert flat == doc and flat[-1] == tokenizer.eos_token_id


def test_split_is_deterministic_and_disjoint():
    train, val = split_documents(1000, 0.1, seed=3)
    assert (train, val) == split_documents(1000, 0.1, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == 1000
    assert 50 < len(val) < 150
    assert split_documents(1000, 0.1, seed=4)[1] != val
