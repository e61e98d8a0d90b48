"""Recipes and settings: bad TOML, wrong types and unknown tables are one clear error each."""
import pytest
from click.testing import CliRunner

import manifests
from bcnet.pipeline import PipelineInputs, run_pipeline
from cli.occsynth_cli import main as occsynth_main
from occsynth.errors import OccsynthError
from occsynth.generate import RunSettings, run_settings


def test_bundled_recipes_load_and_unknown_names_list_them():
    assert {"synthetic-100k", "synthetic-demo", "cocoocc", "schedule-1x", "pipeline-tiny"} <= set(manifests.names())
    assert manifests.load("synthetic-100k")["run"]["num_images"] == 100_000
    with pytest.raises(OccsynthError, match="bundled: .*synthetic-100k"):
        manifests.load("no-such-recipe")


def test_a_recipe_file_is_read_whatever_its_extension_and_a_bundled_name_wins_over_a_folder(tmp_path,
                                                                                            monkeypatch):
    for name in ("myrecipe", "my.TOML", "r.toml"):
        (tmp_path / name).write_text("[run]\nnum_images = 8\n")
        assert manifests.load(str(tmp_path / name)) == {"run": {"num_images": 8}}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic-100k").mkdir()         # e.g. the set made with that recipe
    (tmp_path / "synthetic-demo").write_text("")  # a file without extension does not hide a bundled recipe
    assert manifests.load("synthetic-100k")["run"]["num_images"] == 100_000
    assert manifests.load("synthetic-demo") == manifests.load(str(manifests.path("synthetic-demo")))
    (tmp_path / "folder").mkdir()
    with pytest.raises(OccsynthError, match="'folder': is a directory, expected a TOML file"):
        manifests.load("folder")


@pytest.mark.parametrize("content, words", [(b"[run\nnum_images = 3", "not valid TOML"),
                                            (b"\xff\xfe[run]", "not UTF-8"),
                                            (b"[run]\nnum_images = 'x'", "num_images must be a whole number"),
                                            (b"[run]\nnum_images = 2.5", "num_images must be a whole number"),
                                            (b"[run]\nseed = -1", "seed must be a whole number"),
                                            (b"[run]\njpeg_quality = 500", "jpeg_quality must be a whole number between 1 and 100"),
                                            (b"run = 3", "'run' must be a table"),
                                            (b"[zzz]\na = 1", "unknown table [zzz]"),
                                            (b"[run]\nnum_imgs = 3", "unknown [run] setting(s): num_imgs (did you mean "
                                                                      "'num_images'?) (known: chunk_size, "),
                                            (b"[compsite]\nblend = 'none'", "unknown table [compsite] (did you mean "
                                                                            "'composite'?)")])
def test_bad_synthetic_recipes_are_one_clear_error(tmp_path, content, words):
    recipe = tmp_path / "bad.toml"
    recipe.write_bytes(content)
    result = CliRunner().invoke(occsynth_main, ["generate", "--recipe", str(recipe), "--out", str(tmp_path / "o"),
                                                "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_run_settings_merge_recipe_and_overrides():
    recipe = {"run": {"num_images": 10, "seed": 4}, "composite": {"pastes": [2, 3]}}
    settings = run_settings(recipe, seed=None, num_images=7, composite={"flip_prob": 0.0})
    assert settings == RunSettings(num_images=7, seed=4, composite=settings.composite)
    assert settings.composite.pastes == (2, 3) and settings.composite.flip_prob == 0.0


def test_pipeline_recipe_without_its_tables_is_refused_before_any_work(tmp_path):
    recipe = tmp_path / "p.toml"
    recipe.write_text("[synthetic]\nrecipe = 'synthetic-demo'\n")
    with pytest.raises(OccsynthError, match=r"lacks the \[pretrain\] table"):
        run_pipeline(tmp_path / "run", PipelineInputs(coco_train=(tmp_path, tmp_path), coco_val=(tmp_path, tmp_path)),
                     recipe=str(recipe), device="cpu", progress=False, log=lambda _: None)
    with pytest.raises(OccsynthError, match="--device bogus"):
        run_pipeline(tmp_path / "run", PipelineInputs(), recipe="pipeline-tiny", device="bogus", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, args, words", [
    (b"num_images = 8", ["--num-images", "8"], "unknown table [num_images]"),
    (b"[run]\npastes = [2, 3]", ["--pastes", "2", "4"], "unknown [run] setting(s): pastes")])
def test_a_recipe_layout_error_names_the_recipe_even_when_an_option_of_that_name_is_typed(tmp_path, content, args,
                                                                                          words):
    """The key misplaced in the recipe bears an option's name; the option typed is not what is wrong."""
    recipe = tmp_path / "bad.toml"
    recipe.write_bytes(content)
    result = CliRunner().invoke(occsynth_main, ["generate", "--recipe", str(recipe), "--out", str(tmp_path / "o"),
                                                "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: recipe {recipe}: ") and words in result.output, result.output
    assert "Invalid value" not in result.output and not (tmp_path / "o").exists()
