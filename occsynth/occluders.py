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


def occluder_masks(masks: np.ndarray, occluders: Sequence[Sequence[int]]) -> np.ndarray:
    """(N, H, W) union of each instance's occluders' masks (all False when it has none)."""
    masks = np.asarray(masks, bool)
    out = np.zeros_like(masks)
    for i, idx in enumerate(occluders):
        if len(idx):
            out[i] = masks[list(idx)].any(axis=0)
    return out
