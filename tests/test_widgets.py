"""The explorer: settings to scenario, the figure, and the widget wiring.

The wiring is tested without a browser: control values are set from Python,
the Run button is clicked, and the drawing function must have been called
with exactly those settings.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import matplotlib.pyplot as plt
import pytest

from leasekit.distributions import parse_delay
from leasekit.widgets import (
    DELAY_KINDS,
    SIMPY_HEARTBEATS_PER_SECOND,
    Explorer,
    ExplorerSettings,
    burst_for,
    delay_spec,
    explore,
    run_settings,
)

SMALL = ExplorerSettings(workers=3, hours=0.05, replications=1, ttl_seconds=20)


@pytest.fixture(autouse=True)
def _close_figures() -> None:
    yield
    plt.close("all")


@pytest.mark.parametrize("kind", DELAY_KINDS)
def test_delay_specs_have_the_asked_mean(kind: str) -> None:
    delay = parse_delay(delay_spec(kind, 0.08, 0.03))
    assert delay.mean == pytest.approx(0.08, rel=1e-4)


def test_a_lognormal_delay_has_the_asked_spread() -> None:
    delay = parse_delay(delay_spec("lognormal", 0.1, 0.05))
    rng = random.Random(1)
    samples = [delay.sample(rng) for _ in range(40_000)]
    mean = sum(samples) / len(samples)
    spread = math.sqrt(sum((x - mean) ** 2 for x in samples) / len(samples))
    assert spread == pytest.approx(0.05, rel=0.05)


def test_bad_delays_name_the_argument() -> None:
    with pytest.raises(ValueError, match="delay kind 'gamma'"):
        delay_spec("gamma", 0.1, 0.0)
    with pytest.raises(ValueError, match="spread_s"):
        delay_spec("uniform", 0.1, -1.0)


def test_bursts_keep_the_long_run_loss() -> None:
    assert burst_for(0.02, 1.0) == (0.02, None)
    loss, burst = burst_for(0.02, 5.0)
    assert loss == 0.0 and burst is not None
    assert burst.p_exit == pytest.approx(0.2)
    assert burst.p_enter / (burst.p_enter + burst.p_exit) == pytest.approx(0.02)


def test_settings_become_the_scenario_they_name() -> None:
    settings = ExplorerSettings(
        ttl_seconds=45,
        policy="leasekit",
        beat_fraction=0.25,
        request_loss=0.03,
        answer_loss=0.0,
        burst_length=4,
        pauses_per_hour=2,
        pause_s=8,
        workers=7,
        hours=2,
    )
    scenario = settings.scenario()
    assert scenario.server.default_ttl_seconds == scenario.server.max_ttl_seconds == 45
    assert scenario.workers.policy == "leasekit:beat_fraction=0.25"
    assert scenario.workers.count == 7
    assert scenario.duration_s - scenario.warmup_s == pytest.approx(7200)
    assert scenario.workers.pauses.rate_per_hour == 2
    assert parse_delay(scenario.workers.pauses.duration).mean == 8
    assert scenario.network.request.burst is not None
    assert scenario.network.answer.burst is None and scenario.network.answer.loss == 0.0
    assert ExplorerSettings(policy="sdk").scenario().workers.policy == "sdk"
    fixed = ExplorerSettings(policy="fixed", ttl_seconds=30, beat_fraction=0.25)
    assert fixed.scenario().workers.policy == "fixed:interval=7.5"
    assert fixed.heartbeat_interval_s == 7.5


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="policy 'lazy'"):
        ExplorerSettings(policy="lazy")
    with pytest.raises(ValueError, match="engine 'monte-carlo'"):
        ExplorerSettings(engine="monte-carlo")
    with pytest.raises(ValueError, match="loss must be in"):
        ExplorerSettings(request_loss=1.5)


def test_the_same_settings_give_the_same_numbers() -> None:
    first = run_settings(SMALL)
    again = run_settings(SMALL)
    assert first.rates == again.rates
    assert first.rates["false_losses_per_lease_hour"][0] >= 0


def test_the_figure_names_its_settings_and_units() -> None:
    fig = explore(SMALL)
    assert fig._suptitle is not None and fig._suptitle.get_text() == SMALL.summary()
    assert "TTL 20 s" in SMALL.summary()
    rates, timeline = fig.axes[0], fig.axes[1]
    assert rates.get_xlabel() == "events per lease-hour (1/h), 95% interval"
    assert timeline.get_xlabel() == "time (s)"


class _Recorder:
    """Stands in for explore(): remembers each call's settings, returns a figure."""

    def __init__(self) -> None:
        self.calls: list[ExplorerSettings] = []
        self.progress_seen: list[float] = []

    def __call__(self, settings: ExplorerSettings, *, progress: Any = None) -> plt.Figure:
        self.calls.append(settings)
        if progress is not None:
            progress(0.5)
            self.progress_seen.append(0.5)
        fig = plt.figure()
        fig.suptitle(settings.summary())
        return fig


def test_the_run_button_draws_exactly_the_controls_values() -> None:
    recorder = _Recorder()
    explorer = Explorer(draw=recorder)
    values = {
        # first what makes a run long (hundreds of thousands of heartbeats)
        "workers": 150,
        "hours": 20.0,
        "replications": 3,
        "ttl_seconds": 45,
        "policy": "sdk",
        "delay": "lognormal",
        "delay_mean_s": 0.2,
        "delay_spread_s": 0.1,
        "request_loss": 0.001,
        "answer_loss": 0.01,
        "burst_length": 3.0,
        "pauses_per_hour": 1.5,
        "pause_s": 12.0,
        "seed": 9,
    }
    for name, value in values.items():
        explorer.controls[name].value = value
    # a long run: changing controls waits for the button
    assert not explorer.instant and not explorer.run_button.disabled
    assert recorder.calls == [] and "press <b>Run</b>" in explorer.status.value
    explorer.run_button.click()
    expected = ExplorerSettings(**{**values, "beat_fraction": 1 / 3, "engine": "simpy"})
    assert recorder.calls == [expected]
    assert explorer.last_settings == expected and explorer.runs == 1
    assert explorer.figure is not None
    assert explorer.figure._suptitle.get_text() == expected.summary()
    assert recorder.progress_seen and explorer.progress.value == 1.0


def test_a_short_run_redraws_on_every_change() -> None:
    recorder = _Recorder()
    explorer = Explorer(SMALL, draw=recorder)
    assert explorer.instant and explorer.run_button.disabled
    explorer.controls["ttl_seconds"].value = 60
    explorer.controls["policy"].value = "sdk"
    assert [c.ttl_seconds for c in recorder.calls] == [60, 60]
    assert recorder.calls[-1] == dataclasses.replace(SMALL, ttl_seconds=60, policy="sdk")
    assert explorer.last_settings == recorder.calls[-1]


def test_the_run_length_comes_from_the_real_policys_interval() -> None:
    # the official worker beats every min(TTL / 2, 30) s; leasekit every beat_fraction of the TTL
    assert ExplorerSettings(policy="sdk", ttl_seconds=40).heartbeat_interval_s == 20
    assert ExplorerSettings(policy="sdk", ttl_seconds=90).heartbeat_interval_s == 30
    leasekit = ExplorerSettings(policy="leasekit", ttl_seconds=30, beat_fraction=0.25)
    assert 0.8 * 7.5 <= leasekit.heartbeat_interval_s <= 1.2 * 7.5  # jittered
    long_run = ExplorerSettings(policy="sdk", ttl_seconds=90, workers=100, hours=10)
    assert long_run.estimated_seconds == pytest.approx(
        100 * 2 * 10 * 3600 / 30 / SIMPY_HEARTBEATS_PER_SECOND
    )


def test_controls_follow_the_policy_and_delay() -> None:
    explorer = Explorer(draw=_Recorder())
    explorer.controls["policy"].value = "sdk"
    assert explorer.controls["beat_fraction"].disabled  # the SDK's interval is its own
    explorer.controls["policy"].value = "leasekit"
    assert not explorer.controls["beat_fraction"].disabled
    explorer.controls["delay"].value = "const"
    assert explorer.controls["delay_spread_s"].disabled
    assert explorer.controls["ttl_seconds"].continuous_update is False


def test_the_real_explorer_runs_small_settings() -> None:
    explorer = Explorer(SMALL)
    explorer.controls["ttl_seconds"].value = 25
    figure = explorer.run()
    assert figure is not None and explorer.last_settings is not None
    assert explorer.last_settings.ttl_seconds == 25
    assert figure._suptitle.get_text() == explorer.last_settings.summary()


def test_the_rare_event_engine_draws_its_rates_alone() -> None:
    settings = dataclasses.replace(SMALL, engine="fast", policy="sdk", request_loss=0.01)
    explorer = Explorer(draw=_Recorder())
    explorer.controls["engine"].value = "fast"
    explorer.run_button.click()  # seconds, not instant: still a Run button
    assert explorer.last_settings is not None and explorer.last_settings.engine == "fast"
    fig = explore(settings)
    assert len(fig.axes) == 1  # no event log, no timeline
    assert fig.axes[0].get_xlabel() == "events per lease-hour (1/h), 95% interval"


def test_an_engine_that_refuses_the_settings_says_why() -> None:
    def refuse(settings: ExplorerSettings, *, progress: Any = None) -> plt.Figure:
        raise ValueError("fast engine: workers.pauses.duration is not modelled")

    explorer = Explorer(draw=refuse)
    assert explorer.run() is None
    assert "not modelled" in explorer.status.value and explorer.runs == 0


def test_the_closed_forms_are_instant_and_refuse_what_they_do_not_model() -> None:
    fixed = dataclasses.replace(
        SMALL,
        engine="analytic",
        policy="fixed",
        beat_fraction=0.4,
        request_loss=0.1,
        answer_loss=0.0,
        delay="const",
        delay_spread_s=0.0,
    )
    recorder = _Recorder()
    explorer = Explorer(fixed, draw=recorder)
    assert explorer.instant and explorer.run_button.disabled
    explorer.controls["request_loss"].value = 0.05
    assert recorder.calls[-1].request_loss == 0.05  # redrawn on the change, no button
    fig = explore(recorder.calls[-1])
    assert len(fig.axes) == 1
    refused = Explorer(dataclasses.replace(fixed, policy="sdk"))
    assert refused.run() is None and refused.status.value  # the reason is shown
