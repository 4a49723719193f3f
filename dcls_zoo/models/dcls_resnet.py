"""DCLS ResNet-50: timm's ResNet with every 3x3 convolution turned into DCLS.

Paper: `Dilated Convolution with Learnable Spacings` (arXiv 2112.03740); the released ImageNet-1k checkpoint comes
with `Dilated Convolution with Learnable Spacings makes visual models more aligned with humans: a Grad-CAM study`
(arXiv 2408.03164, https://github.com/rabihchamas/DCLS-GradCAM-Eval), trained with timm's train.py.

The model is timm's `ResNet`; `dcls_zoo.layers.dclsify` replaces every 3x3 conv (in ResNet-50, each bottleneck's
`conv2`: dense, groups 1) by a `Dcls2d` with the same stride and groups, 5 kernel elements on a 7x7 grid (bilinear
v0). As in the original code, the layers of a stage (`layer1` ... `layer4`, found by the in_channels rule) share
one `P` Parameter. The checkpoint is in timm's own key layout.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models import checkpoint_seq
from timm.models.resnet import Bottleneck, ResNet

from ..layers import DclsModelMixin, dclsify
from ..layers.input_checks import ImageInputMixin, chain_layers
from ._builder import build_zoo_model, zoo_checkpoint_filter
from ._sources import GRADCAM_STUDY_SOURCE

__all__ = ["DclsResNet", "checkpoint_filter_fn"]


def _is_3x3_conv(name: str, conv: nn.Conv2d) -> bool:
    return tuple(conv.kernel_size) == (3, 3)


class DclsResNet(DclsModelMixin, ImageInputMixin, ResNet):
    """timm's `ResNet` whose 3x3 convs are `Dcls2d` layers with per-stage shared positions.

    Args:
        dcls_version: DCLS interpolation, 'v0', 'v1', 'gauss' or 'max'.
        dcls_dilated_kernel_size: side of the grid the kernel elements move on (the padding is its half).
        dcls_kernel_count: learnable kernel elements per (output, input) channel pair.
        **kwargs: `ResNet` arguments (unknown names raise TypeError there). Only `output_stride=32`: DCLS layers
            have no dilation to trade stride for.
    """

    def __init__(
        self,
        dcls_version: str = "v0",
        dcls_dilated_kernel_size: int = 7,
        dcls_kernel_count: int = 5,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("output_stride", 32) != 32:
            raise ValueError(f"DclsResNet supports output_stride=32 only, got {kwargs['output_stride']}")
        super().__init__(**kwargs)
        dclsify(
            self, version=dcls_version, dilated_kernel_size=dcls_dilated_kernel_size,
            kernel_count=dcls_kernel_count, conv_filter=_is_3x3_conv,
        )

    def downsampling_chain(self) -> list[nn.Module]:
        # stem conv(s) and max-pool, then each stage's first block (its shortcut runs in parallel, same stride)
        chain = chain_layers(self.conv1) + chain_layers(self.maxpool)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            first = next(iter(stage.children()), None)   # None: pruned away (prune_intermediate_layers)
            if first is not None:
                chain += [layer for name, child in first.named_children() if name.startswith("conv")
                          for layer in chain_layers(child)]
        return chain

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # timm's, written out (TorchScript has no super()), after the input check.
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.maxpool(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        else:
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
            x = self.layer4(x)
        return x


# The checkpoint has timm's key layout: nothing to rename. The zoo's filter unwraps the train.py container (EMA
# weights first) and takes a stage's shared positions stored under every layer (the original) or once (`dcls_zoo.hub`).
checkpoint_filter_fn = zoo_checkpoint_filter()


def _create_dcls_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> DclsResNet:
    return build_zoo_model(DclsResNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.95, "interpolation": "bicubic",   # timm's resnet50 eval settings, used by the authors
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "conv1", "classifier": "fc",
        **GRADCAM_STUDY_SOURCE,
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "dcls_resnet50.bilinear_in1k": _cfg(
        url="https://zenodo.org/records/8373830/files/resnet_dcls_kernel_5_model_best.pth.tar",
        notes=("timm train.py container, EMA weights under 'state_dict_ema'; DCLS v0, 7x7 grid, 5 elements",),
    ),
})


@register_model
def dcls_resnet50(pretrained: bool = False, **kwargs: Any) -> DclsResNet:
    model_args = dict(
        block=Bottleneck, layers=(3, 4, 6, 3), dcls_version="v0", dcls_dilated_kernel_size=7, dcls_kernel_count=5,
    )
    return _create_dcls_resnet("dcls_resnet50", pretrained=pretrained, **dict(model_args, **kwargs))
