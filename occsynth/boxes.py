"""Box arithmetic on COCO [x, y, w, h] boxes, vectorised over all pairs of one image."""
from __future__ import annotations

from typing import Any

import numpy as np

from .masks import finite_numbers

OVERLAP_MEASURES = ("iou", "min")


def is_box(box: Any) -> bool:
    """A COCO box: 4 finite numbers (not bools); overlap measures and occluder rules skip anything else."""
    return isinstance(box, (list, tuple)) and len(box) == 4 and finite_numbers(box)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO [x, y, w, h] boxes (any shape with 4 numbers per box) -> (N, 4) float64 [x0, y0, x1, y1]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def pairwise_overlap(boxes_xywh: np.ndarray, measure: str = "iou") -> np.ndarray:
    """(N, N) overlap of every pair of boxes; the diagonal is 0.

    ``iou``: intersection over union. ``min``: intersection over the smaller box's area
    (1.0 when one box contains the other).
    """
    if measure not in OVERLAP_MEASURES:
        raise ValueError(f"overlap measure must be one of {OVERLAP_MEASURES}, got {measure!r}")
    # finite boxes too large for float64 areas (sides of 1e200: garbage, not objects) overflow to inf and NaN:
    # their overlap is 0 (a NaN, inf / inf under "min", would reach the report as invalid JSON), without warnings
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        xyxy = xywh_to_xyxy(boxes_xywh)
        areas = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
        lt = np.maximum(xyxy[:, None, :2], xyxy[None, :, :2])
        rb = np.minimum(xyxy[:, None, 2:], xyxy[None, :, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[..., 0] * wh[..., 1]
        if measure == "iou":
            denom = areas[:, None] + areas[None, :] - inter
        else:
            denom = np.minimum(areas[:, None], areas[None, :])
        overlap = np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)
    overlap[~np.isfinite(overlap)] = 0.0
    np.fill_diagonal(overlap, 0.0)
    return overlap
