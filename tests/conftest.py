"""Shared fixtures: the demo source set, and a private cache home so no test writes to ~/.cache."""
import os
from pathlib import Path

import pytest

from occsynth.demo import make_demo_source


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory):
    """XDG_CACHE_HOME points into the session's temporary directory (worker processes inherit it)."""
    patch = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("xdg-cache")
    patch.setenv("XDG_CACHE_HOME", str(path))
    yield path
    patch.undo()


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory):
    """(annotations.json path, image root) of the demo set, built once per test session."""
    return make_demo_source(tmp_path_factory.mktemp("demo-source"))


@pytest.fixture
def bucket_multiples(monkeypatch):
    """The ``multiple`` of every bcnet.roi_heads.run_in_buckets call, in order (the call itself still runs)."""
    from bcnet import roi_heads

    multiples = []
    real = roi_heads.run_in_buckets

    def recorded(head, rois, multiple):
        multiples.append(multiple)
        return real(head, rois, multiple)

    monkeypatch.setattr(roi_heads, "run_in_buckets", recorded)
    return multiples


def remove_loky_leftovers(pid: int, shm: Path = Path("/dev/shm")) -> list[str]:
    """Remove what joblib's process pool of a process group killed with -9 (``pid``: its parent) left in
    shared memory: its named semaphores and its (empty) memmapping folders. Its resource tracker, which
    would remove them, died with the group; without this each such test leaves them on the machine."""
    removed = []
    if not shm.is_dir():
        return removed
    for entry in shm.iterdir():
        if entry.name.startswith(f"sem.loky-{pid}-"):
            entry.unlink(missing_ok=True)
        elif entry.name.startswith(f"joblib_memmapping_folder_{pid}_") and entry.is_dir():
            os.rmdir(entry)  # empty: the pool had nothing to share through it; if not, the test says so
        else:
            continue
        removed.append(entry.name)
    return removed
