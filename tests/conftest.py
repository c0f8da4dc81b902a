"""Offline fixtures: a word-level tokenizer over the built-in corpus and tiny random HF teachers saved to disk."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

from ldlm.data.corpus import restaurant_sentences

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")


def tiny_model(kind: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512)
    cls, cfg = {"qwen2": (Qwen2ForCausalLM, Qwen2Config), "qwen3": (Qwen3ForCausalLM, Qwen3Config),
                "mistral": (MistralForCausalLM, MistralConfig)}[kind]
    torch.manual_seed(0)
    return cls(cfg(**common)).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return word_tokenizer(restaurant_sentences(3000, seed=1))


@pytest.fixture(scope="session")
def teacher_dirs(tmp_path_factory, tokenizer) -> dict[str, str]:
    """Folders holding tiny random Qwen2 / Qwen3 / Mistral teachers with the word tokenizer."""
    out = {}
    for kind in ("qwen2", "qwen3", "mistral"):
        folder = tmp_path_factory.mktemp(kind)
        tiny_model(kind, len(tokenizer)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[kind] = str(folder)
    return out


@pytest.fixture(autouse=True)
def autograd_on():
    """Every test starts with autograd on: a benchmark's setup() switches it off for the whole process."""
    torch.set_grad_enabled(True)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own feature cache."""
    monkeypatch.setenv("LDLM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory, tokenizer) -> str:
    """A small random-weight TextVAE (latent stats measured on the built-in corpus) saved with the word tokenizer."""
    from ldlm.align.teacher import pad_id_of
    from ldlm.data.token_blocks import to_blocks, tokenize
    from ldlm.training.vae_trainer import measure_latent_stats
    from ldlm.vae.model import TextVAE

    torch.manual_seed(0)
    vae = TextVAE(vocab_size=len(tokenizer), block_length=8, latents_per_block=2, latent_channels=8, d_model=32,
                  d_embed=16, heads=2, encoder_layers=1, decoder_layers=1, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=pad_id_of(tokenizer))
    vae.set_token_table(torch.randn(len(tokenizer), 32))
    measure_latent_stats(vae, to_blocks(tokenize(restaurant_sentences(300), tokenizer), 8, pad_id_of(tokenizer)))
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder / "vae")
    tokenizer.save_pretrained(folder / "tokenizer")
    return str(folder)


@pytest.fixture
def make_pipeline(vae_dir):
    """Builds a pipeline on the tiny VAE whose DiT has random (not zero-initialised) weights, so every path
    changes the output: ``make_pipeline(objective="vp", scheduler="dpm++")``."""
    from ldlm.dit.model import LatentDiT
    from ldlm.dit.objective import make_scheduler
    from ldlm.pipelines.loading import load_vae
    from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline

    def build(objective: str = "vp", scheduler: str = "dpm++"):
        vae, tokenizer = load_vae(vae_dir)
        torch.manual_seed(0)
        dit = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=6, objective=objective)
        for p in dit.parameters():
            torch.nn.init.normal_(p, std=0.05)
        pipe = LatentDiffusionLMPipeline(vae, dit, make_scheduler(scheduler), tokenizer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return build


@pytest.fixture
def load_benchmark(monkeypatch):
    """Imports a script of ``benchmarks/`` by name: ``load_benchmark("speed")`` (with ``benchmarks/`` on the path,
    as when it runs, for ``bench_common``)."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))

    def load(name: str):
        path = folder / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
