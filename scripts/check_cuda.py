"""GPU check of the DCLS operator and DCLS-ConvNeXt against the authors' `dcls` 0.1.1 (run on a CUDA machine).

1. Parity: outputs and gradients of Dcls1d/2d/3d, every version, fp32, ours vs the reference, on CUDA.
2. Whole model: DCLS ConvNeXt-T (v0 17/34 and gauss 23/26), train-mode forward+backward at 224², batch 8:
   CUDA peak memory and time, ours vs timm's ConvNeXt with the reference `Dcls2d` swapped in.
3. bf16 autocast forward+backward, the eval-mode kernel cache and `.to()` across devices.
4. `dcls_conv`'s forced gradient paths (FFT weight gradient through cuFFT, flipped-kernel input gradient) against
   cuDNN's, fp32 and bf16 autocast (on CUDA "auto" uses cuDNN's own backward).
5. Speed (`--only speed`, not part of the default run): `scripts/bench_dcls.py` and `scripts/bench_models.py` on
   CUDA in fp32 and under bf16 autocast; they write their own sections of BENCHMARKS.md. Goals (issue 18): layer
   forward+backward <= 0.5x the reference's time at every stage shape; dcls_convnext_tiny training throughput
   >= 0.9x timm's convnext_tiny (train ratio <= 1.11).
Written without a GPU (no device was lent in the session that added parts 4 and 5): untested on CUDA so far.

    python scripts/check_cuda.py [--out cuda_check.md] [--only parity|whole_model|misc|conv_paths|speed]
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import timm
import torch

import dcls_zoo  # noqa: F401
from bench_common import best_time, cuda_peak_bytes
from dcls_zoo.layers import Dcls1d, Dcls2d, Dcls3d


def parity(lines: list[str]) -> None:
    from DCLS.construct import modules as ref

    lines += ["## Parity on CUDA (fp32, max |ours - ref| / max |ref|)", "",
              "| layer | version | output | input grad | weight grad | P grad | SIG grad |",
              "|---|---|---|---|---|---|---|"]
    worst = 0.0
    for ndim, ours_cls, ref_cls in ((1, Dcls1d, ref.Dcls1d), (2, Dcls2d, ref.Dcls2d), (3, Dcls3d, ref.Dcls3d)):
        for version in ("v0", "v1", "gauss", "max"):
            torch.manual_seed(0)
            dks = {1: 9, 2: 7, 3: 5}[ndim]
            kw = dict(kernel_count=5, padding=dks // 2, dilated_kernel_size=dks, groups=8, version=version)
            r = ref_cls(8, 16, **kw).cuda()
            with torch.no_grad():
                r.P.uniform_(-(dks // 2), dks // 2)
            o = ours_cls(8, 16, **kw).cuda()
            o.load_state_dict(r.state_dict())
            x = torch.randn(4, 8, *([16] * ndim), device="cuda")
            xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
            yr, yo = r(xr), o(xo)
            g = torch.randn_like(yr)
            yr.backward(g)
            yo.backward(g)

            def rel(a, b):
                return ((a - b).abs().max() / b.abs().max()).item()

            errs = [rel(yo, yr), rel(xo.grad, xr.grad)] + [
                rel(getattr(o, n).grad, getattr(r, n).grad) if getattr(r, n) is not None else float("nan")
                for n in ("weight", "P", "SIG")]
            worst = max(worst, *[e for e in errs if e == e])
            lines.append(f"| Dcls{ndim}d | {version} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
    lines += ["", f"Worst relative difference: {worst:.1e}", ""]


def reference_convnext(version: str, dks: int, count: int) -> torch.nn.Module:
    from DCLS.construct.modules import Dcls2d as RefDcls2d

    model = timm.models.convnext.convnext_tiny()
    for stage in model.stages:
        shared = None
        for block in stage.blocks:
            c = block.conv_dw.in_channels
            layer = RefDcls2d(c, c, kernel_count=count, dilated_kernel_size=dks, padding=dks // 2, groups=c,
                              version=version)
            if shared is None:
                shared = (layer.P, layer.SIG)
            layer.P, layer.SIG = shared
            block.conv_dw = layer
    return model


def whole_model(lines: list[str]) -> None:
    lines += ["## DCLS ConvNeXt-T, train-mode forward+backward, batch 8, 224², CUDA", "",
              "| model | peak ours (MiB) | peak ref (MiB) | ratio | time ours (ms) | time ref (ms) | ratio |",
              "|---|---|---|---|---|---|---|"]
    x = torch.randn(8, 3, 224, 224, device="cuda")
    cases = (("dcls_convnext_tiny", "v0", 17, 34), ("dcls_gauss_convnext_tiny", "gauss", 23, 26))
    for name, version, dks, count in cases:
        ours = timm.create_model(name).cuda().train()
        ref = reference_convnext(version, dks, count).cuda().train()
        ref.load_state_dict(ours.state_dict())
        res = {}
        for label, model in (("ours", ours), ("ref", ref)):
            def step():
                model.zero_grad(set_to_none=True)
                model(x).sum().backward()
            step()
            res[label] = (cuda_peak_bytes(step), best_time(step, repeats=5))
            model.zero_grad(set_to_none=True)
        (mo, to), (mr, tr) = res["ours"], res["ref"]
        lines.append(f"| {name} | {mo / 2**20:.0f} | {mr / 2**20:.0f} | {mo / mr:.2f} | {to * 1e3:.1f} | "
                     f"{tr * 1e3:.1f} | {to / tr:.2f} |")
        del ours, ref
        torch.cuda.empty_cache()
    lines.append("")


def misc(lines: list[str]) -> None:
    # TF32 convolutions (cuDNN's default) differ from the CPU by ~1e-3; compare in full fp32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = timm.create_model("dcls_convnext_atto", num_classes=5).cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x)
    y.float().sum().backward()
    ok_bf16 = y.dtype == torch.bfloat16 and model.stages[0].blocks[0].conv_dw.P.grad is not None
    model.eval()
    with torch.no_grad():
        a = model(x)
        b = model(x)
    cached = torch.equal(a, b) and model.stages[0].blocks[0].conv_dw._cached_kernel is not None
    cpu = model.cpu()
    with torch.no_grad():
        c = cpu(x.cpu())
    moved = torch.allclose(c, a.cpu(), rtol=1e-4, atol=1e-4)
    lines += ["## Other checks", "", f"- bf16 autocast forward+backward: {'ok' if ok_bf16 else 'FAILED'}",
              f"- eval-mode kernel cache: {'ok' if cached else 'FAILED'}",
              f"- moved CUDA → CPU after use, same outputs: {'ok' if moved else 'FAILED'}", ""]


def conv_paths(lines: list[str]) -> None:
    import torch.nn.functional as F

    from dcls_zoo.layers.dcls_conv import dcls_conv

    lines += ["## dcls_conv gradient paths on CUDA (max |path - cuDNN| / max |cuDNN|, full fp32 / bf16 autocast)", "",
              "| paths | dtype | input grad | kernel grad | bias grad |", "|---|---|---|---|---|"]
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    x = torch.randn(4, 96, 56, 56, device="cuda").contiguous(memory_format=torch.channels_last).requires_grad_()
    kernel = torch.randn(96, 1, 17, 17, device="cuda").requires_grad_()
    bias = torch.randn(96, device="cuda").requires_grad_()
    for amp in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            y_ref = F.conv2d(x, kernel, bias, 1, 8, 1, 96)
        g = torch.randn_like(y_ref)
        expected = torch.autograd.grad(y_ref, (x, kernel, bias), g)
        for paths in (("fft", "flip"), ("fft", "direct"), ("direct", "flip")):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                y = dcls_conv(x, kernel, bias, 1, 8, 1, 96, weight_grad=paths[0], input_grad=paths[1])
            got = torch.autograd.grad(y, (x, kernel, bias), g)
            errs = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(got, expected)]
            lines.append(f"| {'/'.join(paths)} | {'bf16 autocast' if amp else 'fp32'} | "
                         + " | ".join(f"{e:.1e}" for e in errs) + " |")
    lines.append("")


def speed(lines: list[str]) -> None:
    root = Path(__file__).resolve().parents[1]
    commands = []
    for amp in ([], ["--autocast-bf16"]):
        commands.append([sys.executable, str(root / "scripts/bench_dcls.py"), "--device", "cuda", "--batch", "32",
                         "--repeats", "10", *amp])
        commands.append([sys.executable, str(root / "scripts/bench_models.py"), "--device", "cuda", "--batch", "32",
                         "--repeats", "10", *amp])
    lines += ["## Speed (sections of BENCHMARKS.md written by the benchmark scripts)", ""]
    for command in commands:
        print("$", " ".join(command), flush=True)
        result = subprocess.run(command)
        lines.append(f"- `{' '.join(Path(c).name if c.endswith('.py') else c for c in command[1:])}`: "
                     + ("ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"))
    lines.append("")


def main() -> None:
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("cuda_check.md"))
    parser.add_argument("--only", choices=("parity", "whole_model", "misc", "conv_paths", "speed"), default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("check_cuda.py needs a CUDA device")
    lines = [f"# CUDA check: {torch.cuda.get_device_name()}, torch {torch.__version__}, timm {timm.__version__}", ""]
    for part in (parity, whole_model, misc, conv_paths, speed):
        if args.only == part.__name__ or (args.only is None and part is not speed):
            part(lines)
            args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
