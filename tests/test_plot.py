"""``leasekit.plot``: figures drawn from real (small) sweeps, with units on every axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from study_support import small

from leasekit import plot
from leasekit.study import sweep

TARGET = 1e-2


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    networks = {"lossy": small("lossy-bursts"), "gc": small("gc-host")}
    return sweep(
        networks,
        {"policy": ["sdk", "leasekit"], "ttl_seconds": [10, 20, 40]},
        replications=2,
        seed=3,
    )


def _png(figure: object, path: Path) -> bytes:
    figure.savefig(path)  # type: ignore[attr-defined]
    return path.read_bytes()[:8]


def test_false_loss_against_ttl_has_a_line_per_policy_a_panel_per_network_and_the_target(
    table: pd.DataFrame, tmp_path: Path
) -> None:
    figure = plot.false_loss_vs_ttl(table, target=TARGET)
    axes = [a for a in figure.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["lossy", "gc"]
    for axis in axes:
        assert axis.get_xlabel() == "TTL granted by the server (s)"
        assert axis.get_ylabel() == "false losses per lease-hour (1/h)"
        assert axis.get_yscale() == "log"
        labels = [line.get_label() for line in axis.get_lines()]
        assert {"sdk", "leasekit", "target"} <= set(labels)
        target = next(line for line in axis.get_lines() if line.get_label() == "target")
        assert set(target.get_ydata()) == {TARGET}  # type: ignore[arg-type]
        assert axis.collections  # the interval bands
        sdk = next(line for line in axis.get_lines() if line.get_label() == "sdk")
        assert list(sdk.get_xdata()) == [10, 20, 40]  # type: ignore[arg-type]
    assert _png(figure, tmp_path / "a.png") == b"\x89PNG\r\n\x1a\n"


def test_one_network_gives_one_panel_and_lines_by_network_when_asked(
    table: pd.DataFrame,
) -> None:
    one = plot.false_loss_vs_ttl(table[table["network"] == "gc"])
    assert len([a for a in one.axes if a.get_visible()]) == 1
    by_network = plot.false_loss_vs_ttl(
        table[table["policy"] == "sdk"], lines="network", panels="policy"
    )
    (axis,) = [a for a in by_network.axes if a.get_visible()]
    assert {"lossy", "gc"} <= {line.get_label() for line in axis.get_lines()}


def test_the_frontier_marks_the_pareto_choices_against_takeover_time_and_load(
    table: pd.DataFrame, tmp_path: Path
) -> None:
    figure = plot.frontier(table, target=TARGET)
    assert len(figure.axes) == 4  # two networks x two costs
    xlabels = {a.get_xlabel() for a in figure.axes}
    assert xlabels == {
        "mean takeover time (s)",
        "server load: requests per lease-second (1/s)",
    }
    for axis in figure.axes:
        assert "(1/h)" in axis.get_ylabel() and axis.get_yscale() == "log"
        front = next(line for line in axis.get_lines() if line.get_label() == "Pareto choices")
        assert len(front.get_xdata()) >= 1  # type: ignore[arg-type]
    assert _png(figure, tmp_path / "f.png") == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_the_points_nothing_beats() -> None:
    costs = np.array([[1.0, 5.0], [2.0, 2.0], [3.0, 3.0], [5.0, 1.0], [np.nan, 0.0]])
    assert plot.pareto_front(costs).tolist() == [True, True, False, True, False]


def test_the_heatmap_has_a_cell_per_pair_and_a_colour_bar_with_the_unit(
    table: pd.DataFrame, tmp_path: Path
) -> None:
    figure = plot.heatmap(table, "ttl_seconds", "network", target=TARGET)
    panels = [a for a in figure.axes if a.get_title().startswith(("sdk", "leasekit"))]
    assert len(panels) == 2
    for axis in panels:
        assert axis.get_xlabel() == "TTL granted by the server (s)"
        assert axis.get_ylabel() == "network"
        assert [t.get_text() for t in axis.get_xticklabels()] == ["10", "20", "40"]
        assert len(axis.texts) == 2 * 3  # a number in every cell
    colour_bar = next(a for a in figure.axes if a not in panels)
    assert "(1/h)" in colour_bar.get_ylabel() and "upper 95% bound" in colour_bar.get_ylabel()
    assert _png(figure, tmp_path / "h.png") == b"\x89PNG\r\n\x1a\n"


def test_axis_labels_carry_the_glossarys_units() -> None:
    assert plot.axis_label("takeover_seconds_mean") == "mean takeover time (s)"
    assert plot.axis_label("split_brain_seconds_per_lease_hour").endswith("(s/h)")
    assert plot.axis_label("network.request.loss") == "request loss probability (1)"


def test_a_heatmap_over_ttl_and_loss_from_a_sweep_of_both(tmp_path: Path) -> None:
    scenario = small("cross-region")
    table = sweep(
        scenario,
        {"ttl_seconds": [10, 30], "network.request.loss": [0.01, 0.05]},
        replications=1,
        seed=2,
        progress=False,
    )
    assert sorted(table["network.request.loss"].unique()) == [0.01, 0.05]
    figure = plot.heatmap(table, "ttl_seconds", "network.request.loss", panels=None)
    (axis,) = [a for a in figure.axes if a.get_ylabel() == "request loss probability (1)"]
    assert axis.get_xlabel() == "TTL granted by the server (s)"
    assert [t.get_text() for t in axis.get_yticklabels()] == ["0.01", "0.05"]
    assert len(axis.texts) == 4
    assert _png(figure, tmp_path / "h.png") == b"\x89PNG\r\n\x1a\n"
