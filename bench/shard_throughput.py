"""Sharding throughput (issue 17): `hip shard` with 1 and N worker processes vs a plain tar.

    .venv/bin/python bench/shard_throughput.py [--input ../shared/data/mnist_png_subset/train]
        [--workers 1 2] [--image-format png] [--max-count 1000] [--repeat 2] [--dask]

Prints one JSON line per configuration: images/s and MB/s (input bytes read per second of
wall time), the CPU seconds it used (this process: planning and merge, or all of it with one
worker; its worker processes) and MB per CPU second ("per core"), the wall time it would take
on idle cores (`idle_wall_estimate_s` = this process's CPU + the workers' CPU / workers: the
partitions are equal), and the load average at its start. The reference is Python's tarfile
packing the same input files unchanged (no decode/encode): the ceiling of pure I/O + tar
framing. `--dask` adds the flow's path: partition tasks on a `distributed.LocalCluster` of N
worker processes (Prefect not involved: `hip.data.write_partition` submitted with a Dask
client); its wall time excludes the cluster's start (`cluster_start_s`, paid once per flow
run), its CPU includes the cluster's processes. Configurations are interleaved `--repeat` times so a shared machine's load falls on
all of them alike; every run writes to a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hip.data import merge_shards, partitions, plan_shards, shard, write_partition


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process, and of its finished child processes."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _plain_tar(root: Path, out: Path) -> int:
    files = _files(root)
    out.mkdir()
    with tarfile.open(out / "plain.tar", "w") as tar:
        for p in files:
            tar.add(p, arcname=str(p.relative_to(root)))
    return len(files)


def _dask(root: Path, out: Path, workers: int, opts: dict) -> int:
    """The flow's shard stage without Prefect: one Dask task per partition (2 per worker).

    The cluster's start (`_dask.start_s`) is timed apart; its processes' CPU (nannies and
    workers, reaped when it closes) is in this process's RUSAGE_CHILDREN.
    """
    from distributed import Client, LocalCluster

    t = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        _dask.start_s = time.perf_counter() - t  # type: ignore[attr-defined]
        plan = plan_shards("imagefolder", root, out, "train", **opts)
        parts = partitions(plan.num_shards, 2 * workers)
        futures = [client.submit(write_partition, plan, p, pure=False) for p in parts]
        records = [r for f in futures for r in f.result()]
        manifest = merge_shards(plan, records)
    return manifest.splits["train"].num_samples


def main() -> None:
    """Measure and print one JSON line per configuration and repeat."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="../shared/data/mnist_png_subset/train")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--image-format", default="png")
    ap.add_argument("--max-count", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dask", action="store_true", help="also through a Dask LocalCluster")
    args = ap.parse_args()
    root = Path(args.input)
    mb = sum(p.stat().st_size for p in _files(root)) / 1e6
    opts = {"max_count": args.max_count, "image_format": args.image_format}
    runs: list[tuple[str, int, Callable[[Path], int]]] = [
        ("plain tar", 1, lambda o: _plain_tar(root, o))
    ]
    for n in args.workers:
        runs.append(
            (
                f"hip shard --workers {n}",
                n,
                lambda o, n=n: (
                    shard("imagefolder", root, o, "train", workers=n, **opts)
                    .splits["train"]
                    .num_samples
                ),
            )
        )
    if args.dask:
        for n in args.workers:
            runs.append(
                (f"Dask LocalCluster, {n} worker(s)", n, lambda o, n=n: _dask(root, o, n, opts))
            )
    for rep in range(args.repeat):
        for what, n, run in runs:
            with tempfile.TemporaryDirectory() as tmp:
                load = os.getloadavg()[0]
                _dask.start_s = 0.0  # type: ignore[attr-defined]
                (me0, kids0), t = _cpu(), time.perf_counter()
                k = run(Path(tmp) / "out")
                dt, (me1, kids1) = time.perf_counter() - t, _cpu()
                main_cpu = me1 - me0
                workers_cpu = kids1 - kids0
                start = _dask.start_s  # type: ignore[attr-defined]
                dt -= start  # wall time of the sharding alone (a cluster is started once)
                cpu = main_cpu + workers_cpu
            print(
                json.dumps(
                    {
                        "what": what,
                        "repeat": rep,
                        "images": k,
                        "s": round(dt, 2),
                        "images_per_s": round(k / dt),
                        "MB_per_s": round(mb / dt, 2),
                        "cpu_s": round(cpu, 2),
                        "main_cpu_s": round(main_cpu, 2),
                        "workers_cpu_s": round(workers_cpu, 2),
                        "MB_per_cpu_s": round(mb / cpu, 2),
                        "idle_wall_estimate_s": round(main_cpu + workers_cpu / n, 2),
                        "cluster_start_s": round(start, 2),
                        "load_1min": round(load, 2),
                    }  # fmt: skip
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
