"""A worker loop like the official SDK's: poll, ack, keep the lease, serve, stop.

The loop's timings are the official poller's (PROTOCOL.md part A): long poll
with ``block_ms=999``, a uniform 1-3 s wait after an empty poll, and
``min(60, 2**attempt) + uniform(0, 1)`` seconds after a failed poll or ack.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx

from ._http import LeaseClient, StatusError, default_worker_id
from ._keeper import Lease, LeaseNotClaimed, keep_lease
from .policy import HeartbeatPolicy, LeasekitPolicy, Outcome
from .protocol import WorkItem
from .trace import TraceWriter

__all__ = ["POLL_BLOCK_MS", "WorkerStats", "run_worker"]

log = logging.getLogger("leasekit.worker")

POLL_BLOCK_MS = 999
"""The official poller's long-poll wait, milliseconds."""
_BACKOFF_CAP_S = 60.0

Handler = Callable[[WorkItem, Lease], Awaitable[object]]


@dataclass
class WorkerStats:
    """What a worker did: items ``served`` to the end with the lease held,
    ``failed`` (the handler raised), ``lost`` (the lease ended first),
    ``polls`` and failed ``poll_errors``."""

    served: int = 0
    failed: int = 0
    lost: int = 0
    polls: int = 0
    poll_errors: int = 0

    @property
    def items(self) -> int:
        return self.served + self.failed + self.lost


def _backoff_s(attempt: int, rng: random.Random) -> float:
    return min(_BACKOFF_CAP_S, 2.0**attempt) + rng.uniform(0.0, 1.0)


def _fatal(error: Exception) -> bool:
    return isinstance(error, StatusError) and error.outcome is Outcome.REJECTED


async def _stop_quietly(client: LeaseClient, environment_id: str, work_id: str) -> None:
    # shielded: the stop must go out even while the worker is being cancelled
    with anyio.CancelScope(shield=True):
        try:
            await client.stop(environment_id, work_id, force=True)
        except StatusError as error:
            if error.status != 409:  # 409: already stopped
                log.warning("stop of work %s failed: %s", work_id, error)
        except httpx.TransportError as error:
            log.warning("stop of work %s failed: %s", work_id, error)


async def run_worker(
    client: LeaseClient,
    environment_id: str,
    handler: Handler,
    *,
    policy: Callable[[], HeartbeatPolicy] = LeasekitPolicy,
    worker_id: str | None = None,
    rng: random.Random | None = None,
    max_items: int | None = None,
    trace: TraceWriter | None = None,
) -> WorkerStats:
    """Serve work items one at a time, like the official worker; return the stats.

    For each item: poll (``Anthropic-Worker-ID: worker_id``), ack, then run
    ``await handler(item, lease)`` inside :func:`keep_lease` with a fresh
    policy from ``policy()``. The handler is cancelled if the lease ends.
    Afterwards the item is force-stopped unless the lease was lost (then it
    belongs to the queue or another worker). A handler that raises fails
    its item, not the worker. Waits draw from ``rng`` (inject a seeded
    :class:`random.Random` for reproducible runs). Runs until cancelled, or
    until ``max_items`` items were taken. A fatal poll error (bad key,
    unknown environment) raises :class:`StatusError`.
    """
    rng = rng or random.Random()
    worker_id = worker_id or default_worker_id()
    stats = WorkerStats()
    poll_attempt = ack_attempt = 0
    while max_items is None or stats.items < max_items:
        try:
            stats.polls += 1
            item = await client.poll(environment_id, worker_id=worker_id, block_ms=POLL_BLOCK_MS)
        except (StatusError, httpx.TransportError, ValueError) as error:
            if _fatal(error):
                raise
            stats.poll_errors += 1
            poll_attempt += 1
            log.warning("poll failed (attempt %d): %s", poll_attempt, error)
            await anyio.sleep(_backoff_s(poll_attempt, rng))
            continue
        poll_attempt = 0
        if item is None:
            await anyio.sleep(rng.uniform(1.0, 3.0))
            continue
        try:
            await client.ack(environment_id, item.id)
        except (StatusError, httpx.TransportError) as error:
            if _fatal(error):
                log.error("ack of work %s failed for good, stopping it: %s", item.id, error)
                await _stop_quietly(client, environment_id, item.id)
                continue
            ack_attempt += 1
            await anyio.sleep(_backoff_s(ack_attempt, rng))
            continue
        ack_attempt = 0
        await _serve(client, environment_id, item, handler, policy(), worker_id, trace, stats)
    return stats


async def _serve(
    client: LeaseClient,
    environment_id: str,
    item: WorkItem,
    handler: Handler,
    policy: HeartbeatPolicy,
    worker_id: str,
    trace: TraceWriter | None,
    stats: WorkerStats,
) -> None:
    lease: Lease | None = None
    failed = False
    try:
        async with keep_lease(
            client, environment_id, item.id, policy=policy, trace=trace, worker=worker_id
        ) as lease:
            await handler(item, lease)
    except LeaseNotClaimed as error:
        lease = error.lease
    except Exception:
        failed = True
        log.exception("handler failed on work %s", item.id)
    if lease is None:  # the keeper itself failed before the lease was claimed
        stats.failed += 1
        return
    if lease.lost or not lease.claimed:
        stats.lost += 1
        return  # leave it to the queue or to whoever holds it now
    if failed:
        stats.failed += 1
    else:
        stats.served += 1
    await _stop_quietly(client, environment_id, item.id)
