"""A SimPy simulator of a lease server and its workers (``docs/simulator.md``).

The simulated server is :class:`leasekit.lease.LeaseBook` on simulated time
(``now_us = epoch + round(env.now * 1e6)``); simulated workers run
:class:`leasekit.loop.WorkerLoop` between leases and the policies of
:mod:`leasekit.policy` while they hold one, on ``env.now``. Nothing of
either is re-implemented here, so what a simulation says holds for the real
client.

* :class:`Scenario` (and its parts) describes a run; :func:`load_scenario`
  reads one from TOML (see ``simulations/*.toml``).
* :func:`simulate` runs it once: a :class:`RunResult` with the run's
  ``totals`` (a :class:`leasekit.metrics.Totals`, counted as the run goes),
  its ``metrics`` (this run's values of :func:`leasekit.metrics.summarize`)
  and, with ``events=True``, its event log (``events``, columns
  :data:`EVENT_COLUMNS`).
* :func:`replicate` runs many seeds (optionally in processes) and pools
  what they counted into every metric with its 95% interval
  (:meth:`Replications.estimates`, made by :func:`leasekit.metrics.summarize`:
  exact Poisson on pooled counts for rates, never a t-interval over seeds).
* :class:`NetworkModel` is the interface of the network: pass any factory
  ``(scenario, streams) -> NetworkModel`` as ``network=`` to replace the
  scenario's delays and losses (a trace-driven network, for instance).
* ``simulate(..., setup=fn)`` hands the :class:`Engine` to ``fn`` before the
  run, to add behaviour (a SimPy process that crashes or pauses
  :class:`SimWorker` s) without touching the engine.

Every metric name is defined once, in :data:`leasekit.metrics.METRICS`
(``docs/metrics.md``: each metric's definition, unit and interval); the
simulator's exact definitions (what counts as held, as a false loss of each
cause, as a split-brain or double-holder episode) are in
``leasekit/sim/_monitor.py``'s docstring.
"""

from ..metrics import Estimate
from ._engine import ENVIRONMENT_ID, EPOCH_US, Engine, SimWorker
from ._monitor import EVENT_COLUMNS, CsvEventWriter, EventSink
from ._network import NetworkFactory, NetworkModel, ScenarioNetwork, Streams
from ._run import (
    Replications,
    RunResult,
    replicate,
    replication_seed,
    simulate,
)
from ._scenario import (
    Burst,
    Crashes,
    Direction,
    Fault,
    Moment,
    Network,
    Pauses,
    Scenario,
    ScenarioError,
    Server,
    Window,
    Workers,
    load_scenario,
    scenario_from_dict,
    with_overrides,
)

__all__ = [
    "ENVIRONMENT_ID",
    "EPOCH_US",
    "EVENT_COLUMNS",
    "Burst",
    "Crashes",
    "CsvEventWriter",
    "Direction",
    "Engine",
    "Estimate",
    "EventSink",
    "Fault",
    "Moment",
    "Network",
    "NetworkFactory",
    "NetworkModel",
    "Pauses",
    "Replications",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "ScenarioNetwork",
    "Server",
    "SimWorker",
    "Streams",
    "Window",
    "Workers",
    "load_scenario",
    "replicate",
    "replication_seed",
    "scenario_from_dict",
    "simulate",
    "with_overrides",
]
