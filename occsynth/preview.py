"""`occsynth preview`: a contact sheet that shows what the annotations say, for a quick look by eye.

Each tile is one image scaled to fit a square tile (aspect kept, centred on a dark background). Per
instance: the visible mask is tinted; the amodal contour is drawn 1 px wide, solid where the instance
is visible and dashed where it is hidden; colours tell roles apart (an instance with occluders in the
occludee colour, one that only occludes others in the occluder colour, the rest neutral). Plain COCO
files (no amodal masks, e.g. COCO-OCC) get their boxes drawn, and box pairs with IoU >= 0.2 thick.

Only the chosen images' annotations are kept while streaming the JSON, so a preview of a 100k-image
set reads the file once and decodes 16 images.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from . import errors, masks
from .boxes import is_box, pairwise_overlap
from .coco import brief, check_annotation_fields, check_image_record, check_iscrowd, check_pixels, duplicate_detail, \
    id_detail, is_int, iter_array, one_line, read_array, read_image, record_file_name, record_name, resolve_image_path
from .errors import BadRecord, OccsynthError, SkipLog, plural, whole_number
from .masks import finite_number
from .schedule import check_seed
from .writer import IMAGES, set_paths

# RGB colours. Distinct hues so roles read at a glance (and so tests can find them exactly).
OCCLUDEE = (255, 140, 0)      # has occluders
OCCLUDER = (0, 190, 255)      # occludes others, has no occluder itself
NEUTRAL = (60, 220, 60)       # neither
PAIR = (255, 0, 255)          # boxes of an overlapping pair (plain COCO files)
BACKGROUND = (24, 24, 24)     # letterbox around a tile's image
TINT_ALPHA = 0.4
DASH = 3                      # hidden contour: DASH px drawn, DASH px skipped, along the contour
PAIR_IOU = 0.2


def tile_geometry(height: int, width: int, tile: int) -> tuple[float, int, int, int, int]:
    """(scale, y0, x0, scaled height, scaled width) of an image placed centred in a ``tile`` square."""
    scale = min(tile / height, tile / width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    return scale, (tile - nh) // 2, (tile - nw) // 2, nh, nw


def sheet_shape(count: int, columns: int, tile: int) -> tuple[int, int]:
    """(height, width) of a sheet of ``count`` tiles: min(columns, count) columns, as many rows as needed."""
    cols = max(1, min(columns, count))
    return math.ceil(count / cols) * tile, cols * tile


TILE_RANGE = (32, 2048)        # --tile bounds: below 32 px nothing reads, above 2048 one tile is a full image
MAX_IMAGES = 256               # -n bound
MAX_SHEET_PIXELS = 64 << 20    # 64 Mpx (192 MiB RGB): larger sheets are refused before allocating


def check_sheet_options(n: int, columns: int, tile: int) -> None:
    """Refuse sizes that are no whole numbers or cannot make a useful sheet (or would allocate gigabytes)."""
    if not (whole_number(n, 1) and n <= MAX_IMAGES):
        raise OccsynthError(f"preview: -n must be a whole number in 1..{MAX_IMAGES}, got {n!r}")
    if not whole_number(columns, 1):
        raise OccsynthError(f"preview: --columns must be a whole number >= 1, got {columns!r}")
    if not (whole_number(tile, TILE_RANGE[0]) and tile <= TILE_RANGE[1]):
        raise OccsynthError(f"preview: --tile must be a whole number of pixels in {TILE_RANGE[0]}..{TILE_RANGE[1]}, "
                            f"got {tile!r}")


def preview(source: str | os.PathLike, images: str | os.PathLike | None = None, n: int = 16, columns: int = 4,
            seed: int | None = 0, tile: int = 256, labels: bool = True, boxes: bool | None = None,
            pair_iou: float = PAIR_IOU) -> np.ndarray:
    """Contact sheet (RGB uint8) of ``n`` images of a generated set directory or any COCO JSON.

    ``images``: image root for a JSON file (default: ``images/`` beside it if present, else its folder).
    ``seed``: which images (a seeded sample; ``None`` takes the first ``n``). ``boxes``: draw boxes
    (default: only for files without amodal masks). See :func:`preview_report` for the list of
    images that could not be read.
    """
    return preview_report(source, images, n, columns, seed, tile, labels, boxes, pair_iou)[0]


def preview_report(source: str | os.PathLike, images: str | os.PathLike | None = None, n: int = 16,
                   columns: int = 4, seed: int | None = 0, tile: int = 256, labels: bool = True,
                   boxes: bool | None = None, pair_iou: float = PAIR_IOU,
                   log: SkipLog | None = None) -> tuple[np.ndarray, list[dict]]:
    """(sheet, problems): as :func:`preview`, plus one ``{"image_id", "file_name", "reason", "detail"}``
    per image drawn as a red-cross placeholder (missing, unreadable, outside the image root, a record over the pixel
    limit: :func:`occsynth.coco.check_pixels`, ...).

    Bad image records and annotations are left off the sheet and counted in ``log`` by reason. When
    not one image file is found under the image root, the root is wrong: that raises instead of
    drawing a sheet of placeholders. When no image at all could be drawn (all missing, corrupt, too large,
    ...), that raises too, saying why for each reason: a sheet of placeholders only is no preview.
    """
    log = log if log is not None else SkipLog()
    check_sheet_options(n, columns, tile)
    if not (finite_number(pair_iou) and 0 <= pair_iou <= 1):  # NaN would draw no pair thick, without a word
        raise OccsynthError(f"preview: pair_iou must be a box IoU in [0, 1], got {pair_iou!r}")
    if seed is not None:
        check_seed(seed, "preview")
    ann_path, image_root = resolve_source(source, images)
    chosen = select_images(ann_path, n, seed, log)
    height, width = sheet_shape(len(chosen), columns, tile)
    if height * width > MAX_SHEET_PIXELS:
        raise OccsynthError(f"preview: a {width}x{height} sheet is too large (over {MAX_SHEET_PIXELS >> 20} Mpx); "
                            "lower -n or --tile")
    anns = annotations_of(ann_path, {image["id"] for image in chosen}, log)
    cols = width // tile
    sheet = np.empty((height, width, 3), np.uint8)
    sheet[:] = BACKGROUND
    problems: list[dict] = []
    for k, image in enumerate(chosen):
        h, w = image["height"], image["width"]
        image_anns = anns.get(image["id"], [])
        try:
            check_pixels((h, w), record_name("image", image))  # select_images left it for a stand-in tile
            rgb = read_image(resolve_image_path(image_root, image["file_name"]), (h, w))
        except BadRecord as exc:
            detail = f"not under {image_root}" if exc.reason == errors.MISSING_FILE else exc.detail
            problems.append({"image_id": image["id"], "file_name": image["file_name"], "reason": exc.reason,
                             "detail": detail})
            if exc.reason == errors.IMAGE_TOO_LARGE:  # a stand-in at tile size, no masks decoded
                _, _, _, h, w = tile_geometry(h, w, tile)
                image_anns = []
            rgb = missing_image(h, w)
        y, x = (k // cols) * tile, (k % cols) * tile
        sheet[y:y + tile, x:x + tile] = render_tile(rgb, image_anns, tile, boxes=boxes, pair_iou=pair_iou,
                                                    label=str(image["id"]) if labels else None, log=log)
    one = len(chosen) == 1
    if len(problems) == len(chosen) and all(p["reason"] == errors.MISSING_FILE for p in problems):
        what = (f"the image file to preview is not there ({chosen[0]['file_name']})" if one else
                f"none of the {len(chosen)} image files to preview is there (e.g. {chosen[0]['file_name']})")
        raise OccsynthError(f"image folder {image_root}: {what}; give the right folder with --images")
    if len(problems) == len(chosen):  # a sheet of red crosses only: a failure, not a preview
        what = "the image chosen could not" if one else f"none of the {len(chosen)} images chosen could"
        raise OccsynthError(f"{ann_path}: no picture could be drawn: {what} be read ({unreadable_reasons(problems)})")
    return sheet, problems


def unreadable_reasons(problems: list[dict]) -> str:
    """Why the images could not be drawn: each reason with its count and a first example."""
    first: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for p in problems:
        first.setdefault(p["reason"], p)
        counts[p["reason"]] = counts.get(p["reason"], 0) + 1
    return "; ".join(f"{counts[reason]} {reason}, e.g. image {p['image_id']} ({p['file_name']})"
                     + (f": {p['detail']}" if p.get("detail") else "") for reason, p in first.items())


def format_problems(problems: list[dict], limit: int = 10, images_given: bool = False) -> str:
    """One line per unreadable image (the first ``limit``), for the CLI's stderr; a count of the missing files,
    with a hint to give their folder when the image root was guessed (not ``images_given``)."""
    lines = [f"{plural(len(problems), 'image')} drawn as a red-cross placeholder:"]
    for p in problems[:limit]:
        lines.append(f"  image {p['image_id']} ({p['file_name']}): {p['reason']}"
                     + (f" ({p['detail']})" if p.get("detail") else ""))
    if len(problems) > limit:
        lines.append(f"  ... {len(problems) - limit} more")
    missing = sum(p["reason"] == errors.MISSING_FILE for p in problems)
    if missing:
        lines.append(f"{plural(missing, 'image file')} not found"
                     + ("" if images_given else ": if the images are elsewhere, give their folder with --images"))
    return "\n".join(lines)


def resolve_source(source: str | os.PathLike, images: str | os.PathLike | None) -> tuple[Path, Path]:
    """(annotations JSON, image root) of a generated set directory or a COCO JSON file."""
    ann_path, folder = set_paths(source)
    if images:
        root = Path(images)
    elif Path(source).is_dir() or (folder / IMAGES).is_dir():
        root = folder / IMAGES
    else:
        root = folder  # a COCO file beside its images
    if not root.is_dir():
        raise OccsynthError(f"{root}: image directory not found (use --images)")
    return ann_path, root


def image_folder(source: str | os.PathLike, images: str | os.PathLike | None = None) -> Path | None:
    """The set's own image folder (``images/`` of a set or beside a COCO file, or ``images``), or None when the
    image root is the annotations file's folder (which holds other files too)."""
    ann_path, folder = set_paths(source)
    root = Path(images) if images else folder / IMAGES
    return root if root.is_dir() and root.resolve() != ann_path.parent.resolve() else None


def check_outside_images(path: str | os.PathLike, source: str | os.PathLike, what: str,
                         images: str | os.PathLike | None = None) -> None:
    """Refuse a picture written into the set's image folder (it would replace one of the set's images, or add
    a file among them) or, where the images lie beside the annotations file among other files, over any image
    the set names (compared as files, so no other spelling or link gets past)."""
    root = image_folder(source, images)
    out = Path(path).resolve()
    if root is not None and out.is_relative_to(root.resolve()):
        raise OccsynthError(f"{path}: inside the image folder {root} of the set: the {what} would replace or join "
                            "its images - write it elsewhere")
    try:
        ann_path, root = resolve_source(source, images)
        written = os.stat(out)  # the file the picture would replace, whatever the path that leads to it
    except (OccsynthError, OSError):  # no image folder, or nothing at --out yet: no image to replace
        return
    for image in read_array(ann_path, "images"):  # parsed up to the array's end, not the file's
        try:
            name = record_file_name(image) if isinstance(image, dict) else None  # its file_name, or LVIS's coco_url
            found = os.stat(os.path.join(root, name)) if isinstance(name, str) else None
        except (OSError, ValueError, BadRecord):  # a missing image, or a name no path can hold
            continue
        if found is not None and (found.st_dev, found.st_ino) == (written.st_dev, written.st_ino):
            raise OccsynthError(f"{path}: is the image {name} of {ann_path}: the {what} would replace it - write it "
                                "elsewhere")


def select_images(ann_path: Path, n: int, seed: int | None, log: SkipLog | None = None) -> list[dict]:
    """``n`` valid image records: a seeded sample in file order, or the first ``n`` when ``seed`` is None.

    Rejected records go to ``log``, as do later records of an id (the first is used, as every loader does: an
    image is shown once). Raises, saying why, when the file has none (or is no COCO file)."""
    records, rejected, first_rejected = [], 0, None
    seen: set[int] = set()
    for image in read_array(ann_path, "images"):  # parsed up to the array's end: streamed, the rest of the file was too
        try:
            image = check_image_record(image, pixel_limit=False)  # one too large is drawn as a stand-in tile
            if image["id"] in seen:
                raise BadRecord(errors.DUPLICATE_ID, record_name("image", image), duplicate_detail(log or SkipLog()))
            seen.add(image["id"])
            records.append(image)
        except BadRecord as exc:
            rejected, first_rejected = rejected + 1, first_rejected or exc
            if log is not None:
                log.skip(exc)
    if not records:
        why = f" ({rejected} rejected, the first: {first_rejected})" if rejected else ""
        raise OccsynthError(f"{ann_path}: no image records to preview{why}")
    if n >= len(records):
        return records
    if seed is None:
        return records[:n]
    picked = np.sort(np.random.default_rng(seed).choice(len(records), n, replace=False))
    return [records[i] for i in picked]


def annotations_of(ann_path: Path, image_ids: set, log: SkipLog | None = None) -> dict[int, list[dict]]:
    """Annotations of the given images, by image id (the rest of the stream is dropped as it is read).

    Annotations that belong to no image (no object, image_id no integer) go to ``log``. A missing or
    non-list 'annotations' raises (:func:`iter_array`): it would otherwise give a sheet without masks
    and no word why.
    """
    log = log if log is not None else SkipLog()
    out: dict[int, list[dict]] = {}
    for ann in iter_array(ann_path, "annotations"):
        if not isinstance(ann, dict):
            log.skip(BadRecord(errors.MALFORMED_RECORD, f"annotation {brief(ann)}", "not an object"))
        elif not is_int(ann.get("image_id")):  # a list id is no key: checked before the lookup
            log.skip(BadRecord(errors.UNKNOWN_IMAGE, f"annotation {brief(ann.get('id', '?'))}",
                               id_detail("image_id", ann.get("image_id"))))
        elif ann["image_id"] in image_ids:
            out.setdefault(ann["image_id"], []).append(ann)
    return out


def render_tile(rgb: np.ndarray, anns: Sequence[dict], tile: int, boxes: bool | None = None,
                pair_iou: float = PAIR_IOU, label: str | None = None, log: SkipLog | None = None) -> np.ndarray:
    """One ``tile`` x ``tile`` RGB tile: the image scaled to fit, with its annotations drawn.

    Annotations that cannot be drawn are left out and counted in ``log``."""
    h, w = rgb.shape[:2]
    scale, y0, x0, nh, nw = tile_geometry(h, w, tile)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = rgb.copy() if (nh, nw) == (h, w) else cv2.resize(rgb, (nw, nh), interpolation=interp)
    instances = _decode_instances(anns, h, w, (nh, nw), log)
    amodal_mode = any("amodal_segmentation" in a for a in anns)
    if boxes is None:
        boxes = not amodal_mode
    # Tints first, then contours (so no tint covers a contour), lower layers before higher ones.
    for inst in instances:
        m = inst["visible"]
        canvas[m] = (canvas[m] * (1 - TINT_ALPHA) + np.array(inst["colour"]) * TINT_ALPHA).astype(np.uint8)
    for inst in instances:
        draw_contour(canvas, inst["amodal"], inst["visible"], inst["colour"])
    if boxes and instances:
        draw_boxes(canvas, instances, scale, pair_iou)
    out = np.empty((tile, tile, 3), np.uint8)
    out[:] = BACKGROUND
    out[y0:y0 + nh, x0:x0 + nw] = canvas
    if label:
        cv2.putText(out, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(out, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def contour_points(mask: np.ndarray) -> list[np.ndarray]:
    """Border pixels of a mask as (K, 2) arrays of (y, x), in order along each contour (holes included).

    A border pixel is a mask pixel with a 4-neighbour outside the mask; the image edge does not count
    (an object cut by the frame has no contour there).
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    contours, _ = cv2.findContours(padded, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    border = mask & ~_erode4(mask)
    out = []
    for c in contours:
        pts = c.reshape(-1, 2)[:, ::-1] - 1  # (x, y) in the padded frame -> (y, x)
        keep = border[pts[:, 0], pts[:, 1]]
        out.append(np.where(keep[:, None], pts, -1))
    return out


def draw_contour(canvas: np.ndarray, amodal: np.ndarray, visible: np.ndarray, colour: Sequence[int]) -> None:
    """Amodal contour: solid where the pixel is visible, dashed (by arc length) where it is hidden."""
    for pts in contour_points(amodal):
        index = np.arange(len(pts))
        on = pts[:, 0] >= 0
        ys, xs = pts[:, 0].clip(0), pts[:, 1].clip(0)
        shown = on & (visible[ys, xs] | ((index // DASH) % 2 == 0))
        canvas[ys[shown], xs[shown]] = colour


def draw_boxes(canvas: np.ndarray, instances: list[dict], scale: float, pair_iou: float) -> None:
    """Boxes of every instance (1 px, role colour); both boxes of a non-crowd pair with IoU >= pair_iou thick."""
    xywh = np.array([inst["bbox"] for inst in instances], float).reshape(-1, 4)
    crowd = np.array([inst["iscrowd"] for inst in instances], bool)
    hits = pairwise_overlap(xywh, "iou") >= pair_iou
    hits[crowd, :] = hits[:, crowd] = False  # crowd regions are no occluders (as COCO-OCC's default)
    paired = hits.any(axis=1)
    for inst, box, thick in zip(instances, xywh, paired):
        x, y, bw, bh = box * scale
        p0, p1 = (int(round(x)), int(round(y))), (int(round(x + bw)) - 1, int(round(y + bh)) - 1)
        cv2.rectangle(canvas, p0, p1, PAIR if thick else inst["colour"], 3 if thick else 1)


def missing_image(height: int, width: int) -> np.ndarray:
    """Stand-in for an image file that cannot be read: grey with a red cross."""
    rgb = np.full((height, width, 3), 70, np.uint8)
    cv2.line(rgb, (0, 0), (width - 1, height - 1), (200, 0, 0), max(1, min(height, width) // 40))
    cv2.line(rgb, (width - 1, 0), (0, height - 1), (200, 0, 0), max(1, min(height, width) // 40))
    return rgb


def role_colours(anns: Sequence[dict]) -> list[tuple[int, int, int]]:
    """Occludee colour if the instance has occluders, else occluder colour if it occludes one, else neutral."""
    occluding = {j for a in anns for j in (a.get("occluder_ids") or [])}
    return [OCCLUDEE if a.get("occluder_ids") else OCCLUDER if a.get("id") in occluding else NEUTRAL for a in anns]


def check_annotation(ann: dict, height: int, width: int) -> tuple[list[float] | None, bool]:
    """Raise BadRecord unless the fields the sheet draws from can be drawn (the others are not looked at).

    Returns what is drawn from them: the box (None when the annotation has none: its mask's is drawn)
    and whether it is a crowd region."""
    where = check_annotation_fields(ann)
    box = drawable_box(ann["bbox"], height, width) if "bbox" in ann else None
    if "bbox" in ann and box is None:
        raise BadRecord(errors.MALFORMED_RECORD, where, f"bbox {brief(ann['bbox'])} is not 4 finite numbers "
                                                        f"(width, height >= 0) near the {width}x{height} image")
    occluders = ann.get("occluder_ids", [])
    if not isinstance(occluders, list) or not all(map(is_int, occluders)):
        raise BadRecord(errors.MALFORMED_RECORD, where, f"occluder_ids {brief(occluders)} is not a list of ids")
    return box, bool(check_iscrowd(ann, where))


def drawable_box(box: Any, height: int, width: int) -> list[float] | None:
    """A COCO box as 4 floats, or None when it is no box or lies far outside the image (cv2 cannot draw it)."""
    if not is_box(box):
        return None
    x, y, bw, bh = map(float, box)
    if bw < 0 or bh < 0 or x < -width or y < -height or x + bw > 2 * width or y + bh > 2 * height:
        return None
    return [x, y, bw, bh]


def decode_masks(ann: dict, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(visible, amodal) masks of an annotation; BadRecord when one cannot be decoded.

    masks.decode raises DegenerateMask for the cases it checks; a malformed RLE it does not check
    (e.g. a string among uncompressed counts) surfaces as TypeError/ValueError: just as bad a record.
    """
    try:
        visible = masks.decode(ann["segmentation"], height, width)
        amodal = masks.decode(ann["amodal_segmentation"], height, width) if "amodal_segmentation" in ann else visible
    except (TypeError, ValueError, OverflowError) as exc:  # DegenerateMask is a ValueError
        raise BadRecord(errors.DEGENERATE_MASK, f"annotation {brief(ann.get('id', '?'))}", one_line(exc)) from None
    return visible, amodal


def _decode_instances(anns: Sequence[dict], h: int, w: int, size: tuple[int, int],
                      log: SkipLog | None = None) -> list[dict]:
    log = log if log is not None else SkipLog()
    checked = [(ann, drawn) for ann in anns if (drawn := _skip_bad(log, check_annotation, ann, h, w))]
    anns = [ann for ann, _ in checked]
    order = sorted(range(len(anns)), key=lambda i: _layer(anns[i]))
    colours = role_colours(anns)
    out = []
    for i in order:
        ann, (box, crowd) = checked[i]
        decoded = _skip_bad(log, decode_masks, ann, h, w)
        if decoded is None:
            continue
        visible, amodal = decoded
        # in the image's frame: draw_boxes scales boxes to the tile
        bbox = box if box is not None else masks.bbox(visible)
        if (h, w) != size:
            visible, amodal = masks.resize(visible, size), masks.resize(amodal, size)
        out.append({"visible": visible, "amodal": amodal, "colour": colours[i], "bbox": bbox,
                    "iscrowd": crowd})
    return out


def _skip_bad(log: SkipLog, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, or None when it raises BadRecord (which goes to ``log``)."""
    try:
        return check(*args)
    except BadRecord as exc:
        log.skip(exc)
        return None


def _erode4(mask: np.ndarray) -> np.ndarray:
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.erode(mask.astype(np.uint8), cross, borderType=cv2.BORDER_REPLICATE).astype(bool)


def _layer(ann: dict) -> int:
    layer = ann.get("layer", 0)
    return layer if isinstance(layer, int) else 0
