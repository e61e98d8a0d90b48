"""The cutout bank: which source instances may be pasted, stored once per source in mmap-able files.

A source instance is pasted only when we know its whole shape: it is not a crowd region, not
tiny, not cut by the image border, and no other instance (or crowd region) touches it, so
nothing can hide part of it. The bank is built by streaming the COCO JSON (train-size files
stay within a few GiB), keeps every valid annotation as compressed RLE in one byte blob (the
string ``masks.encode`` gives for its mask, however the source spelled it), and
is cached under ``cache_dir/banks/<key>``, the key naming the source file's sha256 and the
options. Workers memory-map it, so opening it is cheap and nothing large is copied per task.

Files (``np.save`` arrays, loaded with ``allow_pickle=False``, plus ``meta.json``)::

    image_id, image_hw (N,2), file_name_blob + file_name_offsets     image table; backgrounds first
    image_ann_offsets (N+1)                                          annotations of image i: [off[i], off[i+1])
    ann_id, ann_category, ann_image, ann_iscrowd, ann_area, ann_bbox (M,4), ann_reason
    rle_blob + rle_offsets (M+1)                                     compressed RLE counts strings
    cutout_category (K), cutout_offsets (K+1), cutout_index          complete instances per category

Cutout pixels (:func:`ensure_cutout_pixels`) live beside the bank, under
``cache_dir/cutout-pixels/<bank key>-<hash of the resolved image root>``: every cutout's RGB
crop (its tight box plus :data:`PIXEL_MARGIN` px of context, edge-replicated outside the image)
as raw uint8 RGB, then its mask inside the tight box as packed bits, in one blob, so that
generation copies a small crop per paste instead of decoding the cutout's whole source JPEG and
its RLE. The annotation-only bank does not change; without a pixel store generation decodes the
source images and masks, with the same result.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import threading
import weakref
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import errors, masks
from .atomic import build_dir_once, format_size, open_atomic, require_room, write_json
from .compose import crop_replicate
from .coco import (MASK_ERRORS, brief, check_annotation_record, check_iscrowd, check_segmentation, file_hash, is_int,
                   iter_array, named_nowhere, names_no_file, none_found_under, none_readable_under, read_array,
                   read_image, record_image_path, require_image_file, spread, unique_by_id, unreadable_mask,
                   usable_image_records)
from .errors import BadRecord, OccsynthError, SkipLog, key_values, options_argument, plural, why_none_usable
from .pool import ctrl_c_for_main_only, local_workers

# 2: RLE strings stored in canonical form (masks.encode's); 3: image records over the pixel limit skipped; 4: a polygon's
# stray short parts dropped, not the instance (masks.check_polygons)
BANK_FORMAT = 4
CROWD, TRUNCATED, OVERLAPPED, TOO_SMALL = "crowd", "truncated", "overlapped", "too_small"
REASONS = (CROWD, TRUNCATED, OVERLAPPED, TOO_SMALL)
"""Rejection reasons, in the order they are tested: the first that applies is reported."""

# name -> (dtype, ndim) of every bank array; anything else in a bank directory is refused.
_ARRAYS = {
    "image_id": ("<i8", 1), "image_hw": ("<i8", 2), "file_name_blob": ("|u1", 1), "file_name_offsets": ("<i8", 1),
    "image_ann_offsets": ("<i8", 1),
    "ann_id": ("<i8", 1), "ann_category": ("<i8", 1), "ann_image": ("<i8", 1), "ann_iscrowd": ("|u1", 1),
    "ann_area": ("<i8", 1), "ann_bbox": ("<f8", 2), "ann_reason": ("|u1", 1),
    "rle_blob": ("|u1", 1), "rle_offsets": ("<i8", 1),
    "cutout_category": ("<i8", 1), "cutout_offsets": ("<i8", 1), "cutout_index": ("<i8", 1),
}


@dataclasses.dataclass(frozen=True)
class BankOptions:
    """What makes an instance complete enough to paste.

    ``min_area``: fewest mask pixels. ``border_margin``: a mask pixel closer than this to the
    image border means the object may continue outside (truncated). ``touch_margin``: the mask
    dilated by this many px must not meet another instance or a crowd region (it may be
    occluded by or occlude it, and its outline there is unknown).
    """

    min_area: int = 1024
    border_margin: int = 2
    touch_margin: int = 2

    def __post_init__(self):
        for name in ("min_area", "border_margin", "touch_margin"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise OccsynthError(f"bank option {name} must be a non-negative integer, got {value!r}")


# ---------------------------------------------------------------- completeness (pure)


def _box_xyxy(mask: np.ndarray) -> tuple[int, int, int, int]:
    x, y, w, h = masks.bbox(mask)
    return int(x), int(y), int(x + w), int(y + h)


def _is_truncated(box_xyxy: Sequence[int], height: int, width: int, margin: int) -> bool:
    x0, y0, x1, y1 = box_xyxy
    return x0 < margin or y0 < margin or x1 > width - margin or y1 > height - margin


def _window(box_xyxy: Sequence[int], height: int, width: int, margin: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box_xyxy
    return max(x0 - margin, 0), max(y0 - margin, 0), min(x1 + margin, width), min(y1 + margin, height)


def _meets(box: Sequence[int], window: Sequence[int]) -> bool:
    return box[2] > box[0] and box[0] < window[2] and box[2] > window[0] and box[1] < window[3] and box[3] > window[1]


def _reasons(get_window: Callable[[int, tuple[int, int, int, int]], np.ndarray],
             boxes: Sequence[tuple[int, int, int, int]], areas: Sequence[int],
             iscrowd: Sequence[bool], height: int, width: int, options: BankOptions) -> list[str | None]:
    """Shared by :func:`completeness` and the bank build. ``get_window(j, (x0, y0, x1, y1))`` is mask j
    inside that window (bool); it is only called for masks and windows the touching test needs."""
    result: list[str | None] = []
    margin = options.touch_margin
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    for i, box in enumerate(boxes):
        if iscrowd[i]:
            result.append(CROWD)
            continue
        if areas[i] == 0 or _is_truncated(box, height, width, options.border_margin):
            result.append(TRUNCATED if areas[i] else TOO_SMALL)
            continue
        wx0, wy0, wx1, wy1 = window = _window(box, height, width, margin)
        neighbours = [j for j, other in enumerate(boxes) if j != i and _meets(other, window)]
        touching = False
        if neighbours:
            grown = np.ascontiguousarray(get_window(i, window), np.uint8)
            if margin > 0:
                grown = cv2.dilate(grown, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            grown = grown.astype(bool)
            touching = any(np.any(grown & get_window(j, window)) for j in neighbours)
        result.append(OVERLAPPED if touching else TOO_SMALL if areas[i] < options.min_area else None)
    return result


def completeness(masks_of_one_image: Sequence[np.ndarray], iscrowd: Sequence[bool], height: int, width: int,
                 options: BankOptions = BankOptions()) -> list[str | None]:
    """Per instance of one image: None when it is complete (pasteable), else the rejection reason.

    Reasons are tested in the order of :data:`REASONS`; the first that applies is given.
    ``truncated``: a mask pixel lies within ``border_margin`` px of the image border.
    ``overlapped``: the mask dilated by ``touch_margin`` px (square kernel) shares a pixel with
    another instance's mask, crowd regions included. ``too_small``: fewer than ``min_area`` px
    (an empty mask counts as too small).
    """
    all_masks = [np.asarray(m, bool) for m in masks_of_one_image]
    boxes = [_box_xyxy(m) for m in all_masks]
    areas = [masks.area(m) for m in all_masks]
    return _reasons(lambda j, w: all_masks[j][w[1]:w[3], w[0]:w[2]], boxes, areas, [bool(c) for c in iscrowd],
                    height, width, options)


# ---------------------------------------------------------------- building


def bank_key(source_sha256: str, options: BankOptions) -> str:
    """Cache key: the source file's hash and a hash of the options and bank format."""
    spec = json.dumps({"format": BANK_FORMAT, "options": dataclasses.asdict(options)}, sort_keys=True)
    return f"{source_sha256[:16]}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


# the names bank_key and pixels_key give: only their leftovers are removed from a cache folder (which may be one
# of the user's, given by mistake)
BANK_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{10}")
STORE_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{10}-px[0-9a-f]{12}")


def ensure_bank(ann_path: str | os.PathLike, cache_dir: str | os.PathLike, options: BankOptions | dict = BankOptions(),
                strict: bool = False, progress: bool = True) -> Path:
    """The bank directory of this source and options, built on first use and reused afterwards.

    It is built in a temporary folder and renamed into place, so a killed build leaves nothing
    that looks finished. In strict mode a cached bank that skipped bad records is refused with
    the message of the first one, as a fresh strict build would.
    """
    options = options_argument(BankOptions, options, "options")  # a notebook's {"min_area": 256} too
    ann_path = Path(ann_path)
    if not ann_path.is_file():
        raise OccsynthError(f"{ann_path}: file not found")
    sha = file_hash(ann_path)
    banks = Path(cache_dir) / "banks"
    target = banks / bank_key(sha, options)
    return _build_once(target, BANK_NAME, _read_meta, strict,
                       lambda tmp: build_bank(ann_path, tmp, options, strict=strict, progress=progress,
                                              source_sha256=sha), source=ann_path)


def _build_once(target: Path, entries: re.Pattern, read_meta: Callable[[Path], dict], strict: bool,
                build: Callable[[Path], Any], source: Path | None = None) -> Path:
    """A cache entry built into a temporary folder and renamed into place; reused when present.

    What killed builds left beside the entries named like ``entries`` is removed first (gigabytes for a
    pixel store: :func:`occsynth.atomic.build_dir_once`). In strict mode a cached entry that skipped bad
    records is refused with its first skip, as a fresh strict build would be (placed in ``source``, the
    file its records come from, when given).
    """
    if (target / "meta.json").is_file():
        first = read_meta(target).get("first_skip")
        if strict and first:
            raise OccsynthError(f"{source}: {first}" if source else first)
    return build_dir_once(target, "meta.json", build, entries=entries)


def build_bank(ann_path: str | os.PathLike, bank_dir: str | os.PathLike, options: BankOptions | dict = BankOptions(),
               strict: bool = False, progress: bool = True, *, source_sha256: str | None = None) -> dict:
    """Read a COCO instances file (streaming) and write its bank to ``bank_dir``; returns meta.

    Bad records are skipped and counted by reason (``strict``: the first one raises). An image
    that lost an annotation that way is not used as a background (it would show an unlabelled
    object), but its complete instances are still cutouts.
    """
    options = options_argument(BankOptions, options, "options")
    ann_path, bank_dir = Path(ann_path), Path(bank_dir)
    log = _FirstSkipLog(strict=strict)
    sha = source_sha256 or file_hash(ann_path)

    try:
        categories = _read_categories(ann_path, log)
        if not categories:
            raise OccsynthError(f"{ann_path}: no valid category records ({why_none_usable(log)})")
        image_log = _FirstSkipLog(strict=strict)  # the image error quotes image records only
        images = _read_images(ann_path, image_log)
        log.merge(image_log)
        log.first = log.first or image_log.first
        if not images.ids:
            raise OccsynthError(f"{ann_path}: no valid image records ({why_none_usable(image_log)})")
        anns = _read_annotations(ann_path, images, {c["id"] for c in categories}, log, progress)
    except BadRecord as exc:  # strict: the first bad record stops the build, named with its file
        raise exc.in_file(ann_path) from None

    # Image order: usable backgrounds first (source order), then cutout-only images.
    n_images = len(images.ids)
    tainted = np.frombuffer(bytes(images.tainted), np.uint8).astype(bool)
    new_order = np.concatenate([np.flatnonzero(~tainted), np.flatnonzero(tainted)]).astype(np.int64)
    new_index = np.empty(n_images, np.int64)
    new_index[new_order] = np.arange(n_images)
    num_backgrounds = int(np.count_nonzero(~tainted))

    ann_image_old = np.asarray(anns.image, np.int64)
    ann_image = new_index[ann_image_old] if ann_image_old.size else ann_image_old
    ann_order = np.argsort(ann_image, kind="stable")
    ann_image = ann_image[ann_order]
    image_ann_offsets = _offsets(np.bincount(ann_image, minlength=n_images))

    rle_offsets = _offsets(np.asarray([len(anns.rles[k]) for k in ann_order], np.int64))
    rle_blob = np.frombuffer(b"".join(anns.rles[k] for k in ann_order), np.uint8)
    anns.rles = []

    hw = np.asarray(images.hw, np.int64).reshape(-1, 2)[new_order]
    columns = {
        "ann_id": np.asarray(anns.ids, np.int64)[ann_order],
        "ann_category": np.asarray(anns.category, np.int64)[ann_order],
        "ann_iscrowd": np.frombuffer(bytes(anns.iscrowd), np.uint8)[ann_order],
        "ann_area": np.asarray(anns.area, np.int64)[ann_order],
        "ann_bbox": np.asarray(anns.bbox, np.float64).reshape(-1, 4)[ann_order],
    }
    reasons = _judge(image_ann_offsets, hw, columns, rle_blob, rle_offsets, options, progress)

    cutouts = np.flatnonzero(reasons == 0)
    cut_cats = columns["ann_category"][cutouts]
    order = np.lexsort((cutouts, cut_cats))
    cutout_index, cut_cats = cutouts[order].astype(np.int64), cut_cats[order]
    cutout_category, counts = np.unique(cut_cats, return_counts=True)
    cutout_offsets = _offsets(counts)

    names = [images.file_names[k].encode("utf-8") for k in new_order]
    name_offsets = _offsets([len(n) for n in names])
    arrays = {
        "image_id": np.asarray(images.ids, np.int64)[new_order], "image_hw": hw,
        "file_name_blob": np.frombuffer(b"".join(names), np.uint8), "file_name_offsets": name_offsets,
        "image_ann_offsets": image_ann_offsets, **columns, "ann_image": ann_image, "ann_reason": reasons,
        "rle_blob": rle_blob, "rle_offsets": rle_offsets,
        "cutout_category": cutout_category.astype(np.int64), "cutout_offsets": cutout_offsets,
        "cutout_index": cutout_index,
    }
    bank_dir.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        dtype, ndim = _ARRAYS[name]
        value = np.ascontiguousarray(value, dtype=np.dtype(dtype))
        assert value.ndim == ndim, name
        with open_atomic(bank_dir / f"{name}.npy", "wb") as f:
            np.save(f, value, allow_pickle=False)

    kept = Counter(cut_cats.tolist())
    rejected = Counter(REASONS[r - 1] for r in reasons.tolist() if r)
    meta = {
        "format": BANK_FORMAT,
        # the bank is keyed by the file's content; the path says where that content was first found
        "source": {"annotations": ann_path.name, "path": str(ann_path.resolve()), "sha256": sha},
        "options": dataclasses.asdict(options),
        "num_images": num_backgrounds,
        "num_images_total": n_images,
        "num_annotations": int(len(ann_order)),
        "num_cutouts": int(len(cutout_index)),
        "kept_per_category": {str(c["id"]): int(kept.get(c["id"], 0)) for c in categories},
        "rejected": {reason: int(rejected.get(reason, 0)) for reason in REASONS},
        "skipped": log.to_dict(),
        "first_skip": log.first,
        "categories": categories,
    }
    write_json(bank_dir / "meta.json", meta, indent=1)
    return meta


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    """Where each of the items of ``lengths``, laid end to end, starts, and their total last ((n + 1,) int64): how
    every table of the bank and the pixel store slices its blob or its rows."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


class _FirstSkipLog(SkipLog):
    """A SkipLog that also remembers the very first skipped record (for strict reuse of a cache)."""

    first: str | None = None

    def skip(self, error: BadRecord) -> None:
        if self.first is None:
            self.first = str(error)
        super().skip(error)


@dataclasses.dataclass
class _Images:
    ids: list = dataclasses.field(default_factory=list)
    hw: array = dataclasses.field(default_factory=lambda: array("q"))
    file_names: list = dataclasses.field(default_factory=list)
    index_of: dict = dataclasses.field(default_factory=dict)
    tainted: bytearray = dataclasses.field(default_factory=bytearray)
    skipped: dict = dataclasses.field(default_factory=dict)  # why a record was skipped, by id: note_skipped_image


@dataclasses.dataclass
class _Annotations:
    ids: array = dataclasses.field(default_factory=lambda: array("q"))
    category: array = dataclasses.field(default_factory=lambda: array("q"))
    image: array = dataclasses.field(default_factory=lambda: array("q"))
    iscrowd: bytearray = dataclasses.field(default_factory=bytearray)
    area: array = dataclasses.field(default_factory=lambda: array("q"))
    bbox: array = dataclasses.field(default_factory=lambda: array("d"))
    rles: list = dataclasses.field(default_factory=list)


def _read_categories(ann_path: Path, log: SkipLog) -> list[dict]:
    return unique_by_id(read_array(ann_path, "categories"), "category", log)


def _read_images(ann_path: Path, log: SkipLog) -> _Images:
    images = _Images()
    records, images.skipped = usable_image_records(read_array(ann_path, "images"), log)
    for record in records.values():
        images.index_of[record["id"]] = len(images.ids)
        images.ids.append(record["id"])
        images.hw.extend((record["height"], record["width"]))
        images.file_names.append(record["file_name"])
        images.tainted.append(0)
    return images


def _read_annotations(ann_path: Path, images: _Images, category_ids: set, log: SkipLog, progress: bool) -> _Annotations:
    anns, seen = _Annotations(), set()
    records = iter_array(ann_path, "annotations")
    for record in tqdm(records, desc="bank: annotations", unit="ann", disable=not progress, smoothing=0.1):
        image_index = None
        try:
            where = f"annotation {brief(record.get('id', '?') if isinstance(record, dict) else record)}"
            if isinstance(record, dict):
                for key in ("image_id", "category_id"):
                    if key in record and not is_int(record[key]):
                        raise BadRecord(errors.MALFORMED_RECORD, where, f"'{key}' is not an integer")
                image_index = images.index_of.get(record.get("image_id"))
            check_annotation_record(record, images.index_of, category_ids, images.skipped)
            if record["id"] in seen:
                raise BadRecord(errors.DUPLICATE_ID, where)
            crowd = check_iscrowd(record, where)
            height, width = images.hw[2 * image_index], images.hw[2 * image_index + 1]
            rle = _compressed_rle(record["segmentation"], height, width, where)
            area = masks.rle_area(rle)
            if area == 0:
                raise BadRecord(errors.DEGENERATE_MASK, where, "empty mask")
        except BadRecord as exc:
            log.skip(exc)
            if image_index is not None:
                images.tainted[image_index] = 1
            continue
        seen.add(record["id"])
        anns.ids.append(record["id"])
        anns.category.append(record["category_id"])
        anns.image.append(image_index)
        anns.iscrowd.append(crowd)
        anns.area.append(area)
        anns.bbox.extend(masks.rle_bbox(rle))
        anns.rles.append(rle["counts"])
    return anns


def _compressed_rle(segmentation: Any, height: int, width: int, where: str) -> dict:
    """Any segmentation -> compressed RLE with bytes counts, checked so that decoding it is safe."""
    rle = check_segmentation(segmentation, height, width, where)
    try:
        if isinstance(segmentation, dict):
            # given as RLE, whose runs may be split (zero-length runs) or spelled unusually: stored as
            # masks.encode writes its mask, as pycocotools' polygon encoding already is, so that the
            # string can go to the output as it is (generate does not decode an instance nothing covers)
            rle = masks.decode_crop_encoded(rle, height, width)[2]
        counts = rle["counts"]
        return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else bytes(counts)}
    except MASK_ERRORS as exc:
        raise unreadable_mask(exc, where) from None


def _judge(image_ann_offsets: np.ndarray, hw: np.ndarray, columns: dict, rle_blob: np.ndarray,
           rle_offsets: np.ndarray, options: BankOptions, progress: bool) -> np.ndarray:
    """Rejection code per annotation (0 = complete, else 1 + index in REASONS)."""
    n_ann = len(columns["ann_id"])
    codes = np.zeros(n_ann, np.uint8)
    code_of = {None: 0, **{reason: k + 1 for k, reason in enumerate(REASONS)}}
    for i in tqdm(range(len(hw)), desc="bank: completeness", unit="img", disable=not progress, smoothing=0.1):
        start, end = int(image_ann_offsets[i]), int(image_ann_offsets[i + 1])
        if start == end:
            continue
        height, width = int(hw[i, 0]), int(hw[i, 1])
        crowd = columns["ann_iscrowd"][start:end].astype(bool).tolist()
        boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in columns["ann_bbox"][start:end]]
        decoded: dict[int, tuple] = {}

        def get_window(j: int, window: tuple[int, int, int, int]) -> np.ndarray:
            # each mask decoded once as its box and crop: the cost follows the object, not the image
            if j not in decoded:
                k = start + j
                rle = {"size": [height, width], "counts": rle_blob[rle_offsets[k]:rle_offsets[k + 1]].tobytes()}
                decoded[j] = masks.decode_crop(rle, height, width)
            box, crop = decoded[j]
            y0, x0 = box[:2] if box is not None else (0, 0)
            wx0, wy0, wx1, wy1 = window
            return masks.crop(crop, (wx0 - x0, wy0 - y0, wx1 - x0, wy1 - y0))  # the window, in the crop's frame

        reasons = _reasons(get_window, boxes, columns["ann_area"][start:end].tolist(), crowd, height, width, options)
        codes[start:end] = [code_of[r] for r in reasons]
    return codes


# ---------------------------------------------------------------- reading


def current_format(meta: dict, kind: str) -> bool:
    """Whether a bank's (``kind`` 'bank') or a pixel store's ('pixel store') meta.json is of the format
    this version reads; others are never used (their cache keys differ)."""
    if kind == "bank":
        return meta.get("format") == BANK_FORMAT
    return meta.get("format") == PIXELS_FORMAT and meta.get("encoding") == PIXELS_ENCODING


class DamagedEntry(OccsynthError):
    """A built bank or pixel store that cannot be used as it is. ``reason`` says what is wrong (``occsynth
    cache`` lists it); the message adds what to do."""

    def __init__(self, reason: str, folder: str | os.PathLike = "it"):
        self.reason, self.folder = reason, folder
        super().__init__(f"{reason}; delete {folder} to rebuild")

    def __reduce__(self):  # pickled from a worker process: rebuilt from its arguments (its text said it twice)
        return type(self), (self.reason, self.folder)


def _read_meta(folder: Path, kind: str = "bank") -> dict:
    """The meta.json of a built bank or pixel store (``kind``: "bank", "pixel store"); an error saying
    to delete the folder when it is unreadable or of another format."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DamagedEntry(f"{folder}: not a readable cutout {kind} ({exc})") from None
    if not isinstance(meta, dict) or not current_format(meta, kind):
        raise DamagedEntry(f"{folder}: cutout {kind} of another format")
    return meta


def _read_pixels_meta(store_dir: Path) -> dict:
    return _read_meta(store_dir, "pixel store")


class Bank:
    """A built bank, memory-mapped: cheap to open in every worker."""

    def __init__(self, bank_dir: Path, meta: dict, arrays: dict[str, np.ndarray]):
        self.bank_dir, self.meta, self._a = bank_dir, meta, arrays
        self.categories: list[dict] = meta["categories"]
        self.num_images: int = int(meta["num_images"])
        self._cutout_ranges = {int(c): (int(arrays["cutout_offsets"][k]), int(arrays["cutout_offsets"][k + 1]))
                               for k, c in enumerate(arrays["cutout_category"])}

    @classmethod
    def load(cls, bank_dir: str | os.PathLike) -> "Bank":
        """Open a bank; refuses (OccsynthError) anything that is not plain numeric arrays of the expected layout."""
        bank_dir = Path(bank_dir)
        meta = _read_meta(bank_dir)
        arrays = {}
        for name, (dtype, ndim) in _ARRAYS.items():
            path = bank_dir / f"{name}.npy"
            try:
                value = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise DamagedEntry(f"{path}: unreadable bank array ({exc})", bank_dir) from None
            if value.dtype != np.dtype(dtype) or value.ndim != ndim:
                raise DamagedEntry(f"{path}: expected a {ndim}-d {np.dtype(dtype)} array, found {value.ndim}-d "
                                   f"{value.dtype}", bank_dir)
            # a plain ndarray over the same mapping: indexing np.memmap runs Python code on every
            # access, which the per-annotation lookups of generation pay for thousands of times an image
            arrays[name] = np.asarray(value)
        _check_layout(bank_dir, meta, arrays)
        return cls(bank_dir, meta, arrays)

    @property
    def num_images_total(self) -> int:
        """Backgrounds plus cutout-only images (those that lost an annotation to a bad record)."""
        return len(self._a["image_id"])

    @property
    def num_annotations(self) -> int:
        return len(self._a["ann_id"])

    def image_record(self, i: int) -> dict:
        i = _checked(i, self.num_images_total, "image index")
        off = self._a["file_name_offsets"]
        name = self._a["file_name_blob"][off[i]:off[i + 1]].tobytes().decode("utf-8")
        height, width = (int(v) for v in self._a["image_hw"][i])
        return {"id": int(self._a["image_id"][i]), "file_name": name, "height": height, "width": width}

    def image_annotations(self, i: int) -> list[dict]:
        """All annotations of image ``i`` (crowd regions included), in source order."""
        i = _checked(i, self.num_images_total, "image index")
        off = self._a["image_ann_offsets"]
        return [self._annotation(k) for k in range(int(off[i]), int(off[i + 1]))]

    def cutout_categories(self) -> list[int]:
        return sorted(c for c, (s, e) in self._cutout_ranges.items() if e > s)

    def cutouts(self, category_id: int) -> np.ndarray:
        """Annotation indices of the complete instances of a category (empty when none)."""
        start, end = self._cutout_ranges.get(int(category_id), (0, 0))
        return self._a["cutout_index"][start:end]

    def annotation(self, k: int) -> dict:
        k = _checked(k, self.num_annotations, "annotation index")
        ann = self._annotation(k)
        ann["image_index"] = int(self._a["ann_image"][k])
        return ann

    def rejection(self, k: int) -> str | None:
        """Why annotation ``k`` is not a cutout (one of REASONS), or None when it is one."""
        code = int(self._a["ann_reason"][_checked(k, self.num_annotations, "annotation index")])
        return None if code == 0 else REASONS[code - 1]

    def _annotation(self, k: int) -> dict:
        a = self._a
        image = int(a["ann_image"][k])
        height, width = (int(v) for v in a["image_hw"][image])
        counts = a["rle_blob"][a["rle_offsets"][k]:a["rle_offsets"][k + 1]].tobytes().decode("ascii")
        return {"id": int(a["ann_id"][k]), "category_id": int(a["ann_category"][k]), "iscrowd": int(a["ann_iscrowd"][k]),
                "segmentation": {"size": [height, width], "counts": counts},
                "bbox": [float(v) for v in a["ann_bbox"][k]], "area": int(a["ann_area"][k])}


def _checked(i: int, n: int, what: str) -> int:
    i = int(i)
    if not 0 <= i < n:
        raise IndexError(f"{what} {i} out of range (0..{n - 1})")
    return i


def _check_layout(bank_dir: Path, meta: dict, a: dict[str, np.ndarray]) -> None:
    """Cheap consistency checks, so a damaged bank fails here rather than deep inside a worker."""
    n_img, n_ann = len(a["image_id"]), len(a["ann_id"])
    problems = []
    if a["image_hw"].shape != (n_img, 2) or len(a["file_name_offsets"]) != n_img + 1:
        problems.append("image table")
    if len(a["image_ann_offsets"]) != n_img + 1 or (n_img and a["image_ann_offsets"][-1] != n_ann):
        problems.append("image annotation ranges")
    if any(len(a[k]) != n_ann for k in ("ann_category", "ann_image", "ann_iscrowd", "ann_area", "ann_reason")) \
            or a["ann_bbox"].shape != (n_ann, 4) or len(a["rle_offsets"]) != n_ann + 1:
        problems.append("annotation table")
    if len(a["rle_offsets"]) and a["rle_offsets"][-1] != len(a["rle_blob"]):
        problems.append("RLE blob")
    if len(a["file_name_offsets"]) and a["file_name_offsets"][-1] != len(a["file_name_blob"]):
        problems.append("file name blob")
    if len(a["cutout_offsets"]) != len(a["cutout_category"]) + 1 or (
            len(a["cutout_index"]) and (a["cutout_offsets"][-1] != len(a["cutout_index"])
                                        or a["cutout_index"].max() >= n_ann or a["cutout_index"].min() < 0)):
        problems.append("cutout index")
    if n_ann and (a["ann_image"].min() < 0 or a["ann_image"].max() >= n_img):
        problems.append("annotation image indices")
    num_images = meta.get("num_images")
    if not is_int(num_images) or not 0 <= num_images <= n_img or not isinstance(meta.get("categories"), list) \
            or not _source_and_options(meta):
        problems.append("meta.json")
    if problems:
        raise DamagedEntry(f"{bank_dir}: damaged cutout bank ({', '.join(problems)})")


def _source_and_options(meta: dict) -> bool:
    """Whether a bank's meta.json has the source hash and options its pixel stores are keyed by
    (:func:`pixels_key`): edited by hand, a run failed on them with a TypeError."""
    source, options = meta.get("source"), meta.get("options")
    if not (isinstance(source, dict) and isinstance(source.get("sha256"), str) and isinstance(options, dict)):
        return False
    try:
        BankOptions(**options)
    except (TypeError, OccsynthError):
        return False
    return True


def no_cutouts_reason(meta: dict) -> str:
    """Why a bank holds no cutout, in one line: its instances rejected per reason, its records skipped."""
    rejected = {reason: n for reason, n in meta["rejected"].items() if n}
    parts = [f"{plural(meta['num_annotations'], 'annotation')} read"]
    if rejected:
        parts.append(f"not complete: {key_values(rejected)}")
    skips = _skip_log(meta)
    if skips.total:
        parts.append(skips.in_one_line())
    return "; ".join(parts)


def report(meta: dict) -> str:
    """Human-readable summary of a bank's meta: kept per category, rejected and skipped per reason."""
    names = {str(c.get("id")): c.get("name", "?") for c in meta.get("categories", [])}
    kept = meta["kept_per_category"]
    lines = [f"source {meta['source']['annotations']} (sha256 {meta['source']['sha256'][:12]}...): "
             f"{plural(meta['num_images_total'], 'image')}, {plural(meta['num_annotations'], 'annotation')}, "
             f"{meta['num_images']} usable as backgrounds",
             f"kept {plural(meta['num_cutouts'], 'complete instance')} as cutouts in "
             f"{plural(sum(1 for n in kept.values() if n), 'category', 'categories')}"
             + (":" if meta["num_cutouts"] else " (nothing to paste: generate refuses this source)")]
    lines += [f"  {n:>7}  {cid:>4} {names.get(cid, '?')}" for cid, n in kept.items() if n]
    lines.append("rejected (not complete):")
    lines += [f"  {n:>7}  {reason}" for reason, n in meta["rejected"].items()]
    lines.append(_skip_log(meta).summary("annotations file"))
    return "\n".join(lines)


# ---------------------------------------------------------------- cutout pixels

PIXELS_FORMAT = 2  # 2: the mask's packed bits follow each crop
PIXEL_MARGIN = 16
"""Context px stored around each cutout's box: generation's margin is ceil(3 * blend_px), 6 px by
default; a larger margin (blend_px > 5) falls back to decoding the source image."""
PIXELS_ENCODING = "raw-rgb"
"""Raw bytes, not PNG: measured on 640 px photo-like crops (~180 x 185 px with context), PNG level 1 is
0.59x the size but takes 0.8 ms to decode (filters off: 0.81x, 0.55 ms; zlib alone 0.43 ms), against
0.04 ms for a raw copy and ~1.2 ms for decoding a whole 640 x 480 source JPEG: a compressed store would
save well under half of the cutouts' cost. Raw at COCO-train scale (~150k complete instances) is a few GB."""


def context_crop(image: np.ndarray, box: Sequence[int], margin: int) -> np.ndarray:
    """``image[y0 - margin:y1 + margin, x0 - margin:x1 + margin]`` of box (y0, x0, y1, x1), edge pixels
    replicated where it leaves the image.

    Replication clamps coordinates into the image, so the crop for a margin m is the centre of the
    crop for any larger margin: that is what lets the pixel store keep one crop for every margin.
    """
    y0, x0, y1, x1 = (int(v) for v in box)
    return np.ascontiguousarray(crop_replicate(image, y0 - margin, x0 - margin, y1 + margin, x1 + margin))


def pixels_key(bank_meta: dict, image_root: str | os.PathLike) -> str:
    """Store key: the bank's key plus a hash of the resolved image root, the margin and the store format.

    The bank key alone names the annotations; the same annotations over another image root (another
    copy, other pixels) get their own store.
    """
    key = bank_key(bank_meta["source"]["sha256"], BankOptions(**bank_meta["options"]))
    spec = json.dumps({"root": str(Path(image_root).resolve()), "margin": PIXEL_MARGIN, "format": PIXELS_FORMAT,
                       "encoding": PIXELS_ENCODING},
                      sort_keys=True)
    return f"{key}-px{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def ensure_cutout_pixels(bank_dir: str | os.PathLike, image_root: str | os.PathLike, cache_dir: str | os.PathLike,
                         strict: bool = False, progress: bool = True, workers: int = 1) -> Path:
    """The pixel store of this bank over ``image_root``, built on first use (atomically) and reused.

    Stored under ``cache_dir/cutout-pixels/<pixels_key>``. In strict mode a cached store that
    skipped an unreadable image is refused with that image's message, as a fresh strict build would.
    """
    bank_dir, image_root = Path(bank_dir), Path(image_root)
    check_image_root(Bank.load(bank_dir), image_root)  # before the cache is touched: no useless store is kept
    stores = Path(cache_dir) / "cutout-pixels"
    target = stores / pixels_key(_read_meta(bank_dir), image_root)
    return _build_once(target, STORE_NAME, _read_pixels_meta, strict,
                       lambda tmp: build_cutout_pixels(bank_dir, image_root, tmp, strict=strict, progress=progress,
                                                       workers=workers))


def check_image_root(bank: Bank, image_root: str | os.PathLike) -> None:
    """Fail early, with an example path, when ``image_root`` is not the folder the bank's file names are relative
    to: none of the background images sampled from end to end (:func:`occsynth.coco.none_found_under`) exists
    there; or, before that, when none of the background images' records names a file under any folder
    (:func:`occsynth.coco.names_no_file`: absolute names), which every reader would skip."""
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise OccsynthError(f"{image_root}: image directory not found")
    refused = names_no_file(bank.num_images, bank.image_record)
    if refused is not None:
        source = (bank.meta.get("source") or {}).get("path", "the source annotations")
        raise OccsynthError(f"none of the {plural(bank.num_images, 'source image record')} names a file under a folder "
                            f"(e.g. {refused}); {named_nowhere(source)}")
    paths = none_found_under(image_root, bank.num_images, bank.image_record)
    if paths:
        raise OccsynthError(f"none of {len(paths)} sampled source images exists under {image_root} (e.g. {paths[0]}); "
                            "is image_root/--images the folder that the file_name entries are relative to?")
    unreadable = none_readable_under(image_root, bank.num_images, bank.image_record)
    if unreadable:
        raise OccsynthError(f"none of the {len(unreadable)} sampled source images under {image_root} can be read "
                            f"(e.g. {unreadable[0]}); are these the images of this set?")


IMAGES_FINGERPRINT_SAMPLE = 8


def images_fingerprint(bank: Bank, image_root: str | os.PathLike, sample: int = IMAGES_FINGERPRINT_SAMPLE) -> str:
    """What tells the images under ``image_root`` from other ones, cheaply: the sha256 of the file names, sizes and
    bytes (or absence) of up to ``sample`` source images spread over the bank.

    The same files under another folder (moved, or copied to another machine) give the same fingerprint, so a
    generate run may resume, or its shards be merged, from there; another root's files (other pixels under the
    same names: a re-encoded or resized copy, another split) give another. Files outside the sample are not
    read: a root that differs from the first only there is not told apart."""
    digest = hashlib.sha256()
    for i in spread(bank.num_images, sample):
        record = bank.image_record(i)
        try:
            path = require_image_file(record_image_path(image_root, record))
            seen = [os.path.getsize(path), file_hash(path)]
        except (BadRecord, OSError):
            seen = None  # missing, no regular file, or unreadable: skipped when rendering, from this root
        digest.update(json.dumps([record["file_name"], seen]).encode())
    return digest.hexdigest()


def pixel_store_bytes(bank: Bank) -> int:
    """Size of the pixel store's blob for ``bank`` when every cutout's image is readable (the index
    files are small): each cutout's crop with ``PIXEL_MARGIN`` px of context as raw RGB, plus its mask's
    bits. Known from the bank alone, so a build can say its size, and refuse a disk too small, first."""
    a = bank._a
    boxes = np.asarray(a["ann_bbox"])[np.asarray(a["ann_reason"]) == 0]
    w, h = boxes[:, 2].astype(np.int64), boxes[:, 3].astype(np.int64)  # the masks' own boxes: whole pixels
    side = 2 * PIXEL_MARGIN
    return int(((h + side) * (w + side) * 3 + (h * w + 7) // 8).sum())


def build_cutout_pixels(bank_dir: str | os.PathLike, image_root: str | os.PathLike, out_dir: str | os.PathLike,
                        strict: bool = False, progress: bool = True, workers: int = 1) -> dict:
    """Write every cutout's context crop (raw RGB) into ``out_dir``; returns the store's meta.

    Streams over the images that hold a cutout (each decoded once, ``workers`` processes at a
    time); crops go straight to the blob file, in annotation order, so memory stays flat. A source
    image that cannot be read costs its cutouts (skipped and counted by reason; ``strict``: the
    first one raises, naming the image); generation then decodes that image itself, as without a
    store, and skips it the same way.
    """
    bank_dir, image_root, out_dir = Path(bank_dir), Path(image_root), Path(out_dir)
    bank = Bank.load(bank_dir)
    a = bank._a
    n_ann, n_img = bank.num_annotations, bank.num_images_total
    is_cutout = np.asarray(a["ann_reason"]) == 0
    cutout_images = np.unique(np.asarray(a["ann_image"])[is_cutout])
    lengths = np.zeros(n_ann, np.int64)
    image_stat = np.full((n_img, 2), -1, np.int64)
    log = _FirstSkipLog(strict=strict)
    out_dir.mkdir(parents=True, exist_ok=True)
    needed = pixel_store_bytes(bank)
    # at COCO scale gigabytes: better refused now than when the disk fills; the index files hold 8 bytes
    # per annotation and 16 per image
    # per build: builds running at once each count the same space
    require_room(out_dir, needed + 8 * (n_ann + 1) + 16 * n_img, "the cutout pixel store needs",
                 "free some space, use a cache folder on a larger disk, or go without the store (slower: each "
                 "cutout's source image is then decoded)", shown=out_dir.parent)
    bar = tqdm(total=len(cutout_images), desc=f"bank: cutout pixels ({format_size(needed)})", unit="img",
               disable=not progress, smoothing=0.1)
    try:
        with open_atomic(out_dir / "pixel_blob.bin", "wb") as blob:
            for image_index, stat, crops, error in _pixel_results(bank_dir, image_root, cutout_images, workers):
                bar.update(1)
                if error is not None:
                    exc = BadRecord(*error)
                    start, end = (int(v) for v in a["image_ann_offsets"][image_index:image_index + 2])
                    for _ in range(int(np.count_nonzero(is_cutout[start:end]))):
                        log.skip(exc)              # strict: raises on the first, naming the image
                    continue
                image_stat[image_index] = stat
                for k, data in crops:
                    lengths[k] = len(data)
                    blob.write(data)
    finally:
        bar.close()
    offsets = _offsets(lengths)
    for name, value in (("pixel_offsets", offsets), ("image_stat", image_stat)):
        with open_atomic(out_dir / f"{name}.npy", "wb") as f:
            np.save(f, value, allow_pickle=False)
    meta = {"format": PIXELS_FORMAT, "encoding": PIXELS_ENCODING, "margin": PIXEL_MARGIN,
            "bank": {"sha256": bank.meta["source"]["sha256"], "options": bank.meta["options"]},
            "image_root": str(image_root.resolve()), "num_annotations": n_ann, "num_images_total": n_img,
            "num_cutouts": int(np.count_nonzero(is_cutout)), "num_stored": int(np.count_nonzero(lengths)),
            "blob_bytes": int(offsets[-1]), "skipped": log.to_dict(), "first_skip": log.first}
    write_json(out_dir / "meta.json", meta, indent=1)
    return meta


def _pixel_results(bank_dir: Path, image_root: Path, image_indices: np.ndarray, workers: int) -> Iterator[tuple]:
    """(image index, (size, mtime_ns), [(annotation index, crop bytes)], error) per image, in order."""
    indices = [int(i) for i in image_indices]
    workers = local_workers(workers)
    if workers <= 1 or len(indices) < 2:
        bank = Bank.load(bank_dir)
        for i in indices:
            yield _pixel_image(bank, image_root, i)
        return
    from joblib import Parallel, delayed
    size = max(1, min(64, -(-len(indices) // (8 * workers))))
    batches = [indices[s:s + size] for s in range(0, len(indices), size)]
    with ctrl_c_for_main_only():  # the pool starts here (and generation reuses it)
        results = Parallel(n_jobs=workers, return_as="generator", pre_dispatch="2*n_jobs", batch_size=1)(
            delayed(_pixel_batch)(str(bank_dir), str(image_root), batch) for batch in batches)
    for batch_results in results:
        yield from batch_results


def _pixel_batch(bank_dir: str, image_root: str, indices: list[int]) -> list[tuple]:
    if cv2.getNumThreads() != 1:   # the processes already fill the cores
        cv2.setNumThreads(1)
    bank = open_bank(bank_dir)
    return [_pixel_image(bank, Path(image_root), i) for i in indices]


@functools.lru_cache(maxsize=2)
def open_bank(bank_dir: str) -> "Bank":
    """``Bank.load``, once per process: workers reopen the memory maps only when the bank changes."""
    return Bank.load(bank_dir)


def _pixel_image(bank: "Bank", image_root: Path, i: int) -> tuple:
    record = bank.image_record(i)
    height, width = record["height"], record["width"]
    try:
        path = record_image_path(image_root, record)
        try:
            st = os.stat(path)   # before reading: a file changed afterwards never passes as the stored one
        except OSError:
            st = None
        image = read_image(path, (height, width))
    except BadRecord as exc:
        return i, None, [], (exc.reason, exc.where, exc.detail)
    if st is None:
        return i, None, [], (errors.MISSING_FILE, f"image file {path}", "")
    a = bank._a
    crops = []
    for k in range(int(a["image_ann_offsets"][i]), int(a["image_ann_offsets"][i + 1])):
        if a["ann_reason"][k] != 0:
            continue
        box, mask = masks.decode_crop(bank._annotation(k)["segmentation"], height, width)
        crops.append((k, context_crop(image, box, PIXEL_MARGIN).tobytes() + np.packbits(mask, axis=None).tobytes()))
    return i, (st.st_size, st.st_mtime_ns), crops, None


class CutoutPixels:
    """A built pixel store; :meth:`crop` gives a cutout's context crop and mask, or None.

    None means "decode the source image instead": the cutout was not stored (its image was
    unreadable at build time), the margin asked exceeds the stored one, or the source file's size
    or modification time differ from those at build time (the store holds old pixels).

    Cutouts are read from the blob file with ``pread``, not through a memory map: mapped pages a
    process has touched count in its resident size, which over a long run grows towards the whole
    store (gigabytes at COCO scale), and joblib's workers restart (losing their caches) each time
    they pass 300 MB over their size after the first task. Read pages stay in the page cache, shared.
    Close it (or use it as a context manager) to release the file.
    """

    def __init__(self, store_dir: Path, meta: dict, offsets: np.ndarray, blob_file, image_stat: np.ndarray):
        self.store_dir, self.meta = store_dir, meta
        self.margin: int = int(meta["margin"])
        self._offsets, self._blob_file, self._stat = offsets, blob_file, image_stat
        # a store dropped unclosed (e.g. by a worker's cache) closes its file when collected, quietly
        weakref.finalize(self, blob_file.close)

    def close(self) -> None:
        self._blob_file.close()

    def __enter__(self) -> "CutoutPixels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def load(cls, store_dir: str | os.PathLike, bank: "Bank | None" = None) -> "CutoutPixels":
        """Open a store; refuses (OccsynthError) damaged files, and a store of another bank when ``bank`` is given."""
        store_dir = Path(store_dir)
        meta = _read_pixels_meta(store_dir)
        arrays = {}
        for name, ndim in (("pixel_offsets", 1), ("image_stat", 2)):
            try:
                value = np.load(store_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise DamagedEntry(f"{store_dir / name}.npy: unreadable ({exc})", store_dir) from None
            if value.dtype != np.dtype("<i8") or value.ndim != ndim:
                raise DamagedEntry(f"{store_dir / name}.npy: not a {ndim}-d int64 array", store_dir)
            arrays[name] = np.asarray(value)  # plain ndarray over the mapping (see Bank.load)
        offsets, stat = arrays["pixel_offsets"], arrays["image_stat"]
        blob_path = store_dir / "pixel_blob.bin"
        try:
            blob_file = open(blob_path, "rb", buffering=0)
        except OSError as exc:
            raise DamagedEntry(f"{blob_path}: unreadable ({exc.strerror or exc})", store_dir) from None
        try:
            size = os.fstat(blob_file.fileno()).st_size
            n_ann, n_img = meta.get("num_annotations"), meta.get("num_images_total")
            if not (is_int(n_ann) and is_int(n_img)) or len(offsets) != n_ann + 1 or offsets[-1] != size \
                    or stat.shape != (n_img, 2) or (len(offsets) > 1 and np.any(np.diff(offsets) < 0)) \
                    or not isinstance(meta.get("bank"), dict):  # edited by hand: a TypeError below
                raise DamagedEntry(f"{store_dir}: damaged cutout pixel store")
            if bank is not None and (meta["bank"]["sha256"] != bank.meta["source"]["sha256"]
                                     or meta["bank"]["options"] != bank.meta["options"]
                                     or n_ann != bank.num_annotations or n_img != bank.num_images_total):
                raise OccsynthError(f"{store_dir}: cutout pixel store of another bank than {bank.bank_dir}")
        except BaseException:
            blob_file.close()
            raise
        return cls(store_dir, meta, offsets, blob_file, stat)

    def stored(self, annotation_index: int) -> bool:
        k = int(annotation_index)
        return bool(self._offsets[k + 1] > self._offsets[k])

    def crop(self, annotation_index: int, image_index: int, box: Sequence[int], margin: int,
             path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """(:func:`context_crop` of the source image at ``path`` around ``box`` (y0, x0, y1, x1), the
        annotation's mask inside ``box``: what ``masks.decode_crop`` gives), from the store.

        ``box`` is the mask's tight box (the bank's bbox; ``decode_crop`` gives the same box).
        """
        k = int(annotation_index)
        start, end = int(self._offsets[k]), int(self._offsets[k + 1])
        if end <= start or margin > self.margin or margin < 0:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        size, mtime = (int(v) for v in self._stat[int(image_index)])
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            return None
        m = self.margin
        h, w = box[2] - box[0], box[3] - box[1]
        shape = (h + 2 * m, w + 2 * m, 3)
        rgb_bytes = shape[0] * shape[1] * 3
        if end - start != rgb_bytes + (h * w + 7) // 8:
            raise DamagedEntry(f"{self.store_dir}: damaged pixels of annotation index {k}")
        data = np.frombuffer(_read_at(self._blob_file, start, end - start), np.uint8)
        if len(data) != end - start:
            raise DamagedEntry(f"{self.store_dir}: pixel_blob.bin is shorter than its index")
        rgb = data[:rgb_bytes].reshape(shape)
        mask = np.unpackbits(data[rgb_bytes:], count=h * w).view(bool).reshape(h, w)
        d = m - margin
        return (rgb if d == 0 else np.ascontiguousarray(rgb[d:shape[0] - d, d:shape[1] - d])), mask


def _read_at(f, offset: int, size: int) -> bytes:
    """``size`` bytes of file ``f`` from ``offset`` (fewer only at its end); threads may share ``f``."""
    pieces, done = [], 0
    while done < size:  # a read may return less than asked (signals, network file systems)
        if hasattr(os, "pread"):
            piece = os.pread(f.fileno(), size - done, offset + done)
        else:
            with _SEEK_LOCK:  # no pread (Windows): seek + read must not interleave
                f.seek(offset + done)
                piece = f.read(size - done)
        if not piece:
            break
        pieces.append(piece)
        done += len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


_SEEK_LOCK = threading.Lock()


def pixels_report(meta: dict) -> str:
    """One-paragraph summary of a pixel store: stored, skipped per reason, size."""
    lines = [f"cutout pixels: {meta['num_stored']} of {meta['num_cutouts']} cutouts stored "
             f"({format_size(meta['blob_bytes'])}, {meta['margin']} px context) from {meta['image_root']}"]
    lines.append(_skip_log(meta).summary("cutout source images"))
    return "\n".join(lines)


def _skip_log(meta: dict) -> SkipLog:
    """The bad records a build skipped, as recorded in its meta.json."""
    return SkipLog(counts=Counter(meta["skipped"]["counts"]), examples=dict(meta["skipped"]["examples"]))
