"""The one-line error of every `dcls-zoo` sub-command (standard library only: the argument declarations import it).

It sits below both `dcls_zoo.cli` and `dcls_zoo.interpret.commands`, which report errors the same way.
"""
from __future__ import annotations

import sys


def report_error(command: str, err: BaseException) -> int:
    """One line on stderr for an error the user can fix; exit status 1."""
    message = " ".join(str(err).split()) or type(err).__name__
    # one write: under torchrun / accelerate launch (unbuffered stderr) the processes' lines must not interleave
    sys.stderr.write(f"dcls-zoo {command}: error: {message}\n")
    sys.stderr.flush()
    return 1
