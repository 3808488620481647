"""10,000 leases kept by one process: client CPU per heartbeat and lateness.

The reference server runs in its own process (``leasekit serve`` on a
loopback ephemeral port). This process keeps ``--leases`` leases on one
asyncio event loop, one :func:`leasekit.client.hold_lease` task per lease,
each driving a seeded :class:`~leasekit.policy.LeasekitPolicy` with a short
TTL, for ``--seconds`` seconds. The lease starts are spread over one beat
interval so the load is steady.

Measured over the run after the first beat interval (the ramp-up):

* **CPU seconds per heartbeat**: ``time.process_time()`` of this process
  (the client only; the server is another process) divided by the heartbeat
  attempts finished in the window.
* **Lateness**: for every attempt, its real send time minus the time the
  policy scheduled it for (``Result.sent_at - Send.at``); p50, p99, max.

**Baseline, same run**: the same number of leases, schedule and keeper,
with every heartbeat made by the official SDK's call instead
(``AsyncAnthropic(..., max_retries=0).beta.environments.work.heartbeat``), measured the
same way until it has made as many heartbeats as leasekit or the measured
time is up (at 10,000 leases the SDK call saturates a core and falls
behind, so it makes fewer, most of them timing out). A second comparison
does exactly the same number of heartbeats with no load: 1,000 renewals
each, one at a time. Goals: leasekit's CPU per heartbeat at most half the
SDK's, and p99 lateness under 100 ms.

    .venv/bin/python benchmarks/bench_client_leases.py              # ~2 min
    .venv/bin/python benchmarks/bench_client_leases.py --leases 500 --seconds 10 --ttl 6
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

from leasekit.client import LeaseClient, LeaseEvent, StatusError, hold_lease
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
    heartbeats: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    lateness_s: list[float] = field(default_factory=list)
    not_ok: int = 0
    leases_ended: int = 0

    def cpu_per_heartbeat_us(self) -> float:
        return self.cpu_s / max(1, self.heartbeats) * 1e6

    def lateness_ms(self, q: float) -> float:
        if not self.lateness_s:
            return float("nan")
        ordered = sorted(self.lateness_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run_phase(
    name: str,
    client: Any,
    work_ids: list[str],
    *,
    ttl: int,
    seconds: float,
    seed: int,
    stop_after: int | None = None,
) -> Figures:
    figures = Figures(name)
    beat_s = ttl / 3  # LeasekitPolicy's default beat fraction
    rng = random.Random(seed)
    measuring = False
    done = anyio.Event()

    def on_event(event: LeaseEvent) -> None:
        if event.kind == "end":
            figures.leases_ended += 1
            return
        if not measuring:
            return
        assert event.send is not None and event.result is not None
        figures.heartbeats += 1
        figures.lateness_s.append(max(0.0, event.result.sent_at - event.send.at))
        if event.result.outcome.value != "ok":
            figures.not_ok += 1
        if stop_after is not None and figures.heartbeats >= stop_after:
            done.set()

    async def one(work_id: str, start_delay: float, lease_seed: int) -> None:
        await anyio.sleep(start_delay)
        policy = LeasekitPolicy(ttl_seconds=ttl, rng=random.Random(lease_seed))
        await hold_lease(client, ENV, work_id, policy=policy, on_event=on_event)

    async with anyio.create_task_group() as group:
        for index, work_id in enumerate(work_ids):
            group.start_soon(one, work_id, rng.uniform(0, beat_s), seed * 1_000_003 + index)
        await anyio.sleep(beat_s + 0.5)  # ramp-up: every lease claimed
        gc.collect()
        measuring = True
        cpu0, wall0 = time.process_time(), time.monotonic()
        with anyio.move_on_after(seconds):
            if stop_after is None:
                await anyio.sleep(seconds)
            else:
                await done.wait()
        measuring = False
        figures.cpu_s = time.process_time() - cpu0
        figures.wall_s = time.monotonic() - wall0
        group.cancel_scope.cancel()
    return figures


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


async def main(args: argparse.Namespace) -> None:
    proc, url = start_server(2 * args.leases + 200, args.ttl)
    try:
        async with LeaseClient(url, KEY, timeout_s=60) as client:
            # the default heartbeat path: straight to httpcore unless a proxy applies
            path = "httpcore, direct" if client._direct is not None else "httpx (proxy)"
            ids = await all_work_ids(client)
            ours_ids, sdk_ids = ids[: args.leases], ids[args.leases : 2 * args.leases]
            quiet_ids = ids[2 * args.leases :]
            ours_quiet = await one_at_a_time(client, quiet_ids[:100], 10)
            print(
                f"{args.leases} leases, TTL {args.ttl} s (a heartbeat every ~{args.ttl / 3:.1f} s "
                f"each), {args.seconds:g} s measured, server: leasekit serve in another process"
            )
            ours = await run_phase(
                f"leasekit ({path})",
                client,
                ours_ids,
                ttl=args.ttl,
                seconds=args.seconds,
                seed=args.seed,
            )
        sdk_client = SdkHeartbeats(url)
        try:
            sdk = await run_phase(
                "official SDK call",
                sdk_client,
                sdk_ids,
                ttl=args.ttl,
                seconds=args.seconds,
                seed=args.seed,
                stop_after=ours.heartbeats,
            )
            sdk_quiet = await one_at_a_time(sdk_client, quiet_ids[100:], 10)
        finally:
            await sdk_client.aclose()
    finally:
        proc.terminate()
        proc.wait(30)

    print(
        f"\n{'client':<28s} {'heartbeats':>10s} {'not ok':>7s} {'CPU s':>7s} "
        f"{'CPU us/beat':>12s} {'late p50 ms':>12s} {'p99 ms':>8s} {'max ms':>8s}"
    )
    for fig in (ours, sdk):
        print(
            f"{fig.name:<28s} {fig.heartbeats:>10d} {fig.not_ok:>7d} {fig.cpu_s:>7.2f} "
            f"{fig.cpu_per_heartbeat_us():>12.0f} {fig.lateness_ms(0.5):>12.1f} "
            f"{fig.lateness_ms(0.99):>8.1f} {fig.lateness_ms(1.0):>8.1f}"
        )
    print(
        f"\none at a time (1000 heartbeats each, no load): leasekit {ours_quiet * 1e6:.0f} us, "
        f"SDK call {sdk_quiet * 1e6:.0f} us CPU per heartbeat ({ours_quiet / sdk_quiet:.2f} x)"
    )
    ratio = ours.cpu_per_heartbeat_us() / sdk.cpu_per_heartbeat_us()
    print(
        f"\nleasekit CPU per heartbeat = {ratio:.2f} x the SDK call's "
        f"(goal <= 0.50: {'met' if ratio <= 0.5 else 'NOT met'}); "
        f"p99 lateness {ours.lateness_ms(0.99):.1f} ms "
        f"(goal < 100 ms: {'met' if ours.lateness_ms(0.99) < 100 else 'NOT met'})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--ttl", type=int, default=45, help="lease TTL asked, seconds")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured time per phase")
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
