"""One Accelerate training loop for the four task kinds (image, audio, lm, snn).

Runs the same way as `dcls-zoo train ...` or under `accelerate launch` (several processes, mixed precision,
gradient accumulation). Exact resumption: data order is a function of (seed, epoch), per-sample augmentation
runs under an RNG seeded by (seed, epoch, index), the learning rate is a function of the step, and checkpoints
(`checkpoint.py`: model, EMA, optimiser and every process's RNG states as safetensors and JSON, no pickle; plus the
step) are written atomically, so a run killed at any moment and resumed from its last checkpoint ends with the same
weights as an uninterrupted run.

The output folder is never silently reused: a folder that holds files needs `--resume` (continue its run) or
`--overwrite` (start afresh: what the previous run wrote, `RUN_OUTPUT_FILES`, `checkpoints/` and `logs/`, is
deleted; other files are kept).
Checkpoint pruning (`--keep-checkpoints`) only ever deletes checkpoints of the current run.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import shutil
import time
import uuid
from typing import Any

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .callbacks import (
    Callback,
    ClampDclsPositions,
    MetricsLogger,
    SigmaScheduleCallback,
    has_dcls_layers,
    has_scheduled_sigma,
)
from .config import TrainConfig
from .curves import read_jsonl
from .data import EpochShuffleSampler, TransformedDataset, load_splits
from .ema import WeightEma
from .distributed import Fsdp2ModelState, Fsdp2OptimizerState, apply_fsdp2, gather_full_state_dict, select_engine
from .optim import create_optimizer, create_scheduler
from .tasks import TASK_ADAPTERS, TaskAdapter

_logger = logging.getLogger(__name__)

# settings that may change between a run and its resumption without changing the result
RESUME_FREE_FIELDS = {"resume", "overwrite", "output_dir", "progress", "report_to", "log_every", "num_workers",
                      "save_every", "keep_checkpoints", "eval_batch_size", "save_model", "hub_model_id"}
CHECKPOINT_DIR = "checkpoints"  # everything a resume reads lives here (push skips it)
LOGS_DIR = "logs"
CHECKPOINT_PREFIX = "step_"
TRAINER_STATE = ckpt.TRAINER_STATE
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"


# What a run writes at the folder's root (the Hub-ready files, the results; for lm the tokenizer): `--overwrite`
# deletes these, checkpoints/ and logs/ of the previous run, and nothing else.
RUN_OUTPUT_FILES = (
    "model.safetensors", "model.safetensors.sha256", "config.json", "generation_config.json", "README.md",
    CURVES_FILE, "train_results.json", "eval_results.json", "all_results.json", "training_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "added_tokens.json", "chat_template.jinja",
)


def _first_file(folder: str) -> str | None:
    """Some file under `folder` (walks only until one is found), None when it holds none."""
    for root, _, files in os.walk(folder):
        if files:
            return os.path.join(root, files[0])
    return None


def _io_error(what: str, path: str, err: OSError) -> OSError:
    """The same OSError kind with one line saying what could not be written where, and why."""
    reason = err.strerror or str(err)
    message = f"cannot {what} {path}: {reason}; choose another --output-dir or free the disk"
    return type(err)(err.errno, message) if err.errno is not None else OSError(message)

class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite; `checkpoint` is the last good one (or None)."""

    def __init__(self, step: int, value: float, checkpoint: str | None):
        self.step, self.value, self.checkpoint = step, value, checkpoint
        kept = (f"the last good checkpoint is kept at {checkpoint} (resume with --resume)" if checkpoint
                else "no checkpoint had been saved yet")
        super().__init__(f"loss became {value} at optimizer step {step + 1}; training stopped, nothing after it was "
                         f"saved; {kept}")


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
    return True


class Trainer:
    """Train `cfg.model` on `cfg.dataset` for `cfg.task`.

    `model` may be given directly (an `nn.Module` whose forward takes the adapter's inputs); otherwise the task
    adapter builds it from the config. Extra `callbacks` run after the built-in ones.
    """

    def __init__(self, cfg: TrainConfig, *, model: nn.Module | None = None, callbacks: list[Callback] = ()):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        self.cfg = cfg
        cpu = cfg.cpu or not torch.cuda.is_available()
        report_to = cfg.report_to
        if report_to == "auto":
            report_to = "tensorboard" if _tensorboard_available() else "none"
        # Accelerate keeps process-wide singletons; a second Trainer in the same process (notebooks, tests) may
        # ask for another precision or accumulation, so the per-run part of that state starts afresh. The
        # distributed setup (PartialState) is kept.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        self.accelerator = Accelerator(
            cpu=cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum_steps,
            log_with=None if report_to == "none" else report_to,
            project_config=ProjectConfiguration(project_dir=cfg.output_dir,
                                                logging_dir=os.path.join(cfg.output_dir, "logs")),
        )
        if self.accelerator.mixed_precision == "fp16" and self.accelerator.device.type == "cpu":
            raise ValueError("mixed precision fp16 needs a GPU: on CPU Accelerate accepts it but silently runs in "
                             "fp32; use bf16 (or no) on CPU")
        # FSDP2 / DeepSpeed: refused where Accelerate would silently run DDP instead (CPU); `--distributed fsdp2`
        # shards with the zoo's own FSDP2 units (distributed.py), which torchrun on CPU can run
        self.engine = select_engine(self.accelerator, cfg)
        self.trackers_enabled = report_to != "none"
        self.output_dir = cfg.output_dir
        self.logging_dir = os.path.join(self.output_dir, LOGS_DIR)
        self.checkpoint_dir = os.path.join(self.output_dir, CHECKPOINT_DIR)
        self._check_output_dir()
        set_seed(cfg.seed)

        # data
        self.adapter: TaskAdapter = TASK_ADAPTERS[cfg.task](cfg)
        train_rows, eval_rows, self.eval_split = load_splits(
            cfg.dataset, dataset_config=cfg.dataset_config, train_split=cfg.train_split, eval_split=cfg.eval_split,
            eval_fraction=cfg.eval_fraction, label_column=cfg.label_column, seed=cfg.seed,
            max_train_samples=cfg.max_train_samples, max_eval_samples=cfg.max_eval_samples)
        self.adapter.check_data(train_rows, eval_rows, self.eval_split)
        with self.accelerator.main_process_first():
            train_rows = self.adapter.prepare_rows(train_rows, training=True)
            eval_rows = self.adapter.prepare_rows(eval_rows, training=False)
        self.num_train_samples, self.num_eval_samples = len(train_rows), len(eval_rows)
        world = self.accelerator.num_processes
        if self.num_train_samples < cfg.batch_size * world:
            raise ValueError(f"split {cfg.train_split!r} has {self.num_train_samples} rows, fewer than one batch "
                             f"({cfg.batch_size} x {world} process(es)); lower --batch-size")

        # model (the adapter also resolves the input pipeline from the model's pretrained_cfg)
        if model is None:
            model = self.adapter.build_model()
        self.adapter.setup_inputs(model)
        self.model = model
        # sharded engines leave no whole model to save: the final folder is written from this plain copy
        self._full_copy = copy.deepcopy(model) if self.engine is not None else None
        self._full_copy_step: int | None = None
        if self.engine == "fsdp2":
            apply_fsdp2(model, mesh=getattr(self.accelerator, "torch_device_mesh", None))
        self._prepare_output_dir()  # the first write: after everything that can refuse the run

        adapter = self.adapter
        self.train_set = TransformedDataset(train_rows, functools.partial(adapter.transform, training=True),
                                            seed=cfg.seed)
        self.eval_set = TransformedDataset(eval_rows, functools.partial(adapter.transform, training=False))
        self.sampler = EpochShuffleSampler(len(self.train_set), cfg.seed)
        # an explicit generator keeps the DataLoader from drawing its worker seed from the global RNG
        train_loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=cfg.num_workers, collate_fn=adapter.collate, generator=torch.Generator().manual_seed(cfg.seed),
            persistent_workers=False)
        eval_loader = torch.utils.data.DataLoader(
            self.eval_set, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
            num_workers=cfg.num_workers, collate_fn=adapter.collate)

        self.optimizer = create_optimizer(self.model, cfg)
        # the EMA copies the model before `prepare` patches its forward; every checkpoint holds it (ema.safetensors)
        self.ema = WeightEma(self.model, cfg.model_ema_decay) if cfg.model_ema_decay is not None else None
        from accelerate.utils import DistributedType

        if self.engine == "fsdp2" and self.accelerator.distributed_type != DistributedType.FSDP:
            # the zoo's own FSDP2: Accelerate would wrap the sharded model in DDP, so it prepares only the loaders;
            # AcceleratedOptimizer still skips the steps of accumulating micro-batches
            from accelerate.optimizer import AcceleratedOptimizer

            self.prepared_model = self.model
            self.prepared_optimizer = AcceleratedOptimizer(self.optimizer, device_placement=False)
            self.train_loader, self.eval_loader = self.accelerator.prepare(train_loader, eval_loader)
        else:
            self.prepared_model, self.prepared_optimizer, self.train_loader, self.eval_loader = \
                self.accelerator.prepare(self.model, self.optimizer, train_loader, eval_loader)
        self.eval_model = self.prepared_model
        if self.ema is not None:
            self.ema.to(self.accelerator.device)
            self.eval_model = self.accelerator.prepare_model(self.ema.module, evaluation_mode=True)
        self.micro_batches_per_epoch = len(self.train_loader)
        self.steps_per_epoch = math.ceil(self.micro_batches_per_epoch / cfg.grad_accum_steps)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.num_epochs = max(1, math.ceil(self.total_steps / self.steps_per_epoch))
        self.scheduler = create_scheduler(self.optimizer, cfg, self.steps_per_epoch, self.total_steps)

        self.callbacks: list[Callback] = []
        if cfg.clamp_positions and has_dcls_layers(self.model):
            self.callbacks.append(ClampDclsPositions())
        if cfg.sigma_schedule and has_scheduled_sigma(self.model):
            self.callbacks.append(SigmaScheduleCallback(self.model, self.num_epochs))
        self.metrics_path = os.path.join(self.logging_dir, METRICS_FILE)
        self.callbacks.append(MetricsLogger(self.metrics_path))
        self.callbacks.extend(callbacks)

        self.global_step = 0
        self.epoch = 0
        self.run_id = uuid.uuid4().hex  # tags this run's checkpoints: pruning never touches another run's
        self.last_loss = float("nan")  # mean over the micro-batches of the last optimiser step (progress bar)
        self.loss_total, self.loss_steps = 0.0, 0  # sum / count of those over the run: `train_loss` in results
        self._trackers_open = False
        self.samples_per_second = 0.0
        self.last_checkpoint: str | None = None
        self.eval_history: list[dict[str, Any]] = []
        self.train_runtime = 0.0

    # --- properties used by callbacks -------------------------------------------------------------------
    @property
    def current_lr(self) -> float:
        # the lr of the main group (lr_scale 1); scaled groups follow it
        for group in self.optimizer.param_groups:
            if group.get("lr_scale", 1.0) == 1.0:
                return float(group["lr"])
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def epoch_progress(self) -> float:
        return self.global_step / self.steps_per_epoch

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # --- output folder ----------------------------------------------------------------------------------
    def _check_output_dir(self) -> None:
        cfg = self.cfg
        if cfg.resume and cfg.overwrite:
            raise ValueError("--resume continues the run in --output-dir and --overwrite replaces it: give one")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise ValueError(f"--output-dir {self.output_dir} is a file, not a folder")
        if not cfg.resume and not cfg.overwrite and os.path.isdir(self.output_dir):
            found = _first_file(self.output_dir)
            if found is not None:
                raise ValueError(f"--output-dir {self.output_dir} is not empty (it holds {found}); pass --resume to "
                                 "continue its run, --overwrite to replace it, or choose another folder")
        if cfg.overwrite:
            self._check_run_state_is_ours()
        self.accelerator.wait_for_everyone()  # every process has looked before any writes

    def _check_run_state_is_ours(self) -> None:
        """--overwrite deletes checkpoints/ and logs/: only when they hold nothing but what a run writes there."""
        ours = {self.checkpoint_dir: lambda n: n.startswith((CHECKPOINT_PREFIX, ".tmp-" + CHECKPOINT_PREFIX)),
                self.logging_dir: lambda n: n in (METRICS_FILE, "dcls-zoo")}
        for sub, is_ours in ours.items():
            if os.path.isdir(sub) and not os.path.islink(sub):
                foreign = sorted(n for n in os.listdir(sub) if not is_ours(n))
            else:
                foreign = [""] if os.path.lexists(sub) else []
            if foreign:
                raise ValueError(f"--overwrite deletes the previous run's {os.path.basename(sub)}/, but "
                                 f"{os.path.join(sub, foreign[0]).rstrip(os.sep)} is not something a run writes; move "
                                 "it away or choose another --output-dir")

    def _prepare_output_dir(self) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            if self.cfg.overwrite:  # asked for: what the previous run wrote goes (nothing else in the folder)
                try:
                    for sub in (self.checkpoint_dir, self.logging_dir):
                        if os.path.lexists(sub):
                            shutil.rmtree(sub)
                    for name in RUN_OUTPUT_FILES:
                        path = os.path.join(self.output_dir, name)
                        if os.path.isfile(path) or os.path.islink(path):
                            os.remove(path)
                except OSError as err:
                    raise _io_error("replace the previous run in", self.output_dir, err) from None
            try:
                os.makedirs(self.logging_dir, exist_ok=True)
            except OSError as err:
                raise _io_error("create", self.logging_dir, err) from None
        acc.wait_for_everyone()

    # --- checkpoints ------------------------------------------------------------------------------------
    def _checkpoints(self) -> list[tuple[int, str]]:
        """Complete checkpoints in the folder (any run's), by step."""
        if not os.path.isdir(self.checkpoint_dir):
            return []
        found = []
        for name in os.listdir(self.checkpoint_dir):
            path = os.path.join(self.checkpoint_dir, name)
            number = name[len(CHECKPOINT_PREFIX):]
            if name.startswith(CHECKPOINT_PREFIX) and number.isdigit() and os.path.isdir(path) \
                    and os.path.exists(os.path.join(path, TRAINER_STATE)):
                found.append((int(number), path))
        return sorted(found)

    def _run_of(self, path: str) -> str | None:
        try:
            with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as f:
                return json.load(f).get("run_id")
        except (OSError, ValueError, AttributeError):
            return None

    def _model_state_dict(self) -> dict[str, torch.Tensor]:
        """The full model state (every process calls this: under sharding engines it gathers)."""
        if self.engine == "fsdp2":
            return gather_full_state_dict(self.model)
        return self.accelerator.get_state_dict(self.prepared_model)

    def _optimizer_state_dict(self) -> dict[str, Any]:
        """The optimiser state in a single process's layout (every process calls this: FSDP2 gathers)."""
        return self._checkpoint_optimizer().state_dict()

    def _checkpoint_model(self):
        """What checkpoints load the model state into (FSDP2: a view that shards the full state)."""
        return Fsdp2ModelState(self.model) if self.engine == "fsdp2" else self.unwrapped_model()

    def _checkpoint_optimizer(self):
        return Fsdp2OptimizerState(self.model, self.optimizer) if self.engine == "fsdp2" else self.optimizer

    def save_checkpoint(self) -> str | None:
        """Write model, EMA, optimiser, RNG states and trainer state (safetensors and JSON, no pickle) into a
        temporary folder, then rename it: a run killed while saving never leaves a half-written checkpoint.
        With `keep_checkpoints=0` nothing is written (returns None)."""
        acc, cfg = self.accelerator, self.cfg
        if cfg.keep_checkpoints == 0:
            return None
        final = os.path.join(self.checkpoint_dir, f"{CHECKPOINT_PREFIX}{self.global_step:08d}")
        tmp = os.path.join(self.checkpoint_dir, f".tmp-{CHECKPOINT_PREFIX}{self.global_step:08d}")
        if os.path.lexists(final) and self._run_of(final) != self.run_id:  # every process sees it: all stop
            raise ValueError(f"{final} holds a checkpoint of another run; it is not replaced: move it away and "
                             "resume with --resume")
        # the generator states as they are now, before anything below could draw from them
        rng = ckpt.rng_states()
        model_state = self._model_state_dict()
        optimizer_state = self._optimizer_state_dict()
        try:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(tmp)
            acc.wait_for_everyone()
            ckpt.write_json(os.path.join(tmp, ckpt.rng_state_file(acc.process_index)), rng)  # every process
            if acc.is_main_process:
                files = [ckpt.MODEL_FILE] + [ckpt.rng_state_file(r) for r in range(acc.num_processes)]
                ckpt.save_module_state(os.path.join(tmp, ckpt.MODEL_FILE), model_state)
                if self.ema is not None:
                    ckpt.save_module_state(os.path.join(tmp, ckpt.EMA_FILE), self.ema.module.state_dict())
                    files.append(ckpt.EMA_FILE)
                files += ckpt.save_optimizer_state(tmp, optimizer_state)
                if acc.scaler is not None:
                    ckpt.write_json(os.path.join(tmp, ckpt.SCALER_FILE), acc.scaler.state_dict())
                    files.append(ckpt.SCALER_FILE)
            acc.wait_for_everyone()
            if acc.is_main_process:
                state = {"format": ckpt.FORMAT_VERSION, "run_id": self.run_id, "global_step": self.global_step,
                         "epoch": self.epoch, "accelerator_step": acc.step, "num_processes": acc.num_processes,
                         "loss_total": self.loss_total, "loss_steps": self.loss_steps,
                         "eval_history": self.eval_history, "config": cfg.to_dict(),
                         "files": ckpt.file_sizes(tmp, files)}
                ckpt.write_json(os.path.join(tmp, TRAINER_STATE), state)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
        except OSError as err:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise _io_error("write the checkpoint", final, err) from None
        if acc.is_main_process:
            ours = [path for _, path in self._checkpoints() if self._run_of(path) == self.run_id]
            for old in ours[:max(len(ours) - cfg.keep_checkpoints, 0)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self.last_checkpoint = final
        return final

    def _resume(self) -> int:
        """Load the latest complete checkpoint; returns the number of micro-batches to skip in its epoch."""
        acc = self.accelerator
        checkpoints = self._checkpoints()
        if not checkpoints:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.checkpoint_dir}")
        step, path = checkpoints[-1]
        state_path = os.path.join(path, TRAINER_STATE)
        state = ckpt.read_json(state_path)
        if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
            raise ckpt.CheckpointError(
                f"--resume: {state_path} is not a dcls-zoo checkpoint state (it has no file list; checkpoints of "
                "earlier dcls-zoo versions were Accelerate pickles, which are not read): start again with --overwrite")
        try:
            saved, now = state["config"], self.cfg.to_dict()
            changed = [k for k in now if k not in RESUME_FREE_FIELDS and k in saved and saved[k] != now[k]]
            global_step, processes = int(state["global_step"]), int(state["num_processes"])
            listed = {str(k): int(v) for k, v in state["files"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ckpt.CheckpointError(f"--resume: {state_path} is not a valid trainer state (bad or missing "
                                       f"entry: {err}); resume from an earlier checkpoint (delete this folder) or "
                                       "start again with --overwrite") from None
        if changed:
            raise ValueError(f"--resume: {path} was written with other settings ("
                             + ", ".join(f"{k}={saved[k]!r} now {now[k]!r}" for k in changed)
                             + "); an exact continuation needs the same ones")
        if processes != acc.num_processes:
            raise ValueError(f"--resume: {path} was written by {processes} process(es), this run has "
                             f"{acc.num_processes}; an exact continuation needs the same number")
        ckpt.check_listed_files(path, listed)
        if (self.ema is not None) != (ckpt.EMA_FILE in listed):
            raise ckpt.CheckpointError(f"--resume: {path} {'has no' if self.ema is not None else 'has an'} "
                                       f"{ckpt.EMA_FILE} but this run {'keeps' if self.ema else 'keeps no'} an EMA")
        ckpt.load_module_state(os.path.join(path, ckpt.MODEL_FILE), self._checkpoint_model())
        if self.ema is not None:
            ckpt.load_module_state(os.path.join(path, ckpt.EMA_FILE), self.ema.module)
        ckpt.load_optimizer_state(path, self._checkpoint_optimizer())
        if acc.scaler is not None:
            if ckpt.SCALER_FILE not in listed:
                raise ckpt.CheckpointError(f"--resume: {path} has no {ckpt.SCALER_FILE} (fp16 gradient scaler)")
            acc.scaler.load_state_dict(ckpt.read_json(os.path.join(path, ckpt.SCALER_FILE)))
        ckpt.set_rng_states(os.path.join(path, ckpt.rng_state_file(acc.process_index)))
        acc.step = int(state.get("accelerator_step", 0))
        self.global_step = global_step
        self.epoch = int(state.get("epoch", 0))
        self.run_id = state.get("run_id") or self.run_id
        self.loss_total, self.loss_steps = float(state.get("loss_total", 0.0)), int(state.get("loss_steps", 0))
        self.eval_history = state.get("eval_history", [])
        self.last_checkpoint = path
        if self.scheduler is not None:
            self.scheduler.step_update(self.global_step)
        if acc.is_main_process:  # drop log lines written after this checkpoint by the killed run
            records = [r for r in read_jsonl(self.metrics_path) if r["step"] <= self.global_step]
            with open(self.metrics_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        acc.print(f"resumed from {path} (optimizer step {self.global_step})")
        return (self.global_step % self.steps_per_epoch) * self.cfg.grad_accum_steps

    # --- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None, loader=None) -> dict[str, float]:
        model = model if model is not None else self.prepared_model
        loader = loader if loader is not None else self.eval_loader
        was_training = model.training
        model.eval()
        parts: dict[str, list[torch.Tensor]] = {}
        for batch in loader:
            with self.accelerator.autocast():
                outputs = self.adapter.forward(model, batch)
            values = self.adapter.eval_step(outputs, batch)
            for k, v in self.accelerator.gather_for_metrics(values).items():
                parts.setdefault(k, []).append(v.detach().float().cpu())
        model.train(was_training)
        return self.adapter.compute_metrics({k: torch.cat(v) for k, v in parts.items()})

    # --- training ---------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        if self.trackers_enabled:
            acc.init_trackers("dcls-zoo", config={k: v for k, v in cfg.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})
            self._trackers_open = True
        skip = self._resume() if cfg.resume else 0
        if not cfg.resume and acc.is_main_process and os.path.exists(self.metrics_path):
            os.remove(self.metrics_path)
        self._call("on_train_begin")
        start_epoch = self.global_step // self.steps_per_epoch
        progress = None
        if cfg.progress and acc.is_local_main_process:
            from tqdm.auto import tqdm

            progress = tqdm(total=self.total_steps, initial=self.global_step, desc="train", dynamic_ncols=True)
        model = self.prepared_model
        model.train()
        t_start = time.perf_counter()
        window_t, window_samples = time.perf_counter(), 0
        loss_sum, loss_count = 0.0, 0
        done = self.global_step >= self.total_steps
        for epoch in range(start_epoch, self.num_epochs):
            if done:
                break
            self.epoch = epoch
            self.sampler.set_epoch(epoch)
            self.train_set.set_epoch(epoch)
            self.train_loader.set_epoch(epoch)
            loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
            skip = 0
            save_after_epoch = False
            for batch in loader:
                with acc.accumulate(model):
                    batch = self.adapter.batch_augment(batch)
                    outputs = self.adapter.forward(model, batch)
                    loss = self.adapter.loss(outputs, batch, training=True)
                    finite = torch.isfinite(loss.detach()).to(torch.float32)
                    if acc.gather(finite.reshape(1)).min() < 1:
                        raise NonFiniteLossError(self.global_step, float(loss.detach()), self.last_checkpoint)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.clip_grad:
                        acc.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    self.prepared_optimizer.step()
                    self.prepared_optimizer.zero_grad(set_to_none=True)
                loss_sum += float(loss.detach())
                loss_count += 1
                window_samples += batch["targets"].shape[0] * acc.num_processes
                if not acc.sync_gradients:
                    continue
                self.global_step += 1
                if self.scheduler is not None:
                    self.scheduler.step_update(self.global_step)
                self.last_loss = loss_sum / loss_count
                self.loss_total += self.last_loss
                self.loss_steps += 1
                loss_sum, loss_count = 0.0, 0
                now = time.perf_counter()
                self.samples_per_second = window_samples / max(now - window_t, 1e-9)
                window_t, window_samples = now, 0
                self._call("on_step_end")  # clamps DCLS positions first, so the EMA averages clamped values
                if self.ema is not None:
                    self.ema.update(self.unwrapped_model(), self.global_step)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(step_loss=f"{self.last_loss:.4f}", lr=f"{self.current_lr:.2e}",
                                         samples_s=f"{self.samples_per_second:.1f}", refresh=False)
                epoch_ends = self.global_step % self.steps_per_epoch == 0
                if cfg.save_every and self.global_step % cfg.save_every == 0:
                    if epoch_ends:
                        save_after_epoch = True  # after the epoch-end hooks, so a resume does not skip them
                    else:
                        self.save_checkpoint()
                if self.global_step >= self.total_steps:
                    done = True
                    break
            if self.global_step % self.steps_per_epoch == 0:  # the epoch ran to its end
                self._call("on_epoch_end")
                last = self.global_step >= self.total_steps
                if (epoch + 1) % cfg.eval_every_epochs == 0 or last:
                    self._run_eval()
                if save_after_epoch or cfg.save_every is None:
                    self.save_checkpoint()
            elif done:
                self._run_eval()
        if progress is not None:
            progress.close()
        self.train_runtime = time.perf_counter() - t_start
        if not self.eval_history or self.eval_history[-1]["step"] != self.global_step:
            self._run_eval()
        self._call("on_train_end")
        results = self._final_results()
        acc.wait_for_everyone()
        self.finish_trackers()  # the process group stays up: the caller may still save, reload and evaluate
        return results

    def finish_trackers(self) -> None:
        """Flush and close the trackers (TensorBoard); unlike `Accelerator.end_training`, keeps the process group."""
        if self._trackers_open:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self._trackers_open = False

    def end_training(self) -> None:
        """Close the trackers and tear the process group down: the last call of a job, after every collective."""
        self.finish_trackers()
        # Every rank reaches this point before any tears its side down: a gloo process shutting its connections
        # while another still finishes its last collective (or writes the folder) can abort that other process.
        self.accelerator.wait_for_everyone()
        self.accelerator.state.destroy_process_group()

    def _run_eval(self) -> dict[str, float]:
        metrics = self.evaluate(model=self.eval_model)
        self.eval_history.append({"step": self.global_step, "epoch": round(self.epoch_progress, 4), **metrics})
        self._call("on_evaluate", metrics)
        self.accelerator.print(f"epoch {self.epoch_progress:.2f} step {self.global_step}: " + ", ".join(
            f"eval_{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def _final_results(self) -> dict[str, Any]:
        final = self.eval_history[-1]
        eval_results = {"epoch": final["epoch"], **{f"eval_{k}": v for k, v in final.items()
                                                    if k not in ("step", "epoch")},
                        "eval_samples": self.num_eval_samples}
        train_results = {"epoch": round(self.epoch_progress, 4), "global_step": self.global_step,
                         # as transformers' Trainer: the mean training loss over every optimiser step of the run
                         "train_loss": self.loss_total / self.loss_steps if self.loss_steps else float("nan"),
                         "train_runtime": round(self.train_runtime, 2),
                         "train_samples": self.num_train_samples,
                         "train_samples_per_second": round(
                             self.global_step * self.cfg.batch_size * self.cfg.grad_accum_steps
                             * self.accelerator.num_processes / max(self.train_runtime, 1e-9), 2)}
        return {"train": train_results, "eval": eval_results}

    # --- final folder -----------------------------------------------------------------------------------
    def unwrapped_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.prepared_model)

    def final_model(self) -> nn.Module:
        """What the run publishes: the EMA weights when an EMA is kept (as the DCLS releases), else the model.

        Under FSDP2 / DeepSpeed the full weights are gathered (collectively, once per step) into a plain copy of
        the model; only the main process's copy receives them."""
        if self._full_copy is None:
            return self.ema.module if self.ema is not None else self.unwrapped_model()
        if self._full_copy_step != self.global_step:
            state = self._model_state_dict()
            if self.accelerator.is_main_process:
                self._full_copy.load_state_dict(state, strict=True)
            self._full_copy_step = self.global_step
        return self._full_copy
