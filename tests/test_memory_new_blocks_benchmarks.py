"""The memory and new_blocks benchmarks measure the systems they name: each memory child generates the requested
document, the untrained stand-in is the baseline's size over the VAE's token table, and the new_blocks sweep runs
LongGeneration at the setting it names."""
import argparse

import torch

from ldlm.baselines.causal_lm import CausalLM, load_baseline


def _tiny_ar(pipe) -> CausalLM:
    cfg = pipe.vae.config
    torch.manual_seed(0)
    model = CausalLM.tiny(vocab_size=cfg.vocab_size, d_embed=cfg.d_embed, eos_token_id=cfg.eos_token_id).eval()
    model.set_token_table(pipe.vae.token_table)
    return model


def test_memory_children_generate_the_requested_document(make_pipeline, tmp_path, load_benchmark):
    memory = load_benchmark("memory")
    pipe = make_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    _tiny_ar(pipe).save_pretrained(tmp_path / "ar" / "model")
    pipe.tokenizer.save_pretrained(tmp_path / "ar" / "tokenizer")
    common = dict(model=str(tmp_path / "pipe"), steps=2, threads=1, device="cpu", seed=0)
    for trained in (str(tmp_path / "ar"), None):  # None: the untrained stand-in, built from the VAE's sizes
        ar = memory.child(argparse.Namespace(system="ar", ar=trained, **common), 40)
        assert ar["tokens"] == 40 and ar["peak_mb"] >= ar["loaded_mb"] > 0
    ldlm = memory.child(argparse.Namespace(system="ldlm", ar=None, **common), 40)
    assert ldlm["tokens"] == 40 and ldlm["peak_mb"] >= ldlm["loaded_mb"] > 0


def test_untrained_baseline_is_the_small_preset_over_the_vae_table(make_pipeline):
    vae = make_pipeline().vae
    model, note = load_baseline(None, vae)
    assert "untrained" in note and not model.training
    assert model.config.hidden_size == CausalLM.small(vocab_size=vae.config.vocab_size).config.hidden_size
    assert torch.equal(model.token_table, vae.token_table.float())


def test_new_blocks_documents_and_speed_at_each_setting(make_pipeline, load_benchmark):
    new_blocks = load_benchmark("new_blocks")
    pipe = make_pipeline()
    args = argparse.Namespace(tokens=24, samples=3, steps=2, repeats=1, device="cpu", seed=0)
    window = pipe.transformer.config.max_blocks
    one, none = new_blocks.documents(pipe, 1, args), new_blocks.documents(pipe, window, args)
    assert len(one) == len(none) == 3 and all(one) and one != none
    assert new_blocks.tokens_per_s(pipe, 2, args) > 0
