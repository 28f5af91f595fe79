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

Each repeat also times the machine's own parallel ceiling (`what: "ceiling"`): the same
CPU-bound work (zlib of random bytes, no I/O) in one process, then in N processes at once;
`speedup` = N x one process's time / the N processes' wall. On a VM whose vCPUs share
physical cores with other tenants this is well under N, and no sharding can beat it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import tarfile
import tempfile
import time
import zlib
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


def _zlib_work(_: int = 0) -> float:
    """A fixed CPU-bound job (no I/O, no GIL contention across processes); its wall seconds."""
    data = os.urandom(1 << 20)
    t = time.perf_counter()
    for _ in range(24):
        zlib.compress(data, 6)
    return time.perf_counter() - t


def _ceiling(n: int) -> dict:
    """The speed-up n processes get on this machine for pure CPU work, measured now."""
    one = _zlib_work()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(n) as pool:
        pool.map(_zlib_work, range(n))  # warm the pool's processes
        t = time.perf_counter()
        pool.map(_zlib_work, range(n), chunksize=1)
        wall = time.perf_counter() - t
    return {"one_process_s": round(one, 2), "parallel_wall_s": round(wall, 2),
            "speedup": round(n * one / wall, 2)}  # fmt: skip


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
    ap.add_argument(
        "--resize", type=int, default=None, help="N: store NxN images (more work per image)"
    )
    args = ap.parse_args()
    root = Path(args.input)
    mb = sum(p.stat().st_size for p in _files(root)) / 1e6
    opts: dict = {"max_count": args.max_count, "image_format": args.image_format}
    if args.resize:
        opts["resize"] = (args.resize, args.resize)
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
    dask_runs = [
        (f"Dask LocalCluster, {n} worker(s)", n, lambda o, n=n: _dask(root, o, n, opts))
        for n in (args.workers if args.dask else [])
    ]
    # The Dask rows come after all local ones: a Dask client leaves threads behind, and
    # `hip shard --workers N` spawns instead of forking from a process with threads.
    _measure(runs, args.repeat, mb)
    _measure(dask_runs, args.repeat, mb)


def _measure(runs: list[tuple[str, int, Callable[[Path], int]]], repeat: int, mb: float) -> None:
    """Run each configuration `repeat` times, interleaved, with the ceiling before each round."""
    workers = {n for _, n, _ in runs}
    walls: dict[str, list[float]] = {what: [] for what, _, _ in runs}
    ceilings: list[float] = []
    for rep in range(repeat if runs else 0):
        for n in sorted(workers - {1}):
            row = {"what": "ceiling", "repeat": rep, "processes": n, **_ceiling(n)}
            ceilings.append(row["speedup"])
            print(json.dumps({**row, "load_1min": round(os.getloadavg()[0], 2)}), flush=True)
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
            walls[what].append(dt)
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
    # One speed-up per worker count: summed wall of the 1-worker rows / of the N-worker rows
    # (interleaved, so a load change falls on both), beside the machine's median ceiling.
    one = next(
        (w for (what, n, _), w in zip(runs, walls.values(), strict=True)
         if n == 1 and what != "plain tar"), [],
    )  # fmt: skip
    for (what, n, _), w in zip(runs, walls.values(), strict=True):
        if n > 1 and one and w and what != "plain tar":
            summary = {
                "what": f"speed-up: {what}", "vs_1_worker": round(sum(one) / sum(w), 2),
                "pairs": [round(a / b, 2) for a, b in zip(one, w, strict=True)],
                "machine_ceiling_median": round(statistics.median(ceilings), 2) if ceilings else None,
            }  # fmt: skip
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
