"""Typed OmegaConf configs of the four trainers: YAML file + dotted command-line overrides, typed by dataclasses
that also check their values (``__post_init__``, run when the runner turns a loaded config into its dataclass)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldlm.baselines.causal_lm import CausalLM
from ldlm.dit.model import LatentDiT
from ldlm.dit.objective import DiffusionObjective, is_flow_scheduler, make_scheduler
from ldlm.errors import LdlmError
from ldlm.pipelines.latent_classifier import TASKS


@dataclass
class CorpusConfig:
    path: str = "builtin:restaurants"  # file (.jsonl/.txt/.csv), builtin:restaurants, or hf:NAME[:SPLIT]
    text_field: str = "text"
    limit: Optional[int] = None  # first N documents
    skip: int = 0  # drop the first N documents
    stride: int = 1  # then keep every stride-th document (spreads a subset over a sorted corpus)
    holdout_every: int = 0  # >0: documents i % holdout_every == 0 are held out (never trained on)


@dataclass
class DataConfig:
    train: list[CorpusConfig] = field(default_factory=lambda: [CorpusConfig()])
    block_length: int = 16
    val_fraction: float = 0.02
    seed: int = 0
    num_workers: int = 0


@dataclass
class TeacherConfig:
    name: str = "smollm2"  # registered name, local folder, hub id or a .gguf file
    gguf_file: Optional[str] = None  # a GGUF file inside the folder or hub repository of name
    layers: list[int] = field(default_factory=lambda: [10])
    context: int = 128  # tokens of left context the teacher reads before each chunk
    chunk: int = 256
    batch_tokens: int = 4096
    device_map: Optional[str] = None  # "auto" shards a large teacher over the available devices


@dataclass
class AlignConfig:
    loss: str = "repa"  # repa | vavae
    weight: float = 0.5  # 0 disables alignment (the teacher then only provides the tokenizer)
    warmup_steps: int = 0
    stop_step: Optional[int] = None
    head_hidden: int = 512
    margin_cos: float = 0.5
    margin_dist: float = 0.25
    dist_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.loss not in ("repa", "vavae"):
            raise LdlmError(f"align.loss must be 'repa' or 'vavae', got '{self.loss}'")


@dataclass
class ModelConfig:
    latents_per_block: int = 4
    latent_channels: int = 32
    d_model: int = 256
    d_embed: int = 128
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3  # more than init's: new layers are appended, starting as the identity
    dropout: float = 0.0
    freeze_encoder: bool = False  # train the decoder only (with ``init``): the latent code and its statistics stay
    context_blocks: int = 0  # the decoder also reads the latents of this many blocks on either side (an init without
    # them gets fresh context weights)


@dataclass
class LossConfig:
    kl_weight: float = 1e-3
    free_bits: float = 0.1  # nats per latent channel below which KL is not penalised
    token_dropout: float = 0.05  # encoder input tokens replaced by a mask vector
    latent_dropout: float = 0.05  # whole latent vectors zeroed before decoding
    latent_noise: float = 0.3  # max σ (standardized units) of Gaussian noise added to latents
    negatives: int = 2048  # unseen-vocabulary tokens sampled as extra softmax negatives per step
    context_dropout: float = 0.1  # probability a neighbour block is hidden from a context decoder while training


@dataclass
class TrainConfig:
    output_dir: str = "runs/vae"
    max_steps: int = 1000
    max_minutes: Optional[float] = None  # the run's total: a resumed run counts the minutes it already trained
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    val_every: int = 250
    log_every: int = 25
    checkpoint_every: int = 500
    accelerator: str = "auto"
    devices: int = 1  # per node
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (DiT: FSDP2 through Lightning's ModelParallelStrategy)
    precision: str = "32-true"
    seed: int = 0
    resume: bool = True  # continue from output_dir/checkpoints/last.safetensors when present
    early_stop: int = 0  # stop after this many validations without a lower val_loss and export the best (0: off)
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size", "val_every", "log_every", "checkpoint_every", "devices", "num_nodes"):
            if getattr(self, key) < 1:
                raise LdlmError(f"train.{key} must be positive, got {getattr(self, key)}")
        for key in ("warmup_steps", "early_stop"):
            if getattr(self, key) < 0:
                raise LdlmError(f"train.{key} must not be negative, got {getattr(self, key)}")
        if not self.lr > 0:
            raise LdlmError(f"train.lr must be positive, got {self.lr}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise LdlmError(f"train.max_minutes must be positive, got {self.max_minutes}")
        if self.early_stop and self.strategy == "fsdp":
            raise LdlmError("train.early_stop needs whole weights on every process; use it without strategy=fsdp")


@dataclass
class VAEExperiment:
    init: Optional[str] = None  # an exported VAE (+ tokenizer/) to start from; its shape overrides ``model``
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.data.block_length % self.model.latents_per_block:
            raise LdlmError("data.block_length must be a multiple of model.latents_per_block")
        if self.model.freeze_encoder and self.init is None:
            raise LdlmError("model.freeze_encoder needs init: a trained VAE whose encoder to keep")
        if self.model.context_blocks < 0:
            raise LdlmError(f"model.context_blocks must be 0 or more, got {self.model.context_blocks}")
        if not 0 <= self.loss.context_dropout < 1:
            raise LdlmError(f"loss.context_dropout must be in [0, 1), got {self.loss.context_dropout}")


@dataclass
class DiTDataConfig:
    train: list[CorpusConfig] = field(default_factory=lambda: [CorpusConfig()])
    max_blocks: int = 8  # window length in blocks (the DiT's positions); longer documents are cropped at random
    val_fraction: float = 0.02
    seed: int = 0
    num_workers: int = 0


@dataclass
class PresetConfig:
    """A model preset (a constructor of the model class: DiT tiny | small | base | large, autoregressive baseline
    tiny | small (≈ VAE decoder + DiT small) | base (≈ VAE decoder + DiT base)) with optional size overrides."""

    preset: str = "small"
    hidden_size: Optional[int] = None  # set any of these to override the preset
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: float = 4.0


@dataclass
class DiTModelConfig(PresetConfig):
    cached_context: bool = False  # context reads only context, at timestep 0: computed once per group (LatentDiT)


def check_preset(cls: type, cfg: PresetConfig) -> None:
    if cfg.preset not in cls.presets:
        raise LdlmError(f"model.preset must be one of {', '.join(cls.presets)}, got '{cfg.preset}'")


def build_preset(cls: type, cfg: PresetConfig, **kwargs):
    """``cls.<preset>(**kwargs)`` with the configured sizes; a shape the model refuses is one LdlmError line."""
    check_preset(cls, cfg)
    sizes = {k: v for k in ("hidden_size", "num_layers", "num_heads") if (v := getattr(cfg, k)) is not None}
    try:
        return getattr(cls, cfg.preset)(mlp_ratio=cfg.mlp_ratio, **kwargs, **sizes)
    except ValueError as err:
        raise LdlmError(f"config error in model: {err}") from None


@dataclass
class DiffusionConfig:
    objective: str = "vp"  # vp | flow
    prediction_type: str = "v_prediction"  # vp: epsilon | v_prediction | sample (flow always predicts velocity)
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    timestep_sampling: str = "uniform"  # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    min_snr_gamma: Optional[float] = None  # Min-SNR-γ loss weighting (e.g. 5.0); None: unweighted
    scheduler: str = "dpm++"  # saved with the pipeline: ddpm | ddim | dpm++ | euler | unipc | flow-euler | flow-heun
    shift: float = 1.0  # flow schedulers' timestep shift
    self_condition: float = 0.5  # probability a training batch feeds back the model's own x0 estimate
    context_prob: float = 0.5  # probability a training window keeps its first blocks clean as context
    infill_prob: float = 0.0  # probability the clean context is instead a random subset of blocks (infilling)
    context_dropout: float = 0.1  # context swapped for the null condition (classifier-free guidance)
    ema_decay: float = 0.999
    distill_steps: int = 0  # N > 0: distil init's K·N-step DDIM sampler into N steps (needs init and scheduler ddim)
    distill_substeps: int = 2  # K, the teacher's DDIM steps per student step (2: progressive distillation's halving)
    distill_autoguidance: float = 1.0  # > 1: the teacher is autoguided at this weight against init's weak_transformer

    def __post_init__(self) -> None:
        if self.distill_substeps < 2:  # OmegaConf has checked the type
            raise LdlmError(f"diffusion.distill_substeps must be an integer ≥ 2, got {self.distill_substeps}")
        if self.distill_steps and (self.objective != "vp" or self.scheduler != "ddim" or self.distill_steps < 1
                                   or self.prediction_type == "epsilon"
                                   or self.num_train_timesteps % (self.distill_substeps * self.distill_steps)):
            raise LdlmError(f"diffusion.distill_steps {self.distill_steps} needs the vp objective with v_prediction "
                            f"or sample, scheduler ddim and a teacher step count K·N (K = distill_substeps, "
                            f"{self.distill_substeps}) that divides num_train_timesteps ({self.num_train_timesteps})")
        if not (math.isfinite(self.distill_autoguidance) and self.distill_autoguidance >= 1):
            raise LdlmError(f"diffusion.distill_autoguidance must be a finite number ≥ 1 (1: off), got "
                            f"{self.distill_autoguidance}")
        if self.distill_autoguidance > 1 and not self.distill_steps:
            raise LdlmError("diffusion.distill_autoguidance needs diffusion.distill_steps: it guides the teacher")
        if self.distill_substeps != 2 and not self.distill_steps:
            raise LdlmError("diffusion.distill_substeps needs diffusion.distill_steps: it sets the teacher's steps")
        try:
            scheduler = make_scheduler(self.scheduler, self.num_train_timesteps, self.beta_schedule,
                                       self.prediction_type, self.shift)
            DiffusionObjective(self.objective, self.prediction_type, timestep_sampling=self.timestep_sampling,
                               min_snr_gamma=self.min_snr_gamma)
        except (ValueError, NotImplementedError) as err:  # diffusers raises the latter for an unknown beta_schedule
            raise LdlmError(f"config error in diffusion: {str(err).splitlines()[0]}") from None
        if is_flow_scheduler(scheduler) != (self.objective == "flow"):
            raise LdlmError(f"diffusion.scheduler does not fit diffusion.objective: {self.scheduler} samples "
                            f"{'flow' if is_flow_scheduler(scheduler) else 'vp'} models, the objective is "
                            f"{self.objective}")


@dataclass
class SampleConfig:
    every: int = 500  # decode samples to text every N steps (0: never)
    num_samples: int = 4
    steps: int = 25


@dataclass
class DiTExperiment:
    vae: str = "checkpoints/ldlm-e2e-smollm2"  # exported VAE (training output, pipeline, or VAE folder + tokenizer/)
    init: Optional[str] = None  # a pipeline folder whose transformer weights start training (same shape); the export
    # keeps its weak transformer, autoguidance, temperature and new_blocks unless the distillation is guided (DESIGN.md)
    data: DiTDataConfig = field(default_factory=DiTDataConfig)
    model: DiTModelConfig = field(default_factory=DiTModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/dit", lr=3e-4))

    def __post_init__(self) -> None:
        check_preset(LatentDiT, self.model)
        if self.diffusion.distill_steps and self.init is None:
            raise LdlmError("diffusion.distill_steps needs init: the pipeline whose DiT is the teacher")


@dataclass
class ARDataConfig:
    train: list[CorpusConfig] = field(default_factory=lambda: [CorpusConfig()])
    max_tokens: int = 80  # predicted positions per window (the DiT's 5 blocks of 16); longer documents are cropped
    val_fraction: float = 0.02  # the same document-level split as the DiT's for the same corpus and seed
    seed: int = 0
    num_workers: int = 0


@dataclass
class ARSampleConfig:
    every: int = 500  # write unconditional samples to samples.jsonl every N steps (0: never)
    num_samples: int = 4
    max_new_tokens: int = 80
    top_p: float = 1.0


@dataclass
class ARExperiment:
    vae: str = "checkpoints/ldlm-e2e-smollm2"  # VAE or pipeline folder: its tokenizer and fixed token table are used
    init: Optional[str] = None  # an exported baseline (ldlm train-ar output) whose weights start training (same shape)
    data: ARDataConfig = field(default_factory=ARDataConfig)
    model: PresetConfig = field(default_factory=PresetConfig)
    sample: ARSampleConfig = field(default_factory=ARSampleConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/ar", lr=3e-4))

    def __post_init__(self) -> None:
        if self.data.max_tokens < 1:
            raise LdlmError(f"data.max_tokens must be positive, got {self.data.max_tokens}")
        if not 0 < self.sample.top_p <= 1:
            raise LdlmError(f"sample.top_p must lie in (0, 1], got {self.sample.top_p}")
        check_preset(CausalLM, self.model)


@dataclass
class ClassifierDataConfig:
    path: str = "../shared/data/e2e/train.jsonl"  # multilabel: E2E JSON lines {"mr", "text"}; tagging: Brown docs
    max_blocks: int = 5  # window length in blocks; shorter texts are padded with end-of-text block latents
    holdout_every: int = 10  # validation: every n-th distinct MR (multilabel) or document (tagging), never trained on
    min_label_count: int = 5  # multilabel: labels seen fewer times in the file are dropped
    noise_prob: float = 0.5  # share of training batches whose latents get Gaussian noise ...
    noise_std: float = 0.5  # ... of a per-window σ drawn uniformly in [0, noise_std]
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.holdout_every < 2:
            raise LdlmError(f"data.holdout_every must be at least 2, got {self.holdout_every}")
        if self.max_blocks < 1:
            raise LdlmError(f"data.max_blocks must be positive, got {self.max_blocks}")
        if not 0 <= self.noise_prob <= 1 or self.noise_std < 0:
            raise LdlmError("data.noise_prob must lie in [0, 1] and data.noise_std be non-negative")


@dataclass
class ClassifierModelConfig:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise LdlmError(f"model.hidden_size {self.hidden_size} is not a multiple of model.num_heads "
                            f"{self.num_heads}")


@dataclass
class ClassifierExperiment:
    vae: str = "checkpoints/ldlm-e2e-smollm2"  # the VAE whose standardized latents the classifier reads
    task: str = "multilabel"  # multilabel (E2E content labels) | tagging (a coarse POS tag per token)
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/classifier", max_steps=1500,
                                                                   val_every=500, checkpoint_every=500))

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise LdlmError(f"task must be one of {', '.join(TASKS)}, got '{self.task}'")


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    return f"config error at '{key}': {msg}" if key else f"config error: {msg}"


def load_config(schema: type, path: str | Path | None = None, overrides: list[str] = ()) -> object:
    """Merge ``schema`` defaults, a YAML file and ``key=value`` overrides; any mistake is one LdlmError line."""
    try:
        cfg = OmegaConf.structured(schema)
        if path is not None:
            if not Path(path).is_file():
                raise LdlmError(f"config file not found: {path}")
            try:
                cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark is not None else ""
                raise LdlmError(f"{path}: YAML syntax error{where}: {getattr(err, 'problem', None) or err}") from None
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise LdlmError(f"override '{bad[0]}' is not of the form key=value")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise LdlmError(_describe(err)) from None
    except (TypeError, ValueError) as err:
        raise LdlmError(f"config error: {err} (list entries are set in the YAML file, not with overrides)") from None
    return cfg
