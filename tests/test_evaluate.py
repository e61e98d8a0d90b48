"""bcnet.evaluate: agrees with pycocotools run by hand; perfect detections score 1; occlusion splits."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bcnet import evaluate as E
from bcnet.data import CocoInstances
from datasets import write_dataset
from occsynth import errors
from occsynth import masks as mask_ops
from occsynth.errors import BadRecord, OccsynthError, SkipLog

H = W = 40


def rect(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def gt_set() -> dict:
    """Image 1: one isolated object. Image 2: two objects whose boxes overlap (IoU 225/575)."""
    shapes = [(1, 1, (2, 2, 12, 12)), (2, 1, (5, 5, 25, 25)), (2, 2, (10, 10, 30, 30)), (2, 1, (32, 30, 39, 39))]
    anns = []
    for k, (image_id, cat, box) in enumerate(shapes):
        m = rect(*box)
        anns.append({"id": k + 1, "image_id": image_id, "category_id": [10, 20][cat - 1],
                     "segmentation": mask_ops.encode(m), "area": float(m.sum()), "bbox": mask_ops.bbox(m),
                     "iscrowd": 0})
    anns[3]["iscrowd"] = 1  # a crowd region: neither a target nor in any split
    anns[0]["occlusion_ratio"], anns[1]["occlusion_ratio"], anns[2]["occlusion_ratio"] = 0.0, 0.2, 0.5
    return {"images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in (1, 2)],
            "annotations": anns, "categories": [{"id": 10, "name": "a"}, {"id": 20, "name": "b"}]}


def det(image_id, category_id, mask, score, box=None):
    return {"image_id": image_id, "category_id": category_id, "score": score,
            "bbox": box if box is not None else mask_ops.bbox(mask), "segmentation": mask_ops.encode(mask)}


def by_hand(gt: dict, results: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        drop = "segmentation" if iou_type == "bbox" else "bbox"
        coco_dt = coco_gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(results)])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def save_tiny_checkpoint(path: Path) -> Path:
    """An untrained tiny model (seeded) at 48x64 px as a checkpoint of categories 1, 3, 5, 7, 9 (write_dataset's)."""
    from bcnet import checkpoint as ckpt
    from bcnet import train as T

    schedule = T.load_schedule("schedule-tiny", {"short": 48, "long_max": 64})
    config = T.model_config(schedule)
    torch.manual_seed(0)
    ckpt.save_checkpoint(path, model=T.build(6, config), iteration=0, schedule=schedule,
                         model_config={"num_classes": 6, **config}, category_ids=[1, 3, 5, 7, 9], rng=False)
    return path


def test_matches_pycocotools_by_hand():
    gt = gt_set()
    results = [det(1, 10, rect(2, 2, 11, 12), 0.9),
               det(1, 10, rect(20, 20, 30, 30), 0.95),            # false positive, highest score
               det(2, 10, rect(6, 5, 25, 24), 0.8, box=[5.0, 5.0, 10.0, 10.0]),
               det(2, 20, rect(10, 12, 30, 30), 0.3),
               det(2, 20, rect(8, 8, 20, 20), 0.6),               # poor match
               det(2, 10, rect(33, 31, 38, 38), 0.99)]            # on the crowd region: ignored
    out = E.evaluate(gt, results)
    for iou_type in ("bbox", "segm"):
        expected = by_hand(gt, results, iou_type)
        assert [out[iou_type][k] for k in E.STAT_NAMES] == [float(v) for v in expected[:6]]
    assert 0 < out["segm"]["AP"] < 1 and out["segm"]["AP"] != out["bbox"]["AP"]
    assert out["images"] == 2 and out["detections"] == 6


def test_perfect_detections_give_ap_one():
    gt = gt_set()
    results = [det(a["image_id"], a["category_id"], mask_ops.decode(a["segmentation"], H, W), 0.9)
               for a in gt["annotations"] if not a["iscrowd"]]
    out = E.evaluate(gt, results)
    assert out["bbox"]["AP"] == 1.0 and out["segm"]["AP"] == 1.0 and out["segm"]["AP50"] == 1.0
    assert out["segm"]["APs"] == 1.0 and out["segm"]["APm"] == -1.0  # all objects are small
    for split in ("segm_by_box_overlap", "segm_by_occlusion_ratio"):
        for entry in out[split].values():
            # pycocotools divides by tp + fp + eps: one hit scores 1 - 2e-16
            assert entry["AP"] == -1.0 or entry["AP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("first_id", [0, 1, 1000])
def test_the_scores_do_not_depend_on_the_annotation_ids(first_id):
    """COCOeval marks a detection matched to ground-truth id 0 as unmatched: a file numbering its annotations from
    0 (valid COCO) scored a perfect model 0.875 instead of 1 (its match with annotation 0 a false positive)."""
    gt = gt_set()
    for k, a in enumerate(gt["annotations"]):
        a["id"] = first_id + k
    results = [det(a["image_id"], a["category_id"], mask_ops.decode(a["segmentation"], H, W), 0.9)
               for a in gt["annotations"] if not a["iscrowd"]]
    out = E.evaluate(gt, results)
    assert out["bbox"]["AP"] == 1.0 and out["segm"]["AP"] == 1.0
    assert out["segm_by_occlusion_ratio"]["[0,0.1)"]["AP"] == pytest.approx(1.0, abs=1e-12)
    imperfect = [det(1, 10, rect(2, 2, 11, 12), 0.9), det(2, 10, rect(6, 5, 25, 24), 0.8),
                 det(2, 20, rect(8, 8, 20, 20), 0.6)]
    numbered_from_one = gt_set()
    assert E.evaluate(gt, imperfect)["segm"] == E.evaluate(numbered_from_one, imperfect)["segm"]
    assert [a["id"] for a in gt["annotations"]] == list(range(first_id, first_id + 4))  # the caller's data as it was


def test_a_category_the_model_knows_by_another_name_is_said_not_refused():
    """Models and sets are matched by category id: a thing/stuff model scored on a set whose ids 10 and 20 are
    other classes is scored as if they were its own, so the report names them."""
    gt = gt_set()
    results = [det(a["image_id"], a["category_id"], mask_ops.decode(a["segmentation"], H, W), 0.9)
               for a in gt["annotations"] if not a["iscrowd"]]
    same = E.evaluate(gt, results, category_ids=[10, 20], category_names={10: "A", 20: "b"})  # case aside
    assert "named_otherwise" not in same["categories"] and same["segm"]["AP"] == 1.0
    other = E.evaluate(gt, results, category_ids=[10, 20], category_names={10: "thing", 20: "b"})
    assert other["categories"]["named_otherwise"] == ["10 (model: thing, set: a)"] and other["segm"]["AP"] == 1.0
    table = E.markdown_table({"val": other})
    assert "\nval: categories the model knows by other names (scored as the same class, by id): " \
           "10 (model: thing, set: a).\n" in table
    unnamed = E.evaluate(gt, results, category_ids=[10, 20], category_names={})  # an older checkpoint: no names
    assert "named_otherwise" not in unnamed["categories"]


def test_category_records_pycocotools_cannot_use_are_neither_scored_nor_copied_into_the_report():
    """A category that is no object or has no integer id crashed the scoring after every prediction had run; a NaN
    name was copied into results.json (then no JSON); a repeated id was scored twice and named as the last record."""
    gt = gt_set()
    gt["categories"] += ["junk", {"id": [11], "name": "x"}, {"id": 30, "name": float("nan")}, {"id": 10, "name": "zzz"}]
    results = [det(a["image_id"], a["category_id"], mask_ops.decode(a["segmentation"], H, W), 0.9)
               for a in gt["annotations"] if not a["iscrowd"]]
    out = E.evaluate(gt, results, category_ids=[10, 20], category_names={10: "a", 20: "b"})
    assert out["categories"] == {"scored": 2, "in_annotations": 3, "not_scored": [30]}
    assert out["segm"]["AP"] == 1.0
    json.dumps(out, allow_nan=False)


def test_a_model_of_fewer_categories_is_scored_on_the_categories_it_knows():
    """A checkpoint trained on category 10 alone, evaluated on a set of 10 and 20: pycocotools averaged AP over
    both, so a perfect model scored 0.5 (AP 0 for the class it never learnt). With the model's category_ids it is
    scored on category 10, as pycocotools does over that subset; the other objects still count as occluders."""
    gt = gt_set()
    results = [det(a["image_id"], a["category_id"], mask_ops.decode(a["segmentation"], H, W), 0.9)
               for a in gt["annotations"] if not a["iscrowd"] and a["category_id"] == 10]
    everything = E.evaluate(gt, results)
    known = E.evaluate(gt, results, category_ids=[10])
    assert everything["segm"]["AP"] == pytest.approx(0.5) and "categories" not in everything
    assert known["segm"]["AP"] == 1.0 and known["bbox"]["AP"] == 1.0
    assert known["categories"] == {"scored": 1, "in_annotations": 2, "not_scored": ["b"]}
    # the levels still come from every object (2 overlaps 3, of category 20), but count the scored ones only
    assert everything["segm_by_box_overlap"]["[0.3,1]"]["instances"] == 2
    assert known["segm_by_box_overlap"]["[0.3,1]"]["instances"] == 1
    assert [e["instances"] for e in known["segm_by_occlusion_ratio"].values()] == [1, 1, 0]
    table = E.markdown_table({"val": known, "all": everything})
    assert "\nval: the model scores 1 of the set's 2 categories; not scored: b.\n" in table
    assert "all: the model scores" not in table and "| val | max box IoU [0.3,1] | 1 | 100.0 |" in table
    coco = {"scored": 1, "in_annotations": 80, "not_scored": [f"c{i}" for i in range(2, 81)]}
    assert "not scored: c2, c3, c4, c5, c6, c7, c8, c9 and 71 more." in E.markdown_table({"val": {"categories": coco}})
    # a results.json written before the names were kept (a finished train-synthetic stage is read again)
    older = E.markdown_table({"val": {"categories": {"scored": 1, "in_annotations": 2}}})
    assert "\nval: the model scores 1 of the set's 2 categories.\n" in older and "not scored: " not in older
    assert E.evaluate(gt, results, category_ids=[10, 20, 30])["segm"]["AP"] == pytest.approx(0.5)
    with pytest.raises(OccsynthError, match=r"share no category with the model \(it knows \[30, 40\]\)"):
        E.evaluate(gt, results, category_ids=[30, 40])


def test_ground_truth_with_nothing_to_score_is_refused_naming_the_file_and_why(tmp_path):
    """pycocotools reports -1 ("no data") for every metric when no ground-truth object can be scored: the table was
    all '-' and the command exited 0, as if the model had been evaluated."""
    results = [det(1, 10, rect(2, 2, 12, 12), 0.9)]

    def refused(gt: dict, **kwargs) -> str:
        path = tmp_path / "gt.json"
        path.write_text(json.dumps(gt))
        with pytest.raises(OccsynthError) as raised:
            E.evaluate(path, results, **kwargs)
        assert str(raised.value).startswith(f"{path}: nothing to score: "), str(raised.value)
        return str(raised.value)

    gt = gt_set()
    assert "it has no annotations" in refused(dict(gt, annotations=[]))
    crowd = [dict(a, iscrowd=1) for a in gt["annotations"]]
    assert "its 4 annotations are all crowd regions (iscrowd=1)" in refused(dict(gt, annotations=crowd))
    only_b = [a for a in gt["annotations"] if a["category_id"] == 20]
    message = refused(dict(gt, annotations=only_b), category_ids=[10])
    assert "its only annotation is of no category the model predicts (it is of b; the model predicts a)" in message
    lone = dict(gt, images=gt["images"] + [{"id": 3, "file_name": "3.png", "height": H, "width": W}])
    assert "none of its 4 annotations is on the 1 image evaluated" in refused(lone, image_ids=[3])
    # one scorable object is enough: the other images and categories are scored as before
    assert E.evaluate(gt, results, category_ids=[10])["segm"]["AP"] > 0.5  # finds 1 of its 2 objects of a
    assert E.evaluate(lone, results, image_ids=[1, 3])["segm"]["AP"] == pytest.approx(1.0)


def test_occlusion_splits():
    gt = gt_set()
    levels = E.occlusion_levels(gt)
    assert levels["box_overlap"] == pytest.approx({1: 0.0, 2: 225 / 575, 3: 225 / 575})
    assert levels["occlusion_ratio"] == {1: 0.0, 2: 0.2, 3: 0.5}
    assert E.bin_names((0.1, 0.3)) == ["[0,0.1)", "[0.1,0.3)", "[0.3,1]"]
    assert [E.bin_of(v, (0.1, 0.3)) for v in (0.0, 0.1, 0.29, 0.3, 1.0)] == [0, 1, 1, 2, 2]
    # the isolated object and one of the two overlapping ones are found
    results = [det(1, 10, rect(2, 2, 12, 12), 0.9), det(2, 10, rect(5, 5, 25, 25), 0.8)]
    out = E.evaluate(gt, results)
    low, mid, high = (out["segm_by_box_overlap"][n] for n in E.bin_names(E.OVERLAP_EDGES))
    assert (low["instances"], low["images"]) == (1, 1) and low["AP"] == pytest.approx(1.0, abs=1e-12)
    assert (mid["AP"], mid["instances"]) == (-1.0, 0)
    assert high["instances"] == 2 and high["AP"] == pytest.approx(0.5)  # class 10 found (1), class 20 missed (0)
    ratio = out["segm_by_occlusion_ratio"]
    assert ratio["[0,0.1)"]["AP"] == pytest.approx(1.0, abs=1e-12) and ratio["[0.3,1]"]["AP"] == 0.0
    assert ratio["[0.1,0.3)"]["AP"] == pytest.approx(1.0, abs=1e-12)
    table = E.markdown_table({"val": out})
    assert "| val | max box IoU [0.3,1] | 2 | 50.0 |" in table and "| set | box AP | mask AP |" in table
    assert "AP in percent" in table and "are mask AP" in table


def test_occlusion_splits_of_some_images_hold_only_their_ground_truths():
    """Evaluating image 2 only, the isolated object of image 1 is in no bin (it was scored there, found: AP 1)."""
    results = [det(1, 10, rect(2, 2, 12, 12), 0.9), det(2, 10, rect(5, 5, 25, 25), 0.8)]
    split = E.evaluate(gt_set(), results, image_ids=[2])["segm_by_box_overlap"]
    assert split["[0,0.1)"] == {"AP": -1.0, "AP50": -1.0, "AP75": -1.0, "instances": 0, "images": 0}
    assert (split["[0.3,1]"]["instances"], split["[0.3,1]"]["images"]) == (2, 1)
    assert split["[0.3,1]"]["AP"] == pytest.approx(0.5)


def test_bad_inputs_are_reported():
    gt = gt_set()
    with pytest.raises(OccsynthError, match="not in the annotations"):
        E.evaluate(gt, [det(9, 10, rect(0, 0, 5, 5), 0.5)])
    with pytest.raises(OccsynthError, match="no 'segmentation'"):
        E.evaluate(gt, [{"image_id": 1, "category_id": 10, "bbox": [0, 0, 4, 4], "score": 0.5}])
    empty = E.evaluate(gt, [])
    assert empty["segm"]["AP"] == -1.0 or empty["segm"]["AP"] == 0.0
    good = det(1, 10, rect(0, 0, 5, 5), 0.5)
    for change, words in (({"score": None}, "result 0 needs a finite number 'score'"),
                          ({"score": float("nan")}, "finite number 'score'"),
                          ({"bbox": [1, 2]}, "result 0: bbox must be [x, y, w, h]"),
                          ({"segmentation": [[0, 0, 4, 0, 4, 4]]}, "result 0: segmentation must be compressed RLE")):
        with pytest.raises(OccsynthError, match=re.escape(words)):
            E.evaluate(gt, [{**good, **change}])
    with pytest.raises(OccsynthError, match="result 1 is not an object"):
        E.evaluate(gt, [good, 3])
    wrong_size = mask_ops.encode(np.zeros((5, 5), bool))
    for change, words in (({"segmentation": {"size": wrong_size["size"], "counts": "zz"}}, "segmentation size"),
                          ({"segmentation": {"size": 20, "counts": "zz"}}, "segmentation size"),
                          ({"segmentation": {"size": np.array([5, 5]), "counts": "zz"}}, "segmentation size"),
                          ({"segmentation": {**good["segmentation"], "counts": "zz"}}, "segmentation cannot be read"),
                          ({"category_id": None}, "needs an integer 'category_id'"),
                          ({"image_id": [1]}, "needs an integer 'image_id'"),
                          ({"bbox": ("a", 1, 2, 3)}, "bbox must be [x, y, w, h]"),
                          ({"bbox": np.zeros((2, 2))}, "bbox must be [x, y, w, h]")):
        with pytest.raises(OccsynthError, match=re.escape(words)):  # "zz" made pycocotools loop for ever
            E.evaluate(gt, [{**good, **change}])
    numpy_ids = {**good, "image_id": np.int64(1), "category_id": np.int64(10),
                 "segmentation": {**good["segmentation"], "size": np.array(good["segmentation"]["size"])}}
    assert E.evaluate(gt, [numpy_ids])["segm"] == E.evaluate(gt, [good])["segm"]
    with pytest.raises(OccsynthError, match="results must be a list"):
        E.evaluate(gt, {"image_id": 1})
    # a numpy or tuple bbox is read as the list it stands for; one iou type may be a plain string
    as_list = E.evaluate(gt, [good], iou_types="bbox")
    for box in (np.asarray(good["bbox"]), tuple(good["bbox"])):
        assert E.evaluate(gt, [{**good, "bbox": box}], iou_types="bbox")["bbox"] == as_list["bbox"]
    assert set(as_list) >= {"bbox"} and "segm" not in as_list


def test_annotations_of_a_skipped_image_record_are_counted_as_such_not_as_of_an_unknown_image():
    """Image 2's record has no height: dropped, and its annotations with it. Their image id is known (its record was
    skipped), so they are counted under that reason, naming the record; an image_id no record has stays unknown."""
    gt = gt_set()
    del gt["images"][1]["height"]
    gt["annotations"].append({**gt["annotations"][0], "id": 9, "image_id": 77})
    skips = SkipLog()
    cleaned = E.clean_ground_truth(gt, skips)
    assert [a["id"] for a in cleaned["annotations"]] == [1] and [im["id"] for im in cleaned["images"]] == [1]
    assert skips.counts == {errors.MALFORMED_RECORD: 1, errors.OF_SKIPPED_IMAGE: 3, errors.UNKNOWN_IMAGE: 1}
    assert skips.examples[errors.OF_SKIPPED_IMAGE] == (
        "annotation 2: annotation of a skipped image (image record 2: malformed record)")
    assert skips.examples[errors.UNKNOWN_IMAGE] == "annotation 9: annotation refers to an unknown image id (image_id 77)"


@pytest.mark.parametrize("mode", ["visible", "amodal"])
def test_an_image_record_over_the_pixel_limit_is_dropped_before_any_mask_of_it_is_decoded(monkeypatch, mode):
    """The ground truth handed to pycocotools had no pixel limit: a 20000x20000 record kept its masks, decoded at
    that size. It is refused as every reader refuses it (occsynth.coco.check_pixels), its annotations counted as of
    a skipped image, and none of its masks reaches the decoder (amodal: nor the amodal area and box)."""
    gt = gt_set()
    huge = [[100.0, 100.0, 19000.0, 100.0, 19000.0, 19000.0, 100.0, 19000.0]]
    gt["images"].append({"id": 3, "file_name": "3.png", "height": 20000, "width": 20000})
    gt["annotations"] += [{"id": 10 + k, "image_id": 3, "category_id": 10, "segmentation": huge,
                           "bbox": [100.0, 100.0, 18900.0, 18900.0], "iscrowd": 0} for k in range(2)]
    for ann in gt["annotations"]:
        ann["amodal_segmentation"] = ann["segmentation"]  # amodal_area, amodal_bbox: computed from the mask
    decoded = []
    real = mask_ops.to_rle
    monkeypatch.setattr(mask_ops, "to_rle", lambda seg, h, w, **k: decoded.append((h, w)) or real(seg, h, w, **k))
    skips = SkipLog()
    cleaned = E.scored_ground_truth(gt, mode, skips).data
    assert [im["id"] for im in cleaned["images"]] == [1, 2] and [a["id"] for a in cleaned["annotations"]] == [1, 2, 3, 4]
    assert skips.counts == {errors.IMAGE_TOO_LARGE: 1, errors.OF_SKIPPED_IMAGE: 2}
    assert skips.examples[errors.IMAGE_TOO_LARGE] == ("image record 3: image too large (20000x20000 pixels (height x "
                                                      f"width), over the limit of {mask_ops.MAX_IMAGE_PIXELS:,})")
    assert skips.examples[errors.OF_SKIPPED_IMAGE] == (
        "annotation 10: annotation of a skipped image (image record 3: image too large)")
    assert decoded and set(decoded) == {(H, W)}
    decoded.clear()
    results = [det(a["image_id"], a["category_id"], mask_ops.decode(a["segmentation"], H, W), 0.9)
               for a in gt_set()["annotations"]]
    out = E.evaluate(gt, results, mode=mode)
    assert out["images"] == 2 and out["skipped"]["counts"] == {errors.IMAGE_TOO_LARGE: 1, errors.OF_SKIPPED_IMAGE: 2}
    assert (20000, 20000) not in decoded
    with pytest.raises(OccsynthError, match=r"^image record 3: image too large \(20000x20000 pixels"):
        E.clean_ground_truth(gt, SkipLog(strict=True))


def test_amodal_ground_truth_leaves_annotations_of_dropped_image_records_to_be_counted():
    """Computing the amodal area and box, an image_id given as a list raised a TypeError (a traceback), and an image
    record with a height of "x" stopped the whole evaluation; visible mode skips and counts both."""
    gt = gt_set()
    gt["images"].append({"id": 3, "file_name": "3.png", "height": "x", "width": W})
    gt["annotations"] += [{**gt["annotations"][0], "id": 10, "image_id": [1]},
                          {**gt["annotations"][0], "id": 11, "image_id": 3}]
    for ann in gt["annotations"]:
        ann["amodal_segmentation"] = ann["segmentation"]
    skips = SkipLog()
    cleaned = E.scored_ground_truth(gt, "amodal", skips).data
    assert [a["id"] for a in cleaned["annotations"]] == [1, 2, 3, 4]
    assert skips.counts == {errors.MALFORMED_RECORD: 1, errors.UNKNOWN_IMAGE: 1, errors.OF_SKIPPED_IMAGE: 1}


@pytest.mark.parametrize("mode", ["visible", "amodal"])
def test_the_image_records_are_checked_once_per_scored_ground_truth(monkeypatch, mode):
    """In amodal mode the amodal masks and the cleaning each checked every image record again."""
    from occsynth import coco

    gt = gt_set()
    gt["images"].append({"id": 3, "file_name": "3.png", "height": 0, "width": W})
    for ann in gt["annotations"]:
        ann["amodal_segmentation"] = ann["segmentation"]
    calls = []
    real = coco.usable_image_records
    monkeypatch.setattr(coco, "usable_image_records", lambda *a, **k: calls.append(1) or real(*a, **k))
    skips = SkipLog()
    cleaned = E.scored_ground_truth(gt, mode, skips).data
    assert calls == [1] and [im["id"] for im in cleaned["images"]] == [1, 2]
    assert skips.counts == {errors.MALFORMED_RECORD: 1} and [a["id"] for a in cleaned["annotations"]] == [1, 2, 3, 4]


def test_degenerate_ground_truth_masks_become_ignore_regions_or_are_dropped():
    """A 4-number polygon (pycocotools: TypeError) is an ignore region over its box: a detection on it is
    neither a hit nor a false positive, so perfect detections of the rest still score AP 1. A broken RLE
    without a usable box is dropped; a bad bbox next to a good mask is recomputed; all counted."""
    gt = gt_set()
    gt["annotations"][0].update(segmentation=[[10, 10, 20, 20]], area=7.0)  # box (2, 2, 10, 10) stays, as its area
    extra = {"id": 9, "image_id": 2, "category_id": 20, "segmentation": {"size": [5, 5], "counts": "xx"},
             "bbox": [0, 0, 0, 0], "iscrowd": 0}
    gt["annotations"].append(extra)
    gt["annotations"][1].update(bbox=["5", 5, 20, 20], area=-5.0)  # a negative area is the mask's pixel count
    del gt["annotations"][2]["area"]
    skips = SkipLog()
    cleaned = E.clean_ground_truth(gt, skips)
    by_id = {a["id"]: a for a in cleaned["annotations"]}
    assert set(by_id) == {1, 2, 3, 4}
    assert by_id[1]["iscrowd"] == 1 and by_id[1]["segmentation"] == [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]
    assert by_id[1]["area"] == 100.0 and by_id[2]["bbox"] == [5.0, 5.0, 20.0, 20.0] and by_id[3]["area"] == 400.0
    assert by_id[2]["area"] == 400.0
    assert skips.counts == {"degenerate or empty segmentation": 2, "malformed record": 1}
    assert gt["annotations"][0]["segmentation"] == [[10, 10, 20, 20]]  # the input is not changed

    results = [det(a["image_id"], a["category_id"], mask_ops.decode(a["segmentation"], H, W), 0.9)
               for a in gt_set()["annotations"]]  # also one on the degenerate object and one on the crowd
    out = E.evaluate(gt, results)
    assert out["segm"]["AP"] == pytest.approx(1.0, abs=1e-12) and out["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert out["skipped"]["counts"] == {"degenerate or empty segmentation": 2, "malformed record": 1}
    with pytest.raises(OccsynthError, match=r"annotation 1 \(image 1\): degenerate or empty segmentation \([^;]*\)$"):
        E.evaluate(gt, results, skips=SkipLog(strict=True))  # it stops: no "kept as an ignore region"



@pytest.mark.parametrize("mode", ["visible", "amodal"])
def test_a_stray_short_polygon_part_is_dropped_and_its_object_scored_by_the_rest_of_its_outline(mode):
    """detectron2's rule: a part of fewer than 6 coordinates (or an odd count) is left out, not the object. pycocotools
    is given the parts kept: it reads every part as a box when the first has 4 numbers (here a 2x2 box)."""
    gt = gt_set()
    square = [2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]  # object 1's mask, rect(2, 2, 12, 12)
    gt["annotations"][0]["segmentation"] = [[5, 5, 7, 7], square, [3, 3]]
    clean = gt_set()
    clean["annotations"][0]["segmentation"] = [square]
    if mode == "amodal":
        for data in (gt, clean):
            for a in data["annotations"]:
                a["amodal_segmentation"] = a["segmentation"]
    skips = SkipLog()
    scored = E.scored_ground_truth(gt, mode, skips).data
    assert scored["annotations"][0]["segmentation"] == [square] and scored["annotations"][0]["iscrowd"] == 0
    assert skips.counts == {} and gt["annotations"][0]["segmentation"][0] == [5, 5, 7, 7]  # the input is not changed
    def scored_fields(data):  # amodal: the mask is in 'segmentation' now, where pycocotools reads it
        return [{k: v for k, v in a.items() if k != "amodal_segmentation"} for a in data["annotations"]]
    assert scored_fields(scored) == scored_fields(E.scored_ground_truth(clean, mode, SkipLog()).data)
    results = [det(1, 10, rect(2, 2, 12, 12), 0.5), det(1, 10, rect(20, 20, 30, 30), 0.95),
               det(2, 10, rect(6, 5, 25, 24), 0.8), det(2, 20, rect(8, 8, 20, 20), 0.6)]
    out = E.evaluate(gt, results, mode=mode)
    for iou_type in ("bbox", "segm"):
        assert [out[iou_type][k] for k in E.STAT_NAMES] == [float(v) for v in by_hand(clean, results, iou_type)[:6]]
    assert out["skipped"]["counts"] == {} and 0 < out["segm"]["AP"] < 1

def test_a_polygon_on_a_wide_image_right_of_twice_its_height_is_scored():
    """The far-outside limit of a polygon's vertices is per axis (x by the width): an ordinary object on the right of
    a wide image is scored, its stray part left out, not refused as damaged data."""
    outline = [22, 2, 28, 2, 28, 8, 22, 8]
    gt = {"images": [{"id": 1, "file_name": "wide.png", "height": 10, "width": 30}],
          "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [22, 2, 6, 6], "area": 36,
                           "segmentation": [outline, [3, 3]]}]}
    skips = SkipLog()
    assert E.scored_ground_truth(gt, "visible", skips).data["annotations"][0]["segmentation"] == [outline]
    assert skips.counts == {}
    out = E.evaluate(gt, [det(1, 1, rect_hw(10, 30, 22, 2, 28, 8), 0.9)])
    assert out["segm"]["AP"] == pytest.approx(1.0, abs=1e-12) and out["skipped"]["counts"] == {}


def test_a_broken_record_of_an_annotation_id_gives_way_to_a_later_usable_one():
    """Object 1 was listed first with a 4-number polygon, then again with its mask: the broken record became an
    ignore region and the good one was dropped as a duplicate, so a detection of object 1 scored nothing. As every
    reader keeps the first usable record of an id, the broken one is skipped, counted by its reason."""
    gt = gt_set()
    gt["annotations"].insert(0, {**gt["annotations"][0], "segmentation": [[10, 10, 20, 20]]})
    skips = SkipLog()
    cleaned = E.clean_ground_truth(gt, skips)
    assert cleaned["annotations"] == gt_set()["annotations"]
    assert skips.counts == {errors.DEGENERATE_MASK: 1}
    assert skips.examples[errors.DEGENERATE_MASK] == (
        "annotation 1 (image 1): degenerate or empty segmentation (polygon has no usable part: its one part has 4 "
        "coordinates (a part needs an even number >= 6); skipped: another record of this id has a usable mask)")
    results = [det(1, 10, rect(2, 2, 11, 12), 0.9), det(1, 10, rect(20, 20, 30, 30), 0.95),
               det(2, 10, rect(6, 5, 25, 24), 0.8), det(2, 20, rect(8, 8, 20, 20), 0.6)]
    out = E.evaluate(gt, results)
    for iou_type in ("bbox", "segm"):
        assert [out[iou_type][k] for k in E.STAT_NAMES] == [float(v) for v in by_hand(gt_set(), results, iou_type)[:6]]
    assert out["skipped"]["counts"] == {errors.DEGENERATE_MASK: 1}
    with pytest.raises(OccsynthError, match=r"^annotation 1 \(image 1\): degenerate or empty segmentation \([^;]*\)$"):
        E.clean_ground_truth(gt, SkipLog(strict=True))  # it stops at the first bad record: nothing is scored


def test_of_the_records_of_an_annotation_id_the_first_usable_one_is_kept_even_as_an_ignore_region():
    """A broken record after a good one is skipped by its reason (only a usable record is a duplicate); of broken
    records alone, the first with a usable box is the ignore region, one without a box taking no id."""
    gt = gt_set()
    first, second = gt["annotations"][:2]
    no_box = {**second, "segmentation": [[1, 1, 2, 2]], "bbox": [0, 0, 0, 0]}
    ignored = {**second, "segmentation": [[1, 1, 2, 2]]}
    gt["annotations"] = [first, {**first, "segmentation": {"size": [H, W], "counts": "0:"}}, no_box, ignored,
                         {**ignored, "bbox": [1, 1, 3, 3]}] + gt["annotations"][2:]
    skips = SkipLog()
    cleaned = E.clean_ground_truth(gt, skips)
    assert [a["id"] for a in cleaned["annotations"]] == [1, 2, 3, 4] and cleaned["annotations"][0] == first
    x, y, w, h = second["bbox"]
    assert cleaned["annotations"][1] == {**second, "iscrowd": 1, "area": w * h,
                                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    assert skips.counts == {errors.DEGENERATE_MASK: 3, errors.DUPLICATE_ID: 1}
    assert skips.examples[errors.DUPLICATE_ID] == "annotation 2: duplicate id (later records with this id skipped)"


def test_an_empty_mask_a_flat_box_a_missing_iscrowd_and_a_non_finite_area_are_cleaned_as_documented():
    """An empty mask is an ignore region over its box; a broken mask whose box has no height is dropped (no region to
    ignore); a missing ``iscrowd`` is 0 and a NaN or infinite ``area`` the mask's pixel count (pycocotools reads both)."""
    gt = gt_set()
    first, second, third, crowd = gt["annotations"]
    gt["annotations"] = [{**first, "segmentation": {"size": [H, W], "counts": [H * W]}},  # valid RLE, no pixel set
                         {**second, "segmentation": [[1, 1, 2, 2]], "bbox": [5, 5, 20, 0]},
                         {**{k: v for k, v in third.items() if k != "iscrowd"}, "area": float("nan")},
                         {**crowd, "area": float("inf")}]
    skips = SkipLog()
    cleaned = E.clean_ground_truth(gt, skips)
    x, y, w, h = first["bbox"]
    assert cleaned["annotations"] == [
        {**first, "iscrowd": 1, "area": float(w * h), "bbox": [float(v) for v in first["bbox"]],
         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]},
        {**third, "iscrowd": 0}, crowd]
    assert "iscrowd" in cleaned["annotations"][1] and cleaned["annotations"][1]["area"] == third["area"] == 400.0
    assert skips.counts == {errors.DEGENERATE_MASK: 2}
    assert skips.examples[errors.DEGENERATE_MASK] == (
        "annotation 1 (image 1): degenerate or empty segmentation (empty mask; kept as an ignore region (iscrowd=1) "
        "over its bbox)")
    skips = SkipLog()
    E.clean_ground_truth({**gt, "annotations": gt["annotations"][1:2]}, skips)
    assert skips.examples[errors.DEGENERATE_MASK] == (
        "annotation 2 (image 2): degenerate or empty segmentation (polygon has no usable part: its one part has 4 "
        "coordinates (a part needs an even number >= 6); no usable bbox either: dropped)")


def test_a_set_none_of_whose_annotations_can_be_scored_is_refused_saying_how_many():
    """bcnet evaluate's check before predicting: every annotation skipped (here: an unknown category) is an error
    naming the set and the count, not a table of '-'; a file without annotations is left to require_scorable."""
    gt = gt_set()
    for anns, words in ((gt["annotations"][:1], "the only annotation of a.json cannot"),
                        (gt["annotations"], "none of the 4 annotations of a.json can")):
        data = {**gt, "annotations": [{**a, "category_id": 99} for a in anns]}
        skips = SkipLog()
        scored = E.scored_ground_truth(data, "visible", skips)
        with pytest.raises(OccsynthError) as refused:
            E._require_annotations("val", "a.json", data, scored, skips)
        assert str(refused.value) == (f"set 'val': {words} be evaluated (skipped {len(anns)} bad record"
                                      f"{'s' * (len(anns) > 1)}: annotation refers to an unknown category "
                                      f"id={len(anns)}; e.g. annotation 1 (category_id 99))")
    for data in ({**gt, "annotations": []}, gt):
        assert E._require_annotations("val", "a.json", data, E.scored_ground_truth(data, "visible", SkipLog()),
                                      SkipLog()) is None


def test_a_repeated_image_record_is_counted_and_the_first_one_kept():
    """Image 2 listed again at 20 x 20: its annotations are scored on the first record's 40 x 40 (the second made
    every mask of it another size than its image, so each became an ignore region)."""
    gt = gt_set()
    gt["images"].append({"id": 2, "file_name": "again.png", "height": 20, "width": 20})
    skips = SkipLog()
    cleaned = E.clean_ground_truth(gt, skips)
    assert cleaned["images"] == gt_set()["images"] and skips.counts == {errors.DUPLICATE_ID: 1}
    assert cleaned["annotations"] == gt_set()["annotations"]


def test_predict_dataset_skips_unreadable_files(tmp_path):
    root = write_dataset(tmp_path / "set")
    (root / "images" / "000000000002.png").write_bytes(b"broken")
    ds = CocoInstances(root / "annotations.json", root / "images")
    model = FixedModel([(2, (4, 6, 28, 30))])
    skipped = []
    results = E.predict_dataset(model, ds, progress=False, batch_size=2, skipped_ids=skipped)
    assert skipped == [2] and sorted({r["image_id"] for r in results}) == [1, 3]
    assert ds.skips.counts == {"unreadable or corrupt image": 1}
    strict = CocoInstances(root / "annotations.json", root / "images", strict=True)
    with pytest.raises(OccsynthError, match="000000000002.png: unreadable"):
        E.predict_dataset(model, strict, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"mask_threshold": "0.5"}, "mask_threshold must be a number between 0 and 1 (exclusive), got '0.5'"),
    ({"mask_threshold": float("nan")}, "mask_threshold must be a number between 0 and 1 (exclusive), got nan"),
    ({"mask_threshold": 0}, "mask_threshold must be a number between 0 and 1 (exclusive), got 0"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
    ({"batch_size": 2.0}, "batch_size must be a whole number >= 1, got 2.0"),
])
def test_predict_dataset_refuses_arguments_that_mean_nothing_before_any_image(tmp_path, kwargs, message):
    root = write_dataset(tmp_path / "set")
    ds = CocoInstances(root / "annotations.json", root / "images")
    with pytest.raises(OccsynthError, match=re.escape(message)):
        E.predict_dataset(FixedModel([(2, (4, 6, 28, 30))]), ds, progress=False, **kwargs)


def test_the_occsep_recall_finds_the_images_of_lvis_records_by_their_coco_url():
    """LVIS v1 records name their file by coco_url alone: the recall found none of their images (recall None, every
    listed object 'outside the set'), as every reader did before record_file_name."""
    gt = gt_set()
    listed = E.ObjectList([["000000000001.jpg", "a", 0, [2, 2, 10, 10], mask_ops.encode(rect(2, 2, 12, 12))]],
                                 "occluded.json")
    results = [det(1, 10, rect(2, 2, 12, 12), 0.9)]
    for name in ("val2017/000000000001.jpg", None):
        data = copy.deepcopy(gt)
        data["images"][0].pop("file_name")
        data["images"][0]["coco_url"] = "http://images.cocodataset.org/val2017/000000000001.jpg"
        if name:  # a record's own file_name wins over its coco_url
            data["images"][0]["file_name"] = name
        report = E.occsep_metrics(data, results, {"occluded": listed})["occsep"]["occluded"]
        assert (report["found"], report["total"], report["outside_set"]) == (1, 1, 0)
    data["images"][0]["coco_url"] = "no-url"  # names no file: the object is outside the set, not an error
    report = E.occsep_metrics(data, results, {"occluded": listed})["occsep"]["occluded"]
    assert (report["total"], report["outside_set"]) == (0, 1)


def test_predict_dataset_takes_numpy_numbers(tmp_path):
    root = write_dataset(tmp_path / "set")
    ds = CocoInstances(root / "annotations.json", root / "images")
    plain = E.predict_dataset(FixedModel([(2, (4, 6, 28, 30))]), ds, progress=False)
    assert plain and plain == E.predict_dataset(FixedModel([(2, (4, 6, 28, 30))]), ds, progress=False,
                                                batch_size=np.int64(2), mask_threshold=np.float32(0.5))
    from fractions import Fraction  # a real number a tensor does not compare with: taken as its float
    assert plain == E.predict_dataset(FixedModel([(2, (4, 6, 28, 30))]), ds, progress=False,
                                      mask_threshold=Fraction(1, 2))


def test_predict_dataset_gives_the_model_back_as_it_found_it_when_it_stops(tmp_path):
    root = write_dataset(tmp_path / "set")
    (root / "images" / "000000000002.png").write_bytes(b"broken")
    strict = CocoInstances(root / "annotations.json", root / "images", strict=True)
    model = FixedModel([(2, (4, 6, 28, 30))])
    model.return_occluder_masks = True
    model.train()
    with pytest.raises(OccsynthError, match="unreadable"):
        E.predict_dataset(model, strict, progress=False)
    assert model.training and model.return_occluder_masks is True


def test_evaluate_refuses_an_unknown_iou_type_before_scoring_any(tmp_path, monkeypatch):
    gt = gt_set()
    results = [det(1, 10, rect(2, 2, 10, 10), 0.9)]
    scored = []
    monkeypatch.setattr(E, "_run_cocoeval", lambda *a: scored.append(a) or np.zeros(12))
    with pytest.raises(OccsynthError, match=re.escape("iou_types: each must be 'bbox' or 'segm', got 'mask'")):
        E.evaluate(gt, results, iou_types=("bbox", "mask"))
    assert not scored


def test_check_model_input_refuses_sizes_the_resize_would_collapse():
    class Transform:
        min_size, max_size = (48,), 64

    model = torch.nn.Module()
    model.transform = Transform()
    E.check_model_input(model, (1200, 20), "x")           # scale 64/1200: 64 x 1.07 -> 64 x 1
    E.check_model_input(model, (3, 3), "x")               # small images are scaled up
    for size in ((20000, 2), (1920, 20), (2, 20000)):     # 64 x 0.67 -> 64 x 0 ...
        with pytest.raises(BadRecord, match="cannot process"):
            E.check_model_input(model, size, "image file a.png")


class FixedModel(torch.nn.Module):
    """Predicts, for every image, one box + mask per given (label, xyxy) at score 0.9 (or at its ``scores``)."""

    def __init__(self, dets, scores=None):
        super().__init__()
        self.dets = dets
        self.scores = [0.9] * len(dets) if scores is None else list(scores)

    def forward(self, images):
        outs = []
        for image in images:
            h, w = image.shape[-2:]
            masks = torch.zeros(len(self.dets), 1, h, w)
            for k, (_, (x0, y0, x1, y1)) in enumerate(self.dets):
                masks[k, 0, y0:y1, x0:x1] = 0.8
            outs.append({"boxes": torch.tensor([b for _, b in self.dets], dtype=torch.float32),
                         "labels": torch.tensor([lab for lab, _ in self.dets]),
                         "scores": torch.tensor(self.scores, dtype=torch.float32),
                         "masks": masks})
        return outs


def test_predict_dataset_maps_labels_back_and_encodes_masks(tmp_path):
    root = write_dataset(tmp_path / "set")
    ds = CocoInstances(root / "annotations.json", root / "images")
    results = E.predict_dataset(FixedModel([(2, (4, 6, 28, 30)), (4, (0, 0, 3, 3))]), ds, progress=False)
    assert len(results) == 2 * len(ds)
    first = results[0]
    assert first["image_id"] == 1 and first["category_id"] == 3 and results[1]["category_id"] == 7
    assert first["bbox"] == [4.0, 6.0, 24.0, 24.0]
    assert np.array_equal(mask_ops.decode(first["segmentation"], 48, 64), rect_hw(48, 64, 4, 6, 28, 30))
    out = E.evaluate(root / "annotations.json", results)
    assert set(out) >= {"bbox", "segm", "segm_by_box_overlap", "segm_by_occlusion_ratio"}


def test_result_masks_are_encoded_exactly_from_their_pixels():
    # each mask is encoded from the box of its pixels: the strings must be those of the whole thresholded mask
    h, w = 37, 53
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(9, 1, h, w, generator=g) * 0.5  # all below the threshold: empty, unless set below
    probs[0, 0] = 0.9                                  # the whole image
    probs[1, 0, 0, 0] = probs[2, 0, h - 1, w - 1] = 0.8  # one pixel in a corner
    probs[3, 0, :, w - 1] = 0.8                         # the last column: a run that ends the image
    probs[4, 0, 5:9, 3:7] = probs[4, 0, 20:30, 40:50] = 0.7  # two blobs far apart
    probs[5, 0] = torch.rand(h, w, generator=g)          # noise: many runs
    probs[6, 0, 10:20, 10] = 0.6                         # one column, then the next one's top
    probs[6, 0, 0:3, 11] = 0.6
    probs[7, 0, 3:h, 2] = probs[7, 0, 0:h, 3] = 0.9      # a run joined across a column boundary
    n = len(probs)
    output = {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]] * n), "scores": torch.linspace(0.9, 0.1, n),
              "labels": torch.ones(n, dtype=torch.int64), "masks": probs}
    results = E.to_coco_results(output, {"image_id": 4, "orig_size": (h, w)}, (h, w), [7], 0.5)
    assert [r["segmentation"] for r in results] == [mask_ops.encode((p[0] > 0.5).numpy()) for p in probs]
    # resized back to the record's size first (bilinear), then the same
    small = torch.nn.functional.interpolate(probs, size=(20, 30), mode="bilinear", align_corners=False)
    output["masks"] = small
    results = E.to_coco_results(output, {"image_id": 4, "orig_size": (h, w)}, (20, 30), [7], 0.5)
    back = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    assert [r["segmentation"] for r in results] == [mask_ops.encode((p[0] > 0.5).numpy()) for p in back]
    assert results[0]["bbox"] == pytest.approx([0.0, 0.0, 5.0 * w / 30, 5.0 * h / 20])


@pytest.mark.parametrize("kwargs, message", [
    ({"sets": {}}, "sets must be a non-empty dict"),
    ({"sets": [("a.json", "images")]}, "sets must be a non-empty dict"),
    ({"sets": {"a": "a.json"}}, "set 'a': expected (annotations JSON, image root)"),
    ({"overlap_edges": (0.5, 0.1)}, "overlap_edges must rise strictly between 0 and 1"),
    ({"ratio_edges": (0.1, 1.0)}, "ratio_edges must rise strictly between 0 and 1"),
    ({"overlap_edges": ("a",)}, "overlap_edges must be a list of numbers"),
    ({"mask_threshold": "0.5"}, "mask_threshold must be a number between 0 and 1 (exclusive), got '0.5'"),
    ({"mask_threshold": 1}, "mask_threshold must be a number between 0 and 1 (exclusive), got 1"),
])
def test_evaluate_checkpoint_refuses_arguments_that_mean_nothing_before_any_work(tmp_path, kwargs, message):
    args = {"sets": {"a": (tmp_path / "a.json", tmp_path)}, **kwargs}
    with pytest.raises(OccsynthError, match=re.escape(message)):
        E.evaluate_checkpoint(tmp_path / "missing.pt", args.pop("sets"), tmp_path / "out", progress=False, **args)
    assert not (tmp_path / "out").exists()
    if "sets" not in kwargs and "mask_threshold" not in kwargs:  # evaluate() itself refuses such edges too
        with pytest.raises(OccsynthError, match=re.escape(message)):
            E.evaluate({"images": [], "annotations": [], "categories": []}, [], **kwargs)


def rect_hw(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------- Occluded / Separated COCO recall

def author_entry(ann: dict, image: dict, names: dict, bare: bool = False) -> list:
    """One object in the authors' pickle layout: [file_name, class_name, _, bbox, RLE with bytes counts]."""
    rle = mask_ops.to_rle(ann["segmentation"], image["height"], image["width"])  # counts as bytes
    file_name = image["file_name"].rsplit("/", 1)[-1] if bare else image["file_name"]
    return [file_name, names[ann["category_id"]], 0, list(ann["bbox"]),
            {"size": list(rle["size"]), "counts": rle["counts"]}]


def test_occsep_recall_on_lists_built_from_the_demo_data(demo_source, tmp_path):
    import json
    import pickle

    from pycocotools import mask as mask_utils

    from occsynth.coco import read_dataset

    ann_file, _ = demo_source
    data = read_dataset(ann_file)
    images = {im["id"]: im for im in data["images"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    anns = [a for a in data["annotations"] if not a["iscrowd"]]
    rles = {a["id"]: mask_ops.to_rle(a["segmentation"], images[a["image_id"]]["height"],
                                     images[a["image_id"]]["width"]) for a in anns}
    dets = {a["id"]: {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
                      "bbox": list(a["bbox"]), "segmentation": {"size": list(rles[a["id"]]["size"]),
                                                                "counts": rles[a["id"]]["counts"].decode("ascii")}}
            for a in anns}
    occluded, separated = anns[0::2], anns[1::2][:20]
    dropped, weak, relabelled = occluded[0], occluded[1], separated[0]
    # the modified objects have no other same-image prediction that could find them instead
    for victim in (dropped, weak, relabelled):
        others = [a for a in anns if a["image_id"] == victim["image_id"] and a["id"] != victim["id"]]
        if others:
            ious = np.asarray(mask_utils.iou([rles[o["id"]] for o in others], [rles[victim["id"]]], [0])).reshape(-1)
            assert ious.max() < 0.75
    del dets[dropped["id"]]
    dets[weak["id"]]["score"] = 0.29
    present = {a["category_id"] for a in anns if a["image_id"] == relabelled["image_id"]}
    dets[relabelled["id"]]["category_id"] = next(c for c in sorted(names) if c not in present)
    results = list(dets.values())

    occ_path, sep_path = tmp_path / "occluded_coco.pkl", tmp_path / "separated_coco.json"
    occ_path.write_bytes(pickle.dumps([author_entry(a, images[a["image_id"]], names) for a in occluded], protocol=4))
    sep_json = []
    for a in separated:  # JSON copy with bare COCO-style file names (the demo's basenames are unique)
        e = author_entry(a, images[a["image_id"]], names, bare=True)
        sep_json.append(e[:4] + [{"size": e[4]["size"], "counts": e[4]["counts"].decode("ascii")}])
    sep_path.write_text(json.dumps(sep_json))

    out = E.evaluate(ann_file, results, occsep_lists={"occluded": occ_path, "separated": sep_path})
    occ = out["occsep"]["occluded"]
    assert occ["found"] == len(occluded) - 2 and occ["total"] == len(occluded)
    assert out["occluded_recall"] == (len(occluded) - 2) / len(occluded)
    assert out["separated_recall"] == (len(separated) - 1) / len(separated)
    assert out["occsep"]["separated"]["outside_set"] == 0
    assert out["occsep"]["occluded"]["score_threshold"] == 0.3 and out["occsep"]["occluded"]["iou_threshold"] == 0.75
    # the weak prediction at exactly 0.3 counts again
    dets[weak["id"]]["score"] = 0.3
    again = E.evaluate(ann_file, list(dets.values()), occsep_lists={"occluded": occ_path}, occlusion_splits=False)
    assert again["occluded_recall"] == (len(occluded) - 1) / len(occluded) and "separated_recall" not in again
    table = E.markdown_table({"demo": out})
    n_occ, n_sep = len(occluded), len(separated)
    assert (f"| demo | {100 * (n_occ - 2) / n_occ:.2f} | {n_occ - 2} / {n_occ} | "
            f"{100 * (n_sep - 1) / n_sep:.2f} | {n_sep - 1} / {n_sep} |") in table
    json.dumps(out)  # results.json-ready
    # a subset of the images (as COCO-OCC is of val2017): recall over the listed objects it holds, the
    # others counted apart, not as misses
    subset_ids = {dropped["image_id"]} | {im["id"] for im in data["images"][::3]}
    subset = dict(data, images=[im for im in data["images"] if im["id"] in subset_ids],
                  annotations=[a for a in data["annotations"] if a["image_id"] in subset_ids])
    (tmp_path / "subset.json").write_text(json.dumps(subset))
    part = E.evaluate(tmp_path / "subset.json", [d for d in results if d["image_id"] in subset_ids],
                      occsep_lists={"occluded": occ_path}, occlusion_splits=False)["occsep"]["occluded"]
    inside = [a for a in occluded if a["image_id"] in subset_ids]
    assert 0 < len(inside) < len(occluded)
    assert part["total"] == len(inside) and part["outside_set"] == len(occluded) - len(inside)
    assert part["found"] == len(inside) - 1  # the dropped one (the weak one is at 0.3 again by now)
    assert f"{part['found']} / {len(inside)} ({len(occluded) - len(inside)} outside the set)" in \
        E.markdown_table({"subset": {"occsep": {"occluded": part}}})
    with pytest.raises(OccsynthError, match="object list name"):
        E.evaluate(ann_file, results, occsep_lists={"occludded": occ_path})
    with pytest.raises(OccsynthError, match="file not found"):
        E.evaluate(ann_file, results, occsep_lists={"occluded": tmp_path / "none.pkl"})


def test_cli_occsep_lists_with_a_tiny_checkpoint(tmp_path, monkeypatch):
    """End to end with a real (untrained) tiny model: the recall in results.json is the one its detections give;
    then with the ground truth (one object left out) as the predictions: exact recall through the CLI."""
    import json
    import pickle

    from click.testing import CliRunner

    from bcnet import occsep
    from cli.bcnet_cli import main as bcnet_main
    from datasets import load_annotations

    root = write_dataset(tmp_path / "set")
    data = load_annotations(root)
    images = {im["id"]: im for im in data["images"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    entries = [author_entry(a, images[a["image_id"]], names) for a in data["annotations"]]
    (tmp_path / "occ.pkl").write_bytes(pickle.dumps(entries[:5], protocol=4))
    (tmp_path / "sep.pkl").write_bytes(pickle.dumps(entries[5:], protocol=4))
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    base = ["evaluate", "--checkpoint", str(tmp_path / "tiny.pt"), "--annotations", str(root / "annotations.json"),
            "--images", str(root / "images"), "--name", "hand", "--device", "cpu", "--no-progress"]
    runner = CliRunner()
    lists = ["--occluded-list", str(tmp_path / "occ.pkl"), "--separated-list", str(tmp_path / "sep.pkl")]
    result = runner.invoke(bcnet_main, base + ["--out", str(tmp_path / "eval"), *lists])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "results.json").read_text())["hand"]
    detections = json.loads((tmp_path / "eval" / "detections_hand.json").read_text())
    gt_images = {im["file_name"]: im["id"] for im in data["images"]}
    for key, objs in (("occluded", entries[:5]), ("separated", entries[5:])):
        expected = occsep.occsep_recall(detections, gt_images, objs, categories=data["categories"])
        assert report[f"{key}_recall"] == expected["recall"] and report["occsep"][key]["found"] == expected["found"]
        assert report["occsep"][key]["total"] == len(objs)
    assert "| set | occluded recall | found / listed | separated recall | found / listed |" in \
        (tmp_path / "eval" / "results.md").read_text()
    assert "occluded recall" in result.output
    # only one list; a crafted pickle is refused before any prediction
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps([occsep.RefusedPickle("x")], protocol=4))
    bad = runner.invoke(bcnet_main, base + ["--out", str(tmp_path / "e2"), "--occluded-list",
                                            str(tmp_path / "evil.pkl")])
    assert bad.exit_code == 2 and "refusing to load" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "e2" / "detections_hand.json").exists()
    one = runner.invoke(bcnet_main, base + ["--out", str(tmp_path / "e3"), *lists[2:]])
    assert one.exit_code == 0, one.output
    report = json.loads((tmp_path / "e3" / "results.json").read_text())["hand"]
    assert "separated_recall" in report and "occluded_recall" not in report

    gt_dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9, "bbox": a["bbox"],
                "segmentation": a["segmentation"]} for a in data["annotations"][1:]]  # the first object is missed
    monkeypatch.setattr(E, "predict_dataset", lambda *args, **kwargs: gt_dets)
    result = runner.invoke(bcnet_main, base + ["--out", str(tmp_path / "e4"), *lists])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e4" / "results.json").read_text())["hand"]
    assert report["occluded_recall"] == 4 / 5 and report["separated_recall"] == 1.0
    assert f"| hand | 80.00 | 4 / 5 | 100.00 | {len(entries) - 5} / {len(entries) - 5} |" in result.output


def test_occsep_lists_are_checked_once_and_their_errors_name_where_they_came_from(tmp_path, monkeypatch):
    import json
    import pickle

    from bcnet import occsep
    from datasets import load_annotations

    root = write_dataset(tmp_path / "set")
    ann_file = root / "annotations.json"
    data = load_annotations(root)
    images = {im["id"]: im for im in data["images"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    entries = [author_entry(a, images[a["image_id"]], names) for a in data["annotations"]]
    path = tmp_path / "occ.pkl"
    path.write_bytes(pickle.dumps(entries, protocol=4))
    checked = []
    check = occsep.check_objects
    monkeypatch.setattr(occsep, "check_objects", lambda objects, where: (checked.append(str(where)),
                                                                          check(objects, where)))
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    monkeypatch.setattr(E, "predict_dataset", lambda *args, **kwargs: [])
    sets = {"a": (ann_file, root / "images"), "b": (ann_file, root / "images")}
    report = E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, tmp_path / "e", device="cpu", progress=False,
                                   occsep_lists={"occluded": path, "separated": entries})
    assert checked == [str(path), "separated object list"]  # once each, not once per set
    assert report["b"]["occluded_recall"] == 0.0 and report["b"]["occsep"]["separated"]["total"] == len(entries)
    # evaluate() on its own (a notebook): a list given as such is checked; one loaded already is not again
    checked.clear()
    E.evaluate(ann_file, [], occsep_lists={"occluded": entries}, occlusion_splits=False)
    loaded = E.load_occsep_lists({"occluded": path})
    E.evaluate(ann_file, [], occsep_lists=loaded, occlusion_splits=False)
    assert checked == ["occluded object list", str(path)]
    with pytest.raises(OccsynthError, match=r"^occluded object list: 1 bad object entry: entry 0: object entry"):
        E.evaluate(ann_file, [], occsep_lists={"occluded": [entries[0][:2]]})
    # an RLE of another size than its image's: the error names the list's file, or the list given in memory
    image = images[data["annotations"][1]["image_id"]]
    taller = np.vstack([mask_ops.decode(entries[1][4], image["height"], image["width"]),
                        np.zeros((1, image["width"]), bool)])  # the same mask with one more row
    rle = mask_ops.encode(taller)
    wrong = entries[:1] + [entries[1][:4] + [dict(rle, counts=rle["counts"].encode())]]
    (tmp_path / "wrong.pkl").write_bytes(pickle.dumps(wrong, protocol=4))
    size = rf"entry 1: its RLE size \[{image['height'] + 1}, {image['width']}\] differs from the size"
    for given, where in ((tmp_path / "wrong.pkl", str(tmp_path / "wrong.pkl")), (wrong, "separated object list")):
        with pytest.raises(OccsynthError, match=rf"^{re.escape(where)}: {size}"):
            E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, tmp_path / "w", device="cpu", progress=False,
                                  occsep_lists={"separated": given})
    # no listed object on the set's images: recall None ("-" in the table), not 0%
    elsewhere = [["elsewhere.png", *entry[1:]] for entry in entries[:2]]
    out = E.evaluate(ann_file, [], occsep_lists={"occluded": elsewhere}, occlusion_splits=False)
    assert out["occluded_recall"] is None and out["occsep"]["occluded"]["outside_set"] == 2
    assert json.loads(json.dumps(out))["occsep"]["occluded"]["recall"] is None
    assert "| demo | - | 0 / 0 (2 outside the set) | - | - |" in E.markdown_table({"demo": out})


def test_occsep_sizes_leave_an_image_record_without_a_size_to_the_record_checks():
    one = {"size": [4, 4], "counts": [0, 16]}
    data = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png", "height": 4, "width": 5}],
            "categories": [{"id": 1, "name": "one"}]}
    lists = E.load_occsep_lists({"occluded": [["a.png", 1, [0, 0, 4, 4], one]]})
    E.check_occsep_entries(data, lists, "gt.json")  # a.png has no size: skipped and counted when evaluated
    lists = E.load_occsep_lists({"occluded": [["a.png", 1, [0, 0, 4, 4], one], ["b.png", 1, [0, 0, 4, 4], one]]})
    with pytest.raises(OccsynthError, match=r"^occluded object list: entry 1: its RLE size \[4, 4\] differs from the "
                                            r"size \[4, 5\] of image 'b.png' in gt.json"):
        E.check_occsep_entries(data, lists, "gt.json")



def test_a_listed_polygon_far_outside_its_image_is_refused_before_predicting():
    """A list is checked for shape alone when read (its images' sizes are unknown there). A polygon with vertices far
    outside its image (damaged data, masks.check_polygons) passed, and the recall stopped at it with a DegenerateMask
    traceback after the whole prediction; it is refused up front, as an RLE of another size is. Vertices just
    outside are clipped, as every reader clips them; an object on another image is not checked."""
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 6}],
            "categories": [{"id": 1, "name": "person"}]}
    near, far = [[0, 0, 10, 0, 10, 7]], [[0, 0, 400, 0, 400, 400]]  # near: x up to 10 on a 6-wide image
    fine = [["a.png", 1, [0, 0, 4, 4], near], ["elsewhere.png", 1, [0, 0, 4, 4], far]]
    E.check_occsep_entries(data, E.load_occsep_lists({"occluded": fine}), "gt.json")
    lists = E.load_occsep_lists({"occluded": [["a.png", 1, [0, 0, 4, 4], near], ["a.png", 1, [0, 0, 4, 4], far]]})
    with pytest.raises(OccsynthError) as raised:
        E.check_occsep_entries(data, lists, "gt.json")
    assert str(raised.value) == ("occluded object list: entry 1: its polygon cannot be read on image 'a.png' in "
                                 "gt.json: polygon vertices far outside the 6x4 image")

def test_a_listed_object_of_no_category_of_the_set_is_refused_naming_the_list_and_entry():
    """Scored, it could only ever be a miss: the recall would be wrong without a word."""
    one = {"size": [4, 4], "counts": [0, 16]}
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}
    fine = [["a.png", "car", 0, [0, 0, 4, 4], one], ["a.png", 1, [0, 0, 4, 4], one],
            ["elsewhere.png", "unicorn", [0, 0, 4, 4], one]]  # not on the set's images: not scored, not checked
    E.check_occsep_entries(data, E.load_occsep_lists({"occluded": fine}), "gt.json")
    for cls, kind in (("Car", "name"), (2, "id")):
        lists = E.load_occsep_lists({"separated": [*fine, ["a.png", cls, [0, 0, 4, 4], one]]})
        with pytest.raises(OccsynthError) as raised:
            E.check_occsep_entries(data, lists, "gt.json")
        assert str(raised.value) == (f"separated object list: entry 3: its class {cls!r} is no category {kind} of "
                                     "gt.json, so no prediction could match it")


def test_occsep_recall_counts_objects_on_images_not_evaluated_outside_the_set():
    """``image_ids`` (evaluate_checkpoint passes the images it could read) limits the recall as it limits AP:
    an object on an image that was not evaluated has no prediction to be found by, so it is not a miss."""
    gt = gt_set()
    whole = mask_ops.encode(rect(2, 2, 12, 12))
    entry = lambda name: [name, "a", 0, [2, 2, 10, 10], whole]  # noqa: E731
    lists = {"occluded": [entry("1.png"), entry("2.png"), entry("2.png"), entry("9.png")]}
    results = [det(1, 10, rect(2, 2, 12, 12), 0.9)]  # finds the object on image 1
    every = E.evaluate(gt, results, occsep_lists=lists, occlusion_splits=False)["occsep"]["occluded"]
    assert (every["found"], every["total"], every["outside_set"], every["recall"]) == (1, 3, 1, 1 / 3)
    part = E.evaluate(gt, results, image_ids=[1], occsep_lists=lists, occlusion_splits=False)
    occ = part["occsep"]["occluded"]
    assert (occ["found"], occ["total"], occ["outside_set"], occ["recall"]) == (1, 1, 3, 1.0)
    assert part["occluded_recall"] == 1.0 and part["images"] == 1
    none = E.evaluate(gt, [], image_ids=[2], occsep_lists={"occluded": [entry("1.png")]}, occlusion_splits=False)
    assert none["occluded_recall"] is None and none["occsep"]["occluded"]["outside_set"] == 1


def test_an_occlusion_ratio_that_is_no_number_in_0_1_puts_its_ground_truth_in_no_ratio_bin():
    """true, NaN and inf were read as ratios 1.0, nan, inf: all three landed in the last bin, [0.3,1]."""
    gt = gt_set()
    anns = gt["annotations"]
    anns[1]["occlusion_ratio"], anns[2]["occlusion_ratio"] = True, float("nan")
    assert E.occlusion_levels(gt)["occlusion_ratio"] == {1: 0.0}
    for outside in (float("inf"), 1.5, -0.2):  # -0.2 was binned with the unoccluded, 1.5 with the most occluded
        anns[2]["occlusion_ratio"] = outside
        assert E.occlusion_levels(gt)["occlusion_ratio"] == {1: 0.0}
    anns[2]["occlusion_ratio"] = 1
    assert E.occlusion_levels(gt)["occlusion_ratio"] == {1: 0.0, 3: 1.0}
    anns[2]["occlusion_ratio"] = 0.5
    results = [det(1, 10, rect(2, 2, 12, 12), 0.9), det(2, 10, rect(5, 5, 25, 25), 0.8)]
    ratio = E.evaluate(gt, results)["segm_by_occlusion_ratio"]
    assert [ratio[n]["instances"] for n in E.bin_names(E.RATIO_EDGES)] == [1, 0, 1]
    assert ratio["[0.3,1]"]["AP"] == 0.0  # only object 3 (class 20, missed); object 2 is in no bin
    assert ratio["[0.1,0.3)"]["AP"] == -1.0


def test_a_failure_in_a_later_set_leaves_the_earlier_run_files_as_they_were(tmp_path, monkeypatch):
    """Set a's detections used to be rewritten before set b failed, while results.json stayed the earlier
    run's: the folder then held one run's detections beside another run's scores."""
    import json

    from datasets import load_annotations

    root = write_dataset(tmp_path / "set")
    ann_file = root / "annotations.json"
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    sets = {"a": (ann_file, root / "images"), "b": (ann_file, root / "images")}
    out = tmp_path / "e"
    monkeypatch.setattr(E, "predict_dataset", lambda *args, **kwargs: [])
    E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, out, device="cpu", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == [".lock", "detections_a.json", "detections_b.json", "results.json", "results.md"]
    ann = load_annotations(root)["annotations"][0]
    found = [{"image_id": ann["image_id"], "category_id": ann["category_id"], "score": score, "bbox": ann["bbox"],
              "segmentation": ann["segmentation"]} for score in (0.9, 0.01)]  # a low score is a detection too
    calls = []

    def predict_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")
        return found

    monkeypatch.setattr(E, "predict_dataset", predict_then_fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, out, device="cpu", progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing staged is left either
    (out / ".detections_gone.json.staged").write_text("[]")  # left by a run killed outright, with another set
    calls.clear()
    monkeypatch.setattr(E, "predict_dataset", lambda *args, **kwargs: found)
    report = E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, out, device="cpu", progress=False)
    for name in ("a", "b"):  # every detection of the set, as predicted
        assert json.loads((out / f"detections_{name}.json").read_text()) == found and report[name]["detections"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_strict_evaluation_stops_at_a_bad_ground_truth_mask_before_predicting_naming_the_file(tmp_path, monkeypatch):
    """It stopped only after predicting the whole set, said the mask was 'kept as an ignore region', and did not
    name the file."""
    import json

    root = write_dataset(tmp_path / "set")
    ann_file = root / "annotations.json"
    data = json.loads(ann_file.read_text())
    bad = data["annotations"][2]
    bad["segmentation"] = [[1, 1, 5, 5]]  # 4 coordinates: no polygon
    ann_file.write_text(json.dumps(data))
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    predicted = []
    monkeypatch.setattr(E, "predict_dataset", lambda *args, **kwargs: predicted.append(1) or [])
    with pytest.raises(OccsynthError) as raised:
        E.evaluate_checkpoint(tmp_path / "tiny.pt", {"a": (ann_file, root / "images")}, tmp_path / "e", device="cpu",
                              progress=False, strict=True)
    assert str(raised.value).startswith(f"{ann_file}: annotation {bad['id']} (image {bad['image_id']}): degenerate")
    assert "kept" not in str(raised.value) and predicted == [] and not (tmp_path / "e").exists()
    E.evaluate_checkpoint(tmp_path / "tiny.pt", {"a": (ann_file, root / "images")}, tmp_path / "e", device="cpu",
                          progress=False)  # without --strict: kept as an ignore region, and counted
    assert json.loads((tmp_path / "e" / "results.json").read_text())["a"]["skipped"]["counts"] == {
        "degenerate or empty segmentation": 1}


@pytest.mark.parametrize("mode", ["visible", "amodal"])
def test_evaluation_checks_the_scored_ground_truth_once_before_predicting(tmp_path, monkeypatch, mode):
    """Strict evaluation cleaned every ground-truth mask twice (before predicting, then to score), and in amodal
    mode checked the visible masks up front: a bad amodal mask stopped the run only after predicting."""
    import json

    from bcnet import checkpoint as ckpt
    from bcnet import train as T

    root = write_dataset(tmp_path / "set")
    ann_file = root / "annotations.json"
    schedule = T.load_schedule("schedule-tiny", {"short": 48, "long_max": 64, "mode": mode})
    config = T.model_config(schedule)
    ckpt.save_checkpoint(tmp_path / "tiny.pt", model=T.build(6, config), iteration=0, schedule=schedule,
                         model_config={"num_classes": 6, **config}, category_ids=[1, 3, 5, 7, 9], rng=False)
    cleaned, predicted = [], []
    real_clean = E.clean_ground_truth
    monkeypatch.setattr(E, "clean_ground_truth", lambda *a, **k: cleaned.append(1) or real_clean(*a, **k))
    monkeypatch.setattr(E, "predict_dataset", lambda *args, **kwargs: predicted.append(1) or [])
    sets = {"a": (ann_file, root / "images")}
    E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, tmp_path / "e", device="cpu", progress=False, strict=True)
    assert cleaned == [1] and predicted == [1]
    data = json.loads(ann_file.read_text())
    bad = data["annotations"][2]
    bad["amodal_segmentation" if mode == "amodal" else "segmentation"] = {"size": [48, 64], "counts": "0:"}
    ann_file.write_text(json.dumps(data))
    cleaned.clear(), predicted.clear()
    with pytest.raises(OccsynthError) as raised:
        E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, tmp_path / "e2", device="cpu", progress=False, strict=True)
    assert str(raised.value).startswith(f"{ann_file}: annotation {bad['id']} (image {bad['image_id']}): "
                                        "degenerate or empty segmentation (compressed RLE covers"), str(raised.value)
    assert predicted == [] and not (tmp_path / "e2").exists()


def test_each_set_is_checked_for_something_to_score_before_any_prediction_and_once_on_the_images_read(
        tmp_path, monkeypatch):
    """After predicting a set, its ground truth on the images read was checked twice over: by evaluate_checkpoint,
    then again by evaluate() on the same images. Every set is still checked up front (a second set with nothing to
    score must not cost the first one's predictions), and its refusal after predicting still names the set."""
    root = write_dataset(tmp_path / "set")
    ann_file = root / "annotations.json"
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    events = []
    real = E.require_scorable

    def counted(data, where, image_ids, *args, **kwargs):
        events.append(("scorable", where, sorted(image_ids)))
        return real(data, where, image_ids, *args, **kwargs)

    monkeypatch.setattr(E, "require_scorable", counted)
    monkeypatch.setattr(E, "predict_dataset", lambda model, dataset, **kwargs: events.append(("predict",)) or [])
    sets = {"a": (ann_file, root / "images"), "b": (ann_file, root / "images")}
    E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, tmp_path / "e", device="cpu", progress=False)
    images = sorted(CocoInstances(ann_file, root / "images").image_ids)
    a, b = ("scorable", f"set 'a': {ann_file}", images), ("scorable", f"set 'b': {ann_file}", images)
    assert events == [a, b, ("predict",), a, ("predict",), b], events


def test_evaluation_skips_an_image_record_over_the_pixel_limit_without_reading_it(tmp_path, monkeypatch):
    """A record claiming 20000x20000 with a matching file was decoded in full, run through the model, and its
    predicted masks pasted at that size. It is skipped by reason (--strict: the run stops at it before predicting,
    naming the file and the record). The limit is lowered here: images 1 and 3 are 48x64, image 2 40x56."""
    from occsynth import coco

    root = write_dataset(tmp_path / "set")
    ann_file = root / "annotations.json"
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    monkeypatch.setattr(mask_ops, "MAX_IMAGE_PIXELS", 40 * 56)
    decoded = []
    real = coco.cv2.imdecode
    monkeypatch.setattr(coco.cv2, "imdecode", lambda *args: decoded.append(real(*args).shape[:2]) or real(*args))
    sets = {"a": (ann_file, root / "images")}
    with pytest.raises(OccsynthError) as raised:
        E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, tmp_path / "s", device="cpu", progress=False, strict=True)
    assert str(raised.value) == (f"{ann_file}: image record 1: image too large (48x64 pixels (height x width), over "
                                 "the limit of 2,240)")
    assert decoded == [] and not (tmp_path / "s").exists()
    report = E.evaluate_checkpoint(tmp_path / "tiny.pt", sets, tmp_path / "e", device="cpu", progress=False)
    assert report["a"]["images"] == 1 and report["a"]["skipped"]["counts"]["image too large"] == 2
    assert decoded == [(40, 56)]


@pytest.mark.parametrize("others, hint", [
    ((), "name no file under any folder"), ((errors.MALFORMED_RECORD,), "name no file under any folder"),
    ((errors.MISSING_FILE,), "check its image root, sets['val'][1]/--images (now /imgs)")])
def test_a_set_with_no_readable_image_is_told_that_no_image_root_helps_only_when_every_image_was_named_outside_it(
        others, hint):
    """Absolute names (outside any root) alone, or beside records skipped for other than their image: no --images
    can help; beside images missing under the root, another root may find those."""
    skips = SkipLog()
    skips.skip(BadRecord(errors.OUTSIDE_ROOT, "image record 1 (file_name '/abs/1.jpg')"))
    for reason in others:
        skips.skip(BadRecord(reason, "image record 2"))

    class Empty:
        ann_file = Path("val.json")

        def __len__(self):
            return 0

    Empty.skips = skips
    with pytest.raises(OccsynthError, match=re.escape(hint)):
        E._require_images("val", Empty(), "/imgs")
