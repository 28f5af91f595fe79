"""Load: 2 ranks (torchrun, gloo, CPU) x 4 loader workers over 100+ shards, exact accounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from hip.data import shard

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from hip.config import load_config
    from hip.data import loader
    from hip.train.trainer import train

    shards, out = sys.argv[1], sys.argv[2]
    cfg = load_config("pretrain", "tiny_digits", [
        f"data.manifest={shards}", "data.source=null", "data.num_workers=4", "data.batch_size=4",
        "optim.total_steps=3", "run.eval_batches=2", "run.progress=false",
        "tracking.enabled=false", f"run.out={out}/run", "run.checkpoint_every=100",
    ])
    res = train(cfg)  # joins the process group (gloo) and leaves it at the end
    # No second process group (re-initialising on the same torchrun store can hang): each
    # rank reads its part with an explicit rank/world size and writes its own accounting.
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    kw = {"num_workers": 4, "rank": rank, "world_size": world}
    keys = [k for b in loader(shards, "test", 5, train=False, **kw) for k in b["key"]]
    train_batches = len(list(loader(shards, "train", 4, train=True, **kw)))
    mine = {"rank": rank, "eval_keys": keys, "train_batches": train_batches,
            "loop_batches": res.batches_seen, "step": res.step}
    with open(f"{out}/accounting-{rank}.json", "w") as f:
        json.dump(mine, f)
    """
)


@pytest.mark.slow
def test_two_ranks_four_workers_over_100_shards(tmp_path):
    shards = tmp_path / "shards"
    train = shard("digits", None, shards, "train", max_count=4, limit=40)
    test = shard("digits", None, shards, "test", max_count=3)
    n_train = len(train.splits["train"].shards)
    n_test = len(test.splits["test"].shards)
    assert n_train >= 100 and n_test >= 100
    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(shards), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"accounting-{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    # evaluation: every test sample exactly once across 2 ranks x 4 workers
    keys = [k for r in ranks for k in r["eval_keys"]]
    assert len(keys) == test.splits["test"].num_samples == len(set(keys))
    assert all(r["eval_keys"] for r in ranks)
    # training: the same number of batches on every rank (DDP never waits on a missing one)
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"] > 0
    assert ranks[0]["loop_batches"] == ranks[1]["loop_batches"] == 3
    assert all(r["step"] == 3 for r in ranks)
