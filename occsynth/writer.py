"""Where a generated set lands on disk: per-chunk parts, resume state, streaming merge, manifest.

Layout (see docs/FORMAT.md)::

    OUT/images/000000000001.jpg   written atomically by the worker that rendered it
    OUT/parts/run.json            the run's settings; a rerun with other settings (or source images) is refused
    OUT/parts/image-root.json     the folder the run's source images were read from (and whether it was the demo
                                  source's), for that refusal's message
    OUT/parts/chunk-000000.json   one chunk's image records + annotations (local indices), atomic
    OUT/parts/sizes-000000.json   the byte size of each of its images, a check for resume
    OUT/annotations.json          merged from the parts by streaming, atomic
    OUT/manifest.json             options, seed, source hashes, counts, skips, version
    OUT/parts/.lock, .lock-of-N, .lock-shard-I-of-N   flock files: who writes OUT now (:func:`run_lock`)

A chunk counts as done when its part file exists and its images have the recorded sizes
(:func:`chunk_done`), so a killed run resumes by redoing the other chunks; their images are
rewritten with the same bytes.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import operator
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from .atomic import (LOCK_FILE, lock_failed, lock_file_now, lock_holder, make_folder, name_lock_holder, open_atomic,
                     remove_stale_temporaries, run_lock_file, write_json)
from .coco import is_int, read_json
from .errors import OccsynthError, SkipLog, first_few, plural

PARTS = "parts"
IMAGES = "images"
RUN_FILE = "run.json"
ANNOTATIONS_FILE = "annotations.json"
MANIFEST_FILE = "manifest.json"
SOURCE_FILE = "source.json"
IMAGE_ROOT_FILE = "image-root.json"  # where a run's source images were read, for the message that refuses others
MERGED_INTO_FILE = "merged-into.json"  # left in a shard folder whose chunks a merge moved out


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """A shard ``(i, n)``: whole numbers with 0 <= i < n (shard i renders chunks i, i + n, ...)."""
    try:
        i, n = shard
    except (TypeError, ValueError):
        raise OccsynthError(f"shard must be a pair (i, n), got {shard!r}") from None
    try:  # any integer type (numpy's too), not bool or float
        if isinstance(i, bool) or isinstance(n, bool):
            raise TypeError
        i, n = operator.index(i), operator.index(n)
    except TypeError:
        raise OccsynthError(f"shard must be two whole numbers (i, n), got {shard!r}") from None
    if not 0 <= i < n:
        raise OccsynthError(f"shard index must satisfy 0 <= i < n, got {shard!r}")
    return i, n


def set_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(annotations JSON, folder) of a set given as its folder or as its (or any COCO) annotations file."""
    path = Path(path)
    if path.is_file():
        return path, path.parent
    if not path.is_dir():
        raise OccsynthError(f"{path}: not found")
    ann_path = path / ANNOTATIONS_FILE
    if ann_path.is_dir():
        raise OccsynthError(f"{ann_path}: is a directory, expected the set's annotations JSON file")
    if not ann_path.is_file():
        held = what_folder_holds(path) or "give a set folder holding annotations.json, or the annotations JSON file itself"
        raise OccsynthError(f"{ann_path}: not found - {held}")
    return ann_path, path


def what_folder_holds(path: Path) -> str | None:
    """For a folder without annotations.json: what it is, if occsynth wrote it, and where its set is (else None)."""
    merged_into = merged_into_of(path)
    if merged_into is not None and Path(merged_into).is_dir():  # a set deleted since: the folder is what it holds
        return f"its chunks were merged into {merged_into}, the set to use"
    if (path / PARTS / RUN_FILE).is_file():
        return ("it holds an unfinished `occsynth generate` run or one --shard of a set: finish it with the same "
                "command, or join the shards with `occsynth merge`")
    try:  # a folder of sets: a train-synthetic run (synthetic/, cocoocc/), or the user's own
        sets = sorted(f"{p.name}/" for p in path.iterdir() if (p / ANNOTATIONS_FILE).is_file())
    except OSError:
        return None
    return f"it holds sets in its folders {first_few(sets)}: give one of them" if sets else None


def merged_into_of(folder: Path) -> str | None:
    """The merged set that a merge moved ``folder``'s chunks into (its ``parts/merged-into.json``), or None: none
    is named there, or the file is unreadable (it is written without fsync, and only ever informs a message)."""
    try:
        out = read_json(Path(folder) / PARTS / MERGED_INTO_FILE)["out"]
    except (OSError, OccsynthError, TypeError, KeyError, IndexError):
        return None
    return out if isinstance(out, str) else None


def image_file_name(index: int, ext: str) -> str:
    return f"{index + 1:012d}.{ext}"


def chunk_image_names(settings: dict, chunk: int) -> list[str]:
    """File names of a chunk's images: every image of a finished chunk is written, under a name
    that its index and the run settings fix."""
    first = chunk * settings["chunk_size"]
    last = min(first + settings["chunk_size"], settings["num_images"])
    return [image_file_name(i, settings["image_format"]) for i in range(first, last)]


def chunk_of_file(name: str, settings: dict) -> int | None:
    """The chunk whose image, part or sizes file ``name`` is; None for the files of the whole run."""
    stem, _, ext = name.partition(".")
    kind, _, number = stem.rpartition("-")
    if not number.isdigit():
        return None
    if kind in ("chunk", "sizes") and ext == "json":
        return int(number)
    if kind == "" and ext == settings["image_format"] and 0 < int(number) <= settings["num_images"]:
        return (int(number) - 1) // settings["chunk_size"]
    return None


@contextlib.contextmanager
def run_lock(out_dir: Path, shard: tuple[int, int] = (0, 1), action: str = "occsynth generate") -> Iterator[None]:
    """Hold OUT while one run writes it, so that a second run of the same work fails at once.

    A run's start removes the temporaries it finds as stale, and would delete a live run's files
    (a batch scheduler may start a task again while the first attempt still runs). Shards of one
    set may write OUT together: each holds ``parts/.lock`` and ``parts/.lock-of-N`` shared and its
    own ``parts/.lock-shard-I-of-N`` exclusively (it names the holder); shards of another split
    (another N) are refused, as their chunks overlap. An unsharded run or a merge holds
    ``parts/.lock`` exclusively (:func:`occsynth.atomic.run_lock_file`) and, once it has finished, removes the
    shard lock files: no shard can be running. One that fails leaves them, as they name the shards' split
    (:func:`shard_counts`) for the next merge's message. Advisory ``flock`` locks: the kernel drops them when
    the process dies (kill -9 too). Where ``fcntl`` is missing (Windows) or the file system has no locks, a run
    goes on without them (with a warning).
    """
    parts = Path(out_dir) / PARTS
    make_folder(parts)
    index, count = shard

    def refuse(what: str) -> OccsynthError:
        return OccsynthError(f"{out_dir} is being written by another occsynth process: {what} is running there; "
                             f"wait for it to finish or stop it, then run {action} again")

    if count == 1:
        # the exclusive holder (an unsharded run or a merge) names itself there; shards leave it empty
        with run_lock_file(parts / LOCK_FILE, lambda holder: refuse(f"an unsharded run or a merge ({holder})"
                                                                    if holder else "a shard of this set")) as held:
            yield
            if held:
                for stale in [*parts.glob(f"{LOCK_FILE}-shard-*"), *parts.glob(f"{LOCK_FILE}-of-*")]:
                    stale.unlink()  # no shard runs now: their lock files name processes that are gone
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    shard_file = parts / f"{LOCK_FILE}-shard-{index}-of-{count}"

    def take(path: Path, mode: int):
        return held.enter_context(lock_file_now(path, mode))

    with contextlib.ExitStack() as held:
        try:
            try:
                main = take(parts / LOCK_FILE, fcntl.LOCK_SH)
            except BlockingIOError:
                holder = lock_holder(parts / LOCK_FILE)
                raise refuse(f"an unsharded run or a merge ({holder})" if holder else
                             "an unsharded run or a merge") from None
            main.truncate(0)  # a killed exclusive holder's name: stale now that shards hold the lock
            try:
                take(parts / f"{LOCK_FILE}-of-{count}", fcntl.LOCK_SH)
            except BlockingIOError:  # a shard of another split is looking whether this one runs
                raise refuse("a shard of another split (another n)") from None
            for other in parts.glob(f"{LOCK_FILE}-of-*"):
                if other.name != f"{LOCK_FILE}-of-{count}" and not _free(other, fcntl):
                    raise refuse(f"a shard of another split (n = {other.name.rpartition('-')[2]}, "
                                 f"whose chunks overlap those of shard {index}/{count})")
            try:
                f = take(shard_file, fcntl.LOCK_EX)
            except BlockingIOError:
                # only the holder of a shard's lock writes to its file: the text names that holder
                raise refuse(f"shard {index}/{count} ({lock_holder(shard_file) or 'unknown process'})") from None
            name_lock_holder(f, held)
        except OSError as exc:
            lock_failed(exc, parts)  # a lock file that cannot be opened is named; no locks here: a warning
            held.close()
        yield


def shard_counts(folder: Path) -> set[int]:
    """The n of the ``--shard i/n`` runs that wrote ``folder``, from their lock files (``.lock-of-N``), so that a
    merge missing chunks can name their shards; a run's settings hold no split, as every split makes the same set."""
    counts = (p.name.rpartition("-")[2] for p in (Path(folder) / PARTS).glob(f"{LOCK_FILE}-of-*"))
    return {int(n) for n in counts if n.isdigit() and int(n) > 0}


def _free(path: Path, fcntl) -> bool:
    """Whether nobody holds a lock on ``path`` (tried exclusively and let go at once)."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def part_path(out_dir: Path, chunk: int) -> Path:
    return Path(out_dir) / PARTS / f"chunk-{chunk:06d}.json"


def sizes_path(out_dir: Path, chunk: int) -> Path:
    return Path(out_dir) / PARTS / f"sizes-{chunk:06d}.json"


def chunk_done(out_dir: Path, chunk: int) -> bool:
    """A chunk is done when its part exists and its images are on disk with the sizes written.

    So a resume re-renders a chunk whose image was deleted or truncated after the fact. A sizes file
    naming anything but plain file names (e.g. ``../x``) proves nothing: its chunk is rendered again.
    """
    if not part_path(out_dir, chunk).exists():
        return False
    try:
        with open(sizes_path(out_dir, chunk), "rb") as f:
            sizes = json.load(f)
        images = Path(out_dir) / IMAGES
        return all(_plain_file_name(name) and (images / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, AttributeError):
        return False


def _plain_file_name(name: str) -> bool:
    """A name of a file inside one folder: no folder part, not '.' or '..'."""
    return name not in ("", ".", "..") and Path(name).name == name


def encode_part(chunk: int, images: list[dict], annotations: list[list[dict]], skips: SkipLog) -> str:
    """One chunk's records as the part file's text. ``annotations[j]`` are image j's; occluders are
    local indices (ids are given at merge)."""
    return _dumps({"chunk": chunk, "images": images, "annotations": annotations, "skips": skips.to_dict()})


def write_part(out_dir: Path, chunk: int, part: str, sizes: dict[str, int]) -> None:
    """Record a chunk as done, once its images are on disk: ``sizes`` (file name -> bytes written),
    then the part (:func:`encode_part`).

    The sizes file is a check (:func:`chunk_done`), not data: it is not fsynced, and if a power cut
    loses it, its chunk is rendered again. The part is written durably, after it.
    """
    out_dir = Path(out_dir)
    write_json(sizes_path(out_dir, chunk), sizes, durable=False)
    with open_atomic(part_path(out_dir, chunk), "w") as f:
        f.write(part)


class DamagedPart(OccsynthError):
    """A part file that cannot be read or is not what occsynth writes (a disk fault, an edit)."""

    def __init__(self, path: Path, why: str, redo: str = "run the same command again to redo that chunk"):
        super().__init__(f"{path}: damaged part file ({why}); delete it and {redo}")
        self.path, self.why, self.redo = Path(path), why, redo

    def __reduce__(self):  # pickled from a worker process: rebuilt from its arguments, not its text
        return type(self), (self.path, self.why, self.redo)


def read_part(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            part = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DamagedPart(path, str(exc)) from None
    if not (isinstance(part, dict) and isinstance(part.get("images"), list)
            and isinstance(part.get("annotations"), list) and isinstance(part.get("skips"), dict)):
        raise DamagedPart(path, "not an object with images, annotations and skips")
    return part


def as_stored(run: dict) -> dict:
    """A run's settings as they come back from run.json (tuples become lists)."""
    return json.loads(json.dumps(run))


def merged_run(out_dir: Path) -> dict | None:
    """The run settings of a finished (merged) set in ``out_dir``, or None when it is not one."""
    out_dir = Path(out_dir)
    if not ((out_dir / ANNOTATIONS_FILE).is_file() and (out_dir / MANIFEST_FILE).is_file()):
        return None
    try:
        return read_json(out_dir / PARTS / RUN_FILE)
    except (OSError, OccsynthError):
        return None


def check_run_settings(out_dir: Path, settings: dict,
                       hint: str = "use the same arguments to resume, or another out_dir/--out",
                       image_root: str | os.PathLike | None = None, demo: bool = False,
                       replace_unrendered: bool = False) -> str | None:
    """Record the run's settings (and ``image_root``, the folder its source images are read from: only for
    messages), or refuse to continue a run made with different ones; with ``image_root``, other source images
    (``source.images``, :func:`occsynth.bank.images_fingerprint`) are refused in their own words. ``demo``:
    ``image_root`` is the embedded demo source's, read as no --ann and --images were given.
    ``replace_unrendered`` (a caller holding OUT alone: an unsharded run): a run that finished no chunk there (one
    that --strict stopped at a bad record, to be fixed in the source) is replaced, not refused: the images of its
    unfinished chunk are removed, and the settings that differed are returned (``changed_settings``; else None), so
    that the user hears of it."""
    path = Path(out_dir) / PARTS / RUN_FILE
    settings = as_stored(settings)
    previous = read_run(path) if path.exists() else None
    replaced = None
    if previous is not None and previous != settings and replace_unrendered and no_chunk_finished(out_dir):
        _remove_unfinished_images(out_dir, previous)  # this run takes its place
        # and its source's categories and bank counts, which a run writes only where there are none
        (Path(out_dir) / PARTS / SOURCE_FILE).unlink(missing_ok=True)
        replaced, previous = changed_settings(previous, settings), None
    elif previous is None:
        refuse_foreign_files(out_dir)
        if path.exists():  # recorded meanwhile by a run beside this one (a shard of a set, started at the same moment)
            previous = read_run(path)
    if previous is not None:
        if previous != settings:
            if image_root is not None and _other_images(previous, settings):
                raise _other_images_refused(Path(out_dir), previous, settings, image_root, demo)
            if previous.get("renderer") != settings.get("renderer"):  # no argument can make the same images
                hint = "finish it with the occsynth version that began it, or use another out_dir/--out"
            elif _images_of(previous) is None and _images_of(settings) is not None:
                also = changed_settings(_images_left_out(previous), _images_left_out(settings))
                raise OccsynthError(f"{out_dir} holds a run begun by an occsynth that did not record which source images "
                                    f"it read (occsynth {previous.get('version', '?')}), so this one cannot tell whether "
                                    "the chunks left would be rendered from the same pixels"
                                    + (f" (and other settings differ: {also})" if also else "")
                                    + "; finish it with the occsynth version that began it, or use another "
                                      "out_dir/--out")
            raise OccsynthError(f"{out_dir} holds a run made with other settings ({changed_settings(previous, settings)}); "
                                f"{hint}")
    else:
        write_json(path, settings, indent=2)
        if image_root is not None:  # after run.json: before it, parts/ holds nothing a rerun would call foreign
            write_json(Path(out_dir) / PARTS / IMAGE_ROOT_FILE,
                       {"image_root": str(Path(image_root).resolve()), **({"demo": True} if demo else {})},
                       durable=False)
    return replaced


def no_chunk_finished(out_dir: Path) -> bool:
    """Whether OUT holds no chunk's part or sizes file: a run stopped before it finished one, whose records another
    run may replace losing nothing (a shard folder a merge emptied did finish its chunks)."""
    parts = Path(out_dir) / PARTS
    return not (any(parts.glob("chunk-*.json")) or any(parts.glob("sizes-*.json"))
                or (parts / MERGED_INTO_FILE).exists())


def _remove_unfinished_images(out_dir: Path, run: dict) -> None:
    """Remove the images ``run`` wrote of chunks it did not finish, before another run replaces it: left, they would
    be foreign to that run, or mixed into its set. Only names of ``run``'s images are touched."""
    images = Path(out_dir) / IMAGES
    if images.is_dir():
        for name in list(_visible(images)):
            if chunk_of_file(name, run["settings"]) is not None:
                (images / name).unlink(missing_ok=True)


def _images_of(run: dict):
    """A run's fingerprint of its source images (``source.images``), None in a run.json written without one."""
    source = run.get("source")
    return source.get("images") if isinstance(source, dict) else None


def _other_images(run: dict, other: dict) -> bool:
    """Whether two runs read other source images (both recorded theirs, and they differ)."""
    mine, theirs = _images_of(run), _images_of(other)
    return mine is not None and theirs is not None and mine != theirs


def image_root_of(folder: Path) -> str | None:
    """The folder a run in ``folder`` read its source images from (its ``parts/image-root.json``), or None: none
    is recorded there, or the file is unreadable (it only ever informs a message)."""
    root = _image_root_record(folder).get("image_root")
    return root if isinstance(root, str) else None


def _begun_from_demo(folder: Path) -> bool:
    """Whether the run in ``folder`` read the embedded demo source by default (no --ann and --images given)."""
    return _image_root_record(folder).get("demo") is True


def _image_root_record(folder: Path) -> dict:
    """``parts/image-root.json`` of ``folder``; {} where it is missing or unreadable (it only informs messages)."""
    try:
        record = read_json(Path(folder) / PARTS / IMAGE_ROOT_FILE)
    except (OSError, OccsynthError):
        return {}
    return record if isinstance(record, dict) else {}


def _other_images_refused(out_dir: Path, previous: dict, settings: dict, image_root, demo: bool) -> OccsynthError:
    """The refusal of a rerun whose --images holds other files than the run began with (see check_run_settings).
    The demo source, read by default (``demo`` now; ``"demo"`` in image-root.json for the run begun), is named as
    such, not as an --images the user never gave; a resume away from it needs --ann too (--images alone is
    refused), and one back to it neither."""
    old_root, new_root = image_root_of(out_dir), str(Path(image_root).resolve())
    also = changed_settings(_images_left_out(previous), _images_left_out(settings))
    also = f" (other settings differ too: {also})" if also else ""
    if old_root == new_root:
        return OccsynthError(f"the source images under {new_root} changed since {out_dir} was begun ({SAMPLED}): the "
                             f"chunks rendered now would mix other pixels into the set{also}; put the files back as "
                             "they were, or use another out_dir/--out")
    now = _demo_source(new_root) if demo else f"image_root/--images {new_root}"
    if _begun_from_demo(out_dir):  # not "--images <cache>/demo-v1/images", a folder the user never named
        begun = _demo_source(old_root)
        resume = "without ann_path/--ann and image_root/--images (the embedded demo source)"
        if demo:  # both read it by default: from other cache folders, whose demo sources differ
            resume += " and with the --cache-dir it was begun with (the one holding the images above)"
    else:
        begun = f"the source images under {old_root}" if old_root else "other source images"
        images = f"image_root/--images {old_root}" if old_root else "the image_root/--images it was begun with"
        if demo:  # this rerun gave neither: resuming needs --ann as well as --images (--images alone is refused)
            source = previous.get("source")
            ann = source.get("annotations") if isinstance(source, dict) else None
            # a run records the file's name alone: "(annotations.json)" read as a path relative to the current folder
            ann = "the ann_path/--ann it was begun with" + (f" (a file named {ann})" if isinstance(ann, str) else "")
            images = (f"{ann} and image_root/--images {old_root}" if old_root
                      else "the ann_path/--ann and image_root/--images it was begun with")
        resume = f"with {images} (or the same files moved or copied)"
    return OccsynthError(f"{out_dir} was begun with {begun}, and {now} holds other files ({SAMPLED}): "
                         f"the chunks rendered now would mix other pixels into the set{also}; resume {resume}, or "
                         "use another out_dir/--out")


def _demo_source(image_root: str | None) -> str:
    """A message's words for the embedded demo source, read by default (the user named no folder of it)."""
    where = f", its images under {image_root}" if image_root else ""
    return f"the embedded demo source (the default without ann_path/--ann and image_root/--images{where})"


SAMPLED = "source images sampled there differ in size or bytes, or are missing"


def _images_left_out(run: dict) -> dict:
    """``run`` without its source images' fingerprint, to compare the rest."""
    source = run.get("source")
    return {**run, "source": {k: v for k, v in source.items() if k != "images"}} if isinstance(source, dict) else run


def read_run(path: Path) -> dict:
    """A run's settings file (``parts/run.json``), checked for what resume and merge take from it: an edited or
    damaged one is an OccsynthError naming it (it was a traceback, or a comparison with an empty run)."""
    run = _read_json(path)
    settings = run.get("settings") if isinstance(run, dict) else None
    if not (isinstance(settings, dict) and all(_is_count(settings.get(k)) for k in ("num_images", "chunk_size"))
            and isinstance(settings.get("image_format"), str)):
        raise OccsynthError(f"{path}: damaged run settings file (not an object whose 'settings' hold num_images, "
                            "chunk_size and image_format): the chunks beside it cannot be matched to their settings; "
                            "render them again with the same arguments and another out_dir/--out")
    return run


def _is_count(value) -> bool:
    return is_int(value) and value >= 1


def refuse_foreign_files(out_dir: Path, most: int = 5) -> None:
    """Refuse an OUT that holds files no occsynth run wrote: a run starting there would overwrite them (its
    image names are 12-digit, as COCO's own are) or mix them into the set. Before a run records its
    settings, ``images/`` and ``parts/`` hold nothing but hidden lock files."""
    out_dir = Path(out_dir)
    if (out_dir / PARTS / RUN_FILE).exists() or not out_dir.is_dir():
        return
    foreign = sorted(itertools.islice(_visible(out_dir, exclude=(PARTS, IMAGES)), most))
    for sub in (PARTS, IMAGES):
        folder = out_dir / sub
        if folder.is_dir():
            foreign += sorted(f"{sub}/{name}" for name in itertools.islice(_visible(folder), most))
        elif folder.exists() or folder.is_symlink():
            foreign.append(sub)
    # a run's first file is run.json: one there now was written meanwhile by a run beside this one (another shard
    # of the set, started at the same moment), whose files these may be
    if foreign and not (out_dir / PARTS / RUN_FILE).exists():
        raise OccsynthError(f"{out_dir} already holds files that no occsynth run wrote ({', '.join(foreign[:most])}); "
                            "choose a new or empty out_dir/--out (nothing was changed)")


def _visible(folder: Path, exclude: tuple[str, ...] = ()) -> Iterator[str]:
    """Names in ``folder`` that are not hidden (dot files: locks, temporaries) nor in ``exclude``."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.name not in exclude:
                yield entry.name


def changed_settings(old: dict, new: dict, most: int = 6) -> str:
    """'key: old -> new' for each setting that differs (nested keys dotted), the first ``most`` of them;
    a different renderer (generate.RENDERER, '-' before it was recorded) is said in words first."""
    old, new = _flatten(old), _flatten(new)
    changed = [f"{k}: {old.get(k, '-')} -> {new.get(k, '-')}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)]
    if old.get("renderer") != new.get("renderer"):
        changed.insert(0, "made by another occsynth renderer, whose images differ for the same arguments")
    return "; ".join(changed[:most])


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def part_files(dirs: Iterable[Path], num_chunks: int) -> list[Path]:
    """The part of every chunk 0..num_chunks-1, looked up across ``dirs``; error naming the missing ones."""
    found, missing = [], []
    for chunk in range(num_chunks):
        for d in dirs:
            p = part_path(d, chunk)
            if p.exists():
                found.append(p)
                break
        else:
            missing.append(chunk)
    if missing:
        raise MissingChunks(missing)
    return found


def parts_in_chunk_order(out_dir: Path, num_chunks: int, done: Iterable[int],
                         finished: Iterable[int]) -> Iterator[Path]:
    """The parts of chunks 0..num_chunks-1 in order, each as soon as it and every chunk before it is
    done: ``done`` chunks are done already, ``finished`` yields the others as they finish.

    So :func:`merge_parts` streams a run's parts while its workers are still rendering the later chunks.
    """
    ready, next_chunk = set(done), 0
    for chunk in itertools.chain([None], finished):  # None: first yield the chunks done before
        if chunk is not None:
            ready.add(chunk)
        while next_chunk < num_chunks and next_chunk in ready:
            yield part_path(out_dir, next_chunk)
            next_chunk += 1
    if next_chunk < num_chunks:
        raise MissingChunks([c for c in range(next_chunk, num_chunks) if c not in ready])


class MissingChunks(OccsynthError):
    """Chunks no folder searched holds; a merge says whose they are (:func:`_missing_in_merge`)."""

    def __init__(self, missing: list[int]):
        super().__init__(f"{plural(len(missing), 'chunk')} not generated yet ({first_few(missing, 10)}); run the "
                         "missing shards first (shard i/n renders chunks i, i + n, i + 2n, ...)")
        self.missing = missing


def _missing_in_merge(missing: list[int], shard_dirs: list[Path], dirs: list[Path]) -> str:
    """Why a merge lacks chunks: their shards (i/n, where the folders' lock files name one n) have not run or
    finished, or their folders were not given; the folders given are named, as a forgotten one is the likelier
    cause (the message said to run the shards, by chunk number)."""
    counts = set().union(*(shard_counts(d) for d in dirs))
    rule = "shard i/n renders chunks i, i + n, i + 2n, ..."
    text = (f"{'chunk' if len(missing) == 1 else 'chunks'} {first_few(missing)} {'is' if len(missing) == 1 else 'are'} "
            "in none of the folders given")  # the numbers beside "folders given" read as a count of folders
    if len(counts) == 1:  # one split: the shards are known
        n = counts.pop()
        shards = [f"{i}/{n}" for i in sorted({chunk % n for chunk in missing})]
        one = len(shards) == 1
        text += f", of {'shard' if one else 'shards'} {first_few(shards)} ({rule}): " \
                + ("that shard has" if one else "those shards have")
    else:  # no split recorded (folders copied without their dot files), or several
        one = len(missing) == 1
        text += f": {'the shard that renders it' if one else 'the shards that render them'} ({rule}) " \
                + ("has" if one else "have")
    return (f"{text} not run (or not finished), or {'its folder was' if one else 'their folders were'} not given to "
            f"merge (given: {first_few([str(d) for d in shard_dirs])})")


def merge_parts(parts: Iterable[Path], out_dir: Path, categories: list[dict], info: dict) -> dict:
    """Stream the parts (in chunk order) into OUT/annotations.json; returns counts and the skip summary.

    Counts: images, annotations, pasted (layer > 0), occluded (annotations with an occluder) and
    pasted_occluded, pasted_per_category. Annotation ids run from 1 in image order; each part's local
    occluder indices become ids. One
    pass: each part is parsed once, its images go to the output and its annotations to an
    unnamed temporary file appended after them. Memory holds one part at a time.
    """
    out_dir = Path(out_dir)
    counts = {"images": 0, "annotations": 0, "pasted": 0, "occluded": 0, "pasted_occluded": 0}
    pasted_per_category: Counter = Counter()
    skips = SkipLog()
    next_id = 1
    with open_atomic(out_dir / ANNOTATIONS_FILE, "w") as f, \
            tempfile.TemporaryFile("w+", encoding="utf-8", dir=out_dir) as annotations:
        f.write('{"info":' + _dumps(info) + ',"licenses":[],"categories":' + _dumps(categories) + ',"images":[')
        for path in parts:
            part = read_part(path)
            try:  # a part occsynth wrote never fails here; an edited or damaged one is named, not a traceback
                skips.merge(part["skips"])
                records = []
                for image_anns in part["annotations"]:
                    ids = range(next_id, next_id + len(image_anns))
                    for local, ann in enumerate(image_anns):
                        if not all(type(j) is int and 0 <= j < len(ids) for j in ann["occluders"]):
                            raise IndexError(f"occluders {ann['occluders']} are not indices of the image's "
                                             f"{len(ids)} annotations")  # ids[-1] would name a wrong one
                        records.append({"id": ids[local], **{k: v for k, v in ann.items() if k != "occluders"},
                                        "occluder_ids": [ids[j] for j in ann["occluders"]]})
                        occluded = bool(ann["occluders"])
                        counts["occluded"] += occluded
                        if ann["layer"] > 0:
                            counts["pasted"] += 1
                            counts["pasted_occluded"] += occluded
                            pasted_per_category[ann["category_id"]] += 1
                    next_id += len(image_anns)
            except (KeyError, TypeError, AttributeError, IndexError) as exc:
                raise DamagedPart(path, f"a record is not what occsynth writes: {type(exc).__name__} {exc}") from None
            if part["images"]:  # one dumps per part: the C encoder, not a Python call per record
                f.write(("," if counts["images"] else "") + _dumps(part["images"])[1:-1])
                counts["images"] += len(part["images"])
            if records:
                annotations.write(("," if records[0]["id"] > 1 else "") + _dumps(records)[1:-1])
        f.write('],"annotations":[')
        annotations.seek(0)
        shutil.copyfileobj(annotations, f, 1 << 20)
        f.write("]}")
    counts["annotations"] = next_id - 1
    counts["pasted_per_category"] = {str(k): v for k, v in sorted(pasted_per_category.items())}
    return {"counts": counts, "skipped": skips.to_dict()}


def write_source_summary(out_dir: Path, categories: list[dict], bank_summary: dict) -> None:
    """Categories and bank counts of the source, kept beside the parts so merge needs no bank."""
    path = Path(out_dir) / PARTS / SOURCE_FILE
    if not path.exists():
        write_json(path, {"categories": categories, "bank": bank_summary})


def finalize(out_dir: Path, run: dict, parts: Iterable[Path]) -> dict:
    """Merge the parts (every chunk's, in chunk order) into annotations.json and write manifest.json;
    returns the manifest."""
    out_dir = Path(out_dir)
    source = _read_json(out_dir / PARTS / SOURCE_FILE)
    if not (isinstance(source, dict) and isinstance(source.get("categories"), list) and "bank" in source):
        raise OccsynthError(f"{out_dir / PARTS / SOURCE_FILE}: damaged (not an object with categories and bank); "
                            "run the generate command of this set again to rewrite it")
    settings = run["settings"]
    info = {"description": "occsynth synthetic occlusion set", "version": run["version"],
            "seed": settings["seed"], "source": run["source"]}
    merged = merge_parts(parts, out_dir, source["categories"], info)
    manifest = {**run, "counts": merged["counts"], "skipped": merged["skipped"], "bank": source["bank"],
                "libraries": library_versions()}
    write_json(out_dir / MANIFEST_FILE, manifest, indent=2)
    return {"out": str(out_dir), "merged": True, **manifest}


def library_versions() -> dict[str, str]:
    """The versions of Python and of the libraries whose arithmetic the images and masks depend on, as the process
    that writes the manifest has them: the same arguments give the same bytes only with the same ones (OpenCV 4 and
    5 break exact ties of a mask's nearest-neighbour resize differently). Not compared on resume or merge."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import cv2
    import numpy

    try:
        pycocotools = version("pycocotools")
    except PackageNotFoundError:  # a build from source without metadata
        pycocotools = "unknown"
    return {"python": platform.python_version(), "numpy": numpy.__version__, "opencv": cv2.__version__,
            "pycocotools": pycocotools}


def merge_shards(out_dir: Path, shard_dirs: list[Path], progress: bool = True) -> dict:
    """Move shard outputs (same run settings) into ``out_dir`` and finalize it.

    Shards may have written to ``out_dir`` itself (a shared file system) or to their own
    directories. Files are moved, so a merge interrupted half-way can simply be run again.
    """
    for d in shard_dirs:
        if (Path(d) / ANNOTATIONS_FILE).exists() and Path(d).resolve() != Path(out_dir).resolve():
            raise OccsynthError(f"{d}: a finished set (it has {ANNOTATIONS_FILE}), not a shard output; merge "
                                "moves a shard's images, which would break it (to copy a set, copy its folder)")
    runs = [read_run(Path(d) / PARTS / RUN_FILE) for d in shard_dirs]
    for d, other in zip(shard_dirs, runs):
        if _other_images(other, runs[0]):
            raise OccsynthError(f"{d} was generated from other source images than {shard_dirs[0]} (its images were "
                                f"read under {image_root_of(d) or 'a folder not recorded'}, those of {shard_dirs[0]} "
                                f"under {image_root_of(shard_dirs[0]) or 'a folder not recorded'}: {SAMPLED}); "
                                "shards of one set read the same images (the same files may lie in other folders): "
                                "render this shard again from those into a new out_dir/--out (one into "
                                f"{d} is refused, as its run was begun from other images) and merge that folder in "
                                f"place of {d}")
        if other != runs[0]:
            raise OccsynthError(f"{d} was generated with other settings than {shard_dirs[0]} "
                                f"({changed_settings(runs[0], other)}); shards of one set share every setting")
    run = runs[0]
    settings = run["settings"]
    num_chunks = -(-settings["num_images"] // settings["chunk_size"])
    dirs = [Path(out_dir)] + [Path(d) for d in shard_dirs]
    with contextlib.ExitStack() as held:  # no shard may still be writing, in OUT or in its own folder
        locked = set()  # _identity of each parts/ folder held
        for d in dirs:
            identity = _identity(d / PARTS)
            if identity is not None and identity not in locked:
                held.enter_context(run_lock(d, action="occsynth merge"))
                locked.add(identity)
        try:
            parts = part_files([d for d in dirs if (d / PARTS).is_dir()], num_chunks)
        except MissingChunks as exc:
            merged_into = {m for d in shard_dirs if (m := merged_into_of(d)) is not None}
            there = sorted(m for m in merged_into if Path(m).is_dir())
            moved = "an earlier `occsynth merge` moved chunks of these shard folders into "
            if there:  # an earlier merge moved chunks out of these folders: that is where the set is
                # (no advice to run shards: that merge found every chunk)
                raise OccsynthError(f"{moved}{', '.join(there)}, the merged set: the set is there (the folders "
                                    f"given lack {len(exc.missing):,} of its chunks: {first_few(exc.missing)})"
                                    ) from None
            if merged_into:  # that set was deleted or moved since: its chunks are gone from here
                raise OccsynthError(f"{moved}{', '.join(sorted(merged_into))}, which no longer exists (deleted or "
                                    f"moved): the folders given lack {len(exc.missing):,} of the set's chunks "
                                    f"({first_few(exc.missing)}); use the set where it was moved to, or render the "
                                    "shards again into these folders (each renders the chunks it lacks) and merge "
                                    "them") from None
            raise OccsynthError(_missing_in_merge(exc.missing, shard_dirs, dirs)) from None
        make_folder(out_dir)  # a new OUT is made only once every chunk is found
        if _identity(Path(out_dir) / PARTS) not in locked:
            refuse_foreign_files(out_dir)  # before the lock puts parts/ there
            held.enter_context(run_lock(out_dir, action="occsynth merge"))
        return _merge_held(out_dir, shard_dirs, run, parts, progress)


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, None when there is none: one folder may be named in several ways."""
    if not folder.is_dir():
        return None
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def _merge_held(out_dir: Path, shard_dirs: list[Path], run: dict, parts: list[Path], progress: bool) -> dict:
    """:func:`merge_shards` once OUT and the shard folders are held: move the shards' files in, then finalize."""
    settings = run["settings"]
    num_chunks = len(parts)
    check_run_settings(out_dir, run, hint="merge these shards into another out_dir/--out")
    remove_stale_temporaries(out_dir)  # every shard has finished: what is left is stale
    for name in (SOURCE_FILE, IMAGE_ROOT_FILE):
        if not (out_dir / PARTS / name).exists():
            src = next((Path(d) / PARTS / name for d in shard_dirs if (Path(d) / PARTS / name).exists()), None)
            if src is not None:  # no source.json: finalize names it missing
                write_json(out_dir / PARTS / name, _read_json(src), durable=name == SOURCE_FILE)
    for chunk, part in enumerate(tqdm(parts, desc="merge", unit="chunk", disable=not progress)):  # chunk order
        src_dir = part.parent.parent
        if src_dir.resolve() == Path(out_dir).resolve():
            # a chunk a shard wrote into --out itself: nothing to move, but its images must be there too (as a
            # shard folder's are checked below), or the merged set would lack them
            for name in chunk_image_names(settings, chunk):
                if not (out_dir / IMAGES / name).exists():
                    raise OccsynthError(f"{out_dir / IMAGES / name}: image of {part} is missing; run the shard that "
                                        f"renders chunk {chunk} again with out_dir/--out {out_dir} (shard i/n renders "
                                        "chunks i, i + n, i + 2n, ...), then merge again")
            continue
        for name in chunk_image_names(settings, chunk):  # fixed by the settings: no file needs parsing
            dst, src = out_dir / IMAGES / name, src_dir / IMAGES / name
            if not dst.exists():
                if not src.exists():
                    raise OccsynthError(f"{src}: image of {part} is missing; run that shard again")
                move_file(src, dst)
        sizes = sizes_path(src_dir, chunk)
        if sizes.exists():
            move_file(sizes, sizes_path(out_dir, chunk))
        move_file(part, out_dir / PARTS / part.name)
        marker = src_dir / PARTS / MERGED_INTO_FILE
        if not marker.exists():
            write_json(marker, {"out": str(Path(out_dir).resolve())}, durable=False)
    try:
        report = finalize(out_dir, run, part_files([out_dir], num_chunks))
    except DamagedPart as exc:  # its chunk is in OUT now: a generate there (any shard of it) renders it again
        raise DamagedPart(exc.path, exc.why, f"render its chunk again in {out_dir}: run `occsynth generate` with "
                          f"this set's arguments and --out {out_dir} (or that chunk's shard), then merge again") \
            from None
    # chunks --out already had are not taken from a shard folder: say so, or a user may think it emptied
    out_parts = _identity(Path(out_dir) / PARTS)
    left = {str(d): n for d in shard_dirs if _identity(Path(d) / PARTS) != out_parts
            and (n := len(list((Path(d) / PARTS).glob("chunk-*.json"))))}
    if left:
        report["left_in_shard_dirs"] = left
    return report


def _read_json(path: Path):
    if not Path(path).exists():
        raise OccsynthError(f"{path}: not found - is this an occsynth generate output directory?")
    return read_json(path)


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def move_file(src: Path, dst: Path, *, locked: bool = False) -> None:
    """Move a finished file into place (an atomic copy when crossing file systems). ``locked``: the copy's temporary
    is locked while written, for a folder that a sweep of orphaned temporaries (:func:`remove_orphaned_temporaries`)
    may visit meanwhile (predict's pictures/); a merge's folders are held by its run lock, and take no lock a file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:
        with open(src, "rb") as f, open_atomic(dst, "wb", locked=locked) as g:
            g.write(f.read())
        os.unlink(src)
