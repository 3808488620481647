"""Explorers for notebooks: a pure function from settings to a Figure, and a
thin ipywidgets layer that wires controls to it.

* :class:`ExplorerSettings` holds every control's value (TTL, policy, beat
  fraction, delay distribution and spread, loss per direction, burstiness,
  pause rate and length, engine, fleet size, simulated hours, seed) and turns
  itself into a simulator :class:`~leasekit.sim.Scenario`.
* :func:`explore` runs the settings on the chosen engine and draws the
  answer: the false-loss, server-expiry and 412 rates per lease-hour with
  their 95% intervals and, when the engine keeps an event log, the lease
  timeline around the first false loss. Same settings, same figure.
* :class:`Explorer` is the widget layer: controls, a Run button and a
  progress bar for engines that take more than about a second (``simpy``),
  a redraw on every change for the instant ones. Sliders send their value
  when released (``continuous_update=False``).

Use it in a notebook::

    from leasekit.widgets import Explorer
    Explorer()                       # displays itself

ipywidgets is needed for :class:`Explorer` only (``pip install
'leasekit[notebooks]'``); :func:`explore` needs matplotlib alone.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .sim import (
    Burst,
    Direction,
    Network,
    Pauses,
    Scenario,
    Server,
    Workers,
    replicate,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DELAY_KINDS",
    "ENGINES",
    "POLICIES",
    "Explorer",
    "ExplorerSettings",
    "burst_for",
    "delay_spec",
    "explore",
]

DELAY_KINDS: Final = ("const", "uniform", "exp", "shiftexp", "lognormal")
"""Delay distributions the explorer offers (see :func:`delay_spec`)."""

POLICIES: Final = ("sdk", "leasekit", "fixed")
"""Heartbeat policies the explorer offers: the official worker's, leasekit's, and
the textbook fixed-interval heartbeat (every ``beat_fraction`` of the TTL)."""

ENGINES: Final = ("simpy", "fast", "analytic")
"""Engines the explorer can run, by the names ``leasekit simulate --engine`` takes:
the SimPy simulator (every metric, and an event log to draw), the rare-event
engine (false-loss and server-expiry rates SimPy cannot see) and the closed
forms (the ``fixed`` policy on independent loss; instant)."""

FAST_OPTIONS: Final = {"rel_halfwidth": 0.2, "max_cycles": 20_000}
"""The fast engine's stopping rule in the explorer: a 95% interval of ±20%, or
20,000 tilted cycles (a budget in cycles, so the numbers come from the seed alone)."""

_INSTANT_ENGINES: Final = frozenset({"analytic"})
"""Engines that answer well under a second: the explorer redraws on every change."""

SIMPY_HEARTBEATS_PER_SECOND: Final = 30_000
"""A conservative speed of the SimPy engine (simulated heartbeats per second of
wall time on a slow, shared core; ``benchmarks/bench_sim.py`` measures about
100,000 on a quiet one): what decides whether a run is instant."""

# what the left panel shows, in this order: (metric, label)
_RATES: Final = (
    ("false_losses_per_lease_hour", "false losses"),
    ("false_losses_server_expiry_per_lease_hour", "  cause: server expiry"),
    ("false_losses_unseen_answer_per_lease_hour", "  cause: unseen answer (412)"),
    ("false_losses_give_up_per_lease_hour", "  cause: gave up"),
    ("server_expiries_per_lease_hour", "server expiries"),
    ("precondition_failures_per_lease_hour", "412 answers"),
)


def delay_spec(kind: str, mean_s: float, spread_s: float) -> str:
    """A :mod:`leasekit.distributions` spec with mean ``mean_s`` and spread ``spread_s``.

    ``const``: always the mean (no spread). ``uniform``: mean ± spread
    (clipped at 0). ``exp``: exponential with that mean (its spread is the
    mean; ``spread_s`` is not used). ``shiftexp``: a floor of ``mean -
    spread`` plus an exponential tail of mean ``spread`` (spread capped at the
    mean). ``lognormal``: mean ``mean_s`` and standard deviation ``spread_s``.
    Seconds throughout; raises :class:`ValueError` naming a bad argument.
    """
    if not mean_s >= 0 or math.isinf(mean_s):
        raise ValueError(f"delay mean_s must be a finite number >= 0, got {mean_s}")
    if not spread_s >= 0 or math.isinf(spread_s):
        raise ValueError(f"delay spread_s must be a finite number >= 0, got {spread_s}")
    if kind == "const":
        return f"const:{mean_s:g}"
    if kind == "uniform":
        return f"uniform:{max(0.0, mean_s - spread_s):g},{mean_s + spread_s:g}"
    if kind == "exp":
        return f"exp:{mean_s:g}"
    if kind == "shiftexp":
        tail = min(spread_s, mean_s)
        return f"shiftexp:{mean_s - tail:g},{tail:g}"
    if kind == "lognormal":
        if mean_s <= 0:
            raise ValueError("delay mean_s must be > 0 for a lognormal delay")
        sigma2 = math.log1p((spread_s / mean_s) ** 2)
        return f"lognormal:{math.log(mean_s) - sigma2 / 2:.6g},{math.sqrt(sigma2):.6g}"
    raise ValueError(f"delay kind {kind!r}: expected one of {', '.join(DELAY_KINDS)}")


def burst_for(loss: float, burst_length: float) -> tuple[float, Burst | None]:
    """The direction's independent loss and Gilbert-Elliott burst for a long-run
    loss fraction ``loss`` in bursts of ``burst_length`` messages on average.

    ``burst_length <= 1``: independent loss, no burst. Otherwise every loss
    comes in bursts: a bad link loses every message and lasts ``burst_length``
    messages on average (``p_exit = 1 / burst_length``), and turns bad often
    enough (``p_enter``) that the long-run loss fraction is ``loss``.
    """
    if not 0 <= loss < 1:
        raise ValueError(f"loss must be in [0, 1), got {loss}")
    if burst_length <= 1 or loss == 0:
        return loss, None
    p_exit = 1 / burst_length
    p_enter = loss * p_exit / (1 - loss)
    return 0.0, Burst(p_enter=min(1.0, p_enter), p_exit=p_exit, loss_bad=1.0)


@dataclass(frozen=True)
class ExplorerSettings:
    """Every control of the explorer. Units are in the names.

    ``policy`` is ``sdk`` (the official worker), ``leasekit`` or ``fixed``
    (a heartbeat every ``beat_fraction`` of the TTL whatever happens);
    ``beat_fraction`` is leasekit's and fixed's heartbeat interval as a
    fraction of the TTL (the SDK beats every min(TTL/2, 30) s whatever it is).
    ``delay`` and ``delay_mean_s``/``delay_spread_s`` give each direction's
    one-way delay (:func:`delay_spec`); ``request_loss`` and ``answer_loss``
    the long-run loss fractions, in bursts of ``burst_length`` messages
    (:func:`burst_for`); ``pauses_per_hour`` GC-like pauses per worker-hour
    of ``pause_s`` seconds each. ``workers`` hold a lease each for ``hours``
    simulated hours (after a warm-up of two TTLs), ``replications`` seeds
    derived from ``seed``.
    """

    ttl_seconds: int = 30
    policy: str = "leasekit"
    beat_fraction: float = 1 / 3
    delay: str = "shiftexp"
    delay_mean_s: float = 0.08
    delay_spread_s: float = 0.05
    request_loss: float = 0.01
    answer_loss: float = 0.01
    burst_length: float = 1.0
    pauses_per_hour: float = 0.0
    pause_s: float = 5.0
    engine: str = "simpy"
    workers: int = 20
    hours: float = 0.5
    replications: int = 2
    seed: int = 1

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r}: expected one of {', '.join(POLICIES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.ttl_seconds < 1:
            raise ValueError(f"ttl_seconds must be >= 1, got {self.ttl_seconds}")
        if self.hours <= 0:
            raise ValueError(f"hours must be > 0, got {self.hours}")
        if self.replications < 1:
            raise ValueError(f"replications must be >= 1, got {self.replications}")
        if self.pause_s < 0 or self.pauses_per_hour < 0:
            raise ValueError("pause_s and pauses_per_hour must be >= 0")
        delay_spec(self.delay, self.delay_mean_s, self.delay_spread_s)
        burst_for(self.request_loss, self.burst_length)
        burst_for(self.answer_loss, self.burst_length)

    @property
    def policy_spec(self) -> str:
        """The :func:`leasekit.policy.make_policy` spec of the chosen policy."""
        if self.policy == "leasekit":
            return f"leasekit:beat_fraction={self.beat_fraction:g}"
        if self.policy == "fixed":
            return f"fixed:interval={self.beat_fraction * self.ttl_seconds:g}"
        return self.policy

    def scenario(self) -> Scenario:
        """The simulator scenario these settings describe (the server grants
        exactly ``ttl_seconds``; one work item per worker, no crashes)."""
        delay = delay_spec(self.delay, self.delay_mean_s, self.delay_spread_s)
        request_loss, request_burst = burst_for(self.request_loss, self.burst_length)
        answer_loss, answer_burst = burst_for(self.answer_loss, self.burst_length)
        warmup_s = 2.0 * self.ttl_seconds
        return Scenario(
            name="explorer",
            duration_s=warmup_s + self.hours * 3600.0,
            warmup_s=warmup_s,
            seed=self.seed,
            workers=Workers(
                count=self.workers,
                policy=self.policy_spec,
                pauses=Pauses(
                    rate_per_hour=self.pauses_per_hour, duration=f"const:{self.pause_s:g}"
                ),
            ),
            server=Server(
                default_ttl_seconds=self.ttl_seconds,
                min_ttl_seconds=self.ttl_seconds,
                max_ttl_seconds=self.ttl_seconds,
            ),
            network=Network(
                request=Direction(delay=delay, loss=request_loss, burst=request_burst),
                answer=Direction(delay=delay, loss=answer_loss, burst=answer_burst),
            ),
        )

    @property
    def heartbeat_interval_s(self) -> float:
        """The chosen policy's interval between healthy heartbeats at this TTL,
        seconds: asked of the real policy object (a claim answered with
        ``ttl_seconds``), not recomputed here."""
        from .policy import Outcome, Result, Send, make_policy
        from .protocol import HeartbeatAnswer, WorkState

        policy = make_policy(self.policy_spec, rng=random.Random(self.seed))
        first = policy.start(0.0)
        answer = HeartbeatAnswer("claimed", True, WorkState.ACTIVE, self.ttl_seconds)
        following = policy.observe(Result(Outcome.OK, 0.0, 0.0, answer=answer, status=200))
        if not (isinstance(first, Send) and isinstance(following, Send)):
            return float(self.ttl_seconds)
        return max(following.at - first.at, 1e-3)

    @property
    def estimated_seconds(self) -> float:
        """A rough wall time of a run on its engine, seconds (SimPy: heartbeats
        over :data:`SIMPY_HEARTBEATS_PER_SECOND`; instant engines: 0)."""
        if self.engine in _INSTANT_ENGINES:
            return 0.0
        if self.engine != "simpy":
            return math.inf  # a rare-event estimate takes seconds: always behind Run
        heartbeats = (
            self.workers * self.replications * self.hours * 3600 / (self.heartbeat_interval_s)
        )
        return heartbeats / SIMPY_HEARTBEATS_PER_SECOND

    def summary(self) -> str:
        """One line naming every setting, with units (the figure's title)."""
        policy = {
            "leasekit": f"leasekit (beat {self.beat_fraction:.2g}·TTL)",
            "fixed": f"fixed (every {self.beat_fraction * self.ttl_seconds:.3g} s)",
        }.get(self.policy, self.policy)
        burst = f", bursts of {self.burst_length:g}" if self.burst_length > 1 else ""
        pauses = (
            f", {self.pauses_per_hour:g} pauses/h of {self.pause_s:g} s"
            if self.pauses_per_hour
            else ""
        )
        return (
            f"{policy}, TTL {self.ttl_seconds} s | delay {self.delay} "
            f"{self.delay_mean_s * 1000:g}±{self.delay_spread_s * 1000:g} ms, loss "
            f"{self.request_loss:g} req / {self.answer_loss:g} ans{burst}{pauses} | "
            f"{self.engine}, {self.workers} workers × {self.hours:g} h × "
            f"{self.replications} seeds, seed {self.seed}"
        )


@dataclass(frozen=True)
class Exploration:
    """What :func:`explore` computed: per-metric ``(value, low, high)`` and the
    first run's event log (``None`` for an engine without one)."""

    settings: ExplorerSettings
    rates: dict[str, tuple[float, float, float]]
    events: Any = None


def _run_simpy(settings: ExplorerSettings, progress: Callable[[float], None] | None) -> Exploration:
    runs = replicate(
        settings.scenario(),
        settings.replications,
        seed=settings.seed,
        progress=progress,
    )
    estimates = runs.estimates()
    rates = {
        name: (e.value, e.low, e.high) for name, e in estimates.items() if name in dict(_RATES)
    }
    events = runs.first.events if runs.first is not None else None
    return Exploration(settings, rates, events)


def _run_rare(settings: ExplorerSettings, progress: Callable[[float], None] | None) -> Exploration:
    """The rare-event engines: one lease's life (:func:`leasekit.study.false_loss_view`)."""
    from .study import estimate, false_loss_view

    answer = estimate(
        false_loss_view(settings.scenario()),
        engine=settings.engine,
        seed=settings.seed,
        options=FAST_OPTIONS if settings.engine == "fast" else None,
        progress=_Progress(progress) if progress is not None else None,
    )
    rates = {
        name: (e.value, e.low, e.high) for name, e in answer.metrics.items() if name in dict(_RATES)
    }
    return Exploration(settings, rates)


class _Progress:
    """A tqdm-like bar for :func:`leasekit.study.estimate` that reports fractions."""

    def __init__(self, report: Callable[[float], None]) -> None:
        self.report = report
        self.n = 0.0

    def update(self, n: float = 1) -> None:
        self.n += n
        self.report(self.n)


_RUNNERS: Final[
    Mapping[str, Callable[[ExplorerSettings, Callable[[float], None] | None], Exploration]]
] = {"simpy": _run_simpy, "fast": _run_rare, "analytic": _run_rare}


def run_settings(
    settings: ExplorerSettings, *, progress: Callable[[float], None] | None = None
) -> Exploration:
    """Run ``settings`` on its engine; ``progress`` gets the fraction done (0 to 1)."""
    return _RUNNERS[settings.engine](settings, progress)


def _first_false_loss(events: Any) -> tuple[int, str, float] | None:
    """(worker, work_id, time) of the first lease that ended falsely, if any."""
    ends = events[
        (events["event"] == "lease_end")
        & events["detail"].isin(("lost", "assumed_lost", "rejected"))
    ]
    if ends.empty:
        return None
    row = ends.iloc[0]
    return int(row["worker"]), str(row["work_id"]), float(row["time_s"])


def explore(
    settings: ExplorerSettings | None = None,
    *,
    progress: Callable[[float], None] | None = None,
    result: Exploration | None = None,
) -> Figure:
    """Run ``settings`` (default :class:`ExplorerSettings()`) and draw the answer.

    Left: the rates per lease-hour (1/h) with their 95% intervals, on a log
    axis (a rate of 0 is drawn at its upper bound as a one-sided bar). Right,
    for an engine with an event log: the lease timeline of the first false
    loss (or of worker 0's first minutes when there was none). The figure's
    title names every setting. Pass ``result`` to draw an
    :class:`Exploration` computed before. Same settings, same seed, same figure.
    """
    import matplotlib.pyplot as plt

    from ._timeline import lease_timeline

    settings = settings or ExplorerSettings()
    done = result if result is not None else run_settings(settings, progress=progress)
    has_events = done.events is not None and len(done.events) > 0
    fig = plt.figure(figsize=(12, 4.4), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=(1, 1.7) if has_events else (1, 0.001))
    left = fig.add_subplot(grid[0, 0])
    names = [name for name, _ in _RATES if name in done.rates]
    labels = [label for name, label in _RATES if name in done.rates]
    floor = math.inf
    for name in names:
        value, low, high = done.rates[name]
        for x in (value, low, high):
            if x > 0 and math.isfinite(x):
                floor = min(floor, x)
    floor = floor / 10 if math.isfinite(floor) else 1e-6
    for y, name in enumerate(names):
        value, low, high = done.rates[name]
        colour = "tab:red" if name == "false_losses_per_lease_hour" else "tab:blue"
        shown_low = low if low > 0 and math.isfinite(low) else floor
        if math.isfinite(high) and high > 0:
            left.plot([shown_low, high], [y, y], color=colour, linewidth=2, alpha=0.6)
        if value > 0 and math.isfinite(value):
            left.plot([value], [y], "o", color=colour)
        else:
            left.plot([floor], [y], "<", color=colour)
            left.annotate(
                "0 seen", (floor, y), xytext=(6, 4), textcoords="offset points", fontsize=8
            )
    left.set_xscale("log")
    left.set_yticks(range(len(names)), labels)
    left.invert_yaxis()
    left.set_xlabel("events per lease-hour (1/h), 95% interval")
    left.set_title("rates per lease-hour", fontsize=10)
    left.grid(axis="x", alpha=0.3)
    if has_events:
        right = fig.add_subplot(grid[0, 1])
        first = _first_false_loss(done.events)
        ttl = settings.ttl_seconds
        if first is not None:
            worker, work_id, at = first
            lease_timeline(
                done.events,
                workers=[worker],
                work_id=work_id,
                start_s=max(0.0, at - 2.5 * ttl),
                end_s=at + 0.5 * ttl,
                ax=right,
                title=f"the first false loss (worker {worker}, {work_id})",
            )
        else:
            lease_timeline(
                done.events,
                workers=[0],
                start_s=0.0,
                end_s=4.0 * ttl,
                ax=right,
                title="worker 0's first heartbeats (no false loss in this run)",
            )
    fig.suptitle(settings.summary(), fontsize=10)
    return fig


# --------------------------------------------------------------------------- widgets

# slider stops for values that span decades and may be 0 (a log slider cannot be)
_LOSSES: Final = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
_SPREADS_S: Final = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _choices(stops: tuple[float, ...], start: float) -> list[tuple[str, float]]:
    """``(label, value)`` options of a selection slider: the stops and ``start``."""
    return [(f"{v:g}", v) for v in sorted({*stops, start})]


class Explorer:
    """The ipywidgets front end of :func:`explore`.

    ``controls`` maps each :class:`ExplorerSettings` field to its widget;
    :meth:`settings` reads them. Engines that take more than about a second
    (``simpy``) wait for the Run button and report progress in the bar;
    instant engines redraw on every change. After each run ``figure`` is the
    figure shown and ``last_settings`` the settings it was drawn with.
    ``draw`` replaces :func:`explore` (tests inject a recorder).
    """

    def __init__(
        self,
        settings: ExplorerSettings | None = None,
        *,
        draw: Callable[..., Figure] = explore,
    ) -> None:
        import ipywidgets as w

        start = settings or ExplorerSettings()
        self._draw = draw
        self.figure: Figure | None = None
        self.last_settings: ExplorerSettings | None = None
        self.runs = 0
        slider = {"continuous_update": False, "style": {"description_width": "initial"}}
        self.controls: dict[str, Any] = {
            "ttl_seconds": w.IntSlider(
                start.ttl_seconds, 5, 300, 5, description="TTL (s)", **slider
            ),
            "policy": w.ToggleButtons(
                options=list(POLICIES), value=start.policy, description="policy"
            ),
            "beat_fraction": w.FloatSlider(
                start.beat_fraction,
                min=0.1,
                max=0.8,
                step=0.05,
                description="beat (× TTL)",
                **slider,
            ),
            "delay": w.Dropdown(options=list(DELAY_KINDS), value=start.delay, description="delay"),
            "delay_mean_s": w.FloatLogSlider(
                start.delay_mean_s, base=10, min=-3, max=1, description="mean delay (s)", **slider
            ),
            "delay_spread_s": w.SelectionSlider(
                options=_choices(_SPREADS_S, start.delay_spread_s),
                value=start.delay_spread_s,
                description="spread (s)",
                **slider,
            ),
            "request_loss": w.SelectionSlider(
                options=_choices(_LOSSES, start.request_loss),
                value=start.request_loss,
                description="request loss",
                **slider,
            ),
            "answer_loss": w.SelectionSlider(
                options=_choices(_LOSSES, start.answer_loss),
                value=start.answer_loss,
                description="answer loss",
                **slider,
            ),
            "burst_length": w.FloatSlider(
                start.burst_length, min=1, max=20, step=1, description="burst (messages)", **slider
            ),
            "pauses_per_hour": w.FloatSlider(
                start.pauses_per_hour,
                min=0,
                max=10,
                step=0.5,
                description="pauses per hour",
                **slider,
            ),
            "pause_s": w.FloatSlider(
                start.pause_s, min=0.5, max=120, step=0.5, description="pause (s)", **slider
            ),
            "engine": w.ToggleButtons(
                options=list(ENGINES), value=start.engine, description="engine"
            ),
            "workers": w.IntSlider(start.workers, 1, 200, 1, description="workers", **slider),
            "hours": w.FloatLogSlider(
                start.hours, base=10, min=-2, max=2, description="hours simulated", **slider
            ),
            "replications": w.IntSlider(
                start.replications, 1, 20, 1, description="seeds", **slider
            ),
            "seed": w.IntText(start.seed, description="seed"),
        }
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, description="progress")
        self.status = w.HTML()
        self.output = w.Output()
        self.run_button.on_click(lambda _button: self.run())
        for control in self.controls.values():
            control.observe(self._changed, names="value")
        self._sync()
        controls = list(self.controls.values())
        self.widget = w.VBox(
            [
                w.HBox([w.VBox(controls[:8]), w.VBox(controls[8:])]),
                w.HBox([self.run_button, self.progress, self.status]),
                self.output,
            ]
        )

    def settings(self) -> ExplorerSettings:
        """The settings the controls show now (raises ValueError if they are inconsistent)."""
        values = {name: control.value for name, control in self.controls.items()}
        return ExplorerSettings(**values)

    @property
    def instant(self) -> bool:
        """Whether the current settings run in well under a second (about
        :attr:`ExplorerSettings.estimated_seconds` < 0.5): then every change
        redraws and the Run button is off; otherwise changes wait for Run."""
        try:
            return self.settings().estimated_seconds < 0.5
        except ValueError:
            return False

    def _sync(self) -> None:
        self.controls["beat_fraction"].disabled = self.controls["policy"].value == "sdk"
        self.controls["delay_spread_s"].disabled = self.controls["delay"].value in (
            "const",
            "exp",
        )
        self.run_button.disabled = self.instant
        self.progress.layout.visibility = "hidden" if self.instant else "visible"

    def _changed(self, _change: Mapping[str, Any]) -> None:
        self._sync()
        if self.instant:
            self.run()
        else:
            self.status.value = "settings changed: press <b>Run</b>"

    def _progress(self, fraction: float) -> None:
        self.progress.value = min(1.0, max(0.0, fraction))

    def run(self) -> Figure | None:
        """Run the current settings and show the figure in the output area.

        Returns the figure, or ``None`` (with the reason in the status line)
        when the settings are inconsistent or the engine refuses them.
        """
        import matplotlib.pyplot as plt
        from IPython.display import display

        try:
            settings = self.settings()
        except ValueError as error:
            self.status.value = f"<span style='color:#b00'>{error}</span>"
            return None
        self.progress.value = 0.0
        self.status.value = "running…"
        self.run_button.disabled = True
        try:
            figure = self._draw(settings, progress=self._progress)
        except (ValueError, RuntimeError) as error:
            # an engine that does not model these settings (ValueError) or cannot
            # estimate them (the fast engine's UnreliableEstimate) says why
            self.status.value = f"<span style='color:#b00'>{error}</span>"
            return None
        finally:
            self.run_button.disabled = self.instant
        self.progress.value = 1.0
        self.figure = figure
        self.last_settings = settings
        self.runs += 1
        self.status.value = f"run {self.runs} done"
        self.output.clear_output(wait=True)
        with self.output:
            display(figure)  # type: ignore[no-untyped-call]
        plt.close(figure)  # shown once, in the output area, not again below the cell
        return figure

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]
