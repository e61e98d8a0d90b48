"""BCNet's loss: ``L = l1 L_det + l2 L_occluder_boundary + l3 L_occluder_mask + l4 L_occludee_boundary + l5 L_occludee_mask``.

Every mask term is a mean binary cross-entropy with logits over the RoI's M x M pixels. The
weights are explicit dicts (:data:`LOSS_PRESETS`); the model multiplies its raw losses by them
(:func:`weight_losses`) so the training loop just sums the returned dict, as with torchvision.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

# Loss-dict key of each mask term -> its weight name. Every other key is a detector loss (l1).
MASK_LOSS_KEYS = {
    "loss_occluder_boundary": "occluder_boundary",
    "loss_occluder_mask": "occluder_mask",
    "loss_mask_boundary": "occludee_boundary",
    "loss_mask": "occludee_mask",
}
WEIGHT_NAMES = ("det", "occluder_boundary", "occluder_mask", "occludee_boundary", "occludee_mask")

LOSS_PRESETS: dict[str, dict[str, float]] = {
    # The paper's l1..l5.
    "paper": {"det": 1.0, "occluder_boundary": 0.5, "occluder_mask": 0.25, "occludee_boundary": 0.5,
              "occludee_mask": 1.0},
    # The released code sums two identical BCE terms for each boundary (pytorch_toolbelt's
    # JointLoss(BceLoss(), BceLoss())), doubling the boundary weights. (Its FCOS model also weighs
    # the box regression 1.25; every detector loss here weighs "det".)
    "original": {"det": 1.0, "occluder_boundary": 1.0, "occluder_mask": 0.25, "occludee_boundary": 1.0,
                 "occludee_mask": 1.0},
}


def loss_weights(preset: str = "paper", overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The preset's weights with ``overrides`` applied (unknown names are an error, not ignored)."""
    if preset not in LOSS_PRESETS:
        raise ValueError(f"unknown loss preset {preset!r}; choose one of {sorted(LOSS_PRESETS)}")
    weights = dict(LOSS_PRESETS[preset])
    unknown = set(overrides or {}) - set(WEIGHT_NAMES)
    if unknown:
        raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; known: {list(WEIGHT_NAMES)}")
    weights.update({k: float(v) for k, v in (overrides or {}).items()})
    return weights


def weight_losses(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> dict[str, Tensor]:
    """Each raw loss times its weight: mask terms by :data:`MASK_LOSS_KEYS`, all others by ``det``."""
    return {key: value * weights[MASK_LOSS_KEYS.get(key, "det")] for key, value in losses.items()}


def total_loss(losses: Mapping[str, Tensor], weights: Mapping[str, float] | None = None) -> Tensor:
    """``L``: the sum of the losses, weighted first when ``weights`` are given."""
    if weights is not None:
        losses = weight_losses(losses, weights)
    values = list(losses.values())
    if not values:
        return torch.zeros(())
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def select_class(logits: Tensor, labels: Tensor) -> Tensor:
    """``[R, M, M]``: each RoI's channel for its class (channel 0 of class-agnostic ``[R, 1, M, M]`` logits)."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    return logits[torch.arange(len(labels), device=logits.device), labels.to(logits.device)]


def mask_bce(logits: Tensor, target: Tensor, keep: Tensor | None = None) -> Tensor:
    """Mean BCE with logits over the kept RoIs (``keep`` bool ``[R]``); 0 - still in the graph - when none."""
    if keep is not None:
        logits, target = logits[keep], target[keep]
    if target.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


def bilayer_mask_loss(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], labels: Tensor,
                      occluder_keep: Tensor | None = None) -> dict[str, Tensor]:
    """Raw (unweighted) mask losses of a head's ``outputs`` against :func:`bcnet.targets.bilayer_targets`.

    Only the terms the head predicts are returned: ``loss_mask`` always, ``loss_mask_boundary``
    with a ``'boundary'`` output, ``loss_occluder_mask`` / ``loss_occluder_boundary`` with occluder
    outputs. ``labels`` (``[R]``) pick the class channel of class-specific occludee logits;
    ``occluder_keep`` restricts the occluder terms (:func:`bcnet.targets.balance_occluded`).
    """
    losses = {"loss_mask": mask_bce(select_class(outputs["mask"], labels), targets["mask"])}
    if "boundary" in outputs:
        losses["loss_mask_boundary"] = mask_bce(select_class(outputs["boundary"], labels), targets["boundary"])
    if "occluder_mask" in outputs:
        losses["loss_occluder_mask"] = mask_bce(outputs["occluder_mask"][:, 0], targets["occluder_mask"],
                                                occluder_keep)
        losses["loss_occluder_boundary"] = mask_bce(outputs["occluder_boundary"][:, 0],
                                                    targets["occluder_boundary"], occluder_keep)
    return losses
