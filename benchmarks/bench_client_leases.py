"""Leases one process can keep: the capacity of leasekit's client and of the SDK call.

The reference server runs in its own process (``leasekit serve`` on a
loopback ephemeral port). This process keeps N leases on one asyncio event
loop, one :func:`leasekit.client.hold_lease` task per lease, each driving a
seeded :class:`~leasekit.policy.LeasekitPolicy` with a short TTL. The lease
starts are spread over one beat interval so the load is steady. Each client
is measured the same way:

* **Capacity**: N steps up (``--start``, doubling, up to ``--max-leases``);
  a step is *sustained* when, from the first claim to the end of the
  ``--seconds`` measured after the ramp-up, no heartbeat failed (every
  attempt answered 200, no lease ended) and the p99 lateness is under
  100 ms. A step that is only late is measured once more (fresh leases): on
  a shared machine one stall can make a short step's p99, saturation comes
  back. The capacity is the last N sustained before the first step that
  is not (0 when even the first is not). A client that fails is not
  measured at any larger N.
* **CPU seconds per heartbeat**: ``time.process_time()`` of this process
  (the client only; the server is another process) divided by the attempts
  finished in the measured window.
* **Lateness**: for every attempt, its real send time minus the time the
  policy scheduled it for (``Result.sent_at - Send.at``); p50, p99, max.

**Baseline, same run**: the same leases, schedule and keeper, with every
heartbeat made by the official SDK's call
(``AsyncAnthropic(..., max_retries=0).beta.environments.work.heartbeat``).
CPU per heartbeat is compared **only at a load both clients sustained** (the
larger N both did): comparing successes with failures says nothing, so when
the SDK sustains no load at all no ratio is printed. A second comparison,
with no load: 1,000 renewals each, one at a time.

    .venv/bin/python benchmarks/bench_client_leases.py   # ~3 min, stepping until a failed step
    .venv/bin/python benchmarks/bench_client_leases.py --max-leases 12800 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import httpx

from leasekit.client import LeaseClient, LeaseEvent, LeaseNotClaimed, StatusError, hold_lease
from leasekit.policy import LeasekitPolicy
from leasekit.protocol import HeartbeatAnswer, LeaseState, PreconditionFailed, WorkState

ENV, KEY = "env_bench", "key_bench"


# --------------------------------------------------------------------------- the SDK baseline


class SdkHeartbeats:
    """Makes each heartbeat with the official SDK's call; the keeper drives it
    exactly as it drives :class:`LeaseClient` (same policy, same schedule)."""

    def __init__(self, base_url: str) -> None:
        from anthropic import AsyncAnthropic

        # no retries inside the call: the keeper's policy decides when to try again
        self.sdk = AsyncAnthropic(base_url=base_url, api_key=KEY, max_retries=0)
        self.work = self.sdk.beta.environments.work

    async def heartbeat(
        self,
        environment_id: str,
        work_id: str,
        expected_last_heartbeat: str,
        desired_ttl_seconds: int | None = None,
    ) -> HeartbeatAnswer:
        import anthropic

        try:
            answer = await self.work.heartbeat(
                work_id,
                environment_id=environment_id,
                expected_last_heartbeat=expected_last_heartbeat,
                desired_ttl_seconds=desired_ttl_seconds,
            )
        except anthropic.APITimeoutError as error:
            raise httpx.TimeoutException(str(error)) from None
        except anthropic.APIConnectionError as error:
            # e.g. a keep-alive connection the server closed as it was reused: without
            # the SDK's retries this is the keeper's transient outcome, as for leasekit
            raise httpx.TransportError(str(error)) from None
        except anthropic.APIStatusError as error:
            if error.status_code == 412:
                body = cast(dict[str, Any], error.body)
                state = body["error"]["details"]["current_state"]
                raise PreconditionFailed(LeaseState.from_json(state), str(error)) from None
            raise StatusError(error.status_code, str(error)) from None
        return HeartbeatAnswer(
            answer.last_heartbeat,
            answer.lease_extended,
            WorkState(answer.state),
            answer.ttl_seconds,
        )

    async def aclose(self) -> None:
        await self.sdk.close()


# --------------------------------------------------------------------------- one phase


@dataclass
class Figures:
    name: str
    leases: int
    heartbeats: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    lateness_s: list[float] = field(default_factory=list)
    failed: int = 0
    """Attempts that did not answer 200, and leases that ended or never started,
    from the first claim to the end of the measured window."""

    def cpu_per_heartbeat_us(self) -> float:
        return self.cpu_s / max(1, self.heartbeats) * 1e6

    def lateness_ms(self, q: float) -> float:
        if not self.lateness_s:
            return float("nan")
        ordered = sorted(self.lateness_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def sustained(self) -> bool:
        """No failed heartbeat, some measured, and p99 lateness under 100 ms."""
        return self.failed == 0 and self.heartbeats > 0 and self.lateness_ms(0.99) < LATE_P99_MS


LATE_P99_MS = 100.0


async def run_phase(
    name: str, client: Any, work_ids: list[str], *, ttl: int, seconds: float, seed: int
) -> Figures:
    figures = Figures(name, len(work_ids))
    beat_s = ttl / 3  # LeasekitPolicy's default beat fraction
    rng = random.Random(seed)
    counting = True  # failures count from the first claim
    measuring = False
    measured_from = float("inf")

    def on_event(event: LeaseEvent) -> None:
        if not counting:
            return  # the end of the phase cancels every lease: not a failure
        if event.kind == "end":
            figures.failed += 1
            return
        assert event.send is not None and event.result is not None
        if event.result.outcome.value != "ok":
            figures.failed += 1
        # attempts scheduled before the window (and its gc.collect) are not measured
        if measuring and event.send.at >= measured_from:
            figures.heartbeats += 1
            figures.lateness_s.append(max(0.0, event.result.sent_at - event.send.at))

    async def one(work_id: str, start_delay: float, lease_seed: int) -> None:
        await anyio.sleep(start_delay)
        policy = LeasekitPolicy(ttl_seconds=ttl, rng=random.Random(lease_seed))
        try:
            await hold_lease(client, ENV, work_id, policy=policy, on_event=on_event)
        except LeaseNotClaimed:
            if counting:
                figures.failed += 1

    async with anyio.create_task_group() as group:
        for index, work_id in enumerate(work_ids):
            group.start_soon(one, work_id, rng.uniform(0, beat_s), seed * 1_000_003 + index)
        await anyio.sleep(beat_s + 0.5)  # ramp-up: every lease claimed
        gc.collect()
        measuring = True
        cpu0, wall0 = time.process_time(), time.monotonic()
        measured_from = wall0
        await anyio.sleep(seconds)
        measuring = counting = False
        figures.cpu_s = time.process_time() - cpu0
        figures.wall_s = time.monotonic() - wall0
        group.cancel_scope.cancel()
    return figures


def steps(start: int, most: int) -> list[int]:
    counts = [start]
    while counts[-1] * 2 <= most:
        counts.append(counts[-1] * 2)
    return counts


async def capacity(
    name: str, client: Any, ids: list[str], counts: list[int], args: argparse.Namespace
) -> list[Figures]:
    """Step the lease count up until a step is not sustained; every step's figures."""
    done: list[Figures] = []
    offset = 0
    for count in counts:
        for trial in (1, 2):
            work_ids, offset = ids[offset : offset + count], offset + count
            figures = await run_phase(
                name, client, work_ids, ttl=args.ttl, seconds=args.seconds, seed=args.seed + trial
            )
            # a step late but without failures is measured once more: on a shared
            # machine one stall can make a short step's p99; saturation comes back
            if figures.sustained or figures.failed or trial == 2:
                break
            print(f"  {name}: {count} leases late (p99 {figures.lateness_ms(0.99):.0f} ms), again")
        done.append(figures)
        print(f"  {name}: {count} leases {'sustained' if figures.sustained else 'NOT sustained'}")
        if not figures.sustained:
            break
    return done


# --------------------------------------------------------------------------- driver


def start_server(count: int, ttl: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "leasekit.cli",
            "serve",
            "--port",
            "0",
            "--ttl",
            str(ttl),
            "--min-ttl",
            "1",
            "--key",
            f"{ENV}={KEY}",
            "--seed-work",
            f"{ENV}:{count}",
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    found = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())
    if found is None:
        proc.kill()
        raise SystemExit("leasekit serve did not print its URL")
    return proc, found.group(0)


async def one_at_a_time(client: Any, work_ids: list[str], rounds: int) -> float:
    """CPU seconds per heartbeat with one request in flight at a time: the
    cost of the call itself, without any overload. Claims first, then
    ``rounds`` renewals of every lease."""
    last = {w: (await client.heartbeat(ENV, w, "NO_HEARTBEAT")).last_heartbeat for w in work_ids}
    cpu0 = time.process_time()
    for _ in range(rounds):
        for work_id in work_ids:
            last[work_id] = (await client.heartbeat(ENV, work_id, last[work_id])).last_heartbeat
    return (time.process_time() - cpu0) / (rounds * len(work_ids))


async def all_work_ids(client: LeaseClient) -> list[str]:
    ids: list[str] = []
    page = None
    while True:
        listing = await client.list(ENV, limit=100, page=page)
        ids.extend(item.id for item in listing.data)
        if listing.next_page is None:
            return ids
        page = listing.next_page


def print_table(results: list[Figures]) -> None:
    print(
        f"\n{'client':<28s} {'leases':>7s} {'heartbeats':>10s} {'failed':>7s} {'CPU s':>7s} "
        f"{'CPU us/beat':>12s} {'late p50 ms':>12s} {'p99 ms':>8s} {'max ms':>8s}"
    )
    for fig in results:
        print(
            f"{fig.name:<28s} {fig.leases:>7d} {fig.heartbeats:>10d} {fig.failed:>7d} "
            f"{fig.cpu_s:>7.2f} {fig.cpu_per_heartbeat_us():>12.0f} {fig.lateness_ms(0.5):>12.1f} "
            f"{fig.lateness_ms(0.99):>8.1f} {fig.lateness_ms(1.0):>8.1f}"
        )


def capacity_of(results: list[Figures]) -> int:
    sustained = [fig.leases for fig in results if fig.sustained]
    return max(sustained, default=0)


async def main(args: argparse.Namespace) -> None:
    counts = steps(args.start, args.max_leases)
    per_client = 2 * sum(counts)  # each step may be measured twice
    proc, url = start_server(2 * per_client + 200, args.ttl)
    try:
        async with LeaseClient(url, KEY, timeout_s=60) as client:
            # the default heartbeat path: straight to httpcore unless a proxy applies
            path = "httpcore, direct" if client._direct is not None else "httpx (proxy)"
            ids = await all_work_ids(client)
            ours_ids, sdk_ids = ids[:per_client], ids[per_client : 2 * per_client]
            quiet_ids = ids[2 * per_client :]
            ours_quiet = await one_at_a_time(client, quiet_ids[:100], 10)
            print(
                f"TTL {args.ttl} s (a heartbeat every ~{args.ttl / 3:.1f} s per lease), "
                f"{args.seconds:g} s measured per step, leases {counts[0]} doubling to "
                f"{counts[-1]}; server: leasekit serve in another process"
            )
            ours = await capacity(f"leasekit ({path})", client, ours_ids, counts, args)
        sdk_client = SdkHeartbeats(url)
        try:
            sdk = await capacity("official SDK call", sdk_client, sdk_ids, counts, args)
            sdk_quiet = await one_at_a_time(sdk_client, quiet_ids[100:], 10)
        finally:
            await sdk_client.aclose()
    finally:
        proc.terminate()
        proc.wait(30)

    print_table(ours + sdk)
    ours_capacity, sdk_capacity = capacity_of(ours), capacity_of(sdk)
    print(
        f"\ncapacity (no failed heartbeat, p99 lateness < {LATE_P99_MS:.0f} ms): "
        f"leasekit {ours_capacity} leases, SDK call {sdk_capacity} leases"
        + (
            " (the largest step tried: try a larger --max-leases)"
            if ours_capacity == counts[-1]
            else ""
        )
    )
    both = min(ours_capacity, sdk_capacity)
    if both == 0:
        failed = "the SDK call" if sdk_capacity == 0 else "leasekit"
        print(
            f"no CPU ratio: {failed} sustained no load tried, "
            "so there is no baseline to compare with"
        )
    else:
        ours_us = {fig.leases: fig for fig in ours}[both].cpu_per_heartbeat_us()
        sdk_us = {fig.leases: fig for fig in sdk}[both].cpu_per_heartbeat_us()
        print(
            f"CPU per heartbeat at {both} leases (both sustained): leasekit {ours_us:.0f} us, "
            f"SDK call {sdk_us:.0f} us = {ours_us / sdk_us:.2f} x"
        )
    print(
        f"one at a time (1000 heartbeats each, no load): leasekit {ours_quiet * 1e6:.0f} us, "
        f"SDK call {sdk_quiet * 1e6:.0f} us CPU per heartbeat ({ours_quiet / sdk_quiet:.2f} x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=100, help="leases at the first step")
    parser.add_argument("--max-leases", type=int, default=3200, help="leases at most")
    parser.add_argument("--ttl", type=int, default=9, help="lease TTL asked, seconds")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per step")
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
