"""``leasekit.study``: one sweep, any engine, anywhere, the same table."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from study_support import small, write_tiny_study

from leasekit.metrics import METRICS, Estimate, summarize
from leasekit.sim import ScenarioError
from leasekit.study import (
    Recommendation,
    StudyError,
    combine,
    load_study,
    recommend,
    set_field,
    simpy_runs,
    sweep,
    winners,
)

FAST = {"fast": {"rel_halfwidth": 0.5, "max_seconds": 60.0}}


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_serial_process_pool_and_dask_give_identical_tables(dask_address: str) -> None:
    networks = {"lan": small("lan"), "gc": small("gc-host")}
    # one item per worker, so the fast engine takes these scenarios too
    networks = {k: set_field(s, "workers.items_per_worker", 1.0) for k, s in networks.items()}
    kwargs = {
        "grid": {"ttl_seconds": [10], "policy": ["sdk", "leasekit"]},
        "engines": ("simpy", "fast"),
        "replications": 2,
        "seed": 9,
        "options": FAST,
    }
    serial = sweep(networks, **kwargs)  # type: ignore[arg-type]
    with ProcessPoolExecutor(max_workers=2) as pool:
        pooled = sweep(networks, executor=pool, **kwargs)  # type: ignore[arg-type]
    on_dask = sweep(networks, scheduler=dask_address, **kwargs)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(serial, pooled)
    pd.testing.assert_frame_equal(serial, on_dask)
    assert len(serial) == 2 * 1 * 2 * 2  # networks x TTLs x policies x engines
    assert (serial["note"] == "").all()
    fast = serial[serial["engine"] == "fast"]
    assert (fast["false_losses_per_lease_hour_interval"] == "importance_sampling").all()
    assert (fast["false_losses_per_lease_hour_high"] > 0).all()
    # a different seed, different numbers: the seed really travels with the tasks
    other = sweep(networks, **{**kwargs, "seed": 10, "engines": ("simpy",)})  # type: ignore[arg-type]
    assert not serial["requests_per_lease_second"].equals(other["requests_per_lease_second"])


def test_simpy_rows_pool_the_runs_counts_with_the_glossarys_intervals() -> None:
    scenario = set_field(small("lossy-bursts"), "policy", "sdk")
    table = sweep(scenario, ttl=[20], replications=3, seed=4)
    runs = simpy_runs(set_field(scenario, "ttl_seconds", 20), 3, seed=4)
    pooled = summarize([run.totals for run in runs])
    row = table.iloc[0]
    assert row["network"] == "lossy-bursts" and row["engine"] == "simpy"
    assert row["heartbeats_sent"] == sum(run.heartbeats_sent for run in runs)
    for name, spec in METRICS.items():
        if name not in pooled:  # a metric only another engine gives
            assert math.isnan(row[name]) and row[f"{name}_interval"] == ""
            continue
        e = pooled[name]
        for column, want in ((name, e.value), (f"{name}_low", e.low), (f"{name}_high", e.high)):
            assert row[column] == want or (math.isnan(row[column]) and math.isnan(want))
        assert row[f"{name}_interval"] == spec.interval
    # a lossy link: false losses happen, and the Poisson interval holds its value
    assert 0 < row["false_losses_per_lease_hour"] < row["false_losses_per_lease_hour_high"]
    assert table.attrs["units"]["takeover_seconds_mean"] == "s"


def test_an_engine_that_does_not_model_a_scenario_leaves_a_note_not_numbers() -> None:
    scenario = small("lan")  # spare workers: items_per_worker 0.8
    table = sweep(scenario, ttl=[30], engines=("fast",), options=FAST)
    row = table.iloc[0]
    assert "workers.items_per_worker" in row["note"]
    assert math.isnan(row["false_losses_per_lease_hour"])
    assert row["false_losses_per_lease_hour_interval"] == ""


def test_set_field_takes_aliases_and_dotted_paths_and_names_a_bad_field() -> None:
    base = small("lan")
    changed = set_field(base, "ttl_seconds", 45)
    assert changed.server.default_ttl_seconds == changed.server.max_ttl_seconds == 45
    changed = set_field(base, "network.request.burst.p_enter", 0.01)
    assert changed.network.request.burst is not None
    assert changed.network.request.burst.p_enter == 0.01
    assert set_field(base, "pause_rate", 3.0).workers.pauses.rate_per_hour == 3.0
    assert set_field(base, "latency", "exp:0.1").network.answer.delay == "exp:0.1"
    with pytest.raises(ScenarioError, match=r"network\.request\.loss"):
        set_field(base, "network.request.loss", 2.0)
    with pytest.raises(ScenarioError, match=r"workers\.colour"):
        set_field(base, "workers.colour", "red")


def test_the_shipped_default_study_loads() -> None:
    study = load_study(Path(__file__).resolve().parent.parent / "simulations" / "study.toml")
    assert set(study.grid["policy"]) == {"sdk", "leasekit"}
    assert set(study.networks) == {"lan", "cross-region", "lossy-bursts", "gc-host"}
    assert study.target == 1e-4 and "fast" in study.engines
    # pauses of seconds on the GC host, bursts on the lossy link
    assert study.networks["gc-host"].workers.pauses.rate_per_hour > 0
    assert study.networks["lossy-bursts"].network.request.burst is not None


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t.replace('seed = 5', 'seed = "five"'), "seed"),
        (lambda t: t.replace("target = 1e-3", "target = -1.0"), "target"),
        (lambda t: t.replace('engines = ["simpy"]', 'engines = ["simpy", "turbo"]'), "engines[1]"),
        (lambda t: t.replace("ttl_seconds = [10, 30]", "ttl_seconds = [10, 0]"),
         "grid.ttl_seconds[1]"),
        (lambda t: t.replace('policy = ["sdk", "leasekit"]\n', ""), "grid.policy"),
        (lambda t: t.replace("workers = 6", "workers = 0"), "run.workers"),
        (lambda t: t.replace("[fast]", "[fast]\nturbo = 1"), "fast.turbo"),
        (lambda t: "colour = 1\n" + t, "colour"),
        (lambda t: t.replace('lan = "', 'lan = "missing-'), "networks.lan"),
    ],
)  # fmt: skip
def test_a_bad_study_file_names_the_file_and_the_field(
    tmp_path: Path, edit: object, field: str
) -> None:
    path = write_tiny_study(tmp_path, engines='["simpy"]')
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    with pytest.raises(StudyError) as caught:
        load_study(path)
    assert caught.value.path == str(path) and caught.value.field == field
    assert str(path) in str(caught.value)


def test_a_bad_field_inside_a_network_file_names_both_files(tmp_path: Path) -> None:
    network = tmp_path / "bad-net.toml"
    network.write_text("[network.request]\nloss = 1.5\n")
    path = write_tiny_study(tmp_path, engines='["simpy"]')
    text = path.read_text()
    path.write_text(text[: text.index("lan = ")] + f'lan = "{network}"\n')
    with pytest.raises(StudyError) as caught:
        load_study(path)
    message = str(caught.value)
    assert caught.value.field == "networks.lan"
    assert str(network) in message and "network.request.loss" in message


def _row(network: str, policy: str, ttl: int, engine: str, rate: float, high: float) -> dict:  # type: ignore[type-arg]
    row: dict = {"network": network, "policy": policy, "ttl_seconds": ttl, "engine": engine}  # type: ignore[type-arg]
    row.update(replications=2, seed=1, heartbeats_sent=10, note="")
    for name in METRICS:
        row.update({name: math.nan, f"{name}_low": math.nan, f"{name}_high": math.nan,
                    f"{name}_interval": ""})  # fmt: skip
    row.update(false_losses_per_lease_hour=rate, false_losses_per_lease_hour_low=0.0,
               false_losses_per_lease_hour_high=high,
               false_losses_per_lease_hour_interval="poisson")  # fmt: skip
    if engine == "simpy":
        row.update(takeover_seconds_mean=ttl * 0.8, requests_per_lease_second=3.0 / ttl)
    return row


def test_combine_takes_rare_rates_from_the_fast_engine_and_the_rest_from_simpy() -> None:
    rows = [
        _row("lan", "sdk", 10, "simpy", 0.0, 1.0),
        _row("lan", "sdk", 10, "fast", 2e-5, 3e-5),
        _row("lan", "sdk", 30, "simpy", 0.0, 0.5),
        _row("lan", "sdk", 30, "fast", math.nan, math.nan),  # refused
    ]
    combined = combine(pd.DataFrame(rows), ["policy", "ttl_seconds"])
    assert len(combined) == 2
    first, second = combined.iloc[0], combined.iloc[1]
    assert first["false_losses_per_lease_hour"] == 2e-5
    assert first["false_losses_per_lease_hour_engine"] == "fast"
    assert first["takeover_seconds_mean_engine"] == "simpy"
    assert first["takeover_seconds_mean"] == 8.0
    assert second["false_losses_per_lease_hour_engine"] == "simpy"  # the fallback
    assert second["false_losses_per_lease_hour_high"] == 0.5


def test_the_recommendation_is_the_smallest_ttl_under_the_target_and_picks_a_winner() -> None:
    rows = [
        _row("lan", "sdk", 10, "simpy", 1e-3, 2e-3),
        _row("lan", "sdk", 30, "simpy", 1e-5, 5e-5),
        _row("lan", "sdk", 60, "simpy", 1e-6, 2e-6),
        _row("lan", "leasekit", 10, "simpy", 1e-6, 4e-5),
        _row("lan", "leasekit", 30, "simpy", 1e-7, 2e-6),
        _row("wan", "sdk", 10, "simpy", 1.0, 2.0),
        _row("wan", "leasekit", 10, "simpy", 1.0, 1e-4),  # the bound must be under, not at
    ]
    combined = combine(pd.DataFrame(rows), ["policy", "ttl_seconds"])
    found = recommend(combined, 1e-4)
    by_key = {(r.network, r.policy): r for r in found}
    assert by_key["lan", "sdk"].ttl_seconds == 30
    assert by_key["lan", "leasekit"].ttl_seconds == 10
    assert by_key["lan", "leasekit"].takeover_seconds == 8.0
    assert by_key["lan", "leasekit"].false_losses == Estimate(1e-6, 0.0, 4e-5, "poisson")
    assert by_key["wan", "sdk"].ttl_seconds is None
    assert by_key["wan", "leasekit"].ttl_seconds is None
    assert winners(found) == {"lan": "leasekit", "wan": None}
    document = by_key["lan", "sdk"].to_dict()
    assert document["false_losses_per_lease_hour"] == {"value": 1e-5, "ci95": [0.0, 5e-5]}
    assert (
        Recommendation("wan", "sdk", None, None, None, None, None).to_dict()["ttl_seconds"] is None
    )
