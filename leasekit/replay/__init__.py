"""Trace replay: import traces from leasekit, CSV and OpenTelemetry, ask what other
TTLs would have done, fit a network model, and drive the simulator from a trace.

* :func:`load_any_trace`: any supported trace file as the attempt table of
  :func:`leasekit.trace.read_trace` (:func:`detect_format` tells which it is);
* :func:`what_if_ttl`: the leases each TTL would have lost (false losses, the
  glossary's meaning: one per lease) and the gaps that would have expired,
  from the trace's arrival times, with bounds, decided by
  :class:`leasekit.lease.LeaseRules`; :func:`what_if_totals` gives the same
  as :class:`leasekit.metrics.Totals`;
* :func:`fit_network`: delay, loss and burstiness of the trace's network, as a
  :class:`NetworkFit` that becomes a simulator scenario's network;
* :func:`simulate_on_trace`: another policy or TTL in the simulator, on a
  :class:`TraceNetwork` that replays the trace's round trips and outages.
"""

from ._drive import TraceNetwork, simulate_on_trace
from ._fit import NetworkFit, fit_network
from ._formats import FORMATS, HEARTBEAT_SPAN, detect_format, load_any_trace
from ._whatif import BOUNDS, WHAT_IF_COLUMNS, what_if_totals, what_if_ttl

__all__ = [
    "BOUNDS",
    "FORMATS",
    "HEARTBEAT_SPAN",
    "WHAT_IF_COLUMNS",
    "NetworkFit",
    "TraceNetwork",
    "detect_format",
    "fit_network",
    "load_any_trace",
    "simulate_on_trace",
    "what_if_totals",
    "what_if_ttl",
]
