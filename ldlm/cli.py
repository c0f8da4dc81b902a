"""The ``ldlm`` command line: every user error is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import logging
import sys

from ldlm.errors import LdlmError


def _train_vae(args: argparse.Namespace) -> None:
    from ldlm.config import VAEExperiment, load_config
    from ldlm.train_vae import train_vae

    cfg = load_config(VAEExperiment, args.config, args.overrides)
    print(f"VAE exported to {train_vae(cfg)}")


def _train_dit(args: argparse.Namespace) -> None:
    from ldlm.config import DiTExperiment, load_config
    from ldlm.train_dit import train_dit

    path = train_dit(load_config(DiTExperiment, args.config, args.overrides))
    if path is not None:
        print(f"pipeline exported to {path}")


def _generate(args: argparse.Namespace) -> None:
    from ldlm.generate import generate

    texts = generate(args.model, args.prompt, args.num_samples, args.steps, args.seed, args.scheduler,
                     args.guidance_scale, args.num_blocks, args.device)
    for text in texts:
        print(text.replace("\n", " "))  # one sample per line


def _teacher_prepare(args: argparse.Namespace) -> None:
    from ldlm.align.registry import prepare

    print(f"teacher '{args.name}' ready at {prepare(args.name)}")


def _eval_vae(args: argparse.Namespace) -> None:
    from ldlm.evaluate import evaluate_vae_cli

    evaluate_vae_cli(args.vae, args.corpus, args.text_field, args.limit, args.skip, args.noise, args.holdout_every,
                     args.output)


def _features(args: argparse.Namespace) -> None:
    from ldlm.config import VAEExperiment, load_config
    from ldlm.features import extract_features

    extract_features(load_config(VAEExperiment, args.config, args.overrides))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldlm", description="Latent diffusion language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-vae", help="train a teacher-aligned TextVAE")
    p.add_argument("--config", required=True, help="OmegaConf YAML file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=_train_vae)

    p = sub.add_parser("train-dit", help="train a latent Diffusion Transformer on a frozen VAE's latents")
    p.add_argument("--config", required=True, help="OmegaConf YAML file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=_train_dit)

    p = sub.add_parser("generate", help="generate text (default: the shipped E2E checkpoint)")
    p.add_argument("--model", default=None, help="pipeline folder (default: checkpoints/ldlm-e2e-smollm2)")
    p.add_argument("--prompt", nargs="+", default=None, help="one or more prompts to continue")
    p.add_argument("--num-samples", type=int, default=4, help="samples (per prompt)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default=None, help="ddpm | ddim | dpm++ | euler | unipc (vp models); "
                   "flow-euler | flow-heun (flow models); default: the pipeline's own")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance on the prompt")
    p.add_argument("--num-blocks", type=int, default=None, help="length in blocks, prompt included")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_generate)

    p = sub.add_parser("features", help="precompute teacher features (split over processes under torchrun)")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_features)

    teacher = sub.add_parser("teacher", help="manage offline teachers").add_subparsers(dest="action", required=True)
    p = teacher.add_parser("prepare", help="convert a packaged GGUF teacher once to a cached fp32 folder")
    p.add_argument("name", help="registered teacher name, e.g. smollm2")
    p.set_defaults(func=_teacher_prepare)

    p = sub.add_parser("eval-vae", help="held-out reconstruction accuracy of an exported VAE")
    p.add_argument("--vae", required=True, help="training output dir (with vae/ and tokenizer/)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--text-field", default="text")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--skip", type=int, default=0)
    p.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.1, 0.3, 0.5])
    p.add_argument("--holdout-every", type=int, default=0,
                   help="evaluate the documents i %% N == 0 held out in training")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.set_defaults(func=_eval_vae)
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
