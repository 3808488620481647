"""The async client: HTTP calls, the lease keeper and a worker loop (anyio, httpx).

Runs on asyncio and on trio, and in Jupyter with top-level ``await``::

    from leasekit.client import LeaseClient, keep_lease
    from leasekit.policy import LeasekitPolicy

    async with LeaseClient("http://127.0.0.1:8000", key) as client:
        async with keep_lease(client, "env_1", "work_1", policy=LeasekitPolicy()) as lease:
            await serve(...)            # cancelled if the lease ends
        print(lease.end_reason)         # None: released while held

* :class:`LeaseClient`: poll, ack, heartbeat, stop, retrieve, update, list,
  stats (and ``create``, a reference-server extension).
* :func:`keep_lease` (body cancelled when the lease ends), :func:`hold_lease`
  (one task per lease, for many leases) and :class:`Lease`.
* :func:`run_worker`: the official worker's loop around an async handler.
* :func:`hold_for` and :func:`hold_lease_sync`: hold one lease for a while,
  from async code or from a plain script.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import anyio
import sniffio

from ._http import LeaseClient, StatusError, default_worker_id
from ._keeper import Lease, LeaseEvent, LeaseNotClaimed, hold_lease, keep_lease
from ._worker import POLL_BLOCK_MS, WorkerStats, run_worker
from .policy import HeartbeatPolicy, make_policy
from .trace import TraceHeader, TraceWriter

__all__ = [
    "POLL_BLOCK_MS",
    "Lease",
    "LeaseClient",
    "LeaseEvent",
    "LeaseNotClaimed",
    "StatusError",
    "WorkerStats",
    "default_worker_id",
    "hold_for",
    "hold_lease",
    "hold_lease_sync",
    "keep_lease",
    "run_worker",
]


async def _claim_one(client: LeaseClient, environment_id: str, worker: str, wait_s: float) -> str:
    with anyio.move_on_after(wait_s):
        while True:
            item = await client.poll(environment_id, worker_id=worker, block_ms=POLL_BLOCK_MS)
            if item is not None:
                await client.ack(environment_id, item.id)
                return item.id
    raise LookupError(f"no work queued in environment {environment_id!r} within {wait_s:g} s")


async def hold_for(
    client: LeaseClient,
    environment_id: str,
    work_id: str | None = None,
    *,
    duration_s: float,
    policy: HeartbeatPolicy | None = None,
    trace: TraceWriter | None = None,
    worker: str | None = None,
    on_event: Callable[[LeaseEvent], object] | None = None,
    poll_wait_s: float = 30.0,
) -> Lease:
    """Hold one lease for ``duration_s`` seconds, or until it ends; return it.

    Without ``work_id``, polls (up to ``poll_wait_s`` seconds, else
    :class:`LookupError`) and acks one item first, and force-stops that item
    at the end if the lease was still held. ``lease.end_reason`` is ``None``
    when the lease was held to the end.
    """
    worker = worker or default_worker_id()
    polled = work_id is None
    if work_id is None:
        work_id = await _claim_one(client, environment_id, worker, poll_wait_s)
    try:
        async with keep_lease(
            client,
            environment_id,
            work_id,
            policy=policy,
            trace=trace,
            worker=worker,
            on_event=on_event,
        ) as lease:
            await anyio.sleep(duration_s)
    except LeaseNotClaimed as error:
        return error.lease
    if polled and lease.end_reason is None:
        with anyio.CancelScope(shield=True):
            await client.stop(environment_id, work_id, force=True)
    return lease


def hold_lease_sync(
    base_url: str,
    key: str,
    environment_id: str,
    work_id: str | None = None,
    *,
    duration_s: float,
    policy: str | HeartbeatPolicy = "leasekit",
    trace_path: str | Path | None = None,
    auth: Literal["bearer", "x-api-key"] = "bearer",
    seed: int | None = None,
    on_event: Callable[[LeaseEvent], object] | None = None,
) -> Lease:
    """:func:`hold_for` for plain scripts: blocks, runs its own event loop.

    ``policy`` is a :func:`~leasekit.policy.make_policy` spec or a policy;
    ``trace_path`` records a trace. Inside a running event loop (Jupyter)
    use ``await hold_for(...)`` instead; this raises :class:`RuntimeError`.
    """
    try:
        library: str | None = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library is None:
        # a Jupyter cell runs inside the kernel's running asyncio loop, outside any task
        try:
            asyncio.get_running_loop()
            library = "asyncio"
        except RuntimeError:
            pass
    if library is not None:
        raise RuntimeError(
            f"hold_lease_sync() cannot run inside a running {library} event loop "
            "(Jupyter runs one): use `await hold_for(client, ...)` instead"
        )
    chosen = make_policy(policy, rng=random.Random(seed)) if isinstance(policy, str) else policy

    async def main() -> Lease:
        writer = None
        if trace_path is not None:
            writer = TraceWriter(
                trace_path,
                TraceHeader(
                    chosen.name,
                    chosen.parameters(),
                    desired_ttl_seconds=getattr(chosen, "desired_ttl_seconds", None),
                    source="leasekit.client.hold_lease_sync",
                ),
            )
        try:
            async with LeaseClient(base_url, key, auth=auth) as client:
                return await hold_for(
                    client,
                    environment_id,
                    work_id,
                    duration_s=duration_s,
                    policy=chosen,
                    trace=writer,
                    on_event=on_event,
                )
        finally:
            if writer is not None:
                writer.close()

    return anyio.run(main)
