"""Entry point of the `dcls-zoo` console script.

It imports `dcls_zoo.cli` with the package's model registration deferred, so argument parsing (`--help`, argument
errors) imports neither torch nor timm nor transformers; `dcls_zoo.cli.main` registers what the chosen command
needs once the arguments are known. Importing `dcls_zoo` anywhere else registers everything as usual.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

_DEFER_REGISTRATION_ENV = "_DCLS_ZOO_DEFER_REGISTRATION"   # read by dcls_zoo/__init__.py while it is imported


def main(argv: Optional[Sequence[str]] = None) -> int:
    previous = os.environ.get(_DEFER_REGISTRATION_ENV)
    os.environ[_DEFER_REGISTRATION_ENV] = "1"
    try:
        from dcls_zoo.cli import main as cli_main
    finally:  # never inherited by processes the command starts (accelerate launch, data workers)
        if previous is None:
            os.environ.pop(_DEFER_REGISTRATION_ENV, None)
        else:
            os.environ[_DEFER_REGISTRATION_ENV] = previous
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
