"""Stage-2 data: documents → frozen-VAE block latents (cached on disk) → fixed-length windows for the DiT."""
from __future__ import annotations

import hashlib
import json

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ldlm.align.cache import ShardCache, cache_key
from ldlm.align.registry import cache_root
from ldlm.data.token_blocks import make_loader, split_documents, to_blocks, tokenizer_fingerprint, training_documents
from ldlm.training.config import DiTDataConfig
from ldlm.vae.model import TextVAE


def vae_fingerprint(vae: TextVAE) -> str:
    """Hash of the VAE's config and every weight and buffer."""
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}  # not where it was loaded from
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def document_latents(vae: TextVAE, tokenizer, documents: list[list[int]], shard_docs: int = 4000,
                     batch_size: int = 512) -> list[torch.Tensor]:
    """Standardized posterior-mean latents (blocks·K, C) of each EOS-terminated document, through an on-disk
    shard cache keyed by the VAE weights, tokenizer and corpus."""
    key = cache_key({"vae": vae_fingerprint(vae), "tokenizer": tokenizer_fingerprint(tokenizer),
                     "corpus": hashlib.sha256(json.dumps(documents).encode()).hexdigest(),
                     "shard_docs": shard_docs, "version": 1})
    cfg = vae.config

    def compute(index: int) -> dict[str, torch.Tensor]:
        docs = documents[index * shard_docs : (index + 1) * shard_docs]
        blocks = to_blocks(docs, cfg.block_length, cfg.pad_token_id)
        out = []
        for start in range(0, len(blocks), batch_size):
            ids = blocks.input_ids[start : start + batch_size].to(vae.device)
            mask = blocks.attention_mask[start : start + batch_size].to(vae.device)
            out.append(vae.encode_sequence(ids, mask).cpu())
        counts = torch.bincount(blocks.doc_id, minlength=len(docs))
        return {"latents": torch.cat(out).reshape(-1, cfg.latent_channels), "blocks": counts}

    shards = ShardCache(cache_root() / "latents", key).get(-(-len(documents) // shard_docs), compute)
    latents = []
    for shard in shards:
        latents += list(shard["latents"].split((shard["blocks"] * cfg.latents_per_block).tolist()))
    return latents


class LatentWindows(Dataset):
    """A window of ``max_blocks`` consecutive blocks of one document (a random start when the document is longer and
    ``crop`` is set, else its first blocks), padded after the document's end with end-of-text block latents."""

    def __init__(self, documents: list[torch.Tensor], end_block: torch.Tensor, max_blocks: int,
                 crop: bool = True) -> None:
        self.documents, self.end_block, self.max_blocks, self.crop = documents, end_block, max_blocks, crop
        self.k = end_block.shape[0]

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        doc = self.documents[i]
        blocks = len(doc) // self.k
        start = int(torch.randint(blocks - self.max_blocks + 1, ())) if self.crop and blocks > self.max_blocks else 0
        window = doc[start * self.k : (start + self.max_blocks) * self.k]
        real = len(window) // self.k
        pad = self.end_block.repeat(self.max_blocks - real, 1)
        return {"latents": torch.cat([window, pad]).float(), "num_blocks": torch.tensor(real)}


class LatentDataModule(L.LightningDataModule):
    """Train/val latent windows of the configured corpora under a frozen VAE; the latent cache is filled once, on
    the first process (``prepare_data``), and read by every process."""

    def __init__(self, cfg: DiTDataConfig, vae: TextVAE, tokenizer, batch_size: int) -> None:
        super().__init__()
        self.cfg, self.vae, self.tokenizer, self.batch_size = cfg, vae, tokenizer, batch_size
        self.train_set: LatentWindows | None = None
        self.val_set: LatentWindows | None = None
        self._latents: list[torch.Tensor] | None = None

    def prepare_data(self) -> None:
        self._latents = document_latents(self.vae, self.tokenizer, training_documents(self.cfg, self.tokenizer))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self._latents is None:  # a process that did not prepare the data reads the cache
            self.prepare_data()
        latents, end = self._latents, self.vae.end_block_latents()
        train, val = split_documents(len(latents), self.cfg.val_fraction, self.cfg.seed)
        self.train_set = LatentWindows([latents[i] for i in train], end, self.cfg.max_blocks)
        self.val_set = LatentWindows([latents[i] for i in val], end, self.cfg.max_blocks, crop=False)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.batch_size, self.cfg.num_workers, train=True)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.batch_size, self.cfg.num_workers, train=False)
