"""The `dcls-zoo` command: `--help` and argument errors without torch, one-line errors (no traceback) for bad
input to `tag` and `convert`, nothing written by a conversion that fails, and the package's lazy attributes."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from dcls_zoo.data.audio_io import write_wav
from dcls_zoo.cli import COMMANDS
from dcls_zoo.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
SR = 32000
HEAVY = ("torch", "timm", "transformers", "accelerate", "datasets", "numpy")


def _fresh_python(code, *args):
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# -- fast --help --------------------------------------------------------------------------------------------------

def test_help_and_argument_errors_import_no_torch():
    """Every --help and an argument error of each kind, through the console script's entry point, in one fresh
    process: none of them imports torch (or timm, transformers, numpy)."""
    argvs = [["--help"], []] + [[name, "--help"] for name, _, _ in COMMANDS] + [
        ["push"], ["tag", "x.wav"], ["train", "--epochs", "x"], ["convert", "only_a_model"], ["no-such-command"]]
    code = f"""
import json, sys
import dcls_zoo_cli
codes = []
for argv in {argvs!r}:
    try:
        codes.append(dcls_zoo_cli.main(argv))
    except SystemExit as e:
        codes.append(e.code)
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps(dict(codes=codes, heavy=heavy)))
"""
    out = json.loads(_fresh_python(code).strip().splitlines()[-1])
    assert out["heavy"] == []
    help_codes, error_codes = out["codes"][:len(COMMANDS) + 2], out["codes"][len(COMMANDS) + 2:]
    assert help_codes == [0, 2] + [0] * len(COMMANDS)
    assert error_codes == [2] * 5


def test_the_installed_console_script_imports_no_torch_for_help():
    script = shutil.which("dcls-zoo")
    assert script, "the dcls-zoo console script is installed by `pip install -e .`"
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    result = subprocess.run([script, "train", "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "--epochs" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    assert "dcls_zoo.cli" in imported and not imported & set(HEAVY)


def test_import_dcls_zoo_gives_the_subpackages_without_the_training_stack(tmp_path):
    code = """
import sys, dcls_zoo, timm
assert 'dcls_convnext_atto' in timm.list_models('dcls_*')
light = [m for m in ('datasets', 'matplotlib', 'sklearn') if m in sys.modules]  # (transformers pulls accelerate)
model = timm.create_model('dcls_convnext_atto', num_classes=2)
dcls_zoo.hub.save_folder(model, sys.argv[1], card=False)      # no `import dcls_zoo.hub` needed
assert dcls_zoo.train.TrainConfig and dcls_zoo.lm.OrthoGPT2Config and dcls_zoo.layers.Dcls2d is dcls_zoo.Dcls2d
print(light)
"""
    assert _fresh_python(code, str(tmp_path / "folder")).strip().splitlines()[-1] == "[]"
    assert (tmp_path / "folder" / "model.safetensors").is_file()


# -- one line, no traceback ---------------------------------------------------------------------------------------

def _fails_in_one_line(capsys, argv, *expected):
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, captured.err
    assert captured.out == ""
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("tag") / "clip.wav"
    write_wav(path, 0.1 * torch.randn(1, 2 * SR, generator=torch.Generator().manual_seed(0)), SR)
    return path


@pytest.fixture(scope="module")
def audioset_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tag_ckpt") / "audioset_tiny.safetensors"
    save_file(timm.create_model("convnext_audioset_tiny").state_dict(), path)
    return path


@pytest.mark.parametrize("seconds", ["1e-6", "0", "-2", "inf", "nan"])
def test_tag_rejects_a_clip_length_that_is_not_a_positive_number(capsys, clip, seconds):
    _fails_in_one_line(capsys, ["tag", str(clip), "--checkpoint", "unused.pth", "--clip-seconds", seconds],
                       "dcls-zoo tag: error:", "--clip-seconds")


def test_tag_names_a_clip_too_short_for_the_model(capsys, clip, tmp_path):
    checkpoint = tmp_path / "dcls_audio_tiny.safetensors"
    model = timm.create_model("dcls_convnext_audio_tiny", waveform_input=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint)
    err = _fails_in_one_line(capsys, ["tag", str(clip), "--model", "dcls_convnext_audio_tiny", "--checkpoint",
                                      str(checkpoint), "--clip-seconds", "1"])
    assert "a clip of 1 s is 32000 samples at 32000 Hz, but dcls_convnext_audio_tiny needs at least 40640: use " \
           "clips of 1.27 s or more (--clip-seconds)" in err


def test_tag_names_a_missing_checkpoint(capsys, clip, tmp_path):
    _fails_in_one_line(capsys, ["tag", str(clip), "--checkpoint", str(tmp_path / "missing.pth")],
                       f"--checkpoint {tmp_path / 'missing.pth'}: no such file")


@pytest.mark.parametrize("content", ["garbage", "truncated", "crafted"])
def test_tag_names_a_bad_checkpoint(capsys, clip, tmp_path, audioset_checkpoint, content):
    marker = tmp_path / "MARKER"
    path = tmp_path / "weights.pth"
    if content == "garbage":
        path.write_bytes(os.urandom(4096))
    elif content == "truncated":
        path = tmp_path / "weights.safetensors"
        path.write_bytes(audioset_checkpoint.read_bytes()[:100_000])
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    err = _fails_in_one_line(capsys, ["tag", str(clip), "--checkpoint", str(path)], str(path))
    assert "weights_only=False" not in err and not marker.exists()


@pytest.mark.parametrize("subtype, sample_bytes", [("PCM_16", 2), ("FLOAT", 4)])
def test_tag_names_a_truncated_wav_and_prints_no_tags(capsys, clip, tmp_path, audioset_checkpoint, subtype,
                                                     sample_bytes):
    import soundfile

    whole = tmp_path / "whole.wav"
    soundfile.write(whole, 0.1 * torch.randn(2 * SR).numpy(), SR, subtype=subtype)   # 2 s, 44-byte header or more
    data = whole.read_bytes()
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(data[: len(data) - SR * sample_bytes])   # one second of samples missing
    _fails_in_one_line(capsys, ["tag", str(truncated), "--checkpoint", str(audioset_checkpoint)],
                       f"{truncated}: truncated WAV file: its header announces {2 * SR * sample_bytes:,} bytes of "
                       f"samples but it holds {SR * sample_bytes:,}")   # and no tags on stdout


def test_tag_passes_waveform_input_only_to_the_models_that_take_it(monkeypatch, capsys, clip):
    """No retry on TypeError: one create_model call, with waveform_input exactly for the DCLS-Audio family."""
    calls = []

    def fake_create_model(name, **kwargs):
        calls.append((name, kwargs.get("waveform_input")))
        raise TypeError("an error from inside the model")

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    _fails_in_one_line(capsys, ["tag", str(clip), "--pretrained"], "an error from inside the model")
    _fails_in_one_line(capsys, ["tag", str(clip), "--pretrained", "--model", "dcls_convnext_audio_tiny"])
    assert calls == [("convnext_audioset_tiny", None), ("dcls_convnext_audio_tiny", True)]


def test_tag_finds_the_audio_families_in_the_registry():
    """The AudioSet taggers are the models whose cfg names the AudioSet labels; the spectrogram ones (DCLS-Audio)
    are those whose input has mel rows."""
    from dcls_zoo.data.audio_io import audio_tagging_models

    models = audio_tagging_models()
    assert sorted(models) == sorted(timm.list_models(module=["audio_convnext", "dcls_audio", "pann"]))
    assert sorted(name for name, spectrogram in models.items() if spectrogram) == sorted(
        timm.list_models(module="dcls_audio"))


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# -- convert: nothing runs, nothing lost --------------------------------------------------------------------------

def _nanogpt_checkpoint(path):
    import re

    from dcls_zoo.lm import OrthoGPT2Config, OrthoGPT2LMHeadModel

    config = OrthoGPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, activation="gelu",
                             activation_function="gelu", layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    source = OrthoGPT2LMHeadModel(config).eval()
    nano = {k: (v.t() if re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", k) else v).clone()
            for k, v in source.state_dict().items() if k != "lm_head.weight"}
    torch.save({"model": nano, "model_args": dict(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=64,
                                                  bias=True, dropout=0.0)}, path)
    return path


@pytest.fixture(scope="module")
def nanogpt(tmp_path_factory):
    return _nanogpt_checkpoint(tmp_path_factory.mktemp("nano") / "ckpt.pt")


@pytest.mark.parametrize("content", ["crafted", "truncated", "garbage", "empty"])
def test_convert_names_a_bad_ortho_gpt2_file_and_runs_nothing(capsys, tmp_path, nanogpt, content):
    marker = tmp_path / "MARKER"
    path = tmp_path / "ckpt.pt"
    if content == "crafted":
        path.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    elif content == "truncated":
        path.write_bytes(nanogpt.read_bytes()[:2000])
    elif content == "garbage":
        path.write_bytes(os.urandom(3000))
    else:
        path.write_bytes(b"")
    err = _fails_in_one_line(capsys, ["convert", "ortho_gpt2", str(path), str(tmp_path / "out")],
                             f"dcls-zoo convert: error: {path}: not a ")
    assert "weights_only=False" not in err and not marker.exists()
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_convert_refuses_an_out_dir_that_is_a_file_or_a_non_empty_folder(capsys, tmp_path, nanogpt):
    (tmp_path / "a_file").write_text("keep me\n")
    _fails_in_one_line(capsys, ["convert", "ortho_gpt2", str(nanogpt), str(tmp_path / "a_file")],
                       f"out_dir {tmp_path / 'a_file'} exists and is not a folder")
    assert (tmp_path / "a_file").read_text() == "keep me\n"
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "results.json").write_text("{}")
    _fails_in_one_line(capsys, ["convert", "ortho_gpt2", str(nanogpt), str(existing)],
                       "exists and is not empty", "--overwrite")
    assert sorted(os.listdir(existing)) == ["results.json"]
    assert cli_main(["convert", "ortho_gpt2", str(nanogpt), str(existing), "--overwrite"]) == 0
    assert "verified" in capsys.readouterr().out
    files = sorted(os.listdir(existing))
    assert "results.json" not in files and "model.safetensors" in files and "config.json" in files
    assert sorted(os.listdir(tmp_path)) == ["a_file", "existing"]   # no staging folder left behind


def test_a_conversion_that_fails_its_check_leaves_nothing_and_keeps_the_old_folder(capsys, tmp_path, nanogpt):
    # a negative tolerance fails every check: the folder must not appear, nor replace the existing one
    _fails_in_one_line(capsys, ["convert", "ortho_gpt2", str(nanogpt), str(tmp_path / "new"), "--tolerance", "-1"],
                       "conversion check failed (nothing was written to")
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text('{"previous": true}')
    _fails_in_one_line(capsys, ["convert", "ortho_gpt2", str(nanogpt), str(old), "--tolerance", "-1",
                                "--overwrite"], "conversion check failed")
    assert sorted(os.listdir(old)) == ["config.json"] and json.loads((old / "config.json").read_text())["previous"]
    assert sorted(os.listdir(tmp_path)) == ["old"]
