"""The `hip` command line: one subcommand per stage, each registered by its own module."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from hip.errors import UserError

# OSErrors caused by the paths a user gave (printed without a traceback, exit 2).
USER_ERRNOS = {
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EEXIST,
    errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG,
}  # fmt: skip

# Modules exposing `register(subparsers)`; each adds its subcommand(s) and sets `func`.
COMMAND_MODULES = [
    "hip.demo",
    "hip.train.cli",
    "hip.data.cli",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="hip", description="Hierarchical Perceiver: pretrain, finetune, evaluate."
    )
    parser.add_argument(
        "--version", action="version", version=f"hip {importlib.import_module('hip').__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hip ARGS`; user errors print one line to stderr and exit 2, no traceback."""
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse `argv` with `parser` and call the chosen subcommand's `func`, reporting user errors."""
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"hip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user named: no permission, read-only, disk full
        if exc.errno not in USER_ERRNOS:
            raise
        print(f"hip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
