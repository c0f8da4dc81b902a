"""Crash-safe writes and pickle-free checkpoints: a nested structure stored as ONE safetensors file.

Tensors go into the safetensors tensor table, keyed by their path in the structure (``checkpoint['state_dict']['w']``);
the structure itself goes into the header metadata as a JSON skeleton, next to a format tag and a SHA-256 of the
skeleton and every tensor's bytes. Loading parses only safetensors and JSON, so a checkpoint can never run code.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections import OrderedDict
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import Container, OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT, FORMAT_VERSION = "ldlm-tree", "1"
_DTYPES = frozenset({  # what safetensors can store
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.bool,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint64, torch.uint32, torch.uint16, torch.uint8,
    torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz,
})


def _sibling(path: Path, role: str) -> Path:
    """A fresh hidden name next to ``path``."""
    return path.with_name(f".{path.name}.{role}-{secrets.token_hex(4)}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Let ``write(tmp)`` fill a temporary sibling file, flush it to disk, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # permissions follow the umask
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling directory that replaces the directory ``path`` only if the body succeeds.

    On error the temporary directory is deleted and ``path`` is untouched. On success the old ``path`` is renamed
    aside, the new one renamed in, and the old one deleted; a crash between those renames leaves the previous
    version in a hidden ``.<name>.old-*`` sibling.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _sibling(path, "tmp"), _sibling(path, "old")
    tmp.mkdir()
    try:
        yield tmp
        for entry in (*tmp.rglob("*"), tmp):
            if not entry.is_symlink():
                _fsync(entry)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync(path.parent)


class _Packer:
    """Turns a structure into a JSON skeleton, collecting its tensors in ``self.tensors``."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._views: dict[tuple, str] = {}  # identical views of one storage are stored once, and load as one tensor
        self._storages: set[int] = set()

    def tensor(self, t: torch.Tensor, where: str) -> str:
        if t.layout != torch.strided or t.is_meta or t.dtype not in _DTYPES:
            raise TypeError(f"{where}: unsupported tensor ({t.layout}, {t.dtype}, device {t.device})")
        t = t.detach()
        view = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
        if view[1] and view in self._views:
            return self._views[view]
        data = t.cpu().resolve_conj().contiguous()
        if data.untyped_storage().data_ptr() in self._storages:  # safetensors refuses tensors sharing memory
            data = data.clone()
        self._storages.add(data.untyped_storage().data_ptr())
        self.tensors[where], self._views[view] = data, where
        return where

    def encode(self, obj: Any, where: str) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, torch.Tensor):
            return {"T": self.tensor(obj, where)}
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"U": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            items = []
            for k, v in obj.items():
                if not isinstance(k, (str, int)):
                    raise TypeError(f"{where}: unsupported key {k!r} of type {type(k).__name__}")
                items.append([k, self.encode(v, f"{where}[{k!r}]")])
            if not isinstance(obj, OrderedDict):
                return {"D": items}
            node = {"O": items}
            if hasattr(obj, "_metadata"):  # nn.Module.state_dict() keeps per-module versions here
                node["M"] = self.encode(obj._metadata, f"{where}._metadata")
            return node
        if isinstance(obj, Container):
            return {"C": self.encode(OmegaConf.to_container(obj, enum_to_str=True), where)}
        if isinstance(obj, PurePath):
            return {"P": str(obj)}
        raise TypeError(f"{where}: unsupported type {type(obj).__name__}")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    tag = next(iter(node))
    value = node[tag]
    if tag == "T":
        return tensors[value]
    if tag == "U":
        return tuple(_decode(v, tensors) for v in value)
    if tag == "D":
        return {k: _decode(v, tensors) for k, v in value}
    if tag == "C":
        return OmegaConf.create(_decode(value, tensors))
    if tag == "P":
        return Path(value)
    out = OrderedDict((k, _decode(v, tensors)) for k, v in value)
    if "M" in node:
        out._metadata = _decode(node["M"], tensors)
    return out


def _digest(skeleton: str, tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256(skeleton.encode())
    for key in sorted(tensors):
        t = tensors[key]
        sha.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()


def save_tree(obj: Any, path: str | os.PathLike) -> None:
    """Atomically write ``obj`` as one safetensors file.

    ``obj`` may nest dicts (str or int keys; OrderedDict and a state dict's ``_metadata`` are kept), lists, tuples,
    str/int/float/bool/None, dense tensors of any safetensors dtype, OmegaConf containers and paths. Anything else
    raises ``TypeError`` naming its place, e.g. ``checkpoint['callbacks']['x']: unsupported type Foo``.
    """
    packer = _Packer()
    skeleton = json.dumps(packer.encode(obj, "checkpoint"), separators=(",", ":"))
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "tree": skeleton,
                "sha256": _digest(skeleton, packer.tensors)}
    atomic_write(path, lambda tmp: save_file(packer.tensors, tmp, metadata=metadata))


def load_tree(path: str | os.PathLike, map_location: str | torch.device | None = None) -> Any:
    """Read a file written by :func:`save_tree`, moving tensors to ``map_location`` if given (else CPU).

    Raises ``ValueError`` for files that are not safetensors, not ours, or corrupt (checksum mismatch).
    """
    try:
        with safe_open(os.fspath(path), framework="pt") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path}: not an ldlm checkpoint (metadata format {metadata.get('format')!r}, "
                                 f"expected {FORMAT!r})")
            if metadata.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: {FORMAT} version {metadata.get('format_version')!r} is not supported "
                                 f"(this code reads version {FORMAT_VERSION})")
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    skeleton = metadata.get("tree", "")
    if _digest(skeleton, tensors) != metadata.get("sha256"):
        raise ValueError(f"{path}: checksum mismatch, the checkpoint is corrupt")
    if map_location is not None:
        tensors = {key: t.to(map_location) for key, t in tensors.items()}
    return _decode(json.loads(skeleton), tensors)


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning checkpoints through :func:`save_tree` / :func:`load_tree`: one safetensors file, never unpickled."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        # With OmegaConf hparams Lightning stores type(hparams) as "hparams_type"; its loader also accepts a name.
        save_tree({k: f"{v.__module__}.{v.__qualname__}" if isinstance(v, type) else v
                   for k, v in checkpoint.items()}, path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: str | torch.device | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Load a checkpoint; ``weights_only`` is moot since nothing is ever unpickled."""
        return load_tree(path, map_location)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        Path(path).unlink(missing_ok=True)
