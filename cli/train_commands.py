"""`bcnet train` and `bcnet evaluate`: thin wrappers over bcnet.train.train and bcnet.evaluate."""
from __future__ import annotations

import functools
from pathlib import Path

import click
from click.core import ParameterSource

import manifests
from cli.common import FiniteFloatRange, echo_skips, hint_on_stop, option_names, quiet_option
from occsynth.errors import OccsynthError


def _jitter(ctx, param, value):
    if value is None:
        return None
    try:
        lo, hi = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LO,HI such as 640,800, got {value!r}") from None
    return [lo, hi]


def _steps(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated iterations such as 60000,80000, got {value!r}") from None


@functools.cache
def _bundled_schedule() -> dict:
    return manifests.load("schedule-1x", "schedule")


def _default(key: str) -> str:
    """What schedule-1x (the default --schedule) sets ``key`` to, for an override's --help: " [schedule-1x: V]"
    (the file is read once for all the options)."""
    for table in _bundled_schedule().values():
        if isinstance(table, dict) and key in table:
            value = table[key]
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            return f" [schedule-1x: {shown if shown != '' else 'none'}]"
    return ""


@click.command("train")
@click.option("--ann", "--annotations", "ann_file", required=True, type=click.Path(dir_okay=False),
              help="COCO-format instances JSON (COCO, COCO-OCC, occsynth output).")
@click.option("--images", "image_root", required=True, type=click.Path(file_okay=False),
              help="Image root the file names are relative to.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory: checkpoints, last_checkpoint, log.jsonl. One training at a time: a second one "
                   "started on the same --out stops at once, naming the running one (pid and host).")
@click.option("--schedule", default="schedule-1x", show_default=True,
              help="Bundled schedule (schedule-1x, schedule-tiny) or a TOML file. With --resume the run continues with "
                   "the schedule saved in its checkpoint, the overrides given on top: a --schedule given too is only "
                   "compared with it (a setting it changes is named, not applied; another model is refused).")
@click.option("--resume", is_flag=True,
              help="Continue exactly from the newest checkpoint in --out; overrides given with it (e.g. more "
                   "--iterations, a lower --lr) apply from there on (a run already at --iterations trains "
                   "nothing; fewer --iterations than the checkpoint's is refused).")
@click.option("--init", "init_checkpoint", type=click.Path(),
              help="Start from this checkpoint's weights (fine-tuning; a run folder or its last_checkpoint stands "
                   "for the checkpoint it names). Per-class weights are taken by category "
                   "id: categories it was not trained on start as built; other tensors whose shape differs too. "
                   "Its backbone keeps the frozen BatchNorms it had when pretrained from --backbone-weights. Not read "
                   "with --resume (said): the run continues from its own checkpoint.")
@click.option("--iterations", type=int, help="Override: number of iterations." + _default("iterations"))
@click.option("--batch-size", type=int,
              help="Override: global images per iteration (lr scales with it)." + _default("batch_size"))
@click.option("--lr", "base_lr", type=float,
              help="Override: base lr at the schedule's base batch size." + _default("base_lr"))
@click.option("--momentum", type=float, help="Override: SGD momentum, in [0, 1)." + _default("momentum"))
@click.option("--weight-decay", type=float, help="Override: weight decay, >= 0." + _default("weight_decay"))
@click.option("--steps", callback=_steps, help="Override: lr decay iterations." + _default("steps"))
@click.option("--warmup", "warmup_iterations", type=int,
              help="Override: warm-up iterations." + _default("warmup_iterations"))
@click.option("--checkpoint-every", type=int,
              help="Override: iterations between checkpoints (>= 1; a stopped run resumes from the last one)."
                   + _default("checkpoint_every"))
@click.option("--mode", type=click.Choice(["visible", "amodal"]),
              help="Override: which masks to learn." + _default("mode"))
@click.option("--short", type=int, help="Override: training short side (px)." + _default("short"))
@click.option("--long-max", type=int, help="Override: training long side limit (px)." + _default("long_max"))
@click.option("--scale-jitter", callback=_jitter,
              help="Override: short side drawn from LO,HI per image." + _default("scale_jitter"))
@click.option("--detector", type=click.Choice(["faster-rcnn", "fcos"]),
              help="Override: detector." + _default("detector"))
@click.option("--mask-head", type=click.Choice(["bilayer-gcn", "bilayer-fcn", "gcn", "fcn"]),
              help="Override: mask head." + _default("mask_head"))
@click.option("--head-preset", type=click.Choice(["paper", "original"]),
              help="Override: mask head as in the paper (LayerNorm GCN) or as the released BCNet code."
                   + _default("head_preset"))
@click.option("--backbone", type=click.Choice(["resnet50", "resnet18", "tiny"]),
              help="Override: backbone." + _default("backbone"))
@click.option("--backbone-weights", type=click.Path(dir_okay=False),
              help="Override: local backbone weights file (default: from scratch).")
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]),
              help="Override: mixed precision (CUDA only)." + _default("amp"))
@click.option("--accumulate", type=int,
              help="Override: gradient accumulation steps per iteration." + _default("accumulate"))
@click.option("--workers", type=int,
              help="Override: data loader processes (at most one per CPU core is started)." + _default("workers"))
@click.option("--seed", type=int, help="Override: seed." + _default("seed"))
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available). A CPU run of more than "
                                "50,000 training images (iterations x batch size, e.g. schedule-1x's 90k x 16) is "
                                "warned of: it takes very long there.")
@click.option("--strict", is_flag=True,
              help="Stop at the first bad record instead of skipping it. Every training annotation's masks (their "
                   "encoding, and that they cover a pixel) and box are checked before training starts.")
@quiet_option
def train_command(ann_file, image_root, out_dir, schedule, resume, init_checkpoint, device, strict, quiet,
                  **overrides):
    """Train BCNet; run under `torchrun --nproc_per_node N` for several GPUs."""
    from bcnet.checkpoint import LAST
    from bcnet.ranks import lead_process
    from bcnet.train import train

    with hint_on_stop(f"{out_dir} keeps its checkpoints; run the same command with --resume to continue from the last "
                      "one", only_if=lambda: (Path(out_dir) / LAST).is_file() and lead_process()):
        ctx = click.get_current_context()
        given = ctx.get_parameter_source("schedule") is not ParameterSource.DEFAULT  # a resume compares it
        result = train(ann_file, image_root, out_dir, schedule=schedule if given else None, overrides=overrides,
                       resume=resume, init_checkpoint=init_checkpoint, device=device, progress=not quiet,
                       strict=strict, report=lambda skipped: echo_skips(skipped, "indexing: skipped bad input"),
                       overrides_from=option_names(ctx))
    if result["checkpoint"] is not None:
        last = result["history"][-1] if result["history"] else {}
        click.echo(f"trained to iteration {result['iteration']}; final loss {last.get('loss', float('nan')):.4f}; "
                   f"checkpoint {result['checkpoint']}")
        echo_skips(result["skipped"], "skipped bad input")
    elif result.get("resumed_from") is not None and not result["history"] and lead_process():
        click.echo(f"nothing to train: the run is already at iteration {result['start']} of {result['iteration']} "
                   f"({result['resumed_from']}); pass --iterations N (N > {result['start']}) to continue it")


@click.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A checkpoint written by bcnet train, or its run folder or the folder's last_checkpoint "
                   "(the checkpoint that names).")
@click.option("--ann", "--annotations", "ann_files", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="Annotations JSON of a set to evaluate (repeat for several sets).")
@click.option("--images", "image_roots", required=True, multiple=True, type=click.Path(file_okay=False),
              help="Image root of each --annotations, in the same order.")
@click.option("--name", "names", multiple=True, help="Name of each set (default: set0, set1, ...).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where results.json, results.md and detections_<name>.json go.")
@click.option("--mask-threshold", default=0.5, show_default=True,
              type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
              help="Mask probability above which a pixel is in the predicted mask.")
@click.option("--mode", type=click.Choice(["visible", "amodal"]),
              help="Score against visible (segmentation) or amodal (amodal_segmentation) masks "
                   "(default: the mode the checkpoint was trained with).")
@click.option("--occluded-list", type=click.Path(dir_okay=False),
              help="Occluded COCO object list (occluded_coco.pkl or JSON): adds occluded_recall.")
@click.option("--separated-list", type=click.Path(dir_okay=False),
              help="Separated COCO object list (separated_coco.pkl or JSON): adds separated_recall.")
@click.option("--device", help="cpu, cuda ... (default: cuda when available).")
@click.option("--strict", is_flag=True,
              help="Stop at the first bad record instead of skipping it. Every set's ground-truth masks are checked "
                   "before the first prediction.")
@quiet_option
def evaluate_command(checkpoint, ann_files, image_roots, names, out_dir, mask_threshold, mode, occluded_list,
                     separated_list, device, strict, quiet):
    """COCO box and mask AP (+ mask AP by occlusion level, Occluded/Separated COCO recall) of a checkpoint."""
    from bcnet.evaluate import evaluate_checkpoint, markdown_table

    if len(ann_files) != len(image_roots):
        raise OccsynthError(f"give one --images per --annotations, in the same order (given: "
                            f"{len(ann_files)} --annotations, {len(image_roots)} --images)")
    if names and len(names) != len(ann_files):
        raise OccsynthError(f"give one --name per --annotations, in the same order, or none (given: "
                            f"{len(ann_files)} --annotations, {len(names)} --name)")
    names = names or tuple(f"set{i}" for i in range(len(ann_files)))
    if len(set(names)) != len(names):
        raise OccsynthError(f"set names must differ: {', '.join(names)}")
    sets = {n: (a, i) for n, a, i in zip(names, ann_files, image_roots)}
    lists = {k: v for k, v in (("occluded", occluded_list), ("separated", separated_list)) if v}
    # _evaluate_prepared stages every set's detections and replaces OUT's files only once all are scored
    with hint_on_stop(f"{out_dir} keeps what an earlier evaluation wrote there, unless the stop came as this one's "
                      "results replaced it (its last step); run the same command again to redo it",
                      only_if=lambda: Path(out_dir).is_dir()):  # a stop before OUT was made: no hint
        report = evaluate_checkpoint(checkpoint, sets, out_dir, device=device, mask_threshold=mask_threshold,
                                     mode=mode, occsep_lists=lists, strict=strict, progress=not quiet)
    click.echo(markdown_table(report), nl=False)
    for name, entry in report.items():
        echo_skips(entry.get("skipped") or {}, f"{name}: skipped bad input")
    click.echo(f"results: {Path(out_dir) / 'results.json'}")


COMMANDS: list = [train_command, evaluate_command]
