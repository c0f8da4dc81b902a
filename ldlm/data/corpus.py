"""Corpus readers: JSON lines, plain text, CSV, Hugging Face datasets, and a built-in synthetic corpus."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from ldlm.errors import LdlmError

_NAMES = ["The Eagle", "Alimentum", "Blue Spice", "The Mill", "Zizzi", "Aromi", "The Phoenix", "Cotto", "Giraffe",
          "The Punter", "Wildwood", "Browns Cambridge", "Fitzbillies", "The Golden Curry", "Loch Fyne", "Midsummer House"]
_KINDS = ["coffee shop", "restaurant", "pub"]
_FOODS = ["Italian", "French", "Chinese", "Indian", "Japanese", "English", "fast food"]
_AREAS = ["city centre", "riverside"]
_PRICES = ["cheap", "moderately priced", "expensive", "high priced"]
_RATINGS = ["low", "average", "high", "5 out of 5", "1 out of 5", "3 out of 5"]


def restaurant_sentences(count: int, seed: int = 0) -> list[str]:
    """Template-generated restaurant descriptions: a small, learnable corpus for tests and smoke runs."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        name, kind, food = rng.choice(_NAMES), rng.choice(_KINDS), rng.choice(_FOODS)
        area, price, rating = rng.choice(_AREAS), rng.choice(_PRICES), rng.choice(_RATINGS)
        family = rng.choice(["is family friendly", "is not family friendly", "welcomes children"])
        parts = [f"{name} is a {price} {kind} serving {food} food in the {area}.",
                 f"It has a {rating} customer rating and {family}."]
        if rng.random() < 0.5:
            parts.append(f"It is near {rng.choice(_NAMES)}.")
        texts.append(" ".join(parts[: rng.randint(1, len(parts))]))
    return texts


def read_corpus(
    path: str,
    text_field: str = "text",
    limit: int | None = None,
    skip: int = 0,
    stride: int = 1,
    holdout_every: int = 0,
    heldout: bool = False,
) -> list[str]:
    """Documents of a corpus in file order. With ``holdout_every`` the documents ``i % holdout_every == 0`` are
    held out: returned only when ``heldout``, else excluded; then ``skip``, ``stride`` and ``limit`` apply."""
    if path.startswith("builtin:"):
        name, _, count = path.partition(":")[2].partition(":")
        if name != "restaurants":
            raise LdlmError(f"unknown built-in corpus '{name}' (known: restaurants)")
        docs = restaurant_sentences(int(count or 2000))
    elif path.startswith("hf:"):
        docs = _read_hf(path[3:], text_field)
    else:
        file = Path(path)
        if not file.is_file():
            raise LdlmError(f"corpus file not found: {path}")
        docs = _read_file(file, text_field)
    if holdout_every > 0:
        docs = [d for i, d in enumerate(docs) if (i % holdout_every == 0) == heldout]
    docs = docs[skip::max(1, stride)]
    docs = docs[:limit] if limit is not None else docs
    if not docs:
        raise LdlmError(f"corpus {path} has no documents")
    return docs


def _read_file(file: Path, text_field: str) -> list[str]:
    try:
        return _parse_file(file, text_field)
    except UnicodeDecodeError:
        raise LdlmError(f"{file}: not UTF-8 text") from None


def _parse_file(file: Path, text_field: str) -> list[str]:
    suffix = file.suffix.lower()
    with open(file, encoding="utf-8") as handle:
        if suffix in (".jsonl", ".json"):
            docs = []
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    docs.append(json.loads(line)[text_field])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise LdlmError(f"{file}:{number}: not a JSON object with a '{text_field}' field") from None
            return docs
        if suffix == ".csv":
            reader = csv.DictReader(handle)
            if text_field not in (reader.fieldnames or []):
                raise LdlmError(f"{file}: no column '{text_field}' (columns: {reader.fieldnames})")
            return [row[text_field] for row in reader]
        if suffix in (".txt", ".md", ""):
            return [doc.strip() for doc in handle.read().split("\n\n") if doc.strip()]
    raise LdlmError(f"{file}: unsupported corpus format '{suffix}' (use .jsonl, .csv or .txt)")


def _read_hf(spec: str, text_field: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise LdlmError("hf: corpora need the `datasets` package: pip install datasets") from None
    name, _, split = spec.partition(":")
    return list(datasets.load_dataset(name, split=split or "train")[text_field])
