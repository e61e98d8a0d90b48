"""Mask arithmetic: the one place that converts and measures instance masks.

Masks are numpy ``bool`` arrays of shape (H, W). Segmentations in COCO layout are
polygons (list of flat ``[x0, y0, x1, y1, ...]`` lists), compressed RLE
(``{"size": [h, w], "counts": str}``) or uncompressed RLE (``counts`` a list of ints).
Boxes are COCO ``[x, y, w, h]`` floats.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .errors import first_few
from .stopping import raise_if_stopping

# the one pixel limit of every reader (coco.check_pixels): an image record or file of more pixels is skipped as
# "image too large", before its image (384 MiB at the limit) or a mask at its size (128 MiB each) is decoded
MAX_IMAGE_PIXELS = 1 << 27


class DegenerateMask(ValueError):
    """A segmentation that cannot be turned into a mask (no polygon part of 3 points, wrong size, empty)."""


def finite_number(value: Any) -> bool:
    """A JSON number that is finite as a float: not a bool (JSON's true/false are no numbers), string or
    null, nor an integer too large for a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


_NUMBER_TYPES = frozenset((int, float))


def finite_numbers(values: Sequence) -> bool:
    """Whether every item of ``values`` (a list or tuple) is a :func:`finite_number`, judged without a Python call
    per item where the answer is yes: the items' types are plain ints and floats (no bool, no subclass) and their
    ``math.fsum`` is finite (fsum converts each item to a float, so an int too large for one raises, and any NaN or
    infinity makes the sum one, or raises). Only otherwise is each item asked. COCO train's polygons hold 45 million
    coordinates, and a call for each was the largest part of checking them."""
    if set(map(type, values)) <= _NUMBER_TYPES:
        try:
            if math.isfinite(math.fsum(values)):
                return True
        except (OverflowError, ValueError):  # an int too large for a float, inf - inf, an intermediate overflow
            pass
    return all(map(finite_number, values))


def to_rle(segmentation: Any, height: int, width: int, *, check: bool = True) -> dict:
    """Any COCO segmentation -> one compressed RLE dict (``counts`` as bytes).

    A compressed string is parsed and refused unless its runs cover the image exactly
    (:func:`check_rle_counts`): pycocotools would read and write past its buffers decoding it.
    ``check=False`` is for a caller that checks the runs itself."""
    if isinstance(segmentation, list):
        polygons = check_polygons(segmentation, height, width)
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
        return mask_utils.merge(rles)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = list(segmentation["size"])
        if size != [height, width]:
            raise DegenerateMask(f"RLE size {size} differs from image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            # pycocotools overflows (a traceback) on a negative count and truncates a fractional one
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                raise DegenerateMask("uncompressed RLE counts must be non-negative integers")
            if sum(counts) != height * width:
                raise DegenerateMask("uncompressed RLE counts do not sum to height*width")
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(counts, str):
            try:
                counts = counts.encode("ascii")
            except UnicodeEncodeError:
                raise DegenerateMask("compressed RLE has characters outside its alphabet") from None
        if not isinstance(counts, bytes):
            raise DegenerateMask("RLE counts must be a string or a list of ints")
        if check:
            check_rle_counts(counts, height * width)
        return {"size": size, "counts": counts}
    raise DegenerateMask(f"unknown segmentation type {type(segmentation).__name__}")


def check_polygons(segmentation: list, height: int, width: int) -> list:
    """The parts of a polygon segmentation that are rasterised, or DegenerateMask: what :func:`to_rle` checks before
    pycocotools rasterises them (it then always succeeds), so that a reader that only asks whether the mask can be
    decoded need not rasterise it. The result is the list itself when every part is kept.

    detectron2's rule (``load_coco_json``): a part of an even count >= 6 of coordinates (3 points or more) is kept,
    any other part is dropped, and only a segmentation with no part left is refused. A short or odd part is a
    stray click of the annotation tool (a 1- or 2-point part beside a good outline): it encloses
    no pixel, and refusing the whole object for it lost a good instance. It must never reach pycocotools either,
    whose ``frPyObjects`` reads every part as a box when the first has 4 numbers.

    Coordinates that are no finite numbers, or vertices far outside the image, refuse the whole object, in any part,
    the dropped ones included: that is damaged data (a writer's bug, a NaN), not a stray part, and the rest of an
    outline written by the same damaged record cannot be trusted (and far-away vertices in a kept part would cost
    pycocotools memory without bound)."""
    kept = polygon_parts(segmentation)
    for poly in segmentation:
        xs, ys = poly[0::2], poly[1::2]
        # pycocotools rasterises the whole outline: far-away vertices cost memory without bound
        if (xs and (min(xs) < -width or max(xs) > 2 * width)) or (ys and (min(ys) < -height or max(ys) > 2 * height)):
            raise DegenerateMask(f"polygon vertices far outside the {width}x{height} image")
    return kept


def polygon_parts(segmentation: Any) -> list:
    """:func:`check_polygons` without the image: the parts kept (the list itself when all are), or DegenerateMask for
    a segmentation that is no list of lists, has a coordinate that is no finite number, or no usable part. For a
    reader that checks polygons before it knows their image's size (an object list of ``bcnet.occsep``)."""
    polygons = [p for p in segmentation if isinstance(p, (list, tuple))] if isinstance(segmentation, list) else []
    if not polygons or len(polygons) != len(segmentation):
        raise DegenerateMask("polygon segmentation is empty or not a list of lists")
    for poly in polygons:
        if not finite_numbers(poly):
            raise DegenerateMask("polygon has non-numeric or non-finite coordinates")
    kept = [p for p in polygons if len(p) >= 6 and len(p) % 2 == 0]  # detectron2's rule
    if not kept:
        lengths = [len(p) for p in polygons]
        parts = (f"its one part has {lengths[0]}" if len(lengths) == 1
                 else f"its {len(lengths):,} parts have {first_few(lengths)}")
        raise DegenerateMask(f"polygon has no usable part: {parts} coordinates (a part needs an even number >= 6)")
    return segmentation if len(kept) == len(segmentation) else kept


def decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Any COCO segmentation -> bool mask (H, W)."""
    rle = to_rle(segmentation, height, width)
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as exc:  # pycocotools raises bare exceptions on broken counts
        raise_if_stopping()  # or numpy lost a Ctrl-C / SIGTERM inside it (see stopping.py)
        raise DegenerateMask(f"RLE cannot be decoded: {exc}") from None


def encode(mask: np.ndarray) -> dict:
    """2-d mask -> compressed RLE with ``counts`` as str (JSON-ready, as COCO files store it). Any nonzero
    value is foreground, as for :func:`area` and :func:`bbox` (a uint8 cast would drop 0.5 and wrap 256)."""
    mask = _two_d(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.view(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def area(mask: np.ndarray) -> int:
    """Foreground pixels of a 2-d mask (nonzero values)."""
    return int(np.count_nonzero(_two_d(mask)))


def bbox(mask: np.ndarray) -> list[float]:
    """Tight COCO box [x, y, w, h] of a 2-d mask; [0, 0, 0, 0] when empty (as pycocotools' toBbox)."""
    mask = _two_d(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _two_d(mask: Any) -> np.ndarray:
    """A 2-d bool array of ``mask`` (nonzero = foreground); ValueError for any other number of axes."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-d (height, width), got shape {mask.shape}")
    return mask if mask.dtype == bool else mask != 0


def rle_area(rle: dict) -> int:
    """Foreground pixels of a compressed RLE, without decoding it."""
    return int(mask_utils.area(_bytes_counts(rle)))


def rle_bbox(rle: dict) -> list[float]:
    """Tight COCO box [x, y, w, h] of a compressed RLE, without decoding it."""
    return [float(v) for v in mask_utils.toBbox(_bytes_counts(rle))]


def rle_intersection_area(a: dict, b: dict) -> int:
    """Pixels shared by two RLE masks, computed without decoding them."""
    return int(mask_utils.area(mask_utils.merge([_bytes_counts(a), _bytes_counts(b)], intersect=True)))


def rle_union(rles: Sequence[dict]) -> dict:
    """The union of compressed RLE masks of one size, as pycocotools' RLE (counts as bytes)."""
    return mask_utils.merge([_bytes_counts(r) for r in rles], intersect=False)


def boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Band where the dilated and the eroded mask differ: ``width`` px on each side of the contour.

    The image border does not count as a contour: a mask cut by the border has no boundary
    there (border pixels are replicated before eroding).
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"boundary width must be a whole number of pixels >= 1, got {width!r}")
    m = mask.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    dilated = cv2.dilate(m, kernel, iterations=width, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    eroded = cv2.erode(m, kernel, iterations=width, borderType=cv2.BORDER_REPLICATE)
    return dilated.astype(bool) & ~eroded.astype(bool)


def to_polygons(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """Outer outlines of a mask as COCO polygons on pixel corners: they decode back to the mask exactly.

    The mask is upsampled 2x so that the pixel-centre contour of the upsampled mask runs along the
    original pixel edges; coordinate ``u`` of the upsampled grid is corner ``(u + 1) // 2``. Holes
    cannot be written as COCO polygons (they are unioned), so they come back filled.
    """
    if not mask.any():
        return []
    up = np.pad(np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1), 1)  # np.kron: 6x the time
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = ((contour.reshape(-1, 2) - 1) + 1) // 2
        points = points[np.any(points != np.roll(points, 1, axis=0), axis=1)]
        if len(points) >= 3:
            points = points + np.asarray(offset)
            polygons.append([float(v) for v in points.reshape(-1)])
    return polygons


def crop(mask: np.ndarray, box_xyxy: Sequence[int]) -> np.ndarray:
    """Integer crop [x0, y0, x1, y1) of a mask; parts outside the mask are False."""
    x0, y0, x1, y1 = (int(v) for v in box_xyxy)
    out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), bool)
    h, w = mask.shape
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = mask[sy0:sy1, sx0:sx1]
    return out


def resize(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to (height, width): a resized mask stays exactly binary.

    Each new pixel takes the source pixel under its centre (``INTER_NEAREST_EXACT``), the grid the image's own
    bilinear resize uses: OpenCV's ``INTER_NEAREST`` samples at pixel corners, which put a mask resized beside its
    image about half a pixel down and right of the object (and of its scaled box).
    """
    h, w = size
    return cv2.resize(mask.astype(np.uint8), (int(w), int(h)), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)


def _bytes_counts(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, str):
        return {"size": rle["size"], "counts": counts.encode("ascii")}
    return rle


# ---------------------------------------------------------------- box + crop form
# The generator's masks are small objects on a large image. Keeping them as (box, crop) pairs and
# measuring/encoding the crop gives exactly what the full-size functions above give, at the cost
# of the object's size instead of the image's.


def encode_crop(crop: np.ndarray, y0: int, x0: int, height: int, width: int) -> dict:
    """``encode`` of the (height, width) mask that is zero except ``crop`` placed at (y0, x0).

    Same string as ``encode(full_mask)``: the canonical column-major runs are computed from the
    crop (runs that continue from one column's bottom into the next column's top are joined) and
    compressed by pycocotools. The crop must lie inside the image.
    """
    crop = np.asarray(crop, bool)
    h, w = crop.shape
    if y0 < 0 or x0 < 0 or y0 + h > height or x0 + w > width:
        raise ValueError(f"crop {crop.shape} at ({y0}, {x0}) leaves the {height}x{width} image")
    total = height * width
    padded = np.zeros((w, h + 2), bool)  # one row per image column, zero above and below
    padded[:, 1:-1] = crop.T
    flat = padded.ravel()
    q = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # changes, in the image's column-major order
    column, y = np.divmod(q, h + 2)
    edges = (column + x0) * height + (y - 1 + y0)  # alternately run starts and (exclusive) ends
    starts, ends = edges[0::2], edges[1::2]
    if starts.size == 0:
        counts = [total]
    else:
        joined = starts[1:] == ends[:-1]
        if joined.any():
            starts = np.concatenate([starts[:1], starts[1:][~joined]])
            ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
        runs = np.empty(2 * starts.size + 1, np.int64)
        runs[0] = starts[0]
        runs[1::2] = ends - starts
        runs[2:-1:2] = starts[1:] - ends[:-1]
        runs[-1] = total - ends[-1]
        counts = runs[:-1] if runs[-1] == 0 else runs  # an array: pycocotools copies a list item by item (3x slower)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def complement_rle(rle: dict) -> dict:
    """The complement of a compressed RLE mask, as pycocotools' RLE (``counts`` as bytes): for
    :func:`rle_intersection`, which has no difference of its own.

    The complement's runs are the mask's behind one empty run (or without the mask's first run when that is
    empty). In the compressed string a value from the fourth on is the difference to the value two places
    before, and those differences do not change when every run moves by one place: only the first values are
    written again, the rest of the string is the mask's own.
    """
    rle = _bytes_counts(rle)
    counts = rle["counts"]
    head, ends = [], []  # the first (up to) four runs and where each one's characters end
    p = 0
    while p < len(counts) and len(head) < 4:
        x, k, more = 0, 0, True
        while more:
            c = counts[p] - 48
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        head.append(x + head[-2] if len(head) > 2 else x)
        ends.append(p)
    if head[0]:  # an empty run in front: runs 0..2 become 1..3, the fourth on keep their differences
        runs, rest = [0, *head[:3]], counts[ends[2]:] if len(head) > 3 else b""
    else:  # the empty first run dropped: runs 1..3 become 0..2, the fifth on keep their differences
        runs, rest = head[1:], counts[ends[3]:] if len(head) > 3 else b""
    out = bytearray()
    for i, run in enumerate(runs):
        x, more = run - runs[i - 2] if i > 2 else run, True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append((c | 0x20 if more else c) + 48)
    return {"size": list(rle["size"]), "counts": bytes(out) + rest}


def rle_intersection(rles: Sequence[dict]) -> dict:
    """The intersection of compressed RLE masks of one size, as pycocotools' RLE (counts as bytes; canonical
    runs for canonical inputs, so the string is what :func:`encode` gives the same mask)."""
    return mask_utils.merge([_bytes_counts(r) for r in rles], intersect=True)


def decode_box(segmentation: Any, height: int, width: int) -> tuple[tuple[int, int, int, int] | None, np.ndarray]:
    """Any COCO segmentation -> (tight box (y0, x0, y1, x1) or None when empty, bool mask inside the box).

    The box comes from the RLE itself, so nothing full-size outlives the call.
    """
    rle = _bytes_counts(to_rle(segmentation, height, width))
    try:
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
        if w == 0 or h == 0:
            return None, np.zeros((0, 0), bool)
        full = mask_utils.decode(rle)
    except Exception as exc:  # pycocotools raises bare exceptions on broken counts
        raise_if_stopping()
        raise DegenerateMask(f"RLE cannot be decoded: {exc}") from None
    return (y, x, y + h, x + w), np.ascontiguousarray(full[y:y + h, x:x + w]).view(bool)


def rle_counts(counts: bytes | str) -> np.ndarray:
    """Run lengths (int64) of a compressed RLE ``counts`` string, as pycocotools' rleFrString reads them.

    Vectorised: each value is 5-bit groups, low first (0x20: more follow; 0x10 in the last: negative),
    and from the fourth value on each is a difference to the value two places before.
    """
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    c = np.frombuffer(counts, np.uint8).astype(np.int64)
    c -= 48
    n = c.size
    ends = np.flatnonzero((c & 0x20) == 0)    # each value's last group
    if ends.size == 0 or ends[-1] != n - 1 or np.any(c < 0) or np.any(c > 0x3F):
        raise DegenerateMask("RLE counts string is not pycocotools' compressed form")
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    first = np.zeros(n, np.int64)
    first[starts[1:]] = starts[1:]
    k = np.arange(n) - np.maximum.accumulate(first)   # position of each group within its value
    if k[ends].max() > 11:
        raise DegenerateMask("RLE counts value too long")
    values = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = np.flatnonzero(c[ends] & 0x10)
    if negative.size:
        values[negative] -= np.left_shift(1, 5 * (k[ends[negative]] + 1))
    if values.size > 3:                       # cnts[m] = x + cnts[m - 2] for m > 2
        values[3::2] = np.cumsum(values[1::2])[1:]
        values[4::2] = np.cumsum(values[2::2])[1:]
    return values


def check_rle_counts(counts: str | bytes, total: int) -> None:
    """Parse a compressed RLE string as pycocotools does; refuse it unless its runs cover exactly ``total`` px.

    pycocotools does not check this: it reads and writes past its buffers when decoding such a string, and
    its IoU of one can loop for ever.
    """
    try:
        runs = rle_counts(counts)
    except UnicodeEncodeError:
        raise DegenerateMask("compressed RLE has characters outside its alphabet") from None
    if runs.size and runs.min() < 0:
        raise DegenerateMask("compressed RLE has a negative run length")
    if runs.size and runs.max() > total:  # also keeps the int64 sums below from wrapping around
        raise DegenerateMask(f"compressed RLE has a run of {int(runs.max())} px, the image has {total}")
    if int(runs.sum()) != total:
        raise DegenerateMask(f"compressed RLE covers {int(runs.sum())} px, the image has {total}")


def decode_crop(segmentation: Any, height: int, width: int) -> tuple[tuple[int, int, int, int] | None, np.ndarray]:
    """:func:`decode_box` without the full-size mask: the box and crop are computed from the runs.

    Only the box's pixels are written, so the cost follows the object's size, not the image's. The
    crop is Fortran-ordered (RLE's column-major order; no transposing copy).
    RLE whose runs are not in pycocotools' canonical form (a zero-length run after the first, counts
    that do not add up to height*width) goes through :func:`decode_box`, so the result is always its.
    """
    box, crop, _ = _decode_runs(segmentation, height, width)
    return box, crop


def decode_crop_encoded(segmentation: Any, height: int, width: int
                        ) -> tuple[tuple[int, int, int, int] | None, np.ndarray, dict]:
    """:func:`decode_crop` plus ``encode`` of the decoded mask (what :func:`encode_crop` of the crop gives).

    For canonical RLE the string is re-made from the runs already read (no pass over the pixels);
    otherwise it is encoded from the crop.
    """
    box, crop, counts = _decode_runs(segmentation, height, width)
    if counts is not None:
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        return box, crop, {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    y0, x0 = box[:2] if box is not None else (0, 0)
    return box, crop, encode_crop(crop, y0, x0, height, width)


def _decode_runs(segmentation: Any, height: int, width: int
                 ) -> tuple[tuple[int, int, int, int] | None, np.ndarray, np.ndarray | None]:
    """(box, crop, canonical runs or None when decode_box had to do it)."""
    rle = _bytes_counts(to_rle(segmentation, height, width, check=False))  # the runs are checked below
    try:
        counts = rle_counts(rle["counts"])
    except DegenerateMask:
        return (*decode_box(segmentation, height, width), None)
    total = height * width
    if counts.size == 0 or np.any(counts[1:] <= 0) or counts[0] < 0 or int(counts.sum()) != total:
        return (*decode_box(segmentation, height, width), None)
    edges = np.cumsum(counts)
    fg_start, fg_end = edges[0:-1:2], edges[1::2]   # foreground runs [start, end) in column-major order
    if fg_end.size == 0:
        return None, np.zeros((0, 0), bool), counts
    first_col, last_col = fg_start // height, (fg_end - 1) // height
    x0, x1 = int(first_col[0]), int(last_col[-1]) + 1
    if np.any(first_col != last_col):           # a run wraps into the next column: every row is in the box
        y0, y1 = 0, height
    else:
        y0, y1 = int((fg_start % height).min()), int(((fg_end - 1) % height).max()) + 1
    h, w = y1 - y0, x1 - x0
    # runs in the box's own column-major order (a run can only wrap when the box spans all rows)
    start = (first_col - x0) * h + fg_start % height - y0
    run = fg_end - fg_start
    lengths = np.empty(2 * start.size + 1, np.int64)
    lengths[0] = start[0]
    lengths[1::2] = run
    lengths[2:-1:2] = start[1:] - (start[:-1] + run[:-1])
    lengths[-1] = h * w - (start[-1] + run[-1])
    values = _OFF_ON[:lengths.size] if lengths.size <= _OFF_ON.size else np.arange(lengths.size) % 2 == 1
    flat = np.repeat(values, lengths)
    return (y0, x0, y1, x1), flat.reshape(w, h).T, counts  # column-major (Fortran-ordered), as RLE is


_OFF_ON = np.arange(1 << 14) % 2 == 1  # False, True, False, ...: the runs' values


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (y0, x0, y1, x1) box of a 2-d bool mask, exclusive ends; None when empty.

    One cv2.boundingRect call (its non-zero-pixel form for 8-bit images): ~4x faster than two
    ``any`` reductions and ``flatnonzero`` on an object-sized mask. A Fortran-ordered mask (e.g.
    a :func:`decode_crop` crop) is measured through its C-ordered transpose instead of copied.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool:
        mask = mask != 0
    if mask.ndim != 2:
        raise ValueError(f"tight_box needs a 2-d mask, got shape {mask.shape}")
    if mask.size == 0:
        return None
    if not mask.flags.c_contiguous and mask.T.flags.c_contiguous:
        x0, y0, x1, y1 = _bounding_rect(mask.T)
    else:
        y0, x0, y1, x1 = _bounding_rect(mask)
    return None if y1 == y0 else (y0, x0, y1, x1)


def _bounding_rect(mask: np.ndarray) -> tuple[int, int, int, int]:
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return y, x, y + h, x + w


def crop_bbox(crop: np.ndarray, y0: int, x0: int) -> list[float]:
    """``bbox`` of the full mask that is zero except ``crop`` placed at (y0, x0), via :func:`tight_box`."""
    box = tight_box(crop)
    if box is None:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(box[1] + int(x0)), float(box[0] + int(y0)), float(box[3] - box[1]), float(box[2] - box[0])]
