"""`occsynth convert-kins` and `occsynth convert-cocoa`: amodal datasets into the COCO layout of docs/FORMAT.md."""
from __future__ import annotations

import click

from cli.common import echo_occluder_report, echo_skips, quiet_option
from occsynth.convert import convert_cocoa, convert_kins


@click.command("convert-kins")
@click.option("--ann", "--annotations", "ann", required=True, type=click.Path(exists=True, dir_okay=False), help="KINS JSON (update_train_2020.json / update_test_2020.json).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output COCO JSON.")
@click.option("--min-overlap", type=click.IntRange(min=1), default=1, show_default=True, help="Pixels of an instance's hidden part another's visible mask must cover to count as its occluder.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record (naming it and the file; nothing is written) instead of skipping it.")
@quiet_option
def convert_kins_command(ann, out, min_overlap, strict, quiet):
    """KINS -> COCO with 'segmentation' (visible), 'amodal_segmentation' and 'occluder_ids'.

    Input: KINS's COCO-like JSON ('images', 'categories', 'annotations'), each annotation with
    'a_segm'/'a_bbox' (amodal) and 'i_segm'/'i_bbox' (visible) polygons. KINS gives no depth
    order; an occluder is an instance whose visible mask covers this one's hidden part. A fully
    hidden instance (nothing visible) keeps its amodal mask as an ignore region (iscrowd 1).
    """
    _echo_report(convert_kins(ann, out, min_overlap=min_overlap, progress=not quiet, strict=strict))


@click.command("convert-cocoa")
@click.option("--ann", "--annotations", "ann", required=True, type=click.Path(exists=True, dir_okay=False), help="COCOA JSON (COCO_amodal_train2014.json / _val2014).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output COCO JSON.")
@click.option("--categories-from", type=click.Path(exists=True, dir_okay=False), help="A COCO instances JSON whose categories COCOA region names are matched to (otherwise: 'thing' / 'stuff').")
@click.option("--strict", is_flag=True, help="Stop at the first bad record (naming it and the file; nothing is written) instead of skipping it.")
@quiet_option
def convert_cocoa_command(ann, out, categories_from, strict, quiet):
    """COCOA -> COCO: one annotation per region, occluders from COCOA's depth order.

    Input: COCOA's JSON ('images', 'annotations'), one annotation per image holding a 'regions'
    list; each region has 'segmentation' (amodal polygon), 'visible_mask' (RLE, absent when not
    occluded), 'order' (depth, 1 = front), 'name' and 'isStuff'. Region names are free text; with
    --categories-from they map to COCO categories by name, the rest to a 'thing' or 'stuff' category.
    A fully hidden region (nothing visible) keeps its amodal mask as an ignore region (iscrowd 1).
    Of two records of one image (or with one id), or two regions of a record with the same
    'segmentation', the later is skipped as a duplicate (--strict: stops there).
    """
    _echo_report(convert_cocoa(ann, out, categories_from=categories_from, progress=not quiet, strict=strict))


def _echo_report(report: dict) -> None:
    """The occluder summary, then the bad records skipped: counts by reason, an example of each."""
    echo_occluder_report(report)
    echo_skips(report["skipped"], "bad records skipped")


COMMANDS = [convert_kins_command, convert_cocoa_command]
