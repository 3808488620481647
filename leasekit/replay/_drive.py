"""Drive the simulator from a trace: another policy or TTL on the trace's own network.

:class:`TraceNetwork` plugs into the simulator through its
:class:`~leasekit.sim._network.NetworkModel` interface:

* **Delays.** Each request draws one of the trace's observed round trips
  (answered attempts, seconds) and takes half of it; its answer takes the
  other half of the same draw, so simulated round trips have exactly the
  trace's distribution.
* **Losses, in time.** The trace's leases, each from its first success
  to its last attempt, are laid end to end into one network timeline of
  ``T`` seconds. Each unanswered attempt marks its window, from its send to
  its timeout, as an outage: at the HTTP level a lost packet is
  retransmitted, so an attempt that gets no answer for a whole timeout means
  the path was down (or the server stalled) that long. A window followed by
  a success loses requests (none reached the server); one followed by a 412
  loses answers (a request reached the server, its answer never came back).
  Polls and acks meet the same outages.

The simulated fleet has ``W`` workers (one per lease of the trace, but
fewer when that would make runs shorter than 10 minutes) and as many work
items; by default each run lasts ``T / W`` seconds and worker ``i`` lives
on the timeline from ``i * T / W`` on, so together the workers go through
the trace's network exactly once, whatever the leases' lengths. Asked for
longer runs (``hours``), each worker goes round the timeline again from
where it started. Workers meet their outages independently, as the trace's
leases did. Metrics are the glossary's (:mod:`leasekit.metrics`), pooled
over the replications with their 95% intervals.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pandas as pd

from ..policy import Outcome
from ._whatif import leases

__all__ = ["TraceNetwork", "simulate_on_trace"]

_MIN_RUN_S: Final = 600.0
"""Shortest run worth splitting the timeline for: claims and start-up weigh less."""
_REPORTED: Final = (
    "false_losses_per_lease_hour",
    "server_expiries_per_lease_hour",
    "precondition_failures_per_lease_hour",
    "split_brain_seconds_per_lease_hour",
    "requests_per_lease_second",
)
_Spans = tuple[list[float], list[float]]


class _Timeline:
    """One trace lease's outages, seconds since its first success."""

    __slots__ = ("answer", "length_s", "request")

    def __init__(self, request: _Spans, answer: _Spans, length_s: float) -> None:
        self.request = request
        self.answer = answer
        self.length_s = length_s


def _inside(spans: _Spans, t: float) -> bool:
    starts, ends = spans
    i = bisect.bisect_right(starts, t) - 1
    return i >= 0 and t < ends[i]


def _merge(spans: list[tuple[float, float]]) -> _Spans:
    starts: list[float] = []
    ends: list[float] = []
    for start, end in sorted(spans):
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        elif end > start:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _timeline(lease: pd.DataFrame) -> _Timeline:
    sent = lease["sent_s"].to_numpy(dtype="float64")
    received = lease["received_s"].to_numpy(dtype="float64")
    received = np.where(np.isnan(received), sent, received)
    origin = float(sent[0])
    unanswered = lease["status"].isna().to_numpy()
    outcome = lease["outcome"].astype("string").to_numpy()
    request: list[tuple[float, float]] = []
    answer: list[tuple[float, float]] = []
    run: list[tuple[float, float]] = []
    for position in range(len(lease)):
        if unanswered[position]:
            run.append((float(sent[position]) - origin, float(received[position]) - origin))
            continue
        if run:
            lost_answers = outcome[position] == Outcome.PRECONDITION_FAILED.value
            (answer if lost_answers else request).extend(run)
            run = []
    request.extend(run)  # a run the trace never resolved: the request side
    length = max(float(received.max()) - origin, 1e-9)
    return _Timeline(_merge(request), _merge(answer), length)


def _concatenate(timelines: Sequence[_Timeline]) -> _Timeline:
    """Lay lease timelines end to end."""
    request: list[tuple[float, float]] = []
    answer: list[tuple[float, float]] = []
    offset = 0.0
    for timeline in timelines:
        for spans, into in ((timeline.request, request), (timeline.answer, answer)):
            into.extend((offset + start, offset + end) for start, end in zip(*spans, strict=True))
        offset += timeline.length_s
    return _Timeline(_merge(request), _merge(answer), offset)


class TraceNetwork:
    """A :class:`~leasekit.sim.NetworkModel` that replays a trace (module docstring).

    ``round_trips`` are the trace's observed round trips, seconds;
    ``timeline`` its network timeline, which ``workers`` workers share at
    evenly spaced offsets; ``rng`` the run's random stream.
    """

    def __init__(
        self,
        round_trips: Sequence[float],
        timeline: _Timeline,
        workers: int,
        rng: random.Random,
    ) -> None:
        if not round_trips:
            raise ValueError("trace network: the trace has no answered attempt to take delays from")
        self._round_trips = list(round_trips)
        self._timeline = timeline
        self._stride_s = timeline.length_s / workers
        self._rng = rng
        self._pending: dict[int, float] = {}

    def _at(self, worker: int, sent_s: float) -> float:
        """Where on the trace's timeline a worker's simulated time falls."""
        return math.fmod(worker * self._stride_s + sent_s, self._timeline.length_s)

    def _half(self) -> float:
        return self._round_trips[self._rng.randrange(len(self._round_trips))] / 2

    def request_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        if _inside(self._timeline.request, self._at(worker, sent_s)):
            return None
        # the answer takes the other half of the same round trip
        half = self._pending[worker] = self._half()
        return half

    def answer_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        half = self._pending.pop(worker, None)
        if _inside(self._timeline.answer, self._at(worker, sent_s)):
            return None
        return self._half() if half is None else half


def simulate_on_trace(
    attempts: pd.DataFrame,
    *,
    policy: str,
    ttl_seconds: int,
    seed: int = 1,
    replications: int = 5,
    hours: float | None = None,
) -> dict[str, Any]:
    """Simulate ``policy`` (a :func:`~leasekit.policy.make_policy` spec) with a server
    TTL of ``ttl_seconds`` on the trace's network (see the module docstring).

    Each run lasts ``hours`` of simulated time (default: the trace's own
    timeline shared by the workers, ``T / W``); longer runs go round the
    trace's timeline again. Returns ``replications``, ``workers``,
    ``run_hours`` (simulated hours per run), ``lease_hours`` (held lease time
    pooled over the runs) and, for each of ``false_losses_per_lease_hour``,
    ``server_expiries_per_lease_hour``, ``precondition_failures_per_lease_hour``,
    ``split_brain_seconds_per_lease_hour`` and ``requests_per_lease_second``,
    its value pooled over ``replications`` runs (:func:`leasekit.sim.replicate`
    from ``seed``) with its 95% interval as ``NAME_ci95_low``/``NAME_ci95_high``
    (the glossary's meaning and interval, :data:`leasekit.metrics.METRICS`).

    Raises :class:`ValueError` for a trace without a held lease or an
    answered attempt, for a run shorter than two TTLs (a lease cannot even
    expire in it: pass a longer ``hours``), and when the runs held no lease.
    """
    from ..sim import Network, Scenario, Server, Streams, Workers, replicate

    held = [lease for lease in leases(attempts) if len(lease)]
    if not held:
        raise ValueError("the trace holds no lease to replay")
    if hours is not None and not (hours > 0 and math.isfinite(hours)):
        raise ValueError(f"hours: expected a positive number, got {hours!r}")
    timeline = _concatenate([_timeline(lease) for lease in held])
    workers = max(1, min(len(held), math.floor(timeline.length_s / _MIN_RUN_S)))
    duration_s = timeline.length_s / workers if hours is None else hours * 3600.0
    if duration_s < 2 * ttl_seconds:
        raise ValueError(
            f"the trace is too short to simulate TTL {ttl_seconds} s: each run would last "
            f"{duration_s:.4g} s (its {timeline.length_s:.4g} s timeline over {workers} "
            f"worker(s)), less than two TTLs; ask for longer runs (hours)"
            if hours is None
            else f"runs of {duration_s:.4g} s are too short to simulate TTL {ttl_seconds} s "
            "(less than two TTLs); ask for longer runs (hours)"
        )
    answered = attempts["status"].notna() & attempts["received_s"].notna()
    round_trips = (attempts.loc[answered, "received_s"] - attempts.loc[answered, "sent_s"]).tolist()
    scenario = Scenario(
        name="trace replay",
        duration_s=duration_s,
        seed=seed,
        workers=Workers(count=workers, policy=policy, start_spread_s=0.0),
        server=Server(
            default_ttl_seconds=ttl_seconds,
            min_ttl_seconds=min(5, ttl_seconds),
            max_ttl_seconds=max(3600, ttl_seconds),
        ),
        network=Network(),
    )

    def factory(_scenario: Scenario, streams: Streams) -> TraceNetwork:
        return TraceNetwork(round_trips, timeline, workers, streams.rng("network.trace"))

    estimates = replicate(scenario, replications, seed=seed, network=factory).estimates()
    lease_hours = estimates["lease_hours"].value
    if not lease_hours > 0:
        raise ValueError(
            f"{policy} held no lease in {replications} simulated run(s) of {duration_s:.4g} s "
            "on the trace's network; ask for longer runs (hours)"
        )
    result: dict[str, Any] = {
        "replications": replications,
        "workers": workers,
        "run_hours": duration_s / 3600.0,
        "lease_hours": lease_hours,
    }
    for name in _REPORTED:
        estimate = estimates[name]
        result[name] = estimate.value
        result[f"{name}_ci95_low"] = estimate.low
        result[f"{name}_ci95_high"] = estimate.high
    return result
