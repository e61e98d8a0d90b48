"""COCO-OCC: the val2017 images whose object boxes overlap, as BCNet evaluates occlusion handling.

The paper picks the val2017 images "where the overlapping ratio between the bounding boxes of
objects is at least 0.2" (1,005 of 5,000). It does not say which ratio, nor whether crowd boxes
count, so all three are options:

- ``overlap="iou"`` (default): intersection over union of two boxes - the usual meaning of an
  "overlapping ratio" of two boxes, and the measure BCNet's own annotation tool uses for occluders.
  ``"min"``: intersection over the smaller box (1.0 when one box contains the other).
- ``threshold=0.2`` (default): an image is kept when its largest pairwise overlap is >= threshold.
- ``count_crowd=False`` (default): crowd boxes are regions of many objects, not one occluder, so
  they take no part. ``True`` lets them count.

Because the exact recipe is unknown, the report gives the count every other choice would give
(thresholds 0.1..0.5 x iou/min x crowd on/off), to compare with the paper's 1,005.

Output (``build_cocoocc``): ``OUT/annotations.json`` - the selected images with ALL their
annotations and the categories unchanged (pycocotools evaluates on it as on val2017),
``OUT/manifest.json`` (options, input sha256, counts, image ids), ``OUT/report.json`` (overlap
histogram, alternative counts) and optionally ``OUT/images/`` (links or copies of the files).

The whole file is read at once: val2017 (25 MB) loads in well under a second, and the selection
itself needs only boxes, compared per image with :func:`occsynth.boxes.pairwise_overlap`.
"""
from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from . import errors
from .atomic import write_json
from .boxes import OVERLAP_MEASURES, pairwise_overlap
from .coco import file_hash, read_dataset, resolve_image_path
from .errors import BadRecord, OccsynthError, SkipLog

PAPER_COUNT = 1005
DEFAULT_OVERLAP = "iou"
DEFAULT_THRESHOLD = 0.2
REPORT_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
HISTOGRAM_EDGES = tuple(round(0.1 * i, 1) for i in range(11))


def _boxes_by_image(data: dict, count_crowd: bool) -> dict[int, np.ndarray]:
    """(N, 4) xywh boxes per image id; annotations without a usable box are left out."""
    grouped: dict[int, list] = defaultdict(list)
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            continue
        if ann.get("iscrowd") and not count_crowd:
            continue
        box = ann.get("bbox")
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            continue
        grouped[ann.get("image_id")].append(box)
    return {image_id: np.asarray(boxes, np.float64) for image_id, boxes in grouped.items()}


def max_overlap_per_image(data: dict, overlap: str = DEFAULT_OVERLAP, count_crowd: bool = False) -> dict[int, float]:
    """Largest pairwise box overlap of each image in ``data['images']`` (0.0 with fewer than two boxes)."""
    if overlap not in OVERLAP_MEASURES:
        raise OccsynthError(f"overlap measure must be one of {', '.join(OVERLAP_MEASURES)}, got {overlap!r}")
    boxes = _boxes_by_image(data, count_crowd)
    result = {}
    for image in data["images"]:
        image_id = image.get("id") if isinstance(image, dict) else None
        b = boxes.get(image_id)
        result[image_id] = float(pairwise_overlap(b, overlap).max()) if b is not None and len(b) > 1 else 0.0
    return result


def select_images(data: dict, overlap: str = DEFAULT_OVERLAP, threshold: float = DEFAULT_THRESHOLD,
                  count_crowd: bool = False) -> list[int]:
    """Ids (in file order) of the images with two boxes overlapping by at least ``threshold``."""
    best = max_overlap_per_image(data, overlap, count_crowd)
    return [image_id for image_id, value in best.items() if value >= threshold]


def overlap_histogram(values: Iterable[float], edges: tuple = HISTOGRAM_EDGES) -> dict:
    """Images per bin of largest overlap; bins [a, b), the last one closed, plus how many have none."""
    values = np.asarray(list(values), np.float64)
    counts, _ = np.histogram(values, bins=np.asarray(edges))
    return {"edges": list(edges), "counts": [int(c) for c in counts],
            "no_overlap": int(np.count_nonzero(values == 0.0))}


def alternative_counts(data: dict, thresholds: tuple = REPORT_THRESHOLDS) -> dict:
    """Image counts for every measure x crowd choice x threshold, keyed like ``iou/no-crowd``."""
    table = {}
    for overlap in OVERLAP_MEASURES:
        for count_crowd in (False, True):
            values = np.asarray(list(max_overlap_per_image(data, overlap, count_crowd).values()), np.float64)
            key = f"{overlap}/{'crowd' if count_crowd else 'no-crowd'}"
            table[key] = {f"{t:g}": int(np.count_nonzero(values >= t)) for t in thresholds}
    return table


def build_cocoocc(ann_path: str | os.PathLike, out_dir: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                  image_mode: str | None = None, overlap: str = DEFAULT_OVERLAP, threshold: float = DEFAULT_THRESHOLD,
                  count_crowd: bool = False, strict: bool = False) -> dict:
    """Write COCO-OCC (annotations, manifest, report, optional images) to ``out_dir``; returns the report.

    ``image_mode``: None (annotations only), ``"link"`` (symlinks to the source files) or ``"copy"``;
    it needs ``image_root``. Missing image files are skipped and counted (``strict`` stops instead).
    """
    if image_mode not in (None, "link", "copy"):
        raise OccsynthError(f"image mode must be 'link' or 'copy', got {image_mode!r}")
    if image_mode and image_root is None:
        raise OccsynthError("--link/--copy need --images (the source image directory)")
    if not 0.0 <= threshold <= 1.0:
        raise OccsynthError(f"threshold must be in [0, 1], got {threshold}")
    data = read_dataset(ann_path)
    best = max_overlap_per_image(data, overlap, count_crowd)
    selected = [image_id for image_id, value in best.items() if value >= threshold]
    keep = set(selected)
    images = [im for im in data["images"] if isinstance(im, dict) and im.get("id") in keep]
    annotations = [a for a in data["annotations"] if isinstance(a, dict) and a.get("image_id") in keep]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skips = SkipLog(strict=strict)
    if image_mode:
        _place_images(images, Path(image_root), out_dir / "images", image_mode, skips)
    info = dict(data.get("info") or {})
    info["description"] = (f"COCO-OCC: images of {Path(ann_path).name} with box overlap ({overlap}) >= {threshold:g}"
                           + ("" if not info.get("description") else f"; from: {info['description']}"))
    output = {"info": info, "licenses": data.get("licenses", []), "images": images,
              "annotations": annotations, "categories": data["categories"]}
    write_json(out_dir / "annotations.json", output)
    options = {"overlap": overlap, "threshold": threshold, "count_crowd": count_crowd}
    counts = {"source_images": len(data["images"]), "source_annotations": len(data["annotations"]),
              "images": len(images), "annotations": len(annotations), "paper_images": PAPER_COUNT}
    report = {"out": str(out_dir), "options": options, "counts": counts,
              "histogram": overlap_histogram(best.values()), "alternatives": alternative_counts(data),
              "skipped": skips.to_dict()}
    manifest = {"kind": "coco-occ", "source": {"annotations": str(Path(ann_path).resolve()),
                                               "sha256": file_hash(ann_path)},
                "options": options, "counts": counts, "images_placed": image_mode, "skipped": skips.to_dict(),
                "image_ids": selected}
    write_json(out_dir / "manifest.json", manifest, indent=2)
    write_json(out_dir / "report.json", {k: v for k, v in report.items() if k != "out"}, indent=2)
    return report


def _place_images(images: list[dict], root: Path, dest: Path, mode: str, skips: SkipLog) -> None:
    for image in images:
        try:
            name = image.get("file_name")
            if not isinstance(name, str):
                raise BadRecord(errors.MALFORMED_RECORD, f"image record {image.get('id')}", "no file_name")
            src = resolve_image_path(root, name)
            if not src.is_file():
                raise BadRecord(errors.MISSING_FILE, f"image file {src}")
            target = dest / name  # name was checked above: relative, no '..'
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            if mode == "link":
                os.symlink(src, target)
            else:
                tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
                shutil.copyfile(src, tmp)
                os.replace(tmp, target)
        except BadRecord as exc:
            skips.skip(exc)
