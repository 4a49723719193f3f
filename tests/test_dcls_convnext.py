"""DCLS-ConvNeXt: parameter counts, original-layout checkpoints, ties, and the timm model contract."""
import argparse
import logging
import re

import pytest
import timm
import torch

from dcls_oracle import original_replace_dcls
from dcls_zoo.layers import Dcls2d, dcls_position_parameter_names, expand_shared_entries
from dcls_zoo.models.dcls_convnext import DclsConvNeXt

logging.getLogger().setLevel(logging.ERROR)

# Unique parameter counts of the original models (reference table, measured on the authors' code).
ORIGINAL_PARAM_COUNTS = {
    "dcls_convnext_tiny": 28_587_688,
    "dcls_convnext_small": 50_217_064,
    "dcls_convnext_base": 88_582_632,
    "dcls_gauss_convnext_tiny": 28_586_536,
}


def _unique_param_count(model):
    return sum(p.numel() for p in model.parameters())  # parameters() yields each shared tensor once


@pytest.mark.parametrize("name", list(ORIGINAL_PARAM_COUNTS))
def test_unique_parameter_counts_equal_the_originals(name):
    model = timm.create_model(name, device="meta")
    assert _unique_param_count(model) == ORIGINAL_PARAM_COUNTS[name]


def _reference_model(timm_entry, version, dks, count):
    """The original architecture: timm's ConvNeXt with the authors' `dcls.Dcls2d` swapped in, P tied per stage."""
    model = original_replace_dcls(timm_entry(), version, dks, count)
    with torch.no_grad():
        for name, p in model.named_parameters():  # named_parameters() yields each shared P/SIG once
            if name.endswith("conv_dw.P"):  # trained positions spread over the whole grid
                p.uniform_(-(dks // 2), dks // 2)
            elif name.endswith("conv_dw.SIG"):
                p.uniform_(-0.5, 0.5)
            elif name.endswith(("conv_dw.weight", "conv_dw.bias")):
                p.normal_(0, 0.1)
            elif name.endswith("gamma"):  # layer scale 1e-6 would hide the blocks from the comparison
                p.normal_(0.5, 0.1)
    return model.eval()


def _to_original_layout(timm_state_dict):
    """timm ConvNeXt names → the FB/ConvNeXt-dcls names the released checkpoints use (inverse of timm's filter)."""
    out = {}
    for k, v in timm_state_dict.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        k = k.replace("head.fc.", "head.").replace("head.norm.", "norm.")
        out[k] = v
    return out


CHECKPOINT_CASES = {
    "dcls_convnext_tiny": (timm.models.convnext.convnext_tiny, "v0", 17, 34),
    "dcls_gauss_convnext_tiny": (timm.models.convnext.convnext_tiny, "gauss", 23, 26),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_CASES))
def test_original_checkpoint_loads_through_pretrained_and_matches_reference(name, tmp_path):
    entry, version, dks, count = CHECKPOINT_CASES[name]
    torch.manual_seed(0)
    reference = _reference_model(entry, version, dks, count)
    original = _to_original_layout(reference.state_dict())
    n_keys = 218 if version == "gauss" else 200
    assert len(original) == n_keys  # as many keys as the released checkpoints hold
    path = tmp_path / "convnext_dcls_1k_224_ema.pth"
    # As the authors' training script saves it: the weights under 'model', plus an argparse.Namespace.
    torch.save({"model": original, "epoch": 299, "args": argparse.Namespace(lr=4e-3, model=name)}, path)

    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    # strict loading succeeded (no missing/unexpected keys) and positions are one tensor per stage again
    for stage in model.stages:
        assert len({id(block.conv_dw.P) for block in stage.blocks}) == 1
    assert len({id(m.P) for m in model.modules() if isinstance(m, Dcls2d)}) == 4


def test_checkpoint_with_disagreeing_position_copies_is_refused(tmp_path):
    model = timm.create_model("dcls_convnext_atto")
    sd = {k: v.clone() for k, v in expand_shared_entries(model.state_dict(), model).items()}   # every layer's copy
    sd["stages.0.blocks.1.conv_dw.P"] += 1.0
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="should hold one shared tensor"):
        timm.create_model("dcls_convnext_atto", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_ties_survive_to_and_load_state_dict():
    from dcls_zoo.layers import shared_parameter_groups

    model = timm.create_model("dcls_convnext_atto", num_classes=5)
    groups = shared_parameter_groups(model)
    assert len(groups) == 4 and all(len(g) == n for g, n in zip(groups, (2, 2, 6, 2)))
    model.to(torch.float64)
    assert shared_parameter_groups(model) == groups
    other = timm.create_model("dcls_convnext_atto", num_classes=5).to(torch.float64)
    other.load_state_dict(model.state_dict())
    assert shared_parameter_groups(other) == groups
    with torch.no_grad():
        model.stages[2].blocks[0].conv_dw.P.add_(0.25)
    assert torch.equal(model.stages[2].blocks[5].conv_dw.P, model.stages[2].blocks[0].conv_dw.P)


def test_training_step_keeps_ties_and_clamps():
    model = timm.create_model("dcls_convnext_atto", num_classes=3)
    names = dcls_position_parameter_names(model)
    assert names == set(model.no_weight_decay())
    assert len(names) == 4  # named_parameters() names each shared tensor once
    optimizer = torch.optim.SGD(model.parameters(), lr=100.0)  # huge steps push positions off the grid
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum()
    loss.backward()
    shared = model.stages[0].blocks[0].conv_dw.P
    assert shared.grad is not None and model.stages[0].blocks[1].conv_dw.P is shared
    optimizer.step()
    model.clamp_parameters()
    assert shared.abs().max() <= 8


def test_timm_optimizer_factory_excludes_positions_from_weight_decay():
    from timm.optim import create_optimizer_v2

    model = timm.create_model("dcls_convnext_atto", num_classes=3)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    positions = {id(p) for n, p in model.named_parameters() if n in model.no_weight_decay()}
    for group in optimizer.param_groups:
        if any(id(p) in positions for p in group["params"]):
            assert group["weight_decay"] == 0.0


def test_timm_contract_basics():
    model = timm.create_model("dcls_convnext_atto", num_classes=7, in_chans=1, dtype=torch.float64)
    assert model.in_chans == 1 and model.num_classes == 7
    assert all(p.dtype == torch.float64 for p in model.parameters())
    y = model(torch.randn(2, 1, 64, 64, dtype=torch.float64))
    assert y.shape == (2, 7) and y.dtype == torch.float64
    model.reset_classifier(4)
    assert model.get_classifier().weight.dtype == torch.float64 and model.num_classes == 4
    with pytest.raises(TypeError):
        timm.create_model("dcls_convnext_atto", not_an_argument=1)
    with pytest.raises(TypeError, match="takes no kernel_sizes"):
        timm.create_model("dcls_convnext_atto", kernel_sizes=5)
    features = timm.create_model("dcls_convnext_atto", features_only=True, out_indices=(1, 3))
    shapes = [f.shape for f in features(torch.randn(1, 3, 64, 64))]
    assert shapes == [(1, 80, 8, 8), (1, 320, 2, 2)]
    with pytest.raises(ValueError, match="output_stride"):
        DclsConvNeXt(output_stride=16)


def test_grad_checkpointing_gives_the_same_output():
    torch.manual_seed(0)
    model = timm.create_model("dcls_convnext_atto", num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), y)
    model(x).sum().backward()
    assert model.stages[0].blocks[0].conv_dw.P.grad is not None


def test_frozen_model_is_plain_scriptable_and_equal():
    from dcls_zoo.layers import freeze_dcls

    model = timm.create_model("dcls_convnext_atto", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        frozen = freeze_dcls(model)
        assert not any(isinstance(m, Dcls2d) for m in frozen.modules())
        scripted = torch.jit.script(frozen)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-6)


def test_fine_tuning_head_replacement_is_announced(tmp_path, caplog):
    model = timm.create_model("dcls_convnext_atto")
    path = tmp_path / "in1k.pth"
    torch.save(model.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="dcls_zoo.models._builder"):
        tuned = timm.create_model("dcls_convnext_atto", pretrained=True, num_classes=10,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    assert tuned.get_classifier().out_features == 10
    assert "1000 classes" in caplog.text and "10 classes" in caplog.text
    torch.testing.assert_close(tuned.stem[0].weight, model.stem[0].weight)  # the rest is loaded


def test_registered_url_checkpoint_is_downloaded_then_loaded_safely(tmp_path, monkeypatch):
    # The registry's Zenodo URL is fetched once and handed to timm's weights_only file loader (which accepts the
    # argparse.Namespace the authors' files carry); here the "download" returns a file the test wrote.
    import dcls_zoo.models._builder as builder

    reference = timm.create_model("dcls_convnext_atto").eval()
    path = tmp_path / "downloaded.pth"
    torch.save({"model": reference.state_dict(), "args": argparse.Namespace(model="x")}, path)
    seen = []
    monkeypatch.setattr(builder, "download_cached_file", lambda url, **kw: seen.append(url) or str(path))
    model = timm.create_model("dcls_convnext_atto", pretrained=True,
                              pretrained_cfg_overlay=dict(url="https://zenodo.org/record/0/files/x.pth")).eval()
    assert seen == ["https://zenodo.org/record/0/files/x.pth"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)

    def offline(url, **kw):
        raise OSError("Name or service not known")

    monkeypatch.setattr(builder, "download_cached_file", offline)
    with pytest.raises(RuntimeError, match=r"could not download .* pretrained_cfg_overlay=dict\(file=PATH\)"):
        timm.create_model("dcls_convnext_tiny", pretrained=True)


@pytest.mark.parametrize("name", ["dcls_convnext_atto", "hermite_convnext_tiny"])
def test_chosen_feature_levels_do_not_change_the_next_models_default(name):
    # timm's builder writes out_indices into the feature cfg it is given: each model must get its own
    with torch.device("meta"):
        picked = timm.create_model(name, features_only=True, out_indices=(1, 3))
        default = timm.create_model(name, features_only=True)
    assert len(picked.feature_info.channels()) == 2
    assert default.feature_info.reduction() == [4, 8, 16, 32]


def test_pretrained_as_feature_extractor_does_not_announce_a_random_head(tmp_path, caplog):
    source = timm.create_model("dcls_convnext_atto", num_classes=7)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    with caplog.at_level("INFO"):
        model = timm.create_model("dcls_convnext_atto", pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    messages = [r.getMessage() for r in caplog.records if "classifier" in r.getMessage()]
    assert not any("randomly initialised" in m for m in messages)
    assert any("is not loaded (num_classes=0)" in m for m in messages)
    with caplog.at_level("WARNING"):
        timm.create_model("dcls_convnext_atto", pretrained=True, num_classes=3,
                          pretrained_cfg_overlay=dict(file=str(path)))
    assert any("has 7 classes" in r.getMessage() and "head of 3 classes" in r.getMessage() for r in caplog.records)
    assert model.num_classes == 0
