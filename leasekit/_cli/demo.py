"""``leasekit demo``: the main job. Prints the protocol walk-through."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..walkthrough import walkthrough


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="the main job: a short, reproducible tour of the protocol"
    )
    parser.add_argument("--ttl", type=int, default=30, help="lease TTL, seconds (default 30)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(f"The work-lease protocol, step by step (TTL {args.ttl} s, reference semantics)\n")
    for step in walkthrough(args.ttl):
        print(f"t={step.at_s:7.2f}s  {step.worker:9s} {step.request}")
        print(f"           -> {step.status}  {step.note}")
        if step.answer is not None:
            print(f"              {json.dumps(step.answer)}")
    return 0
