"""`occsynth generate` and `occsynth merge`."""
from __future__ import annotations

import re

import click

import manifests
from cli.common import FiniteFloatRange, cache_dir_option, echo_skips, note_capped_workers, parse_shard, quiet_option
from occsynth.backends import BACKENDS
from occsynth.bank import BankOptions
from occsynth.errors import NoRoom, OccsynthError, plural
from occsynth.generate import MAX_IMAGES, generate, merge, run_settings
from occsynth.schedule import MAX_PASTES, CompositeOptions

_D, _B = CompositeOptions(), BankOptions()  # the defaults, shown in --help


@click.command("generate")
@click.option("--ann", "--annotations", "ann", type=click.Path(exists=True, dir_okay=False), help="Source COCO instances JSON (e.g. instances_train2017.json). Omit both --ann and --images to use the embedded demo source.")
@click.option("--images", type=click.Path(exists=True, file_okay=False), help="Image root the source's file_name entries are relative to (LVIS records, with a coco_url and no file_name: the folder holding its split folders, train2017/ and val2017/). A rerun that resumes --out (or a shard merged with others) must read the same files, which may have moved: the sizes and bytes of 8 source images sampled over the set are compared.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (created; rerun to resume).")
@click.option("--recipe", help="Recipe name in manifests/ (e.g. synthetic-100k) or a TOML path; options below override it.")
@click.option("--num-images", type=click.IntRange(1, MAX_IMAGES), help=f"Images to generate, at most {MAX_IMAGES:,} [default: 100, or the recipe's].")
@click.option("--seed", type=int, help="Seed; the same seed gives byte-identical output [default: 0, or the recipe's].")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Parallel worker processes; at most one per CPU core is started. With --backend dask/ray: chunks rendered at once on the cluster (1: as many as it runs at once; ray queues twice its CPUs); a local ray (no --scheduler) gets this many CPUs, at most one per core.")
@click.option("--shard", help="Render only shard i of n, numbered from 0 (0/8 ... 7/8); join shards with `occsynth merge`.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record instead of skipping it.")
@click.option("--pastes", nargs=2, type=click.IntRange(1, MAX_PASTES), help=f"Min and max pasted objects per image [default: {_D.pastes[0]} {_D.pastes[1]}, or the recipe's].")
@click.option("--occlusion", nargs=2, type=FiniteFloatRange(0, 1, max_open=True), help=f"Occlusion ratio aimed at for the earlier object a paste is placed over, when it is placed (later pastes may hide that object more, up to --max-occlusion) [default: {_D.occlusion[0]} {_D.occlusion[1]}, or the recipe's].")
@click.option("--max-occlusion", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), help=f"No pasted object is hidden beyond this ratio [default: {_D.max_occlusion}, or the recipe's].")
@click.option("--same-class-prob", type=FiniteFloatRange(0, 1), help=f"Probability that occluder and occludee share a class [default: {_D.same_class_prob}, or the recipe's].")
@click.option("--scale", nargs=2, type=FiniteFloatRange(0, 100, min_open=True), help=f"Scale jitter range of a cutout [default: {_D.scale[0]} {_D.scale[1]}, or the recipe's].")
@click.option("--flip-prob", type=FiniteFloatRange(0, 1), help=f"Horizontal flip probability of a cutout [default: {_D.flip_prob}, or the recipe's].")
@click.option("--blend", type=click.Choice(["feather", "none", "gaussian"]), help=f"Edge blending of pasted objects [default: {_D.blend}, or the recipe's].")
@click.option("--min-area", type=click.IntRange(min=0), help=f"Smallest source instance (px) that may become a cutout [default: {_B.min_area}, or the recipe's].")
@click.option("--border-margin", type=click.IntRange(min=0), help=f"Instances closer than this (px) to the image border are not complete [default: {_B.border_margin}, or the recipe's].")
@click.option("--touch-margin", type=click.IntRange(min=0), help=f"Instances closer than this (px) to another instance are not complete [default: {_B.touch_margin}, or the recipe's].")
@click.option("--image-format", type=click.Choice(["jpg", "png"]), help="Output image format [default: jpg, or the recipe's].")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), help="JPEG quality [default: 95, or the recipe's].")
@cache_dir_option
@click.option("--backend", default="loky", show_default=True, type=click.Choice(BACKENDS), help="loky (local processes), threading (one process), or dask / ray (extras) to use a cluster.")
@click.option("--scheduler", help="dask scheduler address (tcp://host:8786) or ray head address for --backend dask/ray; a local cluster when omitted.")
@click.option("--no-cutout-pixels", is_flag=True, help="Do not cache cutout pixels (saves disk; generation decodes each cutout's source image).")
@quiet_option
def generate_command(ann, images, out, recipe, num_images, seed, workers, shard, strict, pastes, occlusion,
                     max_occlusion, same_class_prob, scale, flip_prob, blend, min_area, border_margin,
                     touch_margin, image_format, jpeg_quality, cache_dir, backend, scheduler, no_cutout_pixels, quiet):
    """Generate a synthetic occlusion set: complete instances pasted so that they occlude each other.

    Every pasted object gets its complete (amodal) mask, its visible mask, its layer and the ids of
    the objects on top of it (see docs/FORMAT.md). Interrupted runs continue when the same command
    is run again. Example: the paper's 100k set from COCO train2017:

      occsynth generate --recipe synthetic-100k --ann instances_train2017.json --images train2017 --out occ100k --workers 16
    """
    run = {"num_images": num_images, "seed": seed, "image_format": image_format, "jpeg_quality": jpeg_quality}
    composite = {"pastes": pastes, "occlusion": occlusion, "max_occlusion": max_occlusion,
                 "same_class_prob": same_class_prob, "scale": scale, "flip_prob": flip_prob, "blend": blend}
    bank = {"min_area": min_area, "border_margin": border_margin, "touch_margin": touch_margin}
    recipe_tables = manifests.load(recipe, "synthetic") if recipe else {}
    try:
        settings = run_settings(recipe_tables, composite=composite, bank=bank, **run)
    except OccsynthError as exc:
        raise _named_setting_error(exc, {**run, **composite, **bank}, recipe) from None
    if recipe and recipe != "synthetic-demo" and ann is None and images is None:  # that one is meant for it
        click.echo(f"note: no --ann/--images, so recipe {recipe} runs on the embedded demo source (a few photos), "
                   "not on COCO", err=True)
    if jpeg_quality is not None and settings.image_format != "jpg":
        # left out of the run's settings too, so that a resume with or without it matches
        click.echo(f"note: --jpeg-quality is for jpg output; {settings.image_format} output ignores it", err=True)
        settings = run_settings(recipe_tables, composite=composite, bank=bank, **{**run, "jpeg_quality": None})
    if backend in ("loky", "threading"):  # a cluster's workers are not this machine's cores
        note_capped_workers(workers)
    try:
        report = generate(out, settings, ann_path=ann, image_root=images, workers=workers,
                          shard=parse_shard(shard), strict=strict, cache_dir=cache_dir, backend=backend,
                          backend_address=scheduler, cutout_pixels=not no_cutout_pixels, progress=not quiet)
    except NoRoom as exc:
        raise OccsynthError(f"{exc} (--cache-dir DIR, or --no-cutout-pixels)") from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted: finished chunks are kept; run the same command again to continue", err=True)
        raise
    if report.get("replaced_run"):
        click.echo(f"note: {out} held a run of other settings ({report['replaced_run']}) that had finished no chunk: "
                   "this run took its place", err=True)
    _print_report(report)


def _named_setting_error(exc: OccsynthError, given: dict, recipe: str | None) -> Exception:
    """The library names the settings ('occlusion must be ... <= max_occlusion'): name the options
    among them that the user typed, or else the recipe the values came from. A recipe's layout (an unknown
    table or setting, which may bear an option's name) is the recipe's fault whatever was typed."""
    message = str(exc)
    layout = message.startswith(("recipe: ", "unknown ["))
    typed = [k for k, v in given.items() if v is not None and not layout and re.search(rf"\b{k}\b", message)]
    if typed:
        return click.BadParameter(message, param_hint=" / ".join(f"'--{k.replace('_', '-')}'" for k in typed))
    return OccsynthError(f"recipe {recipe}: {message.removeprefix('recipe: ')}") if recipe else exc


@click.command("merge")
@click.argument("shard_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Merged output directory (may be one of the shard directories).")
@quiet_option
def merge_command(shard_dirs, out, quiet):
    """Join the outputs of `occsynth generate --shard i/n` runs into one set.

    The result is byte-identical to a single unsharded run with the same options. Shards may
    write to one shared directory (then: occsynth merge OUT --out OUT) or to their own; their
    images and parts are moved (not copied) into --out, so an interrupted merge can be rerun.
    """
    report = merge(out, list(shard_dirs), progress=not quiet)
    _print_report(report)
    for folder, n in report.get("left_in_shard_dirs", {}).items():
        click.echo(f"note: {folder} still holds {plural(n, 'chunk')} that {out} already had; they were not moved "
                   "(delete that folder when you no longer need it)")


def _print_resumed(report: dict, own_chunks: int) -> None:
    """Say when a run found chunks done before it (a resumed or finished run), so that a rerun's
    summary is not read as all the work done again."""
    rendered = report["chunks_rendered"]
    if rendered == 0:
        click.echo(f"nothing left to render: {'the' if own_chunks == 1 else 'all'} {plural(own_chunks, 'chunk')} "
                   f"{'was' if own_chunks == 1 else 'were'} done before this run")
    elif rendered < own_chunks:
        click.echo(f"resumed: rendered {rendered:,} of {plural(own_chunks, 'chunk')}; the others were done before this run")


def _print_report(report: dict) -> None:
    if report.get("already_merged"):
        if report["merged_set"] == report["out"]:
            click.echo(f"{report['out']} is already a merged set of these settings: nothing to do for shard "
                       f"{report['shard']}")
        else:
            click.echo(f"the chunks of {report['out']} were merged into {report['merged_set']}, a finished set of "
                       f"these settings: nothing to do for shard {report['shard']}")
        return
    if not report.get("merged"):
        out, total = report["out"], report["chunks_total"]
        if not report.get("shard_chunks", 1):
            click.echo(f"shard {report['shard']} has nothing to do: the set has only {plural(total, 'chunk')}, "
                       "so shards numbered from there on get none")
            return
        _print_resumed(report, report["shard_chunks"])
        click.echo(f"shard {report['shard']}: its {plural(report['shard_chunks'], 'chunk')} {'is' if report['shard_chunks'] == 1 else 'are'} done; {out} holds "
                   f"{report['chunks_done']:,} of the set's {total:,}. When every shard is done, join them: "
                   f"`occsynth merge {out} --out {out}` if they all wrote to this folder, else "
                   f"`occsynth merge SHARD_FOLDER... --out MERGED`")
        return
    if "chunks_rendered" in report:  # generate, not merge
        _print_resumed(report, report["chunks_total"])
    counts = report["counts"]
    click.echo(f"wrote {plural(counts['images'], 'image')}, {plural(counts['annotations'], 'annotation')} "
               f"({counts['pasted']:,} pasted) to {report['out']}")
    if counts.get("pasted"):  # merges of sets from before these were counted have none
        click.echo(f"occluded: {counts['pasted_occluded']:,} of {counts['pasted']:,} pasted objects and "
                   f"{counts['occluded']:,} of {counts['annotations']:,} instances in all have an object on top")
        if counts["occluded"] == 0:
            click.echo("note: nothing is occluded: the options keep the objects apart (e.g. a --scale far "
                       "below 1 makes the pasted objects tiny)")
    per_cat = counts["pasted_per_category"]
    if per_cat:
        values = list(per_cat.values())
        click.echo(f"pasted per category: {plural(len(per_cat), 'category', 'categories')}, min {min(values):,}, max {max(values):,}")
    echo_skips(report.get("bank", {}).get("skipped", {}), "source records skipped (bad input)")
    echo_skips(report["skipped"],
               "source images skipped while rendering (counted per use, another was drawn instead)")
    missing = report.get("bank", {}).get("categories_without_cutouts")
    if missing:
        click.echo(f"categories with no complete cutout (skipped): {len(missing)}")


COMMANDS = [generate_command, merge_command]
