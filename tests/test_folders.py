"""Exported folders load wherever they are accepted: `ldlm eval-vae` on every VAE folder layout, pipelines through
the supported calls."""
import shutil

import pytest

from ldlm.cli import main
from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline
from ldlm.pipelines.loading import load_pipeline

CORPUS = "builtin:restaurants:20"


def _eval_vae(folder, capsys) -> tuple[int, str, str]:
    code = main(["eval-vae", "--vae", str(folder), "--corpus", CORPUS, "--noise", "0"])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_vae_reads_pipelines_and_bare_folders(make_pipeline, vae_dir, tmp_path, capsys):
    make_pipeline().save_pretrained(tmp_path / "pipe")
    shutil.copytree(vae_dir, tmp_path / "vae-tok", dirs_exist_ok=True)  # bare vae/ + tokenizer/
    shutil.copytree(f"{vae_dir}/vae", tmp_path / "vae-inside")  # a VAE folder holding its tokenizer/
    shutil.copytree(f"{vae_dir}/tokenizer", tmp_path / "vae-inside" / "tokenizer")
    for folder in ("pipe", "vae-tok", "vae-inside"):
        code, out, err = _eval_vae(tmp_path / folder, capsys)
        assert code == 0 and out.startswith("σ=0.0  acc_all=") and "acc_seen" not in out, (folder, err)


def test_eval_vae_splits_seen_types_for_a_training_output(vae_dir, tmp_path, capsys):
    shutil.copytree(vae_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "config.yaml").write_text("data:\n  train:\n  - path: builtin:restaurants:50\n")
    code, out, err = _eval_vae(tmp_path, capsys)
    assert code == 0 and "acc_seen=" in out, err


def test_eval_vae_refuses_bad_folders_in_one_line(vae_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    shutil.copytree(f"{vae_dir}/vae", tmp_path / "no-tokenizer" / "vae")
    shutil.copytree(vae_dir, tmp_path / "bad-config")
    (tmp_path / "bad-config" / "vae" / "config.json").write_text("{not json")
    shutil.copytree(vae_dir, tmp_path / "bad-tokenizer")
    for file in (tmp_path / "bad-tokenizer" / "tokenizer").iterdir():
        file.unlink()
    for folder in ("no-tokenizer", "bad-config", "bad-tokenizer"):  # as training outputs
        (tmp_path / folder / "config.yaml").write_text("data:\n  train:\n  - path: builtin:restaurants:50\n")
    for folder in ("missing", "empty", "no-tokenizer", "bad-config", "bad-tokenizer"):
        code, out, err = _eval_vae(tmp_path / folder, capsys)
        assert code == 2 and err.startswith("ldlm: error: ") and len(err.strip().splitlines()) == 1, (folder, err)


def test_pipeline_loads_through_its_class_not_the_generic_entry_point(make_pipeline, tmp_path):
    from diffusers import DiffusionPipeline

    make_pipeline().save_pretrained(tmp_path)
    assert type(LatentDiffusionLMPipeline.from_pretrained(tmp_path)) is LatentDiffusionLMPipeline
    assert type(load_pipeline(tmp_path)) is LatentDiffusionLMPipeline
    # diffusers resolves model_index.json's class among its own pipelines only (the README says which call to use)
    with pytest.raises(AttributeError, match="LatentDiffusionLMPipeline"):
        DiffusionPipeline.from_pretrained(tmp_path)
