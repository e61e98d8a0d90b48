"""`occsynth build-cocoocc` and `occsynth annotate-occluders`: evaluation subset and occluder labels for real COCO."""
from __future__ import annotations

import click

from cli.common import FiniteFloatRange, echo_occluder_report, echo_skips, quiet_option, skip_lines
from occsynth.annotate import annotate_occluders
from occsynth.errors import first_few, plural
from occsynth.cocoocc import DEFAULT_OVERLAP, DEFAULT_THRESHOLD, PAPER_COUNT, VAL2017_IMAGES, build_cocoocc
from occsynth.occluders import BCNET_IOU_THRESHOLD


@click.command("build-cocoocc")
@click.option("--ann", "--annotations", "ann", required=True, type=click.Path(exists=True, dir_okay=False), help="instances_val2017.json (any COCO instances JSON works).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory: annotations.json, manifest.json, report.json [, images/].")
@click.option("--images", type=click.Path(exists=True, file_okay=False), help="Source image directory: needed for --link/--copy (OUT/images may not be, hold or lie in it); without them, the selected images' files are checked and those missing reported.")
@click.option("--link", is_flag=True, help="Symlink the selected images into OUT/images (relative links: moving the folder holding both keeps them working).")
@click.option("--copy", is_flag=True, help="Copy the selected images into OUT/images.")
@click.option("--overlap", type=click.Choice(["iou", "min"]), default=DEFAULT_OVERLAP, show_default=True, help="Box overlap measure: intersection over union, or over the smaller box.")
@click.option("--threshold", type=FiniteFloatRange(0, 1, min_open=True), default=DEFAULT_THRESHOLD, show_default=True, help="Keep images whose largest pairwise box overlap is at least this.")
@click.option("--count-crowd", is_flag=True, help="Let crowd boxes count (default: they do not).")
@click.option("--strict", is_flag=True, help="Stop at the first bad record (duplicate id, unusable annotation; a missing image file when --images is given) instead of skipping it.")
@click.option("--force", is_flag=True, help="Write into a non-empty --out that build-cocoocc did not write (never one holding --ann).")
@quiet_option
def build_cocoocc_command(ann, out, images, link, copy, overlap, threshold, count_crowd, strict, force, quiet):
    """Build COCO-OCC: the images whose object boxes overlap (BCNet's occlusion benchmark).

    The paper keeps the val2017 images whose boxes overlap by at least 0.2 (1,005 images) without
    saying which overlap ratio; IoU is the default here, and the report lists what the other
    choices give. Evaluate on OUT/annotations.json exactly as on val2017:

    \b
      occsynth build-cocoocc --ann instances_val2017.json --images val2017 --link --out coco-occ
    """
    if link and copy:
        raise click.UsageError("--link and --copy are mutually exclusive: give one of them")
    image_mode = "link" if link else "copy" if copy else None
    report = build_cocoocc(ann, out, image_root=images, image_mode=image_mode, overlap=overlap,
                           threshold=threshold, count_crowd=count_crowd, strict=strict, force=force,
                           progress=not quiet)
    for line in format_report(report):
        click.echo(line)


def format_report(report: dict) -> list[str]:
    """The build-cocoocc summary lines."""
    c, o = report["counts"], report["options"]
    if c["source_images"] == VAL2017_IMAGES:
        paper = f"the paper reports {PAPER_COUNT:,} of val2017's {VAL2017_IMAGES:,}"
    else:
        paper = f"for reference, the paper's COCO-OCC of val2017 has {PAPER_COUNT:,} of {VAL2017_IMAGES:,} images"
    lines = [f"selected {c['images']} of {plural(c['source_images'], 'image')} ({plural(c['annotations'], 'annotation')}) "
             f"with {o['overlap']} >= {o['threshold']:g}{', crowd boxes counted' if o['count_crowd'] else ''}; {paper}"]
    hist = report["histogram"]
    lines.append(f"largest overlap per image: {plural(hist['no_overlap'], 'image')} without any overlapping box pair; "
                 "the others per bin " + ", ".join(
                     f"[{a:g},{b:g}{']' if k == len(hist['counts']) - 1 else ')'}: {n}"
                     for k, (a, b, n) in enumerate(zip(hist["edges"], hist["edges"][1:], hist["counts"]))))
    lines.append("images kept by other choices (threshold: count):")
    for key, row in report["alternatives"].items():
        lines.append(f"  {key:<13} " + "  ".join(f"{t}: {n}" for t, n in row.items()))
    if not c.get("source_has_crowd", True):
        lines.append("  (the input has no crowd boxes: counting them changes nothing)")
    if report.get("dropped_images"):
        dropped = report["dropped_images"]
        lines.append(f"dropped {plural(len(dropped), 'selected image')} whose file could not be placed, "
                     f"with their annotations: {_images_why(dropped)}")
    if report.get("images_without_file"):
        missing = report["images_without_file"]
        one = len(missing) == 1
        lines.append(f"warning: {plural(len(missing), 'selected image')} {'has' if one else 'have'} no usable file "
                     f"under --images (kept in the output, which names but does not place "
                     f"{'it' if one else 'them'}): {_images_why(missing)}")
    if report.get("stale_images"):
        stale = report["stale_images"]
        lines.append(f"note: left in {report['out']}/images: {plural(len(stale), 'image file')} an earlier build placed "
                     f"there and this one does not select (copies are never deleted): {first_few(stale, 10)}; delete "
                     "them by hand if unwanted")
    if not c["selected_images"] and c["source_images"]:  # written as asked, but nothing can be evaluated on it
        if not sum(hist["counts"]):  # no box pair overlaps (e.g. every annotation skipped): no threshold (> 0) helps
            crowd = " (crowd boxes not counted)" if not o["count_crowd"] and c.get("source_has_crowd") else ""
            skipped = (" (some records were skipped: see 'skipped bad input' below)"
                       if any((report["skipped"].get("counts") or {}).values()) else "")
            lines.append(f"warning: no image has two overlapping boxes{crowd}{skipped}: the set is empty whatever "
                         "--threshold (bcnet evaluate refuses it)")
        else:
            lines.append(f"warning: no image reaches {o['overlap']} >= {o['threshold']:g}: the set is empty (bcnet "
                         "evaluate refuses it); lower --threshold (the counts above show what each would keep)")
    lines += skip_lines(report["skipped"], "skipped bad input")
    lines.append(f"wrote {report['out']}/annotations.json, manifest.json, report.json")
    return lines


def _images_why(images: list[dict]) -> str:
    """``id (file_name: reason), ...`` of the first images, then how many more; a name that is no Unicode text (an
    unpaired surrogate JSON spelt) is shown with its escapes, as a terminal cannot print it."""
    return first_few([f"{d['id']} ({str(d['file_name']).encode('utf-8', 'backslashreplace').decode()}: {d['reason']})"
                      for d in images], 10)


@click.command("annotate-occluders")
@click.option("--ann", "--annotations", "ann", required=True, type=click.Path(exists=True, dir_okay=False), help="Input COCO instances JSON.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSON (written atomically).")
@click.option("--threshold", type=FiniteFloatRange(0, 1), default=BCNET_IOU_THRESHOLD, show_default=True, help="Box IoU above which another instance counts as an occluder.")
@click.option("--bcnet-compat", is_flag=True, help="Also write 'bg_object_segmentation' (occluders' masks cut to the box, polygons; empty where they cover 20 pixels or fewer of it, as BCNet's tool), as BCNet's loader reads.")
@click.option("--keep-existing", is_flag=True, help="Keep the occluder_ids an annotation already has (e.g. an occsynth set's exact, depth-ordered ones) instead of replacing them by the box rule; ids that are not other annotations of its image are dropped and counted. --bcnet-compat then draws from them.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record (an annotation that is no object, has no integer id, or whose mask cannot be decoded) instead of leaving it out (skipped and reported by reason); nothing is written.")
@quiet_option
def annotate_occluders_command(ann, out, threshold, bcnet_compat, keep_existing, strict, quiet):
    """Add 'occluder_ids' to every annotation of a COCO file (BCNet's box-IoU rule).

    COCO has no depth order, so an occluder here is any other non-crowd instance whose box IoU
    with this one's exceeds the threshold (0.05, as BCNet's tool): a possible occluder, which may
    in fact be behind. Ids, areas and all other fields are kept. An annotation whose id an earlier
    one already has gets no occluders and occludes nobody (counted as duplicate_ids); one that is no
    object, has no integer id or a mask that cannot be decoded is left out and reported by reason
    (--strict: stops there). Bounded memory: works on the 860k-instance train2017 file.
    """
    report = annotate_occluders(ann, out, threshold=threshold, bcnet_compat=bcnet_compat,
                                keep_existing=keep_existing, progress=not quiet, strict=strict)
    echo_occluder_report(report)
    replaced = report["counts"]["replaced_occluder_ids"]
    if replaced:  # e.g. an occsynth set given where its exact occluders were meant to stay
        click.echo(f"note: {plural(replaced, 'annotation')} already had occluder_ids (an occsynth set's are exact, "
                   "from the depth order); they were replaced by the box rule's guesses in the output (the input "
                   "keeps them) - --keep-existing keeps them")
    echo_skips(report["skipped"], "bad records skipped")


COMMANDS = [build_cocoocc_command, annotate_occluders_command]
