"""leasekit's wire JSON against the official SDK's own models, and timestamps.

The SDK (``anthropic.types.beta.environments``) is an independent reader:
what leasekit writes must validate there, and what the SDK dumps must read
back through leasekit's ``from_json`` with equal values.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime

import httpx2
import pytest
from anthropic._error_classes import make_status_error
from anthropic.lib.environments import _worker
from anthropic.types.beta.environments import (
    BetaHeartbeatPreconditionFailedError,
    BetaHeartbeatPreconditionFailedErrorDetails,
    BetaSelfHostedWork,
    BetaSelfHostedWorkHeartbeatResponse,
    BetaSelfHostedWorkListResponse,
    BetaSelfHostedWorkQueueStats,
    BetaWorkLeaseState,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from leasekit.lease import LeaseBook, LeaseConfig
from leasekit.protocol import (
    NO_HEARTBEAT,
    ApiError,
    ErrorType,
    HeartbeatAnswer,
    LeaseState,
    PreconditionFailed,
    WorkItem,
    WorkState,
    dumps,
    format_timestamp,
    parse_timestamp,
)

US = 1_000_000
T0 = 1_790_000_000 * US
ENV = "env_protocol"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _items_in_every_state() -> tuple[LeaseBook, list[WorkItem]]:
    """Real items from a LeaseBook: queued, handed out, starting, active, stopping, stopped."""
    book = LeaseBook(LeaseConfig())
    book.add_environment(ENV)
    items = []
    for n, state in enumerate(["queued", "starting", "active", "stopping", "stopped"]):
        now = T0 + n * 1_234_567
        record = book.enqueue(ENV, now, metadata={"n": str(n), "note": "ünïcode"})
        if state != "queued":
            book.ack(ENV, record.work_id, now + 1)
        if state in ("active", "stopping", "stopped"):
            book.heartbeat(ENV, record.work_id, now + 2, NO_HEARTBEAT)
        if state == "stopping":
            book.stop(ENV, record.work_id, now + 3, force=False)
        if state == "stopped":
            book.stop(ENV, record.work_id, now + 3, force=True)
        items.append(record.to_item())
    polled = book.enqueue(ENV, T0 + 9 * US)
    assert book.poll(ENV, T0 + 9 * US, worker_id="w") is not None
    items.append(polled.to_item(with_secret=True))
    return book, items


# ----------------------------------------------------------------- heartbeat answers


@pytest.mark.parametrize("state", list(WorkState))
@pytest.mark.parametrize("last", ["", "2026-11-29T09:16:11.123456Z"])
def test_heartbeat_answer_round_trips_through_the_sdk_model(state: WorkState, last: str) -> None:
    ours = HeartbeatAnswer(last, state is not WorkState.STOPPED, state, 90)
    theirs = BetaSelfHostedWorkHeartbeatResponse.model_validate(ours.to_json())
    assert (theirs.last_heartbeat, theirs.lease_extended, theirs.state, theirs.ttl_seconds) == (
        last,
        ours.lease_extended,
        state.value,
        90,
    )
    assert theirs.type == "work_heartbeat"
    assert HeartbeatAnswer.from_json(theirs.model_dump(mode="json")) == ours


def test_heartbeat_answer_from_a_real_book_validates() -> None:
    book = LeaseBook()
    book.add_environment(ENV)
    record = book.enqueue(ENV, T0)
    answer = book.heartbeat(ENV, record.work_id, T0, NO_HEARTBEAT)
    wire = dumps(answer.to_json())
    theirs = BetaSelfHostedWorkHeartbeatResponse.model_validate_json(wire)
    assert HeartbeatAnswer.from_json(theirs.model_dump(mode="json")) == answer


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "work"}, "'type'"),
        ({"type": "work_heartbeat", "last_heartbeat": 1}, "'last_heartbeat'"),
        (
            {"type": "work_heartbeat", "last_heartbeat": "", "lease_extended": True, "state": "x"},
            "'state'",
        ),
        (
            {
                "type": "work_heartbeat",
                "last_heartbeat": "",
                "lease_extended": True,
                "state": "active",
                "ttl_seconds": True,
            },
            "'ttl_seconds'",
        ),
    ],
)
def test_heartbeat_answer_from_json_names_the_bad_field(
    body: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        HeartbeatAnswer.from_json(body)


# ----------------------------------------------------------------- lease state and the 412 envelope


@pytest.mark.parametrize(
    "state",
    [
        LeaseState(None, WorkState.QUEUED, 90),
        LeaseState(None, WorkState.STARTING, 90),
        LeaseState("2026-11-29T09:16:11.123456Z", WorkState.ACTIVE, 30),
    ],
)
def test_lease_state_round_trips_through_the_sdk_model(state: LeaseState) -> None:
    theirs = BetaWorkLeaseState.model_validate(state.to_json())
    assert theirs.last_heartbeat == state.last_heartbeat and theirs.lease_extended is False
    assert LeaseState.from_json(theirs.model_dump(mode="json")) == state


def _refusal() -> PreconditionFailed:
    book = LeaseBook()
    book.add_environment(ENV)
    record = book.enqueue(ENV, T0)
    book.heartbeat(ENV, record.work_id, T0, NO_HEARTBEAT)
    with pytest.raises(PreconditionFailed) as caught:
        book.heartbeat(ENV, record.work_id, T0 + 1, "2020-01-01T00:00:00.000000Z")
    return caught.value


def test_412_envelope_shape() -> None:
    refusal = _refusal()
    envelope = refusal.envelope("req_123")
    assert envelope["type"] == "error" and envelope["request_id"] == "req_123"
    error = envelope["error"]
    assert error["type"] == "precondition_failed_error" and isinstance(error["message"], str)
    assert error["details"]["error_code"] == "heartbeat_precondition_failed"
    current = error["details"]["current_state"]
    assert current == {
        "last_heartbeat": format_timestamp(T0),
        "lease_extended": False,
        "state": "active",
        "ttl_seconds": 90,
    }
    details = BetaHeartbeatPreconditionFailedErrorDetails.model_validate(error["details"])
    assert details.error_code == "heartbeat_precondition_failed"
    assert details.current_state.state == "active"
    back = PreconditionFailed.from_envelope(envelope)
    assert back.current_state == refusal.current_state and back.status == 412


def test_the_sdk_raises_its_412_class_from_our_envelope_and_the_worker_reads_it() -> None:
    refusal = _refusal()
    body = refusal.envelope("req_1")
    response = httpx2.Response(412, request=httpx2.Request("POST", "http://localhost/heartbeat"))
    error = make_status_error("precondition failed", body=body, response=response)
    assert isinstance(error, BetaHeartbeatPreconditionFailedError)
    assert error.details.current_state.last_heartbeat == refusal.current_state.last_heartbeat
    # what the SDK worker logs on a lost lease
    seen = _worker._server_lease_state(error)
    assert seen["state"] == "active" and seen["ttl_seconds"] == 90


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "'error'"),
        ({"error": {}}, "current_state"),
        ({"error": {"details": {}}}, "current_state"),
    ],
)
def test_412_from_envelope_names_the_bad_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PreconditionFailed.from_envelope(body)


@pytest.mark.parametrize("error_type", list(ErrorType))
def test_every_error_envelope_has_the_api_shape(error_type: ErrorType) -> None:
    envelope = ApiError(error_type, "what went wrong").envelope("req_9")
    assert envelope == {
        "type": "error",
        "error": {"type": error_type.value, "message": "what went wrong"},
        "request_id": "req_9",
    }
    assert 400 <= ApiError(error_type, "x").status < 600


# ----------------------------------------------------------------- work items, lists, stats


def test_work_items_round_trip_through_the_sdk_model() -> None:
    _, items = _items_in_every_state()
    assert {item.state for item in items} == set(WorkState)
    for item in items:
        theirs = BetaSelfHostedWork.model_validate_json(dumps(item.to_json()))
        assert theirs.id == item.id and theirs.state == item.state.value
        assert theirs.data.id == item.session_id and theirs.data.type == "session"
        assert theirs.metadata == dict(item.metadata)
        assert WorkItem.from_json(theirs.model_dump(mode="json")) == item
    assert items[-1].secret is not None and items[0].secret is None


def test_work_list_validates_and_its_items_read_back() -> None:
    book, _ = _items_in_every_state()
    page = book.list(ENV, T0 + 10 * US, limit=4)
    theirs = BetaSelfHostedWorkListResponse.model_validate_json(dumps(page.to_json()))
    assert theirs.next_page == page.next_page is not None
    read = [WorkItem.from_json(item.model_dump(mode="json")) for item in theirs.data]
    assert read == list(page.data)
    last = book.list(ENV, T0 + 10 * US, limit=4, page=page.next_page)
    assert BetaSelfHostedWorkListResponse.model_validate(last.to_json()).next_page is None


def test_queue_stats_validate() -> None:
    book, _ = _items_in_every_state()
    stats = book.stats(ENV, T0 + 10 * US)
    theirs = BetaSelfHostedWorkQueueStats.model_validate_json(dumps(stats.to_json()))
    assert (theirs.type, theirs.depth, theirs.pending, theirs.workers_polling) == (
        "work_queue_stats",
        stats.depth,
        stats.pending,
        stats.workers_polling,
    )
    assert theirs.oldest_queued_at is not None
    assert parse_timestamp(theirs.oldest_queued_at) == stats.oldest_queued_at_us
    empty = LeaseBook()
    empty.add_environment(ENV)
    assert (
        BetaSelfHostedWorkQueueStats.model_validate(empty.stats(ENV, T0).to_json()).oldest_queued_at
        is None
    )


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"type": "nope"}, "'type'"),
        ({"data": None}, "'data.id'"),
        ({"metadata": ["k"]}, "'metadata'"),
        ({"created_at": None}, "'created_at'"),
        ({"started_at": 5}, "'started_at'"),
        ({"stopped_at": "yesterday"}, "yesterday"),
    ],
)
def test_work_item_from_json_names_the_bad_field(patch: dict[str, object], field: str) -> None:
    _, items = _items_in_every_state()
    body = {**items[0].to_json(), **patch}
    with pytest.raises(ValueError, match=field):
        WorkItem.from_json(body)


# ----------------------------------------------------------------- timestamps

EARLIEST_US = parse_timestamp("0001-01-01T00:00:00Z")
LATEST_US = parse_timestamp("9999-12-31T23:59:59.999999Z")
instants = st.integers(EARLIEST_US, LATEST_US)


@given(instants)
@settings(max_examples=300, deadline=None)
def test_format_then_parse_round_trips_with_six_digits_and_z(epoch_us: int) -> None:
    text = format_timestamp(epoch_us)
    assert STAMP.match(text), text
    assert parse_timestamp(text) == epoch_us


@given(instants, instants)
@settings(max_examples=300, deadline=None)
def test_text_order_equals_time_order(a: int, b: int) -> None:
    ta, tb = format_timestamp(a), format_timestamp(b)
    assert (ta < tb) == (a < b) and (ta == tb) == (a == b)


def test_format_matches_datetime() -> None:
    moment = datetime(2026, 11, 29, 9, 16, 11, 5, tzinfo=UTC)
    epoch_us = int(moment.timestamp()) * US + 5
    assert format_timestamp(epoch_us) == "2026-11-29T09:16:11.000005Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000Z"


AROUND_THE_EPOCH = {
    -1: "1969-12-31T23:59:59.999999Z",
    -1_000_000: "1969-12-31T23:59:59.000000Z",
    -1_000_001: "1969-12-31T23:59:58.999999Z",
    0: "1970-01-01T00:00:00.000000Z",
}


def test_format_around_the_epoch_in_a_fresh_process() -> None:
    """format_timestamp caches the current second: the cache's initial value must not
    be mistaken for a real second (it was -1, the second before the epoch)."""
    code = (
        "from leasekit.protocol import format_timestamp as f\n"
        f"for us in {list(AROUND_THE_EPOCH)}: print(f(us))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == list(AROUND_THE_EPOCH.values())
    assert [format_timestamp(us) for us in AROUND_THE_EPOCH] == list(AROUND_THE_EPOCH.values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T09:16:11Z", "2026-11-29T09:16:11.000000Z"),
        ("2026-11-29T09:16:11.5Z", "2026-11-29T09:16:11.500000Z"),
        ("2026-11-29t09:16:11.123456z", "2026-11-29T09:16:11.123456Z"),
        ("2026-11-29T11:16:11.123456+02:00", "2026-11-29T09:16:11.123456Z"),
        ("2026-11-29T04:46:11.123456-04:30", "2026-11-29T09:16:11.123456Z"),
        ("2026-11-29T09:16:11.123456789Z", "2026-11-29T09:16:11.123456Z"),
        ("2026-11-29T09:16:11.999999999+00:00", "2026-11-29T09:16:11.999999Z"),
        ("2026-11-29T00:30:00.000000001+01:00", "2026-11-28T23:30:00.000000Z"),
        ("  2026-11-29T09:16:11Z  ", "2026-11-29T09:16:11.000000Z"),
    ],
)
def test_parse_accepts_offsets_and_any_fraction_truncating_nanoseconds(
    text: str, expected: str
) -> None:
    assert format_timestamp(parse_timestamp(text)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "2026-11-29", "2026-13-01T00:00:00Z", "2026-11-29T09:16:11.Z", "NO_HEARTBEAT"],
)
def test_parse_errors_name_the_text(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_timestamp(text)
    assert repr(text) in str(caught.value)


def test_parse_refuses_a_timestamp_without_an_offset() -> None:
    with pytest.raises(ValueError, match="without a UTC offset: '2026-11-29T09:16:11'"):
        parse_timestamp("2026-11-29T09:16:11")
