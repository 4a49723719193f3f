"""Hostile and broken folders: symlinks and pickles (by content) refused by push, weights that do not fit the
config, the recorded sha256 of the weights checked by every loader, bad config.json fields and unreadable weights
named in one line, and the `dcls-zoo train` folder pushable as written.

Every bad file is made here; crafted pickles carry a payload that would create a marker file if anything ran it.
"""
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import timm
import torch
from test_train import TINY_DCLS, tiny_image_config, write_image_folder

from dcls_zoo.cli import main as cli_main
from dcls_zoo.hub import load_folder, push_folder, save_folder
from dcls_zoo.hub.push import RUN_STATE_DIRS, pickle_kind, plan_folder

ARCH = "dcls_convnext_atto"
REPO = "dcls-zoo-test/x"


class _Payload:
    """Unpickling this creates the marker file (what a crafted checkpoint would do with a shell command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=3, **TINY_DCLS).eval()
    return save_folder(model, tmp_path_factory.mktemp("safety") / "good")


@pytest.fixture
def folder(good, tmp_path):
    return Path(shutil.copytree(good, tmp_path / "candidate"))


def _refused_by_push(folder, capsys, match):
    """push refuses in the API (ValueError matching) and in `dcls-zoo push --dry-run` (one stderr line, exit 1)."""
    with pytest.raises(ValueError, match=match):
        push_folder(folder, REPO, dry_run=True)
    assert cli_main(["push", str(folder), "--repo-id", REPO, "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("dcls-zoo push: error: ")


def test_the_good_folder_passes(good):
    plan = plan_folder(good, REPO)
    assert [p for p, _ in plan.files] == ["README.md", "config.json", "model.safetensors",
                                          "model.safetensors.sha256"]
    assert plan.skipped == ()


# -- 1. symlinks ----------------------------------------------------------------------------------------------------

def test_a_symlinked_file_is_refused(folder, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("token=hf_secret\n")
    (folder / "notes.txt").symlink_to(secret)
    _refused_by_push(folder, capsys, r"symbolic links \(notes\.txt\)")


def test_a_symlinked_folder_is_refused(folder, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("private\n")
    (folder / "extra").symlink_to(outside, target_is_directory=True)
    _refused_by_push(folder, capsys, r"symbolic links \(extra\)")


def test_a_symlinked_run_state_folder_is_skipped_not_followed(folder, tmp_path, capsys):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    torch.save({"optimizer": 1}, scratch / "optimizer.bin")
    (folder / "checkpoints").symlink_to(scratch, target_is_directory=True)   # resume state on another disk
    plan = plan_folder(folder, REPO)
    assert not [p for p, _ in plan.files if "optimizer" in p]
    assert plan.skipped == (("checkpoints/", RUN_STATE_DIRS["checkpoints"] + "; a symbolic link, not followed"),)


def test_a_symlinked_weights_file_is_refused(folder, tmp_path, capsys):
    real = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / "model.safetensors", real)
    (folder / "model.safetensors").symlink_to(real)
    _refused_by_push(folder, capsys, r"symbolic links \(model\.safetensors\)")


# -- 1. pickles, by content -----------------------------------------------------------------------------------------

def _protocol0_pickle(marker):
    return pickle.dumps(_Payload(marker), protocol=0)


@pytest.mark.parametrize("name", ["notes.txt", "extra.json", "helper.py", "more.safetensors", "NOSUFFIX",
                                  "sub/dir/card.md"])
@pytest.mark.parametrize("protocol", [0, 4])
def test_a_pickle_under_any_name_is_refused_and_never_run(folder, tmp_path, capsys, name, protocol):
    marker = tmp_path / "MARKER"
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=protocol))
    assert pickle_kind(path) == "pickle stream"
    _refused_by_push(folder, capsys, rf"pickled files \({name}: pickle stream\)")
    assert not marker.exists()


def test_a_torch_zip_checkpoint_under_another_name_is_refused(folder, capsys):
    torch.save({"w": torch.zeros(2)}, folder / "training_notes.md")
    assert pickle_kind(folder / "training_notes.md").startswith("zip archive with")
    _refused_by_push(folder, capsys, r"pickled files \(training_notes\.md: zip archive with .*data\.pkl")


def test_a_truncated_pickle_header_is_refused(folder, capsys):
    (folder / "blob").write_bytes(b"\x80\x04\x95")
    _refused_by_push(folder, capsys, r"pickled files \(blob: pickle stream\)")


def test_text_json_and_png_are_not_mistaken_for_pickles(folder):
    from PIL import Image

    (folder / "notes.txt").write_text("(just text)\n")
    (folder / "results.json").write_text(json.dumps({"accuracy": 0.5}))
    Image.new("RGB", (8, 8)).save(folder / "curves.png")
    assert [p for p, _ in plan_folder(folder).files] == [
        "README.md", "config.json", "curves.png", "model.safetensors", "model.safetensors.sha256", "notes.txt",
        "results.json"]


# -- 1. weights must fit the architecture in config.json ------------------------------------------------------------

def test_weights_of_another_architecture_are_refused_before_upload(folder, tmp_path, capsys):
    other = save_folder(timm.create_model(ARCH, num_classes=3, dims=[8, 8, 16, 24], depths=[1, 1, 1, 1],
                                          dcls_dilated_kernel_size=3, dcls_kernel_count=2),
                        tmp_path / "other", card=False)
    for name in ("model.safetensors", "model.safetensors.sha256"):  # an intact file, of another model
        shutil.copy(other / name, folder / name)
    _refused_by_push(folder, capsys, r"model\.safetensors \(checked against config\.json\) does not fit "
                                     r"dcls_convnext_atto: .*shape mismatches.*stages\.3")


def test_a_classifier_size_the_weights_do_not_have_is_refused(folder, capsys):
    config = json.loads((folder / "config.json").read_text())
    config["num_classes"] = 5             # one size, but not the weights' (3)
    config.get("model_args", {}).pop("num_classes", None)
    (folder / "config.json").write_text(json.dumps(config))
    _refused_by_push(folder, capsys,
                     r"does not fit dcls_convnext_atto: shape mismatches.*head\.fc\.weight \(3, 16\) vs \(5, 16\)")
    with pytest.raises(ValueError, match=r"config\.json: num_classes is 5 but the classifier 'head\.fc' in "
                                         r"model\.safetensors has 3 classes"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


# -- 3. sha256 of the weights ---------------------------------------------------------------------------------------

def _flip_a_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_is_caught_by_every_loader(folder, capsys):
    _flip_a_byte(folder / "model.safetensors")   # in the tensor data: the file still parses
    weights = str(folder / "model.safetensors")
    match = r"model\.safetensors: sha256 [0-9a-f]{16}\.\.\. differs from the [0-9a-f]{16}\.\.\. recorded in " \
            r"model\.safetensors\.sha256"
    with pytest.raises(ValueError, match=match) as err:
        load_folder(folder)
    assert weights in str(err.value)
    with pytest.raises(ValueError, match=match):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    _refused_by_push(folder, capsys, match)


def test_folders_without_a_checksum_still_load(folder, tmp_path):
    (folder / "model.safetensors.sha256").unlink()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = load_folder(folder).eval()(x)
        b = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x)
    assert torch.equal(a, b)
    # a folder written by timm itself
    from timm.models import save_for_hf

    model = timm.create_model("resnet10t", num_classes=4).eval()
    save_for_hf(model, str(tmp_path / "timm_own"), safe_serialization="both")
    with torch.no_grad():
        assert torch.equal(load_folder(tmp_path / "timm_own").eval()(x), model(x))


def test_the_checksum_file_is_sha256sum_compatible_and_checked(folder):
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert (folder / "model.safetensors.sha256").read_text().split() == [digest, "model.safetensors"]
    (folder / "model.safetensors.sha256").write_text("not a digest\n")
    with pytest.raises(ValueError, match=r"model\.safetensors\.sha256: expected one line '<64 hex digits>  "
                                         r"model\.safetensors'"):
        load_folder(folder)


# -- 4. local-dir with two classifier sizes -------------------------------------------------------------------------

def test_local_dir_with_two_classifier_sizes_is_refused_not_reinitialised(folder):
    config = json.loads((folder / "config.json").read_text())
    config["num_classes"] = 5
    config.setdefault("model_args", {})["num_classes"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    match = r"config\.json: 'num_classes' \(5\) and 'model_args\.num_classes' \(3\) disagree"
    with pytest.raises(ValueError, match=match):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    with pytest.raises(ValueError, match=match):
        load_folder(folder)


def test_local_dir_with_one_classifier_size_loads_the_trained_head(good):
    x = torch.randn(1, 3, 32, 32)
    reference = load_folder(good).eval()
    model = timm.create_model(f"local-dir:{good}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


# -- 5. config.json and weights files: one line naming the file -----------------------------------------------------

@pytest.mark.parametrize("edit, match, timm_parses_it", [
    (lambda c: "{not json", r"config\.json: not valid JSON", False),
    (lambda c: dict(c, architecture=123), r"config\.json: 'architecture' must be a model name string, got 123",
     False),
    (lambda c: dict(c, num_classes="five"), r"config\.json: 'num_classes' must be a non-negative integer, "
                                            r"got 'five'", True),
    (lambda c: dict(c, model_args=[1, 2]), r"config\.json: 'model_args' must be a JSON object", False),
    (lambda c: dict(c, pretrained_cfg="in1k"), r"config\.json: 'pretrained_cfg' must be a JSON object", False),
    (lambda c: dict(c, pretrained_cfg=dict(c["pretrained_cfg"], mean="0.5")),
     r"config\.json: 'pretrained_cfg\.mean' must be a list of numbers, got '0\.5'", True),
    (lambda c: [c], r"config\.json: expected a JSON object, got a list", False),
])
def test_a_bad_config_is_one_line_naming_the_file(folder, capsys, edit, match, timm_parses_it):
    config = edit(json.loads((folder / "config.json").read_text()))
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(ValueError, match=match) as err:
        load_folder(folder)
    assert str(folder / "config.json") in str(err.value) and "\n" not in str(err.value)
    _refused_by_push(folder, capsys, match)
    if timm_parses_it:   # what timm's own config parser lets through, local-dir: catches before building
        with pytest.raises(ValueError, match=match):
            timm.create_model(f"local-dir:{folder}", pretrained=True)


@pytest.mark.parametrize("damage, what", [
    (lambda b: b[: len(b) // 2], r"[\d,]+ bytes, truncated or not safetensors"),
    (lambda b: b"", r"empty"),
    (lambda b: os.urandom(4096), r"[\d,]+ bytes, truncated or not safetensors"),
])
def test_unreadable_safetensors_are_one_line_naming_the_file(folder, capsys, damage, what):
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    (folder / "model.safetensors.sha256").unlink()   # no checksum: the header check alone must catch it
    match = rf"model\.safetensors: not a readable safetensors file \({what}"
    for load in (lambda: load_folder(folder), lambda: timm.create_model(f"local-dir:{folder}", pretrained=True),
                 lambda: timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))):
        with pytest.raises(ValueError, match=match) as err:
            load()
        assert str(weights) in str(err.value) and "\n" not in str(err.value)
    _refused_by_push(folder, capsys, match)


@pytest.mark.parametrize("content", ["garbage", "truncated", "empty", "crafted"])
def test_a_bad_pth_is_named_and_never_advised_to_unpickle(tmp_path, content):
    marker = tmp_path / "MARKER"
    path = tmp_path / "weights.pth"
    if content == "garbage":
        path.write_bytes(os.urandom(2048))
    elif content == "truncated":
        torch.save(timm.create_model(ARCH, **TINY_DCLS).state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif content == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    with pytest.raises(ValueError) as err:
        timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY_DCLS)
    message = str(err.value)
    assert message.startswith(f"{path}: not a ") and "\n" not in message
    assert "weights_only=False" not in message and "set to `False`" not in message
    assert not marker.exists()


# -- 1. the folder `dcls-zoo train` writes is pushable as written ---------------------------------------------------

def test_run_state_folders_are_the_trainers():
    from dcls_zoo.train.trainer import CHECKPOINT_DIR, LOGS_DIR

    assert sorted(RUN_STATE_DIRS) == sorted([CHECKPOINT_DIR, LOGS_DIR])


def test_a_training_run_folder_pushes_as_written_without_its_checkpoints(tmp_path, capsys):
    from dcls_zoo.train.run import run_training

    data = write_image_folder(tmp_path / "imgs", n_per_class=4)
    cfg = tiny_image_config(tmp_path, data, epochs=1, save_every=1, keep_checkpoints=1)
    run_training(cfg)
    out = Path(cfg.output_dir)
    assert any((out / "checkpoints").iterdir())      # the resume state is there, with its pickles
    plan = plan_folder(out, REPO)
    sent = [p for p, _ in plan.files]
    assert not [p for p in sent if p.startswith("checkpoints/")]
    assert {"README.md", "config.json", "model.safetensors", "model.safetensors.sha256"} <= set(sent)
    assert ("checkpoints/", RUN_STATE_DIRS["checkpoints"]) in plan.skipped
    assert cli_main(["push", str(out), "--repo-id", REPO, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "skipped checkpoints/ (resume state of `dcls-zoo train`, not part of the model)" in printed
    # the card describes what is sent, not the resume state left behind
    card = (out / "README.md").read_text()
    assert "checkpoints/" not in card and "training_curves.png" in card and "training_curves.png" in sent
