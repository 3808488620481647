"""The trace schema: a recorded trace round-trips; malformed files are rejected clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from leasekit.policy import Outcome, Result, Send
from leasekit.protocol import HeartbeatAnswer, LeaseState, WorkState
from leasekit.trace import TraceError, TraceHeader, TraceWriter, read_trace


def _write_sample(path: Path) -> TraceWriter:
    writer = TraceWriter(
        path,
        TraceHeader("leasekit", {"beat_fraction": 1 / 3}, desired_ttl_seconds=5, source="test"),
        origin=100.0,
    )
    ids = {"environment_id": "env_1", "work_id": "work_1", "worker": "w1"}
    ok = HeartbeatAnswer("2026-11-29T09:00:00.000001Z", True, WorkState.ACTIVE, 5)
    writer.attempt(
        **ids,
        send=Send(100.0, 1.0, "NO_HEARTBEAT", 5, 1),
        result=Result(Outcome.OK, 100.5, 100.75, answer=ok, status=200),
    )
    writer.attempt(
        **ids,
        send=Send(102.0, 1.0, ok.last_heartbeat, 5, 2),
        result=Result(Outcome.TIMEOUT, 102.0, 103.0),
    )
    current = LeaseState("2026-11-29T09:00:02.000001Z", WorkState.ACTIVE, 5)
    writer.attempt(
        **ids,
        send=Send(103.5, 1.0, ok.last_heartbeat, 5, 3),
        result=Result(
            Outcome.PRECONDITION_FAILED, 103.5, 103.625, current_state=current, status=412
        ),
    )
    writer.end(**ids, at=103.625, reason="lost")
    writer.close()
    return writer


def test_a_recorded_trace_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    _write_sample(path)
    trace = read_trace(path)
    assert trace.header.policy_name == "leasekit"
    assert trace.header.policy_parameters == {"beat_fraction": 1 / 3}
    assert trace.header.desired_ttl_seconds == 5
    frame = trace.attempts
    assert list(frame["attempt"]) == [1, 2, 3]
    assert list(frame["outcome"]) == ["ok", "timeout", "precondition_failed"]
    assert frame["sent_s"].tolist() == [0.5, 2.0, 3.5]
    assert frame["received_s"].tolist() == [0.75, 3.0, 3.625]
    assert frame["status"].tolist()[0] == 200 and pd.isna(frame["status"].iloc[1])
    assert frame["last_heartbeat"].iloc[2] == "2026-11-29T09:00:02.000001Z"
    assert frame["expected_last_heartbeat"].iloc[0] == "NO_HEARTBEAT"
    assert str(frame["sent_at"].dtype) == "datetime64[ns, UTC]"
    assert str(frame["status"].dtype) == "Int64"
    assert str(frame["lease_extended"].dtype) == "boolean"
    # the wall-clock times keep the monotonic spacing
    spacing = (frame["received_at"].iloc[0] - frame["sent_at"].iloc[0]).total_seconds()
    assert spacing == pytest.approx(0.25, abs=1e-6)
    assert trace.ends["reason"].tolist() == ["lost"]
    assert trace.ends["at_s"].tolist() == [3.625]
    # every line is a JSON object that names its record kind
    kinds = [json.loads(line)["record"] for line in path.read_text().splitlines()]
    assert kinds == ["header", "attempt", "attempt", "attempt", "end"]


def test_an_empty_trace_reads_as_empty_frames(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    TraceWriter(path, TraceHeader("sdk")).close()
    trace = read_trace(path)
    assert trace.attempts.empty and "sent_s" in trace.attempts.columns
    assert trace.ends.empty


def _mutate(path: Path, line: int, change: dict[str, object] | str) -> None:
    lines = path.read_text().splitlines()
    if isinstance(change, str):
        lines[line - 1] = change
    else:
        body = json.loads(lines[line - 1])
        for key, value in change.items():
            if value is _DELETE:
                del body[key]
            else:
                body[key] = value
        lines[line - 1] = json.dumps(body)
    path.write_text("\n".join(lines) + "\n")


_DELETE = object()


@pytest.mark.parametrize(
    ("line", "change", "field", "words"),
    [
        (3, {"sent_s": "abc"}, "sent_s", 'expected a number, got "abc"'),
        (2, {"attempt": 1.5}, "attempt", "expected an integer"),
        (2, {"outcome": "maybe"}, "outcome", "expected one of"),
        (2, {"worker": _DELETE}, "worker", "missing"),
        (2, {"api_key": "k"}, "api_key", "unknown field"),
        (2, {"sent_at": "yesterday"}, "sent_at", "RFC 3339"),
        (2, {"record": "beat"}, "record", "expected 'attempt' or 'end'"),
        (2, {"state": "alive"}, "state", "expected one of"),
        (2, {"received_s": 0.1}, "received_s", "before sent_s"),
        (3, {"status": 504}, "status", "expected null for outcome 'timeout'"),
        (2, {"lease_extended": None}, "lease_extended", "expected a value"),
        (1, {"version": 2}, "version", "unsupported version 2"),
        (1, {"format": "csv"}, "format", "expected 'leasekit-trace'"),
        (1, {"record": "attempt"}, "record", "first line must be the header"),
        (5, {"at_s": None}, "at_s", "expected a number, got null"),
        (4, "{not json", None, "not valid JSON"),
        (4, "[1, 2]", None, "expected a JSON object"),
        (4, "", None, "empty line"),
    ],
)
def test_malformed_lines_are_rejected_with_path_line_and_field(
    tmp_path: Path, line: int, change: dict[str, object] | str, field: str | None, words: str
) -> None:
    path = tmp_path / "trace.jsonl"
    _write_sample(path)
    _mutate(path, line, change)
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert words in str(error)
    assert str(error).startswith(f"{path}:{line}: ")


def test_the_error_message_reads_like_a_compiler_error(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    _write_sample(path)
    _mutate(path, 3, {"sent_s": "abc"})
    with pytest.raises(
        TraceError, match=r"trace\.jsonl:3: field 'sent_s': expected a number, got \"abc\""
    ):
        read_trace(path)


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text("")
    with pytest.raises(TraceError, match="expected a header"):
        read_trace(path)
