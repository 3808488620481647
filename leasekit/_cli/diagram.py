"""``leasekit diagram``: print the lease state diagram (Mermaid) from the transition table."""

from __future__ import annotations

import argparse
from typing import Any

from ..lease import state_diagram


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "diagram", help="print the work-item state diagram (Mermaid), drawn from lease.TRANSITIONS"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(state_diagram(), end="")
    return 0
