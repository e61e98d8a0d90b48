"""Paste cutouts onto a background so that they occlude each other (pure: arrays in, arrays out).

Depth order is paste order: background instances are layer 0, the k-th paste is layer k + 1.
The label map ``top`` (H, W, int16) records which pasted object is nearest the camera at each
pixel (-1: none); everything else works on the objects' boxes: :func:`compose_boxed` returns
each mask as its box and crop, and only :func:`compose` expands them to full size.

Exactness (what `occsynth validate` checks):
- visible = amodal minus the union of the amodal masks on higher layers;
- the output pixels under a pasted object's visible mask are exactly its transformed cutout
  pixels: blending (feather / gaussian alpha) only touches pixels *outside* the object mask
  that no earlier pasted object covers, and later pastes only overwrite what they occlude.

Placement: the first paste goes anywhere. Paste k >= 1 is placed over an earlier pasted object
(paste 1 over paste 0: the schedule's occluder/occludee pair; later ones over a random earlier
object that can take more occlusion and that this one is large enough to bring into the range,
preferring one not yet occluded into it). It aims at an occlusion ratio drawn from
``options.occlusion`` by bisecting the shift along random directions (``max_tries`` candidate
positions in all; the good one nearest the aimed ratio along the first direction that gives
one is taken, so ratios spread over the range). A candidate is *good* when the target's ratio lands in range and no pasted
object exceeds ``max_occlusion``. When no candidate is good, every position overlapping the
target is scored at once (template correlation) and a good one is drawn from those; failing
that, the best candidate is taken: never above ``max_occlusion``, then keeping some pasted
object occluded within range, then the target's ratio nearest the range. If no position at
all keeps every object within ``max_occlusion``, the cutout is shrunk (x0.7, a few times) and,
as a last resort, left out (its instance is then missing; this needs a nearly full image).

Pixels may be in any channel order, as long as the cutouts' ('rgb') is the background's: nothing
here mixes channels. Generation composes in OpenCV's BGR order, as it decodes and encodes.
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass

import cv2
import numpy as np

from . import masks
from .errors import OccsynthError
from .occluders import layer_occluders_boxed
from .schedule import CompositeOptions

SHRINK_STEP = 0.7
MAX_SHRINKS = 6
VERIFY_CANDIDATES = 16  # exhaustive-search positions re-checked exactly


def transform_cutout(cutout: dict, image_size: tuple[int, int], options: CompositeOptions,
                     shrink: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A cutout as compose pastes it: (rgb patch (h, w, 3) uint8, mask patch (h, w) bool).

    The patch is the object's tight box with ``options.margin`` px of context on every side
    (edge-replicated where the cutout's own context is too short). Resize factor: the cutout's
    ``scale`` x ``shrink``, reduced so that the object is at most ``max_size`` of the image's
    height and width; mask by nearest neighbour, rgb bilinear; then a horizontal flip if asked.
    """
    _check_cutout(cutout, "cutout" + (f" {cutout['source']}" if cutout.get("source") else ""))
    rgb, mask = np.asarray(cutout["rgb"]), np.asarray(cutout["mask"]).astype(bool, copy=False)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[:2] != mask.shape:
        raise OccsynthError(f"cutout rgb {rgb.shape} {rgb.dtype} and mask {mask.shape} do not match")
    box = _box(mask)
    if box is None:
        raise OccsynthError(f"cutout {cutout.get('source')} has an empty mask")
    height, width = image_size
    lim_h, lim_w = max(1, int(options.max_size * height)), max(1, int(options.max_size * width))
    bh, bw = box[2] - box[0], box[3] - box[1]
    factor = min(float(cutout["scale"]) * shrink, lim_h / bh, lim_w / bw)
    ch, cw = mask.shape
    for _ in range(50):
        size = (max(1, round(ch * factor)), max(1, round(cw * factor)))
        resized = mask if size == mask.shape else masks.resize(mask, size)
        if not resized.any():  # nearest neighbour missed a thin object: keep every touched pixel
            resized = cv2.resize(mask.astype(np.float32), size[::-1], interpolation=cv2.INTER_AREA) > 0
        box = _box(resized)
        bh, bw = box[2] - box[0], box[3] - box[1]
        if bh <= lim_h and bw <= lim_w:
            break
        factor *= min(lim_h / bh, lim_w / bw) * 0.99
    if size != mask.shape:
        rgb = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_LINEAR)
    m = options.margin
    y0, x0, y1, x1 = box[0] - m, box[1] - m, box[2] + m, box[3] + m
    mask_patch = masks.crop(resized, (x0, y0, x1, y1))
    rgb_patch = crop_replicate(rgb, y0, x0, y1, x1)
    if cutout.get("flip"):  # cv2.flip: a numpy copy of a reversed view is ~30x slower for RGB
        return cv2.flip(rgb_patch, 1), cv2.flip(mask_patch.view(np.uint8), 1).view(bool)
    return np.ascontiguousarray(rgb_patch), mask_patch


def _check_cutout(cutout: dict, name: str) -> None:
    """The keys and scale :func:`transform_cutout` needs; ``name``: how messages call the cutout."""
    missing = [key for key in ("rgb", "mask", "scale") if key not in cutout]
    if missing:
        raise OccsynthError(f"{name} lacks {', '.join(map(repr, missing))} (see compose())")
    scale = cutout["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not 0 < scale < math.inf:
        raise OccsynthError(f"{name}: scale must be a finite number > 0, got {scale!r}")


def blend_alpha(mask_patch: np.ndarray, options: CompositeOptions) -> np.ndarray | None:
    """Alpha (float32) of a patch: 1 on the object, a halo outside it; None without blending."""
    if options.blend == "none" or options.blend_px <= 0:
        return None
    if options.blend == "feather":
        # distance (px) to the nearest object pixel; linear ramp that reaches 0 at blend_px + 1
        dist = cv2.distanceTransform((~mask_patch).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
        alpha = np.clip(1.0 - dist / np.float32(options.blend_px + 1.0), 0.0, 1.0).astype(np.float32)
    else:
        alpha = cv2.GaussianBlur(mask_patch.astype(np.float32), (0, 0), sigmaX=options.blend_px,
                                 borderType=cv2.BORDER_CONSTANT)
    alpha[mask_patch] = 1.0
    return alpha


def compose(background: np.ndarray, background_instances: list[dict], cutouts: list[dict],
            rng: np.random.Generator, options: CompositeOptions) -> tuple[np.ndarray, list[dict]]:
    """Paste ``cutouts`` (first = lowest layer) onto ``background``; returns (image, instances).

    Instances: background ones first (layer 0, amodal = their source mask, ``amodal_complete``
    False; those left with nothing visible are dropped), then the pasted ones (layers 1, 2, ...).
    A cutout is a dict: 'rgb' ((h, w, 3) uint8, the object with context around it), 'mask' ((h, w)
    bool, the object), 'scale' (> 0, its resize factor before the size limit), 'category_id', and
    optionally 'flip' (mirror it) and 'source' (passed on to its instance). ``rng``: a
    ``np.random.Generator`` (placement draws from it; the same one gives the same image).
    Each instance has 'category_id', 'iscrowd', 'amodal_mask', 'visible_mask' (H, W bool), 'layer',
    'occluders' (indices into the returned list), 'amodal_complete', 'source'; pasted ones also
    'paste': {'x', 'y', 'shrink'} (top-left of the object's box in the image, and the shrink
    given to :func:`transform_cutout`), which reproduces their pixels exactly. Background instances
    given undecoded ('decode_crop', see :func:`compose_boxed`) are decoded first.
    """
    eager = []
    for inst in background_instances:  # full masks for all: decode the ones given undecoded
        if "decode_crop" in inst:
            box, crop = inst["decode_crop"]()
            inst = {k: v for k, v in inst.items() if k != "decode_crop"}
            inst.update(box=box or (0, 0, 0, 0), crop=crop if box else np.zeros((0, 0), bool))
        eager.append(inst)
    image, instances = compose_boxed(background, eager, cutouts, rng, options)
    height, width = image.shape[:2]
    for inst in instances:
        y0, x0, y1, x1 = inst.pop("box")
        for key in ("amodal", "visible"):
            full = np.zeros((height, width), bool)
            full[y0:y1, x0:x1] = inst.pop(key + "_crop")
            inst[key + "_mask"] = full
    return image, instances


def compose_boxed(background: np.ndarray, background_instances: list[dict], cutouts: list[dict],
                  rng: np.random.Generator, options: CompositeOptions,
                  out: np.ndarray | None = None, encoded: bool = False) -> tuple[np.ndarray, list[dict]]:
    """:func:`compose` with every mask kept as its box and crop (the same masks, without full-size arrays).

    A background instance gives its mask either as 'mask' (H, W) or as 'box' (y0, x0, y1, x1) and
    'crop' (the mask inside the box; the mask is empty outside it). Returned instances carry 'box'
    (y0, x0, y1, x1): the amodal mask's tight box (for a background instance given by box: that
    box), and 'amodal_crop', 'visible_crop' (bool, the box's shape) instead of the full masks.

    A background instance's 'amodal_rle' (``masks.encode`` of its mask, when the caller has it) is
    passed on to its returned instance, so that :func:`generate.instance_annotation` need not encode it.

    A background instance may also come undecoded: its mask's tight 'box', 'amodal_rle', 'area' and
    'bbox' (COCO x, y, w, h) and, instead of 'crop', 'decode_crop': a function returning (box, crop)
    of its mask (any box holding the mask). It is called only when a pasted object's box meets the
    instance's box; an instance that nothing can cover is returned *encoded* (below), visible as a whole.

    An encoded instance has 'amodal_crop' and 'visible_crop' None and instead its masks as
    ``masks.encode`` writes them, with their pixel counts and COCO boxes: 'amodal_rle', 'amodal_area',
    'amodal_bbox', 'visible_rle', 'area', 'bbox'. ``encoded``: return every instance so (what
    :func:`generate.instance_annotation` writes), computed without any mask pixels but the pasted
    objects' own: each pasted mask is encoded once, and the visible masks and occluders come from
    pycocotools' run-length intersections, so a background instance is never decoded (the same masks
    and occluders as the crops give: visible = amodal minus the higher layers' amodal masks).

    ``out``: a writable array of the background's shape and dtype to compose into (and return),
    e.g. one reused per worker: a fresh image-sized copy costs more in page faults than in copying.
    """
    background = np.asarray(background)
    if background.ndim != 3 or background.shape[2] != 3 or background.dtype != np.uint8 or 0 in background.shape:
        raise OccsynthError(f"background must be an H x W x 3 uint8 image, got {background.shape} {background.dtype}")
    if not isinstance(rng, np.random.Generator):
        raise OccsynthError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}")
    if not isinstance(options, CompositeOptions):
        raise OccsynthError(f"options must be an occsynth.schedule.CompositeOptions, got {options!r:.80}")
    if not isinstance(cutouts, (list, tuple)):
        raise OccsynthError(f"cutouts must be a list of cutout dicts (see compose()), got {type(cutouts).__name__}")
    for k, cutout in enumerate(cutouts):
        if not isinstance(cutout, dict) or "category_id" not in cutout:
            raise OccsynthError(f"cutout {k} must be a dict with 'rgb', 'mask', 'scale' and 'category_id' "
                                "(see compose())")
        _check_cutout(cutout, f"cutout {k}" + (f" ({cutout['source']})" if cutout.get("source") else ""))
    height, width = background.shape[:2]
    boxed_background = [_background_crop(inst, height, width) for inst in background_instances]
    if out is None:
        image = background.copy()
    else:
        if out.shape != background.shape or out.dtype != background.dtype or not out.flags.writeable:
            raise OccsynthError(f"out {out.shape} {out.dtype} does not fit the background {background.shape}")
        image = out
        np.copyto(image, background)
    canvas = _Canvas(height, width)
    pasted = []
    for cutout in cutouts:
        for attempt in range(MAX_SHRINKS + 1):
            shrink = SHRINK_STEP ** attempt
            rgb_patch, mask_patch = transform_cutout(cutout, (height, width), options, shrink)
            obj = _Object(mask_patch, options.margin)
            position = canvas.place(obj, rng, options)
            if position is not None:
                break
        else:
            continue  # nowhere keeps every pasted object within max_occlusion: leave this one out
        y, x = position
        _paint(image, canvas.top, rgb_patch, mask_patch, obj, y, x, options)
        canvas.add(obj, y, x)
        pasted.append((cutout, obj, y, x, shrink))
    if encoded:
        return image, _encoded_instances(background_instances, boxed_background, pasted, canvas, height, width)

    instances = []
    pasted_boxes = [(y, x, y + obj.h, x + obj.w) for _, obj, y, x, _ in pasted]
    for inst, (box, amodal) in zip(background_instances, boxed_background):
        if box is None:
            continue
        if amodal is None:  # not decoded yet: only needed where a pasted object may cover it
            if not any(_boxes_meet(box, other) for other in pasted_boxes):
                instances.append(_background_instance(inst, box, amodal_crop=None, visible_crop=None,
                                                      **_visible_encoded(inst["amodal_rle"], int(inst["area"]),
                                                                         [float(v) for v in inst["bbox"]], [])))
                continue
            box, amodal = inst["decode_crop"]()
            if box is None:
                continue
        y0, x0, y1, x1 = box
        visible = amodal & (canvas.top[y0:y1, x0:x1] < 0)
        if not visible.any():
            continue
        instances.append(_background_instance(inst, box, amodal_crop=amodal, visible_crop=visible))
        if "amodal_rle" in inst:
            instances[-1]["amodal_rle"] = inst["amodal_rle"]
    for k, (cutout, obj, y, x, shrink) in enumerate(pasted):
        visible = obj.mask & (canvas.top[y:y + obj.h, x:x + obj.w] == k)
        instances.append(_pasted_instance(cutout, k, obj, y, x, shrink, amodal_crop=obj.mask, visible_crop=visible))
    occluders = layer_occluders_boxed([i["box"] for i in instances], [i["amodal_crop"] for i in instances],
                                      [i["layer"] for i in instances])
    for inst, occ in zip(instances, occluders):
        inst["occluders"] = occ
    return image, instances


# ---------------------------------------------------------------- internals


def _encoded_instances(background_instances: list[dict], boxed_background: list, pasted: list, canvas: _Canvas,
                       height: int, width: int) -> list[dict]:
    """:func:`compose_boxed`'s instances, every one encoded (see there), from the pasted objects' masks alone.

    Visible = amodal minus the amodal masks of the pasted objects above it: an intersection with their
    complements, taken only of those whose box meets the instance's box (a pasted object none of whose later
    ones is left unchanged, as the label map's visible counts tell, needs none). Occluders: the pasted
    objects above whose amodal mask meets the instance's; none when it is unoccluded (any pixel they share
    would be hidden), the one whose box meets it when it is occluded by one, else measured pair by pair.
    """
    pasted_rles = [masks.encode_crop(obj.mask, y, x, height, width) for _, obj, y, x, _ in pasted]
    pasted_boxes = [(y, x, y + obj.h, x + obj.w) for _, obj, y, x, _ in pasted]
    complements: dict[int, dict] = {}

    def above(box: tuple[int, int, int, int], first: int) -> list[int]:
        """Pasted objects from ``first`` on whose box meets ``box``."""
        return [j for j in range(first, len(pasted)) if _boxes_meet(box, pasted_boxes[j])]

    def complement(j: int) -> dict:
        if j not in complements:
            complements[j] = masks.complement_rle(pasted_rles[j])
        return complements[j]

    instances, near = [], []  # near: pasted objects above each instance whose boxes meet it
    for inst, (box, crop) in zip(background_instances, boxed_background):
        if box is None:
            continue
        if crop is None:  # undecoded: the source mask's own encoding, area and box
            rle, area, bbox = inst["amodal_rle"], int(inst["area"]), [float(v) for v in inst["bbox"]]
        else:
            y0, x0 = box[:2]
            rle = inst["amodal_rle"] if "amodal_rle" in inst else masks.encode_crop(crop, y0, x0, height, width)
            area, bbox = masks.area(crop), masks.crop_bbox(crop, y0, x0)
        over = above(box, 0)
        fields = _visible_encoded(rle, area, bbox, [complement(j) for j in over])
        if fields is None:
            continue
        instances.append(_background_instance(inst, box, amodal_crop=None, visible_crop=None, **fields))
        near.append(over)
    first_pasted = len(instances)
    for k, (cutout, obj, y, x, shrink) in enumerate(pasted):
        over = above(pasted_boxes[k], k + 1)
        hidden = [complement(j) for j in over] if canvas.visible_list[k] < obj.area else []
        fields = _visible_encoded(pasted_rles[k], obj.area, [float(x), float(y), float(obj.w), float(obj.h)], hidden)
        instances.append(_pasted_instance(cutout, k, obj, y, x, shrink, amodal_crop=None, visible_crop=None, **fields))
        near.append(over)
    for inst, over in zip(instances, near):
        if inst["area"] == inst["amodal_area"]:
            inst["occluders"] = []
        elif len(over) == 1:
            inst["occluders"] = [first_pasted + over[0]]
        else:
            inst["occluders"] = [first_pasted + j for j in over
                                 if masks.rle_intersection_area(inst["amodal_rle"], pasted_rles[j])]
    return instances


def _background_instance(inst: dict, box: tuple[int, int, int, int], **masks_fields) -> dict:
    """A background instance as :func:`compose_boxed` returns it (layer 0), with its mask fields (crops or
    encodings)."""
    return {"category_id": inst["category_id"], "iscrowd": inst.get("iscrowd", 0), "box": box, "layer": 0,
            "amodal_complete": False, "source": inst.get("source"), **masks_fields}


def _pasted_instance(cutout: dict, k: int, obj: "_Object", y: int, x: int, shrink: float, **masks_fields) -> dict:
    """The ``k``-th pasted object (layer k + 1, its box at (y, x)) as :func:`compose_boxed` returns it, with its
    mask fields (crops or encodings)."""
    return {"category_id": cutout["category_id"], "iscrowd": 0, "box": (y, x, y + obj.h, x + obj.w),
            "layer": k + 1, "amodal_complete": True, "source": cutout.get("source"),
            "paste": {"x": x, "y": y, "shrink": shrink}, **masks_fields}


def _visible_encoded(rle: dict, area: int, bbox: list[float], hidden: list[dict]) -> dict | None:
    """An encoded instance's mask fields (see :func:`compose_boxed`): amodal ``rle`` (its pixel count ``area`` and
    COCO box ``bbox``) less the masks whose complements are ``hidden``; None when nothing of it is left."""
    fields = {"amodal_rle": rle, "amodal_area": area, "amodal_bbox": bbox}
    if hidden:
        visible = masks.rle_intersection([rle, *hidden])
        visible_area = masks.rle_area(visible)
        if visible_area == 0:
            return None
        if visible_area != area:
            return {**fields, "visible_rle": {"size": list(rle["size"]), "counts": visible["counts"].decode("ascii")},
                    "area": visible_area, "bbox": masks.rle_bbox(visible)}
    return {**fields, "visible_rle": rle, "area": area, "bbox": bbox}


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (y0, x0, y1, x1) box, exclusive ends; None when empty."""
    return masks.tight_box(mask)


def _boxes_meet(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two (y0, x0, y1, x1) boxes share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _background_crop(inst: dict, height: int, width: int) -> tuple[tuple[int, int, int, int] | None, np.ndarray | None]:
    """(box (y0, x0, y1, x1), mask inside it) of a background instance; box None when its mask is empty,
    crop None when it is to be decoded only if needed ('decode_crop')."""
    if "decode_crop" in inst:
        y0, x0, y1, x1 = (int(v) for v in inst["box"])
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise OccsynthError(f"background instance {inst.get('source')} box {inst['box']} does not fit the "
                                f"image size {(height, width)}")
        return (y0, x0, y1, x1), None
    if "crop" in inst:
        y0, x0, y1, x1 = (int(v) for v in inst["box"])
        crop = np.asarray(inst["crop"]).astype(bool, copy=False)
        if not (0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width) or crop.shape != (y1 - y0, x1 - x0):
            raise OccsynthError(f"background instance {inst.get('source')} box {inst['box']} and crop "
                                f"{crop.shape} do not fit the image size {(height, width)}")
        return ((y0, x0, y1, x1) if crop.any() else None), crop
    amodal = np.asarray(inst["mask"]).astype(bool, copy=False)
    if amodal.shape != (height, width):
        raise OccsynthError(f"background instance {inst.get('source')} mask {amodal.shape} is not "
                            f"the image size {(height, width)}")
    box = _box(amodal)
    if box is None:
        return None, amodal[:0, :0]
    return box, amodal[box[0]:box[2], box[1]:box[3]]


def crop_replicate(image: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """image[y0:y1, x0:x1], edge pixels replicated where the box leaves the image."""
    h, w = image.shape[:2]
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    part = image[sy0:sy1, sx0:sx1]
    pads = (sy0 - y0, y1 - sy1, sx0 - x0, x1 - sx1)
    if any(pads):
        part = cv2.copyMakeBorder(np.ascontiguousarray(part), *pads, borderType=cv2.BORDER_REPLICATE)
    return part


@dataclass
class _Object:
    """A transformed cutout's object mask (tight box) inside its patch."""

    patch: np.ndarray
    margin: int

    def __post_init__(self) -> None:
        m = self.margin
        self.mask = self.patch[m:self.patch.shape[0] - m, m:self.patch.shape[1] - m]
        self.h, self.w = self.mask.shape
        self.area = int(np.count_nonzero(self.mask))
        self.mask_f32 = None

    def template(self) -> np.ndarray:
        if self.mask_f32 is None:
            self.mask_f32 = self.mask.astype(np.float32)
        return self.mask_f32


def _paint(image: np.ndarray, top: np.ndarray, rgb_patch: np.ndarray, mask_patch: np.ndarray, obj: _Object,
           y: int, x: int, options: CompositeOptions) -> None:
    """Object pixels copied exactly; halo blended only where no pasted object lies yet."""
    m = options.margin
    window, src = image[y:y + obj.h, x:x + obj.w], rgb_patch[m:m + obj.h, m:m + obj.w]
    # an exact copy, many times faster than np.copyto; OpenCV takes only rows stored top to bottom, each of pixels
    # one after another (an ``out`` strided along its columns, Fortran-ordered or flipped is refused by cv2)
    as_mat = window.strides[1:] == (3, 1) and window.strides[0] > 0
    written = cv2.copyTo(src, obj.mask.view(np.uint8), window) if as_mat else None
    if written is None or not np.shares_memory(written, window):  # cv2 did not write the image: do it in numpy
        np.copyto(window, src, where=obj.mask[..., None])
    if options.blend == "none" or options.blend_px <= 0:
        return
    height, width = top.shape
    py0, px0 = y - m, x - m
    sy0, sx0 = max(py0, 0), max(px0, 0)
    sy1, sx1 = min(py0 + mask_patch.shape[0], height), min(px0 + mask_patch.shape[1], width)
    inside = (slice(sy0 - py0, sy1 - py0), slice(sx0 - px0, sx1 - px0))
    free = top[sy0:sy1, sx0:sx1] < 0
    free &= ~mask_patch[inside]
    if options.blend == "feather":
        # blend_alpha's ramp, evaluated only at the halo's pixels (the same float32 arithmetic):
        # alpha > 0 needs dist < blend_px + 1, so farther pixels are dropped before any float work
        # (a pixel kept at alpha 0 by rounding is written back unchanged)
        reach = np.float32(options.blend_px + 1.0)
        dist = cv2.distanceTransform((~mask_patch).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)[inside]
        free &= dist < reach
        ys, xs = _nonzero(free)
        w = np.clip(1.0 - dist[ys, xs] / reach, 0.0, 1.0).astype(np.float32)
    else:
        a = blend_alpha(mask_patch, options)[inside]
        ys, xs = _nonzero(free)
        w = a[ys, xs]
        keep = w > 0
        if not keep.all():
            ys, xs, w = ys[keep], xs[keep], w[keep]
    if ys.size == 0:
        return
    w = w[:, None]
    if image.flags.c_contiguous and rgb_patch.flags.c_contiguous:
        # pixels by flat index (one take / one put on (n, 3) rows): ~2x faster than 2-d fancy indexing
        at = (ys + sy0) * width + (xs + sx0)
        pixels = image.reshape(-1, 3)
        src = rgb_patch.reshape(-1, 3).take((ys + (sy0 - py0)) * rgb_patch.shape[1] + (xs + (sx0 - px0)), axis=0)
        dst = pixels.take(at, axis=0)
        pixels[at] = np.clip(np.rint(w * src.astype(np.float32) + (1.0 - w) * dst.astype(np.float32)),
                             0, 255).astype(np.uint8)
        return
    src = rgb_patch[ys + (sy0 - py0), xs + (sx0 - px0)].astype(np.float32)
    dst = image[ys + sy0, xs + sx0].astype(np.float32)
    image[ys + sy0, xs + sx0] = np.clip(np.rint(w * src + (1.0 - w) * dst), 0, 255).astype(np.uint8)


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-d bool array (same order), by cv2.findNonZero: ~3x faster."""
    points = cv2.findNonZero(np.ascontiguousarray(mask).view(np.uint8))
    if points is None:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    points = points.reshape(-1, 2)
    return points[:, 1], points[:, 0]


_LABEL_MAPS = threading.local()


def _label_map(user: object, height: int, width: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A (height, width) int16 label map of -1 reused by this thread, and the list of boxes (y, x, h, w) its user
    writes labels into: they are set back to -1 on the next call (a fresh map costs more in page faults, ~50 µs
    at 640x480, than the few boxes' reset). The map is the top-left corner of one held at the largest height and
    width asked so far, so that sets of many image sizes (COCO's) reuse it too. It is ``user``'s while that object
    lives: a canvas made while the last one is still in use (a compose run by a 'decode_crop' function that
    compose_boxed calls half-way) gets a fresh map of its own."""
    last = getattr(_LABEL_MAPS, "user", None)
    if last is not None and last() is not None:
        return np.full((height, width), -1, np.int16), []
    _LABEL_MAPS.user = weakref.ref(user)
    held = getattr(_LABEL_MAPS, "held", None)
    if held is None or held[0].shape[0] < height or held[0].shape[1] < width:
        size = (height, width) if held is None else (max(height, held[0].shape[0]), max(width, held[0].shape[1]))
        held = _LABEL_MAPS.held = (np.full(size, -1, np.int16), [])
    top, written = held
    for y, x, h, w in written:
        top[y:y + h, x:x + w] = -1
    written.clear()
    return top[:height, :width], written


class _Canvas:
    """Pasted objects so far: label map of the nearest one, boxes, amodal and visible areas (the label map is
    this thread's :func:`_label_map`, or a fresh one while another canvas of this thread is in use)."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.top, self._written = _label_map(self, height, width)
        self.boxes: list[tuple[int, int, int, int]] = []  # (y, x, h, w) of each object's box
        self.amodal = np.zeros(0, np.int64)
        self.visible = np.zeros(0, np.int64)
        self.visible_list: list[int] = []
        self.amodal_list: list[int] = []

    def add(self, obj: _Object, y: int, x: int) -> None:
        k = len(self.boxes)
        covered = self._covered(obj, y, x)
        self.visible = np.append(self.visible - covered, obj.area)
        self.amodal = np.append(self.amodal, obj.area)
        self.visible_list, self.amodal_list = self.visible.tolist(), self.amodal.tolist()  # for _score
        self._written.append((y, x, obj.h, obj.w))
        self.top[y:y + obj.h, x:x + obj.w][obj.mask] = k
        self.boxes.append((y, x, obj.h, obj.w))

    def _covered(self, obj: _Object, y: int, x: int) -> np.ndarray:
        """Visible pixels of each earlier object that ``obj`` at (y, x) would hide."""
        k = len(self.boxes)
        if k <= 8:  # a few objects (the usual case): count each on the overlap of the two boxes only
            return np.array(self._covered_few(obj, y, x), np.int64)
        window = self.top[y:y + obj.h, x:x + obj.w]
        labels = window[obj.mask]
        return np.bincount(labels.astype(np.intp) + 1, minlength=k + 1)[1:k + 1]

    def _covered_few(self, obj: _Object, y: int, x: int) -> list[int]:
        """:meth:`_covered` as a list, counted on the overlap of the two boxes only (for a few objects)."""
        covered = []
        top, mask = self.top, obj.mask
        for j, (jy, jx, jh, jw) in enumerate(self.boxes):  # label j lies only inside box j
            y0, x0 = max(y, jy), max(x, jx)
            y1, x1 = min(y + obj.h, jy + jh), min(x + obj.w, jx + jw)
            if y0 < y1 and x0 < x1:
                covered.append(int(np.count_nonzero((top[y0:y1, x0:x1] == j) & mask[y0 - y:y1 - y, x0 - x:x1 - x])))
            else:
                covered.append(0)
        return covered

    # ---- placement

    def place(self, obj: _Object, rng: np.random.Generator, options: CompositeOptions) -> tuple[int, int] | None:
        """Position (y, x) of the object's box, or None if none keeps every object within max_occlusion."""
        ymax, xmax = self.height - obj.h, self.width - obj.w
        k = len(self.boxes)
        if k == 0:
            return int(rng.integers(ymax + 1)), int(rng.integers(xmax + 1))
        lo, hi = options.occlusion
        target = 0 if k == 1 else int(rng.choice(self._targets(obj, options)))
        ty, tx, th, tw = self.boxes[target]
        cy, cx = ty + th / 2 - obj.h / 2, tx + tw / 2 - obj.w / 2
        reach = math.hypot(th + obj.h, tw + obj.w) / 2 + 1
        tolerance = max((hi - lo) / 20, 0.005)
        best, best_score = None, None
        good, good_miss = None, None  # good position nearest the aimed ratio
        tries = 0
        while tries < options.max_tries and good is None:
            theta = rng.uniform(0.0, 2 * math.pi)
            aim = rng.uniform(lo, hi)
            dy, dx = math.sin(theta), math.cos(theta)
            near, far = 0.0, reach
            while tries < options.max_tries and far - near > 0.5:
                d = (near + far) / 2
                y = min(max(int(round(cy + d * dy)), 0), ymax)
                x = min(max(int(round(cx + d * dx)), 0), xmax)
                tries += 1
                score, target_ratio = self._score(obj, y, x, target, options)
                if score is None:
                    miss = abs(target_ratio - aim)
                    if miss <= tolerance:
                        return y, x
                    if good is None or miss < good_miss:
                        good, good_miss = (y, x), miss
                elif best_score is None or score < best_score:
                    best, best_score = (y, x), score
                if target_ratio > aim:
                    near = d
                else:
                    far = d
        if good is not None:
            return good
        found, score = self._search(obj, rng, options, target)
        if found is not None and (score is None or best_score is None or score < best_score):
            best, best_score = found, score
        if best is not None and (best_score is None or best_score[0] == 0):
            return best
        return self._search(obj, rng, options, None)[0]

    def _targets(self, obj: _Object, options: CompositeOptions) -> np.ndarray:
        """Earlier objects a paste may be aimed at: those that can take more occlusion and that ``obj`` can
        bring into the range (hiding all it can, its area or all that is visible of them), preferring
        those not yet occluded into the range, so that occlusion spreads over the objects.

        Aiming at an object this one cannot bring into the range (a small paste on a large object) only
        ends in the exhaustive search, and at one already in the range often too: little is left
        between its ratio and the range's top.
        """
        ratios = 1.0 - self.visible / self.amodal
        lo, hi = options.occlusion
        room = (ratios < hi) & (self.visible > 0)
        able = room & (1.0 - (self.visible - np.minimum(self.visible, obj.area)) / self.amodal >= lo)
        for pool in (able & (ratios < lo), able, room):
            if pool.any():
                return np.flatnonzero(pool)
        return np.arange(len(self.boxes))

    def _score(self, obj: _Object, y: int, x: int, target: int | None, options: CompositeOptions):
        """(None, ratio) for a good position, else ((over max?, none in range?, distance), target ratio)."""
        # plain Python floats: a handful of objects, where numpy's per-call cost would dominate
        # (int / int is the same IEEE division numpy does for these sizes)
        covered = self._covered_few(obj, y, x) if len(self.boxes) <= 8 else self._covered(obj, y, x).tolist()
        visible = [v - c for v, c in zip(self.visible_list, covered)]
        amodal = self.amodal_list
        ratios = [1.0 - v / a for v, a in zip(visible, amodal)]
        lo, hi = options.occlusion
        over = any(r > options.max_occlusion for r in ratios)
        in_range = [lo <= r <= hi and v < a for r, v, a in zip(ratios, visible, amodal)]
        if target is None:
            return (None if not over and any(in_range) else (int(over), int(not any(in_range)), 0.0)), 0.0
        r = ratios[target]
        if not over and in_range[target] and covered[target] > 0:
            return None, r
        distance = 0.0 if covered[target] > 0 and lo <= r <= hi else max(lo - r, r - hi, 1e-9)
        return (int(over), int(not any(in_range)), distance), r

    def _cover(self, obj: _Object, j: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray | None:
        """Visible pixels of object j that ``obj`` would hide, at every position (y0..y1, x0..x1) (float32,
        whole numbers from template correlation), or None when it hides none anywhere.

        Label j lies only inside box j, so only positions whose box overlaps box j are correlated
        (the rest are 0): far less work than correlating the whole region for each object.
        """
        jy, jx, jh, jw = self.boxes[j]
        py0, py1 = max(y0, jy - obj.h + 1), min(y1, jy + jh - 1)
        px0, px1 = max(x0, jx - obj.w + 1), min(x1, jx + jw - 1)
        if py0 > py1 or px0 > px1:
            return None
        layer = self.top[py0:py1 + obj.h, px0:px1 + obj.w] == j
        if not layer.any():
            return None
        part = np.rint(cv2.matchTemplate(layer.view(np.uint8).astype(np.float32), obj.template(), cv2.TM_CCORR))
        shape = (y1 - y0 + 1, x1 - x0 + 1)
        if part.shape == shape:
            return part
        cover = np.zeros(shape, np.float32)
        cover[py0 - y0:py1 - y0 + 1, px0 - x0:px1 - x0 + 1] = part
        return cover

    def _search(self, obj: _Object, rng: np.random.Generator, options: CompositeOptions,
                target: int | None) -> tuple[tuple[int, int] | None, tuple | None]:
        """Score every position at once (overlapping ``target``'s box, or anywhere when None).

        Returns (position, None) for a good one, else (best position within max_occlusion, its
        score), or (None, None) when every position tried breaks max_occlusion.

        Correlation counts come from cv2.matchTemplate (float, FFT for big objects): they only
        propose positions; each is re-scored exactly before it is taken.
        """
        ymax, xmax = self.height - obj.h, self.width - obj.w
        if target is None:
            y0, x0, y1, x1 = 0, 0, ymax, xmax
        else:
            ty, tx, th, tw = self.boxes[target]
            y0, y1 = max(0, ty - obj.h + 1), min(ymax, ty + th - 1)
            x0, x1 = max(0, tx - obj.w + 1), min(xmax, tx + tw - 1)
            if y0 > y1 or x0 > x1:
                return None, None
        shape = (y1 - y0 + 1, x1 - x0 + 1)
        k = len(self.boxes)
        lo, hi = options.occlusion
        over = np.zeros(shape, bool)
        in_range = np.zeros(shape, bool)
        target_ok = np.zeros(shape, bool)
        distance = np.ones(shape, np.float32)
        for j in range(k):
            if self.visible[j] == 0:
                continue
            cover = self._cover(obj, j, y0, x0, y1, x1)
            ratio = 1.0 - (self.visible[j] - (cover if cover is not None else 0.0)) / self.amodal[j]
            ratio = np.broadcast_to(np.asarray(ratio, np.float64), shape)
            over |= ratio > options.max_occlusion
            in_range |= (ratio >= lo) & (ratio <= hi) & (ratio > 0)
            if j == target:
                hit = cover > 0 if cover is not None else np.zeros(shape, bool)
                target_ok = hit & (ratio >= lo) & (ratio <= hi)
                distance = np.where(target_ok, 0.0, np.maximum(lo - ratio, ratio - hi)).astype(np.float32)
        good = ~over & (in_range if target is None else target_ok)
        flat_good = np.flatnonzero(good.ravel())
        picks = []
        if flat_good.size:
            picks = rng.choice(flat_good, size=min(VERIFY_CANDIDATES, flat_good.size), replace=False).tolist()
        best, best_score = None, None

        def verify(candidates):
            """Exact scores of flat candidate positions; a perfect one ends the search (returned)."""
            nonlocal best, best_score
            for p in candidates:
                y, x = y0 + p // shape[1], x0 + p % shape[1]
                score, _ = self._score(obj, y, x, target, options)
                if score is None:
                    return (int(y), int(x))
                if score[0] == 0 and (best_score is None or score < best_score):
                    best, best_score = (int(y), int(x)), score
            return None

        perfect = verify(picks)
        if perfect is not None:
            return perfect, None
        # no drawn good position held up: the best-scored feasible ones (only computed when needed)
        feasible = np.flatnonzero(~over.ravel())
        if feasible.size:
            if target is None:
                fallback = np.where(over, 2.0, 0.0) + np.where(in_range, 0.0, 1.0)
            else:
                fallback = np.where(over, 4.0, 0.0) + np.where(in_range, 0.0, 2.0) + np.minimum(distance, 1.0)
            perfect = verify(_smallest(fallback.ravel()[feasible], feasible, VERIFY_CANDIDATES))
            if perfect is not None:
                return perfect, None
        return best, best_score


def _smallest(values: np.ndarray, items: np.ndarray, n: int) -> list[int]:
    """``items[np.argsort(values, kind="stable")[:n]]`` without sorting everything: the n smallest values,
    ties in item order (a partition finds the n-th value; only those up to it are sorted)."""
    if values.size > 4 * n:
        cut = np.partition(values, n - 1)[n - 1]
        keep = np.flatnonzero(values <= cut)
        values, items = values[keep], items[keep]
    return items[np.argsort(values, kind="stable")[:n]].tolist()
