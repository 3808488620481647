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

**The engine** (:func:`estimate`, ``--engine analytic``) applies these to a
scenario, and adds the quality of service of the server's lease timer seen
as a failure detector (Chen, Toueg and Aguilera, "On the quality of service
of failure detectors", IEEE Trans. Computers 51(5), 2002), for the same
model (:func:`failure_detector_qos`): detection time ``T_D`` (mean and
upper bound), mistake recurrence time ``T_MR``, mistake duration ``T_M``
and query accuracy probability ``P_A``. With request delays ``d`` (of the
success) and ``x`` (of the next one) drawn on the grid, and ``n =
floor((d + ttl - x) / interval)`` the slots that must all be lost for the
gap to exceed the TTL:

* mistakes start at the rate ``(1 - p) / interval * E[p**n]`` per second,
  so ``T_MR = 1 / rate``;
* a mistake lasts from ``d + ttl`` to the next arrival ``G * interval +
  x``, ``G > n``: ``T_M = E[p**n (n * interval + interval / (1 - p) + x - d
  - ttl)] / E[p**n]``;
* ``P_A = 1 - T_M / T_MR``;
* a crash at phase ``u`` (uniform in the interval) after the send of a
  heartbeat, whose last ``i`` predecessors were lost with probability
  ``(1 - p) p**i``, is detected ``max(0, ttl + x - i * interval - u)``
  later: ``T_D`` is its mean; its bound is ``ttl`` plus the longest delay.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ._fast_scope import UnsupportedScenario, check_one_lease
from .distributions import Delay, parse_delay
from .lease import LeaseConfig, LeaseRules
from .metrics import EngineResult, Estimate
from .policy import FixedPolicy, make_policy
from .sim import Scenario

__all__ = [
    "UnsupportedScenario",
    "estimate",
    "failure_detector_qos",
    "fixed_expiry_rate",
    "fixed_expiry_rate_with_delay",
]


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


def failure_detector_qos(
    interval_s: float, ttl_s: float, loss: float, delay: Delay, *, points: int = 2000
) -> dict[str, float]:
    """Chen, Toueg and Aguilera's QoS of the lease timer (see the module
    docstring), seconds and a probability, keyed by glossary names.

    ``detection_seconds_max`` is left out when the delay is unbounded, and the
    mistake times when no mistake can happen (no loss).
    """
    _check(interval_s, ttl_s, loss)
    x, w = _grid(delay, points)
    n = np.floor((x[:, None] + ttl_s - x[None, :]) / interval_s)
    n = np.maximum(n, 0.0)
    pair = w[:, None] * w[None, :]
    lost = pair * loss**n
    mistakes_per_s = (1 - loss) / interval_s * float(lost.sum())
    out: dict[str, float] = {}
    if mistakes_per_s > 0:
        length = n * interval_s + interval_s / (1 - loss) + x[None, :] - x[:, None] - ttl_s
        duration = float((lost * length).sum() / lost.sum())
        out["mistake_recurrence_seconds_mean"] = 1 / mistakes_per_s
        out["mistake_duration_seconds_mean"] = duration
        out["query_accuracy_probability"] = 1 - duration * mistakes_per_s
    else:  # no mistake ever: T_MR and T_M are left out (infinite, undefined)
        out["query_accuracy_probability"] = 1.0
    # E over the crash phase u ~ U[0, interval) of max(0, a - u)
    detection = 0.0
    i = 0
    while True:
        a = ttl_s + x - i * interval_s
        if not (a > 0).any():
            break
        inside = np.where(
            a >= interval_s, a - interval_s / 2, np.where(a > 0, a * a / (2 * interval_s), 0.0)
        )
        detection += (1 - loss) * loss**i * float(np.dot(w, inside))
        i += 1
        if loss == 0 or loss**i < 1e-300:
            break
    out["detection_seconds_mean"] = detection
    upper = _upper(delay)
    if math.isfinite(upper):
        out["detection_seconds_max"] = ttl_s + upper
    return out


def _upper(delay: Delay) -> float:
    """The largest delay (seconds); ``inf`` when unbounded."""
    if delay.kind == "const":
        return delay.params[0]
    if delay.kind == "uniform":
        return delay.params[1]
    if delay.kind in ("exp", "shiftexp"):
        shift, mean = (0.0, delay.params[0]) if delay.kind == "exp" else delay.params
        return shift if mean == 0 else math.inf
    return max(delay.samples) if delay.kind == "empirical" else math.inf


_SUPPORTED_DELAYS = ("const", "uniform", "exp", "shiftexp")
_NO_REORDERING = 1e-12
"""Delays beyond their ``1 - this`` quantile are neglected (exponential tails)."""


def _practical_upper(delay: Delay) -> float:
    if delay.kind in ("exp", "shiftexp"):
        shift, mean = (0.0, delay.params[0]) if delay.kind == "exp" else delay.params
        return shift - mean * math.log(_NO_REORDERING)
    return _upper(delay)


def estimate(scenario: Scenario) -> EngineResult:
    """The analytic engine: exact rates per lease-hour and the failure-detector
    QoS of ``scenario``, or :class:`UnsupportedScenario` naming the assumption
    it violates.

    The model: :class:`~leasekit.policy.FixedPolicy` run as the official
    worker loop runs it (no local deadline), requests lost independently,
    no answer lost, every answer back within the interval (request plus
    answer delay below it; exponential tails past their 1e-12 quantile are
    neglected), request delays ``const``, ``uniform``, ``exp`` or
    ``shiftexp``, no pauses and no crashes, and with a constant delay a TTL
    that is not a whole number of intervals (there the timer slack decides). Every loss is then a
    server expiry answered by a 412. ``requests_per_lease_second`` counts the
    heartbeats the server processes plus a poll, an ack and a claim per
    lease (the poll finds an item at once). ``lease_hours`` is the scenario's
    size (``workers.count`` times the metrics window), for reference.
    """
    began = time.perf_counter()
    check_one_lease(scenario, "analytic")
    workers, network, server = scenario.workers, scenario.network, scenario.server
    policy = make_policy(workers.policy)
    if not isinstance(policy, FixedPolicy):
        raise UnsupportedScenario(
            "workers.policy",
            f"the analytic engine models fixed:interval=SECONDS only, got {workers.policy!r} "
            "(use --engine fast)",
        )
    refusals = (
        (workers.enforce_deadline, "workers.enforce_deadline", "the model has no local deadline"),
        (
            workers.pauses.rate_per_hour > 0,
            "workers.pauses.rate_per_hour",
            "the model assumes a worker that never pauses",
        ),
        (
            workers.crashes.rate_per_hour > 0,
            "workers.crashes.rate_per_hour",
            "the model assumes a worker that never crashes",
        ),
        (
            network.request.burst is not None and network.request.burst.p_enter > 0,
            "network.request.burst",
            "the model assumes independent losses",
        ),
        (
            network.answer.burst is not None and network.answer.burst.p_enter > 0,
            "network.answer.burst",
            "the model assumes no lost answer",
        ),
        (network.answer.loss > 0, "network.answer.loss", "the model assumes no lost answer"),
        (network.request.loss >= 1, "network.request.loss", "every request is lost: no lease"),
    )
    for refused, name, why in refusals:
        if refused:
            raise UnsupportedScenario(name, f"{why} (use --engine fast)")
    request = parse_delay(network.request.delay)
    answer = parse_delay(network.answer.delay)
    if request.kind not in _SUPPORTED_DELAYS:
        raise UnsupportedScenario(
            "network.request.delay",
            f"the model integrates {', '.join(_SUPPORTED_DELAYS)} delays, got {request.spec} "
            "(use --engine fast)",
        )
    interval = policy.interval_s
    if _practical_upper(request) + _practical_upper(answer) >= interval:
        raise UnsupportedScenario(
            "network.request.delay",
            f"the model needs every answer back within the interval ({interval:g} s): request "
            f"{request.spec} plus answer {answer.spec} can take longer (use --engine fast)",
        )
    config = LeaseConfig(server.default_ttl_seconds, server.min_ttl_seconds, server.max_ttl_seconds)
    ttl = LeaseRules(config).resolve_ttl(policy.desired_ttl_seconds, config.default_ttl_seconds)
    slots = ttl / interval
    if request.kind == "const" and abs(slots - round(slots)) < 1e-9:
        raise UnsupportedScenario(
            "server.default_ttl_seconds",
            f"a TTL of {ttl} s is a whole number of intervals ({interval:g} s): whether the "
            "last one arrives in time is decided by the timer slack (use --engine fast)",
        )
    loss = network.request.loss
    if request.kind == "const":
        per_second = fixed_expiry_rate(interval, ttl, loss)
    else:
        per_second = fixed_expiry_rate_with_delay(interval, ttl, loss, request)
    per_hour = per_second * 3600

    def exact(value: float) -> Estimate:
        return Estimate.exact(value, "closed_form")

    metrics = {
        "false_losses_per_lease_hour": exact(per_hour),
        "false_losses_server_expiry_per_lease_hour": exact(per_hour),
        "false_losses_unseen_answer_per_lease_hour": exact(0.0),
        "false_losses_give_up_per_lease_hour": exact(0.0),
        "false_losses_rejection_per_lease_hour": exact(0.0),
        "server_expiries_per_lease_hour": exact(per_hour),
        "requests_per_lease_second": exact((1 - loss) / interval + 3 * per_second),
        "lease_hours": Estimate.exact(
            workers.count * (scenario.duration_s - scenario.warmup_s) / 3600
        ),
    }
    for name, value in failure_detector_qos(interval, ttl, loss, request).items():
        metrics[name] = exact(value)
    return EngineResult(
        "analytic",
        metrics,
        heartbeats_sent=0,
        wall_seconds=time.perf_counter() - began,
        diagnostics={"interval_seconds": interval, "ttl_seconds": float(ttl)},
    )
