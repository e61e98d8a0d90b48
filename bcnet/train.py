"""Training loop: SGD with warm-up + step decay, periodic atomic checkpoints, exact resume,
DistributedDataParallel (torchrun), AMP and gradient accumulation.

Exact resume. Everything random in iteration i is a pure function of (seed, rank, i): the
images and their augmentation come from :class:`bcnet.data.SampleStream` (draw k of the run),
and the global torch generators (the RPN / RoI samplers draw from them: the CPU's and the run's
device's) are re-seeded from (seed, rank, i) before the iteration, and given back to the caller as
they were when train() ends (:func:`bcnet.device.own_generators`). A checkpoint holds the model,
optimizer (momentum), LR scheduler, AMP scaler and iteration; resuming at iteration i therefore replays iterations
i + 1 .. N exactly as an uninterrupted run would (bit-for-bit on CPU). The RNG states at save
time are stored too, for tools that want them.

Batches. ``batch_size`` is the global batch (images per optimizer step over all processes and
accumulation steps); the learning rate scales linearly with it
(``lr = base_lr * batch_size / base_batch_size``). Each process runs ``accumulate``
forward/backward passes of ``batch_size / (world_size * accumulate)`` images per step, on the
slices of the sample stream that :func:`bcnet.data.rank_draws` assigns it.

Warm-up is *constant* (Detectron's Mask R-CNN recipe): ``lr * warmup_factor`` (1/3) for the
first ``warmup_iterations``, then ``lr``, times ``gamma`` after each of ``steps``.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

import manifests
from occsynth.atomic import open_atomic, remove_stale_temporaries
from occsynth.coco import brief, categories_by_id, file_hash, read_dataset
from occsynth import errors
from occsynth.errors import OccsynthError, plural
from occsynth.masks import finite_number
from occsynth.pool import local_workers

from . import checkpoint as ckpt
from .data import MODES, CocoInstances, count_skipped, micro_batch_size, require_training_images, train_loader
from .device import own_generators, resolve_device, seed_generators
from .ranks import lead_process
from .runlock import holds_out_dir
from .transforms import build_transforms

MODEL_KEYS = ("detector", "mask_head", "backbone", "head_preset")
AMP_MODES = ("off", "bf16", "fp16")
# Bounds of the schedule's numbers: beyond them torch, numpy or OpenCV fail with a traceback (a seed over 64 bits,
# an image side or count over a C int, an lr torch cannot convert to float32)
CPU_WARN_IMAGES = 50_000  # training images (iterations x batch size) past which a CPU run is warned of: hours at best
INT32_MAX = 2 ** 31 - 1
SEED_MAX = 2 ** 64 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------- schedule

REQUIRED_SETTINGS = ("base_lr", "base_batch_size", "batch_size", "momentum", "weight_decay", "iterations", "steps",
                     "gamma", "warmup_iterations", "warmup_factor", "mode", "short", "long_max", "scale_jitter",
                     "flip", "seed", "checkpoint_every", "amp", "accumulate", *MODEL_KEYS)
OPTIONAL_SETTINGS = ("backbone_weights", "keep_checkpoints", "log_every", "workers")


def load_schedule(schedule: str | os.PathLike | dict = "schedule-1x", overrides: dict | None = None, *,
                  where: str = "schedule", overrides_from: str | Mapping[str, str] = "overrides") -> dict:
    """A schedule TOML (bundled name or path) flattened to one dict, with ``overrides`` applied.

    Section names ([solver], [data], [model], [run]) only group the keys; every key is unique.
    Unknown keys are refused, in the file as in the overrides, so a typo cannot silently train
    with the default. Errors name where the bad setting was written: the schedule file (its path), the
    dict schedule (``where``, used for dicts only) or ``overrides_from``: one name for all overrides, or
    each key's own (a command line's option: ``{"base_lr": "--lr"}``, so that the user reads what they typed).
    """
    check_overrides(overrides)
    flat = flat_schedule(schedule)
    where = where if isinstance(schedule, dict) else os.fspath(schedule)
    check_setting_names(flat, where)
    given = [k for k, v in (overrides or {}).items() if v is not None]
    named = (lambda keys: overrides_from) if isinstance(overrides_from, str) else (
        lambda keys: " / ".join(dict.fromkeys(overrides_from.get(k, "overrides") for k in keys)))
    check_setting_names(given, named(given))
    flat.update({k: v for k, v in (overrides or {}).items() if v is not None})
    _check_schedule(flat, lambda *keys: named([k for k in keys if k in given]) if set(keys) & set(given) else where)
    return flat


def check_overrides(overrides: Mapping | None) -> None:
    """Refuse overrides that are no mapping of setting names (a list of pairs, a string) naming the argument."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise OccsynthError("overrides must be a dict of schedule settings ({'iterations': 300, ...}), "
                            f"got {overrides!r:.80}")


def flat_schedule(schedule: str | os.PathLike | dict) -> dict:
    """A schedule's settings as one dict, unchecked: a dict as it is, a TOML file's tables merged (a missing or
    malformed file is an OccsynthError naming it)."""
    if isinstance(schedule, dict):
        return dict(schedule)
    flat = {}
    for name, section in manifests.load(str(schedule), "schedule").items():
        if not isinstance(section, dict):
            raise OccsynthError(f"{schedule}: {name!r} stands outside a table; schedule settings belong in "
                                "[solver], [data], [model] or [run]")
        flat.update(section)
    return flat


def schedule_differences(given: dict, name: str, saved: dict, overrides: dict | None,
                         checkpoint: Path) -> dict[str, tuple]:
    """What a schedule given with a resume (``given``, :func:`flat_schedule`; ``name``: how messages call it) sets
    otherwise than the run's (``saved``, overrides applied), where no override sets it: ``{key: (saved value, given
    value)}``. A resume continues its saved schedule, so these are said, not applied (an edited ``iterations``
    would otherwise go unnoticed); a model setting among them is refused, as an override's is: the weights are of
    the saved model. The settings are compared as written, unchecked (a file valid only with the command's options
    still resumes). Not compared: keys it lacks or does not know, and ``backbone_weights``, which only a new run
    reads."""
    by_option = {key for key, value in (overrides or {}).items() if value is not None}
    differ = {key: (saved.get(key), value) for key, value in given.items()
              if key in REQUIRED_SETTINGS + OPTIONAL_SETTINGS and key not in by_option
              and key != "backbone_weights" and saved.get(key) != value}
    for key in MODEL_KEYS:
        if key in differ:
            raise _other_model_refused(checkpoint, key, *differ[key], f" ({name} sets it)")
    return differ


def _other_model_refused(checkpoint: Path, key: str, trained: Any, asked: Any, source: str = "") -> OccsynthError:
    """The refusal of a resume asked to change a model setting (``source``: where it was asked, when not an
    override): the weights are of the saved model."""
    return OccsynthError(f"{checkpoint}: this run was trained with {key} {trained!r}; --resume cannot change it to "
                         f"{asked!r}{source} (to start from its weights, train into a new out_dir/--out with "
                         "init_checkpoint/--init)")


def resume_schedule_notes(schedule: str | os.PathLike | dict, saved: dict, overrides: dict | None,
                          checkpoint: Path, overrides_from: str | Mapping[str, str]) -> list[str]:
    """What a resume says of the schedule given with it (:func:`schedule_differences`; a model it changes is refused):
    the settings kept otherwise than it sets them, a name in it that is no setting (a new run refuses it: a typo
    must not go unseen here either), or that it could not be read (moved since: a resume does not need it)."""
    try:
        given = flat_schedule(schedule)
    except OccsynthError as exc:
        return [f"note: a resumed run keeps its saved schedule; the schedule given was not compared with it ({exc})"]
    name = "the schedule given" if isinstance(schedule, dict) else os.fspath(schedule)
    notes = []
    try:
        check_setting_names(given, name)
    except OccsynthError as exc:
        notes.append(f"note: {exc}; not compared")
    kept = schedule_differences(given, name, saved, overrides, checkpoint)
    return notes + ([_kept_settings_note(kept, overrides_from)] if kept else [])


def _kept_settings_note(kept: dict[str, tuple], overrides_from: str | Mapping[str, str]) -> str:
    """The note naming the settings a resume kept (:func:`schedule_differences`) and how each can change: by its
    option (``overrides_from``: the command line's names), or not at all on resume where it has none."""
    said = errors.key_values({key: f"{was!r} (not {asked!r})" for key, (was, asked) in kept.items()})
    if isinstance(overrides_from, str):
        how = f"give a setting in {overrides_from} to change it"
    else:
        options = [overrides_from[key] for key in kept if key in overrides_from]
        fixed = [key for key in kept if key not in overrides_from]
        how = "; ".join(([f"give {', '.join(options)} to change {'it' if len(options) == 1 else 'them'}"]
                         if options else [])
                        + ([f"{', '.join(fixed)} cannot change on resume (a new run from these weights: "
                            "init_checkpoint/--init)"] if fixed else []))
    return f"note: a resumed run keeps its saved schedule: {said}; {how}"


def check_setting_names(settings: Iterable[str], where: str) -> None:
    """Refuse a name that is no schedule setting (a typo), naming ``where`` it was written."""
    known = REQUIRED_SETTINGS + OPTIONAL_SETTINGS
    unknown = [k for k in settings if k not in known]
    if unknown:
        raise OccsynthError(f"{where}: unknown schedule setting {unknown[0]!r}{errors.did_you_mean(unknown[0], known)} "
                            f"(known: {', '.join(sorted(known))})")


def _check_schedule(s: dict, source: Callable[..., str]) -> None:
    """Refuse values the optimizer, scheduler or data pipeline would choke on (or silently misuse),
    naming the setting and ``source(key, ...)``, where it was written: a typo must not cost a
    traceback or a wasted run."""
    missing = [k for k in REQUIRED_SETTINGS if k not in s]
    if missing:
        raise OccsynthError(f"{source()}: schedule lacks {', '.join(missing)}")

    def fail(keys: str | tuple, text: str) -> OccsynthError:
        return OccsynthError(f"{source(*(keys if isinstance(keys, tuple) else (keys,)))}: {text}")

    def number(key: str) -> float:
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail(key, f"schedule setting {key} must be a finite number, got {value!r}")
        if abs(value) > FLOAT32_MAX:
            raise fail(key, f"schedule setting {key} must be at most {FLOAT32_MAX:.3g} in size (the optimizer "
                            f"computes in float32), got {value!r}")
        return float(value)

    def integer(key: str, low: int, high: int = INT32_MAX) -> int:
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise fail(key, f"schedule setting {key} must be an integer >= {low}, got {value!r}")
        if value > high:
            raise fail(key, f"schedule setting {key} must be an integer <= {high}, got {value!r}")
        return value

    for key in ("iterations", "batch_size", "accumulate", "base_batch_size", "short", "long_max", "checkpoint_every"):
        integer(key, 1)
    integer("warmup_iterations", 0)
    integer("seed", 0, SEED_MAX)
    for key in ("workers", "keep_checkpoints", "log_every"):
        if key in s:
            integer(key, 0)
    checks = (("base_lr", lambda v: v > 0, "> 0"), ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
              ("weight_decay", lambda v: v >= 0, ">= 0"), ("gamma", lambda v: v > 0, "> 0"),
              ("warmup_factor", lambda v: 0 < v <= 1, "in (0, 1]"), ("flip", lambda v: 0 <= v <= 1, "in [0, 1]"))
    for key, ok, rule in checks:
        if not ok(number(key)):
            raise fail(key, f"schedule setting {key} must be {rule}, got {s[key]!r}")
    steps = s["steps"]
    if (not isinstance(steps, (list, tuple)) or
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in steps)):
        raise fail("steps", f"schedule setting steps must be a list of iterations >= 1, got {steps!r}")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise fail("steps", f"schedule setting steps must be strictly increasing, got {list(steps)!r}")
    try:  # the lr after the last step must be a number the optimizer can hold (gamma > 1 grows it)
        last_lr = float(s["base_lr"]) * float(s["gamma"]) ** len(steps)
    except OverflowError:
        last_lr = math.inf
    if last_lr > FLOAT32_MAX:
        raise fail(("gamma", "steps", "base_lr"), f"schedule setting gamma {s['gamma']!r} over {plural(len(steps), 'step')} "
                   f"takes the lr from {s['base_lr']!r} to {last_lr:.3g}, which the optimizer cannot use")
    if s["long_max"] < s["short"]:
        raise fail(("long_max", "short"),
                   f"schedule setting long_max ({s['long_max']}) must be >= short ({s['short']})")
    if s["amp"] not in AMP_MODES:
        raise fail("amp", f"amp must be one of {AMP_MODES}, got {s['amp']!r}")
    if s["mode"] not in MODES:
        raise fail("mode", f"schedule setting mode must be 'visible' or 'amodal', got {s['mode']!r}")
    _check_model_settings(s, source)
    jitter = s["scale_jitter"]
    if jitter:
        if (not isinstance(jitter, (list, tuple)) or len(jitter) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in jitter)):
            raise fail("scale_jitter", f"scale_jitter must be [] or [lo, hi], got {jitter!r}")
        if not 1 <= jitter[0] <= jitter[1] <= INT32_MAX:
            raise fail("scale_jitter", f"scale_jitter [lo, hi] needs 1 <= lo <= hi <= {INT32_MAX}, got {list(jitter)!r}")


def _check_model_settings(s: dict, source: Callable[..., str]) -> None:
    """[model] names and backbone weights, checked before any data is indexed (no file is read here:
    a resumed run never reloads its backbone weights, so a since-moved file must not stop it)."""
    from .model import model_choices  # late: pulls in torchvision detection

    for key, allowed in model_choices().items():
        if s[key] not in allowed or s[key] is None:  # TOML has no None; build_model's "no mask head" is API only
            names = ", ".join(a for a in allowed if a is not None)
            raise OccsynthError(f"{source(key)}: schedule setting {key} must be one of {names}, got {s[key]!r}")
    weights = s.get("backbone_weights") or ""
    if not isinstance(weights, (str, os.PathLike)):
        raise OccsynthError(f"{source('backbone_weights')}: schedule setting backbone_weights must be a file path "
                            f"or \"\", got {weights!r}")
    if weights and s["backbone"] == "tiny":
        raise OccsynthError(f"backbone weights {os.fspath(weights)}: the 'tiny' backbone has no pretrained weights; "
                            "use backbone resnet18 or resnet50 with a torchvision state dict, or no weights")


def learning_rate(schedule: dict) -> float:
    """Base lr scaled linearly with the global batch size."""
    return float(schedule["base_lr"]) * int(schedule["batch_size"]) / int(schedule["base_batch_size"])


def lr_factor(iteration: int, schedule: dict) -> float:
    """Multiplier of the lr during iteration ``iteration + 1`` (0-based count of finished steps)."""
    factor = float(schedule["warmup_factor"]) if iteration < int(schedule["warmup_iterations"]) else 1.0
    return factor * float(schedule["gamma"]) ** sum(iteration >= int(s) for s in schedule["steps"])


def _use_schedule_settings(optimizer: torch.optim.Optimizer, scheduler, schedule: dict) -> list[str]:
    """After a resume loaded the optimizer and scheduler state, which hold the saved run's lr, momentum and
    weight decay: use the schedule's (with the overrides asked for, e.g. a lower --lr), from the current
    iteration on. Returns 'setting old -> new' for each that changed; with none changed the lr set is the
    one LambdaLR computed (the same product), so an exact resume stays exact."""
    changed = []
    lr = learning_rate(schedule)
    if any(base != lr for base in scheduler.base_lrs):
        changed.append(f"lr {scheduler.base_lrs[0]:g} -> {lr:g}")
        scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    for group in optimizer.param_groups:  # the lr of the next step, by the schedule's steps and warm-up too
        group["initial_lr"] = scheduler.base_lrs[0]
        group["lr"] = scheduler.base_lrs[0] * lr_factor(scheduler.last_epoch, schedule)
    for key in ("momentum", "weight_decay"):
        value = float(schedule[key])
        old = optimizer.param_groups[0][key]
        if any(group[key] != value for group in optimizer.param_groups):
            changed.append(f"{key.replace('_', ' ')} {old:g} -> {value:g}")
            for group in optimizer.param_groups:
                group[key] = value
    return changed


def _unfit_state(optimizer: torch.optim.Optimizer, scheduler) -> str | None:
    """Why an optimizer and LR scheduler state just loaded cannot continue this model (None when it can). torch
    checks the number of parameters only: a momentum buffer of another shape failed in the first step, and a
    scheduler or group setting that is no number in the lr set-up, each with a traceback."""
    for group in optimizer.param_groups:
        for key in ("momentum", "weight_decay"):
            if not finite_number(group.get(key)):
                return f"param group {key!r} {brief(group.get(key))} is not a number"
        for param in group["params"]:
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None and (not torch.is_tensor(buffer) or buffer.shape != param.shape):
                shape = list(buffer.shape) if torch.is_tensor(buffer) else brief(buffer)
                return f"a momentum buffer of shape {shape} for a parameter of shape {list(param.shape)}"
    last = scheduler.last_epoch
    if isinstance(last, bool) or not (isinstance(last, int) and last >= 0):
        return f"scheduler 'last_epoch' {brief(last)} is not a whole number >= 0"
    lrs = scheduler.base_lrs
    if not (isinstance(lrs, list) and len(lrs) == len(optimizer.param_groups) and all(map(finite_number, lrs))):
        return f"scheduler 'base_lrs' {brief(lrs)} is not {plural(len(optimizer.param_groups), 'number')}"
    return None


def model_config(schedule: dict) -> dict:
    """Keyword arguments of ``bcnet.model.build_model`` (besides ``num_classes``) for this schedule; they are saved
    in every checkpoint, with how the backbone is built (frozen BatchNorms when it starts from ImageNet weights)."""
    from .model import backbone_build

    config = {k: schedule[k] for k in MODEL_KEYS}
    config.update(min_size=int(schedule["short"]), max_size=int(schedule["long_max"]))
    config.update(backbone_build(bool(schedule.get("backbone_weights"))))
    return config


def saved_backbone_build(saved: Mapping) -> dict:
    """How a checkpoint's backbone was built (``bcnet.model.backbone_build``'s keys), so that a resume or an
    evaluation rebuilds the same layers: from its model_config or, in a checkpoint saved before that held them,
    from whether its schedule started from backbone weights."""
    from .model import backbone_build

    config = saved.get("model_config") if isinstance(saved.get("model_config"), dict) else {}
    keys = backbone_build(False).keys()
    if all(k in config for k in keys):
        return {k: config[k] for k in keys}
    schedule = saved.get("schedule") if isinstance(saved.get("schedule"), dict) else {}
    return backbone_build(bool(schedule.get("backbone_weights")))


def iteration_seed(seed: int, rank: int, iteration: int) -> int:
    """A 63-bit seed of (seed, rank, iteration); shifted as a Python int: numpy 1.x cannot shift a uint64 by an int."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(iteration)]).generate_state(1, np.uint64)[0]) >> 1


def cpu_warning(device: torch.device, iterations: int, batch_size: int) -> str | None:
    """One warning line when ``iterations`` of ``batch_size`` images on ``device`` is a CPU run of more than
    :data:`CPU_WARN_IMAGES` images (schedule-1x is 1.44 million: days or more on a CPU; schedule-tiny's 1,200 take
    minutes), so that a run started without a GPU by mistake is noticed at once, not days later; None otherwise."""
    images = int(iterations) * int(batch_size)
    if torch.device(device).type != "cpu" or images <= CPU_WARN_IMAGES:
        return None
    return (f"warning: training {plural(iterations, 'iteration')} of {plural(batch_size, 'image')} ({images:,} images) "
            "on the CPU will "
            "take very long; run it on a GPU (--device cuda), or try things out with --schedule schedule-tiny or "
            "fewer --iterations")


# --------------------------------------------------------------------------- model

def build(num_classes: int, config: dict, backbone_weights: str | None = None) -> torch.nn.Module:
    from .model import build_model  # imported late: the model module pulls in torchvision detection

    return build_model(num_classes, backbone_weights=backbone_weights or None, **config)


# modules whose output rows are per class, and how many rows a class has: row block r is label r, the category
# at position r - 1 of the run's category ids (block 0: background, or unused in FCOS)
CLASS_ROWS = {"box_predictor.cls_score": 1, "box_predictor.bbox_pred": 4, "classification_head.cls_logits": 1,
              "predictor.mask_fcn_logits": 1, "occludee_predictor.predictors.mask": 1,
              "predictor.predictors.mask": 1, "occludee_predictor.predictors.boundary": 1,
              "predictor.predictors.boundary": 1}


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike,
                       category_ids: Sequence[int] | None = None, saved: Mapping | None = None,
                       category_names: Mapping[int, str] | None = None) -> dict:
    """Initialise from a bcnet checkpoint (e.g. pre-training on a synthetic set).

    With ``category_ids`` (this run's) and a checkpoint of other categories, the per-class rows (``CLASS_ROWS``)
    are taken by category id: each category both know starts from its own rows, the others as built (by shape
    alone, another category's rows would be loaded for it whenever the counts agree). Other tensors whose shape
    differs are left as built. Returns ``{"loaded": n, "left_as_built": [names of this model's tensors not loaded],
    "by_category": number of categories whose rows were taken by id, or None}``; a checkpoint of which nothing
    fits (another detector) is refused rather than silently training from scratch. ``saved``: the checkpoint at
    ``path``, when the caller has loaded it already.
    ``category_names``: this run's (``{id: name}``); ``"named_otherwise"`` in the result lists the ids the checkpoint
    names otherwise (:func:`checkpoint.named_otherwise`), whose rows were taken by id all the same.
    """
    saved = ckpt.load_checkpoint(path) if saved is None else saved
    state = ckpt.check_weights(saved["model"], path)
    own = model.state_dict()
    source_ids = [int(c) for c in saved.get("category_ids") or []]
    ids = None if category_ids is None else [int(c) for c in category_ids]
    remap = ids is not None and bool(source_ids) and source_ids != ids
    fits, shared = {}, None
    for name, tensor in state.items():
        if name not in own:
            continue
        rows = _class_rows(name)
        if remap and rows:
            mapped = _rows_by_category(tensor, own[name], rows, source_ids, ids)
            if mapped is not None:
                fits[name], shared = mapped
                continue
        if own[name].shape == tensor.shape:
            fits[name] = tensor
    if not fits:
        raise OccsynthError(f"{path}: none of its {len(state)} tensors fits this model (another detector, mask "
                            "head or backbone?)")
    model.load_state_dict(fits, strict=False)
    return {"loaded": len(fits), "left_as_built": [k for k in own if k not in fits],
            "by_category": None if shared is None else len(shared),
            "named_otherwise": ckpt.named_otherwise(ckpt.category_names(saved), category_names or {})}


def _class_rows(name: str) -> int | None:
    module = "." + name.rsplit(".", 1)[0]
    return next((rows for suffix, rows in CLASS_ROWS.items() if module.endswith("." + suffix)), None)


def _rows_by_category(saved: torch.Tensor, built: torch.Tensor, rows: int, saved_ids: list[int],
                      ids: list[int]) -> tuple[torch.Tensor, list[int]] | None:
    """``built`` with the row blocks of the categories ``saved`` also has (and block 0) copied from it, and those
    categories; None when the tensors are not laid out as (categories + 1) blocks of ``rows``."""
    if (saved.shape[0] != rows * (len(saved_ids) + 1) or built.shape[0] != rows * (len(ids) + 1)
            or saved.shape[1:] != built.shape[1:]):
        return None
    out = built.clone()
    out[:rows] = saved[:rows]
    shared = [c for c in ids if c in saved_ids]
    for c in shared:
        to, source = (ids.index(c) + 1) * rows, (saved_ids.index(c) + 1) * rows
        out[to:to + rows] = saved[source:source + rows]
    return out, shared


# --------------------------------------------------------------------------- loop

def ends_own_process_group(fn: Callable) -> Callable:
    """Decorator: a process group set up during the call (train's own, under torchrun) is destroyed when it ends, by
    a return, an error or a stop: a set refused after the set-up left it behind, and under NCCL torch's warning of it
    followed the message. The ranks meet first after a return only (after an error the others may never arrive).
    A group the caller set up stays theirs."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        had_group = dist.is_initialized()
        finished = False
        try:
            result = fn(*args, **kwargs)
            finished = True
            return result
        finally:
            if not had_group and dist.is_initialized():
                if finished:
                    dist.barrier()
                dist.destroy_process_group()
    return run


@holds_out_dir(only_if=lead_process)  # the lead writes the run's files
@ends_own_process_group
def train(ann_file: str | os.PathLike, image_root: str | os.PathLike, out_dir: str | os.PathLike, *,
          schedule: str | os.PathLike | dict | None = None, overrides: dict | None = None,
          resume: bool | str | os.PathLike = False, init_checkpoint: str | os.PathLike | None = None,
          device: str | None = None, progress: bool = True, strict: bool = False,
          report: Callable[[dict], None] | None = None, overrides_from: str | Mapping[str, str] = "overrides") -> dict:
    """Train a BCNet model on a COCO-format set; checkpoints go to ``out_dir``.

    ``schedule``: bundled name (``schedule-1x``, the default, ``schedule-tiny``), TOML path or flat dict;
    ``overrides``: schedule keys to replace (``iterations``, ``batch_size``, ``backbone``, ...).
    ``resume``: True continues from ``out_dir``'s newest checkpoint (a path: that checkpoint);
    the checkpoint's schedule is used, with ``overrides`` on top (e.g. more ``iterations``, a lower
    ``base_lr``: lr, momentum and weight decay asked for replace those the optimizer state holds). A ``schedule``
    given as well is only compared with the saved one (:func:`schedule_differences`): a model setting it changes is
    refused, as an override's is, and the others it changes are named in a note, not applied. A set listing
    categories the checkpoint's model lacks is refused (:func:`check_resume_categories`): start another run with
    ``init_checkpoint`` to learn them.
    ``init_checkpoint``: start from another run's weights (fine-tuning); unless ``backbone_weights`` are given, the
    backbone is built as the checkpoint's was (frozen BatchNorms if it started from ImageNet weights). Under torchrun
    (``WORLD_SIZE`` > 1) the process group is set up here (NCCL on CUDA, gloo on CPU; destroyed when train() ends,
    however it ends, unless the caller set it up), the model wrapped in DistributedDataParallel, and only rank 0 writes checkpoints and logs.

    ``strict``: stop at the first bad record instead of skipping it; every training instance's masks and box are
    checked before the first iteration (:meth:`CocoInstances.check_annotations`), so a bad one stops the run then.
    ``report``: called (rank 0 only) with the skip log (``{"counts", "examples"}``) right after the
    dataset is indexed, when bad records were skipped there, so the user knows before a long run.
    ``overrides_from``: how errors name a bad override (see :func:`load_schedule`; the CLI gives its options).
    ``progress``: the bar over the iterations (rank 0's). Notes on what the call does (resumed from where, settings
    kept or ignored, a CPU run of hours, fewer loader workers, --init's weights mapped) are messages, not progress:
    printed with ``progress=False`` too, as every command prints its messages under ``--quiet``.

    Resuming a run already at its ``iterations`` trains nothing (``checkpoint`` is None, ``history``
    empty); asking for fewer iterations than the checkpoint's is refused (:class:`OccsynthError`),
    since the weights could not be those of a shorter run.

    Returns ``{"model", "iteration", "checkpoint", "history", "category_ids", "skipped", "start",
    "resumed_from"}`` (``model`` unwrapped, in eval mode; ``history``: one dict of losses per iteration
    run here; ``start``: the iteration it began at; ``resumed_from``: the checkpoint path or None).

    ``out_dir`` is held for the whole run (:func:`bcnet.runlock.hold_out_dir`, by rank 0): a second training
    started on it meanwhile stops at once, before it reads or writes anything there, naming this one.
    """
    check_overrides(overrides)  # read below before the schedule is (a resume checks the model settings first)
    out_dir = Path(out_dir)
    state = None
    resume_path: Path | None = None
    retired: list[str] = []
    notes: list[str] = []  # of a schedule given with a resume (resume_schedule_notes), said once ranks are known
    if resume:
        resume_path = ckpt.resolve_checkpoint(resume) if not isinstance(resume, bool) else ckpt.latest_checkpoint(out_dir)
        if resume_path is None:
            raise OccsynthError(f"{out_dir}: no checkpoint to resume from (a run stopped before its first "
                                "checkpoint starts again without --resume)")
        try:
            state = ckpt.load_checkpoint(resume_path)
        except OccsynthError as exc:
            others = sorted(p.name for p in out_dir.glob("*.pt") if p.name != resume_path.name)
            if not isinstance(resume, bool) or not others:
                raise
            raise OccsynthError(f"{exc}; to resume from an earlier checkpoint in {out_dir} ({', '.join(others)}), "
                                f"write its name into {out_dir / ckpt.LAST}") from None
        # keys an older version accepted and saved, but that meant nothing: dropped, not fatal
        retired = [k for k in state["schedule"] if k not in REQUIRED_SETTINGS + OPTIONAL_SETTINGS]
        state["schedule"] = {k: v for k, v in state["schedule"].items() if k not in retired}
        if state["schedule"].get("checkpoint_every") == 0:  # saved before 0 was refused: it meant every iteration
            state["schedule"]["checkpoint_every"] = 1
        for key in MODEL_KEYS:  # the weights are of this model: another one cannot continue them
            asked, trained = (overrides or {}).get(key), state["schedule"].get(key)
            if asked is not None and asked != trained:
                raise _other_model_refused(resume_path, key, trained, asked)
        saved = load_schedule(state["schedule"], overrides, where=f"{resume_path} (its saved schedule)",
                              overrides_from=overrides_from)
        if schedule is not None:
            notes = resume_schedule_notes(schedule, saved, overrides, resume_path, overrides_from)
        schedule = saved
        done = int(state["iteration"])
        if int(schedule["iterations"]) < done:
            raise OccsynthError(f"{resume_path}: the run is already at iteration {done} > "
                                f"{plural(int(schedule['iterations']), 'iteration')} asked for; nothing was trained "
                                "(ask for more to continue it)")
        data = read_dataset(ann_file)  # parsed once: the check below, then the dataset
        check_resume_categories(ann_file, data["categories"], state["category_ids"], resume_path)  # before indexing
    else:
        data = None
        schedule = load_schedule("schedule-1x" if schedule is None else schedule, overrides,
                                 overrides_from=overrides_from)
        if ckpt.latest_checkpoint(out_dir) is not None:
            raise OccsynthError(f"{out_dir} already holds a training run; pass --resume to continue it, "
                                "or choose another output directory")

    weights = None if state else (schedule.get("backbone_weights") or None)
    if weights is not None and not os.path.isfile(weights):  # before indexing a large set for nothing
        raise OccsynthError(f"backbone weights {os.fspath(weights)}: no such file (expected a torchvision "
                            f"{schedule['backbone']} state dict)")
    device_, rank, world = _setup_distributed(device)  # the group it sets up ends with the call (ends_own_process_group)
    if retired and rank == 0:  # messages, not progress: printed under --quiet too
        tqdm.write(f"{resume_path}: ignoring unknown schedule setting(s) {', '.join(map(repr, retired))} "
                   "saved by an older version")
    if rank == 0:
        for note in notes:
            tqdm.write(note)
    use_amp = schedule["amp"] != "off" and device_.type == "cuda"
    if schedule["amp"] != "off" and not use_amp and rank == 0:
        tqdm.write(f"amp {schedule['amp']}: CUDA only; training in float32 on {device_}")
    amp_dtype = torch.bfloat16 if schedule["amp"] == "bf16" else torch.float16
    accumulate = int(schedule["accumulate"])
    micro_batch_size(int(schedule["batch_size"]), world, accumulate)  # fail early when it does not split

    jitter = tuple(schedule["scale_jitter"]) if schedule["scale_jitter"] else None
    dataset = CocoInstances(ann_file, image_root,
                            build_transforms(True, int(schedule["short"]), int(schedule["long_max"]), jitter,
                                             float(schedule["flip"])),
                            mode=schedule["mode"], drop_empty=True, strict=strict,
                            category_ids=state["category_ids"] if state else None, data=data)
    require_training_images(dataset)  # before the report: the error says what was skipped
    set_names = {c["id"]: c.get("name") for c in dataset.categories}  # saved with the ids; --init compares them
    if strict:  # every instance's masks and box now: a bad one must not stop the run when drawn, hours in
        dataset.check_annotations()
    if report is not None and rank == 0 and dataset.skips.total:
        report(dataset.skips.to_dict())

    config = model_config(schedule)
    init_state = None
    if state is not None:  # built as the checkpoint was, whatever --backbone-weights says now
        config.update(saved_backbone_build(state))
    elif init_checkpoint:
        init_checkpoint = ckpt.resolve_checkpoint(init_checkpoint)  # a run folder: the messages name its checkpoint
        init_state = ckpt.load_checkpoint(init_checkpoint)
        init_config = init_state.get("model_config")
        if weights is None and isinstance(init_config, dict) and init_config.get("backbone") == config["backbone"]:
            # fine-tuning a model pretrained from ImageNet weights keeps its frozen BatchNorms and stages
            config.update(saved_backbone_build(init_state))
    with own_generators(device_):  # seeded below; the caller's as they were again when train() ends
        seed = int(schedule["seed"])
        seed_generators(seed, device_)
        model = build(dataset.num_classes, config, weights)
        if state is not None:
            ckpt.load_weights(model, state["model"], resume_path)
        elif init_checkpoint:
            init = load_model_weights(model, init_checkpoint, dataset.category_ids, saved=init_state,
                                      category_names=set_names)
            init_state = None  # its optimizer state is not needed: not held through the run
            if init["by_category"] is not None and rank == 0:
                tqdm.write(f"init: {init_checkpoint} was trained on other categories; per-class weights taken by "
                           f"category id for the {init['by_category']} of {len(dataset.category_ids)} it shares")
            if init["named_otherwise"] and rank == 0:
                tqdm.write(f"init: {init_checkpoint} names categories otherwise (their weights are taken by id all the "
                           f"same): {errors.first_few(init['named_otherwise'])}")
            if init["left_as_built"] and rank == 0:
                names = init["left_as_built"]
                tqdm.write(f"init: {plural(init['loaded'], 'tensor')} loaded from {init_checkpoint}; "
                           f"{len(names)} left as built (names or shapes differ, e.g. another number of classes): "
                           f"{', '.join(names[:3])}" + (" ..." if len(names) > 3 else ""))
        if hasattr(model, "transform"):
            # The data pipeline already resized images and all masks (with scale jitter); the model's
            # transform would resize them again to its own size. It still resizes at inference time.
            model.transform._skip_resize = True
        model.to(device_).train()
        net = model
        if world > 1:
            # Every trainable parameter gets a gradient in every step, for every detector and mask head, batches
            # without objects too (tests/test_model.py checks it), so DDP need not search for unused ones. Gradients
            # as views of DDP's buckets: no second copy of them, and no stride mismatch on 1x1 convolutions'
            # gradients (torch warned of it at every run).
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device_.index] if device_.type == "cuda" else None, find_unused_parameters=False,
                gradient_as_bucket_view=True)

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=learning_rate(schedule), momentum=float(schedule["momentum"]),
                                    weight_decay=float(schedule["weight_decay"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, schedule))
        scaler = _grad_scaler(enabled=use_amp and amp_dtype == torch.float16)
        start = 0
        if state is not None:
            if state.get("optimizer") is None or state.get("scheduler") is None:
                raise OccsynthError(f"{resume_path}: holds no optimizer state to resume from (saved without it); start "
                                    "a new run from its weights with init_checkpoint/--init")
            try:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                if state.get("scaler"):
                    scaler.load_state_dict(state["scaler"])
                unfit = _unfit_state(optimizer, scheduler)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # torch's words for a state of another model
                unfit = f"{type(exc).__name__}: {str(exc)[:200]}"
            if unfit:
                raise OccsynthError(f"{resume_path}: its optimizer state does not fit the model it saved ({unfit}); "
                                    "resume from another checkpoint")
            start = int(state["iteration"])
            changed = _use_schedule_settings(optimizer, scheduler, schedule)
        iterations = int(schedule["iterations"])
        data = {"annotations": str(Path(ann_file).resolve()), "sha256": file_hash(ann_file)}  # said in a resume's note
        if state is not None and start < iterations and rank == 0:  # a message, not progress: printed under --quiet too
            tqdm.write(f"resuming from {resume_path} at iteration {start}"
                       + (f"; now {', '.join(changed)}" if changed else ""))
            if init_checkpoint:  # the same command again with --resume: its weights come from the run's own checkpoint
                tqdm.write(f"note: init_checkpoint/--init {init_checkpoint} is not read when resuming: the run "
                           "continues from its checkpoint")
            before = state.get("data") or {}
            if before.get("sha256") and before["sha256"] != data["sha256"]:  # may be meant (more data): said, not refused
                tqdm.write(f"note: {ann_file} is not the annotations file this run trained on so far "
                           f"({before.get('annotations')}, other content): it continues on the new data, so it is no "
                           "longer an exact resume")

        slow = cpu_warning(device_, iterations - start, int(schedule["batch_size"]))
        if slow and rank == 0:  # a message, not progress: printed under --quiet too
            tqdm.write(slow, file=sys.stderr)
        asked_workers = int(schedule.get("workers", 0))
        workers = local_workers(asked_workers)  # torch warned without naming the setting
        if workers < asked_workers and rank == 0:  # a message, not progress: printed under --quiet too
            tqdm.write(f"workers {asked_workers}: this process may use {plural(workers, 'CPU core')}; loading with "
                       f"{plural(workers, 'loader process', 'loader processes')}")
        loader = train_loader(dataset, int(schedule["batch_size"]), seed, start, iterations,
                              workers=workers, rank=rank, world_size=world,
                              accumulate=accumulate, pin_memory=device_.type == "cuda")
        save = rank == 0
        if save:  # out_dir was made (and checked writable) when train() took its lock
            remove_stale_temporaries(out_dir)
            _trim_log(out_dir, start)
            if state is not None and start < iterations:
                _retire_final(out_dir, resume_path, start)
            elif state is not None and start == int(state["schedule"]["iterations"]):
                _restore_final(out_dir, resume_path)  # an extension stopped before it saved: finished again
        every = int(schedule["checkpoint_every"])
        log_every = max(int(schedule.get("log_every", 20)), 1)
        history: list[dict] = []
        saved = None

        names = [str(set_names.get(c) or c) for c in dataset.category_ids]  # a category without a name: its id

        def save_at(iteration: int) -> Path:
            path = out_dir / (f"checkpoint_{iteration:07d}.pt" if iteration < iterations else ckpt.FINAL)
            ckpt.save_checkpoint(path, model=model, iteration=iteration, optimizer=optimizer, scheduler=scheduler,
                                 scaler=scaler if scaler.is_enabled() else None, schedule=schedule,
                                 model_config={"num_classes": dataset.num_classes, **config},
                                 category_ids=dataset.category_ids, category_names=names, data=data)
            _mark(out_dir, path)
            _prune(out_dir, int(schedule.get("keep_checkpoints", 0)))
            return path

        batches = iter(loader)
        bar = tqdm(range(start, iterations), initial=start, total=iterations, desc="train", unit="it",
                   disable=not (progress and save))
        try:
            for iteration in bar:
                seed_generators(iteration_seed(seed, rank, iteration), device_)
                totals: dict[str, float] = {}
                for step in range(accumulate):
                    images, targets = next(batches)
                    count_skipped(dataset, targets)
                    images = [im.to(device_, non_blocking=True) for im in images]
                    targets = [{k: (v.to(device_, non_blocking=True) if torch.is_tensor(v) else v)
                                for k, v in t.items()} for t in targets]
                    sync = world == 1 or step == accumulate - 1
                    with (contextlib.nullcontext() if sync else net.no_sync()):
                        with torch.autocast(device_.type, dtype=amp_dtype, enabled=use_amp):
                            losses = net(images, targets)
                        loss = sum(losses.values()) / accumulate
                        # every term read back at once: one wait for the GPU per micro-batch, not one per term
                        values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
                        if not math.isfinite(sum(values.values())):
                            raise OccsynthError(f"iteration {iteration + 1}: loss is {sum(values.values()) / accumulate} "
                                                f"({_fmt(values)}); lower the learning rate")
                        scaler.scale(loss).backward()
                    for k, v in values.items():
                        totals[k] = totals.get(k, 0.0) + v / accumulate
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                done = iteration + 1
                totals = {"loss": sum(totals.values()), **totals}
                history.append(totals)
                bar.set_postfix_str(_fmt(totals, short=True), refresh=False)
                if save and (done % log_every == 0 or done == iterations):
                    _log(out_dir, {"iteration": done, "lr": optimizer.param_groups[0]["lr"], **totals})
                if save and (done % every == 0 or done == iterations):
                    saved = save_at(done)
        finally:
            bar.close()
            _shut_down_loader(batches)
        model.eval()
        if hasattr(model, "transform"):
            model.transform._skip_resize = False
        return {"model": model, "iteration": iterations, "checkpoint": saved, "history": history,
                "category_ids": dataset.category_ids, "skipped": dataset.skips.to_dict(), "start": start,
                "resumed_from": resume_path}


def _grad_scaler(enabled: bool) -> Any:
    """A CUDA AMP scaler: torch.amp's (torch >= 2.3), else torch.cuda.amp's (torch 2.2; deprecated since)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def check_resume_categories(ann_file: str | os.PathLike, categories: list, known_ids: Iterable[int],
                            resume_path: Path) -> None:
    """Refuse to resume on a set (``ann_file``, listing ``categories``) with categories the run's model was not built
    for (``known_ids``, the checkpoint's): it has no output for them, so their annotations would be left out of
    training without a word. Counts categories as :class:`CocoInstances` does, so it is told before indexing."""
    known = {int(c) for c in known_ids}
    listed = categories_by_id(categories)
    extra = [listed[c] for c in sorted(listed) if c not in known]
    if not extra:
        return
    names = [c["name"] if isinstance(c.get("name"), str) else str(c["id"]) for c in extra]
    raise OccsynthError(f"{Path(ann_file)}: lists {plural(len(extra), 'category', 'categories')} the run's model "
                        f"does not know: {errors.first_few(names)} (ids {errors.first_few([c['id'] for c in extra])}); "
                        "resumed, it would train without them (their annotations left out). To learn them, train "
                        f"into a new out_dir/--out, from this run's weights with init_checkpoint/--init {resume_path}")


def _setup_distributed(device: str | torch.device | None) -> tuple[torch.device, int, int]:
    """(device, rank, world size); under torchrun the process group is set up here, unless the caller did."""
    dev = resolve_device(device)  # before the process group: a bad --device is one clear error
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev, rank, world


def _shut_down_loader(batches) -> None:
    """End the loader's worker processes now. After a stop whose signal reached them too (a batch scheduler
    signals every process of a job), torch's shut-down reports their death; left to garbage collection it
    prints that as 'Exception ignored in ... __del__' with a traceback, after the command has said it stopped."""
    shut_down = getattr(batches, "_shutdown_workers", None)  # only the multi-process iterator has workers
    if shut_down is not None:
        with contextlib.suppress(RuntimeError):  # "DataLoader worker ... is killed by signal"
            shut_down()


def _mark(out_dir: Path, checkpoint: Path) -> None:
    """Name ``checkpoint`` in ``out_dir``'s marker (:data:`bcnet.checkpoint.LAST`): the one a resume takes."""
    with open_atomic(out_dir / ckpt.LAST) as f:
        f.write(checkpoint.name + "\n")


def _place_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes the same bytes as ``src`` in one step: a hard link renamed into place (or, on a file system
    without hard links, an atomic copy); a marker naming ``dst`` never names a missing or half-written file."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as source, open_atomic(dst, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    else:
        os.replace(tmp, dst)


def _retire_final(out_dir: Path, resumed_from: Path, iteration: int) -> None:
    """A run resumed from its own ``model_final.pt`` to train further: that file becomes
    ``checkpoint_<iteration>.pt`` (the same bytes), so that while the run goes on no file calls itself the
    final model of it (the pipeline, and users, take ``model_final.pt`` as the finished run's weights).

    Placed, marked, then unlinked: a kill at any point leaves the marker naming a checkpoint that exists."""
    final = out_dir / ckpt.FINAL
    if not (final.is_file() and resumed_from.is_file() and os.path.samefile(final, resumed_from)):
        return
    kept = out_dir / f"checkpoint_{iteration:07d}.pt"
    if not (kept.is_file() and os.path.samefile(final, kept)):  # else a kill left the link (and maybe the marker)
        _place_copy(final, kept)
    _mark(out_dir, kept)
    final.unlink()
    tqdm.write(f"{final.name} renamed {kept.name}: the run goes on past it")


def _restore_final(out_dir: Path, resumed_from: Path) -> None:
    """A finished run's weights resumed at their own ``iterations`` (a checkpoint that :func:`_retire_final` made
    of ``model_final.pt``, the extension stopped before its first checkpoint) become ``model_final.pt`` again:
    else the run, though finished, had none (the pipeline failed on it: 'training ended without model_final.pt').
    Placed, then marked."""
    final = out_dir / ckpt.FINAL
    if final.exists() or not resumed_from.is_file() or resumed_from.resolve().parent != out_dir.resolve():
        return
    _place_copy(resumed_from, final)
    _mark(out_dir, final)
    tqdm.write(f"{resumed_from.name} is the finished run's {final.name} again")


def _prune(out_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    periodic = ckpt.periodic_checkpoints(out_dir)
    for old in periodic[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()


def _trim_log(out_dir: Path, iteration: int) -> None:
    """Drop log lines past ``iteration``: a resumed run rewrites what the killed one logged after its checkpoint."""
    path = out_dir / "log.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if int(json.loads(line).get("iteration", 0)) <= iteration:
                kept.append(line + "\n")
    with open_atomic(path) as f:
        f.writelines(kept)


def _log(out_dir: Path, record: dict[str, Any]) -> None:
    with open(out_dir / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _fmt(losses: dict[str, float], short: bool = False) -> str:
    """Losses as ``name=value`` pairs for a message; ``short``: without the ``loss_`` prefixes (the progress bar)."""
    items = [(k.replace("loss_", "") if short else k, float(v)) for k, v in losses.items()]
    return " ".join(f"{k}={v:.3f}" if math.isfinite(v) else f"{k}={v}" for k, v in items)
