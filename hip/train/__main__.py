"""`python -m hip.train pretrain ...`: the entry point torchrun launches on every rank."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hip.errors import UserError
from hip.train import cli


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `pretrain|finetune|evaluate ...` and run it; user errors exit 2 without a traceback."""
    parser = argparse.ArgumentParser(prog="python -m hip.train")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cli.register(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"hip {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
