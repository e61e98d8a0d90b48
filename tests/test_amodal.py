"""Amodal evaluation: ground truth swapped to amodal masks on a copy; checkpoint mode as default; CLI --mode."""
from __future__ import annotations

import copy
import hashlib
import json

import pytest
from click.testing import CliRunner

from bcnet import checkpoint as ckpt
from bcnet import evaluate as E
from bcnet import train as T
from cli.bcnet_cli import main as bcnet_main
from test_evaluate import by_hand
from datasets import load_annotations, save_annotations, scene_instances, SCENES, write_dataset
from occsynth import masks as mask_ops
from occsynth.errors import OccsynthError


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("amodal") / "set")


def gt_detections(data: dict, field: str) -> list[dict]:
    """Every non-crowd ground truth as a detection whose mask and box are its ``field`` mask's."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    out = []
    for ann in data["annotations"]:
        mask = mask_ops.decode(ann[field], *sizes[ann["image_id"]])
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 0.9,
                    "bbox": mask_ops.bbox(mask), "segmentation": mask_ops.encode(mask)})
    return out


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_amodal_masks_score_one_in_amodal_mode_and_not_in_visible_mode(hand):
    ann_file = hand / "annotations.json"
    before = digest(ann_file)
    data = load_annotations(hand)
    assert max(a["occlusion_ratio"] for a in data["annotations"]) > 0.4  # the set really is occluded
    amodal_dets, visible_dets = gt_detections(data, "amodal_segmentation"), gt_detections(data, "segmentation")

    amodal = E.evaluate(ann_file, amodal_dets, mode="amodal")
    assert amodal["mode"] == "amodal"
    assert amodal["segm"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert amodal["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)   # amodal boxes are the ground truth too
    wrong = E.evaluate(ann_file, amodal_dets, mode="visible")
    assert wrong["mode"] == "visible" and wrong["segm"]["AP"] < 0.9 and wrong["bbox"]["AP"] < 1.0

    # ... and the reverse
    visible = E.evaluate(ann_file, visible_dets)  # visible is the default
    assert visible["segm"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert E.evaluate(ann_file, visible_dets, mode="amodal")["segm"]["AP"] < 0.9

    assert digest(ann_file) == before

    # imperfect detections: amodal mode is pycocotools run on a ground truth whose masks were swapped by hand
    shifted = [dict(d, bbox=[d["bbox"][0] + 1, *d["bbox"][1:]], score=0.1 + 0.05 * k)
               for k, d in enumerate(amodal_dets + visible_dets[::2])]
    swapped = copy.deepcopy(data)
    for a in swapped["annotations"]:
        a["segmentation"], a["area"], a["bbox"] = a["amodal_segmentation"], a["amodal_area"], a["amodal_bbox"]
    out = E.evaluate(ann_file, shifted, mode="amodal")
    for iou_type in ("bbox", "segm"):
        assert [out[iou_type][k] for k in E.STAT_NAMES] == [float(v) for v in by_hand(swapped, shifted, iou_type)[:6]]


def test_amodal_ground_truth_is_a_copy_with_amodal_fields(hand):
    data = load_annotations(hand)
    original = copy.deepcopy(data)
    swapped = E.amodal_ground_truth(data)
    assert data == original  # nothing changed in place
    for a, s in zip(data["annotations"], swapped["annotations"]):
        assert s["segmentation"] == a["amodal_segmentation"] and s["area"] == a["amodal_area"]
        assert s["bbox"] == a["amodal_bbox"] and s["id"] == a["id"]
    # computed from the mask when the amodal area / box are not stored
    for a in data["annotations"]:
        del a["amodal_area"], a["amodal_bbox"]
    computed = E.amodal_ground_truth(data)
    assert [(s["area"], s["bbox"]) for s in computed["annotations"]] == \
        [(s["area"], s["bbox"]) for s in swapped["annotations"]]
    # exact values against the shapes of the hand-made scenes
    amodal_areas = [int(i["amodal"].sum()) for scene in SCENES for i in scene_instances(scene)]
    assert [s["area"] for s in computed["annotations"]] == amodal_areas


def test_missing_amodal_mask_is_an_error_naming_the_annotation(hand, tmp_path):
    data = load_annotations(hand)
    victim = data["annotations"][3]
    del victim["amodal_segmentation"]
    dets = gt_detections(load_annotations(hand), "segmentation")
    with pytest.raises(OccsynthError, match=f"annotation {victim['id']} \\(image {victim['image_id']}\\) has no "
                                            "amodal_segmentation"):
        E.evaluate(data, dets, mode="amodal")
    assert E.evaluate(data, dets)["segm"]["AP"] == pytest.approx(1.0, abs=1e-12)  # visible mode does not care
    victim["iscrowd"] = 1  # a crowd region without an amodal mask keeps its visible one
    out = E.evaluate(data, [d for d in dets if d["segmentation"] != victim["segmentation"]], mode="amodal")
    assert out["mode"] == "amodal"
    with pytest.raises(OccsynthError, match="mask mode"):
        E.evaluate(data, dets, mode="full")


# --------------------------------------------------------------------------- checkpoint and CLI

def tiny_checkpoint(path, category_ids, mode: str):
    schedule = T.load_schedule("schedule-tiny", {"mode": mode, "short": 48, "long_max": 64})
    config = T.model_config(schedule)
    model = T.build(len(category_ids) + 1, config)
    ckpt.save_checkpoint(path, model=model, iteration=0, schedule=schedule,
                         model_config={"num_classes": len(category_ids) + 1, **config},
                         category_ids=list(category_ids), rng=False)
    return path


@pytest.fixture()
def fake_predictions(monkeypatch, hand):
    """predict_dataset returns the ground truth's amodal masks (the model path is tested elsewhere)."""
    seen = []

    def predict(model, dataset, **kwargs):
        seen.append(dataset.mode)
        return gt_detections(load_annotations(hand), "amodal_segmentation")

    monkeypatch.setattr(E, "predict_dataset", predict)
    return seen


def test_checkpoint_mode_is_the_default_and_can_be_overridden(hand, tmp_path, fake_predictions):
    path = tiny_checkpoint(tmp_path / "amodal.pt", [1, 3, 5, 7, 9], "amodal")
    sets = {"hand": (hand / "annotations.json", hand / "images")}
    report = E.evaluate_checkpoint(path, sets, tmp_path / "a", device="cpu", progress=False)
    assert report["hand"]["mode"] == "amodal" and fake_predictions == ["amodal"]
    assert report["hand"]["segm"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert "Amodal masks (amodal_segmentation) scored for: hand." in (tmp_path / "a" / "results.md").read_text()
    report = E.evaluate_checkpoint(path, sets, tmp_path / "v", device="cpu", mode="visible", progress=False)
    assert report["hand"]["mode"] == "visible" and report["hand"]["segm"]["AP"] < 0.9
    saved = json.loads((tmp_path / "v" / "results.json").read_text())
    assert saved["hand"]["mode"] == "visible" and saved["hand"]["segm"] == report["hand"]["segm"]
    visible_ckpt = tiny_checkpoint(tmp_path / "visible.pt", [1, 3, 5, 7, 9], "visible")
    assert E.evaluate_checkpoint(visible_ckpt, sets, tmp_path / "w", device="cpu",
                                 progress=False)["hand"]["mode"] == "visible"


def test_cli_mode_option(hand, tmp_path, fake_predictions):
    path = tiny_checkpoint(tmp_path / "visible.pt", [1, 3, 5, 7, 9], "visible")
    runner = CliRunner()
    base = ["evaluate", "--checkpoint", str(path), "--annotations", str(hand / "annotations.json"),
            "--images", str(hand / "images"), "--name", "hand", "--device", "cpu", "--no-progress"]
    result = runner.invoke(bcnet_main, base + ["--out", str(tmp_path / "a"), "--mode", "amodal"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "results.json").read_text())
    assert report["hand"]["mode"] == "amodal" and report["hand"]["segm"]["AP"] == pytest.approx(1.0, abs=1e-12)
    result = runner.invoke(bcnet_main, base + ["--out", str(tmp_path / "v")])  # the checkpoint's mode
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "v" / "results.json").read_text())["hand"]["mode"] == "visible"
    # a set without amodal masks: a clean error before any prediction
    data = load_annotations(hand)
    for ann in data["annotations"]:
        ann.pop("amodal_segmentation")
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    save_annotations(plain, data)
    for f in (hand / "images").iterdir():
        (plain / "images" / f.name).write_bytes(f.read_bytes())
    calls = len(fake_predictions)
    result = runner.invoke(bcnet_main, ["evaluate", "--checkpoint", str(path), "--annotations",
                                        str(plain / "annotations.json"), "--images", str(plain / "images"),
                                        "--out", str(tmp_path / "p"), "--mode", "amodal", "--no-progress"])
    assert result.exit_code == 2 and "has no amodal_segmentation" in result.output
    assert "Traceback" not in result.output and len(fake_predictions) == calls
    result = runner.invoke(bcnet_main, base + ["--out", str(tmp_path / "x"), "--mode", "full"])
    assert result.exit_code == 2 and "full" in result.output
