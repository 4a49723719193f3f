"""Training configuration and the named recipes (presets) of the papers.

`TrainConfig` holds every option of a run; the command line fills it field by field. A preset is a partial
`TrainConfig` (a dict of field values) applied before the explicit options, so `--preset gpt2-124m --lr 3e-4`
keeps the preset's schedule but changes its learning rate.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


def _option(default: Any, help: str) -> Any:
    """A `TrainConfig` field with its `dcls-zoo train --help` text (read by `cli_args`)."""
    return field(default=default, metadata={"help": help})


# The task kinds: `--task` name -> its `TaskAdapter` class in `dcls_zoo.train.tasks`. This table is where a kind is
# registered (the `--task` choices, the config check and the trainer read it); it names the class instead of
# importing it, so this module, which `dcls-zoo train --help` reads, does not import torch.
TASKS: dict[str, str] = {
    "image": "ImageClassification",
    "audio": "AudioTagging",
    "lm": "CausalLanguageModelling",
    "snn": "SnnClassification",
}
MIXED_PRECISION = ("no", "bf16", "fp16")
DISTRIBUTED = ("auto", "fsdp2")  # fsdp2: dcls_zoo.train.distributed.apply_fsdp2 (DeepSpeed comes from accelerate)
SCHEDULES = ("cosine", "poly", "tanh", "wsd", "constant")  # stepped per optimiser update


@dataclass
class TrainConfig:
    """Every option of a training run. A field's `metadata["help"]` is its `dcls-zoo train --help` text."""

    # what to train
    task: str = _option("image", "image | audio (multi-label tagging) | lm (causal language model) | snn")
    model: str = _option("dcls_convnext_atto", "timm name / local-dir:..., or for lm a model_type / folder / hub id")
    pretrained: bool = _option(
        False, "load the model's pretrained weights (a new head is fitted if num_classes differs)")
    num_classes: int | None = _option(None, "default: from the dataset's label feature")
    model_kwargs: dict[str, Any] = field(default_factory=dict,
                                         metadata={"help": "extra model constructor / config arguments"})

    # data
    dataset: str = _option("digits", "Hub dataset id, local folder, or \"digits\" (scikit-learn's bundled digits)")
    dataset_config: str | None = _option(None, "Hub dataset configuration name")
    train_split: str = "train"
    eval_split: str | None = _option(None, "default: validation or test if the dataset has one, else a held-out part")
    eval_fraction: float = _option(0.2, "fraction of train held out when the dataset has no evaluation split")
    input_column: str | None = _option(None, "default per task: image | audio | text | spikes")
    label_column: str = "label"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    num_workers: int = 0

    # image / audio / lm / snn input
    img_size: int | None = _option(None, "default: the model's pretrained_cfg input size")
    in_chans: int | None = _option(None, "default: the model's pretrained_cfg (1 for grayscale data sets like digits)")
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bicubic"
    crop_pct: float | None = _option(None, "evaluation centre-crop fraction (default: the model's pretrained_cfg)")
    scale: tuple[float, float] = _option((0.08, 1.0), "RandomResizedCrop area range")
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = _option(None, "timm string, e.g. rand-m9-mstd0.5-inc1")
    reprob: float = _option(0.0, "random erasing probability")
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float = _option(0.0, "label smoothing")
    sample_rate: int = _option(32000, "audio: clips are resampled to this rate")
    clip_seconds: float = _option(10.0, "audio: clips are cropped / zero-padded to this length")
    tokenizer: str | None = _option(None, "lm: tokenizer id or folder (default: the model folder's tokenizer)")
    block_size: int = _option(1024, "lm: tokens per training sequence")
    snn_channels: int | None = _option(None, "snn: unit ids are < this when spikes are (times, units) event columns")
    snn_bin_ms: float = _option(10.0, "snn: frame length for event data (event times in seconds)")
    snn_channel_bins: int = _option(1, "snn: neighbouring channels summed (SHD/SSC: 5, 700 -> 140)")

    # optimisation
    epochs: int = 30
    max_steps: int | None = _option(None, "optimiser steps; overrides epochs when set")
    batch_size: int = _option(64, "per device")
    eval_batch_size: int | None = None
    grad_accum_steps: int = 1
    opt: str = _option("adamw", "any timm optimizer name")
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    betas: tuple[float, float] | None = None
    clip_grad: float | None = None
    model_ema_decay: float | None = _option(None, "keep an EMA of the weights; it is evaluated and saved instead")
    sched: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    drop_path: float | None = None
    position_lr_scale: float = _option(5.0, "DCLS positions / sigmas: lr multiplier (weight decay is always 0 there)")
    clamp_positions: bool = _option(True, "DCLS: clamp positions after every optimiser step")
    sigma_schedule: bool = _option(True, "SNN delays: decay sigma after each epoch when the model provides a schedule")

    # run
    seed: int = 0
    mixed_precision: str | None = _option(
        None, "no | bf16 | fp16 (fp16: GPU only); default: accelerate launch's, else no")
    cpu: bool = False
    distributed: str = _option(
        "auto", "auto (what accelerate launch set up) | fsdp2 (zoo FSDP2 units; torchrun on CPU)")
    output_dir: str = "dcls-zoo-output"
    save_every: int | None = _option(None, "optimiser steps between checkpoints (default: at the end of each epoch)")
    keep_checkpoints: int = _option(
        2, "newest checkpoints of this run kept in output_dir/checkpoints; 0: none are written")
    resume: bool = _option(False, "continue the run in output_dir from its latest checkpoint")
    overwrite: bool = _option(
        False, "replace the run in a non-empty output_dir (what it wrote is deleted, other files kept)")
    eval_every_epochs: int = 1
    log_every: int = _option(10, "optimiser steps per logs/metrics.jsonl line; its loss is the mean over those steps")
    report_to: str = _option("auto", "auto (TensorBoard when installed) | tensorboard | none")
    progress: bool = True
    save_model: bool = _option(True, "write the Hub-ready folder (weights, config, card, curves, results) at the end")
    hub_model_id: str | None = _option(None, "name written in the model card")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                             f"got {self.mixed_precision!r}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed must be one of {', '.join(DISTRIBUTED)}, got {self.distributed!r}")
        if self.sched not in SCHEDULES:
            raise ValueError(f"sched must be one of {', '.join(SCHEDULES)}, got {self.sched!r}")
        for name in ("batch_size", "grad_accum_steps", "epochs", "log_every", "eval_every_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_every is not None and self.save_every < 1:
            raise ValueError(f"save_every must be >= 1 optimiser steps, got {self.save_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 optimiser steps (or unset to train --epochs), got "
                             f"{self.max_steps}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be >= 0 (0: write no checkpoints), got {self.keep_checkpoints}")
        if self.dataset == "digits" and self.task != "image":
            raise ValueError(f"the built-in 'digits' data set is for task 'image'; pass --dataset for task "
                             f"{self.task!r}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# The recipes of the papers: DCLS ConvNeXt on ImageNet (arXiv 2112.03740), DCLS-Audio on AudioSet (arXiv 2309.13972),
# SNN delays on SHD (arXiv 2306.17670), GPT-2 124M as nanoGPT trains it (the learnable-activation baseline,
# arXiv 2502.01247). The comment above each preset states the values it takes from the paper.
# The DCLS specifics (positions lr x5 and no weight decay, clamping after each step, no weight decay on
# activation coefficients, the SNN sigma schedule) are not preset fields: the trainer applies them to every
# model that has such parameters.
PRESETS: dict[str, dict[str, Any]] = {
    # The main job: small DCLS ConvNeXt on scikit-learn's digits, CPU, a few minutes.
    "digits": dict(
        # 32-pixel inputs give 8x8 feature maps at most, so the DCLS grid is 7x7 (13 learnable elements per
        # channel) instead of the ImageNet 17x17/34: same layer, sized to the data.
        task="image", model="dcls_convnext_atto", dataset="digits", img_size=32, in_chans=1,
        model_kwargs=dict(dcls_dilated_kernel_size=7, dcls_kernel_count=13),
        mean=(0.5,), std=(0.5,), interpolation="bilinear", crop_pct=1.0, scale=(0.7, 1.0), ratio=(0.9, 1.1), hflip=0.0,
        epochs=10, batch_size=64, opt="adamw", lr=3e-3, weight_decay=0.05, warmup_epochs=1.0,
        sched="cosine", smoothing=0.1, drop_path=0.0, seed=0, hub_model_id="dcls_convnext_atto.digits",
    ),
    # ConvNeXt-dcls ImageNet-1k (ICLR 2023): AdamW lr 4e-3 at total batch 4096, wd 0.05, 300 epochs, 20 warmup,
    # cosine to 1e-6, RandAug m9, mixup 0.8, cutmix 1.0, smoothing 0.1, random erasing 0.25, EMA 0.9999.
    "dcls-convnext-in1k": dict(
        task="image", model="dcls_convnext_tiny", dataset="imagenet-1k", img_size=224, epochs=300,
        batch_size=128, opt="adamw", lr=4e-3, weight_decay=0.05, warmup_epochs=20.0, min_lr=1e-6,
        sched="cosine", auto_augment="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0, smoothing=0.1, reprob=0.25,
        drop_path=0.1, model_ema_decay=0.9999, mixed_precision="bf16", eval_split="validation",
    ),
    # DCLS-Audio AudioSet-2M: BCE, AdamW lr 4e-3 at batch 4096, wd 0.05, 60 epochs, 20 warmup, cosine,
    # drop_path 0.4, batch mixup Beta(0.8, 0.8) with smoothing 0.1, 32 kHz 10 s clips.
    "dcls-audio-as2m": dict(
        task="audio", model="dcls_convnext_audio_tiny", dataset="agkphysics/AudioSet", epochs=60,
        batch_size=64, opt="adamw", lr=4e-3, weight_decay=0.05, warmup_epochs=20.0, sched="cosine",
        mixup=0.8, smoothing=0.1, drop_path=0.4, sample_rate=32000, clip_seconds=10.0, mixed_precision="bf16",
        label_column="labels", model_kwargs=dict(waveform_input=True),
    ),
    # SNN with learnable delays on SHD: Adam lr 1e-3 wd 1e-5 (weights), positions lr x100 (0.1), 150 epochs,
    # batch 256, sigma decayed each epoch to 0.5 over the first quarter.
    "snn-delays-shd": dict(
        task="snn", model="snn_delays_shd", epochs=150, batch_size=256, opt="adam", lr=1e-3,
        weight_decay=1e-5, sched="cosine", position_lr_scale=100.0, input_column="times,units", snn_channels=700,
        snn_bin_ms=10.0, snn_channel_bins=5,
    ),
    # nanoGPT GPT-2 124M on OpenWebText: AdamW lr 6e-4 betas (0.9, 0.95) wd 0.1 (2-D weights only), grad clip
    # 1.0, micro-batch 12 x 1024 tokens, warmup 2000 iterations, cosine to 6e-5 over 600k iterations.
    "gpt2-124m": dict(
        task="lm", model="ortho_gpt2", dataset="Skylion007/openwebtext", tokenizer="gpt2", block_size=1024,
        batch_size=12, grad_accum_steps=40, opt="adamw", lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
        clip_grad=1.0, max_steps=600_000, sched="cosine", min_lr=6e-5, mixed_precision="bf16",
        model_kwargs=dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304),
    ),
}


def config_from_preset(preset: str | None, **overrides: Any) -> TrainConfig:
    """A `TrainConfig` from a named preset (or the defaults when None), then the explicit overrides."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(overrides)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TypeError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
    return TrainConfig(**values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def command_line(cfg: TrainConfig, preset: str | None = None) -> str:
    """The `dcls-zoo train` command that rebuilds `cfg`: the preset plus every field that differs from it."""
    base = config_from_preset(preset) if preset is not None else TrainConfig()
    # "--preset none" keeps the CLI from applying its default preset (digits) to a preset-less config
    parts = ["dcls-zoo", "train", "--preset", preset if preset is not None else "none"]
    for f in dataclasses.fields(TrainConfig):
        value, default = getattr(cfg, f.name), getattr(base, f.name)
        if f.name in ("resume", "overwrite", "progress") or value == default or (
                isinstance(value, (tuple, list)) and tuple(value) == tuple(default or ())):
            continue
        if isinstance(value, bool):
            parts.append(_flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, dict):
            parts += [_flag(f.name), "'" + json.dumps(value) + "'"]
        elif isinstance(value, (tuple, list)):
            parts += [_flag(f.name), *(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
        elif value is not None:
            parts += [_flag(f.name), f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(parts)
