"""Monitoring by callbacks: the engine reports what happens, this keeps the
event log and computes a run's metrics from it.

Definitions (all over the metrics window ``[warmup_s, duration_s]``):

* **Held lease time**: a worker holds a lease from the first successful
  answer its policy sees until the policy stops, the worker crashes or the
  run ends. A lease-hour is an hour of held lease time (summed over workers).
* **False loss**: a held lease ends while its holder is alive and willing
  (the simulated items never finish, so every end other than a crash or the
  end of the run is false). By cause, checked in this order:
  ``server_expiry`` (the server had already expired the holder's lease: a
  gap in arrivals), ``unseen_answer`` (a 412 while the server still held the
  lease for this worker: an applied attempt whose answer the worker never
  saw changed the stored value), ``give_up`` (the policy stopped believing,
  ``assumed_lost``) and ``rejection``.
* **Server expiry**: the server expired an ``active`` lease whose holder had
  not crashed (after a give-up too: the server cannot tell).
* **Split-brain exposure**: time a running (not paused, not crashed) worker
  holds a lease that the server has expired (and maybe granted to
  another); and, separately, time two running workers both hold the same item.
* **Takeover time**: from a crash of a worker that held a live server lease
  to the next successful claim of that item (claims applied at the server).
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Any, Final

from ..lease import Event, WorkRecord
from ..protocol import WorkState

if TYPE_CHECKING:
    import pandas as pd

    from ._engine import Attempt
    from ._scenario import Scenario

__all__ = ["EVENT_COLUMNS", "Monitor", "Tenure", "WorkerLease", "events_frame"]

_NAN: Final = math.nan

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
``claim``, ``expire`` (an active lease), ``expire_unclaimed``, ``handout``,
``reclaim`` (handed out again after no ack), ``acknowledge``, with ``detail``
``previous -> state``. Worker rows: ``lease_start``, ``lease_end`` (``detail``:
the reason), ``crash``, ``restart``."""

_FALSE_LOSS_REASONS: Final = frozenset({"lost", "assumed_lost", "rejected"})
CAUSES: Final = ("server_expiry", "unseen_answer", "give_up", "rejection")


class Tenure:
    """A lease as the server granted it: from the claim to its expiry."""

    __slots__ = ("claimed_s", "expired_s", "holder_crashed_s", "work_id", "worker")

    def __init__(self, work_id: str, worker: int, claimed_s: float) -> None:
        self.work_id = work_id
        self.worker = worker
        self.claimed_s = claimed_s
        self.expired_s = math.inf
        self.holder_crashed_s = math.inf


class WorkerLease:
    """A lease as a worker held it: ``start_s`` to ``end_s``, why it ended."""

    __slots__ = ("end_s", "reason", "start_s", "tenure", "work_id", "worker")

    def __init__(self, worker: int, work_id: str, tenure: Tenure | None, start_s: float) -> None:
        self.worker = worker
        self.work_id = work_id
        self.tenure = tenure
        self.start_s = start_s
        self.end_s = math.nan
        self.reason = ""

    def cause(self) -> str:
        """Why a falsely lost lease ended (see the module docstring)."""
        if self.tenure is not None and self.tenure.expired_s <= self.end_s:
            return "server_expiry"
        return {"lost": "unseen_answer", "assumed_lost": "give_up"}.get(self.reason, "rejection")


class Monitor:
    """Receives the engine's callbacks; keeps the log; computes metrics."""

    def __init__(self, scenario: Scenario) -> None:
        self.window_start_s = scenario.warmup_s
        self.window_end_s = scenario.duration_s
        self.rows: list[tuple[Any, ...]] = []
        self.leases: list[WorkerLease] = []
        self.tenures: list[Tenure] = []
        self.claims: dict[str, list[float]] = {}
        self.crashes: list[tuple[int, float, Tenure | None]] = []
        self.pauses: list[tuple[list[float], list[float]]] = []
        self.heartbeats_sent = 0
        self.attempts: list[Attempt] = []
        """Every attempt whose end the worker saw (``seen_s``, ``timed_out`` set)."""
        self.requests_s: list[float] = []
        """When the server processed each request, in order."""
        self._live: dict[str, Tenure] = {}

    # ------------------------------------------------------------------ callbacks

    def transition(
        self,
        record: WorkRecord,
        event: Event,
        previous: WorkState,
        at_s: float,
        acting: Any,
    ) -> None:
        """The ``LeaseBook`` observer (renewals filtered out by the engine)."""
        work_id = record.work_id
        worker = -1 if acting is None else acting.index
        if event is Event.CLAIM or event is Event.UNCONDITIONAL:
            tenure = Tenure(work_id, worker, at_s)
            if acting is not None:
                acting.tenure = tenure
            else:  # claimed by a request its crashed sender left in flight
                tenure.holder_crashed_s = at_s
            self._live[work_id] = tenure
            self.tenures.append(tenure)
            self.claims.setdefault(work_id, []).append(at_s)
            name = "claim"
        elif event is Event.EXPIRE:
            if previous is WorkState.ACTIVE:
                tenure = self._live.pop(work_id)
                tenure.expired_s = at_s
                worker = tenure.worker
                name = "expire"
            else:
                name = "expire_unclaimed"
        elif event is Event.POLL:
            name = "handout" if record.handed_out_at_us is None else "reclaim"
        elif event is Event.ACK:
            name = "acknowledge"
        else:
            name = event.value
        self._row(at_s, name, worker, work_id, f"{previous.value} -> {record.state.value}")

    def lease_started(
        self, worker: int, work_id: str, tenure: Tenure | None, at_s: float
    ) -> WorkerLease:
        lease = WorkerLease(worker, work_id, tenure, at_s)
        self.leases.append(lease)
        self._row(at_s, "lease_start", worker, work_id, "")
        return lease

    def lease_ended(self, lease: WorkerLease, at_s: float, reason: str) -> None:
        lease.end_s = at_s
        lease.reason = reason
        self._row(at_s, "lease_end", lease.worker, lease.work_id, reason)

    def crashed(self, worker: int, at_s: float, tenure: Tenure | None) -> None:
        if tenure is not None:
            tenure.holder_crashed_s = min(tenure.holder_crashed_s, at_s)
        self.crashes.append((worker, at_s, tenure))
        self._row(at_s, "crash", worker, tenure.work_id if tenure is not None else "", "")

    def restarted(self, worker: int, at_s: float) -> None:
        self._row(at_s, "restart", worker, "", "")

    def _row(self, at_s: float, event: str, worker: int, work_id: str, detail: str) -> None:
        self.rows.append(
            (at_s, event, worker, work_id, 0, _NAN, _NAN, _NAN, _NAN, _NAN, "", _NAN, detail)
        )

    # ------------------------------------------------------------------ results

    def attempt_rows(self) -> list[tuple[Any, ...]]:
        """The attempts as event-log rows."""
        rows = []
        names = _OUTCOME_NAMES
        for a in self.attempts:
            status = a.status
            if a.timed_out:
                outcome = "timeout"
            else:
                assert status is not None
                outcome = names.get(status) or _outcome_name(status)
            rows.append(
                (
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
            )
        return rows

    def all_rows(self) -> list[tuple[Any, ...]]:
        """Attempt rows and the other events' rows, unordered."""
        return self.attempt_rows() + self.rows

    def events(self) -> pd.DataFrame:
        """The event log, ordered by ``time_s`` (ties keep the order of events)."""
        return events_frame(self.all_rows())

    def metrics(self) -> dict[str, float]:
        """This run's metrics (see the module docstring)."""
        w0, w1 = self.window_start_s, self.window_end_s
        held_s = 0.0
        causes = dict.fromkeys(CAUSES, 0)
        for lease in self.leases:
            held_s += max(0.0, min(lease.end_s, w1) - max(lease.start_s, w0))
            if lease.reason in _FALSE_LOSS_REASONS and w0 <= lease.end_s <= w1:
                causes[lease.cause()] += 1
        hours = held_s / 3600.0
        per_hour = (lambda n: n / hours) if hours > 0 else (lambda n: _NAN)
        expiries = sum(
            1
            for t in self.tenures
            if w0 <= t.expired_s <= w1 and not t.holder_crashed_s <= t.expired_s
        )
        split_s = 0.0
        by_item: dict[str, list[tuple[float, float]]] = {}
        for lease in self.leases:
            pauses = self.pauses[lease.worker]
            spans = _minus(max(lease.start_s, w0), min(lease.end_s, w1), pauses)
            by_item.setdefault(lease.work_id, []).extend(spans)
            if lease.tenure is not None and lease.tenure.expired_s < lease.end_s:
                exposed_from = max(lease.tenure.expired_s, lease.start_s, w0)
                for start, end in _minus(exposed_from, min(lease.end_s, w1), pauses):
                    split_s += end - start
        double_s = sum(_overlap(spans) for spans in by_item.values())
        takeovers = []
        censored = 0
        for _worker, crash_s, tenure in self.crashes:
            if tenure is None or not (w0 <= crash_s <= w1):
                continue
            if not tenure.claimed_s <= crash_s < tenure.expired_s:
                continue  # it held no live lease when it died
            later = [t for t in self.claims.get(tenure.work_id, ()) if t > crash_s]
            if later:
                takeovers.append(later[0] - crash_s)
            else:
                censored += 1
        false_losses = sum(causes.values())
        results = failures = 0
        for a in self.attempts:
            if a.kind == "heartbeat" and a.seen_s >= w0:
                results += 1
                if a.status == 412 and not a.timed_out:
                    failures += 1
        requests = len(self.requests_s) - bisect.bisect_left(self.requests_s, w0)
        metrics = {
            "lease_hours": hours,
            "false_losses_per_lease_hour": per_hour(false_losses),
            **{f"false_losses_{cause}_per_lease_hour": per_hour(n) for cause, n in causes.items()},
            "server_expiries_per_lease_hour": per_hour(expiries),
            "precondition_failures_per_lease_hour": per_hour(failures),
            "precondition_failure_rate": failures / results if results else _NAN,
            "split_brain_seconds_per_lease_hour": per_hour(split_s),
            "double_holder_seconds_per_lease_hour": per_hour(double_s),
            "takeover_seconds_mean": sum(takeovers) / len(takeovers) if takeovers else _NAN,
            "takeover_seconds_max": max(takeovers) if takeovers else _NAN,
            "takeovers": float(len(takeovers)),
            "takeovers_censored": float(censored),
            "requests_per_lease_second": requests / held_s if held_s > 0 else _NAN,
        }
        return metrics


def events_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Event-log rows as a DataFrame ordered by ``time_s`` (ties keep row order)."""
    import pandas as pd

    frame = pd.DataFrame.from_records(rows, columns=list(EVENT_COLUMNS))
    frame = frame.sort_values("time_s", kind="stable", ignore_index=True)
    frame["status"] = frame["status"].astype("Int64")
    return frame


_OUTCOME_NAMES: dict[int, str] = {}


def _outcome_name(status: int) -> str:
    from ..policy import classify_status

    name = _OUTCOME_NAMES[status] = classify_status(status).value
    return name


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
