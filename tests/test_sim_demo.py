"""``leasekit demo``: the default study, end to end (here on a tiny study)."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_support import write_tiny_study

from leasekit._cli import study as study_command
from leasekit.cli import main


def test_demo_runs_the_default_study_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real default study takes a minute or two: `make demo` runs that one
    tiny = write_tiny_study(tmp_path / "in", engines='["simpy"]')
    monkeypatch.setattr(study_command, "DEFAULT_STUDY", tiny)
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--processes", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"leasekit study {tiny}" in printed
    assert "Recommendation: the smallest TTL" in printed
    assert (out / "index.html").is_file() and (out / "results.csv").is_file()


def test_the_default_study_ships_where_demo_looks_for_it() -> None:
    assert study_command.DEFAULT_STUDY.is_file()
    assert study_command.DEFAULT_STUDY.name == "study.toml"


def test_walkthrough_prints_the_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--walkthrough"]) == 0
    assert "step by step" in capsys.readouterr().out
