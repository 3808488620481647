"""Trace import: leasekit JSON Lines, CSV, and the official SDK's OpenTelemetry spans.

Every importer returns the attempt table of :func:`leasekit.trace.read_trace`
(same columns, units and dtypes; see :class:`leasekit.trace.Trace`), sorted by
``sent_s``, and raises :class:`~leasekit.trace.TraceError` naming the path,
line and field of the first problem.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import pandas as pd

from ..policy import Outcome, classify_status
from ..protocol import WorkState, format_timestamp, parse_timestamp
from ..trace import _ATTEMPT_FIELDS, TRACE_FORMAT, TraceError, _attempts_frame, read_trace

FORMATS: Final = ("jsonl", "csv", "otlp", "otel-console")
"""Trace formats :func:`load_any_trace` reads, by the names ``--format`` takes."""

HEARTBEAT_SPAN: Final = "anthropic.environments.work.heartbeat"
"""The span name of the official SDK's heartbeat call."""

# Attribute names as the SDK sets them (anthropic/_tracing.py, resources/.../work.py).
_STATUS_CODE: Final = "http.response.status_code"
_ERROR_TYPE: Final = "error.type"
_URL_QUERY: Final = "url.query"
_WORK_ID: Final = "anthropic.environment.work.id"
_ENVIRONMENT_ID: Final = "anthropic.environment.id"
_INSTANCE_ID: Final = "service.instance.id"
_CLIENT_TIMEOUT: Final = "client_timeout_error"

_NS_PER_US: Final = 1_000


# --------------------------------------------------------------------------- entry point


def load_any_trace(path: str | Path, format: str | None = None) -> pd.DataFrame:
    """Read a heartbeat trace in any supported format as the attempt table.

    ``format`` is one of :data:`FORMATS` or ``None`` to detect it from the
    content: a first line that is a leasekit header is ``jsonl``; a first
    JSON value with ``resourceSpans`` is ``otlp`` (an
    ``ExportTraceServiceRequest``: one compact object a line as the
    collector's file exporter writes them, or one pretty-printed document);
    other pretty-printed objects are ``otel-console`` (the OpenTelemetry
    Python SDK's ``ConsoleSpanExporter``); a first line of comma-separated
    column names is ``csv``.

    The table has the columns of :class:`leasekit.trace.Trace` ``.attempts``;
    ``sent_s``/``received_s`` are seconds since the earliest send when the
    source has only wall-clock times. Raises :class:`TraceError` (path, line,
    field) for a malformed file, an undetectable format or an unknown one.
    """
    name = str(path)
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise TraceError(name, 0, None, f"unknown format {format!r} (one of {', '.join(FORMATS)})")
    readers: dict[str, Callable[[str], pd.DataFrame]] = {
        "jsonl": lambda p: read_trace(p).attempts,
        "csv": _read_csv,
        "otlp": _read_otlp,
        "otel-console": _read_console,
    }
    try:
        return readers[format](name)
    except UnicodeDecodeError as error:
        # the byte offset is all the codec knows; name it rather than a line
        raise TraceError(
            name, 0, None, f"not UTF-8 text (bad byte at offset {error.start})"
        ) from None


def detect_format(path: str | Path) -> str:
    """The format of a trace file by its first non-blank line (see :func:`load_any_trace`)."""
    name = str(path)
    try:
        with open(path, encoding="utf-8-sig") as file:  # -sig: a spreadsheet's BOM
            number, first = 0, ""
            for number, text in enumerate(file, start=1):  # noqa: B007 - number is used below
                if text.strip():
                    first = text.strip()
                    break
    except OSError as error:
        raise TraceError(name, 0, None, f"cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise TraceError(name, 1, None, "not a UTF-8 text file") from None
    if not first:
        raise TraceError(name, 1, None, "empty file: no trace to read")
    if first == "{" or first == "[":
        return _detect_pretty(name)
    if first.startswith("{"):
        try:
            body = json.loads(first)
        except json.JSONDecodeError as error:
            raise TraceError(
                name, number, None, f"not valid JSON ({error.msg} at column {error.colno})"
            ) from None
        if isinstance(body, dict):
            if body.get("format") == TRACE_FORMAT or body.get("record") is not None:
                return "jsonl"
            if "resourceSpans" in body or "resource_spans" in body:
                return "otlp"
        raise TraceError(
            name,
            number,
            None,
            "cannot tell the format: a JSON object that is neither a leasekit header nor an "
            "OTLP ExportTraceServiceRequest; name the format with --format",
        )
    columns = {c.strip() for c in first.split(",")}
    if columns & set(_ATTEMPT_FIELDS):
        return "csv"
    raise TraceError(
        name,
        number,
        None,
        f"cannot tell the format (expected one of {', '.join(FORMATS)}); name it with --format",
    )


def _is_otlp(body: Any) -> bool:
    """Whether a JSON value is an OTLP ``ExportTraceServiceRequest`` (or a list of them)."""
    if isinstance(body, list):
        return bool(body) and _is_otlp(body[0])
    return isinstance(body, dict) and ("resourceSpans" in body or "resource_spans" in body)


def _detect_pretty(path: str) -> str:
    """A file that starts with a JSON value spread over lines: a pretty-printed
    OTLP/JSON export (``otlp``) when that value is an ``ExportTraceServiceRequest``,
    else the console exporter's span objects (``otel-console``)."""
    try:
        values = _json_values(path, _read_text(path), limit=1)
    except (TraceError, UnicodeDecodeError):
        return "otel-console"  # broken JSON or text: its reader names the line
    return "otlp" if values and _is_otlp(values[0][1]) else "otel-console"


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise TraceError(path, 0, None, f"cannot read: {error.strerror}") from None


def _json_values(path: str, text: str, limit: int | None = None) -> list[tuple[int, Any]]:
    """The JSON values of ``text`` one after another, whatever their layout (one
    compact value a line, or pretty-printed over many), each with the line
    where it starts. A value cut short by the end of the file is reported at
    the line where it starts; any other syntax error at its own line."""
    decoder = json.JSONDecoder()
    values: list[tuple[int, Any]] = []
    position = 0
    end = len(text.rstrip())
    while limit is None or len(values) < limit:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        line = text.count("\n", 0, position) + 1
        try:
            body, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            where = line if error.pos >= end else error.lineno
            raise TraceError(
                path, where, None, f"not valid JSON ({error.msg} at column {error.colno})"
            ) from None
        values.append((line, body))
    return values


# --------------------------------------------------------------------------- rows


def _frame(rows: list[dict[str, Any]], lines: list[int]) -> pd.DataFrame:
    """The typed attempt table, sorted by send time (stable: file order breaks ties)."""
    frame = _attempts_frame(rows, lines)
    return frame.sort_values("sent_s", kind="stable").reset_index(drop=True)


def _number_attempts(rows: list[dict[str, Any]]) -> None:
    """Number attempts from 1 per (environment, work item, worker), in send order."""
    counters: dict[tuple[str, str, str], int] = {}
    for row in sorted(rows, key=lambda r: r["sent_s"]):
        if row.get("attempt") is not None:
            continue
        key = (row["environment_id"], row["work_id"], row["worker"])
        counters[key] = counters.get(key, 0) + 1
        row["attempt"] = counters[key]


# --------------------------------------------------------------------------- CSV

_LINE: Final = "line"
_CSV_DEFAULTS: Final[dict[str, str]] = {
    "environment_id": "env",
    "work_id": "work",
    "worker": "worker",
}


def _read_csv(path: str) -> pd.DataFrame:
    """CSV, one attempt a row, columns named like the JSON Lines attempt fields.

    Required columns: ``sent_s`` or ``sent_at``; ``received_s`` or
    ``received_at``; ``outcome`` or ``status``. Everything else is optional:
    ``environment_id``/``work_id``/``worker`` default to ``env``/``work``/
    ``worker``; ``attempt`` numbers rows per lease in send order; an empty
    ``outcome`` comes from ``status`` by :func:`leasekit.policy.classify_status`,
    and with no status either it is ``timeout`` (no answer came). With only
    wall-clock times, ``*_s`` are seconds since the earliest ``sent_at``; with
    only ``*_s``, ``sent_at``/``received_at`` are NaT. An empty cell is null.
    Unknown columns are errors, like unknown fields in JSON Lines; a ``line``
    column (an attempt table saved with ``to_csv``) is ignored.
    """
    try:
        file = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
    except OSError as error:
        raise TraceError(path, 0, None, f"cannot read: {error.strerror}") from None
    with file:
        reader = csv.reader(file)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceError(path, 1, None, "empty file: expected a header row") from None
        columns = [c.strip() for c in header]
        for column in columns:
            if column not in _ATTEMPT_FIELDS and column != _LINE:
                raise TraceError(path, 1, column, "unknown column")
        for either in (("sent_s", "sent_at"), ("received_s", "received_at"), ("outcome", "status")):
            if not set(either) & set(columns):
                raise TraceError(path, 1, either[0], f"missing column (need {' or '.join(either)})")
        cells: list[tuple[int, dict[str, str]]] = []
        previous_end = 1
        for values in reader:
            number = previous_end + 1
            previous_end = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(columns):
                raise TraceError(
                    path, number, None, f"expected {len(columns)} cells, got {len(values)}"
                )
            cells.append((number, dict(zip(columns, values, strict=True))))
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, raw in cells:
        rows.append(_csv_row(path, number, raw))
        lines.append(number)
    _csv_times(path, rows, lines)
    _number_attempts(rows)
    return _frame(rows, lines)


def _csv_value(path: str, number: int, name: str, text: str) -> Any:
    kind, nullable = _ATTEMPT_FIELDS[name]
    text = text.strip()
    if text == "":
        if nullable or name in ("sent_s", "sent_at", "outcome"):
            return None  # derived later, or checked there
        if name in _CSV_DEFAULTS:
            return _CSV_DEFAULTS[name]
        raise TraceError(path, number, name, "empty cell")
    try:
        if kind == "a number":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind == "an integer":
            return int(text)
        if kind == "a boolean":
            lowered = text.lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
            raise ValueError
        if kind == "an RFC 3339 timestamp":
            parse_timestamp(text)
        return text
    except ValueError:
        raise TraceError(path, number, name, f"expected {kind}, got {text!r}") from None


def _csv_row(path: str, number: int, raw: Mapping[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in _ATTEMPT_FIELDS}
    row.update(_CSV_DEFAULTS)
    for name, text in raw.items():
        if name != _LINE:  # where a row came from before; this file's line replaces it
            row[name] = _csv_value(path, number, name, text)
    if row["sent_s"] is None and row["sent_at"] is None:
        raise TraceError(path, number, "sent_s", "empty: need sent_s or sent_at")
    if row["outcome"] is None:
        status = row["status"]
        row["outcome"] = Outcome.TIMEOUT.value if status is None else classify_status(status).value
    elif row["outcome"] not in {o.value for o in Outcome}:
        raise TraceError(
            path,
            number,
            "outcome",
            f"expected one of {sorted(o.value for o in Outcome)}, got {row['outcome']!r}",
        )
    if row["state"] is not None and row["state"] not in {s.value for s in WorkState}:
        raise TraceError(path, number, "state", f"not a work state: {row['state']!r}")
    if row["attempt"] is not None and row["attempt"] < 1:
        raise TraceError(
            path, number, "attempt", f"expected a positive integer, got {row['attempt']}"
        )
    return row


def _csv_times(path: str, rows: list[dict[str, Any]], lines: list[int]) -> None:
    """Fill ``*_s`` from wall-clock times (seconds since the earliest send) and check order."""
    walls = [parse_timestamp(r["sent_at"]) for r in rows if r["sent_at"] is not None]
    origin_us = min(walls) if walls else None
    for row, number in zip(rows, lines, strict=True):
        for seconds, wall in (("sent_s", "sent_at"), ("received_s", "received_at")):
            if row[seconds] is None and row[wall] is not None:
                if origin_us is None:
                    raise TraceError(path, number, seconds, "empty, and no sent_at to derive it")
                row[seconds] = (parse_timestamp(row[wall]) - origin_us) / 1e6
        if row["sent_s"] is None:
            raise TraceError(path, number, "sent_s", "empty: need sent_s or sent_at")
        if row["received_s"] is not None and row["received_s"] < row["sent_s"]:
            raise TraceError(
                path, number, "received_s", f"{row['received_s']} is before sent_s {row['sent_s']}"
            )


# --------------------------------------------------------------------------- OpenTelemetry


@dataclass(frozen=True, slots=True)
class _Span:
    """The parts of one exported span that the import uses. Times in Unix nanoseconds."""

    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    status: str  # "OK", "ERROR" or "UNSET"
    worker: str
    line: int
    where: str  # the span's field path, for errors


def _spans_to_attempts(path: str, spans: list[_Span]) -> pd.DataFrame:
    """Heartbeat spans as attempts (see :func:`load_any_trace` for the rules)."""
    beats = [s for s in spans if s.name == HEARTBEAT_SPAN]
    if not beats:
        raise TraceError(path, 1, None, f"no {HEARTBEAT_SPAN!r} spans in the file")
    origin_ns = min(s.start_ns for s in beats)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for span in sorted(beats, key=lambda s: s.start_ns):
        rows.append(_span_row(path, span, origin_ns))
        lines.append(span.line)
    _number_attempts(rows)
    _backfill_last_heartbeat(rows)
    return _frame(rows, lines)


def _attribute(path: str, span: _Span, key: str, kind: type) -> Any:
    value = span.attributes.get(key)
    if value is None:
        return None
    if kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)  # OTLP/JSON writes 64-bit integers as strings
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TraceError(
            path,
            span.line,
            f"{span.where}attributes.{key}",
            f"expected {'an integer' if kind is int else 'a string'}, got {json.dumps(value)}",
        )
    return value


def _span_row(path: str, span: _Span, origin_ns: int) -> dict[str, Any]:
    """One heartbeat span as one attempt row.

    Outcome: the HTTP status by :func:`~leasekit.policy.classify_status` when
    the span has one; without one, ``timeout`` when ``error.type`` is the
    SDK's ``client_timeout_error`` or when the status is unset (the SDK leaves
    it unset when the call is cancelled, which is how its worker times out an
    attempt), else ``transient`` (``connection_error`` and the like). A call
    that the SDK's HTTP client retried (``http.request.resend_count``) is one
    attempt: its span covers every try, and its status is the last one's.
    """
    if span.end_ns < span.start_ns:
        raise TraceError(path, span.line, f"{span.where}end", "the span ends before it starts")
    work_id = _attribute(path, span, _WORK_ID, str)
    if work_id is None:
        raise TraceError(path, span.line, f"{span.where}attributes.{_WORK_ID}", "missing")
    environment_id = _attribute(path, span, _ENVIRONMENT_ID, str) or "env"
    status = _attribute(path, span, _STATUS_CODE, int)
    error_type = _attribute(path, span, _ERROR_TYPE, str)
    query = _attribute(path, span, _URL_QUERY, str) or ""
    if status is not None:
        outcome = classify_status(status)
    elif error_type == _CLIENT_TIMEOUT or span.status == "UNSET":
        outcome = Outcome.TIMEOUT
    else:
        outcome = Outcome.TRANSIENT
    params = parse_qs(query, keep_blank_values=True)  # percent-decodes the values
    expected = params.get("expected_last_heartbeat", [None])[-1]
    desired_text = params.get("desired_ttl_seconds", [None])[-1]
    desired = int(desired_text) if desired_text and desired_text.isdigit() else None
    return {
        "environment_id": environment_id,
        "work_id": work_id,
        "worker": span.worker,
        "attempt": None,
        "sent_s": (span.start_ns - origin_ns) / 1e9,
        "received_s": (span.end_ns - origin_ns) / 1e9,
        "sent_at": format_timestamp(span.start_ns // _NS_PER_US),
        "received_at": format_timestamp(span.end_ns // _NS_PER_US),
        "outcome": outcome.value,
        "status": status,
        "expected_last_heartbeat": expected,
        "desired_ttl_seconds": desired,
        "last_heartbeat": None,
        "lease_extended": None,
        "state": None,
        "ttl_seconds": None,
    }


def _backfill_last_heartbeat(rows: list[dict[str, Any]]) -> None:
    """Spans do not record the answer, but the client echoes it: the next
    attempt's ``expected_last_heartbeat`` is the ``last_heartbeat`` of the
    success before it (the SDK never re-formats it). Fill that in."""
    latest_ok: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["sent_s"]):
        key = (row["environment_id"], row["work_id"], row["worker"])
        previous = latest_ok.get(key)
        expected = row["expected_last_heartbeat"]
        if (
            previous is not None
            and expected not in (None, "NO_HEARTBEAT")
            and (
                previous["last_heartbeat"] is None
                and expected != previous["expected_last_heartbeat"]
            )
        ):
            previous["last_heartbeat"] = expected
        if row["outcome"] == Outcome.OK.value:
            latest_ok[key] = row


# ----------------------------------------------------------------- OTLP/JSON (file exporter)

_OTLP_STATUS: Final[dict[Any, str]] = {
    0: "UNSET",
    1: "OK",
    2: "ERROR",
    "STATUS_CODE_UNSET": "UNSET",
    "STATUS_CODE_OK": "OK",
    "STATUS_CODE_ERROR": "ERROR",
}


def _otlp_value(path: str, line: int, where: str, value: Any) -> Any:
    """An OTLP ``AnyValue`` as a Python value."""
    if not isinstance(value, dict):
        raise TraceError(path, line, where, f"expected an AnyValue object, got {json.dumps(value)}")
    if not value:
        return None
    kind, inner = next(iter(value.items()))
    if kind in ("stringValue", "boolValue", "doubleValue"):
        return inner
    if kind == "intValue":
        if isinstance(inner, int) or (isinstance(inner, str) and inner.lstrip("-").isdigit()):
            return int(inner)
        raise TraceError(path, line, f"{where}.intValue", f"expected an integer, got {inner!r}")
    if kind == "arrayValue":
        items = inner.get("values", []) if isinstance(inner, dict) else []
        return [_otlp_value(path, line, f"{where}.arrayValue", v) for v in items]
    return inner


def _otlp_attributes(path: str, line: int, where: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise TraceError(path, line, where, f"expected a list, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for index, entry in enumerate(raw):
        here = f"{where}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise TraceError(path, line, f"{here}.key", "expected a string key")
        out[entry["key"]] = _otlp_value(path, line, f"{here}.value", entry.get("value", {}))
    return out


def _otlp_nanos(path: str, line: int, where: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if value is None:
        raise TraceError(path, line, where, "missing")
    raise TraceError(path, line, where, f"expected Unix nanoseconds, got {json.dumps(value)}")


def _list(path: str, line: int, where: str, body: Mapping[str, Any], *keys: str) -> list[Any]:
    for key in keys:
        if key in body:
            value = body[key]
            if not isinstance(value, list):
                raise TraceError(path, line, f"{where}{key}", "expected a list")
            return value
    return []


def _read_otlp(path: str) -> pd.DataFrame:
    """OTLP/JSON ``ExportTraceServiceRequest`` objects: one compact object a line,
    as the collector's file exporter writes them, or pretty-printed over many
    lines (a JSON array of them is read too): ``resourceSpans[].scopeSpans[].spans[]``,
    with times as strings of Unix nanoseconds and ``status.code`` an integer
    (or its enum name, as the protobuf JSON mapping prints it). The line of a
    span is the line where its request object starts."""
    spans: list[_Span] = []
    for number, body in _json_values(path, _read_text(path)):
        for item in body if isinstance(body, list) else [body]:
            if not isinstance(item, dict):
                raise TraceError(path, number, None, "expected a JSON object")
            spans.extend(_otlp_request_spans(path, number, item))
    return _spans_to_attempts(path, spans)


def _otlp_request_spans(path: str, number: int, body: Mapping[str, Any]) -> Iterator[_Span]:
    resources = _list(path, number, "", body, "resourceSpans", "resource_spans")
    for r, resource_spans in enumerate(resources):
        rwhere = f"resourceSpans[{r}]."
        if not isinstance(resource_spans, dict):
            raise TraceError(path, number, rwhere[:-1], "expected an object")
        resource = resource_spans.get("resource") or {}
        resource_attributes = _otlp_attributes(
            path, number, f"{rwhere}resource.attributes", resource.get("attributes")
        )
        worker = str(resource_attributes.get(_INSTANCE_ID) or "otel")
        scopes = _list(
            path, number, rwhere, resource_spans, "scopeSpans", "instrumentationLibrarySpans"
        )
        for s, scope_spans in enumerate(scopes):
            swhere = f"{rwhere}scopeSpans[{s}]."
            if not isinstance(scope_spans, dict):
                raise TraceError(path, number, swhere[:-1], "expected an object")
            for i, span in enumerate(_list(path, number, swhere, scope_spans, "spans")):
                where = f"{swhere}spans[{i}]."
                if not isinstance(span, dict):
                    raise TraceError(path, number, where[:-1], "expected an object")
                name = span.get("name")
                if not isinstance(name, str):
                    raise TraceError(path, number, f"{where}name", "expected a string")
                if name != HEARTBEAT_SPAN:
                    continue
                status = span.get("status") or {}
                code = status.get("code", 0) if isinstance(status, dict) else None
                if code not in _OTLP_STATUS:
                    raise TraceError(
                        path, number, f"{where}status.code", f"not a status code: {code!r}"
                    )
                yield _Span(
                    name=name,
                    start_ns=_otlp_nanos(
                        path, number, f"{where}startTimeUnixNano", span.get("startTimeUnixNano")
                    ),
                    end_ns=_otlp_nanos(
                        path, number, f"{where}endTimeUnixNano", span.get("endTimeUnixNano")
                    ),
                    attributes=_otlp_attributes(
                        path, number, f"{where}attributes", span.get("attributes")
                    ),
                    status=_OTLP_STATUS[code],
                    worker=worker,
                    line=number,
                    where=where,
                )


# ------------------------------------------------------------ console exporter (pretty JSON)


def _console_time(path: str, line: int, where: str, value: Any) -> int:
    if not isinstance(value, str):
        raise TraceError(path, line, where, "missing" if value is None else "expected a string")
    try:
        return parse_timestamp(value) * _NS_PER_US
    except ValueError:
        raise TraceError(
            path, line, where, f"expected an ISO 8601 timestamp, got {value!r}"
        ) from None


def _read_console(path: str) -> pd.DataFrame:
    """The OpenTelemetry Python SDK's ``ConsoleSpanExporter`` output: pretty-printed
    span objects one after another (``name``, ``context``, ``start_time``,
    ``end_time`` as ISO strings, ``status.status_code``, ``attributes`` a flat
    object, ``resource.attributes``). A JSON array of such objects is read too.
    The line of a span is the line where its object starts."""
    spans: list[_Span] = []
    objects: list[tuple[int, Any]] = []
    for line, body in _json_values(path, _read_text(path)):
        if isinstance(body, list):
            objects.extend((line, item) for item in body)
        else:
            objects.append((line, body))
    for line, body in objects:
        if not isinstance(body, dict):
            raise TraceError(path, line, None, "expected a span object")
        name = body.get("name")
        if not isinstance(name, str):
            raise TraceError(path, line, "name", "expected a string")
        if name != HEARTBEAT_SPAN:
            continue
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise TraceError(path, line, "attributes", "expected an object")
        status = body.get("status") or {}
        code = status.get("status_code", "UNSET") if isinstance(status, dict) else None
        if code not in ("UNSET", "OK", "ERROR"):
            raise TraceError(path, line, "status.status_code", f"not a status code: {code!r}")
        resource = body.get("resource") or {}
        resource_attributes = resource.get("attributes") if isinstance(resource, dict) else None
        worker = "otel"
        if isinstance(resource_attributes, dict) and resource_attributes.get(_INSTANCE_ID):
            worker = str(resource_attributes[_INSTANCE_ID])
        spans.append(
            _Span(
                name=name,
                start_ns=_console_time(path, line, "start_time", body.get("start_time")),
                end_ns=_console_time(path, line, "end_time", body.get("end_time")),
                attributes=attributes,
                status=code,
                worker=worker,
                line=line,
                where="",
            )
        )
    return _spans_to_attempts(path, spans)
