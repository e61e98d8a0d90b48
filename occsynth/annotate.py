"""Occluder annotations for a real COCO file: who may occlude each instance, for BCNet training.

COCO has no depth order, so "occluder" follows BCNet's rule (its released annotation tool): every
other non-crowd instance whose box IoU with this one's is > 0.05 (see
:func:`occsynth.occluders.box_overlap_occluders`). It marks *possible* occluders - an object behind
this one passes the rule too. ``annotate_occluders`` writes a copy of the file with

- ``occluder_ids`` on every annotation (ids of those instances; ``[]`` for crowd regions);
- with ``bcnet_compat``, ``bg_object_segmentation`` as well: polygons of the union of the
  occluders' masks cut to this instance's box (pixels [floor(x), ceil(x+w)) x [floor(y), ceil(y+h))),
  ``[]`` when it has no more than :data:`BCNET_MIN_OCCLUDER_PIXELS` pixels, as the released tool
  (``process_dataset.py``) writes it - the field BCNet's COCO loader reads. That tool cuts to
  [int(x), int(x+w)) (a pixel less on a fractional edge) and stores subsampled contours; these
  polygons decode to the union exactly, but for its holes: COCO polygons are filled, so a hole in the union
  (an occluder ring around a gap) comes back filled, as it does from that tool's contours (a hole's
  outline is one more filled polygon there).

Existing ``occluder_ids`` are replaced (and counted), unless ``keep_existing``: an occsynth set's are
exact (from the depth order) and better than the box rule's guesses. An annotation whose id an earlier
one has (ids must name one annotation) gets no occluders and occludes nobody; it is counted. An annotation
that is no JSON object, has no integer id (pycocotools fails on either) or a mask that cannot be decoded
(bcnet training skips it) is a bad record: it is left out of the output and reported by reason, as every
reader of this project skips one (``strict``: it stops the run, naming the record and the file, and nothing
is written).

Everything else is left as it was: ids, ``area``, boxes, extra fields and top-level keys (the
original tool overwrote ``area`` with the box area and renumbered ids; that breaks evaluation
against the untouched file), but for the stray parts (fewer than 3 points, an odd count of coordinates) of a
``segmentation`` polygon whose image record has a size, which every reader leaves out and so does the output
(:func:`mask_decodes`; ``amodal_segmentation`` is not read, so copied as it is). Output annotations are grouped by
image, in images-table order, keeping their input order within an image; annotations of unknown images come last, unchanged
apart from empty occluder fields.

Memory stays bounded on the 860k-instance train file: one streaming pass reads everything but
the annotations, a second streams the annotations into per-bucket temporary files (a bucket is
a range of images), then buckets are processed one at a time and the output is streamed to a
temporary file renamed into place at the end.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Collection

import ijson
import numpy as np
from ijson.common import ObjectBuilder
from tqdm.auto import tqdm

from . import masks as mask_ops
from .atomic import locked_spool, open_atomic, remove_orphaned_temporaries
from .boxes import is_box
from .coco import (brief, check_array_start, check_out_file, check_pixels, check_segmentation, check_top_level,
                   check_unique_keys, is_int, iter_array, open_json, reading_json)
from . import errors
from .errors import BadRecord, OccsynthError, SkipLog, os_error_reason, whole_number
from .occluders import BCNET_IOU_THRESHOLD, box_overlap_occluders

IMAGES_PER_BUCKET = 1000
# The released tool leaves bg_object_segmentation empty unless the occluders cover more pixels of the box
BCNET_MIN_OCCLUDER_PIXELS = 20
SPOOL_PREFIX = ".annotate-"  # + the --out file's name: its spool folder beside it
MAX_BUCKETS = 512


def box_window(box: list, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel window [x0, x1) x [y0, y1) covering a COCO box, clipped to the image."""
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(int(math.floor(x)), 0), max(int(math.floor(y)), 0)
    x1, y1 = min(int(math.ceil(x + w)), width), min(int(math.ceil(y + h)), height)
    return x0, y0, max(x1, x0), max(y1, y0)


def annotate_image(annotations: list[dict], height: int | None, width: int | None,
                   threshold: float = BCNET_IOU_THRESHOLD, bcnet_compat: bool = False,
                   keep_existing: bool = False, duplicates: Collection[int] = ()) -> dict:
    """Add ``occluder_ids`` (and ``bg_object_segmentation``) to one image's annotations, in place.

    ``keep_existing``: an annotation that has an ``occluder_ids`` list keeps those of its ids that are
    other annotations of the same image (e.g. an occsynth set's exact, depth-ordered occluders: all of
    them), in their order; the others (ids of other images, unknown ids, its own) are dropped and
    counted. Its ``bg_object_segmentation`` is drawn from the ids kept.

    ``duplicates``: indices of annotations whose id an earlier annotation of the file has. An id must
    name one annotation, so these get no occluders and occlude nobody.

    The annotations' masks must decode (:func:`mask_decodes` tells which do not) when the
    image has a size: ``bcnet_compat`` draws them.

    Returns counts: ``no_box`` (annotations without a usable box or integer id: no occluders, occlude
    nobody), ``with_occluders``, ``no_image_size`` (with ``bcnet_compat``: annotations with occluders
    whose image has no usable height/width, or one over the pixel limit (:func:`occsynth.coco.check_pixels`), so
    their ``bg_object_segmentation`` stays empty),
    ``kept_occluder_ids``, ``dropped_occluder_ids`` (ids dropped from kept lists).
    """
    counts = {"no_box": 0, "with_occluders": 0, "no_image_size": 0, "kept_occluder_ids": 0,
              "dropped_occluder_ids": 0}
    named = [i for i in range(len(annotations)) if i not in duplicates]
    usable = [i for i in named if is_box(annotations[i].get("bbox")) and is_int(annotations[i].get("id"))]
    counts["no_box"] = len(named) - len(usable)
    occluders: dict[int, list[int]] = {i: [] for i in range(len(annotations))}
    if usable:
        boxes = np.asarray([annotations[i]["bbox"] for i in usable], np.float64)
        crowd = [bool(annotations[i].get("iscrowd")) for i in usable]
        for local, hits in enumerate(box_overlap_occluders(boxes, crowd, threshold)):
            occluders[usable[local]] = [usable[j] for j in hits]
    decoded: dict[int, np.ndarray] = {}

    def mask_of(j: int) -> np.ndarray:  # j's mask was checked (mask_decodes): it decodes
        if j not in decoded:
            decoded[j] = mask_ops.decode(annotations[j].get("segmentation"), height, width)
        return decoded[j]

    local_of = {annotations[i]["id"]: i for i in named if is_int(annotations[i].get("id"))}
    for i, ann in enumerate(annotations):
        if i in duplicates:
            hits = []
            ann["occluder_ids"] = []
        elif keep_existing and isinstance(ann.get("occluder_ids"), list):
            given = ann["occluder_ids"]
            hits = list(dict.fromkeys(local_of[j] for j in given if is_int(j) and j in local_of and local_of[j] != i))
            ann["occluder_ids"] = [annotations[j]["id"] for j in hits]
            counts["kept_occluder_ids"] += 1
            counts["dropped_occluder_ids"] += len(given) - len(hits)
        else:
            hits = occluders[i]
            ann["occluder_ids"] = [annotations[j]["id"] for j in hits]
        counts["with_occluders"] += bool(hits)
        if not bcnet_compat:
            continue
        ann["bg_object_segmentation"] = []
        if not hits:
            continue
        if height is None:  # no usable (or drawable) height/width: no mask can be drawn, counted
            counts["no_image_size"] += 1
            continue
        x0, y0, x1, y1 = box_window(ann["bbox"], height, width)
        if x1 <= x0 or y1 <= y0:
            continue
        union = np.zeros((y1 - y0, x1 - x0), bool)
        for j in hits:
            union |= mask_of(j)[y0:y1, x0:x1]
        if mask_ops.area(union) > BCNET_MIN_OCCLUDER_PIXELS:
            ann["bg_object_segmentation"] = mask_ops.to_polygons(union, (x0, y0))
    return counts


def mask_decodes(ann: dict, height: int | None, width: int | None, log: SkipLog) -> bool:
    """Whether an annotation's mask can be decoded (:func:`occsynth.coco.check_segmentation`, the check every
    reader uses); one that cannot goes to ``log`` (strict: raises BadRecord). True without an image size, which
    the check needs. A polygon's stray parts (fewer than 3 points, an odd count of coordinates), which every reader
    leaves out (:func:`occsynth.masks.check_polygons`), are removed from ``ann``: the output carries the parts
    kept, where pycocotools would read every part as a box when the first has 4 numbers."""
    if height is None:
        return True
    try:
        segmentation = check_segmentation(ann.get("segmentation"), height, width, f"annotation {brief(ann.get('id'))}",
                                          rle=False)
    except BadRecord as exc:
        log.skip(exc)
        return False
    if segmentation is not ann.get("segmentation"):
        ann["segmentation"] = segmentation
    return True


def read_top_level(path: str | os.PathLike, skip: str = "annotations") -> tuple[dict, dict[str, str]]:
    """Every top-level value of a JSON object except ``skip`` (streamed past), in file order.

    Returns (values, the parser event that opens each top-level value: "start_array" for a list), so that
    a list that is none (``skip``'s included) is refused with :func:`coco.check_array_start`'s words without
    reading the file again. A key given twice is refused (:func:`coco.check_unique_keys`): every value is copied.
    """
    path = Path(path)
    values: dict = {}
    starts: dict[str, str] = {}
    keys: list[str] = []
    key = builder = None
    with reading_json(path), open_json(path) as f:
        events = ijson.parse(f, use_float=True)
        _, event, _ = next(events, ("", None, None))
        check_top_level(path, event)
        for prefix, event, value in events:
            if prefix == "":
                if event == "map_key":
                    key, builder = value, None
                    keys.append(key)
                    if key != skip:
                        builder, values[key] = ObjectBuilder(), None  # keeps the file's key order
                continue
            starts.setdefault(key, event)
            if builder is None:  # inside the skipped value
                continue
            builder.event(event, value)
            if prefix == key and event not in ("start_map", "start_array", "map_key"):
                values[key] = builder.value
    check_unique_keys(path, keys)
    return values, starts


def annotate_occluders(in_path: str | os.PathLike, out_path: str | os.PathLike,
                       threshold: float = BCNET_IOU_THRESHOLD, bcnet_compat: bool = False, progress: bool = True,
                       images_per_bucket: int = IMAGES_PER_BUCKET, keep_existing: bool = False,
                       strict: bool = False) -> dict:
    """Write a copy of a COCO JSON with occluder annotations (see the module docstring); returns
    ``{"out", "threshold", "bcnet_compat", "counts", "skipped"}`` (``counts``: annotations, images,
    with_occluders and what was replaced or kept, by reason). ``threshold``: box IoU above which an instance
    may occlude, in [0, 1]. ``images_per_bucket``: images whose annotations are spooled to one temporary file and
    held in memory together (see the module docstring); raised where the images would need over
    :data:`MAX_BUCKETS` files. The output does not depend on it.

    ``keep_existing``: annotations that already have ``occluder_ids`` keep them (see :func:`annotate_image`);
    otherwise they are replaced, and counted as ``replaced_occluder_ids``.

    Bad records, an annotation that is no JSON object, has no integer ``id`` or a mask that cannot be
    decoded, are left out of the output and reported in ``skipped`` (a :meth:`SkipLog.to_dict`) by reason;
    ``counts["annotations"]`` are those written. A left-out annotation's id is not taken: a later one with
    that id is no duplicate.
    ``strict``: stop at the first bad record (file order), naming it and the file, and write nothing; the
    other counts (no_box, duplicate_ids, ...) do not stop it.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1):
        raise OccsynthError(f"threshold must be a box IoU in [0, 1], got {threshold!r}")  # NaN fails here too
    if not whole_number(images_per_bucket, 1):
        raise OccsynthError(f"images_per_bucket must be a whole number >= 1, got {images_per_bucket!r}")
    check_out_file(in_path, out_path, "the input would be replaced by its annotated copy")
    top, starts = read_top_level(in_path)
    for key in ("images", "annotations"):  # {} or null: refused before --out's folder is made
        check_array_start(in_path, key, starts.get(key))
    images = top["images"]
    index_of = {}
    for k, image in enumerate(images):
        if isinstance(image, dict) and _is_key(image.get("id")):
            index_of.setdefault(image["id"], k)
    per_bucket = max(images_per_bucket, -(-len(images) // MAX_BUCKETS))
    num_buckets = -(-len(images) // per_bucket)
    counts = {"images": len(images), "annotations": 0, "with_occluders": 0, "no_box": 0,
              "unknown_image": 0, "duplicate_ids": 0, "replaced_occluder_ids": 0, "kept_occluder_ids": 0,
              "dropped_occluder_ids": 0, "no_image_size": 0}
    seen_ids: set[int] = set()
    log = SkipLog(strict=strict)
    spool_prefix = f"{SPOOL_PREFIX}{out_path.name}-"  # this --out's only: others beside it are left be
    with contextlib.ExitStack() as held:
        try:  # the spool folder goes beside --out: an unwritable place is reported as --out's
            out_path.parent.mkdir(parents=True, exist_ok=True)
            remove_orphaned_temporaries(out_path, spool_prefix)  # a killed run's leftovers (hundreds of MB on train)
            tmp = held.enter_context(locked_spool(out_path.parent, spool_prefix))
        except OSError as exc:
            raise OccsynthError(f"cannot write {out_path}: {os_error_reason(exc, making_folder=True)}") from None
        files = [open(tmp / f"{b}.jsonl", "w", encoding="utf-8") for b in range(num_buckets + 1)]
        try:
            for seq, ann in enumerate(tqdm(iter_array(in_path, "annotations"), desc="read annotations",
                                           unit="ann", disable=not progress)):
                if not isinstance(ann, dict) or not is_int(ann.get("id")):  # pycocotools fails on it: not copied
                    why = (f"'id' missing or not int: {brief(ann.get('id'))}" if isinstance(ann, dict)
                           else f"not an object: {brief(ann)}")
                    log.skip(BadRecord(errors.MALFORMED_RECORD, f"annotations[{seq}]", why))
                    continue
                image_id = ann.get("image_id")
                k = index_of.get(image_id) if _is_key(image_id) else None
                if k is not None and not mask_decodes(ann, *_image_size(images[k]), log):
                    continue
                if isinstance(ann.get("occluder_ids"), list) and not keep_existing:
                    counts["replaced_occluder_ids"] += 1  # e.g. an occsynth set's exact ones: reported
                ann_id = ann["id"]
                duplicate = ann_id in seen_ids
                seen_ids.add(ann_id)
                counts["duplicate_ids"] += duplicate
                bucket = num_buckets if k is None else k // per_bucket
                files[bucket].write(json.dumps([seq, -1 if k is None else k, ann, duplicate], separators=(",", ":"))
                                    + "\n")
                counts["annotations"] += 1
        except BadRecord as exc:  # strict: the first bad record
            _close_quietly(files)
            raise exc.in_file(in_path) from None
        except BaseException:
            _close_quietly(files)
            raise
        for f in files:
            f.close()
        with open_atomic(out_path, "w", locked=True) as out, \
                tqdm(total=counts["annotations"], desc="occluders", unit="ann", disable=not progress) as bar:
            out.write("{")
            for key, value in top.items():
                out.write(json.dumps(key) + ":" + _dumps(value) + ",")
            out.write('"annotations":[')
            first = True
            for bucket in range(num_buckets + 1):
                grouped: dict[int, list] = defaultdict(list)
                with open(tmp / f"{bucket}.jsonl", encoding="utf-8") as f:
                    for line in f:
                        seq, k, ann, duplicate = json.loads(line)
                        grouped[k].append((ann, duplicate))
                for k in sorted(grouped):
                    anns = [ann for ann, _ in grouped[k]]
                    if k < 0:
                        counts["unknown_image"] += len(anns)
                        for ann in anns:
                            ann["occluder_ids"] = []
                            if bcnet_compat:
                                ann["bg_object_segmentation"] = []
                    else:
                        duplicates = {i for i, (_, duplicate) in enumerate(grouped[k]) if duplicate}
                        h, w = _drawable_size(images[k])
                        c = annotate_image(anns, h, w, threshold, bcnet_compat, keep_existing, duplicates)
                        for name in ("no_box", "with_occluders", "no_image_size", "kept_occluder_ids",
                                     "dropped_occluder_ids"):
                            counts[name] += c[name]
                    for ann in anns:
                        out.write(("" if first else ",") + _dumps(ann))
                        first = False
                    bar.update(len(anns))
                (tmp / f"{bucket}.jsonl").unlink()
            out.write("]}")
    return {"out": str(out_path), "threshold": threshold, "bcnet_compat": bcnet_compat, "counts": counts,
            "skipped": log.to_dict()}


def _close_quietly(files: list) -> None:
    """Close every spool file after a failure: a close that fails too (a full disk) must neither replace the
    failure's own error nor leave the other files open (the spool folder is removed anyway)."""
    for f in files:
        with contextlib.suppress(OSError):
            f.close()


def _image_size(image: Any) -> tuple[int | None, int | None]:
    """(height, width) of an image record, or (None, None) where it has no usable (positive int) size."""
    h, w = (image.get("height"), image.get("width")) if isinstance(image, dict) else (None, None)
    if is_int(h) and is_int(w) and h > 0 and w > 0:
        return h, w
    return None, None


def _drawable_size(image: Any) -> tuple[int | None, int | None]:
    """:func:`_image_size`, or (None, None) for a record over the pixel limit (:func:`occsynth.coco.check_pixels`):
    no mask is drawn at that size (pycocotools crashed the process rasterising one at 10^6 x 10^6), so its
    annotations keep their occluder ids and get no ``bg_object_segmentation`` (counted as ``no_image_size``)."""
    h, w = _image_size(image)
    if h is None:
        return h, w
    try:
        check_pixels((h, w), "")
    except BadRecord:
        return None, None
    return h, w


def _is_key(value: Any) -> bool:
    """An id usable as a key (a list id would raise TypeError in a dict lookup)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
