"""Training curves: the metrics log (`logs/metrics.jsonl`, written by `callbacks.MetricsLogger`) read and plotted."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

_logger = logging.getLogger(__name__)


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
