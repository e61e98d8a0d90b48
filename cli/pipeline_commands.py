"""`bcnet train-synthetic`: the paper's pipeline in one command."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import cache_dir_option, hint_on_stop, note_capped_workers, quiet_option


@click.command("train-synthetic")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder: one sub-folder per stage, results.md at the end.")
@click.option("--tiny", is_flag=True, help="Run every stage on the embedded demo data on CPU in about a minute (2 cores).")
@click.option("--recipe", help="Pipeline recipe in manifests/ or a TOML path [default: pipeline-paper, or pipeline-tiny with --tiny].")
@click.option("--coco-train-ann", type=click.Path(exists=True, dir_okay=False), help="instances_train2017.json (source of cutouts and the fine-tuning set).")
@click.option("--coco-train-images", type=click.Path(exists=True, file_okay=False), help="train2017/ image folder.")
@click.option("--coco-val-ann", type=click.Path(exists=True, dir_okay=False), help="instances_val2017.json (evaluation; COCO-OCC is built from it).")
@click.option("--coco-val-images", type=click.Path(exists=True, file_okay=False), help="val2017/ image folder.")
@click.option("--synthetic", type=click.Path(exists=True, file_okay=False), help="An existing `occsynth generate` output to pretrain on (else it is generated).")
@click.option("--cocoocc", type=click.Path(exists=True, dir_okay=False), help="An existing COCO-OCC annotations.json (else it is built); its images are read from --coco-val-images, checked before any stage.")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False),
              help="ImageNet weights for the pretraining's backbone: a torchvision state dict (resnet50.pth, see the "
                   "README). Without it, the recipe's: pipeline-paper has none, so the backbone is trained from scratch.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Workers for generating the synthetic set (at most one per CPU core is started).")
@click.option("--device", help="cpu or cuda[:i] [default: cuda when present].")
@cache_dir_option
@quiet_option
def train_synthetic_command(out, tiny, recipe, coco_train_ann, coco_train_images, coco_val_ann, coco_val_images,
                            synthetic, cocoocc, backbone_weights, workers, device, cache_dir, quiet):
    """Generate a synthetic occlusion set, pretrain BCNet on it, fine-tune on COCO train, and
    evaluate on val2017 and COCO-OCC, writing one results table (OUT/results.md).

    Each stage is skipped once every file it writes at its end exists, and a training resumes from
    its newest checkpoint when it was interrupted: rerun the same command after a crash. The run
    folder records its recipe and the sha256 of its input annotation files; another recipe, or other
    data, is refused there. A second run started on the same --out while one runs there stops at
    once, naming the running one (pid and host).
    """
    from bcnet.pipeline import PipelineInputs, run_pipeline, tiny_inputs

    if tiny:
        given = [name for name, value in (("--coco-train-ann", coco_train_ann), ("--coco-train-images", coco_train_images),
                                          ("--coco-val-ann", coco_val_ann), ("--coco-val-images", coco_val_images))
                 if value is not None]
        if given:
            raise click.UsageError(f"--tiny runs on the embedded demo data: drop {', '.join(given)}, or drop --tiny "
                                   "to use them")
        inputs = tiny_inputs(cache_dir)
        device = device or "cpu"
    else:
        pairs = {"--coco-train-ann/--coco-train-images": (coco_train_ann, coco_train_images),
                 "--coco-val-ann/--coco-val-images": (coco_val_ann, coco_val_images)}
        for names, (a, b) in pairs.items():
            if a is None or b is None:
                raise click.UsageError(f"give {names} (or --tiny to run on the embedded demo data)")
        inputs = PipelineInputs(coco_train=(Path(coco_train_ann), Path(coco_train_images)),
                                coco_val=(Path(coco_val_ann), Path(coco_val_images)))
    if synthetic:
        inputs.synthetic = (Path(synthetic) / "annotations.json", Path(synthetic) / "images")
    if cocoocc:
        inputs.cocoocc = Path(cocoocc)
    if backbone_weights:
        inputs.backbone_weights = Path(backbone_weights)
    note_capped_workers(workers)
    with hint_on_stop("finished stages and checkpoints are kept; run the same command again to continue"):
        report = run_pipeline(out, inputs, recipe=recipe or ("pipeline-tiny" if tiny else "pipeline-paper"),
                              workers=workers, device=device, cache_dir=cache_dir, progress=not quiet, log=click.echo)
    click.echo(report["table"])
    click.echo(f"results: {Path(out) / 'results.md'}")
    model = report.get("stages", {}).get("finetune")
    if model:
        click.echo(f"model: {model} (for bcnet evaluate and predict: --checkpoint {Path(out) / 'finetune'})")


COMMANDS = [train_synthetic_command]
