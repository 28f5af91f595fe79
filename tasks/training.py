"""Training stages as Prefect tasks: `python -m hip.train` (under torchrun) in a child process."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from hip import checkpoint as ckpt
from hip.train.launch import launch, resolve_nproc, training_command


@task(name="train", retries=1, retry_delay_seconds=10)
def run_training(
    stage: str,
    config: str,
    overrides: list[str],
    run_out: str,
    nproc_per_node: str = "1",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `pretrain` or `finetune` to completion; returns {run_out, checkpoint, metrics}.

    Output streams into the Prefect logs; a failure fails the task with the output's tail.
    A retry resumes from the last checkpoint (`run.resume=auto`), so no step is lost.
    """
    log = get_run_logger()
    nproc = resolve_nproc(nproc_per_node)
    args = [
        "--config",
        config,
        *overrides,
        f"run.out={run_out}",
        "run.resume=auto",
        "run.progress=false",
    ]
    cmd = training_command(stage, args, nproc_per_node=nproc)
    log.info("launching %s with %d process(es): %s", stage, nproc, " ".join(cmd))
    launch(cmd, on_line=log.info, env=env)
    found = ckpt.latest_of_run(run_out)
    if found is None:
        raise RuntimeError(f"{stage} finished but wrote no checkpoint under {run_out}/checkpoints")
    return {"stage": stage, "run_out": run_out, "checkpoint": found}
