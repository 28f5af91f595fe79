"""Service faults against real servers: MLflow lost mid-training, S3 stopped mid-upload.

Wrong S3 credentials: tests/test_data_s3.py::test_wrong_credentials_and_missing_bucket.
MLflow unreachable at start: tests/test_tracking.py::test_unreachable_server_fails_fast.
"""

from __future__ import annotations

import signal
import threading
import time
import warnings

import mlflow
import pytest

from hip import storage, tracking
from hip.data import read_manifest, shard, verify
from hip.errors import UserError
from hip.train import trainer
from tests.test_tracking import free_port, pretrain_cfg, start_mlflow_server, stop_process_group

pytestmark = pytest.mark.slow

STEPS, KILL_AT, BACK_AT = 12, 3, 8


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)


def test_mlflow_lost_mid_training_buffers_and_flushes(tmp_path, monkeypatch):
    """SIGKILL the server at step 3, restart it (same port and SQLite file); nothing is lost."""
    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    server = {"proc": start_mlflow_server(root, port)}
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(tracking, "RETRY_S", 0.0)  # retry on every step (refused: fast)
    restarted, back = threading.Event(), threading.Event()
    seen: dict[str, float] = {}

    def restart() -> None:
        back.wait(300)  # stay down until step BACK_AT, however fast the steps are
        server["proc"] = start_mlflow_server(root, port)
        restarted.set()

    class Outage(tracking.StageRun):
        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            if step == KILL_AT and "loss" in metrics:
                stop_process_group(server["proc"], signal.SIGKILL)
                seen["killed"] = time.monotonic()
                threading.Thread(target=restart, daemon=True).start()
            if step == BACK_AT and "loss" in metrics:
                assert self.buffered >= BACK_AT - KILL_AT - 1  # steps 3..7 waited in memory
                back.set()
                assert restarted.wait(90), "mlflow server did not come back"
            super().log_metrics(metrics, step)

    monkeypatch.setattr(
        tracking,
        "start_stage",
        lambda cfg, stage, is_main, source, run_dir=None: Outage(cfg, stage, source, run_dir),
    )
    cfg = pretrain_cfg(
        tmp_path / "pre", f"tracking.uri={uri}", f"optim.total_steps={STEPS}",
        "tracking.system_metrics=false", "run.checkpoint_every=100",
    )  # fmt: skip
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = trainer.train(cfg)
        outage = [w for w in caught if issubclass(w.category, tracking.TrackingUnavailableWarning)]
        texts = [str(w.message) for w in outage]
        assert len(texts) == 2, texts  # one "unreachable" per outage, one "is back"
        assert "unreachable" in texts[0] and "training goes on" in texts[0]
        assert "is back" in texts[1]
        assert res.step == STEPS and "killed" in seen
        client = mlflow.MlflowClient(uri)
        run = client.get_run(res.run_id)
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(res.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # none lost
        by_step = {m.step: m.value for m in history}
        assert all(by_step[r["step"]] == pytest.approx(r["loss"]) for r in res.history)
        assert "eval_masked_mse" in run.data.metrics
        assert {a.path for a in client.list_artifacts(res.run_id)} >= {
            "checkpoint",
            "metrics.jsonl",
        }
    finally:
        stop_process_group(server["proc"])


def test_mlflow_buffer_is_bounded_and_flushed_at_end(tmp_path, monkeypatch):
    """Server gone for good: the buffer keeps the newest N metrics, end() warns and returns."""
    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    proc = start_mlflow_server(root, port)
    uri = f"http://127.0.0.1:{port}"
    cfg = pretrain_cfg(tmp_path / "pre", f"tracking.uri={uri}", "tracking.system_metrics=false")
    monkeypatch.setattr(tracking, "MAX_BUFFERED_METRICS", 10)
    monkeypatch.setattr(tracking, "FLUSH_TIMEOUT_S", 1.0)
    run = tracking.StageRun(cfg, "pretrain")
    stop_process_group(proc, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.warns(tracking.TrackingUnavailableWarning) as caught:
        for step in range(1, 21):
            run.log_metrics({"loss": float(step)}, step)
        run.end()
    assert time.monotonic() - t0 < 15  # never blocks training for long
    assert len(run._metrics) == 10 and run._dropped == 10
    assert [m.step for m in run._metrics] == list(range(11, 21))  # the newest are kept
    assert any("were not sent" in str(w.message) for w in caught)
    assert mlflow.active_run() is None  # a later run starts cleanly


# -- S3 ---------------------------------------------------------------------------------------


def _kill_during(
    server, op: str, match: str, restart_after: float | None, config: storage.S3Config
) -> dict:
    """Stop the server the first time `op` is sent for a key containing `match`."""
    state: dict = {"done": threading.Event()}

    def handler(request, **_: object) -> None:
        if "killed" in state or match not in request.url:
            return
        state["killed"] = request.url
        server.kill()
        if restart_after is not None:

            def back() -> None:
                time.sleep(restart_after)
                server.start()
                state["done"].set()

            threading.Thread(target=back, daemon=True).start()

    events = storage.s3_client(config).meta.events
    events.register(f"before-send.s3.{op}", handler)
    state["unregister"] = lambda: events.unregister(f"before-send.s3.{op}", handler)
    return state


def _manifest_names_only_existing(uri: str, server, bucket: str) -> None:
    keys = {o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    try:
        manifest = read_manifest(uri)
    except UserError:
        return  # no manifest yet: nothing referenced
    prefix = uri.split("/", 3)[3]
    for split in manifest.splits.values():
        for s in split.shards:
            assert f"{prefix}/{s.name}" in keys


def test_s3_stopped_mid_multipart_upload_retries_then_succeeds(s3env):
    """weed killed while a part of a multipart upload is sent, back ~1 s later: botocore retries."""
    bucket = s3env.make_bucket()
    data = bytes(range(256)) * (11 * 4096)  # 11 MiB: 3 parts of 5 MiB
    config = storage.S3Config(max_attempts=10)
    state = _kill_during(s3env, "UploadPart", "partNumber=2", 0.5, config)
    old = storage.MULTIPART_THRESHOLD, storage.MULTIPART_CHUNKSIZE
    storage.MULTIPART_THRESHOLD = storage.MULTIPART_CHUNKSIZE = 5 * 1024 * 1024
    try:
        storage.write_bytes(f"s3://{bucket}/big.bin", data, config)
    finally:
        storage.MULTIPART_THRESHOLD, storage.MULTIPART_CHUNKSIZE = old
        state["unregister"]()
    assert state["done"].wait(60) and "killed" in state
    assert storage.read_bytes(f"s3://{bucket}/big.bin") == data
    keys = [o["Key"] for o in s3env.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["big.bin"]  # the temporary key is gone


def test_s3_restarted_during_a_checkpoint_upload_loses_no_step_and_no_checkpoint(s3env, tmp_path):
    """weed killed while the step-2 checkpoint is being uploaded, back 1 s later: the upload is
    retried, training runs to the end with the losses of an undisturbed run, both checkpoints
    load (CRC checked) and no temporary key is left behind."""
    from hip import checkpoint as ckpt
    from hip.config import load_config

    bucket = s3env.make_bucket()
    where = f"s3://{bucket}/run/checkpoints"
    args = [
        f"run.out={tmp_path}", "optim.total_steps=4", "run.checkpoint_every=2",
        "data.batch_size=8", "run.eval_batches=1", "run.progress=false", "tracking.enabled=false",
        "run.resume=never",
    ]  # fmt: skip
    ref = trainer.train(
        load_config("pretrain", "tiny_digits", [*args, f"run.checkpoint_dir={where}-ref"])
    )
    state = _kill_during(s3env, "PutObject", "step-00000002.pt.tmp-", 1.0, storage.S3Config())
    try:
        out = trainer.train(
            load_config("pretrain", "tiny_digits", [*args, f"run.checkpoint_dir={where}"])
        )
    finally:
        state["unregister"]()
    assert "killed" in state and state["done"].wait(60)
    assert [r["loss"] for r in out.history] == [r["loss"] for r in ref.history]
    assert ckpt.list_checkpoints(where) == [
        f"{where}/step-00000002.pt",
        f"{where}/step-00000004.pt",
    ]
    for path in ckpt.list_checkpoints(where):
        assert ckpt.load(path)["step"] in (2, 4)
    keys = [o["Key"] for o in s3env.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert not [k for k in keys if ".tmp-" in k]


def test_s3_down_during_sharding_fails_cleanly_then_resumes(s3env):
    """weed killed during the second shard's upload and kept down: a clear error, no manifest
    entry for a missing object; after the restart the same command completes and verifies."""
    bucket = s3env.make_bucket()
    uri = f"s3://{bucket}/digits"
    config = storage.S3Config(max_attempts=2)
    state = _kill_during(s3env, "PutObject", "train-000001.tar", None, config)
    try:
        with pytest.raises(UserError, match="cannot reach S3|S3 error"):
            shard("digits", None, uri, "train", max_count=300, s3=config)
    finally:
        state["unregister"]()
    assert "killed" in state
    s3env.start()
    _manifest_names_only_existing(uri, s3env, bucket)
    manifest = shard("digits", None, uri, "train", max_count=300)
    assert manifest.splits["train"].num_samples == 1437
    assert verify(uri) == []
    _manifest_names_only_existing(uri, s3env, bucket)


def test_mlflow_down_while_the_model_is_registered_registers_it_when_back(tmp_path, monkeypatch):
    """SIGKILL the server as the finetuned model is logged; restart it 2 s later. The model
    upload and registration wait in the run's buffer and land when the run ends."""
    from hip import export
    from hip.config import load_config

    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    server = {"proc": start_mlflow_server(root, port)}
    uri = f"http://127.0.0.1:{port}"
    real_log_model, calls = export.log_model, []

    def restart() -> None:
        time.sleep(2)
        server["proc"] = start_mlflow_server(root, port)

    def log_model_during_an_outage(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(time.monotonic())
        if len(calls) == 1:
            stop_process_group(server["proc"], signal.SIGKILL)
            threading.Thread(target=restart, daemon=True).start()
        return real_log_model(*args, **kwargs)

    monkeypatch.setattr(export, "log_model", log_model_during_an_outage)
    cfg = load_config(
        "finetune",
        "mnist",
        [f"run.out={tmp_path / 'ft'}", "data.source=digits", "optim.total_steps=2",
         "data.batch_size=8", "run.eval_batches=1", "run.progress=false",
         f"tracking.uri={uri}", "tracking.system_metrics=false"],
    )  # fmt: skip
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = trainer.train(cfg)
        texts = [
            str(w.message) for w in caught if w.category is tracking.TrackingUnavailableWarning
        ]
        assert any("unreachable" in t for t in texts) and any("is back" in t for t in texts)
        assert len(calls) >= 2  # failed while down, sent again when the server was back
        client = mlflow.MlflowClient(uri)
        versions = client.search_model_versions("name='hip-mnist'")
        assert [v.run_id for v in versions] == [res.run_id]
        assert versions[0].tags["hip.checkpoint"] == res.checkpoint
        assert client.get_run(res.run_id).info.status == "FINISHED"
    finally:
        stop_process_group(server["proc"])
