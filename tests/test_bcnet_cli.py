"""bcnet train / evaluate / predict on bad input: skip and count by reason, clear errors (exit 2), no tracebacks."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bcnet import checkpoint as ckpt
import manifests
from bcnet import train as T
from cli.bcnet_cli import main as bcnet_main
from datasets import load_annotations, save_annotations, write_dataset
from occsynth import masks as mask_ops
from occsynth.errors import OccsynthError

TINY = {"short": 48, "long_max": 64}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(hand-made set root, untrained tiny checkpoint for its categories)."""
    base = tmp_path_factory.mktemp("cli")
    root = write_dataset(base / "set")
    schedule = T.load_schedule("schedule-tiny", TINY)
    config = T.model_config(schedule)
    torch.manual_seed(0)
    ckpt.save_checkpoint(base / "tiny.pt", model=T.build(6, config), iteration=0, schedule=schedule,
                         model_config={"num_classes": 6, **config}, category_ids=[1, 3, 5, 7, 9], rng=False)
    return root, base / "tiny.pt"


def _copy_set(root, dest):
    copy = write_dataset(dest)
    assert sorted(p.name for p in (copy / "images").iterdir()) == sorted(p.name for p in (root / "images").iterdir())
    return copy


def _evaluate(checkpoint, ann, images, out, *extra):
    return CliRunner().invoke(bcnet_main, ["evaluate", "--checkpoint", str(checkpoint), "--annotations", str(ann),
                                           "--images", str(images), "--name", "hand", "--out", str(out),
                                           "--device", "cpu", "--no-progress", *extra])


def _clean(result, code):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, RuntimeError))


def test_evaluate_with_a_wrong_image_root_is_an_error_naming_the_set_and_file(tiny, tmp_path):
    root, checkpoint = tiny
    result = _evaluate(checkpoint, root / "annotations.json", tmp_path, tmp_path / "e")
    _clean(result, 2)
    assert "set 'hand': none of its images could be read" in result.output
    assert f"{tmp_path / '000000000001.png'}" in result.output
    # named as evaluate_checkpoint takes it and as the command line gives it (README: keyword/--flag)
    assert (f"; check its image root, sets['hand'][1]/--images (now {tmp_path}): file names in "
            f"{root / 'annotations.json'} are relative to it") in " ".join(result.output.split()), result.output
    assert not (tmp_path / "e" / "results.json").exists()


def test_evaluate_of_a_set_whose_file_names_are_all_absolute_says_no_image_root_helps(tiny, tmp_path):
    """A labelling tool's absolute file names: the message said to check --images, which cannot help."""
    root, checkpoint = tiny
    data = load_annotations(root)
    for image in data["images"]:
        image["file_name"] = str((root / "images" / image["file_name"]).absolute())
    (tmp_path / "abs.json").write_text(json.dumps(data))
    result = _evaluate(checkpoint, tmp_path / "abs.json", root / "images", tmp_path / "e")
    _clean(result, 2)
    assert ("): file_name points outside the image root); their file_name entries in "
            f"{tmp_path / 'abs.json'} name no file under any folder (absolute, with '..', or not text): fix those "
            "records to name files relative to one images folder") in " ".join(result.output.split()), result.output
    assert "check its image root" not in result.output


def test_evaluate_degenerate_gt_polygon_becomes_an_ignore_region(tiny, tmp_path):
    root, checkpoint = tiny
    data = load_annotations(root)
    data["annotations"][0]["segmentation"] = [[10, 10, 20, 20]]
    (tmp_path / "degen.json").write_text(json.dumps(data))
    result = _evaluate(checkpoint, tmp_path / "degen.json", root / "images", tmp_path / "e")
    _clean(result, 0)
    assert "hand: skipped bad input: 1\n        1  degenerate or empty segmentation, e.g. annotation " in result.output
    report = json.loads((tmp_path / "e" / "results.json").read_text())["hand"]
    assert report["skipped"]["counts"] == {"degenerate or empty segmentation": 1}
    assert "ignore region" in report["skipped"]["examples"]["degenerate or empty segmentation"]
    assert report["images"] == 3
    strict = _evaluate(checkpoint, tmp_path / "degen.json", root / "images", tmp_path / "e2", "--strict")
    _clean(strict, 2)
    assert f"annotation {data['annotations'][0]['id']}" in strict.output and "degenerate" in strict.output


def test_evaluate_skips_a_corrupt_image_and_strict_names_it(tiny, tmp_path):
    root, checkpoint = tiny
    copy = _copy_set(root, tmp_path / "set")
    bad = copy / "images" / "000000000002.png"
    bad.write_bytes(b"not a png at all")
    result = _evaluate(checkpoint, copy / "annotations.json", copy / "images", tmp_path / "e")
    _clean(result, 0)
    assert "hand: skipped bad input: 1\n        1  unreadable or corrupt image, e.g. image file " in result.output
    report = json.loads((tmp_path / "e" / "results.json").read_text())["hand"]
    assert report["images"] == 2 and report["skipped"]["counts"] == {"unreadable or corrupt image": 1}
    detections = json.loads((tmp_path / "e" / "detections_hand.json").read_text())
    assert all(d["image_id"] != 2 for d in detections)
    strict = _evaluate(checkpoint, copy / "annotations.json", copy / "images", tmp_path / "e2", "--strict")
    _clean(strict, 2)
    assert str(bad) in strict.output and "unreadable or corrupt image" in strict.output
    # every image corrupt: the set has nothing to evaluate
    for path in (copy / "images").iterdir():
        path.write_bytes(b"junk")
    none = _evaluate(checkpoint, copy / "annotations.json", copy / "images", tmp_path / "e3")
    _clean(none, 2)
    assert "none of its images could be read" in none.output and "000000000001.png" in none.output


def test_evaluate_mask_threshold_range(tiny, tmp_path):
    root, checkpoint = tiny
    for value in ("0", "1", "1.5"):
        result = _evaluate(checkpoint, root / "annotations.json", root / "images", tmp_path / "e",
                           "--mask-threshold", value)
        assert result.exit_code == 2 and "--mask-threshold" in result.output


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1"], "base_lr must be > 0, got -1.0"),
    (["--lr", "nan"], "base_lr must be a finite number"),
    (["--momentum", "1"], "momentum must be in [0, 1)"),
    (["--weight-decay", "-0.1"], "weight_decay must be >= 0"),
    (["--iterations", "0"], "iterations must be an integer >= 1"),
    (["--steps", "5,3"], "steps must be strictly increasing"),
    (["--warmup", "-1"], "warmup_iterations must be an integer >= 0"),
    (["--short", "80", "--long-max", "64"], "long_max (64) must be >= short (80)"),
    (["--scale-jitter", "60,40"], "scale_jitter"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--seed", str(2 ** 64)], "seed must be an integer <= 18446744073709551615"),  # was torch's traceback
    (["--lr", "1e300"], "base_lr must be at most 3.4e+38 in size"),  # was torch's traceback at the first step
])
def test_train_refuses_bad_schedule_values(tiny, tmp_path, args, message):
    root, _ = tiny
    result = CliRunner().invoke(bcnet_main, ["train", "--annotations", str(root / "annotations.json"), "--images",
                                             str(root / "images"), "--out", str(tmp_path / "run"), "--schedule",
                                             "schedule-tiny", "--no-progress", *args])
    _clean(result, 2)
    assert message in result.output
    assert not (tmp_path / "run").exists()


def _bad_device_args(command, root, checkpoint, tmp_path):
    if command == "train":
        return ["train", "--annotations", str(root / "annotations.json"), "--images", str(root / "images"),
                "--out", str(tmp_path / "run"), "--schedule", "schedule-tiny", "--no-progress"]
    if command == "evaluate":
        return ["evaluate", "--checkpoint", str(checkpoint), "--annotations", str(root / "annotations.json"),
                "--images", str(root / "images"), "--out", str(tmp_path / "e"), "--no-progress"]
    return ["predict", str(root / "images"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "p"), "--quiet"]


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_bad_device_is_one_clear_error(tiny, tmp_path, command):
    root, checkpoint = tiny
    args = _bad_device_args(command, root, checkpoint, tmp_path)
    result = CliRunner().invoke(bcnet_main, args + ["--device", "bogus"])
    _clean(result, 2)
    assert "Error: --device bogus: not a device" in result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(bcnet_main, args + ["--device", "cuda"])
        _clean(result, 2)
        assert "Error: --device cuda: no CUDA GPU is available on this machine" in result.output


def test_predict_skips_images_the_model_cannot_process(tiny, tmp_path):
    root, checkpoint = tiny
    strip = tmp_path / "strip.png"
    cv2.imwrite(str(strip), np.full((20000, 2, 3), 128, np.uint8))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    good = root / "images" / "000000000001.png"
    result = CliRunner().invoke(bcnet_main, ["predict", str(strip), str(good), str(junk), "--checkpoint",
                                             str(checkpoint), "--out", str(tmp_path / "p"), "--quiet"])
    _clean(result, 0)
    assert result.output.startswith("1 image,")
    assert f"skipped: image file {strip}: image the model cannot process (20000x2 pixels" in result.output
    assert 'skipped bad input: image the model cannot process=1, unreadable or corrupt image=1' \
        in result.output
    listed = json.loads((tmp_path / "p" / "images.json").read_text())
    assert [im["file_name"] for im in listed] == [str(good)] and listed[0]["id"] == 2
    assert len(list((tmp_path / "p" / "pictures").glob("*.png"))) == 1
    # nothing usable: exit 2, nothing written
    result = CliRunner().invoke(bcnet_main, ["predict", str(strip), str(junk), "--checkpoint", str(checkpoint),
                                             "--out", str(tmp_path / "q"), "--quiet"])
    _clean(result, 2)
    assert "none of the 2 input images could be processed" in result.output and str(strip) in result.output
    assert not (tmp_path / "q" / "results.json").exists()


def test_predict_skips_an_image_of_more_pixels_than_the_limit_without_decoding_it(tiny, tmp_path, monkeypatch):
    """A 20000x20000 PNG (a few kilobytes) was decoded to 1.2 GB and run. Here the limit is lowered instead: a PNG
    over it is refused from its header, a BMP (no header read) once decoded, before the model sees either."""
    from occsynth import coco, masks

    root, checkpoint = tiny
    good = root / "images" / "000000000001.png"  # 48x64 = 3,072 pixels
    big = {suffix: tmp_path / f"big{suffix}" for suffix in (".png", ".bmp")}
    for path in big.values():
        cv2.imwrite(str(path), np.full((60, 80, 3), 128, np.uint8))  # 4,800 pixels
    monkeypatch.setattr(masks, "MAX_IMAGE_PIXELS", 4000)
    decoded = []
    real = coco.cv2.imdecode
    monkeypatch.setattr(coco.cv2, "imdecode", lambda *args: decoded.append(1) or real(*args))
    result = CliRunner().invoke(bcnet_main, ["predict", str(big[".png"]), str(good), str(big[".bmp"]),
                                             "--checkpoint", str(checkpoint), "--out", str(tmp_path / "p"), "--quiet"])
    _clean(result, 0)
    assert result.output.startswith("1 image,") and len(decoded) == 2  # the good one and the BMP
    for path in big.values():
        assert (f"skipped: image file {path}: image too large (60x80 pixels (height x width), over the limit of "
                "4,000)\n") in result.output
    assert "skipped bad input: image too large=2\n" in result.output
    listed = json.loads((tmp_path / "p" / "images.json").read_text())
    assert [im["file_name"] for im in listed] == [str(good)]


def test_predict_names_a_folder_without_images_or_that_does_not_exist(tiny, tmp_path):
    _, checkpoint = tiny
    empty = tmp_path / "wrong"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no image")
    args = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "p"), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(bcnet_main, ["predict", str(empty), *args])
    _clean(result, 2)
    assert result.output == (f"Error: no image found in {empty}: no file there (sub-folders included) ends in .jpg, "
                             ".jpeg, .png, .bmp, .tif, .tiff or .webp\n")
    result = CliRunner().invoke(bcnet_main, ["predict", str(tmp_path / "gone"), *args])
    _clean(result, 2)
    assert f"Path '{tmp_path / 'gone'}' does not exist." in result.output
    assert not (tmp_path / "p").exists()


def test_train_prints_what_it_skipped(tiny, tmp_path):
    root, _ = tiny
    copy = _copy_set(root, tmp_path / "set")
    data = load_annotations(copy)
    data["images"].append({"id": 99, "file_name": "missing.png", "height": 48, "width": 64})
    data["annotations"][0]["segmentation"] = [[10, 10, 20, 20]]
    save_annotations(copy, data)
    result = CliRunner().invoke(bcnet_main, ["train", "--annotations", str(copy / "annotations.json"), "--images",
                                             str(copy / "images"), "--out", str(tmp_path / "run"), "--schedule",
                                             "schedule-tiny", "--iterations", "3", "--batch-size", "1",
                                             "--short", "48", "--long-max", "64", "--workers", "0",
                                             "--no-progress"])
    _clean(result, 0)
    lines = result.output.splitlines()
    assert lines[0] == "indexing: skipped bad input: 1"
    assert lines[1] == f"        1  missing image file, e.g. image file {copy / 'images' / 'missing.png'}"
    at = lines.index("skipped bad input: 2")
    # the degenerate polygon is met when its image is drawn (3 draws cover all 3 images once)
    assert lines[at + 1].startswith("        1  degenerate or empty segmentation, e.g. annotation ")
    assert lines[at + 2].startswith("        1  missing image file, e.g. image file ")


def test_pictures_have_small_panel_titles_at_the_top(monkeypatch):
    from bcnet import predict as P

    image = np.full((64, 128, 3), 90, np.uint8)
    output = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
              "masks": torch.zeros(0, 1, 64, 128), "occluder_masks": torch.zeros(0, 1, 64, 128)}
    titled = P.render_prediction(image, output, {}, [1]).astype(int)
    monkeypatch.setattr(P, "TITLE_MIN_SIZE", (10 ** 6, 10 ** 6))
    plain = P.render_prediction(image, output, {}, [1]).astype(int)
    changed = np.argwhere(np.any(titled != plain, axis=2))
    # only the top rows: to row 11 with OpenCV 5's glyphs, row 14 with OpenCV 4's (its descenders reach lower)
    assert changed[:, 0].max() <= 14
    for k, title in enumerate(P.PANEL_TITLES):  # each panel has its caption, white text inside
        inside = changed[(changed[:, 1] >= 128 * k) & (changed[:, 1] < 128 * (k + 1))]
        assert len(inside) > 10 * len(title) // 3
        assert titled[:15, 128 * k:128 * (k + 1)].max() >= 240  # anti-aliased 1 px strokes: 249 at best in OpenCV 4
    # a panel smaller than TITLE_MIN_SIZE gets no title
    small = np.full((20, 30, 3), 90, np.uint8)
    out_small = {**output, "masks": torch.zeros(0, 1, 20, 30), "occluder_masks": torch.zeros(0, 1, 20, 30)}
    monkeypatch.setattr(P, "TITLE_MIN_SIZE", (48, 96))
    assert P.render_prediction(small, out_small, {}, [1])[:, :30].tolist() == small.tolist()


def _train_args(root, out, *extra):
    return ["train", "--annotations", str(root / "annotations.json"), "--images", str(root / "images"), "--out",
            str(out), "--schedule", "schedule-tiny", "--iterations", "1", "--batch-size", "1", "--short", "48",
            "--long-max", "64", "--device", "cpu", "--no-progress", *extra]


def test_bad_backbone_weights_are_one_clear_error(tiny, tmp_path):
    root, checkpoint = tiny
    (tmp_path / "afile").write_text("hello\n")
    schedule = (tmp_path / "weights.toml")
    text = (Path(manifests.__file__).parent / "schedule-tiny.toml").read_text()
    schedule.write_text(text.replace('backbone_weights = ""', f'backbone_weights = "{tmp_path / "afile"}"'))
    expected = "expected a torchvision resnet18 state dict (e.g. from torchvision.models.resnet18(weights=...)"
    cases = [(["--backbone-weights", str(tmp_path / "afile")], "the 'tiny' backbone has no pretrained weights"),
             (["--schedule", str(schedule)], "the 'tiny' backbone has no pretrained weights"),
             (["--backbone", "resnet18", "--backbone-weights", str(tmp_path / "afile")],
              f"not a file torch.load(weights_only=True) can read; {expected}"),
             (["--backbone", "resnet18", "--backbone-weights", str(checkpoint)],
              f"a bcnet training checkpoint, not backbone weights (use init_checkpoint/--init to start from it); {expected}"),
             (["--backbone", "resnet18", "--backbone-weights", str(tmp_path / "none.pt")], "no such file")]
    for i, (extra, words) in enumerate(cases):
        result = CliRunner().invoke(bcnet_main, _train_args(root, tmp_path / f"run{i}", *extra))
        _clean(result, 2)
        file = tmp_path / "afile" if "afile" in " ".join(extra) or "--schedule" in extra else extra[-1]
        assert f"Error: backbone weights {file}: " in result.output and words in result.output, result.output
        assert not (tmp_path / f"run{i}").exists()


@pytest.mark.parametrize("setting, value, allowed, shown", [
    ("detector", '"yolo"', "faster-rcnn, fcos", "'yolo'"),
    ("mask_head", '"bilayer"', "fcn, gcn, bilayer-fcn, bilayer-gcn", "'bilayer'"),
    ("backbone", '"vit"', "resnet50, resnet18, tiny", "'vit'"), ("head_preset", "3", "paper, original", "3")])
def test_bad_model_names_in_a_schedule_file_are_one_clear_error(tiny, tmp_path, setting, value, allowed, shown):
    root, _ = tiny
    text = (Path(manifests.__file__).parent / "schedule-tiny.toml").read_text()
    lines = [f"{setting} = {value}" if line.startswith(f"{setting} =") else line for line in text.splitlines()]
    (tmp_path / "s.toml").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(bcnet_main, _train_args(root, tmp_path / "run", "--schedule", str(tmp_path / "s.toml")))
    _clean(result, 2)
    assert (f"Error: {tmp_path / 's.toml'}: schedule setting {setting} must be one of {allowed}, got {shown}"
            in result.output), result.output
    assert not (tmp_path / "run").exists()


def test_bench_bad_device_is_one_clear_error():
    for device, words in (("bogus", "not a device"), ("cuda:abc", "not a device"), ("meta", "unsupported device")):
        result = CliRunner().invoke(bcnet_main, ["bench", "--backbone", "tiny", "--size", "64", "--device", device])
        _clean(result, 2)
        assert f"Error: --device {device}: {words}" in result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(bcnet_main, ["bench", "--backbone", "tiny", "--size", "64", "--device", "cuda"])
        _clean(result, 2)
        assert "Error: --device cuda: no CUDA GPU is available on this machine" in result.output


def test_predict_refuses_a_score_threshold_that_is_not_a_number(tiny, tmp_path):
    """--score-threshold nan ran, reported '0 at score >= nan' and advised lowering it: no score compares with NaN."""
    from bcnet.predict import predict
    from occsynth.errors import OccsynthError

    root, checkpoint = tiny
    good = root / "images" / "000000000001.png"
    result = CliRunner().invoke(bcnet_main, ["predict", str(good), "--checkpoint", str(checkpoint), "--quiet",
                                             "--out", str(tmp_path / "p"), "--score-threshold", "nan"])
    _clean(result, 2)
    assert "Invalid value for '--score-threshold': 'nan' is not a number in the range 0<=x<=1" in result.output
    assert not (tmp_path / "p").exists()
    for bad in (float("nan"), -0.5, 2.0):
        with pytest.raises(OccsynthError, match=r"score_threshold must be a number in \[0, 1\]"):
            predict(checkpoint, good, tmp_path / "q", score_threshold=bad, progress=False)
    assert not (tmp_path / "q").exists()


def test_predict_labels_detections_with_the_names_the_checkpoint_was_trained_with(tiny, tmp_path, monkeypatch):
    """Predictions were labelled with COCO's names whatever the set: a model of 'thing'/'stuff' drew 'person'."""
    import bcnet.predict as P

    root, checkpoint = tiny
    state = torch.load(checkpoint, weights_only=True)
    named = tmp_path / "named.pt"
    ckpt.save_checkpoint(named, model=T.build(6, T.model_config(state["schedule"])), iteration=0,
                         schedule=state["schedule"], model_config=state["model_config"], category_ids=[1, 3, 5, 7, 9],
                         category_names=["wall", "ball", "coin", "box", "never-pasted"], rng=False)
    seen = []
    real = P.render_prediction
    monkeypatch.setattr(P, "render_prediction", lambda image, output, names, *a, **k: seen.append(names)
                        or real(image, output, names, *a, **k))
    image = root / "images" / "000000000001.png"
    for path, expected in ((named, {1: "wall", 3: "ball", 5: "coin", 7: "box", 9: "never-pasted"}),
                           (checkpoint, {1: "person", 3: "car"})):  # saved before names were kept: COCO's, as then
        _clean(CliRunner().invoke(bcnet_main, ["predict", str(image), "--checkpoint", str(path), "--quiet",
                                               "--out", str(tmp_path / path.stem), "--device", "cpu"]), 0)
        assert expected.items() <= seen[-1].items()


def test_predict_says_how_many_detections_reach_the_threshold(tiny, tmp_path):
    root, checkpoint = tiny
    good = root / "images" / "000000000001.png"
    args = ["predict", str(good), "--checkpoint", str(checkpoint), "--quiet"]
    everything = CliRunner().invoke(bcnet_main, args + ["--out", str(tmp_path / "a"), "--score-threshold", "0"])
    _clean(everything, 0)
    n = len(json.loads((tmp_path / "a" / "results.json").read_text()))
    assert n and f"1 image, {n} detections, {n} at score >= 0.0 (drawn in the pictures)" in everything.output
    nothing = CliRunner().invoke(bcnet_main, args + ["--out", str(tmp_path / "b"), "--score-threshold", "1"])
    _clean(nothing, 0)
    assert f"{n} detections, 0 at score >= 1.0" in nothing.output
    assert "no detection reached --score-threshold: lower it" in nothing.output
    # without pictures the threshold draws nothing: no word of pictures, no advice to lower it
    bare = CliRunner().invoke(bcnet_main, args + ["--out", str(tmp_path / "c"), "--score-threshold", "1",
                                                  "--no-pictures"])
    _clean(bare, 0)
    assert bare.output.startswith(f"1 image, {n} detections, 0 at score >= 1.0 -> ")
    assert "pictures" not in bare.output and "--score-threshold" not in bare.output
    # a rerun into a folder with pictures, without them, removes them and their empty folder
    assert list((tmp_path / "a" / "pictures").iterdir())
    _clean(CliRunner().invoke(bcnet_main, args + ["--out", str(tmp_path / "a"), "--no-pictures"]), 0)
    assert not (tmp_path / "a" / "pictures").exists() and (tmp_path / "a" / "results.json").is_file()
    # from Python, one folder may be given as it is (not taken for a sequence of one-letter paths)
    from bcnet.predict import predict
    report = predict(checkpoint, str(root / "images"), tmp_path / "d", pictures=False, progress=False)
    assert report["images"] == len(list((root / "images").iterdir()))


def test_predict_writes_every_image_of_a_folder_in_name_order_with_its_detections_by_category_id(tmp_path,
                                                                                                 monkeypatch):
    """A model of categories [18, 3] ('dog', 'car') finding the same three objects at scores 0.75, 0.5 and 0.25 in
    every image, at --score-threshold 0.5: images.json lists the folder's images sorted by name with their own
    height and width; results.json holds every detection with its category id (not its label) and its box and mask
    in its image; the pictures label the two that reach the threshold (0.5 too) with the category names."""
    import bcnet.predict as P
    from test_evaluate import FixedModel

    folder = tmp_path / "in"
    sizes = {"b.png": (40, 56), "a/c.png": (36, 50), "d.png": (48, 64)}  # rglob finds a/c.png after b and d
    for name, (h, w) in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), np.full((h, w, 3), 90, np.uint8))
    model = FixedModel([(1, (4, 6, 28, 30)), (2, (0, 0, 3, 3)), (2, (10, 10, 20, 20))], scores=[0.75, 0.5, 0.25])
    monkeypatch.setattr(P, "load_model", lambda checkpoint, device: (
        model, {"category_ids": [18, 3], "category_names": ["dog", "car"]}))
    drawn = []
    real = P.cv2.putText
    monkeypatch.setattr(P.cv2, "putText", lambda image, text, *a, **k: drawn.append(text) or real(image, text, *a, **k))
    report = P.predict("model.pt", folder, tmp_path / "p", score_threshold=0.5, progress=False)
    assert (report["images"], report["detections"], report["above_threshold"]) == (3, 9, 6)
    names = ["a/c.png", "b.png", "d.png"]
    assert json.loads((tmp_path / "p" / "images.json").read_text()) == [
        {"id": k, "file_name": str(folder / name), "height": sizes[name][0], "width": sizes[name][1]}
        for k, name in enumerate(names, start=1)]
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert [(r["image_id"], r["category_id"], r["score"]) for r in results] == [
        (k, category, score) for k in (1, 2, 3) for category, score in ((18, 0.75), (3, 0.5), (3, 0.25))]
    for k, name in enumerate(names):
        first = results[3 * k]
        expected = np.zeros(sizes[name], bool)
        expected[6:30, 4:28] = True
        assert first["bbox"] == [4.0, 6.0, 24.0, 24.0]
        assert np.array_equal(mask_ops.decode(first["segmentation"], *sizes[name]), expected)
    assert [text for text in drawn if text not in P.PANEL_TITLES] == ["dog 0.75", "car 0.50"] * 3


def test_evaluate_of_a_file_without_images_says_so(tiny, tmp_path):
    root, checkpoint = tiny
    copy = _copy_set(root, tmp_path / "set")
    data = load_annotations(copy)
    data["images"] = []
    save_annotations(copy, data)
    result = _evaluate(checkpoint, copy / "annotations.json", copy / "images", tmp_path / "e")
    _clean(result, 2)
    assert "lists no images to evaluate" in result.output and "check its image root" not in result.output


@pytest.mark.parametrize("change, why", [
    (lambda d: d.update(annotations=[]), "it has no annotations"),
    (lambda d: d.update(annotations=[dict(a, iscrowd=1) for a in d["annotations"]]), "are all crowd regions"),
    (lambda d: d.update(categories=d["categories"] + [{"id": 11, "name": "kite"}],
                        annotations=[dict(a, category_id=11) for a in d["annotations"]]),
     "annotations is of a category the model predicts (they are of kite; the model predicts wall, ball, coin, box, "
     "never-pasted)"),
])
def test_evaluate_of_a_file_with_nothing_to_score_names_it_before_predicting(tiny, tmp_path, monkeypatch, change, why):
    """It exited 0 with a table of '-' (pycocotools' -1, "no data")."""
    from bcnet import evaluate as E

    root, checkpoint = tiny
    data = load_annotations(root)
    change(data)
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(data))
    predicted = []
    monkeypatch.setattr(E, "predict_dataset", lambda *args, **kwargs: predicted.append(1) or [])
    result = _evaluate(checkpoint, ann, root / "images", tmp_path / "e")
    _clean(result, 2)
    assert f"Error: set 'hand': {ann}: nothing to score: " in result.output and why in result.output, result.output
    assert predicted == [] and not (tmp_path / "e").exists()


def test_evaluate_whose_readable_images_hold_no_ground_truth_says_so_after_predicting(tiny, tmp_path):
    """Every annotated image unreadable, an image without objects read: pycocotools' -1 for every metric again."""
    import shutil

    root, checkpoint = tiny
    copy = _copy_set(root, tmp_path / "set")
    data = load_annotations(copy)
    shutil.copy(copy / "images" / data["images"][0]["file_name"], copy / "images" / "empty.png")
    data["images"].append(dict(data["images"][0], id=99, file_name="empty.png"))
    save_annotations(copy, data)
    for image in data["images"][:-1]:
        (copy / "images" / image["file_name"]).write_bytes(b"junk")
    result = _evaluate(checkpoint, copy / "annotations.json", copy / "images", tmp_path / "e")
    _clean(result, 2)
    n = len(data["annotations"])
    assert (f"Error: set 'hand': {copy / 'annotations.json'}: nothing to score: none of its {n} annotations is on the "
            "1 image evaluated (skipped 3 bad records: unreadable or corrupt image=3; e.g. image file ") in result.output
    assert not (tmp_path / "e" / "results.json").exists()


@pytest.mark.parametrize("text, message", [
    ("{}", "not a COCO file: missing the 'images' list of a COCO instances file"),
    ("null", "not a COCO file: the top level is a null, expected a JSON object"),
    ('{"images": [], "annotations": {}, "categories": []}', "not a COCO file: 'annotations' is an object, expected a list"),
    ('{"images": [], "annotations": null, "categories": []}', "not a COCO file: 'annotations' is a null, expected a list"),
])
def test_train_and_evaluate_refuse_a_file_that_is_no_coco_set_in_the_readers_words(tiny, tmp_path, text, message):
    """The words of occsynth's streaming readers (coco.check_coco_layout), not a reader's own."""
    root, checkpoint = tiny
    ann = tmp_path / "bad.json"
    ann.write_text(text)
    train = CliRunner().invoke(bcnet_main, ["train", "--annotations", str(ann), *_train_args(root, tmp_path / "r")[3:]])
    evaluate = _evaluate(checkpoint, ann, root / "images", tmp_path / "e")
    for result in (train, evaluate):
        _clean(result, 2)
        assert result.output.splitlines()[-1] == f"Error: {ann}: {message}"


def _tampered(checkpoint, dest, change):
    state = torch.load(checkpoint, weights_only=True)
    change(state)
    torch.save(state, dest)
    return dest


def test_a_checkpoint_that_does_not_fit_its_own_model_config_is_one_clear_error_naming_it(tiny, tmp_path):
    root, checkpoint = tiny
    first = next(iter(torch.load(checkpoint, weights_only=True)["model"]))
    cases = [
        (lambda s: s["model"].__setitem__(first, torch.zeros(1)),
         f"tensor {first} has shape [1], the model built from its model_config expects ["),
        (lambda s: s.pop("model_config"), "not a bcnet checkpoint: no model_config"),
        (lambda s: s["model_config"].__setitem__("backbone", "resnet9000"),
         "its model_config builds no model: unknown backbone 'resnet9000'"),
        (lambda s: s["model"].pop(first), f"its tensors do not match the model built from its model_config: "
                                          f"1 missing (e.g. {first})"),
        (lambda s: s.__setitem__("category_ids", "abc"), "not a bcnet checkpoint ('category_ids' is not a list of whole numbers: 'abc')"),
        (lambda s: s["category_ids"].pop(), "its model_config has num_classes 6, but its 4 category_ids need 5"),
        (lambda s: s["model_config"].__setitem__("num_classes", "6"), "its model_config has num_classes '6', but its 5 category_ids need 6"),
        (lambda s: s["model_config"].__setitem__("min_size", "abc"),  # failed in check_model_input: a traceback
         "its model_config has min_size 'abc', not a whole number of pixels from 1 to"),
        (lambda s: s["model_config"].__setitem__("max_size", 0),  # every image 'could not be processed'
         "its model_config has max_size 0, not a whole number of pixels from 1 to"),
        # a misspelt key was ignored: the model was built with the default in its place
        (lambda s: s["model_config"].__setitem__("mask_haed", s["model_config"].pop("mask_head")),
         "its model_config builds no model: unknown model setting 'mask_haed' (did you mean 'mask_head'?); "
         "bcnet's settings: num_classes, detector, mask_head, backbone,"),
        (lambda s: s["model_config"].__setitem__("detections_per_image", 5),
         "its model_config builds no model: unknown model setting 'detections_per_image' (did you mean "
         "'box_detections_per_img'?)"),
    ]
    image = root / "images" / "000000000001.png"
    for i, (change, words) in enumerate(cases):
        bad = _tampered(checkpoint, tmp_path / f"bad{i}.pt", change)
        for args in (["predict", str(image), "--checkpoint", str(bad), "--out", str(tmp_path / f"p{i}"), "--quiet"],
                     ["evaluate", "--checkpoint", str(bad), "--annotations", str(root / "annotations.json"),
                      "--images", str(root / "images"), "--out", str(tmp_path / f"e{i}"), "--quiet"]):
            result = CliRunner().invoke(bcnet_main, args + ["--device", "cpu"])
            _clean(result, 2)
            assert f"Error: {bad}: {words}" in result.output, result.output
            assert not (tmp_path / f"p{i}").exists() and not (tmp_path / f"e{i}").exists()


def test_bad_occluded_list_entries_fail_before_any_prediction_naming_the_file_and_entry(tiny, tmp_path):
    root, checkpoint = tiny
    data = load_annotations(root)
    image = data["images"][0]
    good = [image["file_name"], data["categories"][0]["name"], [0, 0, 4, 4],
            next(a for a in data["annotations"] if a["image_id"] == image["id"])["segmentation"]]
    out = tmp_path / "e"
    out.mkdir()
    (out / "detections_hand.json").write_text("[]")  # an earlier run's: must survive a failed one
    for i, (mask, words) in enumerate([({"size": "ab", "counts": "x"}, "RLE size must be [height, width]"),
                                       ({"size": [1, 2, 3], "counts": "x"}, "RLE size must be [height, width]"),
                                       ({"size": [4, 4], "counts": 5}, "unreadable RLE"),
                                       ("square", "mask must be an RLE dict or polygons")]):
        path = tmp_path / f"occ{i}.json"
        path.write_text(json.dumps([good, good[:3] + [mask]]))
        result = _evaluate(checkpoint, root / "annotations.json", root / "images", out, "--occluded-list", str(path))
        _clean(result, 2)
        assert f"Error: {path}: 1 bad object entry: entry 1: {words}" in result.output, result.output
        assert (out / "detections_hand.json").read_text() == "[]" and not (out / "results.json").exists()
    (tmp_path / "short.json").write_text(json.dumps([good, good[:2]]))
    result = _evaluate(checkpoint, root / "annotations.json", root / "images", out, "--separated-list",
                       str(tmp_path / "short.json"))
    _clean(result, 2)
    assert f"Error: {tmp_path / 'short.json'}: 1 bad object entry: entry 1: object entry must be" in result.output
    # an RLE of another size than its image's in the set evaluated: found before predicting too
    visible = mask_ops.decode(good[3], image["height"], image["width"])  # the same mask with one more row
    other = mask_ops.encode(np.vstack([visible, np.zeros((1, image["width"]), bool)]))
    (tmp_path / "size.json").write_text(json.dumps([good, good[:3] + [other]]))
    result = _evaluate(checkpoint, root / "annotations.json", root / "images", out, "--occluded-list",
                       str(tmp_path / "size.json"))
    _clean(result, 2)
    assert (f"Error: {tmp_path / 'size.json'}: entry 1: its RLE size [{image['height'] + 1}, {image['width']}] differs "
            f"from the size [{image['height']}, {image['width']}] of image {image['file_name']!r} in "
            f"{root / 'annotations.json'}") in result.output, result.output
    assert (out / "detections_hand.json").read_text() == "[]"
    # a class that names no category of the set: it could only be a miss, so it is refused before predicting
    (tmp_path / "class.json").write_text(json.dumps([good, [good[0], "unicorn", *good[2:]]]))
    result = _evaluate(checkpoint, root / "annotations.json", root / "images", out, "--occluded-list",
                       str(tmp_path / "class.json"))
    _clean(result, 2)
    assert result.output.splitlines()[-1] == (f"Error: {tmp_path / 'class.json'}: entry 1: its class 'unicorn' is no "
                                              f"category name of {root / 'annotations.json'}, so no prediction could "
                                              "match it")
    assert (out / "detections_hand.json").read_text() == "[]"


def test_amodal_evaluation_of_a_set_without_amodal_masks_names_the_file_before_predicting_any_set(tiny, tmp_path):
    root, checkpoint = tiny
    copy = _copy_set(root, tmp_path / "set")
    data = load_annotations(copy)
    victim = data["annotations"][0]
    del victim["amodal_segmentation"]
    save_annotations(copy, data)
    out = tmp_path / "e"
    result = CliRunner().invoke(bcnet_main, [
        "evaluate", "--checkpoint", str(checkpoint), "--annotations", str(root / "annotations.json"), "--images",
        str(root / "images"), "--annotations", str(copy / "annotations.json"), "--images", str(copy / "images"),
        "--out", str(out), "--mode", "amodal", "--device", "cpu", "--quiet"])
    _clean(result, 2)
    assert (f"Error: {copy / 'annotations.json'}: annotation {victim['id']} (image {victim['image_id']}) has no "
            "amodal_segmentation: amodal evaluation needs one") in result.output, result.output
    assert not (out / "detections_set0.json").exists()  # the good first set was not predicted either


def test_train_init_message_is_printed_under_quiet(tiny, tmp_path):
    root, checkpoint = tiny
    first = next(iter(torch.load(checkpoint, weights_only=True)["model"]))
    bad = _tampered(checkpoint, tmp_path / "init.pt", lambda s: s["model"].__setitem__(first, torch.zeros(1)))
    result = CliRunner().invoke(bcnet_main, _train_args(root, tmp_path / "run", "--init", str(bad)))
    _clean(result, 0)
    assert f"tensors loaded from {bad}; 1 left as built" in result.output and first in result.output
    earlier = tmp_path / "earlier"  # --init given as a run folder: the message names the checkpoint it took
    earlier.mkdir()
    (earlier / "checkpoint_0000005.pt").write_bytes(bad.read_bytes())
    (earlier / ckpt.LAST).write_text("checkpoint_0000005.pt\n")
    result = CliRunner().invoke(bcnet_main, _train_args(root, tmp_path / "run2", "--init", str(earlier)))
    _clean(result, 0)
    assert f"tensors loaded from {earlier / 'checkpoint_0000005.pt'}; 1 left as built" in result.output, result.output


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("model"), "not a bcnet checkpoint (no 'model' entry)"),
    (lambda s: s.pop("format"), "not a bcnet checkpoint (no 'bcnet-checkpoint' format tag)"),
    (lambda s: s.__setitem__("format", "detectron2"),
     "not a bcnet checkpoint (format tag 'detectron2', expected 'bcnet-checkpoint')"),
    (lambda s: s.__setitem__("model", [torch.zeros(1)]), "not a bcnet checkpoint (its 'model' entry is not a dict"),
    (lambda s: s["model"].__setitem__(next(iter(s["model"])), 3.0),
     "not a bcnet checkpoint (its 'model' entry is not a dict"),
    (lambda s: s["model"].__setitem__(7, torch.zeros(1)), "not a bcnet checkpoint (its 'model' entry is not a dict"),
    (lambda s: next(v for v in s["model"].values() if v.is_floating_point()).view(-1)[0].fill_(float("nan")),
     "holds NaN or infinite values (tensor "),  # predicted nothing, without a word
])
def test_train_init_from_a_checkpoint_without_named_tensors_is_refused_naming_it(tiny, tmp_path, change, words):
    root, checkpoint = tiny
    bad = _tampered(checkpoint, tmp_path / "bad.pt", change)
    result = CliRunner().invoke(bcnet_main, _train_args(root, tmp_path / "run", "--init", str(bad)))
    _clean(result, 2)
    assert f"Error: {bad}: {words}" in result.output, result.output
    assert not (tmp_path / "run" / "model_final.pt").exists()


def test_schedule_errors_name_the_schedule_file_or_the_option_typed(tiny, tmp_path):
    root, _ = tiny
    text = (Path(manifests.__file__).parent / "schedule-tiny.toml").read_text()
    (tmp_path / "fast.toml").write_text(text.replace("base_lr = 0.02", "base_lr = 'fast'"))
    (tmp_path / "empty.toml").write_text("")
    lines = [line for line in text.splitlines() if not line.startswith("momentum =")]
    (tmp_path / "partial.toml").write_text("\n".join(lines) + "\n")
    cases = [(["--schedule", str(tmp_path / "fast.toml")],
              f"{tmp_path / 'fast.toml'}: schedule setting base_lr must be a finite number, got 'fast'"),
             (["--schedule", str(tmp_path / "empty.toml")], f"{tmp_path / 'empty.toml'}: schedule lacks base_lr"),
             (["--schedule", str(tmp_path / "partial.toml")], f"{tmp_path / 'partial.toml'}: schedule lacks momentum"),
             (["--momentum", "2"], "--momentum: schedule setting momentum must be in [0, 1), got 2.0"),
             (["--lr", "-1"], "--lr: schedule setting base_lr must be > 0, got -1.0"),
             (["--warmup", "-2"], "--warmup: schedule setting warmup_iterations must be an integer >= 0, got -2"),
             (["--short", "80"], "--long-max / --short: schedule setting long_max (64) must be >= short (80)")]
    for i, (extra, words) in enumerate(cases):
        result = CliRunner().invoke(bcnet_main, _train_args(root, tmp_path / f"run{i}", *extra))
        _clean(result, 2)
        assert f"Error: {words}" in result.output, result.output
        assert not (tmp_path / f"run{i}").exists()


def test_evaluate_counts_a_repeated_annotation_id_once(tiny, tmp_path):
    root, checkpoint = tiny
    copy = _copy_set(root, tmp_path / "set")
    data = load_annotations(copy)
    data["annotations"][1]["id"] = data["annotations"][0]["id"]
    save_annotations(copy, data)
    result = _evaluate(checkpoint, copy / "annotations.json", copy / "images", tmp_path / "e", "--quiet")
    _clean(result, 0)
    report = json.loads((tmp_path / "e" / "results.json").read_text())["hand"]
    assert report["skipped"]["counts"] == {"duplicate id": 1}, report["skipped"]


def test_evaluate_scores_the_usable_twin_of_a_broken_annotation_record_and_counts_the_broken_one_once(tiny, tmp_path):
    """The set read for its images counted the good twin as a duplicate while the scoring skipped the broken record
    before it: one record counted twice, under a reason that named the wrong one."""
    root, checkpoint = tiny
    data = load_annotations(root)
    data["annotations"].insert(0, {**data["annotations"][0], "segmentation": [[10, 10, 20, 20]]})
    (tmp_path / "twin.json").write_text(json.dumps(data))
    for name, ann in (("twin", tmp_path / "twin.json"), ("plain", root / "annotations.json")):
        _clean(_evaluate(checkpoint, ann, root / "images", tmp_path / name, "--quiet"), 0)
    twin, plain = (json.loads((tmp_path / name / "results.json").read_text())["hand"] for name in ("twin", "plain"))
    assert twin["skipped"]["counts"] == {"degenerate or empty segmentation": 1}, twin["skipped"]
    assert "another record of this id has a usable mask" in twin["skipped"]["examples"]["degenerate or empty segmentation"]
    assert (twin["bbox"], twin["segm"]) == (plain["bbox"], plain["segm"])


def test_evaluate_on_a_set_listing_fewer_categories_than_the_model_scores_those_it_lists(tiny, tmp_path):
    """A person-only val set for a COCO model: scored over the categories the set lists (pycocotools' mean over
    categories with ground truth), the same AP as with the model's whole list; a set sharing none is refused."""
    root, checkpoint = tiny  # the model knows categories 1, 3, 5, 7, 9; the set has annotations of 1, 3, 5, 7
    full = _evaluate(checkpoint, root / "annotations.json", root / "images", tmp_path / "full")
    _clean(full, 0)
    data = load_annotations(root)
    data["categories"] = [c for c in data["categories"] if c["id"] != 9]
    (tmp_path / "fewer.json").write_text(json.dumps(data))
    fewer = _evaluate(checkpoint, tmp_path / "fewer.json", root / "images", tmp_path / "fewer")
    _clean(fewer, 0)
    scored = [json.loads((tmp_path / out / "results.json").read_text())["hand"] for out in ("full", "fewer")]
    assert scored[0]["detections"] > 0 and scored[1]["bbox"] == scored[0]["bbox"]
    assert scored[1]["segm"] == scored[0]["segm"]
    data["categories"] = [dict(c, id=c["id"] + 100) for c in data["categories"]]
    data["annotations"] = [dict(a, category_id=a["category_id"] + 100) for a in data["annotations"]]
    (tmp_path / "none.json").write_text(json.dumps(data))
    none = _evaluate(checkpoint, tmp_path / "none.json", root / "images", tmp_path / "none")
    _clean(none, 2)
    assert "none.json: shares no category with the model (it lists category ids [101, 103, 105, 107]" in none.output


def test_predict_rerun_into_an_out_inside_the_input_folder_does_not_predict_its_own_pictures(tiny, tmp_path):
    root, checkpoint = tiny
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("000000000001.png", "000000000002.png"):
        (photos / name).write_bytes((root / "images" / name).read_bytes())
    args = ["predict", str(photos), "--checkpoint", str(checkpoint), "--out", str(photos / "pred"), "--quiet"]
    first = CliRunner().invoke(bcnet_main, args)
    _clean(first, 0)
    before = (photos / "pred" / "images.json").read_text()
    again = CliRunner().invoke(bcnet_main, args)  # the first run's pictures now lie inside the input folder
    _clean(again, 0)
    assert again.output.startswith("2 images, ")
    assert (photos / "pred" / "images.json").read_text() == before  # same files, same ids
    assert sorted(p.name for p in (photos / "pred" / "pictures").iterdir()) == [
        "000001-000000000001.png", "000002-000000000002.png"]


def _tree(out: Path) -> dict:
    """Every file under ``out`` (hidden ones too: staging folders, temporaries) and its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_an_interrupted_predict_leaves_the_earlier_outputs_and_a_rerun_replaces_them(tiny, tmp_path, monkeypatch):
    """A stopped predict left its new pictures beside the results.json and images.json of an older run (and pictures
    no later run removed); the outputs now change only once every image is predicted."""
    from bcnet import predict as P

    root, checkpoint = tiny
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("000000000001.png", "000000000002.png"):
        (photos / name).write_bytes((root / "images" / name).read_bytes())
    out = photos / "pred"  # inside the input folder: neither its pictures nor staged ones are inputs

    def run(*inputs):
        return P.predict(checkpoint, list(inputs), out, device="cpu", progress=False)

    def listed():
        return [im["file_name"] for im in json.loads((out / "images.json").read_text())]

    run(photos)
    first = _tree(out)
    assert sorted(first) == [".lock", "images.json", "pictures/000001-000000000001.png",
                             "pictures/000002-000000000002.png", "results.json"]
    # stopped (Ctrl-C) after its first picture: the earlier run's files are as they were, nothing staged is left
    real_render, calls = P.render_prediction, []

    def render_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(P, "render_prediction", render_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(photos / "000000000002.png", photos / "000000000001.png")
    assert _tree(out) == first
    monkeypatch.setattr(P, "render_prediction", real_render)
    # killed outright: its staging folder and a half-written results.json are left; the next run removes them and
    # does not take the staged picture for an input
    (out / ".predict-killed").mkdir()
    (out / ".predict-killed" / ".lock").write_text("")  # the lock its run held (atomic.locked_spool), let go
    (out / ".predict-killed" / "000001-000000000002.png").write_bytes(first["pictures/000002-000000000002.png"])
    (out / ".results.json.tmp-1-0").write_text("[{")
    assert run(photos)["images"] == 2 and _tree(out) == first
    # a run stopped while it puts its outputs in place leaves no images.json: no folder says it holds a whole run
    real_write = P.write_json

    def fail_on_images(path, *args, **kwargs):
        if Path(path).name == "images.json":
            raise OccsynthError(f"cannot write {path}: no space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(P, "write_json", fail_on_images)
    with pytest.raises(OccsynthError, match="no space left"):
        run(photos / "000000000002.png")
    assert not (out / "images.json").exists()
    monkeypatch.setattr(P, "write_json", real_write)
    # a finished rerun replaces the earlier run's outputs: its pictures that it does not write again go
    report = run(photos / "000000000002.png")
    assert report["images"] == 1 and listed() == [str(photos / "000000000002.png")]
    assert sorted(_tree(out)) == [".lock", "images.json", "pictures/000001-000000000002.png", "results.json"]
    assert {r["image_id"] for r in json.loads((out / "results.json").read_text())} <= {1}
    said = " ".join(CliRunner().invoke(bcnet_main, ["predict", "--help"]).output.split())
    assert "a run stopped midway (Ctrl-C, kill) leaves them untouched; run it again to redo it" in said


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_out_another_bcnet_command_writes_is_refused_at_once(tiny, tmp_path, command):
    import os
    import socket

    from bcnet.runlock import hold_out_dir

    root, checkpoint = tiny
    out = tmp_path / "p"
    inputs = ([str(root / "images" / "000000000001.png")] if command == "predict" else
              ["--annotations", str(root / "annotations.json"), "--images", str(root / "images")])
    args = [command, *inputs, "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]
    with hold_out_dir(out):  # as another command running there holds it
        result = CliRunner().invoke(bcnet_main, args)
        _clean(result, 2)
        assert (f"Error: {out} is being written by another process (pid {os.getpid()} on {socket.gethostname()}): "
                "wait for it to finish or stop it") in result.output
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    _clean(CliRunner().invoke(bcnet_main, args), 0)
    assert (out / "results.json").is_file() and (out / ".lock").read_text() == ""


@pytest.mark.parametrize("first, second", [("predict", "evaluate"), ("evaluate", "predict")])
def test_an_out_holding_the_other_commands_output_is_refused_before_any_work(tiny, tmp_path, first, second):
    """Both write results.json (detections there, AP here): an evaluation into a predict --out replaced its COCO
    results with AP and left its images.json and pictures beside them (and the other way round)."""
    root, checkpoint = tiny
    out = tmp_path / "o"
    inputs = {"predict": [str(root / "images" / "000000000001.png")],
              "evaluate": ["--annotations", str(root / "annotations.json"), "--images", str(root / "images")]}

    def run(command):
        return CliRunner().invoke(bcnet_main, [command, *inputs[command], "--checkpoint", str(checkpoint), "--out",
                                               str(out), "--device", "cpu", "--no-progress"])

    _clean(run(first), 0)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = run(second)
    _clean(result, 2)
    said = " ".join(result.output.split())
    assert f"Error: {out} holds `bcnet {first}`'s output" in said and "choose another out_dir/--out" in said
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_predict_help_names_the_files_it_takes_from_folders():
    from bcnet.predict import IMAGE_SUFFIXES

    result = CliRunner().invoke(bcnet_main, ["predict", "--help"])
    _clean(result, 0)
    text = " ".join(result.output.split())
    assert "searched recursively" in text and all(suffix in text for suffix in IMAGE_SUFFIXES)


def test_train_help_says_resume_keeps_the_saved_schedule():
    """`--resume --schedule other` continues with the checkpoint's saved schedule; the help said nothing of it."""
    text = " ".join(CliRunner().invoke(bcnet_main, ["train", "--help"], terminal_width=200).output.split())
    assert ("With --resume the run continues with the schedule saved in its checkpoint, the overrides given on top: a "
            "--schedule given too is only compared with it (a setting it changes is named, not applied; another model "
            "is refused).") in text


def test_train_help_shows_what_the_default_schedule_sets_each_override_to():
    """The overrides' help said only 'Override: number of iterations.', not what a run gets without them."""
    from bcnet.train import load_schedule

    schedule = load_schedule("schedule-1x")
    text = " ".join(CliRunner().invoke(bcnet_main, ["train", "--help"], terminal_width=200).output.split())
    assert f"Override: number of iterations. [schedule-1x: {schedule['iterations']}]" in text
    assert "Override: lr decay iterations. [schedule-1x: " + ",".join(map(str, schedule["steps"])) + "]" in text
    assert f"Override: which masks to learn. [schedule-1x: {schedule['mode']}]" in text
    assert "Override: short side drawn from LO,HI per image. [schedule-1x: none]" in text  # [] in the TOML
    assert text.count("[schedule-1x: ") == text.count("Override: ") - 1  # all but --backbone-weights ("")


def test_a_run_folder_or_its_last_checkpoint_marker_stands_for_the_checkpoint_it_names(tiny, tmp_path):
    """--checkpoint runs/x/last_checkpoint (or runs/x) was refused or read as a torch file: 'not a readable
    checkpoint'. It now means the checkpoint the marker names, for predict, evaluate and train --init."""
    root, checkpoint = tiny
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_0000007.pt").write_bytes(checkpoint.read_bytes())
    (run / "model_final.pt").write_bytes(b"not the one the marker names")
    (run / ckpt.LAST).write_text("checkpoint_0000007.pt\n")
    for given in (run / ckpt.LAST, run):
        result = CliRunner().invoke(bcnet_main, ["predict", str(root / "images" / "000000000001.png"), "--checkpoint",
                                                 str(given), "--out", str(tmp_path / "p"), "--no-pictures", "--quiet"])
        _clean(result, 0)
        assert len(json.loads((tmp_path / "p" / "images.json").read_text())) == 1
    result = _evaluate(run / ckpt.LAST, root / "annotations.json", root / "images", tmp_path / "e")
    _clean(result, 0)
    assert json.loads((tmp_path / "e" / "results.json").read_text())["hand"]["images"] == 3
    assert T.load_model_weights(T.build(6, T.model_config(T.load_schedule("schedule-tiny", TINY))), run,
                                [1, 3, 5, 7, 9])["left_as_built"] == []  # train --init
    (run / ckpt.LAST).write_text("checkpoint_0000009.pt\n")  # removed since, say by hand
    result = _evaluate(run / ckpt.LAST, root / "annotations.json", root / "images", tmp_path / "e2")
    _clean(result, 2)
    assert f"Error: {run / ckpt.LAST} names 'checkpoint_0000009.pt', which is not a checkpoint in {run}" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _evaluate(empty, root / "annotations.json", root / "images", tmp_path / "e3")
    _clean(result, 2)
    assert f"Error: {empty}: no checkpoint in this folder (no last_checkpoint, model_final.pt or checkpoint_*.pt)" \
        in result.output
    (run / ckpt.LAST).write_bytes(b"checkpoint_\xff.pt\n")  # damaged: not UTF-8
    result = _evaluate(run / ckpt.LAST, root / "annotations.json", root / "images", tmp_path / "e4")
    _clean(result, 2)
    assert f"Error: {run / ckpt.LAST} names 'checkpoint_\ufffd.pt', which is not a checkpoint in {run}" in result.output


def test_predict_publishes_into_a_pictures_folder_on_another_disk(tiny, tmp_path):
    """pictures/ a link to another file system: the staged pictures cannot be renamed there, they are copied
    (a rename failing there used to lose the earlier run's results and the new pictures)."""
    import os

    from bcnet import predict as P

    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's folder")
    root, checkpoint = tiny
    out = tmp_path / "pred"
    out.mkdir()
    with tempfile.TemporaryDirectory(dir=other) as elsewhere:
        (out / "pictures").symlink_to(elsewhere)
        report = P.predict(checkpoint, [root / "images" / "000000000001.png"], out, device="cpu", progress=False)
        assert report["images"] == 1 and (out / "results.json").is_file() and (out / "images.json").is_file()
        assert sorted(os.listdir(elsewhere)) == ["000001-000000000001.png"]
        assert not [p for p in out.iterdir() if p.name.startswith(P.STAGING_PREFIX)]


def test_evaluate_says_how_many_sets_images_and_names_it_was_given(tmp_path):
    """Two --ann with one --images said only "give one --images per --annotations": which was missing, in a long
    command line of several sets, was left to count."""
    base = ["evaluate", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "e"),
            "--ann", "a.json", "--ann", "b.json", "--images", "ia"]
    result = CliRunner().invoke(bcnet_main, base)
    assert result.exit_code == 2 and result.output == ("Error: give one --images per --annotations, in the same order "
                                                       "(given: 2 --annotations, 1 --images)\n"), result.output
    result = CliRunner().invoke(bcnet_main, [*base, "--images", "ib", "--name", "val"])
    assert result.exit_code == 2 and result.output == ("Error: give one --name per --annotations, in the same order, "
                                                       "or none (given: 2 --annotations, 1 --name)\n"), result.output
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("command, target, hint", [
    (["predict", "img.png", "--checkpoint", "."], "bcnet.predict.predict",
     "holds one whole run's outputs only with its images.json (an earlier run's, unless the stop came as this one "
     "finished); run the same command again to redo it"),
    (["evaluate", "--checkpoint", "c.pt", "--annotations", "a.json", "--images", "."], "bcnet.evaluate.evaluate_checkpoint",
     "keeps what an earlier evaluation wrote there, unless the stop came as this one's results replaced it (its last "
     "step); run the same command again to redo it"),
])
def test_a_stopped_predict_or_evaluate_says_what_out_holds_and_what_to_do(tmp_path, monkeypatch, command, target, hint):
    """They said only 'Stopped (SIGINT).', where train and generate say what to do next; a stop before --out was made
    (while the model loads) says nothing of a folder this run never touched."""
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img.png").write_bytes(b"")
    for holds_out in (False, True):
        def interrupted(*args, **kwargs):
            if holds_out:
                out.mkdir()  # the stop came once the command held --out
            raise KeyboardInterrupt

        monkeypatch.setattr(target, interrupted)
        stopped = CliRunner().invoke(bcnet_main, command + ["--out", str(out)])
        assert stopped.exit_code == 130, stopped.output  # 128 + SIGINT
        said = f"\ninterrupted: {out} {hint}\nStopped (SIGINT).\n" if holds_out else "Stopped (SIGINT).\n"
        assert stopped.output.endswith(said) and ("interrupted:" in stopped.output) == holds_out, stopped.output


def test_predict_sweeps_the_orphaned_temporaries_of_its_own_pictures_only(tiny, tmp_path):
    """Copies into a pictures/ on another disk (move_file) killed midway left .NAME.tmp-* files nothing removed.
    The next run removes those of its pictures that no process writes; others' files and held ones stay."""
    import fcntl

    from bcnet import predict as P

    root, checkpoint = tiny
    pictures = tmp_path / "out" / P.PICTURES
    pictures.mkdir(parents=True)
    orphaned = pictures / ".000001-000000000001.png.tmp-123-abcd0123"
    held = pictures / ".000002-000000000002.png.tmp-456-abcd0123"   # another process copies it now
    others = pictures / ".notes.txt.tmp-789-abcd0123"                # not a picture predict writes
    for path in (orphaned, held, others):
        path.write_bytes(b"part")
    with open(held, "rb") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        P.predict(checkpoint, [root / "images" / "000000000001.png"], tmp_path / "out", device="cpu", progress=False)
    assert not orphaned.exists() and held.exists() and others.exists()
    assert (pictures / "000001-000000000001.png").is_file()


def test_the_library_picks_the_device_as_the_cli_does(monkeypatch, tmp_path):
    """predict(), evaluate_checkpoint() and train() without a device use CUDA when present, as every command's
    --device default: predict() alone ran on the CPU of a GPU machine when called from a notebook."""
    import inspect

    from bcnet import evaluate as E, predict as P
    for function in (P.predict, E.evaluate_checkpoint, T.train):
        assert inspect.signature(function).parameters["device"].default is None, function.__name__
    asked = []
    monkeypatch.setattr(P, "resolve_device", lambda name: asked.append(name) or torch.device("cpu"))
    monkeypatch.setattr(P, "load_model", lambda *a: (_ for _ in ()).throw(OccsynthError("stop here")))
    with pytest.raises(OccsynthError, match="stop here"):
        P.predict(tmp_path / "model.pt", [tmp_path], tmp_path / "out", progress=False)
    assert asked == [None]
