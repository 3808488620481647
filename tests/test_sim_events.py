"""The event log when asked for: in memory, to a CSV file as the run goes,
or to a callable; and the same rows whichever way."""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from leasekit.sim import (
    EVENT_COLUMNS,
    Direction,
    Engine,
    Network,
    Scenario,
    Server,
    Workers,
    simulate,
)


def lossy() -> Scenario:
    return Scenario(
        name="lossy",
        duration_s=900.0,
        warmup_s=60.0,
        seed=3,
        workers=Workers(count=6, policy="sdk", items_per_worker=0.7),
        server=Server(default_ttl_seconds=10, min_ttl_seconds=10, max_ttl_seconds=10),
        network=Network(request=Direction(delay="exp:0.05", loss=0.05)),
    )


def same(a: Any, b: Any) -> bool:
    return (isinstance(a, float) and math.isnan(a) and isinstance(b, float) and math.isnan(b)) or (
        a == b
    )


def test_a_callable_gets_the_rows_that_events_true_keeps() -> None:
    kept = simulate(lossy(), events=True)
    seen: list[tuple[Any, ...]] = []
    streamed = simulate(lossy(), events=seen.append)
    assert len(kept.rows) > 100
    assert len(seen) == len(kept.rows)
    assert all(all(map(same, a, b)) for a, b in zip(seen, kept.rows, strict=True))
    assert streamed.metrics == kept.metrics
    with pytest.raises(ValueError, match="events=True"):
        _ = streamed.rows


def test_a_path_gets_the_log_as_a_csv_and_the_run_keeps_none(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    kept = simulate(lossy(), events=True)
    written = simulate(lossy(), events=path)
    assert written.events_file == path
    with pytest.raises(ValueError, match=r"events\.csv"):
        _ = written.rows
    frame = pd.read_csv(path)
    assert list(frame.columns) == list(EVENT_COLUMNS)
    expected = pd.DataFrame.from_records(kept.rows, columns=list(EVENT_COLUMNS))
    assert len(frame) == len(expected)
    # the same rows in the same (recorded) order; nan and "" are empty fields
    for column in ("event", "work_id", "detail"):
        assert list(frame[column].fillna("")) == list(expected[column])
    for column in ("time_s", "worker", "sent_s", "seen_s", "status"):
        pd.testing.assert_series_equal(frame[column], expected[column], check_dtype=False)
    assert written.metrics == kept.metrics


def test_the_csv_is_written_as_the_run_goes(tmp_path: Path) -> None:
    """Half way through the run, rows are already on disk (not held until the end)."""
    path = tmp_path / "events.csv"
    lines_at_half: list[int] = []

    def look_half_way(engine: Engine) -> None:
        def process() -> Generator[Any, Any, None]:
            yield engine.env.timeout(engine.scenario.duration_s / 2)
            lines_at_half.append(len(path.read_text().splitlines()))

        engine.env.process(process())

    scenario = Scenario(
        name="busy",
        duration_s=1200.0,
        workers=Workers(count=50, policy="fixed:interval=1"),
        server=Server(default_ttl_seconds=5, min_ttl_seconds=5, max_ttl_seconds=5),
    )
    simulate(scenario, events=path, setup=look_half_way)
    total = len(path.read_text().splitlines())
    assert lines_at_half and 1 < lines_at_half[0] < total
    # at least a third of the log was on disk half way (buffered writes lag a little)
    assert lines_at_half[0] > total / 3


def test_a_failing_run_still_closes_its_csv(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"

    def boom(engine: Engine) -> None:
        def process() -> Generator[Any, Any, None]:
            yield engine.env.timeout(100)
            raise RuntimeError("extension failed")

        engine.env.process(process())

    with pytest.raises(RuntimeError, match="extension failed"):
        simulate(lossy(), events=path, setup=boom)
    frame = pd.read_csv(path)  # complete rows up to the failure, readable
    assert len(frame) > 0 and frame.time_s.min() >= 0
