"""timm's ConvNeXt as the ConvNeXt families here build on it (not a family itself): the input checked first, timm's
sizes, and the ImageNet-1k cfg and feature layout of timm's ConvNeXts."""
from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import convnext as timm_convnext

from ..layers.input_checks import ImageInputMixin

__all__ = ["CONVNEXT_SIZES", "CheckedConvNeXt", "convnext_feature_cfg", "convnext_imagenet_cfg"]

# timm's ConvNeXt sizes (the arguments of its `convnext_<size>` entrypoints).
CONVNEXT_SIZES: dict[str, dict[str, Any]] = {
    "atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True),
    "femto": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True),
    "pico": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True),
    "nano": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True),
    "tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}


def convnext_feature_cfg() -> dict[str, Any]:
    """timm's ConvNeXt feature layout, a new dict per model: `build_model_with_cfg` writes into the one it gets
    (a `features_only=True, out_indices=...` call would otherwise change every later model's default levels)."""
    return dict(out_indices=(0, 1, 2, 3), flatten_sequential=True)


def convnext_imagenet_cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    """A pretrained cfg with timm's ConvNeXt ImageNet-1k settings (224 px, crop 0.875, bicubic, ImageNet mean/std,
    `stem.0` / `head.fc`); `kwargs` add the family's fields (license, paper, notes, ...) or override these."""
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0", "classifier": "head.fc",
        **kwargs,
    }


class CheckedConvNeXt(ImageInputMixin, timm_convnext.ConvNeXt):
    """timm `ConvNeXt` whose `forward_features` and `forward_intermediates` check the input first
    (`ImageInputMixin`): the base of the DCLS and learnable-activation ConvNeXts. Arguments: timm's ConvNeXt's."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # timm's, written out (TorchScript has no super()), after the input check.
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.stem(x)
        x = self.stages(x)
        return self.norm_pre(x)
