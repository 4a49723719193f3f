"""The ClickMe alignment score of arXiv 2408.03164 (the Harmonization metric): Spearman rho / human ceiling."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["HUMAN_SPEARMAN_CEILING", "AlignmentResult", "alignment_score", "spearman_rho"]

# Human-to-human Spearman correlation on ClickMe (the authors' and Harmonization's normaliser).
HUMAN_SPEARMAN_CEILING = 0.65753


@dataclass
class AlignmentResult:
    """score = mean_rho / HUMAN_SPEARMAN_CEILING; `rho[i]` is NaN where pair i was skipped (a constant map)."""

    score: float
    mean_rho: float
    rho: np.ndarray = field(repr=False)
    used: int
    skipped: int


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of each row, ties getting the mean of their ranks (scipy's rankdata 'average')."""
    n = values.shape[-1]
    order = np.argsort(values, axis=-1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=-1)
    ranks = np.empty(values.shape, dtype=np.float64)
    for row in range(values.shape[0]):
        v = sorted_values[row]
        starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
        ends = np.r_[starts[1:], n]
        group_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
        ranks[row, order[row]] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman_rho(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair of (N, D) arrays (Pearson correlation of average ranks)."""
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    return (ra * rb).sum(axis=1) / np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))


def _as_flat(maps, name: str) -> np.ndarray:
    if hasattr(maps, "detach"):  # torch tensor, without importing torch here
        maps = maps.detach().float().cpu().numpy()
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"alignment_score: {name} must be (N, H, W) maps (or (N, 1, H, W)), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"alignment_score: {name} contain NaN or inf values")
    return arr.reshape(arr.shape[0], -1)


def alignment_score(model_maps, human_maps) -> AlignmentResult:
    """The paper's score of model saliency maps against ClickMe human maps.

    Per image, Spearman rho between the flattened maps (same H x W); pairs where either map is constant are skipped
    and counted, as in the authors' `utils.spearman_correlation`; score = mean rho / 0.65753 (NaN if no pair is
    left). Accepts torch tensors or numpy arrays of shape (N, H, W) or (N, 1, H, W).
    """
    a, b = _as_flat(model_maps, "model_maps"), _as_flat(human_maps, "human_maps")
    if a.shape != b.shape:
        raise ValueError(f"alignment_score: model_maps and human_maps must have the same shape, got {a.shape} and "
                         f"{b.shape} (flattened); resize the model maps to the human maps' size first")
    keep = (a.max(axis=1) > a.min(axis=1)) & (b.max(axis=1) > b.min(axis=1))
    rho = np.full(a.shape[0], np.nan)
    if keep.any():
        rho[keep] = spearman_rho(a[keep], b[keep])
    used = int(keep.sum())
    mean_rho = float(rho[keep].mean()) if used else float("nan")
    return AlignmentResult(score=mean_rho / HUMAN_SPEARMAN_CEILING, mean_rho=mean_rho, rho=rho, used=used,
                           skipped=int(a.shape[0] - used))
