"""Source images and records of every awkward kind, end to end through `occsynth generate`.

Readable-but-unusual files (grayscale, CMYK, 16-bit PNG, EXIF-rotated) are converted and used;
broken ones (truncated, corrupt, missing, outside the root) and bad records (unknown ids, empty or
degenerate masks) are skipped and counted by reason; `--strict` names the first; malformed JSON is
one clear error. The output of the default run still satisfies `occsynth validate`.
"""
import collections
import json
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
     ["no complete instance to paste", "annotation(s) read", "'category_id'"]),
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
