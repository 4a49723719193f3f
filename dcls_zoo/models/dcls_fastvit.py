"""DCLS FastViT-SA24 / SA36: timm's FastViT with its 7x7 depthwise convs turned into DCLS.

Paper: `Dilated Convolution with Learnable Spacings` (arXiv 2112.03740); the released ImageNet-1k checkpoints come
with `Dilated Convolution with Learnable Spacings makes visual models more aligned with humans: a Grad-CAM study`
(arXiv 2408.03164, https://github.com/rabihchamas/DCLS-GradCAM-Eval), trained with Apple's ml-fastvit code.

The model is timm's `FastVit`; `dcls_zoo.layers.dclsify` replaces every 7x7 depthwise conv: each block's
`mlp.conv.conv` and the stage-4 conditional positional encoding `pos_emb.pos_enc`, which comes first in that stage
and so provides the positions the stage's blocks share (4 + 4 + 12 + 5 layers for SA24). The 3x3 RepMixer/stem
convs and the patch embeddings' large-kernel convs (in != out channels) stay dense.

Inference reparameterisation (`timm.models.reparameterize_model`) works: `DclsRepConditionalPosEnc` freezes its
DCLS kernel into a dense 17x17 conv before folding the identity branch in; the MLP DCLS layers are left as they
are (numerically identical) or can be frozen beforehand with `Dcls2d.to_conv()`.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.models import fastvit as timm_fastvit
from timm.models import generate_default_cfgs, register_model
from timm.models.fastvit import FastVit

from ..layers import DclsModelMixin, dclsify
from ..layers.input_checks import ImageInputMixin
from ..layers.rep_pos_enc import DclsRepConditionalPosEnc
from ._builder import build_zoo_model, zoo_checkpoint_filter
from ._sources import GRADCAM_STUDY_SOURCE

__all__ = ["DclsFastVit", "DclsRepConditionalPosEnc", "checkpoint_filter_fn"]


def _is_7x7_depthwise(name: str, conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels and tuple(conv.kernel_size) == (7, 7)


class DclsFastVit(DclsModelMixin, ImageInputMixin, FastVit):
    """timm's `FastVit` whose 7x7 depthwise convs are `Dcls2d` layers with per-stage shared positions.

    Args:
        dcls_version: DCLS interpolation, 'v0', 'v1', 'gauss' or 'max'.
        dcls_dilated_kernel_size: side of the grid the kernel elements move on (the padding is its half).
        dcls_kernel_count: learnable kernel elements per channel.
        **kwargs: `FastVit` arguments (unknown names raise TypeError there). `inference_mode=True` is refused:
            build the training structure and call `timm.models.reparameterize_model`.
    """

    def __init__(
        self,
        dcls_version: str = "v1",
        dcls_dilated_kernel_size: int = 17,
        dcls_kernel_count: int = 34,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("inference_mode", False):
            raise ValueError(
                "DclsFastVit cannot be built with inference_mode=True (its DCLS kernels are not known before "
                "loading); build it normally, load the weights, then call timm.models.reparameterize_model(model)"
            )
        super().__init__(**kwargs)
        dclsify(
            self, version=dcls_version, dilated_kernel_size=dcls_dilated_kernel_size,
            kernel_count=dcls_kernel_count, conv_filter=_is_7x7_depthwise,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # timm's, written out (TorchScript has no super()), after the input check.
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.stem(x)
        outs = []
        for idx, block in enumerate(self.stages):
            x = block(x)
            if self.fork_feat:
                if idx in self.out_indices:
                    outs.append(getattr(self, f"norm{idx}")(x))
        if self.fork_feat:
            return outs
        return self.final_conv(x)


@zoo_checkpoint_filter
def checkpoint_filter_fn(state_dict: dict[str, Any], model: DclsFastVit) -> dict[str, torch.Tensor]:
    """Apple ml-fastvit layout (or timm layout), optionally inside a train.py container -> this model's keys.

    Key renames are timm's own FastViT filter (`network.i.B.convffn.conv.conv.*` -> `stages.s.blocks.B.mlp.conv
    .conv.*`, `network.6.pe.*` -> `stages.3.pos_emb.pos_enc.*`). A stage's shared positions may be stored under
    every layer (the originals) or once (`dcls_zoo.hub`): `zoo_checkpoint_filter` handles both, and unwraps the
    container first (EMA weights first; timm's filter would pick 'state_dict').
    """
    return timm_fastvit.checkpoint_filter_fn(state_dict, model)


def _create_dcls_fastvit(variant: str, pretrained: bool = False, **kwargs: Any) -> DclsFastVit:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_zoo_model(
        DclsFastVit,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 256, 256), "pool_size": (8, 8),
        "crop_pct": 0.9, "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": ("stem.0.conv_kxk.0.conv", "stem.0.conv_scale.conv"), "classifier": "head.fc",
        **GRADCAM_STUDY_SOURCE,
        **kwargs,
    }


_ZENODO = "https://zenodo.org/records/8370737/files/"
_NOTES = ("timm train.py container, EMA weights under 'state_dict_ema'; DCLS v1, 17x17 grid, 34 elements",)

default_cfgs = generate_default_cfgs({
    "dcls_fastvit_sa24.bilinear_in1k": _cfg(url=_ZENODO + "fastvit_sa24_v1_17lim_34el_seed0.pth.tar", notes=_NOTES),
    "dcls_fastvit_sa36.bilinear_in1k": _cfg(url=_ZENODO + "fastvit_sa36_v1_17lim_34el_seed0.pth.tar", notes=_NOTES),
})

_SA_COMMON = dict(
    embed_dims=(64, 128, 256, 512), mlp_ratios=(4, 4, 4, 4),
    pos_embs=(None, None, None, partial(DclsRepConditionalPosEnc, spatial_shape=(7, 7))),
    token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
    dcls_version="v1", dcls_dilated_kernel_size=17, dcls_kernel_count=34,
)


@register_model
def dcls_fastvit_sa24(pretrained: bool = False, **kwargs: Any) -> DclsFastVit:
    model_args = dict(layers=(4, 4, 12, 4), **_SA_COMMON)
    return _create_dcls_fastvit("dcls_fastvit_sa24", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_fastvit_sa36(pretrained: bool = False, **kwargs: Any) -> DclsFastVit:
    # layer-scale init 1e-6 as in Apple's fastvit_sa36 (timm's default is 1e-5); it only affects training from scratch
    model_args = dict(layers=(6, 6, 18, 6), layer_scale_init_value=1e-6, **_SA_COMMON)
    return _create_dcls_fastvit("dcls_fastvit_sa36", pretrained=pretrained, **dict(model_args, **kwargs))
