import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from ldlm.cli import main
from ldlm.data.latent_windows import LatentDataModule
from ldlm.dit.model import LatentDiT
from ldlm.dit.objective import make_scheduler
from ldlm.errors import LdlmError
from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline
from ldlm.pipelines.loading import load_vae
from ldlm.training.config import DiTExperiment, load_config
from ldlm.training.dit_trainer import DistillDiTModule, LatentDiTModule, train_dit


def _overrides(vae_dir: str, out, *extra: str) -> list[str]:
    return [
        f"vae={vae_dir}", "data.train=[{path: 'builtin:restaurants:400'}]", "data.max_blocks=4",
        "data.val_fraction=0.1", "model.preset=tiny", "diffusion.ema_decay=0.9", "sample.every=30",
        "sample.num_samples=2", "sample.steps=3", "train.max_steps=60", "train.batch_size=32", "train.lr=2e-3",
        "train.warmup_steps=5", "train.val_every=30", "train.checkpoint_every=30", "train.progress_bar=false",
        "train.accelerator=cpu", f"train.output_dir={out}", *extra,
    ]


@torch.no_grad()
def _val_loss(module: LatentDiTModule, data: LatentDataModule) -> float:
    losses = [module._common_step(batch, train=False, generator=torch.Generator().manual_seed(i))[0].mean()
              for i, batch in enumerate(data.val_dataloader())]
    return float(torch.stack(losses).mean())


def test_short_training_lowers_the_loss_and_exports_a_pipeline(vae_dir, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(DiTExperiment, None, _overrides(vae_dir, out))
    assert train_dit(cfg) == out / "pipeline"
    data = LatentDataModule(cfg.data, *load_vae(vae_dir), 32)
    data.setup()
    pipe = LatentDiffusionLMPipeline.from_pretrained(out / "pipeline")
    fresh = LatentDiTModule(LatentDiT.from_config(pipe.transformer.config), OmegaConf.to_container(cfg))
    trained = LatentDiTModule(pipe.transformer, OmegaConf.to_container(cfg))
    assert _val_loss(trained, data) < 0.8 * _val_loss(fresh, data)
    with open(out / "logs" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/loss")]
    assert len(rows) == 2 and all(r.get(f"val/loss_t{i}") for r in rows for i in range(4))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [30, 60] and len(samples[0]["texts"]) == 2
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 60
    assert (out / "checkpoints" / "last.safetensors").is_file()
    pipe.set_progress_bar_config(disable=True)
    assert len(pipe(batch_size=2, num_inference_steps=3).texts) == 2


WORKER = """
import hashlib, sys
import lightning as L
from torch.distributed.tensor import DTensor
from ldlm.training.config import DiTExperiment, load_config
from ldlm.training.dit_trainer import train_dit


class Fingerprint(L.Callback):
    def on_train_start(self, trainer, module):
        weight = module.transformer.blocks[0].mlp[0].weight
        self.sharded = isinstance(weight, DTensor) and any(p.is_shard() for p in weight.placements)

    def on_train_end(self, trainer, module):
        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            digest.update(name.encode() + full.detach().cpu().numpy().tobytes())
        with open(f"{sys.argv[1]}/rank{trainer.global_rank}.txt", "w") as handle:
            handle.write(f"{trainer.world_size} {trainer.global_step} {self.sharded} {digest.hexdigest()}")


train_dit(load_config(DiTExperiment, None, sys.argv[2:]), callbacks=[Fingerprint()])
"""


def _two_processes(vae_dir: str, tmp_path, out, strategy: str, steps: int = 12) -> tuple[list[list[str]], str]:
    """Train with 2 CPU processes: each rank's (world size, step, sharded?, hash of the full weights), and stderr."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    args = _overrides(vae_dir, out, f"train.max_steps={steps}", "train.devices=2",
                      f"train.strategy={strategy}", "train.val_every=6", "sample.every=6", "train.checkpoint_every=6")
    result = subprocess.run([sys.executable, str(script), str(tmp_path), *args], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)], result.stderr


@pytest.mark.parametrize("cached_context", [False, True])
def test_the_training_step_teaches_the_dit_to_read_its_context(cached_context):
    """Windows whose last two blocks copy the first two: after 300 training steps the DiT's estimate of the copied
    blocks at t = 500 is far better with the true context than with another window's (the context path works, also
    for a context that reads only itself)."""
    from dataclasses import asdict

    from ldlm.training.config import DiffusionConfig

    torch.manual_seed(0)
    dit = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4, cached_context=cached_context)
    diffusion = asdict(DiffusionConfig(context_prob=1.0, context_dropout=0.0, self_condition=0.0))
    module = LatentDiTModule(dit, {"diffusion": diffusion, "train": {"seed": 0}})
    optimizer = torch.optim.AdamW(dit.parameters(), lr=3e-3)

    def windows(batch: int) -> dict[str, torch.Tensor]:
        first = torch.randn(batch, 4, 8)
        return {"latents": torch.cat([first, first], 1), "num_blocks": torch.full((batch,), 4)}

    for _ in range(300):
        per_sample, weight, _ = module._common_step(windows(32), train=True)
        optimizer.zero_grad()
        (weight * per_sample).mean().backward()
        optimizer.step()
    x0 = windows(256)["latents"]
    context = torch.zeros(256, 8, dtype=torch.bool)
    context[:, :4] = True
    t = torch.full((256,), 500)
    x_t = module.objective.add_noise(x0, torch.randn_like(x0), t)
    with torch.no_grad():
        error = [float((module.objective.to_x0(x_in, dit(x_in, t, None, context), t) - x0)[:, 4:].pow(2).mean())
                 for x_in in (torch.where(context[..., None], given, x_t) for given in (x0, x0.roll(1, 0)))]
    assert error[0] < 0.1 < 0.5 < error[1]


def test_two_process_ddp_keeps_ranks_in_sync(vae_dir, tmp_path):
    out = tmp_path / "run"
    ranks, _ = _two_processes(vae_dir, tmp_path, out, "ddp")
    assert ranks[0] == ranks[1] and ranks[0][:3] == ["2", "12", "False"]
    assert (out / "pipeline" / "model_index.json").is_file()


def test_two_process_fsdp2_shards_resumes_and_exports(vae_dir, tmp_path):
    out = tmp_path / "run"
    ranks, stderr = _two_processes(vae_dir, tmp_path, out, "fsdp")
    assert ranks[0] == ranks[1] and ranks[0][:3] == ["2", "12", "True"]
    assert "Restored all states" not in stderr
    ranks, stderr = _two_processes(vae_dir, tmp_path, out, "fsdp", steps=18)
    assert "Restored all states from the checkpoint" in stderr  # from checkpoints/last.safetensors, step 12
    assert ranks[0][:3] == ["2", "18", "True"] and ranks[0] == ranks[1]
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 18
    pipe = LatentDiffusionLMPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert len(pipe(batch_size=2, num_inference_steps=3).texts) == 2


def _empty_config(folder):
    config = folder / "empty.yaml"
    config.write_text("{}\n")
    return config


@pytest.mark.parametrize("override,message", [
    ("model.preset=huge", "model.preset"),
    ("diffusion.scheduler=flow-euler", "does not fit"),
    ("diffusion.objective=score", "objective"),
    ("diffusion.scheduler=pndm", "unknown scheduler"),
])
def test_config_errors(vae_dir, tmp_path, capsys, override, message):
    config = str(_empty_config(tmp_path))
    assert main(["train-dit", "--config", config, *_overrides(vae_dir, tmp_path / "o"), override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def _warm_start(vae_dir, tmp_path, first_steps: int, *extra: str):
    """A first run of ``first_steps`` steps, then one step (at a negligible learning rate) from it with ``extra``
    overrides: the first run's folder, its transformer and the warm start's."""
    first = train_dit(load_config(DiTExperiment, None, _overrides(
        vae_dir, tmp_path / "a", f"train.max_steps={first_steps}")))
    second = train_dit(load_config(DiTExperiment, None, _overrides(
        vae_dir, tmp_path / "b", f"init={first}", *extra, "train.max_steps=1", "train.lr=1e-12", "sample.every=0")))
    return first, LatentDiT.from_pretrained(first / "transformer"), LatentDiT.from_pretrained(second / "transformer")


def test_warm_start_begins_from_the_given_pipeline(vae_dir, tmp_path, capsys):
    first, start, end = _warm_start(vae_dir, tmp_path, 30)
    start, end = start.state_dict(), end.state_dict()
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)
    config = str(_empty_config(tmp_path))
    assert main(["train-dit", "--config", config, *_overrides(vae_dir, tmp_path / "c"), f"init={first}",
                 "model.preset=small"]) == 2
    assert "differs from the configured one in hidden_size" in capsys.readouterr().err
    assert main(["train-dit", "--config", config, *_overrides(vae_dir, tmp_path / "d"), f"init={first}",
                 "data.max_blocks=3"]) == 2
    assert "differs from the configured one in max_blocks" in capsys.readouterr().err


def test_warm_start_onto_longer_windows_keeps_the_trained_block_positions(vae_dir, tmp_path):
    _, start, end = _warm_start(vae_dir, tmp_path, 2, "data.max_blocks=6")
    assert (start.config.max_blocks, end.config.max_blocks) == (4, 6)
    start, end = start.state_dict(), end.state_dict()
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start if k != "block_pos")
    assert torch.allclose(start["block_pos"], end["block_pos"][:4], atol=1e-6)
    assert not torch.allclose(end["block_pos"][4:], torch.zeros_like(end["block_pos"][4:]))


def test_warm_start_may_switch_to_a_cached_context(vae_dir, tmp_path):
    _, start, end = _warm_start(vae_dir, tmp_path, 2, "model.cached_context=true")
    assert (start.config.cached_context, end.config.cached_context) == (False, True)
    start, end = start.state_dict(), end.state_dict()
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)


@torch.no_grad()
@pytest.mark.parametrize("autoguidance, substeps", [(1.0, 2), (2.5, 2), (1.0, 4)])
def test_distillation_target_takes_the_student_where_the_teacher_steps_go(vae_dir, tmp_path, autoguidance, substeps):
    cfg = load_config(DiTExperiment, None, _overrides(vae_dir, tmp_path, "init=unused", "diffusion.scheduler=ddim",
                                                      "diffusion.distill_steps=5",
                                                      f"diffusion.distill_substeps={substeps}",
                                                      f"diffusion.distill_autoguidance={autoguidance}"))
    torch.manual_seed(0)
    student, teacher, weak = (LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4) for _ in range(3))
    for model in (teacher, weak):  # adaLN-zero starts as the identity: perturb so the teachers' steps matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    guided = autoguidance > 1
    module = DistillDiTModule(student, OmegaConf.to_container(cfg), teacher, weak if guided else None)

    def teacher_output(*args):  # the pipeline's autoguided output (the teacher alone at w = 1)
        return weak(*args) + autoguidance * (teacher(*args) - weak(*args)) if guided else teacher(*args)

    x0, noise = torch.randn(3, 8, 8), torch.randn(3, 8, 8)
    context = torch.zeros(3, 8, dtype=torch.bool)
    context[0, :2] = context[2, :4] = True
    drop, clean = torch.tensor([True, False, False]), context[..., None]  # row 0: context swapped for the null one
    self_cond = torch.randn(3, 8, 8)
    teacher_sampler, student_sampler = make_scheduler("ddim"), make_scheduler("ddim")
    teacher_sampler.set_timesteps(5 * substeps)
    student_sampler.set_timesteps(5)
    objective = module.objective
    assert set(module._timesteps(200, "cpu", None).tolist()) == set(student_sampler.timesteps.tolist())
    for t in student_sampler.timesteps:  # 999, 799, …, 199: the last one ends clean
        t3 = t.expand(3)
        x_t = torch.where(clean, x0, objective.add_noise(x0, noise, t3))
        target = module._target(x0, noise, t3, x_t, self_cond, context, drop)
        student_end = student_sampler.step(target, t, x_t).prev_sample
        x, estimate = x_t, self_cond
        for tt in t - torch.arange(substeps) * (200 // substeps):  # the teacher's K steps, as its sampler takes them
            output = teacher_output(x, tt.expand(3), estimate, context, drop)
            estimate = torch.where(clean, x0, objective.to_x0(x, output, tt.expand(3)))
            x = torch.where(clean, x0, teacher_sampler.step(output, tt, x).prev_sample)
        torch.testing.assert_close(student_end[~context], x[~context], atol=1e-4, rtol=0)
        assert (x - x_t)[~context].abs().mean() > 0.01


def test_distillation_trains_from_init_and_exports_a_ddim_pipeline(vae_dir, tmp_path, capsys):
    first = train_dit(load_config(DiTExperiment, None, _overrides(vae_dir, tmp_path / "a", "train.max_steps=2")))
    student = train_dit(load_config(DiTExperiment, None, _overrides(
        vae_dir, tmp_path / "b", f"init={first}", "diffusion.scheduler=ddim", "diffusion.distill_steps=2",
        "train.max_steps=3", "sample.every=0")))
    pipe = LatentDiffusionLMPipeline.from_pretrained(student)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert len(pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).texts) == 2
    config = str(_empty_config(tmp_path))
    capsys.readouterr()
    for extra, message in ((["diffusion.scheduler=ddim", "diffusion.distill_steps=2"], "needs init"),
                           ([f"init={first}", "diffusion.distill_steps=2"], "or sample, scheduler ddim"),
                           ([f"init={first}", "diffusion.scheduler=ddim", "diffusion.distill_steps=2",
                             "diffusion.prediction_type=epsilon"], "v_prediction or sample"),
                           ([f"init={first}", "diffusion.scheduler=ddim", "diffusion.distill_steps=3"], "divides"),
                           ([f"init={first}", "diffusion.scheduler=ddim", "diffusion.distill_steps=100",
                             "diffusion.distill_substeps=3"], "divides"),
                           ([f"init={first}", "diffusion.distill_substeps=1"], "integer ≥ 2"),
                           ([f"init={first}", "diffusion.distill_substeps=4"], "needs diffusion.distill_steps"),
                           ([f"init={first}", "diffusion.scheduler=ddim", "diffusion.distill_steps=2",
                             "data.max_blocks=6"], "distil on the same windows"),
                           ([f"init={first}", "diffusion.scheduler=ddim", "diffusion.distill_steps=2",
                             "diffusion.distill_autoguidance=2"], "holds no weak_transformer"),
                           ([f"init={first}", "diffusion.distill_autoguidance=2"], "needs diffusion.distill_steps"),
                           ([f"init={first}", "diffusion.scheduler=ddim", "diffusion.distill_steps=2",
                             "diffusion.distill_autoguidance=0.5"], "finite number ≥ 1")):
        assert main(["train-dit", "--config", config, *_overrides(vae_dir, tmp_path / "c"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_an_export_from_init_keeps_its_weak_transformer_and_defaults(vae_dir, tmp_path):
    first = train_dit(load_config(DiTExperiment, None, _overrides(vae_dir, tmp_path / "a", "train.max_steps=2")))
    pipe = LatentDiffusionLMPipeline.from_pretrained(first)
    torch.manual_seed(0)
    weak = LatentDiT.from_config(pipe.transformer.config)
    LatentDiffusionLMPipeline(pipe.vae, pipe.transformer, pipe.scheduler, pipe.tokenizer, weak, 2.5,
                              new_blocks=3, temperature=1.1).save_pretrained(tmp_path / "guided")
    runs = {"distilled": ["diffusion.scheduler=ddim", "diffusion.distill_steps=2"], "warm": []}
    for name, extra in runs.items():
        out = LatentDiffusionLMPipeline.from_pretrained(train_dit(load_config(DiTExperiment, None, _overrides(
            vae_dir, tmp_path / name, f"init={tmp_path / 'guided'}", "train.max_steps=1", "sample.every=0", *extra))))
        assert (out.config.autoguidance, out.config.new_blocks, out.config.temperature) == (2.5, 3, 1.1), name
        kept = out.weak_transformer.state_dict()
        assert all(torch.equal(kept[k], v.to(kept[k].dtype)) for k, v in weak.state_dict().items()), name
    with pytest.warns(UserWarning, match="does not fit"):  # longer windows than the weak transformer's
        longer = train_dit(load_config(DiTExperiment, None, _overrides(
            vae_dir, tmp_path / "longer", f"init={tmp_path / 'guided'}", "data.max_blocks=6", "train.max_steps=1",
            "sample.every=0")))
    out = LatentDiffusionLMPipeline.from_pretrained(longer)
    assert (out.weak_transformer, out.config.autoguidance, out.config.new_blocks, out.config.temperature) == (
        None, 1.0, 3, 1.1)
    fresh = LatentDiffusionLMPipeline.from_pretrained(first)
    assert (fresh.weak_transformer, fresh.config.autoguidance, fresh.config.temperature) == (None, 1.0, 1.0)


def test_a_weak_transformer_its_pipeline_no_longer_lists_is_not_read(vae_dir, tmp_path):
    first = train_dit(load_config(DiTExperiment, None, _overrides(vae_dir, tmp_path / "a", "train.max_steps=2")))
    pipe = LatentDiffusionLMPipeline.from_pretrained(first)
    weak = LatentDiT.from_config(pipe.transformer.config)
    LatentDiffusionLMPipeline(pipe.vae, pipe.transformer, pipe.scheduler, pipe.tokenizer, weak, 2.0).save_pretrained(
        tmp_path / "init")
    pipe.save_pretrained(tmp_path / "init")  # saved again without it: the old folder stays behind, unlisted
    assert (tmp_path / "init" / "weak_transformer" / "config.json").is_file()
    assert LatentDiffusionLMPipeline.from_pretrained(tmp_path / "init").weak_transformer is None
    warm = LatentDiffusionLMPipeline.from_pretrained(train_dit(load_config(DiTExperiment, None, _overrides(
        vae_dir, tmp_path / "warm", f"init={tmp_path / 'init'}", "train.max_steps=1", "sample.every=0"))))
    assert (warm.weak_transformer, warm.config.autoguidance) == (None, 1.0)
    with pytest.raises(LdlmError, match="holds no weak_transformer"):
        train_dit(load_config(DiTExperiment, None, _overrides(
            vae_dir, tmp_path / "guided", f"init={tmp_path / 'init'}", "diffusion.scheduler=ddim",
            "diffusion.distill_steps=2", "diffusion.distill_autoguidance=2")))


def test_guided_distillation_bakes_the_weak_transformer_in(vae_dir, tmp_path):
    first = train_dit(load_config(DiTExperiment, None, _overrides(vae_dir, tmp_path / "a", "train.max_steps=2")))
    pipe = LatentDiffusionLMPipeline.from_pretrained(first)
    weak = LatentDiT.from_config(pipe.transformer.config)
    guided = LatentDiffusionLMPipeline(pipe.vae, pipe.transformer, pipe.scheduler, pipe.tokenizer, weak, 2.0,
                                       temperature=1.1)
    guided.save_pretrained(tmp_path / "guided")
    student = train_dit(load_config(DiTExperiment, None, _overrides(
        vae_dir, tmp_path / "b", f"init={tmp_path / 'guided'}", "diffusion.scheduler=ddim",
        "diffusion.distill_steps=2", "diffusion.distill_autoguidance=2", "train.max_steps=3", "sample.every=0")))
    out = LatentDiffusionLMPipeline.from_pretrained(student)
    assert out.weak_transformer is None and out.config.autoguidance == 1  # the student runs alone
    assert out.config.temperature == 1.0
    moved = LatentDiT.from_pretrained(student / "transformer").state_dict()
    assert any(not torch.equal(v, pipe.transformer.state_dict()[k]) for k, v in moved.items())
    small = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=2)  # shorter windows than the DiT
    LatentDiffusionLMPipeline(pipe.vae, pipe.transformer, pipe.scheduler, pipe.tokenizer, small, 2.0).save_pretrained(
        tmp_path / "unfit")
    with pytest.raises(LdlmError, match="does not fit"):
        train_dit(load_config(DiTExperiment, None, _overrides(
            vae_dir, tmp_path / "c", f"init={tmp_path / 'unfit'}", "diffusion.scheduler=ddim",
            "diffusion.distill_steps=2", "diffusion.distill_autoguidance=2")))
