"""The fast engine's random draws, nominal or tilted, with their likelihood ratios.

Every draw of the network and of worker pauses goes through one of the
classes here. Each draw is made under a *tilted* law (losses, long delays and
pauses more often than nature makes them) and adds ``log(nominal density /
tilted density)`` of what it drew to ``acc[0]``, the log likelihood ratio of
the segment being simulated; with no tilt the ratio is 1. Each also counts
what it drew in ``acc`` (at the indices it was given), which is all the
cross-entropy method needs to choose the next tilt.

Delays are drawn by inversion, ``quantile(delay, u)`` with ``u`` uniform on
[0, 1): the laws of :class:`leasekit.distributions.Delay` (``Delay.sample``
draws them with ``random.Random``'s own methods, so the two agree in law, not
draw for draw; a test checks every kind). Tilting ``u`` tilts every kind the
same way: a mixture that with probability ``beta`` draws ``u`` from its top
``1 - u0`` only (``u0`` one of :data:`LEVELS`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final

from .distributions import Delay

LEVELS: Final = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
"""Where a tilted delay's tail component starts, as a quantile of the nominal law."""

_STANDARD_NORMAL: Final = NormalDist()


def quantile(delay: Delay, u: float, ordered: tuple[float, ...] = ()) -> float:
    """The ``u``-quantile (``0 <= u < 1``) of ``delay``, seconds; an empirical
    delay needs its samples ``ordered`` (sorted)."""
    kind, p = delay.kind, delay.params
    if kind == "const":
        return p[0]
    if kind == "uniform":
        return p[0] + u * (p[1] - p[0])
    if kind == "exp":
        return -p[0] * math.log1p(-u)
    if kind == "shiftexp":
        return p[0] - p[1] * math.log1p(-u)
    if kind == "lognormal":
        z = _STANDARD_NORMAL.inv_cdf(min(max(u, 1e-300), 1 - 1e-16))
        return math.exp(p[0] + p[1] * z)
    if kind == "pareto":
        return float(p[0] * (1 - u) ** (-1 / p[1]))
    return ordered[min(int(u * len(ordered)), len(ordered) - 1)]


class Bernoulli:
    """A yes/no draw: nominal probability ``p``, tilted ``q``; counts trials
    at ``acc[index]`` and yeses at ``acc[index + 1]``."""

    __slots__ = ("index", "log_no", "log_yes", "p", "q")

    def __init__(self, p: float, q: float, index: int) -> None:
        if p in (0.0, 1.0):
            q = p  # nothing to tilt: a tilt would make the ratio 0 or infinite
        self.p = p
        self.q = q
        self.index = index
        self.log_yes = math.log(p / q) if q > 0 else 0.0
        self.log_no = math.log((1 - p) / (1 - q)) if q < 1 else 0.0

    def draw(self, rng: random.Random, acc: list[float]) -> bool:
        q = self.q
        if q == 1.0:
            return True
        i = self.index
        acc[i] += 1
        if rng.random() < q:
            acc[i + 1] += 1
            acc[0] += self.log_yes
            return True
        acc[0] += self.log_no
        return False


class Tail:
    """A delay drawn by inversion, its ``u`` tilted toward the top: with
    probability ``beta`` from ``[LEVELS[level], 1)``. Counts draws at
    ``acc[index]`` and, per level, the draws at or above it after that."""

    __slots__ = ("beta", "constant", "delay", "index", "log_in", "log_out", "ordered", "u0")

    def __init__(self, delay: Delay, beta: float, level: int, index: int) -> None:
        self.delay = delay
        self.ordered = tuple(sorted(delay.samples))
        self.constant = delay.params[0] if delay.kind == "const" else None
        self.beta = 0.0 if self.constant is not None else beta
        self.u0 = LEVELS[level]
        self.index = index
        tail = self.beta / (1 - self.u0)
        self.log_in = -math.log((1 - self.beta) + tail)
        self.log_out = -math.log(1 - self.beta)

    def draw(self, rng: random.Random, acc: list[float]) -> float:
        constant = self.constant
        if constant is not None:
            return constant
        beta = self.beta
        if beta > 0 and rng.random() < beta:
            u = self.u0 + (1 - self.u0) * rng.random()
        else:
            u = rng.random()
        if beta > 0:
            acc[0] += self.log_in if u >= self.u0 else self.log_out
        i = self.index
        acc[i] += 1
        for k, level in enumerate(LEVELS, i + 1):
            if u < level:
                break
            acc[k] += 1
        return quantile(self.delay, u, self.ordered)


TAIL_SLOTS: Final = 1 + len(LEVELS)


@dataclass
class ChannelTilt:
    """The tilted law of one direction (nominal values where untilted)."""

    loss: float
    p_enter: float
    p_exit: float
    loss_bad: float
    delay_beta: float = 0.0
    delay_level: int = 0


CHANNEL_SLOTS: Final = 8 + TAIL_SLOTS


class Channel:
    """One direction: Gilbert-Elliott state (as :mod:`leasekit.sim` draws it:
    the state moves before each message, then the loss, then the delay)."""

    __slots__ = ("bad", "bad_loss", "burst", "delay", "enter", "exit", "loss")

    def __init__(
        self,
        delay: Delay,
        loss: float,
        burst: tuple[float, float, float] | None,
        tilt: ChannelTilt,
        index: int,
    ) -> None:
        self.loss = Bernoulli(loss, tilt.loss, index)
        self.burst = burst is not None
        p_enter, p_exit, loss_bad = burst if burst is not None else (0.0, 1.0, 1.0)
        self.enter = Bernoulli(p_enter, tilt.p_enter, index + 2)
        self.exit = Bernoulli(p_exit, tilt.p_exit, index + 4)
        self.bad_loss = Bernoulli(loss_bad, tilt.loss_bad, index + 6)
        self.delay = Tail(delay, tilt.delay_beta, tilt.delay_level, index + 8)
        self.bad = False

    def draw(self, rng: random.Random, acc: list[float]) -> float | None:
        """One message: its one-way delay (seconds) or ``None`` when lost."""
        loss = self.loss
        if self.burst:
            if self.bad:
                self.bad = not self.exit.draw(rng, acc)
            else:
                self.bad = self.enter.draw(rng, acc)
            if self.bad:
                loss = self.bad_loss
        if loss.p > 0 and loss.draw(rng, acc):
            return None
        return self.delay.draw(rng, acc)


PAUSE_SLOTS: Final = 2 + TAIL_SLOTS


class Pauses:
    """A worker's pauses: a Poisson stream (``rate`` per second, tilted
    ``tilted_rate``) of pauses whose durations are drawn from ``duration``;
    overlapping pauses merge, as :mod:`leasekit.sim` merges them.

    Drawn lazily, forward in time: :meth:`resume` is asked about
    non-decreasing times. Counts pauses at ``acc[index]`` and the time
    watched at ``acc[index + 1]``; :meth:`close` adds the stream's ratio.
    """

    __slots__ = ("end", "index", "next", "rate", "rng", "start", "tail", "tilted_rate", "watched")

    def __init__(
        self, rate: float, tilted_rate: float, tail: Tail, index: int, rng: random.Random
    ) -> None:
        self.rate = rate
        self.tilted_rate = tilted_rate if rate > 0 else 0.0
        self.tail = tail
        self.index = index
        self.rng = rng
        self.start = self.end = self.watched = self.next = -math.inf

    def reset(self, t: float) -> None:
        """Begin watching at ``t``, unpaused (a stream without memory may start anywhere)."""
        self.start = self.end = self.watched = t
        self.next = t + self.rng.expovariate(self.tilted_rate) if self.tilted_rate > 0 else math.inf

    def _absorb(self, until: float, acc: list[float]) -> None:
        while self.next <= until:
            at = self.next
            length = self.tail.draw(self.rng, acc)
            acc[self.index] += 1
            if at <= self.end:
                self.end = max(self.end, at + length)
            else:
                self.start, self.end = at, at + length
            self.next = at + self.rng.expovariate(self.tilted_rate)
        if until > self.watched:
            self.watched = until

    def resume(self, t: float, acc: list[float]) -> float:
        """``t``, or the end of the pause ``t`` falls in (seconds)."""
        if self.rate == 0:
            return t
        self._absorb(t, acc)
        if not self.start <= t < self.end:
            return t
        while True:
            end = self.end
            self._absorb(end, acc)
            if self.end == end:
                return end

    def close(self, began: float, acc: list[float]) -> None:
        """Add the likelihood ratio of the stream watched since ``began``."""
        if self.rate == 0:
            return
        exposure = self.watched - began
        acc[self.index + 1] += exposure
        if self.tilted_rate != self.rate:
            count = acc[self.index]
            acc[0] += (
                count * math.log(self.rate / self.tilted_rate)
                - (self.rate - self.tilted_rate) * exposure
            )
