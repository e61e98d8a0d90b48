import numpy as np
import pytest
from pycocotools import mask as mask_utils

from occsynth import masks


def rect(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_polygon_decodes_to_exact_rectangle():
    # pycocotools rasterises the polygon x in [2, 8), y in [3, 7) to exactly those pixels
    m = masks.decode([[2, 3, 8, 3, 8, 7, 2, 7]], 10, 12)
    assert np.array_equal(m, rect(10, 12, 2, 3, 8, 7))
    assert masks.bbox(m) == [2.0, 3.0, 6.0, 4.0] and masks.area(m) == 24


def test_multipart_polygon_is_union():
    a = masks.decode([[0, 0, 4, 0, 4, 4, 0, 4]], 20, 20)
    b = masks.decode([[10, 10, 14, 10, 14, 14, 10, 14]], 20, 20)
    both = masks.decode([[0, 0, 4, 0, 4, 4, 0, 4], [10, 10, 14, 10, 14, 14, 10, 14]], 20, 20)
    assert np.array_equal(both, a | b)


def test_encode_decode_roundtrip_and_rle_measures():
    m = rect(30, 40, 5, 6, 25, 20)
    rle = masks.encode(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [30, 40]
    assert np.array_equal(masks.decode(rle, 30, 40), m)
    assert masks.rle_area(rle) == masks.area(m) == 20 * 14
    assert masks.rle_bbox(rle) == masks.bbox(m) == [5.0, 6.0, 20.0, 14.0]
    other = masks.encode(rect(30, 40, 20, 10, 30, 30))
    assert masks.rle_intersection_area(rle, other) == 5 * 10


def test_uncompressed_rle_crowd():
    m = rect(8, 9, 1, 2, 5, 6)
    counts = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    # build uncompressed counts by hand from column-major runs
    flat = m.flatten(order="F")
    runs, current, n = [], False, 0
    for v in flat:
        if v != current:
            runs.append(n)
            current, n = v, 0
        n += 1
    runs.append(n)
    decoded = masks.decode({"size": [8, 9], "counts": runs}, 8, 9)
    assert np.array_equal(decoded, m)
    assert masks.rle_area(counts) == 16


@pytest.mark.parametrize("seg", [[[1, 2, 3, 4]], [], [[1, 2, 3, 4, 5]], [[0, 0, 1, 1, float("nan"), 2]], "x",
                                 [[0, 0, 10, 0, 10 ** 400, 10]], [[0, 0, 10, 0, True, 10]],
                                 {"size": [5, 5], "counts": "abc"}])
def test_degenerate_segmentations_raise(seg):
    with pytest.raises(masks.DegenerateMask):
        masks.decode(seg, 10, 10)


def test_compressed_rle_whose_runs_do_not_cover_the_image_is_refused_before_pycocotools_reads_it():
    # pycocotools decodes such a string past its buffers; every entry point that decodes refuses it instead
    too_long = masks.encode(np.ones((12, 12), bool))["counts"]   # 144 px for a 10 x 12 image
    too_short = masks.encode(np.ones((8, 12), bool))["counts"]   # 96 px
    good = masks.encode(rect(10, 12, 2, 3, 8, 7))
    for counts in (too_long, too_long.encode(), too_short, "é", "0x"):
        seg = {"size": [10, 12], "counts": counts}
        for decode in (masks.decode, masks.decode_box, masks.decode_crop, masks.to_rle):
            with pytest.raises(masks.DegenerateMask):
                decode(seg, 10, 12)
    assert np.array_equal(masks.decode(good, 10, 12), rect(10, 12, 2, 3, 8, 7))
    assert masks.to_rle(good, 10, 12)["counts"] == good["counts"].encode()


def test_boundary_band_width():
    m = rect(20, 20, 5, 5, 15, 15)
    band = masks.boundary(m, 1)
    # 1 px on each side of the contour: outer ring (dilated - mask) + inner ring (mask - eroded)
    assert np.array_equal(band, rect(20, 20, 4, 4, 16, 16) & ~rect(20, 20, 6, 6, 14, 14))
    # a mask cut by the image border has no boundary along the border
    edge = rect(10, 10, 0, 0, 5, 10)
    assert not masks.boundary(edge, 1)[:, 0].any()


def test_crop_pads_outside_and_resize_stays_binary():
    m = rect(10, 10, 0, 0, 4, 4)
    c = masks.crop(m, (-2, -2, 3, 3))
    assert c.shape == (5, 5) and c[:2].sum() == 0 and c[2:, 2:].all()
    r = masks.resize(rect(4, 4, 0, 0, 2, 2), (8, 8))
    assert r.dtype == bool and np.array_equal(r, rect(8, 8, 0, 0, 4, 4))


def test_to_polygons_roundtrip_exactly():
    m = rect(40, 40, 10, 10, 30, 30) | rect(40, 40, 33, 2, 38, 6)
    polys = masks.to_polygons(m)
    assert len(polys) == 2
    assert np.array_equal(masks.decode(polys, 40, 40), m)


def test_polygons_far_outside_the_image_are_degenerate_not_a_crash():
    with pytest.raises(masks.DegenerateMask, match="far outside"):
        masks.to_rle([[0, 0, 1e9, 0, 1e9, 1e9]], 40, 60)
    slightly_out = masks.decode([[-5, -5, 70, -5, 70, 50, -5, 50]], 40, 60)   # clipped, as pycocotools does
    assert slightly_out.all()



def test_the_far_outside_limit_is_per_axis_and_includes_its_edge():
    """Vertices are refused beyond one image size before the image or two after it, x by the width and y by the
    height: on a wide image an ordinary object on its right side (x past twice the height) is kept."""
    h, w = 10, 30
    right = [20, 2, 28, 2, 28, 8, 20, 8]
    assert masks.check_polygons([right], h, w) == [right]
    assert np.array_equal(masks.decode([right], h, w), rect(h, w, 20, 2, 28, 8))
    edge = [-w, -h, 2 * w, -h, 2 * w, 2 * h, -w, 2 * h]  # exactly at the limits: kept, clipped to the image
    assert masks.check_polygons([edge], h, w) == [edge] and masks.decode([edge], h, w).all()
    for x, y in ((-w - 1, 5), (2 * w + 1, 5), (5, -h - 1), (5, 2 * h + 1)):
        with pytest.raises(masks.DegenerateMask, match="far outside the 30x10 image"):
            masks.check_polygons([[x, y, 5, 5, 6, 6]], h, w)

SQUARE = [2, 3, 8, 3, 8, 7, 2, 7]   # x in [2, 8), y in [3, 7)


@pytest.mark.parametrize("stray", [[4, 4, 6, 6], [5, 5], [], [1, 1, 9, 1, 9, 9, 1], [3.5, 4.5, 7.0]])
@pytest.mark.parametrize("first", [True, False])
def test_a_polygon_part_of_too_few_or_an_odd_count_of_coordinates_is_dropped_not_the_object(stray, first):
    # detectron2's rule (load_coco_json): parts of an even count >= 6 are kept, others dropped. First, a 4-number
    # part is what pycocotools' frPyObjects would read as a box for every part
    seg = [stray, SQUARE] if first else [SQUARE, stray]
    square = rect(10, 12, 2, 3, 8, 7)
    assert masks.check_polygons(seg, 10, 12) == [SQUARE]
    assert np.array_equal(masks.decode(seg, 10, 12), square)
    box, crop = masks.decode_crop(seg, 10, 12)
    assert box == (3, 2, 7, 8) and crop.all() and crop.shape == (4, 6)
    assert masks.to_rle(seg, 10, 12)["counts"] == masks.encode(square)["counts"].encode()


def test_a_polygon_with_every_part_unusable_is_refused_saying_so():
    with pytest.raises(masks.DegenerateMask) as caught:
        masks.decode([[4, 4, 6, 6], [1, 1, 9, 1, 9, 9, 1]], 10, 12)
    assert str(caught.value) == ("polygon has no usable part: its 2 parts have 4, 7 coordinates "
                                 "(a part needs an even number >= 6)")
    with pytest.raises(masks.DegenerateMask) as caught:
        masks.check_polygons([[4, 4, 6, 6]], 10, 12)
    assert str(caught.value) == ("polygon has no usable part: its one part has 4 coordinates "
                                 "(a part needs an even number >= 6)")


@pytest.mark.parametrize("bad", [[0, 0, float("nan"), 2], [1, "2"], [True, 1], [1, 10 ** 400], [float("inf")],
                                 [0, 0, 1e9, 0], [0, -1e9]])
def test_corrupt_coordinates_refuse_the_whole_object_even_in_a_part_that_would_be_dropped(bad):
    # non-numbers, non-finite numbers and vertices far off are damaged data, not a stray part of the outline
    for seg in ([SQUARE, bad], [bad, SQUARE]):
        with pytest.raises(masks.DegenerateMask, match="non-numeric or non-finite|far outside"):
            masks.to_rle(seg, 10, 12)
    with pytest.raises(masks.DegenerateMask, match="far outside"):
        masks.check_polygons([SQUARE, [0, 0, 1e9, 0, 1e9, 1e9]], 10, 12)



def test_polygon_parts_given_as_tuples_are_read_as_lists():
    """A Python caller's parts may be tuples: kept, dropped and rasterised by the same rule as lists."""
    seg = [tuple(SQUARE), (5, 5)]
    assert masks.check_polygons(seg, 10, 12) == [tuple(SQUARE)]
    assert np.array_equal(masks.decode(seg, 10, 12), rect(10, 12, 2, 3, 8, 7))

def test_a_polygon_given_as_other_than_a_list_of_lists_is_still_refused():
    for seg in ([SQUARE[0], SQUARE[1:]], [SQUARE, 5], [[]] * 0):
        with pytest.raises(masks.DegenerateMask, match="empty or not a list of lists"):
            masks.check_polygons(seg, 10, 12)


def test_encode_area_and_bbox_agree_on_any_nonzero_mask_and_refuse_other_shapes():
    """A float or wide-integer mask: nonzero is foreground for all three (a uint8 cast dropped 0.5, wrapped 256)."""
    for value in (0.5, 256, -1, True):
        mask = np.zeros((5, 7), type(value) if not isinstance(value, bool) else bool)
        mask[1:4, 2:6] = value
        rle = masks.encode(mask)
        assert masks.rle_area(rle) == masks.area(mask) == 12
        assert masks.rle_bbox(rle) == masks.bbox(mask) == [2.0, 1.0, 4.0, 3.0]
    for fn in (masks.encode, masks.area, masks.bbox):
        with pytest.raises(ValueError, match=r"must be 2-d \(height, width\), got shape \(2, 3, 4\)"):
            fn(np.ones((2, 3, 4), bool))


@pytest.mark.parametrize("width", [0, -1, 1.5, True])
def test_a_boundary_width_that_is_no_pixel_count_is_refused(width):
    with pytest.raises(ValueError, match="boundary width must be a whole number of pixels >= 1"):
        masks.boundary(np.ones((4, 4), bool), width)


# 26: new pixel 6's centre falls on the object's edge (5.0), as near to the source pixel before it as to the one after
# it; OpenCV 5 takes the one after, OpenCV 4 the one before (the mask then 0.45 px off, as INTER_NEAREST puts it)
@pytest.mark.parametrize("short, off", [(13, 0.4), (26, 0.5), (33, 0.4), (42, 0.4)])
def test_a_resized_mask_stays_on_its_resized_image_and_scaled_box(short, off):
    """OpenCV's INTER_NEAREST samples pixel corners: masks resized for training (and cutouts for pasting) sat about
    half a pixel down and right of their bilinearly resized image and of the exactly scaled box."""
    from bcnet.transforms import ResizeShortSide

    image = np.zeros((20, 20, 3), np.uint8)
    image[5:12, 5:12] = 255
    mask = np.zeros((1, 20, 20), bool)
    mask[0, 5:12, 5:12] = True
    target = {"boxes": np.array([[5, 5, 12, 12]], np.float32), "masks": mask, "occluder_masks": mask.copy()}
    resized, out = ResizeShortSide(short, 1000)(image, target, np.random.default_rng(0))
    box_centre = (out["boxes"][0, 0] + out["boxes"][0, 2]) / 2
    weight = resized[..., 0].astype(float).sum(0)
    image_centre = (weight * (np.arange(weight.size) + 0.5)).sum() / weight.sum()
    for key in ("masks", "occluder_masks"):
        cols = np.flatnonzero(out[key][0].any(0))
        mask_centre = (cols.min() + cols.max() + 1) / 2
        # whole pixels: within 0.4 px of the centre (0.45 at 26 in OpenCV 4; it was 0.45-0.65 px off, down and right)
        assert abs(mask_centre - box_centre) <= off and abs(mask_centre - image_centre) <= off, (key, mask_centre)
        # each new pixel is the source pixel under its centre (either one where the centre is on their edge)
        centres = 2 * np.arange(out[key].shape[-1]) + 1  # in halves of a new pixel
        after, before = centres * 20 // (2 * len(centres)), (centres * 20 - 1) // (2 * len(centres))
        taken = [mask[0][np.ix_(rows, cols)] for rows in (after, before) for cols in (after, before)]
        assert np.all(np.any([out[key][0] == t for t in taken], axis=0))
    assert np.array_equal(masks.resize(mask[0], resized.shape[:2]), out["masks"][0])


def test_clean_coordinates_are_judged_without_a_call_per_number(monkeypatch):
    """COCO train's polygons hold 45 million coordinates: a Python call for each (masks.finite_number) was the largest
    part of checking them in build-cocoocc, annotate-occluders and the evaluation's ground truth."""
    from occsynth.boxes import is_box
    calls = []
    real = masks.finite_number
    monkeypatch.setattr(masks, "finite_number", lambda value: calls.append(value) or real(value))
    poly = [float(v) for v in range(58)] + [3, 4]
    assert masks.check_polygons([poly, [1, 1, 5, 1, 5, 5]], 100, 100) == [poly, [1, 1, 5, 1, 5, 5]]
    assert is_box([1, 2.5, 3, 4])
    assert calls == []


@pytest.mark.parametrize("values, expected", [
    ([], True), ([0, -0.0, 2.5], True), ([1e308, 1e308], True), ([2 ** 63, 1.5], True), ([np.float64(1.0), 2], True),
    ([10 ** 400, -10 ** 400, 1.0], False), ([True, 1.0], False), ([float("nan"), 1.0], False),
    ([float("inf"), float("-inf")], False), ([1.0, float("inf")], False), (["1", 2], False), ([None], False),
    ((1, 2, 3, 4), True)])
def test_finite_numbers_agrees_with_finite_number_item_by_item(values, expected):
    assert all(map(masks.finite_number, values)) is expected
    assert masks.finite_numbers(values) is expected


def test_an_empty_mask_has_no_polygon():
    assert masks.to_polygons(np.zeros((4, 5), bool)) == [] and masks.to_polygons(np.zeros((0, 0), bool)) == []
