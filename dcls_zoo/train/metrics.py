"""Evaluation metrics of the trainer: top-k hits and perplexity (mAP lives in `dcls_zoo.layers.metrics`)."""
from __future__ import annotations

import math

import torch


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Boolean per row: is the target among the k highest logits (k is capped at the number of classes)."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return top.eq(targets.view(-1, 1)).any(dim=1)


def perplexity(mean_token_loss: float) -> float:
    return math.exp(mean_token_loss) if mean_token_loss < 700 else float("inf")
