"""Bad input, on the command line and through the Python API: one clear line and exit status 2 (or a ValueError),
before anything heavy loads where the input alone shows the mistake, and nothing on disk lost."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ldlm.cli import main
from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline
from ldlm.pipelines.loading import load_pipeline
from ldlm.errors import LdlmError

LONG = "Aromi is a coffee shop in the city centre near the river, with a high customer rating and cheap food."
TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


@pytest.fixture
def model(make_pipeline, tmp_path) -> str:
    make_pipeline().save_pretrained(tmp_path / "pipe")
    return str(tmp_path / "pipe")


def _fails(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args,message", [
    (["--steps", "1000000000"], "num_inference_steps must be an integer in 1..1000"),
    (["--steps", "5000"], "num_inference_steps must be an integer in 1..1000"),
    (["--num-samples", "0"], "--num-samples must be a positive integer"),
    (["--temperature", "0"], "--temperature must lie in (0, 2]"),
    (["--device", "cpux"], "unknown device 'cpux'"),
    (["--prompt", ""], "prompt 1 must be a non-empty string"),
    (["--prompt", "bad \udcff byte"], "prompt 1 is not valid UTF-8"),
    (["--prompt", "a", "--guidance-scale", "nan"], "--guidance-scale must be a finite"),
    (["--prompt", "a", "--guidance-scale", "inf"], "--guidance-scale must be a finite"),
    (["--guidance-scale", "3"], "needs --prompt"),
    (["--prompt", "Aromi is", "--guidance-scale", "2"], "no prompt fills one block"),
    (["--prompt", LONG, "--guidance-scale", "1e30"], "the sample diverged"),
])
def test_generate_refuses(model, capsys, args, message):
    _fails(["generate", "--model", model, "--steps", "3", *args], message, capsys)


def test_infill_needs_a_gap_and_text(model, capsys):
    _fails(["infill", "First.", "Last.", "--model", model], "at least one gap", capsys)
    _fails(["infill", "\udcff", "_", "--model", model], "segment 1 is not valid UTF-8", capsys)


def test_longgen_never_overwrites_without_being_told(model, tmp_path, capsys):
    out = tmp_path / "doc.txt"
    out.write_text("keep me")
    _fails(["longgen", "--model", model, "--output", str(out), "--max-tokens", "20"], "pass --overwrite", capsys)
    assert out.read_text() == "keep me"
    assert main(["longgen", "--model", model, "--output", str(out), "--max-tokens", "20", "--steps", "2",
                 "--ignore-eos", "--max-repeat", "1", "--overwrite"]) == 0
    assert out.read_text() != "keep me"


def test_mistakes_the_arguments_show_fail_before_torch_loads(model):
    """The checks that need only the arguments run before the heavy libraries are imported."""
    script = (f"import sys; from ldlm.cli import main; "
              f"codes = [main(['generate', '--device', 'cpux']), main(['generate', '--steps', '0']), "
              f"main(['infill', 'a', 'b', '--model', {model!r}]), main(['generate', '--prompt', ''])]; "
              f"print(codes, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["[2,", "2,", "2,", "2]", "False"], result.stderr


@pytest.mark.parametrize("kwargs,message", [
    ({"num_inference_steps": 5000}, "num_inference_steps must be an integer in 1..1000"),
    ({"generator": "abc"}, "generator must be a torch.Generator"),
    ({"generator": [torch.Generator()] * 3, "batch_size": 2}, "a list of 2"),
    ({"prompt": "", "guidance_scale": 2.0}, "prompt 0 must be a non-empty string"),
    ({"prompt": "x\ud800"}, "prompt 0 is not valid UTF-8"),
    ({"prompt": "x", "guidance_scale": float("nan")}, "guidance_scale must be a finite"),
    ({"prompt": "x", "guidance_scale": 0.5}, "guidance_scale must be a finite number ≥ 1"),
    ({"generator": [None, None], "batch_size": 2}, "a list of 2"),
    ({"temperature": 0}, "temperature must be a number in"), ({"temperature": float("nan")}, "temperature"),
])
def test_pipeline_refuses(make_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_pipeline()(**{"num_inference_steps": 2, **kwargs})


def test_a_sample_that_turns_non_finite_stops_with_an_error(make_pipeline):
    with pytest.raises(FloatingPointError, match="the sample diverged"):
        make_pipeline()(LONG, guidance_scale=1e30, num_inference_steps=2)


def test_non_finite_weights_are_refused_on_load(model):
    weights = Path(model) / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = sorted(state)[3]
    state[name].view(-1)[:5] = float("nan")
    save_file(state, weights)
    with pytest.raises(LdlmError, match=f"transformer weights hold NaN or infinite values \\(first in {name}\\)"):
        load_pipeline(model)
    with pytest.raises(ValueError, match="NaN"):
        LatentDiffusionLMPipeline.from_pretrained(model)


def test_keywords_that_never_appear_are_reported(model, capsys):
    assert main(["generate", "--model", model, "--steps", "2", "--num-samples", "1", "--keyword",
                 "Zyzzogeton", "--guidance-steps", "1"]) == 0
    err = capsys.readouterr().err
    assert "keyword 'Zyzzogeton' appears in none of the samples" in err


@pytest.mark.parametrize("args,message", [
    (["train.max_steps=-3"], "train.max_steps must be positive, got -3"),
    (["train.batch_size=0"], "train.batch_size must be positive, got 0"),
    (["train.lr=0"], "train.lr must be positive"),
])
def test_bad_training_values_fail_before_anything_is_written(tmp_path, capsys, args, message):
    _fails(["train-vae", "--config", TINY, f"train.output_dir={tmp_path}/out", *args], message, capsys)
    assert not (tmp_path / "out").exists()


def test_a_yaml_syntax_error_is_one_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("train:\n  max_steps: 3\n  lr: [1e-3\n")
    _fails(["train-dit", "--config", str(config)], "YAML syntax error at line", capsys)


def test_text_files_that_are_not_utf8_are_refused(tmp_path, capsys):
    bad = tmp_path / "samples.txt"
    bad.write_bytes(b"A fine text.\nA \xff\xfe broken one.\n")
    good = tmp_path / "good.txt"
    good.write_text("A fine text.\n")
    _fails(["eval", "--samples", str(bad)], "not UTF-8 text", capsys)
    refs = tmp_path / "refs.jsonl"
    refs.write_bytes(json.dumps({"text": "ok"}).encode() + b"\n\xff\n")
    _fails(["eval", "--samples", str(good), "--references", str(refs)], "not UTF-8 text", capsys)


@pytest.mark.parametrize("script,extra", [
    ("code_distance", ["--references", "{refs}"]),
    ("context_use", ["--references", "{refs}"]),
    ("longgen_report", []),
    ("infill_report", []),
])
def test_benchmark_with_no_model_at_the_path_ends_in_one_line(tmp_path, script, extra):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"text": "A text."}) + "\n")
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / f"{script}.py"
    args = [a.format(refs=refs) for a in extra]
    result = subprocess.run([sys.executable, str(bench), "--model", str(tmp_path / "missing"), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.strip() == f"error: no pipeline at {tmp_path / 'missing'}"
