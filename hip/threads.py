"""Torch's intra-op threads for one process: the CPUs it may use, shared by the processes of a host.

torch starts as many threads as the machine has cores, whatever the container's CPU quota or
the process's CPU affinity say, and every rank of a torchrun job does the same: on a shared or
limited host the threads then fight over too few CPUs (docs/BENCHMARKS.md measured 2 threads on a
busy 2-core machine 2-3x slower than 1). The choice, first that applies:

1. `run.threads` (config) when set;
2. `OMP_NUM_THREADS` from the environment (the launcher's `torchrun_env` sets it per rank);
3. the CPUs this process may use - the fewest of `os.sched_getaffinity` and the cgroup CPU
   quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`), rounded down, at least 1 -
   divided by the processes on this host (`LOCAL_WORLD_SIZE`, set by torchrun). The automatic
   choice only lowers torch's current setting: a caller that set fewer threads keeps them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_last: tuple[int, str] | None = None  # the choice this process last applied (logged once)


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` (`"200000 100000"` -> 2.0; `"max ..."` -> None)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period = float(parts[1]) if len(parts) > 1 else 100_000.0
    quota = float(parts[0])
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota: str, period: str) -> float | None:
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1 -> None)."""
    q, p = float(quota.strip()), float(period.strip())
    return q / p if q > 0 and p > 0 else None


def _own_cgroup(proc_cgroup: str, controller: str | None) -> str:
    """This process's cgroup path from `/proc/self/cgroup` (v2 line `0::/x`; v1 by controller)."""
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controller is None and hierarchy == "0" and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return "/"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpu_limit(
    root: Path = CGROUP_ROOT, proc_cgroup: str | None = None
) -> tuple[float, str] | None:
    """The cgroup CPU quota over this process's cgroup and its parents (the lowest), or None.

    `root` is the cgroup mount and `proc_cgroup` the text of `/proc/self/cgroup` (both given in
    tests). Returns (CPUs, which file said so).
    """
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    found: list[tuple[float, str]] = []
    if (root / "cgroup.controllers").exists():  # v2: one hierarchy
        own = Path(_own_cgroup(proc_cgroup, None).lstrip("/"))
        for d in [root / own, *(root / p for p in own.parents)]:
            text = _read(d / "cpu.max")
            limit = parse_cpu_max(text) if text else None
            if limit is not None:
                found.append((limit, str(d / "cpu.max")))
    else:  # v1: the cpu controller's own hierarchy
        own = Path(_own_cgroup(proc_cgroup, "cpu").lstrip("/"))
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            for d in (root / mount / own, root / mount):
                quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                limit = parse_cfs_quota(quota, period) if quota and period else None
                if limit is not None:
                    found.append((limit, str(d / "cpu.cfs_quota_us")))
    return min(found) if found else None


def affinity_cpus() -> int:
    """CPUs this process may run on (`os.sched_getaffinity`, else `os.cpu_count`)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(
    requested: int | None,
    env: Mapping[str, str],
    affinity: int,
    quota: tuple[float, str] | None,
    current: int | None = None,
) -> tuple[int, str]:
    """(threads, why) from the config value, the environment, the affinity and the CPU quota.

    `current` (torch's setting now): the automatic choice never raises it.
    """
    if requested is not None:
        return int(requested), f"run.threads={int(requested)}"
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), f"OMP_NUM_THREADS={omp}"
    cpus, why = affinity, f"{affinity} CPU(s) in this process's affinity"
    if quota is not None and math.floor(quota[0]) < cpus:
        cpus, why = max(1, math.floor(quota[0])), f"cgroup quota {quota[0]:g} CPU(s) ({quota[1]})"
    local = env.get("LOCAL_WORLD_SIZE", "1").strip()
    procs = int(local) if local.isdigit() and int(local) > 0 else 1
    n, why = max(1, cpus // procs), f"{why} / {procs} process(es) on this host"
    if current is not None and current < n:
        return current, f"already {current}, fewer than the automatic {n}: {why}"
    return n, why


def torchrun_env(nproc_per_node: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`OMP_NUM_THREADS` for the ranks of a torchrun launch (torchrun alone would set 1).

    Empty when the environment already sets it or there is one process: the rank's own
    `configure_threads` decides then.
    """
    env = os.environ if env is None else env
    if nproc_per_node <= 1 or env.get("OMP_NUM_THREADS"):
        return {}
    n, _ = choose_threads(
        None, {"LOCAL_WORLD_SIZE": str(nproc_per_node)}, affinity_cpus(), cgroup_cpu_limit()
    )
    return {"OMP_NUM_THREADS": str(n)}


def configure_threads(
    requested: int | None = None, log: Callable[[str], None] | None = print
) -> int:
    """Set torch's intra-op threads (see the module docstring) and log the choice once; returns it."""
    import torch

    global _last
    current = torch.get_num_threads()
    n, why = choose_threads(requested, os.environ, affinity_cpus(), cgroup_cpu_limit(), current)
    if current != n:
        torch.set_num_threads(n)
    if log is not None and _last != (n, why):
        log(f"threads: {n} torch thread(s) ({why})")
    _last = (n, why)
    return n
