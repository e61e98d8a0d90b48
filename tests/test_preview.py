"""occsynth preview: sheet geometry and pixel checks of tints, contours (solid / dashed) and pair boxes."""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli import inspect_commands
from cli.common import Group
from occsynth.errors import OccsynthError, SkipLog
from occsynth.preview import (BACKGROUND, DASH, NEUTRAL, OCCLUDEE, OCCLUDER, PAIR, TINT_ALPHA, missing_image, preview,
                              preview_report, sheet_shape, tile_geometry)
from datasets import SCENES, build, scene_instances, write_dataset

TILE = 64


def border4(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the image edge does not count), in plain numpy."""
    p = np.pad(mask, 1, mode="edge")
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def has_colour(image: np.ndarray, colour) -> np.ndarray:
    return np.all(image == np.array(colour, np.uint8), axis=-1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("preview") / "set")


@pytest.fixture(scope="module")
def sheet(dataset):
    # Images 1, 2, 3 in file order, one row; images 1 and 3 are 48 x 64, so a 64 px tile shows them at scale 1.
    return preview(dataset, n=3, columns=3, seed=None, tile=TILE, labels=False)


def tile_of_image3(sheet):
    _, y0, x0, nh, nw = tile_geometry(48, 64, TILE)
    assert (y0, x0, nh, nw) == (8, 0, 48, 64)
    tile = sheet[:, 2 * TILE:3 * TILE]
    return tile, tile[y0:y0 + nh, x0:x0 + nw]


def instances(index):
    return {inst["name"]: inst for inst in scene_instances(SCENES[index])}


def test_sheet_size(dataset):
    assert preview(dataset, n=3, columns=2, tile=TILE).shape == (2 * TILE, 2 * TILE, 3)
    assert preview(dataset, n=16, columns=4, tile=32).shape == (32, 3 * 32, 3)   # only 3 images exist
    assert preview(dataset, n=2, columns=1, tile=40).shape == (80, 40, 3)
    assert sheet_shape(16, 4, 256) == (1024, 1024) and sheet_shape(5, 4, 100) == (200, 400)


def test_only_the_annotations_are_streamed_the_image_records_are_read_up_to_their_array_end(dataset, monkeypatch):
    """The parser that streams an array's items reads on to the end of the file: choosing the images of a sheet from a
    COCO-train-size file cost a whole parse (7 s) before the annotations' own."""
    from occsynth import preview as preview_module
    streamed = []
    real = preview_module.iter_array
    monkeypatch.setattr(preview_module, "iter_array", lambda path, key: streamed.append(key) or real(path, key))
    assert preview(dataset, n=2, columns=2, tile=TILE).shape == (TILE, 2 * TILE, 3)
    assert streamed == ["annotations"]


def test_seeded_selection_is_reproducible(dataset):
    a = preview(dataset, n=2, columns=2, seed=7, tile=TILE, labels=False)
    b = preview(dataset, n=2, columns=2, seed=7, tile=TILE, labels=False)
    assert np.array_equal(a, b)


def test_letterbox_and_untouched_pixels(dataset, sheet):
    tile, image = tile_of_image3(sheet)
    assert has_colour(tile[:8], BACKGROUND).all() and has_colour(tile[56:], BACKGROUND).all()
    _, pixels = build()
    original = pixels["000000000003.png"]
    insts = instances(2)
    touched = np.zeros((48, 64), bool)
    for inst in insts.values():
        touched |= inst["amodal"]
    assert np.array_equal(image[~touched], original[~touched])


def test_visible_mask_is_tinted(sheet):
    _, image = tile_of_image3(sheet)
    _, pixels = build()
    original = pixels["000000000003.png"].astype(np.float64)
    k = instances(2)["K"]
    interior = k["visible"] & ~border4(k["amodal"])
    expected = (original[interior] * (1 - TINT_ALPHA) + np.array(OCCLUDEE) * TINT_ALPHA).astype(np.uint8)
    assert interior.sum() > 50
    assert np.array_equal(image[interior], expected)


def test_occluder_contours_exactly_along_the_borders(sheet):
    # L and M occlude K and have no occluders: their (fully visible) contours are solid in the occluder colour.
    _, image = tile_of_image3(sheet)
    insts = instances(2)
    expected = border4(insts["L"]["amodal"]) | border4(insts["M"]["amodal"])
    assert np.array_equal(has_colour(image, OCCLUDER), expected)


def test_occludee_contour_solid_where_visible_dashed_where_hidden(sheet):
    _, image = tile_of_image3(sheet)
    insts = instances(2)
    k = insts["K"]
    border = border4(k["amodal"])
    drawn = has_colour(image, OCCLUDEE)
    assert not (drawn & ~border).any()                      # nothing off K's border has its colour
    visible_border = border & k["visible"]
    assert drawn[visible_border].all()                      # solid where visible
    on_top = border4(insts["L"]["amodal"]) | border4(insts["M"]["amodal"])  # drawn later, over K's
    hidden_border = border & ~k["visible"] & ~on_top
    assert hidden_border.sum() >= 10
    share = drawn[hidden_border].mean()
    assert 0.3 <= share <= 0.7                              # dashed: about half drawn
    # dashes: several short drawn runs along the hidden stretch, none longer than two dash lengths
    n, labels = cv2.connectedComponents((hidden_border & drawn).astype(np.uint8), connectivity=8)
    sizes = np.bincount(labels.ravel())[1:]
    assert n - 1 >= 3 and sizes.max() <= 2 * DASH


def test_role_colours_of_the_first_image(sheet):
    tile = sheet[:, :TILE]
    _, y0, x0, _, _ = tile_geometry(48, 64, TILE)
    image = tile[y0:y0 + 48, x0:x0 + 64]
    insts = instances(0)
    # D occludes C and has no occluder: occluder colour along its whole border (it is fully visible).
    assert has_colour(image, OCCLUDER)[border4(insts["D"]["amodal"])].all()
    # A has an occluder (C): occludee colour on its visible border.
    a = insts["A"]
    assert has_colour(image, OCCLUDEE)[border4(a["amodal"]) & a["visible"]].all()


def test_plain_coco_file_highlights_overlapping_box_pairs(dataset, tmp_path):
    data, _ = build()
    for ann in data["annotations"]:
        for key in ("amodal_segmentation", "amodal_bbox", "amodal_area", "layer", "occluder_ids", "occlusion_ratio"):
            ann.pop(key)
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(data))
    sheet = preview(path, images=dataset / "images", n=1, seed=None, tile=TILE, labels=False)
    image = sheet[8:56, :64]
    # A (box 4,6,24,24) and C (box 17,11,19,19) have IoU 0.29: thick pair boxes. D pairs with nobody.
    assert has_colour(image[5:8, 3:6], PAIR).all()          # 3 px thick around A's top-left corner
    assert has_colour(image[10:13, 16:19], PAIR).all()      # and C's
    assert has_colour(image, NEUTRAL)[10, 30]               # D: 1 px box in the neutral colour ...
    assert has_colour(image, NEUTRAL)[9:27, 45].sum() == 16  # ... its right edge (x 45, rows 10-25)
    assert not has_colour(image, PAIR)[9:27, 38:47].any()   # C's thick box ends at x 36
    assert not has_colour(image, OCCLUDEE).any() and not has_colour(image, OCCLUDER).any()
    # a crowd region pairs with nobody
    next(a for a in data["annotations"] if a["name"] == "C")["iscrowd"] = 1
    path.write_text(json.dumps(data))
    sheet = preview(path, images=dataset / "images", n=1, seed=None, tile=TILE, labels=False)
    assert not has_colour(sheet, PAIR).any()


def test_missing_image_gives_a_placeholder_tile(dataset, tmp_path):
    data, _ = build()
    path = tmp_path / "missing.json"
    data["images"][0]["file_name"] = "nowhere.png"
    path.write_text(json.dumps(data))
    sheet = preview(path, images=dataset / "images", n=3, columns=3, seed=None, tile=TILE, labels=False)
    assert sheet.shape == (TILE, 3 * TILE, 3)


def test_cli_writes_png_and_jpeg(dataset, tmp_path):
    runner = CliRunner()
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    for name in ("sheet.png", "sheet.jpg"):
        out = tmp_path / name
        result = runner.invoke(group, ["preview", str(dataset), "--out", str(out), "-n", "3", "--columns", "2",
                                       "--tile", "48"])
        assert result.exit_code == 0, result.output
        assert cv2.imread(str(out)).shape == (96, 96, 3)
    bad = runner.invoke(group, ["preview", str(dataset), "--out", str(tmp_path / "sheet.gif")])
    assert bad.exit_code == 2 and "the sheet is written as .png or .jpg" in bad.output


def test_unreadable_images_are_reported(dataset, tmp_path):
    data, _ = build()
    ids = [im["id"] for im in data["images"]]
    good = dict(data["images"][0], id=99, file_name="images/" + data["images"][0]["file_name"])  # one drawn
    data["images"].append(good)
    data["images"][0]["file_name"] = "nowhere.png"
    data["images"][1]["file_name"] = "../escape.png"
    (dataset / "broken.png").write_bytes(b"not an image")
    data["images"][2]["file_name"] = "broken.png"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    sheet, problems = preview_report(path, images=dataset, n=4, columns=4, seed=None, tile=TILE, labels=False)
    assert [(p["image_id"], p["file_name"], p["reason"]) for p in problems] == [
        (ids[0], "nowhere.png", "missing image file"),
        (ids[1], "../escape.png", "file_name points outside the image root"),
        (ids[2], "broken.png", "unreadable or corrupt image")]
    # The first tile is the red-cross stand-in (no annotations drawn on it at this size: it is the letterboxed cross).
    assert has_colour(sheet[:, :TILE], (200, 0, 0)).any()
    runner = CliRunner()
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    result = runner.invoke(group, ["preview", str(path), "--images", str(dataset), "--out", str(tmp_path / "s.png"),
                                   "-n", "4", "--first", "--tile", "32"])
    assert result.exit_code == 0, result.output
    assert "3 images drawn as a red-cross placeholder:" in result.output
    assert f"image {ids[1]} (../escape.png): file_name points outside the image root" in result.output
    assert f"image {ids[0]} (nowhere.png): missing image file (not under {dataset})" in result.output
    assert "1 image file not found\n" in result.output  # no hint to give --images: it was given
    assert cv2.imread(str(tmp_path / "s.png")).shape == (32, 4 * 32, 3)


def test_the_problem_list_shows_the_first_few_and_counts_the_rest():
    from occsynth.preview import format_problems

    problems = [{"image_id": i, "file_name": f"{i}.png", "reason": "unreadable or corrupt image", "detail": ""}
                for i in range(12)]
    assert format_problems(problems[:2], limit=2).splitlines() == [
        "2 images drawn as a red-cross placeholder:",
        "  image 0 (0.png): unreadable or corrupt image",
        "  image 1 (1.png): unreadable or corrupt image"]  # as many as the limit: no '... 0 more'
    assert format_problems(problems).splitlines()[-2:] == ["  image 9 (9.png): unreadable or corrupt image",
                                                           "  ... 2 more"]


def test_no_drawable_image_at_all_is_an_error_saying_why(dataset, tmp_path):
    data, _ = build()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    data["images"][0]["file_name"] = "nowhere.png"
    for image in data["images"][1:]:
        image["file_name"] = "broken.png"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    (tmp_path / "s.png").write_bytes(b"an earlier sheet")
    result = CliRunner().invoke(group, ["preview", str(path), "--images", str(tmp_path), "--out",
                                        str(tmp_path / "s.png"), "--tile", "32"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (f"Error: {path}: no picture could be drawn: none of the 3 images chosen could be read "
            f"(1 missing image file, e.g. image 1 (nowhere.png): not under {tmp_path}; "
            "2 unreadable or corrupt image, e.g. image 2 (broken.png)") in result.output, result.output
    assert (tmp_path / "s.png").read_bytes() == b"an earlier sheet"


def test_a_sheet_of_one_image_that_cannot_be_drawn_says_so_in_the_singular(dataset, tmp_path):
    """-n 1 said 'none of the 1 image file to preview is there' and 'none of the 1 image chosen could be read'."""
    data, _ = build()
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    args = ["preview", str(path), "--out", str(tmp_path / "s.png"), "--tile", "32", "-n", "1", "--first"]
    result = CliRunner().invoke(group, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    name = data["images"][0]["file_name"]
    assert result.output == (f"Error: image folder {tmp_path}: the image file to preview is not there ({name}); "
                             "give the right folder with --images\n"), result.output
    (tmp_path / name).write_bytes(b"not an image")
    result = CliRunner().invoke(group, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.startswith(f"Error: {path}: no picture could be drawn: the image chosen could not be read "
                                    f"(1 unreadable or corrupt image, e.g. image {data['images'][0]['id']} ({name})"), \
        result.output


def test_a_file_without_usable_image_records_says_why(dataset, tmp_path):
    data, _ = build()
    for image in data["images"]:
        image["id"] = f"img-{image['id']}"                     # string ids: not COCO image records
    path = tmp_path / "string-ids.json"
    path.write_text(json.dumps(data))
    with pytest.raises(OccsynthError, match=r"no image records to preview \(3 rejected, the first: image record "
                                            r"'img-1': malformed record \('id' missing or not int\)\)"):
        preview_report(path, images=dataset, n=3, columns=3, seed=None, tile=TILE)


def test_huge_record_gets_a_tile_sized_stand_in(dataset, tmp_path):
    data, _ = build()
    data["images"] = [dict(data["images"][0], height=100000, width=100000), data["images"][1]]
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(data))
    sheet, problems = preview_report(path, images=dataset / "images", n=2, columns=2, seed=None, tile=TILE,
                                     labels=False)
    assert sheet.shape == (TILE, 2 * TILE, 3) and np.array_equal(sheet[:, :TILE], missing_image(TILE, TILE))
    assert [(p["reason"], p["detail"]) for p in problems] == [
        ("image too large", "100000x100000 pixels (height x width), over the limit of 134,217,728")]  # as every reader
    with pytest.raises(OccsynthError, match=r"no picture could be drawn: the image chosen could not be read \(1 image "
                                            r"too large, e\.g\. image 1 .*: 100000x100000 pixels"):
        preview_report(path, images=dataset / "images", n=1, seed=None, tile=TILE)


@pytest.mark.parametrize("args, message", [
    (["--tile", "100000"], "not in the range 32<=x<=2048"),
    (["--tile", "8"], "not in the range 32<=x<=2048"),
    (["-n", "100000"], "not in the range 1<=x<=256"),
    (["-n", "256", "--tile", "2048"], "too large"),
    (["--out", "x.gif"], ".png or .jpg"),
])
def test_sheet_size_limits(dataset, tmp_path, args, message):
    data, _ = build()
    data["images"] = [dict(data["images"][0], id=i) for i in range(300)]
    path = tmp_path / "many.json"
    path.write_text(json.dumps(data))
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    result = CliRunner().invoke(group, ["preview", str(path), "--images", str(dataset / "images"),
                                        "--out", str(tmp_path / "s.png")] + args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s.png").exists()
    with pytest.raises(Exception, match="--tile must be a whole number of pixels in 32..2048"):
        preview(path, tile=100000)


@pytest.mark.parametrize("kwargs, words", [
    ({"n": "4"}, "preview: -n must be a whole number in 1..256, got '4'"),          # a TypeError from the comparison
    ({"n": 2.0}, "preview: -n must be a whole number in 1..256, got 2.0"),
    ({"columns": "2"}, "preview: --columns must be a whole number >= 1, got '2'"),
    ({"tile": 64.5}, "preview: --tile must be a whole number of pixels in 32..2048, got 64.5"),
    ({"n": np.int64(0)}, f"preview: -n must be a whole number in 1..256, got {np.int64(0)!r}"),  # numpy 1: 0
])
def test_sheet_sizes_that_are_no_whole_numbers_are_refused(dataset, kwargs, words):
    with pytest.raises(OccsynthError, match=re.escape(words)):
        preview(dataset, **kwargs)


def test_a_missing_bbox_is_taken_from_the_mask_in_the_image_frame():
    """draw_boxes scales boxes to the tile, so the fallback box must not be measured on the resized mask."""
    from occsynth import masks
    from occsynth.preview import _decode_instances

    mask = np.zeros((100, 200), bool)
    mask[20:60, 40:120] = True
    ann = {"id": 1, "category_id": 1, "segmentation": masks.encode(mask)}
    (inst,) = _decode_instances([ann], 100, 200, (50, 100))
    assert inst["bbox"] == [40.0, 20.0, 80.0, 40.0]
    assert inst["visible"].shape == (50, 100)


def plain_coco(data: dict) -> dict:
    """The hand-made set as a plain COCO file: no amodal masks or other occsynth fields."""
    for ann in data["annotations"]:
        for key in ("amodal_segmentation", "amodal_bbox", "amodal_area", "layer", "occluder_ids", "occlusion_ratio"):
            ann.pop(key)
    return data


@pytest.mark.parametrize("key, value, reason", [
    ("bbox", ["a", "b", "c", "d"], "malformed record"),
    ("bbox", [None, None, None, None], "malformed record"),
    ("bbox", [0, 0, 1e308, 1e308], "malformed record"),
    ("occluder_ids", [[1]], "malformed record"),
    ("iscrowd", "yes", "malformed record"),
    ("image_id", [1], "annotation refers to an unknown image id"),
    ("segmentation", {"size": [48, 64], "counts": [1, 2, "x"]}, "degenerate or empty segmentation"),
    ("segmentation", 5, "degenerate or empty segmentation"),
    ("segmentation", [[1, 2, 3]], "degenerate or empty segmentation"),
    ("segmentation", {"size": [10 ** 12, 64], "counts": "a"}, "degenerate or empty segmentation"),
])
def test_a_bad_annotation_is_skipped_and_reported(dataset, tmp_path, key, value, reason):
    data = plain_coco(build()[0])
    data["annotations"][0][key] = value  # of image 1 (48 x 64)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    log = SkipLog()
    sheet, problems = preview_report(path, images=dataset / "images", n=3, seed=None, tile=TILE, log=log)
    assert dict(log.counts) == {reason: 1} and problems == [] and sheet.shape == (TILE, 3 * TILE, 3)
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    result = CliRunner().invoke(group, ["preview", str(path), "--images", str(dataset / "images"),
                                        "--out", str(tmp_path / "s.png"), "-n", "3", "--first", "--tile", "32"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "skipped 1 bad record:" in result.output and reason in result.output
    assert f"annotation {data['annotations'][0]['id']}" in result.output


@pytest.mark.parametrize("annotations, message", [
    (None, "missing the 'annotations' list"),
    ({}, "'annotations' is an object, expected a list"),
    ("null", "'annotations' is a null, expected a list"),
])
def test_a_file_that_is_not_coco_instances_is_refused(dataset, tmp_path, annotations, message):
    data = build()[0]
    del data["annotations"]
    if annotations is not None:
        data["annotations"] = None if annotations == "null" else annotations
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    result = CliRunner().invoke(group, ["preview", str(path), "--images", str(dataset / "images"),
                                        "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "s.png").exists()


def test_no_image_found_is_an_error_naming_the_folder(dataset, tmp_path):
    data = build()[0]
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    (tmp_path / "s.png").write_bytes(b"an earlier sheet")
    result = CliRunner().invoke(group, ["preview", str(path), "--out", str(tmp_path / "s.png"), "--tile", "32"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"image folder {tmp_path}: none of the 3 image files" in result.output and "--images" in result.output
    assert (tmp_path / "s.png").read_bytes() == b"an earlier sheet"
    # some found: a sheet, and a warning that says how many are missing and where it looked
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "000000000001.png").write_bytes((dataset / "images" / "000000000001.png").read_bytes())
    result = CliRunner().invoke(group, ["preview", str(path), "--out", str(tmp_path / "s.png"), "--tile", "32"])
    assert result.exit_code == 0, result.output
    assert f"missing image file (not under {tmp_path / 'images'})" in result.output
    assert "2 image files not found: if the images are elsewhere, give their folder with --images" in result.output


def test_a_negative_seed_is_refused_with_a_message(dataset, tmp_path):
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    res = CliRunner().invoke(group, ["preview", str(dataset), "--out", str(tmp_path / "s.png"), "--seed", "-1"])
    assert res.exit_code == 2 and "--seed" in res.output and not (tmp_path / "s.png").exists()
    with pytest.raises(OccsynthError, match=r"^preview: seed must be a whole number >= 0, got -1$"):
        preview(dataset, n=1, seed=-1, tile=TILE)
    with pytest.raises(OccsynthError, match=r"^preview: seed must be a whole number >= 0, got 1.5$"):
        preview(dataset, n=1, seed=1.5, tile=TILE)


def test_a_sheet_into_the_sets_image_folder_is_refused(tmp_path):
    dataset = write_dataset(tmp_path / "set")
    victim = sorted((dataset / "images").iterdir())[0]
    before = victim.read_bytes()
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    for source in (dataset, dataset / "annotations.json"):
        res = CliRunner().invoke(group, ["preview", str(source), "--out", str(victim)])
        assert res.exit_code == 2 and "image folder" in res.output and "Traceback" not in res.output, res.output
        assert victim.read_bytes() == before
        res = CliRunner().invoke(group, ["stats", str(source), "--plot", str(dataset / "images" / "plot.png")])
        assert res.exit_code == 2 and "image folder" in res.output, res.output
    assert sorted(p.name for p in (dataset / "images").iterdir())[0] == victim.name
    assert not (dataset / "images" / "plot.png").exists()
    ok = CliRunner().invoke(group, ["preview", str(dataset), "--out", str(dataset / "sheet.png")])
    assert ok.exit_code == 0, ok.output  # beside the set is fine


def test_a_sheet_over_an_image_an_lvis_record_names_by_its_coco_url_is_refused(tmp_path):
    """LVIS records name their file by ``coco_url`` alone (split folder and file name, as every reader takes them):
    a sheet written over such an image beside the annotations file was not recognised as one of the set's images."""
    dataset = write_dataset(tmp_path / "set")
    flat = dataset / "images"
    data = json.loads((dataset / "annotations.json").read_text())
    (flat / "val2017").mkdir()
    for image in data["images"]:
        (flat / image["file_name"]).rename(flat / "val2017" / image["file_name"])
        image["coco_url"] = f"http://images.cocodataset.org/val2017/{image.pop('file_name')}"
    (flat / "lvis.json").write_text(json.dumps(data))
    victim = sorted((flat / "val2017").glob("*.png"))[0]
    before = victim.read_bytes()
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    res = CliRunner().invoke(group, ["preview", str(flat / "lvis.json"), "--out", str(victim)])
    assert res.output == (f"Error: {victim}: is the image val2017/{victim.name} of {flat / 'lvis.json'}: the sheet "
                          "would replace it - write it elsewhere\n") and res.exit_code == 2
    assert victim.read_bytes() == before
    ok = CliRunner().invoke(group, ["preview", str(flat / "lvis.json"), "--out", str(flat / "sheet.png")])
    assert ok.exit_code == 0, ok.output  # and the images are found, by their coco_url


def test_a_sheet_over_an_image_of_a_flat_coco_folder_is_refused(tmp_path):
    """A COCO file beside its images: the image root is the file's folder, which holds other files too, so an
    --out there is fine unless it is one of the set's images (under any spelling)."""
    dataset = write_dataset(tmp_path / "set")
    flat = dataset / "images"
    (flat / "coco.json").write_text((dataset / "annotations.json").read_text())
    victim = sorted(flat.glob("*.png"))[0]
    before = victim.read_bytes()
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    for out in (victim, flat / ".." / "images" / victim.name):
        res = CliRunner().invoke(group, ["preview", str(flat / "coco.json"), "--out", str(out)])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert res.output == (f"Error: {out}: is the image {victim.name} of {flat / 'coco.json'}: the sheet would "
                              "replace it - write it elsewhere\n")
        res = CliRunner().invoke(group, ["stats", str(flat / "coco.json"), "--plot", str(out)])
        assert res.exit_code == 2 and f"is the image {victim.name} of" in res.output, res.output
    assert victim.read_bytes() == before
    ok = CliRunner().invoke(group, ["preview", str(flat / "coco.json"), "--out", str(flat / "sheet.png")])
    assert ok.exit_code == 0, ok.output  # beside the images, as no image: fine


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-0.5", "1.5"])
def test_a_pair_iou_that_is_no_number_in_0_1_is_refused(dataset, tmp_path, value):
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    res = CliRunner().invoke(group, ["preview", str(dataset), "--out", str(tmp_path / "s.png"), "--pair-iou", value])
    assert res.exit_code == 2 and "Invalid value for '--pair-iou'" in res.output, res.output
    assert not (tmp_path / "s.png").exists()
    with pytest.raises(OccsynthError, match=rf"^preview: pair_iou must be a box IoU in \[0, 1\], got {float(value)}$"):
        preview(dataset, n=1, tile=TILE, pair_iou=float(value))


def test_an_image_id_listed_twice_is_shown_once_and_reported(dataset, tmp_path):
    """As every loader of the project does: the first record of an id is used, later ones are skipped and counted."""
    data, _ = build()
    data["images"].append(dict(data["images"][0], file_name="elsewhere.png"))
    path = tmp_path / "twice.json"
    path.write_text(json.dumps(data))
    log = SkipLog()
    sheet, problems = preview_report(path, images=dataset / "images", n=16, columns=8, seed=None, tile=TILE,
                                     labels=False, log=log)
    assert sheet.shape == (TILE, 3 * TILE, 3) and problems == []
    assert log.to_dict()["counts"] == {"duplicate id": 1}
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    res = CliRunner().invoke(group, ["preview", str(path), "--images", str(dataset / "images"), "--out",
                                     str(tmp_path / "s.png"), "--tile", "32"])
    assert res.exit_code == 0, res.output
    first = data["images"][0]["id"]
    assert (f"{path}: skipped 1 bad record:\n        1  duplicate id, e.g. image record {first} (later records with "
            "this id skipped)\n") in res.output
    assert cv2.imread(str(tmp_path / "s.png")).shape == (32, 3 * 32, 3)


def test_a_sheet_or_plot_over_a_pipe_or_a_link_is_refused_not_replaced(dataset, tmp_path):
    """Written by renaming a temporary into place, the picture replaced a named pipe (or, as root, /dev/null)
    and a link to a file (the link, not the file it leads to), as the converters refuse to."""
    import os
    import stat
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"the user's file")
    link = tmp_path / "link.png"
    link.symlink_to(kept)
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    for args in (["preview", str(dataset), "--out"], ["stats", str(dataset), "--plot"]):
        res = CliRunner().invoke(group, args + [str(fifo)])
        assert res.exit_code == 2 and res.output == (
            f"Error: cannot write {fifo}: not a regular file (a device, pipe or socket), which the output, renamed "
            "into place, would replace\n"), res.output
        res = CliRunner().invoke(group, args + [str(link)])
        assert res.exit_code == 2 and res.output == (
            f"Error: cannot write {link}: it is a link to {kept}; the output, renamed into place, would replace the "
            "link, not that file - give the file's own path\n"), res.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert link.is_symlink() and kept.read_bytes() == b"the user's file"


def test_a_picture_over_an_image_of_the_set_is_refused_reading_the_image_records_up_to_their_array_end(tmp_path,
                                                                                                        monkeypatch):
    """The guard of --out reads the set's image records as the sheet does, without streaming the whole file."""
    from occsynth import preview as preview_module
    dataset = write_dataset(tmp_path / "set")
    flat = dataset / "images"
    (flat / "coco.json").write_text((dataset / "annotations.json").read_text())  # a COCO file beside its images
    victim = sorted(flat.glob("*.png"))[0]
    streamed = []
    real = preview_module.iter_array
    monkeypatch.setattr(preview_module, "iter_array", lambda path, key: streamed.append(key) or real(path, key))
    with pytest.raises(OccsynthError, match=f"is the image {victim.name} of {flat / 'coco.json'}: the sheet would"):
        preview_module.check_outside_images(victim, flat / "coco.json", "sheet")
    preview_module.check_outside_images(flat / "sheet.png", flat / "coco.json", "sheet")  # nothing there to replace
    assert streamed == []
