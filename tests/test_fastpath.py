"""The generator's box + crop fast path gives exactly what the full-size functions give."""
import functools
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from occsynth import masks
from occsynth.bench import textured_source
from occsynth.compose import compose, compose_boxed
from occsynth.generate import instance_annotation
from occsynth.occluders import layer_occluders, layer_occluders_boxed
from occsynth.schedule import CompositeOptions


def random_cases(seed, n):
    """(full mask, crop, y0, x0): random boxes anywhere (borders included), random fill, empty and full crops."""
    rng = np.random.default_rng(seed)
    for trial in range(n):
        height, width = (int(v) for v in rng.integers(1, 24, size=2))
        h, w = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = rng.random((h, w)) < [0.0, 0.1, 0.5, 0.9, 1.0][trial % 5]
        full = np.zeros((height, width), bool)
        full[y0:y0 + h, x0:x0 + w] = crop
        yield full, crop, y0, x0


def test_encode_crop_equals_encode_of_the_full_mask():
    for full, crop, y0, x0 in random_cases(0, 2000):
        assert masks.encode_crop(crop, y0, x0, *full.shape) == masks.encode(full)
        assert masks.crop_bbox(crop, y0, x0) == masks.bbox(full)
    # runs that continue from a column's last row into the next column's first row
    full = np.zeros((5, 4), bool)
    full[3:, 0] = full[:, 1] = full[:2, 2] = True
    assert masks.encode_crop(full[:, :3], 0, 0, 5, 4) == masks.encode(full)
    with pytest.raises(ValueError):
        masks.encode_crop(np.ones((3, 3), bool), 3, 0, 5, 5)


def test_encode_crop_of_runs_past_16_bits_equals_encode_of_the_full_mask():
    """Runs and run starts beyond 2**15 and 2**16 (a 300x250 image: 75000 pixels), as COCO-sized images have: the
    crop's runs go to pycocotools as an array, so they must keep their values there (the small random cases never
    reach 2**15)."""
    height, width = 300, 250
    for y0, x0, h, w in ((10, 200, 290, 40), (0, 0, 300, 250), (299, 249, 1, 1), (5, 120, 7, 3)):
        for fill in (1.0, 0.5):
            crop = np.random.default_rng(h * w).random((h, w)) < fill
            full = np.zeros((height, width), bool)
            full[y0:y0 + h, x0:x0 + w] = crop
            assert masks.encode_crop(crop, y0, x0, height, width) == masks.encode(full)


def test_tight_box_and_crop_bbox_equal_the_numpy_versions():
    """cv2.boundingRect path: C-ordered, Fortran-ordered, transposed and strided views, empty masks."""
    for full, crop, y0, x0 in random_cases(3, 1500):
        assert masks.crop_bbox(crop, y0, x0) == masks.bbox(full)
        for view in (full, np.asfortranarray(full), full.T, full[::2, 1:], full[:, ::-1]):
            x, y, w, h = masks.bbox(view)
            assert masks.tight_box(view) == (None if w == 0 else (int(y), int(x), int(y + h), int(x + w)))
    assert masks.tight_box(np.zeros((0, 5), bool)) is None
    assert masks.tight_box(np.array([[0, 2], [0, 0]], np.uint8)) == (0, 1, 1, 2)
    with pytest.raises(ValueError):
        masks.tight_box(np.ones(4, bool))


def test_decode_box_gives_the_tight_box_and_the_mask_inside_it():
    for full, _, _, _ in random_cases(1, 500):
        box, crop = masks.decode_box(masks.encode(full), *full.shape)
        if box is None:
            assert not full.any()
            continue
        y0, x0, y1, x1 = box
        assert masks.bbox(full) == [x0, y0, x1 - x0, y1 - y0] and crop.dtype == bool
        again = np.zeros_like(full)
        again[y0:y1, x0:x1] = crop
        assert np.array_equal(again, full)


def test_layer_occluders_full_and_boxed_equal_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(1, 7))
        full, boxes, crops = [], [], []
        for _ in range(n):
            m = np.zeros((20, 24), bool)
            y0, x0 = int(rng.integers(0, 18)), int(rng.integers(0, 22))
            m[y0:y0 + int(rng.integers(1, 9)), x0:x0 + int(rng.integers(1, 9))] = rng.random() < 0.9
            m &= rng.random(m.shape) < 0.8
            box, crop = masks.decode_box(masks.encode(m), 20, 24)
            full.append(m)
            boxes.append(box or (0, 0, 0, 0))
            crops.append(crop)
        layers = rng.integers(0, 4, size=n)
        brute = [[j for j in range(n) if layers[j] > layers[i] and np.any(full[i] & full[j])] for i in range(n)]
        assert layer_occluders_boxed(boxes, crops, layers) == layer_occluders(full, layers) == brute


def case(seed):
    rng = np.random.default_rng(seed)
    h, w = 80, 96
    background = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    bg = []
    for j in range(3):
        m = np.zeros((h, w), bool)
        y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
        m[y:y + 30, x:x + 25] = True
        bg.append({"mask": m, "category_id": 1, "iscrowd": 0, "source": {"image_id": 1, "annotation_id": j}})
    cutouts = []
    for j in range(3):
        mask = np.zeros((30, 26), bool)
        mask[6:24, 6:20] = True
        mask[6:10, 6:9] = False
        cutouts.append({"rgb": rng.integers(0, 256, size=(30, 26, 3), dtype=np.uint8), "mask": mask,
                        "category_id": 2 + j, "scale": 1.0, "flip": j == 1,
                        "source": {"image_id": 2, "annotation_id": 10 + j}})
    return background, bg, cutouts


@pytest.mark.parametrize("seed", range(6))
def test_compose_boxed_with_crops_matches_compose_with_full_masks(seed):
    options = CompositeOptions()
    background, bg, cutouts = case(seed)
    image, full = compose(background, bg, cutouts, np.random.default_rng(seed), options)
    boxed_bg = []
    for inst in bg:
        box, crop = masks.decode_box(masks.encode(inst["mask"]), *inst["mask"].shape)
        boxed_bg.append({**{k: v for k, v in inst.items() if k != "mask"}, "box": box, "crop": crop})
    image2, boxed = compose_boxed(background, boxed_bg, cutouts, np.random.default_rng(seed), options)
    assert np.array_equal(image, image2) and len(full) == len(boxed)
    h, w = background.shape[:2]
    for a, b in zip(full, boxed):
        assert a["occluders"] == b["occluders"] and a["layer"] == b["layer"]
        assert instance_annotation(a, 7) == instance_annotation(b, 7, (h, w))
        y0, x0, y1, x1 = b["box"]
        assert masks.bbox(a["amodal_mask"]) == [x0, y0, x1 - x0, y1 - y0]


def test_textured_source_keeps_exact_masks_and_makes_distinct_files(demo_source, tmp_path):
    ann, root = demo_source
    src = json.loads(Path(ann).read_text())
    out_ann, out_root = textured_source(ann, root, tmp_path / "tex", long_side=96, copies=2)
    data = json.loads(out_ann.read_text())
    assert len(data["images"]) == 2 * len(src["images"]) == len({im["id"] for im in data["images"]})
    assert len(data["annotations"]) == 2 * len(src["annotations"]) == len({a["id"] for a in data["annotations"]})
    first = {im["id"]: im for im in src["images"]}
    originals = {o["id"]: o for o in src["annotations"]}
    max_ann = max(originals)
    images = {im["id"]: im for im in data["images"]}
    for a in data["annotations"][:20] + data["annotations"][-20:]:
        im = images[a["image_id"]]
        assert max(im["height"], im["width"]) == 96
        orig = originals[(a["id"] - 1) % max_ann + 1]
        o_im = first[orig["image_id"]]
        expected = masks.resize(masks.decode(orig["segmentation"], o_im["height"], o_im["width"]),
                                (im["height"], im["width"]))
        assert np.array_equal(masks.decode(a["segmentation"], im["height"], im["width"]), expected)
    a, b = data["images"][0], data["images"][len(src["images"])]
    assert (out_root / a["file_name"]).read_bytes() != (out_root / b["file_name"]).read_bytes()


def test_textured_source_leaves_out_records_generation_would_skip(demo_source, tmp_path):
    # occsynth bench on a real source: a few bad records (COCO has degenerate polygons) must not stop it
    ann, root = demo_source
    src = json.loads(Path(ann).read_text())
    image = src["images"][0]
    first = next(a for a in src["annotations"] if a["image_id"] == image["id"])
    bad = [{**first, "id": 900001, "segmentation": [[10, 10, 20, 20]]},             # 4 coordinates
           {**first, "id": 900002, "segmentation": None},
           {**first, "id": 900003, "segmentation": {"size": [image["height"], image["width"]], "counts": "0"}},
           {**first, "id": 900004, "image_id": 987654}]                            # unknown image
    src["annotations"] += bad
    src["images"].append({"id": 555, "file_name": "nowhere.jpg"})                 # no size: not an image record
    (tmp_path / "src.json").write_text(json.dumps(src))
    out_ann, _ = textured_source(tmp_path / "src.json", root, tmp_path / "tex", long_side=64)
    data = json.loads(out_ann.read_text())
    kept = {a["id"] for a in data["annotations"]}
    assert kept == {a["id"] for a in src["annotations"]} - {b["id"] for b in bad}
    assert {im["id"] for im in data["images"]} == {im["id"] for im in src["images"]} - {555}


def test_bench_generation_reports_floor_generation_and_sizes(tmp_path):
    from occsynth.bench import bench_generation
    report = bench_generation(num_images=8, workers=1, long_side=240, work_dir=tmp_path, repeat=2)
    r = report["workers_1"]
    assert r["floor_images_per_s"] > 0 and r["generate_images_per_s"] > 0
    assert len(r["runs"]["floor"]) == len(r["runs"]["generate"]) == len(r["runs"]["floor_with_writes"]) == 2
    assert report["repeat"] == 2
    assert r["floor_with_writes_images_per_s"] == max(r["runs"]["floor_with_writes"]) > 0
    from occsynth.bench import filesystem_type
    assert report["work_dir"] == str(tmp_path) and report["work_dir_filesystem"] == filesystem_type(tmp_path)
    assert r["ratio_to_floor_with_writes"] == pytest.approx(
        r["generate_images_per_s"] / r["floor_with_writes_images_per_s"], abs=2e-3)
    assert r["generate_images_per_s"] == max(r["runs"]["generate"])      # the best run is reported
    assert r["floor_images_per_s"] == max(r["runs"]["floor"])
    # the report rounds images/s to 2 decimals and the ratio to 3: compare within that rounding
    assert r["ratio_to_floor"] == pytest.approx(r["generate_images_per_s"] / r["floor_images_per_s"], abs=2e-3)
    assert report["image_size"] == [180, 240] and report["source_images"] >= 8
    assert report["mean_background_jpeg_bytes"] > 0 and report["mean_output_jpeg_bytes"] > 0
    assert report["scaling"] == 1.0
    assert report["cutout_pixels"]["cutouts"] > 0 and report["cutout_pixels"]["mib"] > 0   # built before timing
    if hasattr(os, "sched_getaffinity"):
        assert report["one_worker_pinned"] is True


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_one_worker_runs_on_one_cpu_with_the_threads_it_starts_and_the_pin_is_undone():
    import threading
    from occsynth.bench import one_cpu
    allowed = os.sched_getaffinity(0)
    seen = []
    with one_cpu() as pinned:
        inside = os.sched_getaffinity(0)
        t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))  # a writer thread's view
        t.start()
        t.join()
    assert pinned and len(inside) == 1 and inside <= allowed and seen == [inside]
    assert os.sched_getaffinity(0) == allowed
    with pytest.raises(RuntimeError), one_cpu():
        raise RuntimeError("a failed measurement")
    assert os.sched_getaffinity(0) == allowed


def test_decode_crop_equals_decode_box_and_the_full_decode():
    """Runs -> box + crop without a full-size mask: same box as decode_box, crop == decode(...)[box], borders included."""
    for full, _, _, _ in random_cases(3, 3000):
        rle = masks.encode(full)
        box, crop = masks.decode_crop(rle, *full.shape)
        want_box, want_crop = masks.decode_box(rle, *full.shape)
        assert box == want_box and crop.dtype == bool
        if box is None:
            assert not full.any() and crop.size == 0
            continue
        y0, x0, y1, x1 = box
        assert np.array_equal(crop, want_crop) and np.array_equal(crop, masks.decode(rle, *full.shape)[y0:y1, x0:x1])
    # objects in the image's corners, a full image, one pixel, a run wrapping from one column into the next
    for cells in ([(0, 0)], [(7, 5)], [(0, 5), (7, 0)], [(6, 2), (7, 2), (0, 3), (1, 3)]):
        full = np.zeros((8, 6), bool)
        for y, x in cells:
            full[y, x] = True
        box, crop = masks.decode_crop(masks.encode(full), 8, 6)
        assert (box, crop.tolist()) == (lambda b, c: (b, c.tolist()))(*masks.decode_box(masks.encode(full), 8, 6))
    box, crop = masks.decode_crop(masks.encode(np.ones((5, 4), bool)), 5, 4)
    assert box == (0, 0, 5, 4) and crop.all()


def test_decode_crop_reads_other_segmentation_forms_like_decode_box():
    """Polygons, uncompressed RLE with zero-length runs (not canonical: decode_box's answer), str/bytes counts."""
    cases = [([[1, 1, 9, 1, 9, 6, 1, 6]], 10, 12),
             ({"size": [4, 5], "counts": [0, 3, 0, 2, 5, 0, 10]}, 4, 5),   # zero-length runs mid-way
             ({"size": [4, 5], "counts": [20]}, 4, 5),                      # empty
             ({"size": [4, 5], "counts": [0, 20]}, 4, 5),                   # full
             ({"size": [4, 5], "counts": [3, 4, 13, 0]}, 4, 5)]             # trailing zero-length run
    full = np.zeros((9, 7), bool)
    full[2:5, 1:6] = True
    rle = masks.encode(full)
    cases += [(rle, 9, 7), ({"size": rle["size"], "counts": rle["counts"].encode()}, 9, 7)]
    for seg, h, w in cases:
        box, crop = masks.decode_crop(seg, h, w)
        want_box, want_crop = masks.decode_box(seg, h, w)
        assert box == want_box and np.array_equal(crop, want_crop), seg
    with pytest.raises(masks.DegenerateMask):
        masks.decode_crop({"size": [4, 5], "counts": [3, 4]}, 4, 5)


def test_rle_counts_reads_pycocotools_strings():
    from pycocotools import mask as mask_utils
    rng = np.random.default_rng(4)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 300, size=2))
        runs = rng.integers(1, 3000, size=int(rng.integers(1, 40)))
        runs[0] = int(rng.integers(0, 3))
        total = int(runs.sum())
        counts = mask_utils.frPyObjects({"size": [1, total], "counts": runs.tolist()}, 1, total)["counts"]
        assert masks.rle_counts(counts).tolist() == runs.tolist()
        assert masks.rle_counts(counts.decode()).tolist() == runs.tolist()
    with pytest.raises(masks.DegenerateMask):
        masks.rle_counts(b"1\x7f")


@pytest.mark.parametrize("seed", range(3))
def test_compose_boxed_into_a_reused_buffer_gives_the_same_image(seed):
    options = CompositeOptions()
    background, bg, cutouts = case(seed)
    image, inst = compose_boxed(background, bg, cutouts, np.random.default_rng(seed), options)
    out = np.full_like(background, 77)
    image2, inst2 = compose_boxed(background, bg, cutouts, np.random.default_rng(seed), options, out=out)
    assert image2 is out and np.array_equal(image, image2)
    assert [i["box"] for i in inst] == [i["box"] for i in inst2]
    with pytest.raises(Exception):
        compose_boxed(background, bg, cutouts, np.random.default_rng(seed), options, out=out[:-1])


def test_source_image_paths_resolve_as_resolve_image_path(tmp_path):
    """Per-folder resolution cache: same path or same refusal as coco.resolve_image_path, symlinks included."""
    import os
    from occsynth.coco import resolve_image_path
    from occsynth.errors import BadRecord
    from occsynth.generate import SourceImages
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    for p in (root / "x.jpg", root / "a" / "b" / "y.jpg", tmp_path / "out" / "z.jpg"):
        p.write_bytes(b"1")
    os.symlink(tmp_path / "out" / "z.jpg", root / "a" / "evil.jpg")
    os.symlink(root / "x.jpg", root / "a" / "good.jpg")
    os.symlink(tmp_path / "out", root / "linkdir")
    os.symlink(root / "a" / "b", root / "inner")
    names = ["x.jpg", "a/b/y.jpg", "a/evil.jpg", "a/good.jpg", "linkdir/z.jpg", "inner/y.jpg", "./x.jpg", "a//b/y.jpg",
             "/etc/passwd", "../x.jpg", "a/../x.jpg", " ", "", "missing.jpg", "a/missing.jpg", ".", "nodir/q.jpg"]

    class Records:
        def image_record(self, i):
            return {"file_name": names[i], "height": 1, "width": 1}

    def outcome(f, *args):
        try:
            return f(*args)
        except BadRecord as exc:
            return exc.reason

    sources = SourceImages(root, Records())
    for _ in range(2):  # again from the caches
        assert [outcome(sources.path, i) for i in range(len(names))] == \
            [outcome(resolve_image_path, root, n) for n in names]


def test_threads_sharing_one_worker_cache_give_the_same_set(demo_source, tmp_path):
    """The threading backend shares one SourceImages between threads: per-thread scratch images keep the set identical."""
    from occsynth.generate import RunSettings, generate
    ann, root = demo_source
    settings = RunSettings(num_images=12, seed=5, chunk_size=2)
    files = []
    for name, kwargs in (("one", {}), ("threads", {"workers": 2, "backend": "threading"})):
        out = tmp_path / name
        generate(out, settings, ann_path=ann, image_root=root, cache_dir=tmp_path / "cache", progress=False, **kwargs)
        files.append({str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert files[0] == files[1]


def test_decode_crop_encoded_gives_encode_of_the_mask():
    for full, _, _, _ in random_cases(5, 1500):
        rle = masks.encode(full)
        box, crop, again = masks.decode_crop_encoded(rle, *full.shape)
        assert again == rle and (box, crop.tolist()) == (lambda b, c: (b, c.tolist()))(*masks.decode_crop(rle, *full.shape))
    for seg in ({"size": [4, 5], "counts": [0, 3, 0, 2, 5, 0, 10]}, {"size": [4, 5], "counts": [3, 4, 13, 0]},
                [[1, 1, 4, 1, 4, 3, 1, 3]], {"size": [4, 5], "counts": [20]}):
        assert masks.decode_crop_encoded(seg, 4, 5)[2] == masks.encode(masks.decode(seg, 4, 5))


@pytest.mark.parametrize("seed", range(4))
def test_instance_annotation_with_the_source_encoding_is_unchanged(seed):
    """A background instance carrying 'amodal_rle' (as generation passes it) annotates exactly as one without."""
    options = CompositeOptions()
    background, bg, cutouts = case(seed)
    h, w = background.shape[:2]
    plain, carried = [], []
    for inst in bg:
        inst["mask"][0, :] = seed % 2 == 1   # some masks touch the border
        box, crop, rle = masks.decode_crop_encoded(masks.encode(inst["mask"]), h, w)
        base = {k: v for k, v in inst.items() if k != "mask"}
        plain.append({**base, "box": box, "crop": crop})
        carried.append({**base, "box": box, "crop": crop, "amodal_rle": rle})
    _, a = compose_boxed(background, plain, cutouts, np.random.default_rng(seed), options)
    _, b = compose_boxed(background, carried, cutouts, np.random.default_rng(seed), options)
    assert sum("amodal_rle" in i for i in b) == sum(i["layer"] == 0 for i in b) > 0
    assert [instance_annotation(i, 3, (h, w)) for i in a] == [instance_annotation(i, 3, (h, w)) for i in b]


def test_background_instances_are_decoded_only_where_a_paste_may_cover_them():
    """Given undecoded ('decode_crop', as generation passes them), a background instance that no pasted
    object's box meets is never decoded, and every instance annotates exactly as its decoded form does."""
    options = CompositeOptions()
    untouched = touched = 0
    for seed in range(8):
        background, bg, cutouts = case(seed)
        h, w = background.shape[:2]
        for j, (y, x) in enumerate([(0, 0), (h - 3, w - 4)]):  # small ones in the corners: often left alone
            corner = np.zeros((h, w), bool)
            corner[y:y + 3, x:x + 4] = True
            bg.append({"mask": corner, "category_id": 1, "iscrowd": 0, "source": {"image_id": 1, "annotation_id": 9 + j}})
        decoded, lazy, calls = [], [], []
        for j, inst in enumerate(bg):
            rle = masks.encode(inst["mask"])
            box, crop = masks.decode_crop(rle, h, w)
            base = {k: v for k, v in inst.items() if k != "mask"}
            decoded.append({**base, "box": box, "crop": crop, "amodal_rle": rle})

            def decode(j=j, rle=rle):
                calls.append(j)
                return masks.decode_crop(rle, h, w)

            lazy.append({**base, "box": box, "decode_crop": decode, "amodal_rle": rle,
                         "area": masks.area(inst["mask"]), "bbox": masks.bbox(inst["mask"])})
        image_a, a = compose_boxed(background, decoded, cutouts, np.random.default_rng(seed), options)
        image_b, b = compose_boxed(background, lazy, cutouts, np.random.default_rng(seed), options)
        assert np.array_equal(image_a, image_b)
        assert [instance_annotation(i, 3, (h, w)) for i in a] == [instance_annotation(i, 3, (h, w)) for i in b]
        pasted = [i["box"] for i in b if i["layer"] > 0]
        meets = [any(p[0] < l["box"][2] and l["box"][0] < p[2] and p[1] < l["box"][3] and l["box"][1] < p[3]
                     for p in pasted) for l in lazy]
        assert sorted(set(calls)) == [j for j, m in enumerate(meets) if m]
        image_c, c = compose(background, lazy, cutouts, np.random.default_rng(seed), options)  # full masks
        image_d, d = compose(background, bg, cutouts, np.random.default_rng(seed), options)
        assert np.array_equal(image_c, image_d) and all(
            np.array_equal(x[key], y[key]) for x, y in zip(c, d) for key in ("amodal_mask", "visible_mask"))
        untouched += meets.count(False)
        touched += meets.count(True)
        meets_of = {l["source"]["annotation_id"]: m for l, m in zip(lazy, meets)}
        assert all((i["amodal_crop"] is None) == (not meets_of[i["source"]["annotation_id"]]) for i in b
                   if i["layer"] == 0)
    assert untouched > 0 and touched > 0


def crowded_case(seed):
    """A background with instances all over (crops, undecoded, with and without their encoding) and 3-6
    cutouts, so that pasted objects occlude each other and the background's instances in every way."""
    background, bg, cutouts = case(seed)
    rng = np.random.default_rng(100 + seed)
    h, w = background.shape[:2]
    for j in range(5):
        m = np.zeros((h, w), bool)
        y, x = int(rng.integers(0, h - 5)), int(rng.integers(0, w - 5))
        m[y:y + int(rng.integers(3, 40)), x:x + int(rng.integers(3, 50))] = True
        m &= rng.random(m.shape) < [1.0, 0.7][j % 2]
        bg.append({"mask": m, "category_id": 1, "iscrowd": j == 4, "source": {"image_id": 1, "annotation_id": 5 + j}})
    for j in range(int(rng.integers(0, 4))):
        cutouts.append({**cutouts[j % 3], "scale": float(rng.uniform(0.5, 1.5)), "flip": bool(j % 2)})
    return background, bg, cutouts


@pytest.mark.parametrize("seed", range(12))
def test_encoded_instances_annotate_as_the_crops_do_and_decode_nothing(seed):
    """compose_boxed(encoded=True), as generation calls it: the same image and the same annotations (masks,
    areas, boxes, occluders) as the crops give, with every background instance left undecoded."""
    options = CompositeOptions(max_occlusion=0.9)
    background, bg, cutouts = crowded_case(seed)
    h, w = background.shape[:2]
    decoded, lazy, given, calls = [], [], [], []
    for j, inst in enumerate(bg):
        rle = masks.encode(inst["mask"])
        box, crop = masks.decode_crop(rle, h, w)
        base = {k: v for k, v in inst.items() if k != "mask"}
        decoded.append({**base, "box": box, "crop": crop})
        given.append({**base, "box": box, "crop": crop, "amodal_rle": rle} if j % 2 else decoded[-1])
        lazy.append({**base, "box": box, "decode_crop": lambda j=j: calls.append(j), "amodal_rle": rle,
                     "area": masks.area(inst["mask"]), "bbox": masks.bbox(inst["mask"])})
    image, a = compose_boxed(background, decoded, cutouts, np.random.default_rng(seed), options)
    expected = [instance_annotation(i, 3, (h, w)) for i in a]
    for background_instances in (lazy, given, decoded):
        image2, b = compose_boxed(background, background_instances, cutouts, np.random.default_rng(seed), options,
                                  encoded=True)
        assert np.array_equal(image, image2)
        assert all(i["amodal_crop"] is None and i["visible_crop"] is None for i in b)
        assert [instance_annotation(i, 3, (h, w)) for i in b] == expected
    assert calls == []
    assert any(i["occluders"] for i in a if i["layer"] == 0) and any(i["occluders"] for i in a if i["layer"] > 0)


def edge_scene(seed):
    """A small background (some one row or one column high) with instances from single pixels to the whole
    image (crowd or not) and 1-14 random cutouts that may cover the image: pastes at the borders, shrunk ones,
    more than 8 of them, background instances hidden entirely, boxes that meet where the masks do not."""
    rng = np.random.default_rng(seed)
    h, w = [(int(rng.integers(8, 60)), int(rng.integers(8, 60))), (int(rng.integers(4, 12)), int(rng.integers(20, 90))),
            (1, int(rng.integers(1, 90))), (int(rng.integers(1, 90)), 1)][seed % 4]
    bg = []
    for j in range(int(rng.integers(0, 7))):
        m = np.zeros((h, w), bool)
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        m[y:y + int(rng.integers(1, h + 1)), x:x + int(rng.integers(1, w + 1))] = True
        m &= rng.random(m.shape) < [1.0, 0.5, 0.2][j % 3]
        m[y, x] |= j % 4 == 3 or not m.any()
        m |= j % 7 == 6                                # one covering the whole image
        bg.append({"mask": m, "category_id": 1, "iscrowd": j % 2, "source": {"image_id": 1, "annotation_id": j}})
    cutouts = []
    for j in range(int(rng.integers(1, 15))):
        shape = tuple(int(v) for v in rng.integers(1, 25, size=2))
        mask = rng.random(shape) < rng.uniform(0.2, 1.0)
        mask[shape[0] // 2, shape[1] // 2] = True
        cutouts.append({"rgb": rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8), "mask": mask,
                        "category_id": 2 + j, "scale": float(rng.uniform(0.3, 3.0)), "flip": bool(j % 2)})
    options = CompositeOptions(max_occlusion=float(rng.choice([0.5, 0.8, 0.99])), occlusion=(0.05, 0.45),
                               max_size=float(rng.uniform(0.3, 1.0)), blend=str(rng.choice(["none", "feather"])),
                               max_tries=int(rng.integers(1, 30)))
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), bg, cutouts, options


def test_encoded_instances_in_edge_scenes_annotate_as_the_full_masks_do():
    """compose_boxed(encoded=True) with background instances as full masks, as loose boxes with crops (either
    memory order), with their encoding, and undecoded: the annotations compose() gives from full masks, in scenes
    that reach every case (checked at the end)."""
    seen = {"hidden background": 0, "shrunk": 0, "more than 8": 0, "occluded crowd": 0}
    for seed in range(40):
        background, bg, cutouts, options = edge_scene(seed)
        h, w = background.shape[:2]
        rng = np.random.default_rng(seed)
        loose, given, lazy = [], [], []
        for inst in bg:
            rle = masks.encode(inst["mask"])
            (y0, x0, y1, x1), crop = masks.decode_crop(rle, h, w)
            base = {k: v for k, v in inst.items() if k != "mask"}
            lazy.append({**base, "box": (y0, x0, y1, x1), "amodal_rle": rle, "area": masks.area(inst["mask"]),
                         "bbox": masks.bbox(inst["mask"]), "decode_crop": lambda: pytest.fail("decoded")})
            box = (int(rng.integers(0, y0 + 1)), int(rng.integers(0, x0 + 1)), int(rng.integers(y1, h + 1)),
                   int(rng.integers(x1, w + 1)))
            wide = np.zeros((box[2] - box[0], box[3] - box[1]), np.uint8, order="CF"[seed % 2])
            wide[y0 - box[0]:y1 - box[0], x0 - box[1]:x1 - box[1]] = crop
            loose.append({**base, "box": box, "crop": wide})
            given.append({**loose[-1], "amodal_rle": rle})
        image, full = compose(background, bg, cutouts, np.random.default_rng(seed), options)
        expected = [instance_annotation(i, 3) for i in full]
        for background_instances in (bg, loose, given, lazy):
            image2, b = compose_boxed(background, background_instances, cutouts, np.random.default_rng(seed),
                                      options, encoded=True)
            assert np.array_equal(image, image2) and [instance_annotation(i, 3, (h, w)) for i in b] == expected
        pasted = [a for a in expected if a["layer"] > 0]
        seen["hidden background"] += len(bg) + len(pasted) - len(expected)
        seen["shrunk"] += any(i["paste"]["shrink"] < 1 for i in full if i["layer"] > 0)
        seen["more than 8"] += len(pasted) > 8
        seen["occluded crowd"] += any(a["iscrowd"] and a["occluders"] for a in expected)
    assert min(seen.values()) > 0, seen


def test_complement_and_intersection_equal_the_full_mask_operations():
    rng = np.random.default_rng(5)
    for full, _, _, _ in random_cases(4, 1000):
        other = rng.random(full.shape) < 0.5
        rle = masks.encode(full)
        complement = masks.complement_rle(rle)
        assert complement["counts"].decode() == masks.encode(~full)["counts"]
        both = masks.rle_intersection([masks.encode(other), complement])
        assert both["counts"].decode() == masks.encode(other & ~full)["counts"]
        assert masks.rle_area(both) == masks.area(other & ~full) and masks.rle_bbox(both) == masks.bbox(other & ~full)
    for full in (np.ones((3, 4), bool), np.zeros((3, 4), bool), np.eye(4, dtype=bool)):  # on the first pixel or not
        assert masks.complement_rle(masks.encode(full))["counts"].decode() == masks.encode(~full)["counts"]


def test_complement_of_edge_shapes_runs_and_long_runs():
    """complement_rle rewrites only the first values of the string: masks of 1 to 5 runs (first run empty or not),
    empty and full ones, 1x1, one-row and one-column images, counts as str or bytes, and runs long enough for
    values of several characters and large negative differences (compared as strings; below 2**24, values of
    at most 5 characters: pycocotools' encoder writes one byte past its buffer when all take 6)."""
    rng = np.random.default_rng(21)
    shapes = [(1, 1), (1, 2), (2, 1), (1, 37), (37, 1), (2, 3), (9, 7)]
    for trial in range(3000):
        height, width = shapes[trial % len(shapes)] if trial % 2 else (int(v) for v in rng.integers(1, 40, size=2))
        total = height * width
        cuts = np.sort(rng.choice(total + 1, size=min(int(rng.integers(0, 6)), total + 1), replace=False))
        flat = np.zeros(total, bool)
        for start, end in zip(cuts[0::2], [*cuts[1::2], total][:len(cuts[0::2])]):
            flat[start:end] = True                     # 0-5 runs between random cuts, first pixel on or off
        full = flat.reshape(width, height).T           # column-major, as RLE runs
        rle = masks.encode(full)
        for given in (rle, {"size": rle["size"], "counts": rle["counts"].encode()}):
            complement = masks.complement_rle(given)
            assert masks.decode(complement, height, width).tolist() == (~full).tolist()
            assert complement["counts"].decode() == masks.encode(~full)["counts"]
    for trial in range(2000):
        longest = [2 ** 5, 2 ** 12, 2 ** 20, 2 ** 24 - 1][trial % 4]
        runs = rng.integers(1, longest, size=int(rng.integers(1, 9)), endpoint=True).tolist()
        runs[0] *= trial % 3 > 0 or len(runs) == 1     # an empty first run or not (not the only one)
        if len(runs) > 3:
            runs[1], runs[3] = longest, 1              # a large negative difference two places on
        size = [1, sum(runs)]
        encoded = mask_utils.frPyObjects({"size": size, "counts": runs}, *size)["counts"]
        flipped = runs[1:] if runs[0] == 0 else [0, *runs]
        complement = masks.complement_rle({"size": size, "counts": encoded})["counts"]
        assert complement == mask_utils.frPyObjects({"size": size, "counts": flipped}, *size)["counts"]
        assert masks.rle_counts(complement).tolist() == flipped


def test_a_background_instance_whose_box_only_touches_a_pasted_box_is_never_decoded():
    """Boxes that touch share no pixel: of three instances beside a paste (touching its side, its top or bottom,
    and on its last pixel), only the last is decoded."""
    options = CompositeOptions(blend="none", max_size=1.0)
    background = np.zeros((30, 30, 3), np.uint8)
    cutout = {"rgb": np.full((10, 10, 3), 9, np.uint8), "mask": np.ones((10, 10), bool), "category_id": 2, "scale": 1.0}
    for seed in range(4):
        _, (pasted,) = compose_boxed(background, [], [cutout], np.random.default_rng(seed), options)
        y0, x0, y1, x1 = pasted["box"]
        beside = (y0, x0 - 1, y1, x0) if x0 else (y0, x1, y1, x1 + 1)
        above_or_below = (y0 - 1, x0, y0, x1) if y0 else (y1, x0, y1 + 1, x1)
        calls, lazy = [], []
        for j, (by0, bx0, by1, bx1) in enumerate((beside, above_or_below, (y1 - 1, x1 - 1, y1, x1))):
            mask = np.zeros((30, 30), bool)
            mask[by0:by1, bx0:bx1] = True
            rle = masks.encode(mask)
            lazy.append({"box": (by0, bx0, by1, bx1), "amodal_rle": rle, "area": masks.area(mask),
                         "bbox": masks.bbox(mask), "category_id": 1, "iscrowd": 0, "source": j,
                         "decode_crop": lambda j=j, rle=rle: calls.append(j) or masks.decode_crop(rle, 30, 30)})
        _, instances = compose_boxed(background, lazy, [cutout], np.random.default_rng(seed), options)
        assert calls == [2]
        assert [(i["source"], i["amodal_crop"]) for i in instances[:2]] == [(0, None), (1, None)]
        assert [i["layer"] for i in instances] == [0, 0, 1]  # the one on the paste's pixel is hidden: dropped


def test_pycocotools_polygon_encoding_is_already_canonical():
    """The bank stores polygons' RLE as pycocotools makes it, and generation copies that string to the
    output: it must be the one masks.encode writes for the decoded mask (random, overlapping, multi-part)."""
    rng = np.random.default_rng(7)
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(5, 60, size=2))
        parts = [rng.uniform(-3, [w + 3, h + 3], size=(int(rng.integers(3, 9)), 2)).ravel().tolist()
                 for _ in range(int(rng.integers(1, 4)))]
        rle = masks.to_rle(parts, h, w)
        counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
        assert counts == masks.encode(masks.decode(parts, h, w))["counts"]


def test_floor_with_writes_writes_each_encoded_background_once(tmp_path):
    """The disk's share of the floor: every image decoded, encoded and written to its own file, in order."""
    from occsynth.bench import floor_images_per_second
    from occsynth.coco import encode_image, read_image
    from occsynth.demo import demo_source
    ann, root = demo_source(tmp_path / "demo")
    paths = sorted(str(p) for p in Path(root).rglob("*.jpg"))[:3] * 2   # 6 images, 3 chunks of 2
    out = tmp_path / "written"
    out.mkdir()
    assert floor_images_per_second(paths, 1, quality=80, chunk_size=2, write_to=out) > 0
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.jpg" for i in range(6)]
    for i, path in enumerate(paths):
        assert (out / f"{i:06d}.jpg").read_bytes() == encode_image(read_image(path), ".jpg", 80)


def test_bench_command_prints_both_floors_and_no_scaling_for_one_worker(tmp_path):
    from click.testing import CliRunner
    from cli.occsynth_cli import main as occsynth_main
    result = CliRunner().invoke(occsynth_main, ["bench", "--num-images", "8", "--workers", "1", "--long-side", "240",
                                                "--repeat", "1", "--work-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("workers=1") and "generate/floor" in line for line in lines)
    assert any("floor that also writes its images" in line and "generate/that" in line for line in lines)
    assert not any(line.startswith("scaling") for line in lines)
    assert re.fullmatch(r"cutout pixel store: \d+ cutouts, [\d.]+ MiB, built in [\d.]+ s",
                        next(line for line in lines if line.startswith("cutout pixel store"))), result.output
    from occsynth.bench import ext4_without_journal
    warned = any("ext4 without a journal" in line for line in lines)
    assert warned == ext4_without_journal(tmp_path)      # said exactly where it holds
    assert list(tmp_path.iterdir()) == []   # the bench's sources and outputs are removed when it ends


def test_ext4_without_a_journal_is_told_from_the_journal_folders(tmp_path):
    from occsynth.bench import ext4_without_journal
    devices = tmp_path / "dev"
    devices.mkdir()
    (devices / "vdz").write_bytes(b"")                      # stands in for the block device
    (devices / "mapper").mkdir()
    (devices / "dm-3").write_bytes(b"")
    (devices / "mapper" / "data").symlink_to(devices / "dm-3")
    journals = tmp_path / "jbd2"
    journals.mkdir()
    root = "/zz-occsynth-no-such-folder"
    mounts = tmp_path / "mounts"
    mounts.write_text(f"{devices}/vdz {root}/plain ext4 rw 0 0\n"
                      f"{devices}/mapper/data {root}/lvm ext4 rw 0 0\n"
                      f"tmpfs {root}/shm tmpfs rw 0 0\n"
                      f"/dev/zz-occsynth-gone {root}/root ext4 rw 0 0\n")
    check = functools.partial(ext4_without_journal, mounts=mounts, journals=journals)
    assert check(f"{root}/plain/out") and check(f"{root}/lvm/out")           # no journal folder for either
    assert not check(f"{root}/shm/out") and not check(f"{root}/root/out")    # not ext4; a device not there
    assert not check("/zz-not-mounted-anywhere")
    (journals / "vdz-8").mkdir()
    (journals / "dm-3-8").mkdir()
    assert not check(f"{root}/plain/out") and not check(f"{root}/lvm/out")   # journaled
    assert not ext4_without_journal(f"{root}/plain/out", mounts, tmp_path / "no-jbd2")  # no way to tell


def test_filesystem_type_is_the_deepest_mount_holding_the_path(tmp_path):
    from occsynth.bench import filesystem_type
    mounts = tmp_path / "mounts"
    root = "/zz-occsynth-no-such-folder"  # paths that realpath leaves as they are
    mounts.write_bytes(b"rootfs / rootfs rw 0 0\n"
                       b"/dev/vda / ext4 rw 0 0\n"                      # the later of two on one point is visible
                       + f"tmpfs {root}/shm tmpfs rw 0 0\n".encode()
                       + f"server:/x {root}/my\\040data nfs4 rw 0 0\n".encode()
                       + f"server:/y {root}/back\\134slash\\011tab nfs rw 0 0\n".encode()
                       + f"fuse {root}/".encode() + b"caf\xe9 fuse rw 0 0\n"   # not UTF-8
                       b"broken line\n")
    assert filesystem_type(f"{root}/home", mounts) == "ext4"
    assert filesystem_type(f"{root}/shm", mounts) == "tmpfs" and filesystem_type(f"{root}/shm/a/b", mounts) == "tmpfs"
    assert filesystem_type(f"{root}/shmother", mounts) == "ext4"        # a prefix of the name is not a mount
    assert filesystem_type(f"{root}/my data/run", mounts) == "nfs4"     # escaped space
    assert filesystem_type(f"{root}/back\\slash\ttab/x", mounts) == "nfs"
    assert filesystem_type(os.fsdecode(root.encode() + b"/caf\xe9/x"), mounts) == "fuse"
    assert filesystem_type("/", tmp_path / "no-such-table") is None


@pytest.mark.parametrize("spoil, words", [
    (lambda d: [im.pop("height") for im in d["images"]],
     ["no valid image records", "e.g. image record", "'height' missing or not int"]),
    (lambda d: d["images"][0].update(file_name="../outside.jpg"), ["file_name points outside the image root"]),
])
def test_bench_on_a_bad_source_names_the_users_file_not_its_temporary_copy(demo_source, tmp_path, spoil, words):
    from click.testing import CliRunner
    from cli.occsynth_cli import main as occsynth_main
    ann, root = demo_source
    data = json.loads(Path(ann).read_text())
    spoil(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    work = tmp_path / "work"
    work.mkdir()
    result = CliRunner().invoke(occsynth_main, ["bench", "--ann", str(bad), "--images", str(root), "--num-images",
                                                "8", "--workers", "1", "--repeat", "1", "--work-dir", str(work), "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {bad}: ") and all(w in result.output for w in words), result.output
    assert str(work) not in result.output and list(work.iterdir()) == []


def test_bench_names_its_steps_unless_quiet(tmp_path, monkeypatch):
    from occsynth.bench import bench_generation
    for progress in (True, False):
        err = io.StringIO()
        monkeypatch.setattr("sys.stderr", err)
        bench_generation(num_images=8, workers=1, long_side=240, work_dir=tmp_path, repeat=1, progress=progress)
        steps = re.findall(r"bench: ([^:]+?): +\d+%\|[^|]*\| (\d+)/(\d+)", err.getvalue())
        if not progress:
            assert err.getvalue() == ""
            continue
        named = list(dict.fromkeys(name for name, _, _ in steps))
        assert named == ["source", "bank", "cutout pixels", "floor, 1 worker (run 1 of 1)",
                         "floor with writes, 1 worker (run 1 of 1)", "generate, 1 worker (run 1 of 1)"], err.getvalue()
        assert (steps[-1][1], steps[-1][2]) == ("6", "6")  # every step counted as done at the end


def test_bench_refuses_an_image_count_past_the_maximum_before_writing_any_source_copy(tmp_path, monkeypatch):
    """The count was checked only after ceil(count / 24) textured copies of the demo source had been asked for."""
    from click.testing import CliRunner
    from cli.occsynth_cli import main as occsynth_main
    from occsynth import bench
    from occsynth.errors import OccsynthError
    from occsynth.generate import MAX_IMAGES

    monkeypatch.setattr(bench, "textured_source", lambda *a, **k: pytest.fail("source copies were written"))
    with pytest.raises(OccsynthError, match=f"num_images must be a whole number between 1 and {MAX_IMAGES}"):
        bench.bench_generation(num_images=MAX_IMAGES + 1, work_dir=tmp_path, progress=False)
    result = CliRunner().invoke(occsynth_main, ["bench", "--num-images", str(MAX_IMAGES + 1), "--work-dir", str(tmp_path)])
    assert result.exit_code == 2 and f"is not in the range 8<=x<={MAX_IMAGES}" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option, value", [("--bank-images", "10000000000000"),
                                           ("--bank-annotations", "100000000000")])
def test_bench_bank_sizes_beyond_its_bounds_are_refused_before_anything_is_written(tmp_path, option, value):
    """A synthetic file of 10^13 images filled the disk record by record; 10^11 annotations stopped with a
    MemoryError traceback after the images were written."""
    from click.testing import CliRunner
    from cli.occsynth_cli import main as occsynth_main
    result = CliRunner().invoke(occsynth_main, ["bench", "--bank", option, value, "--work-dir", str(tmp_path),
                                                "--quiet"])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_bench_bank_refuses_a_work_dir_without_room_for_its_synthetic_file(tmp_path, monkeypatch):
    import shutil
    from occsynth.bench import bench_bank
    from occsynth.errors import NoRoom
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2 ** 30, 2 ** 30 - 2 ** 20, 2 ** 20))
    with pytest.raises(NoRoom, match=rf"{re.escape(str(tmp_path))}.*1\.00 MiB free"):
        bench_bank(1000, 100_000, work_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bench_refuses_a_work_dir_without_room_for_the_sets_it_keeps(tmp_path, monkeypatch):
    """bench keeps every run's images until its end: a large --num-images filled the disk mid-run."""
    import shutil
    from click.testing import CliRunner
    from cli.occsynth_cli import main as occsynth_main
    free = 500 * 2 ** 20  # 500 MiB: 1,200 images x (1 + 12 sets) x 200 kB = 3.1 GB do not fit, 100 images do
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2 ** 40, 2 ** 40 - free, free))
    result = CliRunner().invoke(occsynth_main, ["bench", "--num-images", "1200", "--work-dir", str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "12 sets of 1,200 images" in result.output and "500.00 MiB free" in result.output, \
        result.output
    assert list(tmp_path.iterdir()) == []
    from occsynth.bench import check_generation_bench_room
    check_generation_bench_room(100, 12, tmp_path)  # fits: nothing raised


class _Clock:
    """A perf_counter that moves only when told: the bench's images/s then follow from the durations given."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_bench_with_two_workers_reports_the_best_runs_their_ratios_scaling_and_machine_scaling(tmp_path, monkeypatch):
    """The bench's arithmetic with --workers 2, its measurements replaced by known figures (no worker pool starts)."""
    from types import SimpleNamespace

    from occsynth import bench

    clock = _Clock()
    floors = {(1, False): [50.0, 60.0], (1, True): [30.0, 35.0], (2, False): [100.0, 90.0], (2, True): [70.0, 80.0]}
    seconds = {1: [4.0, 2.0], 2: [1.0, 1.6]}                      # 40 images: 10 and 20 img/s; 40 and 25 img/s
    output_bytes = {1: [500, 700], 2: [1000, 3000]}
    seen = {"paths": [], "warm": [], "generate": []}

    def floor(paths, n, quality, chunk_size, write_to=None):
        assert write_to is None or Path(write_to).is_dir()
        seen["paths"].append(list(paths))
        seen.setdefault("sizes", [os.path.getsize(p) for p in paths])  # the bench's files, removed at its end
        return floors[n, write_to is not None].pop(0)

    def generate(out, settings, *, workers, **kwargs):
        seen["generate"].append(workers)
        clock.now += seconds[workers].pop(0)
        (out / "images").mkdir(parents=True)
        for i, size in enumerate(output_bytes[workers]):
            (out / "images" / f"{i}.jpg").write_bytes(bytes(size))

    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(bench, "floor_images_per_second", floor)
    monkeypatch.setattr(bench, "generate", generate)
    monkeypatch.setattr(bench, "warm_pool", lambda n: seen["warm"].append(n))
    machine = [1.5, 1.9]
    monkeypatch.setattr(bench, "machine_scaling", lambda n: machine.pop(0))
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    report = bench.bench_generation(num_images=40, workers=2, long_side=160, copies=1, work_dir=tmp_path, repeat=2)
    assert seen["generate"] == [1, 2, 1, 2] and seen["warm"] == [2, 2]   # the worker counts take turns
    assert report["workers_1"] == {
        "floor_images_per_s": 60.0, "generate_images_per_s": 20.0, "ratio_to_floor": 0.333,
        "floor_with_writes_images_per_s": 35.0, "ratio_to_floor_with_writes": 0.571,
        "runs": {"floor": [50.0, 60.0], "floor_with_writes": [30.0, 35.0], "generate": [10.0, 20.0]}}
    assert report["workers_2"] == {
        "floor_images_per_s": 100.0, "generate_images_per_s": 40.0, "ratio_to_floor": 0.4,
        "floor_with_writes_images_per_s": 80.0, "ratio_to_floor_with_writes": 0.5,
        "runs": {"floor": [100.0, 90.0], "floor_with_writes": [70.0, 80.0], "generate": [40.0, 25.0]}}
    assert report["scaling"] == 2.0 and report["machine_scaling"] == 1.9 and report["repeat"] == 2
    assert report["mean_output_jpeg_bytes"] == 2000                     # the last run's images (2 workers)
    # 24 source images for 40 generated: some backgrounds repeat, and the report counts the distinct ones
    paths = seen["paths"][0]
    assert all(p == paths for p in seen["paths"]) and len(paths) == 40 and report["source_images"] == 24
    assert report["distinct_backgrounds"] == len(set(paths)) < 40
    assert report["mean_background_jpeg_bytes"] == int(np.mean(seen["sizes"]))
    # the bar counts source, bank, cutout pixels and 2 x (3 measurements x 2 worker counts + machine scaling)
    done = re.findall(r"\| (\d+)/(\d+)", err.getvalue())
    assert done[-1] == ("17", "17"), err.getvalue()
    assert list(tmp_path.iterdir()) == []


def test_machine_scaling_is_one_pinned_worker_time_over_the_workers_time(monkeypatch):
    from types import SimpleNamespace

    from occsynth import bench

    clock, pinned = _Clock(), []

    def run_all(task, chunks, settings, workers, backend):
        if hasattr(os, "sched_getaffinity"):
            pinned.append(len(os.sched_getaffinity(0)) == 1)
        clock.now += {1: 6.0, 3: 2.5}[workers]

    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(bench, "_run_all", run_all)
    assert bench.machine_scaling(3) == pytest.approx(2.4)
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        assert pinned == [True, False]


def test_synthetic_coco_file_holds_the_asked_records_as_valid_json(tmp_path):
    from occsynth.bench import synthetic_coco_file
    from occsynth.categories import COCO_CATEGORIES

    path = synthetic_coco_file(tmp_path / "s.json", num_images=5, num_annotations=30, num_categories=3)
    data = json.loads(path.read_text())
    assert [im["id"] for im in data["images"]] == [1, 2, 3, 4, 5]
    assert data["images"][0] == {"id": 1, "file_name": "000000000001.jpg", "height": 480, "width": 640}
    assert data["categories"] == COCO_CATEGORIES[:3]
    assert [a["id"] for a in data["annotations"]] == list(range(1, 31))
    for ann in data["annotations"]:
        assert 1 <= ann["image_id"] <= 5 and ann["category_id"] in (1, 2, 3) and ann["iscrowd"] == 0
        xs, ys = ann["segmentation"][0][0::2], ann["segmentation"][0][1::2]
        assert 12 <= len(xs) <= 40 and 0 <= min(xs) and max(xs) < 640 and 0 <= min(ys) and max(ys) < 480
        assert ann["bbox"] == pytest.approx([min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], abs=0.02)
    assert list(tmp_path.iterdir()) == [path]                           # written atomically: no leftovers


def test_bench_bank_reports_its_two_childrens_figures_and_their_ratio_and_removes_its_files(tmp_path, monkeypatch):
    from occsynth import bench

    real, calls = bench._run_child, []

    def child(mode, ann, out):
        calls.append((mode, ann.stat().st_size))
        measured = real(mode, ann, out)   # the real child, on the real file
        if mode == "parse":
            assert measured["records"] == 4 + 10
            return {"seconds": 2.0, "peak_rss_mib": 100.0, "records": measured["records"]}
        assert measured["kept"] + sum(measured["rejected"].values()) == 10
        return {"seconds": 5.0, "peak_rss_mib": 5000.0, "kept": measured["kept"]}

    monkeypatch.setattr(bench, "_run_child", child)
    report = bench.bench_bank(4, 10, work_dir=tmp_path, progress=False)
    assert [mode for mode, _ in calls] == ["parse", "bank"]
    assert report["images"] == 4 and report["annotations"] == 10
    assert report["json_mib"] == round(calls[0][1] / 2 ** 20, 1)
    assert report["time_ratio_to_parse"] == 2.5 and report["peak_rss_within_4gib"] is False
    assert report["stream_parse"]["peak_rss_mib"] == 100.0 and report["bank"]["peak_rss_mib"] == 5000.0
    assert list(tmp_path.iterdir()) == []


def test_bench_bank_room_counts_annotations_and_images_at_their_own_sizes(tmp_path, monkeypatch):
    """1,000 images and 10 annotations need about 138 kB (10 x 1000 + 1,000 x 128), not the other way round."""
    import shutil

    from occsynth.bench import check_bank_bench
    from occsynth.errors import NoRoom, OccsynthError

    free = [500_000]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2 ** 40, 2 ** 40 - free[0], free[0]))
    check_bank_bench(1000, 10, tmp_path)  # fits
    free[0] = 100_000
    with pytest.raises(NoRoom, match=r"1,000 images and 10 annotations and its bank need about 138,000 bytes in "):
        check_bank_bench(1000, 10, tmp_path)
    for name, args in (("num_images", (True, 10)), ("num_annotations", (10, True)), ("num_images", (0, 10))):
        with pytest.raises(OccsynthError, match=f"bench --bank: {name} must be a whole number in 1.."):
            check_bank_bench(*args, tmp_path)


def _bench_report(**changes):
    runs = {"floor": [50.0, 60.0], "floor_with_writes": [30.0, 35.0], "generate": [10.0, 20.0]}
    one = {"floor_images_per_s": 60.0, "generate_images_per_s": 20.0, "ratio_to_floor": 0.333,
           "floor_with_writes_images_per_s": 35.0, "ratio_to_floor_with_writes": 0.571, "runs": runs}
    three = {"floor_images_per_s": 150.0, "generate_images_per_s": 52.5, "ratio_to_floor": 0.35,
             "floor_with_writes_images_per_s": 100.0, "ratio_to_floor_with_writes": 0.525,
             "runs": {"floor": [150.0, 120.0], "floor_with_writes": [100.0, 90.0], "generate": [52.5, 40.0]}}
    return {"num_images": 40, "workers": 3, "cpu_count": 4, "work_dir": "/w", "work_dir_filesystem": "tmpfs",
            "work_dir_ext4_without_journal": False, "image_size": [480, 640], "source_images": 24,
            "distinct_backgrounds": 21, "mean_background_jpeg_bytes": 151_400, "mean_output_jpeg_bytes": 160_600,
            "cutout_pixels": {"cutouts": 7, "mib": 1.5, "build_seconds": 0.25}, "workers_1": one, "workers_3": three,
            "one_worker_pinned": True, "machine_scaling": 2.9, "repeat": 2, "scaling": 2.625, **changes}


def test_bench_command_prints_the_report_it_gets_and_passes_its_options_on(monkeypatch):
    from click.testing import CliRunner

    import cli.occsynth_bench_commands as commands
    from cli.occsynth_cli import main as occsynth_main

    calls = []
    report = _bench_report()
    monkeypatch.setattr(commands, "bench_generation", lambda *a, **k: calls.append((a, k)) or report)
    result = CliRunner().invoke(occsynth_main, ["bench", "--workers", "3", "--long-side", "0", "--copies", "2",
                                                "--no-cutout-pixels", "--repeat", "2", "--num-images", "40", "--quiet"])
    assert result.exit_code == 0, result.output
    assert calls == [((None, None), {"num_images": 40, "workers": 3, "long_side": None, "copies": 2,
                                     "cutout_pixels": False, "work_dir": None, "repeat": 2, "progress": False})]
    assert result.output.splitlines() == [
        "outputs written under /w (tmpfs)",
        "40 images of about 640x480 px, 4 CPUs; 24 source images, 21 distinct backgrounds",
        "mean JPEG bytes: background 151 kB, output 161 kB (quality 95)",
        "cutout pixel store: 7 cutouts, 1.5 MiB, built in 0.25 s",
        "workers=1 (pinned to one CPU): floor 60.0 img/s, generate 20.0 img/s, generate/floor 0.33 (best of 2; "
        "generate runs 10, 20)",
        "    floor that also writes its images 35.0 img/s, generate/that 0.57 (the gap between the floors: writing "
        "the images on this disk)",
        "    generate/floor run by run (each run over the floor of its round): 0.20, 0.33",
        "workers=3: floor 150.0 img/s, generate 52.5 img/s, generate/floor 0.35 (best of 2; generate runs 52, 40)",
        "    floor that also writes its images 100.0 img/s, generate/that 0.53 (the gap between the floors: writing "
        "the images on this disk)",
        "    generate/floor run by run (each run over the floor of its round): 0.35, 0.33",
        "scaling 3 workers / 1 worker: 2.62x (a pure-CPU busy loop scales 2.90x on this machine now)"]
    # one run of each, no pin, no store, no machine figure: each is left out of the text rather than made up
    report = _bench_report(repeat=1, one_worker_pinned=False, cutout_pixels=None, work_dir_filesystem=None)
    del report["machine_scaling"]
    result = CliRunner().invoke(occsynth_main, ["bench", "--workers", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "outputs written under /w" and lines[-1] == "scaling 3 workers / 1 worker: 2.62x"
    assert "cutout pixel store: off (each cutout's source image is decoded)" in lines
    assert [line for line in lines if line.startswith("workers=")] == [
        "workers=1: floor 60.0 img/s, generate 20.0 img/s, generate/floor 0.33",
        "workers=3: floor 150.0 img/s, generate 52.5 img/s, generate/floor 0.35"]
    assert calls[-1][1]["long_side"] == 640 and calls[-1][1]["cutout_pixels"] is True


def test_bench_bank_command_prints_the_report_it_gets(monkeypatch):
    from click.testing import CliRunner

    import cli.occsynth_bench_commands as commands
    from cli.occsynth_cli import main as occsynth_main

    calls = []
    report = {"images": 1000, "annotations": 7000, "json_mib": 3.9,
              "stream_parse": {"seconds": 0.52, "peak_rss_mib": 61.4, "records": 8000},
              "bank": {"seconds": 3.04, "peak_rss_mib": 4100.6, "kept": 1234, "rejected": {}},
              "time_ratio_to_parse": 5.85, "peak_rss_within_4gib": False}
    monkeypatch.setattr(commands, "bench_bank", lambda *a, **k: calls.append((a, k)) or report)
    result = CliRunner().invoke(occsynth_main, ["bench", "--bank", "--bank-images", "1000", "--bank-annotations",
                                                "7000", "--quiet"])
    assert result.exit_code == 0, result.output
    assert calls == [((1000, 7000), {"work_dir": None, "progress": False})]
    assert result.output.splitlines() == [
        "synthetic source: 1,000 images, 7,000 annotations, 3.9 MiB JSON",
        "stream parse : 0.5 s, peak RSS 61 MiB",
        "bank build   : 3.0 s, peak RSS 4101 MiB (kept 1234); time ratio to parse 5.85",
        "peak RSS within 4 GiB: NO"]
    report["peak_rss_within_4gib"] = True
    result = CliRunner().invoke(occsynth_main, ["bench", "--bank", "--quiet"])
    assert result.output.splitlines()[-1] == "peak RSS within 4 GiB: yes"
    result = CliRunner().invoke(occsynth_main, ["bench", "--bank", "--quiet", "--json"])
    assert json.loads(result.output) == report


def test_bench_command_takes_ann_and_images_together_or_neither(demo_source, tmp_path):
    from click.testing import CliRunner
    from cli.occsynth_cli import main as occsynth_main

    ann, root = demo_source
    for given in (["--ann", str(ann)], ["--images", str(root)]):
        result = CliRunner().invoke(occsynth_main, ["bench", *given, "--work-dir", str(tmp_path), "--quiet"])
        assert result.exit_code == 2 and "give both --ann and --images, or neither" in result.output, result.output
    assert list(tmp_path.iterdir()) == []
