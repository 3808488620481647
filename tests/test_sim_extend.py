"""The extension shown in docs/simulator.md runs as written and does what it says."""

from __future__ import annotations

import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import simpy

from leasekit.sim import RunResult

DOCS = Path(__file__).resolve().parent.parent / "docs" / "simulator.md"


def run_the_docs_example() -> dict[str, Any]:
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    example = next(block for block in blocks if "def chaos_monkey" in block)
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(example, str(DOCS), "exec"), namespace)
    return namespace


def test_the_chaos_monkey_of_the_docs_crashes_the_holder_every_ten_minutes() -> None:
    namespace = run_the_docs_example()
    result: RunResult = namespace["result"]
    events = result.events
    crashes = events[events.event == "crash"]
    # one crash at each of 600, 1200, ..., 3000 s, of whoever held work_00000
    assert crashes.time_s.round(6).tolist() == [600.0, 1200.0, 1800.0, 2400.0, 3000.0]
    assert (crashes.work_id == "work_00000").all()
    assert crashes.worker.nunique() >= 2  # the item moved to another worker in between
    assert result.metrics["takeovers"] == 5
    assert result.metrics["false_losses_per_lease_hour"] == 0


def test_a_pause_added_during_the_run_holds_the_worker_back() -> None:
    from leasekit.sim import Engine, Scenario, Server, Workers, simulate

    def pause_worker_zero_at_100_s(engine: Engine) -> None:
        def pauser() -> Generator[simpy.Event, None, None]:
            yield engine.env.timeout(100)
            engine.pause(0, 50)

        engine.env.process(pauser())

    scenario = Scenario(
        name="pause",
        duration_s=400,
        workers=Workers(count=1, policy="fixed:interval=10", start_spread_s=0),
        server=Server(default_ttl_seconds=30, min_ttl_seconds=30, max_ttl_seconds=30),
    )
    events = simulate(scenario, setup=pause_worker_zero_at_100_s, events=True).events
    beats = events[events.event == "heartbeat"]
    assert not ((beats.sent_s > 100) & (beats.sent_s < 150)).any()
    assert ((beats.sent_s - 150).abs() < 1e-3).any()  # the due beat leaves when it ends
    assert (events.event == "pause").sum() == 1
    assert (events.event == "expire").sum() == 1  # 50 s of silence > TTL 30 s
