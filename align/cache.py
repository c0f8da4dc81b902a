"""On-disk cache of teacher features: safetensors shards keyed by a hash of everything that changes them."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ldlm.align.registry import sha256_file

log = logging.getLogger(__name__)


def cache_key(parts: dict) -> str:
    """A stable hex key for a JSON-serialisable description of the cached computation."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


PROBES = ("Hello world!", "  The Eagle's café, naïve — 3.14\tdone\n\nNEW line", "ＡＢＣ ﬁ", "<|endoftext|></s><pad>")


def tokenizer_fingerprint(tokenizer) -> str:
    """A key for what a tokenizer does, not for its class: its vocabulary, BPE merges (fast tokenizers), special
    tokens and their ids, and the ids it gives a few probe texts (normalisation and pre-tokenisation)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return cache_key({
        "vocab": sorted(tokenizer.get_vocab().items()),
        "merges": json.loads(backend.to_str())["model"].get("merges") if backend is not None else None,
        "special": {name: [getattr(tokenizer, name), getattr(tokenizer, f"{name}_id")]
                    for name in ("bos_token", "eos_token", "pad_token", "unk_token")},
        "all_special": sorted(tokenizer.all_special_tokens),
        "probes": tokenizer(list(PROBES), add_special_tokens=False)["input_ids"],
    })


class ShardCache:
    """Shards ``shard-XXXXX.safetensors`` under ``root/key``, each with a ``.sha256`` sidecar written after it.

    A shard without a matching sidecar (interrupted, corrupted, truncated) is recomputed, never used.
    With ``rank``/``world_size`` each process computes only the shards ``i % world_size == rank``.
    """

    def __init__(self, root: str | Path, key: str) -> None:
        self.dir = Path(root) / key

    def _paths(self, index: int) -> tuple[Path, Path]:
        base = self.dir / f"shard-{index:05d}"
        return base.with_suffix(".safetensors"), base.with_suffix(".sha256")

    def load(self, index: int) -> dict[str, torch.Tensor] | None:
        """The shard's tensors if present and intact, else None."""
        path, sidecar = self._paths(index)
        if not (path.is_file() and sidecar.is_file()):
            return None
        if sha256_file(path) != sidecar.read_text().strip():
            log.warning("feature cache shard %s is corrupt; recomputing", path)
            return None
        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            log.warning("feature cache shard %s unreadable (%s); recomputing", path, err)
            return None

    def save(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        path, sidecar = self._paths(index)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
        tmp_sidecar = sidecar.with_suffix(f".tmp{os.getpid()}")
        tmp_sidecar.write_text(sha256_file(path))
        os.replace(tmp_sidecar, sidecar)

    def get(
        self,
        num_shards: int,
        compute: Callable[[int], dict[str, torch.Tensor]],
        rank: int = 0,
        world_size: int = 1,
    ) -> list[dict[str, torch.Tensor]] | None:
        """Load or compute shards: all of them (returned) when ``world_size == 1``, else only this rank's."""
        shards = []
        for index in range(rank, num_shards, world_size):
            shard = self.load(index)
            if shard is None:
                shard = compute(index)
                self.save(index, shard)
            shards.append(shard)
        return shards if world_size == 1 else None
