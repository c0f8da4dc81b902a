import csv
import json

import pytest
import torch

from ldlm.evaluation.reconstruction import reconstruction_metrics
from ldlm.training.config import VAEExperiment, load_config
from ldlm.training.vae_trainer import train_vae
from ldlm.vae.model import ENCODER_PARTS, TextVAE


def _config(teacher_dir: str, out, *extra: str):
    return load_config(VAEExperiment, None, [
        "data.train=[{path: 'builtin:restaurants:1200'}]", "data.block_length=8", "data.val_fraction=0.1",
        f"teacher.name={teacher_dir}", "teacher.layers=[2]", "teacher.context=16", "teacher.chunk=32",
        "model.latents_per_block=2", "model.latent_channels=16", "model.d_model=64", "model.d_embed=16",
        "model.heads=4", "model.encoder_layers=2", "model.decoder_layers=2", "align.weight=1.0",
        "align.head_hidden=64", "loss.negatives=8", "train.max_steps=300", "train.batch_size=32", "train.lr=3e-3",
        "train.warmup_steps=20", "train.val_every=50", "train.checkpoint_every=100", "train.progress_bar=false",
        "train.accelerator=cpu", f"train.output_dir={out}", *extra,
    ])


def _val_log(out) -> list[dict]:
    rows = list(csv.DictReader(open(out / "logs" / "metrics.csv")))
    return [r for r in rows if r.get("val/acc")]


@pytest.mark.parametrize("loss", ["repa", "vavae"])
def test_short_training_reconstructs_and_aligns(teacher_dirs, tokenizer, tmp_path, loss):
    out = tmp_path / "run"
    train_vae(_config(teacher_dirs["qwen2"], out, f"align.loss={loss}"))
    val = _val_log(out)
    assert float(val[-1]["val/acc"]) >= 0.95
    assert float(val[-1]["val/align_cos"]) > float(val[0]["val/align_cos"]) + 0.05
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 300
    vae = TextVAE.from_pretrained(out / "vae")
    assert vae.latent_std.min() > 0 and not torch.equal(vae.latent_std, torch.ones_like(vae.latent_std))
    # held-out sentences from another seed of the generator, through the text-level helpers
    from ldlm.data.corpus import restaurant_sentences
    texts = restaurant_sentences(40, seed=99)
    latents = vae.encode_text(texts, tokenizer)
    decoded = [vae.decode_text(z[None], tokenizer)[0] for z in latents]
    words = sum(a == b for t, d in zip(texts, decoded) for a, b in zip(t.split(), d.split()))
    assert words / sum(len(t.split()) for t in texts) >= 0.9


def test_resume_continues_from_last_checkpoint(teacher_dirs, tmp_path):
    out = tmp_path / "run"
    train_vae(_config(teacher_dirs["mistral"], out, "train.max_steps=100", "train.checkpoint_every=50"))
    last = out / "checkpoints" / "last.safetensors"
    assert last.is_file()
    train_vae(_config(teacher_dirs["mistral"], out, "train.max_steps=150", "train.checkpoint_every=50"))
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 150
    steps = [int(r["step"]) for r in csv.DictReader(open(out / "logs" / "metrics.csv")) if r.get("train/loss")]
    assert max(steps) >= 140 and min(s for s in steps if s > 100) < 130  # steps 100..150 logged after resume


def test_a_run_copied_to_a_new_folder_resumes_there_and_keeps_writing_last(teacher_dirs, tmp_path):
    import shutil

    from ldlm.training.checkpoint_io import load_tree

    first, moved = tmp_path / "first", tmp_path / "moved"
    train_vae(_config(teacher_dirs["mistral"], first, "align.weight=0", "train.max_steps=40",
                      "train.checkpoint_every=20"))
    shutil.copytree(first, moved)
    train_vae(_config(teacher_dirs["mistral"], moved, "align.weight=0", "train.max_steps=60",
                      "train.checkpoint_every=20"))
    files = sorted(p.name for p in (moved / "checkpoints").iterdir())
    assert not [f for f in files if f.startswith("last-")], files
    assert load_tree(moved / "checkpoints" / "last.safetensors")["global_step"] == 60
    assert load_tree(first / "checkpoints" / "last.safetensors")["global_step"] == 40


def test_a_fresh_run_sets_the_earlier_last_checkpoint_aside(teacher_dirs, tmp_path):
    from ldlm.training.checkpoint_io import load_tree

    out = tmp_path / "run"
    train_vae(_config(teacher_dirs["mistral"], out, "align.weight=0", "train.max_steps=30"))
    train_vae(_config(teacher_dirs["mistral"], out, "align.weight=0", "train.max_steps=20", "train.resume=false"))
    assert load_tree(out / "checkpoints" / "last.1.safetensors")["global_step"] == 30
    assert load_tree(out / "checkpoints" / "last.safetensors")["global_step"] == 20


def test_alignment_off_needs_no_features(teacher_dirs, tmp_path):
    out = tmp_path / "run"
    train_vae(_config(teacher_dirs["qwen3"], out, "align.weight=0", "train.max_steps=60"))
    assert "val/align_cos" not in open(out / "logs" / "metrics.csv").readline()
    assert not (tmp_path / "cache" / "features").exists()


def test_noise_metrics_degrade_gracefully(teacher_dirs, tokenizer, tmp_path):
    from ldlm.data.token_blocks import to_blocks, tokenize
    from ldlm.data.corpus import restaurant_sentences
    vae = TextVAE(vocab_size=len(tokenizer), block_length=8, latents_per_block=2, latent_channels=4, d_model=32,
                  d_embed=8, heads=2, encoder_layers=1, decoder_layers=1)
    blocks = to_blocks(tokenize(restaurant_sentences(10), tokenizer), 8, tokenizer.pad_token_id)
    seen = torch.zeros(len(tokenizer), dtype=torch.bool)
    seen[: len(tokenizer) // 2] = True
    clean = reconstruction_metrics(vae, blocks, seen)
    assert set(clean) >= {"acc_all", "acc_seen", "acc_unseen", "exact_blocks"}
    assert clean["tokens_seen"] + clean["tokens_unseen"] == clean["tokens_all"]


def test_decoder_fine_tuning_keeps_the_encoder_and_its_statistics(teacher_dirs, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train_vae(_config(teacher_dirs["qwen3"], first, "align.weight=0", "train.max_steps=40"))
    train_vae(_config(teacher_dirs["qwen3"], second, "align.weight=0", "train.max_steps=30", f"init={first}",
                      "model.freeze_encoder=true", "loss.latent_noise=0.8"))
    before = TextVAE.from_pretrained(first / "vae").state_dict()
    after = TextVAE.from_pretrained(second / "vae").state_dict()
    encoder = [k for k in before if k.split(".")[0] in ("embed_in", "encoder", "enc_norm", "to_moments", "enc_pos")]
    decoder = [k for k in before if k.split(".")[0] in ("from_latent", "decoder", "dec_norm", "embed_out")]
    assert encoder and decoder
    assert all(torch.equal(before[k], after[k]) for k in encoder + ["latent_mean", "latent_std", "token_table"])
    assert not all(torch.equal(before[k], after[k]) for k in decoder)


def test_a_decoder_without_context_is_fine_tuned_into_one_that_reads_its_neighbours(teacher_dirs, tokenizer, tmp_path):
    from ldlm.align.teacher import pad_id_of
    from ldlm.data.corpus import restaurant_sentences
    from ldlm.data.token_blocks import to_blocks, tokenize
    from ldlm.evaluation.reconstruction import reconstruction_metrics

    first, second = tmp_path / "first", tmp_path / "second"
    train_vae(_config(teacher_dirs["qwen3"], first, "align.weight=0", "train.max_steps=60"))
    train_vae(_config(teacher_dirs["qwen3"], second, "align.weight=0", "train.max_steps=60", f"init={first}",
                      "model.freeze_encoder=true", "model.context_blocks=1"))
    before, after = TextVAE.from_pretrained(first / "vae"), TextVAE.from_pretrained(second / "vae")
    assert after.config.context_blocks == 1
    kept = before.state_dict()
    assert all(torch.equal(kept[k], after.state_dict()[k]) for k in kept if k.split(".")[0] in ENCODER_PARTS)
    blocks = to_blocks(tokenize(restaurant_sentences(20, seed=5), tokenizer), 8, pad_id_of(tokenizer))
    metrics = reconstruction_metrics(after.eval(), blocks)
    assert metrics["acc_all"] > reconstruction_metrics(before.eval(), blocks)["acc_all"] - 0.05
    z = after.encode(blocks.input_ids, blocks.attention_mask)
    alone = after.decode_ids(z)
    read = after.decode_ids(z, z[blocks.neighbour_index(1).clamp(min=0)], blocks.neighbour_index(1) >= 0)
    assert not torch.equal(alone, read)  # the context weights are live


def test_an_init_that_already_reads_a_different_context_is_refused(teacher_dirs, tmp_path):
    from ldlm.errors import LdlmError

    first = tmp_path / "first"
    train_vae(_config(teacher_dirs["qwen3"], first, "align.weight=0", "train.max_steps=5", "model.context_blocks=1"))
    with pytest.raises(LdlmError, match="context_blocks=1"):
        train_vae(_config(teacher_dirs["qwen3"], tmp_path / "run", "align.weight=0", f"init={first}",
                          "model.context_blocks=2"))


@pytest.mark.parametrize("extra,message", [
    (["model.freeze_encoder=true"], "needs init"),
    (["init=/nonexistent/vae"], "holds no exported VAE"),
])
def test_bad_warm_start_is_refused_before_training(teacher_dirs, tmp_path, extra, message):
    from ldlm.errors import LdlmError

    with pytest.raises(LdlmError, match=message):
        train_vae(_config(teacher_dirs["qwen3"], tmp_path / "run", "align.weight=0", *extra))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_training_step_hands_each_block_the_latents_of_its_own_neighbours(tmp_path):
    from omegaconf import OmegaConf

    from ldlm.data.token_blocks import to_blocks
    from ldlm.training.vae_trainer import TextVAEModule

    torch.manual_seed(0)
    vae = TextVAE(vocab_size=60, block_length=8, latents_per_block=2, latent_channels=6, d_model=32, d_embed=16,
                  heads=2, encoder_layers=1, decoder_layers=1, eos_token_id=1, pad_token_id=0, context_blocks=1)
    cfg = OmegaConf.to_container(_config("unused", tmp_path / "run", "align.weight=0", "model.context_blocks=1"))
    module = TextVAEModule(vae.eval(), cfg, torch.arange(60), None)
    blocks = to_blocks([list(range(10, 30)) + [1]], 8, 0)  # one document of 3 blocks
    blocks.add_context(1, eos_id=1, pad_id=0)
    batch = {k: torch.stack([blocks[i][k] for i in range(3)]) for k in blocks[0]}
    mean, _, z, neighbours, present = module._latents(batch, train=False)
    own = vae.encode(blocks.input_ids, blocks.attention_mask)
    end = vae.encode(torch.tensor([[1] + [0] * 7]), torch.tensor([[1] + [0] * 7]))[0]
    torch.testing.assert_close(z, own)
    torch.testing.assert_close(mean, own)
    assert present.tolist() == [[False, True], [True, True], [True, True]]
    torch.testing.assert_close(neighbours[1:, 0], own[:2])  # the block before
    torch.testing.assert_close(neighbours[:2, 1], own[1:])  # the block after
    torch.testing.assert_close(neighbours[2, 1], end)  # after the last block: an end-of-text block


def test_a_decoder_is_deepened_from_init_and_never_cut(teacher_dirs, tmp_path):
    from ldlm.errors import LdlmError

    first, second = tmp_path / "first", tmp_path / "second"
    train_vae(_config(teacher_dirs["qwen3"], first, "align.weight=0", "train.max_steps=5"))
    train_vae(_config(teacher_dirs["qwen3"], second, "align.weight=0", "train.max_steps=5", f"init={first}",
                      "model.freeze_encoder=true", "model.decoder_layers=3"))
    before, after = TextVAE.from_pretrained(first / "vae"), TextVAE.from_pretrained(second / "vae")
    assert (before.config.decoder_layers, after.config.decoder_layers, len(after.decoder.layers)) == (2, 3, 3)
    kept = before.state_dict()
    assert all(torch.equal(kept[k], after.state_dict()[k]) for k in kept if k.split(".")[0] in ENCODER_PARTS)
    with pytest.raises(LdlmError, match="decoder_layers=3, the config 2"):
        train_vae(_config(teacher_dirs["qwen3"], tmp_path / "cut", "align.weight=0", f"init={second}"))
    assert not (tmp_path / "cut" / "checkpoints").exists()
