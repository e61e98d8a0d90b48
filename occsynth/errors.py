"""Bad-input handling shared by every occsynth step.

Default mode skips a bad record and counts it by reason; ``strict`` mode stops at the first
one. Either way the user sees the file/record and the reason, never a traceback: the CLI
prints :class:`OccsynthError` messages and exits with status 2.
"""
from __future__ import annotations

import difflib
import errno
import numbers
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# Reasons a record or image is skipped. Stable strings: they appear in reports and manifests.
MISSING_FILE = "missing image file"
CORRUPT_IMAGE = "unreadable or corrupt image"
TRUNCATED_IMAGE = "truncated image"
SIZE_MISMATCH = "image size differs from its record"
OUTSIDE_ROOT = "file_name points outside the image root"
UNKNOWN_IMAGE = "annotation refers to an unknown image id"
OF_SKIPPED_IMAGE = "annotation of a skipped image"  # its image record was skipped: the id is known, not usable
UNKNOWN_CATEGORY = "annotation refers to an unknown category id"
DEGENERATE_MASK = "degenerate or empty segmentation"
MASK_SIZE_MISMATCH = "mask size differs from its image record"
MALFORMED_RECORD = "malformed record"
DUPLICATE_ID = "duplicate id"
DUPLICATE_RECORD = "duplicate record"  # the same thing annotated twice under other ids (a COCOA image or region)
IMAGE_TOO_LARGE = "image too large"


class OccsynthError(Exception):
    """An error the user can act on; the CLI prints it as one message."""


def os_error_reason(exc: OSError, making_folder: bool = False) -> str:
    """Why an OS call failed, in words; where a file stands where a folder is needed (``mkdir -p`` through
    it says only "File exists" or "Not a directory"), that file is named.

    "File exists" means that only when the call was making a folder (``making_folder``): from an
    exclusive create or a link it means what it says."""
    wanted = (errno.EEXIST, errno.ENOTDIR) if making_folder else (errno.ENOTDIR,)
    if exc.errno in wanted and exc.filename is not None:
        path = Path(exc.filename)
        for folder in (*reversed(path.parents), path):
            if dangling := dangling_link(folder):
                return dangling
            if folder.exists() and not folder.is_dir():
                return f"{folder} is a file, not a folder"
    return exc.strerror or str(exc)


def dangling_link(path: str | os.PathLike) -> str | None:
    """'X is a link to a missing path (TARGET)' when ``path`` is a symbolic link to nothing, else None.

    Making a folder there fails with a bare "File exists"; a file written there atomically (renamed into
    place) would replace the link rather than land where it points."""
    path = Path(path)
    if not path.is_symlink() or path.exists():
        return None
    try:
        target = os.readlink(path)
    except OSError:
        return f"{path} is a link to a missing path"
    return f"{path} is a link to a missing path ({target})"


class NoRoom(OccsynthError):
    """A file system without room for what is about to be written there, found before writing it."""


class BadRecord(OccsynthError):
    """One bad input record (an image or an annotation)."""

    def __init__(self, reason: str, where: str, detail: str = ""):
        self.reason, self.where, self.detail = reason, where, detail
        super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # pickled from a worker process (loky, dask): rebuilt from its arguments, not its text
        return type(self), (self.reason, self.where, self.detail)

    def in_file(self, path) -> "BadRecord":
        """The same error, placed in the file the record came from (``FILE: image record 12: ...``)."""
        return BadRecord(self.reason, f"{path}: {self.where}", self.detail)


@dataclass
class SkipLog:
    """Counts skipped records by reason; in strict mode the first one raises."""

    strict: bool = False
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def skip(self, error: BadRecord) -> None:
        if self.strict:
            raise error
        self.counts[error.reason] += 1
        self.examples.setdefault(error.reason, str(error))

    def merge(self, other: "SkipLog | dict") -> None:
        data = other.to_dict() if isinstance(other, SkipLog) else other
        for reason, n in data.get("counts", {}).items():
            self.counts[reason] += n
        for reason, example in data.get("examples", {}).items():
            self.examples.setdefault(reason, example)

    def to_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "examples": dict(sorted(self.examples.items()))}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def in_one_line(self) -> str:
        """What was skipped, for an error the skips explain: the counts by reason and the example of the most
        frequent reason, e.g. ``skipped 3 bad records: missing image file=3; e.g. image file a.png`` (the example
        keeps its reason where there are several)."""
        if not self.counts:
            return "nothing skipped"
        counts = dict(sorted(self.counts.items()))
        top = max(counts, key=lambda reason: counts[reason])  # the first of the most frequent, in sorted order
        example = self.examples[top] if len(counts) > 1 else without_reason(self.examples[top], top)
        return f"skipped {plural(self.total, 'bad record')}: {key_values(counts)}; e.g. {example}"

    def summary(self, of: str = "") -> str:
        """Counts and an example per reason; ``of`` names what was read (two logs may be printed together)."""
        head = f"{of}: " if of else ""
        if not self.counts:
            return f"{head}no bad input"
        return "\n".join([f"{head}skipped {plural(self.total, 'bad record')}:"] + reason_lines(self.to_dict()))


def reason_lines(skipped: dict) -> list[str]:
    """One line per reason of a :meth:`SkipLog.to_dict`: the count, the reason and an example that does not
    say the reason again (``      3  missing image file, e.g. image file a.png``): how every report lists skips."""
    examples = skipped.get("examples") or {}
    return [f"  {n:>7}  {reason}" + (f", e.g. {without_reason(examples[reason], reason)}" if reason in examples else "")
            for reason, n in sorted((skipped.get("counts") or {}).items())]


def skip_lines(skipped: dict, heading: str) -> list[str]:
    """Bad records a command skipped (a ``SkipLog.to_dict()``): ``heading: TOTAL``, then a line per reason
    with its count and an example (:func:`reason_lines`); no line when nothing was skipped."""
    counts = (skipped or {}).get("counts") or {}
    if not counts:
        return []
    return [f"{heading}: {sum(counts.values())}"] + reason_lines(skipped)


def without_reason(example: str, reason: str) -> str:
    """A skip example (a :class:`BadRecord`'s text, ``WHERE: REASON (DETAIL)``) as ``WHERE (DETAIL)``, for a line
    that names the reason already."""
    return example.replace(f": {reason}", "", 1)


def key_values(counts: dict) -> str:
    """``a=1, b=2``: a dict of counts as a report prints it (not as JSON)."""
    return ", ".join(f"{k}={v}" for k, v in counts.items())


def whole_number(value: object, low: int) -> bool:
    """Whether an argument is an integer >= ``low``: Python's or numpy's (a notebook's ``np.int64``), not a bool, a
    float or a string. Records read from JSON are tested with :func:`occsynth.coco.is_int` (no numpy there)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def options_argument(kind: type, value: object, name: str):
    """An options dataclass argument: ``value`` itself, or a notebook's dict of its fields made into one (as a recipe's
    table is); anything else, or an unknown field, is an OccsynthError naming ``name``."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise OccsynthError(f"{name} must be a {kind.__name__} or a dict of its fields, got {value!r}")
    try:
        return kind(**value)
    except TypeError as exc:
        raise OccsynthError(f"{name}: {exc}") from None


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and the word in the number it takes ("1 image", "3 images"; ``words``: the plural where an added
    "s" is wrong, "categories"), so that no message says "1 images" or hides the number in "image(s)". A whole
    number has thousands separators: "118,287 images"."""
    count = f"{n:,}" if isinstance(n, numbers.Integral) and not isinstance(n, bool) else str(n)
    return f"{count} {word if n == 1 else words or word + 's'}"


def first_few(items: Sequence, most: int = 8) -> str:
    """``a, b, c and 5 more``: the first ``most`` of a list in a sentence, short even for COCO's 80 categories
    or a thousand images."""
    shown = ", ".join(str(item) for item in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def did_you_mean(name: object, known: Sequence[str]) -> str:
    """`` (did you mean 'mask_head'?)`` when one of ``known`` is close to ``name`` (difflib), else "": the
    hint a message about an unknown setting gives, so that a typo is seen at once."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def why_none_usable(log: SkipLog) -> str:
    """Why no record of a kind was usable: the skipped ones by reason with an example, or a hint."""
    return log.in_one_line() if log.total else "is this a COCO instances file?"
