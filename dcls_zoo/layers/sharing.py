"""Inter-layer kernel sharing: tie the weights of isomorphic convolutions within a stage.

Kernel sharing (Azadbakht et al., arXiv 2210.14151) makes every convolution of a group use ONE `nn.Parameter`
(the same Python object is assigned to each conv's ``.weight``, and ``.bias`` where present), so the gradients of
all uses accumulate into it. Normalisation layers are never shared. Two convs are *isomorphic* when they could
swap weights: same class, weight shape, bias presence, stride, padding, dilation, groups and padding mode.

Each shared kernel has ONE owner, the first conv of its group, which registers it; the other convs of the group
follow the owner (`TiedParametersMixin`: their class becomes `TiedConv1d/2d/3d`, a subclass of theirs, and they
read the owner's tensor at every forward). So `state_dict()` and `named_parameters()` hold each shared tensor once,
and loaders that replace Parameter objects (transformers' `from_pretrained`, peft, FSDP) keep every use in sync.
The originals' checkpoints repeat the shared tensor under every alias; `dcls_zoo.models._builder`'s
`zoo_checkpoint_filter` checks that the copies agree and drops the followers' keys.
"""
from __future__ import annotations

import copy
import weakref
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

__all__ = [
    "share_kernels", "conv_signature", "TiedParametersMixin", "tied_owner_modules", "tied_parameter_groups",
    "TiedConv1d", "TiedConv2d", "TiedConv3d", "shared_parameter_groups", "check_shared_copies_equal",
    "fold_shared_entries", "expand_shared_entries",
]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

# --------------------------------------------------------------------------------------------------------------
# One owner per shared tensor
# --------------------------------------------------------------------------------------------------------------

class TiedParametersMixin:
    """Lets a module use parameters that another module (the *owner*) registers.

    A follower does not register the shared names at all: `follower.P` (say) is looked up on the owner at every
    access. So `state_dict()`, `named_parameters()` and `parameters()` hold each shared tensor once, under the
    owner's name, and whatever replaces the owner's Parameter object (transformers' `from_pretrained`, peft,
    FSDP's sharding, `load_state_dict(assign=True)`, `.to()`) is seen by every follower. Assigning a shared name
    on a follower writes through to the owner (the tie holds).

    The owner reference lives outside `_modules` (`modules()` does not visit it twice). Deep copies:
    a copy of a whole model keeps its followers on the copied owner; a copy of a follower alone follows the
    owner's most recent stand-alone copy if one is alive (peft's `modules_to_save` copies the owner first, then
    each follower, so the trainable copies stay tied among themselves), otherwise the original owner.
    """

    def tie_parameters_to(self, owner: nn.Module, names: Sequence[str]) -> None:
        """Make `names` of this module follow `owner` (which must register them); this module's own are dropped."""
        owners = self.__dict__.setdefault("_tied_owners", {})
        for name in names:
            root = _root_owner(owner, name)
            if root is self:
                continue
            if not isinstance(root._parameters.get(name), nn.Parameter):
                raise ValueError(f"cannot tie {name!r} to a {type(root).__name__} that registers no parameter {name!r}")
            self._parameters.pop(name, None)
            owners[name] = root

    def untie_parameters(self, names: Optional[Sequence[str]] = None) -> None:
        """Give this module its own copies (clones) of the shared `names` (default: all it follows)."""
        owners = self.__dict__.get("_tied_owners", {})
        for name in list(owners if names is None else names):
            owner = owners.pop(name, None)
            if owner is not None:
                shared = owner._parameters[name]
                self._parameters[name] = nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)

    def tied_owner(self, name: str) -> Optional[nn.Module]:
        """The module that registers the shared parameter `name` this module uses, or None if it is its own."""
        return self.__dict__.get("_tied_owners", {}).get(name)

    def __getattr__(self, name: str):
        owners = self.__dict__.get("_tied_owners")
        if owners and name in owners:
            return getattr(owners[name], name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        owners = self.__dict__.get("_tied_owners")
        if owners and name in owners:
            setattr(owners[name], name, value)
            return
        super().__setattr__(name, value)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_standalone_copy", None)   # a weak reference: never pickled or copied
        return state

    def __deepcopy__(self, memo: dict):
        standalone = not memo
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        state = self.__getstate__()
        owners = state.pop("_tied_owners", None) or {}
        state = {k: copy.deepcopy(v, memo) for k, v in state.items()}
        if owners:
            state["_tied_owners"] = {name: _owner_for_copy(owner, memo, standalone) for name, owner in owners.items()}
        new.__setstate__(state)
        if standalone:
            self.__dict__["_standalone_copy"] = weakref.ref(new)
        return new


def _root_owner(module: nn.Module, name: str) -> nn.Module:
    while True:
        owner = module.__dict__.get("_tied_owners", {}).get(name)
        if owner is None:
            return module
        module = owner


def _owner_for_copy(owner: nn.Module, memo: dict, standalone: bool) -> nn.Module:
    if id(owner) in memo:
        return memo[id(owner)]   # the owner is part of this copy
    if standalone:
        ref = owner.__dict__.get("_standalone_copy")
        if ref is not None and ref() is not None:
            return ref()
    return owner


def tied_owner_modules(module: nn.Module) -> dict[str, nn.Module]:
    """The shared parameters `module` follows (`TiedParametersMixin`): name -> the module that registers it.
    Empty for any other module."""
    return dict(module.__dict__.get("_tied_owners") or {})


def tied_parameter_groups(model: nn.Module) -> list[list[str]]:
    """Names of shared tensors as `[owner's name, follower names...]` (followers' names are not in the state
    dict: they are the names the originals, which repeat the shared tensor under every layer, use)."""
    names = {id(m): name for name, m in model.named_modules()}
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        for attr, owner in (module.__dict__.get("_tied_owners") or {}).items():
            if id(owner) not in names:
                continue   # the owner lies outside `model`
            prefix = names[id(owner)]
            key = f"{prefix}.{attr}" if prefix else attr
            groups.setdefault(key, [key]).append(f"{name}.{attr}" if name else attr)
    return list(groups.values())


# --------------------------------------------------------------------------------------------------------------
# Convolutions that follow another conv's kernel
# --------------------------------------------------------------------------------------------------------------

class _TiedConvMixin(TiedParametersMixin):
    """A conv whose weight (and bias) may be another conv's: TorchScript gets them as plain attributes."""

    def __prepare_scriptable__(self):
        self.__dict__["_script_weight"] = self.weight
        self.__dict__["_script_bias"] = self.bias
        return self

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(input, self._script_weight, self._script_bias)
        else:
            return self._conv_forward(input, self.weight, self.bias)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_script_weight", None)
        state.pop("_script_bias", None)
        return state


class TiedConv1d(_TiedConvMixin, nn.Conv1d):
    """`nn.Conv1d` that can use another conv's weight and bias (see `share_kernels`)."""


class TiedConv2d(_TiedConvMixin, nn.Conv2d):
    """`nn.Conv2d` that can use another conv's weight and bias (see `share_kernels`)."""


class TiedConv3d(_TiedConvMixin, nn.Conv3d):
    """`nn.Conv3d` that can use another conv's weight and bias (see `share_kernels`)."""


_TIED_CONV = {nn.Conv1d: TiedConv1d, nn.Conv2d: TiedConv2d, nn.Conv3d: TiedConv3d}


def _make_follower(conv: nn.Module) -> nn.Module:
    if isinstance(conv, TiedParametersMixin):
        return conv
    tied = _TIED_CONV.get(type(conv))
    if tied is None:
        raise ValueError(f"share_kernels: cannot share the kernel of a {type(conv).__name__} (only plain "
                         f"nn.Conv1d/2d/3d); pass conv_filter= to leave it out")
    conv.__class__ = tied
    return conv


def conv_signature(conv: nn.Module) -> tuple:
    """What must match for two convolutions to share a kernel (see the module docstring)."""
    conv_type = next((base for base, tied in _TIED_CONV.items() if type(conv) is tied), type(conv))
    return (
        conv_type, tuple(conv.weight.shape), conv.bias is not None, conv.stride, conv.padding, conv.dilation,
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

    Within a stage, convs are visited in ``named_modules()`` order; the first conv of each isomorphic group owns
    the shared Parameter and the others follow it (their own initial values are discarded; their class becomes
    `TiedConv2d` etc.).

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
                names = ["weight"] + (["bias"] if share_bias and conv.bias is not None else [])
                _make_follower(conv).tie_parameters_to(owner, names)
            members.append(name)
        groups.extend(members for members in owners.values() if len(members) > 1)
    return groups


# ---- state dicts of models with shared tensors: the checkpoint forms that load into them ----

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


def expand_shared_entries(state_dict: dict, model: nn.Module) -> dict:
    """The originals' form of a state dict: each shared tensor also under every follower's name (the inverse of
    `fold_shared_entries`; for exporting to the authors' code, which expects every layer's copy)."""
    state_dict = dict(state_dict)
    for owner, *followers in tied_parameter_groups(model):
        if owner in state_dict:
            state_dict.update(dict.fromkeys(followers, state_dict[owner]))
    return state_dict
