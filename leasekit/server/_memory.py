"""The memory store: a :class:`~leasekit.lease.LeaseBook`, driven from the
event loop. Every call runs to completion without awaiting, so requests on
one loop are atomic with respect to each other."""

from __future__ import annotations

from collections.abc import Mapping

from ..lease import LeaseBook, LeaseConfig, random_work_id
from ._pages import ItemPages
from ._store import EncodedJson, Json


class MemoryStore:
    recheck_s: float | None = None

    def __init__(self, config: LeaseConfig) -> None:
        self.book = LeaseBook(config, work_ids=random_work_id)
        self._pages = ItemPages()

    def add_environment(self, environment_id: str) -> None:
        self.book.add_environment(environment_id)

    def seed(self, environment_id: str, count: int, now_us: int) -> None:
        for _ in range(count):
            self.book.enqueue(environment_id, now_us)

    async def enqueue(
        self,
        environment_id: str,
        now_us: int,
        session_id: str | None,
        metadata: Mapping[str, str] | None,
        max_queued: int | None = None,
    ) -> Json:
        record = self.book.enqueue(
            environment_id, now_us, session_id=session_id, metadata=metadata, max_queued=max_queued
        )
        return record.to_item().to_json()

    async def poll(
        self, environment_id: str, now_us: int, worker_id: str | None, reclaim_older_than_ms: int
    ) -> Json | None:
        record = self.book.poll(
            environment_id,
            now_us,
            worker_id=worker_id,
            reclaim_older_than_ms=reclaim_older_than_ms,
        )
        return None if record is None else record.to_item(with_secret=True).to_json()

    async def next_due_us(self, environment_id: str, reclaim_older_than_ms: int) -> int | None:
        return self.book.next_due_us(environment_id, reclaim_older_than_ms)

    async def change_token(self) -> int:
        return 0  # nobody else changes this book

    async def ack(self, environment_id: str, work_id: str, now_us: int) -> Json:
        return self.book.ack(environment_id, work_id, now_us).to_item().to_json()

    async def heartbeat(
        self,
        environment_id: str,
        work_id: str,
        now_us: int,
        expected_last_heartbeat: str | None,
        desired_ttl_seconds: int | None,
    ) -> Json:
        answer = self.book.heartbeat(
            environment_id, work_id, now_us, expected_last_heartbeat, desired_ttl_seconds
        )
        return answer.to_json()

    async def stop(self, environment_id: str, work_id: str, now_us: int, force: bool) -> Json:
        return self.book.stop(environment_id, work_id, now_us, force=force).to_item().to_json()

    async def retrieve(self, environment_id: str, work_id: str, now_us: int) -> Json:
        return self.book.record(environment_id, work_id, now_us).to_item().to_json()

    async def update_metadata(
        self, environment_id: str, work_id: str, now_us: int, patch: Mapping[str, str | None]
    ) -> Json:
        record = self.book.update_metadata(environment_id, work_id, now_us, patch)
        return record.to_item().to_json()

    async def list(
        self, environment_id: str, now_us: int, limit: int | None, page: str | None
    ) -> EncodedJson:
        records, cursor = self.book.list_records(environment_id, now_us, limit=limit, page=page)
        # Every change of a live record bumps its version.
        return self._pages.page(((r, r.version) for r in records), cursor)

    async def stats(self, environment_id: str, now_us: int) -> Json:
        return self.book.stats(environment_id, now_us).to_json()

    def close(self) -> None:
        pass
