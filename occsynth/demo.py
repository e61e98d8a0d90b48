"""The embedded demo source: a small COCO-format set painted from scikit-image's bundled photos.

Nothing is downloaded: every picture comes from ``skimage.data`` files that ship with the
package. Backgrounds are photo crops; objects are textured shapes (the cat's face from
``chelsea`` as "cat", the cup of ``coffee`` as "cup", octagons as "stop sign", ...) painted
over them. An object's mask *is* the set of pixels painted for it, so the annotations are
exact by construction (JPEG only blurs colours). Objects painted later cover earlier ones; as
in COCO, the covered object's annotation is its visible part.

The set deliberately holds every input shape the tools must handle: polygons (multi-part
too), compressed RLE, an ``iscrowd=1`` region with uncompressed RLE, file names in
sub-folders, objects cut by the image border, overlapping pairs and tiny objects, plus at
least three complete (isolated, uncut, >= 1024 px) objects of every demo category.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from . import masks
from .atomic import build_dir_once, write_bytes, write_json
from .categories import COCO_CATEGORIES, COCO_IDS_BY_NAME
from .coco import encode_image
from .errors import plural
from .schedule import check_seed

DEMO_VERSION = "demo-v1"
NUM_IMAGES = 24
WIDTHS = (160, 176, 192, 200)          # height = 3/4 width: 120 .. 150 px
MIN_COMPLETE_AREA = 1100               # margin above the bank's default min_area (1024)
SPACING = 5                            # px kept free around objects that must not touch (> touch_margin)
CROWD_IMAGES = (3, 15)
DEMO_CATEGORIES = ("person", "cat", "cup", "sports ball", "clock", "donut", "pizza", "stop sign", "frisbee")


# ---------------------------------------------------------------- photos and textures


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """RGB uint8 of a bundled scikit-image photo (grey ones are stacked to RGB)."""
    from skimage import data
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def _crop(name: str, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    return _photo(name)[rows[0]:rows[1], cols[0]:cols[1]]


def _tint(rgb: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    grey = rgb.astype(np.float32).mean(axis=-1, keepdims=True) / 255.0
    return np.clip(grey * np.asarray(color, np.float32) * 1.3, 0, 255).astype(np.uint8)


def _stop_sign_texture() -> np.ndarray:
    letters = (_crop("text", (20, 150), (20, 150))[..., :1] < 110).astype(np.float32)
    red, white = np.array([200, 24, 30], np.float32), np.array([250, 250, 250], np.float32)
    return np.clip(red * (1 - letters) + white * letters, 0, 255).astype(np.uint8)


TEXTURES: dict[str, Callable[[], np.ndarray]] = {
    "person": lambda: _crop("astronaut", (10, 512), (20, 370)),
    "cat": lambda: _crop("chelsea", (0, 300), (20, 420)),
    "cup": lambda: _crop("coffee", (15, 310), (165, 420)),
    "sports ball": lambda: _tint(_crop("gravel", (0, 200), (0, 200)), (235, 120, 30)),
    "clock": lambda: _tint(_crop("clock", (20, 280), (70, 330)), (235, 230, 210)),
    "donut": lambda: _crop("coffee", (300, 400), (420, 600)),
    "pizza": lambda: _crop("immunohistochemistry", (0, 250), (0, 260)),
    "stop sign": _stop_sign_texture,
    "frisbee": lambda: _crop("colorwheel", (60, 310), (60, 310)),
}

BACKGROUNDS: tuple[tuple[str, tuple[int, int], tuple[int, int], tuple[int, int, int] | None], ...] = (
    ("grass", (0, 512), (0, 512), (120, 190, 90)),
    ("gravel", (0, 512), (0, 512), (190, 170, 150)),
    ("brick", (0, 512), (0, 512), (200, 120, 90)),
    ("moon", (0, 512), (0, 512), (180, 180, 190)),
    ("hubble_deep_field", (0, 872), (0, 1000), None),
    ("rocket", (0, 240), (0, 640), None),
    ("coffee", (0, 400), (440, 600), None),
    ("astronaut", (0, 170), (300, 512), None),
)


def _resized(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(patch, (max(width, 1), max(height, 1)), interpolation=cv2.INTER_AREA)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    name, rows, cols, tint = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    photo = _crop(name, rows, cols)
    ph, pw = photo.shape[:2]
    scale = min(float(rng.uniform(1.0, 2.5)), ph / height, pw / width)
    ch, cw = max(int(height * scale), 1), max(int(width * scale), 1)
    y0, x0 = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
    out = _resized(photo[y0:y0 + ch, x0:x0 + cw], height, width)
    return _tint(out, tint) if tint else out


# ---------------------------------------------------------------- shapes
# Each returns (mask, polygons or None). Polygon shapes are rasterised with pycocotools, so a
# polygon annotation decodes to exactly the painted pixels.


def _ellipse(h: int, w: int, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xs - cx, ys - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _poly_mask(h: int, w: int, polygons: list[list[float]]) -> np.ndarray:
    return masks.decode(polygons, h, w)


def _regular(cx: float, cy: float, rx: float, ry: float, n: int, angle: float, start: float = 0.0) -> list[float]:
    c, s = np.cos(angle), np.sin(angle)
    pts = []
    for k in range(n):
        t = start + 2 * np.pi * k / n
        x, y = rx * np.cos(t), ry * np.sin(t)
        pts += [round(cx + c * x - s * y, 2), round(cy + s * x + c * y, 2)]
    return pts


def _shape(category: str, h: int, w: int, cx: float, cy: float, r: float,
           rng: np.random.Generator) -> tuple[np.ndarray, list[list[float]] | None]:
    angle = float(rng.uniform(-0.5, 0.5))
    if category == "person":
        head = _ellipse(h, w, cx, cy - 0.55 * r, 0.33 * r, 0.4 * r)
        body = _ellipse(h, w, cx, cy + 0.35 * r, 0.75 * r, 0.65 * r) & (np.mgrid[0:h, 0:w][0] <= cy + 0.9 * r)
        return head | body, None
    if category == "cat":
        head = _ellipse(h, w, cx, cy + 0.1 * r, 0.95 * r, 0.8 * r, angle * 0.3)
        ears = [[cx - 0.85 * r, cy - 0.2 * r, cx - 0.65 * r, cy - 1.0 * r, cx - 0.2 * r, cy - 0.6 * r],
                [cx + 0.85 * r, cy - 0.2 * r, cx + 0.65 * r, cy - 1.0 * r, cx + 0.2 * r, cy - 0.6 * r]]
        return head | _poly_mask(h, w, ears), None
    if category == "cup":
        ys, xs = np.mgrid[0:h, 0:w]
        t = (ys - (cy - 0.6 * r)) / (1.4 * r)
        half = 0.75 * r - 0.2 * r * t
        body = (t >= 0) & (t <= 1) & (np.abs(xs - cx - 0.1 * r) <= half)
        rim = _ellipse(h, w, cx + 0.1 * r, cy - 0.6 * r, 0.75 * r, 0.2 * r)
        handle = _ellipse(h, w, cx - 0.75 * r, cy, 0.35 * r, 0.35 * r) & ~_ellipse(h, w, cx - 0.75 * r, cy, 0.18 * r, 0.18 * r)
        return body | rim | handle, None
    if category in ("sports ball", "clock"):
        return _ellipse(h, w, cx, cy, r, r), None
    if category == "donut":
        return _ellipse(h, w, cx, cy, r, 0.9 * r, angle) & ~_ellipse(h, w, cx, cy, 0.38 * r, 0.34 * r, angle), None
    if category == "stop sign":
        polygons = [_regular(cx, cy, r, r, 8, 0.0, np.pi / 8)]
        return _poly_mask(h, w, polygons), polygons
    if category == "frisbee":
        polygons = [_regular(cx, cy, 1.1 * r, 0.7 * r, 24, angle)]
        return _poly_mask(h, w, polygons), polygons
    if category == "pizza":   # two slices with a small gap: one instance, a two-part polygon
        ox, oy, up = cx, cy + 0.7 * r, -np.pi / 2 + angle
        polygons = []
        for a0, a1 in ((up - 0.6, up - 0.04), (up + 0.04, up + 0.6)):
            pts = [round(ox, 2), round(oy, 2)]
            for t in np.linspace(a0, a1, 5):
                pts += [round(ox + 1.6 * r * np.cos(t), 2), round(oy + 1.6 * r * np.sin(t), 2)]
            polygons.append(pts)
        return _poly_mask(h, w, polygons), polygons
    raise ValueError(f"no demo shape for {category!r}")


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _inside(mask: np.ndarray, margin: int) -> bool:
    x, y, bw, bh = masks.bbox(mask)
    h, w = mask.shape
    return bw > 0 and x >= margin and y >= margin and x + bw <= w - margin and y + bh <= h - margin


# ---------------------------------------------------------------- scenes


def _scene(index: int, seed: int) -> tuple[int, int, np.ndarray, list[dict]]:
    """One image: (height, width, background RGB, objects in paint order)."""
    rng = np.random.default_rng([seed, index])
    width = int(WIDTHS[int(rng.integers(len(WIDTHS)))])
    height = width * 3 // 4
    background = _background(rng, height, width)
    objects: list[dict] = []
    occupied = np.zeros((height, width), bool)

    def place(category: str, sizes: tuple[float, float], *, complete: bool = False, center=None,
              tries: int = 300, accept=None) -> dict | None:
        nonlocal occupied
        for _ in range(tries):
            r = float(rng.uniform(*sizes))
            if center is None:
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            else:
                cx, cy = center(r)
            mask, polygons = _shape(category, height, width, float(cx), float(cy), r, rng)
            if not mask.any():
                continue
            if complete and (masks.area(mask) < MIN_COMPLETE_AREA or not _inside(mask, SPACING)):
                continue
            if accept is not None and not accept(mask):
                continue
            if accept is None and np.any(_dilate(mask, SPACING) & occupied):
                continue
            obj = {"category": category, "mask": mask, "polygons": polygons, "iscrowd": 0}
            objects.append(obj)
            occupied = occupied | mask
            return obj
        return None

    # Two complete objects per image; categories cycle so each gets >= 3 across the set.
    for k in range(2):
        place(DEMO_CATEGORIES[(2 * index + k) % len(DEMO_CATEGORIES)], (20.0, 28.0), complete=True)

    # An overlapping pair: B is painted over A, so A is annotated by its visible part only.
    if index % 3 != 2:
        cat_a = DEMO_CATEGORIES[int(rng.integers(len(DEMO_CATEGORIES)))]
        cat_b = DEMO_CATEGORIES[int(rng.integers(len(DEMO_CATEGORIES)))]
        a = place(cat_a, (16.0, 24.0), center=lambda r: (rng.uniform(r, width - r), rng.uniform(r, height - r)))
        if a is not None:
            ax, ay, aw, ah = masks.bbox(a["mask"])
            acx, acy = ax + aw / 2, ay + ah / 2
            others = occupied & ~a["mask"]

            def near_a(r: float) -> tuple[float, float]:
                t = rng.uniform(0, 2 * np.pi)
                d = rng.uniform(0.4, 0.75) * (max(aw, ah) / 2 + r)
                return acx + d * np.cos(t), acy + d * np.sin(t)

            def overlaps_a(mask: np.ndarray) -> bool:
                covered = np.count_nonzero(mask & a["mask"])
                return (0.1 * masks.area(a["mask"]) <= covered <= 0.65 * masks.area(a["mask"])
                        and not np.any(_dilate(mask, SPACING) & others))

            place(cat_b, (14.0, 22.0), center=near_a, accept=overlaps_a)

    # An object cut by the image border.
    if index % 2 == 0:
        def at_border(r: float) -> tuple[float, float]:
            side = int(rng.integers(4))
            along = rng.uniform(0.2, 0.8)
            off = rng.uniform(-0.4, 0.4) * r
            return [(off, along * height), (width - off, along * height),
                    (along * width, off), (along * width, height - off)][side]

        place(DEMO_CATEGORIES[int(rng.integers(len(DEMO_CATEGORIES)))], (16.0, 26.0), center=at_border)

    # Tiny objects (below the bank's min_area) in some images.
    if index % 4 == 1:
        place("sports ball", (5.0, 9.0))

    # A crowd region: a cluster of small balls annotated as one iscrowd=1 uncompressed RLE.
    if index in CROWD_IMAGES:
        for _ in range(300):
            x0, y0 = rng.uniform(8, width - 50), rng.uniform(8, height - 40)
            crowd = np.zeros((height, width), bool)
            for _ in range(int(rng.integers(6, 10))):
                crowd |= _ellipse(height, width, x0 + rng.uniform(0, 40), y0 + rng.uniform(0, 30),
                                  *(2 * [float(rng.uniform(3, 5.5))]))
            if not np.any(_dilate(crowd, SPACING) & occupied):
                objects.append({"category": "sports ball", "mask": crowd, "polygons": None, "iscrowd": 1})
                occupied |= crowd
                break
    return height, width, background, objects


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (``counts`` a list, column-major, starting with a run of zeros)."""
    flat = np.asarray(mask, bool).T.reshape(-1).astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def build_demo(seed: int = 0) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(COCO dataset dict, {file_name: RGB}, {file_name: label map}) of the demo set, in memory.

    The label map holds, per pixel, the id of the annotation painted last there (0 = none):
    the ground truth the annotations are checked against.
    """
    check_seed(seed, "demo source")
    images, annotations, pixels, labels = [], [], {}, {}
    next_id = 1
    for index in range(NUM_IMAGES):
        height, width, rgb, objects = _scene(index, seed)
        image_id = index + 1
        file_name = f"set-{'a' if index < NUM_IMAGES // 2 else 'b'}/{image_id:06d}.jpg"
        label = np.zeros((height, width), np.int32)
        ids = list(range(next_id, next_id + len(objects)))
        next_id += len(objects)
        for obj, ann_id in zip(objects, ids):
            texture = TEXTURES[obj["category"]]()
            x, y, bw, bh = (int(v) for v in masks.bbox(obj["mask"]))
            patch = _resized(texture, bh, bw)
            region = obj["mask"][y:y + bh, x:x + bw]
            rgb[y:y + bh, x:x + bw][region] = patch[region]
            label[obj["mask"]] = ann_id
        for obj, ann_id in zip(objects, ids):
            visible = label == ann_id
            if not visible.any():
                continue
            if obj["iscrowd"]:
                segmentation = uncompressed_rle(visible)
            elif obj["polygons"] is not None and np.array_equal(visible, obj["mask"]) and _inside(visible, 1):
                segmentation = obj["polygons"]
            else:
                segmentation = masks.encode(visible)
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": COCO_IDS_BY_NAME[obj["category"]],
                                "segmentation": segmentation, "area": masks.area(visible),
                                "bbox": masks.bbox(visible), "iscrowd": int(obj["iscrowd"])})
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        pixels[file_name], labels[file_name] = rgb, label
    dataset = {"info": {"description": "occsynth demo source painted from scikit-image sample photos",
                        "version": DEMO_VERSION, "seed": seed},
               "licenses": [{"id": 1, "name": "scikit-image sample data licenses (see skimage/data/README.txt)"}],
               "images": images, "annotations": annotations,
               "categories": [dict(c) for c in COCO_CATEGORIES]}
    return dataset, pixels, labels


def make_demo_source(out_dir: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """Write the demo set to ``out_dir/annotations.json`` + ``out_dir/images/``; returns (ann, image root)."""
    out_dir = Path(out_dir)
    dataset, pixels, _ = build_demo(seed)
    for file_name, rgb in pixels.items():
        write_bytes(out_dir / "images" / file_name, encode_image(rgb, ".jpg", 95))
    write_json(out_dir / "annotations.json", dataset)
    return out_dir / "annotations.json", out_dir / "images"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/occsynth`` (``~/.cache/occsynth`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "occsynth"


def cache_dir_or_default(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` as a Path; :func:`default_cache_dir` when it is None or empty (an unset option)."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


def demo_source(cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The demo set, built once into ``cache_dir/demo-v1`` (default ``~/.cache/occsynth``) and reused.

    It is built in a temporary folder and renamed into place, so a half-built set is never
    used and concurrent first runs do not collide.
    """
    parent = cache_dir_or_default(cache_dir)
    target = build_dir_once(parent / DEMO_VERSION, "annotations.json", make_demo_source, damage=demo_damage)
    return target / "annotations.json", target / "images"


def demo_damage(folder: str | os.PathLike) -> str | None:
    """What is wrong with a built demo source folder (no readable annotations.json, an image file it lists
    gone or empty), or None. A few stat calls: checked each time the cached demo is used."""
    folder = Path(folder)
    try:
        names = [image["file_name"] for image in json.loads((folder / "annotations.json").read_bytes())["images"]]
    except FileNotFoundError:
        return "no annotations.json"
    except (OSError, ValueError, KeyError, TypeError):
        return "annotations.json unreadable"
    if not all(isinstance(name, str) for name in names):
        return "annotations.json unreadable"
    missing = []
    for name in names:
        try:
            if (folder / "images" / name).stat().st_size == 0:
                missing.append(name)
        except OSError:
            missing.append(name)
    return f"{plural(len(missing), 'image file')} missing or empty, e.g. {missing[0]}" if missing else None
