"""Scenarios: plain dataclasses, readable from TOML files in ``simulations/``.

Every time is in seconds of simulated time (``_s``), every rate per hour of
simulated time (``_per_hour``), every delay a spec of
:func:`leasekit.distributions.parse_delay`. A scenario is checked when it is
built; :func:`load_scenario` names the file and the dotted field of any problem.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..distributions import parse_delay
from ..policy import make_policy

__all__ = [
    "Burst",
    "Crashes",
    "Direction",
    "Fault",
    "Moment",
    "Network",
    "Pauses",
    "Scenario",
    "ScenarioError",
    "Server",
    "Window",
    "Workers",
    "load_scenario",
    "scenario_from_dict",
    "with_overrides",
]


class ScenarioError(ValueError):
    """A bad scenario: ``path`` (or ``None``), the dotted ``field`` and what is wrong."""

    def __init__(self, path: str | None, field_name: str, message: str) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}field {field_name!r}: {message}")
        self.path = path
        self.field = field_name
        self.message = message


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ScenarioError(None, field_name, message)


def _check_delay(spec: str, field_name: str) -> None:
    try:
        parse_delay(spec)
    except ValueError as error:
        raise ScenarioError(None, field_name, str(error)) from None


def _check_probability(value: float, field_name: str) -> None:
    _check(0.0 <= value <= 1.0, field_name, f"must be a probability in [0, 1], got {value}")


@dataclass(frozen=True)
class Window:
    """An interval of simulated time, ``[start_s, start_s + duration_s)``.

    ``workers`` lists the worker indices (from 0) it applies to; empty means all.
    """

    start_s: float
    duration_s: float
    workers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check(self.start_s >= 0, "start_s", f"must be >= 0, got {self.start_s}")
        _check(self.duration_s >= 0, "duration_s", f"must be >= 0, got {self.duration_s}")
        _check(all(w >= 0 for w in self.workers), "workers", "indices must be >= 0")


@dataclass(frozen=True)
class Moment:
    """An instant ``at_s`` for the listed ``workers`` (empty means all)."""

    at_s: float
    workers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check(self.at_s >= 0, "at_s", f"must be >= 0, got {self.at_s}")
        _check(all(w >= 0 for w in self.workers), "workers", "indices must be >= 0")


@dataclass(frozen=True)
class Crashes:
    """Worker crashes: a ``schedule`` of moments and/or a Poisson
    ``rate_per_hour`` per worker. A crashed worker sends nothing more; with
    ``restart_after`` (a delay spec) it comes back as a fresh process that
    polls again, otherwise it stays down."""

    schedule: tuple[Moment, ...] = ()
    rate_per_hour: float = 0.0
    restart_after: str | None = None

    def __post_init__(self) -> None:
        _check(self.rate_per_hour >= 0, "rate_per_hour", "must be >= 0")
        if self.restart_after is not None:
            _check_delay(self.restart_after, "restart_after")


@dataclass(frozen=True)
class Pauses:
    """GC-like stalls of a worker: a ``schedule`` of windows and/or a Poisson
    ``rate_per_hour`` per worker with durations drawn from ``duration`` (a delay
    spec). A paused worker sends nothing; its timers and answers are handled
    when the pause ends."""

    schedule: tuple[Window, ...] = ()
    rate_per_hour: float = 0.0
    duration: str = "const:5"

    def __post_init__(self) -> None:
        _check(self.rate_per_hour >= 0, "rate_per_hour", "must be >= 0")
        _check_delay(self.duration, "duration")


@dataclass(frozen=True)
class Workers:
    """The worker fleet.

    ``policy`` is a :func:`leasekit.policy.make_policy` spec (``sdk``,
    ``leasekit:ttl_seconds=60``, ``fixed:interval=10``). There are
    ``round(count * items_per_worker)`` work items (at least one); with fewer
    items than workers the spare workers keep polling and take over the items
    of crashed holders. Each worker starts at a uniform time in
    ``[0, start_spread_s]``. Between leases a worker follows
    :class:`leasekit.loop.WorkerLoop`, the official worker loop's rules the
    async worker follows too: it waits ``empty_poll_wait`` (a delay spec)
    after an empty poll, gives a poll or ack up after ``request_timeout_s``,
    backs off ``min(60, 2**n) + uniform(0, 1)`` seconds after ``n`` failed
    polls (or acks) in a row, and polls again at once after a lease ends.
    A worker's heartbeat timers (sends and attempt timeouts) fire
    ``timer_slack_s`` late, as a real event loop's do: it breaks exact ties
    (an attempt timing out exactly one TTL after the last success) the way a
    real worker does.

    ``enforce_deadline`` imposes the local-deadline rule of
    :class:`~leasekit.policy.HeartbeatPolicy` on policies that do not keep it
    themselves, as leasekit's keeper does: a worker never believes in a lease
    past its policy's local ``deadline``. ``LeasekitPolicy`` always keeps it;
    the default (off) simulates ``sdk`` and ``fixed`` as the official worker
    loop runs them.

    ``unconditional`` sends every heartbeat without
    ``expected_last_heartbeat``: the server then renews (or takes over) the
    lease whoever holds it, so a worker that lost its lease steals it back
    and two workers hold one item (docs/protocol.md: why heartbeats are
    conditional). The split-brain and double-holder metrics measure it.
    """

    count: int = 10
    policy: str = "sdk"
    items_per_worker: float = 1.0
    start_spread_s: float = 5.0
    empty_poll_wait: str = "uniform:1,3"
    request_timeout_s: float = 10.0
    timer_slack_s: float = 1e-6
    enforce_deadline: bool = False
    unconditional: bool = False
    crashes: Crashes = field(default_factory=Crashes)
    pauses: Pauses = field(default_factory=Pauses)

    def __post_init__(self) -> None:
        _check(self.count >= 1, "count", f"must be >= 1, got {self.count}")
        _check(self.items_per_worker > 0, "items_per_worker", "must be > 0")
        _check(self.start_spread_s >= 0, "start_spread_s", "must be >= 0")
        _check(self.request_timeout_s > 0, "request_timeout_s", "must be > 0")
        _check(0 <= self.timer_slack_s < 1, "timer_slack_s", "must be in [0, 1)")
        _check_delay(self.empty_poll_wait, "empty_poll_wait")
        try:
            make_policy(self.policy)
        except ValueError as error:
            raise ScenarioError(None, "policy", str(error)) from None

    @property
    def items(self) -> int:
        """How many work items the queue holds."""
        return max(1, round(self.count * self.items_per_worker))


@dataclass(frozen=True)
class Server:
    """The lease server: TTL settings (whole seconds, see
    :class:`leasekit.lease.LeaseConfig`), ``processing`` time per request (a
    delay spec), ``capacity`` requests served at once (0: unlimited, no
    queue) with at most ``queue_limit`` waiting before it answers
    ``overload_status`` (529 or 429), ``stalls`` (windows in which it
    processes nothing; requests wait for the end), and the long poll: an
    empty poll is held ``long_poll_s`` and checked once more."""

    default_ttl_seconds: int = 90
    min_ttl_seconds: int = 5
    max_ttl_seconds: int = 3600
    processing: str = "const:0"
    capacity: int = 0
    queue_limit: int = 1000
    overload_status: int = 529
    long_poll_s: float = 0.999
    stalls: tuple[Window, ...] = ()

    def __post_init__(self) -> None:
        _check(
            1 <= self.min_ttl_seconds <= self.default_ttl_seconds <= self.max_ttl_seconds <= 86400,
            "default_ttl_seconds",
            "need 1 <= min_ttl_seconds <= default_ttl_seconds <= max_ttl_seconds <= 86400, got "
            f"{self.min_ttl_seconds}, {self.default_ttl_seconds}, {self.max_ttl_seconds}",
        )
        _check_delay(self.processing, "processing")
        _check(self.capacity >= 0, "capacity", "must be >= 0 (0: unlimited)")
        _check(self.queue_limit >= 0, "queue_limit", "must be >= 0")
        _check(self.overload_status in (429, 529), "overload_status", "must be 429 or 529")
        _check(self.long_poll_s >= 0, "long_poll_s", "must be >= 0")


@dataclass(frozen=True)
class Burst:
    """Gilbert-Elliott bursty loss, per message: a good link turns bad with
    probability ``p_enter`` and a bad one good with ``p_exit`` before each
    message; a bad link loses a message with probability ``loss_bad`` (a good
    one with the direction's ``loss``). Mean burst: ``1 / p_exit`` messages."""

    p_enter: float = 0.0
    p_exit: float = 1.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        _check_probability(self.p_enter, "p_enter")
        _check_probability(self.p_exit, "p_exit")
        _check(self.p_exit > 0, "p_exit", "must be > 0")
        _check_probability(self.loss_bad, "loss_bad")


@dataclass(frozen=True)
class Direction:
    """One direction of the network: one-way ``delay`` (a delay spec),
    independent ``loss`` probability, optional bursty loss."""

    delay: str = "const:0.05"
    loss: float = 0.0
    burst: Burst | None = None

    def __post_init__(self) -> None:
        _check_delay(self.delay, "delay")
        _check_probability(self.loss, "loss")


@dataclass(frozen=True)
class Fault:
    """Lose chosen messages on purpose: the first ``count`` ``kind`` requests
    (``heartbeat``, ``poll`` or ``ack``) that ``worker`` sends at or after
    ``after_s``; with ``direction = "answer"``, the first ``count`` answers to
    its ``kind`` requests that the server sends at or after ``after_s`` (the
    request was processed, the worker never sees the answer)."""

    worker: int
    after_s: float
    direction: str = "request"
    kind: str = "heartbeat"
    count: int = 1

    def __post_init__(self) -> None:
        _check(self.worker >= 0, "worker", "must be >= 0")
        _check(self.direction in ("request", "answer"), "direction", "request or answer")
        _check(self.kind in ("heartbeat", "poll", "ack"), "kind", "heartbeat, poll or ack")
        _check(self.count >= 1, "count", "must be >= 1")


@dataclass(frozen=True)
class Network:
    """The network between workers and server: ``request`` (worker to server)
    and ``answer`` directions, ``partitions`` (windows in which the listed
    workers reach nothing: messages sent then are lost both ways) and
    ``faults`` (single messages lost on purpose)."""

    request: Direction = field(default_factory=Direction)
    answer: Direction = field(default_factory=Direction)
    partitions: tuple[Window, ...] = ()
    faults: tuple[Fault, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """A whole simulation: ``duration_s`` of simulated time, of which the
    first ``warmup_s`` are left out of the metrics, and a ``seed`` from which
    every random stream is derived."""

    name: str = "default"
    duration_s: float = 3600.0
    warmup_s: float = 0.0
    seed: int = 1
    workers: Workers = field(default_factory=Workers)
    server: Server = field(default_factory=Server)
    network: Network = field(default_factory=Network)

    def __post_init__(self) -> None:
        _check(self.duration_s > 0, "duration_s", f"must be > 0, got {self.duration_s}")
        _check(
            0 <= self.warmup_s < self.duration_s,
            "warmup_s",
            f"must be in [0, duration_s), got {self.warmup_s}",
        )
        count = self.workers.count
        for name, windows in (
            ("workers.pauses.schedule", self.workers.pauses.schedule),
            ("network.partitions", self.network.partitions),
        ):
            for i, window in enumerate(windows):
                bad = [w for w in window.workers if w >= count]
                _check(not bad, f"{name}[{i}].workers", f"no worker {bad[0] if bad else ''}")
        for i, moment in enumerate(self.workers.crashes.schedule):
            bad = [w for w in moment.workers if w >= count]
            _check(not bad, f"workers.crashes.schedule[{i}].workers", "worker index out of range")
        for i, fault in enumerate(self.network.faults):
            _check(fault.worker < count, f"network.faults[{i}].worker", "no such worker")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``--json`` prints and a TOML file would hold)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- TOML


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario from a TOML file; :class:`ScenarioError` names file and field."""
    name = str(path)
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except OSError as error:
        raise ScenarioError(name, "<file>", f"cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(name, "<file>", f"not valid TOML: {error}") from None
    try:
        return scenario_from_dict(data)
    except ScenarioError as error:
        raise ScenarioError(name, error.field, error.message) from None


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    """Build a scenario from plain data (a parsed TOML table)."""
    scenario: Scenario = _build(Scenario, data, "")
    return scenario


def _build(cls: type[Any], data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ScenarioError(None, prefix.rstrip(".") or "<top>", "expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ScenarioError(
                None, prefix + key, f"unknown field (known: {', '.join(sorted(known))})"
            )
    kwargs = {key: _convert(hints[key], value, prefix + key) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ScenarioError as error:
        raise ScenarioError(None, prefix + error.field, error.message) from None


def _convert(kind: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is types.UnionType or origin is typing.Union:
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return _convert(options[0], value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ScenarioError(None, where, f"expected a list, got {value!r}")
        (item_kind, _ellipsis) = typing.get_args(kind)
        return tuple(_convert(item_kind, v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _build(kind, value, where + ".")
    if kind is bool:
        if not isinstance(value, bool):
            raise ScenarioError(None, where, f"expected true or false, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(None, where, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ScenarioError(None, where, "must be finite")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(None, where, f"expected an integer, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ScenarioError(None, where, f"expected a string, got {value!r}")
        return value
    raise ScenarioError(None, where, f"unsupported type {kind!r}")  # pragma: no cover


def with_overrides(
    scenario: Scenario,
    *,
    workers: int | None = None,
    hours: float | None = None,
    policy: str | None = None,
    ttl_seconds: int | None = None,
    latency: str | None = None,
    loss: float | None = None,
    answer_loss: float | None = None,
    seed: int | None = None,
) -> Scenario:
    """A copy of ``scenario`` with the common fields replaced (``None`` keeps one).

    ``ttl_seconds`` is the TTL the server grants whatever a worker asks for
    (default, min and max all set to it); ``latency`` a delay spec for both
    directions; ``loss`` the request loss, ``answer_loss`` the loss of
    answers to processed requests. Raises :class:`ScenarioError` naming the
    field of a bad value.
    """
    replace = dataclasses.replace
    try:
        if workers is not None or policy is not None:
            scenario = replace(
                scenario,
                workers=replace(
                    scenario.workers,
                    count=scenario.workers.count if workers is None else workers,
                    policy=scenario.workers.policy if policy is None else policy,
                ),
            )
    except ScenarioError as error:
        raise ScenarioError(None, "workers." + error.field, error.message) from None
    try:
        if ttl_seconds is not None:
            scenario = replace(
                scenario,
                server=replace(
                    scenario.server,
                    default_ttl_seconds=ttl_seconds,
                    min_ttl_seconds=ttl_seconds,
                    max_ttl_seconds=ttl_seconds,
                ),
            )
    except ScenarioError as error:
        raise ScenarioError(None, "server.ttl_seconds", error.message) from None
    network = scenario.network
    try:
        request = network.request
        answer = network.answer
        if latency is not None:
            request = replace(request, delay=latency)
        if loss is not None:
            request = replace(request, loss=loss)
    except ScenarioError as error:
        raise ScenarioError(None, "network.request." + error.field, error.message) from None
    try:
        if latency is not None:
            answer = replace(answer, delay=latency)
        if answer_loss is not None:
            answer = replace(answer, loss=answer_loss)
    except ScenarioError as error:
        raise ScenarioError(None, "network.answer." + error.field, error.message) from None
    scenario = replace(scenario, network=replace(network, request=request, answer=answer))
    if hours is not None:
        scenario = replace(scenario, duration_s=hours * 3600.0)
    if seed is not None:
        scenario = replace(scenario, seed=seed)
    return scenario
