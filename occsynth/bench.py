"""`occsynth bench`: generation speed against the I/O floor, and bank building at COCO-train scale.

These machines are noisy, so every figure is a ratio against a baseline measured in the same
run on the same images:

* floor = read + decode the background image and encode the output JPEG, nothing else: no
  generator can beat it, so ``generation / floor`` says how much of the work is compositing;
* scaling = images/s with all workers over images/s with one;
* bank = peak RSS and wall time of building the cutout bank from a synthetic COCO-train-size
  file (118k images, 860k polygon instances), against streaming the same file once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from . import masks
from .atomic import open_atomic, write_json
from .bank import Bank, ensure_bank
from .coco import encode_image, read_dataset, read_image, resolve_image_path
from .generate import RunSettings, generate
from .schedule import class_schedule, plan_image


def upscaled_source(ann_path: str | os.PathLike, image_root: str | os.PathLike, out_dir: str | os.PathLike,
                    long_side: int = 640) -> tuple[Path, Path]:
    """A copy of a small source set resized to COCO-like image sizes (masks resized exactly).

    The demo photos are small; timing on them would measure per-image overhead rather than the
    pixel work that dominates on COCO's 640 px images.
    """
    out_dir = Path(out_dir)
    ann_out, root_out = out_dir / "annotations.json", out_dir / "images"
    if ann_out.exists():
        return ann_out, root_out
    data = read_dataset(ann_path)
    sizes = {}
    for image in data["images"]:
        scale = long_side / max(image["height"], image["width"])
        h, w = round(image["height"] * scale), round(image["width"] * scale)
        rgb = read_image(resolve_image_path(image_root, image["file_name"]))
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        path = root_out / image["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_image(rgb, ".jpg", 95))
        sizes[image["id"]] = (image["height"], image["width"], h, w)
        image["height"], image["width"] = h, w
    for ann in data["annotations"]:
        h0, w0, h, w = sizes[ann["image_id"]]
        mask = masks.resize(masks.decode(ann["segmentation"], h0, w0), (h, w))
        ann["segmentation"] = masks.encode(mask)
        ann["area"], ann["bbox"] = masks.area(mask), masks.bbox(mask)
    write_json(ann_out, data)
    return ann_out, root_out


def _floor_chunk(paths: list[str], quality: int) -> int:
    for path in paths:
        rgb = read_image(path)
        encode_image(rgb, ".jpg", quality)
    return len(paths)


def floor_images_per_second(paths: list[str], workers: int, quality: int = 95) -> float:
    """Images/s of read + decode + JPEG encode alone, over ``workers`` processes."""
    start = time.perf_counter()
    if workers <= 1:
        _floor_chunk(paths, quality)
    else:
        from joblib import Parallel, delayed
        chunks = [paths[i::workers * 4] for i in range(workers * 4)]
        Parallel(n_jobs=workers)(delayed(_floor_chunk)(c, quality) for c in chunks if c)
    return len(paths) / (time.perf_counter() - start)


def bench_generation(ann_path: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None, *,
                     num_images: int = 96, workers: int = 2, seed: int = 0, long_side: int | None = 640,
                     work_dir: str | os.PathLike | None = None) -> dict:
    """Floor vs full generation, one worker and ``workers`` workers, on the same images."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        if ann_path is None:
            from .demo import demo_source
            ann_path, image_root = demo_source()
        if long_side:
            ann_path, image_root = upscaled_source(ann_path, image_root, tmp / "source", long_side)
        cache = tmp / "cache"
        settings = RunSettings(num_images=num_images, seed=seed)
        bank = Bank.load(ensure_bank(Path(ann_path), cache, settings.bank, progress=False))
        schedule = class_schedule(bank.cutout_categories(), num_images, seed, settings.composite)
        counts = {c: len(bank.cutouts(c)) for c in bank.cutout_categories()}
        paths = []
        for i in range(num_images):
            plan = plan_image(schedule, i, seed, bank.num_images, counts, settings.composite)
            paths.append(str(resolve_image_path(image_root, bank.image_record(plan["background"])["file_name"])))
        # warm the page cache and the worker pool start-up out of the timings
        floor_images_per_second(paths[:8], 1)
        result = {"num_images": num_images, "workers": workers, "cpu_count": os.cpu_count(),
                  "image_size": _mean_size(bank)}
        for n in (1, workers):
            floor = floor_images_per_second(paths, n)
            start = time.perf_counter()
            generate(tmp / f"out-{n}", settings, ann_path=ann_path, image_root=image_root, workers=n,
                     cache_dir=cache, progress=False)
            gen = num_images / (time.perf_counter() - start)
            result[f"workers_{n}"] = {"floor_images_per_s": round(floor, 2), "generate_images_per_s": round(gen, 2),
                                      "ratio_to_floor": round(gen / floor, 3)}
        result["scaling"] = round(result[f"workers_{workers}"]["generate_images_per_s"]
                                  / result["workers_1"]["generate_images_per_s"], 3)
        return result


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


def bench_bank(num_images: int = 118_287, num_annotations: int = 860_001, work_dir: str | os.PathLike | None = None,
               progress: bool = True) -> dict:
    """Peak RSS and time of building a bank from a synthetic COCO-train-size file, vs one streaming pass."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        ann = synthetic_coco_file(tmp / "instances.json", num_images, num_annotations)
        size_mib = ann.stat().st_size / 2 ** 20
        parse = _run_child("parse", ann, tmp / "unused")
        bank = _run_child("bank", ann, tmp / "bank")
        return {"images": num_images, "annotations": num_annotations, "json_mib": round(size_mib, 1),
                "stream_parse": parse, "bank": bank,
                "time_ratio_to_parse": round(bank["seconds"] / parse["seconds"], 2),
                "peak_rss_within_4gib": bank["peak_rss_mib"] <= 4096}
