#!/usr/bin/env python
"""Learnable activations vs GELU vs torchortho: forward+backward time and memory saved for backward.

One process, one input shape (default: the GPT-2 124M MLP activation, 8 x 256 x 3072). Each candidate is timed
against GELU step by step (A/B interleaving, so machine noise hits both), after warm-up; the ratio reported is
the median of the per-pair ratios. Saved memory is the bytes autograd keeps for backward (unique storages,
counted with saved_tensors_hooks): deterministic, and what a network holds per activation layer.

    python scripts/bench_activations.py                      # full shape, writes its section of BENCHMARKS.md
    python scripts/bench_activations.py --shape 2 16 64 --pairs 2 --no-write   # smoke run

The BENCHMARKS.md section sits between `<!-- bench_activations:start -->` and `<!-- bench_activations:end -->`
and is replaced on each run; the rest of the file is left alone.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dcls_zoo.layers.activations import (  # noqa: E402
    FourierActivation,
    HermiteActivation,
    TropicalActivation,
    TropicalRationalActivation,
)

START, END = "<!-- bench_activations:start -->", "<!-- bench_activations:end -->"
GOAL_TIME, GOAL_MEMORY = 3.0, 2.0


def candidates() -> list[tuple[str, Callable[[], nn.Module]]]:
    ours = [
        ("Hermite(3)", lambda **kw: HermiteActivation(3, **kw)),
        ("Fourier(5)", lambda **kw: FourierActivation(5, **kw)),
        ("Tropical(5)", lambda **kw: TropicalActivation(5, **kw)),
        ("TropicalRational(6)", lambda **kw: TropicalRationalActivation(6, **kw)),
    ]
    out = [("GELU tanh", lambda: nn.GELU(approximate="tanh")), ("ReLU", lambda: nn.ReLU())]
    out += [(f"dcls_zoo {name}", functools.partial(make, compiled=False)) for name, make in ours]
    out += [(f"dcls_zoo {name} compiled", functools.partial(make, compiled=True)) for name, make in ours]
    try:
        import torchortho  # test-only oracle, optional here
    except ImportError:
        return out
    out += [
        ("torchortho Hermite(3)", lambda: torchortho.HermiteActivation(3)),
        ("torchortho Fourier(5)", lambda: torchortho.FourierActivation(5)),
        ("torchortho Tropical(5)", lambda: torchortho.TropicalActivation(5)),
        ("torchortho TropicalRational(6)", lambda: torchortho.TropicalRationalActivation(6)),
    ]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_time(act: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward+backward."""
    _sync(x.device)
    start, start_cpu = time.perf_counter(), time.process_time()
    act(x).backward(grad)
    _sync(x.device)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    x.grad = None
    act.zero_grad(set_to_none=True)
    return elapsed, elapsed_cpu


def saved_bytes(act: nn.Module, x: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = act(x)
    del y
    x.grad = None
    return sum(storages.values())


def run(args: argparse.Namespace) -> tuple[list[dict], dict]:
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*args.shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    grad = torch.randn(*args.shape, generator=gen).to(device=device, dtype=dtype)
    gelu = nn.GELU().to(device)
    gelu_saved = saved_bytes(gelu, x)
    rows = []
    gelu_times_all = []
    for name, make in candidates():
        if args.only and not any(s.lower() in name.lower() for s in args.only):
            continue
        act = make().to(device)
        first, _ = step_time(act, x, grad)  # compiled kernels are built here
        for _ in range(args.warmup):
            step_time(gelu, x, grad)
            step_time(act, x, grad)
        gelu_times, times, ratios, cpu_ratios = [], [], [], []
        for _ in range(args.pairs):
            g, g_cpu = step_time(gelu, x, grad)
            t, t_cpu = step_time(act, x, grad)
            gelu_times.append(g)
            times.append(t)
            ratios.append(t / g)
            cpu_ratios.append(t_cpu / max(g_cpu, 1e-9))
        gelu_times_all += gelu_times
        memory = saved_bytes(act, x)
        rows.append(dict(name=name, first_s=first, ms=1e3 * statistics.median(times),
                         gelu_ms=1e3 * statistics.median(gelu_times),
                         ratio=statistics.median(ratios),
                         cpu_ratio=statistics.median(cpu_ratios) if device.type == "cpu" else float("nan"),
                         saved_mb=memory / 2**20, saved_ratio=memory / gelu_saved))
        cpu = "" if device.type != "cpu" else f" (CPU time x{rows[-1]['cpu_ratio']:.2f})"
        print(f"{name:32s} {rows[-1]['ms']:9.2f} ms  [GELU {rows[-1]['gelu_ms']:.2f}]  x{rows[-1]['ratio']:7.2f}{cpu}"
              f"  saved {rows[-1]['saved_mb']:8.1f} MB (x{rows[-1]['saved_ratio']:.1f})", flush=True)
        del act
    info = dict(shape=tuple(args.shape), device=_device_name(device), dtype=args.dtype,
                threads=torch.get_num_threads(), torch=torch.__version__, pairs=args.pairs, warmup=args.warmup,
                gelu_ms=1e3 * statistics.median(gelu_times_all) if gelu_times_all else float("nan"),
                gelu_saved_mb=gelu_saved / 2**20, python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                loadavg=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    return rows, info


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"


def markdown(rows: list[dict], info: dict, command: str) -> str:
    shape = "x".join(map(str, info["shape"]))
    lines = [
        START,
        "## Learnable activations: forward+backward vs GELU (`scripts/bench_activations.py`)",
        "",
        f"Input {shape} {info['dtype']} on {info['device']}, {info['threads']} thread(s), torch {info['torch']}, "
        f"{info['date']} (1-min load average {info['loadavg']:.1f}). One step = `y = act(x); y.backward(g)`; "
        f"{info['warmup']} warm-up then {info['pairs']} GELU/candidate pairs, interleaved. Ratio = median of "
        f"per-pair time ratios (wall; on CPU also process CPU time, less sensitive to other load). "
        f"GELU: {info['gelu_ms']:.2f} ms median, saves {info['gelu_saved_mb']:.1f} MB "
        "(its input). Saved = bytes autograd keeps for backward (unique storages). First call = the first "
        "forward+backward in this process, where `compiled=True` builds its kernels (Inductor's on-disk cache makes "
        "later processes faster). "
        f"Goal for dcls_zoo: <= {GOAL_TIME:g}x GELU time and <= {GOAL_MEMORY:g}x GELU saved memory.",
        "",
        "| activation | fwd+bwd ms | x GELU time | x GELU CPU time | saved for backward MB | x GELU saved "
        "| first call s | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        goal = ""
        if row["name"].startswith("dcls_zoo"):
            ok_t, ok_m = row["ratio"] <= GOAL_TIME, row["saved_ratio"] <= GOAL_MEMORY
            goal = ("time ok" if ok_t else "time MISSED") + ", " + ("memory ok" if ok_m else "memory MISSED")
        cpu = "" if math.isnan(row["cpu_ratio"]) else f"{row['cpu_ratio']:.2f}"
        lines.append(f"| {row['name']} | {row['ms']:.2f} | {row['ratio']:.2f} | {cpu} | {row['saved_mb']:.1f} | "
                     f"{row['saved_ratio']:.2f} | {row['first_s']:.1f} | {goal} |")
    lines += ["", "Rows marked `compiled` use `compiled=True` (two torch.compile'd kernels per activation, see the "
              "README), which is also the default (`compiled=None`) wherever torch.compile works; the others are "
              "the eager functions (`compiled=False`). Eager Fourier pays for 15 full sine/cosine "
              "passes per forward+backward (5 cosines forward, 5 sines and 5 cosines backward, the frequencies "
              "being learnable), which no eager formulation avoids; the compiled kernels do one pass each way.",
              "", f"Reproduce: `{command}`", END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[8, 256, 3072])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--only", nargs="*", help="substrings of candidate names to run")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if any(s <= 0 for s in args.shape) or args.pairs < 1 or args.warmup < 0:
        parser.error("--shape sizes and --pairs must be positive, --warmup >= 0")
    rows, info = run(args)
    command = "python scripts/bench_activations.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = markdown(rows, info, command.strip())
    if args.no_write:
        print(section)
    else:
        write_section(args.output, section)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
