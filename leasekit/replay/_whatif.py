"""What-if TTL: which server expiries a trace's arrivals would have caused under other TTLs.

A client trace has send and receive times, not the instant the server
processed each request (its *arrival*). The estimate and its bounds:

* **Arrival estimate.** For a success whose ``last_heartbeat`` is an RFC 3339
  server timestamp (leasekit's server; the official API's values), the
  server's own time of the renewal, moved onto the trace's clock by the median
  offset between server time and the midpoint of send and receive over all
  such successes, and clamped into ``[sent_s, received_s]``. Gaps between two
  such arrivals are then the server's own gaps. Otherwise the midpoint of
  send and receive.
* **Bounds.** The gap between two renewals is at least ``next sent - this
  received`` and at most ``next received - this sent``. ``expiries_low``
  counts the gaps that expire even at their shortest, ``expiries_high`` those
  that expire at their longest.
* **Unanswered attempts** (no HTTP status: the attempt timed out or the
  connection failed) may or may not have been applied. ``expiries_low``
  counts them as applied renewals (inside their send-to-timeout window),
  ``expiries`` and ``expiries_high`` as not applied.
* Only successes (and, for the low bound, unanswered attempts) renew. A
  412, a 5xx or a rejection did not renew in the trace, and the trace cannot
  say what the server would have answered under another TTL.

A lease is one worker's run of attempts on one work item, from its first
success to its last attempt; a new claim (``NO_HEARTBEAT``) after a success
starts a new lease. An expiry counts when the deadline set by one renewal
passes before the next renewal arrives, or, after the last renewal, before
the lease's last attempt arrives: the worker was still alive and beating, so
every counted expiry is a false loss.

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

from ..lease import TTL_LIMITS_SECONDS, LeaseConfig, LeaseRules, WorkRecord
from ..policy import Outcome
from ..protocol import NO_HEARTBEAT, PreconditionFailed, parse_timestamp

__all__ = ["WHAT_IF_COLUMNS", "leases", "what_if_ttl"]

_US: Final = 1_000_000
# Replayed times are offset so that the server's timestamps look like real ones.
_EPOCH_US: Final = 1_767_225_600 * _US  # 2026-01-01T00:00:00Z

WHAT_IF_COLUMNS: Final = (
    "ttl_seconds",
    "leases",
    "lease_hours",
    "renewals",
    "unanswered",
    "expiries",
    "expiries_low",
    "expiries_high",
    "false_losses_per_lease_hour",
    "false_losses_per_lease_hour_low",
    "false_losses_per_lease_hour_high",
)


@dataclass(frozen=True, slots=True)
class _Lease:
    """One lease's renewal windows, seconds on the trace's clock."""

    # successes: estimated arrival and the [earliest, latest] arrival window
    ok_arrival: np.ndarray
    ok_early: np.ndarray
    ok_late: np.ndarray
    # unanswered attempts after the first success: [earliest, latest] window
    unanswered_early: np.ndarray
    unanswered_late: np.ndarray
    # the lease's last attempt (a liveness probe, renewing or not)
    last_early: float
    last_arrival: float
    last_late: float
    last_outcome: str  # "ok", "unanswered" or "other"
    held_seconds: float


def _server_offset(attempts: pd.DataFrame) -> tuple[pd.Series, float | None]:
    """Server timestamps of successes on the trace clock, and the median offset."""
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
        return pd.Series(dtype="float64"), None
    series = pd.Series(server_s, dtype="float64")
    mid = (ok.loc[series.index, "sent_s"] + ok.loc[series.index, "received_s"]) / 2
    return series, float(np.median(series - mid))


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


def _windows(lease: pd.DataFrame, server_s: pd.Series, offset: float | None) -> _Lease:
    sent = lease["sent_s"].to_numpy(dtype="float64")
    received = lease["received_s"].to_numpy(dtype="float64")
    received = np.where(np.isnan(received), sent, received)
    ok = (lease["outcome"] == Outcome.OK.value).to_numpy()
    unanswered = lease["status"].isna().to_numpy() & ~ok
    arrival = (sent + received) / 2
    if offset is not None:
        known = lease.index.isin(server_s.index)
        if known.any():
            estimate = server_s.reindex(lease.index).to_numpy(dtype="float64") - offset
            clamped = np.clip(estimate, sent, received)
            arrival = np.where(known, clamped, arrival)
    return _Lease(
        ok_arrival=arrival[ok],
        ok_early=sent[ok],
        ok_late=received[ok],
        unanswered_early=sent[unanswered],
        unanswered_late=received[unanswered],
        last_early=float(sent[-1]),
        last_arrival=float(arrival[-1]),
        last_late=float(received[-1]),
        last_outcome="ok" if ok[-1] else "unanswered" if unanswered[-1] else "other",
        held_seconds=float(max(received[-1], sent[0]) - sent[0]),
    )


def _expired(rules: LeaseRules, first_s: float, second_s: float) -> bool:
    """Whether a lease renewed at ``first_s`` has expired when a heartbeat arrives at
    ``second_s``, by the lease rules (seconds, rounded to the rules' microseconds)."""
    first_us = _EPOCH_US + round(first_s * _US)
    second_us = _EPOCH_US + round(second_s * _US)
    record = WorkRecord(
        environment_id="replay",
        work_id="replay",
        session_id="replay",
        secret="",
        created_at_us=first_us,
        seq=1,
        ttl_seconds=rules.config.default_ttl_seconds,
    )
    answer = rules.heartbeat(record, first_us, NO_HEARTBEAT)
    try:
        rules.heartbeat(record, second_us, answer.last_heartbeat)
    except PreconditionFailed:
        return True
    return False


def _count(rules: LeaseRules, renewals: Sequence[tuple[float, float]], last: float | None) -> int:
    """Expiries along renewals given as (arrival as a gap's start, arrival as its end),
    then up to the arrival ``last`` of a final attempt that did not renew (or ``None``)."""
    count = 0
    for (start, _), (_, end) in itertools.pairwise(renewals):
        # bound windows can overlap: an overlap is no gap, nothing to ask the rules
        if end > start and _expired(rules, start, end):
            count += 1
    if renewals and last is not None and last > renewals[-1][0]:
        count += _expired(rules, renewals[-1][0], last)
    return count


def _lease_expiries(rules: LeaseRules, lease: _Lease) -> tuple[int, int, int]:
    """(central, low, high) expiry counts of one lease."""
    central = [(float(a), float(a)) for a in lease.ok_arrival]
    high = [(float(e), float(late)) for e, late in zip(lease.ok_early, lease.ok_late, strict=True)]
    # low: the gap is shortest when a renewal arrives late and the next one early;
    # unanswered attempts count as applied renewals.
    low_windows = sorted(
        [(float(e), float(late)) for e, late in zip(lease.ok_early, lease.ok_late, strict=True)]
        + [
            (float(e), float(late))
            for e, late in zip(lease.unanswered_early, lease.unanswered_late, strict=True)
            if e >= lease.ok_early[0]
        ]
    )
    low = [(late, early) for early, late in low_windows]
    renews = lease.last_outcome == "ok"
    return (
        _count(rules, central, None if renews else lease.last_arrival),
        _count(
            rules, low, None if renews or lease.last_outcome == "unanswered" else lease.last_early
        ),
        _count(rules, high, None if renews else lease.last_late),
    )


def what_if_ttl(attempts: pd.DataFrame, ttls: Sequence[int]) -> pd.DataFrame:
    """Server expiries and false losses the trace's arrivals would have caused at each TTL.

    ``attempts`` is an attempt table (:func:`leasekit.trace.read_trace` or
    :func:`leasekit.replay.load_any_trace`); ``ttls`` whole seconds. One row
    per TTL with the columns :data:`WHAT_IF_COLUMNS`: ``leases`` (count),
    ``lease_hours`` (held time, hours: first success's send to last attempt's
    answer), ``renewals`` (successes), ``unanswered`` (attempts without a
    status), ``expiries`` (the estimate), ``expiries_low``/``expiries_high``
    (bounds, see the module docstring) and the same per lease-hour as
    ``false_losses_per_lease_hour*`` (NaN when no lease was held). A lease is
    good up to and including its deadline (``LeaseRules.settle``), so a gap
    of exactly the TTL does not expire.
    """
    attempts = attempts.reset_index(drop=True)
    server_s, offset = _server_offset(attempts)
    windows = [_windows(lease, server_s, offset) for lease in leases(attempts) if len(lease)]
    hours = sum(w.held_seconds for w in windows) / 3600
    renewals = sum(len(w.ok_arrival) for w in windows)
    unanswered = sum(len(w.unanswered_early) for w in windows)
    rows = []
    for ttl in ttls:
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
        rules = LeaseRules(
            LeaseConfig(default_ttl_seconds=ttl, min_ttl_seconds=ttl, max_ttl_seconds=ttl)
        )
        central = low = high = 0
        for window in windows:
            c, lo, hi = _lease_expiries(rules, window)
            central, low, high = central + c, low + lo, high + hi

        def rate(count: int) -> float:
            return count / hours if hours > 0 else math.nan

        rows.append(
            {
                "ttl_seconds": ttl,
                "leases": len(windows),
                "lease_hours": hours,
                "renewals": renewals,
                "unanswered": unanswered,
                "expiries": central,
                "expiries_low": low,
                "expiries_high": high,
                "false_losses_per_lease_hour": rate(central),
                "false_losses_per_lease_hour_low": rate(low),
                "false_losses_per_lease_hour_high": rate(high),
            }
        )
    return pd.DataFrame(rows, columns=list(WHAT_IF_COLUMNS))
