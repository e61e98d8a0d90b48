"""BCNet on FCOS (the paper's one-stage setting): FCOS boxes, RoI-aligned on its FPN, feed the mask heads.

In training the mask branch learns, as in the released FCOS BCNet (``meta_arch/fcos.py``), on FCOS's
own detections of the batch (its inference post-processing with the model's ``score_thresh``,
torchvision's 0.2 unless set - the released config keeps scores from 0.03 -, no gradient) with
box IoU >= 0.5 to a ground truth, followed by the ground-truth boxes themselves (:func:`training_rois`): the head sees
the shifted boxes it will get at inference, and every instance at least once. At inference its top
``mask_detections_per_img`` (50, as the paper) detections per image get masks and the rest are
dropped, so every returned detection has a mask. Same input/output contract as
:class:`bcnet.model.BCNetFasterRCNN`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import Tensor
from torchvision.models.detection.fcos import FCOS
from torchvision.ops import box_iou

from .losses import LOSS_PRESETS, weight_losses
from .roi_heads import MaskBranch


MASK_IOU_THRESHOLD = 0.5  # a detection trains the mask branch from this box IoU with a ground truth


def training_rois(detected: list[Tensor], gt_boxes: list[Tensor],
                  iou_threshold: float = MASK_IOU_THRESHOLD) -> tuple[list[Tensor], list[Tensor]]:
    """Per image, the mask branch's training RoIs and the ground truth each one learns.

    RoIs are the ``detected`` boxes with IoU >= ``iou_threshold`` to a ground truth (matched to the one
    they overlap most), then the ground-truth boxes, each matched to itself: matched by IoU, a duplicate
    box would learn the first one's mask and its own instance would never train. No ground truth, no RoI.
    """
    boxes, matched = [], []
    for found, gt in zip(detected, gt_boxes):
        own = torch.arange(len(gt), device=gt.device)
        found, index = found.to(gt), own[:0]
        if len(gt) and len(found):
            best, index = box_iou(gt, found).max(dim=0)
            keep = best >= iou_threshold
            found, index = found[keep], index[keep]
        else:
            found = gt.new_zeros((0, 4))
        boxes.append(torch.cat([found, gt]))
        matched.append(torch.cat([index, own]))
    return boxes, matched


class BCNetFCOS(FCOS):
    """torchvision FCOS + a :class:`bcnet.roi_heads.MaskBranch` (None: FCOS alone, boxes only)."""

    def __init__(self, backbone, num_classes: int, *, mask_branch: MaskBranch | None = None,
                 loss_weights: Mapping[str, float] | None = None, mask_detections_per_img: int = 50,
                 **kwargs: Any):
        super().__init__(backbone, num_classes, **kwargs)
        from .model import BilayerTransform  # model imports this module lazily; no cycle at import time

        self.transform = BilayerTransform.like(self.transform)
        self.mask_branch = mask_branch
        self.loss_weights = dict(loss_weights or LOSS_PRESETS["paper"])
        self.mask_detections_per_img = mask_detections_per_img
        self.return_occluder_masks = True

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        from .model import paste_extra_masks

        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        images, targets = self.transform(images, targets)
        if targets is not None:
            for i, target in enumerate(targets):
                boxes = target["boxes"]
                if boxes.ndim != 2 or boxes.shape[-1] != 4:
                    raise ValueError(f"target boxes must be [N, 4], got {tuple(boxes.shape)}")
                if (boxes[:, 2:] <= boxes[:, :2]).any():
                    raise ValueError(f"target {i} has a box with no width or height")
        features = self.backbone(images.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        levels = list(features.values())
        head_outputs = self.head(levels)
        anchors = self.anchor_generator(images, levels)
        num_anchors_per_level = [x.size(2) * x.size(3) for x in levels]

        split_outputs = {k: list(v.split(num_anchors_per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(num_anchors_per_level)) for a in anchors]
        if self.training:
            losses = self.compute_loss(targets, head_outputs, anchors, num_anchors_per_level)
            if self.mask_branch is not None:
                with torch.no_grad():
                    detected = self.postprocess_detections(split_outputs, split_anchors, images.image_sizes)
                boxes, matched = training_rois([d["boxes"] for d in detected], [t["boxes"] for t in targets])
                labels = [t["labels"][m] for t, m in zip(targets, matched)]
                losses.update(self.mask_branch.losses(features, boxes, images.image_sizes, targets, matched, labels))
            return weight_losses(losses, self.loss_weights)

        detections = self.postprocess_detections(split_outputs, split_anchors, images.image_sizes)
        if self.mask_branch is not None:
            n = self.mask_detections_per_img
            detections = [{k: v[:n] for k, v in det.items()} for det in detections]  # sorted by score
            predicted = self.mask_branch.predict(features, [d["boxes"] for d in detections],
                                                 [d["labels"] for d in detections], images.image_sizes)
            for det, masks in zip(detections, predicted):
                det.update(masks)
        detections = self.transform.postprocess(detections, images.image_sizes, original_sizes)
        return paste_extra_masks(detections, original_sizes, keep=self.return_occluder_masks)
