"""Fault injection for the reference server: lost requests, lost answers,
server errors and added latency, seeded so a run can be repeated.

The faults model a bad network or a struggling server from the client's
point of view:

* ``drop_request``: the request never reaches the server; the connection
  stays open without an answer until the client gives up.
* ``drop_answer``: the request is processed and committed, then the answer
  is lost the same way. The client's next echo then meets a 412: the
  self-inflicted lease loss (docs/protocol.md).
* ``error``: a 500 (``api_error``) or 529 (``overloaded_error``) answer
  without processing.
* ``latency``: a delay added before processing, drawn from a
  :mod:`leasekit.distributions` spec.

Faults apply to heartbeats only, unless ``all_calls`` is set.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from ..distributions import Delay, parse_delay

__all__ = ["FaultAction", "FaultConfig", "Faults"]

FaultAction = Literal["drop_request", "drop_answer", "error"]
_ACTIONS: Final = ("drop_request", "drop_answer", "error")


def _check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: a probability must be between 0 and 1, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """The faults a server starts with.

    ``latency``: a delay spec (``const:0.05``, ``uniform:0.01,0.2``,
    ``exp:0.05``, ``lognormal:MU,SIGMA``, ...) or ``None``; seconds.
    ``drop_request``, ``drop_answer``, ``error_rate``: probabilities per
    request, drawn in that order with one ``random.Random(seed)``.
    ``all_calls``: apply to every call, not only heartbeats.
    """

    latency: str | None = None
    drop_request: float = 0.0
    drop_answer: float = 0.0
    error_rate: float = 0.0
    seed: int | None = None
    all_calls: bool = False

    def __post_init__(self) -> None:
        _check_probability("drop_request", self.drop_request)
        _check_probability("drop_answer", self.drop_answer)
        _check_probability("error_rate", self.error_rate)
        if self.latency is not None:
            parse_delay(self.latency)  # raises ValueError naming the bad part


class Faults:
    """The live fault settings of one app (``app.state.faults``).

    Drive it from the server's event loop (tests do so between requests:
    each call is a few attribute writes, safe under the GIL).
    """

    def __init__(self, config: FaultConfig | None = None) -> None:
        config = config or FaultConfig()
        self.all_calls = config.all_calls
        self.drop_request = config.drop_request
        self.drop_answer = config.drop_answer
        self.error_rate = config.error_rate
        self.latency: Delay | None = None if config.latency is None else parse_delay(config.latency)
        self._rng = random.Random(config.seed)
        self._queued: deque[FaultAction] = deque()

    @property
    def active(self) -> bool:
        """Whether any fault could apply (the hot path skips all of this otherwise)."""
        return bool(
            self._queued
            or self.drop_request
            or self.drop_answer
            or self.error_rate
            or self.latency is not None
        )

    def queue(self, *actions: FaultAction) -> None:
        """One-shot faults for the next matching requests, in order, before
        the random rates: ``"drop_request"``, ``"drop_answer"`` or ``"error"``."""
        for action in actions:
            if action not in _ACTIONS:
                raise ValueError(f"unknown fault {action!r}; expected one of {', '.join(_ACTIONS)}")
        self._queued.extend(actions)

    def set(
        self,
        *,
        drop_request: float | None = None,
        drop_answer: float | None = None,
        error_rate: float | None = None,
        latency: str | None = None,
        all_calls: bool | None = None,
    ) -> None:
        """Change rates at run time; arguments left ``None`` keep their value.
        ``latency=""`` removes the added latency."""
        if drop_request is not None:
            self.drop_request = _check_probability("drop_request", drop_request)
        if drop_answer is not None:
            self.drop_answer = _check_probability("drop_answer", drop_answer)
        if error_rate is not None:
            self.error_rate = _check_probability("error_rate", error_rate)
        if latency is not None:
            self.latency = parse_delay(latency) if latency else None
        if all_calls is not None:
            self.all_calls = all_calls

    def applies_to(self, is_heartbeat: bool) -> bool:
        return is_heartbeat or self.all_calls

    def draw(self) -> tuple[float, FaultAction | None]:
        """The added delay (seconds) and the fault for one matching request."""
        delay = 0.0 if self.latency is None else self.latency.sample(self._rng)
        if self._queued:
            return delay, self._queued.popleft()
        rng = self._rng
        # One draw per kind, always in the same order, so a seed gives one sequence.
        lost_request = rng.random() < self.drop_request
        lost_answer = rng.random() < self.drop_answer
        error = rng.random() < self.error_rate
        if lost_request:
            return delay, "drop_request"
        if error:
            return delay, "error"
        if lost_answer:
            return delay, "drop_answer"
        return delay, None

    def error_status(self) -> int:
        """500 or 529, evenly, for an ``error`` fault."""
        return 529 if self._rng.random() < 0.5 else 500
