"""The mask branch on detected boxes, and torchvision's RoIHeads with it in place of Mask R-CNN's.

:class:`MaskBranch` is detector-agnostic: RoI-align boxes on the FPN, run one of the heads of
:mod:`bcnet.heads`, and either compute the mask losses (training, boxes matched to GT) or turn
logits into per-detection probabilities (inference). :class:`BilayerRoIHeads` runs torchvision's
box branch unchanged and the mask branch on its positive proposals / final detections; the
FCOS model (:mod:`bcnet.fcos`) uses the same branch on its own boxes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import MultiScaleRoIAlign

from .heads import BILAYER_HEADS, build_mask_head
from .losses import bilayer_mask_loss, select_class
from .targets import MASK_SIZE, balance_occluded, bilayer_targets, occluded_rois


# RoI counts the head sees on a GPU are rounded up to a multiple of this (see run_in_buckets)
ROI_BUCKET = 64


def run_in_buckets(head: nn.Module, rois: Tensor, multiple: int) -> dict[str, Tensor]:
    """``head(rois)``, the RoI count padded with zero RoIs to a multiple of ``multiple`` and cut back after.

    cuDNN builds a plan for each convolution input shape it meets, and the number of RoIs changes at
    every step. On an H200, building them for the bilayer head's 17 convolutions took a quarter of a
    train step (R50-FPN, batch 2 of 512 px: 94 ms a step, 68 ms with the count held fixed, 73 ms padded
    to multiples of 64). Each RoI's output depends on that RoI alone, unless the head normalises over
    the batch (BatchNorm in training): such a head must not be padded.
    """
    count = rois.shape[0]
    padding = -count % multiple
    if padding == 0:
        return head(rois)
    padded = torch.cat([rois, rois.new_zeros((padding, *rois.shape[1:]))])
    return {name: value[:count] for name, value in head(padded).items()}


class MaskBranch(nn.Module):
    """RoIAlign (14x14 on the FPN) + a mask head + its targets, losses and inference.

    ``occluded_ratio`` is the share of occluded RoIs the occluder loss is balanced to
    (:func:`bcnet.targets.balance_occluded`; None uses every RoI). ``generator`` draws that
    subset (global RNG when None). ``roi_bucket``: on a GPU the head runs on RoI counts rounded up
    to a multiple of it (:func:`run_in_buckets`; 1 turns it off); on a CPU padding only costs time.
    """

    def __init__(self, head_name: str, roi_pool: MultiScaleRoIAlign, head: nn.Module,
                 occluded_ratio: float | None = 0.5, generator: torch.Generator | None = None,
                 roi_bucket: int = ROI_BUCKET):
        super().__init__()
        self.head_name = head_name
        self.roi_pool = roi_pool
        self.head = head
        self.occluded_ratio = occluded_ratio
        self.generator = generator
        self.roi_bucket = roi_bucket
        self._batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in head.modules())

    def run_head(self, rois: Tensor) -> dict[str, Tensor]:
        """The head's logits for RoI features ``[R, C, 14, 14]``, in buckets of RoIs on a GPU."""
        bucketed = rois.is_cuda and not (self.training and self._batch_norm)
        return run_in_buckets(self.head, rois, self.roi_bucket if bucketed else 1)

    @property
    def bilayer(self) -> bool:
        return self.head_name in BILAYER_HEADS

    def losses(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]],
               targets: list[dict[str, Tensor]], matched_idxs: list[Tensor], labels: list[Tensor]) -> dict[str, Tensor]:
        """Raw mask losses for RoIs ``boxes`` matched to GT ``matched_idxs`` with class ``labels`` (per image)."""
        outputs = self.run_head(self.roi_pool(features, boxes, image_shapes))
        size = outputs["mask"].shape[-1]
        goals = bilayer_targets(boxes, targets, matched_idxs, size=size, occluders=self.bilayer)
        keep = None
        if self.bilayer and self.occluded_ratio is not None:
            keep = balance_occluded(occluded_rois(goals["occluder_mask"]), self.occluded_ratio, self.generator)
        all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
        return bilayer_mask_loss(outputs, goals, all_labels, keep)

    def predict(self, features: dict[str, Tensor], boxes: list[Tensor], labels: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Per image ``{'masks': [N,1,M,M]}`` (+ ``'occluder_masks'`` for bilayer heads) probabilities in the boxes."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            empty = {"masks": boxes[0].new_zeros((0, 1, MASK_SIZE, MASK_SIZE)) if boxes else None}
            if self.bilayer:
                empty["occluder_masks"] = empty["masks"]
            return [dict(empty) for _ in boxes]
        outputs = self.run_head(self.roi_pool(features, boxes, image_shapes))
        probs = {"masks": select_class(outputs["mask"], torch.cat(labels))[:, None].sigmoid()}
        if self.bilayer:
            probs["occluder_masks"] = outputs["occluder_mask"].sigmoid()
        split = {key: value.split(counts) for key, value in probs.items()}
        return [{key: split[key][i] for key in split} for i in range(len(boxes))]


def build_mask_branch(head_name: str, in_channels: int, num_classes: int, featmap_names: list[str],
                      preset: str = "paper", head_options: dict | None = None,
                      occluded_ratio: float | None = 0.5) -> MaskBranch:
    """A :class:`MaskBranch` with a 14x14 MultiScaleRoIAlign over ``featmap_names`` (as Mask R-CNN).

    torchvision's pooler, as for the boxes: ``aligned=False`` (fixed inside it), 2 samples per bin;
    the released code pools with detectron2's ROIAlignV2 (``aligned=True``, adaptive sampling).
    """
    roi_pool = MultiScaleRoIAlign(featmap_names=featmap_names, output_size=14, sampling_ratio=2)
    head = build_mask_head(head_name, in_channels, num_classes, preset, **(head_options or {}))
    return MaskBranch(head_name, roi_pool, head, occluded_ratio)


class BilayerRoIHeads(RoIHeads):
    """torchvision's box branch + a :class:`MaskBranch` on the positive proposals / detections.

    Training losses: ``loss_classifier``, ``loss_box_reg`` and the head's raw mask terms
    (``loss_mask``, ``loss_mask_boundary``, ``loss_occluder_mask``, ``loss_occluder_boundary``;
    the model weights them). Inference: per detection ``masks`` (and ``occluder_masks``) as
    ``[N, 1, 28, 28]`` probabilities, pasted into the image by the model's transform.
    """

    def __init__(self, mask_branch: MaskBranch | None, **roi_heads_kwargs):
        super().__init__(**roi_heads_kwargs)
        self.mask_branch = mask_branch

    @classmethod
    def from_roi_heads(cls, base: RoIHeads, mask_branch: MaskBranch | None) -> "BilayerRoIHeads":
        """The same box branch (modules and settings) as ``base``, plus ``mask_branch``."""
        return cls(mask_branch, box_roi_pool=base.box_roi_pool, box_head=base.box_head,
                   box_predictor=base.box_predictor, fg_iou_thresh=base.proposal_matcher.high_threshold,
                   bg_iou_thresh=base.proposal_matcher.low_threshold,
                   batch_size_per_image=base.fg_bg_sampler.batch_size_per_image,
                   positive_fraction=base.fg_bg_sampler.positive_fraction, bbox_reg_weights=base.box_coder.weights,
                   score_thresh=base.score_thresh, nms_thresh=base.nms_thresh,
                   detections_per_img=base.detections_per_img)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None):
        if targets is not None:
            for t in targets:
                if not t["boxes"].is_floating_point():
                    raise TypeError(f"target boxes must be float, got {t['boxes'].dtype}")
                if t["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be int64, got {t['labels'].dtype}")
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        result: list[dict[str, Tensor]] = []
        losses: dict[str, Tensor] = {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            if self.mask_branch is not None:
                positives = [torch.where(image_labels > 0)[0] for image_labels in labels]
                losses.update(self.mask_branch.losses(
                    features, [p[pos] for p, pos in zip(proposals, positives)], image_shapes, targets,
                    [m[pos] for m, pos in zip(matched_idxs, positives)],
                    [image_labels[pos] for image_labels, pos in zip(labels, positives)]))
        else:
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            result = [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)]
            if self.mask_branch is not None:
                for r, masks in zip(result, self.mask_branch.predict(features, boxes, labels, image_shapes)):
                    r.update(masks)
        return result, losses
