"""dcls-zoo: DCLS, learnable-activation, audio and spiking models for timm and transformers.

Importing the package registers every model with timm's registry and every language-model class with
transformers' Auto classes. Nothing here touches the network.
"""
from .layers import (  # noqa: F401  (the public building blocks)
    Dcls1d, Dcls2d, Dcls3d, FourierActivation, HermiteActivation, TropicalActivation, TropicalRationalActivation,
    clamp_dcls_parameters, dclsify, freeze_dcls, share_kernels, tie_dcls_positions,
)
from . import models  # noqa: F401  (registers timm models)
from . import lm  # noqa: F401  (registers the ortho_gpt2 transformers classes)

__version__ = "0.1.0"
