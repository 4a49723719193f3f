"""Multi-label evaluation metrics in pure torch (usable on any device, inside or outside a training loop).

`mean_average_precision` is the AudioSet "mAP": the macro average, over classes with at least one positive, of
each class's average precision, with sklearn's definition of AP (step-wise precision-recall area,
AP = sum_k (R_k - R_{k-1}) P_k over distinct score thresholds, tied scores forming one threshold). The tests check
it against `sklearn.metrics.average_precision_score(targets, scores, average=None)`.
"""
from __future__ import annotations

import torch

__all__ = ["average_precision_per_class", "mean_average_precision"]


def _check(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(scores, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError("scores and targets must be torch.Tensors of shape (samples, classes)")
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both have shape (samples, classes), got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if scores.shape[0] == 0:
        raise ValueError("scores and targets hold no samples")
    if not scores.is_floating_point():
        scores = scores.double()
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if not ((targets == 0) | (targets == 1)).all():
        raise ValueError("targets must be binary (0/1); threshold soft (mixup / label-smoothed) targets first")
    return scores, targets.to(torch.float64)


@torch.no_grad()
def average_precision_per_class(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision of each class, shape (classes,), float64; NaN for classes with no positive sample.

    Args:
        scores: (samples, classes) real-valued scores (logits or probabilities; only their order matters).
        targets: (samples, classes) binary labels (0/1, bool or any numeric dtype).
    """
    scores, targets = _check(scores, targets)
    n = scores.shape[0]
    order = torch.argsort(scores, dim=0, descending=True, stable=True)
    sorted_scores = torch.gather(scores, 0, order)
    sorted_targets = torch.gather(targets, 0, order)
    true_pos = sorted_targets.cumsum(0)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device).unsqueeze(1)
    precision = true_pos / rank
    # A threshold sits at the last element of each run of tied scores; every element of the run takes the
    # precision there. Walking the reversed sequence, that element is the first of its run: carry its index
    # forward with a running max.
    rev_scores = sorted_scores.flip(0)
    run_start = torch.ones_like(rev_scores, dtype=torch.bool)
    run_start[1:] = rev_scores[1:] != rev_scores[:-1]
    idx = torch.arange(n, device=scores.device).unsqueeze(1).expand_as(rev_scores)
    start_idx = torch.where(run_start, idx, torch.zeros_like(idx)).cummax(0).values
    precision_at_threshold = torch.gather(precision.flip(0), 0, start_idx).flip(0)
    positives = targets.sum(0)
    ap = (sorted_targets * precision_at_threshold).sum(0) / positives
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))


@torch.no_grad()
def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro-averaged average precision over the classes that have at least one positive sample.

    Raises ValueError if no class has a positive (the metric is undefined), on shape mismatch, NaN scores or
    non-binary targets.
    """
    ap = average_precision_per_class(scores, targets)
    valid = ~torch.isnan(ap)
    if not valid.any():
        raise ValueError("mean_average_precision: no class has a positive sample")
    return float(ap[valid].mean())
