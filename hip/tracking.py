"""MLflow tracking: a parent run per pipeline run, a child run per stage, rank 0 only.

Default tracking URI: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<abs run root>/mlflow.db``
with the experiment's artifacts under ``<abs run root>/mlartifacts`` (the run root is the
parent folder of ``run.out``). The parent run id reaches torchrun workers through
``tracking.parent_run_id`` or the ``HIP_MLFLOW_PARENT_RUN_ID`` environment variable.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hip import storage
from hip.config import flatten, to_dict
from hip.errors import UserError

PARENT_ENV = "HIP_MLFLOW_PARENT_RUN_ID"
# While the tracking server is unreachable, metrics wait in memory (oldest dropped beyond
# this; metrics.jsonl keeps every step anyway); sends are retried at most every RETRY_S
# seconds, and for up to FLUSH_TIMEOUT_S seconds when the run ends.
MAX_BUFFERED_METRICS = int(os.environ.get("HIP_MLFLOW_MAX_BUFFER", "100000"))
RETRY_S = float(os.environ.get("HIP_MLFLOW_RETRY_S", "2"))
FLUSH_TIMEOUT_S = float(os.environ.get("HIP_MLFLOW_FLUSH_TIMEOUT_S", "60"))
UPLOAD_TIMEOUT_S = float(os.environ.get("HIP_MLFLOW_UPLOAD_TIMEOUT_S", "300"))


class TrackingUnavailableWarning(RuntimeWarning):
    """The MLflow server stopped answering mid-run: data is buffered and sent later."""


def is_transient(exc: BaseException) -> bool:
    """Whether an MLflow call failed because the server is unreachable or overloaded."""
    try:
        import requests

        if isinstance(exc, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        text = str(exc)
        if "API request to" in text and ("failed with" in text or "Max retries" in text):
            return True
        with contextlib.suppress(Exception):
            return int(exc.get_http_status_code()) in (429, 502, 503, 504)
    return False


def run_root(cfg: DictConfig) -> Path:
    """The local folder holding this run's folder (shared by runs: db and artifacts live here)."""
    out = str(cfg.run.out)
    if out.startswith("s3://"):
        raise UserError(
            f"run.out={out} is on S3, where no SQLite tracking file can live: point tracking.uri "
            "(or MLFLOW_TRACKING_URI) at an MLflow server, or set tracking.enabled=false"
        )
    return Path(out).expanduser().resolve().parent


def tracking_uri(cfg: DictConfig) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else a SQLite file under the run root."""
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = run_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def artifact_location(cfg: DictConfig, uri: str) -> str | None:
    """Absolute artifact folder for new experiments on a local store (None for a server)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (run_root(cfg) / "mlartifacts").as_uri()


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Raise UserError within seconds when an HTTP tracking server does not answer /health."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status != 200:
                raise UserError(f"MLflow server {uri} is not healthy (HTTP {resp.status})")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix tracking.uri, "
            "or set tracking.enabled=false"
        ) from None


@contextlib.contextmanager
def _quick_http(timeout: float = 5) -> Iterator[None]:
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(timeout))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def _uri_env_preserved() -> Iterator[None]:
    """mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI; undo that afterwards."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        _restore_env("MLFLOW_TRACKING_URI", before)


def _experiment_id(client: Any, name: str, location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN", "HIP_MLFLOW_PASSWORD", "HIP_S3_SECRET_KEY",
)  # fmt: skip


def scrub(text: str) -> str:
    """`text` with URL passwords (`scheme://user:PASS@`) and secret env values replaced by ***."""
    import re

    text = re.sub(r"(://[^/:@\s]*):[^/@\s]+@", r"\1:***@", text)
    for name in SECRET_ENV:
        value = os.environ.get(name) or ""
        if len(value) >= 6:
            text = text.replace(value, "***")
    return text


def redacted_params(config: dict[str, Any]) -> dict[str, str]:
    """Flattened config, secrets replaced by "***", values as MLflow-sized strings.

    Redacted: values of secret-looking keys, passwords inside URLs, and any value that
    contains the value of a secret environment variable (e.g. through `${oc.env:...}`).
    """
    return {k: scrub(str(v))[:6000] for k, v in flatten(config).items()}


MODEL_LOGGED = "hip.model_logged"  # a run's tag once its model is logged (value: registry name)
RUN_RECORD = "mlflow-run.json"  # in a run folder: which MLflow run it logs into


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process `pid` (guards against a reused pid); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run, so a later look can tell if it died."""
    import socket

    tags = {"hip.host": socket.gethostname(), "hip.pid": str(os.getpid())}
    started = _process_start(os.getpid())
    if started:
        tags["hip.pid_start"] = started
    return tags


def _owner_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process a run's tags name is alive; None when it ran on another host."""
    import socket

    if tags.get("hip.host") != socket.gethostname() or not tags.get("hip.pid", "").isdigit():
        return None
    pid = int(tags["hip.pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    want = tags.get("hip.pid_start")
    return want is None or _process_start(pid) in (None, want)


def close_dead_runs(client: Any, experiment_ids: list[str] | None = None) -> list[str]:
    """Mark KILLED every RUNNING run whose owning process on this host is gone; returns ids.

    A run left RUNNING by a killed process would otherwise stay RUNNING for ever. A run that
    is later resumed (same run folder) is reopened and marked RUNNING again. Runs owned by
    another host are left alone: their processes cannot be checked from here.
    """
    from mlflow.entities import ViewType

    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments(ViewType.ACTIVE_ONLY)]
    closed = []
    for i in range(0, len(experiment_ids), 50):
        runs = client.search_runs(
            experiment_ids[i : i + 50],
            filter_string="attributes.status = 'RUNNING'",
            max_results=1000,
        )
        for run in runs:
            if _owner_alive(run.data.tags) is False:
                client.set_tag(run.info.run_id, "hip.closed", "its process died")
                client.set_terminated(run.info.run_id, status="KILLED")
                closed.append(run.info.run_id)
    return closed


def _read_record(path: str, uri: str) -> str | None:
    """The run id recorded in the file `path` (local or S3) for tracking URI `uri`, if any."""
    import json

    try:
        record = json.loads(storage.read_bytes(path))
    except (OSError, ValueError):
        return None
    if record.get("tracking_uri") != scrub(uri) or not record.get("run_id"):
        return None
    return str(record["run_id"])


def _write_record(path: str, uri: str, run_id: str) -> None:
    import json

    record = json.dumps({"tracking_uri": scrub(uri), "run_id": run_id}) + "\n"
    storage.write_bytes(path, record.encode())


def _reusable(client: Any, run_id: str | None) -> Any:
    """The run `run_id` if it exists, is not deleted and no live process owns it; else None."""
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except Exception:  # gone with its database, or never existed
        return None
    if run.info.lifecycle_stage != "active":
        return None
    if run.info.status == "RUNNING" and _owner_alive(run.data.tags) is not False:
        return None  # someone is still logging into it (or we cannot tell): leave it alone
    return run


class NullRun:
    """Tracking disabled or not rank 0: every call does nothing."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        """Do nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Do nothing."""

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """Do nothing."""

    def log_checkpoint(self, path: str) -> None:
        """Do nothing."""

    def log_dataset(self, source: Any, context: str = "train") -> None:
        """Do nothing."""

    def log_model(
        self, model: Any, example: Any, benchmark: str | None, checkpoint: str | None
    ) -> None:
        """Do nothing."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Do nothing."""

    def end(self, status: str = "FINISHED") -> None:
        """Do nothing."""


class StageRun(NullRun):
    """One MLflow run (a stage, child of the pipeline's parent run when there is one)."""

    def __init__(self, cfg: DictConfig, stage: str, source: Any = None, run_dir: str | None = None):
        import mlflow
        from mlflow.entities import RunTag

        self.cfg = cfg
        self.uri = tracking_uri(cfg)
        self._env_before = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri changes it
        with _quick_http():
            check_reachable(self.uri)
            mlflow.set_tracking_uri(self.uri)
            self.client = mlflow.MlflowClient(self.uri)
            try:
                exp_id = _experiment_id(
                    self.client, str(cfg.tracking.experiment), artifact_location(cfg, self.uri)
                )
            except Exception as exc:
                raise UserError(
                    f"MLflow at {self.uri} failed: {type(exc).__name__}: {str(exc)[:300]}"
                ) from None
        parent = cfg.tracking.parent_run_id or os.environ.get(PARENT_ENV) or None
        tags = {"hip.stage": stage, "hip.task": str(cfg.task.type)}
        if cfg.task.benchmark:
            tags["hip.benchmark"] = str(cfg.task.benchmark)
        if source is not None:
            tags["hip.data_fingerprint"] = str(source.fingerprint)
        tags.update({str(k): str(v) for k, v in (cfg.tracking.tags or {}).items()})
        if parent:
            tags["mlflow.parentRunId"] = str(parent)
        system = (
            bool(cfg.tracking.system_metrics) and importlib.util.find_spec("psutil") is not None
        )
        # A run folder that resumes logs into the run it started (reopened as RUNNING), not a
        # new one beside an orphan: its id is recorded in the folder.
        previous = None
        if run_dir is not None:
            with _quick_http():
                record = _read_record(storage.join(run_dir, RUN_RECORD), self.uri)
                previous = _reusable(self.client, record)
        self.resumed = previous is not None
        if previous is not None:
            self.active = mlflow.start_run(
                run_id=previous.info.run_id,
                nested=mlflow.active_run() is not None,
                log_system_metrics=system,
            )
            self.client.log_batch(
                self.active.info.run_id,
                tags=[RunTag(k, v) for k, v in {**tags, **owner_tags()}.items()],
                synchronous=True,
            )
        else:
            self.active = mlflow.start_run(
                nested=mlflow.active_run() is not None,  # e.g. inside a caller's (parent) run
                experiment_id=exp_id,
                run_name=cfg.tracking.run_name or f"{stage}-{cfg.run.name}",
                tags={**tags, **owner_tags()},
                log_system_metrics=system,
            )
        self.run_id = self.active.info.run_id
        self.link = run_link(self.uri, self.active.info.experiment_id, self.run_id)
        print(f"MLflow run {self.run_id} ({stage}): {self.link}", flush=True)
        if run_dir is not None:
            _write_record(storage.join(run_dir, RUN_RECORD), self.uri, self.run_id)
        self._metrics: deque[Any] = deque()
        self._tags: dict[str, str] = {}
        self._deferred: list[tuple[str, Callable[[], None]]] = []  # artifacts, registry
        self._down_since: float | None = None
        self._next_try = 0.0
        self._dropped = 0
        if source is not None:
            self.log_dataset(source, "train")

    # -- outage handling: buffer, warn once per outage, flush when the server is back -------
    @property
    def buffered(self) -> int:
        """Metrics, tags and deferred uploads waiting for the server."""
        return len(self._metrics) + len(self._tags) + len(self._deferred)

    def _went_down(self, exc: BaseException) -> None:
        self._next_try = time.monotonic() + RETRY_S
        if self._down_since is None:
            self._down_since = time.monotonic()
            warnings.warn(
                f"MLflow at {self.uri} is unreachable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); training goes on, metrics are kept in "
                "memory and in metrics.jsonl and sent when the server is back",
                TrackingUnavailableWarning,
                stacklevel=3,
            )

    def _send_pending(self) -> None:
        from mlflow.entities import RunTag

        with _quick_http():
            if self._tags:
                tags = [RunTag(k, v) for k, v in self._tags.items()]
                self.client.log_batch(self.run_id, tags=tags, synchronous=True)
                self._tags.clear()
            while self._metrics:
                chunk = [self._metrics[i] for i in range(min(1000, len(self._metrics)))]
                self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
                for _ in chunk:
                    self._metrics.popleft()
        # Uploads (artifacts, the model) get a long timeout: a busy server or a slow link is
        # not an outage. Still no HTTP retries: this loop retries, so training never blocks.
        with _quick_http(timeout=UPLOAD_TIMEOUT_S):
            while self._deferred:
                _, call = self._deferred[0]
                call()
                self._deferred.pop(0)

    def flush(self, wait: float = 0.0) -> bool:
        """Send what is buffered; retry for up to `wait` seconds. True when nothing is left."""
        deadline = time.monotonic() + wait
        while True:
            if not self.buffered:
                return True
            if time.monotonic() >= self._next_try or wait > 0:
                try:
                    self._send_pending()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    self._went_down(exc)
                else:
                    if self._down_since is not None:
                        gone = time.monotonic() - self._down_since
                        warnings.warn(
                            f"MLflow at {self.uri} is back after {gone:.0f} s; buffered data sent"
                            + (
                                f" ({self._dropped} oldest metrics dropped)"
                                if self._dropped
                                else ""
                            ),
                            TrackingUnavailableWarning,
                            stacklevel=2,
                        )
                    self._down_since = None
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _buffer_metrics(self, batch: list[Any]) -> None:
        self._metrics.extend(batch)
        while len(self._metrics) > MAX_BUFFERED_METRICS:
            self._metrics.popleft()
            self._dropped += 1

    def log_params(self, params: dict[str, Any]) -> None:
        """Log the flattened, redacted config (in batches of 100)."""
        import mlflow
        from mlflow.entities import Param

        values = redacted_params(params)
        if self.resumed:  # MLflow refuses to change a logged param: log only the new ones
            logged = self.client.get_run(self.run_id).data.params
            changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
            if changed:
                warnings.warn(
                    f"resumed MLflow run {self.run_id}: params {', '.join(changed[:8])} differ "
                    "from the first start's and keep their first values",
                    stacklevel=2,
                )
            values = {k: v for k, v in values.items() if k not in logged}
        items = [Param(k, v) for k, v in values.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)
        del mlflow

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log numeric metrics at `step`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, int(step))
            for k, v in metrics.items()
            if isinstance(v, (int, float))
        ]
        if batch:
            self._buffer_metrics(batch)
            self.flush()

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """Upload a file or folder if it exists (deferred while the server is unreachable)."""
        p = Path(path)
        if not p.exists():
            return
        if p.is_dir():
            call = functools.partial(self.client.log_artifacts, self.run_id, str(p), artifact_path)
        else:
            call = functools.partial(self.client.log_artifact, self.run_id, str(p), artifact_path)
        self._deferred.append((f"artifact {p}", call))
        self.flush()

    def log_checkpoint(self, path: str) -> None:
        """Upload a local checkpoint (or record a remote one's URI as a tag)."""
        self.set_tags({"hip.checkpoint": str(path)})
        if "://" not in str(path) and self.cfg.tracking.log_checkpoint:
            self.log_artifact(path, "checkpoint")

    def log_dataset(self, source: Any, context: str = "train") -> None:
        """The data (shard manifest or built-in source) as an MLflow dataset input."""
        import mlflow
        import pandas as pd

        rows = []
        manifest = getattr(source, "manifest", None)  # a hip.data Manifest, or None
        if manifest is not None:
            for name, info in manifest.modalities.items():
                rows.append({"kind": "modality", "name": name, "value": str(info.get("shape"))})
            for split, info in manifest.splits.items():
                for shard in info.shards:
                    rows.append(
                        {"kind": f"shard:{split}", "name": shard.name, "value": shard.sha256}
                    )
        if not rows:
            rows = [
                {"kind": "modality", "name": k, "value": str(list(v))}
                for k, v in source.modalities.items()
            ]
        from mlflow.data.code_dataset_source import CodeDatasetSource

        where = getattr(source, "manifest_path", None)
        origin: Any = CodeDatasetSource(tags={"hip.source": f"builtin:{source.name}"})
        if where:
            origin = str(Path(where).resolve()) if "://" not in str(where) else str(where)
        kwargs = {"name": str(source.name), "digest": str(source.fingerprint)[:36]}
        with warnings.catch_warnings():
            # A local path matches two equivalent MLflow resolvers; the warning is noise.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            try:
                ds = mlflow.data.from_pandas(pd.DataFrame(rows), source=origin, **kwargs)
            except mlflow.exceptions.MlflowException:  # no resolver for this URI scheme
                origin = CodeDatasetSource(tags={"hip.source": str(where)})
                ds = mlflow.data.from_pandas(pd.DataFrame(rows), source=origin, **kwargs)
        mlflow.log_input(ds, context=context, tags={"fingerprint": str(source.fingerprint)})

    def log_model(
        self, model: Any, example: Any, benchmark: str | None, checkpoint: str | None
    ) -> None:
        """Log the trained model (MLflow's pytorch flavour, signature, input example); register
        it as a version of `hip-<benchmark>` when `benchmark` is given (deferred while the
        server is unreachable)."""
        from hip import export

        name = registered_model_name(benchmark) if benchmark else None
        tags = {"hip.checkpoint": str(checkpoint or "")}  # what promotion re-evaluates

        if self.resumed and self._tag_of_run(MODEL_LOGGED):
            return  # a finished run started again: its model is logged (and registered) already

        def call() -> None:
            info = export.log_model(model, example, name)
            self.client.set_tag(self.run_id, MODEL_LOGGED, name or "unregistered")
            version = getattr(info, "registered_model_version", None)
            if name and version is not None:
                for k, v in tags.items():
                    self.client.set_model_version_tag(name, str(version), k, v)

        self._deferred.append((f"model {name or 'log'}", call))
        self.flush()

    def _tag_of_run(self, name: str) -> str | None:
        """A tag of this run as the server has it (None when unset or unreachable)."""
        try:
            with _quick_http():
                return self.client.get_run(self.run_id).data.tags.get(name)
        except Exception as exc:
            if not is_transient(exc):
                raise
            return None

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags (buffered while the server is unreachable)."""
        self._tags.update({k: str(v) for k, v in tags.items()})
        self.flush()

    def end(self, status: str = "FINISHED") -> None:
        """Send what is buffered (waiting up to FLUSH_TIMEOUT_S for the server), close the run."""
        import mlflow

        try:
            if not self.flush(wait=FLUSH_TIMEOUT_S):
                warnings.warn(
                    f"MLflow at {self.uri} is still unreachable after {FLUSH_TIMEOUT_S:.0f} s: "
                    f"{len(self._metrics)} metrics and {len(self._deferred)} uploads of run "
                    f"{self.run_id} were not sent (every step's metrics are in metrics.jsonl)",
                    TrackingUnavailableWarning,
                    stacklevel=2,
                )
            active = mlflow.active_run()
            with _quick_http():
                if active is not None and active.info.run_id == self.run_id:
                    mlflow.end_run(status=status)
                else:
                    self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            if not is_transient(exc):
                raise
            warnings.warn(
                f"MLflow at {self.uri}: could not mark run {self.run_id} {status} ({exc})",
                TrackingUnavailableWarning,
                stacklevel=2,
            )
            # mlflow.end_run takes the run off the active stack before it calls the server,
            # so a later run in this process starts clean even though this call failed.
        finally:
            _restore_env("MLFLOW_TRACKING_URI", self._env_before)


def start_stage(
    cfg: DictConfig,
    stage: str,
    is_main: bool = True,
    source: Any = None,
    run_dir: str | None = None,
) -> NullRun:
    """A stage run on rank 0 when tracking is enabled, else a no-op.

    With `run_dir`, the run's id is recorded there and a later start in the same folder
    (a resumed training) reopens that run instead of opening a new one.
    """
    if not (is_main and cfg.tracking.enabled):
        return NullRun()
    return StageRun(cfg, stage, source, run_dir)


def start_pipeline_run(cfg: DictConfig, name: str = "pipeline", record: str | None = None) -> str:
    """Open a parent run for a pipeline (left open for the stages); returns its id.

    With `record` (a JSON file in the pipeline's local work folder) the run id is kept: a
    re-run after an interruption or failure reopens that parent (marked RUNNING again), so
    resumed stages stay under it. Runs on this host whose process died are closed as KILLED.
    """
    import mlflow

    uri = tracking_uri(cfg)
    with _quick_http():
        check_reachable(uri)
        client = mlflow.MlflowClient(uri)
        exp_id = _experiment_id(client, str(cfg.tracking.experiment), artifact_location(cfg, uri))
        close_dead_runs(client)
        path = str(record) if record is not None else None
        previous = _reusable(client, _read_record(path, uri)) if path else None
    if previous is not None and previous.info.status != "FINISHED":
        run_id = previous.info.run_id
        client.update_run(run_id, status="RUNNING")
        for k, v in owner_tags().items():
            client.set_tag(run_id, k, v)
        client.set_tag(
            run_id, "hip.reopened", str(int(previous.data.tags.get("hip.reopened", 0)) + 1)
        )
    else:
        tags = {"hip.stage": "pipeline", **owner_tags()}
        run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    if path is not None:
        _write_record(path, uri, run_id)
    return run_id


def end_pipeline_run(cfg: DictConfig, run_id: str, status: str = "FINISHED") -> None:
    """Close a parent run created by :func:`start_pipeline_run`."""
    import mlflow

    mlflow.MlflowClient(tracking_uri(cfg)).set_terminated(run_id, status=status)


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a person finds a run: the MLflow UI page for a server, else the store and run id."""
    if uri.startswith(("http://", "https://")):
        return f"{scrub(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{scrub(uri)} run {run_id} (open it with `mlflow ui --backend-store-uri {scrub(uri)}`)"


def registered_model_name(benchmark: str) -> str:
    """The MLflow registry name of a benchmark's models: `hip-<benchmark>`."""
    return f"hip-{benchmark}"


def _retry(call: Callable[[], Any], delays: tuple[float, ...] = (2.0, 10.0)) -> Any:
    """`call()`, retried after each delay while MLflow is unreachable or overloaded."""
    for delay in delays:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            time.sleep(delay)
    return call()


@contextlib.contextmanager
def parent_run(
    uri: str, experiment: str, name: str, work_dir: str | Path | None = None
) -> Iterator[str]:
    """A pipeline's parent MLflow run around a block; yields its id for the stages.

    Ends FINISHED when the block returns, FAILED when it raises, KILLED when it is
    interrupted or cancelled (KeyboardInterrupt, SystemExit, a cancellation). With the
    pipeline's local `work_dir`, a re-run after an interruption reopens the same run (see
    :func:`start_pipeline_run`) and new experiments keep their artifacts under
    `work_dir/runs`. Start and end are retried while the server blips.
    """
    from hip.config import load_config

    overrides = [f"tracking.uri={uri}", f"tracking.experiment={experiment}"]
    record = None
    if work_dir is not None:
        from hip.rundir import normalize

        work = normalize(work_dir)
        overrides.append(f"run.out={storage.join(storage.join(work, 'runs'), name)}")
        record = storage.join(storage.join(work, "parent-runs"), f"{name}.json")
    cfg = load_config("pretrain", None, overrides)
    run_id = _retry(lambda: start_pipeline_run(cfg, name, record))
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except Exception:
        raise
    except BaseException:  # interrupted or cancelled, not failed
        status = "KILLED"
        raise
    finally:
        _retry(lambda: end_pipeline_run(cfg, run_id, status))


def search(
    cfg: DictConfig, benchmark: str | None = None, experiments: list[str] | None = None
) -> Any:
    """Runs as a pandas DataFrame (`mlflow.search_runs`), optionally one benchmark's only."""
    import mlflow

    uri = tracking_uri(cfg)
    with _quick_http(), _uri_env_preserved():
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
        names = experiments or [str(cfg.tracking.experiment)]
        client = mlflow.MlflowClient(uri)
        ids = [e.experiment_id for n in names if (e := client.get_experiment_by_name(n))]
        if ids:  # never show a run as RUNNING whose process is dead
            close_dead_runs(client, ids)
        filt = f"tags.`hip.benchmark` = '{benchmark}'" if benchmark else ""
        return mlflow.search_runs(
            experiment_names=names, filter_string=filt, order_by=["attributes.start_time DESC"]
        )


def config_params(cfg: DictConfig) -> dict[str, str]:
    """The flattened, redacted params a stage run logs for `cfg`."""
    return redacted_params(to_dict(cfg))
