"""What the fast and analytic engines can model, and the error naming what they cannot."""

from __future__ import annotations

from .distributions import parse_delay
from .sim import Scenario

__all__ = ["UnsupportedScenario", "check_one_lease"]


class UnsupportedScenario(ValueError):
    """A scenario an engine cannot model: ``field`` is the dotted scenario field
    (or feature) at fault, ``message`` says why and what to do instead."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"field {field_name!r}: {message}")
        self.field = field_name
        self.message = message


def check_one_lease(scenario: Scenario, engine: str) -> None:
    """Refuse what neither the fast nor the analytic engine models: the
    features that act on the fleet or the server rather than on one lease's
    life on a stationary network."""
    workers, server, network = scenario.workers, scenario.server, scenario.network
    other = "use --engine simpy"
    if workers.crashes.schedule:
        raise UnsupportedScenario(
            "workers.crashes.schedule",
            f"the {engine} engine models a stationary lease life; crashes at set times are "
            f"not stationary ({other})",
        )
    if workers.pauses.schedule:
        raise UnsupportedScenario(
            "workers.pauses.schedule",
            f"the {engine} engine models pauses as a Poisson stream (rate_per_hour), not at "
            f"set times ({other})",
        )
    if workers.items_per_worker != 1:
        raise UnsupportedScenario(
            "workers.items_per_worker",
            f"the {engine} engine models one worker holding one item (1.0), got "
            f"{workers.items_per_worker:g} ({other})",
        )
    if network.partitions:
        raise UnsupportedScenario(
            "network.partitions", f"partitions are not stationary network draws ({other})"
        )
    if network.faults:
        raise UnsupportedScenario(
            "network.faults", f"faults lose chosen messages, not random ones ({other})"
        )
    processing = parse_delay(server.processing)
    if processing.kind != "const" or processing.params[0] != 0:
        raise UnsupportedScenario(
            "server.processing",
            f"the {engine} engine models a server that answers at once (const:0), got "
            f"{server.processing} ({other})",
        )
    if server.capacity:
        raise UnsupportedScenario(
            "server.capacity",
            f"a server of limited capacity couples the leases through its queue ({other})",
        )
    if server.stalls:
        raise UnsupportedScenario("server.stalls", f"server stalls are not stationary ({other})")
