"""Words and n-grams of texts and token-id sequences: what the POS judge splits and what the anti-loop guard and the
metrics count."""
from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence

_WORD = re.compile(r"\w+(?:[-'.,/]\w+)*|[^\w\s]+")


def check_text(text: str, what: str) -> None:
    """ValueError unless ``text`` is a non-empty string of valid Unicode (no lone surrogates from undecodable bytes)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} must be a non-empty string, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} is not valid UTF-8 text (undecodable character at position {err.start})") from None


def split_words(text: str) -> list[str]:
    """Words of a text, close to Brown's tokenization (``Atlanta's``, ``well-known``, ``1,000`` stay whole)."""
    return _WORD.findall(text)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character (start, end) of each word of :func:`split_words`."""
    return [m.span() for m in _WORD.finditer(text)]


def ngrams(seq: Sequence[Hashable], n: int) -> list[tuple]:
    """The n-grams of one sequence (words or token ids), in order."""
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def ngram_set(sequences: Iterable[Sequence[Hashable]], n: int) -> set[tuple]:
    """Every n-gram occurring in ``sequences`` (e.g. a training corpus' word 4-grams, built once)."""
    return {gram for seq in sequences for gram in ngrams(seq, n)}


def known_and_total(sequences: Iterable[Sequence[Hashable]], known: set[tuple], n: int) -> tuple[int, int]:
    """How many n-grams of ``sequences`` (every occurrence counted) are in ``known``, and how many there are."""
    grams = [gram for seq in sequences for gram in ngrams(seq, n)]
    return sum(gram in known for gram in grams), len(grams)


def ngram_overlap(sequences: Iterable[Sequence[Hashable]], known: set[tuple], n: int) -> float:
    """Share of the n-grams of ``sequences`` (every occurrence counted) that are in ``known``; 0 when there are none."""
    inside, total = known_and_total(sequences, known, n)
    return inside / total if total else 0.0
