"""`occsynth cache`: what a cache folder holds, what is stale, and removing entries without half-deleted leftovers."""
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.occsynth_cli import main as occsynth_main
from occsynth import atomic
from occsynth.atomic import LOCK_FILE, hold_lock
from occsynth.bank import (STORE_NAME, Bank, BankOptions, CutoutPixels, ensure_bank, ensure_cutout_pixels,
                           pixel_store_bytes, pixels_key)
from occsynth.cache import cache_entries, remove_cache_entries
from occsynth.errors import OccsynthError


def tree_bytes(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture
def cache(demo_source, tmp_path):
    """A cache with two banks of the demo source, a pixel store over its images and one over a copy since deleted."""
    ann, root = demo_source
    cache = tmp_path / "cache"
    bank = ensure_bank(ann, cache, BankOptions(), progress=False)
    other = ensure_bank(ann, cache, BankOptions(min_area=20), progress=False)
    store = ensure_cutout_pixels(bank, root, cache, progress=False)
    copy = tmp_path / "copy-of-images"
    shutil.copytree(root, copy)
    gone = ensure_cutout_pixels(bank, copy, cache, progress=False)
    shutil.rmtree(copy)
    return cache, {"bank": bank, "other": other, "store": store, "gone": gone}


def test_entries_name_kind_size_source_and_what_is_stale(cache):
    cache_dir, made = cache
    entries = {e["name"]: e for e in cache_entries(cache_dir)}
    assert set(entries) == {p.name for p in made.values()}   # no demo-v1 here: the demo source lives elsewhere
    for key, path in made.items():
        e = entries[path.name]
        assert e["kind"] == ("bank" if key in ("bank", "other") else "pixel store")
        assert e["path"] == str(path) and e["bytes"] == tree_bytes(path) > 0
    source = Path(entries[made["bank"].name]["source"])  # the file it was built from, in full
    assert source.is_absolute() and source.name == "annotations.json" and source.is_file()
    assert entries[made["store"].name]["notes"] == [] and entries[made["bank"].name]["notes"] == []
    assert entries[made["gone"].name]["notes"] == ["its image root is gone"]
    (cache_dir / "demo-v1" / "images").mkdir(parents=True)
    (cache_dir / "demo-v1" / "annotations.json").write_text('{"images":[]}')  # no images: nothing missing
    demo = cache_entries(cache_dir)[-1]
    assert (demo["kind"], demo["name"], demo["bytes"], demo["notes"]) == ("demo source", "demo-v1", 13, [])


def test_removing_checks_every_name_first_and_leaves_nothing_half_deleted(cache):
    cache_dir, made = cache
    with pytest.raises(OccsynthError, match="no cache entry named nope"):
        remove_cache_entries(cache_dir, [made["other"].name, "nope"])
    assert made["other"].is_dir()                              # nothing removed when one name is unknown
    assert remove_cache_entries(cache_dir, [made["other"].name]) == [made["other"]]
    assert not made["other"].exists() and made["bank"].is_dir()
    assert not [p for p in cache_dir.rglob("*") if ".removing-" in p.name]
    # an interrupted removal's leftover under this process's id does not block the next removal
    (cache_dir / "banks" / f".{made['bank'].name}.removing-{os.getpid()}" / "x").mkdir(parents=True)
    assert remove_cache_entries(cache_dir, [made["bank"].name]) == [made["bank"]]
    # a store whose bank was removed is still good: the same bank, rebuilt, has the same name and uses it
    assert {e["name"]: e["notes"] for e in cache_entries(cache_dir)}[made["store"].name] == []


def test_a_symlinked_entry_loses_its_link_only(cache, tmp_path):
    cache_dir, made = cache
    elsewhere = tmp_path / "big-disk" / made["store"].name
    elsewhere.parent.mkdir()
    shutil.move(made["store"], elsewhere)
    made["store"].symlink_to(elsewhere)
    entry = next(e for e in cache_entries(cache_dir) if e["name"] == made["store"].name)
    assert entry["kind"] == "pixel store" and entry["bytes"] == tree_bytes(elsewhere) > 0
    assert remove_cache_entries(cache_dir, [made["store"].name]) == [made["store"]]
    assert not made["store"].is_symlink() and (elsewhere / "meta.json").is_file()
    assert made["store"].name not in {e["name"] for e in cache_entries(cache_dir)}


def test_entries_no_run_can_use_are_stale(cache):
    cache_dir, made = cache
    meta = json.loads((made["other"] / "meta.json").read_text())
    (made["other"] / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    (made["store"] / "meta.json").write_text("{broken")
    notes = {e["name"]: e["notes"] for e in cache_entries(cache_dir)}
    assert notes[made["other"].name] == ["made by another version of occsynth: not used"]
    assert notes[made["store"].name] == ["no readable meta.json: runs using it fail until it is removed"]
    assert notes[made["bank"].name] == []


def test_an_unfinished_build_is_stale_only_once_it_has_not_changed_for_an_hour(cache):
    cache_dir, _ = cache
    leftover = cache_dir / "banks" / ".abc.tmp-123"
    leftover.mkdir()
    (leftover / "ann_id.npy").write_bytes(b"x" * 10)
    entry = next(e for e in cache_entries(cache_dir) if e["name"] == leftover.name)
    assert entry["kind"] == "unfinished" and entry["notes"] == []   # a build may be writing it now
    old = time.time() - 2 * 3600
    for p in (leftover / "ann_id.npy", leftover):
        os.utime(p, (old, old))
    entry = next(e for e in cache_entries(cache_dir) if e["name"] == leftover.name)
    assert entry["notes"] == ["left by a stopped run"]
    (cache_dir / ".demo-v1.tmp-xyz").mkdir()           # the demo source's build, at the top of the cache
    assert cache_entries(cache_dir)[-1]["name"] == ".demo-v1.tmp-xyz"


def test_cache_command_lists_and_removes_the_stale_entries(cache):
    cache_dir, made = cache
    listed = CliRunner().invoke(occsynth_main, ["cache", "--cache-dir", str(cache_dir)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith(f"cache {cache_dir}: 4 entries, ")
    assert "[stale: its image root is gone]" in listed.output and made["store"].name in listed.output
    removed = CliRunner().invoke(occsynth_main, ["cache", "--cache-dir", str(cache_dir), "--remove-stale", "--json"])
    assert removed.exit_code == 0, removed.output
    report = json.loads(removed.output)
    assert report["removed"] == [str(made["gone"])]
    assert sorted(e["name"] for e in report["entries"]) == sorted(p.name for k, p in made.items() if k != "gone")
    plain = CliRunner().invoke(occsynth_main, ["cache", "--cache-dir", str(cache_dir), "--remove", made["other"].name])
    assert plain.output.splitlines()[0] == f"removed {made['other']}" and "3 entries" not in plain.output
    last = CliRunner().invoke(occsynth_main, ["cache", "--cache-dir", str(cache_dir), "--remove", made["store"].name])
    assert last.exit_code == 0 and last.output.splitlines()[1].startswith(f"cache {cache_dir}: 1 entry, "), last.output
    bad = CliRunner().invoke(occsynth_main, ["cache", "--cache-dir", str(cache_dir), "--remove", "nope"])
    assert bad.exit_code == 2 and "no cache entry named nope" in bad.output and "Traceback" not in bad.output


def test_damaged_banks_stores_and_demo_sources_are_stale_and_a_run_rebuilds_the_demo(cache, tmp_path, monkeypatch):
    cache_dir, made = cache
    import pickle

    from occsynth import demo
    (made["bank"] / "ann_id.npy").write_bytes(pickle.dumps([1, 2, 3]))      # a table that is not an array
    blob = made["store"] / "pixel_blob.bin"
    blob.write_bytes(blob.read_bytes()[:-10])                                # a truncated store
    ann, _ = demo.demo_source(cache_dir)
    ann.unlink()                                                             # the demo's marker deleted by hand
    notes = {e["name"]: e["notes"] for e in cache_entries(cache_dir)}
    assert notes[made["bank"].name][0].startswith("damaged (") and "ann_id.npy" in notes[made["bank"].name][0]
    assert notes[made["store"].name] == [f"damaged ({made['store']}: damaged cutout pixel store): "
                                         "runs using it fail until it is removed"]
    with pytest.raises(OccsynthError, match=r"pixel store; delete it to rebuild$"):  # what a run says: unchanged
        CutoutPixels.load(made["store"])
    assert notes[demo.DEMO_VERSION] == ["damaged (no annotations.json): the next run that needs it builds it again"]
    assert notes[made["other"].name] == []
    again, root = demo.demo_source(cache_dir)                                # rebuilt in place, not "Directory not empty"
    assert again == ann and ann.is_file() and len(list(root.rglob("*.jpg"))) == demo.NUM_IMAGES
    assert [p.name for p in cache_dir.iterdir() if p.name.startswith(".")] == []


def test_a_demo_source_missing_an_image_is_stale_and_the_next_run_rebuilds_it(tmp_path):
    from occsynth import demo
    ann, root = demo.demo_source(tmp_path / "c")
    files = sorted(root.rglob("*.jpg"))
    before = {p: p.read_bytes() for p in files}
    files[3].unlink()                                                        # deleted by hand
    files[5].write_bytes(b"")
    notes = {e["name"]: e["notes"] for e in cache_entries(tmp_path / "c")}
    assert notes[demo.DEMO_VERSION] == [f"damaged (2 image files missing or empty, e.g. "
                                        f"{files[3].relative_to(root).as_posix()}): the next run that needs it "
                                        "builds it again"]
    again, again_root = demo.demo_source(tmp_path / "c")
    assert (again, again_root) == (ann, root)
    assert {p: p.read_bytes() for p in sorted(root.rglob("*.jpg"))} == before  # the same set, whole again
    assert {e["name"]: e["notes"] for e in cache_entries(tmp_path / "c")}[demo.DEMO_VERSION] == []
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("entry, key, value", [
    ("bank", "source", "instances.json"), ("bank", "num_images", "abc"), ("bank", "num_images", None),
    ("bank", "options", {"min_area": "big"}), ("bank", "source", {"path": "instances.json"}),
    ("store", "image_root", 5), ("store", "num_annotations", "100"), ("store", "num_images_total", [24]),
    ("store", "bank", "abc"),
])
def test_a_meta_json_edited_by_hand_is_listed_as_stale_not_a_traceback(cache, demo_source, entry, key, value):
    cache_dir, made = cache
    demo_root = demo_source[1]
    path = made[entry] / "meta.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    res = CliRunner().invoke(occsynth_main, ["cache", "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0 and res.exception is None, res.output
    listed = {e["name"]: e for e in cache_entries(cache_dir)}[made[entry].name]
    if key != "image_root":  # a run cannot open it: stale, as a damaged entry
        assert listed["notes"] and listed["notes"][0].startswith("damaged ("), listed
        with pytest.raises(OccsynthError, match="delete it to rebuild"):
            (Bank.load if entry == "bank" else CutoutPixels.load)(made[entry])
    if entry == "bank":  # a bank's source hash and options key its pixel stores: a run failed with a TypeError
        with pytest.raises(OccsynthError, match="delete it to rebuild"):
            ensure_cutout_pixels(made["bank"], demo_root, cache_dir, progress=False)
    if key == "bank":  # checked against the bank it is opened for: a TypeError there
        with pytest.raises(OccsynthError, match="delete it to rebuild"):
            CutoutPixels.load(made[entry], Bank.load(made["bank"]))


def test_a_demo_source_listing_a_file_name_that_is_no_string_is_stale(tmp_path):
    from occsynth import demo
    ann, _ = demo.demo_source(tmp_path / "c")
    data = json.loads(ann.read_text())
    data["images"][0]["file_name"] = 5
    ann.write_text(json.dumps(data))
    notes = {e["name"]: e["notes"] for e in cache_entries(tmp_path / "c")}
    assert notes[demo.DEMO_VERSION] == ["damaged (annotations.json unreadable): the next run that needs it "
                                        "builds it again"]


def test_a_file_in_place_of_an_entry_is_removed_whole(cache):
    cache_dir, made = cache
    shutil.rmtree(made["other"])
    made["other"].write_bytes(b"x")                     # a bank's name, but a file (copied there by hand)
    stray = cache_dir / "banks" / f".{made['bank'].name}.tmp-abc"
    stray.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stray, (old, old))
    (cache_dir / "banks" / ".DS_Store").write_bytes(b"x")   # a file manager's: not occsynth's, not listed
    res = CliRunner().invoke(occsynth_main, ["cache", "--cache-dir", str(cache_dir), "--remove-stale"])
    assert res.exit_code == 0, res.output
    assert f"removed {made['other']}" in res.output and f"removed {stray}" in res.output
    assert sorted(p.name for p in (cache_dir / "banks").iterdir()) == [".DS_Store", made["bank"].name]


def test_a_link_to_a_missing_bank_is_listed_stale_and_can_be_removed(cache, tmp_path):
    cache_dir, made = cache
    link = cache_dir / "banks" / made["other"].name
    shutil.rmtree(link)
    link.symlink_to(tmp_path / "unmounted-disk" / "bank")   # moved or its disk gone: runs fail on it
    entry = {e["name"]: e for e in cache_entries(cache_dir)}[link.name]
    assert entry["notes"] and "missing" in entry["notes"][0]
    assert remove_cache_entries(cache_dir, [link.name]) == [link]
    assert not os.path.lexists(link)


def test_a_folder_that_is_no_cache_loses_nothing_to_remove_stale(tmp_path):
    folder = tmp_path / "work"                           # --cache-dir given a folder of the user's by mistake
    # the last: a bank's name and more (a copy made by hand): only names occsynth gives are its entries
    for sub in ("banks/2023-statements", "cutout-pixels/holiday", "banks/.git", "banks/0123456789abcdef-0123456789-old"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "keep.txt").write_text("mine")
    old = time.time() - 2 * 3600
    os.utime(folder / "banks" / ".git", (old, old))
    res = CliRunner().invoke(occsynth_main, ["cache", "--cache-dir", str(folder), "--remove-stale"])
    assert res.exit_code == 0 and "0 entries" in res.output, res.output
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("keep.txt")) == [
        "banks/.git/keep.txt", "banks/0123456789abcdef-0123456789-old/keep.txt", "banks/2023-statements/keep.txt",
        "cutout-pixels/holiday/keep.txt"]


# ---------------------------------------------------------------- what killed builds leave, and the next build

KILLED_STORE_BUILD = """
import sys, time
from occsynth import bank
real = bank._pixel_results
def paused(*args):
    for n, result in enumerate(real(*args)):
        yield result
        if n == 1:  # two images' crops are in the blob's temporary: wait there for kill -9
            print("building", flush=True)
            time.sleep(300)
bank._pixel_results = paused
bank.ensure_cutout_pixels(*sys.argv[1:4], progress=False)
"""


def kill_9_mid_store_build(bank_dir, root, cache_dir):
    """Start a pixel store's build in another process and kill -9 it once it is writing the store."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_STORE_BUILD, str(bank_dir), str(root), str(cache_dir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "building"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def test_the_next_build_removes_what_a_killed_pixel_store_build_left(demo_source, tmp_path):
    ann, root = demo_source
    cache_dir = tmp_path / "cache"
    bank_dir = ensure_bank(ann, cache_dir, BankOptions(), progress=False)
    pid = kill_9_mid_store_build(bank_dir, root, cache_dir)
    stores = cache_dir / "cutout-pixels"
    [left] = list(stores.iterdir())                  # the killed build's folder, with its blob's temporary in it
    assert left.name.startswith(".") and ".tmp-" in left.name
    assert (left / LOCK_FILE).read_text() == f"pid {pid} on {socket.gethostname()}"  # the build named itself there
    assert [p.name for p in left.iterdir() if p.name.startswith(".pixel_blob.bin.tmp-")]
    [entry] = [e for e in cache_entries(cache_dir) if e["kind"] == "unfinished"]
    # its lock let go, and it ran on this host, where a lock probe sees every holder: stale at once
    assert entry["name"] == left.name and entry["notes"] == ["left by a stopped run"]
    store = ensure_cutout_pixels(bank_dir, root, cache_dir, progress=False)
    assert [p.name for p in stores.iterdir()] == [store.name]


def left_by_a_killed_build(folder, name, size=100, host=None):
    """What a build of entry ``name`` killed -9 leaves in ``folder``, as in the test above: its temporary folder,
    with the lock file that the kernel let go of, naming the build's process and host (default: this one), and what
    it had written."""
    tmp = folder / f".{name}.tmp-k1ll3d{size}"
    tmp.mkdir(parents=True)
    (tmp / LOCK_FILE).write_text(f"pid 4242 on {host or socket.gethostname()}")
    (tmp / ".pixel_blob.bin.tmp-4242-0badf00d").write_bytes(b"x" * size)
    return tmp


def unchanged_for_hours(folder, hours=2):
    """Date ``folder`` and everything in it ``hours`` back, as if nothing had written there since."""
    old = time.time() - hours * 3600
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (old, old))


def test_a_build_on_another_host_is_left_alone_until_it_has_stopped_changing(tmp_path):
    """Shards on several hosts may share one --cache-dir. Where locks do not reach other hosts (NFS mounted nolock
    or local_lock), another host's running build looks unlocked here, and was removed mid-build: only a build that
    named this host is known to have stopped once unlocked; another is stale once unchanged for an hour."""
    stores = tmp_path / "cutout-pixels"
    here = left_by_a_killed_build(stores, "a")
    elsewhere = left_by_a_killed_build(stores, "b", host="node-17")
    unnamed = left_by_a_killed_build(stores, "c")
    (unnamed / LOCK_FILE).write_text("")  # a build that has not named itself yet (or an older occsynth's)

    def notes():
        return {e["name"]: e["notes"] for e in cache_entries(tmp_path)}
    assert notes() == {here.name: ["left by a stopped run"], elsewhere.name: [], unnamed.name: []}
    assert atomic.remove_orphaned_builds(stores, re.compile("[abc]")) == 1
    assert sorted(p.name for p in stores.iterdir()) == sorted([elsewhere.name, unnamed.name])
    for folder in (elsewhere, unnamed):
        unchanged_for_hours(folder)
    assert notes() == {elsewhere.name: ["left by a stopped run"], unnamed.name: ["left by a stopped run"]}
    assert atomic.remove_orphaned_builds(stores, re.compile("[abc]")) == 2 and not any(stores.iterdir())


def test_another_hosts_build_whose_folder_is_old_but_whose_file_still_grows_is_not_stale(tmp_path):
    """Writing into a file leaves its folder's time as it was: a build appending to its blob for hours is judged by
    the times of its files too, not by its folder's alone."""
    stores = tmp_path / "cutout-pixels"
    running = left_by_a_killed_build(stores, "b", host="node-17")
    unchanged_for_hours(running)
    os.utime(running / ".pixel_blob.bin.tmp-4242-0badf00d")  # written just now
    assert [e["notes"] for e in cache_entries(tmp_path)] == [[]]
    assert atomic.remove_orphaned_builds(stores, re.compile("b")) == 0 and running.is_dir()


def test_a_running_build_is_never_stale_however_long_it_has_not_changed(tmp_path):
    """`occsynth cache --remove-stale` removed a build untouched for an hour even while its process held it."""
    running = left_by_a_killed_build(tmp_path / "banks", "a", host="node-17")
    unchanged_for_hours(running)                    # a long step that writes nothing
    with open(running / LOCK_FILE) as lock:         # held, as its build holds it
        assert hold_lock(lock)
        assert [e["notes"] for e in cache_entries(tmp_path)] == [[]]
        res = CliRunner().invoke(occsynth_main, ["cache", "--cache-dir", str(tmp_path), "--remove-stale"])
        assert res.exit_code == 0 and "stale" not in res.output, res.output
        assert (running / ".pixel_blob.bin.tmp-4242-0badf00d").is_file()


def open_paths():
    """The files this process has open (Linux: /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    found = set()
    for fd in os.listdir(fds):
        try:
            found.add(os.readlink(fds / fd))
        except OSError:
            pass
    return found


def test_builds_run_without_fcntl_where_an_open_file_cannot_be_removed(demo_source, tmp_path, monkeypatch):
    """Windows has no fcntl (hold_lock returns False) and refuses to remove a file still open: a build removed its
    temporary folder's lock file while it kept it open, so every cache build failed there."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to see which files are open")
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl: ImportError, as on Windows
    real = os.unlink

    def unlink_as_windows(path, *, dir_fd=None):  # a path relative to dir_fd (shutil.rmtree's) is not checked
        if dir_fd is None and os.path.realpath(path) in open_paths():
            raise PermissionError(errno.EACCES, "The process cannot access the file because it is being used by "
                                                "another process", str(path))
        return real(path, dir_fd=dir_fd)
    monkeypatch.setattr(os, "unlink", unlink_as_windows)
    monkeypatch.setattr(os, "remove", unlink_as_windows)
    ann, _ = demo_source
    bank_dir = ensure_bank(ann, tmp_path / "cache", BankOptions(), progress=False)
    assert (bank_dir / "meta.json").is_file() and not (bank_dir / LOCK_FILE).exists()
    assert [p.name for p in (tmp_path / "cache" / "banks").iterdir()] == [bank_dir.name]


def test_a_build_leaves_alone_what_builds_still_running_write(demo_source, tmp_path):
    ann, root = demo_source
    cache_dir = tmp_path / "cache"
    bank_dir = ensure_bank(ann, cache_dir, BankOptions(), progress=False)
    stores = cache_dir / "cutout-pixels"
    ours, other = pixels_key(Bank.load(bank_dir).meta, root), f"{bank_dir.name}-px{'0' * 12}"  # other: another root
    killed = [left_by_a_killed_build(stores, ours), left_by_a_killed_build(stores, other)]
    for state in ("damaged", "removing"):        # a discard of a damaged store, an `occsynth cache --remove`: killed
        (stores / f".{other}.{state}-4242-0badf00d" / "sub").mkdir(parents=True)
        (stores / f".{other}.{state}-4242-0badf00d" / "sub" / "pixel_blob.bin").write_bytes(b"x")
    running = stores / f".{ours}.tmp-running"     # another shard's build of the same store, started at once
    running.mkdir()
    (running / "pixel_blob.bin").write_bytes(b"y")
    unknown = stores / f".{other}.tmp-nolock"     # no lock file (an older occsynth's): whether it runs is unknown
    unknown.mkdir()
    foreign = stores / ".notes.tmp-1"             # no name occsynth gives: the user's, if --cache-dir is theirs
    foreign.mkdir()
    (foreign / LOCK_FILE).touch()
    kept = [running.name, unknown.name, foreign.name]
    with open(running / LOCK_FILE, "w") as lock:
        assert hold_lock(lock)
        lock.write(f"pid 4243 on {socket.gethostname()}")  # as a build names itself there
        lock.flush()
        store = ensure_cutout_pixels(bank_dir, root, cache_dir, progress=False)
        assert sorted(p.name for p in stores.iterdir()) == sorted([store.name, *kept])
        assert (running / "pixel_blob.bin").read_bytes() == b"y" and (running / LOCK_FILE).is_file()
        assert not any(p.exists() for p in killed)
    # its process gone (the kernel lets go of the lock, kill -9 too), the next run over the cache removes it,
    # the store being built already
    assert ensure_cutout_pixels(bank_dir, root, cache_dir, progress=False) == store
    assert sorted(p.name for p in stores.iterdir()) == sorted([store.name, unknown.name, foreign.name])


def test_the_room_check_counts_what_removing_a_killed_build_frees(demo_source, tmp_path, monkeypatch):
    ann, root = demo_source
    cache_dir = tmp_path / "cache"
    bank_dir = ensure_bank(ann, cache_dir, BankOptions(), progress=False)
    bank = Bank.load(bank_dir)
    needed = pixel_store_bytes(bank) + 8 * (bank.num_annotations + 1) + 16 * bank.num_images_total
    killed = left_by_a_killed_build(cache_dir / "cutout-pixels", pixels_key(bank.meta, root), size=needed)
    real = shutil.disk_usage                     # a disk the killed build filled: the store fits without its leftover
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=needed - killed.exists()))
    store = ensure_cutout_pixels(bank_dir, root, cache_dir, progress=False)
    assert not killed.exists() and (store / "meta.json").is_file()


def test_bank_and_demo_builds_remove_what_killed_ones_left(demo_source, tmp_path):
    from occsynth import demo
    ann, _ = demo_source
    cache_dir = tmp_path / "cache"
    bank_dir = ensure_bank(ann, cache_dir, BankOptions(), progress=False)
    killed = [left_by_a_killed_build(cache_dir / "banks", bank_dir.name),
              left_by_a_killed_build(cache_dir / "banks", f"{'0' * 16}-{'0' * 10}"),   # of another source
              left_by_a_killed_build(cache_dir, demo.DEMO_VERSION)]
    assert ensure_bank(ann, cache_dir, BankOptions(), progress=False) == bank_dir     # reused: swept all the same
    assert [p.name for p in (cache_dir / "banks").iterdir()] == [bank_dir.name]
    demo.demo_source(cache_dir)
    assert sorted(p.name for p in cache_dir.iterdir()) == ["banks", demo.DEMO_VERSION] and not killed[2].exists()


def test_a_removal_whose_folder_a_build_cleans_up_meanwhile_succeeds(cache, monkeypatch):
    """A build's clean-up removes an entry that `occsynth cache --remove` has just moved aside: not an error."""
    cache_dir, made = cache
    real, swept = shutil.rmtree, []

    def rmtree_after_a_clean_up(path, *args, **kwargs):
        if not swept:
            swept.append(path)
            assert atomic.remove_orphaned_builds(Path(path).parent, STORE_NAME) == 1
        return real(path, *args, **kwargs)
    monkeypatch.setattr(shutil, "rmtree", rmtree_after_a_clean_up)
    assert remove_cache_entries(cache_dir, [made["gone"].name]) == [made["gone"]]
    assert ".removing-" in Path(swept[0]).name and not os.path.lexists(swept[0])
    assert sorted(p.name for p in (cache_dir / "cutout-pixels").iterdir()) == [made["store"].name]
