"""Grad-CAM and Threshold-Grad-CAM (arXiv 2408.03164), batched, on any zoo or timm image classifier.

Both weight the activations A (B, C, h, w) of a target layer by the spatial mean of their gradients
G = d(sum_b logits[b, target_b]) / dA, i.e. alpha_c = mean_{h,w} G_c:

- ``"gradcam"``:   M = ReLU(mean_c(alpha_c * A_c))                       (non-negative, unnormalised)
- ``"threshold"``: M = mean_c ReLU(alpha_c * A_c) (ReLU per channel, before the mean), then per image
  M = (M - min M) / (max M - min M) and M = max(M, floor)                (in [floor, 1])

and resize M to the requested size (bilinear, half-pixel centres, antialiased as torchvision's `Resize`). This is
the authors' code (`GradCAM.py`, `threshold_GradCAM.py`) in one batched function. The channel mean instead of the
usual sum only scales the plain Grad-CAM map by 1/C.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "grad_cam", "activations_and_gradients", "maps_from", "default_target_layer", "GRAD_CAM_METHODS", "MAP_LAYOUTS",
]

GRAD_CAM_METHODS = ("gradcam", "threshold")
# How the target layer lays out its output: channels first, channels last, or (B, h*w, C) tokens.
MAP_LAYOUTS = ("nchw", "nhwc", "nlc")


def default_target_layer(model: nn.Module) -> tuple[str, str]:
    """(module name, layout) of the study's Grad-CAM layer for `model` (the reference's table, §E).

    The last feature map before global pooling: ConvNeXt and MetaFormer (ConvFormer, CAFormer) the last stage,
    ResNet `layer4`, FastViT `final_conv` (the original's `conv_exp`), ConvMixer its last block, the CIFAR SE-ResNet
    `layer3`. Raises ValueError naming the `layer=` argument for any other model.
    """
    from timm.models.convmixer import ConvMixer
    from timm.models.convnext import ConvNeXt
    from timm.models.fastvit import FastVit
    from timm.models.metaformer import MetaFormer
    from timm.models.resnet import ResNet

    from ..models.kernel_sharing import SEResNetCifar

    if isinstance(model, (ConvNeXt, MetaFormer)):
        return f"stages.{len(model.stages) - 1}", "nchw"
    if isinstance(model, FastVit):
        return "final_conv", "nchw"
    if isinstance(model, ResNet):
        return "layer4", "nchw"
    if isinstance(model, SEResNetCifar):
        return f"layer{model.num_stages}", "nchw"
    if isinstance(model, ConvMixer):
        return f"blocks.{len(model.blocks) - 1}", "nchw"
    raise ValueError(
        f"grad_cam: no known Grad-CAM target layer for {type(model).__name__}; pass layer= (a module of the model "
        f"or its dotted name, e.g. layer='stages.3') and, for channels-last output, layout='nhwc'"
    )


def _resolve_layer(
    model: nn.Module, layer: Union[None, str, nn.Module], layout: Optional[str]
) -> tuple[nn.Module, str, str]:
    if layer is None:
        name, default_layout = default_target_layer(model)
        return model.get_submodule(name), name, layout or default_layout
    if isinstance(layer, str):
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            raise ValueError(
                f"grad_cam: layer={layer!r} is not a submodule of {type(model).__name__}; pass the dotted name of one "
                f"of model.named_modules()") from None
        return module, layer, layout or "nchw"
    if isinstance(layer, nn.Module):
        name = next((n for n, m in model.named_modules() if m is layer), None)
        if name is None:
            raise ValueError(f"grad_cam: layer= is a {type(layer).__name__} that is not a submodule of the model")
        return layer, name or type(layer).__name__, layout or "nchw"
    raise TypeError(f"grad_cam: layer= must be None, a module name or an nn.Module, got {type(layer).__name__}")


def _to_nchw(t: torch.Tensor, layout: str, name: str, image_hw: Sequence[int]) -> torch.Tensor:
    if layout == "nlc":
        if t.ndim != 3:
            raise ValueError(
                f"grad_cam: layer {name!r} gave a {t.ndim}-D output, expected (B, h*w, C) for layout='nlc'")
        b, n, c = t.shape
        # The token grid keeps the image's aspect ratio: h/w = H/W and h*w = n.
        h = max(1, round((n * image_hw[0] / image_hw[1]) ** 0.5))
        w = n // h
        if h * w != n:
            raise ValueError(f"grad_cam: layer {name!r} gave {n} tokens, which is no h x w grid of the image's "
                             f"aspect ratio; pass a layer with a 4-D output")
        return t.transpose(1, 2).reshape(b, c, h, w)
    if t.ndim != 4:
        raise ValueError(f"grad_cam: layer {name!r} gave a {t.ndim}-D output {tuple(t.shape)}, expected a 4-D feature "
                         f"map; pass layer= a layer with one (or layout='nlc' for (B, h*w, C) tokens)")
    return t.permute(0, 3, 1, 2) if layout == "nhwc" else t


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    # torchvision's Resize (the reference) is bilinear with half-pixel centres, antialiased when shrinking.
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False,
                         antialias=True).squeeze(1)


def _as_targets(targets, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(targets, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.numel() != batch or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"grad_cam: targets must be {batch} integer class indices (one per image), "
                         f"got {tuple(t.shape)} {t.dtype}")
    if batch and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"grad_cam: targets must be class indices in [0, {num_classes}), got {t.tolist()}")
    return t.long()


def activations_and_gradients(
    model: nn.Module,
    images: torch.Tensor,
    targets: Union[int, Sequence[int], torch.Tensor],
    layer: Union[None, str, nn.Module] = None,
    layout: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations A and gradients G = d(sum_b logits[b, target_b]) / dA of the target layer, float32 (B, C, h, w).

    Arguments as `grad_cam`; the model's modes, hooks, `requires_grad` flags and `.grad` fields are left as found.
    """
    module, name, layout = _resolve_layer(model, layer, layout)

    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep_output(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"grad_cam: layer {name!r} returned a {type(output).__name__}, expected a tensor")
        # Values are copied now: a later in-place op must not change the activations we weight.
        captured.append((output, output.detach().clone()))

    modes = [(m, m.training) for m in model.modules()]
    handle = module.register_forward_hook(keep_output)
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            # The input requires grad so the target layer's output does even when every parameter is frozen;
            # autograd.grad below differentiates w.r.t. that output only, so no parameter's .grad is touched.
            x = images.detach().clone().requires_grad_(True)
            logits = model(x)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                raise ValueError(f"grad_cam: the model must return logits (B, num_classes), got "
                                 f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)}")
            if len(captured) != 1:
                raise ValueError(f"grad_cam: layer {name!r} ran {len(captured)} times in one forward pass, expected "
                                 f"once; pass layer= a module that runs once")
            output, activations = captured[0]
            index = _as_targets(targets, images.shape[0], logits.shape[1], logits.device)
            score = logits.gather(1, index[:, None]).sum()
            (gradients,) = torch.autograd.grad(score, output)
    finally:
        handle.remove()
        # Pre-order: a parent's train() resets its children, which are restored right after it.
        for m, training in modes:
            if m.training != training:
                m.train(training)
    acts = _to_nchw(activations, layout, name, images.shape[-2:]).float()
    grads = _to_nchw(gradients.detach(), layout, name, images.shape[-2:]).float()
    return acts, grads


def maps_from(
    acts: torch.Tensor, grads: torch.Tensor, method: str = "gradcam", floor: float = 0.3,
    size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Grad-CAM ("gradcam") or Threshold-Grad-CAM ("threshold") maps (B, *size) from A and G (B, C, h, w)."""
    if method not in GRAD_CAM_METHODS:
        raise ValueError(f"grad_cam: method must be one of {GRAD_CAM_METHODS}, got {method!r}")
    weighted = grads.mean(dim=(2, 3), keepdim=True) * acts
    if method == "gradcam":
        maps = weighted.mean(dim=1).relu()
    else:
        maps = weighted.relu().mean(dim=1)
        low = maps.amin(dim=(1, 2), keepdim=True)
        span = maps.amax(dim=(1, 2), keepdim=True) - low
        maps = torch.where(span > 0, (maps - low) / span.where(span > 0, torch.ones_like(span)), 0.0)
        maps = maps.clamp_min(float(floor))
    return maps if size is None else _resize(maps, tuple(size))


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    targets: Union[int, Sequence[int], torch.Tensor],
    layer: Union[None, str, nn.Module] = None,
    method: str = "gradcam",
    floor: float = 0.3,
    size: Union[None, int, Sequence[int]] = None,
    layout: Optional[str] = None,
) -> torch.Tensor:
    """Grad-CAM or Threshold-Grad-CAM maps of `model` for `images` (B, C, H, W) and class `targets`.

    Args:
        model: an image classifier returning logits (B, num_classes).
        images: the preprocessed batch, as the model takes it.
        targets: one class index per image (the study uses the ground-truth label), or one index for all.
        layer: the target layer, a module of `model` or its dotted name; default: the family's layer of the study
            (`default_target_layer`).
        method: "gradcam" (ReLU after the channel mean) or "threshold" (ReLU per channel, min-max, floor).
        floor: the Threshold-Grad-CAM floor: every value of the normalised map below it becomes `floor`.
        size: output (H, W) (or one int); default: the spatial size of `images`.
        layout: the layer's output layout, 'nchw', 'nhwc' or 'nlc' (B, h*w, C) tokens; default: the family's, else
            'nchw'.

    Returns:
        float32 tensor (B, H, W): non-negative for "gradcam", in [floor, 1] for "threshold". A threshold map whose
        weighted activations are constant (max = min) is `floor` everywhere.

    The model runs in eval mode; its modes, hooks, `requires_grad` flags and `.grad` fields are left as found.
    """
    if method not in GRAD_CAM_METHODS:
        raise ValueError(f"grad_cam: method must be one of {GRAD_CAM_METHODS}, got {method!r}")
    if layout is not None and layout not in MAP_LAYOUTS:
        raise ValueError(f"grad_cam: layout must be one of {MAP_LAYOUTS}, got {layout!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"grad_cam: images must be a (B, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if not 0.0 <= float(floor) <= 1.0:
        raise ValueError(f"grad_cam: floor must be in [0, 1], got {floor!r}")
    if size is None:
        out_size = tuple(images.shape[-2:])
    elif isinstance(size, int):
        out_size = (size, size)
    else:
        out_size = tuple(int(s) for s in size)
        if len(out_size) != 2:
            raise ValueError(f"grad_cam: size must be an int or (H, W), got {size!r}")
    acts, grads = activations_and_gradients(model, images, targets, layer=layer, layout=layout)
    return maps_from(acts, grads, method=method, floor=floor, size=out_size)
