"""Which library a model belongs to (timm or transformers), asked by both the folder saver and the cards.

A module of its own so that `save` and `cards` both import it and not each other.
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

__all__ = ["is_transformers_model", "model_library"]


def is_transformers_model(model: Optional[nn.Module]) -> bool:
    """True for a transformers `PreTrainedModel` (saved with `save_pretrained`), False for timm models."""
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def model_library(model: Optional[nn.Module]) -> str:
    """'transformers' for a `PreTrainedModel`, 'timm' otherwise: the Hub `library_name` of its folder."""
    return "transformers" if is_transformers_model(model) else "timm"
