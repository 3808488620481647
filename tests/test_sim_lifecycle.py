"""A simulated worker's life: starts, crashes, restarts and pauses in any order."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import pandas as pd
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leasekit.sim import (
    Crashes,
    Direction,
    Engine,
    Moment,
    Network,
    Pauses,
    Scenario,
    Server,
    Window,
    Workers,
    simulate,
)


def crash_at_start(restart_after: str = "const:60") -> Scenario:
    return Scenario(
        name="crash-at-start",
        duration_s=3600,
        seed=1,
        workers=Workers(
            count=1,
            policy="sdk",
            crashes=Crashes(schedule=(Moment(at_s=0),), restart_after=restart_after),
        ),
        server=Server(default_ttl_seconds=30, min_ttl_seconds=30, max_ttl_seconds=30),
    )


def test_a_worker_that_crashes_before_its_first_start_runs_once_after_its_restart() -> None:
    # Before the fix the scheduled first start still ran after the crash, and
    # the restart launched a second loop: ~120-143 "rejection" losses an hour.
    result = simulate(crash_at_start(), events=True)
    assert result.metrics["false_losses_per_lease_hour"] == 0
    assert result.metrics["lease_hours"] > 0.9
    events = result.events
    attempts = events[events.event.isin(["heartbeat", "poll", "ack"])]
    assert attempts.sent_s.min() >= 60  # nothing before the restart
    beats = events[events.event == "heartbeat"]
    assert (beats.work_id != "").all() and (beats.status != 404).all()


def check_one_loop(events: pd.DataFrame, pauses: tuple[Window, ...] = ()) -> None:
    """Per worker: nothing sent while it is down or paused, no heartbeat
    without a work id, and its attempts one after another (one loop, one
    request at a time)."""
    beats = events[events.event == "heartbeat"]
    assert (beats.work_id != "").all()
    assert not (beats.status == 404).any()
    attempts = events[events.event.isin(["heartbeat", "poll", "ack"])]
    for worker, mine in attempts.groupby("worker"):
        mine = mine.sort_values("sent_s", kind="stable")
        previous_seen = -math.inf
        for sent, seen in zip(mine.sent_s, mine.seen_s, strict=True):
            assert sent >= previous_seen - 1e-9, (worker, sent, previous_seen)
            previous_seen = seen
        life = events[(events.worker == worker) & events.event.isin(["crash", "restart"])]
        down_since = None
        spans = []
        for event, t in zip(life.event, life.time_s, strict=True):
            if event == "crash" and down_since is None:
                down_since = t
            elif event == "restart" and down_since is not None:
                spans.append((down_since, t))
                down_since = None
        if down_since is not None:
            spans.append((down_since, math.inf))
        for start, end in spans:
            assert not ((mine.sent_s >= start) & (mine.sent_s < end)).any(), (worker, start, end)
        paused = [(w.start_s, w.start_s + w.duration_s) for w in pauses if worker in w.workers]
        added = events[(events.worker == worker) & (events.event == "pause")]
        paused += [(t, t + float(d)) for t, d in zip(added.time_s, added.detail, strict=True)]
        for start, end in paused:
            assert not ((mine.sent_s > start) & (mine.sent_s < end)).any(), (worker, start, end)


schedules = st.lists(st.tuples(st.floats(0, 600), st.integers(0, 2)), min_size=1, max_size=6).map(
    lambda moments: tuple(Moment(at_s=t, workers=(w,)) for t, w in moments)
)
pauses = st.lists(
    st.tuples(st.floats(0, 600), st.floats(0.1, 80), st.integers(0, 2)), max_size=5
).map(lambda spans: tuple(Window(start_s=t, duration_s=d, workers=(w,)) for t, d, w in spans))


# Faults an extension adds while the run goes: (time, worker, what, seconds).
live_faults = st.lists(
    st.tuples(
        st.floats(0, 600),
        st.integers(0, 2),
        st.sampled_from(["crash", "restart", "pause"]),
        st.floats(0.1, 60),
    ),
    max_size=6,
)


def inject(faults: list[tuple[float, int, str, float]]) -> Callable[[Engine], None]:
    def setup(engine: Engine) -> None:
        def run() -> Generator[simpy.Event, None, None]:
            for at, worker, what, seconds in sorted(faults):
                yield engine.env.timeout(at - engine.env.now)
                if what == "crash":
                    engine.crash(worker)
                elif what == "restart":
                    engine.restart(worker)
                else:
                    engine.pause(worker, seconds)

        engine.env.process(run())

    return setup


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    crashes=schedules,
    pause_windows=pauses,
    faults=live_faults,
    restart=st.sampled_from([None, "const:0", "const:1", "uniform:0,40", "const:120"]),
    policy=st.sampled_from(["sdk", "leasekit", "fixed:interval=3"]),
    spread=st.sampled_from([0.0, 5.0, 30.0]),
)
def test_any_schedule_of_crashes_restarts_and_pauses_keeps_one_loop_per_worker(
    crashes: tuple[Moment, ...],
    pause_windows: tuple[Window, ...],
    restart: str | None,
    policy: str,
    spread: float,
    faults: list[tuple[float, int, str, float]],
) -> None:
    scenario = Scenario(
        name="lifecycle",
        duration_s=900,
        seed=3,
        workers=Workers(
            count=3,
            policy=policy,
            items_per_worker=0.67,
            start_spread_s=spread,
            crashes=Crashes(schedule=crashes, restart_after=restart),
            pauses=Pauses(schedule=pause_windows),
        ),
        server=Server(default_ttl_seconds=15, min_ttl_seconds=15, max_ttl_seconds=15),
        network=Network(
            request=Direction(delay="uniform:0.01,0.2"), answer=Direction(delay="uniform:0.01,0.2")
        ),
    )
    result = simulate(scenario, events=True, setup=inject(faults))
    check_one_loop(result.events, pause_windows)
    # Items are never done and nothing is lost on the wire: every lease that
    # ends while its holder lives and runs is a pause-made loss, never a 404.
    assert result.totals.false_losses_rejection == 0
