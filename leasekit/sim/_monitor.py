"""Monitoring by callbacks: the engine reports what happens, this counts it
as it goes (a :class:`leasekit.metrics.Totals`) and, when asked, keeps the
event log.

Memory does not grow with simulated time: a lease is counted when it ends,
an episode when it closes, a takeover when the item is claimed again. What
is kept is what may still change a count (live server leases, leases whose
server expiry is not known yet, items held by two workers at once).

Definitions (the names are :data:`leasekit.metrics.METRICS`'; all over the
metrics window ``[warmup_s, duration_s]``):

* **Held lease time**: a worker holds a lease from the first successful
  answer its policy sees until the policy stops, the worker crashes or the
  run ends. A lease-hour is an hour of held lease time (summed over workers).
* **False loss**: a held lease ends while its holder is alive and willing
  (the simulated items never finish, so every end other than a crash or the
  end of the run is false). By cause, checked in this order:
  ``server_expiry`` (the server had already expired, or given away, the
  holder's lease: a gap in arrivals), ``unseen_answer`` (a 412 while the
  server still held the lease for this worker: an applied attempt whose
  answer the worker never saw changed the stored value), ``give_up`` (the
  policy stopped believing, ``assumed_lost``) and ``rejection``.
* **Server expiry**: the server expired an ``active`` lease whose holder had
  not crashed (after a give-up too: the server cannot tell).
* **Split-brain episode**: a lease a running (not paused, not crashed) worker
  holds after the server expired it or gave it to another worker (an
  unconditional heartbeat takes an active lease from its holder); its
  length is that exposure. **Double-holder episode**: a stretch in which two
  or more workers hold the same item; its length is the time two running
  workers both held it.
* **Takeover time**: from a crash of a worker that held a live server lease
  to the next successful claim of that item (claims applied at the server).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..lease import Event, WorkRecord
from ..metrics import Totals
from ..policy import classify_status
from ..protocol import WorkState

if TYPE_CHECKING:
    import pandas as pd

    from ._engine import Attempt
    from ._scenario import Scenario

__all__ = [
    "CAUSES",
    "EVENT_COLUMNS",
    "CsvEventWriter",
    "EventSink",
    "Monitor",
    "Tenure",
    "WorkerLease",
    "events_frame",
]

_NAN: Final = math.nan
_INF: Final = math.inf

EVENT_COLUMNS: Final = (
    "time_s",
    "event",
    "worker",
    "work_id",
    "attempt",
    "sent_s",
    "arrived_s",
    "processed_s",
    "answered_s",
    "seen_s",
    "outcome",
    "status",
    "detail",
)
"""Columns of the event log. ``time_s`` orders the log (for an attempt its send
time). Attempt rows (``event`` ``heartbeat``/``poll``/``ack``): ``outcome`` is
what the worker saw (``ok``, ``precondition_failed``, ``transient``,
``rejected``, ``timeout``), ``status`` what the server answered (also when the
worker never saw it), ``detail`` which message was lost. Server rows:
``claim``, ``steal`` (an unconditional heartbeat took an active lease from
another worker), ``expire`` (an active lease), ``expire_unclaimed``,
``handout``, ``reclaim`` (handed out again after no ack), ``acknowledge``,
with ``detail`` ``previous -> state``. Worker rows: ``lease_start``,
``lease_end`` (``detail``: the reason), ``crash``, ``restart``, ``pause``
(a pause added during the run; ``detail``: its length)."""

_FALSE_LOSS_REASONS: Final = frozenset({"lost", "assumed_lost", "rejected"})
CAUSES: Final = ("server_expiry", "unseen_answer", "give_up", "rejection")
_CAUSE_OF_REASON: Final = {"lost": "unseen_answer", "assumed_lost": "give_up"}


class Tenure:
    """A lease as the server granted it: from the claim until it expired or
    was taken by another worker (``ended_s``, ``inf`` while live)."""

    __slots__ = ("claimed_s", "ended_s", "holder_crashed_s", "parked", "work_id", "worker")

    def __init__(self, work_id: str, worker: int, claimed_s: float) -> None:
        self.work_id = work_id
        self.worker = worker
        self.claimed_s = claimed_s
        self.ended_s = _INF
        self.holder_crashed_s = _INF
        self.parked: list[WorkerLease] = []
        """Worker leases that ended while this tenure was live: their cause and
        exposure are settled when it ends (or at the end of the run)."""


class WorkerLease:
    """A lease as a worker held it: ``start_s`` to ``end_s``, why it ended."""

    __slots__ = ("end_s", "reason", "start_s", "tenure", "work_id", "worker")

    def __init__(self, worker: int, work_id: str, tenure: Tenure | None, start_s: float) -> None:
        self.worker = worker
        self.work_id = work_id
        self.tenure = tenure
        self.start_s = start_s
        self.end_s = _NAN
        self.reason = ""

    def cause(self) -> str:
        """Why a falsely lost lease ended (see the module docstring)."""
        if self.tenure is not None and self.tenure.ended_s <= self.end_s:
            return "server_expiry"
        return _CAUSE_OF_REASON.get(self.reason, "rejection")


class _Contention:
    """An item held by two or more workers: the leases involved, since ``start_s``."""

    __slots__ = ("leases", "start_s")

    def __init__(self, leases: list[WorkerLease], start_s: float) -> None:
        self.leases = leases
        self.start_s = start_s


EventSink = Callable[[tuple[Any, ...]], None]
"""Where event-log rows go as they are recorded: called with each row (a
tuple of :data:`EVENT_COLUMNS`)."""


class CsvEventWriter:
    """An :data:`EventSink` that writes each row to a CSV file as it comes
    (header :data:`EVENT_COLUMNS`; ``nan`` written as an empty field), so a
    long run's log costs disk, not memory. Rows are in the order they were
    recorded: an attempt's row comes when its worker sees how it ended, so
    sort by ``time_s`` for time order. :meth:`close` when done."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(EVENT_COLUMNS)

    def __call__(self, row: tuple[Any, ...]) -> None:
        self._writer.writerow(["" if value != value else value for value in row])  # nan != nan

    def close(self) -> None:
        self._file.close()


class Monitor:
    """Receives the engine's callbacks; counts :attr:`totals`; hands each
    event-log row to ``events`` (an :data:`EventSink`) when it has one.

    ``pauses[i]`` is worker ``i``'s sorted, merged ``(starts, ends)`` pause
    spans (the engine's own lists, so pauses added during the run count).
    """

    def __init__(self, scenario: Scenario, *, events: EventSink | None = None) -> None:
        self.window_start_s = scenario.warmup_s
        self.window_end_s = scenario.duration_s
        self.totals = Totals()
        self.keep_events = events is not None
        self._emit: EventSink = events if events is not None else _drop
        self.pauses: list[tuple[list[float], list[float]]] = []
        self._live: dict[str, Tenure] = {}
        self._holders: dict[str, dict[int, WorkerLease]] = {}
        self._contended: dict[str, _Contention] = {}
        self._awaiting_takeover: dict[str, list[tuple[float, Tenure]]] = {}
        # Counted on every message by the engine itself, without a call (a
        # method call per message was 3% of a heartbeat's instructions in
        # benchmarks/bench_sim.py): running counts since time 0. The
        # window's counts are what they grew by after :meth:`open_window`.
        self.requests = 0
        """Requests the server processed (of any kind)."""
        self.heartbeat_answers = 0
        """Heartbeat attempts whose end (answer or timeout) a worker saw."""
        self.precondition_failures = 0
        """Of those, 412 answers."""
        self._at_window_start = (0, 0, 0)

    def open_window(self) -> None:
        """The metrics window opens now (at ``warmup_s``, before anything
        else that happens at that instant): counts start from here."""
        self._at_window_start = (
            self.requests,
            self.heartbeat_answers,
            self.precondition_failures,
        )

    # ------------------------------------------------------------------ server

    def transition(
        self,
        record: WorkRecord,
        event: Event,
        previous: WorkState,
        at_s: float,
        acting: Any,
    ) -> None:
        """The ``LeaseBook`` observer (renewals filtered out by the engine).
        ``acting`` is the live worker whose request this is (``None`` for a
        request a crashed worker left in flight, or none at all)."""
        work_id = record.work_id
        worker = -1 if acting is None else acting.index
        if event is Event.CLAIM or event is Event.UNCONDITIONAL:
            name = "claim"
            if previous is WorkState.ACTIVE:
                # Only an unconditional heartbeat moves an active lease: its
                # holder's renewal, or another worker taking it.
                held = self._live[work_id]
                if held.worker == worker:
                    return
                self._tenure_ended(held, at_s)
                name = "steal"
            tenure = Tenure(work_id, worker, at_s)
            if acting is not None:
                acting.tenure = tenure
            else:  # claimed by a request its crashed sender left in flight
                tenure.holder_crashed_s = at_s
            self._live[work_id] = tenure
            self._claimed(work_id, at_s)
        elif event is Event.EXPIRE:
            if previous is WorkState.ACTIVE:
                tenure = self._live.pop(work_id)
                worker = tenure.worker
                name = "expire"
                w0, w1 = self.window_start_s, self.window_end_s
                if w0 <= at_s <= w1 and not tenure.holder_crashed_s <= at_s:
                    self.totals.server_expiries += 1
                self._tenure_ended(tenure, at_s)
            else:
                name = "expire_unclaimed"
        elif event is Event.POLL:
            name = "handout" if record.handed_out_at_us is None else "reclaim"
        elif event is Event.ACK:
            name = "acknowledge"
        else:
            name = event.value
        if self.keep_events:
            self._row(at_s, name, worker, work_id, f"{previous.value} -> {record.state.value}")

    def _tenure_ended(self, tenure: Tenure, at_s: float) -> None:
        tenure.ended_s = at_s
        if self._live.get(tenure.work_id) is tenure:
            del self._live[tenure.work_id]
        parked, tenure.parked = tenure.parked, []
        for lease in parked:
            self._settle(lease)

    def _claimed(self, work_id: str, at_s: float) -> None:
        waiting = self._awaiting_takeover.pop(work_id, None)
        if waiting:
            for crash_s, tenure in waiting:
                if crash_s < tenure.ended_s and crash_s < at_s:
                    self.totals.takeover_seconds.append(at_s - crash_s)

    # ------------------------------------------------------------------ workers

    def lease_started(
        self, worker: int, work_id: str, tenure: Tenure | None, at_s: float
    ) -> WorkerLease:
        lease = WorkerLease(worker, work_id, tenure, at_s)
        holders = self._holders.setdefault(work_id, {})
        holders[worker] = lease
        if len(holders) >= 2:
            contention = self._contended.get(work_id)
            if contention is None:
                self._contended[work_id] = _Contention(list(holders.values()), at_s)
            else:
                contention.leases.append(lease)
        if self.keep_events:
            self._row(at_s, "lease_start", worker, work_id, "")
        return lease

    def lease_ended(self, lease: WorkerLease, at_s: float, reason: str) -> None:
        lease.end_s = at_s
        lease.reason = reason
        w0, w1 = self.window_start_s, self.window_end_s
        self.totals.lease_seconds += max(0.0, min(at_s, w1) - max(lease.start_s, w0))
        work_id = lease.work_id
        holders = self._holders[work_id]
        del holders[lease.worker]
        if not holders:
            del self._holders[work_id]
        contention = self._contended.get(work_id)
        if contention is not None and len(holders) <= 1:
            del self._contended[work_id]
            self._double_holder(contention, at_s)
        tenure = lease.tenure
        if tenure is not None and tenure.ended_s == _INF:
            tenure.parked.append(lease)  # its server expiry, if any, is not known yet
        else:
            self._settle(lease)
        if self.keep_events:
            self._row(at_s, "lease_end", lease.worker, work_id, reason)

    def _settle(self, lease: WorkerLease) -> None:
        """Count an ended lease's false loss and split-brain exposure, now
        that its tenure has ended or the run is over."""
        w0, w1 = self.window_start_s, self.window_end_s
        if lease.reason in _FALSE_LOSS_REASONS and w0 <= lease.end_s <= w1:
            cause = lease.cause()
            name = f"false_losses_{cause}"
            setattr(self.totals, name, getattr(self.totals, name) + 1)
        tenure = lease.tenure
        if tenure is not None and tenure.ended_s < lease.end_s:
            exposed_from = max(tenure.ended_s, lease.start_s, w0)
            spans = _minus(exposed_from, min(lease.end_s, w1), self.pauses[lease.worker])
            exposure = sum(end - start for start, end in spans)
            if exposure > 0:
                self.totals.split_brain_episodes.append(exposure)

    def _double_holder(self, contention: _Contention, end_s: float) -> None:
        start = max(contention.start_s, self.window_start_s)
        end = min(end_s, self.window_end_s)
        spans: list[tuple[float, float]] = []
        for lease in contention.leases:
            lease_end = end_s if math.isnan(lease.end_s) else lease.end_s
            spans += _minus(
                max(lease.start_s, start), min(lease_end, end), self.pauses[lease.worker]
            )
        overlap = _overlap(spans)
        if overlap > 0:
            self.totals.double_holder_episodes.append(overlap)

    def attempt_seen(self, attempt: Attempt) -> None:
        """A worker learned how an attempt ended (``seen_s``, ``timed_out``
        set): its row of the event log. Called only when the log is kept."""
        self._emit(_attempt_row(attempt))

    def crashed(self, worker: int, at_s: float, tenure: Tenure | None) -> None:
        if tenure is not None:
            tenure.holder_crashed_s = min(tenure.holder_crashed_s, at_s)
            w0, w1 = self.window_start_s, self.window_end_s
            if w0 <= at_s <= w1 and tenure.claimed_s <= at_s < tenure.ended_s:
                # It may hold a live lease (its expiry may still be unseen):
                # the next claim of the item says.
                self._awaiting_takeover.setdefault(tenure.work_id, []).append((at_s, tenure))
        if self.keep_events:
            self._row(at_s, "crash", worker, tenure.work_id if tenure is not None else "", "")

    def restarted(self, worker: int, at_s: float) -> None:
        if self.keep_events:
            self._row(at_s, "restart", worker, "", "")

    def paused(self, worker: int, at_s: float, duration_s: float) -> None:
        if self.keep_events:
            self._row(at_s, "pause", worker, "", repr(duration_s))

    def finish(self, heartbeats_sent: int) -> Totals:
        """The run is over (every lease ended, every due expiry applied):
        settle what waited on an expiry that never came; the run's totals."""
        for tenure in list(self._live.values()):
            parked, tenure.parked = tenure.parked, []
            for lease in parked:
                self._settle(lease)
        for waiting in self._awaiting_takeover.values():
            self.totals.takeovers_censored += sum(
                1 for crash_s, tenure in waiting if crash_s < tenure.ended_s
            )
        self._awaiting_takeover.clear()
        requests, answers, failures = self._at_window_start
        self.totals.requests = self.requests - requests
        self.totals.heartbeat_answers = self.heartbeat_answers - answers
        self.totals.precondition_failures = self.precondition_failures - failures
        self.totals.heartbeats_sent = heartbeats_sent
        return self.totals

    def _row(self, at_s: float, event: str, worker: int, work_id: str, detail: str) -> None:
        self._emit(
            (at_s, event, worker, work_id, 0, _NAN, _NAN, _NAN, _NAN, _NAN, "", _NAN, detail)
        )


def _drop(row: tuple[Any, ...]) -> None:
    """The sink of a run without an event log (never called: rows are made
    only when ``keep_events``)."""


_OUTCOME_NAMES: dict[int, str] = {}


def _attempt_row(a: Attempt) -> tuple[Any, ...]:
    status = a.status
    if a.timed_out:
        outcome = "timeout"
    else:
        assert status is not None
        outcome = _OUTCOME_NAMES.get(status) or _OUTCOME_NAMES.setdefault(
            status, classify_status(status).value
        )
    return (
        a.sent_s,
        a.kind,
        a.worker.index,
        a.work_id or a.item or "",
        a.number,
        a.sent_s,
        a.arrived_s,
        a.processed_s,
        a.answered_s,
        a.seen_s,
        outcome,
        _NAN if status is None else status,
        a.lost,
    )


def events_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Event-log rows as a DataFrame ordered by ``time_s`` (ties keep row order)."""
    import pandas as pd

    frame = pd.DataFrame.from_records(rows, columns=list(EVENT_COLUMNS))
    frame = frame.sort_values("time_s", kind="stable", ignore_index=True)
    frame["status"] = frame["status"].astype("Int64")
    return frame


def _minus(
    start: float, end: float, pauses: tuple[list[float], list[float]]
) -> list[tuple[float, float]]:
    """``[start, end]`` without the (sorted, disjoint) pause spans."""
    if end <= start:
        return []
    spans = []
    for p_start, p_end in zip(*pauses, strict=True):
        if p_end <= start:
            continue
        if p_start >= end:
            break
        if p_start > start:
            spans.append((start, p_start))
        start = max(start, p_end)
        if start >= end:
            return spans
    spans.append((start, end))
    return spans


def _overlap(spans: list[tuple[float, float]]) -> float:
    """Total time covered by two or more of ``spans``."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    total = 0.0
    depth = 0
    last = 0.0
    for t, step in edges:
        if depth >= 2:
            total += t - last
        depth += step
        last = t
    return total
