"""The pipeline shipped in checkpoints/ loads, and `ldlm generate` uses it by default (the README's main job)."""
import pytest
import torch

from ldlm.cli import main
from ldlm.generate import SHIPPED, load_pipeline

pytestmark = pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="no source checkout")


def test_shipped_pipeline_generates_deterministically():
    pipe = load_pipeline()
    assert pipe.transformer.dtype == torch.float32 and pipe.scheduler.config.timestep_spacing == "trailing"
    run = lambda: pipe(["The Eagle is a coffee shop"], num_samples_per_prompt=2, num_inference_steps=5,  # noqa: E731
                       generator=torch.Generator().manual_seed(0)).texts
    texts = run()
    assert texts == run() and all(t.startswith("The Eagle is a coffee shop") for t in texts)
    assert all(len(t.split()) > 6 for t in texts)


def test_generate_defaults_to_the_shipped_pipeline(capsys):
    assert main(["generate", "--num-samples", "2", "--steps", "4", "--scheduler", "ddim"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(lines)
