"""COCO-OCC: the val2017 images whose object boxes overlap, as BCNet evaluates occlusion handling.

The paper picks the val2017 images "where the overlapping ratio between the bounding boxes of
objects is at least 0.2" (1,005 of 5,000). It does not say which ratio, nor whether crowd boxes
count, so all three are options:

- ``overlap="iou"`` (default): intersection over union of two boxes - the usual meaning of an
  "overlapping ratio" of two boxes, and the measure BCNet's own annotation tool uses for occluders.
  ``"min"``: intersection over the smaller box (1.0 when one box contains the other).
- ``threshold=0.2`` (default): an image is kept when its largest pairwise overlap is >= threshold (up to
  float rounding: :data:`OVERLAP_TOLERANCE`).
- ``count_crowd=False`` (default): crowd boxes are regions of many objects, not one occluder, so
  they take no part. ``True`` lets them count.

Because the exact recipe is unknown, the report gives the count every other choice would give
(thresholds 0.1..0.5 x iou/min x crowd on/off), to compare with the paper's 1,005.

Output (``build_cocoocc``): ``OUT/annotations.json`` - the selected images with ALL their
annotations and the categories unchanged (pycocotools evaluates on it as on val2017),
``OUT/manifest.json`` (options, input sha256, counts, image ids), ``OUT/report.json`` (overlap
histogram, alternative counts) and optionally ``OUT/images/`` (links or copies of the files).

The whole file is read at once: val2017 (25 MB) loads in well under a second. Each annotation's mask is
checked once, as every reader of a source set checks it, without rasterising polygons (well under a second
for val2017's 36k): one that cannot be decoded is skipped. The selection itself needs only boxes, compared
pair by pair within each image by :func:`occsynth.boxes.pairwise_overlap`'s formula, for all images at once
(:func:`overlap_table`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from . import errors
from .atomic import make_folder, open_atomic, remove_orphaned_temporaries, write_json
from .boxes import OVERLAP_MEASURES, is_box, overlap_of, xywh_to_xyxy
from .coco import (brief, categories_by_id, check_annotation_record, check_segmentation, duplicate_detail, file_hash,
                   named_nowhere, read_dataset, record_image_path, require_image_file, resolve_image_path,
                   usable_image_records)
from .errors import BadRecord, OccsynthError, SkipLog, why_none_usable

PAPER_COUNT = 1005
DEFAULT_OVERLAP = "iou"
DEFAULT_THRESHOLD = 0.2
REPORT_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
HISTOGRAM_EDGES = tuple(round(0.1 * i, 1) for i in range(11))
# An overlap that is exactly the threshold on the boxes as written can come out a few units in the last place
# below it in float: IoU([100.7, 50, 30.3, 40], [120.9, 50, 30.3, 40]) is 1/5 but computes as 0.19999999999999982.
# 1e-9 is far above that rounding (about 1e-13 at image coordinates) and far below any overlap difference the
# selection is about (the report's thresholds are 0.05 apart).
OVERLAP_TOLERANCE = 1e-9


def check_dataset(data: dict) -> None:
    """Refuse what is no COCO dataset dict with 'images' and 'annotations' lists, naming the key: the functions
    below are called from Python too, where a missing key would be a bare KeyError; OccsynthError, as for any
    input the API refuses. (A file is checked when it is read, by :func:`occsynth.coco.read_dataset`.)"""
    if not isinstance(data, dict):
        raise OccsynthError(f"expected a COCO dataset (a dict with 'images' and 'annotations' lists), "
                            f"got {type(data).__name__}")
    for key in ("images", "annotations"):
        if key not in data:
            raise OccsynthError(f"COCO dataset has no {key!r} key (a list of {key[:-1]} records)")
        if not isinstance(data[key], list):
            raise OccsynthError(f"COCO dataset: {key!r} must be a list, got {type(data[key]).__name__}")


def check_options(overlap: str = DEFAULT_OVERLAP, threshold: float = DEFAULT_THRESHOLD,
                  count_crowd: bool = False) -> None:
    """Refuse a selection option :func:`build_cocoocc` cannot use, before anything is read: the one
    check for the command line, the API and ``bcnet train-synthetic``'s recipe (which checks it
    before its first stage, hours before COCO-OCC is built)."""
    if overlap not in OVERLAP_MEASURES:
        raise OccsynthError(f"overlap measure must be one of {', '.join(OVERLAP_MEASURES)}, got {overlap!r}")
    number = not isinstance(threshold, bool) and isinstance(threshold, (int, float))
    if not number or not 0 < threshold <= 1:
        raise OccsynthError(f"threshold must be a number in (0, 1], got {threshold!r}"
                            + (" (0 would keep every image)" if number and threshold <= 0 else ""))
    if not isinstance(count_crowd, bool):
        raise OccsynthError(f"count_crowd must be true or false, got {count_crowd!r}")


def reaches(overlap: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """``overlap >= threshold`` up to :data:`OVERLAP_TOLERANCE` (a float, or a numpy array elementwise), so
    that boxes overlapping by exactly the threshold select their image however the float arithmetic rounds."""
    return overlap >= threshold - OVERLAP_TOLERANCE


def max_overlap_per_image(data: dict, overlap: str = DEFAULT_OVERLAP, count_crowd: bool = False) -> dict[int, float]:
    """Largest pairwise box overlap of each image in ``data['images']`` (0.0 with fewer than two boxes)."""
    check_options(overlap, count_crowd=count_crowd)
    return overlap_table(data)[overlap, count_crowd]


PAIRS_PER_STEP = 1 << 20  # box pairs measured in one step of overlap_table: a few tens of MB of arrays


def overlap_table(data: dict) -> dict[tuple[str, bool], dict[int, float]]:
    """:func:`max_overlap_per_image` for every measure and crowd choice at once, keyed ``(overlap, count_crowd)``.

    The boxes are gathered in one pass over the annotations (those without a usable box left out), and the pairs of
    boxes of one image are measured in a few array operations over all images together (at most
    :data:`PAIRS_PER_STEP` pairs at a time), with the one formula of :func:`occsynth.boxes.pairwise_overlap`: the
    selection and the report's four tables took five passes and five small array computations per image, 20 s on
    COCO train. A pair with a crowd box counts only where crowd boxes do."""
    check_dataset(data)
    group_of: dict = {}  # image id -> its number here, in order of first box
    groups, boxes, crowd = [], [], []
    for ann in data["annotations"]:
        if isinstance(ann, dict) and is_box(ann.get("bbox")):
            groups.append(group_of.setdefault(ann.get("image_id"), len(group_of)))
            boxes.append(ann["bbox"])
            crowd.append(bool(ann.get("iscrowd")))
    best = {(overlap, count_crowd): np.zeros(len(group_of))
            for overlap in OVERLAP_MEASURES for count_crowd in (False, True)}
    if boxes:
        order = np.argsort(np.asarray(groups, np.int64), kind="stable")
        group = np.asarray(groups, np.int64)[order]
        with np.errstate(over="ignore", invalid="ignore"):  # garbage boxes overflow: overlap_of makes their overlap 0
            xyxy = xywh_to_xyxy(np.asarray(boxes, np.float64)[order])
        is_crowd = np.asarray(crowd, bool)[order]
        sizes = np.bincount(group, minlength=len(group_of))
        ends = np.cumsum(sizes)
        later = ends[group] - np.arange(len(group)) - 1  # the boxes after each one in its image: its pairs
        pairs_end = np.cumsum(later)
        first = 0
        while first < len(group):  # boxes [first, last) and their pairs: at least one box, else up to the step size
            last = max(int(np.searchsorted(pairs_end, pairs_end[first] - later[first] + PAIRS_PER_STEP, "right")),
                       first + 1)
            counts = later[first:last]
            i = np.repeat(np.arange(first, last), counts)
            j = i + 1 + np.arange(len(i)) - np.repeat(np.cumsum(counts) - counts, counts)
            no_crowd = ~(is_crowd[i] | is_crowd[j])
            for overlap in OVERLAP_MEASURES:
                values = overlap_of(xyxy[i], xyxy[j], overlap)
                np.maximum.at(best[overlap, True], group[i], values)
                np.maximum.at(best[overlap, False], group[i][no_crowd], values[no_crowd])
            first = last
    table = {}
    for key, values in best.items():
        table[key] = result = {}
        for image in data["images"]:
            image_id = image.get("id") if isinstance(image, dict) else None
            k = group_of.get(image_id)
            result[image_id] = 0.0 if k is None else float(values[k])
    return table


def select_images(data: dict, overlap: str = DEFAULT_OVERLAP, threshold: float = DEFAULT_THRESHOLD,
                  count_crowd: bool = False) -> list[int]:
    """Ids (in file order) of the images with two boxes overlapping by at least ``threshold``."""
    check_options(overlap, threshold, count_crowd)  # -1 would select every image
    best = max_overlap_per_image(data, overlap, count_crowd)
    return [image_id for image_id, value in best.items() if reaches(value, threshold)]


def overlap_histogram(values: Iterable[float], edges: tuple = HISTOGRAM_EDGES) -> dict:
    """Images per bin of largest overlap, bins [a, b) with the last one closed, and apart from them
    ``no_overlap``: the images without any overlapping box pair (in no bin, so bins + no_overlap = all).

    An overlap ratio lies in [0, 1]: a value outside it (or NaN) is a bug upstream, and np.histogram would
    drop it without a word, so it is refused (ValueError), as are ``edges`` that do not span [0, 1]. Values
    within :data:`OVERLAP_TOLERANCE` of either end (float rounding) count as that end."""
    values = np.asarray(list(values), np.float64)
    if edges[0] > 0 or edges[-1] < 1:
        raise ValueError(f"histogram edges must span [0, 1], got {edges[0]}..{edges[-1]}")
    outside = ~((values >= -OVERLAP_TOLERANCE) & (values <= 1 + OVERLAP_TOLERANCE))  # NaN is outside too
    if outside.any():
        raise ValueError(f"overlap ratios must lie in [0, 1]; got {int(outside.sum())} outside it, e.g. "
                         f"{float(values[outside][0])!r}")
    values = np.clip(values, 0.0, 1.0)
    counts, _ = np.histogram(values[values > 0.0], bins=np.asarray(edges))
    return {"edges": list(edges), "counts": [int(c) for c in counts],
            "no_overlap": int(np.count_nonzero(values <= 0.0))}


def alternative_counts(data: dict, thresholds: tuple = REPORT_THRESHOLDS, *,
                       overlaps: dict[tuple[str, bool], dict[int, float]] | None = None) -> dict:
    """Image counts for every measure x crowd choice x threshold, keyed like ``iou/no-crowd``. ``overlaps``: the
    :func:`overlap_table` of ``data`` when the caller has it."""
    overlaps = overlap_table(data) if overlaps is None else overlaps
    table = {}
    for overlap in OVERLAP_MEASURES:
        for count_crowd in (False, True):
            values = np.asarray(list(overlaps[overlap, count_crowd].values()), np.float64)
            key = f"{overlap}/{'crowd' if count_crowd else 'no-crowd'}"
            table[key] = {f"{t:g}": int(np.count_nonzero(reaches(values, t))) for t in thresholds}
    return table


MANIFEST_KIND = "coco-occ"
JSON_OUTPUTS = ("annotations.json", "manifest.json", "report.json")  # written locked (a rerun removes the
# temporaries of a killed build, and leaves those of a running one)
OUTPUT_NAMES = ("images", *JSON_OUTPUTS)  # what a build writes in OUT
VAL2017_IMAGES = 5000


def check_out_dir(ann_path: str | os.PathLike, out_dir: str | os.PathLike, force: bool = False) -> None:
    """Refuse an output directory that holds the input, or files some other tool wrote.

    Writing OUT/annotations.json over the source (``--ann S/annotations.json --out S``) would
    destroy it, and a build removes what it placed before inside OUT: so OUT may not hold the input
    at any depth. A non-empty directory without a COCO-OCC manifest is someone else's (``force``
    overrides that, never the first rule).
    """
    ann, out = Path(ann_path).resolve(), Path(out_dir).resolve()
    if out == ann or out in ann.parents:
        raise OccsynthError(f"out_dir/--out {out_dir} contains the input {ann_path}; choose one that does not "
                            "contain it (a build writes and cleans up inside it)")
    if out.exists() and not out.is_dir():
        raise OccsynthError(f"out_dir/--out {out_dir}: exists and is not a directory")
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not (isinstance(manifest, dict) and manifest.get("kind") == MANIFEST_KIND):
        raise OccsynthError(f"out_dir/--out {out_dir}: directory is not empty and was not written by build-cocoocc "
                            "(no manifest.json of kind 'coco-occ'); choose an empty directory or pass --force")


def check_image_dirs(image_root: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Refuse placing images where the source images are: OUT/images equal to, inside, or holding ``--images``.

    Placing a file unlinks the target first; when the target is the source file itself (``--out``
    the folder above ``--images``), linking would leave a symlink to itself and the image would be
    gone. ``--force`` does not override this.
    """
    root, dest = Path(image_root).resolve(), (Path(out_dir) / "images").resolve()
    if dest == root or root in dest.parents or dest in root.parents:
        relation = ("is" if dest == root else "lies inside" if root in dest.parents else "contains")
        raise OccsynthError(f"out_dir/--out {out_dir}: its images folder {dest} {relation} the source images "
                            f"image_root/--images {image_root}; placing images there would write into or over them - "
                            "choose another output directory")


def has_crowd(data: dict) -> bool:
    """Whether any annotation is a crowd region (else the report leaves out the rows that count them)."""
    check_dataset(data)
    return any(isinstance(a, dict) and a.get("iscrowd") for a in data["annotations"])


def build_cocoocc(ann_path: str | os.PathLike, out_dir: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                  image_mode: str | None = None, overlap: str = DEFAULT_OVERLAP, threshold: float = DEFAULT_THRESHOLD,
                  count_crowd: bool = False, strict: bool = False, force: bool = False, progress: bool = False) -> dict:
    """Write COCO-OCC (annotations, manifest, report, optional images) to ``out_dir``; returns the report.

    ``image_mode``: None (annotations only), ``"link"`` (relative symlinks to the source files) or
    ``"copy"``; it needs ``image_root``, and OUT/images may not be, hold or lie in it (``force`` or not). Images whose file cannot be placed (missing, or ``file_name`` escaping
    the root) are dropped from the output together with their annotations, and listed in the
    report's ``dropped_images`` (``strict`` stops instead). Duplicate image ids: the first usable record
    is kept, as every reader keeps it (:func:`occsynth.coco.usable_image_records`), the others skipped and
    counted. ``force``: write into a non-empty directory that no earlier build-cocoocc wrote (never into one
    holding the input). ``progress``: a bar over the selected images while they are placed or checked (a copy
    of COCO's 1,005 takes a while on a slow disk).

    A rebuild into the same ``out_dir`` removes the links the last build placed and this one does not select;
    copies stay (their bytes may be the user's), listed in the report's ``stale_images``.
    """
    if image_mode not in (None, "link", "copy"):
        raise OccsynthError(f"image mode must be 'link' or 'copy', got {image_mode!r}")
    if image_mode and image_root is None:
        raise OccsynthError(f"image_mode/--{image_mode} needs image_root/--images (the source image directory)")
    check_options(overlap, threshold, count_crowd)
    check_out_dir(ann_path, out_dir, force)
    if image_mode:
        check_image_dirs(image_root, out_dir)
    out_dir = Path(out_dir)
    existed = out_dir.exists()
    fresh = not existed or not any(out_dir.iterdir())
    try:
        return _build(ann_path, out_dir, image_root, image_mode, overlap, threshold, count_crowd, strict, progress)
    except BaseException:
        if fresh:  # what this run wrote: a failed run leaves --out as it found it, so a rerun is not refused
            for child in list(out_dir.iterdir()) if out_dir.is_dir() else []:
                if child.name in OUTPUT_NAMES or (child.name.startswith(".") and ".tmp-" in child.name):
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            if not existed:
                with contextlib.suppress(OSError):  # only if empty: another process may have written there
                    out_dir.rmdir()
        raise


def _build(ann_path, out_dir: Path, image_root, image_mode, overlap: str, threshold: float, count_crowd: bool,
           strict: bool, progress: bool) -> dict:
    data = read_dataset(ann_path, finite=True)  # copied fields: the output must stay JSON
    source_images, source_annotations = len(data["images"]), len(data["annotations"])
    skips = SkipLog(strict=strict)
    data = usable_records(data, ann_path, skips)
    overlaps = overlap_table(data)  # every measure's: the report lists them all
    best = overlaps[overlap, count_crowd]
    keep = {image_id for image_id, value in best.items() if reaches(value, threshold)}
    images = [im for im in data["images"] if im["id"] in keep]
    placed_before = _placed_by_last_build(out_dir)
    if image_root is not None:  # also links a build that stopped half-way placed (its files never named them)
        placed_before |= _links_to_sources(out_dir / "images", Path(image_root))
    make_folder(out_dir)
    for name in JSON_OUTPUTS:  # what a killed build left (the temporaries no running build holds)
        remove_orphaned_temporaries(out_dir / name)
    dropped: list[dict] = []
    if image_mode:
        dropped = _place_images(images, Path(image_root), out_dir / "images", image_mode, skips, progress)
        lost = {d["id"] for d in dropped}
        images = [im for im in images if im["id"] not in lost]
        keep -= lost
    unfound = (_unfound_images(images, Path(image_root), strict, progress)
               if image_root is not None and not image_mode else [])
    selected_count, found = len(images) + len(dropped), len(images) - len(unfound)  # found: placed, or there
    if selected_count and not found:  # a wrong --images, not a few missing files: an empty (or unplaceable)
        first = (dropped or unfound)[0]  # COCO-OCC written with exit status 0 would only fail later, in evaluation
        name = str(first["file_name"]).encode("utf-8", "backslashreplace").decode()
        if all(d["reason"] in (errors.OUTSIDE_ROOT, errors.MALFORMED_RECORD) for d in dropped + unfound):  # no --images helps
            advice = named_nowhere(ann_path)
        else:
            advice = f"give the folder that the file_name entries of {ann_path} are relative to"
        raise OccsynthError(
            f"{'the selected image has no' if selected_count == 1 else f'none of the {selected_count:,} selected images has a'} "
            f"usable file under image_root/--images {image_root} "
            f"(e.g. image {first['id']} ({name}): {first['reason']}); {advice}")
    selected_names = {im["file_name"] for im in images}
    for name in placed_before - (selected_names if image_mode else set()):
        _remove_stale_link(out_dir / "images", name)
    # what stays of them and this build does not select (copies: their bytes may be the user's), named so that a
    # rerun does not leave them unseen; a copy of an image still selected is one the annotations name, not stale
    stale = sorted(name for name in placed_before - selected_names if os.path.lexists(out_dir / "images" / name))
    selected = [im["id"] for im in images]
    annotations = [a for a in data["annotations"] if isinstance(a, dict) and a.get("image_id") in keep]
    info = dict(data["info"]) if isinstance(data.get("info"), dict) else {}  # COCO info is an object
    info["description"] = (f"COCO-OCC: images of {Path(ann_path).name} with box overlap ({overlap}) >= {threshold:g}"
                           + ("" if not info.get("description") else f"; from: {info['description']}"))
    output = {"info": info, "licenses": data.get("licenses", []), "images": images,
              "annotations": annotations, "categories": data["categories"]}
    write_json(out_dir / "annotations.json", output, locked=True)
    options = {"overlap": overlap, "threshold": threshold, "count_crowd": count_crowd}
    crowd = has_crowd(data)
    counts = {"source_images": source_images, "source_annotations": source_annotations,
              "selected_images": len(selected) + len(dropped), "dropped_images": len(dropped),
              "images": len(images), "annotations": len(annotations), "paper_images": PAPER_COUNT,
              "source_has_crowd": crowd}
    if image_root is not None and not image_mode:
        counts["images_without_file"] = len(unfound)
    alternatives = alternative_counts(data, overlaps=overlaps)
    if not crowd:  # without crowd boxes the crowd rows repeat the others
        alternatives = {k: v for k, v in alternatives.items() if not k.endswith("/crowd")}
    report = {"out": str(out_dir), "options": options, "counts": counts,
              "histogram": overlap_histogram(best.values()), "alternatives": alternatives,
              "dropped_images": dropped, "images_without_file": unfound, "stale_images": stale,
              "skipped": skips.to_dict()}
    manifest = {"kind": MANIFEST_KIND, "source": {"annotations": str(Path(ann_path).resolve()),
                                                  "sha256": file_hash(ann_path)},
                "options": options, "counts": counts, "images_placed": image_mode, "skipped": skips.to_dict(),
                "dropped_images": [d["id"] for d in dropped], "image_ids": selected}
    write_json(out_dir / "manifest.json", manifest, indent=2, locked=True)
    write_json(out_dir / "report.json", {k: v for k, v in report.items() if k != "out"}, indent=2, locked=True)
    return report


def usable_records(data: dict, ann_path: str | os.PathLike, skips: SkipLog) -> dict:
    """``data`` (``ann_path`` as read) with only the image and annotation records a build selects from and
    evaluation can use; the others are counted in ``skips`` (a strict log stops at the first, naming the file).
    Also for a caller that needs to know what a build would select before it builds (``bcnet train-synthetic``)."""
    try:
        images, skipped_images = usable_image_records(data["images"], skips)  # as every reader keeps them
        usable = dict(data, images=list(images.values()))
        if data["images"] and not usable["images"]:  # an empty COCO-OCC would look like a selection of none
            raise OccsynthError(f"{ann_path}: no usable image records ({why_none_usable(skips)})")
        usable["annotations"] = _usable_annotations(usable, skips, skipped_images)
    except BadRecord as exc:  # --strict: the first bad record stops the build, named with its file
        raise exc.in_file(ann_path) from None
    return usable


def _placed_by_last_build(out_dir: Path) -> set[str]:
    """File names of the images an earlier build-cocoocc placed in ``out_dir/images`` (its manifest
    says it placed them; its annotations.json names them), so that a rebuild removes the links it drops."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
        if not (isinstance(manifest, dict) and manifest.get("kind") == MANIFEST_KIND and manifest.get("images_placed")):
            return set()
        images = read_dataset(out_dir / "annotations.json")["images"]
    except (OSError, ValueError, OccsynthError):
        return set()
    names = set()
    for image in images:
        try:
            resolve_image_path(out_dir / "images", image.get("file_name") if isinstance(image, dict) else None)
        except BadRecord:  # never a path outside images/
            continue
        names.add(image["file_name"])
    return names


def _links_to_sources(images_dir: Path, root: Path) -> set[str]:
    """File names (relative to ``images_dir``) of the symlinks in it that hold exactly what a --link build
    of ``root`` writes there (:func:`link_text`): links a build placed, whether or not it finished."""
    names: set[str] = set()
    if images_dir.is_symlink() or not images_dir.is_dir():
        return names
    resolved = root.resolve()
    for folder, _, files in os.walk(images_dir):  # symlinked folders are not entered
        for file in files:
            path = Path(folder) / file
            name = path.relative_to(images_dir).as_posix()
            try:
                if path.is_symlink() and os.readlink(path) == link_text(resolved / name, path):
                    names.add(name)
            except OSError:
                continue
    return names


def _remove_stale_link(images_dir: Path, name: str) -> None:
    """Remove a link an earlier --link build placed and this one does not select. Only a symlink, and
    only inside real folders of OUT/images: removing a link never loses data, and a folder that is
    itself a link may lead into the source images. Copies are left (their bytes may be the user's)."""
    target, folder = images_dir / name, images_dir
    for part in Path(name).parts[:-1]:
        if folder.is_symlink() or not folder.is_dir():
            return
        folder = folder / part
    if not folder.is_symlink() and folder.is_dir() and target.is_symlink():
        target.unlink()


def _usable_annotations(data: dict, skips: SkipLog, skipped_images: dict[int, str]) -> list[dict]:
    """Annotations of known images and categories with a segmentation to score: evaluation (and
    pycocotools' mask AP) cannot use the others, so they neither select an image nor reach the output. Those of
    an image record skipped (``skipped_images``, by id) are counted as such, not as of an unknown image. Of the
    annotations of one id the first usable one is kept: a broken record does not take the id of a later good one.

    The mask is checked as every reader of a source set checks it (:func:`occsynth.coco.check_segmentation`).
    A broken ``bbox`` is skipped, not made from the mask: the output keeps its records unchanged (only
    ``bcnet train`` and ``evaluate`` recompute a box, and say so), but for a polygon's stray parts (fewer than 3
    points, an odd count of coordinates): every reader leaves them out (:func:`occsynth.masks.check_polygons`), and
    so does the output, where pycocotools would read every part as a box when the first has 4 numbers."""
    images = {im["id"]: im for im in data["images"]}
    categories = categories_by_id(data["categories"])
    usable, ids = [], set()
    for ann in data["annotations"]:
        try:
            check_annotation_record(ann, images, categories, skipped_images)
            where = f"annotation {ann['id']}"
            if not ann["segmentation"] or not isinstance(ann["segmentation"], (list, dict)):
                raise BadRecord(errors.DEGENERATE_MASK, where, "empty segmentation")
            image = images[ann["image_id"]]
            segmentation = check_segmentation(ann["segmentation"], image["height"], image["width"], where, rle=False)
            box = ann.get("bbox")
            if not is_box(box):  # e.g. a number no float holds (NaN was refused with the file)
                raise BadRecord(errors.MALFORMED_RECORD, where, f"bbox {brief(box)} is not 4 finite numbers")
            if box[2] < 0 or box[3] < 0:  # no box: it would overlap nothing, and stay in the output without a word
                raise BadRecord(errors.MALFORMED_RECORD, where, f"bbox {brief(box)} has a negative width or height")
            if ann["id"] in ids:  # checked first: a bad record does not take the id of a later good one
                raise BadRecord(errors.DUPLICATE_ID, where, duplicate_detail(skips))
        except BadRecord as exc:
            skips.skip(exc)
            continue
        ids.add(ann["id"])
        usable.append(ann if segmentation is ann["segmentation"] else {**ann, "segmentation": segmentation})
    return usable


def _place_images(images: list[dict], root: Path, dest: Path, mode: str, skips: SkipLog,
                  progress: bool = False) -> list[dict]:
    """Link or copy each image's file; returns ``{"id", "file_name", "reason"}`` of those not placed."""
    dropped = []
    for image in tqdm(images, desc=f"{mode} images", unit="img", disable=not progress):
        try:
            src = _source_file(image, root)
            name = image["file_name"]
            target = dest / name  # name was checked by _source_file: relative, no '..'
            target.parent.mkdir(parents=True, exist_ok=True)
            if _is_source(target, src):
                continue  # already the source's own bytes (a hard link, an aliased folder): never unlink it
            if target.is_symlink() or target.exists():
                target.unlink()
            if mode == "link":
                os.symlink(link_text(root.resolve() / name, target), target)
            else:
                with open(src, "rb") as f, open_atomic(target, "wb") as g:
                    shutil.copyfileobj(f, g)
        except BadRecord as exc:
            skips.skip(exc)
            dropped.append({"id": image["id"], "file_name": image.get("file_name"), "reason": exc.reason})
    return dropped


def _source_file(image: dict, root: Path) -> Path:
    """The existing file of an image record under ``root``; BadRecord naming why there is none."""
    name = image.get("file_name")
    if not isinstance(name, str):
        raise BadRecord(errors.MALFORMED_RECORD, f"image record {image.get('id')}", "no file_name")
    return require_image_file(record_image_path(root, image))


def _unfound_images(images: list[dict], root: Path, strict: bool, progress: bool = False) -> list[dict]:
    """``{"id", "file_name", "reason"}`` of the images without a file under ``root`` (they stay in an
    annotations-only output, whose users need the files; ``strict`` stops at the first)."""
    unfound = []
    for image in tqdm(images, desc="check image files", unit="img", disable=not progress):
        try:
            _source_file(image, root)
        except BadRecord as exc:
            if strict:
                raise OccsynthError(f"{exc} (the selected images must exist under image_root/--images)") from None
            unfound.append({"id": image["id"], "file_name": image.get("file_name"), "reason": exc.reason})
    return unfound


def _is_source(target: Path, src: Path) -> bool:
    """Is ``target`` itself (not what a symlink there points to) the source file? Unlinking it would lose it."""
    try:
        return not target.is_symlink() and os.path.samefile(target, src)
    except OSError:
        return False


def link_text(src: Path, target: Path) -> str:
    """What the symlink at ``target`` should hold: ``src`` relative to the link's real folder, so the
    set keeps working when the folder holding both is moved; absolute where no relative path exists
    (another drive on Windows). ``src`` starts at the resolved image root: the kernel walks the
    leading '..' from the link's physical folder, so both ends must be free of symlinks up to there;
    symlinks inside the image root stay in the path and are followed when the link is read."""
    try:
        return os.path.relpath(src, target.parent.resolve())
    except ValueError:
        return str(src)
