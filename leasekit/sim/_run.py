"""Runs and replications: one seed, or many seeds pooled into the glossary's metrics.

Each run counts what happened as a :class:`leasekit.metrics.Totals`; many runs
pool their totals and :func:`leasekit.metrics.summarize` gives every metric
with its 95% interval (exact Poisson on pooled counts for rates; see
``docs/metrics.md``).
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scipy import stats

from ..metrics import METRICS, Estimate, Totals, summarize
from ._engine import Engine
from ._monitor import _FALSE_LOSS_REASONS, Monitor, _minus, events_frame
from ._network import NetworkFactory
from ._scenario import Scenario

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Replications",
    "RunResult",
    "replicate",
    "replication_seed",
    "simulate",
]


class RunResult:
    """One run: its ``metrics`` (the glossary's values for this run alone),
    its ``totals`` (what it counted, :class:`leasekit.metrics.Totals`),
    ``heartbeats_sent`` (attempts put on the wire), and the event log
    (:attr:`events`, built on first use)."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        metrics: dict[str, float],
        heartbeats_sent: int,
        *,
        totals: Totals | None = None,
        rows: list[tuple[Any, ...]] | None = None,
        monitor: Monitor | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.metrics = metrics
        self.heartbeats_sent = heartbeats_sent
        self.totals = totals if totals is not None else Totals(heartbeats_sent=heartbeats_sent)
        self._rows = rows
        self._monitor = monitor

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The event log's rows, unordered (see :data:`EVENT_COLUMNS`)."""
        if self._rows is None:
            self._rows = self._monitor.all_rows() if self._monitor is not None else []
        return self._rows

    @property
    def events(self) -> pd.DataFrame:
        """The event log as a DataFrame (columns :data:`EVENT_COLUMNS`), by time."""
        return events_frame(self.rows)

    def __repr__(self) -> str:
        return f"RunResult({self.scenario.name!r}, seed={self.seed}, metrics={self.metrics!r})"


def simulate(
    scenario: Scenario,
    *,
    seed: int | None = None,
    network: NetworkFactory | None = None,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Run ``scenario`` once with ``seed`` (default: the scenario's).

    ``network`` builds the network model (default: the scenario's own);
    ``progress`` is called with the fraction of simulated time done.
    """
    seed = scenario.seed if seed is None else seed
    engine = Engine(scenario, seed, network=network, progress=progress)
    monitor = engine.run()
    return RunResult(
        scenario,
        seed,
        monitor.metrics(),
        monitor.heartbeats_sent,
        totals=_totals(monitor),
        monitor=monitor,
    )


def replication_seed(base_seed: int, index: int) -> int:
    """The seed of replication ``index``: the base seed itself for the first,
    then a seed derived from both (so runs never share streams)."""
    if index == 0:
        return base_seed
    return random.Random(f"leasekit-replication:{base_seed}:{index}").getrandbits(62)


def _t95(df: int) -> float:
    return float(stats.t.ppf(0.975, df))


def t_interval(values: Sequence[float]) -> Estimate:
    """Deprecated: the mean of ``values`` with a 95% Student-t interval over seeds.

    Kept only for callers not yet moved to :func:`leasekit.metrics.summarize`,
    which gives rates and counts intervals made for counts (a t-interval over
    seeds goes negative at rare events and collapses to ``[0, 0]`` at none).
    Not part of :mod:`leasekit.sim`'s public surface.
    """
    warnings.warn(
        "leasekit.sim.t_interval is deprecated: use leasekit.metrics.summarize",
        DeprecationWarning,
        stacklevel=2,
    )
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return Estimate(math.nan, math.nan, math.nan, "t", 0)
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return Estimate(mean, math.nan, math.nan, "t", 1)
    half = _t95(len(finite) - 1) * statistics.stdev(finite) / math.sqrt(len(finite))
    return Estimate(mean, mean - half, mean + half, "t", len(finite))


@dataclass(frozen=True)
class Replications:
    """Many runs of one scenario: per-run ``runs`` (a DataFrame, one row per
    seed, each run's own metrics), each run's :class:`~leasekit.metrics.Totals`
    (``totals``, in seed order), :meth:`estimates` pooled over them, and the
    ``first`` run kept whole."""

    scenario: Scenario
    runs: pd.DataFrame
    first: RunResult | None
    totals: tuple[Totals, ...] = ()

    @property
    def heartbeats_sent(self) -> int:
        return int(self.runs["heartbeats_sent"].sum())

    def estimates(self) -> dict[str, Estimate]:
        """Every metric of the glossary (:data:`leasekit.metrics.METRICS`), pooled
        over the runs by :func:`leasekit.metrics.summarize`: rates get the exact
        Poisson interval on the pooled counts, never a t-interval over seeds."""
        return summarize(self.totals)

    def summary(self) -> pd.DataFrame:
        """The estimates as a table: ``metric``, ``value``, ``ci95_low``,
        ``ci95_high``, ``interval`` (a key of :data:`leasekit.metrics.INTERVALS`)
        and ``unit``."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "metric": name,
                    "value": e.value,
                    "ci95_low": e.low,
                    "ci95_high": e.high,
                    "interval": e.method,
                    "unit": METRICS[name].unit,
                }
                for name, e in self.estimates().items()
            ],
            columns=["metric", "value", "ci95_low", "ci95_high", "interval", "unit"],
        )


_Outcome = tuple[dict[str, float], int, Totals, list[tuple[Any, ...]]]


def _one(scenario: Scenario, seed: int, network: NetworkFactory | None, keep: bool) -> _Outcome:
    result = simulate(scenario, seed=seed, network=network)
    return result.metrics, result.heartbeats_sent, result.totals, result.rows if keep else []


def replicate(
    scenario: Scenario,
    replications: int = 5,
    *,
    seed: int | None = None,
    processes: int = 1,
    network: NetworkFactory | None = None,
    progress: Callable[[float], None] | None = None,
) -> Replications:
    """Run ``replications`` seeds derived from ``seed`` (default: the
    scenario's), in ``processes`` worker processes when above 1, and keep
    the first run's event log. ``progress`` gets the fraction done."""
    # imported here: a single run (the common case) need not load them (~30 ms)
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import pandas as pd

    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    base = scenario.seed if seed is None else seed
    seeds = [replication_seed(base, i) for i in range(replications)]
    outcomes: dict[int, _Outcome] = {}
    if processes > 1 and replications > 1:
        with ProcessPoolExecutor(max_workers=min(processes, replications)) as pool:
            futures = {
                pool.submit(_one, scenario, s, network, i == 0): i for i, s in enumerate(seeds)
            }
            for done, future in enumerate(as_completed(futures), 1):
                outcomes[futures[future]] = future.result()
                if progress is not None:
                    progress(done / replications)
    else:
        for i, s in enumerate(seeds):

            def part(fraction: float, i: int = i) -> None:
                if progress is not None:
                    progress((i + fraction) / replications)

            result = simulate(scenario, seed=s, network=network, progress=part)
            outcomes[i] = (
                result.metrics,
                result.heartbeats_sent,
                result.totals,
                result.rows if i == 0 else [],
            )
    rows = []
    for i, s in enumerate(seeds):
        metrics, sent, _, _ = outcomes[i]
        rows.append({"seed": s, "heartbeats_sent": sent, **metrics})
    metrics0, sent0, totals0, rows0 = outcomes[0]
    first = RunResult(scenario, seeds[0], metrics0, sent0, totals=totals0, rows=rows0)
    totals = tuple(outcomes[i][2] for i in range(replications))
    return Replications(scenario, pd.DataFrame(rows), first, totals)


def _totals(monitor: Monitor) -> Totals:
    """What a run counted, by the definitions of :mod:`._monitor` (the same
    window, causes and exposures as :meth:`Monitor.metrics`)."""
    w0, w1 = monitor.window_start_s, monitor.window_end_s
    totals = Totals(heartbeats_sent=monitor.heartbeats_sent)
    by_item: dict[str, list[tuple[float, float]]] = {}
    for lease in monitor.leases:
        totals.lease_seconds += max(0.0, min(lease.end_s, w1) - max(lease.start_s, w0))
        if lease.reason in _FALSE_LOSS_REASONS and w0 <= lease.end_s <= w1:
            name = f"false_losses_{lease.cause()}"
            setattr(totals, name, getattr(totals, name) + 1)
        pauses = monitor.pauses[lease.worker]
        by_item.setdefault(lease.work_id, []).extend(
            _minus(max(lease.start_s, w0), min(lease.end_s, w1), pauses)
        )
        if lease.tenure is not None and lease.tenure.expired_s < lease.end_s:
            exposed_from = max(lease.tenure.expired_s, lease.start_s, w0)
            totals.split_brain_episodes.extend(
                end - start for start, end in _minus(exposed_from, min(lease.end_s, w1), pauses)
            )
    for spans in by_item.values():
        totals.double_holder_episodes.extend(_overlap_episodes(spans))
    totals.server_expiries = sum(
        1
        for t in monitor.tenures
        if w0 <= t.expired_s <= w1 and not t.holder_crashed_s <= t.expired_s
    )
    for _worker, crash_s, tenure in monitor.crashes:
        if tenure is None or not (w0 <= crash_s <= w1):
            continue
        if not tenure.claimed_s <= crash_s < tenure.expired_s:
            continue  # it held no live lease when it died
        later = [t for t in monitor.claims.get(tenure.work_id, ()) if t > crash_s]
        if later:
            totals.takeover_seconds.append(later[0] - crash_s)
        else:
            totals.takeovers_censored += 1
    for a in monitor.attempts:
        if a.kind == "heartbeat" and a.seen_s >= w0:
            totals.heartbeat_answers += 1
            if a.status == 412 and not a.timed_out:
                totals.precondition_failures += 1
    totals.requests = len(monitor.requests_s) - bisect.bisect_left(monitor.requests_s, w0)
    return totals


def _overlap_episodes(spans: list[tuple[float, float]]) -> list[float]:
    """The lengths of the maximal stretches covered by two or more of ``spans``."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    episodes: list[float] = []
    depth = 0
    began = 0.0
    for t, step in edges:
        if depth < 2 <= depth + step:
            began = t
        elif depth >= 2 > depth + step and t > began:
            episodes.append(t - began)
        depth += step
    return episodes
