"""Cutout bank: completeness rule, counts on a hand-made source, bad records, caching, safe loading."""
import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli.occsynth_cli import main as occsynth_main
from occsynth import errors, masks
from occsynth.bank import REASONS, Bank, BankOptions, bank_key, build_bank, completeness, ensure_bank
from occsynth.demo import uncompressed_rle
from occsynth.errors import OccsynthError

H, W = 48, 64


def rect(x0, y0, x1, y1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------- completeness


def test_completeness_gives_each_reason():
    opts = BankOptions(min_area=40, border_margin=2, touch_margin=2)
    cases = [rect(4, 4, 14, 14),        # complete
             rect(30, 4, 40, 14),       # crowd
             rect(0, 20, 10, 30),       # at the border
             rect(20, 20, 25, 25),      # 25 px < min_area
             rect(40, 30, 50, 40),      # touched by the next one (1 px gap)
             rect(51, 30, 60, 40),
             np.zeros((H, W), bool)]    # empty
    crowd = [False, True, False, False, False, False, False]
    assert completeness(cases, crowd, H, W, opts) == [None, "crowd", "truncated", "too_small", "overlapped",
                                                       "overlapped", "too_small"]


@pytest.mark.parametrize("opts", [BankOptions(min_area=10, border_margin=1, touch_margin=0),
                                  BankOptions(min_area=10, border_margin=0, touch_margin=2),
                                  BankOptions(min_area=1, border_margin=2, touch_margin=5)])
def test_the_bank_judges_each_instance_as_completeness_does_on_full_masks(tmp_path, opts):
    """The bank decodes masks as box + crop and looks only inside each instance's window: same reasons."""
    rng = np.random.default_rng(5)
    h, w = 40, 56
    images, anns, expected = [], [], []
    for i in range(40):
        full, crowd = [], []
        for _ in range(int(rng.integers(1, 9))):
            m = np.zeros((h, w), bool)
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            bh, bw = int(rng.integers(1, 24)), int(rng.integers(1, 24))
            # sparse pixels: whether two masks touch depends on exactly where each pixel is
            m[y:y + bh, x:x + bw] = rng.random(m[y:y + bh, x:x + bw].shape) < 0.12
            m[y, x] = True
            full.append(m)
            crowd.append(bool(rng.random() < 0.1))
        if i % 4 == 0:  # one whose runs wrap from a column's bottom into the next column's top (a full-height box)
            m = np.zeros((h, w), bool)
            c = int(rng.integers(0, w - 1))
            m[h - 3:, c] = m[:2, c + 1] = True
            full.append(m)
            crowd.append(False)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": h, "width": w})
        for m, c in zip(full, crowd):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "segmentation": masks.encode(m),
                         "iscrowd": int(c), "area": masks.area(m), "bbox": masks.bbox(m)})
        expected += completeness(full, crowd, h, w, opts)
    src = tmp_path / "src.json"
    src.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    build_bank(src, tmp_path / "bank", opts, progress=False)
    bank = Bank.load(tmp_path / "bank")
    by_id = {bank.annotation(k)["id"]: bank.rejection(k) for k in range(bank.num_annotations)}
    assert [by_id[a["id"]] for a in anns] == expected
    assert len(set(expected)) >= 3   # the cases are mixed: complete, overlapped, truncated, ...


def test_completeness_margins_are_exact():
    opts = BankOptions(min_area=1, border_margin=2, touch_margin=2)
    # border: a pixel in column 1 is within 2 px of the border, column 2 is not
    assert completeness([rect(1, 10, 8, 16)], [False], H, W, opts) == ["truncated"]
    assert completeness([rect(2, 10, 8, 16)], [False], H, W, opts) == [None]
    assert completeness([rect(50, 10, 62, 16)], [False], H, W, opts) == [None]
    assert completeness([rect(50, 10, 63, 16)], [False], H, W, opts) == ["truncated"]
    # touch: a 2 px gap (columns 20, 21) is apart, a 1 px gap touches; diagonal neighbours count too
    assert completeness([rect(10, 10, 20, 20), rect(22, 10, 30, 20)], [0, 0], H, W, opts) == [None, None]
    assert completeness([rect(10, 10, 20, 20), rect(21, 10, 30, 20)], [0, 0], H, W, opts) == ["overlapped"] * 2
    assert completeness([rect(10, 10, 20, 20), rect(21, 21, 30, 30)], [0, 0], H, W, opts) == ["overlapped"] * 2
    # a margin of 1 px dilates too: masks side by side touch, a 1 px gap is apart
    one = BankOptions(min_area=1, border_margin=2, touch_margin=1)
    assert completeness([rect(10, 10, 20, 20), rect(20, 10, 30, 20)], [0, 0], H, W, one) == ["overlapped"] * 2
    assert completeness([rect(10, 10, 20, 20), rect(21, 10, 30, 20)], [0, 0], H, W, one) == [None, None]
    # min_area is the fewest pixels allowed: a 10 x 10 mask passes at 100, not at 101
    assert completeness([rect(10, 10, 20, 20)], [0], H, W, BankOptions(min_area=100)) == [None]
    assert completeness([rect(10, 10, 20, 20)], [0], H, W, BankOptions(min_area=101)) == ["too_small"]
    # touching a crowd region rejects; reasons are tested in REASONS order
    assert completeness([rect(10, 10, 20, 20), rect(20, 10, 30, 20)], [0, 1], H, W, opts) == ["overlapped", "crowd"]
    small = BankOptions(min_area=1000)
    assert completeness([rect(0, 0, 5, 5), rect(10, 10, 15, 15), rect(15, 10, 20, 15)], [0, 0, 0], H, W, small) == \
        ["truncated", "overlapped", "overlapped"]
    assert REASONS == ("crowd", "truncated", "overlapped", "too_small")


# ---------------------------------------------------------------- a hand-made source

CATS = [{"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 18, "name": "dog", "supercategory": "animal"},
        {"id": 90, "name": "toothbrush", "supercategory": "indoor", "extra": [1, 2]}]


def poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def source(extra_annotations=()):
    """Three images; instances and their expected verdict with min_area=50."""
    images = [{"id": 7, "file_name": "a/one.jpg", "height": H, "width": W},
              {"id": 3, "file_name": "two.png", "height": 40, "width": 50},
              {"id": 11, "file_name": "three.jpg", "height": H, "width": W}]
    anns = [
        {"id": 1, "image_id": 7, "category_id": 3, "segmentation": poly(5, 5, 15, 15), "iscrowd": 0},       # complete
        {"id": 2, "image_id": 7, "category_id": 18, "segmentation": masks.encode(rect(30, 5, 40, 15)),
         "iscrowd": 0},                                                                                    # complete
        {"id": 3, "image_id": 7, "category_id": 18, "segmentation": uncompressed_rle(rect(5, 30, 20, 40)),
         "iscrowd": 1},                                                                                    # crowd
        {"id": 4, "image_id": 7, "category_id": 3, "segmentation": poly(20, 30, 30, 40), "iscrowd": 0},     # touches crowd
        {"id": 5, "image_id": 3, "category_id": 3, "segmentation": poly(0, 0, 10, 10), "iscrowd": 0},       # truncated
        {"id": 6, "image_id": 3, "category_id": 18, "segmentation": poly(20, 20, 24, 24), "iscrowd": 0},    # too small
        {"id": 7, "image_id": 3, "category_id": 18,                                                        # two parts
         "segmentation": poly(30, 5, 40, 12) + poly(30, 20, 40, 30), "iscrowd": 0},
        {"id": 8, "image_id": 11, "category_id": 3, "segmentation": poly(10, 10, 30, 30), "iscrowd": 0},    # complete
        *extra_annotations,
    ]
    return {"images": images, "annotations": anns, "categories": CATS}


def write(tmp_path, data, name="src.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


OPTS = BankOptions(min_area=50)


def test_bank_counts_tables_and_masks(tmp_path):
    data = source()
    path = write(tmp_path, data)
    meta = build_bank(path, tmp_path / "bank", OPTS, progress=False)
    assert meta["kept_per_category"] == {"3": 2, "18": 2, "90": 0}
    assert meta["rejected"] == {"crowd": 1, "truncated": 1, "overlapped": 1, "too_small": 1}
    assert meta["skipped"]["counts"] == {} and meta["num_images"] == 3
    bank = Bank.load(tmp_path / "bank")
    assert bank.categories == CATS and bank.meta == meta
    assert bank.cutout_categories() == [3, 18]
    assert [bank.annotation(k)["id"] for k in bank.cutouts(3)] == [1, 8]
    assert [bank.annotation(k)["id"] for k in bank.cutouts(18)] == [2, 7]
    assert len(bank.cutouts(90)) == 0 and len(bank.cutouts(12345)) == 0
    assert [bank.image_record(i) for i in range(3)] == [{k: im[k] for k in ("id", "file_name", "height", "width")}
                                                        for im in data["images"]]
    by_id = {a["id"]: a for a in data["annotations"]}
    for i, image in enumerate(data["images"]):
        got = bank.image_annotations(i)
        assert [a["id"] for a in got] == [a["id"] for a in data["annotations"] if a["image_id"] == image["id"]]
        for a in got:
            h, w = image["height"], image["width"]
            expected = masks.decode(by_id[a["id"]]["segmentation"], h, w)
            assert np.array_equal(masks.decode(a["segmentation"], h, w), expected)
            assert a["bbox"] == masks.bbox(expected) and a["area"] == masks.area(expected)
            assert a["iscrowd"] == by_id[a["id"]]["iscrowd"] and a["category_id"] == by_id[a["id"]]["category_id"]
    k = int(bank.cutouts(18)[1])
    assert bank.annotation(k)["image_index"] == 1 and bank.rejection(k) is None
    with pytest.raises(IndexError):
        bank.image_record(3)



def test_a_stray_short_polygon_part_does_not_lose_the_instance(tmp_path):
    """detectron2's rule (masks.check_polygons): instance 8's outline with a 4-number part first (pycocotools would
    read every part as a box) and a 2-number part last is instance 8, a cutout, its mask the outline alone."""
    clean = build_bank(write(tmp_path, source(), "clean.json"), tmp_path / "clean", OPTS, progress=False)
    data = source()
    eight = data["annotations"][7]
    eight["segmentation"] = [[12, 12, 20, 20], *eight["segmentation"], [5, 5]]
    meta = build_bank(write(tmp_path, data), tmp_path / "bank", OPTS, progress=False)
    assert meta["skipped"]["counts"] == {} and meta["kept_per_category"] == {"3": 2, "18": 2, "90": 0}
    assert {k: meta[k] for k in ("rejected", "num_images")} == {k: clean[k] for k in ("rejected", "num_images")}
    bank = Bank.load(tmp_path / "bank")
    k = int(bank.cutouts(3)[1])
    assert bank.annotation(k)["id"] == 8 and bank.rejection(k) is None
    assert np.array_equal(masks.decode(bank.annotation(k)["segmentation"], H, W), rect(10, 10, 30, 30))
    assert bank.annotation(k)["bbox"] == [10.0, 10.0, 20.0, 20.0] and bank.annotation(k)["area"] == 400
    assert bank.num_images == Bank.load(tmp_path / "clean").num_images  # image 11 is a background still

def test_a_bank_cached_when_a_stray_polygon_part_refused_the_instance_is_built_again(tmp_path, monkeypatch):
    """Format 3 banks were read by the old rule, which skipped an instance for one stray short part: such a bank,
    cached, lacks instances a build now keeps, so it is not reused (BANK_FORMAT 4; the pixel store's key follows)."""
    import occsynth.bank as bank_module
    data = source()
    data["annotations"][7]["segmentation"] = [*data["annotations"][7]["segmentation"], [5, 5]]
    path = write(tmp_path, data)
    real = masks.check_polygons

    def old_rule(segmentation, height, width):  # before a965f64: every part of 3 points or more, or no object
        if any(len(p) < 6 or len(p) % 2 for p in segmentation if isinstance(p, (list, tuple))):
            raise masks.DegenerateMask("polygon with a stray part")
        return real(segmentation, height, width)

    with monkeypatch.context() as old:
        old.setattr(bank_module, "BANK_FORMAT", 3)
        old.setattr(masks, "check_polygons", old_rule)
        stale = ensure_bank(path, tmp_path / "cache", OPTS, progress=False)
        assert 8 not in [Bank.load(stale).annotation(k)["id"] for k in Bank.load(stale).cutouts(3)]
    fresh = ensure_bank(path, tmp_path / "cache", OPTS, progress=False)
    assert fresh != stale and 8 in [Bank.load(fresh).annotation(k)["id"] for k in Bank.load(fresh).cutouts(3)]
    with pytest.raises(OccsynthError, match="cutout bank of another format"):  # opened by its folder: refused too
        Bank.load(stale)


def test_an_lvis_source_names_its_files_by_coco_url(tmp_path):
    """LVIS v1 image records have no file_name: each was skipped as malformed, and a bank of LVIS refused ("no valid
    image records"). Their file is the coco_url's split folder and file name, as detectron2 reads it."""
    data = source()
    for image in data["images"]:
        image["coco_url"] = f"http://images.cocodataset.org/val2017/{image.pop('file_name').replace('/', '-')}"
        image["not_exhaustive_category_ids"], image["neg_category_ids"] = [3], [90]
    meta = build_bank(write(tmp_path, data), tmp_path / "bank", OPTS, progress=False)
    assert meta["kept_per_category"] == {"3": 2, "18": 2, "90": 0} and meta["skipped"]["counts"] == {}
    assert [Bank.load(tmp_path / "bank").image_record(i)["file_name"] for i in range(3)] == [
        "val2017/a-one.jpg", "val2017/two.png", "val2017/three.jpg"]


def compressed_counts(runs: list[int]) -> str:
    """pycocotools' compressed RLE string of ``runs``, written here for runs it would never make."""
    chars = []
    for i, value in enumerate(runs):
        x = value - runs[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            chars.append(chr((c | 0x20 if more else c) + 48))
    return "".join(chars)


def test_rle_is_stored_as_encode_writes_it(tmp_path):
    """Sources may spell an RLE mask with split runs or redundant digits: the bank keeps the string
    masks.encode writes for it (generation copies it to the output when nothing covers the instance)."""
    runs = [1000, 5, 0, 5, 990]                        # a zero-length run splits one run of 10
    padded = compressed_counts([1000, 10, 990])
    padded = padded[:-1] + chr(((ord(padded[-1]) - 48) | 0x20) + 48) + "0"  # the last value with a redundant digit
    extra = [{"id": 50, "image_id": 3, "category_id": 3, "segmentation": {"size": [40, 50], "counts": runs}},
             {"id": 51, "image_id": 3, "category_id": 3, "segmentation": {"size": [40, 50], "counts": padded}}]
    data = source(extra)
    meta = build_bank(write(tmp_path, data), tmp_path / "bank", OPTS, progress=False)
    assert meta["skipped"]["counts"] == {}
    bank = Bank.load(tmp_path / "bank")
    stored = {a["id"]: a["segmentation"] for i in range(bank.num_images_total) for a in bank.image_annotations(i)}
    assert masks.encode(masks.decode(extra[1]["segmentation"], 40, 50))["counts"] not in (runs, padded)
    for a in data["annotations"]:
        h, w = (40, 50) if a["image_id"] == 3 else (H, W)
        assert stored[a["id"]] == masks.encode(masks.decode(a["segmentation"], h, w)), a["id"]


BAD = [
    {"id": 1000000, "image_id": 11, "category_id": 999, "segmentation": poly(1, 1, 5, 5)},        # unknown category
    {"id": 1000001, "image_id": 424242, "category_id": 3, "segmentation": poly(1, 1, 5, 5)},      # unknown image
    {"id": 1000002, "image_id": 3, "category_id": 3, "segmentation": [[1, 2, 3]]},                # degenerate polygon
    {"id": 1000003, "image_id": 3, "category_id": 3, "segmentation": [[1, 1, 1, 1, 1, 1]]},       # empty mask
    {"id": 1000004, "image_id": 3, "category_id": 3, "segmentation": {"size": [40, 50], "counts": "0000"}},  # bad RLE
    {"id": 1000005, "image_id": 3, "category_id": 3, "segmentation": {"size": [40, 50], "counts": [2000, -5, 5]}},
    {"id": 1000007, "image_id": 3, "category_id": 3, "segmentation": {"size": [40, 50], "counts": "0é"}},  # not ASCII
    {"id": 1000008, "image_id": 3, "category_id": 3,                          # runs 1000, -10, 1010: sum right, one negative
     "segmentation": {"size": [40, 50], "counts": compressed_counts([1000, -10, 1010])}},
    {"id": 1000009, "image_id": 3, "category_id": 3,                          # huge runs whose int64 sum wraps to 2000
     "segmentation": {"size": [40, 50], "counts": compressed_counts([2000, 2**31 + (2**26 - 1) * 2**32,
                                                                     2**31 + 2**58] + [2**58] * 62)}},
    {"image_id": 3, "category_id": 3, "segmentation": poly(1, 1, 5, 5)},                            # no id
    {"id": 1000006, "image_id": [3], "category_id": 3, "segmentation": poly(1, 1, 5, 5)},          # malformed id
    {"id": 8, "image_id": 3, "category_id": 3, "segmentation": poly(1, 1, 5, 5)},                  # duplicate id
]


def test_bad_records_are_skipped_by_reason(tmp_path):
    data = source(BAD)
    data["images"].append({"id": 12, "file_name": "x.jpg", "height": 0, "width": 5})                 # malformed image
    data["annotations"].append({"id": 1000010, "image_id": 12, "category_id": 3, "segmentation": poly(1, 1, 5, 5)})
    meta = build_bank(write(tmp_path, data), tmp_path / "bank", OPTS, progress=False)
    assert meta["skipped"]["counts"] == {errors.DEGENERATE_MASK: 7, errors.DUPLICATE_ID: 1, errors.MALFORMED_RECORD: 3,
                                         errors.UNKNOWN_CATEGORY: 1, errors.UNKNOWN_IMAGE: 1,
                                         errors.OF_SKIPPED_IMAGE: 1}
    assert meta["skipped"]["examples"][errors.UNKNOWN_IMAGE].endswith("(image_id 424242)")
    assert meta["skipped"]["examples"][errors.OF_SKIPPED_IMAGE] == (
        "annotation 1000010: annotation of a skipped image (image record 12: malformed record)")
    assert meta["first_skip"].startswith("image record 12: malformed record")
    bank = Bank.load(tmp_path / "bank")
    # images 11 and 3 lost an annotation: not backgrounds, but still a source of cutouts
    assert bank.num_images == 1 and bank.image_record(0)["id"] == 7
    assert [bank.image_record(i)["id"] for i in (1, 2)] == [3, 11]
    assert meta["kept_per_category"] == {"3": 2, "18": 2, "90": 0}
    assert [bank.annotation(k)["id"] for k in bank.cutouts(3)] == [1, 8]


def test_an_image_record_over_the_pixel_limit_is_skipped_by_reason(tmp_path, monkeypatch):
    """A record claiming 20000x20000 got its masks drawn at that size, its file decoded in full for the pixel store
    and as a background. Its height and width tell: skipped (--strict: stops, naming it and the file). The limit is
    lowered here instead: images 7 and 11 are 48x64, image 3 40x50."""
    monkeypatch.setattr(masks, "MAX_IMAGE_PIXELS", 40 * 50)
    path = write(tmp_path, source())
    meta = build_bank(path, tmp_path / "bank", OPTS, progress=False)
    assert meta["skipped"]["counts"] == {errors.IMAGE_TOO_LARGE: 2, errors.OF_SKIPPED_IMAGE: 5}  # 7's four, 11's one
    assert meta["skipped"]["examples"][errors.OF_SKIPPED_IMAGE] == (
        "annotation 1: annotation of a skipped image (image record 7: image too large)")
    assert meta["first_skip"] == ("image record 7: image too large (48x64 pixels (height x width), over the limit "
                                  "of 2,000)")
    bank = Bank.load(tmp_path / "bank")
    assert [bank.image_record(i)["id"] for i in range(bank.num_images_total)] == [3]
    with pytest.raises(OccsynthError) as exc:
        build_bank(path, tmp_path / "b", OPTS, strict=True, progress=False)
    assert str(exc.value) == f"{path}: {meta['first_skip']}"


def test_an_rle_of_another_size_than_its_image_record_says_so(tmp_path):
    """The record's height or the mask is wrong: either way not a 'degenerate segmentation'."""
    wrong = {"id": 20, "image_id": 3, "category_id": 3, "iscrowd": 0,
             "segmentation": masks.encode(rect(5, 5, 15, 15))}  # an H x W mask on the 40 x 50 image 3
    meta = build_bank(write(tmp_path, source([wrong])), tmp_path / "bank", OPTS, progress=False)
    assert meta["skipped"]["counts"] == {errors.MASK_SIZE_MISMATCH: 1}
    assert meta["skipped"]["examples"][errors.MASK_SIZE_MISMATCH] == (
        f"annotation 20: {errors.MASK_SIZE_MISMATCH} (RLE size [{H}, {W}], the image record says 40x50 (height x width))")


def test_strict_mode_names_the_first_bad_record_and_its_file(tmp_path):
    path = write(tmp_path, source(BAD))
    first = f"{path}: annotation 1000000: annotation refers to an unknown category id"
    with pytest.raises(OccsynthError) as exc:
        build_bank(path, tmp_path / "b", OPTS, strict=True, progress=False)
    assert str(exc.value).startswith(first)
    ensure_bank(path, tmp_path / "cache", OPTS, progress=False)          # lenient build is cached ...
    with pytest.raises(OccsynthError) as exc:                            # ... and refused in strict mode, the same way
        ensure_bank(path, tmp_path / "cache", OPTS, strict=True, progress=False)
    assert str(exc.value).startswith(first)
    result = CliRunner().invoke(occsynth_main, ["bank", "--ann", str(path), "--cache-dir", str(tmp_path / "c2"),
                                                "--strict", "--quiet"])
    assert result.exit_code == 2 and result.output.startswith(f"Error: {first}")


def test_report_of_a_bank_without_cutouts_says_so(tmp_path):
    border = rect(0, 0, 10, 10)  # every instance touches the border: none is complete
    src = tmp_path / "src.json"
    src.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                                "segmentation": masks.encode(border), "area": 100, "bbox": [0, 0, 10, 10]}],
                               "categories": [{"id": 1, "name": "thing"}]}))
    result = CliRunner().invoke(occsynth_main, ["bank", "--ann", str(src), "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "kept 0 complete instances as cutouts in 0 categories (nothing to paste: generate refuses this source)" \
        in result.output
    assert "\n        1  truncated" in result.output  # why: the rejected block follows


def test_not_a_coco_file_is_reported(tmp_path):
    with pytest.raises(OccsynthError, match="not a COCO file: the top level is an array"):
        build_bank(write(tmp_path, [1, 2]), tmp_path / "b", progress=False)
    with pytest.raises(OccsynthError, match="no valid category records"):
        build_bank(write(tmp_path, dict(source(), categories=[1, 2])), tmp_path / "b", progress=False)
    with pytest.raises(OccsynthError, match=r"no valid category records .*'name' missing or not a string"):
        build_bank(write(tmp_path, dict(source(), categories=[{"id": 1}, {"id": 2, "name": None}])), tmp_path / "b",
                   progress=False)  # detectron2 and mmdetection list a set's classes by name
    with pytest.raises(OccsynthError, match="not a COCO file: 'categories' is an object, expected a list"):
        build_bank(write(tmp_path, dict(source(), categories={})), tmp_path / "b", progress=False)
    with pytest.raises(OccsynthError, match="malformed JSON"):
        (tmp_path / "broken.json").write_text('{"categories": [{"id": 1, "name": "a"}], "images": [{"id": ')
        build_bank(tmp_path / "broken.json", tmp_path / "b", progress=False)


# ---------------------------------------------------------------- caching and determinism


def test_bank_is_deterministic_cached_and_keyed(tmp_path):
    path = write(tmp_path, source(BAD))
    build_bank(path, tmp_path / "one", OPTS, progress=False)
    build_bank(path, tmp_path / "two", OPTS, progress=False)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert "meta.json" in files and len(files) == 18
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)

    bank_dir = ensure_bank(path, tmp_path / "cache", OPTS, progress=False)
    assert bank_dir.parent == tmp_path / "cache" / "banks" and bank_dir.name == bank_key(
        Bank.load(bank_dir).meta["source"]["sha256"], OPTS)
    assert all((bank_dir / f).read_bytes() == (tmp_path / "one" / f).read_bytes() for f in files)
    stamp = (bank_dir / "meta.json").stat().st_mtime_ns
    assert ensure_bank(path, tmp_path / "cache", OPTS, progress=False) == bank_dir
    assert (bank_dir / "meta.json").stat().st_mtime_ns == stamp
    other = ensure_bank(path, tmp_path / "cache", BankOptions(min_area=10), progress=False)
    assert other != bank_dir and Bank.load(other).meta["rejected"]["too_small"] == 0
    assert sorted(p.name for p in (tmp_path / "cache" / "banks").iterdir()) == sorted([bank_dir.name, other.name])


def test_bank_options_may_be_a_dict_of_their_fields_as_run_settings_take_them(tmp_path):
    path = write(tmp_path, source(BAD))
    as_dict = ensure_bank(path, tmp_path / "cache", {"min_area": 10}, progress=False)
    assert as_dict == ensure_bank(path, tmp_path / "cache", BankOptions(min_area=10), progress=False)
    assert build_bank(path, tmp_path / "one", {"min_area": 10}, progress=False) == Bank.load(as_dict).meta
    for bad, words in (({"min_aera": 10}, "options: BankOptions.__init__() got an unexpected keyword argument "
                                          "'min_aera'"),
                       ({"min_area": -1}, "bank option min_area must be a non-negative integer, got -1"),
                       ([10, 2, 2], "options must be a BankOptions or a dict of its fields, got [10, 2, 2]")):
        for call in (lambda: ensure_bank(path, tmp_path / "cache", bad, progress=False),
                     lambda: build_bank(path, tmp_path / "two", bad, progress=False)):
            with pytest.raises(OccsynthError, match=re.escape(words)):
                call()
    assert not (tmp_path / "two").exists()


def test_loading_refuses_pickles_and_damaged_banks(tmp_path):
    path = write(tmp_path, source())
    good = tmp_path / "good"
    build_bank(path, good, OPTS, progress=False)

    def damaged(name):
        d = tmp_path / name
        shutil.copytree(good, d)
        return d

    d = damaged("pickled")
    np.save(d / "ann_id.npy", np.array([{"__reduce__": "boom"}] * 8, dtype=object), allow_pickle=True)
    with pytest.raises(OccsynthError, match="ann_id.npy: unreadable bank array"):
        Bank.load(d)
    d = damaged("float")
    np.save(d / "ann_category.npy", np.zeros(8, np.float64))
    with pytest.raises(OccsynthError, match="expected a 1-d int64 array"):
        Bank.load(d)
    d = damaged("short")
    np.save(d / "ann_area.npy", np.zeros(3, np.int64))
    with pytest.raises(OccsynthError, match="damaged cutout bank"):
        Bank.load(d)
    d = damaged("missing")
    (d / "rle_blob.npy").unlink()
    with pytest.raises(OccsynthError, match="rle_blob.npy"):
        Bank.load(d)
    with pytest.raises(OccsynthError, match="not a readable cutout bank"):
        Bank.load(tmp_path / "nowhere")


def _edit_array(bank_dir, name, edit):
    value = np.load(bank_dir / f"{name}.npy")
    np.save(bank_dir / f"{name}.npy", edit(value.copy()), allow_pickle=False)


def _edit_meta(bank_dir, key, value):
    meta = json.loads((bank_dir / "meta.json").read_text())
    (bank_dir / "meta.json").write_text(json.dumps(dict(meta, **{key: value})))


def _set_last(value, last):
    value[-1] = last
    return value


@pytest.mark.parametrize("damage, problem", [
    (lambda d: _edit_array(d, "cutout_index", lambda v: _set_last(v, 8)), "cutout index"),        # 8 annotations
    (lambda d: _edit_array(d, "ann_image", lambda v: _set_last(v, -1)), "annotation image indices"),
    (lambda d: _edit_array(d, "ann_image", lambda v: _set_last(v, 3)), "annotation image indices"),  # 3 images
    (lambda d: _edit_array(d, "rle_blob", lambda v: v[:-1]), "RLE blob"),
    (lambda d: _edit_array(d, "file_name_blob", lambda v: v[:-1]), "file name blob"),
    (lambda d: _edit_array(d, "image_ann_offsets", lambda v: _set_last(v, 7)), "image annotation ranges"),
    (lambda d: _edit_meta(d, "num_images", 4), "meta.json"),                                      # of 3 images
    (lambda d: _edit_meta(d, "num_images", -1), "meta.json"),
], ids=["cutout-past-the-end", "negative-image", "image-past-the-end", "short-rle-blob", "short-name-blob",
        "annotation-ranges", "more-backgrounds-than-images", "negative-backgrounds"])
def test_a_bank_whose_tables_disagree_is_refused_naming_what(tmp_path, damage, problem):
    """Each cheap consistency check of Bank.load: a bank that fails one would fail (or read wrong masks) deep inside
    a worker instead."""
    bank_dir = tmp_path / "bank"
    build_bank(write(tmp_path, source()), bank_dir, OPTS, progress=False)
    Bank.load(bank_dir)
    damage(bank_dir)
    with pytest.raises(OccsynthError) as exc:
        Bank.load(bank_dir)
    assert str(exc.value) == f"{bank_dir}: damaged cutout bank ({problem}); delete it to rebuild"


def test_bank_command_prints_kept_rejected_and_skipped(tmp_path):
    path = write(tmp_path, source(BAD))
    result = CliRunner().invoke(occsynth_main, ["bank", "--ann", str(path), "--cache-dir", str(tmp_path / "c"),
                                                "--min-area", "50", "--quiet"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "kept 4 complete instances" in out and "3 car" in out and "18 dog" in out and "toothbrush" not in out
    assert "1  crowd" in out and "1  overlapped" in out
    assert "annotations file: skipped 12 bad records" in out and errors.UNKNOWN_IMAGE in out
    assert f"bank: {tmp_path / 'c' / 'banks'}" in out


def test_bank_command_options_reach_the_bank_it_builds(tmp_path):
    """--border-margin and --touch-margin are both whole pixel counts: swapped, the command would build (and cache)
    the bank of other options without a word."""
    path = write(tmp_path, source())
    result = CliRunner().invoke(occsynth_main, ["bank", "--ann", str(path), "--cache-dir", str(tmp_path / "c"),
                                                "--min-area", "50", "--border-margin", "3", "--touch-margin", "4",
                                                "--quiet"])
    assert result.exit_code == 0, result.output
    bank_dir = result.output.splitlines()[-1].removeprefix("bank: ")
    assert Bank.load(bank_dir).meta["options"] == {"min_area": 50, "border_margin": 3, "touch_margin": 4}


def test_bank_command_refuses_an_image_root_without_the_source_images_and_caches_no_store(tmp_path, demo_source):
    """As generate does: a wrong --images would otherwise be cached as a store of no pixels (exit 0)."""
    ann, root = demo_source
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    cache = tmp_path / "c"
    result = CliRunner().invoke(occsynth_main, ["bank", "--ann", str(ann), "--images", str(wrong),
                                                "--cache-dir", str(cache), "--quiet"])
    assert result.exit_code == 2, result.output
    first = Bank.load(next((cache / "banks").iterdir())).image_record(0)["file_name"]
    assert result.output.splitlines()[-1] == (
        f"Error: none of 20 sampled source images exists under {wrong} (e.g. {wrong / first}); "
        "is image_root/--images the folder that the file_name entries are relative to?")
    assert not (cache / "cutout-pixels").exists()


@pytest.mark.parametrize("annotations, found", [({}, "an object"), (None, "a null")])
def test_a_bank_of_annotations_that_are_not_a_list_is_refused(tmp_path, demo_source, annotations, found):
    data = json.loads(demo_source[0].read_text())
    path = tmp_path / "in.json"
    path.write_text(json.dumps(dict(data, annotations=annotations)))
    with pytest.raises(OccsynthError, match=f"'annotations' is {found}, expected a list"):
        build_bank(path, tmp_path / "bank", progress=False)
    path.write_text(json.dumps(dict(data, annotations=[])))  # an empty list is a bank of no cutouts
    assert build_bank(path, tmp_path / "bank2", progress=False)["num_annotations"] == 0


def test_annotations_that_are_not_a_list_are_refused_beside_a_skipped_image_record(tmp_path, demo_source):
    """A skipped bad record must not hide that the annotations are no list: an empty bank would be built."""
    data = json.loads(demo_source[0].read_text())
    path = tmp_path / "in.json"
    path.write_text(json.dumps(dict(data, images=[*data["images"], {"id": "bad"}], annotations={})))
    with pytest.raises(OccsynthError, match=r"in\.json: not a COCO file: 'annotations' is an object, expected a list"):
        build_bank(path, tmp_path / "bank", progress=False)
    assert not (tmp_path / "bank").exists()
    result = CliRunner().invoke(occsynth_main, ["bank", "--ann", str(path), "--cache-dir", str(tmp_path / "c"),
                                                "--quiet"])
    assert result.exit_code == 2 and "'annotations' is an object, expected a list" in result.output, result.output


def test_why_a_bank_has_no_cutout_reads_as_words_not_json():
    from occsynth.bank import no_cutouts_reason
    meta = {"num_annotations": 1, "rejected": {"touches the border": 1, "occluded": 0},
            "skipped": {"counts": {}, "examples": {}}}
    assert no_cutouts_reason(meta) == "1 annotation read; not complete: touches the border=1"
