"""Spiking-neuron building blocks in pure torch: a multi-step LIF neuron with an ATan surrogate gradient.

Inputs are time-major, (T, B, ...), the layout of multi-step spiking simulators. The neuron dynamics per step
(hard reset to `v_reset`, `decay_input=False`, the form used by the SNN-delays networks) are::

    h[t] = v[t-1] - (v[t-1] - v_reset) / tau + x[t]          (charge)
    s[t] = H(h[t] - v_threshold)                              (fire; H(0) = 1)
    v[t] = s[t] * v_reset + (1 - s[t]) * h[t]                 (hard reset; s detached if detach_reset)

with v[-1] = 0: every forward starts from rest, and no state is kept between calls.
In backward, H' is replaced by the ATan surrogate ``alpha / 2 / (1 + (pi / 2 * alpha * x) ** 2)``.

The arithmetic follows spikingjelly's reference implementation operation by operation, so results agree with
``spikingjelly.activation_based.neuron.LIFNode(..., step_mode='m')`` bit for bit on CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["atan_spike", "lif_multi_step", "LIFNeuron", "TimeSharedDropout"]


class _ATanSpike(torch.autograd.Function):
    """Heaviside step forward, derivative of ``atan(pi / 2 * alpha * x) / pi`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        z = x * (math.pi / 2 * alpha)
        return grad_output * ((alpha / 2) / (1 + z * z)), None


def atan_spike(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Spike where ``x >= 0`` (float 0/1 in x's dtype), with the ATan surrogate gradient of width `alpha`."""
    return _ATanSpike.apply(x, alpha)


def lif_multi_step(
    x_seq: torch.Tensor,
    tau: float,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    detach_reset: bool = True,
    surrogate_alpha: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run LIF dynamics (hard reset, no input decay) over a time-major input (T, B, ...) from v = 0.

    Returns ``(spikes, v_seq)``, both shaped like `x_seq`; `v_seq` is the membrane potential after reset.
    """
    if x_seq.dim() < 2:
        raise ValueError(f"lif_multi_step expects a time-major input (T, B, ...), got shape {tuple(x_seq.shape)}")
    v = torch.zeros_like(x_seq[0])
    spikes, voltages = [], []
    for x in x_seq:
        h = v - (v - v_reset) / tau + x
        spike = atan_spike(h - v_threshold, surrogate_alpha)
        s = spike.detach() if detach_reset else spike
        v = s * v_reset + (1.0 - s) * h
        spikes.append(spike)
        voltages.append(v)
    return torch.stack(spikes), torch.stack(voltages)


class LIFNeuron(nn.Module):
    """Multi-step leaky integrate-and-fire neuron (hard reset, detached reset, ATan surrogate), no parameters.

    Args:
        tau: membrane time constant in time steps (> 1).
        v_threshold: firing threshold; a very large value (the SNN read-out uses 1e9) makes a non-spiking
            integrator whose membrane potential is the output.
        v_reset: reset potential after a spike.
        detach_reset: cut the gradient through the reset term.
        surrogate_alpha: width parameter of the ATan surrogate gradient.

    Input (T, B, ...) time-major. `forward` returns the spikes; `forward_with_potential` also returns the
    membrane potential sequence.
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float = 0.0,
        detach_reset: bool = True,
        surrogate_alpha: float = 2.0,
    ) -> None:
        super().__init__()
        if not tau > 1.0:
            raise ValueError(f"tau must be > 1 (in time steps), got {tau!r}")
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.v_reset = float(v_reset)
        self.detach_reset = detach_reset
        self.surrogate_alpha = float(surrogate_alpha)

    def forward_with_potential(self, x_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(spikes, membrane potentials), both (T, B, ...)."""
        return lif_multi_step(
            x_seq, self.tau, self.v_threshold, self.v_reset, self.detach_reset, self.surrogate_alpha)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.forward_with_potential(x_seq)[0]

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"detach_reset={self.detach_reset}, surrogate=ATan(alpha={self.surrogate_alpha})")


class TimeSharedDropout(nn.Module):
    """Dropout on a time-major sequence (T, B, ...) with one mask per sample and unit, shared by all time steps.

    This is the multi-step dropout of spiking simulators: a neuron that is dropped stays silent for the whole
    sequence. The mask is ``F.dropout(ones_like(x[0]), p)`` (scaled by 1 / (1 - p)), drawn fresh per forward.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x_seq
        mask = F.dropout(torch.ones_like(x_seq[0]), self.p, training=True)
        return x_seq * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
