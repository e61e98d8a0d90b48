"""build_model on the tiny backbone (train losses, backward, eval outputs) and ResNet-50 parameter counts."""
import math
import re

import numpy as np
import pytest
import torch

from bcnet.model import (BilayerTransform, ModelConfigError, build_backbone, build_model, count_parameters,
                         parameter_report, paste_extra_masks, paste_masks)
from occsynth.errors import OccsynthError

MASK_LOSSES = {"loss_mask", "loss_mask_boundary", "loss_occluder_mask", "loss_occluder_boundary"}


def scene(height=64, width=80):
    """Two instances; GT 1 covers part of GT 0."""
    image = torch.rand(3, height, width)
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 10:40, 10:40] = 1
    masks[1, 20:50, 30:70] = 1
    masks[0][masks[1].bool()] = 0
    occluder_masks = torch.zeros_like(masks)
    occluder_masks[0] = masks[1]
    return image, {"boxes": torch.tensor([[10.0, 10, 40, 40], [30, 20, 70, 50]]), "labels": torch.tensor([1, 2]),
                   "masks": masks, "occluder_masks": occluder_masks}


def batch():
    torch.manual_seed(0)
    images, targets = zip(scene(), scene(72, 64))
    return list(images), list(targets)


@pytest.mark.parametrize("detector", ["faster-rcnn", "fcos"])
def test_train_losses_finite_and_backward_reaches_both_layers(detector):
    torch.manual_seed(0)
    model = build_model(3, detector=detector, backbone="tiny", min_size=64, max_size=96).train()
    images, targets = batch()
    losses = model(images, targets)
    assert MASK_LOSSES <= set(losses)
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    branch = model.roi_heads.mask_branch if detector == "faster-rcnn" else model.mask_branch
    for layer in (branch.head.occluder, branch.head.occludee):
        assert layer[0][0].weight.grad.abs().sum() > 0
    assert next(model.backbone.parameters()).grad is not None


def no_objects(height=64, width=80):
    empty = torch.zeros(0, height, width, dtype=torch.uint8)
    return torch.rand(3, height, width), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                          "masks": empty, "occluder_masks": empty}


@pytest.mark.parametrize("head", ["bilayer-gcn", "bilayer-fcn", "gcn", "fcn"])
@pytest.mark.parametrize("detector", ["faster-rcnn", "fcos"])
def test_every_trainable_parameter_gets_a_gradient_with_and_without_objects(detector, head):
    """DDP runs without searching for unused parameters (bcnet.train): a parameter left out of a step's
    graph would stop a multi-process run, so every one must take part, even on a batch with no objects."""
    torch.manual_seed(0)
    model = build_model(3, detector=detector, mask_head=head, backbone="tiny", min_size=64, max_size=96).train()
    for images, targets in (batch(), tuple(map(list, zip(no_objects(), no_objects(72, 64))))):
        model.zero_grad(set_to_none=True)
        sum(model(images, targets).values()).backward()
        unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert unused == [], f"{len(targets[0]['boxes'])} objects: {unused[:5]}"


def test_losses_are_weighted_by_the_preset():
    model = build_model(3, backbone="tiny", min_size=64, max_size=96).train()
    images, targets = batch()
    torch.manual_seed(1)
    paper = model(images, targets)
    model.loss_weights = {"det": 2.0, "occluder_boundary": 1.0, "occluder_mask": 0.25, "occludee_boundary": 1.0,
                          "occludee_mask": 1.0}
    torch.manual_seed(1)
    other = model(images, targets)
    for key in ("loss_mask_boundary", "loss_occluder_boundary", "loss_classifier", "loss_objectness"):
        torch.testing.assert_close(other[key], 2 * paper[key])
    for key in ("loss_mask", "loss_occluder_mask"):
        torch.testing.assert_close(other[key], paper[key])
    assert build_model(3, backbone="tiny", head_preset="original").loss_weights["occludee_boundary"] == 1.0
    assert build_model(3, backbone="tiny", loss_weights={"det": 3.0}).loss_weights["det"] == 3.0


@pytest.mark.parametrize("detector,head", [("faster-rcnn", "bilayer-gcn"), ("faster-rcnn", "fcn"),
                                           ("fcos", "bilayer-gcn")])
def test_eval_outputs(detector, head):
    torch.manual_seed(0)
    kwargs = {"score_thresh": 0.0, "mask_detections_per_img": 5} if detector == "fcos" else {}
    model = build_model(3, detector=detector, mask_head=head, backbone="tiny", min_size=64, max_size=96,
                        **kwargs).eval()
    images, _ = batch()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for image, out in zip(images, outputs):
        n = len(out["boxes"])
        assert n > 0
        if detector == "fcos":
            assert n <= 5
        keys = {"boxes", "labels", "scores", "masks"} | ({"occluder_masks"} if head != "fcn" else set())
        assert set(out) == keys
        for key in keys - {"boxes", "labels", "scores"}:
            assert out[key].shape == (n, 1, *image.shape[-2:])
            assert 0.0 <= float(out[key].min()) and float(out[key].max()) <= 1.0
    model.return_occluder_masks = False  # evaluation's setting: the occluder masks are neither pasted nor returned
    with torch.no_grad():
        bare = model(images)
    for out, without in zip(outputs, bare):
        assert set(without) == {"boxes", "labels", "scores", "masks"}
        assert torch.equal(without["masks"], out["masks"]) and torch.equal(without["boxes"], out["boxes"])


def test_detector_alone_and_bad_names():
    model = build_model(3, mask_head=None, backbone="tiny", min_size=64, max_size=96).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])[0]
    assert "masks" not in out
    for bad, words in (({"detector": "yolo"}, "unknown detector 'yolo'; choose one of faster-rcnn, fcos"),
                       ({"mask_head": "bilayer"}, "unknown mask head 'bilayer'; choose one of fcn, gcn, "),
                       ({"backbone": "vit"}, "unknown backbone 'vit'; choose one of resnet50, resnet18, tiny"),
                       ({"head_preset": "x"}, "unknown head preset 'x'; choose one of paper, original")):
        with pytest.raises(ModelConfigError, match=words) as info:  # the CLI's one-line error, and a ValueError
            build_model(3, **{"backbone": "tiny", **bad})
        assert isinstance(info.value, OccsynthError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad, words", [
    ({"num_classes": "6"}, "num_classes counts background and must be a whole number >= 2, got '6'"),
    ({"num_classes": 6.0}, "num_classes counts background and must be a whole number >= 2, got 6.0"),
    ({"num_classes": 1}, "num_classes counts background and must be a whole number >= 2, got 1"),
    ({"min_size": "64"}, "min_size must be a whole number of pixels >= 1 (or a list of them), got '64'"),
    ({"min_size": [64, 0]}, "min_size must be a whole number of pixels >= 1 (or a list of them), got [64, 0]"),
    ({"max_size": 0}, "max_size must be a whole number of pixels >= 1, got 0"),
    ({"min_size": []}, "min_size must be a whole number of pixels >= 1 (or a list of them), got []"),
    ({"occluded_ratio": 2}, "occluded_ratio must be None or a number in (0, 1], got 2"),
    ({"occluded_ratio": 0}, "occluded_ratio must be None or a number in (0, 1], got 0"),
    ({"occluded_ratio": "0.5"}, "occluded_ratio must be None or a number in (0, 1], got '0.5'"),
    ({"loss_weights": {"mask": 1.0}}, "loss_weights: unknown loss weight(s) ['mask']"),
    ({"head_options": {"convz": 1}}, "head_options: unknown mask head option(s) ['convz']"),
    ({"backbone": "resnet18", "trainable_backbone_layers": 9}, "trainable_backbone_layers: "),
])
def test_build_model_refuses_a_setting_it_cannot_use_naming_it_before_building(bad, words):
    # a notebook's typo: one ModelConfigError (an OccsynthError and a ValueError) naming the argument, not a
    # TypeError from torch, nor a failure at the first training step (occluded_ratio)
    args = {"num_classes": 6, "backbone": "tiny", **bad}
    with pytest.raises(ModelConfigError, match=re.escape(words)):
        build_model(args.pop("num_classes"), **args)


def test_build_model_takes_numpy_integers_as_a_notebook_has_them():
    """The argument checks refused np.int64 (a class count from np.unique, a size from an array's shape)."""
    model = build_model(np.int64(3), mask_head=None, backbone="tiny", min_size=np.int64(48), max_size=np.int32(64))
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert tuple(model.transform.min_size) == (48,) and model.transform.max_size == 64


def test_build_model_takes_min_size_as_a_list_as_torchvision_does():
    model = build_model(3, mask_head=None, backbone="tiny", min_size=[48, 64], max_size=96)
    assert tuple(model.transform.min_size) == (48, 64)
    model = build_model(3, mask_head=None, backbone="tiny", min_size=(48, 64), max_size=96)  # or a tuple
    assert tuple(model.transform.min_size) == (48, 64)


def test_build_model_takes_an_occluded_ratio_of_1_the_top_of_its_range():
    model = build_model(3, backbone="tiny", min_size=48, max_size=64, occluded_ratio=1)  # only occluded RoIs
    assert model.roi_heads.mask_branch.occluded_ratio == 1


@pytest.mark.parametrize("detector, passed_on", [("faster-rcnn", "box_detections_per_img"),
                                                 ("fcos", "detections_per_img")])
def test_a_model_setting_nothing_reads_is_refused_and_torchvisions_own_are_passed_on(detector, passed_on):
    """torchvision's detectors and transform take **kwargs and drop what they do not know: a misspelt setting
    built another model than the one asked for, without a word."""
    with pytest.raises(ModelConfigError) as info:
        build_model(3, detector=detector, backbone="tiny", mask_haed="fcn")
    assert str(info.value).startswith("unknown model setting 'mask_haed' (did you mean 'mask_head'?); bcnet's "
                                      "settings: num_classes, detector, mask_head, backbone, backbone_weights, ")
    cls = "FasterRCNN" if detector == "faster-rcnn" else "FCOS"
    assert str(info.value).endswith(f"and torchvision's {cls} keyword arguments, passed on to it")
    with pytest.raises(ModelConfigError, match=r"unknown model setting 'size_divisable' \(did you mean "
                                               r"'size_divisible'\?\)"):
        build_model(3, detector=detector, backbone="tiny", size_divisable=16)
    model = build_model(3, detector=detector, mask_head=None, backbone="tiny", size_divisible=16, **{passed_on: 1})
    assert model.transform.size_divisible == 16
    assert (model.roi_heads.detections_per_img if detector == "faster-rcnn" else model.detections_per_img) == 1


class Boom:
    """Executing this on load would create a file: weights_only=True must refuse it instead."""

    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_backbone_weights_load_or_fail_with_one_clear_error(tmp_path):
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pt")
    body = build_backbone("resnet18", "faster-rcnn", tmp_path / "r18.pt").body
    assert torch.equal(body.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(body.bn1.running_mean, source.bn1.running_mean)  # loaded, and frozen (FrozenBatchNorm2d)

    (tmp_path / "afile").write_text("not weights\n")
    torch.save({"model": {"x": torch.zeros(1)}, "iteration": 80}, tmp_path / "model_final.pt")
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    data = bytearray((tmp_path / "r18.pt").read_bytes())  # tensors are stored uncompressed: zero some in place
    at = data.find(source.layer4[1].conv2.weight.detach().numpy().tobytes()[:64])
    assert at > 0
    data[at:at + 32] = bytes(32)  # the zip still reads, and torch loads it without a word
    (tmp_path / "damaged.pt").write_bytes(bytes(data))
    boom = Boom()
    boom.target = str(tmp_path / "executed")
    torch.save({"conv1.weight": boom}, tmp_path / "evil.pt")
    expected = "expected a torchvision resnet18 state dict (e.g. from torchvision.models.resnet18(weights=...)"
    cases = [("tiny", "r18.pt", "the 'tiny' backbone has no pretrained weights"),
             ("resnet18", "missing.pt", "no such file"),
             ("resnet18", "afile", "not a file torch.load(weights_only=True) can read"),
             ("resnet18", "evil.pt", "not a file torch.load(weights_only=True) can read"),
             ("resnet18", "model_final.pt", "a bcnet training checkpoint, not backbone weights (use init_checkpoint/--init"),
             ("resnet18", "list.pt", "does not hold a state dict"),
             ("resnet18", "damaged.pt", "damaged file (r18/data/"),
             ("resnet18", "other.pt", "not a resnet18 state dict (100 missing keys e.g. ['conv1.weight'"),
             ("resnet50", "r18.pt", "tensors have shapes that do not fit a resnet50 (e.g. layer1.0.conv1.weight")]
    for name, file, words in cases:
        with pytest.raises(OccsynthError) as info:
            build_model(3, backbone=name, backbone_weights=tmp_path / file, mask_head=None)
        message = str(info.value)
        assert message.startswith(f"backbone weights {tmp_path / file}: ") and words in message, message
        assert "\n" not in message and (name == "tiny" or expected.replace("resnet18", name) in message), message
    assert not (tmp_path / "executed").exists()


def test_backbone_weights_with_one_tensor_of_another_shape_say_so_in_the_singular(tmp_path):
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)  # one tensor edited by hand
    torch.save(state, tmp_path / "one.pt")
    with pytest.raises(OccsynthError) as info:
        build_model(3, backbone="resnet18", backbone_weights=tmp_path / "one.pt", mask_head=None)
    assert "1 tensor has a shape that does not fit a resnet18 (e.g. conv1.weight [64, 3, 3, 3], needs " \
        "[64, 3, 7, 7])" in str(info.value), str(info.value)


def test_backbone_weights_in_a_state_dict_wrapper_or_with_another_classifier_load_and_freeze_the_first_stages(tmp_path):
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    torch.save({"state_dict": {**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}},
               tmp_path / "wrapped.pt")  # a 10-class classifier: its fc is left out, whatever its size
    body = build_backbone("resnet18", "faster-rcnn", tmp_path / "wrapped.pt").body
    assert torch.equal(body.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}  # torchvision's default from weights: 3 stages train
    frozen = sum(p.numel() for p in body.parameters() if not p.requires_grad)
    assert frozen > 0 and count_parameters(body) == sum(p.numel() for p in body.parameters())
    assert count_parameters(body, trainable_only=True) == count_parameters(body) - frozen
    scratch = build_backbone("resnet18", "faster-rcnn").body  # from scratch every stage trains
    assert all(p.requires_grad for p in scratch.parameters())
    one = build_backbone("resnet18", "faster-rcnn", trainable_layers=1).body
    assert {name.split(".")[0] for name, p in one.named_parameters() if p.requires_grad} == {"layer4"}
    for changed, words in (
            ({"conv1.weight": torch.zeros(64, 3, 3, 3), "bn1.weight": torch.zeros(3)},
             "2 tensors have shapes that do not fit a resnet18 (e.g. conv1.weight"),
            ({"extra.weight": torch.zeros(1)}, "not a resnet18 state dict (0 missing keys e.g. [], 1 unexpected e.g. "
                                              "['extra.weight'])")):
        torch.save({**state, **changed}, tmp_path / "changed.pt")
        with pytest.raises(ModelConfigError) as info:
            build_backbone("resnet18", "faster-rcnn", tmp_path / "changed.pt")
        assert words in str(info.value), str(info.value)


def test_a_model_needs_a_class_besides_background():
    with pytest.raises(ModelConfigError, match=r"^num_classes counts background and must be a whole number >= 2, got 1$"):
        build_model(1, backbone="tiny")


def test_a_box_reaching_past_the_bottom_of_an_image_taller_than_wide_is_pasted_down_to_the_last_row():
    pasted = paste_masks(torch.ones(1, 1, 28, 28), torch.tensor([[2.0, 10.0, 12.0, 50.0]]), (40, 16))[0, 0] > 0.5
    expected = torch.zeros(40, 16, dtype=torch.bool)
    expected[10:, 2:12] = True
    assert torch.equal(pasted, expected)


def test_transform_resizes_occluder_masks_with_the_image():
    t = BilayerTransform(128, 200, [0.0] * 3, [1.0] * 3).train()
    _, target = scene()
    images, (resized,) = t([torch.rand(3, 64, 80)], [target])
    assert resized["masks"].shape == resized["occluder_masks"].shape == (2, 128, 160)
    assert torch.equal(resized["occluder_masks"][0], resized["masks"][1])


@pytest.mark.parametrize("min_size", [13, 26, 33, 42])
def test_the_transform_resizes_every_mask_on_the_pixel_grid_of_its_image_and_boxes(min_size):
    """torchvision's nearest resize samples pixel corners: masks and occluder masks sat half a pixel down and right of
    the bilinearly resized image and the scaled boxes (bench's train step and tests resize there)."""
    t = BilayerTransform(min_size, 1000, [0.0] * 3, [1.0] * 3).train()
    image = torch.zeros(3, 20, 20)
    image[:, 5:12, 5:12] = 1
    mask = torch.zeros(1, 20, 20, dtype=torch.uint8)
    mask[0, 5:12, 5:12] = 1
    target = {"boxes": torch.tensor([[5.0, 5.0, 12.0, 12.0]]), "labels": torch.tensor([1]), "masks": mask.clone(),
              "occluder_masks": mask.clone()}
    resized, out = t.resize(image, target)
    box_centre = float(out["boxes"][0, 0] + out["boxes"][0, 2]) / 2
    weight = resized[0].sum(0)
    image_centre = float((weight * (torch.arange(weight.numel()) + 0.5)).sum() / weight.sum())
    for key in ("masks", "occluder_masks"):
        cols = out[key][0].any(0).nonzero()[:, 0]
        centre = (int(cols.min()) + int(cols.max()) + 1) / 2
        assert abs(centre - box_centre) <= 0.4 and abs(centre - image_centre) <= 0.4, (key, centre, box_centre)


def test_resnet50_parameter_counts():
    rows = {(r["detector"], r["mask_head"]): r for r in parameter_report(91)}
    # torchvision's published counts for fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn / fcos_resnet50_fpn
    assert rows["faster-rcnn", "none"]["params"] == 41_755_286
    assert rows["faster-rcnn", "none"]["params_millions"] == 41.76 and rows["fcos", "fcn"]["params_millions"] == 34.92
    assert rows["faster-rcnn", "fcn"]["params"] == 44_401_393
    assert rows["fcos", "none"]["params"] == 32_269_600
    conv3, conv1 = 256 * 256 * 9 + 256, 256 * 256
    gcn = 3 * conv1 + 2 * 256  # theta, phi, W_g + LayerNorm
    predictors = 2 * (256 + 1) + 2 * (256 * 91 + 91)  # occluder mask/boundary, occludee mask/boundary (per class)
    bilayer = 2 * (3 * conv3 + gcn) + conv1 + predictors  # two layers + W_f
    for detector in ("faster-rcnn", "fcos"):
        assert rows[detector, "bilayer-gcn"]["head_params"] == bilayer == 4_047_544
        assert rows[detector, "fcn"]["head_params"] == 2_646_107
    original = {(r["detector"], r["mask_head"]): r for r in parameter_report(91, head_preset="original")}
    assert original["faster-rcnn", "bilayer-gcn"]["head_params"] == 6_296_580
    assert count_parameters(build_model(3, backbone="tiny")) < 1_000_000


def test_fcos_mask_branch_trains_on_its_detections_matched_to_gt_and_on_the_gt_boxes(monkeypatch):
    """As the released FCOS BCNet: the training RoIs are FCOS's own detections with box IoU >= 0.5 to a ground
    truth (that one's targets), followed by the ground-truth boxes; detections matching none are dropped."""
    torch.manual_seed(0)
    model = build_model(3, detector="fcos", backbone="tiny", min_size=64, max_size=96).train()
    images, targets = batch()  # sizes the transform keeps (64x80, 72x64)
    detected = [torch.tensor([[12.0, 10, 40, 40], [0, 0, 5, 5]]), torch.zeros(0, 4)]
    monkeypatch.setattr(model, "postprocess_detections", lambda outputs, anchors, sizes: [
        {"boxes": b, "scores": torch.ones(len(b)), "labels": torch.ones(len(b), dtype=torch.int64)} for b in detected])
    seen = {}

    def losses(features, boxes, image_shapes, targets, matched_idxs, labels):
        seen.update(boxes=boxes, matched=matched_idxs, labels=labels)
        return {}
    monkeypatch.setattr(model.mask_branch, "losses", losses)
    model(images, targets)
    gt = [t["boxes"] for t in targets]
    assert torch.equal(seen["boxes"][0], torch.cat([detected[0][:1], gt[0]]))
    assert torch.equal(seen["boxes"][1], gt[1])
    assert [m.tolist() for m in seen["matched"]] == [[0, 0, 1], [0, 1]]
    assert [x.tolist() for x in seen["labels"]] == [[1, 1, 2], [1, 2]]


def test_fcos_training_rois_without_ground_truth_are_none():
    from bcnet.fcos import training_rois

    boxes, matched = training_rois([torch.tensor([[0.0, 0, 9, 9]])], [torch.zeros(0, 4)])
    assert boxes[0].shape == (0, 4) and matched[0].shape == (0,) and matched[0].dtype == torch.int64


def test_fcos_training_rois_give_every_ground_truth_its_own_box_even_a_duplicate():
    """Two instances with the same box (a duplicate annotation, or an object and its occluder cut alike): each
    ground-truth RoI learns its own instance, so every instance trains at least once."""
    from bcnet.fcos import training_rois

    gt = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    boxes, matched = training_rois([torch.tensor([[0.0, 0, 10, 11], [20.0, 20, 30, 31]])], [gt])
    assert torch.equal(boxes[0][2:], gt)
    assert matched[0][2:].tolist() == [0, 1, 2] and matched[0][1].item() == 2


def test_fcos_training_rois_keep_a_detection_of_iou_exactly_0_5():
    from bcnet.fcos import training_rois

    gt = torch.tensor([[0.0, 0, 10, 10]])
    half = torch.tensor([[0.0, 0, 10, 20]])  # IoU 100 / 200
    boxes, matched = training_rois([torch.cat([half, torch.tensor([[0.0, 0, 10, 21]])])], [gt])
    assert torch.equal(boxes[0], torch.cat([half, gt])) and matched[0].tolist() == [0, 0]


def test_fcos_refuses_a_target_box_of_no_width():
    model = build_model(3, detector="fcos", backbone="tiny", min_size=64, max_size=96).train()
    images, targets = batch()
    targets[1]["boxes"][0, 2] = targets[1]["boxes"][0, 0]
    with pytest.raises(ValueError, match=r"^target 1 has a box with no width or height$"):
        model(images, targets)


def _target_and_truth(shape: str, size: int, canvas: int = 96, at: tuple[int, int] = (20, 30)):
    """An object of ``size`` px at ``at`` (y, x) on a canvas, its tight box and the project's 28x28 target of it."""
    from bcnet.targets import project_masks_on_boxes

    y, x = at
    truth = torch.zeros(1, canvas, canvas)
    if shape == "square":
        truth[0, y:y + size, x:x + size] = 1
    else:
        yy, xx = torch.meshgrid(torch.arange(canvas) + 0.5, torch.arange(canvas) + 0.5, indexing="ij")
        truth[0] = (((yy - y - size / 2) ** 2 + (xx - x - size / 2) ** 2) <= (size / 2) ** 2).float()
    rows, cols = truth[0].nonzero(as_tuple=True)
    box = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32)
    return truth[0].bool(), box, project_masks_on_boxes(truth, box, torch.tensor([0]))[:, None]


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


@pytest.mark.parametrize("shape, size", [("square", 8), ("square", 32), ("square", 64), ("square", 72), ("disc", 8),
                                         ("disc", 32)])
def test_a_predicted_mask_equal_to_its_training_target_is_pasted_back_onto_the_object(shape, size):
    """torchvision's paste counts a box one pixel wider: the target of an 8 px square came back as a 10 px square
    (IoU 0.67 with the object it was cut from). Sampled at pixel centres, it lands where it was cut."""
    truth, box, target = _target_and_truth(shape, size)
    pasted = paste_masks(target, box, (96, 96))[0, 0] > 0.5
    assert _iou(pasted, truth) >= (1.0 if shape == "square" else 0.97), _iou(pasted, truth)
    # the same through the model's transform, from an input resized 2x: boxes scaled back, then pasted
    transform = build_model(3, backbone="tiny", min_size=192, max_size=192).eval().transform
    out = transform.postprocess([{"boxes": box * 2, "labels": torch.tensor([1]), "scores": torch.tensor([1.0]),
                                  "masks": target}], [(192, 192)], [(96, 96)])[0]
    assert torch.equal(out["boxes"], box) and torch.equal(out["masks"][0, 0] > 0.5, pasted)
    extra = paste_extra_masks([{"boxes": box, "occluder_masks": target}], [(96, 96)])[0]["occluder_masks"]
    assert torch.equal(extra[0, 0] > 0.5, pasted)


def test_a_pasted_mask_keeps_its_rows_and_columns_in_a_box_wider_than_tall():
    """Symmetric masks in square boxes would pass the test above pasted transposed: a mask's left half, pasted into
    a 40 x 20 box, covers the box's left 20 columns and all of its rows."""
    left = torch.zeros(1, 1, 28, 28)
    left[..., :14] = 1
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[20:40, 10:30] = True
    assert torch.equal(paste_masks(left, torch.tensor([[10.0, 20.0, 50.0, 40.0]]), (64, 64))[0, 0] > 0.5, expected)


def test_paste_masks_of_empty_and_off_image_boxes():
    ones = torch.ones(3, 1, 28, 28)
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0], [-20.0, -20.0, -10.0, -10.0], [90.0, 2.0, 120.0, 10.75]])
    pasted = paste_masks(ones, boxes, (16, 96))
    assert pasted.shape == (3, 1, 16, 96)
    assert not pasted[0].any() and not pasted[1].any()  # no width; wholly outside the image
    # the third is cut at the image edge; its last row is the one whose centre (10.5) lies inside the box
    rows, cols = (pasted[2, 0] > 0.5).nonzero(as_tuple=True)
    assert (int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max())) == (90, 95, 2, 10)
    assert paste_masks(ones[:0], boxes[:0], (16, 96)).shape == (0, 1, 16, 96)


def test_paste_masks_of_bfloat16_probabilities_far_into_a_large_image_lands_as_float32_does():
    """Under autocast the head's probabilities are bfloat16, which holds whole numbers exactly only up to 256: pixel
    coordinates computed in it put a mask at x = 600 a few pixels off."""
    truth, box, target = _target_and_truth("square", 40, canvas=800, at=(700, 600))
    as_float = paste_masks(target, box, (800, 800))[0, 0] > 0.5
    as_bf16 = paste_masks(target.to(torch.bfloat16), box, (800, 800))
    assert as_bf16.dtype == torch.bfloat16 and torch.equal(as_bf16[0, 0] > 0.5, as_float)
    assert torch.equal(as_float, truth)


def test_the_edge_of_a_large_box_keeps_the_probability_of_its_outermost_bins():
    """Blended with zeros past the box, a 400 px box's outermost pixels came to about p / 2: at p = 0.9 whole edge
    rows and columns fell under 0.5, and even at p = 1 the corners of a box of 68 px or more."""
    truth, box, target = _target_and_truth("square", 400, canvas=420, at=(10, 10))
    pasted = paste_masks(target * 0.9, box, (420, 420))[0, 0]
    assert torch.equal(pasted > 0.5, truth) and float(pasted[10, 10]) == pytest.approx(0.9)
