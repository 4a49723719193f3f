"""Hub-ready model folders: `config.json` + `model.safetensors` + `README.md`, and loading them back.

A folder written by `save_folder` is what the Hub repo of a published model holds. It loads with timm's own
machinery (`timm.create_model("local-dir:FOLDER", pretrained=True)`, or `"hf-hub:ORG/NAME"` once pushed) as well
as with `load_folder`, the stricter path of this package.

Shared tensors. DCLS models tie the positions `P` (and `SIG`) of every layer of a stage to one Parameter, so
`state_dict()` repeats one tensor under several names, and safetensors refuses to save aliased tensors. We store
each shared tensor once, under the first name `state_dict()` gives it, and record the other names in the file's
metadata (`dcls_zoo.shared`: JSON `{stored name: [alias, ...]}`). `load_state_dict_file` re-expands the aliases, so
the result is the complete state dict the model expects; loading it into a model whose parameters are tied keeps
them tied (`load_state_dict` copies in place), and `apply_tie_map` restores ties on a model built without them.

Classifier heads are never re-initialised silently: `load_folder(..., num_classes=N)` with N different from the
checkpoint's raises ValueError unless `replace_head=True` asks for a new head explicitly (and a warning names it).
timm's own `create_model(..., pretrained=True, num_classes=N)` drops the checkpoint's classifier and builds a new,
random one (timm's fine-tuning convention; timm itself logs the missing keys at info level only). For the zoo's
families that is not silent either: their checkpoint filter (`dcls_zoo.models._builder`) logs a warning naming
both sizes. The model cards say so.

Integrity. `save_folder` records the sha256 of `model.safetensors` in `model.safetensors.sha256` beside it
(`sha256sum` format: `sha256sum -c model.safetensors.sha256` checks it as well). `load_folder`, `local-dir:` and
`dcls_zoo.hub.push_folder` verify it, so corrupt weights are an error naming the file instead of NaN outputs;
folders without it (older ones, timm's own) load unchecked. It is a file of its own rather than a config.json
field because other writers (timm's `save_for_hf`, transformers' `save_pretrained` of a TimmWrapper) rewrite
config.json and would carry a stale value forward. Bad config.json fields, unreadable weights and a
`num_classes` that disagrees with `model_args.num_classes` are errors naming the file (`dcls_zoo.models._files`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..models._files import (
    CHECKSUM_NAME,
    check_timm_config,
    checkpoint_num_classes,
    read_config,
    read_safetensors_header,
    verify_checksum,
    write_checksum,
)
from ..models._files import load_safetensors as _load_safetensors
from ._library import is_transformers_model

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "CHECKSUM_NAME", "SHARED_METADATA_KEY",
    "deduplicate_state_dict", "save_state_dict", "load_state_dict_file", "apply_tie_map",
    "check_state_dict_fits", "save_folder", "load_weights", "load_folder", "folder_architecture",
    "is_transformers_model",
]

_logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
SHARED_METADATA_KEY = "dcls_zoo.shared"
ARCHITECTURE_METADATA_KEY = "dcls_zoo.architecture"
_MAX_LISTED_KEYS = 8

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------------------------
# state dicts <-> safetensors, with shared tensors stored once
# --------------------------------------------------------------------------------------------------------------

def _alias_key(tensor: torch.Tensor) -> tuple:
    # Two entries are the same tensor when they view the same storage identically.
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tuple(tensor.stride()), tensor.dtype)


def deduplicate_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Split a state dict into (tensors to store, tie map `{stored name: [alias names]}`).

    Entries that are the same tensor (same storage, offset, shape and strides) are stored once under the first
    name. Entries that merely overlap in memory without being identical views are copied, so safetensors accepts
    them and their values are kept exactly.
    """
    stored: dict[str, torch.Tensor] = {}
    ties: dict[str, list[str]] = {}
    first_by_alias: dict[tuple, str] = {}
    storages_seen: set[tuple] = set()
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, expected a torch.Tensor")
        tensor = tensor.detach()
        if tensor.numel() == 0:
            stored[name] = tensor.clone()
            continue
        key = _alias_key(tensor)
        if key in first_by_alias:
            ties.setdefault(first_by_alias[key], []).append(name)
            continue
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        overlaps = storage in storages_seen
        storages_seen.add(storage)
        first_by_alias[key] = name
        stored[name] = tensor.clone() if overlaps or not tensor.is_contiguous() else tensor
    return stored, ties


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: PathLike,
    metadata: Optional[Mapping[str, str]] = None,
) -> dict[str, list[str]]:
    """Write `state_dict` to a safetensors file with shared tensors stored once; returns the tie map."""
    from safetensors.torch import save_file

    tensors, ties = deduplicate_state_dict(state_dict)
    meta = {"format": "pt", **dict(metadata or {})}
    if ties:
        meta[SHARED_METADATA_KEY] = json.dumps(ties, sort_keys=True)
    save_file(tensors, str(path), metadata=meta)
    return ties


def _read_metadata(path: PathLike) -> dict[str, str]:
    return read_safetensors_header(path)[1]


def load_state_dict_file(path: PathLike, device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file written by `save_state_dict`; aliases come back as the same tensor object."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"expected a .safetensors file, got {str(path)!r} (pickled checkpoints are not read here)")
    state_dict = _load_safetensors(path, device=str(device))
    ties = _tie_map_of(path)
    for stored, aliases in ties.items():
        if stored not in state_dict:
            raise ValueError(f"{path}: tie map names {stored!r}, which the file does not hold")
        for alias in aliases:
            state_dict[alias] = state_dict[stored]
    return state_dict


def _tie_map_of(path: PathLike) -> dict[str, list[str]]:
    try:
        ties = json.loads(_read_metadata(path).get(SHARED_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        ties = None
    if not isinstance(ties, dict) or not all(isinstance(v, list) for v in ties.values()):
        raise ValueError(f"{path}: the '{SHARED_METADATA_KEY}' metadata is not a JSON object of name lists")
    return ties


def apply_tie_map(model: nn.Module, ties: Mapping[str, list[str]]) -> int:
    """Make every alias parameter the same Parameter object as its stored name; returns how many were re-tied.

    Generic counterpart of `dcls_zoo.layers.tie_dcls_positions` for any recorded tie (shared positions, shared
    kernels). Values must already be equal (they are after loading a file whose aliases share one tensor).
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    retied = 0
    for stored, aliases in ties.items():
        if stored not in params:
            continue  # a buffer, or a name the model does not have (reported by check_state_dict_fits)
        shared = params[stored]
        for alias in aliases:
            own = params.get(alias)
            if own is None or own is shared:
                continue
            if own.shape != shared.shape or not torch.equal(own.detach(), shared.detach()):
                raise ValueError(f"cannot tie {alias!r} to {stored!r}: their values differ")
            module_name, _, attr = alias.rpartition(".")
            setattr(model.get_submodule(module_name) if module_name else model, attr, shared)
            retied += 1
    return retied


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_state_dict_fits(
    state_dict: Mapping[str, torch.Tensor],
    model: nn.Module,
    source: str = "checkpoint",
) -> None:
    """Raise ValueError naming the keys when `state_dict` does not fit `model` exactly (names and shapes)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches, checkpoint vs model ({len(mismatched)}): {_listed(mismatched)}")
    raise ValueError(f"{source} does not fit {arch}: " + "; ".join(parts))


# --------------------------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------------------------

def _timm_architecture(model: nn.Module) -> str:
    import timm

    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        raise ValueError(
            f"save_folder needs a model built by timm.create_model (model.pretrained_cfg['architecture'] names it); "
            f"got a {type(model).__name__} without one"
        )
    if not timm.is_model(arch):
        raise ValueError(f"architecture {arch!r} is not registered with timm (import the package that defines it)")
    return arch


def _keep_num_classes_at_the_root(config_path: Path) -> None:
    # timm records the factory's num_classes in model_args too; transformers' TimmWrapper passes num_classes itself
    # (from the root value) next to model_args, which then fails with "got multiple values for keyword argument
    # 'num_classes'". timm's own loaders read the root value, so model_args need not repeat it.
    config = json.loads(config_path.read_text())
    model_args = config.get("model_args")
    if isinstance(model_args, dict) and "num_classes" in model_args:
        num_classes = model_args.pop("num_classes")
        if config.get("num_classes", num_classes) != num_classes:
            raise ValueError(f"{config_path}: num_classes {config.get('num_classes')} and model_args.num_classes "
                             f"{num_classes} disagree")
        config_path.write_text(json.dumps(config, indent=2))


def save_folder(
    model: nn.Module,
    folder: PathLike,
    *,
    model_name: Optional[str] = None,
    card: Union[bool, str, Any] = True,
    model_config: Optional[dict] = None,
    model_args: Optional[dict] = None,
    data_config: Optional[dict] = None,
) -> Path:
    """Write a Hub-ready folder for `model`: config.json, model.safetensors and (by default) README.md.

    Args:
        model: a timm model (built by `timm.create_model`) or a transformers `PreTrainedModel`.
        folder: destination; created if needed. Files of the same names are overwritten.
        model_name: the published name (`arch.tag` for timm, e.g. 'dcls_convnext_tiny.v0_in1k'); selects the
            facts row of the model card. Default: the model's own `pretrained_cfg` name.
        card: True (generate from `dcls_zoo.hub.cards`), False (no README), or a card (str or ModelCard).
        model_config, model_args, data_config: passed to timm's `save_config_for_hf` (timm models only).

    For timm models, config.json is timm's own format (architecture, num_classes, model_args, pretrained_cfg);
    weights are safetensors only, shared tensors stored once (see the module docstring).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if is_transformers_model(model):
        # transformers writes safetensors and handles its own tied weights (lm_head <-> wte).
        model.save_pretrained(str(folder))
        name = model_name or getattr(model.config, "name_or_path", None) or model.config.model_type
    else:
        from ..models._timm_private import save_config_for_hf

        arch = _timm_architecture(model)
        save_config_for_hf(model, str(folder / CONFIG_NAME), model_config=model_config, model_args=model_args,
                           data_config=data_config)
        _keep_num_classes_at_the_root(folder / CONFIG_NAME)
        save_state_dict(model.state_dict(), folder / WEIGHTS_NAME, metadata={ARCHITECTURE_METADATA_KEY: arch})
        tag = (getattr(model, "pretrained_cfg", None) or {}).get("tag")
        name = model_name or (f"{arch}.{tag}" if tag else arch)
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        write_checksum(folder)
    elif (folder / CHECKSUM_NAME).exists():
        (folder / CHECKSUM_NAME).unlink()  # sharded weights: a checksum of an older single file would be stale
    if card is True:
        from .cards import model_card

        card = model_card(name, model=model)
    if card is not False and card is not None:
        (folder / CARD_NAME).write_text(str(card), encoding="utf-8")
    return folder


def load_weights(model: nn.Module, source: PathLike) -> nn.Module:
    """Load a safetensors file (or a folder's model.safetensors) into `model`, exactly; returns `model`.

    Keys and shapes must match the model (ValueError naming the differences otherwise); copies of a shared tensor
    must agree; recorded ties are restored on the model.
    """
    from dcls_zoo.layers.sharing import fold_shared_entries

    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    verify_checksum(path)
    # older folders list followers of a shared tensor as aliases: their copies must agree, then one key is kept
    state_dict = fold_shared_entries(load_state_dict_file(path), model)
    saved_from = _read_metadata(path).get(ARCHITECTURE_METADATA_KEY)
    check_state_dict_fits(state_dict, model, source=f"{path} (saved from {saved_from})" if saved_from else str(path))
    model.load_state_dict(state_dict, strict=True)
    apply_tie_map(model, _tie_map_of(path))
    return model


def _resolve_folder(source: PathLike, revision: Optional[str] = None, cache_dir: Optional[PathLike] = None) -> Path:
    """A local folder as is; otherwise a Hub repo id, fetched (config + weights + card) through the HF cache."""
    path = Path(source)
    if path.is_dir():
        return path
    source = str(source)
    if source.startswith("hf-hub:"):
        source = source[len("hf-hub:"):]
    if source.count("/") != 1:
        raise ValueError(f"expected a folder or a Hub repo id 'org/name', got {source!r}")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        config = hf_hub_download(source, CONFIG_NAME, revision=revision, cache_dir=cache_dir)
        hf_hub_download(source, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, HfHubHTTPError) as e:
        where = "the local cache (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else "the Hub or the cache"
        raise FileNotFoundError(
            f"{source!r} is not a folder, and {where} has no {CONFIG_NAME} + {WEIGHTS_NAME} for it "
            f"({type(e).__name__})"
        ) from e
    from huggingface_hub.errors import EntryNotFoundError

    try:  # the weights' sha256, when the repo has one (folders pushed by dcls-zoo do)
        hf_hub_download(source, CHECKSUM_NAME, revision=revision, cache_dir=cache_dir)
    except (EntryNotFoundError, HfHubHTTPError):
        pass
    return Path(config).parent


def folder_architecture(folder: PathLike) -> tuple[str, str]:
    """('timm', architecture) or ('transformers', model_type) from a folder's config.json."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}")
    config = read_config(path)
    if "architecture" in config:
        return "timm", check_timm_config(config, path)["architecture"]
    if "model_type" in config:
        if not isinstance(config["model_type"], str):
            raise ValueError(f"{path}: 'model_type' must be a string, got {config['model_type']!r}")
        return "transformers", config["model_type"]
    raise ValueError(f"{path} names neither a timm 'architecture' nor a transformers 'model_type'")


def load_folder(
    source: PathLike,
    *,
    num_classes: Optional[int] = None,
    replace_head: bool = False,
    revision: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    **kwargs: Any,
) -> nn.Module:
    """Build and load a timm model from a saved folder or a Hub repo id ('org/name' or 'hf-hub:org/name').

    Unlike timm's `pretrained=True` path this never changes the checkpoint silently: every key must fit, and
    `num_classes` different from the checkpoint's raises ValueError unless `replace_head=True`, in which case the
    checkpoint loads whole and then `reset_classifier(num_classes)` builds a new head, with a warning naming it.
    Extra `kwargs` go to `timm.create_model` (e.g. drop_path_rate, device).
    """
    import timm
    from ..models._timm_private import load_model_config_from_path

    folder = _resolve_folder(source, revision=revision, cache_dir=cache_dir)
    kind, arch = folder_architecture(folder)
    if kind != "timm":
        raise ValueError(
            f"{source} holds a transformers model ({arch!r}); load it with transformers' from_pretrained "
            f"(after `import dcls_zoo`)"
        )
    checkpoint_classes = checkpoint_num_classes(read_config(folder / CONFIG_NAME))  # types checked above
    pretrained_cfg, model_name, model_args = load_model_config_from_path(folder)
    if not timm.is_model(model_name):
        raise ValueError(f"{source}: architecture {model_name!r} is not registered (did you `import dcls_zoo`?)")
    if "num_classes" in kwargs:
        raise TypeError("pass num_classes as load_folder's own argument (with replace_head=True to change it)")
    new_head = num_classes is not None and num_classes != checkpoint_classes
    if new_head and not replace_head:
        raise ValueError(
            f"{source} has a {checkpoint_classes}-class classifier but num_classes={num_classes} was asked; "
            f"pass replace_head=True to load the rest and start a new, randomly initialised classifier"
        )
    model = timm.create_model(model_name, pretrained=False, pretrained_cfg=pretrained_cfg,
                              **{**model_args, **kwargs})
    load_weights(model, folder)
    if new_head:
        model.reset_classifier(num_classes)
        classifier = pretrained_cfg.get("classifier")
        _logger.warning(
            "%s: replaced the %s-class classifier (%s) by a new randomly initialised %s-class one",
            source, checkpoint_classes, classifier, num_classes,
        )
    return model
