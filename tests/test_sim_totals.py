"""What a run counts: Totals as it goes, bounded memory, unconditional heartbeats."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc

import pytest

from leasekit.metrics import Totals, summarize
from leasekit.sim import (
    Burst,
    Direction,
    Network,
    Pauses,
    Scenario,
    Server,
    Window,
    Workers,
    simulate,
)


def hostile(policy: str, seed: int, *, unconditional: bool = False, hours: float = 2) -> Scenario:
    return Scenario(
        name="hostile",
        duration_s=hours * 3600,
        warmup_s=60,
        seed=seed,
        workers=Workers(
            count=20,
            policy=policy,
            items_per_worker=0.7,
            unconditional=unconditional,
            pauses=Pauses(rate_per_hour=3, duration="lognormal:2,1"),
        ),
        server=Server(default_ttl_seconds=30, min_ttl_seconds=30, max_ttl_seconds=30),
        network=Network(
            request=Direction(delay="shiftexp:0.02,0.3", loss=0.05, burst=Burst(0.01, 0.3)),
            answer=Direction(delay="shiftexp:0.02,0.3", loss=0.05),
            partitions=(Window(start_s=1200, duration_s=90, workers=(0, 1, 2, 3)),),
        ),
    )


def test_unconditional_heartbeats_split_the_brain_the_conditional_ones_expose() -> None:
    # The same policy and conditions; only expected_last_heartbeat is left
    # out. A conditional heartbeat of a worker whose lease was given away
    # meets a 412; an unconditional one takes the lease back, and two
    # workers go on believing they hold the item.
    safe = simulate(hostile("sdk", 1))
    unsafe = simulate(hostile("sdk", 1, unconditional=True), events=True)
    totals = unsafe.totals
    for name in ("split_brain", "double_holder"):
        seconds = f"{name}_seconds_per_lease_hour"
        assert unsafe.metrics[seconds] > 10 * max(safe.metrics[seconds], 1.0), name
        assert len(getattr(totals, f"{name}_episodes")) > 10
    # A worker that lost its lease takes it back from the new holder: the
    # log names it, and no unconditional renewal passes for a new claim.
    events = unsafe.events
    steals = events[events.event == "steal"]
    assert len(steals) > 0
    assert (steals.detail == "active -> active").all()
    claims = events[events.event == "claim"]
    assert not (claims.detail == "active -> active").any()


def test_the_totals_give_the_runs_metrics_and_add_up_over_runs() -> None:
    result = simulate(hostile("sdk", 2, hours=1))
    totals = result.totals
    assert isinstance(totals, Totals)
    assert totals.heartbeats_sent == result.heartbeats_sent > 0
    assert totals.lease_seconds == pytest.approx(result.metrics["lease_hours"] * 3600)
    assert totals.false_losses > 0 and totals.heartbeat_answers > totals.precondition_failures
    for name, estimate in summarize(totals).items():
        value = result.metrics[name]
        assert value == estimate.value or (math.isnan(value) and math.isnan(estimate.value))
    both = totals + simulate(hostile("sdk", 3, hours=1)).totals
    assert both.false_losses > totals.false_losses
    # episodes are lists of lengths, as the glossary says
    assert all(length > 0 for length in totals.split_brain_episodes)
    assert result.metrics["split_brain_episodes_per_lease_hour"] == pytest.approx(
        len(totals.split_brain_episodes) / result.metrics["lease_hours"]
    )


def test_the_event_log_is_opt_in_and_says_so() -> None:
    result = simulate(hostile("sdk", 2, hours=0.2))
    with pytest.raises(ValueError, match=r"events=True"):
        result.rows  # noqa: B018
    logged = simulate(hostile("sdk", 2, hours=0.2), events=True)
    assert len(logged.rows) > 100
    assert logged.totals == result.totals  # keeping the log changes no count


def _peak_bytes(scenario: Scenario) -> int:
    tracemalloc.start()
    try:
        simulate(scenario)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_simulated_time_without_the_event_log() -> None:
    base = Scenario(
        name="memory",
        duration_s=600,
        workers=Workers(count=50, policy="fixed:interval=1"),
        server=Server(default_ttl_seconds=5, min_ttl_seconds=5, max_ttl_seconds=5),
    )
    short = _peak_bytes(base)
    long = _peak_bytes(dataclasses.replace(base, duration_s=4 * 600))
    # Four times the heartbeats (about 120,000 more); a kept attempt alone is
    # ~250 bytes, so a log would add ~30 MB. Counting adds nothing.
    assert long < 1.25 * short + 200_000, (short, long)


def test_the_streamed_double_holder_episodes_equal_those_of_the_event_log() -> None:
    # Counted as the run goes, they must add up to what the whole log says:
    # the time covered by two or more leases of one item (no pauses here).
    scenario = hostile("sdk", 1, unconditional=True, hours=1)
    scenario = dataclasses.replace(
        scenario, workers=dataclasses.replace(scenario.workers, pauses=Pauses())
    )
    result = simulate(scenario, events=True)
    events = result.events
    w0, w1 = scenario.warmup_s, scenario.duration_s
    spans: dict[str, list[tuple[float, float]]] = {}
    started: dict[int, tuple[float, str]] = {}
    for t, event, worker, work_id in zip(
        events.time_s, events.event, events.worker, events.work_id, strict=True
    ):
        if event == "lease_start":
            started[worker] = (t, work_id)
        elif event == "lease_end":
            start, item = started.pop(worker)
            if min(t, w1) > max(start, w0):
                spans.setdefault(item, []).append((max(start, w0), min(t, w1)))
    expected = 0.0
    for item_spans in spans.values():
        edges = sorted([(s, 1) for s, _ in item_spans] + [(e, -1) for _, e in item_spans])
        depth, last = 0, 0.0
        for t, step in edges:
            if depth >= 2:
                expected += t - last
            depth += step
            last = t
    assert expected > 100
    assert sum(result.totals.double_holder_episodes) == pytest.approx(expected, rel=1e-9)
