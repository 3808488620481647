"""Every notebook in notebooks/ runs top to bottom in a fresh kernel."""

from __future__ import annotations

import functools
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@functools.cache
def _run(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path) -> None:
    out = _run(path)
    assert out.strip(), f"{path.name} produced no output"


def test_protocol_notebook_shows_sdk_losing_and_leasekit_adopting() -> None:
    out = _run(next(p for p in NOTEBOOKS if p.name.startswith("01-")))
    assert "stop: lost" in out  # the SDK worker gives the lease up on the self-inflicted 412
    lines = [line for line in out.splitlines() if line.strip().startswith("5 ")]
    assert lines and "leasekit" in lines[-1] and "next beat" in lines[-1]


def test_ttl_notebook_sweeps_both_policies_and_builds_the_explorer() -> None:
    out = _run(next(p for p in NOTEBOOKS if p.name.startswith("02-")))
    assert "lowest false-loss TTL per policy" in out
    assert "'sdk'" in out and "'leasekit'" in out
    assert "interactive(" in out  # the ipywidgets explorer was built
