"""The simulator reproduces what the policies and the lease rules imply."""

from __future__ import annotations

import pandas as pd
import pytest

from leasekit.sim import (
    Burst,
    Crashes,
    Direction,
    Fault,
    Moment,
    Network,
    Pauses,
    Scenario,
    Server,
    Window,
    Workers,
    replicate,
    simulate,
)


def one_worker(policy: str, ttl: int, *faults: Fault, duration_s: float = 600) -> Scenario:
    return Scenario(
        name="one-worker",
        duration_s=duration_s,
        seed=5,
        workers=Workers(count=1, policy=policy, start_spread_s=0),
        server=Server(default_ttl_seconds=ttl, min_ttl_seconds=ttl, max_ttl_seconds=ttl),
        network=Network(
            request=Direction(delay="const:0.05"),
            answer=Direction(delay="const:0.05"),
            faults=faults,
        ),
    )


def lease_ends(scenario: Scenario) -> pd.DataFrame:
    events = simulate(scenario, events=True).events
    return events[(events.event == "lease_end") & (events.detail != "running")]


LOST_REQUEST = Fault(worker=0, after_s=100, direction="request")
LOST_ANSWER = Fault(worker=0, after_s=100, direction="answer")


def test_the_fault_really_drops_one_heartbeat() -> None:
    events = simulate(one_worker("sdk", 150, LOST_REQUEST), events=True).events
    beats = events[events.event == "heartbeat"]
    assert (beats.detail == "request").sum() == 1
    assert (beats.outcome == "timeout").sum() == 1
    assert beats[beats.detail == "request"].processed_s.isna().all()


def test_sdk_one_lost_request_ends_the_lease_at_ttl_90_not_at_150() -> None:
    ends = lease_ends(one_worker("sdk", 90, LOST_REQUEST))
    assert ends.detail.tolist() == ["lost"]
    result = simulate(one_worker("sdk", 90, LOST_REQUEST))
    assert result.metrics["false_losses_server_expiry_per_lease_hour"] > 0
    assert lease_ends(one_worker("sdk", 150, LOST_REQUEST)).empty
    assert lease_ends(one_worker("sdk", 90)).empty  # and nothing ends without the fault


def test_sdk_one_lost_answer_ends_the_lease_by_412_at_90_by_giving_up_at_60() -> None:
    at_90 = simulate(one_worker("sdk", 90, LOST_ANSWER))
    assert lease_ends(one_worker("sdk", 90, LOST_ANSWER)).detail.tolist() == ["lost"]
    assert at_90.metrics["false_losses_unseen_answer_per_lease_hour"] > 0
    assert at_90.metrics["server_expiries_per_lease_hour"] > 0  # abandoned, it expires later
    for ttl in (60, 40, 20):
        assert lease_ends(one_worker("sdk", ttl, LOST_ANSWER)).detail.tolist() == [
            "assumed_lost"
        ], ttl


@pytest.mark.parametrize("ttl", [90, 60, 20])
def test_leasekit_policy_survives_one_lost_answer_or_request(ttl: int) -> None:
    for fault in (LOST_ANSWER, LOST_REQUEST):
        scenario = one_worker("leasekit", ttl, fault)
        assert lease_ends(scenario).empty, (ttl, fault)
        events = simulate(scenario, events=True).events
        beats = events[events.event == "heartbeat"]
        assert (beats.detail == fault.direction).sum() == 1
        if fault is LOST_ANSWER:  # the 412 it met was adopted, not taken as a loss
            assert (beats.outcome == "precondition_failed").sum() == 1


def hostile(policy: str, seed: int) -> Scenario:
    """Delay with a tail, loss both ways, bursts, partitions and pauses."""
    return Scenario(
        name="hostile",
        duration_s=3 * 3600,
        seed=seed,
        workers=Workers(
            count=20,
            policy=policy,
            items_per_worker=0.7,
            pauses=Pauses(rate_per_hour=3, duration="lognormal:2,1"),
        ),
        server=Server(default_ttl_seconds=30, min_ttl_seconds=30, max_ttl_seconds=30),
        network=Network(
            request=Direction(delay="shiftexp:0.02,0.3", loss=0.05, burst=Burst(0.01, 0.3)),
            answer=Direction(delay="shiftexp:0.02,0.3", loss=0.05),
            partitions=(
                Window(start_s=1200, duration_s=90, workers=(0, 1, 2, 3)),
                Window(start_s=5000, duration_s=25, workers=(5, 6)),
            ),
        ),
    )


def test_leasekit_policy_has_no_split_brain_where_the_sdk_has_some() -> None:
    for seed in (1, 2):
        metrics = simulate(hostile("leasekit", seed)).metrics
        assert metrics["lease_hours"] > 10
        assert metrics["false_losses_per_lease_hour"] > 0  # the conditions really are hostile
        assert metrics["split_brain_seconds_per_lease_hour"] == 0
        assert metrics["double_holder_seconds_per_lease_hour"] == 0
    sdk = simulate(hostile("sdk", 1)).metrics
    assert sdk["split_brain_seconds_per_lease_hour"] > 0
    assert sdk["double_holder_seconds_per_lease_hour"] > 0


def test_a_crashed_holders_item_is_taken_over_within_ttl_plus_the_poll_delay() -> None:
    ttl = 30
    max_delay_s = 0.1
    scenario = Scenario(
        name="crashes",
        duration_s=2 * 3600,
        seed=9,
        workers=Workers(
            count=12,
            policy="sdk",
            items_per_worker=0.5,
            crashes=Crashes(
                rate_per_hour=1.0,
                restart_after="uniform:10,60",
                schedule=(Moment(at_s=600, workers=(0, 1, 2)),),
            ),
        ),
        server=Server(default_ttl_seconds=ttl, min_ttl_seconds=ttl, max_ttl_seconds=ttl),
        network=Network(
            request=Direction(delay=f"uniform:0.01,{max_delay_s}"),
            answer=Direction(delay=f"uniform:0.01,{max_delay_s}"),
        ),
    )
    result = simulate(scenario, events=True)
    metrics = result.metrics
    assert metrics["takeovers"] >= 5
    assert metrics["takeovers_censored"] == 0
    # Expiry within one TTL of the crash; a spare worker's poll sees it within
    # one long poll (1 s) plus the empty-poll wait (3 s at most); then poll
    # answer, ack and claim cross the network.
    bound = ttl + 0.999 + 3.0 + 5 * max_delay_s
    assert metrics["takeover_seconds_max"] <= bound
    assert metrics["takeover_seconds_mean"] > ttl / 2
    events = result.events
    assert (events.event == "crash").sum() >= 5


def test_same_seed_same_event_log_and_different_seeds_differ() -> None:
    scenario = hostile("sdk", 3)
    first = simulate(scenario, events=True).events
    again = simulate(scenario, events=True).events
    pd.testing.assert_frame_equal(first, again)
    other = simulate(scenario, seed=4, events=True).events
    assert not first.equals(other)
    assert len(first) > 1000


def test_replications_in_processes_equal_those_in_process() -> None:
    scenario = hostile("sdk", 3)
    scenario = Scenario(
        name=scenario.name,
        duration_s=1800,
        seed=3,
        workers=scenario.workers,
        server=scenario.server,
        network=scenario.network,
    )
    here = replicate(scenario, 3)
    there = replicate(scenario, 3, processes=2)
    pd.testing.assert_frame_equal(here.runs, there.runs)
    assert len(set(here.runs.seed)) == 3
    estimate = here.estimates()["requests_per_lease_second"]
    assert estimate.low < estimate.value < estimate.high


class EveryThirdHeartbeatLost:
    """A plugged-in network: fixed 20 ms each way, every third heartbeat request lost."""

    def __init__(self, scenario: Scenario, streams: object) -> None:
        self.heartbeats = 0
        self.calls: list[tuple[str, str]] = []

    def request_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        self.calls.append(("request", kind))
        if kind == "heartbeat":
            self.heartbeats += 1
            if self.heartbeats % 3 == 0:
                return None
        return 0.02

    def answer_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        self.calls.append(("answer", kind))
        return 0.02


def test_a_network_model_plugs_in_without_touching_the_engine() -> None:
    scenario = one_worker("fixed:interval=10", 25, duration_s=300)
    events = simulate(scenario, network=EveryThirdHeartbeatLost, events=True).events
    beats = events[events.event == "heartbeat"]
    lost = beats[beats.detail == "request"]
    assert len(beats) >= 29 and len(lost) == len(beats) // 3
    assert (beats.arrived_s - beats.sent_s).dropna().round(9).eq(0.02).all()
    # one loss in three never leaves a 25 s gap with a beat every 10 s
    ends = events[(events.event == "lease_end") & (events.detail != "running")]
    assert ends.empty and (events.event == "expire").sum() == 0


def test_an_overloaded_server_answers_529_and_the_sdk_retries_inside_the_attempt() -> None:
    scenario = Scenario(
        name="overload",
        duration_s=600,
        seed=4,
        workers=Workers(count=30, policy="sdk"),
        server=Server(
            default_ttl_seconds=10,
            min_ttl_seconds=10,
            max_ttl_seconds=10,
            processing="const:0.2",
            capacity=1,
            queue_limit=3,
        ),
    )
    events = simulate(scenario, events=True).events
    beats = events[events.event == "heartbeat"]
    overloaded = beats[beats.status == 529]
    assert len(overloaded) > 50
    assert set(overloaded.outcome) <= {"transient", "timeout"}
    assert (overloaded.processed_s == overloaded.arrived_s).all()  # refused on arrival
    served = beats[beats.status == 200]
    assert (served.processed_s - served.arrived_s >= 0.2 - 1e-9).all()  # queue + service
    # The SDK's HTTP client retries a 529 after 0.5 s * 2**n (jittered) inside
    # the attempt, not one interval (5 s) later.
    beats = beats.sort_values("sent_s")
    next_sent = beats.groupby("worker").sent_s.shift(-1)
    refused = (beats.status == 529) & (beats.outcome == "transient")
    gaps = (next_sent - beats.seen_s)[refused].dropna()
    assert len(gaps) > 50
    assert gaps.min() >= 0.375 and gaps.median() < 2.1


def test_gilbert_elliott_losses_come_in_bursts() -> None:
    from leasekit.sim import ScenarioNetwork, Streams

    scenario = Scenario(
        workers=Workers(count=1),
        network=Network(request=Direction(loss=0.0, burst=Burst(p_enter=0.02, p_exit=0.25))),
    )
    network = ScenarioNetwork(scenario, Streams(8))
    lost = [network.request_delay(0, "heartbeat", i) is None for i in range(100_000)]
    runs = []
    length = 0
    for flag in lost:
        if flag:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    mean_run = sum(runs) / len(runs)
    assert mean_run == pytest.approx(1 / 0.25, rel=0.1)  # geometric bursts, mean 1 / p_exit
    stationary = 0.02 / (0.02 + 0.25)
    assert sum(lost) / len(lost) == pytest.approx(stationary, rel=0.1)


def test_a_pause_longer_than_the_ttl_expires_the_lease_and_timers_fire_late() -> None:
    scenario = Scenario(
        name="pause",
        duration_s=400,
        seed=6,
        workers=Workers(
            count=1,
            policy="sdk",
            start_spread_s=0,
            pauses=Pauses(schedule=(Window(start_s=100, duration_s=70),)),
        ),
        server=Server(default_ttl_seconds=60, min_ttl_seconds=60, max_ttl_seconds=60),
    )
    events = simulate(scenario, events=True).events
    beats = events[events.event == "heartbeat"]
    assert not ((beats.sent_s > 100) & (beats.sent_s < 170)).any()  # nothing sent while paused
    assert ((beats.sent_s - 170).abs() < 1e-3).any()  # the due beat goes out when it resumes
    assert (events.event == "expire").sum() == 1
    ends = events[(events.event == "lease_end") & (events.detail != "running")]
    assert ends.detail.tolist() == ["lost"]


@pytest.mark.parametrize(
    "spec",
    [
        "const:0.05",
        "uniform:0.01,0.2",
        "exp:0.01",
        "exp:0",
        "shiftexp:0.01,0.02",
        "pareto:0.01,2.5",
    ],
)
def test_a_delay_sampler_draws_what_sample_draws(spec: str) -> None:
    import random

    from leasekit.distributions import parse_delay

    delay = parse_delay(spec)
    by_sample, by_sampler = random.Random(7), random.Random(7)
    draw = delay.sampler(by_sampler)
    assert [draw() for _ in range(50)] == [delay.sample(by_sample) for _ in range(50)]


def test_the_server_keeps_one_deadline_per_item_when_nobody_polls() -> None:
    # Every worker holds an item all run long: no poll ever applies due
    # expiries, and the engine no longer sweeps for LeaseBook.
    from leasekit.sim import ENVIRONMENT_ID, Engine

    scenario = Scenario(
        name="held",
        duration_s=600.0,
        workers=Workers(count=20, policy="fixed:interval=1"),
        server=Server(default_ttl_seconds=5, min_ttl_seconds=5, max_ttl_seconds=5),
    )
    engine = Engine(scenario, 1)
    engine.run()
    server = engine.book._environments[ENVIRONMENT_ID]
    assert engine.heartbeats_sent > 20 * 500
    assert len(server.deadlines) <= scenario.workers.items
    assert len(server.ready) + len(server.oldest) + len(server.handed) <= 3 * scenario.workers.items
