"""The ``ldlm`` command line: every user error is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ldlm.errors import LdlmError


def _train(args: argparse.Namespace, schema: str, trainer: str, exported: str) -> None:
    """Load and check the config (one line per mistake) before the trainer module and its libraries load."""
    from omegaconf import OmegaConf

    from ldlm.training import config

    cfg = OmegaConf.to_object(config.load_config(getattr(config, schema), args.config, args.overrides))
    module, name = trainer.rsplit(".", 1)
    path = getattr(importlib.import_module(module), name)(cfg)
    if path is not None:  # the first process
        print(exported.format(path))


def _train_vae(args: argparse.Namespace) -> None:
    _train(args, "VAEExperiment", "ldlm.training.vae_trainer.train_vae", "VAE exported to {}")


def _train_dit(args: argparse.Namespace) -> None:
    _train(args, "DiTExperiment", "ldlm.training.dit_trainer.train_dit", "pipeline exported to {}")


def _train_ar(args: argparse.Namespace) -> None:
    _train(args, "ARExperiment", "ldlm.training.ar_trainer.train_ar",
           "autoregressive baseline exported to {} (model/ + tokenizer/)")


def _train_classifier(args: argparse.Namespace) -> None:
    _train(args, "ClassifierExperiment", "ldlm.training.classifier_trainer.train_classifier",
           "classifier exported to {}")


@contextmanager
def _user_errors() -> Iterator[None]:
    """A ValueError of the pipeline's argument checks (or a sample gone non-finite) becomes a one-line LdlmError."""
    try:
        yield
    except (ValueError, FloatingPointError) as err:
        raise LdlmError(str(err).splitlines()[0]) from None


def _check_sampling(args: argparse.Namespace, texts: list[str] = (), what: str = "prompt") -> None:
    """The options every generating command shares, and its input ``texts`` (each a ``what``), checked before
    anything heavy loads (the pipeline checks the step count against its scheduler)."""
    from ldlm.pipelines.text import check_text

    for option in ("steps", "num_samples", "max_tokens"):
        value = getattr(args, option, 1)
        if value < 1:
            raise LdlmError(f"--{option.replace('_', '-')} must be a positive integer, got {value}")
    if not 0 <= args.snap <= 1:
        raise LdlmError(f"--snap must be a fraction of the steps in [0, 1], got {args.snap}")
    if args.temperature is not None and not 0 < args.temperature <= 2:
        raise LdlmError(f"--temperature must lie in (0, 2], got {args.temperature}")
    if args.autoguidance is not None and not (math.isfinite(args.autoguidance) and args.autoguidance >= 1):
        raise LdlmError(f"--autoguidance must be a finite number ≥ 1 (1: off), got {args.autoguidance}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", args.device):
        raise LdlmError(f"unknown device '{args.device}' (cpu, cuda, cuda:N or mps)")
    with _user_errors():
        for i, text in enumerate(texts):
            check_text(text, f"{what} {i + 1}")


def _pipeline_and_generator(args: argparse.Namespace, default: Path | None = None):
    """The pipeline of ``--model`` (else ``default``, else the shipped E2E one) with ``--scheduler`` on ``--device``,
    and a generator seeded with ``--seed``."""
    import torch

    from ldlm.pipelines.loading import SHIPPED, load_pipeline

    index = int(args.device.partition(":")[2] or 0)
    if args.device == "mps" and not torch.backends.mps.is_available():
        raise LdlmError("device 'mps' requested but MPS is not available")
    if args.device.startswith("cuda") and torch.cuda.is_available() and index >= torch.cuda.device_count():
        raise LdlmError(f"device '{args.device}' requested but there are {torch.cuda.device_count()} CUDA devices")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise LdlmError(f"device '{args.device}' requested but CUDA is not available")
    pipe = load_pipeline(args.model, args.scheduler, default or SHIPPED, args.dtype)
    return pipe.to(args.device), torch.Generator(args.device).manual_seed(args.seed)


def _guidance(args: argparse.Namespace):
    """Gradient guidance from the targets on the command line (None when there are none); content labels use
    ``--classifier``, by default the one shipped for the shipped pipeline."""
    from ldlm.pipelines.guidance import ClassifierControl, GradientGuidance, KeywordControl, LengthControl
    from ldlm.pipelines.loading import SHIPPED_CONTENT, load_classifier

    with _user_errors():
        controls = [KeywordControl(word) for word in args.keyword]
        if args.length is not None:
            controls.append(LengthControl(args.length))
        if args.content:
            path = args.classifier or (SHIPPED_CONTENT if args.model is None else None)
            if path is None:
                raise LdlmError("--content needs --classifier (a content classifier trained on this model's VAE)")
            classifier = load_classifier(path)
            controls += [ClassifierControl(classifier, label) for label in args.content]
        if not controls:
            return None
        return GradientGuidance(controls, steps=args.guidance_steps, lr=args.guidance_lr)


def _generate(args: argparse.Namespace) -> None:
    _check_sampling(args, args.prompt or [])
    if not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 1):
        raise LdlmError(f"--guidance-scale must be a finite number ≥ 1 (1: off), got {args.guidance_scale}")
    if args.guidance_scale != 1 and not args.prompt:
        raise LdlmError("--guidance-scale (classifier-free guidance on the prompt) needs --prompt")
    guidance = _guidance(args)
    pipe, generator = _pipeline_and_generator(args)
    sampling = dict(num_blocks=args.num_blocks, num_inference_steps=args.steps, generator=generator,
                    guidance=guidance, snap=args.snap, temperature=args.temperature, autoguidance=args.autoguidance)
    with _user_errors():
        if args.prompt:
            out = pipe(args.prompt, guidance_scale=args.guidance_scale, num_samples_per_prompt=args.num_samples,
                       **sampling)
        else:
            out = pipe(batch_size=args.num_samples, **sampling)
    for text in out.texts:
        print(text.replace("\n", " "))  # one sample per line
    _warn_missing_keywords(guidance, pipe.tokenizer, out.texts)


def _warn_missing_keywords(guidance, tokenizer, texts: list[str]) -> None:
    """A warning for each guided keyword that no sample contains, naming the pieces the tokenizer splits it into."""
    from ldlm.pipelines.guidance import KeywordControl

    for control in guidance.controls if guidance is not None else []:
        if isinstance(control, KeywordControl) and not any(control.success(t, tokenizer) for t in texts):
            pieces = tokenizer.tokenize(" " + control.keyword.strip())
            split = f"; the tokenizer splits it into {len(pieces)} pieces {pieces}" if len(pieces) > 1 else ""
            print(f"ldlm: warning: keyword {control.keyword!r} appears in none of the samples{split}",
                  file=sys.stderr)


def _infill(args: argparse.Namespace) -> None:
    _check_sampling(args, [s for s in args.segments if s != "_"], what="segment")
    if "_" not in args.segments:
        raise LdlmError("give at least one gap: _ between or around the fixed texts, e.g. ldlm infill 'First.' _")
    pipe, generator = _pipeline_and_generator(args)
    with _user_errors():
        out = pipe.infill([None if s == "_" else s for s in args.segments], gap_blocks=args.gap_blocks,
                          method=args.method, num_samples_per_prompt=args.num_samples, num_inference_steps=args.steps,
                          snap=args.snap, temperature=args.temperature, autoguidance=args.autoguidance,
                          generator=generator)
    for text in out.texts:
        print(text.replace("\n", " "))


def _longgen(args: argparse.Namespace) -> None:
    """One long document block by block, appending each finished group to ``--output`` as it is decoded (an
    interrupted run keeps what it wrote), with a progress bar."""
    from tqdm.auto import tqdm

    from ldlm.pipelines.loading import SHIPPED_LONG
    from ldlm.pipelines.long_generation import LongGeneration

    _check_sampling(args, [] if args.prompt is None else [args.prompt])
    target = Path(args.output)
    if not target.parent.is_dir() or target.is_dir():
        reason = "it is a folder" if target.is_dir() else f"no folder {target.parent}"
        raise LdlmError(f"cannot write {args.output}: {reason}")
    if target.exists() and not args.overwrite:
        raise LdlmError(f"{args.output} exists; pass --overwrite to replace it")
    pipe, generator = _pipeline_and_generator(args, default=SHIPPED_LONG)
    with _user_errors():
        run = LongGeneration(pipe, args.prompt, args.max_tokens, new_blocks=args.new_blocks,
                             num_inference_steps=args.steps, snap=args.snap, temperature=args.temperature,
                             autoguidance=args.autoguidance, generator=generator, stop_at_eos=not args.ignore_eos,
                             max_repeat=args.max_repeat)
    with open(target, "w", encoding="utf-8") as handle, tqdm(total=args.max_tokens, unit="tok") as bar, \
            _user_errors():
        for (text,) in run:
            handle.write(text)
            handle.flush()
            bar.update(min(run.token_counts[0], args.max_tokens) - bar.n)
    print(f"wrote {run.token_counts[0]} tokens to {args.output} (stopped: {run.stop_reasons[0]})")


def _teacher_prepare(args: argparse.Namespace) -> None:
    from ldlm.align.registry import prepare

    print(f"teacher '{args.name}' ready at {prepare(args.name)}")


def _eval_vae(args: argparse.Namespace) -> None:
    from ldlm.evaluation.reconstruction import eval_vae_command

    eval_vae_command(args)


def _features(args: argparse.Namespace) -> None:
    from ldlm.data.token_blocks import extract_features
    from ldlm.training.config import VAEExperiment, load_config

    extract_features(load_config(VAEExperiment, args.config, args.overrides))


def _eval(args: argparse.Namespace) -> None:
    from ldlm.evaluation.suite import eval_command

    eval_command(args)


def _sampling_options(p: argparse.ArgumentParser) -> None:
    """The sampler options every generating command has."""
    p.add_argument("--steps", type=int, default=25, help="denoising steps")
    p.add_argument("--snap", type=float, default=0.0, help="snap the clean estimate onto the VAE's code in this "
                   "last fraction of the steps (0: never, 1: every step)")
    p.add_argument("--temperature", type=float, default=None, help="scale of the starting noise (default: the "
                   "pipeline's): below 1 trades diversity for fluency at no cost")
    p.add_argument("--autoguidance", type=float, default=None, help="weight of the model against the pipeline's "
                   "weak transformer (default: the pipeline's; 1: off)")
    p.add_argument("--scheduler", default=None, help="ddpm | ddim | dpm++ | euler | unipc (vp models); "
                   "flow-euler | flow-heun (flow models); default: the pipeline's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="the DiTs' weights: float32 | bfloat16 | float16 (the VAE "
                   "stays fp32); bfloat16 keeps gen-PPL and is faster on CPUs with bf16 instructions")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldlm", description="Latent diffusion language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, help_text, func in (
        ("train-vae", "train a teacher-aligned TextVAE", _train_vae),
        ("train-dit", "train a latent Diffusion Transformer on a frozen VAE's latents", _train_dit),
        ("train-ar", "train the autoregressive baseline on the DiT's corpus and tokenizer", _train_ar),
        ("train-classifier", "train a latent classifier or tagger for gradient guidance", _train_classifier),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="OmegaConf YAML file")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        p.set_defaults(func=func)

    p = sub.add_parser("generate", help="generate text (default: the shipped E2E checkpoint)")
    p.add_argument("--model", default=None, help="pipeline folder (default: checkpoints/ldlm-e2e-smollm2)")
    p.add_argument("--prompt", nargs="+", default=None, help="one or more prompts to continue")
    p.add_argument("--num-samples", type=int, default=4, help="samples (per prompt)")
    _sampling_options(p)
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance on the prompt")
    p.add_argument("--num-blocks", type=int, default=None, help="length in blocks, prompt included")
    p.add_argument("--length", type=int, default=None, help="gradient guidance: this many tokens")
    p.add_argument("--keyword", nargs="+", default=[], help="gradient guidance: include these words")
    p.add_argument("--content", nargs="+", default=[], help="gradient guidance: classifier labels, e.g. "
                   "'food[Italian]' (needs --classifier)")
    p.add_argument("--classifier", default=None, help="content classifier folder (ldlm train-classifier; default "
                   "for the shipped pipeline: checkpoints/e2e-guidance/content)")
    p.add_argument("--guidance-steps", type=int, default=3, help="gradient steps per denoising step")
    p.add_argument("--guidance-lr", type=float, default=0.3, help="gradient guidance step size")
    p.set_defaults(func=_generate)

    p = sub.add_parser("infill", help="generate around fixed text: ldlm infill 'First.' _ 'Last.'")
    p.add_argument("segments", nargs="+", help="fixed texts, and _ for each gap")
    p.add_argument("--model", default=None, help="pipeline folder (default: checkpoints/ldlm-e2e-smollm2)")
    p.add_argument("--gap-blocks", type=int, default=1, help="blocks generated for each _")
    p.add_argument("--method", default="condition", help="condition (clean context) | replace (re-noised)")
    p.add_argument("--num-samples", type=int, default=4)
    _sampling_options(p)
    p.set_defaults(func=_infill)

    p = sub.add_parser("longgen", help="generate a long document block by block into a file")
    p.add_argument("--output", required=True, help="text file to write, group by group as blocks finish (an existing "
                   "file is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--model", default=None, help="pipeline folder (default: checkpoints/ldlm-kjv-smollm2, the "
                   "long-document pipeline)")
    p.add_argument("--prompt", default=None, help="text the document starts with")
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--new-blocks", type=int, default=None, help="blocks generated per group (default: the "
                   "pipeline's, else half the window; the rest of the window is context)")
    _sampling_options(p)
    p.add_argument("--ignore-eos", action="store_true", help="go on to --max-tokens whatever the model does at a "
                   "block end")
    p.add_argument("--max-repeat", type=float, default=0.5, help="anti-loop: resample a group when more than this "
                   "share of its 4-grams repeats recent text")
    p.set_defaults(func=_longgen)

    p = sub.add_parser("features", help="precompute teacher features (split over processes under torchrun)")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_features)

    teacher = sub.add_parser("teacher", help="manage offline teachers").add_subparsers(dest="action", required=True)
    p = teacher.add_parser("prepare", help="convert a packaged GGUF teacher once to a cached fp32 folder")
    p.add_argument("name", help="registered teacher name, e.g. smollm2")
    p.set_defaults(func=_teacher_prepare)

    p = sub.add_parser("eval-vae", help="held-out reconstruction accuracy of an exported VAE")
    p.add_argument("--vae", required=True, help="training output (seen/unseen token split from its "
                   "config.yaml), pipeline, or folder with vae/ and tokenizer/")
    p.add_argument("--corpus", required=True)
    p.add_argument("--text-field", default="text")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--skip", type=int, default=0)
    p.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.1, 0.3, 0.5])
    p.add_argument("--holdout-every", type=int, default=0,
                   help="evaluate the documents i %% N == 0 held out in training")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.set_defaults(func=_eval_vae)

    p = sub.add_parser("eval", help="evaluation suite: gen-PPL, MAUVE, Div, memorization, diagnostics")
    p.add_argument("--samples", nargs="+", default=None,
                   help="samples files, one system each: .jsonl ({\"text\"}) or text (one per line); "
                        "default: generate them with --model")
    p.add_argument("--model", default=None, help="pipeline folder (default: checkpoints/ldlm-e2e-smollm2): "
                   "the sampler, and the tokenizer, block length and VAE of the diagnostics")
    p.add_argument("--num-samples", type=int, default=200, help="samples to generate")
    p.add_argument("--steps", type=int, default=25, help="denoising steps when generating")
    p.add_argument("--seed", type=int, default=0, help="seeds generation, the reference subset and MAUVE")
    p.add_argument("--references", default=None, help="reference corpus file (read like training corpora)")
    p.add_argument("--num-references", type=int, default=None,
                   help="references drawn (seeded) from --references (default: as many as samples)")
    p.add_argument("--train", default=None, help="training texts (memorization, novel n-grams, frequent tokens)")
    p.add_argument("--ppl-model", default="smollm2", help="LM for gen-PPL: teacher name, folder or hub id; none")
    p.add_argument("--mauve-features", default="minilm", help="minilm | teacher (the --ppl-model LM) | none")
    p.add_argument("--top-k", type=int, default=50, help="most frequent training tokens of the collapse metric")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="write the JSON report here")
    p.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except LdlmError as err:
        print(f"ldlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ldlm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
