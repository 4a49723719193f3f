"""AudioSet ConvNeXt-Tiny: waveform in, 527 AudioSet logits out (front-end inside the model).

Paper: Adapting a ConvNeXt model to audio classification on AudioSet (Pellegrini, Khalfaoui-Hassani, Labbé,
Masquelier), Interspeech 2023, arXiv:2306.00830. Original code: https://github.com/topel/audioset-convnext-inf
(MIT). AudioSet mAP 0.471 (released checkpoint).

The model is timm's own `ConvNeXt` (ConvNeXt-T: depths 3-3-9-3, dims 96-192-384-768, 1 input channel) with:

* a `LogMelFrontend` (recipe (a), see `dcls_zoo.layers.audio`) in front: 32 kHz mono waveform -> 224 Slaney
  mels in dB -> BatchNorm over mel bins -> SpecAugment (training only), laid out (B, 1, time, mel);
* the stem conv padded in time: Conv2d(1, 96, 4, stride 4, padding (4, 0)), so 10 s (1001 frames x 224 mels)
  gives 252 x 56 after the stem and 31 x 7 after the last stage;
* the pooling of the original: mean over frequency, then max + mean over time (`global_pool='freq_mean_time_maxmean'`),
  then timm's head LayerNorm and classifier.

Mixup on the log-mel (the original's `mixup_lambda`) is not part of `forward`; trainers mix waveforms or targets.
Clips of any length of at least `min_samples` (0.23 s) are accepted; the original demo pads/crops to 10 s, which
`dcls_zoo.data.audio_io.pad_or_crop` does.

Checkpoints: the authors' Hugging Face safetensors (`topel/ConvNeXt-Tiny-AT`, gated: needs a token) and Zenodo
record 8020843 `.pth` files (PANNs-style training containers, weights under 'model'). Both hold the original key
layout (FB ConvNeXt names, `bn0`, `head_audioset`, and the frozen torchlibrosa STFT / mel weights);
`checkpoint_filter_fn` maps them to this model and checks the stored mel filter bank against ours.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models import convnext as timm_convnext
from timm.models import generate_default_cfgs, register_model

from ..data.audioset_labels import AUDIOSET_LABELS
from ..layers.audio import (
    AUDIO_POOL_TYPE,
    AUDIOSET_CLIP_SAMPLES,
    AUDIOSET_CONVNEXT_FRONTEND,
    FreqMeanTimeMaxMeanPool,
    LogMelFrontend,
    SpecAugment,
)
from ..layers.input_checks import DownsamplingChainMixin, check_input_dtype, input_checks_enabled
from ._builder import build_zoo_model, zoo_checkpoint_filter
from ._convnext import CONVNEXT_SIZES

__all__ = ["AudioSetConvNeXt", "checkpoint_filter_fn"]



class AudioSetConvNeXt(DownsamplingChainMixin, timm_convnext.ConvNeXt):
    """timm `ConvNeXt` on 32 kHz mono waveforms (B, samples) or (B, 1, samples), with the AudioSet front-end,
    time-padded stem and time/frequency pooling of the original.

    timm needs a 3-tuple `input_size`; the cfg says (1, 1, 320000) and the model also accepts (B, 1, 1, samples).

    Args:
        in_chans, num_classes: 1 (mono) and 527 (AudioSet).
        global_pool: 'freq_mean_time_maxmean' (the original), any timm pool type, or '' for no pooling.
        spec_augment: zero 2 time stripes (< 64 frames) and 2 mel stripes (< 28 bins) per clip in training.
        **kwargs: timm's `ConvNeXt` arguments, less those of the image stem (`stem_type`, `patch_size`) and
            `output_stride`.
    """

    def __init__(
            self,
            in_chans: int = 1,
            num_classes: int = 527,
            global_pool: str = AUDIO_POOL_TYPE,
            spec_augment: bool = True,
            device=None,
            dtype=None,
            **kwargs: Any,
    ) -> None:
        if in_chans != 1:
            raise ValueError(f"AudioSetConvNeXt takes mono waveforms (in_chans=1), got in_chans={in_chans}")
        fixed = sorted({"stem_type", "patch_size", "output_stride"} & set(kwargs))
        if fixed:
            raise TypeError(f"AudioSetConvNeXt takes no {', '.join(fixed)}: its time-padded stem is fixed")
        dd = {"device": device, "dtype": dtype}
        super().__init__(in_chans=1, num_classes=num_classes, global_pool=_timm_pool_type(global_pool), **dd,
                         **kwargs)
        # The original pads time by 4 on each side: 1001 frames -> 252 rows after the stem.
        stem_conv = nn.Conv2d(1, self.stem[0].out_channels, kernel_size=4, stride=4, padding=(4, 0), **dd)
        trunc_normal_(stem_conv.weight, std=0.02)
        nn.init.zeros_(stem_conv.bias)
        self.stem[0] = stem_conv
        if global_pool == AUDIO_POOL_TYPE:
            self._set_audio_pool()
        self.frontend = LogMelFrontend(
            **AUDIOSET_CONVNEXT_FRONTEND,
            spec_augment=SpecAugment(64, 2, 28, 2, time_dim=2, freq_dim=3) if spec_augment else None,
            **dd,
        )

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def min_samples(self) -> int:
        """Shortest clip that reaches the last stage (0.23 s at 32 kHz: 24 frames -> 8 stem rows -> 1 row), derived
        from the stem and downsampling layers along time (H)."""
        frames = self.min_input_size()[0]
        # The centred STFT gives 1 + samples // hop_length frames.
        return max(self.frontend.min_samples, (frames - 1) * self.frontend.hop_length)

    def _set_audio_pool(self) -> None:
        self.head.global_pool = FreqMeanTimeMaxMeanPool(time_dim=2, freq_dim=3).train(self.head.training)
        self.head.flatten = nn.Flatten(1).train(self.head.training)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        matcher = super().group_matcher(coarse)
        matcher["stem"] = r"^frontend|^stem"  # the front-end's BatchNorm trains with the stem
        return matcher

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False) -> None:
        if global_pool == AUDIO_POOL_TYPE:
            # Install the audio pool first, so the head builds a Linear (not a 1x1 conv) classifier.
            self._set_audio_pool()
            global_pool = None
        super().reset_classifier(num_classes, global_pool, reset_other=reset_other)

    def _frontend(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() in (2, 3, 4):
            # check here too so a too-short clip fails with a clear message, not inside a conv
            if x.shape[-1] < self.min_samples:
                raise ValueError(
                    f"clip of {x.shape[-1]} samples is too short for {type(self).__name__}: at least "
                    f"{self.min_samples} ({self.min_samples / self.sample_rate:.2f} s at {self.sample_rate} Hz) are "
                    "needed; pad it (dcls_zoo.data.audio_io.pad_or_crop pads to 10 s as the original demo does)"
                )
        if isinstance(x, torch.Tensor) and x.is_floating_point() and input_checks_enabled():
            check_input_dtype(x, self.stem[0].weight.dtype, type(self).__name__)
        return self.frontend(x)

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        """timm's `forward_intermediates`, on a waveform."""
        return super().forward_intermediates(self._frontend(x), *args, **kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform -> last-stage feature map (B, 768, T', F'); (31, 7) for a 10 s clip."""
        return super().forward_features(self._frontend(x))

    def forward_clipwise_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform -> per-class probabilities sigmoid(logits), (B, num_classes) (the original's clipwise_output)."""
        return torch.sigmoid(self.forward(x))

    def forward_scene_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform -> pooled, layer-normed clip embedding (B, 768), the classifier's input."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward_frame_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform -> last-stage map before pooling (B, 768, T', F'), time on dim 2, frequency on dim 3."""
        return self.forward_features(x)


def _timm_pool_type(global_pool: str) -> str:
    # timm's head cannot build the audio pool; it gets 'avg' and `_set_audio_pool` replaces it.
    return "avg" if global_pool == AUDIO_POOL_TYPE else global_pool


# Keys of the original model that the zoo does not store: the frozen torchlibrosa STFT (a DFT matrix times a
# Hann window) and mel filter bank are recomputed by LogMelFrontend.
_ORIGINAL_FRONTEND_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")


@zoo_checkpoint_filter
def checkpoint_filter_fn(state_dict: dict, model: AudioSetConvNeXt) -> dict:
    """Original layout (HF safetensors, or a Zenodo container's 'model') -> this model; ours passes through.

    Drops the frozen STFT / mel weights after checking that the stored mel filter bank equals the front-end's
    (a mismatch would mean a different front-end and silently wrong predictions), renames `bn0` ->
    `frontend.norm` and `head_audioset` -> `head`, then applies timm's FB-ConvNeXt remap.
    """
    if "stem.0.weight" in state_dict:
        return state_dict
    mel = state_dict.get("logmel_extractor.melW")
    if mel is not None:
        ours = model.frontend.mel_filters
        if ours.device.type != "meta" and (
                mel.shape != ours.shape or not torch.allclose(mel.float().cpu(), ours.float().cpu(), atol=1e-6)):
            raise ValueError(
                "checkpoint's logmel_extractor.melW differs from this model's mel filter bank "
                f"({tuple(mel.shape)} vs {tuple(ours.shape)}); it was trained with another front-end"
            )
    renamed = {}
    for k, v in state_dict.items():
        if k.startswith(_ORIGINAL_FRONTEND_PREFIXES):
            continue
        if k.startswith("bn0."):
            k = "frontend.norm." + k[len("bn0."):]
        elif k.startswith("head_audioset."):
            k = "head." + k[len("head_audioset."):]
        renamed[k] = v
    frontend = {k: v for k, v in renamed.items() if k.startswith("frontend.")}
    backbone = {k: v for k, v in renamed.items() if not k.startswith("frontend.")}
    return {**timm_convnext.checkpoint_filter_fn(backbone, model), **frontend}


def _create_audio_convnext(variant: str, pretrained: bool = False, **kwargs: Any) -> AudioSetConvNeXt:
    return build_zoo_model(
        AudioSetConvNeXt, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        # 'getter' features run forward_intermediates, i.e. through the front-end (waveform in).
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 527, "input_size": (1, 1, AUDIOSET_CLIP_SAMPLES), "min_input_size": (1, 1, 7360),
        "pool_size": (31, 7),
        "mean": (0.0,), "std": (1.0,), "first_conv": "stem.0", "classifier": "head.fc",
        "label_names": AUDIOSET_LABELS,
        "license": "mit", "origin_url": "https://github.com/topel/audioset-convnext-inf",
        "paper_ids": "arXiv:2306.00830", "paper_name": "Adapting a ConvNeXt model to audio classification on AudioSet",
        **kwargs,
    }


_ZENODO = "https://zenodo.org/record/8020843/files/"
default_cfgs = generate_default_cfgs({
    "convnext_audioset_tiny.as2m": _cfg(
        hf_hub_id="topel/ConvNeXt-Tiny-AT", hf_hub_filename="model.safetensors",
        notes=("AudioSet eval mAP 0.471, AUC 0.973, d' 3.071 (authors)",
               "input: 32 kHz mono waveform, 10 s clips (pad/crop)", "gated repository: needs a Hugging Face token")),
    "convnext_audioset_tiny.as2m_zenodo": _cfg(
        url=_ZENODO + "convnext_tiny_471mAP.pth",
        notes=("AudioSet eval mAP 0.471 (authors); same weights as .as2m", "container key: model")),
    "convnext_audioset_tiny.as2m_audiocaps": _cfg(
        url=_ZENODO + "convnext_tiny_465mAP_BL_AC_70kit.pth",
        notes=("AudioSet eval mAP 0.465 (authors); the checkpoint used for AudioCaps retrieval",
               "container key: model")),
})


@register_model
def convnext_audioset_tiny(pretrained: bool = False, **kwargs: Any) -> AudioSetConvNeXt:
    model_args = dict(CONVNEXT_SIZES["tiny"])
    return _create_audio_convnext("convnext_audioset_tiny", pretrained=pretrained, **dict(model_args, **kwargs))
