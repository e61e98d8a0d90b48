"""Amodal datasets (KINS, COCOA) -> COCO layout with the amodal fields of docs/FORMAT.md.

Every converted annotation has ``segmentation`` (the visible mask), ``area``/``bbox`` (of the visible
mask), ``amodal_segmentation``, ``amodal_area``/``amodal_bbox``, ``occlusion_ratio``
(``1 - area / amodal_area``) and ``occluder_ids``. A fully hidden instance (nothing visible: ``area`` 0,
``bbox`` [0, 0, 0, 0], ``occlusion_ratio`` 1) is kept for its amodal mask, which is still a label, but as an
ignore region, ``iscrowd`` 1 (counted as ``fully_hidden``): with ``iscrowd`` 0, pycocotools scores it as an
object no detection can match (a perfect detector's visible AP falls below 1), and mmdetection and detectron2
drop it from training anyway (zero-area box). So pycocotools, detectron2 and mmdetection ignore it; amodal
users find it by ``iscrowd`` 1 with ``area`` 0. bcnet trains on neither (it trains on non-crowd instances; it
skipped the empty visible mask before), and ``bcnet evaluate --mode amodal`` ignores a detection over its
amodal mask. It is not a generated set: masks stay as the source gives them (KINS
polygons stay polygons, less the stray parts every reader leaves out; a mask that had to be rebuilt is RLE), and there is no ``amodal_complete`` or
``source`` (nor ``layer`` for KINS), so ``occsynth validate`` refuses these files.

KINS (``update_train_2020.json``, Qi et al. 2019) is already COCO-like: per annotation ``a_segm``
/ ``a_bbox`` (amodal) and ``i_segm`` / ``i_bbox`` (inmodal = visible) polygons. Images (the usable
records), categories, ids and other fields (``oco_id``, ``ico_id``, ...) are kept; the four renamed
fields are not repeated. Its JSON has no explicit depth order, so occluders are read off the masks:
``j`` occludes ``i`` when ``j``'s visible mask covers at least ``min_overlap`` pixels of ``i``'s
hidden part (amodal minus visible) - exactly where ``i`` is hidden, something is in front.

COCOA (``COCO_amodal_train2014.json``, Zhu et al. 2017) stores one record per image with a
``regions`` list: ``segmentation`` (amodal polygon), ``visible_mask`` (RLE, absent when the region
is not occluded), ``invisible_mask``, ``order`` (depth order, 1 = front), ``name`` (free text),
``isStuff``, ``occlude_rate``. Each region becomes one annotation (ids from 1). Occluders follow
the depth order as in occsynth's synthetic sets: regions nearer the camera (smaller ``order``)
whose amodal mask meets this one's. ``layer`` = (largest order in the image) - ``order``, so
higher is nearer, as in FORMAT.md. COCOA names are free text: with a COCO category list they map
by (case-insensitive) name; the rest, or everything without a list, go to a ``thing`` or ``stuff``
category by ``isStuff`` (0/1, true/false, or those as text; anything else counts as a thing and is
counted as ``bad_is_stuff``). Of records of one image, or regions of one record with the same amodal
``segmentation`` as written (a flat polygon or a list of it, less stray parts), the first is converted and the
others are skipped as duplicates.

Both readers load the whole file (the published files are a few hundred MB at most).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from . import errors
from . import masks as mask_ops
from .atomic import remove_orphaned_temporaries, write_json
from .coco import (brief, categories_by_id, check_image_id, check_iscrowd, check_out_file, duplicate_detail, id_detail,
                   is_int, read_dataset, read_json, unique_by_id, usable_image_records)
from .errors import BadRecord, OccsynthError, SkipLog
from .occluders import layer_occluders


def _mask(segmentation: Any, height: int, width: int, where: str) -> np.ndarray | None:
    """The decoded mask, None when absent; one that is given but cannot be decoded is a BadRecord
    (never replaced by another mask or an empty one)."""
    if segmentation in (None, [], {}):
        return None
    if isinstance(segmentation, list) and segmentation and not isinstance(segmentation[0], (list, tuple)):
        segmentation = [segmentation]  # COCOA: one flat polygon
    try:
        return mask_ops.decode(segmentation, height, width)
    except (mask_ops.DegenerateMask, TypeError, ValueError, OverflowError) as exc:
        raise BadRecord(errors.DEGENERATE_MASK, where, str(exc)) from None


def _polygons(segmentation: Any, height: int, width: int) -> Any:
    """A decoded polygon mask as written: a list of polygons (COCOA writes one flat polygon), of its parts those
    rasterised (:func:`occsynth.masks.check_polygons`): a stray part of fewer than 3 points or an odd count of
    coordinates is left out, as every reader leaves it out (pycocotools would read every part as a box when the
    first has 4 numbers)."""
    if isinstance(segmentation, list) and segmentation and not isinstance(segmentation[0], (list, tuple)):
        segmentation = [segmentation]
    return mask_ops.check_polygons(segmentation, height, width) if isinstance(segmentation, list) else segmentation


def _measures(visible: np.ndarray, amodal: np.ndarray) -> dict:
    area, amodal_area = mask_ops.area(visible), mask_ops.area(amodal)
    return {"area": area, "bbox": mask_ops.bbox(visible), "amodal_area": amodal_area,
            "amodal_bbox": mask_ops.bbox(amodal),
            "occlusion_ratio": (1.0 - area / amodal_area) if amodal_area else 0.0}


def _mark_fully_hidden(record: dict, counts: dict) -> None:
    """A record with nothing visible becomes an ignore region (``iscrowd`` 1), counted as ``fully_hidden``
    (see the module docstring); one the source already marks as a crowd region is none of these instances."""
    if record["area"] == 0 and record.get("iscrowd") != 1:
        record["iscrowd"] = 1
        counts["fully_hidden"] += 1


def hidden_part_occluders(visible: Sequence[np.ndarray], amodal: Sequence[np.ndarray],
                          min_overlap: int = 1) -> list[list[int]]:
    """For each instance, indices of the others whose visible mask covers >= min_overlap of its hidden part."""
    result = []
    for i in range(len(visible)):
        hidden = amodal[i] & ~visible[i]
        if not hidden.any():
            result.append([])
            continue
        result.append([j for j in range(len(visible))
                       if j != i and np.count_nonzero(hidden & visible[j]) >= min_overlap])
    return result


def _strict_in_file(convert: Callable[..., dict]) -> Callable[..., dict]:
    """A converter whose ``strict`` stop names the input file with the record (``FILE: annotation 12: ...``): in
    strict mode the first bad record raises from wherever it is met, before anything is written."""
    @functools.wraps(convert)
    def named(in_path: str | os.PathLike, *args, **kwargs) -> dict:
        try:
            return convert(in_path, *args, **kwargs)
        except BadRecord as exc:  # only a strict SkipLog lets one out
            raise exc.in_file(in_path) from None
    return named


@_strict_in_file
def convert_kins(in_path: str | os.PathLike, out_path: str | os.PathLike, min_overlap: int = 1,
                 progress: bool = True, strict: bool = False) -> dict:
    """KINS JSON -> COCO layout with amodal and visible masks and mask-derived occluder ids.

    Bad records (images, annotations without a unique integer id, of a skipped or unknown image, of an unknown
    category or with a mask that cannot be decoded) are skipped and listed in the report's ``skipped`` by reason; the
    output's ``images`` are the usable image records. ``strict``: stop at the first, naming it and the file;
    nothing is written.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    check_out_file(in_path, out_path, "the input would be overwritten")
    remove_orphaned_temporaries(out_path)  # a killed run's half-written output
    data = read_dataset(in_path, finite=True)  # copied fields: the output must stay JSON
    if not data["annotations"]:
        raise OccsynthError(f"{in_path}: no annotations to convert (its 'annotations' list is empty)")
    if not any(isinstance(a, dict) and ("a_segm" in a or "i_segm" in a) for a in data["annotations"]):
        raise OccsynthError(f"{in_path}: not a KINS file (no annotation has 'a_segm'/'i_segm')")
    log = SkipLog(strict=strict)
    images, bad_images, skipped_images = _usable_images(data["images"], log)
    # the usable records only, as for images: pycocotools fails on one that is no object, and keeps the last
    # record of a repeated id where the converter (every reader here) keeps the first
    categories = {c["id"]: c for c in unique_by_id(data["categories"], "category", log)}
    by_image: dict = {}
    counts = {"images": len(images), "annotations": 0, "bad_masks": 0,
              "fully_hidden": 0, "with_occluders": 0, "bad_images": bad_images}
    for ann in unique_by_id(data["annotations"], "annotation", log):  # occluder_ids name annotations by id
        if _image_of(ann, f"annotation {brief(ann['id'])}", images, skipped_images, log) is None:
            continue
        if not is_int(ann.get("category_id")) or ann["category_id"] not in categories:
            log.skip(BadRecord(errors.UNKNOWN_CATEGORY, f"annotation {brief(ann['id'])}",
                               id_detail("category_id", ann.get("category_id"))))
            continue
        try:
            check_iscrowd(ann, f"annotation {brief(ann['id'])}")  # pycocotools' COCOeval fails on 'yes'
        except BadRecord as exc:
            log.skip(exc)
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    out_annotations = []
    for image_id in tqdm([i for i in images if i in by_image], desc="kins", unit="img", disable=not progress):
        image = images[image_id]
        h, w = image["height"], image["width"]
        anns, visible, amodal, as_given = [], [], [], []
        for ann in by_image[image_id]:
            where = f"annotation {brief(ann['id'])}"
            try:
                if "i_segm" not in ann or "a_segm" not in ann:  # [] is a hidden or absent mask; no key is no record
                    raise BadRecord(errors.MALFORMED_RECORD, where, f"no '{'i_segm' if 'i_segm' not in ann else 'a_segm'}' "
                                    "field (KINS gives both; [] for an empty mask)")
                a = _mask(ann.get("a_segm"), h, w, f"{where} a_segm")
                v = _mask(ann.get("i_segm"), h, w, f"{where} i_segm")
                if a is None and v is None:
                    raise BadRecord(errors.DEGENERATE_MASK, where, "neither 'a_segm' nor 'i_segm' is given")
                if not ((a is not None and a.any()) or (v is not None and v.any())):
                    raise BadRecord(errors.DEGENERATE_MASK, where, "empty mask: 'a_segm' and 'i_segm' cover no pixel "
                                    "of the image")
            except BadRecord as exc:
                counts["bad_masks"] += 1
                log.skip(exc)
                continue
            as_given.append((v is not None, a is not None and not np.any(v & ~a) if v is not None else a is not None))
            v = np.zeros((h, w), bool) if v is None else v
            a = v.copy() if a is None else a | v  # the visible part belongs to the amodal mask
            anns.append(ann)
            visible.append(v)
            amodal.append(a)
        occluders = hidden_part_occluders(visible, amodal, min_overlap)
        for ann, v, a, occ, (v_given, a_given) in zip(anns, visible, amodal, occluders, as_given):
            record = {k: val for k, val in ann.items() if k not in ("a_segm", "i_segm", "a_bbox", "i_bbox")}
            record.update(_measures(v, a))
            # Polygons are kept as given (but for stray parts: _polygons); a mask that had to be rebuilt is RLE.
            record["segmentation"] = _polygons(ann["i_segm"], h, w) if v_given else mask_ops.encode(v)
            record["amodal_segmentation"] = _polygons(ann["a_segm"], h, w) if a_given else mask_ops.encode(a)
            record.setdefault("iscrowd", 0)
            record["occluder_ids"] = [anns[j]["id"] for j in occ]
            counts["with_occluders"] += bool(occ)
            _mark_fully_hidden(record, counts)
            out_annotations.append(record)
    counts["annotations"] = len(out_annotations)
    _check_converted(in_path, out_annotations, log, "is this a KINS file?")
    output = {k: v for k, v in data.items() if k != "annotations"}
    output["images"] = list(images.values())  # the records skipped as bad would break a COCO reader
    output["categories"] = list(categories.values())
    output["annotations"] = out_annotations
    write_json(out_path, output, locked=True)
    return {"out": str(out_path), "format": "kins", "counts": counts, "skipped": log.to_dict()}


def _check_converted(in_path: Path, converted: list, log: SkipLog, nothing_skipped: str) -> None:
    """Refuse, before anything is written, a file of which not one annotation could be converted (every image
    record bad, or every annotation): an empty output would read as a converted set (as build-cocoocc refuses a
    file without usable image records), and would replace the output of an earlier run. ``nothing_skipped``: why,
    when no record was skipped."""
    if converted:
        return
    raise OccsynthError(f"{in_path}: no annotation could be converted, nothing written "
                        f"({log.in_one_line() if log.total else nothing_skipped})")


def _whole_number(value: Any) -> int:
    """An int, or a float with no fraction, as int; TypeError/ValueError/OverflowError for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    if int(value) != value:
        raise ValueError(f"not a whole number: {value!r}")
    return int(value)


def _flag(value: Any) -> bool | None:
    """COCOA's 0/1 flags (``isStuff``) as bool: 0, 1, true, false, null, and the texts "0", "1", "true",
    "false" (any case); None for anything else. The text "0" is not true, as Python's truth would have it."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("0", "1", "true", "false"):
        return text in ("1", "true")
    return None


def _usable_images(records: list, log: SkipLog) -> tuple[dict, int, dict[int, str]]:
    """Image records by id, how many were left out (also in ``log``), and why those with an id were, by id
    (:func:`occsynth.coco.note_skipped_image`: their annotations are then of a skipped image, not of an unknown
    one). Masks are decoded at their height and width, so a size over the pixel limit is a bad record
    (:func:`occsynth.coco.check_image_record`)."""
    images, skipped_images = usable_image_records(records, log)  # an id's first usable record: the output names it once
    return images, len(records) - len(images), skipped_images


def _image_of(ann: dict, where: str, images: dict, skipped_images: dict[int, str], log: SkipLog) -> dict | None:
    """The usable image record of an annotation (named ``where`` in messages), or None: skipped in ``log`` as of a
    skipped image record or of an unknown image id (:func:`occsynth.coco.check_image_id`), as every reader of the
    project skips it."""
    try:
        return images[check_image_id(ann, where, images, skipped_images)]
    except BadRecord as exc:
        log.skip(exc)
        return None


def _normalise_name(name: Any) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def cocoa_categories(coco_categories: list[dict] | None) -> tuple[list[dict], dict, int, int]:
    """(categories, name -> id, thing id, stuff id): the given COCO list plus ``thing`` and ``stuff``."""
    base = [dict(c) for c in categories_by_id(coco_categories or []).values()]  # an id once: a COCO reader keeps one
    top = max([c["id"] for c in base], default=0)
    thing, stuff = top + 1, top + 2
    categories = base + [{"id": thing, "name": "thing", "supercategory": "thing"},
                         {"id": stuff, "name": "stuff", "supercategory": "stuff"}]
    by_name = {_normalise_name(c.get("name", "")): c["id"] for c in base}
    return categories, by_name, thing, stuff


@_strict_in_file
def convert_cocoa(in_path: str | os.PathLike, out_path: str | os.PathLike,
                  categories_from: str | os.PathLike | list | None = None, progress: bool = True,
                  strict: bool = False) -> dict:
    """COCOA JSON -> COCO layout; ``categories_from``: a COCO JSON path (or category list) to map names to.

    Bad records (images, annotations of a skipped or unknown image, a ``regions`` that is not a list, regions whose
    masks cannot be decoded) are skipped and listed in the report's ``skipped`` by reason. So are duplicates, which
    would put an object into the output twice: a record repeating an earlier one's id, a later record of an
    image (COCOA has one per image; another annotator's would be a second copy of each object), and a region
    whose amodal ``segmentation``, as written (:func:`_polygons`), an earlier region of its record has. ``strict``: stop at the first, naming it
    and the file; nothing is written.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    check_out_file(in_path, out_path, "the input would be overwritten")
    if categories_from is not None and not isinstance(categories_from, list):
        check_out_file(Path(categories_from), out_path, "that file would be overwritten", "--categories-from")
    remove_orphaned_temporaries(out_path)  # a killed run's half-written output
    data = read_json(in_path, finite=True)  # copied fields: the output must stay JSON
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise OccsynthError(f"{in_path}: not a COCOA file (needs 'images' and 'annotations' lists)")
    if not data["annotations"]:
        raise OccsynthError(f"{in_path}: no annotations to convert (its 'annotations' list is empty)")
    if not any(isinstance(a, dict) and "regions" in a for a in data["annotations"]):
        raise OccsynthError(f"{in_path}: not a COCOA file (no 'regions')")
    coco_categories = None
    if isinstance(categories_from, list):
        coco_categories = categories_from
    elif categories_from is not None:
        loaded = read_json(categories_from, finite=True)
        coco_categories = loaded.get("categories") if isinstance(loaded, dict) else None
        if not isinstance(coco_categories, list):
            raise OccsynthError(f"{categories_from}: has no 'categories' list")
    categories, by_name, thing_id, stuff_id = cocoa_categories(coco_categories)
    log = SkipLog(strict=strict)
    images, bad_images, skipped_images = _usable_images(data["images"], log)
    counts = {"images": len(images), "annotations": 0, "bad_masks": 0,
              "fully_hidden": 0, "with_occluders": 0, "matched_category": 0, "thing": 0, "stuff": 0,
              "bad_images": bad_images, "bad_order": 0, "bad_is_stuff": 0}
    out_annotations = []
    next_id = 1
    record_ids: set[int] = set()
    converted_for: dict[int, str] = {}  # image id -> the record converted for it, as messages name it
    for seq, record in enumerate(tqdm(data["annotations"], desc="cocoa", unit="img", disable=not progress)):
        if not isinstance(record, dict):  # not an annotation of an unknown image: a malformed one
            log.skip(BadRecord(errors.MALFORMED_RECORD, f"COCOA annotations[{seq}]", f"not an object: {brief(record)}"))
            continue
        where = f"COCOA annotation {brief(record.get('id', '?'))}"
        if is_int(record.get("id")):  # source.annotation_id names the record: one id, one record
            if record["id"] in record_ids:
                log.skip(BadRecord(errors.DUPLICATE_ID, where, duplicate_detail(log)))
                continue
            record_ids.add(record["id"])
        image = _image_of(record, where, images, skipped_images, log)
        if image is None:
            continue
        h, w = image["height"], image["width"]
        if not isinstance(record.get("regions"), list):  # {} or null too: skipped, not dropped uncounted
            log.skip(BadRecord(errors.MALFORMED_RECORD, where, f"'regions' is not a list: {brief(record['regions'])}"
                               if "regions" in record else "no 'regions' list"))
            continue
        if image["id"] in converted_for:  # its instances again (another annotator's): each object twice
            log.skip(BadRecord(errors.DUPLICATE_RECORD, where, f"image_id {image['id']} is annotated by an earlier "
                               f"record, {converted_for[image['id']]}"
                               + ("" if log.strict else "; only the first record of an image is converted")))
            continue
        converted_for[image["id"]] = where
        regions, visible, amodal = [], [], []
        region_of: dict[str, int] = {}  # an amodal segmentation -> the region that gave it
        for index, region in enumerate(record["regions"]):
            try:
                a, v = _region_masks(region, h, w, f"{where} region {index}")
            except BadRecord as exc:
                counts["bad_masks"] += 1
                log.skip(exc)
                continue
            written = _polygons(region["segmentation"], h, w)  # as the output writes it: the same instance
            seen = region_of.setdefault(json.dumps(written, sort_keys=True), index)  # however the file spells it
            if seen != index:
                log.skip(BadRecord(errors.DUPLICATE_RECORD, f"{where} region {index}",
                                   f"the same segmentation as region {seen}: one instance, listed again"))
                continue
            regions.append((index, region, written))
            visible.append(v & a)
            amodal.append(a)
        if not regions:
            continue
        try:
            orders = [_whole_number(r.get("order", k + 1)) for k, (_, r, _) in enumerate(regions)]
        except (TypeError, ValueError, OverflowError):  # null, text, 2.5, NaN: the listing order stands in, counted
            counts["bad_order"] += 1
            orders = list(range(1, len(regions) + 1))
        layers = [max(orders) - o for o in orders]  # order 1 = front: nearest the camera, highest layer
        occluders = layer_occluders(amodal, layers)
        ids = list(range(next_id, next_id + len(regions)))
        next_id += len(regions)
        for k, ((index, region, written), v, a, occ) in enumerate(zip(regions, visible, amodal, occluders)):
            is_stuff = _flag(region.get("isStuff", 0))
            if is_stuff is None:  # "yes", 2, a list: a thing, counted (as a bad order is)
                counts["bad_is_stuff"] += 1
                is_stuff = False
            category = by_name.get(_normalise_name(region.get("name", "")))
            if category is not None:
                counts["matched_category"] += 1
            else:
                category = stuff_id if is_stuff else thing_id
                counts["stuff" if category == stuff_id else "thing"] += 1
            ann = {"id": ids[k], "image_id": record["image_id"], "category_id": category, "iscrowd": 0,
                   "segmentation": mask_ops.encode(v), "amodal_segmentation": written,
                   **_measures(v, a), "order": orders[k], "layer": layers[k],
                   "occluder_ids": [ids[j] for j in occ], "name": region.get("name"),
                   "is_stuff": is_stuff,
                   "source": {"annotation_id": record.get("id"), "region_index": index}}
            if "occlude_rate" in region:
                ann["occlude_rate"] = region["occlude_rate"]
            counts["with_occluders"] += bool(occ)
            _mark_fully_hidden(ann, counts)
            out_annotations.append(ann)
    counts["annotations"] = len(out_annotations)
    _check_converted(in_path, out_annotations, log, "every record's 'regions' list is empty")
    info = dict(data["info"]) if isinstance(data.get("info"), dict) else {}  # COCO's info is an object
    info.setdefault("description", f"COCOA converted from {in_path.name}")
    output = {"info": info, "licenses": data.get("licenses", []), "images": list(images.values()),
              "annotations": out_annotations, "categories": categories}
    write_json(out_path, output, locked=True)
    return {"out": str(out_path), "format": "cocoa", "counts": counts, "skipped": log.to_dict()}


def _region_masks(region: Any, height: int, width: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(amodal, visible) masks of a COCOA region; no ``visible_mask`` means not occluded."""
    if not isinstance(region, dict):
        raise BadRecord(errors.MALFORMED_RECORD, where, "not an object")
    amodal = _mask(region.get("segmentation"), height, width, f"{where} segmentation")
    if amodal is None:
        raise BadRecord(errors.DEGENERATE_MASK, where, "no 'segmentation'")
    if not amodal.any():  # outside the image, or no area: nothing to label
        raise BadRecord(errors.DEGENERATE_MASK, f"{where} segmentation", "empty mask: it covers no pixel of the image")
    if not region.get("visible_mask"):
        return amodal, amodal
    return amodal, _mask(region["visible_mask"], height, width, f"{where} visible_mask")
