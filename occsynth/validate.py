"""`occsynth validate`: check a generated set against the invariants documented in docs/FORMAT.md.

The set is read in bounded memory: the ``annotations`` array is streamed (ijson) and handed to the
per-image checks in small batches, so a 100k-image set never has all its masks decoded at once. The categories and
image records are read as lists, parsing the file only up to their end.
Per-image checks (image files, masks, areas, boxes, occluders) run in joblib workers; whole-set
checks (unique ids, known categories, manifest counts, class balance) run in the parent.

The report is a plain dict: for every check, the number of failures and the first few examples
(the annotation or image id and the reason), so a broken set points at the records to look at.
"""
from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from . import masks
from .coco import (check_coco_layout, check_image_record, check_iscrowd, check_unique_keys, is_int, iter_array,
                   read_array, read_image, reading_json, resolve_image_path, top_level_keys)
from . import errors
from .errors import BadRecord, OccsynthError, plural, whole_number
from .occluders import layer_occluders
from .pool import ctrl_c_for_main_only, local_workers
from .writer import IMAGES, MANIFEST_FILE, set_paths

# Check name -> what it guarantees. Stable names: they are the keys of the report.
CHECKS = {
    "fields": "records carry the documented fields with the documented types (masks as compressed RLE; a category: an integer id and a name; a paste, layer > 0: iscrowd 0 and amodal_complete true; layer 0: amodal_complete false)",
    "duplicate_id": "image ids, image file names, annotation ids and category ids are unique",
    "unknown_image": "every annotation refers to an image record",
    "unknown_category": "every annotation's category is in 'categories'",
    "grouping": "the annotations of one image are contiguous (as the writer emits them)",
    "image_file": "every image file exists under OUT/images and decodes",
    "image_size": "every image file has its record's height and width",
    "mask_decode": "segmentation and amodal_segmentation decode at the image's size",
    "visible_mask": "visible mask = amodal mask minus the amodal masks on higher layers",
    "area": "area = pixels of the visible mask",
    "bbox": "bbox = tight box of the visible mask",
    "amodal_area": "amodal_area = pixels of the amodal mask",
    "amodal_bbox": "amodal_bbox = tight box of the amodal mask",
    "occlusion_ratio": "occlusion_ratio = 1 - area / amodal_area",
    "occluder_ids": "occluder_ids = ids on higher layers whose amodal mask meets this one's",
    "empty_background": "no background instance with an empty visible mask is written",
    "manifest": "manifest.json exists and its counts agree with annotations.json",
    "class_balance": "pasted instances per category within the tolerance of the mean",
}

MASK_CHECKS = ("visible_mask", "area", "bbox", "amodal_area", "amodal_bbox", "occlusion_ratio", "occluder_ids",
               "empty_background")  # compare decoded masks: they prove nothing when no mask could be checked
RATIO_TOLERANCE = 1e-6  # the writer rounds occlusion_ratio to 6 decimals
BOX_TOLERANCE = 1e-6
BATCH_IMAGES = 32
_REQUIRED = {"id": int, "image_id": int, "category_id": int, "segmentation": dict, "amodal_segmentation": dict,
             "area": (int, float), "bbox": list, "iscrowd": int, "amodal_area": (int, float), "amodal_bbox": list,
             "occlusion_ratio": (int, float), "layer": int, "occluder_ids": list}


class _Failures:
    """Failure counts per check, keeping the first ``max_examples`` examples of each."""

    def __init__(self, max_examples: int):
        self.max_examples = max_examples
        self.counts: Counter = Counter()
        self.examples: dict[str, list] = {}

    def add(self, check: str, reason: str, annotation_id: Any = None, image_id: Any = None) -> None:
        self.counts[check] += 1
        examples = self.examples.setdefault(check, [])
        if len(examples) < self.max_examples:
            example = {"reason": reason}
            if annotation_id is not None:
                example["annotation_id"] = annotation_id
            if image_id is not None:
                example["image_id"] = image_id
            examples.append(example)

    def merge(self, other: dict) -> None:
        for check, n in other["counts"].items():
            self.counts[check] += n
            examples = self.examples.setdefault(check, [])
            examples.extend(other["examples"].get(check, [])[: self.max_examples - len(examples)])

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": self.examples}


def validate(out_dir: str | os.PathLike, workers: int = 1, progress: bool = True,
             balance_tolerance: float = 0.05, balance_slack: int = 2, max_examples: int = 5) -> dict:
    """Check the documented invariants of a generated set (docs/FORMAT.md: all but the pasted pixels', which need
    the source images); returns the report (``report["ok"]``).

    ``out_dir``: the set's folder, or its annotations JSON (images and manifest.json beside it).
    A COCO file without occsynth's fields (plain COCO, COCO-OCC) is refused with one
    OccsynthError rather than reported as failing every check. ``workers``: processes for the per-image checks (at
    most one per usable core; the report does not depend on it). ``max_examples``: failures quoted per check (all
    are counted). ``progress``: a bar over the images on stderr.

    ``balance_tolerance``/``balance_slack``: each pasted category's count must lie within
    ``max(balance_tolerance * mean, balance_slack)`` of the mean over the set's categories that were pasted.
    ``report["counts"]`` says what the file holds, as the writer's manifest counts it: every paste (layer > 0) by its
    category id, one of a category that 'categories' lacks too (the record fails 'unknown_category').
    """
    where = str(out_dir)
    for name, value in (("balance_tolerance", balance_tolerance), ("balance_slack", balance_slack)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise OccsynthError(f"{name} must be a number >= 0, got {value!r}")
    for name, value, low in (("workers", workers, 1), ("max_examples", max_examples, 0)):
        if not whole_number(value, low):
            raise OccsynthError(f"{name} must be a whole number >= {low}, got {value!r}")
    ann_path, out_dir = set_paths(out_dir)
    check_generated_set(ann_path, out_dir / MANIFEST_FILE, where)
    with reading_json(ann_path):  # any key twice (the streams below refuse their own): read_dataset refuses the set
        check_unique_keys(ann_path, top_level_keys(ann_path))
    failures = _Failures(max_examples)

    # read_array: parsed up to the array's end (the annotations, streamed below, come after them in a generated set)
    categories = _categories(read_array(ann_path, "categories"), failures)
    images: dict[int, dict] = {}
    file_names: set[str] = set()
    for image in read_array(ann_path, "images"):
        record = _image_record(image, failures)
        if record is None:
            continue
        if record["id"] in images:
            failures.add("duplicate_id", f"image id {record['id']} appears more than once", image_id=record["id"])
            continue
        if record["file_name"] in file_names:  # two records of one file: one of them describes other pixels
            failures.add("duplicate_id", f"file_name {record['file_name']!r} is named by more than one image record",
                         image_id=record["id"])
        file_names.add(record["file_name"])
        images[record["id"]] = record

    totals = {"images": len(images), "annotations": 0, "pasted": 0, "occluded": 0, "pasted_occluded": 0}
    pasted: Counter = Counter()
    groups = _image_groups(iter_array(ann_path, "annotations"), images, categories, failures, totals, pasted)
    batches = _batches(groups, BATCH_IMAGES)
    task_args = (str(out_dir), max_examples)
    bar = tqdm(total=len(images), desc="validate", unit="img", disable=not progress)
    masks_checked = 0
    try:
        workers = local_workers(workers)
        if workers <= 1:
            results: Iterable = (check_images(*task_args, batch) for batch in batches)
        else:
            from joblib import Parallel, delayed
            with ctrl_c_for_main_only():  # the pool starts here
                results = Parallel(n_jobs=workers, return_as="generator", batch_size=1, pre_dispatch="2*n_jobs")(
                    delayed(check_images)(*task_args, batch) for batch in batches)
        for result in results:
            failures.merge(result["failures"])
            bar.update(result["images"])
            masks_checked += result["masks_checked"]
    finally:
        bar.close()

    totals["pasted_per_category"] = {str(k): v for k, v in sorted(pasted.items())}
    _check_manifest(out_dir / MANIFEST_FILE, totals, failures)
    # over the set's categories: a paste of another one fails 'unknown_category' already
    balance = class_balance({k: n for k, n in pasted.items() if k in categories}, balance_tolerance, balance_slack)
    for category_id in balance["outside"]:
        name = categories[category_id].get("name", "?")
        failures.add("class_balance", f"category {category_id} ({name}): {pasted[category_id]} pasted, "
                                      f"allowed {balance['low']:.1f}..{balance['high']:.1f}")

    report = {"out": str(out_dir.resolve()), "ok": not failures.counts, "counts": totals, "balance": balance, "checks": {}}
    for check, description in CHECKS.items():
        report["checks"][check] = {"description": description, "failures": failures.counts.get(check, 0),
                                   "examples": failures.examples.get(check, [])}
    if totals["images"] and failures.counts.get("image_file", 0) >= totals["images"]:
        report["checks"]["image_size"]["checked"] = False  # no file was read: its 0 failures prove nothing
    if totals["annotations"] and not masks_checked:  # no annotation had usable fields and masks: the same
        for check in MASK_CHECKS:
            report["checks"][check]["checked"] = False
    return report


OCCSYNTH_FIELDS = ("amodal_segmentation", "layer")
GENERATED_FIELD = "amodal_complete"  # every generated annotation has it; a KINS or COCOA conversion does not
PEEK_ANNOTATIONS = 100


def check_generated_set(ann_path: Path, manifest_path: Path, where: str | None = None) -> None:
    """Refuse, in one line, a COCO file that is not an occsynth generated set.

    A plain COCO or COCO-OCC file would otherwise fail 'fields' on every annotation, which reads
    like a broken set rather than the wrong input. It counts as generated when manifest.json is
    there and is not another tool's (build-cocoocc writes one with a 'kind'), or when one of its
    first annotations carries 'amodal_complete' (a set whose manifest was lost). A file with amodal
    fields but without that one (``convert-kins`` / ``convert-cocoa`` output) is refused saying so.
    """
    kind = None
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # a damaged manifest of a set: the 'manifest' check reports it
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        if kind is None:
            return
    anns = iter_array(ann_path, "annotations")
    amodal = False
    try:
        for ann in itertools.islice(anns, PEEK_ANNOTATIONS):
            if isinstance(ann, dict):
                if GENERATED_FIELD in ann:
                    return
                amodal = amodal or any(field in ann for field in OCCSYNTH_FIELDS)
    finally:
        anns.close()
    check_coco_layout(ann_path)  # not COCO at all: say that instead
    other = f"; its manifest.json is of kind {kind!r}" if kind is not None else ""
    if amodal:
        raise OccsynthError(f"{where or ann_path} has amodal annotations but is not an occsynth generated set (no "
                            f"'{GENERATED_FIELD}' field, as in sets from convert-kins or convert-cocoa{other}); "
                            "validate checks the invariants of docs/FORMAT.md, which only generated sets keep")
    raise OccsynthError(f"{where or ann_path} is not an occsynth generated set (no amodal/layer fields{other}); "
                        "validate checks the invariants of docs/FORMAT.md")


def class_balance(pasted: dict, tolerance: float = 0.05, slack: int = 2) -> dict:
    """Which pasted categories lie outside ``mean ± max(tolerance * mean, slack)`` (categories with count 0 ignored)."""
    counts = {k: v for k, v in pasted.items() if v > 0}
    if not counts:
        return {"mean": 0.0, "low": 0.0, "high": 0.0, "min": 0, "max": 0, "outside": []}
    mean = sum(counts.values()) / len(counts)
    margin = max(tolerance * mean, slack)
    low, high = mean - margin, mean + margin
    outside = sorted(k for k, v in counts.items() if not low - 1e-9 <= v <= high + 1e-9)
    return {"mean": mean, "low": low, "high": high, "min": min(counts.values()), "max": max(counts.values()),
            "outside": outside}


def check_images(out_dir: str, max_examples: int, batch: list[tuple[dict, list[dict]]]) -> dict:
    """Per-image checks of a batch of (image record, its annotations); runs in a worker."""
    failures = _Failures(max_examples)
    checked = 0
    for image, anns in batch:
        _check_image_file(Path(out_dir), image, failures)
        checked += _check_masks(image, anns, failures)
    return {"failures": failures.to_dict(), "images": sum(1 for image, _ in batch if not image.get("fragment")),
            "masks_checked": checked}


def format_report(report: dict) -> str:
    """Human-readable report: one line per check, then examples of the failing ones."""
    counts = report["counts"]
    lines = [f"{report['out']}: {plural(counts['images'], 'image')}, {plural(counts['annotations'], 'annotation')}, "
             f"{counts['pasted']} pasted"]
    width = max(map(len, report["checks"]))
    for check, result in report["checks"].items():
        status = ("ok" if result.get("checked", True) else "not checked") if result["failures"] == 0 \
            else f"FAILED ({result['failures']})"
        lines.append(f"  {check:<{width}}  {status:<14} {result['description']}")
        for example in result["examples"]:
            where = ", ".join(f"{k} {example[k]}" for k in ("annotation_id", "image_id") if k in example)
            lines.append(f"  {'':<{width}}    e.g. {where + ': ' if where else ''}{example['reason']}")
    b = report["balance"]
    if b["max"]:
        lines.append(f"class balance: pasted per category {b['min']}..{b['max']}, mean {b['mean']:.1f}, "
                     f"allowed {b['low']:.1f}..{b['high']:.1f}")
    failed = sum(r["failures"] for r in report["checks"].values())
    lines.append("valid: every check passed" if report["ok"] else f"INVALID: {plural(failed, 'failure')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- streaming and grouping


def _image_record(image: Any, failures: _Failures) -> dict | None:
    try:
        image = check_image_record(image)
    except BadRecord as exc:
        image_id = image.get("id") if isinstance(image, dict) and is_int(image.get("id")) else None
        failures.add("fields", str(exc), **({} if image_id is None else {"image_id": image_id}))
        return None
    return {k: image[k] for k in ("id", "file_name", "height", "width")}


def _categories(records: Iterable[Any], failures: _Failures) -> dict[int, dict]:
    """The category records by id; one without an integer id and a name (detectron2 and mmdetection read both), or
    with an id given before, fails (the first record of an id is kept, as every reader here keeps it)."""
    categories: dict[int, dict] = {}
    for record in records:
        if not isinstance(record, dict) or not is_int(record.get("id")) or not isinstance(record.get("name"), str):
            failures.add("fields", f"category record {_short(record)} lacks an integer id or a name")
            if isinstance(record, dict) and is_int(record.get("id")):
                categories.setdefault(record["id"], record)  # its annotations are known: the record is what fails
            continue
        if record["id"] in categories:
            failures.add("duplicate_id", f"category id {record['id']} appears more than once")
            continue
        categories[record["id"]] = record
    return categories


def _image_groups(anns: Iterator[dict], images: dict, categories: dict, failures: _Failures, totals: dict,
                  pasted: Counter) -> Iterator[tuple[dict, list[dict]]]:
    """(image record, annotations) per image, from the annotation stream; whole-set checks on the way.

    Annotations are grouped by consecutive image_id. An image whose annotations come in several
    runs fails 'grouping' (its mask checks then see one run at a time). Images without any
    annotation come last, for their file checks.
    """
    seen_ids: set[int] = set()
    done_images: set[int] = set()
    current: int | None = None
    group: list[dict] = []
    for ann in anns:
        totals["annotations"] += 1
        if not isinstance(ann, dict):
            failures.add("fields", f"annotation is not an object: {str(ann)[:80]}")
            continue
        ann_id = ann.get("id")
        if is_int(ann_id):
            if ann_id in seen_ids:
                failures.add("duplicate_id", f"annotation id {ann_id} appears more than once", ann_id)
            seen_ids.add(ann_id)
        category_id = ann.get("category_id")
        if not is_int(category_id) or category_id not in categories:  # checked first: a list is no key
            failures.add("unknown_category", f"category_id {category_id!r} is not in 'categories'", ann_id)
        _count_paste(ann, totals, pasted)
        totals["occluded"] += bool(ann.get("occluder_ids"))
        image_id = ann.get("image_id")
        if not is_int(image_id) or image_id not in images:
            failures.add("unknown_image", f"image_id {image_id!r} has no image record", ann_id)
            continue
        if image_id != current:
            if current is not None:
                yield _group(images[current], group, current in done_images)
                done_images.add(current)
            if image_id in done_images:
                failures.add("grouping", f"annotations of image {image_id} are not contiguous", ann_id, image_id)
            current, group = image_id, []
        group.append(_light(ann))
    if current is not None:
        yield _group(images[current], group, current in done_images)
        done_images.add(current)
    for image_id, image in images.items():
        if image_id not in done_images:
            yield image, []


def _count_paste(ann: dict, totals: dict, pasted: Counter) -> None:
    """Count ``ann`` if it is a paste (layer > 0) as the writer counts it, by its category id even where 'categories'
    lacks it: the counts say what the file holds (and match the manifest's), the category fails its own check."""
    if not (is_int(ann.get("layer")) and ann["layer"] > 0):
        return
    totals["pasted"] += 1
    totals["pasted_occluded"] += bool(ann.get("occluder_ids"))
    if is_int(ann.get("category_id")):  # else it fails 'fields' and 'unknown_category': no category to count under
        pasted[ann["category_id"]] += 1


def _group(image: dict, anns: list[dict], fragment: bool) -> tuple[dict, list[dict]]:
    # A later fragment of an already checked image: skip the file check, do not count it twice.
    return (dict(image, fragment=True) if fragment else image), anns


def _light(ann: dict) -> dict:
    """The fields the per-image checks need (drops 'source' and other extras before pickling)."""
    return {k: ann[k] for k in (*_REQUIRED, GENERATED_FIELD) if k in ann}


def _batches(groups: Iterator, size: int) -> Iterator[list]:
    while batch := list(itertools.islice(groups, size)):
        yield batch


# ---------------------------------------------------------------- per-image checks


def _check_image_file(out_dir: Path, image: dict, failures: _Failures) -> None:
    if image.get("fragment"):
        return
    image_id = image["id"]
    try:
        path = resolve_image_path(out_dir / IMAGES, image["file_name"])
        read_image(path, (image["height"], image["width"]))
    except BadRecord as exc:
        check = "image_size" if exc.reason == errors.SIZE_MISMATCH else "image_file"
        failures.add(check, f"{image['file_name']}: {exc.reason}" + (f" ({exc.detail})" if exc.detail else ""),
                     image_id=image_id)


def _check_masks(image: dict, anns: list[dict], failures: _Failures) -> int:
    """Mask invariants of one image's annotations (amodal masks decoded one image at a time); returns how
    many annotations had their masks checked (those with bad fields or masks that do not decode are not)."""
    h, w = image["height"], image["width"]
    usable, amodal, visible = [], [], []
    for ann in anns:
        ann_id = ann.get("id")
        bad = [k for k, kind in _REQUIRED.items() if not isinstance(ann.get(k), kind) or isinstance(ann.get(k), bool)]
        if bad:
            failures.add("fields", f"missing or mistyped: {', '.join(bad)}", ann_id, image["id"])
            continue
        if ann["layer"] < 0 or not all(is_int(j) for j in ann["occluder_ids"]) \
                or len(ann["bbox"]) != 4 or len(ann["amodal_bbox"]) != 4:
            failures.add("fields", "negative layer, non-integer occluder id, or a box without 4 numbers",
                         ann_id, image["id"])
            continue
        try:
            check_iscrowd(ann, f"annotation {ann_id}")
        except BadRecord as exc:
            failures.add("fields", exc.detail, ann_id, image["id"])
            continue
        uncompressed = [k for k in ("segmentation", "amodal_segmentation") if not isinstance(ann[k].get("counts"), str)]
        if uncompressed:  # still decodable, so the mask checks go on
            failures.add("fields", f"{' and '.join(uncompressed)} not compressed RLE (counts must be a string, as "
                         "docs/FORMAT.md says)", ann_id, image["id"])
        pasted = ann["layer"] > 0
        if ann.get("amodal_complete") is not pasted or (pasted and ann["iscrowd"] != 0):
            failures.add("fields", f"layer {ann['layer']} with amodal_complete {_short(ann.get('amodal_complete'))} and "
                         f"iscrowd {ann['iscrowd']} (a paste, layer > 0, has true and 0; a background instance, "
                         "layer 0, false)", ann_id, image["id"])  # its masks still count for the others
        try:
            a = masks.decode(ann["amodal_segmentation"], h, w)
            v = masks.decode(ann["segmentation"], h, w)
        except masks.DegenerateMask as exc:
            failures.add("mask_decode", str(exc), ann_id, image["id"])
            continue
        usable.append(ann)
        amodal.append(a)
        visible.append(v)
    if not usable:
        return 0
    layers = np.array([ann["layer"] for ann in usable])
    above = _union_above(amodal, layers)
    occluders = layer_occluders(amodal, layers)
    for k, ann in enumerate(usable):
        ann_id = ann["id"]
        expected_visible = amodal[k] & ~above[k]
        if not np.array_equal(visible[k], expected_visible):
            diff = int(np.count_nonzero(visible[k] != expected_visible))
            failures.add("visible_mask", f"{plural(diff, 'pixel')} differ{'s' if diff == 1 else ''} from amodal minus higher layers", ann_id, image["id"])
        area, amodal_area = masks.area(visible[k]), masks.area(amodal[k])
        _compare(failures, "area", ann, ann["area"], area, 0.0, image["id"])
        _compare(failures, "amodal_area", ann, ann["amodal_area"], amodal_area, 0.0, image["id"])
        _compare(failures, "bbox", ann, ann["bbox"], masks.bbox(visible[k]), BOX_TOLERANCE, image["id"])
        _compare(failures, "amodal_bbox", ann, ann["amodal_bbox"], masks.bbox(amodal[k]), BOX_TOLERANCE, image["id"])
        ratio = 1.0 - area / amodal_area if amodal_area else 0.0
        _compare(failures, "occlusion_ratio", ann, ann["occlusion_ratio"], ratio, RATIO_TOLERANCE, image["id"])
        expected_ids = sorted(usable[j]["id"] for j in occluders[k])
        if sorted(ann["occluder_ids"]) != expected_ids or len(set(ann["occluder_ids"])) != len(ann["occluder_ids"]):
            failures.add("occluder_ids", f"has {ann['occluder_ids']}, the layers give {expected_ids}", ann_id, image["id"])
        if ann["layer"] == 0 and area == 0:
            failures.add("empty_background", "background instance with nothing visible", ann_id, image["id"])
    return len(usable)


def _union_above(amodal: list[np.ndarray], layers: np.ndarray) -> list[np.ndarray]:
    """For each instance, the union of the amodal masks on strictly higher layers."""
    union_by_layer: dict[int, np.ndarray] = {}
    running = np.zeros_like(amodal[0])
    for layer in sorted(set(layers.tolist()), reverse=True):
        union_by_layer[layer] = running.copy()
        for j in np.flatnonzero(layers == layer):
            running |= amodal[j]
    return [union_by_layer[int(layer)] for layer in layers]


def _compare(failures: _Failures, check: str, ann: dict, stored: Any, expected: Any, tol: float, image_id: int) -> None:
    # JSON numbers only: numpy would read "12.0" and true as numbers, which readers of the set do not
    if not all(map(masks.finite_number, stored if isinstance(stored, list) else [stored])):
        failures.add(check, f"stored {_short(stored)} is not numeric", ann["id"], image_id)
        return
    a = np.atleast_1d(np.asarray(stored, float))
    b = np.atleast_1d(np.asarray(expected, float))
    if a.shape != b.shape or not np.all(np.abs(a - b) <= tol + 1e-12) or not np.all(np.isfinite(a)):
        fmt = (lambda x: [round(float(v), 6) for v in x]) if a.size > 1 else (lambda x: round(float(x[0]), 6))
        failures.add(check, f"stored {fmt(a)}, masks give {fmt(b)}", ann["id"], image_id)


# ---------------------------------------------------------------- manifest


def _check_manifest(path: Path, totals: dict, failures: _Failures) -> None:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        failures.add("manifest", f"{path.name} not found")
        return
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        failures.add("manifest", f"{path.name} is not valid JSON ({exc})")
        return
    counts = manifest.get("counts") if isinstance(manifest, dict) else None
    if not isinstance(counts, dict):
        failures.add("manifest", f"{path.name} has no 'counts' object")
        return
    # occluded, pasted_occluded: not in the manifests of sets from before they were counted
    for key in ("images", "annotations", "pasted", "pasted_per_category", *(k for k in ("occluded", "pasted_occluded")
                                                                            if k in counts)):
        if counts.get(key) != totals[key]:
            failures.add("manifest", f"counts.{key} is {_short(counts.get(key))}, annotations.json has "
                                     f"{_short(totals[key])}")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


__all__ = ["CHECKS", "validate", "check_generated_set", "class_balance", "check_images", "format_report"]
