"""``leasekit demo``: the TTL study, shrunk to run in seconds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from leasekit.cli import main


def test_demo_prints_the_study_and_writes_a_reproducible_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--hours", "0.3", "--workers", "8", "--replications", "2", "--processes", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "| policy | TTL s |" in out and "| leasekit | 120 |" in out
    report = (tmp_path / "a" / "report.md").read_text()
    assert "leasekit demo --hours 0.3 --workers 8 --replications 2 --seed 2026" in report
    assert (tmp_path / "a" / "ttl_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = pd.read_csv(tmp_path / "a" / "ttl_study.csv")
    assert len(first) == 12 and set(first.policy) == {"sdk", "leasekit"}
    assert (first.split_brain_seconds_per_lease_hour[first.policy == "leasekit"] == 0).all()
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    second = pd.read_csv(tmp_path / "b" / "ttl_study.csv")
    pd.testing.assert_frame_equal(first, second)  # same seed, same numbers
