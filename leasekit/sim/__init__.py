"""A SimPy simulator of a lease server and its workers.

The simulated server is :class:`leasekit.lease.LeaseBook` on simulated time
(``now_us = epoch + round(env.now * 1e6)``); simulated workers run the
policies of :mod:`leasekit.policy` on ``env.now``. Nothing of either is
re-implemented here, so what a simulation says holds for the real client.

* :class:`Scenario` (and its parts) describes a run; :func:`load_scenario`
  reads one from TOML (see ``simulations/*.toml``).
* :func:`simulate` runs it once: a :class:`RunResult` with the run's
  ``metrics`` and its event log (``events``, columns :data:`EVENT_COLUMNS`).
* :func:`replicate` runs many seeds (optionally in processes) and pools
  what they counted (:class:`leasekit.metrics.Totals`) into every metric with
  its 95% interval (:meth:`Replications.estimates`, made by
  :func:`leasekit.metrics.summarize`: exact Poisson on pooled counts for
  rates, never a t-interval over seeds).
* :class:`NetworkModel` is the interface of the network: pass any factory
  ``(scenario, streams) -> NetworkModel`` as ``network=`` to replace the
  scenario's delays and losses (a trace-driven network, for instance).

Metrics (rates per held lease-hour; the glossary, with each metric's
definition, unit and interval, is :data:`leasekit.metrics.METRICS`, also
``docs/metrics.md``): ``false_losses_per_lease_hour`` and its causes
(``false_losses_{server_expiry,unseen_answer,give_up,rejection}_per_lease_hour``),
``server_expiries_per_lease_hour``, ``precondition_failures_per_lease_hour``,
``precondition_failure_rate`` (412s per heartbeat answer seen),
``split_brain_seconds_per_lease_hour`` (a worker holds what the server
expired), ``double_holder_seconds_per_lease_hour`` (two workers hold one
item), ``takeover_seconds_mean``/``_max`` (crash to the next claim),
``requests_per_lease_second`` (server load), ``lease_hours``.
"""

from ..metrics import Estimate
from ._engine import ENVIRONMENT_ID, EPOCH_US, Engine
from ._monitor import EVENT_COLUMNS
from ._network import NetworkFactory, NetworkModel, ScenarioNetwork, Streams
from ._run import (
    Replications,
    RunResult,
    replicate,
    replication_seed,
    simulate,
)
from ._run import t_interval as t_interval  # deprecated, not in __all__
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
    "Direction",
    "Engine",
    "Estimate",
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
