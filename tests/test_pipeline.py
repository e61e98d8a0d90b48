"""`bcnet train-synthetic` end to end on the demo data (a tiny recipe), then `bcnet predict` and
`bcnet bench` on what it trained."""
import dataclasses
import datetime
import errno
import json
import os
import re
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pycocotools.coco import COCO

from bcnet.bench import bench_heads
from bcnet.pipeline import RUN_FILE, PipelineInputs, run_pipeline
from bcnet.predict import list_images, render_prediction
from bcnet.runlock import hold_out_dir
from cli.bcnet_cli import main as bcnet_main
from datasets import write_dataset
from occsynth import atomic
from occsynth.coco import read_image
from occsynth.errors import OccsynthError

RECIPE = """
[synthetic]
recipe = "synthetic-demo"
num_images = 6
[pretrain]
schedule = "schedule-tiny"
iterations = 3
steps = [2]
checkpoint_every = 2
batch_size = 2
[finetune]
schedule = "schedule-tiny"
iterations = 2
steps = [1]
checkpoint_every = 1
batch_size = 2
[cocoocc]
overlap = "iou"
threshold = 0.2
"""


@pytest.fixture(scope="module")
def pipeline_run(demo_source, tmp_path_factory):
    ann, root = demo_source
    tmp = tmp_path_factory.mktemp("pipeline")
    recipe = tmp / "recipe.toml"
    recipe.write_text(RECIPE)
    out = tmp / "run"
    logs = []
    report = run_pipeline(out, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)), recipe=str(recipe),
                          device="cpu", cache_dir=tmp / "cache", progress=False, log=logs.append)
    return out, report, logs, recipe, (ann, root)


def test_every_stage_writes_its_output(pipeline_run):
    out, report, logs, _, (ann, _) = pipeline_run
    assert len(json.loads((out / "synthetic" / "annotations.json").read_text())["images"]) == 6
    assert (out / "pretrain" / "model_final.pt").exists() and (out / "finetune" / "model_final.pt").exists()
    occ = COCO(str(out / "cocoocc" / "annotations.json"))
    assert 0 < len(occ.getImgIds()) < len(COCO(str(ann)).getImgIds())
    results = json.loads((out / "evaluation" / "results.json").read_text())
    assert set(results) == {"val", "cocoocc"}
    for name in results:
        assert set(results[name]["segm"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert "| val |" in (out / "results.md").read_text() and "| cocoocc |" in report["table"]
    assert (out / "results.md").read_text().startswith("Train and val are the same data here")
    assert sum("done" in line for line in logs) == 0


def test_rerun_skips_finished_stages(pipeline_run):
    out, report, _, recipe, (ann, root) = pipeline_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("model_final.pt")}
    logs = []
    again = run_pipeline(out, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)), recipe=str(recipe),
                         device="cpu", progress=False, log=logs.append)
    assert sum("done" in line for line in logs) == 5
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model_final.pt")} == before
    assert again["results"] == report["results"]


def _mtimes(out):
    """When each file of a run folder last changed; not the lock files, which each run holds (and names itself in)."""
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != atomic.LOCK_FILE}


def test_the_run_names_its_model_and_its_folder_points_to_it(pipeline_run, tmp_path):
    """After `train-synthetic --tiny --out runs/tiny` the README's next steps (evaluate, predict) need a checkpoint:
    the run said only where results.md was, and `--checkpoint runs/tiny` answered "no checkpoint in this folder"."""
    out, _, _, recipe, (ann, root) = pipeline_run
    args = ["train-synthetic", "--recipe", str(recipe), "--coco-train-ann", str(ann), "--coco-train-images", str(root),
            "--coco-val-ann", str(ann), "--coco-val-images", str(root), "--out", str(out), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(bcnet_main, args)  # every stage done: nothing is trained again
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f"model: {out / 'finetune' / 'model_final.pt'} (for bcnet evaluate and predict: "
                                  f"--checkpoint {out / 'finetune'})\n")
    result = CliRunner().invoke(bcnet_main, ["predict", str(root), "--checkpoint", str(out), "--out",
                                             str(tmp_path / "p"), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (f"Error: {out}: no checkpoint in this folder (no last_checkpoint, model_final.pt or checkpoint_*.pt); its "
            f"sub-folders finetune, pretrain hold runs: give one of them, e.g. {out / 'finetune'}\n") == result.output
    assert not (tmp_path / "p").exists()


def test_a_second_pipeline_on_the_same_run_folder_is_refused_at_once(pipeline_run):
    out, _, _, recipe, (ann, root) = pipeline_run
    # the run held its folder and each training stage held its own: no stage was refused by the run's hold
    assert [(out / name / atomic.LOCK_FILE).read_text() for name in ("", "pretrain", "finetune")] == ["", "", ""]
    before = _mtimes(out)
    args = ["train-synthetic", "--recipe", str(recipe), "--coco-train-ann", str(ann), "--coco-train-images", str(root),
            "--coco-val-ann", str(ann), "--coco-val-images", str(root), "--out", str(out), "--device", "cpu", "--quiet"]
    with hold_out_dir(out):  # as a pipeline running there holds it
        result = CliRunner().invoke(bcnet_main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output == (f"Error: {out} is being written by another process (pid {os.getpid()} on "
                             f"{socket.gethostname()}): wait for it to finish or stop it, then run the command again, "
                             "or choose another out_dir/--out\n")
    assert _mtimes(out) == before


def test_a_run_folder_made_with_another_recipe_is_refused_before_any_stage(pipeline_run, tmp_path):
    """Its finished stages would count as done, and their results be filed under the other recipe's name."""
    out, _, _, recipe, (ann, root) = pipeline_run
    inputs = PipelineInputs(coco_train=(ann, root), coco_val=(ann, root))
    before = _mtimes(out)
    other = tmp_path / "other.toml"
    other.write_text(recipe.read_text().replace("iterations = 3", "iterations = 4"))
    with pytest.raises(OccsynthError, match=f"made with recipe '{recipe}', not '{other}'"):
        run_pipeline(out, inputs, recipe=str(other), device="cpu", progress=False, log=lambda line: None)
    # the same recipe name with other settings (a recipe file edited since): which ones, and what to do
    with pytest.raises(OccsynthError, match=r"made with recipe 'pipeline-tiny' with other settings \(cocoocc\.count_crowd: "
                                            r"- -> False; finetune\.batch_size: 2 -> -; finetune\.checkpoint_every: 1 -> 40; "
                                            r".*\); rerun it with those settings to resume it, or choose another "
                                            r"out_dir/--out$"):
        shutil.copytree(out, tmp_path / "copy")
        record = json.loads((tmp_path / "copy" / "pipeline-run.json").read_text())
        (tmp_path / "copy" / "pipeline-run.json").write_text(json.dumps({**record, "recipe": "pipeline-tiny"}))
        run_pipeline(tmp_path / "copy", inputs, recipe="pipeline-tiny", device="cpu", progress=False,
                     log=lambda line: None)
    (tmp_path / "copy" / "pipeline-run.json").unlink()  # a finished run of a version that kept no record
    with pytest.raises(OccsynthError, match="rerun it with that recipe to resume it, or choose another out_dir/--out"):
        run_pipeline(tmp_path / "copy", inputs, recipe="pipeline-tiny", device="cpu", progress=False,
                     log=lambda line: None)
    assert _mtimes(out) == before


def test_a_run_folder_made_from_other_input_data_is_refused_before_any_stage(pipeline_run, tmp_path):
    """Same recipe, other COCO val (or train, --synthetic, --cocoocc): the finished stages (COCO-OCC built from the
    old val, its evaluation) counted as done and their results were reported for the new data, without a word."""
    out, report, _, recipe, (ann, root) = pipeline_run
    before = _mtimes(out)
    other = tmp_path / "other.json"
    data = json.loads(ann.read_text())
    other.write_text(json.dumps({**data, "images": data["images"][:-1]}))
    for changed, option in ((dict(coco_val=(other, root)), "--coco-val-ann"),
                            (dict(coco_train=(other, root)), "--coco-train-ann"),
                            (dict(cocoocc=other), "--cocoocc"),
                            (dict(synthetic=(other, root)), "--synthetic")):
        inputs = PipelineInputs(**{"coco_train": (ann, root), "coco_val": (ann, root), **changed})
        with pytest.raises(OccsynthError, match=f"made from other input data: {option} was .*, now {other}"):
            run_pipeline(out, inputs, recipe=str(recipe), device="cpu", progress=False, log=lambda line: None)
    assert _mtimes(out) == before
    # the same data elsewhere (a moved COCO folder), and the set the run generated named by its path, are the run's
    moved = tmp_path / "moved.json"
    shutil.copyfile(ann, moved)
    logs = []
    again = run_pipeline(out, PipelineInputs(coco_train=(moved, root), coco_val=(moved, root),
                                             synthetic=(out / "synthetic" / "annotations.json", out / "synthetic" / "images")),
                         recipe=str(recipe), device="cpu", progress=False, log=logs.append)
    assert sum("done" in line for line in logs) == 4 and again["results"] == report["results"]


def test_the_records_a_stage_skipped_are_said(demo_source, tmp_path):
    """A user's own COCO train with bad records (an unknown category id, an image record whose file is missing): each
    stage skipped them, but the pipeline said nothing of it, where `occsynth generate` and `bcnet train` list them."""
    ann, root = demo_source
    data = json.loads(ann.read_text())
    image = {"id": 999, "file_name": "missing.jpg", "height": 64, "width": 64}
    box = {"segmentation": [[4, 4, 40, 4, 40, 40, 4, 40]], "area": 1296, "bbox": [4, 4, 36, 36], "iscrowd": 0}
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps({**data, "images": data["images"] + [image], "annotations": data["annotations"] + [
        {**box, "id": 9001, "image_id": data["images"][0]["id"], "category_id": 999},
        {**box, "id": 9002, "image_id": 999, "category_id": data["categories"][0]["id"]}]}))
    (tmp_path / "recipe.toml").write_text(RECIPE)
    logs = []
    run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(bad, root), coco_val=(ann, root)),
                 recipe=str(tmp_path / "recipe.toml"), device="cpu", cache_dir=tmp_path / "cache", progress=False,
                 log=logs.append)
    text = "\n".join(logs)
    assert "[1/5] synthetic set: source records skipped (bad input): 1\n" in text
    assert "annotation refers to an unknown category id, e.g. annotation 9001 (category_id 999)" in text
    assert re.search(r"\[3/5\] fine-tune: indexing: skipped bad input: 2\n.*\n.*missing image file, e.g. image "
                     r"file " + re.escape(str(root / "missing.jpg")), text), text
    assert "[3/5] fine-tune: skipped bad input" not in text  # the same records again at its end: said once
    assert not any("pretrain" in line and "skipped" in line for line in logs)  # its synthetic set has no bad record
    logs.clear()  # a rerun finds every stage done and says nothing more
    run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(bad, root), coco_val=(ann, root)),
                 recipe=str(tmp_path / "recipe.toml"), device="cpu", progress=False, log=logs.append)
    assert sum("done" in line for line in logs) == 5 and not any("skipped" in line for line in logs)


def test_the_output_folder_of_another_command_is_refused_before_any_stage(demo_source, tmp_path):
    """`--out` given the folder of a `bcnet evaluate` run: the pipeline filled it with its stages and at its end
    replaced that evaluation's results.md by its own table, beside the evaluation's results.json."""
    ann, root = demo_source
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")
    (out / "results.md").write_text("the evaluation's table")
    (out / "detections_val.json").write_text("[]")
    before = _mtimes(out)
    with pytest.raises(OccsynthError) as refused:
        run_pipeline(out, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)), recipe="pipeline-tiny",
                     device="cpu", progress=False, log=lambda line: None)
    assert str(refused.value) == (
        f"{out} holds files that no train-synthetic run writes (detections_val.json, results.json): the output of "
        "another command? Choose a new or empty out_dir/--out (a run folder holds only its stage folders, "
        "pipeline-run.json, pipeline.json and results.md)")
    assert _mtimes(out) == before and sorted(p.name for p in out.iterdir()) == [
        ".lock", "detections_val.json", "results.json", "results.md"]
    # an empty folder made beforehand, or one holding only hidden files (.DS_Store), is a new run's
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_text("")
    with pytest.raises(OccsynthError, match="shares no category"):  # the next check: the folder was accepted
        run_pipeline(tmp_path / "empty", PipelineInputs(coco_train=(ann, root), coco_val=(
            _other_categories(ann, tmp_path / "other.json"), root)), recipe="pipeline-tiny", device="cpu",
            progress=False, log=lambda line: None)


def test_a_stage_refusing_an_input_names_the_option_the_user_gave(demo_source, tmp_path, monkeypatch):
    """The evaluation found --coco-val-images' files unreadable and named its own argument,
    ``sets['val'][1]/--images``: train-synthetic has no --images. Each stage's library call says its inputs in the
    pipeline's options (also `occsynth generate`'s ann_path/--ann and image_root/--images, build-cocoocc's
    ann_path/--ann, the fine-tuning's image_root/--images). The check before any stage, which reads a sample of the
    files, is taken out here, as if the files broke after it (a network mount)."""
    monkeypatch.setattr("bcnet.pipeline.none_readable_under", lambda *args: None)
    ann, root = demo_source
    garbage = tmp_path / "val-images"
    for path in root.rglob("*.jpg"):
        (garbage / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (garbage / path.relative_to(root)).write_bytes(b"not an image")
    (tmp_path / "recipe.toml").write_text(RECIPE)
    with pytest.raises(OccsynthError) as refused:
        run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(ann, root), coco_val=(ann, garbage)),
                     recipe=str(tmp_path / "recipe.toml"), device="cpu", cache_dir=tmp_path / "cache", progress=False,
                     log=lambda line: None)
    assert re.match(rf"set 'val': none of its images could be read .*; check its image root, --coco-val-images "
                    rf"\(now {garbage}\): file names in {ann} are relative to it$", str(refused.value)), refused.value


@pytest.mark.parametrize("option", ["--coco-train-ann", "--coco-val-ann"])
def test_a_set_whose_file_names_are_all_absolute_is_refused_before_any_stage(demo_source, tmp_path, option):
    """Absolute file_name entries (a labelling tool's export) are refused where each record is read, so the image
    folder check, which samples only names it can look up, passed: the evaluation then read no val image, after all
    the training."""
    ann, root = demo_source
    data = json.loads(ann.read_text())
    absolute = tmp_path / "abs.json"
    absolute.write_text(json.dumps({**data, "images": [{**im, "file_name": str(root.absolute() / im["file_name"])}
                                                       for im in data["images"]]}))
    inputs = PipelineInputs(coco_train=(absolute if option == "--coco-train-ann" else ann, root),
                            coco_val=(absolute if option == "--coco-val-ann" else ann, root))
    assert re.match(rf"{option} {absolute}: none of its {len(data['images'])} image records names a file under a "
                    r"folder \(e\.g\. "
                    rf"image record \d+ \(file_name '{root.absolute()}/[^']+'\): file_name points outside the image "
                    rf"root\); their file_name entries in {absolute} name no file under any folder",
                    refused_before_any_stage(tmp_path, inputs))


@pytest.mark.parametrize("option", ["--coco-train-images", "--coco-val-images"])
def test_an_image_folder_whose_sampled_files_are_all_unreadable_is_refused_before_any_stage(demo_source, tmp_path,
                                                                                             option):
    """Files of the right names that are no images of the set (garbage, or copies at another size): the existence
    check passed, and the fine-tuning (after the pretraining) or the evaluation (after all the training) read none."""
    ann, root = demo_source
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    for path in sorted(broken.rglob("*.jpg")):
        path.write_bytes(b"not a jpeg")
    inputs = PipelineInputs(coco_train=(ann, broken if option == "--coco-train-images" else root),
                            coco_val=(ann, broken if option == "--coco-val-images" else root))
    said = refused_before_any_stage(tmp_path, inputs)
    ann_option = option.replace("-images", "-ann")
    assert re.match(rf"{ann_option} {ann}: none of the \d+ sampled images under {option} {broken} can be read \(e\.g\. "
                    rf"image file {broken}/[^:]+: unreadable or corrupt image\); are these the images of this "
                    r"set\?$", said), said


def test_a_cocoocc_file_whose_images_are_not_under_val_is_refused_before_any_stage(demo_source, tmp_path):
    """--cocoocc made for another image folder: its evaluation found no image, after all the training."""
    ann, root = demo_source
    data = json.loads(ann.read_text())
    elsewhere = tmp_path / "occ.json"
    elsewhere.write_text(json.dumps({**data, "images": [{**im, "file_name": "val2017/" + im["file_name"]}
                                                        for im in data["images"]]}))
    inputs = PipelineInputs(coco_train=(ann, root), coco_val=(ann, root), cocoocc=elsewhere)
    with pytest.raises(OccsynthError, match=rf"--cocoocc {elsewhere}: none of \d+ sampled images is under "
                                            rf"--coco-val-images {root} \(e\.g\. {root}/val2017/"):
        run_pipeline(tmp_path / "run", inputs, recipe="pipeline-tiny", device="cpu", progress=False,
                     log=lambda line: None)
    assert not (tmp_path / "run" / "synthetic").exists()


@pytest.mark.parametrize("option", ["--coco-val-ann", "--cocoocc"])
def test_an_evaluation_file_with_nothing_to_score_is_refused_before_any_stage(demo_source, tmp_path, option):
    """Its evaluation ended, after all the training, in pycocotools' -1 for every metric."""
    ann, root = demo_source
    data = json.loads(ann.read_text())
    crowd = tmp_path / "crowd.json"
    crowd.write_text(json.dumps({**data, "annotations": [{**a, "iscrowd": 1} for a in data["annotations"]]}))
    inputs = PipelineInputs(coco_train=(ann, root), coco_val=(crowd if option == "--coco-val-ann" else ann, root),
                            cocoocc=crowd if option == "--cocoocc" else None)
    with pytest.raises(OccsynthError, match=rf"^{option} {crowd}: nothing to score: its \d+ annotations are all crowd"):
        run_pipeline(tmp_path / "run", inputs, recipe="pipeline-tiny", device="cpu", progress=False,
                     log=lambda line: None)
    assert not (tmp_path / "run" / "synthetic").exists()


def refused_before_any_stage(tmp_path: Path, inputs: PipelineInputs, recipe: str | Path = "pipeline-tiny") -> str:
    """run_pipeline's refusal of ``inputs``, asserting that no stage ran (its run folder was not even made)."""
    with pytest.raises(OccsynthError) as refused:
        run_pipeline(tmp_path / "run", inputs, recipe=str(recipe), device="cpu", cache_dir=tmp_path / "cache",
                     progress=False, log=lambda line: None)
    assert not (tmp_path / "run").exists()
    return str(refused.value)


def _other_categories(ann: Path, out: Path, annotated_only: bool = False) -> Path:
    """``ann`` whose annotations are of categories ``ann`` does not list (ids moved by 1000); ``annotated_only``:
    the set lists ``ann``'s categories too, but none of its annotations is of them."""
    data = json.loads(ann.read_text())
    moved = [{**c, "id": c["id"] + 1000} for c in data["categories"]]
    out.write_text(json.dumps({**data, "categories": moved + (data["categories"] if annotated_only else []),
                               "annotations": [{**a, "category_id": a["category_id"] + 1000}
                                               for a in data["annotations"]]}))
    return out


@pytest.mark.parametrize("option", ["--coco-val-ann", "--cocoocc"])
def test_an_evaluation_set_sharing_no_category_with_the_training_set_is_refused_before_any_stage(demo_source, tmp_path,
                                                                                                 option):
    """The fine-tuned model predicts --coco-train-ann's categories: a val (or COCO-OCC) set of other ones was found
    only at its evaluation, after all the training."""
    ann, root = demo_source
    for annotated_only, words in ((False, rf"shares no category with the model \(it lists category ids \[1001, 1002, "
                                          rf".*; the model is fine-tuned on --coco-train-ann {ann}, which lists \[1, 2, "),
                                  (True, r"nothing to score: none of its 100 annotations is of a category the model "
                                         r"predicts \(they are of cat, clock, cup, ")):
        other = _other_categories(ann, tmp_path / "other.json", annotated_only)
        inputs = PipelineInputs(coco_train=(ann, root), coco_val=(other if option == "--coco-val-ann" else ann, root),
                                cocoocc=other if option == "--cocoocc" else None)
        assert re.match(rf"^{option} {other}: {words}",
                        refused_before_any_stage(tmp_path, inputs))


def test_an_evaluation_set_of_other_categories_is_refused_by_the_command_before_any_stage(demo_source, tmp_path):
    ann, root = demo_source
    other = _other_categories(ann, tmp_path / "other.json")
    (tmp_path / "recipe.toml").write_text(RECIPE)
    result = CliRunner().invoke(bcnet_main, ["train-synthetic", "--recipe", str(tmp_path / "recipe.toml"),
                                             "--coco-train-ann", str(ann), "--coco-train-images", str(root),
                                             "--coco-val-ann", str(other), "--coco-val-images", str(root),
                                             "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.startswith(f"Error: --coco-val-ann {other}: shares no category with the model"), result.output
    assert "[1/5]" not in result.output and not (tmp_path / "run").exists()


def test_a_cocoocc_selection_of_no_image_is_refused_before_any_stage(demo_source, tmp_path):
    """A [cocoocc] threshold that no two boxes of an image of --coco-val-ann reach: COCO-OCC was built empty after
    all the training, and its evaluation found no images to evaluate."""
    ann, root = demo_source
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.replace("threshold = 0.2", "threshold = 1"))
    assert re.match(rf"^pipeline recipe '{recipe}' \[cocoocc\]: selects none of the 24 images "
                    rf"of --coco-val-ann {ann}: no two boxes of an image overlap by iou >= 1 "
                    r"\(the largest overlap is 0\.\d+\); COCO-OCC would list no images to "
                    r"evaluate: lower the threshold, or give a COCO-OCC file with --cocoocc$",
                    refused_before_any_stage(tmp_path, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                                             recipe))


def test_a_cocoocc_selection_with_nothing_to_score_is_refused_before_any_stage(demo_source, tmp_path):
    """The images [cocoocc] selects hold objects of none of the training set's categories (which do occur on the
    other images of val): COCO-OCC's evaluation had nothing to score, after all the training."""
    from occsynth.cocoocc import select_images

    ann, root = demo_source
    data = json.loads(ann.read_text())
    selected = set(select_images(data, "iou", 0.3))
    elsewhere = ({a["category_id"] for a in data["annotations"]}
                 - {a["category_id"] for a in data["annotations"] if a["image_id"] in selected})
    assert selected and elsewhere
    train = tmp_path / "train.json"
    train.write_text(json.dumps({**data, "categories": [c for c in data["categories"] if c["id"] in elsewhere]}))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.replace("threshold = 0.2", "threshold = 0.3"))
    assert re.match(rf"^pipeline recipe '{recipe}' \[cocoocc\]: the COCO-OCC selection of "
                    rf"--coco-val-ann {ann}: nothing to score: none of its \d+ annotations is "
                    r"of a category the model predicts",
                    refused_before_any_stage(tmp_path, PipelineInputs(coco_train=(train, root), coco_val=(ann, root)),
                                             recipe))


@pytest.mark.parametrize("option", ["--coco-train-images", "--coco-val-images"])
def test_an_image_folder_that_does_not_hold_its_set_is_refused_before_any_stage(demo_source, tmp_path, option):
    """A wrong --coco-val-images was found at the evaluation, after all the training; a wrong --coco-train-images
    at the fine-tuning, after the pretraining on a --synthetic set (or at the generation, after its bank)."""
    ann, root = demo_source
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    train, val = (elsewhere, root) if option == "--coco-train-images" else (root, elsewhere)
    inputs = PipelineInputs(coco_train=(ann, train), coco_val=(ann, val), synthetic=(ann, root))
    assert re.match(rf"^{option[:-7]}-ann {ann}: none of \d+ sampled images is under {option} "
                    rf"{elsewhere} \(e\.g\. {elsewhere}/set-a/000001\.jpg\); is {option} the "
                    r"folder that the file_name entries are relative to\?$",
                    refused_before_any_stage(tmp_path, inputs))


@pytest.mark.parametrize("table", ["pretrain", "finetune"])
def test_a_missing_backbone_weights_file_of_a_training_table_is_refused_before_any_stage(demo_source, tmp_path, table):
    """The trainer looks for the file when its stage starts: the fine-tuning's after the generation and the
    pretraining."""
    ann, root = demo_source
    recipe = tmp_path / "recipe.toml"
    head = f'[{table}]\nschedule = "schedule-tiny"\n'
    recipe.write_text(RECIPE.replace(head, f'{head}backbone = "resnet18"\nbackbone_weights = "{tmp_path}/no.pth"\n'))
    assert re.match(rf"^pipeline recipe '{recipe}' \[{table}\]: backbone weights "
                    rf"{tmp_path}/no\.pth: no such file \(expected a torchvision resnet18 "
                    r"state dict\)$",
                    refused_before_any_stage(tmp_path, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                                             recipe))


def test_backbone_weights_for_a_tiny_backbone_are_refused_before_any_stage(demo_source, tmp_path):
    """--backbone-weights go to the pretraining, whose trainer refused them for a 'tiny' backbone (pipeline-tiny's)
    only once the synthetic set was generated."""
    ann, root = demo_source
    weights = tmp_path / "resnet50.pth"
    weights.write_bytes(b"weights")
    inputs = PipelineInputs(coco_train=(ann, root), coco_val=(ann, root), backbone_weights=weights)
    assert re.match(rf"^pipeline recipe 'pipeline-tiny' \[pretrain\] with --backbone-weights: "
                    rf"backbone weights {weights}: the 'tiny' backbone has no pretrained "
                    "weights; use backbone resnet18 or resnet50",
                    refused_before_any_stage(tmp_path, inputs))


def test_a_bcnet_checkpoint_given_as_backbone_weights_is_refused_in_the_pipelines_words(demo_source, tmp_path):
    """The trainer's refusal named its own way to start from a checkpoint, init_checkpoint/--init: neither is an
    argument of run_pipeline or an option of train-synthetic."""
    ann, root = demo_source
    weights = tmp_path / "model_final.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "iteration": 80}, weights)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.replace('schedule = "schedule-tiny"\n', 'schedule = "schedule-tiny"\nbackbone = "resnet18"\n'))
    inputs = PipelineInputs(coco_train=(ann, root), coco_val=(ann, root), synthetic=(ann, root), cocoocc=ann,
                            backbone_weights=weights)
    with pytest.raises(OccsynthError) as refused:
        run_pipeline(tmp_path / "run", inputs, recipe=str(recipe), device="cpu", progress=False, log=lambda line: None)
    assert str(refused.value) == (
        f"backbone weights {weights}: this is a bcnet training checkpoint, not backbone weights (give ImageNet "
        "weights, or none; `bcnet train --init` starts a run from a checkpoint); expected a torchvision resnet18 state dict (e.g. from torchvision.models.resnet18(weights=...)"
        ".state_dict(), saved with torch.save)")


def test_amodal_fine_tuning_on_a_training_set_without_amodal_masks_is_refused_before_any_stage(demo_source, tmp_path):
    ann, root = demo_source
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.replace('[finetune]\nschedule = "schedule-tiny"\n',
                                     '[finetune]\nschedule = "schedule-tiny"\nmode = "amodal"\n'))
    assert re.match(rf"^pipeline recipe '{recipe}' \[finetune\]: {ann}: annotation 1 \(image 1\) "
                    r"has no amodal_segmentation: amodal training needs one",
                    refused_before_any_stage(tmp_path, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                                             recipe))


def test_inputs_no_stage_reads_again_are_not_checked(demo_source, tmp_path):
    """A run whose stages are done reads neither COCO image folder, the backbone weights nor the val set again:
    they may be gone, or unfit for a stage that will not run, and the run is not stopped for them."""
    ann, root = demo_source
    out = tmp_path / "run"
    for done in ("synthetic/annotations.json", "synthetic/manifest.json", "pretrain/model_final.pt",
                 "finetune/model_final.pt", "cocoocc/annotations.json", "cocoocc/manifest.json",
                 "cocoocc/report.json", "evaluation/results.json", "evaluation/results.md"):
        (out / done).parent.mkdir(parents=True, exist_ok=True)
        (out / done).write_text("{}")
    recipe = tmp_path / "recipe.toml"
    text = RECIPE.replace("threshold = 0.2", "threshold = 1")
    for table in ("pretrain", "finetune"):
        head = f'[{table}]\nschedule = "schedule-tiny"\n'
        text = text.replace(head, f'{head}backbone = "resnet18"\nbackbone_weights = "{tmp_path}/gone.pth"\n'
                                  f'mode = "amodal"\n')
    recipe.write_text(text)
    gone = tmp_path / "gone"
    gone.mkdir()
    other = _other_categories(ann, tmp_path / "other.json")
    logs = []
    run_pipeline(out, PipelineInputs(coco_train=(ann, gone), coco_val=(other, gone)), recipe=str(recipe),
                 device="cpu", progress=False, log=logs.append)
    assert sum("done" in line for line in logs) == 5


def test_a_cocoocc_record_whose_file_name_is_too_long_to_look_up_does_not_stop_the_image_check(demo_source, tmp_path):
    """A file_name the file system cannot even look up (ENAMETOOLONG) is one missing image, as the evaluation
    skips it: the sampled check raised the OSError and stopped the whole run."""
    from bcnet.pipeline import check_images_under
    ann, root = demo_source
    data = json.loads(ann.read_text())
    long_first = tmp_path / "occ.json"
    long_first.write_text(json.dumps({**data, "images": [{**data["images"][0], "file_name": "x" * 300 + ".jpg"},
                                                         *data["images"][1:]]}))
    check_images_under(long_first, root, "--cocoocc", "--coco-val-images")  # the other sampled images are there
    only_long = tmp_path / "long.json"
    only_long.write_text(json.dumps({**data, "images": [{**data["images"][0], "file_name": "x" * 300 + ".jpg"}]}))
    with pytest.raises(OccsynthError, match="none of 1 sampled images is under --coco-val-images"):
        check_images_under(only_long, root, "--cocoocc", "--coco-val-images")


def test_the_image_folder_checks_sample_records_from_end_to_end_as_the_bank_does(demo_source, tmp_path):
    """train-synthetic sampled every (n // 50)th image record, the first 50 of them: the last records of a file were
    never looked at, so a folder holding only the end of a set was taken for a wrong one. It samples as the bank's
    check does now (occsynth.coco.none_found_under: first and last included, one sample size)."""
    from bcnet.pipeline import check_images_under
    from occsynth import coco

    ann, root = demo_source
    data = json.loads(ann.read_text())
    present = data["images"][-1]
    missing = [{**data["images"][0], "id": 1000 + k, "file_name": f"gone/{k}.png"} for k in range(60)]
    tail = tmp_path / "tail.json"
    tail.write_text(json.dumps({**data, "images": [*missing, present]}))
    check_images_under(tail, root, "--coco-val-ann", "--coco-val-images")  # the last record's file is there
    sample = coco.spread(61, coco.ROOT_SAMPLE)
    assert len(sample) == coco.ROOT_SAMPLE and sample[0] == 0 and sample[-1] == 60 and sample == sorted(set(sample))
    assert coco.spread(3, coco.ROOT_SAMPLE) == [0, 1, 2] and coco.spread(0, coco.ROOT_SAMPLE) == []
    wrong = tmp_path / "tail-wrong.json"
    wrong.write_text(json.dumps({**data, "images": missing}))
    with pytest.raises(OccsynthError, match=rf"none of {coco.ROOT_SAMPLE} sampled images is under --coco-val-images"):
        check_images_under(wrong, root, "--coco-val-ann", "--coco-val-images")


def test_the_image_folder_check_finds_lvis_records_by_their_coco_url(tmp_path):
    """LVIS records name their file by ``coco_url`` alone (split folder and file name, as every reader takes them):
    the check found no name to look up and passed any folder, so a wrong one stopped the run only at its stage."""
    from bcnet.pipeline import check_images_under
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    jpeg = cv2.imencode(".jpg", np.zeros((4, 4, 3), np.uint8))[1].tobytes()  # read by the check's sample
    (root / "val2017" / "000000000001.jpg").write_bytes(jpeg)
    ann = tmp_path / "lvis_v1_val.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "height": 4, "width": 4,
                                           "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg"}],
                               "annotations": [], "categories": []}))
    check_images_under(ann, root, "--coco-val-ann", "--coco-val-images")
    with pytest.raises(OccsynthError) as exc:
        check_images_under(ann, root / "val2017", "--coco-val-ann", "--coco-val-images")
    assert str(exc.value) == (f"--coco-val-ann {ann}: none of 1 sampled images is under --coco-val-images "
                              f"{root / 'val2017'} (e.g. {root / 'val2017' / 'val2017' / '000000000001.jpg'}); is "
                              "--coco-val-images the folder that the file_name entries are relative to?")


def test_the_recipe_record_takes_toml_dates_and_binds_only_a_folder_where_a_stage_ran(tmp_path):
    from bcnet.pipeline import check_run_recipe
    plan = {"made": datetime.date(2026, 12, 1), "pretrain": {"schedule": "schedule-tiny"}}
    check_run_recipe(tmp_path / "run", "mine", plan)
    check_run_recipe(tmp_path / "run", "mine", plan)  # the same again: fine
    check_run_recipe(tmp_path / "run", "other", {"pretrain": {}})  # no stage ran (the first failed at once)
    assert json.loads((tmp_path / "run" / "pipeline-run.json").read_text())["recipe"] == "other"
    (tmp_path / "run" / "synthetic").mkdir()
    with pytest.raises(OccsynthError, match="made with recipe 'other', not 'mine'"):
        check_run_recipe(tmp_path / "run", "mine", plan)


def test_a_recipe_edited_only_by_an_empty_table_says_which_table_changed(tmp_path):
    """An empty [cocoocc] table taken out of the recipe (the stage's defaults either way): the plans differ, and no
    setting in them does; the refusal said 'with other settings ()'."""
    from bcnet.pipeline import check_run_recipe
    out = tmp_path / "run"
    (out / "pretrain").mkdir(parents=True)
    check_run_recipe(out, "mine", {"pretrain": {"schedule": "schedule-tiny"}, "cocoocc": {}})
    with pytest.raises(OccsynthError, match=r"made with recipe 'mine' with other settings \(cocoocc: \{\} -> -\); "
                                            r"rerun it"):
        check_run_recipe(out, "mine", {"pretrain": {"schedule": "schedule-tiny"}})


def test_an_input_that_could_not_be_read_when_recorded_is_not_compared_once_readable_again(tmp_path):
    """A run folder recorded while its --synthetic set was deleted (a folder of a version that kept no record, rerun
    once pretraining was done) has no content to compare the set with when it is back: it is not refused."""
    from bcnet.pipeline import check_run_recipe
    out = tmp_path / "run"
    (out / "pretrain").mkdir(parents=True)
    plan = {"pretrain": {"schedule": "schedule-tiny"}}
    recorded = {"coco_train": {"annotations": "train.json", "sha256": "aa"}, "coco_val": None,
                "synthetic": {"annotations": "synthetic.json", "sha256": None}, "cocoocc": None, "backbone_weights": None}
    check_run_recipe(out, "mine", plan, recorded)
    check_run_recipe(out, "mine", plan, {**recorded, "synthetic": {"annotations": "synthetic.json", "sha256": "bb"}})
    with pytest.raises(OccsynthError, match=r"other input data: --coco-train-ann was train\.json \(sha256 aa\), now "
                                            r"train\.json \(sha256 cc\)"):
        check_run_recipe(out, "mine", plan, {**recorded, "coco_train": {"annotations": "train.json", "sha256": "cc"}})


def test_a_stage_killed_between_its_last_files_is_finished_by_the_rerun(pipeline_run, tmp_path):
    """Each stage writes several files at its end (annotations.json before manifest.json, results.json before
    results.md): a kill between them left a stage counted as done whose manifest or table was never written."""
    out, report, _, recipe, (ann, root) = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for name in ("synthetic/manifest.json", "cocoocc/report.json", "evaluation/results.md"):
        (copy / name).unlink()
    logs = []
    again = run_pipeline(copy, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)), recipe=str(recipe),
                         device="cpu", cache_dir=out.parent / "cache", progress=False, log=logs.append)
    assert [line.split(":")[0] for line in logs if "done" in line] == ["[2/5] pretrain", "[3/5] fine-tune"]
    for name in ("synthetic/manifest.json", "cocoocc/report.json", "evaluation/results.md"):
        assert (copy / name).read_text() == (out / name).read_text().replace(str(out), str(copy)), name
    for name in ("synthetic/annotations.json", "cocoocc/annotations.json", "results.md"):
        assert (copy / name).read_bytes() == (out / name).read_bytes(), name
    assert again["results"] == report["results"]


def test_interrupted_finetune_resumes_from_its_checkpoint(pipeline_run, tmp_path):
    out, report, _, recipe, (ann, root) = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "finetune" / "model_final.pt").unlink()
    (copy / "finetune" / "last_checkpoint").write_text("checkpoint_0000001.pt\n")
    shutil.rmtree(copy / "evaluation")
    assert (copy / "finetune" / "checkpoint_0000001.pt").exists()
    logs = []
    run_pipeline(copy, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)), recipe=str(recipe),
                 device="cpu", progress=False, log=logs.append)
    assert any("resuming" in line for line in logs)
    a = torch.load(out / "finetune" / "model_final.pt", weights_only=True)["model"]
    b = torch.load(copy / "finetune" / "model_final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_predict_writes_results_and_three_panel_pictures(pipeline_run, tmp_path):
    out, _, _, _, (ann, root) = pipeline_run
    images = sorted(p for p in root.rglob("*.jpg"))[:2]
    result = CliRunner().invoke(bcnet_main, ["predict", *map(str, images), "--checkpoint",
                                             str(out / "finetune" / "model_final.pt"), "--out", str(tmp_path / "p"),
                                             "--score-threshold", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    listed = json.loads((tmp_path / "p" / "images.json").read_text())
    assert [im["file_name"] for im in listed] == [str(p) for p in images]
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    cats = {c["id"] for c in json.loads(ann.read_text())["categories"]}
    assert all(r["category_id"] in cats and r["image_id"] in (1, 2) for r in results)
    pictures = sorted((tmp_path / "p" / "pictures").glob("*.png"))
    assert len(pictures) == 2
    first = read_image(images[0])
    assert read_image(pictures[0]).shape == (first.shape[0], 3 * first.shape[1], 3)
    # a rerun into the same --out: a file named twice is predicted once, and the last run's pictures go
    again = CliRunner().invoke(bcnet_main, ["predict", str(images[1]), str(images[1].parent), "--checkpoint",
                                            str(out / "finetune" / "model_final.pt"), "--out", str(tmp_path / "p"),
                                            "--quiet", "--no-pictures"])
    assert again.exit_code == 0, again.output
    listed = [im["file_name"] for im in json.loads((tmp_path / "p" / "images.json").read_text())]
    assert listed[0] == str(images[1]) and len(listed) == len(set(map(os.path.realpath, listed)))
    (tmp_path / "latest.jpg").symlink_to(images[0])  # another name the user chose for a file: kept
    os.link(images[0], tmp_path / "copy.jpg")  # a hard link too
    (tmp_path / "deep").mkdir()
    (tmp_path / "up").symlink_to(tmp_path / "deep")  # up/.. is tmp_path/, where the link leads, not its folder
    (tmp_path / "x.jpg").write_bytes(images[0].read_bytes())
    (tmp_path / "deep" / "x.jpg").write_bytes(images[1].read_bytes())
    named = [images[0], tmp_path / "latest.jpg", images[0].absolute(), tmp_path / "copy.jpg",
             tmp_path / "deep" / "x.jpg", tmp_path / "up" / ".." / "x.jpg", tmp_path / "up" / "x.jpg"]
    assert list_images(named) == [images[0], tmp_path / "latest.jpg", tmp_path / "copy.jpg",
                                  tmp_path / "deep" / "x.jpg", tmp_path / "up" / ".." / "x.jpg"]
    assert not list((tmp_path / "p" / "pictures").glob("*.png"))


def test_an_evaluation_into_the_same_out_leaves_no_detections_of_sets_it_no_longer_has(pipeline_run, tmp_path):
    out, _, _, _, (ann, root) = pipeline_run
    checkpoint = str(out / "finetune" / "model_final.pt")
    for name in ("first", "second"):
        result = CliRunner().invoke(bcnet_main, ["evaluate", "--checkpoint", checkpoint, "--ann", str(ann),
                                                 "--images", str(root), "--name", name, "--out",
                                                 str(tmp_path / "e"), "--device", "cpu", "--quiet"])
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "e").glob("detections_*.json")) == ["detections_second.json"]
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        a["category_id"] = 5000
    bad = tmp_path / "badcat.json"
    bad.write_text(json.dumps(data))
    result = CliRunner().invoke(bcnet_main, ["evaluate", "--checkpoint", checkpoint, "--ann", str(bad), "--images",
                                             str(root), "--out", str(tmp_path / "b"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"none of the {len(data['annotations'])} annotations of {bad} can be evaluated" in result.output
    assert "unknown category" in result.output and not (tmp_path / "b").exists()


def test_evaluate_and_predict_refuse_an_unwritable_out_before_running_the_model(pipeline_run, tmp_path, monkeypatch):
    out, _, _, _, (ann, root) = pipeline_run
    from bcnet import evaluate, predict

    def never(*args, **kwargs):
        raise AssertionError("the model ran before --out was found unwritable")
    monkeypatch.setattr(evaluate, "predict_dataset", never)
    monkeypatch.setattr(predict, "_predict_into", never)
    (tmp_path / "afile").write_text("x")
    checkpoint = str(out / "finetune" / "model_final.pt")
    for args in (["evaluate", "--checkpoint", checkpoint, "--ann", str(ann), "--images", str(root)],
                 ["predict", str(root), "--checkpoint", checkpoint, "--device", "cpu"]):
        result = CliRunner().invoke(bcnet_main, args + ["--out", str(tmp_path / "afile" / "sub"), "--quiet"])
        assert result.exit_code == 2, result.output
        assert f"cannot make folder {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file" in result.output
    monkeypatch.setattr(predict, "_predict_into", lambda *a, **k: (_ for _ in ()).throw(
        OccsynthError("the input image could not be processed")))
    with pytest.raises(OccsynthError):  # a failed run leaves no empty --out behind
        predict.predict(checkpoint, [root], tmp_path / "new", device="cpu", progress=False)
    assert not (tmp_path / "new").exists()


def test_render_prediction_puts_the_occluder_heat_map_beside_the_mask():
    image = np.full((20, 30, 3), 128, np.uint8)
    masks = torch.zeros(1, 1, 20, 30)
    masks[0, 0, 5:10, 5:10] = 1.0
    occluder = torch.zeros(1, 1, 20, 30)
    occluder[0, 0, 12:18, 20:28] = 1.0
    output = {"boxes": torch.tensor([[5.0, 5.0, 10.0, 10.0]]), "labels": torch.tensor([1]),
              "scores": torch.tensor([0.9]), "masks": masks, "occluder_masks": occluder}
    picture = render_prediction(image, output, {18: "dog"}, [18], score_threshold=0.5)
    assert picture.shape == (20, 90, 3)
    mask_panel, heat_panel = picture[:, 30:60].astype(int), picture[:, 60:].astype(int)
    # hot (red) where the occluder probability is 1, cold (blue) elsewhere; the mask panel likewise
    assert heat_panel[15, 24, 0] > heat_panel[15, 24, 2] + 50      # JET: 1.0 is red
    assert heat_panel[2, 2, 2] > heat_panel[2, 2, 0] + 50          # 0.0 is blue
    assert mask_panel[7, 7, 0] > mask_panel[7, 7, 2] + 50 and mask_panel[15, 24, 2] > mask_panel[15, 24, 0] + 50
    assert not np.array_equal(picture[:, :30], image)  # the mask tint and box are drawn


def test_bench_reports_both_heads_and_ratios():
    before = torch.get_rng_state()
    report = bench_heads(backbone="tiny", batch=1, size=64, iters=1, warmup=0, device="cpu", progress=False)
    assert torch.equal(torch.get_rng_state(), before)  # it seeds; the caller's generator is given back
    assert report["fcn"]["parameters"] < report["bilayer-gcn"]["parameters"]
    assert report["train_step_ratio"] > 0 and report["inference_ratio"] > 0
    assert report["extra_parameters_m"] == pytest.approx(
        (report["bilayer-gcn"]["parameters"] - report["fcn"]["parameters"]) / 1e6, abs=0.01)
    assert report["detections_per_image"] == [0]  # an untrained tiny detector finds nothing: the CLI says so
    result = CliRunner().invoke(bcnet_main, ["bench", "--backbone", "tiny", "--batch", "1", "--size", "64",
                                             "--iters", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "no mask head ran there and the inference ratio compares the detector alone" in result.output
    assert report["amp"] == "off" and "cpu, faster-rcnn tiny, batch 1 of 64x64, float32, 1 iteration" in result.output
    # a progress bar on stderr over the rounds (2 warm-up and 1 timed, for each of the 2 heads), none with --quiet
    assert re.search(r"^bench: 100%.* 6/6 ", result.stderr.replace("\r", "\n"), re.M), result.stderr
    quiet = CliRunner().invoke(bcnet_main, ["bench", "--backbone", "tiny", "--batch", "1", "--size", "64",
                                            "--iters", "1", "--device", "cpu", "--quiet", "--json"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.output)["iters"] == 1


def test_bench_says_when_it_timed_bf16_autocast(monkeypatch):
    """--amp timed bf16 autocast (on a CPU too) under the same header as float32: two benches could not be told
    apart, in the text or in --json."""
    real = bench_heads
    monkeypatch.setattr("bcnet.bench.bench_heads", lambda **kwargs: real(**kwargs, warmup=0))
    args = ["bench", "--backbone", "tiny", "--batch", "1", "--size", "64", "--iters", "1", "--device", "cpu", "--amp"]
    result = CliRunner().invoke(bcnet_main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("cpu, faster-rcnn tiny, batch 1 of 64x64, bf16 autocast, 1 iteration\n")
    result = CliRunner().invoke(bcnet_main, [*args, "--json"])
    assert json.loads(result.stdout)["amp"] == "bf16"


def test_bench_reports_the_median_times_and_their_ratios_of_two_models_sharing_one_detector(monkeypatch):
    """The bench's arithmetic on known times (one per timed call), and what makes its ratio fair: the same detector
    weights in both models, the instance masks alone returned, the detections of its last inference batch."""
    import bcnet.bench as B

    built, real_build = {}, B.build_model

    def build(num_classes, **kwargs):
        model = real_build(num_classes, **kwargs)
        model.roi_heads.score_thresh = 0.0  # an untrained detector then keeps detections: the mask heads run
        built[kwargs["mask_head"]] = model
        return model

    # per iteration: the Mask R-CNN head's train step and inference, then BCNet's
    scripted = iter([1.0, 0.5, 3.0, 0.6, 5.0, 0.1, 2.2, 0.4, 2.0, 0.3, 9.0, 0.9])

    def timed(fn, device):
        if fn.__name__ == "inference":  # the train steps are not run: the weights stay as the bench set them
            fn()
        return next(scripted)

    monkeypatch.setattr(B, "build_model", build)
    monkeypatch.setattr(B, "_timed", timed)
    report = bench_heads(backbone="tiny", batch=1, size=64, iters=3, warmup=0, device="cpu", progress=False)
    fcn, bilayer = built["fcn"], built["bilayer-gcn"]
    assert report["fcn"] == {"parameters": B.count_parameters(fcn), "train_step_s": 2.0, "inference_s": 0.3}
    assert report["bilayer-gcn"] == {"parameters": B.count_parameters(bilayer), "train_step_s": 3.0,
                                     "inference_s": 0.6}
    assert report["train_step_ratio"] == 1.5 and report["inference_ratio"] == 2.0
    assert report["extra_parameters_m"] == round((B.count_parameters(bilayer) - B.count_parameters(fcn)) / 1e6, 2)
    theirs = bilayer.state_dict()
    shared = [k for k, v in fcn.state_dict().items() if "mask" not in k and k in theirs and theirs[k].shape == v.shape]
    assert any(k.startswith("backbone.") for k in shared) and any(k.startswith("roi_heads.box") for k in shared)
    assert all(torch.equal(fcn.state_dict()[k], theirs[k]) for k in shared)
    assert fcn.return_occluder_masks is False and bilayer.return_occluder_masks is False
    images, _ = B._synthetic_batch(1, 64, 81, torch.device("cpu"))
    with torch.no_grad():
        found = [len(out["boxes"]) for out in bilayer.eval()(images)]
    assert report["detections_per_image"] == found and found[0] > 0


def test_the_bench_batch_masks_fill_their_boxes_and_each_is_occluded_by_the_one_before():
    from bcnet.bench import _synthetic_batch

    images, targets = _synthetic_batch(2, 64, 5, torch.device("cpu"))
    assert [tuple(image.shape) for image in images] == [(3, 64, 64)] * 2
    for target in targets:
        for (x0, y0, x1, y1), mask in zip(target["boxes"].round().long().tolist(), target["masks"]):
            expected = torch.zeros(64, 64, dtype=torch.uint8)
            expected[y0:y1, x0:x1] = 1
            assert torch.equal(mask, expected) and mask.any()
        assert not target["occluder_masks"][0].any()
        assert torch.equal(target["occluder_masks"][1:], target["masks"][:-1])
        assert ((target["labels"] >= 1) & (target["labels"] < 5)).all()


def test_bench_command_prints_the_report_it_gets(monkeypatch):
    calls = []
    report = {"device": "cpu", "detector": "fcos", "backbone": "resnet18", "batch": 3, "size": 128, "iters": 4,
              "amp": "off", "fcn": {"parameters": 21_500_000, "train_step_s": 0.2, "inference_s": 0.05},
              "bilayer-gcn": {"parameters": 25_550_000, "train_step_s": 0.23, "inference_s": 0.06},
              "train_step_ratio": 1.15, "inference_ratio": 1.2, "extra_parameters_m": 4.05,
              "detections_per_image": [0, 3, 0]}
    monkeypatch.setattr("bcnet.bench.bench_heads", lambda **kwargs: calls.append(kwargs) or report)
    args = ["bench", "--detector", "fcos", "--backbone", "resnet18", "--batch", "3", "--size", "128", "--iters", "4",
            "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(bcnet_main, args)
    assert result.exit_code == 0, result.output
    assert calls == [{"detector": "fcos", "backbone": "resnet18", "batch": 3, "size": 128, "iters": 4, "device": "cpu",
                      "amp": False, "progress": False}]
    assert result.output.splitlines() == [
        "cpu, fcos resnet18, batch 3 of 128x128, float32, 4 iterations",
        "with Mask R-CNN head:  21.50M params (whole model), train step    200.0 ms, inference     50.0 ms",
        "with BCNet head     :  25.55M params (whole model), train step    230.0 ms, inference     60.0 ms",
        "BCNet / Mask R-CNN: train step 1.15x, inference 1.20x, +4.05M parameters"]  # detections: no note
    report["detections_per_image"] = [0, 0, 0]
    result = CliRunner().invoke(bcnet_main, args)
    assert result.output.splitlines()[-1].startswith("note: the detector found nothing in the inference batch")


def test_a_typo_in_a_recipe_training_table_fails_before_any_stage_runs(demo_source, tmp_path):
    ann, root = demo_source
    recipe = tmp_path / "typo.toml"
    recipe.write_text(RECIPE.replace("[pretrain]\n", "[pretrain]\niteratons = 5\n", 1))
    assert "iteratons" in recipe.read_text()
    with pytest.raises(OccsynthError, match=r"\[pretrain\]: unknown schedule setting 'iteratons'"):
        run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                     recipe=str(recipe), device="cpu", cache_dir=tmp_path / "cache", progress=False, log=print)
    assert not (tmp_path / "run" / "synthetic").exists()


def test_tiny_refuses_coco_inputs_it_would_ignore(demo_source, tmp_path):
    ann, root = demo_source
    result = CliRunner().invoke(bcnet_main, ["train-synthetic", "--tiny", "--out", str(tmp_path / "run"),
                                             "--coco-train-ann", str(ann), "--coco-train-images", str(root)])
    assert result.exit_code == 2
    assert "--tiny runs on the embedded demo data: drop --coco-train-ann, --coco-train-images" in result.output
    assert not (tmp_path / "run").exists()


def test_train_synthetic_passes_its_cache_dir_to_every_stage(tmp_path, monkeypatch):
    import bcnet.pipeline as pipeline
    seen = {}

    def fake_inputs(cache_dir=None):
        seen["inputs"] = cache_dir
        return PipelineInputs(coco_train=(tmp_path, tmp_path), coco_val=(tmp_path, tmp_path))

    def fake_run(out, inputs, **kwargs):
        seen["run"] = kwargs["cache_dir"]
        return {"table": "| table |"}

    monkeypatch.setattr(pipeline, "tiny_inputs", fake_inputs)
    monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
    cache = str(tmp_path / "cache")
    result = CliRunner().invoke(bcnet_main, ["train-synthetic", "--tiny", "--out", str(tmp_path / "run"),
                                             "--cache-dir", cache, "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen == {"inputs": cache, "run": cache}


@pytest.mark.parametrize("old, new, words", [
    ("threshold = 0.2", "threshold = 5", "[cocoocc]: threshold must be a number in (0, 1], got 5"),
    ('overlap = "iou"', 'overlap = "area"', "[cocoocc]: overlap measure must be one of iou, min, got 'area'"),
    ("threshold = 0.2", "threshold = 0.2\ncount_crowd = 1", "[cocoocc]: count_crowd must be true or false, got 1"),
    ("threshold = 0.2", "threshold = 0.2\ntreshold = 0.3", "[cocoocc]: unknown setting 'treshold' (did you mean 'threshold'?) (known: "),
    ("[cocoocc]", "[coco-occ]", "[coco-occ]: unknown table (did you mean 'cocoocc'?) (a pipeline recipe has the tables [synthetic], "
                                "[pretrain], [finetune], [cocoocc])"),
    ("[synthetic]", "num_images = 3\n[synthetic]", "'num_images': a setting outside any table"),
    ("iterations = 2", "iterations = -2", "[finetune]: schedule setting iterations must be an integer >= 1, got -2"),
    ("num_images = 6", "num_images = 'many'", "[synthetic]: num_images must be a whole number between 1 and 10000000, got 'many'"),
    ("num_images = 6", "num_imagse = 6", "[synthetic]: unknown setting 'num_imagse' (did you mean 'num_images'?) (known: recipe, num_images,"),
    ("[pretrain]", "[synthetic.composite]\npastez = 3\n[pretrain]",
     "[synthetic.composite]: unknown setting 'pastez' (did you mean 'pastes'?) (known: pastes, occlusion,"),
    ('schedule = "schedule-tiny"\niterations = 3', 'schedule = "nosuch"\niterations = 3',
     "[pretrain] schedule: schedule 'nosuch': no such TOML file or bundled schedule"),
    ("num_images = 6", "num_images = 6\ncomposite = 3",
     "[synthetic]: 'composite' must be a table ([synthetic.composite]), got int"),
    ("num_images = 6", "num_images = 6\nbank = [1]", "[synthetic]: 'bank' must be a table ([synthetic.bank]), got list"),
])
def test_every_recipe_setting_is_checked_before_the_first_stage(demo_source, tmp_path, old, new, words):
    ann, root = demo_source
    recipe = tmp_path / "bad.toml"
    assert old in RECIPE
    recipe.write_text(RECIPE.replace(old, new, 1))
    with pytest.raises(OccsynthError) as caught:
        run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                     recipe=str(recipe), device="cpu", cache_dir=tmp_path / "cache", progress=False, log=print)
    assert str(caught.value).startswith(f"pipeline recipe {str(recipe)!r} {words}"), str(caught.value)
    assert not (tmp_path / "run").exists()


def test_a_bad_value_in_a_recipe_schedule_file_names_the_recipe_table_and_the_file(demo_source, tmp_path):
    import manifests

    ann, root = demo_source
    schedule = tmp_path / "s.toml"
    schedule.write_text(manifests.path("schedule-tiny").read_text().replace("momentum = 0.9", "momentum = 1.5"))
    recipe = tmp_path / "bad.toml"
    recipe.write_text(RECIPE.replace('schedule = "schedule-tiny"', f"schedule = {str(schedule)!r}", 1))
    with pytest.raises(OccsynthError) as caught:
        run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                     recipe=str(recipe), device="cpu", cache_dir=tmp_path / "cache", progress=False, log=print)
    assert str(caught.value) == (f"pipeline recipe {str(recipe)!r} [pretrain] schedule: {schedule}: schedule setting "
                                 "momentum must be in [0, 1), got 1.5")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("table, expected", [
    ("[cocoocc]\noverlap = \"min\"\nthreshold = 0.3\ncount_crowd = true\n",
     {"overlap": "min", "threshold": 0.3, "count_crowd": True, "progress": True}),
    ("", {"progress": True}),  # no [cocoocc]: build_cocoocc's own defaults
])
def test_the_cocoocc_stage_passes_the_recipe_options_and_progress(demo_source, tmp_path, monkeypatch, table,
                                                                  expected):
    import occsynth.cocoocc

    ann, root = demo_source
    out = tmp_path / "run"
    for done in ("synthetic/annotations.json", "synthetic/manifest.json", "pretrain/model_final.pt",
                 "finetune/model_final.pt", "evaluation/results.json", "evaluation/results.md"):  # the others are done
        (out / done).parent.mkdir(parents=True, exist_ok=True)
        (out / done).write_text("{}")
    seen = {}

    def build(ann_path, out_dir, **kwargs):
        seen.update(kwargs)
        return {"counts": {"images": 1, "source_images": 2}}

    monkeypatch.setattr(occsynth.cocoocc, "build_cocoocc", build)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE[:RECIPE.index("[cocoocc]")] + table)
    logs = []
    run_pipeline(out, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)), recipe=str(recipe), device="cpu",
                 cache_dir=tmp_path / "cache", progress=True, log=logs.append)
    assert seen == expected and "[4/5] COCO-OCC: 1 of 2 images" in logs[3]


def test_a_malformed_cocoocc_file_is_refused_before_the_first_stage(demo_source, tmp_path):
    ann, root = demo_source
    (tmp_path / "cocoocc.json").write_text('{"images": [')
    (tmp_path / "recipe.toml").write_text(RECIPE)
    result = CliRunner().invoke(bcnet_main, ["train-synthetic", "--tiny", "--recipe", str(tmp_path / "recipe.toml"),
                                             "--cocoocc", str(tmp_path / "cocoocc.json"), "--out", str(tmp_path / "run"),
                                             "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Error: {tmp_path / 'cocoocc.json'}: malformed JSON" in result.output, result.output
    assert "[1/5]" not in result.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize("present, missing", [("images", "no annotations.json"),
                                              ("annotations.json", "no images/ folder"),
                                              (None, "no annotations.json and no images/ folder")])
def test_a_synthetic_folder_that_is_no_generate_output_is_refused_before_the_first_stage(demo_source, tmp_path,
                                                                                          present, missing):
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    if present == "images":
        (synthetic / "images").mkdir()
    elif present:
        (synthetic / present).write_text('{"images": [], "annotations": [], "categories": []}')
    result = _train_synthetic_on(synthetic, demo_source, tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (f"Error: synthetic set {synthetic}: not an `occsynth generate` output ({missing})"
            in result.output), result.output
    assert "[2/5]" not in result.output and not (tmp_path / "run").exists()


def test_a_half_finished_synthetic_set_is_named_as_one(pipeline_run, demo_source, tmp_path):
    """A generate run killed before its merge (images/ and parts/, no annotations.json): the message said the folder
    was no `occsynth generate` output at all, which it is; now it says how to finish it."""
    out = pipeline_run[0]
    synthetic = tmp_path / "synthetic"
    shutil.copytree(out / "synthetic", synthetic)
    (synthetic / "annotations.json").unlink()
    (synthetic / "manifest.json").unlink()
    result = _train_synthetic_on(synthetic, demo_source, tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (f"Error: synthetic set {synthetic}: no annotations.json - it holds an unfinished `occsynth generate` run "
            "or one --shard of a set: finish it with the same command") in result.output, result.output
    assert "[2/5]" not in result.output and not (tmp_path / "run").exists()


def _train_synthetic_on(synthetic, demo_source, tmp_path):
    """`bcnet train-synthetic` of the tiny recipe with ``synthetic`` as its set, the demo as COCO."""
    ann, root = demo_source
    (tmp_path / "recipe.toml").write_text(RECIPE)
    return CliRunner().invoke(bcnet_main, ["train-synthetic", "--recipe", str(tmp_path / "recipe.toml"),
                                           "--coco-train-ann", str(ann), "--coco-train-images", str(root),
                                           "--coco-val-ann", str(ann), "--coco-val-images", str(root),
                                           "--synthetic", str(synthetic), "--out", str(tmp_path / "run"),
                                           "--device", "cpu", "--quiet"])


@pytest.mark.parametrize("fault, reason, example, words, hint", [
    ("missing", "missing image file", "000000000001.png", "no usable training images",
     "; is --synthetic's image folder ({images}) the folder that the file_name entries are relative to?"),
    ("corrupt", "unreadable or corrupt image", "000000000003.png", "none of the 3 training images could be read", ""),
])
def test_a_synthetic_set_without_readable_images_says_why(demo_source, tmp_path, fault, reason, example, words, hint):
    """Not just "no usable training images": the skips by reason, with an example file. The pretraining's question
    about its image folder named image_root/--images, which train-synthetic has not: the user gave --synthetic."""
    synthetic = write_dataset(tmp_path / "synthetic")
    for image in sorted((synthetic / "images").iterdir()):
        image.unlink() if fault == "missing" else image.write_bytes(b"not an image")
    result = _train_synthetic_on(synthetic, demo_source, tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    path = synthetic / "images" / example
    assert result.output.splitlines()[-1] == (
        f'Error: {synthetic / "annotations.json"}: {words} (skipped 3 bad records: {reason}=3; e.g. image file '
        f"{path}){hint.format(images=synthetic / 'images')}")


def test_the_pipeline_s_own_synthetic_set_without_images_names_its_image_folder(pipeline_run, tmp_path):
    """The run's own synthetic set (done) whose images were deleted: the pretraining asked about image_root/--images,
    an option train-synthetic has not; it names the set's image folder."""
    out, _, _, recipe, (ann, root) = pipeline_run
    run = tmp_path / "run"
    shutil.copytree(out / "synthetic", run / "synthetic")
    shutil.copyfile(out / RUN_FILE, run / RUN_FILE)
    images = run / "synthetic" / "images"
    shutil.rmtree(images)
    images.mkdir()
    with pytest.raises(OccsynthError) as refused:
        run_pipeline(run, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)), recipe=str(recipe),
                     device="cpu", progress=False, log=lambda line: None)
    assert str(refused.value).endswith(f"; is the synthetic set's image folder ({images}) the folder that the "
                                       "file_name entries are relative to?"), refused.value
    assert "image_root" not in str(refused.value)


def test_a_synthetic_folder_is_not_asked_for_once_pretraining_is_done(demo_source, tmp_path):
    """A resumed run whose pretraining finished never reads the synthetic set again: its files may be gone."""
    ann, root = demo_source
    (tmp_path / "emptied").mkdir()  # the set's images and annotations deleted to free the space
    (tmp_path / "run" / "pretrain").mkdir(parents=True)
    (tmp_path / "run" / "pretrain" / "model_final.pt").write_bytes(b"not a checkpoint")  # stands in for one
    (tmp_path / "recipe.toml").write_text(RECIPE)
    result = CliRunner().invoke(bcnet_main, ["train-synthetic", "--recipe", str(tmp_path / "recipe.toml"),
                                             "--coco-train-ann", str(ann), "--coco-train-images", str(root),
                                             "--coco-val-ann", str(ann), "--coco-val-images", str(root),
                                             "--synthetic", str(tmp_path / "emptied"), "--out", str(tmp_path / "run"),
                                             "--device", "cpu", "--quiet"])
    assert "[2/5] pretrain: done" in result.output, result.output
    assert "not an `occsynth generate` output" not in result.output
    # the fine-tune stage starts from that (fake) checkpoint and names it
    assert result.exit_code == 2 and f"{tmp_path / 'run' / 'pretrain' / 'model_final.pt'}:" in result.output


def test_an_out_folder_that_exists_but_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    """A read-only folder or mount passes mkdir -p; the probe file finds it (root ignores modes: simulated)."""
    def read_only(dir):
        raise PermissionError(errno.EROFS, "Read-only file system", str(dir))
    monkeypatch.setattr(atomic.tempfile, "TemporaryFile", read_only)
    (tmp_path / "exists").mkdir()
    for out, kept in ((tmp_path / "exists", True), (tmp_path / "new", False)):
        with pytest.raises(OccsynthError, match=f"cannot write into {out}: Read-only file system"):
            with atomic.locked_output_folder(out, OccsynthError):
                raise AssertionError("the work ran")
        assert out.exists() == kept  # a folder made for nothing is removed again


def test_backbone_weights_go_to_the_pretraining_only_and_bind_the_run_folder(demo_source, tmp_path, monkeypatch):
    """The paper's pipeline trained its ResNet-50 from scratch: train-synthetic had no way to give ImageNet weights."""
    ann, root = demo_source
    weights = tmp_path / "resnet50.pth"
    weights.write_bytes(b"weights")
    calls = _fake_training(monkeypatch)
    recipe = tmp_path / "recipe.toml"
    # ImageNet weights are for a resnet (the trainer refuses them for the tiny backbone, as the pipeline does up front)
    recipe.write_text(RECIPE.replace('schedule = "schedule-tiny"\n', 'schedule = "schedule-tiny"\nbackbone = "resnet18"\n'))
    cocoocc = tmp_path / "occ.json"
    cocoocc.write_text(ann.read_text())
    inputs = PipelineInputs(coco_train=(ann, root), coco_val=(ann, root), synthetic=(ann, root), cocoocc=cocoocc,
                            backbone_weights=weights)
    run_pipeline(tmp_path / "run", inputs, recipe=str(recipe), device="cpu", progress=False, log=lambda line: None)
    assert [(name, o.get("backbone_weights")) for name, o, _ in calls] == [("pretrain", str(weights)),
                                                                          ("finetune", None)]
    assert calls[1][2] == tmp_path / "run" / "pretrain" / "model_final.pt"  # fine-tuning starts from the pretraining
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights")
    for given, said in ((other, f"now {other}"), (None, "now none given; rerun")):
        with pytest.raises(OccsynthError, match=f"other input data: --backbone-weights was {weights} .*, {said}"):
            run_pipeline(tmp_path / "run", dataclasses.replace(inputs, backbone_weights=given), recipe=str(recipe),
                         device="cpu", progress=False, log=lambda line: None)


def test_a_stopped_train_synthetic_says_what_is_kept_and_what_to_do(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("bcnet.pipeline.run_pipeline", interrupted)  # the command imports it when it runs
    stopped = CliRunner().invoke(bcnet_main, ["train-synthetic", "--tiny", "--out", str(tmp_path / "run"),
                                              "--cache-dir", str(tmp_path / "cache")])
    assert stopped.exit_code == 130, stopped.output  # 128 + SIGINT
    assert stopped.output.endswith("\ninterrupted: finished stages and checkpoints are kept; run the same command "
                                   "again to continue\nStopped (SIGINT).\n")


@pytest.mark.parametrize("finetune, differ", [
    ('mask_head = "fcn"\n', "mask_head='bilayer-gcn'; [finetune]: mask_head='fcn'"),
    ('backbone = "resnet18"\nhead_preset = "original"\n',
     "backbone='tiny', head_preset='paper'; [finetune]: backbone='resnet18', head_preset='original'"),
])
def test_a_recipe_whose_two_training_stages_build_different_models_is_refused_before_any_stage(demo_source, tmp_path,
                                                                                              finetune, differ):
    """The fine-tuning starts from the pretraining's weights: with another model it loaded only the tensors that fit
    and trained the others from scratch, after a whole pretraining for nothing."""
    ann, root = demo_source
    recipe = tmp_path / "recipe.toml"
    head = '[finetune]\nschedule = "schedule-tiny"\n'
    recipe.write_text(RECIPE.replace(head, head + finetune))
    keys = "mask_head" if "mask_head" in finetune else "backbone, head_preset"
    assert refused_before_any_stage(tmp_path, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                                    recipe) == (
        f"pipeline recipe '{recipe}': [pretrain] and [finetune] build different models ([pretrain]: {differ}): the "
        "fine-tuning starts from the pretrained weights and would load only the tensors that fit, training the others "
        f"from scratch; give both tables the same {keys} (to fine-tune another model from a pretraining on purpose: "
        "bcnet train --init)")


def _fake_training(monkeypatch, reads: list | None = None) -> list:
    """bcnet.train.train writing a fake model_final.pt, and no evaluation: (stage folder, overrides, --init) per call;
    ``reads`` gets (stage folder, annotations, images) per call."""
    from bcnet import train as T

    calls = []

    def fake_train(ann_file, image_root, out_dir, schedule, overrides, resume, init_checkpoint, device, progress,
                   report):
        calls.append((Path(out_dir).name, dict(overrides or {}), init_checkpoint))
        if reads is not None:
            reads.append((Path(out_dir).name, ann_file, image_root))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "model_final.pt").write_bytes(b"final")
        return {"skipped": {"counts": {}, "examples": {}}}

    monkeypatch.setattr(T, "train", fake_train)
    monkeypatch.setattr("bcnet.evaluate.evaluate_checkpoint", lambda *a, **k: {})
    return calls


def test_backbone_weights_of_the_pretraining_alone_do_not_make_another_model(demo_source, tmp_path, monkeypatch):
    """They only initialise the pretraining's backbone; the fine-tuning builds its backbone as the checkpoint's."""
    ann, root = demo_source
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"weights")
    recipe = tmp_path / "recipe.toml"
    text = RECIPE.replace('schedule = "schedule-tiny"\n', 'schedule = "schedule-tiny"\nbackbone = "resnet18"\n')
    recipe.write_text(text.replace("[pretrain]\n", f"[pretrain]\nbackbone_weights = '{weights}'\n"))
    calls = _fake_training(monkeypatch)
    inputs = PipelineInputs(coco_train=(ann, root), coco_val=(ann, root), synthetic=(ann, root), cocoocc=ann)
    run_pipeline(tmp_path / "run", inputs, recipe=str(recipe), device="cpu", progress=False, log=lambda line: None)
    assert [(name, o.get("backbone_weights")) for name, o, _ in calls] == [("pretrain", str(weights)),
                                                                          ("finetune", None)]


def test_a_pretrained_checkpoint_of_another_model_is_refused_before_the_fine_tuning_starts_from_it(demo_source,
                                                                                                 tmp_path):
    """pretrain/ made otherwise (a run folder of a version that kept no recipe record, `bcnet train` into it): it
    counts as done, and the fine-tuning would keep only its tensors that fit."""
    from bcnet import checkpoint as ckpt
    from bcnet import train as T

    ann, root = demo_source
    schedule = T.load_schedule("schedule-tiny", {"mask_head": "fcn"})
    config = T.model_config(schedule)
    final = tmp_path / "run" / "pretrain" / "model_final.pt"
    final.parent.mkdir(parents=True)
    ckpt.save_checkpoint(final, model=T.build(3, config), iteration=3, schedule=schedule,
                         model_config={"num_classes": 3, **config}, category_ids=[1, 2], rng=False)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    with pytest.raises(OccsynthError) as refused:
        run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                     recipe=str(recipe), device="cpu", cache_dir=tmp_path / "cache", progress=False,
                     log=lambda line: None)
    assert str(refused.value) == (
        f"{final}: a model with mask_head='fcn', but [finetune] of pipeline recipe '{recipe}' builds "
        f"mask_head='bilayer-gcn'; the fine-tuning would start from it and load only the tensors that fit: move "
        f"{final.parent} away (it is not this recipe's pretraining), or choose another out_dir/--out")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [atomic.LOCK_FILE, "pretrain"]  # no stage ran
    # a folder that records the recipe it was made with is named by that (moving its pretrain/ away would not help)
    (tmp_path / "run" / RUN_FILE).write_text(json.dumps({"recipe": "other.toml"}))
    with pytest.raises(OccsynthError, match=r"run holds a pipeline run made with recipe 'other.toml', not '"):
        run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                     recipe=str(recipe), device="cpu", cache_dir=tmp_path / "cache", progress=False,
                     log=lambda line: None)


def test_a_pretrained_checkpoint_of_the_recipe_model_is_fine_tuned_from(pipeline_run, tmp_path):
    out, _, _, recipe, (ann, root) = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "finetune")
    logs = []
    run_pipeline(copy, PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)), recipe=str(recipe),
                 device="cpu", progress=False, log=logs.append)
    assert [line.split(":")[0] for line in logs if "done" not in line] == ["[3/5] fine-tune"]
    assert (copy / "finetune" / "model_final.pt").is_file()


def test_a_fine_tuning_begun_from_another_model_goes_on(demo_source, tmp_path, monkeypatch):
    """It continues its own checkpoint, not the pretraining's: refusing it then would save nothing."""
    ann, root = demo_source
    recipe = tmp_path / "recipe.toml"
    head = '[finetune]\nschedule = "schedule-tiny"\n'
    recipe.write_text(RECIPE.replace(head, head + 'mask_head = "fcn"\n'))
    (tmp_path / "run" / "finetune").mkdir(parents=True)
    (tmp_path / "run" / "finetune" / "checkpoint_0000001.pt").write_bytes(b"begun")
    calls = _fake_training(monkeypatch)
    inputs = PipelineInputs(coco_train=(ann, root), coco_val=(ann, root), synthetic=(ann, root), cocoocc=ann)
    run_pipeline(tmp_path / "run", inputs, recipe=str(recipe), device="cpu", progress=False, log=lambda line: None)
    assert [(name, init) for name, _, init in calls] == [("pretrain", None), ("finetune", None)]  # resumed: no --init


def test_each_stage_reads_its_own_inputs_and_the_fine_tuned_model_is_evaluated_on_val(demo_source, tmp_path,
                                                                                      monkeypatch):
    """Three copies of the demo set as the synthetic set, COCO train and COCO val: the pretraining reads the synthetic
    set, the fine-tuning COCO train from the pretrained model, COCO-OCC is built from val, and the fine-tuned model
    is evaluated on val and on COCO-OCC with val's images (the other tests give train and val as one set)."""
    import occsynth.cocoocc

    ann, root = demo_source
    synthetic, val = ((tmp_path / name / "annotations.json", tmp_path / name / "images")
                      for name in ("synthetic", "val"))
    for copy in (synthetic, val):
        shutil.copytree(ann.parent, copy[0].parent)
    reads, built, evaluated = [], [], []
    calls = _fake_training(monkeypatch, reads)
    monkeypatch.setattr(occsynth.cocoocc, "build_cocoocc", lambda ann_path, out_dir, **kwargs: built.append(
        (ann_path, out_dir)) or {"counts": {"images": 1, "source_images": 2}})
    monkeypatch.setattr("bcnet.evaluate.evaluate_checkpoint", lambda checkpoint, sets, out_dir, **kwargs:
                        evaluated.append((checkpoint, sets, out_dir, kwargs)) or {})
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    run_pipeline(out, PipelineInputs(coco_train=(ann, root), coco_val=val, synthetic=synthetic), recipe=str(recipe),
                 device="cpu", progress=False, log=lambda line: None)
    assert reads == [("pretrain", *synthetic), ("finetune", ann, root)]
    assert [init for _, _, init in calls] == [None, out / "pretrain" / "model_final.pt"]
    assert built == [(val[0], out / "cocoocc")]
    assert evaluated == [(out / "finetune" / "model_final.pt",
                          {"val": val, "cocoocc": (out / "cocoocc" / "annotations.json", val[1])}, out / "evaluation",
                          {"device": "cpu", "mode": "visible", "progress": False})]


def test_a_stage_whose_output_is_given_says_so(demo_source, tmp_path, monkeypatch):
    """With --synthetic and --cocoocc the run said nothing of stages 1 and 4: [2/5], [3/5], [5/5] alone, as if
    COCO-OCC had been forgotten."""
    ann, root = demo_source
    _fake_training(monkeypatch)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    synthetic = tmp_path / "synthetic"
    shutil.copytree(ann.parent, synthetic)
    logs = []
    run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(ann, root), coco_val=(ann, root),
                                                  synthetic=(synthetic / "annotations.json", synthetic / "images"),
                                                  cocoocc=ann), recipe=str(tmp_path / "recipe.toml"), device="cpu",
                 progress=False, log=logs.append)
    assert [line[:5] for line in logs] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert logs[0] == f"[1/5] synthetic set: given ({synthetic / 'annotations.json'})"
    assert logs[3] == f"[4/5] COCO-OCC: given ({ann})"


def _skipped(**counts):
    return {"counts": counts, "examples": {reason: f"record {n}: {reason}" for n, reason in enumerate(counts)}}


def test_each_stage_says_what_its_library_call_skipped_in_its_own_words(demo_source, tmp_path, monkeypatch):
    """The records skipped by generate (indexing the source, and rendering), build-cocoocc and the evaluation of each
    set are said under the stage's number, totalled over their reasons; a stage that skipped nothing says nothing."""
    import bcnet.evaluate
    import bcnet.pipeline
    import occsynth.cocoocc
    import occsynth.generate
    ann, root = demo_source
    monkeypatch.setattr(occsynth.generate, "generate", lambda *args, **kwargs: {
        "bank": {"skipped": _skipped(**{"unknown category": 2, "degenerate mask": 1}),
                 "categories_without_cutouts": [4, 7]}, "skipped": _skipped(**{"unreadable image": 5})})
    monkeypatch.setattr(bcnet.pipeline, "_train_stage", lambda name, stage_dir, *args: stage_dir / "model_final.pt")
    monkeypatch.setattr(occsynth.cocoocc, "build_cocoocc", lambda *args, **kwargs: {
        "counts": {"images": 3, "source_images": 24}, "skipped": _skipped(**{"unknown category": 4})})
    monkeypatch.setattr(bcnet.evaluate, "evaluate_checkpoint", lambda *args, **kwargs: {
        "val": {"skipped": _skipped(**{"missing image file": 3, "unknown category": 3})}, "cocoocc": {"skipped": {}}})
    monkeypatch.setattr(bcnet.evaluate, "markdown_table", lambda results: "table")
    (tmp_path / "recipe.toml").write_text(RECIPE)
    logs = []
    run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(ann, root), coco_val=(ann, root)),
                 recipe=str(tmp_path / "recipe.toml"), device="cpu", progress=False, log=logs.append)
    assert [line for line in logs if not line.startswith(" ")] == [
        f"[1/5] synthetic set: generating with recipe synthetic-demo into {tmp_path / 'run' / 'synthetic'}",
        "[1/5] synthetic set: source records skipped (bad input): 3",
        "[1/5] synthetic set: source images skipped while rendering (counted per use, another was drawn instead): 5",
        "[1/5] synthetic set: categories with no complete cutout (skipped): 2",
        f"[4/5] COCO-OCC: 3 of 24 images -> {tmp_path / 'run' / 'cocoocc'}",
        "[4/5] COCO-OCC: skipped bad input: 4",
        "[5/5] evaluation on val and COCO-OCC",
        "[5/5] evaluation: val: skipped bad input: 6"]
    assert "        1  degenerate mask, e.g. record 1" in logs
    assert "        3  missing image file, e.g. record 0" in logs


def test_a_training_stage_says_the_records_skipped_after_its_indexing_and_those_of_the_indexing_once(tmp_path):
    from bcnet.pipeline import FINAL, _train_stage
    indexed = _skipped(**{"missing image file": 2})

    def train(ann, images, stage_dir, *, report, **kwargs):
        report(indexed)
        stage_dir.mkdir()
        (stage_dir / FINAL).write_bytes(b"")
        return {"skipped": later}

    section = {"schedule": "schedule-tiny"}
    more = _skipped(**{"missing image file": 2, "corrupt image": 1})  # found while training
    for later, said in ((indexed, []), (more, ["stage: skipped bad input: 3"])):
        logs = []
        stage_dir = tmp_path / str(len(said))
        assert _train_stage("stage", stage_dir, (tmp_path / "a.json", tmp_path), section, None, train, "cpu", False,
                            logs.append, {}) == stage_dir / FINAL
        headings = [line for line in logs if not line.startswith(" ")]
        assert headings == [f"stage: schedule schedule-tiny on {tmp_path / 'a.json'}",
                            "stage: indexing: skipped bad input: 2", *said]


def test_a_run_folder_may_hold_what_its_user_put_there(tmp_path):
    """Only a folder that is no run's (no pipeline-run.json, nor an older version's pipeline.json) is refused for
    holding what no run writes."""
    from bcnet.pipeline import check_run_folder
    for record in (RUN_FILE, "pipeline.json", None):
        folder = tmp_path / str(record)
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
        if record is None:
            with pytest.raises(OccsynthError, match=r"holds files that no train-synthetic run writes \(notes\.txt\)"):
                check_run_folder(folder)
        else:
            (folder / record).write_text("{}")
            check_run_folder(folder)


def test_a_run_record_whose_plan_is_no_table_is_refused_saying_so(tmp_path):
    """A hand-edited pipeline-run.json ("plan": null): refused, not a crash, and not as a run of recipe
    'pipeline-tiny', not 'pipeline-tiny'."""
    from bcnet.pipeline import check_run_recipe
    (tmp_path / "pretrain").mkdir()
    (tmp_path / RUN_FILE).write_text(json.dumps({"recipe": "pipeline-tiny", "plan": None}))
    with pytest.raises(OccsynthError) as refused:
        check_run_recipe(tmp_path, "pipeline-tiny", {"synthetic": {"recipe": "synthetic-demo"}})
    assert str(refused.value) == (f"{tmp_path} holds a pipeline run made with recipe 'pipeline-tiny', but its "
                                  f"{RUN_FILE} holds no table of the settings ('plan': None) to compare with; choose "
                                  "another out_dir/--out")
    (tmp_path / RUN_FILE).write_text(json.dumps({"recipe": "pipeline-paper", "plan": None}))
    with pytest.raises(OccsynthError, match="made with recipe 'pipeline-paper', not 'pipeline-tiny'; rerun it with"):
        check_run_recipe(tmp_path, "pipeline-tiny", {"synthetic": {"recipe": "synthetic-demo"}})


def test_the_synthetic_stage_resumed_with_other_images_names_the_option_the_user_gave(pipeline_run, tmp_path):
    """`occsynth generate` refusing to resume its set from other source images names its image_root/--images."""
    out, _, _, recipe, (ann, root) = pipeline_run
    shutil.copytree(out / "synthetic", tmp_path / "run" / "synthetic")
    (tmp_path / "run" / "synthetic" / "manifest.json").unlink()  # as a run stopped while generating
    other = tmp_path / "other"
    for path in root.rglob("*.jpg"):
        (other / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (other / path.relative_to(root)).write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(OccsynthError) as refused:
        run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(ann, other), coco_val=(ann, root)),
                     recipe=str(recipe), device="cpu", progress=False, log=lambda line: None)
    assert f"and --coco-train-images {other} holds other files" in str(refused.value)
    assert f"resume with --coco-train-images {root.resolve()} (or the same files moved" in str(refused.value)
    assert "image_root" not in str(refused.value)


def test_the_fine_tuning_finding_no_image_names_the_option_the_user_gave(pipeline_run, tmp_path):
    """Only an image without annotations is under --coco-train-images (the folder check finds it): the fine-tuning
    has nothing to train on and asks about its image_root/--images."""
    out, _, _, recipe, (ann, root) = pipeline_run
    data = json.loads(ann.read_text())
    only = tmp_path / "only"
    only.mkdir()
    shutil.copyfile(root / data["images"][0]["file_name"], only / "extra.jpg")
    train = tmp_path / "train.json"
    train.write_text(json.dumps({**data, "images": data["images"] + [{**data["images"][0], "id": 999,
                                                                        "file_name": "extra.jpg"}]}))
    synthetic = (out / "synthetic" / "annotations.json", out / "synthetic" / "images")
    with pytest.raises(OccsynthError) as refused:
        run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(train, only), coco_val=(ann, root),
                                                      synthetic=synthetic),
                     recipe=str(recipe), device="cpu", progress=False, log=lambda line: None)
    n = len(data["images"])
    assert str(refused.value).startswith(f"{train}: no usable training images (skipped {n} bad records: missing image "
                                         f"file={n}; ")
    assert str(refused.value).endswith("; is --coco-train-images the folder that the file_name entries are relative "
                                       "to?")
