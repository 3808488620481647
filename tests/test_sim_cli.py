"""``leasekit simulate`` and scenario files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from leasekit.cli import main
from leasekit.sim import EVENT_COLUMNS, ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parent.parent

REQUIRED = (
    "false_losses_per_lease_hour",
    "server_expiries_per_lease_hour",
    "precondition_failures_per_lease_hour",
    "split_brain_seconds_per_lease_hour",
    "takeover_seconds_mean",
    "requests_per_lease_second",
)


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    assert main(["simulate", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object
    document: dict = json.loads(out)  # type: ignore[type-arg]
    return document


def test_json_has_the_documented_shape_and_applies_the_overrides(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = run_json(
        capsys,
        "--workers", "6", "--hours", "0.25", "--policy", "fixed:interval=5", "--ttl", "12",
        "--latency", "uniform:0.01,0.05", "--loss", "0.05", "--answer-loss", "0.02",
        "--replications", "3", "--seed", "77",
    )  # fmt: skip
    assert set(document) >= {"scenario", "metrics", "heartbeats_sent", "wall_seconds"}
    assert document["engine"] == "simpy" and document["replications"] == 3
    for name in REQUIRED:
        entry = document["metrics"][name]
        assert set(entry) == {"value", "ci95"} and len(entry["ci95"]) == 2
    scenario = document["scenario"]
    assert scenario["workers"]["count"] == 6
    assert scenario["workers"]["policy"] == "fixed:interval=5"
    assert scenario["duration_s"] == 900
    assert scenario["server"]["default_ttl_seconds"] == 12
    assert scenario["server"]["max_ttl_seconds"] == 12
    assert scenario["network"]["request"] == {
        "delay": "uniform:0.01,0.05",
        "loss": 0.05,
        "burst": None,
    }
    assert scenario["network"]["answer"]["loss"] == 0.02
    assert document["seeds"][0] == 77 and len(set(document["seeds"])) == 3
    # 3 runs of 6 workers beating every 5 s for 15 minutes: at most 3240
    assert 3000 < document["heartbeats_sent"] <= 3240
    losses = document["metrics"]["false_losses_per_lease_hour"]
    assert losses["ci95"][0] <= losses["value"] <= losses["ci95"][1]
    assert losses["value"] > 0  # 2% answer loss makes FixedPolicy meet 412s


def test_same_seed_same_json_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--workers", "4", "--hours", "0.2", "--loss", "0.1", "--replications", "2")
    first = run_json(capsys, *args)
    second = run_json(capsys, *args)
    assert first["metrics"] == second["metrics"]


def test_out_writes_the_event_log_and_the_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = ROOT / "simulations" / "partition.toml"
    out = tmp_path / "run"
    assert main(["simulate", str(scenario), "--hours", "0.3", "--replications", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "false_losses_per_lease_hour" in table and "95% interval" in table
    events = pd.read_csv(out / "events.csv")
    assert list(events.columns) == list(EVENT_COLUMNS)
    assert {"heartbeat", "poll", "ack", "claim", "lease_start"} <= set(events.event)
    assert len(pd.read_csv(out / "runs.csv")) == 2
    assert "metrics" in json.loads((out / "metrics.json").read_text())


SCENARIOS = sorted(p for p in (ROOT / "simulations").glob("*.toml") if p.name != "study.toml")


@pytest.mark.parametrize("path", SCENARIOS)
def test_shipped_scenarios_load(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem


def test_a_bad_scenario_file_names_the_file_and_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[workers]\ncount = 3\npolicy = "sdk"\n[network.request]\nloss = 1.5\n')
    assert main(["simulate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "network.request.loss" in err and "1.5" in err
    bad.write_text("[workers]\ncont = 3\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(bad)
    assert caught.value.path == str(bad) and caught.value.field == "workers.cont"
    bad.write_text('[[network.partitions]]\nstart_s = 10\nduration_s = "long"\n')
    with pytest.raises(ScenarioError, match=r"network\.partitions\[0\]\.duration_s"):
        load_scenario(bad)
    bad.write_text('[workers]\npolicy = "sdk:http_retries=x"\n')
    with pytest.raises(ScenarioError, match=r"workers\.policy"):
        load_scenario(bad)
    bad.write_text("duration_s = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    assert main(["simulate", "--latency", "gauss:1"]) == 2
    assert "network.request.delay" in capsys.readouterr().err
