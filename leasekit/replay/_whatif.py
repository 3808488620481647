"""What-if TTL: which leases a trace's arrivals would have lost under other TTLs.

A client trace has send and receive times, not the instant the server
processed each request (its *arrival*). The estimate and its bounds:

* **Arrival estimate.** For a success whose ``last_heartbeat`` is an RFC 3339
  server timestamp (leasekit's server; the official API's values), the
  server's own time of the renewal, moved onto the trace's clock by the
  median offset between server time and the midpoint of send and receive
  over that host's successes (one offset per ``worker``: hosts' clocks
  differ), and clamped into ``[sent_s, received_s]``. Gaps between two such
  arrivals are then the server's own gaps. Otherwise the midpoint of send and
  receive.
* **Bounds.** The gap between two renewals is at least ``next sent - this
  received`` and at most ``next received - this sent``. The low bound takes
  every gap at its shortest, the high bound at its longest.
* **Unanswered attempts** (no HTTP status: the attempt timed out or the
  connection failed) may or may not have been applied, and a request the
  client gave up on may still reach the server *after* the client's timeout.
  The low bound counts each as a renewal applied at any time from its send
  on (so it may cover the whole gap that follows it); the estimate and the
  high bound count it as not applied. One the trace shows was never applied
  (the next answered attempt is a success that echoed the same
  ``expected_last_heartbeat``) counts as not applied in the low bound too.
* Only successes (and, for the low bound, unanswered attempts) renew. A
  412, a 5xx or a rejection did not renew in the trace, and the trace cannot
  say what the server would have answered under another TTL.

A lease is one worker's run of attempts on one work item, from its first
success to its last attempt; a new claim (``NO_HEARTBEAT``) after a success
starts a new lease. A gap *expires* when the deadline set by one renewal
passes before the next renewal arrives, or, after the last renewal, before
the lease's last attempt arrives: the worker was still alive and beating.

Counting follows the metrics glossary (:mod:`leasekit.metrics`): a lease
whose gaps expire is **one** false loss (cause ``server_expiry``) and one
server expiry, however many of its gaps expire, and it is held only until
its holder would have learnt of the loss (the answer to the attempt that
ended the first expiring gap). ``expiring_gaps`` counts the gaps, a
different number under a different name.

The expiry decision is :class:`leasekit.lease.LeaseRules`: each gap is
replayed as a claim at its first arrival and a renewal at the second on a
server whose TTL is the one asked about; a 412 is an expiry.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from ..lease import TTL_LIMITS_SECONDS, LeaseConfig, LeaseRules, new_record
from ..metrics import Totals, summarize
from ..policy import Outcome
from ..protocol import NO_HEARTBEAT, PreconditionFailed, parse_timestamp

__all__ = ["BOUNDS", "WHAT_IF_COLUMNS", "leases", "what_if_totals", "what_if_ttl"]

_US: Final = 1_000_000
# Replayed times are offset so that the server's timestamps look like real ones.
_EPOCH_US: Final = 1_767_225_600 * _US  # 2026-01-01T00:00:00Z

WHAT_IF_COLUMNS: Final = (
    "ttl_seconds",
    "leases",
    "trace_lease_hours",
    "renewals",
    "unanswered",
    "expiring_gaps",
    "expiring_gaps_low",
    "expiring_gaps_high",
    "false_losses",
    "false_losses_low",
    "false_losses_high",
    "lease_hours",
    "false_losses_per_lease_hour",
    "false_losses_per_lease_hour_ci95_low",
    "false_losses_per_lease_hour_ci95_high",
    "false_losses_per_lease_hour_low",
    "false_losses_per_lease_hour_high",
)
"""Columns of :func:`what_if_ttl`'s table."""

BOUNDS: Final = ("estimate", "low", "high")
"""The what-if's three readings of a trace: the arrival estimate and the two bounds."""


@dataclass(frozen=True, slots=True)
class _Lease:
    """One lease's renewal windows, seconds on the trace's clock."""

    # successes: estimated arrival, the [earliest, latest] arrival window (send
    # to receive), which is also when the worker saw the answer
    ok_arrival: np.ndarray
    ok_early: np.ndarray
    ok_late: np.ndarray
    # unanswered attempts after the first success: their send times, all of
    # them and those the trace does not show were never applied
    unanswered_early: np.ndarray
    maybe_applied_early: np.ndarray
    # the lease's last attempt (a liveness probe, renewing or not)
    last_early: float
    last_arrival: float
    last_late: float
    last_outcome: str  # "ok", "unanswered" or "other"
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class _Step:
    """One renewal as a reading sees it: when it arrived as the start of the gap
    after it, as the end of the gap before it, and when the worker would
    have learnt that a gap ending there had expired."""

    start_s: float
    end_s: float
    seen_s: float


def _server_offsets(attempts: pd.DataFrame) -> tuple[pd.Series, dict[str, float]]:
    """Server timestamps of successes on the trace clock, and each host's median offset.

    Every host (``worker``) has its own clock, so each gets its own offset
    between the server's time and its trace times.
    """
    ok = attempts[(attempts["outcome"] == Outcome.OK.value) & attempts["last_heartbeat"].notna()]
    ok = ok[ok["sent_at"].notna() & ok["received_s"].notna()]
    server_s: dict[int, float] = {}
    for index, text, sent_at, sent_s in zip(
        ok.index, ok["last_heartbeat"], ok["sent_at"], ok["sent_s"], strict=True
    ):
        try:
            server_us = parse_timestamp(str(text))
        except ValueError:
            continue  # an opaque value that is not a timestamp: use the midpoint
        origin_us = sent_at.value // 1_000 - round(float(sent_s) * _US)
        server_s[index] = (server_us - origin_us) / _US
    if not server_s:
        return pd.Series(dtype="float64"), {}
    series = pd.Series(server_s, dtype="float64")
    known = ok.loc[series.index]
    offset = series - (known["sent_s"] + known["received_s"]) / 2
    by_host = offset.groupby(known["worker"].astype("string"), sort=False).median()
    return series, {str(host): float(value) for host, value in by_host.items()}


def leases(attempts: pd.DataFrame) -> Iterable[pd.DataFrame]:
    """Split an attempt table into leases (see the module docstring), each in send order.

    Attempts before a lease's first success (failed claims) are dropped.
    """
    ordered = attempts.sort_values("sent_s", kind="stable")
    for _key, group in ordered.groupby(
        ["environment_id", "work_id", "worker"], sort=False, observed=True
    ):
        ok = (group["outcome"] == Outcome.OK.value).to_numpy()
        claim = (group["expected_last_heartbeat"] == NO_HEARTBEAT).fillna(False).to_numpy()
        seen_ok = False
        start = 0
        positions = range(len(group))
        for position in positions:
            if claim[position] and seen_ok:
                yield _from_first_ok(group.iloc[start:position])
                start, seen_ok = position, False
            seen_ok = seen_ok or bool(ok[position])
        if seen_ok:
            yield _from_first_ok(group.iloc[start:])


def _from_first_ok(group: pd.DataFrame) -> pd.DataFrame:
    ok = (group["outcome"] == Outcome.OK.value).to_numpy()
    return group.iloc[int(np.argmax(ok)) :] if ok.any() else group.iloc[0:0]


def _windows(lease: pd.DataFrame, server_s: pd.Series, offsets: dict[str, float]) -> _Lease:
    sent = lease["sent_s"].to_numpy(dtype="float64")
    received = lease["received_s"].to_numpy(dtype="float64")
    received = np.where(np.isnan(received), sent, received)
    ok = (lease["outcome"] == Outcome.OK.value).to_numpy()
    unanswered = lease["status"].isna().to_numpy() & ~ok
    arrival = (sent + received) / 2
    offset = offsets.get(str(lease["worker"].iloc[0]))
    if offset is not None:
        known = lease.index.isin(server_s.index)
        if known.any():
            estimate = server_s.reindex(lease.index).to_numpy(dtype="float64") - offset
            clamped = np.clip(estimate, sent, received)
            arrival = np.where(known, clamped, arrival)
    maybe_applied = unanswered & ~_never_applied(lease, unanswered)
    return _Lease(
        ok_arrival=arrival[ok],
        ok_early=sent[ok],
        ok_late=received[ok],
        unanswered_early=sent[unanswered],
        maybe_applied_early=sent[maybe_applied],
        last_early=float(sent[-1]),
        last_arrival=float(arrival[-1]),
        last_late=float(received[-1]),
        last_outcome="ok" if ok[-1] else "unanswered" if unanswered[-1] else "other",
        start_s=float(sent[0]),
        end_s=float(max(received[-1], sent[0])),
    )


def _never_applied(lease: pd.DataFrame, unanswered: np.ndarray) -> np.ndarray:
    """Unanswered attempts the trace shows were never applied: the next answered
    attempt is a success that sent the same ``expected_last_heartbeat``. Had the
    unanswered one been applied first, that success would have met a 412;
    arriving after it, it would have met one itself (the stored value had moved
    on). Without the echoed values nothing is known."""
    expected = lease["expected_last_heartbeat"].astype("object").to_numpy()
    ok = (lease["outcome"] == Outcome.OK.value).to_numpy()
    never = np.zeros(len(lease), dtype=bool)
    next_ok_expected: object = None  # the echo of the next answered attempt, if a success
    for position in range(len(lease) - 1, -1, -1):
        if not unanswered[position]:
            next_ok_expected = expected[position] if ok[position] else None
            continue
        echo = expected[position]
        never[position] = (
            isinstance(echo, str) and isinstance(next_ok_expected, str) and echo == next_ok_expected
        )
    return never


def _expired(rules: LeaseRules, first_s: float, second_s: float) -> bool:
    """Whether a lease renewed at ``first_s`` has expired when a heartbeat arrives at
    ``second_s``, by the lease rules (seconds, rounded to the rules' microseconds)."""
    first_us = _EPOCH_US + round(first_s * _US)
    second_us = _EPOCH_US + round(second_s * _US)
    record = new_record(
        "replay", "replay", 1, first_us, secret="", ttl_seconds=rules.config.default_ttl_seconds
    )
    answer = rules.heartbeat(record, first_us, NO_HEARTBEAT)
    try:
        rules.heartbeat(record, second_us, answer.last_heartbeat)
    except PreconditionFailed:
        return True
    return False


def _expiring(
    rules: LeaseRules, steps: Sequence[_Step], last: _Step | None
) -> tuple[int, float | None]:
    """The expiring gaps along ``steps``, then up to a final attempt ``last`` that
    did not renew (or ``None``), and when the worker would have seen the first."""
    gaps = 0
    first_seen: float | None = None
    for before, after in itertools.pairwise(steps):
        # bound windows can overlap: an overlap is no gap, nothing to ask the rules
        if after.end_s > before.start_s and _expired(rules, before.start_s, after.end_s):
            gaps += 1
            first_seen = after.seen_s if first_seen is None else first_seen
    if (
        steps
        and last is not None
        and last.end_s > steps[-1].start_s
        and _expired(rules, steps[-1].start_s, last.end_s)
    ):
        gaps += 1
        first_seen = last.seen_s if first_seen is None else first_seen
    return gaps, first_seen


_Readings = dict[str, tuple[list[_Step], _Step | None]]


def _readings(lease: _Lease) -> _Readings:
    """The lease's renewals and final attempt as each of :data:`BOUNDS` reads them."""
    late = lease.ok_late
    renews = lease.last_outcome == "ok"
    estimate = [
        _Step(float(a), float(a), float(r)) for a, r in zip(lease.ok_arrival, late, strict=True)
    ]
    # high: every gap at its longest, and the earliest moment the worker could learn of it
    high = [_Step(float(e), float(r), float(e)) for e, r in zip(lease.ok_early, late, strict=True)]
    # low: every gap at its shortest; an unanswered attempt may have been applied
    # at any moment from its send on, even after its sender gave up on it
    first = float(lease.ok_early[0])
    low = sorted(
        [_Step(float(r), float(e), float(r)) for e, r in zip(lease.ok_early, late, strict=True)]
        + [_Step(math.inf, float(e), math.inf) for e in lease.maybe_applied_early if e >= first],
        key=lambda step: (step.end_s, step.start_s),
    )
    final_low = renews or lease.last_outcome == "unanswered"
    return {
        "estimate": (
            estimate,
            None if renews else _Step(lease.last_arrival, lease.last_arrival, lease.last_late),
        ),
        "low": (
            low,
            None if final_low else _Step(lease.last_early, lease.last_early, lease.last_late),
        ),
        "high": (
            high,
            None if renews else _Step(lease.last_late, lease.last_late, lease.last_early),
        ),
    }


def _rules(ttl: int) -> LeaseRules:
    low_limit, high_limit = TTL_LIMITS_SECONDS
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | np.integer)
        or not low_limit <= ttl <= high_limit
    ):
        raise ValueError(
            f"ttls: expected whole seconds in [{low_limit}, {high_limit}], got {ttl!r}"
        )
    ttl = int(ttl)
    return LeaseRules(
        LeaseConfig(default_ttl_seconds=ttl, min_ttl_seconds=ttl, max_ttl_seconds=ttl)
    )


def _all_windows(attempts: pd.DataFrame) -> list[_Lease]:
    attempts = attempts.reset_index(drop=True)
    server_s, offsets = _server_offsets(attempts)
    return [_windows(lease, server_s, offsets) for lease in leases(attempts) if len(lease)]


def _totals(
    rules: LeaseRules, leases: Sequence[tuple[_Lease, _Readings]]
) -> tuple[dict[str, Totals], dict[str, int]]:
    totals = {bound: Totals() for bound in BOUNDS}
    gaps = dict.fromkeys(BOUNDS, 0)
    for window, readings in leases:
        for bound, (steps, last) in readings.items():
            count, seen = _expiring(rules, steps, last)
            total = totals[bound]
            gaps[bound] += count
            end = window.end_s
            # the low bound keeps the whole lease: more exposure, a lower rate
            if seen is not None and bound != "low":
                end = min(end, max(window.start_s, seen))
            total.lease_seconds += end - window.start_s
            if count:
                total.false_losses_server_expiry += 1
                total.server_expiries += 1
    return totals, gaps


def _read(attempts: pd.DataFrame) -> list[tuple[_Lease, _Readings]]:
    return [(window, _readings(window)) for window in _all_windows(attempts)]


def what_if_totals(attempts: pd.DataFrame, ttl: int) -> dict[str, Totals]:
    """What the trace's leases would have counted at a server TTL of ``ttl``
    seconds, as :class:`leasekit.metrics.Totals`, for each reading of
    :data:`BOUNDS` (the estimate, the low and the high bound).

    Only ``lease_seconds``, ``false_losses_server_expiry`` and
    ``server_expiries`` are known from a trace's arrivals; the other counts
    stay zero, so only ``false_losses_per_lease_hour``,
    ``false_losses_server_expiry_per_lease_hour``,
    ``server_expiries_per_lease_hour`` and ``lease_hours`` of
    :func:`leasekit.metrics.summarize` mean anything here. Lease time ends
    where the worker would have learnt of its loss (see the module
    docstring), except in the low bound, which keeps whole leases.
    """
    totals, _ = _totals(_rules(ttl), _read(attempts))
    return totals


def what_if_ttl(attempts: pd.DataFrame, ttls: Sequence[int]) -> pd.DataFrame:
    """False losses the trace's arrivals would have caused at each TTL.

    ``attempts`` is an attempt table (:func:`leasekit.trace.read_trace` or
    :func:`leasekit.replay.load_any_trace`); ``ttls`` whole seconds. One row
    per TTL with the columns :data:`WHAT_IF_COLUMNS`:

    * ``leases`` (count), ``trace_lease_hours`` (held time in the trace:
      first success's send to last attempt's answer), ``renewals``
      (successes), ``unanswered`` (attempts without a status);
    * ``expiring_gaps`` with ``_low``/``_high``: gaps between arrivals
      longer than the TTL (several per lease possible);
    * ``false_losses`` with ``_low``/``_high``: leases lost, one per lease
      whatever its gaps (the glossary's meaning);
    * ``lease_hours``: held time at this TTL (a lost lease ends when its
      holder would have learnt of it);
    * ``false_losses_per_lease_hour``, the glossary's metric, with its exact
      Poisson 95% interval (``_ci95_low``/``_ci95_high``) and the bounds
      from what a client trace cannot see (``_low``/``_high``; NaN when
      no lease was held).

    A lease is good up to and including its deadline (``LeaseRules.settle``),
    so a gap of exactly the TTL does not expire.
    """
    read = _read(attempts)
    windows = [window for window, _ in read]
    trace_hours = sum(w.end_s - w.start_s for w in windows) / 3600
    renewals = sum(len(w.ok_arrival) for w in windows)
    unanswered = sum(len(w.unanswered_early) for w in windows)
    rows = []
    for ttl in ttls:
        rules = _rules(ttl)
        totals, gaps = _totals(rules, read)
        metric = "false_losses_per_lease_hour"
        estimate = summarize(totals["estimate"])[metric]
        rows.append(
            {
                "ttl_seconds": int(ttl),
                "leases": len(windows),
                "trace_lease_hours": trace_hours,
                "renewals": renewals,
                "unanswered": unanswered,
                "expiring_gaps": gaps["estimate"],
                "expiring_gaps_low": gaps["low"],
                "expiring_gaps_high": gaps["high"],
                "false_losses": totals["estimate"].false_losses,
                "false_losses_low": totals["low"].false_losses,
                "false_losses_high": totals["high"].false_losses,
                "lease_hours": totals["estimate"].lease_seconds / 3600,
                metric: estimate.value,
                f"{metric}_ci95_low": estimate.low,
                f"{metric}_ci95_high": estimate.high,
                f"{metric}_low": summarize(totals["low"])[metric].value,
                f"{metric}_high": summarize(totals["high"])[metric].value,
            }
        )
    return pd.DataFrame(rows, columns=list(WHAT_IF_COLUMNS))
