"""The promise of docs/FORMAT.md: what occsynth and bcnet write is COCO JSON that pycocotools, detectron2 and
mmdetection load, every instance we write kept, with the mask we wrote.

detectron2 and mmdetection cannot be installed here (detectron2 is not on PyPI, mmdetection needs a compiled
mmcv), so :func:`detectron2_records` and :func:`mmdet_records` re-implement the rules their loaders apply to
records, read from their code (each step names the repository, file and function it follows), on the real
pycocotools both use underneath. Each returns what a training batch would hold, by annotation id, and raises
where the loader raises; what the loader drops without a word is missing from its result. Image transforms
(resize, flip) are left out: these are the rules on records, before any augmentation.

The tests run every writer on tiny data (the hand-made set of tests/datasets.py, the embedded demo source, the
converters' hand-made files) and check the real outcome: every instance we write for training is kept by both
loaders, by id, with the mask pycocotools decodes from what they read equal to ours, and no loader error.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


# ---------------------------------------------------------------- the loaders' rules


def _coco_api(coco_json: str | os.PathLike | dict) -> COCO:
    """pycocotools' COCO over a file (as both loaders open it) or over a dict already in memory."""
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(coco_json, dict):
            api = COCO()
            api.dataset = coco_json
            api.createIndex()
            return api
        return COCO(str(coco_json))


def detectron2_records(coco_json: str | os.PathLike | dict, image_root: str | os.PathLike | None,
                       mask_format: str = "bitmask") -> dict[int, dict]:
    """The instances detectron2 trains on, ``{annotation id: {"category", "box" (XYXY), "mask"}}``.

    ``mask_format``: the config's INPUT.MASK_FORMAT. Its default, "polygon", refuses RLE, which our sets are
    made of: they need "bitmask". ``image_root`` None: the image files are not read (no size check).
    The annotation id rides along as detectron2's ``extra_annotation_keys=["id"]`` would carry it.
    """
    api = _coco_api(coco_json)
    # facebookresearch/detectron2, detectron2/data/datasets/coco.py, load_coco_json (with a dataset_name):
    cat_ids = sorted(api.getCatIds())
    id_map = {v: i for i, v in enumerate(cat_ids)}  # contiguous labels, whatever the ids' gaps
    img_ids = sorted(api.imgs.keys())
    anns = [api.imgToAnns[img_id] for img_id in img_ids]  # an annotation of no image record: left out (a warning)
    ann_ids = [ann["id"] for anns_per_image in anns for ann in anns_per_image]
    assert len(set(ann_ids)) == len(ann_ids), "Annotation ids are not unique!"
    dataset_dicts = []
    for img_dict, anno_dict_list in zip(api.loadImgs(img_ids), anns):
        record = {"file_name": os.path.join(image_root or "", img_dict["file_name"]), "height": img_dict["height"],
                  "width": img_dict["width"], "image_id": img_dict["id"], "annotations": []}
        for anno in anno_dict_list:
            assert anno["image_id"] == record["image_id"]
            assert anno.get("ignore", 0) == 0, '"ignore" in COCO json file is not supported.'
            obj = {key: anno[key] for key in ("iscrowd", "bbox", "keypoints", "category_id", "id") if key in anno}
            if "bbox" in obj and len(obj["bbox"]) == 0:
                raise ValueError(f"One annotation of image {record['image_id']} contains empty 'bbox' value!")
            segm = anno.get("segmentation", None)
            if segm:  # either list[list[float]] or dict(RLE)
                if isinstance(segm, dict):
                    if isinstance(segm["counts"], list):
                        segm = mask_util.frPyObjects(segm, *segm["size"])  # uncompressed RLE -> compressed
                else:
                    segm = [poly for poly in segm if len(poly) % 2 == 0 and len(poly) >= 6]
                    if len(segm) == 0:
                        continue  # "Filtered out N instances without valid segmentation": silently, but for a count
                obj["segmentation"] = segm
            try:
                obj["category_id"] = id_map[obj["category_id"]]
            except KeyError as e:
                raise KeyError(f"Encountered category_id={obj['category_id']} but this id does not exist in "
                               "'categories' of the json file.") from e
            record["annotations"].append(obj)
        dataset_dicts.append(record)
    # detectron2/data/build.py, get_detection_dataset_dicts: no image at all is an error; with
    # DATALOADER.FILTER_EMPTY_ANNOTATIONS (default True) filter_images_with_only_crowd_annotations drops images
    # without a non-crowd annotation
    assert len(dataset_dicts), "No valid data found"
    dataset_dicts = [d for d in dataset_dicts if any(a.get("iscrowd", 0) == 0 for a in d["annotations"])]
    kept = {}
    for record in dataset_dicts:
        kept.update(_detectron2_mapped(record, image_root, mask_format))
    return kept


def _detectron2_mapped(record: dict, image_root, mask_format: str) -> dict[int, dict]:
    """One image through detectron2's DatasetMapper (training, identity transform, MODEL.MASK_ON)."""
    height, width = record["height"], record["width"]
    if image_root is not None:
        # detectron2/data/detection_utils.py, read_image (PIL, turned by its EXIF orientation) + check_image_size
        with Image.open(record["file_name"]) as image:
            image_wh = ImageOps.exif_transpose(image).size
        if image_wh != (width, height):  # SizeMismatchError
            raise ValueError(f"Mismatched image shape for image {record['file_name']}, got {image_wh}, "
                             f"expect {(width, height)}.")
    # detectron2/data/dataset_mapper.py, DatasetMapper.__call__: crowd annotations are left out
    annos = [_detectron2_transformed(dict(obj), (height, width)) for obj in record["annotations"]
             if obj.get("iscrowd", 0) == 0]
    if not annos:
        return {}
    # detection_utils.py, annotations_to_instances: masks only when the first annotation has one, then all need one
    masks = [None] * len(annos)
    if "segmentation" in annos[0]:
        segms = [obj["segmentation"] for obj in annos]  # KeyError on one without
        if mask_format == "polygon":
            for segm in segms:  # PolygonMasks: "Failed to use mask_format=='polygon' from the given annotations!"
                if not isinstance(segm, list):
                    raise ValueError("Cannot create polygons: Expect a list of polygons per instance. "
                                     f"Got '{type(segm)}' instead.")
            masks = [_polygons_to_bitmask(segm, height, width) for segm in segms]
        else:
            masks = [_polygons_to_bitmask(segm, height, width) if isinstance(segm, list) else segm.astype(bool)
                     for segm in segms]
    kept = {}
    for obj, mask in zip(annos, masks):
        x0, y0, x1, y1 = obj["bbox"]
        # detection_utils.py, filter_empty_instances: Boxes.nonempty(threshold=1e-5) and masks' nonempty()
        if not (x1 - x0 > 1e-5 and y1 - y0 > 1e-5):
            continue
        if mask is not None and not mask.any():
            continue
        kept[obj["id"]] = {"category": obj["category_id"], "box": [x0, y0, x1, y1], "mask": mask}
    return kept


def _detectron2_transformed(obj: dict, image_size: tuple[int, int]) -> dict:
    """detection_utils.py, transform_instance_annotations (identity transform): box XYWH -> XYXY clipped to the
    image; an RLE decoded and required to be of the image's size (AssertionError); polygons kept."""
    x, y, w, h = obj["bbox"]  # BoxMode.convert needs 4 numbers
    height, width = image_size
    box = np.clip(np.array([x, y, x + w, y + h], dtype=float), 0, None)
    obj["bbox"] = np.minimum(box, [width, height, width, height]).tolist()
    segm = obj.get("segmentation")
    if isinstance(segm, dict):
        mask = mask_util.decode(segm)
        assert tuple(mask.shape[:2]) == image_size
        obj["segmentation"] = mask
    elif segm is not None and not isinstance(segm, list):
        raise ValueError(f"Cannot transform segmentation of type '{type(segm)}'!")
    return obj


def _polygons_to_bitmask(polygons: list, height: int, width: int) -> np.ndarray:
    """detectron2/structures/masks.py, polygons_to_bitmask."""
    if len(polygons) == 0:
        return np.zeros((height, width), bool)
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, height, width))).astype(bool)


def mmdet_records(coco_json: str | os.PathLike | dict, classes: list[str] | None = None, min_size: int = 32,
                  poly2mask: bool = True) -> dict[int, dict]:
    """The instances mmdetection 3 trains on, ``{annotation id: {"label", "box" (XYXY), "mask", "ignore"}}``;
    ``ignore`` True: an ignore region (a crowd, or a mask it cannot use), trained on as no object.

    ``classes``: the config's ``metainfo=dict(classes=...)`` (default: the file's category names, as a config for
    the set would list them). ``min_size``: ``filter_cfg`` ``min_size``, 32 in mmdetection's COCO configs (with
    ``filter_empty_gt=True``). ``poly2mask``: LoadAnnotations' (default True); False makes every RLE mask an
    ignore region. Masks are read at the image record's size (mmdetection takes the decoded image's, which
    :func:`detectron2_records` checks against the record).
    """
    api = _coco_api(coco_json)
    # open-mmlab/mmdetection, mmdet/datasets/coco.py, CocoDataset.load_data_list (COCO: mmdet/datasets/api_wrappers/
    # coco_api.py, pycocotools' COCO with snake-case names): classes are looked up by name
    if classes is None:
        classes = [c["name"] for c in api.dataset.get("categories", [])]
    cat_ids = api.getCatIds(catNms=classes)
    cat2label = {cat_id: i for i, cat_id in enumerate(cat_ids)}
    data_list, total_ann_ids = [], []
    for img_id in api.getImgIds():
        raw_img_info = dict(api.loadImgs([img_id])[0], img_id=img_id)
        ann_ids = api.getAnnIds(imgIds=[img_id])
        total_ann_ids.extend(ann_ids)
        data_list.append(_mmdet_parsed(raw_img_info, api.loadAnns(ann_ids), cat_ids, cat2label))
    assert len(set(total_ann_ids)) == len(total_ann_ids), "Annotation ids are not unique!"
    # CocoDataset.filter_data (training): with filter_empty_gt, images with no annotation of the classes' ids
    # (counted before parse_data_info's drops) go; so do images whose shorter side is under min_size
    ids_in_cat = set()
    for cat_id in cat_ids:
        ids_in_cat |= set(api.catToImgs[cat_id])
    ids_in_cat &= {info["img_id"] for info in data_list}
    kept = {}
    for info in data_list:
        if info["img_id"] not in ids_in_cat or min(info["width"], info["height"]) < min_size:
            continue
        kept.update(_mmdet_masks_loaded(info, poly2mask))
    return kept


def _mmdet_parsed(img_info: dict, ann_info: list[dict], cat_ids: list[int], cat2label: dict) -> dict:
    """mmdet/datasets/coco.py, CocoDataset.parse_data_info: silent drops of ``ignore``, boxes outside the image,
    ``area <= 0``, ``w < 1`` or ``h < 1`` and categories not in the classes; a crowd is an ignore region."""
    info = {"img_path": img_info["file_name"], "img_id": img_info["img_id"], "height": img_info["height"],
            "width": img_info["width"], "instances": []}
    for ann in ann_info:
        if ann.get("ignore", False):
            continue
        x1, y1, w, h = ann["bbox"]
        inter_w = max(0, min(x1 + w, img_info["width"]) - max(x1, 0))
        inter_h = max(0, min(y1 + h, img_info["height"]) - max(y1, 0))
        if inter_w * inter_h == 0:
            continue
        if ann["area"] <= 0 or w < 1 or h < 1:
            continue
        if ann["category_id"] not in cat_ids:
            continue
        instance = {"ignore_flag": 1 if ann.get("iscrowd", False) else 0, "bbox": [x1, y1, x1 + w, y1 + h],
                    "bbox_label": cat2label[ann["category_id"]], "id": ann["id"]}  # id: ours, to compare
        if ann.get("segmentation", None):
            instance["mask"] = ann["segmentation"]
        info["instances"].append(instance)
    return info


def _mmdet_masks_loaded(info: dict, poly2mask: bool) -> dict[int, dict]:
    """mmdet/datasets/transforms/loading.py, LoadAnnotations(with_bbox=True, with_mask=True): ``_process_masks``
    (an instance without a mask: KeyError; no polygon part of 3 points or more, an RLE without ``poly2mask``, or
    one without ``size``/``counts`` or whose counts are neither str nor list: an ignore region) and ``_poly2mask``
    (without ``poly2mask``, PolygonMasks of the same polygons)."""
    h, w = info["height"], info["width"]
    kept = {}
    for instance in info["instances"]:
        gt_mask = instance["mask"]
        if isinstance(gt_mask, list):
            gt_mask = [np.array(polygon) for polygon in gt_mask if len(polygon) % 2 == 0 and len(polygon) >= 6]
            if len(gt_mask) == 0:
                instance["ignore_flag"] = 1
                gt_mask = [np.zeros(6)]
        elif not poly2mask:
            instance["ignore_flag"] = 1
            gt_mask = [np.zeros(6)]
        elif isinstance(gt_mask, dict) and not (gt_mask.get("counts") is not None and gt_mask.get("size") is not None
                                                and isinstance(gt_mask["counts"], (list, str))):
            instance["ignore_flag"] = 1
            gt_mask = [np.zeros(6)]
        mask = _mmdet_poly2mask(gt_mask, h, w)
        if mask.shape != (h, w):  # BitmapMasks: np.stack(masks).reshape(-1, h, w) fails
            raise ValueError(f"cannot reshape a mask of {mask.shape} into ({h}, {w})")
        kept[instance["id"]] = {"label": instance["bbox_label"], "box": instance["bbox"], "mask": mask,
                                "ignore": bool(instance["ignore_flag"])}
    return kept


def _mmdet_poly2mask(mask_ann, img_h: int, img_w: int) -> np.ndarray:
    """mmdet/datasets/transforms/loading.py, LoadAnnotations._poly2mask."""
    if isinstance(mask_ann, list):
        rle = mask_util.merge(mask_util.frPyObjects([list(p) for p in mask_ann], img_h, img_w))
    elif isinstance(mask_ann["counts"], list):
        rle = mask_util.frPyObjects(mask_ann, img_h, img_w)  # uncompressed RLE
    else:
        rle = mask_ann
    return mask_util.decode(rle).astype(bool)


# ---------------------------------------------------------------- every writer's output, on tiny data

WRITERS = ["generate", "merge", "build-cocoocc", "annotate-occluders", "annotate-occluders-kept", "convert-kins",
           "convert-cocoa"]


def _blank_images(data: dict, root: Path) -> Path:
    """Image files of the records' sizes, for sets written without their images (the converters')."""
    for image in data["images"]:
        path = root / image["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (image["width"], image["height"])).save(path)
    return root


def _with_fully_hidden(source: Path, make: str) -> Path:
    """A converter's hand-made input (tests/test_convert.py) with one more instance that nothing of is visible."""
    import test_convert

    data = json.loads(source.read_text())
    hidden = [8, 4, 11, 4, 11, 8, 8, 8]  # inside the front object
    if make == "cocoa":
        empty = test_convert.rle(np.zeros((test_convert.H, test_convert.W), bool))
        data["annotations"][0]["regions"].append({"segmentation": hidden, "order": 2, "name": "cup", "isStuff": 0,
                                                  "visible_mask": empty})
    else:
        data["annotations"].append({**data["annotations"][0], "id": 15, "a_segm": [hidden], "i_segm": []})
    source.write_text(json.dumps(data))
    return source


@pytest.fixture(scope="module")
def written(demo_source, tmp_path_factory):
    """{writer: (annotations JSON, image root, mmdetection's min_size)} of every writer's output on tiny data. The
    converters' hand-made images are 20x30 px, under mmdetection's COCO-config min_size (32): 0 there."""
    import test_convert
    from occsynth.annotate import annotate_occluders
    from occsynth.cocoocc import build_cocoocc
    from occsynth.convert import convert_cocoa, convert_kins
    from occsynth.generate import RunSettings, generate, merge

    ann, root = demo_source
    base = tmp_path_factory.mktemp("interop")
    settings, cache = RunSettings(num_images=4, seed=3, chunk_size=2), base / "cache"
    generate(base / "gen", settings, ann_path=ann, image_root=root, cache_dir=cache, progress=False)
    shards = [base / f"shard{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        generate(shard, settings, ann_path=ann, image_root=root, cache_dir=cache, shard=(i, 2), progress=False)
    merge(base / "merged", shards, progress=False)
    build_cocoocc(ann, base / "occ", image_root=root, image_mode="link", threshold=0.05)
    annotate_occluders(ann, base / "occluders.json", bcnet_compat=True, progress=False)
    annotate_occluders(base / "gen" / "annotations.json", base / "gen-occluders.json", bcnet_compat=True,
                       keep_existing=True, progress=False)
    out = {"generate": (base / "gen" / "annotations.json", base / "gen" / "images", 32),
           "merge": (base / "merged" / "annotations.json", base / "merged" / "images", 32),
           "build-cocoocc": (base / "occ" / "annotations.json", base / "occ" / "images", 32),
           "annotate-occluders": (base / "occluders.json", root, 32),
           "annotate-occluders-kept": (base / "gen-occluders.json", base / "gen" / "images", 32)}
    for make, convert in (("kins", convert_kins), ("cocoa", convert_cocoa)):
        folder = base / make
        folder.mkdir()
        source = _with_fully_hidden(getattr(test_convert, f"{make}_file")(folder), make)
        convert(source, folder / "out.json", progress=False)
        _blank_images(json.loads((folder / "out.json").read_text()), folder / "images")
        out[f"convert-{make}"] = (folder / "out.json", folder / "images", 0)
    return out


def _our_masks(data: dict) -> dict[int, np.ndarray]:
    """Every annotation's mask as we mean it: its segmentation decoded by pycocotools at its image's size."""
    from occsynth import masks as mask_ops

    images = {image["id"]: image for image in data["images"]}
    return {a["id"]: mask_ops.decode(a["segmentation"], images[a["image_id"]]["height"],
                                     images[a["image_id"]]["width"]) for a in data["annotations"]}


@pytest.mark.parametrize("writer", WRITERS)
def test_detectron2_and_mmdetection_keep_every_instance_we_write_with_our_mask_and_box(written, writer):
    """Every non-crowd annotation is trained on by both loaders (by id: none dropped without a word), with the mask
    pycocotools decodes from what they read equal to ours, our box and the label of its category; a crowd region
    is left out by detectron2 and is an ignore region to mmdetection; no loader error."""
    path, root, min_size = written[writer]
    data = json.loads(path.read_text())
    assert data["annotations"], writer
    ours = _our_masks(data)
    trained = {a["id"] for a in data["annotations"] if a["iscrowd"] == 0}
    crowd = {a["id"] for a in data["annotations"] if a["iscrowd"] == 1 and a["area"] > 0}
    d2 = detectron2_records(path, root)
    mm = mmdet_records(path, min_size=min_size)
    assert set(d2) == trained
    assert {k for k, r in mm.items() if not r["ignore"]} == trained
    assert {k for k, r in mm.items() if r["ignore"]} == crowd
    labels = {c["id"]: i for i, c in enumerate(data["categories"])}
    contiguous = {c: i for i, c in enumerate(sorted(labels))}
    for ann in data["annotations"]:
        if ann["id"] not in trained:
            continue
        x, y, w, h = ann["bbox"]
        assert np.array_equal(d2[ann["id"]]["mask"], ours[ann["id"]]) and ours[ann["id"]].any(), ann["id"]
        assert np.array_equal(mm[ann["id"]]["mask"], ours[ann["id"]]), ann["id"]
        assert d2[ann["id"]]["box"] == mm[ann["id"]]["box"] == [x, y, x + w, y + h]
        assert d2[ann["id"]]["category"] == contiguous[ann["category_id"]]
        assert mm[ann["id"]]["label"] == labels[ann["category_id"]]


@pytest.mark.parametrize("writer", ["convert-kins", "convert-cocoa"])
def test_a_converted_fully_hidden_instance_is_the_documented_ignore_region_that_both_loaders_leave_out(written,
                                                                                                      writer):
    """docs/FORMAT.md and the converters: nothing visible -> ``iscrowd`` 1, ``area`` 0, box [0, 0, 0, 0], its amodal
    mask kept. detectron2 leaves the crowd out; mmdetection drops its zero-area box (not even an ignore region)."""
    path, root, min_size = written[writer]
    hidden = [a for a in json.loads(path.read_text())["annotations"] if a["area"] == 0]
    assert len(hidden) == 1 and hidden[0]["iscrowd"] == 1 and hidden[0]["bbox"] == [0, 0, 0, 0]
    assert hidden[0]["amodal_area"] > 0
    assert hidden[0]["id"] not in detectron2_records(path, root)
    assert hidden[0]["id"] not in mmdet_records(path, min_size=min_size)


@pytest.mark.parametrize("copy", ["build-cocoocc", "annotate-occluders"])
def test_a_source_record_a_loader_drops_is_copied_as_it_is_and_dropped_from_the_copy_alike(tmp_path, copy):
    """docs/FORMAT.md: COCO-OCC and annotate-occluders copy their source's records (COCO-OCC is a subset of val2017,
    scored against it): one mmdetection drops (a box under 1 px wide) is copied unchanged, and each loader keeps
    the same instances of the copy as of the source."""
    from test_cocoocc import make_dataset

    from occsynth.annotate import annotate_occluders
    from occsynth.cocoocc import build_cocoocc

    data = make_dataset()
    thin = next(a for a in data["annotations"] if a["bbox"] == [0, 0, 5, 5])  # inside a box of image 3: selected
    thin["bbox"][2] = 0.5
    (tmp_path / "in.json").write_text(json.dumps(data))
    if copy == "build-cocoocc":
        build_cocoocc(tmp_path / "in.json", tmp_path / "occ", overlap="min", threshold=0.2)
        out = tmp_path / "occ" / "annotations.json"
    else:
        annotate_occluders(tmp_path / "in.json", tmp_path / "occluders.json", progress=False)
        out = tmp_path / "occluders.json"
    written = {a["id"]: a for a in json.loads(out.read_text())["annotations"]}
    assert written[thin["id"]]["bbox"] == thin["bbox"]
    for load in (lambda d: detectron2_records(d, None), mmdet_records):
        source = {k for k in load(data) if k in written}
        assert set(load(json.loads(out.read_text()))) == source
    assert thin["id"] not in mmdet_records(json.loads(out.read_text()))


@pytest.mark.parametrize("writer", WRITERS)
def test_pycocotools_loads_each_set_and_scores_its_own_masks_as_ap_1(written, writer):
    from test_convert import _perfect_visible_ap

    assert _perfect_visible_ap(written[writer][0]) == 1.0


def test_our_rle_masks_need_detectron2s_bitmask_format_and_mmdetections_poly2mask_as_documented(written):
    """detectron2's default INPUT.MASK_FORMAT, "polygon", refuses RLE, and mmdetection's LoadAnnotations with
    ``poly2mask=False`` makes every RLE instance an ignore region without a word (docs/FORMAT.md names the
    settings). A converted KINS set, whose masks stay polygons, loads either way to the same masks."""
    path, root, _ = written["generate"]
    with pytest.raises(ValueError, match="Expect a list of polygons"):
        detectron2_records(path, root, mask_format="polygon")
    assert all(r["ignore"] for r in mmdet_records(path, poly2mask=False).values())
    path, root, _ = written["convert-kins"]
    assert all(isinstance(a["segmentation"], list) for a in json.loads(path.read_text())["annotations"]
               if a["iscrowd"] == 0)
    polygons, bitmasks = detectron2_records(path, root, mask_format="polygon"), detectron2_records(path, root)
    assert polygons.keys() == bitmasks.keys() and polygons
    assert all(np.array_equal(polygons[k]["mask"], bitmasks[k]["mask"]) for k in polygons)
    as_polygons, as_bitmasks = mmdet_records(path, min_size=0, poly2mask=False), mmdet_records(path, min_size=0)
    assert {k for k, r in as_polygons.items() if not r["ignore"]} == {k for k, r in as_bitmasks.items()
                                                                      if not r["ignore"]} == set(bitmasks)


@pytest.mark.parametrize("writer", ["annotate-occluders", "annotate-occluders-kept"])
def test_bcnet_compat_occluder_polygons_are_ones_detectron2s_polygon_masks_take(written, writer):
    """BCNet's loader (detectron2's) builds PolygonMasks of ``bg_object_segmentation``, which refuse a part of an
    odd count or fewer than 6 coordinates (ValueError)."""
    annotations = json.loads(written[writer][0].read_text())["annotations"]
    parts = [part for a in annotations for part in a["bg_object_segmentation"]]
    assert parts and all(len(part) % 2 == 0 and len(part) >= 6 for part in parts)


# ---------------------------------------------------------------- the emulation can fail


def _hand_made() -> dict:
    """The hand-made set of tests/datasets.py (images of 40x56 and 48x64 px), in memory."""
    from datasets import build

    return build()[0]


def test_on_the_hand_made_set_both_loaders_keep_every_instance():
    data = _hand_made()
    ids = {a["id"] for a in data["annotations"]}
    assert set(detectron2_records(data, None)) == ids
    assert {k for k, r in mmdet_records(data).items() if not r["ignore"]} == ids


def _rle_of(data: dict, ann: dict, fill: bool) -> dict:
    image = next(im for im in data["images"] if im["id"] == ann["image_id"])
    mask = np.full((image["height"], image["width"]), fill, np.uint8)
    return mask_util.encode(np.asfortranarray(mask))  # counts as bytes, as pycocotools gives them


# (loader, what is done to the first annotation, its fate: "dropped", "ignored" or the exception the loader raises)
BREAKAGES = [
    ("mmdet", lambda a, d: a.update(bbox=[4, 6, 0.5, 24]), "dropped"),        # w < 1
    ("mmdet", lambda a, d: a.update(area=0), "dropped"),                      # area <= 0
    ("mmdet", lambda a, d: a.update(bbox=[70, 6, 24, 24]), "dropped"),        # outside the 64 px wide image
    ("mmdet", lambda a, d: a.update(category_id=2), "dropped"),               # not a class of the config
    ("mmdet", lambda a, d: a.update(iscrowd=1), "ignored"),
    ("mmdet", lambda a, d: a.update(segmentation=_rle_of(d, a, True)), "ignored"),  # counts as bytes
    ("mmdet", lambda a, d: a.update(segmentation=[[4, 6, 28, 6]]), "ignored"),      # no part of 3 points
    ("mmdet", lambda a, d: a.update(segmentation=[]), KeyError),                     # no mask
    ("mmdet", lambda a, d: a.pop("area"), KeyError),
    ("mmdet", lambda a, d: a.update(ignore=1), "dropped"),
    ("detectron2", lambda a, d: a.update(ignore=1), AssertionError),
    ("detectron2", lambda a, d: a.update(iscrowd=1), "dropped"),
    ("detectron2", lambda a, d: a.update(bbox=[4, 6, 0, 24]), "dropped"),     # empty box
    ("detectron2", lambda a, d: a.update(bbox=[70, 6, 24, 24]), "dropped"),   # clipped to nothing
    ("detectron2", lambda a, d: a.update(segmentation=[[4, 6, 28, 6]]), "dropped"),  # no part of 3 points
    ("detectron2", lambda a, d: a.update(segmentation=_rle_of(d, a, False)), "dropped"),  # empty mask
    ("detectron2", lambda a, d: a.update(segmentation=mask_util.encode(np.ones((8, 8, 1), np.uint8, "F"))[0]),
     AssertionError),                                                        # RLE not of its image's size
    ("detectron2", lambda a, d: a.update(category_id=2), KeyError),          # no such category
    ("detectron2", lambda a, d: a.update(bbox=[]), ValueError),
]


@pytest.mark.parametrize("loader, break_it, fate", BREAKAGES)
def test_a_record_the_real_loader_drops_or_refuses_is_dropped_or_refused(loader, break_it, fate):
    """The emulation is no rubber stamp: each rule it follows drops, ignores or refuses a record made to break it,
    as the loader does, and leaves the others alone."""
    data = _hand_made()
    first = data["annotations"][0]
    break_it(first, data)
    others = {a["id"] for a in data["annotations"]} - {first["id"]}
    load = (lambda: detectron2_records(data, None)) if loader == "detectron2" else (lambda: mmdet_records(data))
    if not isinstance(fate, str):
        with pytest.raises(fate):
            load()
        return
    kept = load()
    trained = {k for k, r in kept.items() if not r.get("ignore")}
    assert trained == others
    assert (first["id"] in kept) == (fate == "ignored")


def test_images_detectron2_or_mmdetection_leave_out_take_their_instances_along(tmp_path):
    """detectron2: an image of crowd regions only, or whose file is of another size than its record (an error).
    mmdetection: an image under ``min_size`` on its shorter side."""
    data = _hand_made()
    second = {a["id"] for a in data["annotations"] if a["image_id"] == 2}
    crowded = json.loads(json.dumps(data))
    for ann in crowded["annotations"]:
        ann["iscrowd"] = int(ann["image_id"] == 2)
    assert not second & set(detectron2_records(crowded, None))
    root = _blank_images(data, tmp_path / "images")
    assert set(detectron2_records(data, root)) == {a["id"] for a in data["annotations"]}
    Image.new("RGB", (56, 41)).save(root / data["images"][1]["file_name"])
    with pytest.raises(ValueError, match="Mismatched image shape"):
        detectron2_records(data, root)
    assert not second & set(mmdet_records(data, min_size=41))  # image 2 is 40 px high
    assert second <= set(mmdet_records(data, min_size=40))


# ---------------------------------------------------------------- bcnet's predictions, read by pycocotools

DETECTIONS = [(1, (4, 6, 28, 30)), (4, (30, 10, 46, 26)), (2, (0, 0, 1, 1))]  # (label, xyxy); 1 px too


def _cocoeval(gt: COCO, results_file: Path) -> dict[str, np.ndarray]:
    """pycocotools as a user runs it on a results file (its path as a str: loadRes reads only a str as a file). For
    mask AP the boxes are dropped first, as detectron2's COCOEvaluator and bcnet evaluate drop them: with a
    ``bbox``, loadRes sizes each detection by its box, not its mask, for APs, APm and APl."""
    stats = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for iou_type in ("bbox", "segm"):
            if iou_type == "bbox":
                dt = gt.loadRes(str(results_file))
            else:
                dt = gt.loadRes([{k: v for k, v in r.items() if k != "bbox"}
                                 for r in json.loads(results_file.read_text())])
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats[iou_type] = ev.stats
    return stats


def test_pycocotools_loads_and_scores_bcnet_predict_results(tmp_path, monkeypatch):
    """results.json against the set its images come from (images.json names each image's id): loadRes and COCOeval
    run, and each detection's mask, read back by pycocotools, is the box the model filled."""
    import bcnet.predict as P
    from datasets import write_dataset
    from test_evaluate import FixedModel

    root = write_dataset(tmp_path / "set")
    monkeypatch.setattr(P, "load_model", lambda checkpoint, device: (
        FixedModel(DETECTIONS), {"category_ids": [1, 3, 5, 7, 9], "category_names": list("abcde")}))
    P.predict("model.pt", root / "images", tmp_path / "p", pictures=False, progress=False)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations.json"))
    for image in json.loads((tmp_path / "p" / "images.json").read_text()):
        assert Path(image["file_name"]).name == gt.imgs[image["id"]]["file_name"]
    stats = _cocoeval(gt, tmp_path / "p" / "results.json")
    assert all(np.isfinite(s).all() for s in stats.values())
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(str(tmp_path / "p" / "results.json"))
    assert len(dt.anns) == len(DETECTIONS) * len(gt.imgs)
    boxes = {[1, 3, 5, 7, 9][label - 1]: box for label, box in DETECTIONS}  # labels 1, 2, ... are those categories
    for det in dt.anns.values():
        x0, y0, x1, y1 = boxes[det["category_id"]]
        expected = np.zeros((gt.imgs[det["image_id"]]["height"], gt.imgs[det["image_id"]]["width"]), bool)
        expected[y0:y1, x0:x1] = True
        assert np.array_equal(dt.annToMask(det).astype(bool), expected)


def test_pycocotools_scores_bcnet_evaluate_detections_file_as_bcnet_reports(tmp_path, monkeypatch):
    """detections_<name>.json, read by pycocotools against the set it was evaluated on, gives the AP bcnet
    evaluate reported for it."""
    import bcnet.evaluate as E
    from datasets import write_dataset
    from test_evaluate import FixedModel, save_tiny_checkpoint

    root = write_dataset(tmp_path / "set")
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt")
    real = E.load_model
    monkeypatch.setattr(E, "load_model", lambda path, device="cpu": (FixedModel(DETECTIONS), real(path, device)[1]))
    report = E.evaluate_checkpoint(checkpoint, {"hand": (root / "annotations.json", root / "images")},
                                   tmp_path / "e", device="cpu", progress=False)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations.json"))
    stats = _cocoeval(gt, tmp_path / "e" / "detections_hand.json")
    for iou_type in ("bbox", "segm"):
        assert [report["hand"][iou_type][name] for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == \
            pytest.approx(stats[iou_type][:6].tolist()) and stats[iou_type][0] > 0


def test_a_predict_that_detects_nothing_writes_an_empty_list_which_pycocotools_load_res_cannot_read(tmp_path,
                                                                                                    monkeypatch):
    """docs/FORMAT.md: ``[]`` is COCO's result for no detection, but pycocotools' loadRes reads ``anns[0]`` first
    (IndexError): a script checks for it, as detectron2's and mmdetection's evaluators and bcnet evaluate do."""
    import bcnet.predict as P
    from datasets import write_dataset
    from test_evaluate import FixedModel

    root = write_dataset(tmp_path / "set")
    monkeypatch.setattr(P, "load_model", lambda checkpoint, device: (
        FixedModel([]), {"category_ids": [1, 3, 5, 7, 9], "category_names": list("abcde")}))
    P.predict("model.pt", root / "images", tmp_path / "p", pictures=False, progress=False)
    assert json.loads((tmp_path / "p" / "results.json").read_text()) == []
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations.json"))
        with pytest.raises(IndexError):
            gt.loadRes(str(tmp_path / "p" / "results.json"))
