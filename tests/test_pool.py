"""Worker processes leave Ctrl-C to the main process (they ignore SIGINT), and the main process gets
its own Ctrl-C back after starting them, whatever interrupts it."""
import os
import signal
from pathlib import Path

import pytest

from occsynth import pool
from occsynth.bank import BankOptions, ensure_bank, ensure_cutout_pixels

linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")


def children_ignoring_sigint() -> dict[int, bool]:
    """pid -> whether SIGINT is ignored, for each child process of this one."""
    found = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0")) == os.getpid():
            found[int(status.parent.name)] = bool(int(fields["SigIgn"], 16) & (1 << (signal.SIGINT - 1)))
    return found


def test_ctrl_c_comes_back_after_the_block_even_when_it_fails():
    with pool.ctrl_c_for_main_only():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(RuntimeError), pool.ctrl_c_for_main_only():
        raise RuntimeError("the pool failed to start")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_restore_outlasts_a_signal_handler_raising_on_the_way(monkeypatch):
    # e.g. SIGTERM (the CLI turns it into KeyboardInterrupt) arriving while the handler is put back
    real, calls = signal.signal, []

    def interrupted_once(signum, handler):
        calls.append(handler)
        if len(calls) == 2:          # the first restore attempt
            raise KeyboardInterrupt
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", interrupted_once)
    with pytest.raises(KeyboardInterrupt), pool.ctrl_c_for_main_only():
        pass
    monkeypatch.setattr(signal, "signal", real)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert calls == [signal.SIG_IGN, signal.default_int_handler, signal.default_int_handler]


@linux_only
def test_the_pool_a_pixel_store_build_starts_ignores_ctrl_c(demo_source, tmp_path):
    # the build starts joblib's reusable pool, which generation then reuses: it must start it right
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True)
    ann, root = demo_source
    bank_dir = ensure_bank(ann, tmp_path / "cache", BankOptions(), progress=False)
    ensure_cutout_pixels(bank_dir, root, tmp_path / "cache", progress=False, workers=2)
    workers = children_ignoring_sigint()
    assert len(workers) >= 2 and all(workers.values()), workers
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_more_workers_than_cores_start_one_per_core_and_the_commands_say_so(demo_source, tmp_path, monkeypatch):
    """--workers 1000 (a typo) started 1000 processes until memory ran out. generate, validate and the
    pixel store now start at most one per usable core, print a note saying so, and write the same set."""
    import joblib
    from click.testing import CliRunner

    from cli.occsynth_cli import main

    ann, root = demo_source
    common = ["--ann", str(ann), "--images", str(root), "--num-images", "20", "--cache-dir", str(tmp_path / "cache")]
    alone = CliRunner().invoke(main, ["generate", "--out", str(tmp_path / "alone"), "--workers", "1", *common])
    assert alone.exit_code == 0, alone.output
    monkeypatch.setattr(pool, "usable_cores", lambda: 1)

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started on a machine of one core")
    monkeypatch.setattr(joblib, "Parallel", no_pool)
    note = "note: --workers 1000: this process may use 1 CPU core; running 1 worker"
    capped = CliRunner().invoke(main, ["generate", "--out", str(tmp_path / "capped"), "--workers", "1000", *common])
    assert capped.exit_code == 0, capped.output
    assert note in capped.output
    assert (tmp_path / "capped" / "annotations.json").read_bytes() == (tmp_path / "alone" / "annotations.json").read_bytes()
    checked = CliRunner().invoke(main, ["validate", str(tmp_path / "capped"), "--workers", "1000"])
    assert checked.exit_code == 0 and note in checked.output, checked.output
    banked = CliRunner().invoke(main, ["bank", "--ann", str(ann), "--images", str(root), "--workers", "1000",
                                       "--cache-dir", str(tmp_path / "other-cache")])
    assert banked.exit_code == 0 and note in banked.output, banked.output
    assert "cutout pixels: 48 of 48 cutouts stored" in banked.output
    assert pool.local_workers(3) == 1 and pool.local_workers(0) == 0
