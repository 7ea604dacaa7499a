"""The ``rabo`` command's entry point: Ctrl-C while the command's modules import (torch takes
a second or more) ends with one line and exit 130, as it does later, not a traceback."""

from __future__ import annotations

import signal
import sys
from typing import Any


def _quit(signum: int, frame: Any) -> None:
    print("rabo: interrupted", file=sys.stderr)
    raise SystemExit(128 + signum)


def main() -> int:
    previous = signal.signal(signal.SIGINT, _quit)
    from .cli import main as cli_main

    signal.signal(signal.SIGINT, previous)
    return cli_main()
