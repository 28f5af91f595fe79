"""What keeps sharding fast (issue 17): no torch in the sharding path, a tar writer without
tarfile's per-member overhead, workers that start in milliseconds. Each check here guards a
cost measured in docs/BENCHMARKS.md; speed itself is measured by bench/shard_throughput.py."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

import hip.data as hd
from hip.data.labels import BUILTIN, label_encoder
from hip.data.shards import build_tar
from hip.task import get_task
from tests.test_data_shards import make_imagefolder
from tests.test_shard_partitions import files_of, manifest_json


def _tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """What Python's tarfile writes for `members` with build_tar's fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_sharding_forks_workers_and_never_imports_torch(shared_data, tmp_path):
    """A fresh single-threaded process (as `hip shard` is) forks its workers; neither it nor
    they load torch (5-7 s per worker before). The forked workers write the 1-process shards."""
    src = shared_data / "mnist_png_subset" / "train"
    code = (
        "import sys, hip.data as hd\n"
        "from hip.data.shards import worker_start_method\n"
        "assert worker_start_method() == 'fork'\n"
        f"for n in (1, 2): hd.shard('imagefolder', {str(src)!r}, {str(tmp_path)!r} + f'/w{{n}}', limit=20, max_count=50, workers=n)\n"
        "heavy = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'torchmetrics', 'webdataset'))\n"
        "print(heavy or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "none"
    assert hd.read_manifest(tmp_path / "w2").splits["train"].num_samples == 200
    assert manifest_json(tmp_path / "w2") == manifest_json(tmp_path / "w1")
    assert files_of(tmp_path / "w2") == files_of(tmp_path / "w1")


@pytest.mark.parametrize("task", sorted(BUILTIN))
def test_the_sharders_label_storage_is_the_task_types(task):
    """hip.data.labels encodes the built-in task types' labels without importing them."""
    registered = get_task(task)
    for key, label in [("a-1", 3), ("b_2", 0), ("c", [1, 4]), ("d", [])]:
        if task == "classification" and isinstance(label, list):
            continue
        if task == "multilabel" and not isinstance(label, list):
            continue
        assert label_encoder(task)(key, label) == registered.encode_label(key, label)


def test_a_task_type_of_its_own_stores_labels_its_own_way():
    assert label_encoder("mae") == get_task("mae").encode_label  # not built in: asks the task


@pytest.mark.parametrize(
    "names",
    [
        ["k.image.png", "k.cls", "k2.image.jpg", "k2.labels.json"],
        ["a" * 100, "b" * 101 + ".image.png", "x/y.png", "caf\u00e9.png"],  # pax headers
    ],
)
def test_build_tar_writes_what_tarfile_writes(names):
    sizes = [0, 1, 511, 512, 513, 4000]
    members = [(n, bytes(range(256)) * 20 * (sizes[i % 6] > 0)) for i, n in enumerate(names)]
    members = [(n, d[: sizes[i % 6]]) for i, (n, d) in enumerate(members)]
    assert build_tar(members) == _tarfile_bytes(members)
    assert build_tar([]) == _tarfile_bytes([])
    with tarfile.open(fileobj=io.BytesIO(build_tar(members))) as tar:
        assert [(m.name, m.size) for m in tar.getmembers()] == [(n, len(d)) for n, d in members]


def test_spawned_workers_write_the_single_process_shards(tmp_path):
    """The path of a caller with threads (forked workers: the test above, in a fresh process)."""
    src = make_imagefolder(tmp_path / "src", classes=3, per_class=8)
    one = tmp_path / "one"
    hd.shard("imagefolder", src, one, max_count=5)
    two = tmp_path / "spawn"
    hd.shard("imagefolder", src, two, max_count=5, workers=2, start_method="spawn")
    assert manifest_json(two) == manifest_json(one)
    assert files_of(two) == files_of(one)


def test_workers_fork_only_from_a_single_threaded_process():
    import threading

    assert hd.shards.worker_start_method() == ("fork" if threading.active_count() == 1 else "spawn")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert hd.shards.worker_start_method() == "spawn"
    finally:
        stop.set()
        t.join()


def test_hip_data_still_pickles_by_reference_for_dask():
    """cloudpickle (Dask) pickles a module by name only if it is a plain ModuleType."""
    import cloudpickle

    def uses_the_package() -> object:  # pickled by value, its globals by reference
        return hd.loader

    assert cloudpickle.loads(cloudpickle.dumps(hd)) is hd
    assert cloudpickle.loads(cloudpickle.dumps(uses_the_package))() is hd.loader


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "png"), ("1", "png"), ("I;16", "png"), ("RGB", "png"), ("RGBA", "png"),
     ("LA", "png"), ("P", "png"), ("L", "jpeg"), ("RGB", "jpeg")],
)  # fmt: skip
def test_the_header_scan_reads_what_pil_reads(tmp_path, mode, fmt):
    """The planner's PNG fast path (IHDR bytes) gives PIL's size and grey/colour answer."""
    from PIL import Image

    from hip.data.shards import image_header
    from hip.data.sources import is_grey

    path = tmp_path / f"x.{fmt}"
    Image.new(mode, (37, 23)).save(path, format=fmt.upper())
    with Image.open(path) as img:
        expected = (img.height, img.width, is_grey(img.mode))
    assert image_header(path) == expected == (23, 37, expected[2])
