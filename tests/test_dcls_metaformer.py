"""DCLS ConvFormer / CAFormer: parameter counts, position tying, and loading sail-sg-layout checkpoints.

The reference model is timm's own `convformer_s18` / `caformer_s18` with the `dcls` 0.1.1 package's `Dcls2d`
swapped in by the original recipe (`replace_depthwise_dcls`: walk `named_modules()`, replace every depthwise conv,
a layer whose in_channels exceeds all seen so far starts a stage whose first layer's `P` the others share) and the
MLP head LayerNorm eps set to sail-sg's 1e-5.

sail-sg-layout checkpoints are written by inverting timm's MetaFormer filter (`timm.models.metaformer
.checkpoint_filter_fn`), key by key (`_to_sailsg_layout`): `stem` -> `downsample_layers.0` (`norm` -> `post_norm`),
`stages.S.downsample` -> `downsample_layers.S` (`norm` -> `pre_norm`), `stages.S.blocks.B` -> `stages.S.B`,
`head.norm` -> `norm`, `head.fc` -> `head`. The test checks that timm's filter maps them back to exactly the
reference model's keys, so the inversion cannot silently drift.
"""
import importlib
import argparse
import re

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import metaformer as timm_metaformer

from dcls_zoo.layers.sharing import expand_shared_entries, shared_parameter_groups
from dcls_zoo.models.dcls_metaformer import DclsMetaFormer, checkpoint_filter_fn
from dcls_oracle import original_replace_dcls

dcls_modules = importlib.import_module("DCLS.construct.modules")

# name -> (timm base entry point, kernel_count, unique parameters of the DCLS model (reference table),
#          baseline parameters, layers per shared-P group, sail-sg key count)
MODELS = {
    "dcls_convformer_s18": (timm_metaformer.convformer_s18, 40, 26_848_432, 26_774_448, [3, 3, 9, 3], 260),
    "dcls_caformer_s18": (timm_metaformer.caformer_s18, 34, 26_350_488, 26_341_656, [3, 3], None),
}


def _reference_model(name: str) -> nn.Module:
    entry, kernel_count = MODELS[name][:2]
    model = original_replace_dcls(entry(), "v1", 17, kernel_count)
    model.head.fc.norm.eps = 1e-5   # sail-sg's MlpHead LayerNorm
    torch.manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():   # in-range positions (shared: set once); perturbed norms,
            if pname.endswith(".P"):                   # scales and biases so that none is at its init value
                p.uniform_(-8, 8)
            elif p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _to_sailsg_layout(timm_key: str) -> str:
    k = timm_key
    k = re.sub(r"^stem\.norm\.", "downsample_layers.0.post_norm.", k)
    k = re.sub(r"^stem\.", "downsample_layers.0.", k)
    k = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm.", k)
    k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
    k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
    k = re.sub(r"^head\.norm\.", "norm.", k)
    k = re.sub(r"^head\.fc\.", "head.", k)
    return k


def _save_train_py_container(path, state_dict, arch):
    """The format timm's train.py writes: EMA weights under 'state_dict_ema', args as an argparse.Namespace."""
    noisy = {k: v + 1.0 for k, v in state_dict.items()}   # the non-EMA weights must not be the ones loaded
    torch.save({"epoch": 299, "arch": arch, "state_dict": noisy, "state_dict_ema": state_dict,
                "args": argparse.Namespace(model=arch, lr=4e-3, drop_path=0.1), "version": 2}, path)


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_counts_and_position_groups(name):
    _, _, n_dcls, n_base, group_sizes, _ = MODELS[name]
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == n_dcls
    assert sum(p.numel() for p in timm.create_model(name.removeprefix("dcls_")).parameters()) == n_base
    groups = shared_parameter_groups(model)
    assert [len(g) for g in groups] == group_sizes
    assert all(all(n.endswith("token_mixer.dwconv.P") for n in g) for g in groups)
    # head LayerNorm as in sail-sg's code, also after a classifier reset
    assert model.head.fc.norm.eps == 1e-5
    model.reset_classifier(7)
    assert model.head.fc.norm.eps == 1e-5 and model.head.fc.fc2.out_features == 7


@pytest.mark.parametrize("name", list(MODELS))
def test_sailsg_checkpoint_loads_and_matches_reference(name, tmp_path):
    reference = _reference_model(name)
    sail_sd = {_to_sailsg_layout(k): v.clone() for k, v in reference.state_dict().items()}
    if MODELS[name][5] is not None:
        assert len(sail_sd) == MODELS[name][5]   # key count of the released sail-sg-layout checkpoints
    assert "stages.0.0.token_mixer.dwconv.P" in sail_sd and "downsample_layers.0.post_norm.weight" in sail_sd
    # timm's own filter must map the inverted layout back to the reference keys exactly
    assert set(timm_metaformer.checkpoint_filter_fn(sail_sd, reference)) == set(reference.state_dict())

    path = tmp_path / f"{name}_v1_seed0.pth.tar"
    _save_train_py_container(path, sail_sd, name.removeprefix("dcls_"))

    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    filtered = checkpoint_filter_fn(torch.load(path, weights_only=False), model)
    assert set(filtered) == set(model.state_dict())   # no missing, no unexpected keys
    assert [len(g) for g in shared_parameter_groups(model)] == MODELS[name][4]   # ties survive the load

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, features = reference(x), model.forward_features(x)
        actual = model.forward_head(features)
        model.head.fc.norm.eps = 1e-6   # timm's default eps: the parity check above must be able to see it
        timm_eps_logits = model.forward_head(features)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert (timm_eps_logits - expected).abs().max() > 1e-4


def test_timm_layout_with_positions_stored_once(tmp_path):
    """dcls_zoo.hub saves each shared P once (safetensors refuses aliases); the filter restores the other names."""
    source = timm.create_model("dcls_caformer_s18")
    every_copy = expand_shared_entries(source.state_dict(), source)
    once = {k: v for k, v in every_copy.items() if not re.match(r"stages\.[01]\.blocks\.[12]\..*\.P$", k)}
    assert len(once) == len(every_copy) - 4
    path = tmp_path / "caformer.pth"
    torch.save(once, path)
    model = timm.create_model("dcls_caformer_s18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for group in shared_parameter_groups(model):
        torch.testing.assert_close(model.get_parameter(group[0]), source.get_parameter(group[0]), rtol=0, atol=0)


def test_filter_rejects_unshared_positions():
    model = timm.create_model("dcls_caformer_s18")
    every_copy = expand_shared_entries(model.state_dict(), model)
    sail_sd = {_to_sailsg_layout(k): v.clone() for k, v in every_copy.items()}
    sail_sd["stages.1.2.token_mixer.dwconv.P"] = sail_sd["stages.1.2.token_mixer.dwconv.P"] + 0.5
    with pytest.raises(ValueError, match="shared tensor but differ"):
        checkpoint_filter_fn(sail_sd, model)


def test_filter_rejects_other_architecture():
    convformer_sd = {_to_sailsg_layout(k): v for k, v in timm.create_model("dcls_convformer_s18").state_dict().items()}
    with pytest.raises(ValueError, match="does not have"):
        checkpoint_filter_fn(convformer_sd, timm.create_model("dcls_caformer_s18"))


def test_dcls_config_and_unknown_args():
    model = timm.create_model(
        "dcls_convformer_s18", dcls_version="gauss", dcls_dilated_kernel_size=23, dcls_kernel_count=26)
    assert isinstance(model, DclsMetaFormer)
    layer = model.stages[0].blocks[0].token_mixer.dwconv
    assert (layer.version, layer.dilated_kernel_size, layer.kernel_count, tuple(layer.SIG.shape)) == (
        "gauss", (23, 23), 26, (2, 128, 1, 26))
    with pytest.raises(TypeError, match="not_an_arg"):
        timm.create_model("dcls_convformer_s18", not_an_arg=1)


def test_gauss_convformer_matches_the_original_recipe_and_has_no_published_weights():
    """dcls_gauss_convformer_s18 (arXiv 2306.00817): Gaussian DCLS 23/26 on every SepConv depthwise conv."""
    model = timm.create_model("dcls_gauss_convformer_s18").eval()
    # the 18 depthwise convs lose (49 - 26) weights per channel, each stage gains one shared P and SIG (2, C, 1, 26):
    # the same -16,640 as the DCLS-Audio ConvFormer's 25,797,847 -> 25,781,207 (reference table)
    baseline = sum(p.numel() for p in timm.create_model("convformer_s18").parameters())
    assert baseline == 26_774_448
    assert sum(p.numel() for p in model.parameters()) == baseline - (25_797_847 - 25_781_207) == 26_757_808
    groups = shared_parameter_groups(model)   # one P and one SIG per stage
    assert sorted(len(g) for g in groups) == sorted([3, 3, 9, 3] * 2)
    assert {n.rsplit(".", 1)[1] for g in groups for n in g} == {"P", "SIG"}
    assert {type(m).__name__ for n, m in model.named_modules() if n.endswith("token_mixer.dwconv")} == {"Dcls2d"}

    # parity with the original recipe on the dcls 0.1.1 oracle, at small widths (same layers, same recipe)
    small = dict(depths=(1, 2, 1, 1), dims=(16, 32, 48, 64))
    model = timm.create_model("dcls_gauss_convformer_s18", **small).eval()
    reference = original_replace_dcls(timm_metaformer.MetaFormer(
        **small, token_mixers=timm_metaformer.SepConv, norm_layers=timm_metaformer.LayerNorm2dNoBias),
        "gauss", 23, 26)
    reference.head.fc.norm.eps = 1e-5
    torch.manual_seed(0)
    with torch.no_grad():
        for pname, p in reference.named_parameters():
            if pname.endswith(".P"):
                p.uniform_(-11, 11)
            elif pname.endswith(".SIG"):
                p.uniform_(0.3, 3.0)
            elif p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.05)
    model.load_state_dict(checkpoint_filter_fn(reference.eval().state_dict(), model))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        assert expected.abs().max() > 1e-2
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)

    cfg = model.pretrained_cfg
    assert not cfg.get("url") and not cfg.get("hf_hub_id") and not timm.list_pretrained("dcls_gauss_convformer*")
    assert cfg["paper_ids"] == ("arXiv:2306.00817", "arXiv:2112.03740") and cfg["license"] == "mit"
    assert any(note.startswith("no published weights") for note in cfg["notes"])
    with pytest.raises(RuntimeError, match="No pretrained weights exist for dcls_gauss_convformer_s18"):
        timm.create_model("dcls_gauss_convformer_s18", pretrained=True)
    from dcls_zoo.hub.cards import model_card

    card = str(model_card("dcls_gauss_convformer_s18"))
    assert "- **Published weights:** none from the authors for `dcls_gauss_convformer_s18`" in card
    assert "http" not in card.split("## ")[1]
    assert "- **Parameters:** 26,757,808 " in card and "gauss" in card
