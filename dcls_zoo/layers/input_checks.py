"""Model-level input checks: one clear line for the inputs users most often get wrong.

torch reports a wrong input deep inside a model ("Calculated padded input size per channel: (1 x 1). Kernel size:
(2 x 2)...", "Input type (double) and bias type (float) should be the same"). The families call these helpers at
the top of `forward_features` / `forward_intermediates` to say instead what the model takes:

* `check_image_batch`: a batch (B, C, H, W) of floating-point images in the model's dtype, at least as large as
  the model's downsampling chain needs;
* `min_spatial_size`: that smallest size, derived from the chain's layers (kernel, stride, padding, dilation),
  not from a table.

The checks read shapes and dtypes only (no data, no device synchronisation). They are skipped while TorchScript
compiles, torch.fx traces or torch.compile traces the model (`input_checks_enabled`), where shapes are symbolic.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn as nn
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
from timm.layers.std_conv import ScaledStdConv2dSame, StdConv2dSame

__all__ = [
    "input_checks_enabled", "layer_geometry", "min_spatial_size", "chain_layers", "check_image_batch",
    "check_input_dtype", "autocast_enabled", "autocast_accepts", "input_owner", "DownsamplingChainMixin",
    "ImageInputMixin",
]


def input_checks_enabled() -> bool:
    """False while TorchScript, torch.fx or torch.compile trace the model (shapes are symbolic there)."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if torch.compiler.is_compiling():   # torch.compile and torch.export
        return False
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing
    return not is_fx_symbolic_tracing()


def _pair(value, ndim: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * ndim
    value = tuple(int(v) for v in value)
    return value * ndim if len(value) == 1 else value


def _is_dynamic_same(layer: nn.Module) -> bool:
    # timm's *Same layers pad at run time so that the output has ceil(n / stride) pixels (TF "SAME")
    return isinstance(layer, (Conv2dSame, MaxPool2dSame, AvgPool2dSame, StdConv2dSame, ScaledStdConv2dSame))


def layer_geometry(layer: nn.Module, ndim: int = 2) -> tuple[tuple[int, ...], ...]:
    """(kernel, stride, total padding of both sides, dilation) per spatial axis of a conv / pooling layer or block.

    DCLS layers report their dilated (dense) kernel size. 'same' padding (string, or timm's run-time *Same layers)
    pads dilation * (kernel - 1) in total, 'valid' nothing. timm blocks without a padding of their own
    (MobileOneBlock, ReparamLargeKernelConv) pad as timm's `get_padding`: ((stride - 1) + dilation * (kernel - 1))
    // 2 on each side.
    """
    kernel = _pair(getattr(layer, "dilated_kernel_size", None) or layer.kernel_size, ndim)
    stride = _pair(getattr(layer, "stride", None) or kernel, ndim)   # pooling's stride=None means stride=kernel
    dilation = _pair(getattr(layer, "dilation", None) or 1, ndim)
    padding = getattr(layer, "padding", None)
    if padding == "same" or _is_dynamic_same(layer):
        total = tuple(d * (k - 1) for k, d in zip(kernel, dilation))
    elif padding == "valid":
        total = (0,) * ndim
    elif padding is None:
        total = tuple(2 * (((s - 1) + d * (k - 1)) // 2) for k, s, d in zip(kernel, stride, dilation))
    else:
        total = tuple(2 * p for p in _pair(padding, ndim))
    return kernel, stride, total, dilation


def min_spatial_size(chain: Iterable[nn.Module], ndim: int = 2) -> tuple[int, ...]:
    """Smallest input (per spatial axis) for which every layer of `chain`, applied in order, outputs >= 1 pixel.

    `chain` is the model's downsampling path (stem, then each stage's downsampling layer); layers that keep the
    size ("same"-padded convs, DCLS layers with padding = dilated_kernel_size // 2) never limit it. A layer with
    kernel k, stride s, total padding P and dilation d outputs ``floor((n + P - d(k - 1) - 1) / s) + 1`` from n,
    so it needs ``n >= (m - 1) s + d (k - 1) + 1 - P`` for m outputs; this is applied from the last layer back.
    """
    need = [1] * ndim
    for layer in reversed(list(chain)):
        kernel, stride, total, dilation = layer_geometry(layer, ndim)
        need = [
            max(1, (n - 1) * s + d * (k - 1) + 1 - pad)
            for n, k, s, pad, d in zip(need, kernel, stride, total, dilation)
        ]
    return tuple(need)


def autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled for `device_type`, False where autocast does not exist (meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def autocast_accepts(x: torch.Tensor, expected: torch.dtype) -> bool:
    """Whether autocast is on for `x`'s device and casts `x.dtype` (float32 or the autocast dtype) for the model."""
    if not autocast_enabled(x.device.type):
        return False
    return x.dtype in (torch.float32, torch.get_autocast_dtype(x.device.type)) and expected != torch.float64


def check_input_dtype(x: torch.Tensor, expected: torch.dtype, what: str) -> None:
    """Floating-point input in the model's dtype (or one autocast casts: float32 and the autocast dtype)."""
    if not x.is_floating_point():
        raise TypeError(
            f"{what} takes floating-point input ({expected}), got {x.dtype}: convert and normalise it first "
            "(e.g. x.float())")
    if x.dtype != expected and not autocast_accepts(x, expected):
        raise TypeError(
            f"{what} has {expected} weights but got {x.dtype} input: pass x.to({expected}) or convert the model "
            f"(model.to({x.dtype}))")


def check_image_batch(
        x: torch.Tensor,
        what: str,
        in_chans: int,
        min_size: Sequence[int],
        dtype: torch.dtype,
        size_hint: Optional[str] = None,
) -> None:
    """Raise one line (ValueError / TypeError) unless `x` is a (B, in_chans, H, W) batch of at least `min_size`.

    Args:
        x: the input.
        what: the model, as the message should name it.
        in_chans: channels the model takes.
        min_size: smallest (H, W), see `min_spatial_size`.
        dtype: the model's parameter dtype.
        size_hint: replaces "resize or pad the input" in the too-small message.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} takes a torch.Tensor (batch, {in_chans}, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (a single image: add the batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(
            f"{what} takes a batch of images (batch, {in_chans}, H, W), got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}{hint}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{what} takes {in_chans}-channel input (batch, {in_chans}, H, W), got shape {tuple(x.shape)}"
            + (" (channels last? use x.permute(0, 3, 1, 2))" if x.shape[-1] == in_chans else ""))
    height, width = x.shape[-2:]
    if height < min_size[0] or width < min_size[1]:
        raise ValueError(
            f"{what} takes inputs of at least {min_size[0]}x{min_size[1]} (H x W; its stem and downsampling layers "
            f"need that much), got {height}x{width}: {size_hint or 'resize or pad the input'}")
    check_input_dtype(x, dtype, what)


def _is_sized_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd,
                               nn.modules.pooling._AvgPoolNd)) or hasattr(module, "dilated_kernel_size")


def chain_layers(module: Optional[nn.Module]) -> list[nn.Module]:
    """The size-changing layers of `module` in order: convs, pools, DCLS layers, and timm blocks that carry their
    own `kernel_size` / `stride` (MobileOneBlock, ReparamLargeKernelConv: parallel branches of one geometry, so
    counted once, with timm's default padding)."""
    if module is None:
        return []
    if _is_sized_layer(module) or (hasattr(module, "kernel_size") and hasattr(module, "stride")):
        return [module]
    return [layer for child in module.children() for layer in chain_layers(child)]


def input_owner(model: nn.Module) -> str:
    """The model as the input checks' messages name it: its timm architecture, else its class."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


class DownsamplingChainMixin:
    """`min_input_size()` of a timm model, derived from its `downsampling_chain()`: by default the layers of
    `stem` and of each `stages[i].downsample` (timm's ConvNeXt, MetaFormer, FastViT layouts); families with other
    layouts override it. The base of `ImageInputMixin` and of the audio families' checks."""

    def downsampling_chain(self) -> list[nn.Module]:
        """Layers that set the smallest input, in forward order."""
        chain = chain_layers(getattr(self, "stem", None))
        for stage in getattr(self, "stages", ()):
            chain += chain_layers(getattr(stage, "downsample", None))
        return chain

    def min_input_size(self) -> tuple[int, int]:
        """Smallest (H, W) this model takes, derived from `downsampling_chain()`."""
        return min_spatial_size(self.downsampling_chain())


class ImageInputMixin(DownsamplingChainMixin):
    """`check_input(x)` for timm image models: the families call it first in `forward_features` (written out
    there: TorchScript has no super()); `forward_intermediates` here calls it, then the timm class's. Put the mixin
    before the timm class in the bases. The minimum size is `min_input_size()`.
    """

    def _parameter_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """Raise one line unless `x` is a (B, in_chans, H, W) float batch the model can take (see module doc)."""
        if not input_checks_enabled():
            return
        check_image_batch(x, input_owner(self), self.in_chans, self.min_input_size(), self._parameter_dtype())

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """timm's `forward_intermediates`, after the input check."""
        self.check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)
