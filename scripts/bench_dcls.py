"""Benchmark: our Dcls2d against the authors' `dcls` 0.1.1 at ConvNeXt-T stage shapes, in one run.

For each version (v0, v1 at 17/34; gauss at 23/26; max at 17/34) and each stage (96@56², 192@28², 384@14²,
768@7²), one DCLS layer's forward+backward:
- time: best of N runs (after a warm-up), ours / reference;
- memory: bytes autograd keeps for backward (beyond the input and parameters, which both implementations hold),
  ours / reference; on CUDA also the allocator's peak of the whole forward+backward.
Results are written to BENCHMARKS.md (this script's own section, replaced on each run). Goal: ratios ≤ 0.5.

    OMP_NUM_THREADS=2 python scripts/bench_dcls.py [--batch 8] [--repeats 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from pathlib import Path

import torch

from dcls_zoo.bench import best_time, cuda_peak_bytes, saved_bytes_for_backward
from dcls_zoo.layers import Dcls2d

ROOT = Path(__file__).resolve().parents[1]
STAGES = ((96, 56), (192, 28), (384, 14), (768, 7))
CONFIGS = (("v0", 17, 34), ("v1", 17, 34), ("gauss", 23, 26), ("max", 17, 34))
BEGIN, END = "<!-- bench_dcls:begin -->", "<!-- bench_dcls:end -->"
NOTE = (
    "Where the layer's input comes in NCHW (the rows here), ours runs the large depthwise kernel in channels_last "
    "and keeps that copy of the input for backward; inside a DCLS ConvNeXt the activations already flow in "
    "channels_last, so no copy is made there. The 56² rows are bound by the dense convolution's weight gradient, "
    "which both implementations compute the same way."
)


def _layers(version: str, size: int, count: int, channels: int, device: str):
    from DCLS.construct.modules import Dcls2d as ReferenceDcls2d  # test-only oracle

    kw = dict(kernel_count=count, dilated_kernel_size=size, padding=size // 2, groups=channels, version=version)
    reference = ReferenceDcls2d(channels, channels, **kw).to(device)
    ours = Dcls2d(channels, channels, **kw).to(device)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


def _step(layer, x, grad):
    layer.zero_grad(set_to_none=True)
    x.grad = None
    layer(x).backward(grad)


def measure(batch: int, repeats: int, device: str) -> list[dict]:
    rows = []
    for version, size, count in CONFIGS:
        for channels, hw in STAGES:
            ours, reference = _layers(version, size, count, channels, device)
            x = torch.randn(batch, channels, hw, hw, device=device, requires_grad=True)
            grad = torch.randn(batch, channels, hw, hw, device=device)
            row = dict(version=f"{version} {size}/{count}", shape=f"{batch}x{channels}x{hw}x{hw}")
            for label, layer in (("ours", ours), ("ref", reference)):
                row[f"t_{label}"] = best_time(lambda: _step(layer, x, grad), repeats=repeats)
                saved, _ = saved_bytes_for_backward(lambda: layer(x), exclude=[x, *layer.parameters()])
                row[f"m_{label}"] = saved
                if device == "cuda":
                    row[f"peak_{label}"] = cuda_peak_bytes(lambda: _step(layer, x, grad))
            rows.append(row)
            print(f"{row['version']:>12} {row['shape']:>14}  time {row['t_ours'] * 1e3:8.1f} / "
                  f"{row['t_ref'] * 1e3:8.1f} ms = {row['t_ours'] / row['t_ref']:.2f}   saved "
                  f"{row['m_ours'] / 2**20:7.1f} / {row['m_ref'] / 2**20:7.1f} MiB = "
                  f"{row['m_ours'] / row['m_ref']:.3f}",
                  flush=True)
    return rows


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    import importlib.metadata as md

    cuda = args.device == "cuda"
    device = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()} CPU"
    lines = [
        BEGIN,
        "## DCLS operator (`scripts/bench_dcls.py`)",
        "",
        f"Machine: {device}, {os.cpu_count()} cores, torch.get_num_threads()={torch.get_num_threads()}; "
        f"torch {torch.__version__}, dcls {md.version('dcls')}. Command: `OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '?')} python scripts/bench_dcls.py --batch {args.batch} "
        f"--repeats {args.repeats} --device {args.device}`.",
        "",
        "One layer, forward+backward, ours vs `dcls` 0.1.1 in the same process. Time: best of "
        f"{args.repeats}. Saved: bytes autograd keeps for backward beyond input and parameters."
        + (" Peak: CUDA allocator peak of forward+backward." if cuda else ""),
        "",
        "| version | input | time ours (ms) | time ref (ms) | time ratio | saved ours (MiB) | saved ref (MiB) "
        "| saved ratio |" + (" peak ours (MiB) | peak ref (MiB) | peak ratio |" if cuda else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if cuda else ""),
    ]
    for r in rows:
        line = (f"| {r['version']} | {r['shape']} | {r['t_ours'] * 1e3:.1f} | {r['t_ref'] * 1e3:.1f} | "
                f"{r['t_ours'] / r['t_ref']:.2f} | {r['m_ours'] / 2**20:.2f} | {r['m_ref'] / 2**20:.1f} | "
                f"{r['m_ours'] / r['m_ref']:.3f} |")
        if cuda:
            line += (f" {r['peak_ours'] / 2**20:.1f} | {r['peak_ref'] / 2**20:.1f} | "
                     f"{r['peak_ours'] / r['peak_ref']:.2f} |")
        lines.append(line)
    t_ratio = sum(r["t_ours"] for r in rows) / sum(r["t_ref"] for r in rows)
    m_ratio = sum(r["m_ours"] for r in rows) / sum(r["m_ref"] for r in rows)
    lines += ["", f"Totals over all rows: time ratio {t_ratio:.2f}, saved-memory ratio {m_ratio:.3f} "
              "(goal: ≤ 0.5 each).", "", NOTE, END]
    return "\n".join(lines)


def write_section(section: str, path: Path, begin: str = BEGIN, end: str = END) -> None:
    empty = "# Benchmarks\n\nWritten by `scripts/bench_*.py`; rerun them to update.\n"
    text = path.read_text() if path.exists() else empty
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    logging.disable(logging.WARNING)  # the reference logs implicit-GEMM warnings for every layer
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rows = measure(args.batch, args.repeats, args.device)
    section = to_markdown(rows, args)
    print(section)
    if not args.no_write:
        out = args.output
        if args.device == "cuda":  # keep the CPU and GPU tables side by side
            begin, end = "<!-- bench_dcls_cuda:begin -->", "<!-- bench_dcls_cuda:end -->"
            section = section.replace(BEGIN, begin).replace(END, end)
            section = section.replace("## DCLS operator", "## DCLS operator on CUDA")
            write_section(section, out, begin, end)
        else:
            write_section(section, out)


if __name__ == "__main__":
    sys.exit(main())
