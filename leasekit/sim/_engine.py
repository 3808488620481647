"""The SimPy engine: one server running :class:`~leasekit.lease.LeaseBook`,
workers running :mod:`leasekit.policy` policies, a pluggable network.

No rule of the protocol or of a policy lives here: the server answers with
whatever ``LeaseBook`` says at ``now_us = epoch + round(env.now * 1e6)``, and
a worker does whatever its policy's :class:`~leasekit.policy.Send` or
:class:`~leasekit.policy.Stop` says, reporting each attempt as a
:class:`~leasekit.policy.Result` on ``env.now``.

Written for speed:

* No process per message and none per worker: each stage of a message (its
  arrival or processing at the server, its answer or its timeout at the
  worker) is one SimPy timeout whose callback does the work.
* A send is not an event. Pauses and crashes are drawn before the run, so
  when a policy asks for a send at ``at``, the engine already knows whether
  the worker will be paused then (the send slips to the pause's end) or dead
  (nothing is sent), and schedules the message's arrival at once.
* Lease deadlines are checked lazily by ``LeaseBook`` itself.
* Monitoring is a set of callbacks into :class:`~leasekit.sim._monitor.Monitor`,
  among them the ``LeaseBook`` observer, which sees every transition
  (lazy expiries with their real expiry time).
"""

from __future__ import annotations

import bisect
import gc
import heapq
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import simpy
from simpy.events import NORMAL

from ..distributions import parse_delay
from ..lease import Event, LeaseBook, LeaseConfig, WorkRecord
from ..policy import (
    EndReason,
    HeartbeatPolicy,
    Outcome,
    Result,
    Send,
    Stop,
    classify_status,
    make_policy,
)
from ..protocol import ApiError, PreconditionFailed, WorkState
from ._monitor import Monitor, Tenure, WorkerLease
from ._network import (
    NetworkFactory,
    NetworkModel,
    ScenarioNetwork,
    Streams,
    merge_spans,
    windows_by_worker,
)
from ._scenario import Scenario

EPOCH_US: Final = 1_800_000_000 * 1_000_000
"""Simulated time 0 on the server's clock: 2027-01-15T08:00:00Z."""
ENVIRONMENT_ID: Final = "env_sim"

_HEARTBEAT, _POLL, _ACK = "heartbeat", "poll", "ack"
_NORMAL: Final = NORMAL
# Enum members and module attributes read per message, as constants: on
# Python 3.11 reading ``Event.RENEW`` goes through EnumType's attribute hook
# (~150 ns a read), and ``math.nan`` is a module attribute lookup.
_TIMEOUT: Final = Outcome.TIMEOUT
_RENEW: Final = Event.RENEW
_NAN: Final = math.nan
_INF: Final = math.inf
_OUTCOME_OF: dict[int, Outcome] = {}


def _outcome(status: int) -> Outcome:
    outcome = _OUTCOME_OF.get(status)
    if outcome is None:
        outcome = _OUTCOME_OF[status] = classify_status(status)
    return outcome


class Attempt:
    """One request and what became of it (times in simulated seconds).

    It is its own SimPy event (``callbacks``, ``_ok``) for its processing at
    the server, so a heartbeat costs one scheduled event and no allocation
    besides this object.
    """

    __slots__ = (
        "_ok",
        "answer",
        "answered_s",
        "arrived_s",
        "callbacks",
        "current_state",
        "deadline_s",
        "desired",
        "expected",
        "gen",
        "item",
        "kind",
        "lost",
        "number",
        "processed_s",
        "repolled",
        "seen_s",
        "sent_s",
        "status",
        "timed_out",
        "work_id",
        "worker",
    )

    def __init__(
        self,
        worker: _Worker,
        kind: str,
        sent_s: float,
        timeout_s: float,
        number: int = 0,
        expected: str | None = None,
        desired: int | None = None,
    ) -> None:
        self.worker = worker
        self.gen = worker.gen
        self.kind = kind
        self.sent_s = sent_s
        self.deadline_s = sent_s + timeout_s
        self.work_id = worker.work_id
        self.number = number
        self.expected = expected
        self.desired = desired
        self.arrived_s = _NAN
        self.processed_s = _NAN
        self.answered_s = _NAN
        self.seen_s = _NAN
        self.status: int | None = None
        self.answer: Any = None
        self.current_state: Any = None
        self.item: str | None = None
        self.lost = ""
        self.timed_out = False
        self.repolled = False
        self._ok = True
        self.callbacks: list[Callable[[Any], None]] | None = None


class _Call:
    """A bare SimPy event: at its time, ``callback(self)``; ``value`` rides along."""

    __slots__ = ("_ok", "callbacks", "value")

    def __init__(self, callback: Callable[[Any], None], value: Any) -> None:
        self._ok = True
        self.callbacks = [callback]
        self.value = value


class _Worker:
    __slots__ = (
        "alive",
        "crashes_s",
        "gen",
        "index",
        "lease",
        "name",
        "next_crash_s",
        "pause_ends",
        "pause_starts",
        "policy",
        "poll_failures",
        "rng",
        "tenure",
        "work_id",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"w{index}"
        self.gen = 0
        self.alive = True
        self.policy: HeartbeatPolicy | None = None
        self.work_id = ""
        self.lease: WorkerLease | None = None
        self.tenure: Tenure | None = None
        self.poll_failures = 0
        self.pause_starts: list[float] = []
        self.pause_ends: list[float] = []
        self.crashes_s: list[float] = []
        self.next_crash_s = math.inf
        self.rng: Any = None


def _poisson_times(rng: Any, rate_per_hour: float, horizon_s: float) -> list[float]:
    times: list[float] = []
    if rate_per_hour <= 0:
        return times
    t = 0.0
    while True:
        t += rng.expovariate(rate_per_hour / 3600.0)
        if t >= horizon_s:
            return times
        times.append(t)


class Engine:
    """One run of a scenario with one seed. Build, :meth:`run`, read ``monitor``."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        network: NetworkFactory | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.env = simpy.Environment()
        # Attempts and bare calls are scheduled as events: SimPy only needs
        # ``callbacks`` and ``_ok`` on them.
        self._schedule: Callable[[Any, Any, float], None] = self.env.schedule
        self.streams = streams = Streams(seed)
        self.network: NetworkModel = (network or ScenarioNetwork)(scenario, streams)
        self.monitor = Monitor(scenario)
        # the monitor's callbacks on the hot path are bare list appends
        self._log_attempt = self.monitor.attempts.append
        self._log_request = self.monitor.requests_s.append
        self._progress = progress
        server = scenario.server
        self.book = LeaseBook(
            LeaseConfig(server.default_ttl_seconds, server.min_ttl_seconds, server.max_ttl_seconds),
            observer=self._on_transition,
            secrets_=lambda: "simulated-secret",
        )
        self.book.add_environment(ENVIRONMENT_ID)
        for i in range(scenario.workers.items):
            self.book.enqueue(ENVIRONMENT_ID, EPOCH_US, work_id=f"work_{i:05d}")
        self._acting: _Worker | None = None
        self._end_s = scenario.duration_s
        self._heartbeats_sent = 0
        self._request_delay = self.network.request_delay
        self._answer_delay = self.network.answer_delay
        # A lossless constant delay takes no draw: no call per message either.
        self._fixed_request: float | None = None
        self._fixed_answer: float | None = None
        if isinstance(self.network, ScenarioNetwork):
            self._fixed_request, self._fixed_answer = self.network.fixed_delays()
        # server
        self._processing = parse_delay(server.processing)
        self._server_rng = streams.rng("server")
        stall_starts, stall_ends = windows_by_worker(server.stalls, 1)[0]
        self._stall_starts = stall_starts
        self._stall_ends = stall_ends
        self._direct = (
            server.capacity == 0
            and not stall_starts
            and self._processing.kind == "const"
            and self._processing.params[0] == 0
        )
        self._free_at = [0.0] * server.capacity  # heap: when each server slot frees up
        self._waiting: deque[float] = deque()  # start times of queued requests, ascending
        # SimPy reads an event's callbacks and never changes the list: share them
        self._process_stage: list[Callable[[Any], None]] = [self._on_process]
        self._first_stage: list[Callable[[Any], None]] = [
            self._on_process if self._direct else self._on_arrival
        ]
        # workers
        workers_config = scenario.workers
        self._policy_spec = workers_config.policy
        self._poll_wait = parse_delay(workers_config.empty_poll_wait)
        self._request_timeout_s = workers_config.request_timeout_s
        self._slack_s = workers_config.timer_slack_s
        self._enforce_deadline = workers_config.enforce_deadline
        restart = workers_config.crashes.restart_after
        self._restart_after = parse_delay(restart) if restart is not None else None
        pauses = windows_by_worker(workers_config.pauses.schedule, workers_config.count)
        pause_duration = parse_delay(workers_config.pauses.duration)
        horizon = scenario.duration_s
        self.workers: list[_Worker] = []
        for i in range(workers_config.count):
            worker = _Worker(i)
            worker.rng = streams.rng(f"worker.{i}")
            spans = list(zip(*pauses[i], strict=True))
            pause_rng = streams.rng(f"pauses.{i}")
            for start in _poisson_times(pause_rng, workers_config.pauses.rate_per_hour, horizon):
                spans.append((start, start + pause_duration.sample(pause_rng)))
            if spans:
                worker.pause_starts, worker.pause_ends = merge_spans(spans)
            crash_rng = streams.rng(f"crashes.{i}")
            crashes = _poisson_times(crash_rng, workers_config.crashes.rate_per_hour, horizon)
            for moment in workers_config.crashes.schedule:
                if not moment.workers or i in moment.workers:
                    crashes.append(moment.at_s)
            worker.crashes_s = sorted(t for t in crashes if t < horizon)
            worker.next_crash_s = worker.crashes_s[0] if worker.crashes_s else math.inf
            self.workers.append(worker)
            self.monitor.pauses.append((worker.pause_starts, worker.pause_ends))
        self._restart_rng = streams.rng("restarts")
        start_rng = streams.rng("starts")
        for worker in self.workers:
            self._at(start_rng.uniform(0, workers_config.start_spread_s), self._on_start, worker)
            for t in worker.crashes_s:
                self._at(t, self._on_crash, worker)

    # ------------------------------------------------------------------ plumbing

    def _at(self, t: float, callback: Callable[[Any], None], value: Any) -> None:
        """Call ``callback(event)`` at simulated time ``t``; ``event.value`` is ``value``."""
        delay = t - self.env._now
        self._schedule(_Call(callback, value), _NORMAL, delay if delay > 0 else 0.0)

    @staticmethod
    def _resume(worker: _Worker, t: float) -> float:
        """``t``, or the end of the pause ``t`` falls in: a paused worker's timers fire late."""
        starts = worker.pause_starts
        if not starts:
            return t
        i = bisect.bisect_right(starts, t) - 1
        if i >= 0 and t < worker.pause_ends[i]:
            return worker.pause_ends[i]
        return t

    def run(self) -> Monitor:
        """Run to ``duration_s``, settle every lease, and return the monitor."""
        duration = self.scenario.duration_s
        progress = self._progress
        if progress is not None:
            for k in range(1, 100):
                self._at(k * duration / 100, lambda call: progress(call.value), k / 100)
        # The run allocates an object per message and keeps it for the log;
        # the cyclic collector would walk them all again and again for no
        # garbage (the engine makes no short-lived cycles).
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.env.run(until=duration)
        finally:
            if collecting:
                if gc.get_freeze_count() == 0:
                    # What the run made lives as long as the monitor: hand it to
                    # the oldest generation at once (freeze, then unfreeze into
                    # it) rather than have the next collections walk it all as
                    # young objects, twice (~0.3 s for a million heartbeats).
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()
        end_us = EPOCH_US + round(duration * 1e6)
        # Lazy expiries that are due but untouched happen now, at their real times.
        for record in list(self.book.records(ENVIRONMENT_ID)):
            self.book.record(ENVIRONMENT_ID, record.work_id, end_us)
        for worker in self.workers:
            if worker.lease is not None:
                self.monitor.lease_ended(worker.lease, duration, "running")
                worker.lease = None
        self.monitor.heartbeats_sent = self._heartbeats_sent
        if progress is not None:
            progress(1.0)
        return self.monitor

    # ------------------------------------------------------------------ requests

    def _send(self, attempt: Attempt) -> None:
        """Put a request on the wire at ``attempt.sent_s`` (now or later)."""
        worker = attempt.worker
        sent_s = attempt.sent_s
        if sent_s >= worker.next_crash_s or sent_s >= self._end_s:
            return  # dead by then (its crash event takes over), or after the run
        if attempt.kind is _HEARTBEAT:
            self._heartbeats_sent += 1
        delay = self._fixed_request
        if delay is None:
            delay = self._request_delay(worker.index, attempt.kind, sent_s)
            if delay is None:
                attempt.lost = "request"
                attempt.timed_out = True
                self._at(self._resume(worker, attempt.deadline_s), self._on_timeout, attempt)
                return
        arrived_s = attempt.arrived_s = sent_s + delay
        if arrived_s >= attempt.deadline_s:
            # The worker gives up first; the request still reaches the server.
            attempt.timed_out = True
            self._at(self._resume(worker, attempt.deadline_s), self._on_timeout, attempt)
        attempt.callbacks = self._first_stage
        delay = arrived_s - self.env._now
        self._schedule(attempt, _NORMAL, delay if delay > 0 else 0.0)

    def _send_heartbeat(self, worker: _Worker, send: Send, now: float) -> None:
        slack = self._slack_s
        policy = worker.policy
        assert policy is not None
        enforce = self._enforce_deadline
        # When the worker really sends: at the policy's due time (the local
        # deadline at the latest), its timers ``slack`` late, after any pause.
        at = policy.due(send, enforce_deadline=enforce)
        if at < now:
            at = now
        at += slack
        if worker.pause_starts:
            at = self._resume(worker, at)
        if at >= worker.next_crash_s or at >= self._end_s:
            return  # dead by then (its crash event takes over), or after the run
        action = policy.sending(send, at, enforce_deadline=enforce)
        if action.__class__ is not Send:
            self._end_lease(worker, at, EndReason.ASSUMED_LOST.value)
            return
        send = action
        attempt = Attempt(
            worker,
            _HEARTBEAT,
            at,
            send.timeout_s + slack,
            send.attempt,
            send.expected_last_heartbeat,
            send.desired_ttl_seconds,
        )
        self._send(attempt)

    def _poll(self, worker: _Worker, at: float) -> None:
        worker.work_id = ""
        self._send(Attempt(worker, _POLL, self._resume(worker, at), self._request_timeout_s))

    # ------------------------------------------------------------------ server

    def _on_arrival(self, attempt: Attempt) -> None:
        """A request reaches a server with processing time, capacity or stalls."""
        now = self.env._now
        start = now
        if self._stall_starts:
            i = bisect.bisect_right(self._stall_starts, now) - 1
            if i >= 0 and now < self._stall_ends[i]:
                start = self._stall_ends[i]
        server = self.scenario.server
        service = self._processing.sample(self._server_rng)
        if server.capacity:
            waiting = self._waiting
            while waiting and waiting[0] <= now:
                waiting.popleft()
            start = max(start, self._free_at[0])
            if start > now and len(waiting) >= server.queue_limit:
                attempt.processed_s = now
                attempt.status = server.overload_status
                self._log_request(now)
                self._answer(attempt)
                return
            heapq.heapreplace(self._free_at, start + service)
            if start > now:
                waiting.append(start)
        done = start + service
        if done >= attempt.deadline_s and not attempt.timed_out:
            attempt.timed_out = True
            self._at(self._resume(attempt.worker, attempt.deadline_s), self._on_timeout, attempt)
        attempt.callbacks = self._process_stage
        self._schedule(attempt, _NORMAL, done - now)

    def _on_process(self, attempt: Attempt) -> None:
        """The server applies a request to the ``LeaseBook`` now."""
        now = self.env._now
        now_us = EPOCH_US + round(now * 1e6)
        attempt.processed_s = now
        kind = attempt.kind
        worker = attempt.worker
        # A request still in flight when its sender crashed acts for nobody alive.
        self._acting = worker if attempt.gen == worker.gen else None
        if kind is _HEARTBEAT:
            try:
                attempt.answer = self.book.heartbeat(
                    ENVIRONMENT_ID, attempt.work_id, now_us, attempt.expected, attempt.desired
                )
                attempt.status = 200
                # The log keeps the attempt, not the value it echoed: let the
                # (previous) heartbeat's text go once nothing else holds it.
                attempt.expected = None
            except PreconditionFailed as error:
                attempt.status = 412
                attempt.current_state = error.current_state
            except ApiError as error:
                attempt.status = error.status
            self._log_request(now)
            self._answer(attempt)
            return
        if kind is _POLL:
            record = self.book.poll(ENVIRONMENT_ID, now_us, worker_id=attempt.worker.name)
            long_poll_s = self.scenario.server.long_poll_s
            if record is None and long_poll_s > 0 and not attempt.repolled:
                # A long poll: hold the request and look once more when it ends.
                attempt.repolled = True
                self._log_request(now)
                attempt.callbacks = self._process_stage
                self._schedule(attempt, _NORMAL, long_poll_s)
                return
            attempt.status = 200
            attempt.item = record.work_id if record is not None else None
        else:
            try:
                self.book.ack(ENVIRONMENT_ID, attempt.work_id, now_us)
                attempt.status = 200
            except ApiError as error:
                attempt.status = error.status
        if not attempt.repolled:
            self._log_request(now)
        self._answer(attempt)

    def _answer(self, attempt: Attempt) -> None:
        """Send the answer back. The worker's reaction is computed at once,
        as of the answer's arrival: nothing else can touch this worker in
        between (its pauses and crashes are known), so no event is needed."""
        if attempt.timed_out:
            return  # the worker stopped waiting; its timeout is scheduled
        worker = attempt.worker
        now = self.env._now
        delay = self._fixed_answer
        if delay is None:
            delay = self._answer_delay(worker.index, attempt.kind, now)
            if delay is None:
                attempt.lost = "answer"
                attempt.timed_out = True
                self._deliver(attempt, self._resume(worker, max(attempt.deadline_s, now)), True)
                return
        answered_s = attempt.answered_s = now + delay
        if answered_s >= attempt.deadline_s:
            attempt.timed_out = True
            self._deliver(attempt, self._resume(worker, max(attempt.deadline_s, now)), True)
            return
        if worker.pause_starts:
            answered_s = self._resume(worker, answered_s)
        self._deliver(attempt, answered_s, False)

    def _on_transition(
        self, record: WorkRecord, event: Event, previous: WorkState, now_us: int
    ) -> None:
        """The ``LeaseBook`` observer: every transition, lazy expiries at their real time."""
        if event is _RENEW:
            return  # the attempt log has it; keep the hot path lean
        self.monitor.transition(record, event, previous, (now_us - EPOCH_US) / 1e6, self._acting)

    # ------------------------------------------------------------------ workers

    def _on_timeout(self, call: _Call) -> None:
        attempt: Attempt = call.value
        self._deliver(attempt, self.env._now, True)

    def _deliver(self, attempt: Attempt, now: float, timed_out: bool) -> None:
        """The worker learns at ``now`` (>= the current time) how an attempt ended."""
        worker = attempt.worker
        if attempt.gen != worker.gen or now >= worker.next_crash_s or now >= self._end_s:
            return  # it crashed (or will have) before then, or the run is over
        attempt.seen_s = now
        attempt.timed_out = timed_out
        self._log_attempt(attempt)
        kind = attempt.kind
        if kind is _HEARTBEAT:
            if timed_out:
                result = Result(_TIMEOUT, attempt.sent_s, now)
            else:
                status = attempt.status
                assert status is not None
                result = Result(
                    _OUTCOME_OF.get(status) or _outcome(status),
                    attempt.sent_s,
                    now,
                    attempt.answer,
                    attempt.current_state,
                    status,
                )
                # The log keeps the attempt, not its answer: free it now, for
                # the next heartbeat's answer to reuse (a smaller, warmer heap).
                attempt.answer = None
            policy = worker.policy
            assert policy is not None
            was_held = policy.held
            action = policy.observe(result)
            if action.__class__ is Send:
                if not was_held and policy.held:
                    worker.lease = self.monitor.lease_started(
                        worker.index, worker.work_id, worker.tenure, now
                    )
                self._send_heartbeat(worker, action, now)  # type: ignore[arg-type,unused-ignore]
            else:
                self._stopped(worker, action, was_held, now)  # type: ignore[arg-type,unused-ignore]
        elif timed_out or (attempt.status != 200 and kind is _POLL):
            self._poll_failed(worker, now)
        elif kind is _POLL:
            worker.poll_failures = 0
            if attempt.item is None:
                self._poll(worker, now + self._poll_wait.sample(worker.rng))
            else:
                worker.work_id = attempt.item
                self._send(Attempt(worker, _ACK, now, self._request_timeout_s))
        elif attempt.status == 200:
            self._begin_lease(worker, now)
        elif attempt.status == 409:
            self._poll(worker, now)  # someone else has it: look for other work
        else:
            self._poll_failed(worker, now)

    def _poll_failed(self, worker: _Worker, now: float) -> None:
        # The SDK worker loop's backoff after a failed poll: min(60, 2**n) + U(0, 1) s.
        worker.poll_failures += 1
        backoff = min(60.0, 2.0**worker.poll_failures) + worker.rng.random()
        self._poll(worker, now + backoff)

    def _begin_lease(self, worker: _Worker, now: float) -> None:
        policy = worker.policy = make_policy(self._policy_spec, rng=worker.rng)
        action = policy.start(now)
        if isinstance(action, Send):
            self._send_heartbeat(worker, action, now)
        else:  # pragma: no cover - no policy stops before its first attempt
            self._poll(worker, now)

    def _stopped(self, worker: _Worker, action: Stop, was_held: bool, now: float) -> None:
        if worker.lease is None and (was_held or action.reason is EndReason.SHUTDOWN):
            # Held for an instant (a shutdown on the first success).
            worker.lease = self.monitor.lease_started(
                worker.index, worker.work_id, worker.tenure, now
            )
        self._end_lease(worker, now, action.reason.value)

    def _end_lease(self, worker: _Worker, now: float, reason: str) -> None:
        """The worker stops heartbeating at ``now`` and looks for work again."""
        if worker.lease is not None:
            self.monitor.lease_ended(worker.lease, now, reason)
            worker.lease = None
        worker.policy = None
        self._poll(worker, now)

    def _on_start(self, call: _Call) -> None:
        self._poll(call.value, self.env._now)

    def _on_crash(self, call: _Call) -> None:
        worker: _Worker = call.value
        if not worker.alive:
            return
        now = self.env._now
        worker.alive = False
        worker.gen += 1
        worker.next_crash_s = math.inf
        if worker.lease is not None:
            self.monitor.lease_ended(worker.lease, now, "crash")
            worker.lease = None
        self.monitor.crashed(worker.index, now, worker.tenure)
        worker.policy = None
        worker.tenure = None
        if self._restart_after is not None:
            self._at(now + self._restart_after.sample(self._restart_rng), self._on_restart, worker)

    def _on_restart(self, call: _Call) -> None:
        worker: _Worker = call.value
        now = self.env._now
        worker.alive = True
        worker.poll_failures = 0
        later = worker.crashes_s[bisect.bisect_right(worker.crashes_s, now) :]
        worker.next_crash_s = later[0] if later else math.inf
        self.monitor.restarted(worker.index, now)
        self._poll(worker, now)
