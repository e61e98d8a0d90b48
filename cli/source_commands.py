"""`occsynth make-demo-source`, `occsynth bank` and `occsynth cache`: the source side of the pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import click

from occsynth.atomic import check_writable, format_size, make_folder
from occsynth.bank import (Bank, BankOptions, CutoutPixels, ensure_bank, ensure_cutout_pixels,
                           pixels_report, report)
from cli.common import ReportedError, cache_dir_option, note_capped_workers, quiet_option
from occsynth.cache import cache_entries, remove_cache_entries
from occsynth.demo import cache_dir_or_default, make_demo_source


@click.command("make-demo-source")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the painted scenes.")
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
    check_writable(make_folder(target))  # "cannot make folder DIR" / "cannot write into DIR", not a deep image path
    ann, root = make_demo_source(target, seed=seed)
    click.echo(f"wrote {ann} and {root}/")


@click.command("bank")
@click.option("--ann", "--annotations", "ann", required=True, type=click.Path(exists=True, dir_okay=False),
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
              help="Processes decoding source images for the pixel store (at most one per CPU core is started).")
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
    cache = cache_dir_or_default(cache_dir)
    bank_dir = ensure_bank(ann, cache, options, strict=strict, progress=not quiet)
    click.echo(report(Bank.load(bank_dir).meta))
    click.echo(f"bank: {bank_dir}")
    if images:
        note_capped_workers(workers)
        pixels_dir = ensure_cutout_pixels(bank_dir, images, cache, strict=strict, progress=not quiet, workers=workers)
        with CutoutPixels.load(pixels_dir) as pixels:
            click.echo(pixels_report(pixels.meta))
        click.echo(f"cutout pixels: {pixels_dir}")


@click.command("cache")
@cache_dir_option
@click.option("--remove", "names", multiple=True, metavar="NAME", help="Remove this entry (a name from the list); repeatable.")
@click.option("--remove-stale", is_flag=True, help="Remove the entries marked stale: a pixel store whose image root is gone, an entry no run can use (unreadable, damaged, or of another occsynth version), an unfinished build or removal left by a stopped run (a build whose lock no process holds: at once when it ran on this host, else once unchanged for an hour).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the paths removed and the entries left.")
def cache_command(cache_dir, names, remove_stale, as_json):
    """List what the cache holds (cutout banks, cutout pixel stores, the demo source) with sizes, or remove entries.

    A changed source file, bank option or image root builds a new bank or store beside the old one, and
    at COCO scale a pixel store takes gigabytes: old entries stay until removed here. Remove entries
    between runs: a running generation whose bank or store goes may fail (a rerun builds it again).
    """
    cache = cache_dir_or_default(cache_dir)
    removed = remove_cache_entries(cache, list(names)) if names else []
    if remove_stale:
        removed += remove_cache_entries(cache, [e["name"] for e in cache_entries(cache) if e["notes"]])
    entries = cache_entries(cache)
    if as_json:
        click.echo(json.dumps({"removed": [str(p) for p in removed], "entries": entries}, indent=2))
        return
    for path in removed:
        click.echo(f"removed {path}")
    total = sum(e["bytes"] for e in entries)
    click.echo(f"cache {cache}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {format_size(total)}")
    for e in entries:
        line = f"  {e['kind']:<12} {e['name']}  {format_size(e['bytes'])}, built {e['built'].replace('T', ' ')}"
        if e["source"]:
            line += f", from {e['source']}"
        click.echo(line + "".join(f"  [stale: {n}]" for n in e["notes"]))


COMMANDS = [make_demo_source_command, bank_command, cache_command]
