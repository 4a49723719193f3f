"""Resume checkpoints that hold no pickle: safetensors for tensors, JSON for everything else.

A checkpoint is one folder `checkpoints/step_XXXXXXXX/`:

- `model.safetensors`: the model (shared DCLS positions stored once, the tie map in the metadata);
- `ema.safetensors`: the weight EMA, when one is kept;
- `optimizer.safetensors` + `optimizer.json`: the optimiser's state tensors, and its param groups and scalar state;
- `rng_state_<rank>.json`: Python, NumPy, torch CPU and CUDA generator states of every process;
- `scaler.json`: the fp16 gradient scaler, when there is one;
- `trainer_state.json`: step, epoch, evaluations, the run's configuration and the list of the files above with
  their sizes.

Reading one never unpickles anything: a file that is not what its name says (a crafted pickle, a truncated
tensor file, invalid JSON), a missing file or a file that is not listed stops the resume with a
`CheckpointError` (a ValueError) naming the file. The learning-rate schedule is a function of the step and the
data order and augmentation are functions of (seed, epoch, index), so neither needs a file of its own.
"""
from __future__ import annotations

import json
import os
import random
import re
from typing import Any

import numpy as np
import torch
import torch.nn as nn

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_STATE_FILE = "optimizer.json"
SCALER_FILE = "scaler.json"
TRAINER_STATE = "trainer_state.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A resume checkpoint that cannot be read as written (missing, truncated, foreign or unexpected file)."""


def rng_state_file(rank: int) -> str:
    return f"rng_state_{rank}.json"


def _unreadable(path: str, err: BaseException, expected: str) -> CheckpointError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointError(f"--resume: {path} is not a readable {expected} ({reason}); the checkpoint is damaged: "
                           "resume from an earlier one (delete this folder) or start again with --overwrite")


def read_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: {path} is missing; the checkpoint is incomplete: resume from an earlier "
                              "one (delete this folder) or start again with --overwrite")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, ValueError) as err:
        raise _unreadable(path, err, "JSON file") from None


def write_json(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
        f.write("\n")


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    from ..hub.save import load_state_dict_file

    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: {path} is missing; the checkpoint is incomplete: resume from an earlier "
                              "one (delete this folder) or start again with --overwrite")
    try:
        return load_state_dict_file(path)
    except Exception as err:  # safetensors raises its own error types for every kind of bad header or size
        raise _unreadable(path, err, "safetensors file") from None


def as_os_error(err: Exception, path: str) -> Exception:
    """safetensors reports a failed write (full disk, read-only folder) as SafetensorError: give it back as the
    OSError it is (with its errno), so callers handle every write failure alike; other errors are returned as is."""
    from safetensors import SafetensorError

    if isinstance(err, SafetensorError):
        found = re.search(r"os error (\d+)", str(err))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code), path)
    return err


def _write_tensors(path: str, tensors: dict[str, torch.Tensor]) -> None:
    from ..hub.save import save_state_dict

    try:
        save_state_dict(tensors, path)
    except Exception as err:
        raise as_os_error(err, path) from None


# --- model and EMA --------------------------------------------------------------------------------------------

def save_module_state(path: str, state_dict: dict[str, torch.Tensor]) -> None:
    _write_tensors(path, state_dict)


def load_module_state(path: str, module: nn.Module) -> None:
    state = _read_tensors(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"--resume: {path} does not fit the model ({'; '.join(parts)}); it was written for "
                              "another model")
    module.load_state_dict(state, strict=True)


# --- optimiser ------------------------------------------------------------------------------------------------

def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_value(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v, where) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"optimizer state {where} holds a {type(value).__name__}, which a checkpoint cannot store as "
                    "JSON (only numbers, strings, lists and tensors)")


def save_optimizer_state(folder: str, state_dict: dict[str, Any]) -> list[str]:
    """Tensors of `optimizer.state_dict()["state"]` to safetensors, the rest to JSON; returns the file names."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{name}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = _json_value(value, f"{index}/{name}")
    groups = [{k: _json_value(v, f"param_groups[{i}].{k}") for k, v in group.items()}
              for i, group in enumerate(state_dict["param_groups"])]
    _write_tensors(os.path.join(folder, OPTIMIZER_TENSORS_FILE), tensors)
    write_json(os.path.join(folder, OPTIMIZER_STATE_FILE), {"param_groups": groups, "scalar_state": scalars})
    return [OPTIMIZER_TENSORS_FILE, OPTIMIZER_STATE_FILE]


def load_optimizer_state(folder: str, optimizer: torch.optim.Optimizer) -> None:
    tensors_path = os.path.join(folder, OPTIMIZER_TENSORS_FILE)
    state_path = os.path.join(folder, OPTIMIZER_STATE_FILE)
    tensors = _read_tensors(tensors_path)
    saved = read_json(state_path)
    live = optimizer.state_dict()
    try:
        groups = saved["param_groups"]
        scalars = saved["scalar_state"]
        if len(groups) != len(live["param_groups"]):
            raise CheckpointError(f"--resume: {state_path} has {len(groups)} parameter groups, the optimizer "
                                  f"{len(live['param_groups'])}; it was written for another model or optimizer")
        for group, now in zip(groups, live["param_groups"]):
            if len(group["params"]) != len(now["params"]):
                raise CheckpointError(f"--resume: {state_path}: group {group.get('name', '?')!r} has "
                                      f"{len(group['params'])} parameters, the optimizer {len(now['params'])}")
            for key, value in now.items():  # JSON has no tuples: give back the optimizer's own types (betas)
                if isinstance(value, tuple) and isinstance(group.get(key), list):
                    group[key] = tuple(group[key])
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = value
        for index, values in scalars.items():
            state.setdefault(int(index), {}).update(values)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise _unreadable(state_path, err, "optimizer state") from None
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"--resume: {tensors_path} does not fit the optimizer ({err}); it was written for "
                              "another model or optimizer") from None


# --- random generators ----------------------------------------------------------------------------------------

def rng_states() -> dict[str, Any]:
    """This process's generator states as JSON values (what Accelerate's `save_state` pickles)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": [version, list(internal), gauss],
              "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
              "torch": torch.get_rng_state().numpy().tobytes().hex()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [s.numpy().tobytes().hex() for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(path: str) -> None:
    states = read_json(path)
    try:
        version, internal, gauss = states["python"]
        python = (version, tuple(internal), gauss)
        kind, keys, pos, has_gauss, cached = states["numpy"]
        numpy_state = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        torch_state = torch.frombuffer(bytearray.fromhex(states["torch"]), dtype=torch.uint8)
        cuda = [torch.frombuffer(bytearray.fromhex(s), dtype=torch.uint8) for s in states.get("cuda", [])]
        if torch_state.numel() != torch.get_rng_state().numel():
            raise ValueError(f"torch generator state of {torch_state.numel()} bytes, expected "
                             f"{torch.get_rng_state().numel()}")
        if "cuda" in states and torch.cuda.is_available() and len(cuda) != torch.cuda.device_count():
            raise ValueError(f"{len(cuda)} CUDA generator states for {torch.cuda.device_count()} devices")
        current = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            random.setstate(python)
            np.random.set_state(numpy_state)
            torch.set_rng_state(torch_state)
        except (TypeError, ValueError, RuntimeError):
            random.setstate(current[0])
            np.random.set_state(current[1])
            torch.set_rng_state(current[2])
            raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise _unreadable(path, err, "generator state") from None
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# --- the whole folder -----------------------------------------------------------------------------------------

def file_sizes(folder: str, names: list[str]) -> dict[str, int]:
    return {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(names)}


def check_listed_files(folder: str, listed: dict[str, int]) -> None:
    """Every listed file is there with its size; no other file is (nothing is read that the run did not write)."""
    present = set(os.listdir(folder))
    for name in sorted(present - set(listed) - {TRAINER_STATE}):
        raise CheckpointError(f"--resume: {os.path.join(folder, name)} is not part of this checkpoint (its "
                              f"{TRAINER_STATE} lists {', '.join(sorted(listed))}); nothing else is read: remove it")
    for name, size in sorted(listed.items()):
        path = os.path.join(folder, name)
        if os.path.islink(path):
            raise CheckpointError(f"--resume: {path} is a symbolic link; a checkpoint holds the plain files the run "
                                  "wrote, nothing else is read: replace it by the file or resume from an earlier "
                                  "checkpoint")
        if not os.path.isfile(path):
            raise CheckpointError(f"--resume: {path} is missing; the checkpoint is incomplete: resume from an "
                                  "earlier one (delete this folder) or start again with --overwrite")
        if os.path.getsize(path) != size:
            raise CheckpointError(f"--resume: {path} has {os.path.getsize(path)} bytes, {size} were written; the "
                                  "checkpoint is damaged: resume from an earlier one (delete this folder) or start "
                                  "again with --overwrite")
