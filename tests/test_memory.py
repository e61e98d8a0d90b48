"""Generation memory does not grow with the number of images written: the merge holds one part at a
time, and a worker's caches are bounded. Peaks are traced allocations (tracemalloc sees numpy's too)."""
import json
import tracemalloc

import numpy as np
import pytest

from occsynth import generate as generate_module, writer
from occsynth.errors import SkipLog
from occsynth.generate import RunSettings, generate


@pytest.fixture(autouse=True)
def not_traced_already():
    if tracemalloc.is_tracing():  # started by the user (-X tracemalloc): its readings would count everything
        pytest.skip("tracemalloc is already tracing")


def traced_peak(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def write_parts(out_dir, num_chunks: int, images_per_chunk: int = 16, anns_per_image: int = 8) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for chunk in range(num_chunks):
        images, annotations = [], []
        for j in range(images_per_chunk):
            index = chunk * images_per_chunk + j
            images.append({"id": index + 1, "file_name": f"{index:08d}.jpg", "height": 480, "width": 640})
            counts = "".join(chr(48 + int(v)) for v in rng.integers(0, 64, 2000))  # ~2 kB of RLE text
            annotations.append([{"image_id": index + 1, "category_id": 1, "segmentation": {"size": [480, 640],
                                 "counts": counts}, "area": 100, "bbox": [0, 0, 10, 10], "iscrowd": 0,
                                 "layer": k, "occluders": list(range(k + 1, anns_per_image))}
                                for k in range(anns_per_image)])
        writer.write_part(out_dir, chunk, writer.encode_part(chunk, images, annotations, SkipLog()), {})
        paths.append(writer.part_path(out_dir, chunk))
    return paths


def test_merge_holds_one_part_at_a_time(tmp_path):
    peaks = {}
    # from ~8 parts on, the peak is one part plus the 1 MB buffer that copies the annotations in;
    # 128 parts hold 33 MB of records: kept in memory, the peak would grow 8x
    for n in (16, 128):
        out = tmp_path / f"out-{n}"
        (out / writer.PARTS).mkdir(parents=True)
        parts = write_parts(out, n)
        peaks[n] = traced_peak(lambda: writer.merge_parts(parts, out, [{"id": 1, "name": "a"}], {}))
        data = json.loads((out / writer.ANNOTATIONS_FILE).read_text())
        assert len(data["images"]) == 16 * n and len(data["annotations"]) == 16 * 8 * n
        assert data["annotations"][-1]["occluder_ids"] == []
        assert data["annotations"][-8]["occluder_ids"] == list(range(16 * 8 * n - 6, 16 * 8 * n + 1))
    assert peaks[128] < 1.1 * peaks[16], peaks


def test_what_a_run_keeps_is_its_bounded_caches_not_its_images(demo_source, tmp_path):
    # what a run leaves allocated in the worker (here: this process) is its caches; once they are
    # full it stays flat however many images are written. (Peaks are not compared: the largest
    # single image's transient arrays set them, and a longer run meets a larger one.)
    ann, root = demo_source
    cache = tmp_path / "cache"
    generate(tmp_path / "warm", RunSettings(num_images=8, seed=1, chunk_size=8), ann_path=ann, image_root=root,
             cache_dir=cache, progress=False)  # bank, pixel store and imports: built before any tracing
    kept = {}
    for n in (128, 384):
        generate_module._sources.cache_clear()   # each run starts with empty worker caches
        generate_module._schedule.cache_clear()
        tracemalloc.start()
        try:
            generate(tmp_path / f"out-{n}", RunSettings(num_images=n, seed=2, chunk_size=8), ann_path=ann,
                     image_root=root, cache_dir=cache, progress=False)
            kept[n] = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert len(list((tmp_path / f"out-{n}" / "images").iterdir())) == n
    assert kept[384] < 1.05 * kept[128] + 100_000, kept
