"""The main job (README command 1): `dcls-zoo train` with no arguments, the whole default run.

Trains the DCLS ConvNeXt on all of scikit-learn's digits, writes the Hub-ready folder, reloads it through timm
and evaluates again. Checks the accuracy the README promises (not the time: that is measured, not tested).
"""
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_dcls_zoo_train_without_arguments(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "dcls_zoo.cli", "train"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "dcls-zoo-output"
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] >= 0.95
    assert results["reload_eval_accuracy"] == pytest.approx(results["eval_accuracy"], abs=1e-9)
    printed = result.stdout
    assert f"{results['eval_accuracy']:.4f}" in printed and f"{results['reload_eval_accuracy']:.4f}" in printed
    for name in ("model.safetensors", "config.json", "README.md", "training_curves.png"):
        assert (out / name).is_file(), name
    assert f"| eval_accuracy | {results['eval_accuracy']:.4f} |" in (out / "README.md").read_text()  # the card
