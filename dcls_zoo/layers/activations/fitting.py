"""Fitting a learnable activation to a target activation (``act_init=``): least squares or a fixed Adam run.

The activation supplies the pieces through its ``_fit_*`` hooks (see `modules._OrthoActivation`): the default
interval and settings, its differentiable value and derivative on a grid, and an optional starting point (exact
for Hermite, which is linear in its coefficients).
"""
from __future__ import annotations

import copy
import hashlib
import os
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _target_values(target: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = target(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            raise ValueError("act_init must map a 1-D tensor to a tensor of the same shape")
        (dy,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    return y.detach(), (torch.zeros_like(x) if dy is None else dy.detach())


def fit_activation(
        module: nn.Module,
        target: Callable[[torch.Tensor], torch.Tensor],
        *,
        half_width: float | None = None,
        num_points: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        cache_dir: str | None = None,
) -> float:
    """Fit ``module``'s coefficients in place to ``target`` (value and derivative); returns the final loss.

    The loss is ``mean((f - t)^2) + mean((f' - t')^2)`` on ``num_points`` evenly spaced points of
    ``[-half_width, half_width]`` (tropical activations fit the value only: their derivative is piecewise
    constant). Hermite is linear in its coefficients and is solved exactly by least squares (a learnable clamp
    is held at its current value); the others run ``steps`` Adam steps from the current parameters, in float64 on
    CPU. The result is deterministic. With ``cache_dir`` the fitted values are stored there as
    ``<class>-<degree>-<scheme>-<hash of target and settings>.pt`` and reused; nothing is written otherwise.
    """
    if not isinstance(module, nn.Module) or not hasattr(module, "_fit_terms"):
        raise TypeError(f"fit_activation expects a learnable activation (one of ACTIVATION_CLASSES), got "
                        f"{type(module).__name__}")
    default_points, default_steps, default_lr = module._fit_defaults
    half_width = module._fit_half_width() if half_width is None else float(half_width)
    num_points = default_points if num_points is None else int(num_points)
    steps = default_steps if steps is None else int(steps)
    lr = default_lr if lr is None else float(lr)
    if half_width <= 0 or num_points < 2 or steps < 0 or lr < 0:
        raise ValueError("fit_activation needs half_width > 0, num_points >= 2, steps >= 0 and lr >= 0")

    cache_file = None
    if cache_dir is not None:
        key = f"{module._fit_signature()}|{target!r}|{half_width}|{num_points}|{steps}|{lr}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        cache_file = os.path.join(cache_dir, f"{module._fit_signature()}-{digest}.pt")
        if os.path.exists(cache_file):
            cached = torch.load(cache_file, map_location="cpu", weights_only=True)
            with torch.no_grad():
                for name, value in cached["parameters"].items():
                    module.get_parameter(name).copy_(value)
            return float(cached["loss"])

    work = _float64_copy(module)
    x = torch.linspace(-half_width, half_width, num_points, dtype=torch.float64)
    y, dy = _target_values(target, x)

    def loss_fn() -> torch.Tensor:
        value, deriv = work._fit_terms(x)
        loss = F.mse_loss(value, y)
        return loss if deriv is None else loss + F.mse_loss(deriv, dy)

    if not work._fit_start(x, y, dy):  # True: the start is the exact solution
        params = [p for p in work.parameters()]
        optimizer = torch.optim.Adam(params, lr=lr)
        best = (float("inf"), None)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn()
            if loss.item() < best[0]:
                best = (loss.item(), [p.detach().clone() for p in params])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            if best[1] is not None and loss_fn().item() > best[0]:
                for p, value in zip(params, best[1]):
                    p.copy_(value)
    with torch.no_grad():
        final = float(loss_fn())
        fitted = {name: p.detach().clone() for name, p in work.named_parameters()}
        for name, value in fitted.items():
            module.get_parameter(name).copy_(value)
    if cache_file is not None:
        os.makedirs(cache_dir, exist_ok=True)
        torch.save({"parameters": {k: v.float() for k, v in fitted.items()}, "loss": final}, cache_file)
    return final


def _float64_copy(module: nn.Module) -> nn.Module:
    """A float64 CPU copy with gradients on, without the constants cached for other devices and dtypes."""
    work = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
    if hasattr(work, "_constants"):
        work._constants = {}
    work.requires_grad_(True)
    return work
