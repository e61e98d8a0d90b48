"""COCO-format instance sets as torch datasets, with the occluder masks BCNet's bilayer head learns.

Any COCO instances JSON + image root works: COCO itself, the COCO-OCC subset, occsynth output.
Each target instance is a non-crowd annotation with a decodable, non-empty visible mask. Its
occluder mask is the union of the visible masks of the instances that occlude it:

- when every target instance of the image carries ``occluder_ids`` (occsynth sets, the output
  of ``occsynth annotate-occluders``), those ids say who occludes it (ids that are not target
  instances of the image - crowd or skipped annotations - are ignored);
- otherwise BCNet's rule for real COCO decides, ``occsynth.occluders.box_overlap_occluders``.

``mode='visible'`` (default) learns the visible masks (``segmentation``); ``mode='amodal'`` learns
the complete masks (``amodal_segmentation``) with their boxes, and refuses a set with a non-crowd
annotation that has none (:func:`require_amodal_masks`). Occluder masks are always unions of
*visible* masks: that is what the image shows on top of the instance.

Categories map to contiguous labels 1..K in category-id order (0 is background); the mapping is
kept on the dataset (``category_ids[label - 1]``) so predictions map back to COCO ids.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import pickle
import signal
import sys
from pathlib import Path
from collections.abc import Sequence as SequenceABC
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from occsynth import coco, errors
from occsynth.coco import brief
from occsynth import masks as mask_ops
from occsynth.boxes import is_box
from occsynth.errors import BadRecord, OccsynthError, SkipLog, plural
from occsynth.occluders import box_overlap_occluders, occluder_masks

MODES = ("visible", "amodal")
MASK_KEYS = {"visible": ("segmentation",), "amodal": ("segmentation", "amodal_segmentation")}  # loaded per mode


def check_mode(mode: str) -> str:
    """``mode`` if it names ground-truth masks (one of :data:`MODES`), else the one error every reader gives."""
    if mode not in MODES:
        raise OccsynthError(f"mask mode must be one of {MODES}, got {mode!r}")
    return mode


class PackedLists(SequenceABC):
    """Lists (one image's annotation records) kept pickled, end to end, in one byte array; item ``i`` is a fresh
    copy of list ``i``.

    The training process forks its loader workers, which share its memory until either side writes to a page. As
    Python objects, COCO train's 860k annotations took 3 GB in the training process, and every worker wrote to
    the pages of those it read (reference counts) and of all of them (its garbage collector's marks): memory grew
    by about 1 GB per worker and epoch. Packed, they take a few hundred MB, and reading them writes to none of
    those pages."""

    def __init__(self, lists: Iterable[list] = ()):
        self._bytes = bytearray()
        ends = []
        for items in lists:
            self._bytes += pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
            ends.append(len(self._bytes))
        self._ends = np.asarray(ends, np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> list:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"PackedLists indices must be integers, not {type(index).__name__}")
        index = range(len(self._ends))[index]  # negative indices, and IndexError past the end
        start = int(self._ends[index - 1]) if index else 0
        return pickle.loads(memoryview(self._bytes)[start:int(self._ends[index])])


class CocoInstances(Dataset):
    """One sample per image: ``(image FloatTensor[3,H,W] in 0..1, target dict)``.

    Target: ``boxes`` Float[N,4] xyxy, ``labels`` Int64[N] (1..K), ``masks`` UInt8[N,H,W]
    (visible, or amodal in ``mode='amodal'``), ``occluder_masks`` UInt8[N,H,W],
    ``annotation_ids`` Int64[N], ``image_id`` int, ``orig_size`` (height, width) of the file.

    Bad image/annotation records are skipped and counted in ``self.skips`` (``strict=True``
    stops at the first); a record met again (next epoch) is not counted again. Of the records of one id the first
    usable one is kept (:func:`occsynth.coco.index_dataset`, judging the masks of the mode). Image files are
    checked to exist up front; a file that exists but cannot be decoded raises
    :class:`BadRecord` when read (:class:`SampleStream` skips it, counting it with :meth:`skip`). ``drop_empty`` leaves out images
    with no usable instance (training wants them out, evaluation wants every image in).
    ``data``: ``ann_file`` already parsed (``coco.read_dataset``), for a caller that needs it too;
    it is read, not changed. ``category_ids`` (a checkpoint's) must all be listed in the file, unless
    ``all_categories=False`` (evaluation: a set listing fewer, such as a person-only one, is scored over
    the categories it lists, as pycocotools does; it must share at least one with the model).
    """

    def __init__(self, ann_file: str | os.PathLike, image_root: str | os.PathLike,
                 transforms: Callable | None = None, *, mode: str = "visible",
                 drop_empty: bool = False, strict: bool = False, check_files: bool = True,
                 category_ids: Sequence[int] | None = None, data: dict | None = None,
                 all_categories: bool = True):
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        self.transforms = transforms
        self.mode = check_mode(mode)
        self.skips = SkipLog(strict=strict)
        self._counted: set[str] = set()
        self._new_skips: list[BadRecord] = []
        if data is None:
            data = coco.read_dataset(self.ann_file)
        if mode == "amodal":
            require_amodal_masks(data, self.ann_file, "training")
        try:
            images, categories, by_image = coco.index_dataset(data, self.skips, mask_keys=MASK_KEYS[mode])
        except BadRecord as exc:  # strict: say which file the record is in (evaluation reads several)
            raise self._in_file(exc) from None
        self.categories = [categories[c] for c in sorted(categories)]
        self.category_ids: list[int] = (sorted(categories) if category_ids is None
                                        else [int(c) for c in category_ids])
        unknown = sorted(set(self.category_ids) - set(categories))
        if category_ids is not None and not all_categories:
            require_shared_categories(categories, self.category_ids, str(self.ann_file))
        if unknown and all_categories:
            raise OccsynthError(f"{self.ann_file}: has no categories with ids {unknown} "
                                "(the model was trained with them)")
        self.category_id_to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.label_to_category_id = {i + 1: c for i, c in enumerate(self.category_ids)}
        self.images: list[dict] = []
        self.paths: list[Path] = []
        kept: list[list[dict]] = []
        self.without_instances = 0  # images left out by drop_empty: no annotation to learn (none, or crowd only)
        for image_id, image in images.items():
            try:
                path = coco.record_image_path(self.image_root, image)
                if check_files:
                    coco.require_image_file(path)
            except BadRecord as exc:
                self.skip(exc)
                continue
            anns = by_image[image_id]
            if drop_empty and not any(_is_candidate(a, self.category_id_to_label) for a in anns):
                self.without_instances += 1
                continue
            self.images.append(image)
            self.paths.append(path)
            kept.append(anns)
        self.annotations = PackedLists(kept)  # each image's records, as loaded: see PackedLists

    def skip(self, error: BadRecord) -> None:
        """Count ``error`` in ``self.skips`` once per distinct record (strict: raise it).

        A record met for the first time is also kept for :meth:`take_new_skips`: a DataLoader
        worker process counts in its own copy of the dataset, and :class:`SampleStream` hands those
        records to the training process with the sample."""
        if self.skips.strict:
            raise self._in_file(error)
        key = str(error)
        if key in self._counted:
            return
        self._counted.add(key)
        self.skips.skip(error)
        self._new_skips.append(error)

    def check_annotations(self) -> None:
        """Check up front, without reading an image, what :meth:`load` would refuse in every training instance:
        each mask's encoding (:func:`occsynth.coco.check_segmentation`: polygon coordinates, RLE runs adding up to
        the image), a mask that covers no pixel, and the box. A strict run calls it so that a bad record stops the
        run now, not when the image is drawn hours in. Each bad record goes to :meth:`skip` (strict: raises,
        naming the file)."""
        keys = MASK_KEYS[self.mode]
        for image, anns in zip(self.images, self.annotations):
            height, width = image["height"], image["width"]
            for ann in anns:
                if not _is_candidate(ann, self.category_id_to_label):
                    continue
                try:
                    for key in keys:
                        _check_encoding(ann, key, height, width)
                    if not _usable_box(ann.get("bbox"), height, width):  # load() makes it from the mask, and counts it
                        raise unusable_box(f"annotation {brief(ann.get('id'))}", ann.get("bbox"), self.skips.strict)
                except BadRecord as exc:
                    self.skip(exc)

    def _in_file(self, error: BadRecord) -> BadRecord:
        """``error`` naming the annotation file its record is in (an image file's path is name enough)."""
        named = error.where.startswith("image file ") or error.where.startswith(f"{self.ann_file}: ")
        return error if named else error.in_file(self.ann_file)

    def take_new_skips(self) -> list[BadRecord]:
        """Records :meth:`skip` met for the first time since the last call."""
        taken, self._new_skips = self._new_skips, []
        return taken

    @property
    def num_classes(self) -> int:
        """Number of classes including background (what ``build_model`` takes)."""
        return len(self.category_ids) + 1

    @property
    def image_ids(self) -> list[int]:
        return [image["id"] for image in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.get(index)

    def get(self, index: int, rng: np.random.Generator | None = None):
        """Sample ``index``; random transforms draw from ``rng`` (fresh entropy when None)."""
        image_np, target = self.load(index)
        if self.transforms is not None:
            image_np, target = self.transforms(image_np, target, rng if rng is not None else np.random.default_rng())
        return to_tensors(image_np, target)

    def load(self, index: int) -> tuple[np.ndarray, dict]:
        """Untransformed sample as numpy: RGB uint8 image and a target of numpy arrays (bool masks)."""
        record = self.images[index]
        height, width = record["height"], record["width"]
        image = coco.read_image(self.paths[index], expected_size=(height, width))
        boxes, labels, ids, visible, learned, occluder_lists, annotated_boxes = [], [], [], [], [], [], []
        for ann in self.annotations[index]:
            if not _is_candidate(ann, self.category_id_to_label):
                continue
            try:
                mask = _decode(ann, "segmentation", height, width)
                target_mask = mask
                if self.mode == "amodal":
                    target_mask = _decode(ann, "amodal_segmentation", height, width)
            except BadRecord as exc:
                self.skip(exc)
                continue
            annotated = ann.get("bbox")
            if not _usable_box(annotated, height, width):
                # missing, malformed, empty or off the image, next to a good mask: made from the mask and counted
                # (evaluation does the same with a malformed one)
                self.skip(unusable_box(f"annotation {brief(ann.get('id'))}", annotated, self.skips.strict))
                annotated = mask_ops.bbox(mask)
            x, y, w, h = mask_ops.bbox(target_mask) if self.mode == "amodal" else [float(v) for v in annotated]
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))])
            labels.append(self.category_id_to_label[ann["category_id"]])
            ids.append(ann["id"])
            visible.append(mask)
            learned.append(target_mask)
            occluder_lists.append(ann.get("occluder_ids"))
            annotated_boxes.append(annotated)
        n = len(boxes)
        visible_arr = np.stack(visible) if n else np.zeros((0, height, width), bool)
        boxes_arr = np.asarray(boxes, np.float32).reshape(n, 4)
        target = {
            "boxes": boxes_arr,
            "labels": np.asarray(labels, np.int64),
            "masks": np.stack(learned) if n else np.zeros((0, height, width), bool),
            "occluder_masks": occluder_masks(visible_arr, occluders_of(ids, occluder_lists, annotated_boxes)),
            "annotation_ids": np.asarray(ids, np.int64),
            "image_id": int(record["id"]),
            "orig_size": (height, width),
        }
        return image, target

    def read(self, index: int) -> tuple[torch.Tensor, dict]:
        """Image only, for prediction: (FloatTensor[3,H,W], {image_id, orig_size}).

        Applies the dataset's transforms (with no instances) when it has any; evaluation
        datasets usually have none and let the model resize internally.
        """
        record = self.images[index]
        height, width = record["height"], record["width"]
        image = coco.read_image(self.paths[index], expected_size=(height, width))
        if self.transforms is not None:
            image, _ = self.transforms(image, {"boxes": np.zeros((0, 4), np.float32)}, np.random.default_rng(0))
        tensor, _ = to_tensors(image, {})
        return tensor, {"image_id": int(record["id"]), "orig_size": (height, width)}


def require_shared_categories(listed: Iterable[int], model: Sequence[int], where: str,
                              model_has: str = "the model was trained with") -> None:
    """Refuse a set to evaluate (``where``) that lists none of the categories the model predicts (``model``): no
    object of it could be scored. ``model_has`` says where the model's categories come from."""
    listed = sorted(set(listed))
    if not set(listed) & set(model):
        raise OccsynthError(f"{where}: shares no category with the model (it lists category ids {brief(listed)}; "
                            f"{model_has} {brief(sorted(model))})")


def require_amodal_masks(data: dict, where: str | os.PathLike = "", task: str = "evaluation") -> None:
    """Refuse, naming ``where`` (the file) and the first culprit, a set with a non-crowd annotation
    without ``amodal_segmentation``: scoring or training it on its visible mask instead would
    silently mix two kinds of mask. Records that are not objects are left to the record checks."""
    verb = {"evaluation": "evaluate", "training": "train"}.get(task, task)
    for ann in data["annotations"]:
        if isinstance(ann, dict) and not ann.get("amodal_segmentation") and not ann.get("iscrowd", 0):
            raise OccsynthError((f"{where}: " if where else "") + f"annotation {ann.get('id')} (image "
                                f"{ann.get('image_id')}) has no amodal_segmentation: amodal {task} needs one on "
                                f"every non-crowd annotation ({verb} in visible mode, or complete or remove the "
                                "annotation)")


def occluders_of(annotation_ids: Sequence[int], occluder_ids: Sequence[Sequence[int] | None],
                 boxes_xywh: Sequence[Sequence[float]]) -> list[list[int]]:
    """For each instance, the indices (into the same lists) of the instances that occlude it.

    Uses the annotations' ``occluder_ids`` when every instance has them; otherwise BCNet's box
    rule (one implementation: ``occsynth.occluders``) on the annotations' own ``bbox``es, as
    ``occsynth annotate-occluders`` applies it: the same occluders with or without that step.
    """
    if len(annotation_ids) and all(isinstance(o, list) for o in occluder_ids):
        position = {a: i for i, a in enumerate(annotation_ids)}
        return [sorted(position[o] for o in ids if o in position and position[o] != i)
                for i, ids in enumerate(occluder_ids)]
    return box_overlap_occluders(np.asarray(boxes_xywh, np.float64).reshape(-1, 4))


def to_tensors(image: np.ndarray, target: dict) -> tuple[torch.Tensor, dict]:
    """numpy sample -> (FloatTensor[3,H,W] in 0..1, target of tensors; masks as uint8)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
    out = {}
    for key, value in target.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value.astype(np.uint8) if value.dtype == bool else value))
        out[key] = value
    return tensor, out


def collate(batch: Sequence) -> tuple[list, list]:
    """List of (image, target) -> (images, targets): detection models take lists, not stacks."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def require_training_images(dataset: CocoInstances) -> None:
    """Refuse a dataset with no image to train on, naming its file and why (the records skipped, by reason,
    with an example): a wrong image root reads as ``missing image file``."""
    if len(dataset) == 0:
        skips = getattr(dataset, "skips", None)
        hint = ("; is image_root/--images the folder that the file_name entries are relative to?"
                if skips is not None and skips.counts.get(errors.MISSING_FILE) else "")  # as generate asks
        raise OccsynthError(f"{getattr(dataset, 'ann_file', 'dataset')}: no usable training images{_why(dataset)}"
                            + hint)


def _why(dataset) -> str:
    skips, empty = getattr(dataset, "skips", None), getattr(dataset, "without_instances", 0)
    parts = [skips.in_one_line()] if skips is not None and skips.total else []
    if empty:
        parts.append(f"{plural(empty, 'image')} with no instance to learn: no annotation, or only crowd ones or ones of "
                     "unknown categories")
    return f" ({'; '.join(parts)})" if parts else ""


class SampleStream(Dataset):
    """The k-th sample a training run draws, as a pure function of (seed, k).

    Draw k reads image ``permutation(seed, epoch)[k % n]`` with ``epoch = k // n`` (each epoch
    visits every image once) and augments it with a generator seeded by (seed, k). A run that
    resumes at iteration i just starts drawing at ``k = i * batch_size``: same images, same flips,
    same scales as an uninterrupted run, whatever the number of loader workers.
    """

    def __init__(self, dataset: CocoInstances, seed: int):
        require_training_images(dataset)
        self.dataset, self.seed = dataset, int(seed)
        self._epoch, self._order = -1, np.arange(0)

    def index(self, k: int) -> int:
        epoch, position = divmod(int(k), len(self.dataset))
        return int(self._order_of(epoch)[position])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int):
        """Draw k; an image file that cannot be decoded is skipped (counted by the dataset's
        :meth:`CocoInstances.skip`; strict datasets raise) and the next image of the epoch's order
        taken instead, so the stream stays a function of (seed, k) while the file stays bad.

        The target carries ``SKIPPED_KEY``: (reason, where, detail) of the bad records this draw
        met first, for :func:`count_skipped` in the training process. In a loader worker an
        :class:`OccsynthError` is not raised: torch would raise another exception in the training
        process, with the worker's traceback for its message. It comes as the target's ``RAISED_KEY``
        instead (and no image), and :func:`count_skipped` raises it there, as without workers."""
        try:
            return self._draw(k)
        except OccsynthError as exc:  # BadRecord too
            if torch.utils.data.get_worker_info() is None:
                raise
            if isinstance(exc, BadRecord):
                return None, {RAISED_KEY: ("bad record", exc.reason, exc.where, exc.detail)}
            return None, {RAISED_KEY: ("error", str(exc))}

    def _draw(self, k: int):
        first = self.index(k)
        epoch, position = divmod(int(k), len(self.dataset))
        n = len(self.dataset)
        for step in range(n):
            index = first if step == 0 else int(self._order_of(epoch)[(position + step) % n])
            try:
                image, target = self.dataset.get(index, rng=np.random.default_rng([self.seed, 1 << 20, int(k)]))
                if hasattr(self.dataset, "take_new_skips"):
                    target[SKIPPED_KEY] = [(e.reason, e.where, e.detail) for e in self.dataset.take_new_skips()]
                return image, target
            except BadRecord as exc:
                if not hasattr(self.dataset, "skip"):
                    raise
                self.dataset.skip(exc)
        what = "its only training image could not" if n == 1 else f"none of the {n} training images could"
        raise OccsynthError(f"{getattr(self.dataset, 'ann_file', 'dataset')}: {what} be read{_why(self.dataset)}")

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._epoch = epoch
        return self._order


SKIPPED_KEY = "skipped_records"
RAISED_KEY = "raised_in_worker"


def count_skipped(dataset: CocoInstances, targets: Sequence[dict]) -> None:
    """Count in ``dataset`` the bad records that drawing ``targets`` met (taken out of the targets), and raise
    the error a loader worker met instead of a sample (see :meth:`SampleStream.__getitem__`).

    With DataLoader workers those were counted in the workers' copies only; counting them here
    makes the run's skip summary whole (records already counted here are not counted twice)."""
    for target in targets:
        raised = target.pop(RAISED_KEY, None)
        if raised is not None:
            raise BadRecord(*raised[1:]) if raised[0] == "bad record" else OccsynthError(raised[1])
        for reason, where, detail in target.pop(SKIPPED_KEY, ()):
            dataset.skip(BadRecord(reason, where, detail))


def rank_draws(start_iteration: int, iterations: int, batch_size: int, rank: int = 0, world_size: int = 1,
               accumulate: int = 1) -> list[int]:
    """Sample-stream indices one process reads for iterations ``start_iteration + 1 .. iterations``.

    Iteration i consumes draws ``[i * batch_size, (i + 1) * batch_size)`` of the stream whatever
    the number of processes and accumulation steps: micro-step a of rank r reads the slice
    ``(a * world_size + r) * micro`` .. ``+ micro`` (``micro = batch_size / (world_size * accumulate)``).
    So 1 GPU x 16 images, 8 GPUs x 2 images and 2 GPUs x 4 steps x 2 images see the same images.
    """
    return list(RankDraws(start_iteration, iterations, batch_size, rank, world_size, accumulate))


class RankDraws:
    """:func:`rank_draws` as a sampler that computes the indices as the loader reads them. A list of every
    draw of the run cost memory and time before the first step: an extra zero in --iterations (10^9 draws)
    kept the run silent for minutes until memory ran out."""

    def __init__(self, start_iteration: int, iterations: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 accumulate: int = 1):
        self.micro = micro_batch_size(batch_size, world_size, accumulate)
        self.start, self.stop = int(start_iteration), int(iterations)
        self.batch_size, self.rank, self.world_size, self.accumulate = batch_size, rank, world_size, accumulate

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.accumulate * self.micro

    def __iter__(self) -> Iterator[int]:
        for i in range(self.start, self.stop):
            for a in range(self.accumulate):
                base = i * self.batch_size + (a * self.world_size + self.rank) * self.micro
                yield from range(base, base + self.micro)


def micro_batch_size(batch_size: int, world_size: int = 1, accumulate: int = 1) -> int:
    """Images per forward pass; the global batch must split evenly over processes and steps."""
    parts = int(world_size) * int(accumulate)
    if batch_size < parts or batch_size % parts:
        raise OccsynthError(f"batch size {batch_size} does not split evenly over "
                            f"{plural(world_size, 'process', 'processes')} x {plural(accumulate, 'accumulation step')}")
    return batch_size // parts


def train_loader(dataset: CocoInstances, batch_size: int, seed: int, start_iteration: int,
                 iterations: int, workers: int = 0, rank: int = 0, world_size: int = 1,
                 accumulate: int = 1, pin_memory: bool = False) -> DataLoader:
    """Micro-batches, in order, for iterations ``start_iteration + 1 .. iterations`` (see :func:`rank_draws`).

    ``pin_memory``: copy each batch into page-locked memory (on a thread of this process), so that moving it
    to a CUDA device with ``non_blocking=True`` overlaps the GPU's work instead of waiting for it."""
    draws = RankDraws(start_iteration, iterations, batch_size, rank, world_size, accumulate)
    return DataLoader(SampleStream(dataset, seed), batch_size=draws.micro,
                      sampler=draws, collate_fn=collate, num_workers=workers,
                      generator=torch.Generator().manual_seed(int(seed)), persistent_workers=False,
                      pin_memory=bool(pin_memory),
                      worker_init_fn=functools.partial(end_with_parent, os.getpid()) if workers else None)


_PR_SET_PDEATHSIG = 1  # prctl(2)


def end_with_parent(parent_pid: int, worker_id: int) -> None:
    """A loader worker's start (``worker_init_fn``): make it end when the training process ends, however that ends.

    torch's workers notice a dead parent only if it was alive when they began watching it, after this
    function: a training process killed while its workers start (Ctrl-C twice, kill -9, the OOM killer)
    left them waiting for work for good, each holding its copy of the dataset. A worker the training
    process started itself (fork, spawn) asks the kernel to kill it when that process dies (Linux); one
    whose training process is already gone ends here. (A fork server's workers are its children, not the
    training process's: only the second check applies to them.)
    """
    if os.getppid() == parent_pid and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc to ask: torch's own watch remains
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if not process_running(parent_pid):
        os._exit(0)


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie, dead but not yet reaped, has exited).
    True where that cannot be asked safely: on Windows, os.kill(pid, 0) would terminate the process."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it exists
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):  # no /proc (not Linux): existing is all that can be told
        return True


def _is_candidate(ann: dict, category_id_to_label: dict) -> bool:
    """Could be a training target: not crowd, a known category (a missing or broken box is made from the
    mask when the sample is loaded, and counted)."""
    return not ann.get("iscrowd", 0) and ann.get("category_id") in category_id_to_label


def _usable_box(box, height: int, width: int) -> bool:
    """A COCO [x, y, w, h] of finite numbers with a positive width and height that overlaps the image."""
    if not (is_box(box) and box[2] > 0 and box[3] > 0):
        return False
    x, y, w, h = box
    return min(x + w, width) > max(x, 0) and min(y + h, height) > max(y, 0)


def unusable_box(where: str, bbox: Any, strict: bool) -> BadRecord:
    """The record of a ``bbox`` that is no usable box beside a good mask: skipped, the box is made from the mask;
    strict, the run stops at it (and says nothing was recomputed)."""
    return BadRecord(errors.MALFORMED_RECORD, where, f"bbox {brief(bbox)} is not a usable box"
                     + ("" if strict else "; recomputed from the mask"))


def _check_encoding(ann: dict, key: str, height: int, width: int) -> None:
    """BadRecord, in :func:`_decode`'s words, for a mask it would refuse, found without decoding it to full size:
    polygons are checked as lists of coordinates, then rasterised as RLE (pycocotools, tens of microseconds
    each: under a minute for COCO train's 860k); RLE by its runs. Empty when no pixel is foreground."""
    where = f"annotation {ann.get('id')} '{key}'"
    segmentation = ann.get(key)
    rle = coco.check_segmentation(segmentation, height, width, where)
    if mask_ops.rle_area(rle) == 0:
        raise BadRecord(errors.DEGENERATE_MASK, where, "empty mask")


def _decode(ann: dict, key: str, height: int, width: int) -> np.ndarray:
    """The mask, or BadRecord for one that cannot be decoded (by the same check as :func:`_check_encoding`,
    so that --strict refuses up front exactly what loading would skip) or is empty."""
    where = f"annotation {ann.get('id')} '{key}'"
    mask = mask_ops.decode(coco.check_segmentation(ann.get(key), height, width, where), height, width)
    if not mask.any():
        raise BadRecord(errors.DEGENERATE_MASK, where, "empty mask")
    return mask
