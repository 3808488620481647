"""Closed-form and numerically integrated models of lease expiry.

Both model :class:`~leasekit.policy.FixedPolicy` (a heartbeat every
``interval_s`` from the previous send, whatever the answers) against a
server with TTL ``ttl_s``, requests lost independently with probability
``loss``, no answer lost and every answer back within the interval. They
give **server expiries per held second**, where a lease is held from the
claim's answer to the 412 that tells the worker its lease is gone (what
:mod:`leasekit.sim` measures).

**Zero delay** (:func:`fixed_expiry_rate`). Heartbeat slots are i.i.d.:
lost with probability ``p``. With ``ttl = k * interval + eps`` (``0 < eps <
interval``) the lease expires exactly when a success is followed by ``k``
losses. From a success, the expected number of slots to a run of ``k``
losses is ``(1 - p**k) / ((1 - p) * p**k)``, and then to the first
non-lost slot (the 412) another ``1 / (1 - p)``: ``1 / ((1 - p) * p**k)``
slots per expiry, so the rate is ``(1 - p) * p**k / interval``.

**Random request delay** (:func:`fixed_expiry_rate_with_delay`). Let a
success arrive with delay ``d`` (the server's deadline is then its arrival
plus ``ttl``). The next non-lost heartbeat comes ``G`` slots later (``G`` is
geometric: ``P(G <= n) = 1 - p**n``) with its own delay ``x``; it renews the
lease iff ``G * interval + x <= d + ttl``, i.e. with probability
``1 - p**floor((d + ttl - x) / interval)``; otherwise the lease expired and
that heartbeat meets the 412. Held time is the sum of the gaps between
successive arrivals, ``G * interval + x - d``. So the expected held time
``h(d)`` left from a success with delay ``d`` solves the renewal equation::

    h(d) = interval / (1 - p) + E[x] - d
           + integral of (1 - p**floor((d + ttl - x) / interval)) h(x) f(x) dx

and the rate is ``1 / E[h(D)]`` (the claim's delay ``D`` is unconditioned).
It is solved on a grid (a Nystrom method). With zero delay it gives the
closed form above. It assumes no reordering (delays below the interval).
"""

from __future__ import annotations

import math

import numpy as np

from .distributions import Delay

__all__ = ["fixed_expiry_rate", "fixed_expiry_rate_with_delay"]


def _check(interval_s: float, ttl_s: float, loss: float) -> None:
    if interval_s <= 0 or ttl_s <= 0:
        raise ValueError("interval_s and ttl_s must be positive")
    if not 0 <= loss < 1:
        raise ValueError(f"loss must be in [0, 1), got {loss}")


def fixed_expiry_rate(interval_s: float, ttl_s: float, loss: float) -> float:
    """Server expiries per held second at zero delay: ``(1 - p) p**k / interval``,
    with ``k = floor(ttl / interval)`` (``ttl`` not a multiple of the interval)."""
    _check(interval_s, ttl_s, loss)
    k = math.floor(ttl_s / interval_s)
    return (1 - loss) * loss**k / interval_s


def _grid(delay: Delay, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints and probability weights that discretise ``delay``."""
    kind, p = delay.kind, delay.params
    if kind == "const":
        return np.array([p[0]]), np.array([1.0])
    if kind == "uniform":
        low, high = p
        if high == low:
            return np.array([low]), np.array([1.0])
        edges = np.linspace(low, high, points + 1)
        return (edges[:-1] + edges[1:]) / 2, np.full(points, 1.0 / points)
    if kind in ("exp", "shiftexp"):
        shift, mean = (0.0, p[0]) if kind == "exp" else p
        if mean == 0:
            return np.array([shift]), np.array([1.0])
        edges = shift + np.linspace(0.0, mean * 30, points + 1)  # tail beyond: < 1e-13
        cdf = 1 - np.exp(-(edges - shift) / mean)
        weights = np.diff(cdf)
        return (edges[:-1] + edges[1:]) / 2, weights / weights.sum()
    raise ValueError(f"delay {delay.spec}: only const, uniform, exp and shiftexp are supported")


def fixed_expiry_rate_with_delay(
    interval_s: float, ttl_s: float, loss: float, delay: Delay, *, points: int = 2000
) -> float:
    """Server expiries per held second with i.i.d. request delays ``delay``
    (see the module docstring), solved on ``points`` grid points."""
    _check(interval_s, ttl_s, loss)
    x, w = _grid(delay, points)
    mean = float(np.dot(w, x))
    # slots available to the next success: floor((d + ttl - x) / interval), d by row
    slots = np.floor((x[:, None] + ttl_s - x[None, :]) / interval_s)
    renew = np.where(slots >= 1, 1 - loss ** np.maximum(slots, 1), 0.0)
    kernel = renew * w[None, :]
    constant = interval_s / (1 - loss) + mean - x
    held = np.linalg.solve(np.eye(len(x)) - kernel, constant)
    return 1.0 / float(np.dot(w, held))
