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

Stats and the queue limit read per-environment counters (``queue_counts``)
that every write keeps up to date in the same transaction, and list pages
walk an ``(environment_id, seq)`` index: their cost does not grow with the
queue. Sequence numbers count per environment, and work ids are random, so
nothing an environment sees counts another's items. A new file is created
mode 0600 (it holds the items' secrets); SQLite gives its WAL the same mode.

Every change runs in the store's writer, a process of its own
(:mod:`._store_process`), with group commit: the changes to leases that
arrived while a transaction ran share the next one (each in its own
savepoint, so one job's error undoes only that job), and none is answered
before that COMMIT returned. Under load, one fsync serves many heartbeats.
New items get transactions of their own, taking turns with the lease
changes (:class:`_LeasesFirst`).

Pure reads (retrieve, list, stats, the long poll's next due time) run in
the store's reader, another process with its own connection, so one
tenant's reads never queue with another tenant's heartbeats. The reads that
arrived together share one read transaction, whose WAL snapshot holds every
commit that returned before it started: a read sees every change answered
before the read arrived. A read applies a due expiry to what it answers
(the same :meth:`~leasekit.lease.LeaseRules.settle` a write applies, at the
deadline, so the answer is the one a write would persist) without writing
it; stats that find due expiries ask the writer to persist them, so they
are settled once, not at every read.

The operations are :class:`_Engine`'s methods; :class:`SqliteStore` is
what the server's event loop holds: it sends each call to the writer or the
reader and awaits the answer, and seeds items at start-up on a connection
of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import operator
import os
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ..lease import (
    IN_DEPTH,
    IN_PENDING,
    WORKERS_POLLING_WINDOW_US,
    LeaseConfig,
    LeaseRules,
    WorkRecord,
    decode_cursor,
    encode_cursor,
    expired_up_to_us,
    expiry_at_us,
    new_record,
    queue_slot,
    random_work_id,
    reclaimable_up_to_us,
    validate_list_limit,
)
from ..protocol import ApiError, ErrorType, QueueStats, WorkState
from ._pages import ItemPages
from ._store import EncodedJson, Json
from ._store_process import Job, Outcome, Role, StoreProcess

logger = logging.getLogger("leasekit.server")

_FIELDS: Final = tuple(f.name for f in dataclasses.fields(WorkRecord))
_KEY_FIELDS: Final = ("environment_id", "work_id")
assert _FIELDS[:2] == _KEY_FIELDS, "WorkRecord must start with its key fields"
_CONFLICT_RETRIES: Final = 100
MAX_BATCH: Final = 64
"""At most this many jobs share one transaction (one fsync)."""
SETTLE_AGAIN_S: Final = 1.0
"""Stats that find due expiries ask the writer to persist them at most this
often per environment (reads settle them on the fly meanwhile)."""
MAX_BULK: Final = 8
"""At most this many new items share one transaction, and none with a
change to a lease (:class:`_LeasesFirst`)."""
BUSY_TIMEOUT_MS: Final = 30_000

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS work (
    environment_id TEXT NOT NULL,
    work_id TEXT NOT NULL,
    {", ".join(f"{name}" for name in _FIELDS if name not in _KEY_FIELDS)},
    PRIMARY KEY (environment_id, work_id)
);
DROP INDEX IF EXISTS work_seq;
CREATE UNIQUE INDEX IF NOT EXISTS work_env_seq ON work (environment_id, seq);
CREATE INDEX IF NOT EXISTS work_queue ON work (environment_id, state, seq);
CREATE INDEX IF NOT EXISTS work_queue_created ON work (environment_id, state, created_at_us);
CREATE INDEX IF NOT EXISTS work_deadline ON work (environment_id, deadline_us)
    WHERE deadline_us IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue_counts (
    environment_id TEXT PRIMARY KEY,
    depth INTEGER NOT NULL,
    pending INTEGER NOT NULL
);
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
_MUTABLE_AT: Final = tuple(range(len(_KEY_FIELDS), len(_FIELDS)))


@functools.cache
def _update_sql(columns: tuple[int, ...]) -> str:
    """The conditional UPDATE of the columns at these ``_FIELDS`` positions
    (a handful of combinations occur: one per kind of change)."""
    assignments = ", ".join(f"{_FIELDS[at]} = ?" for at in columns)
    return (
        f"UPDATE work SET {assignments} "
        "WHERE environment_id = ? AND work_id = ? AND last_heartbeat IS ? AND version = ?"
    )


class _Conflict(Exception):
    """The conditional UPDATE matched no row: re-read and re-apply."""


_read_fields = operator.attrgetter(*_FIELDS)
_STATE_AT: Final = _FIELDS.index("state")
_HANDED_AT: Final = _FIELDS.index("handed_out_at_us")
_COUNT: Final = (
    "INSERT INTO queue_counts VALUES (?, ?, ?) ON CONFLICT (environment_id) "
    "DO UPDATE SET depth = depth + excluded.depth, pending = pending + excluded.pending"
)
_RECOUNT: Final = """
DELETE FROM queue_counts;
INSERT INTO queue_counts
    SELECT environment_id, SUM(handed_out_at_us IS NULL), SUM(handed_out_at_us IS NOT NULL)
    FROM work WHERE state = 'queued' GROUP BY environment_id
"""


POLLERS_PRUNE_EVERY: Final = 1024
"""Polls with a worker id between two deletions of stale pollers."""


def _prune_pollers(conn: sqlite3.Connection, environment_id: str, now_us: int) -> None:
    conn.execute(
        "DELETE FROM pollers WHERE environment_id = ? AND last_poll_us < ?",
        (environment_id, now_us - WORKERS_POLLING_WINDOW_US),
    )


def _count(conn: sqlite3.Connection, environment_id: str, slot: int, delta: int) -> None:
    """Move the environment's queue counter of ``slot`` by ``delta``."""
    if slot == IN_DEPTH:
        conn.execute(_COUNT, (environment_id, delta, 0))
    elif slot == IN_PENDING:
        conn.execute(_COUNT, (environment_id, 0, delta))


_METADATA_AT: Final = _FIELDS.index("metadata")
_EMPTY_METADATA: Final = "{}"


def _to_row(record: WorkRecord) -> tuple[Any, ...]:
    """The record as the column values of ``_FIELDS`` (the hot path: no per-field loop)."""
    values = list(_read_fields(record))
    values[_STATE_AT] = record.state.value
    metadata = record.metadata
    values[_METADATA_AT] = (
        json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
        if metadata
        else _EMPTY_METADATA
    )
    return tuple(values)


def _to_record(row: tuple[Any, ...]) -> WorkRecord:
    """The record of a row of ``_FIELDS`` (in ``WorkRecord``'s field order)."""
    values = list(row)
    values[_STATE_AT] = WorkState(row[_STATE_AT])
    text = row[_METADATA_AT]
    values[_METADATA_AT] = {} if text == _EMPTY_METADATA else json.loads(text)
    return WorkRecord(*values)


class _Loaded:
    """A record as read, with what the conditional write compares against."""

    __slots__ = ("last_heartbeat", "record", "row", "version")

    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row
        self.record = _to_record(row)
        self.last_heartbeat = self.record.last_heartbeat
        self.version = self.record.version


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def _open_database(path: Path) -> None:
    """Create the file (mode 0600) and the schema, rebuild the counters, and
    check the file is a leasekit database: a bad file fails here, at start,
    not per request."""
    try:
        # The file holds every item's secret: create it readable by its owner only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as error:
        raise ValueError(f"{path}: cannot create the database: {error}") from None
    else:
        os.close(fd)
    try:
        conn = _connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # kept in the file
            conn.execute("BEGIN IMMEDIATE")
            for statement in (*_SCHEMA.split(";"), *_RECOUNT.split(";")):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
            conn.execute(f"{_SELECT} LIMIT 0").fetchall()
            conn.execute("SELECT environment_id, worker_id, last_poll_us FROM pollers LIMIT 0")
        finally:
            conn.close()
    except sqlite3.Error as error:
        raise ValueError(f"{path}: cannot open as a leasekit database: {error}") from None


class _Engine:
    """The store's operations, each on a connection at a time ``now_us``
    (epoch microseconds), run by a storage process (``runner``). The write
    operations run in the writer's transaction (their caller holds the write
    lock); the read operations in the reader's read transaction."""

    def __init__(self, config: LeaseConfig) -> None:
        self.rules = LeaseRules(config)
        self.pages = ItemPages()  # list pages, in the reader
        self.polls_since_prune = 0  # in the writer

    # ------------------------------------------------------------------ records

    def _save(self, conn: sqlite3.Connection, loaded: _Loaded) -> None:
        """Write the record back if the rules changed it: one conditional UPDATE."""
        row = _to_row(loaded.record)
        old = loaded.row
        if row == old:
            return
        # Only the columns that changed: SQLite rewrites every index whose
        # columns an UPDATE sets, changed or not, and a renewal changes no
        # indexed column but the deadline (one WAL page less per heartbeat).
        changed = tuple(at for at in _MUTABLE_AT if row[at] != old[at])
        cursor = conn.execute(
            _update_sql(changed),
            (*(row[at] for at in changed), *row[:2], loaded.last_heartbeat, loaded.version),
        )
        if cursor.rowcount != 1:
            raise _Conflict
        was = queue_slot(old[_STATE_AT], old[_HANDED_AT])
        now = queue_slot(row[_STATE_AT], row[_HANDED_AT])
        if was != now:
            _count(conn, row[0], was, -1)
            _count(conn, row[0], now, +1)

    @staticmethod
    def _load(conn: sqlite3.Connection, environment_id: str, work_id: str) -> _Loaded:
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
        record = loaded.record
        deadline_us = record.deadline_us
        self.rules.settle(record, now_us)
        # settling moves the state (a version bump) or, at most, drops a deadline
        if record.version != loaded.version or record.deadline_us != deadline_us:
            self._save(conn, loaded)
            loaded = _Loaded(_to_row(record))
        return loaded

    @staticmethod
    def _queued(conn: sqlite3.Connection, environment_id: str) -> int:
        row = conn.execute(
            "SELECT depth + pending FROM queue_counts WHERE environment_id = ?", (environment_id,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    # ------------------------------------------------------------------ writes

    def settle_due(self, conn: sqlite3.Connection, now_us: int, environment_id: str) -> None:
        """Persist every expiry of the environment that is due."""
        rows = conn.execute(
            f"{_SELECT} WHERE environment_id = ? AND deadline_us <= ?",
            (environment_id, expired_up_to_us(now_us)),
        ).fetchall()
        for row in rows:
            loaded = _Loaded(row)
            self.rules.settle(loaded.record, now_us)
            self._save(conn, loaded)

    def enqueue(
        self,
        conn: sqlite3.Connection,
        now_us: int,
        environment_id: str,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        max_queued: int | None = None,
    ) -> Json:
        if max_queued is not None:
            queued = self._queued(conn, environment_id)
            if queued >= max_queued:
                self.settle_due(conn, now_us, environment_id)  # expiries requeue items
                queued = self._queued(conn, environment_id)
            if queued >= max_queued:
                raise ApiError(
                    ErrorType.RATE_LIMIT,
                    f"environment {environment_id!r}: {queued} work items queued, "
                    f"the limit is {max_queued}",
                )
        # Under the write lock, so unique across every process on the file.
        (seq,) = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM work WHERE environment_id = ?",
            (environment_id,),
        ).fetchone()
        record = new_record(
            environment_id,
            random_work_id(),
            seq,
            now_us,
            secret=secrets.token_urlsafe(24),
            ttl_seconds=self.rules.config.default_ttl_seconds,
            session_id=session_id,
            metadata=metadata,
        )
        conn.execute(_INSERT, _to_row(record))
        _count(conn, environment_id, IN_DEPTH, +1)
        return record.to_item().to_json()

    def poll(
        self,
        conn: sqlite3.Connection,
        now_us: int,
        environment_id: str,
        worker_id: str | None,
        reclaim_older_than_ms: int,
    ) -> Json | None:
        rules = self.rules
        if worker_id is not None:
            conn.execute(
                "INSERT INTO pollers VALUES (?, ?, ?) ON CONFLICT (environment_id, worker_id) "
                "DO UPDATE SET last_poll_us = excluded.last_poll_us",
                (environment_id, worker_id, now_us),
            )
            self.polls_since_prune += 1
            if self.polls_since_prune >= POLLERS_PRUNE_EVERY:
                # Worker ids come from clients: forget stale ones now and
                # then, not only when someone asks for stats.
                self.polls_since_prune = 0
                _prune_pollers(conn, environment_id, now_us)
        self.settle_due(conn, now_us, environment_id)
        # Coarse filter in SQL (not handed out, or long enough ago to be
        # reclaimed); the rules decide which one may go.
        cursor = conn.execute(
            f"{_SELECT} WHERE environment_id = ? AND state = 'queued' "
            "AND (handed_out_at_us IS NULL OR handed_out_at_us <= ?) ORDER BY seq",
            (environment_id, reclaimable_up_to_us(now_us, reclaim_older_than_ms)),
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

    def ack(self, conn: sqlite3.Connection, now_us: int, environment_id: str, work_id: str) -> Json:
        loaded = self._load_settled(conn, environment_id, work_id, now_us)
        self.rules.ack(loaded.record, now_us)
        self._save(conn, loaded)
        return loaded.record.to_item().to_json()

    def heartbeat(
        self,
        conn: sqlite3.Connection,
        now_us: int,
        environment_id: str,
        work_id: str,
        expected_last_heartbeat: str | None,
        desired_ttl_seconds: int | None,
    ) -> Json:
        loaded = self._load_settled(conn, environment_id, work_id, now_us)
        answer = self.rules.heartbeat(
            loaded.record, now_us, expected_last_heartbeat, desired_ttl_seconds
        )
        self._save(conn, loaded)
        return answer.to_json()

    def stop(
        self, conn: sqlite3.Connection, now_us: int, environment_id: str, work_id: str, force: bool
    ) -> Json:
        loaded = self._load_settled(conn, environment_id, work_id, now_us)
        self.rules.stop(loaded.record, now_us, force=force)
        self._save(conn, loaded)
        return loaded.record.to_item().to_json()

    def update_metadata(
        self,
        conn: sqlite3.Connection,
        now_us: int,
        environment_id: str,
        work_id: str,
        patch: Mapping[str, str | None],
    ) -> Json:
        loaded = self._load_settled(conn, environment_id, work_id, now_us)
        self.rules.update_metadata(loaded.record, patch)
        self._save(conn, loaded)
        return loaded.record.to_item().to_json()

    @staticmethod
    def change_token(conn: sqlite3.Connection, _now_us: int) -> int:
        """Changes when another connection (another process) commits."""
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        return int(version)

    # ------------------------------------------------------------------ reads

    def _as_of(
        self, conn: sqlite3.Connection, environment_id: str, work_id: str, now_us: int
    ) -> WorkRecord:
        """A record as a write at ``now_us`` would find it (due expiry
        applied), without writing anything."""
        record = self._load(conn, environment_id, work_id).record
        self.rules.settle(record, now_us)
        return record

    def retrieve(
        self, conn: sqlite3.Connection, now_us: int, environment_id: str, work_id: str
    ) -> Json:
        return self._as_of(conn, environment_id, work_id, now_us).to_item().to_json()

    def list_page(
        self, conn: sqlite3.Connection, now_us: int, environment_id: str, after: int, size: int
    ) -> EncodedJson:
        rows = conn.execute(
            f"{_SELECT} WHERE environment_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (environment_id, after, size + 1),
        ).fetchall()
        chosen = []
        for row in rows[:size]:
            record = _to_record(row)
            stored = record.version
            self.rules.settle(record, now_us)
            # A copy settled here: the stored version and how far the
            # settle moved it name its content (a writer may have saved
            # another change as the same version since this was read).
            chosen.append((record, (stored, record.version)))
        cursor = encode_cursor(chosen[-1][0].seq) if len(rows) > size else None
        return self.pages.page(chosen, cursor)

    def stats(
        self, conn: sqlite3.Connection, now_us: int, environment_id: str
    ) -> tuple[Json, bool]:
        """The environment's stats, and whether due expiries were found
        (which the writer should then persist)."""
        # Counters and index lookups: the cost does not grow with the queue.
        counts = conn.execute(
            "SELECT depth, pending FROM queue_counts WHERE environment_id = ?",
            (environment_id,),
        ).fetchone()
        depth, pending = counts or (0, 0)
        # The counters hold what is written; expiries that are due but
        # not yet written move items between the counts here.
        cutoff = expired_up_to_us(now_us)
        due = conn.execute(
            f"{_SELECT} WHERE environment_id = ? AND deadline_us <= ?",
            (environment_id, cutoff),
        ).fetchall()
        oldest_due: list[int] = []
        for row in due:
            record = _to_record(row)
            self.rules.settle(record, now_us)
            was = queue_slot(row[_STATE_AT], row[_HANDED_AT])
            slot = queue_slot(record.state, record.handed_out_at_us)
            depth += (slot == IN_DEPTH) - (was == IN_DEPTH)
            pending += (slot == IN_PENDING) - (was == IN_PENDING)
            if slot:
                oldest_due.append(record.created_at_us)
        (oldest,) = conn.execute(
            "SELECT MIN(created_at_us) FROM work WHERE environment_id = ? AND state = 'queued'"
            " AND (deadline_us IS NULL OR deadline_us > ?)",
            (environment_id, cutoff),
        ).fetchone()
        if oldest_due:
            oldest = min(oldest_due) if oldest is None else min(oldest, *oldest_due)
        (polling,) = conn.execute(
            "SELECT COUNT(*) FROM pollers WHERE environment_id = ? AND last_poll_us >= ?",
            (environment_id, now_us - WORKERS_POLLING_WINDOW_US),
        ).fetchone()
        return QueueStats(depth, pending, oldest, polling).to_json(), bool(due)

    @staticmethod
    def next_due_us(
        conn: sqlite3.Connection, _now_us: int, environment_id: str, reclaim_older_than_ms: int
    ) -> int | None:
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
            candidates.append(expiry_at_us(deadline))
        if handed is not None:
            candidates.append(handed + reclaim_older_than_ms * 1_000)
        return min(candidates) if candidates else None


_WRITES: Final = frozenset(
    {"enqueue", "poll", "ack", "heartbeat", "stop", "update_metadata", "settle_due"}
)
"""The writer's operations that change the database."""
_WRITER_OPERATIONS: Final = _WRITES | {"change_token"}
_BULK: Final = frozenset({"enqueue"})
"""The writer's operations that a flooding tenant makes in bulk."""
_READER_OPERATIONS: Final = frozenset({"retrieve", "list_page", "stats", "next_due_us"})


def _now_us(arrival_us: int) -> int:
    """The time a job runs at: the wall clock now, never before the request
    arrived (read under the write lock for a change, so decisions follow
    commit order across every process on the file)."""
    return max(arrival_us, time.time_ns() // 1000)


def _apply(conn: sqlite3.Connection, engine: _Engine, job: Job) -> Outcome:
    """Run one job in a savepoint; re-run it when a conditional write lost
    (someone changed the record between our read and our write).

    An :class:`ApiError` keeps the job's writes: the rules raise only
    before changing anything, and the expiry they settled first must
    persist. Any other error undoes the job alone.
    """
    _, operation, arrival_us, args = job
    work = getattr(engine, operation)
    for _ in range(_CONFLICT_RETRIES):
        conn.execute("SAVEPOINT job")
        try:
            result = work(conn, _now_us(arrival_us), *args)
        except _Conflict:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            continue
        except ApiError as error:
            conn.execute("RELEASE job")
            return None, error
        except sqlite3.Error:
            raise  # the transaction itself is in doubt: fail the batch
        except Exception as error:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            return None, error
        conn.execute("RELEASE job")
        return result, None
    return None, ApiError(ErrorType.OVERLOADED, "storage: too many concurrent changes, retry")


def _run_writes(conn: sqlite3.Connection, engine: _Engine, batch: list[Job]) -> list[Outcome]:
    """The writer's batch: group commit. Every job of the batch runs in one
    transaction (each in its own savepoint), and none is answered before
    the COMMIT that made it durable returned."""
    if any(operation not in _WRITER_OPERATIONS for _, operation, _, _ in batch):
        raise ValueError(f"storage writer: unknown operation in {batch!r:.200}")
    outcomes: list[Outcome] = []
    if not any(operation in _WRITES for _, operation, _, _ in batch):
        # Nothing to change: no write lock, no fsync.
        for _, operation, arrival_us, args in batch:
            read = getattr(engine, operation)
            try:
                outcomes.append((read(conn, _now_us(arrival_us), *args), None))
            except Exception as error:
                outcomes.append((None, error))
        return outcomes
    try:
        conn.execute("BEGIN IMMEDIATE")
        for job in batch:
            outcomes.append(_apply(conn, engine, job))
        conn.execute("COMMIT")
    except sqlite3.Error as error:
        # Nothing of this batch is committed: every job fails, none answers 200.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        failure = ApiError(ErrorType.OVERLOADED, f"storage unavailable, retry: {error}")
        outcomes = [(None, failure)] * len(batch)
    return outcomes


def _run_reads(conn: sqlite3.Connection, engine: _Engine, batch: list[Job]) -> list[Outcome]:
    """The reader's batch: the reads that arrived together share one read
    transaction, whose snapshot holds every commit that returned before the
    batch started (so before each of its reads was sent)."""
    if any(operation not in _READER_OPERATIONS for _, operation, _, _ in batch):
        raise ValueError(f"storage reader: unknown operation in {batch!r:.200}")
    outcomes: list[Outcome] = []
    try:
        conn.execute("BEGIN")
        for _, operation, arrival_us, args in batch:
            read = getattr(engine, operation)
            try:
                outcomes.append((read(conn, _now_us(arrival_us), *args), None))
            except sqlite3.Error:
                raise
            except Exception as error:
                outcomes.append((None, error))
        conn.execute("COMMIT")
    except sqlite3.Error as error:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        failure = ApiError(ErrorType.OVERLOADED, f"storage unavailable, retry: {error}")
        outcomes = [(None, failure)] * len(batch)
    return outcomes


def _in_order(waiting: deque[Job]) -> list[Job]:
    """The reader's batches: the reads that waited, in arrival order."""
    return [waiting.popleft() for _ in range(min(MAX_BATCH, len(waiting)))]


class _LeasesFirst:
    """The writer's batches: the changes to leases that wait (heartbeats,
    polls, acks, ...) go in one transaction, and new items in another, at
    most :data:`MAX_BULK` of them; when both wait, the two kinds take turns.

    A tenant flooding creates (each a new row in five indexes) then delays
    another tenant's heartbeat by one small transaction at most, not by a
    batch of its creates, and a flood of heartbeats cannot starve creates.
    Requests that wait together are concurrent: any order of them is one a
    client could have seen.
    """

    def __init__(self) -> None:
        self.bulk_next = False

    def __call__(self, waiting: deque[Job]) -> list[Job]:
        bulk = [job for job in waiting if job[1] in _BULK][:MAX_BULK]
        leases = [job for job in waiting if job[1] not in _BULK][:MAX_BATCH]
        taken = bulk if bulk and (self.bulk_next or not leases) else leases
        self.bulk_next = taken is leases
        chosen = {id(job) for job in taken}
        rest = [job for job in waiting if id(job) not in chosen]
        waiting.clear()
        waiting.extend(rest)
        return taken


def role_of(name: str, setup: tuple[str, LeaseConfig]) -> Role:
    """What a storage process does (``_store_process``): ``name`` is
    ``"writer"`` or ``"reader"``, ``setup`` the database path and the lease
    settings."""
    path, config = setup
    conn = _connect(Path(path))
    engine = _Engine(config)
    if name == "writer":
        conn.execute("PRAGMA synchronous=FULL")
        return Role(_LeasesFirst(), functools.partial(_run_writes, conn, engine), conn.close)
    if name == "reader":
        conn.execute("PRAGMA query_only=ON")
        return Role(_in_order, functools.partial(_run_reads, conn, engine), conn.close)
    raise ValueError(f"storage process: unknown role {name!r}")


class SqliteStore:
    """The store on a SQLite file: its writer and its reader are processes
    of their own (:mod:`._store_process`); the server's event loop only
    sends them requests and hands out their answers."""

    recheck_s: float | None = 0.1
    """Other processes on the same file enqueue without waking our long polls."""

    def __init__(self, path: Path, config: LeaseConfig) -> None:
        self.path = path
        self.config = config
        _open_database(path)
        setup = (str(path), config)
        self._writer = StoreProcess("writer", setup)
        self._reader = StoreProcess("reader", setup)
        self._closed = False
        # When a read last asked the writer to persist an environment's expiries.
        self._settle_asked: dict[str, float] = {}

    def add_environment(self, environment_id: str) -> None:
        pass  # environments are the keys' business; rows carry their environment

    def seed(self, environment_id: str, count: int, now_us: int) -> None:
        """At start-up, on a connection of this process: one transaction."""
        conn = _connect(self.path)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            jobs: list[Job] = [(n, "enqueue", now_us, (environment_id,)) for n in range(count)]
            for _, error in _run_writes(conn, _Engine(self.config), jobs):
                if error is not None:
                    raise error
        finally:
            conn.close()

    def _persist_expiries(self, environment_id: str) -> None:
        """Ask the writer to persist the environment's due expiries (answers
        nobody; asked at most once per :data:`SETTLE_AGAIN_S` per environment,
        however many stats calls find them)."""
        now = time.monotonic()
        if now - self._settle_asked.get(environment_id, -SETTLE_AGAIN_S) < SETTLE_AGAIN_S:
            return
        self._settle_asked[environment_id] = now

        def done(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is not None:
                logger.warning("SQLite writer: persisting expiries failed: %s", future.exception())

        self._writer.submit("settle_due", 0, environment_id).add_done_callback(done)

    async def change_token(self) -> int:
        """Changes when another connection (another process) commits."""
        return int(await self._writer.call("change_token", 0))

    async def enqueue(
        self,
        environment_id: str,
        now_us: int,
        session_id: str | None,
        metadata: Mapping[str, str] | None,
        max_queued: int | None = None,
    ) -> Json:
        answer: Json = await self._writer.call(
            "enqueue", now_us, environment_id, session_id, metadata, max_queued
        )
        return answer

    async def poll(
        self, environment_id: str, now_us: int, worker_id: str | None, reclaim_older_than_ms: int
    ) -> Json | None:
        answer: Json | None = await self._writer.call(
            "poll", now_us, environment_id, worker_id, reclaim_older_than_ms
        )
        return answer

    async def next_due_us(self, environment_id: str, reclaim_older_than_ms: int) -> int | None:
        answer: int | None = await self._reader.call(
            "next_due_us", 0, environment_id, reclaim_older_than_ms
        )
        return answer

    async def ack(self, environment_id: str, work_id: str, now_us: int) -> Json:
        answer: Json = await self._writer.call("ack", now_us, environment_id, work_id)
        return answer

    async def heartbeat(
        self,
        environment_id: str,
        work_id: str,
        now_us: int,
        expected_last_heartbeat: str | None,
        desired_ttl_seconds: int | None,
    ) -> Json:
        answer: Json = await self._writer.call(
            "heartbeat",
            now_us,
            environment_id,
            work_id,
            expected_last_heartbeat,
            desired_ttl_seconds,
        )
        return answer

    async def stop(self, environment_id: str, work_id: str, now_us: int, force: bool) -> Json:
        answer: Json = await self._writer.call("stop", now_us, environment_id, work_id, force)
        return answer

    async def retrieve(self, environment_id: str, work_id: str, now_us: int) -> Json:
        answer: Json = await self._reader.call("retrieve", now_us, environment_id, work_id)
        return answer

    async def update_metadata(
        self, environment_id: str, work_id: str, now_us: int, patch: Mapping[str, str | None]
    ) -> Json:
        answer: Json = await self._writer.call(
            "update_metadata", now_us, environment_id, work_id, dict(patch)
        )
        return answer

    async def list(
        self, environment_id: str, now_us: int, limit: int | None, page: str | None
    ) -> EncodedJson:
        size = validate_list_limit(limit)
        after = decode_cursor(page)
        page_json: EncodedJson = await self._reader.call(
            "list_page", now_us, environment_id, after, size
        )
        return page_json

    async def stats(self, environment_id: str, now_us: int) -> Json:
        answer: Json
        due: bool
        answer, due = await self._reader.call("stats", now_us, environment_id)
        if due:
            self._persist_expiries(environment_id)
        return answer

    def close(self) -> None:
        """Finish the requests sent, then stop the storage processes (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._reader.close()
        self._writer.close()
