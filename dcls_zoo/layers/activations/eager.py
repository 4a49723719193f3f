"""Eager autograd functions of the learnable activations, and the memory-layout helpers the kernels share.

Each function saves only its input and the few coefficients, and recomputes in backward what it needs, instead of
materialising ``(..., degree)`` tensors. On CPU they walk the data in cache-sized pieces, so their elementwise
passes stay in L2. Parameter gradients are sums over every element, added in float64 blocks (`_sum`).
"""
from __future__ import annotations

from typing import Sequence

import torch

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

