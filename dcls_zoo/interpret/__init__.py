"""Interpretability: Grad-CAM and Threshold-Grad-CAM, the ClickMe alignment study, pictures of learned kernels.

Names are imported on first use, so `dcls-zoo --help` (which imports `dcls_zoo.interpret.commands`) stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "grad_cam": "gradcam", "default_target_layer": "gradcam", "GRAD_CAM_METHODS": "gradcam",
    "alignment_score": "alignment", "AlignmentResult": "alignment", "HUMAN_SPEARMAN_CEILING": "alignment",
    "spearman_rho": "alignment", "activations_and_gradients": "gradcam", "maps_from": "gradcam",
    "ClickMe": "clickme", "read_tfrecord": "clickme", "parse_example": "clickme", "preprocess_clickme": "clickme",
    "evaluate_clickme": "study", "study_transform": "study", "plot_kernels": "plots", "plot_grad_cam": "plots",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
