"""dcls-zoo: DCLS, learnable-activation, audio and spiking models for timm and transformers.

Importing the package registers every model with timm's registry and every language-model class with
transformers' Auto classes. Nothing here touches the network.
"""
from .layers import Dcls1d, Dcls2d, Dcls3d, dclsify  # noqa: F401
from . import models  # noqa: F401  (registers timm models)
from . import lm  # noqa: F401  (registers the ortho_gpt2 transformers classes)

__version__ = "0.1.0"
