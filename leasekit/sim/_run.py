"""Runs and replications: one seed, or many seeds pooled into the glossary's metrics.

Each run counts what happened as a :class:`leasekit.metrics.Totals`; many runs
pool their totals and :func:`leasekit.metrics.summarize` gives every metric
with its 95% interval (exact Poisson on pooled counts for rates; see
``docs/metrics.md``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics import METRICS, Estimate, Totals, summarize
from ._engine import Engine
from ._monitor import CsvEventWriter, EventSink, events_frame
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
    """One run: its :attr:`totals` (a :class:`leasekit.metrics.Totals`: what it
    counted), ``metrics`` (each metric's value for this run alone, from
    :func:`leasekit.metrics.summarize`), ``heartbeats_sent`` (attempts put on
    the wire), and, when the run kept it (``simulate(..., events=True)``),
    the event log (:attr:`rows`, :attr:`events`)."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        metrics: dict[str, float] | None,
        heartbeats_sent: int,
        *,
        rows: list[tuple[Any, ...]] | None = None,
        totals: Totals | None = None,
        events_file: Path | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self._metrics = metrics
        self.heartbeats_sent = heartbeats_sent
        self.totals = totals if totals is not None else Totals(heartbeats_sent=heartbeats_sent)
        self._rows = rows
        self.events_file = events_file
        """The CSV file the event log went to (``simulate(..., events=path)``)."""

    @property
    def metrics(self) -> dict[str, float]:
        """Each metric's value for this run alone (:data:`leasekit.metrics.METRICS`
        names), from :func:`leasekit.metrics.summarize` of :attr:`totals`."""
        if self._metrics is None:
            # Worked out when first read: summarize() loads numpy and scipy
            # (~0.3 s), which a run that is only counted never needs.
            self._metrics = {name: e.value for name, e in summarize(self.totals).items()}
        return self._metrics

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The event log's rows in the order they were recorded (see
        :data:`EVENT_COLUMNS`); :class:`ValueError` if the run did not keep it."""
        if self._rows is None:
            if self.events_file is not None:
                raise ValueError(
                    f"this run wrote its event log to {self.events_file} instead of keeping it:"
                    " read it with pandas.read_csv"
                )
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
    events: bool | str | os.PathLike[str] | EventSink = False,
    setup: Callable[[Engine], None] | None = None,
) -> RunResult:
    """Run ``scenario`` once with ``seed`` (default: the scenario's).

    ``network`` builds the network model (default: the scenario's own);
    ``progress`` is called with the fraction of simulated time done;
    ``setup(engine)`` is called before the run starts, to add behaviour (a
    SimPy process that crashes or pauses workers, see ``docs/simulator.md``).

    ``events`` asks for the event log (columns :data:`EVENT_COLUMNS`).
    Without it a run keeps only its counts, and memory does not grow with
    simulated time. ``True`` keeps the log in memory (``result.rows``,
    ``result.events``); a path writes it to that CSV file as it goes
    (:class:`CsvEventWriter`: a long run's log costs disk, not memory); a
    callable gets each row as it is recorded.
    """
    seed = scenario.seed if seed is None else seed
    writer = None
    sink: bool | EventSink = events if isinstance(events, bool) or callable(events) else False
    if isinstance(events, str | os.PathLike):
        sink = writer = CsvEventWriter(events)
    try:
        engine = Engine(scenario, seed, network=network, progress=progress, events=sink)
        if setup is not None:
            setup(engine)
        monitor = engine.run()
    finally:
        if writer is not None:
            writer.close()
    totals = monitor.totals
    return RunResult(
        scenario,
        seed,
        None,
        totals.heartbeats_sent,
        rows=engine.rows,
        totals=totals,
        events_file=None if writer is None else writer.path,
    )


def replication_seed(base_seed: int, index: int) -> int:
    """The seed of replication ``index``: the base seed itself for the first,
    then a seed derived from both (so runs never share streams)."""
    if index == 0:
        return base_seed
    return random.Random(f"leasekit-replication:{base_seed}:{index}").getrandbits(62)


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
    result = simulate(scenario, seed=seed, network=network, events=keep)
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

            result = simulate(scenario, seed=s, network=network, progress=part, events=i == 0)
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
