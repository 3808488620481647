"""Client heartbeat policies, sans-I/O: told what happened, they say what to do.

A policy owns no clock, no socket and no task. A driver (the async client,
the simulator, a test) runs it like this::

    action = policy.start(now)
    while isinstance(action, Send):
        ...wait until policy.due(action)...
        action = policy.sending(action, now)   # a late driver may get a Stop
        if isinstance(action, Stop):
            break
        ...send a heartbeat with action.expected_last_heartbeat and
           action.desired_ttl_seconds, giving up after action.timeout_s...
        action = policy.observe(Result(...what happened, with its times...))
    print(action.reason)            # a Stop

:meth:`HeartbeatPolicy.due` and :meth:`HeartbeatPolicy.sending` carry the
local-deadline rule (never believe in a lease past the policy's
``deadline``), so that every driver applies it the same way.

Times are seconds on the driver's monotonic clock (``time.monotonic()``
for a real client, ``env.now`` in the simulator). A driver must report the
time it really sent each attempt (``Result.sent_at``) and the time the
answer arrived or the attempt timed out (``Result.received_at``). At most one
attempt is in flight; a policy never asks for two at once.

Randomness (jitter) comes from the ``rng`` each policy is given, so a
simulation with a seed is reproducible.
"""

from __future__ import annotations

import abc
import enum
import functools
import inspect
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from .protocol import NO_HEARTBEAT, HeartbeatAnswer, LeaseState, WorkState

__all__ = [
    "LEASEKIT_PRESETS",
    "EndReason",
    "FixedPolicy",
    "HeartbeatPolicy",
    "LeasekitPolicy",
    "Outcome",
    "Result",
    "SdkPolicy",
    "Send",
    "Stop",
    "classify_status",
    "make_policy",
]


class Outcome(enum.StrEnum):
    """How one heartbeat attempt ended."""

    OK = "ok"
    """200: the answer's fields are in ``Result.answer``."""
    PRECONDITION_FAILED = "precondition_failed"
    """412: ``Result.current_state`` holds the server's view."""
    REJECTED = "rejected"
    """A 4xx other than 408, 409, 412 and 429: retrying will not help."""
    TRANSIENT = "transient"
    """5xx, 408, 409, 429, or a connection error: worth retrying."""
    TIMEOUT = "timeout"
    """The attempt's timeout fired first: the server may or may not have applied it."""


_RETRYABLE_4XX: Final = frozenset({408, 409, 429})

# Members read on every heartbeat, as module constants: on Python 3.11 reading
# ``Outcome.OK`` goes through EnumType's attribute hook (~150 ns a read).
_OK, _PRECONDITION_FAILED, _REJECTED, _TRANSIENT, _TIMEOUT = (
    Outcome.OK,
    Outcome.PRECONDITION_FAILED,
    Outcome.REJECTED,
    Outcome.TRANSIENT,
    Outcome.TIMEOUT,
)
_SHUTDOWN_STATES: Final = (WorkState.STOPPING, WorkState.STOPPED)
_INF: Final = math.inf


def classify_status(status: int) -> Outcome:
    """The outcome of an HTTP status, as docs/protocol.md §1 (facts) classifies it."""
    if 200 <= status < 300:
        return Outcome.OK
    if status == 412:
        return Outcome.PRECONDITION_FAILED
    if 400 <= status < 500 and status not in _RETRYABLE_4XX:
        return Outcome.REJECTED
    return Outcome.TRANSIENT


class EndReason(enum.StrEnum):
    """Why a policy stopped heartbeating."""

    LOST = "lost"
    """A 412 said the lease is gone (requeued, or another worker holds it)."""
    ASSUMED_LOST = "assumed_lost"
    """No success for too long: the policy can no longer be sure it holds the lease."""
    REJECTED = "rejected"
    """The server refused the heartbeat in a way retrying will not fix."""
    SHUTDOWN = "shutdown"
    """The server asked the holder to stop (``stopping``/``stopped``/not extended)."""
    ERROR = "error"
    """The driver failed (e.g. an event callback or the trace writer raised):
    heartbeating stopped, though the server may still hold the lease until its TTL."""


# Not frozen: a frozen dataclass sets each field through object.__setattr__,
# about 1 us more per instance, and these are made on every simulated
# heartbeat. Treat them as immutable; unsafe_hash keeps the frozen one's hash.
@dataclass(slots=True, unsafe_hash=True)
class Send:
    """Send the next heartbeat attempt.

    ``at`` (monotonic seconds) is when to send it; ``timeout_s`` how long to
    wait for its answer, counted from the send; ``attempt`` numbers attempts
    from 1.
    """

    at: float
    timeout_s: float
    expected_last_heartbeat: str
    desired_ttl_seconds: int | None
    attempt: int


@dataclass(slots=True, unsafe_hash=True)
class Stop:
    """Heartbeating has ended; ``reason`` says why, ``detail`` in words."""

    reason: EndReason
    detail: str


Action = Send | Stop


@dataclass(slots=True, unsafe_hash=True)
class Result:
    """What happened to one attempt. Times in monotonic seconds.

    ``received_at`` is when the answer arrived, or when the timeout fired
    for :attr:`Outcome.TIMEOUT`. ``status`` is the HTTP status if there was
    one. ``retry_after_s`` is the wait (seconds) an error answer asked for in
    its ``Retry-After`` header (429, 503, 529), ``None`` when it named none.
    """

    outcome: Outcome
    sent_at: float
    received_at: float
    answer: HeartbeatAnswer | None = None
    current_state: LeaseState | None = None
    status: int | None = None
    retry_after_s: float | None = None


class HeartbeatPolicy(abc.ABC):
    """Base class: the bookkeeping every policy shares.

    Subclasses decide; this class only remembers. Readable at any time:
    ``last_heartbeat`` (the value to echo), ``ttl_seconds`` (the TTL the
    policy believes in, seconds), ``deadline`` (the local time until which
    the policy believes it holds the lease, or ``None`` before the first
    success), ``send_deadline`` (the local deadline anchored at the send
    time of the last success, see :meth:`limit`), ``attempts`` (sent so
    far), ``held`` (a success was seen and the policy has not stopped),
    ``used`` (it has started: a policy drives one lease only).
    """

    name: str = "policy"

    def __init__(self) -> None:
        self.last_heartbeat: str = NO_HEARTBEAT
        self.ttl_seconds: float = 90.0
        self.deadline: float | None = None
        self.send_deadline: float | None = None
        self.attempts = 0
        self.held = False
        self.stopped: Stop | None = None

    @property
    def used(self) -> bool:
        """True once the policy has started a lease (it cannot start another)."""
        return self.attempts > 0 or self.stopped is not None

    @abc.abstractmethod
    def start(self, now: float) -> Action:
        """Begin: the first attempt claims the lease with ``NO_HEARTBEAT``."""

    @abc.abstractmethod
    def observe(self, result: Result) -> Action:
        """Take what happened to the last attempt; return what to do next."""

    def parameters(self) -> dict[str, Any]:
        """The policy's parameters, for trace headers and scenario files."""
        return {}

    # The local-deadline rule, for drivers. ``enforce_deadline`` may be passed
    # by position: on Python 3.11 a call with a keyword costs more, and the
    # simulator calls ``due`` and ``sending`` (each calling ``limit``) on
    # every heartbeat (benchmarks/bench_sim.py). A policy whose class sets
    # ``local_deadline_rule`` keeps it always; a driver may impose it on any
    # other policy with ``enforce_deadline=True`` (leasekit's keeper does, the
    # simulated official worker does not). Written once here so that the
    # client and the simulator apply the very same rule.

    local_deadline_rule: bool = False
    """True when the policy itself never believes in the lease past ``deadline``
    (which it then anchors at send times itself)."""

    imposed_clock_drift: float = 1e-4
    """rho of the imposed rule: how much faster the client's clock may run
    than the server's (100 ppm)."""

    @staticmethod
    def _send_anchored(sent_at: float, ttl_seconds: float, clock_drift: float) -> float:
        """The local deadline of a renewal sent at ``sent_at`` (docs/policy.md):
        the server sets its deadline when it processes the renewal, after
        the send, so this instant is never later than the server's."""
        return sent_at + ttl_seconds * (1 - clock_drift)

    def _renewed(self, sent_at: float) -> None:
        """Record a success sent at ``sent_at`` for the imposed rule (call it
        after ``ttl_seconds`` took the answer's TTL)."""
        self.send_deadline = self._send_anchored(
            sent_at, self.ttl_seconds, self.imposed_clock_drift
        )

    def local_deadline(self, enforce_deadline: bool = False) -> float | None:
        """The local deadline the rule holds the lease to (monotonic seconds),
        ``None`` when no rule applies or before the first success.

        A policy with ``local_deadline_rule`` keeps its own ``deadline``. A
        driver imposing the rule on another policy (``enforce_deadline``)
        gets ``send_deadline``: the send time of the last success plus
        ``ttl * (1 - rho)``, whatever the policy itself believes (the
        official worker counts from the receive time, one answer trip too
        late)."""
        if self.local_deadline_rule:
            return self.deadline
        if enforce_deadline:
            return self.send_deadline
        return None

    def limit(self, enforce_deadline: bool = False) -> float:
        """The local time (monotonic seconds) past which the holder must not
        believe in the lease: :meth:`local_deadline` while a lease is held,
        else ``inf``."""
        if not self.held:
            return _INF
        # local_deadline(), written out: limit() runs twice per simulated
        # heartbeat (benchmarks/bench_sim.py).
        if self.local_deadline_rule:
            deadline = self.deadline
        elif enforce_deadline:
            deadline = self.send_deadline
        else:
            return _INF
        return _INF if deadline is None else deadline

    def due(self, send: Send, enforce_deadline: bool = False) -> float:
        """When a driver must act on ``send``: ``send.at``, or the local deadline
        if that comes first (then :meth:`sending` ends the lease)."""
        limit = self.limit(enforce_deadline)
        return send.at if send.at < limit else limit

    def sending(self, send: Send, now: float, enforce_deadline: bool = False) -> Action:
        """A driver is about to send ``send`` at ``now`` (maybe late: a busy
        event loop, a paused process). Returns the ``Send`` to use, its
        timeout cut so the attempt ends by the local deadline, or a
        ``Stop`` (assumed lost) when the deadline has already passed."""
        limit = self.limit(enforce_deadline)
        if now >= limit:
            return self._stop(
                EndReason.ASSUMED_LOST,
                "the local lease deadline passed without a successful heartbeat",
            )
        if now + send.timeout_s > limit:
            return Send(
                send.at,
                limit - now,
                send.expected_last_heartbeat,
                send.desired_ttl_seconds,
                send.attempt,
            )
        return send

    def _send(self, at: float, timeout_s: float, desired_ttl: int | None = None) -> Send:
        self.attempts += 1
        return Send(at, timeout_s, self.last_heartbeat, desired_ttl, self.attempts)

    def _stop(self, reason: EndReason, detail: str) -> Stop:
        self.held = False
        self.stopped = Stop(reason, detail)
        return self.stopped


def _shutdown_signal(answer: HeartbeatAnswer) -> bool:
    return answer.state in _SHUTDOWN_STATES or not answer.lease_extended


_SDK_RETRY_INITIAL_S: Final = 0.5
_SDK_RETRY_MAX_S: Final = 8.0
"""The SDK HTTP client's ``INITIAL_RETRY_DELAY`` and ``MAX_RETRY_DELAY`` (seconds)."""


class SdkPolicy(HeartbeatPolicy):
    """The official SDK worker's heartbeat, rule for rule (``anthropic`` 2.x).

    Its purpose is fidelity: simulating it predicts what the official
    worker does. The rules (docs/protocol.md §1 (facts)):

    * Before the first answer it assumes a TTL of 90 s and an interval of 30 s,
      and never sends ``desired_ttl_seconds``.
    * After a success with ``ttl_seconds > 0``: TTL := ``ttl_seconds``,
      interval := max(1, min(TTL / 2, 30)).
    * Each attempt is cancelled after one interval; that counts as a
      transient failure.
    * The next attempt starts one interval after the previous attempt
      ended, whatever its outcome (so a timed-out attempt costs two intervals).
    * 412: lease lost. Other 4xx except 408/409/429: rejected.
    * A transient failure ends the lease ("assumed lost") only when more than
      one TTL has passed since the last success (or since the start) at the
      moment the failure is seen.
    * A success in ``stopping``/``stopped`` or with ``lease_extended`` false
      is a shutdown signal.

    ``http_retries`` models the SDK's HTTP client under the worker: a
    transient *status* or connection error inside an attempt is retried up
    to that many times after min(0.5 s * 2**n, 8 s) (times a jitter in
    (0.75, 1]), within the attempt's budget of one interval. Set it to 0 to model the worker
    loop alone.
    """

    name = "sdk"

    def __init__(self, *, http_retries: int = 2, rng: random.Random | None = None) -> None:
        super().__init__()
        self.http_retries = http_retries
        self.rng = rng or random.Random()
        self.interval_s = 30.0
        self.last_success: float = 0.0
        self._attempt_started: float = 0.0
        self._attempt_budget_s: float = 30.0
        self._retries_used = 0

    def parameters(self) -> dict[str, Any]:
        return {"http_retries": self.http_retries}

    def _begin_attempt(self, at: float) -> Send:
        self._attempt_started = at
        interval_s = self._attempt_budget_s = self.interval_s
        self._retries_used = 0
        # _send() inlined: this is once per heartbeat
        attempts = self.attempts = self.attempts + 1
        return Send(at, interval_s, self.last_heartbeat, None, attempts)

    def start(self, now: float) -> Action:
        self.last_success = now
        self.ttl_seconds = 90.0
        self.interval_s = 30.0
        return self._begin_attempt(now)

    def observe(self, result: Result) -> Action:
        outcome = result.outcome
        if outcome is _OK:
            assert result.answer is not None
            answer = result.answer
            self.last_heartbeat = answer.last_heartbeat
            self.last_success = result.received_at
            if answer.ttl_seconds > 0:
                self.ttl_seconds = float(answer.ttl_seconds)
                self.interval_s = max(1.0, min(answer.ttl_seconds / 2, 30.0))
            self.held = True
            self.deadline = self.last_success + self.ttl_seconds
            self._renewed(result.sent_at)
            if _shutdown_signal(answer):
                return self._stop(
                    EndReason.SHUTDOWN,
                    f"state {answer.state.value}, lease_extended {answer.lease_extended}",
                )
            return self._begin_attempt(result.received_at + self.interval_s)
        if outcome is _PRECONDITION_FAILED:
            state = result.current_state
            return self._stop(
                EndReason.LOST,
                "412 heartbeat precondition failed"
                + (f" (server state {state.state.value})" if state else ""),
            )
        if outcome is _REJECTED:
            return self._stop(EndReason.REJECTED, f"heartbeat rejected with {result.status}")
        # Transient or timeout. The SDK's HTTP client retries a transient
        # answer inside the same worker attempt while the attempt has time.
        ended_at = result.received_at
        if self._retries_used == 0:
            # The SDK's per-attempt timeout counts from when the attempt really
            # started (its sleep may overrun ``Send.at``), not from the schedule.
            self._attempt_started = result.sent_at
        budget_end = self._attempt_started + self._attempt_budget_s
        if outcome is _TRANSIENT and self._retries_used < self.http_retries:
            # The SDK client's delay: min(0.5 * 2**n, 8) s, then the jitter.
            backoff = min(_SDK_RETRY_INITIAL_S * 2.0**self._retries_used, _SDK_RETRY_MAX_S)
            delay = backoff * (1 - 0.25 * self.rng.random())
            self._retries_used += 1
            if ended_at + delay < budget_end:
                self.attempts += 1
                return Send(
                    ended_at + delay,
                    budget_end - (ended_at + delay),
                    self.last_heartbeat,
                    None,
                    self.attempts,
                )
            # The retry's sleep is cancelled by the attempt's timeout.
            ended_at = budget_end
        if ended_at - self.last_success > self.ttl_seconds:
            return self._stop(
                EndReason.ASSUMED_LOST,
                f"no successful heartbeat in {self.ttl_seconds:.0f} s",
            )
        return self._begin_attempt(ended_at + self.interval_s)


_OVERLOAD_STATUSES: Final = frozenset({429, 503, 529})
"""Answers that say the server is overloaded (rate limited, unavailable, overloaded)."""

# RFC 6298's smoothing gains and variance multiplier.
_RTT_ALPHA: Final = 1 / 8
_RTT_BETA: Final = 1 / 4
_RTT_K: Final = 4.0
_RTT_GRANULARITY_S: Final = 0.001

_SPACINGS: Final = ("window", "exponential")


def _tenth_of_ttl(ttl_seconds: float) -> float:
    """v1's attempt timeout, and v2's conservative one before any sample: a
    tenth of the TTL, between 1 and 10 s."""
    return min(10.0, max(1.0, ttl_seconds / 10))


LEASEKIT_PRESETS: Final[dict[str, dict[str, Any]]] = {
    "v1": {"spacing": "exponential", "adaptive_timeout": False, "max_requests_per_ttl": 0},
}
"""Named parameter sets of :class:`LeasekitPolicy` (``make_policy("leasekit:v1")``).

``v1`` is the policy as it was before adaptive timeouts: a fixed attempt
timeout of a tenth of the TTL (1..10 s), exponential retries from
``retry_initial_s`` doubling to ``retry_max_s``, no request budget. It differs
from the old class only in honouring ``Retry-After`` (the simulator's
answers carry none, so simulated runs are the same)."""


class LeasekitPolicy(HeartbeatPolicy):
    """leasekit's own policy (v2): keep a healthy lease, never believe a dead one,
    and spend the lease's remaining time on as many well-placed attempts as
    the load budget allows.

    * **Schedule.** Heartbeat every ``beat_fraction`` of the TTL (a third by
      default) counted from the last successful send, jittered by
      ``jitter_fraction`` so many workers do not beat in step. Asks for
      ``ttl_seconds`` when given (else takes the server's default).
    * **Attempt timeouts from the measured round trip** (RFC 6298): every
      answered attempt (200, 412, an error status) is a round-trip sample
      ``R``; the first sets ``SRTT = R, RTTVAR = R / 2``, later ones
      ``RTTVAR += (|SRTT - R| - RTTVAR) / 4``, ``SRTT += (R - SRTT) / 8``.
      The timeout is ``SRTT + max(1 ms, 4 RTTVAR)`` within
      [``rto_min_s``, ``rto_max_s``] (default ceiling: a quarter of the
      TTL). Before the first sample it is ``rto_initial_s`` (default a
      tenth of the TTL, 1..10 s: conservative, as RFC 6298's 1 s start).
      Each timeout in a row multiplies it by ``rto_backoff`` (the network
      may have become slower), but a retry's timeout never grows beyond its
      share of the remaining window (below), so a burst of lost answers
      does not eat the window. ``attempt_timeout_s`` fixes the timeout
      instead; ``adaptive_timeout=False`` uses ``rto_initial_s`` always.
    * **Retry spacing from the remaining window** (``spacing="window"``).
      After a failure at ``now``, with the local deadline ``D`` (below) and
      ``n`` attempts left in the budget before ``D``, each attempt gets a
      slot of ``(D - now) / n``: the next is sent when the slot minus its
      timeout has passed (jittered). A long window spreads the retries out,
      a short one packs them in, and the last attempt may wait until ``D``.
      No attempt is sent at or after ``D``, and none waits past it.
      ``spacing="exponential"`` is v1's: ``retry_initial_s`` doubling up to
      ``retry_max_s``.
    * **Load budget.** At most ``max_requests_per_ttl`` requests (attempts)
      in any TTL-long window, per lease (0: no cap): an attempt that would
      exceed it is delayed, so a fleet cannot stampede a struggling server
      whatever the loss. An overload answer (429, 503, 529) is not
      silence: the next retry waits at least two slots, doubling with each
      overload in a row (capped at half the remaining window), and never
      less than the answer's ``Retry-After`` (``Result.retry_after_s``);
      when ``Retry-After`` reaches past ``D`` the lease is given up at once.
      Every such answer still counts as ambiguous (below): a proxy's 503 may
      follow an applied request.
    * **Local deadline.** The server sets its deadline when it *processes* a
      renewal, which is after the client *sent* it. So ``send time of the last
      renewal answered 200 + ttl * (1 - rho)`` is never later than the
      server's deadline, where ``rho`` (``clock_drift``, default 1e-4, 100 ppm)
      bounds how much faster the client's clock may run than the server's.
      The policy never believes in the lease past that instant: when an
      attempt would end after it, or a retry would be sent after it, it stops
      with ``assumed_lost``. A worker that obeys this never serves an item
      the server could already have handed to someone else (docs/policy.md).
      Nothing adaptive enters this bound: the timeouts and the spacing only
      choose *when* to try, and a slow answer only delays the anchor (the
      send time), never moves it later than the send.
    * **Adopting a self-inflicted 412.** Let renewal L be the last answered
      one, and attempts A1..An, each echoing L, be *ambiguous*: they timed
      out, lost their answer, or met a transient error, so the server may
      have applied one of them (at most one: the first applied changes the
      stored value, and the rest then mismatch). A later attempt R meets 412
      with ``current_state.state == "active"`` and a stored value L' != L.
      If R's answer arrived before the local deadline above, the server
      processed R before its own deadline for L, so the lease never expired
      in between and no other worker could have claimed it; the only writes
      that echo L are ours. Hence L' was written by one of A1..An: adopt L'
      as the value to echo, and anchor the local deadline at the earliest
      send time among A1..An (we do not know which one was applied, and
      earlier is the safe side). Otherwise (no ambiguous attempt, answer
      after the local deadline, state not ``active``, no stored value) the
      lease is lost. An unconditional heartbeat (one without
      ``expected_last_heartbeat``) by some other client breaks this
      argument; leasekit's client never sends one.
    * **A lost answer to the claim is not adopted.** A claim (``NO_HEARTBEAT``)
      whose answer was lost leaves the item ``active`` with a value we never
      saw, and its retry meets 412. Adopting that value would be safe only if
      no one else could have claimed the item in between, and under the
      reference semantics (docs/protocol.md) that cannot be known: (1) a
      claim is accepted from *any* client while the item is ``queued`` or
      ``starting`` with no stored heartbeat; the server does not check who
      acknowledged it, and ``keep_lease``/``leasekit keep --work`` claim by
      work id without polling at all; (2) an item handed out but not yet
      acknowledged is handed out again to another poller after
      ``reclaim_older_than_ms``, so two workers can hold the same work id,
      and between our ack and our claim (the ack-then-claim window) the
      other's claim is accepted as readily as ours; (3) a worker that
      acknowledged the item in an earlier round and paused past that
      acknowledgement's TTL (the item went back to ``queued``, and we polled
      and acknowledged it) sends its claim into our window when it wakes,
      well-behaved as it is; (4) before the first
      answer the client knows no lower bound on the granted TTL but the
      protocol's 1 s, so after an ambiguous claim that was not applied the
      acknowledged item may have gone back to ``queued`` and been claimed
      anew by the time the retry is answered. The 412 names the stored value,
      not its writer, and a wrong adoption is two holders of one item. So a
      412 to a claim ends the lease as ``lost``. The cost: the item sits
      held by nobody until its lease (of one TTL) runs out, then returns to
      the queue; the simulator counts no false loss for it, since no lease
      was ever held.

    ``make_policy("leasekit:v1")`` gives v1's parameters (:data:`LEASEKIT_PRESETS`).
    """

    name = "leasekit"
    local_deadline_rule = True

    def __init__(
        self,
        *,
        ttl_seconds: int | None = None,
        beat_fraction: float = 1 / 3,
        jitter_fraction: float = 0.1,
        max_requests_per_ttl: int = 15,
        spacing: str = "window",
        adaptive_timeout: bool = True,
        rto_initial_s: float | None = None,
        rto_min_s: float = 0.2,
        rto_max_s: float | None = None,
        rto_backoff: float = 2.0,
        attempt_timeout_s: float | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 5.0,
        clock_drift: float = 1e-4,
        assumed_ttl_seconds: float = 90.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        if not 0 < beat_fraction < 1:
            raise ValueError(f"beat_fraction must be in (0, 1), got {beat_fraction}")
        if not 0 <= jitter_fraction < 1:
            raise ValueError(f"jitter_fraction must be in [0, 1), got {jitter_fraction}")
        if not 0 <= clock_drift < 0.1:
            raise ValueError(f"clock_drift must be in [0, 0.1), got {clock_drift}")
        if beat_fraction * (1 + jitter_fraction) >= 1 - clock_drift:
            # a beat jittered late would be due after the local deadline: the
            # policy would give the lease up right after a healthy renewal
            raise ValueError(
                f"beat_fraction * (1 + jitter_fraction) must be below 1 - clock_drift, got "
                f"{beat_fraction} * (1 + {jitter_fraction})"
            )
        if spacing not in _SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(_SPACINGS)}, got {spacing!r}")
        if max_requests_per_ttl < 0 or max_requests_per_ttl != int(max_requests_per_ttl):
            raise ValueError(
                f"max_requests_per_ttl must be a whole number >= 0 (0: no cap), "
                f"got {max_requests_per_ttl}"
            )
        if retry_initial_s <= 0 or retry_max_s < retry_initial_s:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s")
        for option, value in (
            ("attempt_timeout_s", attempt_timeout_s),
            ("rto_initial_s", rto_initial_s),
            ("rto_max_s", rto_max_s),
            ("rto_min_s", rto_min_s),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{option} must be positive, got {value}")
        if rto_max_s is not None and rto_max_s < rto_min_s:
            raise ValueError(f"rto_max_s ({rto_max_s}) must not be below rto_min_s ({rto_min_s})")
        if not rto_backoff >= 1:
            raise ValueError(f"rto_backoff must be >= 1, got {rto_backoff}")
        self.desired_ttl_seconds = ttl_seconds
        self.beat_fraction = beat_fraction
        self.jitter_fraction = jitter_fraction
        self.max_requests_per_ttl = int(max_requests_per_ttl)
        self.spacing = spacing
        self.adaptive_timeout = bool(adaptive_timeout)
        self.rto_initial_s = rto_initial_s
        self.rto_min_s = rto_min_s
        self.rto_max_s = rto_max_s
        self.rto_backoff = rto_backoff
        self.attempt_timeout_s = attempt_timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.clock_drift = clock_drift
        self.rng = rng or random.Random()
        self.ttl_seconds = float(ttl_seconds or assumed_ttl_seconds)
        self.adoptions = 0
        """How many self-inflicted 412s were adopted."""
        self.srtt_s: float | None = None
        """The smoothed round trip (seconds), ``None`` before the first answer."""
        self.rttvar_s = 0.0
        """The round trip's smoothed variation (seconds)."""
        self._claim_deadline = math.inf
        self._failures = 0
        self._timeouts_in_row = 0
        self._overloads_in_row = 0
        # scheduled send times within the last TTL, oldest first: the load budget
        self._recent_sends: deque[float] = deque()
        # send times of attempts since the last answered success that may
        # have been applied without us seeing the answer
        self._ambiguous_sent: list[float] = []

    def parameters(self) -> dict[str, Any]:
        return {
            "ttl_seconds": self.desired_ttl_seconds,
            "beat_fraction": self.beat_fraction,
            "jitter_fraction": self.jitter_fraction,
            "max_requests_per_ttl": self.max_requests_per_ttl,
            "spacing": self.spacing,
            "adaptive_timeout": self.adaptive_timeout,
            "rto_initial_s": self.rto_initial_s,
            "rto_min_s": self.rto_min_s,
            "rto_max_s": self.rto_max_s,
            "rto_backoff": self.rto_backoff,
            "attempt_timeout_s": self.attempt_timeout_s,
            "retry_initial_s": self.retry_initial_s,
            "retry_max_s": self.retry_max_s,
            "clock_drift": self.clock_drift,
        }

    # ------------------------------------------------------------ timeouts

    @property
    def rto_s(self) -> float:
        """The attempt timeout now (seconds), before any cut to the window."""
        return self._rto(backed_off=True)

    def _rto(self, *, backed_off: bool) -> float:
        if self.attempt_timeout_s is not None:
            return self.attempt_timeout_s
        initial = (
            self.rto_initial_s
            if self.rto_initial_s is not None
            else _tenth_of_ttl(self.ttl_seconds)
        )
        if not self.adaptive_timeout:
            return initial
        ceiling = self.rto_max_s if self.rto_max_s is not None else self.ttl_seconds / 4
        ceiling = max(ceiling, self.rto_min_s)
        if self.srtt_s is None:
            base = initial
        else:
            base = self.srtt_s + max(_RTT_GRANULARITY_S, _RTT_K * self.rttvar_s)
        base = min(ceiling, max(self.rto_min_s, base))
        if backed_off and self._timeouts_in_row:
            base = min(ceiling, base * self.rto_backoff**self._timeouts_in_row)
        return base

    def _sample(self, rtt_s: float) -> None:
        if self.srtt_s is None:
            self.srtt_s, self.rttvar_s = rtt_s, rtt_s / 2
        else:
            self.rttvar_s += _RTT_BETA * (abs(self.srtt_s - rtt_s) - self.rttvar_s)
            self.srtt_s += _RTT_ALPHA * (rtt_s - self.srtt_s)
        self._timeouts_in_row = 0

    # ------------------------------------------------------------ budget

    def _limit(self) -> float:
        limit = self.deadline if self.held else self._claim_deadline
        assert limit is not None
        return limit

    def _attempts_left(self, now: float, limit: float) -> int:
        """How many attempts the budget allows from ``now`` until ``limit``."""
        cap = self.max_requests_per_ttl
        if not cap:
            return max(1, int((limit - now) / max(self.rto_s, self.rto_min_s)))
        # sends still inside the TTL-long window that ends at the deadline
        horizon = limit - self.ttl_seconds
        used = sum(1 for sent in self._recent_sends if sent > horizon)
        return max(1, cap - used)

    def _attempt(self, at: float, timeout_s: float | None = None) -> Action:
        cap = self.max_requests_per_ttl
        recent = self._recent_sends
        ttl = self.ttl_seconds
        if cap:
            while recent and recent[0] <= at - ttl:
                recent.popleft()
            if len(recent) >= cap:
                # the oldest send that still counts must leave the window first
                at = max(at, recent[-cap] + ttl)
        limit = self._limit()
        if at >= limit:
            return self._stop(
                EndReason.ASSUMED_LOST,
                "local lease deadline passed without a successful heartbeat"
                if self.held
                else "could not claim the lease within one TTL",
            )
        if cap:
            recent.append(at)
        timeout = self.rto_s if timeout_s is None else timeout_s
        return self._send(at, min(timeout, limit - at), self.desired_ttl_seconds)

    def _jitter(self) -> float:
        return 1 + self.jitter_fraction * (2 * self.rng.random() - 1)

    def _retry(self, result: Result) -> Action:
        now = result.received_at
        overloaded = result.status in _OVERLOAD_STATUSES or result.retry_after_s is not None
        self._overloads_in_row = self._overloads_in_row + 1 if overloaded else 0
        retry_after = result.retry_after_s or 0.0
        if self.spacing == "exponential":
            delay = min(self.retry_max_s, self.retry_initial_s * 2.0**self._failures)
            self._failures += 1
            return self._attempt(now + max(retry_after, delay * self._jitter()))
        limit = self._limit()
        window = limit - now
        slot = window / self._attempts_left(now, limit)
        # a timeout may grow (a slower network) but only within its slot, so
        # that lost answers do not use up the window
        timeout = min(self.rto_s, max(slot, self._rto(backed_off=False)))
        gap = max(0.0, slot - timeout)
        if overloaded:
            gap = min(2 * max(slot, gap) * 2.0 ** (self._overloads_in_row - 1), window / 2)
        gap *= self._jitter()
        if retry_after > gap:
            gap = retry_after
        return self._attempt(now + gap, timeout)

    # ------------------------------------------------------------ driving

    def start(self, now: float) -> Action:
        # Keep trying to claim for one (assumed) TTL: a claim the server
        # applied but whose answer we lost leaves the item ours until then.
        self._claim_deadline = now + self.ttl_seconds
        return self._attempt(now)

    def _anchor(self, sent_at: float, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self.deadline = self._send_anchored(sent_at, ttl_seconds, self.clock_drift)

    def _next_beat(self, anchor: float, now: float) -> Action:
        return self._attempt(
            max(now, anchor + self.ttl_seconds * self.beat_fraction * self._jitter())
        )

    def observe(self, result: Result) -> Action:
        outcome = result.outcome
        if outcome is not _TIMEOUT and (outcome is not _TRANSIENT or result.status is not None):
            self._sample(result.received_at - result.sent_at)
        if outcome is _OK:
            assert result.answer is not None
            answer = result.answer
            self.last_heartbeat = answer.last_heartbeat
            self.held = True
            self._failures = 0
            self._overloads_in_row = 0
            self._ambiguous_sent.clear()
            self._anchor(result.sent_at, float(answer.ttl_seconds or self.ttl_seconds))
            if _shutdown_signal(answer):
                return self._stop(
                    EndReason.SHUTDOWN,
                    f"state {answer.state.value}, lease_extended {answer.lease_extended}",
                )
            return self._next_beat(result.sent_at, result.received_at)
        if outcome is _PRECONDITION_FAILED:
            return self._on_precondition_failed(result)
        if outcome is _REJECTED:
            return self._stop(EndReason.REJECTED, f"heartbeat rejected with {result.status}")
        # Transient or timeout: the server may have applied it.
        if outcome is _TIMEOUT:
            self._timeouts_in_row += 1
        self._ambiguous_sent.append(result.sent_at)
        return self._retry(result)

    def _on_precondition_failed(self, result: Result) -> Action:
        current = result.current_state
        adoptable = (
            self.held
            and self._ambiguous_sent
            and current is not None
            and current.state is WorkState.ACTIVE
            and current.last_heartbeat is not None
            and current.last_heartbeat != self.last_heartbeat
            and self.deadline is not None
            and result.received_at < self.deadline
        )
        if not adoptable:
            state = current.state.value if current is not None else "unknown"
            claim = "" if self.held else ", answering a claim"
            return self._stop(
                EndReason.LOST, f"412 heartbeat precondition failed (server state {state}{claim})"
            )
        assert current is not None and current.last_heartbeat is not None
        self.adoptions += 1
        self.last_heartbeat = current.last_heartbeat
        self._anchor(min(self._ambiguous_sent), float(current.ttl_seconds or self.ttl_seconds))
        self._ambiguous_sent.clear()
        self._failures = 0
        # Renew at once with the adopted value: it refreshes the anchor.
        return self._attempt(result.received_at)


class FixedPolicy(HeartbeatPolicy):
    """The textbook heartbeat of the failure-detector papers.

    Sends every ``interval_s`` seconds from the previous send, whatever the
    answers (timeouts and errors included), echoing the last value it saw.
    Ends only on 412 (lost), a rejection, or a shutdown signal; a worker
    that runs it polls, acks and claims again at once after losing a lease.
    Each attempt times out after ``interval_s``.
    """

    name = "fixed"

    def __init__(self, interval_s: float, *, ttl_seconds: int | None = None) -> None:
        super().__init__()
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self.desired_ttl_seconds = ttl_seconds

    def parameters(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "ttl_seconds": self.desired_ttl_seconds}

    def start(self, now: float) -> Action:
        return self._send(now, self.interval_s, self.desired_ttl_seconds)

    def observe(self, result: Result) -> Action:
        outcome = result.outcome
        if outcome is _OK:
            assert result.answer is not None
            answer = result.answer
            self.last_heartbeat = answer.last_heartbeat
            self.held = True
            if answer.ttl_seconds > 0:
                self.ttl_seconds = float(answer.ttl_seconds)
            self.deadline = result.received_at + self.ttl_seconds
            self._renewed(result.sent_at)
            if _shutdown_signal(answer):
                return self._stop(EndReason.SHUTDOWN, f"state {answer.state.value}")
        elif outcome is _PRECONDITION_FAILED:
            return self._stop(EndReason.LOST, "412 heartbeat precondition failed")
        elif outcome is _REJECTED:
            return self._stop(EndReason.REJECTED, f"heartbeat rejected with {result.status}")
        at = max(result.received_at, result.sent_at + self.interval_s)
        return self._send(at, self.interval_s, self.desired_ttl_seconds)


_POLICIES: Final[dict[str, type[HeartbeatPolicy]]] = {
    "sdk": SdkPolicy,
    "leasekit": LeasekitPolicy,
    "fixed": FixedPolicy,
}
_PRESETS: Final[dict[str, dict[str, dict[str, Any]]]] = {"leasekit": LEASEKIT_PRESETS}
_ALIASES: Final[dict[str, dict[str, str]]] = {"fixed": {"interval": "interval_s"}}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _option_parsers(factory: type[HeartbeatPolicy]) -> dict[str, Any]:
    """Each constructor option (but ``rng``) and how to read its value, from
    the constructor's own signature: one list of options, the code's."""
    parsers: dict[str, Any] = {}
    for parameter in inspect.signature(factory).parameters.values():
        if parameter.name == "rng":
            continue
        annotation = str(parameter.annotation)
        for word, parser in (("bool", _parse_bool), ("int", int), ("float", float)):
            if word in annotation.replace("|", " ").split():
                parsers[parameter.name] = parser
                break
        else:
            parsers[parameter.name] = str
    return parsers


def _valid_options(name: str) -> str:
    parsers = _option_parsers(_POLICIES[name])
    words = ", ".join([*_ALIASES.get(name, {}), *parsers])
    presets = _PRESETS.get(name)
    return words + (f" (parameter sets: {', '.join(presets)})" if presets else "")


@functools.lru_cache(maxsize=64)
def _parse_spec(spec: str) -> tuple[type[HeartbeatPolicy], tuple[tuple[str, Any], ...], bool]:
    """A spec's policy class, its options and whether it takes an ``rng``
    (cached: a simulation makes a policy per lease, and reading the
    constructor's signature was most of the 30 us that cost)."""
    name, _, rest = spec.strip().partition(":")
    factory = _POLICIES.get(name)
    if factory is None:
        raise ValueError(
            f"policy {spec!r}: unknown policy {name!r} (sdk, leasekit, fixed:interval=SECONDS)"
        )
    parsers = _option_parsers(factory)
    aliases = _ALIASES.get(name, {})
    presets = _PRESETS.get(name, {})
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = (text.strip() for text in part.partition("="))
        if not eq:
            if part in presets:
                options.update(presets[part])
                continue
            raise ValueError(
                f"policy {spec!r}: option {part!r} is not name=value"
                + (f" nor a parameter set ({', '.join(presets)})" if presets else "")
            )
        parser = parsers.get(aliases.get(key, key))
        if parser is None:
            raise ValueError(
                f"policy {spec!r}: {name} has no option {key!r}; "
                f"valid options: {_valid_options(name)}"
            )
        try:
            options[aliases.get(key, key)] = parser(value)
        except ValueError:
            kind = {int: "an integer", float: "a number", _parse_bool: "true or false"}.get(
                parser, "a word"
            )
            raise ValueError(f"policy {spec!r}: option {key!r}: not {kind}: {value!r}") from None
    takes_rng = "rng" in inspect.signature(factory).parameters
    return factory, tuple(options.items()), takes_rng


def make_policy(spec: str, *, rng: random.Random | None = None) -> HeartbeatPolicy:
    """Build a policy from a short spec: ``sdk``, ``leasekit``, ``fixed:interval=10``.

    Options follow a colon as ``name=value`` pairs separated by commas and
    map to the constructor's keyword arguments (``fixed`` also takes
    ``interval``, seconds). A bare word names a parameter set
    (``leasekit:v1``, see :data:`LEASEKIT_PRESETS`); later options override
    it. Raises :class:`ValueError` naming the bad part and, for an unknown
    option, the valid ones.
    """
    factory, options, takes_rng = _parse_spec(spec)
    kwargs = dict(options)
    if takes_rng:
        kwargs["rng"] = rng
    try:
        return factory(**kwargs)
    except TypeError:
        # a required option left out (fixed needs its interval)
        name = spec.strip().partition(":")[0]
        aliases = _ALIASES.get(name, {})
        missing = [
            parameter.name
            for parameter in inspect.signature(factory).parameters.values()
            if parameter.default is inspect.Parameter.empty and parameter.name not in kwargs
        ]
        names = ", ".join(next((a for a, k in aliases.items() if k == m), m) for m in missing)
        raise ValueError(f"policy {spec!r}: {name} needs option(s) {names}") from None
    except ValueError as error:
        raise ValueError(f"policy {spec!r}: {error}") from None
