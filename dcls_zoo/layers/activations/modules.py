"""The learnable activation modules: Hermite, Fourier, tropical and tropical-rational.

`_OrthoActivation` owns what the four share: argument checks, parameter creation, init and reset, the forward
dispatch (plain autograd ops under TorchScript, else the compiled kernels or the eager functions), a per-device
cache of small constant tensors, loading torchortho state dicts, and the hooks `fit_activation` uses. A subclass
declares its parameters, its initial values and its three evaluations (compiled, eager, plain).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .eager import _FourierFunction, _max_affine, _PolynomialFunction
from .fitting import fit_activation
from .kernels import _compiled, _CompiledFourier, _CompiledMaxAffine, _CompiledPolynomial, compiled_activations

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


def _check_compiled(compiled) -> bool | None:
    if compiled is not None and not isinstance(compiled, bool):
        raise TypeError(f"compiled must be True, False or None (the global default), got {compiled!r}")
    return compiled


def _check_input(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} expects a floating-point tensor, got {got}")


class LearnableClamp(nn.Module):
    """Smooth clamp ``lim_val * tanh(x / 2)`` (= ``(sigmoid(x) - 0.5) * 2 * lim_val``, torchortho's form)."""

    def __init__(self, init_lim: float = math.sqrt(3.0), device=None, dtype=None):
        super().__init__()
        self.init_lim = init_lim
        self.lim_val = nn.Parameter(torch.full((), init_lim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * 0.5) * self.lim_val.to(x.dtype)


class _OrthoActivation(nn.Module):
    """What the learnable activations share. A subclass's ``__init__`` calls this one, ``_create_parameters``, adds
    its own state, then calls ``_initialise``."""

    # torchortho buffers that carry no information we need; accepted (and checked) when loading its state dicts
    _reference_buffers: tuple[str, ...] = ()
    # the (torchortho-named) parameter whose size tells the degree, and size - degree
    _degree_parameter: tuple[str, int] = ("coefficients", 1)
    # fit_activation's defaults: grid points, Adam steps, Adam lr (the interval: `_fit_half_width`)
    _fit_defaults: tuple[int, int, float] = (256, 2000, 0.01)

    def __init__(self, degree: int, scheme: str, compiled: bool | None):
        super().__init__()
        self.degree = _check_degree(degree)
        self.scheme = _check_scheme(scheme)
        self.compiled = _check_compiled(compiled)

    def _create_parameters(self, sizes: dict[str, int], requires_grad: bool, device=None, dtype=None) -> None:
        """Uninitialised 1-D parameters, in this order (``_initialise`` fills them)."""
        for name, size in sizes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(size, device=device, dtype=dtype),
                                                       requires_grad=requires_grad))

    def _initialise(self, act_init: Callable[[torch.Tensor], torch.Tensor] | None, fit_cache_dir: str | None) -> None:
        """The default init, then the optional fit to ``act_init``; called once the module is complete."""
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

    @classmethod
    def degree_from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> int | None:
        """The degree a state dict of this activation (own or torchortho keys, no prefix) was saved with, or None
        when its sizing parameter is missing."""
        name, extra = cls._degree_parameter
        return state_dict[name].numel() - extra if name in state_dict else None

    # -- forward ------------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_plain(x)
        return self._forward_fused(x)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, type(self).__name__)
        if self._use_compiled(x):
            return self._forward_compiled(x)
        return self._forward_eager(x)

    def _forward_compiled(self, x: torch.Tensor) -> torch.Tensor:
        """The two torch.compile'd kernels (`kernels.py`)."""
        raise NotImplementedError

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The eager autograd functions (`eager.py`)."""
        raise NotImplementedError

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """Plain autograd ops (TorchScript); same function, saves more for backward."""
        raise NotImplementedError

    def _use_compiled(self, x: torch.Tensor) -> bool:
        """``compiled`` (or the global default when None), for tensors with data."""
        compiled = getattr(self, "compiled", None)
        if compiled is None:
            # the default never compiles under torch.jit.trace (the trace records the eager ops instead)
            compiled = not torch.jit.is_tracing() and compiled_activations(x.device.type)
        return compiled and x.numel() > 0 and not x.is_meta

    def _constant(self, name: str, values: Sequence, like: torch.Tensor) -> torch.Tensor:
        """A small constant tensor on ``like``'s device and dtype, made once per device and dtype."""
        cache = self.__dict__.setdefault("_constants", {})
        key = (name, like.device, like.dtype)
        if key not in cache:
            cache[key] = torch.tensor(values, device=like.device, dtype=like.dtype)
        return cache[key]

    # -- torchortho state dicts ---------------------------------------------------------------------------------

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

    # -- fit_activation's hooks ---------------------------------------------------------------------------------

    def _fit_half_width(self) -> float:
        """Half-width of the default fitting interval."""
        return float(self.degree)

    def _fit_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Differentiable (value, derivative or None) on a small fitting grid."""
        raise NotImplementedError

    def _fit_start(self, x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor) -> bool:
        """Move the float64 working copy to a starting point for Adam; True when that already is the solution."""
        return False

    def _fit_signature(self) -> str:
        return f"{type(self).__name__}-{self.degree}-{self.scheme}"


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


class HermiteActivation(_OrthoActivation):
    """``y = sum_{k=0..degree} a_k He_k(u) / k!`` with ``u = x`` or a learnable clamp of x.

    Default init (torchortho 0.1.2): ``a_0 = sqrt(1 - 1/degree!) / sqrt(e)``, ``a_k = 1 / sqrt(e)`` -- the
    truncated series of ``exp(x - 1)``; for x ~ N(0, 1), ``E[y^2] = E[y'^2] = e^-1 sum_{k<degree} 1/k!``.
    ``scheme="legacy"``: basis ``He_k / sqrt(k!)``, ``a_0 = 0.66549 sqrt(6)/pi``, ``a_k = sqrt(6)/pi / k^1.5``.
    """

    _reference_buffers = ("coeffs", "grid", "normalization_term")
    # linear in its coefficients: fit_activation solves exactly (no Adam steps)
    _fit_defaults = (512, 0, 0.0)

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
        self._create_parameters({"coefficients": degree + 1}, requires_grad, device, dtype)
        self.clamp = LearnableClamp(math.sqrt(3.0), device=device, dtype=dtype) if clamp else None
        self._basis = hermite_to_monomial(degree, scheme)
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

    def monomial_coefficients(self) -> torch.Tensor:
        """Coefficients of the same polynomial in powers of u (lowest first); differentiable."""
        return self.coefficients @ self._constant("basis", self._basis, self.coefficients)

    def _forward_compiled(self, x: torch.Tensor) -> torch.Tensor:
        lim = [] if self.clamp is None else [self.clamp.lim_val]
        return _compiled(_CompiledPolynomial, x, self.monomial_coefficients(), *lim)

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        lim = None if self.clamp is None else self.clamp.lim_val
        return _PolynomialFunction.apply(x, self.monomial_coefficients(), lim)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
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

    def _fit_half_width(self) -> float:
        return math.sqrt(self.degree)

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

    @torch.no_grad()
    def _fit_start(self, x, y, dy) -> bool:
        # value and derivative are both linear in the coefficients (a learnable clamp is held at its current
        # value): least squares on the two stacked design matrices
        eye = torch.eye(self.degree + 1, dtype=torch.float64)
        columns = []
        for row in eye:
            self.coefficients.copy_(row)
            columns.append(torch.cat(self._fit_terms(x)))
        design = torch.stack(columns, 1)
        solution = torch.linalg.lstsq(design, torch.cat([y, dy]).unsqueeze(1)).solution.squeeze(1)
        self.coefficients.copy_(solution)
        return True

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
    _degree_parameter = ("phases", 0)

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
        self._create_parameters({"fundamental": 1, "phases": degree, "coefficients": degree, "grid": degree},
                                requires_grad, device, dtype)
        if scheme == "default":
            self._scale = [1.0 / math.factorial(k) for k in range(1, degree + 1)]
        else:
            self._scale = [1.0] * degree
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
        return self._constant("scale", self._scale, like)

    def _parameters_with_scale(self) -> tuple[torch.Tensor, ...]:
        return (self.fundamental, self.phases, self.coefficients, self.grid, self._scale_tensor(self.coefficients))

    def _forward_compiled(self, x: torch.Tensor) -> torch.Tensor:
        return _compiled(_CompiledFourier, x, *self._parameters_with_scale())

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        return _FourierFunction.apply(x, *self._parameters_with_scale())

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(self._scale, dtype=self.coefficients.dtype, device=self.coefficients.device)
        z = x.unsqueeze(-1) * self.grid.to(x.dtype) - self.phases.to(x.dtype)
        return (z.cos() * (self.coefficients * scale).to(x.dtype)).sum(-1) + self.fundamental.to(x.dtype)

    def _fit_half_width(self) -> float:
        return 2.0 * self.degree

    def _fit_terms(self, x):
        z = x.unsqueeze(-1) * self.grid - self.phases
        weights = self.coefficients * self._scale_tensor(self.coefficients)
        value = (z.cos() * weights).sum(-1) + self.fundamental
        deriv = -(z.sin() * weights * self.grid).sum(-1)
        return value, deriv

    @torch.no_grad()
    def _fit_start(self, x, y, dy) -> bool:
        """Harmonic frequencies k * w0, amplitudes and phases by least squares.

        For fixed frequencies the Fourier activation is linear in (fundamental, A_k, B_k) with
        ``c_k s_k cos(w_k x - phi_k) = A_k cos(w_k x) + B_k sin(w_k x)``; w0 is picked from a fixed grid of
        fractions of the base frequency of the fitting interval. Deterministic; a plain Adam run from the default
        init stalls because the frequencies barely move.
        """
        half_width = float(x.abs().max())
        k = torch.arange(1, self.degree + 1, dtype=torch.float64)
        scale = torch.tensor(self._scale, dtype=torch.float64)
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
        a, b = solution[1:1 + self.degree], solution[1 + self.degree:]
        self.fundamental.copy_(solution[:1])
        self.grid.copy_(w)
        self.coefficients.copy_(torch.sqrt(a * a + b * b) / scale)
        self.phases.copy_(torch.atan2(b, a))
        return False

    def _check_reference_buffer(self, name, value):
        if reference_scheme({name: value}) != self.scheme:
            raise ValueError("checkpoint has torchortho 0.1.2's Fourier normalization_term (1/k! weights) but this "
                             "FourierActivation has scheme='legacy'; build it with scheme='default'")

    def extra_repr(self) -> str:
        return f"degree={self.degree}, scheme={self.scheme!r}"


# ----------------------------------------------------------------------------------------------------------------
# Tropical (max of affine functions)
# ----------------------------------------------------------------------------------------------------------------


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
        self._create_parameters({"coefficients": degree + 1}, requires_grad, device, dtype)
        self.gain = math.sqrt(2.0) / degree if scheme == "default" else 1.0
        self._initialise(act_init, fit_cache_dir)

    def initial_parameters(self) -> dict[str, torch.Tensor]:
        return {"coefficients": torch.ones(self.degree + 1, dtype=torch.float64)}

    def _slopes(self, like: torch.Tensor) -> torch.Tensor:
        return self._constant("slopes", list(range(self.degree + 1)), like)

    def _forward_compiled(self, x: torch.Tensor) -> torch.Tensor:
        return _compiled(_CompiledMaxAffine, x, self._slopes(self.coefficients).view(1, -1),
                         self.coefficients.view(1, -1), self._constant("gain", [self.gain], self.coefficients))

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        return _max_affine(x, self._slopes(self.coefficients), self.coefficients, self.gain)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
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

    _degree_parameter = ("powers_num", 1)
    _parameter_names = ("powers_num", "powers_denom", "coefficients_num", "coefficients_denom")

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
        self._create_parameters({name: degree + 1 for name in self._parameter_names}, requires_grad, device, dtype)
        self._initialise(act_init, fit_cache_dir)

    def initial_parameters(self) -> dict[str, torch.Tensor]:
        n = self.degree + 1
        # float32 draws in torchortho's order, so the same seed gives the same init
        return {name: torch.randn(n).double() for name in self._parameter_names}

    def _forward_compiled(self, x: torch.Tensor) -> torch.Tensor:
        return _compiled(_CompiledMaxAffine, x, torch.stack([self.powers_num, self.powers_denom]),
                         torch.stack([self.coefficients_num, self.coefficients_denom]),
                         self._constant("signs", [1.0, -1.0], self.powers_num))

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        return (_max_affine(x, self.powers_num, self.coefficients_num, 1.0)
                - _max_affine(x, self.powers_denom, self.coefficients_denom, 1.0))

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
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
