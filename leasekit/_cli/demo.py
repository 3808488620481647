"""``leasekit demo``: the main job, ``leasekit study`` on the default study.

It runs both heartbeat policies (the official SDK's and leasekit's) on four
realistic networks (simulations/study.toml), prints for each network and
policy the smallest TTL that keeps false losses under 1e-4 per lease-hour
with 95% confidence, and writes the report to ``report/``. Every number
comes from the study's seed. ``leasekit demo --walkthrough`` prints the
protocol step by step instead.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..walkthrough import walkthrough
from . import study


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="the main job on the default study: the TTL each policy needs, with a report",
        description="Run `leasekit study` on the default study (simulations/study.toml: both "
        "policies on a LAN, a cross-region link, a lossy link with bursts and a host with GC "
        "pauses) in every core, print the recommendation and write report/index.html.",
    )
    parser.add_argument("--walkthrough", action="store_true", help="the protocol step by step")
    parser.add_argument("--ttl", type=int, default=30, help="TTL of the walkthrough, seconds")
    parser.add_argument(
        "--out", type=Path, default=study.DEFAULT_OUT, help="report directory (default: report/)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default: 2, or 1 on one core)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def print_walkthrough(ttl: int) -> None:
    print(f"The work-lease protocol, step by step (TTL {ttl} s, reference semantics)\n")
    for step in walkthrough(ttl):
        print(f"t={step.at_s:7.2f}s  {step.worker:9s} {step.request}")
        print(f"           -> {step.status}  {step.note}")
        if step.answer is not None:
            print(f"              {json.dumps(step.answer)}")


def run(args: argparse.Namespace) -> int:
    if args.walkthrough:
        print_walkthrough(args.ttl)
        return 0
    print(f"leasekit study {study.DEFAULT_STUDY} --out {args.out} --processes {args.processes}")
    study_args = argparse.Namespace(
        study=None,
        out=args.out,
        from_trace=None,
        target=None,
        engine=None,
        processes=args.processes,
        scheduler=None,
        json=False,
        quiet=args.quiet,
    )
    code: int = study.run(study_args)
    return code
