"""Data sets for training: loading through Hugging Face `datasets`, input checks, and reproducible sampling.

A data set is named by a Hub id, a local folder (image folder, audio folder, text files, a folder written by
`Dataset.save_to_disk`, or parquet/json/csv files) or a single text file; "digits" is scikit-learn's bundled
handwritten digits (no network needed), split into fixed train/test parts.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np
import torch

DIGITS_TEST_FRACTION = 0.2
_EVAL_SPLIT_NAMES = ("validation", "valid", "val", "test")


def load_digits_dataset(seed: int = 0):
    """scikit-learn's 1,797 8x8 digits as a `DatasetDict` with `train`/`test` splits (80/20, stratified by `seed`).

    Images are 8-bit grayscale PIL images (pixel values 0..16 scaled to 0..255), labels a `ClassLabel` 0..9.
    """
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
    })
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()}, features=features)
    return ds.train_test_split(test_size=DIGITS_TEST_FRACTION, stratify_by_column="label", seed=seed)


AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def _torchcodec_available() -> bool:
    try:
        import torchcodec  # noqa: F401
    except ImportError:
        return False
    return True


def _read_metadata(folder: str) -> dict[str, dict]:
    """`metadata.jsonl` / `metadata.csv` rows of an audio folder, by file name (audiofolder's convention)."""
    import csv
    import json

    rows: list[dict] = []
    if os.path.exists(os.path.join(folder, "metadata.jsonl")):
        with open(os.path.join(folder, "metadata.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif os.path.exists(os.path.join(folder, "metadata.csv")):
        with open(os.path.join(folder, "metadata.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
    if rows and "file_name" not in rows[0]:
        raise ValueError(f"{folder}: metadata rows need a 'file_name' column, got {', '.join(rows[0])}")
    return {os.path.normpath(os.path.join(folder, r.pop("file_name"))): r for r in rows}


def load_audio_folder(root: str):
    """An audio folder in `datasets`' audiofolder layout (split sub-folders or none; labels from `metadata.jsonl`/
    `metadata.csv` or from class sub-folder names) as a `DatasetDict` whose "audio" column holds file paths.

    `datasets` itself needs torchcodec (and FFmpeg) just to list audio files; the trainer decodes clips with
    soundfile, so this reader keeps the audio extra light.
    """
    import datasets

    def files_under(folder: str) -> list[str]:
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                      if f.lower().endswith(AUDIO_EXTENSIONS))

    splits = [s for s in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, s))
              and s in ("train", "test", "validation", "valid", "val")]
    out = {}
    for split, folder in ([(s, os.path.join(root, s)) for s in splits] or [("train", root)]):
        files = files_under(folder)
        if not files:
            raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder}")
        meta = _read_metadata(folder)
        if meta:
            missing = [f for f in files if os.path.normpath(f) not in meta]
            if missing:
                raise ValueError(f"{folder}: {len(missing)} audio file(s) have no metadata row, e.g. {missing[0]}")
            columns = {k: [meta[os.path.normpath(f)][k] for f in files] for k in next(iter(meta.values()))}
            out[split] = datasets.Dataset.from_dict({"audio": files, **columns})
        else:
            classes = sorted({os.path.basename(os.path.dirname(f)) for f in files})
            features = datasets.Features({"audio": datasets.Value("string"),
                                          "label": datasets.ClassLabel(names=classes)})
            out[split] = datasets.Dataset.from_dict(
                {"audio": files, "label": [classes.index(os.path.basename(os.path.dirname(f))) for f in files]},
                features=features)
    return datasets.DatasetDict(out)


SPIKE_SPLIT_SUFFIXES = {"train": "train", "test": "test", "valid": "validation", "validation": "validation"}


def load_spike_event_files(root: str):
    """SHD/SSC HDF5 event files (`<name>_train.h5`, `<name>_test.h5`, `<name>_valid.h5`) in `root` as a
    `DatasetDict` with columns `times` (seconds, the file's float dtype), `units` and `label` (ClassLabel).

    Train with `--input-column times,units --snn-channels 700 --snn-channel-bins 5` (the `snn-delays-shd` preset);
    SHD has no validation file, so, as in the SNN-delays recipe, its test file is the evaluation split.
    """
    import datasets

    try:
        import h5py
    except ImportError as err:
        raise ImportError("reading SHD/SSC HDF5 files needs h5py: pip install 'dcls-zoo[snn]'") from err
    files = {}
    for name in sorted(os.listdir(root)):
        stem, ext = os.path.splitext(name)
        suffix = stem.rsplit("_", 1)[-1]
        if ext in (".h5", ".hdf5") and suffix in SPIKE_SPLIT_SUFFIXES:
            files[SPIKE_SPLIT_SUFFIXES[suffix]] = os.path.join(root, name)
    if "train" not in files:
        raise ValueError(f"{root}: no <name>_train.h5 event file")
    raw = {}
    for split, path in files.items():
        with h5py.File(path, "r") as f:
            missing = [k for k in ("spikes/times", "spikes/units", "labels") if k not in f]
            if missing:
                raise ValueError(f"{path} is not an SHD/SSC event file: it lacks {', '.join(missing)}")
            raw[split] = (list(f["spikes/times"][()]), list(f["spikes/units"][()]),
                          np.asarray(f["labels"][()], dtype=np.int64))
    num_classes = int(max(int(r[2].max()) for r in raw.values())) + 1
    time_dtype = str(next(iter(raw.values()))[0][0].dtype)
    features = datasets.Features({
        "times": datasets.Sequence(datasets.Value(time_dtype)),
        "units": datasets.Sequence(datasets.Value("int32")),
        "label": datasets.ClassLabel(num_classes=num_classes),
    })
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"times": t, "units": [u.astype(np.int32) for u in units], "label": y},
                                          features=features)
        for split, (t, units, y) in raw.items()})


def _is_spike_event_folder(path: str) -> bool:
    return any(n.endswith((".h5", ".hdf5")) for n in os.listdir(path))


def _is_audio_folder(path: str) -> bool:
    for _, _, files in os.walk(path):
        if any(f.lower().endswith(AUDIO_EXTENSIONS) for f in files):
            return True
    return False


def _load_any(name: str, config_name: str | None):
    import datasets

    if name == "digits":
        return None  # handled by the caller, which knows the seed
    name = os.path.expanduser(name)
    if not os.path.exists(name) and name.startswith((".", "/")):
        raise FileNotFoundError(f"--dataset {name}: no such folder or file (a local path; Hub data sets are named "
                                "ORG/NAME)")
    if os.path.isfile(name):
        builder = "text" if name.endswith((".txt", ".text", ".md")) else None
        if builder is None:
            ext = os.path.splitext(name)[1].lstrip(".")
            builder = {"jsonl": "json"}.get(ext, ext)
        return datasets.load_dataset(builder, data_files={"train": name})
    if os.path.isdir(name):
        if os.path.exists(os.path.join(name, "dataset_dict.json")) or os.path.exists(os.path.join(name, "state.json")):
            loaded = datasets.load_from_disk(name)
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
        if _is_spike_event_folder(name):
            return load_spike_event_files(name)
        if not _torchcodec_available() and _is_audio_folder(name):
            return load_audio_folder(name)
        # datasets infers the builder (imagefolder, audiofolder, text, parquet, ...) from the files' extensions
        return datasets.load_dataset(name)
    return datasets.load_dataset(name, config_name)


def load_splits(
    dataset: str,
    *,
    dataset_config: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    eval_fraction: float = 0.2,
    label_column: str | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
):
    """Load `dataset` and return `(train, eval, eval_split_name)`.

    Without an evaluation split, `eval_fraction` of the training split is held out (with `seed`, stratified when
    the label column is a `ClassLabel`), so the same seed always gives the same split.
    """
    import datasets

    dsd = load_digits_dataset(seed) if dataset == "digits" else _load_any(dataset, dataset_config)
    if train_split not in dsd:
        raise ValueError(f"dataset {dataset!r} has no split {train_split!r} (splits: {', '.join(dsd)})")
    train = dsd[train_split]
    if eval_split is None:
        eval_split = next((s for s in _EVAL_SPLIT_NAMES if s in dsd and s != train_split), None)
    elif eval_split not in dsd:
        raise ValueError(f"dataset {dataset!r} has no split {eval_split!r} (splits: {', '.join(dsd)})")
    if eval_split is None:
        stratify = label_column if isinstance(train.features.get(label_column), datasets.ClassLabel) else None
        parts = train.train_test_split(test_size=eval_fraction, seed=seed, stratify_by_column=stratify)
        train, evaluation, eval_split = parts["train"], parts["test"], f"{train_split}[held-out {eval_fraction:g}]"
    else:
        evaluation = dsd[eval_split]
    if max_train_samples is not None:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples is not None:
        evaluation = evaluation.select(range(min(max_eval_samples, len(evaluation))))
    return train, evaluation, eval_split


def check_columns(ds, required: Sequence[str], split: str, hint: str = "") -> None:
    """One-line ValueError naming the missing column(s) and listing the columns the split has."""
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"split {split!r} has no column {', '.join(repr(m) for m in missing)}; its columns are "
            f"{', '.join(ds.column_names)}{hint}")


def check_class_labels(labels: Sequence[int] | np.ndarray, num_classes: int, split: str) -> None:
    """ValueError naming the first row whose integer label is outside [0, num_classes)."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"split {split!r}: labels must be integer class indices, got an array of {y.dtype} "
                         f"with shape {y.shape}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"split {split!r}: label {int(y[i])} in row {i} is outside [0, {num_classes}) "
                         f"({bad.size} bad row(s) in all)")


def check_multilabels(labels: Sequence[Sequence[int]], num_classes: int, split: str) -> None:
    """ValueError naming the first row with a class index outside [0, num_classes) (multi-label data)."""
    for i, row in enumerate(labels):
        for c in row:
            if not 0 <= int(c) < num_classes:
                raise ValueError(f"split {split!r}: class index {int(c)} in row {i} is outside [0, {num_classes})")


def num_classes_of(feature: Any) -> int | None:
    """Number of classes of a `ClassLabel` (or a sequence of them), else None."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        return inner.num_classes
    if isinstance(feature, list) and feature and isinstance(feature[0], datasets.ClassLabel):
        return feature[0].num_classes
    return None


def class_names_of(feature: Any) -> list[str] | None:
    import datasets

    for f in (feature, getattr(feature, "feature", None)):
        if isinstance(f, datasets.ClassLabel):
            return list(f.names)
    return None


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with the Python, NumPy and torch CPU generators seeded by `seed`, then restore all three.

    Per-sample augmentation runs under `seeded_rng(hash(run seed, epoch, index))`, so a sample's augmentation does
    not depend on which worker draws it, on prefetching, or on where an interrupted run resumed. Only the CPU
    generator is seeded (augmentation runs on the CPU): `torch.manual_seed` would also reseed every CUDA
    generator, whose state drop-path and dropout on the GPU depend on.
    """
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def sample_seed(*parts: int) -> int:
    digest = hashlib.blake2b(",".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class TransformedDataset(torch.utils.data.Dataset):
    """A `datasets.Dataset` mapped row by row through `transform(row) -> sample`.

    With `seed` set, each row's transform runs under its own RNG seeded by (seed, epoch, index); `set_epoch` is
    called by the trainer at every epoch start (also through Accelerate's prepared loader).
    """

    def __init__(self, rows, transform: Callable[[dict], Any], seed: int | None = None):
        self.rows = rows
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[int(index)]
        if self.seed is None:
            return self.transform(row)
        with seeded_rng(sample_seed(self.seed, self.epoch, int(index))):
            return self.transform(row)


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A random permutation per epoch, fixed by (seed, epoch): the order of any epoch can be recomputed on resume."""

    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        return iter(torch.randperm(self.length, generator=g).tolist())
