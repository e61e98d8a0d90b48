"""The embedded demo source: COCO categories, exact annotations, required input shapes, caching."""
import errno
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools.coco import COCO

from cli.occsynth_cli import main as occsynth_main
from occsynth import atomic, coco, demo
from occsynth.bank import Bank, ensure_bank
from occsynth.categories import COCO_CATEGORIES
from occsynth.errors import OccsynthError


def test_coco_categories_have_the_real_gapped_ids():
    ids = [c["id"] for c in COCO_CATEGORIES]
    assert len(ids) == 80 == len({c["name"] for c in COCO_CATEGORIES})
    assert ids == sorted(ids) and ids[0] == 1 and ids[-1] == 90
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    by_id = {c["id"]: c for c in COCO_CATEGORIES}
    assert by_id[13] == {"supercategory": "outdoor", "id": 13, "name": "stop sign"}
    assert by_id[37]["name"] == "sports ball" and by_id[85]["name"] == "clock" and by_id[90]["name"] == "toothbrush"


def test_coco_categories_have_cocos_supercategories_and_are_found_by_name():
    from collections import Counter

    from occsynth.categories import COCO_IDS_BY_NAME
    assert Counter(c["supercategory"] for c in COCO_CATEGORIES) == {
        "person": 1, "vehicle": 8, "outdoor": 5, "animal": 10, "accessory": 5, "sports": 10, "kitchen": 7, "food": 10,
        "furniture": 6, "electronic": 6, "appliance": 5, "indoor": 7}
    by_name = {c["name"]: c for c in COCO_CATEGORIES}
    assert [by_name[n]["supercategory"] for n in ("wine glass", "vase", "potted plant", "hot dog")] == [
        "kitchen", "indoor", "furniture", "food"]
    assert COCO_IDS_BY_NAME == {c["name"]: c["id"] for c in COCO_CATEGORIES}
    assert (COCO_IDS_BY_NAME["person"], COCO_IDS_BY_NAME["stop sign"], COCO_IDS_BY_NAME["toothbrush"]) == (1, 13, 90)


def test_annotations_are_exactly_the_painted_regions(demo_source):
    ann_path, root = demo_source
    gt = COCO(str(ann_path))
    _, pixels, labels = demo.build_demo(seed=0)
    assert len(gt.dataset["categories"]) == 80
    for image in gt.dataset["images"]:
        label = labels[image["file_name"]]
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image["id"]], iscrowd=None))
        assert anns, image["file_name"]
        for ann in anns:
            mask = gt.annToMask(ann).astype(bool)
            assert np.array_equal(mask, label == ann["id"]), ann["id"]
            assert ann["area"] == int(mask.sum())
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        # every painted object is annotated: no unlabelled painted pixels
        assert set(np.unique(label)) - {0} == {a["id"] for a in anns}
        on_disk = coco.read_image(coco.resolve_image_path(root, image["file_name"]), (image["height"], image["width"]))
        assert np.abs(on_disk.astype(int) - pixels[image["file_name"]].astype(int)).mean() < 10  # JPEG q95 of textured photos


def test_demo_holds_every_required_kind_of_input(demo_source):
    data = json.loads(Path(demo_source[0]).read_text())
    images, anns = data["images"], data["annotations"]
    assert len(images) == demo.NUM_IMAGES
    assert all(120 <= im["height"] <= 150 and 160 <= im["width"] <= 200 for im in images)
    assert all("/" in im["file_name"] for im in images)
    assert {im["file_name"].split("/")[0] for im in images} == {"set-a", "set-b"}
    assert len({a["category_id"] for a in anns}) >= 8
    polygons = [a for a in anns if isinstance(a["segmentation"], list)]
    assert polygons and any(len(a["segmentation"]) >= 2 for a in polygons)
    compressed = [a for a in anns if isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)]
    assert len(compressed) >= 10
    crowd = [a for a in anns if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)


def test_bank_of_the_demo_has_three_complete_cutouts_per_category_and_every_rejection(demo_source, tmp_path):
    bank = Bank.load(ensure_bank(demo_source[0], tmp_path, progress=False))
    data = json.loads(Path(demo_source[0]).read_text())
    demo_cats = {a["category_id"] for a in data["annotations"]}
    assert set(bank.cutout_categories()) == demo_cats
    assert all(len(bank.cutouts(c)) >= 3 for c in demo_cats)
    assert all(v > 0 for v in bank.meta["rejected"].values()), bank.meta["rejected"]
    assert bank.num_images == demo.NUM_IMAGES and bank.meta["skipped"]["counts"] == {}


def test_make_demo_source_is_deterministic_and_seeded(demo_source, tmp_path):
    ann, root = demo.make_demo_source(tmp_path / "again")
    first = {p.relative_to(demo_source[1]): p.read_bytes() for p in sorted(Path(demo_source[1]).rglob("*.jpg"))}
    second = {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}
    assert first == second and len(first) == demo.NUM_IMAGES
    assert ann.read_bytes() == Path(demo_source[0]).read_bytes()
    other, _, _ = demo.build_demo(seed=1)
    assert other["annotations"] != json.loads(ann.read_text())["annotations"]


def test_demo_source_is_cached_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ann, root = demo.demo_source()
    assert ann == tmp_path / "xdg" / "occsynth" / demo.DEMO_VERSION / "annotations.json"
    assert root == ann.parent / "images" and len(list(root.rglob("*.jpg"))) == demo.NUM_IMAGES
    stamp = ann.stat().st_mtime_ns
    assert demo.demo_source() == (ann, root) and ann.stat().st_mtime_ns == stamp   # reused, not rebuilt
    assert [p.name for p in ann.parent.parent.iterdir()] == [demo.DEMO_VERSION]      # no temporaries left


def test_an_empty_cache_setting_is_an_unset_one(tmp_path, monkeypatch):
    """XDG_CACHE_HOME= (set but empty, as XDG says to read it) and --cache-dir "" (an unset variable in a script) mean
    the default cache, not a cache in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    default = tmp_path / "home" / ".cache" / "occsynth"
    assert demo.default_cache_dir() == default
    assert demo.cache_dir_or_default("") == demo.cache_dir_or_default(None) == default
    assert demo.cache_dir_or_default(str(tmp_path / "c")) == tmp_path / "c"


def test_uncompressed_rle_decodes_to_its_mask_also_when_it_starts_with_a_set_pixel():
    """COCO's counts start with a run of zeros: a mask whose first pixel (column-major) is set starts with 0."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((5, 4), bool)
    mask[0, 0] = mask[1:3, 1] = mask[4, 3] = True
    for m in (mask, ~mask, np.ones((3, 2), bool), np.zeros((3, 2), bool)):
        rle = demo.uncompressed_rle(m)
        assert rle["size"] == list(m.shape)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *m.shape)).astype(bool)
        assert np.array_equal(decoded, m)
    assert demo.uncompressed_rle(mask)["counts"][:3] == [0, 1, 5]


def test_make_demo_source_command(tmp_path):
    result = CliRunner().invoke(occsynth_main, ["make-demo-source", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "d" / "annotations.json").read_text())
    assert Counter(Path(im["file_name"]).suffix for im in data["images"]) == {".jpg": demo.NUM_IMAGES}
    assert all((tmp_path / "d" / "images" / im["file_name"]).is_file() for im in data["images"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "annotations.json").write_text('{"my": "labels"}')
    refused = CliRunner().invoke(occsynth_main, ["make-demo-source", str(mine)])
    assert refused.exit_code == 2 and "not empty" in refused.output
    assert (mine / "annotations.json").read_text() == '{"my": "labels"}'
    forced = CliRunner().invoke(occsynth_main, ["make-demo-source", str(mine), "--force"])
    assert forced.exit_code == 0 and "images" in json.loads((mine / "annotations.json").read_text())


def test_make_demo_source_names_the_folder_it_cannot_write(tmp_path, monkeypatch):
    """A DIRECTORY under a file, or on a read-only mount, was refused naming the first image's path deep inside it
    ("cannot write DIR/images/set-a/000001.jpg: output location is not writable")."""
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(occsynth_main, ["make-demo-source", str(tmp_path / "afile" / "d")])
    assert res.exit_code == 2 and res.output == (f"Error: cannot make folder {tmp_path / 'afile' / 'd'}: "
                                                 f"{tmp_path / 'afile'} is a file, not a folder\n"), res.output

    def read_only(*args, **kwargs):  # as on a read-only mount (root ignores a folder's modes)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic.tempfile, "TemporaryFile", read_only)
    res = CliRunner().invoke(occsynth_main, ["make-demo-source", str(tmp_path / "ro")])
    assert res.exit_code == 2 and res.output == f"Error: cannot write into {tmp_path / 'ro'}: Read-only file system\n"
    assert not list((tmp_path / "ro").iterdir())


def test_make_demo_source_refuses_a_negative_seed(tmp_path):
    res = CliRunner().invoke(occsynth_main, ["make-demo-source", str(tmp_path / "d"), "--seed", "-1"])
    assert res.exit_code == 2 and "--seed" in res.output
    assert not (tmp_path / "d").exists()
    with pytest.raises(OccsynthError, match=r"^demo source: seed must be a whole number >= 0, got -1$"):
        demo.build_demo(seed=-1)
