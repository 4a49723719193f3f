"""Optimiser parameter groups with the papers' DCLS rules, and the optimiser/scheduler from timm's factories.

Groups (built by `dcls_zoo.layers.dcls_parameter_groups`):
- DCLS positions and widths (P, SIG): learning rate x `position_lr_scale` (5 in the DCLS papers), no weight
  decay;
- no weight decay: 1-D tensors (biases, norms, learnable-activation coefficients), parameters of the zoo's
  learnable activation modules whatever their shape, and the model's own `no_weight_decay()` names;
- everything else: the configured weight decay.
The scale is stored as timm's `lr_scale`, which timm's schedulers apply at every update.
"""
from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn

from ..layers import dcls_parameter_groups
from .config import TrainConfig

_logger = logging.getLogger(__name__)


def parameter_groups(model: nn.Module, weight_decay: float, position_lr_scale: float = 5.0) -> list[dict[str, Any]]:
    """Three optimiser groups (decay, no_decay, dcls_positions); empty groups are left out.

    `dcls_zoo.layers.dcls_parameter_groups` builds them (the same groups users pass to timm's or HF's optimizers);
    each has a `name` and the list of parameter `names` for logging and tests.
    """
    out = dcls_parameter_groups(model, weight_decay=weight_decay, position_lr_scale=position_lr_scale)
    for g in out:
        _logger.info("optimizer group %s: %d tensors, weight decay %g, lr scale %g", g["name"], len(g["params"]),
                     g["weight_decay"], g.get("lr_scale", 1.0))
    return out


def create_optimizer(model: nn.Module, cfg: TrainConfig):
    """timm's `create_optimizer_v2` on the groups above."""
    from timm.optim import create_optimizer_v2

    groups = parameter_groups(model, cfg.weight_decay, cfg.position_lr_scale)
    kwargs: dict[str, Any] = {}
    if cfg.betas is not None:
        kwargs["betas"] = tuple(cfg.betas)
    if cfg.opt.lower() in ("sgd", "momentum", "nesterov", "rmsprop"):
        kwargs["momentum"] = cfg.momentum
    # create_optimizer_v2 passes explicit groups through unchanged; our extra keys ("name", "names") are kept
    # in the optimizer's param_groups, where they are harmless and make logs readable.
    return create_optimizer_v2(groups, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


def create_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int, total_steps: int):
    """timm's `create_scheduler_v2` in optimiser updates: the trainer calls `step_update(global_step)` after every
    update, so the rate depends only on the step count (exact on resume). The groups' `lr_scale` is applied by
    timm's scheduler at every update."""
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=max(1, total_steps),
        warmup_epochs=int(round(cfg.warmup_epochs * steps_per_epoch)), warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
        step_on_epochs=False, updates_per_epoch=1)
    if scheduler is None:  # timm versions without a 'constant' scheduler return None: apply lr_scale once here
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
        return None
    scheduler.step_update(0)
    return scheduler
