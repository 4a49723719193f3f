"""Hub-ready folders: safetensors with shared tensors stored once, timm's local-dir / hf-hub loading, strict loads,
explicit head replacement, and conversion of an original-layout checkpoint."""
import argparse
import hashlib
import json
import logging
import re
import shutil

import pytest
import timm
import torch
from safetensors import safe_open

from dcls_zoo.cli import main as cli_main
from dcls_zoo.hub import convert_checkpoint, load_folder, load_state_dict_file, load_weights, save_folder
from dcls_zoo.hub.save import SHARED_METADATA_KEY
from dcls_zoo.layers import Dcls2d, shared_parameter_groups
from dcls_zoo.lm import OrthoGPT2Config, OrthoGPT2LMHeadModel

ARCH = "dcls_convnext_atto"
IMG = (2, 3, 32, 32)


def _model(arch=ARCH, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(arch, **kwargs).eval()
    with torch.no_grad():  # non-trivial positions, so a lost tie or a transposed load would show
        for p in {id(m.P): m.P for m in model.modules() if isinstance(m, Dcls2d)}.values():
            p.uniform_(-3, 3)
    return model


def _position_groups(model):
    """Stage -> set of ids of the P objects its DCLS layers use."""
    groups = {}
    for name, m in model.named_modules():
        if isinstance(m, Dcls2d):
            groups.setdefault(name.split(".blocks.")[0], set()).add(id(m.P))
    return groups


def _assert_tied_per_stage(model):
    groups = _position_groups(model)
    assert len(groups) == 4
    assert all(len(ids) == 1 for ids in groups.values()), groups
    assert len(set.union(*groups.values())) == 4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = _model()
    folder = tmp_path_factory.mktemp("hub") / f"{ARCH}.test"
    save_folder(model, folder)
    x = torch.randn(IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    return model, folder, x, ref


def test_folder_holds_config_safetensors_checksum_and_card_only(saved):
    _, folder, _, _ = saved
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                         "model.safetensors.sha256"]
    # sha256sum format, checked against an independent hash of the file
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert (folder / "model.safetensors.sha256").read_text() == f"{digest}  model.safetensors\n"
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == ARCH and config["num_classes"] == 1000
    assert (folder / "README.md").read_text().startswith("---\n")


def test_shared_positions_are_stored_once_and_come_back_as_one_tensor(saved):
    model, folder, _, _ = saved
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
        assert SHARED_METADATA_KEY not in f.metadata()   # nothing aliased left to record
    # atto (depths 2-2-6-2): a stage's first block owns its positions, the other blocks follow it
    p_keys = [k for k in model.state_dict() if k.endswith(".P")]
    assert p_keys == [f"stages.{s}.blocks.0.conv_dw.P" for s in range(4)]
    assert sorted(k for k in stored if k.endswith(".P")) == p_keys
    state_dict = load_state_dict_file(folder / "model.safetensors")
    assert set(state_dict) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(state_dict[k], v), k


def test_timm_local_dir_loads_with_ties_restored(saved):
    _, folder, x, ref = saved
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    _assert_tied_per_stage(model)
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_load_folder_loads_with_ties_restored(saved):
    _, folder, x, ref = saved
    model = load_folder(folder).eval()
    _assert_tied_per_stage(model)
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def _fill_cache(cache, repo_id, folder, sha="0123456789abcdef0123456789abcdef01234567"):
    # The layout huggingface_hub reads offline: refs/main names a snapshot; plain files are enough.
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(sha)
    shutil.copytree(folder, repo_dir / "snapshots" / sha)


@pytest.fixture()
def offline_cache(saved, tmp_path):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # conftest: nothing here may reach a network
    _fill_cache(tmp_path, "dcls-zoo/dcls_convnext_atto.test", saved[1])
    return tmp_path


@pytest.mark.parametrize("how", ["hf-hub: name", "registry name, cfg with the hub id"])
def test_timm_loads_a_hub_id_offline_from_a_prefilled_cache(saved, offline_cache, how):
    # the second is what a family's cfg gains once its weights are published: hf_hub_id='dcls-zoo/<arch>.<tag>'
    _, _, x, ref = saved
    if how == "hf-hub: name":
        model = timm.create_model("hf-hub:dcls-zoo/dcls_convnext_atto.test", pretrained=True, cache_dir=offline_cache)
    else:
        model = timm.create_model(ARCH, pretrained=True, cache_dir=offline_cache,
                                  pretrained_cfg_overlay=dict(hf_hub_id="dcls-zoo/dcls_convnext_atto.test"))
    _assert_tied_per_stage(model)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref)


def test_load_folder_takes_a_hub_id_offline_from_a_prefilled_cache(saved, offline_cache):
    _, _, x, ref = saved
    model = load_folder("dcls-zoo/dcls_convnext_atto.test", cache_dir=offline_cache).eval()
    _assert_tied_per_stage(model)
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    with pytest.raises(FileNotFoundError, match=r"'dcls-zoo/not_there' is not a folder, and the local cache"):
        load_folder("dcls-zoo/not_there", cache_dir=offline_cache)


def test_assigning_positions_on_every_layer_keeps_each_stage_tied(saved):
    _, folder, x, ref = saved
    model = _model(seed=3)
    for m in model.modules():   # a naive re-init gives every layer a new Parameter: it lands on the stage's owner
        if isinstance(m, Dcls2d):
            m.P = torch.nn.Parameter(m.P.detach().clone())
    _assert_tied_per_stage(model)
    load_weights(model, folder)
    _assert_tied_per_stage(model)
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_weights_of_another_architecture_are_refused_naming_the_keys(saved, tmp_path):
    _, atto_folder, _, _ = saved
    femto = _model("dcls_convnext_femto")
    femto_folder = save_folder(femto, tmp_path / "femto", card=False)
    with pytest.raises(ValueError, match=r"\(saved from dcls_convnext_femto\) does not fit dcls_convnext_atto: "
                                         r"shape mismatches.*"
                                         r"stem\.0\.weight \(48, 3, 4, 4\) vs \(40, 3, 4, 4\)"):
        load_weights(_model(), femto_folder)
    # a folder whose config names one architecture but holds another's weights: both loaders name the keys
    mixed = tmp_path / "mixed"
    shutil.copytree(atto_folder, mixed)
    shutil.copy(femto_folder / "model.safetensors", mixed / "model.safetensors")
    shutil.copy(femto_folder / "model.safetensors.sha256", mixed / "model.safetensors.sha256")  # intact, but femto's
    with pytest.raises(ValueError, match=r"stem\.0\.weight"):
        load_folder(mixed)
    with pytest.raises(RuntimeError, match=r"size mismatch for stem\.0\.weight"):
        timm.create_model(f"local-dir:{mixed}", pretrained=True)
    # another family altogether: missing and unexpected keys are listed by name
    other = save_folder(timm.create_model("resnet10t"), tmp_path / "resnet", card=False)
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): stem\.0\.weight, stem\.0\.bias.*; "
                                         r"unexpected keys \(\d+\): [^;]*conv1\."):
        load_weights(_model(), other)


def test_classifier_size_mismatch_is_refused_unless_head_replacement_is_asked(saved, caplog):
    model, folder, x, _ = saved
    with pytest.raises(ValueError, match=r"1000-class classifier but num_classes=10 .*replace_head=True"):
        load_folder(folder, num_classes=10)
    with caplog.at_level(logging.WARNING, logger="dcls_zoo.hub.save"):
        tuned = load_folder(folder, num_classes=10, replace_head=True)
    assert re.search(r"replaced the 1000-class classifier \(head\.fc\) by a new randomly initialised 10-class",
                     caplog.text)
    assert tuned.get_classifier().out_features == 10 and tuned.num_classes == 10
    kept = {k: v for k, v in tuned.state_dict().items() if not k.startswith("head.fc.")}
    original = model.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in kept.items())
    _assert_tied_per_stage(tuned)
    # same class count: nothing replaced, nothing logged
    assert load_folder(folder, num_classes=1000).num_classes == 1000


def _to_original_layout(timm_state_dict):
    """timm ConvNeXt keys -> the ConvNeXt-dcls (FB) layout, the inverse of timm's convnext checkpoint filter."""
    out = {}
    for k, v in timm_state_dict.items():
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        k = re.sub(r"^head\.norm\.", "norm.", k)
        k = re.sub(r"^head\.fc\.", "head.", k)
        if "pwconv" in k and v.ndim == 4:   # 1x1 conv MLP (conv_mlp sizes) was a Linear in the original
            v = v.flatten(1)
        out[k] = v.clone()   # the original file repeats each shared P under every layer's key
    return out


def test_convert_original_layout_checkpoint_verifies_logits(tmp_path, capsys):
    source = _model(seed=5)
    every_copy = source.state_dict()   # the original file repeats each shared P under every layer's key
    for owner, *followers in shared_parameter_groups(source):
        every_copy.update(dict.fromkeys(followers, every_copy[owner]))
    original = _to_original_layout(every_copy)
    assert "stages.0.1.dwconv.P" in original and "downsample_layers.0.0.weight" in original
    checkpoint = tmp_path / "convnext_dcls_atto_1k_224_ema.pth"
    torch.save({"model": original, "epoch": 299, "args": argparse.Namespace(model="convnext_dcls_atto")},
               checkpoint)
    report = convert_checkpoint(ARCH, checkpoint, tmp_path / "out")
    assert report.verified and set(report.max_abs_diff) == {"timm local-dir", "dcls_zoo load_folder"}
    assert all(d == 0.0 for d in report.max_abs_diff.values())
    assert report.files == ("README.md", "config.json", "model.safetensors", "model.safetensors.sha256")
    assert report.shared_tensors == 4
    assert "verified" in report.describe()
    converted = load_folder(tmp_path / "out")
    x = torch.randn(IMG)
    with torch.no_grad():
        assert torch.equal(converted(x), source(x))
    # the same through the command line, which says what it checked
    assert cli_main(["convert", ARCH, str(checkpoint), str(tmp_path / "cli_out")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"verified: max \|logits\(reloaded\) - logits\(original layout\)\| on a fixed input "
                     r"\(2, 3, 224, 224\): timm local-dir: 0, dcls_zoo load_folder: 0", out), out
    assert cli_main(["convert", "no_such_model.x", str(checkpoint), str(tmp_path / "bad")]) == 1
    assert "unknown model 'no_such_model.x'" in capsys.readouterr().err


def test_convert_timm_train_container_with_ema_weights(tmp_path):
    # timm train.py layout (DCLS ConvFormer's Zenodo files): EMA weights under 'state_dict_ema', argparse args
    source = _model("dcls_convformer_s18", seed=7)
    checkpoint = tmp_path / "convformer_s18_v1_17lim_40el_seed0.pth.tar"
    ema = {k: v.clone() for k, v in source.state_dict().items()}
    torch.save({"state_dict": {k: torch.zeros_like(v) for k, v in ema.items()}, "state_dict_ema": ema,
                "epoch": 299, "args": argparse.Namespace(model="convformer_s18")}, checkpoint)
    report = convert_checkpoint("dcls_convformer_s18.bilinear_in1k", checkpoint, tmp_path / "out", batch_size=1)
    assert all(d == 0.0 for d in report.max_abs_diff.values()) and report.input_shape == (1, 3, 224, 224)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert torch.equal(load_folder(tmp_path / "out").eval()(x), source(x))


def test_convert_nanogpt_layout_checkpoint_to_a_transformers_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    config = OrthoGPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, activation="gelu",
                                activation_function="gelu", layer_norm_epsilon=1e-5,   # nanoGPT's exact GELU
                                bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    source = OrthoGPT2LMHeadModel(config).eval()
    # nanoGPT layout: Linear weights (out, in) where transformers' Conv1D stores (in, out); lm_head tied to wte
    nano = {k: (v.t() if re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", k) else v).clone()
            for k, v in source.state_dict().items() if k != "lm_head.weight"}
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"model": nano, "model_args": dict(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=64,
                                                  bias=True, dropout=0.0), "iter_num": 10}, checkpoint)
    report = convert_checkpoint("ortho_gpt2", checkpoint, tmp_path / "out")
    assert report.max_abs_diff == {"transformers from_pretrained": 0.0}
    assert {"README.md", "config.json", "model.safetensors"} <= set(report.files)
    assert not [f for f in report.files if f.endswith((".bin", ".pt", ".pth"))]
    x = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "out")(x).logits, source(x).logits)
    with pytest.raises(ValueError, match="is not a gpt2-124m-hermite3 checkpoint"):
        convert_checkpoint("gpt2-124m-hermite3", checkpoint, tmp_path / "out2")


def test_convert_refuses_unknown_names_and_missing_files(tmp_path):
    checkpoint = tmp_path / "x.pth"
    torch.save({}, checkpoint)
    with pytest.raises(ValueError, match="unknown model 'no_such_model.x'"):
        convert_checkpoint("no_such_model.x", checkpoint, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        convert_checkpoint(ARCH, tmp_path / "missing.pth", tmp_path / "out")
