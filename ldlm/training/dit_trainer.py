"""Stage 2 training: a LatentDiT on frozen-VAE latents, as a LightningModule (DDP or FSDP2), exported as a pipeline."""
from __future__ import annotations

import copy
import warnings
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torchmetrics import MeanMetric

from ldlm.data.latent_windows import LatentDataModule
from ldlm.dit.model import LatentDiT
from ldlm.dit.objective import DiffusionObjective, make_scheduler
from ldlm.errors import LdlmError
from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline, autoguide, check_weak_transformer
from ldlm.pipelines.loading import load_vae
from ldlm.training.checkpoint_io import atomic_dir, load_tree
from ldlm.training.config import DiTExperiment, build_preset
from ldlm.training.optim import adamw_warmup_cosine
from ldlm.training.runner import Job, SampleTexts, final_checkpoint, run

BUCKETS = 4  # the loss is also logged per quarter of the timestep range


class LatentDiTModule(L.LightningModule):
    """Denoising loss on windows of block latents, with random clean-context prefixes (or block subsets, for
    infilling), context dropout (CFG), self-conditioning and an EMA copy of the weights (used for validation,
    samples and export)."""

    def __init__(self, transformer: LatentDiT, cfg: dict) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["transformer", "teacher", "weak"])
        self.transformer = transformer
        self.ema = copy.deepcopy(transformer).requires_grad_(False)
        d, self.train_cfg = cfg["diffusion"], cfg["train"]
        self.diff = d
        self.objective = DiffusionObjective(d["objective"], d["prediction_type"], d["num_train_timesteps"],
                                            d["beta_schedule"], d["timestep_sampling"], d["logit_mean"],
                                            d["logit_std"], min_snr_gamma=d["min_snr_gamma"])
        self.val_buckets = nn.ModuleList(MeanMetric() for _ in range(BUCKETS))

    def on_fit_start(self) -> None:
        """Every rank draws its own timesteps and noise (seed_everything gives all ranks the same stream)."""
        torch.manual_seed(self.train_cfg["seed"] * 1009 + self.global_rank)

    def _use_self_condition(self) -> bool:
        """One draw per step shared by all ranks (sharded models need every rank to run the same forwards)."""
        generator = torch.Generator().manual_seed(self.train_cfg["seed"] * 100_003 + self.global_step)
        return float(torch.rand((), generator=generator)) < self.diff["self_condition"]

    def configure_model(self) -> None:
        """FSDP2: shard every DiT block and the root of both the model and its EMA (ModelParallelStrategy only)."""
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]  # shard over all data-parallel ranks (a 2-D mesh would replicate)

        for model in (self.transformer, self.ema):
            for block in model.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)

    def _common_step(self, batch: dict[str, torch.Tensor], train: bool, generator: torch.Generator | None = None):
        """Per-window loss (over non-context latents), its training weight and each window's timestep bucket."""
        x0 = batch["latents"]
        b, n, _ = x0.shape
        k = self.transformer.config.latents_per_block
        rand = lambda *shape: torch.rand(*shape, device=x0.device, generator=generator)  # noqa: E731
        block = (torch.arange(n, device=x0.device) // k)[None]
        keep = torch.where(rand(b) < self.diff["context_prob"], (rand(b) * batch["num_blocks"]).floor(), 0.0)
        context = block < keep[:, None]
        if self.diff["infill_prob"]:  # some windows instead keep a random half of their real blocks clean
            subset = (rand(b, n // k) < 0.5).gather(1, block.expand(b, -1)) & (block < batch["num_blocks"][:, None])
            context = torch.where((rand(b) < self.diff["infill_prob"])[:, None], subset, context)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        t = self._timesteps(b, x0.device, generator)
        x_in = torch.where(context[..., None], x0, self.objective.add_noise(x0, noise, t))
        model = self.transformer if train else self.ema
        drop = rand(b) < self.diff["context_dropout"] if train else None
        self_cond = None
        if train and self._use_self_condition():
            with torch.no_grad():
                self_cond = self.objective.to_x0(x_in, model(x_in, t, None, context, drop), t).detach()
        output = model(x_in, t, self_cond, context, drop)
        per_latent = (output - self._target(x0, noise, t, x_in, self_cond, context, drop)).pow(2).mean(-1)
        weight = (~context).float()
        per_sample = (per_latent * weight).sum(1) / weight.sum(1).clamp(min=1)
        bucket = (t / self.objective.num_train_timesteps * BUCKETS).long().clamp(max=BUCKETS - 1)
        return per_sample, self.objective.loss_weight(t).to(per_sample), bucket

    def _timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        return self.objective.sample_timesteps(batch, device, generator)

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, x_in: torch.Tensor,
                self_cond: torch.Tensor | None, context: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        """The regression target of the model's output at ``x_in`` (the objective's: from the clean latents)."""
        return self.objective.target(x0, noise, t)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        per_sample, weight, bucket = self._common_step(batch, train=True)
        loss = (weight * per_sample).mean()
        self.log("train/loss", per_sample.mean())
        for i in range(BUCKETS):
            if (bucket == i).any():  # training logs are per process and per step: no cross-rank sync to pair up
                self.log(f"train/loss_t{i}", per_sample[bucket == i].mean())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        generator = torch.Generator(device=batch["latents"].device).manual_seed(batch_idx)
        per_sample, _, bucket = self._common_step(batch, train=False, generator=generator)
        self.log("val/loss", per_sample.mean(), sync_dist=True, batch_size=len(per_sample))
        self.log("val_loss", per_sample.mean(), prog_bar=True, logger=False, sync_dist=True,
                 batch_size=len(per_sample))
        for i, metric in enumerate(self.val_buckets):  # weighted means, synced across ranks at epoch end
            metric.update(per_sample[bucket == i])
            self.log(f"val/loss_t{i}", metric)

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step
        decay = min(self.diff["ema_decay"], (1 + step) / (10 + step))
        if self.device_mesh is not None:  # FSDP2 leaves a root unsharded after a forward without backward
            self.ema.reshard()
            self.transformer.reshard()
        for ema, live in zip(self.ema.parameters(), self.transformer.parameters()):
            ema.lerp_(live.detach(), 1 - decay)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.transformer, self.train_cfg, betas=(0.9, 0.99))


class DistillDiTModule(LatentDiTModule):
    """Progressive distillation (Salimans & Ho, 2022) of a teacher DiT sampled with K·N DDIM steps into a student for
    N (K = ``diffusion.distill_substeps``; 2 halves the steps, more takes a finer sampler's path in one round): the
    student starts as the teacher; at a timestep of its N-step grid its target is the clean estimate with which one
    DDIM step lands where K of the teacher's land (with the same context, null-context draw and self-conditioning;
    each teacher step feeds back the previous estimate, as the sampler does). With a ``weak`` transformer the teacher
    is autoguided, weak + w·(teacher − weak) at ``diffusion.distill_autoguidance``, so the student learns the guided
    sampler and runs alone. The teachers are not sharded under FSDP: every rank holds them whole."""

    def __init__(self, transformer: LatentDiT, cfg: dict, teacher: LatentDiT, weak: LatentDiT | None = None) -> None:
        super().__init__(transformer, cfg)
        self.teacher = teacher.requires_grad_(False)
        self.weak = None if weak is None else weak.requires_grad_(False)
        self.stride = self.objective.num_train_timesteps // self.diff["distill_steps"]

    def _teacher(self, x: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None, context: torch.Tensor,
                 drop: torch.Tensor | None) -> torch.Tensor:
        """The teacher's output, autoguided against the weak transformer when there is one (as the pipeline's)."""
        strong = self.teacher(x, t, self_cond, context, drop)
        if self.weak is None:
            return strong
        return autoguide(strong, self.weak(x, t, self_cond, context, drop), self.diff["distill_autoguidance"])

    def _timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        """Timesteps of the student's trailing N-step grid (T − 1, T − 1 − T/N, …, T/N − 1)."""
        i = torch.randint(self.diff["distill_steps"], (batch,), device=device, generator=generator)
        return self.objective.num_train_timesteps - 1 - i * self.stride

    @torch.no_grad()
    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, x_in: torch.Tensor,
                self_cond: torch.Tensor | None, context: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        objective, clean = self.objective, context[..., None]
        substeps = self.diff["distill_substeps"]
        step = self.stride // substeps
        # the teacher's inputs and estimates hold the clean context, as the sampler's do; elsewhere context positions
        # carry no loss
        x, estimate = x_in, self_cond
        for k in range(substeps):
            now = t - k * step
            estimate = torch.where(clean, x0, objective.to_x0(x, self._teacher(x, now, estimate, context, drop), now))
            x = torch.where(clean, x0, objective.ddim_step(x, estimate, now, now - step))
        return objective.from_x0(x_in, objective.ddim_x0(x_in, x, t, t - self.stride), t)


def load_transformer_weights(transformer: LatentDiT, pipeline: str) -> None:
    """Start from the transformer weights of an exported pipeline, which must have the same shape, except that it
    may have been trained on shorter windows (fewer ``max_blocks``): its block positions then fill the first rows
    and the further blocks keep their fresh initialisation; and it may read its context differently
    (``cached_context``), the weights being the same."""
    folder = Path(pipeline) / "transformer"
    if not (folder / "config.json").is_file():
        raise LdlmError(f"init: {pipeline} holds no transformer/ folder")
    trained = LatentDiT.from_pretrained(folder)
    diff = sorted(k for k in transformer.config if not k.startswith("_") and k != "cached_context"
                  and trained.config.get(k) != transformer.config[k])
    if diff == ["max_blocks"] and trained.config.max_blocks < transformer.config.max_blocks:
        diff = []
    if diff:
        raise LdlmError(f"init: the transformer in {pipeline} differs from the configured one in {', '.join(diff)}")
    state = trained.state_dict()
    block_pos = transformer.block_pos.detach().clone()
    block_pos[: trained.config.max_blocks] = state["block_pos"]
    transformer.load_state_dict(state | {"block_pos": block_pos})


def _weak_teacher(cfg: DiTExperiment, teacher: LatentDiT) -> LatentDiT | None:
    """init's weak transformer when ``diffusion.distill_autoguidance`` > 1 (checked to fit the teacher), else None."""
    if cfg.diffusion.distill_autoguidance == 1:
        return None
    weak = _init_weak(cfg)
    if weak is None:
        raise LdlmError(f"diffusion.distill_autoguidance: {cfg.init} holds no weak_transformer/ folder to guide with")
    weak = weak.float().train()
    try:
        check_weak_transformer(teacher, weak)
    except ValueError as err:
        raise LdlmError(f"diffusion.distill_autoguidance: {err}") from None
    return weak


def _init_weak(cfg: DiTExperiment) -> LatentDiT | None:
    """init's weak transformer as its pipeline loads it (listed in ``model_index.json``, as a folder left behind by an
    earlier save is not), or None when it has none."""
    folder = Path(cfg.init) / "weak_transformer"
    index = Path(cfg.init) / "model_index.json"
    listed = index.is_file() and LatentDiffusionLMPipeline.load_config(cfg.init).get("weak_transformer", [None])[0]
    return LatentDiT.from_pretrained(folder) if listed and (folder / "config.json").is_file() else None


def _sampling_defaults(cfg: DiTExperiment, transformer: LatentDiT) -> dict:
    """What the exported pipeline keeps of init's sampling defaults (weak transformer, autoguidance, new_blocks,
    temperature): all of them for a model still sampled as init's was (a warm start, an unguided distillation); none
    for a fresh run or a guided distillation, whose student has the guidance built in. A weak transformer that does
    not fit the longer windows of a warm start is dropped with a warning."""
    guided = cfg.diffusion.distill_autoguidance > 1
    if cfg.init is None or guided or not (Path(cfg.init) / "model_index.json").is_file():
        return {}
    saved = LatentDiffusionLMPipeline.load_config(cfg.init)
    defaults = {key: saved[key] for key in ("new_blocks", "temperature") if key in saved}  # else the pipeline's own
    weak = _init_weak(cfg)
    if weak is None:
        return defaults
    try:
        check_weak_transformer(transformer, weak)
    except ValueError as err:
        warnings.warn(f"init: {err}; the exported pipeline has no autoguidance", stacklevel=2)
        return defaults
    return defaults | {"weak_transformer": weak, "autoguidance": saved.get("autoguidance", 1.0)}


def _strategy(cfg: DiTExperiment):
    if cfg.train.strategy == "fsdp":
        return FSDP2Strategy(data_parallel_size=cfg.train.devices * cfg.train.num_nodes, tensor_parallel_size=1,
                             save_distributed_checkpoint=False)
    return cfg.train.strategy


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy with full-state checkpoints read through the safetensors checkpoint IO
    (Lightning's own loader expects torch.load files): every rank reads the file and keeps its shards."""

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        checkpoint = self.checkpoint_io.load_checkpoint(self.broadcast(checkpoint_path))
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, checkpoint.pop("state_dict"), options=options)
        for optimizer, state in zip(self.optimizers, checkpoint.pop("optimizer_states")):
            # saved keyed by parameter index (the plain torch layout); loading wants parameter names
            state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_NAME, self.model)
            set_optimizer_state_dict(self.model, optimizer, state, options=options)
        return checkpoint


def train_dit(cfg: DiTExperiment, callbacks: list[L.Callback] = ()) -> Path | None:
    """Train a LatentDiT (see :func:`ldlm.training.runner.run`); export the pipeline with the EMA weights to
    ``output_dir/pipeline`` and return its path on the first process (None on the others)."""
    return run(cfg, _prepare, callbacks)


def _prepare(cfg: DiTExperiment, out: Path) -> Job:
    d = cfg.diffusion
    scheduler = make_scheduler(d.scheduler, d.num_train_timesteps, d.beta_schedule, d.prediction_type, d.shift)
    vae, tokenizer = load_vae(cfg.vae)
    transformer = build_preset(LatentDiT, cfg.model, latent_channels=vae.config.latent_channels,
                               latents_per_block=vae.config.latents_per_block, max_blocks=cfg.data.max_blocks,
                               objective=d.objective, prediction_type=d.prediction_type, beta_schedule=d.beta_schedule,
                               num_train_timesteps=d.num_train_timesteps, cached_context=cfg.model.cached_context)
    if cfg.init is not None:
        load_transformer_weights(transformer, cfg.init)
    defaults = _sampling_defaults(cfg, transformer)
    pipeline = LatentDiffusionLMPipeline(vae, transformer, scheduler, tokenizer)
    pipeline.set_progress_bar_config(disable=True)

    def sample(module: LatentDiTModule) -> list[str]:
        pipeline.transformer = module.ema
        pipeline.vae.to(module.device)
        generator = torch.Generator(device=module.device).manual_seed(0)
        return pipeline(batch_size=cfg.sample.num_samples, num_inference_steps=cfg.sample.steps,
                        generator=generator).texts

    def export() -> Path:
        """The EMA weights of the exported checkpoint (written whole, however the model was sharded)."""
        state = load_tree(final_checkpoint(out, cfg.train))["state_dict"]
        model = LatentDiT.from_config(transformer.config)
        model.load_state_dict({k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")})
        with atomic_dir(out / "pipeline") as tmp:
            LatentDiffusionLMPipeline(vae.cpu(), model, scheduler, tokenizer, **defaults).save_pretrained(tmp)
        return out / "pipeline"

    data = LatentDataModule(cfg.data, vae, tokenizer, cfg.train.batch_size)
    samples = SampleTexts(sample, out / "samples.jsonl", cfg.sample.every)
    if d.distill_steps:
        teacher = LatentDiT.from_pretrained(Path(cfg.init) / "transformer").float().train()  # no dropout: as in fit
        if teacher.config.max_blocks != transformer.config.max_blocks:
            raise LdlmError(f"diffusion.distill_steps: the teacher in {cfg.init} has {teacher.config.max_blocks}-block "
                            f"windows, data.max_blocks is {transformer.config.max_blocks}; distil on the same windows")
        module = DistillDiTModule(transformer, asdict(cfg), teacher, _weak_teacher(cfg, teacher))
    else:
        module = LatentDiTModule(transformer, asdict(cfg))
    return Job(module, data, export, [samples], _strategy(cfg))
