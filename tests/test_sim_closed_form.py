"""The simulator agrees with closed-form and numerically integrated models,
inside its Monte-Carlo 95% confidence interval."""

from __future__ import annotations

import pytest

from leasekit.analytic import fixed_expiry_rate, fixed_expiry_rate_with_delay
from leasekit.distributions import parse_delay
from leasekit.sim import Direction, Network, Scenario, Server, Workers, replicate

INTERVAL_S = 10.0
TTL_S = 21  # k = 2 intervals plus eps = 1 s


def fixed_scenario(loss: float, request_delay: str, hours: float) -> Scenario:
    return Scenario(
        name="closed-form",
        duration_s=hours * 3600,
        warmup_s=600,
        seed=2024,
        workers=Workers(count=40, policy=f"fixed:interval={INTERVAL_S:g}"),
        server=Server(default_ttl_seconds=TTL_S, min_ttl_seconds=TTL_S, max_ttl_seconds=TTL_S),
        network=Network(
            request=Direction(delay=request_delay, loss=loss),
            answer=Direction(delay="const:0", loss=0.0),
        ),
    )


def test_zero_delay_expiries_match_one_minus_p_times_p_to_the_k_over_eta() -> None:
    """Server expiries per held second = (1 - p) p**k / eta at zero delay."""
    loss = 0.3
    expected = fixed_expiry_rate(INTERVAL_S, TTL_S, loss) * 3600  # per lease-hour
    assert expected == pytest.approx(0.7 * 0.3**2 / 10 * 3600)
    estimate = replicate(fixed_scenario(loss, "const:0", hours=3), 5).estimates()[
        "server_expiries_per_lease_hour"
    ]
    assert estimate.low <= expected <= estimate.high, (expected, estimate)
    # The interval is tight enough to tell k = 2 from k = 1 or 3.
    assert estimate.high < fixed_expiry_rate(INTERVAL_S, 11, loss) * 3600
    assert estimate.low > fixed_expiry_rate(INTERVAL_S, 31, loss) * 3600


def test_random_delay_and_loss_match_the_integrated_renewal_model() -> None:
    """Uniform 0-2 s request delays and 20% loss: the renewal equation of
    :mod:`leasekit.analytic`, solved numerically, predicts the rate; the
    zero-delay formula does not."""
    loss = 0.2
    delay = "uniform:0,2"
    expected = fixed_expiry_rate_with_delay(INTERVAL_S, TTL_S, loss, parse_delay(delay)) * 3600
    estimate = replicate(fixed_scenario(loss, delay, hours=3), 5).estimates()[
        "server_expiries_per_lease_hour"
    ]
    assert estimate.low <= expected <= estimate.high, (expected, estimate)
    naive = fixed_expiry_rate(INTERVAL_S, TTL_S, loss) * 3600
    assert not estimate.low <= naive <= estimate.high


@pytest.mark.parametrize(("loss", "delay"), [(0.3, "const:0"), (0.2, "uniform:0,2")])
def test_the_analytic_engine_gives_what_the_simulator_measures(loss: float, delay: str) -> None:
    """``--engine analytic`` on the very scenario SimPy runs: its exact value
    lies inside SimPy's interval, for false losses and server expiries alike."""
    from leasekit import analytic

    scenario = fixed_scenario(loss, delay, hours=2)
    exact = analytic.estimate(scenario).metrics
    measured = replicate(scenario, 4).estimates()
    for name in ("server_expiries_per_lease_hour", "false_losses_per_lease_hour"):
        value = exact[name].value
        assert measured[name].low <= value <= measured[name].high, (name, value, measured[name])
