"""The ``leasekit`` command. Each subcommand lives in its own module under
``leasekit._cli`` and registers itself through a ``register(subparsers)``
function, so commands stay independent of each other."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``leasekit``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
