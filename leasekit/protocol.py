"""Wire facts of the work-lease protocol: models, constants, timestamps, errors.

Everything here mirrors docs/protocol.md §1 (facts) byte for byte: field names, the
shape of every JSON answer and of the API's error envelope. Nothing here
knows about time passing or about storage; :mod:`leasekit._lease` and
:mod:`leasekit._policy` hold the rules.

Timestamps on the wire are RFC 3339 strings in UTC with microseconds
(``2026-11-29T09:16:11.123456Z``). Internally the server side counts time in
integer microseconds since the Unix epoch, so that "strictly increasing" is
exact arithmetic, not float comparison.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = [
    "ANTHROPIC_BETA",
    "ANTHROPIC_VERSION",
    "NO_HEARTBEAT",
    "ApiError",
    "ErrorType",
    "HeartbeatAnswer",
    "LeaseState",
    "PreconditionFailed",
    "QueueStats",
    "WorkItem",
    "WorkList",
    "WorkState",
    "check_text",
    "format_timestamp",
    "parse_timestamp",
]

NO_HEARTBEAT: Final = "NO_HEARTBEAT"
"""The ``expected_last_heartbeat`` value that claims an unclaimed lease."""

ANTHROPIC_BETA: Final = "managed-agents-2026-04-01"
"""The ``anthropic-beta`` header value the official SDK sends on work calls."""

ANTHROPIC_VERSION: Final = "2023-06-01"
"""The ``anthropic-version`` header value the official SDK sends."""

HEARTBEAT_PRECONDITION_FAILED: Final = "heartbeat_precondition_failed"


class WorkState(enum.StrEnum):
    """The lifecycle state of a work item."""

    QUEUED = "queued"
    STARTING = "starting"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"


# --------------------------------------------------------------------------- timestamps

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# The text up to the seconds of the last second formatted: heartbeats come in
# bursts within one second (the server, the simulator), and building the
# datetime is most of the cost.
# Seeded with a real entry: a placeholder second (such as -1) would be a valid
# second too, and format it as an empty prefix.
_last_second: list[tuple[int, str]] = [(0, "1970-01-01T00:00:00.")]


def format_timestamp(epoch_us: int) -> str:
    """Format integer microseconds since the Unix epoch as RFC 3339 UTC.

    Always six fractional digits and a ``Z`` suffix, so the text of two
    timestamps orders like their values.
    """
    second, micro = divmod(epoch_us, 1_000_000)
    cached_second, prefix = _last_second[0]
    if second != cached_second:
        moment = _EPOCH + timedelta(seconds=second)
        prefix = (
            f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}."
        )
        _last_second[0] = (second, prefix)
    # %-formatting: quicker than an f-string format spec on this hot path
    return prefix + "%06dZ" % micro  # noqa: UP031


def parse_timestamp(text: str) -> int:
    """Parse an RFC 3339 timestamp into integer microseconds since the epoch.

    Accepts ``Z`` or a numeric offset and any number of fractional digits
    (beyond six they are truncated). Raises :class:`ValueError` naming the text.
    A client must never parse ``last_heartbeat`` to echo it; this is for
    metrics and trace import only.
    """
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    # datetime.fromisoformat accepts at most 6 fractional digits before 3.11's
    # relaxations cover every case; trim longer fractions (nanoseconds).
    if "." in raw:
        head, _, rest = raw.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        if not digits:  # RFC 3339: a "." must be followed by at least one digit
            raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
        rest = rest[: min(digits, 6)] + rest[digits:]
        raw = f"{head}.{rest}" if rest and rest[0].isdigit() else head + rest
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"RFC 3339 timestamp without a UTC offset: {text!r}")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _ts(epoch_us: int | None) -> str | None:
    return None if epoch_us is None else format_timestamp(epoch_us)


# --------------------------------------------------------------------------- answers


# Not frozen (a frozen dataclass costs about 1 us more per instance, and a
# heartbeat answer is made on every simulated heartbeat). Treat it as
# immutable; unsafe_hash keeps the frozen one's hash.
@dataclass(slots=True, unsafe_hash=True)
class HeartbeatAnswer:
    """The 200 answer to a heartbeat.

    ``last_heartbeat`` is opaque to a client: echo it exactly. It is the empty
    string when no heartbeat has been recorded. ``ttl_seconds`` is the
    effective lease TTL in whole seconds.
    """

    last_heartbeat: str
    lease_extended: bool
    state: WorkState
    ttl_seconds: int

    def to_json(self) -> dict[str, Any]:
        return {
            "last_heartbeat": self.last_heartbeat,
            "lease_extended": self.lease_extended,
            "state": self.state.value,
            "ttl_seconds": self.ttl_seconds,
            "type": "work_heartbeat",
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> HeartbeatAnswer:
        """Read a heartbeat answer; raises :class:`ValueError` naming the bad field."""
        _expect_type(body, "work_heartbeat")
        return cls(
            last_heartbeat=_field(body, "last_heartbeat", str),
            lease_extended=_field(body, "lease_extended", bool),
            state=_state(body),
            ttl_seconds=_field(body, "ttl_seconds", int),
        )


@dataclass(slots=True, unsafe_hash=True)
class LeaseState:
    """The lease as the server holds it: ``current_state`` of a 412.

    ``last_heartbeat`` is ``None`` when no heartbeat is stored (for example
    after the lease expired and the item went back to ``queued``).
    """

    last_heartbeat: str | None
    state: WorkState
    ttl_seconds: int
    lease_extended: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "last_heartbeat": self.last_heartbeat,
            "lease_extended": self.lease_extended,
            "state": self.state.value,
            "ttl_seconds": self.ttl_seconds,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LeaseState:
        last = body.get("last_heartbeat")
        if last is not None and not isinstance(last, str):
            raise ValueError("field 'last_heartbeat': expected a string or null")
        return cls(
            last_heartbeat=last,
            state=_state(body),
            ttl_seconds=_field(body, "ttl_seconds", int),
            lease_extended=bool(body.get("lease_extended", False)),
        )


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A work item as the API shows it. Times are integer epoch microseconds.

    ``secret`` is only set on the answer to a poll.
    """

    id: str
    environment_id: str
    state: WorkState
    created_at_us: int
    session_id: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    acknowledged_at_us: int | None = None
    started_at_us: int | None = None
    latest_heartbeat_at_us: int | None = None
    stop_requested_at_us: int | None = None
    stopped_at_us: int | None = None
    secret: str | None = field(default=None, repr=False)  # a credential: never in a repr

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "work",
            "environment_id": self.environment_id,
            "state": self.state.value,
            "created_at": format_timestamp(self.created_at_us),
            "acknowledged_at": _ts(self.acknowledged_at_us),
            "started_at": _ts(self.started_at_us),
            "latest_heartbeat_at": _ts(self.latest_heartbeat_at_us),
            "stop_requested_at": _ts(self.stop_requested_at_us),
            "stopped_at": _ts(self.stopped_at_us),
            "metadata": dict(self.metadata),
            "data": {"type": "session", "id": self.session_id},
            "secret": self.secret,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> WorkItem:
        _expect_type(body, "work")
        data = body.get("data")
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
            raise ValueError("field 'data.id': expected a string")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise ValueError("field 'metadata': expected an object")

        def when(name: str) -> int | None:
            value = body.get(name)
            if value is None:
                return None
            if not isinstance(value, str):
                raise ValueError(f"field {name!r}: expected an RFC 3339 string or null")
            return parse_timestamp(value)

        created = when("created_at")
        if created is None:
            raise ValueError("field 'created_at': missing")
        secret = body.get("secret")
        return cls(
            id=_field(body, "id", str),
            environment_id=_field(body, "environment_id", str),
            state=_state(body),
            created_at_us=created,
            session_id=data["id"],
            metadata=dict(metadata),
            acknowledged_at_us=when("acknowledged_at"),
            started_at_us=when("started_at"),
            latest_heartbeat_at_us=when("latest_heartbeat_at"),
            stop_requested_at_us=when("stop_requested_at"),
            stopped_at_us=when("stopped_at"),
            secret=secret if isinstance(secret, str) else None,
        )


@dataclass(frozen=True, slots=True)
class WorkList:
    """One page of ``GET .../work``; ``next_page`` is an opaque cursor or ``None``."""

    data: tuple[WorkItem, ...]
    next_page: str | None

    def to_json(self) -> dict[str, Any]:
        return {"data": [item.to_json() for item in self.data], "next_page": self.next_page}


@dataclass(frozen=True, slots=True)
class QueueStats:
    """``GET .../work/stats``.

    ``depth``: items queued and not handed out; ``pending``: handed out by a
    poll but not yet acknowledged; ``oldest_queued_at_us``: creation time of
    the oldest queued or pending item; ``workers_polling``: distinct worker
    ids that polled in the last 30 seconds.
    """

    depth: int
    pending: int
    oldest_queued_at_us: int | None
    workers_polling: int

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "work_queue_stats",
            "depth": self.depth,
            "pending": self.pending,
            "oldest_queued_at": _ts(self.oldest_queued_at_us),
            "workers_polling": self.workers_polling,
        }


# --------------------------------------------------------------------------- errors


class ErrorType(enum.StrEnum):
    """The API's error types, each with its HTTP status (``.status``)."""

    INVALID_REQUEST = "invalid_request_error"
    AUTHENTICATION = "authentication_error"
    PERMISSION = "permission_error"
    NOT_FOUND = "not_found_error"
    PRECONDITION_FAILED = "precondition_failed_error"
    CONFLICT = "conflict_error"
    REQUEST_TOO_LARGE = "request_too_large"
    RATE_LIMIT = "rate_limit_error"
    API = "api_error"
    OVERLOADED = "overloaded_error"

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS: Final = {
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.AUTHENTICATION: 401,
    ErrorType.PERMISSION: 403,
    ErrorType.NOT_FOUND: 404,
    ErrorType.CONFLICT: 409,
    ErrorType.PRECONDITION_FAILED: 412,
    ErrorType.REQUEST_TOO_LARGE: 413,
    ErrorType.RATE_LIMIT: 429,
    ErrorType.API: 500,
    ErrorType.OVERLOADED: 529,
}


class ApiError(Exception):
    """An error the API answers with its envelope.

    Raised by the lease state machine and by input validation; the HTTP layer
    turns it into ``status`` and :meth:`envelope`. ``details`` is copied into
    ``error.details`` when given.
    """

    def __init__(
        self, error_type: ErrorType, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.details = dict(details) if details is not None else None

    @property
    def status(self) -> int:
        """The HTTP status code of this error."""
        return self.error_type.status

    def envelope(self, request_id: str) -> dict[str, Any]:
        """The API's error envelope: ``{"type": "error", "error": {...}, "request_id"}``."""
        error: dict[str, Any] = {"type": self.error_type.value, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"type": "error", "error": error, "request_id": request_id}

    def __repr__(self) -> str:
        return f"ApiError({self.error_type.value!r}, {self.message!r})"


class PreconditionFailed(ApiError):
    """A heartbeat whose ``expected_last_heartbeat`` did not match: HTTP 412.

    ``current_state`` is the lease as the server holds it; nothing was changed.
    """

    def __init__(self, current_state: LeaseState, message: str) -> None:
        super().__init__(
            ErrorType.PRECONDITION_FAILED,
            message,
            {
                "error_code": HEARTBEAT_PRECONDITION_FAILED,
                "current_state": current_state.to_json(),
            },
        )
        self.current_state = current_state

    @classmethod
    def from_envelope(cls, body: Mapping[str, Any]) -> PreconditionFailed:
        """Read a 412 envelope; raises :class:`ValueError` naming the bad field."""
        error = body.get("error")
        if not isinstance(error, Mapping):
            raise ValueError("field 'error': expected an object")
        details = error.get("details")
        if not isinstance(details, Mapping) or not isinstance(
            details.get("current_state"), Mapping
        ):
            raise ValueError("field 'error.details.current_state': expected an object")
        message = error.get("message")
        return cls(
            LeaseState.from_json(details["current_state"]),
            message if isinstance(message, str) else "heartbeat precondition failed",
        )


def check_text(value: str, where: str) -> None:
    """Refuse text that cannot go on the wire: JSON lets a string hold a lone
    UTF-16 surrogate (``"\\ud800"``), which has no UTF-8 encoding. Raises
    ``invalid_request_error`` naming ``where``, so that such text is refused
    before anything stores it."""
    try:
        value.encode()
    except UnicodeEncodeError as error:
        raise ApiError(
            ErrorType.INVALID_REQUEST,
            f"{where}: not valid Unicode text (a lone surrogate at character {error.start})",
        ) from None


def dumps(body: Mapping[str, Any] | None) -> bytes:
    """Compact JSON bytes, as the server sends them."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------- helpers


def _field(body: Mapping[str, Any], name: str, kind: type[Any]) -> Any:
    value = body.get(name)
    # bool is an int in Python; a JSON true must not pass for a TTL.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {name!r}: expected {kind.__name__}, got {value!r}")
    return value


def _state(body: Mapping[str, Any]) -> WorkState:
    value = body.get("state")
    try:
        return WorkState(str(value))
    except ValueError:
        raise ValueError(f"field 'state': unknown state {value!r}") from None


def _expect_type(body: Mapping[str, Any], expected: str) -> None:
    if body.get("type") != expected:
        raise ValueError(f"field 'type': expected {expected!r}, got {body.get('type')!r}")
