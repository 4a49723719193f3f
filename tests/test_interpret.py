"""dcls_zoo.interpret: Grad-CAM against pytorch-grad-cam, Threshold-Grad-CAM by hand, the alignment score against
scipy, the ClickMe TFRecord reader on files written here byte by byte, and the CLI pictures and tables."""
import io
import json
import struct
import sys

import numpy as np
import pytest
import scipy.stats
import timm
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.models.convmixer import ConvMixer
from timm.models.convnext import ConvNeXt
from timm.models.fastvit import FastVit
from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv
from timm.models.resnet import BasicBlock, ResNet

from dcls_zoo.cli import main
from dcls_zoo.interpret import alignment_score, grad_cam
from dcls_zoo.interpret.clickme import ClickMe, crc32c, parse_example, read_tfrecord
from dcls_zoo.interpret.gradcam import default_target_layer
from dcls_zoo.interpret.plots import dcls_stages
from dcls_zoo.models.kernel_sharing import SEResNetCifar


# ------------------------------------------------------------------------------------------------------ helpers

def _lively(model: nn.Module) -> nn.Module:
    """Random-init models have layer scales of 1e-6 and zero-init residual norms: give every 1-D parameter a value
    of order one so the maps have structure (and a wrong layout or formula shows)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(0, 0.1) if name.endswith("bias") else p.uniform_(0.5, 1.5)
    return model.eval()


def _tiny_metaformer():
    return MetaFormer(depths=(1, 1, 1, 1), dims=(16, 32, 64, 96), token_mixers=[SepConv, SepConv, Attention, Attention],
                      norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2, num_classes=10)


def _min_max(maps):
    low = maps.amin(dim=(1, 2), keepdim=True)
    return (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low)


# ------------------------------------------------------------------------------------- Grad-CAM = pytorch-grad-cam

def _tokens_to_nchw(t):
    b, n, c = t.shape
    side = int(n ** 0.5)
    return t.transpose(1, 2).reshape(b, c, side, side)


CASES = {
    # name: (model factory, layer (None: our default), layout, pytorch-grad-cam reshape_transform)
    "dcls_convnext_default_layer": (lambda: timm.create_model("dcls_convnext_atto", num_classes=10), None, None, None),
    "convnext_nhwc_mlp": (lambda: timm.create_model("convnext_atto", num_classes=10, conv_mlp=False),
                          "stages.3.blocks.1.mlp", "nhwc", lambda t: t.permute(0, 3, 1, 2)),
    "metaformer_default_layer": (_tiny_metaformer, None, None, None),
    "metaformer_tokens": (_tiny_metaformer, "stages.3.blocks.0", "nlc", _tokens_to_nchw),
    "resnet_default_layer": (lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), None, None, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_grad_cam_equals_pytorch_grad_cam(case):
    factory, layer, layout, reshape = CASES[case]
    torch.manual_seed(0)
    model = _lively(factory())
    x = torch.randn(2, 3, 96, 96)
    targets = torch.tensor([1, 7])
    ours = grad_cam(model, x, targets, layer=layer, layout=layout)
    assert ours.shape == (2, 96, 96) and ours.dtype == torch.float32 and ours.min() >= 0
    assert (ours.flatten(1).std(1) > 0).all()  # maps with structure, not all zero
    target_module = model.get_submodule(layer or default_target_layer(model)[0])
    with GradCAM(model, [target_module], reshape_transform=reshape) as cam:
        reference = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
    # pytorch-grad-cam sums channels and min-max scales its maps: equal to ours up to that positive scale.
    assert (_min_max(ours) - reference).abs().max() <= 1e-5


def test_default_target_layers_of_the_study_families():
    cases = [
        (ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=4), "stages.3"),
        (_tiny_metaformer(), "stages.3"),
        (ResNet(BasicBlock, [1, 1, 1, 1], num_classes=4), "layer4"),
        (FastVit(layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64), num_classes=4), "final_conv"),
        (ConvMixer(dim=8, depth=2, num_classes=4), "blocks.1"),
        (SEResNetCifar(depth=1, channels=(8, 8, 8), stem_width=8), "layer3"),
    ]
    for model, name in cases:
        assert default_target_layer(model) == (name, "nchw"), type(model).__name__
    for name in ("resnet50", "convnext_tiny", "convnext_small", "convnext_base", "caformer_s18", "convformer_s18",
                 "fastvit_sa24", "fastvit_sa36", "dcls_convnext_tiny", "dcls_caformer_s18", "dcls_convformer_s18",
                 "dcls_fastvit_sa24", "dcls_resnet50"):
        model = timm.create_model(name, device="meta")
        layer_name, _ = default_target_layer(model)
        model.get_submodule(layer_name)  # exists
        assert layer_name in ("stages.3", "layer4", "final_conv"), (name, layer_name)


def test_unknown_model_error_names_the_layer_argument():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"^grad_cam: no known Grad-CAM target layer for Sequential; pass layer="):
        grad_cam(model, torch.randn(1, 3, 8, 8), [0])
    maps = grad_cam(model, torch.randn(1, 3, 8, 8), [0], layer="0")  # with layer= it works
    assert maps.shape == (1, 8, 8)
    with pytest.raises(ValueError, match=r"layer='nope' is not a submodule of Sequential"):
        grad_cam(model, torch.randn(1, 3, 8, 8), [0], layer="nope")
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 2\), got \[5\]"):
        grad_cam(model, torch.randn(1, 3, 8, 8), [5], layer="0")


# ------------------------------------------------------------------------------ Threshold-Grad-CAM by hand

class _PoolLinear(nn.Module):
    """logits = W @ mean_hw(A) with A = the input itself (layer 'features'): dS/dA_c = W[t, c] / (h w)."""

    def __init__(self, weight):
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_threshold_grad_cam_against_a_hand_computed_case():
    A = np.array([  # (C=3, h=2, w=3)
        [[1.0, 2.0, 0.0], [3.0, -1.0, 1.0]],
        [[0.5, 0.0, 2.0], [1.0, 1.0, -2.0]],
        [[-1.0, 4.0, 1.0], [0.0, 2.0, 3.0]],
    ])
    W = np.array([[0.6, -1.2, 0.3], [1.0, 1.0, 1.0]])
    model = _PoolLinear(torch.tensor(W, dtype=torch.float32))
    images = torch.tensor(A, dtype=torch.float32)[None]
    alpha = W[0] / 6.0  # mean over the 2 x 3 positions of the gradient W[0, c] / 6
    expected_threshold = np.zeros((2, 3))
    expected_plain = np.zeros((2, 3))
    for i in range(2):
        for j in range(3):
            terms = [alpha[c] * A[c, i, j] for c in range(3)]
            expected_threshold[i, j] = sum(max(t, 0.0) for t in terms) / 3   # ReLU per channel, then the mean
            expected_plain[i, j] = max(sum(terms) / 3, 0.0)                  # the mean, then ReLU
    lo, hi = expected_threshold.min(), expected_threshold.max()
    expected_threshold = np.maximum((expected_threshold - lo) / (hi - lo), 0.3)
    assert not np.allclose(expected_threshold, np.maximum(expected_plain / expected_plain.max(), 0.3))

    thr = grad_cam(model, images, [0], layer="features", method="threshold")
    plain = grad_cam(model, images, [0], layer="features", method="gradcam")
    np.testing.assert_allclose(thr[0].numpy(), expected_threshold, atol=1e-6)
    np.testing.assert_allclose(plain[0].numpy(), expected_plain, atol=1e-7)
    np.testing.assert_allclose(grad_cam(model, images, [0], layer="features", method="threshold", floor=0.5)[0],
                               np.maximum(expected_threshold, 0.5), atol=1e-6)

    # Resized as torchvision's Resize (the reference): bilinear, half-pixel centres.
    big = grad_cam(model, images, [0], layer="features", method="threshold", size=(8, 12))
    reference = TF.resize(torch.tensor(expected_threshold, dtype=torch.float32)[None], [8, 12],
                          interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    np.testing.assert_allclose(big.numpy(), reference.numpy(), atol=1e-6)

    # Constant weighted activations: no min-max possible, the map is the floor everywhere (and skipped as constant).
    flat = grad_cam(model, torch.ones(1, 3, 2, 3), [0], layer="features", method="threshold")
    assert torch.equal(flat, torch.full((1, 2, 3), 0.3))


def test_model_state_is_restored():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=5, drop_rate=0.5).train()
    model.stages[1].eval()                              # mixed modes
    model.stem.requires_grad_(False)                    # some frozen parameters
    calls = []
    user_hook = model.stages[3].register_forward_hook(lambda m, i, o: calls.append(1))
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
             for n, m in model.named_modules()}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():                                # works inside no_grad / inference mode too
        maps = grad_cam(model, x, [0, 1], method="threshold")
    with torch.inference_mode():
        grad_cam(model, x, [0, 1])
    with pytest.raises(ValueError, match="targets must be class indices"):
        grad_cam(model, x, [0, 9])                       # a failing call restores everything too
    assert maps.shape == (2, 64, 64) and float(maps.min()) >= 0.3
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for n, m in model.named_modules()} == hooks
    assert len(calls) == 3                               # the user's hook still ran, once per call
    user_hook.remove()
    # eval mode is used inside: dropout (p=0.5, model in train mode) does not make two calls differ
    torch.testing.assert_close(grad_cam(model, x, [0, 1]), grad_cam(model, x, [0, 1]))


# ---------------------------------------------------------------------------------------- alignment score

@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")  # scipy's NaN for the constant pairs
def test_alignment_score_equals_scipy_spearman_with_ties_and_constant_maps():
    rng = np.random.default_rng(0)
    model_maps = rng.integers(0, 4, size=(6, 7, 5)).astype(np.float32)   # few values: many ties
    human_maps = rng.integers(0, 6, size=(6, 7, 5)).astype(np.float32)
    model_maps[1] = 0.3                                  # constant model map (Threshold-Grad-CAM's floor)
    human_maps[4] = 2.0                                  # constant human map
    result = alignment_score(torch.from_numpy(model_maps), human_maps[:, None])  # tensors and (N, 1, H, W) too
    expected = [scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(model_maps, human_maps)]
    keep = [0, 2, 3, 5]
    np.testing.assert_allclose(result.rho[keep], np.array(expected)[keep], atol=1e-12)
    assert np.isnan(result.rho[[1, 4]]).all()
    assert (result.used, result.skipped) == (4, 2)
    assert result.mean_rho == pytest.approx(np.mean(np.array(expected)[keep]), abs=1e-12)
    assert result.score == pytest.approx(result.mean_rho / 0.65753, abs=1e-12)
    with pytest.raises(ValueError, match="must have the same shape"):
        alignment_score(model_maps, human_maps[:, :5])


# ------------------------------------------------------------------------- TFRecord / tf.train.Example, by hand

def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c_bitwise(data)
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as its two's complement (10 bytes)
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(features: dict) -> bytes:
    entries = b""
    for key, value in features.items():
        if isinstance(value, bytes):
            feature = _field(1, _field(1, value))                                   # BytesList
        elif isinstance(value, float):
            feature = _field(2, _varint(1 << 3 | 5) + struct.pack("<f", value))     # FloatList, unpacked
        elif isinstance(value, tuple):
            feature = _field(3, b"".join(_varint(1 << 3 | 0) + _varint(v) for v in value))  # Int64List, unpacked
        else:
            feature = _field(3, _field(1, _varint(value)))                          # Int64List, packed
        entries += _field(1, _field(1, key.encode()) + _field(2, feature))
    return _field(1, entries)


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data))


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _clickme_arrays(seed: int):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    image = np.stack([(xx + 40 * seed) % 256, yy, (xx + yy) // 2], -1).astype(np.uint8)
    heat = np.zeros((256, 256), np.float32)
    for _ in range(5):  # a few click blobs
        cy, cx = rng.integers(30, 226, size=2)
        heat += 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 15.0 ** 2))
    return image, np.clip(heat, 0, 255).astype(np.uint8)


def _write_clickme(path, seeds, labels):
    arrays = []
    with open(path, "wb") as f:
        for seed, label in zip(seeds, labels):
            image, heat = _clickme_arrays(seed)
            img_jpeg, heat_jpeg = _jpeg(image), _jpeg(heat)
            arrays.append((img_jpeg, heat_jpeg))
            f.write(_record(_example({"image": img_jpeg, "heatmap": heat_jpeg, "label": label})))
    return arrays


def _tf_bilinear(a: np.ndarray, size: int) -> np.ndarray:
    """tf.image.resize(method='bilinear') of (H, W[, C]): half-pixel centres, edge clamping, no antialias."""
    def taps(n_in):
        src = (np.arange(size) + 0.5) * n_in / size - 0.5
        lo = np.floor(src)
        frac = src - lo
        return np.clip(lo, 0, n_in - 1).astype(int), np.clip(lo + 1, 0, n_in - 1).astype(int), frac
    y0, y1, fy = taps(a.shape[0])
    x0, x1, fx = taps(a.shape[1])
    a = a.astype(np.float64)
    fy = fy.reshape(-1, 1, *([1] * (a.ndim - 2)))
    fx = fx.reshape(1, -1, *([1] * (a.ndim - 2)))
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _reference_heatmap(heat: np.ndarray) -> np.ndarray:
    """Harmonization's heatmap pipeline: 64x64 bilinear, 10x10 sigma-10 Gaussian with tf.meshgrid ('xy') over
    x = range(-5, 5), y = range(4, -6, -1), conv2d 'SAME' (zero pad 4 before, 5 after), 224x224 bilinear."""
    small = _tf_bilinear(heat, 64)
    xs, ys = np.meshgrid(np.arange(-5, 5), np.arange(4, -6, -1))  # 'xy' indexing: xs varies along columns
    kernel = np.exp(-(xs ** 2 + ys ** 2) / 200.0)
    kernel /= kernel.sum()
    padded = np.pad(small, ((4, 5), (4, 5)))
    blurred = np.zeros_like(small)
    for i in range(10):
        for j in range(10):
            blurred += kernel[i, j] * padded[i:i + 64, j:j + 64]
    return _tf_bilinear(blurred, 224)


def test_crc32c_equals_the_bitwise_definition():
    assert _crc32c_bitwise(b"123456789") == 0xE3069283  # the CRC-32C check value: the oracle is right
    rng = np.random.default_rng(0)
    for n in (0, 1, 63, 64, 65, 127, 128, 129, 1000, 4097):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _crc32c_bitwise(data), n


def test_tfrecord_reader_on_records_written_by_hand(tmp_path):
    path = tmp_path / "val-0.tfrecords"
    arrays = _write_clickme(path, seeds=[0, 1], labels=[3, 999])
    data = ClickMe(path)
    assert len(data) == 2
    for i, (label, (img_jpeg, heat_jpeg)) in enumerate(zip([3, 999], arrays)):
        image, heatmap, got_label = data[i]
        assert got_label == label and image.shape == (3, 224, 224) and heatmap.shape == (224, 224)
        decoded = np.asarray(Image.open(io.BytesIO(img_jpeg)))
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), _tf_bilinear(decoded, 224), atol=1e-3)
        decoded_heat = np.asarray(Image.open(io.BytesIO(heat_jpeg)))
        np.testing.assert_allclose(heatmap.numpy(), _reference_heatmap(decoded_heat), atol=1e-3)

    # Other encodings protobuf allows: negative int64s, unpacked int lists, floats; unknown fields are skipped.
    example = _example({"a": -5, "b": (1, -2, 3), "c": 1.5, "d": b"xyz"}) + _varint(2 << 3 | 0) + _varint(7)
    assert parse_example(example) == {"a": [-5], "b": [1, -2, 3], "c": [1.5], "d": [b"xyz"]}
    assert list(read_tfrecord(path))[1] == _example({"image": arrays[1][0], "heatmap": arrays[1][1], "label": 999})


def test_clickme_reads_a_datasets_folder(tmp_path):
    import datasets

    image, heat = _clickme_arrays(2)
    features = datasets.Features(image=datasets.Image(), heatmap=datasets.Image(), label=datasets.Value("int64"))
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image)], "heatmap": [Image.fromarray(heat)], "label": [42]}, features=features)
    ds.save_to_disk(str(tmp_path / "clickme_hf"))
    data = ClickMe(tmp_path / "clickme_hf")
    got_image, got_heat, label = data[0]
    assert len(data) == 1 and label == 42
    np.testing.assert_allclose(got_image.permute(1, 2, 0).numpy(), _tf_bilinear(image, 224), atol=1e-3)
    np.testing.assert_allclose(got_heat.numpy(), _reference_heatmap(heat.astype(np.float64)), atol=1e-3)
    ds.remove_columns("heatmap").save_to_disk(str(tmp_path / "no_heatmap"))
    with pytest.raises(ValueError, match=r"needs the columns image, heatmap, label; missing \['heatmap'\]"):
        ClickMe(tmp_path / "no_heatmap")


def test_tfrecord_reader_rejects_corrupt_files(tmp_path):
    path = tmp_path / "val-0.tfrecords"
    _write_clickme(path, seeds=[0], labels=[1])
    raw = path.read_bytes()
    cases = {
        "truncated.tfrecords": (raw[:-100], r"truncated TFRecord at byte 0: the record claims \d+ bytes"),
        "flipped.tfrecords": (raw[:500] + bytes([raw[500] ^ 1]) + raw[501:], "bad TFRecord data checksum"),
        "header.tfrecords": (raw[:3] + b"\x07" + raw[4:], "bad TFRecord length checksum at byte 0"),
        "short.tfrecords": (raw[:7], "expected a 12-byte record header, got 7"),
    }
    for name, (content, message) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            ClickMe(bad)[0]
    not_example = tmp_path / "other.tfrecords"
    not_example.write_bytes(_record(_example({"image": b"x", "label": 2})))
    with pytest.raises(ValueError, match=r"expected one bytes feature 'heatmap'.*found \['image', 'label'\]"):
        ClickMe(not_example)[0]
    garbage = tmp_path / "garbage.tfrecords"
    garbage.write_bytes(_record(b"\x0a\xff\xff\xff"))
    with pytest.raises(ValueError, match="record at byte 0 is not a tf.train.Example"):
        ClickMe(garbage)[0]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        ClickMe(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------- the CLI

def test_kernel_pictures_group_dcls_layers_by_stage():
    resnet = dcls_stages(timm.create_model("dcls_resnet50", device="meta"))
    assert list(resnet) == ["layer1", "layer2", "layer3", "layer4"]
    assert [len(v) for v in resnet.values()] == [3, 4, 6, 3]  # every 3x3 conv of the bottlenecks
    convnext = dcls_stages(timm.create_model("dcls_convnext_atto", device="meta"))
    assert list(convnext) == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert [len(v) for v in convnext.values()] == [2, 2, 6, 2]


def test_cli_gradcam_kernels_and_clickme_eval(tmp_path, capsys):
    image, _ = _clickme_arrays(0)
    Image.fromarray(image).save(tmp_path / "cat.png")
    out = tmp_path / "cam.png"
    assert main(["gradcam", str(tmp_path / "cat.png"), "--model", "dcls_convnext_atto", "--method", "threshold",
                 "--target", "281", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "threshold map of class 281" in capsys.readouterr().out

    for name in ("dcls_convnext_atto", "snn_delays_shd"):
        png = tmp_path / f"{name}.png"
        assert main(["kernels", name, "--out", str(png)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shards = tmp_path / "clickme"
    shards.mkdir()
    _write_clickme(shards / "val-0.tfrecords", seeds=[0, 1, 2], labels=[1, 2, 3])
    _write_clickme(shards / "val-1.tfrecords", seeds=[3, 4], labels=[4, 5])
    prefix = tmp_path / "table"
    assert main(["clickme-eval", "--data", str(shards), "--models", "dcls_convnext_atto", "--batch-size", "2",
                 "--fraction", "0.9", "--out", str(prefix)]) == 0
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert [(r["model"], r["dcls"], r["method"], r["images_used"] + r["constant_maps_skipped"]) for r in rows] == [
        ("dcls_convnext_atto", True, "gradcam", 4), ("dcls_convnext_atto", True, "threshold", 4)]
    assert all(r["score"] is None or -1 / 0.65753 <= r["score"] <= 1 / 0.65753 for r in rows)
    table = (tmp_path / "table.md").read_text()
    assert "| model | DCLS | method | score | mean rho | images used | constant maps skipped |" in table
    assert "on 4 of 5 images" in table and table.count("| dcls_convnext_atto | yes |") == 2


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    shards = tmp_path / "clickme"
    shards.mkdir()
    _write_clickme(shards / "val-0.tfrecords", seeds=[0], labels=[1])
    capsys.readouterr()
    assert main(["clickme-eval", "--data", str(shards), "--models", "dcls_convnext_atto", "--fraction", "0.5",
                 "--out", str(tmp_path / "t")]) == 1
    assert capsys.readouterr().err == ("dcls-zoo clickme-eval: error: --fraction 0.5 of 1 images is less than one "
                                       "batch of 32; raise --fraction or lower --batch-size\n")
    assert main(["kernels", "resnet18", "--out", str(tmp_path / "k.png")]) == 1
    assert capsys.readouterr().err == ("dcls-zoo kernels: error: resnet18 has no 2-D DCLS layers (Dcls2d) to "
                                       "picture; pick a dcls_* model or snn_delays_*\n")
    assert main(["gradcam", str(tmp_path / "none.png"), "--model", "resnet18", "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dcls-zoo gradcam: error: ") and "none.png: cannot read the image" in err
    assert err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # matplotlib not installed
    assert main(["kernels", "dcls_convnext_atto", "--out", str(tmp_path / "k.png")]) == 1
    assert capsys.readouterr().err == ("dcls-zoo kernels: error: matplotlib is needed for the interpretability "
                                       "pictures: pip install 'dcls-zoo[train]' (or pip install matplotlib)\n")
