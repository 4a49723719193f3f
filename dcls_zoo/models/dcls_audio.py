"""DCLS-Audio: ConvNeXt-T, ConvFormer-S18 and FastViT-SA24 on AudioSet, with and without DCLS-Gauss.

Paper: Audio classification with Dilated Convolution with Learnable Spacings (Khalfaoui-Hassani, Masquelier,
Pellegrini), arXiv:2309.13972. Original code: https://github.com/K-H-Ismail/DCLS-Audio (MIT).

Each model is timm's own class (`ConvNeXt`, `MetaFormer`, `FastVit`) with:

* the audio stem Conv2d(1, C0, kernel (2, 16), stride (2, 16)) in place of the image stem, so a (1, 128, 1001)
  log-mel input (mel on H, time on W) becomes 64 x 62 after the stem;
* 527 AudioSet classes;
* for the DCLS variants, depthwise convolutions replaced by `Dcls2d` (Gauss interpolation, 23 x 23 grid,
  26 elements) through `dcls_zoo.layers.dclsify`, with positions and widths shared by all layers of a stage as in
  the originals: every block's 7x7 depthwise conv (ConvNeXt `conv_dw`, ConvFormer `token_mixer.dwconv`) and, in
  FastViT, only the 7x7 depthwise convs (ConvFFN and the stage-4 conditional positional encoding), not the 3x3
  RepMixer / MobileOne convs nor the patch-embedding large-kernel convs (in != out).
* ConvFormer's head LayerNorm uses eps 1e-5 as in the original MetaFormer MlpHead (timm's default 1e-6 changes
  the logits by ~8e-5).

The originals compute the log-mel in the data pipeline (torchaudio, recipe (b) of `dcls_zoo.layers.audio`), so
the models take (B, 1, 128, 1001) normalised log-mels. `waveform_input=True` puts that front-end inside the model
(32 kHz mono waveform in, (B, samples)), so users do not re-implement it.

Checkpoints (Zenodo record 8370979): training containers `{'model', 'model_ema'?, 'optimizer', 'args', ...}` in the
original layouts (FB ConvNeXt, sail-sg MetaFormer, Apple FastViT), every DCLS layer storing its stage's shared
positions again. `checkpoint_filter_fn` maps them with timm's own filters and checks that the repeated copies
agree. The README links the ConvNeXt and FastViT *baseline* rows to the DCLS files, so only ConvFormer has a
published baseline checkpoint.

`feature_info[i]['reduction']` reports the stride along time (W); along mel (H) it is 8x smaller.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models import checkpoint_seq
from timm.models import convnext as timm_convnext
from timm.models import fastvit as timm_fastvit
from timm.models import generate_default_cfgs, register_model
from timm.models import metaformer as timm_metaformer

from ..data.audioset_labels import AUDIOSET_LABELS
from ..layers import DclsModelMixin, dclsify
from ..layers.audio import AUDIOSET_CLIP_SAMPLES, DCLS_AUDIO_FRONTEND, LogMelFrontend, check_waveform
from ..layers.input_checks import DownsamplingChainMixin, check_input_dtype, input_checks_enabled, input_owner
from ..layers.rep_pos_enc import DclsRepConditionalPosEnc
from ._builder import build_zoo_model, with_every_shared_copy, zoo_checkpoint_filter
from ._convnext import CONVNEXT_SIZES
from ._metaformer import SailHeadMetaFormer

__all__ = ["ConvNeXtAudio", "MetaFormerAudio", "FastVitAudio", "AUDIO_STEM_KERNEL"]

AUDIO_STEM_KERNEL = (2, 16)   # (mel, time): 128 x 1001 -> 64 x 62
NUM_MEL_BINS, NUM_FRAMES = 128, 1001
DCLS_AUDIO = dict(dcls_version="gauss", dcls_dilated_kernel_size=23, dcls_kernel_count=26)


def _audio_stem(in_chans: int, out_chans: int, bias: bool, device=None, dtype=None) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, out_chans, AUDIO_STEM_KERNEL, stride=AUDIO_STEM_KERNEL, bias=bias,
                     device=device, dtype=dtype)
    trunc_normal_(conv.weight, std=0.02)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def _is_dw7x7(name: str, conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (7, 7)


class _AudioModelMixin(DclsModelMixin, DownsamplingChainMixin):
    """What the three families add to their timm class: the optional waveform front-end and DCLS helpers.

    Must come first in the bases so its `forward_intermediates` runs the front-end before the timm class's. Each
    family writes `forward_features` out (no `super()`), so TorchScript can compile it; the `frontend is not None`
    branch is dropped at compile time when there is no front-end.
    """

    def _init_audio(self, waveform_input: bool, num_mels: int, in_chans: int, dcls_version: Optional[str],
                    dcls_dilated_kernel_size: int, dcls_kernel_count: int, conv_filter, device, dtype) -> None:
        if waveform_input and in_chans != 1:
            raise ValueError(f"waveform_input=True takes mono audio (in_chans=1), got in_chans={in_chans}")
        if not isinstance(num_mels, int) or isinstance(num_mels, bool) or num_mels < 1:
            raise ValueError(f"num_mels must be a positive int (mel bins of the input), got {num_mels!r}")
        self.waveform_input = waveform_input
        self.num_mels = num_mels
        self.frontend = LogMelFrontend(
            **dict(DCLS_AUDIO_FRONTEND, n_mels=num_mels), device=device, dtype=dtype) if waveform_input else None
        stem_reduction = AUDIO_STEM_KERNEL[1]
        for i, info in enumerate(self.feature_info):
            info["reduction"] = stem_reduction * 2 ** i
        self.dcls_version = dcls_version
        if dcls_version is not None:
            dclsify(self, version=dcls_version, dilated_kernel_size=dcls_dilated_kernel_size,
                    kernel_count=dcls_kernel_count, conv_filter=conv_filter)

    def min_frames(self) -> int:
        """Fewest time frames (W) the model takes, derived from `downsampling_chain()` (the stem and each stage's
        downsampling)."""
        return self.min_input_size()[1]

    def min_samples(self) -> int:
        """With `waveform_input`: the shortest clip, in samples, that gives `min_frames()` frames."""
        if self.frontend is None:
            raise ValueError("min_samples: this model takes log-mels (waveform_input=False); see min_frames()")
        # The centred STFT gives 1 + samples // hop_length frames.
        return max(self.frontend.min_samples, (self.min_frames() - 1) * self.frontend.hop_length)

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """One line unless `x` is what the model takes: a (B, 1, num_mels, T) log-mel with T >= `min_frames()`,
        or with `waveform_input`, a (B, samples) waveform long enough for that many frames; in the model's dtype."""
        if not input_checks_enabled():
            return
        what = input_owner(self)
        dtype = self.stem.weight.dtype if isinstance(self.stem, nn.Conv2d) else next(self.parameters()).dtype
        if self.frontend is not None:
            check_waveform(x, min_samples=self.min_samples(), what=f"{what} (waveform_input=True, 32 kHz mono)")
            check_input_dtype(x, dtype, what)
            return
        shape = f"(batch, {self.in_chans}, {self.num_mels} mel bins, time frames >= {self.min_frames()})"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} takes a log-mel tensor {shape}, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            hint = "; add the batch dimension with x.unsqueeze(0)" if x.dim() == 3 and x.shape[0] == 1 else ""
            raise ValueError(f"{what} takes a log-mel {shape}, got shape {tuple(x.shape)}{hint}")
        if x.shape[2] != self.num_mels:
            hint = ("; time and mel axes look swapped: use x.transpose(2, 3)" if x.shape[3] == self.num_mels
                    else f"; compute {self.num_mels} mel bins (dcls_zoo.layers.audio.DCLS_AUDIO_FRONTEND)")
            raise ValueError(f"{what} takes a log-mel {shape} (mel on dim 2, time on dim 3), got shape "
                             f"{tuple(x.shape)}{hint}")
        if x.shape[3] < self.min_frames():
            raise ValueError(f"{what} takes a log-mel {shape}, got {x.shape[3]} frames: pad the clip in time")
        check_input_dtype(x, dtype, what)

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        """timm's `forward_intermediates`, after the input check and the front-end when there is one."""
        self.check_input(x)
        if self.frontend is not None:
            x = self.frontend(x)
        return super().forward_intermediates(x, *args, **kwargs)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The timm class's groups, with the front-end (its BatchNorm, if any) in the stem's."""
        return dict(super().group_matcher(coarse), stem=r"^frontend|^stem")


class ConvNeXtAudio(_AudioModelMixin, timm_convnext.ConvNeXt):
    """timm `ConvNeXt` with the (2, 16) audio stem (bias, then LayerNorm), optional DCLS and waveform front-end.

    Args:
        waveform_input: put the DCLS-Audio log-mel front-end in the model (input (B, samples) at 32 kHz).
        num_mels: mel bins of the input (dim 2), 128 for the released models; other values train from scratch.
        dcls_version: None (dense 7x7 depthwise convs) or a DCLS version ('gauss' for the released models).
        dcls_dilated_kernel_size, dcls_kernel_count: DCLS grid side and elements per channel.
        in_chans, num_classes: 1 (a log-mel) and 527 (AudioSet) by default.
        **kwargs: timm's `ConvNeXt` arguments, less those of the image stem (`stem_type`, `patch_size`) and
            `output_stride` (the audio stem and the time reductions are fixed).
    """

    def __init__(
            self,
            waveform_input: bool = False,
            num_mels: int = NUM_MEL_BINS,
            dcls_version: Optional[str] = None,
            dcls_dilated_kernel_size: int = 23,
            dcls_kernel_count: int = 26,
            in_chans: int = 1,
            num_classes: int = 527,
            device=None,
            dtype=None,
            **kwargs: Any,
    ) -> None:
        fixed = sorted({"stem_type", "patch_size", "output_stride"} & set(kwargs))
        if fixed:
            raise TypeError(f"ConvNeXtAudio takes no {', '.join(fixed)}: its (2, 16) audio stem is fixed")
        super().__init__(in_chans=in_chans, num_classes=num_classes, device=device, dtype=dtype, **kwargs)
        self.stem[0] = _audio_stem(in_chans, self.stem[0].out_channels, bias=True, device=device, dtype=dtype)
        self._init_audio(
            waveform_input, num_mels, in_chans, dcls_version, dcls_dilated_kernel_size, dcls_kernel_count,
            lambda name, conv: name.endswith(".conv_dw") and _is_dw7x7(name, conv), device, dtype,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
        if self.frontend is not None:
            x = self.frontend(x)
        x = self.stem(x)
        x = self.stages(x)
        return self.norm_pre(x)


class MetaFormerAudio(_AudioModelMixin, SailHeadMetaFormer):
    """timm `MetaFormer` (ConvFormer) with the (2, 16) audio stem (no bias, then its LayerNorm), head LayerNorm
    eps 1e-5 (`SailHeadMetaFormer`), optional DCLS and waveform front-end. Arguments as `ConvNeXtAudio`, then
    ConvFormer-S18's depths and token mixers by default, plus timm's MetaFormer ones."""

    def __init__(
            self,
            waveform_input: bool = False,
            num_mels: int = NUM_MEL_BINS,
            dcls_version: Optional[str] = None,
            dcls_dilated_kernel_size: int = 23,
            dcls_kernel_count: int = 26,
            in_chans: int = 1,
            num_classes: int = 527,
            depths: tuple[int, ...] = (3, 3, 9, 3),
            token_mixers: Any = timm_metaformer.SepConv,
            device=None,
            dtype=None,
            **kwargs: Any,
    ) -> None:
        super().__init__(
            in_chans=in_chans, num_classes=num_classes, depths=depths, token_mixers=token_mixers, device=device,
            dtype=dtype, **kwargs,
        )
        self.stem.conv = _audio_stem(in_chans, self.stem.conv.out_channels, bias=False, device=device, dtype=dtype)
        self._init_audio(
            waveform_input, num_mels, in_chans, dcls_version, dcls_dilated_kernel_size, dcls_kernel_count,
            lambda name, conv: name.endswith(".token_mixer.dwconv") and _is_dw7x7(name, conv), device, dtype,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
        if self.frontend is not None:
            x = self.frontend(x)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)


class FastVitAudio(_AudioModelMixin, timm_fastvit.FastVit):
    """timm `FastVit` (SA24) whose stem is one Conv2d(1, 64, (2, 16), stride (2, 16), no bias), with optional
    DCLS on the 7x7 depthwise convs and waveform front-end. Arguments as `ConvNeXtAudio`, plus timm's FastVit
    ones. Structural reparameterisation (`timm.models.reparameterize_model`) works with DCLS too: the stage-4
    positional encoding freezes its DCLS kernel into a dense conv before folding its identity branch in; the
    ConvFFN DCLS layers stay as they are (or can be frozen first with `Dcls2d.to_conv()`)."""

    def __init__(
            self,
            waveform_input: bool = False,
            num_mels: int = NUM_MEL_BINS,
            dcls_version: Optional[str] = None,
            dcls_dilated_kernel_size: int = 23,
            dcls_kernel_count: int = 26,
            in_chans: int = 1,
            num_classes: int = 527,
            global_pool: str = "avg",
            layers: tuple[int, ...] = (4, 4, 12, 4),
            embed_dims: tuple[int, ...] = (64, 128, 256, 512),
            mlp_ratios: tuple[float, ...] = (4, 4, 4, 4),
            token_mixers: tuple[str, ...] = ("repmixer", "repmixer", "repmixer", "attention"),
            pos_embs: tuple[Any, ...] = (
                None, None, None, partial(DclsRepConditionalPosEnc, spatial_shape=(7, 7))),
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, layers=layers,
            embed_dims=embed_dims, mlp_ratios=mlp_ratios, token_mixers=token_mixers, pos_embs=pos_embs,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate, device=device, dtype=dtype,
        )
        self.stem = _audio_stem(in_chans, embed_dims[0], bias=False, device=device, dtype=dtype)
        self._init_audio(
            waveform_input, num_mels, in_chans, dcls_version, dcls_dilated_kernel_size, dcls_kernel_count, _is_dw7x7,
            device, dtype,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
        if self.frontend is not None:
            x = self.frontend(x)
        x = self.stem(x)
        x = self.stages(x)
        return self.final_conv(x)


@zoo_checkpoint_filter
def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Original DCLS-Audio layouts (FB ConvNeXt, sail-sg MetaFormer, Apple FastViT) -> ours; ours passes through.

    Uses timm's own remaps on the unwrapped container; `zoo_checkpoint_filter` then checks that the per-layer
    copies of each stage's shared DCLS positions agree (or fills them in where a file stores them once).
    """
    if isinstance(model, FastVitAudio):
        if "stem.weight" not in state_dict:   # ours has the plain-conv stem at 'stem'
            state_dict = timm_fastvit.checkpoint_filter_fn(state_dict, model)
    elif isinstance(model, MetaFormerAudio):
        state_dict = timm_metaformer.checkpoint_filter_fn(state_dict, with_every_shared_copy(model))
    elif isinstance(model, ConvNeXtAudio):
        state_dict = timm_convnext.checkpoint_filter_fn(state_dict, model)
    else:
        raise TypeError(f"checkpoint_filter_fn: unsupported model {type(model).__name__}")
    return state_dict


def _create(model_cls: type, variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    model = build_zoo_model(
        model_cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        # 'getter' features run forward_intermediates, i.e. through the front-end when there is one.
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )
    if getattr(model, "waveform_input", False):
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(1, 1, AUDIOSET_CLIP_SAMPLES),
                                    min_input_size=(1, 1, model.min_samples()))
        model.default_cfg = model.pretrained_cfg
    return model


def _cfg(url: str = "", pool_size: tuple[int, int] = (8, 8), min_frames: int = 16, **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url, "num_classes": 527, "input_size": (1, NUM_MEL_BINS, NUM_FRAMES),
        # The fewest frames the architecture takes (`min_frames()`, checked against it by the tests); timm's
        # tests shrink inputs to this size.
        "min_input_size": (1, NUM_MEL_BINS, min_frames), "pool_size": pool_size,
        "mean": (0.0,), "std": (1.0,), "first_conv": "stem.0", "classifier": "head.fc",
        "label_names": AUDIOSET_LABELS,
        "license": "mit", "origin_url": "https://github.com/K-H-Ismail/DCLS-Audio",
        "paper_ids": "arXiv:2309.13972",
        "paper_name": "Audio classification with Dilated Convolution with Learnable Spacings",
        **kwargs,
    }


_ZENODO = "https://zenodo.org/record/8370979/files/"
_INPUT_NOTE = (
    "input: log-mel (1, 128 HTK mels, 1001 frames), (dB + 18.2696) / 30.5735; waveform_input=True for waveforms")
default_cfgs = generate_default_cfgs({
    "convnext_audio_tiny.as2m": _cfg(pool_size=(8, 7), min_frames=128, notes=(
        "AudioSet mAP 44.83 +- 0.14 reported; no baseline checkpoint published (README links the DCLS file)",
        _INPUT_NOTE)),
    "dcls_convnext_audio_tiny.as2m": _cfg(
        url=_ZENODO + "convnext_dcls_audio_tiny.pth", pool_size=(8, 7), min_frames=128,
        notes=("AudioSet mAP 45.52 +- 0.05 reported", "container keys: model, model_ema", _INPUT_NOTE)),
    "convformer_audio_s18.as2m": _cfg(
        url=_ZENODO + "convformer_audio_s18.pth", first_conv="stem.conv", classifier="head.fc.fc2",
        notes=("AudioSet mAP 43.14 +- 0.03 reported", "container keys: model, model_ema", _INPUT_NOTE)),
    "dcls_convformer_audio_s18.as2m": _cfg(
        url=_ZENODO + "convformer_dcls_audio_s18.pth", first_conv="stem.conv", classifier="head.fc.fc2",
        notes=("AudioSet mAP 43.68 +- 0.02 reported", "container keys: model, model_ema", _INPUT_NOTE)),
    "fastvit_audio_sa24.as2m": _cfg(first_conv="stem", notes=(
        "AudioSet mAP 43.82 +- 0.05 reported; no baseline checkpoint published (README links the DCLS file)",
        _INPUT_NOTE)),
    "dcls_fastvit_audio_sa24.as2m": _cfg(
        url=_ZENODO + "fastvit_dcls_audio_sa24.pth", first_conv="stem",
        notes=("AudioSet mAP 44.40 +- 0.07 reported", "container keys: model, model_ema", _INPUT_NOTE)),
})


@register_model
def convnext_audio_tiny(pretrained: bool = False, **kwargs: Any) -> ConvNeXtAudio:
    model_args = dict(CONVNEXT_SIZES["tiny"])
    return _create(ConvNeXtAudio, "convnext_audio_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_convnext_audio_tiny(pretrained: bool = False, **kwargs: Any) -> ConvNeXtAudio:
    model_args = dict(CONVNEXT_SIZES["tiny"], **DCLS_AUDIO)
    return _create(ConvNeXtAudio, "dcls_convnext_audio_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def convformer_audio_s18(pretrained: bool = False, **kwargs: Any) -> MetaFormerAudio:
    model_args = dict(depths=(3, 3, 9, 3), dims=(64, 128, 320, 512))
    return _create(MetaFormerAudio, "convformer_audio_s18", pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_convformer_audio_s18(pretrained: bool = False, **kwargs: Any) -> MetaFormerAudio:
    model_args = dict(depths=(3, 3, 9, 3), dims=(64, 128, 320, 512), **DCLS_AUDIO)
    return _create(MetaFormerAudio, "dcls_convformer_audio_s18", pretrained, **dict(model_args, **kwargs))


@register_model
def fastvit_audio_sa24(pretrained: bool = False, **kwargs: Any) -> FastVitAudio:
    model_args = dict(layers=(4, 4, 12, 4), embed_dims=(64, 128, 256, 512))
    return _create(FastVitAudio, "fastvit_audio_sa24", pretrained, **dict(model_args, **kwargs))


@register_model
def dcls_fastvit_audio_sa24(pretrained: bool = False, **kwargs: Any) -> FastVitAudio:
    model_args = dict(layers=(4, 4, 12, 4), embed_dims=(64, 128, 256, 512), **DCLS_AUDIO)
    return _create(FastVitAudio, "dcls_fastvit_audio_sa24", pretrained, **dict(model_args, **kwargs))
