"""Gradient-based control: at each denoising step, nudge the clean-latent estimate up the gradient of differentiable
scores (through the VAE decoder's token logits or a classifier on latents), held near the model's prediction."""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ldlm.pipelines.text import split_words


class TokenScores:
    """Decoder log-probabilities of chosen tokens at every token position (B, N/K·L) for standardized latents,
    normalized over a candidate set fixed at ``anchor``: each position's ``top_k`` tokens plus ``token_ids``.
    (The full-vocabulary softmax is computed once, without gradient; the guidance steps differentiate only the
    candidates' logits.)"""

    def __init__(self, pipe, anchor: torch.Tensor, token_ids: list[int], top_k: int = 64) -> None:
        self.vae = pipe.vae
        self.ids = sorted(set(token_ids))
        with torch.no_grad():
            logits = self.vae.logits(self._states(anchor).to(self.vae.dtype)).float()
            top = logits.topk(top_k, dim=-1).indices
        extra = torch.tensor(self.ids, dtype=torch.long, device=top.device)
        self.duplicate = (top[..., None] == extra).any(-1)  # a required token already among the top-k
        self.candidates = torch.cat([top, extra.expand(*top.shape[:-1], -1)], dim=-1)
        self.width = top_k
        self.table = self.vae.token_table[self.candidates].float()  # (B, P, M, d), fixed with the candidates
        self.sq_norms = self.table.pow(2).sum(-1)

    def _states(self, x0: torch.Tensor) -> torch.Tensor:
        return self.vae.sequence_states(x0).float()

    def __call__(self, x0: torch.Tensor) -> dict[int, torch.Tensor]:
        """Log-probability (B, P) of each required token id at every position."""
        logits = 2 * torch.einsum("bpd,bpmd->bpm", self._states(x0), self.table) - self.sq_norms
        logits[..., : self.width] = logits[..., : self.width].masked_fill(self.duplicate, float("-inf"))
        logp = F.log_softmax(logits, dim=-1)[..., self.width :]
        return {token: logp[..., j] for j, token in enumerate(self.ids)}


class Control(ABC):
    """A target for guidance: a differentiable log-score of clean latents, and the text-level success check."""

    weight: float = 1.0

    def token_ids(self, pipe) -> list[int]:
        """Token ids whose decoder log-probabilities ``score`` reads from ``logp``."""
        return []

    @abstractmethod
    def score(self, pipe, x0: torch.Tensor, logp: dict[int, torch.Tensor]) -> torch.Tensor:
        """(B,) log-score of standardized clean latents (B, N, C); higher is closer to the target. ``logp``: the
        decoder log-probabilities (B, positions) of every control's ``token_ids``, one decode shared by all."""

    @abstractmethod
    def success(self, text: str, tokenizer) -> bool:
        """Whether a generated text meets the target."""


@dataclass
class LengthControl(Control):
    """Exactly ``num_tokens`` tokens before the first EOS: no EOS before, EOS then padding from there on."""

    num_tokens: int
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.num_tokens, int) or self.num_tokens < 1:
            raise ValueError(f"length target must be a positive number of tokens, got {self.num_tokens!r}")

    def token_ids(self, pipe) -> list[int]:
        return [pipe.vae.config.eos_token_id, pipe.vae.config.pad_token_id]

    def score(self, pipe, x0: torch.Tensor, logp: dict[int, torch.Tensor]) -> torch.Tensor:
        cfg = pipe.vae.config
        eos, pad = logp[cfg.eos_token_id], logp[cfg.pad_token_id]
        if self.num_tokens >= eos.shape[1]:
            raise ValueError(f"length target {self.num_tokens} does not fit in {eos.shape[1]} token positions")
        before = torch.log1p(-eos[:, : self.num_tokens].exp().clamp(max=1 - 1e-6))
        after = torch.cat([eos[:, self.num_tokens : self.num_tokens + 1], pad[:, self.num_tokens + 1 :]], dim=1)
        return before.mean(1) + after.mean(1)

    def success(self, text: str, tokenizer) -> bool:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == self.num_tokens


@dataclass
class KeywordControl(Control):
    """The keyword's tokens appear consecutively somewhere (soft maximum over start positions)."""

    keyword: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.keyword, str) or not self.keyword.strip():
            raise ValueError("keyword must be a non-empty string")

    def _spellings(self, pipe) -> set[tuple[int, ...]]:
        return {tuple(pipe.tokenizer(text, add_special_tokens=False)["input_ids"])
                for text in (self.keyword.strip(), " " + self.keyword.strip())}

    def token_ids(self, pipe) -> list[int]:
        return [i for ids in self._spellings(pipe) for i in ids]

    def score(self, pipe, x0: torch.Tensor, logp: dict[int, torch.Tensor]) -> torch.Tensor:
        positions = next(iter(logp.values())).shape[1]
        matches = []
        for ids in self._spellings(pipe):
            span = len(ids)
            if span > positions:
                continue  # log p(ids[j] at i + j), summed over j, for every start i
            matches.append(sum(logp[token][:, j : positions - span + 1 + j] for j, token in enumerate(ids)))
        if not matches:
            raise ValueError(f"keyword {self.keyword!r} is longer than the generated text")
        return torch.logsumexp(torch.cat(matches, dim=1), dim=1)

    def success(self, text: str, tokenizer) -> bool:
        return re.search(rf"\b{re.escape(self.keyword.strip())}\b", text, flags=re.IGNORECASE) is not None


@dataclass
class ClassifierControl(Control):
    """A label of a multi-label latent classifier (e.g. E2E content ``food[Italian]``); success is judged on the
    text by ``phrase`` (default: the label's value), case-insensitively."""

    classifier: torch.nn.Module
    label: str
    phrase: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        labels = list(self.classifier.config.labels)
        if self.label not in labels:
            raise ValueError(f"label {self.label!r} is not one the classifier knows (e.g. {labels[0]!r})")
        self.index = labels.index(self.label)
        if self.phrase is None:
            match = re.fullmatch(r".*\[(.*)\]", self.label)
            self.phrase = match.group(1) if match else self.label

    def score(self, pipe, x0: torch.Tensor, logp: dict[int, torch.Tensor]) -> torch.Tensor:
        logits = self.classifier.to(x0.device)(x0.to(self.classifier.dtype)).float()
        return F.logsigmoid(logits[:, self.index])

    def success(self, text: str, tokenizer) -> bool:
        return self.phrase.lower() in text.lower()


@dataclass
class TaggingControl(Control):
    """A tag per token position from a latent tagger (e.g. parts of speech); ``tags`` are target labels for the
    first token positions (None: any tag). Success: ``judge(text)`` (word tags) agrees on at least
    ``min_accuracy`` of ``word_tags``."""

    tagger: torch.nn.Module
    tags: list[str | None]
    word_tags: list[str] = field(default_factory=list)
    judge: object = None
    min_accuracy: float = 1.0
    weight: float = 1.0

    def __post_init__(self) -> None:
        labels = list(self.tagger.config.labels)
        unknown = sorted({t for t in self.tags if t is not None and t not in labels})
        if unknown:
            raise ValueError(f"tags {unknown} are not among the tagger's labels {labels}")
        self.targets = torch.tensor([0 if t is None else labels.index(t) for t in self.tags])
        self.tagged = torch.tensor([t is not None for t in self.tags])

    def score(self, pipe, x0: torch.Tensor, logp: dict[int, torch.Tensor]) -> torch.Tensor:
        logits = self.tagger.to(x0.device)(x0.to(self.tagger.dtype)).float()
        width = min(len(self.targets), logits.shape[1])
        targets = self.targets[:width].to(logits.device).expand(len(logits), -1)
        tagged = self.tagged[:width].to(logits.device).expand(len(logits), -1)
        nll = F.cross_entropy(logits[:, :width].transpose(1, 2), targets, reduction="none") * tagged
        return -nll.sum(1) / tagged.sum(1).clamp(min=1)

    def accuracy(self, text: str) -> float:
        """Share of target word tags matched, position by position, by the judge's tags of the text's words."""
        predicted = self.judge.tag(split_words(text))
        hits = sum(p == t for p, t in zip(predicted, self.word_tags))
        return hits / max(len(self.word_tags), len(predicted), 1)

    def success(self, text: str, tokenizer) -> bool:
        return self.accuracy(text) >= self.min_accuracy


@dataclass
class GradientGuidance:
    """Follow the weighted sum of the controls' scores for ``steps`` Adagrad steps on the clean-latent estimate,
    with a proximity penalty ``proximity·‖z − x0‖²`` keeping it near the model's prediction. Applied while the
    timestep is at most ``until`` of the training range (1.0: every step). Decoder-based scores normalize over
    each position's ``top_k`` tokens (see TokenScores). Called as ``guidance(pipe, x0, t)``."""

    controls: list[Control]
    steps: int = 3
    lr: float = 0.3
    proximity: float = 0.01
    until: float = 1.0
    top_k: int = 64

    def __post_init__(self) -> None:
        if not self.controls or not all(isinstance(c, Control) for c in self.controls):
            raise ValueError("GradientGuidance needs at least one Control")
        if self.steps < 1 or self.lr <= 0 or self.proximity < 0 or not 0 < self.until <= 1:
            raise ValueError("guidance needs steps ≥ 1, lr > 0, proximity ≥ 0 and 0 < until ≤ 1")

    def total_score(self, pipe, x0: torch.Tensor, tokens: TokenScores | None = None) -> torch.Tensor:
        """Weighted sum of the controls' scores (B,)."""
        if tokens is None:
            tokens = self.token_scores(pipe, x0)
        logp = {} if tokens is None else tokens(x0)
        return sum(c.weight * c.score(pipe, x0, logp) for c in self.controls)

    def token_scores(self, pipe, anchor: torch.Tensor) -> TokenScores | None:
        """Decoder scores of the controls' tokens; None when no control reads tokens (classifiers only)."""
        ids = [i for c in self.controls for i in c.token_ids(pipe)]
        return TokenScores(pipe, anchor, ids, self.top_k) if ids else None

    def __call__(self, pipe, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if float(t) > self.until * pipe.scheduler.config.num_train_timesteps:
            return x0
        anchor = x0.detach()
        tokens = self.token_scores(pipe, anchor)
        z = anchor.clone().requires_grad_(True)
        optimizer = torch.optim.Adagrad([z], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                loss = (self.proximity * (z - anchor).pow(2).sum((1, 2)) - self.total_score(pipe, z, tokens)).sum()
                z.grad = torch.autograd.grad(loss, z)[0]  # only z: no gradient lands on model weights
                optimizer.step()
        return z.detach()
