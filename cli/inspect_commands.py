"""`occsynth validate`, `occsynth preview`, `occsynth stats`: look at a generated (or any COCO) set."""
from __future__ import annotations

import json
import sys

import click

from cli.common import FiniteFloatRange, note_capped_workers, quiet_option
from occsynth.coco import picture_path, write_picture
from occsynth.errors import SkipLog
from occsynth.preview import (MAX_IMAGES, PAIR_IOU, TILE_RANGE, check_outside_images, format_problems,
                              preview_report)
from occsynth.stats import format_stats, plot_stats, stats_from_path, to_json
from occsynth.validate import format_report, validate


@click.command("validate")
@click.argument("out_dir", metavar="DIR|ANNOTATIONS_JSON", type=click.Path(exists=True))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Parallel worker processes (at most one per CPU core is started).")
@click.option("--balance-tolerance", default=0.05, show_default=True, type=FiniteFloatRange(min=0),
              help="Allowed deviation of a category's pasted count from the mean, as a fraction of the mean "
                   "(never tighter than +-2 instances).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@quiet_option
def validate_command(out_dir, workers, balance_tolerance, as_json, quiet):
    """Check a generated set (its folder, or its annotations.json) against the invariants of
    docs/FORMAT.md; exit status 1 if any fails, 2 if the input is not a generated set."""
    note_capped_workers(workers)
    report = validate(out_dir, workers=workers, progress=not quiet, balance_tolerance=balance_tolerance)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    sys.exit(0 if report["ok"] else 1)


@click.command("preview")
@click.argument("source", type=click.Path(exists=True))
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Image root of a COCO JSON [default: images/ beside it, else its folder].")
@click.option("--out", default="sheet.png", show_default=True, type=click.Path(dir_okay=False),
              help="Contact sheet file (.png or .jpg).")
@click.option("-n", "num", default=16, show_default=True, type=click.IntRange(1, MAX_IMAGES), help="Images on the sheet.")
@click.option("--columns", default=4, show_default=True, type=click.IntRange(min=1), help="Tiles per row.")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(*TILE_RANGE), help="Tile size in pixels.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Which images: a seeded random sample.")
@click.option("--first", is_flag=True, help="Take the first N images instead of a random sample.")
@click.option("--pair-iou", default=PAIR_IOU, show_default=True, type=FiniteFloatRange(0, 1),
              help="Box pairs with at least this IoU are drawn thick (files without amodal masks).")
def preview_command(source, images, out, num, columns, tile, seed, first, pair_iou):
    """Contact sheet of a generated set (DIR) or any COCO JSON: visible masks tinted, amodal contours
    solid where visible and dashed where hidden, occludees orange, occluders blue, others green."""
    picture_path(out, "sheet")  # before the work, not after it
    check_outside_images(out, source, "sheet", images)
    log = SkipLog()
    sheet, problems = preview_report(source, images=images, n=num, columns=columns, seed=None if first else seed,
                                     tile=tile, pair_iou=pair_iou, log=log)
    path = write_picture(sheet, out, "sheet", quality=92)
    if problems:
        click.echo(format_problems(problems, images_given=images is not None), err=True)
    if log.total:
        click.echo(log.summary(str(source)), err=True)
    click.echo(f"wrote {path} ({sheet.shape[1]}x{sheet.shape[0]})")


@click.command("stats")
@click.argument("source", type=click.Path(exists=True))
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw the statistics into this image (.png/.jpg).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@quiet_option
def stats_command(source, plot, as_json, quiet):
    """Per-category pasted counts, instances per image, occlusion-ratio histogram and layer depth of a
    generated set (DIR) or any COCO JSON."""
    if plot:
        picture_path(plot, "plot")  # before the (long) pass over the file, not after it
        check_outside_images(plot, source, "plot")
    stats = stats_from_path(source, progress=not quiet)
    click.echo(to_json(stats) if as_json else format_stats(stats))
    if plot:
        path = write_picture(plot_stats(stats), plot, "plot")
        if not as_json:
            click.echo(f"\nwrote {path}")


COMMANDS: list = [validate_command, preview_command, stats_command]
