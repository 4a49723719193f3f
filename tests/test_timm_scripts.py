"""timm's own train.py and validate.py on a zoo model, through the documented launcher
`python -m dcls_zoo.timm_script SCRIPT ARGS`: the zoo is registered, positions are clamped by the model itself (no
trainer of ours), and the launcher's optimizer groups give positions `--position-lr-scale` x the learning rate.

The scripts are not in timm's wheel or sdist: `python scripts/fetch_third_party_tests.py` downloads the installed
version's from GitHub into tests/third_party/timm_scripts/ (git-ignored, never committed).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SCRIPTS = Path(__file__).resolve().parent / "third_party" / "timm_scripts"
ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    path = SCRIPTS / name
    assert path.is_file(), (f"{path} is missing: run `python scripts/fetch_third_party_tests.py` (it downloads timm's "
                            f"{name} from GitHub), or copy it there from a pytorch-image-models checkout")
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


def _launch(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "dcls_zoo.timm_script", *map(str, args)], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


COMMON = ["--model", "dcls_convnext_atto", "--num-classes", "2", "--img-size", "32", "-b", "4", "-j", "0",
          "--device", "cpu", "--no-prefetcher"]


def test_timm_train_py_then_validate_py_follow_the_dcls_recipe(image_folder, tmp_path):
    # a huge position learning rate (1e-3 x 1e4): positions leave the grid at every step unless clamped
    log = _launch("--position-lr-scale", "10000", _script("train.py"), "--data-dir", image_folder, *COMMON,
                  "--epochs", "1", "--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05",
                  "--warmup-epochs", "0", "--output", tmp_path, "--experiment", "run")
    assert "DCLS positions get 10000x the learning rate" in log
    checkpoint = torch.load(tmp_path / "run" / "last.pth.tar", map_location="cpu", weights_only=False)
    positions = {k: v for k, v in checkpoint["state_dict"].items() if k.endswith(".P")}
    assert len(positions) == 4   # one per stage: the stage's first block owns it
    assert max(v.abs().max().item() for v in positions.values()) == 8   # clamped to 17 // 2, and reached
    groups = [{k: v for k, v in g.items() if k != "params"} for g in checkpoint["optimizer"]["param_groups"]]
    dcls = [g for g in groups if g.get("lr_scale") == 10000.0]
    assert len(dcls) == 1 and dcls[0]["weight_decay"] == 0.0 and dcls[0]["lr"] == pytest.approx(10.0)

    log = _launch(_script("validate.py"), "--data-dir", image_folder, "--split", "validation", *COMMON,
                  "--checkpoint", tmp_path / "run" / "last.pth.tar")
    assert '"top1"' in log and "dcls_convnext_atto" in log


def test_the_launcher_says_what_it_needs_in_one_line(tmp_path, capsys):
    from dcls_zoo.timm_script import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "no_train.py")])
    assert exit_info.value.code == 2
    assert "is not a file; pass the path of timm's train.py" in capsys.readouterr().err.strip().splitlines()[-1]
