"""Hermite / Fourier / Tropical ConvNeXt: parity with timm's ConvNeXt + torchortho, original checkpoints, optimiser."""
import importlib
import re
from functools import partial

import pytest
import timm
import timm.optim
import torch

from dcls_zoo.layers.activations import FourierActivation, HermiteActivation, TropicalActivation
from dcls_zoo.models.ortho_convnext import OrthoConvNeXt, checkpoint_filter_fn

torchortho = importlib.import_module("torchortho")

TINY = dict(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32))
NAMES = [f"{a}_convnext_{s}" for a in ("hermite", "fourier", "tropical") for s in ("tiny", "small", "base")]
REFERENCE = {"hermite": (torchortho.HermiteActivation, HermiteActivation, 3),
             "fourier": (torchortho.FourierActivation, FourierActivation, 5),
             "tropical": (torchortho.TropicalActivation, TropicalActivation, 5)}


def test_registered_names_and_cfgs():
    assert sorted(timm.list_models(module="ortho_convnext")) == sorted(NAMES)
    for name in NAMES:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None and cfg.paper_ids == "arXiv:2502.01247"


@pytest.mark.parametrize("activation", ["hermite", "fourier", "tropical"])
def test_full_size_structure_on_meta(activation):
    """ConvNeXt-T/S/B: timm's parameter count plus one coefficient set per block, paper degrees 3/5/5."""
    _, ours_cls, degree = REFERENCE[activation]
    per_act = sum(p.numel() for p in ours_cls(degree).parameters())
    for size, blocks in (("tiny", 18), ("small", 36), ("base", 36)):
        model = timm.create_model(f"{activation}_convnext_{size}", device="meta")
        base = timm.create_model(f"convnext_{size}", device="meta")
        acts = [m for m in model.modules() if isinstance(m, ours_cls)]
        assert len(acts) == blocks and all(m.degree == degree for m in acts)
        assert all(p.is_meta for p in model.parameters())
        n_ours = sum(p.numel() for p in model.parameters())
        assert n_ours == sum(p.numel() for p in base.parameters()) + blocks * per_act
        assert model.no_weight_decay() == {n for n, _ in model.named_parameters() if ".mlp.act." in n}


@pytest.mark.parametrize("activation", ["hermite", "fourier", "tropical"])
def test_parity_with_timm_convnext_and_torchortho(activation):
    ref_cls, _, degree = REFERENCE[activation]
    torch.manual_seed(0)
    ours = timm.create_model(f"{activation}_convnext_tiny", num_classes=5, **TINY).eval()
    with torch.no_grad():  # move every activation off its init so parity covers learned coefficients
        for name, p in ours.named_parameters():
            if ".act." in name:
                p.add_(0.05 * torch.randn_like(p))
    ref = timm.models.convnext.ConvNeXt(num_classes=5, act_layer=partial(ref_cls, degree), **TINY).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k.split(".")[-1] in ("coeffs", "grid", "powers", "normalization_term")
                                  for k in missing)
    x = torch.randn(2, 3, 64, 64)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), ref(x_ref)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-4, atol=1e-5)
    y_ours.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-6)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def _to_original_layout(state_dict: dict, reference_act: torch.nn.Module) -> dict:
    """timm names → ConvNeXt-ortho (FB) names, with torchortho's activation buffers, in a {'model': ...} container."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2")
        k = k.replace("mlp.act.", "act.").replace("head.norm.", "norm.").replace("head.fc.", "head.")
        out[k] = v
    for block in {re.match(r"(stages\.\d+\.\d+)\.act\.", k).group(1) for k in out if ".act." in k}:
        for name, buf in reference_act.named_buffers():
            out[f"{block}.act.{name}"] = buf.clone()
    return {"model": out}


@pytest.mark.parametrize("activation", ["hermite", "tropical"])
def test_original_checkpoint_loads_through_pretrained(tmp_path, activation):
    ref_cls, _, degree = REFERENCE[activation]
    torch.manual_seed(1)
    source = timm.create_model(f"{activation}_convnext_tiny", num_classes=7, **TINY).eval()
    with torch.no_grad():
        for name, p in source.named_parameters():
            p.add_(0.02 * torch.randn_like(p))
    checkpoint = _to_original_layout(source.state_dict(), ref_cls(degree))
    assert any(k.startswith("stages.0.0.act.") for k in checkpoint["model"])
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    loaded = timm.create_model(f"{activation}_convnext_tiny", pretrained=True, num_classes=7,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=7), **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_legacy_checkpoint_into_default_scheme_is_refused(tmp_path):
    legacy_buffers = torchortho.HermiteActivation(3)
    legacy_buffers.coeffs.mul_(torch.arange(1.0, 5.0).lgamma().exp().sqrt().unsqueeze(1))  # 0.1.1: He_k / sqrt(k!)
    source = timm.create_model("hermite_convnext_tiny", **TINY)
    path = tmp_path / "legacy.pth"
    torch.save(_to_original_layout(source.state_dict(), legacy_buffers), path)
    with pytest.raises(ValueError, match="scheme='legacy'"):
        timm.create_model("hermite_convnext_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **TINY)
    model = timm.create_model("hermite_convnext_tiny", pretrained=True, activation_scheme="legacy",
                              pretrained_cfg_overlay=dict(file=str(path)), **TINY)
    assert model.stages[0].blocks[0].mlp.act.scheme == "legacy"


def test_timm_optimizer_excludes_activation_parameters_from_weight_decay():
    model = timm.create_model("fourier_convnext_tiny", **TINY)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    act_ids = {id(p) for n, p in model.named_parameters() if ".mlp.act." in n}
    assert len(act_ids) == 5 * 4  # 5 blocks x (fundamental, phases, coefficients, grid)
    for group in optimizer.param_groups:
        if any(id(p) in act_ids for p in group["params"]):
            assert group["weight_decay"] == 0.0 and group["lr"] == 1e-3


def test_training_step_bf16_and_output_dtype():
    model = timm.create_model("tropical_convnext_tiny", num_classes=3, **TINY)
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model = model.to(torch.bfloat16)
    assert model(x.bfloat16()).dtype == torch.bfloat16


def test_bad_activation_name():
    with pytest.raises(ValueError, match="activation must be one of"):
        OrthoConvNeXt(activation="rational", **TINY)
    with pytest.raises(TypeError, match="takes no act_layer"):
        timm.create_model("hermite_convnext_tiny", act_layer="gelu")
    with pytest.raises(TypeError):
        timm.create_model("hermite_convnext_tiny", not_an_argument=1)


def test_filter_unwraps_a_training_container_as_timms_file_loader_does():
    # A state dict handed over directly (pretrained_cfg_overlay=dict(state_dict=...)): EMA weights first, DDP's
    # `module.` prefixes dropped.
    model = OrthoConvNeXt(num_classes=3, **TINY)
    weights = model.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    out = checkpoint_filter_fn({"model": weights, "model_ema": ema, "epoch": 3}, model)
    assert set(out) == set(weights) and torch.equal(out["head.fc.weight"], ema["head.fc.weight"])
    assert set(checkpoint_filter_fn({f"module.{k}": v for k, v in weights.items()}, model)) == set(weights)
