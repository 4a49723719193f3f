"""Spiking neural networks with learnable synaptic delays (SHD, SSC, GSC).

Paper: Hammouamri, Khalfaoui-Hassani, Masquelier, "Learning Delays in Spiking Neural Networks using Dilated
Convolutions with Learnable Spacings", ICLR 2024, arXiv:2306.17670. Original code:
https://github.com/Thvnvtos/SNN-delays (no released checkpoints).

A feed-forward LIF network in which every synapse (input i -> neuron o) has a weight and a learnable delay. The
delays of a layer are one `Dcls1d` (kernel_count 1, Gaussian interpolation) over time: the kernel of synapse
(o, i) is a normalised Gaussian bump of height w[o, i] centred at position P[o, i], i.e. a (soft) delay of
``max_delay // 2 - P`` steps. Each hidden layer::

    x (T, B, C_in) -> causal pad (max_delay - 1 left, (max_delay - 1) // 2 right) -> Dcls1d -> BatchNorm1d
                   -> LIF (hard reset, detached reset, ATan surrogate) -> dropout (mask shared over time)

The read-out is a Dcls1d to the classes followed by a LIF neuron that never fires (threshold 1e9); its membrane
potential sequence v (T_out = T + 3 * ((max_delay - 1) // 2) steps for 2 hidden layers) is the network output,
and the class scores are ``sum_t softmax(v_t)`` (the original's 'sum' read-out). Train with cross-entropy on these
scores (``nn.CrossEntropyLoss()(model(x), y)`` reproduces the original loss).

Input: (B, T, 140) (or (B, 1, T, 140), timm's (C, H, W) convention): binned spike counts (SHD/SSC, see
`dcls_zoo.data.spikes`) or 140 log-mel frames (GSC).

Training pieces:
    * optimizer groups: `model.dcls_parameter_groups(position_lr_scale=100)` (the original's: positions at 100 x
      lr, no decay; the widths SIG are frozen and left out), as the `snn-delays-shd` training preset does.
    * the positions are clamped to the grid before every forward (`enable_position_clamp`), i.e. after every
      optimizer step as in the original; `model.clamp_parameters()` clamps on demand.
    * `SigmaSchedule(model, epochs)`: ``.step(epoch)`` after every epoch (exponential decay of SIG to 0.23 over
      the first quarter of training).
    * `rounded_delays(model)`: context manager for validation in the original's inference mode, restoring the
      training state afterwards. `convert_delays_for_inference(model)` does the same permanently.
    * `export_integer_delays(model)`: per-layer integer delays and weights per synapse (rounded models).
"""
from __future__ import annotations

import contextlib
from contextlib import nullcontext
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_device_dtype
from timm.models import generate_default_cfgs, register_model
from ._timm_private import feature_take_indices
from torch.utils.checkpoint import checkpoint

from ..layers.dcls import Dcls1d, DclsModelMixin, enable_position_clamp
from ..layers.input_checks import autocast_accepts, input_owner
from ..layers.spiking import LIFNeuron, TimeSharedDropout
from ._builder import build_zoo_model, zoo_checkpoint_filter

__all__ = [
    "SnnDelays", "SynapticDelay", "SigmaSchedule", "rounded_delays", "convert_delays_for_inference",
    "export_integer_delays", "checkpoint_filter_fn",
]

SIGMA_FINAL = 0.23          # the schedule stops once SIG reaches this (effective std SIG + 0.27 = 0.5 steps)
_ROUNDED_NORM_EPS = 1e-7    # normaliser epsilon of the reference kernels (sum + eps)
_GAUSS_SIGMA_FLOOR = 0.27   # Gaussian std = |SIG| + 0.27 (dcls 0.1.1)


def _reference_gauss_delay_kernel(
    weight: torch.Tensor, P: torch.Tensor, SIG: torch.Tensor, max_delay: int
) -> torch.Tensor:
    """1-D Gaussian DCLS kernel (O, I, L) in dcls 0.1.1's operation order and (L, O, I, K) layout (bit-exact)."""
    grid = torch.arange(max_delay, device=P.device, dtype=P.dtype).view(max_delay, 1, 1, 1)
    x = ((grid - (P[0] + max_delay // 2)) / (SIG[0].abs() + _GAUSS_SIGMA_FLOOR)).abs()
    x = torch.exp(-0.5 * x ** 2)
    x = x / (x.sum(0) + _ROUNDED_NORM_EPS)
    return (x * weight).sum(-1).permute(1, 2, 0)


class SynapticDelay(Dcls1d):
    """Fully connected synapses with one learnable delay each: a causal `Dcls1d` (kernel_count 1, gauss, no bias).

    Input and output are (B, C, T); the output has ``T + (max_delay - 1) // 2`` steps (causal left padding of
    ``max_delay - 1`` and ``(max_delay - 1) // 2`` extra steps on the right, as in the original). Synapse (o, i)
    delays its input by ``max_delay // 2 - P[0, o, i, 0]`` steps (0 ... max_delay - 1).

    With the persistent buffer `rounded` set (see `convert_delays_for_inference`), the kernel is one-hot at the
    rounded position: the reference evaluates its trained networks this way (DCLS 'max' version with SIG = 0).
    """

    def __init__(self, in_features: int, out_features: int, max_delay: int, device=None, dtype=None) -> None:
        if not isinstance(max_delay, int) or max_delay < 1:
            raise ValueError(f"max_delay must be an int >= 1 (time steps), got {max_delay!r}")
        super().__init__(
            in_features, out_features, kernel_count=1, dilated_kernel_size=max_delay, bias=False, version="gauss",
            device=device, dtype=dtype,
        )
        self.max_delay = max_delay
        self.register_buffer("rounded", torch.zeros((), dtype=torch.bool, device=device))

    @property
    def padding_left_right(self) -> tuple[int, int]:
        return self.max_delay - 1, (self.max_delay - 1) // 2

    def construct_kernel(self) -> torch.Tensor:
        """The delay kernel (out, in, max_delay): rounded one-hot, or the Gaussian built in dcls 0.1.1's order.

        `Dcls1d` builds the same Gaussian kernel with a separable contraction whose float rounding differs from
        the reference by ~1e-9. A spiking network turns such differences into occasional flipped spikes (about one
        per million neuron-steps at SHD scale, after which membrane potentials diverge), so this layer performs the
        reference's operations in the reference's order and layout, which reproduces its spike trains exactly.
        """
        if bool(self.rounded):
            return self.rounded_kernel()
        device_type = self.weight.device.type
        no_autocast = torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else nullcontext()
        with no_autocast:
            if torch.is_grad_enabled() and (self.weight.requires_grad or self.P.requires_grad):
                # (L, O, I, 1) intermediates are large for 512x512 layers: recompute them in backward instead.
                return checkpoint(_reference_gauss_delay_kernel, self.weight, self.P, self.SIG, self.max_delay,
                                  use_reentrant=False, preserve_rng_state=False)
            return _reference_gauss_delay_kernel(self.weight, self.P, self.SIG, self.max_delay)

    def rounded_kernel(self) -> torch.Tensor:
        """One-hot kernel (O, I, max_delay) at ``round(P) + max_delay // 2``, weighted as the reference does."""
        index = (torch.round(self.P[0, :, :, 0]) + self.max_delay // 2).long().clamp_(0, self.max_delay - 1)
        one_hot = F.one_hot(index, self.max_delay).to(self.weight.dtype)
        # The reference normalises the interpolation weights (sum + eps) before scaling by the weight.
        one_hot = one_hot / (one_hot.sum(-1, keepdim=True) + _ROUNDED_NORM_EPS)
        return one_hot * self.weight

    def integer_delays(self) -> torch.Tensor:
        """Delay of every synapse in time steps, (out_features, in_features) int64, from the rounded positions."""
        return (self.max_delay // 2 - torch.round(self.P[0, :, :, 0].detach())).long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.padding_left_right, "constant", 0.0))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_delay={self.max_delay}"


class SpikingDelayBlock(nn.Module):
    """Hidden layer: synaptic delays -> BatchNorm1d -> LIF -> time-shared dropout. Time-major (T, B, C) in/out."""

    def __init__(
        self, in_features: int, out_features: int, max_delay: int, tau: float, v_threshold: float,
        surrogate_alpha: float, drop_rate: float, device=None, dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.delay = SynapticDelay(in_features, out_features, max_delay, **dd)
        self.norm = nn.BatchNorm1d(out_features, eps=1e-5, momentum=0.1, **dd)
        self.lif = LIFNeuron(tau=tau, v_threshold=v_threshold, detach_reset=True, surrogate_alpha=surrogate_alpha)
        self.drop = TimeSharedDropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.delay(x.permute(1, 2, 0))          # (T, B, C) -> (B, C, T) -> (B, C', T')
        x = x.permute(2, 0, 1)                      # (T', B, C')
        t, b = x.shape[:2]
        # BatchNorm over T'*B samples per channel (the multi-step BatchNorm of the original), on the same
        # (T'*B, C, 1) layout so the batch statistics are reduced in the same order.
        x = self.norm(x.flatten(0, 1).unsqueeze(-1)).reshape(t, b, self.norm.num_features)
        return self.drop(self.lif(x))


class DelayReadout(nn.Module):
    """Read-out: synaptic delays to the classes and a non-spiking LIF integrator; returns v (T, B, classes)."""

    def __init__(
        self, in_features: int, num_classes: int, max_delay: int, tau: float, surrogate_alpha: float = 5.0,
        device=None, dtype=None,
    ) -> None:
        super().__init__()
        self.delay = SynapticDelay(in_features, num_classes, max_delay, device=device, dtype=dtype)
        self.lif = LIFNeuron(tau=tau, v_threshold=1e9, detach_reset=True, surrogate_alpha=surrogate_alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.delay(x.permute(1, 2, 0)).permute(2, 0, 1)
        return self.lif.forward_with_potential(x)[1]


class SnnDelays(DclsModelMixin, nn.Module):
    """Feed-forward LIF network with learnable synaptic delays (DCLS-1D), timm-style.

    Args:
        num_inputs: input features per time step (140: 700 SHD/SSC channels binned by 5, or 140 mel bands).
        num_classes: classes of the read-out (0: no read-out; `forward` then returns mean hidden firing rates).
        hidden_sizes: widths of the hidden LIF layers.
        max_delay: delay kernel length in time steps (odd); delays range over 0 ... max_delay - 1.
        tau: membrane time constant in time steps.
        v_threshold: firing threshold of the hidden neurons.
        surrogate_alpha: ATan surrogate width (5 in the original).
        drop_rate: dropout on hidden spikes (mask shared over time).
        sigma_init: initial SIG of the Gaussian delay kernels (default max_delay // 2).
        rounded_delays: build the model in inference mode (one-hot delays; see `convert_delays_for_inference`).
        in_chans, img_size: timm's image arguments. The input is a single (time x features) plane, so in_chans
            must be 1; img_size (time, features), if given, must have num_inputs features (any length works).

    Input (B, T, num_inputs), or (B, 1, T, num_inputs) as timm's (C, H, W) convention has it; output
    (B, num_classes) class scores ``sum_t softmax(v_t)``. The membrane potentials are `forward_potentials(x)` ->
    (B, T_out, num_classes).
    """

    def __init__(
        self,
        num_inputs: int = 140,
        num_classes: int = 20,
        hidden_sizes: Sequence[int] = (256, 256),
        max_delay: int = 25,
        tau: float = (10.05 + 1e-9) / 10,
        v_threshold: float = 1.0,
        surrogate_alpha: float = 5.0,
        drop_rate: float = 0.4,
        sigma_init: Optional[float] = None,
        rounded_delays: bool = False,
        in_chans: int = 1,
        img_size: Optional[Tuple[int, int]] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if not hidden_sizes:
            raise ValueError("hidden_sizes must list at least one hidden layer width")
        if in_chans != 1:
            raise ValueError(
                f"SnnDelays takes one (time x features) input plane, so in_chans must be 1, got {in_chans}")
        if img_size is not None and tuple(img_size)[-1] != num_inputs:
            raise ValueError(f"img_size (time, features) = {tuple(img_size)} does not have num_inputs={num_inputs} "
                             "features")
        self.in_chans = in_chans
        self.num_inputs = num_inputs
        self.num_classes = num_classes
        self.hidden_sizes = tuple(hidden_sizes)
        self.max_delay = max_delay
        self.tau = tau
        self.surrogate_alpha = surrogate_alpha
        self.drop_rate = drop_rate
        self.sigma_init = float(max_delay // 2 if sigma_init is None else sigma_init)
        self.num_features = self.head_hidden_size = self.hidden_sizes[-1]
        self.grad_checkpointing = False

        widths = (num_inputs, *self.hidden_sizes)
        self.blocks = nn.ModuleList([
            SpikingDelayBlock(widths[i], widths[i + 1], max_delay, tau, v_threshold, surrogate_alpha, drop_rate, **dd)
            for i in range(len(self.hidden_sizes))
        ])
        self.feature_info = [
            dict(num_chs=w, reduction=1, module=f"blocks.{i}") for i, w in enumerate(self.hidden_sizes)]
        self.head = self._make_head(num_classes, **dd)
        self.init_weights()
        if rounded_delays:
            convert_delays_for_inference(self)
        enable_position_clamp(self)   # delays clamped before every forward: any training loop follows the paper

    def _make_head(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return DelayReadout(
            self.num_features, num_classes, self.max_delay, self.tau, self.surrogate_alpha, device=device, dtype=dtype)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The original's initialisation: Kaiming-uniform (ReLU) weights, positions U(-(L // 2) - (L odd), L // 2)
        clamped to ±(L // 2) (Python's floor of -L / 2), SIG = sigma_init and frozen (it follows a schedule)."""
        for layer in self.delay_layers():
            self._init_delay(layer)

    def _init_delay(self, layer: SynapticDelay) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            nn.init.uniform_(layer.P, -self.max_delay // 2, self.max_delay // 2)
            layer.clamp_parameters()
            layer.SIG.fill_(self.sigma_init)
        layer.SIG.requires_grad_(False)

    def delay_layers(self) -> List[SynapticDelay]:
        return [m for m in self.modules() if isinstance(m, SynapticDelay)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^blocks\.0\.", blocks=r"^blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New read-out for `num_classes` (initialised like the original; keeps device, dtype, rounding mode)."""
        if global_pool is not None and global_pool not in ("", "avg"):
            raise ValueError(f"SnnDelays pools by the mean firing rate over time only, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.head = self._make_head(num_classes, **get_device_dtype(self))
        if isinstance(self.head, DelayReadout):
            self._init_delay(self.head.delay)
            if any(bool(layer.rounded) for layer in self.blocks_delay_layers()):
                convert_delays_for_inference(self.head)
        self.head.train(self.training)

    def blocks_delay_layers(self) -> List[SynapticDelay]:
        return [blk.delay for blk in self.blocks]


    # -------------------------------------------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as (B, T, F) in the model's dtype, or one line saying what the model takes.

        Spike counts often come as bool or integer tensors (event-camera / spikingjelly frames): those are
        converted exactly (counts < 2**24 in float32). Floating-point input must already have the model's dtype
        (no silent precision change) and be finite: NaN would otherwise come out as finite class scores, since a
        NaN membrane potential never crosses the threshold.
        """
        expected = (f"spikes (batch, time, {self.num_inputs}) or (batch, 1, time, {self.num_inputs}) in the model's "
                    f"dtype ({self.blocks[0].delay.weight.dtype}; bool / integer counts are converted)")
        what = input_owner(self)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} takes {expected}, got {type(x).__name__}")
        if x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 3 or x.shape[-1] != self.num_inputs or x.shape[1] == 0:
            raise ValueError(f"{what} takes {expected}, got shape {tuple(x.shape)}"
                             + ("; add the batch dimension with x.unsqueeze(0)" if x.dim() == 2 else ""))
        dtype = self.blocks[0].delay.weight.dtype
        if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex()):
            return x.to(dtype)
        if x.dtype != dtype and not autocast_accepts(x, dtype):
            raise TypeError(f"{what} takes {expected}, got {x.dtype}: pass x.to({dtype}) or convert the model "
                            f"(model.to({x.dtype}))")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what} takes finite spike counts, got NaN or infinite values in the input")
        return x

    def _time_major(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) or (B, 1, T, F) -> (T, B, F), the simulators' layout (a view for input in the model's dtype)."""
        return self._check_input(x).transpose(0, 1)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NLC",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Hidden spike trains (B, T_i, C_i) of the selected hidden layers; `norm` is unused."""
        if output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NLC' (batch, time, channels), got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        x = self._time_major(x)
        for i, block in enumerate(blocks):
            x = self._run_block(block, x)
            if i in take_indices:
                intermediates.append(x.transpose(0, 1))
        if intermediates_only:
            return intermediates
        return x.transpose(0, 1), intermediates

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes of the last hidden layer, (B, T', hidden)."""
        x = self._time_major(x)
        for block in self.blocks:
            x = self._run_block(block, x)
        return x.transpose(0, 1)

    def forward_potentials(self, x: torch.Tensor) -> torch.Tensor:
        """Membrane potentials of the read-out neurons, (B, T_out, num_classes)."""
        if not isinstance(self.head, DelayReadout):
            raise ValueError("forward_potentials needs a read-out layer (num_classes > 0)")
        return self.head(self.forward_features(x).transpose(0, 1)).transpose(0, 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Hidden spikes (B, T', hidden) -> class scores sum_t softmax(v_t); pre_logits: mean firing rates."""
        if pre_logits or not isinstance(self.head, DelayReadout):
            return x.mean(1)
        v = self.head(x.transpose(0, 1))             # (T_out, B, classes)
        return v.softmax(dim=-1).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------------ training helpers

class SigmaSchedule:
    """Per-epoch exponential decay of the Gaussian delay widths, as in the original.

    After epoch `e` (0-based), if ``e < final_epoch`` and SIG > 0.23, every SIG is multiplied by
    ``(0.23 / sigma_init) ** (1 / final_epoch)``; SIG thus reaches 0.23 after `final_epoch` epochs.

    Args:
        model: any module holding `Dcls1d` layers (all share one sigma).
        epochs: total training epochs; ``final_epoch = epochs // 4`` unless given.
        sigma_init: SIG at the start of training (default: the model's `sigma_init`, else its current SIG).
    """

    def __init__(
        self, model: nn.Module, epochs: int, final_epoch: Optional[int] = None, sigma_init: Optional[float] = None,
    ) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, Dcls1d) and m.SIG is not None]
        if not self.layers:
            raise ValueError("SigmaSchedule: the model has no Dcls1d layer with a SIG parameter")
        self.final_epoch = epochs // 4 if final_epoch is None else final_epoch
        if sigma_init is None:  # the model's initial width, not the current one (which may be mid-schedule)
            sigma_init = getattr(model, "sigma_init", None) or self.sigma
        self.sigma_init = float(sigma_init)
        self.factor = (SIGMA_FINAL / self.sigma_init) ** (1 / self.final_epoch) if self.final_epoch > 0 else 1.0

    @property
    def sigma(self) -> float:
        sig = self.layers[-1].SIG.detach()
        if hasattr(sig, "full_tensor"):  # an FSDP2-sharded DTensor: a rank's shard may be empty (collective call)
            sig = sig.full_tensor()
        return float(sig.flatten()[0])

    @torch.no_grad()
    def step(self, epoch: int) -> None:
        """Call once after training epoch `epoch` (0-based)."""
        if epoch < self.final_epoch and self.sigma > SIGMA_FINAL:
            for layer in self.layers:
                layer.SIG.mul_(self.factor)

    def state_dict(self) -> dict:
        return {"final_epoch": self.final_epoch, "sigma_init": self.sigma_init, "factor": self.factor}

    def load_state_dict(self, state: dict) -> None:
        self.final_epoch, self.sigma_init, self.factor = state["final_epoch"], state["sigma_init"], state["factor"]


@torch.no_grad()
def convert_delays_for_inference(model: nn.Module) -> nn.Module:
    """Switch every `SynapticDelay` of `model` to the original's inference mode, in place; returns `model`.

    SIG <- 0, P <- round(P) (half to even) clamped to the grid, and the kernel becomes one-hot at the rounded
    position (exactly the reference's DCLS 'max' kernel with SIG = 0). Delays are then whole time steps, see
    `export_integer_delays`. The mode is stored in each layer's `rounded` buffer, so it survives state dicts.
    """
    for layer in model.modules():
        if isinstance(layer, SynapticDelay):
            layer.SIG.zero_()
            layer.P.round_()
            layer.clamp_parameters()
            layer.rounded.fill_(True)
    return model


@contextlib.contextmanager
def rounded_delays(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate in the inference mode of `convert_delays_for_inference`, then restore P, SIG and the mode.

    The original validates every epoch this way (round, evaluate, reload the training state)::

        with rounded_delays(model):
            evaluate(model)
    """
    layers = [m for m in model.modules() if isinstance(m, SynapticDelay)]
    saved = [(m.P.detach().clone(), m.SIG.detach().clone(), m.rounded.clone()) for m in layers]
    convert_delays_for_inference(model)
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, (p, sig, flag) in zip(layers, saved):
                m.P.copy_(p)
                m.SIG.copy_(sig)
                m.rounded.copy_(flag)


def export_integer_delays(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Per delay layer (module name): ``{"delay": int64 (out, in) in time steps, "weight": (out, in)}``.

    The model must be in inference mode (`convert_delays_for_inference`); the effective weight includes the
    reference's 1 / (1 + 1e-7) normalisation. Synapse (o, i) contributes ``weight[o, i] * x_i[t - delay[o, i]]``
    to neuron o at output step t (input steps before 0 are zero).
    """
    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, SynapticDelay):
            if not bool(layer.rounded):
                raise ValueError(
                    f"{name}: delays are not rounded; call convert_delays_for_inference(model) first")
            kernel = layer.rounded_kernel().detach()
            out[name] = {"delay": layer.integer_delays(), "weight": kernel.sum(-1)}
    return out


# ------------------------------------------------------------------------------------------ checkpoints

@zoo_checkpoint_filter
def checkpoint_filter_fn(state_dict: dict, model: SnnDelays) -> dict:
    """Original layout (``model.{k}`` of the `nn.Sequential`: Dcls1d, BatchNorm, LIF, Dropout per hidden layer, then
    the read-out Dcls1d) -> ours; our own layout passes through. Rounding buffers absent from original checkpoints
    are set to False (they hold training-state positions)."""
    out = {}
    n_hidden = len(model.blocks)
    for key, value in state_dict.items():
        if not key.startswith("model."):
            out[key] = value
            continue
        idx, _, rest = key[len("model."):].partition(".")
        if not idx.isdigit() or rest in ("", "DCK.IDX", "DCK.lim"):
            continue
        layer, slot = divmod(int(idx), 4)
        if layer < n_hidden and slot == 0:
            out[f"blocks.{layer}.delay.{rest}"] = value
        elif layer < n_hidden and slot == 1:
            out[f"blocks.{layer}.norm.{rest}"] = value
        elif layer == n_hidden and slot == 0:
            out[f"head.delay.{rest}"] = value
        else:
            raise ValueError(f"unexpected key {key!r} for an SNN-delays checkpoint with {n_hidden} hidden layers")
    for name, buf in model.named_buffers():
        if name.endswith(".rounded"):
            out.setdefault(name, torch.zeros_like(buf))
    _drop_replaced_head_delays(out, model)
    return out


def _drop_replaced_head_delays(state_dict: dict, model: SnnDelays) -> None:
    """Fine-tuning to another num_classes: timm's loader drops the read-out's `weight` (the cfg's classifier) but
    not its delay positions and widths, whose shapes follow the classes too; the new head keeps its own
    initialisation of all three. (`head.delay.weight` stays for timm to drop, and for the replaced-head warning.)"""
    weight = state_dict.get("head.delay.weight")
    head = model.head.delay.weight if isinstance(model.head, DelayReadout) else None
    if weight is None or (head is not None and weight.shape == head.shape):
        return
    for key in ("head.delay.P", "head.delay.SIG"):
        state_dict.pop(key, None)
    if head is None:   # num_classes=0: no read-out at all
        for key in [k for k in state_dict if k.startswith("head.") and k != "head.delay.weight"]:
            del state_dict[key]


def _create_snn_delays(variant: str, pretrained: bool = False, **kwargs: Any) -> SnnDelays:
    loaded_original_layout = []

    def filter_fn(state_dict: dict, model: SnnDelays) -> dict:
        loaded_original_layout.append(any(k.startswith("model.") for k in state_dict))
        return checkpoint_filter_fn(state_dict, model)

    # checkpoint_filter_fn already restores tied entries and announces a replaced head: not a second time.
    filter_fn.is_zoo_filter = True

    model = build_zoo_model(
        SnnDelays, variant, pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(out_indices=kwargs.pop("out_indices", (0, 1)), feature_cls="getter", output_fmt="NLC"),
        **kwargs,
    )
    if any(loaded_original_layout):
        # The authors' checkpoints hold training-state (Gaussian) delays; their published accuracies use rounded
        # delays. Our own folders (dcls_zoo.hub) are loaded exactly as they were saved.
        convert_delays_for_inference(model)
    return model


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 20, "input_size": (1, 100, 140), "fixed_input_size": True, "mean": (0.0,), "std": (1.0,),
        "first_conv": "blocks.0.delay", "classifier": "head.delay",
        "origin_url": "https://github.com/Thvnvtos/SNN-delays", "paper_ids": "arXiv:2306.17670",
        "paper_name": "Learning Delays in Spiking Neural Networks using Dilated Convolutions with Learnable Spacings",
        **kwargs,
    }


# input_size is (1, time steps, features): 1 s of 10 ms bins (SHD, SSC) or 101 mel frames (GSC). timm's builder
# needs a (C, H, W) triple; the model also takes (B, T, F) directly.
default_cfgs = generate_default_cfgs({
    "snn_delays_shd": _cfg(num_classes=20, notes=("SHD test accuracy 95.07 (secondary sources)",)),
    "snn_delays_ssc": _cfg(num_classes=35, notes=("SSC test accuracy 80.69 (secondary sources)",)),
    "snn_delays_gsc": _cfg(num_classes=35, input_size=(1, 101, 140),
                           notes=("GSC-35 test accuracy 95.35 (secondary sources)",)),
})

_SSC_GSC = dict(hidden_sizes=(512, 512, 512), max_delay=31, tau=(15 + 1e-9) / 10, drop_rate=0.25)


@register_model
def snn_delays_shd(pretrained: bool = False, **kwargs: Any) -> SnnDelays:
    model_args = dict(num_classes=20, hidden_sizes=(256, 256), max_delay=25, tau=(10.05 + 1e-9) / 10, drop_rate=0.4)
    return _create_snn_delays("snn_delays_shd", pretrained, **dict(model_args, **kwargs))


@register_model
def snn_delays_ssc(pretrained: bool = False, **kwargs: Any) -> SnnDelays:
    return _create_snn_delays("snn_delays_ssc", pretrained, **dict(dict(num_classes=35, **_SSC_GSC), **kwargs))


@register_model
def snn_delays_gsc(pretrained: bool = False, **kwargs: Any) -> SnnDelays:
    return _create_snn_delays("snn_delays_gsc", pretrained, **dict(dict(num_classes=35, **_SSC_GSC), **kwargs))
