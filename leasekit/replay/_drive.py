"""Drive the simulator from a trace: another policy or TTL on the trace's own network.

:class:`TraceNetwork` plugs into the simulator through its
:class:`~leasekit.sim._network.NetworkModel` interface:

* **Delays.** Each request draws one of the trace's observed round trips
  (answered attempts, seconds) and takes half of it; its answer takes the
  other half of the same draw, so simulated round trips have exactly the
  trace's distribution.
* **Losses, in time.** Simulated worker ``i`` lives on the timeline of the
  trace's lease ``i mod L`` (seconds since that lease's first success,
  wrapping around at its end). Each unanswered attempt of the trace marks
  its window, from its send to its timeout, as an outage: at the HTTP level
  a lost packet is retransmitted, so an attempt that gets no answer for a
  whole timeout means the path was down (or the server stalled) that long.
  A window followed by a success loses requests (none reached the server);
  one followed by a 412 loses answers (a request reached the server, its
  answer never came back). Polls and acks meet the same outages.

The simulated fleet has one worker and one work item per lease of the trace,
starting together, and runs for the longest lease of the trace.
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


class TraceNetwork:
    """A :class:`~leasekit.sim._network.NetworkModel` that replays a trace (module docstring).

    ``round_trips`` are the trace's observed round trips, seconds;
    ``timelines`` one per trace lease; ``rng`` the run's random stream.
    """

    def __init__(
        self, round_trips: Sequence[float], timelines: Sequence[_Timeline], rng: random.Random
    ) -> None:
        if not round_trips:
            raise ValueError("trace network: the trace has no answered attempt to take delays from")
        self._round_trips = list(round_trips)
        self._timelines = list(timelines)
        self._rng = rng
        self._pending: dict[int, float] = {}

    def _timeline(self, worker: int, sent_s: float) -> tuple[_Timeline, float]:
        timeline = self._timelines[worker % len(self._timelines)]
        return timeline, math.fmod(sent_s, timeline.length_s)

    def request_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        timeline, t = self._timeline(worker, sent_s)
        if _inside(timeline.request, t):
            return None
        half = self._round_trips[self._rng.randrange(len(self._round_trips))] / 2
        self._pending[worker] = half
        return half

    def answer_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        half = self._pending.pop(worker, None)
        timeline, t = self._timeline(worker, sent_s)
        if _inside(timeline.answer, t):
            return None
        if half is None:
            half = self._round_trips[self._rng.randrange(len(self._round_trips))] / 2
        return half


def simulate_on_trace(
    attempts: pd.DataFrame,
    *,
    policy: str,
    ttl_seconds: int,
    seed: int = 1,
    replications: int = 5,
) -> dict[str, Any]:
    """Simulate ``policy`` (a :func:`~leasekit.policy.make_policy` spec) with a server
    TTL of ``ttl_seconds`` on the trace's network (see the module docstring).

    Returns, for each of ``false_losses_per_lease_hour``,
    ``server_expiries_per_lease_hour``, ``precondition_failures_per_lease_hour``,
    ``split_brain_seconds_per_lease_hour`` and ``requests_per_lease_second``,
    the mean over ``replications`` runs (:func:`leasekit.sim.replicate` from
    ``seed``) and its 95% t-interval as ``NAME_ci95``; plus ``lease_hours`` (mean)
    and ``replications``. Raises :class:`ValueError` for a trace without a held
    lease or an answered attempt.
    """
    from ..sim import Network, Scenario, Server, Streams, Workers, replicate

    held = [lease for lease in leases(attempts) if len(lease)]
    if not held:
        raise ValueError("the trace holds no lease to replay")
    timelines = [_timeline(lease) for lease in held]
    answered = attempts["status"].notna() & attempts["received_s"].notna()
    round_trips = (attempts.loc[answered, "received_s"] - attempts.loc[answered, "sent_s"]).tolist()
    scenario = Scenario(
        name="trace replay",
        duration_s=max(t.length_s for t in timelines),
        seed=seed,
        workers=Workers(count=len(timelines), policy=policy, start_spread_s=0.0),
        server=Server(
            default_ttl_seconds=ttl_seconds,
            min_ttl_seconds=min(5, ttl_seconds),
            max_ttl_seconds=max(3600, ttl_seconds),
        ),
        network=Network(),
    )

    def factory(_scenario: Scenario, streams: Streams) -> TraceNetwork:
        return TraceNetwork(round_trips, timelines, streams.rng("network.trace"))

    estimates = replicate(scenario, replications, seed=seed, network=factory).estimates()
    result: dict[str, Any] = {
        "replications": replications,
        "lease_hours": estimates["lease_hours"].value,
    }
    for name in _REPORTED:
        estimate = estimates[name]
        result[name] = estimate.value
        result[f"{name}_ci95"] = [estimate.low, estimate.high]
    return result
