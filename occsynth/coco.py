"""Reading COCO-format instance-segmentation sets: JSON, image records, and image files.

Plain dicts in COCO layout go in and out. Bad records raise :class:`BadRecord` naming the
record and the reason; callers decide (through a :class:`SkipLog`) whether to skip or stop.
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import math
import os
import re
import stat
from collections import Counter
from itertools import chain, filterfalse
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import cv2
import ijson
import numpy as np

from . import errors, masks
from .atomic import check_writable, write_bytes
from .errors import BadRecord, OccsynthError, SkipLog, first_few, plural


@contextlib.contextmanager
def reading_json(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Turn the ways reading a JSON file fails (json, ijson, I/O, encoding) into one OccsynthError line."""
    try:
        yield
    except FileNotFoundError:
        raise OccsynthError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise OccsynthError(f"{path}: is a directory, expected a JSON file") from None
    except json.JSONDecodeError as exc:
        if not exc.doc.strip() or _blank(path):
            raise OccsynthError(f"{path}: empty file, expected JSON") from None
        raise OccsynthError(f"{path}: malformed JSON{what} at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ijson.JSONError as exc:
        if _blank(path):
            raise OccsynthError(f"{path}: empty file, expected JSON") from None
        why = one_line(exc)
        if "premature EOF" in why:
            why += ": the file ends inside its JSON (cut off?)"
        elif "integer overflow" in why:
            why += ": a whole number beyond the 64-bit range, which no COCO field holds"
        else:
            why = why.rstrip(".") + _json_excerpt(exc)
        raise OccsynthError(f"{path}: malformed JSON{what} ({why})") from None
    except UnicodeDecodeError as exc:
        raise OccsynthError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except RecursionError:  # json.load recurses per level of [ and {: a crafted file nests thousands deep
        raise OccsynthError(f"{path}: JSON{what} nested too deeply to read (a COCO file nests a few levels: "
                            "objects in lists in an object)") from None


def _blank(path: str | os.PathLike, most: int = 1 << 16) -> bool:
    """Whether a file holds nothing but white space (or a byte-order mark): 'empty', not 'cut off'."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > most:
            return False
        with open(path, "rb") as f:
            return not f.read().removeprefix(codecs.BOM_UTF8).strip()
    except OSError:
        return False


def _json_excerpt(exc: BaseException) -> str:
    """The text around a streaming parser's error, from yajl's message (its second line is the text, its third
    a caret just past the offending character), as '; here: ...>>>...' - in a one-line file of hundreds of
    MB, what to search for - after what a NaN or Infinity there is. '' when the message has no excerpt."""
    text = exc.args[0] if exc.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = str(text).splitlines()
    if len(lines) < 3 or "^" not in lines[2]:
        return ""
    at = max(lines[2].index("^") - 1, 0)
    before, after = lines[1][:at].lstrip(), lines[1][at:].rstrip()
    note = (": NaN and Infinity are not JSON (Python's json.dump writes them unless allow_nan=False)"
            if re.match(r"-?(NaN|Infinity)", after) else "")
    printable = "".join(c if c.isprintable() else "?" for c in f"{before}>>>{after}")
    return f"{note}; here: {printable}"


def open_json(path: str | os.PathLike) -> BinaryIO:
    """Open a JSON file for the streaming parser, past a UTF-8 byte-order mark (Windows tools write one):
    yajl refuses it as an 'invalid char', while json.load (:func:`read_json`) reads such a file."""
    f = open(path, "rb")
    try:
        if f.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
            f.seek(0)
    except BaseException:  # e.g. EISDIR on read: the caller never gets the file to close
        f.close()
        raise
    return f


# the whole numbers the streaming parser reads (yajl refuses the others as an "integer overflow"; -2**63 too)
LARGEST_WHOLE_NUMBER = 2 ** 63 - 1


def read_json(path: str | os.PathLike, *, finite: bool = False) -> Any:
    """Load any JSON file; a missing, malformed or non-UTF-8 file is an OccsynthError naming it. ``finite``:
    NaN and Infinity are refused too, as the streaming readers refuse them (json.load reads them), and so is a
    number too large for a float (1e999: json.load reads it as infinity, which json.dump writes as Infinity)
    or a whole number beyond the 64-bit range (json.load reads any): for a tool that copies values into a file
    those readers then read. A top-level key given twice is refused (:func:`check_unique_keys`)."""
    def refuse(name: str):
        raise OccsynthError(f"{path}: malformed JSON ({name}: NaN and Infinity are not JSON (Python's json.dump "
                            "writes them unless allow_nan=False))")

    def finite_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise OccsynthError(f"{path}: malformed JSON ({text}: too large for a float; written back, it would be "
                                "Infinity, which is not JSON)")
        return value

    def whole_number(text: str) -> int:
        value = int(text)
        if abs(value) > LARGEST_WHOLE_NUMBER:
            shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} digits)"
            raise OccsynthError(f"{path}: malformed JSON ({shown}: a whole number beyond the 64-bit range, "
                                "which no COCO field holds; the streaming readers refuse it)")
        return value

    last_object: list = []

    def pairs_of_last_object(pairs: list) -> dict:  # the top-level object is the last one json.load completes
        nonlocal last_object
        last_object = pairs
        return dict(pairs)

    with reading_json(path), open(path, "rb") as f:
        data = json.load(f, parse_constant=refuse if finite else None, parse_float=finite_float if finite else None,
                         parse_int=whole_number if finite else None, object_pairs_hook=pairs_of_last_object)
    if isinstance(data, dict) and len(data) < len(last_object):
        check_unique_keys(path, (key for key, _ in last_object))
    return data


def read_dataset(path: str | os.PathLike, *, finite: bool = False) -> dict:
    """Load a whole COCO JSON (fine up to val/test size; use :func:`iter_array` for train); ``finite``: as for
    :func:`read_json`."""
    path = Path(path)
    data = read_json(path, finite=finite)
    check_top_level(path, _event_of(data))  # the messages of the streaming readers' check_coco_layout
    for key in COCO_LISTS:
        check_array_start(path, key, _event_of(data[key]) if key in data else None)
    return data


def _event_of(value: Any) -> str:
    """The JSON parser event (as ijson names it) that opens ``value``, for the checks that take one."""
    if isinstance(value, dict):
        return "start_map"
    if isinstance(value, list):
        return "start_array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else "string"


def iter_array(path: str | os.PathLike, key: str) -> Iterator[dict]:
    """Stream the items of one top-level array (``images``, ``annotations``, ...) in bounded memory.

    A missing key, or a value that is no array (``{}``, ``null``), raises as :func:`check_coco_layout`
    does: the item stream alone would read it as an empty list. So does ``key`` given twice at the top level
    (the stream would give the items of both arrays): see :class:`KeyScreen`.
    """
    empty = True
    with reading_json(path, f" (found while reading the file for its '{key}')"), open_json(path) as f:
        for item in ijson.items(KeyScreen(f, path, key), f"{key}.item", use_float=True):
            empty = False
            yield item
    if empty:  # [], or no array at all? only the value's first parser event tells
        check_coco_layout(path, (key,))


def read_array(path: str | os.PathLike, key: str) -> list:
    """One top-level array (``images``, ``categories``) as a list, parsing the file only up to that array's
    end: in COCO files the images come before the annotations, which this does not parse (their bytes are read,
    for a second ``key``: see :class:`KeyScreen`). For arrays that fit in memory; a missing key, a value that is
    no array or ``key`` given twice raises as in :func:`iter_array`."""
    with reading_json(path, f" (found while reading the file for its '{key}')"), open_json(path) as f:
        screen = KeyScreen(f, path, key)
        for value in ijson.items(screen, key, use_float=True):
            if isinstance(value, list):
                screen.read_to_end()
                return value
            break
    check_coco_layout(path, (key,))  # raises: the key is missing or holds no array (or no object holds it)
    return []  # reached only if the file changed between the two reads


class KeyScreen:
    """A JSON file as the streaming parser reads it, its bytes searched on the way for a second ``"key"``.

    Telling a top-level key from the same text inside a record takes a parse, and the parser that streams
    the items of one key (in C) tells nothing of the others. So the bytes are searched (a memory search, about
    1 ns a byte against the parse's 20): a key whose text appears once, with none of its characters written as
    an escape anywhere (``\\u0069`` is "i": "\\u0069mages" is the key "images"; JSON writers escape quotes,
    backslashes, control and non-ASCII characters, not letters), appears once. Only otherwise is the file parsed
    again, for its top-level keys alone (:func:`top_level_keys`), and refused if ``key`` is one of them twice: a
    reader that took either array, or both, would read another data set than the next reader. Other keys
    repeated are no concern of a reader of ``key``; the readers of the whole file (:func:`read_json`) refuse any.
    """

    def __init__(self, file: BinaryIO, path: str | os.PathLike, key: str):
        self.file, self.path, self.key = file, path, key
        self.token = json.dumps(key).encode()
        self.escape = re.compile(rb"\\u00(?:" + "|".join(f"{ord(c):02x}" for c in set(key)).encode() + rb")",
                                 re.IGNORECASE)  # one of the key's characters, escaped
        self.tail = b""  # the end of the bytes searched so far, for a token that two reads split
        self.seen = 0 if key.isascii() else 2  # a non-ASCII key has too many spellings to search for: parse
        self.settled = False

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        if not self.settled and data:
            window = self.tail + data
            self.seen += window.count(self.token) - self.tail.count(self.token)
            self.tail = window[-max(len(self.token) - 1, 5):]
            if self.seen > 1 or (b"\\" in window and self.escape.search(window)):
                self.settled = True
                check_unique_keys(self.path, (k for k in top_level_keys(self.path) if k == self.key))
        return data

    def read_to_end(self, chunk: int = 1 << 20) -> None:
        """Search the bytes the parser did not need (after the array that :func:`read_array` reads)."""
        while not self.settled and self.read(chunk):
            pass


def top_level_keys(path: str | os.PathLike) -> list[str]:
    """The keys of a JSON file's top-level object in file order, repeats included (none for another top level):
    a whole parse, but only the top level's parser events reach Python (the filter is in C)."""
    with open_json(path) as f:
        return [value for _, event, value in filterfalse(itemgetter(0), ijson.parse(f, use_float=True))
                if event == "map_key"]


def check_unique_keys(path: str | os.PathLike, keys: Iterable[str]) -> None:
    """Raise unless each of ``keys`` (top-level keys of a JSON file) comes once. JSON allows a key twice, and
    readers differ on which value counts (json.load keeps the last, a streaming parser the first, or both
    arrays' items), so every reader refuses the file rather than read another data set than the next one."""
    repeated = [f"{brief(key)} given {plural(n, 'time')}" for key, n in Counter(keys).items() if n > 1]
    if repeated:
        raise OccsynthError(f"{path}: top-level key {first_few(repeated)}: JSON readers differ on which value counts "
                            "(Python's json keeps the last, a streaming parser the first or both); keep one")


def one_line(exc: BaseException) -> str:
    """A parser's message as one printable line (yajl's span several lines and may hold raw bytes)."""
    text = exc.args[0] if exc.args else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text).splitlines()[0] if str(text).strip() else type(exc).__name__
    return "".join(c if c.isprintable() else "?" for c in text).strip()


COCO_LISTS = ("images", "annotations", "categories")


def check_coco_layout(path: str | os.PathLike, keys: Iterable[str] = COCO_LISTS) -> None:
    """Raise unless the file is a JSON object whose ``keys`` (default: images/annotations/categories) are lists,
    each given once.

    One streaming pass over the parser events (only needed when a list came out empty: an
    ``"images.item"`` stream is empty both for ``[]`` and for a missing key or an object).
    """
    path, keys = Path(path), tuple(keys)
    starts: dict[str, str] = {}
    named: list[str] = []
    with reading_json(path), open_json(path) as f:
        events = ijson.parse(f, use_float=True)
        prefix, event, _ = next(events, ("", None, None))
        check_top_level(path, event)
        key = None
        for prefix, event, value in events:
            if prefix == "" and event == "map_key":
                key = value
                named.append(key)
            elif key is not None and prefix == key:
                starts.setdefault(key, event)
                key = None
    check_unique_keys(path, (key for key in named if key in keys))
    for key in keys:
        check_array_start(path, key, starts.get(key))


def check_top_level(path: str | os.PathLike, event: str | None) -> None:
    """Raise unless ``event``, the file's first parser event (None: an empty document), opens a JSON object."""
    if event != "start_map":
        found = {"start_array": "an array", None: "nothing"}.get(event, f"a {event}")
        raise OccsynthError(f"{path}: not a COCO file: the top level is {found}, expected a JSON object")


def check_array_start(path: str | os.PathLike, key: str, event: str | None) -> None:
    """Raise unless ``event``, the parser event that opens top-level ``key``'s value (None: no such key),
    opens an array; the error names the file and the key."""
    if event is None:
        raise OccsynthError(f"{path}: not a COCO file: missing the '{key}' list of a COCO instances file")
    if event != "start_array":
        found = {"start_map": "an object"}.get(event, f"a {event}")
        raise OccsynthError(f"{path}: not a COCO file: '{key}' is {found}, expected a list")


def check_out_file(in_path: Path, out_path: Path, why: str, option: str = "in_path/--ann") -> None:
    """Refuse an --out file of a tool that rewrites --ann: --ann under any spelling or link (``why``: what writing
    it would do), and what :func:`check_out_path` refuses. ``option`` names the input ``in_path`` was given as
    (another input file of the tool: --categories-from)."""
    if in_path.resolve() == out_path.resolve() or (out_path.exists() and os.path.samefile(in_path, out_path)):
        raise OccsynthError(f"out_path/--out must differ from {option} ({why})")
    check_out_path(out_path)


def check_out_path(out_path: str | os.PathLike) -> None:
    """Refuse an output file path where the file, written to a temporary and renamed into place, would replace
    something else than an earlier output: a link (to a missing path, or to a file: the link would be replaced,
    not the file it leads to) or a device, pipe or socket (``--out /dev/null`` run as root replaced the device)."""
    out_path = Path(out_path)
    if dangling := errors.dangling_link(out_path):
        raise OccsynthError(f"cannot write {out_path}: {dangling}")
    if out_path.is_symlink() and out_path.is_file():
        raise OccsynthError(f"cannot write {out_path}: it is a link to {os.readlink(out_path)}; the output, renamed "
                            "into place, would replace the link, not that file - give the file's own path")
    if out_path.exists() and not out_path.is_file() and not out_path.is_dir():  # a folder: click refuses it
        raise OccsynthError(f"cannot write {out_path}: not a regular file (a device, pipe or socket), which the "
                            "output, renamed into place, would replace")


def file_hash(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes: identifies a source set in caches and manifests."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def unique_by_id(records: Iterable[Any], kind: str, log: SkipLog) -> list[dict]:
    """Records (``kind``: "image", "category", ...) with an integer ``id``, the first of each id; a category
    also needs its ``name`` (a string): COCO readers (detectron2, mmdetection) list the classes by name.

    The others go to ``log`` as malformed or duplicate, so that ids can be used as keys downstream.
    """
    out, seen = [], set()
    for record in records:
        record_id = record.get("id") if isinstance(record, dict) else None
        try:
            if not is_int(record_id):
                raise BadRecord(errors.MALFORMED_RECORD, record_name(kind, record), "'id' missing or not int")
            if kind == "category" and not isinstance(record.get("name"), str):
                raise BadRecord(errors.MALFORMED_RECORD, record_name(kind, record), "'name' missing or not a string")
            if record_id in seen:
                raise BadRecord(errors.DUPLICATE_ID, record_name(kind, record), duplicate_detail(log))
        except BadRecord as exc:
            log.skip(exc)
            continue
        seen.add(record_id)
        out.append(record)
    return out


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: how messages quote a value from the input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def record_name(kind: str, record: Any) -> str:
    """How messages name an input record (``kind``: "image", "category"): by its id, ``image record 12`` or
    ``image record 'abc'`` (``'?'`` without one), or a record that is no object by its value, cut short."""
    return f"{kind} record {brief(record.get('id', '?') if isinstance(record, dict) else record)}"


def check_image_record(image: Any, *, pixel_limit: bool = True, file_name: bool = True) -> dict:
    """Validate an ``images`` entry; returns it or raises BadRecord.

    A record claiming more pixels than the limit (:func:`check_pixels`) is refused too: every reader decodes its
    file, or its masks, at that size. ``pixel_limit=False`` is for preview alone, which draws a stand-in tile in its
    place (and checks the size itself when drawing). ``file_name=False``: for a reader that opens no file (the
    ground truth pycocotools scores). A record without a ``file_name`` key but with a ``coco_url`` (LVIS v1) is
    returned as a copy with the ``file_name`` that URL gives (:func:`record_file_name`), for the readers that keep
    a record's name."""
    where = record_name("image", image)
    if not isinstance(image, dict):
        raise BadRecord(errors.MALFORMED_RECORD, where, "not an object")
    if file_name and "file_name" not in image and "coco_url" in image:
        image = {**image, "file_name": record_file_name(image)}
    for key, kind in (("id", int), ("file_name", str), ("height", int), ("width", int)):
        if key == "file_name" and not file_name:
            continue
        if not isinstance(image.get(key), kind) or isinstance(image.get(key), bool):
            raise BadRecord(errors.MALFORMED_RECORD, where, f"'{key}' missing or not {kind.__name__}")
    if image["height"] <= 0 or image["width"] <= 0:
        raise BadRecord(errors.MALFORMED_RECORD, where, "non-positive height/width")
    if pixel_limit:
        check_pixels((image["height"], image["width"]), where)
    return image


def record_file_name(image: dict) -> Any:
    """The file an image record names: its ``file_name`` (as it is: checked where it is read,
    :func:`resolve_image_path`), or, where it has no such key but a ``coco_url`` (LVIS v1), that URL path's last two
    parts, split folder and file name (``http://images.cocodataset.org/val2017/000000391895.jpg``:
    ``val2017/000000391895.jpg``, so ``--images`` is the folder holding train2017/ and val2017/), as detectron2's
    LVIS reader takes it (LVIS val draws from both COCO splits); a ``coco_url`` naming no such parts is BadRecord."""
    if "file_name" in image or "coco_url" not in image:
        return image.get("file_name")
    url = image["coco_url"]
    try:
        parts = urlsplit(url).path.split("/")[-2:] if isinstance(url, str) else []
    except ValueError:  # not a URL ("http://[host/...": an unclosed IPv6 address)
        parts = []
    if len(parts) < 2 or not all(parts):
        raise BadRecord(errors.MALFORMED_RECORD, record_name("image", image),
                        f"'file_name' missing, and 'coco_url' {brief(url)} names no split folder and file in it")
    return "/".join(parts)


def check_pixels(size: Sequence[int], where: str) -> None:
    """Refuse an image of ``size`` (height, width) with more pixels than :data:`occsynth.masks.MAX_IMAGE_PIXELS`, as
    BadRecord "image too large" naming ``where``: a 20000x20000 PNG, a few kilobytes on disk, decodes to 1.2 GB, and
    every full-size mask of it costs as much again. The one test of that limit, for image records
    (:func:`check_image_record`) and image files (:func:`decode_image`) alike; the limit is read at each call."""
    height, width = int(size[0]), int(size[1])
    if height * width > masks.MAX_IMAGE_PIXELS:
        raise BadRecord(errors.IMAGE_TOO_LARGE, where, f"{height}x{width} pixels (height x width), over the limit "
                        f"of {masks.MAX_IMAGE_PIXELS:,}")


def check_annotation_fields(ann: Any) -> str:
    """Raise BadRecord unless ``ann`` is an object with an integer ``id`` and a ``segmentation`` (what every
    reader of annotations needs); returns how messages name it."""
    where = f"annotation {brief(ann.get('id', '?') if isinstance(ann, dict) else ann)}"
    if not isinstance(ann, dict):
        raise BadRecord(errors.MALFORMED_RECORD, where, "not an object")
    if not is_int(ann.get("id")) or "segmentation" not in ann:
        raise BadRecord(errors.MALFORMED_RECORD, where, "needs an integer 'id' and a 'segmentation'")
    return where


def check_annotation_record(ann: Any, images: Mapping, categories: Mapping,
                            skipped_images: Mapping[int, str] | None = None) -> dict:
    """Validate an ``annotations`` entry against the image and category tables (``skipped_images``: as for
    :func:`check_image_id`)."""
    where = check_annotation_fields(ann)
    check_image_id(ann, where, images, skipped_images)
    if not is_int(ann.get("category_id")) or ann["category_id"] not in categories:
        raise BadRecord(errors.UNKNOWN_CATEGORY, where, id_detail("category_id", ann.get("category_id")))
    return ann


def id_detail(key: str, value: Any) -> str:
    """How an unknown id is quoted: one given as text ("139010", as some exporters write ids) is said to be no
    integer, or the user looks for a record of that id, which may well exist."""
    return f"{key} {brief(value)}" + ("" if value is None or is_int(value) else " is not an integer")


def note_skipped_image(skipped_images: dict[int, str], record: Any, error: BadRecord) -> None:
    """Keep, by its id, why an image record was skipped (``image record 3: image too large``): an annotation of
    that id is then "of a skipped image" (:func:`check_image_id`), which the user fixes at the image record, not
    "of an unknown image id". A record without an integer id is no annotation's image."""
    if isinstance(record, dict) and is_int(record.get("id")):
        skipped_images[record["id"]] = f"{error.where}: {error.reason}"


def usable_image_records(records: Iterable[Any], log: SkipLog, *,
                         file_name: bool = True) -> tuple[dict[int, dict], dict[int, str]]:
    """The image records a reader can use (:func:`check_image_record`; ``file_name``: as there) by id, and why each
    skipped record with an id was skipped (:func:`note_skipped_image`); the others go to ``log``. A record is checked
    before its id counts as taken, so an id keeps its first usable record: a bad record does not lose the id a later
    good one gives, and only a usable record is a duplicate of another."""
    images: dict[int, dict] = {}
    skipped_images: dict[int, str] = {}
    for record in records:
        try:
            image = check_image_record(record, file_name=file_name)
            if image["id"] in images:
                raise BadRecord(errors.DUPLICATE_ID, record_name("image", image), duplicate_detail(log))
        except BadRecord as exc:
            log.skip(exc)
            note_skipped_image(skipped_images, record, exc)
            continue
        images[image["id"]] = image
    return images, skipped_images


def check_image_id(ann: dict, where: str, images: Mapping, skipped_images: Mapping[int, str] | None = None) -> int:
    """The ``image_id`` of an annotation (named ``where``) when ``images`` has it, else BadRecord: "annotation of a
    skipped image" naming that image record and why (``skipped_images``: :func:`note_skipped_image`), or "unknown
    image id" when no record has it. The one test, for every reader of annotations: the two are told apart, and
    one skipped image record is not also counted as many unknown ids."""
    image_id = ann.get("image_id")
    if is_int(image_id) and image_id in images:  # checked before the lookup: a list id is no key (TypeError)
        return image_id
    if is_int(image_id) and skipped_images and image_id in skipped_images:
        raise BadRecord(errors.OF_SKIPPED_IMAGE, where, skipped_images[image_id])
    raise BadRecord(errors.UNKNOWN_IMAGE, where, id_detail("image_id", image_id))


MASK_ERRORS = (masks.DegenerateMask, TypeError, ValueError, OverflowError, KeyError)
"""What decoding a segmentation read from a file may raise: DegenerateMask (no mask), or the others (malformed)."""


def unreadable_mask(exc: Exception, where: str) -> BadRecord:
    """The BadRecord of a segmentation (named ``where``) whose decoding raised ``exc``, one of :data:`MASK_ERRORS`:
    "degenerate or empty segmentation" for a DegenerateMask, else a malformed record."""
    if isinstance(exc, masks.DegenerateMask):
        return BadRecord(errors.DEGENERATE_MASK, where, str(exc))
    return BadRecord(errors.MALFORMED_RECORD, where, f"unreadable segmentation: {exc}")


def check_segmentation(segmentation: Any, height: int, width: int, where: str, *, rle: bool = True) -> Any:
    """A segmentation as compressed RLE (:func:`occsynth.masks.to_rle`, which checks an RLE string's runs), or
    BadRecord naming ``where``: the one check of whether a mask can be decoded, for every reader that skips
    (or, strict, stops at) an annotation whose mask cannot be. ``rle=False``: the check without rasterising
    polygons (tens of microseconds each: a minute over COCO train's 860k), returning the segmentation as an output
    file should carry it: polygons with only the parts that are rasterised (:func:`occsynth.masks.check_polygons`:
    the list itself when all are; a stray part that pycocotools would misread is left out), an RLE as given."""
    size = segmentation.get("size") if isinstance(segmentation, dict) else None
    if isinstance(size, list) and len(size) == 2 and size != [height, width]:  # a wrong record, or a wrong mask
        raise BadRecord(errors.MASK_SIZE_MISMATCH, where, f"RLE size {brief(size)}, the image record says "
                        f"{height}x{width} (height x width)")
    try:
        if not rle and isinstance(segmentation, list):
            return masks.check_polygons(segmentation, height, width)
        encoded = masks.to_rle(segmentation, height, width)
        return encoded if rle else segmentation
    except MASK_ERRORS as exc:
        raise unreadable_mask(exc, where) from None


def duplicate_detail(log: SkipLog) -> str:
    """The detail of a duplicate-id BadRecord: in strict mode the run stops at it, so nothing is skipped."""
    return "an earlier record has the same id" if log.strict else "later records with this id skipped"


def check_iscrowd(ann: dict, where: str) -> int:
    """An annotation's ``iscrowd`` (0 when absent); BadRecord unless it is 0 or 1, since COCO tools read
    any other value as a crowd region, or crash."""
    crowd = ann.get("iscrowd", 0)
    if not isinstance(crowd, int) or crowd not in (0, 1):
        raise BadRecord(errors.MALFORMED_RECORD, where, f"iscrowd must be 0 or 1, got {brief(crowd)}")
    return int(crowd)


def is_int(value: Any) -> bool:
    """An int that is no bool (JSON's true/false): a COCO id or a count. Checked before a dict lookup, where a
    list id would raise TypeError, and on numbers read from files a user may have edited."""
    return isinstance(value, int) and not isinstance(value, bool)


def categories_by_id(categories: Iterable) -> dict[int, dict]:
    """The category records that can be looked up by id (dicts with an integer id), by id; of records repeating an
    id the first, as every reader of this project keeps the first record of an id."""
    out: dict[int, dict] = {}
    for c in categories:
        if isinstance(c, dict) and is_int(c.get("id")):
            out.setdefault(c["id"], c)
    return out


def index_dataset(dataset: dict, log: SkipLog, *,
                  mask_keys: Sequence[str] = ("segmentation",)) -> tuple[dict, dict, dict]:
    """Validated tables: ``images`` and ``categories`` by id, annotations grouped by image id.

    Bad records go to ``log`` (skipped, or raised in strict mode); the annotations of a skipped image record are
    counted as such (:func:`check_image_id`). Of records sharing an id the first usable one is kept, as every reader
    keeps it (:func:`usable_image_records`; annotation ids name occluders). Masks are not decoded here (COCO train
    has 860k annotations; the reader checks each where it loads it), but for ids that repeat: usable there means
    that each of ``mask_keys`` the record has passes :func:`check_segmentation` and covers a pixel, as the reader
    skips an empty mask (``mask_keys``: the masks the reader loads, such as ``amodal_segmentation`` too for amodal
    training). A repeat replaces the kept record when the kept one is not usable and the repeat is: the kept one is
    counted by its own reason (an empty mask as the reader counts it), and the id goes to the repeat in its own
    image's list, at its own place, as if the unusable record were not in the file; any other repeat is a
    duplicate. Strict, a repeat stops the run at the kept record when that one is not usable (naming it), else at
    the repeat. Annotation order within an image is kept, so results do not depend on dict ordering.
    """
    categories = categories_by_id(dataset["categories"])
    images, skipped_images = usable_image_records(dataset["images"], log)
    by_image: dict[int, list] = {i: [] for i in images}
    kept: dict[int, dict] = {}  # annotation id -> its kept record
    # annotation id -> why its kept record is no usable one (None: it is), judged once: an exporter that numbers
    # annotations per image repeats ids on every image, and each judgement may rasterise a polygon
    problems: dict[int, BadRecord | None] = {}
    for ann in dataset["annotations"]:
        try:
            ann = check_annotation_record(ann, images, categories, skipped_images)
            first = kept.get(ann["id"])
            if first is not None:
                if ann["id"] not in problems:
                    problems[ann["id"]] = _mask_problem(first, images[first["image_id"]], mask_keys)
                if not _replaces(problems[ann["id"]], ann, images, mask_keys, log):
                    raise BadRecord(errors.DUPLICATE_ID, f"annotation {ann['id']}", duplicate_detail(log))
                problems[ann["id"]] = None  # the repeat that takes the id was found usable
                anns = by_image[first["image_id"]]
                del anns[next(i for i, a in enumerate(anns) if a is first)]
            kept[ann["id"]] = ann
            by_image[ann["image_id"]].append(ann)
        except BadRecord as exc:
            log.skip(exc)
    return images, categories, by_image


def _replaces(problem: BadRecord | None, repeat: dict, images: Mapping, mask_keys: Sequence[str],
              log: SkipLog) -> bool:
    """Whether ``repeat``, a record of the id of a kept record, takes the id from it (:func:`index_dataset`): the
    kept record's masks fail or one is empty (``problem``, its :func:`_mask_problem`), and the repeat's are usable.
    The kept one is then counted in ``log``; strict, it is raised."""
    if problem is None:
        return False
    if log.strict:
        raise problem
    if _mask_problem(repeat, images[repeat["image_id"]], mask_keys) is not None:
        return False
    log.skip(problem)
    return True


def _mask_problem(ann: dict, image: dict, mask_keys: Sequence[str]) -> BadRecord | None:
    """Why one of ``mask_keys`` that ``ann`` has is no usable mask, named and worded as bcnet's loader skips it
    (``annotation 5 'segmentation'``): it cannot be decoded (:func:`check_segmentation`), or it covers no pixel
    (an empty mask: its area read from the RLE, not decoded to full size); None when all are usable."""
    for key in mask_keys:
        if key in ann:
            where = f"annotation {ann['id']} '{key}'"
            try:
                rle = check_segmentation(ann[key], image["height"], image["width"], where)
            except BadRecord as exc:
                return exc
            if masks.rle_area(rle) == 0:
                return BadRecord(errors.DEGENERATE_MASK, where, "empty mask")
    return None


def resolve_image_path(image_root: str | os.PathLike, file_name: str) -> Path:
    """Path of ``file_name`` under ``image_root``; refuses names that leave the root.

    The check is on the name: absolute names, ``..`` components, NUL bytes and empty names are
    refused, so a crafted annotations file cannot make the tool read arbitrary files; so is a name that is
    no Unicode text (JSON can spell an unpaired surrogate, "\\ud800", which json.load keeps and no file
    name can be encoded from: os.stat raised UnicodeEncodeError). Symlinks
    that are inside the image root are followed: they were put there by whoever laid out the
    images (clusters often link image folders), not by the annotations file.
    """
    if not isinstance(file_name, str) or "\x00" in file_name or file_name.strip() == "" or not _is_text(file_name):
        raise BadRecord(errors.OUTSIDE_ROOT, f"file_name {file_name!r}",
                        "empty, not text, or holds a NUL byte or an unpaired surrogate")
    candidate = Path(file_name)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise BadRecord(errors.OUTSIDE_ROOT, f"file_name {file_name!r}")
    return Path(image_root).absolute() / candidate


def _is_text(name: str) -> bool:
    """Whether ``name`` is Unicode text (no unpaired surrogate): what a file name, or a message, can be made of."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def record_image_path(image_root: str | os.PathLike, image: dict) -> Path:
    """:func:`resolve_image_path` of the file an image record names (:func:`record_file_name`: its ``file_name``, or
    LVIS's ``coco_url``); a refused name names the record too (``image record 12 (file_name '/etc/passwd')``), so
    that ``--strict`` says which record to fix."""
    name = record_file_name(image)
    try:
        return resolve_image_path(image_root, name)
    except BadRecord as exc:
        raise BadRecord(exc.reason, f"{record_name('image', image)} ({exc.where})", exc.detail) from None


def require_image_file(path: Path) -> Path:
    """``path`` if a file is there, else a BadRecord "missing image file" (also for a name the file system cannot
    even look up, such as one too long: that record is skipped like any missing image, it does not stop a run).
    Something else under the name (a folder, a named pipe, a device) is what :func:`read_image` says of it."""
    where = f"image file {path}"
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise BadRecord(errors.MISSING_FILE, where) from None
    except OSError as exc:
        raise BadRecord(errors.MISSING_FILE, where, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(mode):
        raise BadRecord(errors.CORRUPT_IMAGE, where, f"{_not_regular(mode)}, not an image file")
    return path


def image_file_exists(path: Path) -> bool:
    """Whether :func:`require_image_file` finds a file at ``path`` (for sampling whether an image root is right)."""
    try:
        require_image_file(path)
    except BadRecord:
        return False
    return True


ROOT_SAMPLE = 20  # image records looked up to tell an image folder from a wrong one (none_found_under,
#                   none_readable_under)


def spread(count: int, sample: int) -> list[int]:
    """Up to ``sample`` of the indices ``0 .. count - 1``, spread evenly, the first and the last included: a sample of
    a set's records from end to end, so that a folder holding only a part of it is not taken for a wrong one."""
    return [int(i) for i in np.linspace(0, count - 1, min(sample, count)).astype(int)]


def none_found_under(image_root: str | os.PathLike, count: int, record: Callable[[int], Any]) -> list[Path] | None:
    """For ``ROOT_SAMPLE`` image records spread over a set of ``count`` (:func:`spread`; ``record(i)``: the i-th):
    their paths under ``image_root`` when not one of those files is there (the root is then not the folder their
    file names are relative to), else None. The one rule of the bank's check and the pipeline's. Records whose name
    is refused are left out: each is skipped, and counted, where it is read."""
    paths = [path for _, path in _sampled_images(image_root, count, record)]
    return paths if paths and not any(image_file_exists(p) for p in paths) else None


def _sampled_images(image_root: str | os.PathLike, count: int,
                    record: Callable[[int], Any]) -> Iterator[tuple[Any, Path]]:
    """The ``ROOT_SAMPLE`` image records spread over a set of ``count`` (:func:`spread`; ``record(i)``: the i-th)
    whose names can be looked up, with their paths under ``image_root``: the one sample of the image-folder checks.
    Records whose name is refused are left out: each is skipped, and counted, where it is read."""
    for i in spread(count, ROOT_SAMPLE):
        image = record(i)
        try:
            path = record_image_path(image_root, image)
        except BadRecord:
            continue
        yield image, path


def none_readable_under(image_root: str | os.PathLike, count: int,
                        record: Callable[[int], Any]) -> list[BadRecord] | None:
    """For the image records :func:`none_found_under` samples whose files are under ``image_root``: why each could not
    be read as the image its record describes (:func:`read_image`, at the record's size) when not one of them could,
    else None (also when no sampled file is there: :func:`none_found_under` says that). Files of the right names that
    are no images of the set (a broken or truncated copy, copies at another size) are skipped where each is read, so
    a set read through them read no image, found only after the work before it (a whole pretraining). Reading stops
    at the first image that can be read: the usual cost is one decode."""
    refused = []
    for image, path in _sampled_images(image_root, count, record):
        if not image_file_exists(path):
            continue
        size = (image.get("height"), image.get("width"))
        try:
            read_image(path, size if all(is_int(v) and v > 0 for v in size) else None)
        except BadRecord as exc:
            refused.append(exc)
            continue
        return None
    return refused or None


def names_no_file(count: int, record: Callable[[int], Any]) -> BadRecord | None:
    """The first image record's refusal (:func:`record_image_path`: an absolute name, one with '..', no text, no
    file_name) when every one of the ``count`` records (``record(i)``: the i-th) is refused, else None. Such names are
    skipped where each record is read, so no image folder is wrong for them, and none is right either: a set (a
    labelling tool's export) whose every file name is absolute reads no image at all. The records that
    :func:`none_found_under` samples are judged first; only when all of those are refused are the others (a name is
    judged without a disk access): a set with any usable name reads that image, skipping the others."""
    sampled = spread(count, ROOT_SAMPLE)
    judged = frozenset(sampled)
    first = None
    for i in chain(sampled, (i for i in range(count) if i not in judged)):
        try:
            record_image_path(".", record(i))
        except BadRecord as exc:
            first = first or exc
        else:
            return None
    return first


def named_nowhere(ann: str | os.PathLike) -> str:
    """What to do about image records whose names no image folder holds (:func:`names_no_file`), in one wording."""
    return (f"their file_name entries in {ann} name no file under any folder (absolute, with '..', or not text): fix "
            "those records to name files relative to one images folder")


def read_image(path: str | os.PathLike, expected_size: tuple[int, int] | None = None, *,
               bgr: bool = False) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3); with ``bgr``, to OpenCV's BGR order, unconverted.

    Grayscale, palette, CMYK and 16-bit files are converted; EXIF orientation is applied (as
    COCO annotations assume). ``expected_size`` is (height, width) from the image record.
    ``bgr`` is for code that only decodes, composes and re-encodes with :func:`encode_image`
    (generation): compositing is the same in any channel order, and the two conversions it saves
    (about 25 us each at 640x480) are time the bench's floor does not spend either. An image of more pixels than
    the limit is refused (:func:`check_pixels`; a JPEG or PNG from its header, before decoding), also for a reader
    with no record whose size was checked (bcnet predict).
    """
    path = Path(path)
    where = f"image file {path}"
    try:
        data = _read_regular_file(path)
    except (FileNotFoundError, NotADirectoryError):  # as require_image_file says of them
        raise BadRecord(errors.MISSING_FILE, where) from None
    except OSError as exc:
        raise BadRecord(errors.CORRUPT_IMAGE, where, exc.strerror or str(exc)) from None
    return decode_image(data, where, expected_size, bgr=bgr)


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str:
    """What a file that is not a regular one is, by its ``st_mode``: "a folder", "a named pipe (FIFO)", ..."""
    return next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file (or a link to one); OSError naming what it is otherwise.

    A source set may hold a named pipe, or a link to a device (``/dev/zero``), under an image's name: reading
    one would wait for a writer for ever, or fill the memory. The file is opened without blocking (a pipe's
    open waits for a writer too) and checked on its descriptor, so nothing can be swapped in between."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{_not_regular(mode)}, not an image file", str(path))
        f = open(fd, "rb", closefd=False)
        with f:
            return f.read()
    finally:
        os.close(fd)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def truncation(data: bytes) -> str | None:
    """Why a JPEG or PNG file ends before its image does, or None (also for other formats).

    Checked before decoding: OpenCV decodes a truncated JPEG into an image with a grey bottom, and a
    truncated PNG prints libpng's errors on stderr. Bytes after the end of the image (a phone's trailer,
    a motion photo's video) are allowed, as decoders ignore them. The usual file ends with its end marker
    and costs one comparison; any other is walked marker by marker (JPEG) or chunk by chunk (PNG).
    """
    if data[:2] == b"\xff\xd8":
        if data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9") or _jpeg_end(data):
            return None
        return "JPEG has no end-of-image marker"
    if data[:8] == PNG_SIGNATURE:
        if data.endswith(b"IEND\xaeB`\x82") or _png_end(data):
            return None
        return "PNG has no IEND chunk"
    return None


def _jpeg_marker(data: bytes, pos: int) -> tuple[int, int | None]:
    """From ``pos``, past fill bytes and the markers without a segment (TEM, restarts): (position, marker byte) of
    the next marker; marker -1 when a byte there is not a marker (a damaged file), None when the data ends first."""
    n = len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return pos, -1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
        else:
            return pos, marker
    return pos, None


def _jpeg_end(data: bytes) -> bool:
    """Whether a JPEG's markers lead to its end-of-image marker: segments are skipped by their length (an EXIF
    thumbnail's own end marker is inside one), entropy-coded data up to the next marker that is not a
    stuffed 0xFF00 or a restart. False when the data ends first; True when the walk meets something that is
    not a marker (a damaged file: the decoder decides)."""
    pos, n = 2, len(data)
    while True:
        pos, marker = _jpeg_marker(data, pos)
        if marker is None:
            return False
        if marker in (-1, 0xD9):
            return True
        if pos + 4 > n:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next real marker
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    return False
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break


def _png_end(data: bytes) -> bool:
    """Whether a PNG's chunks (length, type, data, CRC) lead to a whole IEND chunk before the data ends; True
    when the walk meets something that is not a chunk (a damaged file: the decoder decides)."""
    if data[8:16] != b"\x00\x00\x00\x0dIHDR":  # every PNG starts with it
        return True
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if not kind.isalpha():
            return True
        end = pos + 12 + length
        if kind == b"IEND":
            return end <= n
        pos = end
    return False


_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) that a PNG's IHDR or a JPEG's start-of-frame header declares, read without decoding;
    None for other formats, or when the header cannot be found (the decoder then decides)."""
    if data[:8] == PNG_SIGNATURE:
        if data[12:16] != b"IHDR" or len(data) < 24:
            return None
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    while True:
        pos, marker = _jpeg_marker(data, pos)
        if marker is None or marker in (-1, 0xD9, 0xDA):  # the end, damage, or scan data before any frame header
            return None
        if marker in _JPEG_FRAMES:
            if pos + 9 > n:
                return None
            height, width = int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 7:pos + 9], "big")
            return (height, width) if height else None  # 0: the height comes later (a DNL marker)
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")


def decode_image(data: bytes, where: str, expected_size: tuple[int, int] | None = None, *,
                 bgr: bool = False) -> np.ndarray:
    """:func:`read_image` of bytes already read; ``where`` names them in a BadRecord."""
    if not data:
        raise BadRecord(errors.CORRUPT_IMAGE, where, "empty file")
    cut_short = truncation(data)
    if cut_short:
        raise BadRecord(errors.TRUNCATED_IMAGE, where, cut_short)
    claimed = header_size(data)
    if claimed is not None and expected_size is not None:
        # a file whose header disagrees with its record is refused before decoding: a decompression bomb (a
        # kilobyte PNG of 30000x30000 px) would otherwise cost gigabytes and seconds in every worker that draws it.
        # Either order of the sides passes here: an EXIF rotation is applied, and checked, by the decoder.
        if sorted(claimed) != sorted(int(v) for v in expected_size):
            raise BadRecord(errors.SIZE_MISMATCH, where, f"file header says {claimed[0]}x{claimed[1]}, record says "
                            f"{expected_size[0]}x{expected_size[1]} (height x width)")
    if claimed is not None:  # JPEG, PNG: over the limit, refused from the header (a file without a record: predict)
        check_pixels(claimed, where)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise BadRecord(errors.CORRUPT_IMAGE, where, str(exc).strip().splitlines()[-1][:120]) from None
    if pixels is None or pixels.ndim != 3 or pixels.size == 0:
        raise BadRecord(errors.CORRUPT_IMAGE, where)
    check_pixels(pixels.shape[:2], where)  # other formats: decoded, but no further (a model, masks of its size)
    if expected_size is not None and tuple(pixels.shape[:2]) != tuple(expected_size):
        raise BadRecord(errors.SIZE_MISMATCH, where, f"file is {pixels.shape[0]}x{pixels.shape[1]}, record says "
                        f"{expected_size[0]}x{expected_size[1]} (height x width)")
    return pixels if bgr else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def encode_image(image: np.ndarray, ext: str = ".jpg", quality: int = 95, *, bgr: bool = False) -> bytes:
    """RGB uint8 (with ``bgr``: BGR, as :func:`read_image` gives it with ``bgr``) -> encoded bytes (JPEG or
    PNG), deterministic for the same pixels."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, image if bgr else cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OccsynthError(f"could not encode an image as {ext}")
    return buf.tobytes()


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def picture_path(path: str | os.PathLike, what: str = "picture", folder_writable: bool = True) -> Path:
    """``path`` if a picture can be written there (.png/.jpg, :func:`check_out_path`, and with ``folder_writable``
    the nearest existing folder on its way can be written: :func:`check_writable`); check it before the work
    that makes it."""
    path = Path(path)
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        raise OccsynthError(f"{path}: the {what} is written as .png or .jpg")
    check_out_path(path)
    if folder_writable:  # a read-only folder fails here, not after the work
        folder = path.parent
        while not os.path.lexists(folder) and folder != folder.parent:
            folder = folder.parent
        check_writable(folder)
    return path


def write_picture(rgb: np.ndarray, path: str | os.PathLike, what: str = "picture", quality: int = 95) -> Path:
    """Write an RGB picture atomically as PNG or JPEG (by the extension of ``path``); a folder that cannot be written
    is said by the write itself (no probe file per picture: predict writes thousands)."""
    path = picture_path(path, what, folder_writable=False)
    write_bytes(path, encode_image(rgb, path.suffix.lower(), quality))
    return path
