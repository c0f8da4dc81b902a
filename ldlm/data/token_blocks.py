"""Stage-1 data: documents → token blocks (+ cached teacher features, filled ahead by ``ldlm features``) and the
Lightning DataModule that serves them."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ldlm.align.cache import ShardCache, cache_key, tokenizer_fingerprint
from ldlm.align.features import block_features
from ldlm.align.registry import cache_root
from ldlm.align.teacher import FrozenTeacher, load_tokenizer, pad_id_of
from ldlm.data.corpus import read_corpus
from ldlm.training.config import DataConfig, TeacherConfig, VAEExperiment
from ldlm.vae.blocks import split_into_blocks
from ldlm.vae.model import context_offsets

BEFORE_START, AFTER_END = -1, -2  # neighbour_index's codes for a neighbour outside the document


@dataclass
class BlockSet(Dataset):
    """Blocks of a corpus; ``doc_id``/``block_index`` let a later stage condition a block on earlier ones."""

    input_ids: torch.Tensor  # (N, L)
    attention_mask: torch.Tensor  # (N, L)
    doc_id: torch.Tensor  # (N,)
    block_index: torch.Tensor  # (N,)
    features: torch.Tensor | None = None  # (N, layers, K, H) standardized teacher features, fp16
    context_ids: torch.Tensor | None = None  # (N, 2c, L) the blocks at context_offsets(c) (see add_context)
    context_mask: torch.Tensor | None = None  # (N, 2c, L) all zero where a neighbour is absent

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}
        for name in ("features", "context_ids", "context_mask"):
            if getattr(self, name) is not None:
                item[name] = getattr(self, name)[i]
        return item

    def subset(self, index: torch.Tensor) -> "BlockSet":
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return BlockSet(*(pick(getattr(self, f)) for f in ("input_ids", "attention_mask", "doc_id", "block_index",
                                                            "features", "context_ids", "context_mask")))

    def neighbour_index(self, context_blocks: int) -> torch.Tensor:
        """(N, 2c): the index of each block's neighbour at each of :func:`context_offsets` in the same document;
        ``BEFORE_START`` before its first block, ``AFTER_END`` after its last (where a DiT writes end-of-text
        blocks). A document's blocks must be consecutive and in order, as :func:`to_blocks` and ``subset`` keep them."""
        offsets = torch.tensor(context_offsets(context_blocks))
        index = torch.arange(len(self))[:, None] + offsets
        inside = self.doc_id[index.clamp(0, len(self) - 1)] == self.doc_id[:, None]
        inside &= (index >= 0) & (index < len(self))
        outside = torch.where(offsets < 0, BEFORE_START, AFTER_END).expand_as(index)
        return torch.where(inside, index, outside)

    def add_context(self, context_blocks: int, eos_id: int, pad_id: int) -> None:
        """Fill ``context_ids``/``context_mask``: each block's neighbours, an end-of-text block after a document's
        last block, none (an all-zero mask) before its first."""
        index = self.neighbour_index(context_blocks)
        end_ids, end_mask = split_into_blocks([], self.input_ids.shape[1], eos_id, pad_id)
        ids = torch.cat([self.input_ids, end_ids, torch.full_like(end_ids, pad_id)])
        mask = torch.cat([self.attention_mask, end_mask, torch.zeros_like(end_mask)])
        rows = torch.where(index == AFTER_END, len(self), torch.where(index == BEFORE_START, len(self) + 1, index))
        self.context_ids, self.context_mask = ids[rows], mask[rows]


def tokenize(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each document, ending in EOS."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [doc + [tokenizer.eos_token_id] for doc in ids]


def to_blocks(documents: list[list[int]], block_length: int, pad_id: int) -> BlockSet:
    """Cut EOS-terminated documents into consecutive blocks."""
    parts = [split_into_blocks(doc[:-1], block_length, doc[-1], pad_id) for doc in documents]
    counts = torch.tensor([len(blocks) for blocks, _ in parts])
    return BlockSet(
        input_ids=torch.cat([b for b, _ in parts]),
        attention_mask=torch.cat([m for _, m in parts]),
        doc_id=torch.repeat_interleave(torch.arange(len(parts)), counts),
        block_index=torch.cat([torch.arange(int(n)) for n in counts]),
    )


def training_documents(cfg: DataConfig, tokenizer) -> list[list[int]]:
    """Token ids (EOS-terminated) of every training-corpus document, in config order."""
    texts = [t for c in cfg.train
             for t in read_corpus(c.path, c.text_field, c.limit, c.skip, c.stride, c.holdout_every)]
    return tokenize(texts, tokenizer)


def split_documents(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic document-level train/val split by hashing (seed, index)."""
    def is_val(i: int) -> bool:
        digest = hashlib.sha256(f"{seed}:{i}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction

    val = [i for i in range(count) if is_val(i)]
    if val_fraction > 0 and not val:
        val = [count - 1]
    train = sorted(set(range(count)) - set(val))
    return train, val


def teacher_block_features(
    teacher: FrozenTeacher,
    tokenizer,
    documents: list[list[int]],
    cfg: TeacherConfig,
    block_length: int,
    latents_per_block: int,
    shard_tokens: int = 200_000,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor | None:
    """Teacher features for all blocks of ``documents`` through the on-disk shard cache (None on ranks > 0 of a
    split extraction, which only write their own shards)."""
    bounds, total = [0], 0
    for i, doc in enumerate(documents):
        total += len(doc)
        if total >= shard_tokens:
            bounds.append(i + 1)
            total = 0
    if bounds[-1] != len(documents):
        bounds.append(len(documents))
    corpus = hashlib.sha256(json.dumps(documents).encode()).hexdigest()
    key = cache_key({
        "teacher": teacher.fingerprint(), "tokenizer": tokenizer_fingerprint(tokenizer), "layers": teacher.layers,
        "block_length": block_length, "latents_per_block": latents_per_block, "context": cfg.context,
        "chunk": cfg.chunk, "corpus": corpus, "shard_tokens": shard_tokens, "version": 1,
    })
    sink = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def compute(index: int) -> dict[str, torch.Tensor]:
        docs = documents[bounds[index] : bounds[index + 1]]
        feats = block_features(teacher, docs, block_length, latents_per_block, sink, cfg.context, cfg.chunk,
                               cfg.batch_tokens)
        return {"features": feats}

    shards = ShardCache(cache_root() / "features", key).get(len(bounds) - 1, compute, rank, world_size)
    return None if shards is None else torch.cat([s["features"] for s in shards])


def extract_features(cfg: VAEExperiment) -> None:
    """``ldlm features``: fill the teacher-feature cache ahead of training; each rank (``RANK``/``WORLD_SIZE`` from
    torchrun; one process otherwise) writes its own cache shards."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    tokenizer = load_tokenizer(cfg.teacher.name, cfg.teacher.gguf_file)
    teacher = FrozenTeacher(cfg.teacher.name, list(cfg.teacher.layers), gguf_file=cfg.teacher.gguf_file,
                            device_map=cfg.teacher.device_map)
    documents = training_documents(cfg.data, tokenizer)
    teacher_block_features(teacher, tokenizer, documents, cfg.teacher, cfg.data.block_length,
                           cfg.model.latents_per_block, rank=rank, world_size=world)
    print(f"rank {rank}/{world}: teacher features cached for {len(documents)} documents")


def standardize_features(features: torch.Tensor, mask: torch.Tensor, stats: tuple | None = None):
    """Per layer and channel zero-mean unit-variance over valid latents; returns (features, (mean, std))."""
    if stats is None:
        valid = features.transpose(1, 2)[mask.bool()].float()  # (n, layers, H)
        stats = (valid.mean(0), valid.std(0).clamp(min=1e-4))
    mean, std = stats
    return ((features.float() - mean[:, None]) / std[:, None]).half(), stats


def latent_mask(attention_mask: torch.Tensor, latents_per_block: int) -> torch.Tensor:
    """(N, K): 1 where a latent's token span holds at least one real token."""
    return attention_mask.view(len(attention_mask), latents_per_block, -1).amax(-1)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, train: bool) -> DataLoader:
    """Shuffled full batches for training; in-order batches of twice the size for validation."""
    if not train:
        return DataLoader(dataset, batch_size * 2, num_workers=num_workers)
    return DataLoader(dataset, batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


class BlockDataModule(L.LightningDataModule):
    """Train/val blocks of the configured corpora, with standardized teacher features when ``teacher`` is given and
    each block's ``context_blocks`` neighbours on either side when that is > 0."""

    def __init__(self, cfg: DataConfig, tokenizer, batch_size: int, latents_per_block: int,
                 teacher: FrozenTeacher | None = None, teacher_cfg: TeacherConfig | None = None,
                 context_blocks: int = 0) -> None:
        super().__init__()
        self.cfg, self.tokenizer, self.batch_size = cfg, tokenizer, batch_size
        self.latents_per_block, self.teacher, self.teacher_cfg = latents_per_block, teacher, teacher_cfg
        self.context_blocks = context_blocks
        self.train_set: BlockSet | None = None
        self.val_set: BlockSet | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        documents = training_documents(self.cfg, self.tokenizer)
        blocks = to_blocks(documents, self.cfg.block_length, pad_id_of(self.tokenizer))
        if self.teacher is not None:
            feats = teacher_block_features(self.teacher, self.tokenizer, documents, self.teacher_cfg,
                                           self.cfg.block_length, self.latents_per_block)
            blocks.features = feats
        if self.context_blocks:
            blocks.add_context(self.context_blocks, self.tokenizer.eos_token_id, pad_id_of(self.tokenizer))
        train_docs, val_docs = split_documents(len(documents), self.cfg.val_fraction, self.cfg.seed)
        is_val = torch.zeros(len(documents), dtype=torch.bool)
        is_val[val_docs] = True
        self.train_set = blocks.subset(torch.nonzero(~is_val[blocks.doc_id]).squeeze(1))
        self.val_set = blocks.subset(torch.nonzero(is_val[blocks.doc_id]).squeeze(1))
        if self.teacher is not None:
            k = self.latents_per_block
            self.train_set.features, stats = standardize_features(
                self.train_set.features, latent_mask(self.train_set.attention_mask, k))
            self.val_set.features, _ = standardize_features(
                self.val_set.features, latent_mask(self.val_set.attention_mask, k), stats)

    def seen_tokens(self) -> torch.Tensor:
        """Sorted ids of the token types present in the training blocks."""
        return torch.unique(self.train_set.input_ids[self.train_set.attention_mask.bool()])

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.batch_size, self.cfg.num_workers, train=True)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.batch_size, self.cfg.num_workers, train=False)
