"""Autoregressive-baseline data: EOS-terminated documents of the DiT's corpus as fixed-length next-token windows."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ldlm.data import IGNORE
from ldlm.data.token_blocks import make_loader, split_documents, training_documents
from ldlm.training.config import ARDataConfig


class TokenWindows(Dataset):
    """EOS + an EOS-terminated document as ``max_tokens`` next-token pairs (``input_ids``, ``targets``): a random
    window of a longer document when ``crop`` is set, else its start; shorter ones are padded (targets ``IGNORE``)."""

    def __init__(self, documents: list[list[int]], eos: int, max_tokens: int, crop: bool = True) -> None:
        self.documents, self.eos, self.max_tokens, self.crop = documents, eos, max_tokens, crop

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        tokens = torch.tensor([self.eos, *self.documents[i]])
        extra = len(tokens) - 1 - self.max_tokens
        start = int(torch.randint(extra + 1, ())) if self.crop and extra > 0 else 0
        window = tokens[start : start + self.max_tokens + 1]
        n = len(window) - 1
        input_ids = torch.full((self.max_tokens,), self.eos, dtype=torch.long)
        targets = torch.full((self.max_tokens,), IGNORE, dtype=torch.long)
        input_ids[:n], targets[:n] = window[:-1], window[1:]
        return {"input_ids": input_ids, "targets": targets}


class TokenDataModule(L.LightningDataModule):
    """Train/val token windows of the configured corpora (the document split of ``split_documents``)."""

    def __init__(self, cfg: ARDataConfig, tokenizer, batch_size: int) -> None:
        super().__init__()
        self.cfg, self.tokenizer, self.batch_size = cfg, tokenizer, batch_size
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        documents = training_documents(self.cfg, self.tokenizer)
        train, val = split_documents(len(documents), self.cfg.val_fraction, self.cfg.seed)
        eos, n = self.tokenizer.eos_token_id, self.cfg.max_tokens
        self.train_set = TokenWindows([documents[i] for i in train], eos, n)
        self.val_set = TokenWindows([documents[i] for i in val], eos, n, crop=False)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.batch_size, self.cfg.num_workers, train=True)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.batch_size, self.cfg.num_workers, train=False)
