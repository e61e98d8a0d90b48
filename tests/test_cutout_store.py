"""Cutout pixel store: the same pixels as decoding the source image, the same generated set byte for byte,
bad images skipped by reason, stale files ignored, parallel build identical, cache keys, damaged stores refused."""
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli.occsynth_cli import main as occsynth_main
from occsynth import errors, generate as generate_module, masks
from occsynth.bank import (PIXEL_MARGIN, Bank, BankOptions, CutoutPixels, build_cutout_pixels, context_crop,
                           ensure_bank, ensure_cutout_pixels)
from occsynth.coco import read_image
from occsynth.errors import OccsynthError
from occsynth.generate import RunSettings, SourceImages, generate
from occsynth.schedule import CompositeOptions

SETTINGS = RunSettings(num_images=12, seed=7, chunk_size=4)


def tree_bytes(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def store_files(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


# ---------------------------------------------------------------- a hand-made source with cutouts at the border

H, W = 48, 64


def rect_poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def edge_source(tmp_path):
    """Two noise images (PNG and JPEG); complete objects 2-3 px from the borders, so 16 px of context leaves the image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.jpg"):
        cv2.imwrite(str(root / name), rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8))
    anns = [(1, 1, rect_poly(2, 2, 14, 12)), (2, 1, rect_poly(40, 30, 61, 45)), (3, 1, rect_poly(25, 20, 35, 28)),
            (4, 2, rect_poly(3, 30, 20, 45)), (5, 2, rect_poly(45, 2, 61, 15))]
    data = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                       {"id": 2, "file_name": "sub/b.jpg", "height": H, "width": W}],
            "annotations": [{"id": i, "image_id": im, "category_id": 1 + i % 2, "segmentation": seg, "iscrowd": 0}
                            for i, im, seg in anns],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    ann = tmp_path / "src.json"
    ann.write_text(json.dumps(data))
    return ann, root


def open_sources(ann, root, cache, **kw):
    bank_dir = ensure_bank(ann, cache, BankOptions(min_area=20), progress=False)
    bank = Bank.load(bank_dir)
    pixels = CutoutPixels.load(ensure_cutout_pixels(bank_dir, root, cache, progress=False, **kw), bank)
    return bank, pixels


def cutouts_of_image(bank, image_index):
    return [int(k) for c in bank.cutout_categories() for k in bank.cutouts(c)
            if bank.annotation(int(k))["image_index"] == image_index]


def test_context_crop_of_a_smaller_margin_is_the_centre_of_a_larger_one():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    for _ in range(300):
        y0, x0 = int(rng.integers(0, 19)), int(rng.integers(0, 29))
        box = (y0, x0, int(rng.integers(y0 + 1, 21)), int(rng.integers(x0 + 1, 31)))
        big = context_crop(image, box, PIXEL_MARGIN)
        for m in (0, 1, 5, PIXEL_MARGIN - 1):
            d = PIXEL_MARGIN - m
            assert np.array_equal(context_crop(image, box, m), big[d:big.shape[0] - d, d:big.shape[1] - d])
        ys = np.clip(np.arange(box[0] - 3, box[2] + 3), 0, 19)
        xs = np.clip(np.arange(box[1] - 3, box[3] + 3), 0, 29)
        assert np.array_equal(context_crop(image, box, 3), image[np.ix_(ys, xs)])   # edge replication = clamping


def test_store_gives_exactly_the_crop_of_the_decoded_image_for_every_margin(edge_source, tmp_path):
    ann, root = edge_source
    bank, pixels = open_sources(ann, root, tmp_path / "cache")
    cutouts = [int(k) for c in bank.cutout_categories() for k in bank.cutouts(c)]
    assert len(cutouts) == 5 and all(pixels.stored(k) for k in cutouts)
    with_store = SourceImages(root, bank, pixels=pixels)
    without = SourceImages(root, bank)
    for k in cutouts:
        for margin in (0, 1, 6, PIXEL_MARGIN, PIXEL_MARGIN + 1, 40):
            rgb, mask, ann_k = with_store.cutout(k, margin)
            rgb2, mask2, ann2 = without.cutout(k, margin)
            assert rgb.shape[:2] == mask.shape and np.array_equal(rgb, rgb2) and np.array_equal(mask, mask2)
            assert ann_k == ann2
    # the store served every margin up to PIXEL_MARGIN: only the larger ones decoded a source image
    assert with_store._cached.cache_info().misses == 2 and with_store._cached.cache_info().currsize == 2
    fresh = SourceImages(root, bank, pixels=pixels)
    for k in cutouts:
        fresh.cutout(k, PIXEL_MARGIN)
    assert fresh._cached.cache_info().misses == 0
    # and the pixels are those of the decoded file (PNG: exact; in BGR order, as generation keeps them),
    # edge-replicated outside it
    image = read_image(root / "a.png", bgr=True)
    assert not np.array_equal(image, read_image(root / "a.png"))  # the test tells the two orders apart
    for k in cutouts_of_image(bank, 0):
        box, _ = masks.decode_box(bank.annotation(k)["segmentation"], H, W)
        rgb, _, _ = fresh.cutout(k, PIXEL_MARGIN)
        ys = np.clip(np.arange(box[0] - PIXEL_MARGIN, box[2] + PIXEL_MARGIN), 0, H - 1)
        xs = np.clip(np.arange(box[1] - PIXEL_MARGIN, box[3] + PIXEL_MARGIN), 0, W - 1)
        assert np.array_equal(rgb, image[np.ix_(ys, xs)])


def test_the_store_size_is_known_before_the_build_and_a_disk_too_small_is_refused_first(
        edge_source, demo_source, tmp_path, monkeypatch):
    from occsynth.bank import pixel_store_bytes
    for ann, root in (edge_source, demo_source):
        bank_dir = ensure_bank(ann, tmp_path / "sized", BankOptions(min_area=20), progress=False)
        store = ensure_cutout_pixels(bank_dir, root, tmp_path / "sized", progress=False)
        with CutoutPixels.load(store) as pixels:
            assert pixel_store_bytes(Bank.load(bank_dir)) == pixels.meta["blob_bytes"] == (store / "pixel_blob.bin").stat().st_size
    ann, root = edge_source
    cache = tmp_path / "small-disk"
    bank_dir = ensure_bank(ann, cache, BankOptions(min_area=20), progress=False)
    bank = Bank.load(bank_dir)
    needed = pixel_store_bytes(bank) + 8 * (bank.num_annotations + 1) + 16 * bank.num_images_total  # with its index
    real = shutil.disk_usage
    free = {"bytes": needed - 1}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free["bytes"]))
    with pytest.raises(errors.NoRoom, match=rf"needs {needed:,} bytes in .*cutout-pixels, which has {needed - 1:,} "
                                            r"bytes free: .* go without the store"):
        ensure_cutout_pixels(bank_dir, root, cache, progress=False)
    assert [p.name for p in (cache / "cutout-pixels").iterdir()] == []   # nothing half-built left
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out",
                                                str(tmp_path / "out"), "--cache-dir", str(cache), "--min-area", "20",
                                                "--num-images", "2", "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "the cutout pixel store needs" in result.output and "(--cache-dir DIR, or --no-cutout-pixels)" in result.output
    ok = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out",
                                            str(tmp_path / "out"), "--cache-dir", str(cache), "--min-area", "20",
                                            "--num-images", "2", "--quiet", "--no-cutout-pixels"])
    assert ok.exit_code == 0, ok.output
    free["bytes"] = needed  # just enough
    with CutoutPixels.load(ensure_cutout_pixels(bank_dir, root, cache, progress=False)) as pixels:
        assert pixels.meta["blob_bytes"] == pixel_store_bytes(bank)
    # sizes from a MiB up are given in MiB and GiB
    from occsynth.atomic import format_size
    assert format_size(5 * 2 ** 20 + 2 ** 19) == "5.50 MiB" and format_size(3 * 2 ** 30) == "3.00 GiB"


def test_a_stored_cutout_needs_neither_its_image_nor_its_rle(edge_source, tmp_path, monkeypatch):
    ann, root = edge_source
    bank, pixels = open_sources(ann, root, tmp_path / "cache")
    cutouts = [int(k) for c in bank.cutout_categories() for k in bank.cutouts(c)]
    expected = {k: SourceImages(root, bank).cutout(k, 6) for k in cutouts}
    decoded = []
    monkeypatch.setattr(masks, "decode_crop", lambda *args: decoded.append(args))
    sources = SourceImages(root, bank, pixels=pixels)
    for k in cutouts:
        rgb, mask, _ = sources.cutout(k, 6)
        assert np.array_equal(rgb, expected[k][0]) and np.array_equal(mask, expected[k][1])
    assert decoded == [] and sources._cached.cache_info().misses == 0


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_the_blob_is_read_not_mapped_so_worker_memory_stays_flat(edge_source, tmp_path):
    # mapped pages count in a process's resident size, and joblib restarts a worker that grows
    # 300 MB: over a COCO-size store every worker would be restarted again and again
    ann, root = edge_source
    bank, pixels = open_sources(ann, root, tmp_path / "cache")
    sources = SourceImages(root, bank, pixels=pixels)
    for k in cutouts_of_image(bank, 0) + cutouts_of_image(bank, 1):
        sources.cutout(k, 6)
    blob = str(pixels.store_dir / "pixel_blob.bin")
    assert blob not in Path("/proc/self/maps").read_text()
    assert os.path.realpath(f"/proc/self/fd/{pixels._blob_file.fileno()}") == os.path.realpath(blob)
    pixels.close()
    assert pixels._blob_file.closed


def test_short_reads_are_continued(edge_source, tmp_path, monkeypatch):
    # pread may return less than asked (a signal, a network file system): the rest is read, not refused
    ann, root = edge_source
    bank, pixels = open_sources(ann, root, tmp_path / "cache")
    cutouts = cutouts_of_image(bank, 0) + cutouts_of_image(bank, 1)
    expected = {k: SourceImages(root, bank, pixels=pixels).cutout(k, 6) for k in cutouts}
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, offset: real_pread(fd, min(n, 7), offset))
    sources = SourceImages(root, bank, pixels=pixels)
    for k in cutouts:
        rgb, mask, _ = sources.cutout(k, 6)
        assert np.array_equal(rgb, expected[k][0]) and np.array_equal(mask, expected[k][1])
    pixels.close()


def test_a_blob_cut_short_while_open_is_named(edge_source, tmp_path):
    ann, root = edge_source
    bank, pixels = open_sources(ann, root, tmp_path / "cache")
    last = max(cutouts_of_image(bank, 0) + cutouts_of_image(bank, 1), key=lambda k: pixels._offsets[k])
    with open(pixels.store_dir / "pixel_blob.bin", "r+b") as f:
        f.truncate(int(pixels._offsets[last]) + 10)
    with pytest.raises(OccsynthError, match="pixel_blob.bin is shorter than its index"):
        SourceImages(root, bank, pixels=pixels).cutout(last, 6)
    pixels.close()


@pytest.mark.parametrize("same_size", [False, True])
def test_a_changed_source_file_is_decoded_again(edge_source, tmp_path, same_size):
    """The store keeps each source file's size and modification time: a file rewritten to the same size (other
    pixels in an uncompressed PNG of the same dimensions) is told by its time alone."""
    ann, root = edge_source
    path = root / "a.png"
    stored = [cv2.IMWRITE_PNG_COMPRESSION, 0] if same_size else []  # uncompressed: the size follows the dimensions
    if same_size:
        cv2.imwrite(str(path), np.full((H, W, 3), 10, np.uint8), stored)
    bank, pixels = open_sources(ann, root, tmp_path / "cache")
    k = cutouts_of_image(bank, 0)[0]
    before, _, _ = SourceImages(root, bank, pixels=pixels).cutout(k, 6)
    size = path.stat().st_size
    cv2.imwrite(str(path), np.full((H, W, 3), 77, np.uint8), stored)
    st = path.stat()
    assert (st.st_size == size) == same_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    after, _, _ = SourceImages(root, bank, pixels=pixels).cutout(k, 6)
    assert not np.array_equal(before, after) and np.all(after == 77)


def test_unreadable_images_are_skipped_by_reason_and_strict_names_the_image(edge_source, tmp_path):
    ann, root = edge_source
    (root / "a.png").write_bytes(b"not an image")                       # 3 cutouts
    bank_dir = ensure_bank(ann, tmp_path / "cache", BankOptions(min_area=20), progress=False)
    with pytest.raises(OccsynthError) as no_root:                       # no folder there at all: said so
        ensure_cutout_pixels(bank_dir, tmp_path / "nowhere", tmp_path / "cache", progress=False)
    assert str(no_root.value) == f"{tmp_path / 'nowhere'}: image directory not found"
    with pytest.raises(OccsynthError, match=r"^image file .*a\.png: " + errors.CORRUPT_IMAGE):
        ensure_cutout_pixels(bank_dir, root, tmp_path / "cache", strict=True, progress=False)
    assert not list((tmp_path / "cache" / "cutout-pixels").iterdir()), "a failed build left files behind"
    store = ensure_cutout_pixels(bank_dir, root, tmp_path / "cache", progress=False)
    with CutoutPixels.load(store) as pixels:
        meta = pixels.meta
    assert meta["num_cutouts"] == 5 and meta["num_stored"] == 2
    assert meta["skipped"]["counts"] == {errors.CORRUPT_IMAGE: 3}
    with pytest.raises(OccsynthError, match=r"^image file .*a\.png: "):     # the cached store is refused in strict mode
        ensure_cutout_pixels(bank_dir, root, tmp_path / "cache", strict=True, progress=False)
    (root / "sub" / "b.jpg").unlink()
    shutil.rmtree(store)
    meta = build_cutout_pixels(bank_dir, root, tmp_path / "p2", progress=False, workers=2)
    assert meta["num_stored"] == 0 and meta["skipped"]["counts"] == {errors.CORRUPT_IMAGE: 3, errors.MISSING_FILE: 2}
    # without the pixels, generation finds the same bad files itself
    bank = Bank.load(bank_dir)
    sources = SourceImages(root, bank, pixels=CutoutPixels.load(tmp_path / "p2", bank))
    with pytest.raises(errors.BadRecord, match=errors.MISSING_FILE):
        sources.cutout(cutouts_of_image(bank, 1)[0], 6)


def test_parallel_build_is_byte_identical_and_keys_name_the_image_root(edge_source, tmp_path):
    ann, root = edge_source
    cache = tmp_path / "cache"
    bank_dir = ensure_bank(ann, cache, BankOptions(min_area=20), progress=False)
    one = build_cutout_pixels(bank_dir, root, tmp_path / "one", progress=False, workers=1)
    build_cutout_pixels(bank_dir, root, tmp_path / "two", progress=False, workers=2)
    assert store_files(tmp_path / "one") == store_files(tmp_path / "two")
    assert one["num_stored"] == 5 and one["blob_bytes"] == (tmp_path / "one" / "pixel_blob.bin").stat().st_size
    first = ensure_cutout_pixels(bank_dir, root, cache, progress=False)
    stamp = (first / "meta.json").stat().st_mtime_ns
    assert ensure_cutout_pixels(bank_dir, root, cache, progress=False) == first
    assert (first / "meta.json").stat().st_mtime_ns == stamp
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    second = ensure_cutout_pixels(bank_dir, copy, cache, progress=False)
    assert second != first and second.parent == first.parent == cache / "cutout-pixels"
    assert first.name.startswith(bank_dir.name + "-px") and second.name.startswith(bank_dir.name + "-px")
    assert sorted(p.name for p in (cache / "banks").iterdir()) == [bank_dir.name]   # one annotation bank for both
    other_bank = ensure_bank(ann, cache, BankOptions(min_area=10), progress=False)
    with pytest.raises(OccsynthError, match="another bank"):
        CutoutPixels.load(first, Bank.load(other_bank))


def test_damaged_stores_are_refused(edge_source, tmp_path):
    ann, root = edge_source
    bank_dir = ensure_bank(ann, tmp_path / "cache", BankOptions(min_area=20), progress=False)
    build_cutout_pixels(bank_dir, root, tmp_path / "good", progress=False)

    def damaged(name):
        d = tmp_path / name
        shutil.copytree(tmp_path / "good", d)
        return d

    d = damaged("pickled")
    np.save(d / "pixel_offsets.npy", np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True)
    with pytest.raises(OccsynthError, match="pixel_offsets.npy: unreadable"):
        CutoutPixels.load(d)
    d = damaged("short")
    with open(d / "pixel_blob.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(OccsynthError, match="damaged cutout pixel store"):
        CutoutPixels.load(d)
    d = damaged("decreasing")
    offsets = np.load(d / "pixel_offsets.npy")
    offsets[np.flatnonzero(np.diff(offsets))[0] + 1] += 10 ** 6   # the first crop ends past where the next begins
    np.save(d / "pixel_offsets.npy", offsets)
    with pytest.raises(OccsynthError, match="damaged cutout pixel store"):
        CutoutPixels.load(d)
    d = damaged("shifted")
    offsets = np.load(d / "pixel_offsets.npy")
    stored = np.flatnonzero(np.diff(offsets))
    offsets[stored[0] + 1] += 3                       # first crop 3 bytes too long, the next 3 too short
    np.save(d / "pixel_offsets.npy", offsets)
    bank = Bank.load(bank_dir)
    sources = SourceImages(root, bank, pixels=CutoutPixels.load(d, bank))
    with pytest.raises(OccsynthError, match="damaged pixels"):
        sources.cutout(int(stored[0]), 6)


# ---------------------------------------------------------------- generation: the correctness proof


def decoded_files(monkeypatch):
    """Record every image file generation decodes (in this process)."""
    seen = []
    real = generate_module.read_image

    def counting(path, *args, **kwargs):
        seen.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(generate_module, "read_image", counting)
    return seen


@pytest.mark.parametrize("composite", [CompositeOptions(), CompositeOptions(blend="gaussian", blend_px=4.0),
                                       CompositeOptions(blend="feather", blend_px=6.0)])
def test_generated_set_is_byte_identical_with_and_without_the_store(demo_source, tmp_path, monkeypatch, composite):
    ann, root = demo_source
    settings = RunSettings(num_images=12, seed=7, chunk_size=4, composite=composite)
    cache = tmp_path / "cache"
    seen = decoded_files(monkeypatch)
    generate(tmp_path / "plain", settings, ann_path=ann, image_root=root, cache_dir=cache, progress=False,
             cutout_pixels=False)
    assert not (cache / "cutout-pixels").exists()
    decoded_without = len(seen)
    seen.clear()
    generate(tmp_path / "store", settings, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert tree_bytes(tmp_path / "store") == tree_bytes(tmp_path / "plain")
    data = json.loads((tmp_path / "store" / "annotations.json").read_text())
    backgrounds = {im["background"]["file_name"].split("/")[-1] for im in data["images"]}
    if composite.margin <= PIXEL_MARGIN:
        assert set(seen) == backgrounds and len(seen) < decoded_without    # only backgrounds were decoded
    else:
        assert set(seen) >= backgrounds                                     # margin too large: source images as before


def test_generation_with_the_store_decodes_no_mask(demo_source, tmp_path, monkeypatch):
    """Cutouts come from the store, and background instances stay encoded (compose_boxed's encoded mode): no RLE
    is decoded while rendering, and the set is the one rendered from decoded masks."""
    ann, root = demo_source
    settings = RunSettings(num_images=12, seed=3, chunk_size=4)
    cache = tmp_path / "cache"
    generate(tmp_path / "plain", settings, ann_path=ann, image_root=root, cache_dir=cache, progress=False,
             cutout_pixels=False)
    generate(tmp_path / "first", settings, ann_path=ann, image_root=root, cache_dir=cache, progress=False)  # builds it

    def refuse(*args, **kwargs):
        raise AssertionError("a mask was decoded")

    for name in ("decode", "decode_box", "decode_crop", "decode_crop_encoded"):
        monkeypatch.setattr(masks, name, refuse)
    generate_module._sources.cache_clear()  # a worker's sources keep what they decoded
    generate(tmp_path / "store", settings, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert tree_bytes(tmp_path / "store") == tree_bytes(tmp_path / "plain")


def test_store_with_workers_shards_resume_and_bad_images(demo_source, tmp_path):
    ann, root = demo_source
    src = tmp_path / "src"
    shutil.copytree(root, src / "images")
    data = json.loads(Path(ann).read_text())
    (src / "images" / data["images"][5]["file_name"]).write_bytes(b"garbage")
    (src / "images" / data["images"][9]["file_name"]).unlink()
    ann2 = src / "annotations.json"
    ann2.write_text(json.dumps(data))
    root2 = src / "images"
    settings = RunSettings(num_images=24, seed=2, chunk_size=4)
    plain = tmp_path / "plain"
    generate(plain, settings, ann_path=ann2, image_root=root2, cache_dir=tmp_path / "c1", progress=False,
             cutout_pixels=False)
    expected = tree_bytes(plain)
    generate(tmp_path / "w2", settings, ann_path=ann2, image_root=root2, cache_dir=tmp_path / "c2", workers=2,
             progress=False)
    assert tree_bytes(tmp_path / "w2") == expected
    with CutoutPixels.load(next((tmp_path / "c2" / "cutout-pixels").iterdir())) as pixels:
        meta = pixels.meta
    assert set(meta["skipped"]["counts"]) <= {errors.CORRUPT_IMAGE, errors.MISSING_FILE} and meta["skipped"]["counts"]
    for i in range(2):
        generate(tmp_path / f"s{i}", settings, ann_path=ann2, image_root=root2, cache_dir=tmp_path / "c2",
                 shard=(i, 2), progress=False)
    result = CliRunner().invoke(occsynth_main, ["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out",
                                                str(tmp_path / "merged"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert tree_bytes(tmp_path / "merged") == expected
    resumed = tmp_path / "resumed"
    shutil.copytree(plain, resumed)
    (resumed / "annotations.json").unlink()
    (resumed / "manifest.json").unlink()
    (resumed / "parts" / "chunk-000002.json").unlink()
    generate(resumed, settings, ann_path=ann2, image_root=root2, cache_dir=tmp_path / "c2", progress=False)
    assert tree_bytes(resumed) == expected


def test_bank_command_with_images_stores_and_reports_pixels(edge_source, tmp_path):
    ann, root = edge_source
    (root / "a.png").write_bytes(b"broken")
    args = ["bank", "--ann", str(ann), "--cache-dir", str(tmp_path / "c"), "--min-area", "20", "--quiet"]
    result = CliRunner().invoke(occsynth_main, args + ["--images", str(root), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "cutout pixels: 2 of 5 cutouts stored" in result.output
    assert "cutout source images: skipped 3 bad records" in result.output and errors.CORRUPT_IMAGE in result.output
    assert f"cutout pixels: {tmp_path / 'c' / 'cutout-pixels'}" in result.output
    result = CliRunner().invoke(occsynth_main, args + ["--images", str(root), "--strict"])
    assert result.exit_code == 2 and "\nError: image file " in result.output and "a.png: " in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(occsynth_main, args)
    assert result.exit_code == 0 and "cutout pixels" not in result.output
