"""DCLS ResNet-50: parameter count, position tying, and loading timm-layout train.py checkpoints.

The reference model is timm's own `resnet50` with the `dcls` 0.1.1 package's `Dcls2d` swapped in by the original
`replace_depthwise_dcls_resnet` (DCLS-GradCAM-Eval): walk `named_modules()`, replace every 3x3 conv by a
`Dcls2d(groups=1, stride kept, bias as before, v0, 7x7 grid, 5 elements)`, and let a layer whose in_channels exceeds
all seen so far start a stage whose first layer's `P` the others share. The checkpoint is in timm's key layout.

The reference's kernel construction materialises (7, 7, 2, C_out, C_in, 5) tensors per layer (~0.5 GB and seconds for
layer4 of ResNet-50), so logit parity is checked on ResNet-50 with its stage widths divided by 4 (`channels=`,
same depths, same code paths, 4 tied stages); parameter counts are checked at full width.
"""
import importlib
import argparse

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import resnet as timm_resnet

from dcls_zoo.layers import DclsNd
from dcls_zoo.layers.sharing import expand_shared_entries, shared_parameter_groups
from dcls_zoo.models.dcls_resnet import DclsResNet, checkpoint_filter_fn
from dcls_oracle import original_replace_dcls, randomize_norm_statistics

dcls_modules = importlib.import_module("DCLS.construct.modules")

BLOCKS_PER_STAGE, WIDTHS = (3, 4, 6, 3), (64, 128, 256, 512)


NARROW = dict(channels=(16, 32, 64, 128))


def _reference_model() -> nn.Module:
    model = original_replace_dcls(timm_resnet.resnet50(**NARROW), "v0", 7, 5, select=lambda c: c.kernel_size == (3, 3))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".P"):
                p.uniform_(-3, 3)   # the whole 7x7 grid, borders included
            elif name.endswith(".weight") and p.ndim == 1:   # BN scales, incl. the zero-initialised last ones
                p.uniform_(0.8, 1.2)
            elif p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.05)
    randomize_norm_statistics(model)
    return model.eval()


def test_parameter_count_and_position_groups():
    model = timm.create_model("dcls_resnet50")
    baseline = sum(p.numel() for p in timm.create_model("resnet50").parameters())
    assert baseline == 25_557_032
    # each 3x3 conv (C -> C) loses its 9*C*C weights for 5*C*C, plus one shared P (2, C, C, 5) per stage
    dense_3x3 = sum(n * c * c * 9 for n, c in zip(BLOCKS_PER_STAGE, WIDTHS))
    dcls = sum(n * c * c * 5 + 2 * c * c * 5 for n, c in zip(BLOCKS_PER_STAGE, WIDTHS))
    assert sum(p.numel() for p in model.parameters()) == baseline - dense_3x3 + dcls == 24_008_744
    groups = shared_parameter_groups(model)
    assert [len(g) for g in groups] == list(BLOCKS_PER_STAGE)
    assert all(all(n.startswith(f"layer{i + 1}.") and n.endswith(".conv2.P") for n in g) for i, g in enumerate(groups))
    # stride kept on the first block of layers 2-4, no bias added
    conv = model.layer2[0].conv2
    assert isinstance(conv, DclsNd) and conv.stride == (2, 2) and conv.bias is None and conv.padding == (3, 3)
    assert sum(isinstance(m, DclsNd) for m in model.modules()) == sum(BLOCKS_PER_STAGE)


def test_train_py_checkpoint_loads_and_matches_reference(tmp_path):
    reference = _reference_model()
    state_dict = {k: v.clone() for k, v in reference.state_dict().items()}
    assert state_dict["layer1.0.conv2.P"].shape == (2, 16, 16, 5) and "layer1.0.conv2.bias" not in state_dict
    path = tmp_path / "resnet_dcls_kernel_5_model_best.pth.tar"
    torch.save({"epoch": 299, "arch": "resnet50", "state_dict": {k: v + 1 for k, v in state_dict.items()},
                "state_dict_ema": state_dict, "args": argparse.Namespace(model="resnet50")}, path)

    model = timm.create_model(
        "dcls_resnet50", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **NARROW).eval()
    assert set(checkpoint_filter_fn(torch.load(path, weights_only=False), model)) == set(model.state_dict())
    assert [len(g) for g in shared_parameter_groups(model)] == list(BLOCKS_PER_STAGE)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(x), model(x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_filter_rejects_unshared_positions():
    model = timm.create_model("dcls_resnet50")
    state_dict = expand_shared_entries(model.state_dict(), model)   # every layer's copy, as the originals
    state_dict["layer3.4.conv2.P"] = state_dict["layer3.4.conv2.P"] + 0.5
    with pytest.raises(ValueError, match="shared tensor but differ"):
        checkpoint_filter_fn(state_dict, model)


def test_config_errors():
    with pytest.raises(ValueError, match="output_stride=32"):
        timm.create_model("dcls_resnet50", output_stride=16)
    with pytest.raises(TypeError):
        timm.create_model("dcls_resnet50", not_an_arg=1)
    assert isinstance(timm.create_model("dcls_resnet50"), DclsResNet)
