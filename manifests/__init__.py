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


def names(kind: str = "") -> list[str]:
    """The bundled recipes, or those of one kind (``synthetic``, ``cocoocc``, ``pipeline``, ``schedule``)."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".toml") and p.name.startswith(kind))


def load(name_or_path: str, kind: str = "") -> dict:
    """A bundled recipe by name, or any TOML file by path; errors name the file and the reason, and
    list the bundled recipes of ``kind``."""
    from occsynth.errors import OccsynthError

    p, bundled = Path(name_or_path), path(name_or_path)
    # a file the user names is read whatever its extension; a bundled name wins over a file without
    # one (e.g. an output folder or file named after the recipe it was made with)
    if not (p.is_file() and (p.suffix.lower() == ".toml" or not bundled.is_file())):
        p = bundled if bundled.is_file() or not p.is_dir() else p
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise OccsynthError(f"{_what(kind)} {name_or_path!r}: no such TOML file or bundled {_what(kind)} "
                            f"(bundled: {', '.join(names(kind))})") from None
    except IsADirectoryError:
        raise OccsynthError(f"{_what(kind)} {name_or_path!r}: is a directory, expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise OccsynthError(f"{p}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise OccsynthError(f"{p}: not UTF-8 text ({exc.reason})") from None


def _what(kind: str) -> str:
    """How messages name a recipe of ``kind``."""
    return {"schedule": "schedule", "synthetic": "synthetic-set recipe", "pipeline": "pipeline recipe"}.get(kind, "recipe")
