"""DCLS with positions learned on some axes only: `Dcls3_1d` and `Dcls2dK1d` (dcls 0.1.1's classes).

Both are `DclsNd` layers with *one* position axis, so clamping, position-parameter names, the eval-time kernel
cache, pickling and `to_conv()` behave as for `Dcls1d/2d/3d`. Their kernels come from the same separable
construction (`construct_dcls_kernel`) with a 1-D grid:

* `Dcls3_1d(in, out, kernel_count, stride, padding, dense_kernel_size=(kh, kw), dilated_kernel_size=L)`: a 3-D
  convolution whose kernel (O, I/g, kh, kw, L) is dense on the first two axes and has ``kernel_count`` learnable
  positions along the last one, per (o, i, h, w). Parameters: ``weight (O, I/g, kh, kw, K)``,
  ``P (1, O, I/g, kh, kw, K)``, ``SIG`` (gauss/max) as P, ``bias (O)``. Versions v1, gauss, max (the reference
  has no v0 here). Positions start U(-L//2, L//2) (the reference's `_DclsN_Md` init), not N(0, 0.5).
  Use: per-synapse delays of a spiking 2-D convolution (time on the last axis), or any conv with a learnable
  spacing on one axis only.
* `Dcls2dK1d(in, out, kernel_count, stride, padding, dilated_kernel_size=L, flat_dim=0)`: a 2-D convolution with a
  *flat* 1-D DCLS kernel: ``flat_dim=0`` gives an (L, 1) kernel (positions along H), ``flat_dim=1`` a (1, L)
  kernel (positions along W); the reference unsqueezes the 1-D kernel at ``-1 - flat_dim``. Parameters as
  `Dcls1d`. Default version v1, as the reference. (The reference README's example pairs ``flat_dim=0`` with
  ``padding=(0, L // 2)``, which pads the wrong axis: use ``padding=(L // 2, 0)`` for ``flat_dim=0``.)
"""
import math
from contextlib import nullcontext
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch.nn.modules.utils import _reverse_repeat_tuple
from torch.utils.checkpoint import checkpoint

from .dcls import DclsNd, _ntuple, construct_dcls_kernel

__all__ = ["Dcls3_1d", "Dcls2dK1d", "construct_dcls3_1d_kernel", "DCLS3_1D_VERSIONS"]

DCLS3_1D_VERSIONS = ("v1", "gauss", "max")
_CONV_FN = {2: F.conv2d, 3: F.conv3d}
_CONV_CLS = {2: nn.Conv2d, 3: nn.Conv3d}


def construct_dcls3_1d_kernel(
    weight: torch.Tensor, P: torch.Tensor, SIG: Optional[torch.Tensor], dilated_kernel_size: Sequence[int], version: str
) -> torch.Tensor:
    """Dense kernel (O, I/g, kh, kw, L) from weight (O, I/g, kh, kw, K) and P, SIG (1, O, I/g, kh, kw, K).

    Every (o, i, h, w) is an independent 1-D DCLS kernel, so the dense axes fold into the input-channel axis of
    the 1-D construction.
    """
    out_ch, in_per_group, *dense, count = weight.shape
    flat = (out_ch, -1, count)
    kernel = construct_dcls_kernel(
        weight.reshape(flat), P.reshape(1, *flat), None if SIG is None else SIG.reshape(1, *flat),
        dilated_kernel_size, version,
    )
    return kernel.reshape(out_ch, in_per_group, *dense, dilated_kernel_size[0])


class _PartialDclsMixin:
    """Forward / export shared by the two layers: positions on one axis (DclsNd with _ndim = 1), but a 2-D or
    3-D convolution (`spatial_dims`)."""

    def _set_conv_geometry(self, stride, padding, n: int) -> None:
        # DclsNd validated stride/padding for its single position axis; the convolution itself has n axes.
        self.spatial_dims = n
        self.stride = _ntuple(stride, n, "stride")
        if min(self.stride) < 1:
            raise ValueError(f"stride must be >= 1 along every axis, got {self.stride}")
        self.padding = _ntuple(padding, n, "padding")
        if min(self.padding) < 0:
            raise ValueError(f"padding must be >= 0 along every axis, got {self.padding}")
        self._reversed_padding_repeated_twice = _reverse_repeat_tuple(self.padding, 2)

    def _conv_kernel(self) -> torch.Tensor:
        return self._kernel()

    def conv_kernel_size(self) -> tuple[int, ...]:
        """Kernel size of the equivalent dense convolution."""
        raise NotImplementedError

    @torch.jit.ignore
    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        n = self.spatial_dims
        name = type(self).__name__
        if x.dim() not in (n + 1, n + 2):
            raise ValueError(f"{name} expects a {n + 2}-D (batched) or {n + 1}-D (unbatched) input, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[-n - 1] != self.in_channels:
            raise ValueError(f"{name} expects {self.in_channels} input channels, got input shape {tuple(x.shape)}")
        kernel = self._conv_kernel()
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0,) * n
        return _CONV_FN[n](x, kernel, self.bias, self.stride, padding, 1, self.groups)

    @torch.no_grad()
    def to_conv(self) -> nn.Module:
        """An equivalent plain `nn.Conv2d` / `nn.Conv3d` holding the constructed kernel."""
        conv = _CONV_CLS[self.spatial_dims](
            self.in_channels, self.out_channels, self.conv_kernel_size(), stride=self.stride, padding=self.padding,
            groups=self.groups, bias=self.bias is not None, padding_mode=self.padding_mode,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        conv.weight.copy_(self._conv_kernel())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv


@register_notrace_module
class Dcls3_1d(_PartialDclsMixin, DclsNd):
    """3-D convolution, dense on the first two kernel axes, learnable positions on the last; input (N, C, D, H, W).

    Signature and parameters as `dcls.Dcls3_1d` 0.1.1 (versions v1, gauss, max).
    """

    _ndim = 1  # one position axis

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        stride: Union[int, Sequence[int]] = 1,
        padding: Union[int, Sequence[int]] = 0,
        dense_kernel_size: Union[int, Sequence[int]] = 1,
        dilated_kernel_size: Union[int, Sequence[int]] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        version: str = "gauss",
        device=None,
        dtype=None,
    ) -> None:
        if version == "v0":
            raise ValueError(f"version must be one of {DCLS3_1D_VERSIONS} for Dcls3_1d (the reference has no v0 "
                             f"here), got {version!r}")
        dense = _ntuple(dense_kernel_size, 2, "dense_kernel_size")
        if min(dense) < 1:
            raise ValueError(f"dense_kernel_size must be >= 1 along every axis, got {dense}")
        super().__init__(in_channels, out_channels, kernel_count, 1, 0, dilated_kernel_size, groups, bias,
                         padding_mode, version, device=device, dtype=dtype)
        self._set_conv_geometry(stride, padding, 3)
        self.dense_kernel_size = dense
        # Re-create weight / P / SIG with the dense axes (assigning existing names keeps the reference's
        # state-dict order weight, P, SIG, bias), then initialise once, as the reference does.
        dd = {"device": self.weight.device, "dtype": self.weight.dtype}
        shape = (out_channels, in_channels // groups, *dense, kernel_count)
        self.weight = nn.Parameter(torch.empty(shape, **dd))
        self.P = nn.Parameter(torch.empty((1, *shape), **dd))
        if self.SIG is not None:
            self.SIG = nn.Parameter(torch.empty((1, *shape), **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation (dcls 0.1.1 `_DclsN_Md`): positions uniform over the grid."""
        if self.weight.dim() != 5:  # called by DclsNd.__init__ before the final shapes exist
            return
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(math.prod(self.weight.shape[1:]))
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            lim = self.dilated_kernel_size[0] // 2
            nn.init.uniform_(self.P[0], -lim, lim)
            if self.SIG is not None:
                self.SIG.fill_(0.23 if self.version == "gauss" else 0.0)

    def construct_kernel(self) -> torch.Tensor:
        """The dense kernel (out_channels, in_channels / groups, *dense_kernel_size, dilated_kernel_size)."""
        device_type = self.weight.device.type
        no_autocast = torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else nullcontext()
        with no_autocast:
            if torch.is_grad_enabled() and any(p.requires_grad for p in self._params()):
                # As DclsNd: recompute the construction in backward instead of saving its intermediates.
                return checkpoint(
                    construct_dcls3_1d_kernel, self.weight, self.P, self.SIG, self.dilated_kernel_size,
                    self.version, use_reentrant=False, preserve_rng_state=False,
                )
            return construct_dcls3_1d_kernel(self.weight, self.P, self.SIG, self.dilated_kernel_size, self.version)

    def conv_kernel_size(self) -> tuple[int, ...]:
        return (*self.dense_kernel_size, self.dilated_kernel_size[0])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dense_kernel_size={self.dense_kernel_size}"


@register_notrace_module
class Dcls2dK1d(_PartialDclsMixin, DclsNd):
    """2-D convolution with a flat 1-D DCLS kernel; input (N, C, H, W).

    ``flat_dim=0``: kernel (L, 1), positions along H; ``flat_dim=1``: kernel (1, L), positions along W.
    Signature and parameters as `dcls.Dcls2dK1d` 0.1.1.
    """

    _ndim = 1  # one position axis

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
        version: str = "v1",
        flat_dim: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        if flat_dim not in (0, 1) or isinstance(flat_dim, bool):
            raise ValueError(f"flat_dim must be 0 (an (L, 1) kernel along H) or 1 (a (1, L) kernel along W), "
                             f"got {flat_dim!r}")
        super().__init__(in_channels, out_channels, kernel_count, 1, 0, dilated_kernel_size, groups, bias,
                         padding_mode, version, device=device, dtype=dtype)
        self._set_conv_geometry(stride, padding, 2)
        self.flat_dim = flat_dim

    def _conv_kernel(self) -> torch.Tensor:
        # `construct_kernel()` is the 1-D kernel (O, I/g, L); the convolution sees it flat in 2-D.
        return self._kernel().unsqueeze(-1 - self.flat_dim)

    def conv_kernel_size(self) -> tuple[int, ...]:
        length = self.dilated_kernel_size[0]
        return (length, 1) if self.flat_dim == 0 else (1, length)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", flat_dim={self.flat_dim}"
