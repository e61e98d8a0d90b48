"""occsynth stats: exact counts on the hand-made set, the streamed file path, the plot and the CLI."""
from __future__ import annotations

import json

import cv2
import numpy as np
from click.testing import CliRunner

from cli import inspect_commands
from cli.common import Group
from occsynth.stats import BAR_PASTED, PANEL, dataset_stats, plot_stats, ratio_bin, stats_from_path
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


def test_plain_coco_counts_every_instance_as_layer_0():
    data, _ = build()
    for ann in data["annotations"]:
        del ann["layer"], ann["occlusion_ratio"]
    data["images"].append({"id": 99, "file_name": "x.png", "height": 4, "width": 4})
    stats = dataset_stats(data)
    assert stats["pasted"] == 0 and stats["background"] == 13
    assert stats["instances_per_image"]["histogram"] == {0: 1, 3: 1, 5: 2}
    assert sum(stats["occlusion_ratio"]["counts"]) == 0


def test_streamed_file_equals_in_memory(tmp_path):
    out = write_dataset(tmp_path / "set")
    data, _ = build()
    assert stats_from_path(out) == dataset_stats(data)
    assert stats_from_path(out / "annotations.json") == dataset_stats(data)


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


def test_cli_text_json_and_plot(tmp_path):
    out = write_dataset(tmp_path / "set")
    runner = CliRunner()
    group = Group(commands={c.name: c for c in inspect_commands.COMMANDS})
    text = runner.invoke(group, ["stats", str(out), "--plot", str(tmp_path / "stats.png")])
    assert text.exit_code == 0, text.output
    assert "3 images, 13 annotations (9 pasted, 4 background)" in text.output
    assert "(1 category without instances not shown)" in text.output
    assert cv2.imread(str(tmp_path / "stats.png")).shape == (2 * PANEL[0], 2 * PANEL[1], 3)
    as_json = runner.invoke(group, ["stats", str(out), "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.output)["layers"] == {"0": 4, "1": 3, "2": 3, "3": 3}
    missing = runner.invoke(group, ["stats", str(tmp_path)])
    assert missing.exit_code == 2 and "annotations.json" in missing.output
