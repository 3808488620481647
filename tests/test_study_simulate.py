"""``leasekit simulate --engine simpy|fast|analytic``: one JSON shape, wherever the runs go."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasekit.cli import build_parser, main
from leasekit.metrics import METRICS, summarize
from leasekit.sim import Scenario, with_overrides
from leasekit.study import simpy_runs

ROOT = Path(__file__).resolve().parent.parent


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    assert main(["simulate", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object
    document: dict = json.loads(out)  # type: ignore[type-arg]
    return document


def test_simpy_pools_the_runs_counts_with_the_glossarys_intervals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ("--workers", "5", "--hours", "0.3", "--loss", "0.05", "--replications", "3",
            "--seed", "8")  # fmt: skip
    document = run_json(capsys, *args)
    scenario = with_overrides(Scenario(), workers=5, hours=0.3, loss=0.05)
    pooled = summarize(run.totals for run in simpy_runs(scenario, 3, seed=8))
    for name, e in pooled.items():
        assert document["metrics"][name] == json.loads(json.dumps(e.to_dict()))
    losses = document["metrics"]["false_losses_per_lease_hour"]
    assert METRICS["false_losses_per_lease_hour"].interval == "poisson"
    assert 0 <= losses["ci95"][0] <= losses["value"] < losses["ci95"][1]


def test_the_fast_engine_prints_the_same_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    common = ("--policy", "sdk", "--ttl", "30", "--latency", "const:0.01", "--loss", "0.01",
              "--seed", "3")  # fmt: skip
    simpy = run_json(capsys, *common, "--workers", "4", "--hours", "0.2", "--replications", "1")
    fast = run_json(capsys, *common, "--engine", "fast", "--rel-halfwidth", "0.3")
    assert fast["engine"] == "fast"
    shared = {"scenario", "engine", "metrics", "heartbeats_sent", "wall_seconds", "diagnostics"}
    assert shared <= set(fast) and shared <= set(simpy)
    assert fast["scenario"]["network"] == simpy["scenario"]["network"]
    losses = fast["metrics"]["false_losses_per_lease_hour"]
    assert set(losses) == {"value", "ci95"}
    assert 0 < losses["ci95"][0] <= losses["value"] <= losses["ci95"][1]
    # SimPy's 1% loss makes the official worker lose leases: so must the fast engine
    assert set(fast["metrics"]) <= set(simpy["metrics"])


def test_an_engine_that_cannot_model_the_scenario_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = ROOT / "simulations" / "partition.toml"
    assert main(["simulate", str(scenario), "--engine", "fast"]) == 2
    err = capsys.readouterr().err
    assert "--engine fast" in err and "field 'workers.items_per_worker'" in err


def test_the_analytic_engine_gives_the_closed_form_exactly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = run_json(
        capsys, "--engine", "analytic", "--policy", "fixed:interval=0.4", "--ttl", "1",
        "--latency", "const:0", "--loss", "0.1",
    )  # fmt: skip
    p, interval = 0.1, 0.4
    expected = 3600 * (1 - p) * p**2 / interval
    expiries = document["metrics"]["server_expiries_per_lease_hour"]
    assert expiries["value"] == pytest.approx(expected, rel=1e-9)
    assert expiries["ci95"] == [expiries["value"], expiries["value"]]


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_processes_and_a_dask_scheduler_print_the_same_numbers(
    capsys: pytest.CaptureFixture[str], dask_address: str
) -> None:
    args = ("--workers", "4", "--hours", "0.2", "--loss", "0.05", "--replications", "3")
    serial = run_json(capsys, *args)
    pooled = run_json(capsys, *args, "--processes", "2")
    on_dask = run_json(capsys, *args, "--scheduler", dask_address)
    assert serial["metrics"] == pooled["metrics"] == on_dask["metrics"]
    assert serial["seeds"] == pooled["seeds"] == on_dask["seeds"]


def test_help_shows_a_plain_percent_sign() -> None:
    parser = build_parser()
    simulate = parser._subparsers._group_actions[0].choices["simulate"]  # type: ignore[union-attr]
    text = simulate.format_help()
    assert "95% interval" in text and "%%" not in text


def _stderr_on_a_terminal(*args: str) -> str:
    leader, follower = pty.openpty()
    # a terminal of 100 columns: a fresh pty has none, and a bar would shrink to nothing
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    command = [sys.executable, "-m", "leasekit.cli", "simulate", *args]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=120) == 0
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_a_long_run_shows_progress_on_a_terminal_unless_quiet() -> None:
    # long enough to outlast the bar's one-second delay on any machine
    args = ("--workers", "40", "--hours", "2", "--replications", "1", "--policy",
            "fixed:interval=1")  # fmt: skip
    shown = _stderr_on_a_terminal(*args)
    assert "%|" in shown and "simulating" in shown
    assert "%|" not in _stderr_on_a_terminal(*args, "--quiet")


def test_no_progress_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--workers", "4", "--hours", "0.2", "--replications", "2"]) == 0
    assert capsys.readouterr().err == ""
