"""Stage 2 training: a LatentDiT on frozen-VAE latents, as a LightningModule (DDP or FSDP2), exported as a pipeline."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import OmegaConf
from torch import nn
from torchmetrics import MeanMetric

from ldlm.checkpoint_io import atomic_dir
from ldlm.config import DiTExperiment
from ldlm.dit.model import LatentDiT
from ldlm.dit.objective import DiffusionObjective, make_scheduler
from ldlm.errors import LdlmError
from ldlm.latents import LatentDataModule, load_vae
from ldlm.optim import adamw_warmup_cosine
from ldlm.pipeline import LatentDiffusionLMPipeline
from ldlm.trainer import fit

BUCKETS = 4  # the loss is also logged per quarter of the timestep range


class LatentDiTModule(L.LightningModule):
    """Denoising loss on windows of block latents, with random clean-context prefixes (or block subsets, for
    infilling), context dropout (CFG), self-conditioning and an EMA copy of the weights (used for validation,
    samples and export)."""

    def __init__(self, transformer: LatentDiT, cfg: dict) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["transformer"])
        self.transformer = transformer
        self.ema = copy.deepcopy(transformer).requires_grad_(False)
        d, self.train_cfg = cfg["diffusion"], cfg["train"]
        self.diff = d
        self.objective = DiffusionObjective(d["objective"], d["prediction_type"], d["num_train_timesteps"],
                                            d["beta_schedule"], d["timestep_sampling"], d["logit_mean"],
                                            d["logit_std"])
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
        """Per-window loss (over non-context latents) and each window's timestep bucket."""
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
        t = self.objective.sample_timesteps(b, x0.device, generator)
        x_in = torch.where(context[..., None], x0, self.objective.add_noise(x0, noise, t))
        model = self.transformer if train else self.ema
        drop = rand(b) < self.diff["context_dropout"] if train else None
        self_cond = None
        if train and self._use_self_condition():
            with torch.no_grad():
                self_cond = self.objective.to_x0(x_in, model(x_in, t, None, context, drop), t).detach()
        output = model(x_in, t, self_cond, context, drop)
        per_latent = (output - self.objective.target(x0, noise, t)).pow(2).mean(-1)
        weight = (~context).float()
        per_sample = (per_latent * weight).sum(1) / weight.sum(1).clamp(min=1)
        bucket = (t / self.objective.num_train_timesteps * BUCKETS).long().clamp(max=BUCKETS - 1)
        return per_sample, bucket

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        per_sample, bucket = self._common_step(batch, train=True)
        loss = per_sample.mean()
        self.log("train/loss", loss)
        for i in range(BUCKETS):
            if (bucket == i).any():  # training logs are per process and per step: no cross-rank sync to pair up
                self.log(f"train/loss_t{i}", per_sample[bucket == i].mean())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        generator = torch.Generator(device=batch["latents"].device).manual_seed(batch_idx)
        per_sample, bucket = self._common_step(batch, train=False, generator=generator)
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


class SampleTexts(L.Callback):
    """Every ``every`` steps, decode a few unconditional samples of the EMA model and append them to
    ``samples.jsonl`` (all ranks sample, so sharded models work; rank 0 writes)."""

    def __init__(self, pipeline: LatentDiffusionLMPipeline, path: Path, every: int, num_samples: int,
                 steps: int) -> None:
        self.pipeline, self.path, self.every, self.num_samples, self.steps = pipeline, path, every, num_samples, steps

    def on_train_batch_end(self, trainer: L.Trainer, module: LatentDiTModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every or step % self.every:
            return
        self.pipeline.transformer = module.ema
        self.pipeline.vae.to(module.device)
        self.pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator(device=module.device).manual_seed(0)
        texts = self.pipeline(batch_size=self.num_samples, num_inference_steps=self.steps, generator=generator).texts
        if trainer.is_global_zero:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "texts": texts}) + "\n")
            print(f"step {step} samples: " + " | ".join(t[:80] for t in texts[:2]), flush=True)


def build_transformer(cfg: DiTExperiment, latent_channels: int, latents_per_block: int) -> LatentDiT:
    m, d = cfg.model, cfg.diffusion
    presets = {"tiny": LatentDiT.tiny, "small": LatentDiT.small, "base": LatentDiT.base, "large": LatentDiT.large}
    if m.preset not in presets:
        raise LdlmError(f"model.preset must be one of {', '.join(presets)}, got '{m.preset}'")
    overrides = {k: getattr(m, k) for k in ("hidden_size", "num_layers", "num_heads") if getattr(m, k) is not None}
    return presets[m.preset](latent_channels=latent_channels, latents_per_block=latents_per_block,
                             max_blocks=cfg.data.max_blocks, mlp_ratio=m.mlp_ratio, objective=d.objective,
                             prediction_type=d.prediction_type, beta_schedule=d.beta_schedule,
                             num_train_timesteps=d.num_train_timesteps, **overrides)


def load_transformer_weights(transformer: LatentDiT, pipeline: str) -> None:
    """Start from the transformer weights of an exported pipeline, which must have the same shape."""
    folder = Path(pipeline) / "transformer"
    if not (folder / "config.json").is_file():
        raise LdlmError(f"init: {pipeline} holds no transformer/ folder")
    trained = LatentDiT.from_pretrained(folder)
    diff = sorted(k for k in transformer.config if not k.startswith("_") and trained.config.get(k) != transformer.config[k])
    if diff:
        raise LdlmError(f"init: the transformer in {pipeline} differs from the configured one in {', '.join(diff)}")
    transformer.load_state_dict(trained.state_dict())


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


def _full_state(module: LatentDiTModule, trainer: L.Trainer) -> dict[str, torch.Tensor]:
    """The EMA weights, gathered from all ranks when sharded."""
    if _sharded(trainer):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module.ema, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in module.ema.state_dict().items()}


def _sharded(trainer: L.Trainer) -> bool:
    return isinstance(trainer.strategy, ModelParallelStrategy)


def train_dit(cfg: DiTExperiment, callbacks: list[L.Callback] = ()) -> Path | None:
    """Train a LatentDiT from a validated config; export the pipeline (EMA weights) to ``output_dir/pipeline``.
    Returns its path on the first process (None on the others)."""
    L.seed_everything(cfg.train.seed, workers=True)
    d = cfg.diffusion
    try:
        scheduler = make_scheduler(d.scheduler, d.num_train_timesteps, d.beta_schedule, d.prediction_type, d.shift)
        DiffusionObjective(d.objective, d.prediction_type, timestep_sampling=d.timestep_sampling)
    except (ValueError, NotImplementedError) as err:  # diffusers raises the latter for an unknown beta_schedule
        raise LdlmError(f"config error in diffusion: {str(err).splitlines()[0]}") from None
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    vae, tokenizer = load_vae(cfg.vae)
    transformer = build_transformer(cfg, vae.config.latent_channels, vae.config.latents_per_block)
    if cfg.init is not None:
        load_transformer_weights(transformer, cfg.init)
    pipeline = LatentDiffusionLMPipeline(vae, transformer, scheduler, tokenizer)
    try:
        pipeline.objective()
    except ValueError as err:
        raise LdlmError(f"diffusion.scheduler does not fit diffusion.objective: {err}") from None
    data = LatentDataModule(cfg.data, vae, tokenizer, cfg.train.batch_size)
    module = LatentDiTModule(transformer, OmegaConf.to_container(cfg))
    samples = SampleTexts(pipeline, out / "samples.jsonl", cfg.sample.every, cfg.sample.num_samples, cfg.sample.steps)
    trainer = fit(module, data, cfg.train, out, [samples, *callbacks], _strategy(cfg))
    state = _full_state(module, trainer)
    if trainer.is_global_zero:
        export = LatentDiT.from_config(transformer.config)
        export.load_state_dict(state)
        pipeline = LatentDiffusionLMPipeline(vae.cpu(), export, scheduler, tokenizer)
        with atomic_dir(out / "pipeline") as tmp:
            pipeline.save_pretrained(tmp)
        return out / "pipeline"
    return None
