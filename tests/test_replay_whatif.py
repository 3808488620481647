"""What-if TTL: exact expiring gaps and lost leases on hand-made traces whose gaps are known."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leasekit.metrics import summarize
from leasekit.policy import Outcome, Result, Send
from leasekit.protocol import HeartbeatAnswer, LeaseState, WorkState
from leasekit.replay import WHAT_IF_COLUMNS, what_if_totals, what_if_ttl
from leasekit.trace import TraceHeader, TraceWriter, read_trace

IDS = {"environment_id": "env_1", "work_id": "work_1", "worker": "w1"}


class _Recorder:
    """Writes a one-lease trace from (outcome, sent, received, server time) steps."""

    def __init__(
        self, path: Path, ids: dict[str, str] | None = None, writer: TraceWriter | None = None
    ) -> None:
        self.writer = writer or TraceWriter(path, TraceHeader("sdk", source="test"), origin=0.0)
        self.ids = ids or IDS
        self.last = "NO_HEARTBEAT"
        self.attempt = 0

    def ok(self, sent: float, received: float, server: float | None = None) -> None:
        self.attempt += 1
        value = self.writer.wall(server) if server is not None else f"opaque-{self.attempt}"
        answer = HeartbeatAnswer(value, True, WorkState.ACTIVE, 90)
        self.writer.attempt(
            **self.ids,
            send=Send(sent, 30, self.last, None, self.attempt),
            result=Result(Outcome.OK, sent, received, answer=answer, status=200),
        )
        self.last = value

    def timeout(self, sent: float, fired: float) -> None:
        self.attempt += 1
        self.writer.attempt(
            **self.ids,
            send=Send(sent, fired - sent, self.last, None, self.attempt),
            result=Result(Outcome.TIMEOUT, sent, fired),
        )

    def lost(self, sent: float, received: float) -> None:
        self.attempt += 1
        current = LeaseState(None, WorkState.QUEUED, 90)
        self.writer.attempt(
            **self.ids,
            send=Send(sent, 30, self.last, None, self.attempt),
            result=Result(
                Outcome.PRECONDITION_FAILED, sent, received, current_state=current, status=412
            ),
        )

    def attempts(self) -> pd.DataFrame:
        self.writer.close()
        assert self.writer.path is not None
        return read_trace(self.writer.path).attempts


def _row(frame: pd.DataFrame, ttl: int) -> dict[str, float]:
    row = frame.loc[frame["ttl_seconds"] == ttl]
    assert len(row) == 1
    return dict(row.iloc[0])


def test_gaps_without_delay_expire_exactly_above_the_ttl(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    # renewals arrive at 0, 20, 50, 90, 150.5: gaps 20, 30, 40, 60.5 seconds
    for t in (0.0, 20.0, 50.0, 90.0, 150.5):
        rec.ok(t, t)
    frame = what_if_ttl(rec.attempts(), [20, 29, 30, 40, 60, 61])
    assert list(frame.columns) == list(WHAT_IF_COLUMNS)
    expected = {20: 3, 29: 3, 30: 2, 40: 1, 60: 1, 61: 0}
    for ttl, count in expected.items():
        row = _row(frame, ttl)
        # zero round trip: the estimate and both bounds agree
        assert (row["expiring_gaps"], row["expiring_gaps_low"], row["expiring_gaps_high"]) == (
            count,
        ) * 3, ttl
    row = _row(frame, 30)
    assert row["leases"] == 1 and row["renewals"] == 5 and row["unanswered"] == 0
    assert row["trace_lease_hours"] == pytest.approx(150.5 / 3600)
    # two gaps expire, but they are one lease: one false loss, and the lease is
    # held until its holder learns of it (the renewal at 90 s meets the 412)
    assert row["false_losses"] == 1
    assert row["lease_hours"] == pytest.approx(90 / 3600)
    assert row["false_losses_per_lease_hour"] == pytest.approx(1 / (90 / 3600))


def test_the_boundary_is_the_lease_rules_one_microsecond(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    rec.ok(0.0, 0.0)
    rec.ok(30.0, 30.0)  # exactly one TTL later: still good
    rec.ok(60.000001, 60.000001)  # one microsecond past: expired
    frame = what_if_ttl(rec.attempts(), [30])
    assert _row(frame, 30)["expiring_gaps"] == 1


def test_round_trips_bound_the_arrival_both_ways(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    # sent at 0, 20, 50, 90, 150.5; each answer one second later; opaque values,
    # so the estimate is the midpoint and the gaps are 20, 30, 40, 60.5 +- 1
    for t in (0.0, 20.0, 50.0, 90.0, 150.5):
        rec.ok(t, t + 1)
    frame = what_if_ttl(rec.attempts(), [30, 40, 59, 61])
    got = {
        ttl: (r["expiring_gaps_low"], r["expiring_gaps"], r["expiring_gaps_high"])
        for ttl, r in ((t, _row(frame, t)) for t in (30, 40, 59, 61))
    }
    assert got == {30: (2, 2, 3), 40: (1, 1, 2), 59: (1, 1, 1), 61: (0, 0, 1)}


def test_an_unanswered_attempt_may_have_renewed(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    for t in (0.0, 20.0, 50.0, 90.0):
        rec.ok(t, t + 1)
    rec.timeout(100.0, 101.0)  # applied or not: nobody knows
    rec.last = "adopted"  # the next success echoes another value (leasekit adopts a 412's)
    rec.ok(150.5, 151.5)
    frame = what_if_ttl(rec.attempts(), [40, 50])
    # not applied: the gap 90 -> 150.5 expires at both TTLs; applied: the
    # shortest gap before it is 100 - 91 = 9, and since a request the client
    # gave up on may still reach the server later (say at 120 s), the gap after
    # it may be as short as nothing
    assert (_row(frame, 40)["expiring_gaps_low"], _row(frame, 40)["expiring_gaps"]) == (0, 1)
    assert (_row(frame, 50)["expiring_gaps_low"], _row(frame, 50)["expiring_gaps"]) == (0, 1)
    assert _row(frame, 50)["unanswered"] == 1


def test_a_worker_still_beating_after_its_last_renewal_loses_the_lease(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    rec.ok(0.0, 0.0)
    rec.ok(30.0, 30.0)
    rec.lost(100.0, 100.0)  # 70 s after the last renewal
    frame = what_if_ttl(rec.attempts(), [60, 70, 90])
    assert [_row(frame, t)["expiring_gaps"] for t in (60, 70, 90)] == [1, 0, 0]


def test_server_timestamps_give_the_servers_own_gaps(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    # slow, lopsided round trips: the midpoints are 30 s apart, the server's
    # own renewals 38 s apart
    rec.ok(0.0, 10.0, server=1.0)
    rec.ok(30.0, 40.0, server=39.0)
    frame = what_if_ttl(rec.attempts(), [35])
    row = _row(frame, 35)
    assert row["expiring_gaps"] == 1
    # and the bounds still hold: 20 s at the shortest, 40 s at the longest
    assert (row["expiring_gaps_low"], row["expiring_gaps_high"]) == (0, 1)


def test_leases_are_counted_per_worker_and_new_claim(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    rec = _Recorder(path)
    rec.ok(0.0, 0.0)
    rec.ok(50.0, 50.0)
    rec.last = "NO_HEARTBEAT"  # a fresh claim starts a second lease
    rec.ok(200.0, 200.0)
    rec.ok(210.0, 210.0)
    frame = what_if_ttl(rec.attempts(), [40])
    row = _row(frame, 40)
    # the 150 s between the leases is no gap of either lease
    assert row["leases"] == 2 and row["expiring_gaps"] == 1
    assert row["lease_hours"] == pytest.approx(60 / 3600)


def test_ttls_must_be_whole_seconds(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    rec.ok(0.0, 0.0)
    with pytest.raises(ValueError, match="whole seconds"):
        what_if_ttl(rec.attempts(), [1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"in \[1, 86400\], got 86401"):
        what_if_ttl(rec.attempts(), [86_401])


def test_one_lease_with_many_expiring_gaps_is_one_false_loss(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    # six renewals 40 s apart: five gaps that expire at TTL 30, all in one lease
    for t in range(0, 201, 40):
        rec.ok(float(t), float(t))
    attempts = rec.attempts()
    row = _row(what_if_ttl(attempts, [30]), 30)
    assert row["expiring_gaps"] == 5
    assert (row["false_losses_low"], row["false_losses"], row["false_losses_high"]) == (1, 1, 1)
    # the glossary's meaning: lease ends per held lease-hour, the lease held
    # until the renewal at 40 s met the 412
    assert row["lease_hours"] == pytest.approx(40 / 3600)
    assert row["false_losses_per_lease_hour"] == pytest.approx(90.0)
    assert row["false_losses_per_lease_hour_ci95_low"] > 0
    assert row["false_losses_per_lease_hour_ci95_high"] > 90
    totals = what_if_totals(attempts, 30)
    assert totals["estimate"].false_losses_server_expiry == 1
    assert summarize(totals["estimate"])["false_losses_per_lease_hour"].value == pytest.approx(90)


def test_the_low_bound_lets_a_timed_out_request_arrive_after_its_sender_gave_up(
    tmp_path: Path,
) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    rec.ok(0.0, 0.1)
    rec.timeout(20.0, 21.0)  # maybe still in flight when the client gave up at 21 s
    rec.last = "adopted"  # the next success echoes another value (leasekit adopts a 412's)
    rec.ok(50.0, 50.1)
    # at TTL 25: not applied, the gap 0.1 -> 50 expires; applied by its
    # timeout, 21 -> 50 = 29 s still expires; applied later, at 30 s say, no gap
    # is longer than 20 s: nothing need expire
    row = _row(what_if_ttl(rec.attempts(), [25]), 25)
    assert row["expiring_gaps"] == 1
    assert row["expiring_gaps_low"] == 0
    assert row["false_losses_low"] == 0
    assert row["false_losses_per_lease_hour_low"] == 0


def test_every_host_gets_its_own_clock_offset(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(path, TraceHeader("sdk", source="test"), origin=0.0)
    # two hosts whose trace clocks run 100 s and 0 s behind the server's; sends
    # every 31 s, answers after 10 s, and the server applies each renewal 7 s
    # or 3 s after its send, in turn: the server's own gaps are 35 s and 27 s
    for worker, skew in (("a", 100.0), ("b", 0.0)):
        rec = _Recorder(path, {**IDS, "work_id": f"work_{worker}", "worker": worker}, writer)
        for n in range(12):
            sent = 31.0 * n
            rec.ok(sent, sent + 10.0, server=sent + (7.0 if n % 2 == 0 else 3.0) + skew)
    writer.close()
    attempts = read_trace(path).attempts
    # five 35 s gaps per host. One offset for both hosts (half way between
    # theirs) would clamp one host's arrivals to its sends, the other's to
    # its receives, and see only 31 s gaps
    frame = what_if_ttl(attempts, [34, 35])
    assert _row(frame, 34)["expiring_gaps"] == 10
    assert _row(frame, 35)["expiring_gaps"] == 0
    assert _row(frame, 34)["false_losses"] == 2


def test_an_unanswered_attempt_the_next_success_shows_unapplied_does_not_renew(
    tmp_path: Path,
) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    rec.ok(0.0, 0.1)
    rec.timeout(20.0, 21.0)
    rec.ok(50.0, 50.1)  # echoes what the timed-out attempt echoed: it was never applied
    row = _row(what_if_ttl(rec.attempts(), [25]), 25)
    assert (row["expiring_gaps_low"], row["expiring_gaps"], row["expiring_gaps_high"]) == (1, 1, 1)
    assert row["unanswered"] == 1


_STEP = st.tuples(
    st.sampled_from(["ok", "ok", "ok", "timeout", "lost"]),
    st.floats(0.0, 60.0),  # wait before the send, s
    st.floats(0.0, 5.0),  # round trip (or time to the timeout), s
)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_STEP, min_size=1, max_size=12), ttl=st.integers(5, 60))
def test_the_bounds_bound_the_estimate(steps: list[tuple[str, float, float]], ttl: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rec = _Recorder(Path(tmp) / "t.jsonl")
        t = 0.0
        rec.ok(t, t + 0.1)
        for kind, wait, trip in steps:
            t += 0.1 + wait
            {"ok": rec.ok, "timeout": rec.timeout, "lost": rec.lost}[kind](t, t + trip)
            t += trip
        row = _row(what_if_ttl(rec.attempts(), [ttl]), ttl)
    for name in ("expiring_gaps", "false_losses", "false_losses_per_lease_hour"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"], name
    assert row["false_losses_high"] <= row["leases"]
    assert row["lease_hours"] <= row["trace_lease_hours"]
