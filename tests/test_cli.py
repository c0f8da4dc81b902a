import subprocess
import sys
from pathlib import Path

import pytest

from ldlm.cli import main

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def _run(*args: str):
    return subprocess.run([sys.executable, "-m", "ldlm.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["train.max_stepz=3"], "config error at 'train.max_stepz'"),
    (["train.max_steps=abc"], "config error at 'train.max_steps'"),
    (["model.d_model"], "not of the form key=value"),
])
def test_config_errors_are_one_line(tmp_path, args, message):
    result = _run("train-vae", "--config", TINY, *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_files(tmp_path, capsys):
    assert main(["train-vae", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["eval-vae", "--vae", str(tmp_path), "--corpus", "x.jsonl"]) == 2
    assert "no exported VAE" in capsys.readouterr().err
    assert main(["teacher", "prepare", "gpt5"]) == 2
    assert "unknown teacher" in capsys.readouterr().err


def test_bad_corpus_path(tmp_path, teacher_dirs, capsys):
    code = main(["train-vae", "--config", TINY, f"teacher.name={teacher_dirs['qwen2']}",
                 "teacher.layers=[1]", f"data.train=[{{path: {tmp_path}/missing.jsonl}}]",
                 f"train.output_dir={tmp_path}/out"])
    assert code == 2 and "corpus file not found" in capsys.readouterr().err
