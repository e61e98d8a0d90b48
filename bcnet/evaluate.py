"""COCO evaluation (pycocotools bbox and segm AP) and mask AP split by occlusion level.

Results are COCO result dicts (``image_id``, ``category_id``, ``score``, ``bbox`` [x, y, w, h],
``segmentation`` compressed RLE). As detectron2 does, box AP is computed from the results with
their masks removed and mask AP from the results with their boxes removed, so pycocotools
measures each detection's area from the thing being evaluated.

Occlusion splits (mask AP only). Each non-crowd ground truth gets an occlusion level:

- ``box_overlap``: its largest box IoU (``occsynth.boxes.pairwise_overlap``) with another
  non-crowd ground truth of the same image (0 when it is alone), binned by ``overlap_edges``;
- ``occlusion_ratio``: the annotation's ``occlusion_ratio`` field (occsynth sets: 1 - visible /
  amodal area), binned by ``ratio_edges``; only when some ground truths have the field (those
  without it, or whose value is no finite number, belong to no ratio bin).

Bins are ``[0, e0), [e0, e1), ..., [e_last, 1]`` (default edges 0.1, 0.3). The AP of a bin is COCO mask AP where every
ground truth outside the bin is turned into an ignore region (``iscrowd = 1``: a detection that
matches it counts neither as a hit nor as a false positive), evaluated on the images holding at
least one ground truth of the bin. Every other detection on those images is judged as usual, so
an unmatched detection is a false positive in every bin of its image.

Mask mode. ``mode='visible'`` scores against ``segmentation`` (COCO's visible masks).
``mode='amodal'`` scores against the complete masks (occsynth sets, KINS and COCOA converted to
COCO layout): on a copy of the ground truth, ``segmentation`` := ``amodal_segmentation``,
``area`` := ``amodal_area`` and ``bbox`` := ``amodal_bbox`` (both computed from the amodal mask
when absent), so box AP, the area ranges and the box-overlap levels are amodal too. A non-crowd
annotation without ``amodal_segmentation`` is an error naming it: silently scoring it against its
visible mask would mix two metrics. Crowd regions without one keep their visible mask (they only
mark what to ignore).

Occluded and Separated COCO (:mod:`bcnet.occsep`): given their object lists, ``evaluate`` also
reports ``occluded_recall`` / ``separated_recall`` (0..1) of the same results.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import numbers
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm.auto import tqdm

from occsynth import coco as coco_io
from occsynth import masks as mask_ops
from occsynth.atomic import write_bytes, write_json
from occsynth.boxes import is_box, pairwise_overlap
from occsynth import errors
from occsynth.errors import BadRecord, OccsynthError, SkipLog, whole_number

from . import occsep
from .checkpoint import category_names as checkpoint_category_names, named_otherwise
from .data import MODES, CocoInstances, check_mode, require_amodal_masks, unusable_box
from .device import resolve_device
from .runlock import hold_out_dir, refuse_other_output

OCCSEP_LISTS = ("occluded", "separated")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
OVERLAP_EDGES = (0.1, 0.3)
RATIO_EDGES = (0.1, 0.3)


@torch.inference_mode()
def predict_dataset(model: torch.nn.Module, dataset: CocoInstances, *, device: str | torch.device = "cpu",
                    category_ids: Sequence[int] | None = None, mask_threshold: float = 0.5,
                    batch_size: int = 1, progress: bool = True, skipped_ids: list | None = None) -> list[dict]:
    """Run ``model`` over every image of ``dataset`` (a :class:`bcnet.data.CocoInstances`) -> COCO results.

    ``category_ids[label - 1]`` maps model labels to COCO category ids (default: the dataset's
    mapping; pass the checkpoint's when evaluating on another file). Boxes and mask
    probabilities are mapped back to the image record's size when the dataset resized the
    image; masks are thresholded at ``mask_threshold`` and stored as compressed RLE.

    An image that cannot be read (corrupt, truncated, another size than its record) or that the
    model cannot process (:func:`check_model_input`) is skipped and counted in ``dataset.skips``
    like the records the dataset skipped when indexed (a ``strict`` dataset raises the
    :class:`BadRecord` naming the file instead), so one bad file does not stop an evaluation.
    Their image ids are appended to ``skipped_ids`` when given: score only the other images.
    """
    mask_threshold = check_mask_threshold(mask_threshold)
    if not whole_number(batch_size, 1):
        raise OccsynthError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    category_ids = list(dataset.category_ids if category_ids is None else category_ids)
    was_training = model.training
    returned_occluders = getattr(model, "return_occluder_masks", None)
    try:  # the model is given back as it came, also when a strict dataset or a Ctrl-C stops the loop
        model.eval()
        if returned_occluders is not None:
            model.return_occluder_masks = False  # scoring needs the instance masks only; pasting is costly
        return _predict_batches(model, dataset, device, category_ids, mask_threshold, batch_size, progress,
                                skipped_ids)
    finally:
        model.train(was_training)
        if returned_occluders is not None:
            model.return_occluder_masks = returned_occluders


def _predict_batches(model: torch.nn.Module, dataset, device, category_ids: list[int], mask_threshold: float,
                     batch_size: int, progress: bool, skipped_ids: list | None) -> list[dict]:
    """:func:`predict_dataset`'s loop, the model set up for inference."""
    results: list[dict] = []
    indices = range(len(dataset))
    with tqdm(total=len(dataset), desc="inference", unit="img", disable=not progress) as bar:
        for start in range(0, len(dataset), batch_size):
            batch = []
            for i in indices[start:start + batch_size]:
                try:
                    image, info = dataset.read(i)
                    check_model_input(model, image.shape[-2:], f"image file {dataset.paths[i]}")
                    batch.append((image, info))
                except BadRecord as exc:
                    dataset.skips.skip(exc)
                    if skipped_ids is not None:
                        skipped_ids.append(dataset.images[i]["id"])
            if batch:
                images = [image.to(device) for image, _ in batch]
                outputs = model(images)
                for (image, info), output in zip(batch, outputs):
                    results.extend(to_coco_results(output, info, image.shape[-2:], category_ids, mask_threshold))
            bar.update(len(indices[start:start + batch_size]))
    return results


def check_mask_threshold(mask_threshold: float) -> float:
    """``mask_threshold`` as a float, refused where it is no number strictly between 0 and 1 (a string, NaN, 0 or 1)
    before any image is run: the comparison with the mask probabilities would fail only at the first detection
    (a Fraction compares with numbers but not with a tensor: hence the float)."""
    if isinstance(mask_threshold, bool) or not (isinstance(mask_threshold, numbers.Real) and 0 < mask_threshold < 1):
        raise OccsynthError(f"mask_threshold must be a number between 0 and 1 (exclusive), got {mask_threshold!r}")
    return float(mask_threshold)


UNPROCESSABLE_IMAGE = "image the model cannot process"


def check_model_input(model: torch.nn.Module, size: Sequence[int], where: str) -> None:
    """Raise :class:`BadRecord` when the model's own resize would turn an image of ``size``
    (height, width) into one with a side under one pixel (e.g. a 20000 x 2 strip): torchvision
    would fail with a RuntimeError deep inside ``interpolate`` instead."""
    transform = getattr(model, "transform", None)
    min_sizes, max_size = getattr(transform, "min_size", None), getattr(transform, "max_size", None)
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise BadRecord(UNPROCESSABLE_IMAGE, where, f"{height}x{width} pixels")
    if not min_sizes or not max_size:
        return
    scale = min(float(min_sizes[-1]) / min(height, width), float(max_size) / max(height, width))
    new_h, new_w = math.floor(height * scale), math.floor(width * scale)
    if new_h < 1 or new_w < 1:
        raise BadRecord(UNPROCESSABLE_IMAGE, where, f"{height}x{width} pixels: the model's resize (short side "
                        f"{min_sizes[-1]}, long side at most {max_size}) leaves {new_h}x{new_w}; aspect ratio too extreme")


def to_coco_results(output: dict, info: dict, input_size: Sequence[int], category_ids: Sequence[int],
                    mask_threshold: float) -> list[dict]:
    """One image's model output -> COCO results in the original image's frame (``info``: ``image_id``,
    ``orig_size``); labels map back to ``category_ids``, masks (> ``mask_threshold``) to compressed RLE.
    ``input_size``: (height, width) of the image tensor given to the model, the frame of ``output``'s boxes and
    masks; they are scaled from it to ``orig_size``."""
    height, width = info["orig_size"]
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu()
    labels = output["labels"].detach().cpu()
    probs = output.get("masks")
    in_h, in_w = int(input_size[0]), int(input_size[1])
    if (in_h, in_w) != (height, width):
        boxes = boxes * torch.tensor([width / in_w, height / in_h, width / in_w, height / in_h])
        if probs is not None and len(probs):
            probs = torch.nn.functional.interpolate(probs.float(), size=(height, width), mode="bilinear",
                                                    align_corners=False)
    if probs is not None:
        # one copy from the device instead of one per mask, and each mask encoded from the box of its pixels
        # (masks.encode_crop: the same string): 100 masks of 640x480 took 36-40 ms on the CPU, now 18-26
        binary = (probs[:, 0] > mask_threshold).cpu().numpy()
    results = []
    for i in range(len(boxes)):
        label = int(labels[i])
        if not 1 <= label <= len(category_ids):
            continue
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        result = {"image_id": info["image_id"], "category_id": int(category_ids[label - 1]),
                  "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[i])}
        if probs is not None:
            top, left, bottom, right = mask_ops.tight_box(binary[i]) or (0, 0, 0, 0)
            result["segmentation"] = mask_ops.encode_crop(binary[i, top:bottom, left:right], top, left, height, width)
        results.append(result)
    return results


def evaluate(gt: str | os.PathLike | dict, results: list[dict], *, iou_types: Sequence[str] = ("bbox", "segm"),
             image_ids: Sequence[int] | None = None, occlusion_splits: bool = True,
             overlap_edges: Sequence[float] = OVERLAP_EDGES, ratio_edges: Sequence[float] = RATIO_EDGES,
             mode: str = "visible", occsep_lists: dict | None = None, skips: SkipLog | None = None,
             image_skips: SkipLog | None = None, category_ids: Sequence[int] | None = None,
             category_names: Mapping[int, str] | None = None) -> dict:
    """pycocotools AP of ``results`` against the annotations ``gt`` (path or loaded COCO dict).

    Returns ``{"bbox": {AP, AP50, AP75, APs, APm, APl}, "segm": {...}, "segm_by_box_overlap":
    {bin: {AP, AP50, AP75, instances, images}}, "segm_by_occlusion_ratio": {...} (when present),
    "images": n, "detections": n, "mode": mode}``. Values are pycocotools' (0..1; -1 where a range
    has no ground truth). Ground truth with no object to score at all is refused (:func:`require_scorable`), as
    every value would be -1. ``image_ids`` restricts evaluation to those images (default: all in ``gt``).
    ``mode``: ``'visible'`` or ``'amodal'`` ground-truth masks (see the module docstring; ``gt``
    itself is never changed). ``occsep_lists``: ``{'occluded': ..., 'separated': ...}`` (either
    key optional; a path, an object list, checked here, or an :class:`ObjectList`, checked already)
    adds ``<key>_recall`` and ``occsep`` (see :func:`occsep_metrics`).

    Ground truth pycocotools cannot read is cleaned first (:func:`clean_ground_truth`); what was
    dropped or turned into an ignore region is counted in ``skips`` (image records in ``image_skips``;
    both default to one fresh log) and reported as ``out["skipped"]``. A
    :class:`ScoredGroundTruth` (``gt`` prepared already, its counts in the caller's logs) is scored as it is.

    ``category_ids``: the categories the model knows (a checkpoint's). AP is averaged over those of ``gt``'s
    categories only, as pycocotools does over a subset: a person-only model on COCO val is scored on persons, not
    given AP 0 for 79 classes it never learnt. ``out["categories"]`` then says how many of ``gt``'s were scored, and
    names the others (``not_scored``). The occlusion levels hold the ground truths of the scored categories only.
    ``category_names``: the model's names of its ``category_ids`` (a checkpoint's); a scored category that ``gt``
    names otherwise is listed in ``out["categories"]["named_otherwise"]`` (``"id (model: a, set: b)"``): the same id
    may stand for another class in another set, and it is scored as the same one.
    """
    check_mode(mode)
    if isinstance(iou_types, str):  # "bbox": one type, not the letters b, b, o, x
        iou_types = (iou_types,)
    for iou_type in iou_types:  # before any scoring: a misspelt second type must not cost the first one's
        if iou_type not in ("bbox", "segm"):
            raise OccsynthError(f"iou_types: each must be 'bbox' or 'segm', got {iou_type!r}")
    if not isinstance(results, (list, tuple)):
        raise OccsynthError(f"results must be a list of detections (COCO results), got {type(results).__name__}")
    check_edges(overlap_edges, "overlap_edges")
    check_edges(ratio_edges, "ratio_edges")
    lists = load_occsep_lists(occsep_lists)
    skips = SkipLog() if skips is None else skips
    if isinstance(gt, ScoredGroundTruth):
        if gt.mode != mode:
            raise OccsynthError(f"the ground truth was prepared for {gt.mode} masks, not {mode} ones")
        data, where = gt.data, gt.where
    else:
        data = coco_io.read_dataset(gt) if not isinstance(gt, dict) else gt
        where = "" if isinstance(gt, dict) else str(gt)
        data = scored_ground_truth(data, mode, skips, image_skips=image_skips, where=where).data
    known = {image["id"] for image in data["images"]}
    image_ids = sorted(known if image_ids is None else set(image_ids))
    if set(image_ids) - known:
        raise OccsynthError(f"evaluation images {sorted(set(image_ids) - known)[:5]} are not in the annotations")
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise OccsynthError(f"result {i} is not an object: {str(r)[:80]}")
        if not _integer(r.get("image_id")):
            raise OccsynthError(f"result {i} needs an integer 'image_id', got {r.get('image_id')!r}")
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise OccsynthError(f"results refer to images not in the annotations: {sorted(unknown, key=str)[:5]}")
    out: dict = {"images": len(image_ids), "detections": len(results), "mode": mode}
    if not image_ids:
        raise OccsynthError("no image to evaluate")
    listed = data
    if category_ids is not None:  # the other categories' objects stay: they still occlude (box-overlap levels)
        known_ids = {int(c) for c in category_ids}
        scored = [c for c in data["categories"] if c["id"] in known_ids]  # clean: dicts with integer ids
        if not scored:
            raise OccsynthError("the annotations share no category with the model (it knows "
                                f"{coco_io.brief(sorted(known_ids))})")
        out["categories"] = {"scored": len(scored), "in_annotations": len(data.get("categories", [])),
                             "not_scored": [_category_name(c) for c in data["categories"] if c["id"] not in known_ids]}
        otherwise = named_otherwise(category_names or {}, {c["id"]: c.get("name") for c in scored})
        if otherwise:
            out["categories"]["named_otherwise"] = otherwise
        data = {**data, "categories": scored}
    require_scorable(listed, where or "the ground truth", image_ids, [c["id"] for c in data["categories"]], skips)
    coco_gt = _coco(data)
    loaded = {}
    for iou_type in iou_types:
        loaded[iou_type] = _load_results(coco_gt, results, iou_type)
        stats = _run_cocoeval(coco_gt, loaded[iou_type], iou_type, image_ids)
        out[iou_type] = dict(zip(STAT_NAMES, (float(v) for v in stats[:6])))
    if occlusion_splits and "segm" in loaded:
        levels = occlusion_levels(data)  # from every object: one of a category not scored still occludes
        counted = set(coco_io.categories_by_id(data["categories"]))  # but only the scored ones are in a level
        members = {a["id"] for a in data["annotations"] if a["category_id"] in counted}
        levels = {key: {i: v for i, v in level.items() if i in members} for key, level in levels.items()}
        out["segm_by_box_overlap"] = _split_eval(data, loaded["segm"], levels["box_overlap"], overlap_edges,
                                                 image_ids)
        if levels["occlusion_ratio"]:
            out["segm_by_occlusion_ratio"] = _split_eval(data, loaded["segm"], levels["occlusion_ratio"],
                                                         ratio_edges, image_ids)
    if lists:  # over the evaluated images only: an object on another one (not scored) is outside the set
        out.update(occsep_metrics(data, results, lists, image_ids=image_ids))
    out["skipped"] = skips.to_dict()
    return out


def require_scorable(data: dict, where: str, image_ids: Sequence[int], category_ids: Sequence[int],
                     skips: SkipLog | None = None) -> None:
    """Refuse ground truth (``data``, cleaned: :func:`clean_ground_truth`) holding no object COCO AP can score on
    ``image_ids`` among ``category_ids`` (the model's): no annotation, none on those images or of those categories,
    or crowd regions only. pycocotools then reports -1 ("no data") for every metric, which a table of '-' and exit
    status 0 passed off as an evaluation. ``where`` names the file; ``skips`` (what cleaning or reading left out) is
    said when it explains the rest."""
    anns = data["annotations"]
    evaluated, scored = set(image_ids), set(category_ids)
    on_images = [a for a in anns if a["image_id"] in evaluated]
    of_scored = [a for a in on_images if a["category_id"] in scored]
    names = {c["id"]: _category_name(c) for c in data["categories"]}

    def none_of(found: list, is_not: str, none_is: str) -> str:
        there = "" if len(found) == len(anns) else " on the images evaluated"
        return (f"its only annotation{there} {is_not}" if len(found) == 1
                else f"none of its {errors.plural(len(found), 'annotation')}{there} {none_is}")

    if not anns:
        why = "it has no annotations"
    elif not on_images:
        why = none_of(anns, "is not on", "is on") + f" the {errors.plural(len(evaluated), 'image')} evaluated"
    elif not of_scored:
        theirs = errors.first_few(sorted({names.get(a["category_id"], a["category_id"]) for a in on_images}, key=str))
        model = errors.first_few([names.get(c, c) for c in category_ids])
        why = (none_of(on_images, "is of no category the model predicts", "is of a category the model predicts")
               + f" ({'it is' if len(on_images) == 1 else 'they are'} of {theirs}; the model predicts {model})")
    elif all(a.get("iscrowd") for a in of_scored):
        why = ("its only annotation is a crowd region" if len(of_scored) == 1 else
               f"its {errors.plural(len(of_scored), 'annotation')} are all crowd regions")
        why += " (iscrowd=1), which COCO AP ignores"
    else:
        return
    skipped = f" ({skips.in_one_line()})" if skips is not None and skips.total else ""
    raise OccsynthError(f"{where}: nothing to score: {why}{skipped}; COCO AP needs a ground-truth object to score "
                        "(pycocotools reports -1, no data, for every metric)")


def require_scorable_file(path: str | os.PathLike, where: str, category_ids: Sequence[int] | None = None, *,
                          data: dict | None = None) -> None:
    """:func:`require_scorable` of an annotations file on all its images, for a caller that evaluates it only much
    later (the pipeline, after training); ``where`` names it (e.g. the option that gave it). ``category_ids``: the
    categories the model will predict (the pipeline's training set's; default: all the file's). ``data``: the
    file's records, when the caller has them already (read, or selected from it to be written)."""
    skips = SkipLog()
    data = clean_ground_truth(coco_io.read_dataset(path) if data is None else data, skips)
    require_scorable(data, where, [image["id"] for image in data["images"]],
                     [category["id"] for category in data["categories"]] if category_ids is None else category_ids,
                     skips)


def _category_name(category: dict) -> str | int:
    """A category as the report names it: its name when it is a string, else its id (a NaN name copied into
    results.json would make it invalid JSON)."""
    name = category.get("name")
    return name if isinstance(name, str) else category["id"]


ImageRecords = tuple[dict[int, dict], dict[int, str]]  # occsynth.coco.usable_image_records: usable, why others skipped


def clean_ground_truth(data: dict, skips: SkipLog, *, image_records: ImageRecords | None = None) -> dict:
    """A copy of ``data`` that pycocotools can evaluate, whatever the annotations file holds.

    pycocotools trusts its input: a 4-number polygon, a broken RLE or a missing ``area`` ends
    in a TypeError / KeyError deep inside it. Rules (every change counted in ``skips``, so
    ``strict`` logs stop at the first, naming the record):

    - image records without an integer ``id`` and positive integer ``height``/``width``, or over the
      pixel limit (:func:`occsynth.coco.check_pixels`: every mask of theirs would be decoded at that size), or after
      the first usable record of their id (:func:`occsynth.coco.usable_image_records`, as every reader), are dropped;
      ``image_records``: that function's result when the caller has it (:func:`scored_ground_truth`: counted
      already). So are
      annotations that are not objects, lack an integer ``id`` or a ``segmentation``, or refer to an unknown image or
      category; those of a dropped image record are counted as of a skipped image
      (:func:`occsynth.coco.check_image_id`), not as of an unknown one;
    - of the records of one annotation id the first usable one is kept (:func:`_first_usable_annotations`);
    - a polygon's parts that are no polygon (fewer than 3 points, an odd count of coordinates) are left out, as every
      reader leaves them out (:func:`occsynth.masks.check_polygons`);
    - an annotation whose mask cannot be decoded (a polygon with no part of 3 points or more,
      RLE of another size, ...) or is empty becomes an *ignore region*: ``iscrowd = 1`` with its
      box as the mask, so a detection on it counts neither as a hit nor as a false positive
      (the object is there; only its outline is unusable). Without a usable box (w, h > 0), or beside a
      record of its id whose mask is usable, it is dropped. All are counted as "degenerate or empty segmentation";
    - a malformed ``bbox`` next to a good mask is recomputed from the mask (counted as a
      malformed record); a missing or non-numeric ``area`` is the mask's pixel count and a
      missing ``iscrowd`` is 0 (not counted: COCO files often omit derived fields).
    """
    categories = coco_io.categories_by_id(data.get("categories", []))
    if image_records is None:
        image_records = coco_io.usable_image_records(data.get("images", []), skips, file_name=False)
    images, skipped_images = image_records
    checked = [_checked_annotation(ann, images, categories, skipped_images) for ann in data.get("annotations", [])]
    # categories as pycocotools and the scoring read them: records with an integer id, the first of a repeated id
    return {**data, "images": list(images.values()), "annotations": _first_usable_annotations(checked, skips),
            "categories": list(categories.values())}


@dataclasses.dataclass(frozen=True)
class _CheckedAnnotation:
    """An annotation of a usable image record and a known category, with what its mask is worth: ``problem`` says
    why it cannot be scored as an object ("" when it can), ``pixels`` is the mask's pixel count."""

    ann: dict
    image: dict
    problem: str
    pixels: int = 0

    @property
    def where(self) -> str:
        return f"annotation {self.ann['id']} (image {self.ann['image_id']})"


def _checked_annotation(ann, images: Mapping[int, dict], categories: Mapping[int, dict],
                        skipped_images: Mapping[int, str]) -> _CheckedAnnotation | BadRecord:
    """``ann`` checked against the tables, its mask decoded; a record that is no annotation of them is its
    BadRecord, returned: the caller counts every record in file order (a strict log stops at the first bad one)."""
    try:
        ann = coco_io.check_annotation_record(ann, images, categories, skipped_images)
    except BadRecord as exc:
        return exc
    image = images[ann["image_id"]]
    try:
        pixels = int(mask_ops.rle_area(mask_ops.to_rle(ann["segmentation"], image["height"], image["width"])))
    except Exception as exc:  # DegenerateMask, or pycocotools' bare errors on broken counts (to_rle checks the runs)
        return _CheckedAnnotation(ann, image, str(exc) or type(exc).__name__)
    return _CheckedAnnotation(ann, image, "" if pixels else "empty mask", pixels)


def _first_usable_annotations(checked: list[_CheckedAnnotation | BadRecord], skips: SkipLog) -> list[dict]:
    """The annotations pycocotools scores, in file order: of the records of one id the first usable one, as every
    reader keeps an id's first usable record (:func:`occsynth.coco.usable_image_records`,
    :func:`occsynth.coco.index_dataset`, ``build-cocoocc``): a
    broken record does not take the id of a later good one, and only a usable record is a duplicate of another.

    Usable here: a mask that can be scored, or, where no record of the id has one, a box to be an ignore region
    over. Not ``build-cocoocc``'s loop (:func:`occsynth.cocoocc.usable_records`), whose notion differs: it keeps
    records unchanged, so a broken mask or box always skips one there, and it decides record by record; here a bad
    box is made from the mask and a broken mask still marks its object unless a record after it has the mask."""
    with_mask = {c.ann["id"] for c in checked if isinstance(c, _CheckedAnnotation) and not c.problem}
    kept, taken = [], set()
    for c in checked:
        try:
            if isinstance(c, BadRecord):
                raise c
            if c.problem:
                _require_ignore_region(c, c.ann["id"] in with_mask, skips.strict)
            if c.ann["id"] in taken:
                raise BadRecord(errors.DUPLICATE_ID, f"annotation {c.ann['id']}", coco_io.duplicate_detail(skips))
        except BadRecord as exc:
            skips.skip(exc)
            continue
        taken.add(c.ann["id"])
        kept.append(_scored_annotation(c, skips))
    return kept


def _require_ignore_region(checked: _CheckedAnnotation, twin_has_mask: bool, strict: bool) -> None:
    """Raise the BadRecord that skips ``checked``, an annotation whose mask cannot be scored, unless it is to be an
    ignore region: no record of its id has a usable mask (``twin_has_mask``) and its box is one. Strict, the record
    itself stops the run: nothing is kept or skipped."""
    where, problem = checked.where, checked.problem
    if strict:
        raise BadRecord(errors.DEGENERATE_MASK, where, problem)
    if twin_has_mask:
        raise BadRecord(errors.DEGENERATE_MASK, where, f"{problem}; skipped: another record of this id has a usable mask")
    box = checked.ann.get("bbox")
    if not (_is_box(box) and box[2] > 0 and box[3] > 0):
        raise BadRecord(errors.DEGENERATE_MASK, where, f"{problem}; no usable bbox either: dropped")


def _is_box(box) -> bool:
    """A COCO [x, y, w, h] pycocotools can score: 4 finite numbers, w and h >= 0 (a ground truth's, a result's)."""
    return is_box(box) and box[2] >= 0 and box[3] >= 0


def _scored_annotation(checked: _CheckedAnnotation, skips: SkipLog) -> dict:
    """A copy of the kept annotation ``checked`` as pycocotools reads it: an ignore region over its box when its mask
    cannot be scored, else its box and area made from the mask where they are unusable; the changes counted."""
    ann, where, image = checked.ann, checked.where, checked.image
    out = {**ann, "iscrowd": 1 if ann.get("iscrowd") else 0}
    if not checked.problem and isinstance(ann["segmentation"], list):
        # the polygon parts that are rasterised: a stray short part is left out (pycocotools reads every part as a
        # box when the first has 4 numbers)
        out["segmentation"] = mask_ops.check_polygons(ann["segmentation"], image["height"], image["width"])
    if checked.problem:
        skips.skip(BadRecord(errors.DEGENERATE_MASK, where, f"{checked.problem}; kept as an ignore region (iscrowd=1) "
                                                            "over its bbox"))
        x, y, w, h = (float(v) for v in ann["bbox"])
        return {**out, "iscrowd": 1, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "area": w * h,
                "bbox": [x, y, w, h]}
    if not _is_box(ann.get("bbox")):
        skips.skip(unusable_box(where, ann.get("bbox"), skips.strict))
        out["bbox"] = [float(v) for v in mask_ops.rle_bbox(mask_ops.to_rle(ann["segmentation"], image["height"],
                                                                           image["width"]))]
    area = ann.get("area")
    if isinstance(area, bool) or not isinstance(area, (int, float)) or not np.isfinite(area) or area < 0:
        out["area"] = float(checked.pixels)
    return out


@dataclasses.dataclass(frozen=True)
class ScoredGroundTruth:
    """Ground truth as :func:`evaluate` scores it (:func:`scored_ground_truth`): the masks of ``mode`` in place and
    cleaned. :func:`evaluate` takes it as it is, instead of checking every annotation again. ``where``: how errors
    about it name it: the file it was read from ("" for ground truth given in memory; :func:`evaluate_checkpoint`
    adds the set's name)."""

    data: dict
    mode: str
    where: str = ""


def scored_ground_truth(data: dict, mode: str, skips: SkipLog, *, image_skips: SkipLog | None = None,
                        where: str | os.PathLike = "") -> ScoredGroundTruth:
    """``data`` with the masks of ``mode`` in place (:func:`amodal_ground_truth`, naming ``where``), cleaned
    (:func:`clean_ground_truth`, counting in ``skips`` and ``image_skips``: a strict log raises at the first
    problem). :func:`evaluate_checkpoint` makes it before predicting, so that a strict run stops before any
    prediction, and the masks are checked once; so are the image records, for both steps."""
    image_records = coco_io.usable_image_records(data.get("images", []), skips if image_skips is None else image_skips,
                                                 file_name=False)
    if mode == "amodal":
        data = amodal_ground_truth(data, where, images=image_records[0])
    return ScoredGroundTruth(clean_ground_truth(data, skips, image_records=image_records), mode, str(where))


def amodal_ground_truth(data: dict, where: str | os.PathLike = "", *, images: Mapping[int, dict] | None = None) -> dict:
    """A copy of ``data`` whose annotations score amodal masks: ``segmentation``, ``area``, ``bbox``
    replaced by ``amodal_segmentation``, ``amodal_area``, ``amodal_bbox`` (the last two computed
    from the mask when absent). Raises :class:`OccsynthError` naming ``where`` (the file) and the first
    non-crowd annotation without ``amodal_segmentation`` (:func:`require_amodal_masks`); crowd ones
    without it keep their visible mask. An annotation of an image record that :func:`clean_ground_truth` drops
    (no usable size, over the pixel limit) is left as it is: no mask is decoded for it, and it is dropped there.
    ``images``: the usable image records by id (:func:`occsynth.coco.usable_image_records`) when the caller has
    them; else they are found here, uncounted (:func:`clean_ground_truth` counts them)."""
    require_amodal_masks(data, where)
    if images is None:
        images, _ = coco_io.usable_image_records(data["images"], SkipLog(), file_name=False)
    annotations = []
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not coco_io.is_int(ann.get("image_id")) or ann["image_id"] not in images:
            annotations.append(ann)  # a malformed record, or of a dropped image: clean_ground_truth counts it
            continue
        segmentation = ann.get("amodal_segmentation")
        if not segmentation:
            annotations.append(dict(ann))  # a crowd region (require_amodal_masks passed)
            continue
        area, box = ann.get("amodal_area"), ann.get("amodal_bbox")
        if area is None or box is None:
            image = images[ann["image_id"]]
            at = f"{where}: " if where else ""
            try:
                rle = mask_ops.to_rle(segmentation, image["height"], image["width"])
            except (mask_ops.DegenerateMask, TypeError, ValueError) as exc:
                raise OccsynthError(f"{at}annotation {ann.get('id')}: unreadable amodal_segmentation ({exc})") from None
            area = mask_ops.rle_area(rle) if area is None else area
            box = mask_ops.rle_bbox(rle) if box is None else box
        box = [float(v) for v in box]
        annotations.append({**ann, "segmentation": segmentation, "area": float(area), "bbox": box,
                            "amodal_area": float(area), "amodal_bbox": box})
    return {**data, "annotations": annotations}


@dataclasses.dataclass(frozen=True)
class ObjectList:
    """An Occluded / Separated COCO object list already checked entry by entry, with ``where`` it
    came from (its file, or ``'<key> object list'`` for one given in memory): errors about it name
    that, and :func:`load_occsep_lists` takes it as it is instead of decoding every mask again."""

    objects: list
    where: str


def load_occsep_lists(lists: dict | None) -> dict[str, ObjectList]:
    """``{'occluded'|'separated': path, object list or ObjectList}`` -> checked :class:`ObjectList` values
    (paths read with :func:`bcnet.occsep.load_objects`, which refuses pickles that would run code);
    every entry not checked yet is checked here, so a bad one fails before any prediction."""
    out = {}
    for key, value in (lists or {}).items():
        if key not in OCCSEP_LISTS:
            raise OccsynthError(f"object list name must be one of {OCCSEP_LISTS}, got {key!r}")
        if value is None:
            continue
        if isinstance(value, ObjectList):
            out[key] = value
        elif isinstance(value, (str, os.PathLike)):
            out[key] = ObjectList(occsep.load_objects(value), str(value))  # checks every entry, naming the file
        else:
            where = f"{key} object list"
            occsep.check_objects(value, where)
            out[key] = ObjectList(list(value), where)
    return out


def check_occsep_entries(data: dict, lists: dict[str, ObjectList], where: str | os.PathLike) -> None:
    """Refuse, before predicting, a listed object on one of ``data``'s images that the recall would score
    wrongly: its class is no category of ``where`` (by name, or by id), so no prediction could match it and it
    would count as a miss; or its RLE mask's size is not its image's (the recall compares them pixel by pixel); or
    its polygon has vertices far outside its image (:func:`occsynth.masks.check_polygons`: the recall would stop at
    it after the whole prediction).
    Objects on other images are not scored, so not checked. An image record without a usable size is left to
    the record checks (it is skipped and counted there)."""
    images = [image for image in data["images"] if isinstance(image, dict) and coco_io.is_int(image.get("id"))]
    index = _file_name_index(images)
    sizes = {image["id"]: [image["height"], image["width"]] for image in images
             if all(coco_io.is_int(image.get(k)) and image[k] > 0 for k in ("height", "width"))}
    categories = coco_io.categories_by_id(data["categories"])
    names = {c.get("name") for c in categories.values()}
    for listed in lists.values():
        for i, entry in enumerate(listed.objects):
            file_name, cls, segmentation = occsep.parse_entry(entry)
            image_id = index.get(file_name)
            if image_id is None:
                continue
            if cls not in (names if isinstance(cls, str) else categories):
                raise OccsynthError(f"{listed.where}: entry {i}: its class {coco_io.brief(cls)} is no category "
                                    f"{'name' if isinstance(cls, str) else 'id'} of {where}, so no prediction "
                                    "could match it")
            size = sizes.get(image_id)
            if size and isinstance(segmentation, dict) and list(segmentation["size"]) != size:
                raise OccsynthError(f"{listed.where}: entry {i}: its RLE size {list(segmentation['size'])} "
                                    f"differs from the size {size} of image {file_name!r} in {where}")
            if size and isinstance(segmentation, list):  # its shape was checked when the list was read
                try:
                    mask_ops.check_polygons(segmentation, *size)
                except mask_ops.DegenerateMask as exc:
                    raise OccsynthError(f"{listed.where}: entry {i}: its polygon cannot be read on image "
                                        f"{file_name!r} in {where}: {exc}") from None


def occsep_metrics(data: dict, results: list[dict], lists: dict[str, ObjectList],
                   image_ids: Sequence[int] | None = None) -> dict:
    """Occluded / Separated COCO recall of ``results`` for each loaded list (:mod:`bcnet.occsep`).

    Objects are matched to images by file name (also by the file name's last part when that is
    unambiguous among all of ``data``'s images, so lists of bare COCO names work with ``val2017/...``
    records). Returns ``{"<key>_recall": 0..1, "occsep": {key: {found, total, recall, outside_set,
    score_threshold, iou_threshold}}}``: recall over the listed objects on ``data``'s images, or on
    those of ``image_ids`` when given (the images evaluated; None when none of them is on these
    images); ``outside_set`` counts the others (a subset such as COCO-OCC leaves many out; so does
    an evaluation that skipped unreadable images: their objects are not scored, not missed).
    """
    gt_images = _file_name_index(data["images"])
    if image_ids is not None:
        evaluated = set(image_ids)
        gt_images = {name: image_id for name, image_id in gt_images.items() if image_id in evaluated}
    out: dict = {"occsep": {}}
    for key, listed in lists.items():
        found = occsep.occsep_recall(results, gt_images, listed.objects, categories=data.get("categories"))
        found.pop("hits")
        out[f"{key}_recall"] = found["recall"]
        out["occsep"][key] = found
    return out


def _file_name_index(images: list[dict]) -> dict[str, int]:
    """Image ids by the file each record names (:func:`occsynth.coco.record_file_name`: its ``file_name``, or LVIS's
    ``coco_url``), and by that name's last part where only one record has it."""
    index = {}
    for image in images:
        try:
            name = coco_io.record_file_name(image)
        except BadRecord:  # a coco_url naming no file: no listed object can be on it
            continue
        if name is not None:
            index[str(name)] = image["id"]
    by_base: dict[str, list[int]] = {}
    for name, image_id in index.items():
        by_base.setdefault(name.replace("\\", "/").rsplit("/", 1)[-1], []).append(image_id)
    for base, ids in by_base.items():
        if len(ids) == 1 and base not in index:
            index[base] = ids[0]
    return index


def occlusion_levels(data: dict) -> dict:
    """Per non-crowd ground-truth id: ``box_overlap`` (largest box IoU with another one of its
    image) and ``occlusion_ratio`` (the annotation field, where it is a number in [0, 1]: a bool, NaN,
    infinity or a ratio out of range, from a damaged or hand-made file, would otherwise land in an end bin)."""
    by_image: dict[int, list[dict]] = {}
    ratio = {}
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
        value = ann.get("occlusion_ratio")
        if mask_ops.finite_number(value) and 0 <= value <= 1:  # not true/false, NaN, inf or 1.5: no ratio, no bin
            ratio[ann["id"]] = float(value)
    overlap = {}
    for anns in by_image.values():
        boxes = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        best = pairwise_overlap(boxes, "iou").max(axis=1) if len(anns) > 1 else np.zeros(len(anns))
        overlap.update({a["id"]: float(v) for a, v in zip(anns, best)})
    return {"box_overlap": overlap, "occlusion_ratio": ratio}


def check_edges(edges: Sequence[float], name: str) -> None:
    """Refuse bin edges that are not numbers rising strictly inside (0, 1): others make bins that overlap
    or are empty, and their AP means nothing."""
    try:
        values = [float(e) for e in edges]
    except (TypeError, ValueError):
        raise OccsynthError(f"{name} must be a list of numbers between 0 and 1, got {edges!r}") from None
    if not all(0 < v < 1 for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise OccsynthError(f"{name} must rise strictly between 0 and 1 (exclusive), got {list(edges)!r}")


def bin_names(edges: Sequence[float]) -> list[str]:
    """Names of the bins that ``edges`` cut [0, 1] into: ``[0,0.1)``, ..., ``[0.5,1]`` (the last one closed)."""
    bounds = [0.0, *edges, 1.0]
    return [f"[{lo:g},{hi:g}" + ("]" if i == len(edges) else ")")
            for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]


def bin_of(value: float, edges: Sequence[float]) -> int:
    """Index of the bin ``[0, e0), [e0, e1), ..., [e_last, 1]`` holding ``value``."""
    return int(np.searchsorted(np.asarray(edges, np.float64), value, side="right"))


def _split_eval(data: dict, coco_dt: COCO, level: dict, edges: Sequence[float], image_ids: Sequence[int]) -> dict:
    """Mask AP of each bin of ``level`` (ground-truth id -> value) cut by ``edges``, as the module docstring says:
    every other ground truth an ignore region, scored on the evaluated images holding one of the bin."""
    evaluated = set(image_ids)
    out = {}
    for b, name in enumerate(bin_names(edges)):
        member = {ann_id for ann_id, v in level.items() if bin_of(v, edges) == b}
        anns = []
        split_images = set()
        instances = 0
        for ann in data["annotations"]:
            if ann["id"] in member and ann["image_id"] in evaluated:
                split_images.add(ann["image_id"])
                instances += 1
            elif not ann.get("iscrowd", 0):
                ann = {**ann, "iscrowd": 1}  # a copy: data is the caller's (_coco copies the others)
            anns.append(ann)
        entry = {"AP": -1.0, "AP50": -1.0, "AP75": -1.0, "instances": instances, "images": len(split_images)}
        if split_images:
            split_gt = _coco({**data, "annotations": anns})
            stats = _run_cocoeval(split_gt, coco_dt, "segm", sorted(split_images))
            entry.update(AP=float(stats[0]), AP50=float(stats[1]), AP75=float(stats[2]))
        out[name] = entry
    return out


def _coco(data: dict) -> COCO:
    """A pycocotools COCO over shallow copies of the annotations (pycocotools rewrites them), numbered 1, 2, ...

    COCOeval marks a detection's match by the ground truth's id, 0 meaning none: a file numbering its annotations
    from 0 (valid COCO) had the detection matched to annotation 0 counted as a false positive. Nothing maps the
    ids back: the occlusion splits mark their members before this, Occluded/Separated reads ``data``.
    """
    coco = COCO()
    coco.dataset = {**data, "annotations": [{**a, "id": k} for k, a in enumerate(data["annotations"], start=1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_results(coco_gt: COCO, results: list[dict], iou_type: str) -> COCO:
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    sizes = {image_id: (image["height"], image["width"]) for image_id, image in coco_gt.imgs.items()}
    anns = [{k: v for k, v in _checked_result(i, r, iou_type, sizes).items() if k != drop}
            for i, r in enumerate(results)]
    if not anns:  # pycocotools' loadRes fails on an empty list
        return _coco({"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                      "annotations": []})
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(anns)


def _integer(value) -> bool:
    """An id a detection may carry: any integer, numpy's too (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _checked_result(i: int, result: dict, iou_type: str, sizes: dict[int, tuple[int, int]]) -> dict:
    """One detection as pycocotools reads it, or an OccsynthError naming it and what is wrong: pycocotools
    fails deep inside on most of these, and loops for ever on some broken RLE. A bbox given as a tuple or
    numpy array of 4 numbers becomes a list of floats. ``sizes``: (height, width) by image id."""
    if not _integer(result.get("category_id")):
        raise OccsynthError(f"result {i} needs an integer 'category_id', got {result.get('category_id')!r}")
    score = result.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float, np.number)) or not math.isfinite(score):
        raise OccsynthError(f"result {i} needs a finite number 'score', got {score!r}")
    if iou_type == "bbox":
        box = result.get("bbox")
        if box is None:
            raise OccsynthError(f"result {i} has no 'bbox', needed for bbox AP")
        if isinstance(box, (tuple, np.ndarray)) and np.shape(box) == (4,):
            try:
                box = [float(v) for v in box]
            except (TypeError, ValueError):
                pass  # refused below, in words
        if not _is_box(box):
            raise OccsynthError(f"result {i}: bbox must be [x, y, w, h], 4 finite numbers with w, h >= 0, got {box!r}")
        return {**result, "bbox": box}
    segmentation = result.get("segmentation")
    if segmentation is None:
        raise OccsynthError(f"result {i} has no 'segmentation', needed for segm AP")
    height, width = sizes[result["image_id"]]
    if not (isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes))):
        raise OccsynthError(f"result {i}: segmentation must be compressed RLE ({{'size': [h, w], 'counts': str}}, "
                            f"e.g. occsynth.masks.encode(mask)), got {str(segmentation)[:60]}")
    size = segmentation.get("size")
    if not (isinstance(size, (list, tuple, np.ndarray)) and np.shape(size) == (2,) and all(map(_integer, size))
            and [int(v) for v in size] == [height, width]):
        raise OccsynthError(f"result {i}: segmentation size {segmentation.get('size')!r} is not its image's "
                            f"[{height}, {width}]")
    try:
        mask_ops.check_rle_counts(segmentation["counts"], height * width)
    except (mask_ops.DegenerateMask, ValueError) as exc:
        raise OccsynthError(f"result {i}: segmentation cannot be read: {exc}") from None
    return result


def _run_cocoeval(coco_gt: COCO, coco_dt: COCO, iou_type: str, image_ids: Sequence[int]) -> np.ndarray:
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    evaluator.params.imgIds = list(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def markdown_table(results: dict) -> str:
    """Markdown tables (AP in percent) for ``{set name: evaluate() output}``."""
    def pct(v) -> str:
        return "-" if v is None or v < 0 else f"{100 * v:.1f}"

    lines = ["| set | box AP | mask AP | AP50 | AP75 | APs | APm | APl |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        box, segm = r.get("bbox", {}), r.get("segm", {})
        lines.append(f"| {name} | {pct(box.get('AP'))} | {pct(segm.get('AP'))} | "
                     + " | ".join(pct(segm.get(k)) for k in STAT_NAMES[1:]) + " |")
    lines += ["", "AP in percent. Box AP and mask AP are COCO AP at IoU .50:.95; AP50, AP75 and APs/APm/APl "
                  "(small, medium, large objects) are mask AP. `-`: not scored (no ground truth of that kind)."]
    for name, r in results.items():
        categories = r.get("categories") or {}
        if categories.get("scored", 0) < categories.get("in_annotations", 0):
            names = categories.get("not_scored")  # none in a results.json of an earlier version (read again)
            lines += ["", f"{name}: the model scores {categories['scored']} of the set's {categories['in_annotations']} "
                          "categories" + (f"; not scored: {errors.first_few(names)}." if names else ".")]
        if categories.get("named_otherwise"):
            lines += ["", f"{name}: categories the model knows by other names (scored as the same class, by id): "
                          f"{errors.first_few(categories['named_otherwise'])}."]
    split_rows = []
    for name, r in results.items():
        for key, label in (("segm_by_box_overlap", "max box IoU"), ("segm_by_occlusion_ratio", "occlusion ratio")):
            for bin_name, entry in r.get(key, {}).items():
                split_rows.append(f"| {name} | {label} {bin_name} | {entry['instances']} | {pct(entry['AP'])} | "
                                  f"{pct(entry['AP50'])} | {pct(entry['AP75'])} |")
    if split_rows:
        lines += ["", "Mask AP by occlusion level (ground truths outside the level are ignored; instances: the "
                      "level's ground truths of the scored categories):", "",
                  "| set | level | instances | mask AP | AP50 | AP75 |", "|---|---|---|---|---|---|", *split_rows]
    amodal = [name for name, r in results.items() if r.get("mode") == "amodal"]
    if amodal:
        lines += ["", f"Amodal masks (amodal_segmentation) scored for: {', '.join(amodal)}."]
    occsep_rows = []
    for name, r in results.items():
        entries = r.get("occsep") or {}
        if entries:
            cells = []
            for key in OCCSEP_LISTS:
                e = entries.get(key)
                if not e:
                    cells += ["-", "-"]
                    continue
                outside = e.get("outside_set", 0)
                cells += [f"{100 * e['recall']:.2f}" if e["total"] else "-",
                          f"{e['found']} / {e['total']}" + (f" ({outside} outside the set)" if outside else "")]
            occsep_rows.append(f"| {name} | " + " | ".join(cells) + " |")
    if occsep_rows:
        lines += ["", f"Occluded and Separated COCO recall (same-class prediction with score >= "
                  f"{occsep.SCORE_THRESHOLD:g} and mask IoU >= {occsep.IOU_THRESHOLD:g}), over the listed "
                  "objects on the set's images; objects on other images are counted apart (\"outside the set\"):",
                  "", "| set | occluded recall | found / listed | separated recall | found / listed |",
                  "|---|---|---|---|---|", *occsep_rows]
    return "\n".join(lines) + "\n"


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a checkpoint (or a run folder, or its last_checkpoint marker) was trained as and load its
    weights (``weights_only``)."""
    from .checkpoint import load_checkpoint, load_weights, resolve_checkpoint
    from .train import INT32_MAX, build, saved_backbone_build

    checkpoint = resolve_checkpoint(checkpoint)  # a run folder or its marker: messages name the file it stands for
    state = load_checkpoint(checkpoint)
    category_ids = state.get("category_ids")
    if not category_ids:
        raise OccsynthError(f"{checkpoint}: checkpoint has no category mapping")
    if not isinstance(state.get("model_config"), dict):
        raise OccsynthError(f"{checkpoint}: not a bcnet checkpoint: no model_config (the settings its model was "
                            "built with)")
    config = dict(state["model_config"])
    config.pop("backbone_weights", None)  # the trained weights include the backbone
    config.update(saved_backbone_build(state))  # frozen BatchNorms when it started from backbone weights
    num_classes = config.pop("num_classes", len(category_ids) + 1)
    if num_classes != len(category_ids) + 1:  # a label would map to the wrong category, or to none
        raise OccsynthError(f"{checkpoint}: its model_config has num_classes {coco_io.brief(num_classes)}, but its "
                            f"{len(category_ids)} category_ids need {len(category_ids) + 1} (background + one each)")
    for key in ("min_size", "max_size"):  # the model's resize of every image (training saves its short and long_max):
        # another value failed in it with a traceback, or collapsed every image, which was then blamed on the images
        if key in config and not (coco_io.is_int(config[key]) and 1 <= config[key] <= INT32_MAX):
            raise OccsynthError(f"{checkpoint}: its model_config has {key} {coco_io.brief(config[key])}, not a whole "
                                f"number of pixels from 1 to {INT32_MAX}")
    try:
        model = build(num_classes, config)
    except (OccsynthError, TypeError, ValueError) as exc:  # an unknown backbone name, setting or value
        raise OccsynthError(f"{checkpoint}: its model_config builds no model: {exc}") from None
    load_weights(model, state["model"], checkpoint)
    return model.to(device).eval(), state


def evaluate_checkpoint(checkpoint: str | os.PathLike, sets: dict[str, tuple[str | os.PathLike, str | os.PathLike]],
                        out_dir: str | os.PathLike, *, device: str | None = None, mask_threshold: float = 0.5,
                        overlap_edges: Sequence[float] = OVERLAP_EDGES, ratio_edges: Sequence[float] = RATIO_EDGES,
                        mode: str | None = None, occsep_lists: dict | None = None,
                        strict: bool = False, progress: bool = True) -> dict:
    """Predict and evaluate every set ``{name: (annotations JSON, image root)}`` with one checkpoint.

    ``mode`` (``'visible'``/``'amodal'``): which ground-truth masks to score against; default:
    the mode the checkpoint was trained with (its schedule's ``mode``; ``'visible'`` when it has
    none). ``occsep_lists``: ``{'occluded': path, 'separated': path}`` (either optional) adds
    Occluded / Separated COCO recall to every set (see :func:`evaluate`); the lists are read
    before any prediction, so a bad file fails fast.

    Writes ``out_dir/detections_<name>.json`` (COCO results, category ids mapped back to the
    checkpoint's, masks as compressed RLE), ``out_dir/results.json`` (``{name: evaluate() output}``)
    and ``out_dir/results.md`` (:func:`markdown_table`); returns the results dict.
    """
    if not isinstance(sets, dict) or not sets:
        raise OccsynthError(f"sets must be a non-empty dict {{name: (annotations JSON, image root)}}, got {sets!r:.80}")
    for name, paths in sets.items():
        if not isinstance(paths, (tuple, list)) or len(paths) != 2:
            raise OccsynthError(f"set {name!r}: expected (annotations JSON, image root), got {paths!r:.80}")
    check_edges(overlap_edges, "overlap_edges")
    check_edges(ratio_edges, "ratio_edges")
    if mode is not None:
        check_mode(mode)
    mask_threshold = check_mask_threshold(mask_threshold)
    refuse_other_output(out_dir, "bcnet evaluate")
    lists = load_occsep_lists(occsep_lists)
    device = resolve_device(device)
    model, state = load_model(checkpoint, device)
    if mode is None:
        mode = str((state.get("schedule") or {}).get("mode") or "visible")
        if mode not in MODES:
            raise OccsynthError(f"{checkpoint}: checkpoint schedule has unknown mode {mode!r}; pass a mode")
    out_dir = Path(out_dir)
    # every set is read and checked before any prediction: a bad second set must not cost the
    # first one's work, nor leave its detections rewritten
    prepared = []
    for name, (ann_file, image_root) in sets.items():
        if not _names_a_file(name):
            raise OccsynthError(f"set name {name!r} cannot be used in a file name")
        data = coco_io.read_dataset(ann_file)  # parsed once: the dataset and the evaluation share it
        if mode == "amodal":  # checked before the dataset, which would refuse it in training's words
            require_amodal_masks(data, ann_file)
        # the dataset reads the images, the scoring the annotations: each record is counted once, by the rule of
        # the reader that keeps it (of an annotation id, the first record whose mask can be scored)
        dataset = CocoInstances(ann_file, image_root, mode=mode, strict=strict, category_ids=state["category_ids"],
                                data={**data, "annotations": []}, all_categories=False)
        _require_images(name, dataset, image_root)
        check_occsep_entries(data, lists, ann_file)
        try:  # the masks scored, checked once, now: strict, a bad one stops the run before any prediction
            # (the dataset's log already counts the image records)
            gt = scored_ground_truth(data, mode, dataset.skips, image_skips=SkipLog(strict=strict), where=ann_file)
        except BadRecord as exc:
            raise exc.in_file(ann_file) from None
        gt = dataclasses.replace(gt, where=f"set {name!r}: {ann_file}")  # as its errors name it, here and in evaluate
        _require_annotations(name, ann_file, data, gt, dataset.skips)
        require_scorable(gt.data, gt.where, dataset.image_ids, state["category_ids"],
                         dataset.skips)  # before predicting, as after (evaluate): the images read may have none
        prepared.append((name, image_root, gt, dataset))
    # an unwritable --out fails now, not after the whole inference; so does one another bcnet command writes
    with hold_out_dir(out_dir):
        return _evaluate_prepared(model, state, prepared, out_dir, device, mask_threshold, progress,
                                  overlap_edges, ratio_edges, mode, lists)


def _evaluate_prepared(model, state: dict, prepared: list, out_dir: Path, device, mask_threshold: float,
                       progress: bool, overlap_edges, ratio_edges, mode: str, lists) -> dict:
    """:func:`evaluate_checkpoint` once every set is read and checked: predict, evaluate and write each.

    Each set's detections wait under a staged name until every set is done; then all are put in place, and
    results.json written last: a failure in a later set leaves an earlier run's files as they were."""
    report = {}
    for left in out_dir.glob(".detections_*.json.staged"):  # by a run killed outright (kill -9, a power cut)
        left.unlink(missing_ok=True)
    staged = {name: out_dir / f".detections_{name}.json.staged" for name, *_ in prepared}
    try:
        for name, image_root, gt, dataset in prepared:
            unreadable: list[int] = []
            results = predict_dataset(model, dataset, device=device, category_ids=state["category_ids"],
                                      mask_threshold=mask_threshold, progress=progress, skipped_ids=unreadable)
            bad = set(unreadable)
            done = [i for i in dataset.image_ids if i not in bad]
            _require_images(name, dataset, image_root, done)  # evaluate() checks that they hold something to score
            write_json(staged[name], results)
            report[name] = evaluate(gt, results, image_ids=done, overlap_edges=overlap_edges,
                                    ratio_edges=ratio_edges, mode=mode, occsep_lists=lists, skips=dataset.skips,
                                    category_ids=state["category_ids"], category_names=checkpoint_category_names(state))
            report[name]["skipped"] = dataset.skips.to_dict()
        for name, path in staged.items():
            os.replace(path, out_dir / f"detections_{name}.json")
    finally:
        for path in staged.values():  # left only by a failure
            path.unlink(missing_ok=True)
    for stale in _previous_set_names(out_dir) - set(report):  # a rerun into this --out with other sets
        (out_dir / f"detections_{stale}.json").unlink(missing_ok=True)
    write_json(out_dir / "results.json", report, indent=2)
    write_bytes(out_dir / "results.md", markdown_table(report).encode("utf-8"))
    return report


def _require_annotations(name: str, ann_file, data: dict, gt: ScoredGroundTruth, skips: SkipLog) -> None:
    """Refuse a set of which no annotation can be scored (each skipped, ``skips`` says why): a table of '-' with
    exit status 0 would hide it."""
    if gt.data["annotations"] or not data["annotations"]:  # a file without any: require_scorable says so
        return
    n = len(data["annotations"])
    what = f"the only annotation of {ann_file} cannot" if n == 1 else f"none of the {n} annotations of {ann_file} can"
    raise OccsynthError(f"set {name!r}: {what} be evaluated ({skips.in_one_line()})")


def _previous_set_names(out_dir: Path) -> set[str]:
    """The sets an earlier evaluation into ``out_dir`` wrote detections of (from its results.json)."""
    try:
        previous = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(previous, dict):
        return set()
    return {name for name in previous if isinstance(name, str) and _names_a_file(name)}


def _names_a_file(set_name: str) -> bool:
    """Whether a set's name can stand in its output file's name (``detections_<name>.json``): not empty, no folder
    separator, no leading dot. One test for the sets asked for and for those whose detections a rerun removes."""
    return bool(set_name) and "/" not in set_name and "\\" not in set_name and not set_name.startswith(".")


IMAGE_REASONS = (errors.MISSING_FILE, errors.CORRUPT_IMAGE, errors.TRUNCATED_IMAGE, errors.SIZE_MISMATCH,
                 errors.OUTSIDE_ROOT)


def _require_images(name: str, dataset, image_root, done: Sequence[int] | None = None) -> None:
    """Refuse a set none of whose images could be read: an empty table with exit status 0 would
    hide a wrong image root. Names the first skipped image file."""
    if (len(dataset) if done is None else len(done)) > 0:
        return
    examples = dataset.skips.examples
    first = next((examples[r] for r in examples if r in IMAGE_REASONS), None)
    if first is None:  # no image failed to load: the file itself has none to offer
        other = f" ({errors.plural(dataset.skips.total, 'record')} skipped, e.g. {next(iter(examples.values()))})" if examples else ""
        raise OccsynthError(f"set {name!r}: {dataset.ann_file} lists no images to evaluate{other}")
    if set(dataset.skips.counts) & set(IMAGE_REASONS) == {errors.OUTSIDE_ROOT}:  # absolute names: no image root helps
        raise OccsynthError(f"set {name!r}: none of its images could be read (first skipped: {first}); "
                            f"{coco_io.named_nowhere(dataset.ann_file)}")
    raise OccsynthError(f"set {name!r}: none of its images could be read (first skipped: {first}); "
                        f"check its image root, sets[{name!r}][1]/--images (now {image_root}): file names in "
                        f"{dataset.ann_file} are relative to it")
