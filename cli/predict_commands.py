"""`bcnet predict`."""
from __future__ import annotations

import os

import click

from cli.common import FiniteFloatRange, hint_on_stop, quiet_option
from occsynth.errors import key_values, plural


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="A checkpoint written by bcnet train, or its run folder or the folder's last_checkpoint "
                   "(the checkpoint that names).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder: results.json, images.json, pictures/.")
@click.option("--score-threshold", default=0.5, show_default=True, type=FiniteFloatRange(0, 1), help="Detections drawn in pictures (results.json keeps all).")
@click.option("--device", help="cpu or cuda[:i] [default: cuda when present] (checked: a missing GPU is an error).")
@click.option("--no-pictures", is_flag=True, help="No pictures: write results.json and images.json only.")
@quiet_option
def predict_command(inputs, checkpoint, out, score_threshold, device, no_pictures, quiet):
    """Run a trained model on images or folders of images.

    Folders are searched recursively for .jpg, .jpeg, .png, .bmp, .tif, .tiff and .webp files
    (not the pictures an earlier run wrote into --out); files that cannot be read are skipped and listed. Writes COCO results JSON and, per image, a
    picture with three panels: detections (masks, boxes, labels), the occludee mask probabilities,
    and the occluder branch's heat map.

    A rerun into the same --out replaces the earlier run's results.json, images.json and pictures. They
    stay as they were until every image is predicted: a run stopped midway (Ctrl-C, kill) leaves them
    untouched; run it again to redo it. images.json is written last: an --out with it holds one whole run.
    One run at a time writes an --out: a second one started on it stops at once, naming the first.
    """
    from bcnet.predict import predict
    # _publish removes images.json first and writes it last: with it, OUT holds one whole run
    with hint_on_stop(f"{out} holds one whole run's outputs only with its images.json (an earlier run's, unless "
                      "the stop came as this one finished); run the same command again to redo it",
                      only_if=lambda: os.path.isdir(out)):  # a stop before OUT was made (the model loading): no hint
        report = predict(checkpoint, inputs, out, score_threshold=score_threshold, device=device,
                         pictures=not no_pictures, progress=not quiet)
    drawn = "" if no_pictures else " (drawn in the pictures)"
    click.echo(f"{plural(report['images'], 'image')}, {plural(report['detections'], 'detection')}, "
               f"{report['above_threshold']} at score "
               f">= {score_threshold}{drawn} -> {report['out']}")
    if report["detections"] and not report["above_threshold"] and not no_pictures:
        click.echo("no detection reached --score-threshold: lower it to see what the model found "
                   "(a briefly trained model scores low)")
    for line in report["skipped"]:
        click.echo(f"skipped: {line}")
    if report.get("skip_counts"):
        click.echo("skipped bad input: " + key_values(report["skip_counts"]))


COMMANDS = [predict_command]
