"""The learnable activations by name: the one place an activation is registered.

``ACTIVATION_CLASSES`` maps a name to its class; the default degree is the class's own (its ``degree`` default),
so ``DEFAULT_DEGREES`` and everything built on the two tables (``create_activation``, ``OrthoGPT2Config``, the
ConvNeXt variants, the nanoGPT converter) follow from one line here.
"""
from __future__ import annotations

import inspect

import torch.nn as nn

from .modules import (
    SCHEMES,
    FourierActivation,
    HermiteActivation,
    TropicalActivation,
    TropicalRationalActivation,
    _OrthoActivation,
)

__all__ = ["ACTIVATION_CLASSES", "DEFAULT_DEGREES", "SCHEMES", "create_activation", "activation_parameter_names"]

ACTIVATION_CLASSES: dict[str, type[_OrthoActivation]] = {
    "hermite": HermiteActivation,
    "fourier": FourierActivation,
    "tropical": TropicalActivation,
    "tropical_rational": TropicalRationalActivation,
}
# the paper's settings (GPT-2: Hermite 3, Fourier 5; ConvNeXt: Hermite 3, Fourier 5, Tropical 5)
DEFAULT_DEGREES: dict[str, int] = {
    name: inspect.signature(cls).parameters["degree"].default for name, cls in ACTIVATION_CLASSES.items()
}


def create_activation(name: str, degree: int | None = None, **kwargs) -> nn.Module:
    """Build an activation by name (a key of ``ACTIVATION_CLASSES``); ``degree=None`` is its default degree."""
    if name not in ACTIVATION_CLASSES:
        raise ValueError(f"unknown learnable activation {name!r}; expected one of {sorted(ACTIVATION_CLASSES)}")
    return ACTIVATION_CLASSES[name](DEFAULT_DEGREES[name] if degree is None else degree, **kwargs)


def activation_parameter_names(model: nn.Module) -> set[str]:
    """Names (as ``model.named_parameters()`` gives them, each shared tensor once) of every parameter that belongs
    to a learnable activation, its clamp included: the optimiser groups train them without weight decay."""
    ids = {id(p) for m in model.modules() if isinstance(m, _OrthoActivation) for p in m.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}
