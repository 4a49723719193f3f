"""Trainer: image task end to end on a tiny image folder, DCLS optimiser rules, fine-tuning heads, bad input.

Every run is a few optimiser steps of a tiny model on data the test writes, so the file takes seconds.
"""
import json
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from dcls_zoo.layers import dcls_position_parameter_names
from dcls_zoo.train import TrainConfig, command_line, config_from_preset
from dcls_zoo.train.optim import parameter_groups
from dcls_zoo.train.trainer import NonFiniteLossError, Trainer

# A DCLS ConvNeXt small enough for a CPU test: 1 block per stage, 3x3 DCLS grid with 2 elements.
TINY_DCLS = dict(dims=[8, 8, 16, 16], depths=[1, 1, 1, 1], dcls_dilated_kernel_size=3, dcls_kernel_count=2)


def write_image_folder(root, n_per_class=8, classes=("dark", "light"), size=16, seed=0):
    """Two visually separable classes: dark noise and light noise, as PNGs in imagefolder layout."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        os.makedirs(root / "train" / name, exist_ok=True)
        for i in range(n_per_class):
            base = 50 if c == 0 else 200
            pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.png")
    return str(root)


def tiny_image_config(tmp_path, data, **overrides):
    values = dict(
        task="image", model="dcls_convnext_atto", model_kwargs=TINY_DCLS, dataset=data, eval_split="train",
        img_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0,
        scale=(0.8, 1.0), hflip=0.5, batch_size=4, epochs=2, lr=5e-3, weight_decay=0.05, sched="cosine",
        output_dir=str(tmp_path / "out"), report_to="none", progress=False, seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs"))


def test_image_training_lowers_loss_and_logs(tmp_path, image_folder):
    cfg = tiny_image_config(tmp_path, image_folder, epochs=3)
    trainer = Trainer(cfg)
    before = trainer.evaluate()["loss"]
    results = trainer.train()
    after = results["eval"]["eval_loss"]
    assert after < before, (before, after)
    assert trainer.global_step == 3 * (16 // 4)
    records = [json.loads(line) for line in open(trainer.metrics_path)]
    assert [r["step"] for r in records if "eval_accuracy" in r] == [4, 8, 12]
    assert all({"loss", "lr", "samples_per_second"} <= set(r) for r in records if "loss" in r)
    # every checkpoint is complete (safetensors + JSON, listed in its trainer_state.json); keep_checkpoints=2 kept two
    names = sorted(os.listdir(os.path.join(cfg.output_dir, "checkpoints")))
    assert names == ["step_00000008", "step_00000012"]


def test_dcls_rules_positions_lr_x5_no_decay_and_clamped(tmp_path, image_folder):
    cfg = tiny_image_config(tmp_path, image_folder, max_steps=2, lr=1.0, sched="constant", opt="sgd",
                            warmup_epochs=0)
    trainer = Trainer(cfg)
    model = trainer.model
    positions = dcls_position_parameter_names(model)
    assert positions, "the tiny DCLS ConvNeXt must have position parameters"
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups["dcls_positions"]["names"]) == positions
    assert groups["dcls_positions"]["weight_decay"] == 0.0 and groups["dcls_positions"]["lr_scale"] == 5.0
    assert groups["dcls_positions"]["lr"] == pytest.approx(5.0) and groups["decay"]["lr"] == pytest.approx(1.0)
    assert all(p.ndim >= 2 for p in groups["decay"]["params"])
    assert not any(n.endswith(".bias") for n in groups["decay"]["names"])
    # a huge lr pushes positions far out of the grid: after every step they must be back inside
    trainer.train()
    lim = 3 // 2
    for name, p in model.named_parameters():
        if name.endswith(".P"):
            assert p.abs().max() <= lim


def test_activation_coefficients_get_no_weight_decay():
    from dcls_zoo.layers import activations

    act_cls = next(getattr(activations, n) for n in ("HermiteActivation", "FourierActivation",
                                                      "TropicalRationalActivation") if hasattr(activations, n))
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), act_cls(3) if act_cls.__name__ != "FourierActivation"
                                else act_cls(5), torch.nn.Linear(4, 2))
    act_params = {f"1.{n}" for n, _ in model[1].named_parameters()}
    assert act_params
    groups = {g["name"]: g for g in parameter_groups(model, weight_decay=0.1)}
    assert act_params <= set(groups["no_decay"]["names"])
    assert groups["decay"]["names"] == ["0.weight", "2.weight"]


def test_finetune_pretrained_folder_replaces_head_explicitly(tmp_path, image_folder, caplog):
    from timm.models import save_for_hf

    source = timm.create_model("test_convnext", num_classes=7)
    save_for_hf(source, str(tmp_path / "src"), safe_serialization=True)
    cfg = tiny_image_config(tmp_path, image_folder, model=f"local-dir:{tmp_path / 'src'}", model_kwargs={},
                            pretrained=True, max_steps=1, save_model=False)
    with caplog.at_level("WARNING"):
        trainer = Trainer(cfg)
    model = trainer.model
    assert model.num_classes == 2 and model.get_classifier().out_features == 2
    assert "replaced the pretrained head 'head.fc' (7 classes)" in trainer.adapter.head_replaced
    assert any("replaced the pretrained head" in r.message for r in caplog.records)
    src = source.state_dict()
    for name, value in model.state_dict().items():
        if not name.startswith("head.fc"):
            assert torch.equal(value.cpu(), src[name]), name


def test_missing_column_lists_the_columns(tmp_path, image_folder):
    cfg = tiny_image_config(tmp_path, image_folder, input_column="img")
    with pytest.raises(ValueError) as err:
        Trainer(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert "no column 'img'" in msg and "its columns are image, label" in msg


def test_label_out_of_range_names_first_bad_row(tmp_path):
    import datasets

    images = [Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)) for i in range(6)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 5, 1, 7]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "bad"))
    cfg = tiny_image_config(tmp_path, str(tmp_path / "bad"), num_classes=2)
    with pytest.raises(ValueError, match=r"label 5 in row 3 is outside \[0, 2\) \(2 bad row\(s\) in all\)"):
        Trainer(cfg)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, image_folder):
    class PoisonAfter(torch.nn.Module):
        """A tiny classifier whose output turns NaN from its 6th training forward on."""

        def __init__(self):
            super().__init__()
            self.net = timm.create_model("test_convnext", num_classes=2)
            self.calls = 0

        def forward(self, x):
            self.calls += self.training
            out = self.net(torch.nn.functional.interpolate(x, size=32))
            return out * float("nan") if self.calls > 5 else out

    cfg = tiny_image_config(tmp_path, image_folder, save_every=2, epochs=3)
    trainer = Trainer(cfg, model=PoisonAfter())
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    good = os.path.join(cfg.output_dir, "checkpoints", "step_00000004")
    assert err.value.checkpoint == good and err.value.step == 5
    assert "loss became nan at optimizer step 6" in str(err.value) and good in str(err.value)
    assert sorted(os.listdir(os.path.dirname(good))) == ["step_00000002", "step_00000004"]


def test_fp16_on_cpu_is_refused(tmp_path, image_folder):
    with pytest.raises(ValueError, match="fp16 needs a GPU: on CPU Accelerate accepts it but silently runs in fp32"):
        Trainer(tiny_image_config(tmp_path, image_folder, mixed_precision="fp16", cpu=True))


def test_bf16_on_cpu_trains(tmp_path, image_folder):
    trainer = Trainer(tiny_image_config(tmp_path, image_folder, mixed_precision="bf16", max_steps=2))
    results = trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert np.isfinite(results["train"]["train_loss"])


def test_gradient_accumulation_counts_optimizer_steps(tmp_path, image_folder):
    trainer = Trainer(tiny_image_config(tmp_path, image_folder, grad_accum_steps=2, epochs=1))
    trainer.train()
    assert trainer.steps_per_epoch == 2 and trainer.global_step == 2


def test_presets_and_command_line_round_trip():
    from dcls_zoo.cli import build_parser
    from dcls_zoo.train.cli_args import config_from_args

    cfg = config_from_preset("digits", epochs=3, lr=1e-3)
    line = command_line(cfg, "digits")
    assert line == "dcls-zoo train --preset digits --epochs 3 --lr 0.001"
    args = build_parser().parse_args(line.split()[1:])
    again, preset = config_from_args(args)
    assert preset == "digits" and again == cfg
    # no arguments: the digits main job; naming other data leaves the digits preset
    assert config_from_args(build_parser().parse_args(["train"]))[0] == config_from_preset("digits")
    other, preset = config_from_args(build_parser().parse_args(["train", "--dataset", "x", "--model", "resnet18"]))
    assert preset is None and other.in_chans is None and other.img_size is None
    gpt2 = config_from_preset("gpt2-124m")
    assert (gpt2.lr, gpt2.betas, gpt2.weight_decay, gpt2.clip_grad) == (6e-4, (0.9, 0.95), 0.1, 1.0)
    with pytest.raises(ValueError, match="unknown preset"):
        config_from_preset("nope")


def test_run_training_writes_a_hub_ready_folder_that_reloads(tmp_path, image_folder):
    """The main job's pipeline on the tiny DCLS model: train, save, reload via timm local-dir, same metric."""
    from dcls_zoo.train.run import run_training

    cfg = tiny_image_config(tmp_path, image_folder, epochs=1, hub_model_id="tiny-dcls-test")
    results = run_training(cfg)
    out = cfg.output_dir
    for name in ("model.safetensors", "config.json", "README.md", "training_curves.png", "all_results.json",
                 "eval_results.json", "train_results.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    all_results = json.load(open(os.path.join(out, "all_results.json")))
    assert all_results["eval_accuracy"] == results["eval"]["eval_accuracy"]
    # the folder reloads through timm's public path and evaluates to the same accuracy and loss
    assert all_results["reload_eval_accuracy"] == all_results["eval_accuracy"]
    assert all_results["reload_eval_loss"] == pytest.approx(all_results["eval_loss"], abs=1e-6)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["architecture"] == "dcls_convnext_atto" and config["model_args"]["dims"] == [8, 8, 16, 16]
    card = open(os.path.join(out, "README.md")).read()
    assert "library_name: timm" in card and "model-index" in card
    assert f"{all_results['eval_accuracy']:.4f}" in card
    assert "dcls-zoo train --preset none --model-kwargs '{\"dims\": [8, 8, 16, 16]" in card


def test_weight_ema_averages_tied_positions_once():
    """A stage's shared P is one tensor: one EMA step moves it by exactly (1 - decay) of the gap."""
    from dcls_zoo.train.ema import WeightEma

    model = timm.create_model("dcls_convnext_atto", **TINY_DCLS, num_classes=2)
    ema = WeightEma(model, decay=0.75, warmup=False)
    shared = model.stages[2].blocks[0].conv_dw.P
    assert ema.module.stages[2].blocks[0].conv_dw.P is ema.module.stages[3].blocks[0].conv_dw.P  # ties kept
    start = shared.detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=1)
    torch.testing.assert_close(ema.module.stages[2].blocks[0].conv_dw.P, start + 0.25)
    torch.testing.assert_close(ema.module.head.fc.weight, model.head.fc.weight - 0.75)


def test_cli_train_runs_the_digits_job_and_prints_both_accuracies(tmp_path, capsys):
    """`dcls-zoo train` (README command 1) on a slice of the digits, through the command line."""
    from dcls_zoo.cli import main

    out = tmp_path / "digits"
    assert main(["train", "--epochs", "1", "--max-train-samples", "128", "--output-dir", str(out),
                 "--report-to", "none", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.load(open(out / "all_results.json"))
    assert f"test accuracy after training: {results['eval_accuracy']:.4f}; after reloading local-dir:{out}: " \
           f"{results['reload_eval_accuracy']:.4f}" in printed
    assert results["eval_samples"] == 360 and results["train_samples"] == 128
    config = json.load(open(out / "config.json"))
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32] and config["label_names"] == list("0123456789")
    assert "dcls-zoo train --preset digits --max-train-samples 128 --epochs 1" in open(out / "README.md").read()


def test_cli_train_bad_input_is_one_line(tmp_path, capsys, image_folder):
    from dcls_zoo.cli import main

    assert main(["train", "--dataset", image_folder, "--label-column", "target", "--output-dir",
                 str(tmp_path / "o"), "--report-to", "none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: datasets' progress bars
    assert err.startswith("dcls-zoo train: error: split 'train' has no column 'target'; its columns are image, label")


def test_resume_refuses_changed_settings(tmp_path, image_folder):
    Trainer(tiny_image_config(tmp_path, image_folder, max_steps=4, save_every=2)).train()
    with pytest.raises(ValueError, match=r"other settings \(lr=0.005 now 0.001\)"):
        Trainer(tiny_image_config(tmp_path, image_folder, max_steps=4, save_every=2, lr=1e-3, resume=True)).train()
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint in"):
        Trainer(tiny_image_config(tmp_path / "fresh", image_folder, max_steps=2, resume=True)).train()
