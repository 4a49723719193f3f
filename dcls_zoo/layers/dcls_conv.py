"""The convolution of a DCLS layer with its dense kernel, with a fast backward for large depthwise 2-D kernels.

A DCLS layer ends in an ordinary convolution with a large dense kernel (17x17, 23x23). On the CPU oneDNN runs the
forward of a large depthwise kernel quickly (in channels_last) but computes its *weight gradient* far below that
rate: at (8, 96, 56, 56) a 17x17 depthwise forward takes ~10-30 ms and the weight gradient 0.4-0.7 s. The same
weight gradient is a cross-correlation of the padded input with the output gradient, which a real FFT computes
in tens of milliseconds whatever the kernel size. `dcls_conv` runs the forward as `F.conv2d` and picks, per
shape, the formulation of each gradient:

weight gradient (``weight_grad``)
    ``"fft"``: ``irfft2(sum_n rfft2(x_n) * conj(rfft2(g_n)))`` cropped to the kernel (the sum over the batch is
    taken in the frequency domain, so only one inverse transform per channel is needed). The transform size is
    the smallest 2·3·5-smooth size >= H + padding on each axis; the left padding is folded in by reading the
    circular correlation at negative lags, so the input is never padded on its own. bf16/fp16 inputs are
    transformed in fp32 (the CPU FFT has no bf16 kernel), which is more accurate than a bf16 convolution.
    ``"direct"``: oneDNN / ATen's own `convolution_backward`.
    ``"auto"`` (default): `choose_weight_grad_path` -- FFT on the CPU when the kernel has at least 13x13 taps,
    direct otherwise (on CUDA always direct: cuDNN's weight gradient
    is fast). The thresholds come from `scripts/bench_dcls.py --sweep` (table in BENCHMARKS.md).
input gradient (``input_grad``)
    ``"flip"``: a forward depthwise convolution of the output gradient with the flipped kernel, in the output
    gradient's memory format (channels_last for DCLS layers on the CPU) -- about the cost of one forward.
    Needs stride 1 and padding <= kernel - 1; otherwise ``"direct"`` (ATen's `convolution_backward`).

Everything that is not a 2-D depthwise convolution (dense, grouped, 1-D, 3-D, dilation > 1), every call that
records no gradient and every call under `torch.jit.trace` goes straight to `F.conv1d/2d/3d`. Under autocast the
inputs are cast to the autocast dtype first, as autocast does for `F.conv2d`, so outputs and gradients have the
dtypes autocast gives. The backward is written with differentiable operations, so double backward (gradient
penalties, `gradgradcheck`) works too.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["dcls_conv", "choose_weight_grad_path", "dcls_conv_paths", "WEIGHT_GRAD_PATHS", "INPUT_GRAD_PATHS"]

WEIGHT_GRAD_PATHS = ("auto", "fft", "direct")
INPUT_GRAD_PATHS = ("auto", "flip", "direct")
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# CPU rule threshold (see `choose_weight_grad_path`, measured by `scripts/bench_dcls.py --sweep` at the four
# ConvNeXt-T stage shapes): oneDNN's weight gradient wins at 7x7, ties the FFT at 13x13 on 56x56 outputs and loses
# 2-6x at 13x13 on smaller ones, and falls off a cliff (10-30x slower than the FFT) from 17x17 at 28x28 and 56x56.
FFT_MIN_KERNEL_TAPS = 13 * 13

_overrides = threading.local()


@contextlib.contextmanager
def dcls_conv_paths(weight_grad: str = "auto", input_grad: str = "auto") -> Iterator[None]:
    """Force the gradient formulations used by `dcls_conv` inside the block (tests, benchmarks)."""
    if weight_grad not in WEIGHT_GRAD_PATHS:
        raise ValueError(f"weight_grad must be one of {WEIGHT_GRAD_PATHS}, got {weight_grad!r}")
    if input_grad not in INPUT_GRAD_PATHS:
        raise ValueError(f"input_grad must be one of {INPUT_GRAD_PATHS}, got {input_grad!r}")
    previous = getattr(_overrides, "paths", None)
    _overrides.paths = (weight_grad, input_grad)
    try:
        yield
    finally:
        _overrides.paths = previous


def choose_weight_grad_path(
    device_type: str, kernel_size: Sequence[int], output_size: Sequence[int]
) -> str:
    """The weight-gradient formulation `"auto"` picks for a depthwise 2-D convolution: ``"fft"`` or ``"direct"``.

    On the CPU, FFT when the kernel has at least 13x13 taps; direct otherwise and on every other device.
    `output_size` is not used by today's rule (the FFT won at every stage shape measured, 7x7 outputs included).
    """
    if device_type != "cpu":
        return "direct"
    return "fft" if kernel_size[0] * kernel_size[1] >= FFT_MIN_KERNEL_TAPS else "direct"


def _smooth_size(n: int) -> int:
    """Smallest integer >= n whose only prime factors are 2, 3 and 5 (fast FFT sizes)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _fft_weight_grad(
    x: torch.Tensor, grad: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int],
    padding: Sequence[int],
) -> torch.Tensor:
    """Depthwise weight gradient (C, 1, kh, kw) as a batch-summed FFT cross-correlation.

    dW[c, i, j] = sum_{n, y, x} g[n, c, y, x] * x_pad[n, c, s*y + i, s*x + j]. With x zero-filled into an
    (L_h, L_w) buffer without its left padding, the circular correlation at lag (i - p_h, j - p_w) equals that sum
    as long as L >= H + p (negative lags wrap into the zero tail), L covers the largest offset read and L >= k
    (distinct lags).
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    ho, wo = grad.shape[-2:]
    span_h, span_w = (ho - 1) * sh + 1, (wo - 1) * sw + 1
    # Offsets read range over [-p, span + k - 1 - p); the circular buffer must hold them without aliasing.
    lh = _smooth_size(max(h + ph, span_h + kh - 1 - ph, span_h, kh))
    lw = _smooth_size(max(w + pw, span_w + kw - 1 - pw, span_w, kw))
    compute = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    # One zero-filled contiguous buffer each: pads, converts from channels_last and upcasts in the same copy.
    xb = x.new_zeros((n, c, lh, lw), dtype=compute)
    xb[:, :, :h, :w] = x
    gb = grad.new_zeros((n, c, lh, lw), dtype=compute)
    gb[:, :, :span_h:sh, :span_w:sw] = grad
    spectrum = torch.fft.rfft2(xb) * torch.fft.rfft2(gb).conj()
    corr = torch.fft.irfft2(spectrum.sum(0), s=(lh, lw))  # (C, L_h, L_w), lag t at index t mod L
    corr = corr.roll((ph, pw), dims=(-2, -1))[:, :kh, :kw]
    return corr.unsqueeze(1).to(x.dtype)


def _flip_input_grad(grad: torch.Tensor, kernel: torch.Tensor, padding: Sequence[int]) -> torch.Tensor:
    """Stride-1 depthwise input gradient: a forward convolution of the gradient with the flipped kernel."""
    kh, kw = kernel.shape[-2:]
    flipped = kernel.flip(-2, -1)
    if grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous():
        flipped = flipped.contiguous(memory_format=torch.channels_last)
    return F.conv2d(grad, flipped, None, 1, (kh - 1 - padding[0], kw - 1 - padding[1]), 1, grad.shape[1])


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, bias, stride, padding, weight_path, input_path, channels_last):
        # The input is saved as it came: a channels_last copy made here would be kept for backward (as large as
        # the input) although only the direct weight gradient reads x in that layout.
        ctx.save_for_backward(x, kernel)
        ctx.has_bias = bias is not None
        ctx.conf = (stride, padding, weight_path, input_path, channels_last)
        if channels_last:
            x, kernel = x.contiguous(memory_format=torch.channels_last), _to_channels_last(kernel)
        return F.conv2d(x, kernel, bias, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, kernel = ctx.saved_tensors
        stride, padding, weight_path, input_path, channels_last = ctx.conf
        needs_x, needs_kernel, needs_bias = ctx.needs_input_grad[:3]
        channels_last = channels_last or (x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        if channels_last:
            grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_kernel = grad_bias = None
        direct_mask = [needs_x and input_path == "direct", needs_kernel and weight_path == "direct", False]
        if any(direct_mask):
            x_in = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            k_in = _to_channels_last(kernel) if channels_last else kernel
            grad_x, grad_kernel, _ = torch.ops.aten.convolution_backward(
                grad, x_in, k_in, None, list(stride), list(padding), [1, 1], False, [0, 0], x.shape[1], direct_mask)
        if needs_x and input_path == "flip":
            grad_x = _flip_input_grad(grad, kernel, padding)
        if needs_kernel and weight_path == "fft":
            grad_kernel = _fft_weight_grad(x, grad, kernel.shape[-2:], stride, padding)  # reads x in any layout
        if grad_kernel is not None:
            grad_kernel = grad_kernel.contiguous(memory_format=_memory_format(kernel))
        if needs_bias and ctx.has_bias:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_kernel, grad_bias, None, None, None, None, None


def _to_channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    cl = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def _pair(value: Union[int, Sequence[int]]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def dcls_conv(
    x: torch.Tensor,
    kernel: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int]] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    weight_grad: Optional[str] = None,
    input_grad: Optional[str] = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """`F.conv1d/2d/3d(x, kernel, bias, stride, padding, dilation, groups)` (chosen by `kernel.dim()`), with the
    fast backward of the module docstring for 2-D depthwise kernels.

    `weight_grad` / `input_grad` force a formulation (see `WEIGHT_GRAD_PATHS` / `INPUT_GRAD_PATHS`); by default
    the `dcls_conv_paths` context or ``"auto"``. A forced path that cannot apply to the shape (``"flip"`` with a
    stride > 1) falls back to ``"direct"``. `channels_last=True` runs a 2-D depthwise convolution in channels_last
    (oneDNN's fast layout for large depthwise kernels on the CPU) whatever the layout `x` comes in; the output is
    channels_last, and the input is kept for backward as given (no converted copy is held between the passes).
    """
    ndim = kernel.dim() - 2
    forced = getattr(_overrides, "paths", None) or ("auto", "auto")
    weight_grad = weight_grad or forced[0]
    input_grad = input_grad or forced[1]
    if weight_grad not in WEIGHT_GRAD_PATHS:
        raise ValueError(f"weight_grad must be one of {WEIGHT_GRAD_PATHS}, got {weight_grad!r}")
    if input_grad not in INPUT_GRAD_PATHS:
        raise ValueError(f"input_grad must be one of {INPUT_GRAD_PATHS}, got {input_grad!r}")
    plain = (
        ndim != 2 or x.dim() != 4 or groups != x.shape[1] or kernel.shape[0] != groups or kernel.shape[1] != 1
        or _pair(dilation) != (1, 1) or not isinstance(padding, (int, tuple, list))
        or not x.is_floating_point() or torch.jit.is_tracing()  # a trace records F.conv2d, savable with jit.save
        or not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, kernel, bias)))
    )
    if plain:
        if channels_last and ndim == 2 and x.dim() == 4 and groups == x.shape[1] and kernel.shape[1] == 1:
            x, kernel = _to_channels_last(x), _to_channels_last(kernel)
        return _CONV_FN[ndim](x, kernel, bias, stride, padding, dilation, groups)
    stride, padding = _pair(stride), _pair(padding)
    device_type = x.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        # What autocast does for F.conv2d: every operand in the autocast dtype; then run without autocast.
        dtype = torch.get_autocast_dtype(device_type)
        x, kernel = x.to(dtype), kernel.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return dcls_conv(x, kernel, bias, stride, padding, 1, groups, weight_grad, input_grad, channels_last)
    if device_type != "cpu" and weight_grad == input_grad == "auto":
        if channels_last:
            x, kernel = _to_channels_last(x), _to_channels_last(kernel)
        return F.conv2d(x, kernel, bias, stride, padding, 1, groups)  # cuDNN's own backward is fast
    kh, kw = kernel.shape[-2:]
    if weight_grad == "auto":
        out = [(size + 2 * p - k) // s + 1 for size, p, k, s in zip(x.shape[-2:], padding, (kh, kw), stride)]
        weight_grad = choose_weight_grad_path(device_type, (kh, kw), out)
    can_flip = stride == (1, 1) and padding[0] <= kh - 1 and padding[1] <= kw - 1
    input_grad = "flip" if input_grad in ("auto", "flip") and can_flip else "direct"
    return _DepthwiseConv2d.apply(x, kernel, bias, stride, padding, weight_grad, input_grad, channels_last)
