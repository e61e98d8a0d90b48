"""Training-time image transforms that move an image, its boxes and all its masks together.

A sample is ``(image, target)``: ``image`` an RGB uint8 array (H, W, 3); ``target`` a dict with
``boxes`` float32 (N, 4) xyxy in pixel-edge coordinates (a COCO box ``[x, y, w, h]`` is
``[x, y, x + w, y + h]``) and any number of (N, H, W) bool mask arrays under the keys in
:data:`MASK_KEYS`. Transforms work on numpy arrays (the dataset converts to tensors last) and
draw randomness only from the ``rng`` they are given, so a sample's augmentation is a pure
function of its seed - which is what makes resumed training exact.
"""
from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from occsynth import masks as mask_ops

MASK_KEYS = ("masks", "occluder_masks", "amodal_masks")

Sample = tuple[np.ndarray, dict]


class Compose:
    """Apply transforms in order, handing each the same random generator."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator | None = None) -> Sample:
        rng = rng if rng is not None else np.random.default_rng()
        for transform in self.transforms:
            image, target = transform(image, target, rng)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def resized_shape(height: int, width: int, short: int, long_max: int) -> tuple[int, int]:
    """(height, width) with the short side at ``short`` and the long side at most ``long_max``."""
    scale = short / min(height, width)
    if max(height, width) * scale > long_max:
        scale = long_max / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


class ResizeShortSide:
    """Resize keeping the aspect ratio: short side to ``short`` (long side capped at ``long_max``).

    ``jitter=(lo, hi)`` draws the short side uniformly from the integers lo..hi per sample
    (multi-scale training, as detectron2's ResizeShortestEdge 'range'). Images are resized
    bilinearly (area-averaged when shrinking), masks by nearest neighbour so they stay exactly
    binary, boxes by the same x and y scale factors.
    """

    def __init__(self, short: int = 600, long_max: int = 900, jitter: tuple[int, int] | None = None):
        if jitter is not None and not (0 < jitter[0] <= jitter[1]):
            raise ValueError(f"scale jitter must be (lo, hi) with 0 < lo <= hi, got {jitter!r}")
        self.short, self.long_max = int(short), int(long_max)
        self.jitter = None if jitter is None else (int(jitter[0]), int(jitter[1]))

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        short = self.short if self.jitter is None else int(rng.integers(self.jitter[0], self.jitter[1] + 1))
        height, width = image.shape[:2]
        new_h, new_w = resized_shape(height, width, short, self.long_max)
        if (new_h, new_w) == (height, width):
            return image, target
        shrinking = new_h * new_w < height * width
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        target = dict(target)
        scale = np.array([new_w / width, new_h / height, new_w / width, new_h / height], np.float32)
        target["boxes"] = (np.asarray(target["boxes"], np.float32).reshape(-1, 4) * scale).astype(np.float32)
        for key in MASK_KEYS:
            if key in target:
                target[key] = _resize_masks(target[key], (new_h, new_w))
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortSide(short={self.short}, long_max={self.long_max}, jitter={self.jitter})"


class HorizontalFlip:
    """Mirror left-right with probability ``p``; boxes map x -> width - x exactly, as the masks do."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        if self.p <= 0 or rng.random() >= self.p:
            return image, target
        width = image.shape[1]
        image = np.ascontiguousarray(image[:, ::-1])
        target = dict(target)
        boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        target["boxes"] = boxes
        for key in MASK_KEYS:
            if key in target:
                target[key] = np.ascontiguousarray(target[key][:, :, ::-1])
        return image, target

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.zeros((len(masks), *size), bool)
    for i, mask in enumerate(masks):
        out[i] = mask_ops.resize(mask, size)
    return out


def build_transforms(train: bool, short: int = 600, long_max: int = 900,
                     jitter: tuple[int, int] | None = None, flip: float = 0.5) -> Compose | None:
    """Training: resize (optionally scale-jittered) + horizontal flip. Evaluation: none.

    At evaluation the image goes to the model untouched: torchvision detectors resize inside
    (to the model's ``min_size``/``max_size``) and paste boxes and masks back at the original size.
    During training the model's own resize is switched off (see ``bcnet.train``) so the sizes
    chosen here - and the resized occluder masks, which torchvision would not resize - hold.
    """
    if not train:
        return None
    steps: list[Callable] = [ResizeShortSide(short, long_max, jitter)]
    if flip > 0:
        steps.append(HorizontalFlip(flip))
    return Compose(steps)
