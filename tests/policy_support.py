"""Drive a heartbeat policy by hand in tests: one Result per Send."""

from __future__ import annotations

import random

from leasekit.policy import HeartbeatPolicy, Outcome, Result, Send, Stop
from leasekit.protocol import HeartbeatAnswer, LeaseState, WorkState

TRIP_S = 0.1  # answer time of an answered attempt


def ok(
    ttl: int = 90, value: str = "hb", state: WorkState = WorkState.ACTIVE, extended: bool = True
) -> HeartbeatAnswer:
    return HeartbeatAnswer(value, extended, state, ttl)


class Play:
    """Drives a policy by hand: each call answers the pending ``Send``."""

    def __init__(self, policy: HeartbeatPolicy, now: float = 1000.0) -> None:
        self.policy = policy
        self.action = policy.start(now)
        self.sends: list[Send] = []
        self._keep()

    def _keep(self) -> None:
        if isinstance(self.action, Send):
            self.sends.append(self.action)

    @property
    def send(self) -> Send:
        assert isinstance(self.action, Send), self.action
        return self.action

    @property
    def stop(self) -> Stop:
        assert isinstance(self.action, Stop), self.action
        return self.action

    def result(
        self,
        outcome: Outcome,
        *,
        after: float = TRIP_S,
        answer: HeartbeatAnswer | None = None,
        current_state: LeaseState | None = None,
        status: int | None = None,
    ) -> Play:
        send = self.send
        received = send.at + (send.timeout_s if outcome is Outcome.TIMEOUT else after)
        result = Result(outcome, send.at, received, answer, current_state, status)
        self.action = self.policy.observe(result)
        self._keep()
        return self

    def ok(self, **fields: object) -> Play:
        value = fields.pop("value", f"hb{len(self.sends)}")
        return self.result(Outcome.OK, answer=ok(value=value, **fields))  # type: ignore[arg-type]

    def timeout(self) -> Play:
        return self.result(Outcome.TIMEOUT)

    def transient(self, status: int | None = 503, after: float = TRIP_S) -> Play:
        return self.result(Outcome.TRANSIENT, status=status, after=after)


class FixedRandom(random.Random):
    """An rng whose ``random()`` always answers one value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value
