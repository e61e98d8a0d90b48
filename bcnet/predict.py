"""`bcnet predict`: images or a folder -> COCO results JSON and pictures.

Each picture has three panels side by side: the image with masks, boxes and labels; the
occludee (instance) mask probabilities; and the occluder branch's heat map: where the model
believes something lies on top of each detected object.

Outputs replace an earlier run's in one short step at the end (:func:`_publish`): until every image is predicted
the pictures wait in a staging folder in ``--out`` and the earlier run's files stay as they were, so a run
stopped midway (Ctrl-C, kill) leaves them untouched, and the next run removes its staged pictures.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from occsynth.atomic import locked_spool, make_folder, remove_orphaned_temporaries, write_json
from occsynth.categories import COCO_CATEGORIES
from occsynth.coco import read_image, write_picture
from occsynth.errors import BadRecord, OccsynthError, SkipLog
from occsynth.writer import move_file
from occsynth.masks import finite_number

from .checkpoint import category_names as saved_category_names
from .device import resolve_device
from .evaluate import UNPROCESSABLE_IMAGE, check_model_input, load_model, to_coco_results
from .runlock import hold_out_dir, refuse_other_output

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Files given directly, plus the images inside given folders (sorted, recursive); each file once.

    ``out_dir``: the prediction's output folder. When it lies inside a given folder, the pictures an
    earlier run wrote to its ``pictures/`` are not inputs (a rerun would predict its own pictures, and
    every image id after them would shift); a picture named directly still is."""
    found, folders = [], []
    own = _own_pictures(out_dir)
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not own(p))
            folders.append(str(item))
        elif item.is_file():
            found.append(item)
        else:
            raise OccsynthError(f"{item}: no such image or folder")
    if not found:  # only folders were given, and none holds an image
        raise OccsynthError(f"no image found in {', '.join(folders) or 'the given inputs'}: no file there (sub-folders "
                            f"included) ends in {', '.join(IMAGE_SUFFIXES[:-1])} or {IMAGE_SUFFIXES[-1]}")
    # a file named twice (itself and its folder, a relative and an absolute path) is predicted once; a
    # link to it is another name the user chose, kept. The key is the name in its real folder: folders'
    # links are followed (as the kernel does, so 'link/..' is where the link leads), the file's name is not
    unique: dict[str, Path] = {}
    for path in found:
        absolute = os.path.join(os.getcwd(), path)  # not abspath: it would collapse 'link/..' as text
        unique.setdefault(os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute)),
                          path)
    return list(unique.values())


PICTURE_PATTERN = re.compile(r"\d{6,}-.*\.png")  # picture_name's
PICTURES = "pictures"
RESULTS_FILE = "results.json"
IMAGES_FILE = "images.json"  # written last: a folder with it holds one whole run's outputs
STAGING_PREFIX = ".predict-"  # + random: a staging folder in --out, for a run's pictures until it is done


def _own_pictures(out_dir: str | os.PathLike | None) -> Callable[[Path], bool]:
    """Whether a file is a picture predict writes into ``out_dir``: in its ``pictures/`` or in the staging folder a
    killed run left there (folders resolved, as links lead)."""
    if out_dir is None:
        return lambda path: False
    out = os.path.realpath(out_dir)
    pictures = os.path.join(out, PICTURES)

    def own(path: Path) -> bool:
        folder = os.path.realpath(path.parent)
        return PICTURE_PATTERN.fullmatch(path.name) is not None and (
            folder == pictures or (os.path.dirname(folder) == out
                                   and os.path.basename(folder).startswith(STAGING_PREFIX)))
    return own


def picture_name(image: dict) -> str:
    """The picture file of an ``images.json`` record: ``<id, 6 digits>-<file stem>.png``."""
    return f"{image['id']:06d}-{Path(image['file_name']).stem}.png"


def _colour(k: int) -> tuple[int, int, int]:
    hue = (k * 47) % 180
    rgb = cv2.cvtColor(np.uint8([[[hue, 200, 255]]]), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _heat(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    heat = cv2.applyColorMap((np.clip(probs, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (0.45 * image + 0.55 * heat).astype(np.uint8)


def render_prediction(image: np.ndarray, output: dict, names: dict[int, str], category_ids: Sequence[int],
                      score_threshold: float = 0.5) -> np.ndarray:
    """[detections | occludee mask probabilities | occluder heat map] as one RGB picture."""
    h, w = image.shape[:2]
    keep = (output["scores"] >= score_threshold).nonzero().flatten().tolist()
    overlay = image.astype(np.float32).copy()
    occludee = np.zeros((h, w), np.float32)
    occluder = np.zeros((h, w), np.float32)
    for rank, j in enumerate(keep):
        colour = np.array(_colour(rank), np.float32)
        if "masks" in output:
            prob = output["masks"][j, 0].detach().cpu().numpy()
            occludee = np.maximum(occludee, prob)
            overlay[prob >= 0.5] = 0.5 * overlay[prob >= 0.5] + 0.5 * colour
        if "occluder_masks" in output:
            occluder = np.maximum(occluder, output["occluder_masks"][j, 0].detach().cpu().numpy())
    overlay = overlay.astype(np.uint8)
    for rank, j in enumerate(keep):
        x0, y0, x1, y1 = (int(round(float(v))) for v in output["boxes"][j])
        colour = _colour(rank)
        cv2.rectangle(overlay, (x0, y0), (x1, y1), colour, 1)
        label = int(output["labels"][j])
        cat = category_ids[label - 1] if 0 < label <= len(category_ids) else label
        text = f"{names.get(cat, str(cat))} {float(output['scores'][j]):.2f}"
        cv2.putText(overlay, text, (x0, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    panels = [overlay, _heat(image, occludee), _heat(image, occluder)]
    for panel, title in zip(panels, PANEL_TITLES):
        _title(panel, title)
    return np.concatenate(panels, axis=1)


PANEL_TITLES = ("detections", "occludee mask", "occluder heat map")
TITLE_MIN_SIZE = (48, 96)  # (height, width): smaller panels get no title, it would hide most of them


def _title(panel: np.ndarray, text: str) -> None:
    """Small white-on-black-outline caption in the panel's top-left corner (rows 0..~11; ~14 in OpenCV 4), in place."""
    h, w = panel.shape[:2]
    if h < TITLE_MIN_SIZE[0] or w < TITLE_MIN_SIZE[1]:
        return
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(panel, text, (3, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.33, colour, thickness, cv2.LINE_AA)


def predict(checkpoint: str | os.PathLike, inputs: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
            score_threshold: float = 0.5, device: str | torch.device | None = None, pictures: bool = True,
            category_names: dict[int, str] | None = None, progress: bool = True) -> dict:
    """Run a trained model on images; write ``results.json`` (COCO results), ``images.json`` (which
    file each ``image_id`` is) and, with ``pictures``, one PNG per image under ``out_dir/pictures``.

    ``inputs``: an image file or folder, or a list of them. ``checkpoint``: a checkpoint file, or a run folder
    (or its last_checkpoint) standing for the checkpoint it names. ``score_threshold``: detections at or above it
    are drawn and counted in ``above_threshold`` (all go to ``results.json``). ``device``: None (the default)
    is CUDA when present, as for :func:`bcnet.evaluate.evaluate_checkpoint`, :func:`bcnet.train.train` and the
    CLI's ``--device``.
    ``category_names`` (``{id: name}``) labels the pictures; by default the names the checkpoint was trained
    with (COCO's for a checkpoint saved before they were kept).

    Returns ``{"images", "detections", "above_threshold", "skipped", "skip_counts", "out"}`` (counts, the skipped
    files' lines, and ``out_dir`` as a string).

    Files that cannot be decoded or hold more than :data:`occsynth.masks.MAX_IMAGE_PIXELS` pixels ("image too
    large", as every reader of images and image records says: :func:`occsynth.coco.check_pixels`), and images the
    model cannot process (an aspect ratio so extreme that its resize leaves a side under one pixel, or a model
    failure on that image), are skipped with their reason: ``skipped`` lists one line per file, ``skip_counts``
    counts them by reason. When no input can be processed at all, :class:`OccsynthError` (nothing written).
    """
    if not (finite_number(score_threshold) and 0 <= score_threshold <= 1):  # NaN: no score reaches it, unsaid
        raise OccsynthError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
    if isinstance(inputs, (str, os.PathLike)):  # one path, not a sequence of one-letter paths
        inputs = [inputs]
    refuse_other_output(out_dir, "bcnet predict")
    device = resolve_device(device)
    model, state = load_model(checkpoint, device)
    category_ids = list(state["category_ids"])
    # the training set's names; COCO's for a checkpoint saved before they were kept (its ids were COCO's then)
    names = category_names or saved_category_names(state) or {c["id"]: c["name"] for c in COCO_CATEGORIES}
    paths = list_images(inputs, out_dir)
    # an unwritable --out fails now, not after every image ran; so does one another predict writes
    with hold_out_dir(out_dir) as out_dir:
        return _predict_into(model, category_ids, names, paths, out_dir, score_threshold, device, pictures, progress)


def _predict_into(model, category_ids: list[int], names: dict[int, str], paths: list[Path], out_dir: Path,
                  score_threshold: float, device: torch.device, pictures: bool, progress: bool) -> dict:
    """Predict every image, its picture into a staging folder, then put the outputs in place (:func:`_publish`)."""
    remove_orphaned_temporaries(out_dir / RESULTS_FILE, STAGING_PREFIX)  # what a killed run left: its staged pictures
    # and its pictures' copies into a pictures/ on another disk (move_file), killed midway: no rename removes them
    remove_orphaned_temporaries(out_dir / PICTURES, names=PICTURE_PATTERN)
    remove_orphaned_temporaries(out_dir / IMAGES_FILE)
    with locked_spool(out_dir, STAGING_PREFIX) as staging:  # removed at the end, on a failure or Ctrl-C too
        results, images, skips, skipped = _predict_images(model, category_ids, names, paths,
                                                          staging if pictures else None, score_threshold, device,
                                                          progress)
        _publish(out_dir, staging, results, images, pictures)
    return {"images": len(images), "detections": len(results),
            "above_threshold": sum(r["score"] >= score_threshold for r in results), "skipped": skipped,
            "skip_counts": dict(sorted(skips.counts.items())), "out": str(out_dir)}


def _predict_images(model, category_ids: list[int], names: dict[int, str], paths: list[Path], picture_dir: Path | None,
                    score_threshold: float, device: torch.device, progress: bool
                    ) -> tuple[list[dict], list[dict], SkipLog, list[str]]:
    """(COCO results, image records, skip log, skip lines) of ``paths``; with ``picture_dir``, each image's picture
    is written there. An :class:`OccsynthError` when no image can be processed."""
    results, images, skips, skipped = [], [], SkipLog(), []
    for image_id, path in enumerate(tqdm(paths, desc="predict", unit="img", disable=not progress), start=1):
        try:
            rgb = read_image(path)  # over the pixel limit: refused, as every reader of images refuses it
            check_model_input(model, rgb.shape[:2], f"image file {path}")
            tensor = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).to(device)
            try:
                with torch.no_grad():
                    output = model([tensor])[0]
            except RuntimeError as exc:  # e.g. out of memory on a huge image: skip it, keep going
                detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise BadRecord(UNPROCESSABLE_IMAGE, f"image file {path}", detail) from None
        except BadRecord as exc:
            skips.skip(exc)
            skipped.append(str(exc))
            continue
        images.append({"id": image_id, "file_name": str(path), "height": rgb.shape[0], "width": rgb.shape[1]})
        results += to_coco_results(output, {"image_id": image_id, "orig_size": rgb.shape[:2]}, rgb.shape[:2],
                                   category_ids, mask_threshold=0.5)
        if picture_dir is not None:
            picture = render_prediction(rgb, output, names, category_ids, score_threshold)
            write_picture(picture, picture_dir / picture_name(images[-1]))
    if not images:
        what = "the input image could not" if len(paths) == 1 else f"none of the {len(paths)} input images could"
        raise OccsynthError(f"{what} be processed; first: {skipped[0]}")
    return results, images, skips, skipped


def _publish(out_dir: Path, staging: Path, results: list, images: list[dict], pictures: bool) -> None:
    """Put a finished run's outputs in place of an earlier run's: its results.json and images.json are removed
    first, the staged pictures moved into ``pictures/`` (any other picture predict wrote there removed: those of an
    earlier run, or of one killed here), then results.json and, last, images.json written. Renames and removals
    only, no model work: a kill in between leaves a folder without images.json, which the next run replaces whole."""
    folder = out_dir / PICTURES
    written = {picture_name(im) for im in images} if pictures else set()
    if written:
        make_folder(folder)  # before anything is removed: a folder that cannot be made leaves the earlier run whole
    for name in (IMAGES_FILE, RESULTS_FILE):
        (out_dir / name).unlink(missing_ok=True)
    for name in sorted(written):
        move_file(staging / name, folder / name, locked=True)  # pictures/ may be a link to another disk
    if folder.is_dir():
        for old in folder.iterdir():
            if PICTURE_PATTERN.fullmatch(old.name) and old.name not in written:
                old.unlink(missing_ok=True)
    if not pictures:  # a run without pictures leaves no empty pictures/ behind (one with others' files stays)
        with contextlib.suppress(OSError):
            folder.rmdir()
    write_json(out_dir / RESULTS_FILE, results)
    write_json(out_dir / IMAGES_FILE, images)
