"""Turn any model's convolutions into DCLS layers, and tie their positions per stage.

This is the one replacement mechanism of the zoo: every DCLS family (ConvNeXt, MetaFormer, FastViT, ResNet,
the audio models) is its timm base model passed through `dclsify`. Researchers can apply it to any timm model:

    >>> import timm, dcls_zoo
    >>> model = timm.create_model("efficientnet_b0", num_classes=10)
    >>> dcls_zoo.dclsify(model, version="gauss", dilated_kernel_size=11, kernel_count=9)

Position tying follows the original code: walking `named_modules()` in order, a replaced layer whose
`in_channels` exceeds every one seen so far starts a new stage, and every later layer of that stage uses the first
layer's `P` (and `SIG`): the first layer owns them, the others follow it (one state-dict key per stage).
`stage_key` overrides that rule. The model then clamps its stored positions before every forward
(`enable_position_clamp`), so any training loop follows the papers' clamp.
"""
from __future__ import annotations

from typing import Callable, Hashable, Optional, Sequence

import torch
import torch.nn as nn

from .dcls import Dcls2d, DclsNd, enable_position_clamp

__all__ = [
    "dclsify", "tie_dcls_positions", "default_stage_groups", "is_depthwise_conv2d", "freeze_dcls",
]

ConvFilter = Callable[[str, nn.Conv2d], bool]
StageKey = Callable[[str, nn.Module], Hashable]


def is_depthwise_conv2d(name: str, conv: nn.Module) -> bool:
    """The default rule: a 2-D convolution with groups == in_channels == out_channels."""
    return isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def default_stage_groups(named_layers: Sequence[tuple[str, nn.Module]]) -> list[list[str]]:
    """Group layers into stages: a layer whose in_channels exceeds every one seen so far starts a new stage."""
    groups: list[list[str]] = []
    widest = 0
    for name, layer in named_layers:
        if layer.in_channels > widest or not groups:
            widest = layer.in_channels
            groups.append([])
        groups[-1].append(name)
    return groups


def _groups_from_key(named_layers: Sequence[tuple[str, nn.Module]], stage_key: StageKey) -> list[list[str]]:
    by_key: dict[Hashable, list[str]] = {}
    for name, layer in named_layers:
        by_key.setdefault(stage_key(name, layer), []).append(name)
    return list(by_key.values())


def tie_dcls_positions(
    model: nn.Module,
    groups: Optional[Sequence[Sequence[str]]] = None,
    stage_key: Optional[StageKey] = None,
    check_equal: bool = True,
) -> list[list[str]]:
    """Make the DCLS layers of each group share one `P` (and `SIG`); returns the groups (layer names).

    `groups` lists layer names explicitly; otherwise `stage_key(name, layer)` or the default stage rule decides.
    The first layer of a group owns the shared tensors (they are registered there only) and the others follow it
    (`DclsNd.follow_positions`), so the state dict holds one P per group, under the first layer's name. With
    `check_equal`, layers whose current positions differ from the owner's raise ValueError instead of being
    overwritten silently.
    """
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, DclsNd)]
    layers = dict(named)
    if groups is None:
        groups = _groups_from_key(named, stage_key) if stage_key else default_stage_groups(named)
    for group in groups:
        missing = [n for n in group if n not in layers]
        if missing:
            raise ValueError(f"tie_dcls_positions: no DCLS layer named {missing}")
        first = layers[group[0]]
        for name in group[1:]:
            layer = layers[name]
            for attr in DclsNd.tied_position_names:
                shared, own = getattr(first, attr), getattr(layer, attr)
                if own is shared:
                    continue
                if (shared is None) != (own is None) or shared.shape != own.shape:
                    raise ValueError(
                        f"cannot tie {attr} of {name!r} to {group[0]!r}: shapes "
                        f"{None if own is None else tuple(own.shape)} vs "
                        f"{None if shared is None else tuple(shared.shape)}"
                    )
                if check_equal and not torch.equal(own.detach().to(shared.device), shared.detach()):
                    raise ValueError(
                        f"cannot tie {attr} of {name!r} to {group[0]!r}: their values differ (pass "
                        f"check_equal=False to take {group[0]!r}'s values)"
                    )
            layer.follow_positions(first)
    return [list(g) for g in groups]


def dclsify(
    model: nn.Module,
    *,
    version: str,
    dilated_kernel_size: int,
    kernel_count: int,
    conv_filter: Optional[ConvFilter] = None,
    tie_positions: bool = True,
    stage_key: Optional[StageKey] = None,
    bias: Optional[bool] = None,
) -> nn.Module:
    """Replace matching `nn.Conv2d` layers of `model` (in place) by `Dcls2d`; returns `model`.

    Args:
        version: 'v0', 'v1', 'gauss' or 'max' (see `dcls_zoo.layers.dcls`).
        dilated_kernel_size: side of the dense grid the kernel elements move on; padding becomes its half.
        kernel_count: number of learnable kernel elements per (output, input) channel pair.
        conv_filter: `conv_filter(name, conv) -> bool` selects the convs to replace; default: depthwise convs.
        tie_positions: share P/SIG per stage (the originals' rule, or `stage_key`).
        stage_key: `stage_key(name, layer) -> key`; layers with equal keys share positions.
        bias: force a bias on (True) or off (False); default keeps the replaced conv's.

    Replaced layers keep stride, groups, device and dtype; their weights start N(0, 0.02), biases at zero, positions
    as in `Dcls2d.reset_parameters`. The replaced convs' own dilation is dropped (DCLS learns the spacing).
    """
    conv_filter = conv_filter or is_depthwise_conv2d
    targets = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not isinstance(m, DclsNd) and conv_filter(name, m)
    ]
    if not targets:
        raise ValueError("dclsify: no convolution matched conv_filter; nothing to replace")
    if tie_positions:
        # Check the tie plan before touching the model, so a failure leaves it unchanged.
        groups = _groups_from_key(targets, stage_key) if stage_key else default_stage_groups(targets)
        convs = dict(targets)
        for group in groups:
            shapes = {(convs[n].out_channels, convs[n].in_channels // convs[n].groups) for n in group}
            if len(shapes) > 1:
                raise ValueError(
                    f"dclsify: cannot share positions between {group} (their (out, in/groups) shapes differ: "
                    f"{sorted(shapes)}); pass stage_key= to group layers differently, or tie_positions=False"
                )
    for name, conv in targets:
        layer = Dcls2d(
            conv.in_channels, conv.out_channels, kernel_count=kernel_count, stride=conv.stride,
            padding=dilated_kernel_size // 2, dilated_kernel_size=dilated_kernel_size, groups=conv.groups,
            bias=(conv.bias is not None) if bias is None else bias, version=version,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                layer.bias.zero_()
        _set_submodule(model, name, layer)
    if tie_positions:
        tie_dcls_positions(model, groups=groups, check_equal=False)
    enable_position_clamp(model)
    return model


def freeze_dcls(model: nn.Module) -> nn.Module:
    """Replace every DCLS layer of `model` (in place) by the plain convolution it currently computes.

    The result has no positions left to learn; it runs on any runtime (TorchScript, ONNX, ...) and before
    structural reparameterisation. Outputs are unchanged.
    """
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, DclsNd)]:
        _set_submodule(model, name, layer.to_conv())
    return model
