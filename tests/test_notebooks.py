"""Every notebook in notebooks/ runs top to bottom in a fresh kernel, on small
parameters, and shows what it is there to show.

The notebooks read ``LEASEKIT_NOTEBOOK_SMOKE=1`` (set here for the kernel) in
their parameters cell and shrink their runs; each cell has a timeout; any
error in any cell fails the test. The notebooks start their own reference
servers on free loopback ports and stop them in their last cell.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 240


@functools.cache
def _run(name: str) -> list[dict[str, Any]]:
    """Execute notebook ``name``; return every cell's outputs as (text, images) dicts."""
    path = NOTEBOOKS_DIR / name
    notebook = nbformat.read(path, as_version=4)
    saved = os.environ.get("LEASEKIT_NOTEBOOK_SMOKE")
    os.environ["LEASEKIT_NOTEBOOK_SMOKE"] = "1"  # the kernel inherits it
    try:
        nbclient.NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    finally:
        if saved is None:
            del os.environ["LEASEKIT_NOTEBOOK_SMOKE"]
        else:
            os.environ["LEASEKIT_NOTEBOOK_SMOKE"] = saved
    cells = []
    for cell in notebook.cells:
        texts, images = [], 0
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            data = output.get("data", {})
            texts.append(data.get("text/plain", ""))
            images += "image/png" in data
        cells.append({"source": cell.source, "text": "\n".join(texts), "images": images})
    return cells


def _text(name: str) -> str:
    return "\n".join(cell["text"] for cell in _run(name))


def _images(name: str) -> int:
    return sum(cell["images"] for cell in _run(name))


def test_the_three_notebooks_are_there() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01-optimistic-concurrency.ipynb",
        "02-ttl-tuning.ipynb",
        "03-trace-replay.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {index}"
    tagged = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "one cell tagged 'parameters' holds the knobs"


def test_protocol_notebook_walks_the_protocol_on_a_real_server() -> None:
    name = "01-optimistic-concurrency.ipynb"
    out = _text(name)
    assert re.search(r"reference server at http://127\.0\.0\.1:\d+", out)
    assert "A: 412" in out and "B: 412" in out  # a stale echo, a refused claim, a late echo
    assert out.count("right!") == 3  # every exercise's check ran and agreed
    # one adoption at least (a slow machine may time out a healthy attempt too)
    assert re.search(r"adoptions: [1-9]\d* \| still held after the 412: True", out)
    assert "A's lease ended: shutdown" in out and "B's lease ended: shutdown" in out
    assert "stop: lost" in out  # the SDK policy gives the self-inflicted 412 up
    # the fleet simulation: without the echo two workers hold one item for long stretches
    echo = re.search(r"conditional \(echo\)\s+([\d.e+-]+)", out)
    blind = re.search(r"\d\s+unconditional\s+([\d.e+-]+)", out)
    assert echo and blind and float(blind.group(1)) > 10 * float(echo.group(1))
    assert out.rstrip().endswith("server stopped")
    # a timeline after each of the steps, the whole story, the lifecycle, the unconditional runs
    assert _images(name) >= 9


def test_ttl_notebook_recommends_a_ttl_and_builds_the_explorer() -> None:
    name = "02-ttl-tuning.ipynb"
    out = _text(name)
    ttls = re.findall(r"recommended TTL for [\w -]+, (?:sdk|leasekit): (\d+) s", out)
    assert ttls and all(int(t) > 0 for t in ttls)
    assert "VBox(" in out  # the ipywidgets explorer was built and shown
    assert _images(name) >= 5  # sweep, costs, rare-event sweep, frontier, the lost request


def test_replay_notebook_records_replays_and_reads_the_sdk_export() -> None:
    name = "03-trace-replay.ipynb"
    out = _text(name)
    assert re.search(r"sdk: \d+ lease\(s\)", out) and re.search(r"leasekit: \d+ lease\(s\)", out)
    assert "sdk-worker-1" in out and "sdk-worker-3" in out  # the OpenTelemetry sample
    assert "false_losses_per_lease_hour" in out
    assert out.rstrip().endswith("server stopped")
    assert _images(name) >= 4  # recorded timeline, zoom, what-if, the SDK's timeline


def test_the_sdk_sample_holds_the_story_notebook_03_tells() -> None:
    """notebooks/data: three official workers, one fault each on their third heartbeat."""
    from leasekit.replay import load_any_trace, what_if_ttl

    attempts = load_any_trace(NOTEBOOKS_DIR / "data" / "sdk_heartbeats.otlp.jsonl")
    outcomes = {
        worker: list(rows.sort_values("sent_s")["outcome"].astype(str))
        for worker, rows in attempts.groupby("worker", observed=True)
    }
    assert sorted(outcomes) == ["sdk-worker-1", "sdk-worker-2", "sdk-worker-3"]
    for lost in ("sdk-worker-1", "sdk-worker-2"):  # a lost answer, a lost request: then a 412
        assert outcomes[lost] == ["ok", "ok", "timeout", "precondition_failed"]
    assert set(outcomes["sdk-worker-3"]) == {"ok"}  # the 500 was retried inside the attempt
    rates = what_if_ttl(attempts, [90, 150]).set_index("ttl_seconds")
    rate = "false_losses_per_lease_hour"
    assert rates.loc[90, rate] > 0 and rates.loc[150, rate] == 0  # a longer TTL would have held
