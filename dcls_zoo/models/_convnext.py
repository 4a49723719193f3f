"""timm's ConvNeXt as the image ConvNeXt families build on it (not a family itself): input checked first."""
from __future__ import annotations

import torch
from timm.models import convnext as timm_convnext

from ..layers.input_checks import ImageInputMixin

__all__ = ["CheckedConvNeXt"]


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
