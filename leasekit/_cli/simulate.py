"""``leasekit simulate``: run a scenario (replicated) and print its metrics."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

KEY_METRICS = (
    "false_losses_per_lease_hour",
    "false_losses_server_expiry_per_lease_hour",
    "false_losses_unseen_answer_per_lease_hour",
    "false_losses_give_up_per_lease_hour",
    "false_losses_rejection_per_lease_hour",
    "server_expiries_per_lease_hour",
    "precondition_failures_per_lease_hour",
    "precondition_failure_rate",
    "split_brain_seconds_per_lease_hour",
    "double_holder_seconds_per_lease_hour",
    "takeover_seconds_mean",
    "requests_per_lease_second",
    "lease_hours",
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="simulate a lease server and its workers (SimPy) and print the metrics",
        description="Run SCENARIO.toml (or the built-in default) with N seeds and print each "
        "metric with its 95%% confidence interval. Flags override the file.",
    )
    parser.add_argument("scenario", nargs="?", help="a scenario file (TOML), see simulations/")
    parser.add_argument("--replications", type=int, default=5, help="seeds to run (default 5)")
    parser.add_argument("--seed", type=int, help="base seed (default: the scenario's)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--out", type=Path, help="write events.csv, runs.csv, metrics.json here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
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


def _progress_bar(enabled: bool) -> Any:
    started = time.monotonic()
    last = [-1]

    def show(fraction: float) -> None:
        percent = int(fraction * 100)
        if percent == last[0] or not enabled:
            return
        last[0] = percent
        bar = "#" * (percent // 4)
        elapsed = time.monotonic() - started
        sys.stderr.write(f"\r[{bar:<25}] {percent:3d}%  {elapsed:5.1f} s")
        if percent >= 100:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def run(args: argparse.Namespace) -> int:
    from ..sim import Scenario, ScenarioError, load_scenario, replicate, with_overrides

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
        print(f"leasekit simulate: {error}", file=sys.stderr)
        return 2
    if args.replications < 1:
        print("leasekit simulate: --replications must be >= 1", file=sys.stderr)
        return 2
    # A bar only where someone watches it, or when the run is long.
    load = scenario.workers.count * scenario.duration_s * args.replications
    show = _progress_bar(sys.stderr.isatty() or load > 2e8)
    started = time.perf_counter()
    replications = replicate(
        scenario,
        args.replications,
        seed=args.seed,
        processes=max(1, args.processes),
        progress=show,
    )
    wall_s = time.perf_counter() - started
    estimates = replications.estimates()
    metrics = {
        name: {
            "value": _number(e.value),
            "ci95": [_number(e.low), _number(e.high)],
        }
        for name, e in estimates.items()
    }
    document = {
        "scenario": scenario.to_dict(),
        "metrics": metrics,
        "heartbeats_sent": replications.heartbeats_sent,
        "wall_seconds": wall_s,
        "replications": args.replications,
        "seeds": replications.runs["seed"].tolist(),
    }
    if args.out is not None:
        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        assert replications.first is not None
        replications.first.events.to_csv(out / "events.csv", index=False)
        replications.runs.to_csv(out / "runs.csv", index=False)
        (out / "metrics.json").write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        print(json.dumps(document))
        return 0
    seeds = document["seeds"]
    print(
        f"{scenario.name}: {scenario.workers.count} workers, policy {scenario.workers.policy}, "
        f"{scenario.duration_s / 3600:g} h, {args.replications} replication(s) "
        f"(seeds {seeds[0]}{', ...' if len(seeds) > 1 else ''})"
    )
    print(f"{'metric':44s} {'value':>12s}   95% CI")
    for name in KEY_METRICS:
        e = estimates[name]
        ci = "" if math.isnan(e.low) else f"[{e.low:.4g}, {e.high:.4g}]"
        print(f"{name:44s} {e.value:12.4g}   {ci}")
    print(
        f"{replications.heartbeats_sent} heartbeats simulated in {wall_s:.1f} s"
        + (f"; event log and metrics in {args.out}{os.sep}" if args.out else "")
    )
    return 0
