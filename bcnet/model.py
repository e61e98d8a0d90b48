"""BCNet models: torchvision Faster R-CNN (or FCOS) + one of the mask heads of :mod:`bcnet.heads`.

torchvision semantics: ``model(images, targets)`` in train mode returns a dict of losses, already
multiplied by their weights (:mod:`bcnet.losses`) so the loop sums them; ``model(images)`` in
eval mode returns per image ``{'boxes', 'labels', 'scores', 'masks'}`` (+ ``'occluder_masks'``
for bilayer heads), masks ``[N, 1, H, W]`` probabilities pasted into the input image.
Nothing is ever downloaded: backbone weights come from a local file or not at all.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import zipfile
from functools import partial
from collections import OrderedDict
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18, resnet50
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.fcos import FCOS, FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from occsynth.errors import OccsynthError, did_you_mean, plural, whole_number
from occsynth.masks import finite_number

from .checkpoint import damaged_member
from .heads import MASK_HEADS, PRESETS
from .losses import LOSS_PRESETS, loss_weights as make_loss_weights, weight_losses
from .roi_heads import BilayerRoIHeads, build_mask_branch

DETECTORS = ("faster-rcnn", "fcos")
BACKBONES = ("resnet50", "resnet18", "tiny")
EXTRA_MASK_KEYS = ("occluder_masks", "amodal_masks")  # resized with the image, like 'masks'
TINY_CHANNELS = (16, 32, 64)
TINY_FPN_CHANNELS = 32


class ModelConfigError(OccsynthError, ValueError):
    """A bad model setting or backbone weights file: an :class:`OccsynthError` (the CLI prints one
    line, exit 2) that is also a ``ValueError`` for library callers that catch that."""


class CheckpointAsBackboneWeights(ModelConfigError):
    """Backbone weights that are a bcnet training checkpoint. The message says how to start from one as
    :func:`bcnet.train.train` does (``init_checkpoint/--init``); a caller offering another way (the pipeline, which
    has none) says its own in place of that clause (:func:`bcnet.pipeline.said_as_given`)."""

    def __init__(self, where: str, expected: str, start_from: str = "use init_checkpoint/--init to start from it"):
        super().__init__(f"{where}: this is a bcnet training checkpoint, not backbone weights ({start_from}); "
                         f"expected {expected}")


def model_choices() -> dict[str, tuple]:
    """Allowed values of each named model setting (``mask_head`` may also be None: detector only)."""
    return {"detector": DETECTORS, "mask_head": (*MASK_HEADS, None), "backbone": BACKBONES,
            "head_preset": tuple(PRESETS)}


def check_model_names(detector: str, mask_head: str | None, backbone: str, head_preset: str) -> None:
    """Refuse names :func:`build_model` does not know, listing the allowed ones (cheap: builds nothing)."""
    values = {"detector": detector, "mask_head": mask_head, "backbone": backbone, "head_preset": head_preset}
    for key, allowed in model_choices().items():
        if values[key] not in allowed:
            names = ", ".join(a for a in allowed if a is not None)
            raise ModelConfigError(f"unknown {key.replace('_', ' ')} {values[key]!r}; choose one of {names}")


def check_model_settings(detector: str, names: Iterable[str]) -> None:
    """Refuse a name among ``names`` (settings beyond :func:`build_model`'s own) that torchvision's detector class
    and its transform do not take either: they accept any keyword and drop those they do not know, so a misspelt
    setting (a checkpoint's model_config, a caller's) built another model than the one asked for, without a word."""
    from .fcos import BCNetFCOS

    ours, theirs = (BCNetFasterRCNN, FasterRCNN) if detector == "faster-rcnn" else (BCNetFCOS, FCOS)

    def keywords(function, leave_out=()) -> list[str]:
        return [name for name, p in inspect.signature(function).parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("self", *leave_out)]

    own = keywords(build_model)
    set_here = ("backbone", "mask_branch", "loss_weights", *own)  # build_model passes these itself
    own += keywords(ours.__init__, set_here)  # FCOS' mask_detections_per_img
    passed_on = keywords(theirs.__init__, set_here) + keywords(GeneralizedRCNNTransform.__init__, set_here)
    for name in names:
        if name not in own + passed_on:
            raise ModelConfigError(f"unknown model setting {name!r}{did_you_mean(name, own + passed_on)}; bcnet's "
                                   f"settings: {', '.join(own)}, and torchvision's {theirs.__name__} keyword "
                                   "arguments, passed on to it")


def load_backbone_weights(body: nn.Module, name: str, weights: str | os.PathLike) -> None:
    """Load a local torchvision ResNet classification state dict into ``body`` (its ``fc`` may differ).

    Only tensors are read (``weights_only=True``). Every failure is one :class:`ModelConfigError`
    naming the file and what it should be, never a torch traceback.
    """
    expected = (f"a torchvision {name} state dict (e.g. from torchvision.models.{name}(weights=...).state_dict(), "
                "saved with torch.save)")
    where = f"backbone weights {os.fspath(weights)}"
    if not os.path.isfile(weights):
        raise ModelConfigError(f"{where}: no such file (expected {expected})")
    damaged = damaged_member(weights) if zipfile.is_zipfile(weights) else None
    if damaged:  # torch would load it without a word, and training would start from wrong weights
        raise ModelConfigError(f"{where}: damaged file ({damaged}); it changed after it was written (a bad download "
                               f"or copy): fetch it again; expected {expected}")
    try:
        state = torch.load(os.fspath(weights), map_location="cpu", weights_only=True)
    except Exception:  # unpickling, zip and I/O errors all mean the same thing to the user
        raise ModelConfigError(f"{where}: not a file torch.load(weights_only=True) can read; "
                               f"expected {expected}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "iteration" in state:
        raise CheckpointAsBackboneWeights(where, expected)
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ModelConfigError(f"{where}: does not hold a state dict (names -> tensors); expected {expected}")
    own = body.state_dict()
    wrong = [k for k, v in state.items() if k in own and not k.startswith("fc.") and v.shape != own[k].shape]
    if wrong:  # e.g. resnet18 weights for a resnet50: the same names, other shapes
        shapes = "tensor has a shape that does" if len(wrong) == 1 else "tensors have shapes that do"
        raise ModelConfigError(f"{where}: {len(wrong)} {shapes} not fit a {name} (e.g. "
                               f"{wrong[0]} {list(state[wrong[0]].shape)}, needs {list(own[wrong[0]].shape)}); "
                               f"expected {expected}")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier may have any size
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    unexpected = [k for k in unexpected if not k.startswith("fc.")]
    if missing or unexpected:
        raise ModelConfigError(f"{where}: not a {name} state dict ({plural(len(missing), 'missing key')} e.g. {missing[:3]}, "
                               f"{len(unexpected)} unexpected e.g. {unexpected[:3]}); expected {expected}")


class BilayerTransform(GeneralizedRCNNTransform):
    """torchvision's transform that also resizes the targets' ``occluder_masks`` (it resizes only ``masks``), and
    pastes masks into the image on the grid they were cut on (:func:`paste_masks`)."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        # every mask is resized here, on pixel centres ("nearest-exact") as the image is: torchvision's "nearest"
        # samples corners, half a pixel off the image and the boxes (bcnet's own pipeline resizes before, alike)
        masks = {k: target.pop(k) for k in ("masks", *EXTRA_MASK_KEYS) if k in target} if target is not None else {}
        image, target = super().resize(image, target)
        for key, mask in masks.items():
            target[key] = F.interpolate(mask[:, None].float(), size=image.shape[-2:], mode="nearest-exact")[:, 0].byte()
        return image, target

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """torchvision's, the boxes scaled back to the original size, but ``masks`` pasted by :func:`paste_masks`."""
        if self.training:
            return result
        probabilities = [det.pop("masks", None) for det in result]
        result = super().postprocess(result, image_shapes, original_image_sizes)
        for det, masks, size in zip(result, probabilities, original_image_sizes):
            if masks is not None:
                det["masks"] = paste_masks(masks, det["boxes"], size)
        return result

    @classmethod
    def like(cls, other: GeneralizedRCNNTransform) -> "BilayerTransform":
        return cls(other.min_size, other.max_size, other.image_mean, other.image_std,
                   size_divisible=other.size_divisible, fixed_size=other.fixed_size,
                   _skip_resize=other._skip_resize)


def paste_masks(masks: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``[N, 1, M, M]`` RoI probabilities pasted into an image of ``size`` (H, W): ``[N, 1, H, W]``.

    Each image pixel whose centre lies in the box samples the mask at that centre, on the grid the training target
    was cut on (``roi_align(aligned=True)``, :mod:`bcnet.targets`), as detectron2 pastes; past the outermost bins'
    centres it takes their value, where detectron2 blends them with zeros (the edge of a large box then fell under
    0.5 even at probability 1). torchvision's ``paste_masks_in_image`` pads the mask and counts a box one pixel
    wider: a head that predicted its target exactly came back a pixel larger on every side (an 8 px square at IoU
    0.67 with itself). Only each box's pixels are sampled, so the cost follows the objects, not N x H x W.
    """
    height, width = size
    out = masks.new_zeros((masks.shape[0], 1, height, width))
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if not (x1 > x0 and y1 > y0):
            continue
        # the pixels whose centres lie in the box (c + 0.5 in [x0, x1)); the others are outside the object
        c0, r0 = max(math.ceil(x0 - 0.5), 0), max(math.ceil(y0 - 0.5), 0)
        c1, r1 = min(math.ceil(x1 - 0.5), width), min(math.ceil(y1 - 0.5), height)
        if c1 <= c0 or r1 <= r0:
            continue
        # float32 whatever the masks are: bfloat16 (autocast) holds whole numbers exactly only up to 256
        xs = (torch.arange(c0, c1, device=masks.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(r0, r1, device=masks.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # [1, rows, cols, (x, y)]
        # past the outermost bins' centres a pixel takes their value ("border"): blended with zeros beyond the box,
        # the edge of a large box fell under 0.5 even where the target was 1 (the corners from about 68 px)
        out[i, :, r0:r1, c0:c1] = F.grid_sample(masks[i:i + 1].float(), grid, padding_mode="border",
                                                align_corners=False)[0]
    return out


def paste_extra_masks(detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]],
                      keys: tuple[str, ...] = ("occluder_masks",), keep: bool = True) -> list[dict[str, Tensor]]:
    """Paste the M x M probabilities under ``keys`` into the image, as the transform does for ``masks``.

    ``keep=False`` drops them instead: pasting is the costly part of inference on CPU, and
    evaluation needs only the instance masks (set ``model.return_occluder_masks = False``).
    """
    for det, size in zip(detections, image_sizes):
        for key in keys:
            if key in det:
                if keep:
                    det[key] = paste_masks(det[key], det["boxes"], size)
                else:
                    del det[key]
    return detections


class BCNetFasterRCNN(FasterRCNN):
    """Faster R-CNN whose RoI heads carry a mask branch (:class:`bcnet.roi_heads.BilayerRoIHeads`)."""

    def __init__(self, backbone: nn.Module, num_classes: int, *, mask_branch=None,
                 loss_weights: Mapping[str, float] | None = None, **kwargs: Any):
        # torchvision refuses num_classes beside a custom box_predictor (which fixes it)
        super().__init__(backbone, None if "box_predictor" in kwargs else num_classes, **kwargs)
        self.transform = BilayerTransform.like(self.transform)
        self.roi_heads = BilayerRoIHeads.from_roi_heads(self.roi_heads, mask_branch)
        self.loss_weights = dict(loss_weights or LOSS_PRESETS["paper"])
        self.return_occluder_masks = True

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        out = super().forward(images, targets)
        if self.training:
            return weight_losses(out, self.loss_weights)
        return paste_extra_masks(out, sizes, keep=self.return_occluder_masks)


class TinyBody(nn.Sequential):
    """Three stride-2 stages after a stride-2 stem (outputs at strides 4, 8, 16): a CPU test backbone."""

    def __init__(self, channels: tuple[int, ...] = TINY_CHANNELS):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["stem"] = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1), nn.ReLU(inplace=True))
        previous = channels[0]
        for i, c in enumerate(channels):
            layers[f"layer{i + 1}"] = nn.Sequential(nn.Conv2d(previous, c, 3, 2, 1), nn.ReLU(inplace=True),
                                                    nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(inplace=True))
            previous = c
        super().__init__(layers)


def backbone_build(pretrained: bool) -> dict[str, Any]:
    """``build_model``'s backbone keywords for a backbone started from ImageNet weights or from scratch.

    torchvision's defaults: pretrained, the BatchNorms are frozen and 3 stages train; from scratch, all train.
    A checkpoint must be rebuilt the same way (its frozen BatchNorms have no ``num_batches_tracked``), so
    training records them in its ``model_config``."""
    return {"frozen_batchnorm": pretrained, "trainable_backbone_layers": 3 if pretrained else 5}


def build_backbone(name: str, detector: str, weights: str | os.PathLike | None = None,
                   frozen_batchnorm: bool | None = None, trainable_layers: int | None = None) -> BackboneWithFPN:
    """ResNet-FPN as torchvision builds it for ``detector`` (P2-P6 for Faster R-CNN, P3-P7 for FCOS), or 'tiny'.

    ``weights`` is a local ResNet state dict (ImageNet classification checkpoint); with weights
    the BatchNorms are frozen and 3 stages train (torchvision's defaults), without them all train.
    """
    extra = LastLevelMaxPool() if detector == "faster-rcnn" else None
    if name == "tiny":
        if weights is not None:
            raise ModelConfigError(f"backbone weights {os.fspath(weights)}: the 'tiny' backbone has no pretrained "
                                   "weights; use backbone resnet18 or resnet50 with a torchvision state dict, "
                                   "or no weights")
        out = TINY_FPN_CHANNELS
        return BackboneWithFPN(TinyBody(), {"layer1": "0", "layer2": "1", "layer3": "2"}, list(TINY_CHANNELS), out,
                               extra_blocks=extra or LastLevelP6P7(out, out))
    if name not in ("resnet50", "resnet18"):
        raise ModelConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    pretrained = weights is not None
    default = backbone_build(pretrained)
    frozen = default["frozen_batchnorm"] if frozen_batchnorm is None else frozen_batchnorm
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    body = (resnet50 if name == "resnet50" else resnet18)(weights=None, norm_layer=norm_layer)
    if pretrained:
        load_backbone_weights(body, name, weights)
    if trainable_layers is None:
        trainable_layers = default["trainable_backbone_layers"]
    if detector == "faster-rcnn":
        return _resnet_fpn_extractor(body, trainable_layers)
    return _resnet_fpn_extractor(body, trainable_layers, returned_layers=[2, 3, 4],
                                 extra_blocks=LastLevelP6P7(256, 256))


def _tiny_faster_rcnn_kwargs(num_classes: int) -> dict[str, Any]:
    """Small anchors/heads/sample counts for the 4-level tiny FPN, so CPU tests are quick."""
    c = TINY_FPN_CHANNELS
    return dict(
        rpn_anchor_generator=AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4),
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
        box_head=TwoMLPHead(c * 7 * 7, 128), box_predictor=FastRCNNPredictor(128, num_classes),
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50, box_batch_size_per_image=64, box_detections_per_img=20)


def build_model(num_classes: int, *, detector: str = "faster-rcnn", mask_head: str | None = "bilayer-gcn",
                backbone: str = "resnet50", backbone_weights: str | os.PathLike | None = None,
                min_size: int = 600, max_size: int = 900, head_preset: str = "paper",
                loss_weights: str | Mapping[str, float] | None = None, head_options: Mapping[str, Any] | None = None,
                occluded_ratio: float | None = 0.5, frozen_batchnorm: bool | None = None,
                trainable_backbone_layers: int | None = None, **detector_kwargs: Any) -> nn.Module:
    """Detector + mask head. ``num_classes`` includes background (labels are 1..num_classes-1).

    ``mask_head``: one of :data:`bcnet.heads.MASK_HEADS` or None (detector only).
    ``head_preset``: 'paper' | 'original' (:data:`bcnet.heads.PRESETS`), also the default loss
    preset. ``loss_weights``: a preset name or overrides of the head preset's weights
    (:func:`bcnet.losses.loss_weights`). ``head_options`` override head preset options.
    ``occluded_ratio``: share of occluded RoIs in the occluder loss (None: all RoIs).
    ``detector_kwargs`` go to torchvision's FasterRCNN / FCOS (e.g. ``box_detections_per_img``) and its transform
    (``size_divisible``); any other name is refused (:func:`check_model_settings`).
    """
    check_model_names(detector, mask_head, backbone, head_preset)
    check_model_settings(detector, detector_kwargs)
    if not whole_number(num_classes, 2):
        raise ModelConfigError(f"num_classes counts background and must be a whole number >= 2, got {num_classes!r}")
    sizes = min_size if isinstance(min_size, (list, tuple)) else [min_size]  # torchvision: one drawn per image
    if not sizes or not all(whole_number(size, 1) for size in sizes):
        raise ModelConfigError(f"min_size must be a whole number of pixels >= 1 (or a list of them), got {min_size!r}")
    if not whole_number(max_size, 1):
        raise ModelConfigError(f"max_size must be a whole number of pixels >= 1, got {max_size!r}")
    if occluded_ratio is not None and not (finite_number(occluded_ratio) and 0 < occluded_ratio <= 1):
        raise ModelConfigError(f"occluded_ratio must be None or a number in (0, 1], got {occluded_ratio!r}")
    with _naming("loss_weights"):
        if isinstance(loss_weights, str):
            weights = make_loss_weights(loss_weights)
        else:
            weights = make_loss_weights(head_preset if head_preset in LOSS_PRESETS else "paper", loss_weights)
    with _naming("trainable_backbone_layers"):
        body = build_backbone(backbone, detector, backbone_weights, frozen_batchnorm, trainable_backbone_layers)
    tiny = backbone == "tiny"
    if detector == "faster-rcnn":
        featmaps = ["0", "1", "2"] if tiny else ["0", "1", "2", "3"]
    else:
        featmaps = ["0", "1", "2"]  # P3-P5, where FCOS' boxes of all sizes map (as Mask R-CNN's P2-P5)
    branch = None
    if mask_head is not None:
        with _naming("head_options"):
            branch = build_mask_branch(mask_head, body.out_channels, num_classes, featmaps, head_preset,
                                       dict(head_options or {}), occluded_ratio)
    if detector == "faster-rcnn":
        kwargs = _tiny_faster_rcnn_kwargs(num_classes) if tiny else {}
        kwargs.update(detector_kwargs)
        return BCNetFasterRCNN(body, num_classes, mask_branch=branch, loss_weights=weights,
                               min_size=min_size, max_size=max_size, **kwargs)
    from .fcos import BCNetFCOS

    kwargs = {}
    if tiny:  # GroupNorm(32) of 32 channels breaks on the 1x1 P7 of a 64 px image: 8 groups
        head = FCOSHead(body.out_channels, 1, num_classes, num_convs=2)
        norm = partial(nn.GroupNorm, 8)
        head.classification_head = FCOSClassificationHead(body.out_channels, 1, num_classes, 2, norm_layer=norm)
        head.regression_head = FCOSRegressionHead(body.out_channels, 1, 2, norm_layer=norm)
        kwargs = dict(head=head, detections_per_img=20, topk_candidates=200)
    kwargs.update(detector_kwargs)
    return BCNetFCOS(body, num_classes, mask_branch=branch, loss_weights=weights,
                     min_size=min_size, max_size=max_size, **kwargs)


@contextlib.contextmanager
def _naming(argument: str) -> Iterator[None]:
    """A ValueError of the heads, the losses or torchvision's backbone as a :class:`ModelConfigError` naming the
    ``build_model`` argument it came from (a ModelConfigError, already one message, passes unchanged)."""
    try:
        yield
    except ModelConfigError:
        raise
    except ValueError as exc:
        raise ModelConfigError(f"{argument}: {exc}") from None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``); buffers such as frozen BN stats excluded."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_report(num_classes: int = 91, backbone: str = "resnet50", head_preset: str = "paper") -> list[dict]:
    """Parameter counts of Faster R-CNN / FCOS with no mask head, Mask R-CNN's and BCNet's (built on 'meta', no weights).

    Backbone BatchNorms are frozen as in a trained model (torchvision's published counts,
    e.g. 41,755,286 for fasterrcnn_resnet50_fpn, count them that way). ``head_params`` is the
    model minus the detector alone.
    """
    rows = []
    for detector in DETECTORS:
        base = None
        for head in (None, "fcn", "bilayer-gcn"):
            with torch.device("meta"):
                model = build_model(num_classes, detector=detector, mask_head=head, backbone=backbone,
                                    head_preset=head_preset, frozen_batchnorm=True)
            n = count_parameters(model)
            base = n if head is None else base
            rows.append({"detector": detector, "mask_head": head or "none", "backbone": backbone,
                         "head_preset": head_preset, "params": n, "head_params": n - base,
                         "params_millions": round(n / 1e6, 2)})
    return rows
