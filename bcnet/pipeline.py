"""`bcnet train-synthetic`: the paper's recipe in one resumable command.

    synthetic set (occsynth generate)  ->  pretrain  ->  fine-tune on COCO train
    COCO-OCC (occsynth build-cocoocc)  ->  evaluate on val2017 and COCO-OCC  ->  one results table

Every stage writes into its own folder under ``out_dir`` and counts as done when every file it writes
at its end exists (``STAGE_FILES``: a kill between two of them runs the stage again); a rerun skips finished stages
and resumes an interrupted training from its newest checkpoint. A recipe in ``manifests/``
(``pipeline-paper``, ``pipeline-tiny``) names the synthetic recipe and the two schedules.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import manifests
from occsynth.atomic import write_bytes, write_json
from occsynth.coco import (categories_by_id, check_coco_layout, file_hash, named_nowhere, names_no_file,
                           none_found_under, none_readable_under, read_array, read_dataset, read_json)
from occsynth.cocoocc import check_options
from occsynth.errors import OccsynthError, SkipLog, did_you_mean, first_few, key_values, plural, skip_lines
from occsynth.writer import ANNOTATIONS_FILE, changed_settings, what_folder_holds

from .runlock import holds_out_dir

FINAL = "model_final.pt"  # bcnet.checkpoint.FINAL, named here so that this module imports no torch
RUN_FILE = "pipeline-run.json"  # the recipe the run folder is made with
STAGE_FOLDERS = ("synthetic", "pretrain", "finetune", "cocoocc", "evaluation")
PIPELINE_TABLES = ("synthetic", "pretrain", "finetune", "cocoocc")  # what a pipeline recipe may hold
# the files each stage writes at its end, one after the other; the stage is done once all of them exist
STAGE_FILES = {"synthetic": ("annotations.json", "manifest.json"),
               "cocoocc": ("annotations.json", "manifest.json", "report.json"),
               "evaluation": ("results.json", "results.md")}


@dataclasses.dataclass
class PipelineInputs:
    """Where the data of each stage comes from. ``None`` fields are made by the pipeline."""

    coco_train: tuple[Path, Path] | None = None      # (instances_train2017.json, train2017/)
    coco_val: tuple[Path, Path] | None = None        # (instances_val2017.json, val2017/)
    synthetic: tuple[Path, Path] | None = None       # an existing occsynth set (annotations.json, images/)
    cocoocc: Path | None = None                      # an existing COCO-OCC annotations.json (images: val's)
    backbone_weights: Path | None = None             # ImageNet weights for the pretraining's backbone (else the recipe's)


def tiny_inputs(cache_dir: str | os.PathLike | None = None) -> PipelineInputs:
    """The embedded demo source stands in for COCO train and val (CPU, about half a minute)."""
    from occsynth.demo import demo_source
    ann, root = demo_source(cache_dir)
    return PipelineInputs(coco_train=(ann, root), coco_val=(ann, root))


@holds_out_dir()
def run_pipeline(out_dir: str | os.PathLike, inputs: PipelineInputs, *, recipe: str = "pipeline-paper",
                 workers: int = 1, device: str | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) every stage; returns ``{"results": ..., "table": markdown, "stages": {...}}``.

    ``out_dir`` is held for the whole run (:func:`bcnet.runlock.hold_out_dir`): a second pipeline started on it
    stops at once. While a stage runs it also holds the lock that a command writing its folder would take, so that
    such a command is refused meanwhile: pretrain/.lock, finetune/.lock and evaluation/.lock (`bcnet train`,
    `evaluate`), synthetic/parts/.lock (`occsynth generate`); the COCO-OCC stage holds none. No stage is refused by
    this run's hold of ``out_dir``: each lock is its own file."""
    from occsynth.cocoocc import build_cocoocc
    from occsynth.generate import generate

    from .evaluate import evaluate_checkpoint, markdown_table
    from .train import train

    from .device import resolve_device

    out_dir = Path(out_dir)
    check_run_folder(out_dir)
    device = str(resolve_device(device))  # a bad --device fails now, not after generating a set
    plan = manifests.load(recipe, "pipeline")
    for name in sorted(set(plan) - set(PIPELINE_TABLES)):  # a misspelt [coco-occ] would run its stage with defaults
        what = (f"[{name}]: unknown table{did_you_mean(name, PIPELINE_TABLES)}" if isinstance(plan[name], dict)
                else f"{name!r}: a setting outside any table")
        raise OccsynthError(f"pipeline recipe {recipe!r} {what} (a pipeline recipe has the tables "
                            f"{', '.join(f'[{t}]' for t in PIPELINE_TABLES)})")
    for table in ("synthetic", "pretrain", "finetune"):
        if not isinstance(plan.get(table), dict):
            raise OccsynthError(f"pipeline recipe {recipe!r} lacks the [{table}] table "
                                "(see manifests/pipeline-tiny.toml)")
    if not isinstance(plan.get("cocoocc", {}), dict):
        raise OccsynthError(f"pipeline recipe {recipe!r}: 'cocoocc' must be a table ([cocoocc])")
    for table in ("pretrain", "finetune"):
        if "schedule" not in plan[table]:
            raise OccsynthError(f"pipeline recipe {recipe!r}: [{table}] needs a 'schedule' (e.g. schedule-1x)")
    if "recipe" not in plan["synthetic"] and inputs.synthetic is None:
        raise OccsynthError(f"pipeline recipe {recipe!r}: [synthetic] needs a 'recipe' (e.g. synthetic-100k)")
    if inputs.coco_train is None or inputs.coco_val is None:
        raise OccsynthError("the pipeline needs COCO train and val (--coco-train-ann/--coco-train-images, "
                            "--coco-val-ann/--coco-val-images), or --tiny for the embedded demo data")
    # every later stage's settings fail now, naming the recipe and table, not after hours of training
    settings = synthetic_settings(plan, recipe) if inputs.synthetic is None else None
    if inputs.synthetic is not None and not (out_dir / "pretrain" / FINAL).exists():  # else it is never read again
        check_synthetic_set(*inputs.synthetic)
    pretrain_schedule = check_training_stage(plan, recipe, "pretrain", out_dir / "pretrain",
                                             backbone_weights=inputs.backbone_weights)
    finetune_schedule = check_training_stage(plan, recipe, "finetune", out_dir / "finetune",
                                             amodal_masks_of=inputs.coco_train[0])
    check_fine_tuning_start(out_dir, recipe, pretrain_schedule, finetune_schedule)
    if inputs.cocoocc is None:
        check_cocoocc_table(plan, recipe)
    else:
        check_coco_layout(inputs.cocoocc)
    if not (out_dir / "finetune" / FINAL).exists():  # read by the generation, else first by the fine-tuning
        check_images_under(*inputs.coco_train, "--coco-train-ann", "--coco-train-images")
    if not stage_done(out_dir / "evaluation", "evaluation"):  # else found only after all the training
        check_images_under(*inputs.coco_val, "--coco-val-ann", "--coco-val-images")
        if inputs.cocoocc is not None:
            check_images_under(inputs.cocoocc, inputs.coco_val[1], "--cocoocc", "--coco-val-images",
                               "COCO-OCC is a subset of val2017, evaluated on its images")
        builds = inputs.cocoocc is None and not stage_done(out_dir / "cocoocc", "cocoocc")
        if not (out_dir / "finetune" / FINAL).exists():  # else the evaluation's own check comes before any training
            check_evaluation_sets(inputs, recipe, plan.get("cocoocc", {}) if builds else None)
    check_run_recipe(out_dir, recipe, plan, input_identities(out_dir, inputs))
    stages = {}

    # 1. synthetic set
    if inputs.synthetic is None:
        synth_dir = out_dir / "synthetic"
        if stage_done(synth_dir, "synthetic"):
            log(f"[1/5] synthetic set: done ({synth_dir})")
        else:
            log(f"[1/5] synthetic set: generating with recipe {plan['synthetic']['recipe']} into {synth_dir}")
            with said_as_given({"ann_path/--ann": "--coco-train-ann", "image_root/--images": "--coco-train-images"}):
                report = generate(synth_dir, settings, ann_path=inputs.coco_train[0], image_root=inputs.coco_train[1],
                                  workers=workers, cache_dir=cache_dir, progress=progress)
            bank = report.get("bank", {})  # as `occsynth generate` says them: the user's own data may have bad records
            _log_skips(log, bank.get("skipped"), "[1/5] synthetic set: source records skipped (bad input)")
            _log_skips(log, report.get("skipped"), "[1/5] synthetic set: source images skipped while rendering "
                                                   "(counted per use, another was drawn instead)")
            if bank.get("categories_without_cutouts"):
                log(f"[1/5] synthetic set: categories with no complete cutout (skipped): "
                    f"{len(bank['categories_without_cutouts'])}")
        inputs = dataclasses.replace(inputs, synthetic=(synth_dir / "annotations.json", synth_dir / "images"))
        images_said = f"the synthetic set's image folder ({inputs.synthetic[1]})"
    else:
        log(f"[1/5] synthetic set: given ({inputs.synthetic[0]})")
        images_said = f"--synthetic's image folder ({inputs.synthetic[1]})"
    stages["synthetic"] = str(inputs.synthetic[0])

    # 2. pretrain on the synthetic set (from ImageNet weights when given: the paper's backbone was pretrained)
    pretrain = plan["pretrain"]
    if inputs.backbone_weights is not None:
        pretrain = {**pretrain, "backbone_weights": str(inputs.backbone_weights)}
    pretrained = _train_stage("[2/5] pretrain", out_dir / "pretrain", inputs.synthetic, pretrain, None,
                              train, device, progress, log, {"image_root/--images": images_said})
    stages["pretrain"] = str(pretrained)

    # 3. fine-tune on COCO train
    finetuned = _train_stage("[3/5] fine-tune", out_dir / "finetune", inputs.coco_train, plan["finetune"],
                             pretrained, train, device, progress, log, {"image_root/--images": "--coco-train-images"})
    stages["finetune"] = str(finetuned)

    # 4. COCO-OCC
    if inputs.cocoocc is None:
        occ_dir = out_dir / "cocoocc"
        if stage_done(occ_dir, "cocoocc"):
            log(f"[4/5] COCO-OCC: done ({occ_dir})")
        else:
            with said_as_given({"ann_path/--ann": "--coco-val-ann"}):
                report = build_cocoocc(inputs.coco_val[0], occ_dir, progress=progress, **plan.get("cocoocc", {}))
            log(f"[4/5] COCO-OCC: {report['counts']['images']} of {plural(report['counts']['source_images'], 'image')} "
                f"-> {occ_dir}")
            _log_skips(log, report.get("skipped"), "[4/5] COCO-OCC: skipped bad input")
        inputs = dataclasses.replace(inputs, cocoocc=occ_dir / "annotations.json")
    else:
        log(f"[4/5] COCO-OCC: given ({inputs.cocoocc})")
    stages["cocoocc"] = str(inputs.cocoocc)

    # 5. evaluate
    eval_dir = out_dir / "evaluation"
    if stage_done(eval_dir, "evaluation"):
        log(f"[5/5] evaluation: done ({eval_dir})")
        results = read_json(eval_dir / "results.json")
    else:
        log("[5/5] evaluation on val and COCO-OCC")
        sets = {"val": inputs.coco_val, "cocoocc": (inputs.cocoocc, inputs.coco_val[1])}
        with said_as_given({f"sets[{name!r}][1]/--images": "--coco-val-images" for name in sets}):
            results = evaluate_checkpoint(finetuned, sets, eval_dir, device=device, mode="visible", progress=progress)
        for name, entry in results.items():
            _log_skips(log, entry.get("skipped") if isinstance(entry, dict) else None,
                       f"[5/5] evaluation: {name}: skipped bad input")
    table = markdown_table(results)
    if inputs.coco_train == inputs.coco_val:
        table = ("Train and val are the same data here (e.g. --tiny on the demo set): these numbers show that every "
                 "stage runs, not how well the model does.\n\n" + table)
    write_bytes(out_dir / "results.md", table.encode("utf-8"))
    summary = {"recipe": recipe, "stages": stages, "results": results}
    write_json(out_dir / "pipeline.json", summary, indent=2)
    return {**summary, "table": table}


RUN_FOLDER_FILES = (*STAGE_FOLDERS, RUN_FILE, "pipeline.json", "results.md")  # what a run writes at its top level


def check_run_folder(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that is no pipeline run's (no pipeline-run.json or pipeline.json) and holds what no run
    writes: another command's output (`bcnet evaluate`'s, whose results.md the run's table would replace; an occsynth
    set, a `bcnet train` run). Hidden names (the lock, a killed write's temporaries, .DS_Store) are not counted; a
    run's own folder may hold what its user put there."""
    if (out_dir / RUN_FILE).is_file() or (out_dir / "pipeline.json").is_file():
        return
    foreign = sorted(name for name in os.listdir(out_dir) if not name.startswith(".") and name not in RUN_FOLDER_FILES)
    if foreign:
        raise OccsynthError(f"{out_dir} holds files that no train-synthetic run writes ({first_few(foreign)}): the "
                            "output of another command? Choose a new or empty out_dir/--out (a run folder holds only its "
                            f"stage folders, {', '.join(RUN_FOLDER_FILES[len(STAGE_FOLDERS):-1])} and "
                            f"{RUN_FOLDER_FILES[-1]})")


@contextlib.contextmanager
def said_as_given(options: dict[str, str]) -> Iterator[None]:
    """A stage's library call (`occsynth generate`, `bcnet train`, ...) whose error names an argument of its own
    (``options``' keys: ``image_root/--images``, the notebook's keyword and that command's flag) names the
    train-synthetic option the user gave instead (the value: ``--coco-train-images``): its message is changed in
    place, the error and its type kept."""
    try:
        yield
    except OccsynthError as exc:
        said = text = str(exc)
        for own, given in options.items():
            text = text.replace(own, given)
        if text != said:
            exc.args = (text,)
        raise


def _log_skips(log: Callable[[str], None], skipped: dict | None, heading: str) -> None:
    """The bad records a stage skipped, as the stage's own command lists them (:func:`occsynth.errors.skip_lines`)."""
    for line in skip_lines(skipped or {}, heading):
        log(line)


def stage_done(folder: Path, stage: str) -> bool:
    """Whether ``stage`` finished in ``folder``: its first file alone may be from a run killed before the others
    were written (a set without manifest.json, an evaluation without results.md), which the stage then writes."""
    return all((folder / name).is_file() for name in STAGE_FILES[stage])


INPUTS = {"coco_train": "--coco-train-ann", "coco_val": "--coco-val-ann", "synthetic": "--synthetic",
          "cocoocc": "--cocoocc", "backbone_weights": "--backbone-weights"}  # what a run folder records, given by


def input_identities(out_dir: Path, inputs: PipelineInputs) -> dict:
    """Each input's annotations file and its sha256 (``INPUTS``; None for a set the pipeline makes itself). The
    content, not the path, names an input: a moved COCO folder or another --cache-dir's demo set is the same data.
    A file that cannot be read has the sha256 None (a synthetic set deleted once pretraining finished)."""
    def identity(path: Path | None) -> dict | None:
        if path is None:
            return None
        try:
            sha = file_hash(path)
        except OSError:
            sha = None
        return {"annotations": str(path), "sha256": sha}

    synthetic = inputs.synthetic[0] if inputs.synthetic else None
    if synthetic is not None and Path(synthetic).resolve() == (Path(out_dir) / "synthetic" / "annotations.json").resolve():
        synthetic = None  # the set this run folder generated, named by its path
    return {"coco_train": identity(inputs.coco_train and inputs.coco_train[0]),
            "coco_val": identity(inputs.coco_val and inputs.coco_val[0]), "synthetic": identity(synthetic),
            "cocoocc": identity(inputs.cocoocc), "backbone_weights": identity(inputs.backbone_weights)}


def check_run_recipe(out_dir: Path, recipe: str, plan: dict, inputs: dict | None = None) -> None:
    """Record the recipe (and ``inputs``, :func:`input_identities`) a run folder is made with, or refuse one whose
    stages another recipe or other input data made: they would count as done for this one, and their results be
    reported under its name. A folder where no stage has written anything yet (the first stage failed at once)
    takes the new recipe and inputs."""
    path = out_dir / RUN_FILE
    plan = json.loads(json.dumps(plan, default=str))  # as it comes back from the file (a TOML date as text)
    if path.is_file():
        previous = read_json(path)
    elif (out_dir / "pipeline.json").is_file():  # a finished run of a version that kept no record
        previous = {"recipe": read_json(out_dir / "pipeline.json").get("recipe")}
    else:
        previous = None
    if previous is not None and any((out_dir / stage).exists() for stage in STAGE_FOLDERS):
        same = previous.get("plan") == plan if "plan" in previous else previous.get("recipe") == recipe
        if not same and previous.get("recipe") == recipe and isinstance(previous.get("plan"), dict):
            # the same recipe, edited since (more iterations): say what changed
            raise OccsynthError(f"{out_dir} holds a pipeline run made with recipe {recipe!r} with other settings "
                                f"({_changed_plan(previous['plan'], plan)}); rerun it with those settings to resume "
                                "it, or choose another out_dir/--out")
        if not same and previous.get("recipe") == recipe:  # a hand-edited record: nothing to say what changed
            raise OccsynthError(f"{out_dir} holds a pipeline run made with recipe {recipe!r}, but its {RUN_FILE} holds "
                                f"no table of the settings ('plan': {previous.get('plan')!r}) to compare with; choose "
                                "another out_dir/--out")
        if not same:
            raise OccsynthError(f"{out_dir} holds a pipeline run made with recipe {previous.get('recipe')!r}, not "
                                f"{recipe!r}; rerun it with that recipe to resume it, or choose another out_dir/--out")
        if inputs is not None and isinstance(previous.get("inputs"), dict):
            _check_same_inputs(out_dir, previous["inputs"], inputs)
        if path.is_file():
            return
    record = {"recipe": recipe, "plan": plan}
    if inputs is not None:
        record["inputs"] = inputs
    write_json(path, record, indent=2)


def _changed_plan(old: dict, new: dict) -> str:
    """What differs between two plans of a recipe (:func:`occsynth.writer.changed_settings`), or, where no setting
    does, the tables that differ, said whole (one empty in one plan and absent from the other: a `[cocoocc]` with
    nothing under it, taken out)."""
    return changed_settings(old, new) or "; ".join(f"{t}: {old.get(t, '-')} -> {new.get(t, '-')}"
                                                   for t in sorted(set(old) | set(new)) if old.get(t) != new.get(t))


def _check_same_inputs(out_dir: Path, before: dict, now: dict) -> None:
    """Refuse inputs other than those the run folder's stages were made from (``INPUTS``: an input the pipeline made,
    None, against a given one, or two files of other content); an input that cannot be read now is not compared."""
    def said(entry, key: str) -> str:
        if not isinstance(entry, dict):
            return "none given" + ("" if key == "backbone_weights" else " (the pipeline made it)")
        return f"{entry.get('annotations')} (sha256 {str(entry.get('sha256'))[:12]})"

    for key, option in INPUTS.items():
        old, new = before.get(key), now.get(key)
        if isinstance(new, dict) and (new["sha256"] is None or isinstance(old, dict) and old.get("sha256") is None):
            continue
        if (old is None) != (new is None) or (old is not None and old.get("sha256") != new["sha256"]):
            raise OccsynthError(f"{out_dir} holds a pipeline run made from other input data: {option} was "
                                f"{said(old, key)}, now {said(new, key)}; rerun it with the same inputs to resume it, or "
                                "choose another out_dir/--out")


def check_evaluation_sets(inputs: PipelineInputs, recipe: str, cocoocc: dict | None) -> None:
    """Refuse a set the evaluation scores (--coco-val-ann, --cocoocc) that lists none of the categories of
    --coco-train-ann, which the fine-tuned model predicts, or has no object of them to score: found only by the
    evaluation, it stopped the run after all the training. Reads the training set's categories alone.

    ``cocoocc``: the [cocoocc] options of the COCO-OCC this run will build from --coco-val-ann (None: given, or
    built already), whose selection is checked the same way; it needs only boxes, so it is made here, cheaply,
    and again by the stage (the options and --coco-val-ann are bound to the run folder)."""
    from occsynth.cocoocc import DEFAULT_OVERLAP, DEFAULT_THRESHOLD, max_overlap_per_image, reaches, usable_records

    from .data import require_shared_categories
    from .evaluate import require_scorable_file

    train, val = inputs.coco_train[0], inputs.coco_val[0]
    model = sorted(categories_by_id(read_array(train, "categories")))
    for option, ann in (("--coco-val-ann", val), ("--cocoocc", inputs.cocoocc)):
        if ann is not None:
            data = read_dataset(ann)
            require_shared_categories(categories_by_id(data["categories"]), model, f"{option} {ann}",
                                      f"the model is fine-tuned on --coco-train-ann {train}, which lists")
            require_scorable_file(ann, f"{option} {ann}", model, data=data)
    if cocoocc is None:
        return
    overlap, threshold = cocoocc.get("overlap", DEFAULT_OVERLAP), cocoocc.get("threshold", DEFAULT_THRESHOLD)
    data = usable_records(read_dataset(val, finite=True), val, SkipLog())  # as build_cocoocc reads it
    best = max_overlap_per_image(data, overlap, cocoocc.get("count_crowd", False))
    keep = {image_id for image_id, value in best.items() if reaches(value, threshold)}
    where = f"pipeline recipe {recipe!r} [cocoocc]"
    if not keep:
        raise OccsynthError(f"{where}: selects none of the {plural(len(best), 'image')} of --coco-val-ann {val}: no two "
                            f"boxes of an image overlap by {overlap} >= {threshold:g} (the largest overlap is "
                            f"{max(best.values(), default=0.0):.3g}); COCO-OCC would list no images to evaluate: lower "
                            "the threshold, or give a COCO-OCC file with --cocoocc")
    selection = {**data, "images": [im for im in data["images"] if im["id"] in keep],
                 "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    require_scorable_file(val, f"{where}: the COCO-OCC selection of --coco-val-ann {val}", model, data=selection)


def check_images_under(ann: Path, images: Path, option: str, images_option: str, hint: str = "") -> None:
    """Refuse an annotations file none of whose images (sampled from end to end as the bank's check samples them:
    :func:`occsynth.coco.none_found_under`) is under the image folder its stage reads them from: found only then, it
    stopped the run after the stages before (after all the training, for the evaluation's). ``option`` and
    ``images_option`` name the two; ``hint`` says why the images are there."""
    records = [im for im in read_array(ann, "images") if isinstance(im, dict)]
    refused = names_no_file(len(records), records.__getitem__)
    if refused is not None:  # skipped where each record is read: the stage would read no image of the set
        raise OccsynthError(f"{option} {ann}: none of its {plural(len(records), 'image record')} names a file under a "
                            f"folder (e.g. {refused}); {named_nowhere(ann)}")
    paths = none_found_under(images, len(records), records.__getitem__)
    if paths:
        raise OccsynthError(f"{option} {ann}: none of {len(paths)} sampled images is under {images_option} {images} "
                            f"(e.g. {paths[0]}); "
                            + (hint or f"is {images_option} the folder that the file_name entries are relative to?"))
    unreadable = none_readable_under(images, len(records), records.__getitem__)
    if unreadable:
        raise OccsynthError(f"{option} {ann}: none of the {len(unreadable)} sampled images under {images_option} {images} "
                            f"can be read (e.g. {unreadable[0]}); are these the images of this set?")


def synthetic_settings(plan: dict, recipe: str):
    """The [synthetic] table as ``occsynth.generate.RunSettings``; a bad value names the recipe and table.

    The table's settings go on top of its synthetic recipe's [run] (and [synthetic.composite], [synthetic.bank]
    on its [composite], [bank]), so an unknown one is named here, in the table it is in: run_settings, which
    merges them, would call it a [run] setting, and a pipeline recipe has no [run]."""
    from occsynth.bank import BankOptions
    from occsynth.schedule import CompositeOptions
    from occsynth.generate import RunSettings, run_settings

    section = dict(plan["synthetic"])
    for table in ("composite", "bank"):
        if table in section and not isinstance(section[table], dict):
            raise OccsynthError(f"pipeline recipe {recipe!r} [synthetic]: {table!r} must be a table "
                                f"([synthetic.{table}]), got {type(section[table]).__name__}")
    names = {kind: [f.name for f in dataclasses.fields(kind)] for kind in (RunSettings, CompositeOptions, BankOptions)}
    for table, given, known in (("synthetic", section, ["recipe", *names[RunSettings]]),
                                ("synthetic.composite", section.get("composite"), names[CompositeOptions]),
                                ("synthetic.bank", section.get("bank"), names[BankOptions])):
        unknown = sorted(set(given) - set(known)) if isinstance(given, dict) else []
        if unknown:
            raise OccsynthError(f"pipeline recipe {recipe!r} [{table}]: unknown setting {unknown[0]!r}"
                                f"{did_you_mean(unknown[0], known)} (known: {', '.join(known)})")
    try:
        return run_settings(manifests.load(section.pop("recipe"), "synthetic"), **section)
    except OccsynthError as exc:
        raise OccsynthError(f"pipeline recipe {recipe!r} [synthetic]: {exc}") from None


def check_synthetic_set(ann: Path, images: Path) -> None:
    """A given synthetic set must be an ``occsynth generate`` output (annotations.json, images/): checked
    before any stage runs, not when pretraining starts after the other checks passed."""
    ann, images = Path(ann), Path(images)
    folder = ann.parent
    missing = [] if ann.is_file() else [f"no {ann.name}"]
    if not images.is_dir():
        missing.append(f"no {images.name}/ folder" if images.parent == folder else f"no image folder {images}")
    if not ann.is_file() and ann.name == ANNOTATIONS_FILE:
        held = what_folder_holds(folder)
        if held:  # an unfinished run, a shard, or shards merged elsewhere: say which
            raise OccsynthError(f"synthetic set {folder}: no {ann.name} - {held}")
    if missing:  # its content is read by the next stage, pretraining, which names what is wrong in it
        raise OccsynthError(f"synthetic set {folder}: not an `occsynth generate` output ({' and '.join(missing)}); "
                            "give the folder that occsynth generate wrote")


def check_training_table(plan: dict, recipe: str, table: str) -> dict:
    """[pretrain] / [finetune]: its schedule exists and, with the table's settings on top, is valid; returns it."""
    from .train import load_schedule

    where = f"pipeline recipe {recipe!r} [{table}]"
    try:
        return load_schedule(str(plan[table]["schedule"]), {k: v for k, v in plan[table].items() if k != "schedule"},
                             overrides_from=where)
    except OccsynthError as exc:
        if str(exc).startswith(where):  # a setting of the table itself: the error names it already
            raise
        # the schedule file: missing, malformed, or a bad value in it
        raise OccsynthError(f"{where} schedule: {exc}") from None


def check_training_stage(plan: dict, recipe: str, table: str, stage_dir: Path, *,
                         backbone_weights: Path | None = None, amodal_masks_of: Path | None = None) -> dict:
    """[pretrain] / [finetune] (:func:`check_training_table`), and what its trainer checks only when the stage starts,
    hours into the run: ``backbone_weights`` (--backbone-weights, the pretraining's) fit its backbone, the weights
    file exists and, for amodal training, every annotation of ``amodal_masks_of`` (the fine-tuning's COCO train,
    streamed) has its amodal mask: those two not once the training has begun (a resumed one does not read the
    weights again, and its trainer checks the masks within seconds). Nothing once the stage is done.
    Returns the table's schedule (:func:`check_training_table`)."""
    from occsynth.coco import iter_array

    from .checkpoint import latest_checkpoint
    from .data import require_amodal_masks
    from .train import load_schedule

    schedule = table_schedule = check_training_table(plan, recipe, table)
    if (stage_dir / FINAL).exists():
        return table_schedule
    where = f"pipeline recipe {recipe!r} [{table}]"
    if backbone_weights is not None:  # the table's own were checked with it
        try:
            schedule = load_schedule(schedule, {"backbone_weights": str(backbone_weights)},
                                     overrides_from="--backbone-weights")
        except OccsynthError as exc:
            raise OccsynthError(f"{where} with --backbone-weights: {exc}") from None
    weights = schedule.get("backbone_weights")
    if weights and latest_checkpoint(stage_dir) is None and not os.path.isfile(weights):
        raise OccsynthError(f"{where}: backbone weights {weights}: no such file (expected a torchvision "
                            f"{schedule['backbone']} state dict)")
    if schedule["mode"] == "amodal" and amodal_masks_of is not None and latest_checkpoint(stage_dir) is None:
        # a resumed stage's trainer checks this itself within seconds: the whole file is not streamed twice
        try:
            require_amodal_masks({"annotations": iter_array(amodal_masks_of, "annotations")}, amodal_masks_of,
                                 "training")
        except OccsynthError as exc:
            raise OccsynthError(f"{where}: {exc}") from None
    return table_schedule


def check_fine_tuning_start(out_dir: Path, recipe: str, pretrain: dict, finetune: dict) -> None:
    """The fine-tuning starts from the pretraining's weights and, as `bcnet train --init` does (rightly, for a model
    the user chose), loads only the tensors that fit its model: after a pretraining of another model the parts that
    differ (the whole model for another backbone; the mask head, the occlusion-aware part the synthetic set is
    for, for another head) start from scratch. So before any stage runs, refuse [pretrain] and [finetune] schedules
    (``pretrain``, ``finetune``) that build different models (on purpose: `bcnet train --init`), and a checkpoint in
    pretrain/ of a model other than [finetune]'s where the folder records no recipe plan (else
    :func:`check_run_recipe` says which recipe made it, and that recipe's tables passed this check). Nothing once
    the fine-tuning has begun: it continues from its own checkpoint, and refusing saves nothing."""
    from .checkpoint import latest_checkpoint
    from .train import MODEL_KEYS  # what builds another model; backbone_weights only initialises the pretraining

    if (out_dir / "finetune" / FINAL).exists() or latest_checkpoint(out_dir / "finetune") is not None:
        return
    differ = [key for key in MODEL_KEYS if pretrain[key] != finetune[key]]
    if differ:
        raise OccsynthError(f"pipeline recipe {recipe!r}: [pretrain] and [finetune] build different models ([pretrain]: "
                            f"{_model_keys(pretrain, differ)}; [finetune]: {_model_keys(finetune, differ)}): the "
                            "fine-tuning starts from the pretrained weights and would load only the tensors that fit, "
                            f"training the others from scratch; give both tables the same {', '.join(differ)} (to "
                            "fine-tune another model from a pretraining on purpose: bcnet train --init)")
    if (out_dir / RUN_FILE).is_file():  # its plan is compared whole (check_run_recipe)
        return
    final = out_dir / "pretrain" / FINAL  # a finished stage's marker is not read again
    checkpoint = final if final.exists() else latest_checkpoint(out_dir / "pretrain")
    if checkpoint is not None:
        check_pretrained_model(checkpoint, recipe, finetune)


def check_pretrained_model(checkpoint: Path, recipe: str, finetune: dict) -> None:
    """Refuse a pretraining checkpoint (finished, or to be resumed: a resume keeps its model) of a model other than
    [finetune]'s: the folder was made otherwise (`bcnet train` into it, a version that kept no recipe record).
    Only its plain entries are read (the tensors mapped, not loaded); one that cannot be read is left to the stage
    that reads it, which says what is wrong with it."""
    from .checkpoint import load_checkpoint
    from .train import MODEL_KEYS

    try:
        saved = load_checkpoint(checkpoint, mmap=True)
    except OccsynthError:
        return
    built = {**saved["schedule"], **saved.get("model_config", {})}  # model_config: saved since it was kept
    differ = [key for key in MODEL_KEYS if key in built and built[key] != finetune[key]]
    if differ:
        raise OccsynthError(f"{checkpoint}: a model with {_model_keys(built, differ)}, but [finetune] of pipeline "
                            f"recipe {recipe!r} builds {_model_keys(finetune, differ)}; the fine-tuning would start from "
                            f"it and load only the tensors that fit: move {checkpoint.parent} away (it is not this "
                            "recipe's pretraining), or choose another out_dir/--out")


def _model_keys(settings: dict, keys: list[str]) -> str:
    """``mask_head='fcn', backbone='tiny'``: the model settings ``keys`` as a message names them."""
    return key_values({key: repr(settings[key]) for key in keys})


COCOOCC_SETTINGS = tuple(inspect.signature(check_options).parameters)  # what [cocoocc] may set


def check_cocoocc_table(plan: dict, recipe: str) -> None:
    """[cocoocc] (optional): the options ``build_cocoocc`` takes, checked before any stage runs."""
    where = f"pipeline recipe {recipe!r} [cocoocc]"
    options = plan.get("cocoocc", {})
    if not isinstance(options, dict):
        raise OccsynthError(f"pipeline recipe {recipe!r}: 'cocoocc' must be a table ([cocoocc])")
    unknown = sorted(set(options) - set(COCOOCC_SETTINGS))
    if unknown:
        raise OccsynthError(f"{where}: unknown setting {unknown[0]!r}{did_you_mean(unknown[0], COCOOCC_SETTINGS)} "
                            f"(known: {', '.join(COCOOCC_SETTINGS)})")
    try:
        check_options(**options)
    except OccsynthError as exc:
        raise OccsynthError(f"{where}: {exc}") from None


def _train_stage(name: str, stage_dir: Path, data: tuple[Path, Path], section: dict, init: Path | None,
                 train: Callable, device: str | None, progress: bool, log: Callable[[str], None],
                 options: dict[str, str]) -> Path:
    """Train (or resume) one stage into ``stage_dir``; ``options``: its errors' argument names as the user gave them
    (:func:`said_as_given`)."""
    final = stage_dir / FINAL
    if final.exists():
        log(f"{name}: done ({final})")
        return final
    overrides = {k: v for k, v in section.items() if k != "schedule"}
    from .checkpoint import latest_checkpoint
    resume = latest_checkpoint(stage_dir) is not None
    log(f"{name}: schedule {section['schedule']} on {data[0]}" + (" (resuming)" if resume else ""))
    # a resumed stage keeps its saved schedule: its recipe is the run's (check_run_recipe), so nothing to compare
    # backbone weights that are a checkpoint (bcnet.model.CheckpointAsBackboneWeights): the trainer's way to start from
    # one is its init_checkpoint/--init, which the pipeline has not
    options = {**options, "use init_checkpoint/--init to start from it":
               "give ImageNet weights, or none; `bcnet train --init` starts a run from a checkpoint"}
    said: list[dict] = []  # what the trainer skipped indexing its set, said before the training (as `bcnet train` does)

    def report(skipped: dict) -> None:
        said.append(skipped)
        _log_skips(log, skipped, f"{name}: indexing: skipped bad input")

    with said_as_given(options):
        result = train(data[0], data[1], stage_dir, schedule=None if resume else section["schedule"],
                       overrides=overrides or None, resume=resume, init_checkpoint=None if resume else init,
                       device=device, progress=progress, report=report)
    if not final.exists():
        raise OccsynthError(f"{stage_dir}: training ended without {FINAL}")
    if result.get("skipped") not in said[-1:]:  # more found while training (a file that could not be read)
        _log_skips(log, result.get("skipped"), f"{name}: skipped bad input")
    return final
