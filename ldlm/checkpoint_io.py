"""Atomic writes and safetensors-only Lightning checkpoints (no pickle is ever loaded)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "ldlm-tree-v1"


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path``, on error ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _flatten(obj: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of ``obj``; tensors are moved to ``tensors`` and replaced by a reference."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"t": key}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"{where}: unsupported key type {type(k).__name__}")
        return {"d": [[k, _flatten(v, f"{where}[{k!r}]", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{where}[{i}]", tensors) for i, v in enumerate(obj)]
        return {"l" if isinstance(obj, list) else "u": items}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    raise TypeError(f"{where}: unsupported type {type(obj).__name__}")


def _unflatten(node: dict, tensors: dict[str, torch.Tensor]) -> Any:
    kind, value = next(iter(node.items()))
    if kind == "t":
        return tensors[value]
    if kind == "d":
        return {k: _unflatten(v, tensors) for k, v in value}
    if kind == "l":
        return [_unflatten(v, tensors) for v in value]
    if kind == "u":
        return tuple(_unflatten(v, tensors) for v in value)
    return value


def save_tree(obj: Any, path: str | Path) -> None:
    """Write a nested structure of containers, scalars and tensors as one safetensors file, atomically."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_flatten(obj, "checkpoint", tensors))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT, "tree": skeleton})
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_tree(path: str | Path, map_location: str | torch.device | None = None) -> Any:
    """Read a file written by :func:`save_tree`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({err})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ldlm checkpoint (format {metadata.get('format')!r})")
    if map_location is not None:
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return _unflatten(json.loads(metadata["tree"]), tensors)


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning checkpoints as single safetensors files, written atomically."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        save_tree(checkpoint, path)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_tree(path, map_location if isinstance(map_location, (str, torch.device)) else None)

    def remove_checkpoint(self, path: str | Path) -> None:
        Path(path).unlink(missing_ok=True)
