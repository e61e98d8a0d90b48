"""Per-RoI bilayer targets on hand-made scenes, occluded-RoI balancing, loss weighting; which head output the mask
branch trains and predicts with."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from bcnet.losses import (LOSS_PRESETS, bilayer_mask_loss, loss_weights, mask_bce, total_loss,
                          weight_losses)
from bcnet.roi_heads import MaskBranch
from bcnet.targets import (balance_occluded, bilayer_targets, mask_boundary, occluded_rois,
                           project_masks_on_boxes)
from occsynth.masks import boundary as np_boundary


def square_scene():
    """64x64 image: GT 0 is the square [10, 38)^2 whose part under GT 1 (rows 20..29, x 30..49) is hidden."""
    occluder = torch.zeros(64, 64, dtype=torch.uint8)
    occluder[20:30, 30:50] = 1
    square = torch.zeros(64, 64, dtype=torch.uint8)
    square[10:38, 10:38] = 1
    visible = square * (1 - occluder)
    masks = torch.stack([visible, occluder])
    occluder_masks = torch.stack([occluder, torch.zeros_like(occluder)])
    return {"masks": masks, "occluder_masks": occluder_masks}


def test_roi_equal_to_gt_box_gives_the_exact_crop():
    scene = square_scene()
    box = torch.tensor([[10.0, 10.0, 38.0, 38.0]])
    t = bilayer_targets([box], [scene], [torch.tensor([0])])
    expected_occ = torch.zeros(28, 28)
    expected_occ[10:20, 20:28] = 1  # occluder rows 20..29, cols 30..37 inside the box
    assert torch.equal(t["occluder_mask"][0], expected_occ)
    assert torch.equal(t["mask"][0], 1 - expected_occ)
    # Occluder boundary: dilated rows 9..20 x cols 19..27 (108) minus eroded rows 11..18 x cols 21..27 (56);
    # the RoI's right edge cuts the rectangle and is no contour.
    ob = t["occluder_boundary"][0]
    assert int(ob.sum()) == 108 - 56
    assert ob[9, 20] == 1 and ob[10, 20] == 1 and ob[15, 19] == 1 and ob[20, 27] == 1  # 1 px each side
    assert ob[15, 23] == 0 and ob[15, 27] == 0 and ob[8, 20] == 0 and ob[15, 18] == 0
    # the occludee's only contour inside the RoI is the occlusion boundary: the same band
    assert torch.equal(t["boundary"][0], ob)


def test_boundary_matches_occsynth_masks_boundary():
    rng = np.random.default_rng(0)
    for width in (1, 2):
        masks = rng.random((4, 28, 28)) > 0.6
        masks[0] = False
        masks[1, 5:20, 3:25] = True
        got = mask_boundary(torch.from_numpy(masks), width).numpy().astype(bool)
        for m, g in zip(masks, got):
            assert np.array_equal(g, np_boundary(m, width))


def test_boundary_width_reaches_both_boundary_targets():
    """bilayer_targets' boundary_width is the band's width of the occludee's and the occluder's boundary maps."""
    scene = square_scene()
    box = torch.tensor([[10.0, 10.0, 38.0, 38.0]])
    t = bilayer_targets([box], [scene], [torch.tensor([0])], boundary_width=2)
    assert torch.equal(t["boundary"], mask_boundary(t["mask"], 2))
    assert torch.equal(t["occluder_boundary"], mask_boundary(t["occluder_mask"], 2))
    assert not torch.equal(t["boundary"], mask_boundary(t["mask"], 1))


def test_larger_roi_is_downsampled_exactly_and_gt_index_is_followed():
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[1, 0:56, 0:28] = 1  # left half of the RoI [0, 56)^2
    crops = project_masks_on_boxes(masks, torch.tensor([[0.0, 0.0, 56.0, 56.0]] * 2), torch.tensor([1, 0]))
    expected = torch.zeros(28, 28)
    expected[:, :14] = 1
    assert torch.equal(crops[0], expected)
    assert crops[1].sum() == 0
    assert project_masks_on_boxes(masks, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)).shape == (0, 28, 28)


def test_a_bin_the_mask_covers_half_of_is_in_the_target():
    """Crops are thresholded at >= 0.5, as detectron2's crop_and_resize: in a RoI downsampled 2x, bin 14 averages
    columns 28 (in the mask) and 29 (not), exactly 0.5."""
    masks = torch.zeros(1, 56, 56, dtype=torch.uint8)
    masks[0, :, :29] = 1
    crop = project_masks_on_boxes(masks, torch.tensor([[0.0, 0.0, 56.0, 56.0]]), torch.tensor([0]))[0]
    expected = torch.zeros(28, 28)
    expected[:, :15] = 1
    assert torch.equal(crop, expected)


def test_targets_concatenate_images_in_order():
    scene = square_scene()
    boxes = [torch.tensor([[10.0, 10.0, 38.0, 38.0]]), torch.zeros(0, 4), torch.tensor([[30.0, 20.0, 58.0, 48.0]] * 2)]
    matched = [torch.tensor([0]), torch.zeros(0, dtype=torch.int64), torch.tensor([1, 0])]
    t = bilayer_targets(boxes, [scene] * 3, matched)
    assert all(v.shape == (3, 28, 28) for v in t.values())
    assert occluded_rois(t["occluder_mask"]).tolist() == [True, False, True]
    assert t["mask"][1][:10, :20].sum() == 200  # GT 1 (the occluder itself) fills its box's top rows
    without = bilayer_targets(boxes, [{"masks": scene["masks"]}] * 3, matched, occluders=False)
    assert set(without) == {"mask", "boundary"}
    with pytest.raises(KeyError):
        bilayer_targets(boxes, [{"masks": scene["masks"]}] * 3, matched)


def test_balance_occluded_keeps_half():
    occluded = torch.zeros(20, dtype=torch.bool)
    occluded[[2, 5, 11]] = True
    keep = balance_occluded(occluded, generator=torch.Generator().manual_seed(1))
    assert keep[occluded].all() and int(keep.sum()) == 6  # 3 occluded + 3 of the 17 others
    again = balance_occluded(occluded, generator=torch.Generator().manual_seed(1))
    assert torch.equal(keep, again)
    draws = {tuple(balance_occluded(occluded, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(6)}
    assert len(draws) > 1  # the non-occluded subset is random
    torch.manual_seed(3)
    a = balance_occluded(occluded)
    torch.manual_seed(3)
    assert torch.equal(a, balance_occluded(occluded))
    assert int(balance_occluded(occluded, ratio=0.25).sum()) == 12  # 3 occluded are a quarter of 12
    assert balance_occluded(torch.tensor([True, True, False])).all()  # too few others: all kept
    assert not balance_occluded(torch.zeros(5, dtype=torch.bool)).any()  # no occluded RoI: none
    with pytest.raises(ValueError):
        balance_occluded(occluded, ratio=0.0)


def test_loss_presets_and_weighting_are_exact():
    assert LOSS_PRESETS["paper"] == {"det": 1.0, "occluder_boundary": 0.5, "occluder_mask": 0.25,
                                     "occludee_boundary": 0.5, "occludee_mask": 1.0}
    original = loss_weights("original")
    paper = loss_weights("paper")
    assert original["occluder_boundary"] == 2 * paper["occluder_boundary"]
    assert original["occludee_boundary"] == 2 * paper["occludee_boundary"]
    raw = {"loss_classifier": torch.tensor(2.0), "loss_objectness": torch.tensor(4.0),
           "loss_occluder_boundary": torch.tensor(8.0), "loss_occluder_mask": torch.tensor(16.0),
           "loss_mask_boundary": torch.tensor(32.0), "loss_mask": torch.tensor(64.0)}
    weighted = weight_losses(raw, paper)
    assert {k: float(v) for k, v in weighted.items()} == {
        "loss_classifier": 2.0, "loss_objectness": 4.0, "loss_occluder_boundary": 4.0,
        "loss_occluder_mask": 4.0, "loss_mask_boundary": 16.0, "loss_mask": 64.0}
    assert float(total_loss(raw, paper)) == 94.0
    custom = loss_weights("paper", {"det": 0.5, "occluder_mask": 1.0})
    assert float(total_loss(raw, custom)) == 1.0 + 2.0 + 4.0 + 16.0 + 16.0 + 64.0
    with pytest.raises(ValueError):
        loss_weights("paper", {"occluder": 1.0})
    with pytest.raises(ValueError):
        loss_weights("cvpr")


def test_bilayer_mask_loss_values():
    torch.manual_seed(0)
    r = 4
    outputs = {"mask": torch.randn(r, 3, 28, 28, requires_grad=True), "boundary": torch.randn(r, 3, 28, 28),
               "occluder_mask": torch.randn(r, 1, 28, 28, requires_grad=True),
               "occluder_boundary": torch.randn(r, 1, 28, 28)}
    targets = {k: (torch.rand(r, 28, 28) > 0.5).float() for k in ("mask", "boundary", "occluder_mask",
                                                                      "occluder_boundary")}
    labels = torch.tensor([1, 2, 2, 1])
    keep = torch.tensor([True, False, True, False])
    losses = bilayer_mask_loss(outputs, targets, labels, keep)
    idx = torch.arange(r)
    torch.testing.assert_close(losses["loss_mask"], F.binary_cross_entropy_with_logits(
        outputs["mask"][idx, labels], targets["mask"]))
    torch.testing.assert_close(losses["loss_mask_boundary"], F.binary_cross_entropy_with_logits(
        outputs["boundary"][idx, labels], targets["boundary"]))
    torch.testing.assert_close(losses["loss_occluder_mask"], F.binary_cross_entropy_with_logits(
        outputs["occluder_mask"][keep, 0], targets["occluder_mask"][keep]))
    torch.testing.assert_close(losses["loss_occluder_boundary"], F.binary_cross_entropy_with_logits(
        outputs["occluder_boundary"][keep, 0], targets["occluder_boundary"][keep]))
    assert set(bilayer_mask_loss({"mask": outputs["mask"]}, targets, labels)) == {"loss_mask"}
    empty = mask_bce(outputs["occluder_mask"][:, 0], targets["occluder_mask"], torch.zeros(r, dtype=torch.bool))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


class FixedLogits(nn.Module):
    """A mask head whose logits are given (one row per RoI), whatever the RoI features."""

    def __init__(self, logits: dict):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        assert all(len(v) == len(x) for v in self.logits.values())
        return dict(self.logits)


def bilayer_logits(rois: int, classes: int) -> dict:
    torch.manual_seed(0)
    return {name: torch.randn(rois, n, 28, 28) for name, n in (("mask", classes), ("boundary", classes),
                                                               ("occluder_mask", 1), ("occluder_boundary", 1))}


def test_the_mask_branch_balances_the_occluder_loss_by_the_occluder_target():
    """With occluded_ratio 1 the occluder terms are over the RoIs with an occluder in their target only: GT 1 (the
    occluder itself) has a mask of its own but nothing over it, so its RoI is not among them."""
    scene = square_scene()
    boxes = [torch.tensor([[10.0, 10.0, 38.0, 38.0], [30.0, 20.0, 50.0, 30.0]])]
    matched, labels = [torch.tensor([0, 1])], [torch.tensor([2, 1])]
    logits = bilayer_logits(2, 3)
    branch = MaskBranch("bilayer-gcn", MultiScaleRoIAlign(["0"], 14, 2), FixedLogits(logits), occluded_ratio=1.0)
    losses = branch.losses({"0": torch.zeros(1, 4, 32, 32)}, boxes, [(64, 64)], [scene], matched, labels)
    goals = bilayer_targets(boxes, [scene], matched)
    expected = bilayer_mask_loss(logits, goals, labels[0], torch.tensor([True, False]))
    assert losses.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(losses[key], expected[key])


def test_the_mask_branch_predicts_each_detections_class_channel_and_the_occluder_mask():
    """Inference: ``masks`` is the occludee mask logit of each detection's class, ``occluder_masks`` the occluder mask
    (not a boundary), as probabilities, split by image in order."""
    logits = bilayer_logits(3, 4)
    branch = MaskBranch("bilayer-gcn", MultiScaleRoIAlign(["0"], 14, 2), FixedLogits(logits))
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 10.0, 12.0]]), torch.tensor([[4.0, 4.0, 16.0, 16.0]])]
    out = branch.predict({"0": torch.zeros(2, 4, 16, 16)}, boxes, [torch.tensor([2, 3]), torch.tensor([1])],
                         [(32, 32)] * 2)
    assert [set(o) for o in out] == [{"masks", "occluder_masks"}] * 2
    torch.testing.assert_close(out[0]["masks"], logits["mask"][[0, 1], [2, 3]][:, None].sigmoid())
    torch.testing.assert_close(out[1]["masks"], logits["mask"][[2], [1]][:, None].sigmoid())
    torch.testing.assert_close(torch.cat([o["occluder_masks"] for o in out]), logits["occluder_mask"].sigmoid())
