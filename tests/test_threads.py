"""Torch threads per process: from the config, OMP_NUM_THREADS, or the CPUs the process may use
(affinity, cgroup v1/v2 quota) shared by the ranks of the host (`hip/threads.py`)."""

from __future__ import annotations

import torch

import hip.task  # noqa: F401 - config checks load the task registry: once, at collection
from hip import threads
from hip.cli import main
from hip.config import load_config
from hip.threads import cgroup_cpu_limit, choose_threads, parse_cfs_quota, parse_cpu_max


def test_cpu_max_and_cfs_quota_parse_to_cpus():
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("150000 100000") == 1.5
    assert parse_cpu_max("max 100000") is None
    assert parse_cfs_quota("50000\n", "100000\n") == 0.5
    assert parse_cfs_quota("-1", "100000") is None


def test_cgroup_v2_limit_is_the_lowest_over_the_process_and_its_parents(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    own = tmp_path / "kubepods" / "pod1"
    own.mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "cpu.max").write_text("400000 100000\n")
    (own / "cpu.max").write_text("300000 100000\n")
    limit = cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n")
    assert limit == (3.0, str(own / "cpu.max"))
    (tmp_path / "kubepods" / "cpu.max").write_text("100000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n")[0] == 1.0
    (own / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n") is None


def test_cgroup_v1_quota_of_the_cpu_controller(tmp_path):
    cpu = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("250000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    assert cgroup_cpu_limit(tmp_path, proc) == (2.5, str(cpu / "cpu.cfs_quota_us"))
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None


def test_threads_are_the_allowed_cpus_shared_by_the_local_processes():
    assert choose_threads(None, {}, 16, None)[0] == 16
    n, why = choose_threads(None, {"LOCAL_WORLD_SIZE": "4"}, 16, None)
    assert n == 4 and "16 CPU(s)" in why and "4 process(es)" in why
    n, why = choose_threads(None, {"LOCAL_WORLD_SIZE": "2"}, 64, (6.5, "/x/cpu.max"))
    assert n == 3 and "quota 6.5" in why  # the quota (rounded down) is below the affinity
    assert choose_threads(None, {"LOCAL_WORLD_SIZE": "8"}, 4, None)[0] == 1  # at least one
    assert choose_threads(None, {}, 8, (0.5, "q"))[0] == 1


def test_the_config_beats_the_environment_which_beats_the_cpus():
    env = {"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}
    assert choose_threads(5, env, 16, None) == (5, "run.threads=5")
    assert choose_threads(None, env, 16, None) == (3, "OMP_NUM_THREADS=3")
    assert choose_threads(None, {"OMP_NUM_THREADS": "junk"}, 16, None)[0] == 16
    # automatic never raises what the caller set; explicit values do
    n, why = choose_threads(None, {}, 16, None, current=2)
    assert n == 2 and "already 2" in why
    assert choose_threads(None, {}, 16, None, current=32)[0] == 16
    assert choose_threads(8, {}, 16, None, current=2)[0] == 8


def test_torchrun_ranks_get_their_share_unless_the_environment_says(monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.torchrun_env(2, {}) == {"OMP_NUM_THREADS": "4"}  # torchrun alone: 1
    assert threads.torchrun_env(1, {}) == {}
    assert threads.torchrun_env(4, {"OMP_NUM_THREADS": "2"}) == {}


def test_configure_sets_torch_and_logs_one_line(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_last", None)
    lines: list[str] = []
    try:
        assert threads.configure_threads(1, lines.append) == 1
        assert torch.get_num_threads() == 1
        threads.configure_threads(1, lines.append)  # the same choice again: not logged again
        assert lines == ["threads: 1 torch thread(s) (run.threads=1)"]
    finally:
        torch.set_num_threads(before)


def test_run_threads_must_be_positive(capsys):
    assert main(["config", "show", "pretrain", "run.threads=0"]) == 2
    assert "run.threads must be >= 1" in capsys.readouterr().err
    assert load_config("pretrain", None, ["run.threads=2"]).run.threads == 2
