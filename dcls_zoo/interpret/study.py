"""The ClickMe alignment study of arXiv 2408.03164: Grad-CAM / Threshold-Grad-CAM maps vs human maps, per model."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .alignment import HUMAN_SPEARMAN_CEILING, AlignmentResult, alignment_score
from .gradcam import GRAD_CAM_METHODS, activations_and_gradients, maps_from

__all__ = ["study_transform", "evaluate_clickme", "uses_dcls"]


def uses_dcls(model: nn.Module) -> bool:
    from ..layers import DclsNd

    return any(isinstance(m, DclsNd) for m in model.modules())


def study_transform(model: nn.Module) -> Callable:
    """The authors' model preprocessing of a 224 x 224 ClickMe image (a PIL image) -> normalised tensor.

    ConvNeXt: resize 256 bicubic (crop_pct 0.875), centre crop 224; MetaFormer: resize 224 bicubic, crop 224;
    others (ResNet, FastViT, ...): timm's eval transform of the model's data config. Note that the crop is not
    undone: maps of the cropped view are compared with the human maps of the whole image, as in the reference.
    """
    from timm.data import create_transform, resolve_data_config
    from timm.models.convnext import ConvNeXt
    from timm.models.metaformer import MetaFormer

    cfg = resolve_data_config({}, model=model)
    if isinstance(model, ConvNeXt):
        cfg.update(crop_pct=224 / 256, interpolation="bicubic", input_size=(3, 224, 224))
    elif isinstance(model, MetaFormer):
        cfg.update(crop_pct=1.0, interpolation="bicubic", input_size=(3, 224, 224))
    return create_transform(**cfg, is_training=False)


def evaluate_clickme(
    model: nn.Module,
    data: torch.utils.data.Dataset,
    methods: Sequence[str] = GRAD_CAM_METHODS,
    count: Optional[int] = None,
    batch_size: int = 32,
    floor: float = 0.3,
    layer=None,
    device: Optional[torch.device] = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "",
) -> dict[str, AlignmentResult]:
    """Alignment score of each method for `model` on the first `count` items of ClickMe `data`.

    Each batch: the 224 x 224 float images are cast to uint8 (as the reference does), transformed by
    `study_transform(model)`, explained for their ground-truth labels, and the maps (resized to 224 x 224) are
    compared with the human heatmaps. One forward/backward per batch serves every method.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    for method in methods:
        if method not in GRAD_CAM_METHODS:
            raise ValueError(f"method must be one of {GRAD_CAM_METHODS}, got {method!r}")
    count = len(data) if count is None else count
    if not 0 < count <= len(data):
        raise ValueError(f"count must be in [1, {len(data)}], got {count}")
    device = device or next(model.parameters()).device
    transform = study_transform(model)
    subset = torch.utils.data.Subset(data, range(count))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
    # Per-image rho is kept, not the maps (the full set's maps would take 10 GB per method).
    rhos: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    with tqdm(total=count, desc=desc, unit="img", disable=not progress) as bar:
        for images, heatmaps, labels in loader:
            pil = [Image.fromarray(img.permute(1, 2, 0).to(torch.uint8).numpy()) for img in images]
            x = torch.stack([transform(p) for p in pil]).to(device)
            acts, grads = activations_and_gradients(model, x, labels.to(device), layer=layer)
            for method in methods:
                maps = maps_from(acts, grads, method=method, floor=floor, size=heatmaps.shape[-2:])
                rhos[method].append(alignment_score(maps, heatmaps).rho)
            bar.update(len(labels))
    results = {}
    for method in methods:
        rho = np.concatenate(rhos[method])
        used = int(np.isfinite(rho).sum())
        mean_rho = float(np.nanmean(rho)) if used else float("nan")
        results[method] = AlignmentResult(score=mean_rho / HUMAN_SPEARMAN_CEILING, mean_rho=mean_rho, rho=rho,
                                          used=used, skipped=len(rho) - used)
    return results
