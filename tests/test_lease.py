"""Example tests of the lease state machine: every row of TRANSITIONS, every refusal.

Each test is named after the rule of docs/protocol.md §2 (reference semantics) it checks. Times are
integer microseconds; the book uses a small config (default TTL 10 s, min 5,
max 60) so that expiry is easy to reach.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import pytest

from leasekit.lease import (
    TRANSITIONS,
    Effect,
    Event,
    LeaseBook,
    LeaseConfig,
    LeaseRules,
    WorkRecord,
    expired_up_to_us,
    expiry_at_us,
    lease_expired,
)
from leasekit.protocol import (
    NO_HEARTBEAT,
    ApiError,
    ErrorType,
    PreconditionFailed,
    WorkState,
    format_timestamp,
    parse_timestamp,
)

US = 1_000_000
T0 = 1_790_000_000 * US  # 2026-09-21, a plain wall-clock instant
ENV = "env_test"
CONFIG = LeaseConfig(default_ttl_seconds=10, min_ttl_seconds=5, max_ttl_seconds=60)
TTL_US = CONFIG.default_ttl_seconds * US


@pytest.fixture
def book() -> LeaseBook:
    book = LeaseBook(CONFIG)
    book.add_environment(ENV)
    return book


def _snapshot(book: LeaseBook, work_id: str, now_us: int) -> dict[str, object]:
    """The full record after settling, for "a refusal changes nothing" checks."""
    return dataclasses.asdict(book.record(ENV, work_id, now_us))


def _claimed(book: LeaseBook, now_us: int = T0, ttl: int | None = None) -> tuple[str, str]:
    """Enqueue, poll, ack and claim one item; returns (work_id, last_heartbeat)."""
    record = book.enqueue(ENV, now_us)
    assert book.poll(ENV, now_us, worker_id="w1") is record
    book.ack(ENV, record.work_id, now_us)
    answer = book.heartbeat(ENV, record.work_id, now_us, NO_HEARTBEAT, ttl)
    return record.work_id, answer.last_heartbeat


def _refused_412(
    book: LeaseBook, work_id: str, now_us: int, expected: str | None
) -> PreconditionFailed:
    before = _snapshot(book, work_id, now_us)
    with pytest.raises(PreconditionFailed) as caught:
        book.heartbeat(ENV, work_id, now_us, expected)
    assert caught.value.status == 412
    assert _snapshot(book, work_id, now_us) == before, "a 412 must change nothing"
    return caught.value


def _conflict_409(call: object) -> ApiError:
    assert callable(call)
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.status == 409 and caught.value.error_type is ErrorType.CONFLICT
    return caught.value


# ----------------------------------------------------------------- claim


def test_claim_from_starting_stores_heartbeat_and_activates(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0)
    book.ack(ENV, record.work_id, T0)
    assert record.state is WorkState.STARTING
    answer = book.heartbeat(ENV, record.work_id, T0 + 1 * US, NO_HEARTBEAT)
    assert answer.lease_extended and answer.state is WorkState.ACTIVE
    assert answer.ttl_seconds == CONFIG.default_ttl_seconds
    assert answer.last_heartbeat == format_timestamp(T0 + 1 * US) == record.last_heartbeat
    assert record.started_at_us == T0 + 1 * US
    assert record.deadline_us == T0 + 1 * US + TTL_US


def test_claim_from_queued_activates_without_ack(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0)
    answer = book.heartbeat(ENV, record.work_id, T0, NO_HEARTBEAT)
    assert answer.state is WorkState.ACTIVE and answer.lease_extended
    assert record.handed_out_at_us is None
    assert book.poll(ENV, T0, worker_id="w2") is None, "an active item is not handed out"


def test_claim_refused_when_a_heartbeat_is_stored(book: LeaseBook) -> None:
    work_id, last = _claimed(book)
    error = _refused_412(book, work_id, T0 + 1 * US, NO_HEARTBEAT)
    assert error.current_state.last_heartbeat == last
    assert error.current_state.state is WorkState.ACTIVE
    assert error.details is not None
    assert error.details["error_code"] == "heartbeat_precondition_failed"


# ----------------------------------------------------------------- renew


def test_renew_echoing_stored_value_extends_and_issues_a_new_value(book: LeaseBook) -> None:
    work_id, last = _claimed(book)
    answer = book.heartbeat(ENV, work_id, T0 + 3 * US, last)
    assert answer.lease_extended and answer.state is WorkState.ACTIVE
    assert answer.last_heartbeat != last and answer.last_heartbeat > last
    assert book.record(ENV, work_id, T0 + 3 * US).deadline_us == T0 + 3 * US + TTL_US


def test_stale_echo_is_412_with_current_state_and_changes_nothing(book: LeaseBook) -> None:
    work_id, first = _claimed(book)
    second = book.heartbeat(ENV, work_id, T0 + 1 * US, first).last_heartbeat
    error = _refused_412(book, work_id, T0 + 2 * US, first)
    state = error.current_state
    assert (state.last_heartbeat, state.state, state.ttl_seconds) == (
        second,
        WorkState.ACTIVE,
        CONFIG.default_ttl_seconds,
    )
    assert state.lease_extended is False
    # a value the server never issued is just as stale
    _refused_412(book, work_id, T0 + 2 * US, "2026-01-01T00:00:00.000000Z")


def test_unconditional_renew_needs_no_echo(book: LeaseBook) -> None:
    work_id, _ = _claimed(book)
    answer = book.heartbeat(ENV, work_id, T0 + 1 * US, None)
    assert answer.lease_extended and answer.state is WorkState.ACTIVE
    # and it claims an unclaimed item too: (queued|starting, unconditional) -> active
    queued = book.enqueue(ENV, T0)
    assert book.heartbeat(ENV, queued.work_id, T0, None).state is WorkState.ACTIVE
    starting = book.enqueue(ENV, T0)
    book.ack(ENV, starting.work_id, T0)
    assert book.heartbeat(ENV, starting.work_id, T0, None).state is WorkState.ACTIVE


def test_heartbeat_refused_in_queued_and_starting_with_a_value(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0)
    error = _refused_412(book, record.work_id, T0, "2026-01-01T00:00:00.000000Z")
    assert error.current_state.state is WorkState.QUEUED
    assert error.current_state.last_heartbeat is None
    book.ack(ENV, record.work_id, T0)
    error = _refused_412(book, record.work_id, T0, "2026-01-01T00:00:00.000000Z")
    assert error.current_state.state is WorkState.STARTING


# ----------------------------------------------------------------- stopping / stopped


def test_stopping_does_not_compare_and_keeps_extending(book: LeaseBook) -> None:
    work_id, last = _claimed(book)
    book.stop(ENV, work_id, T0 + 1 * US, force=False)
    record = book.record(ENV, work_id, T0 + 1 * US)
    assert record.state is WorkState.STOPPING and record.stop_requested_at_us == T0 + 1 * US
    for n, echo in enumerate([last, "garbage", NO_HEARTBEAT, None], start=2):
        answer = book.heartbeat(ENV, work_id, T0 + n * US, echo)
        assert answer.lease_extended and answer.state is WorkState.STOPPING, echo
        assert record.deadline_us == T0 + n * US + TTL_US
    # a repeated graceful stop changes nothing: (stopping, stop) -> stopping
    book.stop(ENV, work_id, T0 + 7 * US, force=False)
    assert record.state is WorkState.STOPPING and record.stop_requested_at_us == T0 + 1 * US


def test_claim_while_stopping_is_not_compared(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0)
    book.ack(ENV, record.work_id, T0)
    book.stop(ENV, record.work_id, T0, force=False)  # starting -> stopping, never claimed
    answer = book.heartbeat(ENV, record.work_id, T0 + 1, NO_HEARTBEAT)
    assert answer.state is WorkState.STOPPING and answer.lease_extended


def test_stopped_answers_200_not_extended(book: LeaseBook) -> None:
    work_id, last = _claimed(book)
    book.stop(ENV, work_id, T0 + 1 * US, force=True)
    record = book.record(ENV, work_id, T0 + 1 * US)
    assert record.state is WorkState.STOPPED and record.stopped_at_us == T0 + 1 * US
    before = _snapshot(book, work_id, T0 + 2 * US)
    for echo in [last, "garbage", NO_HEARTBEAT, None]:
        answer = book.heartbeat(ENV, work_id, T0 + 2 * US, echo)
        assert (answer.lease_extended, answer.state) == (False, WorkState.STOPPED)
        assert answer.last_heartbeat == last, "answers the stored value, issues none"
    after = _snapshot(book, work_id, T0 + 2 * US)
    assert {k: v for k, v in after.items() if k != "version"} == {
        k: v for k, v in before.items() if k != "version"
    }


def test_stopped_without_any_heartbeat_answers_empty_last_heartbeat(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0)
    book.stop(ENV, record.work_id, T0, force=True)
    answer = book.heartbeat(ENV, record.work_id, T0, NO_HEARTBEAT)
    assert (answer.last_heartbeat, answer.lease_extended) == ("", False)


def test_graceful_stop_of_queued_goes_straight_to_stopped(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0)
    book.stop(ENV, record.work_id, T0 + 1, force=False)
    assert record.state is WorkState.STOPPED
    assert record.stopped_at_us == record.stop_requested_at_us == T0 + 1
    assert book.poll(ENV, T0 + 2, worker_id="w1") is None


@pytest.mark.parametrize("start", ["queued", "starting", "active", "stopping"])
def test_forced_stop_from_every_live_state_goes_to_stopped(book: LeaseBook, start: str) -> None:
    record = book.enqueue(ENV, T0)
    if start != "queued":
        book.ack(ENV, record.work_id, T0)
    if start in ("active", "stopping"):
        book.heartbeat(ENV, record.work_id, T0, NO_HEARTBEAT)
    if start == "stopping":
        book.stop(ENV, record.work_id, T0, force=False)
    assert record.state.value == start
    book.stop(ENV, record.work_id, T0 + 1, force=True)
    assert record.state is WorkState.STOPPED and record.deadline_us is None


@pytest.mark.parametrize("force", [False, True])
def test_stopping_a_stopped_item_is_409(book: LeaseBook, force: bool) -> None:
    record = book.enqueue(ENV, T0)
    book.stop(ENV, record.work_id, T0, force=True)
    error = _conflict_409(lambda: book.stop(ENV, record.work_id, T0 + 1, force=force))
    assert record.work_id in error.message and "stopped" in error.message


def test_graceful_stop_of_starting_moves_to_stopping(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0)
    book.ack(ENV, record.work_id, T0)
    book.stop(ENV, record.work_id, T0 + 1, force=False)
    assert record.state is WorkState.STOPPING
    assert record.deadline_us == T0 + TTL_US, "the claim window keeps running"


# ----------------------------------------------------------------- expiry


def test_expiry_requeues_with_no_stored_heartbeat(book: LeaseBook) -> None:
    work_id, last = _claimed(book)
    # good up to and including the deadline
    assert book.record(ENV, work_id, T0 + TTL_US).state is WorkState.ACTIVE
    record = book.record(ENV, work_id, T0 + TTL_US + 1)
    assert record.state is WorkState.QUEUED and record.last_heartbeat is None
    assert record.ttl_seconds == CONFIG.default_ttl_seconds
    error = _refused_412(book, work_id, T0 + TTL_US + 2, last)
    assert error.current_state.state is WorkState.QUEUED
    assert error.current_state.last_heartbeat is None


def test_old_holder_after_expiry_sees_the_new_holders_state(book: LeaseBook) -> None:
    work_id, old = _claimed(book)
    later = T0 + TTL_US + 1 * US
    assert book.poll(ENV, later, worker_id="w2") is book.record(ENV, work_id, later)
    book.ack(ENV, work_id, later)
    error = _refused_412(book, work_id, later, old)
    assert error.current_state.state is WorkState.STARTING
    new = book.heartbeat(ENV, work_id, later + 1, NO_HEARTBEAT).last_heartbeat
    error = _refused_412(book, work_id, later + 2, old)
    assert (error.current_state.state, error.current_state.last_heartbeat) == (
        WorkState.ACTIVE,
        new,
    )


def test_expiry_found_by_poll_requeues_and_hands_out_again(book: LeaseBook) -> None:
    work_id, _ = _claimed(book)
    # nobody touched the record itself: the poll's deadline heap finds it
    handed = book.poll(ENV, T0 + TTL_US + 1, worker_id="w2")
    assert handed is not None and handed.work_id == work_id and handed.state is WorkState.QUEUED


def test_acknowledged_but_unclaimed_goes_back_to_queued_after_one_default_ttl(
    book: LeaseBook,
) -> None:
    record = book.enqueue(ENV, T0)
    book.ack(ENV, record.work_id, T0)
    assert book.record(ENV, record.work_id, T0 + TTL_US).state is WorkState.STARTING
    assert book.record(ENV, record.work_id, T0 + TTL_US + 1).state is WorkState.QUEUED
    assert book.poll(ENV, T0 + TTL_US + 2, worker_id="w2") is record


def test_stopping_expires_to_stopped(book: LeaseBook) -> None:
    work_id, _ = _claimed(book)
    book.stop(ENV, work_id, T0 + 1 * US, force=False)
    record = book.record(ENV, work_id, T0 + TTL_US + 1)
    assert record.state is WorkState.STOPPED
    assert record.stopped_at_us == T0 + TTL_US, "stopped at the deadline, not when noticed"


# ----------------------------------------------------------------- TTL


@pytest.mark.parametrize(
    ("desired", "granted"), [(1, 5), (5, 5), (30, 30), (60, 60), (61, 60), (86_400, 60)]
)
def test_desired_ttl_is_clamped_into_min_max(book: LeaseBook, desired: int, granted: int) -> None:
    record = book.enqueue(ENV, T0)
    answer = book.heartbeat(ENV, record.work_id, T0, NO_HEARTBEAT, desired)
    assert answer.ttl_seconds == granted == record.ttl_seconds
    assert record.deadline_us == T0 + granted * US
    # a renewal without a desired TTL keeps the granted one
    assert book.heartbeat(ENV, record.work_id, T0 + 1, answer.last_heartbeat).ttl_seconds == granted


@pytest.mark.parametrize("desired", [0, -1, 86_401, 1.5, "30", True])
def test_ttl_outside_1_86400_or_not_an_integer_is_400_naming_the_parameter(
    book: LeaseBook, desired: object
) -> None:
    record = book.enqueue(ENV, T0)
    before = _snapshot(book, record.work_id, T0)
    with pytest.raises(ApiError) as caught:
        book.heartbeat(ENV, record.work_id, T0, NO_HEARTBEAT, desired)  # type: ignore[arg-type]
    assert caught.value.status == 400 and "desired_ttl_seconds" in caught.value.message
    assert _snapshot(book, record.work_id, T0) == before


def test_new_holder_after_expiry_gets_the_default_ttl_not_the_old_one() -> None:
    """LeaseRules alone (as a SQLite store drives it): settle before resolving the TTL."""
    rules = LeaseRules(CONFIG)
    record = WorkRecord(ENV, "work_1", "session_1", "s", T0, 1, CONFIG.default_ttl_seconds)
    rules.heartbeat(record, T0, NO_HEARTBEAT, 30)
    assert record.ttl_seconds == 30
    answer = rules.heartbeat(record, T0 + 31 * US, NO_HEARTBEAT)  # expired, requeued, claimed
    assert answer.ttl_seconds == CONFIG.default_ttl_seconds
    assert record.deadline_us == T0 + 31 * US + TTL_US


def test_config_rejects_inconsistent_limits() -> None:
    with pytest.raises(ValueError, match="min_ttl_seconds"):
        LeaseConfig(default_ttl_seconds=4, min_ttl_seconds=5)
    with pytest.raises(ValueError, match="max_ttl_seconds"):
        LeaseConfig(max_ttl_seconds=90_000)


# ----------------------------------------------------------------- strictly increasing


def test_last_heartbeat_strictly_increases_at_a_frozen_clock(book: LeaseBook) -> None:
    work_id, last = _claimed(book)
    values = [last]
    for _ in range(5):
        values.append(book.heartbeat(ENV, work_id, T0, values[-1]).last_heartbeat)
    micros = [parse_timestamp(v) for v in values]
    assert micros == [T0 + n for n in range(6)], "each is one microsecond above the last"
    assert values == sorted(set(values))


def test_last_heartbeat_strictly_increases_across_requeues(book: LeaseBook) -> None:
    work_id, _ = _claimed(book)
    for _ in range(4):
        book.heartbeat(ENV, work_id, T0, book.record(ENV, work_id, T0).last_heartbeat)
    high = parse_timestamp(book.record(ENV, work_id, T0).last_heartbeat or "")
    assert high == T0 + 4
    later = T0 + TTL_US + 1
    claimed = book.heartbeat(ENV, work_id, later, NO_HEARTBEAT)
    assert parse_timestamp(claimed.last_heartbeat) > high


def test_value_issued_after_a_requeue_exceeds_every_earlier_one_at_equal_times() -> None:
    rules = LeaseRules(CONFIG)
    record = WorkRecord(ENV, "work_1", "session_1", "s", T0, 1, CONFIG.default_ttl_seconds)
    # issue values up to T0 + 3 at a frozen clock, while the lease's deadline is T0 + TTL
    last = rules.heartbeat(record, T0, NO_HEARTBEAT).last_heartbeat
    for _ in range(3):
        last = rules.heartbeat(record, T0, last).last_heartbeat
    record.deadline_us = T0  # force an early expiry: the next touch requeues
    claimed = rules.heartbeat(record, T0 + 1, NO_HEARTBEAT).last_heartbeat
    assert parse_timestamp(claimed) == T0 + 4 > parse_timestamp(last) == T0 + 3


# ----------------------------------------------------------------- poll and ack


def test_poll_hands_out_oldest_first_and_each_once(book: LeaseBook) -> None:
    first = book.enqueue(ENV, T0)
    second = book.enqueue(ENV, T0 + 1)
    assert book.poll(ENV, T0 + 2, worker_id="w1") is first
    assert book.poll(ENV, T0 + 2, worker_id="w2") is second
    assert book.poll(ENV, T0 + 3, worker_id="w3") is None
    assert (first.handed_out_to, second.handed_out_to) == ("w1", "w2")
    assert first.state is WorkState.QUEUED, "a poll does not change the state"


def test_unacknowledged_item_is_handed_out_again_after_reclaim_older_than_ms(
    book: LeaseBook,
) -> None:
    record = book.enqueue(ENV, T0)
    assert book.poll(ENV, T0, worker_id="w1") is record
    assert book.poll(ENV, T0 + 4_999_999, worker_id="w2") is None  # default 5000 ms
    assert book.poll(ENV, T0 + 5 * US, worker_id="w2") is record
    assert record.handed_out_to == "w2"
    # a shorter reclaim window asked by the poll itself
    assert book.poll(ENV, T0 + 5 * US + 100_000, worker_id="w3", reclaim_older_than_ms=200) is None
    assert (
        book.poll(ENV, T0 + 5 * US + 200_000, worker_id="w3", reclaim_older_than_ms=200) is record
    )


def test_reclaimed_item_keeps_its_place_in_creation_order(book: LeaseBook) -> None:
    first = book.enqueue(ENV, T0)
    assert book.poll(ENV, T0, worker_id="w1") is first
    second = book.enqueue(ENV, T0 + 1)
    assert book.poll(ENV, T0 + 6 * US, worker_id="w2") is first
    assert book.poll(ENV, T0 + 6 * US, worker_id="w2") is second


def test_polls_with_different_reclaim_windows_never_strand_an_item(book: LeaseBook) -> None:
    """A poll with a long window must not drop an item that a poll with a short
    window had already found reclaimable (found by the state machine)."""
    first = book.enqueue(ENV, T0)
    second = book.enqueue(ENV, T0 + 1)
    assert book.poll(ENV, T0, worker_id="w1") is first
    assert book.poll(ENV, T0, worker_id="w2") is second
    # both reclaimable with the default 5 s: the oldest goes first
    assert book.poll(ENV, T0 + 6 * US, worker_id="w3") is first
    # a poll that will not reclaim anything younger than 60 s finds nothing...
    assert book.poll(ENV, T0 + 7 * US, worker_id="w4", reclaim_older_than_ms=60_000) is None
    # ...and must leave second available to the next poll with the default window
    assert book.poll(ENV, T0 + 8 * US, worker_id="w5") is second
    assert book.poll(ENV, T0 + 8 * US, worker_id="w5") is None


def test_acknowledged_item_is_never_reclaimed(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0)
    book.poll(ENV, T0, worker_id="w1")
    book.ack(ENV, record.work_id, T0 + 1)
    assert record.acknowledged_at_us == T0 + 1 and record.handed_out_at_us is None
    assert book.poll(ENV, T0 + 6 * US, worker_id="w2", reclaim_older_than_ms=0) is None


@pytest.mark.parametrize("start", ["starting", "active", "stopping", "stopped"])
def test_ack_of_anything_but_queued_is_409(book: LeaseBook, start: str) -> None:
    record = book.enqueue(ENV, T0)
    book.ack(ENV, record.work_id, T0)
    if start in ("active", "stopping"):
        book.heartbeat(ENV, record.work_id, T0, NO_HEARTBEAT)
    if start == "stopping":
        book.stop(ENV, record.work_id, T0, force=False)
    if start == "stopped":
        book.stop(ENV, record.work_id, T0, force=True)
    before = _snapshot(book, record.work_id, T0)
    error = _conflict_409(lambda: book.ack(ENV, record.work_id, T0 + 1))
    assert start in error.message and record.work_id in error.message
    assert _snapshot(book, record.work_id, T0 + 1) == before


# ----------------------------------------------------------------- stats


def test_stats_depth_pending_oldest_and_pollers_window(book: LeaseBook) -> None:
    empty = book.stats(ENV, T0)
    assert (empty.depth, empty.pending, empty.oldest_queued_at_us, empty.workers_polling) == (
        0,
        0,
        None,
        0,
    )
    first = book.enqueue(ENV, T0)
    book.enqueue(ENV, T0 + 1)
    third = book.enqueue(ENV, T0 + 2)
    book.poll(ENV, T0 + 3, worker_id="w1")  # first: pending
    book.poll(ENV, T0 + 3, worker_id="w2")  # second: pending
    book.ack(ENV, first.work_id, T0 + 4)  # first: starting, counted nowhere
    stats = book.stats(ENV, T0 + 5)
    assert (stats.depth, stats.pending) == (1, 1)  # third waits, second is handed out
    # second was handed out 10 s ago (> 5 s reclaim): handed out again, still pending
    assert book.poll(ENV, T0 + 10 * US, worker_id="w2") is not third
    stats = book.stats(ENV, T0 + 10 * US)
    assert (stats.depth, stats.pending) == (1, 1)
    book.heartbeat(ENV, third.work_id, T0 + 10 * US, NO_HEARTBEAT)
    stats = book.stats(ENV, T0 + 10 * US)
    assert (stats.depth, stats.pending) == (0, 1)
    assert stats.oldest_queued_at_us == T0 + 1
    assert stats.workers_polling == 2
    # the window is 30 s: w1 polled at T0 + 3, w2 last at T0 + 10 s
    assert book.stats(ENV, T0 + 3 + 30 * US).workers_polling == 2
    assert book.stats(ENV, T0 + 4 + 30 * US).workers_polling == 1
    assert book.stats(ENV, T0 + 10 * US + 30 * US + 1).workers_polling == 0


def test_stats_count_requeued_items_as_queued(book: LeaseBook) -> None:
    _claimed(book)
    assert book.stats(ENV, T0 + 1).depth == 0
    stats = book.stats(ENV, T0 + TTL_US + 1)
    assert (stats.depth, stats.pending, stats.oldest_queued_at_us) == (1, 0, T0)


# ----------------------------------------------------------------- list


def test_list_pages_in_creation_order_with_cursors(book: LeaseBook) -> None:
    made = [book.enqueue(ENV, T0 + n).work_id for n in range(5)]
    seen: list[str] = []
    page: str | None = None
    pages = 0
    while True:
        result = book.list(ENV, T0 + 10, limit=2, page=page)
        seen.extend(item.id for item in result.data)
        pages += 1
        if result.next_page is None:
            break
        page = result.next_page
    assert seen == made and pages == 3
    exact = book.list(ENV, T0, limit=5)
    assert exact.next_page is None, "no cursor when nothing follows"
    assert [item.id for item in book.list(ENV, T0).data] == made  # default limit 20


def test_list_shows_settled_states(book: LeaseBook) -> None:
    work_id, _ = _claimed(book)
    (item,) = book.list(ENV, T0 + TTL_US + 1).data
    assert item.id == work_id and item.state is WorkState.QUEUED


@pytest.mark.parametrize("page", ["x1", "c", "czz", "%%%"])
def test_list_bad_cursor_is_400_naming_page(book: LeaseBook, page: str) -> None:
    book.enqueue(ENV, T0)
    with pytest.raises(ApiError) as caught:
        book.list(ENV, T0, page=page)
    assert caught.value.status == 400 and caught.value.message.startswith("page:")


@pytest.mark.parametrize("limit", [0, -1, 101, True, 2.0])
def test_list_bad_limit_is_400_naming_limit(book: LeaseBook, limit: object) -> None:
    with pytest.raises(ApiError) as caught:
        book.list(ENV, T0, limit=limit)  # type: ignore[arg-type]
    assert caught.value.status == 400 and caught.value.message.startswith("limit:")


# ----------------------------------------------------------------- metadata


def test_metadata_merges_and_null_deletes(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0, metadata={"a": "1", "b": "2"})
    book.update_metadata(ENV, record.work_id, T0, {"b": None, "c": "3", "missing": None})
    assert record.metadata == {"a": "1", "c": "3"}
    assert book.record(ENV, record.work_id, T0).to_item().metadata == {"a": "1", "c": "3"}


@pytest.mark.parametrize(
    ("patch", "names"),
    [
        ({"": "x"}, "metadata: keys"),
        ({"k" * 65: "x"}, "metadata: keys"),
        ({"k": 1}, "metadata.k"),
        ({"k": "v" * 513}, "metadata.k"),
        ({f"k{n}": "v" for n in range(65)}, "metadata: at most 64"),
        ([("k", "v")], "metadata: expected an object"),
    ],
)
def test_metadata_limits_are_400_naming_the_key(book: LeaseBook, patch: object, names: str) -> None:
    record = book.enqueue(ENV, T0, metadata={"keep": "me"})
    with pytest.raises(ApiError) as caught:
        book.update_metadata(ENV, record.work_id, T0, patch)  # type: ignore[arg-type]
    assert caught.value.status == 400 and caught.value.message.startswith(names)
    assert record.metadata == {"keep": "me"}, "nothing stored on a refusal"


def test_metadata_merge_may_not_exceed_64_keys_in_total(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0, metadata={f"old{n}": "v" for n in range(40)})
    with pytest.raises(ApiError, match="the update would make 80"):
        book.update_metadata(ENV, record.work_id, T0, {f"new{n}": "v" for n in range(40)})
    assert len(record.metadata) == 40


def test_enqueue_validates_metadata_and_refuses_a_duplicate_id(book: LeaseBook) -> None:
    with pytest.raises(ApiError, match=r"metadata\.k"):
        book.enqueue(ENV, T0, metadata={"k": 1})  # type: ignore[dict-item]
    # null deletes a key in an update; a new item has no key to delete
    with pytest.raises(ApiError, match=r"metadata\.k: expected a string") as caught:
        book.enqueue(ENV, T0, metadata={"k": None})  # type: ignore[dict-item]
    assert caught.value.status == 400 and not list(book.records(ENV))
    book.enqueue(ENV, T0, work_id="work_x")
    _conflict_409(lambda: book.enqueue(ENV, T0, work_id="work_x"))


# ----------------------------------------------------------------- not found


def test_unknown_environment_is_404_naming_it(book: LeaseBook) -> None:
    calls = [
        lambda: book.poll("env_nope", T0),
        lambda: book.enqueue("env_nope", T0),
        lambda: book.stats("env_nope", T0),
        lambda: book.list("env_nope", T0),
        lambda: book.heartbeat("env_nope", "work_1", T0, NO_HEARTBEAT),
    ]
    for call in calls:
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.status == 404 and "env_nope" in caught.value.message
    assert not book.has_environment("env_nope") and book.has_environment(ENV)


def test_unknown_work_id_is_404_naming_it(book: LeaseBook) -> None:
    calls = [
        lambda: book.record(ENV, "work_nope", T0),
        lambda: book.ack(ENV, "work_nope", T0),
        lambda: book.heartbeat(ENV, "work_nope", T0, NO_HEARTBEAT),
        lambda: book.stop(ENV, "work_nope", T0, force=False),
        lambda: book.update_metadata(ENV, "work_nope", T0, {}),
    ]
    for call in calls:
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.status == 404 and "work_nope" in caught.value.message


# ----------------------------------------------------------------- the table itself


def test_every_transition_row_is_exercised_by_the_observer() -> None:
    """Drive one scenario per row and check the observer saw each (state, event)."""
    seen: set[tuple[WorkState, Event]] = set()
    book = LeaseBook(CONFIG, observer=lambda r, event, prev, now: seen.add((prev, event)))
    book.add_environment(ENV)

    def item(state: str, now: int = T0) -> str:
        record = book.enqueue(ENV, now)
        if state not in ("queued", "stopped_from_queued"):
            book.ack(ENV, record.work_id, now)
        if state in ("active", "stopping", "stopped"):
            book.heartbeat(ENV, record.work_id, now, NO_HEARTBEAT)
        if state == "stopping":
            book.stop(ENV, record.work_id, now, force=False)
        if state == "stopped":
            book.stop(ENV, record.work_id, now, force=True)
        if state == "stopped_from_queued":
            book.stop(ENV, record.work_id, now, force=True)
        return record.work_id

    item("queued")
    book.poll(ENV, T0)  # (queued, poll)
    book.heartbeat(ENV, item("queued"), T0, NO_HEARTBEAT)  # (queued, claim)
    for state in ("queued", "starting"):
        book.heartbeat(ENV, item(state), T0, None)
    active = item("active")
    book.heartbeat(ENV, active, T0, book.record(ENV, active, T0).last_heartbeat)
    book.heartbeat(ENV, active, T0, None)
    for echo in (NO_HEARTBEAT, "stale", None):
        book.heartbeat(ENV, item("stopping"), T0, echo)
        book.heartbeat(ENV, item("stopped"), T0, echo)
    stopping = item("stopping")
    book.heartbeat(ENV, stopping, T0, book.record(ENV, stopping, T0).last_heartbeat)
    book.stop(ENV, stopping, T0, force=False)
    stopped = item("stopped")
    stored = book.record(ENV, stopped, T0).last_heartbeat
    book.heartbeat(ENV, stopped, T0, stored)
    for state in ("queued", "starting", "active", "stopping"):
        book.stop(ENV, item(state), T0, force=False)
        book.stop(ENV, item(state), T0, force=True)
    # claims with nothing stored, in stopping (never claimed) and stopped (from queued)
    never_claimed = book.enqueue(ENV, T0).work_id
    book.ack(ENV, never_claimed, T0)
    book.stop(ENV, never_claimed, T0, force=False)
    book.heartbeat(ENV, never_claimed, T0, NO_HEARTBEAT)
    book.heartbeat(ENV, item("stopped_from_queued"), T0, NO_HEARTBEAT)
    for state in ("starting", "active", "stopping"):
        item(state)  # each expires below
    late = T0 + 100 * US
    for work_id in [r.work_id for r in book.records(ENV)]:
        book.record(ENV, work_id, late)
    assert seen == set(TRANSITIONS), sorted(set(TRANSITIONS) - seen)


def test_refused_pairs_are_exactly_those_missing_from_the_table() -> None:
    heartbeat_events = {Event.CLAIM, Event.RENEW, Event.STALE, Event.UNCONDITIONAL}
    refused = {(s, e) for s in WorkState for e in heartbeat_events} - set(TRANSITIONS)
    # only compared heartbeats in queued/starting/active are refused (412)
    assert refused == {
        (WorkState.QUEUED, Event.RENEW),
        (WorkState.QUEUED, Event.STALE),
        (WorkState.STARTING, Event.RENEW),
        (WorkState.STARTING, Event.STALE),
        (WorkState.ACTIVE, Event.CLAIM),
        (WorkState.ACTIVE, Event.STALE),
    }
    assert TRANSITIONS[(WorkState.QUEUED, Event.STOP)] == (WorkState.STOPPED, Effect.FINISH)
    assert (WorkState.STOPPED, Event.STOP) not in TRANSITIONS
    assert (WorkState.STOPPED, Event.FORCE_STOP) not in TRANSITIONS


# ------------------------------------------------------------------ store-side bookkeeping


def test_heartbeats_without_polls_do_not_grow_the_book(book: LeaseBook) -> None:
    """Each renewal used to push a deadline-heap entry that only a poll, list or
    stats removed: ~180 bytes per heartbeat, without bound, on a server whose
    workers only heartbeat. Steady state must not grow with heartbeats."""
    work_ids = [book.enqueue(ENV, T0).work_id for _ in range(10)]
    echoes = dict.fromkeys(work_ids, NO_HEARTBEAT)

    def beat_all(rounds: int, start_us: int) -> int:
        now = start_us
        for _ in range(rounds):
            now += 100_000  # every 0.1 s, well inside the TTL
            for work_id in work_ids:
                echoes[work_id] = book.heartbeat(ENV, work_id, now, echoes[work_id]).last_heartbeat
        return now

    now = beat_all(50, T0)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        beat_all(2_000, now)  # 20,000 heartbeats
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 20_000, after - before  # was ~3.6 MB
    env = book._environments[ENV]
    assert len(env.deadlines) <= 2 * len(work_ids)


def test_next_due_stays_the_earliest_expiry_when_renewals_skip_the_heap(book: LeaseBook) -> None:
    first, second = (book.enqueue(ENV, T0).work_id for _ in range(2))
    one = book.heartbeat(ENV, first, T0, NO_HEARTBEAT, desired_ttl_seconds=30).last_heartbeat
    book.heartbeat(ENV, second, T0, NO_HEARTBEAT, desired_ttl_seconds=10)
    # renewing `first` later and shorter: its deadline moves earlier than the heap's entry
    book.heartbeat(ENV, first, T0 + 1 * US, one, desired_ttl_seconds=5)
    due = book.next_due_us(ENV, 5_000)
    assert due is not None and due <= expiry_at_us(T0 + 6 * US)
    # the entries come due, the renewed one is re-scheduled, never late
    assert book.poll(ENV, T0 + 6 * US + 1) is not None  # `first` expired and went back
    later = book.next_due_us(ENV, 5_000)
    assert later is not None and later <= expiry_at_us(T0 + 10 * US)


def test_the_expiry_boundary_is_one_rule() -> None:
    deadline = T0 + 7
    assert not lease_expired(deadline, deadline) and lease_expired(deadline, deadline + 1)
    assert expiry_at_us(deadline) == deadline + 1
    assert lease_expired(deadline, expiry_at_us(deadline))
    assert not lease_expired(deadline, expiry_at_us(deadline) - 1)
    assert expired_up_to_us(expiry_at_us(deadline)) == deadline
    rules = LeaseRules(CONFIG)
    record = WorkRecord(ENV, "work_1", "session_1", "s", T0, 1, CONFIG.default_ttl_seconds)
    rules.heartbeat(record, T0, NO_HEARTBEAT)
    assert record.deadline_us is not None
    rules.settle(record, record.deadline_us)
    assert record.state is WorkState.ACTIVE
    rules.settle(record, expiry_at_us(record.deadline_us))
    assert record.state.value == "queued"  # (mypy narrowed the state above)


def test_reprs_never_show_a_secret(book: LeaseBook) -> None:
    record = book.enqueue(ENV, T0)
    item = record.to_item(with_secret=True)
    assert item.secret == record.secret
    assert record.secret not in repr(record) and record.secret not in repr(item)


def test_the_queued_count_follows_every_move(book: LeaseBook) -> None:
    ids = [book.enqueue(ENV, T0).work_id for _ in range(4)]
    assert book.queued_count(ENV) == 4
    book.poll(ENV, T0)  # handed out: still queued
    book.ack(ENV, ids[1], T0)
    last = book.heartbeat(ENV, ids[2], T0, NO_HEARTBEAT).last_heartbeat
    book.stop(ENV, ids[3], T0, force=False)
    assert book.queued_count(ENV) == 1
    # the claim window of ids[1] and the lease of ids[2] expire: both go back
    with pytest.raises(PreconditionFailed):
        book.heartbeat(ENV, ids[2], T0 + TTL_US + 1, last)
    book.stats(ENV, T0 + TTL_US + 1)
    assert book.queued_count(ENV) == 3
    with pytest.raises(ApiError) as caught:
        book.enqueue(ENV, T0 + TTL_US + 1, max_queued=3)
    assert caught.value.status == 429 and "limit is 3" in caught.value.message


def test_leases_lost_again_and_again_without_polls_do_not_grow_the_book(book: LeaseBook) -> None:
    """Each expiry requeues an item (a heap entry for hand-out order and one
    for the oldest-queued figure); without polls or stats to pop them, the
    stale ones must still be dropped."""
    work_ids = [book.enqueue(ENV, T0).work_id for _ in range(5)]
    now = T0
    for _ in range(2_000):  # claim straight from the queue, then stay silent past the TTL
        for work_id in work_ids:
            book.heartbeat(ENV, work_id, now, NO_HEARTBEAT)
        now += TTL_US + 1
    env = book._environments[ENV]
    assert len(env.ready) <= 2 * len(work_ids) + 1024 + 1
    assert len(env.oldest) <= 2 * len(work_ids) + 1024 + 1
    assert book.stats(ENV, now).depth == len(work_ids)
    handed = [book.poll(ENV, now) for _ in work_ids]
    assert sorted(r.work_id for r in handed if r is not None) == sorted(work_ids)
