"""Task adapters: what differs between image classification, audio tagging, causal LM and SNN classification.

An adapter checks the data set (columns, labels), builds the model, turns a row into a sample (transforms),
collates samples into a batch `{"inputs": ..., "targets": ...}`, computes the loss and accumulates the
evaluation metrics. The trainer does everything else identically for the four kinds.
"""
from __future__ import annotations

import io
import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.spikes import bin_spike_events
from ..layers.metrics import mean_average_precision
from .config import TASKS, TrainConfig
from .data import (
    check_class_labels,
    check_columns,
    check_multilabels,
    class_names_of,
    num_classes_of,
)
from .metrics import perplexity, topk_hits

_logger = logging.getLogger(__name__)


class TaskAdapter:
    """Base adapter. Subclasses set the class attributes below and implement the hooks; a new kind is registered
    by one line in `dcls_zoo.train.config.TASKS`."""

    description = ""  # what the model card says the model was trained for
    pipeline_tag: str | None = None  # the Hub's task name, in the card's metadata
    library_name = "timm"  # the library that loads the saved folder: timm, or transformers (Auto classes)
    default_input_column = ""
    main_metric = "loss"  # key of the metric shown in cards and curves
    greater_is_better = False

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.input_column = cfg.input_column or self.default_input_column
        self.num_classes: int | None = cfg.num_classes
        self.class_names: list[str] | None = None
        self.data_config: dict[str, Any] = {}
        self.head_replaced: str | None = None  # log line when fine-tuning replaced the classifier

    # --- data -------------------------------------------------------------------------------------------
    def _required_columns(self) -> list[str]:
        return [c.strip() for c in self.input_column.split(",")] + [self.cfg.label_column]

    def check_data(self, train, evaluation, eval_split: str) -> None:
        hint = "; choose them with --input-column / --label-column"
        for ds, split in ((train, self.cfg.train_split), (evaluation, eval_split)):
            check_columns(ds, self._required_columns(), split, hint)
        feature = train.features[self.cfg.label_column]
        if self.num_classes is None:
            self.num_classes = num_classes_of(feature)
        if self.num_classes is None:
            raise ValueError(f"cannot tell the number of classes: column {self.cfg.label_column!r} is not a "
                             "ClassLabel; pass --num-classes")
        self.class_names = class_names_of(feature)
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            self.class_names = None
        for ds, split in ((train, self.cfg.train_split), (evaluation, eval_split)):
            self._check_labels(ds, split)

    def _check_labels(self, ds, split: str) -> None:
        check_class_labels(np.asarray(ds[self.cfg.label_column]), self.num_classes, split)

    def prepare_rows(self, ds, training: bool):
        """Row-level preprocessing done once (e.g. tokenisation); default: none."""
        return ds

    def transform(self, row: dict, training: bool) -> dict:
        raise NotImplementedError

    def collate(self, samples: list[dict]) -> dict:
        return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}

    def batch_augment(self, batch: dict) -> dict:
        """Batch-level training augmentation (mixup/cutmix); uses the global RNG, whose state checkpoints keep."""
        return batch

    # --- model ------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return self._build_timm_model()

    def setup_inputs(self, model: nn.Module) -> None:
        """Resolve the input pipeline for `model` (from its pretrained_cfg where it has one)."""

    def _build_timm_model(self, **extra: Any) -> nn.Module:
        import timm

        cfg = self.cfg
        name = cfg.model
        if not name.startswith(("local-dir:", "hf-hub:")) and not timm.is_model(name.split(".")[0]):
            close = timm.list_models(f"*{name.split('.')[0][:4]}*")[:5]
            raise ValueError(f"--model {name!r} is not a registered timm model" + (
                f" (similar: {', '.join(close)})" if close else "") + "; list them with `dcls-zoo models` or "
                "timm.list_models()")
        if name.startswith("local-dir:") and not os.path.isdir(name[len("local-dir:"):]):
            raise FileNotFoundError(f"--model {name}: no such folder")
        kwargs: dict[str, Any] = dict(cfg.model_kwargs)
        kwargs.update(extra)
        if cfg.in_chans is not None:
            kwargs["in_chans"] = cfg.in_chans
        if cfg.drop_path is not None:
            kwargs["drop_path_rate"] = cfg.drop_path
        if cfg.pretrained:
            # Load with the checkpoint's own head, then replace it explicitly (and say so) if the data differs.
            model = timm.create_model(cfg.model, pretrained=True, **kwargs)
            old = model.num_classes
            if old != self.num_classes:
                head = model.pretrained_cfg.get("classifier", "classifier")
                model.reset_classifier(self.num_classes)
                self.head_replaced = (f"replaced the pretrained head {head!r} ({old} classes) by a new, randomly "
                                      f"initialised one with {self.num_classes} classes")
                _logger.warning(self.head_replaced)
        else:
            model = timm.create_model(cfg.model, pretrained=False, num_classes=self.num_classes, **kwargs)
        return model

    # --- loss and metrics -------------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["inputs"])

    def loss(self, outputs: Any, batch: dict, training: bool) -> torch.Tensor:
        raise NotImplementedError

    def eval_step(self, outputs: Any, batch: dict) -> dict[str, torch.Tensor]:
        """Per-batch tensors to gather across processes (first dim = batch) for `compute_metrics`."""
        raise NotImplementedError

    def compute_metrics(self, gathered: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError


def _as_pil(value: Any, mode: str):
    from PIL import Image

    if isinstance(value, dict):  # an undecoded datasets Image value: decoded here, so a bad file is named
        where = value.get("path") or "an image stored in the data set"
        try:
            value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
            value.load()
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"cannot read image {where}: {reason} (corrupt or truncated?); fix or remove it from "
                             "the data set") from None
    elif isinstance(value, np.ndarray):
        value = Image.fromarray(value)
    return value if value.mode == mode else value.convert(mode)


class ImageClassification(TaskAdapter):
    description = "image classification"
    pipeline_tag = "image-classification"
    default_input_column = "image"
    main_metric = "accuracy"
    greater_is_better = True

    def setup_inputs(self, model: nn.Module) -> None:
        from timm.data import create_transform, resolve_data_config

        cfg = self.cfg
        overrides: dict[str, Any] = {"interpolation": cfg.interpolation}
        in_chans = getattr(model, "in_chans", cfg.in_chans or 3)
        if cfg.img_size is not None:
            overrides["input_size"] = (in_chans, cfg.img_size, cfg.img_size)
        for name in ("mean", "std", "crop_pct"):
            if getattr(cfg, name) is not None:
                overrides[name] = getattr(cfg, name)
        data_config = resolve_data_config(overrides, model=model)
        data_config["input_size"] = (in_chans, *data_config["input_size"][1:])
        if len(data_config["mean"]) != in_chans or len(data_config["std"]) != in_chans:
            raise ValueError(f"mean/std have {len(data_config['mean'])}/{len(data_config['std'])} values but the "
                             f"model takes {in_chans} input channel(s); pass --mean/--std with {in_chans} values")
        self.data_config = data_config
        self.image_mode = {1: "L", 3: "RGB"}.get(in_chans)
        if self.image_mode is None:
            raise ValueError(f"image task supports 1 or 3 input channels, the model has {in_chans}")
        self.train_tf = create_transform(
            data_config["input_size"], is_training=True, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
            auto_augment=cfg.auto_augment, interpolation=data_config["interpolation"], mean=data_config["mean"],
            std=data_config["std"], re_prob=cfg.reprob)
        self.eval_tf = create_transform(
            data_config["input_size"], is_training=False, interpolation=data_config["interpolation"],
            mean=data_config["mean"], std=data_config["std"], crop_pct=data_config["crop_pct"])
        self.mixup_fn = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                                  num_classes=self.num_classes)

    def prepare_rows(self, ds, training):
        import datasets

        if isinstance(ds.features.get(self.input_column), datasets.Image):
            ds = ds.cast_column(self.input_column, datasets.Image(decode=False))  # decoded by `_as_pil`
        return ds

    def transform(self, row: dict, training: bool) -> dict:
        image = _as_pil(row[self.input_column], self.image_mode)
        tf = self.train_tf if training else self.eval_tf
        return {"inputs": tf(image), "targets": torch.tensor(int(row[self.cfg.label_column]))}

    def batch_augment(self, batch: dict) -> dict:
        if self.mixup_fn is None:
            return batch
        if batch["inputs"].shape[0] % 2:
            raise ValueError("mixup/cutmix need an even batch size")
        inputs, targets = self.mixup_fn(batch["inputs"], batch["targets"])
        return {"inputs": inputs, "targets": targets}

    def loss(self, outputs, batch, training):
        targets = batch["targets"]
        if targets.ndim == 2:  # soft targets from mixup/cutmix
            return torch.sum(-targets * F.log_softmax(outputs.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(outputs.float(), targets, label_smoothing=self.cfg.smoothing if training else 0.0)

    def eval_step(self, outputs, batch):
        logits, targets = outputs.float(), batch["targets"]
        return {
            "loss": F.cross_entropy(logits, targets, reduction="none"),
            "correct": topk_hits(logits, targets, 1).float(),
            "correct5": topk_hits(logits, targets, 5).float(),
        }

    def compute_metrics(self, g):
        metrics = {"loss": float(g["loss"].mean()), "accuracy": float(g["correct"].mean())}
        if self.num_classes > 5:
            metrics["top5_accuracy"] = float(g["correct5"].mean())
        return metrics


def decode_audio(value: Any) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 array and its sample rate, from an undecoded `datasets.Audio` value."""
    if isinstance(value, dict) and "array" in value:
        array = np.asarray(value["array"], dtype=np.float32)
        return (array[:, None] if array.ndim == 1 else array.T), int(value["sampling_rate"])
    try:
        import soundfile
    except ImportError as err:  # pragma: no cover - soundfile is in the `train` extra
        raise ImportError("audio decoding needs soundfile: pip install 'dcls-zoo[train]'") from err
    source = io.BytesIO(value["bytes"]) if isinstance(value, dict) and value.get("bytes") else (
        value["path"] if isinstance(value, dict) else value)
    try:
        array, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, EOFError) as err:  # soundfile's LibsndfileError is a RuntimeError
        where = (value.get("path") if isinstance(value, dict) else value) or "a clip stored in the data set"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"cannot read audio {where}: {reason} (corrupt or truncated?); fix or remove it from the "
                         "data set") from None
    return array, int(rate)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal (scipy)."""
    if rate == target:
        return wave
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


class AudioTagging(TaskAdapter):
    """Multi-label audio tagging: BCE on multi-hot targets, macro mAP; the model takes (batch, samples) waveforms
    (its front-end computes the spectrogram), as the zoo's audio models do."""

    description = "audio tagging"
    pipeline_tag = "audio-classification"
    default_input_column = "audio"
    main_metric = "mAP"
    greater_is_better = True

    def _check_labels(self, ds, split):
        labels = ds[self.cfg.label_column]
        rows = [[int(v)] if np.isscalar(v) else list(v) for v in labels]
        check_multilabels(rows, self.num_classes, split)

    def prepare_rows(self, ds, training):
        import datasets

        if isinstance(ds.features.get(self.input_column), datasets.Audio):
            # decode here with soundfile rather than through datasets (which needs torchcodec)
            ds = ds.cast_column(self.input_column, datasets.Audio(decode=False))
        return ds

    def setup_inputs(self, model: nn.Module) -> None:
        if getattr(model, "waveform_input", True) is False:
            raise ValueError(f"the audio task feeds waveforms, but {self.cfg.model} was built for spectrograms; "
                             "pass --model-kwargs '{\"waveform_input\": true}'")
        self.clip_samples = int(round(self.cfg.sample_rate * self.cfg.clip_seconds))
        self.data_config = {"sample_rate": self.cfg.sample_rate, "clip_seconds": self.cfg.clip_seconds}

    def transform(self, row, training):
        wave, rate = decode_audio(row[self.input_column])
        wave = resample(wave.mean(axis=1), rate, self.cfg.sample_rate)
        n = self.clip_samples
        if wave.shape[0] > n:
            start = int(np.random.randint(0, wave.shape[0] - n + 1)) if training else 0
            wave = wave[start:start + n]
        elif wave.shape[0] < n:
            wave = np.pad(wave, (0, n - wave.shape[0]))
        label = row[self.cfg.label_column]
        target = torch.zeros(self.num_classes)
        target[[int(label)] if np.isscalar(label) else [int(c) for c in label]] = 1.0
        return {"inputs": torch.from_numpy(np.ascontiguousarray(wave)), "targets": target}

    def batch_augment(self, batch):
        # batch mixup as in DCLS-Audio: one lambda ~ Beta(a, a) per batch, each clip mixed with its mirror
        inputs, targets = batch["inputs"], batch["targets"]
        if self.cfg.mixup > 0:
            lam = float(np.random.beta(self.cfg.mixup, self.cfg.mixup))
            inputs = lam * inputs + (1 - lam) * inputs.flip(0)
            targets = lam * targets + (1 - lam) * targets.flip(0)
        return {"inputs": inputs, "targets": targets}

    def loss(self, outputs, batch, training):
        targets = batch["targets"]
        if training and self.cfg.smoothing > 0:  # binary label smoothing of each class
            targets = targets * (1 - self.cfg.smoothing) + self.cfg.smoothing / 2
        return F.binary_cross_entropy_with_logits(outputs.float(), targets)

    def eval_step(self, outputs, batch):
        logits = outputs.float()
        loss = F.binary_cross_entropy_with_logits(logits, batch["targets"], reduction="none").mean(-1)
        return {"loss": loss, "scores": torch.sigmoid(logits), "targets": batch["targets"]}

    def compute_metrics(self, g):
        return {"loss": float(g["loss"].mean()), "mAP": mean_average_precision(g["scores"], g["targets"])}


class CausalLanguageModelling(TaskAdapter):
    """Causal LM on text: rows are tokenised, concatenated and cut into `block_size` blocks; loss per token."""

    description = "causal language modelling"
    pipeline_tag = "text-generation"
    library_name = "transformers"
    default_input_column = "text"
    main_metric = "perplexity"

    def _required_columns(self):
        return [self.input_column]

    def check_data(self, train, evaluation, eval_split):
        hint = "; choose it with --input-column"
        check_columns(train, self._required_columns(), self.cfg.train_split, hint)
        check_columns(evaluation, self._required_columns(), eval_split, hint)
        from transformers import AutoTokenizer

        source = self.cfg.tokenizer or self.cfg.model
        self.tokenizer = AutoTokenizer.from_pretrained(source)

    def prepare_rows(self, ds, training):
        tok, block = self.tokenizer, self.cfg.block_size
        column = self.input_column
        eos = tok.eos_token_id

        def tokenize_and_group(rows):
            ids: list[int] = []
            for text in rows[column]:
                ids.extend(tok(text)["input_ids"])
                if eos is not None:
                    ids.append(eos)
            n = (len(ids) // block) * block
            return {"input_ids": [ids[i:i + block] for i in range(0, n, block)]}

        out = ds.map(tokenize_and_group, batched=True, batch_size=1000, remove_columns=ds.column_names,
                     desc="tokenise")
        if len(out) == 0:
            raise ValueError(f"the text has fewer than block_size={block} tokens; lower --block-size")
        return out

    def build_model(self):
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = self.cfg
        if cfg.pretrained or os.path.isdir(cfg.model):
            model = AutoModelForCausalLM.from_pretrained(cfg.model, **cfg.model_kwargs)
        else:
            kwargs = dict(cfg.model_kwargs)
            kwargs.setdefault("vocab_size", len(self.tokenizer))
            for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
                value = getattr(self.tokenizer, name, None)
                if value is not None:
                    kwargs.setdefault(name, value)
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.model, **kwargs))
        if model.config.vocab_size < len(self.tokenizer):
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary has "
                             f"{model.config.vocab_size}")
        return model

    def setup_inputs(self, model):
        self.data_config = {"block_size": self.cfg.block_size}

    def transform(self, row, training):
        ids = torch.tensor(row["input_ids"], dtype=torch.long)
        return {"inputs": ids, "targets": ids}

    def forward(self, model, batch):
        return model(input_ids=batch["inputs"], labels=batch["targets"])

    def loss(self, outputs, batch, training):
        return outputs.loss

    def eval_step(self, outputs, batch):
        # per-sequence mean token loss; every sequence has block_size tokens, so the mean of means is exact
        logits = outputs.logits.float()[:, :-1]
        labels = batch["targets"][:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
        return {"loss": loss.view(labels.shape).mean(-1)}

    def compute_metrics(self, g):
        loss = float(g["loss"].mean())
        return {"loss": loss, "perplexity": perplexity(loss)}


class SnnClassification(TaskAdapter):
    """Spiking-network classification on spike frames (time, channels) or events (times, units).

    Sequences are zero-padded to the longest in the batch and fed as (batch, time, channels). The model returns
    class scores (for SNN-delays: the time-summed softmax of the read-out potentials, sum_t softmax(v_t)); the
    loss is the cross-entropy of those scores, as in the original training code.
    """

    description = "spiking-network classification"
    pipeline_tag = "audio-classification"
    default_input_column = "spikes"
    main_metric = "accuracy"
    greater_is_better = True

    def check_data(self, train, evaluation, eval_split):
        super().check_data(train, evaluation, eval_split)
        # event times go back to the data set's own float type before binning: the original binning does its
        # arithmetic in that type, and frame boundaries must agree exactly
        feature = train.features[self.input_column.split(",")[0].strip()]
        self.times_dtype = np.dtype(getattr(getattr(feature, "feature", None), "dtype", "float64"))

    def setup_inputs(self, model):
        self.data_config = {"bin_ms": self.cfg.snn_bin_ms, "channels": self.cfg.snn_channels,
                            "channel_bins": self.cfg.snn_channel_bins}

    def transform(self, row, training):
        columns = [c.strip() for c in self.input_column.split(",")]
        if len(columns) == 2:
            if self.cfg.snn_channels is None:
                raise ValueError("spike events (times, units) need --snn-channels")
            # the SNN-delays binning (ms frames from the first spike, neighbouring channels summed)
            times = np.asarray(row[columns[0]], dtype=self.times_dtype)
            frames = bin_spike_events(times, np.asarray(row[columns[1]]), duration_ms=self.cfg.snn_bin_ms,
                                      num_channels=self.cfg.snn_channels, channel_bins=self.cfg.snn_channel_bins)
        else:
            frames = np.asarray(row[columns[0]], dtype=np.float32)
            if frames.ndim != 2:
                raise ValueError(f"column {columns[0]!r} must hold (time, channels) arrays, got shape {frames.shape}")
        return {"inputs": torch.from_numpy(frames), "targets": torch.tensor(int(row[self.cfg.label_column]))}

    def collate(self, samples):
        inputs = nn.utils.rnn.pad_sequence([s["inputs"] for s in samples], batch_first=True)
        return {"inputs": inputs, "targets": torch.stack([s["targets"] for s in samples])}

    def loss(self, outputs, batch, training):
        return F.cross_entropy(outputs.float(), batch["targets"])

    def eval_step(self, outputs, batch):
        scores = outputs.float()
        return {"loss": F.cross_entropy(scores, batch["targets"], reduction="none"),
                "correct": scores.argmax(-1).eq(batch["targets"]).float()}

    def compute_metrics(self, g):
        return {"loss": float(g["loss"].mean()), "accuracy": float(g["correct"].mean())}


# --task name -> adapter class, from the table of task kinds (`config.TASKS`, which names the classes above)
TASK_ADAPTERS: dict[str, type[TaskAdapter]] = {kind: globals()[name] for kind, name in TASKS.items()}
