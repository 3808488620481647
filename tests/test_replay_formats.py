"""Trace import: every format, format detection, and malformed files.

The OpenTelemetry spans are the real thing: the official ``anthropic`` SDK
calls ``beta.environments.work.heartbeat`` against a scripted loopback HTTP
server, with the OpenTelemetry Python SDK recording its spans. The console
exporter prints them; the OTLP/JSON lines are the SDK's own protobuf encoding
(``opentelemetry-exporter-otlp-proto-common``) in the collector file
exporter's JSON dialect (hex ids, integer enums). ``python
tests/test_replay_formats.py`` rewrites the small fixtures in ``tests/data/``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pandas as pd
import pytest

from leasekit.policy import Outcome, Result, Send
from leasekit.protocol import HeartbeatAnswer, WorkState, format_timestamp
from leasekit.replay import detect_format, load_any_trace
from leasekit.trace import TraceError, TraceHeader, TraceWriter, read_trace

DATA = Path(__file__).parent / "data"

# What the scripted server does with each heartbeat, in order: a status and a delay (s).
_SCRIPT = [
    ("work_1", 200, 0.0),  # claim
    ("work_1", 200, 0.0),  # renew
    ("work_1", 503, 0.0),  # transient (the client does not retry: max_retries=0)
    ("work_1", 200, 0.6),  # hangs: the worker-style anyio.fail_after cancels it
    ("work_1", 200, 0.6),  # hangs: the request's own timeout fires
    ("work_1", 412, 0.0),  # lease lost
    ("work_2", 404, 0.0),  # rejected
]
EXPECTED_OUTCOMES = [
    "ok",
    "ok",
    "transient",
    "timeout",
    "timeout",
    "precondition_failed",
    "rejected",
    "transient",  # a connection error: no status, error.type connection_error
]


@dataclass
class _Recorded:
    console: str
    otlp_lines: list[str]
    stamps: list[str]  # the last_heartbeat of each 200 answer


def _serve(stamps: list[str]) -> tuple[ThreadingHTTPServer, int]:
    script = list(_SCRIPT)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            with lock:
                _work, status, delay = script.pop(0)
            time.sleep(delay)
            if status == 200:
                stamp = format_timestamp(time.time_ns() // 1_000)
                stamps.append(stamp)
                body: dict[str, Any] = {
                    "last_heartbeat": stamp,
                    "lease_extended": True,
                    "state": "active",
                    "ttl_seconds": 90,
                    "type": "work_heartbeat",
                }
            else:
                kind = {412: "invalid_request_error", 404: "not_found_error"}.get(
                    status, "api_error"
                )
                details = {
                    "error_code": "heartbeat_precondition_failed",
                    "current_state": {
                        "last_heartbeat": stamps[-1] if stamps else None,
                        "lease_extended": False,
                        "state": "active",
                        "ttl_seconds": 90,
                    },
                }
                body = {
                    "type": "error",
                    "error": {"type": kind, "message": "scripted", "details": details},
                    "request_id": "req_test",
                }
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up on a hanging request

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _otlp_json(spans: Any) -> dict[str, Any]:
    """The SDK's protobuf request in the collector file exporter's JSON dialect."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    body: dict[str, Any] = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource in body["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:  # OTLP/JSON writes ids as hex, not base64
                        span[key] = base64.b64decode(span[key]).hex()
    return body


def record_sdk_spans() -> _Recorded:
    """Run the official SDK's heartbeat call through every outcome; return its spans."""
    import anthropic
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    stamps: list[str] = []
    server, port = _serve(stamps)
    memory, printed = InMemorySpanExporter(), io.StringIO()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=printed)))
    options: Any = {"tracer_provider": provider}

    async def calls() -> None:
        client = anthropic.AsyncAnthropic(
            api_key="test-key",
            base_url=f"http://127.0.0.1:{port}",
            max_retries=0,
            open_telemetry=options,
        )
        work = client.beta.environments.work
        last = "NO_HEARTBEAT"
        for index, (work_id, _status, _delay) in enumerate(_SCRIPT):
            try:
                if index == 3:
                    with anyio.fail_after(0.2):  # how the SDK worker bounds an attempt
                        await work.heartbeat(
                            work_id, environment_id="env_1", expected_last_heartbeat=last
                        )
                elif index == 4:
                    await work.heartbeat(
                        work_id, environment_id="env_1", expected_last_heartbeat=last, timeout=0.2
                    )
                else:
                    answer = await work.heartbeat(
                        work_id,
                        environment_id="env_1",
                        expected_last_heartbeat="NO_HEARTBEAT" if work_id == "work_2" else last,
                    )
                    last = answer.last_heartbeat
            except (anthropic.APIError, TimeoutError):
                pass
        # nobody listens on the port any more: a connection error
        server.shutdown()
        server.server_close()
        await anyio.sleep(0.7)  # let the hanging handlers finish
        with contextlib.suppress(anthropic.APIConnectionError):
            await work.heartbeat("work_3", environment_id="env_1", expected_last_heartbeat="x")

    anyio.run(calls)
    provider.shutdown()
    spans = memory.get_finished_spans()
    assert len(spans) == len(EXPECTED_OUTCOMES)
    # the collector writes a request per export: split into two lines
    lines = [json.dumps(_otlp_json(spans[:4])), json.dumps(_otlp_json(spans[4:]))]
    return _Recorded(printed.getvalue(), lines, stamps)


@pytest.fixture(scope="module")
def recorded() -> _Recorded:
    return record_sdk_spans()


@pytest.fixture
def console_file(tmp_path: Path, recorded: _Recorded) -> Path:
    path = tmp_path / "spans.console.json"
    path.write_text(recorded.console)
    return path


@pytest.fixture
def otlp_file(tmp_path: Path, recorded: _Recorded) -> Path:
    path = tmp_path / "spans.otlp.jsonl"
    path.write_text("\n".join(recorded.otlp_lines) + "\n")
    return path


def _jsonl_trace(path: Path) -> Path:
    with TraceWriter(path, TraceHeader("sdk", source="test"), origin=0.0) as writer:
        ids = {"environment_id": "env_1", "work_id": "work_1", "worker": "w1"}
        answer = HeartbeatAnswer("2026-11-29T09:00:00.000001Z", True, WorkState.ACTIVE, 90)
        writer.attempt(
            **ids,
            send=Send(0.0, 30, "NO_HEARTBEAT", None, 1),
            result=Result(Outcome.OK, 0.0, 0.05, answer=answer, status=200),
        )
        writer.attempt(
            **ids,
            send=Send(30.0, 30, answer.last_heartbeat, None, 2),
            result=Result(Outcome.TIMEOUT, 30.05, 60.05),
        )
    return path


# --------------------------------------------------------------------- real SDK spans


def test_the_sdk_console_spans_import_with_every_outcome(
    console_file: Path, recorded: _Recorded
) -> None:
    assert detect_format(console_file) == "otel-console"
    frame = load_any_trace(console_file)
    assert list(frame["outcome"]) == EXPECTED_OUTCOMES
    statuses = frame["status"].fillna(0).tolist()
    assert statuses == [200, 200, 503, 0, 0, 412, 404, 0]
    ones = frame[frame["work_id"] == "work_1"]
    # the query's expected_last_heartbeat, percent-decoded, is what the client echoed
    first, second = recorded.stamps[:2]
    assert list(ones["expected_last_heartbeat"]) == [
        "NO_HEARTBEAT",
        first,
        second,
        second,
        second,
        second,
    ]
    # the answers' values are read back from the next echo
    assert list(ones["last_heartbeat"].iloc[:2]) == [first, second]
    assert ones["last_heartbeat"].iloc[2:].isna().all()
    assert list(frame["attempt"].iloc[:6]) == [1, 2, 3, 4, 5, 6]
    assert set(frame["environment_id"]) == {"env_1"}
    assert frame["worker"].nunique() == 1  # the process's service.instance.id
    assert (frame["received_s"] >= frame["sent_s"]).all()
    assert frame["sent_s"].iloc[0] == 0.0
    # the cancelled attempt lasted until the cancel, the timed-out one until its timeout
    waits = (frame["received_s"] - frame["sent_s"]).iloc[3:5]
    assert (waits >= 0.19).all()
    assert frame["line"].iloc[0] == 1 and frame["line"].is_monotonic_increasing


def test_otlp_json_and_console_give_the_same_table(console_file: Path, otlp_file: Path) -> None:
    assert detect_format(otlp_file) == "otlp"
    otlp = load_any_trace(otlp_file)
    console = load_any_trace(console_file)
    assert list(otlp["line"]) == [1, 1, 1, 1, 2, 2, 2, 2]
    for column in ("outcome", "status", "expected_last_heartbeat", "last_heartbeat", "work_id"):
        assert otlp[column].tolist() == console[column].tolist(), column
    # nanoseconds in OTLP, microseconds in the console's ISO strings
    assert (otlp["sent_s"] - console["sent_s"]).abs().max() < 2e-6


@pytest.mark.parametrize("layout", ["one document", "an array"])
def test_a_pretty_printed_otlp_export_reads_like_the_compact_one(
    tmp_path: Path, otlp_file: Path, layout: str
) -> None:
    requests = [json.loads(line) for line in otlp_file.read_text().splitlines()]
    if layout == "one document":
        # one request holding every span, pretty-printed as exporters and `jq .` write it
        merged = requests[0]
        merged["resourceSpans"] = [rs for r in requests for rs in r["resourceSpans"]]
        text = json.dumps(merged, indent=2)
    else:
        text = json.dumps(requests, indent=4)
    path = tmp_path / "pretty.json"
    path.write_text(text + "\n")
    assert detect_format(path) == "otlp"
    for format in (None, "otlp"):
        pretty = load_any_trace(path, format)
        compact = load_any_trace(otlp_file)
        for column in ("sent_s", "received_s", "outcome", "status", "expected_last_heartbeat"):
            assert pretty[column].tolist() == compact[column].tolist(), column
        assert (pretty["line"] == 1).all()


def test_bad_pretty_otlp_names_the_line_of_the_error(tmp_path: Path, otlp_file: Path) -> None:
    body = json.loads(otlp_file.read_text().splitlines()[0])
    text = json.dumps(body, indent=2).splitlines()
    text[5] = text[5] + " oops"
    path = tmp_path / "pretty.json"
    path.write_text("\n".join(text) + "\n")
    error = _error(path, "otlp")
    assert error.line == 6 and "not valid JSON" in error.message


def test_imported_tables_have_the_trace_readers_dtypes(
    tmp_path: Path, otlp_file: Path, console_file: Path
) -> None:
    reference = read_trace(_jsonl_trace(tmp_path / "t.jsonl")).attempts
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("sent_s,received_s,status\n0,0.1,200\n1,1.2,\n")
    for path in (otlp_file, console_file, csv_path, tmp_path / "t.jsonl"):
        frame = load_any_trace(path)
        assert list(frame.columns) == list(reference.columns), path
        assert frame.dtypes.astype(str).tolist() == reference.dtypes.astype(str).tolist(), path


def test_committed_fixtures_still_import() -> None:
    """The small files in tests/data/ were written by this module from real SDK spans."""
    otlp = load_any_trace(DATA / "sdk_heartbeats.otlp.jsonl")
    console = load_any_trace(DATA / "sdk_heartbeats.console.json")
    assert list(otlp["outcome"]) == list(console["outcome"]) == EXPECTED_OUTCOMES


# --------------------------------------------------------------------- JSONL and CSV


def test_jsonl_delegates_to_read_trace(tmp_path: Path) -> None:
    path = _jsonl_trace(tmp_path / "t.jsonl")
    assert detect_format(path) == "jsonl"
    pd.testing.assert_frame_equal(load_any_trace(path), read_trace(path).attempts)


def test_csv_derives_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "work_id,sent_at,received_at,status,outcome\n"
        "w1,2026-11-29T09:00:10Z,2026-11-29T09:00:10.5Z,200,\n"
        "w1,2026-11-29T09:00:40Z,2026-11-29T09:01:10Z,,\n"
        "w1,2026-11-29T09:01:10Z,2026-11-29T09:01:10.25Z,412,\n"
        "w2,2026-11-29T09:00:00Z,2026-11-29T09:00:00.1Z,503,\n"
        "w1,2026-11-29T09:01:40Z,2026-11-29T09:01:41Z,,transient\n"
    )
    assert detect_format(path) == "csv"
    frame = load_any_trace(path)
    # sorted by send; seconds since the earliest send
    assert list(frame["sent_s"]) == [0.0, 10.0, 40.0, 70.0, 100.0]
    assert list(frame["received_s"]) == [0.1, 10.5, 70.0, 70.25, 101.0]
    assert list(frame["outcome"]) == [
        "transient",
        "ok",
        "timeout",
        "precondition_failed",
        "transient",
    ]
    assert list(frame["attempt"]) == [1, 1, 2, 3, 4]
    assert set(frame["worker"]) == {"worker"} and set(frame["environment_id"]) == {"env"}
    assert list(frame["line"]) == [5, 2, 3, 4, 6]


def test_csv_with_only_monotonic_seconds_has_no_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("sent_s,received_s,outcome,lease_extended\n0,0.5,ok,true\n30,30.5,ok,1\n")
    frame = load_any_trace(path, format="csv")
    assert frame["sent_at"].isna().all()
    assert frame["lease_extended"].tolist() == [True, True]


def test_an_attempt_table_saved_as_csv_reads_back(tmp_path: Path, otlp_file: Path) -> None:
    original = load_any_trace(otlp_file)
    path = tmp_path / "attempts.csv"  # what `leasekit replay --out` writes
    original.to_csv(path, index=False)
    again = load_any_trace(path)
    assert list(again["line"]) == list(range(2, 2 + len(original)))
    pd.testing.assert_frame_equal(again.drop(columns="line"), original.drop(columns="line"))


def test_csv_from_a_spreadsheet_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffsent_s,received_s,status\r\n0,0.5,200\r\n".encode())
    assert detect_format(path) == "csv"
    assert load_any_trace(path)["status"].tolist() == [200]


# --------------------------------------------------------------------- malformed files


def _error(path: Path, format: str | None = None) -> TraceError:
    with pytest.raises(TraceError) as caught:
        load_any_trace(path, format)
    assert str(caught.value).startswith(f"{path}:{caught.value.line}: ")
    return caught.value


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("sent_s,received_s\n0,1\n", 1, "outcome", "missing column"),
        ("sent_s,received_s,outcome,colour\n", 1, "colour", "unknown column"),
        ("sent_s,received_s,outcome\n0,1,ok\nabc,1,ok\n", 3, "sent_s", "expected a number"),
        ("sent_at,received_s,outcome\nyesterday,1,ok\n", 2, "sent_at", "RFC 3339"),
        ("sent_s,received_s,status\n0,1,2xx\n", 2, "status", "expected an integer"),
        ("sent_s,received_s,outcome\n0,1,maybe\n", 2, "outcome", "expected one of"),
        ("sent_s,received_s,outcome\n0,1\n", 2, None, "expected 3 cells"),
        ("sent_s,received_s,outcome\n5,1,ok\n", 2, "received_s", "before sent_s"),
        ("sent_s,received_s,outcome,attempt\n0,1,ok,0\n", 2, "attempt", "positive"),
    ],
)
def test_bad_csv_names_path_line_and_field(
    tmp_path: Path, text: str, line: int, field: str | None, words: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    error = _error(path, "csv")
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert words in error.message


def _span_path(line: int) -> str:
    return "resourceSpans[0].scopeSpans[0].spans[1]."


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda s: s.pop("startTimeUnixNano"), "startTimeUnixNano", "missing"),
        (lambda s: s.update(endTimeUnixNano="soon"), "endTimeUnixNano", "Unix nanoseconds"),
        (lambda s: s.update(status={"code": 7}), "status.code", "not a status code"),
        (
            lambda s: s["attributes"].append(
                {"key": "http.response.status_code", "value": {"stringValue": "OK"}}
            ),
            "attributes.http.response.status_code",
            "expected an integer",
        ),
        (
            lambda s: s.update(
                attributes=[a for a in s["attributes"] if "work.id" not in a["key"]]
            ),
            "attributes.anthropic.environment.work.id",
            "missing",
        ),
    ],
)
def test_bad_otlp_names_path_line_and_field(
    otlp_file: Path, change: Any, field: str, words: str
) -> None:
    lines = otlp_file.read_text().splitlines()
    body = json.loads(lines[1])
    change(body["resourceSpans"][0]["scopeSpans"][0]["spans"][1])
    lines[1] = json.dumps(body)
    otlp_file.write_text("\n".join(lines) + "\n")
    error = _error(otlp_file)
    assert (error.line, error.field) == (2, _span_path(2) + field)
    assert words in error.message


def test_bad_json_in_otlp_names_the_line(otlp_file: Path) -> None:
    otlp_file.write_text(otlp_file.read_text() + '{"resourceSpans": [\n')
    error = _error(otlp_file)
    assert (error.line, error.field) == (3, None)
    assert "not valid JSON" in error.message


def test_bad_console_span_names_the_line_where_it_starts(console_file: Path) -> None:
    text = console_file.read_text()
    starts = [n for n, line in enumerate(text.splitlines(), start=1) if line == "{"]
    objects = text.split("\n{\n")
    # break the third span's start time
    third = objects[2].replace('"start_time": "', '"start_time": "yesterday', 1)
    console_file.write_text("\n{\n".join([*objects[:2], third, *objects[3:]]))
    error = _error(console_file)
    assert (error.line, error.field) == (starts[2], "start_time")
    assert "ISO 8601" in error.message


def test_truncated_console_output_is_bad_json(console_file: Path) -> None:
    text = console_file.read_text()
    console_file.write_text(text[: len(text) // 2])
    error = _error(console_file)
    assert error.field is None and "not valid JSON" in error.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty file"),
        ("hello world\n", "cannot tell the format"),
        ('{"some": "object"}\n', "cannot tell the format"),
    ],
)
def test_undetectable_files_say_so(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "mystery.txt"
    path.write_text(text)
    error = _error(path)
    assert words in error.message


@pytest.mark.parametrize("format", ["csv", "otlp", "otel-console", "jsonl"])
def test_a_binary_file_is_not_text(tmp_path: Path, format: str) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"sent_s,received_s,status\n\xff\xfe\x00\x81\n")
    error = _error(path, format)
    assert "UTF-8" in error.message or "not valid JSON" in error.message


def test_a_file_without_heartbeat_spans_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.otlp.jsonl"
    path.write_text(json.dumps({"resourceSpans": []}) + "\n")
    assert "no 'anthropic.environments.work.heartbeat' spans" in _error(path).message


def test_unknown_format_names_the_choices(tmp_path: Path) -> None:
    path = _jsonl_trace(tmp_path / "t.jsonl")
    assert "otel-console" in _error(path, "xml").message


def _write_fixtures() -> Iterator[Path]:
    recorded = record_sdk_spans()
    DATA.mkdir(exist_ok=True)
    console = DATA / "sdk_heartbeats.console.json"
    console.write_text(recorded.console)
    otlp = DATA / "sdk_heartbeats.otlp.jsonl"
    otlp.write_text("\n".join(recorded.otlp_lines) + "\n")
    yield from (console, otlp)


if __name__ == "__main__":
    for written in _write_fixtures():
        print("wrote", written)
