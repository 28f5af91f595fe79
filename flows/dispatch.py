"""Running a stage as a flow run of its deployment (`hip/<stage>`) and waiting for it.

The pipeline's flow run owns its stages' runs: cancelling it (or its process dying under a
SIGTERM) cancels the stage run in flight, so no GPU keeps training for a pipeline that is
gone. Waiting survives a Prefect server restart: the poll retries connection errors for up to
`HIP_PREFECT_OUTAGE_S` seconds (default 600) before it gives up.
"""

from __future__ import annotations

import os
import time
from typing import Any
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import State

POLL_S = 5.0


def outage_limit_s() -> float:
    """How long a stage may wait for an unreachable Prefect server before failing."""
    return float(os.environ.get("HIP_PREFECT_OUTAGE_S", "600"))


def _unreachable(exc: BaseException) -> bool:
    """The server is restarting or overloaded (not: the request itself is wrong)."""
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (429, 502, 503, 504)
    return False


def run_stage_deployment(stage: str, parameters: dict[str, Any]) -> FlowRun:
    """Start `hip/<stage>` with `parameters` and wait until its flow run is final.

    The run is cancelled if this wait ends any other way (this flow run cancelled or crashed,
    the server unreachable for too long)."""
    from prefect.deployments import run_deployment

    created = run_deployment(name=f"hip/{stage}", parameters=parameters, timeout=0)
    try:
        return wait_for_flow_run(created.id)
    except BaseException:  # TerminationSignal (cancelled), KeyboardInterrupt, errors
        cancel_flow_run(created.id)
        raise


def wait_for_flow_run(flow_run_id: UUID) -> FlowRun:
    """Poll the flow run until it reaches a final state, riding out server restarts."""
    log = get_run_logger()
    down_since: float | None = None
    while True:
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(flow_run_id)
        except Exception as exc:
            if not _unreachable(exc):
                raise
            now = time.monotonic()
            if down_since is None:
                down_since = now
                log.warning("Prefect server unreachable (%s); still waiting", type(exc).__name__)
            if now - down_since > outage_limit_s():
                raise RuntimeError(
                    f"Prefect server unreachable for over {outage_limit_s():.0f} s "
                    f"(HIP_PREFECT_OUTAGE_S) while waiting for flow run {flow_run_id}"
                ) from exc
        else:
            if down_since is not None:
                log.info("Prefect server back after %.0f s", time.monotonic() - down_since)
                down_since = None
            if run.state is not None and run.state.is_final():
                return run
        time.sleep(POLL_S)


def cancel_flow_run(flow_run_id: UUID) -> None:
    """Cancel a stage's flow run (best effort: the caller is already failing or cancelled).

    A run no worker has picked up yet is cancelled at once; a running one goes CANCELLING, so
    its worker stops the process (training ends its MLflow run KILLED on the SIGTERM)."""
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return
            waiting = run.state is None or run.state.type in (
                StateType.SCHEDULED,
                StateType.PENDING,
            )
            state = State(
                type=StateType.CANCELLED if waiting else StateType.CANCELLING,
                message="cancelled with the pipeline that started it",
            )
            client.set_flow_run_state(flow_run_id, state, force=True)
    except Exception as exc:  # never hide the reason the pipeline is stopping
        get_run_logger().warning("could not cancel stage flow run %s: %s", flow_run_id, exc)
