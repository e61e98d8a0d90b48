"""`bcnet bench`: BCNet's train step and inference time over Mask R-CNN's, same run."""
from __future__ import annotations

import json

import click

from cli.common import quiet_option
from occsynth.errors import plural


@click.command("bench")
@click.option("--detector", type=click.Choice(["faster-rcnn", "fcos"]), default="faster-rcnn", show_default=True,
              help="Detector both heads sit on.")
@click.option("--backbone", type=click.Choice(["resnet50", "resnet18", "tiny"]), default="resnet50", show_default=True,
              help="Backbone of the detector (R50-FPN as in the paper; smaller ones for quick checks).")
@click.option("--batch", default=2, show_default=True, type=click.IntRange(min=1), help="Images per timed batch.")
@click.option("--size", default=512, show_default=True, type=click.IntRange(min=64), help="Square image side.")
@click.option("--iters", default=5, show_default=True, type=click.IntRange(min=1), help="Timed iterations per model.")
@click.option("--device", help="cpu or cuda[:i] [default: cuda when present].")
@click.option("--amp", is_flag=True, help="bf16 autocast (meant for a GPU; on a CPU it runs CPU autocast, slower).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON report.")
@quiet_option
def bench_command(detector, backbone, batch, size, iters, device, amp, as_json, quiet):
    """Time a train step and an inference batch of Mask R-CNN's head and BCNet's (same detector,
    batch and images) and print BCNet / Mask R-CNN ratios and parameter counts. Goal: <= 1.10x."""
    from bcnet.bench import bench_heads
    report = bench_heads(detector=detector, backbone=backbone, batch=batch, size=size, iters=iters,
                         device=device, amp=amp, progress=not quiet)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    precision = "bf16 autocast" if report["amp"] == "bf16" else "float32"  # the timings differ by far: say which
    click.echo(f"{report['device']}, {detector} {backbone}, batch {batch} of {size}x{size}, {precision}, "
               f"{plural(iters, 'iteration')}")
    for head, name in (("fcn", "with Mask R-CNN head"), ("bilayer-gcn", "with BCNet head")):
        r = report[head]  # parameters and times are of the whole model
        click.echo(f"{name:20s}: {r['parameters'] / 1e6:6.2f}M params (whole model), train step {r['train_step_s'] * 1e3:8.1f} ms, "
                   f"inference {r['inference_s'] * 1e3:8.1f} ms")
    click.echo(f"BCNet / Mask R-CNN: train step {report['train_step_ratio']:.2f}x, inference "
               f"{report['inference_ratio']:.2f}x, +{report['extra_parameters_m']:.2f}M parameters")
    if not any(report["detections_per_image"]):
        click.echo("note: the detector found nothing in the inference batch (its weights are random), so no mask "
                   "head ran there and the inference ratio compares the detector alone")


COMMANDS = [bench_command]
