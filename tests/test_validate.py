"""occsynth validate: passes the hand-made set, and each deliberately broken copy fails exactly its check."""
from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils

from cli import inspect_commands
from cli.common import Group
from occsynth.demo import uncompressed_rle
from occsynth.errors import OccsynthError
from occsynth.validate import CHECKS, class_balance, format_report, validate
from datasets import annotation_ids, build, load_annotations, save_annotations, write_dataset

IDS = annotation_ids()


def failing(report: dict) -> set[str]:
    return {name for name, check in report["checks"].items() if check["failures"]}


def by_name(data: dict, name: str) -> dict:
    return next(a for a in data["annotations"] if a["name"] == name)


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def encode(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


@pytest.fixture()
def dataset(tmp_path):
    return write_dataset(tmp_path / "set")


def broken(out, edit, refresh_manifest=True):
    data = load_annotations(out)
    edit(data)
    save_annotations(out, data, refresh_manifest=refresh_manifest)
    return validate(out, progress=False)


def test_ground_truth_of_the_hand_made_set():
    data, pixels = build()
    occluders = {a["name"]: sorted(a["occluder_ids"]) for a in data["annotations"]}
    assert occluders["K"] == sorted([IDS["L"], IDS["M"]])       # L meets K at a single pixel
    assert occluders["H"] == [IDS["I"]]                         # I touches H on one row
    assert occluders["F"] == [IDS["J"]] and occluders["G"] == []  # same layer is no occluder
    assert "Z" not in IDS                                       # hidden background instance not written
    assert len(data["annotations"]) == 13 and len(pixels) == 3


def test_valid_set_passes(dataset):
    report = validate(dataset, progress=False)
    assert report["ok"], report
    assert failing(report) == set()
    assert set(report["checks"]) == set(CHECKS)
    anns = load_annotations(dataset)["annotations"]
    assert report["counts"] == {"images": 3, "annotations": 13, "pasted": 9,
                                "occluded": sum(bool(a["occluder_ids"]) for a in anns),
                                "pasted_occluded": sum(bool(a["occluder_ids"]) for a in anns if a["layer"] > 0),
                                "pasted_per_category": {"3": 3, "5": 3, "7": 3}}
    assert 0 < report["counts"]["pasted_occluded"] < report["counts"]["occluded"]


def test_valid_jpeg_set_passes(tmp_path):
    assert validate(write_dataset(tmp_path / "jpg", image_format="jpg"), progress=False)["ok"]


def test_parallel_workers_give_the_same_report(dataset):
    data = load_annotations(dataset)
    by_name(data, "C")["area"] += 1
    save_annotations(dataset, data)
    serial, parallel = validate(dataset, progress=False), validate(dataset, workers=2, progress=False)
    assert serial == parallel
    assert failing(parallel) == {"area"}


def test_examples_stay_capped_when_several_batches_fail(dataset, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules[validate.__module__], "BATCH_IMAGES", 1)  # one image a batch: three batches

    def edit(data):
        for name in ("C", "F", "K"):  # one of each image
            by_name(data, name)["area"] += 1
    report = broken(dataset, edit)
    assert report["checks"]["area"]["failures"] == 3
    assert [e["annotation_id"] for e in report["checks"]["area"]["examples"]] == [IDS["C"], IDS["F"], IDS["K"]]
    report = validate(dataset, progress=False, max_examples=2)
    assert report["checks"]["area"]["failures"] == 3
    assert [e["annotation_id"] for e in report["checks"]["area"]["examples"]] == [IDS["C"], IDS["F"]]


def test_wrong_visible_mask(dataset):
    def edit(data):
        # Swap one visible pixel of A for one of its hidden pixels: same area and box, wrong mask.
        a = by_name(data, "A")
        visible, amodal = decode(a["segmentation"]), decode(a["amodal_segmentation"])
        hidden = np.argwhere(amodal & ~visible)[0]
        visible[tuple(hidden)] = True
        visible[15, 10] = False
        a["segmentation"] = encode(visible)
    report = broken(dataset, edit)
    assert failing(report) == {"visible_mask"}
    assert report["checks"]["visible_mask"]["examples"][0]["annotation_id"] == IDS["A"]
    assert "2 pixels differ" in report["checks"]["visible_mask"]["examples"][0]["reason"]


def test_wrong_area(dataset):
    report = broken(dataset, lambda d: by_name(d, "C").update(area=by_name(d, "C")["area"] + 1))
    assert failing(report) == {"area"}
    assert report["checks"]["area"]["failures"] == 1
    assert report["checks"]["area"]["examples"][0]["annotation_id"] == IDS["C"]


def test_wrong_bbox(dataset):
    def edit(data):
        by_name(data, "D")["bbox"][2] += 1
        by_name(data, "K")["amodal_bbox"][0] -= 1
    report = broken(dataset, edit)
    assert failing(report) == {"bbox", "amodal_bbox"}
    assert report["checks"]["bbox"]["examples"][0]["annotation_id"] == IDS["D"]
    assert report["checks"]["amodal_bbox"]["examples"][0]["annotation_id"] == IDS["K"]


def test_wrong_occlusion_ratio(dataset):
    report = broken(dataset, lambda d: by_name(d, "K").update(occlusion_ratio=0.5))
    assert failing(report) == {"occlusion_ratio"}
    assert report["checks"]["occlusion_ratio"]["examples"][0]["annotation_id"] == IDS["K"]


@pytest.mark.parametrize("change, layer_of", [({"iscrowd": 1}, "pasted"), ({"amodal_complete": False}, "pasted"),
                                               ({"amodal_complete": True}, "background")])
def test_a_paste_or_background_instance_whose_kind_fields_disagree_with_its_layer_fails(dataset, change, layer_of):
    """FORMAT.md: a paste (layer > 0) has iscrowd 0 and amodal_complete true, a background instance false."""
    data = load_annotations(dataset)
    target = next(a for a in data["annotations"] if (a["layer"] > 0) == (layer_of == "pasted"))
    report = broken(dataset, lambda d: next(a for a in d["annotations"] if a["id"] == target["id"]).update(change))
    assert failing(report) == {"fields"}
    example = report["checks"]["fields"]["examples"][0]
    assert example["annotation_id"] == target["id"] and "(a paste, layer > 0, has true and 0" in example["reason"]


def test_wrong_occluder_ids(dataset):
    def edit(data):
        by_name(data, "K")["occluder_ids"] = [IDS["M"]]            # misses L (one shared pixel)
        by_name(data, "H")["occluder_ids"] = []                    # misses I
        by_name(data, "G")["occluder_ids"] = [IDS["J"]]            # J does not meet G
        by_name(data, "C")["occluder_ids"] = [IDS["D"], IDS["D"]]  # duplicated
    report = broken(dataset, edit)
    assert failing(report) == {"occluder_ids"}
    assert report["checks"]["occluder_ids"]["failures"] == 4


def test_missing_image_file(dataset):
    (dataset / "images" / "000000000002.png").unlink()
    report = validate(dataset, progress=False)
    assert failing(report) == {"image_file"}
    assert report["checks"]["image_file"]["examples"][0]["image_id"] == 2
    assert report["checks"]["image_size"].get("checked", True)  # the other files were read and measured
    shutil.rmtree(dataset / "images")  # annotations only: no size is checked, and the report says so
    report = validate(dataset, progress=False)
    assert report["checks"]["image_size"]["checked"] is False
    assert re.search(r"image_size\s+not checked", format_report(report))


def test_mask_checks_that_checked_no_mask_say_so(dataset):
    def polygons(data):  # every visible mask as a polygon: a field of the wrong type, so no mask is compared
        for a in data["annotations"]:
            a["segmentation"] = [[0, 0, 4, 0, 4, 4]]
            a["area"] = 1
    report = broken(dataset, polygons)
    assert failing(report) == {"fields"} and report["checks"]["fields"]["failures"] == 13
    for check in ("visible_mask", "area", "bbox", "amodal_area", "amodal_bbox", "occlusion_ratio", "occluder_ids",
                  "empty_background"):
        assert report["checks"][check]["checked"] is False, check
        assert re.search(rf"{check}\s+not checked", format_report(report)), check
    data = load_annotations(dataset)  # one annotation whose masks can be compared: they are checked again
    data["annotations"][0]["segmentation"] = load_annotations(dataset)["annotations"][0]["amodal_segmentation"]
    save_annotations(dataset, data)
    report = validate(dataset, progress=False)
    assert report["checks"]["area"].get("checked", True) and report["checks"]["fields"]["failures"] == 12


def test_an_image_id_given_twice_fails(dataset):
    # the second record of id 1 is not counted: the manifest's 3 images still hold
    report = broken(dataset, lambda d: d["images"].append(dict(d["images"][0], file_name="extra.png")),
                    refresh_manifest=False)
    assert failing(report) == {"duplicate_id"}
    assert report["checks"]["duplicate_id"]["examples"] == [{"reason": "image id 1 appears more than once",
                                                             "image_id": 1}]


def test_an_annotation_of_no_image_record_fails(dataset):
    report = broken(dataset, lambda d: by_name(d, "B").update(image_id=99))
    assert failing(report) == {"unknown_image"}
    assert report["checks"]["unknown_image"]["examples"] == [{"reason": "image_id 99 has no image record",
                                                              "annotation_id": IDS["B"]}]


@pytest.mark.parametrize("name, image_id, change", [
    ("B", 1, {"layer": -1}),                                    # under every layer: its masks would still agree
    ("K", 3, {"occluder_ids": [float(IDS["L"]), IDS["M"]]}),   # the right ids, as floats: no integer ids
])
def test_a_negative_layer_or_an_occluder_id_that_is_no_integer_fails_fields(dataset, name, image_id, change):
    report = broken(dataset, lambda d: by_name(d, name).update(change))
    assert failing(report) == {"fields"}
    assert report["checks"]["fields"]["examples"] == [{
        "reason": "negative layer, non-integer occluder id, or a box without 4 numbers", "annotation_id": IDS[name],
        "image_id": image_id}]


def test_corrupt_image_file(dataset):
    (dataset / "images" / "000000000001.png").write_bytes(b"not an image")
    assert failing(validate(dataset, progress=False)) == {"image_file"}


def test_wrong_image_size(dataset):
    path = dataset / "images" / "000000000003.png"
    cv2.imwrite(str(path), np.zeros((40, 64, 3), np.uint8))  # record says 48 x 64
    report = validate(dataset, progress=False)
    assert failing(report) == {"image_size"}
    assert report["checks"]["image_size"]["examples"][0]["image_id"] == 3


def test_duplicate_id(dataset):
    report = broken(dataset, lambda d: by_name(d, "G").update(id=IDS["F"]))
    assert failing(report) == {"duplicate_id"}
    assert report["checks"]["duplicate_id"]["examples"][0]["annotation_id"] == IDS["F"]


def test_uncompressed_rle_fails_fields_but_its_masks_are_still_checked(dataset):
    def edit(data):
        ann = by_name(data, "D")
        full = decode(ann["segmentation"])
        ann["segmentation"] = uncompressed_rle(full)  # the same mask, list counts
        runs = mask_utils.frPyObjects(ann["segmentation"], *full.shape)
        assert np.array_equal(mask_utils.decode(runs).astype(bool), full)
    report = broken(dataset, edit)
    assert failing(report) == {"fields"}  # the mask itself is right: nothing else fails
    example = report["checks"]["fields"]["examples"][0]
    assert example["annotation_id"] == IDS["D"] and "segmentation not compressed RLE" in example["reason"]


@pytest.mark.parametrize("change", ["no name", "repeated id"])
def test_category_records_need_an_integer_id_and_a_name_once(dataset, change):
    def edit(data):
        if change == "no name":
            del data["categories"][0]["name"]
        else:
            data["categories"].append(dict(data["categories"][0], name="again"))
    report = broken(dataset, edit)
    check = "fields" if change == "no name" else "duplicate_id"
    assert failing(report) == {check}  # the annotations of that category stay known
    reason = report["checks"][check]["examples"][0]["reason"]
    assert ("lacks an integer id or a name" in reason) if change == "no name" else "category id" in reason


def test_two_image_records_of_one_file_fail(dataset):
    def edit(data):
        data["images"][1]["file_name"] = data["images"][0]["file_name"]
        data["images"][1]["height"], data["images"][1]["width"] = data["images"][0]["height"], data["images"][0]["width"]
    report = broken(dataset, edit)
    assert "duplicate_id" in failing(report)
    example = report["checks"]["duplicate_id"]["examples"][0]
    assert example["image_id"] == 2 and "named by more than one image record" in example["reason"]


def test_unknown_category(dataset):
    report = broken(dataset, lambda d: by_name(d, "B").update(category_id=42))
    assert failing(report) == {"unknown_category"}
    assert report["checks"]["unknown_category"]["examples"][0]["annotation_id"] == IDS["B"]


def test_pastes_of_a_category_dropped_from_the_list_fail_that_check_alone_and_are_still_counted(dataset):
    """Category 7 ("box") removed from 'categories': its 3 pastes were left out of 'pasted' and 'pasted_per_category',
    so the report said the set had 6 pastes and failed 'manifest' twice, claiming annotations.json held 6 where the
    writer's manifest (every paste by its category id) said 9. Each record fails 'unknown_category', named; no more."""
    report = broken(dataset, lambda d: d.update(categories=[c for c in d["categories"] if c["id"] != 7]),
                    refresh_manifest=False)
    assert failing(report) == {"unknown_category"} and report["checks"]["unknown_category"]["failures"] == 3
    assert report["checks"]["unknown_category"]["examples"][0] == {
        "reason": "category_id 7 is not in 'categories'", "annotation_id": IDS["D"]}
    assert report["counts"]["pasted"] == 9 and report["counts"]["pasted_per_category"] == {"3": 3, "5": 3, "7": 3}
    assert ", 9 pasted\n" in format_report(report)


def test_a_paste_of_an_unknown_category_is_no_second_failure_of_the_class_balance(dataset):
    """The balance is over the set's categories: category 42's single paste, beside 2, 3 and 3, is outside the mean
    of all four +-50% (1.1..3.4), and it fails 'unknown_category' already."""
    paste = next(a for a in load_annotations(dataset)["annotations"] if a["layer"] > 0 and a["category_id"] == 3)
    broken(dataset, lambda d: by_name(d, paste["name"]).update(category_id=42))
    report = validate(dataset, progress=False, balance_tolerance=0.5, balance_slack=0)
    assert failing(report) == {"unknown_category"} and report["balance"]["outside"] == []
    assert report["counts"]["pasted_per_category"] == {"3": 2, "5": 3, "7": 3, "42": 1}


@pytest.mark.parametrize("key", ["image_id", "category_id"])
def test_an_annotation_whose_image_or_category_id_is_a_list_fails_its_check(dataset, key):
    """A list is no key: validate stopped with a TypeError traceback."""
    report = broken(dataset, lambda d: by_name(d, "C").update({key: [1]}), refresh_manifest=False)
    check = "unknown_image" if key == "image_id" else "unknown_category"
    assert check in failing(report) and report["checks"][check]["examples"][0]["annotation_id"] == IDS["C"]


def test_class_imbalance(dataset):
    def edit(data):
        for name in ("D", "H", "E", "J"):  # box and coin pastes relabelled as ball: 7 / 1 / 1
            by_name(data, name)["category_id"] = 3
    report = broken(dataset, edit)  # the manifest is refreshed, so only the balance is wrong
    assert failing(report) == {"class_balance"}
    assert report["balance"]["outside"] == [3]
    assert report["counts"]["pasted_per_category"] == {"3": 7, "5": 1, "7": 1}


def test_class_balance_rule():
    assert class_balance({1: 100, 2: 105, 3: 95})["outside"] == []       # +-5% of 100
    assert class_balance({1: 100, 2: 106, 3: 94})["outside"] == [2, 3]
    assert class_balance({1: 3, 2: 5, 3: 1})["outside"] == []             # +-2 on small runs
    assert class_balance({1: 3, 2: 6, 3: 0})["outside"] == []             # 0 = never pasted: ignored
    assert class_balance({1: 1, 2: 6})["outside"] == [1, 2]


def test_manifest_count_mismatch(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["counts"]["annotations"] = 12
    manifest["counts"]["pasted_per_category"]["5"] = 4
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    report = validate(dataset, progress=False)
    assert failing(report) == {"manifest"}
    assert report["checks"]["manifest"]["failures"] == 2


@pytest.mark.parametrize("key", ["images", "annotations", "pasted", "pasted_per_category", "occluded",
                                 "pasted_occluded"])
def test_each_manifest_count_is_compared(dataset, key):
    anns = load_annotations(dataset)["annotations"]
    manifest = json.loads((dataset / "manifest.json").read_text())
    counts = manifest["counts"]
    counts["occluded"] = sum(bool(a["occluder_ids"]) for a in anns)  # counted by newer runs only: checked if given
    counts["pasted_occluded"] = sum(bool(a["occluder_ids"]) for a in anns if a["layer"] > 0)
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    assert validate(dataset, progress=False)["ok"]
    right = counts[key]
    counts[key] = {"3": 3, "5": 3} if key == "pasted_per_category" else right + 1
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    report = validate(dataset, progress=False)
    assert failing(report) == {"manifest"}
    assert report["checks"]["manifest"]["examples"] == [
        {"reason": f"counts.{key} is {json.dumps(counts[key])}, annotations.json has {json.dumps(right)}"}]


def test_missing_manifest(dataset):
    (dataset / "manifest.json").unlink()
    assert failing(validate(dataset, progress=False)) == {"manifest"}


def test_dropped_annotation_is_noticed(dataset):
    # Removing M (which occludes K) leaves K's stored visible mask and ids wrong and the manifest stale.
    data = load_annotations(dataset)
    data["annotations"] = [a for a in data["annotations"] if a["name"] != "M"]
    save_annotations(dataset, data, refresh_manifest=False)
    report = validate(dataset, progress=False)
    assert failing(report) == {"visible_mask", "occluder_ids", "manifest"}


def test_empty_background_instance(dataset):
    def edit(data):
        a = by_name(data, "B")
        empty = np.zeros((48, 64), bool)
        a.update(segmentation=encode(empty), amodal_segmentation=encode(empty), area=0, bbox=[0.0, 0.0, 0.0, 0.0],
                 amodal_area=0, amodal_bbox=[0.0, 0.0, 0.0, 0.0], occlusion_ratio=0.0, occluder_ids=[])
    assert failing(broken(dataset, edit)) == {"empty_background"}


def test_annotations_out_of_image_order(dataset):
    data = load_annotations(dataset)
    data["annotations"].append(data["annotations"].pop(0))
    save_annotations(dataset, data)
    assert "grouping" in failing(validate(dataset, progress=False))


def test_missing_field_and_bad_rle(dataset):
    def edit(data):
        del by_name(data, "D")["occluder_ids"]
        by_name(data, "L")["amodal_segmentation"] = {"size": [10, 10], "counts": "00"}
        by_name(data, "A")["bbox"] = ["x", 1, 2, 3]
    report = broken(dataset, edit)
    assert {"fields", "mask_decode", "bbox"} <= failing(report)
    assert report["checks"]["fields"]["examples"][0]["annotation_id"] == IDS["D"]


@pytest.mark.parametrize("key, value", [
    ("iscrowd", "yes"), ("iscrowd", 2), ("iscrowd", None), ("area", "big"), ("bbox", [None, None, None, None]),
    ("bbox", [1, 2, 3]),
])
def test_wrong_typed_standard_field(dataset, key, value):
    def edit(data):
        by_name(data, "D")[key] = value
    report = broken(dataset, edit)
    assert not report["ok"] and failing(report) & {"fields", key}
    assert report["checks"]["fields" if "fields" in failing(report) else key]["examples"][0]["annotation_id"] == IDS["D"]


@pytest.mark.parametrize("key", ["bbox", "amodal_bbox"])
@pytest.mark.parametrize("cast", [str, bool])
def test_a_box_of_strings_or_bools_fails_even_when_their_values_are_right(dataset, key, cast):
    # detectron2 and mmdetection do arithmetic on the box's entries: "12.0" or true are no coordinates
    def edit(data):
        box = by_name(data, "D")[key]
        box[:] = [cast(v) for v in box] if cast is str else [True, True, *box[2:]]
    report = broken(dataset, edit)
    assert failing(report) == {key}
    example = report["checks"][key]["examples"][0]
    assert example["annotation_id"] == IDS["D"] and "not numeric" in example["reason"]


def test_cli_says_invalid_for_a_string_iscrowd(dataset):
    data = load_annotations(dataset)
    by_name(data, "D")["iscrowd"] = "yes"
    save_annotations(dataset, data)
    res = CliRunner().invoke(cli(), ["validate", str(dataset), "--quiet"])
    assert res.exit_code == 1 and "valid: every check passed" not in res.output
    assert f"annotation_id {IDS['D']}" in res.output and "iscrowd" in res.output


def cli():
    return Group(commands={c.name: c for c in inspect_commands.COMMANDS})


def test_cli_exit_codes(dataset, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli(), ["validate", str(dataset), "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert "valid: every check passed" in ok.output

    data = load_annotations(dataset)
    by_name(data, "C")["area"] += 1
    save_annotations(dataset, data)
    bad = runner.invoke(cli(), ["validate", str(dataset), "--quiet"])
    assert bad.exit_code == 1
    assert "FAILED (1)" in bad.output and f"annotation_id {IDS['C']}" in bad.output

    as_json = runner.invoke(cli(), ["validate", str(dataset), "--quiet", "--json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.output)["checks"]["area"]["failures"] == 1

    (tmp_path / "empty").mkdir()
    missing = runner.invoke(cli(), ["validate", str(tmp_path / "empty")])
    assert missing.exit_code == 2 and "annotations.json" in missing.output and "Traceback" not in missing.output


def test_cli_balance_tolerance(dataset):
    data = load_annotations(dataset)
    for name in ("D", "H", "E", "J"):
        by_name(data, name)["category_id"] = 3
    save_annotations(dataset, data)
    runner = CliRunner()
    assert runner.invoke(cli(), ["validate", str(dataset), "--quiet"]).exit_code == 1
    # 7 / 1 / 1 is within +-200% of the mean 3
    assert runner.invoke(cli(), ["validate", str(dataset), "--quiet", "--balance-tolerance", "2"]).exit_code == 0


def test_a_generated_set_passes_and_a_broken_one_fails(tmp_path):
    generate_module = pytest.importorskip("occsynth.generate")
    out = tmp_path / "gen"
    generate_module.generate(out, generate_module.RunSettings(num_images=6, seed=5, image_format="png"),
                             cache_dir=tmp_path / "cache", progress=False)
    report = validate(out, progress=False)
    assert report["ok"], failing(report)
    data = load_annotations(out)
    occluded = next(a for a in data["annotations"] if a["occluder_ids"])
    occluded["occluder_ids"] = []
    (out / "annotations.json").write_text(json.dumps(data))
    assert failing(validate(out, progress=False)) == {"occluder_ids", "manifest"}  # its occluded count too


@pytest.mark.parametrize("content, message", [
    (b"[]", "the top level is an array"),
    (b'{"images": {}, "annotations": [], "categories": []}', "'images' is an object, expected a list"),
    (b'{"images": [], "annotations": [], "categories": []', "malformed JSON"),
    (b'\xc1\xc6{\xe19\xa3\xcc\xfb\xf0&\xd1\x7f', "malformed JSON"),
    (None, "top-level key 'info' given 2 times"),    # a key no check reads: bcnet train (json.load) refuses it
    (None, "top-level key 'images' given 2 times"),  # a key validate streams
])
def test_non_coco_or_malformed_annotations_are_one_error(dataset, content, message):
    if content is None:  # the set's file with a key repeated at the end
        key = message.split("'")[1]
        text = (dataset / "annotations.json").read_text()
        content = (text.rstrip()[:-1] + f', "{key}": {json.dumps(load_annotations(dataset)[key])}}}').encode()
    (dataset / "annotations.json").write_bytes(content)
    result = CliRunner().invoke(cli(), ["validate", str(dataset), "--quiet"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].isprintable() and "\\x" not in lines[0]


def test_only_the_annotations_are_streamed_through_the_whole_file(dataset, monkeypatch):
    """iter_array parses the whole file, whatever its key; the categories and the images are read with read_array,
    which parses up to their array's end (before the annotations, in a generated set) and only searches the bytes
    after it (for a second key): the annotation stream is the one whole parse besides the check for repeated keys."""
    import sys

    module, streamed = sys.modules[validate.__module__], []
    real = module.iter_array
    monkeypatch.setattr(module, "iter_array", lambda path, key: streamed.append(key) or real(path, key))
    assert validate(dataset, progress=False)["ok"] and streamed == ["annotations"]


def plain_coco(data: dict) -> dict:
    """The set's annotations as plain COCO: occsynth's fields dropped."""
    keep = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
    return dict(data, annotations=[dict({k: a[k] for k in keep if k in a}, iscrowd=0) for a in data["annotations"]])


def test_cli_takes_the_annotations_file_of_a_set(dataset):
    by_file = CliRunner().invoke(cli(), ["validate", str(dataset / "annotations.json"), "--quiet", "--json"])
    by_dir = CliRunner().invoke(cli(), ["validate", str(dataset), "--quiet", "--json"])
    assert by_file.exit_code == by_dir.exit_code == 0, by_file.output
    assert json.loads(by_file.output) == json.loads(by_dir.output)
    (dataset / "manifest.json").unlink()  # a set that lost its manifest is still a set (its fields say so)
    lost = CliRunner().invoke(cli(), ["validate", str(dataset), "--quiet"])
    assert lost.exit_code == 1 and "manifest.json not found" in lost.output


def test_plain_coco_and_coco_occ_are_refused_in_one_line(dataset, tmp_path):
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    (coco / "annotations.json").write_text(json.dumps(plain_coco(load_annotations(dataset))))
    from occsynth.cocoocc import build_cocoocc
    build_cocoocc(coco / "annotations.json", tmp_path / "occ", image_root=dataset / "images", image_mode="link",
                  threshold=0.01)
    for arg, kind in ((coco / "annotations.json", ""), (coco, ""), (tmp_path / "occ", "coco-occ")):
        r = CliRunner().invoke(cli(), ["validate", str(arg), "--quiet"])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
        assert lines[0] == (f"Error: {arg} is not an occsynth generated set (no amodal/layer fields"
                            + (f"; its manifest.json is of kind '{kind}'" if kind else "")
                            + "); validate checks the invariants of docs/FORMAT.md")
    (coco / "annotations.json").write_text("[]")  # not COCO at all: that is the message
    r = CliRunner().invoke(cli(), ["validate", str(coco), "--quiet"])
    assert r.exit_code == 2 and "the top level is an array" in r.output


def test_annotations_json_that_is_a_directory(tmp_path):
    (tmp_path / "s" / "annotations.json").mkdir(parents=True)
    r = CliRunner().invoke(cli(), ["validate", str(tmp_path / "s"), "--quiet"])
    assert r.exit_code == 2 and "annotations.json: is a directory" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("option", [{"balance_tolerance": -1}, {"balance_slack": -5}, {"balance_tolerance": float("nan")}])
def test_balance_options_that_allow_nothing_are_refused(dataset, option):
    with pytest.raises(OccsynthError, match=f"{next(iter(option))} must be a number >= 0"):
        validate(dataset, progress=False, **option)


@pytest.mark.parametrize("option, words", [
    ({"workers": 0}, "workers must be a whole number >= 1, got 0"),   # ran serially, unsaid (generate refuses it)
    ({"workers": "2"}, "workers must be a whole number >= 1, got '2'"),
    ({"max_examples": "3"}, "max_examples must be a whole number >= 0, got '3'"),  # a TypeError at the first failure
    ({"max_examples": -1}, "max_examples must be a whole number >= 0, got -1"),
])
def test_workers_and_max_examples_that_mean_nothing_are_refused_naming_them(dataset, option, words):
    with pytest.raises(OccsynthError, match=re.escape(words)):
        validate(dataset, progress=False, **option)


@pytest.mark.parametrize("value", ["inf", "1e400", "nan"])
def test_cli_names_the_option_of_a_balance_tolerance_that_is_no_finite_number(dataset, value):
    # the library refused inf naming its parameter ('balance_tolerance must be ...'), not the option typed
    r = CliRunner().invoke(cli(), ["validate", str(dataset), "--quiet", "--balance-tolerance", value])
    assert r.exit_code == 2 and "Invalid value for '--balance-tolerance'" in r.output, r.output
