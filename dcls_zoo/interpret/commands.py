"""`dcls-zoo gradcam`, `dcls-zoo clickme-eval` and `dcls-zoo kernels`: argument declarations and runners.

Each command is an (add, run) pair in the style of `dcls_zoo.cli`; torch, timm and matplotlib are imported inside
the runners only, so `dcls-zoo --help` does not load them.
"""
from __future__ import annotations

import argparse

from ..cli_errors import report_error

__all__ = ["COMMANDS"]

_METHODS = ("gradcam", "threshold")


def _create_model(name: str, pretrained: bool):
    import timm

    import dcls_zoo.models  # noqa: F401  (registers the zoo's timm models, also when the CLI defers registration)

    if name.split(".")[0] not in timm.list_models() and name.split(".")[0] not in timm.list_models(pretrained=True):
        raise ValueError(f"--model {name!r} is not a registered timm or dcls_zoo model (see `dcls-zoo models`)")
    return timm.create_model(name, pretrained=pretrained)


def _device(requested: str | None):
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------------ gradcam

def add_gradcam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gradcam", help="write an image with its Grad-CAM / Threshold-Grad-CAM heatmap overlaid (PNG)",
        description="Explain one image: the model's eval preprocessing, the map of the target class (default: the "
                    "predicted one) at the family's Grad-CAM layer, and a PNG of the image with the map overlaid. "
                    "Needs matplotlib (pip install 'dcls-zoo[train]').")
    p.add_argument("image", help="image file (anything Pillow reads)")
    p.add_argument("--model", required=True,
                   help="registered timm / dcls_zoo image classifier, e.g. dcls_convnext_tiny")
    p.add_argument("--pretrained", action="store_true", help="load the model's registered weights")
    p.add_argument("--method", choices=_METHODS, default="gradcam", help="gradcam (default) or threshold")
    p.add_argument("--target", type=int, default=None, help="class index to explain (default: the predicted class)")
    p.add_argument("--layer", default=None, help="dotted name of the target layer (default: the family's)")
    p.add_argument("--layout", choices=("nchw", "nhwc", "nlc"), default=None,
                   help="the layer's output layout (default: the family's, else nchw; nlc = (B, h*w, C) tokens)")
    p.add_argument("--floor", type=float, default=0.3, help="Threshold-Grad-CAM floor (default 0.3)")
    p.add_argument("--out", required=True, help="PNG file to write")


def run_gradcam(args: argparse.Namespace) -> int:
    try:
        from .plots import plot_grad_cam, require_matplotlib

        require_matplotlib()
        from pathlib import Path

        import torch
        from PIL import Image, UnidentifiedImageError
        from timm.data import ImageNetInfo, create_transform, resolve_data_config

        from .gradcam import grad_cam

        try:
            with Image.open(args.image) as im:
                image = im.convert("RGB")
        except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{args.image}: cannot read the image ({err})") from None
        model = _create_model(args.model, args.pretrained).eval()
        cfg = resolve_data_config({}, model=model)
        x = create_transform(**cfg, is_training=False)(image)[None]
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        predicted = int(probs.argmax())
        target = predicted if args.target is None else args.target
        if not 0 <= target < probs.numel():
            raise ValueError(f"--target must be a class index in [0, {probs.numel()}), got {target}")
        heat = grad_cam(model, x, [target], layer=args.layer, method=args.method, floor=args.floor,
                        layout=args.layout)[0]
        mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
        std = torch.tensor(cfg["std"]).view(3, 1, 1)
        shown = ((x[0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

        def label(i: int) -> str:
            if probs.numel() == 1000:
                return f"{i} ({ImageNetInfo().index_to_description(i).split(',')[0]})"
            return str(i)

        title = (f"{args.model}{' (random weights)' if not args.pretrained else ''} - {args.method}\n"
                 f"target {label(target)}, predicted {label(predicted)} p={float(probs[predicted]):.2f}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        plot_grad_cam(shown, heat.numpy(), title, args.out)
    except (ValueError, TypeError, ImportError, RuntimeError, OSError) as err:
        return report_error("gradcam", err)
    print(f"{args.out}: {args.method} map of class {target} (predicted {predicted})")
    return 0


# ------------------------------------------------------------------------------------------------- clickme-eval

def add_clickme_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clickme-eval", help="the ClickMe alignment study: Grad-CAM maps vs human maps, a markdown + JSON table",
        description="Score models by the alignment of their Grad-CAM / Threshold-Grad-CAM maps (ground-truth class) "
                    "with ClickMe human maps: mean Spearman rho / 0.65753 (arXiv 2408.03164). Reads the "
                    "Harmonization ClickMe validation tfrecords (no TensorFlow needed) or a `datasets` folder with "
                    "image, heatmap and label columns. Writes OUT.md and OUT.json.")
    p.add_argument("--data", required=True, help="a .tfrecords file, a folder of them, or a datasets folder")
    p.add_argument("--models", nargs="+", required=True, help="registered model names (timm or dcls_zoo)")
    p.add_argument("--methods", nargs="+", choices=_METHODS, default=list(_METHODS),
                   help="which maps to score (default: both)")
    p.add_argument("--pretrained", action="store_true", help="load each model's registered weights (the study)")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="use the first FRACTION of the images, whole batches only (default 1: all)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32, as the authors)")
    p.add_argument("--floor", type=float, default=0.3, help="Threshold-Grad-CAM floor (default 0.3)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    p.add_argument("--no-verify", action="store_true", help="skip the TFRecord data checksums (faster reading)")
    p.add_argument("--out", default="clickme_alignment", help="output path without suffix (default clickme_alignment)")


def _markdown(rows: list[dict]) -> str:
    lines = ["| model | DCLS | method | score | mean rho | images used | constant maps skipped |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {'yes' if r['dcls'] else 'no'} | {r['method']} | {r['score']:.4f} | "
                     f"{r['mean_rho']:.4f} | {r['images_used']} | {r['constant_maps_skipped']} |")
    return "\n".join(lines) + "\n"


def run_clickme_eval(args: argparse.Namespace) -> int:
    try:
        import json
        import math
        from pathlib import Path

        from .clickme import ClickMe, fraction_count
        from .study import evaluate_clickme, uses_dcls

        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        data = ClickMe(args.data, verify=not args.no_verify)
        if len(data) == 0:
            raise ValueError(f"{args.data}: no ClickMe records")
        count = fraction_count(len(data), args.fraction, args.batch_size)
        if count == 0:
            raise ValueError(f"--fraction {args.fraction} of {len(data)} images is less than one batch of "
                             f"{args.batch_size}; raise --fraction or lower --batch-size")
        device = _device(args.device)
        rows = []
        for name in args.models:
            model = _create_model(name, args.pretrained).to(device).eval()
            results = evaluate_clickme(model, data, methods=args.methods, count=count, batch_size=args.batch_size,
                                       floor=args.floor, device=device, num_workers=args.workers, desc=name)
            for method, res in results.items():
                rows.append(dict(model=name, dcls=uses_dcls(model), method=method,
                                 score=None if math.isnan(res.score) else res.score,
                                 mean_rho=None if math.isnan(res.mean_rho) else res.mean_rho,
                                 images_used=res.used, constant_maps_skipped=res.skipped))
            del model
        out_md, out_json = Path(args.out + ".md"), Path(args.out + ".json")
        out_md.parent.mkdir(parents=True, exist_ok=True)
        table = _markdown([{**r, "score": r["score"] if r["score"] is not None else float("nan"),
                            "mean_rho": r["mean_rho"] if r["mean_rho"] is not None else float("nan")} for r in rows])
        header = (f"ClickMe alignment (mean Spearman rho / 0.65753) on {count} of {len(data)} images of "
                  f"{args.data}; {'registered' if args.pretrained else 'random'} weights.\n\n")
        out_md.write_text(header + table)
        meta = dict(data=str(args.data), images_total=len(data), images_evaluated=count, pretrained=args.pretrained,
                    human_spearman_ceiling=0.65753, floor=args.floor, rows=rows)
        out_json.write_text(json.dumps(meta, indent=1) + "\n")
    except (ValueError, TypeError, ImportError, RuntimeError, OSError) as err:
        return report_error("clickme-eval", err)
    print(table, end="")
    print(f"wrote {out_md} and {out_json}")
    return 0


# ------------------------------------------------------------------------------------------------------ kernels

def add_kernels(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kernels", help="picture what a DCLS model learned: kernel positions per stage, or SNN delay histograms",
        description="Per stage, the kernel elements of a few channels on the dilated grid (size ~ |weight|) and the "
                    "mean absolute dense kernel; for snn_delays_* models a histogram of the learned delays per "
                    "layer. Needs matplotlib (pip install 'dcls-zoo[train]').")
    p.add_argument("model", help="registered DCLS model, e.g. dcls_convnext_tiny or snn_delays_shd")
    p.add_argument("--pretrained", action="store_true", help="load the model's registered weights")
    p.add_argument("--channels", type=int, default=4, help="channels shown per stage (default 4)")
    p.add_argument("--out", required=True, help="PNG file to write")


def run_kernels(args: argparse.Namespace) -> int:
    try:
        from pathlib import Path

        from .plots import plot_kernels, require_matplotlib

        require_matplotlib()
        if args.channels < 1:
            raise ValueError(f"--channels must be >= 1, got {args.channels}")
        model = _create_model(args.model, args.pretrained).eval()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        plot_kernels(model, args.out, name=args.model, channels=args.channels,
                     title=args.model + ("" if args.pretrained else " (random weights)"))
    except (ValueError, TypeError, ImportError, RuntimeError, OSError) as err:
        return report_error("kernels", err)
    print(f"{args.out}: kernels of {args.model}")
    return 0


# (name, add-arguments, run), appended to dcls_zoo.cli.COMMANDS
COMMANDS = [
    ("gradcam", add_gradcam, run_gradcam),
    ("clickme-eval", add_clickme_eval, run_clickme_eval),
    ("kernels", add_kernels, run_kernels),
]
