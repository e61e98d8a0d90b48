"""`occsynth stats`: what a generated (or any COCO) set contains, as numbers, text and a plot image.

Per-category pasted counts (pasted = layer >= 1), instances and pastes per image, the occlusion-ratio
histogram and the layer depth. Sets without the synthetic fields count every instance as layer 0.
The plot is drawn with OpenCV (no matplotlib dependency). Large files are streamed and only the few
light fields are kept, so the counts of a 100k-image set fit in a few MB.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from .atomic import write_bytes
from .coco import encode_image, iter_array
from .errors import OccsynthError

RATIO_BINS = 10
_LIGHT = ("image_id", "category_id", "layer", "occlusion_ratio")


def dataset_stats(annotations: dict) -> dict:
    """Statistics of a COCO-layout dict (``images``, ``annotations``, ``categories``)."""
    return accumulate(annotations.get("images", []), annotations.get("annotations", []),
                      annotations.get("categories", []))


def stats_from_path(path: str | os.PathLike) -> dict:
    """Statistics of a generated set directory (its annotations.json) or a COCO JSON file, streamed."""
    path = Path(path)
    ann_path = path / "annotations.json" if path.is_dir() else path
    if not ann_path.is_file():
        raise OccsynthError(f"{ann_path}: not found - give a generated set directory or a COCO JSON file")
    light = ({k: a.get(k) for k in _LIGHT if k in a} for a in iter_array(ann_path, "annotations") if isinstance(a, dict))
    images = ({"id": im.get("id")} for im in iter_array(ann_path, "images") if isinstance(im, dict))
    return accumulate(images, light, list(iter_array(ann_path, "categories")))


def accumulate(images: Iterable[dict], anns: Iterable[dict], categories: Sequence[dict]) -> dict:
    """One pass over the records; see the module docstring for what is counted."""
    image_ids = [im.get("id") for im in images if isinstance(im, dict)]
    per_image: Counter = Counter()
    pasted_per_image: Counter = Counter()
    depth: dict = {}
    pasted: Counter = Counter()
    background: Counter = Counter()
    layers: Counter = Counter()
    ratio_counts = np.zeros(RATIO_BINS, np.int64)
    pasted_ratio_counts = np.zeros(RATIO_BINS, np.int64)
    ratio_sum, ratio_n, total = 0.0, 0, 0
    for ann in anns:
        total += 1
        layer = ann.get("layer", 0)
        layer = layer if isinstance(layer, int) and not isinstance(layer, bool) else 0
        image_id = ann.get("image_id")
        per_image[image_id] += 1
        depth[image_id] = max(depth.get(image_id, 0), layer)
        layers[layer] += 1
        if layer > 0:
            pasted[ann.get("category_id")] += 1
            pasted_per_image[image_id] += 1
        else:
            background[ann.get("category_id")] += 1
        ratio = ann.get("occlusion_ratio")
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and np.isfinite(ratio):
            b = ratio_bin(float(ratio))
            ratio_counts[b] += 1
            if layer > 0:
                pasted_ratio_counts[b] += 1
            ratio_sum += float(ratio)
            ratio_n += 1

    known = [c for c in categories if isinstance(c, dict) and "id" in c]
    known_ids = {c["id"] for c in known}
    rows = [{"id": c["id"], "name": c.get("name", str(c["id"])), "pasted": pasted.get(c["id"], 0),
             "background": background.get(c["id"], 0)} for c in known]
    for cid in sorted(set(pasted) | set(background), key=str):
        if cid not in known_ids:
            rows.append({"id": cid, "name": "(unknown)", "pasted": pasted.get(cid, 0),
                         "background": background.get(cid, 0)})
    listed = set(image_ids)
    all_ids = image_ids + [i for i in per_image if i not in listed]
    return {
        "images": len(image_ids),
        "annotations": total,
        "pasted": sum(pasted.values()),
        "background": sum(background.values()),
        "categories": rows,
        "instances_per_image": _distribution([per_image.get(i, 0) for i in all_ids]),
        "pasted_per_image": _distribution([pasted_per_image.get(i, 0) for i in all_ids]),
        "occlusion_ratio": {"bins": [round(k / RATIO_BINS, 6) for k in range(RATIO_BINS + 1)],
                            "counts": ratio_counts.tolist(), "pasted_counts": pasted_ratio_counts.tolist(),
                            "mean": ratio_sum / ratio_n if ratio_n else 0.0},
        "layers": dict(sorted(layers.items())),
        "depth_per_image": dict(sorted(Counter(depth.get(i, 0) for i in all_ids).items())),
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
    lines = [f"{stats['images']} images, {stats['annotations']} annotations "
             f"({stats['pasted']} pasted, {stats['background']} background)", "", "per category:",
             f"  {'id':>5}  {'name':<24} {'pasted':>8} {'background':>10}"]
    empty = 0
    for row in stats["categories"]:
        if row["pasted"] == 0 and row["background"] == 0:
            empty += 1
            continue
        lines.append(f"  {row['id']!s:>5}  {str(row['name'])[:24]:<24} {row['pasted']:>8} {row['background']:>10}")
    if empty:
        lines.append(f"  ({empty} categor{'y' if empty == 1 else 'ies'} without instances not shown)")
    for key, title in (("instances_per_image", "instances per image"), ("pasted_per_image", "pasted per image")):
        d = stats[key]
        hist = ", ".join(f"{k}: {v}" for k, v in d["histogram"].items())
        lines += ["", f"{title}: min {d['min']}, mean {d['mean']:.2f}, max {d['max']}", f"  {{{hist}}}"]
    r = stats["occlusion_ratio"]
    lines += ["", f"occlusion ratio (mean {r['mean']:.3f}):  bin        all   pasted"]
    for k, (n_all, n_pasted) in enumerate(zip(r["counts"], r["pasted_counts"])):
        lines.append(f"  [{r['bins'][k]:.1f}, {r['bins'][k + 1]:.1f}{']' if k == RATIO_BINS - 1 else ')'}"
                     f"  {n_all:>8} {n_pasted:>8}")
    lines += ["", "instances per layer: " + ", ".join(f"{k}: {v}" for k, v in stats["layers"].items()),
              "images by deepest layer: " + ", ".join(f"{k}: {v}" for k, v in stats["depth_per_image"].items())]
    return "\n".join(lines)


def to_json(stats: dict) -> str:
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
    panels = [
        bar_panel("pasted per category", [str(r["name"]) for r in rows], [r["pasted"] for r in rows], BAR_PASTED),
        bar_panel("instances per image", [str(k) for k in per_image], list(per_image.values()), BAR),
        bar_panel("occlusion ratio (all)", [f"{b:.1f}" for b in ratio["bins"][:-1]], ratio["counts"], BAR),
        bar_panel("instances per layer", [str(k) for k in stats["layers"]], list(stats["layers"].values()),
                  BAR_PASTED),
    ]
    return np.vstack([np.hstack(panels[:2]), np.hstack(panels[2:])])


def bar_panel(title: str, labels: Sequence[str], values: Sequence[int], colour: Sequence[int],
              size: tuple[int, int] = PANEL) -> np.ndarray:
    """One bar chart on white: bar heights proportional to the values, the tallest reaching the top line."""
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.putText(img, title, (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, INK, 1, cv2.LINE_AA)
    left, right, top, bottom = 40, w - 10, 40, h - 40
    cv2.line(img, (left, bottom), (right, bottom), INK, 1)
    cv2.line(img, (left, top), (left, bottom), INK, 1)
    vmax = max(values) if len(values) and max(values) > 0 else 0
    cv2.putText(img, str(vmax), (4, top + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, INK, 1, cv2.LINE_AA)
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
            cv2.putText(img, label[:6], (x0, bottom + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.33, INK, 1, cv2.LINE_AA)
    return img


def save_plot(image: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise OccsynthError(f"{path}: the plot is written as .png or .jpg")
    write_bytes(path, encode_image(image, path.suffix.lower()))
    return path
