"""Sharded engines on CPU with 2 gloo processes: FSDP2 (`dcls-zoo train --distributed fsdp2` under torchrun) and
DeepSpeed ZeRO-2/3 (`DS_ACCELERATOR=cpu`, driven with `deepspeed.initialize`), against single-process runs of the
same global batch; the DCLS recipe (positions clamped in the stored copy after every step, lr x5, no weight decay)
and the final folder (saved, reloaded, positions shared); the FSDP2 units of the zoo's families; the one-line
refusal of accelerate configs that Accelerate would silently run as DDP on CPU.

The multi-process parts run this file as a torchrun script (`python -m torch.distributed.run ... <case>`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = os.path.join(ROOT, "accelerate_configs")

# two blocks in the first stage share positions; widths grow, so every stage has its own positions
TINY_DCLS = dict(dims=[8, 16, 24, 32], depths=[2, 1, 1, 1], dcls_dilated_kernel_size=3, dcls_kernel_count=2)
BOUND = 3 // 2
STEPS = 3


def write_image_folder(root: str, n_per_class: int = 8, size: int = 16) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("dark", "light")):
        os.makedirs(os.path.join(root, "train", name), exist_ok=True)
        for i in range(n_per_class):
            pixels = np.clip((50 if c == 0 else 200) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, "train", name, f"{i}.png"))
    return root


def trainer_config(output_dir: str, data: str, **overrides):
    from dcls_zoo.train import TrainConfig

    # SGD at lr 1 (positions 5): the positions leave the grid at every step, so the clamp bites. The DeepSpeed
    # workers take only the optimiser settings from here.
    values = dict(task="image", model="dcls_convnext_atto", model_kwargs=TINY_DCLS, dataset=data, eval_split="train",
                  img_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0,
                  scale=(0.8, 1.0), hflip=0.5, opt="sgd", lr=1.0, weight_decay=0.05, sched="constant",
                  warmup_epochs=0, drop_path=0.0, max_steps=STEPS, save_every=2, keep_checkpoints=3,
                  clip_grad=0.5, grad_accum_steps=2,  # clipping (on the global norm) and accumulation under FSDP2
                  output_dir=output_dir, report_to="none", progress=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def run_workers(case: str, *args: str, timeout: int = 300) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.abspath(__file__), case, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def load_weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float = 2e-4) -> None:
    """Equal up to fp32 rounding: gradients summed in another order, amplified by 3 SGD steps at lr 1 (measured:
    at most 7e-4 on weights of magnitude ~7, i.e. 1e-4 of the tensor's scale); `rtol=0` asks for bit equality."""
    assert sorted(got) == sorted(want)
    worst = max((float((got[k].float() - want[k].float()).abs().max()) / (1.0 + float(want[k].float().abs().max())), k)
                for k in want if want[k].numel())
    assert worst[0] <= rtol, worst


def position_names(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if k.endswith(".P")]


# ----------------------------------------------------------------------------------------------------------------
# torchrun workers
# ----------------------------------------------------------------------------------------------------------------

class _ClampRecorder:
    """After each optimizer step (after the trainer's own clamp): the largest |P| in this process's stored copy."""

    def __init__(self):
        self.records: list[float] = []

    def on_train_begin(self, trainer): ...
    def on_epoch_end(self, trainer): ...
    def on_evaluate(self, trainer, metrics): ...
    def on_train_end(self, trainer): ...

    def on_step_end(self, trainer):
        from torch.distributed.tensor import DTensor

        from dcls_zoo.layers import DclsNd

        worst = 0.0
        for m in trainer.model.modules():
            if isinstance(m, DclsNd):
                P = m.P
                assert isinstance(P, DTensor), type(P)  # the sharded parameter the optimizer updates
                local = P.to_local()
                if local.numel():
                    worst = max(worst, float(local.abs().max()))
        self.records.append(worst)


def _worker_fsdp2_trainer(output_dir: str, data: str, resume: str) -> None:
    from dcls_zoo.train.run import run_training

    cfg = trainer_config(output_dir, data, batch_size=4, distributed="fsdp2", resume=resume == "resume")
    recorder = _ClampRecorder()
    results = run_training(cfg, callbacks=[recorder])
    trainer = results["trainer"]
    groups = {g["name"]: {"lr": g["lr"], "weight_decay": g["weight_decay"], "n": len(g["params"])}
              for g in trainer.optimizer.param_groups}
    units = [n for n, m in trainer.model.named_modules() if type(m).__name__.startswith("FSDP")]
    with open(os.path.join(output_dir, f"worker_{os.environ['RANK']}_{resume}.json"), "w") as f:
        json.dump({"clamp": recorder.records, "groups": groups, "units": units,
                   "world": trainer.accelerator.num_processes}, f)


def _tiny_model():
    import timm

    import dcls_zoo  # noqa: F401

    torch.manual_seed(0)
    return timm.create_model("dcls_convnext_atto", num_classes=2, in_chans=3, **TINY_DCLS)


def _fixed_batches(n_steps: int = STEPS, global_batch: int = 4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(global_batch, 3, 32, 32, generator=g), torch.randint(0, 2, (global_batch,), generator=g))
            for _ in range(n_steps)]


def _recipe_optimizer(model: nn.Module):
    from dcls_zoo.train.optim import create_optimizer, create_scheduler

    cfg = trainer_config("unused", "unused", batch_size=2)
    optimizer = create_optimizer(model, cfg)
    create_scheduler(optimizer, cfg, steps_per_epoch=STEPS, total_steps=STEPS)  # applies lr_scale (constant lr)
    return optimizer


def single_process_reference() -> tuple[dict[str, torch.Tensor], list[float]]:
    """The DeepSpeed workers' loop in one process over the whole global batch."""
    from dcls_zoo.layers import clamp_dcls_parameters

    model = _tiny_model()
    optimizer = _recipe_optimizer(model)
    worst = []
    for x, y in _fixed_batches():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clamp_dcls_parameters(model)
        worst.append(max(float(m.P.abs().max()) for m in model.modules() if hasattr(m, "dilated_kernel_size")))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, worst


def _worker_deepspeed(output_dir: str) -> None:
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param

    from dcls_zoo.hub.save import save_folder
    from dcls_zoo.layers import DclsNd
    from dcls_zoo.train.distributed import clamp_dcls_positions, deepspeed_config

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for stage in (2, 3):
        template = _tiny_model()  # a plain copy: the final folder is saved from it
        model = _tiny_model()
        optimizer = _recipe_optimizer(model)
        config = deepspeed_config(stage, micro_batch_size=2, clip_grad=None, world_size=world)
        if stage == 3:  # partition even the small position tensors (ZeRO-3 keeps tensors < 1e5 whole by default)
            config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        worst_master, worst_model = [], []
        for x, y in _fixed_batches():
            xs, ys = x[rank * 2:(rank + 1) * 2], y[rank * 2:(rank + 1) * 2]
            loss = nn.functional.cross_entropy(engine(xs), ys)
            engine.backward(loss)
            engine.step()
            clamp_dcls_positions(engine.module)
            layers = {id(m.P): m for m in engine.module.modules() if isinstance(m, DclsNd)}.values()
            worst_master.append(max(float(safe_get_full_fp32_param(m.P).abs().max()) for m in layers))
            with deepspeed.zero.GatheredParameters([m.P for m in layers], enabled=stage == 3):
                worst_model.append(max(float(m.P.abs().max()) for m in layers))
        if stage == 3:
            state = engine._zero3_consolidated_16bit_state_dict()
        else:
            state = engine.module.state_dict()
        groups = {g["name"]: {"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups}
        if rank == 0:
            template.load_state_dict({k: v.cpu() for k, v in state.items()}, strict=True)
            save_folder(template, os.path.join(output_dir, f"zero{stage}"), card=False)
            with open(os.path.join(output_dir, f"zero{stage}.json"), "w") as f:
                json.dump({"master": worst_master, "model": worst_model, "groups": groups,
                           "clipping": engine.gradient_clipping()}, f)
        dist.barrier()
        engine.destroy()


def _tiny_lm_config():
    from dcls_zoo.lm import OrthoGPT2Config

    return OrthoGPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_positions=32, bos_token_id=0,
                           eos_token_id=0)


class _TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, length: int = 16):
        self.ids = torch.randint(1, 64, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _worker_hf_trainer_fsdp2(output_dir: str) -> None:
    """transformers' Trainer on an OrthoGPT2 model sharded with the zoo's FSDP2 units (its GPT2Blocks).

    On CPU neither transformers' `fsdp=` nor Accelerate enables FSDP, and Accelerate would wrap the sharded model
    in DDP (which refuses DTensors): its `prepare_model` passes FSDP2 modules through here, as it does on GPUs."""
    import torch.distributed as dist
    from transformers import Trainer, TrainingArguments

    from dcls_zoo.lm import OrthoGPT2LMHeadModel
    from dcls_zoo.train.distributed import apply_fsdp2, gather_full_state_dict, is_fsdp2_model

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = OrthoGPT2LMHeadModel(_tiny_lm_config())
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    apply_fsdp2(model)
    args = TrainingArguments(output_dir=os.path.join(output_dir, "hf"), use_cpu=True, per_device_train_batch_size=2,
                             max_steps=2, learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none",
                             disable_tqdm=True, max_grad_norm=1.0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_TokenData())
    prepare_model = trainer.accelerator.prepare_model
    trainer.accelerator.prepare_model = lambda m, *a, **k: m if is_fsdp2_model(m) else prepare_model(m, *a, **k)
    result = trainer.train()
    state = gather_full_state_dict(model)
    if dist.get_rank() == 0:
        plain = OrthoGPT2LMHeadModel(_tiny_lm_config())
        plain.load_state_dict(state, strict=False)  # lm_head.weight is wte.weight (tied)
        plain.save_pretrained(os.path.join(output_dir, "folder"))
        from safetensors.torch import save_file

        for name, values in (("before", before), ("after", state)):
            save_file({k: v.clone() for k, v in values.items() if k != "lm_head.weight"},
                      os.path.join(output_dir, f"{name}.safetensors"))
        with open(os.path.join(output_dir, "hf.json"), "w") as f:
            json.dump({"loss": result.training_loss, "steps": result.global_step,
                       "units": [n for n, m in model.named_modules() if is_fsdp2_model(m)]}, f)
    dist.barrier()


SNN_EPOCHS = 3


def _tiny_snn():
    import timm

    import dcls_zoo  # noqa: F401

    torch.manual_seed(0)
    return timm.create_model("snn_delays_shd", num_inputs=8, img_size=(12, 8), hidden_sizes=(8, 8), max_delay=5,
                             num_classes=3, drop_rate=0.0)


def _snn_batch():
    g = torch.Generator().manual_seed(2)
    return (torch.rand(4, 12, 8, generator=g) < 0.3).float(), torch.randint(0, 3, (4,), generator=g)


def snn_run(model: nn.Module, engine=None) -> tuple[list[float], list[float]]:
    """`SNN_EPOCHS` one-step epochs, the sigma schedule of a 4x longer run stepped after each (as the trainer's
    SigmaScheduleCallback does) and the positions clamped after each step; returns sigma and max |P| after each
    epoch. With a DeepSpeed `engine` (whose module is `model`), the engine runs the steps."""
    from dcls_zoo.models.snn_delays import SigmaSchedule
    from dcls_zoo.train.distributed import clamp_dcls_positions

    optimizer = None if engine is not None else _recipe_optimizer(model)
    schedule = SigmaSchedule(model, epochs=4 * SNN_EPOCHS)
    x, y = _snn_batch()
    sigmas, worst = [], []
    for epoch in range(SNN_EPOCHS):
        loss = nn.functional.cross_entropy((engine or model)(x), y)
        if engine is not None:
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        clamp_dcls_positions(model)
        schedule.step(epoch)
        sigmas.append(schedule.sigma)
        worst.append(max(float(m.P.detach().abs().max()) for m in model.modules() if hasattr(m, "SIG")))
    return sigmas, worst


def _worker_deepspeed_snn(output_dir: str) -> None:
    """DeepSpeed ZeRO-2 on the SNN-delays model with its sigma schedule; every process sees the whole batch (its
    BatchNorm statistics are per process), so the averaged gradient is one process's."""
    import deepspeed
    import torch.distributed as dist
    from safetensors.torch import save_file

    from dcls_zoo.train.distributed import deepspeed_config

    deepspeed.init_distributed(dist_backend="gloo")
    model = _tiny_snn()
    optimizer = _recipe_optimizer(model)
    config = deepspeed_config(2, micro_batch_size=4, world_size=dist.get_world_size())
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    sigmas, worst = snn_run(engine.module, engine)
    if dist.get_rank() == 0:
        save_file({k: v.detach().contiguous() for k, v in engine.module.state_dict().items()},
                  os.path.join(output_dir, "snn.safetensors"))
        with open(os.path.join(output_dir, "snn.json"), "w") as f:
            json.dump({"sigmas": sigmas, "max_P": worst}, f)
    dist.barrier()


if __name__ == "__main__":
    case, *arguments = sys.argv[1:]
    {"fsdp2_trainer": _worker_fsdp2_trainer, "deepspeed": _worker_deepspeed,
     "hf_trainer_fsdp2": _worker_hf_trainer_fsdp2, "deepspeed_snn": _worker_deepspeed_snn}[case](*arguments)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(0)


# ----------------------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------------------

def test_fsdp2_units_keep_shared_positions_in_one_unit():
    import timm

    from dcls_zoo.train.distributed import fsdp2_units

    def unit_names(model):
        units = {id(m) for m in fsdp2_units(model)}
        return [n for n, m in model.named_modules() if id(m) in units]

    assert unit_names(_tiny_model()) == ["stages.0", "stages.1", "stages.2", "stages.3"]
    # equal widths: the default tying rule shares one P across stages 0 and 1 (and 2, 3): the unit widens
    same_width = timm.create_model("dcls_convnext_atto", num_classes=2, dims=[8, 8, 16, 16], depths=[2, 1, 1, 1],
                                   dcls_dilated_kernel_size=3, dcls_kernel_count=2)
    assert unit_names(same_width) == ["stages"]


STAGES = [f"stages.{i}" for i in range(4)]
FAMILY_UNITS = {  # one model per zoo family (and the kernel-sharing variants): its FSDP2 units
    "dcls_convnext_atto": STAGES, "dcls_gauss_convformer_s18": STAGES, "dcls_caformer_s18": STAGES,
    "dcls_fastvit_sa24": STAGES, "dcls_resnet50": ["layer1", "layer2", "layer3", "layer4"],
    "dcls_convnext_audio_tiny": STAGES, "dcls_convformer_audio_s18": STAGES, "dcls_fastvit_audio_sa24": STAGES,
    "convnext_audioset_tiny": STAGES, "hermite_convnext_tiny": STAGES, "snn_delays_shd": ["blocks.0", "blocks.1"],
    "pann_cnn14": [f"blocks.{i}" for i in range(6)],
    "shared_se_resnet_cifar_d2": ["layer1", "layer2", "layer3"],
    "shared_convmixer_256_16_cifar": ["blocks"],  # its kernels are shared across all blocks
}


@pytest.mark.parametrize("name", sorted(FAMILY_UNITS))
def test_fsdp2_units_of_every_family_hold_their_shared_tensors(name):
    import timm

    import dcls_zoo  # noqa: F401
    from dcls_zoo.train.distributed import _users_of_shared_tensors, check_fsdp2_units, fsdp2_units

    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        model = timm.create_model(name)
    units = fsdp2_units(model)
    check_fsdp2_units(model, units)
    names = {id(m): n for n, m in model.named_modules()}
    assert sorted(names[id(u)] for u in units) == FAMILY_UNITS[name]
    if name.startswith(("dcls_", "shared_")):
        assert _users_of_shared_tensors(model), "the family shares tensors: the test must see them"


def test_per_block_units_that_split_shared_positions_are_refused_in_one_line():
    from dcls_zoo.train.distributed import apply_fsdp2, check_fsdp2_units, fsdp2_units

    model = _tiny_model()
    check_fsdp2_units(model, fsdp2_units(model))
    per_block = [block for stage in model.stages for block in stage.blocks]
    message = ("FSDP2 unit 'stages.0.blocks.0' holds 'stages.0.blocks.0.conv_dw' but not 'stages.0.blocks.1.conv_dw', "
               "which uses the same tensor (shared DCLS positions or a tied kernel); make the unit "
               "'stages.0.blocks' or use fsdp2_units(model)")
    with pytest.raises(ValueError) as err:
        apply_fsdp2(model, units=per_block)  # refused before any process group is needed
    assert str(err.value) == message


def test_fsdp2_units_of_the_lm_are_its_blocks():
    from dcls_zoo.lm import OrthoGPT2Config, OrthoGPT2LMHeadModel
    from dcls_zoo.train.distributed import fsdp2_units

    model = OrthoGPT2LMHeadModel(OrthoGPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_positions=32))
    assert [type(m).__name__ for m in fsdp2_units(model)] == ["GPT2Block", "GPT2Block"]


def test_fsdp2_trainer_matches_one_process_clamps_saves_and_resumes(tmp_path):
    """`dcls-zoo train --distributed fsdp2` on 2 processes (batch 4 each) against 1 process (batch 8)."""
    from dcls_zoo.train.run import reload_folder, run_training

    data = write_image_folder(str(tmp_path / "imgs"))
    single = trainer_config(str(tmp_path / "single"), data, batch_size=8)
    run_training(single)
    want = load_weights(str(tmp_path / "single" / "model.safetensors"))

    out = str(tmp_path / "fsdp2")
    run_workers("fsdp2_trainer", out, data, "fresh")
    got = load_weights(os.path.join(out, "model.safetensors"))
    assert_same_weights(got, want)
    for rank in (0, 1):
        info = json.load(open(os.path.join(out, f"worker_{rank}_fresh.json")))
        assert info["world"] == 2
        assert len(info["clamp"]) == STEPS and max(info["clamp"]) <= BOUND, info["clamp"]
        assert info["groups"]["dcls_positions"] == {"lr": 5.0, "weight_decay": 0.0, "n": 4 * 1}
        assert info["groups"]["decay"]["lr"] == 1.0 and info["groups"]["decay"]["weight_decay"] == 0.05
        assert {"stages.0", "stages.1", "stages.2", "stages.3", ""} <= set(info["units"])
    # the clamp bit: positions sit on the grid's edge, which SGD alone would not land on exactly
    assert any(bool((got[k].abs() == BOUND).any()) for k in position_names(got))
    assert max(float(got[k].abs().max()) for k in position_names(got)) <= BOUND

    # the final folder reloads with timm, positions still shared within a stage
    reloaded = reload_folder(out, "image")
    blocks = reloaded.stages[0].blocks
    assert blocks[1].conv_dw.P is blocks[0].conv_dw.P
    assert torch.equal(blocks[0].conv_dw.P.detach(), got["stages.0.blocks.0.conv_dw.P"])
    assert position_names(got) == [f"stages.{i}.blocks.0.conv_dw.P" for i in range(4)]

    # resume from the step-2 checkpoint (full states, no pickle): the same weights as the uninterrupted run
    checkpoints = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert checkpoints == ["step_00000002"], checkpoints
    os.remove(os.path.join(out, "model.safetensors"))
    run_workers("fsdp2_trainer", out, data, "resume")
    resumed = load_weights(os.path.join(out, "model.safetensors"))
    assert_same_weights(resumed, got, rtol=0.0)


def test_deepspeed_zero2_zero3_match_one_process_and_clamp_the_master_copy(tmp_path):
    """ZeRO-2 / ZeRO-3 on 2 processes (batch 2 each) against 1 process (batch 4): same weights, positions clamped
    in the fp32 master copy and the model's copy after every step, the trainer's clipping (none) used."""
    import timm

    import dcls_zoo  # noqa: F401

    want, want_worst = single_process_reference()
    assert max(want_worst) == BOUND  # the clamp bites in the reference too
    out = str(tmp_path / "ds")
    os.makedirs(out)
    run_workers("deepspeed", out)
    for stage in (2, 3):
        info = json.load(open(os.path.join(out, f"zero{stage}.json")))
        assert info["clipping"] == 0.0
        assert max(info["master"]) <= BOUND and max(info["model"]) <= BOUND, info
        assert info["groups"]["dcls_positions"] == {"lr": 5.0, "weight_decay": 0.0}
        folder = os.path.join(out, f"zero{stage}")
        got = load_weights(os.path.join(folder, "model.safetensors"))
        assert_same_weights(got, want)
        reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
        assert reloaded.stages[0].blocks[1].conv_dw.P is reloaded.stages[0].blocks[0].conv_dw.P


def test_deepspeed_zero2_keeps_the_snn_sigma_schedule_and_clamp(tmp_path):
    """SNN delays under ZeRO-2: sigma decays per epoch as in one process, positions clamped, same weights."""
    reference = _tiny_snn()
    want_sigmas, want_worst = snn_run(reference)
    want = {k: v.detach() for k, v in reference.state_dict().items()}
    out = str(tmp_path)
    run_workers("deepspeed_snn", out)
    info = json.load(open(os.path.join(out, "snn.json")))
    assert want_sigmas[0] < 1.0 and want_sigmas[-1] == pytest.approx(0.23)  # the schedule ran to its floor
    assert info["sigmas"] == pytest.approx(want_sigmas, rel=1e-6)
    bound = 5 // 2
    assert max(want_worst) == bound and max(info["max_P"]) <= bound
    assert_same_weights(load_weights(os.path.join(out, "snn.safetensors")), want)


def test_hf_trainer_trains_and_saves_an_fsdp2_sharded_ortho_gpt2(tmp_path):
    """transformers' Trainer on top of the zoo's FSDP2 units (GPT2Blocks), 2 processes: trains, the gathered weights
    save as a transformers folder that reloads with its tie (lm_head = wte)."""
    from transformers import AutoModelForCausalLM

    import dcls_zoo  # noqa: F401  (registers ortho_gpt2 with the Auto classes)

    out = str(tmp_path)
    run_workers("hf_trainer_fsdp2", out)
    info = json.load(open(os.path.join(out, "hf.json")))
    assert info["steps"] == 2 and np.isfinite(info["loss"])
    assert info["units"] == ["", "transformer.h.0", "transformer.h.1"]
    before = load_weights(os.path.join(out, "before.safetensors"))
    after = load_weights(os.path.join(out, "after.safetensors"))
    assert sorted(before) == sorted(after)
    assert all(not torch.equal(before[k], after[k]) for k in after if k.endswith("attn.c_attn.weight"))
    reloaded = AutoModelForCausalLM.from_pretrained(os.path.join(out, "folder"))
    assert type(reloaded).__name__ == "OrthoGPT2LMHeadModel"
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
    state = reloaded.state_dict()
    for k, v in after.items():
        assert torch.equal(state[k], v), k


def test_dcls_zoo_train_under_accelerate_launch_fsdp2_config_on_cpu_stops_in_one_line(tmp_path):
    """The user's path: `accelerate launch --config_file accelerate_configs/fsdp2.yaml -m dcls_zoo.cli train` on
    CPU used to train as DDP and exit 0; now every process stops before training with the one line."""
    data = write_image_folder(str(tmp_path / "imgs"), n_per_class=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
           os.path.join(CONFIGS, "fsdp2.yaml"), "--num_processes", "2", "-m", "dcls_zoo.cli", "train",
           "--dataset", data, "--eval-split", "train", "--max-steps", "1", "--batch-size", "1",
           "--output-dir", str(tmp_path / "out"), "--report-to", "none", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    line = ("dcls-zoo train: error: the accelerate config asks for fsdp2, but Accelerate enables it only on GPUs/"
            "accelerators: on device cpu:0 this run would silently be MULTI_CPU with 2 process(es); for FSDP2 on CPU "
            "run `torchrun --nproc_per_node N -m dcls_zoo.cli train --distributed fsdp2 ...`, or drop the fsdp2 "
            "settings to train with plain DDP")
    output = (done.stdout + done.stderr).splitlines()
    # one line per process (counted in the whole text: the launcher's own report may follow on the same line)
    assert (done.stdout + done.stderr).count(line) == 2, done.stdout[-2000:] + done.stderr[-2000:]
    # the processes print no traceback (the launcher then reports their exit status with its own)
    assert not any(text.startswith("[rank") and "Traceback" in text for text in output)
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_fsdp2_in_a_single_plain_process_is_refused_in_one_line():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from dcls_zoo.train import TrainConfig
    from dcls_zoo.train.distributed import select_engine

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    with pytest.raises(ValueError) as err:
        select_engine(Accelerator(cpu=True), TrainConfig(distributed="fsdp2"))
    assert str(err.value) == ("--distributed fsdp2 needs several processes: launch with `torchrun --nproc_per_node N "
                              "-m dcls_zoo.cli train ...` (or accelerate launch); a single process has nothing to "
                              "shard with")
    with pytest.raises(ValueError, match="distributed must be one of auto, fsdp2, got 'fsdp'"):
        TrainConfig(distributed="fsdp")


def launch_environment(config_file: str) -> dict[str, str]:
    """The variables `accelerate launch --config_file <config_file>` sets for its processes (Accelerate's own
    parsing of the file)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", config_file, "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_accelerate_configs_on_cpu_refuse_fsdp_and_deepspeed_in_one_line(monkeypatch):
    """What `accelerate launch --config_file accelerate_configs/<engine>.yaml` sets, on this CPU machine: FSDP and
    DeepSpeed would silently be DDP, so the trainer refuses; the DDP config passes."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from dcls_zoo.train.distributed import check_engine_supported

    expected = {"fsdp2.yaml": "fsdp2", "deepspeed_zero2.yaml": "deepspeed", "deepspeed_zero3.yaml": "deepspeed",
                "multi_gpu.yaml": None}
    assert sorted(os.listdir(CONFIGS)) == sorted(expected)
    for name, engine in expected.items():
        env = launch_environment(os.path.join(CONFIGS, name))
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            patch.setenv("ACCELERATE_USE_CPU", "true")
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
            acc = Accelerator(cpu=True)
            if engine is None:
                assert check_engine_supported(acc) is None
                continue
            try:
                check_engine_supported(acc)
            except ValueError as err:
                message = str(err)
            else:
                raise AssertionError(f"{name}: not refused")
        assert "\n" not in message
        assert message.startswith(f"the accelerate config asks for {engine}, but Accelerate enables it only on "
                                  "GPUs/accelerators: on device cpu this run would silently be NO with 1 process(es)")
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
