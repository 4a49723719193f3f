"""DCLS ConvFormer and CAFormer: timm's MetaFormer with the SepConv depthwise convs turned into DCLS.

Paper: `Dilated Convolution with Learnable Spacings` (arXiv 2112.03740); the released ImageNet-1k checkpoints come
with `Dilated Convolution with Learnable Spacings makes visual models more aligned with humans: a Grad-CAM study`
(arXiv 2408.03164, https://github.com/rabihchamas/DCLS-GradCAM-Eval).

The model is timm's `MetaFormer`, unchanged except that every depthwise conv (the 7x7 `token_mixer.dwconv` of each
SepConv block: all four stages of ConvFormer, the first two of CAFormer) is replaced by `Dcls2d` through
`dcls_zoo.layers.dclsify`, which also makes the layers of a stage share one `P` Parameter, as in the original code.

Two details make the authors' checkpoints reproduce their logits:
- they were trained with sail-sg's MetaFormer code, whose MLP head LayerNorm uses eps 1e-5 (timm's uses 1e-6;
  the difference moves logits by ~1e-2), so `head_norm_eps` defaults to 1e-5;
- they are timm `train.py` containers (EMA weights under `state_dict_ema`, next to a pickled argparse.Namespace),
  which `dcls_zoo.models._builder.build_zoo_model` downloads and hands to timm's safe file loader.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models import metaformer as timm_metaformer

from ..layers import DclsModelMixin, dclsify
from ..layers.input_checks import ImageInputMixin
from ._builder import build_zoo_model, with_every_shared_copy, zoo_checkpoint_filter
from ._metaformer import SailHeadMetaFormer
from ._sources import DCLS_GAUSS_SOURCE, GRADCAM_STUDY_SOURCE

__all__ = ["DclsMetaFormer", "checkpoint_filter_fn"]


class DclsMetaFormer(DclsModelMixin, ImageInputMixin, SailHeadMetaFormer):
    """timm's `MetaFormer` whose depthwise token-mixer convs are `Dcls2d` layers with per-stage shared positions.

    Args:
        dcls_version: DCLS interpolation, 'v0', 'v1', 'gauss' or 'max'.
        dcls_dilated_kernel_size: side of the grid the kernel elements move on (the padding is its half).
        dcls_kernel_count: learnable kernel elements per channel.
        **kwargs: `SailHeadMetaFormer` arguments (`head_norm_eps`, 1e-5 as in sail-sg's code, which trained the
            checkpoints) and `MetaFormer` ones; unknown names raise TypeError there.
    """

    def __init__(
        self,
        dcls_version: str = "v1",
        dcls_dilated_kernel_size: int = 17,
        dcls_kernel_count: int = 40,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        dclsify(
            self, version=dcls_version, dilated_kernel_size=dcls_dilated_kernel_size, kernel_count=dcls_kernel_count,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # timm's, written out (TorchScript has no super()), after the input check.
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)


@zoo_checkpoint_filter
def checkpoint_filter_fn(state_dict: dict[str, Any], model: DclsMetaFormer) -> dict[str, torch.Tensor]:
    """sail-sg MetaFormer layout (or timm layout), optionally inside a train.py container -> this model's keys.

    Key renames are timm's own MetaFormer filter; DCLS keys (`token_mixer.dwconv.{weight,P}`) pass through it.
    A stage's shared positions may be stored under every layer (the originals) or once (`dcls_zoo.hub`):
    `zoo_checkpoint_filter` handles both (and unwraps the container). Raises ValueError if a key has no
    counterpart in `model`.
    """
    if "stem.conv.weight" not in state_dict:
        try:
            state_dict = timm_metaformer.checkpoint_filter_fn(state_dict, with_every_shared_copy(model))
        except KeyError as e:
            raise ValueError(
                f"checkpoint key maps to {e.args[0]!r}, which {type(model).__name__} does not have; expected a "
                f"sail-sg MetaFormer checkpoint of the same architecture and DCLS config"
            ) from None
    return state_dict


def _create_dcls_metaformer(variant: str, pretrained: bool = False, **kwargs: Any) -> DclsMetaFormer:
    default_out_indices = tuple(range(len(kwargs.get("depths", (2, 2, 6, 2)))))
    out_indices = kwargs.pop("out_indices", default_out_indices)
    return build_zoo_model(
        DclsMetaFormer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 1.0, "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv", "classifier": "head.fc.fc2",
        **GRADCAM_STUDY_SOURCE,
        **kwargs,
    }


_ZENODO = "https://zenodo.org/records/8370737/files/"

default_cfgs = generate_default_cfgs({
    "dcls_convformer_s18.bilinear_in1k": _cfg(
        url=_ZENODO + "convformer_s18_v1_17lim_40el_seed0.pth.tar",
        notes=("timm train.py container, EMA weights under 'state_dict_ema'; DCLS v1, 17x17 grid, 40 elements",),
    ),
    "dcls_caformer_s18.bilinear_in1k": _cfg(
        url=_ZENODO + "caformer_s18_v1_17lim_34el_seed0.pth.tar",
        notes=("timm train.py container, EMA weights under 'state_dict_ema'; DCLS v1, 17x17 grid, 34 elements",),
    ),
    # Gaussian DCLS (arXiv 2306.00817): the paper reports ConvFormer-S18 with Gaussian interpolation, but no
    # checkpoint is published (DCLS-Audio's `convformer_dcls_gauss_s18` cfg has an empty URL).
    "dcls_gauss_convformer_s18": _cfg(
        **DCLS_GAUSS_SOURCE,
        notes=("no published weights: train it, or start from dcls_convformer_s18.bilinear_in1k",
               "DCLS gauss, 23x23 grid, 26 elements"),
    ),
})


@register_model
def dcls_convformer_s18(pretrained: bool = False, **kwargs: Any) -> DclsMetaFormer:
    model_args = dict(
        depths=(3, 3, 9, 3), dims=(64, 128, 320, 512), token_mixers=timm_metaformer.SepConv,
        norm_layers=timm_metaformer.LayerNorm2dNoBias,
        dcls_version="v1", dcls_dilated_kernel_size=17, dcls_kernel_count=40,
    )
    return _create_dcls_metaformer("dcls_convformer_s18", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_caformer_s18(pretrained: bool = False, **kwargs: Any) -> DclsMetaFormer:
    model_args = dict(
        depths=(3, 3, 9, 3), dims=(64, 128, 320, 512),
        token_mixers=(timm_metaformer.SepConv,) * 2 + (timm_metaformer.Attention,) * 2,
        norm_layers=(timm_metaformer.LayerNorm2dNoBias,) * 2 + (timm_metaformer.LayerNormNoBias,) * 2,
        dcls_version="v1", dcls_dilated_kernel_size=17, dcls_kernel_count=34,
    )
    return _create_dcls_metaformer("dcls_caformer_s18", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_gauss_convformer_s18(pretrained: bool = False, **kwargs: Any) -> DclsMetaFormer:
    # ConvFormer-S18 with Gaussian DCLS on every SepConv depthwise conv, as the paper's ImageNet-1k model
    model_args = dict(
        depths=(3, 3, 9, 3), dims=(64, 128, 320, 512), token_mixers=timm_metaformer.SepConv,
        norm_layers=timm_metaformer.LayerNorm2dNoBias,
        dcls_version="gauss", dcls_dilated_kernel_size=23, dcls_kernel_count=26,
    )
    return _create_dcls_metaformer("dcls_gauss_convformer_s18", pretrained=pretrained, **dict(model_args, **kwargs))
