"""Audio front-ends: waveform -> log-mel spectrogram on the model's device, SpecAugment, time/frequency pooling.

One module, `LogMelFrontend`, covers the two recipes of the zoo's audio models:

* (a) the AudioSet ConvNeXt (Pellegrini et al., arXiv 2306.00830), `AUDIOSET_CONVNEXT_FRONTEND`:
  32 kHz, |STFT|^2 (n_fft 1024, hop 320, periodic Hann, centred with reflect padding), 224 Slaney mels with Slaney
  area normalisation (librosa's default) over 50-14000 Hz, 10*log10(max(x, 1e-10)), a BatchNorm over the mel
  bins, layout (B, 1, time, mel).
* (b) DCLS-Audio (Khalfaoui-Hassani et al., arXiv 2309.13972), `DCLS_AUDIO_FRONTEND`: the same STFT, 128 HTK mels
  without normalisation (torchaudio's `MelScale` defaults) over 50-14000 Hz, the same dB, then
  (x + 18.2696) / 30.5735, layout (B, 1, mel, time).

Why these libraries: the STFT is `torch.stft` (native, differentiable, any device). Mel filter banks come from
`transformers.audio_utils.mel_filter_bank`, already a dependency of the zoo, pure NumPy, and documented to be
bit-exact with `librosa.filters.mel` for the Slaney scale/norm in float32 and to build torchaudio's HTK filters
(triangles in Hz on the linear FFT grid). torchaudio is not used at run time: it is a compiled extension pinned to
one torch release, and its releases trail torch's, so depending on it would hold back torch upgrades.
The tests check both recipes against the original pipelines (torchlibrosa for (a); librosa and torchaudio for (b)).

The mel filter bank is a non-persistent float32 buffer (recomputed from the configuration, never stored in
checkpoints; `init_non_persistent_buffers()` rebuilds it after meta-device initialisation). Spectrograms are
computed in float32 (float64 for float64 input, with a float64 Hann window) and returned in the input's dtype.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    "LogMelFrontend", "SpecAugment", "FreqMeanTimeMaxMeanPool", "AUDIOSET_CONVNEXT_FRONTEND", "DCLS_AUDIO_FRONTEND",
    "PANNS_FRONTEND", "AUDIO_POOL_TYPE", "check_waveform", "AUDIOSET_SAMPLE_RATE", "AUDIOSET_CLIP_SAMPLES",
]

# Every AudioSet model of the zoo hears 10-s clips at 32 kHz (both recipes below, PANNs included).
AUDIOSET_SAMPLE_RATE = 32000
AUDIOSET_CLIP_SAMPLES = 10 * AUDIOSET_SAMPLE_RATE

# Recipe (a): topel/audioset-convnext-inf (torchlibrosa Spectrogram + LogmelFilterBank, then bn0 over mel bins).
AUDIOSET_CONVNEXT_FRONTEND = dict(
    sample_rate=AUDIOSET_SAMPLE_RATE, n_fft=1024, hop_length=320, n_mels=224, f_min=50.0, f_max=14000.0,
    mel_scale="slaney", mel_norm="slaney", layout="time_mel", normalization="batchnorm",
)
# PANNs (qiuqiangkong/audioset_tagging_cnn, and the authors' PANN-DSC experiments): recipe (a) with 64 mels.
PANNS_FRONTEND = dict(AUDIOSET_CONVNEXT_FRONTEND, n_mels=64)
# Recipe (b): K-H-Ismail/DCLS-Audio (torchaudio Spectrogram, MelScale, AmplitudeToDB, Normalize(-18.2696, 30.5735)).
DCLS_AUDIO_FRONTEND = dict(
    sample_rate=AUDIOSET_SAMPLE_RATE, n_fft=1024, hop_length=320, n_mels=128, f_min=50.0, f_max=14000.0,
    mel_scale="htk", mel_norm=None, layout="mel_time", normalization="fixed", mean=-18.2696, std=30.5735,
)

_LAYOUTS = ("time_mel", "mel_time")
_NORMALIZATIONS = ("batchnorm", "fixed", None)


def check_waveform(waveform: torch.Tensor, *, min_samples: int = 1, what: str = "waveform") -> torch.Tensor:
    """Validate a mono batch of waveforms and return it as (batch, samples).

    Accepts (batch, samples), (batch, 1, samples) or timm's (batch, 1, 1, samples) floating tensors. Raises
    TypeError for non-tensors and integer samples (scale int16 PCM to [-1, 1) first), and ValueError for other
    shapes, multi-channel input, clips shorter than `min_samples` and non-finite samples.
    """
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor of shape (batch, samples), got {type(waveform).__name__}")
    if not waveform.is_floating_point():
        raise TypeError(
            f"{what}: expected floating-point samples in [-1, 1], got {waveform.dtype} "
            "(convert integer PCM first, e.g. x.float() / 32768)"
        )
    if waveform.dim() == 4 and waveform.shape[1:3] == (1, 1):
        waveform = waveform[:, 0]  # timm's (B, *input_size) with input_size = (1, 1, samples)
    if waveform.dim() == 3:
        if waveform.shape[1] != 1:
            raise ValueError(
                f"{what}: expected mono audio (batch, samples) or (batch, 1, samples), got {waveform.shape[1]} "
                f"channels in shape {tuple(waveform.shape)}; downmix first (e.g. x.mean(dim=1))"
            )
        waveform = waveform[:, 0]
    elif waveform.dim() != 2:
        raise ValueError(
            f"{what}: expected shape (batch, samples) or (batch, 1, samples), got {tuple(waveform.shape)}"
            + ("; add a batch dimension with x[None]" if waveform.dim() == 1 else "")
        )
    if waveform.shape[-1] < min_samples:
        raise ValueError(
            f"{what}: clip of {waveform.shape[-1]} samples is too short, at least {min_samples} are needed "
            "(pad the clip, e.g. with zeros, to the length the model expects)"
        )
    if not torch.jit.is_tracing() and not bool(torch.isfinite(waveform).all()):
        raise ValueError(f"{what}: contains NaN or infinite samples")
    return waveform


class LogMelFrontend(nn.Module):
    """Waveform (B, samples) or (B, 1, samples) -> log-mel spectrogram (B, 1, T, M) or (B, 1, M, T).

    T = 1 + samples // hop_length (centred frames), M = n_mels.

    Args:
        sample_rate: rate the model was trained at; `forward(x, sample_rate=...)` rejects any other.
        n_fft, hop_length, win_length: STFT geometry (periodic Hann window of `win_length`, zero-padded to n_fft).
        n_mels, f_min, f_max: mel filter bank size and band edges in Hz.
        mel_scale: 'slaney' (librosa default) or 'htk' (torchaudio default).
        mel_norm: 'slaney' (area normalisation, librosa default) or None (torchaudio default).
        amin: power floor before the logarithm; silence maps to 10*log10(amin) dB (-100 dB by default).
        top_db: if set, clamp each spectrogram to (its max - top_db) dB (per clip).
        layout: 'time_mel' -> (B, 1, T, M); 'mel_time' -> (B, 1, M, T).
        normalization: 'batchnorm' (learnable BatchNorm over the mel bins, recipe a), 'fixed' ((x - mean) / std,
            recipe b) or None.
        mean, std: constants for normalization='fixed'.
        spec_augment: optional `SpecAugment` applied after normalisation, in training only.
    """

    def __init__(
            self,
            sample_rate: int = 32000,
            n_fft: int = 1024,
            hop_length: int = 320,
            win_length: Optional[int] = None,
            n_mels: int = 128,
            f_min: float = 50.0,
            f_max: Optional[float] = 14000.0,
            mel_scale: str = "htk",
            mel_norm: Optional[str] = None,
            amin: float = 1e-10,
            top_db: Optional[float] = None,
            layout: str = "mel_time",
            normalization: Optional[str] = "fixed",
            mean: float = 0.0,
            std: float = 1.0,
            spec_augment: Optional[SpecAugment] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        f_max = sample_rate / 2 if f_max is None else f_max
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        if mel_scale not in ("slaney", "htk"):
            raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {mel_scale!r}")
        if mel_norm not in ("slaney", None):
            raise ValueError(f"mel_norm must be 'slaney' or None, got {mel_norm!r}")
        if not 0 < win_length <= n_fft or hop_length <= 0:
            raise ValueError(
                f"need 0 < win_length <= n_fft and hop_length > 0, got {win_length}, {n_fft}, {hop_length}"
            )
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}, {sample_rate}")
        if normalization == "fixed" and not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.sample_rate = int(sample_rate)
        self.n_fft, self.hop_length, self.win_length = int(n_fft), int(hop_length), int(win_length)
        self.n_mels, self.f_min, self.f_max = int(n_mels), float(f_min), float(f_max)
        self.mel_scale, self.mel_norm = mel_scale, mel_norm
        self.amin, self.top_db = float(amin), top_db
        self.layout, self.normalization = layout, normalization
        self.mean, self.std = float(mean), float(std)
        dd = {"device": device, "dtype": dtype}
        # float32 whatever `dtype` says: bf16 filters would shift the features by ~0.4 %
        self.register_buffer(
            "mel_filters", torch.empty(n_fft // 2 + 1, self.n_mels, device=device, dtype=torch.float32),
            persistent=False,
        )
        self.norm = nn.BatchNorm2d(self.n_mels, **dd) if normalization == "batchnorm" else None
        self.spec_augment = spec_augment
        self.init_non_persistent_buffers()

    @property
    def min_samples(self) -> int:
        """Shortest clip the centred, reflect-padded STFT accepts."""
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Number of spectrogram frames for a clip of `num_samples`."""
        return 1 + num_samples // self.hop_length

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """(Re)compute the mel filter bank from the configuration (e.g. after meta-device initialisation)."""
        # Imported here: transformers' audio utilities pull in nothing heavy, but keep `import dcls_zoo` lean.
        from transformers.audio_utils import mel_filter_bank

        if self.mel_filters.device.type == "meta":
            return
        filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=self.n_mels, min_frequency=self.f_min,
            max_frequency=self.f_max, sampling_rate=self.sample_rate, norm=self.mel_norm, mel_scale=self.mel_scale,
            dtype=np.float32,
        )
        self.mel_filters.copy_(torch.from_numpy(np.ascontiguousarray(filters)))

    def power_spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> |STFT|^2 of shape (B, n_fft // 2 + 1, T), in float32 (float64 for float64 input)."""
        compute_dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
        if waveform.shape[0] == 0:  # torch.stft refuses an empty batch; the result is simply empty
            return waveform.new_zeros(
                (0, self.n_fft // 2 + 1, self.num_frames(waveform.shape[-1])), dtype=compute_dtype)
        spec = torch.stft(
            waveform.to(compute_dtype), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window=torch.hann_window(self.win_length, periodic=True, dtype=compute_dtype, device=waveform.device),
            center=True, pad_mode="reflect", normalized=False, onesided=True,
            return_complex=True,
        )
        return spec.real.square() + spec.imag.square()

    def power_to_db(self, power: torch.Tensor) -> torch.Tensor:
        """10 * log10(max(power, amin)), optionally clamped to top_db below each clip's maximum."""
        db = 10.0 * torch.log10(power.clamp(min=self.amin))
        if self.top_db is not None:
            peak = db.amax(dim=tuple(range(1, db.dim())), keepdim=True)
            db = torch.maximum(db, peak - self.top_db)
        return db

    def forward(self, waveform: torch.Tensor, sample_rate: Optional[int] = None) -> torch.Tensor:
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise ValueError(
                f"audio sampled at {sample_rate} Hz, but this front-end expects {self.sample_rate} Hz; resample first"
            )
        waveform = check_waveform(waveform, min_samples=self.min_samples)
        power = self.power_spectrogram(waveform)                                     # (B, F, T)
        mel = torch.matmul(power.transpose(1, 2), self.mel_filters.to(power.dtype))  # (B, T, M)
        # Half-precision input is transformed in float32 and returned in its own dtype.
        x = self.power_to_db(mel).unsqueeze(1).to(waveform.dtype)                    # (B, 1, T, M)
        if self.layout == "mel_time":
            x = x.transpose(2, 3)
        if self.normalization == "batchnorm":
            # BatchNorm2d normalises dim 1: move the mel axis there and back.
            mel_dim = 3 if self.layout == "time_mel" else 2
            x = self.norm(x.transpose(1, mel_dim)).transpose(1, mel_dim)
        elif self.normalization == "fixed":
            x = (x - self.mean) / self.std
        if self.spec_augment is not None:
            x = self.spec_augment(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"n_mels={self.n_mels}, f_min={self.f_min}, f_max={self.f_max}, mel_scale={self.mel_scale!r}, "
            f"mel_norm={self.mel_norm!r}, layout={self.layout!r}, normalization={self.normalization!r}"
        )


class SpecAugment(nn.Module):
    """Zero random time and frequency stripes of a (B, C, ...) spectrogram, in training only (Park et al. 2019).

    For each clip, `time_stripes` stripes of width w drawn uniformly from [0, time_width) start at a position drawn
    uniformly from [0, size - w) (likewise along frequency); the same distribution as torchlibrosa's `SpecAugmentation`
    used by the AudioSet ConvNeXt (time 64 x 2, freq 28 x 2), but vectorised and not in place.

    Args:
        time_dim, freq_dim: tensor dimensions of time and frequency (2, 3 for (B, 1, T, M); 3, 2 for (B, 1, M, T)).
    """

    def __init__(
            self,
            time_width: int = 64,
            time_stripes: int = 2,
            freq_width: int = 28,
            freq_stripes: int = 2,
            time_dim: int = 2,
            freq_dim: int = 3,
    ):
        super().__init__()
        if min(time_width, freq_width) < 1 or min(time_stripes, freq_stripes) < 0:
            raise ValueError("SpecAugment: widths must be >= 1 and stripe counts >= 0")
        self.time_width, self.time_stripes, self.time_dim = time_width, time_stripes, time_dim
        self.freq_width, self.freq_stripes, self.freq_dim = freq_width, freq_stripes, freq_dim

    def _keep_mask(self, x: torch.Tensor, dim: int, width: int, stripes: int) -> torch.Tensor:
        """(B, size) boolean mask, False inside the dropped stripes."""
        batch, size = x.shape[0], x.shape[dim]
        if width >= size:
            raise ValueError(f"SpecAugment: stripe width {width} must be smaller than the size {size} of dim {dim}")
        widths = torch.randint(0, width, (batch, stripes, 1), device=x.device)
        # start uniform in [0, size - width), as torchlibrosa's randint(0, size - width)
        starts = (torch.rand(batch, stripes, 1, device=x.device) * (size - widths)).floor().long()
        pos = torch.arange(size, device=x.device)
        dropped = ((pos >= starts) & (pos < starts + widths)).any(dim=1)
        return ~dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.ones(x.shape[0], *([1] * (x.dim() - 1)), dtype=torch.bool, device=x.device)
        for dim, width, stripes in (
                (self.time_dim, self.time_width, self.time_stripes),
                (self.freq_dim, self.freq_width, self.freq_stripes),
        ):
            if stripes == 0:
                continue
            mask = self._keep_mask(x, dim, width, stripes)
            shape = [x.shape[0]] + [1] * (x.dim() - 1)
            shape[dim] = x.shape[dim]
            keep = keep & mask.view(shape)
        return x * keep.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"time_width={self.time_width}, time_stripes={self.time_stripes}, "
            f"freq_width={self.freq_width}, freq_stripes={self.freq_stripes}"
        )


AUDIO_POOL_TYPE = "freq_mean_time_maxmean"


class FreqMeanTimeMaxMeanPool(nn.Module):
    """(B, C, T, F) -> (B, C, 1, 1): mean over frequency, then max + mean over time (the AudioSet ConvNeXt pooling).

    Exposes `is_identity()` / `feat_mult()` so it can stand in for timm's `SelectAdaptivePool2d` inside a head.
    """

    def __init__(self, time_dim: int = 2, freq_dim: int = 3):
        super().__init__()
        if {time_dim, freq_dim} != {2, 3}:
            raise ValueError(f"time_dim and freq_dim must be 2 and 3 in some order, got {time_dim}, {freq_dim}")
        self.time_dim, self.freq_dim = time_dim, freq_dim
        self.pool_type = AUDIO_POOL_TYPE

    def is_identity(self) -> bool:
        return False

    def feat_mult(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=self.freq_dim, keepdim=True)
        return x.amax(dim=self.time_dim, keepdim=True) + x.mean(dim=self.time_dim, keepdim=True)

    def extra_repr(self) -> str:
        return f"time_dim={self.time_dim}, freq_dim={self.freq_dim}"
