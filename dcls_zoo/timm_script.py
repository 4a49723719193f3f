"""Run one of timm's own scripts (train.py, validate.py, inference.py, benchmark.py, ...) with the zoo registered.

timm has no plugin discovery: its scripts only know the models of the modules they import. This launcher imports
`dcls_zoo` (registering every zoo model with timm), then runs the given script file as `__main__` with the rest of
the command line as its arguments:

    python -m dcls_zoo.timm_script path/to/timm/train.py /data/imagenet --model dcls_convnext_tiny ...
    python -m dcls_zoo.timm_script path/to/timm/validate.py /data/imagenet --model dcls_convnext_tiny \\
        --checkpoint output/train/.../model_best.pth.tar

The DCLS recipe under timm's train.py: every zoo model clamps its positions before each forward (nothing to do),
and timm's optimizer factory already leaves `model.no_weight_decay()` (positions, widths) without weight decay.
For the papers' 5x position learning rate, this launcher makes `timm.optim.create_optimizer_v2`, given a model with
DCLS layers, build `dcls_zoo.layers.dcls_parameter_groups` (timm's schedulers apply their `lr_scale`).
`--position-lr-scale S` (before the script path) changes the factor; `--position-lr-scale 1` keeps timm's groups.
"""
from __future__ import annotations

import argparse
import functools
import logging
import runpy
import sys
from pathlib import Path
from typing import Optional, Sequence

_logger = logging.getLogger(__name__)

USAGE = "python -m dcls_zoo.timm_script [--position-lr-scale S] SCRIPT.py [SCRIPT ARGS ...]"


def _with_dcls_groups(create_optimizer_v2, position_lr_scale: float):
    """Wrap timm's `create_optimizer_v2` so that a model with DCLS layers gets the papers' groups."""
    import torch.nn as nn

    from .layers import DclsNd, dcls_parameter_groups

    @functools.wraps(create_optimizer_v2)
    def create_optimizer(model_or_params, *args, **kwargs):
        has_dcls = isinstance(model_or_params, nn.Module) and any(
            isinstance(m, DclsNd) for m in model_or_params.modules())
        if not has_dcls or kwargs.get("layer_decay") is not None:
            return create_optimizer_v2(model_or_params, *args, **kwargs)
        weight_decay = kwargs.pop("weight_decay", 0.0)
        groups = dcls_parameter_groups(model_or_params, weight_decay=weight_decay,
                                       position_lr_scale=position_lr_scale)
        for group in groups:   # timm's optimizers take only optimizer options in a group
            group.pop("names")
            group.pop("name")
        kwargs.pop("filter_bias_and_bn", None)
        _logger.info("dcls_zoo: DCLS positions get %gx the learning rate and no weight decay", position_lr_scale)
        return create_optimizer_v2(groups, *args, weight_decay=weight_decay, **kwargs)

    return create_optimizer


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m dcls_zoo.timm_script", usage=USAGE,
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--position-lr-scale", type=float, default=5.0,
                        help="learning-rate factor of DCLS positions and widths (default 5, the papers')")
    parser.add_argument("script", help="the timm script to run (train.py, validate.py, ...)")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args(argv)
    script = Path(args.script)
    if not script.is_file():
        parser.error(f"script {args.script!r} is not a file; pass the path of timm's train.py, validate.py, ...")
    if not args.position_lr_scale > 0:
        parser.error(f"--position-lr-scale must be > 0, got {args.position_lr_scale}")

    import timm.optim

    import dcls_zoo  # noqa: F401  (registers the zoo's models with timm)

    if args.position_lr_scale != 1.0:
        timm.optim.create_optimizer_v2 = _with_dcls_groups(timm.optim.create_optimizer_v2, args.position_lr_scale)
    sys.argv = [str(script), *args.script_args]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
