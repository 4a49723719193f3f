"""Spiking Heidelberg Digits (SHD) and Spiking Speech Commands (SSC): HDF5 event files -> binned spike counts.

The files of Cramer et al. (zenkelab.org) hold, per sample, the spike times in seconds (`spikes/times`), the
emitting cochlea channels 0..699 (`spikes/units`) and the class (`labels`). The SNN-delays models read them as
spikingjelly's frame datasets with ``duration=10`` and then sum groups of 5 neighbouring channels:

1. times x 1000 -> ms, shifted so that the first spike is at 0;
2. ``ceil(t_last / 10)`` frames of 10 ms; event k goes to frame ``t_k // 10`` (the last frame also takes an event
   exactly at its end), each frame counting spikes per channel -> (T, 700);
3. channels ``5j .. 5j + 4`` summed -> (T, 140), float32 counts.

`SpikingAudioDataset` reproduces that binning without spikingjelly (and without writing per-sample frame files);
batches are zero-padded to the longest sample by `pad_collate` (batch-first, as the models take them).

Reading the files needs h5py: ``pip install 'dcls-zoo[snn]'``.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SHD_NUM_CLASSES", "SSC_NUM_CLASSES", "NUM_CHANNELS", "bin_spike_events", "SpikingAudioDataset",
           "pad_collate"]

SHD_NUM_CLASSES = 20
SSC_NUM_CLASSES = 35
NUM_CHANNELS = 700


def _h5py():
    try:
        import h5py
    except ImportError as e:  # optional dependency
        raise ImportError("reading SHD/SSC HDF5 files needs h5py: pip install 'dcls-zoo[snn]'") from e
    return h5py


def bin_spike_events(
    times: np.ndarray,
    units: np.ndarray,
    duration_ms: float = 10,
    num_channels: int = NUM_CHANNELS,
    channel_bins: int = 5,
) -> np.ndarray:
    """Spike events of one sample (times in s, sorted; channel ids) -> counts (T, num_channels // channel_bins).

    Arithmetic as the original pipeline (numpy, in the dtype of `times`), so frame boundaries agree exactly.
    """
    times, units = np.asarray(times), np.asarray(units)
    if times.ndim != 1 or times.shape != units.shape:
        raise ValueError(f"times and units must be 1-D of equal length, got {times.shape} and {units.shape}")
    if times.size == 0:
        raise ValueError("the sample has no spikes; cannot bin an empty event list")
    if units.min() < 0 or units.max() >= num_channels:
        raise ValueError(f"channel ids must lie in [0, {num_channels}), got [{units.min()}, {units.max()}]")
    if num_channels % channel_bins:
        raise ValueError(f"num_channels ({num_channels}) must be divisible by channel_bins ({channel_bins})")
    t = 1000 * times
    t = t - t[0]
    num_frames = max(1, math.ceil(t[-1] / duration_ms))   # a sample whose spikes all share one time: one frame
    frame = np.minimum((t // duration_ms).astype(np.int64), num_frames - 1)
    counts = np.zeros((num_frames, num_channels), dtype=np.float32)
    np.add.at(counts, (frame, units.astype(np.int64)), 1.0)
    return counts.reshape(num_frames, num_channels // channel_bins, channel_bins).sum(-1)


class SpikingAudioDataset(Dataset):
    """SHD or SSC samples from one HDF5 file (e.g. ``shd_train.h5``, ``ssc_valid.h5``) as binned spike counts.

    Args:
        path: the HDF5 file.
        duration_ms: frame length (10 ms in the SNN-delays recipes).
        channel_bins: neighbouring channels summed (5: 700 -> 140 inputs).
        transform: optional callable on the (T, C) float32 tensor.

    Items are ``(counts (T, 700 // channel_bins) float32 tensor, label int)``. Note the original SHD recipe uses
    the test file as its validation set (SHD has no separate validation split).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        duration_ms: float = 10,
        channel_bins: int = 5,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> None:
        h5py = _h5py()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no HDF5 file at {self.path!r} (expected e.g. shd_train.h5 from zenkelab.org)")
        with h5py.File(self.path, "r") as f:
            missing = [k for k in ("spikes/times", "spikes/units", "labels") if k not in f]
            if missing:
                raise ValueError(f"{self.path!r} is not an SHD/SSC event file: missing {missing}")
            self.labels = np.asarray(f["labels"][()], dtype=np.int64)
        self.duration_ms = duration_ms
        self.channel_bins = channel_bins
        self.transform = transform
        self._file = None   # opened lazily, once per worker process

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._file is None:
            self._file = _h5py().File(self.path, "r")
        spikes = self._file["spikes"]
        counts = torch.from_numpy(bin_spike_events(
            spikes["times"][index], spikes["units"][index], self.duration_ms, NUM_CHANNELS, self.channel_bins))
        if self.transform is not None:
            counts = self.transform(counts)
        return counts, int(self.labels[index])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None   # h5py handles cannot cross process boundaries (DataLoader workers)
        return state


def pad_collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad samples to the longest: returns (x (B, T_max, C), labels (B,), lengths (B,))."""
    xs = [torch.as_tensor(x) for x, _ in batch]
    lengths = torch.tensor([x.shape[0] for x in xs], dtype=torch.long)
    labels = torch.tensor([int(y) for _, y in batch], dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(xs, batch_first=True), labels, lengths
