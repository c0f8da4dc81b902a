import math

import pytest
import torch

from ldlm.checkpoint_io import SafetensorsCheckpointIO, atomic_dir, load_tree, save_tree


def test_tree_round_trip(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    tree = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": base.T}, 1: {"bf16": torch.ones(2, dtype=torch.bfloat16)}},
        "groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1]}],
        "nan": math.nan, "inf": -math.inf, "flag": True, "none": None, "name": "x", "shared": (base, base[1]),
    }
    save_tree(tree, tmp_path / "t.safetensors")
    got = load_tree(tmp_path / "t.safetensors")
    assert set(got["state"]) == {0, 1} and got["state"][0]["step"].shape == ()
    assert torch.equal(got["state"][0]["exp_avg"], base.T) and got["state"][1]["bf16"].dtype == torch.bfloat16
    assert got["groups"][0]["betas"] == (0.9, 0.999) and got["groups"][0]["params"] == [0, 1]
    assert math.isnan(got["nan"]) and got["inf"] == -math.inf and got["flag"] is True and got["none"] is None
    assert torch.equal(got["shared"][1], base[1])


def test_unsupported_type_names_its_path(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['a'\]\[1\]: unsupported type object"):
        save_tree({"a": [1, object()]}, tmp_path / "t.safetensors")
    assert not list(tmp_path.iterdir())


def test_foreign_or_corrupt_file_is_rejected(tmp_path):
    save_tree({"w": torch.ones(100)}, tmp_path / "t.safetensors")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_tree(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.ones(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not an ldlm checkpoint"):
        load_tree(tmp_path / "plain.safetensors")


def test_atomic_dir_keeps_original_on_error(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "one"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("two")
    assert (target / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_checkpoint_io_remove(tmp_path):
    io = SafetensorsCheckpointIO()
    io.save_checkpoint({"global_step": 4}, tmp_path / "c" / "x.safetensors")
    assert io.load_checkpoint(tmp_path / "c" / "x.safetensors") == {"global_step": 4}
    io.remove_checkpoint(tmp_path / "c" / "x.safetensors")
    assert not (tmp_path / "c" / "x.safetensors").exists()
