"""The ``leasekit`` command. Each subcommand lives in its own module under
``leasekit._cli`` and registers itself through a ``register(subparsers)``
function, so commands stay independent of each other."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Final

# module name under leasekit._cli, in the order `leasekit --help` lists them
_COMMANDS = ("demo", "diagram", "serve", "keep", "replay", "simulate", "study")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="leasekit",
        description="Work-lease heartbeats: serve, keep, simulate, replay and study them.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        module = importlib.import_module(f"leasekit._cli.{name}")
        module.register(subparsers)
    return parser


_SIGPIPE_EXIT: Final = 141
"""Exit code when the reader of stdout went away (128 + SIGPIPE, as a shell reports it)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``leasekit``; returns the process exit code.

    A closed stdout (``leasekit ... | head``) ends the command quietly with
    code 141, as a program killed by SIGPIPE would, for every subcommand.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # buffered output meets the closed pipe here, not at exit
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return _SIGPIPE_EXIT
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is
    still buffered does not fail again on the closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return  # not a real file (captured in a test): nothing will flush to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
