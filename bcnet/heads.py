"""Mask heads: Mask R-CNN's FCN head, a single-GCN head and BCNet's bilayer heads.

Every head maps RoI features ``[R, C, 14, 14]`` to a dict of logits at ``28x28``:

- ``'mask'``               occludee (the instance's visible) mask - every head
- ``'boundary'``           occludee boundary                       - gcn, bilayer-*
- ``'occluder_mask'``      union of the occluders inside the RoI    - bilayer-*
- ``'occluder_boundary'``  boundary of that union                   - bilayer-*

The four names of :data:`MASK_HEADS` are the rows of the paper's ablation (Tab. 3):
``fcn`` is Mask R-CNN's head, ``gcn`` is BCNet's occludee branch alone (no occluder layer),
``bilayer-fcn`` is BCNet with every GCN replaced by a 3x3 conv, ``bilayer-gcn`` is BCNet.

Two presets (:data:`PRESETS`) fix the places where the released code differs from the paper:
``"paper"`` (default) - per branch ``3x3 conv -> GCN -> FCN (2 convs) -> x2 bilinear up -> 1x1``,
GCN with LayerNorm + ReLU, a 1x1 ``W_f`` before adding the occluder feature to the RoI
feature; ``"original"`` - 4 convs per branch with the non-local block after the 2nd, the
non-local block as released (1/sqrt(C) scaled affinity, an output 1x1, BatchNorm, no ReLU),
one 2x2 transposed conv per output, the occluder feature added without ``W_f``, class-agnostic.

Class channels: the occludee outputs are class-specific by default (one channel per class,
torchvision convention: ``num_classes`` includes background and labels index the channel),
as in Mask R-CNN on which the paper builds; ``class_agnostic=True`` makes them 1 channel (the
released code). Occluder outputs are always 1 channel: the occluder region is a union of
instances of any classes, so selecting it by the RoI's class would mean nothing.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

MASK_HEADS = ("fcn", "gcn", "bilayer-fcn", "bilayer-gcn")
BILAYER_HEADS = ("bilayer-fcn", "bilayer-gcn")

# Head options that differ between the paper's description and the released code.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(convs_before=1, convs_after=2, gcn_norm="layer", gcn_relu=True, gcn_scaled=False,
                  gcn_output_proj=False, upsample="bilinear", fuse_proj=True, class_agnostic=False),
    "original": dict(convs_before=2, convs_after=2, gcn_norm="batch", gcn_relu=False, gcn_scaled=True,
                     gcn_output_proj=True, upsample="deconv", fuse_proj=False, class_agnostic=True),
}


class GCNBlock(nn.Module):
    """Non-local graph convolution over the RoI's HxW nodes (paper Eq. 1-2).

    ``A = softmax(theta(x)^T phi(x))`` (each node's row sums to 1), ``Z = sigma(A X W_g) + X``
    with ``theta``, ``phi`` and ``W_g`` 1x1 convs. ``sigma`` is LayerNorm over each node's
    channels + ReLU (paper) or BatchNorm (``norm="batch"``, ``relu=False``: released code).
    ``scaled`` divides the affinity by sqrt(C), ``output_proj`` adds a 1x1 after ``A X W_g``
    (both as released). Relating every pair of nodes lets spatially disjoint parts of an
    occluded instance share evidence, which a 3x3 conv cannot do.
    """

    def __init__(self, channels: int, norm: str = "layer", relu: bool = True, scaled: bool = False,
                 output_proj: bool = False):
        super().__init__()
        if norm not in ("layer", "batch"):
            raise ValueError(f"GCNBlock norm must be 'layer' or 'batch', got {norm!r}")
        self.theta = _conv1x1(channels)
        self.phi = _conv1x1(channels)
        self.g = _conv1x1(channels)
        self.out = _conv1x1(channels) if output_proj else None
        self.norm_kind = norm
        self.norm = nn.LayerNorm(channels) if norm == "layer" else nn.BatchNorm2d(channels, eps=1e-4)
        self.relu = relu
        self.scale = 1.0 / math.sqrt(channels) if scaled else 1.0

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """``A``: [B, HW, HW], row i = how much node i draws from every node."""
        theta = self.theta(x).flatten(2)  # B, C, N
        phi = self.phi(x).flatten(2)  # B, C, N
        return torch.softmax(theta.transpose(1, 2) @ phi * self.scale, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        values = self.g(x).flatten(2).transpose(1, 2)  # B, N, C  (X W_g)
        y = (self.affinity(x) @ values).transpose(1, 2).reshape(b, c, h, w)
        if self.out is not None:
            y = self.out(y)
        if self.norm_kind == "layer":  # per node, over its channels
            y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            y = self.norm(y)
        if self.relu:
            y = F.relu(y)
        return y + x


def _conv1x1(channels: int) -> nn.Conv2d:
    """A bias-free 1x1 projection of the GCN, MSRA-initialised as the head's other convs (and the released code)."""
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _conv3x3_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.ReLU(inplace=True))


class LayerBranch(nn.Sequential):
    """One layer of the bilayer: ``convs_before x conv3x3 -> mixer -> convs_after x conv3x3``.

    ``mixer="gcn"`` is a :class:`GCNBlock`; ``mixer="conv"`` a 3x3 conv in its place (the
    paper's FCN ablation keeps the depth and drops only the global relation).
    """

    def __init__(self, in_channels: int, channels: int, *, mixer: str = "gcn", convs_before: int = 1,
                 convs_after: int = 2, gcn_norm: str = "layer", gcn_relu: bool = True,
                 gcn_scaled: bool = False, gcn_output_proj: bool = False):
        if convs_before < 1:
            raise ValueError("a branch needs at least one conv before its GCN (it sets the width)")
        layers: list[nn.Module] = []
        for k in range(convs_before):
            layers.append(_conv3x3_relu(in_channels if k == 0 else channels, channels))
        if mixer == "gcn":
            layers.append(GCNBlock(channels, norm=gcn_norm, relu=gcn_relu, scaled=gcn_scaled,
                                   output_proj=gcn_output_proj))
        elif mixer == "conv":
            layers.append(_conv3x3_relu(channels, channels))
        else:
            raise ValueError(f"mixer must be 'gcn' or 'conv', got {mixer!r}")
        for _ in range(convs_after):
            layers.append(_conv3x3_relu(channels, channels))
        super().__init__(*layers)


class BranchPredictor(nn.Module):
    """14x14 branch feature -> 28x28 logits for each named output.

    ``upsample="bilinear"``: one parameter-free x2 upsampling shared by the outputs, then a 1x1
    conv per output. ``upsample="deconv"``: a 2x2 stride-2 transposed conv + ReLU per output
    (released code), then the 1x1.
    """

    def __init__(self, channels: int, outputs: dict[str, int], upsample: str = "bilinear"):
        super().__init__()
        if upsample not in ("bilinear", "deconv"):
            raise ValueError(f"upsample must be 'bilinear' or 'deconv', got {upsample!r}")
        self.upsample = upsample
        self.names = list(outputs)
        self.deconvs = nn.ModuleDict()
        if upsample == "deconv":
            for name in self.names:
                deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
                nn.init.kaiming_normal_(deconv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(deconv.bias)
                self.deconvs[name] = deconv
        self.predictors = nn.ModuleDict()
        for name, n_out in outputs.items():
            predictor = nn.Conv2d(channels, n_out, 1)
            nn.init.normal_(predictor.weight, std=0.001)
            nn.init.zeros_(predictor.bias)
            self.predictors[name] = predictor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.upsample == "bilinear":
            up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            return {name: self.predictors[name](up) for name in self.names}
        return {name: self.predictors[name](F.relu(self.deconvs[name](x))) for name in self.names}


class FCNMaskHead(nn.Module):
    """Mask R-CNN's head (torchvision's modules): 4 conv3x3 -> 2x2 deconv -> 1x1 per class."""

    def __init__(self, in_channels: int, num_classes: int, conv_dim: int = 256, class_agnostic: bool = False):
        super().__init__()
        self.convs = MaskRCNNHeads(in_channels, (conv_dim,) * 4, 1)
        self.predictor = MaskRCNNPredictor(conv_dim, conv_dim, 1 if class_agnostic else num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.predictor(self.convs(x))}


class GCNMaskHead(nn.Module):
    """BCNet's occludee layer alone: one branch predicting the instance's mask and boundary."""

    def __init__(self, in_channels: int, num_classes: int, conv_dim: int = 256, class_agnostic: bool = False,
                 upsample: str = "bilinear", **branch_options: Any):
        super().__init__()
        k = 1 if class_agnostic else num_classes
        self.branch = LayerBranch(in_channels, conv_dim, mixer="gcn", **branch_options)
        self.predictor = BranchPredictor(conv_dim, {"boundary": k, "mask": k}, upsample)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.predictor(self.branch(x))


class BilayerMaskHead(nn.Module):
    """BCNet: an occluder layer whose feature, added to the RoI feature, feeds the occludee layer.

    ``X_f = Z0 W_f + X_roi`` (``fuse_proj=False``: ``Z0 + X_roi`` as released). The occluder
    layer is supervised with the occluders' mask and boundary, so the occludee layer sees
    where the RoI is covered and can tell occlusion boundaries from its own contour.
    """

    def __init__(self, in_channels: int, num_classes: int, use_gcn: bool = True, conv_dim: int = 256,
                 class_agnostic: bool = False, upsample: str = "bilinear", fuse_proj: bool = True,
                 **branch_options: Any):
        super().__init__()
        mixer = "gcn" if use_gcn else "conv"
        k = 1 if class_agnostic else num_classes
        self.occluder = LayerBranch(in_channels, conv_dim, mixer=mixer, **branch_options)
        self.occluder_predictor = BranchPredictor(conv_dim, {"occluder_boundary": 1, "occluder_mask": 1}, upsample)
        if fuse_proj:
            self.fuse = nn.Conv2d(conv_dim, in_channels, 1, bias=False)
        elif conv_dim != in_channels:
            raise ValueError(f"fuse_proj=False adds the occluder feature ({conv_dim} channels) to the RoI "
                             f"feature ({in_channels} channels): the widths must agree")
        else:
            self.fuse = nn.Identity()
        self.occludee = LayerBranch(in_channels, conv_dim, mixer=mixer, **branch_options)
        self.occludee_predictor = BranchPredictor(conv_dim, {"boundary": k, "mask": k}, upsample)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        occluder = self.occluder(x)
        out = self.occluder_predictor(occluder)
        out.update(self.occludee_predictor(self.occludee(self.fuse(occluder) + x)))
        return out


def head_options(preset: str = "paper", **overrides: Any) -> dict[str, Any]:
    """The preset's head options with ``overrides`` applied (unknown names are an error)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown mask head preset {preset!r}; choose one of {sorted(PRESETS)}")
    options = dict(PRESETS[preset])
    unknown = set(overrides) - set(options) - {"conv_dim"}
    if unknown:
        raise ValueError(f"unknown mask head option(s) {sorted(unknown)}; known: {sorted(options) + ['conv_dim']}")
    options.update(overrides)
    return options


def build_mask_head(name: str, in_channels: int, num_classes: int, preset: str = "paper",
                    **overrides: Any) -> nn.Module:
    """One of :data:`MASK_HEADS` for RoI features with ``in_channels`` channels.

    ``conv_dim`` (head width) defaults to ``in_channels``, i.e. 256 on an FPN. ``fcn`` is always
    Mask R-CNN's head: of the options it uses only ``conv_dim`` and ``class_agnostic``.
    """
    if name not in MASK_HEADS:
        raise ValueError(f"unknown mask head {name!r}; choose one of {list(MASK_HEADS)}")
    options = head_options(preset, **overrides)
    conv_dim = options.pop("conv_dim", None) or in_channels
    class_agnostic = options.pop("class_agnostic")
    upsample = options.pop("upsample")
    fuse_proj = options.pop("fuse_proj")
    if name == "fcn":
        return FCNMaskHead(in_channels, num_classes, conv_dim, class_agnostic)
    if name == "gcn":
        return GCNMaskHead(in_channels, num_classes, conv_dim, class_agnostic, upsample, **options)
    return BilayerMaskHead(in_channels, num_classes, use_gcn=name == "bilayer-gcn", conv_dim=conv_dim,
                           class_agnostic=class_agnostic, upsample=upsample, fuse_proj=fuse_proj, **options)
