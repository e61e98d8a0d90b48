"""Source images and records of every awkward kind, end to end through `occsynth generate`.

Readable-but-unusual files (grayscale, CMYK, 16-bit PNG, EXIF-rotated) are converted and used;
broken ones (truncated, corrupt, missing, outside the root) and bad records (unknown ids, empty or
degenerate masks) are skipped and counted by reason; `--strict` names the first; malformed JSON is
one clear error. The output of the default run still satisfies `occsynth validate`.
"""
import collections
import io
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools.coco import COCO

from cli.occsynth_cli import main as occsynth_main
from occsynth import coco, errors
from occsynth import generate as generate_module
from occsynth.validate import validate


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def awkward_source(demo_source, tmp_path_factory):
    ann, root = demo_source
    src = tmp_path_factory.mktemp("awkward")
    shutil.copytree(root, src / "images")
    data = json.loads(ann.read_text())
    images = data["images"]
    files = {im["id"]: src / "images" / im["file_name"] for im in images}
    originals = {}
    kinds = ["gray", "cmyk", "png16", "exif", "truncated", "corrupt", "missing"]
    for kind, image in zip(kinds, images):
        path = files[image["id"]]
        rgb = _rgb(path)
        originals[kind] = (image["id"], rgb)
        if kind == "gray":
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        elif kind == "cmyk":
            Image.fromarray(rgb).convert("CMYK").save(path, "JPEG", quality=95)
        elif kind == "png16":
            buf = cv2.imencode(".png", (rgb[..., ::-1].astype(np.uint16) * 257))[1]
            path.write_bytes(buf.tobytes())                       # PNG content under a .jpg name
        elif kind == "exif":
            stored = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))  # pixels stored rotated ...
            exif = Image.Exif()
            exif[0x0112] = 6                                        # ... and EXIF says: rotate 90 CW to view
            stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
        elif kind == "truncated":
            data_bytes = path.read_bytes()
            path.write_bytes(data_bytes[: len(data_bytes) // 2])
        elif kind == "corrupt":
            path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        elif kind == "missing":
            path.unlink()
    first = data["annotations"][0]
    data["annotations"] += [
        {**first, "id": 900001, "category_id": 4242},                                   # unknown category
        {**first, "id": 900002, "image_id": 987654},                                    # unknown image
        {**first, "id": 900003, "segmentation": [[0, 0, 1, 1]]},                        # degenerate polygon
        {**first, "id": 900004, "segmentation": []},                                    # empty
    ]
    (src / "annotations.json").write_text(json.dumps(data))
    return src / "annotations.json", src / "images", originals


def test_unusual_but_valid_files_decode_to_the_right_pixels(awkward_source):
    ann, root, originals = awkward_source
    data = json.loads(ann.read_text())
    by_id = {im["id"]: im for im in data["images"]}
    for kind in ("gray", "cmyk", "png16", "exif"):
        image_id, rgb = originals[kind]
        record = by_id[image_id]
        decoded = coco.read_image(root / record["file_name"], (record["height"], record["width"]))
        assert decoded.shape == rgb.shape and decoded.dtype == np.uint8, kind
        tolerance = {"gray": 60, "cmyk": 12, "png16": 0.5, "exif": 6}[kind]
        if kind == "gray":  # colour is gone, brightness stays
            expected = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            assert np.abs(decoded.astype(int) - expected).mean() < 1, kind
        else:
            assert np.abs(decoded.astype(int) - rgb).mean() < tolerance, kind


def test_default_run_skips_and_reports_by_reason_and_stays_valid(awkward_source, tmp_path):
    ann, root, originals = awkward_source
    out = tmp_path / "out"
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out",
                                                str(out), "--num-images", "32", "--cache-dir", str(tmp_path / "c"),
                                                "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    bank = manifest["bank"]["skipped"]["counts"]
    assert bank[errors.UNKNOWN_CATEGORY] == 1 and bank[errors.UNKNOWN_IMAGE] == 1
    assert bank[errors.DEGENERATE_MASK] == 2
    broken = {originals[k][0] for k in ("truncated", "corrupt", "missing")}
    data = json.loads((out / "annotations.json").read_text())
    used = {im["background"]["image_id"] for im in data["images"]} | {a["source"]["image_id"] for a in data["annotations"]}
    assert not used & broken
    reasons = set(manifest["skipped"]["counts"])
    assert reasons <= {errors.TRUNCATED_IMAGE, errors.CORRUPT_IMAGE, errors.MISSING_FILE}
    report = validate(out, progress=False)
    assert report["ok"], {k: v for k, v in report["checks"].items() if v["failures"]}


def test_an_unreadable_background_is_read_once_however_often_it_is_drawn(awkward_source, tmp_path, monkeypatch):
    ann, root, originals = awkward_source
    names = {im["id"]: im["file_name"] for im in json.loads(ann.read_text())["images"]}
    broken = {names[originals[k][0]] for k in ("truncated", "corrupt")}
    reads = collections.Counter()
    real_read = generate_module.read_image

    def counting_read(path, *args, **kwargs):
        reads[str(path.relative_to(root))] += 1
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(generate_module, "read_image", counting_read)
    result = generate_module.generate(tmp_path / "out", generate_module.RunSettings(num_images=64, seed=0),
                                      ann_path=ann, image_root=root, workers=1, cache_dir=tmp_path / "c",
                                      progress=False)
    skipped = result["skipped"]["counts"]
    assert skipped.get(errors.TRUNCATED_IMAGE, 0) + skipped.get(errors.CORRUPT_IMAGE, 0) > len(broken), skipped
    assert all(reads[name] == 1 for name in broken), {name: reads[name] for name in broken}


def test_a_source_image_over_the_pixel_limit_is_skipped_never_decoded(demo_source, tmp_path, monkeypatch):
    """A record claiming 20000x20000 with a matching file would be decoded in full as a background, and its masks
    drawn at that size. Its height and width tell: the bank skips it by reason (--strict stops at it, naming it and
    the file). The limit is lowered here instead: the demo's 150x200 images are over it, the others not."""
    from occsynth import masks

    ann, root = demo_source
    monkeypatch.setattr(masks, "MAX_IMAGE_PIXELS", 150 * 200 - 1)
    images = json.loads(ann.read_text())["images"]
    big = {im["id"] for im in images if im["height"] * im["width"] >= 150 * 200}
    first = next(im for im in images if im["id"] in big)
    decoded = []
    real = coco.cv2.imdecode
    monkeypatch.setattr(coco.cv2, "imdecode", lambda *args: decoded.append(real(*args).shape[:2]) or real(*args))
    result = generate_module.generate(tmp_path / "out", generate_module.RunSettings(num_images=16, seed=0),
                                      ann_path=ann, image_root=root, workers=1, cache_dir=tmp_path / "c",
                                      progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["bank"]["skipped"]["counts"][errors.IMAGE_TOO_LARGE] == len(big) == 7
    assert manifest["bank"]["skipped"]["examples"][errors.IMAGE_TOO_LARGE] == (
        f"image record {first['id']}: image too large (150x200 pixels (height x width), over the limit of 29,999)")
    assert errors.IMAGE_TOO_LARGE not in result["skipped"]["counts"] and (150, 200) not in decoded
    data = json.loads((tmp_path / "out" / "annotations.json").read_text())
    used = {im["background"]["image_id"] for im in data["images"]} | {a["source"]["image_id"] for a in data["annotations"]}
    assert used and not used & big
    strict = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out",
                                                str(tmp_path / "s"), "--num-images", "8", "--strict",
                                                "--cache-dir", str(tmp_path / "c2"), "--quiet"])
    assert strict.exit_code == 2, strict.output
    assert strict.output.startswith(f"Error: {ann}: image record {first['id']}: image too large (150x200 pixels")


def test_strict_run_stops_naming_the_record(awkward_source, tmp_path):
    ann, root, _ = awkward_source
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out",
                                                str(tmp_path / "o"), "--num-images", "8", "--strict",
                                                "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {ann}: annotation 900001") and "Traceback" not in result.output


@pytest.mark.parametrize("content, why", [(b'{"images": [', "malformed JSON"), (b"[1, 2]", "not a COCO file: the top level is an array"),
                                          (b'{"images": []}', "COCO instances file")])
def test_malformed_source_json_is_one_clear_error(tmp_path, content, why):
    (tmp_path / "bad.json").write_bytes(content)
    (tmp_path / "img").mkdir()
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(tmp_path / "bad.json"), "--images",
                                                str(tmp_path / "img"), "--out", str(tmp_path / "o"),
                                                "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and "bad.json" in result.output and why in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("spoil, words", [
    (lambda d: [im.pop("height") for im in d["images"]] + [d["categories"].append({"name": "no id"})],
     ["no valid image records", "malformed record", "e.g. image record", "'height' missing or not int"]),
    (lambda d: [a.update(category_id=float(a["category_id"])) for a in d["annotations"]],
     ["no complete instance to paste", "annotations read", "'category_id'"]),
])
def test_a_source_with_nothing_usable_says_why_without_strict(demo_source, tmp_path, spoil, words):
    """When every record of a kind is bad, the error itself gives the reasons and an example."""
    ann, root = demo_source
    data = json.loads(ann.read_text())
    spoil(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(bad), "--images", str(root), "--out",
                                                str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: {bad}: ") and all(w in result.output for w in words), result.output
    assert not (tmp_path / "o").exists()


def test_a_source_saved_with_a_byte_order_mark_is_read_by_every_command(demo_source, tmp_path):
    """Windows tools save JSON with a UTF-8 BOM; json.load reads it (build-cocoocc did), the streaming
    readers of generate, annotate-occluders and stats refused it as 'invalid char'."""
    ann, root = demo_source
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + ann.read_bytes())
    runs = {"generate": ["generate", "--ann", str(bom), "--images", str(root), "--out", str(tmp_path / "o"),
                         "--num-images", "8", "--cache-dir", str(tmp_path / "c"), "--quiet"],
            "annotate": ["annotate-occluders", "--ann", str(bom), "--out", str(tmp_path / "a.json"), "--quiet"],
            "stats": ["stats", str(bom)]}
    for name, args in runs.items():
        result = CliRunner().invoke(occsynth_main, args)
        assert result.exit_code == 0, (name, result.output)
    generated = COCO(str(tmp_path / "o" / "annotations.json"))
    assert len(generated.imgs) == 8 and generated.anns
    assert len(COCO(str(tmp_path / "a.json")).anns) == len(json.loads(ann.read_text())["annotations"])


def _squares_source(folder, n=4, size=(48, 64)):
    """A tiny source: ``n`` noise images, each with an isolated square (category 1) and rectangle (category 2),
    as polygons; (annotations path, image root, data) - pass --min-area 16 to generate."""
    (folder / "img").mkdir(parents=True)
    h, w = size
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        cv2.imwrite(str(folder / "img" / f"{i}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        anns += [{"id": 10 * i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": 256,
                  "segmentation": [[8, 8, 24, 8, 24, 24, 8, 24]], "bbox": [8, 8, 16, 16]},
                 {"id": 10 * i + 2, "image_id": i + 1, "category_id": 2, "iscrowd": 0, "area": 320,
                  "segmentation": [[36, 10, 52, 10, 52, 30, 36, 30]], "bbox": [36, 10, 16, 20]}]
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (folder / "ann.json").write_text(json.dumps(data))
    return folder / "ann.json", folder / "img", data


def _generate(ann, root, out, cache, *extra):
    return CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out", str(out),
                                              "--num-images", "8", "--min-area", "16", "--pastes", "1", "2",
                                              "--cache-dir", str(cache), "--quiet", *extra])


def test_the_background_drawn_for_an_unreadable_one_is_a_usable_background(tmp_path):
    """An image that lost an annotation to a bad record is a source of cutouts only (as a background it would show
    an unlabelled object): the draw that replaces an unreadable background is among the usable ones too."""
    ann, root, data = _squares_source(tmp_path / "src", n=8)
    for image in data["images"][2:]:  # images 3-8: each loses an annotation, so only images 1 and 2 are backgrounds
        data["annotations"].append({"id": 1000 + image["id"], "image_id": image["id"], "category_id": 1,
                                    "iscrowd": 0, "segmentation": [[1, 2, 3]]})
    ann.write_text(json.dumps(data))
    (root / "0.png").write_bytes(b"garbage")  # image 1
    result = _generate(ann, root, tmp_path / "out", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "out" / "annotations.json").read_text())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["bank"]["skipped"]["counts"] == {errors.DEGENERATE_MASK: 6}
    assert manifest["skipped"]["counts"][errors.CORRUPT_IMAGE] >= 1  # image 1 was drawn, and replaced
    assert {im["background"]["image_id"] for im in out["images"]} == {2}


@pytest.fixture
def no_hang():
    """Turns a read that would block for ever (a named pipe) into a test failure after 20 s."""
    import signal

    def fail(*_):
        raise TimeoutError("blocked reading a source image")
    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_or_a_device_under_an_image_name_is_skipped_not_read(tmp_path, no_hang):
    """A named pipe in the image root blocked generate for ever; a link to a device (a symlink inside the root
    is followed, by design) was read to its end: /dev/zero has none and filled the memory."""
    ann, root, _ = _squares_source(tmp_path / "src")
    (root / "0.png").unlink()
    os.mkfifo(root / "0.png")
    (root / "1.png").unlink()
    os.symlink(os.devnull, root / "1.png")
    with pytest.raises(errors.BadRecord) as caught:
        coco.read_image(root / "0.png", (48, 64))
    assert caught.value.reason == errors.CORRUPT_IMAGE
    assert caught.value.detail == "a named pipe (FIFO), not an image file"
    with pytest.raises(errors.BadRecord) as caught:
        coco.read_image(root / "1.png", (48, 64))
    assert caught.value.detail == "a character device, not an image file"
    with pytest.raises(errors.BadRecord) as caught:
        coco.read_image(root, (48, 64))
    assert caught.value.detail == "a folder, not an image file"
    # the readers that only check that the file is there (training's dataset, build-cocoocc) say the same
    for path, kind in ((root / "0.png", "a named pipe (FIFO)"), (root / "1.png", "a character device"),
                       (root, "a folder")):
        with pytest.raises(errors.BadRecord) as caught:
            coco.require_image_file(path)
        assert (caught.value.reason, caught.value.detail) == (errors.CORRUPT_IMAGE, f"{kind}, not an image file")
    for missing in (root / "nothing.png", root / "2.png" / "under-a-file.png"):
        for read in (coco.require_image_file, coco.read_image):
            with pytest.raises(errors.BadRecord) as caught:
                read(missing)
            assert caught.value.reason == errors.MISSING_FILE and not caught.value.detail
    assert coco.require_image_file(root / "2.png") == root / "2.png"

    result = _generate(ann, root, tmp_path / "o", tmp_path / "c")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert set(manifest["skipped"]["counts"]) == {errors.CORRUPT_IMAGE}
    assert "not an image file" in manifest["skipped"]["examples"][errors.CORRUPT_IMAGE]
    assert len(json.loads((tmp_path / "o" / "annotations.json").read_text())["images"]) == 8
    strict = _generate(ann, root, tmp_path / "s", tmp_path / "c2", "--strict")
    assert strict.exit_code == 2 and "Traceback" not in strict.output
    assert "not an image file" in strict.output and f"image file {root}" in strict.output, strict.output


def test_a_decompression_bomb_is_refused_by_its_header_before_decoding(tmp_path, monkeypatch):
    """A PNG or JPEG whose header claims another size than its record was decoded first and compared after: a
    1 MB PNG of 20000x20000 px took 2.4 GB and 7 s in every worker that drew it. The header is read first."""
    import struct
    import zlib

    def png_claiming(height, width):
        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        return (coco.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))

    decoded = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(coco.cv2, "imdecode", lambda *a: decoded.append(1) or real_imdecode(*a))
    ann, root, data = _squares_source(tmp_path / "src")
    (root / "0.png").write_bytes(png_claiming(20000, 30000))
    with pytest.raises(errors.BadRecord) as caught:
        coco.read_image(root / "0.png", (48, 64))
    assert caught.value.reason == errors.SIZE_MISMATCH and not decoded
    assert caught.value.detail == "file header says 20000x30000, record says 48x64 (height x width)"

    jpeg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(rotated, "JPEG", exif=exif.tobytes())
    assert coco.header_size(jpeg) == (48, 64) and coco.header_size(rotated.getvalue()) == (64, 48)
    assert coco.header_size(png_claiming(7, 9)) == (7, 9) and coco.header_size(b"GIF89a") is None
    assert coco.decode_image(rotated.getvalue(), "x", (48, 64)).shape == (48, 64, 3)  # EXIF turns it upright
    with pytest.raises(errors.BadRecord, match="file header says 48x64, record says 48x65"):
        coco.decode_image(jpeg, "x", (48, 65))

    result = _generate(ann, root, tmp_path / "o", tmp_path / "c")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert set(manifest["skipped"]["counts"]) == {errors.SIZE_MISMATCH}
    assert "file header says 20000x30000" in manifest["skipped"]["examples"][errors.SIZE_MISMATCH]


def test_json_nested_too_deeply_is_one_error(tmp_path):
    """json.load recurses per level: build-cocoocc (which loads its file whole) printed a RecursionError traceback."""
    ann, root, data = _squares_source(tmp_path / "src")
    text = json.dumps(data).replace('"segmentation": [[8, 8, 24, 8, 24, 24, 8, 24]]',
                                    '"segmentation": ' + "[" * 5000 + "]" * 5000, 1)
    ann.write_text(text)
    result = CliRunner().invoke(occsynth_main, ["build-cocoocc", "--ann", str(ann), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and not isinstance(result.exception, RecursionError), result.exception
    assert result.output == (f"Error: {ann}: JSON nested too deeply to read (a COCO file nests a few levels: "
                             "objects in lists in an object)\n")
    assert not (tmp_path / "o").exists()


def test_a_file_name_too_long_to_look_up_is_skipped_not_fatal(tmp_path):
    """One record whose file_name the file system cannot look up (ENAMETOOLONG) stopped generate, bank --images
    and build-cocoocc as a whole ('File name too long') instead of being skipped like any missing image."""
    ann, root, data = _squares_source(tmp_path / "src")
    data["images"][0]["file_name"] = "x" * 300 + ".png"
    data["annotations"][0]["bbox"] = [8, 8, 40, 20]  # image 1's two boxes overlap: COCO-OCC selects it
    data["annotations"][2]["bbox"] = [36, 10, 16, 20]  # and image 2's, which stays
    ann.write_text(json.dumps(data))
    result = _generate(ann, root, tmp_path / "o", tmp_path / "c")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    skipped = json.loads((tmp_path / "o" / "manifest.json").read_text())["skipped"]
    assert set(skipped["counts"]) == {errors.CORRUPT_IMAGE}
    assert skipped["examples"][errors.CORRUPT_IMAGE].endswith("(File name too long)")

    bank = CliRunner().invoke(occsynth_main, ["bank", "--ann", str(ann), "--images", str(root), "--min-area", "16",
                                              "--cache-dir", str(tmp_path / "c2"), "--quiet"])
    assert bank.exit_code == 0 and "cutout pixels: 6 of 8 cutouts stored" in bank.output, bank.output

    for mode in ([], ["--link"]):
        out = tmp_path / f"occ{len(mode)}"
        result = CliRunner().invoke(occsynth_main, ["build-cocoocc", "--ann", str(ann), "--images", str(root),
                                                    "--out", str(out), *mode])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        report = json.loads((out / "report.json").read_text())
        left_out = report["dropped_images"] if mode else report["images_without_file"]
        assert [(d["id"], d["reason"]) for d in left_out] == [(1, errors.MISSING_FILE)]
        assert report["counts"]["selected_images"] == 2


def test_a_file_name_leaving_the_image_root_is_named_by_its_record(tmp_path):
    """--strict stopped with "file_name '/etc/passwd': ..." alone: which of 118k records to fix was left to a
    search. generate (and the pixel store), build-cocoocc and bcnet's dataset now name the image record."""
    ann, root, data = _squares_source(tmp_path / "src")
    data["images"][2]["file_name"] = "/etc/passwd"
    data["annotations"][5].update(segmentation=[[12, 12, 28, 12, 28, 28, 12, 28]], bbox=[12, 12, 16, 16])  # box IoU 0.39
    ann.write_text(json.dumps(data))
    words = "image record 3 (file_name '/etc/passwd'): file_name points outside the image root"
    strict = _generate(ann, root, tmp_path / "strict", tmp_path / "c", "--strict")
    assert strict.exit_code == 2 and f"Error: {words}" in strict.output, strict.output
    for extra in ([], ["--no-cutout-pixels"]):  # the pixel store's skip, and generation's own
        lenient = _generate(ann, root, tmp_path / f"lenient{len(extra)}", tmp_path / f"c{len(extra)}", *extra)
        assert lenient.exit_code == 0 and ("file_name points outside the image root, e.g. image record 3 (file_name "
                                           "'/etc/passwd')\n") in lenient.output, lenient.output
    cocoocc = CliRunner().invoke(occsynth_main, ["build-cocoocc", "--ann", str(ann), "--images", str(root), "--out",
                                                 str(tmp_path / "occ"), "--strict"])
    assert cocoocc.exit_code == 2 and words in cocoocc.output, cocoocc.output
    from bcnet.data import CocoInstances
    dataset = CocoInstances(ann, root)
    assert len(dataset) == 3 and words in dataset.skips.examples[errors.OUTSIDE_ROOT]


def test_a_file_name_that_is_no_unicode_text_is_skipped_by_its_record_not_a_traceback(tmp_path):
    """JSON may spell an unpaired surrogate ("\\ud800"), which json.load keeps and no file name can be encoded
    from: build-cocoocc stopped with a UnicodeEncodeError traceback from os.stat."""
    ann, root, data = _squares_source(tmp_path / "src")
    data["images"][0]["file_name"] = "\ud800.png"
    data["annotations"][0]["bbox"] = [8, 8, 40, 20]  # image 1's two boxes overlap: COCO-OCC selects it
    data["annotations"][2]["bbox"] = [36, 10, 16, 20]  # and image 2's, which stays
    ann.write_text(json.dumps(data))  # written as the escape \ud800
    words = r"image record 1 (file_name '\ud800.png'): file_name points outside the image root"
    for mode in ([], ["--link"]):
        out = tmp_path / f"occ{len(mode)}"
        result = CliRunner().invoke(occsynth_main, ["build-cocoocc", "--ann", str(ann), "--images", str(root),
                                                    "--out", str(out), *mode])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        assert r"1 (\ud800.png: file_name points outside the image root)" in result.output, result.output
        report = json.loads((out / "report.json").read_text())
        assert report["counts"]["selected_images"] == 2
        strict = CliRunner().invoke(occsynth_main, ["build-cocoocc", "--ann", str(ann), "--images", str(root),
                                                    "--out", str(tmp_path / f"strict{len(mode)}"), "--strict", *mode])
        assert strict.exit_code == 2 and f"Error: {words}" in strict.output, strict.output
