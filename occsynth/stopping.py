"""Stop requests (Ctrl-C, SIGTERM) that no library can swallow.

Python raises KeyboardInterrupt from a signal handler at the next bytecode it runs, and that can be
inside a C library's own error handling. numpy does so when it falls back from pycocotools'
``__array__`` (which takes no ``copy`` argument): the interrupt was seen to vanish there and the
pending TypeError to come out instead, which a mask decoder's ``except`` then counted as a corrupt
mask; the run went on and exited 0 with a wrong output. Handlers installed by :func:`stop_on_signals`
note the signal before raising, and code that turns broad errors from such libraries into "bad data"
calls :func:`raise_if_stopping` first.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from .pool import restore_signal_handler

_requested: list[int] = []
_active = [0]  # stop_on_signals blocks open now: outside them a noted stop is history, not a request
_one_stop = [0]  # one_stop blocks open now: a stop after the first is noted there, not raised


def request_stop(signum: int, frame) -> None:
    """Signal handler: note the stop, then unwind as Ctrl-C does (temporaries removed, workers shut down); in a
    :func:`one_stop` block, only the first stop."""
    _requested.append(signum)
    if _one_stop[0] and len(_requested) > 1:
        return
    raise KeyboardInterrupt


def stop_requested() -> int | None:
    """The signal of the last stop asked for in the current (or, once it is left, the last)
    :func:`stop_on_signals` block, or None."""
    return _requested[-1] if _requested else None


def is_stop(exc: BaseException) -> bool:
    """Whether ``exc`` is a stop, or an error raised after a stop was asked for in the current block."""
    return isinstance(exc, KeyboardInterrupt) or bool(_active[0] and _requested)


def raise_if_stopping() -> None:
    """Raise KeyboardInterrupt if a stop was asked for: call it where a broad ``except`` would take
    whatever a C library raised for bad input. Outside a :func:`stop_on_signals` block it does nothing: a
    command stopped earlier in the same process (a notebook) must not turn later bad masks into stops."""
    if _active[0] and _requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def one_stop() -> Iterator[None]:
    """Inside the block (and a :func:`stop_on_signals` one) only the first stop raises KeyboardInterrupt; a later one
    is noted (:func:`stop_requested`: the exit status) but not raised, so that the first one's clean-up runs to its end.
    A scheduler's SIGTERM to every process of the job a few ms after the user's Ctrl-C (or Ctrl-C twice) raised in a
    worker pool's shut-down: the pool's lock was left held (the command hung at exit, after its 'Stopped' line), or
    the workers were not killed before their temporaries were removed, or the removal was cut short.

    The block's work calls :func:`raise_if_stopping` where it may go on (between chunks): a first stop that some
    library swallowed stops it there. One noted but not raised when the block ends without an error is raised then."""
    _one_stop[0] += 1
    try:
        yield
    finally:
        _one_stop[0] -= 1
    raise_if_stopping()


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Inside the block, these signals raise KeyboardInterrupt and are noted (:func:`stop_requested`).

    An error raised out of the block after a stop was asked for is taken as that stop, a KeyboardInterrupt
    whose message names the error (:func:`is_stop` tells such errors apart inside the block): a batch
    scheduler signals every process of a job, and a library that reports its helper processes' death
    (torch's DataLoader: "worker killed by signal") can replace the KeyboardInterrupt while it unwinds.

    Only the main thread can set handlers; elsewhere the block runs with the handlers it has. A signal
    the process was started ignoring stays ignored (a job started with ``cmd &`` from a script ignores
    Ctrl-C, so that Ctrl-C at the terminal leaves it running).
    """
    _requested.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    _active[0] += 1
    try:
        for signum in signums:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, request_stop)
        try:
            yield
        except Exception as exc:
            if is_stop(exc):  # the stop wins, and says what it replaced
                raise KeyboardInterrupt(f"while stopping: {type(exc).__name__}: {exc}") from exc
            raise
    finally:
        _active[0] -= 1
        raised = None
        for signum, handler in previous.items():  # every handler back, even if a signal arrives meanwhile
            try:
                restore_signal_handler(signum, handler)
            except BaseException as exc:
                raised = raised or exc
        if raised is not None:
            raise raised
