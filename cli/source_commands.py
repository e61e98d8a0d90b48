"""`occsynth make-demo-source` and `occsynth bank`: the source side of the pipeline."""
from __future__ import annotations

from pathlib import Path

import click

from occsynth.bank import Bank, BankOptions, CutoutPixels, ensure_bank, ensure_cutout_pixels, pixels_report, report
from cli.common import ReportedError, cache_dir_option, quiet_option
from occsynth.demo import default_cache_dir, make_demo_source


@click.command("make-demo-source")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the painted scenes.")
@click.option("--force", is_flag=True, help="Write into a non-empty DIRECTORY (its annotations.json and same-named "
                                            "images are replaced).")
def make_demo_source_command(directory, seed, force):
    """Write the embedded demo source set to DIRECTORY (no download).

    DIRECTORY/annotations.json (COCO instances, all 80 COCO categories) and DIRECTORY/images/
    hold 24 small images painted from scikit-image's sample photos, with exact masks:
    polygons, compressed and uncompressed RLE, a crowd region, objects cut by the border,
    overlapping pairs and complete objects. Use it as --ann/--images of any command.
    """
    target = Path(directory)
    if not force and target.is_dir() and any(target.iterdir()):
        raise ReportedError(f"{directory}: not empty; its annotations.json would be replaced - choose an empty "
                            "folder or pass --force")
    ann, root = make_demo_source(target, seed=seed)
    click.echo(f"wrote {ann} and {root}/")


@click.command("bank")
@click.option("--ann", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Source COCO instances JSON (streamed: instances_train2017.json is fine).")
@cache_dir_option
@click.option("--min-area", default=BankOptions.min_area, show_default=True, type=click.IntRange(min=0),
              help="Fewest mask pixels of a cutout.")
@click.option("--border-margin", default=BankOptions.border_margin, show_default=True, type=click.IntRange(min=0),
              help="A mask pixel closer than this (px) to the image border makes the instance truncated.")
@click.option("--touch-margin", default=BankOptions.touch_margin, show_default=True, type=click.IntRange(min=0),
              help="The mask grown by this many px must not meet another instance or a crowd region.")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Image root of --ann: also store every cutout's pixels (what `occsynth generate` does), "
                   "so generation decodes only background images.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes decoding source images for the pixel store.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record (or unreadable image) instead of skipping it.")
@quiet_option
def bank_command(ann, cache_dir, min_area, border_margin, touch_margin, images, workers, strict, quiet):
    """Build (or reuse) the cutout bank of a source and report what it kept.

    Instances become cutouts only when complete: not crowd, not cut by the image border, not
    touching another instance, and at least --min-area px. The bank is cached by the source
    file's sha256 and these options, so `occsynth generate` with the same options reuses it.
    Prints cutouts kept per category, instances rejected per reason, and bad records skipped
    per reason. With --images, the cutouts' pixels (box + 16 px context, raw RGB) are stored
    too, cached by the bank and the image root's path; images that cannot be read are reported.
    """
    options = BankOptions(min_area=min_area, border_margin=border_margin, touch_margin=touch_margin)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    bank_dir = ensure_bank(ann, cache, options, strict=strict, progress=not quiet)
    click.echo(report(Bank.load(bank_dir).meta))
    click.echo(f"bank: {bank_dir}")
    if images:
        pixels_dir = ensure_cutout_pixels(bank_dir, images, cache, strict=strict, progress=not quiet, workers=workers)
        with CutoutPixels.load(pixels_dir) as pixels:
            click.echo(pixels_report(pixels.meta))
        click.echo(f"cutout pixels: {pixels_dir}")


COMMANDS = [make_demo_source_command, bank_command]
