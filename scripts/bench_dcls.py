"""Benchmark: our Dcls2d against the authors' `dcls` 0.1.1 at ConvNeXt-T stage shapes, in one run.

For each version (v0, v1 at 17/34; gauss at 23/26; max at 17/34) and each stage (96@56², 192@28², 384@14²,
768@7²), one DCLS layer's forward+backward:
- time: median over `--repeats` of process CPU time (and wall time), ours and the reference run in turns in
  this process, ours / reference; goal ≤ 0.15 on the CPU (≤ 0.5 on CUDA);
- memory: bytes autograd keeps for backward (beyond the input and parameters, which both implementations hold),
  ours / reference, goal ≤ 0.5; on CUDA also the allocator's peak of the whole forward+backward.

`--sweep` instead times the depthwise weight gradient alone, oneDNN/ATen's direct one against `dcls_conv`'s FFT
one, over kernel sizes at the four stage shapes: the measurements behind `choose_weight_grad_path`'s rule.
`--autocast-bf16` runs the layer rows under bf16 autocast (CUDA check script).
Results are written to BENCHMARKS.md (each mode its own marked section, replaced on each run).

    OMP_NUM_THREADS=2 python scripts/bench_dcls.py [--batch 8] [--repeats 3] [--device cpu|cuda] [--sweep]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from bench_common import alternating_times, cuda_peak_bytes, saved_bytes_for_backward, write_marked_section
from dcls_zoo.layers import Dcls2d
from dcls_zoo.layers.dcls_conv import FFT_MIN_KERNEL_TAPS, _fft_weight_grad, choose_weight_grad_path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ((96, 56), (192, 28), (384, 14), (768, 7))
CONFIGS = (("v0", 17, 34), ("v1", 17, 34), ("gauss", 23, 26), ("max", 17, 34))
SWEEP_KERNELS = (5, 7, 9, 13, 17, 23)
NOTE = (
    "Our layer runs its dense kernel through `dcls_zoo.layers.dcls_conv`: the forward is oneDNN's depthwise "
    "convolution in channels_last; the backward takes the weight gradient as a batch-summed FFT "
    "cross-correlation where `choose_weight_grad_path` says so (see the sweep table) and the input gradient as a "
    "forward convolution with the flipped kernel. The reference computes both with oneDNN's convolution backward, "
    "whose weight gradient for 17x17 / 23x23 kernels is the bulk of its time. The input comes in NCHW here (inside "
    "a DCLS ConvNeXt it flows in channels_last): ours converts it for the forward only and keeps the input as "
    "given for backward, so what it saves is the dense kernel."
)
BUSY = ("The machine was shared with other jobs during the run (load average at start {load}); times are "
        "medians of alternating repeats in one process, so ratios are more trustworthy than absolute times.")


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def _machine(device: str) -> str:
    import importlib.metadata as md

    name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"Machine: {name}, {os.cpu_count()} cores, torch.get_num_threads()={torch.get_num_threads()}; "
            f"torch {torch.__version__}, dcls {md.version('dcls')}; {when}.")


def _layers(version: str, size: int, count: int, channels: int, device: str):
    from DCLS.construct.modules import Dcls2d as ReferenceDcls2d  # test-only oracle

    kw = dict(kernel_count=count, dilated_kernel_size=size, padding=size // 2, groups=channels, version=version)
    reference = ReferenceDcls2d(channels, channels, **kw).to(device)
    with torch.no_grad():  # positions spread over the grid, as after training
        reference.P.uniform_(-(size // 2), size // 2)
    ours = Dcls2d(channels, channels, **kw).to(device)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


def _step(layer, x, grad, autocast: bool):
    layer.zero_grad(set_to_none=True)
    x.grad = None
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        y = layer(x)
    y.backward(grad.to(y.dtype))


def measure(batch: int, repeats: int, device: str, autocast: bool = False) -> list[dict]:
    rows = []
    for version, size, count in CONFIGS:
        for channels, hw in STAGES:
            ours, reference = _layers(version, size, count, channels, device)
            x = torch.randn(batch, channels, hw, hw, device=device, requires_grad=True)
            grad = torch.randn(batch, channels, hw, hw, device=device)
            row = dict(version=f"{version} {size}/{count}", shape=f"{batch}x{channels}x{hw}x{hw}")
            layers = {"ours": ours, "ref": reference}
            times = alternating_times(
                {label: (lambda layer=layer: _step(layer, x, grad, autocast)) for label, layer in layers.items()},
                repeats=repeats)
            for label, layer in layers.items():
                row[f"t_{label}"] = times[label]["cpu" if device == "cpu" else "wall"]
                row[f"w_{label}"] = times[label]["wall"]
                saved, _ = saved_bytes_for_backward(lambda: layer(x), exclude=[x, *layer.parameters()])
                row[f"m_{label}"] = saved
                if device == "cuda":
                    row[f"peak_{label}"] = cuda_peak_bytes(lambda: _step(layer, x, grad, autocast))
            rows.append(row)
            print(f"{row['version']:>12} {row['shape']:>14}  time {row['t_ours'] * 1e3:8.1f} / "
                  f"{row['t_ref'] * 1e3:8.1f} ms = {row['t_ours'] / row['t_ref']:.2f}   saved "
                  f"{row['m_ours'] / 2**20:7.1f} / {row['m_ref'] / 2**20:7.1f} MiB = "
                  f"{row['m_ours'] / row['m_ref']:.3f}", flush=True)
    return rows


def sweep(batch: int, repeats: int, kernels: list[int]) -> list[dict]:
    """Depthwise weight gradient alone: ATen/oneDNN direct vs FFT, channels_last input, stride 1, 'same' padding."""
    rows = []
    for channels, hw in STAGES:
        for k in kernels:
            p = k // 2
            fmt = torch.channels_last
            x = torch.randn(batch, channels, hw, hw).contiguous(memory_format=fmt)
            g = torch.randn(batch, channels, hw, hw).contiguous(memory_format=fmt)
            w = torch.randn(channels, 1, k, k).contiguous(memory_format=fmt)

            def direct():
                return torch.ops.aten.convolution_backward(
                    g, x, w, None, [1, 1], [p, p], [1, 1], False, [0, 0], channels, [False, True, False])[1]

            def fft():
                return _fft_weight_grad(x, g, (k, k), (1, 1), (p, p))

            expected = direct()
            err = ((fft() - expected).abs().max() / expected.abs().max()).item()
            times = alternating_times({"direct": direct, "fft": fft}, repeats=repeats)
            row = dict(shape=f"{batch}x{channels}x{hw}x{hw}", k=k, direct=times["direct"]["cpu"],
                       fft=times["fft"]["cpu"], err=err,
                       rule=choose_weight_grad_path("cpu", (k, k), (hw, hw)))
            rows.append(row)
            print(f"{row['shape']:>14} {k:2d}x{k:<2d} direct {row['direct'] * 1e3:8.1f} ms  fft "
                  f"{row['fft'] * 1e3:8.1f} ms  ({row['fft'] / row['direct']:.2f})  rule: {row['rule']}  "
                  f"rel. diff {err:.1e}", flush=True)
    return rows


def layer_markdown(rows: list[dict], args: argparse.Namespace, load: str, begin: str, end: str) -> str:
    cuda = args.device == "cuda"
    clock = "wall time (synchronised)" if cuda else "process CPU time"
    title = "## DCLS operator" + (" on CUDA" if cuda else "") + (", bf16 autocast" if args.autocast_bf16 else "")
    lines = [
        begin, f"{title} (`scripts/bench_dcls.py`)", "",
        _machine(args.device) + f" Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
        f"scripts/bench_dcls.py --batch {args.batch} --repeats {args.repeats} --device {args.device}"
        + (" --autocast-bf16" if args.autocast_bf16 else "") + "`.", "",
        f"One layer, forward+backward, ours vs `dcls` 0.1.1 in the same process, run in turns. Time: median {clock} "
        f"of {args.repeats} (wall time in brackets). Saved: bytes autograd keeps for backward beyond input and "
        "parameters." + (" Peak: CUDA allocator peak of forward+backward." if cuda else ""), "",
        "| version | input | time ours (ms) | time ref (ms) | time ratio | saved ours (MiB) | saved ref (MiB) "
        "| saved ratio |" + (" peak ours (MiB) | peak ref (MiB) | peak ratio |" if cuda else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if cuda else ""),
    ]
    for r in rows:
        line = (f"| {r['version']} | {r['shape']} | {r['t_ours'] * 1e3:.1f} ({r['w_ours'] * 1e3:.0f}) | "
                f"{r['t_ref'] * 1e3:.1f} ({r['w_ref'] * 1e3:.0f}) | {r['t_ours'] / r['t_ref']:.2f} | "
                f"{r['m_ours'] / 2**20:.2f} | {r['m_ref'] / 2**20:.1f} | {r['m_ours'] / r['m_ref']:.3f} |")
        if cuda:
            line += (f" {r['peak_ours'] / 2**20:.1f} | {r['peak_ref'] / 2**20:.1f} | "
                     f"{r['peak_ours'] / r['peak_ref']:.2f} |")
        lines.append(line)
    goal = 0.5 if cuda else 0.15
    worst = max(r["t_ours"] / r["t_ref"] for r in rows)
    t_ratio = sum(r["t_ours"] for r in rows) / sum(r["t_ref"] for r in rows)
    m_ratio = max(r["m_ours"] / r["m_ref"] for r in rows)
    missed = [f"{r['version']} {r['shape']}" for r in rows if r["t_ours"] / r["t_ref"] > goal]
    lines += ["", f"Time ratio: total {t_ratio:.2f}, worst row {worst:.2f} (goal ≤ {goal} at every row: "
              + ("met" if not missed else f"missed at {len(missed)} of {len(rows)} rows") + f"); saved-memory "
              f"ratio worst row {m_ratio:.3f} (goal ≤ 0.5).", ""]
    if not cuda:
        lines += [BUSY.format(load=load), ""]
    lines += [NOTE, end]
    return "\n".join(lines)


def sweep_markdown(rows: list[dict], args: argparse.Namespace, load: str, begin: str, end: str) -> str:
    lines = [
        begin, "## Depthwise weight gradient: direct vs FFT (`scripts/bench_dcls.py --sweep`)", "",
        _machine("cpu") + f" Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
        f"scripts/bench_dcls.py --sweep --batch {args.batch} --repeats {args.repeats} --kernels "
        f"{' '.join(map(str, args.kernels))}`.", "",
        "The weight gradient of a depthwise k×k convolution (channels_last, stride 1, padding k//2) alone: ATen's "
        "`convolution_backward` (oneDNN) against `dcls_conv`'s batch-summed FFT cross-correlation. Median process "
        f"CPU time of {args.repeats} alternating repeats. `rule` is what `choose_weight_grad_path` picks: FFT when "
        f"k² ≥ {FFT_MIN_KERNEL_TAPS}.", "",
        "| input | kernel | direct (ms) | FFT (ms) | FFT / direct | rule | FFT rel. difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['k']}×{r['k']} | {r['direct'] * 1e3:.1f} | {r['fft'] * 1e3:.1f} | "
                     f"{r['fft'] / r['direct']:.2f} | {r['rule']} | {r['err']:.1e} |")
    lines += ["", BUSY.format(load=load), end]
    return "\n".join(lines)


def main() -> None:
    logging.disable(logging.WARNING)  # the reference logs implicit-GEMM warnings for every layer
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sweep", action="store_true", help="weight-gradient formulations over kernel sizes")
    parser.add_argument("--autocast-bf16", action="store_true", help="layer rows under bf16 autocast")
    parser.add_argument("--kernels", type=int, nargs="+", default=list(SWEEP_KERNELS), help="--sweep kernel sizes")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = _load()
    if args.sweep:
        if args.device != "cpu":
            parser.error("--sweep measures the CPU formulations; use --device cpu")
        begin, end = "<!-- bench_dcls_sweep:begin -->", "<!-- bench_dcls_sweep:end -->"
        section = sweep_markdown(sweep(args.batch, args.repeats, args.kernels), args, load, begin, end)
    else:
        tag = "bench_dcls" + ("_cuda" if args.device == "cuda" else "") + ("_bf16" if args.autocast_bf16 else "")
        begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
        rows = measure(args.batch, args.repeats, args.device, args.autocast_bf16)
        section = layer_markdown(rows, args, load, begin, end)
    print(section)
    if not args.no_write:
        write_marked_section(section, args.output, begin, end)


if __name__ == "__main__":
    sys.exit(main())
