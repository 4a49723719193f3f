"""Exponential moving average of the weights (the DCLS ConvNeXt releases are EMA weights, decay 0.9999).

timm's `ModelEmaV3` walks `state_dict()`, which lists a tied tensor (a stage's shared DCLS positions) once per
layer, so the shared tensor would be averaged several times per step. This EMA walks each tensor once
(`named_parameters()` and `named_buffers()` skip duplicates) and keeps the copy's ties (`copy.deepcopy`).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEma(nn.Module):
    """`ema = decay * ema + (1 - decay) * model` for float parameters and buffers, after each optimiser step;
    integer buffers (e.g. BatchNorm counters) are copied. Warmup as timm's: decay_t = min(decay, (1+t)/(10+t))."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_tensors: dict[str, Any] = dict(self.module.named_parameters())
        ema_tensors.update(self.module.named_buffers())
        model_tensors = dict(model.named_parameters())
        model_tensors.update(model.named_buffers())
        if ema_tensors.keys() != model_tensors.keys():
            raise ValueError("EMA and model tensors differ; the EMA must be built from the trained model")
        for name, ema_t in ema_tensors.items():
            value = model_tensors[name].detach()
            if ema_t.is_floating_point():
                ema_t.lerp_(value.to(ema_t.dtype), 1.0 - d)
            else:
                ema_t.copy_(value)
