"""bcnet.data and bcnet.transforms: targets from COCO-format sets, occluder masks, augmentation, sample order."""
from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import torch

from bcnet import data as bdata
from bcnet import transforms as T
from datasets import CATEGORIES, SCENES, load_annotations, save_annotations, scene_instances, write_dataset
from occsynth import masks as mask_ops
from occsynth import errors
from occsynth.errors import BadRecord, OccsynthError


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("set") / "set")


def _dataset(root, **kw):
    return bdata.CocoInstances(root / "annotations.json", root / "images", **kw)


def _label(category_id):
    return sorted(c["id"] for c in CATEGORIES).index(category_id) + 1


def test_targets_match_hand_made_masks_and_occluder_ids(dataset_dir):
    ds = _dataset(dataset_dir)
    assert len(ds) == 3 and ds.num_classes == len(CATEGORIES) + 1
    assert ds.category_ids == [1, 3, 5, 7, 9] and ds.label_to_category_id[2] == 3
    for index, scene in enumerate(SCENES):
        image, target = ds[index]
        h, w = scene["size"]
        insts = scene_instances(scene)
        assert image.shape == (3, h, w) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert target["image_id"] == index + 1
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(insts), h, w)
        assert target["labels"].dtype == torch.int64
        by_name = {inst["name"]: inst for inst in insts}
        for k, inst in enumerate(insts):
            assert np.array_equal(target["masks"][k].numpy().astype(bool), inst["visible"])
            assert int(target["labels"][k]) == _label(inst["category_id"])
            ys, xs = np.nonzero(inst["visible"])
            assert target["boxes"][k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            expected = np.zeros((h, w), bool)
            for name in inst["occluders"]:
                expected |= by_name[name]["visible"]
            assert np.array_equal(target["occluder_masks"][k].numpy().astype(bool), expected)


def test_box_rule_when_the_data_has_no_occluder_ids(tmp_path, dataset_dir):
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    for ann in data["annotations"]:
        del ann["occluder_ids"]
    save_annotations(root, data)
    _, target = _dataset(root)[1]
    # the rule reads the annotations' own bbox (x, y, w, h), as annotate-occluders does
    by_id = {a["id"]: a for a in data["annotations"]}
    boxes = np.array([by_id[int(i)]["bbox"] for i in target["annotation_ids"]], np.float64)
    boxes[:, 2:] += boxes[:, :2]
    masks = target["masks"].numpy().astype(bool)
    for i in range(len(boxes)):
        expected = np.zeros_like(masks[0])
        for j in range(len(boxes)):
            if i == j:
                continue
            lt = np.maximum(boxes[i, :2], boxes[j, :2])
            rb = np.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = np.prod(np.clip(rb - lt, 0, None))
            union = np.prod(boxes[i, 2:] - boxes[i, :2]) + np.prod(boxes[j, 2:] - boxes[j, :2]) - inter
            if inter / union > 0.05:
                expected |= masks[j]
        assert np.array_equal(target["occluder_masks"][i].numpy().astype(bool), expected)
    # image 2 has overlapping boxes, so the rule produced something to compare
    assert target["occluder_masks"].any()


def test_box_rule_gives_the_occluders_annotate_occluders_writes(tmp_path):
    """Training on a set without occluder ids = training on its annotate-occluders copy, also for a
    box that runs past the image border (the rule sees the annotation's box, not the clipped one)."""
    from occsynth.annotate import annotate_occluders
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    for ann in data["annotations"]:
        del ann["occluder_ids"]
    first = data["images"][0]
    edge = next(a for a in data["annotations"] if a["image_id"] == first["id"] and a["category_id"] == 5)
    x, y, w, h = edge["bbox"]
    edge["bbox"] = [x, y, first["width"] - x + 40, h + 20]   # E sticks far out of the image
    save_annotations(root, data)
    annotate_occluders(root / "annotations.json", root / "annotated.json", progress=False)
    plain = _dataset(root)
    annotated = bdata.CocoInstances(root / "annotated.json", root / "images")
    bbox_of = {a["id"]: a["bbox"] for a in data["annotations"]}
    differs_from_clipped = False
    for index in range(len(plain)):
        _, a = plain[index]
        _, b = annotated[index]
        assert a["annotation_ids"].tolist() == b["annotation_ids"].tolist()
        assert torch.equal(a["occluder_masks"], b["occluder_masks"])
        boxes = a["boxes"].numpy().astype(np.float64)
        clipped = bdata.occluders_of([], [], np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1))
        differs_from_clipped |= clipped != bdata.occluders_of([], [], [bbox_of[int(i)] for i in a["annotation_ids"]])
    assert differs_from_clipped, "the out-of-image box should change the rule's answer"


def test_occluder_ids_decide_only_when_every_instance_of_the_image_has_them_and_never_name_itself(tmp_path,
                                                                                                    dataset_dir):
    """An instance of image 2 without occluder_ids: BCNet's box rule decides for the whole image, as for a set
    with none; an instance whose occluder_ids name itself is not its own occluder."""
    def occluder_masks_of_image_2(data):
        save_annotations(tmp_path, data)
        return bdata.CocoInstances(tmp_path / "annotations.json", dataset_dir / "images")[1][1]["occluder_masks"]

    exact = _dataset(dataset_dir)[1][1]["occluder_masks"]
    data = load_annotations(dataset_dir)
    second = [a for a in data["annotations"] if a["image_id"] == 2]
    for ann in second:
        ann["occluder_ids"].append(ann["id"])
    assert torch.equal(occluder_masks_of_image_2(data), exact)
    by_rule = []
    for drop in (second[:1], second):
        for ann in drop:
            ann.pop("occluder_ids", None)
        by_rule.append(occluder_masks_of_image_2(data))
    assert torch.equal(by_rule[0], by_rule[1]) and not torch.equal(by_rule[0], exact)


def test_labels_follow_the_category_ids_in_id_order_whatever_order_the_file_lists_them(tmp_path):
    """Labels 1..K are the categories in id order (the module's rule): a file listing its categories backwards
    gave category 9 label 1 and category 1 label 5."""
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    data["categories"] = data["categories"][::-1]
    save_annotations(root, data)
    ds = _dataset(root)
    assert ds.category_ids == [1, 3, 5, 7, 9] and [c["id"] for c in ds.categories] == [1, 3, 5, 7, 9]
    _, target = ds[0]
    by_id = {a["id"]: a["category_id"] for a in data["annotations"]}
    assert target["labels"].tolist() == [_label(by_id[int(i)]) for i in target["annotation_ids"]]


def test_drop_empty_leaves_out_images_with_no_annotation_of_the_categories_learnt(dataset_dir):
    """Category 9 is listed but no annotation has it: with the categories [9], no image has an instance to learn."""
    ds = _dataset(dataset_dir, category_ids=[9], drop_empty=True)
    assert len(ds) == 0 and ds.without_instances == 3
    assert _dataset(dataset_dir, category_ids=[5], drop_empty=True).image_ids == [1, 2, 3]


def test_a_box_past_the_image_border_is_cut_at_it_and_one_only_touching_it_is_no_box(tmp_path):
    """Image 1 is 64 wide and 48 high. A bbox running past every side is the whole image; a bbox that starts at the
    right border (x = 64) covers no pixel of it: not a usable box, so the box is made from the mask (and counted)."""
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    first = [a for a in data["annotations"] if a["image_id"] == 1]
    first[0]["bbox"] = [-5.0, -7.0, 80.0, 60.0]
    first[1]["bbox"] = [64.0, 10.0, 5.0, 5.0]
    save_annotations(root, data)
    ds = _dataset(root)
    _, target = ds[0]
    assert target["boxes"][0].tolist() == [0.0, 0.0, 64.0, 48.0]
    x, y, w, h = mask_ops.bbox(mask_ops.decode(first[1]["segmentation"], 48, 64))
    assert target["boxes"][1].tolist() == [x, y, x + w, y + h]
    assert ds.skips.counts == {errors.MALFORMED_RECORD: 1}


def test_a_parsed_file_given_as_data_is_used_as_is_and_left_unchanged(dataset_dir):
    import copy
    data = load_annotations(dataset_dir)
    kept = copy.deepcopy(data)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]  # differs from the file
    given = _dataset(dataset_dir, data=data)
    assert data["annotations"] == [a for a in kept["annotations"] if a["image_id"] != 2]
    from_file = _dataset(dataset_dir)
    _, a = given[1]
    _, b = from_file[1]
    assert len(a["annotation_ids"]) == 0 < len(b["annotation_ids"])   # image 2 lost its annotations
    for index in (0, 2):
        assert torch.equal(given[index][1]["masks"], from_file[index][1]["masks"])


def test_crowd_degenerate_and_unsafe_records_are_left_out(tmp_path):
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    first = [a for a in data["annotations"] if a["image_id"] == 1]
    first[0]["iscrowd"] = 1
    first[1]["bbox"] = [3.0, 3.0, 0.0, 5.0]
    first[2]["segmentation"] = [[1.0, 2.0]]
    first[3]["bbox"] = [True, 1.0, 5.0, 5.0]                      # not a box (one rule: boxes.is_box)
    first[4]["bbox"] = [1000.0, 1000.0, 5.0, 5.0]                 # off the image
    data["images"][2]["file_name"] = "../outside.png"
    save_annotations(root, data)
    ds = _dataset(root)
    assert ds.image_ids == [1, 2]
    _, target = ds[0]
    # a good mask with a broken box is learned, its box made from the mask (and counted), as evaluation does
    kept = [first[1]["id"], first[3]["id"]] + [a["id"] for a in first[4:]]
    assert target["annotation_ids"].tolist() == kept
    for k, ann in ((0, first[1]), (1, first[3]), (2, first[4])):
        x, y, w, h = mask_ops.bbox(mask_ops.decode(ann["segmentation"], 48, 64))
        assert target["boxes"][k].tolist() == [x, y, x + w, y + h]
    assert ds.skips.counts == {"file_name points outside the image root": 1,
                               "degenerate or empty segmentation": 1, "malformed record": 3}
    with pytest.raises(BadRecord, match=rf"^{re.escape(str(root / 'annotations.json'))}: "):
        _dataset(root, strict=True)  # the error names the file the record is in


def test_a_file_name_too_long_to_look_up_is_a_missing_image_not_a_crash(tmp_path):
    """A file_name the file system cannot even look up (ENAMETOOLONG): bcnet train and evaluate stopped with
    'File name too long' instead of skipping the record as a missing image, as generate and build-cocoocc do."""
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    data["images"][2]["file_name"] = "x" * 300 + ".png"
    save_annotations(root, data)
    ds = _dataset(root)
    assert ds.image_ids == [1, 2] and ds.skips.counts == {"missing image file": 1}
    with pytest.raises(BadRecord, match="missing image file"):
        _dataset(root, strict=True)


def test_an_image_record_over_the_pixel_limit_is_skipped_before_anything_is_decoded(tmp_path, monkeypatch):
    """A record claiming 20000x20000 with a matching file was decoded in full, and each of its targets' masks cost
    as much again. Its height and width tell: it is skipped by reason when the set is read (--strict stops at it,
    naming the file and the record). The limit is lowered here instead: images 1 and 3 are 48x64, image 2 40x56."""
    from occsynth import coco

    root = write_dataset(tmp_path / "set")
    monkeypatch.setattr(mask_ops, "MAX_IMAGE_PIXELS", 40 * 56)
    decoded = []
    real = coco.cv2.imdecode
    monkeypatch.setattr(coco.cv2, "imdecode", lambda *args: decoded.append(1) or real(*args))
    ds = _dataset(root)
    assert ds.image_ids == [2]
    on_skipped = sum(a["image_id"] != 2 for a in load_annotations(root)["annotations"])
    assert ds.skips.counts == {"image too large": 2, "annotation of a skipped image": on_skipped}
    first = next(a["id"] for a in load_annotations(root)["annotations"] if a["image_id"] != 2)
    assert ds.skips.examples["annotation of a skipped image"] in (
        f"annotation {first}: annotation of a skipped image (image record {i}: image too large)" for i in (1, 3))
    assert ds.skips.examples["image too large"] == ("image record 1: image too large (48x64 pixels (height x width), "
                                                    "over the limit of 2,240)")
    image, target = ds[0]
    assert tuple(image.shape[1:]) == (40, 56) == tuple(target["masks"].shape[1:]) and len(decoded) == 1
    with pytest.raises(BadRecord) as raised:
        _dataset(root, strict=True)
    assert str(raised.value) == (f"{root / 'annotations.json'}: image record 1: image too large (48x64 pixels "
                                 "(height x width), over the limit of 2,240)")


def test_the_dataset_holds_its_annotations_packed_not_as_python_objects_that_loader_workers_would_copy(tmp_path):
    """COCO train's 860k annotations took 3 GB as Python objects in the training process, and each forked loader
    worker copied the pages of those it read and of all of them when its garbage collector ran (about 1 GB per
    worker): they are kept pickled in one byte array, each image's list a fresh copy when read."""
    import gc

    def objects_held(num_annotations):
        images = [{"id": k, "file_name": f"{k}.png", "height": 40, "width": 50} for k in (1, 2)]
        anns = [{"id": n, "image_id": 1 + n % 2, "category_id": 1, "bbox": [1, 2, 10, 10], "iscrowd": 0, "area": 100.0,
                 "segmentation": [[1, 2, 11, 2, 11, 12, 1, 12]]} for n in range(num_annotations)]
        path = tmp_path / f"{num_annotations}.json"
        path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
        gc.collect()
        before = len(gc.get_objects())
        ds = bdata.CocoInstances(path, tmp_path, check_files=False)
        gc.collect()
        return len(gc.get_objects()) - before, ds, anns

    objects_held(3)  # lazy imports and caches on the first call
    few, _, _ = objects_held(4)
    many, ds, anns = objects_held(400)
    assert many - few < 20  # 4 containers per annotation (800 more) before
    assert len(ds.annotations) == 2 and ds.annotations[1] == [a for a in anns if a["image_id"] == 2]
    assert ds.annotations[-1] == ds.annotations[1] and ds.annotations[0] is not ds.annotations[0]
    assert [len(image_anns) for image_anns in ds.annotations] == [200, 200]
    with pytest.raises(IndexError):
        ds.annotations[2]


def test_a_repeated_annotation_id_keeps_the_first_record_and_is_counted(tmp_path):
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    first, second = [a for a in data["annotations"] if a["image_id"] == 1][:2]
    second["id"] = first["id"]  # occluder ids could not tell the two apart
    save_annotations(root, data)
    ds = _dataset(root)
    assert [a["id"] for a in ds.annotations[0]].count(first["id"]) == 1 and second not in ds.annotations[0]
    assert ds.skips.counts == {"duplicate id": 1}
    with pytest.raises(BadRecord, match=rf"annotations.json: annotation {first['id']}: duplicate id"):
        _dataset(root, strict=True)



@pytest.mark.parametrize("mode", bdata.MODES)
def test_a_stray_short_polygon_part_does_not_lose_the_instance(tmp_path, mode):
    """detectron2's rule (masks.check_polygons): an outline with a 4-number part first (pycocotools would read every
    part as a box) and a 3-number part last is learned as the outline alone, up front (strict) and when loaded."""
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    key = "amodal_segmentation" if mode == "amodal" else "segmentation"
    image = next(im for im in data["images"] if im["id"] == 1)
    ann = next(a for a in data["annotations"] if a["image_id"] == 1 and not a.get("iscrowd"))
    outline = mask_ops.to_polygons(mask_ops.decode(ann[key], image["height"], image["width"]))
    ann[key] = outline
    save_annotations(root, data)
    clean = _dataset(root, mode=mode)
    _, want = clean.load(0)
    ann[key] = [[2, 2, 9, 9], *outline, [1, 2, 3]]
    save_annotations(root, data)
    ds = _dataset(root, mode=mode, strict=True)
    ds.check_annotations()
    _, got = ds.load(0)
    assert ds.skips.counts == {} and clean.skips.counts == {}
    assert got.keys() == want.keys() and ann["id"] in got["annotation_ids"].tolist()
    for name in want:
        assert np.array_equal(np.asarray(got[name]), np.asarray(want[name])), name
    k = got["annotation_ids"].tolist().index(ann["id"])
    assert np.array_equal(got["masks"][k], mask_ops.decode(outline, image["height"], image["width"]))


@pytest.mark.parametrize("mode", bdata.MODES)
def test_a_broken_first_record_of_an_id_gives_way_to_its_good_twin(tmp_path, mode):
    """Training keeps an id's first usable record, as every reader does: the object is learned from the twin, not
    lost when the broken first record's mask fails at load. Amodal training judges the amodal mask too."""
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    at, good = next((i, a) for i, a in enumerate(data["annotations"]) if a["image_id"] == 1)
    key = "amodal_segmentation" if mode == "amodal" else "segmentation"
    data["annotations"].insert(at, {**good, key: [[0, 0, 1, 1]]})
    save_annotations(root, data)
    ds = _dataset(root, mode=mode)
    assert ds.annotations[0][0] == good and ds.annotations[0].count(good) == 1
    where = f"annotation {good['id']} '{key}'"
    assert ds.skips.examples == {"degenerate or empty segmentation": f"{where}: degenerate or empty segmentation "
                                                                      "(polygon has no usable part: its one part has 4 "
                                                                      "coordinates (a part needs an even number >= 6))"}
    _, target = ds.load(0)
    assert target["annotation_ids"].tolist().count(good["id"]) == 1 and ds.skips.counts == {
        "degenerate or empty segmentation": 1}
    with pytest.raises(BadRecord, match=rf"annotations.json: {where}: degenerate"):
        _dataset(root, mode=mode, strict=True)



@pytest.mark.parametrize("mode", bdata.MODES)
def test_a_first_record_of_an_id_whose_mask_is_empty_gives_way_to_its_twin(tmp_path, mode):
    """An empty first record won the id, its twin was dropped as a duplicate, and loading skipped the empty one: the
    object was lost. Of an id that repeats, an empty mask is no usable one: the twin is learned, and the empty record
    counted once, as loading counts an empty mask. Amodal training judges the amodal mask too."""
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    at, good = next((i, a) for i, a in enumerate(data["annotations"]) if a["image_id"] == 1)
    image = next(im for im in data["images"] if im["id"] == 1)
    key = "amodal_segmentation" if mode == "amodal" else "segmentation"
    empty = {"size": [image["height"], image["width"]], "counts": [image["height"] * image["width"]]}
    data["annotations"].insert(at, {**good, key: empty})
    save_annotations(root, data)
    ds = _dataset(root, mode=mode)
    assert ds.annotations[0][0] == good and ds.annotations[0].count(good) == 1
    where = f"annotation {good['id']} '{key}'"
    assert ds.skips.examples == {errors.DEGENERATE_MASK: f"{where}: {errors.DEGENERATE_MASK} (empty mask)"}
    ds.check_annotations()
    _, target = ds.load(0)
    assert target["annotation_ids"].tolist().count(good["id"]) == 1 and ds.skips.counts == {errors.DEGENERATE_MASK: 1}
    _, want = _dataset(write_dataset(tmp_path / "clean"), mode=mode).load(0)  # as if the empty record were not there
    for name in want:
        assert np.array_equal(np.asarray(target[name]), np.asarray(want[name])), name
    with pytest.raises(BadRecord, match=rf"annotations.json: {re.escape(where)}: degenerate or empty segmentation "
                                        r"\(empty mask\)$"):
        _dataset(root, mode=mode, strict=True)

def test_amodal_mode_learns_the_complete_masks(dataset_dir):
    ds = _dataset(dataset_dir, mode="amodal")
    _, target = ds[0]
    insts = scene_instances(SCENES[0])
    for k, inst in enumerate(insts):
        assert np.array_equal(target["masks"][k].numpy().astype(bool), inst["amodal"])
        visible_union = np.zeros_like(inst["visible"])
        for name in inst["occluders"]:
            visible_union |= next(i for i in insts if i["name"] == name)["visible"]
        assert np.array_equal(target["occluder_masks"][k].numpy().astype(bool), visible_union)
    # C is a disc centred at (26, 20) radius 9, partly hidden: its box is the disc's
    c = [i["name"] for i in insts].index("C")
    assert target["boxes"][c].tolist() == [17, 11, 36, 30]
    with pytest.raises(OccsynthError):
        _dataset(dataset_dir, mode="both")


def test_amodal_mode_refuses_an_annotation_without_an_amodal_mask(tmp_path, dataset_dir):
    data = load_annotations(dataset_dir)
    victim = next(a for a in data["annotations"] if a["image_id"] == 1)
    del victim["amodal_segmentation"]  # learning its visible mask instead would mix two kinds of mask
    ann = tmp_path / "partial.json"
    ann.write_text(json.dumps(data))
    words = (f"{ann}: annotation {victim['id']} (image 1) has no amodal_segmentation: amodal training needs one "
             "on every non-crowd annotation (train in visible mode")
    for given in (None, data):  # read from the file, or parsed already
        with pytest.raises(OccsynthError) as caught:
            bdata.CocoInstances(ann, dataset_dir / "images", mode="amodal", data=given)
        assert str(caught.value).startswith(words), str(caught.value)
    visible = bdata.CocoInstances(ann, dataset_dir / "images")  # visible mode does not need one
    assert victim["id"] in visible[0][1]["annotation_ids"].tolist()
    victim["iscrowd"] = 1  # a crowd region is no target: it needs none
    ann.write_text(json.dumps(data))
    _, target = bdata.CocoInstances(ann, dataset_dir / "images", mode="amodal")[0]
    _, full = _dataset(dataset_dir, mode="amodal")[0]
    kept = full["annotation_ids"] != victim["id"]
    assert target["annotation_ids"].tolist() == full["annotation_ids"][kept].tolist()
    assert torch.equal(target["masks"], full["masks"][kept])  # the others' amodal masks


def test_unknown_category_mapping_is_refused(dataset_dir):
    with pytest.raises(OccsynthError, match="no categories with ids"):
        _dataset(dataset_dir, category_ids=[1, 2])
    ds = _dataset(dataset_dir, category_ids=[7, 1])  # e.g. a checkpoint's mapping
    _, target = ds[0]
    assert set(target["labels"].tolist()) == {1, 2}  # 7 -> 1, 1 -> 2; others are not targets


def test_resize_and_flip_move_boxes_and_masks_together(dataset_dir):
    image, target = _dataset(dataset_dir).load(0)  # 48 x 64
    rng = np.random.default_rng(0)
    img2, t2 = T.ResizeShortSide(96, 200)(image, target, rng)
    assert img2.shape == (96, 128, 3) and t2["masks"].shape[1:] == (96, 128)
    assert np.allclose(t2["boxes"], target["boxes"] * 2)
    assert np.array_equal(t2["masks"][:, ::2, ::2], target["masks"])
    img3, t3 = T.ResizeShortSide(600, 80)(image, target, rng)  # long side caps at 80
    assert img3.shape[:2] == (60, 80)
    flipped_img, f = T.HorizontalFlip(1.0)(image, target, rng)
    assert np.array_equal(flipped_img, image[:, ::-1])
    for key in ("masks", "occluder_masks"):
        assert np.array_equal(f[key], target[key][:, :, ::-1])
    for box, mask in zip(f["boxes"], f["masks"]):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    same_img, same = T.HorizontalFlip(0.0)(image, target, rng)
    assert same_img is image and same is target
    jitter = T.ResizeShortSide(0, 1000, jitter=(50, 60))
    shorts = {jitter(image, target, np.random.default_rng(s))[0].shape[0] for s in range(40)}
    assert shorts <= set(range(50, 61)) and len(shorts) > 3


def test_resize_scales_box_x_by_the_width_and_y_by_the_height_factor():
    """Rounding makes the two factors differ (7 x 10 to a short side of 10 is 10 x 14: x1.4 across, x10/7 down): the
    box of the whole image stays the whole resized image, as its mask does."""
    target = {"boxes": np.array([[0, 0, 10, 7]], np.float32), "masks": np.ones((1, 7, 10), bool)}
    image, out = T.ResizeShortSide(10, 100)(np.zeros((7, 10, 3), np.uint8), target, np.random.default_rng(0))
    assert image.shape[:2] == out["masks"].shape[1:] == (10, 14) and out["masks"].all()
    np.testing.assert_allclose(out["boxes"], [[0, 0, 14, 10]], rtol=1e-6)


def test_sample_stream_is_a_function_of_seed_and_draw(dataset_dir):
    ds = _dataset(dataset_dir, transforms=T.build_transforms(True, 40, 80, (30, 50), 0.5))
    a, b = bdata.SampleStream(ds, 7), bdata.SampleStream(ds, 7)
    for k in (5, 0, 3, 1):
        ia, ta = a[k]
        ib, tb = b[k]
        assert torch.equal(ia, ib) and torch.equal(ta["masks"], tb["masks"])
    epoch0 = sorted(a.index(k) for k in range(3))
    assert epoch0 == [0, 1, 2]  # every image once per epoch
    assert T.build_transforms(False) is None


def test_each_epoch_draws_the_images_in_a_new_order_and_each_draw_augments_anew(dataset_dir):
    """Draw k reads permutation(seed, epoch)[k % n] and augments with a generator of (seed, k): the order changes from
    epoch to epoch (it was the same every epoch with the epoch left out of the seed), and an image drawn again gets
    another scale and flip (it got the same ones every time with k left out)."""
    ds = _dataset(dataset_dir, transforms=T.build_transforms(True, 40, 80, (30, 50), 0.5))
    stream = bdata.SampleStream(ds, 7)
    orders = [tuple(stream.index(k) for k in range(3 * epoch, 3 * epoch + 3)) for epoch in range(6)]
    assert all(sorted(order) == [0, 1, 2] for order in orders) and len(set(orders)) > 1
    draws = [k for k in range(18) if stream.index(k) == 0]  # image 1, once an epoch
    assert len(draws) == 6
    pictures = {stream[k][0].numpy().tobytes() for k in draws}
    assert len(pictures) > 1


def test_rank_draws_shard_the_same_stream():
    single = bdata.rank_draws(2, 5, 8)
    assert single == list(range(16, 40))
    shards = [bdata.rank_draws(2, 5, 8, rank=r, world_size=2, accumulate=2) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == single
    assert shards[0][:2] == [16, 17] and shards[1][:2] == [18, 19] and shards[0][2:4] == [20, 21]
    with pytest.raises(OccsynthError, match="split evenly"):
        bdata.micro_batch_size(6, 4, 1)


def test_train_loader_draws_lazily_so_a_long_run_starts_at_once(dataset_dir):
    """An extra zero in --iterations: the loader listed every draw of the run before the first step (10^9 of them
    kept the run silent for minutes until memory ran out). The draws are computed as they are read."""
    ds = _dataset(dataset_dir, drop_empty=True)
    tracemalloc.start()
    try:
        loader = bdata.train_loader(ds, 2, 0, 10, 10 ** 6)
        first = list(itertools.islice(iter(loader.sampler), 4))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first == [20, 21, 22, 23] and len(loader.sampler) == 2 * (10 ** 6 - 10)
    assert peak < 1_000_000, peak  # the list took 80 MB here
    assert list(bdata.RankDraws(2, 5, 8, rank=1, world_size=2, accumulate=2)) == bdata.rank_draws(2, 5, 8, 1, 2, 2)
    assert len(bdata.RankDraws(2, 5, 8, rank=1, world_size=2, accumulate=2)) == len(bdata.rank_draws(2, 5, 8, 1, 2, 2))


def test_train_loader_batches(dataset_dir):
    ds = _dataset(dataset_dir, drop_empty=True)
    batches = list(bdata.train_loader(ds, 2, 0, 1, 3))
    assert len(batches) == 2
    images, targets = batches[0]
    assert len(images) == 2 and {"boxes", "labels", "masks", "occluder_masks"} <= set(targets[0])


def test_a_set_with_nothing_to_learn_says_why(tmp_path):
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    for ann in data["annotations"]:
        ann["iscrowd"] = 1
    save_annotations(root, data)
    with pytest.raises(OccsynthError) as exc:
        bdata.require_training_images(_dataset(root, drop_empty=True))
    assert str(exc.value) == (f"{root / 'annotations.json'}: no usable training images (3 images with no instance "
                              "to learn: no annotation, or only crowd ones or ones of unknown categories)")
    wrong_root = bdata.CocoInstances(root / "annotations.json", tmp_path, drop_empty=True)  # the set's folder
    with pytest.raises(OccsynthError, match=r"no usable training images \(skipped 3 bad records: missing image file=3; e\.g\. .*\); "
                                            r"is image_root/--images the folder that the file_name entries are relative to\?$"):
        bdata.require_training_images(wrong_root)


def test_train_loader_workers_start_watching_the_training_process(dataset_dir):
    ds = _dataset(dataset_dir, drop_empty=True)
    loader = bdata.train_loader(ds, 2, 0, 1, 3, workers=2)
    assert loader.worker_init_fn.func is bdata.end_with_parent and loader.worker_init_fn.args == (os.getpid(),)
    assert [len(images) for images, _ in loader] == [2, 2]      # the watch does not end a worker of a live run
    assert bdata.train_loader(ds, 2, 0, 1, 3).worker_init_fn is None


def _starts_then_writes(parent_pid, marker):
    bdata.end_with_parent(parent_pid, 0)
    marker.write_text("went on")


def test_a_loader_worker_whose_training_process_is_gone_ends_before_waiting_for_work(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    fork = multiprocessing.get_context("fork")
    for parent, marker in ((gone.pid, tmp_path / "orphan"), (os.getpid(), tmp_path / "child")):
        worker = fork.Process(target=_starts_then_writes, args=(parent, marker))
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0
    assert not (tmp_path / "orphan").exists() and (tmp_path / "child").read_text() == "went on"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_loader_worker_dies_with_a_training_process_killed_outright(tmp_path):
    """kill -9 of the training process leaves no worker behind waiting for work (torch's own watch misses
    a parent killed while its workers start)."""
    script = tmp_path / "train.py"
    script.write_text("import multiprocessing, os, sys, time\n"
                      "from bcnet.data import end_with_parent\n"
                      "def work(parent):\n"
                      "    end_with_parent(parent, 0)\n"
                      "    open(sys.argv[1], 'w').write(str(os.getpid()))\n"
                      "    time.sleep(600)\n"
                      "if __name__ == '__main__':\n"
                      "    multiprocessing.get_context('fork').Process(target=work, args=(os.getpid(),)).start()\n"
                      "    time.sleep(600)\n")
    pid_file = tmp_path / "worker.pid"
    training = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        assert bdata.process_running(worker)
    finally:
        training.kill()
        training.wait()
    deadline = time.monotonic() + 30
    while bdata.process_running(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    if bdata.process_running(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its training process")


def test_read_gives_the_image_and_its_record(dataset_dir):
    ds = _dataset(dataset_dir)
    image, info = ds.read(2)
    assert image.shape == (3, 48, 64) and info == {"image_id": 3, "orig_size": (48, 64)}
    json.dumps(info)


def test_sample_stream_skips_a_corrupt_image_counting_it_once(tmp_path):
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    data["annotations"][0]["segmentation"] = [[1, 1, 5, 5]]  # image 1: degenerate polygon
    save_annotations(root, data)
    (root / "images" / "000000000002.png").write_bytes(b"corrupt")
    ds = _dataset(root)
    stream = bdata.SampleStream(ds, 3)
    order = [stream.index(k) for k in range(3)]
    bad_draw = order.index(1)  # the draw that lands on the corrupt image (dataset index 1 = image 2)
    image, target = stream[bad_draw]
    assert target["image_id"] == [1, 2, 3][order[(bad_draw + 1) % 3]]  # the next image of the epoch instead
    for k in range(9):  # three epochs
        stream[k]
    assert ds.skips.counts == {"unreadable or corrupt image": 1, "degenerate or empty segmentation": 1}
    assert stream[bad_draw][1]["image_id"] == target["image_id"]  # still a function of (seed, k)
    strict = bdata.SampleStream(_dataset(root, strict=True), 3)
    with pytest.raises(BadRecord, match="000000000002.png"):
        strict[bad_draw]
    for name in ("000000000001.png", "000000000003.png"):
        (root / "images" / name).write_bytes(b"corrupt")
    with pytest.raises(OccsynthError, match="none of the 3 training images could be read"):
        bdata.SampleStream(_dataset(root), 3)[0]


def test_check_annotations_finds_what_loading_would_refuse_without_loading(tmp_path):
    """A strict training run checks every instance up front (bcnet train --strict): the amodal mask in amodal mode,
    and a box that loading would remake from the mask; crowd annotations are no instances, so not checked."""
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    anns = data["annotations"]
    anns[0].update(iscrowd=1, segmentation=[[1.0, 2.0]])                   # a crowd region: not learnt
    anns[1]["amodal_segmentation"] = {"size": [48, 64], "counts": "xyz"}   # not pycocotools' compressed form
    save_annotations(root, data)
    _dataset(root, strict=True).check_annotations()  # visible mode: the amodal masks are not read
    with pytest.raises(BadRecord) as raised:
        _dataset(root, strict=True, mode="amodal").check_annotations()
    assert str(raised.value) == (f"{root / 'annotations.json'}: annotation {anns[1]['id']} 'amodal_segmentation': "
                                 "degenerate or empty segmentation (RLE counts string is not pycocotools' "
                                 "compressed form)")
    anns[1]["amodal_segmentation"] = anns[1]["segmentation"]
    anns[2]["bbox"] = [1000.0, 1000.0, 5.0, 5.0]                          # off the image
    save_annotations(root, data)
    with pytest.raises(BadRecord, match=rf"annotation {anns[2]['id']}: malformed record \(bbox \[1000.0, 1000.0, "
                                        r"5.0, 5.0\] is not a usable box\)$"):
        _dataset(root, strict=True, mode="amodal").check_annotations()
    lenient = _dataset(root)
    lenient.check_annotations()
    assert lenient.skips.counts == {"malformed record": 1}
    assert "(bbox [1000.0, 1000.0, 5.0, 5.0] is not a usable box; recomputed from the mask)" in lenient.skips.summary()
    # a polygon of valid coordinates that encloses no pixel: found up front too, not when its image is drawn
    anns[2]["bbox"] = anns[1]["bbox"]
    anns[3]["segmentation"] = [[10.0, 10.0, 10.2, 10.0, 10.2, 10.2, 10.0, 10.2]]
    save_annotations(root, data)
    with pytest.raises(BadRecord, match=rf"annotation {anns[3]['id']} 'segmentation': degenerate or empty "
                                        r"segmentation \(empty mask\)$"):
        _dataset(root, strict=True).check_annotations()
    lenient = _dataset(root)
    lenient.check_annotations()
    assert lenient.skips.counts == {errors.DEGENERATE_MASK: 1}
    index = next(i for i, image in enumerate(lenient.images) if image["id"] == anns[3]["image_id"])
    assert anns[3]["id"] not in lenient.load(index)[1]["annotation_ids"].tolist()  # loading refuses the same one


@pytest.mark.parametrize("segmentation, reason", [
    ({"size": 5, "counts": "xyz"}, errors.MALFORMED_RECORD),            # a size that is no [h, w]: a TypeError
    ({"size": [48, 64]}, errors.DEGENERATE_MASK),                       # no counts
    ({"size": [24, 64], "counts": "xyz"}, errors.MASK_SIZE_MISMATCH),
    ("not a mask", errors.DEGENERATE_MASK),
])
def test_a_malformed_segmentation_is_skipped_when_loaded_as_the_strict_check_refuses_it(tmp_path, segmentation,
                                                                                      reason):
    """Loading a sample decodes its masks through the same check as --strict's up-front one: a segmentation
    that is no mask is a skipped record with its reason, not a TypeError from inside pycocotools."""
    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    first = [a for a in data["annotations"] if a["image_id"] == 1]
    first[0]["segmentation"] = segmentation
    save_annotations(root, data)
    ds = _dataset(root)
    _, target = ds[0]
    assert first[0]["id"] not in target["annotation_ids"].tolist()
    assert target["annotation_ids"].tolist() == [a["id"] for a in first[1:] if not a.get("iscrowd")]
    assert ds.skips.counts == {reason: 1}
    with pytest.raises(BadRecord, match=re.escape(f"annotation {first[0]['id']} 'segmentation': {reason}")):
        _dataset(root, strict=True).check_annotations()


def test_packed_lists_index_as_a_list_does_and_refuse_what_is_no_index():
    packed = bdata.PackedLists([[{"id": 1}], [], [{"id": 2}, {"id": 3}]])
    assert [packed[k] for k in (0, 1, 2)] == [[{"id": 1}], [], [{"id": 2}, {"id": 3}]]
    assert [packed[k] for k in (-1, -2, -3)] == [[{"id": 2}, {"id": 3}], [], [{"id": 1}]]
    assert packed[np.int64(2)] == packed[2]
    for past in (3, -4):
        with pytest.raises(IndexError):
            packed[past]
    with pytest.raises(TypeError, match="PackedLists indices must be integers, not slice"):
        packed[0:2]
    assert len(bdata.PackedLists()) == 0
