"""Lease timelines and the lifecycle diagram: figures to teach the protocol from.

:func:`lease_timeline` draws a sequence diagram on a time axis: one lane per
worker and one for the server, every heartbeat as an arrow from the worker
to the server (when the server processed it) and its answer as an arrow
back, with lost messages, 412s, adoptions, claims, expiries, stops and
crashes marked, and the time each worker believed it held the lease (and
the server's own view of who held it) as bands along the lanes.

It reads either source leasekit produces:

* the simulator's event log (``RunResult.events``, columns
  :data:`leasekit.sim.EVENT_COLUMNS`): every instant is known, the server's
  transitions included;
* a recorded trace (:func:`leasekit.trace.read_trace`'s :class:`Trace`, or
  any attempt table such as :func:`leasekit.replay.load_any_trace` returns).
  A client trace knows send and receive times only, so the server's side is
  reconstructed: a success lands at the server's own ``last_heartbeat``
  timestamp (moved onto the trace's clock, clamped into the attempt's
  window) or at the midpoint; a timed-out attempt whose value a later
  ``current_state`` revealed reached the server and lost its answer; a
  lease whose holder's next request reached the server after the last
  renewal's deadline is marked expired there (estimated).

:func:`state_diagram_figure` draws the work item's lifecycle from
:data:`leasekit.lease.TRANSITIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import pandas as pd

from .lease import TRANSITIONS
from .policy import Outcome
from .protocol import NO_HEARTBEAT, WorkState, parse_timestamp
from .trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["lease_timeline", "state_diagram_figure"]

SERVER_LANE: Final = "server"

# one colour per answer kind; lost messages are drawn black with a cross
_COLOURS: Final = {
    "ok": "tab:blue",
    "precondition_failed": "tab:red",
    "transient": "tab:orange",
    "rejected": "tab:brown",
    "timeout": "0.35",
    "poll": "0.6",
}
_WORKER_COLOURS: Final = ("tab:green", "tab:purple", "tab:cyan", "tab:olive", "tab:pink", "0.4")

# marks: label, marker, colour, size
_MARKS: Final = {
    "claim": ("claim", "D", "tab:green", 60),
    "expire": ("server expiry", "X", "tab:red", 110),
    "expire_estimated": ("server expiry (estimated)", "X", "tab:red", 110),
    "steal": ("lease taken by an unconditional heartbeat", "D", "tab:red", 70),
    "adopt": ("412 adopted (safe)", "*", "tab:purple", 170),
    "lost": ("lease lost / given up", "v", "tab:red", 80),
    "timeout": ("attempt timed out", "o", "0.35", 40),
    "stop": ("stop requested / stopped", "s", "black", 60),
    "crash": ("crash", "P", "black", 110),
    "restart": ("restart", "^", "black", 60),
    "pause": ("pause", "|", "black", 160),
}

_END_REASONS_LOST: Final = frozenset({"lost", "assumed_lost", "rejected", "deadline"})


@dataclass
class _Message:
    """One request and its answer, times in seconds on the figure's clock.

    ``arrived_s``: when the server processed it (``nan``: never);
    ``answered_s``: when the server answered; ``seen_s``: when the worker
    learned how it ended; ``lost``: ``"request"``, ``"answer"`` or ``""``.
    """

    worker: str
    kind: str
    sent_s: float
    arrived_s: float
    answered_s: float
    seen_s: float
    outcome: str
    status: float
    lost: str


@dataclass
class _Timeline:
    """What a source says, in one shape for drawing."""

    workers: list[str]
    messages: list[_Message] = field(default_factory=list)
    # (lane, time, mark kind, note)
    marks: list[tuple[str, float, str, str]] = field(default_factory=list)
    # worker belief: (worker, start, end)
    held: list[tuple[str, float, float]] = field(default_factory=list)
    # server's grant: (holder, start, end)
    granted: list[tuple[str, float, float]] = field(default_factory=list)
    end_s: float = 0.0


# --------------------------------------------------------------------------- sources


def _lane_name(worker: Any) -> str:
    """A worker's lane: its name when it says it is a worker, else ``worker NAME``."""
    name = str(worker)
    return name if name.startswith("worker") else f"worker {name}"


def _is_event_log(frame: pd.DataFrame) -> bool:
    return {"event", "processed_s", "seen_s"} <= set(frame.columns)


def _from_event_log(events: pd.DataFrame, work_id: str | None, polls: bool) -> _Timeline:
    """The simulator's log: every instant is in it."""
    frame = events
    if work_id is not None:
        # poll rows may carry no item; keep them for the workers that hold it
        frame = frame[(frame["work_id"] == work_id) | (frame["work_id"] == "")]
    frame = frame.sort_values("time_s", kind="stable")
    workers = sorted({int(w) for w in frame["worker"].dropna()})
    line = _Timeline([f"worker {w}" for w in workers])
    line.end_s = float(frame["time_s"].max()) if len(frame) else 0.0

    def lane(worker: Any) -> str:
        return f"worker {int(worker)}"

    ends: dict[tuple[str, float], str] = {}
    starts: dict[str, float] = {}
    tenure: dict[str, tuple[str, float]] = {}  # work_id -> (holder, claimed)
    records: list[Any] = list(frame.itertuples(index=False))
    for row in records:
        event = row.event
        if event == "lease_start":
            starts[lane(row.worker)] = float(row.time_s)
        elif event == "lease_end":
            who = lane(row.worker)
            begin = starts.pop(who, float(row.time_s))
            line.held.append((who, begin, float(row.time_s)))
            ends[(who, round(float(row.time_s), 9))] = str(row.detail)
            if str(row.detail) in _END_REASONS_LOST:
                line.marks.append((who, float(row.time_s), "lost", str(row.detail)))
        elif event == "claim":
            line.marks.append((SERVER_LANE, float(row.time_s), "claim", lane(row.worker)))
            tenure[str(row.work_id)] = (lane(row.worker), float(row.time_s))
        elif event in ("expire", "steal"):
            # the item's grant ends: it expired, or another worker took it
            holder = tenure.pop(str(row.work_id), None)
            if holder is not None:
                line.granted.append((holder[0], holder[1], float(row.time_s)))
            if event == "expire":
                note = holder[0] if holder is not None else ""
                line.marks.append((SERVER_LANE, float(row.time_s), "expire", note))
            else:
                line.marks.append((SERVER_LANE, float(row.time_s), "steal", lane(row.worker)))
                tenure[str(row.work_id)] = (lane(row.worker), float(row.time_s))
        elif event == "crash":
            line.marks.append((lane(row.worker), float(row.time_s), "crash", ""))
        elif event in ("restart", "pause"):
            line.marks.append((lane(row.worker), float(row.time_s), str(event), str(row.detail)))
        elif event in ("heartbeat", "poll", "ack"):
            if event != "heartbeat" and not polls:
                continue
            detail = str(row.detail)
            line.messages.append(
                _Message(
                    worker=lane(row.worker),
                    kind=str(event),
                    sent_s=float(row.sent_s),
                    arrived_s=float(row.processed_s),
                    answered_s=float(row.answered_s),
                    seen_s=float(row.seen_s),
                    outcome=str(row.outcome),
                    status=float(row.status) if pd.notna(row.status) else math.nan,
                    lost=detail if detail in ("request", "answer") else "",
                )
            )
    for who, begin in starts.items():
        line.held.append((who, begin, line.end_s))
    for granted_to, claimed in tenure.values():
        line.granted.append((granted_to, claimed, line.end_s))
    # a 412 that did not end the worker's lease was adopted
    for message in line.messages:
        if message.kind != "heartbeat" or message.outcome != Outcome.PRECONDITION_FAILED.value:
            continue
        if (message.worker, round(message.seen_s, 9)) in ends:
            continue
        if any(w == message.worker and a < message.seen_s < b for w, a, b in line.held):
            line.marks.append((message.worker, message.seen_s, "adopt", ""))
    return line


def _server_clock(attempts: pd.DataFrame) -> float | None:
    """Seconds to add to a server timestamp (as trace seconds) to put it on the
    trace's clock: the median offset over successes, or ``None``."""
    offsets = []
    records: list[Any] = list(attempts.itertuples(index=False))
    for row in records:
        if row.outcome != Outcome.OK.value or pd.isna(row.received_s):
            continue
        server = _stamp_seconds(row.last_heartbeat, row.sent_at, row.sent_s)
        if server is not None:
            offsets.append((row.sent_s + row.received_s) / 2 - server)
    if not offsets:
        return None
    offsets.sort()
    return float(offsets[len(offsets) // 2])


def _stamp_seconds(stamp: Any, sent_at: Any, sent_s: float) -> float | None:
    """A server ``last_heartbeat`` as seconds since the trace's start, taking the
    trace's origin from the attempt's wall-clock send time; ``None`` if unknown."""
    if stamp is None or pd.isna(stamp) or sent_at is None or pd.isna(sent_at):
        return None
    try:
        server_us = parse_timestamp(str(stamp))
    except ValueError:
        return None  # an opaque value: not a time
    origin_us = pd.Timestamp(sent_at).value // 1_000 - round(float(sent_s) * 1e6)
    return (server_us - origin_us) / 1e6


def _from_trace(
    attempts: pd.DataFrame, ends: pd.DataFrame | None, work_id: str | None
) -> _Timeline:
    """A client trace: the server's side is reconstructed (see the module docstring)."""
    if work_id is not None:
        attempts = attempts[attempts["work_id"] == work_id]
        if ends is not None:
            ends = ends[ends["work_id"] == work_id]
    attempts = attempts.sort_values("sent_s", kind="stable")
    workers = sorted(str(w) for w in attempts["worker"].dropna().unique())
    line = _Timeline([_lane_name(w) for w in workers])
    received = attempts["received_s"].fillna(attempts["sent_s"])
    line.end_s = float(received.max()) if len(attempts) else 0.0
    if ends is not None and len(ends):
        line.end_s = max(line.end_s, float(ends["at_s"].max()))
    offset = _server_clock(attempts)

    def on_trace(stamp: Any, sent_at: Any, sent_s: float) -> float | None:
        server = _stamp_seconds(stamp, sent_at, sent_s)
        return None if server is None or offset is None else server + offset

    rows: list[Any] = list(attempts.itertuples(index=False))
    answered = {str(r.last_heartbeat) for r in rows if r.outcome == Outcome.OK.value}
    # A 412 revealing a value that no answer showed: one of the worker's earlier
    # unanswered attempts with the same echo was applied and its answer lost. Pick
    # the one whose window holds the server's time of that value (else the nearest).
    applied_at: dict[int, float] = {}
    for index, row in enumerate(rows):
        if row.outcome != Outcome.PRECONDITION_FAILED.value or pd.isna(row.last_heartbeat):
            continue
        if str(row.last_heartbeat) in answered:
            continue
        candidates = [
            k
            for k in range(index)
            if rows[k].outcome == Outcome.TIMEOUT.value
            and rows[k].worker == row.worker
            and rows[k].work_id == row.work_id
            and _text(rows[k].expected_last_heartbeat) == _text(row.expected_last_heartbeat)
        ]
        if not candidates:
            continue
        server = on_trace(row.last_heartbeat, row.sent_at, row.sent_s)

        def window(k: int) -> tuple[float, float]:
            start = float(rows[k].sent_s)
            end = float(rows[k].received_s) if pd.notna(rows[k].received_s) else start
            return start, end

        def distance(k: int, at: float | None = server) -> float:
            start, end = window(k)
            return 0.0 if at is None else max(start - at, at - end, 0.0)

        chosen = min(candidates, key=distance)
        start, end = window(chosen)
        applied_at[chosen] = (start + end) / 2 if server is None else min(max(server, start), end)
    # per (worker, work): applied instants and the TTL, for estimated expiries
    applied: dict[tuple[str, str], list[tuple[float, float]]] = {}
    arrivals: dict[str, list[tuple[float, str]]] = {}
    ttl_now: dict[tuple[str, str], float] = {}
    seen_values: dict[tuple[str, str], set[str]] = {}
    for index, row in enumerate(rows):
        who = _lane_name(row.worker)
        key = (who, str(row.work_id))
        sent = float(row.sent_s)
        got = float(row.received_s) if pd.notna(row.received_s) else math.nan
        outcome = str(row.outcome)
        if pd.notna(row.ttl_seconds):
            ttl_now[key] = float(row.ttl_seconds)
        arrived = math.nan
        lost = ""
        if outcome == Outcome.TIMEOUT.value:
            if index in applied_at:
                arrived, lost = applied_at[index], "answer"
            else:
                lost = "request"
        elif not math.isnan(got):
            arrived = (sent + got) / 2
            if outcome == Outcome.OK.value:
                server = on_trace(row.last_heartbeat, row.sent_at, row.sent_s)
                if server is not None:
                    arrived = min(max(server, sent), got)
        if outcome == Outcome.TIMEOUT.value and lost == "request":
            # the trace cannot tell a lost request from a slow one: say only "no answer"
            lost = "unknown"
        line.messages.append(
            _Message(
                worker=who,
                kind="heartbeat",
                sent_s=sent,
                arrived_s=arrived,
                answered_s=arrived if outcome != Outcome.TIMEOUT.value else math.nan,
                seen_s=got,
                outcome=outcome,
                status=float(row.status) if pd.notna(row.status) else math.nan,
                lost=lost,
            )
        )
        if not math.isnan(arrived):
            arrivals.setdefault(str(row.work_id), []).append((arrived, who))
        if outcome == Outcome.OK.value or lost == "answer":
            applied.setdefault(key, []).append((arrived, ttl_now.get(key, math.nan)))
        expected = _text(row.expected_last_heartbeat)
        # a claim, or an unconditional heartbeat (no echo), which takes any lease
        if outcome == Outcome.OK.value and expected in (NO_HEARTBEAT, None):
            line.marks.append((SERVER_LANE, arrived, "claim", who))
        if outcome == Outcome.OK.value and _text(row.state) in (
            WorkState.STOPPING.value,
            WorkState.STOPPED.value,
        ):
            line.marks.append((SERVER_LANE, arrived, "stop", str(row.state)))
        if outcome == Outcome.OK.value:
            seen_values.setdefault(key, set()).add(str(row.last_heartbeat))
        # adopted: the next attempt echoes the 412's stored value, one this
        # worker never saw in an answer (echoing a value it had seen is not news)
        if (
            outcome == Outcome.PRECONDITION_FAILED.value
            and pd.notna(row.last_heartbeat)
            and str(row.last_heartbeat) not in seen_values.get(key, set())
        ):
            following = next(
                (
                    r
                    for r in rows[index + 1 :]
                    if r.worker == row.worker and r.work_id == row.work_id
                ),
                None,
            )
            if following is not None and _text(following.expected_last_heartbeat) == _text(
                row.last_heartbeat
            ):
                line.marks.append((who, got, "adopt", ""))
    _mark_stops_once(line)
    # held: from the first success of a claim to the lease's end
    end_rows: list[Any] = list(ends.itertuples(index=False)) if ends is not None else []
    by_item: dict[str, list[tuple[float, float, str]]] = {}
    for (who, work), renewals in applied.items():
        by_item.setdefault(work, []).extend((at, ttl, who) for at, ttl in renewals)
    expiries = {work: _estimated_expiries(r, arrivals.get(work, [])) for work, r in by_item.items()}
    for found in expiries.values():
        for deadline, who in found:
            line.marks.append((SERVER_LANE, deadline, "expire_estimated", who))
    for (who, work), renewals in applied.items():
        mine = [
            m
            for m, r in zip(line.messages, rows, strict=True)
            if m.worker == who and str(r.work_id) == work
        ]
        first_ok = next((m.seen_s for m in mine if m.outcome == Outcome.OK.value), None)
        if first_ok is None:
            continue
        finish = next(
            (
                float(e.at_s)
                for e in end_rows
                if _lane_name(e.worker) == who and str(e.work_id) == work and e.at_s >= first_ok
            ),
            max((m.seen_s for m in mine if not math.isnan(m.seen_s)), default=first_ok),
        )
        line.held.append((who, first_ok, finish))
        # the server's grant: from this worker's first renewal until the lease
        # expired or another worker's renewal took the item over
        start = min(at for at, _ttl in renewals)
        ends_at = [d for d, holder in expiries[work] if holder == who and d > start]
        ends_at += [at for at, _ttl, other in by_item[work] if other != who and at > start]
        line.granted.append((who, start, min(ends_at, default=finish)))
    for e in end_rows:
        if str(e.reason) in _END_REASONS_LOST:
            line.marks.append((_lane_name(e.worker), float(e.at_s), "lost", str(e.reason)))
    return line


def _text(value: Any) -> str | None:
    """A nullable string column's value as ``str`` or ``None`` (never ``pd.NA``)."""
    return None if value is None or pd.isna(value) else str(value)


def _estimated_expiries(
    renewals: Sequence[tuple[float, float, str]], arrivals: Sequence[tuple[float, str]]
) -> list[tuple[float, str]]:
    """Each deadline (renewal + TTL) that passed before the item's next renewal by
    anyone, when some request on the item arrived after it: ``(deadline, holder)``."""
    ordered = sorted(r for r in renewals if not (math.isnan(r[0]) or math.isnan(r[1])))
    expiries = []
    for position, (at, ttl, who) in enumerate(ordered):
        deadline = at + ttl
        next_renewal = ordered[position + 1][0] if position + 1 < len(ordered) else math.inf
        if next_renewal <= deadline:
            continue
        if any(t > deadline for t, _ in arrivals):
            expiries.append((deadline, who))
    return expiries


def _mark_stops_once(line: _Timeline) -> None:
    """Keep the first ``stopping`` and the first ``stopped`` mark only."""
    seen: set[str] = set()
    kept = []
    for mark in sorted(line.marks, key=lambda m: m[1]):
        if mark[2] == "stop":
            if mark[3] in seen:
                continue
            seen.add(mark[3])
        kept.append(mark)
    line.marks = kept


def _timeline(source: pd.DataFrame | Trace, work_id: str | None, polls: bool) -> _Timeline:
    if isinstance(source, Trace):
        return _from_trace(source.attempts, source.ends, work_id)
    if not isinstance(source, pd.DataFrame):
        raise TypeError(
            "lease_timeline: expected the simulator's event log (a DataFrame with the "
            "columns of leasekit.sim.EVENT_COLUMNS), a leasekit.trace.Trace or an attempt "
            f"table, got {type(source).__name__}"
        )
    if _is_event_log(source):
        return _from_event_log(source, work_id, polls)
    needed = {"worker", "work_id", "sent_s", "received_s", "outcome", "last_heartbeat"}
    missing = sorted(needed - set(source.columns))
    if missing:
        raise ValueError(
            "lease_timeline: the DataFrame is neither an event log (leasekit.sim.EVENT_COLUMNS) "
            f"nor an attempt table (leasekit.trace.Trace.attempts): missing {', '.join(missing)}"
        )
    return _from_trace(source, None, work_id)


# --------------------------------------------------------------------------- drawing


def _lanes(workers: Sequence[str]) -> dict[str, float]:
    """The server in the middle, workers alternately above and below it."""
    above = workers[0::2]
    below = workers[1::2]
    positions = {SERVER_LANE: 0.0}
    for k, name in enumerate(above, 1):
        positions[name] = float(k)
    for k, name in enumerate(below, 1):
        positions[name] = -float(k)
    return positions


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], **style: Any) -> None:
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={"arrowstyle": "-|>", "shrinkA": 0, "shrinkB": 0, "mutation_scale": 9, **style},
    )


def lease_timeline(
    source: pd.DataFrame | Trace,
    *,
    workers: Iterable[int | str] | None = None,
    work_id: str | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    polls: bool = False,
    max_workers: int = 4,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Draw a lease timeline (a sequence diagram on a time axis); return the Figure.

    ``source`` is the simulator's event log (``RunResult.events``), a
    recorded :class:`~leasekit.trace.Trace` (:func:`~leasekit.trace.read_trace`)
    or an attempt table (``Trace.attempts``, :func:`leasekit.replay.load_any_trace`).

    Lanes: the server in the middle, workers around it (``workers`` picks
    them by index or name, default the first ``max_workers``). Heartbeats are
    arrows from the worker (sent) to the server (processed) and back
    (answer seen), coloured by outcome: 200 blue, 412 red, 5xx orange,
    rejected brown; a lost message stops half way at a cross; a timeout is a
    grey dot on the worker's lane. Marks: claims and server expiries on the
    server lane; adoptions of a self-inflicted 412, lost or given-up leases,
    crashes and restarts on the workers' lanes. Thick bands: where a worker
    believed it held the lease (on its lane) and whom the server granted it
    to (on the server lane). ``polls`` adds poll and ack calls (event logs
    only). ``work_id`` keeps one item; ``start_s``/``end_s`` (seconds on the
    source's clock) crop the time axis. ``ax``: draw into existing axes.

    Times are seconds: simulated time for an event log, seconds since the
    trace started for a trace. Raises :class:`TypeError`/:class:`ValueError`
    naming what is wrong with ``source``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    line = _timeline(source, work_id, polls)
    names = line.workers
    if workers is not None:
        wanted = [_lane_name(w) for w in workers]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise ValueError(
                f"lease_timeline: no worker {', '.join(unknown)} in the source "
                f"(it has {', '.join(names) or 'none'})"
            )
        names = wanted
    else:
        names = names[:max_workers]
    shown = set(names) | {SERVER_LANE}
    lanes = _lanes(names)
    low = 0.0 if start_s is None else start_s
    # room on the right for the last marks' labels
    high = line.end_s + 0.04 * max(line.end_s - low, 1.0) if end_s is None else end_s
    if high <= low:
        high = low + 1.0

    if ax is None:
        height = 1.0 + 0.9 * len(lanes)
        fig, ax = plt.subplots(figsize=(10, max(2.8, height)), layout="constrained")
    else:
        fig = ax.figure  # type: ignore[assignment]
    colour_of = {name: _WORKER_COLOURS[k % len(_WORKER_COLOURS)] for k, name in enumerate(names)}

    for y in lanes.values():
        ax.axhline(y, color="0.8", linewidth=1, zorder=0)
    for who, begin, finish in line.held:
        if who in lanes:
            ax.plot(
                [begin, finish],
                [lanes[who]] * 2,
                color=colour_of[who],
                linewidth=7,
                alpha=0.25,
                solid_capstyle="butt",
                zorder=1,
            )
    for holder, begin, finish in line.granted:
        if holder in lanes:
            ax.plot(
                [begin, finish],
                [0, 0],
                color=colour_of[holder],
                linewidth=7,
                alpha=0.25,
                solid_capstyle="butt",
                zorder=1,
            )

    def visible(*times: float) -> bool:
        finite = [t for t in times if not math.isnan(t)]
        return bool(finite) and max(finite) >= low and min(finite) <= high

    for m in line.messages:
        if m.worker not in lanes or not visible(m.sent_s, m.seen_s):
            continue
        y = lanes[m.worker]
        colour = _COLOURS["poll"] if m.kind != "heartbeat" else _COLOURS.get(m.outcome, "0.3")
        width = 0.8 if m.kind != "heartbeat" else 1.3
        if m.lost == "request" or (math.isnan(m.arrived_s) and m.lost != "answer"):
            # never reached the server (or we cannot know): half an arrow and a cross
            end_x = m.sent_s + 0.15 * max(high - low, 1e-9) / 20
            ax.plot([m.sent_s, end_x], [y, y / 2], color="black", linewidth=width, zorder=3)
            ax.plot([end_x], [y / 2], marker="x", color="black", markersize=7, zorder=4)
        else:
            _arrow(
                ax,
                (m.sent_s, y),
                (m.arrived_s, 0.0),
                color=colour if m.outcome != "timeout" else _COLOURS["ok"],
                linewidth=width,
            )
            if m.lost == "answer" or (m.outcome == "timeout" and not math.isnan(m.arrived_s)):
                start_x = m.answered_s if not math.isnan(m.answered_s) else m.arrived_s
                mid = (start_x + (m.seen_s if not math.isnan(m.seen_s) else start_x)) / 2
                ax.plot(
                    [start_x, min(mid, start_x + 0.02 * (high - low))],
                    [0, y / 2],
                    color="black",
                    linewidth=width,
                    linestyle="--",
                    zorder=3,
                )
                ax.plot(
                    [min(mid, start_x + 0.02 * (high - low))],
                    [y / 2],
                    marker="x",
                    color="black",
                    markersize=7,
                    zorder=4,
                )
            elif not math.isnan(m.seen_s) and not math.isnan(m.answered_s):
                _arrow(
                    ax,
                    (m.answered_s, 0.0),
                    (m.seen_s, y),
                    color=colour,
                    linewidth=width,
                    linestyle="--" if m.kind == "heartbeat" else ":",
                )
            if m.outcome == Outcome.PRECONDITION_FAILED.value and not math.isnan(m.seen_s):
                ax.annotate(
                    "412",
                    (m.seen_s, y),
                    xytext=(3, -12 if y > 0 else 6),
                    textcoords="offset points",
                    color=_COLOURS["precondition_failed"],
                    fontsize=8,
                    fontweight="bold",
                )
        if m.outcome == "timeout" and not math.isnan(m.seen_s):
            label, marker, mcolour, size = _MARKS["timeout"]
            ax.scatter([m.seen_s], [y], marker=marker, color=mcolour, s=size, zorder=5)

    used: set[str] = set()
    for lane_name, t, kind, note in line.marks:
        if lane_name not in shown or not visible(t):
            continue
        if lane_name == SERVER_LANE and note.startswith("worker") and note not in shown:
            continue  # about an item of a worker not drawn
        label, marker, colour, size = _MARKS[kind]
        if kind in ("claim", "steal") and note in colour_of:
            colour = colour_of[note]
        ax.scatter(
            [t],
            [lanes[lane_name]],
            marker=marker,
            color=colour,
            s=size,
            zorder=6,
            edgecolors="white",
            linewidths=0.5,
        )
        texts = {
            "expire": "expired",
            "expire_estimated": "expired (est.)",
            "adopt": "adopt",
            "lost": note or "lost",
            "stop": note,
        }
        if kind in texts:
            text = texts[kind]
            ax.annotate(
                text,
                (t, lanes[lane_name]),
                xytext=(4, 7),
                textcoords="offset points",
                fontsize=8,
                color=colour,
            )
        used.add(kind)

    ax.set_xlim(low, high)
    ax.set_ylim(min(lanes.values()) - 0.6, max(lanes.values()) + 0.6)
    ax.set_yticks(list(lanes.values()), list(lanes.keys()))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("lane (worker or server)")
    ax.spines[["top", "right"]].set_visible(False)
    if title is not None:
        ax.set_title(title)

    handles = [
        Line2D([], [], color=_COLOURS["ok"], label="heartbeat → server, 200 back"),
        Line2D([], [], color=_COLOURS["precondition_failed"], label="412 answer"),
        Line2D([], [], color=_COLOURS["transient"], label="5xx / transient"),
        Line2D([], [], color="black", marker="x", linestyle="--", label="lost message"),
        Line2D([], [], color="0.5", linewidth=7, alpha=0.35, label="lease held (band)"),
    ]
    for kind in _MARKS:
        if kind in used or (
            kind == "timeout" and any(m.outcome == "timeout" for m in line.messages)
        ):
            label, marker, colour, _size = _MARKS[kind]
            handles.append(Line2D([], [], color=colour, marker=marker, linestyle="", label=label))
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
    )
    return fig


# --------------------------------------------------------------------------- lifecycle

# where each state sits (x, y): the lease's life left to right, every stop below
_STATE_XY: Final = {
    WorkState.QUEUED: (0.0, 0.0),
    WorkState.STARTING: (2.5, 1.5),
    WorkState.ACTIVE: (5.0, 0.0),
    WorkState.STOPPING: (7.5, 1.5),
    WorkState.STOPPED: (5.0, -2.2),
}


def state_diagram_figure(ax: Axes | None = None) -> Figure:
    """The work item's lifecycle drawn from :data:`leasekit.lease.TRANSITIONS`.

    One box per state, one arrow per (state, next state) pair labelled with
    the events that take it (a loop for events that keep the state); expiries
    in red. Any (state, event) pair missing from the table is refused by the
    server. The axes carry no units: positions are only a layout.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 5.2), layout="constrained")
    else:
        fig = ax.figure  # type: ignore[assignment]
    edges: dict[tuple[WorkState, WorkState], list[str]] = {}
    for (source, event), (target, _effect) in TRANSITIONS.items():
        edges.setdefault((source, target), []).append(event.value)
    ax.set_aspect("equal")
    for state, (x, y) in _STATE_XY.items():
        ax.text(
            x,
            y,
            state.value,
            ha="center",
            va="center",
            fontsize=11,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.5", "facecolor": "white", "edgecolor": "0.2"},
        )
    label_style: dict[str, Any] = {
        "ha": "center",
        "va": "center",
        "fontsize": 8,
        "color": "0.1",
        "bbox": {
            "boxstyle": "round,pad=0.15",
            "facecolor": "white",
            "edgecolor": "none",
            "alpha": 0.85,
        },
    }
    for (source, target), events in edges.items():
        label = ", ".join(events)
        colour = "tab:red" if "expire" in events else "0.35"
        x0, y0 = _STATE_XY[source]
        if source == target:
            up = 1.0 if source is not WorkState.STOPPED else -1.0
            ax.annotate(
                "",
                xy=(x0 + 0.25, y0 + 0.3 * up),
                xytext=(x0 - 0.25, y0 + 0.3 * up),
                arrowprops={
                    "arrowstyle": "-|>",
                    "color": colour,
                    "connectionstyle": f"arc3,rad={-1.5 * up}",
                },
            )
            ax.text(
                x0,
                y0 + 0.85 * up,
                label.replace(", ", ",\n", 2) if len(label) > 30 else label,
                **label_style,
            )
            continue
        x1, y1 = _STATE_XY[target]
        # backwards (expiry) arrows bend away from the forward ones
        rad = -0.3 if x1 < x0 else 0.0
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={
                "arrowstyle": "-|>",
                "shrinkA": 24,
                "shrinkB": 24,
                "connectionstyle": f"arc3,rad={rad}",
                "color": colour,
            },
        )
        # the middle of matplotlib's arc3 curve: midpoint + rad/2 * (dy, -dx)
        dx, dy = x1 - x0, y1 - y0
        mx, my = (x0 + x1) / 2 + rad / 2 * dy, (y0 + y1) / 2 - rad / 2 * dx
        ax.text(mx, my, label, **label_style)
    ax.set_xlim(-1.0, 8.6)
    ax.set_ylim(-3.2, 2.7)
    ax.set_axis_off()
    ax.set_title("work item lifecycle (from leasekit.lease.TRANSITIONS)")
    return fig
