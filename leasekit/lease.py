"""The server side of the work-lease protocol, sans-I/O: one state machine.

Reference semantics (docs/protocol.md §2 (reference semantics)). The hosted service may differ;
these are leasekit's documented choices.

Nothing here reads a clock or does I/O. Every operation takes ``now_us``,
integer microseconds since the Unix epoch, so the same rules run on the wall
clock (the reference server) and on simulated time (the simulator).

Three layers, each usable alone:

* :data:`TRANSITIONS`: the table of ``(state, event) -> (next state, effect)``.
  It is the single place where the lifecycle is written; the code below looks
  every move up in it, and :func:`state_diagram` draws the docs' diagram
  from it. A pair that is not in the table is refused: a heartbeat with 412,
  an ack or stop with 409.
* :class:`LeaseRules`: applies the table to one :class:`WorkRecord`
  (validation, expiry, heartbeat compare-and-set, TTL clamping). A storage
  layer that keeps records elsewhere (SQLite) loads a record, lets the rules
  mutate it, and writes it back with a compare-and-set on ``version``.
* :class:`LeaseBook`: an in-memory store of many environments' work items
  with a queue, long-poll hand-out and reclaim, lazy expiry via a deadline
  heap, list and stats. The reference server's memory store and the
  simulator's server both use it.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from .protocol import (
    NO_HEARTBEAT,
    ApiError,
    ErrorType,
    HeartbeatAnswer,
    LeaseState,
    PreconditionFailed,
    QueueStats,
    WorkItem,
    WorkList,
    WorkState,
    check_text,
    format_timestamp,
)

__all__ = [
    "TRANSITIONS",
    "Effect",
    "Event",
    "LeaseBook",
    "LeaseConfig",
    "LeaseRules",
    "TransitionObserver",
    "WorkRecord",
    "lease_expired",
    "new_record",
    "queue_stats",
    "random_work_id",
    "state_diagram",
    "validate_list_limit",
]

US_PER_SECOND: Final = 1_000_000
TTL_LIMITS_SECONDS: Final = (1, 86_400)
"""A ``desired_ttl_seconds`` outside this range is a 400, not a clamp."""
DEFAULT_RECLAIM_OLDER_THAN_MS: Final = 5_000
WORKERS_POLLING_WINDOW_US: Final = 30 * US_PER_SECOND
MAX_METADATA_KEYS: Final = 64
MAX_METADATA_KEY_CHARS: Final = 64
MAX_METADATA_VALUE_CHARS: Final = 512
MAX_LIST_LIMIT: Final = 100
DEFAULT_LIST_LIMIT: Final = 20
MAX_SESSION_ID_CHARS: Final = 256

EXPIRES_AFTER_US: Final = 1
"""The expiry boundary, stated once: a lease (or any state's deadline) is good
up to and including its deadline and has expired ``EXPIRES_AFTER_US`` later,
that is once ``now_us`` is strictly past it. :meth:`LeaseRules.settle`, the
stores' pre-filters (:func:`expired_up_to_us`) and their wake-up times
(:func:`expiry_at_us`) all derive from it."""


def lease_expired(deadline_us: int, now_us: int) -> bool:
    """Whether ``deadline_us`` has passed at ``now_us`` (see :data:`EXPIRES_AFTER_US`)."""
    return now_us - deadline_us >= EXPIRES_AFTER_US


def expiry_at_us(deadline_us: int) -> int:
    """The first instant (epoch us) at which ``deadline_us`` has passed."""
    return deadline_us + EXPIRES_AFTER_US


def expired_up_to_us(now_us: int) -> int:
    """The latest deadline that has passed at ``now_us``: a store's pre-filter
    selects ``deadline_us <= expired_up_to_us(now_us)``."""
    return now_us - EXPIRES_AFTER_US


def reclaimable_up_to_us(now_us: int, reclaim_older_than_ms: int) -> int:
    """The latest hand-out time (epoch us) a poll with ``reclaim_older_than_ms``
    may hand out again at ``now_us``: handed out at least that long ago."""
    return now_us - reclaim_older_than_ms * 1_000


def queue_slot(state: WorkState | str, handed_out_at_us: int | None) -> int:
    """Where an item counts in :class:`~leasekit.protocol.QueueStats`:
    :data:`IN_DEPTH` (queued, not handed out), :data:`IN_PENDING` (handed out,
    not acknowledged) or 0 (not queued). Stores that keep counters use it."""
    if state != _Q:
        return 0
    return IN_DEPTH if handed_out_at_us is None else IN_PENDING


IN_DEPTH: Final = 1
IN_PENDING: Final = 2


class Event(enum.StrEnum):
    """What can happen to a work item."""

    POLL = "poll"
    """A poll hands the item to a worker (it stays ``queued`` until acked)."""
    ACK = "ack"
    CLAIM = "claim"
    """A heartbeat with ``expected_last_heartbeat=NO_HEARTBEAT``."""
    RENEW = "renew"
    """A heartbeat echoing the stored ``last_heartbeat`` exactly."""
    STALE = "stale"
    """A heartbeat echoing anything else: a mismatch."""
    UNCONDITIONAL = "unconditional"
    """A heartbeat without ``expected_last_heartbeat`` (unsafe for clients)."""
    STOP = "stop"
    FORCE_STOP = "force_stop"
    EXPIRE = "expire"
    """The state's deadline passed (applied lazily, on the next touch)."""


class Effect(enum.StrEnum):
    """What a transition does to the record besides changing its state."""

    HAND_OUT = "hand out"
    ACKNOWLEDGE = "acknowledge"
    STORE_HEARTBEAT = "store heartbeat, extend lease"
    NOT_EXTENDED = "answer without extending"
    REQUEST_STOP = "request stop"
    NOTHING = "nothing"
    FINISH = "finish"
    REQUEUE = "requeue, clear heartbeat"


_Q, _S, _A, _G, _X = (
    WorkState.QUEUED,
    WorkState.STARTING,
    WorkState.ACTIVE,
    WorkState.STOPPING,
    WorkState.STOPPED,
)

TRANSITIONS: Final[Mapping[tuple[WorkState, Event], tuple[WorkState, Effect]]] = {
    # state, event            ->  next state, effect
    (_Q, Event.POLL):             (_Q, Effect.HAND_OUT),
    (_Q, Event.ACK):              (_S, Effect.ACKNOWLEDGE),
    (_Q, Event.CLAIM):            (_A, Effect.STORE_HEARTBEAT),
    (_S, Event.CLAIM):            (_A, Effect.STORE_HEARTBEAT),
    (_A, Event.RENEW):            (_A, Effect.STORE_HEARTBEAT),
    (_Q, Event.UNCONDITIONAL):    (_A, Effect.STORE_HEARTBEAT),
    (_S, Event.UNCONDITIONAL):    (_A, Effect.STORE_HEARTBEAT),
    (_A, Event.UNCONDITIONAL):    (_A, Effect.STORE_HEARTBEAT),
    # While stopping the server does not compare: the holder winds down.
    (_G, Event.CLAIM):            (_G, Effect.STORE_HEARTBEAT),
    (_G, Event.RENEW):            (_G, Effect.STORE_HEARTBEAT),
    (_G, Event.STALE):            (_G, Effect.STORE_HEARTBEAT),
    (_G, Event.UNCONDITIONAL):    (_G, Effect.STORE_HEARTBEAT),
    (_X, Event.CLAIM):            (_X, Effect.NOT_EXTENDED),
    (_X, Event.RENEW):            (_X, Effect.NOT_EXTENDED),
    (_X, Event.STALE):            (_X, Effect.NOT_EXTENDED),
    (_X, Event.UNCONDITIONAL):    (_X, Effect.NOT_EXTENDED),
    # Nobody holds a queued item, so there is nothing to wind down.
    (_Q, Event.STOP):             (_X, Effect.FINISH),
    (_S, Event.STOP):             (_G, Effect.REQUEST_STOP),
    (_A, Event.STOP):             (_G, Effect.REQUEST_STOP),
    (_G, Event.STOP):             (_G, Effect.NOTHING),
    (_Q, Event.FORCE_STOP):       (_X, Effect.FINISH),
    (_S, Event.FORCE_STOP):       (_X, Effect.FINISH),
    (_A, Event.FORCE_STOP):       (_X, Effect.FINISH),
    (_G, Event.FORCE_STOP):       (_X, Effect.FINISH),
    (_S, Event.EXPIRE):           (_Q, Effect.REQUEUE),
    (_A, Event.EXPIRE):           (_Q, Effect.REQUEUE),
    (_G, Event.EXPIRE):           (_X, Effect.FINISH),
}  # fmt: skip
"""The whole lifecycle. Pairs absent here are refused (412 or 409)."""

# TRANSITIONS keyed by the members' plain string values: hashing an enum
# member runs Enum.__hash__ in Python, and this lookup is on every heartbeat.
_STEPS: Final = {(state.value, event.value): step for (state, event), step in TRANSITIONS.items()}

# Members used on every heartbeat, as module constants: on Python 3.11 reading
# ``Effect.HAND_OUT`` goes through EnumType's attribute hook (~150 ns a read).
_EV_CLAIM, _EV_RENEW, _EV_STALE, _EV_UNCONDITIONAL, _EV_EXPIRE = (
    Event.CLAIM,
    Event.RENEW,
    Event.STALE,
    Event.UNCONDITIONAL,
    Event.EXPIRE,
)
_FX_HAND_OUT, _FX_ACKNOWLEDGE, _FX_STORE_HEARTBEAT, _FX_NOT_EXTENDED = (
    Effect.HAND_OUT,
    Effect.ACKNOWLEDGE,
    Effect.STORE_HEARTBEAT,
    Effect.NOT_EXTENDED,
)
_FX_REQUEST_STOP, _FX_FINISH, _FX_REQUEUE = Effect.REQUEST_STOP, Effect.FINISH, Effect.REQUEUE

_HEARTBEAT_EVENTS: Final = frozenset({Event.CLAIM, Event.RENEW, Event.STALE, Event.UNCONDITIONAL})


def state_diagram() -> str:
    """The lifecycle as a Mermaid ``stateDiagram-v2``, drawn from :data:`TRANSITIONS`."""
    lines = ["stateDiagram-v2", "    [*] --> queued: enqueue"]
    edges: dict[tuple[WorkState, WorkState], list[str]] = {}
    for (source, event), (target, _effect) in TRANSITIONS.items():
        edges.setdefault((source, target), []).append(event.value)
    for (source, target), events in edges.items():
        lines.append(f"    {source.value} --> {target.value}: {', '.join(events)}")
    lines.append("    stopped --> [*]")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """Server TTL settings, in whole seconds.

    ``desired_ttl_seconds`` is clamped to ``[min_ttl_seconds,
    max_ttl_seconds]``; a lease without a desired TTL gets
    ``default_ttl_seconds``. An acknowledged item not claimed within
    ``default_ttl_seconds`` goes back to the queue.
    """

    default_ttl_seconds: int = 90
    min_ttl_seconds: int = 5
    max_ttl_seconds: int = 3600

    def __post_init__(self) -> None:
        low, high = TTL_LIMITS_SECONDS
        if not low <= self.min_ttl_seconds <= self.default_ttl_seconds <= self.max_ttl_seconds:
            raise ValueError(
                "LeaseConfig: need min_ttl_seconds <= default_ttl_seconds <= max_ttl_seconds, "
                f"got {self.min_ttl_seconds}, {self.default_ttl_seconds}, {self.max_ttl_seconds}"
            )
        if self.max_ttl_seconds > high:
            raise ValueError(f"LeaseConfig: max_ttl_seconds above {high}")


@dataclass(slots=True)
class WorkRecord:
    """One work item as the server stores it. Times are epoch microseconds.

    ``last_heartbeat`` is the stored compare-and-set value (``None`` when
    none is stored); ``last_issued_us`` is the latest heartbeat ever issued,
    kept across requeues so that values strictly increase per item.
    ``deadline_us`` is when the current state's timer fires (the lease while
    ``active``/``stopping``, the claim window while ``starting``).
    ``version`` increases with every change, for storage compare-and-set.
    """

    environment_id: str
    work_id: str
    session_id: str
    secret: str = field(repr=False)
    created_at_us: int
    seq: int
    ttl_seconds: int
    state: WorkState = WorkState.QUEUED
    metadata: dict[str, str] = field(default_factory=dict)
    acknowledged_at_us: int | None = None
    started_at_us: int | None = None
    latest_heartbeat_at_us: int | None = None
    stop_requested_at_us: int | None = None
    stopped_at_us: int | None = None
    last_heartbeat: str | None = None
    last_issued_us: int = 0
    deadline_us: int | None = None
    handed_out_at_us: int | None = None
    handed_out_to: str | None = None
    version: int = 0

    def to_item(self, *, with_secret: bool = False) -> WorkItem:
        """The API view of this record."""
        return WorkItem(
            id=self.work_id,
            environment_id=self.environment_id,
            state=self.state,
            created_at_us=self.created_at_us,
            session_id=self.session_id,
            metadata=dict(self.metadata),
            acknowledged_at_us=self.acknowledged_at_us,
            started_at_us=self.started_at_us,
            latest_heartbeat_at_us=self.latest_heartbeat_at_us,
            stop_requested_at_us=self.stop_requested_at_us,
            stopped_at_us=self.stopped_at_us,
            secret=self.secret if with_secret else None,
        )

    def lease_state(self) -> LeaseState:
        """The ``current_state`` a 412 reports."""
        return LeaseState(self.last_heartbeat, self.state, self.ttl_seconds)


TransitionObserver = Callable[[WorkRecord, Event, WorkState, int], None]
"""Called after each transition with ``(record, event, previous state, now_us)``."""


class LeaseRules:
    """Applies :data:`TRANSITIONS` to single records. Holds no records itself.

    Every method first settles the record (applies an expiry whose deadline
    has passed), so an expired lease answers as expired on every touch.
    Methods mutate the record in place and bump ``version`` when it changed.
    """

    __slots__ = ("config", "observe_renewals", "observer")

    def __init__(
        self,
        config: LeaseConfig | None = None,
        observer: TransitionObserver | None = None,
        *,
        observe_renewals: bool = True,
    ) -> None:
        self.config = config or LeaseConfig()
        self.observer = observer
        self.observe_renewals = observe_renewals
        """False: the observer is not told of renewals (``active -> active``,
        the most frequent transition by far), for observers that count
        heartbeats elsewhere and would only ignore them."""

    # ---------------------------------------------------------------- validation

    def resolve_ttl(self, desired_ttl_seconds: int | None, current_ttl_seconds: int) -> int:
        """The TTL a heartbeat grants. ``None`` keeps the current TTL.

        Raises ``invalid_request_error`` naming ``desired_ttl_seconds`` when
        it is outside ``[1, 86400]``; inside, it is clamped to the config.
        """
        if desired_ttl_seconds is None:
            return current_ttl_seconds
        low, high = TTL_LIMITS_SECONDS
        if isinstance(desired_ttl_seconds, bool) or not isinstance(desired_ttl_seconds, int):
            raise ApiError(
                ErrorType.INVALID_REQUEST,
                f"desired_ttl_seconds: expected an integer, got {desired_ttl_seconds!r}",
            )
        if not low <= desired_ttl_seconds <= high:
            raise ApiError(
                ErrorType.INVALID_REQUEST,
                f"desired_ttl_seconds: must be between {low} and {high}, got {desired_ttl_seconds}",
            )
        config = self.config
        return min(max(desired_ttl_seconds, config.min_ttl_seconds), config.max_ttl_seconds)

    # ---------------------------------------------------------------- the machine

    def _move(self, record: WorkRecord, event: Event, now_us: int) -> Effect | None:
        """Look ``(state, event)`` up in the table and apply it; ``None`` if refused."""
        step = _STEPS.get((record.state._value_, event._value_))
        if step is None:
            return None
        target, effect = step
        previous = record.state
        record.state = target
        record.version += 1
        if effect is _FX_STORE_HEARTBEAT:
            pass  # completed by heartbeat() (the most frequent move)
        elif effect is _FX_HAND_OUT:
            pass  # the caller records who and when: it knows the worker
        elif effect is _FX_ACKNOWLEDGE:
            record.acknowledged_at_us = now_us
            record.deadline_us = now_us + self.config.default_ttl_seconds * US_PER_SECOND
            record.handed_out_at_us = None
            record.handed_out_to = None
        elif effect is _FX_REQUEST_STOP:
            record.stop_requested_at_us = now_us
            if record.deadline_us is None:
                record.deadline_us = now_us + record.ttl_seconds * US_PER_SECOND
        elif effect is _FX_FINISH:
            if record.stop_requested_at_us is None:
                record.stop_requested_at_us = now_us
            record.stopped_at_us = now_us
            record.deadline_us = None
            record.handed_out_at_us = None
            record.handed_out_to = None
        elif effect is _FX_REQUEUE:
            record.last_heartbeat = None
            record.deadline_us = None
            record.handed_out_at_us = None
            record.handed_out_to = None
            record.ttl_seconds = self.config.default_ttl_seconds
        # NOT_EXTENDED and NOTHING: nothing more (heartbeat() answers NOT_EXTENDED)
        observer = self.observer
        if observer is not None and (event is not _EV_RENEW or self.observe_renewals):
            observer(record, event, previous, now_us)
        return effect

    def settle(self, record: WorkRecord, now_us: int) -> None:
        """Apply the expiry of a deadline that has passed by ``now_us``.

        A lease is good up to and including its deadline; it has expired
        once ``now_us`` is strictly past it (:data:`EXPIRES_AFTER_US`).
        """
        while (at := record.deadline_us) is not None and now_us - at >= EXPIRES_AFTER_US:
            if self._move(record, _EV_EXPIRE, at) is None:
                record.deadline_us = None

    def heartbeat(
        self,
        record: WorkRecord,
        now_us: int,
        expected_last_heartbeat: str | None,
        desired_ttl_seconds: int | None = None,
    ) -> HeartbeatAnswer:
        """Record a heartbeat: claim, renew, or refuse with 412.

        ``expected_last_heartbeat`` is ``NO_HEARTBEAT`` to claim, the stored
        value to renew, or ``None`` for an unconditional renew. Raises
        :class:`~leasekit.protocol.PreconditionFailed` (nothing changed) on a
        mismatch and ``invalid_request_error`` on a bad TTL.
        """
        # Settle first: an expiry resets the TTL to the default, and a new
        # holder without a desired TTL must get that, not the old holder's.
        self.settle(record, now_us)
        return self._heartbeat_settled(record, now_us, expected_last_heartbeat, desired_ttl_seconds)

    def _heartbeat_settled(
        self,
        record: WorkRecord,
        now_us: int,
        expected_last_heartbeat: str | None,
        desired_ttl_seconds: int | None,
    ) -> HeartbeatAnswer:
        """:meth:`heartbeat` of a record already settled at ``now_us``."""
        ttl_seconds = (
            record.ttl_seconds
            if desired_ttl_seconds is None
            else self.resolve_ttl(desired_ttl_seconds, record.ttl_seconds)
        )
        if expected_last_heartbeat is None:
            event = _EV_UNCONDITIONAL
        elif expected_last_heartbeat == NO_HEARTBEAT:
            event = _EV_CLAIM if record.last_heartbeat is None else _EV_STALE
        elif expected_last_heartbeat == record.last_heartbeat:
            event = _EV_RENEW
        else:
            event = _EV_STALE
        previous = record.state
        effect = self._move(record, event, now_us)
        if effect is None:
            raise PreconditionFailed(
                record.lease_state(),
                "expected_last_heartbeat does not match the stored heartbeat "
                f"(work item is {record.state.value})",
            )
        if effect is _FX_NOT_EXTENDED:
            return HeartbeatAnswer(
                record.last_heartbeat or "", False, record.state, record.ttl_seconds
            )
        # STORE_HEARTBEAT: a new value strictly above every value issued before.
        issued_us = now_us if now_us > record.last_issued_us else record.last_issued_us + 1
        stamp = format_timestamp(issued_us)
        record.last_issued_us = issued_us
        record.last_heartbeat = stamp
        record.latest_heartbeat_at_us = issued_us
        record.ttl_seconds = ttl_seconds
        record.deadline_us = now_us + ttl_seconds * US_PER_SECOND
        if previous is not _A and record.state is _A:
            record.started_at_us = now_us
            record.handed_out_at_us = None
            record.handed_out_to = None
        return HeartbeatAnswer(stamp, True, record.state, ttl_seconds)

    def ack(self, record: WorkRecord, now_us: int) -> None:
        """Acknowledge a queued item (``queued -> starting``); 409 otherwise."""
        self.settle(record, now_us)
        if self._move(record, Event.ACK, now_us) is None:
            raise ApiError(
                ErrorType.CONFLICT,
                f"work item {record.work_id} is {record.state.value}, only a queued item "
                "can be acknowledged",
            )

    def stop(self, record: WorkRecord, now_us: int, *, force: bool) -> None:
        """Graceful (``stopping``) or forced (``stopped``) stop; 409 when already stopped."""
        self.settle(record, now_us)
        if self._move(record, Event.FORCE_STOP if force else Event.STOP, now_us) is None:
            raise ApiError(
                ErrorType.CONFLICT, f"work item {record.work_id} is already {record.state.value}"
            )

    def can_hand_out(self, record: WorkRecord, now_us: int, reclaim_older_than_ms: int) -> bool:
        """Whether a poll may hand this (settled) record out now.

        A queued item is handed out once; a poll may hand it out again when
        it has not been acknowledged within ``reclaim_older_than_ms``.
        """
        if record.state is not WorkState.QUEUED:
            return False
        handed = record.handed_out_at_us
        return handed is None or handed <= reclaimable_up_to_us(now_us, reclaim_older_than_ms)

    def hand_out(self, record: WorkRecord, now_us: int, worker_id: str | None) -> None:
        """Record that a poll handed this queued record to ``worker_id``."""
        self._move(record, Event.POLL, now_us)
        record.handed_out_at_us = now_us
        record.handed_out_to = worker_id

    def update_metadata(self, record: WorkRecord, patch: Mapping[str, str | None]) -> None:
        """Merge ``patch`` into the metadata: ``None`` deletes a key. Size-limited (400)."""
        validate_metadata(patch, where="metadata")
        merged = dict(record.metadata)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        if len(merged) > MAX_METADATA_KEYS:
            raise ApiError(
                ErrorType.INVALID_REQUEST,
                f"metadata: at most {MAX_METADATA_KEYS} keys, the update would make {len(merged)}",
            )
        record.metadata = merged
        record.version += 1


def validate_metadata(patch: object, *, where: str, allow_null: bool = True) -> None:
    """Check a metadata object's shape and size; raises 400 naming the key.

    ``allow_null``: a ``None`` value is allowed (an update deletes that key);
    pass ``False`` for the metadata of a new item, which has nothing to delete.
    """
    if not isinstance(patch, Mapping):
        raise ApiError(ErrorType.INVALID_REQUEST, f"{where}: expected an object")
    if len(patch) > MAX_METADATA_KEYS:
        raise ApiError(ErrorType.INVALID_REQUEST, f"{where}: at most {MAX_METADATA_KEYS} keys")
    for key, value in patch.items():
        if not isinstance(key, str) or not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise ApiError(
                ErrorType.INVALID_REQUEST,
                f"{where}: keys must be 1 to {MAX_METADATA_KEY_CHARS} characters, got {key!r:.80}",
            )
        check_text(key, f"{where} key {key!r:.80}")
        # the key is known to be text from here on; its repr stays printable
        name = f"{where}.{key}" if key.isprintable() else f"{where}[{key!r}]"
        if value is None:
            if not allow_null:
                raise ApiError(ErrorType.INVALID_REQUEST, f"{name}: expected a string")
            continue
        if not isinstance(value, str):
            raise ApiError(ErrorType.INVALID_REQUEST, f"{name}: expected a string or null")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise ApiError(
                ErrorType.INVALID_REQUEST,
                f"{name}: at most {MAX_METADATA_VALUE_CHARS} characters",
            )
        check_text(value, name)


def random_work_id() -> str:
    """A work id that reveals nothing: 96 random bits, not a count of anyone's items."""
    return "work_" + secrets.token_hex(12)


def new_record(
    environment_id: str,
    work_id: str,
    seq: int,
    now_us: int,
    *,
    secret: str,
    ttl_seconds: int,
    session_id: object = None,
    metadata: object = None,
) -> WorkRecord:
    """A new queued work item, its fields validated: the one way every store
    creates items. Raises ``invalid_request_error`` naming ``data.id`` or the
    metadata key that is wrong (nothing is created then).

    ``session_id``: 1 to :data:`MAX_SESSION_ID_CHARS` characters of text, or
    ``None`` for one derived from ``work_id``. ``metadata``: string values
    (no nulls: a new item has nothing to delete). ``seq`` orders the items
    of one environment (creation order, list cursors).
    """
    if session_id is None:
        session_id = f"session_{work_id.removeprefix('work_')}"
    elif not isinstance(session_id, str) or not 1 <= len(session_id) <= MAX_SESSION_ID_CHARS:
        raise ApiError(
            ErrorType.INVALID_REQUEST,
            f"data.id: expected a string of 1 to {MAX_SESSION_ID_CHARS} characters",
        )
    else:
        check_text(session_id, "data.id")
    if metadata is not None:
        validate_metadata(metadata, where="metadata", allow_null=False)
        assert isinstance(metadata, Mapping)
    return WorkRecord(
        environment_id=environment_id,
        work_id=work_id,
        session_id=session_id,
        secret=secret,
        created_at_us=now_us,
        seq=seq,
        ttl_seconds=ttl_seconds,
        metadata=dict(metadata or {}),
    )


# ------------------------------------------------------------------------- the store


def _counter_ids(prefix: str) -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):08d}"


class _Environment:
    __slots__ = (
        "deadlines",
        "depth",
        "handed",
        "oldest",
        "order",
        "pending",
        "pollers",
        "pollers_prune_at",
        "ready",
        "records",
        "scheduled",
        "seq",
    )

    def __init__(self) -> None:
        self.records: dict[str, WorkRecord] = {}
        self.order: list[str] = []  # work ids by seq: a list page is a bisect, not a walk
        # per environment, so that a cursor or an order reveals nothing of another's items
        self.seq = itertools.count(1)
        # queue_slot counts (QueueStats.depth, .pending) of the settled records,
        # and (created_at_us, work_id) of queued ones (stale entries skipped):
        # stats cost no walk over the records
        self.depth = 0
        self.pending = 0
        self.oldest: list[tuple[int, str]] = []
        # queued items not handed out, by creation order: (seq, work_id)
        self.ready: list[tuple[int, str]] = []
        # handed-out items in hand-out order, for reclaim: (handed_out_at_us, work_id)
        self.handed: deque[tuple[int, str]] = deque()
        # (deadline_us, work_id): at most one live entry per record, never later
        # than the record's deadline (scheduled); a renewal that only moves the
        # deadline later pushes nothing: the entry re-schedules when it comes due.
        # One push per heartbeat would grow the heap without bound between polls.
        self.deadlines: list[tuple[int, str]] = []
        self.scheduled: dict[str, int] = {}
        self.pollers: dict[str, int] = {}
        self.pollers_prune_at = _POLLERS_PRUNE_MIN


_POLLERS_PRUNE_MIN: Final = 1024


class LeaseBook:
    """Many environments' work items in memory, with a queue and lazy expiry.

    Not thread-safe: drive it from one thread or event loop. ``work_ids`` and
    ``secrets_`` make ids and secrets (defaults: counters and
    :func:`secrets.token_urlsafe`); inject deterministic ones in simulations.
    """

    def __init__(
        self,
        config: LeaseConfig | None = None,
        *,
        observer: TransitionObserver | None = None,
        observe_renewals: bool = True,
        work_ids: Callable[[], str] | None = None,
        secrets_: Callable[[], str] | None = None,
    ) -> None:
        self.rules = LeaseRules(config, observer, observe_renewals=observe_renewals)
        self._environments: dict[str, _Environment] = {}
        self._work_ids = work_ids or _counter_ids("work_")
        self._secrets = secrets_ or (lambda: secrets.token_urlsafe(24))

    @property
    def config(self) -> LeaseConfig:
        return self.rules.config

    # ---------------------------------------------------------------- environments

    def add_environment(self, environment_id: str) -> None:
        """Make an environment known (idempotent)."""
        self._environments.setdefault(environment_id, _Environment())

    def has_environment(self, environment_id: str) -> bool:
        return environment_id in self._environments

    def _env(self, environment_id: str) -> _Environment:
        env = self._environments.get(environment_id)
        if env is None:
            raise ApiError(ErrorType.NOT_FOUND, f"environment {environment_id!r} not found")
        return env

    def record(self, environment_id: str, work_id: str, now_us: int) -> WorkRecord:
        """The settled record of a work item; 404 naming it when unknown."""
        env = self._env(environment_id)
        record = env.records.get(work_id)
        if record is None:
            raise ApiError(ErrorType.NOT_FOUND, f"work item {work_id!r} not found")
        self._settle(env, record, now_us)
        return record

    def records(self, environment_id: str) -> Iterator[WorkRecord]:
        """Every record of an environment, unsettled, in creation order."""
        return iter(self._env(environment_id).records.values())

    # ---------------------------------------------------------------- bookkeeping

    def _settle(self, env: _Environment, record: WorkRecord, now_us: int) -> None:
        was = record.state
        self.rules.settle(record, now_us)
        if record.state is _Q and was is not _Q:  # expiry only ever enters queued
            self._requeued(env, record)

    @classmethod
    def _requeued(cls, env: _Environment, record: WorkRecord) -> None:
        heapq.heappush(env.ready, (record.seq, record.work_id))
        heapq.heappush(env.oldest, (record.created_at_us, record.work_id))
        env.depth += 1  # a requeue clears the hand-out
        cls._compact(env)

    @staticmethod
    def _compact(env: _Environment) -> None:
        """Drop the stale entries of the lazy queue heaps once they outnumber
        the queued items: without polls or stats to pop them, requeues (one
        per lost lease) would grow them without bound. Amortised O(1)."""
        queued = env.depth + env.pending
        records = env.records
        for heap in (env.ready, env.oldest):
            if len(heap) > 2 * queued + 1024:
                live = {
                    work_id: key
                    for key, work_id in heap
                    if records[work_id].state is _Q
                    and (heap is not env.ready or records[work_id].seq == key)
                }
                heap[:] = [(key, work_id) for work_id, key in live.items()]
                heapq.heapify(heap)

    @staticmethod
    def _left_queue(env: _Environment, slot: int) -> None:
        """An item in ``slot`` (:func:`queue_slot`) left the queue."""
        if slot == IN_DEPTH:
            env.depth -= 1
        elif slot == IN_PENDING:
            env.pending -= 1

    @staticmethod
    def _track_deadline(env: _Environment, record: WorkRecord) -> None:
        deadline_us = record.deadline_us
        if deadline_us is None:
            return
        scheduled = env.scheduled.get(record.work_id)
        if scheduled is None or deadline_us < scheduled:
            env.scheduled[record.work_id] = deadline_us
            heapq.heappush(env.deadlines, (deadline_us, record.work_id))

    def _expire_due(self, env: _Environment, now_us: int) -> None:
        deadlines = env.deadlines
        scheduled = env.scheduled
        up_to = expired_up_to_us(now_us)
        while deadlines and deadlines[0][0] <= up_to:
            deadline_us, work_id = heapq.heappop(deadlines)
            if scheduled.get(work_id) != deadline_us:
                continue  # superseded by an earlier entry for the same record
            del scheduled[work_id]
            record = env.records[work_id]
            self._settle(env, record, now_us)
            self._track_deadline(env, record)  # renewed since: schedule the later deadline

    # ---------------------------------------------------------------- operations

    def enqueue(
        self,
        environment_id: str,
        now_us: int,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        work_id: str | None = None,
        max_queued: int | None = None,
    ) -> WorkRecord:
        """Create a queued work item (leasekit's extension; the hosted API makes
        items from sessions). Fields are checked by :func:`new_record` (400).

        ``max_queued``: refuse with ``rate_limit_error`` (429) when the
        environment already has this many queued items; ``None``: no limit.
        """
        env = self._env(environment_id)
        queued = env.depth + env.pending
        if max_queued is not None and queued >= max_queued:
            raise ApiError(
                ErrorType.RATE_LIMIT,
                f"environment {environment_id!r}: {queued} work items queued, "
                f"the limit is {max_queued}",
            )
        work_id = work_id or self._work_ids()
        if work_id in env.records:
            raise ApiError(ErrorType.CONFLICT, f"work item {work_id!r} already exists")
        record = new_record(
            environment_id,
            work_id,
            next(env.seq),
            now_us,
            secret=self._secrets(),
            ttl_seconds=self.config.default_ttl_seconds,
            session_id=session_id,
            metadata=metadata,
        )
        env.records[work_id] = record
        env.order.append(work_id)
        env.depth += 1
        heapq.heappush(env.ready, (record.seq, work_id))
        heapq.heappush(env.oldest, (now_us, work_id))
        self._compact(env)
        return record

    def poll(
        self,
        environment_id: str,
        now_us: int,
        *,
        worker_id: str | None = None,
        reclaim_older_than_ms: int = DEFAULT_RECLAIM_OLDER_THAN_MS,
    ) -> WorkRecord | None:
        """Hand out the oldest available queued item, or ``None``.

        An item handed out but not acknowledged within
        ``reclaim_older_than_ms`` may be handed out again.
        """
        env = self._env(environment_id)
        if worker_id is not None:
            pollers = env.pollers
            pollers[worker_id] = now_us
            if len(pollers) >= env.pollers_prune_at:
                # Worker ids come from clients: forget the stale ones now and
                # then (amortised O(1)), not only when someone asks for stats.
                self._prune_pollers(env, now_us)
                env.pollers_prune_at = max(_POLLERS_PRUNE_MIN, 2 * len(pollers))
        self._expire_due(env, now_us)
        rules = self.rules
        reclaim_up_to = reclaimable_up_to_us(now_us, reclaim_older_than_ms)
        # Items handed out long enough ago go back among the ready ones.
        handed = env.handed
        while handed and handed[0][0] <= reclaim_up_to:
            handed_at, work_id = handed.popleft()
            record = env.records[work_id]
            if record.state is WorkState.QUEUED and record.handed_out_at_us == handed_at:
                heapq.heappush(env.ready, (record.seq, work_id))
        ready = env.ready
        while ready:
            seq, work_id = heapq.heappop(ready)
            record = env.records[work_id]
            if record.seq != seq:
                continue
            if not rules.can_hand_out(record, now_us, reclaim_older_than_ms):
                last_handed_us = record.handed_out_at_us
                if record.state is WorkState.QUEUED and last_handed_us is not None:
                    # A poll with a shorter window moved it here; this poll's
                    # window is longer. Dropping it would strand it: put it
                    # back among the hand-outs, kept in hand-out order.
                    bisect.insort(handed, (last_handed_us, work_id))
                continue
            if record.handed_out_at_us is None:
                env.depth -= 1
                env.pending += 1
            rules.hand_out(record, now_us, worker_id)
            handed.append((now_us, work_id))
            return record
        return None

    def ack(self, environment_id: str, work_id: str, now_us: int) -> WorkRecord:
        """``queued -> starting``; 409 when the item is in another state."""
        env = self._env(environment_id)
        record = self.record(environment_id, work_id, now_us)
        slot = queue_slot(record.state, record.handed_out_at_us)
        self.rules.ack(record, now_us)
        self._left_queue(env, slot)  # only a queued item can be acknowledged
        self._track_deadline(env, record)
        return record

    def heartbeat(
        self,
        environment_id: str,
        work_id: str,
        now_us: int,
        expected_last_heartbeat: str | None,
        desired_ttl_seconds: int | None = None,
    ) -> HeartbeatAnswer:
        """See :meth:`LeaseRules.heartbeat`."""
        # The hot path of a server (and of the simulator): _env(), record(),
        # _settle() and _track_deadline() inlined, the record settled once.
        env = self._environments.get(environment_id)
        if env is None:
            env = self._env(environment_id)  # raises the 404
        record = env.records.get(work_id)
        if record is None:
            raise ApiError(ErrorType.NOT_FOUND, f"work item {work_id!r} not found")
        rules = self.rules
        was = record.state
        rules.settle(record, now_us)
        settled = record.state
        if settled is _Q:
            if was is not _Q:
                self._requeued(env, record)
            slot = queue_slot(settled, record.handed_out_at_us)
        answer = rules._heartbeat_settled(
            record, now_us, expected_last_heartbeat, desired_ttl_seconds
        )
        if settled is _Q and record.state is not _Q:
            self._left_queue(env, slot)
        if answer.lease_extended:
            deadline_us = record.deadline_us
            scheduled = env.scheduled.get(work_id)
            if deadline_us is not None and (scheduled is None or deadline_us < scheduled):
                env.scheduled[work_id] = deadline_us
                heapq.heappush(env.deadlines, (deadline_us, work_id))
        return answer

    def stop(self, environment_id: str, work_id: str, now_us: int, *, force: bool) -> WorkRecord:
        """See :meth:`LeaseRules.stop`."""
        env = self._env(environment_id)
        record = self.record(environment_id, work_id, now_us)
        slot = queue_slot(record.state, record.handed_out_at_us)
        self.rules.stop(record, now_us, force=force)
        self._left_queue(env, slot)  # a stop of a queued item leaves the queue
        self._track_deadline(env, record)
        return record

    def update_metadata(
        self, environment_id: str, work_id: str, now_us: int, patch: Mapping[str, str | None]
    ) -> WorkRecord:
        """Merge ``patch`` into an item's metadata; ``None`` deletes a key."""
        record = self.record(environment_id, work_id, now_us)
        self.rules.update_metadata(record, patch)
        return record

    def list(
        self, environment_id: str, now_us: int, *, limit: int | None = None, page: str | None = None
    ) -> WorkList:
        """A page of items in creation order; ``page`` is the cursor from the last page."""
        chosen, cursor = self.list_records(environment_id, now_us, limit=limit, page=page)
        return WorkList(tuple(r.to_item() for r in chosen), cursor)

    def list_records(
        self, environment_id: str, now_us: int, *, limit: int | None = None, page: str | None = None
    ) -> tuple[Sequence[WorkRecord], str | None]:
        """:meth:`list`'s page as the (settled) records and the next cursor."""
        env = self._env(environment_id)
        limit = validate_list_limit(limit)
        after = decode_cursor(page)
        self._expire_due(env, now_us)
        records = env.records
        order = env.order  # work ids in creation order, hence in seq order
        start = bisect.bisect_right(order, after, key=lambda work_id: records[work_id].seq)
        chosen = [records[work_id] for work_id in order[start : start + limit]]
        for record in chosen:
            self._settle(env, record, now_us)
        more = start + limit < len(order)
        cursor = encode_cursor(chosen[-1].seq) if more else None
        return chosen, cursor

    def stats(self, environment_id: str, now_us: int) -> QueueStats:
        """Queue depth, pending hand-outs, oldest waiting item, recent pollers."""
        env = self._env(environment_id)
        self._expire_due(env, now_us)
        self._prune_pollers(env, now_us)
        oldest = env.oldest
        while oldest and env.records[oldest[0][1]].state is not _Q:
            heapq.heappop(oldest)  # left the queue since
        return QueueStats(
            env.depth, env.pending, oldest[0][0] if oldest else None, len(env.pollers)
        )

    @staticmethod
    def _prune_pollers(env: _Environment, now_us: int) -> None:
        window_start = now_us - WORKERS_POLLING_WINDOW_US
        stale = [w for w, at in env.pollers.items() if at < window_start]
        for worker in stale:
            del env.pollers[worker]

    def queued_count(self, environment_id: str) -> int:
        """How many items of the environment are queued (handed out or not), as
        of the last settle (an expiry not yet applied is not counted)."""
        env = self._env(environment_id)
        return env.depth + env.pending

    def next_due_us(self, environment_id: str, reclaim_older_than_ms: int) -> int | None:
        """The earliest time (epoch us) a poll with ``reclaim_older_than_ms``
        could find something new without an enqueue: a state deadline firing
        or a hand-out becoming reclaimable. ``None`` when nothing is pending.

        May be early (a stale deadline entry), never late: a long poll sleeps
        until then and asks again.
        """
        env = self._env(environment_id)
        due: list[int] = []
        if env.deadlines:
            due.append(expiry_at_us(env.deadlines[0][0]))
        if env.handed:
            due.append(env.handed[0][0] + reclaim_older_than_ms * 1_000)  # reclaimable then
        return min(due) if due else None


def validate_list_limit(limit: int | None) -> int:
    """The page size of a list call (default when ``None``); 400 naming ``limit``."""
    limit = DEFAULT_LIST_LIMIT if limit is None else limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ApiError(ErrorType.INVALID_REQUEST, f"limit: must be between 1 and {MAX_LIST_LIMIT}")
    return limit


def queue_stats(
    records: Iterable[WorkRecord], poll_times_us: Iterable[int], now_us: int
) -> QueueStats:
    """Queue statistics over settled ``records`` (other states are skipped) and
    the last poll time of each worker (epoch us); see :class:`QueueStats`."""
    depth = pending = 0
    oldest: int | None = None
    for record in records:
        slot = queue_slot(record.state, record.handed_out_at_us)
        if not slot:
            continue
        if slot == IN_DEPTH:
            depth += 1
        else:
            pending += 1
        if oldest is None or record.created_at_us < oldest:
            oldest = record.created_at_us
    window_start = now_us - WORKERS_POLLING_WINDOW_US
    polling = sum(1 for at in poll_times_us if at >= window_start)
    return QueueStats(depth, pending, oldest, polling)


def encode_cursor(seq: int) -> str:
    """The opaque ``next_page`` cursor after the item numbered ``seq``."""
    return f"c{seq:x}"


def decode_cursor(page: str | None) -> int:
    """Inverse of :func:`encode_cursor`; 400 naming ``page`` when malformed."""
    if page is None or page == "":
        return 0
    try:
        if not page.startswith("c"):
            raise ValueError
        return int(page[1:], 16)
    except ValueError:
        raise ApiError(
            ErrorType.INVALID_REQUEST, f"page: not a cursor from this server: {page!r:.80}"
        ) from None
