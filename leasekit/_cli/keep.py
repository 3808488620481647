"""``leasekit keep``: hold one lease against a server, print each heartbeat, record a trace."""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

import anyio
import httpx

from ..client import Lease, LeaseClient, LeaseEvent, StatusError, default_worker_id, hold_for
from ..policy import make_policy
from ..trace import TraceHeader, TraceWriter


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "keep",
        help="hold one lease for a while, printing each heartbeat",
        description=(
            "Hold one work lease against URL, printing each heartbeat as it happens. "
            "Without --work, polls and acks one queued item first (and stops it at the end). "
            "Exit 0 when the lease was held to the end; 1 with the end reason otherwise; "
            "2 for bad input or an unreachable server."
        ),
    )
    parser.add_argument("url", help="the API base URL, e.g. http://127.0.0.1:8787")
    parser.add_argument("--env", required=True, help="environment id")
    parser.add_argument("--key", required=True, help="the environment's API key (never printed)")
    parser.add_argument("--work", help="work id to claim (default: poll for one)")
    parser.add_argument(
        "--policy",
        default="leasekit",
        help="heartbeat policy: sdk, leasekit, or a spec like leasekit:ttl_seconds=30 "
        "(default leasekit)",
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds to hold the lease (default 60)"
    )
    parser.add_argument("--trace", help="write a heartbeat trace (JSON Lines) to this file")
    parser.add_argument("--worker", help="worker id (default: <hostname>-<random>)")
    parser.add_argument("--seed", type=int, help="seed of the policy's jitter")
    parser.set_defaults(run=run)


def _printer(start: list[float]) -> Any:
    def on_event(event: LeaseEvent) -> None:
        if not start:
            start.append(event.at if event.result is None else event.result.sent_at)
        if event.kind == "end":
            return
        assert event.send is not None and event.result is not None
        result = event.result
        took_ms = (result.received_at - result.sent_at) * 1000
        line = (
            f"t={result.sent_at - start[0]:8.3f}s  #{event.send.attempt:<4d} "
            f"{result.outcome.value:<19s} {result.status or '-':>3}  {took_ms:7.1f} ms"
        )
        answer = result.answer or result.current_state
        if answer is not None:
            line += f"  state={answer.state.value} ttl={answer.ttl_seconds}s"
        print(line, flush=True)

    return on_event


def run(args: argparse.Namespace) -> int:
    if args.duration <= 0:
        print("leasekit keep: --duration must be positive", file=sys.stderr)
        return 2
    try:
        policy = make_policy(args.policy, rng=random.Random(args.seed))
    except ValueError as error:
        print(f"leasekit keep: --policy: {error}", file=sys.stderr)
        return 2
    worker = args.worker or default_worker_id()

    async def main() -> Lease:
        writer = None
        if args.trace:
            writer = TraceWriter(
                args.trace,
                TraceHeader(
                    policy.name,
                    policy.parameters(),
                    desired_ttl_seconds=getattr(policy, "desired_ttl_seconds", None),
                    source="leasekit keep",
                ),
            )
        try:
            async with LeaseClient(args.url, args.key) as client:
                return await hold_for(
                    client,
                    args.env,
                    args.work,
                    duration_s=args.duration,
                    policy=policy,
                    trace=writer,
                    worker=worker,
                    on_event=_printer([]),
                )
        finally:
            if writer is not None:
                writer.close()

    target = args.work or "one polled item"
    print(f"keeping {target} in {args.env} at {args.url} for {args.duration:g} s ({policy.name})")
    try:
        lease = anyio.run(main)
    except (httpx.TransportError, OSError) as error:
        # connection refused, DNS, TLS: say which server could not be reached
        print(f"leasekit keep: cannot reach {args.url}: {error}", file=sys.stderr)
        return 2
    except (StatusError, LookupError) as error:
        print(f"leasekit keep: {args.url}: {error}", file=sys.stderr)
        return 2
    if lease.end_reason is None:
        print(f"held {lease.work_id} to the end: {lease.attempts} heartbeats")
        return 0
    print(
        f"lease on {lease.work_id} ended early: {lease.end_reason.value} ({lease.detail}) "
        f"after {lease.attempts} heartbeats",
        file=sys.stderr,
    )
    return 1
