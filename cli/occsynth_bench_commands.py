"""`occsynth bench`: speed against the I/O floor, worker scaling, and bank memory at COCO scale."""
from __future__ import annotations

import json

import click

from cli.common import quiet_option
from occsynth.bench import MAX_BANK_ANNOTATIONS, MAX_BANK_IMAGES, bench_bank, bench_generation
from occsynth.errors import plural
from occsynth.generate import MAX_IMAGES


@click.command("bench")
@click.option("--ann", "--annotations", "ann", type=click.Path(exists=True, dir_okay=False), help="Source COCO JSON [default: embedded demo, made COCO-like].")
@click.option("--images", type=click.Path(exists=True, file_okay=False), help="Image root of --ann.")
@click.option("--num-images", default=1200, show_default=True, type=click.IntRange(8, MAX_IMAGES), help="Images generated per measurement (enough that per-worker start-up and the last chunk do not dominate).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Workers for the parallel measurement.")
@click.option("--long-side", default=640, show_default=True, type=click.IntRange(min=0), help="Resize the source to this long side first (COCO-like); 0 keeps it.")
@click.option("--copies", type=click.IntRange(min=1), help="Textured copies of the demo source [default: as many source images as --num-images].")
@click.option("--bank", "bank", is_flag=True, help="Instead: build a bank from a synthetic COCO-train-size file and report peak RSS.")
@click.option("--no-cutout-pixels", is_flag=True, help="Measure generation without the cutout pixel store (decode each cutout's source image).")
@click.option("--bank-images", default=118_287, show_default=True, type=click.IntRange(1, MAX_BANK_IMAGES), help="With --bank: images in the synthetic source file.")
@click.option("--bank-annotations", default=860_001, show_default=True, type=click.IntRange(1, MAX_BANK_ANNOTATIONS), help="With --bank: annotations in the synthetic source file (it takes about 1 KB of --work-dir per annotation, bank included).")
@click.option("--work-dir", type=click.Path(exists=True, file_okay=False), help="Where the source copies and outputs are written [default: $TMPDIR]; e.g. /dev/shm to take the disk out of the measurement.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1), help="Runs of each generation measurement (worker counts taking turns); the best is reported, as other work on a shared machine only slows runs down, and each generation run's ratio to the floor measured in the same round (floor, floor with writes, generation). Every run's images stay in --work-dir until the end (4 x repeat sets of --num-images; 2 x repeat with --workers 1), so that no deletion slows the next measurement: about 200 kB of --work-dir per image and set, checked before the start.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON report.")
@quiet_option
def bench_command(ann, images, num_images, workers, long_side, copies, bank, no_cutout_pixels, bank_images,
                  bank_annotations, work_dir, repeat, as_json, quiet):
    """Measure occsynth against baselines taken in the same run (ratios, not absolute times).

    Generation: images/s of the floor (read + decode each background JPEG + encode it as the
    output JPEG, run in the same chunks and worker pool as generation) and of full generation,
    with one worker (pinned to one CPU where the OS allows: one core) and with --workers; prints
    generation/floor and the worker scaling. It also times the floor writing its images to
    --work-dir as generation does, so that the disk's share shows. The
    default source is the demo set at 640 px with real photo detail added, in as many distinct
    copies as images generated, so that most images and cutouts are decoded fresh, as on COCO.
    With --bank: peak RSS and time of building the cutout bank from a synthetic file of COCO
    train2017's size, against one streaming pass over the same file.
    """
    if bank:
        report = bench_bank(bank_images, bank_annotations, work_dir=work_dir, progress=not quiet)
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        b, p = report["bank"], report["stream_parse"]
        click.echo(f"synthetic source: {plural(report['images'], 'image')}, {plural(report['annotations'], 'annotation')}, "
                   f"{report['json_mib']} MiB JSON")
        click.echo(f"stream parse : {p['seconds']:.1f} s, peak RSS {p['peak_rss_mib']:.0f} MiB")
        click.echo(f"bank build   : {b['seconds']:.1f} s, peak RSS {b['peak_rss_mib']:.0f} MiB "
                   f"(kept {b['kept']}); time ratio to parse {report['time_ratio_to_parse']}")
        click.echo(f"peak RSS within 4 GiB: {'yes' if report['peak_rss_within_4gib'] else 'NO'}")
        return
    if (ann is None) != (images is None):
        raise click.UsageError("give both --ann and --images, or neither")
    report = bench_generation(ann, images, num_images=num_images, workers=workers, long_side=long_side or None,
                              copies=copies, cutout_pixels=not no_cutout_pixels, work_dir=work_dir,
                              repeat=repeat, progress=not quiet)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    fs = report["work_dir_filesystem"]
    click.echo(f"outputs written under {report['work_dir']}" + (f" ({fs})" if fs else ""))
    if report.get("work_dir_ext4_without_journal"):
        click.echo("    ext4 without a journal: for minutes after many files are deleted there, creating a file costs "
                   "several times more (README, Benchmarks); measure in a new top-level folder or minutes later")
    click.echo(f"{plural(report['num_images'], 'image')} of about {report['image_size'][1]}x{report['image_size'][0]} px, "
               f"{plural(report['cpu_count'], 'CPU')}; {plural(report['source_images'], 'source image')}, "
               f"{plural(report['distinct_backgrounds'], 'distinct background')}")
    click.echo(f"mean JPEG bytes: background {report['mean_background_jpeg_bytes'] / 1000:.0f} kB, "
               f"output {report['mean_output_jpeg_bytes'] / 1000:.0f} kB (quality 95)")
    store = report.get("cutout_pixels")
    click.echo("cutout pixel store: " + (f"{plural(store['cutouts'], 'cutout')}, {store['mib']} MiB, built in "
                                         f"{store['build_seconds']} s" if store
                                         else "off (each cutout's source image is decoded)"))
    for n in sorted({1, workers}):
        r = report[f"workers_{n}"]
        pin = " (pinned to one CPU)" if n == 1 and report.get("one_worker_pinned") else ""
        click.echo(f"workers={n}{pin}: floor {r['floor_images_per_s']:.1f} img/s, generate {r['generate_images_per_s']:.1f} "
                   f"img/s, generate/floor {r['ratio_to_floor']:.2f}"
                   + (f" (best of {report['repeat']}; generate runs "
                      f"{', '.join(f'{v:.0f}' for v in r['runs']['generate'])})" if report["repeat"] > 1 else ""))
        click.echo(f"    floor that also writes its images {r['floor_with_writes_images_per_s']:.1f} img/s, "
                   f"generate/that {r['ratio_to_floor_with_writes']:.2f} (the gap between the floors: writing "
                   f"the images on this disk)")
        if report["repeat"] > 1:
            # each run over the floor measured in its round: a floor run that caught the machine in a fast spell
            # lowers the best-of ratio above, and shows here as the one low value
            paired = [g / f for f, g in zip(r["runs"]["floor"], r["runs"]["generate"])]
            click.echo(f"    generate/floor run by run (each run over the floor of its round): "
                       f"{', '.join(f'{v:.2f}' for v in paired)}")
    if workers == 1:
        return
    click.echo(f"scaling {workers} workers / 1 worker: {report['scaling']:.2f}x"
               + (f" (a pure-CPU busy loop scales {report['machine_scaling']:.2f}x on this machine now)"
                  if "machine_scaling" in report else ""))


COMMANDS = [bench_command]
