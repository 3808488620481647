"""The metrics glossary: every number leasekit reports, defined once.

A metric name means one thing in ``simulate``, ``replay``, ``study``, the
notebooks and the plots. This module is where that meaning lives:

* :data:`METRICS` names each metric with its unit, its definition and the
  kind of 95% interval it gets (:data:`INTERVALS`);
* :class:`Totals` is what one run (or one replayed trace) *counts*: events,
  held lease time, episode lengths. Totals add up over runs;
* :func:`summarize` turns the totals of one or many runs into every metric,
  as :class:`Estimate` values with their intervals.

Why counts and not per-seed means: rare events need intervals made for
counts. A t-interval over seeds goes negative when events are rare and
collapses to ``[0, 0]`` when none happened, which proves nothing. Pooling
the events over seeds and using the exact Poisson interval keeps every bound
at or above zero, and zero events still bound the rate from above
(``3.69 / lease_hours`` at 95%). Seeds that disagree more than Poisson
allows (a partition that takes many leases at once) widen the interval
(quasi-Poisson, see :func:`poisson_rate`).

``docs/metrics.md`` is generated from this module (:func:`glossary_markdown`);
a test keeps the two equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

__all__ = [
    "INTERVALS",
    "METRICS",
    "SUFFIXES",
    "EngineResult",
    "Estimate",
    "MetricSpec",
    "Totals",
    "binomial_proportion",
    "bootstrap_mean",
    "glossary_markdown",
    "poisson_rate",
    "summarize",
]

LEVEL: Final = 0.95
"""Every interval leasekit reports is a two-sided 95% interval."""

_BOOTSTRAP_RESAMPLES: Final = 2000
_BOOTSTRAP_SEED: Final = 20_260_101
_BOOTSTRAP_CHUNK: Final = 1 << 18

INTERVALS: Final[dict[str, str]] = {
    "poisson": (
        "exact Poisson (Garwood) interval on the event count pooled over all runs, divided "
        "by the pooled exposure; when runs disagree more than Poisson allows, widened by "
        "their dispersion (quasi-Poisson). Never negative; zero events still give an upper "
        "bound (3.69 events over the exposure)."
    ),
    "binomial": (
        "exact binomial (Clopper-Pearson) interval on the pooled successes over the pooled trials."
    ),
    "episodes": (
        "episodes per lease-hour (exact Poisson bounds) times the mean episode length "
        "(bootstrap bounds): conservative. With no episode it is [0, 0]; the matching "
        "*_episodes_per_lease_hour metric then carries the upper bound."
    ),
    "bootstrap": (
        f"percentile bootstrap of the mean of the pooled samples ({_BOOTSTRAP_RESAMPLES} "
        "resamples, fixed seed): within the samples' range, never negative."
    ),
    "exact": "none: a total or an observed extreme; the interval is [value, value].",
    "importance_sampling": (
        "fast engine: normal interval of the importance-sampling estimator (mean of the "
        "weighted cycle indicators over mean cycle length, delta method), clipped at 0."
    ),
    "closed_form": "analytic engine: an exact value; the interval is [value, value].",
}
"""The kinds of interval, by key: what :attr:`Estimate.method` and
:attr:`MetricSpec.interval` name."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its ``name``, ``unit``, the kind of ``interval`` it gets
    from the SimPy engine and replay (a key of :data:`INTERVALS`), and its
    ``definition``."""

    name: str
    unit: str
    interval: str
    definition: str


def _spec(name: str, unit: str, interval: str, definition: str) -> MetricSpec:
    return MetricSpec(name, unit, interval, " ".join(definition.split()))


_CAUSES: Final = ("server_expiry", "unseen_answer", "give_up", "rejection")

METRICS: Final[dict[str, MetricSpec]] = {
    spec.name: spec
    for spec in (
        _spec(
            "lease_hours",
            "h",
            "exact",
            """Held lease time: a worker holds a lease from the first successful answer its
            policy sees until the policy stops, the worker crashes or the run ends, summed
            over workers, inside the metrics window (after warm-up).""",
        ),
        _spec(
            "false_losses_per_lease_hour",
            "1/h",
            "poisson",
            """False losses per lease-hour. A false loss is one held *lease* that ends while
            its holder is alive and willing to go on (a 412, an assumed loss or a
            rejection); a lease counts once however many gaps it had. The sum of the
            four causes below.""",
        ),
        _spec(
            "false_losses_server_expiry_per_lease_hour",
            "1/h",
            "poisson",
            """False losses whose cause is a server expiry: the server had already expired
            the holder's lease (a gap in arrivals longer than the TTL).""",
        ),
        _spec(
            "false_losses_unseen_answer_per_lease_hour",
            "1/h",
            "poisson",
            """False losses whose cause is an unseen answer: a 412 while the server still
            held the lease for this worker (an applied attempt whose answer the worker never
            saw changed the stored value).""",
        ),
        _spec(
            "false_losses_give_up_per_lease_hour",
            "1/h",
            "poisson",
            """False losses whose cause is giving up: the policy stopped believing in a
            lease the server still held (assumed lost).""",
        ),
        _spec(
            "false_losses_rejection_per_lease_hour",
            "1/h",
            "poisson",
            """False losses whose cause is a rejection: a 4xx the policy treats as
            final.""",
        ),
        _spec(
            "server_expiries_per_lease_hour",
            "1/h",
            "poisson",
            """Server expiries per lease-hour: the server expired an active lease whose
            holder had not crashed (a give-up that the server sees as silence counts
            too).""",
        ),
        _spec(
            "precondition_failures_per_lease_hour",
            "1/h",
            "poisson",
            "412 answers that workers saw, per lease-hour.",
        ),
        _spec(
            "precondition_failure_rate",
            "1",
            "binomial",
            "412 answers over all heartbeat answers workers saw (a fraction).",
        ),
        _spec(
            "split_brain_seconds_per_lease_hour",
            "s/h",
            "episodes",
            """Seconds per lease-hour in which a running (not paused, not crashed) worker
            believes it holds a lease the server has expired (and may have granted to
            another).""",
        ),
        _spec(
            "split_brain_episodes_per_lease_hour",
            "1/h",
            "poisson",
            "Episodes of split brain (as above) per lease-hour.",
        ),
        _spec(
            "double_holder_seconds_per_lease_hour",
            "s/h",
            "episodes",
            "Seconds per lease-hour in which two running workers both hold the same item.",
        ),
        _spec(
            "double_holder_episodes_per_lease_hour",
            "1/h",
            "poisson",
            "Episodes in which two running workers both hold the same item, per lease-hour.",
        ),
        _spec(
            "takeover_seconds_mean",
            "s",
            "bootstrap",
            """Mean takeover time: from the crash of a worker that held a live server lease
            to the next successful claim of that item at the server.""",
        ),
        _spec(
            "takeover_seconds_max",
            "s",
            "exact",
            "The longest takeover time observed (see takeover_seconds_mean).",
        ),
        _spec(
            "takeovers",
            "1",
            "exact",
            "Crashes of a live holder whose item was claimed again before the end.",
        ),
        _spec(
            "takeovers_censored",
            "1",
            "exact",
            "Crashes of a live holder whose item was not claimed again before the end.",
        ),
        _spec(
            "detection_seconds_mean",
            "s",
            "closed_form",
            """Detection time T_D of Chen, Toueg and Aguilera (IEEE Trans. Computers 2002):
            from a holder's crash, at a uniformly random moment of its heartbeat schedule,
            to the server's expiry of its lease (0 when it had already expired); mean.""",
        ),
        _spec(
            "detection_seconds_max",
            "s",
            "closed_form",
            """The upper bound of the detection time T_D: the TTL plus the longest request
            delay (a crash just after a heartbeat that arrives as late as it can).""",
        ),
        _spec(
            "mistake_recurrence_seconds_mean",
            "s",
            "closed_form",
            """Mistake recurrence time T_MR (Chen, Toueg and Aguilera): mean time between
            the starts of two mistakes of the server's lease timer seen as a failure
            detector of a live worker that keeps heartbeating (it trusts the worker while
            a heartbeat arrived within the last TTL).""",
        ),
        _spec(
            "mistake_duration_seconds_mean",
            "s",
            "closed_form",
            """Mistake duration T_M (Chen, Toueg and Aguilera): mean time from the lease's
            expiry at the server while its holder is alive (a mistake) to the arrival of
            the holder's next heartbeat.""",
        ),
        _spec(
            "query_accuracy_probability",
            "1",
            "closed_form",
            """Query accuracy probability P_A (Chen, Toueg and Aguilera): the probability
            that the server's lease timer, asked at a random time, trusts a live worker
            that keeps heartbeating; 1 - T_M / T_MR.""",
        ),
        _spec(
            "requests_per_lease_second",
            "1/s",
            "poisson",
            """Server load: requests of every kind (heartbeats, polls, acks) the server
            processed, per second of held lease time.""",
        ),
    )
}
"""Every metric, by name, in the order tables show them."""


@dataclass(frozen=True)
class Estimate:
    """A metric's value with its two-sided 95% interval ``[low, high]``.

    ``method`` names the kind of interval (a key of :data:`INTERVALS`); ``n``
    is what the interval rests on (events, trials or samples). ``nan`` means
    unknown (no exposure, no samples).
    """

    value: float
    low: float
    high: float
    method: str
    n: float = 0

    @property
    def ci95(self) -> tuple[float, float]:
        return (self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "ci95": [low, high]}`` with ``None`` for unknown numbers (JSON)."""

        def plain(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {"value": plain(self.value), "ci95": [plain(self.low), plain(self.high)]}

    @classmethod
    def exact(cls, value: float, method: str = "exact") -> Estimate:
        """A number without sampling error: ``[value, value]``."""
        return cls(value, value, value, method)


_NAN_ESTIMATE: Final = Estimate(math.nan, math.nan, math.nan, "exact")


# The quantiles scipy.stats.chi2.ppf and scipy.stats.beta.ppf compute (they
# are these very functions, bit for bit, for 0 < q < 1), from scipy.special:
# with scipy.stats, importing leasekit.sim ran 4.5 billion instructions
# instead of 1.5 (callgrind), on every simulate run and CLI call; that is 5%
# of benchmarks/bench_sim.py's whole process.


# numpy and scipy are imported where they are used: a simulation that is
# only counted (benchmarks/bench_sim.py, a study's workers) never loads them
# (0.3 s of a process).


def _chi2_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of the chi-squared distribution with ``df`` degrees of freedom."""
    from scipy import special

    return float(2 * special.gammaincinv(df / 2, q))


def _beta_quantile(q: float, a: float, b: float) -> float:
    """The ``q`` quantile of the Beta(``a``, ``b``) distribution."""
    from scipy import special

    return float(special.betaincinv(a, b, q))


def poisson_rate(
    count: float,
    exposure: float,
    *,
    counts: Sequence[float] = (),
    exposures: Sequence[float] = (),
) -> Estimate:
    """Events per unit of ``exposure`` with the exact Poisson (Garwood) interval.

    ``count`` events were seen over ``exposure`` (lease-hours, lease-seconds).
    Pass the per-run ``counts`` and ``exposures`` too (they sum to the
    totals) to widen the interval when runs disagree more than Poisson allows:
    the dispersion ``phi`` (Pearson's statistic over its degrees of freedom,
    at least 1) divides the count and multiplies the bounds (quasi-Poisson).
    """
    if exposure <= 0 or math.isnan(exposure):
        return Estimate(math.nan, math.nan, math.nan, "poisson", count)
    phi = _dispersion(count, exposure, counts, exposures)
    effective = count / phi
    alpha = 1 - LEVEL
    low = 0.0 if effective <= 0 else _chi2_quantile(alpha / 2, 2 * effective) / 2
    high = _chi2_quantile(1 - alpha / 2, 2 * effective + 2) / 2
    return Estimate(count / exposure, low * phi / exposure, high * phi / exposure, "poisson", count)


def _dispersion(
    count: float, exposure: float, counts: Sequence[float], exposures: Sequence[float]
) -> float:
    pairs = [(c, e) for c, e in zip(counts, exposures, strict=True) if e > 0]
    if len(pairs) < 2 or count <= 0:
        return 1.0
    rate = count / exposure
    pearson = sum((c - rate * e) ** 2 / (rate * e) for c, e in pairs)
    return max(1.0, pearson / (len(pairs) - 1))


def binomial_proportion(successes: int, trials: int) -> Estimate:
    """``successes / trials`` with the exact (Clopper-Pearson) interval."""
    if trials <= 0:
        return Estimate(math.nan, math.nan, math.nan, "binomial", 0)
    alpha = 1 - LEVEL
    low = 0.0 if successes == 0 else _beta_quantile(alpha / 2, successes, trials - successes + 1)
    high = (
        1.0
        if successes == trials
        else _beta_quantile(1 - alpha / 2, successes + 1, trials - successes)
    )
    return Estimate(successes / trials, low, high, "binomial", trials)


def bootstrap_mean(samples: Sequence[float]) -> Estimate:
    """The mean of ``samples`` with a percentile-bootstrap interval (fixed seed,
    so the same samples give the same interval)."""
    import numpy as np

    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        return Estimate(math.nan, math.nan, math.nan, "bootstrap", 0)
    mean = float(values.mean())
    if values.size == 1:
        return Estimate(mean, mean, mean, "bootstrap", 1)
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    # Resamples in chunks of about _BOOTSTRAP_CHUNK picks: all at once is a
    # 2000 x n index matrix (110 MB with its values for 3,600 samples). The
    # generator's stream runs on across calls, so the draws, and the means,
    # are those of one call.
    rows = max(1, _BOOTSTRAP_CHUNK // values.size)
    means = np.concatenate(
        [
            values[rng.integers(0, values.size, size=(min(rows, left), values.size))].mean(axis=1)
            for left in range(_BOOTSTRAP_RESAMPLES, 0, -rows)
        ]
    )
    alpha = 1 - LEVEL
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Estimate(mean, float(low), float(high), "bootstrap", values.size)


def _episodes(durations: Sequence[float], lease_hours: float) -> Estimate:
    total = float(sum(durations))
    if lease_hours <= 0:
        return Estimate(math.nan, math.nan, math.nan, "episodes", len(durations))
    if not durations:
        return Estimate(0.0, 0.0, 0.0, "episodes", 0)
    rate = poisson_rate(len(durations), lease_hours)
    length = bootstrap_mean(durations)
    return Estimate(
        total / lease_hours,
        rate.low * length.low,
        rate.high * length.high,
        "episodes",
        len(durations),
    )


@dataclass
class Totals:
    """What one run (or one replayed trace) counted; totals add up with ``+``.

    Times in seconds. Event counts are whole numbers; ``*_episodes`` hold
    each episode's length and ``takeover_seconds`` each takeover's time.
    """

    lease_seconds: float = 0.0
    false_losses_server_expiry: int = 0
    false_losses_unseen_answer: int = 0
    false_losses_give_up: int = 0
    false_losses_rejection: int = 0
    server_expiries: int = 0
    precondition_failures: int = 0
    heartbeat_answers: int = 0
    split_brain_episodes: list[float] = field(default_factory=list)
    double_holder_episodes: list[float] = field(default_factory=list)
    takeover_seconds: list[float] = field(default_factory=list)
    takeovers_censored: int = 0
    requests: int = 0
    heartbeats_sent: int = 0

    @property
    def false_losses(self) -> int:
        """False losses of every cause."""
        return sum(getattr(self, f"false_losses_{cause}") for cause in _CAUSES)

    def __add__(self, other: Totals) -> Totals:
        merged = Totals()
        for f in fields(Totals):
            setattr(merged, f.name, getattr(self, f.name) + getattr(other, f.name))
        return merged

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists copied)."""
        return {f.name: getattr(self, f.name) for f in fields(Totals)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Totals:
        return cls(**data)


def summarize(runs: Totals | Iterable[Totals]) -> dict[str, Estimate]:
    """Every metric of :data:`METRICS` that runs measure (all but the
    analytic engine's ``closed_form`` ones) from the totals of one or many
    runs, pooled, with its interval (see :data:`INTERVALS`)."""
    parts = [runs] if isinstance(runs, Totals) else list(runs)
    total = Totals()
    for part in parts:
        total = total + part
    hours = total.lease_seconds / 3600.0
    part_hours = [p.lease_seconds / 3600.0 for p in parts]

    def per_lease_hour(count_of: Any) -> Estimate:
        return poisson_rate(
            count_of(total),
            hours,
            counts=[count_of(p) for p in parts],
            exposures=part_hours,
        )

    out: dict[str, Estimate] = {"lease_hours": Estimate.exact(hours)}
    out["false_losses_per_lease_hour"] = per_lease_hour(lambda t: t.false_losses)
    for cause in _CAUSES:
        name = f"false_losses_{cause}"
        out[f"{name}_per_lease_hour"] = per_lease_hour(lambda t, n=name: getattr(t, n))
    out["server_expiries_per_lease_hour"] = per_lease_hour(lambda t: t.server_expiries)
    out["precondition_failures_per_lease_hour"] = per_lease_hour(lambda t: t.precondition_failures)
    out["precondition_failure_rate"] = binomial_proportion(
        total.precondition_failures, total.heartbeat_answers
    )
    out["split_brain_seconds_per_lease_hour"] = _episodes(total.split_brain_episodes, hours)
    out["split_brain_episodes_per_lease_hour"] = per_lease_hour(
        lambda t: len(t.split_brain_episodes)
    )
    out["double_holder_seconds_per_lease_hour"] = _episodes(total.double_holder_episodes, hours)
    out["double_holder_episodes_per_lease_hour"] = per_lease_hour(
        lambda t: len(t.double_holder_episodes)
    )
    out["takeover_seconds_mean"] = bootstrap_mean(total.takeover_seconds)
    takeovers = total.takeover_seconds
    out["takeover_seconds_max"] = Estimate.exact(max(takeovers)) if takeovers else _NAN_ESTIMATE
    out["takeovers"] = Estimate.exact(float(len(takeovers)))
    out["takeovers_censored"] = Estimate.exact(float(total.takeovers_censored))
    out["requests_per_lease_second"] = poisson_rate(
        total.requests,
        total.lease_seconds,
        counts=[p.requests for p in parts],
        exposures=[p.lease_seconds for p in parts],
    )
    return {name: out[name] for name in METRICS if name in out}


@dataclass
class EngineResult:
    """What any engine (``simpy``, ``fast``, ``analytic``) answers for one scenario.

    ``metrics`` maps glossary names to estimates (an engine leaves out what it
    cannot estimate); ``heartbeats_sent`` counts the heartbeat attempts it
    simulated (0 for the analytic engine); ``wall_seconds`` is its run time;
    ``diagnostics`` holds engine-specific numbers (for the fast engine: cycles,
    effective sample size, variance-reduction factor, tilt).
    """

    engine: str
    metrics: dict[str, Estimate]
    heartbeats_sent: int = 0
    wall_seconds: float = 0.0
    diagnostics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape: ``{"metrics": {NAME: {"value", "ci95"}}, "heartbeats_sent",
        "wall_seconds"}`` (the caller adds ``"scenario"``)."""
        return {
            "engine": self.engine,
            "metrics": {name: e.to_dict() for name, e in self.metrics.items()},
            "heartbeats_sent": self.heartbeats_sent,
            "wall_seconds": self.wall_seconds,
            "diagnostics": dict(self.diagnostics),
        }


SUFFIXES: Final[dict[str, str]] = {
    "NAME_ci95_low, NAME_ci95_high": (
        "the metric's 95% interval, of the kind the glossary gives it."
    ),
    "NAME_low, NAME_high": (
        "`leasekit replay`'s what-if only: bounds from what a client trace cannot see (when "
        "the server processed each request, whether an unanswered one was applied); the "
        "metric at the trace's most and least favourable reading. Not an interval."
    ),
    "false_losses": (
        "`leasekit replay`'s what-if: the count of leases lost (one per lease, however many "
        "of its gaps expire), the numerator of false_losses_per_lease_hour."
    ),
    "expiring_gaps": (
        "`leasekit replay`'s what-if: the gaps between a lease's arrivals longer than the "
        "TTL; one lease can have several. Not a count of false losses."
    ),
    "trace_lease_hours": (
        "`leasekit replay`: held lease time in the trace as recorded (its leases from first "
        "success to last attempt), whatever the TTL asked about."
    ),
}
"""Names that appear beside the metrics in tables, and what they mean."""


def glossary_markdown() -> str:
    """``docs/metrics.md``: the glossary and the kinds of interval, as Markdown."""
    lines = [
        "# Metrics",
        "",
        "<!-- generated by leasekit.metrics.glossary_markdown(); a test keeps it equal -->",
        "",
        "Every number leasekit reports, defined once in `leasekit/metrics.py`. A name means",
        "the same in `leasekit simulate`, `leasekit replay`, `leasekit study`, the notebooks",
        "and the plots. Every interval is a two-sided 95% interval.",
        "",
        "| metric | unit | interval | definition |",
        "|---|---|---|---|",
    ]
    for spec in METRICS.values():
        lines.append(f"| `{spec.name}` | {spec.unit} | {spec.interval} | {spec.definition} |")
    lines += ["", "## Kinds of interval", ""]
    for key, text in INTERVALS.items():
        lines.append(f"- **{key}**: {text}")
    lines += [
        "",
        "## Names beside the metrics",
        "",
        "Tables put these next to the metrics above; none of them is a second meaning of a",
        "metric's name.",
        "",
    ]
    for name, text in SUFFIXES.items():
        lines.append(f"- `{name}`: {text}")
    return "\n".join(lines) + "\n"
