"""A tiny hand-made dataset in the docs/FORMAT.md layout, for tests of tools that read generated sets.

Three small images with rectangles and discs on known layers. Every mask, area, box, occlusion
ratio and occluder id is computed here from the shapes with plain numpy (not with the occsynth
code under test), so tests can compare the tools' answers with ground truth.

    out = write_dataset(tmp_path / "set")          # OUT/images, OUT/annotations.json, OUT/manifest.json
    data = load_annotations(out)                   # break something ...
    save_annotations(out, data)                    # ... and write it back (manifest counts refreshed)

Import it as ``from datasets import write_dataset`` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CATEGORIES = [{"id": 1, "name": "wall", "supercategory": "thing"},
              {"id": 3, "name": "ball", "supercategory": "thing"},
              {"id": 5, "name": "coin", "supercategory": "thing"},
              {"id": 7, "name": "box", "supercategory": "thing"},
              {"id": 9, "name": "never-pasted", "supercategory": "thing"}]

# One dict per image: (height, width) and its instances in paint order. layer 0 = background.
# Shapes: ("rect", x0, y0, x1, y1) with exclusive x1/y1, or ("disc", cx, cy, r): (x-cx)^2+(y-cy)^2 <= r^2.
SCENES = [
    {"size": (48, 64), "instances": [
        {"name": "A", "category_id": 1, "layer": 0, "shape": ("rect", 4, 6, 28, 30)},
        {"name": "B", "category_id": 1, "layer": 0, "shape": ("rect", 40, 30, 60, 46)},
        {"name": "C", "category_id": 3, "layer": 1, "shape": ("disc", 26, 20, 9)},
        {"name": "D", "category_id": 7, "layer": 2, "shape": ("rect", 30, 10, 46, 26)},
        {"name": "E", "category_id": 5, "layer": 3, "shape": ("disc", 60, 44, 6)},  # cut by the border
    ]},
    {"size": (40, 56), "instances": [
        {"name": "F", "category_id": 1, "layer": 0, "shape": ("rect", 2, 2, 22, 22)},
        {"name": "G", "category_id": 1, "layer": 0, "shape": ("rect", 15, 15, 31, 31)},  # same layer as F
        {"name": "H", "category_id": 7, "layer": 1, "shape": ("disc", 40, 20, 8)},
        {"name": "I", "category_id": 3, "layer": 2, "shape": ("rect", 25, 5, 51, 13)},  # touches H at row 12
        {"name": "J", "category_id": 5, "layer": 3, "shape": ("rect", 4, 4, 12, 10)},   # on F only
        {"name": "Z", "category_id": 1, "layer": 0, "shape": ("rect", 5, 5, 9, 8)},     # hidden by J: not written
    ]},
    {"size": (48, 64), "instances": [
        {"name": "K", "category_id": 3, "layer": 1, "shape": ("disc", 20, 24, 10)},
        {"name": "L", "category_id": 7, "layer": 2, "shape": ("rect", 30, 14, 40, 25)},  # meets K at one pixel (30, 24)
        {"name": "M", "category_id": 5, "layer": 3, "shape": ("disc", 16, 28, 8)},
    ]},
]

PALETTE = [(220, 60, 60), (60, 200, 80), (70, 90, 230), (230, 200, 40), (200, 70, 200), (40, 200, 210)]


def shape_mask(shape: tuple, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    if shape[0] == "rect":
        _, x0, y0, x1, y1 = shape
        return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    _, cx, cy, r = shape
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def scene_instances(scene: dict) -> list[dict]:
    """The written instances of one scene with their exact masks, in annotation order.

    Visible = amodal minus the union of amodal masks on higher layers; occluders = instances on
    higher layers whose amodal mask shares a pixel; background instances with nothing visible are
    dropped (as the format requires).
    """
    h, w = scene["size"]
    insts = [dict(inst, amodal=shape_mask(inst["shape"], h, w)) for inst in scene["instances"]]
    for inst in insts:
        above = np.zeros((h, w), bool)
        for other in insts:
            if other["layer"] > inst["layer"]:
                above |= other["amodal"]
        inst["visible"] = inst["amodal"] & ~above
    kept = [i for i in insts if i["layer"] > 0 or i["visible"].any()]
    for inst in kept:
        inst["occluders"] = [other["name"] for other in kept
                             if other["layer"] > inst["layer"] and (other["amodal"] & inst["amodal"]).any()]
    return kept


def render(scene: dict, index: int) -> np.ndarray:
    """RGB pixels: a gradient with mild noise, instances painted in layer order in flat colours."""
    h, w = scene["size"]
    rng = np.random.default_rng(index)
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.stack([40 + 2 * xs, 60 + 2 * ys, np.full_like(xs, 90)], axis=-1).astype(np.int32)
    image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    for k, inst in sorted(enumerate(scene["instances"]), key=lambda t: t[1]["layer"]):
        image[shape_mask(inst["shape"], h, w)] = PALETTE[k % len(PALETTE)]
    return image


def build(image_format: str = "png") -> tuple[dict, dict[str, np.ndarray]]:
    """(COCO dict, {file_name: RGB pixels}) of the whole set."""
    images, annotations, pixels = [], [], {}
    next_id = 1
    for index, scene in enumerate(SCENES):
        h, w = scene["size"]
        image_id = index + 1
        file_name = f"{image_id:012d}.{image_format}"
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w,
                       "background": {"image_id": 100 + index, "file_name": f"bg{index}.jpg"}})
        pixels[file_name] = render(scene, index)
        insts = scene_instances(scene)
        ids = {inst["name"]: next_id + k for k, inst in enumerate(insts)}
        for inst in insts:
            area, amodal_area = int(inst["visible"].sum()), int(inst["amodal"].sum())
            annotations.append({
                "id": ids[inst["name"]], "image_id": image_id, "category_id": inst["category_id"],
                "segmentation": rle(inst["visible"]), "area": area, "bbox": tight_box(inst["visible"]),
                "iscrowd": 0, "amodal_segmentation": rle(inst["amodal"]), "amodal_bbox": tight_box(inst["amodal"]),
                "amodal_area": amodal_area, "occlusion_ratio": round(1.0 - area / amodal_area, 6),
                "layer": inst["layer"], "occluder_ids": [ids[n] for n in inst["occluders"]],
                "amodal_complete": inst["layer"] > 0,
                "source": {"image_id": 200 + index, "annotation_id": 1000 + ids[inst["name"]]},
                "name": inst["name"]})
        next_id += len(insts)
    data = {"info": {"description": "hand-made test set"}, "licenses": [],
            "categories": [dict(c) for c in CATEGORIES],  # a test may edit its set: never the module's list
            "images": images, "annotations": annotations}
    return data, pixels


def annotation_ids() -> dict[str, int]:
    """Instance name (as in SCENES) -> annotation id in the written set."""
    data, _ = build()
    return {a["name"]: a["id"] for a in data["annotations"]}


def write_dataset(out_dir: str | Path, image_format: str = "png") -> Path:
    out_dir = Path(out_dir)
    data, pixels = build(image_format)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    for file_name, rgb in pixels.items():
        ok, buf = cv2.imencode("." + image_format, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        assert ok
        (out_dir / "images" / file_name).write_bytes(buf.tobytes())
    save_annotations(out_dir, data, image_format=image_format)
    return out_dir


def load_annotations(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "annotations.json").read_text())


def manifest_counts(data: dict) -> dict:
    pasted = Counter(a["category_id"] for a in data["annotations"] if a["layer"] > 0)
    return {"images": len(data["images"]), "annotations": len(data["annotations"]), "pasted": sum(pasted.values()),
            "pasted_per_category": {str(k): v for k, v in sorted(pasted.items())}}


def save_annotations(out_dir: str | Path, data: dict, refresh_manifest: bool = True, image_format: str = "png") -> None:
    """Write annotations.json; with ``refresh_manifest`` also manifest.json with counts that match it."""
    out_dir = Path(out_dir)
    (out_dir / "annotations.json").write_text(json.dumps(data))
    if refresh_manifest:
        manifest = {"version": "test", "settings": {"num_images": len(data["images"]), "seed": 0,
                                                    "image_format": image_format},
                    "counts": manifest_counts(data), "skipped": {"counts": {}, "examples": {}}}
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def write_shapes(out: Path, n: int = 8, size: int = 96, seed: int = 0) -> Path:
    """A learnable set for training checks: red rectangles (category 1) and blue discs (category 2) on grey,
    2-3 per image, some overlapping; each annotation is the object's visible part."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    images, anns = [], []
    for i in range(n):
        pixels = np.full((size, size, 3), 110, np.uint8)
        objects = []
        for _ in range(int(rng.integers(2, 4))):
            category = int(rng.integers(1, 3))
            cx, cy = rng.integers(18, size - 18, 2)
            r = int(rng.integers(10, 18))
            if category == 1:
                mask = (abs(xs - cx) <= r) & (abs(ys - cy) <= int(r * 0.7))
            else:
                mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
            pixels[mask] = (220, 40, 40) if category == 1 else (40, 60, 220)
            objects.append((category, mask))
        cv2.imwrite(str(out / "images" / f"{i}.png"), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": size, "width": size})
        for j, (category, mask) in enumerate(objects):
            visible = mask & ~np.any([m for _, m in objects[j + 1:]] or [np.zeros_like(mask)], axis=0)
            if visible.sum() >= 30:
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": category, "iscrowd": 0,
                             "segmentation": rle(visible), "area": int(visible.sum()), "bbox": tight_box(visible)})
    categories = [{"id": 1, "name": "rect"}, {"id": 2, "name": "disc"}]
    data = {"images": images, "annotations": anns, "categories": categories}
    (out / "annotations.json").write_text(json.dumps(data))
    return out


def mask_ap(model, root: Path, device: str = "cpu") -> float:
    """Mask AP of ``model`` on the set at ``root`` (0 when it detects nothing)."""
    from bcnet import evaluate
    from bcnet.data import CocoInstances

    dataset = CocoInstances(root / "annotations.json", root / "images")
    results = evaluate.predict_dataset(model, dataset, device=device, progress=False)
    if not results:
        return 0.0
    return max(evaluate.evaluate(root / "annotations.json", results, occlusion_splits=False)["segm"]["AP"], 0.0)
