"""`dcls-zoo train` arguments, generated from `TrainConfig` (one flag per field, help text from its metadata)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from .config import DISTRIBUTED, MIXED_PRECISION, PRESETS, SCHEDULES, TASKS, TrainConfig, config_from_preset

DEFAULT_PRESET = "digits"
# Flags that name other data or another task: given without --preset, they start from the plain defaults
# instead of the digits preset (whose 1-channel 32-pixel settings would not fit other data).
_LEAVES_DEFAULT_PRESET = ("dataset", "task")
_CHOICES = {"task": tuple(TASKS), "mixed_precision": MIXED_PRECISION, "sched": SCHEDULES,
            "report_to": ("auto", "tensorboard", "none"), "distributed": DISTRIBUTED}


def _json_dict(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS) + ["none"],
                        help=f"named recipe applied before the other flags (default: {DEFAULT_PRESET!r} unless "
                             "--dataset or --task is given; 'none' for the plain defaults)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        text = f.metadata.get("help", "")
        default = getattr(defaults, f.name)
        # a help text that states its own default ("default: the model's pretrained_cfg") is the only one printed
        shown = text if "default" in text else f"{text} (default: {default})" if text else f"(default: {default})"
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=shown)
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("tuple"):
            kwargs.update(nargs="+", type=float, metavar="X")
        elif kind.startswith("dict"):
            kwargs.update(type=_json_dict, metavar="JSON")
        elif kind.startswith("int"):
            kwargs["type"] = int
        elif kind.startswith("float"):
            kwargs["type"] = float
        if f.name in _CHOICES:
            kwargs["choices"] = _CHOICES[f.name]
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str | None]:
    """The run's `TrainConfig` and the preset name it started from."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    for name in ("scale", "ratio", "betas", "mean", "std"):
        if name in values and values[name] is not None:
            values[name] = tuple(values[name])
    preset = args.preset
    if preset is None and not any(name in values for name in _LEAVES_DEFAULT_PRESET):
        preset = DEFAULT_PRESET
    if preset == "none":
        preset = None
    return config_from_preset(preset, **values), preset
