"""occsynth stats: exact counts on the hand-made set, the streamed file path, the plot and the CLI."""
from __future__ import annotations

import errno
import io
import json
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli import inspect_commands
from cli.common import Group
from occsynth import atomic
from occsynth.errors import OccsynthError, plural
from occsynth.stats import (AXIS_LEFT, BAR_PASTED, PANEL, bar_panel, dataset_stats, format_stats, plot_stats, ratio_bin,
                             stats_from_path)
from datasets import SCENES, build, scene_instances, write_dataset


def test_exact_counts_on_the_hand_made_set():
    data, _ = build()
    stats = dataset_stats(data)
    assert (stats["images"], stats["annotations"], stats["pasted"], stats["background"]) == (3, 13, 9, 4)
    assert [(r["id"], r["pasted"], r["background"]) for r in stats["categories"]] == [
        (1, 0, 4), (3, 3, 0), (5, 3, 0), (7, 3, 0), (9, 0, 0)]
    assert stats["instances_per_image"] == {"histogram": {5: 2, 3: 1}, "mean": 13 / 3, "min": 3, "max": 5}
    assert stats["pasted_per_image"]["histogram"] == {3: 3}
    assert stats["layers"] == {0: 4, 1: 3, 2: 3, 3: 3}
    assert stats["depth_per_image"] == {3: 3}
    # Occlusion ratios: D E G H I J L M in [0, 0.1) (H: 1 of 197 px hidden), B F in [0.1, 0.2),
    # A C in [0.2, 0.3), K in [0.4, 0.5).
    assert stats["occlusion_ratio"]["counts"] == [8, 2, 2, 0, 1, 0, 0, 0, 0, 0]
    assert stats["occlusion_ratio"]["pasted_counts"] == [7, 0, 1, 0, 1, 0, 0, 0, 0, 0]


def test_ratio_histogram_matches_the_masks():
    ratios = []
    for scene in SCENES:
        for inst in scene_instances(scene):
            ratios.append(1 - inst["visible"].sum() / inst["amodal"].sum())
    expected = np.bincount(np.minimum((np.array(ratios) * 10 + 1e-9).astype(int), 9), minlength=10)
    data, _ = build()
    assert dataset_stats(data)["occlusion_ratio"]["counts"] == expected.tolist()
    assert [ratio_bin(r) for r in (0.0, 0.1, 0.3, 0.999, 1.0)] == [0, 1, 3, 9, 9]
    # a converter writes 1 - area / amodal_area unrounded: 1 - 9/10 is 0.09999999999999998, one tenth all the same
    assert ratio_bin(1 - 9 / 10) == 1


def test_without_an_image_table_the_images_are_those_annotated_and_the_depth_is_the_deepest_layer():
    data, _ = build()
    stats = dataset_stats(dict(data, images=[], annotations=data["annotations"][::-1]))  # deepest layer read first
    assert stats["images"] == 0 and stats["annotations"] == 13
    assert stats["instances_per_image"] == {"histogram": {5: 2, 3: 1}, "mean": 13 / 3, "min": 3, "max": 5}
    assert stats["depth_per_image"] == {3: 3}


def test_plain_coco_counts_every_instance_as_layer_0():
    data, _ = build()
    for ann in data["annotations"]:
        del ann["layer"], ann["occlusion_ratio"]
    data["images"].append({"id": 99, "file_name": "x.png", "height": 4, "width": 4})
    stats = dataset_stats(data)
    assert stats["pasted"] == 0 and stats["background"] == 13 and stats["with_layer"] == 0
    assert stats["instances_per_image"]["histogram"] == {0: 1, 3: 1, 5: 2}
    assert sum(stats["occlusion_ratio"]["counts"]) == 0
    assert stats["occlusion_ratio"]["mean"] is None and stats["occlusion_ratio"]["annotations"] == 0
    assert "occlusion ratio: no annotation has one" in format_stats(stats) and "mean 0.000" not in format_stats(stats)
    assert "not a generated synthetic set" in format_stats(stats)   # the report says why all are "background"
    assert "not a generated synthetic set" not in format_stats(dataset_stats(build()[0]))
    data["annotations"][0]["layer"] = None                            # not a layer either
    assert dataset_stats(data)["with_layer"] == 0


def test_streamed_file_equals_in_memory(tmp_path):
    out = write_dataset(tmp_path / "set")
    data, _ = build()
    assert stats_from_path(out) == dataset_stats(data)
    assert stats_from_path(out / "annotations.json") == dataset_stats(data)


def test_only_the_annotations_are_streamed_the_image_and_category_lists_are_read_up_to_their_end(tmp_path,
                                                                                                  monkeypatch):
    """The parser that streams an array's items reads on to the end of the file: streaming the images as well cost
    a whole parse of a COCO-train-size file (7 s of stats' 23) for 118k small records, and the categories another."""
    from occsynth import stats as stats_module
    streamed = []
    real = stats_module.iter_array
    monkeypatch.setattr(stats_module, "iter_array", lambda path, key: streamed.append(key) or real(path, key))
    out = write_dataset(tmp_path / "set")
    data, _ = build()
    assert stats_from_path(out) == dataset_stats(data)
    assert streamed == ["annotations"]


def test_plot_bars_are_proportional():
    data, _ = build()
    plot = plot_stats(dataset_stats(data))
    assert plot.shape == (2 * PANEL[0], 2 * PANEL[1], 3)
    # bottom-right panel: instances per layer 4, 3, 3, 3 -> the first bar reaches the top, the others 3/4 of it
    panel = plot[PANEL[0]:, PANEL[1]:]
    bars = np.all(panel == np.array(BAR_PASTED, np.uint8), axis=-1)
    heights = [bars[:, x].sum() for x in np.flatnonzero(bars.any(axis=0))]
    columns = np.flatnonzero(bars.any(axis=0))
    groups = np.split(np.array(heights), np.flatnonzero(np.diff(columns) > 1) + 1)
    tops = [int(g.max()) for g in groups]
    assert len(tops) == 4
    assert tops[1] == tops[2] == tops[3] and abs(tops[1] / tops[0] - 0.75) < 0.02


def test_an_empty_panel_says_why_and_a_full_one_holds_only_its_bars():
    def text_in_plot_area(panel):  # ink between the axes that is not a bar
        area = panel[41:PANEL[0] - 41, AXIS_LEFT + 1:PANEL[1] - 10]
        return bool(np.any(np.all(area < 150, axis=-1)))

    data, _ = build()
    generated = plot_stats(dataset_stats(data))
    for ann in data["annotations"]:
        del ann["layer"], ann["occlusion_ratio"]
    plain = plot_stats(dataset_stats(data))  # plain COCO: nothing pasted, no ratios
    top_left, bottom_left = (slice(0, PANEL[0]), slice(0, PANEL[1])), (slice(PANEL[0], None), slice(0, PANEL[1]))
    assert text_in_plot_area(plain[top_left]) and text_in_plot_area(plain[bottom_left])
    assert not text_in_plot_area(generated[top_left]) and not text_in_plot_area(generated[bottom_left])
    assert text_in_plot_area(bar_panel("t", ["a"], [0], BAR_PASTED)) and not text_in_plot_area(
        bar_panel("t", ["a"], [3], BAR_PASTED))


def test_cli_text_json_and_plot(tmp_path):
    out = write_dataset(tmp_path / "set")
    runner = CliRunner()
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    text = runner.invoke(group, ["stats", str(out), "--plot", str(tmp_path / "stats.png")])
    assert text.exit_code == 0, text.output
    assert "3 images, 13 annotations (9 pasted, 4 background)" in text.output
    assert "(1 category without instances not shown)" in text.output
    lines = text.output.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("occlusion ratio: mean"))) + 1
    assert lines[header].split() == ["bin", "all", "pasted"]  # a header line of its own, its columns over the counts
    assert len(lines[header]) == len(lines[header + 1]) and lines[header + 1].startswith("  [0.0, 0.1)")
    assert cv2.imread(str(tmp_path / "stats.png")).shape == (2 * PANEL[0], 2 * PANEL[1], 3)
    assert text.output.endswith(f"\n\nwrote {tmp_path / 'stats.png'}\n")
    as_json = runner.invoke(group, ["stats", str(out), "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.output)["layers"] == {"0": 4, "1": 3, "2": 3, "3": 3}
    # with --plot too, the output stays one JSON document: the 'wrote PLOT' line is left out
    both = runner.invoke(group, ["stats", str(out), "--json", "--plot", str(tmp_path / "both.png")])
    assert both.exit_code == 0 and json.loads(both.output) == json.loads(as_json.output), both.output
    assert cv2.imread(str(tmp_path / "both.png")).shape == (2 * PANEL[0], 2 * PANEL[1], 3)
    missing = runner.invoke(group, ["stats", str(tmp_path)])
    assert missing.exit_code == 2 and "annotations.json" in missing.output
    bmp = runner.invoke(group, ["stats", str(out), "--plot", str(tmp_path / "stats.bmp")])
    assert bmp.exit_code == 2 and "the plot is written as .png or .jpg" in bmp.output
    assert not (tmp_path / "stats.bmp").exists()


def group():
    return Group(commands={c.name: c for c in inspect_commands.COMMANDS})


@pytest.mark.parametrize("content, message", [
    ("[1, 2, 3]", "the top level is an array, expected a JSON object"),
    ("{}", "missing the 'images' list"),
    ('{"images": {"1": {}}, "annotations": [], "categories": []}', "'images' is an object, expected a list"),
    ('{"images": [], "annotations": 5, "categories": []}', "'annotations' is a number, expected a list"),
    ('{"images": [], "annotations": []}', "missing the 'categories' list"),
    ('{"images": [{"id": 1,', "malformed JSON"),
])
def test_non_coco_input_is_refused(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    res = CliRunner().invoke(group(), ["stats", str(path)])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_empty_but_well_formed_set_is_fine(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"images": [], "annotations": [], "categories": []}')
    stats = stats_from_path(path)
    assert stats["images"] == stats["annotations"] == 0 and stats["skipped"]["counts"] == {}
    # the report says the set is empty; it printed "min 0, mean 0.00, max 0", bare "instances per layer: " and
    # called the set "not an occsynth or converted amodal set", which an empty generated set may well be
    assert format_stats(stats).splitlines()[-8:] == [
        "instances per image: no images", "", "pasted per image: no images", "",
        "occlusion ratio: no annotations", "", "instances per layer: none", "images by deepest layer: none"]
    data, _ = build()
    data["annotations"] = []  # images without annotations: their counts are real zeros
    text = format_stats(dataset_stats(data))
    assert "instances per image: min 0, mean 0.00, max 0" in text and "occlusion ratio: no annotations" in text
    assert "not an occsynth" not in text and "instances per layer: none" in text


def test_skipped_records_are_reported_not_counted(tmp_path):
    data, _ = build()
    data["images"].append(dict(data["images"][0]))  # duplicate id
    data["images"].append("junk")
    data["annotations"] += [7, dict(data["annotations"][0], id=999, image_id=12345)]
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    clean, _ = build()
    stats = stats_from_path(path)
    expected = dataset_stats(clean)
    assert {k: v for k, v in stats.items() if k != "skipped"} == {k: v for k, v in expected.items() if k != "skipped"}
    assert stats["skipped"]["counts"] == {"annotation refers to an unknown image id": 1, "duplicate id": 1,
                                          "malformed record": 2}
    res = CliRunner().invoke(group(), ["stats", str(path)])
    assert res.exit_code == 0 and "skipped 4 records, not counted above:" in res.output
    assert "image_id 12345" in res.output
    dup_id = data["images"][0]["id"]
    assert stats["skipped"]["examples"]["duplicate id"].startswith(f"image record {dup_id}")
    data, _ = build()
    data["images"] += [{"id": "abc"}, {"id": "abc"}]  # a string id is named as record_name names it: quoted
    path.write_text(json.dumps(data))
    assert "image record 'abc'" in stats_from_path(path)["skipped"]["examples"]["duplicate id"]


def test_bad_plot_extension_is_refused_before_any_output(tmp_path):
    out = write_dataset(tmp_path / "set")
    res = CliRunner().invoke(group(), ["stats", str(out), "--plot", str(tmp_path / "x.gif")])
    assert res.exit_code == 2 and res.output.startswith("Error:") and ".png or .jpg" in res.output
    assert "annotations" not in res.output and not (tmp_path / "x.gif").exists()


def test_a_plot_or_sheet_that_cannot_be_written_is_refused_before_the_file_is_read(tmp_path, monkeypatch):
    """stats --plot (and preview --out) into a read-only folder, or under a file, read the whole file (a minute for
    COCO train) and only then failed to write; the folder is now checked first, as the extension is."""
    out = write_dataset(tmp_path / "set")
    (tmp_path / "afile").write_text("x")
    for command, option, read in (("stats", "--plot", "stats_from_path"), ("preview", "--out", "preview_report")):
        monkeypatch.setattr(inspect_commands, read, lambda *a, **k: pytest.fail(f"{command} read its input"))
        res = CliRunner().invoke(group(), [command, str(out), option, str(tmp_path / "afile" / "sub" / "x.png")])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert res.output == f"Error: cannot write into {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder\n"
        monkeypatch.setattr(atomic.tempfile, "TemporaryFile", _read_only)  # as on a read-only mount (root ignores modes)
        res = CliRunner().invoke(group(), [command, str(out), option, str(tmp_path / "new" / "x.png")])
        assert res.output == f"Error: cannot write into {tmp_path}: Read-only file system\n", res.output
        monkeypatch.undo()


def _read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def test_y_axis_labels_are_drawn_once_left_of_the_axis():
    left, top, bottom = AXIS_LEFT, 40, PANEL[0] - 40
    gap = 5  # at least this many blank columns between a label and the tick mark (there were 3: they looked joined)
    for vmax in (7, 123, 99999, 1234567):
        panel = bar_panel("t", ["a", "b"], [vmax, vmax // 2], BAR_PASTED)
        ink = np.any(panel < 200, axis=-1)
        ink[:, left - 3:left + 1] = False  # the axis and its tick
        label_rows = ink[top - 12:top + 12]
        # The max label: right of x=0, ending before the tick, in one place (one connected run of columns).
        columns = np.flatnonzero(label_rows[:, :left].any(axis=0))
        assert len(columns) and columns.max() < left - 3 - gap and columns.min() >= 0
        assert np.all(np.diff(columns) <= 4)  # one label, not two overlapping copies side by side
        # Nothing but the bar (no text) right of the axis in those rows.
        right_part = panel[top - 12:top + 12, left + 1:]
        colours = {tuple(c) for c in right_part.reshape(-1, 3)}
        assert colours <= {(255, 255, 255), tuple(BAR_PASTED)}
        zero = np.flatnonzero(ink[bottom - 8:bottom + 8, :left].any(axis=0))
        assert len(zero) and zero.max() < left - 3 - gap
    empty = bar_panel("t", [], [], BAR_PASTED)
    assert not np.any(empty[top - 12:top + 8, :left - 3] < 200)  # no max label on an empty panel


@pytest.mark.parametrize("ratio, why", [("half", "'half' is not a number"), (1.5, "1.5 is outside [0, 1]"),
                                        (-0.2, "-0.2 is outside [0, 1]")])
def test_a_ratio_that_is_no_number_in_0_1_is_skipped_and_reported(tmp_path, ratio, why):
    """A ratio out of range was counted in the first or last bin and pulled the mean (5 showed 'mean 5.000')."""
    data, _ = build()
    data["annotations"][0]["occlusion_ratio"] = ratio
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    stats = stats_from_path(path)
    assert stats["skipped"]["counts"] == {"malformed record": 1}
    assert stats["annotations"] == len(data["annotations"]) - 1 == sum(stats["occlusion_ratio"]["counts"])
    res = CliRunner().invoke(group(), ["stats", str(path)])
    assert res.exit_code == 0 and "skipped 1 record, not counted above:" in res.output
    assert f"1  malformed record, e.g. annotation {data['annotations'][0]['id']} (occlusion_ratio {why})\n" in res.output


@pytest.mark.parametrize("layer, shown", [("2", "'2'"), (1.5, "1.5"), (True, "True"), (None, "None")])
def test_a_layer_that_is_no_integer_is_skipped_and_reported(tmp_path, layer, shown):
    data, _ = build()
    victim = next(a for a in data["annotations"] if a["layer"] == 2)  # pasted: as layer 0 it became background
    victim["layer"] = layer
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    stats = stats_from_path(path)
    assert stats["skipped"]["counts"] == {"malformed record": 1}
    assert stats["layers"] == {0: 4, 1: 3, 2: 2, 3: 3}
    assert (stats["annotations"], stats["pasted"], stats["background"]) == (12, 8, 4)
    res = CliRunner().invoke(group(), ["stats", str(path)])
    assert res.exit_code == 0 and "skipped 1 record, not counted above:" in res.output
    assert f"1  malformed record, e.g. annotation {victim['id']} (layer {shown} is not an integer)\n" in res.output


def test_counts_of_one_are_singular(tmp_path):
    data, _ = build()
    data["images"] = data["images"][:1]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]][:1]
    text = format_stats(dataset_stats(data))
    assert text.splitlines()[0].startswith("1 image, 1 annotation (")
    assert plural(1, "image") == "1 image" and plural(0, "image") == "0 images"
    assert plural(3, "category", "categories") == "3 categories" and plural(1, "category", "categories") == "1 category"


def test_a_category_listed_twice_is_one_row_and_reported(tmp_path):
    data, _ = build()
    first = data["categories"][0]
    data["categories"].append(dict(first, name="again"))
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    stats = stats_from_path(path)
    rows = [row for row in stats["categories"] if row["id"] == first["id"]]
    assert len(rows) == 1 and rows[0]["name"] == first["name"]
    assert stats["skipped"]["counts"] == {"duplicate id": 1}
    res = CliRunner().invoke(group(), ["stats", str(path)])
    assert res.exit_code == 0 and "again" not in res.output, res.output
    assert (f"        1  duplicate id, e.g. category record {first['id']} (later records with this id skipped)\n"
            in res.output)


def test_reading_a_large_file_shows_progress_unless_quiet(tmp_path, monkeypatch):
    """A bar on stderr once reading takes a while (no bar flashes up for a small file), none with --quiet."""
    import occsynth.stats as stats_module
    path = write_dataset(tmp_path / "set") / "annotations.json"
    monkeypatch.setattr(stats_module, "PROGRESS_DELAY", 0)  # as if reading took longer than the delay
    for progress in (True, False):
        err = io.StringIO()
        monkeypatch.setattr("sys.stderr", err)
        assert stats_from_path(path, progress=progress)["annotations"] == 13
        assert ("stats annotations.json" in err.getvalue() and "16 records" in err.getvalue()) == progress, err.getvalue()
    res = CliRunner().invoke(group(), ["stats", str(path), "--quiet"])
    assert res.exit_code == 0 and res.output.startswith("3 images, 13 annotations"), res.output


def test_a_folder_whose_sets_are_in_its_sub_folders_names_them(tmp_path):
    """A pipeline run (synthetic/, cocoocc/, each a set) or any folder of sets, given where one set is expected:
    the message names the sets it holds, not only that annotations.json is missing."""
    run = tmp_path / "run"
    for name in ("synthetic", "cocoocc"):
        (run / name).mkdir(parents=True)
        (run / name / "annotations.json").write_text('{"images": [], "annotations": [], "categories": []}')
    (run / "finetune").mkdir()
    with pytest.raises(OccsynthError) as caught:
        stats_from_path(run)
    assert str(caught.value) == (f"{run / 'annotations.json'}: not found - it holds sets in its folders cocoocc/, "
                                 "synthetic/: give one of them")
    with pytest.raises(OccsynthError, match="give a set folder holding annotations.json"):
        stats_from_path(run / "finetune")


def test_the_first_missing_list_in_coco_order_is_the_one_named(tmp_path):
    """The image records are read whole and the annotations streamed: the categories, read last, are not looked for
    before the annotations are, so a file missing both names its annotations."""
    path = tmp_path / "a.json"
    for data, missing in (({"images": []}, "annotations"), ({"images": [], "annotations": []}, "categories"),
                          ({"annotations": []}, "images")):
        path.write_text(json.dumps(data))
        with pytest.raises(OccsynthError, match=f"missing the '{missing}' list of a COCO instances file"):
            stats_from_path(path, progress=False)
