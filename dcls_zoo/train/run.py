"""A whole training job: train, write the Hub-ready folder, reload it the way users will, evaluate again.

The output folder follows the transformers Trainer layout: the final model at its root (for timm models
`config.json` + `model.safetensors`, loadable with `timm.create_model("local-dir:<folder>", pretrained=True)`),
`README.md` (model card with the measured metric and the command that reproduces it), `training_curves.png`,
`train_results.json` / `eval_results.json` / `all_results.json`, `training_config.json` (every option of the run),
and `checkpoints/` (the resume state: safetensors and JSON, no pickle) and `logs/` (metrics.jsonl, TensorBoard)
beside them. `dcls-zoo push` sends the folder as written and leaves `checkpoints/` and `logs/` out; the card names
only the files it sends.
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

from .checkpoint import as_os_error
from .config import TrainConfig, command_line, config_from_preset
from .curves import plot_training_curves, read_jsonl
from .tasks import TASK_ADAPTERS
from .trainer import CURVES_FILE, Trainer, _io_error

_logger = logging.getLogger(__name__)


def _write_json(path: str, values: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")


def reload_folder(folder: str, task: str) -> nn.Module:
    """The saved model, loaded through the libraries' public entry points (what a user of the folder runs)."""
    if TASK_ADAPTERS[task].library_name == "transformers":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder)
    import timm

    return timm.create_model(f"local-dir:{os.path.abspath(folder)}", pretrained=True)


TRAINING_CONFIG_FILE = "training_config.json"


def dataset_label(dataset: str) -> tuple[str, str | None]:
    """(how the card names the data set, its Hub id or None): a local path by its folder or file name only."""
    if dataset == "digits":
        return "scikit-learn digits", None
    if os.path.exists(dataset) or dataset.startswith((".", "/", "~")):
        return f"local data `{os.path.basename(os.path.normpath(dataset))}`", None
    return dataset, dataset


def architecture_of(model: nn.Module, cfg: TrainConfig) -> str:
    """The model's registered name: timm's architecture or transformers' model_type (never a local path)."""
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch:
        return arch
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None):
        return config.model_type
    return cfg.model.split(":")[-1]


def base_model_of(model: nn.Module, cfg: TrainConfig) -> str | None:
    """The Hub id fine-tuning started from (None when training from scratch or from a local folder)."""
    if not cfg.pretrained:
        return None
    if cfg.model.startswith("hf-hub:"):
        return cfg.model[len("hf-hub:"):].split("@")[0]
    if cfg.model.startswith("local-dir:") or os.path.exists(cfg.model):
        return None
    if TASK_ADAPTERS[cfg.task].library_name == "transformers":  # a model id is its Hub id
        return cfg.model
    return (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id") or None


def card_command(cfg: TrainConfig, preset: str | None) -> str:
    """The reproducing command as a card shows it: local paths by their last component, no --output-dir (where
    this machine wrote the folder says nothing about the model)."""
    def short(path: str) -> str:
        return "./" + os.path.basename(os.path.normpath(path))

    base = config_from_preset(preset) if preset is not None else TrainConfig()
    changes: dict[str, Any] = {"output_dir": base.output_dir}
    if dataset_label(cfg.dataset)[1] is None and cfg.dataset != "digits":
        changes["dataset"] = short(cfg.dataset)
    if cfg.model.startswith("local-dir:"):
        changes["model"] = "local-dir:" + short(cfg.model[len("local-dir:"):])
    elif os.path.exists(cfg.model):
        changes["model"] = short(cfg.model)
    for name in ("tokenizer",):
        value = getattr(cfg, name)
        if value and os.path.exists(value):
            changes[name] = short(value)
    return command_line(cfg.replace(**changes), preset)


def model_card(trainer: Trainer, results: dict[str, Any], command: str) -> str:
    """Model card of a training run: YAML metadata (with the measured metric as model-index) and a body saying
    what was trained on what, the result, how to load the folder and how to reproduce it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg, adapter = trainer.cfg, trainer.adapter
    main = adapter.main_metric
    value = results["eval"].get(f"eval_{main}")
    name = cfg.hub_model_id or os.path.basename(os.path.abspath(cfg.output_dir))
    final = trainer.final_model()
    arch, base_model = architecture_of(final, cfg), base_model_of(final, cfg)
    dataset_name, dataset_hub_id = dataset_label(cfg.dataset)
    metric_id = {"accuracy": "accuracy", "mAP": "map", "perplexity": "perplexity"}.get(main, main)
    data = ModelCardData(
        library_name=adapter.library_name, pipeline_tag=adapter.pipeline_tag, license="mit",
        tags=["dcls-zoo", adapter.pipeline_tag or cfg.task, arch], datasets=[dataset_hub_id] if dataset_hub_id
        else None, metrics=[metric_id], model_name=name, base_model=base_model,
        eval_results=None if value is None else [EvalResult(
            task_type=adapter.pipeline_tag or cfg.task, dataset_type=dataset_hub_id or dataset_name.strip("`"),
            dataset_name=dataset_name.replace("`", ""), dataset_split=trainer.eval_split, metric_type=metric_id,
            metric_value=round(float(value), 4))],
    )
    origin = "trained from scratch"
    if cfg.pretrained:
        origin = f"fine-tuned from {f'`{base_model}`' if base_model else 'pretrained weights in a local folder'}"
        if trainer.adapter.head_replaced:
            origin += " with a new classifier head"
    n_params = sum(p.numel() for p in final.parameters())
    details = ""
    if cfg.model_kwargs:
        details += f"\nModel arguments: `{json.dumps(cfg.model_kwargs)}`."
    if "input_size" in adapter.data_config:
        dc = adapter.data_config
        details += (f"\nInput: {tuple(dc['input_size'])} (channels, height, width), {dc['interpolation']} resize, "
                    f"mean {tuple(round(m, 4) for m in dc['mean'])}, std {tuple(round(v, 4) for v in dc['std'])}.")
    if adapter.library_name == "transformers":
        load = ('from transformers import AutoModelForCausalLM\nimport dcls_zoo  # registers the model classes\n'
                'model = AutoModelForCausalLM.from_pretrained("<this folder or repo id>")')
    else:
        load = ('import timm\nimport dcls_zoo  # registers the models with timm (timm has no plugin discovery)\n'
                'model = timm.create_model("local-dir:<this folder>", pretrained=True)  # or "hf-hub:<repo id>"')
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in sorted({**results["eval"], **results.get("reload", {})}.items()))
    env = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
           f"{trainer.accelerator.num_processes} process(es), device {trainer.accelerator.device}, "
           f"mixed precision {trainer.accelerator.mixed_precision}, "
           f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    shortened = "Local paths are shown by their last component. " if " ./" in command or ":./" in command else ""
    body = f"""
# {name}

`{arch}` ({n_params:,} parameters{", EMA weights" if cfg.model_ema_decay else ""}), {origin} with dcls-zoo
for {adapter.description} on **{dataset_name}** ({trainer.num_train_samples} training rows, evaluated on split
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

{shortened}The seed ({cfg.seed}) fixes the data split, data order and augmentation; every option of the run is in
`{TRAINING_CONFIG_FILE}`, the training curves in `{CURVES_FILE}`, the results in `all_results.json`
(`train_loss`: the mean training loss over all optimizer steps; `eval_*`: the final evaluation).
"""
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def _save_final_model(trainer: Trainer, model: nn.Module, out: str) -> None:
    """The Hub-ready files at the folder's root: config.json, model.safetensors (+ the tokenizer for lm)."""
    from ..hub.save import save_folder

    cfg, adapter = trainer.cfg, trainer.adapter
    if adapter.library_name == "transformers":
        save_folder(model, out, card=False)
        adapter.tokenizer.save_pretrained(out)
        return
    model_args = dict(cfg.model_kwargs)
    if getattr(model, "in_chans", None) is not None:
        model_args["in_chans"] = model.in_chans
    data_config = {k: v for k, v in trainer.adapter.data_config.items()
                   if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")}
    model_config = {"label_names": trainer.adapter.class_names} if trainer.adapter.class_names else None
    save_folder(model, out, card=False, model_args=model_args, data_config=data_config or None,
                model_config=model_config)


def run_training(cfg: TrainConfig, *, preset: str | None = None, model: nn.Module | None = None,
                 callbacks: list = ()) -> dict[str, Any]:
    """Train, save the folder, reload and evaluate it; returns {"train", "eval", "reload"} results."""
    t0 = time.perf_counter()
    trainer = Trainer(cfg, model=model, callbacks=list(callbacks))
    results = trainer.train()
    acc = trainer.accelerator
    out = cfg.output_dir
    if cfg.save_model:
        unwrapped = trainer.final_model()
        if acc.is_main_process:
            try:
                try:
                    _save_final_model(trainer, unwrapped, out)
                except Exception as err:  # safetensors' write errors are not OSErrors
                    raise as_os_error(err, out) from None
            except OSError as err:
                raise _io_error("write the model into", out, err) from None
        acc.wait_for_everyone()
        reloaded = reload_folder(out, cfg.task)
        metrics = trainer.evaluate(model=acc.prepare_model(reloaded, evaluation_mode=True))
        results["reload"] = {f"reload_eval_{k}": v for k, v in metrics.items()}
    results["total_runtime"] = round(time.perf_counter() - t0, 2)
    if acc.is_main_process:
        try:
            os.makedirs(out, exist_ok=True)
            all_results = {**results["train"], **results["eval"], **results.get("reload", {}),
                           "total_runtime": results["total_runtime"]}
            _write_json(os.path.join(out, "train_results.json"), results["train"])
            _write_json(os.path.join(out, "eval_results.json"), results["eval"])
            _write_json(os.path.join(out, "all_results.json"), all_results)
            _write_json(os.path.join(out, TRAINING_CONFIG_FILE), {"preset": preset, **cfg.to_dict()})
            plot_training_curves(read_jsonl(trainer.metrics_path), os.path.join(out, CURVES_FILE),
                                 trainer.adapter.main_metric, title=curves_title(trainer))
            if cfg.save_model:
                with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
                    f.write(model_card(trainer, results, card_command(cfg, preset)))
        except OSError as err:
            raise _io_error("write the results into", out, err) from None
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
    trainer.end_training()  # last: tears the process group down (after every collective above)
    return results


def curves_title(trainer: Trainer) -> str:
    cfg = trainer.cfg
    return f"{architecture_of(trainer.final_model(), cfg)} on {dataset_label(cfg.dataset)[0].replace('`', '')}"
