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
    with np.errstate(over="ignore", invalid="ignore"):  # see overlap_of
        xyxy = xywh_to_xyxy(boxes_xywh)
    overlap = overlap_of(xyxy[:, None, :], xyxy[None, :, :], measure)
    np.fill_diagonal(overlap, 0.0)
    return overlap


def overlap_of(a_xyxy: np.ndarray, b_xyxy: np.ndarray, measure: str = "iou") -> np.ndarray:
    """Overlap (``measure``: as :func:`pairwise_overlap`) of box a with box b, elementwise over two arrays of
    [x0, y0, x1, y1] boxes that broadcast against each other: the one formula, for the pairs of one image
    (:func:`pairwise_overlap`) and for pairs listed across many images (build-cocoocc's report), so that both give
    the same numbers to the last bit. Symmetric: (a, b) gives what (b, a) gives."""
    # finite boxes too large for float64 areas (sides of 1e200: garbage, not objects) overflow to inf and NaN:
    # their overlap is 0 (a NaN, inf / inf under "min", would reach the report as invalid JSON), without warnings
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        area_a = (a_xyxy[..., 2] - a_xyxy[..., 0]) * (a_xyxy[..., 3] - a_xyxy[..., 1])
        area_b = (b_xyxy[..., 2] - b_xyxy[..., 0]) * (b_xyxy[..., 3] - b_xyxy[..., 1])
        lt = np.maximum(a_xyxy[..., :2], b_xyxy[..., :2])
        rb = np.minimum(a_xyxy[..., 2:], b_xyxy[..., 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[..., 0] * wh[..., 1]
        if measure == "iou":
            denom = area_a + area_b - inter
        else:
            denom = np.minimum(area_a, area_b)
        overlap = np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)
    overlap[~np.isfinite(overlap)] = 0.0
    return overlap
