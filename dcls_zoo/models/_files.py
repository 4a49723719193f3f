"""Checks on the files a model is loaded from, shared by `timm.create_model` (`local-dir:`, `file=`) and
`dcls_zoo.hub`: each bad file becomes one error that names it, says what was expected and what to do.

- `config.json` of a timm folder: a JSON object whose fields have timm's types (`architecture` a string,
  `num_classes` an int, `model_args` / `pretrained_cfg` objects, ...), with one classifier size (the top-level
  `num_classes` and `model_args.num_classes` must agree: timm would otherwise drop the trained head silently).
- `model.safetensors`: a header that parses and covers the file (truncated, empty and garbage files are named).
- `model.safetensors.sha256` (written by `dcls_zoo.hub.save_folder` beside the weights, in `sha256sum` format so
  `sha256sum -c model.safetensors.sha256` checks it too): the weights must still hash to it. Folders without it
  (older ones, timm's own) load unchecked.
- pickled checkpoints (`.pth`, `.bin`, ...) are read with `torch.load(weights_only=True)` only; what it refuses is
  reported as not a plain weights file, never with advice to unpickle it anyway.

Nothing here imports timm; torch is imported where a checkpoint is read.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Optional, Union

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "CHECKSUM_NAME", "FolderFileError", "file_sha256", "write_checksum",
    "verify_checksum", "read_safetensors_header", "load_safetensors", "load_checkpoint_file",
    "check_checkpoint_file", "read_config",
    "check_timm_config", "checkpoint_num_classes", "check_local_dir",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKSUM_NAME = WEIGHTS_NAME + ".sha256"
_HASH_CHUNK = 1 << 20

PathLike = Union[str, os.PathLike]


class FolderFileError(ValueError):
    """A model file (config, weights, checksum) is unreadable or does not hold what it should; names the file."""


# --------------------------------------------------------------------------------------------------------------
# sha256 of the weights
# --------------------------------------------------------------------------------------------------------------

def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksum(folder: PathLike, weights_name: str = WEIGHTS_NAME) -> str:
    """Write `<weights>.sha256` (`sha256sum` format) beside the weights of `folder`; returns the hex digest."""
    folder = Path(folder)
    digest = file_sha256(folder / weights_name)
    (folder / (weights_name + ".sha256")).write_text(f"{digest}  {weights_name}\n", encoding="utf-8")
    return digest


def recorded_checksum(weights: PathLike) -> Optional[str]:
    """The digest recorded beside `weights` (None when there is no `.sha256` file)."""
    weights = Path(weights)
    record = weights.with_name(weights.name + ".sha256")
    if not record.is_file():
        return None
    fields = record.read_text(encoding="utf-8", errors="replace").split()
    digest = fields[0].lower() if fields else ""
    if len(fields) != 2 or fields[1].lstrip("*") != weights.name or len(digest) != 64 or \
            any(c not in "0123456789abcdef" for c in digest):
        raise FolderFileError(
            f"{record}: expected one line '<64 hex digits>  {weights.name}' (sha256sum format); rewrite it with "
            f"`sha256sum {weights.name} > {record.name}` if the weights are right, or delete it"
        )
    return digest


def verify_checksum(weights: PathLike) -> Optional[str]:
    """Check `weights` against the `.sha256` file beside it; returns the digest (None when none is recorded)."""
    weights = Path(weights)
    expected = recorded_checksum(weights)
    if expected is None:
        return None
    actual = file_sha256(weights)
    if actual != expected:
        raise FolderFileError(
            f"{weights}: sha256 {actual[:16]}... differs from the {expected[:16]}... recorded in "
            f"{weights.name}.sha256 when it was saved: the file is corrupt or was replaced; download or save it "
            f"again (delete {weights.name}.sha256 only if you replaced the weights on purpose)"
        )
    return actual


# --------------------------------------------------------------------------------------------------------------
# weights files
# --------------------------------------------------------------------------------------------------------------

def read_safetensors_header(path: PathLike) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """({tensor name: (dtype, shape)}, metadata) from a safetensors header, without reading the tensors.

    Raises FolderFileError naming the file when it is missing, empty, truncated or not safetensors.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {}
            for name in f.keys():
                part = f.get_slice(name)
                tensors[name] = (str(part.get_dtype()), tuple(part.get_shape()))
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        size = path.stat().st_size
        what = "empty" if size == 0 else f"{size:,} bytes, truncated or not safetensors"
        raise FolderFileError(
            f"{path}: not a readable safetensors file ({what}: {e}); download or save it again"
        ) from None
    return tensors, metadata


def load_safetensors(path: PathLike, device: str = "cpu") -> dict:
    """`safetensors.torch.load_file` with a bad file reported by name (see `read_safetensors_header`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_header(path)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise FolderFileError(f"{path}: not a readable safetensors file ({e}); download or save it again") from None


def describe_load_error(path: PathLike, error: BaseException) -> Optional[str]:
    """One line for an error `torch.load(path, weights_only=True)` raised, or None if it is not a file problem.

    torch's own message for a refused pickle suggests `weights_only=False`, which would run whatever code the
    file holds: we say what the file is instead.
    """
    # timm's loader re-raises torch's refusal as a RuntimeError advising weights_only=False: look at the cause
    refusal = next((e for e in (error, error.__cause__, error.__context__) if isinstance(e, pickle.UnpicklingError)),
                   None)
    if refusal is not None or (isinstance(error, RuntimeError) and "weights_only" in str(error)):
        reason = str(refusal if refusal is not None else "")
        if "WeightsUnpickler error:" in reason:
            reason = reason.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        elif "Weights only load failed" in reason or not reason:
            reason = "objects outside its allow-list"
        reason = " ".join(reason.split())
        return (f"{path}: not a plain weights file: torch.load(weights_only=True) refused it ({reason}); the file is "
                f"corrupt, or holds objects other than tensors and containers, and is never unpickled otherwise "
                f"here: re-save the weights from code you trust (safetensors preferred)")
    if isinstance(error, (EOFError, OSError)) or (isinstance(error, RuntimeError) and
                                                   "PytorchStreamReader" in str(error)):
        return _unreadable(path)
    return None


def _unreadable(path: PathLike, error: Optional[BaseException] = None) -> str:
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    what = "empty" if size == 0 else f"{size:,} bytes: truncated or corrupt"
    if error is not None and size:
        what += f"; {type(error).__name__}: {' '.join(str(error).split())[:120]}"
    return f"{path}: not a readable torch checkpoint ({what}); download or save it again"


def _torch_load(path: Path, mmap: bool = False) -> Any:
    import argparse

    import torch

    try:
        # what timm's file loader accepts: the authors' training checkpoints pickle their argparse.Namespace
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # garbage makes the unpickler fail in many ways (IndexError, KeyError, ...)
        raise FolderFileError(describe_load_error(path, e) or _unreadable(path, e)) from None


def check_checkpoint_file(path: PathLike) -> None:
    """Raise FolderFileError naming `path` unless it is a readable weights file; cheap for torch zip files (the
    tensors are memory-mapped, not read)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        read_safetensors_header(path)
    else:
        _torch_load(path, mmap=zipfile.is_zipfile(path))


def load_checkpoint_file(path: PathLike) -> Any:
    """Read a checkpoint: safetensors as such, anything else with `torch.load(weights_only=True)` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return _torch_load(path)


# --------------------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------------------

def read_config(path: PathLike) -> dict:
    """A config.json as a dict; FolderFileError naming the file when it is missing, not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} at {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FolderFileError(f"{path}: not valid JSON ({e}); fix or rewrite it (e.g. with save_folder)") from None
    if not isinstance(config, dict):
        raise FolderFileError(f"{path}: expected a JSON object, got a {type(config).__name__}")
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# field -> (check, what it must be); absent fields are timm's defaults
_TIMM_FIELDS = {
    "architecture": (lambda v: isinstance(v, str) and bool(v), "a model name string"),
    "num_classes": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "num_features": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "model_args": (lambda v: isinstance(v, dict), "a JSON object of create_model keyword arguments"),
    "pretrained_cfg": (lambda v: isinstance(v, dict), "a JSON object (timm's pretrained_cfg)"),
    "label_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
}


def check_timm_config(config: dict, path: PathLike) -> dict:
    """Raise FolderFileError naming `path` when a timm config.json field has the wrong type or two classifier
    sizes; returns `config`."""
    if "architecture" not in config:
        raise FolderFileError(f"{path}: no 'architecture' (the timm model name); not a timm model folder")
    for key, (ok, expected) in _TIMM_FIELDS.items():
        if key in config and not ok(config[key]):
            raise FolderFileError(f"{path}: '{key}' must be {expected}, got {config[key]!r}")
    model_args = config.get("model_args", {})
    if "num_classes" in model_args and not (_is_int(model_args["num_classes"]) and model_args["num_classes"] >= 0):
        raise FolderFileError(
            f"{path}: 'model_args.num_classes' must be a non-negative integer, got {model_args['num_classes']!r}")
    pretrained_cfg = config.get("pretrained_cfg", {})
    for key in ("input_size", "mean", "std"):
        value = pretrained_cfg.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(x, (int, float)) for x in value)):
            raise FolderFileError(f"{path}: 'pretrained_cfg.{key}' must be a list of numbers, got {value!r}")
    top, inner = config.get("num_classes"), model_args.get("num_classes")
    if top is not None and inner is not None and top != inner:
        raise FolderFileError(
            f"{path}: 'num_classes' ({top}) and 'model_args.num_classes' ({inner}) disagree, so the size of the saved "
            f"classifier is ambiguous; make them equal (the weights' classifier decides), or remove one"
        )
    return config


def checkpoint_num_classes(config: dict) -> Optional[int]:
    """The classifier size a checked timm config.json describes (None when it does not say)."""
    for value in (config.get("model_args", {}).get("num_classes"), config.get("num_classes"),
                  config.get("pretrained_cfg", {}).get("num_classes")):
        if value is not None:
            return value
    return None


def check_local_dir(folder: PathLike) -> dict:
    """What `timm.create_model("local-dir:FOLDER", pretrained=True)` reads, checked before timm loads it:
    config.json types and classifier size, the weights' header and their recorded sha256. Returns the config."""
    folder = Path(folder)
    config = check_timm_config(read_config(folder / CONFIG_NAME), folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        tensors, _ = read_safetensors_header(weights)
        verify_checksum(weights)
        _check_classifier_size(config, tensors, folder / CONFIG_NAME, weights)
    return config


def _check_classifier_size(config: dict, tensors: dict, config_path: Path, weights: Path) -> None:
    # timm builds the head config.json asks for; a different trained head would then fail to load (or, with a
    # num_classes override, be dropped), so name both files while the reason is still clear
    num_classes = checkpoint_num_classes(config)
    classifier = config.get("pretrained_cfg", {}).get("classifier")
    if not num_classes:
        return
    for name in [classifier] if isinstance(classifier, str) else (classifier or []):
        entry = tensors.get(f"{name}.weight")
        if entry is not None and entry[1] and entry[1][0] != num_classes:
            raise FolderFileError(
                f"{config_path}: num_classes is {num_classes} but the classifier {name!r} in {weights.name} has "
                f"{entry[1][0]} classes; fix num_classes in {CONFIG_NAME} (the weights decide)"
            )
