"""The SimPy engine: one server running :class:`~leasekit.lease.LeaseBook`,
workers running :class:`~leasekit.loop.WorkerLoop` and the
:mod:`leasekit.policy` policies, a pluggable network.

No rule of the protocol, of a policy or of the worker loop lives here: the
server answers with whatever ``LeaseBook`` says at ``now_us = epoch +
round(env.now * 1e6)``; a worker does whatever its ``WorkerLoop`` and its
policy say, and tells them what happened when it happens.

Each simulated worker is a :class:`SimWorker`: an explicit state machine
with one method per event, driven by SimPy timeouts (documented SimPy API
only: ``env.timeout``, ``event.callbacks``, ``env.process``). It reads like
the keeper's loop: ``due`` and ``sending`` decide when the next heartbeat
goes out (:meth:`SimWorker._heartbeat_due`), and ``observe`` runs when its
answer or its timeout reaches the worker (:meth:`SimWorker._on_seen`). A
heartbeat costs two SimPy events: its processing at the server and its
answer at the worker. A generator process per worker would read much the
same; ``docs/simulator.md`` says why this is a state machine and measures
both.

A worker's events check two things before acting, so that faults need no
knowledge of what a worker is doing: a stale event (for a generation of the
worker that crashed since, or a timer that was replaced) is ignored, and a
paused worker handles an event when its pause ends. Pauses and crashes can
therefore be added while the run goes (:meth:`Engine.crash`,
:meth:`Engine.pause`), from a SimPy process of the user's
(``docs/simulator.md``).

Lease deadlines are checked lazily by ``LeaseBook`` itself (it keeps at
most one deadline entry per item, so a run in which nobody polls grows
nothing); its observer reports every transition to the
:class:`~leasekit.sim._monitor.Monitor` (lazy expiries with their real
expiry time).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Callable, Generator
from typing import Any, Final

import simpy

from ..distributions import parse_delay
from ..lease import Event, LeaseBook, LeaseConfig, WorkRecord
from ..loop import Abandon, Ack, Hold, LoopAction, Poll, WorkerLoop
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
from ._monitor import EventSink, Monitor, Tenure, WorkerLease
from ._network import (
    NetworkFactory,
    NetworkModel,
    ScenarioNetwork,
    Streams,
    merge_spans,
    windows_by_worker,
)
from ._scenario import Scenario

__all__ = ["ENVIRONMENT_ID", "EPOCH_US", "Attempt", "Engine", "SimWorker"]

EPOCH_US: Final = 1_800_000_000 * 1_000_000
"""Simulated time 0 on the server's clock: 2027-01-15T08:00:00Z."""
ENVIRONMENT_ID: Final = "env_sim"

_HEARTBEAT, _POLL, _ACK = "heartbeat", "poll", "ack"
# Enum members read per message, as constants: on Python 3.11 reading
# ``Event.RENEW`` goes through EnumType's attribute hook (~150 ns a read).
_TIMEOUT: Final = Outcome.TIMEOUT
_OK: Final = Outcome.OK
_NAN: Final = math.nan
_INF: Final = math.inf
_OUTCOME_OF: dict[int, Outcome] = {}


def _outcome(status: int) -> Outcome:
    outcome = _OUTCOME_OF.get(status)
    if outcome is None:
        outcome = _OUTCOME_OF[status] = classify_status(status)
    return outcome


class Attempt:
    """One request and what became of it (times in simulated seconds, ``nan``
    for what did not happen)."""

    __slots__ = (
        "answer",
        "answered_s",
        "arrived_s",
        "callback",
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
        "send",
        "sent_s",
        "status",
        "timed_out",
        "withdrawn",
        "work_id",
        "worker",
    )

    callback: Callable[[Any], None]
    """What the worker does when it learns how the attempt ended (set by the send)."""

    def __init__(
        self,
        worker: SimWorker,
        kind: str,
        sent_s: float,
        timeout_s: float,
        work_id: str = "",
        number: int = 0,
        expected: str | None = None,
        desired: int | None = None,
    ) -> None:
        self.worker = worker
        self.gen = worker.gen
        self.kind = kind
        self.sent_s = sent_s
        self.deadline_s = sent_s + timeout_s
        self.work_id = work_id
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
        self.withdrawn = False
        self.send: Send | None = None
        """The policy's action this heartbeat carries out."""


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


class SimWorker:
    """One simulated worker process: its :class:`~leasekit.loop.WorkerLoop`
    between leases, its heartbeat policy while it holds one.

    Readable by extensions: ``index``, ``name``, ``alive``, ``holding`` (the
    work id of the lease it believes it holds, or ``None``), ``pauses``
    (sorted, merged ``(starts, ends)`` spans).
    """

    def __init__(self, engine: Engine, index: int, rng: Any) -> None:
        self.engine = engine
        self.index = index
        self.name = f"w{index}"
        self.rng = rng
        self.gen = 0
        """Bumped by each crash: events of an older generation are stale."""
        self.alive = True
        self.loop = WorkerLoop(rng, empty_poll_wait=engine.empty_poll_wait.sample)
        self.policy: HeartbeatPolicy | None = None
        self.work_id = ""
        self.lease: WorkerLease | None = None
        self.tenure: Tenure | None = None
        self.timer: Any = None
        """What the one pending timer of the worker is for (a ``Poll`` or a
        ``Send``); a timer that fires for anything else is stale."""
        self.pauses: tuple[list[float], list[float]] = ([], [])
        self.has_pauses = False
        """Whether ``pauses`` has a span: read on every event, and a bool on the
        worker is one memory access where the spans' lists are two more."""
        self.crashes_s: list[float] = []
        self._seen = self._on_seen  # one bound method for every attempt

    @property
    def holding(self) -> str | None:
        return self.work_id if self.lease is not None else None

    # ------------------------------------------------------------------ events

    def _paused_until(self, now: float) -> float:
        """The end of the pause ``now`` falls in, or ``now``."""
        starts, ends = self.pauses
        i = bisect.bisect_right(starts, now) - 1
        if i >= 0 and now < ends[i]:
            return ends[i]
        return now

    def _wake_at(self, t: float, callback: Callable[[Any], None], value: Any) -> None:
        """Call ``callback(event)`` at ``t`` (after the pause ``t`` falls in)."""
        if self.has_pauses:
            t = self._paused_until(t)
        self.engine.after(t - self.engine.env.now, callback, value)

    def _held_back(self, event: Any, callback: Callable[[Any], None]) -> bool:
        """A paused worker handles nothing: put ``event`` off until the pause ends."""
        now = self.engine.env.now
        until = self._paused_until(now)
        if until > now:
            self.engine.after(until - now, callback, event.value)
            return True
        return False

    # ------------------------------------------------------------------ lifecycle

    def start(self, at: float) -> None:
        """The process starts (first start or restart) at ``at``: poll."""
        self._act(self.loop.start(at))

    def crash(self) -> None:
        """Die now: whatever was pending is forgotten, requests in flight
        act for nobody."""
        if not self.alive:
            return
        engine = self.engine
        now = engine.env.now
        self._withdraw()
        self.alive = False
        self.gen += 1
        self.timer = None
        if self.lease is not None:
            engine.monitor.lease_ended(self.lease, now, "crash")
            self.lease = None
        engine.monitor.crashed(self.index, now, self.tenure)
        self.policy = None
        self.tenure = None
        self.work_id = ""

    def restart(self) -> None:
        """Come back as a fresh process (a new loop, no lease)."""
        if self.alive:
            return
        now = self.engine.env.now
        self.alive = True
        self.loop = WorkerLoop(self.rng, empty_poll_wait=self.engine.empty_poll_wait.sample)
        self.engine.monitor.restarted(self.index, now)
        self.start(now)

    # ------------------------------------------------------------------ the loop

    def _act(self, action: LoopAction) -> None:
        """Do what the worker loop said."""
        now = self.engine.env.now
        if isinstance(action, Poll):
            self.work_id = ""
            if action.at <= now and not self.has_pauses:
                self.timer = None
                self._send(Attempt(self, _POLL, now, self.engine.request_timeout_s))
            else:
                self.timer = action
                self._wake_at(action.at, self._on_poll_due, action)
        elif isinstance(action, Ack):
            self.work_id = action.work_id
            self._send(Attempt(self, _ACK, now, self.engine.request_timeout_s, self.work_id))
        elif isinstance(action, Hold):
            self._hold(now)
        elif isinstance(action, Abandon):
            # The simulated item stays where the server has it; poll again.
            self._act(self.loop.abandoned(now))
        else:  # Fail: no simulated server refuses a poll for good
            raise RuntimeError(f"worker {self.index}: the poll was refused for good")

    def _on_poll_due(self, event: Any) -> None:
        if event.value is not self.timer or (
            self.has_pauses and self._held_back(event, self._on_poll_due)
        ):
            return
        self.timer = None
        self._send(Attempt(self, _POLL, self.engine.env.now, self.engine.request_timeout_s))

    # ------------------------------------------------------------------ the lease

    def _hold(self, now: float) -> None:
        self.policy = policy = make_policy(self.engine.policy_spec, rng=self.rng)
        action = policy.start(now)
        assert isinstance(action, Send), "no policy stops before its first attempt"
        self._heartbeat_due(action, now)

    def _heartbeat_due(self, send: Send, now: float) -> None:
        """Send the next heartbeat when the policy says: at its ``due`` time
        (a real event loop's timers fire ``timer_slack_s`` late; a paused
        worker's when the pause ends), after ``sending``.

        The send is not a SimPy event of its own: that would be a third event
        per heartbeat (``docs/simulator.md`` has the measurements). Nothing
        but a fault can come between this moment and the send time (the
        attempt before it has ended, the policy is pure), so the request is
        put on the wire for that time now, and a fault that strikes first
        withdraws it (:meth:`_withdraw`).
        """
        policy = self.policy
        assert policy is not None
        engine = self.engine
        enforce = engine.enforce_deadline
        at = policy.due(send, enforce)
        at = (at if at > now else now) + engine.slack_s
        if self.has_pauses:
            at = self._paused_until(at)
        if at >= engine.end_s:
            return  # after the run
        action = policy.sending(send, at, enforce)
        if not isinstance(action, Send):
            self.timer = action
            engine.timeout(at - now, action).callbacks.append(self._on_give_up)
            return
        attempt = Attempt(
            self,
            _HEARTBEAT,
            at,
            action.timeout_s + engine.slack_s,
            self.work_id,
            action.attempt,
            None if engine.unconditional else action.expected_last_heartbeat,
            action.desired_ttl_seconds,
        )
        attempt.send = send
        self.timer = attempt
        engine.heartbeats_sent += 1
        engine.send(attempt, self._seen, now)

    def _withdraw(self) -> Send | None:
        """A fault struck now: a heartbeat scheduled for now or later was never
        sent. Returns the policy's ``Send`` it was for, or ``None``."""
        attempt = self.timer
        if isinstance(attempt, Attempt) and attempt.sent_s >= self.engine.env.now:
            attempt.withdrawn = True
            self.engine.heartbeats_sent -= 1
            self.timer = None
            return attempt.send
        return None

    def paused(self, until: float) -> None:
        """A pause until ``until`` was added from now: a heartbeat scheduled in
        it goes out when it ends instead."""
        attempt = self.timer
        if isinstance(attempt, Attempt) and attempt.sent_s < until:
            send = self._withdraw()
            if send is not None:
                self._heartbeat_due(send, self.engine.env.now)

    def _on_give_up(self, event: Any) -> None:
        """The local deadline came before a success: ``sending`` said stop."""
        if event.value is not self.timer or (
            self.has_pauses and self._held_back(event, self._on_give_up)
        ):
            return
        self.timer = None
        self._lease_over(self.engine.env.now, EndReason.ASSUMED_LOST.value)

    def _send(self, attempt: Attempt) -> None:
        self.engine.send(attempt, self._seen, self.engine.env.now)

    def _on_seen(self, event: Any) -> None:
        """An answer or a timeout reaches the worker: tell the loop or the policy."""
        attempt: Attempt = event.value
        if attempt.gen != self.gen or attempt.withdrawn:
            return  # it crashed since it sent this, or never sent it
        if self.has_pauses and self._held_back(event, self._on_seen):
            return
        engine = self.engine
        now = engine.env.now
        attempt.seen_s = now
        monitor = engine.monitor
        if monitor.keep_events:
            monitor.attempt_seen(attempt)
        status = attempt.status
        kind = attempt.kind
        if kind is _HEARTBEAT:
            monitor.heartbeat_answers += 1
            if attempt.timed_out:
                result = Result(_TIMEOUT, attempt.sent_s, now)
            else:
                assert status is not None
                if status == 412:
                    monitor.precondition_failures += 1
                result = Result(
                    _OUTCOME_OF.get(status) or _outcome(status),
                    attempt.sent_s,
                    now,
                    attempt.answer,
                    attempt.current_state,
                    status,
                )
            policy = self.policy
            assert policy is not None
            was_held = policy.held
            action = policy.observe(result)
            if isinstance(action, Send):
                if not was_held and policy.held:
                    self.lease = engine.monitor.lease_started(
                        self.index, self.work_id, self.tenure, now
                    )
                self._heartbeat_due(action, now)
            else:
                self._stopped(action, was_held, now)
            return
        if attempt.timed_out:
            outcome = _TIMEOUT
        else:
            assert status is not None
            outcome = _OUTCOME_OF.get(status) or _outcome(status)
        if kind is _POLL:
            self._act(self.loop.polled(now, outcome, attempt.item))
        else:
            self._act(self.loop.acked(now, outcome))

    def _stopped(self, action: Stop, was_held: bool, now: float) -> None:
        if self.lease is None and (was_held or action.reason is EndReason.SHUTDOWN):
            # Held for an instant (a shutdown on the first success).
            self.lease = self.engine.monitor.lease_started(
                self.index, self.work_id, self.tenure, now
            )
        self._lease_over(now, action.reason.value)

    def _lease_over(self, now: float, reason: str) -> None:
        """The worker stops heartbeating and tells its loop."""
        if self.lease is not None:
            self.engine.monitor.lease_ended(self.lease, now, reason)
            self.lease = None
        self.policy = None
        self._act(self.loop.released(now))


class Engine:
    """One run of a scenario with one seed. Build, :meth:`run`, read ``monitor``.

    For extensions (``docs/simulator.md``): ``env`` (the SimPy environment;
    add processes to it before :meth:`run`), ``workers`` (the
    :class:`SimWorker` list), ``book`` (the server's ``LeaseBook``),
    :meth:`crash`, :meth:`restart`, :meth:`pause` and :meth:`after`.
    ``events=True`` keeps the event log in :attr:`rows`; an
    :data:`~leasekit.sim.EventSink` (such as a
    :class:`~leasekit.sim.CsvEventWriter`) gets each row as it is recorded.
    """

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        network: NetworkFactory | None = None,
        progress: Callable[[float], None] | None = None,
        events: bool | EventSink = False,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.env = simpy.Environment()
        self.timeout = self.env.timeout
        """``env.timeout``, looked up once: it is called three times per heartbeat."""
        self.streams = streams = Streams(seed)
        self.network: NetworkModel = (network or ScenarioNetwork)(scenario, streams)
        self.rows: list[tuple[Any, ...]] | None = [] if events is True else None
        """The event log, when kept in memory (``events=True``): rows of
        :data:`~leasekit.sim.EVENT_COLUMNS` in the order they were recorded."""
        sink: EventSink | None = None
        if self.rows is not None:
            sink = self.rows.append
        elif not isinstance(events, bool):
            sink = events
        self.monitor = Monitor(scenario, events=sink)
        if scenario.warmup_s > 0:
            # Scheduled first: it comes before anything else at that instant.
            self.after(scenario.warmup_s, self._open_window)
        self._progress = progress
        server = scenario.server
        self.book = LeaseBook(
            LeaseConfig(server.default_ttl_seconds, server.min_ttl_seconds, server.max_ttl_seconds),
            observer=self._on_transition,
            observe_renewals=False,  # counted as heartbeat answers
            secrets_=lambda: "simulated-secret",
        )
        self.book.add_environment(ENVIRONMENT_ID)
        for i in range(scenario.workers.items):
            self.book.enqueue(ENVIRONMENT_ID, EPOCH_US, work_id=f"work_{i:05d}")
        self._acting: SimWorker | None = None
        self.heartbeats_sent = 0
        self.end_s = scenario.duration_s
        self._request_delay = self.network.request_delay
        self._answer_delay = self.network.answer_delay
        # A lossless constant delay takes no draw: no call per message either.
        self._fixed_request: float | None = None
        self._fixed_answer: float | None = None
        # A lossless drawn delay that depends on nobody: one call, not three
        # (4% of a heartbeat's instructions in bench_sim.py --fixed, callgrind).
        self._draw_request: Callable[[], float] | None = None
        self._draw_answer: Callable[[], float] | None = None
        if isinstance(self.network, ScenarioNetwork):
            self._fixed_request, self._fixed_answer = self.network.fixed_delays()
            self._draw_request, self._draw_answer = self.network.plain_delays()
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
        self._first_stage = self._on_process if self._direct else self._on_arrival
        self._free_at = [0.0] * server.capacity  # heap: when each server slot frees up
        self._waiting: deque[float] = deque()  # start times of queued requests, ascending
        # workers
        config = scenario.workers
        self.policy_spec = config.policy
        self.empty_poll_wait = parse_delay(config.empty_poll_wait)
        self.request_timeout_s = config.request_timeout_s
        self.slack_s = config.timer_slack_s
        self.enforce_deadline = config.enforce_deadline
        self.unconditional = config.unconditional
        restart = config.crashes.restart_after
        self._restart_after = parse_delay(restart) if restart is not None else None
        self._restart_rng = streams.rng("restarts")
        pauses = windows_by_worker(config.pauses.schedule, config.count)
        pause_duration = parse_delay(config.pauses.duration)
        horizon = scenario.duration_s
        self.workers: list[SimWorker] = []
        for i in range(config.count):
            worker = SimWorker(self, i, streams.rng(f"worker.{i}"))
            spans = list(zip(*pauses[i], strict=True))
            pause_rng = streams.rng(f"pauses.{i}")
            for start in _poisson_times(pause_rng, config.pauses.rate_per_hour, horizon):
                spans.append((start, start + pause_duration.sample(pause_rng)))
            worker.pauses = merge_spans(spans)
            worker.has_pauses = bool(worker.pauses[0])
            crash_rng = streams.rng(f"crashes.{i}")
            crashes = _poisson_times(crash_rng, config.crashes.rate_per_hour, horizon)
            for moment in config.crashes.schedule:
                if not moment.workers or i in moment.workers:
                    crashes.append(moment.at_s)
            worker.crashes_s = sorted(t for t in crashes if t < horizon)
            self.workers.append(worker)
            self.monitor.pauses.append(worker.pauses)
        start_rng = streams.rng("starts")
        for worker in self.workers:
            first = Poll(start_rng.uniform(0, config.start_spread_s))
            worker.timer = first
            worker._wake_at(first.at, worker._on_poll_due, first)
            for t in worker.crashes_s:
                self.after(t, self._on_crash, worker)

    # ------------------------------------------------------------------ plumbing

    def after(self, delay: float, callback: Callable[[Any], None], value: Any = None) -> None:
        """Call ``callback(event)`` ``delay`` simulated seconds from now
        (``event.value`` is ``value``): one SimPy timeout."""
        self.timeout(delay if delay > 0 else 0.0, value).callbacks.append(callback)

    def _open_window(self, event: Any) -> None:
        self.monitor.open_window()

    def run(self) -> Monitor:
        """Run to ``duration_s``, settle every lease, and return the monitor
        (its ``totals`` complete)."""
        duration = self.scenario.duration_s
        if self._progress is not None:
            self.env.process(self._report_progress(self._progress, duration))
        self.env.run(until=duration)
        end_us = EPOCH_US + round(duration * 1e6)
        # Lazy expiries that are due but untouched happen now, at their real times.
        self._acting = None
        for record in list(self.book.records(ENVIRONMENT_ID)):
            self.book.record(ENVIRONMENT_ID, record.work_id, end_us)
        for worker in self.workers:
            if worker.lease is not None:
                self.monitor.lease_ended(worker.lease, duration, "running")
                worker.lease = None
        self.monitor.finish(self.heartbeats_sent)
        if self._progress is not None:
            self._progress(1.0)
        return self.monitor

    def _report_progress(
        self, progress: Callable[[float], None], duration: float
    ) -> Generator[simpy.Event, None, None]:
        for k in range(1, 100):
            yield self.env.timeout(duration / 100)
            progress(k / 100)

    # ------------------------------------------------------------------ faults

    def crash(self, worker: int) -> None:
        """Crash worker ``worker`` now (restarted after the scenario's
        ``crashes.restart_after``, if set)."""
        self._on_crash_now(self.workers[worker])

    def restart(self, worker: int) -> None:
        """Restart worker ``worker`` now if it is down."""
        self.workers[worker].restart()

    def pause(self, worker: int, duration_s: float) -> None:
        """Pause worker ``worker`` from now for ``duration_s``: it handles
        nothing (timers, answers) until the pause ends."""
        if duration_s <= 0:
            raise ValueError(f"pause duration must be > 0, got {duration_s}")
        target = self.workers[worker]
        now = self.env.now
        spans = [*zip(*target.pauses, strict=True), (now, now + duration_s)]
        starts, ends = merge_spans(spans)
        # in place: the monitor holds these very lists
        target.pauses[0][:] = starts
        target.pauses[1][:] = ends
        target.has_pauses = True
        self.monitor.paused(worker, now, duration_s)
        target.paused(now + duration_s)

    def _on_crash(self, event: Any) -> None:
        self._on_crash_now(event.value)

    def _on_crash_now(self, worker: SimWorker) -> None:
        if not worker.alive:
            return
        worker.crash()
        if self._restart_after is not None:
            delay = self._restart_after.sample(self._restart_rng)
            self.after(delay, self._on_restart, (worker, worker.gen))

    def _on_restart(self, event: Any) -> None:
        worker, gen = event.value
        if worker.gen == gen:  # not restarted by hand meanwhile
            worker.restart()

    # ------------------------------------------------------------------ network

    def send(self, attempt: Attempt, seen: Callable[[Any], None], now: float) -> None:
        """Put a request on the wire at ``attempt.sent_s`` (``now``, the
        simulated time, or later); ``seen(event)`` gets the attempt
        (``event.value``) when its answer or its timeout reaches the worker."""
        attempt.callback = seen
        delay = self._fixed_request
        if delay is None:
            draw = self._draw_request
            if draw is not None:
                delay = draw()
            else:
                delay = self._request_delay(attempt.worker.index, attempt.kind, attempt.sent_s)
            if delay is None:
                attempt.lost = "request"
                attempt.timed_out = True
                self.timeout(attempt.deadline_s - now, attempt).callbacks.append(seen)
                return
        arrived_s = attempt.arrived_s = attempt.sent_s + delay
        if arrived_s >= attempt.deadline_s:
            # The worker gives up first; the request still reaches the server.
            attempt.timed_out = True
            self.timeout(attempt.deadline_s - now, attempt).callbacks.append(seen)
        self.timeout(arrived_s - now, attempt).callbacks.append(self._first_stage)

    def _answer(self, attempt: Attempt, now: float) -> None:
        """The server sends the answer back ``now``."""
        if attempt.timed_out:
            return  # the worker stopped waiting; its timeout is scheduled
        delay = self._fixed_answer
        if delay is None:
            draw = self._draw_answer
            if draw is not None:
                delay = draw()
            else:
                delay = self._answer_delay(attempt.worker.index, attempt.kind, now)
            if delay is None:
                attempt.lost = "answer"
                attempt.timed_out = True
                self.after(attempt.deadline_s - now, attempt.callback, attempt)
                return
        answered_s = attempt.answered_s = now + delay
        if answered_s >= attempt.deadline_s:
            attempt.timed_out = True
            self.after(attempt.deadline_s - now, attempt.callback, attempt)
            return
        self.timeout(delay, attempt).callbacks.append(attempt.callback)

    # ------------------------------------------------------------------ server

    def _on_arrival(self, event: Any) -> None:
        """A request reaches a server with processing time, capacity or stalls."""
        attempt: Attempt = event.value
        if attempt.withdrawn:
            return  # never sent
        now = self.env.now
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
                self.monitor.requests += 1
                self._answer(attempt, now)
                return
            heapq.heapreplace(self._free_at, start + service)
            if start > now:
                waiting.append(start)
        done = start + service
        if done >= attempt.deadline_s and not attempt.timed_out:
            attempt.timed_out = True
            self.after(attempt.deadline_s - now, attempt.callback, attempt)
        self.after(done - now, self._on_process, attempt)

    def _on_process(self, event: Any) -> None:
        """The server applies a request to the ``LeaseBook`` now."""
        attempt: Attempt = event.value
        if attempt.withdrawn:
            return  # never sent
        now = self.env.now
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
                attempt.expected = None  # let the previous heartbeat's text go
            except PreconditionFailed as error:
                attempt.status = 412
                attempt.current_state = error.current_state
            except ApiError as error:
                attempt.status = error.status
        elif kind is _POLL:
            record = self.book.poll(ENVIRONMENT_ID, now_us, worker_id=worker.name)
            long_poll_s = self.scenario.server.long_poll_s
            if record is None and long_poll_s > 0 and not attempt.repolled:
                # A long poll: hold the request and look once more when it ends.
                attempt.repolled = True
                self.monitor.requests += 1
                self.after(long_poll_s, self._on_process, attempt)
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
            self.monitor.requests += 1
        self._answer(attempt, now)

    def _on_transition(
        self, record: WorkRecord, event: Event, previous: WorkState, now_us: int
    ) -> None:
        """The ``LeaseBook`` observer: every transition, lazy expiries at their real time."""
        self.monitor.transition(record, event, previous, (now_us - EPOCH_US) / 1e6, self._acting)
