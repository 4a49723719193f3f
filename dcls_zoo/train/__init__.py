"""Training and fine-tuning with Accelerate: one loop for image classification, audio tagging, causal language
modelling and SNN classification; the papers' recipes as presets; the digits demo (`dcls-zoo train`).

Submodules import torch/timm/accelerate lazily where they can; `from dcls_zoo.train import run_training` is the
programmatic entry point.
"""
from .config import PRESETS, TrainConfig, command_line, config_from_preset  # noqa: F401


def __getattr__(name: str):
    # heavier pieces load on first use
    if name in ("Trainer", "NonFiniteLossError"):
        from . import trainer

        return getattr(trainer, name)
    if name == "run_training":
        from .run import run_training

        return run_training
    if name == "parameter_groups":
        from .optim import parameter_groups

        return parameter_groups
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
