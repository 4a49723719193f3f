"""`dcls-zoo train` runs no code from a file, loses nothing and says what is wrong in one line.

Every bad input is made here: crafted pickles (whose unpickling would create a marker file) in and beside each file
a resume reads, truncated and deleted checkpoint files, a folder that holds another run, corrupt images, a
read-only folder and a full disk (injected: the suite may run as root, for whom permissions do not hold), and a
two-process run with TensorBoard on.
"""
import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest
import torch
from test_train import TINY_DCLS, tiny_image_config, write_image_folder

from dcls_zoo.cli import main
from dcls_zoo.train.trainer import CHECKPOINT_DIR, Trainer

CHECKPOINT_FILES = ["ema.safetensors", "model.safetensors", "optimizer.json", "optimizer.safetensors",
                    "rng_state_0.json", "trainer_state.json"]


class RunsCode:
    """Unpickling this object opens (creates) `path`: the stand-in for any code a crafted file would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def tiny_args(data, out, *extra):
    return ["train", "--dataset", data, "--eval-split", "train", "--model-kwargs", json.dumps(TINY_DCLS),
            "--img-size", "32", "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--crop-pct", "1.0",
            "--batch-size", "4", "--max-steps", "4", "--save-every", "2", "--model-ema-decay", "0.9",
            "--report-to", "none", "--no-progress", "--no-save-model", "--output-dir", str(out), *extra]


def error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]  # earlier lines: datasets' progress bars


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, image_data):
    """A finished 4-step run with EMA: checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(tiny_args(image_data, out)) == 0
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained_run, out)
    return out


def _last_checkpoint(out):
    return out / CHECKPOINT_DIR / "step_00000004"


def _relist(folder, name):
    """Record a replaced file's new size in trainer_state.json, as a careful attacker would."""
    state_path = folder / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["files"][name] = os.path.getsize(folder / name)
    state_path.write_text(json.dumps(state))


def test_checkpoint_holds_only_safetensors_and_json(trained_run):
    from safetensors import safe_open

    folder = _last_checkpoint(trained_run)
    assert sorted(os.listdir(trained_run / CHECKPOINT_DIR)) == ["step_00000002", "step_00000004"]
    assert sorted(os.listdir(folder)) == CHECKPOINT_FILES
    for name in CHECKPOINT_FILES:
        head = (folder / name).read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", name  # no pickle stream, no torch zip
        if name.endswith(".json"):
            json.loads((folder / name).read_text())
        else:
            with safe_open(str(folder / name), framework="pt") as f:
                assert list(f.keys())
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and set(state["files"]) == set(CHECKPOINT_FILES) - {"trainer_state.json"}


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
def test_crafted_pickle_in_a_resume_file_runs_nothing(run_copy, image_data, tmp_path, capsys, name, fmt):
    marker = tmp_path / "code-ran"
    path = _last_checkpoint(run_copy) / name
    if fmt == "pickle":
        path.write_bytes(pickle.dumps(RunsCode(marker)))
    else:
        torch.save(RunsCode(marker), path)
    if name != "trainer_state.json":
        _relist(path.parent, name)
    assert main(tiny_args(image_data, run_copy, "--resume")) == 1
    line = error_line(capsys)
    assert not marker.exists()
    assert line.startswith(f"dcls-zoo train: error: --resume: {path} ")


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin",
                                  "pytorch_model.bin"])
def test_crafted_pickle_beside_the_checkpoint_stops_the_resume(run_copy, image_data, tmp_path, capsys, name):
    """Accelerate's file names (what older checkpoints held): nothing but the listed files is ever read."""
    marker = tmp_path / "code-ran"
    path = _last_checkpoint(run_copy) / name
    torch.save({"x": RunsCode(marker)}, path)
    assert main(tiny_args(image_data, run_copy, "--resume")) == 1
    line = error_line(capsys)
    assert not marker.exists()
    assert line == (f"dcls-zoo train: error: --resume: {path} is not part of this checkpoint (its trainer_state.json "
                    f"lists {', '.join(n for n in CHECKPOINT_FILES if n != 'trainer_state.json')}); nothing else is "
                    "read: remove it")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _scramble_same_size(path):
    data = path.read_bytes()
    path.write_bytes(b"\x00garbage" + data[8:])


@pytest.mark.parametrize("name,damage,expected", [
    ("model.safetensors", "truncate", "{path} has {size} bytes, {full} were written; the checkpoint is damaged"),
    ("optimizer.safetensors", "truncate", "{path} has {size} bytes, {full} were written; the checkpoint is damaged"),
    ("model.safetensors", "delete", "{path} is missing; the checkpoint is incomplete"),
    ("ema.safetensors", "delete", "{path} is missing; the checkpoint is incomplete"),
    ("rng_state_0.json", "delete", "{path} is missing; the checkpoint is incomplete"),
    ("optimizer.safetensors", "symlink", "{path} is a symbolic link; a checkpoint holds the plain files the run"),
    ("model.safetensors", "scramble", "{path} is not a readable safetensors file ("),
    ("optimizer.json", "scramble", "{path} is not a readable JSON file ("),
    ("rng_state_0.json", "scramble", "{path} is not a readable JSON file ("),
    ("trainer_state.json", "scramble", "{path} is not a readable JSON file ("),
    ("trainer_state.json", "no file list", "{path} is not a dcls-zoo checkpoint state (it has no file list"),
    ("trainer_state.json", "bad step", "{path} is not a valid trainer state (bad or missing entry"),
])
def test_damaged_checkpoint_refuses_naming_the_file(run_copy, image_data, capsys, name, damage, expected):
    path = _last_checkpoint(run_copy) / name
    full = os.path.getsize(path)
    if damage == "truncate":
        _truncate(path)
    elif damage == "delete":
        path.unlink()
    elif damage == "scramble":
        _scramble_same_size(path)
    elif damage == "symlink":  # to a same-size file elsewhere
        shutil.move(path, path.parent.parent / "elsewhere")
        path.symlink_to(path.parent.parent / "elsewhere")
    elif damage == "no file list":
        path.write_text(json.dumps({"global_step": 4}))
    elif damage == "bad step":
        state = json.loads(path.read_text())
        state["global_step"] = "four"
        path.write_text(json.dumps(state))
    size = os.path.getsize(path) if path.exists() else 0
    assert main(tiny_args(image_data, run_copy, "--resume")) == 1
    line = error_line(capsys)
    assert line.startswith("dcls-zoo train: error: --resume: " + expected.format(path=path, size=size, full=full))


def test_rng_state_of_the_wrong_size_refuses(run_copy, image_data, capsys):
    path = _last_checkpoint(run_copy) / "rng_state_0.json"
    states = json.loads(path.read_text())
    states["torch"] = states["torch"][:-2]
    path.write_text(json.dumps(states))
    _relist(path.parent, path.name)
    assert main(tiny_args(image_data, run_copy, "--resume")) == 1
    assert error_line(capsys).startswith(f"dcls-zoo train: error: --resume: {path} is not a readable generator state "
                                         "(torch generator state of 5055 bytes, expected 5056)")


def test_resume_of_the_finished_run_reads_every_piece(run_copy, image_data, capsys):
    assert main(tiny_args(image_data, run_copy, "--resume")) == 0
    assert f"resumed from {_last_checkpoint(run_copy)} (optimizer step 4)" in capsys.readouterr().out


def test_a_folder_holding_files_is_not_reused_silently(run_copy, image_data, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(tiny_args(image_data, mine)) == 1
    assert error_line(capsys) == (f"dcls-zoo train: error: --output-dir {mine} is not empty (it holds "
                                  f"{mine / 'notes.txt'}); pass --resume to continue its run, --overwrite to "
                                  "replace it, or choose another folder")
    assert sorted(os.listdir(mine)) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert main(tiny_args(image_data, run_copy, "--resume", "--overwrite")) == 1
    assert error_line(capsys) == ("dcls-zoo train: error: --resume continues the run in --output-dir and "
                                  "--overwrite replaces it: give one")
    (tmp_path / "afile").write_text("x")
    assert main(tiny_args(image_data, tmp_path / "afile")) == 1
    assert error_line(capsys).endswith(f"--output-dir {tmp_path / 'afile'} is a file, not a folder")
    # --overwrite deletes only what a run writes: a user's file in logs/ stops it, and nothing is deleted
    (run_copy / "logs" / "my-notes.txt").write_text("mine")
    assert main(tiny_args(image_data, run_copy, "--overwrite")) == 1
    assert error_line(capsys) == (f"dcls-zoo train: error: --overwrite deletes the previous run's logs/, but "
                                  f"{run_copy / 'logs' / 'my-notes.txt'} is not something a run writes; move it away "
                                  "or choose another --output-dir")
    assert sorted(os.listdir(run_copy / CHECKPOINT_DIR)) == ["step_00000002", "step_00000004"]
    (run_copy / "logs" / "my-notes.txt").unlink()
    # --overwrite: the older run's state and files go (a stale card would describe other weights), others stay
    old_run = json.loads((_last_checkpoint(run_copy) / "trainer_state.json").read_text())["run_id"]
    (run_copy / "README.md").write_text("the card of the older run")
    (run_copy / "data-notes.txt").write_text("mine")
    assert main(tiny_args(image_data, run_copy, "--overwrite", "--max-steps", "2", "--save-every", "1")) == 0
    names = sorted(os.listdir(run_copy / CHECKPOINT_DIR))
    assert names == ["step_00000001", "step_00000002"]
    new_run = json.loads((run_copy / CHECKPOINT_DIR / names[-1] / "trainer_state.json").read_text())["run_id"]
    assert new_run != old_run
    assert not (run_copy / "README.md").exists()  # this run (--no-save-model) writes no card
    assert (run_copy / "data-notes.txt").read_text() == "mine"
    assert json.loads((run_copy / "all_results.json").read_text())["global_step"] == 2


def test_pruning_touches_only_this_runs_checkpoints(tmp_path, image_data, trained_run):
    cfg = tiny_image_config(tmp_path, image_data, max_steps=3, save_every=1, keep_checkpoints=1)
    trainer = Trainer(cfg)
    # an older run's higher-numbered checkpoint in the same folder (copied in by hand)
    older = os.path.join(trainer.checkpoint_dir, "step_00000099")
    shutil.copytree(_last_checkpoint(trained_run), older)
    trainer.train()
    assert sorted(os.listdir(trainer.checkpoint_dir)) == ["step_00000003", "step_00000099"]
    assert sorted(os.listdir(older)) == CHECKPOINT_FILES
    # nor is one of the same step number replaced
    trainer = Trainer(tiny_image_config(tmp_path / "two", image_data, max_steps=4, save_every=4))
    same_step = os.path.join(trainer.checkpoint_dir, "step_00000004")
    shutil.copytree(_last_checkpoint(trained_run), same_step)
    with pytest.raises(ValueError, match=f"^{re.escape(same_step)} holds a checkpoint of another run; it is not"):
        trainer.train()
    assert sorted(os.listdir(same_step)) == CHECKPOINT_FILES


def test_keep_checkpoints_zero_writes_none(tmp_path, image_data):
    trainer = Trainer(tiny_image_config(tmp_path, image_data, max_steps=2, save_every=1, keep_checkpoints=0))
    trainer.train()
    assert not os.path.exists(trainer.checkpoint_dir) or os.listdir(trainer.checkpoint_dir) == []
    assert trainer.last_checkpoint is None


@pytest.mark.parametrize("flags,expected", [
    (["--model", "nope_model"], "--model 'nope_model' is not a registered timm model"),
    (["--dataset", "./no_such_dir"], "--dataset ./no_such_dir: no such folder or file"),
    (["--max-steps", "0"], "max_steps must be >= 1 optimiser steps (or unset to train --epochs), got 0"),
    (["--keep-checkpoints", "-1"], "keep_checkpoints must be >= 0 (0: write no checkpoints), got -1"),
])
def test_bad_arguments_are_one_line(tmp_path, image_data, capsys, flags, expected):
    assert main(tiny_args(image_data, tmp_path / "out", *flags)) == 1
    assert error_line(capsys).startswith("dcls-zoo train: error: " + expected)
    assert not (tmp_path / "out").exists()  # nothing written for a run that was refused


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_image_is_named(tmp_path, capsys, damage):
    data = write_image_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "train" / "dark" / "3.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not a png" * 10)
    else:
        _truncate(bad)
    assert main(tiny_args(data, tmp_path / "out", "--max-steps", "1")) == 1
    line = error_line(capsys)
    assert line.startswith(f"dcls-zoo train: error: cannot read image {bad}: "), line
    assert line.endswith("(corrupt or truncated?); fix or remove it from the data set")


def test_corrupt_audio_clip_is_named(tmp_path):
    from test_train_tasks import write_audio_folder

    from dcls_zoo.train import TrainConfig

    data = write_audio_folder(tmp_path / "audio")
    bad = tmp_path / "audio" / "train" / "clip2.wav"
    _truncate(bad)
    bad.write_bytes(b"RIFF" + bad.read_bytes()[4:40])  # a header that promises more than the file holds
    cfg = TrainConfig(task="audio", model="dcls_convnext_audio_tiny", dataset=data, label_column="labels",
                      num_classes=3, eval_split="train", max_steps=1, output_dir=str(tmp_path / "out"),
                      report_to="none", progress=False, clip_seconds=1.5, batch_size=4,
                      model_kwargs=dict(waveform_input=True, dims=[8, 8, 16, 16], depths=[1, 1, 1, 1],
                                        dcls_dilated_kernel_size=5, dcls_kernel_count=3))
    trainer = Trainer(cfg)
    paths = [r["audio"]["path"] if isinstance(r["audio"], dict) else r["audio"] for r in trainer.train_set.rows]
    index = [os.path.basename(p) for p in paths].index("clip2.wav")
    with pytest.raises(ValueError, match=rf"^cannot read audio {bad}: .* \(corrupt or truncated\?\); fix or remove"):
        trainer.train_set[index]


def _fail_writes_under(monkeypatch, root, code, folders=True):
    """Every Python-level file (and folder) creation under `root` fails with OSError(code)."""
    import builtins

    real_open, real_makedirs = builtins.open, os.makedirs
    root = str(root)

    def inside(path):
        return str(os.path.abspath(path)).startswith(root)

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and inside(file) and any(c in mode for c in "wax+"):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)

    def fake_makedirs(name, *args, **kwargs):
        if folders and inside(name):
            raise OSError(code, os.strerror(code), str(name))
        return real_makedirs(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "makedirs", fake_makedirs)


def test_read_only_output_folder_is_one_line(tmp_path, image_data, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: inject what the kernel would answer
        _fail_writes_under(monkeypatch, parent, errno.EACCES)
    else:
        parent.chmod(0o555)
    out = parent / "out"
    assert main(tiny_args(image_data, out)) == 1
    assert error_line(capsys) == (f"dcls-zoo train: error: [Errno {errno.EACCES}] cannot create {out / 'logs'}: "
                                  "Permission denied; choose another --output-dir or free the disk")


def test_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, image_data, capsys,
                                                                                  monkeypatch):
    out = tmp_path / "out"
    _fail_writes_under(monkeypatch, out / CHECKPOINT_DIR, errno.ENOSPC, folders=False)
    assert main(tiny_args(image_data, out)) == 1
    step = out / CHECKPOINT_DIR / "step_00000002"
    assert error_line(capsys) == (f"dcls-zoo train: error: [Errno {errno.ENOSPC}] cannot write the checkpoint {step}: "
                                  "No space left on device; choose another --output-dir or free the disk")
    assert os.listdir(out / CHECKPOINT_DIR) == []  # the temporary folder was removed


def test_full_disk_while_writing_the_weights_is_one_line(tmp_path, image_data, capsys, monkeypatch):
    """safetensors reports a full disk as SafetensorError (the message of a real ENOSPC on a tiny tmpfs)."""
    import safetensors.torch
    from safetensors import SafetensorError

    real_save_file = safetensors.torch.save_file
    out = tmp_path / "out"

    def full_disk(tensors, filename, *args, **kwargs):
        if str(filename).startswith(str(out)):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    args = tiny_args(image_data, out, "--keep-checkpoints", "0")
    args.remove("--no-save-model")
    assert main(args) == 1
    assert error_line(capsys) == (f"dcls-zoo train: error: [Errno {errno.ENOSPC}] cannot write the model into {out}: "
                                  "No space left on device; choose another --output-dir or free the disk")


def test_damaged_metrics_log_is_named_on_resume(run_copy, image_data, capsys):
    log = run_copy / "logs" / "metrics.jsonl"
    log.write_bytes(pickle.dumps({"step": 1}))
    assert main(tiny_args(image_data, run_copy, "--resume")) == 1
    assert error_line(capsys).startswith(f"dcls-zoo train: error: {log}, line 1: not JSON (")


def test_seeded_rng_leaves_cuda_generators_alone(monkeypatch):
    """Per-sample augmentation reseeds the CPU generator only (torch.manual_seed would reseed every GPU's)."""
    from dcls_zoo.train.data import TransformedDataset

    def no_cuda_seeding(*args):
        raise AssertionError("a CUDA generator was reseeded")

    torch.manual_seed(0)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", no_cuda_seeding)
    monkeypatch.setattr(torch.cuda, "manual_seed", no_cuda_seeding)
    ds = TransformedDataset(list(range(4)), lambda row: torch.rand(3), seed=7)
    before = torch.get_rng_state()
    first = ds[2]
    assert torch.equal(torch.get_rng_state(), before)  # the global CPU state is given back
    assert torch.equal(ds[2], first) and not torch.equal(ds[1], first)


def test_finetuned_folder_card_curves_and_losses(tmp_path, image_data, monkeypatch):
    """A fine-tuning run's folder: pushable as written, card naming what it uploads with the timm name and the
    data by its folder name, titled curves with markers, and the three train-loss figures as documented."""
    import matplotlib.figure
    import timm
    from timm.models import save_for_hf

    from dcls_zoo.hub.push import RUN_STATE_DIRS, check_folder
    from dcls_zoo.train.curves import read_jsonl
    from dcls_zoo.train.run import run_training

    source = tmp_path / "pretrained-src"
    save_for_hf(timm.create_model("test_convnext", num_classes=7), str(source), safe_serialization=True)
    titles = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        titles.append(fig._suptitle.get_text() if fig._suptitle else None)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    cfg = tiny_image_config(tmp_path, image_data, model=f"local-dir:{source}", model_kwargs={}, pretrained=True,
                            max_steps=3, save_every=1, log_every=1)
    results = run_training(cfg)
    out = cfg.output_dir
    card = open(os.path.join(out, "README.md")).read()
    assert "`test_convnext`" in card and "fine-tuned from pretrained weights in a local folder with a new" in card
    assert str(source) not in card and image_data not in card and str(tmp_path) not in card
    assert "local data `" + os.path.basename(image_data) + "`" in card
    assert f"--model local-dir:./{source.name}" in card and "Local paths are shown by their last component" in card
    assert "checkpoints/" not in card and "training_config.json" in card
    assert titles == [f"test_convnext on local data {os.path.basename(image_data)}"]
    # pushable as written: the resume state is skipped, every file the card names is sent
    assert CHECKPOINT_DIR in RUN_STATE_DIRS
    sent = {p.as_posix() for p in check_folder(out)}
    assert {"README.md", "config.json", "model.safetensors", "training_config.json", "training_curves.png",
            "all_results.json"} <= sent
    assert not any(p.startswith(CHECKPOINT_DIR + "/") for p in sent)
    # metrics.jsonl: one line per log_every steps (here 1: each step's loss); train_loss: their mean over the run
    losses = [r["loss"] for r in read_jsonl(os.path.join(out, "logs", "metrics.jsonl")) if "loss" in r]
    assert len(losses) == 3
    assert results["train"]["train_loss"] == pytest.approx(sum(losses) / 3, rel=1e-12)
    assert results["trainer"].last_loss == losses[-1]  # the progress bar's step_loss


def test_two_processes_with_tensorboard_write_card_results_and_reload(tmp_path, image_data, capsys):
    """`accelerate launch` with 2 processes (gloo on the CPU) and the TensorBoard tracker on: exits 0 and writes
    the card, the results with the reload check, the events, and every process's generator state."""
    import tensorboard  # noqa: F401  (a test dependency: the tracker must be on)

    out = tmp_path / "out"
    args = tiny_args(image_data, out, "--max-steps", "2", "--save-every", "1", "--report-to", "tensorboard")
    args.remove("--no-save-model")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dcls_zoo.cli", *args],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["reload_eval_accuracy"] == results["eval_accuracy"]
    assert "model-index" in (out / "README.md").read_text()
    assert "2 process(es)" in (out / "README.md").read_text()
    events = [f for _, _, fs in os.walk(out / "logs") for f in fs if f.startswith("events.out.tfevents")]
    assert events
    step = out / CHECKPOINT_DIR / "step_00000002"
    assert {"rng_state_0.json", "rng_state_1.json"} <= set(os.listdir(step))
    assert json.loads((step / "trainer_state.json").read_text())["num_processes"] == 2
    # one process cannot continue it exactly (other batches per step, other generators): refused
    assert main([*args, "--resume"]) == 1
    assert error_line(capsys) == (f"dcls-zoo train: error: --resume: {step} was written by 2 process(es), this run "
                                  "has 1; an exact continuation needs the same number")
