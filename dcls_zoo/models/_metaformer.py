"""timm's MetaFormer as sail-sg's MetaFormer code trained it (not a family itself): the base of the DCLS
ConvFormer / CAFormer and of the DCLS-Audio ConvFormer."""
from __future__ import annotations

from typing import Any, Optional

import torch
from timm.models.metaformer import MetaFormer, MlpHead

__all__ = ["SailHeadMetaFormer"]


class SailHeadMetaFormer(MetaFormer):
    """timm `MetaFormer` whose MLP-head LayerNorm has sail-sg's eps (kept through `reset_classifier`), with a
    `group_matcher` (timm's MetaFormer has none).

    sail-sg's MlpHead LayerNorm uses torch's default eps, 1e-5; timm's uses 1e-6, which moves the logits of
    checkpoints trained with sail-sg's code (by ~1e-2 on ImageNet, ~8e-5 on AudioSet).

    Args:
        head_norm_eps: eps of the MLP head's LayerNorm.
        **kwargs: `MetaFormer` arguments; unknown names raise TypeError there.
    """

    def __init__(self, head_norm_eps: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head_norm_eps = head_norm_eps
        self._set_head_norm_eps()

    def _set_head_norm_eps(self) -> None:
        if isinstance(self.head.fc, MlpHead):
            self.head.fc.norm.eps = self.head_norm_eps

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False,
                         device=None, dtype=None) -> None:
        super().reset_classifier(num_classes, global_pool, reset_other=reset_other, device=device, dtype=dtype)
        self._set_head_norm_eps()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # ConvNeXt's layout: the stem, then per stage its downsampling and its blocks.
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            ],
        )
