"""The worker loop's rules (leasekit.loop), alone and as the simulator drives them."""

from __future__ import annotations

import dataclasses
import random

import pytest

from leasekit.loop import Abandon, Ack, Fail, Hold, Poll, WorkerLoop, backoff_s
from leasekit.policy import Outcome
from leasekit.sim import Scenario, Server, Workers, simulate


def test_poll_backoff_doubles_to_a_minute_with_a_second_of_jitter_and_resets() -> None:
    loop = WorkerLoop(random.Random(1))
    assert loop.start(5.0) == Poll(5.0)
    waits = []
    for _ in range(8):
        action = loop.polled(0.0, Outcome.TRANSIENT)
        assert isinstance(action, Poll)
        waits.append(action.at)
    for n, wait in enumerate(waits, 1):
        assert min(60.0, 2.0**n) <= wait < min(60.0, 2.0**n) + 1.0
    assert loop.poll_failures == 8
    empty = loop.polled(10.0, Outcome.OK, None)
    assert isinstance(empty, Poll) and 11.0 <= empty.at <= 13.0  # uniform 1-3 s
    assert loop.poll_failures == 0
    after_timeout = loop.polled(0.0, Outcome.TIMEOUT)
    assert isinstance(after_timeout, Poll) and 2.0 <= after_timeout.at < 3.0


def test_a_poll_refused_for_good_ends_the_loop() -> None:
    assert isinstance(WorkerLoop(random.Random(1)).polled(0.0, Outcome.REJECTED), Fail)


def test_an_item_is_acked_then_held_and_the_loop_polls_again_at_once_after() -> None:
    loop = WorkerLoop(random.Random(2))
    assert loop.polled(1.0, Outcome.OK, "work_1") == Ack("work_1")
    assert loop.acked(1.5, Outcome.OK) == Hold("work_1")
    assert loop.released(99.0) == Poll(99.0)
    assert loop.work_id is None


@pytest.mark.parametrize("outcome", [Outcome.TRANSIENT, Outcome.TIMEOUT])
def test_a_failed_ack_409_included_backs_off_before_polling_again(outcome: Outcome) -> None:
    loop = WorkerLoop(random.Random(3))
    loop.polled(0.0, Outcome.OK, "work_1")
    first = loop.acked(10.0, outcome)  # 409 is transient: someone else acked it
    assert isinstance(first, Poll) and 12.0 <= first.at < 13.0
    loop.polled(first.at, Outcome.OK, "work_2")
    second = loop.acked(20.0, outcome)
    assert isinstance(second, Poll) and 24.0 <= second.at < 25.0  # failures in a row
    loop.polled(second.at, Outcome.OK, "work_3")
    assert loop.acked(30.0, Outcome.OK) == Hold("work_3")
    assert loop.ack_failures == 0


def test_an_ack_refused_for_good_abandons_the_item() -> None:
    loop = WorkerLoop(random.Random(4))
    loop.polled(0.0, Outcome.OK, "work_1")
    assert loop.acked(1.0, Outcome.REJECTED) == Abandon("work_1")
    assert loop.abandoned(2.0) == Poll(2.0)


def test_acked_without_an_item_is_refused() -> None:
    with pytest.raises(RuntimeError, match="without an item"):
        WorkerLoop(random.Random(5)).acked(0.0, Outcome.OK)


def test_backoff_is_the_official_workers() -> None:
    rng = random.Random(6)
    assert all(60.0 <= backoff_s(n, rng) < 61.0 for n in range(6, 30))


class SlowAcksOfWorkerZero:
    """Worker 0's acks take 8 s to reach the server (within the 10 s timeout);
    everything else 20 ms."""

    def __init__(self, scenario: Scenario, streams: object) -> None:
        pass

    def request_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        return 8.0 if worker == 0 and kind == "ack" else 0.02

    def answer_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        return 0.02


def test_the_simulated_worker_backs_off_after_a_409_to_its_ack_like_the_real_one() -> None:
    # Worker 0 polls the only item first; its ack is slow, so after the 5 s
    # reclaim window worker 1 polls and acks it; worker 0's ack then meets a
    # 409. Before the loop rules were shared the simulator polled again at
    # once; the real worker (and now the simulator) backs off 2-3 s.
    scenario = Scenario(
        name="ack-409",
        duration_s=120,
        seed=2,
        workers=Workers(count=2, items_per_worker=0.5, start_spread_s=0.0),
        server=Server(default_ttl_seconds=30, min_ttl_seconds=30, max_ttl_seconds=30),
    )
    events = simulate(scenario, network=SlowAcksOfWorkerZero, events=True).events
    mine = events[(events.worker == 0) & events.event.isin(["poll", "ack"])]
    conflicts = mine[(mine.event == "ack") & (mine.status == 409)]
    assert len(conflicts) == 1
    seen = conflicts.seen_s.iloc[0]
    next_poll = mine[(mine.event == "poll") & (mine.sent_s >= seen)].sent_s.min()
    assert 2.0 <= next_poll - seen < 3.0


def test_loop_actions_are_plain_immutable_values() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Poll(1.0).at = 2.0  # type: ignore[misc]
