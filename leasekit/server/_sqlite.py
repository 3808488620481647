"""The SQLite store: durable, and correct with several server processes on one file.

Each operation is one ``BEGIN IMMEDIATE`` transaction: load the
:class:`~leasekit.lease.WorkRecord`, let :class:`~leasekit.lease.LeaseRules`
change it, and write it back with ONE conditional ``UPDATE ... WHERE
last_heartbeat IS ? AND version = ?``. The database does the compare-and-set;
an affected row count of 0 means someone else changed the record, and the
operation is re-read and re-applied. The write lock already excludes that
between processes; the condition is the second, independent guard.

WAL mode with ``synchronous=FULL``: a transaction that returned from COMMIT
survives a kill -9 of the server (and a power cut), so a 200 means committed.

Expiry is lazy: every touch settles the record, and poll, list and stats
first settle every record whose ``deadline_us`` (indexed) has passed.

All database work runs on one dedicated thread per store, off the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from ..lease import (
    WORKERS_POLLING_WINDOW_US,
    LeaseConfig,
    LeaseRules,
    WorkRecord,
    decode_cursor,
    encode_cursor,
    queue_stats,
    validate_list_limit,
    validate_metadata,
)
from ..protocol import ApiError, ErrorType, WorkList, WorkState
from ._store import Json

T = TypeVar("T")

_FIELDS: Final = tuple(f.name for f in dataclasses.fields(WorkRecord))
_KEY_FIELDS: Final = ("environment_id", "work_id")
_MUTABLE: Final = tuple(name for name in _FIELDS if name not in _KEY_FIELDS)
_CONFLICT_RETRIES: Final = 100
BUSY_TIMEOUT_MS: Final = 30_000

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS work (
    environment_id TEXT NOT NULL,
    work_id TEXT NOT NULL,
    {", ".join(f"{name}" for name in _FIELDS if name not in _KEY_FIELDS)},
    PRIMARY KEY (environment_id, work_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS work_seq ON work (seq);
CREATE INDEX IF NOT EXISTS work_queue ON work (environment_id, state, seq);
CREATE INDEX IF NOT EXISTS work_deadline ON work (environment_id, deadline_us)
    WHERE deadline_us IS NOT NULL;
CREATE TABLE IF NOT EXISTS pollers (
    environment_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    last_poll_us INTEGER NOT NULL,
    PRIMARY KEY (environment_id, worker_id)
);
"""
_SELECT: Final = f"SELECT {', '.join(_FIELDS)} FROM work"
_INSERT: Final = (
    f"INSERT INTO work ({', '.join(_FIELDS)}) VALUES ({', '.join('?' for _ in _FIELDS)})"
)
_UPDATE: Final = (
    f"UPDATE work SET {', '.join(f'{name} = ?' for name in _MUTABLE)} "
    "WHERE environment_id = ? AND work_id = ? AND last_heartbeat IS ? AND version = ?"
)


class _Conflict(Exception):
    """The conditional UPDATE matched no row: re-read and re-apply."""


def _to_row(record: WorkRecord) -> tuple[Any, ...]:
    values = []
    for name in _FIELDS:
        value = getattr(record, name)
        if name == "metadata":
            value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        elif name == "state":
            value = value.value
        values.append(value)
    return tuple(values)


def _to_record(row: tuple[Any, ...]) -> WorkRecord:
    fields = dict(zip(_FIELDS, row, strict=True))
    fields["state"] = WorkState(fields["state"])
    fields["metadata"] = json.loads(fields["metadata"])
    return WorkRecord(**fields)


class _Loaded:
    """A record as read, with what the conditional write compares against."""

    __slots__ = ("last_heartbeat", "record", "row", "version")

    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row
        self.record = _to_record(row)
        self.last_heartbeat = self.record.last_heartbeat
        self.version = self.record.version


class SqliteStore:
    recheck_s: float | None = 0.1
    """Other processes on the same file enqueue without waking our long polls."""

    def __init__(self, path: Path, config: LeaseConfig) -> None:
        self.path = path
        self.rules = LeaseRules(config)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="leasekit-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._run(self._open)

    # ------------------------------------------------------------------ plumbing

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the store's thread and wait (start-up and seeding only)."""
        return self._executor.submit(fn, *args).result()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise ValueError(f"{self.path}: cannot open as a leasekit database: {error}") from None
        self._conn = conn

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction; re-run it when a conditional
        write lost (another writer changed the record in between).

        An :class:`ApiError` still commits: the rules raise only before
        changing anything, and the expiry they settled first must persist.
        """
        conn = self._conn
        assert conn is not None
        for _ in range(_CONFLICT_RETRIES):
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except _Conflict:
                conn.execute("ROLLBACK")
                continue
            except ApiError:
                conn.execute("COMMIT")
                raise
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        raise ApiError(ErrorType.OVERLOADED, "storage: too many concurrent changes, retry")

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._call(self._transaction, fn)
        except sqlite3.OperationalError as error:
            # "database is locked" after the busy timeout: the client may retry.
            raise ApiError(ErrorType.OVERLOADED, f"storage busy: {error}") from None

    def _save(self, conn: sqlite3.Connection, loaded: _Loaded) -> None:
        """Write the record back if the rules changed it: one conditional UPDATE."""
        row = _to_row(loaded.record)
        if row == loaded.row:
            return
        values = dict(zip(_FIELDS, row, strict=True))
        cursor = conn.execute(
            _UPDATE,
            (
                *(values[name] for name in _MUTABLE),
                values["environment_id"],
                values["work_id"],
                loaded.last_heartbeat,
                loaded.version,
            ),
        )
        if cursor.rowcount != 1:
            raise _Conflict

    def _load(self, conn: sqlite3.Connection, environment_id: str, work_id: str) -> _Loaded:
        row = conn.execute(
            f"{_SELECT} WHERE environment_id = ? AND work_id = ?", (environment_id, work_id)
        ).fetchone()
        if row is None:
            raise ApiError(ErrorType.NOT_FOUND, f"work item {work_id!r:.100} not found")
        return _Loaded(row)

    def _load_settled(
        self, conn: sqlite3.Connection, environment_id: str, work_id: str, now_us: int
    ) -> _Loaded:
        """Load a record and persist any expiry that is due; the result is
        ready for the next change (its compare values are the stored ones)."""
        loaded = self._load(conn, environment_id, work_id)
        self.rules.settle(loaded.record, now_us)
        if _to_row(loaded.record) != loaded.row:
            self._save(conn, loaded)
            loaded = _Loaded(_to_row(loaded.record))
        return loaded

    def _settle_due(self, conn: sqlite3.Connection, environment_id: str, now_us: int) -> None:
        rows = conn.execute(
            f"{_SELECT} WHERE environment_id = ? AND deadline_us < ?", (environment_id, now_us)
        ).fetchall()
        for row in rows:
            loaded = _Loaded(row)
            self.rules.settle(loaded.record, now_us)
            self._save(conn, loaded)

    # ------------------------------------------------------------------ operations

    def add_environment(self, environment_id: str) -> None:
        pass  # environments are the keys' business; rows carry their environment

    def seed(self, environment_id: str, count: int, now_us: int) -> None:
        for _ in range(count):
            self._run(self._transaction, lambda c: self._enqueue(c, environment_id, now_us))

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        environment_id: str,
        now_us: int,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Json:
        if metadata is not None:
            validate_metadata(metadata, where="metadata")
        # Under the write lock, so unique across every process on the file.
        (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM work").fetchone()
        work_id = f"work_{seq:08d}"
        record = WorkRecord(
            environment_id=environment_id,
            work_id=work_id,
            session_id=session_id or f"session_{seq:08d}",
            secret=secrets.token_urlsafe(24),
            created_at_us=now_us,
            seq=seq,
            ttl_seconds=self.rules.config.default_ttl_seconds,
            metadata=dict(metadata or {}),
        )
        conn.execute(_INSERT, _to_row(record))
        return record.to_item().to_json()

    async def enqueue(
        self,
        environment_id: str,
        now_us: int,
        session_id: str | None,
        metadata: Mapping[str, str] | None,
    ) -> Json:
        return await self._write(
            lambda c: self._enqueue(c, environment_id, now_us, session_id, metadata)
        )

    async def poll(
        self, environment_id: str, now_us: int, worker_id: str | None, reclaim_older_than_ms: int
    ) -> Json | None:
        rules = self.rules

        def poll(conn: sqlite3.Connection) -> Json | None:
            if worker_id is not None:
                conn.execute(
                    "INSERT INTO pollers VALUES (?, ?, ?) ON CONFLICT (environment_id, worker_id) "
                    "DO UPDATE SET last_poll_us = excluded.last_poll_us",
                    (environment_id, worker_id, now_us),
                )
            self._settle_due(conn, environment_id, now_us)
            # Coarse filter in SQL; the rules decide which one may go.
            cursor = conn.execute(
                f"{_SELECT} WHERE environment_id = ? AND state = 'queued' ORDER BY seq",
                (environment_id,),
            )
            while rows := cursor.fetchmany(64):
                for row in rows:
                    loaded = _Loaded(row)
                    if rules.can_hand_out(loaded.record, now_us, reclaim_older_than_ms):
                        cursor.close()
                        rules.hand_out(loaded.record, now_us, worker_id)
                        self._save(conn, loaded)
                        return loaded.record.to_item(with_secret=True).to_json()
            return None

        return await self._write(poll)

    async def next_due_us(self, environment_id: str, reclaim_older_than_ms: int) -> int | None:
        def due(conn: sqlite3.Connection) -> int | None:
            (deadline,) = conn.execute(
                "SELECT MIN(deadline_us) FROM work WHERE environment_id = ? "
                "AND deadline_us IS NOT NULL",
                (environment_id,),
            ).fetchone()
            (handed,) = conn.execute(
                "SELECT MIN(handed_out_at_us) FROM work WHERE environment_id = ? "
                "AND state = 'queued' AND handed_out_at_us IS NOT NULL",
                (environment_id,),
            ).fetchone()
            candidates = []
            if deadline is not None:
                candidates.append(deadline + 1)  # good up to and including the deadline
            if handed is not None:
                candidates.append(handed + reclaim_older_than_ms * 1_000)
            return min(candidates) if candidates else None

        def read(_: None = None) -> int | None:
            assert self._conn is not None
            return due(self._conn)

        return await self._call(read)

    async def ack(self, environment_id: str, work_id: str, now_us: int) -> Json:
        def ack(conn: sqlite3.Connection) -> Json:
            loaded = self._load_settled(conn, environment_id, work_id, now_us)
            self.rules.ack(loaded.record, now_us)
            self._save(conn, loaded)
            return loaded.record.to_item().to_json()

        return await self._write(ack)

    async def heartbeat(
        self,
        environment_id: str,
        work_id: str,
        now_us: int,
        expected_last_heartbeat: str | None,
        desired_ttl_seconds: int | None,
    ) -> Json:
        def heartbeat(conn: sqlite3.Connection) -> Json:
            loaded = self._load_settled(conn, environment_id, work_id, now_us)
            answer = self.rules.heartbeat(
                loaded.record, now_us, expected_last_heartbeat, desired_ttl_seconds
            )
            self._save(conn, loaded)
            return answer.to_json()

        return await self._write(heartbeat)

    async def stop(self, environment_id: str, work_id: str, now_us: int, force: bool) -> Json:
        def stop(conn: sqlite3.Connection) -> Json:
            loaded = self._load_settled(conn, environment_id, work_id, now_us)
            self.rules.stop(loaded.record, now_us, force=force)
            self._save(conn, loaded)
            return loaded.record.to_item().to_json()

        return await self._write(stop)

    async def retrieve(self, environment_id: str, work_id: str, now_us: int) -> Json:
        def retrieve(conn: sqlite3.Connection) -> Json:
            loaded = self._load_settled(conn, environment_id, work_id, now_us)
            return loaded.record.to_item().to_json()

        return await self._write(retrieve)

    async def update_metadata(
        self, environment_id: str, work_id: str, now_us: int, patch: Mapping[str, str | None]
    ) -> Json:
        def update(conn: sqlite3.Connection) -> Json:
            loaded = self._load_settled(conn, environment_id, work_id, now_us)
            self.rules.update_metadata(loaded.record, patch)
            self._save(conn, loaded)
            return loaded.record.to_item().to_json()

        return await self._write(update)

    async def list(
        self, environment_id: str, now_us: int, limit: int | None, page: str | None
    ) -> Json:
        page_size = validate_list_limit(limit)
        after = decode_cursor(page)

        def page_of(conn: sqlite3.Connection) -> Json:
            self._settle_due(conn, environment_id, now_us)
            rows = conn.execute(
                f"{_SELECT} WHERE environment_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (environment_id, after, page_size + 1),
            ).fetchall()
            chosen = [_to_record(row) for row in rows[:page_size]]
            cursor = encode_cursor(chosen[-1].seq) if len(rows) > page_size else None
            return WorkList(tuple(r.to_item() for r in chosen), cursor).to_json()

        return await self._write(page_of)

    async def stats(self, environment_id: str, now_us: int) -> Json:
        def stats(conn: sqlite3.Connection) -> Json:
            self._settle_due(conn, environment_id, now_us)
            conn.execute(
                "DELETE FROM pollers WHERE environment_id = ? AND last_poll_us < ?",
                (environment_id, now_us - WORKERS_POLLING_WINDOW_US),
            )
            records = [
                _to_record(row)
                for row in conn.execute(
                    f"{_SELECT} WHERE environment_id = ? AND state = 'queued'", (environment_id,)
                )
            ]
            poll_times = [
                at
                for (at,) in conn.execute(
                    "SELECT last_poll_us FROM pollers WHERE environment_id = ?", (environment_id,)
                )
            ]
            return queue_stats(records, poll_times, now_us).to_json()

        return await self._write(stats)

    def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            self._run(close)
        except RuntimeError:  # already shut down
            return
        self._executor.shutdown(wait=True)
