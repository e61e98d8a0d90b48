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
