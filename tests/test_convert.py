"""KINS and COCOA conversion on hand-made files in each layout: masks, measures, occluders, categories."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils

from cli.occsynth_cli import main
from occsynth import errors
from occsynth.convert import convert_cocoa, convert_kins

H, W = 20, 30


def rect(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [H, W], "counts": r["counts"].decode("ascii")}


def decode(seg):
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, H, W))).astype(bool)
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


FRONT = rect(2, 2, 12, 10)               # in front
BACK_AMODAL = rect(8, 4, 20, 12)         # behind FRONT
BACK_VISIBLE = BACK_AMODAL & ~FRONT      # L shape: 8*8 + 4*2 = 72 px
FAR = rect(25, 15, 29, 19)
L_POLY = [8, 10, 12, 10, 12, 4, 20, 4, 20, 12, 8, 12]


def kins_file(tmp_path):
    data = {"images": [{"id": 3, "file_name": "000003.png", "height": H, "width": W}],
            "categories": [{"id": 4, "name": "car", "supercategory": "vehicle"}],
            "annotations": [
                {"id": 11, "image_id": 3, "category_id": 4, "a_segm": [[2, 2, 12, 2, 12, 10, 2, 10]],
                 "i_segm": [[2, 2, 12, 2, 12, 10, 2, 10]], "a_bbox": [2, 2, 10, 8], "i_bbox": [2, 2, 10, 8],
                 "area": 80, "oco_id": 5, "ico_id": 6},
                {"id": 12, "image_id": 3, "category_id": 4, "a_segm": [[8, 4, 20, 4, 20, 12, 8, 12]],
                 "i_segm": [L_POLY], "a_bbox": [8, 4, 12, 8], "i_bbox": [8, 4, 12, 8], "area": 96,
                 "oco_id": 7, "ico_id": 8},
                {"id": 13, "image_id": 3, "category_id": 4, "a_segm": [[25, 15, 29, 15, 29, 19, 25, 19]],
                 "i_segm": [[25, 15, 29, 15, 29, 19, 25, 19]], "a_bbox": [25, 15, 4, 4], "i_bbox": [25, 15, 4, 4],
                 "area": 16, "oco_id": 0, "ico_id": 0},
                {"id": 14, "image_id": 77, "category_id": 4, "a_segm": [], "i_segm": []}]}
    path = tmp_path / "kins.json"
    path.write_text(json.dumps(data))
    return path


def test_convert_kins(tmp_path):
    report = convert_kins(kins_file(tmp_path), tmp_path / "out.json", progress=False)
    out = json.loads((tmp_path / "out.json").read_text())
    anns = {a["id"]: a for a in out["annotations"]}
    assert set(anns) == {11, 12, 13}
    assert anns[12]["occluder_ids"] == [11] and anns[11]["occluder_ids"] == [] and anns[13]["occluder_ids"] == []
    assert np.array_equal(decode(anns[12]["segmentation"]), BACK_VISIBLE)
    assert np.array_equal(decode(anns[12]["amodal_segmentation"]), BACK_AMODAL)
    assert anns[12]["area"] == 72 and anns[12]["amodal_area"] == 96
    assert anns[12]["bbox"] == [8, 4, 12, 8] and anns[12]["amodal_bbox"] == [8, 4, 12, 8]
    assert anns[12]["occlusion_ratio"] == 0.25 and anns[11]["occlusion_ratio"] == 0.0
    assert anns[12]["oco_id"] == 7 and anns[12]["ico_id"] == 8 and anns[12]["iscrowd"] == 0
    assert not {"a_segm", "i_segm", "a_bbox", "i_bbox"} & set(anns[12])
    assert out["categories"] == [{"id": 4, "name": "car", "supercategory": "vehicle"}]
    assert report["counts"]["with_occluders"] == 1 and "unknown_image" not in report["counts"]
    # a skipped record like any other: counted by reason, with an example naming it
    assert report["skipped"] == {"counts": {"annotation refers to an unknown image id": 1}, "examples": {
        "annotation refers to an unknown image id": "annotation 14: annotation refers to an unknown image id (image_id 77)"}}
    # a hidden part covered by fewer pixels than --min-overlap does not make an occluder
    for min_overlap, expected in ((24, [11]), (25, [])):  # FRONT covers 4 x 6 = 24 px of BACK's hidden part
        convert_kins(kins_file(tmp_path), tmp_path / "out2.json", min_overlap=min_overlap, progress=False)
        anns = {a["id"]: a for a in json.loads((tmp_path / "out2.json").read_text())["annotations"]}
        assert anns[12]["occluder_ids"] == expected


def test_kins_amodal_mask_holds_the_visible_one_and_only_a_hidden_part_makes_an_occluder(tmp_path):
    kins = json.loads(kins_file(tmp_path).read_text())
    base = kins["annotations"][0]
    kins["annotations"] += [
        {**base, "id": 15, "a_segm": [[18, 10, 22, 10, 22, 14, 18, 14]],        # over 4 px of 12's visible part,
         "i_segm": [[18, 10, 22, 10, 22, 14, 18, 14]]},                          # none of its hidden part
        {**base, "id": 16, "a_segm": [[14, 14, 20, 14, 20, 18, 14, 18]],        # its visible polygon reaches past
         "i_segm": [[14, 14, 22, 14, 22, 18, 14, 18]]}]                          # its amodal one (to x = 22)
    kins["annotations"][2]["iscrowd"] = 1                                        # 13: the source's flag is kept
    (tmp_path / "k.json").write_text(json.dumps(kins))
    report = convert_kins(tmp_path / "k.json", tmp_path / "out.json", progress=False)
    anns = {a["id"]: a for a in json.loads((tmp_path / "out.json").read_text())["annotations"]}
    assert {k: a["occluder_ids"] for k, a in anns.items()} == {11: [], 12: [11], 13: [], 15: [], 16: []}
    assert report["counts"]["with_occluders"] == 1
    union = anns[16]
    assert union["segmentation"] == kins["annotations"][-1]["i_segm"]   # the visible polygon, as given
    assert isinstance(union["amodal_segmentation"], dict)               # rebuilt (amodal | visible): RLE
    assert np.array_equal(decode(union["amodal_segmentation"]), rect(14, 14, 22, 18))
    assert (union["area"], union["amodal_area"], union["amodal_bbox"], union["occlusion_ratio"]) == (
        32, 32, [14, 14, 8, 4], 0.0)
    assert anns[13]["iscrowd"] == 1 and anns[12]["iscrowd"] == 0



def test_a_stray_short_polygon_part_is_dropped_from_the_output_not_the_object(tmp_path):
    """detectron2's rule (masks.check_polygons): a 4-number part (first: pycocotools would read every part as a box)
    or an odd one beside a good outline is left out, and the polygon written without it: the output is what the file
    without the stray parts gives."""
    clean = convert_kins(kins_file(tmp_path), tmp_path / "clean.json", progress=False)
    data = json.loads(kins_file(tmp_path).read_text())
    back = data["annotations"][1]
    back["i_segm"] = [[8, 4, 20, 4], *back["i_segm"]]
    back["a_segm"] = [*back["a_segm"], [1, 1, 2]]
    (tmp_path / "stray.json").write_text(json.dumps(data))
    stray = convert_kins(tmp_path / "stray.json", tmp_path / "out.json", progress=False)
    assert (tmp_path / "out.json").read_bytes() == (tmp_path / "clean.json").read_bytes()
    assert {k: v for k, v in stray.items() if k != "out"} == {k: v for k, v in clean.items() if k != "out"}
    anns = {a["id"]: a for a in json.loads((tmp_path / "out.json").read_text())["annotations"]}
    assert anns[12]["segmentation"] == [L_POLY] and anns[12]["amodal_segmentation"] == [[8, 4, 20, 4, 20, 12, 8, 12]]


def test_polygons_reaching_past_the_right_edge_of_a_wide_image_are_copied_as_given(tmp_path):
    """Vertices outside the image but within the limit every reader allows (masks.check_polygons: x by the width,
    y by the height) are no damage: KINS and COCOA polygons are written as given and read clipped to the image."""
    data = json.loads(kins_file(tmp_path).read_text())
    edge = [[25, 15, 45, 15, 45, 19, 25, 19]]  # x to 45: past twice the height (40), within twice the width (60)
    data["annotations"][2]["a_segm"] = data["annotations"][2]["i_segm"] = edge
    del data["annotations"][3]  # 14, of an unknown image: nothing is skipped
    (tmp_path / "k.json").write_text(json.dumps(data))
    report = convert_kins(tmp_path / "k.json", tmp_path / "k-out.json", progress=False)
    anns = {a["id"]: a for a in json.loads((tmp_path / "k-out.json").read_text())["annotations"]}
    assert anns[13]["segmentation"] == anns[13]["amodal_segmentation"] == edge and report["skipped"]["counts"] == {}
    assert (anns[13]["bbox"], anns[13]["area"]) == ([25, 15, 5, 4], 20)
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    cocoa["annotations"][0]["regions"][2]["segmentation"] = edge[0]
    (tmp_path / "c.json").write_text(json.dumps(cocoa))
    report = convert_cocoa(tmp_path / "c.json", tmp_path / "c-out.json", progress=False)
    blob = json.loads((tmp_path / "c-out.json").read_text())["annotations"][2]
    assert blob["amodal_segmentation"] == edge and report["skipped"]["counts"] == {}
    assert np.array_equal(decode(blob["segmentation"]), rect(25, 15, 30, 19))


def cocoa_file(tmp_path):
    invisible = BACK_AMODAL & FRONT
    data = {"images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "height": H, "width": W}],
            "annotations": [{"id": 900, "image_id": 5, "size": 3, "regions": [
                {"segmentation": [2, 2, 12, 2, 12, 10, 2, 10], "order": 1, "name": "Person", "isStuff": 0,
                 "occlude_rate": 0.0, "area": 80},
                {"segmentation": [8, 4, 20, 4, 20, 12, 8, 12], "order": 2, "name": "grass", "isStuff": 1,
                 "occlude_rate": 0.25, "visible_mask": rle(BACK_VISIBLE), "invisible_mask": rle(invisible)},
                {"segmentation": [25, 15, 29, 15, 29, 19, 25, 19], "order": 3, "name": "blob", "isStuff": 0,
                 "occlude_rate": 0.0}]}]}
    path = tmp_path / "cocoa.json"
    path.write_text(json.dumps(data))
    return path


def test_convert_cocoa_default_categories(tmp_path):
    report = convert_cocoa(cocoa_file(tmp_path), tmp_path / "out.json", progress=False)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["categories"] == [{"id": 1, "name": "thing", "supercategory": "thing"},
                                 {"id": 2, "name": "stuff", "supercategory": "stuff"}]
    anns = out["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3] and [a["category_id"] for a in anns] == [1, 2, 1]
    assert [a["occluder_ids"] for a in anns] == [[], [1], []]
    assert [a["layer"] for a in anns] == [2, 1, 0] and [a["order"] for a in anns] == [1, 2, 3]
    assert np.array_equal(decode(anns[1]["segmentation"]), BACK_VISIBLE)
    assert np.array_equal(decode(anns[1]["amodal_segmentation"]), BACK_AMODAL)
    assert np.array_equal(decode(anns[0]["segmentation"]), FRONT)  # no visible_mask: not occluded
    assert anns[1]["area"] == 72 and anns[1]["amodal_area"] == 96 and anns[1]["occlusion_ratio"] == 0.25
    assert anns[1]["source"] == {"annotation_id": 900, "region_index": 1} and anns[1]["occlude_rate"] == 0.25
    assert report["counts"]["thing"] == 2 and report["counts"]["stuff"] == 1


def test_cocoa_ids_run_on_over_images_and_layers_follow_the_largest_order(tmp_path):
    """Annotation ids count on from one record to the next; layer = the image's largest order - order (not the
    region count); the visible mask is cut to the amodal one; source.region_index is the region's place in the
    source record, a skipped region included."""
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    cocoa["images"].append({"id": 6, "file_name": "COCO_train2014_000000000006.jpg", "height": H, "width": W})
    outside = rect(0, 15, 3, 18)  # no part of the amodal mask
    cocoa["annotations"].append({"id": 901, "image_id": 6, "regions": [
        {"segmentation": [], "order": 1, "name": "lost"},                                 # no mask: skipped
        {"segmentation": [2, 2, 12, 2, 12, 10, 2, 10], "order": 1, "name": "Person", "isStuff": 0},
        {"segmentation": [8, 4, 20, 4, 20, 12, 8, 12], "order": 5, "name": "grass", "isStuff": 1,
         "visible_mask": rle(BACK_VISIBLE | outside)}]})
    (tmp_path / "c.json").write_text(json.dumps(cocoa))
    report = convert_cocoa(tmp_path / "c.json", tmp_path / "out.json", progress=False)
    out = json.loads((tmp_path / "out.json").read_text())["annotations"]
    assert [a["id"] for a in out] == [1, 2, 3, 4, 5] and [a["image_id"] for a in out] == [5, 5, 5, 6, 6]
    front, back = out[3:]
    assert [a["source"] for a in (front, back)] == [{"annotation_id": 901, "region_index": 1},
                                                   {"annotation_id": 901, "region_index": 2}]
    assert [(a["order"], a["layer"]) for a in (front, back)] == [(1, 4), (5, 0)]
    assert front["occluder_ids"] == [] and back["occluder_ids"] == [4]
    assert np.array_equal(decode(back["segmentation"]), BACK_VISIBLE)
    assert back["area"] == 72 and back["occlusion_ratio"] == 0.25
    assert report["counts"]["bad_masks"] == 1 and report["skipped"]["counts"] == {errors.DEGENERATE_MASK: 1}


def test_stats_of_a_cocoa_conversion_count_its_depth_layers_as_no_pastes(tmp_path):
    """A converted set's layer is its depth order: stats called 2 of these 3 real regions 'pasted'."""
    from occsynth.stats import dataset_stats, format_stats

    convert_cocoa(cocoa_file(tmp_path), tmp_path / "out.json", progress=False)
    stats = dataset_stats(json.loads((tmp_path / "out.json").read_text()))
    assert (stats["annotations"], stats["pasted"], stats["background"]) == (3, 0, 3)
    assert stats["layers"] == {0: 1, 1: 1, 2: 1} and stats["occlusion_ratio"]["pasted_counts"] == [0] * 10
    text = format_stats(stats)
    assert text.startswith("1 image, 3 annotations (0 pasted, 3 background)\n(layers without pastes: a converted "
                           "amodal set, whose layer is its depth order; every instance counts as background)")


def test_convert_cocoa_maps_coco_names(tmp_path):
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"categories": [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}]}))
    res = CliRunner().invoke(main, ["convert-cocoa", "--ann", str(cocoa_file(tmp_path)), "--out",
                                    str(tmp_path / "o.json"), "--categories-from", str(coco), "--quiet"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "o.json").read_text())
    assert [c["id"] for c in out["categories"]] == [1, 90, 91, 92]
    assert [a["category_id"] for a in out["annotations"]] == [1, 92, 91]  # person, stuff, thing


def test_cli_kins_and_bad_input(tmp_path):
    res = CliRunner().invoke(main, ["convert-kins", "--ann", str(kins_file(tmp_path)), "--out",
                                    str(tmp_path / "k.json"), "--quiet"])
    assert res.exit_code == 0 and "3 annotations in 1 image, 1 with occluders" in res.output
    # FRONT covers 24 px of BACK's hidden part: fewer than --min-overlap 25, so no occluder
    res = CliRunner().invoke(main, ["convert-kins", "--ann", str(kins_file(tmp_path)), "--out",
                                    str(tmp_path / "k25.json"), "--min-overlap", "25", "--quiet"])
    assert res.exit_code == 0 and "3 annotations in 1 image, 0 with occluders" in res.output, res.output
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    res = CliRunner().invoke(main, ["convert-cocoa", "--ann", str(bad), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "not a COCOA file" in res.output


@pytest.mark.parametrize("convert, source", [("convert-kins", kins_file), ("convert-cocoa", cocoa_file)])
def test_validate_says_a_converted_set_is_not_a_generated_one(tmp_path, convert, source):
    res = CliRunner().invoke(main, [convert, "--ann", str(source(tmp_path)), "--out", str(tmp_path / "c.json"),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "c.json"), "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output == (f"Error: {tmp_path / 'c.json'} has amodal annotations but is not an occsynth generated set "
                          "(no 'amodal_complete' field, as in sets from convert-kins or convert-cocoa); validate "
                          "checks the invariants of docs/FORMAT.md, which only generated sets keep\n")


def test_plain_coco_is_refused_by_both_converters(tmp_path):
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2],
                                                 "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]], "iscrowd": 0}],
                                "categories": [{"id": 1, "name": "a"}]}))
    for command, message in (("convert-kins", "not a KINS file (no annotation has 'a_segm'/'i_segm')"),
                             ("convert-cocoa", "not a COCOA file (no 'regions')")):
        res = CliRunner().invoke(main, [command, "--ann", str(coco), "--out", str(tmp_path / "o.json"), "--quiet"])
        assert res.exit_code == 2 and f"{coco}: {message}" in res.output, res.output
        assert not (tmp_path / "o.json").exists()
    # Each converter also refuses the other's layout.
    res = CliRunner().invoke(main, ["convert-cocoa", "--ann", str(kins_file(tmp_path)), "--out",
                                    str(tmp_path / "o.json"), "--quiet"])
    assert res.exit_code == 2 and "no 'regions'" in res.output
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    (tmp_path / "cocoa2.json").write_text(json.dumps(dict(cocoa, categories=[])))
    res = CliRunner().invoke(main, ["convert-kins", "--ann", str(tmp_path / "cocoa2.json"), "--out",
                                    str(tmp_path / "o.json"), "--quiet"])
    assert res.exit_code == 2 and "not a KINS file" in res.output
    # a file of either layout with nothing to convert says so, not that it is of another layout
    for command, make in (("convert-kins", kins_file), ("convert-cocoa", cocoa_file)):
        empty = tmp_path / "empty.json"
        empty.write_text(json.dumps(dict(json.loads(make(tmp_path).read_text()), annotations=[])))
        res = CliRunner().invoke(main, [command, "--ann", str(empty), "--out", str(tmp_path / "o.json"), "--quiet"])
        assert res.exit_code == 2 and res.output == (f"Error: {empty}: no annotations to convert (its 'annotations' "
                                                     "list is empty)\n"), res.output
        assert not (tmp_path / "o.json").exists()


def test_records_the_converters_cannot_use_are_counted_not_tracebacks(tmp_path):
    kins = json.loads(kins_file(tmp_path).read_text())
    kins["images"].append({"id": 9, "file_name": "000009.png"})  # no height/width: its masks cannot be decoded
    kins["annotations"].append({**kins["annotations"][0], "id": 15, "image_id": 9})
    kins["annotations"].append({**kins["annotations"][0], "id": 16, "image_id": [3]})  # a list is no id
    (tmp_path / "k.json").write_text(json.dumps(kins))
    report = convert_kins(tmp_path / "k.json", tmp_path / "k-out.json", progress=False)
    # annotation 15's image record was skipped: counted apart from the two whose image_id names no record, under
    # the reason every reader gives (not in a count of its own)
    assert report["counts"]["bad_images"] == 1 and "of_bad_image" not in report["counts"]
    assert report["skipped"]["counts"][errors.OF_SKIPPED_IMAGE] == 1
    assert report["skipped"]["examples"][errors.OF_SKIPPED_IMAGE] == (
        "annotation 15: annotation of a skipped image (image record 9: malformed record)")
    assert report["skipped"]["counts"][errors.UNKNOWN_IMAGE] == 2
    assert report["counts"]["annotations"] == 3
    # the output names only usable records: a COCO reader would fail on image 9 (no size)
    assert [im["id"] for im in json.loads((tmp_path / "k-out.json").read_text())["images"]] == [3]
    no_visible = {**kins, "annotations": kins["annotations"] + [
        {k: v for k, v in kins["annotations"][0].items() if k != "i_segm"} | {"id": 17}]}
    (tmp_path / "k3.json").write_text(json.dumps(no_visible))
    report = convert_kins(tmp_path / "k3.json", tmp_path / "k3-out.json", progress=False)
    assert report["skipped"]["counts"][errors.MALFORMED_RECORD] == 2  # image 9 (no size) and annotation 17
    assert 17 not in [a["id"] for a in json.loads((tmp_path / "k3-out.json").read_text())["annotations"]]
    twice = {**kins, "images": kins["images"] + [dict(kins["images"][0], file_name="again.png")]}
    (tmp_path / "k2.json").write_text(json.dumps(twice))
    report = convert_kins(tmp_path / "k2.json", tmp_path / "k2-out.json", progress=False)
    assert report["counts"]["bad_images"] == 2 and report["skipped"]["counts"][errors.DUPLICATE_ID] == 1
    assert [im["file_name"] for im in json.loads((tmp_path / "k2-out.json").read_text())["images"]] == ["000003.png"]
    kins["annotations"].append({**kins["annotations"][0], "id": 18, "iscrowd": "yes"})  # pycocotools' COCOeval fails
    (tmp_path / "k4.json").write_text(json.dumps(kins))
    report = convert_kins(tmp_path / "k4.json", tmp_path / "k4-out.json", progress=False)
    assert report["skipped"]["counts"][errors.MALFORMED_RECORD] == 2  # image 9 (no size) and annotation 18
    assert 18 not in [a["id"] for a in json.loads((tmp_path / "k4-out.json").read_text())["annotations"]]
    kins["annotations"].pop()
    kins["annotations"][1]["category_id"] = 77  # no such category: skipped, not written
    (tmp_path / "k.json").write_text(json.dumps(kins))
    report = convert_kins(tmp_path / "k.json", tmp_path / "k-out.json", progress=False)
    assert report["skipped"]["examples"][errors.UNKNOWN_CATEGORY] == (
        f"annotation 12: {errors.UNKNOWN_CATEGORY} (category_id 77)")
    assert [a["id"] for a in json.loads((tmp_path / "k-out.json").read_text())["annotations"]] == [11, 13]
    for order in (None, 2.5, "3"):  # not a whole number: the listing order stands in, counted
        cocoa = json.loads(cocoa_file(tmp_path).read_text())
        cocoa["annotations"][0]["regions"][2]["order"] = order
        cocoa["images"].append({"id": 8, "file_name": "x.jpg"})  # no size
        (tmp_path / "c.json").write_text(json.dumps(cocoa))
        report = convert_cocoa(tmp_path / "c.json", tmp_path / "c-out.json", progress=False)
        assert report["counts"]["bad_order"] == 1 and report["counts"]["annotations"] == 3
        out = json.loads((tmp_path / "c-out.json").read_text())
        assert [a["order"] for a in out["annotations"]] == [1, 2, 3]
        assert [im["id"] for im in out["images"]] == [im["id"] for im in cocoa["images"][:-1]]


def test_cocoa_is_stuff_flag_texts_are_read_as_cocoa_means_them(tmp_path):
    # region 1 ('grass', no COCO category of that name) is the one whose flag decides thing or stuff
    for flag, stuff, bad in ((1, True, 0), ("1", True, 0), ("TRUE", True, 0), (True, True, 0), ("0", False, 0),
                             ("false", False, 0), (None, False, 0), ("yes", False, 1), (2, False, 1), ([1], False, 1)):
        cocoa = json.loads(cocoa_file(tmp_path).read_text())
        cocoa["annotations"][0]["regions"][1]["isStuff"] = flag
        (tmp_path / "c.json").write_text(json.dumps(cocoa))
        report = convert_cocoa(tmp_path / "c.json", tmp_path / "c-out.json", progress=False)
        out = json.loads((tmp_path / "c-out.json").read_text())
        grass = next(a for a in out["annotations"] if a["name"] == "grass")
        names = {c["id"]: c["name"] for c in out["categories"]}
        assert (grass["is_stuff"], names[grass["category_id"]], report["counts"]["bad_is_stuff"]) == (
            stuff, "stuff" if stuff else "thing", bad), flag


def test_cocoa_info_that_is_not_an_object_is_dropped_and_non_list_regions_skipped(tmp_path):
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    cocoa["annotations"].append({"id": 901, "image_id": 5, "regions": 5})
    cocoa["annotations"].append(7)  # was counted as an annotation of an unknown image
    (tmp_path / "c.json").write_text(json.dumps(cocoa))
    report = convert_cocoa(tmp_path / "c.json", tmp_path / "c-out.json", progress=False)
    assert report["skipped"]["counts"] == {"malformed record": 2}  # no unknown image among them
    cocoa["annotations"].pop()
    for info in ([1, 2], "hello"):
        (tmp_path / "c.json").write_text(json.dumps(dict(cocoa, info=info)))
        report = convert_cocoa(tmp_path / "c.json", tmp_path / "c-out.json", progress=False)
        out = json.loads((tmp_path / "c-out.json").read_text())
        assert out["info"] == {"description": "COCOA converted from c.json"}
        assert report["counts"]["annotations"] == 3
        assert report["skipped"]["counts"] == {"malformed record": 1}
        assert "COCOA annotation 901" in report["skipped"]["examples"]["malformed record"]


@pytest.mark.parametrize("regions, detail", [({}, "'regions' is not a list: {}"),
                                             (None, "'regions' is not a list: None"),
                                             ("", "'regions' is not a list: ''"),
                                             ("absent", "no 'regions' list")])
def test_cocoa_regions_that_are_no_list_are_counted_even_when_empty_or_absent(tmp_path, regions, detail):
    """A falsy {} / null / "" was read as no regions and dropped uncounted."""
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    cocoa["annotations"].append({"id": 901, "image_id": 5} if regions == "absent" else
                                {"id": 901, "image_id": 5, "regions": regions})
    (tmp_path / "c.json").write_text(json.dumps(cocoa))
    result = CliRunner().invoke(main, ["convert-cocoa", "--ann", str(tmp_path / "c.json"), "--out",
                                       str(tmp_path / "c-out.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == [
        "bad records skipped: 1",
        f"        1  malformed record, e.g. COCOA annotation 901 ({detail})"]


def test_a_cocoa_region_repeating_another_but_for_its_spelling_or_a_stray_part_is_a_duplicate(tmp_path):
    """Regions are the same instance when their amodal polygons are written the same (convert._polygons): one
    spelled as a list of one polygon, or with a stray short part beside it (dropped, detectron2's rule), repeats the
    flat one. Since stray parts are dropped rather than refusing the region, such a repeat was converted: the
    instance came out twice."""
    clean = convert_cocoa(cocoa_file(tmp_path), tmp_path / "clean.json", progress=False)
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    regions = cocoa["annotations"][0]["regions"]
    blob = regions[2]["segmentation"]
    regions += [dict(regions[2], order=4, segmentation=[blob, [3, 3]]),   # a stray 1-point part
                dict(regions[2], order=5, segmentation=[blob])]           # a list of one polygon
    (tmp_path / "c.json").write_text(json.dumps(cocoa))
    report = convert_cocoa(tmp_path / "c.json", tmp_path / "out.json", progress=False)
    assert report["skipped"]["counts"] == {"duplicate record": 2}
    assert report["skipped"]["examples"]["duplicate record"] == (
        "COCOA annotation 900 region 3: duplicate record (the same segmentation as region 2: one instance, listed "
        "again)")
    assert report["counts"] == clean["counts"]
    out, expected = (json.loads((tmp_path / name).read_text()) for name in ("out.json", "clean.json"))
    assert out["annotations"] == expected["annotations"]



def test_a_cocoa_region_repeating_an_rle_region_with_its_keys_in_another_order_is_a_duplicate(tmp_path):
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    regions = cocoa["annotations"][0]["regions"]
    mask = rle(FAR)
    regions[2]["segmentation"] = mask
    regions.append(dict(regions[2], order=4, segmentation={"counts": mask["counts"], "size": mask["size"]}))
    (tmp_path / "c.json").write_text(json.dumps(cocoa))
    report = convert_cocoa(tmp_path / "c.json", tmp_path / "out.json", progress=False)
    assert report["skipped"]["examples"] == {"duplicate record": "COCOA annotation 900 region 3: duplicate record (the "
                                             "same segmentation as region 2: one instance, listed again)"}
    out = json.loads((tmp_path / "out.json").read_text())["annotations"]
    assert [a["source"]["region_index"] for a in out] == [0, 1, 2] and out[2]["amodal_segmentation"] == mask

def test_cocoa_records_repeating_an_id_an_image_or_a_region_are_skipped_by_reason_and_strict_stops(tmp_path):
    """They were converted without a word: the image's instances came out twice, each copy occluding nobody of
    the other's."""
    clean = convert_cocoa(cocoa_file(tmp_path), tmp_path / "clean.json", progress=False)
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    first = cocoa["annotations"][0]
    cocoa["annotations"] += [json.loads(json.dumps(first)),                 # the record again: its id again
                             json.loads(json.dumps(dict(first, id=901)))]   # image 5 again (another annotator)
    first["regions"].append(dict(first["regions"][2], order=4))             # an instance twice in one record
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cocoa))
    result = CliRunner().invoke(main, ["convert-cocoa", "--ann", str(path), "--out", str(tmp_path / "c-out.json"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-3:] == [
        "bad records skipped: 3",
        "        1  duplicate id, e.g. COCOA annotation 900 (later records with this id skipped)",
        "        2  duplicate record, e.g. COCOA annotation 900 region 3 (the same segmentation as region 2: one "
        "instance, listed again)"]
    out, expected = (json.loads((tmp_path / name).read_text()) for name in ("c-out.json", "clean.json"))
    assert out["annotations"] == expected["annotations"] and out["images"] == expected["images"]
    report = convert_cocoa(path, tmp_path / "c-out.json", progress=False)
    assert report["counts"] == clean["counts"]
    del first["regions"][3]
    cocoa["annotations"].pop(1)  # the other record of image 5 alone: named with the record it repeats
    path.write_text(json.dumps(cocoa))
    report = convert_cocoa(path, tmp_path / "c-out.json", progress=False)
    assert report["skipped"]["examples"] == {"duplicate record": "COCOA annotation 901: duplicate record (image_id 5 "
                                             "is annotated by an earlier record, COCOA annotation 900; only the first "
                                             "record of an image is converted)"}
    for name in ("c-out.json", "strict.json"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(errors.OccsynthError) as stop:
        convert_cocoa(path, tmp_path / "strict.json", progress=False, strict=True)
    assert str(stop.value) == (f"{path}: COCOA annotation 901: duplicate record (image_id 5 is annotated by an earlier "
                               "record, COCOA annotation 900)")
    assert not (tmp_path / "strict.json").exists()


def test_kins_annotation_without_id_is_skipped_and_named(tmp_path):
    kins = json.loads(kins_file(tmp_path).read_text())
    del kins["annotations"][0]["id"]
    (tmp_path / "k.json").write_text(json.dumps(kins))
    res = CliRunner().invoke(main, ["convert-kins", "--ann", str(tmp_path / "k.json"), "--out",
                                    str(tmp_path / "k-out.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "1  malformed record, e.g. annotation record" in res.output and "'id' missing" in res.output
    anns = json.loads((tmp_path / "k-out.json").read_text())["annotations"]
    assert [a["id"] for a in anns] == [12, 13]


@pytest.mark.parametrize("make, convert, side, example, of_bad_image", [
    (kins_file, convert_kins, 10 ** 6, "image record 3", 3), (cocoa_file, convert_cocoa, 10 ** 9, "over the limit", 1)])
def test_huge_images_are_bad_records_never_decoded(tmp_path, monkeypatch, make, convert, side, example, of_bad_image):
    from occsynth import masks

    decode = masks.decode

    def guarded(segmentation, height, width):
        assert height * width <= 1 << 27, "a huge image was decoded"
        return decode(segmentation, height, width)

    monkeypatch.setattr(masks, "decode", guarded)
    data = json.loads(make(tmp_path).read_text())
    data["images"].append(dict(data["images"][0], id=100))  # a usable image: a file of nothing usable is refused
    data["annotations"].append(dict(data["annotations"][0], id=100, image_id=100))
    data["images"][0].update(height=side, width=side)
    (tmp_path / "in.json").write_text(json.dumps(data))
    report = convert(tmp_path / "in.json", tmp_path / "out.json", progress=False)
    assert [a["image_id"] for a in json.loads((tmp_path / "out.json").read_text())["annotations"]] == \
        [100] * report["counts"]["annotations"] and report["counts"]["bad_images"] == 1
    # the huge image's annotations, not 'unknown'
    assert report["skipped"]["counts"][errors.OF_SKIPPED_IMAGE] == of_bad_image
    assert report["skipped"]["examples"][errors.OF_SKIPPED_IMAGE].endswith(
        f"annotation of a skipped image (image record {data['images'][0]['id']}: image too large)")
    assert example in report["skipped"]["examples"]["image too large"]  # the reason every reader gives


def test_kins_masks_that_cannot_be_decoded_are_skipped_not_replaced(tmp_path):
    kins = json.loads(kins_file(tmp_path).read_text())
    kins["annotations"][0]["a_segm"] = {"size": [H, W], "counts": [1, "x"]}  # undecodable amodal mask
    kins["annotations"][2]["i_segm"] = {"size": [10, 10], "counts": "a"}     # visible mask of the wrong size
    (tmp_path / "k.json").write_text(json.dumps(kins))
    report = convert_kins(tmp_path / "k.json", tmp_path / "k-out.json", progress=False)
    anns = json.loads((tmp_path / "k-out.json").read_text())["annotations"]
    assert [a["id"] for a in anns] == [12]
    assert report["counts"]["bad_masks"] == 2 and report["counts"]["fully_hidden"] == 0
    assert report["skipped"]["counts"] == {"degenerate or empty segmentation": 2, errors.UNKNOWN_IMAGE: 1}
    assert "annotation 11" in report["skipped"]["examples"]["degenerate or empty segmentation"]


def test_out_equal_to_ann_is_refused_before_writing(tmp_path):
    ann = kins_file(tmp_path)
    before = ann.read_text()
    (tmp_path / "link.json").symlink_to(ann)
    for out in (ann, tmp_path / "." / "kins.json", tmp_path / "link.json"):
        res = CliRunner().invoke(main, ["convert-kins", "--ann", str(ann), "--out", str(out), "--quiet"])
        assert res.exit_code == 2 and "out_path/--out must differ from in_path/--ann" in res.output, res.output
        assert ann.read_text() == before
    cocoa = cocoa_file(tmp_path)
    res = CliRunner().invoke(main, ["convert-cocoa", "--ann", str(cocoa), "--out", str(cocoa), "--quiet"])
    assert res.exit_code == 2 and "out_path/--out must differ from in_path/--ann" in res.output
    # --categories-from is an input too: often instances_train2017.json itself, which was overwritten
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"categories": [{"id": 1, "name": "person"}]}))
    before = coco.read_text()
    res = CliRunner().invoke(main, ["convert-cocoa", "--ann", str(cocoa), "--out", str(tmp_path / "." / coco.name),
                                    "--categories-from", str(coco), "--quiet"])
    assert res.exit_code == 2 and "out_path/--out must differ from --categories-from" in res.output, res.output
    assert coco.read_text() == before


@pytest.mark.parametrize("command, layout", [
    ("convert-kins", "Input: KINS's COCO-like JSON ('images', 'categories', 'annotations'), each annotation with "
                     "'a_segm'/'a_bbox' (amodal) and 'i_segm'/'i_bbox' (visible) polygons."),
    ("convert-cocoa", "Input: COCOA's JSON ('images', 'annotations'), one annotation per image holding a 'regions' "
                      "list; each region has 'segmentation' (amodal polygon), 'visible_mask' (RLE, absent when not "
                      "occluded), 'order' (depth, 1 = front), 'name' and 'isStuff'."),
])
def test_converter_help_says_which_input_layout_it_expects(command, layout):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and layout in " ".join(result.output.split())


def _perfect_visible_ap(path):
    """pycocotools segm AP of detections equal to every non-crowd ground truth's visible mask."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": gt.annToRLE(a),
                 "score": 1.0} for a in gt.dataset["annotations"] if not a["iscrowd"]]
        ev = COCOeval(gt, gt.loadRes(dets), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0]


@pytest.mark.parametrize("make", ["cocoa", "kins"])
def test_a_fully_hidden_instance_keeps_its_amodal_mask_as_an_ignore_region(tmp_path, make):
    """Nothing visible: with iscrowd 0 pycocotools counted it as an object no detection can match (a perfect
    detector's AP was 0.78 / 0.63 here) and mmdetection/detectron2 drop its zero-area box; it is an ignore region."""
    hidden = [8, 4, 11, 4, 11, 8, 8, 8]  # inside FRONT
    if make == "cocoa":
        data = json.loads(cocoa_file(tmp_path).read_text())
        data["annotations"][0]["regions"].insert(1, {"segmentation": hidden, "order": 2, "name": "cup", "isStuff": 0,
                                                     "visible_mask": rle(np.zeros((H, W), bool))})
        convert, hidden_id = convert_cocoa, 2
    else:
        data = json.loads(kins_file(tmp_path).read_text())
        data["annotations"].insert(1, {**data["annotations"][0], "id": 15, "a_segm": [hidden], "i_segm": []})
        convert, hidden_id = convert_kins, 15
    (tmp_path / "in.json").write_text(json.dumps(data))
    report = convert(tmp_path / "in.json", tmp_path / "out.json", progress=False)
    anns = {a["id"]: a for a in json.loads((tmp_path / "out.json").read_text())["annotations"]}
    a = anns[hidden_id]
    assert a["iscrowd"] == 1 and a["area"] == 0 and a["bbox"] == [0.0, 0.0, 0.0, 0.0] and a["occlusion_ratio"] == 1
    assert np.array_equal(decode(a["amodal_segmentation"]), rect(8, 4, 11, 8)) and a["amodal_area"] == 12
    assert not decode(a["segmentation"]).any()
    assert [b["iscrowd"] for b in anns.values() if b["id"] != hidden_id] == [0] * (len(anns) - 1)
    unknown = {errors.UNKNOWN_IMAGE: 1} if make == "kins" else {}  # the KINS file's annotation 14
    assert report["counts"]["fully_hidden"] == 1 and report["skipped"]["counts"] == unknown
    assert _perfect_visible_ap(tmp_path / "out.json") == 1.0


def test_a_kins_crowd_record_with_nothing_visible_is_not_counted_as_a_fully_hidden_instance(tmp_path):
    """``fully_hidden`` counts the instances the converter turns into ignore regions: a record the source already
    marks iscrowd 1 with nothing visible stays as it is, and is not one of them."""
    hidden = [8, 4, 11, 4, 11, 8, 8, 8]
    data = json.loads(kins_file(tmp_path).read_text())
    data["annotations"].insert(1, {**data["annotations"][0], "id": 15, "a_segm": [hidden], "i_segm": []})
    data["annotations"].insert(2, {**data["annotations"][0], "id": 16, "a_segm": [hidden], "i_segm": [], "iscrowd": 1})
    (tmp_path / "in.json").write_text(json.dumps(data))
    report = convert_kins(tmp_path / "in.json", tmp_path / "out.json", progress=False)
    anns = {a["id"]: a for a in json.loads((tmp_path / "out.json").read_text())["annotations"]}
    assert anns[15]["iscrowd"] == 1 and anns[16]["iscrowd"] == 1 and anns[16]["area"] == 0
    assert report["counts"]["fully_hidden"] == 1


def test_a_mask_that_covers_no_pixel_of_the_image_is_a_bad_record_not_a_fully_hidden_instance(tmp_path):
    """A polygon beside the image or without area decoded to an empty mask: the instance was written with
    amodal_area 0 and counted as fully hidden, a record with nothing to label."""
    beside, flat = [31, 1, 40, 1, 40, 10, 31, 10], [1, 1, 5, 1, 9, 1]  # x >= 30 = W; three collinear points
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    cocoa["annotations"][0]["regions"] += [{"segmentation": beside, "order": 4}, {"segmentation": flat, "order": 5}]
    (tmp_path / "c.json").write_text(json.dumps(cocoa))
    kins = json.loads(kins_file(tmp_path).read_text())
    kins["annotations"] += [{**kins["annotations"][0], "id": 15, "a_segm": [beside], "i_segm": [beside]},
                            {**kins["annotations"][0], "id": 16, "a_segm": [flat], "i_segm": []}]
    (tmp_path / "k.json").write_text(json.dumps(kins))
    for convert, src, good in ((convert_cocoa, "c.json", 3), (convert_kins, "k.json", 3)):
        report = convert(tmp_path / src, tmp_path / "out.json", progress=False)
        anns = json.loads((tmp_path / "out.json").read_text())["annotations"]
        assert len(anns) == good and all(a["amodal_area"] > 0 for a in anns)
        assert report["counts"]["fully_hidden"] == 0 and report["counts"]["bad_masks"] == 2
        assert report["skipped"]["counts"] == {errors.DEGENERATE_MASK: 2, **({errors.UNKNOWN_IMAGE: 1} if convert is convert_kins else {})}
        assert "empty mask" in report["skipped"]["examples"][errors.DEGENERATE_MASK]


@pytest.mark.parametrize("make, convert, constant", [(cocoa_file, "convert-cocoa", "NaN"),
                                                     (kins_file, "convert-kins", "Infinity")])
def test_nan_or_infinity_in_the_input_is_refused_not_copied_into_the_output(tmp_path, make, convert, constant):
    """json.load reads NaN; the converters copied it into their output (an occlude_rate, KINS's oco_id), which
    annotate-occluders, generate and every other streaming reader of this project then refused as not JSON."""
    src = make(tmp_path)
    data = json.loads(src.read_text())
    if convert == "convert-cocoa":
        data["annotations"][0]["regions"][0]["occlude_rate"] = float(constant.lower())
    else:
        data["annotations"][0]["oco_id"] = float(constant.lower())
    src.write_text(json.dumps(data))  # Python writes NaN / Infinity
    res = CliRunner().invoke(main, [convert, "--ann", str(src), "--out", str(tmp_path / "o.json"), "--quiet"])
    assert res.exit_code == 2 and res.output == (
        f"Error: {src}: malformed JSON ({constant}: NaN and Infinity are not JSON (Python's json.dump writes them "
        "unless allow_nan=False))\n"), res.output
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("command, make", [("convert-kins", kins_file), ("convert-cocoa", cocoa_file),
                                           ("annotate-occluders", kins_file)])
@pytest.mark.parametrize("special", ["pipe", "link"])
def test_an_out_that_is_a_pipe_or_a_link_is_refused_not_replaced(tmp_path, command, make, special):
    """The output is renamed into place: a named pipe at --out was replaced by a regular file (and /dev/null,
    as root, by the output), and a link to a file by the output instead of that file."""
    import os
    import stat

    out, kept = tmp_path / "out.json", tmp_path / "kept.json"
    if special == "pipe":
        os.mkfifo(out)
        why = "not a regular file (a device, pipe or socket), which the output, renamed into place, would replace"
    else:
        kept.write_text("the user's file")
        out.symlink_to(kept)
        why = (f"it is a link to {kept}; the output, renamed into place, would replace the link, not that file - "
               "give the file's own path")
    res = CliRunner().invoke(main, [command, "--ann", str(make(tmp_path)), "--out", str(out), "--quiet"])
    assert res.exit_code == 2 and res.output == f"Error: cannot write {out}: {why}\n", res.output
    if special == "pipe":
        assert stat.S_ISFIFO(os.lstat(out).st_mode)
    else:
        assert out.is_symlink() and kept.read_text() == "the user's file"


@pytest.mark.parametrize("make, convert", [(cocoa_file, "convert-cocoa"), (kins_file, "convert-kins")])
def test_a_number_too_large_for_a_float_is_refused_not_written_as_infinity(tmp_path, make, convert):
    """json.load reads 1e999 as inf (no NaN/Infinity constant in the file): the converters wrote Infinity into
    their output, which every streaming reader of this project then refused as not JSON."""
    src = make(tmp_path)
    data = json.loads(src.read_text())
    if convert == "convert-cocoa":
        data["annotations"][0]["regions"][0]["occlude_rate"] = 12345
    else:
        data["annotations"][0]["oco_id"] = 12345
    src.write_text(json.dumps(data).replace("12345", "-1e999", 1))
    res = CliRunner().invoke(main, [convert, "--ann", str(src), "--out", str(tmp_path / "o.json"), "--quiet"])
    assert res.exit_code == 2 and res.output.startswith(f"Error: {src}: malformed JSON (-1e999: "), res.output
    assert not (tmp_path / "o.json").exists()


def test_strict_stops_at_the_first_bad_record_naming_it_and_the_file_and_writes_nothing(tmp_path):
    """As generate, build-cocoocc and annotate-occluders do: without --strict the record is skipped and the rest
    converted; with it, the run stops at that record."""
    kins = kins_file(tmp_path)  # annotation 14 names image 77, which the file does not have
    cocoa = json.loads(cocoa_file(tmp_path).read_text())
    cocoa["annotations"][0]["regions"][2]["segmentation"] = [25, 15]  # a polygon of one point
    (tmp_path / "cocoa.json").write_text(json.dumps(cocoa))
    for command, src, record, why in (
            ("convert-kins", kins, "annotation 14", f"{errors.UNKNOWN_IMAGE} (image_id 77)"),
            ("convert-cocoa", tmp_path / "cocoa.json", "COCOA annotation 900 region 2 segmentation",
             f"{errors.DEGENERATE_MASK} (polygon has no usable part: its one part has 2 coordinates")):
        out = tmp_path / f"{command}.json"
        lenient = CliRunner().invoke(main, [command, "--ann", str(src), "--out", str(out), "--quiet"])
        assert lenient.exit_code == 0 and "bad records skipped: 1" in lenient.output, lenient.output
        out.unlink()
        strict = CliRunner().invoke(main, [command, "--ann", str(src), "--out", str(out), "--quiet", "--strict"])
        assert strict.exit_code == 2 and strict.output.startswith(f"Error: {src}: {record}: {why}"), strict.output
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cocoa.json", "kins.json"]


def test_kins_categories_that_no_coco_reader_can_use_are_skipped_not_copied(tmp_path):
    """The output's images are the usable records; so must its categories be: pycocotools' COCO() fails on a
    category that is no object, and keeps the last record of a repeated id where every reader here keeps the
    first (the converter's)."""
    from pycocotools.coco import COCO

    kins = json.loads(kins_file(tmp_path).read_text())
    kins["categories"] += ["car", {"id": 4, "name": "truck"}, {"name": "no id"}]
    (tmp_path / "k.json").write_text(json.dumps(kins))
    report = convert_kins(tmp_path / "k.json", tmp_path / "k-out.json", progress=False)
    assert json.loads((tmp_path / "k-out.json").read_text())["categories"] == [
        {"id": 4, "name": "car", "supercategory": "vehicle"}]
    assert COCO(str(tmp_path / "k-out.json")).loadCats(4)[0]["name"] == "car"
    assert report["skipped"]["counts"][errors.MALFORMED_RECORD] == 2
    assert report["skipped"]["counts"][errors.DUPLICATE_ID] == 1
    assert "category record 4" in report["skipped"]["examples"][errors.DUPLICATE_ID]


def test_cocoa_categories_from_a_file_that_repeats_an_id_name_it_once(tmp_path):
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"categories": [{"id": 1, "name": "person"}, {"id": 1, "name": "grass"}]}))
    convert_cocoa(cocoa_file(tmp_path), tmp_path / "o.json", categories_from=coco, progress=False)
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["categories"] == [{"id": 1, "name": "person"}, {"id": 2, "name": "thing", "supercategory": "thing"},
                                 {"id": 3, "name": "stuff", "supercategory": "stuff"}]
    assert [a["category_id"] for a in out["annotations"]] == [1, 3, 2]  # person, stuff (grass: not id 1), thing


@pytest.mark.parametrize("make, convert", [(kins_file, convert_kins), (cocoa_file, convert_cocoa)])
@pytest.mark.parametrize("break_it, why", [
    (lambda data: data["images"][0].pop("height"), "image record"),          # every image record is bad
    (lambda data: data.update(images=[]), "unknown image id"),               # no image record at all
    (lambda data: [a.update(regions=[]) for a in data["annotations"]], "'regions' list is empty"),  # COCOA only
])
def test_a_file_of_which_nothing_can_be_converted_is_refused_and_an_earlier_output_kept(tmp_path, make, convert,
                                                                                       break_it, why):
    """As build-cocoocc refuses a file without usable image records: an empty output would read as a converted
    set, and replaced the output of an earlier run."""
    if "regions" in why and make is kins_file:
        pytest.skip("COCOA's regions: KINS has none")
    out = tmp_path / "out.json"
    convert(make(tmp_path), out, progress=False)
    before = out.read_bytes()
    data = json.loads(make(tmp_path).read_text())
    break_it(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(errors.OccsynthError, match=f"bad.json: no annotation could be converted.*{why}"):
        convert(tmp_path / "bad.json", out, progress=False)
    assert out.read_bytes() == before
    res = CliRunner().invoke(main, ["convert-kins" if convert is convert_kins else "convert-cocoa", "--ann",
                                    str(tmp_path / "bad.json"), "--out", str(tmp_path / "new.json"), "--quiet"])
    assert res.exit_code == 2 and res.output.startswith("Error: ") and "Traceback" not in res.output, res.output
    assert not (tmp_path / "new.json").exists()
