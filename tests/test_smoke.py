"""The command line and the docs agree with the code."""

from pathlib import Path

from leasekit import state_diagram
from leasekit.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_state_diagram_in_docs_is_generated_from_the_table() -> None:
    text = (ROOT / "docs" / "state-diagram.md").read_text()
    assert state_diagram() in text


def test_demo_walkthrough_runs_and_shows_a_412(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--walkthrough", "--ttl", "30"]) == 0
    out = capsys.readouterr().out
    assert "-> 412" in out and "claims the lease" in out
