"""Part-of-speech data: Brown tags → 12 coarse classes, word tags → subword-token tags, and a word-level lexicon
tagger that judges POS control independently of any latent model."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from ldlm.data import IGNORE
from ldlm.errors import LdlmError
from ldlm.training.checkpoint_io import atomic_write

COARSE_TAGS = ["NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "NUM", "CONJ", "PRT", "PUNCT", "X"]

_BASE = {
    "NOUN": "nn nns np nps nr nrs",
    "VERB": "vb vbd vbg vbn vbz be bed bedz beg bem ben ber bez do dod doz hv hvd hvg hvn hvz md",
    "ADJ": "jj jjr jjs jjt od",
    "ADV": "rb rbr rbt rn ql qlp wql wrb abl *",
    "PRON": "pn pp$ pp$$ ppl ppls ppo pps ppss wp$ wpo wps ex",
    "DET": "at abn abx ap dt dti dts dtx wdt",
    "ADP": "in",
    "NUM": "cd",
    "CONJ": "cc cs",
    "PRT": "to rp",
    "X": "uh nil",
}
_COARSE = {tag: coarse for coarse, tags in _BASE.items() for tag in tags.split()}


def coarse_tag(tag: str) -> str:
    """A Brown tag → one of COARSE_TAGS: the first part of a compound (``ppss+md``), without the title / headline /
    cited suffixes (``-tl``, ``-hl``, ``-nc``), negation ``*`` or possessive ``$`` marks; foreign words (``fw-``)
    are X, tags without letters are PUNCT."""
    base = tag.lower().split("+")[0]
    if base.startswith("fw-"):
        return "X"
    while base[-3:] in ("-tl", "-hl", "-nc"):
        base = base[:-3]
    if base == "*":
        return "ADV"
    if not re.search(r"[a-z]", base):
        return "PUNCT"
    for candidate in (base, base.rstrip("*"), base.rstrip("*$")):
        if candidate in _COARSE:
            return _COARSE[candidate]
    return "X"


def normalize_word(word: str) -> str:
    """A Brown token as it is written in the sentence text (the quotes ``\u0060\u0060`` and ``''`` are ``"``)."""
    return word.replace("``", '"').replace("''", '"')


def read_brown(path: str | Path) -> list[list[dict]]:
    """The sentences (``{"text", "tokens", "tags"}``) of each document of a Brown JSON-lines file."""
    file = Path(path)
    if not file.is_file():
        raise LdlmError(f"Brown corpus file not found: {path}")
    docs = []
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                sentences = json.loads(line)["sentences"]
                for s in sentences:
                    if len(s["tokens"]) != len(s["tags"]) or not isinstance(s["text"], str):
                        raise ValueError
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise LdlmError(f"{file}:{number}: not a Brown document (sentences of text, tokens and tags of "
                                "equal length)") from None
            docs.append(sentences)
    if not docs:
        raise LdlmError(f"Brown corpus {path} has no documents")
    return docs


def char_tags(sentences: list[dict]) -> tuple[str, list[int]]:
    """A document's sentences joined by spaces, and the coarse tag index of each character (-1 between words).
    Each word is looked up in order in its sentence; a word not found there leaves its characters untagged."""
    texts, tags = [], []
    for sentence in sentences:
        body, pos = sentence["text"], 0
        sentence_tags = [-1] * len(body)
        for word, tag in zip(sentence["tokens"], sentence["tags"]):
            word = normalize_word(word)
            start = body.find(word, pos)
            if start < 0 or body[pos:start].strip():
                continue
            sentence_tags[start : start + len(word)] = [COARSE_TAGS.index(coarse_tag(tag))] * len(word)
            pos = start + len(word)
        tags += ([-1] if texts else []) + sentence_tags
        texts.append(body)
    text = " ".join(texts)
    return text, tags


def token_tags(documents: list[list[dict]], tokenizer) -> list[tuple[list[int], list[int]]]:
    """Token ids of each document (sentences joined by spaces, EOS appended) and each token's coarse tag index:
    the tag of the first tagged character it covers (every subword of a word gets the word's tag), else IGNORE."""
    texts, tags = zip(*(char_tags(doc) for doc in documents))
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for ids, offsets, chars in zip(encoded["input_ids"], encoded["offset_mapping"], tags):
        labels = [next((chars[i] for i in range(start, end) if chars[i] >= 0), IGNORE) for start, end in offsets]
        out.append((ids + [tokenizer.eos_token_id], labels + [IGNORE]))
    return out


class LexiconTagger:
    """Most frequent coarse tag of each lower-cased word; unknown words are NUM (with a digit), PUNCT (no letter or
    digit) or NOUN."""

    def __init__(self, lexicon: dict[str, str]) -> None:
        self.lexicon = lexicon

    @classmethod
    def from_documents(cls, documents: list[list[dict]]) -> "LexiconTagger":
        counts: dict[str, Counter] = defaultdict(Counter)
        for doc in documents:
            for sentence in doc:
                for word, tag in zip(sentence["tokens"], sentence["tags"]):
                    counts[normalize_word(word).lower()][coarse_tag(tag)] += 1
        return cls({word: c.most_common(1)[0][0] for word, c in sorted(counts.items())})

    @classmethod
    def from_brown(cls, path: str | Path, holdout_every: int = 10) -> "LexiconTagger":
        """Trained on the documents of a Brown file except those ``i % holdout_every == 0`` (0: all)."""
        docs = read_brown(path)
        return cls.from_documents([d for i, d in enumerate(docs) if not holdout_every or i % holdout_every])

    def tag(self, words: list[str]) -> list[str]:
        return [self.lexicon.get(normalize_word(w).lower()) or self._fallback(w) for w in words]

    @staticmethod
    def _fallback(word: str) -> str:
        if any(c.isdigit() for c in word):
            return "NUM"
        return "NOUN" if any(c.isalpha() for c in word) else "PUNCT"

    def accuracy(self, documents: list[list[dict]]) -> float:
        """Fraction of Brown words whose coarse tag it predicts."""
        right = total = 0
        for doc in documents:
            for sentence in doc:
                gold = [coarse_tag(t) for t in sentence["tags"]]
                right += sum(p == g for p, g in zip(self.tag(sentence["tokens"]), gold))
                total += len(gold)
        return right / max(1, total)

    def save(self, path: str | Path) -> None:
        text = json.dumps({"tags": COARSE_TAGS, "lexicon": self.lexicon}, ensure_ascii=False)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> "LexiconTagger":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            lexicon = data["lexicon"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise LdlmError(f"{path} is not a lexicon tagger file") from None
        return cls(lexicon)
