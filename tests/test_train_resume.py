"""Exact resumption: a run SIGKILLed mid-epoch and resumed from its last checkpoint ends with the same weights,
bit for bit, as an uninterrupted run with the same seed.

The run exercises every source of randomness and state the trainer has to restore: shuffled data order, random
crops and flips, mixup/cutmix, drop-path, gradient accumulation, DCLS positions (tied per stage, clamped each
step), a warmup + cosine schedule and the weight EMA (compared too). The killed run hangs after optimizer step 7
(last checkpoint: step 6, in the middle of the second epoch) and is killed with SIGKILL, so nothing runs at exit.
"""
import os
import signal
import subprocess
import sys
import time

import torch
from test_train import write_image_folder

SCRIPT = r'''
import os, sys, time
import torch
import dcls_zoo  # noqa: F401
from dcls_zoo.train import TrainConfig
from dcls_zoo.train.callbacks import Callback
from dcls_zoo.train.trainer import Trainer

mode, data, out, marker = sys.argv[1:5]


class HangAfter(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.global_step == self.step:
            open(marker, "w").close()
            time.sleep(600)


cfg = TrainConfig(
    task="image", model="dcls_convnext_atto", dataset=data, eval_split="train", seed=3,
    model_kwargs=dict(dims=[8, 8, 16, 16], depths=[1, 1, 1, 1], dcls_dilated_kernel_size=3, dcls_kernel_count=2),
    img_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0, scale=(0.6, 1.0), hflip=0.5,
    mixup=0.4, cutmix=0.5, smoothing=0.1, drop_path=0.2, batch_size=2, grad_accum_steps=2, epochs=3,
    model_ema_decay=0.9,
    lr=5e-3, warmup_epochs=1.0, sched="cosine", save_every=3, output_dir=out, report_to="none", progress=False,
    save_model=False, resume=(mode == "resume"))
trainer = Trainer(cfg, callbacks=[HangAfter(7)] if mode == "killed" else [])
trainer.train()
state = {k: v.clone() for k, v in trainer.unwrapped_model().state_dict().items()}
state.update({"ema." + k: v.clone() for k, v in trainer.final_model().state_dict().items()})
torch.save({"state": state, "step": trainer.global_step}, os.path.join(out, "final.pt"))
'''


def _start(script, mode, data, out, marker):
    return subprocess.Popen([sys.executable, str(script), mode, data, str(out), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_and_resume_gives_identical_weights(tmp_path):
    data = write_image_folder(tmp_path / "imgs", n_per_class=8)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    marker = tmp_path / "hanging"
    full = _start(script, "full", data, tmp_path / "full", tmp_path / "unused")
    killed = _start(script, "killed", data, tmp_path / "cut", marker)
    deadline = time.time() + 240
    while not marker.exists():
        assert killed.poll() is None, killed.communicate()[0]
        assert time.time() < deadline, "the run to be killed never reached step 7"
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    checkpoints = sorted(os.listdir(tmp_path / "cut" / "checkpoints"))
    assert checkpoints == ["step_00000003", "step_00000006"]
    assert not (tmp_path / "cut" / "final.pt").exists()

    resumed = subprocess.run([sys.executable, str(script), "resume", data, str(tmp_path / "cut"), "x"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout and "step_00000006" in resumed.stdout
    out, _ = full.communicate(timeout=300)
    assert full.returncode == 0, out

    a = torch.load(tmp_path / "full" / "final.pt")
    b = torch.load(tmp_path / "cut" / "final.pt")
    assert a["step"] == b["step"] == 12
    assert a["state"].keys() == b["state"].keys()
    different = [k for k in a["state"] if not torch.equal(a["state"][k], b["state"][k])]
    assert not different, different
    # the killed run's log lines after step 6 were dropped on resume: each step is logged once
    import json

    steps = [json.loads(line)["step"] for line in open(tmp_path / "cut" / "logs" / "metrics.jsonl")
             if "loss" in json.loads(line)]
    assert steps == sorted(set(steps))
