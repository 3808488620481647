"""The rare-event engine: closed forms it must hit, the SimPy engine it must
agree with where brute force can measure, and what it refuses."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Any

import pytest
from scipy import stats

from leasekit import fast
from leasekit._fast_draws import quantile
from leasekit.analytic import fixed_expiry_rate
from leasekit.distributions import parse_delay
from leasekit.metrics import Estimate, poisson_rate
from leasekit.sim import (
    Burst,
    Crashes,
    Direction,
    Fault,
    Moment,
    Network,
    Pauses,
    Scenario,
    Server,
    Window,
    Workers,
    simulate,
    with_overrides,
)


def scenario(
    policy: str,
    ttl: int,
    *,
    delay: str = "const:0.05",
    loss: float = 0.0,
    answer_loss: float = 0.0,
    burst: Burst | None = None,
    pauses: Pauses | None = None,
    crashes: Crashes | None = None,
    workers: int = 100,
    hours: float = 1.0,
) -> Scenario:
    return Scenario(
        name="fast-test",
        duration_s=hours * 3600,
        seed=7,
        workers=Workers(
            count=workers,
            policy=policy,
            pauses=pauses or Pauses(),
            crashes=crashes or Crashes(),
        ),
        server=Server(default_ttl_seconds=ttl, min_ttl_seconds=min(5, ttl), max_ttl_seconds=3600),
        network=Network(
            request=Direction(delay=delay, loss=loss, burst=burst),
            answer=Direction(delay=delay, loss=answer_loss),
        ),
    )


def inside(value: float, estimate: Estimate) -> bool:
    return estimate.low <= value <= estimate.high


# ------------------------------------------------------------------ closed forms


def test_fixed_policy_at_zero_delay_hits_the_closed_form_where_brute_force_cannot() -> None:
    """TTL = 2 intervals + 1 s, p = 1e-3: (1 - p) p^2 / interval per held second,
    about 3.6e-4 per lease-hour (brute force would need ~3e5 lease-hours)."""
    loss, interval, ttl = 1e-3, 10.0, 21
    sc = scenario(f"fixed:interval={interval:g}", ttl, delay="const:0", loss=loss)
    result = fast.estimate(sc, seed=11)
    expected = fixed_expiry_rate(interval, ttl, loss) * 3600
    assert expected == pytest.approx((1 - loss) * loss**2 / interval * 3600)
    for name in ("server_expiries_per_lease_hour", "false_losses_per_lease_hour"):
        got = result.metrics[name]
        assert got.method == "importance_sampling"
        assert inside(expected, got), (name, expected, got)
        assert (got.high - got.value) / got.value <= 0.1
    # the tight interval tells k = 2 from k = 1 and k = 3
    assert result.metrics["server_expiries_per_lease_hour"].high < loss * 3600 / interval
    assert result.diagnostics["variance_reduction_factor"] > 100
    assert result.engine == "fast"


def test_official_worker_at_ttl_150_loses_a_lease_to_two_lost_requests() -> None:
    """The issue's example: 1,000 workers for 1,000 hours, TTL 150 s (interval
    30 s), 10 ms each way, p = 1e-4: (3600 / 30.02) p^2, about 1.2e-6."""
    sc = with_overrides(
        Scenario(),
        workers=1000,
        hours=1000,
        policy="sdk",
        ttl_seconds=150,
        latency="const:0.01",
        loss=1e-4,
        seed=1,
    )
    result = fast.estimate(sc)
    got = result.metrics["false_losses_per_lease_hour"]
    expected = 3600 / 30.02 * 1e-4**2
    assert inside(expected, got), (expected, got)
    assert (got.high - got.value) / got.value <= 0.1
    assert result.metrics["false_losses_server_expiry_per_lease_hour"].value == got.value
    assert result.metrics["false_losses_give_up_per_lease_hour"].value == 0
    assert result.metrics["lease_hours"].value == pytest.approx(1e6)
    assert result.diagnostics["effective_sample_size"] >= 20


def test_no_randomness_no_loss_and_a_poisson_bound() -> None:
    result = fast.estimate(scenario("sdk", 20, delay="const:0.01"), seed=1)
    got = result.metrics["false_losses_per_lease_hour"]
    assert got.value == 0 and got.low == 0 and 0 < got.high < 1
    assert got.method == "poisson"


# ------------------------------------------------------------------ against SimPy


def brute_force(sc: Scenario, seeds: int = 1) -> dict[str, Estimate]:
    """SimPy's false losses and server expiries, counts pooled over seeds."""
    counts = {"false_losses_per_lease_hour": 0, "server_expiries_per_lease_hour": 0}
    hours = 0.0
    for seed in range(seeds):
        run = simulate(sc, seed=100 + seed)
        held = run.metrics["lease_hours"]
        hours += held
        for name in counts:
            counts[name] += round(run.metrics[name] * held)
    return {name: poisson_rate(count, hours) for name, count in counts.items()}


def agree(a: Estimate, b: Estimate) -> bool:
    """Equal within the 99% test of their difference (from their 95% intervals):
    a dozen comparisons run, and each must not fail by chance one time in twenty."""
    half_a, half_b = (a.high - a.low) / 2, (b.high - b.low) / 2
    return abs(a.value - b.value) <= 2.576 / 1.96 * math.hypot(half_a, half_b)


SHARED = {
    # two lost requests in a row (and crashes that censor leases)
    "sdk-loss-crashes": scenario(
        "sdk", 10, loss=0.04, crashes=Crashes(rate_per_hour=2, restart_after="const:1")
    ),
    # bursts of lost requests, exponential delays
    "leasekit-bursts": scenario(
        "leasekit", 10, delay="exp:0.1", burst=Burst(p_enter=0.01, p_exit=0.15, loss_bad=1.0)
    ),
    # GC-like pauses of the worker
    "sdk-pauses": scenario("sdk", 20, pauses=Pauses(rate_per_hour=20, duration="exp:4")),
    "leasekit-pauses": scenario(
        "leasekit", 10, pauses=Pauses(rate_per_hour=20, duration="uniform:0,12")
    ),
}


@pytest.mark.parametrize("name", list(SHARED))
def test_agrees_with_the_simpy_engine_where_it_can_measure(name: str) -> None:
    sc = SHARED[name]
    result = fast.estimate(sc, seed=3, rel_halfwidth=0.05)
    simpy = brute_force(sc)
    for metric in ("false_losses_per_lease_hour", "server_expiries_per_lease_hour"):
        assert simpy[metric].n >= 60, "SimPy must see enough events to measure"
        assert agree(result.metrics[metric], simpy[metric]), (metric, result.metrics, simpy)


def test_lost_answers_count_the_expiries_of_leases_never_held() -> None:
    """A claim the server applied whose answer was lost ends in a 412 before the
    lease is held, and the item expires later: a server expiry SimPy counts."""
    sc = scenario("leasekit", 10, loss=0.3, answer_loss=0.1, workers=20)
    result = fast.estimate(sc, seed=3)
    simpy = brute_force(sc)
    metrics = result.metrics
    assert (
        metrics["server_expiries_per_lease_hour"].value
        > metrics["false_losses_server_expiry_per_lease_hour"].value
    )
    for metric in ("false_losses_per_lease_hour", "server_expiries_per_lease_hour"):
        assert agree(metrics[metric], simpy[metric]), (metric, metrics[metric], simpy[metric])


# ------------------------------------------------------------------ the engine's parts


def test_the_same_seed_gives_the_same_numbers() -> None:
    sc = SHARED["sdk-pauses"]
    a = fast.estimate(sc, seed=5)
    b = fast.estimate(sc, seed=5)
    assert a.metrics == b.metrics
    assert a.heartbeats_sent == b.heartbeats_sent
    c = fast.estimate(sc, seed=6)
    assert c.metrics != a.metrics


def test_a_cycle_budget_stops_at_the_same_point_whatever_the_time_allowed() -> None:
    # a time limit makes the stopping point depend on the machine; a cycle budget does not
    sc = SHARED["sdk-pauses"]
    a = fast.estimate(sc, seed=5, rel_halfwidth=0.01, max_cycles=3000, max_seconds=1e-9)
    b = fast.estimate(sc, seed=5, rel_halfwidth=0.01, max_cycles=3000, max_seconds=1e9)
    assert a.metrics == b.metrics
    assert a.diagnostics["cycles"] == b.diagnostics["cycles"] == 3000
    assert a.diagnostics["stopped_by_time"] == 0
    with pytest.raises(ValueError, match="max_cycles"):
        fast.estimate(sc, seed=5, max_cycles=10)


@pytest.mark.parametrize(
    "spec",
    ["uniform:0.1,0.5", "exp:0.2", "shiftexp:0.05,0.2", "lognormal:-2,0.8", "pareto:0.01,2.5"],
)
def test_delays_by_inversion_have_the_law_of_delay_sample(spec: str) -> None:
    delay = parse_delay(spec)
    rng = random.Random(1)
    mine = [quantile(delay, rng.random()) for _ in range(4000)]
    theirs = [delay.sample(rng) for _ in range(4000)]
    assert stats.ks_2samp(mine, theirs).pvalue > 0.001


def test_empirical_delays_by_inversion_draw_every_sample_alike() -> None:
    delay = dataclasses.replace(parse_delay("const:0"), kind="empirical", samples=(3.0, 1.0, 2.0))
    ordered = (1.0, 2.0, 3.0)
    assert [quantile(delay, u, ordered) for u in (0.0, 0.34, 0.67, 0.999)] == [1, 2, 3, 3]


REFUSED: dict[str, dict[str, Any]] = {
    "workers.crashes.schedule": {"workers": Workers(crashes=Crashes(schedule=(Moment(5.0),)))},
    "workers.pauses.schedule": {"workers": Workers(pauses=Pauses(schedule=(Window(5.0, 1.0),)))},
    "workers.items_per_worker": {"workers": Workers(items_per_worker=0.5)},
    "network.partitions": {"network": Network(partitions=(Window(10.0, 5.0),))},
    "network.faults": {"network": Network(faults=(Fault(worker=0, after_s=1.0),))},
    "server.processing": {"server": Server(processing="const:0.01")},
    "server.capacity": {"server": Server(capacity=4)},
    "server.stalls": {"server": Server(stalls=(Window(10.0, 1.0),))},
}


@pytest.mark.parametrize("field", list(REFUSED))
def test_features_it_does_not_model_are_refused_by_name(field: str) -> None:
    sc = dataclasses.replace(Scenario(), **REFUSED[field])
    with pytest.raises(fast.UnsupportedScenario) as caught:
        fast.estimate(sc)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_progress_runs_from_zero_to_one_and_the_answer_is_plain_json() -> None:
    import json

    seen: list[float] = []
    result = fast.estimate(SHARED["sdk-loss-crashes"], seed=1, progress=seen.append)
    assert seen and seen[-1] == 1.0
    assert all(0 <= a <= b <= 1 for a, b in itertools.pairwise(seen))
    json.dumps(result.to_dict(), allow_nan=False)


def test_an_estimate_without_enough_lost_segments_is_refused() -> None:
    """GC pauses that end a lease only past 100 s, and no time to find them:
    the engine refuses rather than report a rate it has not seen."""
    sc = scenario(
        "leasekit", 150, pauses=Pauses(rate_per_hour=2, duration="lognormal:0.5,1"), workers=10
    )
    with pytest.raises(fast.UnreliableEstimate, match="ended in a false loss"):
        fast.estimate(sc, seed=1, max_seconds=0.01)
