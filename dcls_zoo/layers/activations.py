"""Learnable Hermite, Fourier and tropical activations (Khalfaoui-Hassani, arXiv 2502.01247).

Each activation is one scalar function shared by every element of its input, with a handful of learnable
coefficients. Parameter names and shapes follow ``torchortho`` 0.1.2, so the authors' checkpoints load, but the
evaluation is different:

* every activation is a custom ``autograd.Function`` that saves only its input (and the few coefficients) and
  recomputes what backward needs, instead of materialising ``(..., degree)`` tensors (torchortho saves 2-23x
  the input for backward);
* Hermite is evaluated as a polynomial by Horner's rule: its coefficients in the Hermite basis are mapped to
  monomial coefficients with the three-term recurrence ``P_{k+1} = (x P_k - P_{k-1}) / (k + 1)`` applied to
  coefficient vectors (a ``(degree+1)^2`` constant), so the data only sees ``degree`` fused multiply-adds;
* tropical activations are convex piecewise-linear, so their upper envelope is computed once per call on the
  ``degree+1`` lines and each element is only compared with its few breakpoints;
* on CPU the functions walk the data in cache-sized pieces, so their elementwise passes stay in L2;
* by default (``compiled=None``) each activation runs as two ``torch.compile``'d kernels, one pass over the data
  each way, with float32 sine/cosine polynomials, wherever ``torch.compile`` works (checked once per device type
  at first use; otherwise one warning and the eager functions): needed for Fourier and TropicalRational to come
  near GELU's speed (see "Compiled kernels"). ``compiled=False``, ``set_compiled_activations(False)`` or
  ``DCLS_ZOO_COMPILED_ACTIVATIONS=0`` selects the eager functions, ``=1`` / ``True`` forces the kernels;
* the output has the input's dtype (bf16 in, bf16 out); parameters keep their own dtype and get their
  gradients in it;
* the derivative is right everywhere, ``x = 0`` included (torchortho's Hermite drops the ``He_1`` term there
  because ``sign(0) = 0`` in its ``|x|^k sign(x)^k`` evaluation).

``scheme="default"`` is torchortho 0.1.2's normalisation and variance-preserving initialisation;
``scheme="legacy"`` is 0.1.0/0.1.1's (orthonormal Hermite basis ``He_k/sqrt(k!)``, Fourier without ``1/k!``,
tropical without the ``sqrt(2)/degree`` gain), which the paper's first version and the experiment repositories
used. The two are different functions of the same parameters: pick the one a checkpoint was trained with.

``act_init=`` fits the coefficients to a target activation (value and derivative) deterministically: Hermite by
linear least squares, the others by a fixed number of Adam steps on a fixed grid. Nothing is written anywhere
unless ``fit_cache_dir`` is given.

This file imports nothing but torch and the standard library: ``dcls_zoo.lm`` copies it next to the saved
modeling file so that a saved GPT-2 variant loads with ``trust_remote_code=True`` without dcls_zoo installed.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "HermiteActivation",
    "FourierActivation",
    "TropicalActivation",
    "TropicalRationalActivation",
    "LearnableClamp",
    "ACTIVATION_CLASSES",
    "DEFAULT_DEGREES",
    "create_activation",
    "fit_activation",
    "activation_parameter_names",
    "reference_scheme",
    "set_compiled_activations",
    "compiled_activations",
]

SCHEMES = ("default", "legacy")
# torchortho 0.1.0/0.1.1 constants: sqrt(pi^2/6 - zeta(3)) and sqrt(6)/pi
_LEGACY_BIAS = 0.66549
_LEGACY_GAIN = math.sqrt(6.0) / math.pi


def reference_scheme(buffers: dict) -> str | None:
    """Which torchortho scheme a module's reference buffers reveal ('default' = 0.1.2, 'legacy'), or None.

    Hermite's ``coeffs[2, 0]`` is ``1/2!`` in 0.1.2 and ``sqrt(2!)/2!`` before; Fourier's ``normalization_term``
    exists only in 0.1.2. Other buffers say nothing.
    """
    coeffs = buffers.get("coeffs")
    if coeffs is not None and coeffs.ndim == 2 and coeffs.shape[0] > 2:
        return "default" if abs(float(coeffs[2, 0]) - 0.5) < 1e-4 else "legacy"
    term = buffers.get("normalization_term")
    if term is not None and "grid" not in buffers and "coeffs" not in buffers:
        return "default"  # Fourier (Hermite's numba-only normalization_term comes with coeffs)
    return None


def _check_degree(degree: int, minimum: int = 1) -> int:
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < minimum:
        raise ValueError(f"degree must be an integer >= {minimum}, got {degree!r}")
    return degree


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return scheme


def _check_input(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} expects a floating-point tensor, got {got}")


_SUM_BLOCK = 4096


def _sum(a: torch.Tensor) -> torch.Tensor:
    """Sum of every element, as a float64 scalar: blocks of 4096 summed in (at least) float32, the block sums in
    float64. Parameter gradients are sums over the whole activation tensor, often with heavy cancellation, where a
    single float32 accumulation drifts by ~1e-5 relative; a float64 sum of the whole tensor is ~40x slower on CPU.
    """
    flat = a.reshape(-1)
    rows = flat.numel() // _SUM_BLOCK
    acc = torch.promote_types(a.dtype, torch.float32)
    if rows < 2:
        return flat.sum(dtype=acc).double()
    head = flat[: rows * _SUM_BLOCK].view(rows, _SUM_BLOCK).sum(1, dtype=acc).double().sum()
    return head + flat[rows * _SUM_BLOCK:].sum(dtype=acc).double()


# ----------------------------------------------------------------------------------------------------------------
# Polynomial (Hermite)
# ----------------------------------------------------------------------------------------------------------------


def hermite_to_monomial(degree: int, scheme: str = "default") -> list[list[float]]:
    """Row k holds the monomial coefficients (lowest power first) of the k-th basis function.

    Basis: ``P_k = He_k / k!`` (default) or ``He_k / sqrt(k!)`` (legacy), He_k the probabilists' Hermite
    polynomials, built with the three-term recurrence ``P_{k+1} = (x P_k - P_{k-1}) / (k + 1)``.
    """
    _check_degree(degree, 0)
    _check_scheme(scheme)
    rows = [[1.0] + [0.0] * degree]
    if degree >= 1:
        rows.append([0.0, 1.0] + [0.0] * (degree - 1))
    for k in range(1, degree):
        shifted = [0.0] + rows[k][:-1]
        rows.append([(s - p) / (k + 1) for s, p in zip(shifted, rows[k - 1])])
    if scheme == "legacy":
        rows = [[c * math.sqrt(math.factorial(k)) for c in row] for k, row in enumerate(rows)]
    return rows


def _scalars(values: torch.Tensor, like: torch.Tensor) -> list:
    """The few coefficients as scalars for elementwise ops on ``like``.

    Python floats on CPU (0-dim tensor operands take a slower, unvectorised path there, about 2x per pass);
    0-dim tensors in ``like``'s dtype elsewhere, so that CUDA never waits for a device-to-host copy and fused
    ``addcmul`` kernels can be used (one launch instead of two).
    """
    if like.device.type == "cpu":
        return values.detach().double().tolist()
    return list(values.to(like.dtype).unbind(0))


def _affine(x: torch.Tensor, a, b, out: torch.Tensor | None = None) -> torch.Tensor:
    """a * x + b (a, b from `_scalars`)."""
    if isinstance(a, float):
        return torch.mul(x, a, out=out).add_(b) if out is not None else torch.mul(x, a).add_(b)
    return torch.addcmul(b, x, a, out=out) if out is not None else torch.addcmul(b, x, a)


def _axpy_(y: torch.Tensor, a, z: torch.Tensor) -> torch.Tensor:
    """y += a * z in place (a from `_scalars`)."""
    return y.add_(z, alpha=a) if isinstance(a, float) else y.addcmul_(z, a)


def _horner(x: torch.Tensor, coefficients: Sequence, out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_j c_j x^j (lowest power first, scalars from `_scalars`); result in x's dtype."""
    n = len(coefficients) - 1
    if n == 0:
        return (torch.empty_like(x) if out is None else out).fill_(coefficients[0])
    y = _affine(x, coefficients[n], coefficients[n - 1], out=out)
    for j in range(n - 2, -1, -1):
        if isinstance(coefficients[j], float):
            y.mul_(x).add_(coefficients[j])
        else:
            torch.addcmul(coefficients[j], y, x, out=y)
    return y


# On CPU the eager functions below work through their data in cache-sized pieces, so that each of their many
# elementwise passes reads and writes a core's L2 cache rather than main memory; elsewhere the one piece is the
# whole tensor (kernel launches, not memory passes, are what a GPU would pay for).
_CPU_PIECE = 1 << 18  # 1 MiB of float32: smaller pieces pay per-op overhead, larger ones fall out of cache


def _dense(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` laid out densely in ``like``'s memory order (contiguous, or channels-last for 4-D tensors), so that
    the `_flat` views of the two match element for element."""
    ref = t if like is None else like
    if ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """1-D view, in memory order, of a tensor laid out by `_dense`."""
    return t.view(-1) if t.is_contiguous() else t.permute(0, 2, 3, 1).reshape(-1)


def _pieces(t: torch.Tensor) -> list[slice]:
    n = t.numel()
    step = _CPU_PIECE if t.device.type == "cpu" else max(n, 1)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)] or [slice(0, 0)]


def _piece_buffer(flat: torch.Tensor, pieces: list[slice]) -> torch.Tensor:
    """Scratch space for the largest piece (the first)."""
    return torch.empty_like(flat[pieces[0]])


class _PolynomialFunction(torch.autograd.Function):
    """y = p(u), u = x or lim * tanh(x / 2) (learnable clamp); saves x and the coefficients only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, monomial: torch.Tensor, lim: torch.Tensor | None):
        x = _dense(x)
        ctx.save_for_backward(x, monomial, lim)
        coefficients = _scalars(monomial, x)
        y = torch.empty_like(x)
        xf, yf = _flat(x), _flat(y)
        pieces = _pieces(xf)
        u = None if lim is None else _piece_buffer(xf, pieces)
        limit = None if lim is None else _scalars(lim.reshape(1), x)[0]
        for piece in pieces:
            xs = xf[piece]
            if u is not None:
                xs = torch.mul(xs, 0.5, out=u[: xs.numel()]).tanh_().mul_(limit)
            _horner(xs, coefficients, out=yf[piece])
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, monomial, lim = ctx.saved_tensors
        coefficients = _scalars(monomial, x)
        derivative = [coefficients[j] * j for j in range(1, len(coefficients))]
        need_x, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_lim = lim is not None and ctx.needs_input_grad[2]
        xf, gf = _flat(x), _flat(_dense(grad, like=x))
        pieces = _pieces(xf)
        grad_x = torch.empty_like(x) if need_x else None
        grad_x_flat = None if grad_x is None else _flat(grad_x)
        buf = _piece_buffer(xf, pieces)
        grad_u_buf = _piece_buffer(xf, pieces) if need_lim and not need_x else None
        t_buf = u_buf = limit = None
        if lim is not None:
            t_buf, u_buf, limit = _piece_buffer(xf, pieces), _piece_buffer(xf, pieces), _scalars(lim.reshape(1), x)[0]
        sums, lim_sum = [0.0] * monomial.numel(), 0.0
        for piece in pieces:
            xs, gs = xf[piece], gf[piece]
            b = buf[: xs.numel()]
            if lim is None:
                t, u = None, xs
            else:
                t = torch.mul(xs, 0.5, out=t_buf[: xs.numel()]).tanh_()
                u = torch.mul(t, limit, out=u_buf[: xs.numel()])
            if need_m:
                # sum(grad * u^j) for every j, from one running product
                sums[0] = sums[0] + _sum(gs)
                for j in range(1, len(sums)):
                    torch.mul(gs, u, out=b) if j == 1 else b.mul_(u)
                    sums[j] = sums[j] + _sum(b)
            if need_x or need_lim:
                out = grad_x_flat[piece] if need_x else grad_u_buf[: xs.numel()]
                grad_u = _horner(u, derivative, out=out).mul_(gs)
                if need_lim:
                    lim_sum = lim_sum + _sum(torch.mul(grad_u, t, out=b))
                if need_x and t is not None:
                    # d u / d x = lim / 2 (1 - t^2)
                    grad_u.mul_(torch.mul(t, t, out=b).neg_().add_(1.0)).mul_(limit * 0.5)
        grad_m = torch.stack(sums).to(monomial.dtype) if need_m else None
        grad_lim = lim_sum.to(lim.dtype) if need_lim else None
        return grad_x, grad_m, grad_lim


class LearnableClamp(nn.Module):
    """Smooth clamp ``lim_val * tanh(x / 2)`` (= ``(sigmoid(x) - 0.5) * 2 * lim_val``, torchortho's form)."""

    def __init__(self, init_lim: float = math.sqrt(3.0), device=None, dtype=None):
        super().__init__()
        self.init_lim = init_lim
        self.lim_val = nn.Parameter(torch.full((), init_lim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * 0.5) * self.lim_val.to(x.dtype)


class _OrthoActivation(nn.Module):
    """Shared plumbing: init values, reset, loading torchortho state dicts, fitting."""

    # torchortho buffers that carry no information we need; accepted (and checked) when loading its state dicts
    _reference_buffers: tuple[str, ...] = ()

    def __init__(self, degree: int, scheme: str, compiled: bool | None):
        super().__init__()
        self.degree = _check_degree(degree)
        self.scheme = _check_scheme(scheme)
        self.compiled = _check_compiled(compiled)

    def _initialise(self, act_init: Callable[[torch.Tensor], torch.Tensor] | None, fit_cache_dir: str | None) -> None:
        """The default init, then the optional fit to ``act_init``; called once the parameters exist."""
        self.reset_parameters()
        if act_init is not None:
            fit_activation(self, act_init, cache_dir=fit_cache_dir)

    def initial_parameters(self) -> dict[str, torch.Tensor]:
        """Name -> freshly initialised value (in float64 on CPU) for every direct parameter."""
        raise NotImplementedError

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, value in self.initial_parameters().items():
            param = getattr(self, name)
            if not param.is_meta:
                param.copy_(value)
        clamp = getattr(self, "clamp", None)
        if clamp is not None and not clamp.lim_val.is_meta:
            clamp.lim_val.fill_(clamp.init_lim)

    def _fit_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Differentiable (value, derivative or None) on a small fitting grid; used only by ``fit_activation``."""
        raise NotImplementedError

    def _check_reference_buffer(self, name: str, value: torch.Tensor) -> None:
        pass

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in self._reference_buffers:
            key = prefix + name
            if key in state_dict:
                self._check_reference_buffer(name, state_dict.pop(key))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _fit_signature(self) -> str:
        return f"{type(self).__name__}-{self.degree}-{self.scheme}"

    def _use_compiled(self, x: torch.Tensor) -> bool:
        """``compiled`` (or the global default when None), for tensors with data."""
        compiled = getattr(self, "compiled", None)
        if compiled is None:
            # the default never compiles under torch.jit.trace (the trace records the eager ops instead)
            compiled = not torch.jit.is_tracing() and compiled_activations(x.device.type)
        return compiled and x.numel() > 0 and not x.is_meta

    def _constant(self, name: str, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        """A small constant tensor on ``like``'s device and dtype, made once."""
        cache = self.__dict__.setdefault("_constants", {})
        key = (name, like.device, like.dtype)
        if key not in cache:
            cache[key] = torch.tensor(values, device=like.device, dtype=like.dtype)
        return cache[key]


class HermiteActivation(_OrthoActivation):
    """``y = sum_{k=0..degree} a_k He_k(u) / k!`` with ``u = x`` or a learnable clamp of x.

    Default init (torchortho 0.1.2): ``a_0 = sqrt(1 - 1/degree!) / sqrt(e)``, ``a_k = 1 / sqrt(e)`` -- the
    truncated series of ``exp(x - 1)``; for x ~ N(0, 1), ``E[y^2] = E[y'^2] = e^-1 sum_{k<degree} 1/k!``.
    ``scheme="legacy"``: basis ``He_k / sqrt(k!)``, ``a_0 = 0.66549 sqrt(6)/pi``, ``a_k = sqrt(6)/pi / k^1.5``.
    """

    _reference_buffers = ("coeffs", "grid", "normalization_term")

    def __init__(
            self,
            degree: int = 3,
            clamp: bool = False,
            act_init: Callable[[torch.Tensor], torch.Tensor] | None = None,
            requires_grad: bool = True,
            scheme: str = "default",
            fit_cache_dir: str | None = None,
            compiled: bool | None = None,
            device=None,
            dtype=None,
    ):
        super().__init__(degree, scheme, compiled)
        self.coefficients = nn.Parameter(torch.empty(degree + 1, device=device, dtype=dtype),
                                         requires_grad=requires_grad)
        self.clamp = LearnableClamp(math.sqrt(3.0), device=device, dtype=dtype) if clamp else None
        self._basis = hermite_to_monomial(degree, scheme)
        self._basis_cache: dict = {}
        self._initialise(act_init, fit_cache_dir)

    def initial_parameters(self) -> dict[str, torch.Tensor]:
        n = self.degree
        a = torch.empty(n + 1, dtype=torch.float64)
        if self.scheme == "default":
            a.fill_(1.0 / math.sqrt(math.e))
            a[0] = math.sqrt(1.0 - 1.0 / math.factorial(n)) / math.sqrt(math.e)
        else:
            a[1:] = _LEGACY_GAIN / torch.arange(1, n + 1, dtype=torch.float64) ** 1.5
            a[0] = _LEGACY_BIAS * _LEGACY_GAIN
        return {"coefficients": a}

    def _basis_matrix(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        matrix = self._basis_cache.get(key)
        if matrix is None:
            matrix = self._basis_cache[key] = torch.tensor(self._basis, device=like.device, dtype=like.dtype)
        return matrix

    def monomial_coefficients(self) -> torch.Tensor:
        """Coefficients of the same polynomial in powers of u (lowest first); differentiable."""
        return self.coefficients @ self._basis_matrix(self.coefficients)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_plain(x)
        return self._forward_fused(x)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, type(self).__name__)
        lim = None if self.clamp is None else self.clamp.lim_val
        if self._use_compiled(x):
            return _compiled(_CompiledPolynomial, x, self.monomial_coefficients(), *([] if lim is None else [lim]))
        return _PolynomialFunction.apply(x, self.monomial_coefficients(), lim)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """Plain autograd ops (TorchScript); same function, saves more for backward."""
        u = x
        clamp = self.clamp
        if clamp is not None:
            u = clamp(x)
        basis = torch.tensor(self._basis, dtype=self.coefficients.dtype, device=self.coefficients.device)
        m = (self.coefficients @ basis).to(x.dtype)
        y = torch.zeros_like(u) + m[self.degree]
        for j in range(self.degree - 1, -1, -1):
            y = y * u + m[j]
        return y

    def _fit_terms(self, x):
        u, du = x, torch.ones_like(x)
        if self.clamp is not None:
            t = torch.tanh(x * 0.5)
            u, du = t * self.clamp.lim_val, self.clamp.lim_val * 0.5 * (1 - t * t)
        m = self.monomial_coefficients()
        powers = torch.stack([u ** j for j in range(self.degree + 1)], -1)
        value = powers @ m
        deriv = (powers[..., :-1] @ (m[1:] * torch.arange(1, self.degree + 1, dtype=m.dtype))) * du
        return value, deriv

    def _check_reference_buffer(self, name, value):
        # Only `coeffs` tells the basis: torchortho's numba-path `normalization_term` (k!) exists in both versions,
        # and alone it would read as Fourier's 0.1.2 buffer.
        found = reference_scheme({name: value}) if name == "coeffs" else None
        if found is not None and found != self.scheme:
            raise ValueError(f"checkpoint uses the {found!r} Hermite basis but this HermiteActivation has "
                             f"scheme={self.scheme!r}; build it with scheme={found!r}")

    def _fit_signature(self) -> str:
        return super()._fit_signature() + f"-clamp{self.clamp is not None}"

    def extra_repr(self) -> str:
        return f"degree={self.degree}, scheme={self.scheme!r}" + (", clamp=True" if self.clamp is not None else "")


# ----------------------------------------------------------------------------------------------------------------
# Fourier
# ----------------------------------------------------------------------------------------------------------------


class _FourierFunction(torch.autograd.Function):
    """y = f + sum_k s_k c_k cos(w_k x - phi_k), s_k = 1/k! (or 1); saves x and the coefficients only."""

    @staticmethod
    def forward(ctx, x, fundamental, phases, coefficients, grid, scale):
        x = _dense(x)
        ctx.save_for_backward(x, fundamental, phases, coefficients, grid, scale)
        weights = _scalars(coefficients * scale, x)
        w, phi = _scalars(grid, x), _scalars(-phases, x)
        y = torch.empty_like(x).fill_(_scalars(fundamental, x)[0])
        xf, yf = _flat(x), _flat(y)
        pieces = _pieces(xf)
        z = _piece_buffer(xf, pieces)
        for piece in pieces:
            xs, ys = xf[piece], yf[piece]
            zs = z[: xs.numel()]
            for k in range(len(weights)):
                _affine(xs, w[k], phi[k], out=zs).cos_()
                _axpy_(ys, weights[k], zs)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, fundamental, phases, coefficients, grid, scale = ctx.saved_tensors
        need_x, need_f, need_phi, need_c, need_w = ctx.needs_input_grad[:5]
        n = coefficients.numel()
        weights = coefficients * scale
        w_t, phi_t = _scalars(grid, x), _scalars(-phases, x)
        slope_t = _scalars(-(weights * grid), x)
        xf, gf = _flat(x), _flat(_dense(grad, like=x))
        pieces = _pieces(xf)
        grad_x = torch.zeros_like(x) if need_x else None
        grad_x_flat = None if grad_x is None else _flat(grad_x)
        sum_g, sum_cos, sum_gsin, sum_gsin_x = 0.0, [0.0] * n, [0.0] * n, [0.0] * n
        z, buf = _piece_buffer(xf, pieces), _piece_buffer(xf, pieces)
        for piece in pieces:
            xs, gs = xf[piece], gf[piece]
            zs, bs = z[: xs.numel()], buf[: xs.numel()]
            if need_f:
                sum_g = sum_g + _sum(gs)
            for k in range(n):
                _affine(xs, w_t[k], phi_t[k], out=zs)
                if need_c:
                    sum_cos[k] = sum_cos[k] + _sum(torch.cos(zs, out=bs).mul_(gs))
                zs.sin_()
                if need_x:
                    _axpy_(grad_x_flat[piece], slope_t[k], zs)
                if need_phi or need_w:
                    torch.mul(gs, zs, out=bs)
                    sum_gsin[k] = sum_gsin[k] + _sum(bs)
                    if need_w:
                        sum_gsin_x[k] = sum_gsin_x[k] + _sum(bs.mul_(xs))
            if need_x:
                grad_x_flat[piece].mul_(gs)
        grad_f = sum_g.reshape(1).to(fundamental.dtype) if need_f else None
        grad_c = (torch.stack(sum_cos).to(coefficients.dtype) * scale) if need_c else None
        grad_phi = (torch.stack(sum_gsin).to(phases.dtype) * weights) if need_phi else None
        grad_w = (-torch.stack(sum_gsin_x).to(grid.dtype) * weights) if need_w else None
        return grad_x, grad_f, grad_phi, grad_c, grad_w, None


# 1/33! = 1.15e-37 is float32's last normal 1/k! (smallest normal 1.18e-38): higher terms would be subnormal or 0
_FOURIER_MAX_DEGREE = 33


class FourierActivation(_OrthoActivation):
    """``y = fundamental + sum_{k=1..degree} coefficients_k cos(grid_k x - phases_k) / k!``; all learnable.

    ``grid`` holds the (learnable) frequencies. Default init (torchortho 0.1.2): ``grid_k = k``,
    ``phases_k = pi/4``, ``coefficients_k = 1/sqrt(I0(2))``, ``fundamental = that * sqrt(1 - 1/(degree!)^2)``.
    ``scheme="legacy"``: no ``1/k!``, ``coefficients_k = sqrt(6)/pi / k^1.5``, ``grid_k = k pi / sqrt(3)``,
    ``fundamental = 0.66549 sqrt(6)/pi``.
    """

    _reference_buffers = ("normalization_term",)

    def __init__(
            self,
            degree: int = 5,
            act_init: Callable[[torch.Tensor], torch.Tensor] | None = None,
            requires_grad: bool = True,
            scheme: str = "default",
            fit_cache_dir: str | None = None,
            compiled: bool | None = None,
            device=None,
            dtype=None,
    ):
        super().__init__(degree, scheme, compiled)
        if self.scheme == "default" and degree > _FOURIER_MAX_DEGREE:
            raise ValueError(f"FourierActivation: degree must be <= {_FOURIER_MAX_DEGREE} with scheme='default', got "
                             f"{degree}: term k is scaled by 1/k!, below float32's smallest normal number from "
                             f"k = {_FOURIER_MAX_DEGREE + 1} on (use scheme='legacy' for more terms)")
        dd = {"device": device, "dtype": dtype}
        self.fundamental = nn.Parameter(torch.empty(1, **dd), requires_grad=requires_grad)
        self.phases = nn.Parameter(torch.empty(degree, **dd), requires_grad=requires_grad)
        self.coefficients = nn.Parameter(torch.empty(degree, **dd), requires_grad=requires_grad)
        self.grid = nn.Parameter(torch.empty(degree, **dd), requires_grad=requires_grad)
        if scheme == "default":
            self._scale = [1.0 / math.factorial(k) for k in range(1, degree + 1)]
        else:
            self._scale = [1.0] * degree
        self._scale_cache: dict = {}
        self._initialise(act_init, fit_cache_dir)

    def initial_parameters(self) -> dict[str, torch.Tensor]:
        n = self.degree
        k = torch.arange(1, n + 1, dtype=torch.float64)
        if self.scheme == "default":
            c = 1.0 / math.sqrt(sum(1.0 / math.factorial(i) ** 2 for i in range(40)))  # 1/sqrt(I0(2))
            return {"fundamental": torch.full((1,), c * math.sqrt(1.0 - 1.0 / math.factorial(n) ** 2),
                                              dtype=torch.float64),
                    "phases": torch.full((n,), math.pi / 4, dtype=torch.float64),
                    "coefficients": torch.full((n,), c, dtype=torch.float64),
                    "grid": k.clone()}
        return {"fundamental": torch.full((1,), _LEGACY_BIAS * _LEGACY_GAIN, dtype=torch.float64),
                "phases": torch.full((n,), math.pi / 4, dtype=torch.float64),
                "coefficients": _LEGACY_GAIN / k ** 1.5,
                "grid": k * math.pi / math.sqrt(3.0)}

    def _scale_tensor(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        scale = self._scale_cache.get(key)
        if scale is None:
            scale = self._scale_cache[key] = torch.tensor(self._scale, device=like.device, dtype=like.dtype)
        return scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_plain(x)
        return self._forward_fused(x)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, type(self).__name__)
        params = (self.fundamental, self.phases, self.coefficients, self.grid, self._scale_tensor(self.coefficients))
        if self._use_compiled(x):
            return _compiled(_CompiledFourier, x, *params)
        return _FourierFunction.apply(x, *params)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """Plain autograd ops (TorchScript); same function, saves more for backward."""
        scale = torch.tensor(self._scale, dtype=self.coefficients.dtype, device=self.coefficients.device)
        z = x.unsqueeze(-1) * self.grid.to(x.dtype) - self.phases.to(x.dtype)
        return (z.cos() * (self.coefficients * scale).to(x.dtype)).sum(-1) + self.fundamental.to(x.dtype)

    def _fit_terms(self, x):
        z = x.unsqueeze(-1) * self.grid - self.phases
        weights = self.coefficients * self._scale_tensor(self.coefficients)
        value = (z.cos() * weights).sum(-1) + self.fundamental
        deriv = -(z.sin() * weights * self.grid).sum(-1)
        return value, deriv

    def _check_reference_buffer(self, name, value):
        if reference_scheme({name: value}) != self.scheme:
            raise ValueError("checkpoint has torchortho 0.1.2's Fourier normalization_term (1/k! weights) but this "
                             "FourierActivation has scheme='legacy'; build it with scheme='default'")

    def extra_repr(self) -> str:
        return f"degree={self.degree}, scheme={self.scheme!r}"


# ----------------------------------------------------------------------------------------------------------------
# Tropical (max of affine functions)
# ----------------------------------------------------------------------------------------------------------------


def _upper_envelope(slopes: Sequence[float], intercepts: Sequence[float]) -> tuple[list[int], list[float]]:
    """Lines on the upper envelope of ``max_k(slopes_k x + intercepts_k)``, left to right, and the breakpoints."""
    order = sorted(range(len(slopes)), key=lambda i: (slopes[i], intercepts[i]))
    hull: list[int] = []
    for i in order:
        if hull and slopes[hull[-1]] == slopes[i]:
            hull.pop()  # same slope: the later one (sorted by intercept) is at least as high
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            x_ab = (intercepts[a] - intercepts[b]) / (slopes[b] - slopes[a])
            x_bi = (intercepts[b] - intercepts[i]) / (slopes[i] - slopes[b])
            if x_bi <= x_ab:
                hull.pop()  # b is never strictly above both neighbours
            else:
                break
        hull.append(i)
    breakpoints = [(intercepts[a] - intercepts[b]) / (slopes[b] - slopes[a]) for a, b in zip(hull, hull[1:])]
    return hull, breakpoints


class _MaxAffineFunction(torch.autograd.Function):
    """y = scale * max_k(slopes_k x + intercepts_k); saves x and the coefficients only.

    Only the lines on the upper envelope are evaluated (two at a tropical activation's init). Backward rebuilds
    the slope map from the envelope's breakpoints, ``s_0 + sum_i (s_{i+1} - s_i) [x > b_i]``, and the per-line
    sums from the same masks. Gradients follow torch.max: each element credits the line that attains the max.
    The envelope is computed on the host from the (degree + 1) coefficients, one small device sync per call.
    """

    @staticmethod
    def forward(ctx, x, slopes, intercepts, scale: float):
        hull, breakpoints = _upper_envelope(slopes.detach().double().cpu().tolist(),
                                            intercepts.detach().double().cpu().tolist())
        x = _dense(x)
        ctx.save_for_backward(x, slopes, intercepts)
        ctx.scale, ctx.hull, ctx.breakpoints = scale, hull, breakpoints
        s, c = _scalars(slopes * scale, x), _scalars(intercepts * scale, x)
        y = torch.empty_like(x)
        xf, yf = _flat(x), _flat(y)
        pieces = _pieces(xf)
        line = _piece_buffer(xf, pieces) if len(hull) > 1 else None
        for piece in pieces:
            xs, ys = xf[piece], yf[piece]
            _affine(xs, s[hull[0]], c[hull[0]], out=ys)
            for i in hull[1:]:
                torch.maximum(ys, _affine(xs, s[i], c[i], out=line[: xs.numel()]), out=ys)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, slopes, intercepts = ctx.saved_tensors
        scale, hull, breakpoints = ctx.scale, ctx.hull, ctx.breakpoints
        need_x, need_s, need_c = ctx.needs_input_grad[:3]
        s = _scalars(slopes * scale, x)
        xf, gf = _flat(x), _flat(_dense(grad, like=x))
        pieces = _pieces(xf)
        grad_x = torch.empty_like(x) if need_x else None
        grad_x_flat = None if grad_x is None else _flat(grad_x)
        grad_times_x = _piece_buffer(xf, pieces) if need_s else None
        mask = _piece_buffer(xf, pieces) if breakpoints else None
        masked = _piece_buffer(xf, pieces) if breakpoints and need_s else None
        # tail sums: sum over elements right of breakpoint i - 1 (i = 0 means everything)
        tail_g, tail_gx = [0.0] * len(hull), [0.0] * len(hull)
        for piece in pieces:
            xs, gs = xf[piece], gf[piece]
            m = xs.numel()
            slope_map = grad_x_flat[piece].fill_(s[hull[0]]) if need_x else None
            gx = torch.mul(gs, xs, out=grad_times_x[:m]) if need_s else None
            if need_c:
                tail_g[0] = tail_g[0] + _sum(gs)
            if need_s:
                tail_gx[0] = tail_gx[0] + _sum(gx)
            for i, b in enumerate(breakpoints):
                right = torch.gt(xs, b, out=mask[:m])  # 1.0 right of the breakpoint, in x's dtype
                if need_x:
                    _axpy_(slope_map, s[hull[i + 1]] - s[hull[i]], right)
                if need_s:
                    tail_gx[i + 1] = tail_gx[i + 1] + _sum(torch.mul(right, gx, out=masked[:m]))
                if need_c:
                    tail_g[i + 1] = tail_g[i + 1] + _sum(right.mul_(gs))  # last use of the mask
            if need_x:
                slope_map.mul_(gs)

        def per_line(tails, like):
            tails = torch.stack([torch.as_tensor(t, dtype=torch.float64, device=like.device) for t in tails]
                                + [torch.zeros((), dtype=torch.float64, device=like.device)])
            out = torch.zeros_like(like)
            out[hull] = ((tails[:-1] - tails[1:]) * scale).to(like.dtype)
            return out

        grad_s = per_line(tail_gx, slopes) if need_s else None
        grad_c = per_line(tail_g, intercepts) if need_c else None
        return grad_x, grad_s, grad_c, None


def _max_affine(x: torch.Tensor, slopes: torch.Tensor, intercepts: torch.Tensor, scale: float) -> torch.Tensor:
    if x.is_meta or slopes.is_meta or intercepts.is_meta:
        return torch.empty_like(x)  # shape/dtype propagation only (timm's meta-device checks)
    return _MaxAffineFunction.apply(x, slopes, intercepts, scale)


class TropicalActivation(_OrthoActivation):
    """``y = gain * max_{k=0..degree}(k x + coefficients_k)``, gain ``sqrt(2)/degree`` (legacy: 1).

    The slopes are fixed; ``coefficients`` init to ones, so at init ``y = sqrt(2) ReLU(x) + sqrt(2)/degree``.
    """

    _reference_buffers = ("powers",)

    def __init__(
            self,
            degree: int = 5,
            act_init: Callable[[torch.Tensor], torch.Tensor] | None = None,
            requires_grad: bool = True,
            scheme: str = "default",
            fit_cache_dir: str | None = None,
            compiled: bool | None = None,
            device=None,
            dtype=None,
    ):
        super().__init__(degree, scheme, compiled)
        self.gain = math.sqrt(2.0) / degree if scheme == "default" else 1.0
        self.coefficients = nn.Parameter(torch.empty(degree + 1, device=device, dtype=dtype),
                                         requires_grad=requires_grad)
        self._slopes_cache: dict = {}
        self._initialise(act_init, fit_cache_dir)

    def initial_parameters(self) -> dict[str, torch.Tensor]:
        return {"coefficients": torch.ones(self.degree + 1, dtype=torch.float64)}

    def _slopes(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        slopes = self._slopes_cache.get(key)
        if slopes is None:
            slopes = self._slopes_cache[key] = torch.arange(self.degree + 1, device=like.device, dtype=like.dtype)
        return slopes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_plain(x)
        return self._forward_fused(x)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, type(self).__name__)
        slopes = self._slopes(self.coefficients)
        if self._use_compiled(x):
            return _compiled(_CompiledMaxAffine, x, slopes.view(1, -1), self.coefficients.view(1, -1),
                             self._constant("gain", [self.gain], self.coefficients))
        return _max_affine(x, slopes, self.coefficients, self.gain)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """Plain autograd ops (TorchScript); same function, saves more for backward."""
        slopes = torch.arange(self.degree + 1, dtype=x.dtype, device=x.device)
        return (x.unsqueeze(-1) * slopes + self.coefficients.to(x.dtype)).amax(-1) * self.gain

    def _fit_terms(self, x):
        value = (x.unsqueeze(-1) * self._slopes(self.coefficients) + self.coefficients).amax(-1) * self.gain
        return value, None

    def _check_reference_buffer(self, name, value):
        if value.numel() != self.degree + 1:
            raise ValueError(f"checkpoint 'powers' has {value.numel()} entries, "
                             f"expected degree + 1 = {self.degree + 1}")

    def extra_repr(self) -> str:
        return f"degree={self.degree}, scheme={self.scheme!r}"


class TropicalRationalActivation(_OrthoActivation):
    """``y = max_k(powers_num_k x + coefficients_num_k) - max_k(powers_denom_k x + coefficients_denom_k)``.

    All four vectors are learnable. torchortho draws them from ``randn`` with no variance control; so do we
    (through torch's global generator, like any other layer init).
    """

    def __init__(
            self,
            degree: int = 6,
            act_init: Callable[[torch.Tensor], torch.Tensor] | None = None,
            requires_grad: bool = True,
            scheme: str = "default",
            fit_cache_dir: str | None = None,
            compiled: bool | None = None,
            device=None,
            dtype=None,
    ):
        super().__init__(degree, scheme, compiled)  # (both torchortho versions share this activation)
        dd = {"device": device, "dtype": dtype}
        for name in ("powers_num", "powers_denom", "coefficients_num", "coefficients_denom"):
            setattr(self, name, nn.Parameter(torch.empty(degree + 1, **dd), requires_grad=requires_grad))
        self._initialise(act_init, fit_cache_dir)

    def initial_parameters(self) -> dict[str, torch.Tensor]:
        n = self.degree + 1
        # float32 draws in torchortho's order, so the same seed gives the same init
        return {name: torch.randn(n).double()
                for name in ("powers_num", "powers_denom", "coefficients_num", "coefficients_denom")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_plain(x)
        return self._forward_fused(x)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, type(self).__name__)
        if self._use_compiled(x):
            return _compiled(_CompiledMaxAffine, x, torch.stack([self.powers_num, self.powers_denom]),
                             torch.stack([self.coefficients_num, self.coefficients_denom]),
                             self._constant("signs", [1.0, -1.0], self.powers_num))
        return (_max_affine(x, self.powers_num, self.coefficients_num, 1.0)
                - _max_affine(x, self.powers_denom, self.coefficients_denom, 1.0))

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """Plain autograd ops (TorchScript); same function, saves more for backward."""
        xe = x.unsqueeze(-1)
        return ((xe * self.powers_num.to(x.dtype) + self.coefficients_num.to(x.dtype)).amax(-1)
                - (xe * self.powers_denom.to(x.dtype) + self.coefficients_denom.to(x.dtype)).amax(-1))

    def _fit_terms(self, x):
        xe = x.unsqueeze(-1)
        value = ((xe * self.powers_num + self.coefficients_num).amax(-1)
                 - (xe * self.powers_denom + self.coefficients_denom).amax(-1))
        return value, None

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


# ----------------------------------------------------------------------------------------------------------------
# Compiled kernels (the default where torch.compile works)
# ----------------------------------------------------------------------------------------------------------------
#
# The eager functions above make one pass over the data per elementwise op. Fourier needs 15 full sine/cosine
# passes per forward+backward (its frequencies are learnable), each about as costly as GELU itself on a CPU, so
# eager Fourier (and TropicalRational, with its many masked sums) cannot come near GELU's time (BENCHMARKS.md).
# With compiled=True each activation runs as two torch.compile'd kernels, one loop over the data each:
# forward, and backward producing the input gradient and per-row partial sums for the parameters together.
# Sine and cosine are short polynomials after range reduction (float32 accurate; float64 uses torch's own), the
# partial sums are added in float64 like `_sum`, and the autograd function still saves only x and the
# coefficients. The first call per (activation kind, dtype, device) compiles (seconds; Inductor caches on disk).

_COMPILED_ENV = "DCLS_ZOO_COMPILED_ACTIVATIONS"
_compiled_default: bool | None = None  # set_compiled_activations(); None: read the environment variable
_compiler_works: dict[str, bool] = {}  # device type -> whether torch.compile built and ran a probe kernel there
_logger = logging.getLogger(__name__)


def set_compiled_activations(enabled: bool) -> None:
    """Make every learnable activation built with ``compiled=None`` (the default) use its compiled kernels."""
    global _compiled_default
    if not isinstance(enabled, bool):
        raise TypeError(f"set_compiled_activations expects True or False, got {enabled!r}")
    _compiled_default = enabled


def compiled_activations(device_type: str = "cpu") -> bool:
    """Whether activations with ``compiled=None`` use compiled kernels on ``device_type``:
    ``set_compiled_activations`` if called, else the environment variable ``DCLS_ZOO_COMPILED_ACTIVATIONS``
    (``1``/``0``), else whether ``torch.compile`` works on that device (CPU and CUDA only; checked once, at first
    use, by building a one-line kernel: a missing C++ compiler or Triton logs one warning and selects eager)."""
    if _compiled_default is not None:
        return _compiled_default
    value = os.environ.get(_COMPILED_ENV, "").strip().lower()
    if value not in ("0", "1", "true", "false", ""):
        raise ValueError(f"{_COMPILED_ENV} must be 1 or 0, got {value!r}")
    if value:
        return value in ("1", "true")
    return _torch_compile_works(device_type)


def _torch_compile_works(device_type: str) -> bool:
    if device_type not in ("cpu", "cuda"):
        return False
    works = _compiler_works.get(device_type)
    if works is None:
        try:
            probe = torch.compile(lambda t: t * 2.0 + 1.0, dynamic=False)
            works = bool(probe(torch.ones(8, device=device_type)).eq(3.0).all())
        except Exception as error:  # whatever the toolchain raises (missing compiler, Triton, write access)
            works = False
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            _logger.warning("dcls_zoo activations: torch.compile does not work on %s (%s); using the eager "
                            "functions (set %s=0 to skip this check)", device_type, reason[:200], _COMPILED_ENV)
        _compiler_works[device_type] = works
    return works


def _check_compiled(compiled) -> bool | None:
    if compiled is not None and not isinstance(compiled, bool):
        raise TypeError(f"compiled must be True, False or None (the global default), got {compiled!r}")
    return compiled


# sin(2 pi u) = u * P(u^2) and cos(2 pi u) = Q(u^2) for |u| <= 1/4: least squares at 4001 Chebyshev points in
# float64; max error 3.4e-9 and 4.7e-8, below float32's resolution near 1 (evaluated in float32: < 2.5 ulps of 1,
# tested against float64)
_SIN_TURN_POLY = (6.2831851595779975, -41.341654920853124, 81.60099762205995, -76.54964290999865,
                  39.53570242651083)
_COS_TURN_POLY = (0.9999999532360555, -19.739171315085024, 64.93458093602057, -85.24007915837323,
                  56.24034662338018)


def _poly(u: torch.Tensor, coefficients: Sequence[float]) -> torch.Tensor:
    acc = u * coefficients[-1] + coefficients[-2]
    for c in reversed(coefficients[:-2]):
        acc = acc * u + c
    return acc


def _cos_sin_turns(turns: torch.Tensor, exact: bool, need_sin: bool = True):
    """(cos(2 pi t), sin(2 pi t) or None) for t in turns. Fast form: f = t - round(t) in [-1/2, 1/2] (exact),
    u = |f| - 1/4, then cos(2 pi t) = -sin(2 pi u) and sin(2 pi t) = sign(f) cos(2 pi u), polynomials in u."""
    if exact:
        theta = turns * (2.0 * math.pi)
        return theta.cos(), (theta.sin() if need_sin else None)
    f = turns - torch.round(turns)
    u = f.abs() - 0.25
    u2 = u * u
    cos = -(u * _poly(u2, _SIN_TURN_POLY))
    if not need_sin:
        return cos, None
    cos_u = _poly(u2, _COS_TURN_POLY)
    return cos, torch.where(f < 0, -cos_u, cos_u)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Kernels compute in float32 (float64 stays float64); inside the kernel so the conversion is fused."""
    return t if t.dtype == torch.float64 else t.float()


# The backward kernels multiply the input gradient by `row_ones` (rows, 1): a per-row operand keeps Inductor from
# flattening that pointwise loop, so it fuses with the per-row sums into one pass over the data (sin/cos computed
# once instead of twice).


def _fourier_forward_kernel(x, fundamental, phases, weights, grid):
    exact, xc = x.dtype == torch.float64, _upcast(x)
    # the argument in turns, (w x - phi) / (2 pi): the range reduction is then an exact subtraction
    frequency, offset = grid * (0.5 / math.pi), phases * (-0.5 / math.pi)
    y = torch.zeros_like(xc) + fundamental[0]
    for k in range(grid.shape[0]):
        y = y + weights[k] * _cos_sin_turns(xc * frequency[k] + offset[k], exact, need_sin=False)[0]
    return y.to(x.dtype)


def _fourier_backward_kernel(x_in, grad, row_ones, fundamental, phases, weights, grid):
    """(grad_x, sums) with sums = [sum g, then per term: sum g cos, sum g sin, sum g x sin] in float64."""
    exact, x, grad = x_in.dtype == torch.float64, _upcast(x_in), _upcast(grad)
    frequency, offset = grid * (0.5 / math.pi), phases * (-0.5 / math.pi)
    slope = torch.zeros_like(x)
    rows = [grad.sum(-1)]
    for k in range(grid.shape[0]):
        cos, sin = _cos_sin_turns(x * frequency[k] + offset[k], exact)
        slope = slope + (weights[k] * grid[k]) * sin
        grad_sin = grad * sin
        rows += [(grad * cos).sum(-1), grad_sin.sum(-1), (grad_sin * x).sum(-1)]
    return (-slope * grad * row_ones).to(x_in.dtype), torch.stack(rows).double().sum(-1)


def _max_affine_forward_kernel(x_in, slopes, intercepts, weights):
    """sum_j weights_j max_h(slopes_jh x + intercepts_jh) over the envelope lines h of each piece j."""
    x, y = _upcast(x_in), None
    for j in range(slopes.shape[0]):
        best = x * slopes[j, 0] + intercepts[j, 0]
        for h in range(1, slopes.shape[1]):
            best = torch.maximum(best, x * slopes[j, h] + intercepts[j, h])
        y = best * weights[j] if y is None else y + best * weights[j]
    return y.to(x_in.dtype)


def _max_affine_backward_kernel(x_in, grad, row_ones, first_slopes, breakpoints, steps, weights):
    """(grad_x, sums) with sums = [sum g, sum g x, then per piece j and breakpoint i: sum of g and of g x over
    x > breakpoints_ji], float64. The slope at x is first_slopes_j + sum_i steps_ji [x > breakpoints_ji]."""
    x, grad = _upcast(x_in), _upcast(grad)
    grad_x_prod = grad * x
    slope_map = torch.zeros_like(x)
    rows = [grad.sum(-1), grad_x_prod.sum(-1)]
    for j in range(breakpoints.shape[0]):
        slope = torch.zeros_like(x) + first_slopes[j]
        for i in range(breakpoints.shape[1]):
            right = x > breakpoints[j, i]
            slope = torch.where(right, slope + steps[j, i], slope)
            rows += [torch.where(right, grad, 0.0).sum(-1), torch.where(right, grad_x_prod, 0.0).sum(-1)]
        slope_map = slope_map + weights[j] * slope
    return (slope_map * grad * row_ones).to(x_in.dtype), torch.stack(rows).double().sum(-1)


def _polynomial_forward_kernel(x_in, monomial, lim):
    x = _upcast(x_in)
    u = x if lim is None else torch.tanh(x * 0.5) * lim
    y = u * monomial[-1] + monomial[-2] if monomial.shape[0] > 1 else torch.zeros_like(x) + monomial[0]
    for j in range(monomial.shape[0] - 3, -1, -1):
        y = y * u + monomial[j]
    return y.to(x_in.dtype)


def _polynomial_backward_kernel(x_in, grad, row_ones, monomial, lim):
    """(grad_x, sums) with sums = [sum g u^j for each j, then sum g p'(u) t if clamped], float64."""
    x, grad = _upcast(x_in), _upcast(grad)
    t = None if lim is None else torch.tanh(x * 0.5)
    u = x if t is None else t * lim
    rows, power = [grad.sum(-1)], grad
    for _ in range(1, monomial.shape[0]):
        power = power * u
        rows.append(power.sum(-1))
    n = monomial.shape[0] - 1
    derivative = torch.zeros_like(x) + monomial[n] * n
    for j in range(n - 1, 0, -1):
        derivative = derivative * u + monomial[j] * j
    grad_u = derivative * grad
    if t is None:
        return (grad_u * row_ones).to(x_in.dtype), torch.stack(rows).double().sum(-1)
    rows.append((grad_u * t).sum(-1))
    return (grad_u * (lim * 0.5) * (1.0 - t * t) * row_ones).to(x_in.dtype), torch.stack(rows).double().sum(-1)


_KERNELS: dict = {}


def _run_kernel(kernel: Callable, options: dict, *args):
    if torch.compiler.is_compiling():
        return kernel(*args)  # inside the user's torch.compile: traced into their graph, fused there
    compiled = _KERNELS.get(kernel)
    if compiled is None:
        compiled = _KERNELS[kernel] = torch.compile(kernel, options=options)
    try:
        return compiled(*args)
    except Exception as error:
        from torch._dynamo.exc import TorchDynamoException  # loaded by torch.compile by now

        if not isinstance(error, TorchDynamoException):
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(f"compiled activation kernel could not be built ({reason}); compiled=True needs "
                           f"torch.compile to work here (a C++ compiler on CPU, Triton on CUDA); use compiled=False "
                           f"or set_compiled_activations(False) for the eager functions") from error


_ROW_BLOCK = 4096


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """A `_dense` tensor's data as a (rows, columns) view in memory order: columns = gcd(numel, 4096), or the
    last dimension when that is wider, so per-row partial sums stay short in float32 and the row sums are added
    in float64."""
    n = x.numel()
    columns = math.gcd(n, _ROW_BLOCK)
    if columns < 256 and x.dim() and x.shape[-1] > columns:
        columns = x.shape[-1]
    return _rows_dynamic(_flat(x).view(n // columns, columns))


def _rows_dynamic(t: torch.Tensor) -> torch.Tensor:
    """One kernel for any number of rows (>= 2); fully dynamic shapes would lose the fusion of the loops."""
    if not torch.compiler.is_compiling():
        torch._dynamo.maybe_mark_dynamic(t, 0)
    return t


def _from_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `_as_rows`: the data back in ``like``'s shape and memory order."""
    if like.is_contiguous():
        return rows.view(like.shape)
    n, c, h, w = like.shape
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _CompiledFunction(torch.autograd.Function):
    """``y = kind.forward_kernel(x, ...)``; saves x and the parameters only, backward recomputes in one kernel.

    ``kind`` is one of the ``_Compiled*`` descriptions below: ``prepare`` turns the parameters into the kernels'
    arguments (in their compute dtype, float32 unless x is float64) and ``parameter_gradients`` maps the backward
    kernel's sums to the parameter gradients (then cast to each parameter's dtype).
    """

    @staticmethod
    def forward(ctx, kind, x, *params):
        x = _dense(x)
        ctx.kind = kind
        ctx.save_for_backward(x, *params)
        forward_args, ctx.backward_args, ctx.state = kind.prepare(params, _compute_dtype(x))
        y = _run_kernel(kind.forward_kernel, kind.options, _as_rows(x), *forward_args)
        return _from_rows(y, x)

    @staticmethod
    def backward(ctx, grad):
        x, *params = ctx.saved_tensors
        kind = ctx.kind
        rows = _as_rows(x)
        grad_rows = _rows_dynamic(_flat(_dense(grad, like=x)).view(rows.shape))
        row_ones = _rows_dynamic(rows.new_ones(rows.shape[0] if kind.fuse_rows else 1, 1, dtype=_compute_dtype(x)))
        grad_x, sums = _run_kernel(kind.backward_kernel, kind.options, rows, grad_rows, row_ones, *ctx.backward_args)
        grads = kind.parameter_gradients(sums, params, ctx.state)
        grad_x = _from_rows(grad_x, x) if ctx.needs_input_grad[1] else None
        grads = [g.to(p.dtype) if need else None for g, p, need in zip(grads, params, ctx.needs_input_grad[2:])]
        return (None, grad_x, *grads)


# FMA contraction (the kernels are chains of multiply-adds); CPU options, ignored elsewhere
_KERNEL_OPTIONS = {"cpp.enable_floating_point_contract_flag": "fast"}


class _CompiledFourier:
    """params: fundamental, phases, coefficients, grid, scale (constant)."""

    forward_kernel = staticmethod(_fourier_forward_kernel)
    backward_kernel = staticmethod(_fourier_backward_kernel)
    fuse_rows = True
    # room to fuse the 3 x degree + 1 per-row sums and the input gradient into one loop
    options = {**_KERNEL_OPTIONS, "cpp.max_horizontal_fusion_size": 64}

    @staticmethod
    def prepare(params, dtype):
        fundamental, phases, coefficients, grid, scale = params
        args = (fundamental.to(dtype), phases.to(dtype), (coefficients * scale).to(dtype), grid.to(dtype))
        return args, args, None

    @staticmethod
    def parameter_gradients(sums, params, state):
        fundamental, phases, coefficients, grid, scale = params
        weights = (coefficients * scale).double()
        per_term = sums[1:].view(-1, 3)
        return (sums[:1], per_term[:, 1] * weights, per_term[:, 0] * scale.double(),
                -per_term[:, 2] * weights, None)


class _CompiledMaxAffine:
    """params: slopes (pieces, lines), intercepts (pieces, lines), weights (pieces,) constant.

    Like the eager ``_MaxAffineFunction``, the upper envelope of each piece is found on the host from its few
    lines (one small sync per call), so the kernels see only the envelope: forward takes the max over its lines,
    backward masks by its breakpoints (the same tie rule as the eager function). Pieces with fewer breakpoints
    are padded with +inf ones; a kernel is compiled per envelope size (at most ``lines`` of them).
    """

    forward_kernel = staticmethod(_max_affine_forward_kernel)
    backward_kernel = staticmethod(_max_affine_backward_kernel)
    fuse_rows = False  # with this many masked sums, one fused loop measured slower than two
    options = _KERNEL_OPTIONS

    @staticmethod
    def prepare(params, dtype):
        slopes, intercepts, weights = params
        hulls = [_upper_envelope(s, c) for s, c in zip(slopes.detach().double().cpu().tolist(),
                                                        intercepts.detach().double().cpu().tolist())]
        size = max(len(hull) for hull, _ in hulls)
        index = torch.tensor([hull + hull[-1:] * (size - len(hull)) for hull, _ in hulls], device=slopes.device)
        line_slopes, line_intercepts = slopes.gather(1, index).to(dtype), intercepts.gather(1, index).to(dtype)
        breakpoints = torch.tensor([b + [math.inf] * (size - 1 - len(b)) for _, b in hulls],
                                   dtype=dtype, device=slopes.device).view(len(hulls), size - 1)
        # the padded lines repeat the last one: zero slope steps at the +inf breakpoints
        steps = line_slopes[:, 1:] - line_slopes[:, :-1]
        weights = weights.to(dtype)
        return ((line_slopes, line_intercepts, weights),
                (line_slopes[:, 0], breakpoints, steps, weights),
                (index, [len(hull) for hull, _ in hulls]))

    @staticmethod
    def parameter_gradients(sums, params, state):
        slopes, intercepts, weights = params
        index, sizes = state
        pieces, size = index.shape
        # tails[j, t, i]: sum over x right of breakpoint i - 1 (i = 0: everything); t = 0 for g, 1 for g x
        tails = torch.cat([sums[:2].view(1, 2, 1).expand(pieces, 2, 1),
                           sums[2:].view(pieces, size - 1, 2).transpose(1, 2)], 2)
        for j, n in enumerate(sizes):
            tails[j, :, n:] = 0.0  # past the piece's last real line
        per_line = (tails - torch.cat([tails[..., 1:], torch.zeros_like(tails[..., :1])], 2))
        per_line = per_line * weights.double().view(-1, 1, 1)
        grad_slopes = torch.zeros(slopes.shape, dtype=torch.float64, device=slopes.device)
        grad_intercepts = torch.zeros_like(grad_slopes)
        for j, n in enumerate(sizes):
            grad_intercepts[j, index[j, :n]] = per_line[j, 0, :n]
            grad_slopes[j, index[j, :n]] = per_line[j, 1, :n]
        return grad_slopes, grad_intercepts, None


class _CompiledPolynomial:
    """params: monomial coefficients, and the clamp limit when there is one."""

    forward_kernel = staticmethod(_polynomial_forward_kernel)
    backward_kernel = staticmethod(_polynomial_backward_kernel)
    fuse_rows = True
    options = _KERNEL_OPTIONS

    @staticmethod
    def prepare(params, dtype):
        args = (params[0].to(dtype), params[1].to(dtype) if len(params) > 1 else None)
        return args, args, None

    @staticmethod
    def parameter_gradients(sums, params, state):
        n = params[0].numel()
        return (sums[:n],) if len(params) == 1 else (sums[:n], sums[n])


def _compiled(kind, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
    return _CompiledFunction.apply(kind, x, *params)


# ----------------------------------------------------------------------------------------------------------------
# Fitting to a target activation
# ----------------------------------------------------------------------------------------------------------------

# (half-width of the fitting interval as a function of degree, number of grid points, Adam steps, Adam lr)
_FIT_SETTINGS = {
    HermiteActivation: (lambda n: math.sqrt(n), 512, 0, 0.0),
    FourierActivation: (lambda n: 2.0 * n, 256, 2000, 0.01),
    TropicalActivation: (lambda n: float(n), 256, 2000, 0.01),
    TropicalRationalActivation: (lambda n: float(n), 256, 2000, 0.01),
}


def _target_values(target: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = target(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            raise ValueError("act_init must map a 1-D tensor to a tensor of the same shape")
        (dy,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    return y.detach(), (torch.zeros_like(x) if dy is None else dy.detach())


def fit_activation(
        module: nn.Module,
        target: Callable[[torch.Tensor], torch.Tensor],
        *,
        half_width: float | None = None,
        num_points: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        cache_dir: str | None = None,
) -> float:
    """Fit ``module``'s coefficients in place to ``target`` (value and derivative); returns the final loss.

    The loss is ``mean((f - t)^2) + mean((f' - t')^2)`` on ``num_points`` evenly spaced points of
    ``[-half_width, half_width]`` (tropical activations fit the value only: their derivative is piecewise
    constant). Hermite is linear in its coefficients and is solved exactly by least squares (a learnable clamp
    is held at its current value); the others run ``steps`` Adam steps from the current parameters, in float64 on
    CPU. The result is deterministic. With ``cache_dir`` the fitted values are stored there as
    ``<class>-<degree>-<scheme>-<hash of target and settings>.pt`` and reused; nothing is written otherwise.
    """
    kind = type(module)
    if kind not in _FIT_SETTINGS:
        raise TypeError(f"fit_activation expects one of {[c.__name__ for c in _FIT_SETTINGS]}, got {kind.__name__}")
    width_fn, default_points, default_steps, default_lr = _FIT_SETTINGS[kind]
    half_width = width_fn(module.degree) if half_width is None else float(half_width)
    num_points = default_points if num_points is None else int(num_points)
    steps = default_steps if steps is None else int(steps)
    lr = default_lr if lr is None else float(lr)
    if half_width <= 0 or num_points < 2 or steps < 0 or lr < 0:
        raise ValueError("fit_activation needs half_width > 0, num_points >= 2, steps >= 0 and lr >= 0")

    cache_file = None
    if cache_dir is not None:
        key = f"{module._fit_signature()}|{target!r}|{half_width}|{num_points}|{steps}|{lr}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        cache_file = os.path.join(cache_dir, f"{module._fit_signature()}-{digest}.pt")
        if os.path.exists(cache_file):
            cached = torch.load(cache_file, map_location="cpu", weights_only=True)
            with torch.no_grad():
                for name, value in cached["parameters"].items():
                    module.get_parameter(name).copy_(value)
            return float(cached["loss"])

    work = _float64_copy(module)
    x = torch.linspace(-half_width, half_width, num_points, dtype=torch.float64)
    y, dy = _target_values(target, x)

    def loss_fn() -> torch.Tensor:
        value, deriv = work._fit_terms(x)
        loss = F.mse_loss(value, y)
        return loss if deriv is None else loss + F.mse_loss(deriv, dy)

    if kind is HermiteActivation:
        with torch.no_grad():
            # value and derivative are both linear in the coefficients: stack the two design matrices
            eye = torch.eye(module.degree + 1, dtype=torch.float64)
            columns = []
            for row in eye:
                work.coefficients.copy_(row)
                columns.append(torch.cat(work._fit_terms(x)))
            design = torch.stack(columns, 1)
            solution = torch.linalg.lstsq(design, torch.cat([y, dy]).unsqueeze(1)).solution.squeeze(1)
            work.coefficients.copy_(solution)
    else:
        if kind is FourierActivation:
            _fourier_least_squares_start(work, x, y, dy)
        params = [p for p in work.parameters()]
        optimizer = torch.optim.Adam(params, lr=lr)
        best = (float("inf"), None)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn()
            if loss.item() < best[0]:
                best = (loss.item(), [p.detach().clone() for p in params])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            if best[1] is not None and loss_fn().item() > best[0]:
                for p, value in zip(params, best[1]):
                    p.copy_(value)
    with torch.no_grad():
        final = float(loss_fn())
        fitted = {name: p.detach().clone() for name, p in work.named_parameters()}
        for name, value in fitted.items():
            module.get_parameter(name).copy_(value)
    if cache_file is not None:
        os.makedirs(cache_dir, exist_ok=True)
        torch.save({"parameters": {k: v.float() for k, v in fitted.items()}, "loss": final}, cache_file)
    return final


@torch.no_grad()
def _fourier_least_squares_start(work: "FourierActivation", x, y, dy) -> None:
    """Starting point for the Adam fit: harmonic frequencies k * w0, amplitudes and phases by least squares.

    For fixed frequencies the Fourier activation is linear in (fundamental, A_k, B_k) with
    ``c_k s_k cos(w_k x - phi_k) = A_k cos(w_k x) + B_k sin(w_k x)``; w0 is picked from a fixed grid of
    fractions of the base frequency of the fitting interval. Deterministic; a plain Adam run from the default
    init stalls because the frequencies barely move.
    """
    half_width = float(x.abs().max())
    k = torch.arange(1, work.degree + 1, dtype=torch.float64)
    scale = torch.tensor(work._scale, dtype=torch.float64)
    best = None
    for fraction in torch.linspace(0.05, 1.0, 20, dtype=torch.float64).tolist():
        w = k * (math.pi / half_width) * fraction
        z = x.unsqueeze(1) * w
        value = torch.cat([torch.ones_like(x).unsqueeze(1), z.cos(), z.sin()], 1)
        deriv = torch.cat([torch.zeros_like(x).unsqueeze(1), -w * z.sin(), w * z.cos()], 1)
        design, target = torch.cat([value, deriv]), torch.cat([y, dy]).unsqueeze(1)
        solution = torch.linalg.lstsq(design, target).solution.squeeze(1)
        loss = (design @ solution - target.squeeze(1)).pow(2).mean().item()
        if best is None or loss < best[0]:
            best = (loss, w, solution)
    _, w, solution = best
    a, b = solution[1:1 + work.degree], solution[1 + work.degree:]
    work.fundamental.copy_(solution[:1])
    work.grid.copy_(w)
    work.coefficients.copy_(torch.sqrt(a * a + b * b) / scale)
    work.phases.copy_(torch.atan2(b, a))


def _float64_copy(module: _OrthoActivation) -> _OrthoActivation:
    import copy

    work = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
    for cache in ("_basis_cache", "_scale_cache", "_slopes_cache", "_constants"):
        if hasattr(work, cache):
            setattr(work, cache, {})
    work.requires_grad_(True)
    return work


# ----------------------------------------------------------------------------------------------------------------
# Factory and helpers
# ----------------------------------------------------------------------------------------------------------------

ACTIVATION_CLASSES = {
    "hermite": HermiteActivation,
    "fourier": FourierActivation,
    "tropical": TropicalActivation,
    "tropical_rational": TropicalRationalActivation,
}
# the paper's settings (GPT-2: Hermite 3, Fourier 5; ConvNeXt: Hermite 3, Fourier 5, Tropical 5)
DEFAULT_DEGREES = {"hermite": 3, "fourier": 5, "tropical": 5, "tropical_rational": 6}


def create_activation(name: str, degree: int | None = None, **kwargs) -> nn.Module:
    """Build an activation by name (``hermite``, ``fourier``, ``tropical``, ``tropical_rational``)."""
    if name not in ACTIVATION_CLASSES:
        raise ValueError(f"unknown learnable activation {name!r}; expected one of {sorted(ACTIVATION_CLASSES)}")
    return ACTIVATION_CLASSES[name](DEFAULT_DEGREES[name] if degree is None else degree, **kwargs)


def activation_parameter_names(model: nn.Module) -> set[str]:
    """Names of every parameter that belongs to a learnable activation (for no-weight-decay groups)."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, _OrthoActivation):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + n for n, _ in module.named_parameters())
    return names
