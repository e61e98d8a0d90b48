"""Which objects go into which output image: composite options, per-image RNGs, the class schedule.

Everything here is a pure function of (categories, num_images, seed, options), so every worker
and every shard computes the same schedule on its own and output image ``i`` does not depend
on which process renders it. Each image draws from its own RNG streams, derived from
(seed, image index, purpose) with :func:`image_rng`.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Sequence

import numpy as np

from .errors import OccsynthError

BLENDS = ("feather", "gaussian", "none")
MAX_PASTES = 64  # per image; more is certainly a typo and would make placement slow


@dataclasses.dataclass(frozen=True)
class CompositeOptions:
    """How pasted objects are chosen, transformed, placed and blended.

    pastes:          (min, max) pasted objects per image, inclusive.
    occlusion:       occlusion-ratio range aimed at when a paste is placed over an earlier one.
    max_occlusion:   no pasted object ends hidden beyond this ratio (< 1: every pasted object stays visible).
    same_class_prob: probability that an image's first occluder/occludee pair (pastes 0 and 1) share a class.
    scale:           (min, max) jitter of a cutout's native size.
    max_size:        a pasted object's height/width is at most this fraction of the background's (shrunk if needed).
    flip_prob:       horizontal flip probability.
    blend:           'feather' (linear alpha ramp outside the object), 'gaussian' (blurred mask outside the
                     object) or 'none'. Pixels inside the object mask are always pasted unchanged.
    blend_px:        width of the blend: ramp length for 'feather', sigma for 'gaussian'.
    max_tries:       candidate positions tried per paste before the exhaustive fallback.

    Lists (from TOML or JSON) are accepted for the range fields and stored as tuples, so
    ``CompositeOptions(**dataclasses.asdict(o)) == o`` also after a JSON round trip.
    """

    pastes: tuple[int, int] = (2, 4)
    occlusion: tuple[float, float] = (0.1, 0.7)
    max_occlusion: float = 0.8
    same_class_prob: float = 0.2
    scale: tuple[float, float] = (0.6, 1.4)
    max_size: float = 0.7
    flip_prob: float = 0.5
    blend: str = "feather"
    blend_px: float = 2.0
    max_tries: int = 30

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("pastes", _pair(self.pastes, "pastes", int))
        set_("occlusion", _pair(self.occlusion, "occlusion", float))
        set_("scale", _pair(self.scale, "scale", float))
        for name in ("max_occlusion", "same_class_prob", "max_size", "flip_prob", "blend_px"):
            set_(name, _number(getattr(self, name), name, float))
        set_("max_tries", _number(self.max_tries, "max_tries", int))

        lo, hi = self.pastes
        if not 1 <= lo <= hi <= MAX_PASTES:
            raise OccsynthError(f"pastes must be 1 <= min <= max <= {MAX_PASTES}, got {list(self.pastes)}")
        if not 0.0 < self.max_occlusion < 1.0:
            raise OccsynthError(f"max_occlusion must be in (0, 1) so that every pasted object stays visible, "
                                f"got {self.max_occlusion}")
        lo, hi = self.occlusion
        if not 0.0 <= lo <= hi <= self.max_occlusion:
            raise OccsynthError(f"occlusion must be 0 <= min <= max <= max_occlusion ({self.max_occlusion}), "
                                f"got {list(self.occlusion)}")
        if not 0.0 <= self.same_class_prob <= 1.0:
            raise OccsynthError(f"same_class_prob must be in [0, 1], got {self.same_class_prob}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 100.0:
            raise OccsynthError(f"scale must be 0 < min <= max (<= 100), got {list(self.scale)}")
        if not 0.0 < self.max_size <= 1.0:
            raise OccsynthError(f"max_size must be in (0, 1], got {self.max_size}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise OccsynthError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        if self.blend not in BLENDS:
            raise OccsynthError(f"blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")
        if not 0.0 <= self.blend_px <= 64.0:
            raise OccsynthError(f"blend_px must be in [0, 64], got {self.blend_px}")
        if not 1 <= self.max_tries <= 10_000:
            raise OccsynthError(f"max_tries must be in [1, 10000], got {self.max_tries}")

    @property
    def margin(self) -> int:
        """Context pixels a blended paste needs around its object: ceil(3 * blend_px), 0 without blending."""
        return 0 if self.blend == "none" else math.ceil(3 * self.blend_px)


def _number(value, name: str, kind: type):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OccsynthError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise OccsynthError(f"{name} must be finite, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise OccsynthError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _pair(value, name: str, kind: type) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise OccsynthError(f"{name} must be a [min, max] pair, got {value!r}")
    return tuple(_number(v, name, kind) for v in value)


# ---------------------------------------------------------------- random streams

_IMAGE_TAG, _SET_TAG = 1, 2


def _words(value: int, name: str) -> list[int]:
    value = int(value)
    if not 0 <= value < 2 ** 64:
        raise OccsynthError(f"{name} must be in [0, 2**64), got {value}")
    return [value & 0xFFFFFFFF, value >> 32]


def check_seed(seed: int, where: str) -> None:
    """Refuse a seed numpy cannot take (a negative one, a float, a bool): numpy says only ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OccsynthError(f"{where}: seed must be a whole number >= 0, got {seed!r}")


def image_rng(seed: int, index: int, stream: str) -> np.random.Generator:
    """Independent RNG for one purpose (``stream``) of one output image.

    Derived from (seed, index, crc32(stream)) with numpy's SeedSequence and PCG64, both defined
    bit for bit, so the draws do not depend on the platform, the worker or the draws of other
    images. Every value is fed as fixed-width 32-bit words plus a trailing tag, so no two
    (seed, index, stream) triples (nor :func:`set_rng` streams) share an entropy pool.
    """
    entropy = _words(seed, "seed") + _words(index, "image index") + [zlib.crc32(stream.encode()), _IMAGE_TAG]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def set_rng(seed: int, stream: str) -> np.random.Generator:
    """RNG for a decision about the whole set (the class schedule), independent of every image stream."""
    entropy = _words(seed, "seed") + [0, 0, zlib.crc32(stream.encode()), _SET_TAG]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


# ---------------------------------------------------------------- class schedule


@dataclasses.dataclass
class Schedule:
    """Categories pasted into every image.

    Image ``i`` pastes ``slot_categories[image_offsets[i]:image_offsets[i + 1]]`` in paste
    order: the first is the lowest layer (farthest from the camera), the last is nearest.
    Slots 0 and 1 of an image are its designated occludee / occluder pair (compose places
    paste 1 over paste 0); ``same_class_prob`` applies to that pair.
    """

    image_offsets: np.ndarray  # int64, len num_images + 1
    slot_categories: np.ndarray  # int64, len image_offsets[-1]

    @property
    def num_images(self) -> int:
        return len(self.image_offsets) - 1

    def categories(self, index: int) -> list[int]:
        return self.slot_categories[self.image_offsets[index]:self.image_offsets[index + 1]].tolist()


def class_schedule(categories: Sequence[int], num_images: int, seed: int, options: CompositeOptions) -> Schedule:
    """Balanced class schedule: every category is pasted floor or ceil of total / #categories times.

    - pastes per image: drawn from ``image_rng(seed, i, 'count')`` (so image i's count does not
      depend on num_images);
    - slots: concatenated seeded permutations of the categories, cut to the total — exact
      balance (±1), and consecutive slots (the pastes of one image) mostly differ in class;
    - then each image's pair (slots 0, 1) is made to share a class with probability
      ``same_class_prob`` (and to differ otherwise, when it can) by swapping slot contents,
      which keeps every category's count exact. At tiny sizes exact balance can make a wanted
      shared class impossible; balance wins.

    The category order given does not matter (they are sorted).
    """
    cats = np.array(sorted({int(c) for c in categories}), dtype=np.int64)
    if cats.size == 0:
        raise OccsynthError("no category to paste: the cutout bank is empty")
    num_images = int(num_images)
    if num_images < 0:
        raise OccsynthError(f"num_images must be >= 0, got {num_images}")
    lo, hi = options.pastes
    counts = np.fromiter((image_rng(seed, i, "count").integers(lo, hi + 1) for i in range(num_images)),
                         dtype=np.int64, count=num_images)
    offsets = np.zeros(num_images + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])

    rng = set_rng(seed, "schedule")
    rounds = -(-total // cats.size)
    order = rng.permuted(np.tile(np.arange(cats.size), (rounds, 1)), axis=1).reshape(-1)[:total]
    slots = cats[order]

    want_same = rng.random(num_images) < options.same_class_prob
    if cats.size > 1 and total:
        _pair_classes(slots, offsets, counts, want_same, rng)
    return Schedule(image_offsets=offsets, slot_categories=slots)


def _pair_classes(slots: np.ndarray, offsets: np.ndarray, counts: np.ndarray, want_same: np.ndarray,
                  rng: np.random.Generator) -> None:
    """Swap slot contents (in place) so that pairs share / do not share a class as wanted.

    Swaps never change how often a category occurs. Positions are taken, in order of
    preference, from: slots outside any pair ("free"), then pair slots of images whose pair
    should differ (only if it keeps differing), then pair slots of images not handled yet.
    Pairs already made to share a class are never touched again.
    """
    has_pair = counts >= 2
    pair_first = offsets[:-1]
    # role of each slot: 0 free, 1 pair of a "differ" image, 2 pair of a "same" image; -1 locked
    role = np.zeros(len(slots), np.int8)
    role[pair_first[has_pair]] = np.where(want_same[has_pair], 2, 1)
    role[pair_first[has_pair] + 1] = np.where(want_same[has_pair], 2, 1)
    partner = np.full(len(slots), -1, np.int64)
    partner[pair_first[has_pair]] = pair_first[has_pair] + 1
    partner[pair_first[has_pair] + 1] = pair_first[has_pair]

    # pools[tier][category] -> list of positions (lazily cleaned: an entry is checked when popped)
    cat_values = np.unique(slots)
    pools = [{int(c): [] for c in cat_values} for _ in range(3)]
    positions = rng.permutation(len(slots))
    for pos, r, c in zip(positions.tolist(), role[positions].tolist(), slots[positions].tolist()):
        pools[r][c].append(pos)

    def take(cat: int, avoid_partner_cat: int | None = None) -> int:
        """A position holding ``cat`` that may change; -1 if none."""
        for tier in range(3):
            pool = pools[tier][cat]
            skipped = []
            found = -1
            while pool:
                pos = pool.pop()
                if role[pos] != tier or slots[pos] != cat:
                    continue  # stale entry
                if tier == 1 and avoid_partner_cat is not None and slots[partner[pos]] == avoid_partner_cat:
                    skipped.append(pos)  # swapping would give that "differ" pair a shared class
                    if len(skipped) > 8:
                        break
                    continue
                found = pos
                break
            pool.extend(skipped)
            if found >= 0:
                return found
        return -1

    def swap(a: int, k: int) -> None:
        """Exchange the categories of slots a and k; k keeps its role, so re-file it."""
        slots[a], slots[k] = slots[k], slots[a]
        if role[k] >= 0:
            pools[role[k]][int(slots[k])].append(k)

    same_images = np.flatnonzero(has_pair & want_same)
    for i in same_images.tolist():
        a = int(pair_first[i])
        b = a + 1
        role[a] = role[b] = -1  # lock before searching so the pair never swaps with itself
        ca, cb = int(slots[a]), int(slots[b])
        if ca == cb:
            continue
        k = take(ca, avoid_partner_cat=cb)
        if k >= 0:
            swap(b, k)
            continue
        k = take(cb, avoid_partner_cat=ca)
        if k >= 0:
            swap(a, k)

    differ_images = np.flatnonzero(has_pair & ~want_same)
    cat_list = cat_values.tolist()
    for i in differ_images.tolist():
        a = int(pair_first[i])
        b = a + 1
        if slots[a] != slots[b]:
            continue
        c = int(slots[a])
        role[a] = role[b] = -1
        start = int(rng.integers(len(cat_list)))
        for j in range(len(cat_list)):
            other = cat_list[(start + j) % len(cat_list)]
            if other == c:
                continue
            k = take(other, avoid_partner_cat=c)
            if k >= 0:
                swap(b, k)
                break
        role[a] = role[b] = 1


def plan_image(schedule: Schedule, index: int, seed: int, num_backgrounds: int, cutout_counts: dict[int, int],
               options: CompositeOptions) -> dict:
    """Small plan of output image ``index``: background image index and the pastes (in paste order).

    ``cutout_counts[c]`` is the number of cutouts of category c; each paste picks one by index,
    plus its scale jitter and flip, from ``image_rng(seed, index, 'plan')``.
    """
    if not 0 <= index < schedule.num_images:
        raise OccsynthError(f"image index {index} outside the schedule (0..{schedule.num_images - 1})")
    if num_backgrounds < 1:
        raise OccsynthError("no background image to paste on")
    rng = image_rng(seed, index, "plan")
    background = int(rng.integers(num_backgrounds))
    lo, hi = options.scale
    pastes = []
    for cat in schedule.categories(index):
        n = int(cutout_counts.get(cat, 0))
        if n < 1:
            raise OccsynthError(f"category {cat} is scheduled but has no cutout")
        pastes.append({"category_id": int(cat), "cutout": int(rng.integers(n)),
                       "scale": float(rng.uniform(lo, hi)), "flip": bool(rng.random() < options.flip_prob)})
    return {"index": int(index), "background": background, "pastes": pastes}
