"""Driving the simulator from a trace: the trace's delays and outages, another policy."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from leasekit.policy import Outcome, Result, Send
from leasekit.protocol import HeartbeatAnswer, LeaseState, WorkState
from leasekit.replay import TraceNetwork, load_any_trace, simulate_on_trace
from leasekit.replay._drive import _concatenate, _timeline
from leasekit.replay._whatif import leases
from leasekit.trace import TraceHeader, TraceWriter

RTTS = (0.04, 0.06, 0.1)


def _sdk_trace(path: Path) -> pd.DataFrame:
    """What the official worker records when one answer is lost.

    Lease 1: heartbeats every 30 s from 0; the one sent at 600 s gets no answer
    (it times out at 630 s), the next one, at 660 s, meets 412: the server had
    applied the lost one. Lease 2: a fresh claim at 700 s, then clean beats
    every 30 s until 3600 s.
    """
    ids = {"environment_id": "env", "work_id": "work_1", "worker": "w1"}
    rng = random.Random(3)
    with TraceWriter(path, TraceHeader("sdk", source="test"), origin=0.0) as writer:
        n, last = 0, "NO_HEARTBEAT"

        def ok(t: float) -> None:
            nonlocal n, last
            n += 1
            answer = HeartbeatAnswer(f"v{n}", True, WorkState.ACTIVE, 90)
            rtt = rng.choice(RTTS)
            writer.attempt(
                **ids,
                send=Send(t, 30, last, None, n),
                result=Result(Outcome.OK, t, t + rtt, answer=answer, status=200),
            )
            last = answer.last_heartbeat

        for k in range(20):
            ok(30.0 * k)
        writer.attempt(
            **ids,
            send=Send(600.0, 30, last, None, 21),
            result=Result(Outcome.TIMEOUT, 600.0, 630.0),
        )
        writer.attempt(
            **ids,
            send=Send(660.0, 30, last, None, 22),
            result=Result(
                Outcome.PRECONDITION_FAILED,
                660.0,
                660.05,
                current_state=LeaseState("v-applied", WorkState.ACTIVE, 90),
                status=412,
            ),
        )
        last = "NO_HEARTBEAT"
        for k in range(97):
            ok(700.0 + 30.0 * k)
    return load_any_trace(path)


def test_outages_are_placed_by_what_followed_them(tmp_path: Path) -> None:
    attempts = _sdk_trace(tmp_path / "t.jsonl")
    first, second = (_timeline(lease) for lease in leases(attempts))
    assert first.answer == ([600.0], [630.0])  # followed by a 412: answers were lost
    assert first.request == ([], [])
    assert first.length_s == pytest.approx(660.05)
    assert second.answer == second.request == ([], [])


def test_the_network_replays_trace_round_trips_and_outages(tmp_path: Path) -> None:
    attempts = _sdk_trace(tmp_path / "t.jsonl")
    timeline = _concatenate([_timeline(lease) for lease in leases(attempts)])
    # the two leases end to end: 660.05 s, then 700 s to the last answer
    total = timeline.length_s
    assert total == pytest.approx(660.05 + attempts["received_s"].max() - 700.0)
    assert timeline.answer == ([600.0], [630.0]) and timeline.request == ([], [])
    network = TraceNetwork(list(RTTS), timeline, 2, random.Random(1))
    for t in (1.0, 100.0, 599.0, 631.0):
        there = network.request_delay(0, "heartbeat", t)
        back = network.answer_delay(0, "heartbeat", t + 0.01)
        assert there is not None and back is not None
        assert there + back in RTTS  # two halves of one observed round trip
    # inside the window requests still reach the server, answers do not
    assert network.request_delay(0, "heartbeat", 610.0) is not None
    assert network.answer_delay(0, "heartbeat", 610.02) is None
    # worker 1 starts half way along the timeline, and meets the window when it wraps
    assert network.answer_delay(1, "heartbeat", 610.0) is not None
    assert network.answer_delay(1, "heartbeat", total / 2 + 610.0) is None


def test_another_policy_on_the_same_network(tmp_path: Path) -> None:
    attempts = _sdk_trace(tmp_path / "t.jsonl")
    sdk = simulate_on_trace(attempts, policy="sdk", ttl_seconds=90, seed=5, replications=3)
    ours = simulate_on_trace(attempts, policy="leasekit", ttl_seconds=90, seed=5, replications=3)
    # the official worker on its own trace's network loses what it lost in the
    # trace: one lease, to the 412 after the lost answer
    # (one per run: the lease-hours are pooled over the three runs)
    assert sdk["false_losses_per_lease_hour"] * sdk["lease_hours"] == pytest.approx(3, rel=0.05)
    assert sdk["precondition_failures_per_lease_hour"] > 0
    # leasekit's policy adopts the value the lost answer carried and keeps its lease
    assert ours["false_losses_per_lease_hour"] == 0
    assert ours["split_brain_seconds_per_lease_hour"] == 0
    low, high = (
        sdk["requests_per_lease_second_ci95_low"],
        sdk["requests_per_lease_second_ci95_high"],
    )
    assert low <= sdk["requests_per_lease_second"] <= high
    # no false loss still bounds the rate from above (exact Poisson, not [0, 0])
    assert ours["false_losses_per_lease_hour_ci95_high"] > 0
    assert sdk["replications"] == 3 and sdk["lease_hours"] > 3 * 0.9
    # same seed, same numbers
    again = simulate_on_trace(attempts, policy="sdk", ttl_seconds=90, seed=5, replications=3)
    assert again == sdk


def test_a_trace_without_a_lease_cannot_drive_anything(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("sent_s,received_s,status\n0,0.1,503\n")
    with pytest.raises(ValueError, match="holds no lease"):
        simulate_on_trace(load_any_trace(path), policy="sdk", ttl_seconds=90)


def test_runs_last_as_long_as_asked_not_only_as_long_as_the_trace(tmp_path: Path) -> None:
    attempts = _sdk_trace(tmp_path / "t.jsonl")
    short = simulate_on_trace(attempts, policy="leasekit", ttl_seconds=90, replications=1)
    long = simulate_on_trace(attempts, policy="leasekit", ttl_seconds=90, replications=1, hours=3)
    # by default the workers share the trace's timeline: together they go through it once
    assert short["run_hours"] * short["workers"] == pytest.approx(short["lease_hours"], rel=0.05)
    assert long["run_hours"] == 3
    assert long["lease_hours"] > 2.9 * long["workers"]


def test_a_trace_too_short_for_the_ttl_says_so(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("sent_s,received_s,status\n0,0.1,200\n10,10.1,200\n")
    attempts = load_any_trace(path)
    with pytest.raises(ValueError, match="too short to simulate TTL 30 s"):
        simulate_on_trace(attempts, policy="sdk", ttl_seconds=30)
    done = simulate_on_trace(attempts, policy="sdk", ttl_seconds=30, hours=0.1, replications=1)
    assert done["lease_hours"] > 0.09
