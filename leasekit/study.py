"""Studies: sweep scenarios over any of their fields, with any engine, into one table.

:func:`sweep` runs every combination of the given networks (scenarios), the
values of a ``grid`` of scenario fields (TTL, policy and its parameters,
delay, loss, burstiness, pause rate, workers...) and ``engines``, and gives
one tidy :class:`pandas.DataFrame`: a row per combination, every metric of
the glossary (:data:`leasekit.metrics.METRICS`) with its 95% interval and the
kind of that interval.

* ``simpy`` runs ``replications`` seeds per combination and pools their
  counts (:func:`leasekit.metrics.summarize`: exact Poisson intervals on the
  pooled events, never t-intervals over seeds). Every combination runs the
  same seeds (common random numbers), so the difference between two policies
  is not blurred by different luck.
* ``fast`` (:func:`leasekit.fast.estimate`) estimates rare false-loss rates
  by importance sampling; ``analytic`` (:func:`leasekit.analytic.estimate`)
  gives exact values where its assumptions hold. A combination an engine
  does not model gets no numbers and a ``note`` that says why.

Work runs serially, on any ``concurrent.futures.Executor``, in a process
pool (``processes``) or on a Dask cluster (``scheduler``). Seeds travel with
the tasks, so all of these give the same table.

:func:`load_study` reads a study file (``simulations/study.toml``) and
:func:`run_study` answers its question: for each network and policy, the
smallest TTL whose false-loss rate is under a target with 95% confidence.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._pool import Progress, executor_for, run_ordered
from .metrics import METRICS, EngineResult, Estimate, Totals, summarize
from .sim import Scenario, ScenarioError, load_scenario, replication_seed, simulate
from .sim import scenario_from_dict as _scenario_from_dict
from .sim import with_overrides as _with_overrides

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

__all__ = [
    "ENGINES",
    "FIELD_ALIASES",
    "RARE_METRICS",
    "Recommendation",
    "SimpyRun",
    "Study",
    "StudyError",
    "StudyResult",
    "combine",
    "estimate",
    "false_loss_view",
    "load_study",
    "pool_runs",
    "recommend",
    "run_study",
    "set_field",
    "simpy_runs",
    "sweep",
    "winners",
    "with_run",
]

ENGINES: Final = ("simpy", "fast", "analytic")
"""The engines, by name: the SimPy simulator, the rare-event engine, the closed forms."""

FIELD_ALIASES: Final[dict[str, str]] = {
    "ttl_seconds": "the TTL the server grants, whole seconds (default, min and max)",
    "policy": "workers.policy, a leasekit.policy.make_policy spec",
    "workers": "workers.count",
    "hours": "duration_s in hours",
    "latency": "the one-way delay spec of both directions",
    "loss": "network.request.loss",
    "answer_loss": "network.answer.loss",
    "pause_rate": "workers.pauses.rate_per_hour",
}
"""Short names :func:`set_field` accepts besides dotted scenario paths
(``network.request.burst.p_enter``)."""

RARE_METRICS: Final = tuple(
    name for name in METRICS if name.startswith(("false_losses", "server_expiries"))
)
"""The rare-event rates the ``fast`` and ``analytic`` engines are for; the
rest (takeover time, server load) come from the SimPy engine."""

# which engine's number a study keeps for a rare-event rate, best first
_RARE_PRECEDENCE: Final = ("analytic", "fast", "simpy")
_WITH_OVERRIDES: Final = ("policy", "workers", "hours", "latency", "loss", "answer_loss")


# --------------------------------------------------------------------------- fields


def set_field(scenario: Scenario, name: str, value: Any) -> Scenario:
    """A copy of ``scenario`` with the field ``name`` set to ``value``.

    ``name`` is a short name of :data:`FIELD_ALIASES` or a dotted path into the
    scenario (``network.answer.delay``, ``workers.pauses.duration``). Raises
    :class:`~leasekit.sim.ScenarioError` naming the field of a bad value.
    """
    if name == "ttl_seconds":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(None, name, f"expected whole seconds, got {value!r}")
        return _with_overrides(scenario, ttl_seconds=value)
    if name in _WITH_OVERRIDES:
        return _with_overrides(scenario, **{name: value})
    if name == "pause_rate":
        name = "workers.pauses.rate_per_hour"
    data = _plain(scenario.to_dict())
    keys = name.split(".")
    table = data
    for i, key in enumerate(keys[:-1]):
        inner = table.get(key, {})
        if not isinstance(inner, dict):
            raise ScenarioError(None, ".".join(keys[: i + 1]), "is not a table")
        table[key] = inner
        table = inner
    table[keys[-1]] = _plain(value)
    return _scenario_from_dict(data)


def _plain(value: Any) -> Any:
    """Scenario data as a TOML table would hold it: lists for tuples, no ``None``s."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class SimpyRun:
    """One SimPy run: its ``seed``, what it counted (``totals``), the
    heartbeats it simulated, its wall time (seconds) and, when kept, its event
    log ``rows`` (see :data:`leasekit.sim.EVENT_COLUMNS`)."""

    seed: int
    totals: Totals
    heartbeats_sent: int
    wall_seconds: float
    rows: tuple[tuple[Any, ...], ...] = ()


@dataclass(frozen=True)
class _Refused:
    engine: str
    reason: str


_Outcome = SimpyRun | EngineResult | _Refused


def _task(
    engine: str,
    scenario: Scenario,
    seed: int,
    options: Mapping[str, Any],
    keep_events: bool | str = False,
    *,
    progress: Callable[[float], None] | None = None,
) -> _Outcome:
    """One unit of work; module-level so that process pools and Dask can ship it."""
    if engine == "simpy":
        started = time.perf_counter()
        result = simulate(scenario, seed=seed, progress=progress, events=keep_events)
        totals: Totals = result.totals
        rows = tuple(result.rows) if keep_events is True else ()
        wall = time.perf_counter() - started
        return SimpyRun(seed, totals, result.heartbeats_sent, wall, rows)
    if engine == "fast":
        from . import fast

        try:
            answer: EngineResult = fast.estimate(scenario, seed=seed, **options)
        except (fast.UnsupportedScenario, fast.UnreliableEstimate) as refusal:
            return _Refused(engine, str(refusal))
        return answer
    if engine == "analytic":
        from . import analytic, fast

        try:
            exact: EngineResult = analytic.estimate(scenario)
        except fast.UnsupportedScenario as refusal:
            return _Refused(engine, str(refusal))
        return exact
    raise ValueError(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")


def _bar(progress: bool | Progress | None, total: int, what: str) -> Any:
    if progress is None or progress is False:
        return None
    if progress is True:
        from tqdm.auto import tqdm

        # delay: a bar only for runs long enough for someone to wait on them
        return tqdm(total=total, desc=what, unit="task", leave=False, delay=1.0)
    return progress


def _run_tasks(
    tasks: list[tuple[Any, ...]],
    what: str,
    executor: Executor | None,
    processes: int,
    scheduler: str | Client | None,
    progress: bool | Progress | None,
) -> list[_Outcome]:
    """Run :func:`_task` on each of ``tasks`` wherever asked, in task order,
    with a progress bar (one this call made is closed after)."""
    bar = _bar(progress, len(tasks), what)
    try:
        with executor_for(executor=executor, processes=processes, scheduler=scheduler) as pool:
            return run_ordered(_task, tasks, executor=pool, progress=bar)
    finally:
        if progress is True and bar is not None:
            bar.close()


def pool_runs(runs: Sequence[SimpyRun], *, wall_seconds: float | None = None) -> EngineResult:
    """The SimPy engine's answer for many runs of one scenario: their totals
    pooled by :func:`leasekit.metrics.summarize`."""
    return EngineResult(
        engine="simpy",
        metrics=summarize([run.totals for run in runs]),
        heartbeats_sent=sum(run.heartbeats_sent for run in runs),
        wall_seconds=(
            sum(run.wall_seconds for run in runs) if wall_seconds is None else wall_seconds
        ),
        diagnostics={"replications": float(len(runs))},
    )


def simpy_runs(
    scenario: Scenario,
    replications: int = 5,
    *,
    seed: int | None = None,
    keep_first_events: bool | str = False,
    executor: Executor | None = None,
    processes: int = 1,
    scheduler: str | Client | None = None,
    progress: bool | Progress | None = False,
) -> list[SimpyRun]:
    """``replications`` SimPy runs of ``scenario`` with the seeds derived from
    ``seed`` (default: the scenario's, see :func:`leasekit.sim.replication_seed`),
    in seed order. The first keeps its event log when ``keep_first_events``
    is true (in memory: ``rows``), or writes it as it goes to the CSV file
    ``keep_first_events`` names (on the machine that runs it)."""
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    base = scenario.seed if seed is None else seed
    tasks: list[tuple[Any, ...]] = [
        ("simpy", scenario, replication_seed(base, i), {}, keep_first_events if i == 0 else False)
        for i in range(replications)
    ]
    outcomes = _run_tasks(tasks, "simulating", executor, processes, scheduler, progress)
    return [o for o in outcomes if isinstance(o, SimpyRun)]


def estimate(
    scenario: Scenario,
    *,
    engine: str = "simpy",
    replications: int = 5,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    executor: Executor | None = None,
    processes: int = 1,
    scheduler: str | Client | None = None,
    progress: bool | Progress | None = False,
) -> EngineResult:
    """Every metric ``engine`` can give for ``scenario``.

    ``simpy``: ``replications`` runs pooled (:func:`pool_runs`), wherever
    they run. ``fast``: :func:`leasekit.fast.estimate` with ``seed`` and
    ``options`` (``rel_halfwidth``, ``max_cycles``, ``max_seconds``). ``analytic``:
    :func:`leasekit.analytic.estimate`. Raises ``UnsupportedScenario`` (a
    ``ValueError`` naming the field) when the engine does not model the scenario.
    """
    _check_engine(engine)
    started = time.perf_counter()
    if engine == "simpy":
        runs = simpy_runs(
            scenario,
            replications,
            seed=seed,
            executor=executor,
            processes=processes,
            scheduler=scheduler,
            progress=progress,
        )
        return pool_runs(runs, wall_seconds=time.perf_counter() - started)
    from . import analytic, fast

    answer: EngineResult
    if engine == "fast":
        base = scenario.seed if seed is None else seed
        bar = _bar(progress, 1, "estimating")

        def moved(fraction: float) -> None:
            if bar is not None and fraction > bar.n:
                bar.update(fraction - bar.n)

        try:
            answer = fast.estimate(scenario, seed=base, progress=moved, **dict(options or {}))
        finally:
            if progress is True and bar is not None:
                bar.close()
    else:
        answer = analytic.estimate(scenario)
    return answer


# --------------------------------------------------------------------------- sweep


def _labelled(
    scenario: Scenario | Mapping[str, Scenario] | Sequence[Scenario],
) -> dict[str, Scenario]:
    if isinstance(scenario, Scenario):
        return {scenario.name: scenario}
    if isinstance(scenario, Mapping):
        return dict(scenario)
    labelled: dict[str, Scenario] = {}
    for s in scenario:
        if s.name in labelled:
            raise ValueError(f"two scenarios are named {s.name!r}; pass a mapping of labels")
        labelled[s.name] = s
    return labelled


def sweep(
    scenario: Scenario | Mapping[str, Scenario] | Sequence[Scenario],
    grid: Mapping[str, Sequence[Any]] | None = None,
    *,
    ttl: Sequence[int] = (),
    policy: Sequence[str] = (),
    engines: Sequence[str] = ("simpy",),
    replications: int = 5,
    seed: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    executor: Executor | None = None,
    processes: int = 1,
    scheduler: str | Client | None = None,
    progress: bool | Progress | None = True,
) -> pd.DataFrame:
    """Run every network x grid point x engine and tabulate every metric.

    ``scenario`` is one scenario or several (a mapping from a label, the
    ``network`` column, to a scenario). ``grid`` maps fields (see
    :func:`set_field`) to the values to try; ``ttl`` and ``policy`` are
    shorthands for ``grid["ttl_seconds"]`` and ``grid["policy"]``. The SimPy
    engine runs ``replications`` seeds derived from ``seed`` (default: each
    scenario's) per point; the fast engine one estimate from ``seed`` with
    ``options["fast"]``. Runs go to ``executor``, a pool of ``processes``, or
    the Dask ``scheduler`` (a Client or an address); ``progress`` shows a
    ``tqdm.auto`` bar once a sweep has run a second (``False``: none; or
    pass a bar to update).

    Returns one row per combination: ``network``, a column per grid field,
    ``engine``, ``replications``, ``seed`` (the base seed), ``heartbeats_sent``,
    ``note`` (why an engine gave nothing, else empty) and, for every metric
    ``NAME`` of :data:`leasekit.metrics.METRICS`: ``NAME``, its 95% interval
    ``NAME_low`` and ``NAME_high``, and ``NAME_interval``, the kind of interval
    (a key of :data:`leasekit.metrics.INTERVALS`; empty when the engine gave
    no number). ``table.attrs["units"]`` maps each metric to its unit. The
    table depends on the scenarios, grid and seeds only, never on where the
    runs went.
    """
    import pandas as pd

    axes: dict[str, tuple[Any, ...]] = {k: tuple(v) for k, v in (grid or {}).items()}
    for name, values in (("policy", policy), ("ttl_seconds", ttl)):
        if values:
            if name in axes:
                raise ValueError(f"{name} given both in grid and as a keyword")
            axes[name] = tuple(values)
    if not engines:
        raise ValueError("engines: give at least one")
    for engine in engines:
        _check_engine(engine)
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    networks = _labelled(scenario)
    points = list(itertools.product(*axes.values()))
    configs: list[tuple[str, tuple[Any, ...], str, Scenario, int]] = []
    for label, base_scenario in networks.items():
        base_seed = base_scenario.seed if seed is None else seed
        for point in points:
            configured = base_scenario
            for name, value in zip(axes, point, strict=True):
                configured = set_field(configured, name, value)
            for engine in engines:
                configs.append((label, point, engine, configured, base_seed))
    tasks: list[tuple[Any, ...]] = []
    spans: list[tuple[int, int]] = []
    for _label, _point, engine, configured, base_seed in configs:
        start = len(tasks)
        if engine == "simpy":
            tasks.extend(
                ("simpy", configured, replication_seed(base_seed, i), {})
                for i in range(replications)
            )
        else:
            tasks.append((engine, configured, base_seed, dict((options or {}).get(engine, {}))))
        spans.append((start, len(tasks)))
    outcomes = _run_tasks(tasks, "sweep", executor, processes, scheduler, progress)
    rows = []
    for (label, point, engine, _configured, base_seed), (start, end) in zip(
        configs, spans, strict=True
    ):
        chunk = outcomes[start:end]
        row: dict[str, Any] = {"network": label}
        row.update(zip(axes, point, strict=True))
        row["engine"] = engine
        row["replications"] = len(chunk) if engine == "simpy" else 1
        row["seed"] = base_seed
        note = ""
        metrics: dict[str, Estimate] = {}
        if engine == "simpy":
            result = pool_runs([o for o in chunk if isinstance(o, SimpyRun)])
            metrics, row["heartbeats_sent"] = result.metrics, result.heartbeats_sent
        elif isinstance(chunk[0], _Refused):
            note, row["heartbeats_sent"] = chunk[0].reason, 0
        else:
            assert isinstance(chunk[0], EngineResult)
            metrics, row["heartbeats_sent"] = chunk[0].metrics, chunk[0].heartbeats_sent
            if chunk[0].diagnostics.get("stopped_by_time"):
                note = "stopped at its time limit (max_seconds): numbers depend on machine speed"
        row["note"] = note
        for name in METRICS:
            e = metrics.get(name)
            row[name] = math.nan if e is None else e.value
            row[f"{name}_low"] = math.nan if e is None else e.low
            row[f"{name}_high"] = math.nan if e is None else e.high
            row[f"{name}_interval"] = "" if e is None else e.method
        rows.append(row)
    table = pd.DataFrame(rows, columns=_columns(list(axes)))
    table.attrs["units"] = {name: spec.unit for name, spec in METRICS.items()}
    return table


def _columns(axes: list[str]) -> list[str]:
    head = ["network", *axes, "engine", "replications", "seed", "heartbeats_sent", "note"]
    return head + [
        f"{name}{suffix}" for name in METRICS for suffix in ("", "_low", "_high", "_interval")
    ]


# --------------------------------------------------------------------------- studies


class StudyError(ValueError):
    """A bad study file: ``path``, the dotted ``field`` and what is wrong."""

    def __init__(self, path: str | None, field_name: str, message: str) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}field {field_name!r}: {message}")
        self.path = path
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Study:
    """A TTL study: which ``networks`` (label to scenario, the run overrides
    applied), which ``grid`` of fields (it holds ``policy`` and
    ``ttl_seconds``), which ``engines``, how many SimPy ``replications``,
    the base ``seed``, the ``target`` false-loss rate (per lease-hour) and
    per-engine ``options``. ``sources`` names the scenario file of each network."""

    name: str
    networks: dict[str, Scenario]
    grid: dict[str, tuple[Any, ...]]
    engines: tuple[str, ...] = ("simpy", "fast")
    replications: int = 3
    seed: int = 1
    target: float = 1e-4
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    path: str | None = None


_STUDY_KEYS: Final = {
    "name": "a label for the study",
    "seed": "base seed of every run",
    "target": "false losses per lease-hour to stay under (upper 95% bound)",
    "replications": "SimPy seeds per grid point",
    "engines": "engines to run: simpy, fast, analytic",
    "run": "fields set on every network's scenario (e.g. workers, hours)",
    "grid": "fields to sweep: policy and ttl_seconds at least",
    "fast": "options of the fast engine (rel_halfwidth, max_cycles, max_seconds)",
    "networks": "label = scenario file, relative to the study file",
}


def load_study(path: str | Path) -> Study:
    """Read a study file (see ``simulations/study.toml``).

    Raises :class:`StudyError` naming the file and the field of any problem,
    including problems inside the network scenario files it names.
    """
    name = str(path)

    def fail(field_name: str, message: str) -> StudyError:
        return StudyError(name, field_name, message)

    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except OSError as error:
        raise fail("<file>", f"cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise fail("<file>", f"not valid TOML: {error}") from None
    for key in data:
        if key not in _STUDY_KEYS:
            raise fail(key, f"unknown field (known: {', '.join(sorted(_STUDY_KEYS))})")

    def typed(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = data.get(key, default)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise fail(key, f"expected {_kind_name(kind)}, got {value!r}")
        return value

    label = typed("name", str, Path(name).stem)
    seed = typed("seed", int, 1)
    target = float(typed("target", (int, float), 1e-4))
    if not target > 0:
        raise fail("target", f"must be > 0, got {target}")
    replications = typed("replications", int, 3)
    if replications < 1:
        raise fail("replications", f"must be >= 1, got {replications}")
    engines = tuple(typed("engines", list, ["simpy", "fast"]))
    for i, engine in enumerate(engines):
        if engine not in ENGINES:
            raise fail(f"engines[{i}]", f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    if not engines:
        raise fail("engines", "give at least one engine")
    fast_options = dict(typed("fast", dict, {}))
    for key, value in fast_options.items():
        if key not in ("rel_halfwidth", "max_seconds", "max_cycles"):
            raise fail(
                f"fast.{key}", "unknown option (known: max_cycles, max_seconds, rel_halfwidth)"
            )
        if key == "max_cycles" and (isinstance(value, bool) or not isinstance(value, int)):
            raise fail(f"fast.{key}", f"expected a whole number, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise fail(f"fast.{key}", f"expected a number > 0, got {value!r}")
    run = dict(typed("run", dict, {}))
    grid_data = dict(typed("grid", dict, {}))
    grid: dict[str, tuple[Any, ...]] = {}
    for key, values in grid_data.items():
        if not isinstance(values, list) or not values:
            raise fail(f"grid.{key}", f"expected a non-empty list of values, got {values!r}")
        grid[key] = tuple(values)
    for needed in ("policy", "ttl_seconds"):
        if needed not in grid:
            raise fail(f"grid.{needed}", "missing: a study sweeps policies and TTLs")
    networks_data = dict(typed("networks", dict, {}))
    if not networks_data:
        raise fail("networks", "give at least one: label = scenario file")
    networks: dict[str, Scenario] = {}
    sources: dict[str, str] = {}
    base_dir = Path(name).parent
    for key, file in networks_data.items():
        if not isinstance(file, str):
            raise fail(f"networks.{key}", f"expected a scenario file name, got {file!r}")
        source = base_dir / file
        try:
            scenario = load_scenario(source)
        except ScenarioError as error:
            raise fail(f"networks.{key}", str(error)) from None
        networks[key] = scenario
        sources[key] = str(source)
    study = Study(
        name=label,
        networks=networks,
        grid=grid,
        engines=engines,
        replications=replications,
        seed=seed,
        target=target,
        options={"fast": fast_options} if fast_options else {},
        sources=sources,
        path=name,
    )
    try:
        return with_run(study, run)
    except StudyError as error:
        raise StudyError(name, error.field, error.message) from None


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def with_run(study: Study, run: Mapping[str, Any]) -> Study:
    """``study`` with the fields of ``run`` (see :func:`set_field`) set on
    every network; checks that every grid value makes a valid scenario.
    Raises :class:`StudyError` naming ``run.FIELD`` or ``grid.FIELD[i]``."""
    networks = {}
    for label, scenario in study.networks.items():
        for key, value in run.items():
            try:
                scenario = set_field(scenario, key, value)
            except ScenarioError as error:
                raise StudyError(None, f"run.{key}", error.message) from None
        networks[label] = scenario
    probe = next(iter(networks.values()))
    for key, values in study.grid.items():
        for i, value in enumerate(values):
            try:
                set_field(probe, key, value)
            except ScenarioError as error:
                raise StudyError(None, f"grid.{key}[{i}]", error.message) from None
    return dataclasses.replace(study, networks=networks)


@dataclass(frozen=True)
class Recommendation:
    """For one ``network`` and ``policy``: the smallest TTL of the grid
    (``ttl_seconds``, ``None`` if none) whose false-loss rate's upper 95% bound
    is under the target, that rate (``false_losses``, from ``engine``), and at
    that TTL the mean takeover time (``takeover_seconds``, s) and the server
    load (``requests_per_lease_second``, 1/s), both from the SimPy engine."""

    network: str
    policy: str
    ttl_seconds: int | None
    false_losses: Estimate | None
    engine: str | None
    takeover_seconds: float | None
    requests_per_lease_second: float | None

    def to_dict(self) -> dict[str, Any]:
        """The ``leasekit study --json`` shape of one recommendation."""
        return {
            "network": self.network,
            "policy": self.policy,
            "ttl_seconds": self.ttl_seconds,
            "false_losses_per_lease_hour": (
                None if self.false_losses is None else self.false_losses.to_dict()
            ),
            "engine": self.engine,
            "takeover_seconds": self.takeover_seconds,
            "requests_per_lease_second": self.requests_per_lease_second,
        }


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` found: the long ``table`` (one row per network x
    grid point x engine, see :func:`sweep`), the ``combined`` table (one row
    per network x grid point; rare-event rates from the best engine that gave
    them, named in ``NAME_engine``), the ``recommendations`` and the
    ``winners`` (network to the winning policy, ``None`` if none meets the target)."""

    study: Study
    table: pd.DataFrame
    combined: pd.DataFrame
    recommendations: list[Recommendation]
    winners: dict[str, str | None]
    wall_seconds: float


def false_loss_view(scenario: Scenario) -> Scenario:
    """``scenario`` with one work item per worker: what the rare-event
    engines estimate (one lease's life). Spare workers only take over the
    items of crashed holders; they do not change how a live holder's lease
    fares, so the false-loss rate per held lease-hour is the same. Takeover
    times, which need them, come from the SimPy engine."""
    if scenario.workers.items_per_worker == 1:
        return scenario
    return dataclasses.replace(
        scenario, workers=dataclasses.replace(scenario.workers, items_per_worker=1.0)
    )


def run_study(
    study: Study,
    *,
    executor: Executor | None = None,
    processes: int = 1,
    scheduler: str | Client | None = None,
    progress: bool | Progress | None = True,
) -> StudyResult:
    """Sweep ``study`` with its engines and find the recommendations.

    The SimPy engine runs the networks as written; the rare-event engines
    (``fast``, ``analytic``) run them with one item per worker (:func:`false_loss_view`).
    """
    import pandas as pd

    started = time.perf_counter()
    rare = [e for e in study.engines if e != "simpy"]
    with executor_for(executor=executor, processes=processes, scheduler=scheduler) as pool:
        tables = []
        if "simpy" in study.engines:
            tables.append(
                sweep(
                    study.networks,
                    study.grid,
                    engines=("simpy",),
                    replications=study.replications,
                    seed=study.seed,
                    executor=pool,
                    progress=progress,
                )
            )
        if rare:
            tables.append(
                sweep(
                    {k: false_loss_view(s) for k, s in study.networks.items()},
                    study.grid,
                    engines=rare,
                    seed=study.seed,
                    options=study.options,
                    executor=pool,
                    progress=progress,
                )
            )
    table = pd.concat(tables, ignore_index=True)
    table.attrs["units"] = tables[0].attrs["units"]
    combined = combine(table, list(study.grid))
    recommendations = recommend(combined, study.target)
    return StudyResult(
        study=study,
        table=table,
        combined=combined,
        recommendations=recommendations,
        winners=winners(recommendations),
        wall_seconds=time.perf_counter() - started,
    )


def combine(table: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """One row per network x grid point from a :func:`sweep` table of several
    engines: every metric from the SimPy engine, except the rare-event rates
    (:data:`RARE_METRICS`), taken from the best engine that gave them
    (analytic, then fast, then SimPy). ``NAME_engine`` names the engine of
    each number; ``note`` keeps why an engine gave nothing."""
    import pandas as pd

    keys = ["network", *axes]
    rows = []
    for _key, group in table.groupby(keys, sort=False, dropna=False):
        by_engine = {row["engine"]: row for _, row in group.iterrows()}
        base = by_engine.get("simpy", group.iloc[0])
        row = {k: base[k] for k in keys}
        row["replications"] = by_engine["simpy"]["replications"] if "simpy" in by_engine else 0
        row["seed"] = base["seed"]
        row["heartbeats_sent"] = int(group["heartbeats_sent"].sum())
        row["note"] = "; ".join(f"{e}: {r['note']}" for e, r in by_engine.items() if r["note"])
        for name in METRICS:
            order = _RARE_PRECEDENCE if name in RARE_METRICS else ("simpy",)
            source = next(
                (e for e in order if e in by_engine and not math.isnan(by_engine[e][name])),
                None,
            )
            chosen = by_engine[source] if source is not None else None
            for suffix in ("", "_low", "_high", "_interval"):
                column = f"{name}{suffix}"
                fallback: Any = "" if suffix == "_interval" else math.nan
                row[column] = chosen[column] if chosen is not None else fallback
            row[f"{name}_engine"] = source or ""
        rows.append(row)
    columns = [*keys, "replications", "seed", "heartbeats_sent", "note"] + [
        f"{name}{suffix}"
        for name in METRICS
        for suffix in ("", "_low", "_high", "_interval", "_engine")
    ]
    combined = pd.DataFrame(rows, columns=columns)
    combined.attrs["units"] = {name: spec.unit for name, spec in METRICS.items()}
    return combined


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def recommend(combined: pd.DataFrame, target: float) -> list[Recommendation]:
    """For each network and policy of a :func:`combine` table, the smallest
    TTL whose ``false_losses_per_lease_hour_high`` is under ``target``."""
    out = []
    name = "false_losses_per_lease_hour"
    for (network, policy), group in combined.groupby(["network", "policy"], sort=False):
        ordered = group.sort_values("ttl_seconds")
        meets = ordered[ordered[f"{name}_high"] < target]
        if meets.empty:
            out.append(Recommendation(str(network), str(policy), None, None, None, None, None))
            continue
        row = meets.iloc[0]
        out.append(
            Recommendation(
                network=str(network),
                policy=str(policy),
                ttl_seconds=int(row["ttl_seconds"]),
                false_losses=Estimate(
                    float(row[name]),
                    float(row[f"{name}_low"]),
                    float(row[f"{name}_high"]),
                    str(row[f"{name}_interval"]),
                ),
                engine=str(row[f"{name}_engine"]),
                takeover_seconds=_finite(row["takeover_seconds_mean"]),
                requests_per_lease_second=_finite(row["requests_per_lease_second"]),
            )
        )
    return out


def winners(recommendations: Iterable[Recommendation]) -> dict[str, str | None]:
    """Per network, the policy that meets the target with the shortest mean
    takeover time (then the lower server load, then the smaller TTL);
    ``None`` when no policy meets it."""
    best: dict[str, tuple[tuple[float, float, float], str] | None] = {}
    for r in recommendations:
        best.setdefault(r.network, None)
        if r.ttl_seconds is None:
            continue
        key = (
            math.inf if r.takeover_seconds is None else r.takeover_seconds,
            math.inf if r.requests_per_lease_second is None else r.requests_per_lease_second,
            float(r.ttl_seconds),
        )
        current = best[r.network]
        if current is None or key < current[0]:
            best[r.network] = (key, r.policy)
    return {network: None if b is None else b[1] for network, b in best.items()}
