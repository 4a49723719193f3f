"""Convert an original checkpoint (any layout the zoo reads) into a Hub-ready folder, and prove it converted.

For a timm model the original file goes through the family's own loading path, exactly as a user's
`timm.create_model(name, pretrained=True)` would take it (pretrained cfg, container keys, `checkpoint_filter_fn`,
position re-tying), via `pretrained_cfg_overlay=dict(file=...)`. The loaded model is written with `save_folder`
and loaded back twice, by timm (`local-dir:`) and by `load_folder` (strict); the logits of both on a fixed input
must equal those of the original-layout load. The report says so, with the numbers.

The GPT-2 variants (`ortho_gpt2`) convert from the authors' nanoGPT layout through `dcls_zoo.lm`'s converter; the
same save / reload (`AutoModelForCausalLM.from_pretrained`) / compare steps follow.

Nothing is lost or left half-done: the folder is written into a hidden temporary folder next to `out_dir` and moved
into place only after the check passed (a failed conversion leaves nothing behind); an existing, non-empty
`out_dir` is refused unless `overwrite=True`. The original checkpoint is read with `torch.load(weights_only=True)`
only: a crafted, truncated or garbage file is an error naming it, and nothing in it runs.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn

from ..models._files import load_checkpoint_file
from .cards import unique_parameter_count
from .save import WEIGHTS_NAME, load_folder, save_folder

__all__ = ["ConversionReport", "convert_checkpoint", "fixed_input"]

PathLike = Union[str, Path]


def _load_original_lm(name: str, checkpoint: str) -> nn.Module:
    """A nanoGPT-layout checkpoint -> `OrthoGPT2LMHeadModel`, through dcls_zoo.lm's converter.

    `name` is a preset of `dcls_zoo.lm.ORTHO_GPT2_PRESETS` (the checkpoint must match it) or the model type
    itself, `ortho_gpt2` (configuration read from the checkpoint).
    """
    from dcls_zoo.lm import ORTHO_GPT2_PRESETS, load_nanogpt_checkpoint

    model = load_nanogpt_checkpoint(load_checkpoint_file(checkpoint))   # weights_only; bad files named
    preset = ORTHO_GPT2_PRESETS.get(name, {})
    differs = {k: (getattr(model.config, k), v) for k, v in preset.items() if getattr(model.config, k) != v}
    if differs:
        raise ValueError(f"{checkpoint} is not a {name} checkpoint: (checkpoint, preset) differ for {differs}")
    return model


def _lm_model_type() -> str:
    from dcls_zoo.lm import OrthoGPT2Config

    return OrthoGPT2Config.model_type


def _is_lm_name(name: str) -> bool:
    from dcls_zoo.lm import ORTHO_GPT2_PRESETS

    return name == _lm_model_type() or name in ORTHO_GPT2_PRESETS


@dataclass(frozen=True)
class ConversionReport:
    """What `convert_checkpoint` did; `max_abs_diff` maps each reload path to its max |logits difference|."""

    name: str
    checkpoint: str
    folder: Path
    files: tuple[str, ...]
    input_shape: tuple[int, ...]
    max_abs_diff: dict
    unique_parameters: int
    shared_tensors: int
    tolerance: float

    @property
    def verified(self) -> bool:
        return all(d <= self.tolerance for d in self.max_abs_diff.values())

    def describe(self) -> str:
        diffs = ", ".join(f"{k}: {v:.3g}" for k, v in self.max_abs_diff.items())
        status = "verified" if self.verified else "NOT verified"
        return (
            f"{self.name}: {self.checkpoint} -> {self.folder} ({', '.join(self.files)})\n"
            f"  {self.unique_parameters:,} unique parameters; shared tensors (stored once): {self.shared_tensors}\n"
            f"  {status}: max |logits(reloaded) - logits(original layout)| on a fixed input {self.input_shape}: "
            f"{diffs} (tolerance {self.tolerance:g})"
        )


def fixed_input(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The deterministic input conversions are checked on (standard normal, CPU generator seeded with `seed`)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _shared_count(model: nn.Module) -> int:
    from ..layers.sharing import shared_parameter_groups

    return len(shared_parameter_groups(model))


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return (out.logits if hasattr(out, "logits") else out).float()


def _convert_timm(name: str, checkpoint: str, folder: Path, batch_size: int) -> tuple[nn.Module, dict, tuple]:
    import timm

    load_checkpoint_file(checkpoint)   # a bad file is named here, whichever loader the family uses
    original = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint)).eval()
    save_folder(original, folder, model_name=name)
    shape = (batch_size, *original.pretrained_cfg["input_size"])
    x = fixed_input(shape)
    reference = _logits(original, x)
    reloads = {
        "timm local-dir": timm.create_model(f"local-dir:{folder}", pretrained=True).eval(),
        "dcls_zoo load_folder": load_folder(folder).eval(),
    }
    diffs = {k: (_logits(m, x) - reference).abs().max().item() for k, m in reloads.items()}
    for key, model in reloads.items():
        if _shared_count(model) != _shared_count(original):
            raise RuntimeError(f"{key}: {_shared_count(model)} shared tensors after reload, "
                               f"{_shared_count(original)} in the original-layout load")
    return original, diffs, shape


def _convert_transformers(name: str, checkpoint: str, folder: Path, batch_size: int) -> tuple[nn.Module, dict, tuple]:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()   # the report says what was written and checked
    try:
        return _convert_transformers_quietly(name, checkpoint, folder, batch_size)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _convert_transformers_quietly(name: str, checkpoint: str, folder: Path,
                                  batch_size: int) -> tuple[nn.Module, dict, tuple]:
    from transformers import AutoModelForCausalLM

    original = _load_original_lm(name, checkpoint).eval()
    save_folder(original, folder, model_name=name)
    vocab = original.config.vocab_size
    shape = (batch_size, 16)
    x = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    diffs = {"transformers from_pretrained": (_logits(reloaded, x) - _logits(original, x)).abs().max().item()}
    return original, diffs, shape


def convert_checkpoint(
    name: str,
    checkpoint: PathLike,
    out_dir: PathLike,
    *,
    batch_size: int = 2,
    tolerance: float = 0.0,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert `checkpoint` of the registered model `name` ('arch.tag') into a Hub-ready folder `out_dir`.

    Raises RuntimeError when a reload's logits differ from the original-layout load by more than `tolerance`
    (default 0: the converted weights are the same numbers, so the logits must be identical); `out_dir` is then
    untouched. An existing non-empty `out_dir` is replaced only with `overwrite=True`, after the check passed.
    """
    import timm

    checkpoint = str(checkpoint)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    if timm.is_model(name.partition(".")[0]):
        convert = _convert_timm
    elif _is_lm_name(name):
        convert = _convert_transformers
    else:
        raise ValueError(
            f"unknown model {name!r}: expected a registered timm name ('arch.tag'), a dcls_zoo.lm preset or "
            f"{_lm_model_type()!r} (did you `import dcls_zoo`?)"
        )
    target = Path(out_dir)
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.converting-", dir=target.parent))
    try:
        model, diffs, shape = convert(name, checkpoint, staging, batch_size)
        report = ConversionReport(
            name=name, checkpoint=checkpoint, folder=target,
            files=tuple(sorted(p.name for p in staging.iterdir() if p.is_file())),
            input_shape=tuple(shape), max_abs_diff=diffs,
            unique_parameters=unique_parameter_count(model), shared_tensors=_shared_count(model),
            tolerance=tolerance,
        )
        if not report.verified:
            raise RuntimeError("conversion check failed (nothing was written to "
                               f"{target}): " + " ".join(report.describe().split()))
        if WEIGHTS_NAME not in report.files:
            raise RuntimeError(f"the conversion wrote no {WEIGHTS_NAME}; nothing was written to {target}")
        _move_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return replace(report, folder=target)


def _check_target(target: Path, overwrite: bool) -> None:
    if target.is_symlink():
        raise ValueError(f"out_dir {target} is a symbolic link; give the folder itself")
    if target.exists() and not target.is_dir():
        raise ValueError(f"out_dir {target} exists and is not a folder; choose a folder path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(f"out_dir {target} exists and is not empty; choose another folder, or pass --overwrite "
                         f"(overwrite=True) to replace it once the conversion is verified")


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the verified folder to `target`; an existing target is moved aside first and removed after."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
        os.rename(target, old / target.name)
    try:
        os.rename(staging, target)
    except OSError:
        if old is not None:   # put the previous folder back
            os.rename(old / target.name, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
