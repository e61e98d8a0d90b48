"""What a cache folder holds (cutout banks, cutout pixel stores, the demo source) and removing entries.

Banks and pixel stores are keyed by their inputs, so a changed source, option or image root builds a new
entry beside the old one: nothing is overwritten, and old entries (a pixel store is gigabytes at COCO
scale) stay until they are removed here.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from pathlib import Path

from .errors import OccsynthError

KINDS = {"banks": "bank", "cutout-pixels": "pixel store"}
DEMO = "demo-v1"
STOPPED_AFTER_S = 3600  # an unfinished build or removal unchanged this long was stopped


def format_size(n: int) -> str:
    """Bytes as people read them: GiB or MiB with two decimals, else the byte count."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:,} bytes"


def cache_entries(cache_dir: str | os.PathLike) -> list[dict]:
    """One dict per entry of ``cache_dir`` (banks, then pixel stores, by name; then the demo source): 'kind' (bank, pixel store, demo
    source, unfinished), 'name' (what :func:`remove_cache_entries` takes), 'path', 'bytes', 'built'
    (the folder's modification time, ISO), 'source' (a bank's annotations file name, a store's image root)
    and 'notes' (why it is stale: its image root or its bank is gone, it is unreadable, or it is an
    unfinished build or removal unchanged for an hour); an entry without notes may still be used."""
    cache_dir = Path(cache_dir)
    banks = {p.name for p in (cache_dir / "banks").iterdir()} if (cache_dir / "banks").is_dir() else set()
    entries = []
    for folder, kind in KINDS.items():
        parent = cache_dir / folder
        if not parent.is_dir():
            continue
        for path in sorted(parent.iterdir()):
            if not path.is_dir():
                continue
            if path.name.startswith("."):  # ".<name>.tmp-*" of a build, ".<name>.removing-*" of a removal
                # a running build keeps writing into it: only one left alone for an hour is called stale
                idle = time.time() - _newest_mtime(path) > STOPPED_AFTER_S
                entries.append(_entry("unfinished", path, None, ["left by a stopped run"] if idle else []))
                continue
            meta = _meta(path)
            notes = [] if meta else ["no readable meta.json: not usable, rebuilt on next use"]
            if kind == "bank":
                source = (meta.get("source") or {}).get("annotations") if meta else None
            else:
                source = meta.get("image_root") if meta else None
                if source and not Path(source).is_dir():
                    notes.append("its image root is gone")
                if path.name.rpartition("-px")[0] not in banks:
                    notes.append("its bank is gone")
            entries.append(_entry(kind, path, source, notes))
    if (cache_dir / DEMO).is_dir():
        entries.append(_entry("demo source", cache_dir / DEMO, None, []))
    return entries


def remove_cache_entries(cache_dir: str | os.PathLike, names: list[str]) -> list[Path]:
    """Remove the entries with these names (see :func:`cache_entries`); returns their paths.

    Every name is checked before anything is removed. An entry is first renamed out of the way, so a
    removal stopped half way never leaves a half-deleted bank or store that a later run would use.
    Remove entries between runs: a run using one may fail when it opens it again (a rerun rebuilds it).
    """
    by_name = {e["name"]: e for e in cache_entries(cache_dir)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise OccsynthError(f"{Path(cache_dir)}: no cache entry named {', '.join(unknown)} "
                            f"(`occsynth cache` lists them)")
    removed = []
    for name in dict.fromkeys(names):
        path = Path(by_name[name]["path"])
        doomed = path.with_name(f".{path.name}.removing-{os.getpid()}")
        try:
            os.rename(path, doomed)
        except FileNotFoundError:  # removed by someone else meanwhile
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(path)
    return removed


def _entry(kind: str, path: Path, source: str | None, notes: list[str]) -> dict:
    built = datetime.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")
    return {"kind": kind, "name": path.name, "path": str(path), "bytes": _tree_bytes(path), "built": built,
            "source": source, "notes": notes}


def _meta(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for root, _, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:  # removed while walking
                pass
    return newest


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while walking
                pass
    return total
