"""Atomic file writes: a file is either absent or complete, never half-written.

Data goes to a temporary file in the same directory, is flushed to disk (unless the caller
says ``durable=False``), and is renamed over the target. A crash, kill -9 or full disk leaves at
most a stray ``.*.tmp-*`` file, which the next run deletes.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import functools
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import NoRoom, OccsynthError, dangling_link, os_error_reason


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", *, durable: bool = True,
                locked: bool = False) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` only when the block exits cleanly.

    ``durable=False`` skips the fsync: the file is still never seen half-written, by another process
    or after a kill, but a power cut may lose it or leave it empty. For records that can be made again.
    ``locked``: hold a lock on the temporary while writing (:func:`hold_lock`), so that a later
    :func:`remove_orphaned_temporaries` of a command writing the same file leaves it alone.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        create = functools.partial(_new_temporary, path, mode)
        f, held = _open_locked(create, hold_lock) if locked else (create(), False)
        tmp = Path(f.name)
        with f:
            try:
                yield f
            except BaseException:
                # the block's own error is the one to report: closing may fail too (what the block wrote
                # does not fit on a full disk) and would replace it, e.g. an image's write failing while a
                # merge holds this file open would be said of this file
                with contextlib.suppress(OSError):
                    f.close()
                raise
            f.flush()
            if durable:
                os.fsync(f.fileno())
            if held:  # renamed while still locked: closing first would let a clean-up take it in between
                os.replace(tmp, path)
        if not held:
            os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            _remove_quietly(tmp)
        raise _disk_error(path, exc) from None
    except BaseException:
        if tmp is not None:
            _remove_quietly(tmp)
        raise


def _new_temporary(path: Path, mode: str) -> IO:
    """A new temporary file beside ``path``, opened for writing. Its name is unique across machines too:
    shards on several hosts (containers often share pids) may write the same run file into one shared
    OUT at the same moment; "x" refuses to reuse a name."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    return open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"}))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with open_atomic(path, "wb") as f:
        f.write(data)


class BackgroundWriter:
    """:func:`write_bytes` from one background thread, in order, so that the wait for the disk overlaps
    the caller's next piece of work instead of adding to it.

    A failed write (e.g. a full disk) is raised by :meth:`raise_failed` or a later :meth:`submit` once
    it has happened, or by :meth:`wait`. Leaving the ``with`` block waits for every write submitted;
    a clean exit also raises a failed one (as :meth:`wait`), an exit on an error leaves that error be.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="occsynth-write")
        self._pending: collections.deque[Future] = collections.deque()

    def raise_failed(self) -> None:
        """Raise the error of a write that has already failed (without waiting for the others)."""
        while self._pending and self._pending[0].done():  # one thread: writes finish in order
            self._pending.popleft().result()

    def submit(self, path: str | os.PathLike, data: bytes) -> None:
        self.raise_failed()  # fail early: stop making files once a write has failed
        self._pending.append(self._pool.submit(write_bytes, path, data))

    def wait(self) -> None:
        """Return once every submitted file is written; raise the first failed write's error."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None, *, durable: bool = True,
               locked: bool = False) -> None:
    # json.dumps uses the C encoder; json.dump streams through the slow pure-Python one
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"))
    with open_atomic(path, "w", durable=durable, locked=locked) as f:
        f.write(text)


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p`` whose failure is an :class:`OccsynthError` naming the folder and why (a file standing in
    its way is named): the bare OSError says only "File exists", without the path where it came from."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OccsynthError(f"cannot make folder {path}: {os_error_reason(exc, making_folder=True)}") from None
    return path


def check_writable(folder: str | os.PathLike) -> None:
    """An :class:`OccsynthError` naming ``folder`` unless a file can be made and dropped there: a folder that exists
    (or that :func:`make_folder` just passed) may still be read-only, as a folder or as a mount."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OccsynthError(f"cannot write into {folder}: {os_error_reason(exc)}") from None


def format_size(n: int) -> str:
    """Bytes as people read them: GiB or MiB with two decimals, else the byte count."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:,} bytes"


def require_room(folder: str | os.PathLike, needed: int, what: str, advice: str, shown: str | os.PathLike | None = None
                 ) -> None:
    """Refuse (:class:`NoRoom`), before anything is written, work that needs more than ``folder``'s file system has
    free: "``what`` SIZE in ``shown`` (default ``folder``), which has SIZE free: ``advice``" (``what`` ends in its
    verb: "the store needs", "the copies need about")."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise NoRoom(f"{what} {format_size(needed)} in {shown if shown is not None else folder}, which has "
                     f"{format_size(free)} free: {advice}")


def build_dir_once(target: str | os.PathLike, marker: str, build: Callable[[Path], Any],
                   damage: Callable[[Path], str | None] | None = None, entries: re.Pattern | None = None) -> Path:
    """A folder ``build`` fills, made in a temporary sibling and renamed into place; reused when
    ``target/marker`` exists and ``damage(target)`` (if given) finds nothing wrong. A half-built folder
    is never used, and concurrent first builds do not collide (the loser uses the winner's folder).
    One damaged since it was built (a file deleted by hand) is moved aside and built again.

    It first removes what killed builds and removals left beside the entries whose names ``entries`` matches
    (default: ``target``'s alone; :func:`remove_orphaned_builds`): a killed build may have left gigabytes, which
    ``build``'s check of the disk's room then counts as free. The temporary sibling's ``LOCK_FILE`` is held (and
    names this process and host) while ``build`` runs, so that the clean-up of a build starting meanwhile (another
    shard's, on this host or another) leaves it alone (:func:`left_behind`)."""
    target = Path(target)
    remove_orphaned_builds(target.parent, entries or re.compile(re.escape(target.name)))
    if (target / marker).is_file():
        if damage is None or damage(target) is None:
            return target
        _discard(target)
    make_folder(target.parent)
    with locked_spool(target.parent, f".{target.name}.tmp-") as tmp:
        build(tmp)
        # no part of the entry; its lock stays held until the rename, and a clean-up finding no lock file leaves
        # the folder alone for an hour. Where no lock is held (Windows) the file is closed: removable there too
        (tmp / LOCK_FILE).unlink()
        try:
            os.rename(tmp, target)
        except OSError:
            if (target / marker).is_file():
                return target  # a concurrent build finished first: use it
            if not target.is_dir() or target.is_symlink():
                raise
            # a folder only ever appears here whole: one without its marker was damaged since (e.g. a file
            # deleted by hand); it is moved aside, not used, and the new build takes its place
            _discard(target)
            os.rename(tmp, target)
    return target


def _discard(folder: Path) -> None:
    """Move a damaged built folder aside (so no run uses it from now on), then remove it."""
    damaged = folder.with_name(f".{folder.name}.damaged-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(folder, damaged)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(damaged, ignore_errors=True)


def remove_stale_temporaries(directory: str | os.PathLike, owned: Callable[[str], bool] | None = None) -> int:
    """Delete ``.*.tmp-*`` leftovers of killed runs; returns how many were removed.

    ``owned(target_name)`` limits it to the temporaries of files the caller alone writes, when other
    processes may be writing theirs into the same directory now (shards sharing one output).
    """
    n = 0
    for tmp in Path(directory).rglob(".*.tmp-*"):
        if _temporary_of(tmp.name, owned or (lambda name: True)):
            _remove_quietly(tmp)
            n += 1
    return n


LOCK_FILE = ".lock"  # in a spool folder: held (flock) by the process writing there


def hold_lock(f: IO) -> bool:
    """Take an exclusive ``flock`` on an open file (or fd) for as long as it stays open; the kernel drops
    it when the process ends, kill -9 too. :func:`remove_orphaned_temporaries` leaves a locked file or
    spool alone, whichever host holds it (on file systems whose locks reach every host). It waits for a
    clean-up's probe, which holds the file for microseconds. Returns False where there are no locks
    (Windows, a file system without them)."""
    try:
        import fcntl
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        return True
    except (ImportError, OSError):
        return False


@contextlib.contextmanager
def locked_spool(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new temporary folder in ``parent`` named ``prefix`` + random, whose ``LOCK_FILE`` this process holds
    (:func:`hold_lock`) and names itself in (:func:`name_lock_holder`: "pid N on HOST") until the block ends, so
    that :func:`remove_orphaned_temporaries` of another run leaves it alone, and :func:`left_behind` can tell a
    folder of a build killed on this host; it is removed at the end. A folder a clean-up removed before the lock
    was taken is made again. Where there are no locks (Windows) the lock file is closed at once: nothing holds it,
    and an open file cannot be removed there. OSError where it cannot be made."""
    lock, held = _open_locked(lambda: open(Path(tempfile.mkdtemp(prefix=prefix, dir=parent)) / LOCK_FILE, "w"),
                              hold_lock)
    folder = Path(lock.name).parent
    try:
        with contextlib.ExitStack() as stack:
            if held:
                stack.enter_context(lock)
                name_lock_holder(lock, stack)
            else:
                lock.close()
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)  # a file system without flock
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)  # a folder in which no file can be made


@contextlib.contextmanager
def run_lock_file(path: str | os.PathLike, refuse: Callable[[str], Exception]) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the file ``path`` (made if missing) while the block runs, so that a second
    run of the same work fails at once instead of writing beside the first: ``refuse(holder)`` is raised when
    another process holds it, ``holder`` being what that process wrote there ("pid 12 on host"; "" if nothing).

    This process writes itself into the file and empties it before letting go; the kernel drops the lock
    when the process ends (kill -9 too), so a killed holder's name is stale text the next run replaces.
    Yields whether the lock is held: not where ``fcntl`` is missing (Windows), nor (with a warning) on a file
    system without locks. A file that cannot be opened (a folder or a dangling link in its place) is an
    :class:`OccsynthError` naming it. A lock file unlinked by its holder before letting go is made again."""
    path = Path(path)
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with contextlib.ExitStack() as held:
        try:
            f = held.enter_context(lock_file_now(path, fcntl.LOCK_EX))
        except BlockingIOError:
            raise refuse(lock_holder(path)) from None
        except OSError as exc:
            lock_failed(exc, path.parent)
            f = None
        if f is not None:
            name_lock_holder(f, held)
        yield f is not None


def lock_file_now(path: str | os.PathLike, mode: int) -> IO:
    """The file ``path`` opened (made if missing) and locked with ``mode`` (``fcntl.LOCK_EX`` or ``LOCK_SH``) without
    waiting; BlockingIOError where another process holds a lock in the way. One its holder removed (and the folder
    with it) while this process opened it, the holder letting go of a folder it made for nothing
    (:func:`locked_output_folder`), is made again."""
    return _open_locked(functools.partial(_open_lock_file, Path(path)), functools.partial(_flock_now, mode=mode))[0]


def _open_lock_file(path: Path) -> IO:
    """``path`` opened for :func:`lock_file_now`; a folder removed meanwhile by the command letting go of it is
    made again."""
    try:
        return open(path, "a+")
    except FileNotFoundError:
        if os.path.lexists(path.parent):
            raise  # e.g. a link to a missing path in the file's place: :func:`lock_failed` names it
        make_folder(path.parent)
        return open(path, "a+")


def _flock_now(f: IO, mode: int) -> bool:
    """A lock for :func:`_open_locked` that does not wait: BlockingIOError where another process holds one."""
    import fcntl
    fcntl.flock(f, mode | fcntl.LOCK_NB)
    return True


def lock_holder(path: str | os.PathLike) -> str:
    """What the process holding the lock file ``path`` wrote there (:func:`name_lock_holder`); "" if nothing."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def name_lock_holder(f: IO, held: contextlib.ExitStack) -> None:
    """Write this process into a lock file it holds exclusively ("pid N on HOST", see ``HOLDER``), for whoever
    finds the lock taken; emptied again before the lock is let go (``held`` closes the file after the callback
    runs). A process killed -9 leaves its name there until the next holder replaces it."""
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    held.callback(f.truncate, 0)


HOLDER = re.compile(r"pid \d+ on (?P<host>.+)")  # what :func:`name_lock_holder` writes


def _names_this_host(lock_path: str | os.PathLike) -> bool:
    """Whether the lock file ``lock_path`` names a process of this host (:func:`name_lock_holder`)."""
    holder = HOLDER.fullmatch(lock_holder(lock_path))
    return holder is not None and holder["host"] == socket.gethostname()


def lock_failed(exc: OSError, folder: str | os.PathLike) -> None:
    """After a lock in ``folder`` failed with ``exc``: warn and return where its file system has no locks (the
    run goes on unguarded); else an :class:`OccsynthError` naming the lock file (or the folder) and why."""
    made_there = exc.filename and Path(exc.filename).parent == Path(folder) and not os.path.lexists(exc.filename)
    if exc.errno == errno.EROFS or (exc.errno in _READ_ONLY and made_there):  # the folder (or its mount) is to fix
        raise OccsynthError(f"cannot write into {folder}: {os_error_reason(exc)}") from None
    if exc.errno not in _NO_LOCKS:
        where = exc.filename or folder
        why = (exc.filename and dangling_link(exc.filename)) or os_error_reason(exc)
        raise OccsynthError(f"cannot lock {where}: {why}") from None
    warnings.warn(f"{folder}: the file system does not support locks ({exc.strerror}); running without the "
                  "guard against a second run of the same work", stacklevel=4)


@contextlib.contextmanager
def locked_output_folder(path: str | os.PathLike, refuse: Callable[[str], Exception]) -> Iterator[Path]:
    """The folder ``path`` (made if missing: :func:`make_folder`) held by this process (:func:`run_lock_file` on its
    ``LOCK_FILE``) for the block: a second command writing the same folder meanwhile gets ``refuse(holder)`` before
    it touches anything. Then a file is made and dropped there (:func:`check_writable`): an --out that cannot be
    written (a read-only folder or mount) fails before a long computation, not after it.

    A folder made here that holds nothing but the lock file at the end (the block failed, or wrote nothing) is
    removed again: the lock file first, while held, then the folder if still empty. A command starting meanwhile
    opens a new lock file (and makes the folder again) where it finds the one it opened removed
    (:func:`lock_file_now`), and checks the folder only once it holds it, when no one removes it any more."""
    path = Path(path)
    made = not os.path.lexists(path)
    held = False
    try:
        with run_lock_file(make_folder(path) / LOCK_FILE, refuse):
            held = True
            try:
                check_writable(path)
                yield path
            finally:
                if made:
                    _remove_if_only_lock(path)
    except BaseException:
        if made and not held:  # the lock could not be taken: the folder made for it goes, if still empty (once held,
            with contextlib.suppress(OSError):  # _remove_if_only_lock did it, and the next command may own it now)
                path.rmdir()
        raise


def _remove_if_only_lock(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but its ``LOCK_FILE`` (held by this process, where there are locks)."""
    with contextlib.suppress(OSError):
        if set(os.listdir(folder)) <= {LOCK_FILE}:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            folder.rmdir()


def _open_locked(open_file: Callable[[], IO], lock: Callable[[IO], bool]) -> tuple[IO, bool]:
    """(a file ``open_file`` opens, whether ``lock(f)`` locked it: False where there are no locks). A file found
    unlinked once locked, or when its lock was refused, is opened again (``open_file`` makes a new one): its holder
    removed it before letting go (:func:`locked_output_folder`), or a clean-up that probed it before the lock was
    taken removed it while it held its probe's lock, which the lock waited for (:func:`_remove_if_unlocked`)."""
    for _ in range(8):
        f = open_file()
        try:
            locked = lock(f)
        except BlockingIOError:
            gone = os.fstat(f.fileno()).st_nlink == 0
            f.close()
            if gone:
                continue
            raise
        except BaseException:
            f.close()
            raise
        if not locked or os.fstat(f.fileno()).st_nlink > 0:
            return f, locked
        f.close()
    raise OSError(errno.EBUSY, "each file opened was removed by another process before it could be locked")


def remove_orphaned_temporaries(path: str | os.PathLike, spool_prefix: str | None = None, *,
                                names: re.Pattern[str] | None = None) -> int:
    """Delete what killed runs left beside ``path``: its temporaries (``.NAME.tmp-*``) and, with
    ``spool_prefix``, folders whose name starts with it, each only when no process holds its lock (the
    writer's :func:`hold_lock` on the temporary, or on the folder's ``LOCK_FILE``); returns how many were
    removed. For commands that write one file (no run folder to sweep). Where locks cannot be taken
    nothing is removed: whether its writer still runs cannot be known.

    ``names``: ``path`` is a folder, and the temporaries swept there are those of every file whose name matches
    (a command writing a family of files into a folder others may write too: only its own are its to remove)."""
    path = Path(path)
    folder = path if names is not None else path.parent
    n = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if _temporary_of(entry.name, names.fullmatch if names is not None else path.name.__eq__):
            n += _remove_if_unlocked(entry.path, lambda: _remove_quietly(Path(entry.path)))
        elif spool_prefix and entry.name.startswith(spool_prefix):
            n += _remove_spool_if_unlocked(entry.path)
    return n


def _temporary_of(name: str, owned: Callable[[str], object]) -> bool:
    """Whether ``name`` is a temporary (:func:`_new_temporary`'s ``.NAME.tmp-*``) of a file whose name ``owned``
    accepts."""
    at = name.rfind(".tmp-")
    return name.startswith(".") and at > 0 and bool(owned(name[1:at]))


# what is left beside an entry NAME (build_dir_once's) while it is built (tmp: a locked spool), discarded when
# damaged (damaged) or removed by `occsynth cache` (removing); a killed run leaves it for good
UNFINISHED = re.compile(r"\.(?P<entry>[^.]+)\.(?P<state>tmp|removing|damaged)-.*")
STOPPED_AFTER_S = 3600  # an unfinished build or removal unchanged this long was stopped, whichever host ran it


def left_behind(path: str | os.PathLike) -> bool:
    """Whether ``path`` (named as ``UNFINISHED`` says) was left by a stopped run: what removes it loses nothing
    a running one needs. Both the sweep before a build (:func:`remove_orphaned_builds`) and `occsynth cache`
    (stale) judge by it; see :func:`_judge_left_behind`."""
    with _judge_left_behind(path) as left:
        return left


@contextlib.contextmanager
def _judge_left_behind(path: str | os.PathLike) -> Iterator[bool]:
    """:func:`left_behind` for the block, during which a build folder judged so stays unlocked (this probe holds
    its lock: a build taking it meanwhile waits, then finds its folder gone and makes another).

    A folder moved aside to be removed (removing, damaged) always is: nothing reads one, and its remover tolerates
    the race. A build's temporary folder (tmp) never while a process holds its ``LOCK_FILE``; once no process
    does, if that file names this host (a build killed here: a probe here sees every lock of this host), else once
    nothing in it changed for ``STOPPED_AFTER_S`` (:func:`stopped`). Where locks do not reach other hosts (NFS
    mounted nolock or local_lock) another host's running build looks unlocked here; so does any build where there
    are no locks (Windows); and a folder without a lock file (an older occsynth's) or without a name in it (a build
    that has not written it yet) says nothing about its build."""
    match = UNFINISHED.fullmatch(os.path.basename(path))
    if match is None or match["state"] != "tmp":
        yield match is not None
        return
    lock = os.path.join(path, LOCK_FILE)
    with _probe_lock(lock) as free:
        yield free is not False and bool((free and _names_this_host(lock)) or stopped(path))


def stopped(path: str | os.PathLike) -> bool:
    """Whether nothing in ``path`` (nor the folder itself) changed for ``STOPPED_AFTER_S``."""
    try:
        last = os.lstat(path).st_mtime
    except OSError:
        return False
    return time.time() - max([last, *(st.st_mtime for st in file_stats(path))]) > STOPPED_AFTER_S


def file_stats(path: str | os.PathLike) -> list[os.stat_result]:
    """os.lstat of every file under ``path``, skipping those removed while walking."""
    stats = []
    for root, _, files in os.walk(path):
        for name in files:
            try:
                stats.append(os.lstat(os.path.join(root, name)))
            except OSError:
                pass
    return stats


def remove_orphaned_builds(folder: str | os.PathLike, entries: re.Pattern) -> int:
    """Delete what killed runs left in ``folder`` beside the entries whose names ``entries`` matches in full
    (see ``UNFINISHED``), what :func:`left_behind` says a stopped run left: a build running now (another shard's,
    on this host or another) keeps its folder. Returns how many were removed. Other names are left be: ``folder``
    may be the user's own (a --cache-dir given by mistake)."""
    try:
        found = list(os.scandir(folder))
    except OSError:
        return 0
    n = 0
    for entry in found:
        match = UNFINISHED.fullmatch(entry.name)
        if match is None or not entries.fullmatch(match["entry"]):
            continue
        with _judge_left_behind(entry.path) as left:
            if left:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    _remove_quietly(Path(entry.path))
                n += 1
    return n


def _remove_spool_if_unlocked(folder: str) -> bool:
    """Remove a spool folder (:func:`locked_spool`) whose ``LOCK_FILE`` no process holds."""
    return _remove_if_unlocked(os.path.join(folder, LOCK_FILE), lambda: shutil.rmtree(folder, ignore_errors=True))


def _remove_if_unlocked(lock_path: str, remove: Callable[[], None]) -> bool:
    """Run ``remove`` if no process holds a lock on the file at ``lock_path``, while this probe holds one,
    so that a writer taking its lock meanwhile waits, then finds its file gone (see :func:`_open_locked`). Where
    whether one does cannot be told (no locks, no such file) nothing is removed."""
    with _probe_lock(lock_path) as free:
        if free:
            remove()
        return bool(free)


@contextlib.contextmanager
def _probe_lock(lock_path: str) -> Iterator[bool | None]:
    """Whether no process holds a lock on the file at ``lock_path``: True (this probe then holds one until the
    block ends), False where one does, None where it cannot be told (no such file; no locks: Windows, a file
    system without them).

    A shared lock, not blocking: it conflicts with a writer's exclusive one, and unlike an exclusive one it
    can be taken on a file opened read-only over NFS (which emulates flock with whole-file POSIX locks)."""
    try:
        import fcntl
        fd = os.open(lock_path, os.O_RDONLY)
    except (ImportError, OSError):
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        except OSError:
            free = None
        yield free
    finally:
        os.close(fd)  # and with it the lock just taken


def _disk_error(path: Path, exc: OSError) -> OccsynthError:
    if exc.errno == errno.ENOSPC:
        why = "no space left on device; free some space and run the same command again to continue"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "output location is not writable"
    else:  # an EEXIST here is the folder's: the temporary file's name is unique
        why = os_error_reason(exc, making_folder=True)
    return OccsynthError(f"cannot write {path}: {why}")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
