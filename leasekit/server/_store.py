"""The storage interface the HTTP layer drives; see ``_memory`` and ``_sqlite``.

Every method takes ``now_us`` (the caller's wall clock, epoch microseconds)
and returns JSON-ready answers, so a store can do all of its work, including
serialisation, off the event loop. Errors are :class:`~leasekit.protocol.ApiError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

Json = dict[str, Any]


class EncodedJson(bytes):
    """An answer already encoded as the server sends JSON (compact, UTF-8):
    the HTTP layer sends these bytes as they are. List pages come this way
    (:mod:`._pages`)."""


class Store(Protocol):
    recheck_s: float | None
    """How often a waiting long poll looks again for changes that this
    process cannot see (other processes on one SQLite file); ``None`` when
    every change goes through this store and wakes the poll itself."""

    def add_environment(self, environment_id: str) -> None: ...

    def seed(self, environment_id: str, count: int, now_us: int) -> None:
        """Create ``count`` queued items now, synchronously (at start-up)."""

    async def enqueue(
        self,
        environment_id: str,
        now_us: int,
        session_id: str | None,
        metadata: Mapping[str, str] | None,
        max_queued: int | None = None,
    ) -> Json:
        """Create a queued item (fields checked by :func:`leasekit.lease.new_record`);
        429 when the environment already has ``max_queued`` queued items."""

    async def poll(
        self, environment_id: str, now_us: int, worker_id: str | None, reclaim_older_than_ms: int
    ) -> Json | None: ...

    async def next_due_us(self, environment_id: str, reclaim_older_than_ms: int) -> int | None: ...

    async def change_token(self) -> int:
        """A value that changes when someone outside this store (another
        process) changed the data; lets a waiting long poll skip a look."""

    async def ack(self, environment_id: str, work_id: str, now_us: int) -> Json: ...

    async def heartbeat(
        self,
        environment_id: str,
        work_id: str,
        now_us: int,
        expected_last_heartbeat: str | None,
        desired_ttl_seconds: int | None,
    ) -> Json: ...

    async def stop(self, environment_id: str, work_id: str, now_us: int, force: bool) -> Json: ...

    async def retrieve(self, environment_id: str, work_id: str, now_us: int) -> Json: ...

    async def update_metadata(
        self, environment_id: str, work_id: str, now_us: int, patch: Mapping[str, str | None]
    ) -> Json: ...

    async def list(
        self, environment_id: str, now_us: int, limit: int | None, page: str | None
    ) -> Json | EncodedJson: ...

    async def stats(self, environment_id: str, now_us: int) -> Json: ...

    def close(self) -> None: ...
