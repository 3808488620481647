"""The rare-event engine (``--engine fast``): false losses and server expiries
per lease-hour, down to 1e-6 and below, in seconds.

What it estimates: the long-run rates, per hour of held lease time, of one
worker's leases on the scenario's network, with the scenario's policy and
server TTL: ``false_losses_per_lease_hour`` (and its four causes) and
``server_expiries_per_lease_hour``, defined as in ``docs/metrics.md``.

How (the method of ``docs/engines.md``, after Heidelberger 1995 and
Rubinstein and Kroese 2004):

* **The real rules.** A lease is a :class:`~leasekit.lease.WorkRecord` that
  :class:`~leasekit.lease.LeaseRules` alone changes (claim, renew, 412, lazy
  expiry), and a policy from :func:`~leasekit.policy.make_policy` driven
  through ``start``/``due``/``sending``/``observe`` exactly as the SimPy
  engine drives it (``timer_slack_s``, ``enforce_deadline``, pauses that
  delay the worker's timers and answers, requests that outlive their
  attempt's timeout and still reach the server). Only the draws of the
  network and of pauses are this engine's own.
* **Segments.** A lease's held life splits at every success its worker
  observes into segments: from one observed success to the next, or to the
  lease's end. Held time is the sum of the segments' lengths, and every
  false loss ends one, so ``rate = E[losses per segment] / E[segment
  length]`` over the segments of a long run. On a network without memory
  the segments are i.i.d. cycles (regeneration); the engine does not rely
  on it: it runs one long *nominal* chain of leases (the scenario's own
  law) and, at each of its segment starts, copies the whole state (policy,
  record, requests in flight, Gilbert-Elliott states) and runs one
  *tilted* branch segment from the copy.
* **Importance sampling.** A branch draws its losses, burst states, long
  delays and pauses from a tilted law and carries the likelihood ratio ``W``
  of its draws; ``E[1{loss} W]`` over branches is the loss probability per
  segment, the nominal chain gives ``E[segment length]``. The tilt is chosen
  by the cross-entropy method (multilevel: longest segments first, then the
  lost ones), and the run goes on until the 95% interval's relative
  half-width reaches ``rel_halfwidth``.

Crashes at a Poisson rate censor segments (a crashed holder loses nothing
falsely); fixed-time events, partitions, faults, spare workers and a server
with processing time, capacity or stalls are refused with
:class:`UnsupportedScenario` naming the field. Polls and acks are not
simulated: ``requests_per_lease_second`` counts heartbeat requests (claims
included) plus a poll and an ack per lease; and after a loss the next lease
is claimed at once, so on a bursty link whose bad state lets messages through
the engine errs high (``docs/engines.md``, known limitation).
"""

from __future__ import annotations

import copy
import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from ._fast_draws import (
    CHANNEL_SLOTS,
    LEVELS,
    PAUSE_SLOTS,
    Channel,
    ChannelTilt,
    Pauses,
    Tail,
)
from ._fast_scope import UnsupportedScenario, check_one_lease
from .distributions import parse_delay
from .lease import Event, LeaseConfig, LeaseRules, WorkRecord, new_record
from .metrics import LEVEL, EngineResult, Estimate, poisson_rate
from .policy import (
    EndReason,
    HeartbeatPolicy,
    Outcome,
    Result,
    Send,
    Stop,
    classify_status,
    make_policy,
)
from .protocol import ApiError, HeartbeatAnswer, LeaseState, PreconditionFailed, WorkState
from .sim import EPOCH_US, Scenario
from .sim._scenario import Direction

__all__ = ["UnreliableEstimate", "UnsupportedScenario", "estimate"]


class UnreliableEstimate(RuntimeError):
    """The importance-sampling estimate rests on too little: its effective
    sample size is tiny, or no tilted segment ended in a loss."""


# --------------------------------------------------------------------- layout of a segment's counts
_LOG_W, _HEARTBEATS, _REQUESTS = 0, 1, 2
_REQUEST = 3
_ANSWER = _REQUEST + CHANNEL_SLOTS
_PAUSES = _ANSWER + CHANNEL_SLOTS
_SLOTS: Final = _PAUSES + PAUSE_SLOTS

_Z: Final = 1.959963984540054  # two-sided 95% normal quantile
assert abs(LEVEL - 0.95) < 1e-12
_MIN_ESS: Final = 20.0
_RENEWED: Final = "renewed"
_CAUSE_OF: Final = {
    EndReason.LOST.value: "unseen_answer",
    EndReason.ASSUMED_LOST.value: "give_up",
    EndReason.REJECTED.value: "rejection",
}
_CAUSES: Final = ("server_expiry", "unseen_answer", "give_up", "rejection")
_MAX_ATTEMPTS: Final = 100_000
_TIMEOUT: Final = Outcome.TIMEOUT
_OK: Final = Outcome.OK

# cross-entropy method
_CE_BATCH: Final = 1000
_CE_ROUNDS: Final = 8
_CE_RHO: Final = 0.02
_CE_SMOOTH: Final = 0.7
_BATCH: Final = 1000
_PILOT: Final = 2000
_COMMON: Final = 0.02
"""Losses in at least this share of the pilot's segments are not rare: no tilt."""
_CLAIMS: Final = 500
_START_LOSS: Final = 0.2
_MAX_LOSS: Final = 0.95
_MIN_EXIT: Final = 0.02
_MAX_BETA: Final = 0.9


@dataclass
class _Tilt:
    request: ChannelTilt
    answer: ChannelTilt
    pause_rate: float
    """Pauses per second."""
    pause_beta: float = 0.0
    pause_level: int = 0

    def describe(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, channel in (("request", self.request), ("answer", self.answer)):
            out[f"tilt_{name}_loss"] = channel.loss
            out[f"tilt_{name}_burst_p_enter"] = channel.p_enter
            out[f"tilt_{name}_burst_p_exit"] = channel.p_exit
            out[f"tilt_{name}_burst_loss_bad"] = channel.loss_bad
            out[f"tilt_{name}_delay_tail_weight"] = channel.delay_beta
            out[f"tilt_{name}_delay_tail_from_quantile"] = LEVELS[channel.delay_level]
        out["tilt_pauses_per_hour"] = self.pause_rate * 3600
        out["tilt_pause_tail_weight"] = self.pause_beta
        out["tilt_pause_tail_from_quantile"] = LEVELS[self.pause_level]
        return out


def _burst(direction: Direction) -> tuple[float, float, float] | None:
    burst = direction.burst
    if burst is None or burst.p_enter <= 0:  # as the SimPy network: no entry, no burst
        return None
    return (burst.p_enter, burst.p_exit, burst.loss_bad)


def _nominal_channel(direction: Direction) -> ChannelTilt:
    p_enter, p_exit, loss_bad = _burst(direction) or (0.0, 1.0, 1.0)
    return ChannelTilt(direction.loss, p_enter, p_exit, loss_bad)


class _Net:
    """One law of the network and the pauses (nominal or tilted), with its stream."""

    def __init__(self, scenario: Scenario, tilt: _Tilt, rng: random.Random) -> None:
        network = scenario.network
        self.rng = rng
        self.request = Channel(
            parse_delay(network.request.delay),
            network.request.loss,
            _burst(network.request),
            tilt.request,
            _REQUEST,
        )
        self.answer = Channel(
            parse_delay(network.answer.delay),
            network.answer.loss,
            _burst(network.answer),
            tilt.answer,
            _ANSWER,
        )
        pauses = scenario.workers.pauses
        self.pauses = Pauses(
            pauses.rate_per_hour / 3600.0,
            tilt.pause_rate,
            Tail(parse_delay(pauses.duration), tilt.pause_beta, tilt.pause_level, _PAUSES + 2),
            _PAUSES,
            rng,
        )

    def resume(self, t: float, acc: list[float]) -> float:
        return self.pauses.resume(t, acc)


class _Lease:
    """One lease as it stands between two draws: what a branch copies."""

    __slots__ = ("action", "now", "pending", "policy", "record", "seq")

    def __init__(self, policy: HeartbeatPolicy, record: WorkRecord, action: Send, now: float):
        self.policy = policy
        self.record = record
        self.action = action
        self.now = now
        self.seq = 0
        # requests still on their way to the server after their attempt timed out
        self.pending: list[tuple[float, int, str, int | None]] = []


@dataclass
class _Segment:
    start: float
    end: float
    how: str
    acc: list[float]
    expiries: list[float] = field(default_factory=list)


class _Runner:
    """The nominal chain, its tilted branches and their bookkeeping."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        server = scenario.server
        self.config = LeaseConfig(
            server.default_ttl_seconds, server.min_ttl_seconds, server.max_ttl_seconds
        )
        self.rules = LeaseRules(self.config, observer=self._transition)
        workers = scenario.workers
        self.spec = workers.policy
        self.enforce = workers.enforce_deadline
        self.slack = workers.timer_slack_s
        self.crash_rate = workers.crashes.rate_per_hour / 3600.0

        def stream(purpose: str) -> random.Random:
            return random.Random(f"leasekit-fast:{seed}:{purpose}")

        self.policy_rng = stream("policy")
        self.branch_policy_rng = stream("branch-policy")
        self.crash_rng = stream("crashes")
        self.nominal_tilt = _Tilt(
            _nominal_channel(scenario.network.request),
            _nominal_channel(scenario.network.answer),
            workers.pauses.rate_per_hour / 3600.0,
        )
        self.nominal = _Net(scenario, self.nominal_tilt, stream("nominal"))
        self.side = _Net(scenario, self.nominal_tilt, stream("claims"))
        self.branch_rng = stream("branch")
        self.expiries: list[float] = []
        self.heartbeats = 0
        # nominal chain totals
        self.held_s = 0.0
        self.requests = 0
        self.leases = 0
        self.losses = 0
        self.segments = 0
        self.claims = 0
        self.claim_expiries = 0
        self.lease = self._claim(0.0)

    def claim_sample(self, count: int) -> None:
        """``count`` more claims off the chain: server expiries per lease begun."""
        for _ in range(count):
            self._claim(0.0, chain=False)

    # ----------------------------------------------------------------- the server

    def _transition(
        self, record: WorkRecord, event: Event, previous: WorkState, now_us: int
    ) -> None:
        if event is Event.EXPIRE and previous is WorkState.ACTIVE:
            self.expiries.append((now_us - EPOCH_US) / 1e6)

    def _process(
        self, lease: _Lease, t: float, expected: str, desired: int | None, acc: list[float]
    ) -> tuple[int, HeartbeatAnswer | None, LeaseState | None]:
        acc[_REQUESTS] += 1
        now_us = EPOCH_US + round(t * 1e6)
        try:
            return 200, self.rules.heartbeat(lease.record, now_us, expected, desired), None
        except PreconditionFailed as error:
            return 412, None, error.current_state
        except ApiError as error:
            return error.status, None, None

    def _flush(self, lease: _Lease, until: float, acc: list[float]) -> None:
        """The server processes the late requests that arrive by ``until``."""
        pending = lease.pending
        while pending and pending[0][0] <= until:
            t, _seq, expected, desired = heapq.heappop(pending)
            self._process(lease, t, expected, desired, acc)

    def _finish(self, lease: _Lease, acc: list[float]) -> None:
        """The lease has ended at the worker: the server sees what is left in
        flight, then nothing more (a lease it still holds expires)."""
        self._flush(lease, math.inf, acc)
        self.rules.settle(lease.record, EPOCH_US + 10**18)

    # ----------------------------------------------------------------- the worker

    def _attempt(
        self, lease: _Lease, net: _Net, acc: list[float]
    ) -> tuple[Result | None, Send | Stop]:
        """One heartbeat attempt, as the SimPy engine makes it."""
        policy = lease.policy
        enforce = self.enforce
        send = lease.action
        at = policy.due(send, enforce_deadline=enforce)
        if at < lease.now:
            at = lease.now
        at = net.resume(at + self.slack, acc)
        action = policy.sending(send, at, enforce_deadline=enforce)
        if not isinstance(action, Send):
            lease.now = at
            return None, action
        acc[_HEARTBEATS] += 1
        deadline = at + action.timeout_s + self.slack
        expected = action.expected_last_heartbeat
        desired = action.desired_ttl_seconds
        delay = net.request.draw(net.rng, acc)
        if delay is None:
            result = Result(_TIMEOUT, at, net.resume(deadline, acc))
        else:
            arrived = at + delay
            if arrived >= deadline:
                # the worker gives up first; the request still reaches the server
                lease.seq += 1
                heapq.heappush(lease.pending, (arrived, lease.seq, expected, desired))
                result = Result(_TIMEOUT, at, net.resume(deadline, acc))
            else:
                self._flush(lease, arrived, acc)
                status, answer, current = self._process(lease, arrived, expected, desired, acc)
                back = net.answer.draw(net.rng, acc)
                if back is None or arrived + back >= deadline:
                    result = Result(_TIMEOUT, at, net.resume(deadline, acc))
                else:
                    result = Result(
                        classify_status(status),
                        at,
                        net.resume(arrived + back, acc),
                        answer,
                        current,
                        status,
                    )
        lease.now = result.received_at
        return result, policy.observe(result)

    def _segment(self, lease: _Lease, net: _Net, acc: list[float]) -> str:
        """Run to the next observed success (``"renewed"``) or the lease's end
        (its :class:`~leasekit.policy.EndReason` value)."""
        for _ in range(_MAX_ATTEMPTS):
            result, action = self._attempt(lease, net, acc)
            if isinstance(action, Stop):
                return action.reason.value
            lease.action = action
            if result is not None and result.outcome is _OK:
                return _RENEWED
        raise RuntimeError(
            f"a lease went {_MAX_ATTEMPTS} heartbeat attempts without a success or an end "
            "(a policy that never gives up on a network that never answers?)"
        )

    def _new_lease(self, t: float) -> _Lease:
        record = new_record(
            "env_fast",
            "work_fast",
            1,
            EPOCH_US,
            secret="simulated-secret",
            ttl_seconds=self.config.default_ttl_seconds,
        )
        self.rules.ack(record, EPOCH_US + round(t * 1e6))
        policy = make_policy(self.spec, rng=self.policy_rng)
        action = policy.start(t)
        assert isinstance(action, Send), "a policy's first action is a claim"
        return _Lease(policy, record, action, t)

    def _claim(self, t: float, *, chain: bool = True) -> _Lease:
        """A new lease run to its first observed success (on the nominal chain
        unless ``chain`` is false: then on a network of its own, so that the
        chain's channel and pause states stay as they are). Counts the server
        expiries of the tries that never held a lease (a claim applied whose
        answer was lost)."""
        net = self.nominal if chain else self.side
        for _ in range(1000):
            lease = self._new_lease(t)
            net.pauses.reset(t)
            acc = [0.0] * _SLOTS
            self.expiries.clear()
            how = self._segment(lease, net, acc)
            held = how == _RENEWED and lease.policy.held
            if not held:
                self._finish(lease, acc)
                self.claim_expiries += len(self.expiries)
            self.heartbeats += int(acc[_HEARTBEATS])
            if chain:
                self.requests += int(acc[_REQUESTS])
                self.leases += 1
            if held:
                self.claims += 1
                return lease
            t = lease.now
        raise ValueError(
            "no lease could be claimed in 1000 tries: the network loses every claim or its answer"
        )

    # ----------------------------------------------------------------- segments

    def _crash_after(self) -> float:
        return self.crash_rng.expovariate(self.crash_rate) if self.crash_rate > 0 else math.inf

    def branch(self, net: _Net) -> _Segment:
        """A tilted segment from a copy of the nominal chain's current state."""
        source = self.lease
        lease = copy.deepcopy(source, {id(self.policy_rng): self.branch_policy_rng})
        net.request.bad = self.nominal.request.bad
        net.answer.bad = self.nominal.answer.bad
        start = lease.now
        net.pauses.reset(start)
        acc = [0.0] * _SLOTS
        self.expiries.clear()
        how = self._segment(lease, net, acc)
        net.pauses.close(start, acc)
        if how != _RENEWED:
            self._finish(lease, acc)
        self.heartbeats += int(acc[_HEARTBEATS])
        crash = start + self._crash_after()
        if lease.now > crash:
            how = "crash"
        return _Segment(start, lease.now, how, acc, [t for t in self.expiries if t < crash])

    def step(self) -> tuple[float, bool]:
        """The nominal chain's next segment: its held length (seconds) and
        whether it ended in a false loss."""
        lease = self.lease
        start = lease.now
        acc = [0.0] * _SLOTS
        how = self._segment(lease, self.nominal, acc)
        crash = start + self._crash_after()
        lost = False
        if how == _RENEWED and lease.now <= crash:
            length = lease.now - start
        else:
            length = min(lease.now, crash) - start
            lost = lease.now <= crash and how in _CAUSE_OF
            self._finish(lease, acc)
            self.lease = self._claim(min(lease.now, crash))
        self.heartbeats += int(acc[_HEARTBEATS])
        self.requests += int(acc[_REQUESTS])
        self.held_s += length
        self.segments += 1
        self.losses += lost
        return length, lost


# ------------------------------------------------------------------------- cross-entropy


def _initial_tilt(nominal: _Tilt, scenario: Scenario, mean_segment_s: float) -> _Tilt:
    def channel(c: ChannelTilt, delay_spec: str) -> ChannelTilt:
        constant = parse_delay(delay_spec).kind == "const"
        return ChannelTilt(
            loss=max(c.loss, _START_LOSS) if 0 < c.loss < 1 else c.loss,
            p_enter=max(c.p_enter, _START_LOSS) if 0 < c.p_enter < 1 else c.p_enter,
            p_exit=c.p_exit,
            loss_bad=c.loss_bad,
            delay_beta=0.0 if constant else 0.2,
            delay_level=1,
        )

    network = scenario.network
    pauses = scenario.workers.pauses
    rate = nominal.pause_rate
    return _Tilt(
        channel(nominal.request, network.request.delay),
        channel(nominal.answer, network.answer.delay),
        max(rate, 0.5 / mean_segment_s) if rate > 0 else 0.0,
        0.0 if parse_delay(pauses.duration).kind == "const" else 0.5,
        0,
    )


def _ratio(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float | None:
    den = float(np.dot(w, b))
    return float(np.dot(w, a)) / den if den > 0 else None


def _tail_update(
    acc: np.ndarray, w: np.ndarray, index: int, old: tuple[float, int]
) -> tuple[float, int]:
    n = float(np.dot(w, acc[:, index]))
    if n <= 0:
        return old
    best = (0.0, 0, 0.0)  # objective, level, beta: no tilt scores 0
    for k, u0 in enumerate(LEVELS):
        above = float(np.dot(w, acc[:, index + 1 + k]))
        c = 1 / (1 - u0)
        beta = above / n - (n - above) / (n * (c - 1))
        beta = min(max(beta, 0.0), _MAX_BETA)
        if beta <= 0:
            continue
        value = above * math.log1p(beta * (c - 1)) + (n - above) * math.log1p(-beta)
        if value > best[0]:
            best = (value, k, beta)
    _, level, beta = best
    old_beta, old_level = old
    if level == old_level:
        beta = _CE_SMOOTH * beta + (1 - _CE_SMOOTH) * old_beta
    return beta, level


def _ce_update(
    tilt: _Tilt, nominal: _Tilt, acc: np.ndarray, w: np.ndarray, max_pause_rate: float
) -> _Tilt:
    def bern(old: float, nominal_p: float, index: int, low: float, high: float) -> float:
        if nominal_p in (0.0, 1.0):
            return nominal_p
        new = _ratio(acc[:, index + 1], acc[:, index], w)
        if new is None:
            return old
        new = _CE_SMOOTH * new + (1 - _CE_SMOOTH) * old
        return min(max(new, low), high)

    def channel(old: ChannelTilt, nom: ChannelTilt, base: int) -> ChannelTilt:
        beta, level = _tail_update(acc, w, base + 8, (old.delay_beta, old.delay_level))
        return ChannelTilt(
            loss=bern(old.loss, nom.loss, base, nom.loss, max(nom.loss, _MAX_LOSS)),
            p_enter=bern(
                old.p_enter, nom.p_enter, base + 2, nom.p_enter, max(nom.p_enter, _MAX_LOSS)
            ),
            p_exit=bern(old.p_exit, nom.p_exit, base + 4, min(nom.p_exit, _MIN_EXIT), nom.p_exit),
            loss_bad=bern(
                old.loss_bad, nom.loss_bad, base + 6, nom.loss_bad, max(nom.loss_bad, _MAX_LOSS)
            ),
            delay_beta=beta if old.delay_beta > 0 or beta > 0 else 0.0,
            delay_level=level,
        )

    request = channel(tilt.request, nominal.request, _REQUEST)
    answer = channel(tilt.answer, nominal.answer, _ANSWER)
    if tilt.request.delay_beta == 0 and _constant(acc, _REQUEST + 8):
        request.delay_beta = 0.0
    if tilt.answer.delay_beta == 0 and _constant(acc, _ANSWER + 8):
        answer.delay_beta = 0.0
    pause_rate = tilt.pause_rate
    if nominal.pause_rate > 0:
        new = _ratio(acc[:, _PAUSES], acc[:, _PAUSES + 1], w)
        if new is not None:
            new = _CE_SMOOTH * new + (1 - _CE_SMOOTH) * pause_rate
            pause_rate = min(max(new, nominal.pause_rate), max(nominal.pause_rate, max_pause_rate))
    pause_beta, pause_level = _tail_update(acc, w, _PAUSES + 2, (tilt.pause_beta, tilt.pause_level))
    if tilt.pause_beta == 0:
        pause_beta = 0.0
    return _Tilt(request, answer, pause_rate, pause_beta, pause_level)


def _constant(acc: np.ndarray, index: int) -> bool:
    """No draws counted there: a constant law (nothing to tilt)."""
    return not acc[:, index].any()


# ------------------------------------------------------------------------- the estimate


@dataclass
class _Sample:
    loss: list[float] = field(default_factory=list)
    """1{false loss} * W per branch."""
    causes: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in _CAUSES})
    expiries: list[float] = field(default_factory=list)
    length: list[float] = field(default_factory=list)
    """The paired nominal segment's held length, seconds."""

    def add(self, segment: _Segment, length: float) -> None:
        weight = math.exp(segment.acc[_LOG_W])
        lost = segment.how in _CAUSE_OF
        cause = ""
        if lost:
            cause = (
                "server_expiry"
                if segment.expiries and segment.expiries[0] <= segment.end
                else _CAUSE_OF[segment.how]
            )
        self.loss.append(weight if lost else 0.0)
        for name, values in self.causes.items():
            values.append(weight if name == cause else 0.0)
        self.expiries.append(weight * len(segment.expiries))
        self.length.append(length)


def _per_hour(values: list[float], lengths: np.ndarray) -> tuple[float, float, float]:
    """Rate per lease-hour of ``values`` per segment over mean length, with its
    95% half-width (delta method on the paired means)."""
    x = np.asarray(values)
    n = x.size
    mean_x, mean_y = float(x.mean()), float(lengths.mean())
    rate = mean_x / mean_y
    if n < 2:
        return rate * 3600, math.nan, math.nan
    cov = np.cov(x, lengths)
    variance = (cov[0, 0] - 2 * rate * cov[0, 1] + rate**2 * cov[1, 1]) / (n * mean_y**2)
    half = _Z * math.sqrt(max(float(variance), 0.0))
    return rate * 3600, max(rate - half, 0.0) * 3600, (rate + half) * 3600


def _tiltable(scenario: Scenario) -> bool:
    network, pauses = scenario.network, scenario.workers.pauses
    random_parts = [
        0 < network.request.loss < 1,
        0 < network.answer.loss < 1,
        _burst(network.request) is not None,
        _burst(network.answer) is not None,
        parse_delay(network.request.delay).kind != "const",
        parse_delay(network.answer.delay).kind != "const",
        pauses.rate_per_hour > 0,
    ]
    return any(random_parts)


def estimate(
    scenario: Scenario,
    *,
    seed: int | None = None,
    rel_halfwidth: float = 0.1,
    max_seconds: float = 60.0,
    max_cycles: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> EngineResult:
    """False-loss and server-expiry rates per lease-hour of ``scenario``'s
    leases, by importance sampling (see the module docstring).

    Runs until the 95% interval of ``false_losses_per_lease_hour`` is within
    ``rel_halfwidth`` of the estimate (relative half-width), checked every
    1,000 tilted segments, or until ``max_seconds`` of wall time (then the
    result depends on the machine's speed: ``diagnostics["stopped_by_time"]``
    is 1). ``max_cycles`` replaces the time limit by a budget of tilted
    segments (cycles), so that a budgeted estimate is the same on every
    machine: studies use it. ``seed`` defaults to the scenario's; the same
    seed gives the same numbers. ``progress`` gets the fraction done.

    ``workers.count`` and ``duration_s`` only size the brute-force run the
    scenario describes (``lease_hours``, and the diagnostics comparing costs).

    Raises :class:`UnsupportedScenario` naming a field it cannot model, and
    :class:`UnreliableEstimate` when the effective sample size of the lost
    segments is below 20 (or none was lost though the network is random).
    """
    began = time.perf_counter()
    if not 0 < rel_halfwidth < 1:
        raise ValueError(f"rel_halfwidth must be in (0, 1), got {rel_halfwidth}")
    if max_cycles is not None and max_cycles < 2 * _BATCH:
        raise ValueError(f"max_cycles must be at least {2 * _BATCH}, got {max_cycles}")
    check_one_lease(scenario, "fast")
    try:
        make_policy(scenario.workers.policy)
    except ValueError as error:
        raise UnsupportedScenario("workers.policy", str(error)) from None
    seed = scenario.seed if seed is None else seed
    runner = _Runner(scenario, seed)

    def elapsed() -> float:
        return time.perf_counter() - began

    def out_of_time(fraction: float = 1.0) -> bool:
        # a cycle budget makes the stopping point independent of the machine
        return max_cycles is None and elapsed() > max_seconds * fraction

    done = [0.0]

    def report(fraction: float) -> None:
        # never backwards: the work still needed is re-estimated as the interval narrows
        if progress is not None and fraction > done[0]:
            done[0] = fraction
            progress(fraction)

    # A nominal pilot: the scale of a segment (for the pauses' first tilt), and
    # whether losses are rare enough for a tilt to pay (a needless tilt only
    # adds the variance of its weights).
    pilot = [runner.step() for _ in range(_PILOT)]
    mean_segment_s = max(float(np.mean([length for length, _ in pilot])), 1e-9)
    common = sum(lost for _, lost in pilot) >= _COMMON * _PILOT
    runner.claim_sample(_CLAIMS)
    nominal = runner.nominal_tilt
    tilting = _tiltable(scenario) and not common
    tilt = _initial_tilt(nominal, scenario, mean_segment_s) if tilting else nominal
    max_pause_rate = 10.0 / mean_segment_s
    rounds = 0
    if tilting:
        for rounds in range(1, _CE_ROUNDS + 1):
            net = _Net(scenario, tilt, runner.branch_rng)
            segments = []
            for _ in range(_CE_BATCH):
                segments.append(runner.branch(net))
                runner.step()
            acc = np.array([s.acc for s in segments])
            lost = np.array([s.how in _CAUSE_OF for s in segments])
            log_w = acc[:, _LOG_W]
            w = np.exp(log_w - log_w.max())
            final = lost.sum() >= _CE_RHO * len(segments)
            if final:
                elite = lost
            else:
                score = np.array(
                    [math.inf if s.how in _CAUSE_OF else s.end - s.start for s in segments]
                )
                threshold = np.quantile(score, 1 - _CE_RHO)
                elite = score >= threshold
            updated = _ce_update(tilt, nominal, acc[elite], w[elite], max_pause_rate)
            change = _change(tilt, updated)
            tilt = updated
            report(min(0.2, 0.2 * rounds / _CE_ROUNDS))
            if final and change < 0.1:
                break
            if out_of_time(1 / 3):
                break

    net = _Net(scenario, tilt, runner.branch_rng)
    sample = _Sample()
    stopped_by_time = False
    while True:
        for _ in range(_BATCH):
            segment = runner.branch(net)
            length, _lost = runner.step()
            sample.add(segment, length)
        lengths = np.asarray(sample.length)
        value, _low, high = _per_hour(sample.loss, lengths)
        achieved = (high - value) / value if value > 0 else math.inf
        n = len(sample.loss)
        needed = n * (achieved / rel_halfwidth) ** 2 if math.isfinite(achieved) else 2 * n
        report(min(0.99, max(0.2 + 0.8 * n / max(needed, n), elapsed() / max_seconds)))
        if achieved <= rel_halfwidth and n >= 2 * _BATCH:
            break
        if not _tiltable(scenario) and n >= 4 * _BATCH:
            break
        if max_cycles is not None and n >= max_cycles:
            break
        if out_of_time():
            stopped_by_time = True
            break
    result = _result(scenario, runner, sample, tilt, rounds, stopped_by_time, rel_halfwidth)
    result.wall_seconds = elapsed()
    report(1.0)
    return result


def _with_claims(
    expiries: Estimate, losses: Estimate, runner: _Runner, crashes_per_hour: float
) -> Estimate:
    """Add the expiries of leases never held: a claim the server applied whose
    answer was lost (the worker gives up that claim; the lease expires).
    They come once per lease begun, and leases begin as others end (false
    losses and crashes), so per lease-hour: expiries per lease begun times
    leases begun per lease-hour."""
    if runner.claims == 0 or runner.claim_expiries == 0:
        return expiries
    per_lease = runner.claim_expiries / runner.claims
    per_lease_half = _Z * math.sqrt(runner.claim_expiries) / runner.claims
    begun = losses.value + crashes_per_hour
    value = expiries.value + per_lease * begun
    half = math.sqrt(
        (expiries.high - expiries.value) ** 2
        + (per_lease_half * begun) ** 2
        + (per_lease * (losses.high - losses.value)) ** 2
    )
    return Estimate(value, max(value - half, 0.0), value + half, expiries.method, expiries.n)


def _change(old: _Tilt, new: _Tilt) -> float:
    a = np.array(list(old.describe().values()))
    b = np.array(list(new.describe().values()))
    scale = np.maximum(np.abs(a), 1e-12)
    return float(np.max(np.abs(a - b) / scale))


def _result(
    scenario: Scenario,
    runner: _Runner,
    sample: _Sample,
    tilt: _Tilt,
    rounds: int,
    stopped_by_time: bool,
    rel_halfwidth: float,
) -> EngineResult:
    lengths = np.asarray(sample.length)
    losses = np.asarray(sample.loss)
    n = losses.size
    total = float(losses.sum())
    ess = total**2 / float(np.dot(losses, losses)) if total > 0 else 0.0
    metrics: dict[str, Estimate] = {}
    if total == 0:
        if _tiltable(scenario):
            raise UnreliableEstimate(
                f"no tilted segment of {n} ended in a false loss: the rate is too small for "
                "this tilt to find in the time given (raise max_seconds)"
            )
        # Nothing random to tilt: plain segments, and a Poisson bound on zero events.
        bound = poisson_rate(0, (runner.held_s + float(lengths.sum())) / 3600)
        for name in ("false_losses_per_lease_hour", "server_expiries_per_lease_hour"):
            metrics[name] = bound
        for cause in _CAUSES:
            metrics[f"false_losses_{cause}_per_lease_hour"] = bound
    else:
        if ess < _MIN_ESS:
            raise UnreliableEstimate(
                f"the {int(np.count_nonzero(losses))} lost segments of {n} have an effective "
                f"sample size of {ess:.1f} (< {_MIN_ESS:g}): their weights are too uneven for "
                "an interval (the tilt is too strong or the run too short; raise max_seconds)"
            )

        def estimate_of(values: list[float]) -> Estimate:
            value, low, high = _per_hour(values, lengths)
            return Estimate(value, low, high, "importance_sampling", n)

        metrics["false_losses_per_lease_hour"] = estimate_of(sample.loss)
        for cause, values in sample.causes.items():
            metrics[f"false_losses_{cause}_per_lease_hour"] = estimate_of(values)
        metrics["server_expiries_per_lease_hour"] = _with_claims(
            estimate_of(sample.expiries),
            metrics["false_losses_per_lease_hour"],
            runner,
            scenario.workers.crashes.rate_per_hour,
        )
    held_s = runner.held_s
    metrics["requests_per_lease_second"] = poisson_rate(runner.requests + 2 * runner.leases, held_s)
    workers = scenario.workers
    lease_hours = workers.count * (scenario.duration_s - scenario.warmup_s) / 3600
    metrics["lease_hours"] = Estimate.exact(lease_hours)
    rate = metrics["false_losses_per_lease_hour"]
    p = float(losses.mean())
    variance = float(losses.var(ddof=1)) if n > 1 else math.nan
    achieved = (rate.high - rate.value) / rate.value if rate.value > 0 else math.nan
    # Brute force needs (z / r)^2 losses for a relative half-width r.
    target = achieved if math.isfinite(achieved) and achieved > 0 else rel_halfwidth
    brute_hours = (_Z / target) ** 2 / rate.value if rate.value > 0 else math.inf
    diagnostics = {
        "cycles": float(n),
        "nominal_segments": float(runner.segments),
        "effective_sample_size": ess,
        "loss_probability_per_cycle": p,
        "mean_cycle_seconds": float(lengths.mean()),
        "variance_reduction_factor": p * (1 - p) / variance if variance > 0 else math.nan,
        "relative_halfwidth": achieved,
        "brute_force_lease_hours_for_same_precision": brute_hours,
        "simulated_lease_hours": (held_s + float(lengths.sum())) / 3600,
        "nominal_false_losses": float(runner.losses),
        "expected_false_losses_in_scenario": rate.value * lease_hours,
        "cross_entropy_rounds": float(rounds),
        "stopped_by_time": float(stopped_by_time),
        **tilt.describe(),
    }
    # JSON has no inf or nan: a diagnostic that is not a number is left out
    finite = {name: value for name, value in diagnostics.items() if math.isfinite(value)}
    return EngineResult("fast", metrics, heartbeats_sent=runner.heartbeats, diagnostics=finite)
