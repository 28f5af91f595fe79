"""`python -m flows [--stage STAGE] [--pipeline NAME] [key=value ...]`: run the `hip` flow locally.

With no PREFECT_API_URL set, Prefect starts its ephemeral API in-process (embedded
defaults); MLflow goes to a SQLite file in the pipeline's work dir; shards to local disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

# Embedded-mode defaults that work offline on 2 cores (measured: the ephemeral API takes
# 12-20 s to start here). Set before Prefect is imported; the user's own settings win.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
if os.environ.get(
    "PREFECT_HOME"
):  # e.g. `make demo`'s outputs/prefect-home: Prefect makes no parents
    os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage (default: the whole pipeline) and print where to look afterwards."""
    from flows.hip_flow import STAGES

    parser = argparse.ArgumentParser(
        prog="python -m flows",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", default="pipeline", choices=STAGES)
    parser.add_argument(
        "--pipeline", default="demo", help="pipeline preset (flows/presets) or YAML path"
    )
    parser.add_argument(
        "overrides", nargs="*", help="pipeline config overrides, e.g. work_dir=/tmp/hip"
    )
    args = parser.parse_args(argv)

    from flows.config import load_pipeline, tracking_uri
    from flows.hip_flow import check_stage_configs
    from hip import worklock
    from hip.errors import UserError
    from hip.rundir import normalize

    try:
        p = load_pipeline(args.pipeline, args.overrides)  # fail on bad config before Prefect starts
        check_stage_configs(p)
        worklock.check_free(normalize(p.work_dir))  # another pipeline on this work_dir: refuse
    except UserError as exc:
        print(f"python -m flows: error: {exc}", file=sys.stderr)
        return 2
    from flows.hip_flow import hip

    t0 = time.perf_counter()
    state = hip(
        stage=args.stage, pipeline=args.pipeline, overrides=args.overrides, return_state=True
    )
    minutes = (time.perf_counter() - t0) / 60
    if not state.is_completed():
        print(
            f"\nThe {args.stage} flow ended {state.name} after {minutes:.1f} min: {state.message}",
            file=sys.stderr,
        )
        return 1
    result = state.result()
    print(f"\nHiP {args.stage} '{p.name}' finished in {minutes:.1f} min.")
    if args.stage == "pipeline":
        _print_summary(result)
    uri = tracking_uri(p)
    print(
        f"\nCompare runs in MLflow:  mlflow ui --backend-store-uri {uri}"
        if uri.startswith("sqlite")
        else f"\nMLflow: {uri}"
    )
    return 0


def _print_summary(result: dict) -> None:
    import pandas as pd

    table = pd.DataFrame(result["summary"]).astype(object).where(lambda t: t.notna(), "")
    print("\nSummary on the held-out split (pretrained = finetuned from the MAE checkpoint;")
    print("scratch = the same finetuning recipe from random weights; baseline = chance or mean):")
    print(table.to_string(index=False))
    print(f"\nReport: {result['report']}")
    for name, ev in result["evaluations"].items():
        print(f"  {name}: {ev['report']}")


if __name__ == "__main__":
    sys.exit(main())
