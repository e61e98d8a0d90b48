"""One bcnet command at a time per --out: a second `bcnet train` (or train-synthetic, evaluate, predict) started
on the folder another one writes stops at once, naming it, instead of interleaving its checkpoints, logs or results
with the first one's. The lock is ``OUT/.lock`` (:func:`occsynth.atomic.locked_output_folder`); no torch here,
so that the pipeline can take it before importing the trainer."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
from pathlib import Path
from typing import Callable, ContextManager

from occsynth.atomic import locked_output_folder
from occsynth.errors import OccsynthError


def hold_out_dir(out_dir: str | os.PathLike) -> ContextManager[Path]:
    """``out_dir`` made (and checked writable) and held by this process for the block; another process holding
    it is an :class:`OccsynthError` naming the folder, that process (pid and host) and what to do."""
    def refuse(holder: str) -> OccsynthError:
        return OccsynthError(f"{out_dir} is being written by another process "
                             f"({holder or 'which has not written its pid yet'}): wait for it to finish or stop it, "
                             "then run the command again, or choose another out_dir/--out")

    return locked_output_folder(out_dir, refuse)


def holds_out_dir(only_if: Callable[[], bool] = lambda: True) -> Callable[[Callable], Callable]:
    """Decorator: the function runs with its ``out_dir`` argument held (:func:`hold_out_dir`), where ``only_if()``
    says so (e.g. only the rank that writes the files), from before its first line to its return."""
    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def held(*args, **kwargs):
            out_dir = signature.bind(*args, **kwargs).arguments["out_dir"]
            with hold_out_dir(out_dir) if only_if() else contextlib.nullcontext():
                return fn(*args, **kwargs)
        return held
    return decorate


# what only each of the two writes into its --out; both write a results.json (AP there, detections here)
OUTPUT_MARKS = {"bcnet evaluate": "detections_*.json", "bcnet predict": "images.json"}


def refuse_other_output(out_dir: str | os.PathLike, command: str) -> None:
    """Refuse an ``out_dir`` holding the output of the other of `bcnet evaluate` and `bcnet predict` (``command``
    is the one running): its results.json would be replaced by this one's, leaving a folder of both commands'
    files."""
    for other, mark in OUTPUT_MARKS.items():
        found = sorted(p.name for p in Path(out_dir).glob(mark)) if other != command else []
        if found:
            raise OccsynthError(f"{out_dir} holds `{other}`'s output ({found[0]}, results.json): `{command}` would "
                                "replace its results.json; choose another out_dir/--out")
