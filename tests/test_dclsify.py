"""`dcls_zoo.dclsify` on timm models that have no registered DCLS variant: the documented way to try DCLS anywhere.

    import timm, dcls_zoo
    model = timm.create_model("test_efficientnet", num_classes=10)
    dcls_zoo.dclsify(model, version="gauss", dilated_kernel_size=9, kernel_count=12)   # depthwise convs -> Dcls2d
    # train as usual, with positions (and widths) at 5x the learning rate and no weight decay ...
    positions = dcls_zoo.layers.dcls_position_parameter_names(model)
    # ... and clamp them after every optimizer step
    dcls_zoo.layers.clamp_dcls_parameters(model)

Positions are shared per stage by the originals' rule (a layer wider than every one before starts a stage). Models
whose widths go down again (MobileNetV3's depthwise convs) or whose stages open with a widening conv (BasicBlock
ResNets) need `stage_key=` to say what a stage is, or `tie_positions=False`. `conv_filter=` chooses other convs
(ResNet-50-DCLS replaces every 3x3 conv).

The reference for parity is the originals' `replace_depthwise_dcls` recipe with the `dcls` 0.1.1 package's `Dcls2d`.
"""
import importlib
import copy

import pytest
import timm
import torch
import torch.nn as nn

import dcls_zoo
from dcls_zoo.layers import DclsNd, clamp_dcls_parameters, dcls_position_parameter_names
from dcls_zoo.layers.sharing import shared_parameter_groups
from dcls_oracle import original_replace_dcls

dcls_modules = importlib.import_module("DCLS.construct.modules")


def _x(size=32):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("version", ["v0", "v1", "gauss", "max"])
def test_timm_model_without_dcls_variant_matches_original_recipe(version):
    base = timm.create_model("test_efficientnet", num_classes=10).eval()
    reference = original_replace_dcls(copy.deepcopy(base), version, 9, 12).eval()
    model = dcls_zoo.dclsify(copy.deepcopy(base), version=version, dilated_kernel_size=9, kernel_count=12).eval()

    replaced = {n: m for n, m in model.named_modules() if isinstance(m, DclsNd)}
    assert list(replaced) == ["blocks.3.0.conv_dw", "blocks.4.0.conv_dw"]   # every depthwise conv, nothing else
    assert all(m.stride == (2, 2) and m.padding == (4, 4) for m in replaced.values())   # stride kept, padding 9 // 2
    assert set(model.state_dict()) == set(reference.state_dict())   # same parameter names as the original code
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".P"):
                p.uniform_(-4, 4)
            elif name.endswith(".SIG"):
                p.uniform_(0.0, 0.5)
            elif name.endswith("conv_dw.weight"):
                p.normal_(0, 0.3)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected, actual = reference(_x()), model(_x())
    assert actual.shape == base(_x()).shape == (2, 10)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_training_step_with_position_groups_and_clamp():
    model = timm.create_model("mobilenetv3_small_050", num_classes=10)
    # MobileNetV3's depthwise widths go 144 -> 72 inside the network, so a "stage" is named explicitly here:
    # layers of the same timm stage and width share positions
    dcls_zoo.dclsify(model, version="gauss", dilated_kernel_size=9, kernel_count=12,
                     stage_key=lambda name, layer: (name.split(".")[1], layer.in_channels))
    assert [len(g) for g in shared_parameter_groups(model)] == [2, 2, 2, 2, 2, 2]   # P and SIG of 3 pairs
    positions = dcls_position_parameter_names(model)
    assert positions and all(n.endswith((".P", ".SIG")) for n in positions)
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in params.items() if n not in positions], "weight_decay": 0.05},
        {"params": [params[n] for n in sorted(positions)], "weight_decay": 0.0, "lr": 5e-3},   # 5x, as the papers
    ], lr=1e-3)
    model.train()
    model(_x(64)).logsumexp(-1).mean().backward()
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in positions)
    with torch.no_grad():
        model.blocks[4][1].conv_dw.P.add_(100.0)   # push one shared tensor off the grid
    optimizer.step()
    clamp_dcls_parameters(model)
    assert model.blocks[4][2].conv_dw.P is model.blocks[4][1].conv_dw.P   # still tied after the step
    assert model.blocks[4][1].conv_dw.P.abs().max() <= 4


def test_default_stage_rule_needs_stage_key_on_non_monotonic_widths():
    model = timm.create_model("mobilenetv3_small_050")
    with pytest.raises(ValueError, match="cannot share positions between"):
        dcls_zoo.dclsify(model, version="v1", dilated_kernel_size=9, kernel_count=12)
    untied = dcls_zoo.dclsify(timm.create_model("mobilenetv3_small_050"), version="v1", dilated_kernel_size=9,
                              kernel_count=12, tie_positions=False)
    assert shared_parameter_groups(untied) == []


def test_conv_filter_and_state_dict_round_trip():
    def dense_3x3(name, conv):   # the residual blocks' 3x3 convs (the 3x3 stem's widths are not stage-like)
        return name.startswith("layer") and conv.kernel_size == (3, 3) and conv.groups == 1

    def same_stage_and_shape(name, layer):   # BasicBlock's first conv widens, so the in_channels rule cannot tie
        return name.split(".")[0], layer.in_channels, layer.out_channels

    dclsify_args = dict(version="v0", dilated_kernel_size=5, kernel_count=4, conv_filter=dense_3x3,
                        stage_key=same_stage_and_shape)
    model = dcls_zoo.dclsify(timm.create_model("test_resnet", num_classes=10), **dclsify_args).eval()
    replaced = [m for m in model.modules() if isinstance(m, DclsNd)]
    assert replaced and all(m.groups == 1 and m.dilated_kernel_size == (5, 5) for m in replaced)
    assert not any(isinstance(m, nn.Conv2d) and dense_3x3(n, m) for n, m in model.named_modules())
    # the state dict repeats each shared P under every layer (as the originals do) and loads back into the tie
    reloaded = dcls_zoo.dclsify(timm.create_model("test_resnet", num_classes=10), **dclsify_args).eval()
    groups = shared_parameter_groups(model)
    assert groups and [len(g) for g in shared_parameter_groups(reloaded)] == [len(g) for g in groups]
    reloaded.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(_x()), model(_x()), rtol=0, atol=0)

    with pytest.raises(ValueError, match="no convolution matched"):
        dcls_zoo.dclsify(timm.create_model("test_resnet"), version="v0", dilated_kernel_size=5, kernel_count=4,
                         conv_filter=lambda name, conv: False)


def test_one_owner_per_stage_through_copies_assignment_and_device_moves():
    model = dcls_zoo.dclsify(timm.create_model("mobilenetv3_small_050", num_classes=10), version="gauss",
                             dilated_kernel_size=9, kernel_count=12,
                             stage_key=lambda name, layer: (name.split(".")[1], layer.in_channels))
    (owner_name, *followers), *_ = [g for g in shared_parameter_groups(model) if g[0].endswith(".P")]
    owner = model.get_submodule(owner_name.rpartition(".")[0])
    follower = model.get_submodule(followers[0].rpartition(".")[0])
    assert owner_name in model.state_dict() and followers[0] not in model.state_dict()   # one key per tensor
    assert follower.P is owner.P and follower.SIG is owner.SIG
    # a whole-model copy keeps its followers on the copied owner
    clone = copy.deepcopy(model)
    assert clone.get_submodule(followers[0].rpartition(".")[0]).P is clone.get_submodule(owner_name[:-2]).P
    assert clone.get_submodule(owner_name[:-2]).P is not owner.P
    # a copy of one follower alone keeps following the model's owner (nothing else was copied)
    assert copy.deepcopy(follower).P is owner.P
    # whatever replaces the owner's Parameter (from_pretrained, peft, FSDP, assign=True) is seen by the stage
    model.load_state_dict({k: v.clone() + 1 for k, v in model.state_dict().items()}, assign=True)
    assert follower.P is owner.P and torch.equal(follower.P, model.state_dict()[owner_name])
    follower.P = nn.Parameter(torch.zeros_like(owner.P))   # assigning on a follower writes to the owner
    assert owner.P is follower.P and not owner.P.any()
    model.to(torch.float64)
    assert follower.P.dtype == torch.float64 and follower.P is owner.P
