"""The analytic engine: exact values, Chen-Toueg-Aguilera QoS checked against a
direct simulation of the heartbeat stream, and the assumptions it refuses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from leasekit import analytic, fast
from leasekit.distributions import parse_delay
from leasekit.sim import Burst, Direction, Pauses, Scenario, Window, with_overrides


def fixed(
    interval: float, ttl: int, latency: str, loss: float, *, policy: str | None = None
) -> Scenario:
    return with_overrides(
        Scenario(),
        policy=policy or f"fixed:interval={interval:g}",
        ttl_seconds=ttl,
        latency=latency,
        loss=loss,
    )


def test_the_issue_example_is_the_closed_form() -> None:
    """--policy fixed:interval=0.4 --ttl 1 --latency const:0 --loss 0.1:
    3600 (1 - p) p^2 / eta server expiries per lease-hour, exactly."""
    result = analytic.estimate(fixed(0.4, 1, "const:0", 0.1))
    assert result.engine == "analytic"
    expected = 3600 * 0.9 * 0.1**2 / 0.4
    for name in ("server_expiries_per_lease_hour", "false_losses_per_lease_hour"):
        got = result.metrics[name]
        assert got.value == pytest.approx(expected, rel=1e-12)
        assert got.ci95 == (got.value, got.value)
        assert got.method == "closed_form"
    assert result.metrics["false_losses_give_up_per_lease_hour"].value == 0
    assert result.heartbeats_sent == 0


def test_qos_at_zero_delay_by_hand() -> None:
    """eta = 0.4 s, TTL = 1 s = 2 eta + 0.2 s, p = 0.1."""
    eta, eps, p = 0.4, 0.2, 0.1
    metrics = analytic.estimate(fixed(eta, 1, "const:0", p)).metrics
    recurrence = eta / ((1 - p) * p**2)
    duration = eta / (1 - p) - eps
    assert metrics["mistake_recurrence_seconds_mean"].value == pytest.approx(recurrence)
    assert metrics["mistake_duration_seconds_mean"].value == pytest.approx(duration)
    assert metrics["query_accuracy_probability"].value == pytest.approx(1 - duration / recurrence)
    # crash at phase u after a send; i lost sends before it: max(0, 1 - i eta - u)
    detection = 0.9 * (1 - eta / 2) + 0.09 * (0.6 - eta / 2) + 0.009 * 0.2**2 / (2 * eta)
    assert metrics["detection_seconds_mean"].value == pytest.approx(detection)
    assert metrics["detection_seconds_max"].value == 1.0


def simulate_stream(
    eta: float, ttl: float, p: float, low: float, high: float, slots: int, seed: int
) -> dict[str, float]:
    """The lease timer as a failure detector, measured on a simulated stream of
    heartbeats (sent every eta, lost with probability p, delayed U[low, high])."""
    rng = np.random.default_rng(seed)
    sends = np.arange(slots) * eta
    delivered = rng.random(slots) >= p
    arrivals = sends[delivered] + rng.uniform(low, high, delivered.sum())
    gaps = np.diff(arrivals)
    mistakes = gaps[gaps > ttl] - ttl
    span = arrivals[-1] - arrivals[0]
    crashes = rng.uniform(sends[10], sends[-10], 200_000)
    last = np.searchsorted(sends[delivered], crashes, side="right") - 1
    detection = np.maximum(0.0, arrivals[last] + ttl - crashes)
    return {
        "mistake_recurrence_seconds_mean": span / mistakes.size,
        "mistake_duration_seconds_mean": float(mistakes.mean()),
        "query_accuracy_probability": 1 - float(mistakes.sum()) / span,
        "detection_seconds_mean": float(detection.mean()),
        "detection_seconds_max": float(detection.max()),
    }


def test_qos_with_random_delays_matches_a_direct_simulation_of_the_stream() -> None:
    eta, ttl, p = 1.0, 3, 0.2
    exact = analytic.estimate(fixed(eta, ttl, "uniform:0,0.45", p)).metrics
    measured = simulate_stream(eta, ttl, p, 0.0, 0.45, 2_000_000, seed=4)
    for name, value in measured.items():
        rel = 0.03 if name != "query_accuracy_probability" else 1e-3
        if name == "detection_seconds_max":
            assert value <= exact[name].value
            assert value == pytest.approx(exact[name].value, rel=0.01)
        else:
            assert value == pytest.approx(exact[name].value, rel=rel), name


def test_the_fast_engine_agrees_with_the_integrated_model() -> None:
    """Random delays and rare losses: the renewal equation solved numerically,
    and importance sampling on the real FixedPolicy, agree."""
    sc = fixed(10, 21, "uniform:0,2", 0.01)
    exact = analytic.estimate(sc).metrics["server_expiries_per_lease_hour"]
    sampled = fast.estimate(sc, seed=2).metrics["server_expiries_per_lease_hour"]
    assert sampled.low <= exact.value <= sampled.high, (exact, sampled)


def replace_network(sc: Scenario, **request: object) -> Scenario:
    network = dataclasses.replace(sc.network, request=Direction(**request))  # type: ignore[arg-type]
    return dataclasses.replace(sc, network=network)


BASE = fixed(0.4, 1, "const:0", 0.1)
REFUSED = {
    "workers.policy": fixed(0.4, 1, "const:0", 0.1, policy="sdk"),
    "workers.enforce_deadline": dataclasses.replace(
        BASE, workers=dataclasses.replace(BASE.workers, enforce_deadline=True)
    ),
    "workers.pauses.rate_per_hour": dataclasses.replace(
        BASE, workers=dataclasses.replace(BASE.workers, pauses=Pauses(rate_per_hour=1))
    ),
    "network.request.burst": replace_network(BASE, delay="const:0", burst=Burst(p_enter=0.1)),
    "network.answer.loss": with_overrides(BASE, answer_loss=0.01),
    "network.request.delay": fixed(0.4, 1, "pareto:0.01,2", 0.1),
    "server.default_ttl_seconds": fixed(0.5, 1, "const:0", 0.1),
    "network.partitions": dataclasses.replace(
        BASE, network=dataclasses.replace(BASE.network, partitions=(Window(1.0, 1.0),))
    ),
}


@pytest.mark.parametrize("field", list(REFUSED))
def test_configurations_outside_its_assumptions_are_refused_naming_them(field: str) -> None:
    with pytest.raises(analytic.UnsupportedScenario) as caught:
        analytic.estimate(REFUSED[field])
    assert caught.value.field == field


def test_answers_slower_than_the_interval_are_refused() -> None:
    with pytest.raises(analytic.UnsupportedScenario, match="within the interval"):
        analytic.estimate(fixed(0.4, 1, "uniform:0.1,0.3", 0.1))
    assert parse_delay("uniform:0.1,0.3").mean == pytest.approx(0.2)
    # the same flags with a shorter delay are inside the model
    analytic.estimate(fixed(0.4, 1, "uniform:0.05,0.15", 0.1))


def test_without_loss_there_is_no_mistake_and_json_has_no_infinity() -> None:
    result = analytic.estimate(fixed(0.4, 1, "const:0", 0.0))
    metrics = result.metrics
    assert metrics["server_expiries_per_lease_hour"].value == 0
    assert metrics["query_accuracy_probability"].value == 1
    assert "mistake_recurrence_seconds_mean" not in metrics
    import json

    json.dumps(result.to_dict(), allow_nan=False)
