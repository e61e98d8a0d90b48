"""`occsynth generate`: source set -> cutout bank -> class schedule -> parallel chunks -> merged set.

The parent process only plans: every image ``i`` is a pure function of (bank, seed, i, options),
drawn from its own RNG, so any worker count, any shard split, and any kill + resume give
byte-identical output. Workers receive a chunk number and small settings, open the bank
(memory-mapped) and the images they need, and write their images and one part file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import __version__, backends, masks, stopping, writer
from .atomic import BackgroundWriter, check_writable, make_folder, remove_stale_temporaries
from .bank import (Bank, BankOptions, CutoutPixels, check_image_root, context_crop, ensure_bank, ensure_cutout_pixels,
                   images_fingerprint, no_cutouts_reason, open_bank)
from .coco import encode_image, read_image, record_image_path
from .compose import compose_boxed
from .demo import cache_dir_or_default, demo_source
from .errors import BadRecord, OccsynthError, SkipLog, did_you_mean, options_argument, plural, whole_number
from .pool import local_workers
from .schedule import CompositeOptions, Schedule, class_schedule, image_rng, plan_image

RECIPE_TABLES = ("run", "composite", "bank")  # a synthetic-set recipe's
IMAGE_FORMATS = ("jpg", "png")
DEFAULT_CHUNK_SIZE = 16
MAX_SOURCE_RETRIES = 20
# 100 times the paper's set. Every worker holds the class schedule of the whole set (about 300 bytes an image,
# some 16 s to draw per million images on one core), so a mistyped count is refused instead of filling memory
MAX_IMAGES = 10_000_000
# The renderer's revision, recorded in every run: raised whenever the same settings and source give other
# bytes (placement, blending, encoding), so that a run resumed, or a shard made, by another revision is
# refused instead of mixed into a set that neither revision would make.
#   2: a paste is aimed at an earlier object it can bring into the occlusion range (compose._Canvas._targets)
#   3: a cutout's mask is resized on its pixels' grid (masks.resize samples pixel centres, as the RGB resize does)
RENDERER = 3


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything the output depends on. Workers, shards, progress and paths are not in it."""

    num_images: int
    seed: int
    composite: CompositeOptions = CompositeOptions()
    bank: BankOptions = BankOptions()
    image_format: str = "jpg"
    jpeg_quality: int = 95
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self):
        def whole(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if not whole_number(value, low) or (high and value > high):
                bound = f"between {low} and {high}" if high else f">= {low}"
                raise OccsynthError(f"{name} must be a whole number {bound}, got {value!r}")
            object.__setattr__(self, name, int(value))  # a notebook's np.int64 too; run.json holds plain ints

        whole("num_images", 1, MAX_IMAGES)
        whole("seed", 0, 2 ** 63 - 1)
        whole("jpeg_quality", 1, 100)
        whole("chunk_size", 1, 100_000)
        for name, kind in (("composite", CompositeOptions), ("bank", BankOptions)):
            # a notebook's {"pastes": [1, 2]}, as run_settings() takes a table; frozen: set once, here
            object.__setattr__(self, name, options_argument(kind, getattr(self, name), name))
        if self.image_format not in IMAGE_FORMATS:
            raise OccsynthError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}")

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_images / self.chunk_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_settings(recipe: dict | None = None, *, composite: dict | None = None, bank: dict | None = None,
                 **run) -> RunSettings:
    """RunSettings from a recipe's ``[run]``/``[composite]``/``[bank]`` tables, with overrides on top.

    Overrides that are None are ignored, so command-line options left unset keep the recipe's value.
    Unknown keys are refused with a message naming them.
    """
    recipe = recipe or {}
    for table, value in recipe.items():
        if table not in RECIPE_TABLES:
            raise OccsynthError(f"recipe: unknown table [{table}]{did_you_mean(table, RECIPE_TABLES)} (a synthetic-set "
                                "recipe has [run], [composite], [bank])")
        if not isinstance(value, dict):
            raise OccsynthError(f"recipe: '{table}' must be a table ([{table}]), got {type(value).__name__}")

    def merged(table: str, values: dict | None) -> dict:
        return {**recipe.get(table, {}), **{k: v for k, v in (values or {}).items() if v is not None}}

    fields = merged("run", run)
    fields = {"num_images": 100, "seed": 0, **fields}
    for table, known, given in (("run", RunSettings, fields), ("composite", CompositeOptions, merged("composite", composite)),
                                ("bank", BankOptions, merged("bank", bank))):
        names = sorted({f.name for f in dataclasses.fields(known)} - {"composite", "bank"})
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise OccsynthError(f"unknown [{table}] setting(s): {', '.join(unknown)}{did_you_mean(unknown[0], names)} "
                                f"(known: {', '.join(names)})")
    return RunSettings(composite=CompositeOptions(**merged("composite", composite)),
                       bank=BankOptions(**merged("bank", bank)), **fields)


def generate(out_dir: str | os.PathLike, settings: RunSettings, *, ann_path: str | os.PathLike | None = None,
             image_root: str | os.PathLike | None = None, workers: int = 1, shard: tuple[int, int] = (0, 1),
             strict: bool = False, cache_dir: str | os.PathLike | None = None, backend: str = "loky",
             backend_address: str | None = None, progress: bool = True, cutout_pixels: bool = True) -> dict:
    """Generate (or resume) a synthetic occlusion set in ``out_dir``; returns the run report.

    Without ``ann_path``/``image_root`` the embedded demo source is used. With ``shard=(i, n)``
    only chunks ``c % n == i`` are rendered; join shards with :func:`merge`. ``backend``: ``loky``
    (local processes), ``threading`` (joblib's), or ``dask``/``ray`` with ``backend_address`` the
    scheduler/head of a running cluster (a local one is started when it is None; a ray this process
    already runs, ``ray.init``, is used as it is).
    ``cutout_pixels``: build (once, cached) and read the cutouts' pixel store, so that workers
    decode only the backgrounds; False decodes every cutout's source image. The output is the same.

    The report of a finished set is its manifest (docs/FORMAT.md) plus ``out``, ``merged`` (True),
    ``chunks_rendered`` (by this call; 0 when it found the set finished) and ``chunks_total``, and ``replaced_run``
    (the settings that differed) when ``out_dir`` held a run of other settings that had finished no chunk. A
    shard's: ``out``, ``shard`` ("i/n"), ``merged`` (False), ``shard_chunks`` (its own),
    ``chunks_rendered``, ``chunks_done`` and ``chunks_total`` (of the whole set in ``out_dir``).
    """
    if not isinstance(settings, RunSettings):
        raise OccsynthError(f"settings must be a RunSettings (e.g. run_settings(num_images=...)), got {settings!r}")
    shard = writer.check_shard(shard)  # plain ints from here on (a numpy uint8 would overflow in chunk % n)
    if not whole_number(workers, 1):
        raise OccsynthError(f"workers must be a whole number >= 1, got {workers!r}")
    backends.check_backend(backend, backend_address)  # before OUT is made: a run that cannot start leaves nothing
    if backend in ("loky", "threading"):
        workers = local_workers(workers)
    if (ann_path is None) != (image_root is None):
        raise OccsynthError("give both ann_path/--ann and image_root/--images, or neither (to use the embedded demo source)")
    # the cluster is reached before OUT is made too: a scheduler that cannot be reached leaves no run behind
    with backends.backend_session(backend, backend_address, workers):
        return _generate(out_dir, settings, ann_path, image_root, workers, shard, strict, cache_dir, backend,
                         progress, cutout_pixels)


def _generate(out_dir, settings: RunSettings, ann_path, image_root, workers: int, shard: tuple[int, int],
              strict: bool, cache_dir, backend: str, progress: bool, cutout_pixels: bool) -> dict:
    """:func:`generate` once its arguments are checked and its cluster (if any) is connected."""
    demo = ann_path is None  # the default source: a refusal names it so, not as an --images given
    if demo:
        ann_path, image_root = demo_source(cache_dir)
    ann_path, image_root, out_dir = Path(ann_path), Path(image_root), Path(out_dir)
    if not image_root.is_dir():
        raise OccsynthError(f"{image_root}: image directory not found")
    created = not out_dir.exists()
    make_folder(out_dir)  # early: an unwritable --out fails before the bank is built

    try:
        check_writable(out_dir)  # and so does one that exists (or was made) but is read-only
        cache_dir = cache_dir_or_default(cache_dir)
        bank_dir = ensure_bank(ann_path, cache_dir, settings.bank, strict=strict, progress=progress)
        bank = open_bank(str(bank_dir))
        if not bank.cutout_categories():
            raise OccsynthError(f"{ann_path}: no complete instance to paste ({no_cutouts_reason(bank.meta)}; "
                                "`occsynth bank` shows more)")
        if bank.num_images == 0:
            raise OccsynthError(f"{ann_path}: no usable background image")
        check_image_root(bank, image_root)
    except BaseException:
        if created and shard[1] == 1:  # bad input found before anything was written: leave no empty --out
            # behind (not for shards: another one may be about to write into the same --out)
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise

    run = {"version": __version__, "renderer": RENDERER, "settings": settings.to_dict(),
           "source": {"annotations": ann_path.name, "sha256": bank.meta["source"]["sha256"],
                      "images": images_fingerprint(bank, image_root)}}  # a resume must read the same pixels
    writer.refuse_foreign_files(out_dir)  # before the lock puts parts/ there
    index, count = shard
    own_chunks = [c for c in range(settings.num_chunks) if _in_shard(c, shard)]
    merged = _merged_set_holding(out_dir, run, own_chunks) if count > 1 else None
    if merged is not None:
        # a retry after the merge: nothing to render, and no lock files to leave in the finished set
        return {"out": str(out_dir), "shard": f"{index}/{count}", "chunks_done": settings.num_chunks,
                "chunks_total": settings.num_chunks, "merged": False, "already_merged": True,
                "merged_set": str(merged), "shard_chunks": len(own_chunks)}
    with writer.run_lock(out_dir, shard):  # a second run of the same work fails here, before OUT is touched
        replaced = writer.check_run_settings(out_dir, run, image_root=image_root, demo=demo,
                                             replace_unrendered=count == 1)
        owned = None if count == 1 else functools.partial(_of_shard, run["settings"], shard)
        remove_stale_temporaries(out_dir, owned)
        writer.write_source_summary(out_dir, bank.categories, _bank_summary(bank.meta))

        chunks = [c for c in own_chunks if not writer.chunk_done(out_dir, c)]
        pixels_dir = None
        if cutout_pixels and chunks:
            pixels_dir = str(ensure_cutout_pixels(bank_dir, image_root, cache_dir, strict=strict, progress=progress,
                                                  workers=workers if backend in ("loky", "threading") else 1))
        # absolute paths: a cluster's workers (dask, ray) run in a folder of their own. Path.absolute keeps '..'
        # (os.path.abspath drops it as text: through a link, 'link/../o' is another folder than the one checked)
        task = functools.partial(render_chunk, str(Path(bank_dir).absolute()), str(Path(image_root).absolute()),
                                 str(Path(out_dir).absolute()), settings, strict,
                                 pixels_dir=pixels_dir and str(Path(pixels_dir).absolute()))
        resumed = len(own_chunks) - len(chunks)
        desc = progress_label(resumed, len(own_chunks))
        # closing: if the merge fails, the workers stop too instead of rendering on unseen
        # no bar when nothing is left to render (it drew an empty "0img" bar under the "nothing left" message)
        # one stop raises: a second (Ctrl-C right after the scheduler's SIGTERM) raised in the pool's shut-down or in
        # the sweep below, which left the workers' temporaries, or a pool lock held that hung the command at exit
        with stopping.one_stop():
            try:
                with contextlib.closing(_finished_chunks(task, chunks, settings, workers, backend,
                                                         progress and bool(chunks), desc=desc)) as finished:
                    if count > 1:
                        for _ in finished:
                            pass
                        done = sum(writer.chunk_done(out_dir, c) for c in range(settings.num_chunks))
                        return {"out": str(out_dir), "shard": f"{index}/{count}", "chunks_done": done,
                                "chunks_total": settings.num_chunks, "merged": False, "shard_chunks": len(own_chunks),
                                "chunks_rendered": len(chunks)}
                    # the merge runs while the workers render: no serial merge after the last chunk
                    done_before = set(range(settings.num_chunks)).difference(chunks)
                    parts = writer.parts_in_chunk_order(out_dir, settings.num_chunks, done_before, finished)
                    return {**writer.finalize(out_dir, run, parts), "chunks_rendered": len(chunks),
                            "chunks_total": settings.num_chunks, **({"replaced_run": replaced} if replaced else {})}
            except BaseException:
                if backend == "loky":  # a stop kills the pool's workers mid-write: their temporaries are this run's own
                    remove_stale_temporaries(out_dir, owned)
                raise


def _merged_set_holding(out_dir: Path, run: dict, chunks: list[int]) -> Path | None:
    """The finished set of ``run`` that holds all of ``chunks``: ``out_dir`` itself (shards that wrote there were
    merged in place), or the set a merge moved this shard folder's chunks into; None when there is none."""
    moved_to = writer.merged_into_of(out_dir)
    for folder in [out_dir] + ([Path(moved_to)] if moved_to else []):
        if writer.merged_run(folder) == writer.as_stored(run) and all(writer.chunk_done(folder, c) for c in chunks):
            return folder
    return None


def _in_shard(chunk: int, shard: tuple[int, int]) -> bool:
    """Shard (i, n) renders chunks i, i + n, i + 2n, ..."""
    return chunk % shard[1] == shard[0]


def _of_shard(settings: dict, shard: tuple[int, int], file_name: str) -> bool:
    """Whether ``file_name`` is written by this shard alone: shards may share OUT, and run at once."""
    chunk = writer.chunk_of_file(file_name, settings)
    return chunk is not None and _in_shard(chunk, shard)


def merge(out_dir: str | os.PathLike, shard_dirs: str | os.PathLike | Sequence[str | os.PathLike], *,
          progress: bool = True) -> dict:
    """Join shard outputs (same settings) into one set identical to an unsharded run; returns its report (as
    :func:`generate` returns a finished set's).

    ``shard_dirs``: the folders the shards wrote (one path, or a list); ``out_dir`` may be one of them (shards that
    all wrote one shared folder: ``merge(folder, folder)``). The shards' images and parts are moved into ``out_dir``,
    so a merge stopped half-way is simply run again.
    """
    if isinstance(shard_dirs, (str, os.PathLike)):  # one folder, not a sequence of one-letter folders
        shard_dirs = [shard_dirs]
    if not shard_dirs:
        raise OccsynthError("shard_dirs: give at least one shard folder to merge")
    return writer.merge_shards(Path(out_dir), [Path(d) for d in shard_dirs], progress=progress)


def _bank_summary(meta: dict) -> dict:
    return {k: meta[k] for k in ("options", "kept_per_category", "rejected", "skipped") if k in meta}


# ---------------------------------------------------------------- workers


def _finished_chunks(task: Callable[[int], int], chunks: list[int], settings: RunSettings, workers: int,
                     backend: str, progress: bool, desc: str = "generate") -> Iterator[int]:
    """Run ``task`` on every chunk; yields each chunk as it finishes (in about, not exactly, chunk order).

    A generator, so that the caller can merge finished chunks while the workers render later ones. For
    ``dask``/``ray`` the caller holds the cluster's :func:`occsynth.backends.backend_session` open around it.
    """
    total = sum(min(settings.chunk_size, settings.num_images - c * settings.chunk_size) for c in chunks)
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, smoothing=0.1)
    try:
        if backend in ("loky", "threading") and (workers <= 1 or len(chunks) <= 1):
            for c in chunks:
                bar.update(task(c))
                stopping.raise_if_stopping()  # a stop some library swallowed (the caller's one_stop holds the next)
                yield c
            return
        results = backends.chunk_results(task, chunks, workers, backend)
        try:
            for c, n in results:
                bar.update(n)
                stopping.raise_if_stopping()
                yield c
        finally:
            results.close()
    finally:
        bar.close()


@functools.lru_cache(maxsize=2)
def _schedule(bank_dir: str, settings: RunSettings) -> Schedule:
    bank = open_bank(bank_dir)
    return class_schedule(bank.cutout_categories(), settings.num_images, settings.seed, settings.composite)


@functools.lru_cache(maxsize=2)
def _sources(image_root: str, bank_dir: str, pixels_dir: str | None) -> "SourceImages":
    """One SourceImages per worker process, so its caches outlive a chunk."""
    bank = open_bank(bank_dir)
    pixels = CutoutPixels.load(pixels_dir, bank) if pixels_dir else None
    return SourceImages(Path(image_root), bank, pixels=pixels)


def progress_label(resumed: int, own_chunks: int) -> str:
    """The progress bar's label: how many of this run's ``own_chunks`` an earlier run did, where any
    ("generate (resuming: 1,200 of 2,400 chunks done)"; numbers as the summary prints them)."""
    return f"generate (resuming: {resumed:,} of {plural(own_chunks, 'chunk')} done)" if resumed else "generate"


def render_chunk(bank_dir: str, image_root: str, out_dir: str, settings: RunSettings, strict: bool, chunk: int,
                 *, pixels_dir: str | None = None) -> int:
    """Render images of one chunk, write them and the chunk's part file; returns the number of images."""
    bank = open_bank(bank_dir)
    schedule = _schedule(bank_dir, settings)
    sources = _sources(image_root, bank_dir, pixels_dir)
    log = SkipLog(strict=strict)
    first = chunk * settings.chunk_size
    indices = range(first, min(first + settings.chunk_size, settings.num_images))
    images, annotations, sizes = [], [], {}
    # Files are written and fsynced by one thread while the next image renders. Leaving the block waits
    # for every write, so all of the chunk's images are on disk before its part file says the chunk is
    # done; a write error (e.g. a full disk) is raised here, as it would be inline.
    with BackgroundWriter() as writes:
        for i in indices:
            writes.raise_failed()  # stop rendering once a write has failed
            record, anns, encoded = render_image(bank, sources, schedule, settings, i, log)
            writes.submit(Path(out_dir) / writer.IMAGES / record["file_name"], encoded)
            sizes[record["file_name"]] = len(encoded)
            images.append(record)
            annotations.append(anns)
        part = writer.encode_part(chunk, images, annotations, log)  # while the last images are written
    writer.write_part(Path(out_dir), chunk, part, sizes)
    return len(indices)


def render_image(bank: Bank, sources: "SourceImages", schedule: Schedule, settings: RunSettings, index: int,
                 log: SkipLog) -> tuple[dict, list[dict], bytes]:
    """One output image: (image record, annotations with local occluder indices, encoded bytes)."""
    options = settings.composite
    counts = sources.cutout_counts()
    plan = plan_image(schedule, index, settings.seed, bank.num_images, counts, options)
    retry_rng = _LazyRng(settings.seed, index, "retry")  # drawn from only when a source is unreadable

    background, bg_index = None, plan["background"]
    for _ in range(MAX_SOURCE_RETRIES):
        try:
            background = sources.image(bg_index)
            break
        except BadRecord as exc:
            log.skip(exc)
            bg_index = int(retry_rng.integers(bank.num_images))
    if background is None:
        raise OccsynthError(f"output image {index}: {MAX_SOURCE_RETRIES} background images in a row were unreadable")
    bg_record = sources.record(bg_index)
    height, width = background.shape[:2]
    bg_instances = []
    for ann, decode_crop in sources.instances(bg_index):
        bg_instances.append({"box": ann["box"], "decode_crop": decode_crop, "amodal_rle": ann["segmentation"],
                             "area": ann["area"], "bbox": ann["bbox"], "category_id": ann["category_id"],
                             "iscrowd": ann["iscrowd"], "source": {"image_id": bg_record["id"], "annotation_id": ann["id"]}})

    margin = options.margin
    cutouts = []
    for paste in plan["pastes"]:
        pool = sources.cutout_pool(paste["category_id"])
        k = int(pool[paste["cutout"]])
        for _ in range(MAX_SOURCE_RETRIES):
            try:
                pixels, mask, ann = sources.cutout(k, margin)
                break
            except BadRecord as exc:
                log.skip(exc)
                k = int(pool[retry_rng.integers(len(pool))])
        else:
            raise OccsynthError(f"output image {index}: no readable cutout of category {paste['category_id']}")
        cutouts.append({"rgb": pixels, "mask": mask, "category_id": paste["category_id"], "scale": paste["scale"],
                        "flip": paste["flip"], "source": {"image_id": sources.record(ann["image_index"])["id"],
                                                          "annotation_id": ann["id"]}})

    image, instances = compose_boxed(background, bg_instances, cutouts, image_rng(settings.seed, index, "compose"),
                                     options, out=sources.scratch(background.shape), encoded=True)
    ext = settings.image_format
    record = {"id": index + 1, "file_name": writer.image_file_name(index, ext), "height": height, "width": width,
              "background": {"image_id": bg_record["id"], "file_name": bg_record["file_name"]}}
    anns = [instance_annotation(inst, index + 1, (height, width)) for inst in instances]
    encoded = encode_image(image, "." + ext, settings.jpeg_quality, bgr=True)
    return record, anns, encoded


class _LazyRng:
    """An :func:`image_rng` made on first use (making one costs more than most images ever draw from it)."""

    def __init__(self, seed: int, index: int, stream: str):
        self._args, self._rng = (seed, index, stream), None

    def integers(self, *args, **kwargs):
        if self._rng is None:
            self._rng = image_rng(*self._args)
        return self._rng.integers(*args, **kwargs)


def instance_annotation(inst: dict, image_id: int, image_size: tuple[int, int] | None = None) -> dict:
    """A composed instance as a COCO annotation (``occluders`` still local indices; ids come at merge).

    ``inst`` is a :func:`compose` instance (full masks) or, with ``image_size`` (height, width), a
    :func:`compose_boxed` one (box + crops; measured and encoded from the crops, same result; an
    'amodal_rle' it carries is taken as the amodal mask's encoding; one with crops None, an encoded
    instance, is its 'visible_rle', 'area', 'bbox', 'amodal_rle', 'amodal_area' and 'amodal_bbox' as they are).
    """
    if "box" in inst and inst["amodal_crop"] is None:  # encoded (compose_boxed's encoded=True, or nothing covers it)
        area, box, segmentation = int(inst["area"]), list(inst["bbox"]), dict(inst["visible_rle"])
        amodal_area, amodal_box = int(inst["amodal_area"]), list(inst["amodal_bbox"])
        amodal_segmentation = dict(inst["amodal_rle"])
    elif "box" in inst:
        height, width = image_size
        y0, x0 = int(inst["box"][0]), int(inst["box"][1])
        visible, amodal = inst["visible_crop"], inst["amodal_crop"]
        area, amodal_area = masks.area(visible), masks.area(amodal)
        if "amodal_rle" in inst:  # already encoded (a background instance's source mask)
            amodal_segmentation = dict(inst["amodal_rle"])
            amodal_box = masks.crop_bbox(amodal, y0, x0)  # = rle_bbox of it, without reading the string
        else:
            amodal_segmentation = masks.encode_crop(amodal, y0, x0, height, width)
            amodal_box = masks.crop_bbox(amodal, y0, x0)
        if area == amodal_area and np.array_equal(visible, amodal):  # not occluded (most background instances)
            segmentation, box = dict(amodal_segmentation), list(amodal_box)
        else:
            segmentation, box = masks.encode_crop(visible, y0, x0, height, width), masks.crop_bbox(visible, y0, x0)
    else:
        visible, amodal = inst["visible_mask"], inst["amodal_mask"]
        area, amodal_area = masks.area(visible), masks.area(amodal)
        segmentation, amodal_segmentation = masks.encode(visible), masks.encode(amodal)
        box, amodal_box = masks.bbox(visible), masks.bbox(amodal)
    return {"image_id": image_id, "category_id": int(inst["category_id"]), "segmentation": segmentation,
            "area": area, "bbox": box, "iscrowd": int(inst["iscrowd"]),
            "amodal_segmentation": amodal_segmentation, "amodal_bbox": amodal_box,
            "amodal_area": amodal_area, "occlusion_ratio": round(1.0 - area / amodal_area, 6) if amodal_area else 0.0,
            "layer": int(inst["layer"]), "occluders": [int(j) for j in inst["occluders"]],
            "amodal_complete": bool(inst["amodal_complete"]), "source": inst["source"]}


class SourceImages:
    """Decoded source images, their instance masks (box + crop) and cutouts for one worker, cached.

    A source image often serves twice (as background and as a cutout's source), and a cutout is
    pasted many times, so each is decoded once while it stays in the small LRU caches. With a
    pixel store (``pixels``) a cutout's crop comes from the store and its source image is not
    decoded at all (same pixels: the store holds exactly the crop of the decoded image, in RGB order).
    Cached arrays are read-only: callers must not change them.

    Pixels (backgrounds and cutouts) are in OpenCV's BGR order, as decoded: compositing is the same
    in any channel order, and the output is encoded from BGR, so generation converts no full image.
    """

    def __init__(self, image_root: Path, bank: Bank, cache_size: int = 32, cutout_cache_size: int = 256,
                 pixels: CutoutPixels | None = None):
        self.image_root, self.bank, self.pixels = image_root, bank, pixels
        self._cached = functools.lru_cache(maxsize=cache_size)(self._load)
        self._masks = functools.lru_cache(maxsize=cache_size)(self._load_masks)
        self._cutouts = functools.lru_cache(maxsize=cutout_cache_size)(self._load_cutout)
        self._paths: dict[int, Path] = {}
        self._records: dict[int, dict] = {}
        self._unreadable: dict[int, BadRecord] = {}
        self._local = threading.local()
        self._pools: dict[int, np.ndarray] = {}
        self._counts: dict[int, int] | None = None

    def cutout_counts(self) -> dict[int, int]:
        """Cutouts per category (the schedule's ``counts``), computed once per worker."""
        if self._counts is None:
            self._counts = {c: len(self.cutout_pool(c)) for c in self.bank.cutout_categories()}
        return self._counts

    def cutout_pool(self, category_id: int) -> np.ndarray:
        """``bank.cutouts(category_id)`` as a plain array, read from the memory map once per worker."""
        pool = self._pools.get(category_id)
        if pool is None:
            pool = self._pools[category_id] = _read_only(np.array(self.bank.cutouts(category_id)))
        return pool

    def scratch(self, shape: tuple[int, ...]) -> np.ndarray:
        """A uint8 array of ``shape`` to compose into, reused by this thread (its pages are already mapped).

        Its contents are overwritten by the next call from the same thread: use them before that.
        """
        buffer = getattr(self._local, "scratch", None)
        if buffer is None or buffer.shape != tuple(shape):
            buffer = self._local.scratch = np.empty(shape, np.uint8)
        return buffer

    def record(self, image_index: int) -> dict:
        """``bank.image_record(image_index)``, read from the memory map once per worker (do not change it)."""
        record = self._records.get(image_index)
        if record is None:
            if len(self._records) >= 65536:
                self._records.clear()
            record = self._records[image_index] = self.bank.image_record(image_index)
        return record

    def path(self, image_index: int) -> Path:
        """``record_image_path`` of a source image, once per worker."""
        path = self._paths.get(image_index)
        if path is None:
            path = record_image_path(self.image_root, self.record(image_index))
            if len(self._paths) >= 65536:
                self._paths.clear()
            self._paths[image_index] = path
        return path

    def _load(self, image_index: int) -> np.ndarray:
        record = self.record(image_index)
        return _read_only(read_image(self.path(image_index), (record["height"], record["width"]), bgr=True))

    def image(self, image_index: int) -> np.ndarray:
        """The decoded image (BGR, read-only); an unreadable one raises its :class:`BadRecord` again without
        being read again (a bad file drawn as background many times is decoded, and reported, once)."""
        failed = self._unreadable.get(image_index)
        if failed is not None:
            raise failed.with_traceback(None)  # not the tracebacks of every earlier raise
        try:
            return self._cached(image_index)
        except BadRecord as exc:
            self._unreadable[image_index] = exc
            raise

    def _load_masks(self, image_index: int) -> list:
        record = self.record(image_index)
        out = []
        for ann in self.bank.image_annotations(image_index):
            x, y, w, h = (int(v) for v in ann["bbox"])  # the bank's bbox is its mask's own
            ann["box"] = (y, x, y + h, x + w)
            out.append((ann, _MaskCrop(ann["segmentation"], record["height"], record["width"])))
        return out

    def instances(self, image_index: int) -> list[tuple[dict, "_MaskCrop"]]:
        """Each annotation of an image, in the bank's order: the bank's annotation ('segmentation' is
        ``masks.encode`` of its mask, 'bbox' its tight box) plus 'box', that box as (y0, x0, y1, x1); and
        a function that decodes its mask's (box, crop) once, when first called. Cached: do not change them."""
        return self._masks(image_index)

    def _load_cutout(self, annotation_index: int, margin: int) -> tuple[np.ndarray, np.ndarray, dict]:
        ann = self.bank.annotation(annotation_index)
        x, y, w, h = (int(v) for v in ann["bbox"])
        stored = self._stored_crop(annotation_index, ann["image_index"], (y, x, y + h, x + w), margin)
        if stored is not None:  # the store holds RGB
            (rgb, crop), box = stored, (y, x, y + h, x + w)
            pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        else:  # not in the store (or no store): decode the mask and the source image (BGR here; the store's
            # build decoded it as RGB)
            record = self.record(ann["image_index"])
            box, crop = masks.decode_crop(ann["segmentation"], record["height"], record["width"])
            if box is None:
                box = (0, 0, 0, 0)
            pixels = context_crop(self.image(ann["image_index"]), box, margin)
        mask = np.zeros((box[2] - box[0] + 2 * margin, box[3] - box[1] + 2 * margin), bool)
        mask[margin:margin + crop.shape[0], margin:margin + crop.shape[1]] = crop
        return _read_only(pixels), _read_only(mask), ann

    def _stored_crop(self, annotation_index: int, image_index: int, box, margin: int
                     ) -> tuple[np.ndarray, np.ndarray] | None:
        if self.pixels is None or not self.pixels.stored(annotation_index):
            return None
        try:
            path = self.path(image_index)
        except BadRecord:
            return None
        return self.pixels.crop(annotation_index, image_index, box, margin, path)

    def cutout(self, annotation_index: int, margin: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """(pixel crop (BGR), mask crop, annotation) of a complete instance, with ``margin`` px of context."""
        pixels, mask, ann = self._cutouts(annotation_index, margin)
        return pixels, mask, dict(ann)


class _MaskCrop:
    """A source mask's (box, crop) from :func:`masks.decode_crop`, decoded on the first call only. Generation
    never calls it (:func:`compose_boxed`'s encoded mode works on the source's encoding); a caller of
    ``compose_boxed`` that wants crops does, for the instances a pasted object's box meets."""

    def __init__(self, segmentation: dict, height: int, width: int):
        self._args, self._value = (segmentation, height, width), None

    def __call__(self) -> tuple[tuple[int, int, int, int] | None, np.ndarray]:
        if self._value is None:
            box, crop = masks.decode_crop(*self._args)
            self._value = box, _read_only(crop)
        return self._value


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
