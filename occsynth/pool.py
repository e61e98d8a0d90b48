"""Starting worker processes: how many the machine can use, and leaving Ctrl-C to the main process.

Ctrl-C reaches every process of the terminal's foreground group. A pool worker hit while it was
still importing printed a traceback, and a busy one died mid-task. Only the main process needs
it: it stops the run and shuts the pool down. Processes started inside :func:`ctrl_c_for_main_only`
ignore SIGINT for good (an ignored signal stays ignored across exec, and Python keeps it so);
joblib's loky pool is reused by later calls, so whichever call starts it must use this.
:func:`restore_signal_handler` puts a handler back robustly (the CLI's SIGTERM handler uses it too).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask (a batch scheduler's or taskset's share), else
    the machine's count."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # no affinity on this platform
        return max(os.cpu_count() or 1, 1)


def local_workers(asked: int) -> int:
    """Worker processes to start on this machine for ``asked``: at most one per usable core. The work is
    CPU-bound, so more only compete for the cores, and an absurd count (a typo) started processes until
    memory ran out. Results never depend on the count."""
    return min(int(asked), usable_cores())


@contextlib.contextmanager
def ctrl_c_for_main_only() -> Iterator[None]:
    """SIGINT ignored while the block starts processes, then restored (whatever interrupts the block).

    The block should only start processes (joblib's ``Parallel(...)(...)`` with a generator result,
    ~20 ms): a Ctrl-C that arrives inside it is lost, not deferred.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        yield
    finally:
        restore_signal_handler(signal.SIGINT, previous)


def restore_signal_handler(signum: int, handler) -> None:
    """Put ``handler`` (what ``signal.signal``/``getsignal`` returned before; None, a handler not set from
    Python, means the default) back, even when another signal's handler raises on the way (e.g. SIGTERM
    -> stop): a main process left ignoring Ctrl-C could not be stopped from the keyboard. The first such
    exception is raised once the handler is back."""
    handler = signal.SIG_DFL if handler is None else handler
    raised = None
    while True:
        try:
            signal.signal(signum, handler)
            if signal.getsignal(signum) is handler:
                break
        except BaseException as exc:  # re-raised below, once the handler is back
            raised = raised or exc
    if raised is not None:
        raise raised
