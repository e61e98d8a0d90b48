"""Faults survived by `occsynth generate`: kill -9, full disk, unwritable output, a dask or ray cluster.

Each test compares the finished set byte for byte with an uninterrupted run.
"""
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from cli.occsynth_cli import main as occsynth_main
from conftest import remove_loky_leftovers
from occsynth import atomic, backends, writer
from occsynth.errors import OccsynthError
from occsynth.generate import RunSettings, generate

N_IMAGES = 40
SETTINGS = RunSettings(num_images=N_IMAGES, seed=11, chunk_size=4)


def tree_bytes(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def error_after_one_chunk(error: BaseException):
    """A stand-in for generate's _finished_chunks that yields the first chunk finished, then raises ``error``: what
    a cluster lost midway raises."""
    from occsynth import generate as generate_module
    real = generate_module._finished_chunks

    def one_then_error(*args, **kwargs):
        finished = real(*args, **kwargs)
        yield next(finished)
        finished.close()
        raise error
    return one_then_error


@pytest.fixture(scope="module")
def reference(demo_source, tmp_path_factory):
    ann, root = demo_source
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("ref") / "out"
    generate(out, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    # chunk_size is a run setting; a recipe passes it on, so that CLI runs match SETTINGS
    recipe = tmp_path_factory.mktemp("recipe") / "chunks.toml"
    recipe.write_text(f"[run]\nchunk_size = {SETTINGS.chunk_size}\n")
    return out, cache, recipe


def cli_args(ann, root, out, cache, workers=1, recipe=None):
    return ["generate", "--ann", str(ann), "--images", str(root), "--out", str(out), "--num-images", str(N_IMAGES),
            "--seed", "11", "--cache-dir", str(cache), "--workers", str(workers), "--quiet",
            *(["--recipe", str(recipe)] if recipe else [])]


def test_kill_9_then_rerun_gives_identical_set(reference, demo_source, tmp_path):
    ref, cache, recipe = reference
    ann, root = demo_source
    out = tmp_path / "killed"
    args = cli_args(ann, root, out, cache, workers=2, recipe=recipe)
    code = "import sys; from cli.occsynth_cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    target = 1 + int.from_bytes(os.urandom(1), "little") % 6       # a random point: after 1..6 of 10 chunks
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "parts").glob("chunk-*.json"))) >= target:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    remove_loky_leftovers(proc.pid)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "annotations.json").exists()
    result = CliRunner().invoke(occsynth_main, cli_args(ann, root, out, cache, recipe=recipe))
    assert result.exit_code == 0, result.output
    assert tree_bytes(out) == tree_bytes(ref)


def test_sigterm_stops_a_run_like_ctrl_c_and_the_rerun_completes(reference, demo_source, tmp_path):
    """Batch schedulers stop a task with SIGTERM: the run unwinds (message, no traceback, no merged file;
    a worker stopped mid-write may leave a temporary) and the same command then completes the set."""
    ref, cache, recipe = reference
    ann, root = demo_source
    out = tmp_path / "stopped"
    args = cli_args(ann, root, out, cache, workers=2, recipe=recipe)
    code = "import sys; from cli.occsynth_cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list((out / "parts").glob("chunk-*.json")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # the parent alone, as `kill PID` does
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, "the run finished before it could be stopped"
    assert "run the same command again to continue" in stderr and "Traceback" not in stderr
    assert stderr.rstrip().endswith("Stopped (SIGTERM).")
    assert not (out / "annotations.json").exists()
    result = CliRunner().invoke(occsynth_main, args)
    assert result.exit_code == 0, result.output
    assert tree_bytes(out) == tree_bytes(ref) and not list(out.rglob(".*.tmp-*"))


HOLD_LOCK = ("import sys, time; from occsynth import writer; "
             "held = writer.run_lock(sys.argv[1], (int(sys.argv[2]), int(sys.argv[3]))); held.__enter__(); "
             "print('held', flush=True); time.sleep(300)")


def test_the_same_work_started_twice_is_refused_while_the_first_runs(reference, demo_source, tmp_path):
    """A batch scheduler may start a shard again while its first attempt still runs: the second stops at once."""
    ref, cache, recipe = reference
    ann, root = demo_source
    out = tmp_path / "out"
    args = cli_args(ann, root, out, cache, recipe=recipe)
    merge = ["merge", str(out), "--out", str(out), "--quiet"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), "1", "2"], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)  # shard 1/2, running in another process
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_bytes(out)
        again = CliRunner().invoke(occsynth_main, args + ["--shard", "1/2"])
        assert again.exit_code == 2 and f"shard 1/2 (pid {holder.pid} on " in again.output
        assert "Traceback" not in again.output
        whole = CliRunner().invoke(occsynth_main, args)
        assert whole.exit_code == 2 and "a shard of this set is running there" in whole.output
        assert tree_bytes(out) == before
        other_split = CliRunner().invoke(occsynth_main, args + ["--shard", "0/3"])  # its chunks overlap shard 1/2's
        assert other_split.exit_code == 2 and "a shard of another split" in other_split.output
        beside = CliRunner().invoke(occsynth_main, args + ["--shard", "0/2"])  # another shard runs beside it
        assert beside.exit_code == 0, beside.output
        early = CliRunner().invoke(occsynth_main, merge)
        assert early.exit_code == 2 and "another occsynth process" in early.output
        assert not (out / "annotations.json").exists()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    # the kernel drops the lock of a killed process: an unsharded run now renders what shard 1/2 left
    # and merges; the shard lock files go (no shard can be running), so the set is the reference's
    assert (out / "parts" / ".lock-shard-1-of-2").read_text() == f"pid {holder.pid} on {socket.gethostname()}"
    assert CliRunner().invoke(occsynth_main, args).exit_code == 0
    assert tree_bytes(out) == tree_bytes(ref)


def test_a_shard_started_while_an_unsharded_run_holds_out_names_that_run(demo_source, tmp_path):
    ann, root = demo_source
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), "0", "1"], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        shard = CliRunner().invoke(occsynth_main, cli_args(ann, root, out, tmp_path / "c") + ["--shard", "1/2"])
        assert shard.exit_code == 2
        assert f"an unsharded run or a merge (pid {holder.pid} on {socket.gethostname()})" in shard.output
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    # the killed holder's name is left in the file: the next run replaces it, and empties it when done
    assert CliRunner().invoke(occsynth_main, cli_args(ann, root, out, tmp_path / "c")).exit_code == 0
    assert (out / "parts" / ".lock").read_text() == ""


def test_a_file_system_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    failure = {"errno": errno.ENOLCK}

    def flock(*args):
        raise OSError(failure["errno"], os.strerror(failure["errno"]))

    monkeypatch.setattr(fcntl, "flock", flock)
    for shard in ((0, 1), (1, 2)):
        with pytest.warns(UserWarning, match="does not support locks"):
            with writer.run_lock(tmp_path / "out", shard):
                pass
    failure["errno"] = errno.EIO  # any other failure is an error
    with pytest.raises(OccsynthError, match="cannot lock"):
        with writer.run_lock(tmp_path / "out"):
            pass


@pytest.mark.parametrize("blocker", ["folder", "dangling link"])
def test_a_lock_file_that_cannot_be_opened_is_named(demo_source, tmp_path, blocker):
    """OUT/parts/.lock as a folder (or a link to nothing) said "cannot lock OUT/parts: Is a directory" ("No such
    file or directory"): the folder, not the file in the way."""
    pytest.importorskip("fcntl")
    lock = tmp_path / "out" / writer.PARTS / writer.LOCK_FILE
    lock.parent.mkdir(parents=True)
    lock.mkdir() if blocker == "folder" else lock.symlink_to(tmp_path / "gone" / "lock")
    why = "Is a directory" if blocker == "folder" else f"{lock} is a link to a missing path ({tmp_path / 'gone' / 'lock'})"
    with pytest.raises(OccsynthError) as exc:
        with writer.run_lock(tmp_path / "out"):
            pass
    assert str(exc.value) == f"cannot lock {lock}: {why}"


def test_a_locked_output_folder_refuses_a_second_holder_and_removes_a_folder_it_made_for_nothing(tmp_path):
    """The generic part of run locks (writer.run_lock's unsharded path, bcnet's --out): held, named, let go."""
    pytest.importorskip("fcntl")
    out = tmp_path / "out"

    def refuse(holder):
        return OccsynthError(f"{out} is held by {holder}")

    with atomic.locked_output_folder(out, refuse):
        assert (out / atomic.LOCK_FILE).read_text() == f"pid {os.getpid()} on {socket.gethostname()}"
        with pytest.raises(OccsynthError, match=f"is held by pid {os.getpid()} on {socket.gethostname()}$"):
            with atomic.locked_output_folder(out, refuse):  # another open of the file: refused as another process
                raise AssertionError("ran beside the holder")
    assert not out.exists()  # made for a block that wrote nothing there
    with atomic.locked_output_folder(out, refuse):
        (out / "result.txt").write_text("done")
    assert (out / atomic.LOCK_FILE).read_text() == "" and (out / "result.txt").read_text() == "done"


def test_an_out_in_which_no_lock_file_can_be_made_is_named_as_not_writable(tmp_path, monkeypatch):
    """bcnet train/evaluate/predict --out on a read-only mount said "cannot lock OUT/.lock: Read-only file system",
    naming a file the user never asked for; now the folder, as every other command says it. A lock file that exists
    but cannot be opened is still named itself."""
    pytest.importorskip("fcntl")
    import builtins
    out = tmp_path / "out"
    out.mkdir()
    failure = {"errno": errno.EROFS}

    def fake_open(path, *args, **kwargs):
        if Path(path).name == atomic.LOCK_FILE:
            raise OSError(failure["errno"], os.strerror(failure["errno"]), str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)
    for code in (errno.EROFS, errno.EACCES):
        failure["errno"] = code
        with pytest.raises(OccsynthError) as exc:
            with atomic.locked_output_folder(out, lambda holder: AssertionError(holder)):
                raise AssertionError("ran without its lock")
        assert str(exc.value) == f"cannot write into {out}: {os.strerror(code)}"
    (out / atomic.LOCK_FILE).write_text("")  # there, but not to be opened (another user's): named itself
    with pytest.raises(OccsynthError, match=f"^cannot lock {out / atomic.LOCK_FILE}: Permission denied$"):
        with atomic.locked_output_folder(out, lambda holder: AssertionError(holder)):
            pass
    failure["errno"] = errno.EROFS  # a rerun on a read-only mount finds the last run's lock file: still the folder
    with pytest.raises(OccsynthError, match=f"^cannot write into {out}: Read-only file system$"):
        with atomic.locked_output_folder(out, lambda holder: AssertionError(holder)):
            pass


@pytest.mark.parametrize("moment", ["before its lock", "as it locks", "as the last one lets go"])
def test_a_command_starting_while_the_last_one_removes_the_out_it_made_for_nothing_runs(tmp_path, monkeypatch, moment):
    """A command that made --out and wrote nothing there removes its lock file, then the folder; one starting at that
    moment failed with "cannot write into OUT: No such file or directory" or "cannot lock OUT/.lock", or was refused
    as held by the process that was letting go."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out"

    def refuse(holder):
        return OccsynthError(f"{out} is held by {holder}")

    last, first = atomic.locked_output_folder(out, refuse), [True]
    last.__enter__()
    if moment == "before its lock":  # the folder goes between the next command's mkdir -p and its lock
        real = atomic.make_folder

        def make_folder(path):
            made = real(path)
            if first and first.pop():
                last.__exit__(None, None, None)
            return made
        monkeypatch.setattr(atomic, "make_folder", make_folder)
    else:  # the next command has opened the last one's lock file, which is removed before it locks it
        real = fcntl.flock

        def flock(*args):
            if first and first.pop():
                if moment == "as it locks":
                    last.__exit__(None, None, None)  # lock file and folder removed, lock let go
                else:
                    (out / atomic.LOCK_FILE).unlink()  # the file removed, its lock not let go yet
            return real(*args)
        monkeypatch.setattr(fcntl, "flock", flock)
    with atomic.locked_output_folder(out, refuse):
        (out / "result.txt").write_text("done")
    if moment == "as the last one lets go":
        last.__exit__(None, None, None)
    assert sorted(p.name for p in out.iterdir()) == [atomic.LOCK_FILE, "result.txt"]
    assert (out / atomic.LOCK_FILE).read_text() == ""


class _FillingDisk:
    """Image writes through ``atomic`` fail with ENOSPC once ``capacity`` bytes were written (write mode), or
    every fsync after the first ``capacity`` ones fails (fsync mode: the disk fills during write-back)."""

    def __init__(self, monkeypatch, how, capacity):
        self.left, self.real_open, self.real_fsync = capacity, open, os.fsync
        if how == "write":
            monkeypatch.setattr(atomic, "open", self.open, raising=False)
        else:
            monkeypatch.setattr(atomic.os, "fsync", self.fsync)

    def open(self, *args, **kwargs):
        f = self.real_open(*args, **kwargs)
        if (args[1] if len(args) > 1 else kwargs.get("mode", "r")) not in ("wb", "xb"):  # images (parts are text)
            return f
        return _FillingFile(f, self)

    def fsync(self, fd):
        self.left -= 1
        if self.left < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real_fsync(fd)


class _FillingFile:
    def __init__(self, f, disk):
        self.f, self.disk = f, disk

    def write(self, data):
        self.disk.left -= len(data)
        if self.disk.left < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


@pytest.mark.parametrize("how, capacity", [("write", 300_000), ("fsync", 15)])
def test_full_disk_is_a_clear_error_and_the_rerun_completes(reference, demo_source, tmp_path, monkeypatch,
                                                           how, capacity):
    """The disk fills while an image is written (write) or while files are synced (fsync)."""
    ref, cache, recipe = reference
    ann, root = demo_source
    out = tmp_path / "full"
    with monkeypatch.context() as patch:
        _FillingDisk(patch, how, capacity)
        result = CliRunner().invoke(occsynth_main, cli_args(ann, root, out, cache, recipe=recipe))
        assert result.exit_code == 2
        assert "no space left on device" in result.output and "Traceback" not in result.output
        assert f"{out / 'images'}/" in result.output, result.output      # both hit an image
        assert not list(out.rglob(".*.tmp-*")), "a half-written temporary was left behind"
        assert not (out / "annotations.json").exists()
    # space freed
    result = CliRunner().invoke(occsynth_main, cli_args(ann, root, out, cache, recipe=recipe))
    assert result.exit_code == 0, result.output
    assert tree_bytes(out) == tree_bytes(ref)


def test_a_failed_background_write_is_raised_by_the_next_submit_or_wait(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with atomic.BackgroundWriter() as writes:
        writes.submit(tmp_path / "first.bin", b"1" * 1000)
        writes.submit(blocker / "second.bin", b"2")
        with pytest.raises(OccsynthError, match="a-file/second.bin"):
            writes.wait()
        writes.wait()  # raised once
        writes.submit(blocker / "third.bin", b"3")
        writes.submit(tmp_path / "marker.bin", b"m")
        deadline = time.monotonic() + 30
        while not (tmp_path / "marker.bin").exists() and time.monotonic() < deadline:
            time.sleep(0.001)  # writes run in order: once the marker is written, third.bin has failed
        with pytest.raises(OccsynthError, match="a-file/third.bin"):
            writes.submit(tmp_path / "never.bin", b"n")  # noticed before anything more is written
    assert (tmp_path / "first.bin").read_bytes() == b"1" * 1000 and (tmp_path / "marker.bin").read_bytes() == b"m"
    assert not (tmp_path / "never.bin").exists() and not list(tmp_path.rglob(".*.tmp-*"))
    # a clean exit raises what failed since the last check; an exit on an error leaves that error be
    with pytest.raises(OccsynthError, match="a-file/fourth.bin"):
        with atomic.BackgroundWriter() as writes:
            writes.submit(blocker / "fourth.bin", b"4")
    with pytest.raises(KeyError):
        with atomic.BackgroundWriter() as writes:
            writes.submit(blocker / "fifth.bin", b"5")
            raise KeyError("the caller's own error")


class _UnflushableFile:
    """A temporary whose buffered bytes never reach the disk: closing it fails (a full disk)."""

    def __init__(self, f):
        self.f = f

    def close(self):
        if not self.f.closed:  # as a real file's: the first close fails, the file is closed all the same
            self.f.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_an_error_inside_open_atomic_is_not_replaced_by_a_failing_close(tmp_path, monkeypatch):
    """A merge holds annotations.json open while chunks render: an image's failed write is the error reported,
    not the merge file's close that fails on the same full disk."""
    real = atomic._new_temporary
    monkeypatch.setattr(atomic, "_new_temporary", lambda path, mode: _UnflushableFile(real(path, mode)))
    target = tmp_path / "annotations.json"
    with pytest.raises(OccsynthError, match="images/9.png"):
        with atomic.open_atomic(target) as f:
            f.write('{"images":[')
            raise OccsynthError(f"cannot write {tmp_path}/images/9.png: no space left on device")
    with pytest.raises(OccsynthError, match="annotations.json: no space left"):  # a close failing alone: its file
        with atomic.open_atomic(target) as f:
            f.write("{}")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_unusable_output_location_is_a_clear_error(demo_source, tmp_path):
    ann, root = demo_source
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(occsynth_main, cli_args(ann, root, blocker / "out", tmp_path / "c"))
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "a-file" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("exists", [True, False])
def test_an_out_that_cannot_be_written_is_refused_before_the_bank_is_built(demo_source, tmp_path, monkeypatch, exists):
    """A read-only folder or mount passes mkdir -p: generate built the bank (minutes at COCO scale) before it found
    out that it could not write there (root ignores modes: simulated, as the probe file sees it)."""
    ann, root = demo_source
    out = tmp_path / "out"
    if exists:
        out.mkdir()

    real = atomic.tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(atomic.tempfile, "TemporaryFile", read_only)
    result = CliRunner().invoke(occsynth_main, cli_args(ann, root, out, tmp_path / "c"))
    assert result.exit_code == 2, result.output
    assert result.output == f"Error: cannot write into {out}: Read-only file system\n"
    assert not (tmp_path / "c").exists()  # no bank was built
    assert out.exists() == exists  # a folder made for nothing is removed again


def test_dask_backend_on_a_local_cluster_gives_identical_set(reference, demo_source, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    ref, cache, _ = reference
    ann, root = demo_source
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        generate(tmp_path / "dask", SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, workers=2,
                 backend="dask", backend_address=cluster.scheduler_address, progress=False)
    assert tree_bytes(tmp_path / "dask") == tree_bytes(ref)


def test_a_cluster_that_cannot_run_occsynth_is_refused_before_out_is_made(demo_source, tmp_path, monkeypatch):
    """A dask cluster started without occsynth in its environment failed every task on the scheduler, and joblib
    waited for them forever, silently; one whose workers run another renderer would mix other images into the set."""
    distributed = pytest.importorskip("dask.distributed")
    from occsynth import generate as generate_module
    ann, root = demo_source

    def not_installed():
        raise ModuleNotFoundError("No module named 'occsynth'")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        for probe, words in ((not_installed, "cannot run occsynth's tasks (ModuleNotFoundError: No module named "
                                             "'occsynth'); its scheduler and workers need this occsynth installed"),
                             (lambda: generate_module.RENDERER + 1, "a worker runs another occsynth")):
            monkeypatch.setattr(backends, "_worker_renderer", probe)
            result = CliRunner().invoke(occsynth_main, cli_args(ann, root, tmp_path / "o", tmp_path / "c")
                                        + ["--backend", "dask", "--scheduler", cluster.scheduler_address])
            assert result.exit_code == 2 and words in result.output, result.output
            assert not (tmp_path / "o").exists()


def test_a_cluster_where_no_worker_runs_the_trial_task_is_refused_in_words(demo_source, tmp_path, monkeypatch):
    """No worker started, or each that took the trial task could not import occsynth and left: the trial waited for
    ever, silently (joblib had said 'no worker after 10 seconds')."""
    distributed = pytest.importorskip("dask.distributed")
    ann, root = demo_source
    monkeypatch.setattr(backends, "CLUSTER_TRIAL_S", 0.5)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        result = CliRunner().invoke(occsynth_main, cli_args(ann, root, tmp_path / "o", tmp_path / "c")
                                    + ["--backend", "dask", "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 2 and result.output.endswith(
        f"Error: backend_address/--scheduler {cluster.scheduler_address}: "
        "no worker of the cluster ran a first task in 0.5 s: none has "
        "started, or those that took it could not import occsynth (its workers need this occsynth installed; their "
        "logs say why they left)\n"), result.output
    assert not (tmp_path / "o").exists()


def test_a_cluster_lost_midway_is_a_message_and_the_finished_chunks_resume(reference, demo_source, tmp_path,
                                                                           monkeypatch):
    """The dask scheduler stopped (killed, its job's time up) while chunks rendered: joblib's FutureCancelledError
    ended the run in a traceback with exit 1."""
    distributed = pytest.importorskip("dask.distributed")
    from occsynth import generate as generate_module
    ref, cache, recipe = reference
    ann, root = demo_source
    lost, said = scheduler_lost("batch_of__chunk_and_count_1_calls-1")
    args = cli_args(ann, root, tmp_path / "o", cache, recipe=recipe)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with monkeypatch.context() as patch:
            patch.setattr(generate_module, "_finished_chunks", error_after_one_chunk(lost))
            result = CliRunner().invoke(occsynth_main, args + ["--backend", "dask", "--scheduler",
                                                               cluster.scheduler_address])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output == (f"Error: backend_address/--scheduler {cluster.scheduler_address}: "
                                 f"the cluster stopped running this run's chunks ({said}); the chunks it finished "
                                 "are kept: run the same command again to continue\n")
        again = CliRunner().invoke(occsynth_main, args + ["--backend", "dask", "--scheduler", cluster.scheduler_address])
        assert again.exit_code == 0 and "resumed: rendered" in again.output, again.output
        assert tree_bytes(tmp_path / "o") == tree_bytes(ref)

        # a chunk the scheduler gave up on (its workers died on it each time): not a plain "run it again"
        gave_up = distributed.KilledWorker("chunk-5", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)
        with monkeypatch.context() as patch:
            patch.setattr(generate_module, "_finished_chunks", error_after_one_chunk(gave_up))
            killed = CliRunner().invoke(occsynth_main, cli_args(ann, root, tmp_path / "k", cache, recipe=recipe)
                                        + ["--backend", "dask", "--scheduler", cluster.scheduler_address])
        assert killed.exit_code == 2 and killed.output == (
            f"Error: backend_address/--scheduler {cluster.scheduler_address}: "
            "workers died on a chunk each time it ran (KilledWorker: "
            "Attempted to run task 'chunk-5' on 4 different workers, but all those workers died while running it); "
            "the chunks finished are kept: see the workers' logs (out of memory?), and --strict names a bad record, "
            "before the same command continues the run\n"), killed.output


def scheduler_lost(key: str) -> tuple[Exception, str]:
    """The error dask gives a chunk whose scheduler went away, and what the message says of it: a
    FutureCancelledError with its reason (dask/distributed#8705, mid 2024), concurrent.futures' CancelledError of
    the key before it (distributed 2024.1)."""
    try:
        from distributed.client import FutureCancelledError
    except ImportError:
        from concurrent.futures import CancelledError
        return CancelledError(key), f"CancelledError: {key}"
    return (FutureCancelledError(key, "scheduler-connection-lost"),
            f"FutureCancelledError: {key} cancelled for reason: scheduler-connection-lost")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """The address of a ray head on this machine (2 CPUs), whose workers import this checkout's occsynth; stopped
    (with every process it started) after the module's tests. Skipped where ray is not installed."""
    pytest.importorskip("ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
           "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    with open(log, "wb") as out:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                                 "--disable-usage-stats"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # `ray start --block` stops what it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_ray_backend_gives_identical_set_on_a_local_cluster_and_on_a_running_head(reference, demo_source, tmp_path,
                                                                                    ray_head):
    """joblib's ray backend cannot return results as they finish, so `--backend ray` stopped with a ValueError."""
    ref, cache, recipe = reference
    ann, root = demo_source
    generate(tmp_path / "local", SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, workers=2, backend="ray",
             progress=False)
    assert tree_bytes(tmp_path / "local") == tree_bytes(ref)
    result = CliRunner().invoke(occsynth_main, cli_args(ann, root, tmp_path / "head", cache, workers=2, recipe=recipe)
                                + ["--backend", "ray", "--scheduler", ray_head])
    assert result.exit_code == 0, result.output
    assert tree_bytes(tmp_path / "head") == tree_bytes(ref)


def ray_args(ann, root, out, cache, address, **kwargs):
    return cli_args(ann, root, out, cache, **kwargs) + ["--backend", "ray", "--scheduler", address]


def test_a_ray_cluster_that_cannot_run_occsynth_is_refused_before_out_is_made(demo_source, tmp_path, monkeypatch,
                                                                             ray_head):
    """Ray got no trial task: a cluster whose nodes cannot import occsynth, or import another renderer, was found
    out (or not) only by the chunks, after --out was made."""
    import importlib

    from occsynth import generate as generate_module
    ann, root = demo_source
    (tmp_path / "probe_not_on_the_cluster.py").write_text("def renderer():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # here only: the head's workers cannot import it, as occsynth
    not_installed = importlib.import_module("probe_not_on_the_cluster").renderer
    for probe in (not_installed, lambda: generate_module.RENDERER + 1):
        monkeypatch.setattr(backends, "_worker_renderer", probe)
        result = CliRunner().invoke(occsynth_main, ray_args(ann, root, tmp_path / "o", tmp_path / "c", ray_head))
        assert result.exit_code == 2 and not (tmp_path / "o").exists(), result.output
        if probe is not_installed:  # the part in the middle is ray's own words
            assert result.output.startswith(f"Error: backend_address/--scheduler {ray_head}: "
                                            "the cluster cannot run occsynth's tasks "
                                            "(RuntimeError: The remote function failed to import on the worker"), \
                result.output
            assert result.output.endswith("); its nodes need this occsynth installed (the environment of this "
                                          "command)\n"), result.output
        else:
            assert result.output == (f"Error: backend_address/--scheduler {ray_head}: "
                                     "a worker runs another occsynth (renderer "
                                     f"{generate_module.RENDERER + 1}, this one {generate_module.RENDERER}), whose "
                                     "images differ for the same arguments; install this occsynth on the cluster\n")


def test_a_ray_where_no_worker_runs_the_trial_task_is_refused_in_words(demo_source, tmp_path, monkeypatch):
    """A head started with no CPUs of its own, its worker nodes not up yet (ray's usual layout): every task waits."""
    ray = pytest.importorskip("ray")
    ann, root = demo_source
    monkeypatch.setattr(backends, "CLUSTER_TRIAL_S", 0.5)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    ray.init(address="local", num_cpus=0, include_dashboard=False)  # a notebook's ray: used as it is, and left
    real_cancel, cancelled = ray.cancel, []
    monkeypatch.setattr(ray, "cancel", lambda ref, **kwargs: cancelled.append(ref) or real_cancel(ref, **kwargs))
    try:
        with pytest.raises(OccsynthError) as refused:
            generate(tmp_path / "o", SETTINGS, ann_path=ann, image_root=root, cache_dir=tmp_path / "c", backend="ray",
                     progress=False)
        assert ray.is_initialized() and len(cancelled) == 1  # the trial task waits for a CPU no more
        with pytest.raises(OccsynthError) as elsewhere:  # an address beside it was silently not used
            generate(tmp_path / "o", SETTINGS, ann_path=ann, image_root=root, cache_dir=tmp_path / "c", backend="ray",
                     backend_address="127.0.0.1:1", progress=False)
        assert str(elsewhere.value) == ("backend_address/--scheduler 127.0.0.1:1: this process already runs ray "
                                        "(ray.init), which is used as it is: give no scheduler address to render on "
                                        "it, or call ray.shutdown() first")
        assert ray.is_initialized()
    finally:
        ray.shutdown()
        signal.signal(signal.SIGINT, handlers[0])  # ray.init's own SIGTERM handler exits at once
        signal.signal(signal.SIGTERM, handlers[1])
    assert str(refused.value) == (
        "the ray of this process (ray.init): no worker of the cluster ran a first task in 0.5 s: none has started, "
        "or those that took it could not import occsynth (its workers need this occsynth installed; their logs say "
        "why they left)")
    assert not (tmp_path / "o").exists()


def test_a_ray_head_that_cannot_be_reached_is_refused_at_once(demo_source, tmp_path):
    """ray.init retried an address where nothing answers for minutes, its log lines filling the screen."""
    pytest.importorskip("ray")
    ann, root = demo_source
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"  # closed again when the block ends
    for address, said in ((closed, "ConnectionRefusedError: [Errno 111] Connection refused"),
                          ("garbage", "ValueError: Invalid address format: garbage")):
        start = time.monotonic()
        result = CliRunner().invoke(occsynth_main, ray_args(ann, root, tmp_path / "o", tmp_path / "c", address))
        assert time.monotonic() - start < 10
        assert result.exit_code == 2 and result.output == \
            f"Error: backend_address/--scheduler {address!r}: cannot connect to a ray head ({said})\n", result.output
        assert not (tmp_path / "o").exists()


def test_ray_keeps_the_commands_stop_handlers(ray_head):
    """ray.init sets a SIGTERM handler that exits at once (sys.exit): a batch scheduler's stop skipped the command's
    own (the message saying what is kept, exit status 143)."""

    def handler(signum, frame):
        raise KeyboardInterrupt
    before = signal.signal(signal.SIGTERM, handler), signal.signal(signal.SIGINT, handler)
    try:
        with backends.backend_session("ray", ray_head, 1):
            assert signal.getsignal(signal.SIGTERM) is handler and signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


def test_ray_queues_twice_its_cpus_for_one_worker_and_neither_cancels_nor_waits_when_closed(ray_head, monkeypatch,
                                                                                              tmp_path):
    """--workers 1: twice the cluster's CPUs (the head has 2) are queued, not one chunk at a time. A run that stops
    (an error, Ctrl-C) closes the results: no chunk is submitted after it, none is cancelled (ray 2.60 aborted the
    driver, exit 1 and no message, when a cancel met a finishing task's reply) and none is waited for (a wait kept a
    chunk's error or a Ctrl-C unsaid while the others ran): the chunks submitted run on while the command is
    connected (ray stops them when it leaves), and the others never start."""
    import ray
    real_wait, waited, cancelled = ray.wait, [], []
    monkeypatch.setattr(ray, "wait", lambda refs, **kwargs: waited.append(len(refs)) or real_wait(refs, **kwargs))
    monkeypatch.setattr(ray, "cancel", lambda ref, **kwargs: cancelled.append(ref))
    folder = str(tmp_path)

    def marked_chunk(chunk: int) -> int:  # a closure: ray's workers cannot import this test module
        """Chunk 0 at once, the others after 3 s; each leaves a file when done."""
        if chunk:
            time.sleep(3)
        Path(folder, f"done-{chunk}").touch()
        return chunk + 1
    with backends.backend_session("ray", ray_head, 1):
        results = backends.chunk_results(marked_chunk, list(range(10)), 1, "ray")
        assert next(results) == (0, 1)
        results.close()
        assert waited == [4] and not cancelled and sorted(p.name for p in tmp_path.iterdir()) == ["done-0"]
        deadline = time.monotonic() + 60  # the 3 submitted finish on the cluster; the 6 never submitted do not run
        while len(list(tmp_path.iterdir())) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done-0", "done-1", "done-2", "done-3"]


def test_ray_waits_for_no_chunk_once_the_cluster_failed(ray_head, monkeypatch):
    """A head lost (`ray stop` on it) raises a RayError from a chunk's result: it reaches the caller at once, the
    chunks still running not waited for (ray ends a driver that waits on a lost head itself, before our message)."""
    import ray
    real_wait, waited = ray.wait, []
    monkeypatch.setattr(ray, "wait", lambda refs, **kwargs: waited.append(len(refs)) or real_wait(refs, **kwargs))

    def head_lost(ref, timeout=None):
        raise ray.exceptions.LocalRayletDiedError()
    with backends.backend_session("ray", ray_head, 1):
        monkeypatch.setattr(backends, "_ray_result", head_lost)  # after the trial task, which reads its result too
        results = backends.chunk_results(lambda c: c + 1, list(range(10)), 1, "ray")
        with pytest.raises(ray.exceptions.LocalRayletDiedError):
            next(results)
    assert waited == [4]  # the first result's; no wait for the 3 left


def test_a_chunks_own_error_on_ray_reaches_the_command_as_it_was_raised(demo_source, tmp_path, ray_head):
    """ray raises a task's error wrapped, its text the worker's traceback: --strict on a bad image printed that."""
    import json
    import shutil
    ann, root = demo_source
    shutil.copytree(root, tmp_path / "images")
    first = json.loads(Path(ann).read_text())["images"][0]["file_name"]
    (tmp_path / "images" / first).write_bytes(b"garbage")
    result = CliRunner().invoke(occsynth_main, ray_args(ann, tmp_path / "images", tmp_path / "o", tmp_path / "c",
                                                        ray_head, workers=2) + ["--strict", "--no-cutout-pixels"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: image file {tmp_path / 'images' / first}: "), result.output
    assert "Traceback" not in result.output and "ray::" not in result.output


def test_a_ray_cluster_lost_midway_is_a_message_and_the_finished_chunks_resume(reference, demo_source, tmp_path,
                                                                               monkeypatch, ray_head):
    """The ray head stopped while chunks rendered (LocalRayletDiedError), and a chunk whose worker died each time
    it ran (ray retried it 3 times): tracebacks, exit 1."""
    ray = pytest.importorskip("ray")
    from occsynth import generate as generate_module
    ref, cache, recipe = reference
    ann, root = demo_source
    real = generate_module._finished_chunks
    args = ray_args(ann, root, tmp_path / "o", cache, ray_head, recipe=recipe)
    with monkeypatch.context() as patch:
        lost = ray.exceptions.LocalRayletDiedError()
        patch.setattr(generate_module, "_finished_chunks", error_after_one_chunk(lost))
        result = CliRunner().invoke(occsynth_main, args)
    assert result.exit_code == 2 and result.output == (
        f"Error: backend_address/--scheduler {ray_head}: "
        "the cluster stopped running this run's chunks (LocalRayletDiedError: The "
        "task's local raylet died); the chunks it finished are kept: run the same command again to continue\n"), \
        result.output
    again = CliRunner().invoke(occsynth_main, args)
    assert again.exit_code == 0 and "resumed: rendered" in again.output, again.output
    assert tree_bytes(tmp_path / "o") == tree_bytes(ref)

    def crashing_on_chunk_5(task, *args, **kwargs):  # the worker process itself dies (out of memory, a crash)
        def task_or_crash(chunk):
            if chunk == 5:
                os._exit(1)
            return task(chunk)
        return real(task_or_crash, *args, **kwargs)
    monkeypatch.setattr(generate_module, "_finished_chunks", crashing_on_chunk_5)
    crashed = CliRunner().invoke(occsynth_main, ray_args(ann, root, tmp_path / "k", cache, ray_head, recipe=recipe))
    assert crashed.exit_code == 2 and crashed.output.startswith(  # then ray's own log lines of the retries
        f"Error: backend_address/--scheduler {ray_head}: "
        "workers died on a chunk each time it ran (WorkerCrashedError: The worker "
        "died unexpectedly while executing this task); the chunks finished are kept: see the workers' logs (out of "
        "memory?), and --strict names a bad record, before the same command continues the run\n"), crashed.output


def test_bad_cluster_options_are_one_clear_error(demo_source, tmp_path):
    ann, root = demo_source
    for extra, words in ((["--scheduler", "tcp://h:1"], "backend_address/--scheduler is for --backend dask or ray"),
                         (["--backend", "dask", "--scheduler", "garbage"], "cannot connect to a dask scheduler")):
        result = CliRunner().invoke(occsynth_main, cli_args(ann, root, tmp_path / "o", tmp_path / "c") + extra)
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output
        assert not (tmp_path / "o").exists()  # a run that cannot start leaves no --out behind
    # nor does a scheduler that does not answer: it is reached before --out is made (it left a run there, whose
    # settings refused a rerun with other options into the same folder)
    import dask
    pytest.importorskip("dask.distributed")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(occsynth_main, cli_args(ann, root, tmp_path / "o", tmp_path / "c")
                                    + ["--backend", "dask", "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 2 and "cannot connect to a dask scheduler" in result.output, result.output
    assert not (tmp_path / "o").exists()
    # a backend whose extra is not installed leaves no --out behind
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(backends.EXTRA_MODULES, "ray", "occsynth_no_such_module")
        result = CliRunner().invoke(occsynth_main, cli_args(ann, root, tmp_path / "r", tmp_path / "c") + ["--backend", "ray"])
    assert result.exit_code == 2 and "needs the ray extra" in result.output and not (tmp_path / "r").exists()


def test_check_backend_refuses_an_unknown_backend_an_address_for_a_local_one_and_a_missing_extra(monkeypatch):
    """Each before --out is made; the last also where the module would fail only on import (ray is imported
    inside the session, dask's joblib backend at the first chunk)."""
    with pytest.raises(OccsynthError) as refused:
        backends.check_backend("spark", None)
    assert str(refused.value) == "--backend must be one of loky, threading, dask, ray, got 'spark'"
    with pytest.raises(OccsynthError) as refused:
        backends.check_backend("threading", "tcp://h:1")
    assert str(refused.value) == "backend_address/--scheduler is for --backend dask or ray, not threading"
    monkeypatch.setitem(backends.EXTRA_MODULES, "dask", "occsynth_no_such_module")
    with pytest.raises(OccsynthError) as refused:
        backends.check_backend("dask", "tcp://h:1")
    assert str(refused.value) == "--backend dask needs the dask extra: pip install 'occsynth-bcnet[dask]'"
    assert backends.check_backend("loky", None) is None


def test_a_dask_run_of_one_worker_renders_on_every_worker_of_the_cluster(monkeypatch):
    """--workers 1 with dask: joblib's n_jobs=-1 (all the cluster's workers), not one chunk at a time; N: N. Its
    chunks run OpenCV single-threaded; threading's leave the process-wide setting alone."""
    import cv2
    import joblib
    real, asked = joblib.parallel_config, []

    def threads_instead(**kwargs):  # what chunk_results asks of joblib, run on threads here
        asked.append(kwargs)
        return real(backend="threading", n_jobs=2)
    monkeypatch.setattr(joblib, "parallel_config", threads_instead)
    threads = cv2.getNumThreads()
    try:
        assert sorted(backends.chunk_results(lambda c: 10 * c, [1, 2, 3], 1, "dask")) == [(1, 10), (2, 20), (3, 30)]
        cv2.setNumThreads(3)
        assert list(backends.chunk_results(lambda c: cv2.getNumThreads(), [4], 2, "threading")) == [(4, 3)]
        assert list(backends.chunk_results(lambda c: cv2.getNumThreads(), [4], 3, "dask")) == [(4, 1)]
    finally:
        cv2.setNumThreads(threads)
    assert asked == [{"backend": "dask", "n_jobs": -1}, {"backend": "threading", "n_jobs": 2},
                     {"backend": "dask", "n_jobs": 3}]


def test_a_ray_head_refusal_names_the_token_the_head_asks_for_wherever_ray_said_it():
    """ray's AuthToken error comes wrapped (raised while handling it): the advice is found in the chain."""
    try:
        try:
            raise RuntimeError("AuthTokenError: this cluster requires a token")
        except RuntimeError:
            raise ConnectionError("Could not connect to the head. Retried 20 times")
    except ConnectionError as exc:
        wrapped = exc
    assert str(backends._unreachable("h:6379", wrapped)) == (
        "backend_address/--scheduler 'h:6379': cannot connect to a ray head (ConnectionError: Could not connect to "
        "the head); the head asks for its token: run with RAY_AUTH_MODE=token, its token in ~/.ray/auth_token or "
        "$RAY_AUTH_TOKEN")
    assert str(backends._unreachable("h:6379", ConnectionError("refused"))) == \
        "backend_address/--scheduler 'h:6379': cannot connect to a ray head (ConnectionError: refused)"


def test_a_ray_head_port_past_65535_is_refused_not_wrapped_onto_another_port():
    """getaddrinfo takes a port modulo 65536: 'host:<P + 65536>' reached whatever listened on P, so the address
    passed the check, on to ray.init (which retries an address for minutes). The other forms of a head address are checked too."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        for address in (f"127.0.0.1:{port + 65536}", "127.0.0.1:65536", f"127.0.0.1:{10 ** 20}"):
            with pytest.raises(OccsynthError) as refused:
                backends._check_reachable(address)
            assert str(refused.value) == (f"backend_address/--scheduler {address!r}: cannot connect to a ray head "
                                          f"(port {address.rsplit(':', 1)[1]} is past 65535)")
        for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", f"[127.0.0.1]:{port}/", "auto"):
            assert backends._check_reachable(address) is None
    for address in ("ray://127.0.0.1:1", "[127.0.0.1]:1/"):
        with pytest.raises(OccsynthError, match=re.escape(f"backend_address/--scheduler {address!r}: cannot connect to "
                                                          "a ray head (ConnectionRefusedError: ")):
            backends._check_reachable(address)
