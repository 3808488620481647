"""The worker loop's rules, sans-I/O: poll, ack, hold, poll again.

Beside :mod:`leasekit.policy` (which decides each *heartbeat*), a
:class:`WorkerLoop` decides what a worker does *between* leases, in the
same style: it is told what happened and says what to do next. It owns no
clock, socket or task, and draws its waits from the ``rng`` it is given.
The async worker (:func:`leasekit.client.run_worker`) and the simulator
drive the same object, so the two cannot drift apart::

    loop = WorkerLoop(rng)
    action = loop.start(now)
    while True:
        if isinstance(action, Poll):
            ...wait until action.at, poll (long poll)...
            action = loop.polled(now, outcome, work_id_or_None)
        elif isinstance(action, Ack):
            ...ack action.work_id...
            action = loop.acked(now, outcome)
        elif isinstance(action, Hold):
            ...keep the lease on action.work_id with a heartbeat policy...
            action = loop.released(now)
        elif isinstance(action, Abandon):
            ...force-stop action.work_id (it can never be acked)...
            action = loop.abandoned(now)

The rules are the official SDK worker's (docs/protocol.md, the worker
loop): an empty poll waits ``empty_poll_wait`` (uniform 1-3 s); a failed
poll or ack backs off ``min(60, 2**n) + uniform(0, 1)`` seconds, ``n``
counting the failures in a row of that request (polls and acks apart);
an ack that is refused for good (a final 4xx: the item cannot be ours)
abandons the item; any other failed ack, 409 included (someone else acked
it first, or it is not ready), backs off and polls again; when a lease
ends, for any reason, the worker polls again at once. A poll refused for
good (bad key, unknown environment) ends the loop (:class:`Fail`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .policy import Outcome

__all__ = [
    "BACKOFF_CAP_S",
    "Abandon",
    "Ack",
    "Fail",
    "Hold",
    "LoopAction",
    "Poll",
    "WorkerLoop",
    "backoff_s",
]

BACKOFF_CAP_S: Final = 60.0
"""The longest backoff after failed polls or acks, seconds (before jitter)."""


@dataclass(slots=True, frozen=True)
class Poll:
    """Poll for work at ``at`` (seconds on the driver's clock)."""

    at: float


@dataclass(slots=True, frozen=True)
class Ack:
    """Acknowledge ``work_id`` now (the poll just handed it out)."""

    work_id: str


@dataclass(slots=True, frozen=True)
class Hold:
    """The item is ours: keep its lease with a fresh heartbeat policy until
    it ends, then tell :meth:`WorkerLoop.released`."""

    work_id: str


@dataclass(slots=True, frozen=True)
class Abandon:
    """The ack was refused for good: stop ``work_id`` (forced), then tell
    :meth:`WorkerLoop.abandoned`."""

    work_id: str


@dataclass(slots=True, frozen=True)
class Fail:
    """A poll was refused for good (bad key, unknown environment): the worker
    cannot go on."""


LoopAction = Poll | Ack | Hold | Abandon | Fail


def backoff_s(failures: int, rng: random.Random) -> float:
    """The wait after ``failures`` failed requests in a row (``failures >= 1``):
    ``min(60, 2**failures) + uniform(0, 1)`` seconds."""
    return min(BACKOFF_CAP_S, 2.0**failures) + rng.uniform(0.0, 1.0)


def _uniform_1_3(rng: random.Random) -> float:
    return rng.uniform(1.0, 3.0)


class WorkerLoop:
    """The worker loop's decisions for one worker process (module docstring).

    ``rng`` draws every wait (inject a seeded one for reproducible runs);
    ``empty_poll_wait(rng)`` gives the wait after an empty poll, seconds
    (default: uniform 1-3 s, the official worker's). Readable at any time:
    ``poll_failures`` and ``ack_failures`` (failures in a row) and
    ``work_id`` (the item being acked or held, ``None`` between items).
    """

    __slots__ = ("ack_failures", "empty_poll_wait", "poll_failures", "rng", "work_id")

    def __init__(
        self,
        rng: random.Random,
        *,
        empty_poll_wait: Callable[[random.Random], float] = _uniform_1_3,
    ) -> None:
        self.rng = rng
        self.empty_poll_wait = empty_poll_wait
        self.poll_failures = 0
        self.ack_failures = 0
        self.work_id: str | None = None

    def start(self, now: float) -> Poll:
        """The worker (re)starts: poll at once."""
        self.work_id = None
        return Poll(now)

    def polled(self, now: float, outcome: Outcome, work_id: str | None = None) -> LoopAction:
        """A poll ended with ``outcome`` (``OK``: ``work_id`` is the item handed
        out, ``None`` for an empty poll)."""
        if outcome is Outcome.REJECTED:
            return Fail()
        if outcome is not Outcome.OK:
            self.poll_failures += 1
            return Poll(now + backoff_s(self.poll_failures, self.rng))
        self.poll_failures = 0
        if work_id is None:
            return Poll(now + self.empty_poll_wait(self.rng))
        self.work_id = work_id
        return Ack(work_id)

    def acked(self, now: float, outcome: Outcome) -> LoopAction:
        """The ack of the polled item ended with ``outcome``."""
        work_id = self.work_id
        if work_id is None:
            raise RuntimeError("acked() without an item: call polled() with a work id first")
        if outcome is Outcome.OK:
            self.ack_failures = 0
            return Hold(work_id)
        if outcome is Outcome.REJECTED:
            return Abandon(work_id)
        self.work_id = None
        self.ack_failures += 1
        return Poll(now + backoff_s(self.ack_failures, self.rng))

    def released(self, now: float) -> Poll:
        """The lease of the held item ended (served, lost or given up): poll at once."""
        self.work_id = None
        return Poll(now)

    def abandoned(self, now: float) -> Poll:
        """The refused item was stopped (or the stop failed): poll at once."""
        self.work_id = None
        return Poll(now)
