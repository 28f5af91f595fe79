"""Training stages as Prefect tasks: `python -m hip.train` (under torchrun) in a child process."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from hip import checkpoint as ckpt
from hip import storage
from hip.threads import torchrun_env
from hip.train.launch import launch, resolve_nproc, training_command
from tasks.naming import artifact_key

# What the trainer prints without a progress bar: "<stage> step N/T: loss ..." (at least
# once a minute) and "MLflow run <id> (<stage>): <link>" when its run opens.
_STEP = re.compile(r"^\w+ step (\d+)/(\d+):")
_RUN = re.compile(r"^MLflow run (\w+) \(\w+\): (.+)$")


class _Progress:
    """A Prefect progress artifact that follows the training's step lines (at most every 5 s).

    Best effort: while the Prefect server is unreachable (restarting) training goes on and the
    artifact catches up at the next update after it is back."""

    def __init__(self, label: str):
        self.key = artifact_key(f"{label}-progress")
        self.label = label
        self.id = None
        self.last = 0.0
        self.warned = False
        self._call(lambda: self._create(0.0))

    def _create(self, percent: float) -> None:
        desc = f"{self.label}: steps done"
        self.id = create_progress_artifact(percent, key=self.key, description=desc)

    def _call(self, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            if not self.warned:
                get_run_logger().warning(
                    "progress artifact not updated (%s); training goes on", exc
                )
                self.warned = True
        else:
            self.warned = False

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 5:
            return
        self.last = now
        percent = 100.0 * done / max(1, total)
        if self.id is None:
            self._call(lambda: self._create(percent))
        else:
            self._call(lambda: update_progress_artifact(self.id, percent))


@task(name="train", retries=1, retry_delay_seconds=10)
def run_training(
    stage: str,
    config: str,
    overrides: list[str],
    run_out: str,
    nproc_per_node: str = "1",
    env: dict[str, str] | None = None,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "hip",
    label: str | None = None,
) -> dict[str, Any]:
    """Run `pretrain` or `finetune` to completion; returns {run_out, checkpoint, mlflow_run_id}.

    Output streams into the Prefect logs and a progress artifact; a failure fails the task with
    the output's tail. A retry resumes from the last checkpoint (`run.resume=auto`), so no step
    is lost. `run_out` may be an s3:// prefix: nothing the next stage needs stays on this host.
    """
    log = get_run_logger()
    label = label or stage
    nproc = resolve_nproc(nproc_per_node)
    args = [
        "--config",
        config,
        *overrides,
        f"run.out={run_out}",
        "run.resume=auto",
        "run.progress=false",
    ]
    cmd = training_command(
        stage,
        args,
        nproc_per_node=nproc,
        nnodes=int(nnodes),
        rdzv_endpoint=rdzv_endpoint,
        rdzv_id=rdzv_id,
    )
    log.info("launching %s with %d process(es): %s", stage, nproc, " ".join(cmd))
    progress = _Progress(label)
    found_run: dict[str, str] = {}

    def on_line(line: str) -> None:
        log.info(line)
        if m := _STEP.match(line):
            progress.update(int(m.group(1)), int(m.group(2)))
        elif m := _RUN.match(line):
            found_run.update(id=m.group(1), link=m.group(2))

    launch(cmd, on_line=on_line, env={**torchrun_env(nproc), **(env or {})})
    found = ckpt.latest_of_run(run_out)
    if found is None:
        raise RuntimeError(f"{stage} finished but wrote no checkpoint under {run_out}/checkpoints")
    progress.update(1, 1)
    run_id = found_run.get("id") or _recorded_run(run_out)
    if found_run.get("link"):
        link = found_run["link"]
        progress._call(
            lambda: create_link_artifact(
                link if link.startswith("http") else f"mlflow-run:{run_id}",
                link_text=f"MLflow run {run_id}",
                key=artifact_key(f"{label}-mlflow"),
                description=f"MLflow run of {label}",
            )
        )
    return {"stage": stage, "run_out": run_out, "checkpoint": found, "mlflow_run_id": run_id}


def _recorded_run(run_out: str) -> str | None:
    """The MLflow run id a training run recorded in its folder (hip.tracking.RUN_RECORD)."""
    try:
        return json.loads(storage.read_bytes(storage.join(run_out, "mlflow-run.json")))["run_id"]
    except (OSError, ValueError, KeyError):
        return None
