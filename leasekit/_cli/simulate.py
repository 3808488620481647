"""``leasekit simulate``: one scenario, any engine, every metric with its interval."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..metrics import METRICS


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="simulate a lease server and its workers and print the metrics",
        description="Run SCENARIO.toml (or the built-in default) with an engine and print each "
        "metric with its 95% interval. Flags override the file. Engines: simpy (the simulator, "
        "N seeds pooled), fast (importance sampling of rare false losses), analytic (closed "
        "forms). Every engine prints the same --json object.",
    )
    parser.add_argument("scenario", nargs="?", help="a scenario file (TOML), see simulations/")
    parser.add_argument(
        "--engine",
        choices=("simpy", "fast", "analytic"),
        default="simpy",
        help="simpy (default), fast or analytic",
    )
    parser.add_argument(
        "--replications", type=int, default=5, help="simpy: seeds to run (default 5)"
    )
    parser.add_argument("--seed", type=int, help="base seed (default: the scenario's)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="run on a Dask cluster: its scheduler's address"
    )
    parser.add_argument(
        "--rel-halfwidth",
        type=float,
        default=0.1,
        help="fast: stop at this relative half-width of the 95%% interval (default 0.1)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="fast: wall-time limit (default 60 s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write metrics.json, runs.csv and the first run's events.csv (written as the run"
        " goes, rows in the order recorded) here",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--workers", type=int, help="number of workers")
    parser.add_argument("--hours", type=float, help="simulated hours")
    parser.add_argument("--policy", help="sdk | leasekit | fixed:interval=SECONDS (with options)")
    parser.add_argument("--ttl", type=int, help="the TTL the server grants, seconds")
    parser.add_argument("--latency", help="one-way delay spec for both directions, e.g. exp:0.05")
    parser.add_argument("--loss", type=float, help="probability that a request is lost")
    parser.add_argument(
        "--answer-loss", type=float, help="probability that an answer is lost after processing"
    )
    parser.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"leasekit simulate: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ..sim import Scenario, ScenarioError, load_scenario, with_overrides
    from ..study import estimate, pool_runs, simpy_runs

    try:
        scenario = load_scenario(args.scenario) if args.scenario else Scenario()
        scenario = with_overrides(
            scenario,
            workers=args.workers,
            hours=args.hours,
            policy=args.policy,
            ttl_seconds=args.ttl,
            latency=args.latency,
            loss=args.loss,
            answer_loss=args.answer_loss,
        )
    except ScenarioError as error:
        return _fail(str(error))
    if args.replications < 1:
        return _fail("--replications must be >= 1")
    if args.processes < 1:
        return _fail("--processes must be >= 1")
    progress = not args.quiet and sys.stderr.isatty()
    where = {"processes": args.processes, "scheduler": args.scheduler}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)  # the event log is written as the run goes
    started = time.perf_counter()
    runs = []
    try:
        if args.engine == "simpy":
            runs = simpy_runs(
                scenario,
                args.replications,
                seed=args.seed,
                # written as it goes, however long the run
                keep_first_events=str(args.out / "events.csv") if args.out is not None else False,
                progress=progress,
                **where,
            )
            result = pool_runs(runs, wall_seconds=time.perf_counter() - started)
        else:
            options = {"rel_halfwidth": args.rel_halfwidth, "max_seconds": args.max_seconds}
            result = estimate(
                scenario,
                engine=args.engine,
                seed=args.seed,
                options=options if args.engine == "fast" else None,
                progress=progress,
                **where,
            )
    except ValueError as error:  # UnsupportedScenario names the field it cannot model
        return _fail(f"--engine {args.engine}: {error}")
    document = {"scenario": scenario.to_dict(), **result.to_dict()}
    if runs:
        document["replications"] = len(runs)
        document["seeds"] = [run.seed for run in runs]
    if args.out is not None:
        _write(args.out, document, runs)
    if args.json:
        print(json.dumps(document))
        return 0
    _print(scenario, args, result, runs)
    return 0


def _write(out: Path, document: dict[str, Any], runs: list[Any]) -> None:
    import pandas as pd

    from ..metrics import summarize

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(document, indent=2) + "\n")
    if not runs:
        return
    rows = []
    for run in runs:
        values = {name: e.value for name, e in summarize(run.totals).items()}
        rows.append({"seed": run.seed, "heartbeats_sent": run.heartbeats_sent, **values})
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)


def _print(scenario: Any, args: argparse.Namespace, result: Any, runs: list[Any]) -> None:
    what = (
        f"{len(runs)} replication(s) (seeds {runs[0].seed}{', ...' if len(runs) > 1 else ''})"
        if runs
        else f"engine {result.engine}"
    )
    print(
        f"{scenario.name}: {scenario.workers.count} workers, policy {scenario.workers.policy}, "
        f"TTL {scenario.server.default_ttl_seconds} s, {scenario.duration_s / 3600:g} h, {what}"
    )
    print(f"{'metric':44s} {'unit':>5s} {'value':>11s}   95% interval")
    for name, e in result.metrics.items():
        if math.isnan(e.value):
            ci = ""
        elif e.method in ("exact", "closed_form"):
            ci = f"exact ({e.method})"
        else:
            ci = f"[{e.low:.4g}, {e.high:.4g}] ({e.method})"
        unit = METRICS[name].unit if name in METRICS else ""
        print(f"{name:44s} {unit:>5s} {e.value:11.4g}   {ci}")
    print(
        f"{result.heartbeats_sent} heartbeats simulated in {result.wall_seconds:.1f} s"
        + (f"; event log and metrics in {args.out}{os.sep}" if args.out else "")
    )
