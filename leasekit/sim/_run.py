"""Runs and replications: one seed, or many seeds with 95% t-intervals."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..metrics import Totals, summarize
from ._engine import Engine
from ._monitor import events_frame
from ._network import NetworkFactory
from ._scenario import Scenario

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Estimate",
    "Replications",
    "RunResult",
    "replicate",
    "replication_seed",
    "simulate",
    "t_interval",
]


class RunResult:
    """One run: its :attr:`totals` (a :class:`leasekit.metrics.Totals`: what it
    counted), ``metrics`` (each metric's value for this run alone, from
    :func:`leasekit.metrics.summarize`), ``heartbeats_sent`` (attempts put on
    the wire), and, when the run kept it (``simulate(..., events=True)``),
    the event log (:attr:`rows`, :attr:`events`)."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        metrics: dict[str, float],
        heartbeats_sent: int,
        *,
        rows: list[tuple[Any, ...]] | None = None,
        totals: Totals | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.metrics = metrics
        self.heartbeats_sent = heartbeats_sent
        self.totals = totals if totals is not None else Totals(heartbeats_sent=heartbeats_sent)
        self._rows = rows

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The event log's rows in the order they were recorded (see
        :data:`EVENT_COLUMNS`); :class:`ValueError` if the run did not keep it."""
        if self._rows is None:
            raise ValueError(
                "this run did not keep its event log: run it with simulate(..., events=True)"
            )
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
    events: bool = False,
    setup: Callable[[Engine], None] | None = None,
) -> RunResult:
    """Run ``scenario`` once with ``seed`` (default: the scenario's).

    ``network`` builds the network model (default: the scenario's own);
    ``progress`` is called with the fraction of simulated time done;
    ``events=True`` keeps the event log (memory grows with simulated time;
    without it a run keeps only its counts); ``setup(engine)`` is called
    before the run starts, to add behaviour (a SimPy process that crashes or
    pauses workers, see ``docs/simulator.md``).
    """
    seed = scenario.seed if seed is None else seed
    engine = Engine(scenario, seed, network=network, progress=progress, events=events)
    if setup is not None:
        setup(engine)
    monitor = engine.run()
    totals = monitor.totals
    metrics = {name: estimate.value for name, estimate in summarize(totals).items()}
    return RunResult(
        scenario,
        seed,
        metrics,
        totals.heartbeats_sent,
        rows=monitor.rows if events else None,
        totals=totals,
    )


def replication_seed(base_seed: int, index: int) -> int:
    """The seed of replication ``index``: the base seed itself for the first,
    then a seed derived from both (so runs never share streams)."""
    if index == 0:
        return base_seed
    return random.Random(f"leasekit-replication:{base_seed}:{index}").getrandbits(62)


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T95: Final = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def _t95(df: int) -> float:
    if df <= 30:
        return _T95[df - 1]
    z = 1.959964
    # Cornish-Fisher expansion of the t quantile; within 1e-4 above 30 d.f.
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Estimate:
    """A mean over replications with its 95% t-interval (``nan`` when unknown)."""

    value: float
    low: float
    high: float
    n: int


def t_interval(values: Sequence[float]) -> Estimate:
    """Mean and 95% Student-t interval of the finite ``values`` (NaNs skipped)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    half = _t95(len(finite) - 1) * statistics.stdev(finite) / math.sqrt(len(finite))
    return Estimate(mean, mean - half, mean + half, len(finite))


@dataclass(frozen=True)
class Replications:
    """Many runs of one scenario: per-run ``runs`` (a DataFrame, one row per
    seed), :meth:`estimates` over them, and the ``first`` run kept whole."""

    scenario: Scenario
    runs: pd.DataFrame
    first: RunResult | None

    @property
    def heartbeats_sent(self) -> int:
        return int(self.runs["heartbeats_sent"].sum())

    def estimates(self) -> dict[str, Estimate]:
        """Every metric's mean over the runs with its 95% t-interval."""
        names = [c for c in self.runs.columns if c not in ("seed", "heartbeats_sent")]
        return {name: t_interval(self.runs[name].tolist()) for name in names}

    def summary(self) -> pd.DataFrame:
        """The estimates as a table: ``metric``, ``value``, ``ci95_low``, ``ci95_high``, ``n``."""
        import pandas as pd

        return pd.DataFrame(
            [
                {"metric": k, "value": e.value, "ci95_low": e.low, "ci95_high": e.high, "n": e.n}
                for k, e in self.estimates().items()
            ]
        )


def _one(
    scenario: Scenario, seed: int, network: NetworkFactory | None, keep: bool
) -> tuple[dict[str, float], int, list[tuple[Any, ...]]]:
    result = simulate(scenario, seed=seed, network=network, events=keep)
    return result.metrics, result.heartbeats_sent, result.rows if keep else []


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
    outcomes: dict[int, tuple[dict[str, float], int, list[tuple[Any, ...]]]] = {}
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

            result = simulate(scenario, seed=s, network=network, progress=part, events=i == 0)
            outcomes[i] = (result.metrics, result.heartbeats_sent, result.rows if i == 0 else [])
    rows = []
    for i, s in enumerate(seeds):
        metrics, sent, _ = outcomes[i]
        rows.append({"seed": s, "heartbeats_sent": sent, **metrics})
    metrics0, sent0, rows0 = outcomes[0]
    first = RunResult(scenario, seeds[0], metrics0, sent0, rows=rows0)
    return Replications(scenario, pd.DataFrame(rows), first)
