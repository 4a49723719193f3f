"""The originals' conv-replacement recipe, assembled from the authors' `dcls` 0.1.1 package (test-only oracle).

The authors' `replace_depthwise_dcls` (DCLS-Audio, DCLS-GradCAM-Eval, the tutorial) walks `named_modules()` in
order, swaps each selected convolution for a `dcls.Dcls2d` with padding `dks // 2`, and ties positions per stage: a
layer whose in_channels exceeds every one seen so far starts a stage, later layers take its `P` (and `SIG`).
Tests build their reference models with this, independently of `dcls_zoo.dclsify`.
"""
import importlib
from typing import Callable

import torch
import torch.nn as nn

dcls_modules = importlib.import_module("DCLS.construct.modules")


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def original_replace_dcls(
    model: nn.Module,
    version: str,
    dilated_kernel_size: int,
    kernel_count: int,
    select: Callable[[nn.Conv2d], bool] = is_depthwise,
) -> nn.Module:
    widest, stage_first = 0, None
    for name, conv in list(model.named_modules()):
        if not (isinstance(conv, nn.Conv2d) and select(conv)):
            continue
        layer = dcls_modules.Dcls2d(
            conv.in_channels, conv.out_channels, kernel_count=kernel_count, stride=conv.stride,
            padding=dilated_kernel_size // 2, dilated_kernel_size=dilated_kernel_size, groups=conv.groups,
            bias=conv.bias is not None, version=version,
        )
        if conv.in_channels > widest:
            widest, stage_first = conv.in_channels, layer
        else:
            layer.P, layer.SIG = stage_first.P, stage_first.SIG
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    return model


@torch.no_grad()
def randomize_norm_statistics(model: nn.Module) -> None:
    """Give BatchNorm running statistics non-trivial values, so eval-mode comparisons exercise them."""
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
