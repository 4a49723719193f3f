"""Run timm's real train.py, validate.py and benchmark.py on a DCLS model through `python -m dcls_zoo.timm_script`,
and check the papers' recipe held: positions clamped to the grid, one position group at `--position-lr-scale` x the
lr without weight decay, validate.py reading the checkpoint, benchmark.py timing inference and training steps in
channels_last.

timm ships these scripts in neither its wheel nor its sdist, so the suite cannot fetch them on a fresh machine
(tests/test_timm_scripts.py drives timm's factories the way train.py does instead). Point this at a
pytorch-image-models checkout of the installed timm version:

    python scripts/check_timm_scripts.py PATH/TO/pytorch-image-models
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--model", "dcls_convnext_atto", "--num-classes", "2", "--img-size", "32", "-b", "4", "-j", "0",
          "--device", "cpu", "--no-prefetcher"]


def _launch(*args: object) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "dcls_zoo.timm_script", *map(str, args)], capture_output=True,
                            text=True, env=env, timeout=1200)
    if result.returncode:
        sys.exit(f"failed: {' '.join(map(str, args[:2]))}\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("timm_repo", type=Path, help="a pytorch-image-models checkout (holding train.py, validate.py)")
    args = parser.parse_args()
    train_py, validate_py = args.timm_repo / "train.py", args.timm_repo / "validate.py"
    benchmark_py = args.timm_repo / "benchmark.py"
    for script in (train_py, validate_py, benchmark_py):
        if not script.is_file():
            sys.exit(f"{script} is not a file; pass a pytorch-image-models checkout")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = _image_folder(tmp / "data")
        print("train.py, 1 epoch, position lr x 1e4 ...", flush=True)
        log = _launch("--position-lr-scale", "10000", train_py, "--data-dir", data, *COMMON, "--epochs", "1",
                      "--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05", "--warmup-epochs", "0",
                      "--output", tmp, "--experiment", "run")
        assert "DCLS positions get 10000x the learning rate" in log, log[-2000:]
        import argparse as _argparse
        with torch.serialization.safe_globals([_argparse.Namespace]):   # what timm's train.py pickles
            checkpoint = torch.load(tmp / "run" / "last.pth.tar", map_location="cpu", weights_only=True)
        positions = {k: v for k, v in checkpoint["state_dict"].items() if k.endswith(".P")}
        bound = max(v.abs().max().item() for v in positions.values())
        groups = [{k: v for k, v in g.items() if k != "params"} for g in checkpoint["optimizer"]["param_groups"]]
        dcls = [g for g in groups if g.get("lr_scale") == 10000.0]
        print(f"  {len(positions)} position tensors, max |P| = {bound} (bound 8); position groups: {dcls}")
        assert len(positions) == 4 and bound == 8
        assert len(dcls) == 1 and dcls[0]["weight_decay"] == 0.0
        print("validate.py on the checkpoint ...", flush=True)
        log = _launch(validate_py, "--data-dir", data, "--split", "validation", *COMMON,
                      "--checkpoint", tmp / "run" / "last.pth.tar")
        assert '"top1"' in log, log[-2000:]
        print("  ok:", [line for line in log.splitlines() if '"top1"' in line][-1:])
    print("benchmark.py, inference and train steps in channels_last ...", flush=True)
    log = _launch(benchmark_py, "--model", "dcls_convnext_atto", "--bench", "both", "--channels-last", "--batch-size",
                  "2", "--img-size", "64", "--device", "cpu", "--num-warm-iter", "1", "--num-bench-iter", "5")
    assert '"infer_samples_per_sec"' in log and '"train_samples_per_sec"' in log, log[-2000:]
    print("  ok:", [line.strip() for line in log.splitlines() if "samples_per_sec" in line])


if __name__ == "__main__":
    main()
