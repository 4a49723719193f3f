"""Dilated Convolution with Learnable Spacings (DCLS): `Dcls1d`, `Dcls2d`, `Dcls3d`.

Numerically equivalent to the `dcls` 0.1.1 package (same parameters, names, shapes, initialisation and kernel
formulas), with a different construction of the dense kernel.

A DCLS layer owns, per (output channel, input channel), `kernel_count` weights and their real-valued positions
`P` (and, for the `gauss`/`max` versions, a learnable width `SIG`). Each forward interpolates them onto a dense
grid of `dilated_kernel_size` and runs an ordinary convolution with that kernel.

Kernel construction here is *separable*: every version's interpolation function is a product of 1-D factors,
one per axis, so we build per-axis factors of shape (O, I/g, K, L_axis) and contract them with the weights by
`einsum` (a batched matmul). The reference instead materialises (L_1 x ... x L_d x d x O x I/g x K) tensors,
which cost 1.1-2.5 GiB of saved intermediates per ConvNeXt-T forward+backward; ours are a few MiB.

Versions (`tri(t) = max(0, 1 - |t|)`, c_d = dilated_kernel_size[d] // 2):

=========  ===============================================================  =======================
version    factor along the axis driven by P[d]                             normalisation
=========  ===============================================================  =======================
``v0``     bilinear ``(1 - r)`` at ``floor(p)``, ``r`` at ``floor(p) + 1``   none (mass off the grid
           with ``p = P[d] + c_d``, ``r = p - floor(p)``                     is lost)
``v1``     ``tri(x - P[d] - c_d)``                                          divided by (sum + 1e-7)
``gauss``  ``exp(-0.5 * ((x - P[d] - c_d) / (|SIG[d]| + 0.27)) ** 2)``      divided by (sum + 1e-7)
``max``    ``relu(|SIG[d]| + 1 - |x - P[d] - c_d|)``                          divided by (sum + 1e-7)
=========  ===============================================================  =======================

Axis conventions (which kernel axis P[d] moves along) follow the reference exactly, and differ by version:

=======  ============================  ==========================================
ndim     ``v0``                        ``v1``, ``gauss``, ``max``
=======  ============================  ==========================================
1        P[0] -> L                     P[0] -> L
2        P[0] -> H, P[1] -> W          P[0] -> W, P[1] -> H
3        P[0] -> D, P[1] -> W,         P[0] -> W, P[1] -> H, P[2] -> D
         P[2] -> H
=======  ============================  ==========================================

The centre offset of P[d] is always ``dilated_kernel_size[d] // 2`` (indexed by d, not by the axis P[d] moves
along). For square/cubic kernels this is the obvious centre; for non-square kernels of the non-v0 versions it is
the reference's quirk, kept so that checkpoints behave identically: with P = 0 in a (5, 9) v1 kernel the mass
lands at (row 4, col 2), not at the centre (2, 4).

CPU note: a large depthwise kernel (17x17) is ~10x faster in channels_last on oneDNN, so on CPU depthwise layers
with kernels larger than 7x7 run in channels_last (the output keeps that memory format; values are unchanged).

Eval-mode cache: when no autograd graph is being recorded for the parameters (eval mode, or inference), the dense
kernel is built once and reused until a parameter is modified in place (optimizer step, `load_state_dict`), moved,
or the module returns to train mode.
"""

import math
from contextlib import nullcontext
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _reverse_repeat_tuple
from torch.utils.checkpoint import checkpoint
from timm.layers import register_notrace_module

__all__ = [
    "Dcls1d", "Dcls2d", "Dcls3d", "DclsNd", "DCLS_VERSIONS", "construct_dcls_kernel",
    "clamp_dcls_parameters", "dcls_position_parameter_names", "DclsModelMixin",
]

DCLS_VERSIONS = ("v0", "v1", "gauss", "max")
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_SIGMA_FLOOR = {"gauss": 0.27, "max": 1.0}   # sigma = |SIG| + floor, as in the reference
_NORM_EPS = 1e-7                              # the reference's normaliser epsilon

# Kernel axis that P[d] moves along, per (ndim, version family). See the module docstring.
_AXIS_OF_POSITION = {
    (1, "v0"): (0,), (1, "v1"): (0,),
    (2, "v0"): (0, 1), (2, "v1"): (1, 0),
    (3, "v0"): (0, 2, 1), (3, "v1"): (2, 1, 0),
}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_CLS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _axis_factor(
    coords: torch.Tensor, p: torch.Tensor, sig: Optional[torch.Tensor], version: str
) -> torch.Tensor:
    """1-D interpolation factor of every kernel element along one axis: (O, I/g, K) -> (O, I/g, K, L)."""
    p = p.unsqueeze(-1)
    if version == "v0":
        # Written as the reference does (floor + fractional part) so gradients match it exactly: the position
        # gradient flows through the fractional part only.
        base = p.floor()
        frac = p - base
        at_floor = (coords == base).to(p.dtype)
        at_next = (coords == base + 1).to(p.dtype)
        return at_floor + frac * (at_next - at_floor)
    dist = coords - p
    if version == "v1":
        return (1 - dist.abs()).relu()
    sigma = sig.unsqueeze(-1).abs() + _SIGMA_FLOOR[version]
    if version == "gauss":
        return torch.exp(-0.5 * (dist / sigma) ** 2)
    return (sigma - dist.abs()).relu()  # max


def construct_dcls_kernel(
    weight: torch.Tensor,
    P: torch.Tensor,
    SIG: Optional[torch.Tensor],
    dilated_kernel_size: Sequence[int],
    version: str,
) -> torch.Tensor:
    """Dense kernel (O, I/g, *dilated_kernel_size) from weight (O, I/g, K), P and SIG (ndim, O, I/g, K)."""
    ndim = len(dilated_kernel_size)
    axes = _AXIS_OF_POSITION[(ndim, "v0" if version == "v0" else "v1")]
    factors: list[Optional[torch.Tensor]] = [None] * ndim
    for d, axis in enumerate(axes):
        coords = torch.arange(dilated_kernel_size[axis], device=P.device, dtype=P.dtype)
        p = P[d] + dilated_kernel_size[d] // 2
        factors[axis] = _axis_factor(coords, p, None if SIG is None else SIG[d], version)
    if version != "v0":
        # The normaliser of a separable product is the product of the per-axis sums.
        denom = factors[0].sum(-1)
        for f in factors[1:]:
            denom = denom * f.sum(-1)
        weight = weight / (denom + _NORM_EPS)
    letters = "xyz"[:ndim]
    operands = ", ".join(f"oik{c}" for c in letters)
    return torch.einsum(f"oik, {operands} -> oi{letters}", weight, *factors)


def _ntuple(value: Union[int, Sequence[int]], n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    return value


class DclsNd(nn.Module):
    """Shared implementation of `Dcls1d` / `Dcls2d` / `Dcls3d` (use those)."""

    _ndim: int = 0  # set by Dcls1d/2d/3d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        stride: Union[int, Sequence[int]] = 1,
        padding: Union[int, Sequence[int]] = 0,
        dilated_kernel_size: Union[int, Sequence[int]] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        version: str = "gauss",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        n = self.spatial_dims = self._ndim  # instance attribute: visible to TorchScript too
        if version not in DCLS_VERSIONS:
            raise ValueError(f"version must be one of {DCLS_VERSIONS}, got {version!r}")
        if not isinstance(kernel_count, int) or kernel_count < 1:
            raise ValueError(f"kernel_count must be an int >= 1, got {kernel_count!r}")
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be an int >= 1, got {groups!r}")
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(channels, int) or channels < 1:
                raise ValueError(f"{name} must be an int >= 1, got {channels!r}")
            if channels % groups:
                raise ValueError(f"{name} ({channels}) must be divisible by groups ({groups})")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        dks = _ntuple(dilated_kernel_size, n, "dilated_kernel_size")
        if min(dks) < 1:
            raise ValueError(f"dilated_kernel_size must be >= 1 along every axis, got {dks}")
        self.stride = _ntuple(stride, n, "stride")
        if min(self.stride) < 1:
            raise ValueError(f"stride must be >= 1 along every axis, got {self.stride}")
        self.padding = _ntuple(padding, n, "padding")
        if min(self.padding) < 0:
            raise ValueError(f"padding must be >= 0 along every axis, got {self.padding}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_count = kernel_count
        self.dilated_kernel_size = dks
        self.groups = groups
        self.padding_mode = padding_mode
        self.version = version
        self._reversed_padding_repeated_twice = _reverse_repeat_tuple(self.padding, 2)

        dd = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels // groups, kernel_count)
        # Registration order weight, P, SIG, bias = the reference's state-dict order.
        self.weight = nn.Parameter(torch.empty(shape, **dd))
        self.P = nn.Parameter(torch.empty((n, *shape), **dd))
        if version in _SIGMA_FLOOR:
            self.SIG = nn.Parameter(torch.empty((n, *shape), **dd))
        else:
            self.register_parameter("SIG", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **dd))
        else:
            self.register_parameter("bias", None)
        self._cached_kernel: Optional[torch.Tensor] = None
        self._cache_key: Optional[tuple] = None
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        """The reference initialisation (dcls 0.1.1)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            for d, size in enumerate(self.dilated_kernel_size):
                nn.init.normal_(self.P[d], 0, 0.5).clamp_(-(size // 2), size // 2)
            if self.SIG is not None:
                self.SIG.fill_(0.23 if self.version == "gauss" else 0.0)

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """Clamp positions to the dilated grid, ±(dilated_kernel_size // 2); call after every optimizer step."""
        for d, size in enumerate(self.dilated_kernel_size):
            self.P[d].clamp_(-(size // 2), size // 2)

    # ------------------------------------------------------------------------------------------------- kernel
    def construct_kernel(self) -> torch.Tensor:
        """The dense kernel (out_channels, in_channels / groups, *dilated_kernel_size)."""
        # Built in the parameters' dtype even under autocast: positions need full precision; the convolution
        # itself is still autocast.
        device_type = self.weight.device.type
        no_autocast = torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else nullcontext()
        with no_autocast:
            if torch.is_grad_enabled() and any(p.requires_grad for p in self._params()):
                # Recompute the construction in backward instead of saving its intermediates: only weight, P
                # and SIG are kept for backward, and the recomputation costs a few milliseconds.
                return checkpoint(
                    construct_dcls_kernel, self.weight, self.P, self.SIG, self.dilated_kernel_size, self.version,
                    use_reentrant=False, preserve_rng_state=False,
                )
            return construct_dcls_kernel(self.weight, self.P, self.SIG, self.dilated_kernel_size, self.version)

    def _params(self) -> tuple[torch.Tensor, ...]:
        return tuple(p for p in (self.weight, self.P, self.SIG) if p is not None)

    def _kernel(self) -> torch.Tensor:
        params = self._params()
        records_graph = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if self.training or records_graph:
            self._cached_kernel = self._cache_key = None
            return self.construct_kernel()
        key = tuple((id(p), p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        if self._cache_key != key:
            self._cached_kernel = self.construct_kernel().detach()
            self._cache_key = key
        return self._cached_kernel

    def train(self, mode: bool = True):
        self._cached_kernel = self._cache_key = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_impl(x)

    # TorchScript and FX treat the layer as one opaque Python call (kernel construction and its eval cache are
    # Python); to export a model without Python, freeze its DCLS layers into plain convolutions (`to_conv()`).
    # Under TorchScript `self` is a ScriptModule, so this method only reads attributes, never other methods.
    @torch.jit.ignore
    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        n = self.spatial_dims
        name = f"Dcls{n}d"
        if x.dim() not in (n + 1, n + 2):
            raise ValueError(f"{name} expects a {n + 2}-D (batched) or {n + 1}-D (unbatched) input, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[-n - 1] != self.in_channels:
            raise ValueError(f"{name} expects {self.in_channels} input channels, got input shape {tuple(x.shape)}")
        if isinstance(self, DclsNd):
            kernel = self._kernel()
        else:  # a scripted copy: no cache
            kernel = construct_dcls_kernel(self.weight, self.P, self.SIG, self.dilated_kernel_size, self.version)
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0,) * n
        # oneDNN runs large depthwise kernels far faster in channels_last (the foundation issue measured ~5 ms vs
        # ~180 ms forward for 17x17 at (8, 96, 56, 56)); small kernels and dense convolutions are left as they come.
        if (n == 2 and x.device.type == "cpu" and x.dim() == 4 and self.groups == self.in_channels
                and math.prod(self.dilated_kernel_size) > 49):
            x = x.contiguous(memory_format=torch.channels_last)
            kernel = kernel.contiguous(memory_format=torch.channels_last)
        return _CONV_FN[n](x, kernel, self.bias, self.stride, padding, 1, self.groups)

    # ------------------------------------------------------------------------------------------------- export
    @torch.no_grad()
    def to_conv(self) -> nn.Module:
        """An equivalent plain `nn.ConvNd` (kernel_size = dilated_kernel_size) holding the constructed kernel.

        Used for inference export and before structural reparameterisation (e.g. FastViT's RepCPE), which expect
        a dense kernel.
        """
        conv = _CONV_CLS[self.spatial_dims](
            self.in_channels, self.out_channels, self.dilated_kernel_size, stride=self.stride,
            padding=self.padding, groups=self.groups, bias=self.bias is not None, padding_mode=self.padding_mode,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        conv.weight.copy_(self.construct_kernel())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def fuse(self) -> nn.Module:
        """`to_conv()` under the name timm's `reparameterize_model` looks for, so reparameterising a model also
        freezes its DCLS layers."""
        return self.to_conv()

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_count={self.kernel_count}, "
             f"dilated_kernel_size={self.dilated_kernel_size}, stride={self.stride}, version={self.version}")
        if any(self.padding):
            s += f", padding={self.padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s

    def __getstate__(self):
        # The cached kernel is derived state: never pickle or deep-copy it.
        state = self.__dict__.copy()
        state["_cached_kernel"] = state["_cache_key"] = None
        return state


@register_notrace_module
class Dcls1d(DclsNd):
    """1-D DCLS convolution; input (N, C, L). Signature and parameters as `dcls.Dcls1d` 0.1.1."""

    _ndim = 1


@register_notrace_module
class Dcls2d(DclsNd):
    """2-D DCLS convolution; input (N, C, H, W). Signature and parameters as `dcls.Dcls2d` 0.1.1.

    The reference's CUDA-only `use_implicit_gemm` path is not needed: the native convolution is used everywhere.
    """

    _ndim = 2


@register_notrace_module
class Dcls3d(DclsNd):
    """3-D DCLS convolution; input (N, C, D, H, W). Signature and parameters as `dcls.Dcls3d` 0.1.1."""

    _ndim = 3


def _unique_dcls_parameters(model: nn.Module, attrs: Iterable[str]) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, DclsNd):
            for attr in attrs:
                p = getattr(module, attr)
                if p is not None:
                    seen.setdefault(id(p), p)
    return list(seen.values())


@torch.no_grad()
def clamp_dcls_parameters(model: nn.Module) -> None:
    """Clamp the positions of every DCLS layer in `model` (each shared P once). Call after each optimizer step."""
    for module in model.modules():
        if isinstance(module, DclsNd):
            module.clamp_parameters()


class DclsModelMixin:
    """What every model with DCLS layers offers: timm's optimizer factory reads `no_weight_decay()`, and training
    loops call `clamp_parameters()` after each optimizer step (as the original recipes do)."""

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """DCLS positions and widths (P, SIG) are trained without weight decay."""
        return dcls_position_parameter_names(self)

    @torch.jit.ignore
    def clamp_parameters(self) -> None:
        """Clamp every DCLS layer's positions to its grid (each shared tensor once)."""
        clamp_dcls_parameters(self)


def dcls_position_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in `model.named_parameters()`) of DCLS positions and widths (P, SIG).

    The papers train these with 5x the learning rate and no weight decay.
    """
    ids = {id(p) for p in _unique_dcls_parameters(model, ("P", "SIG"))}
    return {name for name, p in model.named_parameters() if id(p) in ids}
