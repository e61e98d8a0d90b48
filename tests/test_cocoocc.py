"""COCO-OCC selection: exact image sets for hand-made boxes under every measure / threshold / crowd choice."""
import contextlib
import copy
import io
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import manifests
from cli import cocoocc_commands
from cli.occsynth_cli import main
from occsynth import atomic, coco, cocoocc, errors
from occsynth.cocoocc import alternative_counts, build_cocoocc, max_overlap_per_image, select_images
from occsynth.boxes import pairwise_overlap
from occsynth.coco import read_image, resolve_image_path
from occsynth.errors import OccsynthError, SkipLog, plural

# image id -> boxes (x, y, w, h, iscrowd). Overlaps worked out by hand:
#   1: inter 50, union 150 -> iou 1/3,   min 0.5
#   2: inter 20, union 180 -> iou 0.111, min 0.2 (exactly)
#   3: 5x5 inside 20x20   -> iou 0.0625, min 1.0
#   4: crowd box overlapping -> with crowd iou 80/120, min 0.8; without: one box -> 0
#   5: one box; 6: no boxes -> 0
#   7: inter 30, union 170 -> iou 0.176, min 0.3
SCENES = {
    1: [(0, 0, 10, 10, 0), (5, 0, 10, 10, 0)],
    2: [(0, 0, 10, 10, 0), (8, 0, 10, 10, 0)],
    3: [(0, 0, 20, 20, 0), (0, 0, 5, 5, 0)],
    4: [(0, 0, 10, 10, 0), (2, 0, 10, 10, 1)],
    5: [(3, 3, 4, 4, 0)],
    6: [],
    7: [(0, 0, 10, 10, 0), (7, 0, 10, 10, 0)],
}


def make_dataset():
    images, annotations = [], []
    for image_id in (3, 1, 6, 2, 5, 7, 4):  # file order differs from id order
        images.append({"id": image_id, "file_name": f"{image_id:04d}.jpg", "height": 40, "width": 40})
    ann_id = 100
    for image_id in (7, 1, 2, 3, 4, 5):  # annotations not grouped like the images table
        for x, y, w, h, crowd in SCENES[image_id]:
            ann_id += 1
            seg = ({"size": [40, 40], "counts": [0, 1600]} if crowd else
                   [[x, y, x + w, y, x + w, y + h, x, y + h]])
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 3 if crowd else 1,
                                "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": crowd,
                                "segmentation": seg, "extra": "kept"})
    categories = [{"id": 1, "name": "a", "supercategory": "x"}, {"id": 3, "name": "c", "supercategory": "x"}]
    return {"info": {"description": "hand-made"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": categories}


@pytest.mark.parametrize("overlap, threshold, crowd, expected", [
    ("iou", 0.2, False, [1]),
    ("iou", 0.1, False, [1, 2, 7]),
    ("iou", 0.05, False, [3, 1, 2, 7]),
    ("iou", 0.2, True, [1, 4]),
    ("iou", 0.34, False, []),
    ("min", 0.2, False, [3, 1, 2, 7]),
    ("min", 0.35, False, [3, 1]),
    ("min", 0.2, True, [3, 1, 2, 7, 4]),
    ("min", 0.9, True, [3]),
])
def test_select_images_exact(overlap, threshold, crowd, expected):
    assert select_images(make_dataset(), overlap=overlap, threshold=threshold, count_crowd=crowd) == expected


@pytest.mark.parametrize("boxes", [
    [[0, 0, 0.3, 1], [0.2, 0, 0.3, 1]],                       # IoU 1/5, computed as 0.19999999999999996
    [[100.7, 50, 30.3, 40], [120.9, 50, 30.3, 40]],           # IoU 1/5, computed as 0.19999999999999982
])
def test_boxes_overlapping_by_exactly_the_threshold_select_their_image(tmp_path, boxes):
    """Inter 0.1 x 1 over union 0.5 x 1 (10.1 x 40 over 50.5 x 40): 1/5 in decimals, a hair below it in float."""
    data = make_dataset()
    data["annotations"] = [{"id": 800 + k, "image_id": 5, "category_id": 1, "bbox": box, "area": 1.0, "iscrowd": 0,
                            "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]} for k, box in enumerate(boxes)]
    assert max_overlap_per_image(data)[5] < 0.2  # the float arithmetic the tolerance is for
    assert select_images(data, threshold=0.2) == [5]
    assert alternative_counts(data)["iou/no-crowd"]["0.2"] == 1 and alternative_counts(data)["iou/no-crowd"]["0.25"] == 0
    report = build_cocoocc(write_set(tmp_path / "val.json", data), tmp_path / "o", threshold=0.2)
    assert report["counts"]["images"] == 1 and report["counts"]["annotations"] == 2
    assert select_images(data, threshold=0.2000001) == []  # a real shortfall still leaves it out


@pytest.mark.parametrize("threshold", [-1, 0, 1.5, float("nan")])
def test_select_images_refuses_a_threshold_build_cocoocc_refuses(threshold):
    with pytest.raises(OccsynthError, match="threshold must be a number in"):
        select_images(make_dataset(), threshold=threshold)


@pytest.mark.parametrize("function", [select_images, max_overlap_per_image, alternative_counts, cocoocc.has_crowd])
@pytest.mark.parametrize("data, words", [
    ({"annotations": []}, "COCO dataset has no 'images' key"),
    ({"images": []}, "COCO dataset has no 'annotations' key"),
    ({"images": [], "annotations": {}}, "COCO dataset: 'annotations' must be a list, got dict"),
    ([], "expected a COCO dataset (a dict with 'images' and 'annotations' lists), got list"),
])
def test_the_public_functions_name_a_missing_key_instead_of_a_bare_key_error(function, data, words):
    with pytest.raises(OccsynthError) as caught:
        function(data)
    assert str(caught.value).startswith(words)


def test_max_overlap_values():
    best = max_overlap_per_image(make_dataset(), "iou")
    assert best[1] == pytest.approx(1 / 3) and best[2] == pytest.approx(20 / 180)
    assert best[4] == 0.0 and best[5] == 0.0 and best[6] == 0.0
    assert max_overlap_per_image(make_dataset(), "iou", count_crowd=True)[4] == pytest.approx(80 / 120)
    with pytest.raises(Exception, match="overlap measure"):
        max_overlap_per_image(make_dataset(), "dice")


@pytest.mark.parametrize("bad", [[float("nan"), 0, 5, 5], [0, 0, float("inf"), 5], [True, 0, 5, 5], [0, 0, 5], "box",
                                 [10 ** 400, 0, 5, 5]])
def test_an_unusable_box_is_left_out_and_the_image_keeps_its_overlap(bad):
    data = make_dataset()
    data["annotations"].append({"id": 999, "image_id": 1, "category_id": 1, "bbox": bad, "area": 1.0,
                                "iscrowd": 0, "segmentation": [[0, 0, 1, 0, 1, 1]]})
    assert max_overlap_per_image(data, "iou")[1] == pytest.approx(1 / 3)
    assert select_images(data) == [1]


@pytest.mark.parametrize("options, words", [
    ({"threshold": 0}, "threshold must be a number in (0, 1], got 0 (0 would keep every image)"),
    ({"threshold": 1.5}, "threshold must be a number in (0, 1], got 1.5"),
    ({"threshold": "0.2"}, "threshold must be a number in (0, 1], got '0.2'"),
    ({"threshold": True}, "threshold must be a number in (0, 1], got True"),
    ({"overlap": "dice"}, "overlap measure must be one of iou, min, got 'dice'"),
    ({"count_crowd": "yes"}, "count_crowd must be true or false, got 'yes'"),
])
def test_build_refuses_a_bad_option_before_reading_anything(tmp_path, options, words):
    with pytest.raises(OccsynthError) as caught:
        build_cocoocc(tmp_path / "none.json", tmp_path / "occ", **options)  # the file is not even looked for
    assert str(caught.value) == words
    cocoocc.check_options(overlap="min", threshold=1, count_crowd=True)  # 1 is in (0, 1]
    assert not (tmp_path / "occ").exists()


def test_overlap_histogram_counts_every_value_and_refuses_one_that_is_no_overlap_ratio():
    histogram = cocoocc.overlap_histogram([0.0, 0.05, 0.2, 0.99, 1.0, 1.0 + 1e-15])  # the last: float rounding of 1
    assert histogram["counts"] == [1, 0, 1, 0, 0, 0, 0, 0, 0, 3] and histogram["no_overlap"] == 1
    assert sum(histogram["counts"]) + histogram["no_overlap"] == 6
    for bad in (1.5, -0.25, float("nan")):  # np.histogram dropped 1.5 without a word; -0.25 counted as no overlap
        with pytest.raises(ValueError, match=r"overlap ratios must lie in \[0, 1\]; got 1 outside it, e.g. "
                                             + re.escape(repr(bad))):
            cocoocc.overlap_histogram([0.3, bad])
    with pytest.raises(ValueError, match=r"histogram edges must span \[0, 1\], got 0..0.5"):
        cocoocc.overlap_histogram([0.3, 0.7], edges=(0, 0.25, 0.5))


def test_alternative_counts_table():
    table = alternative_counts(make_dataset())
    assert set(table) == {"iou/no-crowd", "iou/crowd", "min/no-crowd", "min/crowd"}
    assert table["iou/no-crowd"]["0.1"] == 3 and table["iou/no-crowd"]["0.2"] == 1
    assert table["iou/crowd"]["0.2"] == 2 and table["min/crowd"]["0.2"] == 5 and table["min/no-crowd"]["0.5"] == 2


def test_a_build_reads_each_box_once_for_the_selection_and_every_table_of_the_report(tmp_path, monkeypatch):
    """The selection and the report's four tables (iou/min x crowd or not) grouped the boxes five times and measured
    each image five times (20 s of build-cocoocc's 58 on a COCO-train-size file): now once, for all images at once."""
    calls = []
    real = cocoocc.is_box
    monkeypatch.setattr(cocoocc, "is_box", lambda box: calls.append(box) or real(box))
    data = make_dataset()
    report = build_cocoocc(write_set(tmp_path / "val.json", data), tmp_path / "occ")
    assert len(calls) == 2 * len(data["annotations"])  # the record check, then the overlaps
    assert report["alternatives"]["iou/no-crowd"]["0.2"] == 1 and report["alternatives"]["min/crowd"]["0.2"] == 5


@pytest.mark.parametrize("step", [1, 2, 7, 1 << 20])
def test_the_overlap_table_gives_each_image_its_own_pairs_largest_overlap_whatever_the_step(monkeypatch, step):
    rng = np.random.default_rng(0)
    images = [{"id": k, "file_name": f"{k}.jpg", "height": 100, "width": 100} for k in range(40)]
    annotations = [{"id": n, "image_id": int(rng.integers(45)), "bbox": [float(v) for v in rng.uniform(0, 50, 4)],
                    "iscrowd": int(rng.random() < 0.2), "category_id": 1} for n in range(150)]
    data = {"images": images, "annotations": annotations}
    monkeypatch.setattr(cocoocc, "PAIRS_PER_STEP", step)
    table = cocoocc.overlap_table(data)
    for (overlap, crowd), best in table.items():
        for image in images:
            boxes = [a["bbox"] for a in annotations if a["image_id"] == image["id"] and (crowd or not a["iscrowd"])]
            expected = float(pairwise_overlap(np.array(boxes), overlap).max()) if len(boxes) > 1 else 0.0
            assert best[image["id"]] == expected  # to the last bit: the same formula


def test_each_step_of_the_overlap_table_measures_as_many_pairs_as_the_step_allows(monkeypatch):
    """Boxes are taken in order with all their pairs while those stay within PAIRS_PER_STEP (a box with more is
    measured alone): one image of 5 boxes has 4, 3, 2, 1 and 0 pairs after each box."""
    sizes = []
    real = cocoocc.overlap_of
    monkeypatch.setattr(cocoocc, "overlap_of",
                        lambda a, b, measure: sizes.append((len(a), measure)) or real(a, b, measure))
    data = {"images": [{"id": 1}], "annotations": [{"image_id": 1, "bbox": [k, 0, 2, 2]} for k in range(5)]}
    for step, pairs in ((3, [4, 3, 3]), (7, [7, 3]), (10, [10]), (1, [4, 3, 2, 1])):
        sizes.clear()
        monkeypatch.setattr(cocoocc, "PAIRS_PER_STEP", step)
        assert cocoocc.overlap_table(data)["min", False] == {1: 0.5}
        assert sizes == [(n, measure) for n in pairs for measure in ("iou", "min")], step


def test_build_writes_loadable_subset(tmp_path):
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(make_dataset()))
    report = build_cocoocc(ann, tmp_path / "occ", overlap="min", threshold=0.2)
    out = json.loads((tmp_path / "occ" / "annotations.json").read_text())
    assert [im["id"] for im in out["images"]] == [3, 1, 2, 7]
    source = make_dataset()
    assert out["annotations"] == [a for a in source["annotations"] if a["image_id"] in {1, 2, 3, 7}]
    assert out["categories"] == source["categories"]
    manifest = json.loads((tmp_path / "occ" / "manifest.json").read_text())
    assert manifest["image_ids"] == [3, 1, 2, 7] and manifest["counts"]["images"] == 4
    assert manifest["options"] == {"overlap": "min", "threshold": 0.2, "count_crowd": False}
    assert len(manifest["source"]["sha256"]) == 64
    saved = json.loads((tmp_path / "occ" / "report.json").read_text())
    # Images 4, 5, 6 have no overlapping pair: counted apart, in no bin; min overlaps 0.2, 0.3, 0.5, 1.0.
    assert saved["histogram"]["no_overlap"] == 3 and saved["histogram"]["counts"] == [0, 0, 1, 1, 0, 1, 0, 0, 0, 1]
    # as the command prints it: the last bin holds 1.0 (a box inside another), so it is closed
    assert cocoocc_commands.format_report(report)[1] == (
        "largest overlap per image: 3 images without any overlapping box pair; the others per bin [0,0.1): 0, "
        "[0.1,0.2): 0, [0.2,0.3): 1, [0.3,0.4): 1, [0.4,0.5): 0, [0.5,0.6): 1, [0.6,0.7): 0, [0.7,0.8): 0, "
        "[0.8,0.9): 0, [0.9,1]: 1")
    assert report["counts"]["paper_images"] == 1005
    # pycocotools loads it and evaluates as usual: GT boxes as detections give AP 1.
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "occ" / "annotations.json"))
        dets = gt.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                            "score": 1.0} for a in out["annotations"] if not a["iscrowd"]])
        ev = COCOeval(gt, dets, "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_build_links_and_copies_images(tmp_path):
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(make_dataset()))
    root = tmp_path / "imgs"
    root.mkdir()
    for image_id in (1, 2, 3, 4, 5, 6):  # 7 is missing
        (root / f"{image_id:04d}.jpg").write_bytes(b"img%d" % image_id)
    report = build_cocoocc(ann, tmp_path / "l", image_root=root, image_mode="link", threshold=0.1)
    assert os.path.islink(tmp_path / "l" / "images" / "0001.jpg")
    assert (tmp_path / "l" / "images" / "0002.jpg").read_bytes() == b"img2"
    assert report["skipped"]["counts"] == {"missing image file": 1}
    build_cocoocc(ann, tmp_path / "c", image_root=root, image_mode="copy", threshold=0.2)
    copied = tmp_path / "c" / "images" / "0001.jpg"
    assert not os.path.islink(copied) and copied.read_bytes() == b"img1"
    with pytest.raises(Exception, match="missing image file"):
        build_cocoocc(ann, tmp_path / "s", image_root=root, image_mode="copy", threshold=0.1, strict=True)


def test_lvis_records_are_placed_by_coco_url_and_written_with_the_file_name_it_gives(tmp_path):
    """LVIS v1 records have no file_name: the file is coco_url's split folder and name (as every reader takes it),
    and the records written name it, so that the set's other readers (bcnet's dataset) find the placed files.
    The images selected are those of the same set with file names."""
    coco = make_dataset()
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    lvis = copy.deepcopy(coco)
    for image in lvis["images"]:
        image["coco_url"] = f"http://images.cocodataset.org/val2017/{image.pop('file_name')}"
    (tmp_path / "lvis.json").write_text(json.dumps(lvis))
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    for image_id in range(1, 8):
        (root / "val2017" / f"{image_id:04d}.jpg").write_bytes(b"img%d" % image_id)
    report = build_cocoocc(tmp_path / "lvis.json", tmp_path / "l", image_root=root, image_mode="link", threshold=0.1)
    out = json.loads((tmp_path / "l" / "annotations.json").read_text())
    assert out["images"] and all(i["file_name"] == f"val2017/{i['id']:04d}.jpg" for i in out["images"])
    for image in out["images"]:
        placed = tmp_path / "l" / "images" / image["file_name"]
        assert os.path.islink(placed) and placed.read_bytes() == b"img%d" % image["id"]
    assert report["skipped"]["counts"] == {}
    build_cocoocc(tmp_path / "coco.json", tmp_path / "c", threshold=0.1)
    plain = json.loads((tmp_path / "c" / "annotations.json").read_text())
    assert [i["id"] for i in out["images"]] == [i["id"] for i in plain["images"]]


def test_placing_images_shows_a_progress_bar_that_quiet_turns_off(tmp_path):
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(make_dataset()))
    root = tmp_path / "imgs"
    root.mkdir()
    for image_id in range(1, 8):
        (root / f"{image_id:04d}.jpg").write_bytes(b"img%d" % image_id)
    args = ["build-cocoocc", "--ann", str(ann), "--images", str(root), "--threshold", "0.1"]
    shown = CliRunner().invoke(main, args + ["--out", str(tmp_path / "a"), "--copy"])
    assert shown.exit_code == 0, shown.output
    selected = len(json.loads((tmp_path / "a" / "annotations.json").read_text())["images"])
    assert "copy images: 100%" in shown.stderr and f"{selected}/{selected}" in shown.stderr
    checked = CliRunner().invoke(main, args + ["--out", str(tmp_path / "b")])  # no --link/--copy: files checked
    assert checked.exit_code == 0 and "check image files: 100%" in checked.stderr
    quiet = CliRunner().invoke(main, args + ["--out", str(tmp_path / "c"), "--link", "--quiet"])
    assert quiet.exit_code == 0 and "link images" not in quiet.stderr and "100%" not in quiet.stderr


def test_an_annotation_whose_bbox_is_not_four_numbers_is_skipped_and_the_output_stays_json(tmp_path):
    data = make_dataset()
    bad = next(a for a in data["annotations"] if a["image_id"] == 1)
    bad["bbox"] = [0, 0, "1", 1]  # (a whole number no float holds, 10 ** 400, makes the file malformed JSON: below)
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(data))
    report = build_cocoocc(ann, tmp_path / "o", threshold=0.1)
    assert report["skipped"]["counts"] == {errors.MALFORMED_RECORD: 1}
    assert f"annotation {bad['id']}" in report["skipped"]["examples"][errors.MALFORMED_RECORD]
    lines = cocoocc_commands.format_report(report)  # counts and an example, as every command prints them
    at = lines.index("skipped bad input: 1")
    assert lines[at + 1].startswith(f"        1  malformed record, e.g. annotation {bad['id']} (bbox [")
    assert lines[at + 1].endswith("is not 4 finite numbers)")
    text = (tmp_path / "o" / "annotations.json").read_text()
    out = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the output"))
    assert bad["id"] not in {a["id"] for a in out["annotations"]}
    for info in ([1, 2], "hello"):  # an info that is not an object is not copied (it was a TypeError)
        ann.write_text(json.dumps(dict(make_dataset(), info=info)))
        build_cocoocc(ann, tmp_path / f"i{len(info)}", threshold=0.1)
        assert json.loads((tmp_path / f"i{len(info)}" / "annotations.json").read_text())["info"]["description"] \
            .startswith("COCO-OCC: images of val.json")


@pytest.mark.parametrize("where", ["bbox", "area", "info"])
def test_nan_or_infinity_anywhere_in_the_input_is_malformed_json_and_nothing_is_written(tmp_path, where):
    """As every other reader of the project says of such a file: copied into the output, NaN would make a file
    that strict JSON readers (and occsynth's own streaming readers) refuse."""
    data = make_dataset()
    first = data["annotations"][0]
    if where == "info":
        data["info"] = {"year": float("inf")}
    else:
        first[where] = [float("nan")] * 4 if where == "bbox" else float("nan")
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(data))  # Python's json writes NaN and Infinity
    result = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o"),
                                                "--threshold", "0.1"])
    assert result.exit_code == 2, result.output
    assert f"{ann}: malformed JSON" in result.output and "are not JSON" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("number", [2 ** 63, -2 ** 63, 10 ** 30])
def test_a_whole_number_beyond_64_bits_is_malformed_json_and_nothing_is_written(tmp_path, number):
    """json.load reads any whole number: build-cocoocc copied an annotation id of 2**70 into its output, which
    every streaming reader of the project (stats, annotate-occluders, generate) then refused as malformed JSON."""
    data = make_dataset()
    data["annotations"][0]["id"] = number
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o"),
                                       "--threshold", "0.1"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {ann}: malformed JSON ({number}: ") and "64-bit" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()
    data["annotations"][0]["id"] = 2 ** 63 - 1  # the largest the streaming readers read: still read here
    ann.write_text(json.dumps(data))
    assert build_cocoocc(ann, tmp_path / "p", threshold=0.1)["counts"]["images"] == 3


def test_a_rerun_removes_what_a_killed_build_left_but_not_a_running_builds_temporary(tmp_path):
    """A build killed while it wrote report.json left OUT/.report.json.tmp-PID-XXXX; the same command run again
    completed the set and left the stray file there for good (atomic's promise: the next run deletes it)."""
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(make_dataset()))
    out = tmp_path / "o"
    build_cocoocc(ann, out, threshold=0.1)
    killed = out / ".report.json.tmp-4242-0badf00d"
    killed.write_text('{"counts": ')
    with open(out / ".annotations.json.tmp-4343-c0ffee00", "w") as running:  # another build writing it now
        assert atomic.hold_lock(running)
        build_cocoocc(ann, out, threshold=0.1)
        assert not killed.exists() and Path(running.name).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([".annotations.json.tmp-4343-c0ffee00",
                                                            "annotations.json", "manifest.json", "report.json"])


def test_cli_and_recipe(tmp_path):
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(make_dataset()))
    result = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o"),
                                       "--count-crowd"])
    assert result.exit_code == 0, result.output
    assert "selected 2 of 7 images" in result.output
    # Not val2017-sized: the paper's count is a reference, not "the paper reports".
    assert "the paper reports" not in result.output and "for reference" in result.output and "1,005" in result.output
    assert "iou/crowd" in result.output  # the input has a crowd box
    bad = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "p"), "--link"])
    assert bad.exit_code == 2 and "image_mode/--link needs image_root/--images" in bad.output
    recipe = manifests.load("cocoocc")
    assert recipe["selection"] == {"overlap": cocoocc.DEFAULT_OVERLAP, "threshold": cocoocc.DEFAULT_THRESHOLD,
                                   "count_crowd": False}
    assert recipe["paper"]["paper_images"] == cocoocc.PAPER_COUNT == 1005


def write_set(path, data=None):
    path.write_text(json.dumps(data or make_dataset()))
    return path


def test_out_holding_the_input_is_refused_even_with_force(tmp_path):
    src = tmp_path / "S"
    src.mkdir()
    ann = write_set(src / "annotations.json")
    before = ann.read_bytes()
    for args in ([], ["--force"]):
        r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(src)] + args)
        assert r.exit_code == 2 and "contains the input" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "contains the input" in r.output  # an ancestor holds it too
    assert ann.read_bytes() == before


def test_foreign_non_empty_out_needs_force_but_a_previous_build_does_not(tmp_path):
    ann = write_set(tmp_path / "val.json")
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(out)])
    assert r.exit_code == 2 and "--force" in r.output and not (out / "annotations.json").exists()
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(out), "--force"])
    assert r.exit_code == 0 and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "manifest.json").read_text())["kind"] == "coco-occ"
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(out), "--threshold", "0.1"])
    assert r.exit_code == 0, r.output  # a COCO-OCC directory may be rebuilt
    assert [im["id"] for im in json.loads((out / "annotations.json").read_text())["images"]] == [1, 2, 7]


def test_link_and_copy_together_are_refused(tmp_path):
    ann = write_set(tmp_path / "val.json")
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o"),
                                  "--images", str(tmp_path), "--link", "--copy"])
    assert r.exit_code == 2 and "mutually exclusive" in r.output and not (tmp_path / "o").exists()


def test_images_not_placed_are_dropped_with_their_annotations(tmp_path):
    data = make_dataset()
    for image in data["images"]:
        if image["id"] == 2:
            image["file_name"] = "../outside.jpg"
    ann = write_set(tmp_path / "val.json", data)
    (tmp_path / "outside.jpg").write_bytes(b"x")
    root = tmp_path / "imgs"
    root.mkdir()
    for image_id in (1, 3):  # 7 missing, 2 escapes the root
        (root / f"{image_id:04d}.jpg").write_bytes(b"img")
    report = build_cocoocc(ann, tmp_path / "o", image_root=root, image_mode="copy", threshold=0.1)
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert [im["id"] for im in out["images"]] == [1]
    assert {a["image_id"] for a in out["annotations"]} == {1} and len(out["annotations"]) == 2
    assert sorted(os.listdir(tmp_path / "o" / "images")) == ["0001.jpg"]
    assert report["dropped_images"] == [
        {"id": 2, "file_name": "../outside.jpg", "reason": "file_name points outside the image root"},
        {"id": 7, "file_name": "0007.jpg", "reason": "missing image file"}]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["image_ids"] == [1] and manifest["dropped_images"] == [2, 7]
    assert manifest["counts"]["images"] == 1 and manifest["counts"]["selected_images"] == 3
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "c"),
                                  "--images", str(root), "--link", "--threshold", "0.1"])
    assert r.exit_code == 0 and "dropped 2 selected images" in r.output and "7 (0007.jpg: missing" in r.output


def test_an_annotations_only_build_given_images_reports_selected_images_without_a_file(tmp_path):
    data = make_dataset()
    ann = write_set(tmp_path / "val.json", data)
    root = tmp_path / "imgs"
    root.mkdir()
    for image_id in (1, 3):  # 1, 2 and 7 are selected: 2 and 7 have no file
        (root / f"{image_id:04d}.jpg").write_bytes(b"img")
    report = build_cocoocc(ann, tmp_path / "o", image_root=root, threshold=0.1)
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert sorted(im["id"] for im in out["images"]) == [1, 2, 7]  # kept: nothing is placed
    assert [d["id"] for d in report["images_without_file"]] == [2, 7]
    assert report["counts"]["images_without_file"] == 2 and not (tmp_path / "o" / "images").exists()
    assert "images_without_file" not in build_cocoocc(ann, tmp_path / "n", threshold=0.1)["counts"]  # no --images
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "c"),
                                  "--images", str(root), "--threshold", "0.1"])
    assert r.exit_code == 0 and "warning: 2 selected images have no usable file" in r.output
    assert "7 (0007.jpg: missing image file)" in r.output and "does not place them)" in r.output
    (root / "0002.jpg").write_bytes(b"img")  # one left without a file: said of one
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "c1"),
                                  "--images", str(root), "--threshold", "0.1"])
    assert "warning: 1 selected image has no usable file under --images (kept in the output, which names but " \
           "does not place it): 7 (0007.jpg: missing image file)" in r.output
    (root / "0002.jpg").unlink()
    strict = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "s"),
                                       "--images", str(root), "--threshold", "0.1", "--strict"])
    assert strict.exit_code == 2 and "0002.jpg" in strict.output and "Traceback" not in strict.output
    assert not (tmp_path / "s").exists()  # a failed build leaves no --out it created
    (root / "0002.jpg").write_bytes(b"img")
    (root / "0007.jpg").write_bytes(b"img")
    assert build_cocoocc(ann, tmp_path / "o", image_root=root, threshold=0.1)["images_without_file"] == []


def test_an_images_folder_holding_none_of_the_selected_files_is_refused_not_an_empty_set(tmp_path):
    """--images one level off (the folder above the one the file names are relative to) dropped every selected
    image: --link wrote a COCO-OCC of 0 images with exit status 0, and without --link a set none of whose files
    exist; both only failed later, in evaluation. Now refused, naming an image and what to give instead, and
    writing nothing (a rebuild keeps what the last build placed)."""
    ann = write_set(tmp_path / "val.json")
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for image_id in (1, 2, 3, 7):
        (root / "sub" / f"{image_id:04d}.jpg").write_bytes(b"img")
    for mode in ([], ["--link"], ["--copy"]):
        out = tmp_path / f"o{len(mode) and mode[0]}"
        r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(out), "--images", str(root),
                                      "--threshold", "0.1", "--quiet", *mode])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert (f"Error: none of the 3 selected images has a usable file under image_root/--images {root} (e.g. image 1 "
                f"(0001.jpg): missing image file); give the folder that the file_name entries of {ann} are "
                "relative to") in r.output, r.output
        assert not out.exists()
    out = tmp_path / "built"
    build_cocoocc(ann, out, image_root=root / "sub", image_mode="link", threshold=0.1)
    before = sorted(os.listdir(out / "images")), (out / "annotations.json").read_bytes()
    with pytest.raises(OccsynthError, match="the selected image has no usable file under image_root/--images"):
        build_cocoocc(ann, out, image_root=root, image_mode="link", threshold=0.3)  # one image selected
    assert (sorted(os.listdir(out / "images")), (out / "annotations.json").read_bytes()) == before
    (root / "0001.jpg").write_bytes(b"img")  # one file found of three: the others are dropped, as before
    report = build_cocoocc(ann, tmp_path / "some", image_root=root, image_mode="link", threshold=0.1)
    assert report["counts"]["images"] == 1 and [d["id"] for d in report["dropped_images"]] == [2, 7]


def test_a_threshold_no_image_reaches_is_warned_of(tmp_path):
    """--threshold 0.9 wrote a COCO-OCC of no image with the same "wrote ..." as any other: the first sign of it was
    bcnet evaluate's refusal."""
    ann = write_set(tmp_path / "val.json")
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o"), "--threshold", "0.9"])
    assert r.exit_code == 0 and ("warning: no image reaches iou >= 0.9: the set is empty (bcnet evaluate refuses it); "
                                 "lower --threshold (the counts above show what each would keep)\n") in r.output
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0 and "warning" not in r.output, r.output


def test_a_file_without_one_usable_image_record_is_an_error_not_an_empty_selection(tmp_path):
    data = make_dataset()
    for image in data["images"]:
        del image["height"], image["width"]
    ann = write_set(tmp_path / "val.json", data)
    result = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (f"{ann}: no usable image records (skipped 7 bad records: malformed record=7; e.g. image record 3 "
            "('height' missing or not int))") in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_duplicate_image_ids_are_skipped_and_counted(tmp_path):
    data = make_dataset()
    data["images"].append({"id": 1, "file_name": "dup.jpg", "height": 40, "width": 40})
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o")
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert [(im["id"], im["file_name"]) for im in out["images"]] == [(1, "0001.jpg")]
    assert report["skipped"]["counts"] == {"duplicate id": 1}
    assert report["counts"]["source_images"] == 8      # the file's records, as source_annotations counts them
    with pytest.raises(OccsynthError) as stop:
        build_cocoocc(ann, tmp_path / "s", strict=True)
    assert str(stop.value) == f"{ann}: image record 1: duplicate id (an earlier record has the same id)"


# a record of image 1 (the only image selected at IoU 0.2) that no reader can use: (record, reason, example)
UNUSABLE_IMAGE_1 = {
    "no-height": ({"id": 1, "file_name": "bad.jpg", "width": 40}, errors.MALFORMED_RECORD,
                  "image record 1: malformed record ('height' missing or not int)"),
    "too-large": ({"id": 1, "file_name": "bad.jpg", "height": 40, "width": 41}, errors.IMAGE_TOO_LARGE,
                  "image record 1: image too large (40x41 pixels (height x width), over the limit of 1,600)"),
}


@pytest.mark.parametrize("bad", UNUSABLE_IMAGE_1)
@pytest.mark.parametrize("bad_first", [True, False], ids=["bad-first", "good-first"])
def test_of_the_records_of_one_image_id_the_first_usable_one_is_kept(tmp_path, monkeypatch, bad, bad_first):
    """As every reader of a source set keeps it (coco.index_dataset, the bank): each record is checked before its id
    counts as taken. build-cocoocc took the first record of an id before checking it, so a bad one lost the image
    its good twin gave, and a bad later one was counted as a duplicate rather than as what it is."""
    from occsynth import masks

    monkeypatch.setattr(masks, "MAX_IMAGE_PIXELS", 40 * 40)
    record, reason, example = UNUSABLE_IMAGE_1[bad]
    data = make_dataset()
    at = next(i for i, image in enumerate(data["images"]) if image["id"] == 1)
    data["images"].insert(at if bad_first else at + 1, dict(record))
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o")
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert out["images"] == [{"id": 1, "file_name": "0001.jpg", "height": 40, "width": 40}]
    assert out["annotations"] == [a for a in data["annotations"] if a["image_id"] == 1] and len(out["annotations"]) == 2
    assert report["skipped"] == {"counts": {reason: 1}, "examples": {reason: example}}
    assert {k: report["counts"][k] for k in ("source_images", "selected_images", "dropped_images", "images",
                                             "annotations")} == {"source_images": 8, "selected_images": 1,
                                                                 "dropped_images": 0, "images": 1, "annotations": 2}
    assert coco.index_dataset(data, SkipLog())[0][1] == out["images"][0]  # the record the other readers keep
    strict = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "s"), "--strict",
                                       "--quiet"])
    assert strict.exit_code == 2 and strict.output == f"Error: {ann}: {example}\n"
    assert not (tmp_path / "s").exists()


def test_an_annotation_repeating_an_id_is_skipped_and_counted_and_selects_nothing(tmp_path):
    """Image 5's one box, repeated under the same id, would overlap itself (IoU 1) and select the image."""
    data = make_dataset()
    lone = next(a for a in data["annotations"] if a["image_id"] == 5)
    data["annotations"].append(dict(lone))
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o")
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert [im["id"] for im in out["images"]] == [1]
    assert report["skipped"] == {"counts": {"duplicate id": 1}, "examples": {
        "duplicate id": f"annotation {lone['id']}: duplicate id (later records with this id skipped)"}}
    with pytest.raises(OccsynthError) as stop:
        build_cocoocc(ann, tmp_path / "s", strict=True)
    assert str(stop.value) == f"{ann}: annotation {lone['id']}: duplicate id (an earlier record has the same id)"


def test_of_the_annotations_of_one_id_the_first_usable_one_is_kept(tmp_path):
    """build-cocoocc took the first annotation of an id before checking it: a broken first record lost the object
    its good twin gives (here image 1 lost one of its two overlapping boxes, and was no longer selected)."""
    data = make_dataset()
    first = next(a for a in data["annotations"] if a["image_id"] == 1)
    data["annotations"].insert(data["annotations"].index(first), {**first, "segmentation": [[1.0, 2.0, 3.0, 4.0]]})
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o")
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert [im["id"] for im in out["images"]] == [1]
    assert out["annotations"] == [a for a in make_dataset()["annotations"] if a["image_id"] == 1]
    assert report["skipped"]["counts"] == {errors.DEGENERATE_MASK: 1}


def test_an_image_record_evaluation_cannot_use_is_skipped_with_its_annotations(tmp_path):
    data = make_dataset()
    image_1 = next(im for im in data["images"] if im["id"] == 1)
    del image_1["height"]  # image 1 is the only one selected at IoU 0.2
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o")
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert out["images"] == [] and out["annotations"] == []
    assert report["skipped"]["examples"][errors.MALFORMED_RECORD] == (
        "image record 1: malformed record ('height' missing or not int)")
    assert report["skipped"]["counts"] == {errors.MALFORMED_RECORD: 1, errors.OF_SKIPPED_IMAGE: 2}
    first = next(a["id"] for a in data["annotations"] if a["image_id"] == 1)
    assert report["skipped"]["examples"][errors.OF_SKIPPED_IMAGE] == (
        f"annotation {first}: annotation of a skipped image (image record 1: malformed record)")


def test_an_image_record_over_the_pixel_limit_is_skipped_with_its_annotations(tmp_path, monkeypatch):
    """Its height and width tell, as every reader of a source set checks them: the subset is for evaluation, which
    would decode the file and paste masks at that size. The limit is lowered here; image 1 made 40x41."""
    from occsynth import masks

    monkeypatch.setattr(masks, "MAX_IMAGE_PIXELS", 40 * 40)
    data = make_dataset()
    next(im for im in data["images"] if im["id"] == 1)["width"] = 41  # image 1 is the only one selected at IoU 0.2
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o")
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert out["images"] == [] and out["annotations"] == []
    assert report["skipped"]["counts"] == {errors.IMAGE_TOO_LARGE: 1, errors.OF_SKIPPED_IMAGE: 2}
    first = next(a["id"] for a in data["annotations"] if a["image_id"] == 1)
    assert report["skipped"]["examples"][errors.OF_SKIPPED_IMAGE] == (
        f"annotation {first}: annotation of a skipped image (image record 1: image too large)")
    assert report["skipped"]["examples"][errors.IMAGE_TOO_LARGE] == (
        "image record 1: image too large (40x41 pixels (height x width), over the limit of 1,600)")
    strict = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "s"), "--strict",
                                       "--quiet"])
    assert strict.exit_code == 2 and not (tmp_path / "s").exists()
    assert strict.output == (f"Error: {ann}: image record 1: image too large (40x41 pixels (height x width), over "
                             "the limit of 1,600)\n")


def test_strict_names_the_annotations_file_and_the_record_by_its_id(tmp_path):
    """Not the record's dict cut at 60 characters; --strict says which file holds it."""
    data = make_dataset()
    data["images"].insert(2, {"id": "abc", "file_name": "abc.jpg", "height": 40, "width": 40})
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o", threshold=0.1)
    assert report["skipped"]["examples"] == {
        errors.MALFORMED_RECORD: "image record 'abc': malformed record ('id' missing or not int)"}
    strict = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "s"),
                                       "--threshold", "0.1", "--strict", "--quiet"])
    assert strict.exit_code == 2
    assert strict.output == f"Error: {ann}: image record 'abc': malformed record ('id' missing or not int)\n"
    data = make_dataset()
    data["annotations"][0]["segmentation"] = []
    write_set(ann, data)
    strict = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "s"),
                                       "--threshold", "0.1", "--strict", "--quiet"])
    assert strict.exit_code == 2
    assert strict.output == f"Error: {ann}: annotation 101: degenerate or empty segmentation (empty segmentation)\n"
    assert not (tmp_path / "s").exists()


def test_report_without_crowd_and_val2017_sized_input(tmp_path):
    data = make_dataset()
    data["annotations"] = [a for a in data["annotations"] if not a["iscrowd"]]
    report = build_cocoocc(write_set(tmp_path / "val.json", data), tmp_path / "o")
    assert set(report["alternatives"]) == {"iou/no-crowd", "min/no-crowd"}
    text = "\n".join(cocoocc_commands.format_report(report))
    assert "/crowd" not in text and "no crowd boxes" in text
    report["counts"]["source_images"] = 5000
    assert "the paper reports 1,005 of val2017's 5,000" in "\n".join(cocoocc_commands.format_report(report))


def real_images_set(tmp_path, subdir="set-a"):
    """The hand-made set with real PNG files under tmp_path/src/images/<subdir>/ (file_name with a folder)."""
    data = make_dataset()
    root = tmp_path / "src" / "images"
    (root / subdir).mkdir(parents=True)
    for image in data["images"]:
        image["file_name"] = f"{subdir}/{image['id']:06d}.png"
        pixels = np.full((40, 40, 3), image["id"] * 30, np.uint8)
        assert cv2.imwrite(str(root / image["file_name"]), pixels)
    return data, root


def snapshot(root):
    return {p.relative_to(root).as_posix(): (p.is_symlink(), p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("mode", ["--link", "--copy"])
def test_out_whose_images_folder_is_the_source_images_is_refused_even_with_force(tmp_path, mode):
    # The reported data loss: --out the folder above --images, so OUT/images/x *is* the source file x.
    data, root = real_images_set(tmp_path)
    ann = write_set(tmp_path / "ann.json", data)
    before = snapshot(root)
    for out, images in ((tmp_path / "src", root),                       # OUT/images is --images
                        (root / "set-a", root),                         # OUT/images inside --images
                        (tmp_path / "src", root / "set-a")):            # OUT/images holds --images
        r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--images", str(images), mode,
                                      "--out", str(out), "--force", "--threshold", "0.1"])
        assert r.exit_code == 2 and "source images" in r.output and "Traceback" not in r.output, r.output
        assert snapshot(root) == before  # byte-identical, nothing turned into a link
    assert not (tmp_path / "src" / "annotations.json").exists()


def test_a_target_that_is_the_source_file_is_never_unlinked(tmp_path):
    # OUT/images/x already the source file under another name (a hard link): left as it is.
    data, root = real_images_set(tmp_path)
    ann = write_set(tmp_path / "ann.json", data)
    (tmp_path / "o" / "images" / "set-a").mkdir(parents=True)
    os.link(root / "set-a" / "000001.png", tmp_path / "o" / "images" / "set-a" / "000001.png")
    before = snapshot(root)
    for mode in ("link", "copy"):
        build_cocoocc(ann, tmp_path / "o", image_root=root, image_mode=mode, threshold=0.1, force=True)
        assert snapshot(root) == before
        placed = tmp_path / "o" / "images" / "set-a" / "000001.png"
        assert not placed.is_symlink() and os.path.samefile(placed, root / "set-a" / "000001.png")


def test_links_are_relative_and_survive_moving_the_folder_holding_both(tmp_path):
    data, root = real_images_set(tmp_path / "tree")
    ann = write_set(tmp_path / "tree" / "ann.json", data)
    build_cocoocc(ann, tmp_path / "tree" / "occ", image_root=root, image_mode="link", threshold=0.1)
    link = tmp_path / "tree" / "occ" / "images" / "set-a" / "000001.png"
    assert os.readlink(link) == os.path.join("..", "..", "..", "src", "images", "set-a", "000001.png")
    (tmp_path / "tree").rename(tmp_path / "moved")
    out_images = tmp_path / "moved" / "occ" / "images"
    out = json.loads((tmp_path / "moved" / "occ" / "annotations.json").read_text())
    assert [im["id"] for im in out["images"]] == [1, 2, 7]
    for image in out["images"]:
        path = resolve_image_path(out_images, image["file_name"])  # as `occsynth validate` reads OUT/images
        pixels = read_image(path, (image["height"], image["width"]))
        assert pixels.shape == (40, 40, 3) and (pixels == image["id"] * 30).all()


def test_a_strict_run_that_stops_leaves_out_as_it_found_it_so_the_rerun_works(tmp_path):
    data, root = real_images_set(tmp_path)
    ann = write_set(tmp_path / "val.json", data)
    seven = next(im for im in data["images"] if im["id"] == 7)
    (root / seven["file_name"]).unlink()  # selected after images 1 and 2 (threshold 0.1): strict stops there
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(out), "--images", str(root),
                                  "--copy", "--threshold", "0.1", "--strict"])
    assert r.exit_code == 2 and "missing image file" in r.output
    assert not out.exists() or not any(out.iterdir()), "images placed before the stop were left behind"
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(out), "--images", str(root),
                                  "--copy", "--threshold", "0.1"])
    assert r.exit_code == 0, r.output


def test_annotations_that_cannot_be_scored_are_skipped_and_counted(tmp_path):
    data = make_dataset()
    first = data["annotations"][0]
    data["annotations"] += [{**first, "id": 901, "segmentation": []},           # empty: COCOeval would crash
                            {**first, "id": 902, "image_id": [1]},              # not an id (was a TypeError)
                            {**first, "id": 903, "category_id": 999}]           # unknown category
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o", threshold=0.1)
    assert report["skipped"]["counts"] == {"degenerate or empty segmentation": 1,
                                           "annotation refers to an unknown image id": 1,
                                           "annotation refers to an unknown category id": 1}
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert not {901, 902, 903} & {a["id"] for a in out["annotations"]}
    assert report["counts"]["source_annotations"] == len(data["annotations"])
    with pytest.raises(OccsynthError, match="annotation 901"):
        build_cocoocc(ann, tmp_path / "s", threshold=0.1, strict=True)
    zero = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "z"),
                                     "--threshold", "0"])
    assert zero.exit_code == 2 and "--threshold" in zero.output


@pytest.mark.parametrize("segmentation, reason, detail", [
    ({"size": [40, 40], "counts": "0P1"}, errors.DEGENERATE_MASK, "compressed RLE covers"),  # runs short of the image
    ([[5, 3, 9, 3, 9, 7, 9]], errors.DEGENERATE_MASK, "its one part has 7 coordinates"),   # odd coordinate count
    ({"size": [20, 20], "counts": [0, 400]}, errors.MASK_SIZE_MISMATCH, "RLE size [20, 20]"),  # another image's mask
])
def test_an_annotation_whose_mask_cannot_be_decoded_is_skipped_and_selects_nothing(tmp_path, segmentation, reason,
                                                                                   detail):
    """Image 5's lone box, overlapped by a box whose mask cannot be decoded, must not select image 5."""
    data = make_dataset()
    data["annotations"].append({"id": 950, "image_id": 5, "category_id": 1, "bbox": [3, 3, 4, 4], "area": 16.0,
                                "iscrowd": 0, "segmentation": segmentation})
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o")
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert [im["id"] for im in out["images"]] == [1] and 950 not in {a["id"] for a in out["annotations"]}
    assert report["skipped"]["counts"] == {reason: 1}
    assert report["skipped"]["examples"][reason].startswith(f"annotation 950: {reason} (")
    assert detail in report["skipped"]["examples"][reason]
    strict = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "s"),
                                       "--strict", "--quiet"])
    assert strict.exit_code == 2 and strict.output.startswith(f"Error: {ann}: annotation 950: {reason} (")
    assert detail in strict.output and not (tmp_path / "s").exists()



def test_a_stray_short_polygon_part_is_dropped_from_the_output_not_the_annotation(tmp_path):
    """detectron2's rule (masks.check_polygons): a 4-number part beside a good outline is no reason to lose the object;
    the output carries the parts kept, since pycocotools reads every part as a box when the first has 4 numbers."""
    data = make_dataset()
    square = [3, 3, 7, 3, 7, 7, 3, 7]
    data["annotations"].append({"id": 950, "image_id": 5, "category_id": 1, "bbox": [3, 3, 4, 4], "area": 16.0,
                                "iscrowd": 0, "segmentation": [[4, 4, 6, 6], square, [1, 2, 3]], "extra": "kept"})
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o")
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert [im["id"] for im in out["images"]] == [1, 5] and report["skipped"]["counts"] == {}
    written = next(a for a in out["annotations"] if a["id"] == 950)
    assert written == {**data["annotations"][-1], "segmentation": [square]}
    # the other records are copied unchanged
    assert [a for a in out["annotations"] if a["id"] != 950] == [
        a for a in data["annotations"] if a["image_id"] in (1, 5) and a["id"] != 950]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "o" / "annotations.json"))
    expected = np.zeros((40, 40), np.uint8)
    expected[3:7, 3:7] = 1
    assert np.array_equal(gt.annToMask(gt.anns[950]), expected)
    # usable_records (also bcnet train-synthetic's) gives the cleaned record as a copy: the caller's stays as it was
    given = copy.deepcopy(data)
    usable = cocoocc.usable_records(given, ann, SkipLog())
    assert given == data and next(a for a in usable["annotations"] if a["id"] == 950) == written

@pytest.mark.parametrize("box", [[10, 0, -5, 10], [5, 10, 5, -10]])
def test_an_annotation_whose_bbox_has_a_negative_size_is_skipped_and_counted(tmp_path, box):
    data = make_dataset()
    data["annotations"].append({"id": 960, "image_id": 1, "category_id": 1, "bbox": box, "area": 50.0,
                                "iscrowd": 0, "segmentation": [[5, 0, 10, 0, 10, 10, 5, 10]]})
    ann = write_set(tmp_path / "val.json", data)
    report = build_cocoocc(ann, tmp_path / "o")
    out = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert [im["id"] for im in out["images"]] == [1] and 960 not in {a["id"] for a in out["annotations"]}
    assert report["skipped"] == {"counts": {errors.MALFORMED_RECORD: 1}, "examples": {
        errors.MALFORMED_RECORD: f"annotation 960: malformed record (bbox {box} has a negative width or height)"}}
    with pytest.raises(OccsynthError, match=rf"annotation 960: malformed record \(bbox {re.escape(str(box))} has a "
                                            "negative"):
        build_cocoocc(ann, tmp_path / "s", strict=True)


def test_a_rebuild_removes_the_links_the_last_build_placed_and_no_longer_selects(tmp_path):
    data, root = real_images_set(tmp_path)
    ann = write_set(tmp_path / "val.json", data)
    out = tmp_path / "o"
    before = snapshot(root)
    build_cocoocc(ann, out, image_root=root, image_mode="link", threshold=0.1)
    (out / "images" / "notes.txt").write_text("mine")  # not placed by a build: never touched
    placed = lambda: sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png"))
    assert placed() == ["set-a/000001.png", "set-a/000002.png", "set-a/000007.png"]
    build_cocoocc(ann, out, image_root=root, image_mode="link", threshold=0.5)
    kept = [im["file_name"] for im in json.loads((out / "annotations.json").read_text())["images"]]
    assert placed() == kept and len(kept) < 3
    build_cocoocc(ann, out, threshold=0.1)  # annotations only: no link of an earlier build stays
    assert placed() == [] and (out / "images" / "notes.txt").read_text() == "mine"
    assert snapshot(root) == before


def test_links_a_stopped_rebuild_placed_are_removed_by_the_next_one(tmp_path):
    """A --strict rebuild stops at a missing image after linking others; its files never name those
    links, so the next rebuild finds them by what they hold."""
    data, root = real_images_set(tmp_path)
    ann = write_set(tmp_path / "val.json", data)
    out = tmp_path / "o"
    build_cocoocc(ann, out, image_root=root, image_mode="link", threshold=0.5)
    placed = lambda: sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png"))
    first = placed()
    seven = next(im for im in data["images"] if im["id"] == 7)
    (root / seven["file_name"]).rename(tmp_path / "away.png")  # selected last at 0.1: strict stops there
    with pytest.raises(OccsynthError, match="missing image file"):
        build_cocoocc(ann, out, image_root=root, image_mode="link", threshold=0.1, strict=True)
    assert len(placed()) > len(first)  # it linked images 1 and 2 before stopping
    (tmp_path / "away.png").rename(root / seven["file_name"])
    build_cocoocc(ann, out, image_root=root, image_mode="link", threshold=0.5)
    assert placed() == first
    (out / "images" / "set-a" / "mine.png").symlink_to(root / seven["file_name"])  # the user's own: not ours
    build_cocoocc(ann, out, image_root=root, image_mode="link", threshold=0.5)
    assert "set-a/mine.png" in placed()


@pytest.mark.parametrize("swap", ["images", "images/set-a"])
def test_a_rebuild_never_deletes_through_a_folder_that_is_a_link(tmp_path, swap):
    """A user replaced OUT/images (or a folder in it) by a link to the source images: nothing there goes."""
    data, root = real_images_set(tmp_path)
    ann = write_set(tmp_path / "val.json", data)
    out = tmp_path / "o"
    build_cocoocc(ann, out, image_root=root, image_mode="link", threshold=0.1)
    shutil.rmtree(out / swap)
    os.symlink(root if swap == "images" else root / "set-a", out / swap)
    before = snapshot(root)
    build_cocoocc(ann, out, threshold=0.5)
    assert snapshot(root) == before


def test_a_rebuild_leaves_copies_in_place(tmp_path):
    data, root = real_images_set(tmp_path)
    ann = write_set(tmp_path / "val.json", data)
    out = tmp_path / "o"
    build_cocoocc(ann, out, image_root=root, image_mode="copy", threshold=0.1)
    report = build_cocoocc(ann, out, threshold=0.5)
    assert len(list((out / "images").rglob("*.png"))) == 3  # bytes that may be the user's are never deleted
    # and said so: a rerun into the same --out does not leave an earlier run's copies behind unseen
    assert report["stale_images"] == ["set-a/000001.png", "set-a/000002.png", "set-a/000007.png"]
    CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(out), "--images", str(root), "--copy",
                              "--threshold", "0.1", "--quiet"])
    rerun = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(out), "--images", str(root),
                                      "--copy", "--threshold", "0.5", "--quiet"])
    assert rerun.exit_code == 0, rerun.output
    kept = {im["file_name"] for im in json.loads((out / "annotations.json").read_text())["images"]}
    stale = sorted({"set-a/000001.png", "set-a/000002.png", "set-a/000007.png"} - kept)
    assert stale and (f"note: left in {out / 'images'}: {plural(len(stale), 'image file')} an earlier build placed "
                      f"there and this one does not select (copies are never deleted): {', '.join(stale)}; delete "
                      "them by hand if unwanted\n") in rerun.output, rerun.output


def test_a_rebuild_that_places_no_images_names_as_stale_only_the_copies_it_no_longer_selects(tmp_path):
    """A rebuild without --link/--copy listed every earlier copy as one 'this one does not select', also the copies
    of images it still selects (and its annotations.json names)."""
    data, root = real_images_set(tmp_path)
    ann = write_set(tmp_path / "val.json", data)
    out = tmp_path / "o"
    build_cocoocc(ann, out, image_root=root, image_mode="copy", threshold=0.1)  # images 1, 2 and 7
    report = build_cocoocc(ann, out, threshold=0.3)                              # image 1 only (IoU 1/3)
    assert [im["file_name"] for im in json.loads((out / "annotations.json").read_text())["images"]] == [
        "set-a/000001.png"]
    assert report["stale_images"] == ["set-a/000002.png", "set-a/000007.png"]
    assert len(list((out / "images").rglob("*.png"))) == 3  # copies are still never deleted


def test_the_cleanup_of_a_failed_build_removes_only_what_a_build_writes(tmp_path, monkeypatch):
    data, root = real_images_set(tmp_path)
    ann = write_set(tmp_path / "val.json", data)
    out = tmp_path / "o"
    place = cocoocc._place_images

    def place_then_fail(images, image_root, dest, mode, skips, progress):
        place(images, image_root, dest, mode, skips, progress)
        (out / "theirs.txt").write_text("written by another process meanwhile")
        raise OccsynthError("disk full")

    monkeypatch.setattr(cocoocc, "_place_images", place_then_fail)
    with pytest.raises(OccsynthError, match="disk full"):
        build_cocoocc(ann, out, image_root=root, image_mode="copy", threshold=0.1)
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]


def test_boxes_too_large_for_float64_areas_overlap_by_zero_without_numpy_warnings():
    """Sides of 1e200 (finite, so is_box keeps them) overflowed to inf and NaN: build-cocoocc printed numpy's
    RuntimeWarnings, and the "min" overlap of two such boxes was NaN (inf / inf). It is 0; a sane pair beside them is
    measured as ever."""
    import warnings

    from occsynth.boxes import pairwise_overlap
    boxes = [[0, 0, 1e200, 1e200], [0, 0, 1e200, 1e200], [0, 0, 10, 10], [5, 0, 10, 10]]
    for measure in ("iou", "min"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            overlap = pairwise_overlap(np.array(boxes), measure)
        assert overlap[0, 1] == 0.0  # two of them: inf / inf under "min", NaN before
        assert overlap[0, 2] == (0.0 if measure == "iou" else 1.0)  # a sane box inside a huge one: finite, as ever
        assert overlap[2, 3] == pytest.approx(50 / 150 if measure == "iou" else 0.5)


def test_a_box_is_four_finite_numbers_and_an_overlap_measure_is_one_of_two():
    from occsynth.boxes import is_box, pairwise_overlap
    assert is_box([0, 0, 1, 1]) and is_box((0.5, 1, 2, 3.5)) and is_box([-1, -1, 0, 0])
    for bad in ([0, 0, 1], [0, 0, 1, 1, 1], [True, 0, 1, 1], [0, 0, float("nan"), 1], [0, 0, float("inf"), 1],
                ["0", 0, 1, 1], "0011", {"x": 0}, None, [0, 0, 1, float("nan")], [0, 0, 1, True], (0, 0, 1, "1")):
        assert not is_box(bad), bad
    with pytest.raises(ValueError, match=r"overlap measure must be one of \('iou', 'min'\), got 'IoU'"):
        pairwise_overlap(np.array([[0, 0, 1, 1], [0, 0, 1, 1]]), "IoU")


def test_an_empty_set_of_no_overlapping_boxes_does_not_advise_a_lower_threshold(tmp_path):
    """Every annotation skipped as bad input (or no image with two overlapping boxes) left each image without an
    overlapping pair: "lower --threshold" was advised, which keeps nothing either (a threshold is above 0)."""
    data = make_dataset()
    for a in data["annotations"]:
        del a["bbox"]
    ann = write_set(tmp_path / "val.json", data)
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and "lower --threshold" not in r.output, r.output
    assert ("warning: no image has two overlapping boxes (some records were skipped: see 'skipped bad input' "
            "below): the set is empty whatever --threshold (bcnet evaluate refuses it)\n") in r.output, r.output
    data = make_dataset()
    data["annotations"] = data["annotations"][:1]
    ann = write_set(tmp_path / "one.json", data)
    r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0 and ("warning: no image has two overlapping boxes: the set is empty whatever --threshold "
                                 "(bcnet evaluate refuses it)\n") in r.output, r.output


def test_selected_records_whose_file_names_no_folder_holds_are_refused_naming_the_records(tmp_path):
    """Every selected image's file_name absolute (or with '..'): the refusal advised giving the folder the file_name
    entries are relative to, which no --images satisfies; the records are what to fix."""
    data = make_dataset()
    for image in data["images"]:
        image["file_name"] = f"/elsewhere/{image['file_name']}"
    ann = write_set(tmp_path / "val.json", data)
    root = tmp_path / "imgs"
    root.mkdir()
    for mode in ([], ["--link"]):
        r = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o"),
                                      "--images", str(root), "--threshold", "0.1", "--quiet", *mode])
        assert r.exit_code == 2 and "give the folder" not in r.output, r.output
        assert (f"Error: none of the 3 selected images has a usable file under image_root/--images {root} (e.g. image 1 "
                f"(/elsewhere/0001.jpg): file_name points outside the image root); their file_name entries in {ann} "
                "name no file under any folder (absolute, with '..', or not text): fix those records to name files "
                "relative to one images folder") in r.output, r.output
