"""Shared model-building helpers for the families in this package (not a family itself).

Tied parameters: models that share one Parameter between layers (per-stage DCLS positions, shared kernels) have
checkpoints in two forms — the originals repeat the shared tensor under every layer's name, our safetensors
folders store it once. `build_dcls_model` wraps each family's filter so that both load: names stored once are
filled in from the one kept, and repeated copies must agree (loading them into one tensor would otherwise keep
whichever came last, silently).

timm fetches `url` checkpoints with `torch.hub.load_state_dict_from_url(weights_only=True)`, which rejects the
authors' training checkpoints (they pickle an `argparse.Namespace` next to the weights) and ignores container
keys. We download such files first and hand them to timm as a local `file`: timm's file loader unpickles with
`weights_only=True` and only `argparse.Namespace` allow-listed (no code runs), and unwraps the containers the
authors used (`state_dict_ema`, `model_ema`, `state_dict`, `model`, in that order).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch.nn as nn
from timm.models import build_model_with_cfg
from timm.models._builder import _resolve_pretrained_source
from timm.models._hub import download_cached_file
from timm.models._pretrained import PretrainedCfg
from timm.models._registry import get_pretrained_cfg

from ..layers.replace import check_shared_copies_equal, restore_shared_entries

__all__ = ["build_dcls_model"]


def _with_tied_entries(filter_fn: Optional[Callable]) -> Callable:
    def tied_filter(state_dict: dict, model: nn.Module) -> dict:
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, model)
        state_dict = restore_shared_entries(state_dict, model)
        check_shared_copies_equal(state_dict, model)
        return state_dict

    return tied_filter


def _with_url_as_file(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    cfg = kwargs.get("pretrained_cfg")
    if cfg is None or isinstance(cfg, str):
        cfg = get_pretrained_cfg(variant if cfg is None else f"{variant.split('.')[0]}.{cfg}")
    if cfg is None:
        return kwargs
    cfg = cfg.to_dict() if isinstance(cfg, PretrainedCfg) else dict(cfg)
    cfg.update(kwargs.get("pretrained_cfg_overlay") or {})
    source, location = _resolve_pretrained_source(cfg)
    if source != "url":
        return kwargs
    try:
        path = download_cached_file(location, progress=True)
    except Exception as e:  # no network, moved record, ...
        raise RuntimeError(
            f"could not download the {variant} checkpoint from {location} ({e}); download it yourself and pass "
            f"pretrained_cfg_overlay=dict(file=PATH)"
        ) from e
    return dict(kwargs, pretrained_cfg_overlay={**(kwargs.get("pretrained_cfg_overlay") or {}), "file": path})


def build_dcls_model(
    model_cls: Callable[..., nn.Module], variant: str, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """`timm.models.build_model_with_cfg`, with `url` checkpoints loaded through timm's safe file loader and
    tied parameters restored from either checkpoint form."""
    if pretrained:
        kwargs = _with_url_as_file(variant, kwargs)
    kwargs["pretrained_filter_fn"] = _with_tied_entries(kwargs.get("pretrained_filter_fn"))
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
