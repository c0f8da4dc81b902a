"""The Lightning Trainer every ldlm training run uses: CSV (+ TensorBoard) logs, periodic and final safetensors
checkpoints in ``output_dir/checkpoints``, and automatic resume from ``last.safetensors``."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from ldlm.checkpoint_io import SafetensorsCheckpointIO
from ldlm.config import TrainConfig


def make_loggers(out: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(out, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(out, name="tb", version=""))
    except ImportError:
        pass
    return loggers


def fit(module: L.LightningModule, data: L.LightningDataModule, cfg: TrainConfig, out: Path,
        callbacks: list[L.Callback] = (), strategy=None) -> L.Trainer:
    """Train ``module`` on ``data`` as ``cfg`` says (resuming from the last checkpoint when ``cfg.resume``), write a
    checkpoint of the final step and ``metrics.json`` (first process), and return the trainer."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = out / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=cfg.checkpoint_every)
    checkpoint.FILE_EXTENSION = ".safetensors"
    trainer = L.Trainer(
        max_steps=cfg.max_steps, max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy if strategy is None else strategy, precision=cfg.precision,
        val_check_interval=cfg.val_every, check_val_every_n_epoch=None, log_every_n_steps=cfg.log_every,
        logger=make_loggers(out), callbacks=[checkpoint, *callbacks], plugins=[SafetensorsCheckpointIO()],
        enable_progress_bar=cfg.progress_bar, num_sanity_val_steps=0,
    )
    last = ckpt_dir / "last.safetensors"
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if cfg.resume and last.is_file() else None)
    trainer.save_checkpoint(last)  # the final step too (a time limit stops between periodic checkpoints)
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (out / "metrics.json").write_text(json.dumps({"global_step": trainer.global_step, **metrics}, indent=2))
    return trainer
