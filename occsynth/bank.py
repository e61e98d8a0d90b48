"""The cutout bank: which source instances may be pasted, stored once per source in mmap-able files.

A source instance is pasted only when we know its whole shape: it is not a crowd region, not
tiny, not cut by the image border, and no other instance (or crowd region) touches it, so
nothing can hide part of it. The bank is built by streaming the COCO JSON (train-size files
stay within a few GiB), keeps every valid annotation as compressed RLE in one byte blob, and
is cached under ``cache_dir/banks/<key>``, the key naming the source file's sha256 and the
options. Workers memory-map it, so opening it is cheap and nothing large is copied per task.

Files (``np.save`` arrays, loaded with ``allow_pickle=False``, plus ``meta.json``)::

    image_id, image_hw (N,2), file_name_blob + file_name_offsets     image table; backgrounds first
    image_ann_offsets (N+1)                                          annotations of image i: [off[i], off[i+1])
    ann_id, ann_category, ann_image, ann_iscrowd, ann_area, ann_bbox (M,4), ann_reason
    rle_blob + rle_offsets (M+1)                                     compressed RLE counts strings
    cutout_category (K), cutout_offsets (K+1), cutout_index          complete instances per category
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from . import errors, masks
from .atomic import open_atomic, write_json
from .coco import check_annotation_record, check_image_record, file_hash, iter_array
from .errors import BadRecord, OccsynthError, SkipLog

BANK_FORMAT = 1
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


def _reasons(get_mask: Callable[[int], np.ndarray], boxes: Sequence[tuple[int, int, int, int]], areas: Sequence[int],
             iscrowd: Sequence[bool], height: int, width: int, options: BankOptions) -> list[str | None]:
    """Shared by :func:`completeness` and the bank build; ``get_mask`` is only called for masks it needs."""
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
            grown = np.ascontiguousarray(get_mask(i)[wy0:wy1, wx0:wx1], np.uint8)
            if margin > 0:
                grown = cv2.dilate(grown, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            grown = grown.astype(bool)
            touching = any(np.any(grown & get_mask(j)[wy0:wy1, wx0:wx1]) for j in neighbours)
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
    return _reasons(all_masks.__getitem__, boxes, areas, [bool(c) for c in iscrowd], height, width, options)


# ---------------------------------------------------------------- building


def bank_key(source_sha256: str, options: BankOptions) -> str:
    """Cache key: the source file's hash and a hash of the options and bank format."""
    spec = json.dumps({"format": BANK_FORMAT, "options": dataclasses.asdict(options)}, sort_keys=True)
    return f"{source_sha256[:16]}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


def ensure_bank(ann_path: str | os.PathLike, cache_dir: str | os.PathLike, options: BankOptions = BankOptions(),
                strict: bool = False, progress: bool = True) -> Path:
    """The bank directory of this source and options, built on first use and reused afterwards.

    It is built in a temporary folder and renamed into place, so a killed build leaves nothing
    that looks finished. In strict mode a cached bank that skipped bad records is refused with
    the message of the first one, as a fresh strict build would.
    """
    ann_path = Path(ann_path)
    if not ann_path.is_file():
        raise OccsynthError(f"{ann_path}: file not found")
    sha = file_hash(ann_path)
    banks = Path(cache_dir) / "banks"
    target = banks / bank_key(sha, options)
    if (target / "meta.json").is_file():
        if strict:
            first = _read_meta(target).get("first_skip")
            if first:
                raise OccsynthError(first)
        return target
    banks.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=banks))
    try:
        build_bank(ann_path, tmp, options, strict=strict, progress=progress, source_sha256=sha)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():   # else: another process finished first, use its bank
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_bank(ann_path: str | os.PathLike, bank_dir: str | os.PathLike, options: BankOptions = BankOptions(),
               strict: bool = False, progress: bool = True, *, source_sha256: str | None = None) -> dict:
    """Read a COCO instances file (streaming) and write its bank to ``bank_dir``; returns meta.

    Bad records are skipped and counted by reason (``strict``: the first one raises). An image
    that lost an annotation that way is not used as a background (it would show an unlabelled
    object), but its complete instances are still cutouts.
    """
    ann_path, bank_dir = Path(ann_path), Path(bank_dir)
    log = _FirstSkipLog(strict=strict)
    sha = source_sha256 or file_hash(ann_path)

    categories = _read_categories(ann_path, log)
    if not categories:
        raise OccsynthError(f"{ann_path}: no valid category records (is this a COCO instances file?)")
    images = _read_images(ann_path, log)
    if not images.ids:
        raise OccsynthError(f"{ann_path}: no valid image records (is this a COCO instances file?)")
    anns = _read_annotations(ann_path, images, {c["id"] for c in categories}, log, progress)

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
    image_ann_offsets = np.zeros(n_images + 1, np.int64)
    np.cumsum(np.bincount(ann_image, minlength=n_images), out=image_ann_offsets[1:])

    rle_lengths = np.asarray([len(anns.rles[k]) for k in ann_order], np.int64)
    rle_offsets = np.zeros(len(ann_order) + 1, np.int64)
    np.cumsum(rle_lengths, out=rle_offsets[1:])
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
    cutout_offsets = np.zeros(len(cutout_category) + 1, np.int64)
    np.cumsum(counts, out=cutout_offsets[1:])

    names = [images.file_names[k].encode("utf-8") for k in new_order]
    name_offsets = np.zeros(n_images + 1, np.int64)
    np.cumsum([len(n) for n in names], out=name_offsets[1:])
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
        "source": {"annotations": ann_path.name, "sha256": sha},
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
    categories, seen = [], set()
    for record in iter_array(ann_path, "categories"):
        cid = record.get("id") if isinstance(record, dict) else None
        where = f"category record {cid if cid is not None else record!r}"
        try:
            if not isinstance(cid, int) or isinstance(cid, bool):
                raise BadRecord(errors.MALFORMED_RECORD, where, "'id' missing or not int")
            if cid in seen:
                raise BadRecord(errors.DUPLICATE_ID, where)
        except BadRecord as exc:
            log.skip(exc)
            continue
        seen.add(cid)
        categories.append(record)
    return categories


def _read_images(ann_path: Path, log: SkipLog) -> _Images:
    images = _Images()
    for record in iter_array(ann_path, "images"):
        try:
            check_image_record(record)
            if record["id"] in images.index_of:
                raise BadRecord(errors.DUPLICATE_ID, f"image record {record['id']}")
        except BadRecord as exc:
            log.skip(exc)
            continue
        images.index_of[record["id"]] = len(images.ids)
        images.ids.append(record["id"])
        images.hw.extend((record["height"], record["width"]))
        images.file_names.append(record["file_name"])
        images.tainted.append(0)
    return images


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_annotations(ann_path: Path, images: _Images, category_ids: set, log: SkipLog, progress: bool) -> _Annotations:
    anns, seen = _Annotations(), set()
    records = iter_array(ann_path, "annotations")
    for record in tqdm(records, desc="bank: annotations", unit="ann", disable=not progress, smoothing=0.1):
        image_index = None
        try:
            where = f"annotation {record.get('id', '?') if isinstance(record, dict) else record!r}"
            if isinstance(record, dict):
                for key in ("image_id", "category_id"):
                    if key in record and not _is_int(record[key]):
                        raise BadRecord(errors.MALFORMED_RECORD, where, f"'{key}' is not an integer")
                image_index = images.index_of.get(record.get("image_id"))
            check_annotation_record(record, images.index_of, category_ids)
            if record["id"] in seen:
                raise BadRecord(errors.DUPLICATE_ID, where)
            crowd = record.get("iscrowd", 0)
            if crowd not in (0, 1) or not isinstance(crowd, int):
                raise BadRecord(errors.MALFORMED_RECORD, where, f"iscrowd must be 0 or 1, got {crowd!r}")
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
        anns.iscrowd.append(int(crowd))
        anns.area.append(area)
        anns.bbox.extend(masks.rle_bbox(rle))
        anns.rles.append(rle["counts"])
    return anns


def _compressed_rle(segmentation: Any, height: int, width: int, where: str) -> dict:
    """Any segmentation -> compressed RLE with bytes counts, checked so that decoding it is safe."""
    try:
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            counts = segmentation["counts"]
            if not all(_is_int(c) and c >= 0 for c in counts):
                raise masks.DegenerateMask("uncompressed RLE counts must be non-negative integers")
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
            _check_rle_string(segmentation["counts"], height * width)
        rle = masks.to_rle(segmentation, height, width)
        return {"size": [height, width], "counts": bytes(rle["counts"])}
    except masks.DegenerateMask as exc:
        raise BadRecord(errors.DEGENERATE_MASK, where, str(exc)) from None
    except (TypeError, ValueError, OverflowError, KeyError) as exc:
        raise BadRecord(errors.MALFORMED_RECORD, where, f"unreadable segmentation: {exc}") from None


def _check_rle_string(counts: str, total: int) -> None:
    """Parse a compressed RLE string as pycocotools does; refuse it unless its runs cover exactly ``total`` px.

    pycocotools does not check this and would write past its buffer when decoding.
    """
    runs: list[int] = []
    value = shift = 0
    more = False
    for char in counts:
        c = ord(char) - 48
        if not 0 <= c < 64:
            raise masks.DegenerateMask(f"character {char!r} cannot occur in compressed RLE")
        value |= (c & 0x1F) << (5 * shift)
        more = bool(c & 0x20)
        shift += 1
        if not more:
            if c & 0x10:
                value |= -1 << (5 * shift)
            if len(runs) > 2:
                value += runs[-2]
            if value < 0:
                raise masks.DegenerateMask("compressed RLE has a negative run length")
            runs.append(value)
            value = shift = 0
    if more:
        raise masks.DegenerateMask("compressed RLE string ends in the middle of a number")
    if sum(runs) != total:
        raise masks.DegenerateMask(f"compressed RLE covers {sum(runs)} px, the image has {total}")


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
        decoded: dict[int, np.ndarray] = {}

        def get_mask(j: int) -> np.ndarray:
            if j not in decoded:
                k = start + j
                rle = {"size": [height, width], "counts": rle_blob[rle_offsets[k]:rle_offsets[k + 1]].tobytes()}
                decoded[j] = mask_utils.decode(rle).astype(bool)
            return decoded[j]

        reasons = _reasons(get_mask, boxes, columns["ann_area"][start:end].tolist(), crowd, height, width, options)
        codes[start:end] = [code_of[r] for r in reasons]
    return codes


# ---------------------------------------------------------------- reading


def _read_meta(bank_dir: Path) -> dict:
    try:
        meta = json.loads((bank_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OccsynthError(f"{bank_dir}: not a readable cutout bank ({exc}); delete it to rebuild") from None
    if not isinstance(meta, dict) or meta.get("format") != BANK_FORMAT:
        raise OccsynthError(f"{bank_dir}: cutout bank of another format; delete it to rebuild")
    return meta


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
                raise OccsynthError(f"{path}: unreadable bank array ({exc}); delete {bank_dir} to rebuild") from None
            if value.dtype != np.dtype(dtype) or value.ndim != ndim:
                raise OccsynthError(f"{path}: expected a {ndim}-d {np.dtype(dtype)} array, found {value.ndim}-d "
                                    f"{value.dtype}; delete {bank_dir} to rebuild")
            arrays[name] = value
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
    if not 0 <= int(meta.get("num_images", -1)) <= n_img or not isinstance(meta.get("categories"), list):
        problems.append("meta.json")
    if problems:
        raise OccsynthError(f"{bank_dir}: damaged cutout bank ({', '.join(problems)}); delete it to rebuild")


def report(meta: dict) -> str:
    """Human-readable summary of a bank's meta: kept per category, rejected and skipped per reason."""
    names = {str(c.get("id")): c.get("name", "?") for c in meta.get("categories", [])}
    kept = meta["kept_per_category"]
    lines = [f"source {meta['source']['annotations']} (sha256 {meta['source']['sha256'][:12]}...): "
             f"{meta['num_images_total']} images, {meta['num_annotations']} annotations, "
             f"{meta['num_images']} usable as backgrounds",
             f"kept {meta['num_cutouts']} complete instance(s) as cutouts in "
             f"{sum(1 for n in kept.values() if n)} categories:"]
    lines += [f"  {n:>7}  {cid:>4} {names.get(cid, '?')}" for cid, n in kept.items() if n]
    lines.append("rejected (not complete):")
    lines += [f"  {n:>7}  {reason}" for reason, n in meta["rejected"].items()]
    lines.append(SkipLog(counts=Counter(meta["skipped"]["counts"]), examples=dict(meta["skipped"]["examples"])).summary())
    return "\n".join(lines)
