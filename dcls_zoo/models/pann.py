"""PANNs (CNN6 / CNN10 / CNN14) and their depthwise-separable variants: waveform in, 527 AudioSet logits out.

Papers: Kong et al., "PANNs: Large-Scale Pretrained Audio Neural Networks for Audio Pattern Recognition",
IEEE/ACM TASLP 2020, arXiv:1912.10211 (code: https://github.com/qiuqiangkong/audioset_tagging_cnn, MIT; weights:
Zenodo record 3987831). Pellegrini et al., "Adapting a ConvNeXt model to audio classification on AudioSet",
Interspeech 2023, arXiv:2306.00830, whose first part puts depthwise-separable convolutions (DSC) into the PANN
family (code: https://github.com/topel/audioset-convnext-inf `pytorch/models.py`, MIT; no DSC weights published).
Facts, formulas and parameter counts: docs/reference/panns.md.

Every model: `LogMelFrontend` (PANNs recipe: 32 kHz, n_fft 1024, hop 320, 64 Slaney mels over 50-14000 Hz, dB,
BatchNorm over mel bins = the original `bn0`, SpecAugment 2 x 64 frames / 2 x 8 bins in training) -> [stem] ->
blocks, each followed by dropout 0.2 -> mean over mel, max + mean over time -> dropout 0.5 -> fc1 + ReLU (the
embedding, `forward_head(pre_logits=True)`) -> classifier `head` (the original `fc_audioset`; logits, not the
original's sigmoid: `forward_clipwise_probabilities` gives those).

Block types (`block_type`):

==========  ===================================================================================  ==================
type        block (ReLU after every BatchNorm; 2x2 average pooling after the block unless noted)  original class
==========  ===================================================================================  ==================
``conv5``   5x5 conv -> BN                                                                       PANNs `Cnn6`
``conv3``   3x3 conv -> BN -> 3x3 conv -> BN                                                     `Cnn10`, `Cnn14`
``dsc``     3x3 conv -> BN -> 3x3 *depthwise* conv -> BN                                         `Cnn14Sep`
``dsc_pw``  ``dsc``, then Linear(C, 2C) -> GELU -> Linear(2C, C) over channels                    `Cnn14SepPW`
``next``    7x7 depthwise conv (channel multiplier out/in, bias) -> LayerNorm -> Linear(C, 4C) ->  `Cnn{6,10,14}Next`
            GELU -> Linear(4C, C); no residual, no layer scale; after a 4x4 stride-2 conv + LN stem
==========  ===================================================================================  ==================

The original checkpoint layout (`Cnn14_mAP=0.431.pth`: a dict with the weights under 'model', torchlibrosa STFT /
mel keys, `bn0`, `conv_block*`, `fc1`, `fc_audioset`) loads through `pretrained=True` with
`pretrained_cfg_overlay=dict(file=...)`; `checkpoint_filter_fn` checks the stored front-end against ours.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d, SelectAdaptivePool2d, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from ._timm_private import feature_take_indices
from torch.utils.checkpoint import checkpoint

from ..data.audioset_labels import AUDIOSET_LABELS
from ..layers.audio import (
    AUDIO_POOL_TYPE, AUDIOSET_CLIP_SAMPLES, PANNS_FRONTEND, FreqMeanTimeMaxMeanPool,
    LogMelFrontend, SpecAugment,
)
from ._builder import build_zoo_model, zoo_checkpoint_filter

__all__ = ["PANN", "PannConvBlock", "PannNextBlock", "checkpoint_filter_fn", "BLOCK_TYPES"]

BLOCK_TYPES = ("conv5", "conv3", "dsc", "dsc_pw", "next")


class PannConvBlock(nn.Module):
    """PANNs ConvBlock and its DSC variants (`conv5`, `conv3`, `dsc`, `dsc_pw`); parameter names as the original."""

    def __init__(
            self, in_chs: int, out_chs: int, block_type: str = "conv3", pool: bool = True, drop_rate: float = 0.2,
            device=None, dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.block_type = block_type
        k = 5 if block_type == "conv5" else 3
        self.conv1 = nn.Conv2d(in_chs, out_chs, k, padding=k // 2, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(out_chs, **dd)
        if block_type != "conv5":
            groups = out_chs if block_type in ("dsc", "dsc_pw") else 1
            self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, groups=groups, bias=False, **dd)
            self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        if block_type == "dsc_pw":
            self.pwconv1 = nn.Linear(out_chs, 2 * out_chs, **dd)
            self.act = nn.GELU()
            self.pwconv2 = nn.Linear(2 * out_chs, out_chs, **dd)
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.block_type != "conv5":
            x = F.relu(self.bn2(self.conv2(x)))
        if self.block_type == "dsc_pw":
            x = self.pwconv2(self.act(self.pwconv1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return self.drop(self.pool(x))


class PannNextBlock(nn.Module):
    """The authors' ConvNeXt-style DSC block (`next`): depthwise 7x7 (channel multiplier out/in) -> LayerNorm ->
    pointwise MLP (4x, GELU); no residual connection and no layer scale, as in their Cnn*Next models."""

    def __init__(
            self, in_chs: int, out_chs: int, pool: bool = True, drop_rate: float = 0.2, device=None, dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if out_chs % in_chs:
            raise ValueError(f"PannNextBlock: out_chs ({out_chs}) must be a multiple of in_chs ({in_chs})")
        self.dwconv = nn.Conv2d(in_chs, out_chs, 7, padding=3, groups=in_chs, **dd)
        self.norm = nn.LayerNorm(out_chs, eps=1e-6, **dd)
        self.pwconv1 = nn.Linear(out_chs, 4 * out_chs, **dd)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * out_chs, out_chs, **dd)
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x)))).permute(0, 3, 1, 2)
        return self.drop(self.pool(x))


class PANN(nn.Module):
    """PANNs-style CNN on 32 kHz mono waveforms (B, samples), (B, 1, samples) or timm's (B, 1, 1, samples).

    Args:
        widths: output channels of each block.
        pools: whether each block ends with 2x2 average pooling (default: all but CNN14's last block).
        block_type: one of `BLOCK_TYPES` (see the module docstring).
        embed_dim: width of fc1, the embedding (`head_hidden_size`).
        global_pool: 'freq_mean_time_maxmean' (the original), a timm pool type ('avg', 'max', 'avgmax'), or ''
            (no pooling, only with num_classes=0: forward returns the last feature map).
        drop_rate: dropout before fc1 (0.5, the original). block_drop_rate: dropout after each block (0.2).
        spec_augment: SpecAugment (2 x <64 frames, 2 x <8 mel bins) in training, as the originals.
    """

    def __init__(
            self,
            widths: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
            pools: Optional[Sequence[bool]] = None,
            block_type: str = "conv3",
            embed_dim: Optional[int] = None,
            in_chans: int = 1,
            num_classes: int = 527,
            global_pool: str = AUDIO_POOL_TYPE,
            drop_rate: float = 0.5,
            block_drop_rate: float = 0.2,
            stem_width: int = 64,
            spec_augment: bool = True,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if in_chans != 1:
            raise ValueError(f"PANN takes mono waveforms (in_chans=1), got in_chans={in_chans}")
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        widths = tuple(widths)
        pools = tuple(pools) if pools is not None else (True,) * len(widths)
        if len(pools) != len(widths):
            raise ValueError(f"pools must have one entry per block ({len(widths)}), got {len(pools)}")
        dd = {"device": device, "dtype": dtype}
        self.in_chans = 1
        self.num_classes = num_classes
        self.block_type = block_type
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.frontend = LogMelFrontend(
            **PANNS_FRONTEND, spec_augment=SpecAugment(64, 2, 8, 2, time_dim=2, freq_dim=3) if spec_augment else None,
            **dd,
        )
        if block_type == "next":
            self.stem = nn.Sequential(nn.Conv2d(1, stem_width, 4, stride=2, **dd), LayerNorm2d(stem_width, eps=1e-6,
                                                                                              **dd))
            in_chs, stride = stem_width, 2
        else:
            self.stem = nn.Identity()
            in_chs, stride = 1, 1
        blocks, self.feature_info = [], []
        for i, (out_chs, pool) in enumerate(zip(widths, pools)):
            if block_type == "next":
                blocks.append(PannNextBlock(in_chs, out_chs, pool, block_drop_rate, **dd))
            else:
                blocks.append(PannConvBlock(in_chs, out_chs, block_type, pool, block_drop_rate, **dd))
            stride *= 2 if pool else 1
            self.feature_info.append(dict(num_chs=out_chs, reduction=stride, module=f"blocks.{i}"))
            in_chs = out_chs
        self.blocks = nn.Sequential(*blocks)
        if self._min_frames() > self.frontend.n_mels:  # the mel axis is fixed: no clip length would help
            raise ValueError(f"{len(widths)} blocks with {sum(pools)} poolings need at least {self._min_frames()} mel "
                             f"bins, the front-end has {self.frontend.n_mels}; use fewer pooling blocks")
        self.num_features = widths[-1]
        self.head_hidden_size = embed_dim or widths[-1]
        self.global_pool_type = global_pool
        self.global_pool = self._make_pool(global_pool, num_classes)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc1 = nn.Linear(self.num_features, self.head_hidden_size, **dd)
        self.head = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._init_weights()

    @staticmethod
    def _make_pool(global_pool: str, num_classes: int) -> nn.Module:
        if global_pool == AUDIO_POOL_TYPE:
            return FreqMeanTimeMaxMeanPool(time_dim=2, freq_dim=3)
        if global_pool == "":
            if num_classes:
                raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")
            return nn.Identity()
        pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=False)
        if pool.feat_mult() != 1:
            raise ValueError(f"global_pool {global_pool!r} changes the feature width; fc1 expects one vector per clip "
                             f"(use {AUDIO_POOL_TYPE!r}, 'avg', 'max' or 'avgmax')")
        return pool

    def _init_weights(self) -> None:
        # PANNs: Xavier-uniform convs and linears, zero biases; the authors' DSC / Next code: truncated normal 0.02.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if self.block_type in ("conv5", "conv3"):
                    nn.init.xavier_uniform_(module.weight)
                else:
                    trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # --------------------------------------------------------------------------------------------- timm contract
    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    def _min_frames(self) -> int:
        """Spectrogram size (frames, and mel bins) that leaves one row after the stem and every pooling."""
        size = 2 ** sum(isinstance(b.pool, nn.AvgPool2d) for b in self.blocks)
        return 4 + 2 * (size - 1) if self.block_type == "next" else size

    @property
    def min_samples(self) -> int:
        """Shortest clip that leaves at least one frame after the last block."""
        return max(self.frontend.min_samples, (self._min_frames() - 1) * self.frontend.hop_length)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # fc1 trains with the classifier (it is part of the head).
        return dict(stem=r"^frontend|^stem", blocks=[(r"^blocks\.(\d+)", None), (r"^fc1", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._make_pool(global_pool, num_classes).train(self.fc1.training)
            self.global_pool_type = global_pool
        elif self.global_pool_type == "" and num_classes:
            raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")
        device, dtype = self.fc1.weight.device, self.fc1.weight.dtype
        self.head = (nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype) if num_classes > 0
                     else nn.Identity()).train(self.fc1.training)  # a new head keeps the model's mode

    def _frontend(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() in (2, 3, 4) and x.shape[-1] < self.min_samples:
            raise ValueError(
                f"clip of {x.shape[-1]} samples is too short for {type(self).__name__}: at least {self.min_samples} "
                f"({self.min_samples / self.sample_rate:.2f} s at {self.sample_rate} Hz) are needed; pad it "
                "(dcls_zoo.data.audio_io.pad_or_crop pads to 10 s as the original demo does)"
            )
        return self.stem(self.frontend(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform -> last feature map (B, C, T', F'): time on dim 2, mel on dim 3."""
        x = self._frontend(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool_type == "":
            return x
        x = self.global_pool(x).flatten(1)
        x = F.relu(self.fc1(self.head_drop(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_clipwise_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform -> sigmoid(logits), (B, num_classes): the original's `clipwise_output`."""
        return torch.sigmoid(self.forward(x))

    def forward_scene_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform -> clip embedding relu(fc1(pooled)), (B, embed_dim): the original's `embedding` in eval."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's `forward_intermediates` on a waveform: the output of each block (after its pooling)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._frontend(x)
        blocks = self.blocks if not (stop_early or torch.jit.is_scripting()) else self.blocks[:max_index + 1]
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# Keys of the original models the zoo does not store: torchlibrosa's frozen STFT (DFT matrix times a periodic Hann
# window) and mel filter bank are recomputed by LogMelFrontend.
_ORIGINAL_FRONTEND_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")


def _expected_stft_weights(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchlibrosa's `conv_real` / `conv_imag` weights (n_fft // 2 + 1, 1, n_fft): window * cos / -sin."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * k * n / n_fft
    return (torch.cos(angle) * window)[:, None], (-torch.sin(angle) * window)[:, None]


def _check_original_frontend(state_dict: dict, model: PANN) -> None:
    mel = state_dict.get("logmel_extractor.melW")
    ours = model.frontend.mel_filters
    if mel is not None and ours.device.type != "meta" and (
            mel.shape != ours.shape or not torch.allclose(mel.float().cpu(), ours.float().cpu(), atol=1e-6)):
        raise ValueError(
            "checkpoint's logmel_extractor.melW differs from this model's mel filter bank "
            f"({tuple(mel.shape)} vs {tuple(ours.shape)}); it was trained with another front-end"
        )
    real, imag = state_dict.get("spectrogram_extractor.stft.conv_real.weight"), \
        state_dict.get("spectrogram_extractor.stft.conv_imag.weight")
    if real is None or imag is None:
        return
    expected_real, expected_imag = _expected_stft_weights(model.frontend.n_fft)
    for name, stored, expected in (("conv_real", real, expected_real), ("conv_imag", imag, expected_imag)):
        if stored.shape != expected.shape or not torch.allclose(stored.double().cpu(), expected, atol=1e-5):
            raise ValueError(
                f"checkpoint's spectrogram_extractor.stft.{name}.weight {tuple(stored.shape)} is not the STFT of this "
                f"model (n_fft {model.frontend.n_fft}, periodic Hann); it was trained with another front-end"
            )


@zoo_checkpoint_filter
def checkpoint_filter_fn(state_dict: dict, model: PANN) -> dict:
    """Original layout (PANNs / the authors' DSC code: a training dict's 'model') -> this model; ours passes through.

    Drops the frozen STFT / mel weights after checking them against the front-end (a mismatch would mean another
    front-end and silently wrong predictions); `bn0` -> `frontend.norm`, `conv_block*` -> `blocks.<i>` in order of
    appearance, `fc_audioset` -> `head`.
    """
    if not any(k.startswith(("conv_block", "bn0.", "fc_audioset.")) for k in state_dict):
        return state_dict  # already ours
    _check_original_frontend(state_dict, model)
    block_index: dict[str, int] = {}
    out = {}
    for k, v in state_dict.items():
        if k.startswith(_ORIGINAL_FRONTEND_PREFIXES):
            continue
        if k.startswith("bn0."):
            k = "frontend.norm." + k[len("bn0."):]
        elif k.startswith("conv_block"):
            name, rest = k.split(".", 1)
            k = f"blocks.{block_index.setdefault(name, len(block_index))}.{rest}"
        elif k.startswith("fc_audioset."):
            k = "head." + k[len("fc_audioset."):]
        out[k] = v
    return out


def _numpy_array_globals() -> list:
    """What `torch.load(weights_only=True)` must accept to read PANNs' training containers: besides 'model' they
    hold the sampler state (NumPy integer arrays). Array reconstruction only: no code can run from these. Both
    spellings of the reconstructor, as pickled under NumPy 1.x (`numpy.core`) and 2.x (`numpy._core`)."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    allowed: list = [np.ndarray, np.dtype, (np.dtype, "numpy.dtype")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(_reconstruct, f"{module}._reconstruct"), (scalar, f"{module}.scalar")]
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25 pickles the concrete dtype classes too
    if dtypes is not None:
        allowed += [getattr(dtypes, f"{kind}DType") for kind in (
            "Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64")]
    return allowed


def _create_pann(variant: str, pretrained: bool = False, **kwargs: Any) -> PANN:
    # PANNs checkpoints are training containers with NumPy sampler state next to the weights (see above).
    context = torch.serialization.safe_globals(_numpy_array_globals()) if pretrained else contextlib.nullcontext()
    with context:
        return build_zoo_model(
            PANN, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            # 'getter' features run forward_intermediates, i.e. through the front-end (waveform in).
            feature_cfg=dict(out_indices=tuple(range(len(kwargs.get("widths", ())))) or None, feature_cls="getter"),
            **kwargs,
        )


def _cfg(pool_size: tuple[int, int], min_samples: int, **kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 527, "input_size": (1, 1, AUDIOSET_CLIP_SAMPLES), "min_input_size": (1, 1, min_samples),
        "pool_size": pool_size, "mean": (0.0,), "std": (1.0,), "first_conv": "blocks.0.conv1",
        "classifier": "head", "label_names": AUDIOSET_LABELS, "license": "mit",
        **kwargs,
    }


_PANNS = dict(
    origin_url="https://github.com/qiuqiangkong/audioset_tagging_cnn", paper_ids="arXiv:1912.10211",
    paper_name="PANNs: Large-Scale Pretrained Audio Neural Networks for Audio Pattern Recognition",
)
_DSC = dict(
    origin_url="https://github.com/topel/audioset-convnext-inf", paper_ids="arXiv:2306.00830",
    paper_name="Adapting a ConvNeXt model to audio classification on AudioSet",
    notes=("no checkpoint is published for this variant (the authors released only the ConvNeXt weights)",
           "architecture from the authors' pytorch/models.py; see docs/reference/panns.md"),
)
_ZENODO = "https://zenodo.org/record/3987831/files/"
_NEXT_STEM = dict(first_conv="stem.0")

default_cfgs = generate_default_cfgs({
    "pann_cnn6.as2m": _cfg(
        (62, 4), 4800, url=_ZENODO + "Cnn6_mAP%3D0.343.pth", **_PANNS,
        notes=("AudioSet eval mAP 0.343 (PANNs paper)", "file Cnn6_mAP=0.343.pth, container key: model")),
    "pann_cnn10.as2m": _cfg(
        (62, 4), 4800, url=_ZENODO + "Cnn10_mAP%3D0.380.pth", **_PANNS,
        notes=("AudioSet eval mAP 0.380 (PANNs paper)", "file Cnn10_mAP=0.380.pth, container key: model")),
    "pann_cnn14.as2m": _cfg(
        (31, 2), 9920, url=_ZENODO + "Cnn14_mAP%3D0.431.pth", **_PANNS,
        notes=("AudioSet eval mAP 0.431 (PANNs paper)", "file Cnn14_mAP=0.431.pth, container key: model")),
    "pann_cnn14_dsc": _cfg((31, 2), 9920, **_DSC),
    "pann_cnn14_dsc_pw": _cfg((31, 2), 9920, **_DSC),
    "pann_cnn6_next": _cfg((62, 3), 5440, **_DSC, **_NEXT_STEM),
    "pann_cnn10_next": _cfg((124, 7), 2880, **_DSC, **_NEXT_STEM),
    "pann_cnn14_next": _cfg((31, 1), 10560, **_DSC, **_NEXT_STEM),
})

_CNN6_10 = dict(widths=(64, 128, 256, 512), embed_dim=512)
_CNN14 = dict(widths=(64, 128, 256, 512, 1024, 2048), pools=(True,) * 5 + (False,), embed_dim=2048)


def _next_pairs(widths: Sequence[int], last_pools: bool) -> dict[str, Any]:
    # Cnn10Next / Cnn14Next: per width, a block that widens (no pool) then one that keeps it (pool), the last
    # pair without pooling.
    pools = [p for i in range(len(widths)) for p in (False, last_pools or i < len(widths) - 1)]
    return dict(widths=tuple(w for w in widths for _ in range(2)), pools=tuple(pools), embed_dim=widths[-1])


@register_model
def pann_cnn6(pretrained: bool = False, **kwargs: Any) -> PANN:
    return _create_pann("pann_cnn6", pretrained, **dict(dict(_CNN6_10, block_type="conv5"), **kwargs))


@register_model
def pann_cnn10(pretrained: bool = False, **kwargs: Any) -> PANN:
    return _create_pann("pann_cnn10", pretrained, **dict(dict(_CNN6_10, block_type="conv3"), **kwargs))


@register_model
def pann_cnn14(pretrained: bool = False, **kwargs: Any) -> PANN:
    return _create_pann("pann_cnn14", pretrained, **dict(dict(_CNN14, block_type="conv3"), **kwargs))


@register_model
def pann_cnn14_dsc(pretrained: bool = False, **kwargs: Any) -> PANN:
    return _create_pann("pann_cnn14_dsc", pretrained, **dict(dict(_CNN14, block_type="dsc"), **kwargs))


@register_model
def pann_cnn14_dsc_pw(pretrained: bool = False, **kwargs: Any) -> PANN:
    return _create_pann("pann_cnn14_dsc_pw", pretrained, **dict(dict(_CNN14, block_type="dsc_pw"), **kwargs))


@register_model
def pann_cnn6_next(pretrained: bool = False, **kwargs: Any) -> PANN:
    model_args = dict(widths=(128, 256, 512), embed_dim=512, block_type="next")
    return _create_pann("pann_cnn6_next", pretrained, **dict(model_args, **kwargs))


@register_model
def pann_cnn10_next(pretrained: bool = False, **kwargs: Any) -> PANN:
    model_args = dict(_next_pairs((128, 256, 512), last_pools=False), block_type="next")
    return _create_pann("pann_cnn10_next", pretrained, **dict(model_args, **kwargs))


@register_model
def pann_cnn14_next(pretrained: bool = False, **kwargs: Any) -> PANN:
    model_args = dict(_next_pairs((128, 256, 512, 1024, 2048), last_pools=False), block_type="next")
    return _create_pann("pann_cnn14_next", pretrained, **dict(model_args, **kwargs))
