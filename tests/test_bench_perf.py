"""bench/perf.py: every path runs on tiny models, and the FLOP counts match the issue's
reference points for the real workloads (counted on the meta device: no compute)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import perf  # noqa: E402

pytest.importorskip("transformers")  # the peers; installed by the `test` extra

TINY = ["--tiny", "--device", "cpu", "--side", "32", "--batch-size", "2", "--steps", "1"]


def test_flop_counts_of_the_real_workloads_match_the_reference_points(tmp_path):
    out = tmp_path / "flops.json"
    workloads = "hip16_full,hip256_mae,vit_b16,mae_vit_b16"
    perf.main(["--flops-only", "--device", "cpu", "--workloads", workloads, "--out", str(out)])
    gflop = {r["workload"]: r["gflop_per_img"] for r in json.loads(out.read_text())["flops"]}
    # issue 6's table (H100, 2026-11-25): ~168 HiP-16 full input, ~148 HiP-256, ~106 ViT-B/16,
    # ~59 MAE ViT-B/16 per image and train step
    assert gflop["hip16_full"] == pytest.approx(168, rel=0.01)
    assert gflop["hip256_mae"] == pytest.approx(148, rel=0.01)
    assert gflop["vit_b16"] == pytest.approx(106, rel=0.01)
    assert gflop["mae_vit_b16"] == pytest.approx(59, rel=0.01)


def test_every_workload_runs_and_reports(tmp_path):
    out = tmp_path / "perf.json"
    result = perf.main([*TINY, "--warmup", "0", "--profile", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(result["results"]))
    rows = {r["workload"]: r for r in result["results"]}
    assert set(rows) == set(perf.WORKLOADS)
    for name, r in rows.items():
        assert "error" not in r, (name, r.get("error"))
        assert r["img_per_s"] > 0 and r["gflop_per_img"] > 0 and r["mfu"] > 0
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        shares = [p["share"] for p in r["profile"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001
    assert result["peak_tflops"]["value"] > 0
    assert any("perceiver_io" in k for k in result["comparisons"])
    assert "transformers" in rows["perceiver_io"]["impl"]


def test_ablations_and_scaling_run_and_write_a_plot(tmp_path):
    variants = "foreach-adamw,sdpa-math,mae-embed-all"
    plot = tmp_path / "scaling.png"
    result = perf.main(
        [
            *TINY,
            "--warmup",
            "0",
            "--ablate",
            variants,
            "--scaling",
            "32,48",
            "--plot",
            str(plot),
            "--out",
            str(tmp_path / "p.json"),
        ]
    )
    seen = {(r["variant"], r["workload"]) for r in result["ablations"] if "error" not in r}
    assert ("foreach-adamw", "hip16_full") in seen and ("sdpa-math", "hip16_mae") in seen
    assert ("mae-embed-all", "hip16_mae") in seen
    assert ("mae-embed-all", "hip16_full") not in seen  # MAE-only variant
    sc = result["scaling"]
    assert [r["side"] for r in sc["series"]["hip16_full"]] == [32, 48]
    slope = sc["slope_224_512"]["hip16_full"]
    assert (slope["from_side"], slope["to_side"]) == (32, 48) and slope["flops"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workloads", "hip16,vit"], "unknown workload"),
        (["--ablate", "turbo"], "unknown ablation"),
        (["--scaling", "224,big"], "comma-separated image sides"),
        (["--scaling", "224"], "at least two"),
        (["--batch-size", "0"], "must be positive"),
        (["--device", "cuda:99"], "no such CUDA device"),
    ],
)
def test_bad_arguments_fail_before_any_work(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        perf.main([*argv, "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_perf_imports_without_the_pipeline_services():
    """The GPU image has torch and transformers but not OmegaConf, WebDataset or MLflow:
    bench/perf.py (and the loop's step it runs) must not need them."""
    code = (
        "import importlib.abc, sys\n"
        "BLOCK = {'omegaconf', 'webdataset', 'mlflow', 'boto3', 'prefect'}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCK:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.path.insert(0, 'bench')\n"
        "import perf\n"
        "perf.build('hip16_mae', perf.Settings(device=perf.torch.device('cpu'), tiny=True,"
        " batch=2, side=16)).step()\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
