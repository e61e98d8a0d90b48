"""The console scripts: import a command group, then run it.

A Ctrl-C while the commands are still importing (their first half second) stops as one later
does, with 130 and one line, instead of Python's traceback of the import.
"""
from __future__ import annotations

import importlib
import sys


def occsynth() -> None:
    _run("cli.occsynth_cli")


def bcnet() -> None:
    _run("cli.bcnet_cli")


def _run(module: str) -> None:
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print("Stopped (SIGINT).", file=sys.stderr)
        sys.exit(130)
    main()
