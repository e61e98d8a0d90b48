"""Training checkpoints: everything an exact resume needs, in a file that holds no Python objects.

A checkpoint is a dict of tensors and plain containers (str, int, float, bool, None, list,
tuple, dict) so it loads with ``torch.load(weights_only=True)``: a file someone hands you cannot
run code. Random generator states (torch, CUDA, numpy, python) are stored as tensors and ints.
Files are written atomically (temporary file + rename), so a kill during a save leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from occsynth.atomic import open_atomic
from occsynth.coco import brief, is_int
from occsynth.errors import OccsynthError, first_few

FORMAT = "bcnet-checkpoint"
VERSION = 1
LAST = "last_checkpoint"  # text file naming the newest checkpoint in a run's output directory
FINAL = "model_final.pt"  # the finished run's checkpoint


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, iteration: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, scaler: Any = None,
                    schedule: dict | None = None, model_config: dict | None = None,
                    category_ids: list[int] | None = None, category_names: list[str] | None = None,
                    rng: bool = True, data: dict | None = None) -> None:
    """Write model (+ optimizer, LR scheduler, AMP scaler, RNG states) at ``iteration`` atomically.

    ``category_names``: the names of ``category_ids`` (same order), so that predictions are labelled with the
    training set's names, not COCO's. ``data``: what the run trains on (``{"annotations": name, "sha256": ...}``),
    so that a resume can tell."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "iteration": int(iteration),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "schedule": dict(schedule or {}),
        "model_config": dict(model_config or {}),
        "category_ids": [int(c) for c in (category_ids or [])],
        "category_names": [str(n) for n in (category_names or [])],
        "rng": capture_rng_state() if rng else None,
        "data": dict(data or {}),
    }
    with open_atomic(path, "wb") as f:
        torch.save(state, f)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``out_dir/last_checkpoint`` (None when there is none).

    Without the marker, the newest checkpoint there (``model_final.pt``, else the highest iteration): a run
    killed between writing its first checkpoint and its marker resumes from that checkpoint, not from scratch.
    """
    marker = Path(out_dir) / LAST
    if not marker.is_file():
        final = Path(out_dir) / FINAL
        periodic = periodic_checkpoints(out_dir)
        return final if final.is_file() else (periodic[-1] if periodic else None)
    name = marker.read_bytes().decode("utf-8", errors="replace").strip()  # a damaged marker is named, not a traceback
    path = Path(out_dir) / name
    if "/" in name or "\\" in name or "\ufffd" in name or "\0" in name or not path.is_file():
        raise OccsynthError(f"{marker} names {name!r}, which is not a checkpoint in {out_dir}")
    return path


PERIODIC = re.compile(r"checkpoint_([0-9]+)\.pt")  # the name of the checkpoint bcnet train saves at an iteration


def periodic_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints ``bcnet train`` saved in ``out_dir`` at an iteration (``checkpoint_<iteration>.pt``), oldest
    first: not other files named alike (a user's ``checkpoint_0000400-good.pt``), which pruning must not remove."""
    found = [p for p in Path(out_dir).glob("checkpoint_*.pt") if PERIODIC.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(PERIODIC.fullmatch(p.name).group(1)))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` stands for: a run folder, or its :data:`LAST` marker, stands for the checkpoint
    the marker names (:func:`latest_checkpoint`), so that what ``bcnet train`` leaves can be passed where a
    checkpoint is asked for; any other path for itself."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise OccsynthError(f"{path}: no checkpoint in this folder (no {LAST}, {FINAL} or checkpoint_*.pt)"
                                + _runs_below(path))
        return found
    if path.name == LAST and path.is_file():
        return latest_checkpoint(path.parent)
    return path


def _runs_below(folder: Path) -> str:
    """For a folder without a checkpoint: its sub-folders that hold one, named (a ``bcnet train-synthetic`` run folder
    keeps its models in ``pretrain/`` and ``finetune/``, the fine-tuned one first), or ""."""
    runs = []
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.is_dir() and latest_checkpoint(entry.path) is not None:
                    runs.append(Path(entry.path))
            except (OSError, OccsynthError):  # unreadable, or a damaged marker: not offered
                continue
    if not runs:
        return ""
    runs.sort(key=lambda p: (p.name != "finetune", p.name))
    if len(runs) == 1:
        return f"; its sub-folder {runs[0].name} holds a run: give {runs[0]}"
    return f"; its sub-folders {first_few([p.name for p in runs], 5)} hold runs: give one of them, e.g. {runs[0]}"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict:
    """Read a checkpoint with ``weights_only=True``; a file holding pickled objects is refused. ``path`` may be a run
    folder or its marker (:func:`resolve_checkpoint`). ``mmap``: the tensors are mapped from the file, not read,
    for a caller that wants only the plain entries (``schedule``, ``model_config``)."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise OccsynthError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise OccsynthError(f"{path}: not a readable checkpoint (not a torch.save zip archive)")
    damaged = damaged_member(path)
    if damaged:
        raise OccsynthError(f"{path}: damaged checkpoint ({damaged}); it changed after it was written "
                            "(a bad copy or disk): use another checkpoint")
    try:
        # a str: torch 2.2 maps (mmap) only a file named by a str, and refuses a Path
        state = torch.load(os.fspath(path), map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "global" in line.lower()), lines[0] if lines else type(exc).__name__)
        raise OccsynthError(f"{path}: refused - the file holds Python objects, not only tensors and plain "
                            f"data, so loading it could run code ({why})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise OccsynthError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise OccsynthError(f"{path}: not a bcnet checkpoint (no '{FORMAT}' format tag)")
    if state["format"] != FORMAT:
        raise OccsynthError(f"{path}: not a bcnet checkpoint (format tag {brief(state['format'])}, expected "
                            f"{FORMAT!r})")
    if "model" not in state:
        raise OccsynthError(f"{path}: not a bcnet checkpoint (no 'model' entry)")
    version = state.get("version", 0)
    if not is_int(version):
        raise OccsynthError(f"{path}: not a bcnet checkpoint (version {brief(version)} is not a whole number)")
    if version > VERSION:
        raise OccsynthError(f"{path}: checkpoint version {state['version']} is newer than this bcnet "
                            f"understands ({VERSION})")
    why = _bad_field(state)
    if why:
        raise OccsynthError(f"{path}: not a bcnet checkpoint ({why})")
    return state


def _bad_field(state: dict) -> str | None:
    """Why a checkpoint's plain-data entries are not what :func:`save_checkpoint` writes (None when they are):
    a hand-edited or foreign file would fail later, deep in training or evaluation, with a traceback."""
    missing = [key for key in ("iteration", "schedule", "category_ids") if key not in state]  # saved by every version
    if missing:
        return f"no {', '.join(repr(k) for k in missing)} entr{'y' if len(missing) == 1 else 'ies'}"
    iteration = state["iteration"]
    if not (is_int(iteration) and iteration >= 0):
        return f"'iteration' {brief(iteration)} is not a whole number >= 0"
    for key in ("schedule", "model_config", "data"):
        if not isinstance(state.get(key, {}), dict):
            return f"'{key}' is not a table: {brief(state[key])}"
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        if not isinstance(state.get(key), (dict, type(None))):
            return f"'{key}' is not a state dict: {brief(state[key])}"
    ids = state["category_ids"]
    if not (isinstance(ids, list) and all(is_int(c) for c in ids)):
        return f"'category_ids' is not a list of whole numbers: {brief(ids)}"
    if len(set(ids)) != len(ids):
        return f"'category_ids' names a category twice: {brief(ids)}"
    names = state.get("category_names", [])
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) in (0, len(ids))):
        return f"'category_names' is not a list of {len(ids)} names: {brief(names)}"
    return None


def category_names(state: dict) -> dict[int, str]:
    """``{category id: name}`` of a checkpoint's categories; empty for one saved before the names were kept."""
    return dict(zip(state.get("category_ids", []), state.get("category_names") or []))


def named_otherwise(model_names: Mapping[int, str], set_names: Mapping[int, Any]) -> list[str]:
    """``"id (model: a, set: b)"`` for each category id both name, differently: models and sets are matched by id,
    and the same id may stand for another class in another set. Case, '_' and '-' aside ('Traffic_Light' is
    'traffic light'); a name that is no string is not compared."""
    def same(name: str) -> str:
        return " ".join(name.replace("_", " ").replace("-", " ").lower().split())

    return [f"{c} (model: {model_names[c]}, set: {name})" for c, name in set_names.items()
            if c in model_names and isinstance(name, str) and same(model_names[c]) != same(name)]


def damaged_member(path: str | os.PathLike) -> str | None:
    """Why the zip archive at ``path`` does not hold what was written (None when every member's CRC-32
    matches). torch's reader checks no CRC: a checkpoint with damaged tensor bytes loads without a word and
    predicts with wrong weights. Reading it once more costs about 0.06 s per 180 MB."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if bad is None else f"{bad} fails its CRC-32 check"


def check_weights(weights: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``weights`` (a checkpoint's ``model`` entry) if it is a dict of named tensors, all finite, else an
    :class:`OccsynthError` naming the file: a hand-made or foreign file would fail later with a traceback, and
    NaN weights (training refuses a non-finite loss, so not from it) predict nothing without a word."""
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise OccsynthError(f"{path}: not a bcnet checkpoint (its 'model' entry is not a dict of named tensors)")
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise OccsynthError(f"{path}: holds NaN or infinite values (tensor {name}): damaged or diverged weights, "
                                "which predict nothing; use another checkpoint")
    return weights


def load_weights(model: torch.nn.Module, weights: Any, path: str | os.PathLike) -> None:
    """Load a checkpoint's ``model`` tensors into ``model``, all of them, shape for shape.

    A mismatch is an :class:`OccsynthError` naming the file and the first tensor at fault:
    torch's own error is a traceback listing every tensor.
    """
    check_weights(weights, path)
    own = model.state_dict()
    for name, tensor in weights.items():
        if name in own and own[name].shape != tensor.shape:
            raise OccsynthError(f"{path}: tensor {name} has shape {list(tensor.shape)}, the model built from its "
                                f"model_config expects {list(own[name].shape)}")
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        parts = [f"{len(names)} {what} (e.g. {names[0]})" for what, names in
                 (("missing", missing), ("unexpected", unexpected)) if names]
        raise OccsynthError(f"{path}: its tensors do not match the model built from its model_config: "
                            f"{', '.join(parts)}")
    model.load_state_dict(weights)


def capture_rng_state() -> dict:
    """Every global random generator training touches, as tensors and ints."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        # only generators a run started: reading them starts CUDA, and a --device cpu run on a GPU machine has none
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(int(v) for v in py_state["internal"].tolist()),
                     py_state["gauss_next"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
