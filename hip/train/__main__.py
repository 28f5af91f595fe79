"""`python -m hip.train pretrain ...`: the entry point torchrun launches on every rank."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from hip.cli import run
from hip.train import cli


def _terminated(signum: int, frame: object) -> None:
    from hip.train.trainer import TERMINATE

    TERMINATE.set()  # the loop stops at the next step even if this exception is swallowed
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `pretrain|finetune|evaluate ...` and run it; user errors exit 2 without a traceback."""
    # SIGTERM (a cancelled Prefect run, torchrun stopping its ranks, a pod eviction) unwinds
    # like an interrupt, so the MLflow run ends KILLED instead of staying RUNNING for ever.
    signal.signal(signal.SIGTERM, _terminated)
    parser = argparse.ArgumentParser(prog="python -m hip.train")
    cli.register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
