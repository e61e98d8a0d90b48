"""Shared fixtures: the demo source set, and a private cache home so no test writes to ~/.cache."""
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
