"""FastViT's conditional positional encoding when its depthwise conv is DCLS (shared by the FastViT families)."""
from __future__ import annotations

from timm.models.fastvit import RepConditionalPosEnc

from .dcls import DclsNd

__all__ = ["DclsRepConditionalPosEnc"]


class DclsRepConditionalPosEnc(RepConditionalPosEnc):
    """timm's RepCPE whose `reparameterize` also accepts a DCLS `pos_enc` (frozen to a dense conv first) or a
    frozen one whose kernel is larger than the 7x7 it was built with."""

    def reparameterize(self) -> None:
        # The identity branch is folded into the kernel's centre, so the kernel must be dense and its size known
        # (the DCLS grid once frozen, whether here or earlier with `to_conv()`).
        if isinstance(self.pos_enc, DclsNd):
            self.pos_enc = self.pos_enc.to_conv()
        self.spatial_shape = tuple(self.pos_enc.kernel_size)
        super().reparameterize()
