"""``leasekit study``: a tiny study writes a complete report and answers in JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from study_support import write_tiny_study

from leasekit.cli import main
from leasekit.client import hold_lease_sync
from leasekit.lease import LeaseConfig
from leasekit.server import FaultConfig, create_app, running_server
from leasekit.sim import load_scenario


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    assert main(["study", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    document: dict = json.loads(out)  # type: ignore[type-arg]
    return document


def test_a_tiny_study_writes_a_complete_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = write_tiny_study(tmp_path / "in")
    out = tmp_path / "report"
    document = run_json(capsys, str(study), "--out", str(out), "--target", "0.5")
    assert document["report"] == str(out) and document["target"] == 0.5
    recommendations = document["recommendations"]
    assert {(r["network"], r["policy"]) for r in recommendations} == {
        (n, p) for n in ("lan", "gc-host") for p in ("sdk", "leasekit")
    }
    for r in recommendations:
        assert set(r) >= {"network", "policy", "ttl_seconds", "false_losses_per_lease_hour",
                          "takeover_seconds", "requests_per_lease_second"}  # fmt: skip
        if r["ttl_seconds"] is not None:
            assert r["ttl_seconds"] in (10, 30)
            assert r["false_losses_per_lease_hour"]["ci95"][1] < 0.5
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 * 2 * 2  # network x policy x TTL
    for name in ("false_losses_per_lease_hour", "takeover_seconds_mean"):
        assert {name, f"{name}_low", f"{name}_high", f"{name}_engine"} <= set(results.columns)
    # the rare rates come from the fast engine, takeover time from SimPy
    assert set(results["false_losses_per_lease_hour_engine"]) == {"fast"}
    assert set(results["takeover_seconds_mean_engine"]) == {"simpy"}
    page = (out / "index.html").read_text()
    assert page.index("Recommendation") < page.index("Figures")
    for png in ("false_losses_vs_ttl.png", "frontier.png", "heatmap.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in page
    assert "results.csv" in page and "fast" in page
    # the scenario files used read back as the scenarios that ran
    for network, preset in (("lan", "lan"), ("gc-host", "gc-host")):
        written = load_scenario(out / "scenarios" / f"{network}.toml")
        assert written.name == preset and written.workers.count == 6
    assert (out / "study.toml").read_text() == study.read_text()


def test_text_output_prints_the_recommendation_and_the_winner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = write_tiny_study(tmp_path, engines='["simpy"]')
    assert main(["study", str(study), "--out", str(tmp_path / "r"), "--target", "100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Recommendation: the smallest TTL")
    assert "lan: " in out and "wins" in out and "report: " in out


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_processes_and_a_dask_scheduler_print_the_same_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dask_address: str
) -> None:
    study = write_tiny_study(tmp_path, engines='["simpy"]')
    serial = run_json(capsys, str(study), "--out", str(tmp_path / "a"), "--target", "3")
    pooled = run_json(capsys, str(study), "--out", str(tmp_path / "b"), "--target", "3",
                      "--processes", "2")  # fmt: skip
    on_dask = run_json(capsys, str(study), "--out", str(tmp_path / "c"), "--target", "3",
                       "--scheduler", dask_address)  # fmt: skip
    assert serial["recommendations"] == pooled["recommendations"] == on_dask["recommendations"]
    first = pd.read_csv(tmp_path / "a" / "results.csv")
    pd.testing.assert_frame_equal(first, pd.read_csv(tmp_path / "b" / "results.csv"))
    pd.testing.assert_frame_equal(first, pd.read_csv(tmp_path / "c" / "results.csv"))


def test_from_trace_studies_the_network_fitted_to_a_trace_the_client_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(
        keys={"env_1": "key_1"},
        config=LeaseConfig(default_ttl_seconds=3, min_ttl_seconds=1),
        faults=FaultConfig(drop_request=0.3, seed=3),
        seed_work={"env_1": 1},
    )
    trace = tmp_path / "kept.jsonl"
    with running_server(app) as url:
        hold_lease_sync(
            url, "key_1", "env_1", duration_s=3.0, policy="fixed:interval=0.3", trace_path=trace
        )
    study = write_tiny_study(tmp_path, engines='["simpy"]')
    out = tmp_path / "report"
    document = run_json(capsys, str(study), "--from-trace", str(trace), "--out", str(out))
    assert {r["network"] for r in document["recommendations"]} == {"trace kept.jsonl"}
    page = (out / "index.html").read_text()
    assert "The recorded trace" in page and "kept.jsonl" in page
    section = page[page.index("The recorded trace") :]
    # replay's what-if of the trace as recorded: a row per TTL of the grid
    assert "false_losses_per_lease_hour" in section and "<td>30</td>" in section
    results = pd.read_csv(out / "results.csv")
    assert set(results["network"]) == {"trace kept.jsonl"} and len(results) == 4
    fitted = load_scenario(out / "scenarios" / "trace-kept-jsonl.toml")
    # 30% of requests dropped: the fitted network loses requests
    request = fitted.network.request
    assert request.loss > 0 or (request.burst is not None and request.burst.p_enter > 0)


def test_a_bad_study_file_exits_2_naming_the_file_and_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = write_tiny_study(tmp_path, engines='["simpy"]')
    study.write_text(study.read_text().replace("replications = 2", "replications = 0"))
    assert main(["study", str(study), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(study) in err and "'replications'" in err
    assert not (tmp_path / "r").exists()
    assert main(["study", str(tmp_path / "nowhere.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
