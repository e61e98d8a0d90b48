"""Who occludes whom: the two rules the project uses, one implementation each.

- Real COCO has no depth order. BCNet's rule (as in its released annotation tool): every other
  non-crowd instance whose box has IoU > 0.05 with this one's counts as a possible occluder.
- Synthetic sets know the depth order: an instance on a higher layer whose amodal mask meets
  (shares at least one pixel with) this one's amodal mask occludes it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .boxes import pairwise_overlap

BCNET_IOU_THRESHOLD = 0.05


def box_overlap_occluders(boxes_xywh: np.ndarray, iscrowd: Sequence[bool] | None = None,
                          threshold: float = BCNET_IOU_THRESHOLD) -> list[list[int]]:
    """BCNet's rule: for each instance, indices of the other non-crowd instances with box IoU > threshold.

    Crowd instances get no occluders and occlude nobody.
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    crowd = np.zeros(n, bool) if iscrowd is None else np.asarray(iscrowd, bool)
    hits = pairwise_overlap(boxes, "iou") > threshold
    hits[crowd, :] = False
    hits[:, crowd] = False
    return [np.flatnonzero(row).tolist() for row in hits]


def layer_occluders(amodal_masks: Sequence[np.ndarray], layers: Sequence[int]) -> list[list[int]]:
    """Synthetic rule: for each instance, indices of instances on higher layers whose amodal mask meets it."""
    layers = np.asarray(layers)
    result = []
    for i, mask in enumerate(amodal_masks):
        above = [j for j in np.flatnonzero(layers > layers[i]) if np.any(mask & amodal_masks[j])]
        result.append([int(j) for j in above])
    return result


def layer_occluders_boxed(boxes: Sequence[Sequence[int]], crops: Sequence[np.ndarray],
                          layers: Sequence[int]) -> list[list[int]]:
    """:func:`layer_occluders` for masks given as box (y0, x0, y1, x1) + crop (the mask inside the box).

    Only pairs whose boxes overlap are compared, and only on the overlap, so the cost follows
    the objects' sizes rather than the image's.
    """
    layers = np.asarray(layers)
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    result = []
    for i in range(len(b)):
        y0, x0, y1, x1 = b[i]
        above = np.flatnonzero((layers > layers[i]) & (b[:, 0] < y1) & (b[:, 2] > y0) & (b[:, 1] < x1) & (b[:, 3] > x0))
        hits = []
        for j in above:
            oy0, ox0 = max(y0, b[j, 0]), max(x0, b[j, 1])
            oy1, ox1 = min(y1, b[j, 2]), min(x1, b[j, 3])
            a = crops[i][oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
            c = crops[j][oy0 - b[j, 0]:oy1 - b[j, 0], ox0 - b[j, 1]:ox1 - b[j, 1]]
            if np.any(a & c):
                hits.append(int(j))
        result.append(hits)
    return result


def occluder_masks(masks: np.ndarray, occluders: Sequence[Sequence[int]]) -> np.ndarray:
    """(N, H, W) union of each instance's occluders' masks (all False when it has none)."""
    masks = np.asarray(masks, bool)
    out = np.zeros_like(masks)
    for i, idx in enumerate(occluders):
        if len(idx):
            out[i] = masks[list(idx)].any(axis=0)
    return out
