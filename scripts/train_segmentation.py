#!/usr/bin/env python3
"""Fine-tune a DCLS backbone for semantic segmentation on a folder of (image, mask) pairs; reports mIoU.

    python scripts/train_segmentation.py --data DIR --model dcls_convnext_tiny --arch upernet --num-classes 150 \
        --pretrained [--pretrained-file convnext_dcls_tiny_1k_224_ema.pth] --output runs/seg

Data: ``DIR/images/<stem>.{jpg,jpeg,png,bmp,tif,tiff}`` and ``DIR/masks/<stem>.png`` (one 8-bit mask per image,
pixel value = class index, ``--ignore-index`` (255) for void pixels, as ADE20K / VOC exports). ``--val-data`` gives
a separate validation folder of the same layout; otherwise ``--val-fraction`` of DIR is held out (seeded).

Model: a segmentation_models_pytorch decoder (``unet``, ``fpn``, ``upernet``) on the timm-universal encoder
``tu-<model>``, i.e. the DCLS model built by dcls_zoo through timm with ``features_only=True``. ``--pretrained``
starts the encoder from the model's ImageNet DCLS weights (its default pretrained tag); ``--pretrained-file`` gives
that checkpoint as a local file (timm's ``pretrained_cfg_overlay=dict(file=...)``), for offline use.

Training: AdamW, DCLS positions at 5x the learning rate without weight decay and clamped after every step (the
papers' recipe), cross-entropy with ``--ignore-index``. Images and masks are resized to ``--img-size`` (bilinear /
nearest) and normalised with the encoder's mean/std; mIoU is measured at that resolution over the classes present
in the validation set (prediction or target).

Output folder (refused if it exists and is not empty, unless ``--overwrite``): ``model/`` (smp ``save_pretrained``:
reload with ``import dcls_zoo, segmentation_models_pytorch as smp; smp.from_pretrained(DIR / "model")``) and
``metrics.json`` (per-epoch train loss, val loss, val mIoU, per-class IoU).

Why a script and not a ``dcls-zoo train`` task: see the README section "Dense prediction".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

PROG = "train_segmentation.py"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
ARCHS = {"unet": "Unet", "fpn": "FPN", "upernet": "UPerNet"}


class DataError(ValueError):
    """A problem with the user's data or arguments: reported in one line, without a traceback."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/")
    p.add_argument("--val-data", type=Path, default=None, help="separate validation folder (same layout)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of --data without --val-data")
    p.add_argument("--model", default="dcls_convnext_tiny", help="timm / dcls_zoo encoder name")
    p.add_argument("--arch", choices=sorted(ARCHS), default="upernet", help="segmentation_models_pytorch decoder")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--ignore-index", type=int, default=255)
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--position-lr-scale", type=float, default=5.0, help="learning-rate factor of DCLS positions")
    p.add_argument("--pretrained", action="store_true", help="start the encoder from ImageNet DCLS weights")
    p.add_argument("--pretrained-file", type=Path, default=None, help="local file of those weights (offline)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.num_classes < 1:
        p.error(f"--num-classes must be >= 1, got {args.num_classes}")
    if not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.pretrained_file is not None and not args.pretrained:
        p.error("--pretrained-file needs --pretrained")
    return args


# ------------------------------------------------------------------------------------------------------- data
def find_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a folder, sorted by stem; every image must have its mask."""
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"--data {root}: no {folder.name}/ folder (expected images/ and masks/ with one mask PNG "
                            "per image, same file stem)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"--data {root}: images/ holds no {'/'.join(IMAGE_SUFFIXES)} files")
    pairs = []
    for image in images:
        mask = masks_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise DataError(f"--data {root}: image {image.name} has no mask masks/{mask.name}")
        pairs.append((image, mask))
    return pairs


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I;16", "I"):
            raise DataError(f"mask {path} has mode {im.mode}; expected a single-channel PNG of class indices")
        return np.asarray(im, dtype=np.int64)


def check_masks(pairs: list[tuple[Path, Path]], num_classes: int, ignore_index: int) -> None:
    """Every mask value must be a class index or the ignore index (scanned once, before anything is written)."""
    for _, mask_path in pairs:
        values = np.unique(_read_mask(mask_path))
        bad = values[(values >= num_classes) & (values != ignore_index)]
        if bad.size:
            raise DataError(f"mask {mask_path} holds class {int(bad[0])}, but --num-classes is {num_classes} "
                            "(use --ignore-index for void pixels)")


class SegmentationFolder(torch.utils.data.Dataset):
    def __init__(self, pairs, img_size: int, mean, std, train: bool, seed: int = 0):
        self.pairs, self.img_size, self.train = pairs, img_size, train
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        from PIL import Image

        image_path, mask_path = self.pairs[index]
        with Image.open(image_path) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        mask = torch.from_numpy(_read_mask(mask_path))
        if mask.shape != image.shape[1:]:
            raise DataError(f"mask {mask_path} is {tuple(mask.shape)}, its image {tuple(image.shape[1:])}")
        size = (self.img_size, self.img_size)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if self.train and self.rng.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return (image - self.mean) / self.std, mask


# ---------------------------------------------------------------------------------------------------- metrics
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = target class, columns = predicted class; ignored pixels skipped."""
    keep = target != ignore_index
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes ** 2).view(num_classes, num_classes).cpu()


def per_class_iou(confusion: torch.Tensor) -> list[Optional[float]]:
    """IoU of each class; None for a class absent from both predictions and targets."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return [None if u == 0 else float(t / u) for t, u in zip(tp, union)]


def mean_iou(confusion: torch.Tensor) -> float:
    ious = [v for v in per_class_iou(confusion) if v is not None]
    return float(np.mean(ious)) if ious else 0.0


# ------------------------------------------------------------------------------------------------------ model
def build_model(args: argparse.Namespace):
    import segmentation_models_pytorch as smp

    import dcls_zoo  # noqa: F401  (registers the DCLS models with timm)

    kwargs = {}
    if args.pretrained_file is not None:
        if not args.pretrained_file.is_file():
            raise DataError(f"--pretrained-file {args.pretrained_file} does not exist")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(args.pretrained_file))
    try:
        return getattr(smp, ARCHS[args.arch])(
            f"tu-{args.model}", encoder_weights=True if args.pretrained else None, classes=args.num_classes, **kwargs)
    except (RuntimeError, ValueError, OSError) as e:
        # timm's advice, in this script's terms
        reason = (str(e).splitlines()[0]
                  .replace("pass pretrained_cfg_overlay=dict(file=PATH)", "pass it with --pretrained-file PATH")
                  .replace("Use `pretrained=False` for random init.",
                           "Drop --pretrained to start from random weights."))
        raise DataError(f"could not build {args.arch} on encoder {args.model!r}: {reason}") from e


def _param_groups(model, args):
    from dcls_zoo.layers import dcls_position_parameter_names

    positions = dcls_position_parameter_names(model)
    named = dict(model.named_parameters())
    return [
        {"params": [p for n, p in named.items() if n not in positions], "weight_decay": args.weight_decay},
        {"params": [named[n] for n in sorted(positions)], "weight_decay": 0.0,
         "lr": args.lr * args.position_lr_scale},
    ]


@torch.no_grad()
def evaluate(model, loader, args) -> tuple[float, torch.Tensor]:
    model.eval()
    confusion = torch.zeros(args.num_classes, args.num_classes, dtype=torch.long)
    total, count = 0.0, 0
    for images, masks in loader:
        images, masks = images.to(args.device), masks.to(args.device)
        logits = model(images)
        if (masks != args.ignore_index).any():
            total += F.cross_entropy(logits, masks, ignore_index=args.ignore_index).item() * len(images)
            count += len(images)
        confusion += confusion_matrix(logits.argmax(1), masks, args.num_classes, args.ignore_index)
    return total / max(count, 1), confusion


def run(args: argparse.Namespace) -> dict:
    from dcls_zoo.layers import clamp_dcls_parameters

    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())) and not args.overwrite:
        raise DataError(f"--output {args.output} exists and is not empty; choose another folder or pass --overwrite")
    torch.manual_seed(args.seed)
    pairs = find_pairs(args.data)
    if args.val_data is not None:
        train_pairs, val_pairs = pairs, find_pairs(args.val_data)
    else:
        if len(pairs) < 2:
            raise DataError(f"--data {args.data}: {len(pairs)} pair(s); need at least 2 to hold out a validation set")
        order = np.random.default_rng(args.seed).permutation(len(pairs))
        n_val = min(len(pairs) - 1, max(1, round(len(pairs) * args.val_fraction)))
        val_pairs = [pairs[i] for i in sorted(order[:n_val])]
        train_pairs = [pairs[i] for i in sorted(order[n_val:])]
    check_masks(train_pairs + val_pairs, args.num_classes, args.ignore_index)

    model = build_model(args).to(args.device)
    cfg = model.encoder.model.pretrained_cfg
    mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    loader = torch.utils.data.DataLoader(
        SegmentationFolder(train_pairs, args.img_size, mean, std, train=True, seed=args.seed),
        batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed))
    val_loader = torch.utils.data.DataLoader(
        SegmentationFolder(val_pairs, args.img_size, mean, std, train=False), batch_size=args.batch_size,
        num_workers=args.workers)
    optimizer = torch.optim.AdamW(_param_groups(model, args), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs * len(loader)))

    args.output.mkdir(parents=True, exist_ok=True)
    metrics = {"model": args.model, "arch": args.arch, "num_classes": args.num_classes, "img_size": args.img_size,
               "pretrained": (str(args.pretrained_file) if args.pretrained_file else args.pretrained),
               "num_train": len(train_pairs), "num_val": len(val_pairs), "epochs": []}
    for epoch in range(1, args.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for images, masks in loader:
            images, masks = images.to(args.device), masks.to(args.device)
            loss = F.cross_entropy(model(images), masks, ignore_index=args.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            clamp_dcls_parameters(model)
            total += loss.item() * len(images)
            count += len(images)
        val_loss, confusion = evaluate(model, val_loader, args)
        record = {"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val_loss,
                  "val_miou": mean_iou(confusion), "val_iou_per_class": per_class_iou(confusion)}
        metrics["epochs"].append(record)
        print(f"epoch {epoch}: train loss {record['train_loss']:.4f}, val loss {val_loss:.4f}, "
              f"val mIoU {record['val_miou']:.4f}", flush=True)
    model.eval().cpu().save_pretrained(str(args.output / "model"))
    (args.output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except DataError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
