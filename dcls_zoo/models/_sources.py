"""Papers and code that several families' pretrained cfgs cite (not a family itself): one place for each, so the
cfgs (and the model cards built from them) agree."""
from __future__ import annotations

__all__ = ["DCLS_GAUSS_SOURCE", "GRADCAM_STUDY_SOURCE"]

# Gaussian DCLS (arXiv 2306.00817): DCLS-ConvNeXt-T's released checkpoint, the ConvFormer-S18 of the paper.
DCLS_GAUSS_SOURCE = dict(
    license="mit", paper_ids=("arXiv:2306.00817", "arXiv:2112.03740"),
    paper_name="Dilated Convolution with Learnable Spacings: beyond bilinear interpolation",
    origin_url="https://github.com/K-H-Ismail/Dilated-Convolution-with-Learnable-Spacings-PyTorch",
)

# The ImageNet-1k DCLS ConvFormer / CAFormer / FastViT / ResNet-50 checkpoints, released with the Grad-CAM study
# (arXiv 2408.03164) of the DCLS models (arXiv 2112.03740). Their licence is unstated (the repository's README
# says MIT but it holds no LICENSE file): "other", not the licence of timm's or Apple's base weights.
GRADCAM_STUDY_SOURCE = dict(
    license="other", paper_ids=("arXiv:2408.03164", "arXiv:2112.03740"),
    paper_name="Dilated Convolution with Learnable Spacings makes visual models more aligned with humans: "
               "a Grad-CAM study",
    origin_url="https://github.com/rabihchamas/DCLS-GradCAM-Eval",
)
