"""Pictures: a Grad-CAM map over its image, and what a DCLS model learned (kernel positions, dense kernels, delays).

matplotlib is an optional dependency (the `train` extra); `require_matplotlib` says what to install.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn

__all__ = ["require_matplotlib", "plot_grad_cam", "plot_kernels", "dcls_stages", "element_positions"]


def require_matplotlib():
    """pyplot on the non-interactive Agg backend; ImportError with the install command if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("matplotlib is needed for the interpretability pictures: pip install 'dcls-zoo[train]' "
                          "(or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_grad_cam(image: np.ndarray, heatmap: np.ndarray, title: str, out: Union[str, Path],
                  alpha: float = 0.5) -> None:
    """Write `image` (H, W, 3 uint8) with `heatmap` (H, W) overlaid in the jet colour map to the PNG `out`."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.4))
    axes[0].imshow(image)
    axes[0].set_title("input (as the model sees it)", fontsize=9)
    axes[1].imshow(image)
    shown = axes[1].imshow(heatmap, cmap="jet", alpha=alpha, vmin=float(heatmap.min()), vmax=float(heatmap.max()))
    axes[1].set_title("heatmap overlaid", fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- DCLS kernels

def dcls_stages(model: nn.Module) -> "OrderedDict[str, list[tuple[str, nn.Module]]]":
    """2-D DCLS layers of `model` grouped by stage ('stages.1' of timm's staged models, 'layer3' of ResNets)."""
    from ..layers import Dcls2d

    stages: "OrderedDict[str, list[tuple[str, nn.Module]]]" = OrderedDict()
    for name, module in model.named_modules():
        if isinstance(module, Dcls2d):
            # 'stages.1.blocks.0.conv_dw' -> 'stages.1'; 'layer3.0.conv2' -> 'layer3'
            parts = name.split(".")
            numbered = len(parts) > 2 and parts[1].isdigit() and not any(ch.isdigit() for ch in parts[0])
            stage = ".".join(parts[:2]) if numbered else parts[0]
            stages.setdefault(stage, []).append((name, module))
    return stages


def element_positions(layer: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) on the dilated grid of each kernel element, each (O, I/g, K), from the layer's P.

    The versions differ in which axis P[0] moves along (v0: rows; v1, gauss, max: columns, as the `dcls` library),
    and positions are centred at dilated_kernel_size // 2.
    """
    P = layer.P.detach().float().cpu()
    dks = layer.dilated_kernel_size
    shifted = [P[d] + dks[d] // 2 for d in range(2)]
    rows, cols = (shifted[0], shifted[1]) if layer.version == "v0" else (shifted[1], shifted[0])
    return rows.numpy(), cols.numpy()


def _plot_dcls(model: nn.Module, name: str, title: str, out, channels: int, plt) -> None:
    stages = dcls_stages(model)
    if not stages:
        raise ValueError(f"{name} has no 2-D DCLS layers (Dcls2d) to picture; pick a dcls_* model or snn_delays_*")
    ncols = channels + 1
    fig, axes = plt.subplots(len(stages), ncols, figsize=(2.3 * ncols, 2.4 * len(stages)), squeeze=False)
    for row, (stage, layers) in enumerate(stages.items()):
        layer_name, layer = layers[0]
        rows, cols = element_positions(layer)
        weight = layer.weight.detach().float().cpu().numpy()
        dks = layer.dilated_kernel_size
        scale = np.abs(weight).max() or 1.0
        for c in range(channels):
            ax = axes[row, c]
            if c >= weight.shape[0]:
                ax.axis("off")
                continue
            w = weight[c, 0]
            ax.scatter(cols[c, 0], rows[c, 0], s=10 + 120 * np.abs(w) / scale,
                       c=np.where(w >= 0, "tab:red", "tab:blue"), alpha=0.8, edgecolors="k", linewidths=0.3)
            ax.set_xlim(-0.5, dks[1] - 0.5)
            ax.set_ylim(dks[0] - 0.5, -0.5)
            ax.set_xticks(np.arange(-0.5, dks[1], 1), minor=True)
            ax.set_yticks(np.arange(-0.5, dks[0], 1), minor=True)
            ax.grid(which="minor", linewidth=0.2, color="0.8")
            ax.set_xticks(np.arange(0, dks[1], 4))
            ax.set_yticks(np.arange(0, dks[0], 4))
            ax.tick_params(which="both", length=0, labelsize=6)
            ax.set_aspect("equal")
            ax.set_title(f"{stage} ch {c}" + (" (in 0)" if weight.shape[1] > 1 else ""), fontsize=7)
        with torch.no_grad():
            dense = layer.construct_kernel().detach().float().abs().mean(dim=(0, 1)).cpu().numpy()
        ax = axes[row, channels]
        shown = ax.imshow(dense, cmap="viridis")
        ax.set_title(f"{stage}: mean |kernel|\n{len(layers)} layer(s), {layer.version}", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{title}: kernel elements (size ~ |weight|, red > 0, blue < 0) on the "
                 f"{stages[next(iter(stages))][0][1].dilated_kernel_size[0]}-grid, first layer of each stage",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_delays(model: nn.Module, name: str, title: str, out, plt) -> None:
    layers = model.delay_layers()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 2.8), squeeze=False)
    for ax, (i, layer) in zip(axes[0], enumerate(layers)):
        # Delay of synapse (o, i): max_delay // 2 - P steps, rounded as at inference (SNN-delays' eval_model).
        delays = layer.integer_delays().flatten().cpu().numpy()
        ax.hist(delays, bins=np.arange(layer.max_delay + 1) - 0.5, color="tab:purple")
        ax.set_title(f"{'read-out' if i == len(layers) - 1 else f'layer {i + 1}'}: {layer.in_channels}->"
                     f"{layer.out_channels}", fontsize=8)
        ax.set_xlabel("delay (time steps)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("synapses", fontsize=7)
    fig.suptitle(f"{title}: learned synaptic delays", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_kernels(
    model: nn.Module, out: Union[str, Path], name: Optional[str] = None, channels: int = 4, title: Optional[str] = None,
) -> None:
    """Write a PNG of what `model` learned: per stage the element positions of `channels` channels on the dilated
    grid and the mean absolute dense kernel; for an SNN with synaptic delays, a histogram of delays per layer.

    `name` names the model in errors, `title` heads the figure (default: `name`). ValueError if the model has no
    DCLS layer.
    """
    plt = require_matplotlib()
    name = name or type(model).__name__
    if hasattr(model, "delay_layers") and model.delay_layers():
        _plot_delays(model, name, title or name, out, plt)
    else:
        _plot_dcls(model, name, title or name, out, channels, plt)
