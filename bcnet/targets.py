"""Per-RoI training targets of the bilayer head, as plain tensor functions.

For each positive RoI (a proposal matched to a ground-truth instance) the head learns four
M x M maps (M = 28):

- occludee mask: the matched instance's mask (``target['masks']``) cropped to the RoI box;
- occludee boundary: the band around that mask's contour;
- occluder mask: the union of the visible masks of the instances occluding the matched one
  (``target['occluder_masks']``, made by the data layer) cropped to the same RoI box;
- occluder boundary: the band around the occluder mask's contour.

Masks are cropped with ``roi_align(aligned=True)`` and thresholded at 0.5, as detectron2's
``crop_and_resize`` on which the released BCNet builds: a boundary is only defined on a binary
mask, and with ``aligned=True`` a RoI whose box covers whole pixels samples pixel centres, so a
GT box RoI reproduces the mask exactly. The boundary is the band where the 3x3-dilated and the
3x3-eroded target differ (2 px at 28x28, one on each side of the contour), computed with max
pooling on the M x M target; the RoI edge is not a contour (a mask cut by the box has no
boundary there), as in :func:`occsynth.masks.boundary`.

Against the released code (``mask_head.py``, ``layers/boundary.py``, ``process_dataset.py``): its
occluder target is the union already cut to the occludee's annotated box by the annotation tool,
so a RoI wider than that box has no occluder outside it; here the union is not cut, the RoI sees
every occluder pixel inside it, which is what the RoI shows. Its COCO polygons are
rasterised in the RoI (``PolygonMasks.crop_and_resize``), not RoI-aligned as bitmaps (its
``BitMasks`` path, used here): they differ by edge pixels. Its boundary uses skimage's default
4-connected cross for the dilation and erosion, where this uses the 3x3 square: the bands differ
only at diagonal corners, which the square marks too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

MASK_SIZE = 28


def project_masks_on_boxes(masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int = MASK_SIZE) -> Tensor:
    """Binary ``[R, size, size]`` float crops of ``masks[matched_idxs]`` (``[N, H, W]``) in ``boxes`` (``[R, 4]`` xyxy)."""
    if boxes.numel() == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    matched_idxs = matched_idxs.to(boxes.device)
    rois = torch.cat([matched_idxs[:, None].to(boxes.dtype), boxes], dim=1)
    crops = roi_align(masks[:, None].to(device=boxes.device, dtype=boxes.dtype), rois, (size, size),
                      spatial_scale=1.0, sampling_ratio=-1, aligned=True)[:, 0]
    return (crops >= 0.5).to(torch.float32)


def mask_boundary(masks: Tensor, width: int = 1) -> Tensor:
    """Boundary band of binary masks ``[R, M, M]``: dilated and eroded mask differ (``width`` px each side).

    Dilation and erosion are ``(2*width+1)``-square max pools; max pooling pads with -inf, so the
    map edge neither dilates nor erodes the mask (the RoI edge is not a contour).
    """
    if masks.numel() == 0:
        return masks.new_zeros(masks.shape, dtype=torch.float32)
    m = masks.to(torch.float32)[:, None]
    k = 2 * width + 1
    dilated = F.max_pool2d(m, k, stride=1, padding=width)
    eroded = -F.max_pool2d(-m, k, stride=1, padding=width)
    return (dilated - eroded)[:, 0].clamp_(0, 1)


def bilayer_targets(boxes: list[Tensor], targets: list[dict[str, Tensor]], matched_idxs: list[Tensor],
                    size: int = MASK_SIZE, occluders: bool = True, boundary_width: int = 1) -> dict[str, Tensor]:
    """Targets of all positive RoIs of a batch, concatenated over images in order.

    ``boxes[i]`` (``[R_i, 4]``) are image ``i``'s positive RoIs in the coordinates of its
    ``targets[i]`` masks, ``matched_idxs[i]`` their GT indices. Returns float ``[R, size, size]``
    maps ``'mask'``, ``'boundary'`` and (when ``occluders``) ``'occluder_mask'``,
    ``'occluder_boundary'``.
    """
    keys = [("masks", "mask", "boundary")]
    if occluders:
        keys.append(("occluder_masks", "occluder_mask", "occluder_boundary"))
    out: dict[str, list[Tensor]] = {name: [] for _, mask, bound in keys for name in (mask, bound)}
    for image_boxes, target, idxs in zip(boxes, targets, matched_idxs):
        for source, mask_name, boundary_name in keys:
            if source not in target:
                raise KeyError(f"target has no {source!r} (the bilayer head needs it; see bcnet.data)")
            crops = project_masks_on_boxes(target[source], image_boxes, idxs, size)
            out[mask_name].append(crops)
            out[boundary_name].append(mask_boundary(crops, boundary_width))
    device = boxes[0].device if boxes else torch.device("cpu")
    return {name: torch.cat(parts) if parts else torch.zeros((0, size, size), device=device)
            for name, parts in out.items()}


def balance_occluded(occluded: Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Bool keep-mask over RoIs for the occluder loss: every occluded RoI plus part of the rest.

    Most RoIs have no occluder; trained on all of them the occluder layer learns to predict
    nothing. Keeping all occluded RoIs and a random subset of the others makes occluded ones
    ``ratio`` of the kept RoIs (all RoIs are kept when there are too few non-occluded ones; none
    when no RoI is occluded, as the released code). The subset is drawn with ``generator``
    (global RNG when None), so it is reproducible. The released code (``mask_rcnn_loss``) adds the
    batch's *first* RoIs instead, as many as are occluded, occluded or not (a RoI may count twice); a
    random draw of non-occluded ones keeps the ratio and does not favour the first image's RoIs.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    occluded = occluded.to(torch.bool)
    keep = occluded.clone()
    n_occluded = int(occluded.sum())
    clear = torch.nonzero(~occluded).flatten()
    n_clear = round(n_occluded * (1.0 - ratio) / ratio)
    if n_clear >= len(clear):
        keep[clear] = True
    elif n_clear > 0:
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(len(clear), generator=generator, device=device).to(clear.device)
        keep[clear[order[:n_clear]]] = True
    return keep


def occluded_rois(occluder_masks: Tensor) -> Tensor:
    """Bool ``[R]``: which RoIs have any occluder pixel in their occluder-mask target."""
    return occluder_masks.flatten(1).any(1)
