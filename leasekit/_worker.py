"""A worker loop like the official SDK's: poll, ack, keep the lease, serve, stop.

The loop's decisions (waits after an empty or failed poll, what a failed ack
does, polling again after a lease ends) are :class:`leasekit.loop.WorkerLoop`'s,
the same object the simulator drives; this module only does the I/O. Polls
are long polls with ``block_ms=999``, as the official poller's.
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
from .loop import Abandon, Ack, Fail, Hold, LoopAction, Poll, WorkerLoop
from .policy import HeartbeatPolicy, LeasekitPolicy, Outcome
from .protocol import WorkItem
from .trace import TraceWriter

__all__ = ["POLL_BLOCK_MS", "WorkerStats", "run_worker"]

log = logging.getLogger("leasekit.worker")

POLL_BLOCK_MS = 999
"""The official poller's long-poll wait, milliseconds."""

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


def _outcome(error: Exception) -> Outcome:
    """How a failed poll or ack ended, for :class:`~leasekit.loop.WorkerLoop`."""
    if isinstance(error, StatusError):
        return error.outcome
    return Outcome.TRANSIENT  # a connection error, or an answer we could not read


async def _sleep_until(at: float) -> None:
    delay = at - anyio.current_time()
    if delay > 0:
        await anyio.sleep(delay)


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
    loop = WorkerLoop(rng)
    action: LoopAction = loop.start(anyio.current_time())
    polled: WorkItem | None = None  # the item being acked or served
    while max_items is None or stats.items < max_items:
        if isinstance(action, Poll):
            await _sleep_until(action.at)
            stats.polls += 1
            try:
                item = await client.poll(
                    environment_id, worker_id=worker_id, block_ms=POLL_BLOCK_MS
                )
            except (StatusError, httpx.TransportError, ValueError) as error:
                stats.poll_errors += 1
                action = loop.polled(anyio.current_time(), _outcome(error))
                if isinstance(action, Fail):
                    raise
                log.warning("poll failed (%d in a row): %s", loop.poll_failures, error)
                continue
            polled = item
            action = loop.polled(anyio.current_time(), Outcome.OK, item.id if item else None)
        elif isinstance(action, Ack):
            try:
                await client.ack(environment_id, action.work_id)
            except (StatusError, httpx.TransportError) as error:
                log.warning("ack of work %s failed: %s", action.work_id, error)
                action = loop.acked(anyio.current_time(), _outcome(error))
                continue
            action = loop.acked(anyio.current_time(), Outcome.OK)
        elif isinstance(action, Hold):
            assert polled is not None and polled.id == action.work_id
            await _serve(client, environment_id, polled, handler, policy(), worker_id, trace, stats)
            polled = None
            action = loop.released(anyio.current_time())
        elif isinstance(action, Abandon):
            log.error("ack of work %s failed for good, stopping it", action.work_id)
            polled = None
            await _stop_quietly(client, environment_id, action.work_id)
            action = loop.abandoned(anyio.current_time())
        else:  # pragma: no cover - Fail is raised where the poll failed
            raise AssertionError(action)
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
