"""DCLS backbones for dense prediction with the libraries researchers use: segmentation_models_pytorch (timm
universal encoders: Unet, FPN, UPerNet) and torchvision detection (Faster R-CNN over an FPN on `features_only`),
plus the example script `scripts/train_segmentation.py` on a tiny (image, mask) folder the test writes."""
import importlib.util
import json
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.models.detection import FasterRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import dcls_zoo  # noqa: F401  (registers the DCLS models that smp's "tu-" encoders create through timm)
from dcls_zoo.layers import DclsNd, clamp_dcls_parameters, dcls_position_parameter_names

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_segmentation.py"
ENCODER = "dcls_convnext_atto"


def _positions_by_stage(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Every DCLS layer's positions (and widths), grouped by the stage its name says it belongs to."""
    stages: dict[str, list[torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, DclsNd):
            stage = re.search(r"stages[._](\d+)", name).group(1)
            stages.setdefault(stage, []).append(torch.cat([module.P.detach().flatten()] + (
                [] if module.SIG is None else [module.SIG.detach().flatten()])))
    return stages


def _assert_positions_tied(model: nn.Module, n_stages: int) -> None:
    stages = _positions_by_stage(model)
    assert len(stages) == n_stages
    for stage, positions in stages.items():
        assert len(positions) >= 2
        for p in positions[1:]:
            assert torch.equal(p, positions[0]), f"stage {stage}: blocks compute with different positions"


def _train_steps(model, make_batch, loss_fn, steps=2):
    position_names = dcls_position_parameter_names(model)
    assert position_names, "no DCLS positions found in the model"
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in params.items() if n not in position_names]},
        {"params": [params[n] for n in sorted(position_names)], "lr": 5e-3, "weight_decay": 0.0},
    ], lr=1e-3)
    before = {n: params[n].detach().clone() for n in position_names}
    losses = []
    model.train()
    for step in range(steps):
        loss = loss_fn(model, *make_batch(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clamp_dcls_parameters(model)
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert any(not torch.equal(before[n], params[n]) for n in position_names), "positions did not train"
    return losses


def _segmentation_batch(step, size=64, classes=3):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(2, 3, size, size, generator=g)
    y = torch.randint(0, classes, (2, size, size), generator=g)
    return x, y


def _segmentation_loss(model, x, y):
    return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("arch", ["Unet", "FPN", "UPerNet"])
def test_smp_model_on_a_dcls_encoder_builds_trains_saves_and_reloads(arch, tmp_path):
    torch.manual_seed(0)
    model = getattr(smp, arch)(f"tu-{ENCODER}", encoder_weights=None, classes=3)
    assert any(isinstance(m, DclsNd) for m in model.encoder.modules())
    x = _segmentation_batch(0)[0]
    assert model(x).shape == (2, 3, 64, 64)
    _train_steps(model, _segmentation_batch, _segmentation_loss)
    _assert_positions_tied(model, n_stages=4)

    model.eval()
    model.save_pretrained(str(tmp_path / "saved"))
    reloaded = smp.from_pretrained(str(tmp_path / "saved")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)
    _train_steps(reloaded, _segmentation_batch, _segmentation_loss, steps=1)
    _assert_positions_tied(reloaded, n_stages=4)


def test_smp_encoder_starts_from_dcls_weights_given_as_a_file(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model(ENCODER)
    path = tmp_path / "convnext_dcls_atto_ema.pth"
    torch.save({"model": source.state_dict()}, path)  # the authors' container layout
    model = smp.Unet(f"tu-{ENCODER}", encoder_weights=True, classes=2, pretrained_cfg_overlay=dict(file=str(path)))
    encoder = model.encoder.model.state_dict()
    expected = source.state_dict()
    for key, value in encoder.items():  # timm's FeatureListNet flattens `stages.0` to `stages_0`
        assert torch.equal(value, expected[re.sub(r"^(stem|stages)_(\d+)", r"\1.\2", key)]), key


class TimmBackboneWithFPN(nn.Module):
    """A timm `features_only` backbone + torchvision's `FeaturePyramidNetwork`, in the shape torchvision's detectors
    expect (an `OrderedDict` of maps '0'... plus 'pool', and `out_channels`), as `BackboneWithFPN` does for
    torchvision's own backbones."""

    def __init__(self, model_name: str, out_channels: int = 32, **kwargs):
        super().__init__()
        self.body = timm.create_model(model_name, features_only=True, **kwargs)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def _detection_batch(step, size=64):
    g = torch.Generator().manual_seed(step)
    images, targets = [], []
    for _ in range(2):
        image = 0.1 * torch.randn(3, size, size, generator=g)
        x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        w, h = torch.randint(12, size // 2, (2,), generator=g).tolist()
        image[:, y0:y0 + h, x0:x0 + w] += 1.0  # a bright box to find
        images.append(image)
        targets.append({"boxes": torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float32),
                        "labels": torch.tensor([1 + step % 2])})
    return images, targets


def _detection_loss(model, images, targets):
    return sum(model(images, targets).values())


def test_faster_rcnn_on_a_dcls_convnext_fpn_trains_and_detects():
    torch.manual_seed(0)
    backbone = TimmBackboneWithFPN(ENCODER)
    detector = FasterRCNN(backbone, num_classes=3, min_size=64, max_size=64,
                          rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20,
                          rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_batch_size_per_image=32)
    features = backbone(torch.randn(1, 3, 64, 64))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]
    _train_steps(detector, _detection_batch, _detection_loss, steps=2)
    _assert_positions_tied(detector, n_stages=4)
    detector.eval()
    with torch.no_grad():
        detections = detector(_detection_batch(5)[0])
    assert len(detections) == 2 and {"boxes", "labels", "scores"} <= set(detections[0])


# ------------------------------------------------------------------------------------- the segmentation script
def _load_script():
    spec = importlib.util.spec_from_file_location("train_segmentation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_folder(root: Path, n: int = 6, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((size, size), dtype=np.uint8)
        y0, x0 = rng.integers(0, size // 2, 2)
        mask[y0:y0 + size // 2, x0:x0 + size // 2] = 1 + i % 2
        image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        image[mask > 0] += 150
        Image.fromarray(image).save(root / "images" / f"clip{i}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"clip{i}.png")
    return root


def test_miou_equals_scikit_learn():
    from sklearn.metrics import jaccard_score

    script = _load_script()
    rng = np.random.default_rng(1)
    target = rng.integers(0, 4, 500)
    pred = rng.integers(0, 4, 500)
    pred[target == 3] = 3  # a perfect class
    target[:20] = 255       # ignored pixels
    confusion = script.confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 4, ignore_index=255)
    keep = target != 255
    expected = jaccard_score(target[keep], pred[keep], average="macro", labels=[0, 1, 2, 3])
    assert abs(script.mean_iou(confusion) - expected) < 1e-12


def test_train_segmentation_script_end_to_end_from_pretrained_file(tmp_path, capsys):
    data = _write_folder(tmp_path / "data")
    torch.manual_seed(0)
    source = timm.create_model(ENCODER)
    weights = tmp_path / "dcls_atto.pth"
    torch.save({"model": source.state_dict()}, weights)
    out = tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), "--data", str(data), "--model", ENCODER, "--arch", "fpn",
           "--num-classes", "3", "--img-size", "32", "--epochs", "2", "--batch-size", "2", "--val-fraction", "0.34",
           "--pretrained", "--pretrained-file", str(weights), "--output", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert 0.0 <= metrics["epochs"][-1]["val_miou"] <= 1.0 and np.isfinite(metrics["epochs"][-1]["train_loss"])
    assert metrics["pretrained"] == str(weights) and metrics["num_val"] == 2 and metrics["num_train"] == 4
    model = smp.from_pretrained(str(out / "model")).eval()
    _assert_positions_tied(model, n_stages=4)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)

    # the pretrained start is the file's weights (checked on the script's own builder, before any step)
    script = _load_script()
    args = script.parse_args(["--data", str(data), "--model", ENCODER, "--num-classes", "3", "--pretrained",
                              "--pretrained-file", str(weights), "--output", str(tmp_path / "unused")])
    built = script.build_model(args).encoder.model.state_dict()
    for key, value in built.items():
        assert torch.equal(value, source.state_dict()[re.sub(r"^(stem|stages)_(\d+)", r"\1.\2", key)]), key

    # a second run into the same folder is refused (nothing overwritten), in one line and without a traceback
    before = (out / "metrics.json").read_bytes()
    assert script.main(cmd[2:]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train_segmentation.py: error: --output {out} exists and is not empty; choose another folder or pass "
        "--overwrite"]
    assert (out / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("setup,expected", [
    ("missing_masks", "train_segmentation.py: error: --data {data}: no masks/ folder (expected images/ and masks/ "
                      "with one mask PNG per image, same file stem)"),
    ("unpaired", "train_segmentation.py: error: --data {data}: image clip0.jpg has no mask masks/clip0.png"),
    ("bad_label", "train_segmentation.py: error: mask {data}/masks/clip0.png holds class 7, but --num-classes is 3 "
                  "(use --ignore-index for void pixels)"),
    ("no_weights", "train_segmentation.py: error: could not build upernet on encoder 'dcls_convnext_atto': No "
                   "pretrained weights exist for dcls_convnext_atto. Drop --pretrained to start from random weights."),
    ("unknown_model", "train_segmentation.py: error: could not build upernet on encoder 'no_such_model': Unknown "
                      "model (no_such_model)"),
])
def test_train_segmentation_script_bad_data_is_one_line(setup, expected, tmp_path, capsys):
    data = _write_folder(tmp_path / "data", n=3)
    if setup == "missing_masks":
        for p in (data / "masks").iterdir():
            p.unlink()
        (data / "masks").rmdir()
    elif setup == "unpaired":
        (data / "masks" / "clip0.png").unlink()
    elif setup == "bad_label":
        Image.fromarray(np.full((40, 40), 7, dtype=np.uint8)).save(data / "masks" / "clip0.png")
    extra = {"no_weights": ["--pretrained"], "unknown_model": ["--model", "no_such_model"]}.get(setup, [])
    code = _load_script().main(["--data", str(data), "--model", ENCODER, "--num-classes", "3", "--img-size", "32",
                                "--epochs", "1", "--output", str(tmp_path / "run"), *extra])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected.format(data=data)]
    assert not (tmp_path / "run").exists()
