"""The dependency rule of docs/DESIGN.md: models ← pipelines ← evaluation, and generating text never loads Lightning,
torchmetrics, or the training and data code."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import torch

from ldlm.pipelines.latent_classifier import LatentClassifier

ROOT = Path(__file__).resolve().parents[1]
MODELS = [ROOT / "vae", ROOT / "dit", ROOT / "align", ROOT / "ldlm" / "baselines"]
PIPELINES = ROOT / "ldlm" / "pipelines"
HEAVY = ("lightning", "torchmetrics", "ldlm.training", "ldlm.data", "ldlm.evaluation")


def _imports(folder: Path) -> dict[str, set[str]]:
    """Every module each file of ``folder`` imports, at the top or inside a function."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def _offending(imports: dict[str, set[str]], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path} imports {name}" for path, names in imports.items() for name in sorted(names)
            if name.startswith(forbidden)]


def test_pipelines_import_no_training_data_evaluation_or_lightning():
    assert _offending(_imports(PIPELINES), HEAVY) == []


def test_models_import_no_pipelines():
    upper = ("ldlm.pipelines", *HEAVY)
    assert [line for folder in MODELS for line in _offending(_imports(folder), upper)] == []


def test_generate_with_content_guidance_loads_no_lightning(make_pipeline, tmp_path):
    make_pipeline().save_pretrained(tmp_path / "pipe")
    torch.manual_seed(0)
    LatentClassifier(latent_channels=8, latents_per_block=2, block_length=8, max_blocks=6, labels=["food[Italian]"],
                     hidden_size=16, num_layers=1, num_heads=2).save_pretrained(tmp_path / "content")
    modules = sorted(f"ldlm.pipelines.{path.stem}" for path in PIPELINES.glob("*.py") if path.stem != "__init__")
    code = (
        "import importlib, json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.startswith(heavy))\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "after_import = loaded()\n"
        "from ldlm.cli import main\n"
        f"code = main(['generate', '--model', {str(tmp_path / 'pipe')!r}, '--num-samples', '1', '--steps', '1',\n"
        f"             '--content', 'food[Italian]', '--classifier', {str(tmp_path / 'content')!r}])\n"
        "print(json.dumps([code, after_import, loaded()]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [0, [], []]
