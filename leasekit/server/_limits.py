"""Per-environment limits: a token bucket on requests, a cap on queued items.

One tenant must not be able to take the server from the others: a flood of
requests or of new items answers 429 ``rate_limit_error`` with a
``Retry-After`` header (whole seconds) instead.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from typing import Final

from ..protocol import ApiError, ErrorType

QUEUE_FULL_RETRY_AFTER_S: Final = 5
"""The ``Retry-After`` of a create refused because the queue is full: items
leave the queue at the pace of the tenant's workers, which we cannot know."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-environment limits; ``None`` turns one off.

    ``requests_per_second``: the sustained request rate of one environment
    (every call, authenticated); ``burst``: how many requests above that rate
    it may send at once (default: one second's worth, at least 10).
    ``max_queued``: how many queued items (handed out or not) it may have; a
    create beyond that is refused.
    """

    requests_per_second: float | None = None
    burst: int | None = None
    max_queued: int | None = None

    def __post_init__(self) -> None:
        rate = self.requests_per_second
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"requests_per_second: must be > 0, got {rate}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst: must be >= 1, got {self.burst}")
        if self.max_queued is not None and self.max_queued < 0:
            raise ValueError(f"max_queued: must be >= 0, got {self.max_queued}")


class RateLimited(ApiError):
    """429 ``rate_limit_error``; ``retry_after_s`` goes into ``Retry-After``."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(ErrorType.RATE_LIMIT, message)
        self.retry_after_s = retry_after_s


class RequestRates:
    """Token buckets, one per environment, refilled from a monotonic clock in
    seconds that the caller passes in."""

    __slots__ = ("_buckets", "_burst", "_rate")

    def __init__(self, requests_per_second: float, burst: int | None) -> None:
        self._rate = requests_per_second
        self._burst = float(burst if burst is not None else max(10, math.ceil(requests_per_second)))
        # environment -> (tokens, when counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, environment_id: str, now_s: float) -> None:
        """Take one token, or raise :class:`RateLimited` saying when one is back."""
        tokens, at = self._buckets.get(environment_id, (self._burst, now_s))
        tokens = min(self._burst, tokens + (now_s - at) * self._rate)
        if tokens < 1.0:
            self._buckets[environment_id] = (tokens, now_s)
            wait_s = (1.0 - tokens) / self._rate
            raise RateLimited(
                f"environment {environment_id!r}: more than {self._rate:g} requests per second",
                max(1, math.ceil(wait_s)),
            )
        self._buckets[environment_id] = (tokens - 1.0, now_s)


class TurnShare:
    """At most ``per_turn`` requests of one environment start per turn of the
    event loop; the others wait, in arrival order, for the next turns.

    For the routes whose work is bulk (a list page, stats, a create): a
    tenant with many connections could otherwise put one such request per
    connection into the same turn, and another tenant's heartbeat that
    arrived in that turn waited for all of them (benchmarks/bench_soak.py:
    two list-page floods alone doubled the keepers' p99). Each tenant's
    bulk requests still run at the pace of the turns, and its heartbeats
    are not affected.
    """

    __slots__ = ("_new_turn_scheduled", "_started", "_waiting", "per_turn")

    def __init__(self, per_turn: int = 1) -> None:
        if per_turn < 1:
            raise ValueError(f"per_turn: must be >= 1, got {per_turn}")
        self.per_turn = per_turn
        self._started: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._new_turn_scheduled = False

    async def take(self, environment_id: str) -> None:
        """Return when the request may start (at once, or in a later turn)."""
        started = self._started.get(environment_id, 0)
        if started < self.per_turn and environment_id not in self._waiting:
            self._started[environment_id] = started + 1
            self._schedule_new_turn()
            return
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(environment_id, deque()).append(ticket)
        self._schedule_new_turn()
        await ticket

    def _schedule_new_turn(self) -> None:
        if not self._new_turn_scheduled:
            self._new_turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._new_turn)

    def _new_turn(self) -> None:
        """The next turn: each environment's waiting requests may start, up to
        ``per_turn`` of them (a cancelled one, its client gone, is skipped)."""
        self._new_turn_scheduled = False
        self._started.clear()
        for environment_id, tickets in list(self._waiting.items()):
            let_in = 0
            while tickets and let_in < self.per_turn:
                ticket = tickets.popleft()
                if not ticket.done():
                    ticket.set_result(None)
                    let_in += 1
            self._started[environment_id] = let_in
            if not tickets:
                del self._waiting[environment_id]
        if self._waiting:
            self._schedule_new_turn()
