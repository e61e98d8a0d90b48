"""annotate-occluders: exact occluder ids and occluder polygons on hand-made overlapping scenes."""
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils
from scipy import ndimage

from cli.occsynth_cli import main
from occsynth import atomic
from occsynth.annotate import annotate_image, annotate_occluders
from occsynth.errors import OccsynthError
from occsynth.masks import to_polygons

H, W = 48, 64


def rect(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def disc(cx, cy, r):
    ys, xs = np.mgrid[0:H, 0:W]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


def rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [H, W], "counts": r["counts"].decode("ascii")}


def box(m):
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# Image 10. Box IoUs: A-B 70/475, A-F 36/320 (> 0.05); B-F 0; C-E 1/220 (< 0.05); D is crowd.
MASKS = {
    101: rect(4, 4, 20, 20),        # A, polygon
    205: disc(21, 18, 8),           # B, RLE; box [13, 10, 17, 17]
    7: rect(40, 36, 50, 46),        # C
    9: rect(2, 2, 22, 22),          # D crowd
    33: rect(49, 45, 60, 48),       # E
    44: rect(0, 14, 10, 24),        # F
}


def polygon(m):
    x, y, w, h = box(m)
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def make_dataset():
    anns = []
    for ann_id, m in MASKS.items():
        seg = rle(m) if ann_id in (205, 9) else polygon(m)
        anns.append({"id": ann_id, "image_id": 10, "category_id": 1, "bbox": box(m), "area": 123.25,
                     "iscrowd": int(ann_id == 9), "segmentation": seg, "foo": {"bar": [1, 2.5]}})
    # image 20: two overlapping boxes, one with a broken mask (so no occluder); annotations interleaved with image 10's
    anns.insert(2, {"id": 501, "image_id": 20, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 1.0,
                    "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]})
    anns.insert(0, {"id": 502, "image_id": 20, "category_id": 2, "bbox": [2, 2, 10, 10], "area": 2.0,
                    "iscrowd": 0, "segmentation": [[1, 2]]})
    anns.append({"id": 900, "image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0,
                 "segmentation": []})
    return {"info": {"year": 2017}, "type": "instances", "images": [
        {"id": 20, "file_name": "b.jpg", "height": 16, "width": 16},
        {"id": 10, "file_name": "a.jpg", "height": H, "width": W}],
        "licenses": [], "annotations": anns, "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]}


EXPECTED = {101: [205, 44], 205: [101], 7: [], 9: [], 33: [], 44: [101], 501: [], 900: []}  # 502: bad mask


@pytest.mark.parametrize("bucket", [1, 1000])
def test_occluder_ids_and_unchanged_fields(tmp_path, bucket):
    src = tmp_path / "in.json"
    data = make_dataset()
    src.write_text(json.dumps(data))
    report = annotate_occluders(src, tmp_path / "out.json", progress=False, images_per_bucket=bucket)
    out = json.loads((tmp_path / "out.json").read_text())
    got = {a["id"]: a["occluder_ids"] for a in out["annotations"]}
    assert got == EXPECTED
    # grouped by image in images-table order (20 then 10), input order within an image, unknown last
    assert [a["id"] for a in out["annotations"]] == [501, 101, 205, 7, 9, 33, 44, 900]
    originals = {a["id"]: a for a in data["annotations"]}
    for a in out["annotations"]:
        assert {k: v for k, v in a.items() if k != "occluder_ids"} == originals[a["id"]]
    assert list(out) == ["info", "type", "images", "licenses", "categories", "annotations"]
    assert {k: out[k] for k in out if k != "annotations"} == {k: data[k] for k in data if k != "annotations"}
    assert report["counts"] == {"images": 2, "annotations": 8, "with_occluders": 3, "no_box": 0,
                                "unknown_image": 1, "duplicate_ids": 0, "replaced_occluder_ids": 0,
                                "kept_occluder_ids": 0, "dropped_occluder_ids": 0, "no_image_size": 0}
    assert report["skipped"]["counts"] == {"degenerate or empty segmentation": 1}
    assert report["skipped"]["examples"]["degenerate or empty segmentation"].startswith("annotation 502: ")



@pytest.mark.parametrize("bcnet_compat", [False, True])
def test_a_stray_short_polygon_part_is_dropped_from_the_output_not_the_annotation(tmp_path, bcnet_compat):
    """detectron2's rule (masks.check_polygons): A's outline with a 4-number part first (pycocotools would read every
    part as a box) and a 3-number part last is A: annotated, and written, as A's good outline alone."""
    data = make_dataset()
    a = next(a for a in data["annotations"] if a["id"] == 101)
    a["segmentation"] = [[4, 4, 20, 20], *a["segmentation"], [0, 0, 5]]
    (tmp_path / "in.json").write_text(json.dumps(data))
    (tmp_path / "clean.json").write_text(json.dumps(make_dataset()))
    got = annotate_occluders(tmp_path / "in.json", tmp_path / "out.json", bcnet_compat=bcnet_compat, progress=False)
    want = annotate_occluders(tmp_path / "clean.json", tmp_path / "want.json", bcnet_compat=bcnet_compat,
                              progress=False)
    assert (tmp_path / "out.json").read_bytes() == (tmp_path / "want.json").read_bytes()
    assert {k: v for k, v in got.items() if k != "out"} == {k: v for k, v in want.items() if k != "out"}
    written = next(a for a in json.loads((tmp_path / "out.json").read_text())["annotations"] if a["id"] == 101)
    assert written["segmentation"] == polygon(MASKS[101]) and written["occluder_ids"] == [205, 44]

def test_threshold_option(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset()))
    annotate_occluders(src, tmp_path / "out.json", threshold=0.12, progress=False)
    got = {a["id"]: a["occluder_ids"] for a in json.loads((tmp_path / "out.json").read_text())["annotations"]}
    assert got[101] == [205] and got[44] == []  # A-B IoU 70/475 stays above, A-F 36/320 drops below


def test_bcnet_compat_polygons_decode_to_union_in_box(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset()))
    report = annotate_occluders(src, tmp_path / "out.json", bcnet_compat=True, progress=False)
    out = {a["id"]: a for a in json.loads((tmp_path / "out.json").read_text())["annotations"]}

    def decoded(polys, h=H, w=W):
        if not polys:
            return np.zeros((h, w), bool)
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)

    for ann_id, occ in [(101, [205, 44]), (205, [101]), (44, [101])]:
        x, y, w, h = out[ann_id]["bbox"]
        window = rect(int(x), int(y), int(x + w), int(y + h))
        expected = np.any([MASKS[j] for j in occ], axis=0) & window
        assert expected.any()
        assert np.array_equal(decoded(out[ann_id]["bg_object_segmentation"]), expected), ann_id
    for ann_id in (7, 9, 33, 900):
        assert out[ann_id]["bg_object_segmentation"] == []
    # 502's polygon is broken: it is left out (skipped, counted) and occludes nobody (501 has no occluder left)
    assert out[501]["occluder_ids"] == [] and out[501]["bg_object_segmentation"] == [] and 502 not in out
    assert report["skipped"]["counts"] == {"degenerate or empty segmentation": 1}
    assert out[101]["area"] == 123.25 and out[101]["foo"] == {"bar": [1, 2.5]}


def _bcnet_compat_of_two(tmp_path, first, second) -> dict:
    """annotate_occluders --bcnet-compat on one image holding two masks (ids 1 and 2); its annotations by id."""
    anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": box(m), "area": float(m.sum()), "iscrowd": 0,
             "segmentation": rle(m)} for i, m in ((1, first), (2, second))]
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
                               "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    annotate_occluders(src, tmp_path / "out.json", bcnet_compat=True, progress=False)
    return {x["id"]: x for x in json.loads((tmp_path / "out.json").read_text())["annotations"]}


def test_bcnet_compat_leaves_an_occluded_region_of_20_pixels_or_fewer_empty(tmp_path):
    """The released tool writes bg_object_segmentation only where the occluders cover > 20 pixels of
    the box; the occluder ids stay as the box rule gives them."""
    a = rect(0, 0, 20, 20)
    d = rect(12, 12, 30, 30) & ~rect(12, 12, 20, 20) | rect(16, 15, 20, 20)  # 20 pixels inside A's box
    out = _bcnet_compat_of_two(tmp_path, a, d)
    assert out[1]["occluder_ids"] == [2] and out[2]["occluder_ids"] == [1]
    assert out[1]["bg_object_segmentation"] == []
    drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(out[2]["bg_object_segmentation"], H, W)))
    assert np.array_equal(drawn.astype(bool), a & rect(12, 12, 30, 30))  # 64 pixels
    d |= rect(15, 19, 16, 20)  # 21
    drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
        _bcnet_compat_of_two(tmp_path, a, d)[1]["bg_object_segmentation"], H, W)))
    assert np.array_equal(drawn.astype(bool), a & d) and drawn.sum() == 21


def test_bcnet_compat_cuts_the_occluders_to_the_pixels_a_fractional_box_touches():
    """The window is [floor(x), ceil(x + w)) x [floor(y), ceil(y + h)): box [2.6, 3.5, 10, 10] -> columns 2..12,
    rows 3..13 of an occluder covering them all."""
    anns = [{"id": 1, "bbox": [2.6, 3.5, 10, 10], "iscrowd": 0, "segmentation": rle(rect(3, 4, 12, 13))},
            {"id": 2, "bbox": [0, 0, 30, 30], "iscrowd": 0, "segmentation": rle(rect(0, 0, 30, 30))}]
    annotate_image(anns, H, W, bcnet_compat=True)
    assert [a["occluder_ids"] for a in anns] == [[2], [1]]
    drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(anns[0]["bg_object_segmentation"], H, W)))
    assert np.array_equal(drawn.astype(bool), rect(2, 3, 13, 14))


def test_the_box_rule_takes_an_iou_above_the_threshold_not_at_it():
    """Boxes [0, 0, 4, 4] and [3, 3, 5, 1] share 1 of 20 pixels: IoU exactly 0.05, no occluders of each other at
    BCNet's 0.05, but at 0; [2, 3, 5, 1] shares 2 of 19 with the first. A box that only touches the others
    ([4, 0, 3, 3]) has an IoU of 0: never an occluder, not even at threshold 0."""
    boxes = [[0, 0, 4, 4], [3, 3, 5, 1], [2, 3, 5, 1], [4, 0, 3, 3]]
    for threshold, expected in ((0.05, [[3], [3], [1, 2], []]), (0.0, [[2, 3], [1, 3], [1, 2], []])):
        anns = [{"id": k + 1, "bbox": b, "iscrowd": 0} for k, b in enumerate(boxes)]
        annotate_image(anns, None, None, threshold=threshold)
        assert [a["occluder_ids"] for a in anns] == expected, threshold


def test_bcnet_compat_fills_a_hole_in_the_occluders_union_as_coco_polygons_must(tmp_path):
    """A ring occluder around a gap: COCO polygons are filled, so the gap comes back covered (the released tool's
    contours fill it as well); the occluder ids stay exact."""
    a = rect(0, 0, 20, 20)
    ring = rect(4, 4, 16, 16) & ~rect(8, 8, 12, 12)
    out = _bcnet_compat_of_two(tmp_path, a, ring)
    assert out[1]["occluder_ids"] == [2]
    drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(out[1]["bg_object_segmentation"], H, W)))
    assert np.array_equal(drawn.astype(bool), ndimage.binary_fill_holes(ring)) and drawn.sum() == ring.sum() + 16


def test_to_polygons_is_exact_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(60):
        m = rng.random((20, 24)) < 0.35
        m = ndimage.binary_opening(m) | (rng.random((20, 24)) < 0.05)
        polys = to_polygons(m, (3, 1))
        back = (mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 21, 27))).astype(bool)
                if polys else np.zeros((21, 27), bool))
        assert np.array_equal(back[1:, 3:], ndimage.binary_fill_holes(m))  # holes come back filled
        assert not back[0].any() and not back[:, :3].any()


def test_cli_and_errors(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset()))
    res = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "o.json"),
                                    "--bcnet-compat", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "8 annotations in 2 images, 3 with occluders" in res.output
    assert ("bad records skipped: 1\n        1  degenerate or empty segmentation, e.g. annotation 502 (polygon has no "
            "usable part: its one part has 2 coordinates (a part needs an even number >= 6))\n"
            ) in res.output, res.output  # the reason said once
    assert "bg_object_segmentation" in (tmp_path / "o.json").read_text()
    boxless = make_dataset()
    del boxless["annotations"][1]["bbox"]  # 101 (the first, 502, has a broken mask)
    src2 = tmp_path / "boxless.json"
    src2.write_text(json.dumps(boxless))
    res = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src2), "--out", str(tmp_path / "o2.json"),
                                    "--quiet"])
    assert res.exit_code == 0 and "other counts: no_box=1, unknown_image=1\n" in res.output, res.output
    same = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(src)])
    assert same.exit_code == 2 and same.output == ("Error: out_path/--out must differ from in_path/--ann (the input would be "
                                                   "replaced by its annotated copy)\n")  # was: "the input is read twice"
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [], "annotations": [')
    res = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(broken), "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 2 and "malformed JSON" in res.output and not (tmp_path / "b.json").exists()
    assert not list(tmp_path.glob(".annotate-*")) and not list(tmp_path.glob(".*.tmp-*"))


@pytest.mark.parametrize("annotations, found", [({}, "an object"), (None, "a null")])
def test_annotations_that_are_not_a_list_are_refused_and_an_empty_list_is_fine(tmp_path, annotations, found):
    for value, ok in ((annotations, False), ([], True)):
        src = tmp_path / "in.json"
        src.write_text(json.dumps(dict(make_dataset(), annotations=value)))
        res = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "o.json"),
                                        "--quiet"])
        if ok:
            assert res.exit_code == 0 and "0 annotations in 2 images" in res.output, res.output
        else:
            assert res.exit_code == 2 and f"'annotations' is {found}, expected a list" in res.output, res.output
            assert not (tmp_path / "o.json").exists() and not list(tmp_path.glob(".annotate-*"))


def test_a_file_that_is_no_coco_set_is_refused_in_the_readers_words(tmp_path):
    """The same messages as every other reader (coco.check_top_level / check_array_start)."""
    cases = [([], "the top level is an array, expected a JSON object"),
             ({"annotations": []}, "missing the 'images' list of a COCO instances file"),
             ({"images": {}, "annotations": []}, "'images' is an object, expected a list"),
             ({"images": [], "annotations": "x"}, "'annotations' is a string, expected a list"),
             ({"images": []}, "missing the 'annotations' list of a COCO instances file")]
    for content, message in cases:
        src = tmp_path / "in.json"
        src.write_text(json.dumps(content))
        res = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "o.json")])
        assert res.exit_code == 2 and f"{src}: not a COCO file: {message}" in res.output, (content, res.output)
        assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("key", ["info", "images", "annotations"])
def test_a_top_level_key_given_twice_is_refused_writing_nothing(tmp_path, key):
    """Every top-level value is copied: of a key given twice, which? (json.load: the last; the copy: the first)"""
    src, out = tmp_path / "in.json", tmp_path / "o.json"
    data = make_dataset()
    src.write_text(json.dumps(data)[:-1] + f', "{key}": {json.dumps(data[key])}}}')
    res = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.strip().startswith(f"Error: {src}: top-level key '{key}' given 2 times") and not out.exists()


def test_malformed_json_is_one_printable_line(tmp_path):
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'\xc1\xc6{\xe19\xa3\xcc\xfb\xf0&\xd1\x7f')
    truncated = tmp_path / "trunc.json"
    truncated.write_text('{"images": [{"id": 1,')
    for path in (binary, truncated):
        res = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(path), "--out", str(tmp_path / "o.json")])
        assert res.exit_code == 2 and "Traceback" not in res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: malformed JSON (") and lines[0].isprintable()
        assert "b'" not in lines[0] and "\\x" not in lines[0]


def test_out_linked_to_the_input_is_refused(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset()))
    (tmp_path / "hard.json").hardlink_to(src)
    res = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "hard.json")])
    assert res.exit_code == 2 and "must differ" in res.output
    assert json.loads(src.read_text()) == make_dataset()


def test_an_out_that_is_a_link_to_a_missing_path_is_refused_naming_the_link(tmp_path):
    """Written atomically (renamed into place), the file would replace the link, not land where it points."""
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset()))
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "gone" / "occ.json")
    result = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(link), "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output == f"Error: cannot write {link}: {link} is a link to a missing path ({tmp_path / 'gone' / 'occ.json'})\n"
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_list_ids_do_not_crash_and_replaced_occluder_ids_are_counted(tmp_path):
    data = make_dataset()
    data["images"].append({"id": [5], "file_name": "x.jpg", "height": 10, "width": 10})
    data["annotations"][0]["image_id"] = [1]
    data["annotations"][1]["occluder_ids"] = [3]  # e.g. an occsynth set's exact occluders
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    report = annotate_occluders(src, tmp_path / "o.json", progress=False)
    assert report["counts"]["unknown_image"] == 2 and report["counts"]["replaced_occluder_ids"] == 1


def test_bcnet_compat_counts_occluded_annotations_of_an_image_without_a_size(tmp_path):
    data = make_dataset()
    del data["images"][0]["height"]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    report = annotate_occluders(src, tmp_path / "o.json", bcnet_compat=True, progress=False)
    out = json.loads((tmp_path / "o.json").read_text())
    first = data["images"][0]["id"]
    occluded = [a for a in out["annotations"] if a["image_id"] == first and a["occluder_ids"]]
    assert occluded and all(a["bg_object_segmentation"] == [] for a in occluded)
    assert report["counts"]["no_image_size"] == len(occluded)


def test_keep_existing_keeps_exact_occluders_and_draws_bcnet_masks_from_them(tmp_path):
    """An occsynth set's occluder_ids are exact (depth order): --keep-existing keeps them, and the
    annotations without any get the box rule's."""
    data = make_dataset()
    for ann in data["annotations"]:
        if ann["id"] == 7:
            ann["occluder_ids"] = [33]   # C-E box IoU is below the threshold, but E is on top of C here
        if ann["id"] == 101:
            ann["occluder_ids"] = [44]   # exact: only F on top of A; B is behind it, though their boxes overlap
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "k.json"),
                                       "--bcnet-compat", "--keep-existing", "--quiet"])
    assert result.exit_code == 0, result.output
    out = {a["id"]: a for a in json.loads((tmp_path / "k.json").read_text())["annotations"]}
    assert out[7]["occluder_ids"] == [33] and out[101]["occluder_ids"] == [44]
    assert out[205]["occluder_ids"] == EXPECTED[205] and out[44]["occluder_ids"] == EXPECTED[44]
    x, y, w, h = out[101]["bbox"]
    polys = out[101]["bg_object_segmentation"]
    drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W))).astype(bool)
    assert np.array_equal(drawn, MASKS[44] & rect(int(x), int(y), int(x + w), int(y + h))) and drawn.any()
    assert out[7]["bg_object_segmentation"] == []  # E covers 1 pixel of C's box: <= 20, empty as BCNet's tool
    assert "kept_occluder_ids=2" in result.output and "--keep-existing" not in result.output
    replaced = annotate_occluders(src, tmp_path / "r.json", progress=False)["counts"]
    assert replaced["replaced_occluder_ids"] == 2 and replaced["kept_occluder_ids"] == 0
    # without --keep-existing the ones given are replaced: said, with the option that keeps them
    result = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "r.json"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert ("note: 2 annotations already had occluder_ids (an occsynth set's are exact, from the depth order); "
            "they were replaced by the box rule's guesses in the output (the input keeps them) - "
            "--keep-existing keeps them\n") in result.output, result.output


def test_keep_existing_drops_ids_of_other_images_unknown_ids_and_its_own(tmp_path):
    data = make_dataset()
    for ann in data["annotations"]:
        if ann["id"] == 7:
            ann["occluder_ids"] = [501, 33, 12345, 7, 33]  # image 20's, E, unknown, itself, E again
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    counts = annotate_occluders(src, tmp_path / "k.json", keep_existing=True, bcnet_compat=True,
                                progress=False)["counts"]
    out = {a["id"]: a for a in json.loads((tmp_path / "k.json").read_text())["annotations"]}
    assert out[7]["occluder_ids"] == [33]
    assert out[7]["bg_object_segmentation"] == []  # E covers 1 pixel of C's box (<= 20): empty, as BCNet's tool
    assert counts["kept_occluder_ids"] == 1 and counts["dropped_occluder_ids"] == 4


def test_an_annotation_repeating_an_id_gets_no_occluders_and_occludes_nobody(tmp_path):
    """Two annotations with id 5 on overlapping boxes: the second one is counted, and no list names itself."""
    data = make_dataset()
    data["annotations"] += [
        {"id": 5, "image_id": 20, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 1.0, "iscrowd": 0,
         "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
        {"id": 5, "image_id": 20, "category_id": 2, "bbox": [1, 0, 10, 10], "area": 1.0, "iscrowd": 0,
         "segmentation": [[1, 0, 11, 0, 11, 10, 1, 10]]}]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "o.json"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert "duplicate_ids=1" in result.output
    anns = [a for a in json.loads((tmp_path / "o.json").read_text())["annotations"] if a["image_id"] == 20]
    first, second = [a for a in anns if a["id"] == 5]
    assert first["occluder_ids"] == [501] and second["occluder_ids"] == []  # 502's mask is broken: left out
    assert all(a["id"] not in a["occluder_ids"] for a in anns)
    assert {a["id"]: a["occluder_ids"].count(5) for a in anns} == {501: 1, 5: 0}


@pytest.mark.parametrize("segmentation, reason, detail", [
    ({"size": [16, 16], "counts": "0P1"}, "degenerate or empty segmentation", "compressed RLE covers"),  # short runs
    ([[1, 1, 9, 1, 9, 9, 1]], "degenerate or empty segmentation", "its one part has 7 coordinates"),  # odd coordinates
    ({"size": [8, 8], "counts": "08"}, "mask size differs from its image record", "RLE size [8, 8]"),  # image is 16x16
])
def test_an_annotation_whose_mask_cannot_be_decoded_is_skipped_by_reason_and_strict_stops(tmp_path, segmentation,
                                                                                          reason, detail):
    """Image 20 gets a third box over 501's, whose mask bcnet training could not decode: it is a bad record, left
    out of the output (it was copied through unchanged) and reported by reason, as the other readers skip one."""
    data = make_dataset()
    data["annotations"].append({"id": 503, "image_id": 20, "category_id": 2, "bbox": [1, 1, 8, 8], "area": 1.0,
                                "iscrowd": 0, "segmentation": segmentation, "occluder_ids": [501]})
    next(a for a in data["annotations"] if a["id"] == 501)["occluder_ids"] = [503]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "o.json"),
                                       "--bcnet-compat", "--quiet"])
    assert result.exit_code == 0, result.output
    out = {a["id"]: a for a in json.loads((tmp_path / "o.json").read_text())["annotations"]}
    assert 502 not in out and 503 not in out
    assert out[501]["occluder_ids"] == [] and out[501]["bg_object_segmentation"] == []
    assert "bad records skipped: 2\n" in result.output and f"  {reason}, e.g. annotation 50" in result.output
    report = annotate_occluders(src, tmp_path / "o.json", progress=False)
    assert report["counts"]["annotations"] == 8 and report["counts"]["with_occluders"] == 3  # 101, 205, 44
    assert sum(report["skipped"]["counts"].values()) == 2 and reason in report["skipped"]["counts"]
    kept = annotate_occluders(src, tmp_path / "k.json", keep_existing=True, progress=False)
    out = {a["id"]: a for a in json.loads((tmp_path / "k.json").read_text())["annotations"]}
    assert out[501]["occluder_ids"] == [] and 503 not in out  # an exact list may not name it either
    assert kept["counts"]["kept_occluder_ids"] == 1 and kept["counts"]["dropped_occluder_ids"] == 1
    data["annotations"] = [a for a in data["annotations"] if a["id"] != 502]  # 503 is now the first bad one
    src.write_text(json.dumps(data))
    strict = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "s.json"),
                                       "--strict", "--quiet"])
    assert strict.exit_code == 2 and strict.output.startswith(
        f"Error: {src}: annotation 503: {reason} (") and detail in strict.output
    assert not (tmp_path / "s.json").exists() and not list(tmp_path.glob(".annotate-*"))
    with pytest.raises(OccsynthError, match=f"annotation 503: {reason}"):
        annotate_occluders(src, tmp_path / "s.json", progress=False, strict=True)


def test_an_unwritable_out_is_named_in_the_error(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset()))
    result = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", "/proc/occ.json", "--quiet"])
    assert result.exit_code == 2 and "cannot write /proc/occ.json" in result.output and "Traceback" not in result.output


def test_a_rerun_removes_what_a_killed_run_left_but_not_what_a_running_one_writes(tmp_path):
    """kill -9 leaves the spool folder and the half-written output beside --out (hundreds of MB on train2017).
    A run still writing (on any host: it holds a lock) keeps its files, and so does another --out's run."""
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset()))
    left = [tmp_path / ".annotate-o.json-abc123", tmp_path / ".o.json.tmp-123-0a1b2c3d"]
    running = [tmp_path / ".annotate-o.json-def456", tmp_path / ".o.json.tmp-456-0a1b2c3e"]
    other = tmp_path / ".annotate-p.json-ghi789"
    for spool in (left[0], running[0], other):
        spool.mkdir()
        (spool / "0.jsonl").write_text("[]\n")
        (spool / atomic.LOCK_FILE).write_text("")
    for path in (left[1], running[1]):
        path.write_text('{"half": ')
    held = [open(running[0] / atomic.LOCK_FILE), open(running[1])]  # as the running process holds them
    try:
        assert all(atomic.hold_lock(f) for f in held)
        annotate_occluders(src, tmp_path / "o.json", progress=False)
    finally:
        for f in held:
            f.close()
    assert json.loads((tmp_path / "o.json").read_text())["annotations"]
    assert not any(p.exists() for p in left) and all(p.exists() for p in running) and other.exists()


@pytest.mark.parametrize("threshold", [float("nan"), -1, 2, "0.1", True])
def test_a_threshold_that_is_no_iou_is_refused(tmp_path, threshold):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset()))
    with pytest.raises(OccsynthError, match="threshold must be a box IoU in"):
        annotate_occluders(src, tmp_path / "o.json", threshold=threshold, progress=False)
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("per_bucket", [0, -5, "x", 2.5, True])
def test_images_per_bucket_that_is_no_whole_number_above_0_is_refused(tmp_path, per_bucket):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset()))
    words = f"images_per_bucket must be a whole number >= 1, got {per_bucket!r}"
    with pytest.raises(OccsynthError, match=re.escape(words)):
        annotate_occluders(src, tmp_path / "o.json", images_per_bucket=per_bucket, progress=False)
    assert not (tmp_path / "o.json").exists()


def test_a_locked_atomic_write_keeps_its_lock_until_it_is_renamed_into_place(tmp_path, monkeypatch):
    """A clean-up that runs just before the rename must find the finished temporary still held."""
    real_replace, cleaned = atomic.os.replace, []

    def replace_after_a_clean_up(src, dst):
        cleaned.append(atomic.remove_orphaned_temporaries(dst))
        real_replace(src, dst)
    monkeypatch.setattr(atomic.os, "replace", replace_after_a_clean_up)
    atomic.write_json(tmp_path / "o.json", {"a": 1}, locked=True)
    assert cleaned == [0] and json.loads((tmp_path / "o.json").read_text()) == {"a": 1}


def test_a_writer_whose_new_file_a_clean_up_removed_before_its_lock_starts_again(tmp_path, monkeypatch):
    """The clean-up probes and removes between the writer's create and its lock: the writer must not go on
    writing into a removed temporary or spool (it finds it unlinked, and makes another)."""
    real_hold, raced, races = atomic.hold_lock, [], [1]

    def hold_after_a_clean_up(f):
        if races[0]:  # a clean-up gets in once, before the first lock of each kind below
            races[0] -= 1
            raced.append(atomic.remove_orphaned_temporaries(tmp_path / "o.json", ".annotate-o.json-"))
        return real_hold(f)
    monkeypatch.setattr(atomic, "hold_lock", hold_after_a_clean_up)
    atomic.write_json(tmp_path / "o.json", {"a": 1}, locked=True)
    assert raced == [1] and json.loads((tmp_path / "o.json").read_text()) == {"a": 1}
    races[0] = 1
    with atomic.locked_spool(tmp_path, ".annotate-o.json-") as spool:
        assert raced == [1, 1] and spool.is_dir() and (spool / atomic.LOCK_FILE).exists()
        assert atomic.remove_orphaned_temporaries(tmp_path / "o.json", ".annotate-o.json-") == 0  # held now
    assert not spool.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


def test_records_that_are_no_object_are_skipped_and_a_dropped_record_leaves_its_id_free(tmp_path):
    """A number or null in 'annotations' was copied into the output (a COCO reader fails on it), counted as
    of an unknown image; an annotation with a broken mask left out made the next one with its id a duplicate."""
    data = make_dataset()
    data["annotations"][1:1] = [5, None]
    square = [[0, 0, 4, 0, 4, 4]]
    data["annotations"] += [{"image_id": 20, "category_id": 2, "bbox": [0, 0, 4, 4], "segmentation": square},
                            {"id": "7", "image_id": 20, "category_id": 2, "bbox": [0, 0, 4, 4], "segmentation": []}]
    data["annotations"].append({"id": 502, "image_id": 20, "category_id": 2, "bbox": [2, 2, 10, 10], "area": 2.0,
                                "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]})  # 502 again, good
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    report = annotate_occluders(src, tmp_path / "o.json", progress=False)
    out = json.loads((tmp_path / "o.json").read_text())["annotations"]
    assert all(isinstance(a, dict) for a in out) and len(out) == report["counts"]["annotations"] == 9
    assert report["counts"]["unknown_image"] == 1 and report["counts"]["duplicate_ids"] == 0
    # without an integer id pycocotools' COCO() fails on the output (KeyError 'id'): counted as no_box before
    assert report["skipped"]["counts"] == {"degenerate or empty segmentation": 1, "malformed record": 4}
    assert report["skipped"]["examples"]["malformed record"] == "annotations[1]: malformed record (not an object: 5)"
    assert report["counts"]["no_box"] == 0
    by_id = {a["id"]: a for a in out}
    assert by_id[502]["occluder_ids"] == [501] and by_id[501]["occluder_ids"] == [502]
    strict = CliRunner().invoke(main, ["annotate-occluders", "--ann", str(src), "--out", str(tmp_path / "s.json"),
                                       "--strict", "--quiet"])
    assert strict.exit_code == 2 and strict.output.startswith(f"Error: {src}: annotation 502: degenerate"), \
        strict.output  # the first bad record in file order
    assert not (tmp_path / "s.json").exists()


def test_bcnet_compat_draws_no_mask_at_an_image_size_too_large_to_decode(tmp_path, monkeypatch):
    """An image record claiming 10^6 x 10^6 pixels: pycocotools crashed the process (segmentation fault)
    rasterising the occluder's polygon at that size. Its occluders are found by box; no mask is drawn (counted)."""
    from occsynth import masks

    decode = masks.decode

    def guarded(segmentation, height, width):
        assert height * width <= masks.MAX_IMAGE_PIXELS, "a mask was decoded at a size too large to decode"
        return decode(segmentation, height, width)

    monkeypatch.setattr(masks, "decode", guarded)
    square = [[2, 2, 12, 2, 12, 10, 2, 10]]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10 ** 6, "width": 10 ** 6}],
            "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8], "area": 80,
                             "iscrowd": 0, "segmentation": square} for i in (1, 2)],
            "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "in.json").write_text(json.dumps(data))
    report = annotate_occluders(tmp_path / "in.json", tmp_path / "o.json", bcnet_compat=True, progress=False)
    out = json.loads((tmp_path / "o.json").read_text())["annotations"]
    assert [a["occluder_ids"] for a in out] == [[2], [1]] and [a["bg_object_segmentation"] for a in out] == [[], []]
    assert report["counts"]["no_image_size"] == 2 and report["counts"]["with_occluders"] == 2


def test_a_stop_is_reported_as_itself_when_closing_the_spool_files_fails_too(tmp_path, monkeypatch):
    """The spool files' close ran in a finally: on a full disk its error replaced the strict stop naming the record,
    and the first failing close left the other spool files open."""
    import builtins
    import errno

    from occsynth import annotate

    opened = []

    class Unflushable:
        def __init__(self, f):
            self.f = f
            opened.append(self)

        def close(self):
            if not self.f.closed:
                self.f.close()
                raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(annotate, "open", lambda path, mode="r", **kw: Unflushable(builtins.open(path, mode, **kw))
                        if str(path).endswith(".jsonl") and "w" in mode else builtins.open(path, mode, **kw),
                        raising=False)
    data = make_dataset()
    data["annotations"][0]["id"] = "bad"
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    with pytest.raises(OccsynthError, match=r"in\.json: annotations\[0\]: .*'id' missing or not int"):
        annotate_occluders(src, tmp_path / "out.json", strict=True, progress=False)
    assert opened and all(f.f.closed for f in opened)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]  # no output, no spool folder left
