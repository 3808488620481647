"""Heartbeat traces: the schema, an append-only writer and a validating reader.

A trace is a JSON Lines file. Line 1 is the header; every further line is one
heartbeat attempt or the end of a lease::

    {"record": "header", "format": "leasekit-trace", "version": 1,
     "created_at": "2026-11-29T09:16:11.123456Z",
     "policy": {"name": "sdk", "parameters": {"http_retries": 2}},
     "desired_ttl_seconds": null, "source": "leasekit keep"}
    {"record": "attempt", "environment_id": "env_1", "work_id": "work_1",
     "worker": "w1", "attempt": 1, "sent_s": 0.0012, "received_s": 0.0051,
     "sent_at": "...Z", "received_at": "...Z", "outcome": "ok", "status": 200,
     "expected_last_heartbeat": "NO_HEARTBEAT", "desired_ttl_seconds": null,
     "last_heartbeat": "...Z", "lease_extended": true, "state": "active",
     "ttl_seconds": 90}
    {"record": "end", "environment_id": "env_1", "work_id": "work_1",
     "worker": "w1", "at_s": 12.5, "reason": "lost"}

Units: ``sent_s``, ``received_s`` and ``at_s`` are seconds on a monotonic
clock since the trace started (the header's ``created_at``); ``sent_at`` and
``received_at`` are the same instants as RFC 3339 UTC wall-clock time. For a
``timeout`` outcome ``received_s``/``received_at`` say when the timeout fired.
The answer fields (``last_heartbeat``, ``lease_extended``, ``state``,
``ttl_seconds``) come from the 200 answer, or from ``current_state`` for a
412 (``precondition_failed``); they are null otherwise. ``status`` is the
HTTP status, null when there was none (timeout, connection error).

Keys and secrets never enter a trace: no record has a field for them.

The reader validates every line and raises :class:`TraceError` naming the
path, line and field of the first problem; nothing is silently skipped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import pandas as pd

from .policy import Outcome, Result, Send
from .protocol import WorkState, format_timestamp, parse_timestamp

__all__ = [
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "Trace",
    "TraceEnd",
    "TraceError",
    "TraceHeader",
    "TraceRecord",
    "TraceWriter",
    "read_trace",
]

TRACE_FORMAT: Final = "leasekit-trace"
TRACE_VERSION: Final = 1


class TraceError(ValueError):
    """A malformed trace file. ``path``, ``line`` (1-based) and ``field`` say where.

    ``str(error)`` reads like ``trace.jsonl:17: field 'sent_s': expected a
    number, got "abc"``. ``field`` is ``None`` when the whole line is bad.
    """

    def __init__(self, path: str, line: int, field: str | None, message: str) -> None:
        where = f"{path}:{line}: " + (f"field {field!r}: " if field is not None else "")
        super().__init__(where + message)
        self.path = path
        self.line = line
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class TraceHeader:
    """The first line of a trace.

    ``created_at`` is the RFC 3339 wall-clock time of the trace's time zero;
    ``desired_ttl_seconds`` the TTL the client asked for (``None``: the
    server's default); ``source`` names what recorded it (``"leasekit keep"``).
    """

    policy_name: str
    policy_parameters: Mapping[str, Any] = field(default_factory=dict)
    desired_ttl_seconds: int | None = None
    source: str = "leasekit"
    created_at: str = ""
    version: int = TRACE_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "record": "header",
            "format": TRACE_FORMAT,
            "version": self.version,
            "created_at": self.created_at,
            "policy": {"name": self.policy_name, "parameters": dict(self.policy_parameters)},
            "desired_ttl_seconds": self.desired_ttl_seconds,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One heartbeat attempt. Times: ``*_s`` monotonic seconds since the trace start.

    See the module docstring for every field's meaning.
    """

    environment_id: str
    work_id: str
    worker: str
    attempt: int
    sent_s: float
    received_s: float | None
    sent_at: str
    received_at: str | None
    outcome: Outcome
    status: int | None
    expected_last_heartbeat: str | None
    desired_ttl_seconds: int | None
    last_heartbeat: str | None = None
    lease_extended: bool | None = None
    state: str | None = None
    ttl_seconds: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "record": "attempt",
            "environment_id": self.environment_id,
            "work_id": self.work_id,
            "worker": self.worker,
            "attempt": self.attempt,
            "sent_s": self.sent_s,
            "received_s": self.received_s,
            "sent_at": self.sent_at,
            "received_at": self.received_at,
            "outcome": self.outcome.value,
            "status": self.status,
            "expected_last_heartbeat": self.expected_last_heartbeat,
            "desired_ttl_seconds": self.desired_ttl_seconds,
            "last_heartbeat": self.last_heartbeat,
            "lease_extended": self.lease_extended,
            "state": self.state,
            "ttl_seconds": self.ttl_seconds,
        }


@dataclass(frozen=True, slots=True)
class TraceEnd:
    """The end of one lease: ``at_s`` seconds since the trace start; ``reason``
    an :class:`~leasekit.policy.EndReason` value or another short word."""

    environment_id: str
    work_id: str
    worker: str
    at_s: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "record": "end",
            "environment_id": self.environment_id,
            "work_id": self.work_id,
            "worker": self.worker,
            "at_s": self.at_s,
            "reason": self.reason,
        }


class TraceWriter:
    """Append-only trace writer: writes the header at once, flushes every line.

    ``target`` is a path (created or truncated) or an open text file.
    ``origin`` is the monotonic time (``time.monotonic()``, seconds) that is
    the trace's time zero; the header's ``created_at`` is the wall-clock time
    at that instant. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        target: str | Path | IO[str],
        header: TraceHeader,
        *,
        origin: float | None = None,
    ) -> None:
        now_mono = time.monotonic()
        now_wall_us = time.time_ns() // 1_000
        self.origin = now_mono if origin is None else origin
        # wall-clock microseconds at the trace's time zero
        self._origin_wall_us = now_wall_us - round((now_mono - self.origin) * 1e6)
        if isinstance(target, str | Path):
            self.path: str | None = str(target)
            self._file: IO[str] = open(target, "w", encoding="utf-8")  # noqa: SIM115
            self._owns = True
        else:
            self.path = getattr(target, "name", None)
            self._file = target
            self._owns = False
        self.header = TraceHeader(
            policy_name=header.policy_name,
            policy_parameters=dict(header.policy_parameters),
            desired_ttl_seconds=header.desired_ttl_seconds,
            source=header.source,
            created_at=header.created_at or format_timestamp(self._origin_wall_us),
            version=header.version,
        )
        self.records_written = 0
        self._write_line(self.header.to_json())

    def seconds(self, monotonic: float) -> float:
        """A ``time.monotonic()`` reading as seconds since the trace start."""
        return monotonic - self.origin

    def wall(self, monotonic: float) -> str:
        """A ``time.monotonic()`` reading as RFC 3339 wall-clock time."""
        return format_timestamp(self._origin_wall_us + round((monotonic - self.origin) * 1e6))

    def _write_line(self, body: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(body, separators=(",", ":"), allow_nan=False) + "\n")
        self._file.flush()

    def write(self, record: TraceRecord | TraceEnd) -> None:
        """Append one record and flush it."""
        self._write_line(record.to_json())
        self.records_written += 1

    def attempt(
        self, *, environment_id: str, work_id: str, worker: str, send: Send, result: Result
    ) -> TraceRecord:
        """Record what a policy asked (``send``) and what happened (``result``).

        Times in ``result`` are ``time.monotonic()`` seconds; returns the record.
        """
        answer, current = result.answer, result.current_state
        if answer is not None:
            fields: dict[str, Any] = {
                "last_heartbeat": answer.last_heartbeat,
                "lease_extended": answer.lease_extended,
                "state": answer.state.value,
                "ttl_seconds": answer.ttl_seconds,
            }
        elif current is not None:
            fields = {
                "last_heartbeat": current.last_heartbeat,
                "lease_extended": current.lease_extended,
                "state": current.state.value,
                "ttl_seconds": current.ttl_seconds,
            }
        else:
            fields = {}
        record = TraceRecord(
            environment_id=environment_id,
            work_id=work_id,
            worker=worker,
            attempt=send.attempt,
            sent_s=self.seconds(result.sent_at),
            received_s=self.seconds(result.received_at),
            sent_at=self.wall(result.sent_at),
            received_at=self.wall(result.received_at),
            outcome=result.outcome,
            status=result.status,
            expected_last_heartbeat=send.expected_last_heartbeat,
            desired_ttl_seconds=send.desired_ttl_seconds,
            **fields,
        )
        self.write(record)
        return record

    def end(
        self, *, environment_id: str, work_id: str, worker: str, at: float, reason: str
    ) -> TraceEnd:
        """Record that a lease ended at monotonic time ``at`` for ``reason``."""
        record = TraceEnd(environment_id, work_id, worker, self.seconds(at), reason)
        self.write(record)
        return record

    def close(self) -> None:
        """Close the file if the writer opened it (idempotent)."""
        if self._owns and not self._file.closed:
            self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Trace:
    """A trace as read: the header, the attempts and the lease ends.

    ``attempts`` has one row per attempt, in file order, with columns
    ``environment_id``, ``work_id``, ``worker`` (string), ``attempt``
    (int64), ``sent_s``, ``received_s`` (float64 seconds since the trace
    start; NaN when absent), ``sent_at``, ``received_at``
    (datetime64[ns, UTC]; NaT when absent), ``outcome`` (categorical of
    :class:`~leasekit.policy.Outcome` values), ``status`` (Int64),
    ``expected_last_heartbeat`` (string), ``desired_ttl_seconds`` (Int64),
    ``last_heartbeat`` (string, opaque), ``lease_extended`` (boolean),
    ``state`` (string), ``ttl_seconds`` (Int64 seconds) and ``line`` (int64,
    the record's line in the file). ``ends`` has ``environment_id``,
    ``work_id``, ``worker``, ``at_s`` (float64 seconds), ``reason`` and ``line``.
    """

    header: TraceHeader
    attempts: pd.DataFrame
    ends: pd.DataFrame
    path: str


_STR: Final = "a string"
_NUM: Final = "a number"
_INT: Final = "an integer"
_BOOL: Final = "a boolean"
_TIME: Final = "an RFC 3339 timestamp"

# field -> (kind, nullable); order is the DataFrame's column order
_ATTEMPT_FIELDS: Final[dict[str, tuple[str, bool]]] = {
    "environment_id": (_STR, False),
    "work_id": (_STR, False),
    "worker": (_STR, False),
    "attempt": (_INT, False),
    "sent_s": (_NUM, False),
    "received_s": (_NUM, True),
    "sent_at": (_TIME, False),
    "received_at": (_TIME, True),
    "outcome": (_STR, False),
    "status": (_INT, True),
    "expected_last_heartbeat": (_STR, True),
    "desired_ttl_seconds": (_INT, True),
    "last_heartbeat": (_STR, True),
    "lease_extended": (_BOOL, True),
    "state": (_STR, True),
    "ttl_seconds": (_INT, True),
}
_END_FIELDS: Final[dict[str, tuple[str, bool]]] = {
    "environment_id": (_STR, False),
    "work_id": (_STR, False),
    "worker": (_STR, False),
    "at_s": (_NUM, False),
    "reason": (_STR, False),
}
_HEADER_FIELDS: Final = (
    "record",
    "format",
    "version",
    "created_at",
    "policy",
    "desired_ttl_seconds",
    "source",
)
_OUTCOMES: Final = frozenset(o.value for o in Outcome)
_STATES: Final = frozenset(s.value for s in WorkState)
_ANSWER_FIELDS: Final = ("last_heartbeat", "lease_extended", "state", "ttl_seconds")


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else "nan"


class _Line:
    """Validation helpers bound to one line of one file."""

    def __init__(self, path: str, number: int) -> None:
        self.path = path
        self.number = number

    def error(self, field: str | None, message: str) -> TraceError:
        return TraceError(self.path, self.number, field, message)

    def check(self, body: Mapping[str, Any], name: str, kind: str, nullable: bool) -> Any:
        if name not in body:
            raise self.error(name, "missing")
        value = body[name]
        if value is None:
            if nullable:
                return None
            raise self.error(name, f"expected {kind}, got null")
        ok = {
            _STR: isinstance(value, str),
            _TIME: isinstance(value, str),
            _BOOL: isinstance(value, bool),
            _INT: isinstance(value, int) and not isinstance(value, bool),
            _NUM: isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value),
        }[kind]
        if not ok:
            raise self.error(name, f"expected {kind}, got {_shown(value)}")
        if kind is _TIME:
            try:
                parse_timestamp(value)
            except ValueError:
                raise self.error(name, f"expected {kind}, got {_shown(value)}") from None
        return value

    def no_extras(self, body: Mapping[str, Any], allowed: Any) -> None:
        extra = sorted(set(body) - set(allowed))
        if extra:
            raise self.error(extra[0], "unknown field")


def _read_header(line: _Line, body: Mapping[str, Any]) -> TraceHeader:
    if body.get("record") != "header":
        raise line.error(
            "record", f"the first line must be the header, got {_shown(body.get('record'))}"
        )
    line.no_extras(body, _HEADER_FIELDS)
    if body.get("format") != TRACE_FORMAT:
        raise line.error("format", f"expected {TRACE_FORMAT!r}, got {_shown(body.get('format'))}")
    version = line.check(body, "version", _INT, False)
    if version != TRACE_VERSION:
        raise line.error(
            "version", f"unsupported version {version} (this reader reads {TRACE_VERSION})"
        )
    created_at = line.check(body, "created_at", _TIME, False)
    policy = body.get("policy")
    if not isinstance(policy, Mapping):
        raise line.error("policy", f"expected an object, got {_shown(policy)}")
    name = policy.get("name")
    if not isinstance(name, str):
        raise line.error("policy.name", f"expected a string, got {_shown(name)}")
    parameters = policy.get("parameters", {})
    if not isinstance(parameters, Mapping):
        raise line.error("policy.parameters", f"expected an object, got {_shown(parameters)}")
    extra = sorted(set(policy) - {"name", "parameters"})
    if extra:
        raise line.error(f"policy.{extra[0]}", "unknown field")
    ttl = line.check(body, "desired_ttl_seconds", _INT, True)
    source = line.check(body, "source", _STR, False)
    return TraceHeader(name, dict(parameters), ttl, source, created_at, version)


def _read_attempt(line: _Line, body: Mapping[str, Any]) -> dict[str, Any]:
    line.no_extras(body, ("record", *_ATTEMPT_FIELDS))
    row = {
        name: line.check(body, name, kind, null) for name, (kind, null) in _ATTEMPT_FIELDS.items()
    }
    if row["outcome"] not in _OUTCOMES:
        raise line.error(
            "outcome", f"expected one of {sorted(_OUTCOMES)}, got {_shown(row['outcome'])}"
        )
    if row["attempt"] < 1:
        raise line.error("attempt", f"expected a positive integer, got {row['attempt']}")
    if row["state"] is not None and row["state"] not in _STATES:
        raise line.error("state", f"expected one of {sorted(_STATES)}, got {_shown(row['state'])}")
    if (row["received_s"] is None) != (row["received_at"] is None):
        raise line.error("received_at", "received_s and received_at must both be set or both null")
    if row["received_s"] is not None and row["received_s"] < row["sent_s"]:
        raise line.error("received_s", f"{row['received_s']} is before sent_s {row['sent_s']}")
    outcome = Outcome(row["outcome"])
    if outcome in (Outcome.OK, Outcome.PRECONDITION_FAILED):
        for name in ("status", "state", "ttl_seconds"):
            if row[name] is None:
                raise line.error(name, f"expected a value for outcome {outcome.value!r}, got null")
    if outcome is Outcome.OK and row["lease_extended"] is None:
        raise line.error("lease_extended", "expected a value for outcome 'ok', got null")
    if outcome is Outcome.TIMEOUT and row["status"] is not None:
        raise line.error("status", f"expected null for outcome 'timeout', got {row['status']}")
    if (
        outcome in (Outcome.OK, Outcome.PRECONDITION_FAILED, Outcome.REJECTED)
        and row["status"] is None
    ):
        raise line.error("status", f"expected a value for outcome {outcome.value!r}, got null")
    return row


def _read_end(line: _Line, body: Mapping[str, Any]) -> dict[str, Any]:
    line.no_extras(body, ("record", *_END_FIELDS))
    return {name: line.check(body, name, kind, null) for name, (kind, null) in _END_FIELDS.items()}


def _attempts_frame(rows: list[dict[str, Any]], lines: list[int]) -> pd.DataFrame:
    columns = list(_ATTEMPT_FIELDS)
    frame = pd.DataFrame(rows, columns=columns)
    typed = pd.DataFrame(
        {
            "environment_id": frame["environment_id"].astype("string"),
            "work_id": frame["work_id"].astype("string"),
            "worker": frame["worker"].astype("string"),
            "attempt": frame["attempt"].astype("int64"),
            "sent_s": frame["sent_s"].astype("float64"),
            "received_s": pd.to_numeric(frame["received_s"], errors="raise").astype("float64"),
            "sent_at": pd.to_datetime(frame["sent_at"], utc=True, format="ISO8601").astype(
                "datetime64[ns, UTC]"
            ),
            "received_at": pd.to_datetime(frame["received_at"], utc=True, format="ISO8601").astype(
                "datetime64[ns, UTC]"
            ),
            "outcome": pd.Categorical(frame["outcome"], categories=[o.value for o in Outcome]),
            "status": frame["status"].astype("Int64"),
            "expected_last_heartbeat": frame["expected_last_heartbeat"].astype("string"),
            "desired_ttl_seconds": frame["desired_ttl_seconds"].astype("Int64"),
            "last_heartbeat": frame["last_heartbeat"].astype("string"),
            "lease_extended": frame["lease_extended"].astype("boolean"),
            "state": frame["state"].astype("string"),
            "ttl_seconds": frame["ttl_seconds"].astype("Int64"),
            "line": pd.Series(lines, dtype="int64"),
        }
    )
    return typed


def _ends_frame(rows: list[dict[str, Any]], lines: list[int]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(_END_FIELDS))
    return pd.DataFrame(
        {
            "environment_id": frame["environment_id"].astype("string"),
            "work_id": frame["work_id"].astype("string"),
            "worker": frame["worker"].astype("string"),
            "at_s": frame["at_s"].astype("float64"),
            "reason": frame["reason"].astype("string"),
            "line": pd.Series(lines, dtype="int64"),
        }
    )


def read_trace(path: str | Path) -> Trace:
    """Read and validate a trace file; see :class:`Trace` for the columns.

    Raises :class:`TraceError` (a :class:`ValueError`) naming the path, line
    and field of the first malformed line: a line that is not a JSON object,
    a missing, unknown or mistyped field, an unknown record kind or outcome,
    a missing header. Blank lines are errors too.
    """
    name = str(path)
    attempts: list[dict[str, Any]] = []
    attempt_lines: list[int] = []
    ends: list[dict[str, Any]] = []
    end_lines: list[int] = []
    header: TraceHeader | None = None
    with open(path, encoding="utf-8") as file:
        for number, text in enumerate(file, start=1):
            line = _Line(name, number)
            if not text.strip():
                raise line.error(None, "empty line")
            try:
                body = json.loads(text)
            except json.JSONDecodeError as error:
                raise line.error(
                    None, f"not valid JSON ({error.msg} at column {error.colno})"
                ) from None
            if not isinstance(body, dict):
                raise line.error(None, f"expected a JSON object, got {type(body).__name__}")
            if header is None:
                header = _read_header(line, body)
                continue
            kind = body.get("record")
            if kind == "attempt":
                attempts.append(_read_attempt(line, body))
                attempt_lines.append(number)
            elif kind == "end":
                ends.append(_read_end(line, body))
                end_lines.append(number)
            else:
                raise line.error("record", f"expected 'attempt' or 'end', got {_shown(kind)}")
    if header is None:
        raise TraceError(name, 1, None, "empty file: expected a header line")
    return Trace(
        header, _attempts_frame(attempts, attempt_lines), _ends_frame(ends, end_lines), name
    )
