"""``leasekit replay``: the --json shape, files written by --out, and exit code 2 on bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leasekit.cli import main
from leasekit.policy import Outcome, Result, Send
from leasekit.protocol import HeartbeatAnswer, WorkState
from leasekit.replay import WHAT_IF_COLUMNS
from leasekit.trace import TraceHeader, TraceWriter

DATA = Path(__file__).parent / "data"


def _trace(path: Path) -> Path:
    """One lease renewed at 0, 20, 50, 90, 150.5 s (gaps 20, 30, 40, 60.5), answers in 0.1 s."""
    with TraceWriter(path, TraceHeader("sdk", source="test"), origin=0.0) as writer:
        ids = {"environment_id": "env_1", "work_id": "work_1", "worker": "w1"}
        last = "NO_HEARTBEAT"
        for n, t in enumerate((0.0, 20.0, 50.0, 90.0, 150.5), start=1):
            answer = HeartbeatAnswer(f"opaque-{n}", True, WorkState.ACTIVE, 90)
            writer.attempt(
                **ids,
                send=Send(t, 30, last, None, n),
                result=Result(Outcome.OK, t, t + 0.1, answer=answer, status=200),
            )
            last = answer.last_heartbeat
    return path


def test_json_prints_one_object_with_a_row_per_ttl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _trace(tmp_path / "t.jsonl")
    assert main(["replay", str(path), "--ttl", "30,45,90", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert set(body) == {"trace", "network", "rows"}
    assert body["trace"] == {
        "path": str(path),
        "format": "jsonl",
        "attempts": 5,
        "leases": 1,
        "lease_hours": pytest.approx(150.6 / 3600),
    }
    rows = body["rows"]
    assert [row["ttl_seconds"] for row in rows] == [30, 45, 90]
    assert all(row["policy"] == "trace" for row in rows)
    assert all(set(row) == {"policy", *WHAT_IF_COLUMNS} for row in rows)
    assert [row["expiring_gaps"] for row in rows] == [2, 1, 0]
    # one lease: at most one false loss, held until the 412 at 90.1 s
    assert [row["false_losses"] for row in rows] == [1, 1, 0]
    assert rows[0]["false_losses_per_lease_hour"] == pytest.approx(1 / (90.1 / 3600))
    assert body["network"]["answered"] == 5 and body["network"]["loss_rate"] == 0.0


def test_json_with_policies_adds_a_row_per_policy_and_ttl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _trace(tmp_path / "t.jsonl")
    argv = ["replay", str(path), "--ttl", "30,90", "--json", "--replications", "2", "--hours", "1"]
    assert main([*argv, "--policy", "sdk", "--policy", "fixed:interval=10"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(row["policy"], row["ttl_seconds"]) for row in rows] == [
        ("trace", 30),
        ("trace", 90),
        ("sdk", 30),
        ("sdk", 90),
        ("fixed:interval=10", 30),
        ("fixed:interval=10", 90),
    ]
    simulated = rows[2]
    assert simulated["replications"] == 2
    for name in ("false_losses_per_lease_hour", "server_expiries_per_lease_hour"):
        assert isinstance(simulated[name], float)
        assert simulated[f"{name}_ci95_low"] <= simulated[name] <= simulated[f"{name}_ci95_high"]
    # a clean network: the official worker keeps its lease
    assert rows[3]["false_losses_per_lease_hour"] == 0


def test_text_output_and_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(DATA / "sdk_heartbeats.otlp.jsonl"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(otlp): 8 attempts" in text and "what-if TTL" in text
    assert sorted(p.name for p in out.iterdir()) == ["attempts.csv", "network.json", "what_if.csv"]
    assert json.loads((out / "network.json").read_text())["attempts"] == 8


def test_named_format_overrides_detection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.txt"
    path.write_text("sent_s,received_s,status\n0,0.1,200\n40,40.1,200\n")
    assert main(["replay", str(path), "--format", "csv", "--ttl", "30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["expiring_gaps"] == 1


def test_a_bad_file_exits_2_naming_path_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _trace(tmp_path / "t.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"sent_s":20.0', '"sent_s":"twenty"')
    path.write_text("\n".join(lines) + "\n")
    assert main(["replay", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}:3: field 'sent_s': expected a number" in captured.err


def test_the_installed_command_exits_2_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "spans.otlp.jsonl"
    path.write_text('{"resourceSpans": [}\n')
    done = subprocess.run(
        [sys.executable, "-m", "leasekit.cli", "replay", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{path}:1: not valid JSON" in done.stderr


@pytest.mark.parametrize("ttl", ["0", "30,abc", "1.5", "86401"])
def test_bad_ttls_are_usage_errors(tmp_path: Path, ttl: str) -> None:
    path = _trace(tmp_path / "t.jsonl")
    with pytest.raises(SystemExit) as caught:
        main(["replay", str(path), "--ttl", ttl])
    assert caught.value.code == 2


def test_a_bad_policy_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _trace(tmp_path / "t.jsonl")
    with pytest.raises(SystemExit) as caught:
        main(["replay", str(path), "--policy", "magic"])
    assert caught.value.code == 2
    assert "unknown policy 'magic'" in capsys.readouterr().err


def test_a_trace_too_short_to_simulate_exits_2_and_prints_no_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("sent_s,received_s,status\n0,0.1,200\n10,10.1,200\n")
    assert main(["replay", str(path), "--ttl", "30", "--policy", "sdk", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "too short to simulate TTL 30 s" in captured.err and "hours" in captured.err


def test_help_shows_percent_signs_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = capsys.readouterr().out
    assert "95%" in text and "%%" not in text
    assert "--hours" in text


@pytest.mark.parametrize("command", [["replay", "{trace}", "--json"], ["diagram"]])
def test_a_closed_stdout_ends_the_command_quietly(tmp_path: Path, command: list[str]) -> None:
    trace = _trace(tmp_path / "t.jsonl")
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before the command writes a byte (`| head`)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "leasekit.cli", *(a.format(trace=trace) for a in command)],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(writer)
    assert "BrokenPipeError" not in done.stderr and "Traceback" not in done.stderr
    assert done.stderr == ""
    assert done.returncode == 141


def test_a_trace_without_a_held_lease_exits_2_and_prints_no_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("sent_s,received_s,status\n0,0.1,503\n10,10.1,503\n")
    assert main(["replay", str(path), "--ttl", "30"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}: no lease to replay" in captured.err


def test_text_output_of_a_lossless_trace_says_no_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _trace(tmp_path / "t.jsonl")
    assert main(["replay", str(path), "--ttl", "30"]) == 0
    text = capsys.readouterr().out
    assert "no loss" in text and "inf" not in text and "nan" not in text
