import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from ldlm.baselines.causal_lm import CausalLM, generate_texts, load_ar
from ldlm.cli import main
from ldlm.data.token_windows import TokenDataModule, TokenWindows
from ldlm.errors import LdlmError
from ldlm.pipelines.loading import load_vae
from ldlm.training.ar_trainer import ARModule, build_model, train_ar
from ldlm.training.config import ARExperiment
from ldlm.training.config import load_config
from ldlm.training.checkpoint_io import load_tree

V, EOS = 50, 1


def _model(seed: int = 0) -> CausalLM:
    """A tiny model with every weight perturbed (norms and biases too, so every path changes the output)."""
    torch.manual_seed(seed)
    model = CausalLM.tiny(vocab_size=V, d_embed=16, eos_token_id=EOS).eval()
    model.set_token_table(torch.randn(V, 16) / 4)
    for p in model.parameters():
        p.data += 0.1 * torch.randn_like(p)
    return model


def test_shapes_and_parameter_counts():
    model = _model()
    ids = torch.randint(V, (2, 7))
    assert model(ids).shape == (2, 7, V) and model.hidden_states(ids).shape == (2, 7, 16)
    assert model.generate(ids, max_new_tokens=5, stop_at_eos=False).shape == (2, 5)
    assert model.generate(batch_size=3, max_new_tokens=4, stop_at_eos=False).shape == (3, 4)
    small = CausalLM.small(vocab_size=49152)
    assert sum(p.numel() for p in small.parameters()) == 12_112_736  # VAE decoder + DiT small: 12,199,104
    assert not any(name == "token_table" for name, _ in small.named_parameters())


@torch.no_grad()
def test_kv_cache_logits_equal_the_full_forward():
    model = _model()
    ids = torch.randint(V, (3, 12))
    full = model(ids)
    cache = model.new_cache(3, 12)
    steps = [model(ids[:, :5], cache)]  # the prompt (is_causal), then a chunk after cached positions, then 1 by 1
    steps.append(model(ids[:, 5:8], cache))
    steps += [model(ids[:, i : i + 1], cache) for i in range(8, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="full"):
        model(ids[:, :1], cache)


def test_greedy_generation_is_the_same_with_and_without_cache():
    model = _model()
    prompt = torch.randint(2, V, (2, 4))
    for ids in (prompt, None):
        cached = model.generate(ids, batch_size=2, max_new_tokens=20, temperature=0, stop_at_eos=False)
        plain = model.generate(ids, batch_size=2, max_new_tokens=20, temperature=0, stop_at_eos=False,
                               use_cache=False)
        assert torch.equal(cached, plain) and cached.unique().numel() > 1
    nucleus = model.generate(prompt, max_new_tokens=20, top_p=1e-6, stop_at_eos=False,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(nucleus, model.generate(prompt, max_new_tokens=20, temperature=0, stop_at_eos=False))


def test_generation_stops_at_eos():
    model = _model()
    with torch.no_grad():
        model.token_bias[EOS] += 2.5  # EOS now and then
    out = model.generate(batch_size=8, max_new_tokens=60, generator=torch.Generator().manual_seed(0))
    assert out.shape[1] < 60
    for row in out.tolist():
        assert EOS in row and set(row[row.index(EOS):]) == {EOS}  # EOS from the first one on
    assert (out[:, -1] == EOS).all() and (out[:, -2] != EOS).any()  # it stopped as the last row ended
    assert model.generate(batch_size=8, max_new_tokens=60, stop_at_eos=False).shape == (8, 60)
    with torch.no_grad():
        model.token_bias[EOS] += 1e4
    assert model.generate(batch_size=2, max_new_tokens=60).tolist() == [[EOS], [EOS]]


def test_windows_start_with_eos_and_crop_long_documents():
    docs = [[5, 6, EOS], list(range(10, 30)) + [EOS]]
    short, long = TokenWindows(docs, EOS, 8, crop=False)[0], TokenWindows(docs, EOS, 8, crop=False)[1]
    assert short["input_ids"].tolist() == [EOS, 5, 6, EOS, EOS, EOS, EOS, EOS]
    assert short["targets"].tolist() == [5, 6, EOS, -100, -100, -100, -100, -100]
    assert long["input_ids"].tolist() == [EOS, *range(10, 17)] and long["targets"].tolist() == list(range(10, 18))
    crops = {TokenWindows(docs, EOS, 8)[1]["input_ids"][0].item() for _ in range(50)}
    assert len(crops) > 3  # random windows of the long document


@torch.no_grad()
def test_sliding_cache_equals_banded_attention_and_stays_flat():
    model = _model()
    ids = torch.randint(V, (2, 15))
    full = model.hidden_states(ids, window=4)
    for prompt in (2, 6):  # a first chunk shorter and longer than the window, then one position at a time
        cache = model.new_cache(2, 4, sliding=True)
        steps = [model.hidden_states(ids[:, :prompt], cache)]
        steps += [model.hidden_states(ids[:, i : i + 1], cache) for i in range(prompt, 15)]
        assert cache.length == 15 and cache.keys[0].shape[2] == 4
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=0)
    assert not torch.allclose(full[:, 4:], model.hidden_states(ids)[:, 4:], atol=1e-3)
    torch.testing.assert_close(full[:, :4], model.hidden_states(ids)[:, :4], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one position at a time"):
        model.hidden_states(ids[:, :2], cache)
    with pytest.raises(ValueError, match="needs a sliding cache"):
        model.hidden_states(ids, model.new_cache(2, 15), window=4)
    prompt = torch.randint(2, V, (2, 3))
    cached = model.generate(prompt, max_new_tokens=12, temperature=0, stop_at_eos=False, window=5)
    plain = model.generate(prompt, max_new_tokens=12, temperature=0, stop_at_eos=False, use_cache=False, window=5)
    assert torch.equal(cached, plain)
    assert torch.equal(model.generate(prompt, max_new_tokens=12, temperature=0, stop_at_eos=False, window=16),
                       model.generate(prompt, max_new_tokens=12, temperature=0, stop_at_eos=False))


def _overrides(vae_dir: str, out, *extra: str) -> list[str]:
    return [
        f"vae={vae_dir}", "data.train=[{path: 'builtin:restaurants:400'}]", "data.max_tokens=24",
        "data.val_fraction=0.1", "model.preset=tiny", "sample.every=30", "sample.num_samples=2",
        "sample.max_new_tokens=16", "train.max_steps=60", "train.batch_size=32", "train.lr=3e-3",
        "train.warmup_steps=5", "train.val_every=30", "train.checkpoint_every=30", "train.progress_bar=false",
        "train.accelerator=cpu", f"train.output_dir={out}", *extra,
    ]


@torch.no_grad()
def _val_loss(model: CausalLM, cfg, tokenizer) -> float:
    data = TokenDataModule(cfg.data, tokenizer, 32)
    data.setup()
    module = ARModule(model, {"train": {}})
    losses = [module._common_step(batch) for batch in data.val_dataloader()]
    return float(sum(loss * count for loss, count in losses) / sum(count for _, count in losses))


@torch.no_grad()
def test_loss_is_the_same_with_trailing_padding_cut():
    model = _model()
    windows = TokenWindows([[5, 6, 7], [8, 9, 10, 11, 12], [13]], EOS, max_tokens=12)
    batch = {k: torch.stack([windows[i][k] for i in range(3)]) for k in ("input_ids", "targets")}
    loss, count = ARModule(model, {"train": {}})._common_step(batch)
    keep = batch["targets"] != -100
    full = torch.nn.functional.cross_entropy(model.logits(model.hidden_states(batch["input_ids"])[keep]),
                                             batch["targets"][keep])
    assert count == 3 + 5 + 1 and torch.allclose(loss, full, atol=1e-6)


def test_short_training_lowers_the_loss_and_exports_a_loadable_model(vae_dir, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(ARExperiment, None, _overrides(vae_dir, out))
    assert train_ar(cfg) == out
    vae, tokenizer = load_vae(vae_dir)
    model, loaded_tokenizer = load_ar(out)
    assert torch.equal(model.token_table, vae.token_table) and loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    torch.manual_seed(0)
    fresh = build_model(cfg, vae.token_table, tokenizer.eos_token_id)
    assert _val_loss(model, cfg, tokenizer) < 0.5 * _val_loss(fresh, cfg, tokenizer)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [30, 60] and len(samples[0]["texts"]) == 2
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 60
    assert (out / "checkpoints" / "last.safetensors").is_file()
    assert (out / "model" / "diffusion_pytorch_model.safetensors").is_file()
    texts = generate_texts(model, tokenizer, ["The Eagle is a", "Zizzi"], 2, max_new_tokens=24, temperature=0)
    assert len(texts) == 4 and texts[0].startswith("The Eagle is a") and texts[0] == texts[1]
    assert len(texts[0].split()) > 4
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, out, "train.max_steps=90")))  # resumes at 60
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [30, 60, 90]
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 90


def _logged_steps(out: Path, column: str) -> list[int]:
    with open(out / "logs" / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get(column)]


def test_a_resumed_run_keeps_its_history_and_cleans_up_after_kills(vae_dir, tmp_path, recwarn):
    out = tmp_path / "run"
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, out, "train.log_every=10")))
    assert _logged_steps(out, "val/loss") == [29, 59]
    # what kills leave: a temporary file of an interrupted write and an older periodic checkpoint
    ckpt = out / "checkpoints"
    (ckpt / ".last.safetensors.tmp-0a1b2c3d").touch()
    shutil.copy(ckpt / "last.safetensors", ckpt / "epoch=1-step=30.safetensors")
    recwarn.clear()
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, out, "train.log_every=10",
                                                        "train.max_steps=90")))
    notices = ("exists and is not empty", "ended before the epoch ended", "will be deleted")
    assert not [w for w in recwarn if any(n in str(w.message) for n in notices)]  # a resume is expected here
    val = _logged_steps(out, "val/loss")
    assert val[:2] == [29, 59] and len(val) == 3  # Lightning logs a resumed run's validation one step later
    assert _logged_steps(out, "train/loss") == [9, 19, 29, 39, 49, 59, 69, 79, 89]
    files = sorted(p.name for p in ckpt.iterdir())
    assert len(files) == 2 and files[0].endswith("-step=90.safetensors") and files[1] == "last.safetensors"
    (out / "metrics.json").unlink()  # killed before the export: the resumed run trains no step
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, out, "train.max_steps=90")))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 90 and "val/loss" in metrics
    assert _logged_steps(out, "val/loss") == val


def test_early_stopping_exports_the_best_validated_weights(vae_dir, tmp_path):
    out = tmp_path / "run"  # steps this small leave the validation loss unchanged (the weights move by ~1e-30 at most)
    cfg = load_config(ARExperiment, None, _overrides(vae_dir, out, "train.early_stop=2", "train.val_every=5",
                                                     "train.lr=1e-30", "train.warmup_steps=0", "sample.every=0"))
    train_ar(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 15  # validations at 5 (the best), 10 and 15, then stopped
    best = load_tree(out / "checkpoints" / "best.safetensors")
    model, _ = load_ar(out)
    saved = {k.removeprefix("model."): v for k, v in best["state_dict"].items()}
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    last = load_tree(out / "checkpoints" / "last.safetensors")
    assert best["global_step"] < last["global_step"]
    assert any(not torch.equal(v, last["state_dict"][k]) for k, v in best["state_dict"].items())  # tells them apart
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, out, "train.early_stop=4", "train.val_every=5",
                                                        "train.lr=1e-30", "train.warmup_steps=0", "sample.every=0",
                                                        "train.max_steps=100")))  # resumed, with more patience
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 25  # 4 validations after the best
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, out, "train.resume=false", "train.max_steps=5",
                                                        "sample.every=0")))  # a fresh run in the same folder
    assert (out / "logs" / "metrics.1.csv").is_file() and (out / "checkpoints" / "best.1.safetensors").is_file()
    assert not (out / "checkpoints" / "best.safetensors").exists()  # no early stopping this time
    assert not (out / "logs" / "metrics.csv").exists()  # 5 steps log nothing: the earlier rows are in metrics.1.csv


def test_a_run_moved_to_a_new_folder_keeps_its_best_score(vae_dir, tmp_path, recwarn):
    first, moved = tmp_path / "first", tmp_path / "moved"  # as above, the validation loss never changes
    common = ("train.early_stop=10", "train.val_every=5", "train.lr=1e-30", "train.warmup_steps=0", "sample.every=0")
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, first, *common, "train.max_steps=10")))
    shutil.copytree(first, moved)
    recwarn.clear()
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, moved, *common, "train.max_steps=20")))
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    assert load_tree(moved / "checkpoints" / "best.safetensors")["global_step"] == 5  # a forgotten score: 15
    assert load_tree(moved / "checkpoints" / "last.safetensors")["global_step"] == 20
    assert load_tree(first / "checkpoints" / "last.safetensors")["global_step"] == 10


def test_run_checkpoints_resume_the_state_that_plain_model_checkpoints_saved(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ldlm.training.runner import RunCheckpoint

    for kwargs in ({"save_last": True, "every_n_train_steps": 30},
                   {"filename": "best", "monitor": "val/loss", "mode": "min", "save_top_k": 1}):
        ours, plain = RunCheckpoint(dirpath=tmp_path, **kwargs), ModelCheckpoint(dirpath=tmp_path, **kwargs)
        assert ours.state_key == plain.state_key


def test_a_fresh_run_sets_every_earlier_checkpoint_aside(vae_dir, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints"
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, out, "sample.every=0")))
    periodic = next(ckpt.glob("epoch=*-step=60.safetensors"))  # the epoch number depends on the data's size
    train_ar(load_config(ARExperiment, None, _overrides(vae_dir, out, "sample.every=0", "train.resume=false",
                                                        "train.max_steps=30")))
    aside = periodic.with_suffix(".1.safetensors")
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        [next(ckpt.glob("epoch=*-step=30.safetensors")).name, aside.name, "last.1.safetensors", "last.safetensors"])
    assert load_tree(aside)["global_step"] == 60 and load_tree(ckpt / "last.1.safetensors")["global_step"] == 60


def test_warm_start_begins_from_the_given_baseline(vae_dir, tmp_path, capsys):
    first = train_ar(load_config(ARExperiment, None, _overrides(vae_dir, tmp_path / "a", "train.max_steps=3",
                                                                "sample.every=0")))
    second = train_ar(load_config(ARExperiment, None, _overrides(
        vae_dir, tmp_path / "b", f"init={first}", "train.max_steps=1", "train.lr=1e-12", "sample.every=0")))
    start, end = load_ar(first)[0].state_dict(), load_ar(second)[0].state_dict()
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    assert main(["train-ar", "--config", str(config), *_overrides(vae_dir, tmp_path / "c"), f"init={first}",
                 "model.preset=small"]) == 2
    assert "differs from the configured one in hidden_size" in capsys.readouterr().err


def test_load_ar_refuses_other_folders(vae_dir, tmp_path):
    for folder in (tmp_path, vae_dir):
        with pytest.raises(LdlmError, match="no exported autoregressive model"):
            load_ar(folder)
    shutil.copytree(vae_dir, tmp_path / "vae-as-ar")
    (tmp_path / "vae-as-ar" / "vae").rename(tmp_path / "vae-as-ar" / "model")
    with pytest.raises(LdlmError, match="holds a TextVAE, not an autoregressive CausalLM"):
        load_ar(tmp_path / "vae-as-ar")


@pytest.mark.parametrize("override,message", [
    ("model.preset=huge", "model.preset"),
    ("model.num_heads=3", "config error in model"),
    ("data.max_tokens=0", "data.max_tokens"),
    ("train.max_steps=many", "train.max_steps"),
])
def test_config_errors(vae_dir, tmp_path, capsys, override, message):
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    assert main(["train-ar", "--config", str(config), *_overrides(vae_dir, tmp_path / "o"), override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_shipped_config_with_a_missing_vae_is_one_line(tmp_path, capsys):
    config = Path(__file__).parents[1] / "configs" / "e2e-ar.yaml"
    assert main(["train-ar", "--config", str(config), f"vae={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "holds no exported VAE" in err and len(err.strip().splitlines()) == 1
