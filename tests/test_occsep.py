"""Occluded / Separated COCO recall on hand-made objects with known answers; safe loading of their pickles."""
import json
import os
import pickle

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bcnet.occsep import RefusedPickle, check_objects, load_objects, occsep_recall, occsep_report, safe_unpickle
from occsynth.errors import OccsynthError

H, W = 20, 20


def rect(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(m, as_bytes=False):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [H, W], "counts": r["counts"] if as_bytes else r["counts"].decode("ascii")}


GT_IMAGES = {"a.jpg": 1, "b.jpg": 2}
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
G1, G2, G3, G4 = rect(0, 0, 4, 4), rect(10, 10, 14, 14), rect(5, 5, 15, 15), rect(0, 10, 10, 20)


def objects():
    # published layout: [file_name, class_name, (unused), bbox, rle with bytes counts]
    return [
        ["a.jpg", "person", 0, [0, 0, 4, 4], rle(G1, True)],        # found: exact match, score 0.9
        ["a.jpg", "dog", 0, [10, 10, 4, 4], rle(G2, True)],          # found: IoU exactly 0.75 (12/16)
        ["b.jpg", "person", 0, [5, 5, 10, 10], rle(G3, True)],       # missed: IoU 0.8 but score 0.2;
                                                                     #   wrong class at IoU 1; IoU 0.7
        ["zzz.jpg", "person", 0, [0, 0, 1, 1], rle(G1, True)],       # not scored: image not in the set
        ["b.jpg", "dog", 0, [0, 10, 10, 10], [[0, 10, 10, 10, 10, 20, 0, 20]]],  # found: polygon GT
    ]


def results():
    return [
        {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": rle(G1)},
        {"image_id": 1, "category_id": 18, "score": 0.3, "segmentation": rle(rect(10, 10, 14, 13))},
        {"image_id": 2, "category_id": 1, "score": 0.2, "segmentation": rle(rect(5, 5, 15, 13))},  # 80/100
        {"image_id": 2, "category_id": 18, "score": 0.99, "segmentation": rle(G3)},
        {"image_id": 2, "category_id": 1, "score": 0.95, "segmentation": rle(rect(5, 5, 15, 12))},  # 70/100
        {"image_id": 2, "category_id": 18, "score": 0.5, "segmentation": rle(rect(0, 10, 10, 19))},  # 90/100
    ]


def test_recall_known_answer():
    res = occsep_recall(results(), GT_IMAGES, objects(), categories=CATEGORIES)
    assert res["hits"] == [True, True, False, None, True]
    assert res["found"] == 3 and res["total"] == 4 and res["recall"] == pytest.approx(0.75)
    assert res["outside_set"] == 1
    # thresholds are parameters: a lower score threshold lets the 0.2 prediction find object 3
    low = occsep_recall(results(), GT_IMAGES, objects(), categories=CATEGORIES, score_threshold=0.1)
    assert low["hits"] == [True, True, True, None, True]
    strict = occsep_recall(results(), GT_IMAGES, objects(), categories=CATEGORIES, iou_threshold=0.76)
    assert strict["hits"] == [True, False, False, None, True]


def test_category_ids_and_report():
    by_id = [[e[0], {"person": 1, "dog": 18}[e[1]], e[3], e[4]] for e in objects()]  # 4-item layout, ids
    assert occsep_recall(results(), GT_IMAGES, by_id)["hits"] == [True, True, False, None, True]
    report = occsep_report(results(), GT_IMAGES, objects()[:2], objects()[2:], categories=CATEGORIES)
    assert report["occluded_recall"] == 100.0 and report["separated_recall"] == pytest.approx(50)
    assert report["separated"]["total"] == 2 and report["separated"]["outside_set"] == 1
    with pytest.raises(Exception, match="pass categories"):
        occsep_recall(results(), GT_IMAGES, objects())


def test_recall_is_none_when_no_listed_object_is_in_the_set():
    outside = [e for e in objects() if e[0] not in GT_IMAGES]
    res = occsep_recall(results(), GT_IMAGES, outside, categories=CATEGORIES)
    assert res["total"] == 0 and res["outside_set"] == 1 and res["recall"] is None  # not 0%: nothing to recall
    report = occsep_report(results(), GT_IMAGES, objects(), outside, categories=CATEGORIES)
    assert report["occluded_recall"] == pytest.approx(75) and report["separated_recall"] is None


def test_load_pickle_and_json_forms(tmp_path):
    pkl = tmp_path / "occluded_coco.pkl"
    pkl.write_bytes(pickle.dumps(objects(), protocol=4))
    assert load_objects(pkl) == objects()
    as_json = [[e[0], e[1], e[2], e[3], {"size": e[4]["size"], "counts": e[4]["counts"].decode()}
                if isinstance(e[4], dict) else e[4]] for e in objects()]
    js = tmp_path / "occluded_coco.json"
    js.write_text(json.dumps(as_json))
    loaded = load_objects(js)
    assert occsep_recall(results(), GT_IMAGES, loaded, categories=CATEGORIES)["found"] == 3
    value = {"a": (1, 2.5, None, True, b"x", {3}, frozenset([4]), -(2 ** 70))}
    assert safe_unpickle(pickle.dumps(value, protocol=4)) == value
    assert safe_unpickle(pickle.dumps(objects(), protocol=3)) == objects()


def test_a_file_that_is_no_object_list_says_so(tmp_path):
    """A COCO annotations file given as --occluded-list said only "expected a list of objects, found dict"."""
    coco = tmp_path / "instances_val2017.json"
    coco.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(OccsynthError) as exc:
        load_objects(coco)
    assert str(exc.value) == (f"{coco}: not an Occluded/Separated COCO object list: expected a list of objects, "
                              "found a JSON object (a COCO annotations file?)")
    number = tmp_path / "n.pkl"
    number.write_bytes(pickle.dumps(3))
    with pytest.raises(OccsynthError, match=r"n\.pkl: not an Occluded/Separated COCO object list: expected a list "
                                            r"of objects, found int$"):
        load_objects(number)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {EVIL_MARKER}",))


EVIL_MARKER = ""


def test_malicious_pickle_is_refused(tmp_path):
    global EVIL_MARKER
    EVIL_MARKER = str(tmp_path / "pwned")
    for protocol in (0, 2, 5):
        path = tmp_path / f"evil{protocol}.pkl"
        path.write_bytes(pickle.dumps([["a.jpg", "person", Evil()]], protocol=protocol))
        with pytest.raises(RefusedPickle, match="refusing to load"):
            load_objects(path)
    assert not os.path.exists(EVIL_MARKER)
    with pytest.raises(RefusedPickle, match="numpy"):
        safe_unpickle(pickle.dumps(np.zeros(3)))
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(objects())[:50])
    with pytest.raises(Exception, match="not a readable pickle"):
        load_objects(tmp_path / "cut.pkl")


def test_bad_entries_are_refused_when_the_list_is_read_naming_the_file_and_each_entry(tmp_path):
    good = ["a.jpg", "person", 0, [0, 0, 4, 4], rle(G1)]
    bad = [good[:4] + [{"size": "ab", "counts": "x"}],            # entry 1
           good[:4] + [{"size": [1, 2, 3], "counts": "x"}],       # entry 2
           good[:4] + [{"size": [H, W], "counts": 5}],            # entry 3
           ["a.jpg", "person"],                                   # entry 4
           ["a.jpg", [1], 0, [0, 0, 4, 4], rle(G1)],              # entry 5
           good[:4] + [[[0, 0, 1]]],                              # entry 6
           good[:4] + [{"size": [H, W], "counts": "not rle!"}]]   # entry 7
    path = tmp_path / "occluded.json"
    path.write_text(json.dumps([good, *bad]))
    with pytest.raises(OccsynthError) as caught:
        load_objects(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: 7 bad object entries: entry 1: RLE size must be [height, width]")
    for words in ("entry 2: RLE size must be [height, width] (positive integers), got [1, 2, 3]",
                  "entry 3: unreadable RLE (RLE counts must be a string or a list of ints)",
                  "entry 4: object entry must be [file_name, class, (_,) bbox, mask], got ['a.jpg', 'person']",
                  "entry 5: class must be a class name or a category id, got [1]"):
        assert words in message
    assert "(and 2 more)" in message and "entry 6" not in message
    (tmp_path / "two.json").write_text(json.dumps([good, bad[5], bad[6]]))
    with pytest.raises(OccsynthError, match=r"two.json: 2 bad object entries: entry 1: mask must be an RLE dict or "
                                            r"polygons .*; entry 2: unreadable RLE"):
        load_objects(tmp_path / "two.json")
    with pytest.raises(OccsynthError, match=r"^occluded object list: 1 bad object entry: entry 0: class"):
        check_objects([bad[4]], "occluded object list")
    # a negative uncompressed count: pycocotools overflows (a traceback) where masks.to_rle refuses it
    with pytest.raises(OccsynthError, match=r"entry 0: unreadable RLE \(uncompressed RLE counts must be non-negative"):
        check_objects([good[:4] + [{"size": [H, W], "counts": [-1, H * W + 1]}]], "occluded object list")
    check_objects(objects(), "fine")  # the published layouts, RLE with bytes counts and polygons, pass


def test_more_bad_entries_are_refused_when_the_list_is_read(tmp_path):
    good = ["a.jpg", "person", 0, [0, 0, 4, 4], rle(G1)]
    bad = [good[:4] + [[[0, 0, 5, 0, 5, float("nan")]]],            # entry 1: a coordinate that is no number
           good[:4] + [[[0, 0, 5, 0, 5, "5"]]],                     # entry 2
           good[:4] + [[[0, 0, 5, 0, 5, 5, 0]]],                    # entry 3: an odd count of coordinates
           ["a.jpg", True, 0, [0, 0, 4, 4], rle(G1)],               # entry 4: a bool is no category id
           good[:4] + [{"size": [0, W], "counts": ""}]]             # entry 5: no pixels
    path = tmp_path / "occluded.json"
    path.write_text(json.dumps([good, *bad, [*good, "extra"]]))     # entry 6: six items
    with pytest.raises(OccsynthError) as caught:
        load_objects(path)
    assert str(caught.value).startswith(f"{path}: 6 bad object entries: entry 1: mask must be an RLE dict or polygons")
    assert "entry 2: mask must" in str(caught.value) and "entry 3: mask must" in str(caught.value)
    assert "entry 4: class must be a class name or a category id, got True" in str(caught.value)
    assert "entry 5: RLE size must be [height, width] (positive integers), got [0, 20]" in str(caught.value)
    assert str(caught.value).endswith(" (and 1 more)")
    # five bad entries are all named: there is no "(and 0 more)"
    path.write_text(json.dumps([good, *bad]))
    with pytest.raises(OccsynthError) as caught:
        load_objects(path)
    assert str(caught.value).startswith(f"{path}: 5 bad object entries: ") and str(caught.value).endswith("got [0, 20]")
    with pytest.raises(OccsynthError, match=r"entry 0: object entry must be \[file_name, class, \(_,\) bbox, mask\]"):
        check_objects([[*good, "extra"]], "list")



def test_a_polygon_part_too_short_to_be_one_is_dropped_not_the_object_as_every_reader_does():
    """detectron2's rule (:func:`occsynth.masks.check_polygons`): a 4-number part beside a good outline is left out,
    first or not (pycocotools would read a first 4-number part as a box); an entry with no usable part is refused."""
    polygon = [[0, 10, 10, 10, 10, 20, 0, 20]]
    for stray in ([[3, 3, 9, 9]] + polygon, polygon + [[3, 3, 9, 9], [1, 2, 3]]):
        listed = objects()
        listed[4] = listed[4][:4] + [stray]
        check_objects(listed, "fine")
        res = occsep_recall(results(), GT_IMAGES, listed, categories=CATEGORIES)
        assert res["hits"] == [True, True, False, None, True]
        # the part is dropped, not read: a detection of the good part alone still matches at IoU 0.9, not below
        res = occsep_recall(results(), GT_IMAGES, listed, categories=CATEGORIES, iou_threshold=0.9)
        assert res["hits"][4] is True
    with pytest.raises(OccsynthError, match=r"entry 0: mask must be an RLE dict or polygons .*polygon has no usable "
                                            r"part: its 2 parts have 4, 5 coordinates"):
        check_objects([objects()[4][:4] + [[[3, 3, 9, 9], [1, 2, 3, 4, 5]]]], "list")


def test_a_mask_that_is_neither_an_rle_nor_polygons_is_refused_and_polygons_are_checked_for_shape_only():
    good = ["a.jpg", "person", 0, [0, 0, 4, 4], rle(G1)]
    for mask in (None, 5, "0 0 4 0 4 4", [[0, 0, 4, 0, 4, 4], 5]):
        with pytest.raises(OccsynthError, match=r"^list: 1 bad object entry: entry 0: mask must be an RLE dict or "
                                                r"polygons .*empty or not a list of lists"):
            check_objects([good[:4] + [mask]], "list")
    # the entry's image size is not known here: vertices far outside a 20x20 image are for scoring to judge
    check_objects([good[:4] + [[[0, 0, 400, 0, 400, 400]]]], "list")

def test_a_json_list_is_read_by_its_name_whatever_its_first_byte(tmp_path):
    as_json = [[e[0], e[1], e[2], e[3], {"size": e[4]["size"], "counts": e[4]["counts"].decode()}
                if isinstance(e[4], dict) else e[4]] for e in objects()]
    path = tmp_path / "separated_coco.json"
    path.write_text("\n  " + json.dumps(as_json))
    assert load_objects(path) == as_json
    path.write_text("\n[1, 2,")
    with pytest.raises(OccsynthError, match=r"separated_coco\.json: malformed JSON"):
        load_objects(path)


def test_categories_by_string_id_a_result_without_a_score_and_the_percent_recall():
    """A {id: name} table read from JSON has string keys; a result without a score is under every threshold."""
    as_strings = {str(c["id"]): c["name"] for c in CATEGORIES}
    assert occsep_recall(results(), GT_IMAGES, objects(), categories=as_strings)["hits"] == [True, True, False, None,
                                                                                            True]
    unscored = [{k: v for k, v in r.items() if k != "score"} for r in results()]
    assert occsep_recall(unscored, GT_IMAGES, objects(), categories=CATEGORIES)["found"] == 0
    report = occsep_report(results(), GT_IMAGES, objects()[1:3] + objects()[4:], [], categories=CATEGORIES)
    assert report["occluded_recall"] == pytest.approx(200 / 3) and report["occluded"]["found"] == 2
