"""What-if TTL: exact expiries on hand-made traces whose gaps are known."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from leasekit.policy import Outcome, Result, Send
from leasekit.protocol import HeartbeatAnswer, LeaseState, WorkState
from leasekit.replay import WHAT_IF_COLUMNS, what_if_ttl
from leasekit.trace import TraceHeader, TraceWriter, read_trace

IDS = {"environment_id": "env_1", "work_id": "work_1", "worker": "w1"}


class _Recorder:
    """Writes a one-lease trace from (outcome, sent, received, server time) steps."""

    def __init__(self, path: Path, ids: dict[str, str] | None = None) -> None:
        self.writer = TraceWriter(path, TraceHeader("sdk", source="test"), origin=0.0)
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
        assert (row["expiries"], row["expiries_low"], row["expiries_high"]) == (count,) * 3, ttl
    row = _row(frame, 30)
    assert row["leases"] == 1 and row["renewals"] == 5 and row["unanswered"] == 0
    assert row["lease_hours"] == pytest.approx(150.5 / 3600)
    assert row["false_losses_per_lease_hour"] == pytest.approx(2 / (150.5 / 3600))


def test_the_boundary_is_the_lease_rules_one_microsecond(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    rec.ok(0.0, 0.0)
    rec.ok(30.0, 30.0)  # exactly one TTL later: still good
    rec.ok(60.000001, 60.000001)  # one microsecond past: expired
    frame = what_if_ttl(rec.attempts(), [30])
    assert _row(frame, 30)["expiries"] == 1


def test_round_trips_bound_the_arrival_both_ways(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    # sent at 0, 20, 50, 90, 150.5; each answer one second later; opaque values,
    # so the estimate is the midpoint and the gaps are 20, 30, 40, 60.5 +- 1
    for t in (0.0, 20.0, 50.0, 90.0, 150.5):
        rec.ok(t, t + 1)
    frame = what_if_ttl(rec.attempts(), [30, 40, 59, 61])
    got = {
        ttl: (r["expiries_low"], r["expiries"], r["expiries_high"])
        for ttl, r in ((t, _row(frame, t)) for t in (30, 40, 59, 61))
    }
    assert got == {30: (2, 2, 3), 40: (1, 1, 2), 59: (1, 1, 1), 61: (0, 0, 1)}


def test_an_unanswered_attempt_may_have_renewed(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    for t in (0.0, 20.0, 50.0, 90.0):
        rec.ok(t, t + 1)
    rec.timeout(100.0, 101.0)  # applied or not: nobody knows
    rec.ok(150.5, 151.5)
    frame = what_if_ttl(rec.attempts(), [40, 50])
    # not applied: the gap 90 -> 150.5 expires at both TTLs; applied: the
    # shortest gaps are 100 - 91 = 9 and 150.5 - 101 = 49.5
    assert (_row(frame, 40)["expiries_low"], _row(frame, 40)["expiries"]) == (1, 1)
    assert (_row(frame, 50)["expiries_low"], _row(frame, 50)["expiries"]) == (0, 1)
    assert _row(frame, 50)["unanswered"] == 1


def test_a_worker_still_beating_after_its_last_renewal_loses_the_lease(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    rec.ok(0.0, 0.0)
    rec.ok(30.0, 30.0)
    rec.lost(100.0, 100.0)  # 70 s after the last renewal
    frame = what_if_ttl(rec.attempts(), [60, 70, 90])
    assert [_row(frame, t)["expiries"] for t in (60, 70, 90)] == [1, 0, 0]


def test_server_timestamps_give_the_servers_own_gaps(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    # slow, lopsided round trips: the midpoints are 30 s apart, the server's
    # own renewals 38 s apart
    rec.ok(0.0, 10.0, server=1.0)
    rec.ok(30.0, 40.0, server=39.0)
    frame = what_if_ttl(rec.attempts(), [35])
    row = _row(frame, 35)
    assert row["expiries"] == 1
    # and the bounds still hold: 20 s at the shortest, 40 s at the longest
    assert (row["expiries_low"], row["expiries_high"]) == (0, 1)


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
    assert row["leases"] == 2 and row["expiries"] == 1
    assert row["lease_hours"] == pytest.approx(60 / 3600)


def test_ttls_must_be_whole_seconds(tmp_path: Path) -> None:
    rec = _Recorder(tmp_path / "t.jsonl")
    rec.ok(0.0, 0.0)
    with pytest.raises(ValueError, match="whole seconds"):
        what_if_ttl(rec.attempts(), [1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"in \[1, 86400\], got 86401"):
        what_if_ttl(rec.attempts(), [86_401])
