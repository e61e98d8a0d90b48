"""`occsynth bench`: generation speed against the I/O floor, and bank building at COCO-train scale.

These machines are noisy, so every figure is a ratio against a baseline measured in the same
run on the same images:

* floor = read + decode each output image's background JPEG and encode a JPEG of it (same
  quality), nothing else: no generator can beat it. It runs as generation runs (same chunks,
  same worker pool, started before any timing), so ``generation / floor`` says how much of the
  work is everything else: the cutouts' pixels (crops copied from the pixel store, built before any
  timing as the bank is; or their whole source images with ``cutout_pixels=False``), masks,
  compositing, annotations, writing files and the final merge;
* floor with writes = the floor plus writing each encoded image to its own file as generation
  does (atomic, fsynced, from a background thread). Not a target, a diagnosis: the gap between the
  two floors is what generation's write path (one fsynced file per image) costs on that disk
  (creating files is slow on some file systems);
* scaling = generation images/s with all workers over images/s with one. "One worker" is one
  core: it runs with OpenCV single-threaded, as every worker of a parallel run does, and pinned to
  one CPU (Linux), so that its image-writing thread and the kernel work of its writes cannot borrow
  another core, as they cannot when every core runs a worker. The same ratio for a pure-CPU busy
  loop (``machine_scaling``) says how many free cores the machine had;
* bank = peak RSS and wall time of building the cutout bank from a synthetic COCO-train-size
  file (118k images, 860k polygon instances), against streaming the same file once.

The default source is the embedded demo set made COCO-like (:func:`textured_source`): its
scenes at 640 px with the high-frequency detail of full-resolution photos added, and as many
distinct image files as images generated, so that neither the JPEG codec nor the per-worker
caches get a much easier job than on COCO (backgrounds are drawn at random, so a few repeat).
The report gives the image size, the number of distinct backgrounds and the mean JPEG sizes so
a reader can judge (COCO train2017 averages about 160 kB per image of about 640 x 480).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import masks
from .atomic import BackgroundWriter, open_atomic, require_room, write_json
from .backends import backend_session
from .bank import Bank, CutoutPixels, ensure_bank, ensure_cutout_pixels
from .coco import encode_image, index_dataset, read_dataset, read_image, resolve_image_path
from .errors import BadRecord, OccsynthError, SkipLog, plural, why_none_usable
from .generate import MAX_IMAGES, RunSettings, _finished_chunks, generate
from .schedule import class_schedule, plan_image

TEXTURE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def upscaled_source(ann_path: str | os.PathLike, image_root: str | os.PathLike, out_dir: str | os.PathLike,
                    long_side: int = 640) -> tuple[Path, Path]:
    """A copy of a small source set resized to COCO-like image sizes (masks resized exactly).

    Upsampled pixels are smooth, so their JPEGs are cheaper to decode and encode than photos;
    :func:`textured_source` adds real detail.
    """
    return textured_source(ann_path, image_root, out_dir, long_side, copies=1, texture=False)


def textured_source(ann_path: str | os.PathLike, image_root: str | os.PathLike, out_dir: str | os.PathLike,
                    long_side: int | None = 640, copies: int = 1, texture: bool = True, seed: int = 0) -> tuple[Path, Path]:
    """``copies`` copies of a small source set at COCO-like size, each image with its own photo detail.

    Every image is resized to ``long_side`` (None: kept; masks by nearest neighbour, exactly as annotated) and,
    with ``texture``, gets the high-frequency part (image minus its blur) of a full-resolution
    scikit-image photo, tiled at native resolution from a random offset. Scene layout and colours
    stay those of the source, the annotations stay exact, and the files decode and compress like
    photographs. Copy ``c`` of image ``id`` gets id ``c * (max id) + id``.
    """
    out_dir = Path(out_dir)
    ann_out, root_out = out_dir / "annotations.json", out_dir / "images"
    if ann_out.exists():
        return ann_out, root_out
    data = read_dataset(ann_path, finite=True)  # copied fields: the output must stay JSON
    rng = np.random.default_rng(seed)
    details = [_detail(name) for name in TEXTURE_PHOTOS] if texture else []
    # records generation would skip are left out here (bad records, masks that do not decode), so that a
    # real source with a few of them (COCO has some) can be measured; the images themselves must be readable
    image_log = SkipLog()  # the image records alone: their faults, not the annotations of images left out
    if not index_dataset({**data, "annotations": []}, image_log)[0]:
        # said of the user's file: the bank would name the copy written below, in a temporary folder
        raise OccsynthError(f"{ann_path}: no valid image records ({why_none_usable(image_log)})")
    by_id, _, by_image = index_dataset(data, SkipLog())
    max_id = max(by_id, default=0)
    max_ann = max((a["id"] for anns in by_image.values() for a in anns), default=0)
    images, annotations = [], []
    for image in by_id.values():
        scale = long_side / max(image["height"], image["width"]) if long_side else 1.0
        h, w = round(image["height"] * scale), round(image["width"] * scale)
        try:
            base = cv2.resize(read_image(resolve_image_path(image_root, image["file_name"])), (w, h),
                              interpolation=cv2.INTER_LINEAR)
        except BadRecord as exc:
            raise exc.in_file(ann_path) from None
        resized = []
        for ann in by_image[image["id"]]:
            try:
                mask = masks.decode(ann["segmentation"], image["height"], image["width"])
            except (ValueError, TypeError, KeyError):  # masks.DegenerateMask is a ValueError
                continue
            mask = masks.resize(mask, (h, w))
            resized.append({**ann, "segmentation": masks.encode(mask), "area": masks.area(mask),
                            "bbox": masks.bbox(mask)})
        for c in range(copies):
            rgb = base
            if texture:
                detail = details[int(rng.integers(len(details)))]
                rgb = np.clip(base + _tile(detail, h, w, rng), 0, 255).astype(np.uint8)
            file_name = f"copy-{c:03d}/{image['file_name']}"
            path = root_out / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_image(rgb, ".jpg", 95))
            image_id = c * max_id + image["id"]
            images.append({**image, "id": image_id, "file_name": file_name, "height": h, "width": w})
            annotations += [{**a, "id": c * max_ann + a["id"], "image_id": image_id} for a in resized]
    data["images"], data["annotations"] = images, annotations
    write_json(ann_out, data)
    return ann_out, root_out


@functools.lru_cache(maxsize=None)
def _detail(name: str) -> np.ndarray:
    """High-frequency part of a bundled photo at native resolution (float32, zero mean)."""
    from skimage import data
    photo = getattr(data, name)()[..., :3].astype(np.float32)
    return photo - cv2.GaussianBlur(photo, (0, 0), sigmaX=3.0)


def _tile(detail: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    ph, pw = detail.shape[:2]
    y0, x0 = int(rng.integers(ph)), int(rng.integers(pw))
    reps = (math.ceil((h + y0) / ph), math.ceil((w + x0) / pw), 1)
    return np.tile(detail, reps)[y0:y0 + h, x0:x0 + w]


def _floor_chunk(paths: list[str], quality: int, chunk_size: int, write_to: str | None, chunk: int) -> int:
    """The floor's share of one generation chunk: decode each background, encode it as JPEG, both in
    OpenCV's BGR order as generation does, so nothing but the codec is timed (and with
    ``write_to``, write that JPEG there as generation writes its images: atomically, fsynced, from a
    background thread while the next image is made)."""
    first = chunk * chunk_size
    part = paths[first:first + chunk_size]
    with BackgroundWriter() as writes:  # starts no thread unless something is written
        for i, path in enumerate(part, first):
            encoded = encode_image(read_image(path, bgr=True), ".jpg", quality, bgr=True)  # no conversions
            if write_to is not None:
                writes.submit(Path(write_to) / f"{i:06d}.jpg", encoded)
    return len(part)


def _noop(chunk: int) -> int:
    return 0


def floor_images_per_second(paths: list[str], workers: int, quality: int = 95, chunk_size: int = 16,
                            backend: str = "loky", write_to: str | os.PathLike | None = None) -> float:
    """Images/s of read + decode + JPEG encode alone, chunked and run exactly as generation runs them.

    ``write_to``: a folder to also write each encoded image into (one file per image, as generation
    does), to show what the output disk adds to the floor.
    """
    settings = RunSettings(num_images=len(paths), seed=0, chunk_size=chunk_size)
    task = functools.partial(_floor_chunk, paths, quality, chunk_size, None if write_to is None else str(write_to))
    start = time.perf_counter()
    _run_all(task, settings.num_chunks, settings, workers, backend)
    return len(paths) / (time.perf_counter() - start)


@contextlib.contextmanager
def one_cpu() -> Iterator[bool]:
    """Run the block (this thread, and the threads it starts) on one allowed CPU; yields whether it could.

    Processes started inside it inherit the pin: start worker pools outside it.
    """
    try:
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(allowed)})
    except (AttributeError, OSError):  # no affinity on this OS, or a cpuset that refuses it
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setaffinity(0, allowed)


def _busy_chunk(iterations: int, chunk: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i
    return 1


def machine_scaling(workers: int, chunks: int = 16, iterations: int = 1_500_000, backend: str = "loky") -> float:
    """Speed-up of a pure-CPU task with ``workers`` workers over one, run like generation.

    On a machine shared with other work this is below ``workers``: it is the scaling the machine
    has to offer at that moment, which generation's scaling should be judged against.
    """
    task = functools.partial(_busy_chunk, iterations)
    settings = RunSettings(num_images=chunks, seed=0, chunk_size=1)
    times = []
    for n in (1, workers):
        with one_cpu() if n == 1 else contextlib.nullcontext():
            start = time.perf_counter()
            _run_all(task, chunks, settings, n, backend)
            times.append(time.perf_counter() - start)
    return times[0] / times[1]


def warm_pool(workers: int, backend: str = "loky") -> None:
    """Start the worker pool that generation reuses (loky keeps it), outside any timing."""
    settings = RunSettings(num_images=workers * 4, seed=0, chunk_size=1)
    _run_all(_noop, workers * 4, settings, workers, backend)


def _run_all(task, chunks: int, settings: RunSettings, workers: int, backend: str) -> None:
    with backend_session(backend, None, workers):
        for _ in _finished_chunks(task, list(range(chunks)), settings, workers, backend, False):
            pass


def bench_generation(ann_path: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None, *,
                     num_images: int = 1200, workers: int = 2, seed: int = 0, long_side: int | None = 640,
                     copies: int | None = None, work_dir: str | os.PathLike | None = None,
                     cutout_pixels: bool = True, repeat: int = 3, progress: bool = True) -> dict:
    """Floor vs full generation, one worker and ``workers`` workers, on the same images.

    Each of the six (floor, floor with writes and generation, with one worker and with ``workers``) is
    measured ``repeat`` times, the worker counts taking turns, and the best
    run of each is reported (all runs are under ``runs``).

    The bank and (with ``cutout_pixels``) the cutout pixel store are built before any timing, as a
    second run over the same source finds them cached. ``cutout_pixels=False`` measures generation
    decoding every cutout's source image instead.

    Without ``ann_path`` the demo source is used, made COCO-like by :func:`textured_source` with
    ``copies`` copies (default: as many source images as images generated, so that most images
    and cutouts are decoded fresh, as on COCO). With ``ann_path`` and ``long_side``, that source is
    only resized (:func:`upscaled_source`); its own pixels are used. ``progress``: which step runs, on stderr
    (:func:`steps`; the CLI's --quiet turns it off); a bar moves only between measurements, never during one.
    """
    settings = RunSettings(num_images=num_images, seed=seed)  # checked before the source copies are written
    counts_of = sorted({1, workers})
    check_generation_bench_room(num_images, 2 * len(counts_of) * repeat, work_dir)
    total = 2 + cutout_pixels + repeat * (3 * len(counts_of) + (workers > 1))
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp, steps(total, progress) as step:
        tmp = Path(tmp)
        step("source")
        if ann_path is None:
            from .demo import demo_source
            ann_path, image_root = demo_source()
            if copies is None:
                copies = max(1, math.ceil(num_images / len(read_dataset(ann_path)["images"])))
            ann_path, image_root = textured_source(ann_path, image_root, tmp / "source", long_side, copies=copies)
        elif long_side:
            ann_path, image_root = upscaled_source(ann_path, image_root, tmp / "source", long_side)
        cache = tmp / "cache"
        step("bank")
        bank_dir = ensure_bank(Path(ann_path), cache, settings.bank, progress=False)
        bank = Bank.load(bank_dir)
        pixels_meta = None
        if cutout_pixels:
            step("cutout pixels")
            start = time.perf_counter()
            pixels_dir = ensure_cutout_pixels(bank_dir, image_root, cache, progress=False, workers=workers)
            pixels_seconds = time.perf_counter() - start
            with CutoutPixels.load(pixels_dir) as pixels:
                pixels_meta = pixels.meta
        schedule = class_schedule(bank.cutout_categories(), num_images, seed, settings.composite)
        counts = {c: len(bank.cutouts(c)) for c in bank.cutout_categories()}
        paths = []
        for i in range(num_images):
            plan = plan_image(schedule, i, seed, bank.num_images, counts, settings.composite)
            paths.append(str(resolve_image_path(image_root, bank.image_record(plan["background"])["file_name"])))
        for p in set(paths):  # page cache: both measurements read warm files
            Path(p).read_bytes()
        result = {"num_images": num_images, "workers": workers, "cpu_count": os.cpu_count(),
                  "work_dir": str(tmp.resolve().parent), "work_dir_filesystem": filesystem_type(tmp),
                  "work_dir_ext4_without_journal": ext4_without_journal(tmp),
                  "image_size": _mean_size(bank), "source_images": bank.num_images,
                  "distinct_backgrounds": len(set(paths)),
                  "mean_background_jpeg_bytes": int(np.mean([os.path.getsize(p) for p in paths])),
                  "cutout_pixels": None if pixels_meta is None else {
                      "cutouts": pixels_meta["num_stored"], "mib": round(pixels_meta["blob_bytes"] / 2 ** 20, 1),
                      "build_seconds": round(pixels_seconds, 2)}}
        runs = {n: {"floor": [], "floor_with_writes": [], "generate": []} for n in counts_of}
        machine = []
        threads = cv2.getNumThreads()
        try:
            # the worker counts take turns, so that a busy spell on a shared machine hits each of them
            for rep in range(repeat):
                for n in counts_of:
                    # one worker = one core: OpenCV's own threads would borrow the others (workers run it
                    # single-threaded), and so would its writing thread and its writes' kernel work (pinned)
                    cv2.setNumThreads(1 if n == 1 else threads)
                    if n > 1:
                        warm_pool(n)  # unpinned: the pool's processes inherit the pin of whoever starts them
                    _write_back()
                    step(f"floor, {plural(n, 'worker')} (run {rep + 1} of {repeat})")
                    with one_cpu() if n == 1 else contextlib.nullcontext() as pinned:
                        runs[n]["floor"].append(floor_images_per_second(paths, n, settings.jpeg_quality,
                                                                        settings.chunk_size))
                        written = tmp / f"floor-{n}-{rep}"
                        written.mkdir()
                        _write_back()
                        step(f"floor with writes, {plural(n, 'worker')} (run {rep + 1} of {repeat})")
                        runs[n]["floor_with_writes"].append(floor_images_per_second(
                            paths, n, settings.jpeg_quality, settings.chunk_size, write_to=written))
                        out = tmp / f"out-{n}-{rep}"  # a fresh folder: the same one would resume as finished
                        _write_back()
                        step(f"generate, {plural(n, 'worker')} (run {rep + 1} of {repeat})")
                        start = time.perf_counter()
                        generate(out, settings, ann_path=ann_path, image_root=image_root, workers=n,
                                 cache_dir=cache, progress=False, cutout_pixels=cutout_pixels)
                        runs[n]["generate"].append(num_images / (time.perf_counter() - start))
                    if n == 1:
                        result["one_worker_pinned"] = bool(pinned)
                    result["mean_output_jpeg_bytes"] = int(np.mean([p.stat().st_size
                                                                    for p in (out / "images").iterdir()]))
                if workers > 1:
                    step(f"machine scaling (run {rep + 1} of {repeat})")
                    machine.append(machine_scaling(workers))
        finally:
            cv2.setNumThreads(threads)
        # the best of the repeats: other work on the machine only ever slows a run down
        for n in counts_of:
            floor, gen = max(runs[n]["floor"]), max(runs[n]["generate"])
            floor_writes = max(runs[n]["floor_with_writes"])
            result[f"workers_{n}"] = {"floor_images_per_s": round(floor, 2), "generate_images_per_s": round(gen, 2),
                                      "ratio_to_floor": round(gen / floor, 3),
                                      "floor_with_writes_images_per_s": round(floor_writes, 2),
                                      "ratio_to_floor_with_writes": round(gen / floor_writes, 3),
                                      "runs": {k: [round(v, 2) for v in vs] for k, vs in runs[n].items()}}
        if machine:
            result["machine_scaling"] = round(max(machine), 3)
        result["repeat"] = repeat
        result["scaling"] = round(result[f"workers_{workers}"]["generate_images_per_s"]
                                  / result["workers_1"]["generate_images_per_s"], 3)
        return result


GENERATION_BENCH_BYTES_PER_IMAGE = 200_000  # a 640 px JPEG at quality 95 of photo-like detail: 110-170 kB


def check_generation_bench_room(num_images: int, kept_sets: int, work_dir: str | os.PathLike | None) -> None:
    """Refuse a work folder without room for the source copies and the ``kept_sets`` sets of ``num_images`` images a
    bench keeps until its end, before anything is written (a large --num-images filled the disk mid-run)."""
    require_room(work_dir if work_dir is not None else tempfile.gettempdir(),
                 (1 + kept_sets) * num_images * GENERATION_BENCH_BYTES_PER_IMAGE,
                 f"bench: the source copies and {kept_sets} sets of {plural(num_images, 'image')} kept until the end "
                 "need about", "give a smaller --num-images or --repeat, or a --work-dir on a larger disk")


@contextlib.contextmanager
def steps(total: int, progress: bool = True) -> Iterator[Callable[[str], None]]:
    """A bar over ``total`` steps on stderr (unless not ``progress``, as every command's bars):
    ``step(name)`` counts the step before as done and names the one that starts. The bar is drawn only then,
    between the measurements, so it takes no time from them."""
    with tqdm(total=total, desc="bench", unit="step", disable=not progress, mininterval=0) as bar:
        started = False

        def step(name: str) -> None:
            nonlocal started
            bar.set_description_str(f"bench: {name}", refresh=not started)
            if started:
                bar.update()
            started = True

        yield step
        if started:
            bar.update()


def filesystem_type(path: str | os.PathLike, mounts: str | os.PathLike = "/proc/mounts") -> str | None:
    """The type of the file system holding ``path`` (e.g. 'ext4', 'tmpfs'), from the Linux mount table;
    None where there is none. The bench's writes cost what that file system makes them cost."""
    mount = _mount_of(path, mounts)
    return None if mount is None else mount[1]


def _mount_of(path: str | os.PathLike, mounts: str | os.PathLike) -> tuple[str, str] | None:
    """(device, type) of the deepest mount holding ``path`` in the mount table ``mounts``; None without one."""
    try:
        table = Path(mounts).read_bytes()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, found = -1, None
    unescape = functools.partial(re.sub, rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]))
    for line in table.split(b"\n"):
        fields = line.split()
        if len(fields) < 3:
            continue
        # the table writes space, tab, newline and backslash in a mount point as octal escapes (\040, ...)
        point = os.fsdecode(unescape(fields[1]))
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # the deepest mount point; of two on one point, the later one
            best, found = len(point), (os.fsdecode(unescape(fields[0])), os.fsdecode(fields[2]))
    return found


def ext4_without_journal(path: str | os.PathLike, mounts: str | os.PathLike = "/proc/mounts",
                         journals: str | os.PathLike = "/proc/fs/jbd2") -> bool:
    """Whether ``path`` is on an ext4 file system mounted without a journal (Linux; False when unsure).

    There, ext4 does not reuse an inode deleted less than a minute ago (six while its inode-table block is
    unwritten) and walks past each one to find a free inode: for minutes after many files are deleted,
    creating a file costs several times more, and so does writing a generated set. A journaled ext4 mount
    has a folder ``<device>-8`` in ``journals``; the device is the mount's, with its links resolved
    (/dev/mapper/x is dm-N there).
    """
    mount = _mount_of(path, mounts)
    if mount is None or mount[1] != "ext4" or not Path(journals).is_dir():
        return False
    device = Path(mount[0])
    if not device.exists():  # /dev/root and the like: the journal's name cannot be told
        return False
    return not (Path(journals) / f"{device.resolve().name}-8").exists()


def _write_back() -> None:
    """Put on disk what earlier steps left in the page cache (the source copies, the last run's
    images), so that its write-back does not land in, and slow, the next measurement."""
    if hasattr(os, "sync"):
        os.sync()


def _mean_size(bank: Bank) -> list[int]:
    sizes = np.array([[bank.image_record(i)["height"], bank.image_record(i)["width"]]
                      for i in range(bank.num_images)])
    return [int(v) for v in sizes.mean(0).round()]


# ------------------------------------------------------------------ bank at scale


def synthetic_coco_file(path: str | os.PathLike, num_images: int = 118_287, num_annotations: int = 860_001,
                        num_categories: int = 80, seed: int = 0) -> Path:
    """Write a COCO-train-size instances JSON of random polygons (streamed; ~0.4 GB at full size).

    Polygons have 12-40 vertices like COCO's; a share of instances overlap or touch the border so
    that completeness filtering does real work.
    """
    rng = np.random.default_rng(seed)
    path = Path(path)
    from .categories import COCO_CATEGORIES
    categories = COCO_CATEGORIES[:num_categories]
    with open_atomic(path, "w") as f:
        f.write('{"info":{"description":"synthetic COCO-size file for occsynth bench"},"licenses":[],"images":[')
        for i in range(num_images):
            f.write(("," if i else "") + json.dumps({"id": i + 1, "file_name": f"{i + 1:012d}.jpg",
                                                    "height": 480, "width": 640}))
        f.write('],"categories":' + json.dumps(categories) + ',"annotations":[')
        per_image = np.bincount(rng.integers(num_images, size=num_annotations), minlength=num_images)
        ann_id = 0
        for image_index in rng.permutation(num_images):  # COCO files are not sorted by image
            for _ in range(per_image[image_index]):
                ann_id += 1
                cx, cy = rng.uniform(0, 640), rng.uniform(0, 480)
                r = rng.uniform(8, 90)
                k = int(rng.integers(12, 41))
                angles = np.sort(rng.uniform(0, 2 * np.pi, k))
                radii = r * rng.uniform(0.6, 1.0, k)
                xs = np.clip(cx + radii * np.cos(angles), 0, 639.9)
                ys = np.clip(cy + radii * np.sin(angles), 0, 479.9)
                poly = np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()
                x0, y0 = float(xs.min()), float(ys.min())
                ann = {"id": ann_id, "image_id": int(image_index) + 1,
                       "category_id": categories[int(rng.integers(len(categories)))]["id"],
                       "segmentation": [poly], "area": float(np.pi * r * r * 0.64), "iscrowd": 0,
                       "bbox": [round(x0, 2), round(y0, 2), round(float(xs.max()) - x0, 2),
                                round(float(ys.max()) - y0, 2)]}
                f.write(("," if ann_id > 1 else "") + json.dumps(ann))
        f.write("]}")
    return path


_CHILD = """
import json, resource, sys, time
from pathlib import Path
start = time.perf_counter()
mode, ann, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if mode == "bank":
    from occsynth.bank import BankOptions, build_bank
    meta = build_bank(ann, out, BankOptions(), progress=False)
    extra = {"kept": sum(meta["kept_per_category"].values()), "rejected": meta["rejected"]}
else:
    from occsynth.coco import iter_array
    extra = {"records": sum(1 for _ in iter_array(ann, "images")) + sum(1 for _ in iter_array(ann, "annotations"))}
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
"""


def _run_child(mode: str, ann: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(ann), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child ({mode}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


MAX_BANK_IMAGES = MAX_IMAGES  # what generate takes
MAX_BANK_ANNOTATIONS = 100_000_000  # over 100 times COCO train's 860k
# the synthetic file takes about 560 bytes per annotation (a polygon of 12-40 vertices) and 76 per image record, the
# bank built from it beside it about 330 per annotation
BANK_BENCH_BYTES = {"annotation": 1000, "image": 128}


def check_bank_bench(num_images: int, num_annotations: int, work_dir: str | os.PathLike | None) -> None:
    """Refuse sizes out of range, and a work folder without room for the synthetic file and its bank, before
    anything is written: such a file filled the disk record by record (or the annotations' draw ran out of memory
    after the images were written)."""
    for name, value, most in (("num_images", num_images, MAX_BANK_IMAGES),
                              ("num_annotations", num_annotations, MAX_BANK_ANNOTATIONS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise OccsynthError(f"bench --bank: {name} must be a whole number in 1..{most:,}, got {value!r}")
    require_room(work_dir if work_dir is not None else tempfile.gettempdir(),
                 num_annotations * BANK_BENCH_BYTES["annotation"] + num_images * BANK_BENCH_BYTES["image"],
                 f"bench --bank: the synthetic file of {plural(num_images, 'image')} and "
                 f"{plural(num_annotations, 'annotation')} and its bank need about",
                 "give fewer, or a --work-dir on a larger disk")


def bench_bank(num_images: int = 118_287, num_annotations: int = 860_001, work_dir: str | os.PathLike | None = None,
               progress: bool = True) -> dict:
    """Peak RSS and time of building a bank from a synthetic COCO-train-size file, vs one streaming pass."""
    check_bank_bench(num_images, num_annotations, work_dir)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp, steps(3, progress) as step:
        tmp = Path(tmp)
        step("write the synthetic file")
        ann = synthetic_coco_file(tmp / "instances.json", num_images, num_annotations)
        size_mib = ann.stat().st_size / 2 ** 20
        step("stream parse")
        parse = _run_child("parse", ann, tmp / "unused")
        step("bank build")
        bank = _run_child("bank", ann, tmp / "bank")
        return {"images": num_images, "annotations": num_annotations, "json_mib": round(size_mib, 1),
                "stream_parse": parse, "bank": bank,
                "time_ratio_to_parse": round(bank["seconds"] / parse["seconds"], 2),
                "peak_rss_within_4gib": bank["peak_rss_mib"] <= 4096}
