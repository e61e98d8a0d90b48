"""Occluded and Separated COCO recall (Zhan, Xie & Zisserman, BMVC 2022).

Two lists of COCO val2017 objects: *occluded* (partly hidden, mask still connected) and
*separated* (split into disjoint parts by an occluder). An object counts as found when some
prediction on its image with score >= 0.3 and the same class has mask IoU >= 0.75 with it;
recall = found / listed, for each list, over the listed objects whose image is in the set evaluated
(so on a subset of val2017 such as COCO-OCC it is the recall of the objects that subset holds; the
others are counted apart, as ``outside_set``). Works on plain COCO results (``image_id``,
``category_id``, ``score``, ``segmentation`` RLE) - no torch needed.

The published lists are pickles (``occluded_coco.pkl``, ``separated_coco.pkl``). Unpickling runs
code chosen by the file's author, so :func:`load_objects` uses an unpickler that resolves no
globals at all: only lists, tuples, dicts, sets, strings, bytes, numbers, booleans and None can
be built; anything else (a class, a function, a numpy array) is refused with an error. (Pickle
protocols 0-2 need globals even for bytes, so only Python 3 pickles - protocol 3 and up - load.) The same
lists as JSON (bytes RLE counts as strings) are read too. Entry layout, as the authors' code reads
it: ``[file_name, class_name, _, bbox, rle]``; a 4-item ``[file_name, class, bbox, mask]`` is also
accepted. Masks may be RLE or polygons; classes names or category ids.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from occsynth import masks as mask_ops
from occsynth.coco import brief
from occsynth.errors import OccsynthError, plural

SCORE_THRESHOLD = 0.3
IOU_THRESHOLD = 0.75


class RefusedPickle(OccsynthError):
    """A pickle that would need a global (class, function) to load: refused."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise RefusedPickle(f"refusing to load {module}.{name} from a pickle: only plain lists, dicts, strings, "
                            "bytes and numbers are allowed. Convert the file to JSON in an environment you "
                            "trust, or use the JSON form of the lists.")

    def persistent_load(self, pid):
        raise RefusedPickle("refusing a pickle with persistent ids")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle builtin containers and primitives only; raises :class:`RefusedPickle` on anything else."""
    try:
        return _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except RefusedPickle:
        raise
    except Exception as exc:  # truncated / corrupt streams raise many types
        raise OccsynthError(f"not a readable pickle: {exc}") from None


def load_objects(path: str | os.PathLike) -> list:
    """The object list of ``occluded_coco.pkl`` / ``separated_coco.pkl`` (or a JSON copy), safely."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OccsynthError(f"{path}: file not found") from None
    if data[:1] in (b"[", b"{") or path.suffix.lower() == ".json":
        try:
            objects = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OccsynthError(f"{path}: malformed JSON ({exc})") from None
    else:
        try:
            objects = safe_unpickle(data)
        except RefusedPickle as exc:
            raise RefusedPickle(f"{path}: {exc}") from None
        except OccsynthError as exc:
            raise OccsynthError(f"{path}: {exc}") from None
    if not isinstance(objects, (list, tuple)):
        found = "a JSON object (a COCO annotations file?)" if isinstance(objects, dict) else type(objects).__name__
        raise OccsynthError(f"{path}: not an Occluded/Separated COCO object list: expected a list of objects, found "
                            f"{found}")
    check_objects(objects, path)
    return list(objects)


MAX_REPORTED = 5  # bad entries named in one error


def check_objects(objects: Sequence, where: str | os.PathLike) -> None:
    """Refuse a list with a bad entry, naming ``where`` (the list file) and each bad entry's index (the
    first few): found when the list is read, not after a whole evaluation has run."""
    problems = []
    for i, entry in enumerate(objects):
        try:
            _, cls, segmentation = parse_entry(entry)
            problem = entry_problem(cls, segmentation)
        except OccsynthError as exc:
            problem = str(exc)
        if problem:
            problems.append(f"entry {i}: {problem}")
    if problems:
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise OccsynthError(f"{where}: {plural(len(problems), 'bad object entry', 'bad object entries')}: "
                            + "; ".join(problems[:MAX_REPORTED]) + more)


def entry_problem(cls: Any, segmentation: Any) -> str:
    """What is wrong with an entry's class and mask ('' when nothing): an RLE must decode at its own
    size; polygons are checked for shape only (their image's size is known at scoring time): at least one part of
    >= 3 points, as every reader keeps (:func:`occsynth.masks.polygon_parts`)."""
    if isinstance(cls, bool) or not isinstance(cls, (str, int)):
        return f"class must be a class name or a category id, got {brief(cls)}"
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            return f"RLE size must be [height, width] (positive integers), got {brief(size)}"
        try:
            mask_ops.decode_crop(segmentation, size[0], size[1])
        except (mask_ops.DegenerateMask, TypeError, ValueError) as exc:
            return f"unreadable RLE ({exc})"
        return ""
    try:  # the parts a reader keeps (detectron2's rule): a stray short part beside a good one is dropped
        mask_ops.polygon_parts(segmentation)
    except mask_ops.DegenerateMask as exc:
        return f"mask must be an RLE dict or polygons (lists of >= 3 x, y points; {exc}), got {brief(segmentation)}"
    return ""


def parse_entry(entry: Sequence) -> tuple[str, Any, Any]:
    """(file_name, class, mask) of one list entry (5-item published layout or 4-item layout)."""
    if not isinstance(entry, (list, tuple)) or len(entry) not in (4, 5) or not isinstance(entry[0], str):
        raise OccsynthError(f"object entry must be [file_name, class, (_,) bbox, mask], got {str(entry)[:120]}")
    return entry[0], entry[1], entry[-1]


def _rle(segmentation: Any, height: int | None, width: int | None) -> dict:
    if isinstance(segmentation, dict) and "size" in segmentation:
        h, w = segmentation["size"]
        return mask_ops.to_rle(segmentation, int(h), int(w))
    if height is None:
        raise OccsynthError("a polygon mask needs the image size: give the RLE form or image sizes")
    return mask_ops.to_rle(segmentation, height, width)


def occsep_recall(results: list[dict], gt_images: dict[str, int], objects: list, *,
                  score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
                  categories: list[dict] | dict | None = None) -> dict:
    """Recall of one object list given COCO-format mask results.

    ``gt_images`` maps file names to image ids (the GT file's images table). Classes given by
    name are matched through ``categories`` (COCO category list or ``{id: name}``). Returns
    ``found``, ``total`` (listed objects whose image is in ``gt_images``), ``recall`` (found / total,
    0..1; None when total is 0: nothing to recall is not 0% recalled), ``outside_set`` (listed objects
    whose image is not: not scored, as they cannot be found in these results: none for val2017
    itself, many for COCO-OCC) and per-entry ``hits`` (None for an object outside the set).
    """
    names: dict[int, str] = {}
    if isinstance(categories, dict):
        names = {int(k): str(v) for k, v in categories.items()}
    elif categories:
        names = {c["id"]: c["name"] for c in categories}
    if not names and any(isinstance(parse_entry(e)[1], str) for e in objects):
        raise OccsynthError("the object list names classes; pass categories (the GT file's category list)")
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r.get("score", 0.0) >= score_threshold and "segmentation" in r:
            by_image.setdefault(r["image_id"], []).append(r)
    for dets in by_image.values():
        dets.sort(key=lambda r: -r["score"])
    hits: list[bool | None] = []
    for entry in objects:
        file_name, cls, segmentation = parse_entry(entry)
        image_id = gt_images.get(file_name)
        if image_id is None:
            hits.append(None)
            continue
        gt = _rle(segmentation, None, None) if isinstance(segmentation, dict) else None
        dets = []
        for r in by_image.get(image_id, []):
            if cls == r["category_id"] or (isinstance(cls, str) and names.get(r["category_id"]) == cls):
                dets.append(r)
        found = False
        if dets:
            h, w = (gt["size"] if gt is not None else dets[0]["segmentation"]["size"])
            gt = gt if gt is not None else _rle(segmentation, int(h), int(w))
            det_rles = [_rle(r["segmentation"], int(h), int(w)) for r in dets]
            ious = np.asarray(mask_utils.iou(det_rles, [gt], [0])).reshape(-1)
            found = bool(np.any(ious >= iou_threshold))
        hits.append(found)
    total = sum(hit is not None for hit in hits)
    n = sum(hit is True for hit in hits)
    return {"found": n, "total": total, "recall": n / total if total else None, "outside_set": len(hits) - total,
            "score_threshold": score_threshold, "iou_threshold": iou_threshold, "hits": hits}


def occsep_report(results: list[dict], gt_images: dict[str, int], occluded: list, separated: list,
                  **kwargs) -> dict:
    """Both recalls, as the paper reports them (percent; None with no listed object in the set),
    plus the found/total counts."""
    occ = occsep_recall(results, gt_images, occluded, **kwargs)
    sep = occsep_recall(results, gt_images, separated, **kwargs)
    return {"occluded_recall": _percent(occ["recall"]), "separated_recall": _percent(sep["recall"]),
            "occluded": {k: v for k, v in occ.items() if k != "hits"},
            "separated": {k: v for k, v in sep.items() if k != "hits"}}


def _percent(recall: float | None) -> float | None:
    return None if recall is None else 100.0 * recall
