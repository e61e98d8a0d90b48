"""compose(): exact visible/amodal masks, exact pasted pixels, occluders, placement targets, blending."""
import re

import cv2
import numpy as np
import pytest

from occsynth.compose import blend_alpha, compose, compose_boxed, transform_cutout
from occsynth.errors import OccsynthError
from occsynth.schedule import CompositeOptions

VARIANTS = {
    "feather": CompositeOptions(),
    "gaussian": CompositeOptions(blend="gaussian", blend_px=1.5),
    "none": CompositeOptions(blend="none", scale=(0.8, 1.2)),
    # crowded and few tries: exercises the exhaustive search and the shrink fallback
    "crowded": CompositeOptions(pastes=(6, 8), max_tries=2, scale=(1.0, 1.6), max_size=0.9, occlusion=(0.2, 0.5),
                                max_occlusion=0.6),
}


def random_shape(rng, h, w):
    """A compact random object filling most of its (h, w) box."""
    m = np.zeros((h, w), np.uint8)
    kind = rng.integers(3)
    if kind == 0:
        cv2.ellipse(m, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 1, -1)
    elif kind == 1:
        m[:, :] = 1
        m[rng.integers(h // 2):, : rng.integers(w // 2) + 1] = 0  # an L shape
    else:
        pts = np.array([[0, h // 2], [w // 2, 0], [w - 1, int(rng.integers(h))], [w // 3, h - 1]], np.int32)
        cv2.fillPoly(m, [pts], 1)
    return m.astype(bool)


def make_case(seed, options):
    """Background with a few rectangle instances, and cutouts (with context margin) of random shapes."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(56, 112, size=2))
    background = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    instances = []
    for j in range(int(rng.integers(0, 4))):
        m = np.zeros((h, w), bool)
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[y:y + rng.integers(2, 24), x:x + rng.integers(2, 24)] = True
        instances.append({"mask": m.astype(np.uint8), "category_id": 90 + j, "iscrowd": int(j == 2),
                          "source": {"image_id": 1, "annotation_id": j}})
    cutouts = []
    margin = int(np.ceil(3 * options.blend_px))
    lo, hi = options.pastes
    for j in range(int(rng.integers(lo, hi + 1))):
        ch, cw = (int(v) for v in rng.integers(12, 36, size=2))
        mask = np.pad(random_shape(rng, ch, cw), margin)
        rgb = rng.integers(0, 256, size=mask.shape + (3,), dtype=np.uint8)
        cutouts.append({"rgb": rgb, "mask": mask, "category_id": int(rng.integers(1, 5)),
                        "scale": float(rng.uniform(*options.scale)), "flip": bool(rng.random() < 0.5),
                        "source": {"image_id": 2, "annotation_id": 100 + j}})
    return background, instances, cutouts


def placed(cutout, inst, shape, options):
    """The transformed cutout's (rgb, mask) laid on a full canvas where compose put it."""
    rgb_patch, mask_patch = transform_cutout(cutout, shape, options, inst["paste"]["shrink"])
    m = options.margin
    y, x = inst["paste"]["y"] - m, inst["paste"]["x"] - m
    H, W = shape
    rgb = np.zeros((H + 2 * m + rgb_patch.shape[0], W + 2 * m + rgb_patch.shape[1], 3), np.uint8)
    mask = np.zeros(rgb.shape[:2], bool)
    rgb[y + m:y + m + rgb_patch.shape[0], x + m:x + m + rgb_patch.shape[1]] = rgb_patch
    mask[y + m:y + m + mask_patch.shape[0], x + m:x + m + mask_patch.shape[1]] = mask_patch
    assert mask[m:m + H, m:m + W].sum() == mask.sum(), "pasted object leaves the image"
    return rgb[m:m + H, m:m + W], mask[m:m + H, m:m + W]


def check_invariants(background, bg_instances, cutouts, image, instances, options):
    H, W = background.shape[:2]
    assert image.shape == background.shape and image.dtype == np.uint8
    layers = [i["layer"] for i in instances]
    n_bg = layers.count(0)
    assert layers == [0] * n_bg + list(range(1, len(instances) - n_bg + 1))
    pasted = instances[n_bg:]
    # every cutout is pasted, in order
    assert [i["source"] for i in pasted] == [c["source"] for c in cutouts]
    covered = np.zeros((H, W), bool)
    for inst in pasted:
        covered |= inst["amodal_mask"]
    # background instances: original mask as amodal; dropped exactly when fully hidden
    kept = [b for b in bg_instances if (b["mask"].astype(bool) & ~covered).any()]
    assert [i["source"] for i in instances[:n_bg]] == [b["source"] for b in kept]
    for inst, b in zip(instances[:n_bg], kept):
        assert np.array_equal(inst["amodal_mask"], b["mask"].astype(bool))
        assert inst["amodal_complete"] is False and inst["iscrowd"] == b["iscrowd"]
        assert inst["category_id"] == b["category_id"]
    for i, inst in enumerate(instances):
        assert inst["amodal_mask"].shape == inst["visible_mask"].shape == (H, W)
        assert inst["amodal_mask"].dtype == bool and inst["visible_mask"].dtype == bool
        higher = np.zeros((H, W), bool)
        expected_occluders = []
        for j, other in enumerate(instances):
            if other["layer"] > inst["layer"]:
                higher |= other["amodal_mask"]
                if (other["amodal_mask"] & inst["amodal_mask"]).any():
                    expected_occluders.append(j)
        assert np.array_equal(inst["visible_mask"], inst["amodal_mask"] & ~higher)
        assert inst["visible_mask"].any()
        assert inst["occluders"] == expected_occluders
    for inst, cutout in zip(pasted, cutouts):
        assert inst["amodal_complete"] is True and inst["iscrowd"] == 0
        assert inst["category_id"] == cutout["category_id"]
        rgb, mask = placed(cutout, inst, (H, W), options)
        assert np.array_equal(inst["amodal_mask"], mask)
        vis = inst["visible_mask"]
        assert np.array_equal(image[vis], rgb[vis]), "pasted pixels altered"
        ratio = 1 - vis.sum() / inst["amodal_mask"].sum()
        assert ratio <= options.max_occlusion
        # the object fits max_size
        ys, xs = np.nonzero(inst["amodal_mask"])
        assert np.ptp(ys) + 1 <= max(1, int(options.max_size * H)) and np.ptp(xs) + 1 <= max(1, int(options.max_size * W))
    return pasted


def in_range_occluded(pasted, options):
    lo, hi = options.occlusion
    ratios = [1 - p["visible_mask"].sum() / p["amodal_mask"].sum() for p in pasted]
    return any(0 < r and lo <= r <= hi for r in ratios)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_invariants_on_random_cases(variant):
    options = VARIANTS[variant]
    hits = 0
    n_cases = 50
    for seed in range(n_cases):
        background, bg_instances, cutouts = make_case(seed, options)
        before = background.copy()
        image, instances = compose(background, bg_instances, cutouts, np.random.default_rng(seed), options)
        assert np.array_equal(background, before), "input background modified"
        pasted = check_invariants(background, bg_instances, cutouts, image, instances, options)
        hits += in_range_occluded(pasted, options)
        if options.blend == "none":  # exact paste: painter's algorithm reproduces every pixel
            expected = background.copy()
            for inst, cutout in zip(pasted, cutouts):
                rgb, mask = placed(cutout, inst, background.shape[:2], options)
                expected[mask] = rgb[mask]
            assert np.array_equal(image, expected)
    assert hits >= 0.95 * n_cases, f"{hits}/{n_cases} images with an object occluded within range"


@pytest.mark.parametrize("blend", ["feather", "gaussian"])
def test_blending_acts_only_on_a_halo_outside_pasted_objects(blend):
    options = CompositeOptions(blend=blend, blend_px=2.0)
    changed_halo = 0
    for seed in range(20):
        background, bg_instances, cutouts = make_case(seed, options)
        image, instances = compose(background, bg_instances, cutouts, np.random.default_rng(seed), options)
        union = np.zeros(background.shape[:2], bool)
        for inst in instances:
            if inst["layer"] > 0:
                union |= inst["amodal_mask"]
        changed = np.any(image != background, axis=2) & ~union
        # halo pixels lie within reach of a pasted object
        reach = cv2.dilate(union.astype(np.uint8), np.ones((2 * options.margin + 1,) * 2, np.uint8)).astype(bool)
        assert not (changed & ~reach).any()
        changed_halo += int(changed.sum())
    assert changed_halo > 0


def test_blend_alpha():
    mask = np.zeros((15, 15), bool)
    mask[5:10, 5:10] = True
    feather = blend_alpha(mask, CompositeOptions(blend="feather", blend_px=2.0))
    assert (feather[mask] == 1).all() and feather[0, 0] == 0
    assert 0 < feather[7, 4] < 1 and feather[7, 4] > feather[7, 3] > feather[7, 2] == 0
    gauss = blend_alpha(mask, CompositeOptions(blend="gaussian", blend_px=1.0))
    assert (gauss[mask] == 1).all() and 0 < gauss[7, 4] < 1
    assert blend_alpha(mask, CompositeOptions(blend="none")) is None


def test_compose_is_deterministic():
    options = CompositeOptions()
    background, bg_instances, cutouts = make_case(3, options)
    a_img, a = compose(background, bg_instances, cutouts, np.random.default_rng(42), options)
    b_img, b = compose(background, bg_instances, cutouts, np.random.default_rng(42), options)
    assert a_img.tobytes() == b_img.tobytes()
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(x["visible_mask"], y["visible_mask"]) and x["occluders"] == y["occluders"]
    c_img, _ = compose(background, bg_instances, cutouts, np.random.default_rng(43), options)
    assert c_img.tobytes() != a_img.tobytes()


def test_hidden_background_instance_is_dropped_and_indices_stay_consistent():
    h = w = 40
    background = np.full((h, w, 3), 10, np.uint8)
    ring = np.ones((h, w), bool)
    ring[10:30, 10:30] = False  # a hole in the middle; the tight box is the whole image
    cutout = {"rgb": np.full((h, w, 3), 200, np.uint8), "mask": ring, "category_id": 7, "scale": 1.0,
              "flip": False, "source": "ring"}
    hidden = np.zeros((h, w), bool)
    hidden[2:6, 2:6] = True  # under the ring
    straddling = np.zeros((h, w), bool)
    straddling[5:15, 20:25] = True  # partly in the hole
    inside = np.zeros((h, w), bool)
    inside[15:20, 15:20] = True  # entirely in the hole
    bg = [{"mask": m, "category_id": c, "iscrowd": 0, "source": s}
          for m, c, s in [(hidden, 1, "A"), (straddling, 2, "B"), (inside, 3, "C")]]
    options = CompositeOptions(max_size=1.0, blend="none")
    image, instances = compose(background, bg, [cutout], np.random.default_rng(0), options)
    assert [i["source"] for i in instances] == ["B", "C", "ring"]
    assert [i["occluders"] for i in instances] == [[2], [], []]
    assert np.array_equal(instances[0]["visible_mask"], straddling & ~ring)
    assert np.array_equal(instances[2]["amodal_mask"], ring) and instances[2]["paste"]["shrink"] == 1.0
    assert (image[ring] == 200).all() and (image[~ring] == 10).all()


def test_transform_cutout_scales_flips_and_respects_max_size():
    mask = np.zeros((14, 24), bool)
    mask[2:12, 2:22] = True
    mask[2:5, 2:6] = False  # notch at the top left
    rgb = np.zeros((14, 24, 3), np.uint8)
    rgb[..., 0] = np.arange(24, dtype=np.uint8)[None, :] * 10
    cut = {"rgb": rgb, "mask": mask, "scale": 1.0, "flip": False}
    options = CompositeOptions(blend="none", max_size=1.0)
    r, m = transform_cutout(cut, (100, 100), options)
    assert np.array_equal(m, mask[2:12, 2:22]) and np.array_equal(r, rgb[2:12, 2:22])
    r, m = transform_cutout({**cut, "flip": True}, (100, 100), options)
    assert np.array_equal(m, mask[2:12, 2:22][:, ::-1]) and np.array_equal(r, rgb[2:12, 2:22][:, ::-1])
    r, m = transform_cutout({**cut, "scale": 2.0}, (100, 100), options)
    assert m.shape == (20, 40) and r.shape == (20, 40, 3) and m.sum() == 4 * mask.sum()
    r, m = transform_cutout({**cut, "scale": 2.0}, (100, 100), CompositeOptions(blend="none", max_size=0.3))
    assert m.shape[1] <= 30 and m.shape[0] <= 30
    # a wide object is limited by the image's width alone: by 30/40 exactly (10 rows x 0.75 = 7.5: rounded half to even, 8)
    wide = {"rgb": np.zeros((10, 40, 3), np.uint8), "mask": np.ones((10, 40), bool), "scale": 2.0}
    assert transform_cutout(wide, (100, 60), CompositeOptions(blend="none", max_size=0.5))[1].shape == (8, 30)
    # feathering needs context: the patch carries a margin (edge-replicated beyond the cutout's own)
    options = CompositeOptions(blend_px=2.0)
    r, m = transform_cutout({**cut, "scale": 0.5}, (100, 100), options)
    assert m.shape == (5 + 12, 10 + 12) and not m[:6].any() and not m[:, :6].any() and m[6:11, 6:16].any()
    # a thin object survives shrinking
    thin = np.zeros((5, 40), bool)
    thin[2, :] = True
    r, m = transform_cutout({"rgb": np.zeros((5, 40, 3), np.uint8), "mask": thin, "scale": 0.3, "flip": False},
                            (100, 100), CompositeOptions(blend="none"))
    assert m.any()
    with pytest.raises(OccsynthError, match="empty"):
        transform_cutout({**cut, "mask": np.zeros_like(mask)}, (100, 100), options)


def test_first_pair_is_occluder_and_occludee():
    """Paste 1 is always placed over paste 0 (the schedule's same-class pair), within range when possible."""
    options = CompositeOptions(pastes=(2, 2))
    ratios = []
    for seed in range(40):
        background, bg_instances, cutouts = make_case(seed, options)
        _, instances = compose(background, bg_instances, cutouts, np.random.default_rng(seed), options)
        first, second = [i for i in instances if i["layer"] > 0]
        assert (first["amodal_mask"] & second["amodal_mask"]).any()
        ratios.append(1 - first["visible_mask"].sum() / first["amodal_mask"].sum())
    ratios = np.array(ratios)
    assert np.count_nonzero((ratios >= 0.1) & (ratios <= 0.7)) >= 38
    # the aimed ratio is drawn over the whole range: both halves get their share
    assert np.count_nonzero((ratios >= 0.1) & (ratios < 0.4)) >= 8
    assert np.count_nonzero((ratios >= 0.4) & (ratios <= 0.7)) >= 8


def test_bad_inputs():
    options = CompositeOptions()
    background, bg_instances, cutouts = make_case(0, options)
    with pytest.raises(OccsynthError, match="uint8"):
        compose(background.astype(np.float32), bg_instances, cutouts, np.random.default_rng(0), options)
    with pytest.raises(OccsynthError, match="match"):
        compose(background, [], [{**cutouts[0], "mask": cutouts[0]["mask"][1:]}], np.random.default_rng(0), options)
    with pytest.raises(OccsynthError, match="image size"):
        compose(background, [{**bg_instances[0], "mask": np.ones((3, 3), bool)}] if bg_instances else
                [{"mask": np.ones((3, 3), bool), "category_id": 1, "iscrowd": 0, "source": None}],
                cutouts, np.random.default_rng(0), options)
    image, instances = compose(background, [], [], np.random.default_rng(0), options)
    assert np.array_equal(image, background) and instances == []
    rng = np.random.default_rng(0)
    for bad, words in (({"scale": float("nan")}, "cutout 0.*: scale must be a finite number > 0"),
                       ({"scale": 0}, "scale must be a finite number > 0"),
                       ({"scale": "2"}, "scale must be a finite number > 0")):
        with pytest.raises(OccsynthError, match=words):
            compose(background, [], [{**cutouts[0], **bad}], rng, options)
    for key in ("scale", "rgb"):  # named by its place in the list (a user's cutouts have no 'source')
        with pytest.raises(OccsynthError, match=f"^cutout 1 lacks '{key}'"):
            cutout = {k: v for k, v in cutouts[0].items() if k not in (key, "source")}
            compose(background, [], [cutouts[0], cutout], rng, options)
    with pytest.raises(OccsynthError, match="cutout 0 must be a dict with"):
        compose(background, [], [{k: v for k, v in cutouts[0].items() if k != "category_id"}], rng, options)
    with pytest.raises(OccsynthError, match="rng must be a numpy Generator"):
        compose(background, [], cutouts, 0, options)
    with pytest.raises(OccsynthError, match="options must be an occsynth.schedule.CompositeOptions, got {}"):
        compose(background, [], cutouts, rng, {})
    with pytest.raises(OccsynthError, match=re.escape("cutouts must be a list of cutout dicts (see compose()), got dict")):
        compose(background, [], cutouts[0], rng, options)
    with pytest.raises(OccsynthError, match="H x W x 3 uint8 image"):
        compose(np.zeros((0, 0, 3), np.uint8), [], cutouts, rng, options)


def test_a_paste_with_no_room_is_left_out_rather_than_exceeding_max_occlusion():
    background = np.zeros((4, 4, 3), np.uint8)
    full = {"rgb": np.full((4, 4, 3), 50, np.uint8), "mask": np.ones((4, 4), bool), "category_id": 1,
            "scale": 1.0, "flip": False, "source": "full"}
    # any pixel of a later paste hides >= 1/16 of the first object: more than max_occlusion allows
    options = CompositeOptions(max_size=1.0, blend="none", occlusion=(0.0, 0.05), max_occlusion=0.05)
    small = {**full, "source": "small", "rgb": np.full((4, 4, 3), 99, np.uint8)}
    image, instances = compose(background, [], [full, small], np.random.default_rng(0), options)
    assert [i["source"] for i in instances] == ["full"] and (image == 50).all()
    assert instances[0]["layer"] == 1 and instances[0]["occluders"] == []


def test_search_cover_equals_exact_counts_at_every_position():
    """_Canvas._cover correlates only near object j's box: it equals the exact hidden-pixel count everywhere."""
    from occsynth.compose import _Canvas, _Object
    rng = np.random.default_rng(5)
    for trial in range(6):
        canvas = _Canvas(40, 48)
        for _ in range(3):
            patch = rng.random((int(rng.integers(4, 16)), int(rng.integers(4, 16)))) < 0.7
            patch[0, 0] = True
            obj = _Object(patch, 0)
            canvas.add(obj, int(rng.integers(0, 40 - obj.h + 1)), int(rng.integers(0, 48 - obj.w + 1)))
        new = _Object(rng.random((int(rng.integers(3, 14)), int(rng.integers(3, 14)))) < 0.6, 0)
        y0, x0, y1, x1 = 0, 0, 40 - new.h, 48 - new.w
        if trial % 2:
            y0, x0, y1, x1 = 3, 5, min(y1, 20), min(x1, 25)
        for j in range(3):
            cover = canvas._cover(new, j, y0, x0, y1, x1)
            exact = np.array([[canvas._covered(new, y, x)[j] for x in range(x0, x1 + 1)] for y in range(y0, y1 + 1)])
            if cover is None:
                assert not exact.any()
            else:
                assert cover.shape == exact.shape and np.array_equal(cover, exact)


def test_a_paste_is_aimed_at_an_object_it_can_bring_into_the_range_preferring_one_not_yet_occluded():
    from occsynth.compose import _Canvas, _Object
    options = CompositeOptions(occlusion=(0.1, 0.7), max_occlusion=0.8)

    def canvas_of(visible):
        canvas = _Canvas(120, 200)
        for (y, x), side in zip([(0, 0), (0, 100), (80, 150)], (60, 12, 12)):  # apart: none hides another
            canvas.add(_Object(np.ones((side, side), bool), 0), y, x)
        canvas.visible = np.array(visible, np.int64)  # as if later pastes had hidden some of them
        canvas.visible_list = canvas.visible.tolist()
        return canvas

    paste = _Object(np.ones((10, 10), bool), 0)  # 100 px: at most 100/3600 < 0.1 of the big one
    # the big one cannot be brought into the range; object 1 is in it already: object 2 it is
    assert canvas_of([3600, 94, 144])._targets(paste, options).tolist() == [2]
    assert canvas_of([3600, 144, 144])._targets(paste, options).tolist() == [1, 2]
    assert canvas_of([3600, 94, 94])._targets(paste, options).tolist() == [1, 2]  # both in range already
    assert canvas_of([3600, 30, 144])._targets(paste, options).tolist() == [2]  # 1 is past the range's top
    # nothing it can bring into the range (a 1-px paste): any that can take more occlusion
    dot = _Object(np.ones((1, 1), bool), 0)
    assert canvas_of([3600, 144, 144])._targets(dot, options).tolist() == [0, 1, 2]
    # one at the range's very top (36 of 144 px visible: 0.75) can take no more
    top = CompositeOptions(occlusion=(0.1, 0.75), max_occlusion=0.8)
    assert canvas_of([3600, 36, 94])._targets(paste, top).tolist() == [2]
    assert canvas_of([3600, 36, 144])._targets(dot, top).tolist() == [0, 2]
    # and the paste is placed over object 2, hiding it within the range, whatever the draws
    for seed in range(8):
        canvas = canvas_of([3600, 94, 144])
        y, x = canvas.place(paste, np.random.default_rng(seed), options)
        hidden = canvas._covered(paste, y, x)
        assert hidden[2] > 0 and 0.1 <= hidden[2] / 144 <= 0.7 and hidden[0] == hidden[1] == 0


@pytest.mark.parametrize("blend", ["feather", "gaussian"])
def test_the_halo_is_the_cutouts_context_blended_by_blend_alpha(blend):
    """One paste: inside its mask the cutout's pixels, around it rint(alpha * cutout + (1 - alpha) * background)
    with alpha from blend_alpha (float32, as compose computes it), and the background everywhere else; the same
    into an ``out`` strided along its columns (OpenCV cannot copy into it: numpy does)."""
    options = CompositeOptions(blend=blend, blend_px=2.0, max_size=1.0)
    rng = np.random.default_rng(4)
    background = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    mask = np.pad(random_shape(rng, 14, 18), options.margin)
    cutout = {"rgb": rng.integers(0, 256, size=mask.shape + (3,), dtype=np.uint8), "mask": mask,
              "category_id": 1, "scale": 1.0, "flip": True, "source": "one"}
    for seed in range(4):
        image, (inst,) = compose(background, [], [cutout], np.random.default_rng(seed), options)
        rgb_patch, mask_patch = transform_cutout(cutout, (40, 48), options)
        alpha_patch = blend_alpha(mask_patch, options)
        m = options.margin
        y, x = inst["paste"]["y"] - m, inst["paste"]["x"] - m
        alpha = np.zeros((40 + 2 * m + 40, 48 + 2 * m + 48), np.float32)  # room for a patch past any edge
        src = np.zeros(alpha.shape + (3,), np.uint8)
        alpha[y + m:y + m + alpha_patch.shape[0], x + m:x + m + alpha_patch.shape[1]] = alpha_patch
        src[y + m:y + m + rgb_patch.shape[0], x + m:x + m + rgb_patch.shape[1]] = rgb_patch
        alpha, src = alpha[m:m + 40, m:m + 48, None], src[m:m + 40, m:m + 48]
        expected = np.clip(np.rint(alpha * src.astype(np.float32) + (1.0 - alpha) * background.astype(np.float32)),
                           0, 255).astype(np.uint8)
        assert np.array_equal(image, expected)
        # outs that are no C-contiguous array, which OpenCV refuses to write into: numpy's path
        for odd in (np.zeros((40, 96, 3), np.uint8)[:, ::2], np.zeros((40, 48, 3), np.uint8)[::-1]):
            assert compose_boxed(background, [], [cutout], np.random.default_rng(seed), options, out=odd)[0] is odd
            assert np.array_equal(odd, expected)
        halo = (alpha[..., 0] > 0) & (alpha[..., 0] < 1)
        assert halo.sum() > 50 and np.array_equal(alpha[..., 0] == 1, inst["amodal_mask"])


def test_a_paste_hiding_exactly_max_occlusion_of_an_object_is_allowed():
    """max_occlusion is the most an object may be hidden: a 1 x 4 row over a 4 x 4 block hides exactly 4/16."""
    background = np.zeros((4, 4, 3), np.uint8)
    block = {"rgb": np.full((4, 4, 3), 50, np.uint8), "mask": np.ones((4, 4), bool), "category_id": 1,
             "scale": 1.0, "source": "block"}
    row = {"rgb": np.full((1, 4, 3), 99, np.uint8), "mask": np.ones((1, 4), bool), "category_id": 2,
           "scale": 1.0, "source": "row"}
    options = CompositeOptions(max_size=1.0, blend="none", occlusion=(0.0, 0.25), max_occlusion=0.25)
    for seed in range(3):
        image, instances = compose(background, [], [block, row], np.random.default_rng(seed), options)
        assert [i["source"] for i in instances] == ["block", "row"]
        assert instances[1]["paste"]["shrink"] == 1.0 and instances[1]["paste"]["x"] == 0  # not shrunk to fit
        y = instances[1]["paste"]["y"]
        assert instances[0]["visible_mask"].sum() == 12 and not instances[0]["visible_mask"][y].any()
        assert (image[y] == 99).all() and np.count_nonzero(image == 50) == 12 * 3


def test_the_occlusion_of_a_pair_follows_the_aimed_ratio_over_the_whole_range(monkeypatch):
    """Two squares: bisecting along a direction reaches the aimed ratio (drawn over the range) without the
    exhaustive search, so the ratios spread over the whole range, its top third included."""
    from occsynth.compose import _Canvas

    def no_search(*args, **kwargs):
        raise AssertionError("the exhaustive search was needed")

    monkeypatch.setattr(_Canvas, "_search", no_search)
    square = {"rgb": np.full((20, 20, 3), 50, np.uint8), "mask": np.ones((20, 20), bool), "category_id": 1,
              "scale": 1.0}
    options = CompositeOptions(blend="none", max_size=1.0, occlusion=(0.1, 0.7))
    ratios = []
    for seed in range(40):
        _, instances = compose(np.zeros((100, 100, 3), np.uint8), [], [square, square],
                               np.random.default_rng(seed), options)
        ratios.append(1 - instances[0]["visible_mask"].sum() / 400)
    counts, _ = np.histogram(ratios, bins=[0.1, 0.3, 0.5, 0.7 + 1e-9])
    assert counts.sum() == 40 and counts.min() >= 6, counts


def test_hidden_pixels_behind_more_than_eight_objects_are_counted_as_behind_a_few():
    """Past 8 pasted objects the pixels a paste would hide are counted on the label map at once (bincount), not
    per box: the same counts, and compose keeps every invariant with a dozen pastes (up to 64 are allowed)."""
    from occsynth.compose import _Canvas, _Object
    rng = np.random.default_rng(7)
    canvas = _Canvas(48, 56)
    for _ in range(12):
        obj = _Object(rng.random((int(rng.integers(4, 16)), int(rng.integers(4, 16)))) < 0.7, 0)
        canvas.add(obj, int(rng.integers(0, 48 - obj.h + 1)), int(rng.integers(0, 56 - obj.w + 1)))
    assert canvas.visible.tolist() == [int(np.count_nonzero(canvas.top == j)) for j in range(12)]
    for _ in range(100):
        new = _Object(rng.random((int(rng.integers(3, 14)), int(rng.integers(3, 14)))) < 0.6, 0)
        y, x = int(rng.integers(0, 48 - new.h + 1)), int(rng.integers(0, 56 - new.w + 1))
        exact = [int(np.count_nonzero((canvas.top[y:y + new.h, x:x + new.w] == j) & new.mask)) for j in range(12)]
        assert canvas._covered(new, y, x).tolist() == canvas._covered_few(new, y, x) == exact
    options = CompositeOptions(pastes=(10, 14), max_size=0.5, scale=(0.5, 0.9))
    for seed in range(6):
        background, bg_instances, cutouts = make_case(seed, options)
        image, instances = compose(background, bg_instances, cutouts, np.random.default_rng(seed), options)
        check_invariants(background, bg_instances, cutouts, image, instances, options)


def test_the_reused_label_map_starts_every_canvas_empty():
    """A thread's canvases share one label map: the boxes the last one wrote are reset (also those of a canvas
    left half-way, as by a failed compose), and a compose after others gives what it gives first."""
    from occsynth.compose import _Canvas, _Object
    options = CompositeOptions()
    background, bg_instances, cutouts = make_case(3, options)
    first = compose(background, bg_instances, cutouts, np.random.default_rng(3), options)
    canvas = _Canvas(*background.shape[:2])
    top = canvas.top
    canvas.add(_Object(np.ones((9, 7), bool), 0), 2, 3)
    canvas.add(_Object(np.ones((5, 5), bool), 0), 20, 20)
    del canvas  # left half-way, as by a failed compose
    fresh = _Canvas(*background.shape[:2])
    assert np.shares_memory(fresh.top, top) and (fresh.top == -1).all()
    del fresh
    compose(background[:-4], [], cutouts, np.random.default_rng(0), options)  # a smaller size: the map's corner
    smaller = _Canvas(background.shape[0] - 4, background.shape[1])
    assert np.shares_memory(smaller.top, top) and smaller.top.shape == (background.shape[0] - 4, background.shape[1])
    assert (smaller.top == -1).all()
    del smaller
    again = compose(background, bg_instances, cutouts, np.random.default_rng(3), options)
    assert np.array_equal(first[0], again[0])
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(first[1], again[1]) for k in ("amodal_mask", "visible_mask"))
    assert [a["occluders"] for a in first[1]] == [b["occluders"] for b in again[1]]
    h, w = background.shape[:2]
    taller = _Canvas(h + 5, w - 3)  # taller, narrower: the held map grows to hold it (unless it already does)
    assert taller.top.shape == (h + 5, w - 3) and (taller.top == -1).all()
    taller.add(_Object(np.ones((h + 5, w - 3), bool), 0), 0, 0)
    del taller
    wide = compose(background, bg_instances, cutouts, np.random.default_rng(3), options)
    assert np.array_equal(first[0], wide[0])
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(first[1], wide[1]) for k in ("amodal_mask", "visible_mask"))
    assert [a["occluders"] for a in first[1]] == [b["occluders"] for b in wide[1]]


def test_the_held_label_map_keeps_the_largest_height_and_width_and_resets_each_box_once(monkeypatch):
    """Canvases of alternating sizes (a tall one, a wide one) share one held map at the largest height and width
    asked so far, not one remade at each new size; the boxes written are reset by the next canvas and then
    forgotten, not reset again by every later one."""
    import threading

    from occsynth import compose as compose_module
    from occsynth.compose import _Canvas, _Object
    monkeypatch.setattr(compose_module, "_LABEL_MAPS", threading.local())  # nothing held yet: sizes of its own
    tall = _Canvas(30, 10)
    tall.add(_Object(np.ones((4, 3), bool), 0), 1, 2)
    del tall
    wide = _Canvas(10, 30)  # wider: the held map grows to 30 x 30
    assert wide._written == [] and (wide.top == -1).all()
    wide.add(_Object(np.ones((2, 5), bool), 0), 6, 20)
    held = wide.top.base
    assert held is not None and held.shape == (30, 30)
    del wide
    for height, width in ((30, 10), (10, 30), (30, 30), (7, 9)):
        canvas = _Canvas(height, width)
        assert canvas.top.base is held and canvas.top.shape == (height, width), (height, width)
        assert canvas._written == [] and (held == -1).all(), (height, width)
        canvas.add(_Object(np.ones((1, 1), bool), 0), height - 1, width - 1)
        assert canvas._written == [(height - 1, width - 1, 1, 1)]
        del canvas


def test_a_compose_inside_a_decode_crop_function_leaves_the_outer_compose_alone():
    """compose_boxed calls a background instance's 'decode_crop' after pasting, while its canvas's label map is in
    use: a compose run by that function (same thread) must not reset or write into that map."""
    from occsynth import masks
    options = CompositeOptions(pastes=(3, 5))
    decoded = 0
    for seed in range(6):
        background, bg_instances, cutouts = make_case(seed, options)
        h, w = background.shape[:2]
        results = []
        for nested in (False, True):
            lazy = []
            for inst in bg_instances:
                rle = masks.encode(inst["mask"])

                def decode(rle=rle, nested=nested):
                    if nested:
                        compose_boxed(background, [], cutouts[::-1], np.random.default_rng(1), options)
                    return masks.decode_crop(rle, h, w)

                box, _ = masks.decode_crop(rle, h, w)
                lazy.append({**{k: v for k, v in inst.items() if k != "mask"}, "box": box, "decode_crop": decode,
                             "amodal_rle": rle, "area": masks.area(inst["mask"]), "bbox": masks.bbox(inst["mask"])})
            results.append(compose_boxed(background, lazy, cutouts, np.random.default_rng(seed), options))
        (image, plain), (image2, nested) = results
        decoded += sum(i["visible_crop"] is not None for i in plain if i["layer"] == 0)
        assert np.array_equal(image, image2) and len(plain) == len(nested)
        for a, b in zip(plain, nested):
            assert a["occluders"] == b["occluders"] and a["box"] == b["box"]
            for key in ("amodal_crop", "visible_crop"):
                assert (a[key] is None and b[key] is None) or np.array_equal(a[key], b[key])
    assert decoded > 0
