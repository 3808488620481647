"""``leasekit study``: which TTL and which policy keep false lease losses under a target."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

DEFAULT_STUDY = Path(__file__).resolve().parents[2] / "simulations" / "study.toml"
DEFAULT_OUT = Path("report")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "study",
        help="the main job: which TTL and policy keep false losses under a target",
        description="Sweep policies and TTLs over the study's networks (or a network fitted "
        "to a recorded trace) with the SimPy and rare-event engines; print, for each network "
        "and policy, the smallest TTL whose false losses per lease-hour stay under the target "
        "with 95% confidence, and write a report (index.html, figures, results.csv).",
    )
    parser.add_argument(
        "study", nargs="?", type=Path, help="a study file (TOML), default simulations/study.toml"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="report directory (default: report/)"
    )
    parser.add_argument(
        "--from-trace",
        type=Path,
        metavar="TRACE",
        help="study the network fitted to this trace (leasekit JSONL, CSV or OpenTelemetry)",
    )
    parser.add_argument(
        "--target", type=float, help="false losses per lease-hour to stay under (default 1e-4)"
    )
    parser.add_argument(
        "--engine",
        action="append",
        choices=("simpy", "fast", "analytic"),
        help="an engine to run (repeat for several; default: the study's, simpy and fast)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="run on a Dask cluster: its scheduler's address"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"leasekit study: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from .._report import recommendation_lines, write_report
    from ..sim import ScenarioError
    from ..study import StudyError, load_study, run_study

    path: Path = args.study if args.study is not None else DEFAULT_STUDY
    try:
        study = load_study(path)
    except StudyError as error:
        return _fail(str(error))
    if args.target is not None:
        if not args.target > 0:
            return _fail(f"--target must be > 0, got {args.target}")
        study = dataclasses.replace(study, target=args.target)
    if args.engine:
        study = dataclasses.replace(study, engines=tuple(dict.fromkeys(args.engine)))
    if args.processes < 1:
        return _fail(f"--processes must be >= 1, got {args.processes}")
    trace = None
    if args.from_trace is not None:
        try:
            study, trace = _from_trace(study, args.from_trace)
        except (OSError, ValueError) as error:
            return _fail(f"{args.from_trace}: {error}")
    progress = not args.quiet and sys.stderr.isatty()
    try:
        result = run_study(
            study, processes=args.processes, scheduler=args.scheduler, progress=progress
        )
    except ScenarioError as error:
        return _fail(str(error))
    index = write_report(result, args.out, command=_command(args, path), trace=trace)
    if args.json:
        print(
            json.dumps(
                {
                    "report": str(args.out),
                    "target": study.target,
                    "recommendations": [r.to_dict() for r in result.recommendations],
                    "winners": result.winners,
                    "wall_seconds": result.wall_seconds,
                }
            )
        )
        return 0
    print("\n".join(recommendation_lines(result)))
    print(f"report: {index} ({result.wall_seconds:.1f} s)")
    return 0


def _command(args: argparse.Namespace, path: Path) -> str:
    """The command that gives the same numbers (where the runs go does not matter)."""
    words = ["leasekit", "study", str(path), "--out", str(args.out)]
    if args.from_trace is not None:
        words += ["--from-trace", str(args.from_trace)]
    if args.target is not None:
        words += ["--target", f"{args.target:g}"]
    for engine in args.engine or ():
        words += ["--engine", engine]
    return shlex.join(words)


def _from_trace(study: Any, trace_path: Path) -> tuple[Any, Any]:
    """The study on the network fitted to the trace (the first network's
    fleet and server), and the trace section of the report."""
    from .._report import TraceSection
    from ..replay import fit_network, load_any_trace, what_if_ttl

    attempts = load_any_trace(trace_path)
    fit = fit_network(attempts)
    base = next(iter(study.networks.values()))
    fitted = dataclasses.replace(base, name="trace", network=fit.to_network())
    ttls = [int(t) for t in study.grid["ttl_seconds"]]
    section = TraceSection(str(trace_path), fit.to_json(), what_if_ttl(attempts, ttls))
    label = f"trace {trace_path.name}"
    return (
        dataclasses.replace(study, networks={label: fitted}, sources={label: str(trace_path)}),
        section,
    )
