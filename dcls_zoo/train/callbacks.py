"""Training callbacks: DCLS position clamping, the SNN sigma schedule, JSONL/TensorBoard logging.

A callback overrides any of `on_train_begin`, `on_step_end` (after each optimiser update), `on_epoch_end`,
`on_evaluate` and `on_train_end`; each receives the trainer (`TrainerView`: what callbacks read of it), whose
`model` is the unwrapped model.
"""
from __future__ import annotations

import json
from typing import Any, Protocol

import torch.nn as nn

from ..layers import DclsNd
from .config import TrainConfig
from .distributed import clamp_dcls_positions


class TrainerView(Protocol):
    """What the callbacks here read of the `dcls_zoo.train.trainer.Trainer` that calls them (a protocol, so this
    module does not import the trainer, which imports it)."""

    cfg: TrainConfig
    model: nn.Module  # unwrapped
    accelerator: Any  # accelerate.Accelerator
    trackers_enabled: bool
    epoch: int
    global_step: int
    total_steps: int
    last_loss: float
    samples_per_second: float

    @property
    def epoch_progress(self) -> float: ...

    @property
    def current_lr(self) -> float: ...


class Callback:
    def on_train_begin(self, trainer: TrainerView) -> None: ...
    def on_step_end(self, trainer: TrainerView) -> None: ...
    def on_epoch_end(self, trainer: TrainerView) -> None: ...
    def on_evaluate(self, trainer: TrainerView, metrics: dict[str, float]) -> None: ...
    def on_train_end(self, trainer: TrainerView) -> None: ...


def has_dcls_layers(model: nn.Module) -> bool:
    return any(isinstance(m, DclsNd) for m in model.modules())


class ClampDclsPositions(Callback):
    """Clamp every DCLS position into its kernel after each optimiser update (the DCLS training rule)."""

    def on_train_begin(self, trainer):
        clamp_dcls_positions(trainer.model)

    def on_step_end(self, trainer):
        # the copy the optimizer updates: FSDP2 shards, DeepSpeed's fp32 master partitions (distributed.py)
        clamp_dcls_positions(trainer.model)


class SigmaScheduleCallback(Callback):
    """The SNN-delays per-epoch decay of the Gaussian delay widths (`dcls_zoo.models.snn_delays.SigmaSchedule`),
    stepped after every finished epoch. Its state is the SIG values themselves, which checkpoints hold."""

    def __init__(self, model: nn.Module, num_epochs: int):
        from ..models.snn_delays import SigmaSchedule

        self.schedule = SigmaSchedule(model, epochs=num_epochs)

    def on_epoch_end(self, trainer):
        self.schedule.step(trainer.epoch)


def has_scheduled_sigma(model: nn.Module) -> bool:
    """True for models with 1-D DCLS delays whose widths are frozen (decayed by schedule, not learned)."""
    from ..layers import Dcls1d

    return any(isinstance(m, Dcls1d) and m.SIG is not None and not m.SIG.requires_grad for m in model.modules())


class MetricsLogger(Callback):
    """Writes one JSON object per logged step and per evaluation to `<logging_dir>/metrics.jsonl`; mirrors the
    values to the Accelerate trackers (TensorBoard) when enabled."""

    def __init__(self, path: str):
        self.path = path
        self._losses: list[float] = []

    def _write(self, trainer, record: dict[str, Any]) -> None:
        if not trainer.accelerator.is_main_process:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if trainer.trackers_enabled:
            values = {k: v for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
            trainer.accelerator.log(values, step=record["step"])

    def on_step_end(self, trainer):
        self._losses.append(trainer.last_loss)
        if trainer.global_step % trainer.cfg.log_every == 0 or trainer.global_step == trainer.total_steps:
            # mean training loss over the steps since the last record
            loss = sum(self._losses) / len(self._losses)
            self._losses.clear()
            self._write(trainer, {"step": trainer.global_step, "epoch": round(trainer.epoch_progress, 4),
                                  "loss": loss, "lr": trainer.current_lr,
                                  "samples_per_second": round(trainer.samples_per_second, 2)})

    def on_evaluate(self, trainer, metrics):
        self._write(trainer, {"step": trainer.global_step, "epoch": round(trainer.epoch_progress, 4),
                              **{f"eval_{k}": v for k, v in metrics.items()}})
