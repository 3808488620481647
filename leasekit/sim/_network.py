"""The simulator's network: a small interface and the scenario's model of it.

The engine asks the network, for every message, how long it takes or
whether it is lost. Anything with the two methods of :class:`NetworkModel`
can be plugged in (a trace-driven network replays recorded delays and
losses), without touching the engine.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from typing import Protocol

from ..distributions import Delay, parse_delay
from ._scenario import Direction, Fault, Scenario, Window

__all__ = [
    "NetworkFactory",
    "NetworkModel",
    "ScenarioNetwork",
    "Streams",
    "merge_spans",
    "windows_by_worker",
]


class Streams:
    """Independent random streams derived from one seed, one per purpose.

    ``rng("network.request")`` always gives the same sequence for the same
    seed and purpose, whatever else the run draws, so adding a draw in one
    place does not shift every other stream.
    """

    __slots__ = ("seed",)

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def rng(self, purpose: str) -> random.Random:
        """A fresh generator for ``purpose`` (string seeding hashes with SHA-512)."""
        return random.Random(f"leasekit-sim:{self.seed}:{purpose}")


class NetworkModel(Protocol):
    """Delays and losses, per message. Times are simulated seconds.

    ``worker`` is the worker's index, ``kind`` one of ``"heartbeat"``,
    ``"poll"``, ``"ack"``, ``sent_s`` when the message leaves (the worker
    for a request, the server for an answer). Return the one-way delay in
    seconds, or ``None`` when the message is lost. Requests of one worker
    are asked for in the order it sends them.
    """

    def request_delay(self, worker: int, kind: str, sent_s: float) -> float | None: ...

    def answer_delay(self, worker: int, kind: str, sent_s: float) -> float | None: ...


NetworkFactory = Callable[[Scenario, Streams], NetworkModel]
"""Builds a run's network from its scenario and random streams."""


def windows_by_worker(
    windows: tuple[Window, ...], count: int
) -> list[tuple[list[float], list[float]]]:
    """Per worker, its merged windows as sorted ``(starts, ends)`` lists."""
    per: list[list[tuple[float, float]]] = [[] for _ in range(count)]
    for window in windows:
        for worker in window.workers or range(count):
            per[worker].append((window.start_s, window.start_s + window.duration_s))
    return [merge_spans(spans) for spans in per]


def merge_spans(spans: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Sorted, merged ``(starts, ends)`` of ``[start, end)`` spans (empty ones dropped)."""
    starts: list[float] = []
    ends: list[float] = []
    for start, end in sorted(spans):
        if end <= start:
            continue
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def inside(spans: tuple[list[float], list[float]], t: float) -> bool:
    """Whether ``t`` falls in one of the merged ``[start, end)`` spans."""
    starts, ends = spans
    i = bisect.bisect_right(starts, t) - 1
    return i >= 0 and t < ends[i]


class _Link:
    """One direction: delay, independent loss, Gilbert-Elliott state per worker."""

    __slots__ = ("bad", "burst", "constant", "delay", "draw", "loss", "rng")

    def __init__(self, config: Direction, count: int, rng: random.Random) -> None:
        self.delay: Delay = parse_delay(config.delay)
        # a constant delay needs no draw (and no call)
        self.constant = self.delay.params[0] if self.delay.kind == "const" else None
        self.loss = config.loss
        self.burst = config.burst if config.burst is not None and config.burst.p_enter > 0 else None
        self.bad = [False] * count
        self.rng = rng
        self.draw = self.delay.sampler(rng)
        """One delay, drawn as :meth:`sample` draws it when nothing is lost."""

    def fixed(self) -> float | None:
        """The constant delay when :meth:`sample` always returns it without a draw."""
        if self.burst is None and not self.loss:
            return self.constant
        return None

    def plain(self) -> Callable[[], float] | None:
        """:attr:`draw` when :meth:`sample` never loses a message (it then draws
        the delay alone, whoever sends when), else ``None``."""
        if self.burst is None and not self.loss:
            return self.draw
        return None

    def sample(self, worker: int, kind: str, sent_s: float) -> float | None:
        """One message's delay or ``None`` (lost); the :class:`NetworkModel` signature."""
        rng = self.rng
        loss = self.loss
        burst = self.burst
        if burst is not None:
            bad = self.bad[worker]
            bad = (rng.random() >= burst.p_exit) if bad else (rng.random() < burst.p_enter)
            self.bad[worker] = bad
            if bad:
                loss = burst.loss_bad
        if loss and rng.random() < loss:
            return None
        constant = self.constant
        return constant if constant is not None else self.draw()


class _PendingFault:
    __slots__ = ("after_s", "direction", "kind", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.after_s = fault.after_s
        self.direction = fault.direction
        self.kind = fault.kind
        self.remaining = fault.count


class ScenarioNetwork:
    """The scenario's network: per-direction delay and loss (independent and
    bursty), partitions, and single faults."""

    def __init__(self, scenario: Scenario, streams: Streams) -> None:
        config = scenario.network
        count = scenario.workers.count
        self._request = _Link(config.request, count, streams.rng("network.request"))
        self._answer = _Link(config.answer, count, streams.rng("network.answer"))
        self._partitions = windows_by_worker(config.partitions, count)
        self._special = [bool(starts) for starts, _ in self._partitions]
        # worker -> its pending faults, earliest first, consumed as they fire
        self._faults: dict[int, list[_PendingFault]] = {}
        for fault in sorted(config.faults, key=lambda f: f.after_s):
            self._faults.setdefault(fault.worker, []).append(_PendingFault(fault))
            self._special[fault.worker] = True

        if not any(self._special):
            # Nothing depends on the worker or the time: skip a call per message.
            self.request_delay = self._request.sample  # type: ignore[method-assign]
            self.answer_delay = self._answer.sample  # type: ignore[method-assign]

    def fixed_delays(self) -> tuple[float | None, float | None]:
        """Per direction (request, answer), the one delay (seconds) every message
        takes when it is constant and nothing is ever lost (no loss, bursts,
        partitions or faults), else ``None``. Such a message takes no random
        draw, so a driver may use the delay instead of calling."""
        if any(self._special):
            return None, None
        return self._request.fixed(), self._answer.fixed()

    def plain_delays(self) -> tuple[Callable[[], float] | None, Callable[[], float] | None]:
        """Per direction (request, answer), a call with no arguments drawing
        the delay of the next message when no message is ever lost and the
        delay depends on nobody and no time (no loss, bursts, partitions or
        faults), else ``None``. It draws exactly what the
        :class:`NetworkModel` methods would, so a driver may call it instead."""
        if any(self._special):
            return None, None
        return self._request.plain(), self._answer.plain()

    def _cut(self, worker: int, kind: str, sent_s: float, direction: str) -> bool:
        if inside(self._partitions[worker], sent_s):
            return True
        faults = self._faults.get(worker)
        if faults:
            for fault in faults:
                if fault.direction == direction and fault.kind == kind and sent_s >= fault.after_s:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        faults.remove(fault)
                    return True
        return False

    def request_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        if self._special[worker] and self._cut(worker, kind, sent_s, "request"):
            return None
        return self._request.sample(worker, kind, sent_s)

    def answer_delay(self, worker: int, kind: str, sent_s: float) -> float | None:
        if self._special[worker] and self._cut(worker, kind, sent_s, "answer"):
            return None
        return self._answer.sample(worker, kind, sent_s)
