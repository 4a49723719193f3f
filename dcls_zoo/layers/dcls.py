"""Dilated Convolution with Learnable Spacings (DCLS): `Dcls1d`, `Dcls2d`, `Dcls3d`.

Numerically equivalent to the `dcls` 0.1.1 package (same parameters, names, shapes, initialisation and kernel
formulas), with a different construction of the dense kernel.

A DCLS layer owns, per (output channel, input channel), `kernel_count` weights and their real-valued positions
`P` (and, for the `gauss`/`max` versions, a learnable width `SIG`). Each forward interpolates them onto a dense
grid of `dilated_kernel_size` and runs an ordinary convolution with that kernel.

Kernel construction here is *separable*: every version's interpolation function is a product of 1-D factors,
one per axis, so we build per-axis factors of shape (O, I/g, K, L_axis) and contract them with the weights by
`einsum` (a batched matmul). The reference instead materialises (L_1 x ... x L_d x d x O x I/g x K) tensors,
which cost 1.1-2.5 GiB of saved intermediates per ConvNeXt-T forward+backward; ours are a few MiB. The bilinear
``v0`` kernel is non-zero at the 2^ndim grid corners around each element only, so it is scattered there directly
(`_scatter_v0_kernel`, the same values and gradients; 2-3x cheaper forward+backward at 768 channels) on the
CPU; the separable form stays for other devices and DTensor parameters.

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
kernel is built once and reused while weight, P and SIG hold the same values, device and dtype as when it was built
(compared by value against a private copy, so edits through `.data`, `load_state_dict(assign=True)`, `.to()` or an
EMA update are all seen); train mode, tracing and compiling never use it.

Shared positions: the layers of a stage share one P (and SIG). The first layer of the stage owns them; the others
follow it (`dcls_zoo.layers.sharing.TiedParametersMixin`): they read the owner's tensors at every forward and do not
register them, so a state dict holds each shared tensor once, under the owner's name.

Clamping: positions are kept within +-(dilated_kernel_size // 2). `enable_position_clamp(model)` (which `dclsify`
and every DCLS family apply) clamps the stored positions in place before every forward of the model, so any training
loop follows the papers' "clamp after each optimizer step" without calling anything.
"""

import math
from contextlib import nullcontext
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _reverse_repeat_tuple
from torch.utils.checkpoint import checkpoint
from timm.layers import register_notrace_module

from .activations import activation_parameter_names
from .dcls_conv import dcls_conv
from .sharing import TiedParametersMixin

__all__ = [
    "Dcls1d", "Dcls2d", "Dcls3d", "DclsNd", "DCLS_VERSIONS", "construct_dcls_kernel",
    "clamp_dcls_parameters", "dcls_position_parameter_names", "DclsModelMixin", "enable_position_clamp",
    "dcls_parameter_groups",
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
    if version == "v0" and P.device.type == "cpu" and not any(_is_dtensor(t) for t in (weight, P)):
        # CPU only: on CUDA scatter_add accumulates with atomics (run-to-run rounding differences, and an error
        # under torch.use_deterministic_algorithms); the separable form was measured on par there.
        return _scatter_v0_kernel(weight, P, dilated_kernel_size)
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


def _scatter_v0_kernel(weight: torch.Tensor, P: torch.Tensor, dilated_kernel_size: Sequence[int]) -> torch.Tensor:
    """The v0 kernel written directly: each element adds its weight to the 2^ndim grid corners around its position.

    The same values as the separable product (a bilinear factor is non-zero at two taps only), from 2^ndim * K
    entries per channel pair instead of dense (O, I/g, K, L) factors. The grid is built with a margin of 2 taps per
    side, cropped at the end: a corner off the grid (the reference's mass loss) lands in the margin, so no mask is
    needed. The position gradient flows through the fractional part, as in `_axis_factor`.
    """
    ndim = len(dilated_kernel_size)
    axes = _AXIS_OF_POSITION[(ndim, "v0")]
    o, i, k = weight.shape
    padded = [size + 4 for size in dilated_kernel_size]
    strides = [math.prod(padded[a + 1:]) for a in range(ndim)]
    corner = torch.arange(2, device=P.device)
    index: Union[int, torch.Tensor] = 0
    value = weight.unsqueeze(-1)   # (O, I, K, corners); the corners double with every axis
    for d, axis in enumerate(axes):
        p = P[d] + dilated_kernel_size[d] // 2
        base = p.floor()
        frac = p - base
        # (1 - r) at floor(p), r at floor(p) + 1, as the reference's `at_floor + r * (at_next - at_floor)` gives
        factor = torch.stack((1 + frac * -1, frac), -1)
        # floor(p) clamped to [-2, L]: both corners of a far-off element stay in the margin
        taps = base.clamp(-2, dilated_kernel_size[axis]).long().unsqueeze(-1) + (corner + 2)
        value = (value.unsqueeze(-1) * factor.unsqueeze(-2)).flatten(-2)
        index = ((index if isinstance(index, int) else index.unsqueeze(-1))
                 + (taps * strides[axis]).unsqueeze(-2)).flatten(-2)
    flat = value.new_zeros((o, i, math.prod(padded)))
    flat = flat.scatter_add(2, index.reshape(o, i, -1), value.reshape(o, i, -1))
    crop = tuple(slice(2, 2 + size) for size in dilated_kernel_size)
    return flat.view(o, i, *padded)[(slice(None), slice(None)) + crop]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ntuple(value: Union[int, Sequence[int]], n: int, name: str) -> tuple[int, ...]:
    if _is_int(value):
        return (value,) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(_is_int(v) for v in value):
        return tuple(value)
    raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")


class DclsNd(TiedParametersMixin, nn.Module):
    """Shared implementation of `Dcls1d` / `Dcls2d` / `Dcls3d` (use those)."""

    _ndim: int = 0  # set by Dcls1d/2d/3d
    # the names a layer of a stage can take from the stage's first layer (see `follow_positions`)
    tied_position_names = ("P", "SIG")

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
        name = type(self).__name__
        if version not in DCLS_VERSIONS:
            raise ValueError(f"{name}: version must be one of {DCLS_VERSIONS}, got {version!r}")
        if isinstance(kernel_count, bool) or not isinstance(kernel_count, int) or kernel_count < 1:
            raise ValueError(f"{name}: kernel_count must be an int >= 1, got {kernel_count!r}")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{name}: groups must be an int >= 1, got {groups!r}")
        for arg, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
                raise ValueError(f"{name}: {arg} must be an int >= 1, got {channels!r}")
            if channels % groups:
                raise ValueError(f"{name}: {arg} ({channels}) must be divisible by groups ({groups})")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        dks = _ntuple(dilated_kernel_size, n, "dilated_kernel_size")
        if min(dks) < 1:
            raise ValueError(f"{name}: dilated_kernel_size must be >= 1 along every axis, got {dks}")
        if any(size % 2 == 0 for size in dks):
            # Positions are centred at size // 2: an even grid has no centre, and with the usual padding
            # size // 2 the output grows by one per axis. Every released model uses odd sizes.
            raise ValueError(f"{name}: dilated_kernel_size must be odd along every axis (the grid is centred at "
                             f"size // 2), got {dks}; use {tuple(s + 1 if s % 2 == 0 else s for s in dks)}")
        self.stride = _ntuple(stride, n, "stride")
        if min(self.stride) < 1:
            raise ValueError(f"{name}: stride must be >= 1 along every axis, got {self.stride}")
        self.padding = _ntuple(padding, n, "padding")
        if min(self.padding) < 0:
            raise ValueError(f"{name}: padding must be >= 0 along every axis, got {self.padding}")

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
    def clamp_parameters(self) -> bool:
        """Clamp the stored positions, in place, to the dilated grid ±(dilated_kernel_size // 2).

        Works on the tensor the optimizer updates, also when it is a sharded DTensor (FSDP2: each process clamps
        its own shard). Writes (and so bumps the version counter) only when a position is out of bounds, so a
        clamp between the forwards of an accumulated step, or inside a non-reentrant checkpoint, changes nothing.
        Returns True if anything was clamped.
        """
        return clamp_positions_(self.P, self.dilated_kernel_size)

    def follow_positions(self, owner: "DclsNd") -> None:
        """Use `owner`'s P (and SIG) from now on; this layer's own are dropped (see the module docstring)."""
        self.tie_parameters_to(owner, [n for n in self.tied_position_names if getattr(owner, n) is not None])

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
        if (self.training or records_graph or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or any(_is_dtensor(p) for p in params)):
            self._cached_kernel = self._cache_key = None
            return self.construct_kernel()
        # Reused only while the parameters hold exactly the values it was built from: `_version` and `data_ptr`
        # miss edits through `.data` (EMA, momentum encoders) and copies into the same storage; comparing the
        # small weight/P/SIG tensors by value catches every change and costs far less than building the kernel.
        key = self._cache_key
        if key is None or len(key) != len(params) or not all(
                k.device == p.device and k.dtype == p.dtype and k.shape == p.shape and torch.equal(k, p)
                for k, p in zip(key, params)):
            self._cached_kernel = self.construct_kernel().detach()
            self._cache_key = tuple(p.detach().clone() for p in params)
        return self._cached_kernel

    def train(self, mode: bool = True):
        # Training never uses the cache: drop it (its memory). `eval()` keeps it: each use checks it by value, and
        # loops that call `model.eval()` before every batch would otherwise rebuild every kernel each time.
        if mode:
            self._cached_kernel = self._cache_key = None
        return super().train(mode)

    def _check_input(self, x: torch.Tensor) -> None:
        n = self.spatial_dims
        name = type(self).__name__
        if x.dim() not in (n + 1, n + 2):
            raise ValueError(f"{name} expects a {n + 2}-D (batched) or {n + 1}-D (unbatched) input, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[-n - 1] != self.in_channels:
            raise ValueError(f"{name} expects {self.in_channels} input channels, got input shape {tuple(x.shape)}")
        spatial = tuple(x.shape[-n:])
        minimum = tuple(max(1, k - 2 * p) for k, p in zip(self.dilated_kernel_size, self.padding))
        if any(s < m for s, m in zip(spatial, minimum)):
            raise ValueError(f"{name} with dilated_kernel_size {self.dilated_kernel_size} and padding {self.padding} "
                             f"needs a spatial input of at least {'x'.join(map(str, minimum))}, got "
                             f"{'x'.join(map(str, spatial))} (input shape {tuple(x.shape)})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_script(x)
        else:
            return self._forward_impl(x)

    @torch.jit.ignore
    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        n = self.spatial_dims
        self._check_input(x)
        kernel = self._kernel()
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0,) * n
        # oneDNN runs large depthwise kernels far faster in channels_last (measured on a CPU: ~5 ms against ~180 ms
        # in NCHW, forward of 17x17 at (8, 96, 56, 56)); small kernels and dense convolutions are left as they come.
        channels_last = (n == 2 and x.device.type == "cpu" and x.dim() == 4 and self.groups == self.in_channels
                         and math.prod(self.dilated_kernel_size) > 49)
        # F.conv with the fast backward of `dcls_conv`
        return dcls_conv(x, kernel, self.bias, self.stride, padding, 1, self.groups, channels_last=channels_last)

    # ------------------------------------------------------------------------------------------------- TorchScript
    # TorchScript compiles `_forward_script` (kernel built at every call, no cache). A layer that follows a stage's
    # positions registers no P of its own, so `__prepare_scriptable__` (called by torch.jit.script) hands the
    # compiler the tensors this layer uses as the plain attributes `_script_P` / `_script_SIG`.
    def __prepare_scriptable__(self):
        if type(self) not in (Dcls1d, Dcls2d, Dcls3d):
            if type(self).forward is not DclsNd.forward:   # e.g. the SNN's causal delays: freezing is not enough
                raise RuntimeError(f"torch.jit.script does not support {type(self).__name__} (its forward and "
                                   f"kernel are Python); use torch.export or torch.compile instead")
            raise RuntimeError(
                f"torch.jit.script does not support {type(self).__name__} (its kernel is built in Python); run "
                f"dcls_zoo.freeze_dcls(model) first to turn DCLS layers into plain convolutions")
        # Plain attributes (in __dict__, not registered): TorchScript takes them as tensor / list attributes.
        self.__dict__["_script_P"] = self.P
        self.__dict__["_script_SIG"] = self.SIG
        self.__dict__["_script_dks"] = list(self.dilated_kernel_size)
        self.__dict__["_script_padding"] = list(self.padding) if self.padding_mode == "zeros" else [0] * self._ndim
        return self

    def _forward_script(self, x: torch.Tensor) -> torch.Tensor:
        kernel = _script_dcls_kernel(self.weight, self._script_P, self._script_SIG, self._script_dks, self.version)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        if self.spatial_dims == 1:
            return F.conv1d(x, kernel, self.bias, self.stride, self._script_padding, 1, self.groups)
        if self.spatial_dims == 2:
            return F.conv2d(x, kernel, self.bias, self.stride, self._script_padding, 1, self.groups)
        return F.conv3d(x, kernel, self.bias, self.stride, self._script_padding, 1, self.groups)

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
        # The cached kernel is derived state, the script attributes are stale copies: never pickle or deep-copy.
        state = super().__getstate__()
        state["_cached_kernel"] = state["_cache_key"] = None
        for key in ("_script_P", "_script_SIG", "_script_dks", "_script_padding"):
            state.pop(key, None)
        return state


def _script_dcls_kernel(
    weight: torch.Tensor, P: torch.Tensor, SIG: Optional[torch.Tensor], dilated_kernel_size: List[int], version: str
) -> torch.Tensor:
    """`construct_dcls_kernel` in TorchScript (same formulas and axis conventions)."""
    ndim = len(dilated_kernel_size)
    if version == "v0":
        axes = [[0], [0, 1], [0, 2, 1]][ndim - 1]
    else:
        axes = [[0], [1, 0], [2, 1, 0]][ndim - 1]
    factors: List[torch.Tensor] = [weight] * ndim
    for d in range(ndim):
        axis = axes[d]
        coords = torch.arange(dilated_kernel_size[axis], device=P.device, dtype=P.dtype)
        p = (P[d] + dilated_kernel_size[d] // 2).unsqueeze(-1)
        if version == "v0":
            base = p.floor()
            at_floor = (coords == base).to(p.dtype)
            at_next = (coords == base + 1).to(p.dtype)
            factor = at_floor + (p - base) * (at_next - at_floor)
        elif version == "v1":
            factor = (1 - (coords - p).abs()).relu()
        else:
            assert SIG is not None
            floor = 0.27 if version == "gauss" else 1.0
            sigma = SIG[d].unsqueeze(-1).abs() + floor
            if version == "gauss":
                factor = torch.exp(-0.5 * ((coords - p) / sigma) ** 2)
            else:
                factor = (sigma - (coords - p).abs()).relu()
        factors[axis] = factor
    if version != "v0":
        denom = factors[0].sum(-1)
        for i in range(1, ndim):
            denom = denom * factors[i].sum(-1)
        weight = weight / (denom + 1e-7)
    if ndim == 1:
        return torch.einsum("oik,oikx->oix", [weight, factors[0]])
    if ndim == 2:
        return torch.einsum("oik,oikx,oiky->oixy", [weight, factors[0], factors[1]])
    return torch.einsum("oik,oikx,oiky,oikz->oixyz", [weight, factors[0], factors[1], factors[2]])


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


# --------------------------------------------------------------------------------------------------- clamping

def _dtensor_type() -> tuple:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return ()
    return (DTensor,)


def _is_dtensor(t: torch.Tensor) -> bool:
    return isinstance(t, _dtensor_type())


def _local_rows(P: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The locally stored part of P and the global index of its first row (dim 0 = position axis)."""
    if _is_dtensor(P):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(P.shape, P.device_mesh, P.placements)
        return P.to_local(), int(offset[0])
    return P, 0


@torch.no_grad()
def clamp_positions_(P: torch.Tensor, dilated_kernel_size: Sequence[int]) -> bool:
    """Clamp P[d] to ±(dilated_kernel_size[d] // 2) in place, writing only if something is out of bounds.

    P may be a DTensor (FSDP2's sharded parameter): its local shard is clamped, which is the copy the optimizer
    updates. Returns True if anything changed.
    """
    local, first_row = _local_rows(P)
    if local.numel() == 0:
        return False
    if local.device.type == "meta":   # a model built on the meta device: no values to clamp
        return False
    bounds = [size // 2 for size in dilated_kernel_size]
    if len(set(bounds)) == 1:
        bound = bounds[0]
        if bool(local.abs().amax() > bound):
            local.clamp_(-bound, bound)
            return True
        return False
    changed = False
    for i in range(local.shape[0]):
        bound = bounds[first_row + i]
        if bool(local[i].abs().amax() > bound):
            local[i].clamp_(-bound, bound)
            changed = True
    return changed


def _unique_dcls_layers(model: nn.Module, attr: str) -> list[tuple[DclsNd, torch.Tensor]]:
    seen: dict[int, tuple[DclsNd, torch.Tensor]] = {}
    for module in model.modules():
        if isinstance(module, DclsNd):
            p = getattr(module, attr)
            if p is not None:
                seen.setdefault(id(p), (module, p))
    return list(seen.values())


def _unique_dcls_parameters(model: nn.Module, attrs: Iterable[str]) -> list[torch.Tensor]:
    return [p for attr in attrs for _, p in _unique_dcls_layers(model, attr)]


@torch.no_grad()
def clamp_dcls_parameters(model: nn.Module) -> bool:
    """Clamp the stored positions of every DCLS layer in `model` (each shared P once), in place.

    DTensor-safe (FSDP2) and free when nothing is out of bounds (see `DclsNd.clamp_parameters`). Models from
    `dclsify` and the zoo's families call it before every forward (`enable_position_clamp`); call it yourself
    after an optimizer step if you need the clamped values before the next forward. Returns True if anything
    changed.
    """
    changed = False
    for layer, _ in _unique_dcls_layers(model, "P"):
        changed |= bool(layer.clamp_parameters())
    return changed


@torch.compiler.disable
def _clamp_before_forward_eager(module: nn.Module) -> None:
    if torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling():
        return  # a trace / export records the forward only: no values to look at, nothing to write
    clamp_dcls_parameters(module)


def _clamp_positions_before_forward(module: nn.Module, args: Tuple[torch.Tensor]) -> None:
    # Forward pre-hook of the model (the root): it runs before any FSDP stage unit gathers its parameters, so
    # the clamp reaches the stored (sharded) positions. Scriptable: TorchScript skips the eager branch.
    if not torch.jit.is_scripting():
        _clamp_before_forward_eager(module)


def enable_position_clamp(model: nn.Module) -> nn.Module:
    """Clamp `model`'s stored DCLS positions in place before each of its forwards (idempotent); returns `model`.

    Clamping at the start of every forward is the papers' "clamp after every optimizer step" for any training
    loop (timm's train.py, HF Trainer, a user's own): the step's result is clamped before it is used. Under FSDP2
    (`fully_shard`) the hook runs before the stage units gather their parameters, so it clamps the stored shards;
    put the positions in stage (or block-group) units, not in the root unit.
    """
    if not any(hook is _clamp_positions_before_forward for hook in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(_clamp_positions_before_forward)
    return model


class DclsModelMixin:
    """What every model with DCLS layers offers: timm's optimizer factory reads `no_weight_decay()`; positions
    are clamped before every forward (`enable_position_clamp`), and `clamp_parameters()` clamps on demand."""

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """DCLS positions and widths (P, SIG) are trained without weight decay."""
        return dcls_position_parameter_names(self)

    @torch.jit.ignore
    def clamp_parameters(self) -> bool:
        """Clamp every DCLS layer's stored positions to its grid (each shared tensor once)."""
        return clamp_dcls_parameters(self)

    @torch.jit.ignore
    def dcls_parameter_groups(self, lr: Optional[float] = None, weight_decay: float = 0.05,
                              position_lr_scale: float = 5.0) -> list[dict]:
        """The papers' optimizer groups for this model (see `dcls_zoo.layers.dcls_parameter_groups`)."""
        return dcls_parameter_groups(self, lr=lr, weight_decay=weight_decay, position_lr_scale=position_lr_scale)


def dcls_position_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in `model.named_parameters()`) of DCLS positions and widths (P, SIG).

    The papers train these with 5x the learning rate and no weight decay.
    """
    ids = {id(p) for p in _unique_dcls_parameters(model, ("P", "SIG"))}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def dcls_parameter_groups(
    model: nn.Module,
    lr: Optional[float] = None,
    weight_decay: float = 0.05,
    position_lr_scale: float = 5.0,
) -> list[dict]:
    """The papers' optimizer parameter groups, for any optimizer and trainer.

    Three groups (empty ones left out), each with a `name` and the parameter `names`:
    - ``dcls_positions``: DCLS positions and widths (P, SIG): no weight decay, learning rate x `position_lr_scale`
      (5 in the DCLS papers), stored as timm's ``lr_scale`` (timm's schedulers apply it at every update) and, when
      `lr` is given, also as the group's ``lr`` (plain torch optimizers and HF `Trainer` read that);
    - ``no_decay``: 1-D tensors (biases, norms), learnable-activation coefficients, the model's `no_weight_decay()`;
    - ``decay``: everything else, at `weight_decay`.

    timm's train.py: it builds its own groups from `no_weight_decay()` (so positions get no decay there, but the
    base learning rate); pass these groups to `timm.optim.create_optimizer_v2(groups, ...)` for the 5x. HF
    `Trainer`: ``Trainer(..., optimizers=(torch.optim.AdamW(dcls_parameter_groups(model, lr=LR)), None))``.
    """
    positions = dcls_position_parameter_names(model)
    activations = activation_parameter_names(model)
    skip = set(model.no_weight_decay()) if callable(getattr(model, "no_weight_decay", None)) else set()
    groups: dict[str, dict] = {
        "decay": {"params": [], "names": [], "weight_decay": weight_decay},
        "no_decay": {"params": [], "names": [], "weight_decay": 0.0},
        "dcls_positions": {"params": [], "names": [], "weight_decay": 0.0, "lr_scale": position_lr_scale},
    }
    if lr is not None:
        groups["decay"]["lr"] = groups["no_decay"]["lr"] = lr
        groups["dcls_positions"]["lr"] = lr * position_lr_scale
    for name, p in model.named_parameters():  # each shared tensor once
        if not p.requires_grad:
            continue
        if name in positions:
            key = "dcls_positions"
        elif p.ndim <= 1 or name.endswith(".bias") or name in activations or name in skip:
            key = "no_decay"
        else:
            key = "decay"
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [dict(g, name=k) for k, g in groups.items() if g["params"]]
