"""`occsynth stats`: what a generated (or any COCO) set contains, as numbers, text and a plot image.

Per-category pasted counts (pasted = layer >= 1 and amodal_complete, as generate writes a paste), instances and
pastes per image, the occlusion-ratio histogram and the layer depth. Sets without the synthetic fields count every
instance as layer 0; a converted amodal set's layers are its depth order, and nothing in it is pasted.
The plot is drawn with OpenCV (no matplotlib dependency). The annotations of large files are streamed and only
the few light fields are kept, so the counts of a 100k-image set fit in a few MB (beside its image records, read
whole: COCO train's 118k take about 60 MB while they are counted).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import errors
from .coco import COCO_LISTS, brief, duplicate_detail, id_detail, iter_array, read_array, record_name
from .errors import BadRecord, OccsynthError, SkipLog, plural, reason_lines
from .masks import finite_number
from .writer import set_paths

RATIO_BINS = 10
_LIGHT = ("id", "image_id", "category_id", "layer", "occlusion_ratio", "amodal_complete")  # id: to name a skipped one


def dataset_stats(annotations: dict) -> dict:
    """Statistics of a COCO-layout dict (``images``, ``annotations``, ``categories``)."""
    if not isinstance(annotations, dict) or not all(isinstance(annotations.get(k), list) for k in COCO_LISTS):
        raise OccsynthError("not a COCO instances dataset (needs 'images', 'annotations' and 'categories' lists)")
    return accumulate(annotations["images"], annotations["annotations"], annotations["categories"])


PROGRESS_DELAY = 1.0  # seconds of reading before a progress bar shows: none flashes up for a small file


def stats_from_path(path: str | os.PathLike, progress: bool = True) -> dict:
    """Statistics of a generated set directory (its annotations.json) or a COCO JSON file, streamed.

    Refuses a file that is not a COCO instances file (top-level object with the three lists, see
    :func:`iter_array`): streaming alone would read such a file as an empty set. The lists are read in
    COCO order, so the first one that is missing or no list is the one named. ``progress``: records read, on
    stderr, once reading has taken :data:`PROGRESS_DELAY` (a large file).
    """
    ann_path, _ = set_paths(path)
    with tqdm(desc=f"stats {ann_path.name}", unit=" records", disable=not progress,
              delay=PROGRESS_DELAY) as bar:

        def light(items: Iterable, fields: tuple) -> Iterator:
            for item in items:
                bar.update()
                yield {k: item.get(k) for k in fields if k in item} if isinstance(item, dict) else item

        # only the annotations are streamed: the parser that streams an array's items reads to the end of the file
        # (7 s of a COCO-train-size file for its images); read_array stops at the end of its array
        def array(key: str) -> Iterator:  # read when its turn comes: the first list missing is the one named
            yield from read_array(ann_path, key)

        return accumulate(light(array("images"), ("id",)), light(iter_array(ann_path, "annotations"), _LIGHT),
                          array("categories"))


def accumulate(images: Iterable[dict], anns: Iterable[dict], categories: Iterable[dict]) -> dict:
    """One pass over the records (images, annotations, then categories); see the module docstring for what
    is counted.

    Skipped and counted in ``skipped`` (by reason, with an example): image records that are no
    object or have no id, repeated image ids, annotations that are no object, annotations whose
    occlusion_ratio is there but no number in [0, 1], annotations whose layer is there but no integer (every
    layer statistic, pasted or background included, depends on it), and (when there is an image table)
    annotations of unknown images, and later records of a category id (the first names the row). Unknown
    categories are counted under ``(unknown)``.
    """
    skips = SkipLog()
    image_ids, listed = [], set()
    for im in images:
        image_id = im.get("id") if isinstance(im, dict) else None
        if image_id is None or isinstance(image_id, (dict, list)):
            skips.skip(BadRecord(errors.MALFORMED_RECORD, record_name("image", im), "no 'id'"))
        elif image_id in listed:
            skips.skip(BadRecord(errors.DUPLICATE_ID, record_name("image", im)))
        else:
            listed.add(image_id)
            image_ids.append(image_id)
    check_image = bool(listed)
    per_image: Counter = Counter()
    pasted_per_image: Counter = Counter()
    depth: dict = {}
    pasted: Counter = Counter()
    background: Counter = Counter()
    layers: Counter = Counter()
    ratio_counts = np.zeros(RATIO_BINS, np.int64)
    pasted_ratio_counts = np.zeros(RATIO_BINS, np.int64)
    ratio_sum, ratio_n, total, with_layer = 0.0, 0, 0, 0
    for ann in anns:
        if not isinstance(ann, dict):
            skips.skip(BadRecord(errors.MALFORMED_RECORD, f"annotation {str(ann)[:60]}", "not an object"))
            continue
        image_id = ann.get("image_id")
        if check_image and (isinstance(image_id, (dict, list)) or image_id not in listed):
            skips.skip(BadRecord(errors.UNKNOWN_IMAGE, f"annotation {str(ann.get('id', '?'))[:40]}",
                                 id_detail("image_id", image_id)))
            continue
        ratio = ann.get("occlusion_ratio")
        if "occlusion_ratio" in ann and not finite_number(ratio):  # else the histogram would leave it out unseen
            skips.skip(BadRecord(errors.MALFORMED_RECORD, f"annotation {str(ann.get('id', '?'))[:40]}",
                                 f"occlusion_ratio {brief(ratio, 40)} is not a number"))
            continue
        if "occlusion_ratio" in ann and not 0 <= ratio <= 1:  # else binned at an end, and the mean off
            skips.skip(BadRecord(errors.MALFORMED_RECORD, f"annotation {str(ann.get('id', '?'))[:40]}",
                                 f"occlusion_ratio {brief(ratio, 40)} is outside [0, 1]"))
            continue
        layer = ann.get("layer", 0)
        if not isinstance(layer, int) or isinstance(layer, bool):  # counted as layer 0 it would read as background
            skips.skip(BadRecord(errors.MALFORMED_RECORD, f"annotation {str(ann.get('id', '?'))[:40]}",
                                 f"layer {brief(layer, 40)} is not an integer"))
            continue
        total += 1
        with_layer += "layer" in ann
        per_image[image_id] += 1
        depth[image_id] = max(depth.get(image_id, 0), layer)
        layers[layer] += 1
        category = ann.get("category_id")
        category = category if not isinstance(category, (dict, list)) else str(category)
        is_pasted = layer > 0 and ann.get("amodal_complete") is True  # a COCOA region's layer is its depth order
        if is_pasted:
            pasted[category] += 1
            pasted_per_image[image_id] += 1
        else:
            background[category] += 1
        if "occlusion_ratio" in ann:
            b = ratio_bin(float(ratio))
            ratio_counts[b] += 1
            if is_pasted:
                pasted_ratio_counts[b] += 1
            ratio_sum += float(ratio)
            ratio_n += 1

    known, known_ids = [], set()
    for c in categories:
        if not (isinstance(c, dict) and "id" in c and not isinstance(c["id"], (dict, list))):
            continue
        if c["id"] in known_ids:  # one row per id: the first record's, as every loader takes it
            skips.skip(BadRecord(errors.DUPLICATE_ID, record_name("category", c), duplicate_detail(skips)))
            continue
        known.append(c)
        known_ids.add(c["id"])
    rows = [{"id": c["id"], "name": c.get("name", str(c["id"])), "pasted": pasted.get(c["id"], 0),
             "background": background.get(c["id"], 0)} for c in known]
    for cid in sorted(set(pasted) | set(background), key=str):
        if cid not in known_ids:
            rows.append({"id": cid, "name": "(unknown)", "pasted": pasted.get(cid, 0),
                         "background": background.get(cid, 0)})
    all_ids = image_ids + [i for i in per_image if i not in listed]
    return {
        "images": len(image_ids),
        "annotations": total,
        "pasted": sum(pasted.values()),
        "background": sum(background.values()),
        "with_layer": with_layer,
        "categories": rows,
        "instances_per_image": _distribution([per_image.get(i, 0) for i in all_ids]),
        "pasted_per_image": _distribution([pasted_per_image.get(i, 0) for i in all_ids]),
        "occlusion_ratio": {"bins": [round(k / RATIO_BINS, 6) for k in range(RATIO_BINS + 1)],
                            "counts": ratio_counts.tolist(), "pasted_counts": pasted_ratio_counts.tolist(),
                            "mean": ratio_sum / ratio_n if ratio_n else None, "annotations": ratio_n},
        "layers": dict(sorted(layers.items())),
        "depth_per_image": dict(sorted(Counter(depth.get(i, 0) for i in all_ids).items())),
        "skipped": skips.to_dict(),
    }


def ratio_bin(ratio: float) -> int:
    """Histogram bin of an occlusion ratio: [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0] (1.0 in the last bin)."""
    return int(min(max(np.floor(ratio * RATIO_BINS + 1e-9), 0), RATIO_BINS - 1))


def _distribution(values: list[int]) -> dict:
    if not values:
        return {"histogram": {}, "mean": 0.0, "min": 0, "max": 0}
    return {"histogram": dict(sorted(Counter(values).items())), "mean": sum(values) / len(values),
            "min": min(values), "max": max(values)}


def format_stats(stats: dict) -> str:
    """The statistics as a plain-text report."""
    lines = [f"{plural(stats['images'], 'image')}, {plural(stats['annotations'], 'annotation')} "
             f"({stats['pasted']} pasted, {stats['background']} background)"]
    if stats["annotations"] and not stats.get("with_layer", stats["annotations"]):
        lines.append("(no annotation has a 'layer': not a generated synthetic set, so every instance counts as "
                     "background)")
    elif stats["pasted"] == 0 and any(int(k) > 0 for k in stats["layers"]):
        lines.append("(layers without pastes: a converted amodal set, whose layer is its depth order; every instance "
                     "counts as background)")
    lines += ["", "per category:",
             f"  {'id':>5}  {'name':<24} {'pasted':>8} {'background':>10}"]
    empty = 0
    for row in stats["categories"]:
        if row["pasted"] == 0 and row["background"] == 0:
            empty += 1
            continue
        lines.append(f"  {row['id']!s:>5}  {str(row['name'])[:24]:<24} {row['pasted']:>8} {row['background']:>10}")
    if empty:
        lines.append(f"  ({plural(empty, 'category', 'categories')} without instances not shown)")
    for key, title in (("instances_per_image", "instances per image"), ("pasted_per_image", "pasted per image")):
        d = stats[key]
        if not stats["images"]:  # no made-up min, mean and max of 0 over no images
            lines += ["", f"{title}: no images"]
            continue
        hist = ", ".join(f"{k}: {v}" for k, v in d["histogram"].items())
        lines += ["", f"{title}: min {d['min']}, mean {d['mean']:.2f}, max {d['max']}", f"  {{{hist}}}"]
    r = stats["occlusion_ratio"]
    if not stats["annotations"]:  # an empty set may well be a generated one: say only what is known
        lines += ["", "occlusion ratio: no annotations"]
    elif r["mean"] is None:  # a plain COCO file: no ratio to show, and no made-up mean of 0
        lines += ["", "occlusion ratio: no annotation has one (not an occsynth or converted amodal set)"]
    else:
        lines += ["", f"occlusion ratio: mean {r['mean']:.3f} over {plural(r['annotations'], 'annotation')}",
                  f"  {'bin':<10}  {'all':>8} {'pasted':>8}"]
        for k, (n_all, n_pasted) in enumerate(zip(r["counts"], r["pasted_counts"])):
            lines.append(f"  [{r['bins'][k]:.1f}, {r['bins'][k + 1]:.1f}{']' if k == RATIO_BINS - 1 else ')'}"
                         f"  {n_all:>8} {n_pasted:>8}")
    lines += ["", "instances per layer: " + (", ".join(f"{k}: {v}" for k, v in stats["layers"].items()) or "none"),
              "images by deepest layer: " + (", ".join(f"{k}: {v}" for k, v in stats["depth_per_image"].items())
                                             or "none")]
    skipped = stats.get("skipped", {}).get("counts", {})
    if skipped:
        lines += ["", f"skipped {plural(sum(skipped.values()), 'record')}, not counted above:"]
        lines += reason_lines(stats["skipped"])
    return "\n".join(lines)


def to_json(stats: dict) -> str:
    """:func:`dataset_stats` output as indented JSON (category ids that are no JSON keys become strings)."""
    return json.dumps(stats, indent=2, default=str)


# ---------------------------------------------------------------- plot (OpenCV)

PANEL = (300, 460)  # (height, width) of one of the four panels
BAR = (70, 130, 220)
BAR_PASTED = (230, 120, 40)
INK = (30, 30, 30)


def plot_stats(stats: dict) -> np.ndarray:
    """2 x 2 panels (RGB uint8): pasted per category, instances per image, occlusion ratio, layers."""
    ratio = stats["occlusion_ratio"]
    per_image = stats["instances_per_image"]["histogram"]
    if per_image and max(per_image) - min(per_image) <= 60:  # a continuous axis, empty counts shown as gaps
        per_image = {k: per_image.get(k, 0) for k in range(min(per_image), max(per_image) + 1)}
    rows = [r for r in stats["categories"] if r["pasted"] or r["background"]]
    # what an empty panel says (the text report says the same): plain COCO has no pastes, ratios or layers
    not_generated = " (not a generated set)" if stats["annotations"] and not stats["pasted"] else ""
    panels = [
        bar_panel("pasted per category", [str(r["name"]) for r in rows], [r["pasted"] for r in rows], BAR_PASTED,
                  empty="no pasted instances" + not_generated),
        bar_panel("instances per image", [str(k) for k in per_image], list(per_image.values()), BAR,
                  empty="no images" if not stats["images"] else "no annotations"),
        bar_panel("occlusion ratio (all)", [f"{b:.1f}" for b in ratio["bins"][:-1]], ratio["counts"], BAR,
                  empty="no annotation has an occlusion ratio"),
        bar_panel("instances per layer", [str(k) for k in stats["layers"]], list(stats["layers"].values()),
                  BAR_PASTED, empty="no annotation has a layer"),
    ]
    return np.vstack([np.hstack(panels[:2]), np.hstack(panels[2:])])


AXIS_LEFT = 46  # x of the y axis: room for a 5-character count left of it
LABEL_GAP = 6  # px between a y-axis label and its 3 px tick mark, so that they never touch
AXIS_FONT = (cv2.FONT_HERSHEY_PLAIN, 0.8)  # crisp at this size (SIMPLEX at 0.35 smears its strokes together)


def bar_panel(title: str, labels: Sequence[str], values: Sequence[int], colour: Sequence[int],
              size: tuple[int, int] = PANEL, empty: str = "nothing to show") -> np.ndarray:
    """One bar chart on white: bar heights proportional to the values, the tallest reaching the top line.

    The y axis is labelled once at each end (0 and the maximum), right-aligned in the margin left of
    the axis, so a long number never runs into the axis or the bars. ``empty``: written across the plot
    when no value is above 0, so that a blank panel says why.
    """
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.putText(img, title, (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, INK, 1, cv2.LINE_AA)
    left, right, top, bottom = AXIS_LEFT, w - 10, 40, h - 40
    cv2.line(img, (left, bottom), (right, bottom), INK, 1)
    cv2.line(img, (left, top), (left, bottom), INK, 1)
    vmax = max(values) if len(values) and max(values) > 0 else 0
    if vmax:
        cv2.line(img, (left - 3, top), (left, top), INK, 1)
        _axis_label(img, _short_number(vmax), left - 3 - LABEL_GAP, top)
    _axis_label(img, "0", left - 3 - LABEL_GAP, bottom)
    if not vmax:
        font, scale = AXIS_FONT
        (tw, _), _ = cv2.getTextSize(empty, font, scale, 1)
        cv2.putText(img, empty, (max(left + 4, (left + right - tw) // 2), (top + bottom) // 2), font, scale, INK, 1,
                    cv2.LINE_AA)
    if not len(values):
        return img
    slot = (right - left - 1) / len(values)
    label_every = max(1, int(np.ceil(len(values) * 40 / (right - left))))
    for k, (label, value) in enumerate(zip(labels, values)):
        x0 = left + 1 + int(round(k * slot + slot * 0.15))
        x1 = left + 1 + int(round((k + 1) * slot - slot * 0.15)) - 1
        if vmax and value > 0:
            y = bottom - 1 - int(round((bottom - 1 - top) * value / vmax))
            cv2.rectangle(img, (x0, y), (max(x0, x1), bottom - 1), colour, -1)
        if k % label_every == 0:
            font, scale = AXIS_FONT
            cv2.putText(img, label[:6], (x0, bottom + 16), font, scale, INK, 1, cv2.LINE_AA)
    return img


def _short_number(value: int) -> str:
    """A count in at most 5 characters: 999, 12345, 1.2M."""
    if value < 100_000:
        return str(value)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= div:
            text = f"{value / div:.1f}".rstrip("0").rstrip(".")
            return (text if len(text) <= 3 else f"{value / div:.0f}") + suffix
    return str(value)


def _axis_label(img: np.ndarray, text: str, x_right: int, y_centre: int) -> None:
    """Text right-aligned at ``x_right``, vertically centred on ``y_centre``, shrunk to fit left of it."""
    font, scale = AXIS_FONT
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    if tw > x_right - 2:
        scale *= (x_right - 2) / tw
        (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    cv2.putText(img, text, (x_right - tw, y_centre + th // 2), font, scale, INK, 1, cv2.LINE_AA)
