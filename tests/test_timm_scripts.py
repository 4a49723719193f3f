"""timm's own scripts on a zoo model, through the documented launcher `python -m dcls_zoo.timm_script SCRIPT ARGS`.

timm's train.py / validate.py are in neither timm's wheel nor its sdist (only in the GitHub repository, which a
fresh CI machine cannot reach), so the suite runs a script of its own that drives the model exactly as train.py
does: `timm.create_model`, `timm.optim.create_optimizer_v2(model, **optimizer_kwargs(cfg=args))` imported *by name*
(as train.py imports it), `timm.scheduler.create_scheduler_v2` (which applies each group's `lr_scale`), and a plain
loop with no clamp call. `python scripts/check_timm_scripts.py DIR` runs the same checks on the real train.py and
validate.py of a pytorch-image-models checkout.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

# What timm's train.py does with the model, in its order, and nothing of ours: the launcher must make it follow
# the papers' recipe (5x position lr without weight decay through timm's factory; clamp by the model itself).
TRAIN_LIKE = textwrap.dedent('''
    import argparse, json, sys
    import torch, timm
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    from safetensors.torch import save_file
    from timm.utils import setup_default_logging

    setup_default_logging()   # as train.py does
    parser = argparse.ArgumentParser()
    parser.add_argument("--model"); parser.add_argument("--output")
    parser.add_argument("--opt", default="adamw"); parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--sched", default="cosine"); parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--warmup-epochs", type=int, default=0)
    args = parser.parse_args()
    args.opt_eps = args.opt_betas = args.layer_decay = args.layer_decay_min_scale = None
    args.layer_decay_no_opt_scale = None
    args.min_lr, args.warmup_lr, args.decay_epochs, args.decay_milestones = 0.0, 1e-5, 1, [1]
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=2)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    scheduler, _ = create_scheduler_v2(optimizer, **scheduler_kwargs(args))
    scheduler.step(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    model.eval()(x)   # as validation after the epoch does: the stored positions are clamped by then
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.output + "/model.safetensors")
    groups = [{k: v for k, v in g.items() if k != "params"} | {"size": sum(p.numel() for p in g["params"])}
              for g in optimizer.param_groups]
    json.dump(groups, open(args.output + "/groups.json", "w"))
    print("trained", sys.argv[0])
''')


def _launch(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "dcls_zoo.timm_script", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_a_timm_train_loop_through_the_launcher_follows_the_dcls_recipe(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_LIKE)
    # a huge position learning rate (1e-3 x 1e4): positions leave the grid at every step unless clamped
    result = _launch("--position-lr-scale", "10000", script, "--model", "dcls_convnext_atto", "--output", tmp_path,
                     "--lr", "1e-3", "--weight-decay", "0.05")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "trained" in result.stdout and "DCLS positions get 10000x the learning rate" in result.stderr

    state = load_file(tmp_path / "model.safetensors")
    positions = {k: v for k, v in state.items() if k.endswith(".P")}
    assert len(positions) == 4   # one per stage: the stage's first block owns it
    assert max(v.abs().max().item() for v in positions.values()) == 8   # clamped to 17 // 2, and reached

    groups = json.loads((tmp_path / "groups.json").read_text())
    dcls = [g for g in groups if g.get("lr_scale") == 10000.0]
    assert len(dcls) == 1 and dcls[0]["weight_decay"] == 0.0
    assert dcls[0]["lr"] == pytest.approx(10.0)           # timm's scheduler applied the group's lr_scale
    assert dcls[0]["size"] == sum(v.numel() for v in positions.values())
    assert {g["weight_decay"] for g in groups if g is not dcls[0]} == {0.0, 0.05}   # timm's own no-decay split


def test_without_the_scale_the_launcher_keeps_timms_groups(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_LIKE)
    result = _launch("--position-lr-scale", "1", script, "--model", "dcls_convnext_atto", "--output", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    groups = json.loads((tmp_path / "groups.json").read_text())
    assert all("lr_scale" not in g or g["lr_scale"] == 1.0 for g in groups)
    # positions are still clamped by the model itself, and get no weight decay (timm reads no_weight_decay())
    state = load_file(tmp_path / "model.safetensors")
    assert max(v.abs().max().item() for k, v in state.items() if k.endswith(".P")) <= 8


def test_the_launcher_says_what_it_needs_in_one_line(tmp_path, capsys):
    from dcls_zoo.timm_script import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "no_train.py")])
    assert exit_info.value.code == 2
    assert "is not a file; pass the path of timm's train.py" in capsys.readouterr().err.strip().splitlines()[-1]
