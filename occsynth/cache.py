"""What a cache folder holds (cutout banks, cutout pixel stores, the demo source) and removing entries.

Banks and pixel stores are keyed by their inputs, so a changed source, option or image root builds a new
entry beside the old one: nothing is overwritten, and old entries (a pixel store is gigabytes at COCO
scale) stay until they are removed here.
"""
from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
from pathlib import Path

from .atomic import UNFINISHED, file_stats, left_behind
from .bank import BANK_NAME, STORE_NAME, Bank, CutoutPixels, DamagedEntry, current_format
from .demo import DEMO_VERSION, demo_damage
from .errors import OccsynthError

KINDS = {"banks": "bank", "cutout-pixels": "pixel store"}
# what occsynth names them (bank.bank_key, bank.pixels_key; atomic.build_dir_once's temporaries, removals here):
# anything else under banks/ or cutout-pixels/ is not listed, so a --cache-dir given by mistake loses nothing
NAMES = {"bank": BANK_NAME, "pixel store": STORE_NAME}


def cache_entries(cache_dir: str | os.PathLike) -> list[dict]:
    """One dict per entry of ``cache_dir`` (banks, then pixel stores, by name; then the demo source and
    unfinished builds or removals; only names occsynth gives, see ``NAMES``): 'kind', 'name' (what :func:`remove_cache_entries` takes), 'path',
    'bytes', 'built' (the folder's modification time, ISO), 'source' (the annotations file a bank was built
    from, a store's image root) and 'notes': why it is stale (its image root is gone, it is unreadable, damaged or
    of another format, so no run uses it; an unfinished build or removal left by a stopped run: see
    :func:`occsynth.atomic.left_behind`). An entry without notes may still be used."""
    cache_dir = Path(cache_dir)
    entries = []
    for folder, kind in KINDS.items():
        parent = cache_dir / folder
        for path in sorted(parent.iterdir()) if parent.is_dir() else []:
            if UNFINISHED.fullmatch(path.name):
                entry = _unfinished(path)
            elif NAMES[kind].fullmatch(path.name):
                entry = _finished(kind, path)
            else:
                continue
            if entry is not None:
                entries.append(entry)
    top = sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []
    for path in top:
        if path.name == DEMO_VERSION:
            damage = demo_damage(path)
            entry = _entry("demo source", path, None, [] if damage is None else [
                f"damaged ({damage}): the next run that needs it builds it again"])
        elif path.name.startswith(f".{DEMO_VERSION}."):
            entry = _unfinished(path)
        else:
            continue
        if entry is not None:
            entries.append(entry)
    return entries


def remove_cache_entries(cache_dir: str | os.PathLike, names: list[str]) -> list[Path]:
    """Remove the entries with these names (see :func:`cache_entries`); returns the paths removed.

    Every name is checked before anything is removed. An entry is first renamed out of the way, so a
    removal stopped half way never leaves a half-deleted bank or store that a later run would use; a
    symlinked entry loses its link only. Remove entries between runs: a run using one may fail when it
    opens it again (a rerun rebuilds it).
    """
    by_name = {e["name"]: e for e in cache_entries(cache_dir)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise OccsynthError(f"{Path(cache_dir)}: no cache entry named {', '.join(unknown)} "
                            f"(`occsynth cache` lists them)")
    removed = []
    for name in dict.fromkeys(names):
        path = Path(by_name[name]["path"])
        if path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
            continue
        # unique also where process ids repeat (containers): an old leftover never blocks the rename
        doomed = path.with_name(f".{path.name.lstrip('.')}.removing-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(path, doomed)
        except FileNotFoundError:  # removed by someone else meanwhile
            continue
        try:
            if doomed.is_dir():
                # what goes meanwhile is no error: a build's clean-up may remove this folder too
                # (atomic.remove_orphaned_builds); whatever is left after that could not be removed, and says why
                shutil.rmtree(doomed, ignore_errors=True)
                if os.path.lexists(doomed):
                    shutil.rmtree(doomed)
            else:  # a stray file among the entries (a file manager's .DS_Store, a copy made by hand)
                doomed.unlink(missing_ok=True)
        except OSError as exc:
            raise OccsynthError(f"cannot remove all of {path} (now {doomed.name}): {exc.strerror or exc}") from None
        removed.append(path)
    return removed


def _finished(kind: str, path: Path) -> dict | None:
    meta = _meta(path)
    notes, source = [], None
    if meta is None:
        gone = path.is_symlink() and not path.exists()
        notes.append(f"{'a link to a missing path' if gone else 'no readable meta.json'}: runs using it fail until "
                     "it is removed")
    else:
        if kind == "bank":  # the file it was built from (older banks recorded its name only)
            built_from = meta.get("source") if isinstance(meta.get("source"), dict) else {}
            source = built_from.get("path") or built_from.get("annotations")
        else:
            source = meta.get("image_root")
        source = source if isinstance(source, str) else None  # a meta.json edited by hand: no path to show
        if not current_format(meta, kind):
            notes.append("made by another version of occsynth: not used")
        elif kind == "pixel store" and source and not Path(source).is_dir():
            notes.append("its image root is gone")
        elif (damage := _damage(kind, path)) is not None:
            notes.append(f"damaged ({damage}): runs using it fail until it is removed")
    return _entry(kind, path, source, notes)


def _damage(kind: str, path: Path) -> str | None:
    """What opening a bank or pixel store as a run does finds wrong with it (its tables' types and sizes,
    the store's blob size), or None. It reads no pixels, so it is cheap."""
    try:
        if kind == "bank":
            Bank.load(path)
        else:
            CutoutPixels.load(path).close()
    except DamagedEntry as exc:
        return exc.reason
    return None


def _unfinished(path: Path) -> dict | None:
    """A ".<name>.tmp-*" folder of a build or ".<name>.removing-*" of a removal; stale when a stopped run left it,
    as the sweep before a build judges it (a running build, on this host or another, keeps writing into it)."""
    return _entry("unfinished", path, None, ["left by a stopped run"] if left_behind(path) else [])


def _entry(kind: str, path: Path, source: str | None, notes: list[str]) -> dict | None:
    """The entry's dict; None when it went away while listed (renamed into place, removed)."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        try:
            mtime = path.lstat().st_mtime  # a link to a missing path: listed, so that it can be removed
        except FileNotFoundError:
            return None
    return {"kind": kind, "name": path.name, "path": str(path), "bytes": sum(st.st_size for st in file_stats(path)),
            "built": datetime.datetime.fromtimestamp(mtime).isoformat(timespec="seconds"), "source": source,
            "notes": notes}


def _meta(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None
