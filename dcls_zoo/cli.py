"""`dcls-zoo` command line: one sub-command per job; the work itself lives in the package modules.

Each sub-command is a pair: `_add_<name>(subparsers)` declares its arguments (no torch, timm or transformers
imports there), `_run_<name>(args)` runs it and imports what it needs; `main` registers the models (and the
transformers classes unless the command is in `TIMM_ONLY_COMMANDS`) once the arguments are parsed. This module
imports nothing heavy, but importing it imports the `dcls_zoo` package first, which registers the models (torch,
timm) unless registration is deferred: the `dcls-zoo` console script (`dcls_zoo_cli.main`) defers it, so there
`--help` and argument errors never import torch; `python -m dcls_zoo.cli` (under `accelerate launch`, `torchrun`)
does not. Errors a user can fix are one line on stderr, exit status 1.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, Sequence

from .cli_errors import report_error
from .interpret.commands import COMMANDS as INTERPRET_COMMANDS

# commands that need the timm models only (not the transformers classes, which import transformers)
TIMM_ONLY_COMMANDS = {"models", "tag", "gradcam", "clickme-eval", "kernels"}


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered dcls_zoo models with their parameter counts")
    p.add_argument("--filter", default="*", help="wildcard on model names (default: all)")
    p.add_argument("--forward", action="store_true", help="also run one forward pass of each on random input")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")
    p.add_argument("--write-readme", metavar="README", help="rewrite the model table of this README file")


def _run_models(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .hub.model_table import format_model_table, model_table, update_readme

    if args.write_readme:
        changed = update_readme(Path(args.write_readme))
        print(f"{args.write_readme}: model table {'updated' if changed else 'already up to date'}")
        return 0
    rows = model_table(args.filter, forward=args.forward)
    print(format_model_table(rows, markdown=args.markdown, forward=args.forward))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .train.cli_args import add_train_arguments

    p = sub.add_parser(
        "train", help="train or fine-tune a zoo model with Accelerate (no arguments: the digits demo)",
        description="Train or fine-tune any registered model on a Hub data set or a local folder, then write a "
                    "Hub-ready folder, reload it and evaluate it again. With no arguments: a small DCLS ConvNeXt "
                    "on scikit-learn's digits, on the CPU, in about a minute (measured: 60 s on a quiet 2-core "
                    "machine). Also runs under `accelerate launch`.")
    add_train_arguments(p)


def _run_train(args: argparse.Namespace) -> int:
    from .train.cli_args import config_from_args
    from .train.run import run_training
    from .train.trainer import NonFiniteLossError

    try:
        cfg, preset = config_from_args(args)
        run_training(cfg, preset=preset)
    except (ValueError, OSError, NonFiniteLossError) as err:  # OSError: unreadable data, read-only or full disk
        return report_error("train", err)
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="original checkpoint -> Hub-ready folder (safetensors, config, card), verified")
    p.add_argument("model", help="registered name with its tag, e.g. dcls_convnext_tiny.bilinear_in1k")
    p.add_argument("checkpoint", help="the authors' checkpoint file, in any layout the model's family reads")
    p.add_argument("out_dir", help="folder to write (config.json, model.safetensors, README.md)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="largest accepted |logits difference| between the reloaded and the original load (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing, non-empty OUT_DIR (only once the conversion is verified)")


def _run_convert(args: argparse.Namespace) -> int:
    from .hub import convert_checkpoint

    try:
        report = convert_checkpoint(args.model, args.checkpoint, args.out_dir, tolerance=args.tolerance,
                                    overwrite=args.overwrite)
    except (ValueError, RuntimeError, OSError) as err:
        return report_error("convert", err)
    print(report.describe())
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="upload a Hub-ready folder (safetensors only) to the Hugging Face Hub")
    p.add_argument("folder", help="a folder written by `dcls-zoo convert` or dcls_zoo.hub.save_folder")
    p.add_argument("--repo-id", required=True, help="ORG/NAME of the model repo (created if needed)")
    p.add_argument("--dry-run", action="store_true", help="check the folder and list what would be sent; send nothing")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--commit-message", default=None)


def _run_push(args: argparse.Namespace) -> int:
    from .hub import push_folder

    try:
        plan = push_folder(args.folder, args.repo_id, dry_run=args.dry_run, private=args.private,
                           commit_message=args.commit_message)
    except (ValueError, RuntimeError, OSError) as err:
        return report_error("push", err)
    print(("would send " if args.dry_run else "sent ") + plan.describe())
    return 0


def _add_tag(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tag", help="tag an audio file (WAV) with the top AudioSet labels of an audio model",
        description="Run an audio tagging model on a recording: it is cut into clips (the last one zero-padded), each "
                    "class keeps its highest probability over the clips, and the top labels are printed. Stereo is "
                    "averaged to mono (said on stderr); a sample rate other than the model's is an error.")
    p.add_argument("audio", help="audio file: integer-PCM WAV (standard library) or anything `soundfile` reads")
    p.add_argument("--model", default="convnext_audioset_tiny",
                   help="registered AudioSet tagging model (default convnext_audioset_tiny); spectrogram models "
                        "(DCLS-Audio) get their waveform front-end (waveform_input=True)")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="weights file (original layout or ours; .pth or .safetensors)")
    weights.add_argument("--pretrained", action="store_true", help="the model's registered weights (Hub or Zenodo)")
    p.add_argument("--top", type=int, default=10, help="number of labels to print (default 10)")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="clip length fed to the model (default 10)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {label, probability}")


def _run_tag(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import timm

    from .data.audio_io import audio_tagging_models, read_audio, tag_waveform, to_mono

    try:
        if args.top < 1:
            raise ValueError(f"--top must be >= 1, got {args.top}")
        if not (math.isfinite(args.clip_seconds) and args.clip_seconds > 0):
            raise ValueError(f"--clip-seconds must be a positive number of seconds, got {args.clip_seconds}")
        arch = args.model.split(".")[0]
        audio_models = audio_tagging_models()  # name -> takes spectrograms
        if arch not in audio_models:
            raise ValueError(f"--model must be an audio tagging model, one of: {', '.join(audio_models)}")
        waveform, rate = read_audio(args.audio)
        if args.clip_seconds * rate < 1:
            raise ValueError(f"--clip-seconds {args.clip_seconds:g} is less than one sample at {rate} Hz")
        if args.checkpoint and not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file")
        kwargs = dict(pretrained=True)
        if args.checkpoint:
            kwargs["pretrained_cfg_overlay"] = dict(file=args.checkpoint)
        if audio_models[arch]:  # a spectrogram model: ask for its waveform front-end
            kwargs["waveform_input"] = True
        model = timm.create_model(args.model, **kwargs)
        tags = tag_waveform(model.eval(), to_mono(waveform), rate, top_k=args.top, clip_seconds=args.clip_seconds)
    except (ValueError, TypeError, RuntimeError, OSError) as err:
        return report_error("tag", err)
    if waveform.shape[0] > 1:  # said once the tags exist, so an error stays the only line on stderr
        print(f"dcls-zoo tag: averaging {waveform.shape[0]} channels to mono", file=sys.stderr)
    if args.json:
        print(json.dumps([{"label": name, "probability": round(p, 6)} for name, p in tags], indent=1))
    else:
        for name, p in tags:
            print(f"{p:.3f}  {name}")
    return 0


# (name, add-arguments, run) — later sub-commands are appended here, one line each.
COMMANDS: list[tuple[str, Callable, Callable]] = [
    ("models", _add_models, _run_models),
    ("tag", _add_tag, _run_tag),
    ("train", _add_train, _run_train),
    ("convert", _add_convert, _run_convert),
    ("push", _add_push, _run_push),
    *INTERPRET_COMMANDS,  # gradcam, clickme-eval, kernels
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcls-zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _, add, _ in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runners = {name: run for name, _, run in COMMANDS}
    if args.command is None:
        parser.print_help()
        return 2
    import dcls_zoo

    try:
        dcls_zoo.register(transformers=args.command not in TIMM_ONLY_COMMANDS)
        return runners[args.command](args) or 0
    except KeyboardInterrupt:
        print(f"dcls-zoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
