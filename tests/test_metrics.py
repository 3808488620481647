"""The metrics glossary and its intervals: never negative, zero still bounds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import leasekit.sim
from leasekit.metrics import (
    METRICS,
    Estimate,
    Totals,
    binomial_proportion,
    bootstrap_mean,
    glossary_markdown,
    poisson_rate,
    summarize,
)
from leasekit.sim import (
    Crashes,
    Direction,
    Network,
    Pauses,
    Scenario,
    Server,
    Workers,
    replicate,
    simulate,
)


def test_zero_events_still_bound_the_rate_from_above() -> None:
    estimate = poisson_rate(0, 1000.0)
    assert estimate.value == 0.0
    assert estimate.low == 0.0
    # the exact Poisson upper bound for zero events at 95% is 3.689
    assert estimate.high == pytest.approx(3.689 / 1000.0, rel=1e-3)


def test_rare_events_never_give_a_negative_bound() -> None:
    # the t-interval over seeds that the issue quotes went to -0.0041
    runs = [Totals(lease_seconds=3600.0 * 100) for _ in range(5)]
    runs[2].false_losses_give_up = 1
    metric = summarize(runs)["false_losses_per_lease_hour"]
    assert metric.value == pytest.approx(1 / 500)
    assert metric.low > 0
    assert metric.high > metric.value


def test_garwood_matches_the_textbook_values() -> None:
    # k = 10 events: exact 95% bounds 4.795 and 18.39
    estimate = poisson_rate(10, 1.0)
    assert estimate.low == pytest.approx(4.7954, rel=1e-3)
    assert estimate.high == pytest.approx(18.390, rel=1e-3)


def test_runs_that_disagree_more_than_poisson_widen_the_interval() -> None:
    steady = poisson_rate(20, 4.0, counts=[5, 5, 5, 5], exposures=[1, 1, 1, 1])
    clumped = poisson_rate(20, 4.0, counts=[20, 0, 0, 0], exposures=[1, 1, 1, 1])
    assert steady.value == clumped.value
    assert clumped.high - clumped.low > 1.5 * (steady.high - steady.low)


def test_binomial_bounds_stay_inside_zero_and_one() -> None:
    none = binomial_proportion(0, 50)
    assert none.low == 0.0 and 0 < none.high < 0.1
    every = binomial_proportion(50, 50)
    assert every.high == 1.0 and 0.9 < every.low < 1.0


def test_bootstrap_mean_is_reproducible_and_inside_the_samples() -> None:
    samples = [30.0, 31.5, 45.0, 29.0, 60.0]
    first, second = bootstrap_mean(samples), bootstrap_mean(samples)
    assert first == second
    assert min(samples) <= first.low <= first.value <= first.high <= max(samples)


def test_totals_add_up_and_one_run_is_a_list_of_one() -> None:
    a = Totals(lease_seconds=7200.0, false_losses_give_up=2, takeover_seconds=[40.0])
    b = Totals(lease_seconds=3600.0, false_losses_rejection=1, takeover_seconds=[50.0])
    both = a + b
    assert both.lease_seconds == 10800.0 and both.false_losses == 3
    assert both.takeover_seconds == [40.0, 50.0]
    assert summarize(both)["false_losses_per_lease_hour"].value == pytest.approx(1.0)
    assert summarize([a, b])["false_losses_per_lease_hour"].value == pytest.approx(1.0)


def test_summarize_gives_every_metric_of_the_glossary_and_no_other() -> None:
    out = summarize(Totals(lease_seconds=3600.0, requests=7200, heartbeat_answers=10))
    assert list(out) == [name for name, spec in METRICS.items() if spec.interval != "closed_form"]
    for name, estimate in out.items():
        assert estimate.method in (METRICS[name].interval, "exact"), name
        if not math.isnan(estimate.value):
            assert estimate.low <= estimate.value <= estimate.high, name
            assert estimate.low >= 0, name
    assert out["requests_per_lease_second"].value == pytest.approx(2.0)


def test_split_brain_with_no_episode_is_zero_and_its_episode_rate_bounds_it() -> None:
    out = summarize(Totals(lease_seconds=36_000.0))
    assert out["split_brain_seconds_per_lease_hour"].ci95 == (0.0, 0.0)
    assert out["split_brain_episodes_per_lease_hour"].high == pytest.approx(0.3689, rel=1e-3)


def test_docs_metrics_md_is_generated_from_the_glossary() -> None:
    path = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
    assert path.read_text() == glossary_markdown(), (
        "regenerate: leasekit.metrics.glossary_markdown()"
    )


# --------------------------------------------------------------------------- replicate


def _clean_one_worker(hours: float = 0.5) -> Scenario:
    return Scenario(
        name="clean",
        duration_s=hours * 3600,
        seed=3,
        workers=Workers(count=2, policy="sdk", start_spread_s=0),
        server=Server(default_ttl_seconds=90, min_ttl_seconds=90, max_ttl_seconds=90),
        network=Network(
            request=Direction(delay="const:0.01"), answer=Direction(delay="const:0.01")
        ),
    )


def _hostile(seed: int) -> Scenario:
    return Scenario(
        name="hostile",
        duration_s=3600,
        seed=seed,
        workers=Workers(
            count=8,
            policy="sdk",
            items_per_worker=0.7,
            pauses=Pauses(rate_per_hour=6, duration="lognormal:2,1"),
            crashes=Crashes(rate_per_hour=2, restart_after="const:20"),
        ),
        server=Server(default_ttl_seconds=10, min_ttl_seconds=10, max_ttl_seconds=10),
        network=Network(
            request=Direction(delay="shiftexp:0.02,0.5", loss=0.1),
            answer=Direction(delay="shiftexp:0.02,0.5", loss=0.1),
        ),
    )


def test_replications_with_no_event_still_bound_the_rate_from_above() -> None:
    # t-intervals over seeds gave [0, 0] here, which proves nothing
    replications = replicate(_clean_one_worker(), 3)
    estimate = replications.estimates()["false_losses_per_lease_hour"]
    hours = replications.estimates()["lease_hours"].value
    assert estimate.value == 0 and estimate.low == 0
    assert estimate.high == pytest.approx(3.689 / hours, rel=1e-3)
    assert isinstance(estimate, Estimate) and estimate.method == "poisson"


def test_replication_intervals_are_never_negative() -> None:
    replications = replicate(_hostile(7), 3)
    assert sum(t.false_losses for t in replications.totals) > 0  # the conditions are hostile
    for name, estimate in replications.estimates().items():
        if not math.isnan(estimate.low):
            assert 0 <= estimate.low <= estimate.value <= estimate.high, name


def test_a_runs_totals_give_back_its_own_metrics() -> None:
    result = simulate(_hostile(11))
    assert result.totals.false_losses > 0 and result.totals.takeover_seconds
    pooled = summarize(result.totals)
    for name, value in result.metrics.items():
        got = pooled[name].value
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value), name
    assert result.totals.heartbeats_sent == result.heartbeats_sent


def test_summary_names_each_metrics_interval_and_unit() -> None:
    summary = replicate(_clean_one_worker(0.2), 2).summary()
    assert list(summary.columns) == ["metric", "value", "ci95_low", "ci95_high", "interval", "unit"]
    # every metric a simulation measures; the closed-form ones are the analytic engine's
    measured = [name for name, spec in METRICS.items() if spec.interval != "closed_form"]
    assert summary["metric"].tolist() == measured
    row = summary.set_index("metric").loc["false_losses_per_lease_hour"]
    assert (row["interval"], row["unit"]) == ("poisson", "1/h")


def test_t_intervals_are_gone_from_the_simulator() -> None:
    assert not hasattr(leasekit.sim, "t_interval")
    assert leasekit.sim.Estimate is Estimate


def test_docs_protocol_md_stands_alone() -> None:
    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for heading in ("## 1. Facts", "## 2. Reference semantics", "## 3. Safety arguments"):
        assert heading in text
    assert "leasekit's reference semantics" in text and "hosted service may differ" in text
    assert "### The local deadline" in text and "### Adopting a self-inflicted 412" in text
    assert "PROTOCOL.md" not in text


def test_no_file_of_the_package_or_its_docs_cites_a_document_outside_the_repository() -> None:
    root = Path(__file__).parent.parent
    files = [*root.glob("leasekit/**/*.py"), *root.glob("docs/*.md"), root / "README.md"]
    citing = [str(p.relative_to(root)) for p in files if "PROTOCOL.md" in p.read_text()]
    assert citing == [], "cite docs/protocol.md instead"


def _bootstrap_in_one_go(samples: list[float]) -> tuple[float, float]:
    """The interval as bootstrap_mean drew it before it drew in chunks."""
    import numpy as np

    from leasekit.metrics import _BOOTSTRAP_RESAMPLES, _BOOTSTRAP_SEED, LEVEL

    values = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    picks = rng.integers(0, values.size, size=(_BOOTSTRAP_RESAMPLES, values.size))
    alpha = 1 - LEVEL
    low, high = np.quantile(values[picks].mean(axis=1), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@pytest.mark.parametrize("n", [2, 7, 131, 3600])
def test_bootstrap_in_chunks_gives_the_interval_of_one_draw(n: int) -> None:
    import random

    rng = random.Random(n)
    samples = [rng.expovariate(1 / 30) for _ in range(n)]
    estimate = bootstrap_mean(samples)
    assert (estimate.low, estimate.high) == _bootstrap_in_one_go(samples)


def test_bootstrap_memory_stays_small_with_many_samples() -> None:
    import tracemalloc

    samples = [float(i % 97) for i in range(3600)]
    tracemalloc.start()
    try:
        bootstrap_mean(samples)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # all 2000 resamples at once took 2 x 2000 x 3600 x 8 bytes = 115 MB
    assert peak < 20e6


def test_the_quantiles_are_scipy_stats_own_bit_for_bit() -> None:
    import random

    from scipy import stats

    from leasekit.metrics import _beta_quantile, _chi2_quantile

    rng = random.Random(3)
    for _ in range(2000):
        df = rng.choice([rng.uniform(0.01, 50.0), float(rng.randint(1, 10**5))])
        trials = rng.randint(1, 10**5)
        successes = rng.randint(1, trials)
        a, b = successes, trials - successes + 1
        for q in (0.025, 0.975, rng.random()):
            assert _chi2_quantile(q, df) == float(stats.chi2.ppf(q, df))
            assert _beta_quantile(q, a, b) == float(stats.beta.ppf(q, a, b))
