"""leasekit: work-lease heartbeats, held for real, simulated and studied.

The protocol core is sans-I/O and written once:

* :mod:`leasekit.protocol`: wire models, ``NO_HEARTBEAT``, timestamps, errors;
* :mod:`leasekit.lease`: the server-side lease state machine;
* :mod:`leasekit.policy`: client heartbeat policies.

The reference server, the async client and the simulator all drive these.
"""

from .lease import TRANSITIONS, LeaseBook, LeaseConfig, LeaseRules, WorkRecord, state_diagram
from .policy import (
    EndReason,
    FixedPolicy,
    HeartbeatPolicy,
    LeasekitPolicy,
    Outcome,
    Result,
    SdkPolicy,
    Send,
    Stop,
    classify_status,
    make_policy,
)
from .protocol import (
    NO_HEARTBEAT,
    ApiError,
    ErrorType,
    HeartbeatAnswer,
    LeaseState,
    PreconditionFailed,
    QueueStats,
    WorkItem,
    WorkList,
    WorkState,
    format_timestamp,
    parse_timestamp,
)

__version__ = "0.1.0"

__all__ = [
    "NO_HEARTBEAT",
    "TRANSITIONS",
    "ApiError",
    "EndReason",
    "ErrorType",
    "FixedPolicy",
    "HeartbeatAnswer",
    "HeartbeatPolicy",
    "LeaseBook",
    "LeaseConfig",
    "LeaseRules",
    "LeaseState",
    "LeasekitPolicy",
    "Outcome",
    "PreconditionFailed",
    "QueueStats",
    "Result",
    "SdkPolicy",
    "Send",
    "Stop",
    "WorkItem",
    "WorkList",
    "WorkRecord",
    "WorkState",
    "__version__",
    "classify_status",
    "format_timestamp",
    "make_policy",
    "parse_timestamp",
    "state_diagram",
]
