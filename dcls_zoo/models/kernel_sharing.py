"""Inter-layer kernel sharing: ConvMixer-256/16 and SE-ResNet for CIFAR, with and without shared kernels.

Paper: Azadbakht et al., "Drastically Reducing the Number of Trainable Parameters in Deep CNNs by Inter-layer
Kernel-sharing", arXiv:2210.14151. Original code: https://github.com/AlirezaAzadbakht/kernel-sharing (no
released checkpoints).

Sharing rule of the paper (applied by `dcls_zoo.layers.sharing.share_kernels`): one Parameter per group of
isomorphic convolutions within a stage; BatchNorm layers are never shared.

* ConvMixer (one stage): the 16 depthwise 9x9 convs share one weight and bias, and the 16 pointwise convs share
  another. The model is timm's own `ConvMixer` (patch 1, kernel 9), tied after construction.
* SE-ResNet (3 stages of post-activation SE basic blocks, timm's `BasicBlock` with a bias-free SE of reduction 16):
  per stage, every 3x3 conv whose input and output widths are equal (conv2 of every block, conv1 of all but the
  first) shares one weight; the first conv1 of a stage and the 1x1 shortcut convs stay private.

Unique parameter counts (CIFAR-10): ConvMixer 1,409,034 / shared 107,274; SE-ResNet d2 2,771,290 / shared
1,223,002.

Checkpoints in the original layouts load through `checkpoint_filter_fn` (the flat `nn.Sequential` of the original
ConvMixer, the `CifarNet` names of the original SE-ResNet); the copies a shared checkpoint stores under every alias
must agree, and a file that stores each shared tensor once (safetensors) gets its aliases back.
"""
# No `from __future__ import annotations`: torch.fx + TorchScript need real annotations on forward().
import re
from functools import partial
from typing import Any, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import SEModule, get_device_dtype
from timm.layers.classifier import create_classifier
from timm.models import generate_default_cfgs, register_model
from ._timm_private import feature_take_indices
from timm.models import checkpoint_seq
from timm.models.convmixer import ConvMixer
from timm.models.resnet import BasicBlock, downsample_conv

from ..layers import sharing
from ._builder import build_zoo_model, zoo_checkpoint_filter

__all__ = ["KernelSharingConvMixer", "SEResNetCifar", "checkpoint_filter_fn"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class KernelSharingConvMixer(ConvMixer):
    """timm `ConvMixer`; with ``share_kernels=True`` all depthwise convs share one kernel and all pointwise convs
    another (weights and biases), as in the paper's fully shared ConvMixer.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        kernel_size: int = 9,
        patch_size: int = 1,
        in_chans: int = 3,
        num_classes: int = 10,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        share_kernels: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            dim, depth, kernel_size=kernel_size, patch_size=patch_size, in_chans=in_chans,
            num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate, act_layer=act_layer,
            device=device, dtype=dtype,
        )
        self.kernels_shared = share_kernels
        if share_kernels:
            sharing.share_kernels(self, stages=("blocks",))


def _se_layer(channels: int, reduction: int, device=None, dtype=None) -> SEModule:
    # The original SE is Linear(C, C // r, bias=False) -> ReLU -> Linear(C // r, C, bias=False) -> sigmoid; timm's
    # SEModule with 1x1 convs is the same function. rd_divisor=1 keeps C // r exact (timm rounds to 8 by default).
    return SEModule(channels, rd_channels=channels // reduction, rd_divisor=1, bias=False, device=device, dtype=dtype)


def _is_square_3x3(name: str, conv: nn.Module) -> bool:
    return tuple(conv.kernel_size) == (3, 3)


class SEResNetCifar(nn.Module):
    """CIFAR SE-ResNet of the kernel-sharing paper: 3x3 stem (no pooling) and three stages of SE basic blocks.

    Args:
        depth: blocks per stage (the original's `d`).
        channels: widths of the three stages.
        stem_width: width of the 3x3 stem.
        se_reduction: squeeze-excitation reduction ratio.
        share_kernels: tie each stage's width-preserving 3x3 convs into one weight (the paper's rule).
    """

    def __init__(
        self,
        depth: int = 2,
        channels: Tuple[int, ...] = (64, 128, 256),
        stem_width: int = 16,
        se_reduction: int = 16,
        share_kernels: bool = False,
        in_chans: int = 3,
        num_classes: int = 10,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if depth < 1:
            raise ValueError(f"depth (blocks per stage) must be >= 1, got {depth!r}")
        if len(channels) != 3:
            raise ValueError(f"channels must give the widths of the 3 stages, got {channels!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.kernels_shared = share_kernels

        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(stem_width, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module="act1")]

        attn_layer = partial(_se_layer, reduction=se_reduction)
        in_width, reduction = stem_width, 1
        for stage_idx, width in enumerate(channels):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks = []
            for block_idx in range(depth):
                block_stride = stride if block_idx == 0 else 1
                downsample = None
                if in_width != width:
                    downsample = downsample_conv(in_width, width, kernel_size=1, stride=block_stride,
                                                 norm_layer=nn.BatchNorm2d, **dd)
                blocks.append(BasicBlock(in_width, width, stride=block_stride, downsample=downsample,
                                         attn_layer=attn_layer, **dd))
                in_width = width
            self.add_module(f"layer{stage_idx + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"layer{stage_idx + 1}"))
        self.num_stages = len(channels)
        self.num_features = self.head_hidden_size = in_width
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)

        self.init_weights()
        if share_kernels:
            sharing.share_kernels(
                self, stages=[f"layer{i + 1}" for i in range(self.num_stages)], conv_filter=_is_square_3x3)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Kaiming-normal convs and unit BatchNorm, as the original; SE and classifier keep torch's defaults."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and ".se." not in name:
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def _stages(self) -> List[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, **get_device_dtype(self))
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the stem (index 0) and of each stage (1..3); `norm` is unused (no final norm)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(self.num_stages + 1, indices)
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        stages = self._stages()
        if not torch.jit.is_scripting() and stop_early:
            stages = stages[:max_index]
        for i, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last requested feature (and the head)."""
        take_indices, max_index = feature_take_indices(self.num_stages + 1, indices)
        for i in range(max_index + 1, self.num_stages + 1):
            setattr(self, f"layer{i}", nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        else:
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------------ checkpoint filters

def _convmixer_filter(state_dict: dict, model: KernelSharingConvMixer) -> dict:
    if "stem.0.weight" in state_dict:
        return dict(state_dict)
    # Original: nn.Sequential(conv, GELU, BN, *blocks, AdaptiveAvgPool2d, Flatten, Linear), flat indices.
    depth = len(model.blocks)
    head_idx = 3 + depth + 2
    out = {}
    for key, value in state_dict.items():
        idx, _, rest = key.partition(".")
        if not idx.isdigit():
            raise ValueError(f"unexpected key {key!r} in an original-layout ConvMixer checkpoint")
        idx = int(idx)
        if idx in (0, 2):
            out[f"stem.{idx}.{rest}"] = value
        elif 3 <= idx < 3 + depth:
            out[f"blocks.{idx - 3}.{rest}"] = value
        elif idx == head_idx:
            out[f"head.{rest}"] = value
        else:
            raise ValueError(f"unexpected key {key!r} in an original-layout ConvMixer checkpoint")
    return out


def _se_resnet_filter(state_dict: dict, model: SEResNetCifar) -> dict:
    out = {}
    for key, value in state_dict.items():
        # Original SE: se.fc.0 / se.fc.2 are bias-free Linear layers; ours are 1x1 convs.
        match = re.match(r"^(.*\.se)\.fc\.([02])\.weight$", key)
        if match:
            key = f"{match.group(1)}.fc{1 if match.group(2) == '0' else 2}.weight"
            value = value[..., None, None] if value.ndim == 2 else value
        out[key] = value
    return out


@zoo_checkpoint_filter
def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Original layouts → ours (timm layouts pass through); `zoo_checkpoint_filter` then checks the shared copies and
    fills in names stored once."""
    if isinstance(model, KernelSharingConvMixer):
        state_dict = _convmixer_filter(state_dict, model)
    elif isinstance(model, SEResNetCifar):
        state_dict = _se_resnet_filter(state_dict, model)
    else:
        raise TypeError(f"checkpoint_filter_fn expects a kernel-sharing model, got {type(model).__name__}")
    return state_dict


# ------------------------------------------------------------------------------------------------ creation

def _create_convmixer(variant: str, pretrained: bool = False, **kwargs: Any) -> KernelSharingConvMixer:
    return build_zoo_model(
        KernelSharingConvMixer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter"),
        **kwargs,
    )


def _create_se_resnet(
    variant: str, pretrained: bool, depth: int, share: bool, **kwargs: Any
) -> SEResNetCifar:
    kwargs = dict(dict(depth=depth, share_kernels=share), **kwargs)
    return build_zoo_model(
        SEResNetCifar, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 10, "input_size": (3, 32, 32), "crop_pct": 1.0, "interpolation": "bilinear",
        "origin_url": "https://github.com/AlirezaAzadbakht/kernel-sharing", "paper_ids": "arXiv:2210.14151",
        "paper_name": "Drastically Reducing the Number of Trainable Parameters in Deep CNNs by Inter-layer "
                      "Kernel-sharing",
        **kwargs,
    }


# The original ConvMixer recipe normalises CIFAR with ImageNet statistics (timm defaults); SE-ResNet uses CIFAR's.
_CONVMIXER = dict(pool_size=(32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                  first_conv="stem.0", classifier="head")
_SE_RESNET = dict(pool_size=(8, 8), mean=CIFAR_MEAN, std=CIFAR_STD, first_conv="conv1", classifier="fc")
_SE_DEPTHS = (2, 3, 4, 6, 8, 10)

default_cfgs = generate_default_cfgs({
    "convmixer_256_16_cifar": _cfg(**_CONVMIXER),
    "shared_convmixer_256_16_cifar": _cfg(**_CONVMIXER),
    **{f"se_resnet_cifar_d{d}": _cfg(**_SE_RESNET) for d in _SE_DEPTHS},
    **{f"shared_se_resnet_cifar_d{d}": _cfg(**_SE_RESNET) for d in _SE_DEPTHS},
})


@register_model
def convmixer_256_16_cifar(pretrained: bool = False, **kwargs: Any) -> KernelSharingConvMixer:
    model_args = dict(dim=256, depth=16, kernel_size=9, patch_size=1, share_kernels=False)
    return _create_convmixer("convmixer_256_16_cifar", pretrained, **dict(model_args, **kwargs))


@register_model
def shared_convmixer_256_16_cifar(pretrained: bool = False, **kwargs: Any) -> KernelSharingConvMixer:
    model_args = dict(dim=256, depth=16, kernel_size=9, patch_size=1, share_kernels=True)
    return _create_convmixer("shared_convmixer_256_16_cifar", pretrained, **dict(model_args, **kwargs))


@register_model
def se_resnet_cifar_d2(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("se_resnet_cifar_d2", pretrained, 2, False, **kwargs)


@register_model
def se_resnet_cifar_d3(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("se_resnet_cifar_d3", pretrained, 3, False, **kwargs)


@register_model
def se_resnet_cifar_d4(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("se_resnet_cifar_d4", pretrained, 4, False, **kwargs)


@register_model
def se_resnet_cifar_d6(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("se_resnet_cifar_d6", pretrained, 6, False, **kwargs)


@register_model
def se_resnet_cifar_d8(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("se_resnet_cifar_d8", pretrained, 8, False, **kwargs)


@register_model
def se_resnet_cifar_d10(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("se_resnet_cifar_d10", pretrained, 10, False, **kwargs)


@register_model
def shared_se_resnet_cifar_d2(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("shared_se_resnet_cifar_d2", pretrained, 2, True, **kwargs)


@register_model
def shared_se_resnet_cifar_d3(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("shared_se_resnet_cifar_d3", pretrained, 3, True, **kwargs)


@register_model
def shared_se_resnet_cifar_d4(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("shared_se_resnet_cifar_d4", pretrained, 4, True, **kwargs)


@register_model
def shared_se_resnet_cifar_d6(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("shared_se_resnet_cifar_d6", pretrained, 6, True, **kwargs)


@register_model
def shared_se_resnet_cifar_d8(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("shared_se_resnet_cifar_d8", pretrained, 8, True, **kwargs)


@register_model
def shared_se_resnet_cifar_d10(pretrained: bool = False, **kwargs: Any) -> SEResNetCifar:
    return _create_se_resnet("shared_se_resnet_cifar_d10", pretrained, 10, True, **kwargs)
