"""The one training runner every trainer uses: validate the config, seed, save it, fit with the shared Lightning
Trainer (CSV + TensorBoard logs, periodic and final safetensors checkpoints in ``output_dir/checkpoints``, automatic
resume from ``last.safetensors``), and export the model on the first process."""
from __future__ import annotations

import csv
import json
import os
import re
import warnings
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import OmegaConf

from ldlm.training.checkpoint_io import SafetensorsCheckpointIO, load_tree
from ldlm.training.config import TrainConfig


@dataclass
class Job:
    """What a trainer hands the runner: the module and data to fit, its own callbacks and strategy, and ``export``,
    which writes the trained model under the output folder on the first process and returns where."""

    module: L.LightningModule
    data: L.LightningDataModule
    export: Callable[[], Path]
    callbacks: list[L.Callback] = field(default_factory=list)
    strategy: object = None


def run(cfg, prepare: Callable[[object, Path], Job], callbacks: list[L.Callback] = ()) -> Path | None:
    """Validate ``cfg`` (a loaded config or its dataclass), seed, save it to ``output_dir/config.yaml``, build the
    job with ``prepare(cfg, output_dir)``, fit it and export; returns the export's path on the first process (None on
    the others)."""
    cfg = cfg if is_dataclass(cfg) else OmegaConf.to_object(cfg)  # the dataclasses check their values
    L.seed_everything(cfg.train.seed, workers=True)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    job = prepare(cfg, out)
    trainer = fit(job.module, job.data, cfg.train, out, [*job.callbacks, *callbacks], job.strategy)
    if cfg.train.early_stop:  # export the best validated weights, not the last ones
        job.module.load_state_dict(load_tree(final_checkpoint(out, cfg.train))["state_dict"])
    return job.export() if trainer.is_global_zero else None


def final_checkpoint(out: Path, cfg: TrainConfig) -> Path:
    """The checkpoint a run exports: the best validated one under early stopping, else the last one."""
    best = out / "checkpoints" / "best.safetensors"
    return best if cfg.early_stop and best.is_file() else out / "checkpoints" / "last.safetensors"


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it appends to an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="", encoding="utf-8") as handle:
                self.metrics_keys = next(csv.reader(handle), [])


class HistoryCSVLogger(CSVLogger):
    """A CSV logger whose ``logs/metrics.csv`` keeps the history of every earlier run of a resumed one (steps trained
    again after a kill appear twice)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def set_aside(paths: list[Path]) -> None:
    """Rename an earlier run's files out of a fresh run's way, under the first number free for all of them:
    ``metrics.csv`` → ``metrics.1.csv``, ``last.safetensors`` → ``last.1.safetensors``."""
    present = [path for path in paths if path.is_file()]
    number = next(n for n in range(1, 10_000) if not any(_numbered(path, n).exists() for path in present))
    for path in present:
        path.rename(_numbered(path, number))


def _numbered(path: Path, number: int) -> Path:
    return path.with_suffix(f".{number}{path.suffix}")


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint without a version counter, which reads a copied run's saved state relative to its
    own folder: a run moved to a new ``output_dir`` resumes with its files and its best score (forgotten only when
    its file was not copied along), and keeps writing ``last.safetensors``. Writes safetensors."""

    FILE_EXTENSION = ".safetensors"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(enable_version_counter=False, **kwargs)

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"ModelCheckpoint{kwargs!r}"  # the key of checkpoints written before this class, which resume as well

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath:
            def here(path: str) -> str:
                inside = bool(path) and os.path.commonpath([saved, path]) == saved
                return os.path.join(self.dirpath, os.path.relpath(path, saved)) if inside else path

            state_dict = {
                **state_dict, "dirpath": self.dirpath,
                **{key: here(state_dict.get(key, "")) for key in
                   ("best_model_path", "kth_best_model_path", "last_model_path")},
                "best_k_models": {here(path): score for path, score in state_dict.get("best_k_models", {}).items()
                                  if os.path.isfile(here(path))},
            }
        super().load_state_dict(state_dict)


class RunEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping, except that a resumed run keeps the configured patience instead of the saved one."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "patience": self.patience})


def make_loggers(out: Path) -> list:
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers = [HistoryCSVLogger(out, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(out, name="tb", version=""))
    except ImportError:
        pass
    return loggers


def fit(module: L.LightningModule, data: L.LightningDataModule, cfg: TrainConfig, out: Path,
        callbacks: list[L.Callback] = (), strategy=None) -> L.Trainer:
    """Train ``module`` on ``data`` as ``cfg`` says (resuming from the last checkpoint when ``cfg.resume``; under
    ``cfg.early_stop`` also keeping ``best.safetensors`` and stopping after that many validations without a better
    ``val/loss``; a fresh run sets an earlier run's log and checkpoints aside), write a checkpoint of the final step
    and ``metrics.json`` (first process), and return the trainer."""
    ckpt_dir = out / "checkpoints"
    callbacks = [RunCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=cfg.checkpoint_every),
                 *callbacks]
    if cfg.early_stop:
        best = RunCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1)
        callbacks += [best, RunEarlyStopping(monitor="val/loss", mode="min", patience=cfg.early_stop,
                                             check_on_train_epoch_end=False)]
    last = ckpt_dir / "last.safetensors"
    resume = cfg.resume and last.is_file()
    if not resume and rank_zero_only.rank == 0:
        set_aside([out / "logs" / "metrics.csv", ckpt_dir / "best.safetensors", last, *_periodic(ckpt_dir)])
    trainer = L.Trainer(
        max_steps=cfg.max_steps, max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy if strategy is None else strategy, precision=cfg.precision,
        val_check_interval=cfg.val_every, check_val_every_n_epoch=None, log_every_n_steps=cfg.log_every,
        logger=make_loggers(out), callbacks=callbacks, plugins=[SafetensorsCheckpointIO()],
        enable_progress_bar=cfg.progress_bar, num_sanity_val_steps=0,
    )
    if trainer.is_global_zero:
        tidy_checkpoints(ckpt_dir)
    with warnings.catch_warnings():
        # expected here: a fresh run has set the earlier run's files aside, and a resumed one is meant to continue
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        if resume:  # what Lightning says about every resume
            warnings.filterwarnings("ignore", message=r".*checkpoint that ended before the epoch ended")
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    trainer.save_checkpoint(last)  # the final step too (a time limit stops between periodic checkpoints)
    if trainer.is_global_zero:
        tidy_checkpoints(ckpt_dir)
        metrics = {**last_logged(out / "logs" / "metrics.csv"),
                   **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        if cfg.early_stop and best.best_model_score is not None:  # the score of the weights that are exported
            metrics["best_val_loss"] = float(best.best_model_score)
        (out / "metrics.json").write_text(json.dumps({"global_step": trainer.global_step, **metrics}, indent=2))
    return trainer


def _periodic(ckpt_dir: Path) -> list[Path]:
    """This run's periodic checkpoints (``epoch=E-step=S.safetensors``; set-aside ones are not), oldest first."""
    found = [(int(m.group(1)), path) for path in ckpt_dir.glob("*.safetensors")
             if (m := re.fullmatch(r"epoch=\d+-step=(\d+)\.safetensors", path.name))]
    return [path for _, path in sorted(found)]


def tidy_checkpoints(ckpt_dir: Path) -> None:
    """Delete what killed writes leave in ``ckpt_dir``: hidden temporary files, and every periodic checkpoint but
    the newest (a resumed run no longer knows it wrote the older ones)."""
    for tmp in ckpt_dir.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)
    for stale in _periodic(ckpt_dir)[:-1]:
        stale.unlink(missing_ok=True)


def last_logged(log: Path) -> dict[str, float]:
    """The last value of every metric in a ``metrics.csv`` (empty when there is none)."""
    if not log.is_file():
        return {}
    with open(log, newline="", encoding="utf-8") as handle:
        return {k: float(v) for row in csv.DictReader(handle) for k, v in row.items()
                if v not in ("", None) and k not in ("epoch", "step")}


class SampleTexts(L.Callback):
    """Every ``every`` steps (0: never), ``sample(module)`` a few texts on every process (sharded models need all
    ranks) and append them to ``path`` as a JSON line from the first process."""

    def __init__(self, sample: Callable[[L.LightningModule], list[str]], path: Path, every: int) -> None:
        self.sample, self.path, self.every = sample, path, every

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every or step % self.every:
            return
        texts = self.sample(module)
        if trainer.is_global_zero:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "texts": texts}) + "\n")
            print(f"step {step} samples: " + " | ".join(t[:80] for t in texts[:2]), flush=True)
