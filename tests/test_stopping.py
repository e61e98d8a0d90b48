"""A Ctrl-C or SIGTERM that a C library swallows still stops the command: it is never taken for a corrupt
mask, and the command exits as stopped, with no output written."""
import json
import os
import signal

import pytest
from click.testing import CliRunner

from cli.occsynth_cli import main as occsynth_main
from occsynth import masks, stopping

SQUARE = [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]]


def swallowing_decode(signum):
    """pycocotools' decode as numpy was seen to run it when a signal came: the handler runs, the
    KeyboardInterrupt vanishes, and the TypeError numpy was handling comes out instead."""
    def decode(rle):
        try:
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs at the next bytecode, inside this block
                pass
        except KeyboardInterrupt:
            pass
        raise TypeError("__array__() got an unexpected keyword argument 'copy'")
    return decode


def test_signals_in_the_block_raise_keyboard_interrupt_are_noted_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), stopping.stop_on_signals():
        assert stopping.stop_requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
    assert stopping.stop_requested() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with stopping.stop_on_signals():  # a new block forgets the last one's stop
        assert stopping.stop_requested() is None
        stopping.raise_if_stopping()


def test_a_swallowed_stop_is_not_taken_for_a_corrupt_mask(monkeypatch):
    monkeypatch.setattr(masks.mask_utils, "decode", swallowing_decode(signal.SIGTERM))
    with stopping.stop_on_signals():
        with pytest.raises(KeyboardInterrupt):
            masks.decode(SQUARE, 10, 10)
        with pytest.raises(KeyboardInterrupt):
            masks.decode_box(SQUARE, 10, 10)
    monkeypatch.setattr(masks.mask_utils, "decode", lambda rle: (_ for _ in ()).throw(TypeError("broken counts")))
    with stopping.stop_on_signals():  # the same error with no stop asked for: a bad mask, as before
        with pytest.raises(masks.DegenerateMask, match="broken counts"):
            masks.decode(SQUARE, 10, 10)


@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_a_command_whose_stop_was_swallowed_exits_as_stopped_and_writes_nothing(tmp_path, monkeypatch,
                                                                               signum, code, name):
    ann = tmp_path / "in.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 6], "area": 36, "iscrowd": 0,
                         "segmentation": SQUARE} for i in (1, 2)]}))
    out = tmp_path / "out.json"
    monkeypatch.setattr(masks.mask_utils, "decode", swallowing_decode(signum))
    result = CliRunner().invoke(occsynth_main, ["annotate-occluders", "--ann", str(ann), "--out", str(out),
                                                "--bcnet-compat", "--quiet"])
    assert result.exit_code == code, result.output
    assert f"Stopped ({name})" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]  # no output, no temporary left


def test_a_stop_noted_by_an_earlier_command_does_not_outlive_it(monkeypatch):
    """In a notebook, a command stopped once must not turn a later corrupt mask into a stop."""
    with pytest.raises(KeyboardInterrupt), stopping.stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
    assert stopping.stop_requested() == signal.SIGTERM  # still readable, for the command's exit status
    stopping.raise_if_stopping()  # outside any block: nothing to stop
    monkeypatch.setattr(masks.mask_utils, "decode", lambda rle: (_ for _ in ()).throw(TypeError("broken counts")))
    with pytest.raises(masks.DegenerateMask):
        masks.decode(SQUARE, 10, 10)


def test_an_error_raised_while_a_stop_unwinds_is_the_stop():
    """torch's DataLoader raises 'worker killed by signal' from its SIGCHLD handler when the scheduler's SIGTERM
    reached its workers too; that error must not turn a stop into a failure."""
    with pytest.raises(KeyboardInterrupt, match="^while stopping: RuntimeError: DataLoader worker \\(pid 1\\) is "
                                                "killed by signal: Terminated.$"), stopping.stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        finally:
            assert stopping.is_stop(RuntimeError("inside the block, after the stop"))
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")
    assert stopping.stop_requested() == signal.SIGTERM
    with pytest.raises(RuntimeError, match="no stop"), stopping.stop_on_signals():  # without a stop: itself
        raise RuntimeError("no stop")
    assert stopping.is_stop(KeyboardInterrupt()) and not stopping.is_stop(RuntimeError("outside a block"))


def test_a_signal_the_process_ignores_stays_ignored_in_the_block():
    """A job started with `cmd &` from a script ignores Ctrl-C; a command must not take that back."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stopping.stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is stopping.request_stop
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_last_stop_asked_for_is_the_one_the_command_exits_with():
    """Ctrl-C, then the scheduler's SIGTERM while the command unwinds: it exits as terminated (143), not 130."""
    with pytest.raises(KeyboardInterrupt), stopping.stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
    assert stopping.stop_requested() == signal.SIGTERM


def test_in_a_one_stop_block_a_later_stop_is_noted_not_raised_and_raised_at_its_end_if_the_first_was_swallowed():
    """A run's clean-up after a stop (a pool shut down, temporaries removed) is not cut short by the next stop."""
    with pytest.raises(KeyboardInterrupt), stopping.stop_on_signals():
        with stopping.one_stop():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
            except KeyboardInterrupt:  # swallowed, as some library might
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    pass
            inside = True  # the second stop did not raise
    assert inside and stopping.stop_requested() == signal.SIGINT


def test_off_the_main_thread_the_blocks_run_with_the_handlers_they_have():
    """Only the main thread can set signal handlers; a command run from another thread (a notebook's, a server's)
    runs its blocks with the handlers there are, instead of failing (or retrying a restore for ever)."""
    import threading

    from occsynth import pool

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    outcome = []

    def body():
        try:
            with stopping.stop_on_signals(), pool.ctrl_c_for_main_only():
                outcome.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
        except BaseException as exc:  # reported below, in the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive() and outcome == [before]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
