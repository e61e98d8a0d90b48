"""End-to-end `occsynth generate` on the embedded demo source: invariants, COCO compatibility,
determinism across workers / shards / resume, and bad-input handling."""
import dataclasses
import json
import os
import pickle
import re
import shutil
import signal
import time
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cli.occsynth_cli import main as occsynth_main
from occsynth import atomic, errors, masks, stopping, writer
from occsynth import generate as generate_module
from occsynth.bank import DamagedEntry
from occsynth.errors import OccsynthError
from occsynth.generate import RunSettings, generate
from occsynth.schedule import CompositeOptions
from occsynth.validate import validate

N_IMAGES = 12
SETTINGS = RunSettings(num_images=N_IMAGES, seed=3, chunk_size=4)


def tree_bytes(out: Path) -> dict:
    """Every output file's bytes (images, annotations.json, manifest.json, parts)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(demo_source, tmp_path_factory):
    ann, root = demo_source
    out = tmp_path_factory.mktemp("gen") / "out"
    cache = tmp_path_factory.mktemp("cache")
    report = generate(out, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    return out, report, cache


def test_a_library_error_names_the_keyword_arguments_a_python_caller_gave_with_the_flags(demo_source, tmp_path):
    ann, _ = demo_source
    with pytest.raises(OccsynthError, match=re.escape("give both ann_path/--ann and image_root/--images, or neither")):
        generate(tmp_path / "out", SETTINGS, ann_path=ann, progress=False)
    with pytest.raises(OccsynthError, match=re.escape("backend_address/--scheduler is for --backend dask or ray")):
        generate(tmp_path / "out", SETTINGS, backend="loky", backend_address="h:1", progress=False)
    assert not (tmp_path / "out").exists()


def test_output_layout_and_manifest(generated):
    out, report, _ = generated
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["num_images"] == N_IMAGES and manifest["settings"]["seed"] == 3
    assert len(manifest["source"]["sha256"]) == 64
    assert manifest["counts"]["images"] == N_IMAGES == len(list((out / "images").glob("*.jpg")))
    data = json.loads((out / "annotations.json").read_text())
    assert [im["id"] for im in data["images"]] == list(range(1, N_IMAGES + 1))
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    assert manifest["counts"]["annotations"] == len(data["annotations"])
    assert len(data["categories"]) == 80 and data["categories"][0]["id"] == 1
    import platform
    from importlib.metadata import version
    import cv2
    assert manifest["libraries"] == {"python": platform.python_version(), "numpy": np.__version__,
                                     "opencv": cv2.__version__, "pycocotools": version("pycocotools")}


def test_every_annotation_satisfies_the_invariants(generated):
    out, _, _ = generated
    data = json.loads((out / "annotations.json").read_text())
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for image in data["images"]:
        anns = by_image[image["id"]]
        h, w = image["height"], image["width"]
        amodal = {a["id"]: masks.decode(a["amodal_segmentation"], h, w) for a in anns}
        pasted = [a for a in anns if a["layer"] > 0]
        assert 2 <= len(pasted) <= 4
        assert sorted(a["layer"] for a in pasted) == list(range(1, len(pasted) + 1))
        occluded_in_range = False
        for a in anns:
            visible = masks.decode(a["segmentation"], h, w)
            higher = [b for b in anns if b["layer"] > a["layer"]]
            cover = np.zeros((h, w), bool)
            for b in higher:
                cover |= amodal[b["id"]]
            assert np.array_equal(visible, amodal[a["id"]] & ~cover), a["id"]
            assert a["area"] == masks.area(visible) > 0
            assert a["bbox"] == masks.bbox(visible)
            assert a["amodal_area"] == masks.area(amodal[a["id"]])
            assert a["amodal_bbox"] == masks.bbox(amodal[a["id"]])
            assert a["occlusion_ratio"] == pytest.approx(1 - a["area"] / a["amodal_area"], abs=1e-6)
            expected = sorted(b["id"] for b in higher if np.any(amodal[b["id"]] & amodal[a["id"]]))
            assert sorted(a["occluder_ids"]) == expected
            assert a["amodal_complete"] == (a["layer"] > 0)
            assert set(a["source"]) == {"image_id", "annotation_id"}
            if a["layer"] > 0:
                assert a["iscrowd"] == 0 and a["occlusion_ratio"] <= 0.8 + 1e-6
                if any(b["layer"] > 0 for b in higher) and 0.1 <= a["occlusion_ratio"] <= 0.7:
                    occluded_in_range = True
        assert occluded_in_range, f"image {image['id']} has no pasted object occluded within the range"


def test_every_annotation_names_its_source_instance(generated, demo_source):
    """source.annotation_id is the instance's in the source file and source.image_id that instance's image: the
    background's for a background instance, the cutout's own source image for a paste."""
    out, _, _ = generated
    source = {a["id"]: a for a in json.loads(Path(demo_source[0]).read_text())["annotations"]}
    data = json.loads((out / "annotations.json").read_text())
    background = {im["id"]: im["background"]["image_id"] for im in data["images"]}
    pasted_from_elsewhere = 0
    for a in data["annotations"]:
        src = source[a["source"]["annotation_id"]]
        assert (a["source"]["image_id"], a["category_id"]) == (src["image_id"], src["category_id"]), a["id"]
        if a["layer"] == 0:
            assert src["image_id"] == background[a["image_id"]], a["id"]
        else:
            pasted_from_elsewhere += src["image_id"] != background[a["image_id"]]
    assert pasted_from_elsewhere  # the two images differ for some pastes: the test tells them apart


def test_pycocotools_scores_ground_truth_against_itself_as_ap_1(generated):
    out, _, _ = generated
    gt = COCO(str(out / "annotations.json"))
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "score": 1.0} for a in gt.dataset["annotations"] if not a["iscrowd"]]
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_pasted_classes_are_balanced(generated):
    out, _, _ = generated
    data = json.loads((out / "annotations.json").read_text())
    counts = Counter(a["category_id"] for a in data["annotations"] if a["layer"] > 0)
    mean = sum(counts.values()) / len(counts)
    assert max(abs(c - mean) for c in counts.values()) <= max(2, 0.05 * mean)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["pasted_per_category"] == {str(k): v for k, v in sorted(counts.items())}


def test_same_output_for_two_workers(generated, demo_source, tmp_path):
    out, _, cache = generated
    ann, root = demo_source
    other = tmp_path / "w2"
    generate(other, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, workers=2, progress=False)
    assert tree_bytes(other) == tree_bytes(out)


def test_shards_then_merge_equal_unsharded_run(generated, demo_source, tmp_path):
    out, _, cache = generated
    ann, root = demo_source
    shard_dirs = [tmp_path / f"s{i}" for i in range(3)]
    for i, d in enumerate(shard_dirs):
        report = generate(d, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(i, 3), progress=False)
        assert not report["merged"]
        assert not (d / "annotations.json").exists()
    partial = CliRunner().invoke(occsynth_main, ["merge", str(shard_dirs[0]), "--out", str(tmp_path / "p"), "--quiet"])
    assert partial.exit_code == 2 and " ".join(partial.output.split()) == (
        "Error: chunks 1, 2 are in none of the folders given, of shards 1/3, 2/3 (shard i/n renders chunks i, "
        "i + n, i + 2n, ...): those shards have not run (or not finished), or their folders were not given to merge "
        f"(given: {shard_dirs[0]})")
    shard = CliRunner().invoke(occsynth_main, ["validate", str(shard_dirs[0])])  # a shard is no set: say what it is
    assert shard.exit_code == 2 and "one --shard of a set" in shard.output and "occsynth merge" in shard.output
    result = CliRunner().invoke(occsynth_main, ["merge", *map(str, shard_dirs), "--out", str(tmp_path / "merged"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert tree_bytes(tmp_path / "merged") == tree_bytes(out)
    # the same merge into another --out: the shards were emptied by the first; say so, not "not generated yet"
    again = CliRunner().invoke(occsynth_main, ["merge", *map(str, shard_dirs), "--out", str(tmp_path / "m2"), "--quiet"])
    assert again.exit_code == 2 and " ".join(again.output.split()) == (  # no advice to run shards: they ran
        "Error: an earlier `occsynth merge` moved chunks of these shard folders into "
        f"{(tmp_path / 'merged').resolve()}, the merged set: the set is there (the folders given lack 3 of its "
        "chunks: 0, 1, 2)")
    assert not (tmp_path / "m2").exists()
    merged = CliRunner().invoke(occsynth_main, ["stats", str(shard_dirs[1])])
    assert merged.exit_code == 2 and f"merged into {(tmp_path / 'merged').resolve()}" in merged.output.replace("\n", " ")


def test_merge_takes_one_folder_given_as_a_path_and_refuses_none(generated, demo_source, tmp_path):
    # a notebook's merge(out, "shared"): one folder, not the folders "s", "h", "a", ... (the first named "/parts")
    out, _, cache = generated
    ann, root = demo_source
    with pytest.raises(errors.OccsynthError, match=re.escape("shard_dirs: give at least one shard folder")):
        generate_module.merge(tmp_path / "m", [])
    assert not (tmp_path / "m").exists()
    shared = tmp_path / "shared"
    for i in range(2):
        generate(shared, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(i, 2), progress=False)
    report = generate_module.merge(shared, str(shared), progress=False)
    assert report["merged"] and tree_bytes(shared) == tree_bytes(out)


def test_a_merge_missing_chunks_names_their_shards_and_the_folders_given(generated, demo_source, tmp_path):
    """A user who left one shard folder out of the list was told to run the missing shards (by chunk number): the
    shards are named (n from their lock files, which a failed merge leaves), and so are the folders given."""
    _, _, cache = generated
    ann, root = demo_source
    shard_dirs = [tmp_path / f"s{i}" for i in range(3)]
    for i, d in enumerate(shard_dirs):
        generate(d, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(i, 3), progress=False)
    given = [str(shard_dirs[0]), str(shard_dirs[2])]
    expected = ("Error: chunk 1 is in none of the folders given, of shard 1/3 (shard i/n renders chunks i, "
                "i + n, i + 2n, ...): that shard has not run (or not finished), or its folder was not given to merge "
                f"(given: {given[0]}, {given[1]})")
    for _ in range(2):  # the same again: the first left the shards' lock files, which name their split
        result = CliRunner().invoke(occsynth_main, ["merge", *given, "--out", str(tmp_path / "m"), "--quiet"])
        assert result.exit_code == 2 and " ".join(result.output.split()) == expected
    for d in shard_dirs:  # folders whose split is not known (copied without their dot files): the rule instead
        (d / "parts" / ".lock-of-3").unlink()
    with pytest.raises(errors.OccsynthError) as unknown:
        writer.merge_shards(tmp_path / "m", [shard_dirs[0], shard_dirs[2]], progress=False)
    assert str(unknown.value) == (
        "chunk 1 is in none of the folders given: the shard that renders it (shard i/n renders chunks i, "
        "i + n, i + 2n, ...) has not run (or not finished), or its folder was not given to merge "
        f"(given: {given[0]}, {given[1]})")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("damage", ["[1, 2]", "{}", '{"images": [], "annotations": [["x"]], "skips": {}}',
                                    '{"images": [], "annotations": [[{"occluders": [7]}]], "skips": {}}',
                                    '{"images": [], "annotations": [[{"occluders": [-1], "layer": 0, "category_id": 1}]],'
                                    ' "skips": {}}'])
def test_a_damaged_part_stops_the_merge_with_its_name_and_a_generate_in_out_mends_it(generated, demo_source,
                                                                                    tmp_path, damage):
    out, _, cache = generated
    ann, root = demo_source
    shard_dirs = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shard_dirs):
        generate(d, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(i, 2), progress=False)
    damaged = writer.part_path(shard_dirs[1], 1)
    damaged.write_text(damage)
    merged = tmp_path / "merged"
    result = CliRunner().invoke(occsynth_main, ["merge", *map(str, shard_dirs), "--out", str(merged), "--quiet"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"{writer.part_path(merged, 1)}: damaged part file" in text and f"--out {merged}" in text
    assert not (merged / "annotations.json").exists()
    writer.part_path(merged, 1).unlink()  # as the message says: delete it, generate in OUT, merge again
    generate(merged, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert tree_bytes(merged) == tree_bytes(out)


def test_merge_moves_the_images_its_settings_name_and_parses_each_part_once(generated, demo_source, tmp_path,
                                                                           monkeypatch):
    out, _, cache = generated
    ann, root = demo_source
    shard_dirs = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shard_dirs):
        generate(d, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(i, 2), progress=False)
    # the sizes files are checks, not data: lost (a power cut) or wrong, they do not change what is moved
    (shard_dirs[1] / "parts" / "sizes-000001.json").unlink()
    (tmp_path / "victim.txt").write_text("keep me")
    (shard_dirs[0] / "parts" / "sizes-000000.json").write_text(json.dumps({"../../victim.txt": 7}))
    reads = []
    read_part = writer.read_part
    monkeypatch.setattr(writer, "read_part", lambda path: reads.append(path.name) or read_part(path))
    writer.merge_shards(tmp_path / "merged", shard_dirs, progress=False)
    assert sorted(reads) == [f"chunk-00000{c}.json" for c in range(3)]  # by the final merge alone
    merged, expected = tree_bytes(tmp_path / "merged"), tree_bytes(out)
    assert {k: v for k, v in merged.items() if "sizes-" not in k} == {k: v for k, v in expected.items()
                                                                      if "sizes-" not in k}
    assert (tmp_path / "victim.txt").read_text() == "keep me"


def test_a_shard_leaves_the_temporaries_of_shards_running_beside_it_in_a_shared_out(generated, demo_source,
                                                                                    tmp_path):
    out, _, cache = generated
    ann, root = demo_source
    shared = tmp_path / "shared"
    first = generate(shared, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(1, 2), progress=False)
    assert (first["shard_chunks"], first["chunks_rendered"], first["chunks_done"], first["chunks_total"]) == (1, 1, 1, 3)
    # in flight in shard 1 (chunk 1: images 5-8) and in any shard (run files), or left by a killed shard 0
    # (chunks 0 and 2: images 1-4, 9-12); the first and last image of a chunk are its own
    theirs = [shared / "images" / f".{n:012d}.jpg.tmp-71" for n in (5, 6, 8)] + [
        shared / "parts" / ".chunk-000001.json.tmp-71", shared / "parts" / ".run.json.tmp-71"]
    ours = [shared / "images" / f".{n:012d}.jpg.tmp-72" for n in (1, 2, 4, 9, 12)] + [
        shared / "parts" / ".sizes-000002.json.tmp-72"]
    for path in theirs + ours:
        path.write_bytes(b"partial")
    second = generate(shared, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(0, 2), progress=False)
    # chunks_done: of the whole set in the shared OUT, shard 1's chunk too
    assert (second["shard_chunks"], second["chunks_rendered"], second["chunks_done"]) == (2, 2, 3)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)
    writer.merge_shards(shared, [shared], progress=False)  # every shard is done: all leftovers go
    assert not list(shared.rglob(".*.tmp-*"))
    assert tree_bytes(shared) == tree_bytes(out)


@pytest.mark.parametrize("shard", [(0, 1), (0, 2)])
def test_a_run_stopped_with_workers_removes_the_temporaries_its_killed_workers_left(generated, demo_source, tmp_path,
                                                                                   monkeypatch, shard):
    """Ctrl-C or SIGTERM with --workers 2 left a hidden .NNN.jpg.tmp-* or two in OUT/images every time (the pool's
    workers are killed mid-write; one worker, writing in the main process, left none): the run removes its own."""
    _, _, cache = generated
    ann, root = demo_source
    out = tmp_path / "out"
    ours = out / "images" / ".000000000002.jpg.tmp-4242-0a0b0c0d"  # chunk 0: shard 0's
    theirs = out / "images" / ".000000000006.jpg.tmp-4343-0a0b0c0d"  # chunk 1: shard 1's, running beside it

    def stopped_midway(*args, **kwargs):
        ours.parent.mkdir(exist_ok=True)
        for path in (ours, theirs):
            path.write_bytes(b"half")  # as the workers left them when the stop killed them
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(generate_module, "_finished_chunks", stopped_midway)
    with pytest.raises(KeyboardInterrupt):
        generate(out, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, workers=2, shard=shard,
                 progress=False)
    assert not ours.exists() and theirs.exists() == (shard[1] == 2)


def signal_now(signum: int) -> None:
    """Send ``signum`` to this process and let its handler run (at the next bytecode, inside this loop)."""
    os.kill(os.getpid(), signum)
    for _ in range(1000):
        pass


def test_a_second_stop_while_a_stopped_run_cleans_up_is_noted_not_raised(generated, demo_source, tmp_path,
                                                                         monkeypatch):
    """SIGTERM to every process of the job, then Ctrl-C a few ms later (or Ctrl-C twice): the second stop raised in the
    sweep of the killed workers' temporaries, which left them in OUT/images, or in the pool's shut-down, which left its
    workers running past the sweep or a lock held that hung the command at exit, after its 'Stopped' line."""
    _, _, cache = generated
    ann, root = demo_source
    out = tmp_path / "out"
    left = [out / "images" / f".{n:012d}.jpg.tmp-4242-0a0b0c0d" for n in (2, 6)]

    def stopped_midway(*args, **kwargs):
        left[0].parent.mkdir(exist_ok=True)
        for path in left:
            path.write_bytes(b"half")  # as the workers left them when the stop killed them
        signal_now(signal.SIGTERM)
        yield

    remove, second = atomic._remove_quietly, []

    def second_stop_in_the_sweep(path):
        if not second and path in left:  # the sweep's (the merge's own temporary goes first, as the stop unwinds)
            second.append(path)
            signal_now(signal.SIGINT)
        remove(path)

    monkeypatch.setattr(generate_module, "_finished_chunks", stopped_midway)
    monkeypatch.setattr(atomic, "_remove_quietly", second_stop_in_the_sweep)
    with pytest.raises(KeyboardInterrupt), stopping.stop_on_signals():
        generate(out, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, workers=2, progress=False)
    assert second and not [p for p in left if p.exists()]
    assert stopping.stop_requested() == signal.SIGINT  # the last stop is still the one the command exits with


def test_a_stop_a_chunk_swallowed_stops_the_run_at_the_chunks_end(generated, demo_source, tmp_path, monkeypatch):
    """A run takes a second stop as noted only: a first one that some library swallowed must still stop it."""
    _, _, cache = generated
    ann, root = demo_source
    out = tmp_path / "out"
    render, rendered = generate_module.render_chunk, []

    def swallowing_render(*args, **kwargs):
        rendered.append(args[-1])
        try:
            signal_now(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return render(*args, **kwargs)

    monkeypatch.setattr(generate_module, "render_chunk", swallowing_render)
    with pytest.raises(KeyboardInterrupt), stopping.stop_on_signals():
        generate(out, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, workers=1, progress=False)
    assert rendered == [0] and writer.chunk_done(out, 0) and not (out / "annotations.json").exists()


def killed_copy(out: Path, to: Path) -> Path:
    """A copy of the finished set ``out`` as a kill leaves it: a chunk without its part, no final files."""
    shutil.copytree(out, to)
    for name in ("annotations.json", "manifest.json", "parts/chunk-000001.json"):
        (to / name).unlink()
    return to


def test_resume_after_interruption_gives_identical_output(generated, demo_source, tmp_path):
    out, _, cache = generated
    ann, root = demo_source
    resumed = killed_copy(out, tmp_path / "resumed")
    # and some of a chunk's images without their part, and a half-written temporary
    (resumed / "images" / "000000000006.jpg").unlink()
    (resumed / "images" / ".000000000007.jpg.tmp-999").write_bytes(b"partial")
    generate(resumed, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert tree_bytes(resumed) == tree_bytes(out)


def reencoded_copy(root: Path, to: Path) -> Path:
    """The source images under another folder, each with other bytes (what another copy or a resized set has)."""
    for path in sorted(Path(root).rglob("*.jpg")):
        copy = to / path.relative_to(root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(cv2.imencode(".jpg", cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 60])[1].tobytes())
    return to


def test_a_resume_with_other_images_is_refused_and_one_from_the_same_images_moved_goes_on(generated, demo_source,
                                                                                          tmp_path):
    """The finished chunks and the resumed ones would come from different pixels: a mixed set, said nowhere."""
    out, _, cache = generated
    ann, root = demo_source
    resumed = killed_copy(out, tmp_path / "resumed")
    other = reencoded_copy(root, tmp_path / "other")
    before = tree_bytes(resumed)
    with pytest.raises(errors.OccsynthError) as refused:
        generate(resumed, SETTINGS, ann_path=ann, image_root=other, cache_dir=cache, progress=False)
    message = str(refused.value)
    assert f"{resumed} was begun with the source images under {Path(root).resolve()}" in message
    assert f"image_root/--images {other.resolve()} holds other files" in message
    assert f"resume with image_root/--images {Path(root).resolve()} (or the same files moved or copied)" in message
    assert tree_bytes(resumed) == before
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)  # the same files elsewhere: the run goes on, and ends as an uninterrupted one
    generate(resumed, SETTINGS, ann_path=ann, image_root=moved, cache_dir=cache, progress=False)
    assert tree_bytes(resumed) == tree_bytes(out)
    (resumed / "manifest.json").unlink()  # a file of the root changed in place: said in those words
    (resumed / "parts" / "chunk-000001.json").unlink()
    (resumed / "parts" / "image-root.json").write_text(json.dumps({"image_root": str(moved.resolve())}))
    for image in moved.rglob("*.jpg"):  # the same pixels, other bytes: bytes are compared
        image.write_bytes(image.read_bytes() + b"\0")
    with pytest.raises(errors.OccsynthError, match=f"^the source images under {re.escape(str(moved.resolve()))} "
                                                   f"changed since {re.escape(str(resumed))} was begun"):
        generate(resumed, SETTINGS, ann_path=ann, image_root=moved, cache_dir=cache, progress=False)
    # shards of one set read the same images too
    generate(tmp_path / "a", SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(0, 2), progress=False)
    generate(tmp_path / "b", SETTINGS, ann_path=ann, image_root=other, cache_dir=cache, shard=(1, 2), progress=False)
    mixed = CliRunner().invoke(occsynth_main, ["merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                               "--out", str(tmp_path / "m"), "--quiet"])
    assert mixed.exit_code == 2 and "Traceback" not in mixed.output, mixed.output
    a, b = tmp_path / "a", tmp_path / "b"
    assert " ".join(mixed.output.split()) == (
        f"Error: {b} was generated from other source images than {a} (its images were read under {other.resolve()}, "
        f"those of {a} under {Path(root).resolve()}: {writer.SAMPLED}); shards of one set read the same images (the "
        "same files may lie in other folders): render this shard again from those into a new out_dir/--out (one into "
        f"{b} is refused, as its run was begun from other images) and merge that folder in place of {b}")
    assert not (tmp_path / "m").exists()
    with pytest.raises(errors.OccsynthError, match="was begun with the source images under"):  # as it says
        generate(b, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(1, 2), progress=False)
    generate(tmp_path / "b2", SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(1, 2), progress=False)
    writer.merge_shards(tmp_path / "m", [a, tmp_path / "b2"], progress=False)
    assert tree_bytes(tmp_path / "m") == tree_bytes(out)


def test_a_resume_that_reads_the_demo_source_by_default_says_so(generated, demo_source, tmp_path):
    """Without --ann and --images a run reads the embedded demo source: a run begun from other images was refused
    naming "--images <cache>/demo-v1/images", an option never given, and advised --images alone (which needs --ann)."""
    _, _, cache = generated
    ann, root = demo_source
    other = reencoded_copy(root, tmp_path / "other")
    begun = tmp_path / "begun"
    generate(begun, SETTINGS, ann_path=ann, image_root=other, cache_dir=cache, shard=(0, 3), progress=False)
    with pytest.raises(errors.OccsynthError) as refused:
        generate(begun, SETTINGS, cache_dir=cache, shard=(0, 3), progress=False)
    assert str(refused.value) == (
        f"{begun} was begun with the source images under {other.resolve()}, and the embedded demo source (the default "
        f"without ann_path/--ann and image_root/--images, its images under "
        f"{(Path(cache) / 'demo-v1' / 'images').resolve()}) holds other files ({writer.SAMPLED}): the chunks rendered "
        "now would mix other pixels into the set; resume with the ann_path/--ann it was begun with (a file named "
        f"annotations.json) and image_root/--images {other.resolve()} (or the same files moved or copied), or use "
        "another out_dir/--out")


def test_a_run_begun_from_the_demo_source_resumed_from_other_images_says_to_resume_without_them(
        generated, demo_source, tmp_path):
    """The other way round: the run read the demo source by default, the resume gives --ann and --images. It was
    told to resume with "--images <cache>/demo-v1/images", a folder of the cache it never named."""
    _, _, cache = generated
    ann, root = demo_source
    other = reencoded_copy(root, tmp_path / "other")
    begun = tmp_path / "begun"
    generate(begun, SETTINGS, cache_dir=cache, shard=(0, 3), progress=False)
    with pytest.raises(errors.OccsynthError) as refused:
        generate(begun, SETTINGS, ann_path=ann, image_root=other, cache_dir=cache, shard=(0, 3), progress=False)
    assert str(refused.value) == (
        f"{begun} was begun with the embedded demo source (the default without ann_path/--ann and image_root/--images, "
        f"its images under {(Path(cache) / 'demo-v1' / 'images').resolve()}), and image_root/--images "
        f"{other.resolve()} holds other files ({writer.SAMPLED}): the chunks rendered now would mix other pixels into "
        "the set; resume without ann_path/--ann and image_root/--images (the embedded demo source), or use another "
        "out_dir/--out")


def test_a_run_begun_from_the_demo_source_resumed_from_another_caches_says_which_cache(generated, tmp_path):
    """Both read the demo source by default, from two cache folders whose demo images differ: "resume without
    --ann and --images" was what the refused command did."""
    _, _, cache = generated
    begun, other_cache = tmp_path / "begun", tmp_path / "other-cache"
    generate(begun, SETTINGS, cache_dir=cache, shard=(0, 3), progress=False)
    shutil.copytree(Path(cache) / "demo-v1", other_cache / "demo-v1")
    reencoded_copy(Path(cache) / "demo-v1" / "images", other_cache / "demo-v1" / "images")
    with pytest.raises(errors.OccsynthError) as refused:
        generate(begun, SETTINGS, cache_dir=other_cache, shard=(0, 3), progress=False)
    message = str(refused.value)
    assert message.startswith(f"{begun} was begun with the embedded demo source (the default without ann_path/--ann "
                              "and image_root/--images, its images under "
                              f"{(Path(cache) / 'demo-v1' / 'images').resolve()}), and the embedded demo source (the "
                              "default without ann_path/--ann and image_root/--images, its images under "
                              f"{(other_cache / 'demo-v1' / 'images').resolve()}) holds other files")
    assert message.endswith("; resume without ann_path/--ann and image_root/--images (the embedded demo source) and "
                            "with the --cache-dir it was begun with (the one holding the images above), or use "
                            "another out_dir/--out")


def test_a_damaged_or_missing_image_root_record_only_leaves_its_words_out(tmp_path):
    """parts/image-root.json only informs messages: missing, malformed, no object, or with fields of other types, it
    is as if nothing were recorded (not a traceback in place of the refusal it words)."""
    folder = tmp_path / "run"
    (folder / "parts").mkdir(parents=True)
    record = folder / "parts" / "image-root.json"
    for text, root, demo in ((None, None, False), ("{not json", None, False), ("[]", None, False),
                             ('{"image_root": 5, "demo": "yes"}', None, False),
                             ('{"image_root": "/data/images", "demo": true}', "/data/images", True)):
        if text is not None:
            record.write_text(text)
        assert (writer.image_root_of(folder), writer._begun_from_demo(folder)) == (root, demo), text
    record.write_text('{"demo": true}')  # begun from the demo source, its folder not recorded
    other = (tmp_path / "other").resolve()
    assert str(writer._other_images_refused(folder, {}, {}, other, demo=False)) == (
        f"{folder} was begun with the embedded demo source (the default without ann_path/--ann and "
        f"image_root/--images), and image_root/--images {other} holds other files ({writer.SAMPLED}): the chunks "
        "rendered now would mix other pixels into the set; resume without ann_path/--ann and image_root/--images (the "
        "embedded demo source), or use another out_dir/--out")


def test_a_run_begun_without_an_images_fingerprint_is_not_resumed_and_says_why(generated, demo_source, tmp_path):
    """A run.json written before source images were recorded: "use the same arguments" would never do."""
    out, _, cache = generated
    ann, root = demo_source
    older = killed_copy(out, tmp_path / "older")
    run = json.loads((older / "parts" / "run.json").read_text())
    del run["source"]["images"]
    (older / "parts" / "run.json").write_text(json.dumps(run, indent=2))
    before = tree_bytes(older)
    with pytest.raises(errors.OccsynthError) as refused:
        generate(older, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert str(refused.value) == (f"{older} holds a run begun by an occsynth that did not record which source images "
                                  f"it read (occsynth {run['version']}), so this one cannot tell whether the chunks "
                                  "left would be rendered from the same pixels; finish it with the occsynth version "
                                  "that began it, or use another out_dir/--out")
    with pytest.raises(errors.OccsynthError, match=r"the same pixels \(and other settings differ: settings\.seed: 3 -> "
                                                   r"4\); finish it with the occsynth version that began it"):
        generate(older, dataclasses.replace(SETTINGS, seed=4), ann_path=ann, image_root=root, cache_dir=cache,
                 progress=False)
    assert tree_bytes(older) == before


def test_a_failing_merge_stops_the_workers(demo_source, tmp_path, monkeypatch):
    ann, root = demo_source
    out = tmp_path / "o"
    settings = RunSettings(num_images=24, seed=3, chunk_size=1)

    def failing_read_part(path):
        raise errors.OccsynthError(f"{path}: merge failed")

    monkeypatch.setattr(writer, "read_part", failing_read_part)
    with pytest.raises(errors.OccsynthError, match="merge failed") as failure, \
            warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        generate(out, settings, ann_path=ann, image_root=root, cache_dir=tmp_path / "c", workers=2,
                 backend="threading", progress=False)
    assert not [w for w in warned if "joblib" in w.filename], "the error alone is the message"
    # the traceback stays alive, as a notebook keeps the last one: it must not keep the workers going
    time.sleep(1.0)  # time enough for the 24 small chunks, had the workers gone on
    assert len(list((out / "parts").glob("chunk-*.json"))) < 12
    assert failure.traceback
    assert not (out / "annotations.json").exists() and not list(out.rglob(".*.tmp-*"))


def test_parts_come_in_chunk_order_as_soon_as_every_earlier_chunk_is_done(tmp_path):
    finished = iter([3, 1, 0, 5, 2, 4])
    seen = []
    for part in writer.parts_in_chunk_order(tmp_path, 6, done=[1], finished=(seen.append(c) or c for c in finished)):
        seen.append(part.name)
    assert seen == [3, 1, 0, "chunk-000000.json", "chunk-000001.json", 5, 2, "chunk-000002.json",
                    "chunk-000003.json", 4, "chunk-000004.json", "chunk-000005.json"]
    assert [p.name for p in writer.parts_in_chunk_order(tmp_path, 2, done=[0, 1, 2], finished=iter([]))] == [
        "chunk-000000.json", "chunk-000001.json"]
    with pytest.raises(errors.OccsynthError, match=r"2 chunks not generated yet \(1, 3\)"):
        list(writer.parts_in_chunk_order(tmp_path, 4, done=[0], finished=iter([2])))


def test_merge_runs_while_later_chunks_render(generated, demo_source, tmp_path, monkeypatch):
    out, _, cache = generated
    ann, root = demo_source
    other = tmp_path / "streamed"
    parts_on_disk = []
    read_part = writer.read_part

    def counting_read_part(path):
        parts_on_disk.append(len(list((other / "parts").glob("chunk-*.json"))))
        return read_part(path)

    monkeypatch.setattr(writer, "read_part", counting_read_part)
    generate(other, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert parts_on_disk == [1, 2, 3]  # each chunk merged before the next one rendered
    assert tree_bytes(other) == tree_bytes(out)


def test_generation_decodes_no_background_mask_and_writes_the_same_set(generated, demo_source, tmp_path,
                                                                      monkeypatch):
    """Generation composes in compose_boxed's encoded mode: every annotation comes from the source masks' encodings
    and the pasted objects' masks, so no background instance's mask is decoded (and the set is the usual one)."""
    out, _, cache = generated
    ann, root = demo_source
    decoded = []
    decode = generate_module._MaskCrop.__call__
    monkeypatch.setattr(generate_module._MaskCrop, "__call__", lambda self: decoded.append(self._args) or decode(self))
    other = tmp_path / "encoded"
    generate(other, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert decoded == []
    assert tree_bytes(other) == tree_bytes(out)


def test_a_run_failing_mid_way_leaves_no_merged_file_and_the_rerun_completes(generated, demo_source, tmp_path,
                                                                            monkeypatch):
    out, _, cache = generated
    ann, root = demo_source
    other = tmp_path / "failed"
    render_image = generate_module.render_image

    def failing_render_image(bank, sources, schedule, settings, index, log):
        if index == 9:
            raise errors.OccsynthError("rendering image 9 failed")
        return render_image(bank, sources, schedule, settings, index, log)

    monkeypatch.setattr(generate_module, "render_image", failing_render_image)
    with pytest.raises(errors.OccsynthError, match="image 9"):
        generate(other, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert sorted(p.name for p in (other / "parts").glob("chunk-*.json")) == ["chunk-000000.json",
                                                                             "chunk-000001.json"]
    assert not (other / "annotations.json").exists() and not (other / "manifest.json").exists()
    assert not list(other.rglob(".*.tmp-*")) and not list(other.glob("tmp*")), "merge temporaries left behind"
    monkeypatch.undo()
    generate(other, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert tree_bytes(other) == tree_bytes(out)


def test_rerun_with_other_settings_is_refused(generated, demo_source):
    out, _, cache = generated
    ann, root = demo_source
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out", str(out),
                                                "--num-images", "5", "--cache-dir", str(cache), "--quiet"])
    assert result.exit_code == 2
    assert "other settings" in result.output and "Traceback" not in result.output


def test_a_run_or_shard_of_another_renderer_is_refused_not_mixed(demo_source, tmp_path, monkeypatch):
    """Same arguments, other bytes: a resume or a merge across renderer revisions would make a set that
    neither revision makes."""
    ann, root = demo_source
    cache = tmp_path / "cache"
    monkeypatch.setattr(generate_module, "RENDERER", 1)
    generate(tmp_path / "old", SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(0, 2), progress=False)
    monkeypatch.undo()
    with pytest.raises(errors.OccsynthError) as resumed:
        generate(tmp_path / "old", SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(0, 2),
                 progress=False)
    assert "made by another occsynth renderer" in str(resumed.value)
    assert f"renderer: 1 -> {generate_module.RENDERER}" in str(resumed.value)
    assert str(resumed.value).endswith("finish it with the occsynth version that began it, or use another "
                                       "out_dir/--out")
    generate(tmp_path / "new", SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(1, 2), progress=False)
    mixed = CliRunner().invoke(occsynth_main, ["merge", str(tmp_path / "old"), str(tmp_path / "new"),
                                               "--out", str(tmp_path / "m"), "--quiet"])
    assert mixed.exit_code == 2 and "made by another occsynth renderer" in mixed.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("damage", ["[]", "{}", '"text"', '{"settings": 5}', '{"settings": {"num_images": "12"}}'])
def test_a_damaged_run_settings_file_is_named_by_merge_and_generate_not_a_traceback(generated, demo_source,
                                                                                     tmp_path, damage):
    """parts/run.json edited or damaged into valid JSON that is no run: merge raised AttributeError or KeyError,
    and a rerun compared the settings with an empty run ('made by another occsynth renderer')."""
    _, _, cache = generated
    ann, root = demo_source
    shard_dirs = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shard_dirs):
        generate(d, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(i, 2), progress=False)
    run_file = shard_dirs[1] / "parts" / "run.json"
    run_file.write_text(damage)
    before = tree_bytes(shard_dirs[1])
    expected = f"Error: {run_file}: damaged run settings file"
    for order in (shard_dirs, shard_dirs[::-1], shard_dirs[1:]):  # first, last or alone
        merged = CliRunner().invoke(occsynth_main, ["merge", *map(str, order), "--out", str(tmp_path / "m"), "--quiet"])
        assert merged.exit_code == 2 and "Traceback" not in merged.output, merged.output
        assert " ".join(merged.output.split()).startswith(expected) and "another out_dir/--out" in merged.output
        assert not (tmp_path / "m").exists()
    rerun = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out",
                                               str(shard_dirs[1]), "--num-images", str(N_IMAGES), "--seed", "3",
                                               "--cache-dir", str(cache), "--shard", "1/2", "--quiet"])
    assert rerun.exit_code == 2 and "Traceback" not in rerun.output, rerun.output
    assert " ".join(rerun.output.split()).startswith(expected) and "renderer" not in rerun.output
    assert tree_bytes(shard_dirs[1]) == before


def test_merge_in_a_shared_out_refuses_a_chunk_whose_image_is_gone_and_a_shard_rerun_mends_it(generated,
                                                                                              demo_source, tmp_path):
    """A merge of shard folders names a shard's missing image; one of a chunk already in --out (a shared folder)
    wrote a set without it, and said nothing."""
    out, _, cache = generated
    ann, root = demo_source
    shared = tmp_path / "shared"
    for i in range(3):
        generate(shared, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(i, 3), progress=False)
    lost = shared / "images" / "000000000006.jpg"  # image index 5: chunk 1 (chunks of 4)
    lost.unlink()
    result = CliRunner().invoke(occsynth_main, ["merge", str(shared), "--out", str(shared), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert " ".join(result.output.split()) == (
        f"Error: {lost}: image of {writer.part_path(shared, 1)} is missing; run the shard that renders chunk 1 again "
        f"with out_dir/--out {shared} (shard i/n renders chunks i, i + n, i + 2n, ...), then merge again")
    assert not (shared / "annotations.json").exists() and not (shared / "manifest.json").exists()
    generate(shared, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(1, 3), progress=False)
    writer.merge_shards(shared, [shared], progress=False)
    assert tree_bytes(shared) == tree_bytes(out)


def _merged_shards(generated, demo_source, tmp_path) -> list:
    """Shard folders s0, s1 of SETTINGS under ``tmp_path``, merged into ``tmp_path / 'merged'`` (their chunks moved)."""
    _, _, cache = generated
    ann, root = demo_source
    shard_dirs = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shard_dirs):
        generate(d, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(i, 2), progress=False)
    writer.merge_shards(tmp_path / "merged", shard_dirs, progress=False)
    return shard_dirs


@pytest.mark.parametrize("damage", ["", "[]", '{"out": 5}'])
def test_an_unreadable_merged_into_note_leaves_the_missing_chunks_message(generated, demo_source, tmp_path, damage):
    """merged-into.json is written without fsync (a power cut may empty it) and only informs a message: read
    damaged, it raised TypeError or replaced the merge's message with its own JSON error."""
    shard_dirs = _merged_shards(generated, demo_source, tmp_path)
    (shard_dirs[0] / "parts" / "merged-into.json").write_text(damage)
    again = CliRunner().invoke(occsynth_main, ["merge", *map(str, shard_dirs), "--out", str(tmp_path / "m2"), "--quiet"])
    text = " ".join(again.output.split())
    assert again.exit_code == 2 and "Traceback" not in again.output, again.output
    assert text == ("Error: an earlier `occsynth merge` moved chunks of these shard folders into "  # shard 1's note
                    f"{(tmp_path / 'merged').resolve()}, the merged set: the set is there (the folders given lack "
                    "3 of its chunks: 0, 1, 2)")
    stats = CliRunner().invoke(occsynth_main, ["stats", str(shard_dirs[0])])
    assert stats.exit_code == 2 and "one --shard of a set" in stats.output


def test_a_merged_set_deleted_since_is_not_named_as_where_the_set_is(generated, demo_source, tmp_path):
    """A user who deleted (or moved) the merged set and merges the emptied shard folders again was told "the set
    is there"; a shard run again in its emptied folder renders its chunks anew, after which `validate` of it still
    sent the user to the deleted set."""
    shard_dirs = _merged_shards(generated, demo_source, tmp_path)
    shutil.rmtree(tmp_path / "merged")
    again = CliRunner().invoke(occsynth_main, ["merge", *map(str, shard_dirs), "--out", str(tmp_path / "m2"), "--quiet"])
    text = " ".join(again.output.split())
    assert again.exit_code == 2 and "the set is there" not in text, text
    assert f"{(tmp_path / 'merged').resolve()}, which no longer exists" in text and "render" in text
    assert not (tmp_path / "m2").exists()
    (ann, root), cache = demo_source, generated[2]
    generate(shard_dirs[0], SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(0, 2), progress=False)
    shard = CliRunner().invoke(occsynth_main, ["validate", str(shard_dirs[0])])
    assert shard.exit_code == 2 and "merged into" not in shard.output and "one --shard of a set" in shard.output


@pytest.fixture
def broken_source(demo_source, tmp_path):
    """A copy of the demo source with one of each kind of bad input."""
    ann, root = demo_source
    src = tmp_path / "src"
    shutil.copytree(root, src / "images")
    data = json.loads(Path(ann).read_text())
    images = data["images"]
    (src / "images" / images[0]["file_name"]).write_bytes(b"garbage")                    # corrupt
    (src / "images" / images[1]["file_name"]).unlink()                                   # missing
    images[2]["file_name"] = "../../outside.jpg"                                         # escapes the root
    first = data["annotations"][0]
    data["annotations"].append({**first, "id": 10 ** 6, "category_id": 999})            # unknown category
    data["annotations"].append({**first, "id": 10 ** 6 + 1, "image_id": 424242})        # unknown image
    data["annotations"].append({**first, "id": 10 ** 6 + 2, "segmentation": [[1, 2, 3]]})  # degenerate
    (src / "annotations.json").write_text(json.dumps(data))
    return src / "annotations.json", src / "images"


def test_bad_input_is_skipped_and_summarised(broken_source, tmp_path):
    ann, root = broken_source
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out",
                                                str(tmp_path / "o"), "--num-images", "24", "--cache-dir",
                                                str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    bank_skips = manifest["bank"]["skipped"]["counts"]
    assert bank_skips[errors.UNKNOWN_CATEGORY] == 1 and bank_skips[errors.UNKNOWN_IMAGE] == 1
    assert bank_skips[errors.DEGENERATE_MASK] == 1
    skipped = manifest["skipped"]["counts"]
    assert set(skipped) <= {errors.CORRUPT_IMAGE, errors.MISSING_FILE, errors.OUTSIDE_ROOT}
    assert "source records skipped (bad input)" in result.output and "counted per use" in result.output
    data = json.loads((tmp_path / "o" / "annotations.json").read_text())
    bad_ids = {im["id"] for im in json.loads(Path(ann).read_text())["images"][:3]}
    assert not {im["background"]["image_id"] for im in data["images"]} & bad_ids
    assert not {a["source"]["image_id"] for a in data["annotations"]} & bad_ids


def test_strict_mode_stops_with_a_message_naming_the_record(broken_source, tmp_path):
    ann, root = broken_source
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out",
                                                str(tmp_path / "o"), "--strict", "--cache-dir", str(tmp_path / "c"),
                                                "--quiet"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "annotation 1000000" in result.output
    assert "Traceback" not in result.output


def test_a_strict_run_stopped_before_its_first_chunk_can_be_run_again_once_the_record_is_fixed(demo_source,
                                                                                                tmp_path):
    """--strict stops at a bad record so that the user fixes it: a bad image found while rendering left OUT with
    the run's records and nothing rendered, and the same command after the fix was refused ("holds a run made with
    other settings (source.sha256: ...)") until the user deleted OUT by hand. The stopped run had written
    parts/source.json (the categories and bank counts finalize takes, written only where there are none): the run
    that took its place must write its own, as the fixed source may differ in more than the bad record."""
    ann, root = demo_source
    src = tmp_path / "src"
    shutil.copytree(root, src / "images")
    data = json.loads(Path(ann).read_text())
    first = data["images"][0]["file_name"]
    shutil.copy(src / "images" / first, src / "images" / "fixed.jpg")
    (src / "images" / first).write_bytes(b"garbage")  # found when rendering: no pixel store reads it before
    (src / "annotations.json").write_text(json.dumps(data))
    args = ["generate", "--ann", str(src / "annotations.json"), "--images", str(src / "images"), "--num-images", "8",
            "--strict", "--no-cutout-pixels", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    result = CliRunner().invoke(occsynth_main, args + ["--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.startswith(f"Error: image file {src / 'images' / first}: ")
    assert (tmp_path / "o" / "parts" / "source.json").is_file()
    data["images"][0]["file_name"] = "fixed.jpg"
    data["categories"][0]["name"] = "renamed"
    (src / "annotations.json").write_text(json.dumps(data))
    again = CliRunner().invoke(occsynth_main, args + ["--out", str(tmp_path / "o")])
    assert again.exit_code == 0, again.output
    # the user hears that the stopped run was replaced, and by which settings it differed
    assert re.search(rf"note: {re.escape(str(tmp_path / 'o'))} held a run of other settings \(source\.images: \w+ -> "
                     r"\w+; source\.sha256: \w+ -> \w+\) that had finished no chunk: this run took its place", again.stderr), again.stderr
    fresh = CliRunner().invoke(occsynth_main, args + ["--out", str(tmp_path / "fresh")])
    assert fresh.exit_code == 0, fresh.output
    assert "took its place" not in fresh.stderr
    names = json.loads((tmp_path / "o" / "annotations.json").read_text())["categories"]
    assert "renamed" in {c["name"] for c in names}, names
    assert tree_bytes(tmp_path / "o") == tree_bytes(tmp_path / "fresh")


def test_an_error_raised_in_a_worker_process_reaches_the_main_process_as_it_was(demo_source, tmp_path):
    """Errors cross to the main process pickled (loky, dask): a BadRecord (three arguments) could not be rebuilt
    there, so --strict --workers 2 ended in loky's BrokenProcessPool traceback, and a DamagedEntry said "delete
    it to rebuild" twice."""
    for exc in (errors.BadRecord(errors.CORRUPT_IMAGE, "image file a.jpg", "truncated"),
                DamagedEntry("b: not a readable cutout bank", "b"), writer.DamagedPart(Path("p.json"), "why")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc) and back.__dict__ == exc.__dict__
    ann, root = demo_source
    src = tmp_path / "src"
    shutil.copytree(root, src / "images")
    first = json.loads(Path(ann).read_text())["images"][0]["file_name"]
    (src / "images" / first).write_bytes(b"garbage")  # found when rendering: no pixel store reads it before
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(src / "images"),
                                                "--out", str(tmp_path / "o"), "--num-images", "96", "--workers", "2",
                                                "--strict", "--no-cutout-pixels", "--cache-dir", str(tmp_path / "c"),
                                                "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: image file {src / 'images' / first}: "), result.output
    assert "Traceback" not in result.output


def test_a_worker_running_in_another_folder_writes_where_relative_paths_were_meant(generated, demo_source, tmp_path,
                                                                                   monkeypatch):
    """A cluster's workers (--backend dask/ray) run in a folder of their own: given a relative --out, --cache-dir or
    --images, they wrote the images under that folder (and the run stopped calling a missing part damaged)."""
    out, _, _ = generated
    ann, root = demo_source
    monkeypatch.chdir(tmp_path)
    worker_folder = tmp_path / "worker"
    worker_folder.mkdir()
    real = generate_module._finished_chunks

    def elsewhere(task, *args, **kwargs):  # every chunk rendered from another current folder, as on a worker
        def in_worker_folder(chunk):
            here = os.getcwd()
            os.chdir(worker_folder)
            try:
                return task(chunk)
            finally:
                os.chdir(here)
        return real(in_worker_folder, *args, **kwargs)
    monkeypatch.setattr(generate_module, "_finished_chunks", elsewhere)
    generate("rel", SETTINGS, ann_path=os.path.relpath(ann), image_root=os.path.relpath(root), cache_dir="cache",
             progress=False)
    assert list(worker_folder.iterdir()) == []
    assert tree_bytes(tmp_path / "rel") == tree_bytes(out)
    # through a link, 'link/../o' is the folder beside the link's target: the workers write where it was checked
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere" / "deep")
    generate("link/../o", SETTINGS, ann_path=os.path.relpath(ann), image_root=os.path.relpath(root), cache_dir="cache",
             progress=False)
    assert not (tmp_path / "o").exists() and tree_bytes(tmp_path / "elsewhere" / "o") == tree_bytes(out)


def test_png_output_and_blend_none(demo_source, tmp_path):
    ann, root = demo_source
    settings = RunSettings(num_images=2, seed=1, image_format="png", composite=CompositeOptions(blend="none"))
    report = generate(tmp_path / "png", settings, ann_path=ann, image_root=root, cache_dir=tmp_path / "c", progress=False)
    assert report["counts"]["images"] == 2
    assert len(list((tmp_path / "png" / "images").glob("*.png"))) == 2


def test_resume_rerenders_images_deleted_or_truncated_after_their_chunk_finished(generated, demo_source, tmp_path):
    out, _, cache = generated
    ann, root = demo_source
    copy = tmp_path / "damaged"
    shutil.copytree(out, copy)
    (copy / "images" / "000000000002.jpg").unlink()
    tail = copy / "images" / "000000000009.jpg"
    tail.write_bytes(tail.read_bytes()[:100])
    generate(copy, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    assert tree_bytes(copy) == tree_bytes(out)


def test_an_output_directory_holding_other_files_is_refused_untouched(demo_source, tmp_path):
    ann, root = demo_source
    src = tmp_path / "src"
    shutil.copytree(Path(ann).parent, src)
    before = tree_bytes(src)
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(src / "annotations.json"), "--images",
                                                str(src / "images"), "--out", str(src), "--num-images", "4",
                                                "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 2
    assert "no occsynth run wrote" in result.output and "annotations.json" in result.output
    assert tree_bytes(src) == before


@pytest.mark.parametrize("planted", ["images/000000000003.jpg", "images/foo.jpg", "parts/mine.txt", "images"])
def test_files_of_the_users_inside_images_or_parts_are_refused_untouched(demo_source, tmp_path, planted):
    """A fresh run's image names are COCO-like (12 digits): a user's image folder must not be written over."""
    ann, root = demo_source
    out = tmp_path / "out"
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    (out / planted).write_bytes(b"the user's own file")
    (out / "parts").mkdir(exist_ok=True)
    (out / "parts" / ".lock").write_bytes(b"")  # a lock left by a run killed before it began: not foreign
    before = tree_bytes(out)
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out", str(out),
                                                "--num-images", "4", "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "no occsynth run wrote" in result.output and f"({planted})" in result.output
    assert tree_bytes(out) == before


def test_a_shard_is_not_refused_for_the_run_file_another_shard_writes_as_it_looks(generated, demo_source, tmp_path,
                                                                                  monkeypatch):
    """Shards started at once into one new OUT (an array job's tasks): one found parts/run.json, which the other wrote
    between its look for that file and its scan of parts/, and refused OUT as holding a file no occsynth run wrote."""
    out, _, cache = generated
    ann, root = demo_source
    shared = tmp_path / "shared"
    visible = writer._visible

    def other_shard_records_the_run_meanwhile(folder, exclude=()):
        run_file = shared / "parts" / "run.json"
        if not run_file.exists():
            run_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "parts" / "run.json", run_file)  # the same settings: shard 1's
        return visible(folder, exclude)

    monkeypatch.setattr(writer, "_visible", other_shard_records_the_run_meanwhile)
    report = generate(shared, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(0, 2), progress=False)
    assert report["shard_chunks"] == report["chunks_rendered"] == 2
    # a run of other settings recorded meanwhile is compared with, not overwritten: this one is refused
    other = tmp_path / "other"
    recorded = json.loads((out / "parts" / "run.json").read_text())
    recorded["settings"]["seed"] += 1

    looks = []

    def other_run_records_itself_meanwhile(out_dir, *args):
        refuse(out_dir, *args)
        looks.append(out_dir)
        if len(looks) == 2:  # right after the look check_run_settings takes under the lock (generate's first is before)
            (other / "parts" / "run.json").write_text(json.dumps(recorded))

    monkeypatch.setattr(writer, "_visible", visible)
    refuse = writer.refuse_foreign_files
    monkeypatch.setattr(writer, "refuse_foreign_files", other_run_records_itself_meanwhile)
    with pytest.raises(OccsynthError, match=r"holds a run made with other settings \(settings\.seed: 4 -> 3\)"):
        generate(other, SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(0, 2), progress=False)
    assert len(looks) == 2 and json.loads((other / "parts" / "run.json").read_text()) == recorded


def test_refusal_names_the_setting_that_changed(generated, demo_source):
    out, _, cache = generated
    ann, root = demo_source
    changed = RunSettings(num_images=N_IMAGES, seed=3, chunk_size=4, composite=CompositeOptions(flip_prob=0.25))
    with pytest.raises(errors.OccsynthError, match=r"settings\.composite\.flip_prob: 0\.5 -> 0\.25"):
        generate(out, changed, ann_path=ann, image_root=root, cache_dir=cache, progress=False)


def test_a_wrong_image_root_fails_early_with_an_example_path(demo_source, tmp_path):
    ann, root = demo_source
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(Path(root).parent),
                                                "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"),
                                                "--quiet"])
    assert result.exit_code == 2
    assert "is image_root/--images the folder" in result.output and str(Path(root).parent) in result.output
    assert not (tmp_path / "o" / "parts").exists()


def test_a_source_whose_file_names_are_all_absolute_fails_early_saying_so(demo_source, tmp_path):
    """A labelling tool's export naming its files by absolute paths: every record is refused (a name that leaves the
    image root), the folder check sampled none of them, and the run failed rendering its first image ("20 background
    images in a row were unreadable"), leaving OUT/parts behind."""
    ann, root = demo_source
    data = json.loads(Path(ann).read_text())
    absolute = tmp_path / "abs.json"
    absolute.write_text(json.dumps({**data, "images": [{**im, "file_name": str(Path(root).absolute() / im["file_name"])}
                                                       for im in data["images"]]}))
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(absolute), "--images", str(root),
                                                "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"),
                                                "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert re.search(rf"none of the {len(data['images'])} source image records names a file under a folder "
                     r"\(e\.g\. image record "
                     rf"\d+ \(file_name '{re.escape(str(Path(root).absolute()))}/[^']+'\): file_name points outside "
                     rf"the image root\); their file_name entries in {re.escape(str(absolute))} name no file under any folder "
                     r"\(absolute, with '\.\.', or not text\): fix those records to name files relative to one "
                     r"images folder", result.output), result.output
    assert not (tmp_path / "o").exists()


def test_a_source_whose_sampled_images_are_all_unreadable_fails_before_anything_is_written(demo_source, tmp_path):
    """Files of the right names that are no images (a broken copy): generation failed rendering its first image
    ("20 background images in a row were unreadable"), leaving OUT/parts behind."""
    ann, root = demo_source
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    for path in sorted(broken.rglob("*.jpg")):
        path.write_bytes(b"not a jpeg")
    result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(broken),
                                                "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"),
                                                "--no-cutout-pixels", "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert re.search(rf"none of the \d+ sampled source images under {re.escape(str(broken))} can be read \(e\.g\. "
                     rf"image file {re.escape(str(broken))}/[^:]+: unreadable or corrupt image\); are these the images "
                     r"of this set\?", result.output), result.output
    assert not (tmp_path / "o").exists()


def test_merge_refuses_to_take_images_out_of_a_finished_set(generated, tmp_path):
    out, _, _ = generated
    finished = tmp_path / "finished"
    shutil.copytree(out, finished)
    before = tree_bytes(finished)
    result = CliRunner().invoke(occsynth_main, ["merge", str(finished), "--out", str(tmp_path / "m"), "--quiet"])
    assert result.exit_code == 2 and "a finished set" in result.output and "Traceback" not in result.output
    assert tree_bytes(finished) == before and not (tmp_path / "m" / "images").exists()


def test_merge_names_the_setting_that_differs_and_the_chunks_it_left_in_a_shard_folder(generated, demo_source,
                                                                                        tmp_path):
    out, _, cache = generated
    ann, root = demo_source
    generate(tmp_path / "a", SETTINGS, ann_path=ann, image_root=root, cache_dir=cache, shard=(0, 2), progress=False)
    other = RunSettings(num_images=N_IMAGES, seed=4, chunk_size=4)
    generate(tmp_path / "b", other, ann_path=ann, image_root=root, cache_dir=cache, shard=(1, 2), progress=False)
    mixed = CliRunner().invoke(occsynth_main, ["merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                               "--out", str(tmp_path / "m"), "--quiet"])
    assert mixed.exit_code == 2 and f"{tmp_path / 'b'} was generated with other settings" in mixed.output
    assert "seed: 3 -> 4" in mixed.output
    into_other = CliRunner().invoke(occsynth_main, ["merge", str(tmp_path / "b"), "--out", str(tmp_path / "a"),
                                                    "--quiet"])
    assert into_other.exit_code == 2 and "merge these shards into another out_dir/--out" in into_other.output
    # a finished --out already has every chunk: the shard folder's are left where they are, and said so
    finished = tmp_path / "finished"
    shutil.copytree(out, finished)
    left = CliRunner().invoke(occsynth_main, ["merge", str(tmp_path / "a"), "--out", str(finished), "--quiet"])
    assert left.exit_code == 0, left.output
    assert f"note: {tmp_path / 'a'} still holds 2 chunks" in left.output
    assert len(list((tmp_path / "a" / "images").iterdir())) == 8


@pytest.mark.parametrize("value, words", [
    ("3/3", "shards are numbered from 0: i runs from 0 to 2 for n = 3 (an array job's task ids 0-2), got '3/3'"),
    ("1/0", "n must be at least 1, got '1/0'"),
    ("", "expected i/n such as 0/4, got ''; i or n is empty: is the variable that gives it set?"),
    ("/64", "expected i/n such as 0/4, got '/64'; i or n is empty: is the variable that gives it set?"),
    ("a/b", "expected i/n such as 0/4, got 'a/b'\n")])
def test_a_shard_out_of_range_says_how_shards_are_numbered(tmp_path, value, words):
    """An array job numbered 1..n (Slurm's --array=1-3) ran shard n/n: 'must satisfy 0 <= i < n' left unsaid that
    shard 0 is the one missing; an empty --shard (an unset variable) ran the whole set in every task, and the
    README's $SLURM_ARRAY_TASK_ID/64 unset gives '/64'."""
    result = CliRunner().invoke(occsynth_main, ["generate", "--out", str(tmp_path / "o"), "--shard", value,
                                                "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2 and f"Invalid value for '--shard': {words}" in result.output, result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


def test_cli_messages_for_shards_interrupts_recipes_and_unreadable_sources(demo_source, tmp_path, monkeypatch):
    ann, root = demo_source
    base = ["generate", "--ann", str(ann), "--images", str(root), "--cache-dir", str(tmp_path / "c"), "--quiet"]
    shard = CliRunner().invoke(occsynth_main, base + ["--out", str(tmp_path / "s"), "--shard", "0/3",
                                                      "--num-images", "8"])
    assert shard.exit_code == 0, shard.output
    assert f"occsynth merge {tmp_path / 's'} --out {tmp_path / 's'}" in shard.output
    assert "its 1 chunk is done" in shard.output  # 8 images in chunks of 16: one chunk, shard 0's
    idle = CliRunner().invoke(occsynth_main, base + ["--out", str(tmp_path / "s"), "--shard", "2/3",
                                                     "--num-images", "8"])
    assert idle.exit_code == 0 and "shard 2/3 has nothing to do: the set has only 1 chunk," in idle.output
    for i in (1, 2):
        CliRunner().invoke(occsynth_main, base + ["--out", str(tmp_path / "s"), "--shard", f"{i}/3", "--num-images", "8"])
    assert CliRunner().invoke(occsynth_main, ["merge", str(tmp_path / "s"), "--out", str(tmp_path / "s")]).exit_code == 0
    merged = sorted(p.name for p in (tmp_path / "s" / "parts").iterdir())
    retry = CliRunner().invoke(occsynth_main, base + ["--out", str(tmp_path / "s"), "--shard", "0/3",
                                                      "--num-images", "8"])
    assert retry.exit_code == 0 and "is already a merged set of these settings: nothing to do" in retry.output
    assert sorted(p.name for p in (tmp_path / "s" / "parts").iterdir()) == merged  # no lock files left
    # a shard retried after a merge moved its folder's chunks into another set: nothing is rendered again
    for i in range(3):
        CliRunner().invoke(occsynth_main, base + ["--out", str(tmp_path / f"own{i}"), "--shard", f"{i}/3",
                                                  "--num-images", "40"])
    joined = CliRunner().invoke(occsynth_main, ["merge", *(str(tmp_path / f"own{i}") for i in range(3)),
                                                "--out", str(tmp_path / "joined"), "--quiet"])
    assert joined.exit_code == 0, joined.output
    own_files = lambda: sorted(p.relative_to(tmp_path) for p in tmp_path.glob("own*/**/*"))  # noqa: E731
    before = own_files()
    again = CliRunner().invoke(occsynth_main, base + ["--out", str(tmp_path / "own1"), "--shard", "1/3",
                                                      "--num-images", "40"])
    assert again.exit_code == 0, again.output
    assert (f"the chunks of {tmp_path / 'own1'} were merged into {(tmp_path / 'joined').resolve()}, a finished set "
            "of these settings: nothing to do for shard 1/3") in again.output
    assert not list((tmp_path / "own1" / "images").iterdir())  # nothing rendered again
    assert own_files() == before  # no lock, run or chunk files either

    recipe = CliRunner().invoke(occsynth_main, base + ["--out", str(tmp_path / "r"), "--recipe", "nosuch"])
    assert recipe.exit_code == 2 and "synthetic-100k" in recipe.output and "schedule-" not in recipe.output

    not_json = tmp_path / "bad.json"
    not_json.write_text("this is not JSON")
    bad = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(not_json), "--images", str(root), "--out",
                                             str(tmp_path / "never"), "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert bad.exit_code == 2 and "bad.json" in bad.output
    assert not (tmp_path / "never").exists(), "an empty --out was left behind"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("cli.generate_commands.generate", interrupted)
    stopped = CliRunner().invoke(occsynth_main, base + ["--out", str(tmp_path / "i")])
    assert stopped.exit_code == 130 and "run the same command again to continue" in stopped.output  # 128 + SIGINT
    assert stopped.output.rstrip().endswith("Stopped (SIGINT).")


def test_a_shard_failing_early_leaves_the_shared_out_it_created(demo_source, tmp_path):
    _, root = demo_source
    not_json = tmp_path / "bad.json"
    not_json.write_text("this is not JSON")
    shared = tmp_path / "shared"
    base = ["generate", "--ann", str(not_json), "--images", str(root), "--cache-dir", str(tmp_path / "c"), "--quiet"]
    failed = CliRunner().invoke(occsynth_main, base + ["--out", str(shared), "--shard", "0/2"])
    assert failed.exit_code == 2
    assert shared.is_dir(), "another shard may be about to write into it"


def test_a_bad_setting_names_the_option_or_the_recipe_it_came_from(tmp_path):
    out = tmp_path / "never"
    # a value out of an option's own range (shown in --help) is refused by the option
    option = CliRunner().invoke(occsynth_main, ["generate", "--out", str(out), "--max-occlusion", "2"])
    assert option.exit_code == 2 and "Invalid value for '--max-occlusion': 2.0 is not in the range 0<x<1" in option.output
    bank = CliRunner().invoke(occsynth_main, ["generate", "--out", str(out), "--min-area", "-5"])
    assert bank.exit_code == 2 and "Invalid value for '--min-area': -5 is not in the range x>=0" in bank.output
    # values each in range that do not fit together: the library's check, named after the option
    pair = CliRunner().invoke(occsynth_main, ["generate", "--out", str(out), "--pastes", "3", "1"])
    assert pair.exit_code == 2 and "Invalid value for '--pastes': pastes must be 1 <= min <= max" in pair.output
    recipe = tmp_path / "bad.toml"
    recipe.write_text("[composite]\nmax_occlusion = 3.0\n")
    from_recipe = CliRunner().invoke(occsynth_main, ["generate", "--out", str(out), "--recipe", str(recipe)])
    assert from_recipe.exit_code == 2
    assert f"Error: recipe {recipe}: max_occlusion must be in (0, 1)" in from_recipe.output.replace("\n", " ")
    recipe.write_text("[composite]\nocclusion = [0.4, 0.6]\n")  # the recipe is fine; the option conflicts with it
    both = CliRunner().invoke(occsynth_main, ["generate", "--out", str(out), "--recipe", str(recipe),
                                              "--max-occlusion", "0.3"])
    assert both.exit_code == 2 and "Invalid value for '--max-occlusion': occlusion must be" in both.output
    assert not out.exists()


def test_each_generate_option_reaches_the_setting_it_names(tmp_path, monkeypatch):
    """The command hands every option to the library by name: two of one type swapped (--flip-prob and
    --same-class-prob, --border-margin and --touch-margin) would make another set without a word."""
    import cli.generate_commands as commands
    from occsynth.bank import BankOptions

    calls = []

    def captured(out, settings, **kwargs):
        calls.append((out, settings, kwargs))
        raise errors.OccsynthError("captured")

    monkeypatch.setattr(commands, "generate", captured)
    result = CliRunner().invoke(occsynth_main, [
        "generate", "--out", str(tmp_path / "o"), "--num-images", "7", "--seed", "5", "--pastes", "1", "3",
        "--occlusion", "0.15", "0.5", "--max-occlusion", "0.6", "--same-class-prob", "0.3", "--scale", "0.7", "1.2",
        "--flip-prob", "0.1", "--blend", "gaussian", "--min-area", "900", "--border-margin", "3", "--touch-margin", "4",
        "--image-format", "png", "--shard", "1/2", "--strict", "--cache-dir", str(tmp_path / "c"),
        "--backend", "threading", "--no-cutout-pixels", "--quiet"])
    assert result.exit_code == 2 and result.output == "Error: captured\n", result.output
    [(out, settings, kwargs)] = calls
    composite = CompositeOptions(pastes=(1, 3), occlusion=(0.15, 0.5), max_occlusion=0.6, same_class_prob=0.3,
                                 scale=(0.7, 1.2), flip_prob=0.1, blend="gaussian")
    assert out == str(tmp_path / "o") and settings == RunSettings(
        num_images=7, seed=5, image_format="png", composite=composite,
        bank=BankOptions(min_area=900, border_margin=3, touch_margin=4))
    assert kwargs == {"ann_path": None, "image_root": None, "workers": 1, "shard": (1, 2), "strict": True,
                      "cache_dir": str(tmp_path / "c"), "backend": "threading", "backend_address": None,
                      "cutout_pixels": False, "progress": False}


def test_a_rerun_says_what_was_done_before_it(demo_source, tmp_path):
    ann, root = demo_source
    args = ["generate", "--ann", str(ann), "--images", str(root), "--out", str(tmp_path / "out"), "--num-images", "40",
            "--cache-dir", str(tmp_path / "c"), "--quiet"]
    first = CliRunner().invoke(occsynth_main, args)
    assert first.exit_code == 0 and "resumed" not in first.output and "nothing left" not in first.output
    writer.part_path(tmp_path / "out", 0).unlink()  # as if the run had stopped before its first chunk was done
    resumed = CliRunner().invoke(occsynth_main, args)
    assert resumed.exit_code == 0 and resumed.output.startswith("resumed: rendered 1 of 3 chunks")
    finished = CliRunner().invoke(occsynth_main, args)
    assert finished.exit_code == 0 and finished.output.startswith("nothing left to render: all 3 chunks were done")
    shown = CliRunner().invoke(occsynth_main, [a for a in args if a != "--quiet"])  # with bars: none drawn for nothing
    assert shown.exit_code == 0 and "nothing left to render" in shown.stdout and "generate" not in shown.stderr, \
        shown.stderr
    writer.part_path(tmp_path / "out", 1).unlink()
    resumed_bar = CliRunner().invoke(occsynth_main, [a for a in args if a != "--quiet"])
    assert "generate (resuming: 2 of 3 chunks done)" in resumed_bar.stderr, resumed_bar.stderr
    shard = CliRunner().invoke(occsynth_main, [str(tmp_path / "shared") if a == str(tmp_path / "out") else a
                                               for a in args] + ["--shard", "0/2"])
    assert shard.exit_code == 0 and "resumed" not in shard.output


def _report_sigint_ignored(folder: str, chunk: int) -> int:
    import os
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    ignored = int(status.split("SigIgn:")[1].split()[0], 16) & (1 << (2 - 1))  # the bit of SIGINT (2)
    (Path(folder) / f"{chunk}-{os.getpid()}").write_text("ignored" if ignored else "handled")
    return 1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_pool_workers_leave_ctrl_c_to_the_main_process(tmp_path):
    # Ctrl-C reaches the whole process group: workers ignore it (a half-started one printed a traceback);
    # the main process stops the run and shuts the pool down
    import functools
    import signal
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True)  # fresh workers, started by the run below
    settings = RunSettings(num_images=6, seed=0, chunk_size=1)
    task = functools.partial(_report_sigint_ignored, str(tmp_path))
    assert sorted(generate_module._finished_chunks(task, list(range(6)), settings, 2, "loky", False)) == \
        list(range(6))
    reports = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert len(reports) == 6 and set(reports.values()) == {"ignored"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the main process's Ctrl-C is back


def test_options_a_run_would_not_use_as_meant_are_noted(demo_source, tmp_path):
    ann, root = demo_source
    result_args = ["generate", "--ann", str(ann), "--images", str(root), "--out", str(tmp_path / "out"),
                   "--num-images", "2", "--image-format", "png", "--jpeg-quality", "50", "--cache-dir",
                   str(tmp_path / "c"), "--quiet"]
    result = CliRunner().invoke(occsynth_main, result_args)
    assert result.exit_code == 0 and "note: --jpeg-quality is for jpg output; png output ignores it" in result.output
    assert sorted(p.suffix for p in (tmp_path / "out" / "images").iterdir()) == [".png", ".png"]
    without = [a for a in result_args if a not in ("--jpeg-quality", "50")]
    again = CliRunner().invoke(occsynth_main, without)   # resuming without it is the same run
    assert again.exit_code == 0 and again.output.startswith("nothing left to render"), again.output
    demo = CliRunner().invoke(occsynth_main, ["generate", "--recipe", "synthetic-100k", "--out", str(tmp_path / "d"),
                                              "--num-images", "2", "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert demo.exit_code == 0 and "recipe synthetic-100k runs on the embedded demo source" in demo.output
    meant = CliRunner().invoke(occsynth_main, ["generate", "--recipe", "synthetic-demo", "--out", str(tmp_path / "m"),
                                               "--num-images", "2", "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert meant.exit_code == 0 and "embedded demo source" not in meant.output  # the recipe made for it
    assert "embedded demo source" not in result.output


def test_a_chunk_is_done_only_when_its_sizes_file_names_its_own_images_with_their_sizes(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    writer.write_part(out, 0, "{}", {"a.jpg": 3})
    assert not writer.chunk_done(out, 0)                  # the image is missing
    (out / "images" / "a.jpg").write_bytes(b"abc")
    assert writer.chunk_done(out, 0)
    (out / "images" / "a.jpg").write_bytes(b"ab")
    assert not writer.chunk_done(out, 0)                  # truncated after the fact
    (tmp_path / "victim.txt").write_text("1234567")
    for name in ("../../victim.txt", str(tmp_path / "victim.txt"), ".", ""):
        writer.write_part(out, 0, "{}", {name: 7 if "victim" in name else 0})
        assert not writer.chunk_done(out, 0), name     # a name outside the images folder proves nothing


def test_the_run_counts_what_is_occluded_and_says_when_nothing_is(demo_source, tmp_path):
    """A user sees at once whether the set does what it is for; validate recomputes the counts."""
    ann, root = demo_source
    for scale, note in (("1", False), ("0.01", True)):
        out = tmp_path / f"s{scale}"
        result = CliRunner().invoke(occsynth_main, ["generate", "--ann", str(ann), "--images", str(root), "--out",
                                                    str(out), "--num-images", "8", "--scale", scale, scale,
                                                    "--cache-dir", str(tmp_path / "c"), "--quiet"])
        assert result.exit_code == 0, result.output
        data = json.loads((out / "annotations.json").read_text())
        counts = json.loads((out / "manifest.json").read_text())["counts"]
        pasted = [a for a in data["annotations"] if a["layer"] > 0]
        assert counts["occluded"] == sum(bool(a["occluder_ids"]) for a in data["annotations"])
        assert counts["pasted_occluded"] == sum(bool(a["occluder_ids"]) for a in pasted)
        assert (f"occluded: {counts['pasted_occluded']} of {len(pasted)} pasted objects and {counts['occluded']} "
                f"of {len(data['annotations'])} instances") in result.output
        assert (counts["occluded"] == 0) == note and ("note: nothing is occluded" in result.output) == note
        assert validate(out)["ok"]


def test_the_run_summary_writes_every_count_one_way(capsys):
    """A 5,000-image run said "wrote 5,000 images, 35,637 annotations (15025 pasted)" and "occluded: 10021 of 15025
    pasted objects and 17444 of 35637": the same counts with and without thousands separators."""
    from cli.generate_commands import _print_report
    counts = {"images": 5000, "annotations": 35637, "pasted": 15025, "pasted_occluded": 10021, "occluded": 17444,
              "pasted_per_category": {"1": 1669, "2": 1670}}
    _print_report({"merged": True, "out": "g2", "counts": counts, "skipped": {}, "chunks_rendered": 141,
                   "chunks_total": 1313})
    assert capsys.readouterr().out.splitlines() == [
        "resumed: rendered 141 of 1,313 chunks; the others were done before this run",
        "wrote 5,000 images, 35,637 annotations (15,025 pasted) to g2",
        "occluded: 10,021 of 15,025 pasted objects and 17,444 of 35,637 instances in all have an object on top",
        "pasted per category: 2 categories, min 1,669, max 1,670"]


@pytest.mark.parametrize("shard", [(0, 0), (2, 2), (-1, 2), (0.5, 2), "0/2", (True, 2)])
def test_generate_refuses_a_shard_that_is_no_part_of_a_split_before_writing(tmp_path, shard):
    with pytest.raises(errors.OccsynthError, match="shard"):
        generate(tmp_path / "o", SETTINGS, shard=shard, progress=False)
    assert not (tmp_path / "o").exists()
    assert writer.check_shard((np.int64(1), np.int64(2))) == (1, 2)  # numpy's integers are whole numbers too


def test_run_settings_take_their_option_tables_as_dicts_too(tmp_path):
    """From a notebook: RunSettings(composite={...}) is the same as with the options object."""
    as_dict = RunSettings(num_images=4, seed=0, composite={"pastes": [1, 2]}, bank={"min_area": 10})
    assert as_dict == RunSettings(num_images=4, seed=0, composite=CompositeOptions(pastes=(1, 2)),
                                  bank=generate_module.BankOptions(min_area=10))
    hash(as_dict)  # the workers' caches key on it
    with pytest.raises(errors.OccsynthError, match="composite: .*unexpected keyword argument 'paste'"):
        RunSettings(num_images=4, seed=0, composite={"paste": [1, 2]})
    with pytest.raises(errors.OccsynthError, match="bank must be a BankOptions or a dict"):
        RunSettings(num_images=4, seed=0, bank=3)
    with pytest.raises(errors.OccsynthError, match="settings must be a RunSettings"):
        generate(tmp_path / "o", {"num_images": 4, "seed": 0}, progress=False)
    numpy = RunSettings(num_images=np.int64(4), seed=np.uint8(3), chunk_size=np.int32(2))  # a notebook's numbers
    assert numpy == RunSettings(num_images=4, seed=3, chunk_size=2) and type(numpy.num_images) is int
    with pytest.raises(errors.OccsynthError, match=re.escape("seed must be a whole number between 0 and")):
        RunSettings(num_images=4, seed=np.int64(-1))
    for workers in (0, 1.5, True, np.int64(0)):  # the CLI's range, from Python too
        with pytest.raises(errors.OccsynthError, match=re.escape(f"workers must be a whole number >= 1, got {workers!r}")):
            generate(tmp_path / "o", as_dict, workers=workers, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("count", [generate_module.MAX_IMAGES + 1, 10 ** 20])
def test_an_image_count_past_the_maximum_is_refused_before_out_is_made(tmp_path, count):
    """A mistyped count filled memory (every worker draws the whole set's class schedule) and left a run.json
    that refused the corrected command in the same --out."""
    with pytest.raises(errors.OccsynthError, match=f"num_images must be a whole number between 1 and "
                                                   f"{generate_module.MAX_IMAGES}, got {count}"):
        RunSettings(num_images=count, seed=0)
    result = CliRunner().invoke(occsynth_main, ["generate", "--out", str(tmp_path / "o"), "--num-images", str(count)])
    assert result.exit_code == 2 and f"{count} is not in the range 1<=x<={generate_module.MAX_IMAGES}" in result.output
    assert not (tmp_path / "o").exists()
    assert RunSettings(num_images=generate_module.MAX_IMAGES, seed=0).num_images == generate_module.MAX_IMAGES


def test_a_copy_across_disks_is_left_alone_by_a_sweep_of_orphaned_temporaries_meanwhile(tmp_path, monkeypatch):
    """move_file copies when a rename cannot cross file systems; its temporary must be held while written, or a
    sweep run meanwhile (predict's, of its pictures) takes it for a killed copy's and removes it."""
    import errno
    import types

    from occsynth.atomic import remove_orphaned_temporaries

    src, dst = tmp_path / "a" / "000001-x.png", tmp_path / "b" / "000001-x.png"
    src.parent.mkdir()
    src.write_bytes(b"picture")
    swept = []

    def no_rename(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    class SweepWhileRead:
        def __init__(self, path, mode):
            self.f = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self):
            swept.append(remove_orphaned_temporaries(dst.parent, names=re.compile(r"\d{6,}-.*\.png")))
            return self.f.read()

    monkeypatch.setattr(writer, "os", types.SimpleNamespace(replace=no_rename, unlink=os.unlink))
    monkeypatch.setattr(writer, "open", SweepWhileRead, raising=False)
    writer.move_file(src, dst, locked=True)  # as predict moves its pictures
    assert swept == [0] and dst.read_bytes() == b"picture" and not src.exists()


def test_the_shard_line_and_the_resume_label_print_counts_with_thousands_separators(capsys):
    """The summary printed '1,500 images' but the shard line '1500 of the set's 2400' and the bar
    'resuming: 1200 of 2400 chunks done'."""
    from cli.generate_commands import _print_report
    from occsynth.generate import progress_label

    _print_report({"out": "o", "shard": "0/2", "chunks_total": 2400, "shard_chunks": 1200, "chunks_done": 1500,
                   "chunks_rendered": 1200})
    assert "o holds 1,500 of the set's 2,400. When" in capsys.readouterr().out
    assert progress_label(1200, 2400) == "generate (resuming: 1,200 of 2,400 chunks done)"
    assert progress_label(1, 1) == "generate (resuming: 1 of 1 chunk done)"
    assert progress_label(0, 3) == "generate"
