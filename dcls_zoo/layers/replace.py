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
from .sharing import tied_parameter_groups

__all__ = [
    "dclsify", "tie_dcls_positions", "default_stage_groups", "is_depthwise_conv2d", "shared_parameter_groups",
    "check_shared_copies_equal", "restore_shared_entries", "fold_shared_entries", "expand_shared_entries",
    "freeze_dcls",
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


def shared_parameter_groups(model: nn.Module) -> list[list[str]]:
    """Names under which one tensor is used: `[owner's name, follower names...]` for shared positions and kernels
    (only the owner's name is in the state dict), plus any Parameter object registered under several names."""
    groups = tied_parameter_groups(model)
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    groups.extend(names for names in by_id.values() if len(names) > 1)
    return groups


def check_shared_copies_equal(state_dict: dict, model: nn.Module) -> None:
    """Raise ValueError if a checkpoint holds different values under names the model ties together.

    The originals repeat a shared tensor under every layer's name; the model keeps one tensor per group, so copies
    that disagree cannot be loaded faithfully.
    """
    for names in shared_parameter_groups(model):
        present = [n for n in names if n in state_dict]
        for name in present[1:]:
            if not torch.equal(state_dict[name], state_dict[present[0]]):
                raise ValueError(
                    f"checkpoint entries {present[0]!r} and {name!r} should hold one shared tensor but differ"
                )


def fold_shared_entries(state_dict: dict, model: nn.Module) -> dict:
    """A checkpoint in the model's one-key-per-shared-tensor form; returns a new dict.

    Accepts every form a shared tensor has been stored in: the originals' (a copy under every layer's name: the
    copies must agree, then only the owner's key is kept), ours (the owner's key only, as `state_dict()` gives it
    and older `dcls_zoo.hub` folders store it) and a copy under a follower's name only (moved to the owner's).
    Names of a group that are all absent stay absent (strict loading then reports them).
    """
    check_shared_copies_equal(state_dict, model)
    state_dict = dict(state_dict)
    for names in tied_parameter_groups(model):
        owner, followers = names[0], names[1:]
        present = [n for n in followers if n in state_dict]
        if owner not in state_dict and present:
            state_dict[owner] = state_dict[present[0]]
        for name in present:
            del state_dict[name]
    return state_dict


# the loaders' name from before shared tensors had one owner
restore_shared_entries = fold_shared_entries


def expand_shared_entries(state_dict: dict, model: nn.Module) -> dict:
    """The originals' form of a state dict: each shared tensor also under every follower's name (the inverse of
    `fold_shared_entries`; for exporting to the authors' code, which expects every layer's copy)."""
    state_dict = dict(state_dict)
    for owner, *followers in tied_parameter_groups(model):
        if owner in state_dict:
            state_dict.update(dict.fromkeys(followers, state_dict[owner]))
    return state_dict


def freeze_dcls(model: nn.Module) -> nn.Module:
    """Replace every DCLS layer of `model` (in place) by the plain convolution it currently computes.

    The result has no positions left to learn; it runs on any runtime (TorchScript, ONNX, ...) and before
    structural reparameterisation. Outputs are unchanged.
    """
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, DclsNd)]:
        _set_submodule(model, name, layer.to_conv())
    return model
