import errno
import json
import os
import re

import cv2
import numpy as np
import pytest

from occsynth import atomic, coco, errors, masks
from occsynth.atomic import open_atomic, remove_orphaned_temporaries, remove_stale_temporaries, write_json
from occsynth.errors import BadRecord, OccsynthError, SkipLog


def test_read_dataset_reports_malformed_json(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"images": [1, 2,')
    with pytest.raises(OccsynthError, match="bad.json: malformed JSON at line 1"):
        coco.read_dataset(p)
    p.write_text('{"images": []}')
    with pytest.raises(OccsynthError, match="missing the 'annotations' list"):
        coco.read_dataset(p)
    with pytest.raises(OccsynthError, match="file not found"):
        coco.read_dataset(tmp_path / "nope.json")


@pytest.mark.parametrize("segmentation", [
    [[1, 1, 9, 1, 9, 9]], [[1, 1, 9, 1, 9, 9], [0, 0, 3, 0, 0, 3]], [[-5, -5, 15, 0, 0, 12]],   # decodable
    [[1, 1, 9, 1], [1, 1, 9, 1, 9, 9]], [[1, 1, 9, 1, 9, 9], [3, 3], [1, 2, 3, 4, 5]],  # decodable: stray parts dropped
    [], [[1, 1, 9, 1]], [[1, 1, 9, 1, 9]], [[1, 1, 9, "x", 9, 9]], [[1, 1, 9, float("nan"), 9, 9]],
    [[1, 1, 9, 1, 900, 9]], [[1, 1, 9, 1, 9, 9], 7], [7],
    {"size": [10, 12], "counts": [120]}, {"size": [10, 12], "counts": "0"}, {"size": [10, 13], "counts": [130]}])
def test_checking_a_mask_without_its_rle_refuses_exactly_what_checking_with_it_does(segmentation):
    """rle=False skips rasterising polygons; what it accepts and refuses, and why, must not change. It returns the
    segmentation as an output carries it: the polygon parts that are rasterised (all: the list itself), an RLE as
    given."""
    def outcome(rle):
        try:
            return "ok", coco.check_segmentation(segmentation, 10, 12, "annotation 5", rle=rle)
        except BadRecord as exc:
            return "refused", str(exc)
    with_rle, without = outcome(True), outcome(False)
    assert with_rle[0] == without[0] and (with_rle[0] == "ok" or with_rle[1] == without[1])
    if without[0] == "ok" and isinstance(segmentation, list):
        assert without[1] == [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        assert (without[1] is segmentation) == (without[1] == segmentation)
        assert masks.to_rle(without[1], 10, 12) == with_rle[1]
    elif without[0] == "ok":
        assert without[1] is segmentation


@pytest.mark.parametrize("content", [b"", b"  \n\t\n", b"\xef\xbb\xbf\n"])
def test_a_file_of_nothing_but_white_space_is_called_empty_by_every_reader(tmp_path, content):
    p = tmp_path / "blank.json"
    p.write_bytes(content)
    for read in (coco.read_json, lambda path: list(coco.iter_array(path, "images")),
                 lambda path: coco.read_array(path, "images")):
        with pytest.raises(OccsynthError) as exc:
            read(p)
        assert str(exc.value) == f"{p}: empty file, expected JSON"


def test_iter_array_streams_and_reports_malformed(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"images": [{"id": 1}, {"id": 2}], "annotations": [{"id": 5, "bbox": [1.5, 2, 3, 4]}]}))
    assert [i["id"] for i in coco.iter_array(p, "images")] == [1, 2]
    assert list(coco.iter_array(p, "annotations"))[0]["bbox"] == [1.5, 2.0, 3.0, 4.0]
    p.write_text('{"annotations": [{"id": 1}, {"id": ')
    with pytest.raises(OccsynthError, match=r"malformed JSON \(found while reading the file for its 'annotations'\) "
                                            r"\(parse error: premature EOF: the file ends inside its JSON \(cut off\?\)\)"):
        list(coco.iter_array(p, "annotations"))
    p.write_text('{"images": [{"id": 1' + "0" * 30 + '}]}')
    with pytest.raises(OccsynthError, match="integer overflow: a whole number beyond the 64-bit range"):
        list(coco.iter_array(p, "images"))
    # elsewhere the message quotes the text at the error (a COCO file is one line of hundreds of MB)
    p.write_text('{"images": [{"id": 1}' + ', {"id": 2}' * 3000 + ', {"id" 3}]}')
    with pytest.raises(OccsynthError) as exc:
        list(coco.iter_array(p, "images"))
    assert str(exc.value).endswith("(parse error: object key and value must be separated by a colon (':'); "
                                   'here: {"id": 2}, {"id": 2}, {"id" >>>3}]})')
    p.write_text(json.dumps({"images": [{"id": 1, "area": float("nan")}]}))  # what Python's json.dump writes
    with pytest.raises(OccsynthError, match=r"invalid char in json text: NaN and Infinity are not JSON \(Python's "
                                            r'json.dump writes them unless allow_nan=False\); here: .*"area": >>>NaN}'):
        list(coco.iter_array(p, "images"))


@pytest.mark.parametrize("content, message", [
    ('{"images": [{"id": 1}], "annotations": {}}', "'annotations' is an object, expected a list"),
    ('{"images": [{"id": 1}], "annotations": null}', "'annotations' is a null, expected a list"),
    ('{"images": [{"id": 1}]}', "missing the 'annotations' list"),
    ('[{"annotations": []}]', "the top level is an array, expected a JSON object"),
])
def test_iter_array_refuses_a_key_that_holds_no_array(tmp_path, content, message):
    """An item stream is empty for [] and for a missing key or an object alike: the latter two raise."""
    p = tmp_path / "a.json"
    p.write_text(content)
    with pytest.raises(OccsynthError, match=f"a.json: not a COCO file: {re.escape(message)}"):
        list(coco.iter_array(p, "annotations"))
    p.write_text('{"annotations": []}')
    assert list(coco.iter_array(p, "annotations")) == []


def test_read_array_parses_only_up_to_the_end_of_its_array(tmp_path):
    p = tmp_path / "a.json"
    # everything after the images array is broken: reading the images never gets there
    p.write_text('{"info": {}, "images": [{"id": 1, "h": 2.5}, {"id": 2}], "annotations": [{"id": 1}, {"id": ')
    assert coco.read_array(p, "images") == [{"id": 1, "h": 2.5}, {"id": 2}]
    with pytest.raises(OccsynthError, match="malformed JSON \\(found while reading the file for its 'licenses'\\)"):
        coco.read_array(p, "licenses")                        # absent: the whole file is read, and it is broken
    p.write_text('{"images": [], "categories": {"id": 3}}')
    assert coco.read_array(p, "images") == []
    with pytest.raises(OccsynthError, match="a.json: not a COCO file: 'categories' is an object, expected a list"):
        coco.read_array(p, "categories")
    with pytest.raises(OccsynthError, match="a.json: not a COCO file: missing the 'annotations' list"):
        coco.read_array(p, "annotations")


TWICE = '{"images": [{"id": 1}], "annotations": [], "categories": [], "images": [{"id": 2}]}'
EVERY_READER = {"read_json": coco.read_json, "read_dataset": coco.read_dataset,
                "iter_array": lambda path: list(coco.iter_array(path, "images")),
                "read_array": lambda path: coco.read_array(path, "images"),
                "check_coco_layout": coco.check_coco_layout}


@pytest.mark.parametrize("reader", EVERY_READER)
@pytest.mark.parametrize("content", [
    TWICE,
    TWICE.replace('"images": [{"id": 2}]', '"\\u0069mages": [{"id": 2}]'),   # the same key, spelled with an escape
    '{"images": [{"id": 1}], "annotations": [], "categories": [], "images": [{"id": 2}], "images": []}',
], ids=["twice", "escaped", "three-times"])
def test_a_top_level_key_given_twice_is_refused_by_every_reader(tmp_path, reader, content):
    """JSON allows a key twice; json.load kept the last value, read_array the first, iter_array both."""
    p = tmp_path / "twice.json"
    p.write_text(content)
    with pytest.raises(OccsynthError) as exc:
        EVERY_READER[reader](p)
    assert str(exc.value).startswith(f"{p}: top-level key 'images' given {content.count('mages')} times")


def test_a_long_file_repeating_its_key_past_the_first_read_is_refused(tmp_path):
    """The streaming readers find the second key in the bytes they read, wherever a read ends (also inside it)."""
    p = tmp_path / "long.json"
    for cut in (0, 3, 8):  # the second '"images"' starts the second 64 KiB read, spans the two, ends the first
        head = '{"images": [{"id": 1, "pad": "'
        tail_start = 64 * 1024 - cut - len('"}], "annotations": [], ')
        p.write_text(head + "x" * (tail_start - len(head)) + '"}], "annotations": [], "images": [], "categories": []}')
        assert p.read_bytes().index(b'"images": []') == 64 * 1024 - cut
        with pytest.raises(OccsynthError, match="top-level key 'images' given 2 times"):
            list(coco.iter_array(p, "images"))
        with pytest.raises(OccsynthError, match="top-level key 'images' given 2 times"):
            coco.read_array(p, "images")


def test_the_streaming_readers_parse_again_only_a_file_that_spells_their_key_twice(tmp_path, monkeypatch):
    """Telling a top-level key from the same text inside a record takes a second parse; a file with the key's
    text once does not pay it, and one with it inside a record is read as it is."""
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"info": {"description": "images"}, "images": [{"id": 1}], "annotations": [],
                             "categories": [{"id": 1, "name": "images"}]}))
    calls = []
    real = coco.top_level_keys
    monkeypatch.setattr(coco, "top_level_keys", lambda path: calls.append(path) or real(path))
    assert [i["id"] for i in coco.iter_array(p, "images")] == [1] and len(calls) == 1
    assert coco.read_array(p, "images") == [{"id": 1}] and len(calls) == 2
    assert list(coco.iter_array(p, "annotations")) == [] and coco.read_array(p, "categories")[0]["id"] == 1
    assert len(calls) == 2
    # another key twice is no concern of a reader of 'images'; the readers of the whole file refuse it
    p.write_text('{"info": {}, "images": [{"id": 1}], "annotations": [], "categories": [], "info": {"a": 1}}')
    assert list(coco.iter_array(p, "images")) == [{"id": 1}] and coco.read_array(p, "images") == [{"id": 1}]
    with pytest.raises(OccsynthError, match=f"{re.escape(str(p))}: top-level key 'info' given 2 times"):
        coco.read_dataset(p)
    # a key repeated inside a record is left as json reads it (the last value)
    p.write_text('{"images": [{"id": 1, "id": 2}], "annotations": [], "categories": []}')
    assert coco.read_dataset(p)["images"] == [{"id": 2}] == coco.read_array(p, "images")


def test_index_dataset_skips_bad_records_by_reason():
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}, {"id": 2, "file_name": 3}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": []},
                            {"id": 2, "image_id": 9, "category_id": 1, "segmentation": []},
                            {"id": 3, "image_id": 1, "category_id": 77, "segmentation": []},
                            {"id": 4, "image_id": 2, "category_id": 1, "segmentation": []}]}
    log = SkipLog()
    images, categories, by_image = coco.index_dataset(data, log)
    assert list(images) == [1] and [a["id"] for a in by_image[1]] == [1]
    # image 2's record was skipped: its annotation is of a skipped image, not of an unknown one (as image 9's is)
    assert log.counts == {errors.MALFORMED_RECORD: 1, errors.UNKNOWN_IMAGE: 1, errors.UNKNOWN_CATEGORY: 1,
                          errors.OF_SKIPPED_IMAGE: 1}
    assert log.examples[errors.OF_SKIPPED_IMAGE] == (
        "annotation 4: annotation of a skipped image (image record 2: malformed record)")
    assert log.examples[errors.UNKNOWN_IMAGE] == "annotation 2: annotation refers to an unknown image id (image_id 9)"
    with pytest.raises(BadRecord, match="image record 2: malformed record"):
        coco.index_dataset(data, SkipLog(strict=True))


def test_an_id_given_as_text_is_said_to_be_no_integer_not_only_unknown():
    """An exporter's "image_id": "139010" was "an unknown image id (image_id '139010')" in build-cocoocc, bcnet
    train and evaluate while image 139010 exists (generate's bank said "'image_id' is not an integer"): a user
    looked for a missing image. The reason (and its count) stays; the detail says what is wrong with the id."""
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [{"id": 1, "image_id": "1", "category_id": 1, "segmentation": []},
                            {"id": 2, "image_id": 1, "category_id": "1", "segmentation": []}]}
    log = SkipLog()
    coco.index_dataset(data, log)
    assert log.counts == {errors.UNKNOWN_IMAGE: 1, errors.UNKNOWN_CATEGORY: 1}
    assert log.examples[errors.UNKNOWN_IMAGE] == (
        "annotation 1: annotation refers to an unknown image id (image_id '1' is not an integer)")
    assert log.examples[errors.UNKNOWN_CATEGORY] == (
        "annotation 2: annotation refers to an unknown category id (category_id '1' is not an integer)")
    from occsynth.stats import dataset_stats
    said = dataset_stats(data)["skipped"]["examples"][errors.UNKNOWN_IMAGE]  # stats printed it bare: image_id 1
    assert said.endswith("(image_id '1' is not an integer)"), said


def test_a_duplicate_id_says_later_records_are_skipped_only_when_they_are():
    """Strict mode stops at the repeated id: its message may not claim that later records were skipped."""
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]]},
                            {"id": 5, "image_id": 1, "category_id": 1, "segmentation": []}]}
    log = SkipLog()
    coco.index_dataset(data, log)
    assert log.examples == {errors.DUPLICATE_ID: "annotation 5: duplicate id (later records with this id skipped)"}
    with pytest.raises(BadRecord) as caught:
        coco.index_dataset(data, SkipLog(strict=True))
    assert str(caught.value) == "annotation 5: duplicate id (an earlier record has the same id)"
    assert coco.unique_by_id(data["annotations"], "annotation", log) == data["annotations"][:1]
    with pytest.raises(BadRecord) as caught:
        coco.unique_by_id(data["annotations"], "annotation", SkipLog(strict=True))
    assert str(caught.value) == "annotation record 5: duplicate id (an earlier record has the same id)"


SQUARE = [[0, 0, 2, 0, 2, 2, 0, 2]]  # a mask every reader decodes
EMPTY = [[1, 1, 1, 1, 1, 1]]  # a polygon that decodes to no pixel: bcnet's loader skips it as an empty mask
BROKEN = [[0, 0, 2, 0]]  # two points, its only part: no polygon (check_segmentation refuses it)


def _twins_data(*annotations):
    """Images 1 and 2 (4x4), one category, the given annotations (id, image_id, segmentation[, amodal])."""
    anns = []
    for ann_id, image_id, segmentation, *amodal in annotations:
        anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": segmentation,
                     **({"amodal_segmentation": amodal[0]} if amodal else {})})
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 4, "width": 4} for i in (1, 2)],
            "categories": [{"id": 1, "name": "person"}], "annotations": anns}


def test_of_the_annotations_of_one_id_the_first_usable_one_is_kept():
    """A broken first record no longer displaces its good twin: the twin takes the id where the file puts it (as if
    the broken one were not there), the broken one is counted by its own reason, later repeats as duplicates."""
    data = _twins_data((5, 1, BROKEN), (6, 1, SQUARE), (5, 1, SQUARE), (5, 1, SQUARE), (7, 1, BROKEN))
    log = SkipLog()
    _, _, by_image = coco.index_dataset(data, log)
    anns = data["annotations"]
    assert [id(a) for a in by_image[1]] == [id(anns[1]), id(anns[2]), id(anns[4])] and by_image[2] == []
    assert log.counts == {errors.DEGENERATE_MASK: 1, errors.DUPLICATE_ID: 1}
    assert log.examples[errors.DEGENERATE_MASK] == (
        "annotation 5 'segmentation': degenerate or empty segmentation (polygon has no usable part: its one part has "
        "4 coordinates (a part needs an even number >= 6))")
    # strict: the run stops at the broken first record, named, not at its twin as a duplicate
    with pytest.raises(BadRecord) as caught:
        coco.index_dataset(data, SkipLog(strict=True))
    assert str(caught.value) == log.examples[errors.DEGENERATE_MASK]



def test_a_first_record_whose_mask_is_empty_gives_way_to_a_repeat_with_pixels():
    """A kept record whose mask decodes to no pixel won the id, its twin was dropped as a duplicate, and bcnet's
    loader then skipped it as an empty mask: the object was lost. Of an id that repeats, an empty mask is no usable
    one: the twin takes the id, the empty record counted as the loader counts it. Both empty: the first stays."""
    empty_rle = {"size": [4, 4], "counts": [16]}
    for empty in (EMPTY, empty_rle):
        data = _twins_data((5, 1, empty), (6, 1, SQUARE), (5, 1, empty), (5, 1, SQUARE), (5, 1, SQUARE))
        anns = data["annotations"]
        log = SkipLog()
        _, _, by_image = coco.index_dataset(data, log)
        assert [id(a) for a in by_image[1]] == [id(anns[1]), id(anns[3])] and by_image[2] == []
        assert log.counts == {errors.DEGENERATE_MASK: 1, errors.DUPLICATE_ID: 2}
        assert log.examples[errors.DEGENERATE_MASK] == (
            "annotation 5 'segmentation': degenerate or empty segmentation (empty mask)")
        with pytest.raises(BadRecord) as caught:  # strict: the run stops at the empty record, named, as loading does
            coco.index_dataset(data, SkipLog(strict=True))
        assert str(caught.value) == log.examples[errors.DEGENERATE_MASK]
        data = _twins_data((5, 1, empty), (5, 2, empty))  # no usable twin: the first stays (loading skips it)
        log = SkipLog()
        _, _, by_image = coco.index_dataset(data, log)
        assert by_image == {1: [data["annotations"][0]], 2: []} and log.counts == {errors.DUPLICATE_ID: 1}
    # amodal training: an empty amodal mask is no usable one either; the visible-only reader keeps the first
    data = _twins_data((5, 1, SQUARE, EMPTY), (5, 1, SQUARE, SQUARE))
    log = SkipLog()
    by_image = coco.index_dataset(data, log, mask_keys=("segmentation", "amodal_segmentation"))[2]
    assert by_image[1] == [data["annotations"][1]] and log.counts == {errors.DEGENERATE_MASK: 1}
    assert log.examples[errors.DEGENERATE_MASK] == (
        "annotation 5 'amodal_segmentation': degenerate or empty segmentation (empty mask)")
    assert coco.index_dataset(data, SkipLog())[2][1] == [data["annotations"][0]]

def test_a_good_twin_on_another_image_takes_the_id_there():
    """The kept record is the twin, and its image_id says where it belongs (its mask is sized by that image)."""
    data = _twins_data((5, 1, BROKEN), (6, 1, SQUARE), (5, 2, SQUARE))
    log = SkipLog()
    _, _, by_image = coco.index_dataset(data, log)
    assert by_image == {1: [data["annotations"][1]], 2: [data["annotations"][2]]}
    assert by_image[2][0] is data["annotations"][2] and log.counts == {errors.DEGENERATE_MASK: 1}


def test_a_repeated_id_is_a_duplicate_unless_the_kept_record_is_broken_and_the_repeat_is_not():
    for annotations, kept in [(((5, 1, SQUARE), (5, 1, BROKEN)), 0),  # the kept one good: the repeat is not checked
                              (((5, 1, BROKEN), (5, 1, BROKEN)), 0),  # both broken: the first stays (loading skips it)
                              (((5, 1, SQUARE), (5, 1, SQUARE)), 0)]:
        data = _twins_data(*annotations)
        log = SkipLog()
        _, _, by_image = coco.index_dataset(data, log)
        assert by_image[1] == [data["annotations"][kept]] and by_image[1][0] is data["annotations"][kept]
        assert log.examples == {errors.DUPLICATE_ID: "annotation 5: duplicate id (later records with this id skipped)"}


def test_strict_a_broken_kept_record_stops_the_run_naming_it_also_when_its_repeat_is_broken_too():
    """Strict, a repeat of a broken record stops at the broken record (its own reason), not at the repeat as a
    duplicate: what a non-strict run would skip first."""
    data = _twins_data((5, 1, BROKEN), (5, 1, BROKEN))
    with pytest.raises(BadRecord) as caught:
        coco.index_dataset(data, SkipLog(strict=True))
    assert str(caught.value) == ("annotation 5 'segmentation': degenerate or empty segmentation (polygon has no usable "
                                 "part: its one part has 4 coordinates (a part needs an even number >= 6))")


def test_a_repeat_on_an_image_of_another_size_is_judged_against_its_own_image():
    """The repeat's RLE is sized by its own image record (8x8), not by the kept record's (4x4): it is usable."""
    data = _twins_data((5, 1, BROKEN), (5, 2, {"size": [8, 8], "counts": [0, 64]}))
    data["images"][1].update(height=8, width=8)
    log = SkipLog()
    _, _, by_image = coco.index_dataset(data, log)
    assert by_image == {1: [], 2: [data["annotations"][1]]} and log.counts == {errors.DEGENERATE_MASK: 1}


def test_only_the_masks_a_reader_names_decide_which_record_of_an_id_is_usable():
    """``mask_keys``: bcnet's amodal training loads ``amodal_segmentation`` too, so a record whose amodal mask is
    broken gives way to a twin with both; a reader of ``segmentation`` alone keeps the first. A record without a
    named key is judged by the keys it has (a crowd region may lack an amodal mask)."""
    data = _twins_data((5, 1, SQUARE, BROKEN), (5, 1, SQUARE, SQUARE), (6, 1, SQUARE), (6, 1, SQUARE, SQUARE))
    anns = data["annotations"]
    log = SkipLog()
    assert coco.index_dataset(data, log)[2][1] == [anns[0], anns[2]] and log.counts == {errors.DUPLICATE_ID: 2}
    log = SkipLog()
    by_image = coco.index_dataset(data, log, mask_keys=("segmentation", "amodal_segmentation"))[2]
    assert [id(a) for a in by_image[1]] == [id(anns[1]), id(anns[2])]
    assert log.counts == {errors.DEGENERATE_MASK: 1, errors.DUPLICATE_ID: 1}
    assert log.examples[errors.DEGENERATE_MASK].startswith("annotation 5 'amodal_segmentation': ")
    # the repeat is judged by the same masks: one whose amodal mask is broken or empty too takes nothing
    for amodal in (BROKEN, EMPTY):
        data = _twins_data((5, 1, SQUARE, BROKEN), (5, 2, SQUARE, amodal))
        log = SkipLog()
        by_image = coco.index_dataset(data, log, mask_keys=("segmentation", "amodal_segmentation"))[2]
        assert by_image == {1: [data["annotations"][0]], 2: []} and log.counts == {errors.DUPLICATE_ID: 1}


def test_index_dataset_checks_masks_only_of_ids_that_repeat(monkeypatch):
    """COCO train has 860k annotations: their masks are checked where they are loaded, not when indexing."""
    calls = []
    real = coco.check_segmentation
    monkeypatch.setattr(coco, "check_segmentation", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    data = _twins_data((5, 1, BROKEN), (6, 1, SQUARE), (7, 2, BROKEN), (8, 2, EMPTY))
    log = SkipLog()
    assert [len(v) for v in coco.index_dataset(data, log)[2].values()] == [2, 2] and calls == [] and not log.counts
    data["annotations"].append({**data["annotations"][1]})  # id 6 again: its kept record is checked, and is good
    coco.index_dataset(data, log)
    assert calls == ["annotation 6 'segmentation'"] and log.counts == {errors.DUPLICATE_ID: 1}


def test_a_kept_record_is_judged_once_however_often_its_id_repeats(monkeypatch):
    """An exporter that numbers annotations per image repeats ids 1..k on every image: each repeat was judged by
    decoding the kept record's mask again (rasterised, to find an empty one), a decode per annotation of the file
    (minutes over COCO train's 860k). Each record is judged once at most: a repeat that takes the id was judged
    usable when it did."""
    calls = []
    real = coco.check_segmentation
    monkeypatch.setattr(coco, "check_segmentation", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    data = _twins_data((5, 1, SQUARE), *[(5, 1 + k % 2, SQUARE) for k in range(6)])
    log = SkipLog()
    assert coco.index_dataset(data, log)[2] == {1: [data["annotations"][0]], 2: []}
    assert calls == ["annotation 5 'segmentation'"] and log.counts == {errors.DUPLICATE_ID: 6}
    calls.clear()  # a broken kept record: the first good repeat takes the id; the repeats after it are duplicates
    data = _twins_data((5, 1, BROKEN), (5, 1, EMPTY), (5, 2, SQUARE), (5, 1, SQUARE), (5, 1, BROKEN))
    log = SkipLog()
    assert coco.index_dataset(data, log)[2] == {1: [], 2: [data["annotations"][2]]}
    assert calls == ["annotation 5 'segmentation'"] * 3 and log.counts == {errors.DEGENERATE_MASK: 1,
                                                                            errors.DUPLICATE_ID: 3}


@pytest.mark.parametrize("check, record", [
    (lambda r: coco.check_image_record(r), {"id": "x" * 10_000, "file_name": "a.jpg", "height": 1, "width": 1}),
    (lambda r: coco.check_image_record(r), list(range(5_000))),
    (lambda r: coco.check_annotation_record(r, {1: {}}, {1: {}}),
     {"id": 7, "image_id": "y" * 10_000, "category_id": 1, "segmentation": []}),
])
def test_messages_quote_a_huge_record_briefly(check, record):
    """A record's id or content is quoted cut short: a 10 kB id must not become a 10 kB message."""
    with pytest.raises(BadRecord) as caught:
        check(record)
    assert len(str(caught.value)) < 200 and "..." in str(caught.value)


def test_read_dataset_names_what_its_top_level_and_each_list_are(tmp_path):
    p = tmp_path / "x.json"
    for content, words in (([{"images": []}], "the top level is an array, expected a JSON object"),
                           (3, "the top level is a number, expected a JSON object"),
                           ({"images": [], "annotations": []}, "missing the 'categories' list of a COCO instances file"),
                           ({"images": True, "annotations": [], "categories": []}, "'images' is a boolean, expected a list"),
                           ({"images": [], "annotations": [], "categories": "x"}, "'categories' is a string, expected a list")):
        p.write_text(json.dumps(content))
        with pytest.raises(OccsynthError) as exc:
            coco.read_dataset(p)
        assert str(exc.value) == f"{p}: not a COCO file: {words}"


def test_an_image_record_needs_whole_positive_sizes_and_a_file_name_only_where_a_file_is_read():
    record = {"id": 3, "file_name": "a.jpg", "height": 4, "width": 5}
    for key, value, why in (("id", True, "'id' missing or not int"), ("height", True, "'height' missing or not int"),
                            ("width", False, "'width' missing or not int"), ("width", 0, "non-positive height/width"),
                            ("height", -1, "non-positive height/width"), ("file_name", None, "'file_name' missing")):
        with pytest.raises(BadRecord) as exc:
            coco.check_image_record({**record, key: value})
        assert exc.value.reason == errors.MALFORMED_RECORD and why in str(exc.value), str(exc.value)
    nameless = {"id": 3, "height": 4, "width": 5}
    assert coco.check_image_record(nameless, file_name=False) == nameless  # the ground truth pycocotools scores
    log = SkipLog()
    assert coco.usable_image_records([nameless, dict(nameless, id=4, width=0)], log, file_name=False) == (
        {3: nameless}, {4: "image record 4: malformed record"})
    log = SkipLog()
    later = dict(record, file_name="b.jpg")  # the id's first usable record is kept; a later one is a duplicate
    assert coco.usable_image_records([nameless, record, later], log) == (
        {3: record}, {3: "image record 3: duplicate id"})
    assert log.counts == {errors.MALFORMED_RECORD: 1, errors.DUPLICATE_ID: 1}


def test_an_lvis_image_record_without_a_file_name_takes_it_from_its_coco_url(tmp_path):
    """LVIS v1 records name their file only by ``coco_url``: as detectron2 reads them, the file is the URL's last two
    parts (split folder and file name) under the image root; a record's own ``file_name`` always wins."""
    lvis = {"id": 7, "height": 4, "width": 5, "coco_url": "http://images.cocodataset.org/val2017/000000391895.jpg",
            "not_exhaustive_category_ids": [3], "neg_category_ids": [1203]}
    named = dict(lvis, file_name="val2017/000000391895.jpg")
    assert coco.check_image_record(lvis) == named
    assert "file_name" not in lvis  # the input record is not changed
    assert coco.check_image_record(dict(lvis, file_name="mine.jpg"))["file_name"] == "mine.jpg"
    assert coco.check_image_record(lvis, file_name=False) == lvis  # no file is read there
    assert coco.usable_image_records([lvis], SkipLog()) == ({7: named}, {})
    assert coco.record_image_path(tmp_path, coco.check_image_record(lvis)) == (
        tmp_path / "val2017" / "000000391895.jpg").absolute() == coco.record_image_path(tmp_path, lvis)
    for url in ("http://images.cocodataset.org/000000391895.jpg", "", 5, "http://images.cocodataset.org/val2017/",
                "http://[images.cocodataset.org/val2017/000000391895.jpg"):  # urlsplit raises ValueError
        with pytest.raises(BadRecord) as exc:
            coco.check_image_record(dict(lvis, coco_url=url))
        assert exc.value.reason == errors.MALFORMED_RECORD
        assert str(exc.value) == (f"image record 7: malformed record ('file_name' missing, and 'coco_url' "
                                  f"{coco.brief(url)} names no split folder and file in it)")
    escaping = coco.check_image_record(dict(lvis, coco_url="http://x/../a.jpg?download=1"))
    assert escaping["file_name"] == "../a.jpg"  # checked where it is read, as any file_name
    with pytest.raises(BadRecord) as exc:
        coco.record_image_path(tmp_path, escaping)
    assert exc.value.reason == errors.OUTSIDE_ROOT


def test_none_found_under_samples_only_names_it_can_look_up(tmp_path):
    """Records whose names are all refused are skipped where they are read: they do not make the folder a wrong one."""
    (tmp_path / "b.jpg").write_bytes(b"x")
    refused = [{"id": i, "file_name": f"../{i}.jpg"} for i in range(3)]
    assert coco.none_found_under(tmp_path, 3, refused.__getitem__) is None
    missing = refused + [{"id": 3, "file_name": "a.jpg"}]
    assert coco.none_found_under(tmp_path, 4, missing.__getitem__) == [(tmp_path / "a.jpg").absolute()]
    found = missing + [{"id": 4, "file_name": "b.jpg"}]
    assert coco.none_found_under(tmp_path, 5, found.__getitem__) is None


def test_names_no_file_refuses_a_set_only_when_none_of_its_records_names_a_file():
    """The sample of records tells a wrong folder (looking a file up costs a disk access), but a name is judged
    without one: a set whose sampled records are all absolute, with a usable one between them, was refused up front,
    where its readers would read that image (and skip the others, counting them)."""
    records = [{"id": k, "file_name": f"/data/{k}.jpg", "height": 5, "width": 5} for k in range(100)]
    records[1]["file_name"] = "1.jpg"
    assert 1 not in coco.spread(len(records), coco.ROOT_SAMPLE)
    assert coco.names_no_file(len(records), records.__getitem__) is None
    records[1]["file_name"] = "../1.jpg"
    refused = coco.names_no_file(len(records), records.__getitem__)
    assert isinstance(refused, BadRecord) and "image record 0 (file_name '/data/0.jpg')" in str(refused)
    lvis = [{"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg", "height": 5, "width": 5}]
    assert coco.names_no_file(1, lvis.__getitem__) is None and coco.names_no_file(0, [].__getitem__) is None


def test_resolve_image_path_refuses_escapes(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    assert coco.resolve_image_path(root, "sub/a.jpg") == (root / "sub" / "a.jpg").absolute()
    # links laid out inside the root (clusters link image folders) are followed; the name is what is checked
    assert coco.resolve_image_path(root, "link.jpg") == (root / "link.jpg").absolute()
    for bad in ["../secret.jpg", "/etc/passwd", "sub/../../secret.jpg", "", "  \t", "a\x00.jpg"]:
        with pytest.raises(BadRecord) as exc:
            coco.resolve_image_path(root, bad)
        assert exc.value.reason == errors.OUTSIDE_ROOT


def _write(path, img, ext=".png", params=()):
    ok, buf = cv2.imencode(ext, img, list(params))
    path.write_bytes(buf.tobytes())


def test_read_image_conversions_and_failures(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    _write(tmp_path / "c.png", rgb[..., ::-1])
    assert np.array_equal(coco.read_image(tmp_path / "c.png", (6, 8)), rgb)
    bgr = coco.read_image(tmp_path / "c.png", (6, 8), bgr=True)  # generation's order: unconverted
    assert np.array_equal(bgr, rgb[..., ::-1])
    # encoding BGR with bgr=True writes the same file as encoding its RGB (PNG: exact; JPEG: same bytes)
    for ext in (".png", ".jpg"):
        assert coco.encode_image(bgr, ext, bgr=True) == coco.encode_image(rgb, ext)
    assert np.array_equal(coco.decode_image(coco.encode_image(bgr, ".png", bgr=True), "x"), rgb)
    gray = np.full((6, 8), 77, np.uint8)
    _write(tmp_path / "g.png", gray)
    assert coco.read_image(tmp_path / "g.png").shape == (6, 8, 3)
    sixteen = np.full((6, 8), 65535, np.uint16)
    _write(tmp_path / "s.png", sixteen)
    assert coco.read_image(tmp_path / "s.png").max() == 255
    _write(tmp_path / "j.jpg", rgb[..., ::-1], ".jpg")
    data = (tmp_path / "j.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "x.jpg").write_bytes(b"not an image at all")
    cases = {"t.jpg": errors.TRUNCATED_IMAGE, "x.jpg": errors.CORRUPT_IMAGE, "missing.jpg": errors.MISSING_FILE}
    for name, reason in cases.items():
        with pytest.raises(BadRecord) as exc:
            coco.read_image(tmp_path / name)
        assert exc.value.reason == reason and name in str(exc.value)
    with pytest.raises(BadRecord) as exc:
        coco.read_image(tmp_path / "c.png", (8, 6))
    assert exc.value.reason == errors.SIZE_MISMATCH


def test_one_pixel_limit_for_image_records_and_image_files(tmp_path, monkeypatch):
    """A 20000x20000 image (a PNG of a few kilobytes) decodes to 1.2 GB, and every mask at its size costs as much
    again: a record claiming more pixels than masks.MAX_IMAGE_PIXELS is refused, and so is a file over it, whoever
    reads it, in one wording. Here the limit is lowered instead of making a huge file."""
    from occsynth import masks

    monkeypatch.setattr(masks, "MAX_IMAGE_PIXELS", 4000)
    record = {"id": 7, "file_name": "big.png", "height": 60, "width": 80}  # 4,800 pixels
    with pytest.raises(BadRecord) as exc:
        coco.check_image_record(record)
    assert exc.value.reason == errors.IMAGE_TOO_LARGE
    assert str(exc.value) == "image record 7: image too large (60x80 pixels (height x width), over the limit of 4,000)"
    assert coco.check_image_record(dict(record, height=50)) == dict(record, height=50)  # 4,000: at the limit
    log = SkipLog()
    data = {"images": [record, {"id": 8, "file_name": "ok.png", "height": 50, "width": 80}],
            "annotations": [], "categories": []}
    assert list(coco.index_dataset(data, log)[0]) == [8] and log.counts == {errors.IMAGE_TOO_LARGE: 1}
    with pytest.raises(BadRecord, match="image record 7: image too large"):
        coco.index_dataset(data, SkipLog(strict=True))
    decoded = []
    real = coco.cv2.imdecode
    monkeypatch.setattr(coco.cv2, "imdecode", lambda *args: decoded.append(1) or real(*args))
    for suffix in (".png", ".jpg", ".bmp"):
        _write(tmp_path / f"big{suffix}", np.full((60, 80, 3), 128, np.uint8), suffix)
        with pytest.raises(BadRecord) as exc:
            coco.read_image(tmp_path / f"big{suffix}")  # no record to check it against: the file tells
        assert str(exc.value) == (f"image file {tmp_path / f'big{suffix}'}: image too large (60x80 pixels "
                                  "(height x width), over the limit of 4,000)")
    assert len(decoded) == 1  # the BMP: PNG and JPEG are refused from their headers, before decoding


def _exif_thumbnail_jpeg(main: bytes, thumbnail: bytes) -> bytes:
    """``main`` with an APP1 segment right after its start marker that holds ``thumbnail`` (a whole JPEG,
    end marker included), as cameras write an EXIF thumbnail."""
    payload = b"Exif\x00\x00" + thumbnail
    return main[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + main[2:]


def test_a_file_cut_short_is_truncated_and_one_with_a_trailer_is_not(tmp_path, capfd):
    rng = np.random.default_rng(0)
    bgr = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    thumbnail = cv2.imencode(".jpg", bgr[::4, ::4].copy())[1].tobytes()
    files = {
        "plain.jpg": cv2.imencode(".jpg", bgr)[1].tobytes(),
        "progressive.jpg": cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1,
                                                      cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes(),
        "plain.png": cv2.imencode(".png", bgr)[1].tobytes(),
    }
    files["exif.jpg"] = _exif_thumbnail_jpeg(files["plain.jpg"], thumbnail)
    # a phone's trailer after the image: arbitrary bytes, markers among them
    trailer = b"SEFH" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)) + b"\xff\xda\x00\x08\xff\xd9IEND" + b"\x01"
    for name, data in files.items():
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        (tmp_path / name).write_bytes(data + trailer)
        assert np.array_equal(coco.read_image(tmp_path / name, bgr=True), expected), name
        cuts = [len(data) // 3, len(data) // 2, len(data) - 1]
        if name == "exif.jpg":
            cuts.append(len(data) - len(files["plain.jpg"]) + 100)  # past the thumbnail's own end marker
        for cut in cuts:
            (tmp_path / name).write_bytes(data[:cut])
            with pytest.raises(BadRecord) as exc:
                coco.read_image(tmp_path / name)
            assert exc.value.reason == errors.TRUNCATED_IMAGE, (name, cut)
    assert "libpng" not in capfd.readouterr().err  # a truncated PNG is refused before libpng prints its errors


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with open_atomic(target) as f:
            f.write('{"a": 2, "trunc')
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".*tmp*"))
    (tmp_path / ".x.json.tmp-123").write_text("junk")
    assert remove_stale_temporaries(tmp_path) == 1


def test_a_sweep_by_name_pattern_takes_the_temporaries_of_whole_matching_names_only(tmp_path):
    """bcnet predict sweeps its pictures' temporaries in a folder others may write into too: a name that only
    begins like one of its pictures is not its own."""
    own = tmp_path / ".000001-a.png.tmp-1-ab"
    longer = tmp_path / ".000001-a.png.bak.tmp-1-ab"
    other = tmp_path / ".notes.txt.tmp-1-ab"
    for path in (own, longer, other):
        path.write_text("part")
    assert remove_orphaned_temporaries(tmp_path, names=re.compile(r"\d{6,}-.*\.png")) == 1
    assert not own.exists() and longer.exists() and other.exists()


def test_two_writers_with_one_pid_do_not_share_a_temporary(tmp_path, monkeypatch):
    """Shards on two hosts (containers often give every task the same pid) writing one run file."""
    monkeypatch.setattr(os, "getpid", lambda: 1)
    target = tmp_path / "run.json"
    with open_atomic(target) as first:
        first.write('{"from": "host a"}')
        with open_atomic(target) as second:
            second.write('{"from": "host b"}')
    assert json.loads(target.read_text()) == {"from": "host a"}  # whole, whichever came last
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("errno_name", ["EACCES", "EPERM", "EROFS"])
def test_a_write_refused_by_permissions_says_the_output_location_is_not_writable(tmp_path, monkeypatch, errno_name):
    """As a user in a folder that is not theirs (root, as tests often run, may write anywhere): the rename is
    refused, the earlier file stays and no temporary is left."""
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    code = getattr(errno, errno_name)

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))
    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OccsynthError) as exc:
        write_json(target, {"a": 2})
    assert str(exc.value) == f"cannot write {target}: output location is not writable"
    assert json.loads(target.read_text()) == {"a": 1} and not list(tmp_path.glob(".*tmp*"))


def test_unwritable_directory_gives_clear_error(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/occsynth-test/out.json"  # root can write anywhere else; /proc refuses
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out.json"
    with pytest.raises(OccsynthError, match="cannot write"):
        write_json(target, {"a": 1})


def test_skiplog_summary_and_merge():
    log = SkipLog()
    log.skip(BadRecord(errors.MISSING_FILE, "image file a.jpg"))
    log.skip(BadRecord(errors.MISSING_FILE, "image file b.jpg"))
    other = SkipLog()
    other.skip(BadRecord(errors.CORRUPT_IMAGE, "image file c.jpg"))
    log.merge(other.to_dict())
    assert log.total == 3 and "2  missing image file" in log.summary() and "c.jpg" in log.summary()
    # each reason heads its line once: the example does not say it again, and no counts print as a JSON dict
    assert log.summary("x.json").splitlines() == [
        "x.json: skipped 3 bad records:",
        "        2  missing image file, e.g. image file a.jpg",
        "        1  unreadable or corrupt image, e.g. image file c.jpg"]
    assert log.in_one_line() == ("skipped 3 bad records: missing image file=2, unreadable or corrupt image=1; "
                                 "e.g. image file a.jpg: missing image file")  # which reason: there are two
    assert other.in_one_line() == "skipped 1 bad record: unreadable or corrupt image=1; e.g. image file c.jpg"


def test_merged_skip_logs_read_as_one_log_and_an_empty_one_says_so():
    """Logs merged from workers or chunks read as one log over the same records in the same order: a reason keeps
    its first example. Of reasons as frequent, the first in sorted order gives the one-line summary's example."""
    one, first, second = SkipLog(), SkipLog(), SkipLog()
    for log, name in ((first, "a.jpg"), (second, "b.jpg")):
        one.skip(BadRecord(errors.MISSING_FILE, f"image file {name}"))
        log.skip(BadRecord(errors.MISSING_FILE, f"image file {name}"))
    first.merge(second)
    assert first.to_dict() == one.to_dict() == {
        "counts": {errors.MISSING_FILE: 2}, "examples": {errors.MISSING_FILE: "image file a.jpg: missing image file"}}
    for name in ("c.jpg", "d.jpg"):  # as many as the missing files: a tie
        one.skip(BadRecord(errors.CORRUPT_IMAGE, f"image file {name}"))
    assert one.in_one_line() == ("skipped 4 bad records: missing image file=2, unreadable or corrupt image=2; "
                                 "e.g. image file a.jpg: missing image file")
    empty = SkipLog()
    assert empty.in_one_line() == "nothing skipped"
    assert empty.summary() == "no bad input" and empty.summary("x.json") == "x.json: no bad input"


def test_an_empty_image_file_is_a_corrupt_record_not_a_crash(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadRecord) as exc:
        coco.read_image(tmp_path / "empty.jpg")
    assert exc.value.reason == errors.CORRUPT_IMAGE and "empty file" in str(exc.value)


def test_plural_reads_as_a_message_should():
    from occsynth.errors import plural

    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert plural(1, "entry", "entries") == "1 entry" and plural(3, "entry", "entries") == "3 entries"
    assert plural(118_287, "image") == "118,287 images" and plural(1000, "entry", "entries") == "1,000 entries"
    assert plural(np.int64(2500), "image") == "2,500 images"  # counts often come from numpy


def test_first_few_lists_a_long_list_shortly():
    from occsynth.errors import first_few

    assert first_few([]) == "" and first_few(["a"]) == "a" and first_few(list("abc"), 3) == "a, b, c"
    assert first_few(list("abcde"), 3) == "a, b, c and 2 more" and first_few(range(20), 2) == "0, 1 and 18 more"
