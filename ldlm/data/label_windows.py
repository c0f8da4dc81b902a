"""Latent-classifier data: windows of standardized VAE latents labelled with E2E content labels (multilabel) or
with a coarse POS tag per token (tagging, from Brown)."""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ldlm.data import IGNORE
from ldlm.data.latent_windows import document_latents
from ldlm.data.postags import COARSE_TAGS, read_brown, token_tags
from ldlm.data.token_blocks import make_loader, tokenize
from ldlm.errors import LdlmError
from ldlm.training.config import ClassifierDataConfig
from ldlm.vae.model import TextVAE

_SLOT = re.compile(r"([^,\[\]]+)\[([^\]]*)\]")


def parse_mr(mr: str) -> list[str]:
    """An E2E meaning representation → its labels ``field[value]``, e.g. ``['name[Zizzi]', 'food[Italian]']``."""
    labels = [f"{name.strip()}[{value.strip()}]" for name, value in _SLOT.findall(mr)]
    if not labels:
        raise LdlmError(f"cannot parse the meaning representation '{mr[:80]}' (expected field[value], ...)")
    return labels


def label_field(label: str) -> str:
    """``food[Italian]`` → ``food``."""
    return label.partition("[")[0]


def read_e2e(path: str | Path) -> tuple[list[str], list[str]]:
    """Meaning representations and texts of an E2E JSON-lines file (``{"mr", "text"}`` per line)."""
    file = Path(path)
    if not file.is_file():
        raise LdlmError(f"E2E corpus file not found: {path}")
    mrs, texts = [], []
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                mr, text = row["mr"], row["text"]
                if not isinstance(mr, str) or not isinstance(text, str):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                raise LdlmError(f"{file}:{number}: not a JSON object with string 'mr' and 'text' fields") from None
            mrs.append(mr)
            texts.append(text)
    if not texts:
        raise LdlmError(f"E2E corpus {path} has no examples")
    return mrs, texts


def label_vocabulary(mrs: list[str], min_count: int) -> list[str]:
    """Sorted labels that occur in at least ``min_count`` examples."""
    counts = Counter(label for mr in mrs for label in parse_mr(mr))
    labels = sorted(label for label, n in counts.items() if n >= min_count)
    if not labels:
        raise LdlmError(f"no label occurs {min_count} times or more (data.min_label_count)")
    return labels


@dataclass
class WindowSet(Dataset):
    """Latent windows (M, max_blocks·K, C) with their targets: multi-hot (M, labels) or tag indices (M, tokens)."""

    latents: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"latents": self.latents[i], "targets": self.targets[i]}


def pad_windows(documents: list[torch.Tensor], end_block: torch.Tensor, max_blocks: int) -> torch.Tensor:
    """The first ``max_blocks`` blocks of each document's latents, padded with end-of-text block latents."""
    k, n = end_block.shape[0], max_blocks * end_block.shape[0]
    return torch.stack([torch.cat([doc[:n], end_block.repeat(max_blocks - min(len(doc), n) // k, 1)]).float()
                        for doc in documents])


def content_windows(vae: TextVAE, tokenizer, mrs: list[str], texts: list[str], labels: list[str],
                    max_blocks: int) -> WindowSet:
    """Each text's first blocks with the multi-hot vector of its MR's labels (those in ``labels``)."""
    latents = document_latents(vae, tokenizer, tokenize(texts, tokenizer))
    index = {label: i for i, label in enumerate(labels)}
    targets = torch.zeros(len(texts), len(labels))
    for row, mr in enumerate(mrs):
        for label in parse_mr(mr):
            if label in index:
                targets[row, index[label]] = 1.0
    return WindowSet(pad_windows(latents, vae.end_block_latents(), max_blocks), targets)


def tagging_windows(vae: TextVAE, tokenizer, documents: list[list[dict]], max_blocks: int) -> WindowSet:
    """Consecutive windows of ``max_blocks`` blocks of each document's token stream, with per-token tag targets
    (IGNORE on EOS and padding); windows without any tagged token are dropped."""
    width = max_blocks * vae.config.block_length
    chunks, tags = [], []
    for ids, labels in token_tags(documents, tokenizer):
        for start in range(0, len(ids), width):
            if any(t != IGNORE for t in labels[start : start + width]):
                chunks.append(ids[start : start + width])
                tags.append(labels[start : start + width] + [IGNORE] * (width - len(labels[start : start + width])))
    if not chunks:
        raise LdlmError("the tagging corpus has no tagged tokens")
    latents = document_latents(vae, tokenizer, chunks)  # a window starts on a block boundary: same latents
    return WindowSet(pad_windows(latents, vae.end_block_latents(), max_blocks), torch.tensor(tags))


class ClassifierDataModule(L.LightningDataModule):
    """Train/val latent windows of one task; validation holds out every ``holdout_every``-th distinct MR
    (multilabel: all texts of an MR on one side) or document (tagging)."""

    def __init__(self, task: str, cfg: ClassifierDataConfig, vae: TextVAE, tokenizer, batch_size: int) -> None:
        super().__init__()
        self.task, self.cfg, self.vae, self.tokenizer, self.batch_size = task, cfg, vae, tokenizer, batch_size
        if task == "multilabel":
            self.mrs, self.texts = read_e2e(cfg.path)
            self.labels = label_vocabulary(self.mrs, cfg.min_label_count)
        else:
            self.documents = read_brown(cfg.path)
            self.labels = list(COARSE_TAGS)
        self.train_set: WindowSet | None = None
        self.val_set: WindowSet | None = None
        self._sets: tuple[WindowSet, WindowSet] | None = None

    def _split(self, held_out: list[bool]) -> tuple[list[int], list[int]]:
        train = [i for i, h in enumerate(held_out) if not h]
        val = [i for i, h in enumerate(held_out) if h]
        if not train or not val:
            raise LdlmError(f"{self.cfg.path} is too small to hold out every {self.cfg.holdout_every}-th "
                            f"{'MR' if self.task == 'multilabel' else 'document'} for validation")
        return train, val

    def prepare_data(self) -> None:
        every, blocks = self.cfg.holdout_every, self.cfg.max_blocks
        if self.task == "multilabel":
            order = {mr: i for i, mr in enumerate(dict.fromkeys(self.mrs))}
            train, val = self._split([order[mr] % every == 0 for mr in self.mrs])
            pick = lambda rows, items: [items[i] for i in rows]  # noqa: E731
            self._sets = tuple(content_windows(self.vae, self.tokenizer, pick(rows, self.mrs), pick(rows, self.texts),
                                               self.labels, blocks) for rows in (train, val))
        else:
            train, val = self._split([i % every == 0 for i in range(len(self.documents))])
            self._sets = tuple(tagging_windows(self.vae, self.tokenizer, [self.documents[i] for i in rows], blocks)
                               for rows in (train, val))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self._sets is None:  # a process that did not prepare the data reads the latent cache
            self.prepare_data()
        self.train_set, self.val_set = self._sets

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.batch_size, self.cfg.num_workers, train=True)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.batch_size, self.cfg.num_workers, train=False)
