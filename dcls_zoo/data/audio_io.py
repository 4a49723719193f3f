"""Reading audio files and tagging them with an audio classifier.

WAV files are read with the standard library's `wave` (8-, 16-, 24- and 32-bit integer PCM); other formats and
float WAV need the optional `soundfile` package. Samples are scaled to [-1, 1) by 2 ** (bits - 1) (so int16 / 32768,
as DCLS-Audio's data pipeline; the AudioSet ConvNeXt divided by 32767, a 3e-5 relative difference).

There is no resampler here: a file at another rate than the model's is an error, not a silent conversion.
"""
from __future__ import annotations

import math
import wave
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["read_audio", "write_wav", "to_mono", "pad_or_crop", "split_clips", "tag_waveform", "audio_tagging_models"]


def _read_wav_stdlib(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as f:
        channels, width, rate, frames = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
        raw = f.readframes(frames)
    if len(raw) != frames * channels * width:
        raise ValueError(
            f"{path}: truncated WAV file: its header announces {frames} frames ({frames / max(rate, 1):.2f} s) but "
            f"it holds {len(raw) // max(channels * width, 1)}; the file is incomplete, copy or export it again"
        )
    if frames == 0:
        raise ValueError(f"{path}: the WAV file is empty (no samples)")
    if width == 1:      # 8-bit WAV is unsigned
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:    # packed little-endian 24-bit: widen to int32 by putting the bytes in the top three
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        data = ((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)).astype(np.float32) / 2.0 ** 31
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2.0 ** 31
    else:
        raise ValueError(f"{path}: unsupported WAV sample width of {width} bytes")
    return data.reshape(-1, channels).T.copy(), rate


def _check_wav_complete(path: Path) -> None:
    """A RIFF/WAVE file must hold the whole `data` chunk its header announces (any sample format: readers,
    libsndfile included, otherwise return the samples that are there without a word)."""
    import struct

    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(12)[8:12] != b"WAVE":
            return
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                held = size - offset - 8
                if held < chunk_size:
                    raise ValueError(
                        f"{path}: truncated WAV file: its header announces {chunk_size:,} bytes of samples but it "
                        f"holds {held:,}; the file is incomplete, copy or export it again"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)


def read_audio(path: Union[str, Path]) -> tuple[torch.Tensor, int]:
    """Read an audio file -> (float32 tensor (channels, samples) in [-1, 1), sample rate).

    Integer PCM WAV needs nothing beyond the standard library; float WAV, FLAC, OGG, ... need `soundfile`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    _check_wav_complete(path)
    try:
        data, rate = _read_wav_stdlib(path)
    except (wave.Error, EOFError) as stdlib_error:
        try:
            import soundfile
        except ImportError:
            raise ValueError(
                f"{path}: not an integer-PCM WAV file ({stdlib_error}); install `soundfile` to read other formats"
            ) from None
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        data = samples.T.copy()
    return torch.from_numpy(data), int(rate)


def write_wav(path: Union[str, Path], waveform: torch.Tensor, sample_rate: int) -> None:
    """Write (channels, samples) or (samples,) floats in [-1, 1] as 16-bit PCM WAV (clipping outside)."""
    x = waveform.detach().cpu().float()
    x = x[None] if x.dim() == 1 else x
    if x.dim() != 2:
        raise ValueError(f"write_wav: expected (channels, samples) or (samples,), got {tuple(waveform.shape)}")
    pcm = (x.clamp(-1.0, 1.0 - 1.0 / 32768) * 32768).round().to(torch.int16).T.contiguous().numpy()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(x.shape[0])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.astype("<i2").tobytes())


def to_mono(waveform: torch.Tensor) -> torch.Tensor:
    """(channels, samples) -> (samples,) by averaging channels; (samples,) passes through."""
    if waveform.dim() == 1:
        return waveform
    if waveform.dim() != 2:
        raise ValueError(f"to_mono: expected (channels, samples) or (samples,), got {tuple(waveform.shape)}")
    return waveform.mean(dim=0)


def pad_or_crop(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Zero-pad at the end or crop the end of the last dimension to `num_samples` (the original demo's 10 s rule)."""
    length = waveform.shape[-1]
    if length >= num_samples:
        return waveform[..., :num_samples]
    return torch.nn.functional.pad(waveform, (0, num_samples - length))


def split_clips(waveform: torch.Tensor, clip_samples: int) -> torch.Tensor:
    """(samples,) -> (num_clips, clip_samples): consecutive clips, the last one zero-padded; nothing dropped."""
    if waveform.dim() != 1:
        raise ValueError(f"split_clips: expected a mono (samples,) tensor, got {tuple(waveform.shape)}")
    if waveform.numel() == 0:
        raise ValueError("split_clips: the recording is empty")
    num_clips = -(-waveform.numel() // clip_samples)
    return pad_or_crop(waveform, num_clips * clip_samples).view(num_clips, clip_samples)


@torch.no_grad()
def tag_waveform(
        model: torch.nn.Module,
        waveform: torch.Tensor,
        sample_rate: int,
        *,
        top_k: int = 10,
        clip_seconds: float = 10.0,
        batch_size: int = 8,
        label_names: Optional[Sequence[str]] = None,
) -> list[tuple[str, float]]:
    """Top-k (label, probability) for a mono recording, with a sigmoid (multi-label) model taking waveforms.

    The recording is cut into `clip_seconds` clips (the last zero-padded, as the originals pad short clips) and
    each class keeps its highest probability over the clips.

    Raises ValueError if `sample_rate` differs from the model's (`model.sample_rate` or its front-end's).
    """
    frontend = getattr(model, "frontend", None)
    expected_rate = getattr(model, "sample_rate", None) or getattr(frontend, "sample_rate", None)
    if expected_rate is None:
        raise TypeError(f"{type(model).__name__} does not take waveforms (no front-end with a sample rate)")
    if int(sample_rate) != int(expected_rate):
        raise ValueError(
            f"audio sampled at {sample_rate} Hz, but the model expects {expected_rate} Hz; resample it first "
            f"(e.g. `sox in.wav -r {expected_rate} out.wav`)"
        )
    if waveform.dim() != 1:
        raise ValueError(f"tag_waveform: expected a mono (samples,) tensor, got {tuple(waveform.shape)}")
    if not torch.isfinite(waveform).all():
        raise ValueError("tag_waveform: the recording contains NaN or infinite samples")
    if not (math.isfinite(clip_seconds) and clip_seconds > 0):
        raise ValueError(f"the clip length (--clip-seconds) must be a positive number of seconds, got {clip_seconds}")
    clip_samples = int(round(clip_seconds * expected_rate))
    min_size = ((getattr(model, "pretrained_cfg", None) or {}).get("min_input_size") or (0,))[-1]
    if clip_samples < max(min_size, 1):
        shortest = math.ceil(max(min_size, 1) / expected_rate * 100) / 100
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
        raise ValueError(
            f"a clip of {clip_seconds:g} s is {clip_samples} samples at {expected_rate} Hz, but {name} needs at "
            f"least {max(min_size, 1)}: use clips of {shortest:g} s or more (--clip-seconds)"
        )
    clips = split_clips(waveform, clip_samples)
    param = next(model.parameters())
    probs = torch.cat([
        torch.sigmoid(model(batch.to(param.device, param.dtype)).float())
        for batch in clips.split(batch_size)
    ]).amax(dim=0)
    names = label_names or (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if not names or len(names) != probs.numel():
        names = [f"class_{i}" for i in range(probs.numel())]
    values, indices = probs.topk(min(top_k, probs.numel()))
    return [(names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def audio_tagging_models() -> dict[str, bool]:
    """The registered AudioSet tagging architectures (their pretrained_cfg names the AudioSet classes), each with
    whether it takes log-mel spectrograms (input size (1, mels, frames)) rather than waveforms ((1, 1, samples)).

    Read from the registry, so a new audio family is listed once its default_cfgs carry the AudioSet labels.
    """
    import timm
    from timm.models import get_pretrained_cfg

    from .audioset_labels import AUDIOSET_LABELS

    models = {}
    for name in timm.list_models():
        cfg = get_pretrained_cfg(name)
        if cfg is not None and cfg.label_names is not None and tuple(cfg.label_names) == AUDIOSET_LABELS:
            models[name] = cfg.input_size[1] > 1
    return models
