"""``leasekit replay``: what a recorded trace says about other TTLs and policies.

For each TTL: the leases that the trace's arrivals would have lost (false
losses, as the metrics glossary defines them: one per lease) with bounds and
a 95% interval, and the gaps that would have expired; the network fitted to
the trace; and with ``--policy``, what another policy does on a
trace-driven network in the simulator, under the same metric names. Bad
files, and traces too short to simulate, exit with code 2 and a message
naming what was wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ..policy import make_policy
from ..replay import FORMATS, NetworkFit, detect_format, fit_network, load_any_trace, what_if_ttl
from ..trace import TraceError


def _ttls(text: str) -> list[int]:
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 86_400:
            raise argparse.ArgumentTypeError(
                f"expected whole seconds from 1 to 86400 separated by commas, got {part!r}"
            )
        values.append(int(part))
    return values


def _policy(text: str) -> str:
    try:
        make_policy(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number of hours, got {text!r}")
    return value


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="what-if TTLs, a fitted network and other policies, from a recorded trace",
        description=(
            "Read a heartbeat trace (leasekit JSON Lines, CSV, OTLP/JSON or the OpenTelemetry "
            "console exporter's JSON), and for each TTL report the leases its arrivals would "
            "have lost (false losses per lease-hour, the metrics glossary's meaning), with "
            "bounds for what a client trace cannot see and a 95% interval. Metric names and "
            "intervals: docs/metrics.md."
        ),
    )
    parser.add_argument("trace", metavar="TRACE", help="the trace file")
    parser.add_argument(
        "--ttl",
        type=_ttls,
        default=[30, 60, 90],
        metavar="S,S,...",
        help="TTLs to ask about, whole seconds (default 30,60,90)",
    )
    parser.add_argument(
        "--policy",
        type=_policy,
        action="append",
        metavar="SPEC",
        help="also simulate this policy on the trace's network (sdk, leasekit, "
        "fixed:interval=S) and report its metrics with 95%% intervals; repeatable",
    )
    parser.add_argument(
        "--hours",
        type=_hours,
        metavar="H",
        help="simulated hours per run with --policy (default: the trace's own length, "
        "shared by the simulated workers); longer runs go round the trace's network again",
    )
    parser.add_argument("--format", choices=FORMATS, help="the trace's format (default: detect)")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    parser.add_argument(
        "--replications",
        type=int,
        default=5,
        metavar="N",
        help="simulation replications per policy and TTL (default 5)",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="write tables into DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _simulated_rows(
    attempts: pd.DataFrame, args: argparse.Namespace, fit: NetworkFit | None
) -> list[dict[str, Any]]:
    from ..replay import simulate_on_trace

    rows = []
    for spec in args.policy or []:
        for ttl in args.ttl:
            result = simulate_on_trace(
                attempts,
                policy=spec,
                ttl_seconds=ttl,
                seed=args.seed,
                replications=args.replications,
                hours=args.hours,
            )
            rows.append({"ttl_seconds": ttl, "policy": spec, **result})
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        format = args.format or detect_format(args.trace)
        attempts = load_any_trace(args.trace, format)
    except TraceError as error:
        print(f"leasekit replay: {error}", file=sys.stderr)
        return 2
    if args.replications < 1:
        print("leasekit replay: --replications must be >= 1", file=sys.stderr)
        return 2
    table = what_if_ttl(attempts, args.ttl)
    if not len(table) or table["leases"].iloc[0] == 0:
        print(
            f"leasekit replay: {args.trace}: no lease to replay (no attempt was answered 200, "
            f"so no lease was ever held); {len(attempts)} attempts read",
            file=sys.stderr,
        )
        return 2
    try:
        fit: NetworkFit | None = fit_network(attempts)
    except ValueError:
        fit = None  # too few answers to fit anything
    try:
        simulated = _simulated_rows(attempts, args, fit) if args.policy else []
    except (ImportError, ValueError) as error:
        print(f"leasekit replay: --policy: {error}", file=sys.stderr)
        return 2
    summary = {
        "path": str(args.trace),
        "format": format,
        "attempts": len(attempts),
        "leases": int(table["leases"].iloc[0]) if len(table) else 0,
        "lease_hours": float(table["trace_lease_hours"].iloc[0]) if len(table) else 0.0,
    }
    rows = [{"policy": "trace", **row} for row in table.to_dict(orient="records")]
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        attempts.to_csv(args.out / "attempts.csv", index=False)
        table.to_csv(args.out / "what_if.csv", index=False)
        if simulated:
            pd.DataFrame(simulated).to_csv(args.out / "simulated.csv", index=False)
        network = fit.to_json() if fit is not None else None
        (args.out / "network.json").write_text(json.dumps(_clean(network), indent=2) + "\n")
    if args.json:
        body = {
            "trace": summary,
            "network": fit.to_json() if fit is not None else None,
            "rows": rows + simulated,
        }
        print(json.dumps(_clean(body), allow_nan=False))
        return 0
    _print_text(summary, fit, table, simulated)
    return 0


def _print_text(
    summary: dict[str, Any],
    fit: NetworkFit | None,
    table: pd.DataFrame,
    simulated: list[dict[str, Any]],
) -> None:
    print(
        f"trace {summary['path']} ({summary['format']}): {summary['attempts']} attempts, "
        f"{summary['leases']} leases, {summary['lease_hours']:.3f} lease-hours"
    )
    if fit is None:
        print("network: too few answered attempts to fit")
    else:
        print(
            f"network: round trip mean {fit.rtt.mean * 1e3:.1f} ms, best fit "
            f"{fit.rtt_best.spec}; "
            + (
                "no loss"
                if fit.loss_rate == 0
                else f"loss {fit.loss_rate:.2%} (request {fit.request_loss:.2%}, "
                f"answer {fit.answer_loss:.2%}), mean burst {fit.mean_burst:.2f} attempts"
            )
        )
    print()
    print("what-if TTL: leases the trace's arrivals would have lost (one false loss per lease)")
    print(
        f"{'TTL s':>6} {'expiring gaps [low, high]':>26} {'lost leases [low, high]':>24} "
        f"{'false losses/lease-hour [low, high] (95% CI)':>52}"
    )
    for row in table.itertuples(index=False):
        gaps = f"{row.expiring_gaps} [{row.expiring_gaps_low}, {row.expiring_gaps_high}]"
        lost = f"{row.false_losses} [{row.false_losses_low}, {row.false_losses_high}]"
        rates = (
            f"{row.false_losses_per_lease_hour:.3g} [{row.false_losses_per_lease_hour_low:.3g}, "
            f"{row.false_losses_per_lease_hour_high:.3g}] "
            f"({row.false_losses_per_lease_hour_ci95_low:.3g}-"
            f"{row.false_losses_per_lease_hour_ci95_high:.3g})"
        )
        print(f"{row.ttl_seconds:>6} {gaps:>26} {lost:>24} {rates:>52}")
    if simulated:
        print()
        print("simulated on the trace's network (95% CI)")
        header = (
            "policy",
            "TTL s",
            "lease-hours",
            "false losses/lease-hour",
            "expiries/lease-hour",
        )
        print(f"{header[0]:>24} {header[1]:>6} {header[2]:>12} {header[3]:>30} {header[4]:>30}")
        for sim in simulated:
            cells = [
                f"{sim[name]:.3g} ({sim[name + '_ci95_low']:.3g}-{sim[name + '_ci95_high']:.3g})"
                for name in ("false_losses_per_lease_hour", "server_expiries_per_lease_hour")
            ]
            print(
                f"{sim['policy']:>24} {sim['ttl_seconds']:>6} {sim['lease_hours']:>12.3g} "
                f"{cells[0]:>30} {cells[1]:>30}"
            )
