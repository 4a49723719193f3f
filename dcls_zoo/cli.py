"""`dcls-zoo` command line: one sub-command per job; the work itself lives in the package modules.

Each sub-command is a pair: `_add_<name>(subparsers)` declares its arguments, `_run_<name>(args)` runs it.
Heavy imports happen inside `_run_*` so `dcls-zoo --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered dcls_zoo models with their parameter counts")
    p.add_argument("--filter", default="*", help="wildcard on model names (default: all)")
    p.add_argument("--forward", action="store_true", help="also run one forward pass of each on random input")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")


def _run_models(args: argparse.Namespace) -> int:
    from .registry import model_table, format_model_table

    rows = model_table(args.filter, forward=args.forward)
    print(format_model_table(rows, markdown=args.markdown, forward=args.forward))
    return 0


# (name, add-arguments, run) — later sub-commands are appended here, one line each.
COMMANDS: list[tuple[str, Callable, Callable]] = [
    ("models", _add_models, _run_models),
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
    return runners[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
