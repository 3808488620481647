"""Delay distributions named by short specs, shared by the server's fault
injection (``--latency``) and the simulator's network model.

A spec is ``kind:arg,arg``; every value is in seconds unless said otherwise:

=====================  ==========================================================
``const:D``            always ``D``
``uniform:A,B``        uniform on ``[A, B]``
``exp:M``              exponential with mean ``M``
``shiftexp:S,M``       ``S`` plus an exponential with mean ``M``
``lognormal:MU,SIGMA`` ``exp(N(MU, SIGMA))`` (``MU``, ``SIGMA`` of the log, not seconds)
``pareto:XM,ALPHA``    Pareto tail: scale ``XM`` seconds, shape ``ALPHA`` (> 1 for a mean)
``empirical:FILE``     resample the delays in a file (one number a line)
=====================  ==========================================================

Sampling uses a caller's :class:`random.Random`, so a seeded run is
reproducible; draws are scalar because the simulator needs one at a time.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Delay", "parse_delay"]


@dataclass(frozen=True, slots=True)
class Delay:
    """A delay distribution, seconds. Build one with :func:`parse_delay`."""

    kind: str
    params: tuple[float, ...]
    samples: tuple[float, ...] = ()

    @property
    def spec(self) -> str:
        """The spec that :func:`parse_delay` reads back to this distribution."""
        if self.kind == "empirical":
            return f"empirical:<{len(self.samples)} samples>"
        return f"{self.kind}:" + ",".join(f"{p:g}" for p in self.params)

    @property
    def mean(self) -> float:
        """Mean delay in seconds (``inf`` for a Pareto tail with ``ALPHA <= 1``)."""
        kind, p = self.kind, self.params
        if kind == "const":
            return p[0]
        if kind == "uniform":
            return (p[0] + p[1]) / 2
        if kind == "exp":
            return p[0]
        if kind == "shiftexp":
            return p[0] + p[1]
        if kind == "lognormal":
            return math.exp(p[0] + p[1] ** 2 / 2)
        if kind == "pareto":
            return math.inf if p[1] <= 1 else p[1] * p[0] / (p[1] - 1)
        return sum(self.samples) / len(self.samples)

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds."""
        kind, p = self.kind, self.params
        if kind == "const":
            return p[0]
        if kind == "uniform":
            return rng.uniform(p[0], p[1])
        if kind == "exp":
            return rng.expovariate(1 / p[0]) if p[0] > 0 else 0.0
        if kind == "shiftexp":
            return p[0] + (rng.expovariate(1 / p[1]) if p[1] > 0 else 0.0)
        if kind == "lognormal":
            return rng.lognormvariate(p[0], p[1])
        if kind == "pareto":
            return p[0] * rng.paretovariate(p[1])
        return self.samples[rng.randrange(len(self.samples))]

    def sampler(self, rng: random.Random) -> Callable[[], float]:
        """``sample(rng)`` as a call with no arguments, drawing exactly what it
        draws: for an exponential, ``rng.expovariate`` itself (the simulator's
        network draws one per message; skipping the dispatch and a call saves
        about 4% of the instructions of a heartbeat in ``benchmarks/bench_sim.py
        --fixed``, callgrind)."""
        if self.kind == "exp" and self.params[0] > 0:
            return functools.partial(rng.expovariate, 1 / self.params[0])
        return functools.partial(self.sample, rng)

    @classmethod
    def empirical(cls, samples: Sequence[float]) -> Delay:
        """Resample observed delays (seconds); raises ValueError if empty or negative."""
        values = tuple(float(v) for v in samples)
        if not values:
            raise ValueError("empirical delay: no samples")
        if min(values) < 0 or not all(math.isfinite(v) for v in values):
            raise ValueError("empirical delay: samples must be finite and >= 0")
        return cls("empirical", (), values)


_ARITY = {"const": 1, "uniform": 2, "exp": 1, "shiftexp": 2, "lognormal": 2, "pareto": 2}


def parse_delay(spec: str) -> Delay:
    """Read a delay spec (see the module docstring); ValueError names the bad part."""
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "empirical":
        path = Path(rest.strip())
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise ValueError(f"delay spec {spec!r}: cannot read {path}: {error}") from None
        values = []
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                values.append(float(text))
            except ValueError:
                raise ValueError(f"{path}:{number}: not a number: {text!r}") from None
        try:
            return Delay.empirical(values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    if kind not in _ARITY or not sep:
        raise ValueError(
            f"delay spec {spec!r}: expected KIND:ARGS with KIND one of "
            f"{', '.join([*_ARITY, 'empirical'])}"
        )
    try:
        params = tuple(float(part) for part in rest.split(","))
    except ValueError:
        raise ValueError(f"delay spec {spec!r}: arguments must be numbers") from None
    if len(params) != _ARITY[kind]:
        raise ValueError(f"delay spec {spec!r}: {kind} takes {_ARITY[kind]} argument(s)")
    if not all(math.isfinite(p) for p in params):
        raise ValueError(f"delay spec {spec!r}: arguments must be finite")
    if kind == "uniform" and not 0 <= params[0] <= params[1]:
        raise ValueError(f"delay spec {spec!r}: uniform needs 0 <= A <= B")
    if kind == "lognormal":
        if params[1] < 0:
            raise ValueError(f"delay spec {spec!r}: SIGMA must be >= 0")
    elif kind == "pareto":
        if params[0] <= 0 or params[1] <= 0:
            raise ValueError(f"delay spec {spec!r}: XM and ALPHA must be > 0")
    elif min(params) < 0:
        raise ValueError(f"delay spec {spec!r}: delays must be >= 0")
    return Delay(kind, params)
