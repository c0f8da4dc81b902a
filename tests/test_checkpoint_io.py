import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from ldlm.training.checkpoint_io import SafetensorsCheckpointIO, atomic_dir, atomic_write, load_tree, save_tree


def assert_same(a, b):
    """Equal values and identical types all the way down; tensors compared bit for bit."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert torch.equal(a.resolve_conj().contiguous().reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    elif isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b]
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


def test_tree_round_trip(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = OrderedDict(w=torch.randn(2, 2), n=torch.tensor(7))
    state._metadata = OrderedDict({"": {"version": 2}})
    tree = {
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": base.T}, 1: {}},
                              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "fused": None}]}],
        "mixed_keys": {0: "int", "0": "str", True: "bool"},
        "floats": [math.nan, math.inf, -math.inf, -0.0, 1e-310], "big": 2**70, "text": "héllo\n\"x\"",
        "nested": ((), [], {}, ([1, (2,)],)), "flag": False, "none": None,
        "shared": (base, base[1], base[:, 1], base), "state_dict": state,
        "dtypes": [torch.ones(3, dtype=d) for d in (torch.bfloat16, torch.float16, torch.float64, torch.int8,
                                                    torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn)],
        "scalars": (torch.tensor(1.5, dtype=torch.bfloat16), torch.tensor(True), torch.zeros(0, 3)),
        "conj": torch.tensor([1 + 2j]).conj(),
        "cfg": OmegaConf.create({"a": {"b": [1, 2]}, "c": "${a.b}"}), "root": Path("/data/x"),
    }
    save_tree(tree, tmp_path / "t.safetensors")
    got = load_tree(tmp_path / "t.safetensors")
    assert_same({k: v for k, v in tree.items() if k != "cfg"}, {k: v for k, v in got.items() if k != "cfg"})
    assert got["state_dict"]._metadata == state._metadata
    assert got["shared"][0] is got["shared"][3]  # the same tensor is stored once
    assert isinstance(got["cfg"], DictConfig) and got["cfg"].c == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
    plain = load_file(tmp_path / "t.safetensors")  # any safetensors reader sees the tensors, keyed by their path
    assert len(plain) == 19 and torch.equal(plain["checkpoint['state_dict']['w']"], state["w"])


class Foo:
    pass


def test_unsupported_type_names_its_path(tmp_path):
    target = tmp_path / "t.safetensors"
    with pytest.raises(TypeError, match=r"^checkpoint\['callbacks'\]\['x'\]\[1\]: unsupported type Foo$"):
        save_tree({"callbacks": {"x": [1, Foo()]}}, target)
    with pytest.raises(TypeError, match=r"^checkpoint\[3\]: unsupported key \(1, 2\) of type tuple$"):
        save_tree({3: {(1, 2): 0}}, target)
    with pytest.raises(TypeError, match=r"^checkpoint\['s'\]: unsupported tensor"):
        save_tree({"s": torch.eye(2).to_sparse()}, target)
    assert not list(tmp_path.iterdir())


def test_foreign_or_corrupt_file_is_rejected(tmp_path):
    good = tmp_path / "good.safetensors"
    save_tree({"w": torch.arange(100.0)}, good)
    data = good.read_bytes()
    cases = {"cut": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint at all" * 10,
             "flipped": data[:-8] + bytes([data[-8] ^ 1]) + data[-7:]}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    for name in ("cut", "empty", "text"):
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_tree(tmp_path / name)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_tree(tmp_path / "flipped")
    save_file({"w": torch.ones(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not an ldlm checkpoint"):
        load_tree(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError):
        load_tree(tmp_path / "missing.safetensors")


def test_atomic_write_keeps_original_on_error(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write(target, lambda tmp: tmp.write_text("one"))

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


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
        (tmp / "b.txt").write_text("two")
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_checkpoint_io_map_location_and_remove(tmp_path):
    io, path = SafetensorsCheckpointIO(), tmp_path / "c" / "x.safetensors"
    io.save_checkpoint({"global_step": 4, "w": torch.ones(2), "hparams_type": DictConfig}, path)
    got = io.load_checkpoint(path, map_location="meta")
    assert got["global_step"] == 4 and got["w"].is_meta and got["hparams_type"] == "omegaconf.dictconfig.DictConfig"
    io.remove_checkpoint(path)
    assert not path.exists()


# --- a real Lightning run: save at step 4, resume to step 8, compare with an uninterrupted run ---

L = pytest.importorskip("lightning")


class Regression(L.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.8 ** step)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        # One batch per epoch, so the comparison does not depend on where Lightning restarts the data iterator:
        # resuming iteration-based training (max_steps) from an end-of-epoch checkpoint replays an extra batch_idx
        # from a fresh iterator, with torch.save checkpoints just the same.
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def fit(tmp_path, max_steps, ckpt_path=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    model = Regression()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    checkpoint.FILE_EXTENSION = ".safetensors"
    trainer = L.Trainer(max_steps=max_steps, plugins=[SafetensorsCheckpointIO()], callbacks=[checkpoint],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=tmp_path)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.filterwarnings("ignore")
def test_lightning_resume_matches_uninterrupted_run(tmp_path):
    _, reference = fit(tmp_path / "ref", 8)
    fit(tmp_path / "run", 4)
    files = sorted(p.name for p in (tmp_path / "run" / "ckpt").iterdir())
    assert files == ["epoch=3-step=4.safetensors", "last.safetensors"]  # older ones went via remove_checkpoint
    ckpt = load_tree(tmp_path / "run" / "ckpt" / "last.safetensors")
    assert ckpt["global_step"] == 4 and ckpt["hyper_parameters"] == {"lr": 0.05}
    assert list(ckpt["optimizer_states"][0]["state"]) == [0, 1, 2, 3, 4, 5]
    assert ckpt["optimizer_states"][0]["state"][0]["step"].shape == ()
    assert ckpt["state_dict"]._metadata["net.1"]["version"] == 2

    trainer, resumed = fit(tmp_path / "run", 8, ckpt_path="last")
    assert trainer.global_step == 8
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 8
    assert float(trainer.optimizers[0].state_dict()["state"][0]["step"]) == 8
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
