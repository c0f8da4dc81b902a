"""The evaluation suite (``ldlm eval`` and its Python API): generated texts of one or more systems against reference
and training texts — gen-PPL, MAUVE, Div and distinct-n, repetition, memorization, frequency-collapse and
marginal-trap diagnostics — plus the VAE's reconstruction accuracy and BLEU."""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from ldlm.data.corpus import read_corpus
from ldlm.errors import LdlmError
from ldlm.evaluation.diagnostics import frequency_collapse, marginal_trap
from ldlm.evaluation.metrics import (GenerativePerplexity, distinct_n, diversity, memorization, mauve_score,
                                     repetition_rate)
from ldlm.evaluation.reconstruction import vae_reconstruction
from ldlm.pipelines.loading import SHIPPED, load_pipeline, load_vae
from ldlm.pipelines.text import ngram_set

REFERENCES = "references"
GENERATION_BATCH = 100  # fixed, so a seed gives the same samples as benchmarks/generation_report.py
FEATURES = ("minilm", "teacher", "none")


def token_ids(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@dataclass
class TrainingStats:
    """What the suite needs from the training corpus, built once: its word 4-grams and, with a tokenizer, its token
    counts, bigrams and trigrams."""

    word_4grams: set[tuple]
    token_counts: Counter | None = None
    token_bigrams: set[tuple] | None = None
    token_trigrams: set[tuple] | None = None

    @classmethod
    def from_texts(cls, texts: list[str], tokenizer=None) -> TrainingStats:
        stats = cls(ngram_set((t.split() for t in texts), 4))
        if tokenizer is not None:
            ids = token_ids(texts, tokenizer)
            stats.token_counts = Counter(t for seq in ids for t in seq)
            stats.token_bigrams, stats.token_trigrams = ngram_set(ids, 2), ngram_set(ids, 3)
        return stats


def evaluate_systems(
    systems: dict[str, list[str]],
    references: list[str] | None = None,
    train_texts: list[str] | None = None,
    *,
    tokenizer=None,
    block_length: int | None = None,
    ppl_model: str | None = None,
    mauve_features: str | None = None,
    top_k: int = 50,
    seed: int = 0,
    device: str = "cpu",
    reference_row: bool = True,
) -> dict[str, dict]:
    """Metrics of each system's texts, computed with shared models and training statistics so that systems (ldlm,
    an AR baseline) line up side by side. Each metric appears when its inputs are given: ``ppl_model`` (an LM name
    or folder) → gen_ppl; ``references`` + ``mauve_features`` ("minilm" or an LM name/folder) → mauve;
    ``train_texts`` → memorization_4; ``tokenizer`` (the pipeline's) → token diagnostics, with ``references`` +
    ``train_texts`` + ``block_length`` → frequency_collapse. With ``reference_row`` the references get a row too
    (named "references", without the metrics that compare against them)."""
    if REFERENCES in systems and reference_row and references is not None:
        raise LdlmError(f"a system cannot be named '{REFERENCES}'")
    for name, texts in systems.items():
        if not texts:
            raise LdlmError(f"system '{name}' has no texts")
    train = TrainingStats.from_texts(train_texts, tokenizer) if train_texts is not None else None
    ppl = GenerativePerplexity(ppl_model, device=device) if ppl_model is not None else None
    featurize, ref_features = None, None
    if mauve_features is not None and references is not None:
        from ldlm.evaluation.embeddings import TextEncoder

        featurize = TextEncoder(mauve_features, device=device)
        ref_features = featurize(references)
    ref_ids = token_ids(references, tokenizer) if references is not None and tokenizer is not None else None
    rows = {}
    for name, texts in systems.items():
        row = _text_metrics(texts, ppl, train, tokenizer)
        if featurize is not None:
            row["mauve"] = mauve_score(featurize(texts), ref_features, seed=seed)
        if ref_ids is not None and train is not None and block_length is not None:
            row["frequency_collapse"] = frequency_collapse(token_ids(texts, tokenizer), ref_ids, train.token_counts,
                                                           block_length, top_k)
        rows[name] = row
    if reference_row and references is not None:
        rows[REFERENCES] = _text_metrics(references, ppl, train, tokenizer)
    return rows


def _text_metrics(texts: list[str], ppl: GenerativePerplexity | None, train: TrainingStats | None,
                  tokenizer) -> dict:
    row = {"num_texts": len(texts), "words_per_text": sum(len(t.split()) for t in texts) / len(texts)}
    if ppl is not None:
        row["gen_ppl"] = ppl(texts)
    row["diversity"] = diversity(texts)
    row |= {f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3, 4)}
    row["repetition_rate_4"] = sum(repetition_rate(t, 4) for t in texts) / len(texts)
    if train is not None:
        row["memorization_4"] = memorization(texts, train.word_4grams)
    if tokenizer is not None:
        ids = token_ids(texts, tokenizer)
        row["tokens_per_text"] = sum(map(len, ids)) / len(ids)
        bigrams, trigrams = (train.token_bigrams, train.token_trigrams) if train is not None else (None, None)
        row |= marginal_trap(ids, bigrams, trigrams)
    return row


def evaluate_texts(texts: list[str], references: list[str] | None = None, train_texts: list[str] | None = None,
                   **options) -> dict:
    """Metrics of one system's texts; ``options`` as for ``evaluate_systems``."""
    return evaluate_systems({"generated": texts}, references, train_texts, reference_row=False, **options)["generated"]


def read_samples(path: str) -> list[str]:
    """Samples from a JSON-lines file ({"text": ...} per line) or a text file (one sample per line)."""
    if Path(path).suffix.lower() in (".jsonl", ".json"):
        return read_corpus(path)
    if not Path(path).is_file():
        raise LdlmError(f"samples file not found: {path}")
    try:
        texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise LdlmError(f"samples file {path}: not UTF-8 text (byte {err.start})") from None
    if not texts:
        raise LdlmError(f"samples file {path} has no samples")
    return texts


def sample_texts(pipe, num_samples: int, steps: int, seed: int, batch_size: int = GENERATION_BATCH,
                 snap: float = 0.0, temperature: float | None = None, autoguidance: float | None = None) -> list[str]:
    """Unconditional samples of a loaded pipeline, in batches from one seeded generator (fixed batches: a seed gives
    the same samples in ``ldlm eval`` and ``benchmarks/generation_report.py``); ``snap``, ``temperature`` and
    ``autoguidance`` as for ``denoise``."""
    generator = torch.Generator(device=pipe._execution_device).manual_seed(seed)
    texts = []
    for first in range(0, num_samples, batch_size):
        texts += pipe(batch_size=min(batch_size, num_samples - first), num_inference_steps=steps,
                      generator=generator, snap=snap, temperature=temperature, autoguidance=autoguidance).texts
    return texts


COLUMNS = {"gen_ppl": "gen-PPL", "mauve": "MAUVE", "diversity": "Div", "distinct_2": "distinct-2",
           "repetition_rate_4": "rep-4/text", "memorization_4": "memorized 4-grams",
           "adjacent_duplicate_rate": "dup. adjacent tokens", "novel_bigram_rate": "novel token bigrams",
           "novel_trigram_rate": "novel token trigrams", "top_k_drift": "top-k drift", "kl_mean": "KL/position"}


def format_table(rows: dict[str, dict]) -> str:
    """A Markdown table of the systems' headline metrics ("–" where a metric was not computed)."""
    flat = {name: {**row, **row.get("frequency_collapse", {})} for name, row in rows.items()}
    keys = [k for k in COLUMNS if any(k in row for row in flat.values())]
    lines = ["| texts | " + " | ".join(COLUMNS[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in flat.items():
        cells = ["–" if row.get(k) is None else f"{row[k]:.1f}" if k == "gen_ppl" else f"{row[k]:.3f}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _check_flags(args: argparse.Namespace) -> None:
    if args.mauve_features not in FEATURES:
        raise LdlmError(f"--mauve-features must be one of {', '.join(FEATURES)}, got '{args.mauve_features}'")
    for flag, value in (("--num-samples", args.num_samples), ("--steps", args.steps), ("--top-k", args.top_k),
                        ("--num-references", args.num_references)):
        if value is not None and value < 1:
            raise LdlmError(f"{flag} must be a positive integer, got {value}")
    if args.mauve_features == "teacher" and args.ppl_model == "none":
        raise LdlmError("--mauve-features teacher uses the --ppl-model LM; it cannot be 'none'")
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise LdlmError(f"cannot write {args.output}: no such folder")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise LdlmError(f"device '{args.device}' requested but CUDA is not available")


def eval_command(args: argparse.Namespace) -> dict:
    """``ldlm eval``: evaluate sample files (``--samples``, one system each) or fresh samples of a pipeline
    (``--model``, loaded once), print a table and the per-position drift, and write the JSON report to ``--output``.
    Files are read before anything is generated; the other flags are those of ``ldlm eval --help``."""
    _check_flags(args)
    hf_logging.disable_progress_bar()
    systems = {}
    for path in args.samples or []:
        systems[Path(path).stem if Path(path).stem not in systems else path] = read_samples(path)
    refs = read_corpus(args.references) if args.references is not None else None
    train_texts = read_corpus(args.train) if args.train is not None else None
    if args.samples:
        vae, tokenizer = load_vae(args.model if args.model is not None else SHIPPED)
    else:
        pipe = load_pipeline(args.model).to(args.device)
        vae, tokenizer = pipe.vae, pipe.tokenizer
        try:
            systems["ldlm"] = sample_texts(pipe, args.num_samples, args.steps, args.seed)
        except ValueError as err:
            raise LdlmError(str(err).splitlines()[0]) from None
    if refs is not None:
        count = args.num_references or max(map(len, systems.values()))
        refs = random.Random(args.seed).sample(refs, count) if len(refs) > count else refs
    rows = evaluate_systems(systems, refs, train_texts, tokenizer=tokenizer, block_length=vae.config.block_length,
                            ppl_model=None if args.ppl_model == "none" else args.ppl_model,
                            mauve_features={"none": None, "teacher": args.ppl_model}.get(args.mauve_features,
                                                                                         args.mauve_features),
                            top_k=args.top_k, seed=args.seed, device=args.device)
    config = {"model": str(args.model or SHIPPED), "seed": args.seed, "references": args.references,
              "num_references": None if refs is None else len(refs), "train": args.train,
              "ppl_model": args.ppl_model, "mauve_features": args.mauve_features, "top_k": args.top_k}
    config |= {"samples": args.samples} if args.samples else {
        "num_samples": args.num_samples, "steps": args.steps, "temperature": pipe.config.temperature,
        "autoguidance": pipe.config.autoguidance}
    report = {"config": config, "systems": rows}
    if refs is not None:
        report["vae_reconstruction"] = vae_reconstruction(vae, tokenizer, refs)
    if not args.samples:
        report["samples"] = systems
    print(format_table(rows))
    for name, row in rows.items():
        if "frequency_collapse" in row:
            drift = " ".join("–" if p["top_k_drift"] is None else f"{p['top_k_drift']:+.2f}"
                             for p in row["frequency_collapse"]["positions"])
            print(f"top-{args.top_k} drift by block position ({name}): {drift}")
    if "vae_reconstruction" in report:
        print("VAE reconstruction of the references: "
              + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in report["vae_reconstruction"].items()))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return report
