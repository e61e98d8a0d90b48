"""COCO-OCC selection: exact image sets for hand-made boxes under every measure / threshold / crowd choice."""
import contextlib
import io
import json
import os

import pytest
from click.testing import CliRunner
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import manifests
from cli.occsynth_cli import main
from occsynth import cocoocc
from occsynth.cocoocc import alternative_counts, build_cocoocc, max_overlap_per_image, select_images

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


def test_max_overlap_values():
    best = max_overlap_per_image(make_dataset(), "iou")
    assert best[1] == pytest.approx(1 / 3) and best[2] == pytest.approx(20 / 180)
    assert best[4] == 0.0 and best[5] == 0.0 and best[6] == 0.0
    assert max_overlap_per_image(make_dataset(), "iou", count_crowd=True)[4] == pytest.approx(80 / 120)
    with pytest.raises(Exception, match="overlap measure"):
        max_overlap_per_image(make_dataset(), "dice")


def test_alternative_counts_table():
    table = alternative_counts(make_dataset())
    assert set(table) == {"iou/no-crowd", "iou/crowd", "min/no-crowd", "min/crowd"}
    assert table["iou/no-crowd"]["0.1"] == 3 and table["iou/no-crowd"]["0.2"] == 1
    assert table["iou/crowd"]["0.2"] == 2 and table["min/crowd"]["0.2"] == 5 and table["min/no-crowd"]["0.5"] == 2


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
    assert saved["histogram"]["no_overlap"] == 3 and sum(saved["histogram"]["counts"]) == 7
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


def test_cli_and_recipe(tmp_path):
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(make_dataset()))
    result = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o"),
                                       "--count-crowd"])
    assert result.exit_code == 0, result.output
    assert "selected 2 of 7 images" in result.output and "1005" in result.output
    bad = CliRunner().invoke(main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "p"), "--link"])
    assert bad.exit_code == 2 and "need --images" in bad.output
    recipe = manifests.load("cocoocc")
    assert recipe["selection"] == {"overlap": cocoocc.DEFAULT_OVERLAP, "threshold": cocoocc.DEFAULT_THRESHOLD,
                                   "count_crowd": False}
    assert recipe["paper"]["paper_images"] == cocoocc.PAPER_COUNT == 1005
