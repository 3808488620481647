"""The lease timeline and the lifecycle diagram draw what their sources say.

Sources are real: simulator runs with scripted faults, a trace recorded by
leasekit's client against the reference server with a dropped answer, and
the official SDK's OpenTelemetry spans committed in tests/data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from leasekit._timeline import _from_trace, lease_timeline, state_diagram_figure
from leasekit.client import LeaseClient, keep_lease
from leasekit.lease import TRANSITIONS, LeaseBook, LeaseConfig
from leasekit.policy import LeasekitPolicy, Outcome, Result, Send
from leasekit.protocol import (
    NO_HEARTBEAT,
    HeartbeatAnswer,
    LeaseState,
    PreconditionFailed,
    WorkState,
)
from leasekit.replay import load_any_trace
from leasekit.server import create_app, running_server
from leasekit.sim import Crashes, Fault, Moment, Pauses, Scenario, Server, Workers, replicate
from leasekit.trace import Trace, TraceHeader, TraceWriter, read_trace

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _close_figures() -> None:
    yield
    plt.close("all")


def _legend(fig: plt.Figure) -> set[str]:
    return {text.get_text() for text in fig.axes[0].get_legend().get_texts()}


def _events(scenario: Scenario) -> pd.DataFrame:
    """The event log of one run (replicate keeps its first run's log)."""
    first = replicate(scenario, 1).first
    assert first is not None
    return first.events


def _scenario(policy: str, **faults: object) -> Scenario:
    """Two workers on one item each, TTL 30 s, worker 0's answer lost at 100 s."""
    base = Scenario(
        name="timeline",
        duration_s=400.0,
        seed=5,
        workers=Workers(count=2, policy=policy),
        server=Server(default_ttl_seconds=30, min_ttl_seconds=30, max_ttl_seconds=30),
    )
    network = dataclasses.replace(
        base.network, faults=(Fault(worker=0, after_s=100.0, direction="answer"),)
    )
    return dataclasses.replace(base, network=network, **faults)  # type: ignore[arg-type]


def test_an_event_log_with_a_lost_answer_shows_leasekits_adoption() -> None:
    fig = lease_timeline(_events(_scenario("leasekit")))
    legend = _legend(fig)
    assert "412 adopted (safe)" in legend
    assert "lost message" in legend
    assert "lease lost / given up" not in legend  # leasekit kept its lease
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time (s)"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["server", "worker 0", "worker 1"]


def test_the_same_lost_answer_ends_the_sdk_workers_lease() -> None:
    scenario = _scenario("sdk")
    # TTL 90 s: two SDK intervals fit in a TTL, so the stale echo meets a 412
    scenario = dataclasses.replace(
        scenario,
        server=Server(default_ttl_seconds=90, min_ttl_seconds=90, max_ttl_seconds=90),
    )
    events = _events(scenario)
    ends = events[events["event"] == "lease_end"]
    assert "lost" in set(ends["detail"])
    legend = _legend(lease_timeline(events))
    assert "lease lost / given up" in legend
    assert "412 adopted (safe)" not in legend


def test_crashes_expiries_and_claims_are_marked() -> None:
    scenario = _scenario("leasekit")
    scenario = dataclasses.replace(
        scenario,
        workers=dataclasses.replace(
            scenario.workers, crashes=Crashes(schedule=(Moment(200.0, (1,)),))
        ),
    )
    events = _events(scenario)
    assert (events["event"] == "expire").any()
    legend = _legend(lease_timeline(events, start_s=150.0, end_s=300.0))
    assert {"crash", "server expiry"} <= legend
    assert "claim" in _legend(lease_timeline(events, start_s=0.0, end_s=60.0))


def test_workers_and_window_are_chosen_and_bad_choices_named() -> None:
    events = _events(_scenario("leasekit"))
    fig = lease_timeline(events, workers=[1], start_s=50.0, end_s=80.0)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["server", "worker 1"]
    assert ax.get_xlim() == (50.0, 80.0)
    with pytest.raises(ValueError, match="no worker worker 7"):
        lease_timeline(events, workers=[7])


def test_bad_sources_are_refused_with_what_is_missing() -> None:
    with pytest.raises(TypeError, match="got list"):
        lease_timeline([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"missing .*outcome"):
        lease_timeline(pd.DataFrame({"worker": ["a"], "work_id": ["w"], "sent_s": [0.0]}))


def _record(path: Path) -> Trace:
    """Hold a lease with LeasekitPolicy on a real server; lose one answer."""
    app = create_app(
        keys={"env_1": "key_1"}, config=LeaseConfig(default_ttl_seconds=3, min_ttl_seconds=1)
    )

    async def main(url: str) -> None:
        with TraceWriter(path, TraceHeader("leasekit", source="test")) as writer:
            async with LeaseClient(url, "key_1") as client:
                item = await client.create("env_1")
                async with keep_lease(
                    client, "env_1", item.id, policy=LeasekitPolicy(), trace=writer, worker="w1"
                ) as lease:
                    await anyio.sleep(1.2)
                    app.faults.queue("drop_answer")
                    await anyio.sleep(3.0)
                assert lease.policy.adoptions == 1  # type: ignore[attr-defined]

    with running_server(app) as url:
        anyio.run(main, url)
    return read_trace(path)


def test_a_recorded_trace_shows_the_lost_answer_and_the_adoption(tmp_path: Path) -> None:
    trace = _record(tmp_path / "kept.jsonl")
    line = _from_trace(trace.attempts, trace.ends, None)
    # the timed-out attempt's value surfaced in the 412: it reached the server
    assert [m.lost for m in line.messages if m.outcome == "timeout"] == ["answer"]
    lost = next(m for m in line.messages if m.lost == "answer")
    assert lost.sent_s <= lost.arrived_s <= lost.seen_s  # landed inside its window
    assert [kind for _lane, _t, kind, _note in line.marks].count("adopt") == 1
    legend = _legend(lease_timeline(trace))
    assert {"412 adopted (safe)", "claim", "attempt timed out", "lost message"} <= legend


def _written(path: Path, story: list[tuple[str, str | None, str, str | None]]) -> Trace:
    """A trace of (outcome, echoed value, stored value after, state) rows, 1 s apart."""
    with TraceWriter(path, TraceHeader("leasekit", source="test"), origin=0.0) as writer:
        for number, (outcome, echoed, stored, state) in enumerate(story, 1):
            at = float(number)
            send = Send(at, 1.0, echoed or NO_HEARTBEAT, None, number)
            if outcome == "ok":
                assert stored is not None and state is not None
                answer = HeartbeatAnswer(stored, True, WorkState(state), 30)
                result = Result(Outcome.OK, at, at + 0.01, answer=answer, status=200)
            elif outcome == "412":
                assert state is not None
                current = LeaseState(stored, WorkState(state), 30)
                result = Result(
                    Outcome.PRECONDITION_FAILED, at, at + 0.01, current_state=current, status=412
                )
            else:
                result = Result(Outcome.TIMEOUT, at, at + 0.9)
            writer.attempt(environment_id="e", work_id="w", worker="w1", send=send, result=result)
    return read_trace(path)


V1, V2, V3 = (f"2026-01-01T00:00:0{n}.000000Z" for n in (1, 2, 3))


def test_a_stale_echo_followed_by_a_value_already_seen_is_no_adoption(tmp_path: Path) -> None:
    trace = _written(
        tmp_path / "t.jsonl",
        [
            ("ok", None, V1, "active"),
            ("ok", V1, V2, "active"),
            ("412", V1, V2, "active"),  # a stale duplicate: V2 was seen
            ("ok", V2, V3, "active"),
        ],
    )
    marks = [kind for _lane, _t, kind, _note in _from_trace(trace.attempts, trace.ends, None).marks]
    assert "adopt" not in marks


def test_a_value_never_seen_then_echoed_is_an_adoption(tmp_path: Path) -> None:
    trace = _written(
        tmp_path / "t.jsonl",
        [
            ("ok", None, V1, "active"),
            ("timeout", V1, None, None),  # applied: the server stored V2
            ("412", V1, V2, "active"),
            ("ok", V2, V3, "active"),
        ],
    )
    line = _from_trace(trace.attempts, trace.ends, None)
    assert [kind for _lane, _t, kind, _note in line.marks].count("adopt") == 1
    assert [m.lost for m in line.messages if m.outcome == "timeout"] == ["answer"]


def test_a_lease_taken_over_is_not_marked_expired(tmp_path: Path) -> None:
    """A pauses past its TTL (12 s), B claims, A's unconditional beat takes the
    item back: one expiry (A's, at 22 s), and B's grant ends at A's takeover."""
    book = LeaseBook(LeaseConfig(default_ttl_seconds=12, min_ttl_seconds=1))
    book.add_environment("e")
    work = book.enqueue("e", 0).work_id
    seen = {"A": NO_HEARTBEAT, "B": NO_HEARTBEAT}
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, TraceHeader("fixed", source="test"), origin=0.0) as writer:
        plan = [(0, "A", False), (5, "A", False), (10, "A", False), (35, "B", False)]
        plan += [(40, "A", True), (45, "B", False), (50, "A", False)]
        for number, (t, who, blind) in enumerate(plan, 1):
            expected = None if blind else seen[who]
            send = Send(float(t), 1.0, expected, None, number)  # type: ignore[arg-type]
            try:
                answer = book.heartbeat("e", work, t * 1_000_000, expected)
                seen[who] = answer.last_heartbeat
                result = Result(Outcome.OK, t, t + 0.05, answer=answer, status=200)
            except PreconditionFailed as error:
                result = Result(
                    Outcome.PRECONDITION_FAILED,
                    t,
                    t + 0.05,
                    current_state=error.current_state,
                    status=412,
                )
            writer.attempt(environment_id="e", work_id=work, worker=who, send=send, result=result)
    trace = read_trace(path)
    line = _from_trace(trace.attempts, trace.ends, None)
    expiries = [(t, note) for _lane, t, kind, note in line.marks if kind == "expire_estimated"]
    assert [(round(t), note) for t, note in expiries] == [(22, "worker A")]
    b_grant = next(g for g in line.granted if g[0] == "worker B")
    assert round(b_grant[1]) == 35 and round(b_grant[2]) == 40


def test_the_sdks_opentelemetry_spans_draw() -> None:
    attempts = load_any_trace(DATA / "sdk_heartbeats.otlp.jsonl")
    fig = lease_timeline(attempts)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert "412" in texts  # the span with status 412
    assert "attempt timed out" in _legend(fig)


def test_the_state_diagram_has_every_transition_of_the_table() -> None:
    fig = state_diagram_figure()
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for (state, event), (target, _effect) in TRANSITIONS.items():
        assert state.value in texts and target.value in texts
        assert event.value in texts


def test_an_unconditional_heartbeat_taking_a_lease_is_marked() -> None:
    scenario = Scenario(
        name="steals",
        duration_s=900.0,
        seed=4,
        workers=Workers(
            count=3,
            policy="sdk",
            items_per_worker=0.7,
            unconditional=True,
            pauses=Pauses(rate_per_hour=6, duration="uniform:60,120"),
        ),
        server=Server(default_ttl_seconds=30),
    )
    events = _events(scenario)
    steal = events[events["event"] == "steal"].iloc[0]
    fig = lease_timeline(events, work_id=steal["work_id"], start_s=steal["time_s"] - 60)
    assert "lease taken by an unconditional heartbeat" in _legend(fig)
