"""Who occludes whom: the two rules the project uses, one implementation each.

- Real COCO has no depth order. BCNet's rule (as in its released annotation tool): every other
  non-crowd instance whose box has IoU > 0.05 with this one's counts as a possible occluder. (That
  tool measures boxes with the +1 pixel convention, [x, x + w] inclusive; here boxes are continuous.
  Its crowd instances count, but their RLE masks draw as empty there, so they add no occluder pixel.)
- Synthetic sets know the depth order: an instance on a higher layer whose amodal mask meets
  (shares at least one pixel with) this one's amodal mask occludes it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .boxes import pairwise_overlap
from .masks import tight_box

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
    boxes, crops = [], []
    for mask in amodal_masks:
        box = tight_box(np.asarray(mask, bool)) or (0, 0, 0, 0)
        boxes.append(box)
        crops.append(np.asarray(mask, bool)[box[0]:box[2], box[1]:box[3]])
    return layer_occluders_boxed(boxes, crops, layers)


def layer_occluders_boxed(boxes: Sequence[Sequence[int]], crops: Sequence[np.ndarray],
                          layers: Sequence[int]) -> list[list[int]]:
    """:func:`layer_occluders` for masks given as box (y0, x0, y1, x1) + crop (the mask inside the box).

    Only pairs whose boxes overlap are compared, and only on the overlap, so the cost follows
    the objects' sizes rather than the image's.
    """
    # plain Python ints: a handful of instances, where numpy's per-call cost would dominate
    b = [tuple(int(v) for v in box) for box in boxes]
    layers = [int(v) for v in layers]
    result = []
    for i, (y0, x0, y1, x1) in enumerate(b):
        hits = []
        for j, (jy0, jx0, jy1, jx1) in enumerate(b):
            if layers[j] <= layers[i] or jy0 >= y1 or jy1 <= y0 or jx0 >= x1 or jx1 <= x0:
                continue
            oy0, ox0 = max(y0, jy0), max(x0, jx0)
            oy1, ox1 = min(y1, jy1), min(x1, jx1)
            a = crops[i][oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
            c = crops[j][oy0 - jy0:oy1 - jy0, ox0 - jx0:ox1 - jx0]
            if np.any(a & c):
                hits.append(j)
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
