"""Recipes (TOML): synthetic-set, COCO-OCC and training schedules. Read with :func:`load`."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def path(name: str) -> Path:
    """Path of a bundled recipe, e.g. ``path("synthetic-100k")``."""
    return Path(str(resources.files(__name__).joinpath(name if name.endswith(".toml") else f"{name}.toml")))


def load(name_or_path: str) -> dict:
    """A bundled recipe by name, or any TOML file by path."""
    p = Path(name_or_path)
    if not p.suffix == ".toml" or not p.exists():
        p = path(name_or_path)
    with open(p, "rb") as f:
        return tomllib.load(f)
