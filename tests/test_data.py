import json

import pytest
import torch

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


def test_neighbours_stay_in_their_document_with_an_end_block_after_it():
    from ldlm.data.token_blocks import AFTER_END, BEFORE_START

    docs = [list(range(10, 30)) + [1], [40, 41, 1]]  # 3 blocks of 8 and 1 block; EOS is 1, pad 0
    blocks = to_blocks(docs, 8, 0)
    assert blocks.neighbour_index(1).tolist() == [[BEFORE_START, 1], [0, 2], [1, AFTER_END], [BEFORE_START, AFTER_END]]
    assert blocks.neighbour_index(2)[1].tolist() == [BEFORE_START, 0, 2, AFTER_END]
    blocks.add_context(1, eos_id=1, pad_id=0)
    assert torch.equal(blocks.context_ids[1], blocks.input_ids[[0, 2]])
    assert blocks.context_ids[2, 1].tolist() == [1] + [0] * 7 and blocks.context_mask[2, 1].tolist() == [1] + [0] * 7
    assert blocks.context_mask[0, 0].sum() == 0 and blocks.context_mask[3, 0].sum() == 0
    second = blocks.subset(torch.tensor([3]))
    assert torch.equal(second[0]["context_ids"], blocks.context_ids[3])
    assert torch.equal(second.neighbour_index(1), torch.tensor([[BEFORE_START, AFTER_END]]))


def test_split_is_deterministic_and_disjoint():
    train, val = split_documents(1000, 0.1, seed=3)
    assert (train, val) == split_documents(1000, 0.1, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == 1000
    assert 50 < len(val) < 150
    assert split_documents(1000, 0.1, seed=4)[1] != val
