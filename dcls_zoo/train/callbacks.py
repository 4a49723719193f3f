"""Training callbacks: DCLS position clamping, the SNN sigma schedule, JSONL/TensorBoard logging, curve plots.

A callback overrides any of `on_train_begin`, `on_step_end` (after each optimiser update), `on_epoch_end`,
`on_evaluate` and `on_train_end`; each receives the trainer, whose `model` is the unwrapped model.
"""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from ..layers import DclsNd
from .distributed import clamp_dcls_positions

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

_logger = logging.getLogger(__name__)


class Callback:
    def on_train_begin(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer") -> None: ...
    def on_epoch_end(self, trainer: "Trainer") -> None: ...
    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...


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


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; ValueError naming the file and line when one is not a JSON object."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err}); fix or delete the log") from None
            if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
                raise ValueError(f"{path}, line {number}: not a metrics record (a JSON object with an integer "
                                 "step); fix or delete the log")
            records.append(record)
    return records


def plot_training_curves(records: list[dict[str, Any]], path: str, main_metric: str | None = None,
                         title: str | None = None) -> str | None:
    """PNG with training loss and learning rate against steps and the evaluation metrics, titled `title` (e.g.
    model and data); every logged point is marked, so a short run still shows its points. None without
    matplotlib (install the `train` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.warning("matplotlib is not installed: no training-curve PNG (pip install 'dcls-zoo[train]')")
        return None
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if any(k.startswith("eval_") for k in r)]
    eval_keys = [k for k in (f"eval_{main_metric}", "eval_loss") if any(k in r for r in evals)]
    fig, axes = plt.subplots(1, 2 + (len(eval_keys) > 1), figsize=(4.2 * (2 + (len(eval_keys) > 1)), 3.4))
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], "o-", markersize=3,
            label="train loss (mean per log window, augmented)")
    if "eval_loss" in eval_keys:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend(fontsize="small")
    ax = axes[1]
    ax.plot([r["step"] for r in train], [r["lr"] for r in train], "o-", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    if len(eval_keys) > 1:
        key = eval_keys[0]
        ax = axes[2]
        ax.plot([r["step"] for r in evals if key in r], [r[key] for r in evals if key in r], "o-")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key.replace("eval_", "eval "))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
