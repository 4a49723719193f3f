"""DCLS FastViT-SA24/SA36: parameter counts, position tying (incl. the stage-4 positional conv), loading
Apple-layout checkpoints, and inference reparameterisation.

The reference model is timm's own `fastvit_sa24` / `fastvit_sa36` with the `dcls` 0.1.1 package's `Dcls2d` swapped
in by the original FastViT recipe (walk `named_modules()`, replace every 7x7 depthwise conv; a layer whose
in_channels exceeds all seen so far starts a stage whose first layer's `P` the others share).

Apple-layout checkpoints are written by inverting timm's FastViT filter (`timm.models.fastvit.checkpoint_filter_fn`)
key by key (`_to_apple_layout`): timm's renames are undone (`stem` -> `patch_embed`, `conv_kxk` -> `rbr_conv`,
`conv_scale` -> `rbr_scale`, `identity` -> `rbr_skip`, `final_conv` -> `conv_exp`, `large_conv` -> `lkb_origin`,
`mlp` -> `convffn`, `se.fc1/fc2` -> `se.reduce/expand`, `layer_scale*.gamma` -> `layer_scale*`, `head.fc` ->
`head`), and stages are flattened back into Apple's `network` list: `stages.0.blocks` -> `network.0`,
`stages.s.downsample` -> `network.{2s-1}` (s = 1, 2, 3), `stages.1/2.blocks` -> `network.2/4`,
`stages.3.pos_emb.pos_enc` -> `network.6.pe`, `stages.3.blocks` -> `network.7`. The test checks that timm's filter
maps them back to exactly the reference model's keys.
"""
import importlib
import argparse
import copy
import re

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import fastvit as timm_fastvit
from timm.models import reparameterize_model

from dcls_zoo.layers import DclsNd
from dcls_zoo.layers.sharing import expand_shared_entries, shared_parameter_groups
from dcls_zoo.models.dcls_fastvit import DclsFastVit, checkpoint_filter_fn
from dcls_oracle import is_depthwise, original_replace_dcls, randomize_norm_statistics

dcls_modules = importlib.import_module("DCLS.construct.modules")

# name -> (timm base entry point, unique params DCLS / baseline (reference table), P group sizes, Apple key count)
MODELS = {
    "dcls_fastvit_sa24": (timm_fastvit.fastvit_sa24, 21_523_496, 21_554_216, [4, 4, 12, 5], 909),
    "dcls_fastvit_sa36": (timm_fastvit.fastvit_sa36, 31_452_584, 31_527_464, [6, 6, 18, 7], None),
}


def _randomize(model: nn.Module) -> nn.Module:
    """In-range positions, non-trivial norms, layer scales and BN statistics (every value away from its init)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".P"):
                p.uniform_(-8, 8)
            elif name.endswith(".gamma"):
                p.uniform_(0.2, 0.6)
            elif p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.05)
    randomize_norm_statistics(model)
    return model.eval()


def _reference_model(name: str) -> nn.Module:
    # the originals' FastViT recipe: 7x7 depthwise convs only
    model = original_replace_dcls(MODELS[name][0](), "v1", 17, 34,
                                  select=lambda c: is_depthwise(c) and c.kernel_size == (7, 7))
    return _randomize(model)


_RENAMES = [  # timm -> Apple, the inverse of timm's filter renames
    ("stem", "patch_embed"), ("conv_kxk", "rbr_conv"), ("conv_scale", "rbr_scale"), ("identity", "rbr_skip"),
    ("final_conv", "conv_exp"), ("large_conv", "lkb_origin"), ("mlp", "convffn"), ("se.fc1", "se.reduce"),
    ("se.fc2", "se.expand"),
]


def _to_apple_layout(timm_key: str) -> str:
    k = timm_key
    for timm_name, apple_name in _RENAMES:
        k = k.replace(timm_name, apple_name)
    k = re.sub(r"(layer_scale(_\d)?)\.gamma$", r"\1", k)
    k = re.sub(r"^head\.fc\.", "head.", k)
    k = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"network.{2 * int(m.group(1)) - 1}.", k)
    k = re.sub(r"^stages\.3\.pos_emb\.pos_enc\.", "network.6.pe.", k)
    k = re.sub(r"^stages\.(\d)\.blocks\.", lambda m: f"network.{(0, 2, 4, 7)[int(m.group(1))]}.", k)
    return k


def _x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_counts_and_position_groups(name):
    _, n_dcls, n_base, group_sizes, _ = MODELS[name]
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == n_dcls
    assert sum(p.numel() for p in timm.create_model(name.removeprefix("dcls_")).parameters()) == n_base
    groups = shared_parameter_groups(model)
    assert [len(g) for g in groups] == group_sizes
    # stage 4: the positional conv comes first and its P is the one the stage's blocks share
    assert groups[3][0] == "stages.3.pos_emb.pos_enc.P"
    assert all(re.fullmatch(r"stages\.3\.blocks\.\d+\.mlp\.conv\.conv\.P", n) for n in groups[3][1:])
    # nothing else became DCLS: 3x3 RepMixer/stem convs and patch-embedding large kernels stay dense
    assert sum(isinstance(m, DclsNd) for m in model.modules()) == sum(group_sizes)


@pytest.mark.parametrize("name", list(MODELS))
def test_apple_checkpoint_loads_and_matches_reference(name, tmp_path):
    reference = _reference_model(name)
    apple_sd = {_to_apple_layout(k): v.clone() for k, v in reference.state_dict().items()}
    if MODELS[name][4] is not None:
        assert len(apple_sd) == MODELS[name][4]   # key count of the released Apple-layout checkpoints
    assert {"network.6.pe.P", "network.7.0.convffn.conv.conv.P", "network.5.proj.0.lkb_origin.conv.weight"} <= set(
        apple_sd)
    assert set(timm_fastvit.checkpoint_filter_fn(apple_sd, reference)) == set(reference.state_dict())

    path = tmp_path / f"{name}_v1_17lim_34el_seed0.pth.tar"
    torch.save({"epoch": 299, "state_dict": {k: v + 1.0 for k, v in apple_sd.items()}, "state_dict_ema": apple_sd,
                "args": argparse.Namespace(model=name.removeprefix("dcls_"))}, path)

    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert set(checkpoint_filter_fn(torch.load(path, weights_only=False), model)) == set(model.state_dict())
    assert [len(g) for g in shared_parameter_groups(model)] == MODELS[name][3]
    with torch.no_grad():
        expected, actual = reference(_x()), model(_x())
    assert expected.abs().max() > 0.1   # a meaningful comparison, not two near-zero outputs
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_reparameterize_model_matches_training_structure():
    model = _randomize(timm.create_model("dcls_fastvit_sa24"))
    with torch.no_grad():
        expected = model(_x())
        # timm's own reparameterisation, DCLS positional conv frozen into a dense 17x17 kernel on the way
        fused = reparameterize_model(model)
        pos_emb = fused.stages[3].pos_emb
        assert not hasattr(pos_emb, "pos_enc") and type(pos_emb.reparam_conv) is nn.Conv2d
        assert pos_emb.reparam_conv.kernel_size == (17, 17)
        torch.testing.assert_close(fused(_x()), expected, rtol=0, atol=1e-4)

        # every DCLS layer frozen with Dcls2d.to_conv() first: a model with plain convs only
        frozen = copy.deepcopy(model)
        for layer_name, layer in [(n, m) for n, m in frozen.named_modules() if isinstance(m, DclsNd)]:
            parent, _, child = layer_name.rpartition(".")
            setattr(frozen.get_submodule(parent), child, layer.to_conv())
        frozen = reparameterize_model(frozen)
        assert not any(isinstance(m, DclsNd) for m in frozen.modules())
        torch.testing.assert_close(frozen(_x()), expected, rtol=0, atol=1e-4)
    assert expected.abs().max() > 0.1


def test_filter_rejects_unshared_positions():
    model = timm.create_model("dcls_fastvit_sa24")
    every_copy = expand_shared_entries(model.state_dict(), model)
    apple_sd = {_to_apple_layout(k): v.clone() for k, v in every_copy.items()}
    apple_sd["network.7.2.convffn.conv.conv.P"] += 0.5
    with pytest.raises(ValueError, match="shared tensor but differ"):
        checkpoint_filter_fn(apple_sd, model)


def test_config_errors():
    with pytest.raises(ValueError, match="inference_mode"):
        timm.create_model("dcls_fastvit_sa24", inference_mode=True)
    with pytest.raises(TypeError):
        timm.create_model("dcls_fastvit_sa24", not_an_arg=1)
    assert isinstance(timm.create_model("dcls_fastvit_sa24"), DclsFastVit)
