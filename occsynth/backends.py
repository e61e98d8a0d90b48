"""Where a run's chunks are rendered: local processes or threads (joblib's loky, threading) or a cluster the user
runs (dask.distributed, ray). A cluster is reached, and given one trial task, before a run's folder is made; the
chunks' results come back as each finishes, so that the caller merges while the workers render; a cluster's own
errors (a lost scheduler, workers that die on a chunk, a head that cannot be reached) are said in words.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import itertools
import logging
import re
import signal
import socket
import threading
import warnings
from concurrent.futures import CancelledError
from typing import Callable, Iterator

import cv2

from .errors import OccsynthError
from .pool import ctrl_c_for_main_only, local_workers

BACKENDS = ("loky", "threading", "dask", "ray")
EXTRA_MODULES = {"dask": "distributed", "ray": "ray"}  # what each optional backend imports
SCHEDULER = "backend_address/--scheduler"  # a cluster's address as messages name it: generate's keyword, the CLI's flag


def check_backend(backend: str, address: str | None) -> None:
    """Refuse an unknown backend, a scheduler address for a local one, and an optional backend not installed."""
    if backend not in BACKENDS:
        raise OccsynthError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if address and backend not in ("dask", "ray"):
        raise OccsynthError(f"{SCHEDULER} is for --backend dask or ray, not {backend}")
    if backend in EXTRA_MODULES and importlib.util.find_spec(EXTRA_MODULES[backend]) is None:
        raise _missing_extra(backend)


def chunk_results(task: Callable[[int], int], chunks: list[int], workers: int, backend: str
                  ) -> Iterator[tuple[int, int]]:
    """(chunk, images) of each of ``chunks`` as the workers of ``backend`` finish it (``task(chunk)`` returns the
    chunk's image count); for dask and ray inside :func:`backend_session`. Closing it stops the workers."""
    if backend != "threading":  # threads share one process-wide OpenCV setting: leave it alone
        task = functools.partial(_one_cv2_thread, task)
    if backend == "ray":
        return _ray_results(task, chunks, workers)
    return _joblib_results(task, chunks, workers, backend)


def _joblib_results(task: Callable[[int], int], chunks: list[int], workers: int, backend: str
                    ) -> Iterator[tuple[int, int]]:
    """(chunk, images) of each chunk as joblib's workers (loky, threading, dask) finish it."""
    from joblib import Parallel, delayed, parallel_config
    with parallel_config(backend=backend, n_jobs=-1 if backend == "dask" and workers <= 1 else workers):
        with ctrl_c_for_main_only():  # joblib starts the pool's processes and dispatches here
            results = Parallel(return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")(
                delayed(_chunk_and_count)(task, c) for c in chunks)
        try:
            for result in results:  # not `yield from`: it would close joblib's generator outside the filter below
                yield result
        finally:
            with warnings.catch_warnings():
                # a run stopped by an error says so in that error, not in joblib's count of dropped tasks
                warnings.filterwarnings("ignore", message=r".*tasks .*(cancelled|not used)", category=UserWarning)
                results.close()


def _ray_results(task: Callable[[int], int], chunks: list[int], workers: int) -> Iterator[tuple[int, int]]:
    """(chunk, images) of each chunk as the ray cluster finishes it, ``workers`` chunks at a time (1: as many as
    the cluster has CPUs, and as many queued). Ray's own tasks: joblib's ray backend returns results only as one
    list at the end (no merge while rendering, no progress). Closed early (an error, Ctrl-C), it submits no more
    chunks and returns at once; those submitted are neither cancelled nor waited for: ray 2.60 can abort this
    process, without a word, when a cancel meets the reply of a task that is finishing (a known race of its core
    worker: "Tried to complete task that was not pending"), and a wait kept a chunk's error or a Ctrl-C unsaid for
    as long as the others ran. Ray stops them when the command leaves it (a local ray as it shuts down, a running
    cluster as the driver disconnects); the next run removes what they left half-written and renders them again."""
    import ray
    # the task goes with each chunk (a few hundred bytes), not through ray.put: a command holding an object in the
    # store was ended by ray itself (exit 1, no message) when the head it connects through stopped
    render = ray.remote(_chunk_and_count)
    at_once = workers if workers > 1 else 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    waiting, running = iter(chunks), []
    while True:
        running += [render.remote(task, c) for c in itertools.islice(waiting, at_once - len(running))]
        if not running:
            return
        done, running = ray.wait(running, num_returns=1)
        yield _ray_result(done[0])


def _chunk_and_count(task: Callable[[int], int], chunk: int) -> tuple[int, int]:
    return chunk, task(chunk)


def _one_cv2_thread(task: Callable[[int], int], chunk: int) -> int:
    """Run a chunk with OpenCV single-threaded: the workers already fill the cores (no oversubscription)."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    return task(chunk)


def _missing_extra(backend: str) -> OccsynthError:
    return OccsynthError(f"--backend {backend} needs the {backend} extra: pip install 'occsynth-bcnet[{backend}]'")


@contextlib.contextmanager
def backend_session(backend: str, address: str | None, workers: int):
    """Connect to the cluster a user already runs (dask.distributed scheduler or ray head), or start a local one."""
    if backend == "dask":
        with _dask_session(address) as client:
            yield client
    elif backend == "ray":
        with _ray_session(address, workers):
            yield None
    else:
        yield None


@contextlib.contextmanager
def _dask_session(address: str | None) -> Iterator[object]:
    """A dask client of the scheduler at ``address`` (or of a local cluster) that has run :func:`_check_cluster`;
    the cluster's errors while chunks render are said in words."""
    try:
        from dask.distributed import Client, KilledWorker
    except ImportError:
        raise _missing_extra("dask") from None
    try:
        client = Client(address) if address else Client(processes=True, n_workers=1, threads_per_worker=1)
    except (ValueError, OSError, TimeoutError) as exc:
        raise OccsynthError(f"{SCHEDULER} {address!r}: cannot connect to a dask scheduler "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    where = f"{SCHEDULER} {address}" if address else "the local dask cluster"
    with client:
        _check_cluster(lambda timeout: client.submit(_worker_renderer, pure=False).result(timeout=timeout), where,
                       "its scheduler and workers")
        try:
            yield client
        except CancelledError as exc:  # the scheduler went away
            raise _cluster_lost(where, exc) from None
        except KilledWorker as exc:  # a chunk the scheduler gave up on: its workers died on it, each time
            raise _workers_died(where, exc) from None


@contextlib.contextmanager
def _ray_session(address: str | None, workers: int) -> Iterator[None]:
    """Connect to the ray head at ``address``, or start a local ray of ``workers`` CPUs (capped to the usable
    cores), and run :func:`_check_cluster` on it; either is left at the end. A ray this process already runs (a
    notebook's ``ray.init``) is used as is, and kept (an ``address`` beside it is refused). The cluster's errors while chunks render are said in words."""
    try:
        import ray
    except ImportError:
        raise _missing_extra("ray") from None
    started = not ray.is_initialized()
    if started:
        _ray_init(address, workers)
    elif address:  # it would be ignored: ray.init connects a process once
        raise OccsynthError(f"{SCHEDULER} {address}: this process already runs ray (ray.init), which is used as it "
                            "is: give no scheduler address to render on it, or call ray.shutdown() first")
    where = (f"{SCHEDULER} {address}" if address else "the local ray" if started
             else "the ray of this process (ray.init)")
    try:
        _check_cluster(_ray_trial, where, "its nodes")
        try:
            yield
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError) as exc:  # after ray's retries
            raise _workers_died(where, exc) from None
        except ray.exceptions.RayError as exc:  # the head or a node lost (LocalRayletDiedError, NodeDiedError, ...)
            raise _cluster_lost(where, exc) from None
    finally:
        if started:
            ray.shutdown()


def _ray_init(address: str | None, workers: int) -> None:
    """``ray.init``: a new local ray of ``workers`` CPUs, or the head at ``address`` (one that cannot be reached is
    refused in words). The command's Ctrl-C and SIGTERM handlers are kept: ray's SIGTERM handler exits at once,
    skipping the message that says what a stopped run kept."""
    import ray
    handlers = _signal_handlers()
    try:
        if not address:  # "local": a new ray, even where `ray start` runs one on this machine
            ray.init(address="local", num_cpus=local_workers(workers), include_dashboard=False,
                     logging_level=logging.WARNING)
            return
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise _unreachable(address, exc) from None
    finally:
        _restore_signal_handlers(handlers)


def _signal_handlers() -> dict[int, object]:
    """This process's Ctrl-C and SIGTERM handlers (none where only the main thread may set them)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers: dict[int, object]) -> None:
    for signum, handler in handlers.items():
        if handler is not None:  # None: set outside Python, cannot be set again from here
            signal.signal(signum, handler)


def _check_reachable(address: str, timeout: float = 5) -> None:
    """Refuse a ``host:port`` head address where nothing accepts a connection: ray.init retries one for minutes
    (20 tries of its own timeout), its log lines filling the screen. Other forms ('auto') are ray's to find."""
    match = re.fullmatch(r"(?:[a-z]+://)?\[?([^\[\]/]+?)\]?:(\d+)/?", address)
    if match is None:
        return
    if int(match[2]) > 65535:  # getaddrinfo would take it modulo 65536: another port's listener would answer
        raise OccsynthError(f"{SCHEDULER} {address!r}: cannot connect to a ray head (port {match[2]} is past 65535)")
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as exc:
        raise _unreachable(address, exc) from None


def _unreachable(address: str, exc: Exception) -> OccsynthError:
    """The refusal of a ray head address, and what to do where the head asks for a token (ray's token auth)."""
    token = any("AuthToken" in str(cause) for cause in _causes(exc))
    return OccsynthError(f"{SCHEDULER} {address!r}: cannot connect to a ray head ({_cluster_said(exc)})" + (
        "; the head asks for its token: run with RAY_AUTH_MODE=token, its token in ~/.ray/auth_token or "
        "$RAY_AUTH_TOKEN" if token else ""))


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from (or while handling)."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _ray_trial(timeout: float) -> int:
    """:func:`_worker_renderer` run as one ray task (cancelled if it does not finish in ``timeout`` s)."""
    import ray
    trial = ray.remote(_worker_renderer).remote()
    try:
        return _ray_result(trial, timeout)
    except TimeoutError:
        ray.cancel(trial)
        raise


def _ray_result(ref, timeout: float | None = None):
    """``ray.get``, a task's own error raised as the task raised it: ray's wrapper of it says the worker's
    traceback (an OccsynthError's message would be printed with it), and is no BadRecord to stop a loky run."""
    import ray
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        raise (exc.cause if isinstance(exc.cause, BaseException) else exc) from None


CLUSTER_TRIAL_S = 120  # how long the trial task may wait for a worker (a cluster's workers may start slowly)


def _check_cluster(trial: Callable[[float], int], where: str, nodes: str) -> None:
    """Run one task on a dask or ray cluster (``trial(timeout)`` returns its result) before any chunk: a cluster
    without occsynth in its environment fails it at once (joblib waited for dask's chunks forever), the worker
    that runs it must be of this renderer (another one's images differ), and a cluster where no worker runs it
    within :data:`CLUSTER_TRIAL_S` (none started, or each that took it could not import occsynth and left: dask
    then waits for ever, and ray for a free CPU) is refused in words, not left hanging. ``nodes`` names what needs
    occsynth installed."""
    from .generate import RENDERER  # imported here: generate imports this module
    timeout = CLUSTER_TRIAL_S
    try:
        renderer = trial(timeout)
    except (TimeoutError, asyncio.TimeoutError):  # dask raises asyncio's: not TimeoutError before Python 3.11
        raise OccsynthError(f"{where}: no worker of the cluster ran a first task in {timeout:g} s: none has started, "
                            "or those that took it could not import occsynth (its workers need this occsynth "
                            "installed; their logs say why they left)") from None
    except Exception as exc:  # raised by the cluster: the task's error, or the scheduler's on reading it
        raise OccsynthError(f"{where}: the cluster cannot run occsynth's tasks ({_cluster_said(exc)}); {nodes} "
                            "need this occsynth installed (the environment of this command)") from None
    if renderer != RENDERER:
        raise OccsynthError(f"{where}: a worker runs another occsynth (renderer {renderer}, this one {RENDERER}), "
                            "whose images differ for the same arguments; install this occsynth on the cluster")


def _cluster_lost(where: str, exc: Exception) -> OccsynthError:
    """The cluster went away while chunks rendered: what was rendered is kept, and the same command continues."""
    return OccsynthError(f"{where}: the cluster stopped running this run's chunks ({_cluster_said(exc)}); the chunks "
                         "it finished are kept: run the same command again to continue")


def _workers_died(where: str, exc: Exception) -> OccsynthError:
    """The cluster gave up on a chunk whose workers died each time: running it again may not help by itself."""
    return OccsynthError(f"{where}: workers died on a chunk each time it ran ({_cluster_said(exc)}); the chunks "
                         "finished are kept: see the workers' logs (out of memory?), and --strict names a bad record, "
                         "before the same command continues the run")


def _cluster_said(exc: Exception) -> str:
    """'Type: first sentence' of an error a cluster raised (dask's own run over lines and end with a link)."""
    text = " ".join(str(exc).split()).split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _worker_renderer() -> int:
    """On a cluster's worker: the renderer revision of the occsynth it imports (:func:`_check_cluster`)."""
    from .generate import RENDERER  # imported here: generate imports this module
    return RENDERER
