"""Inter-layer kernel sharing: tie the weights of isomorphic convolutions within a stage.

Kernel sharing (Azadbakht et al., arXiv 2210.14151) makes every convolution of a group use ONE `nn.Parameter`
(the same Python object is assigned to each conv's ``.weight``, and ``.bias`` where present), so the gradients of
all uses accumulate into it. Normalisation layers are never shared. Two convs are *isomorphic* when they could
swap weights: same class, weight shape, bias presence, stride, padding, dilation, groups and padding mode.

Ties are ordinary shared Parameters, so they survive ``.to()``, ``state_dict()``/``load_state_dict()`` (every
alias key is present in the state dict and loading writes the same tensor) and optimizer steps
(``model.parameters()`` yields each shared tensor once). Serialisers that store each tensor once (safetensors'
``save_model``) drop the alias keys; `dcls_zoo.layers.replace.restore_shared_entries` restores them before a
strict load, and `check_shared_copies_equal` refuses checkpoints whose copies differ.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch.nn as nn

__all__ = ["share_kernels", "conv_signature"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def conv_signature(conv: nn.Module) -> tuple:
    """What must match for two convolutions to share a kernel (see the module docstring)."""
    return (
        type(conv), tuple(conv.weight.shape), conv.bias is not None, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.padding_mode,
    )


def _default_stages(model: nn.Module) -> list[str]:
    feature_info = getattr(model, "feature_info", None)
    if not feature_info:
        raise ValueError(
            "share_kernels needs `stages` (module names, one per stage) for a model without timm `feature_info`")
    # timm's feature_info lists one entry per stage output, e.g. act1, layer1, ..., layer4 for a ResNet.
    return list(dict.fromkeys(info["module"] for info in feature_info))


def share_kernels(
    model: nn.Module,
    stages: Optional[Sequence[str]] = None,
    conv_filter: Optional[Callable[[str, nn.Module], bool]] = None,
    share_bias: bool = True,
) -> list[list[str]]:
    """Tie the kernels of isomorphic convolutions within each stage of `model`, in place.

    Args:
        model: any module (a timm model when `stages` is omitted).
        stages: names of the submodules that form the stages (e.g. ``("layer1", "layer2", "layer3")``); convs
            are only tied within a stage. Default: the modules named in timm's ``model.feature_info``.
        conv_filter: ``conv_filter(full_name, conv) -> bool`` selects the convs that may be shared (default:
            every ``nn.Conv1d/2d/3d``). E.g. ``lambda name, conv: conv.kernel_size == (3, 3)``.
        share_bias: tie the biases of tied convs as well (the ConvMixer rule); if False only weights are tied.

    Within a stage, convs are visited in ``named_modules()`` order; the first conv of each isomorphic group keeps
    its Parameter and the others are pointed at it (their own initial values are discarded).

    Returns:
        The tie groups (full module names, first = owner), only groups with more than one conv.
    """
    if stages is None:
        stages = _default_stages(model)
    modules = dict(model.named_modules())
    groups: list[list[str]] = []
    for stage in stages:
        if stage not in modules:
            raise ValueError(f"share_kernels: the model has no submodule named {stage!r} (given as a stage)")
        owners: dict[tuple, list[str]] = {}
        for name, conv in modules[stage].named_modules(prefix=stage):
            if not isinstance(conv, _CONV_TYPES) or (conv_filter is not None and not conv_filter(name, conv)):
                continue
            members = owners.setdefault(conv_signature(conv), [])
            if members:
                owner = modules[members[0]]
                conv.weight = owner.weight
                if share_bias and conv.bias is not None:
                    conv.bias = owner.bias
            members.append(name)
        groups.extend(members for members in owners.values() if len(members) > 1)
    return groups
