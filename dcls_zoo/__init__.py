"""dcls-zoo: DCLS, learnable-activation, audio and spiking models for timm and transformers.

Importing the package registers every model with timm's registry and every language-model class with
transformers' Auto classes (`register()`). Nothing here touches the network. The subpackages (`dcls_zoo.hub`,
`dcls_zoo.train`, `dcls_zoo.layers`, `dcls_zoo.lm`, ...) and the building blocks below are reachable as attributes
and imported on first use, so `import dcls_zoo` does not pay for the training stack (Accelerate, datasets, ...).

The `dcls-zoo` command parses its arguments before registering anything (`--help` and argument errors never import
torch) and then registers what its sub-command needs.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# the public building blocks, from dcls_zoo.layers
_LAYER_EXPORTS = (
    "Dcls1d", "Dcls2d", "Dcls3d", "FourierActivation", "HermiteActivation", "TropicalActivation",
    "TropicalRationalActivation", "clamp_dcls_parameters", "dclsify", "freeze_dcls", "share_kernels",
    "tie_dcls_positions",
)
_SUBMODULES = ("cli", "data", "hub", "interpret", "layers", "lm", "models", "train")
# Set (only while it imports this package) by the `dcls-zoo` console script, which registers after parsing.
_DEFER_REGISTRATION_ENV = "_DCLS_ZOO_DEFER_REGISTRATION"

__all__ = [*_LAYER_EXPORTS, "register", "__version__"]


def register(transformers: bool = True) -> None:
    """Register the timm models and (with `transformers=True`) the ortho_gpt2 transformers classes.

    `import dcls_zoo` does this; calling it again does nothing more.
    """
    importlib.import_module(".models", __name__)
    if transformers:
        importlib.import_module(".lm", __name__)


def __getattr__(name: str) -> Any:
    if name in _LAYER_EXPORTS:
        return getattr(importlib.import_module(".layers", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAYER_EXPORTS) | set(_SUBMODULES))


if os.environ.get(_DEFER_REGISTRATION_ENV) != "1":
    register()
