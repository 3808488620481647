"""The optimistic-concurrency protocol, step by step, on the real state machine.

:func:`walkthrough` plays a short story against :class:`~leasekit.lease.LeaseBook`
(two workers, a claim, renewals, a stale echo, an expiry and a takeover)
and returns every request with the server's real answer, for teaching: the
``demo`` command prints it and the teaching notebook shows it as a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .lease import LeaseBook, LeaseConfig
from .protocol import NO_HEARTBEAT, ApiError

__all__ = ["Step", "walkthrough"]

_START_US = 1_800_000_000 * 1_000_000  # 2027-01-15T08:00:00Z, a fixed start for reproducibility


@dataclass(frozen=True, slots=True)
class Step:
    """One request and its answer. ``at_s``: seconds since the story began."""

    at_s: float
    worker: str
    request: str
    status: int
    answer: dict[str, Any] | None
    note: str


def walkthrough(ttl_seconds: int = 30) -> list[Step]:
    """Play the teaching story with a lease TTL of ``ttl_seconds`` (>= 5)."""
    book = LeaseBook(LeaseConfig(default_ttl_seconds=ttl_seconds, min_ttl_seconds=5))
    env = "env_demo"
    book.add_environment(env)
    work_id = book.enqueue(env, _START_US, session_id="session_demo").work_id
    steps: list[Step] = []
    seen: dict[str, str] = {}

    def at(seconds: float) -> int:
        return _START_US + round(seconds * 1_000_000)

    def beat(seconds: float, worker: str, expected: str, note: str) -> None:
        request = f"POST heartbeat expected_last_heartbeat={expected}"
        try:
            answer = book.heartbeat(env, work_id, at(seconds), expected)
        except ApiError as error:
            steps.append(Step(seconds, worker, request, error.status, error.details, note))
            return
        seen[worker] = answer.last_heartbeat
        steps.append(Step(seconds, worker, request, 200, answer.to_json(), note))

    record = book.poll(env, at(0), worker_id="worker-a")
    assert record is not None
    steps.append(Step(0, "worker-a", "GET poll", 200, {"id": work_id}, "A is handed the item"))
    book.ack(env, work_id, at(0.1))
    steps.append(Step(0.1, "worker-a", "POST ack", 200, None, "queued -> starting"))
    beat(0.2, "worker-a", NO_HEARTBEAT, "A claims the lease: starting -> active")
    first = seen["worker-a"]
    beat(ttl_seconds / 3, "worker-a", first, "A renews, echoing the value it was given")
    beat(ttl_seconds / 3 + 1, "worker-a", first, "an old echo: 412, and nothing changes")
    second = seen["worker-a"]
    # A pauses longer than the TTL: the lease expires and the item is queued again.
    expired_at = ttl_seconds / 3 + ttl_seconds + 1
    record = book.poll(env, at(expired_at), worker_id="worker-b")
    assert record is not None
    steps.append(
        Step(
            expired_at,
            "worker-b",
            "GET poll",
            200,
            {"id": work_id},
            "A was silent for a whole TTL: the lease expired, B is handed the item",
        )
    )
    book.ack(env, work_id, at(expired_at + 0.1))
    beat(expired_at + 0.2, "worker-b", NO_HEARTBEAT, "B claims the item")
    beat(expired_at + 0.5, "worker-a", second, "A wakes up and echoes its value: 412, A has lost")
    beat(expired_at + 1, "worker-b", seen["worker-b"], "B renews as usual")
    book.stop(env, work_id, at(expired_at + 2), force=False)
    steps.append(
        Step(
            expired_at + 2,
            "operator",
            "POST stop force=false",
            200,
            None,
            "graceful stop: active -> stopping",
        )
    )
    beat(expired_at + 3, "worker-b", seen["worker-b"], "stopping: the answer tells B to wind down")
    return steps
