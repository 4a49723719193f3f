"""Benchmark: every DCLS family against its timm baseline (7x7 depthwise convolutions), whole model, in one run.

For each pair, the same batch, input size, threads and memory format (channels_last; NCHW where a baseline cannot
run in channels_last, see `NCHW_ON_CPU`), both models built with random weights, run in turns in one child process
per pair (a crash inside a library then costs its row, not the table):
- train step: forward, cross-entropy on fixed labels, backward (train mode);
- eval forward: `torch.inference_mode()`, eval mode; also a copy of the DCLS model frozen into plain dense
  convolutions (`freeze_dcls`), whose ratio is the floor the dense large kernels' arithmetic sets for any
  implementation of DCLS that builds them.
Time is the median process CPU time over `--repeats` (wall time in brackets); ratio = DCLS / baseline.
Goals (issue 18): dcls_convnext_tiny ≤ 1.25x train, dcls_gauss_convnext_tiny ≤ 1.35x train, both ≤ 1.10x eval.
The table is written to BENCHMARKS.md (this script's own marked section, replaced on each run).

    OMP_NUM_THREADS=2 python scripts/bench_models.py [--batch 4] [--repeats 3] [--models dcls_convnext_tiny ...]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import dcls_zoo  # noqa: F401  (registers the zoo's models with timm)
from dcls_zoo.layers import freeze_dcls
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
# Pairs measured in NCHW on the CPU: a train step of timm's own fastvit_sa24 (no DCLS in it) in channels_last
# with 2 threads crashes with heap corruption (torch 2.14.1; gdb caught the fault in oneDNN's AVX-512 1x1-conv
# weight gradient), so the pair is compared in the layout both models can run in.
NCHW_ON_CPU = {"dcls_fastvit_sa24": "timm's own fastvit_sa24 train step crashes inside oneDNN in channels_last"}


def memory_format_of(name: str, device: str) -> torch.memory_format:
    return torch.contiguous_format if device == "cpu" and name in NCHW_ON_CPU else torch.channels_last


def _model(name: str, device: str, memory_format: torch.memory_format) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).to(device).to(memory_format=memory_format)


def measure_pair(name: str, batch: int, repeats: int, device: str, autocast: bool = False) -> dict:
    """One DCLS model against its baseline, in this process: a table row."""
    amp = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    fmt = memory_format_of(name, device)
    baseline = PAIRS[name]
    models = {"dcls": _model(name, device, fmt), "base": _model(baseline, device, fmt)}
    input_size = models["dcls"].pretrained_cfg["input_size"]
    x = torch.randn(batch, *input_size, device=device).contiguous(memory_format=fmt)
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

    row = dict(model=name, baseline=baseline, input=f"{batch}x" + "x".join(map(str, input_size)),
               format="NCHW" if fmt == torch.contiguous_format else "channels_last")
    frozen = freeze_dcls(copy.deepcopy(models["dcls"])).to(memory_format=fmt)
    for mode, step in (("train", train_step), ("eval", eval_forward)):
        timed = dict(models, frozen=frozen) if mode == "eval" else models
        times = alternating_times({k: (lambda m=m: step(m)) for k, m in timed.items()}, repeats=repeats)
        clock = "cpu" if device == "cpu" else "wall"
        for k in timed:
            row[f"{mode}_{k}"] = times[k][clock]
            row[f"{mode}_{k}_wall"] = times[k]["wall"]
        print(f"{name:>26} vs {baseline:<20} {mode:5s} {row[f'{mode}_dcls'] * 1e3:9.1f} / "
              f"{row[f'{mode}_base'] * 1e3:9.1f} ms = {row[f'{mode}_dcls'] / row[f'{mode}_base']:.2f}x",
              flush=True)
    return row


def measure(names: list[str], args: argparse.Namespace) -> list[dict]:
    """Every pair in its own child process (this script with `--pair`), in turn."""
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--pair", name, "--row-json", str(out),
                   "--batch", str(args.batch), "--repeats", str(args.repeats), "--device", args.device]
            cmd += (["--autocast-bf16"] if args.autocast_bf16 else []) + (
                ["--threads", str(args.threads)] if args.threads else [])
            code = subprocess.run(cmd).returncode
            if code == 0:
                rows.append(json.loads(out.read_text()))
                continue
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        print(f"{name:>26} vs {PAIRS[name]:<20} failed: {how}", flush=True)
        rows.append(dict(model=name, baseline=PAIRS[name], failed=how))
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
        "Random weights, channels_last unless the format column says NCHW, same input for both models of a row. "
        "Train step = forward + cross-entropy + "
        f"backward; eval = inference-mode forward. Median {clock} of {args.repeats} alternating repeats, in ms "
        "(wall time in brackets); ratio = DCLS / baseline. Eval frozen ratio: the DCLS model with its layers frozen "
        "into plain convolutions of the same dense kernels (`freeze_dcls`) / baseline, the floor that the dense "
        "large kernels' arithmetic sets for any DCLS implementation that builds them.", "",
        "| DCLS model | baseline | input | format | train DCLS | train base | train ratio | eval DCLS | eval base "
        "| eval ratio | eval frozen ratio | goal (train / eval) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['baseline']} | | | failed: {r['failed']} | | | | | | | |")
            continue
        tr, ev = r["train_dcls"] / r["train_base"], r["eval_dcls"] / r["eval_base"]
        goal = GOALS.get(r["model"])
        # Frozen plain convolutions in NCHW take oneDNN's slow layout for large depthwise kernels (a DCLS layer
        # switches to channels_last itself), so that ratio is no floor.
        floor = f"{r['eval_frozen'] / r['eval_base']:.2f}" if r["format"] == "channels_last" else "n/a (NCHW)"
        verdict = ""
        if goal:
            verdict = (f"≤ {goal[0]} / ≤ {goal[1]}: " + ("met" if tr <= goal[0] else "MISSED") + " / "
                       + ("met" if ev <= goal[1] else "MISSED"))
        lines.append(
            f"| {r['model']} | {r['baseline']} | {r['input']} | {r['format']} | {r['train_dcls'] * 1e3:.0f} "
            f"({r['train_dcls_wall'] * 1e3:.0f}) | {r['train_base'] * 1e3:.0f} ({r['train_base_wall'] * 1e3:.0f}) | "
            f"{tr:.2f} | {r['eval_dcls'] * 1e3:.0f} ({r['eval_dcls_wall'] * 1e3:.0f}) | {r['eval_base'] * 1e3:.0f} "
            f"({r['eval_base_wall'] * 1e3:.0f}) | {ev:.2f} | {floor} | {verdict} |")
    nchw = [r["model"] for r in rows if r.get("format") == "NCHW"]
    if nchw:
        lines += ["", f"In NCHW: {', '.join(nchw)} ({'; '.join(NCHW_ON_CPU[n] for n in nchw)})."]
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
    parser.add_argument("--pair", choices=list(PAIRS), help=argparse.SUPPRESS)      # child process: one pair
    parser.add_argument("--row-json", type=Path, help=argparse.SUPPRESS)           # where the child writes its row
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pair:
        row = measure_pair(args.pair, args.batch, args.repeats, args.device, args.autocast_bf16)
        args.row_json.write_text(json.dumps(row))
        return
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "unknown"
    rows = measure(args.models, args)
    tag = "bench_models" + ("_cuda" if args.device == "cuda" else "") + ("_bf16" if args.autocast_bf16 else "")
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    section = to_markdown(rows, args, load, begin, end)
    print(section)
    if not args.no_write:
        write_marked_section(section, args.output, begin, end)


if __name__ == "__main__":
    sys.exit(main())
