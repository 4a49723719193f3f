"""Benchmark: every DCLS family against its timm baseline (7x7 depthwise convolutions), whole model, in one run.

For each pair, the same batch, input size, threads and memory format (channels_last), both models built with
random weights, in this process, run in turns:
- train step: forward, cross-entropy on fixed labels, backward (train mode);
- eval forward: `torch.inference_mode()`, eval mode.
Time is the median process CPU time over `--repeats` (wall time in brackets); ratio = DCLS / baseline.
Goals (issue 18): dcls_convnext_tiny ≤ 1.25x train, dcls_gauss_convnext_tiny ≤ 1.35x train, both ≤ 1.10x eval.
The table is written to BENCHMARKS.md (this script's own marked section, replaced on each run).

    OMP_NUM_THREADS=2 python scripts/bench_models.py [--batch 4] [--repeats 3] [--models dcls_convnext_tiny ...]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import dcls_zoo  # noqa: F401  (registers the zoo's models with timm)
from bench_common import alternating_times, write_marked_section

ROOT = Path(__file__).resolve().parents[1]
# DCLS model -> its 7x7 (ResNet: 3x3) timm baseline.
PAIRS = {
    "dcls_convnext_tiny": "convnext_tiny",
    "dcls_gauss_convnext_tiny": "convnext_tiny",
    "dcls_convformer_s18": "convformer_s18",
    "dcls_gauss_convformer_s18": "convformer_s18",
    "dcls_caformer_s18": "caformer_s18",
    "dcls_fastvit_sa24": "fastvit_sa24",
    "dcls_resnet50": "resnet50",
    "dcls_convnext_audio_tiny": "convnext_audio_tiny",
}
GOALS = {"dcls_convnext_tiny": (1.25, 1.10), "dcls_gauss_convnext_tiny": (1.35, 1.10)}


def _model(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).to(device).to(memory_format=torch.channels_last)


def measure(names: list[str], batch: int, repeats: int, device: str, autocast: bool = False) -> list[dict]:
    rows = []
    amp = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    for name in names:
        baseline = PAIRS[name]
        models = {"dcls": _model(name, device), "base": _model(baseline, device)}
        input_size = models["dcls"].pretrained_cfg["input_size"]
        x = torch.randn(batch, *input_size, device=device).contiguous(memory_format=torch.channels_last)
        num_classes = models["dcls"].num_classes
        labels = torch.randint(0, num_classes, (batch,), device=device)

        def train_step(model):
            model.train()
            model.zero_grad(set_to_none=True)
            with amp():
                loss = F.cross_entropy(model(x).float(), labels)
            loss.backward()

        def eval_forward(model):
            model.eval()
            with torch.inference_mode(), amp():
                model(x)

        row = dict(model=name, baseline=baseline, input=f"{batch}x" + "x".join(map(str, input_size)))
        for mode, step in (("train", train_step), ("eval", eval_forward)):
            times = alternating_times({k: (lambda m=m: step(m)) for k, m in models.items()}, repeats=repeats)
            clock = "cpu" if device == "cpu" else "wall"
            for k in models:
                row[f"{mode}_{k}"] = times[k][clock]
                row[f"{mode}_{k}_wall"] = times[k]["wall"]
            print(f"{name:>26} vs {baseline:<20} {mode:5s} {row[f'{mode}_dcls'] * 1e3:9.1f} / "
                  f"{row[f'{mode}_base'] * 1e3:9.1f} ms = {row[f'{mode}_dcls'] / row[f'{mode}_base']:.2f}x",
                  flush=True)
        rows.append(row)
        del models
    return rows


def to_markdown(rows: list[dict], args: argparse.Namespace, load: str, begin: str, end: str) -> str:
    cuda = args.device == "cuda"
    name = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()} CPU"
    clock = "wall time (synchronised)" if cuda else "process CPU time"
    models = " ".join(r["model"] for r in rows)
    lines = [
        begin,
        "## Whole models: DCLS vs the timm baseline (`scripts/bench_models.py`)"
        + (" on CUDA" if cuda else "") + (", bf16 autocast" if args.autocast_bf16 else ""), "",
        f"Machine: {name}, {os.cpu_count()} cores, torch.get_num_threads()={torch.get_num_threads()}; torch "
        f"{torch.__version__}, timm {timm.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python scripts/bench_models.py "
        f"--batch {args.batch} --repeats {args.repeats} --device {args.device}"
        + (" --autocast-bf16" if args.autocast_bf16 else "") + f" --models {models}`.", "",
        "Random weights, channels_last, same input for both models of a row. Train step = forward + cross-entropy + "
        f"backward; eval = inference-mode forward. Median {clock} of {args.repeats} alternating repeats, in ms "
        "(wall time in brackets); ratio = DCLS / baseline.", "",
        "| DCLS model | baseline | input | train DCLS | train base | train ratio | eval DCLS | eval base "
        "| eval ratio | goal (train / eval) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tr, ev = r["train_dcls"] / r["train_base"], r["eval_dcls"] / r["eval_base"]
        goal = GOALS.get(r["model"])
        verdict = ""
        if goal:
            verdict = (f"≤ {goal[0]} / ≤ {goal[1]}: " + ("met" if tr <= goal[0] else "MISSED") + " / "
                       + ("met" if ev <= goal[1] else "MISSED"))
        lines.append(
            f"| {r['model']} | {r['baseline']} | {r['input']} | {r['train_dcls'] * 1e3:.0f} "
            f"({r['train_dcls_wall'] * 1e3:.0f}) | {r['train_base'] * 1e3:.0f} ({r['train_base_wall'] * 1e3:.0f}) | "
            f"{tr:.2f} | {r['eval_dcls'] * 1e3:.0f} ({r['eval_dcls_wall'] * 1e3:.0f}) | {r['eval_base'] * 1e3:.0f} "
            f"({r['eval_base_wall'] * 1e3:.0f}) | {ev:.2f} | {verdict} |")
    if not cuda:
        lines += ["", f"The machine was shared with other jobs during the run (load average at start {load}); "
                  "ratios of alternating repeats in one process are more trustworthy than the absolute times."]
    lines.append(end)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS), metavar="MODEL",
                        help=f"DCLS models to measure (default: all of {', '.join(PAIRS)})")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast-bf16", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "unknown"
    rows = measure(args.models, args.batch, args.repeats, args.device, args.autocast_bf16)
    tag = "bench_models" + ("_cuda" if args.device == "cuda" else "") + ("_bf16" if args.autocast_bf16 else "")
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    section = to_markdown(rows, args, load, begin, end)
    print(section)
    if not args.no_write:
        write_marked_section(section, args.output, begin, end)


if __name__ == "__main__":
    sys.exit(main())
