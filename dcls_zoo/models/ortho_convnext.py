"""ConvNeXt with learnable Hermite, Fourier or tropical activations in every block's MLP.

Paper: Polynomial, trigonometric, and tropical activations (Khalfaoui-Hassani, Kesselheim), arXiv:2502.01247
(ICLR 2026). Original code: https://github.com/K-H-Ismail/ConvNeXt-ortho (MIT), activations from ``torchortho``.

The model is timm's own `ConvNeXt`; the only change is the block MLP's activation (one instance per block, so
18 coefficient sets in ConvNeXt-T), as in the original. The paper's degrees: Hermite 3, Fourier 5, Tropical 5.
Activation coefficients are 1-D and trained without weight decay and at the common learning rate, as the
authors did (`no_weight_decay`). No weights are released; `checkpoint_filter_fn` maps the original FB-layout
checkpoints (``stages.{s}.{b}.act.*``, ``downsample_layers``, ``pwconv``) to timm names.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any

from timm.layers import register_notrace_module
from timm.models import convnext as timm_convnext
from timm.models import generate_default_cfgs, register_model

from ..layers.activations import ACTIVATION_CLASSES, DEFAULT_DEGREES, activation_parameter_names
from ._builder import build_zoo_model, zoo_checkpoint_filter
from ._convnext import CONVNEXT_SIZES, CheckedConvNeXt, convnext_feature_cfg, convnext_imagenet_cfg

__all__ = ["OrthoConvNeXt"]

# The activations run custom autograd functions (and the tropical ones a host-side envelope): FX graphs keep them
# as leaf modules, like timm's own non-traceable layers.
for _activation_cls in ACTIVATION_CLASSES.values():
    register_notrace_module(_activation_cls)


class OrthoConvNeXt(CheckedConvNeXt):
    """timm `ConvNeXt` whose block-MLP activation is a learnable Hermite / Fourier / tropical function.

    Args:
        activation: 'hermite', 'fourier', 'tropical' or 'tropical_rational'.
        activation_degree: degree of the activation (default: the paper's, 3 / 5 / 5 / 6).
        activation_scheme: 'default' (torchortho 0.1.2 normalisation and init) or 'legacy' (0.1.0/0.1.1).
        device, dtype: where and in what dtype to build the model (the activations too).
        **kwargs: timm's `ConvNeXt` arguments, less `act_layer` (`activation` sets it).
    """

    def __init__(
        self,
        activation: str = "hermite",
        activation_degree: int | None = None,
        activation_scheme: str = "default",
        device=None,
        dtype=None,
        **kwargs: Any,
    ) -> None:
        if "act_layer" in kwargs:
            raise TypeError("OrthoConvNeXt takes no act_layer: `activation` sets it")
        if activation not in ACTIVATION_CLASSES:
            raise ValueError(f"activation must be one of {sorted(ACTIVATION_CLASSES)}, got {activation!r}")
        degree = DEFAULT_DEGREES[activation] if activation_degree is None else activation_degree
        # timm's Mlp calls act_layer() with no arguments: bind degree, scheme and the factory device/dtype here
        act_layer = partial(ACTIVATION_CLASSES[activation], degree, scheme=activation_scheme, device=device,
                            dtype=dtype)
        super().__init__(act_layer=act_layer, device=device, dtype=dtype, **kwargs)
        self.activation = activation
        self.activation_degree = degree

    def no_weight_decay(self) -> set[str]:
        """Activation coefficients are trained without weight decay, as in the original recipe."""
        return activation_parameter_names(self)


# Activation keys are remapped here and kept away from timm's remap, which would try to reshape torchortho's 2-D
# `coeffs` buffer to a model key; the activation modules accept (and check) those buffers when loading.
_ACT_KEY = re.compile(r"^stages\.(\d+)\.(\d+)\.act\.(.+)$")


@zoo_checkpoint_filter
def checkpoint_filter_fn(state_dict: dict, model: OrthoConvNeXt) -> dict:
    """Original ConvNeXt-ortho layout (`{'model': ...}`, FB key names) → timm layout; timm layout passes through."""
    activation_keys = {}
    rest = {}
    for key, value in state_dict.items():
        match = _ACT_KEY.match(key)
        if match:
            stage, block, name = match.groups()
            activation_keys[f"stages.{stage}.blocks.{block}.mlp.act.{name}"] = value
        else:
            rest[key] = value
    out = timm_convnext.checkpoint_filter_fn(rest, model)
    out.update(activation_keys)
    return out


def _create_ortho_convnext(variant: str, pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    return build_zoo_model(
        OrthoConvNeXt, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=convnext_feature_cfg(),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return convnext_imagenet_cfg(url, **{
        "license": "mit", "origin_url": "https://github.com/K-H-Ismail/ConvNeXt-ortho",
        "paper_ids": "arXiv:2502.01247", "paper_name": "Polynomial, trigonometric, and tropical activations",
        **kwargs,
    })


# The paper's models: each activation at its paper degree (`DEFAULT_DEGREES`, the `activation_degree` default) in
# timm's ConvNeXt-T / S / B. No released weights: one untagged cfg per architecture (ImageNet-1k recipe of the
# original ConvNeXt).
default_cfgs = generate_default_cfgs({
    f"{activation}_convnext_{size}": _cfg()
    for activation in ("hermite", "fourier", "tropical")
    for size in ("tiny", "small", "base")
})


@register_model
def hermite_convnext_tiny(pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    model_args = dict(CONVNEXT_SIZES["tiny"], activation="hermite")
    return _create_ortho_convnext("hermite_convnext_tiny", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hermite_convnext_small(pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    model_args = dict(CONVNEXT_SIZES["small"], activation="hermite")
    return _create_ortho_convnext("hermite_convnext_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hermite_convnext_base(pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    model_args = dict(CONVNEXT_SIZES["base"], activation="hermite")
    return _create_ortho_convnext("hermite_convnext_base", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fourier_convnext_tiny(pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    model_args = dict(CONVNEXT_SIZES["tiny"], activation="fourier")
    return _create_ortho_convnext("fourier_convnext_tiny", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fourier_convnext_small(pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    model_args = dict(CONVNEXT_SIZES["small"], activation="fourier")
    return _create_ortho_convnext("fourier_convnext_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fourier_convnext_base(pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    model_args = dict(CONVNEXT_SIZES["base"], activation="fourier")
    return _create_ortho_convnext("fourier_convnext_base", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def tropical_convnext_tiny(pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    model_args = dict(CONVNEXT_SIZES["tiny"], activation="tropical")
    return _create_ortho_convnext("tropical_convnext_tiny", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def tropical_convnext_small(pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    model_args = dict(CONVNEXT_SIZES["small"], activation="tropical")
    return _create_ortho_convnext("tropical_convnext_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def tropical_convnext_base(pretrained: bool = False, **kwargs: Any) -> OrthoConvNeXt:
    model_args = dict(CONVNEXT_SIZES["base"], activation="tropical")
    return _create_ortho_convnext("tropical_convnext_base", pretrained=pretrained, **dict(model_args, **kwargs))
