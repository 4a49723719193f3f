"""DCLS-ConvNeXt: timm's ConvNeXt with every block's depthwise convolution replaced by `Dcls2d`.

Papers:
    Dilated convolution with learnable spacings (Khalfaoui-Hassani, Pellegrini, Masquelier), ICLR 2023,
    arXiv:2112.03740 — bilinear (v0) DCLS, ConvNeXt-T/S/B.
    Dilated Convolution with Learnable Spacings: beyond bilinear interpolation, arXiv:2306.00817 — Gaussian DCLS.
Original code: https://github.com/K-H-Ismail/ConvNeXt-dcls (MIT).

The model is timm's own `ConvNeXt`; the only change is `dclsify` on the blocks' `conv_dw`, with positions shared
by all blocks of a stage (as the original's `P_stages`). Released checkpoints (Zenodo) hold the original FB layout
with each stage's positions repeated under every block; `checkpoint_filter_fn` maps them to timm names and
checks that the repeated copies agree, and loading copies them into the one shared tensor per stage.
"""
from __future__ import annotations

from typing import Any

from timm.models import convnext as timm_convnext
from timm.models import generate_default_cfgs, register_model

from ..layers import DclsModelMixin, dclsify
from ._builder import build_zoo_model, zoo_checkpoint_filter
from ._convnext import CONVNEXT_SIZES, CheckedConvNeXt, convnext_feature_cfg, convnext_imagenet_cfg
from ._sources import DCLS_GAUSS_SOURCE

__all__ = ["DclsConvNeXt"]


def _is_block_dwconv(name: str, conv) -> bool:
    return name.endswith(".conv_dw") and conv.groups == conv.in_channels == conv.out_channels


class DclsConvNeXt(DclsModelMixin, CheckedConvNeXt):
    """timm `ConvNeXt` whose block depthwise convs are `Dcls2d` with positions tied per stage.

    Args:
        dcls_version: DCLS interpolation, 'v0' (bilinear, the ICLR 2023 models), 'v1', 'gauss' or 'max'.
        dcls_dilated_kernel_size: side of the dense kernel grid (replaces `kernel_sizes`).
        dcls_kernel_count: learnable kernel elements per channel.
        **kwargs: timm's `ConvNeXt` arguments, less `kernel_sizes`; `output_stride` 32 only (DCLS layers have no
            dilation).
    """

    def __init__(
        self,
        dcls_version: str = "v0",
        dcls_dilated_kernel_size: int = 17,
        dcls_kernel_count: int = 34,
        **kwargs: Any,
    ) -> None:
        if "kernel_sizes" in kwargs:
            raise TypeError("DclsConvNeXt takes no kernel_sizes: the DCLS grid sets it (dcls_dilated_kernel_size)")
        if kwargs.get("output_stride", 32) != 32:
            raise ValueError("DclsConvNeXt supports output_stride=32 only (DCLS layers have no dilation)")
        # 3x3 stand-ins are built first so the temporary dense convs cost nothing.
        super().__init__(kernel_sizes=3, **kwargs)
        dclsify(
            self, version=dcls_version, dilated_kernel_size=dcls_dilated_kernel_size,
            kernel_count=dcls_kernel_count, conv_filter=_is_block_dwconv,
        )


@zoo_checkpoint_filter
def checkpoint_filter_fn(state_dict: dict, model: DclsConvNeXt) -> dict:
    """Original ConvNeXt-dcls layout (`{'model': ...}`, FB key names) → timm layout; timm layout passes through.

    Every block of a stage stores a copy of the stage's positions; `zoo_checkpoint_filter` checks that the copies
    agree (they do in the released checkpoints) since the model keeps one shared tensor per stage.
    """
    return timm_convnext.checkpoint_filter_fn(state_dict, model)


def _create_dcls_convnext(variant: str, pretrained: bool = False, **kwargs: Any) -> DclsConvNeXt:
    return build_zoo_model(
        DclsConvNeXt, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=convnext_feature_cfg(),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return convnext_imagenet_cfg(url, **{
        "license": "mit", "origin_url": "https://github.com/K-H-Ismail/ConvNeXt-dcls",
        "paper_ids": "arXiv:2112.03740", "paper_name": "Dilated convolution with learnable spacings",
        **kwargs,
    })


_ZENODO_BILINEAR = "https://zenodo.org/record/7112021/files/"
default_cfgs = generate_default_cfgs({
    "dcls_convnext_tiny.bilinear_in1k": _cfg(
        url=_ZENODO_BILINEAR + "convnext_dcls_tiny_1k_224_ema.pth",
        notes=("ImageNet-1k top-1 82.5 (original paper)", "container key: model")),
    "dcls_convnext_small.bilinear_in1k": _cfg(
        url=_ZENODO_BILINEAR + "convnext_dcls_small_1k_224_ema.pth",
        notes=("ImageNet-1k top-1 83.7 (original paper)", "container key: model")),
    "dcls_convnext_base.bilinear_in1k": _cfg(
        url=_ZENODO_BILINEAR + "convnext_dcls_base_1k_224_ema.pth",
        notes=("ImageNet-1k top-1 84.1 (original paper)", "container key: model")),
    "dcls_gauss_convnext_tiny.gauss_in1k": _cfg(
        url="https://zenodo.org/record/8029747/files/convnext_dcls_gauss_tiny_1k_224_ema.pth", **DCLS_GAUSS_SOURCE,
        notes=("container key: model",)),
    # Small sizes (timm's ConvNeXt widths) for fine-tuning and tests: no released weights.
    "dcls_convnext_atto": _cfg(),
    "dcls_convnext_femto": _cfg(),
    "dcls_convnext_pico": _cfg(),
    "dcls_convnext_nano": _cfg(),
})

_BILINEAR_17 = dict(dcls_version="v0", dcls_dilated_kernel_size=17)  # the ICLR 2023 configuration


@register_model
def dcls_convnext_atto(pretrained: bool = False, **kwargs: Any) -> DclsConvNeXt:
    model_args = dict(CONVNEXT_SIZES["atto"], dcls_kernel_count=34, **_BILINEAR_17)
    return _create_dcls_convnext("dcls_convnext_atto", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_convnext_femto(pretrained: bool = False, **kwargs: Any) -> DclsConvNeXt:
    model_args = dict(CONVNEXT_SIZES["femto"], dcls_kernel_count=34, **_BILINEAR_17)
    return _create_dcls_convnext("dcls_convnext_femto", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_convnext_pico(pretrained: bool = False, **kwargs: Any) -> DclsConvNeXt:
    model_args = dict(CONVNEXT_SIZES["pico"], dcls_kernel_count=34, **_BILINEAR_17)
    return _create_dcls_convnext("dcls_convnext_pico", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_convnext_nano(pretrained: bool = False, **kwargs: Any) -> DclsConvNeXt:
    model_args = dict(CONVNEXT_SIZES["nano"], dcls_kernel_count=34, **_BILINEAR_17)
    return _create_dcls_convnext("dcls_convnext_nano", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_convnext_tiny(pretrained: bool = False, **kwargs: Any) -> DclsConvNeXt:
    model_args = dict(CONVNEXT_SIZES["tiny"], dcls_kernel_count=34, **_BILINEAR_17)
    return _create_dcls_convnext("dcls_convnext_tiny", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_convnext_small(pretrained: bool = False, **kwargs: Any) -> DclsConvNeXt:
    model_args = dict(CONVNEXT_SIZES["small"], dcls_kernel_count=40, **_BILINEAR_17)
    return _create_dcls_convnext("dcls_convnext_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_convnext_base(pretrained: bool = False, **kwargs: Any) -> DclsConvNeXt:
    model_args = dict(CONVNEXT_SIZES["base"], dcls_kernel_count=40, **_BILINEAR_17)
    return _create_dcls_convnext("dcls_convnext_base", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_gauss_convnext_tiny(pretrained: bool = False, **kwargs: Any) -> DclsConvNeXt:
    model_args = dict(CONVNEXT_SIZES["tiny"], dcls_version="gauss", dcls_dilated_kernel_size=23, dcls_kernel_count=26)
    return _create_dcls_convnext("dcls_gauss_convnext_tiny", pretrained=pretrained, **dict(model_args, **kwargs))
