"""A whole training job: train, write the Hub-ready folder, reload it the way users will, evaluate again.

The output folder follows the transformers Trainer layout: the final model at its root (for timm models
`config.json` + `model.safetensors`, loadable with `timm.create_model("local-dir:<folder>", pretrained=True)`),
`README.md` (model card with the measured metric and the command that reproduces it), `training_curves.png`,
`train_results.json` / `eval_results.json` / `all_results.json`, and `checkpoints/` and `logs/` (metrics.jsonl,
TensorBoard) beside them. Push it with `upload_folder(..., ignore_patterns=["checkpoints/*", "logs/*"])`.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from typing import Any

import torch
import torch.nn as nn

from .callbacks import plot_training_curves, read_jsonl
from .config import TrainConfig, command_line
from .trainer import CURVES_FILE, Trainer

_logger = logging.getLogger(__name__)


TASK_NAMES = {"image": "image classification", "audio": "audio tagging", "lm": "causal language modelling",
              "snn": "spiking-network classification"}


def _write_json(path: str, values: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")


def reload_folder(folder: str, task: str) -> nn.Module:
    """The saved model, loaded through the libraries' public entry points (what a user of the folder runs)."""
    if task == "lm":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder)
    import timm

    return timm.create_model(f"local-dir:{os.path.abspath(folder)}", pretrained=True)


def model_card(trainer: Trainer, results: dict[str, Any], command: str) -> str:
    """Model card of a training run: YAML metadata (with the measured metric as model-index) and a body saying
    what was trained on what, the result, how to load the folder and how to reproduce it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg, adapter = trainer.cfg, trainer.adapter
    info = adapter.card_info()
    main = adapter.main_metric
    value = results["eval"].get(f"eval_{main}")
    name = cfg.hub_model_id or os.path.basename(os.path.abspath(cfg.output_dir))
    dataset_id = "scikit-learn digits" if cfg.dataset == "digits" else cfg.dataset
    metric_id = {"accuracy": "accuracy", "mAP": "map", "perplexity": "perplexity"}.get(main, main)
    data = ModelCardData(
        library_name=info.get("library_name", "timm"), pipeline_tag=info.get("pipeline_tag"), license="mit",
        tags=["dcls-zoo", info.get("pipeline_tag", cfg.task), cfg.model.split(":")[-1]],
        metrics=[metric_id], model_name=name, base_model=cfg.model if cfg.pretrained else None,
        eval_results=None if value is None else [EvalResult(
            task_type=info.get("pipeline_tag", cfg.task), dataset_type=dataset_id, dataset_name=dataset_id,
            dataset_split=trainer.eval_split, metric_type=metric_id, metric_value=round(float(value), 4))],
    )
    n_params = sum(p.numel() for p in trainer.final_model().parameters())
    details = ""
    if cfg.model_kwargs:
        details += f"\nModel arguments: `{json.dumps(cfg.model_kwargs)}`."
    if "input_size" in adapter.data_config:
        dc = adapter.data_config
        details += (f"\nInput: {tuple(dc['input_size'])} (channels, height, width), {dc['interpolation']} resize, "
                    f"mean {tuple(round(m, 4) for m in dc['mean'])}, std {tuple(round(v, 4) for v in dc['std'])}.")
    load = ('from transformers import AutoModelForCausalLM\nimport dcls_zoo  # registers the model classes\n'
            'model = AutoModelForCausalLM.from_pretrained("<this folder or repo id>")' if cfg.task == "lm" else
            'import timm\nimport dcls_zoo  # registers the models with timm (timm has no plugin discovery)\n'
            'model = timm.create_model("local-dir:<this folder>", pretrained=True)  # or "hf-hub:<repo id>"')
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in sorted({**results["eval"], **results.get("reload", {})}.items()))
    env = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
           f"{trainer.accelerator.num_processes} process(es), device {trainer.accelerator.device}, "
           f"mixed precision {trainer.accelerator.mixed_precision}, "
           f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    body = f"""
# {name}

`{cfg.model}` ({n_params:,} parameters{", EMA weights" if cfg.model_ema_decay else ""}) trained with dcls-zoo
for {TASK_NAMES[cfg.task]} on **{dataset_id}** ({trainer.num_train_samples} training rows, evaluated on split
`{trainer.eval_split}`, {trainer.num_eval_samples} rows).
{details}

## Result

Measured at the end of training ({results['train']['global_step']} optimizer steps, {results['train']['epoch']:g}
epochs, {results['train']['train_runtime']:.0f} s on {env}):

| metric | value |
|---|---|
{rows}

`reload_*` rows are the same evaluation repeated on the model loaded back from this folder.

## Use

```python
{load}
```

## Reproduce

```bash
{command}
```

The seed ({cfg.seed}) fixes the data split, data order and augmentation; the full configuration is in
`checkpoints/*/trainer_state.json` of the run, the curves in `{CURVES_FILE}`.
"""
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def run_training(cfg: TrainConfig, *, preset: str | None = None, model: nn.Module | None = None,
                 callbacks: list = ()) -> dict[str, Any]:
    """Train, save the folder, reload and evaluate it; returns {"train", "eval", "reload"} results."""
    from ..hub.save import save_folder

    t0 = time.perf_counter()
    trainer = Trainer(cfg, model=model, callbacks=list(callbacks))
    results = trainer.train()
    acc = trainer.accelerator
    out = cfg.output_dir
    if cfg.save_model:
        unwrapped = trainer.final_model()
        if acc.is_main_process:
            if cfg.task == "lm":
                save_folder(unwrapped, out, card=False)
                trainer.adapter.tokenizer.save_pretrained(out)
            else:
                model_args = dict(cfg.model_kwargs)
                if getattr(unwrapped, "in_chans", None) is not None:
                    model_args["in_chans"] = unwrapped.in_chans
                data_config = {k: v for k, v in trainer.adapter.data_config.items()
                               if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")}
                model_config = {"label_names": trainer.adapter.class_names} if trainer.adapter.class_names else None
                save_folder(unwrapped, out, card=False, model_args=model_args, data_config=data_config or None,
                            model_config=model_config)
        acc.wait_for_everyone()
        reloaded = reload_folder(out, cfg.task)
        metrics = trainer.evaluate(model=acc.prepare_model(reloaded, evaluation_mode=True))
        results["reload"] = {f"reload_eval_{k}": v for k, v in metrics.items()}
    results["total_runtime"] = round(time.perf_counter() - t0, 2)
    if acc.is_main_process:
        os.makedirs(out, exist_ok=True)
        all_results = {**results["train"], **results["eval"], **results.get("reload", {}),
                       "total_runtime": results["total_runtime"]}
        _write_json(os.path.join(out, "train_results.json"), results["train"])
        _write_json(os.path.join(out, "eval_results.json"), results["eval"])
        _write_json(os.path.join(out, "all_results.json"), all_results)
        plot_training_curves(read_jsonl(trainer.metrics_path), os.path.join(out, CURVES_FILE),
                             trainer.adapter.main_metric)
        if cfg.save_model:
            with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
                f.write(model_card(trainer, results, command_line(cfg, preset)))
    main = trainer.adapter.main_metric
    after = results["eval"].get(f"eval_{main}")
    reloaded_value = results.get("reload", {}).get(f"reload_eval_{main}")
    line = f"{trainer.eval_split} {main} after training: {after:.4f}"
    if reloaded_value is not None:
        line += f"; after reloading local-dir:{out}: {reloaded_value:.4f}"
    acc.print(line)
    acc.print(f"wall time {results['total_runtime']:.1f} s (training {results['train']['train_runtime']:.1f} s); "
              f"folder: {os.path.abspath(out)}")
    results["trainer"] = trainer
    return results
