"""bench/data_wait.py end to end on a few real ISBI images (small sizes; no timing targets)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "data_wait.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_data_wait", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dw = _load()


def test_small_run_reports_consistent_numbers(shared_data, tmp_path):
    out = tmp_path / "dw.json"
    target = 1e6  # far beyond any loader: the worker count must come from extrapolation
    argv = [
        "--shared-data", str(shared_data), "--work", str(tmp_path / "work"), "--out", str(out),
        "--samples", "48", "--side", "32", "--shard-size", "16", "--batch-size", "8",
        "--max-workers", "1", "--loader-batches", "3", "--target-img-s", str(target),
        "--train-steps", "2", "--train-batch", "4", "--train-workers", "0,1",
        "--mnist-steps", "2", "--mnist-limit", "8", "--no-mnist-memory", "--threads", "1",
        "--mnist-threads", "1",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    res = dw.main(argv)
    assert torch.get_num_threads() == threads  # --threads 1 was undone
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the file is the result
    m = res["machine"]
    assert m["cpu_count"] >= 1 and m["torch"] == torch.__version__ and m["torch_threads"] == 1
    assert m["platform"] and m["date_utc"].endswith("+00:00")
    assert set(res["formats"]) == {"jpeg", "png"}
    for fmt, r in res["formats"].items():
        sh = r["shards"]
        assert (sh["num_samples"], sh["num_shards"], sh["skipped"]) == (48, 3, 0), fmt
        assert sh["token_shape"] == [32 * 32, 3]  # grey EM images stored as RGB
        d = r["decode"]
        parts = ("read_ms", "image_decode_ms", "tensor_ms", "collate_ms")
        assert d["images"] == 48 and all(d[k] >= 0 for k in parts) and d["image_decode_ms"] > 0
        assert d["total_ms"] == pytest.approx(sum(d[k] for k in parts))
        assert d["one_process_img_s"] == pytest.approx(1e3 / d["total_ms"])
        assert [row["workers"] for row in r["loader"]] == [0, 1]
        u8 = r["decode_uint8"]  # issue 17: uint8 batches, float32 made by the consumer
        assert u8["to_float_ms"] > 0 and u8["images"] == 48
        assert u8["total_ms"] == pytest.approx(sum(u8[k] for k in (*parts, "to_float_ms")))
        assert [row["workers"] for row in r["loader_uint8"]] == [0, 1]
        assert all(row["img_s"] > 0 and row["batches"] == 3 for row in r["loader_uint8"])
        assert all(row["img_s"] > 0 and row["batches"] == 3 for row in r["loader"])
        assert all(0 <= s["data_wait_frac"] <= 1 for s in r["simulated_consumer"])
        w = r["workers_needed"]
        rates = {row["workers"]: row["img_s"] for row in r["loader"]}
        assert w["required_img_s"] == pytest.approx(target / 1.05)
        assert w["step_ms"] == pytest.approx(1e3 * 8 / target)
        assert w["basis"] == "extrapolated" and max(rates.values()) < w["required_img_s"]
        assert w["per_worker_img_s"] == pytest.approx(rates[1])
        assert w["workers"] == math.ceil(w["required_img_s"] / rates[1]) > 1
    runs = res["training"]
    assert set(runs) == {
        "tiny 32px jpeg w0",
        "tiny 32px jpeg w1",
        "tiny 28px mnist shards t1",
    }
    assert [runs[f"tiny 32px jpeg w{n}"]["num_workers"] for n in (0, 1)] == [0, 1]
    for name, t in runs.items():
        assert t["steps"] == 2 and t["samples_per_s_median"] > 0 and t["torch_threads"] == 1, name
        assert 0 <= t["data_wait_frac_overall"] <= 1 and 0 <= t["data_wait_frac_after_warmup"] <= 1
    assert runs["tiny 28px mnist shards t1"]["batch"] == 32


def test_workers_needed_measured_and_extrapolated():
    rates = {0: 500.0, 1: 900.0, 2: 1750.0}
    w = dw.workers_needed(rates, 1800.0, 0.05, 64, 600.0)
    # 1750 img/s leaves a 64-image step waiting 64/1750 - 64/1800 s = 2.8% of it
    assert (w["workers"], w["basis"]) == (2, "measured")
    assert w["step_ms"] == pytest.approx(1e3 * 64 / 1800)
    w = dw.workers_needed({0: 500.0, 1: 300.0}, 1800.0, 0.05, 64, 600.0)
    assert (w["workers"], w["basis"]) == (math.ceil(1800 / 1.05 / 300), "extrapolated")
    assert w["workers_from_decode_cost"] == math.ceil(1800 / 1.05 / 600)
    w = dw.workers_needed({0: 100.0}, 1800.0, 0.05, 64, 100.0)  # no workers tried
    assert w["basis"] == "extrapolated" and w["per_worker_img_s"] == 100.0


@pytest.mark.parametrize(
    "bad",
    [
        ["--max-workers", "-1"],
        ["--formats", "gif"],
        ["--samples", "0"],
        ["--wait-frac", "1.5"],
        ["--train-workers", "a,b"],
        ["--mnist-threads", "0"],
        ["--shared-data", "/nonexistent"],
    ],
)
def test_bad_arguments_exit_with_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        dw.parse_args(bad)
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err
