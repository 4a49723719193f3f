"""What every family in this package builds its models with (not a family itself).

`build_zoo_model` is `timm.models.build_model_with_cfg` plus three things timm does not do for these checkpoints:

* Training containers: the authors' files wrap the weights (`state_dict_ema`, `model_ema`, `state_dict`, `model`,
  in timm's order of preference) and prefix them with DDP's `module.`. `unwrap_checkpoint` is the one place that
  unwraps them; every family filter runs it first (`zoo_checkpoint_filter`), also for state dicts handed over
  directly (`pretrained_cfg_overlay=dict(state_dict=...)`), which timm's loader passes on as they are.
* Tied parameters: in models that share a tensor between layers (per-stage DCLS positions, shared kernels) the
  first layer owns it and the others follow (one state-dict key per shared tensor). The originals' checkpoints
  repeat the shared tensor under every layer's name: repeated copies must agree (loading them into one tensor
  would otherwise keep whichever came last, silently), then the followers' keys are dropped.
* `url` checkpoints: timm fetches them with `torch.hub.load_state_dict_from_url(weights_only=True)`, which rejects
  the authors' training checkpoints (they pickle an `argparse.Namespace` next to the weights). We download such
  files first and hand them to timm as a local `file`: timm's file loader unpickles with `weights_only=True` and
  only `argparse.Namespace` allow-listed (no code runs).

A family decorates its `checkpoint_filter_fn` with `zoo_checkpoint_filter` (`build_zoo_model` wraps any filter that
is not), so the filter sees the bare state dict and its result has the tied form.
"""
from __future__ import annotations

import functools
import logging
import os
import pickle
from typing import Any, Callable, Optional

import torch.nn as nn
from timm.models import PretrainedCfg, build_model_with_cfg, get_pretrained_cfg

from ..layers.sharing import expand_shared_entries, fold_shared_entries
from ._files import FolderFileError, check_checkpoint_file, check_local_dir, describe_load_error
from ._timm_private import download_cached_file, resolve_pretrained_source

__all__ = ["build_zoo_model", "unwrap_checkpoint", "with_every_shared_copy", "zoo_checkpoint_filter"]

_logger = logging.getLogger(__name__)

# The containers the authors' training scripts save, in timm's order of preference (EMA weights first).
CHECKPOINT_CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def unwrap_checkpoint(checkpoint: dict) -> dict:
    """The state dict inside a training checkpoint (EMA weights first), without DDP's `module.` prefixes; a bare
    state dict comes back as it is (less the prefixes).

    timm's file loader does this already; `zoo_checkpoint_filter` runs it too for state dicts handed over directly
    (`pretrained_cfg_overlay=dict(state_dict=...)`), where it does not.
    """
    for key in CHECKPOINT_CONTAINER_KEYS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _warn_if_head_replaced(state_dict: dict, model: nn.Module) -> None:
    # timm's loader drops a classifier whose size differs from num_classes (a fine-tuning request) and logs it at
    # info level only; say it where people look, once, with both sizes.
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    for name in [classifier] if isinstance(classifier, str) else (classifier or []):
        weight = state_dict.get(f"{name}.weight")
        num_classes = getattr(model, "num_classes", None)
        if weight is None or num_classes is None or weight.shape[0] == num_classes:
            continue
        if num_classes == 0:   # a feature extractor: timm drops the classifier, nothing random is added
            _logger.info("%s: the checkpoint's classifier %r (%d classes) is not loaded (num_classes=0)",
                         type(model).__name__, name, weight.shape[0])
        else:
            _logger.warning(
                "%s: the checkpoint's classifier %r has %d classes; it is not loaded and a new, randomly initialised "
                "head of %d classes (num_classes) takes its place", type(model).__name__, name, weight.shape[0],
                num_classes,
            )


def zoo_checkpoint_filter(filter_fn: Optional[Callable] = None) -> Callable:
    """Decorate a family's `checkpoint_filter_fn(state_dict, model)`: it gets the bare state dict
    (`unwrap_checkpoint`), and its result gets the tied form (repeated copies of a shared tensor must agree, then
    only the owner's key is kept); a replaced classifier is announced."""

    @functools.wraps(filter_fn or (lambda state_dict, model: state_dict))
    def zoo_filter(state_dict: dict, model: nn.Module) -> dict:
        state_dict = unwrap_checkpoint(state_dict)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, model)
        state_dict = fold_shared_entries(state_dict, model)
        _warn_if_head_replaced(state_dict, model)
        return state_dict

    zoo_filter.is_zoo_filter = True
    return zoo_filter


class _EveryCopyView:
    """`model` as timm's checkpoint filters see it, whose `state_dict()` lists a shared tensor under every layer's
    name (the originals' layout), so filters that look each original key up in it find the followers' too."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        return expand_shared_entries(self._model.state_dict(*args, **kwargs), self._model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def with_every_shared_copy(model: nn.Module) -> Any:
    """A view of `model` for timm's own `checkpoint_filter_fn`s (see `_EveryCopyView`)."""
    return _EveryCopyView(model)


def _with_url_as_file(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    cfg = kwargs.get("pretrained_cfg")
    if cfg is None or isinstance(cfg, str):
        cfg = get_pretrained_cfg(variant if cfg is None else f"{variant.split('.')[0]}.{cfg}")
    if cfg is None:
        return kwargs
    cfg = cfg.to_dict() if isinstance(cfg, PretrainedCfg) else dict(cfg)
    cfg.update(kwargs.get("pretrained_cfg_overlay") or {})
    source, location = resolve_pretrained_source(cfg)
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


def build_zoo_model(
    model_cls: Callable[..., nn.Module], variant: str, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """`timm.models.build_model_with_cfg`, with `url` checkpoints loaded through timm's safe file loader, the
    family's filter wrapped in `zoo_checkpoint_filter`, and a failed load named by its file."""
    weights_file = None
    if pretrained:
        kwargs = _with_url_as_file(variant, kwargs)
        weights_file = _check_weights_source(kwargs)
    filter_fn = kwargs.get("pretrained_filter_fn")
    if not getattr(filter_fn, "is_zoo_filter", False):
        kwargs["pretrained_filter_fn"] = zoo_checkpoint_filter(filter_fn)
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError) as e:
        # torch.load(weights_only=True) failing on the checkpoint: say which file, never "use weights_only=False"
        message = describe_load_error(weights_file, e) if weights_file else None
        if message is None:
            raise
        raise FolderFileError(message) from None


def _check_weights_source(kwargs: dict[str, Any]) -> Optional[str]:
    """Check a `local-dir:` folder before timm reads it (config types, one classifier size, weights header and
    recorded sha256); returns the checkpoint file timm will read, if it is a local file."""
    cfg = kwargs.get("pretrained_cfg")
    cfg = cfg.to_dict() if isinstance(cfg, PretrainedCfg) else cfg
    if isinstance(cfg, dict) and cfg.get("source") == "local-dir" and cfg.get("file"):
        check_local_dir(cfg["file"])
        return None
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    file = overlay.get("file") or (cfg.get("file") if isinstance(cfg, dict) else None)
    if not file or overlay.get("state_dict") is not None:
        return None
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no checkpoint file at {file} (pretrained_cfg file=)")
    check_checkpoint_file(file)   # torch zip files: tensors memory-mapped, not read twice
    return str(file)
