"""Figures of studies: each function takes a table and returns a matplotlib Figure.

The tables are what :func:`leasekit.study.sweep` (or ``leasekit study``'s
``results.csv``) gives: a row per configuration, every metric ``NAME`` with
``NAME_low`` and ``NAME_high``. Axes carry the metric's unit from the
glossary (:data:`leasekit.metrics.METRICS`).

The figures are built without :mod:`matplotlib.pyplot`, so making one
changes no global state and needs no display: save it with
``figure.savefig(path)``, or let a notebook show it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import numpy as np

from .metrics import METRICS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["axis_label", "false_loss_vs_ttl", "frontier", "heatmap", "pareto_front"]

FALSE_LOSSES: Final = "false_losses_per_lease_hour"
_PANEL_SIZE: Final = (5.0, 3.8)

_LABELS: Final[dict[str, str]] = {
    "false_losses_per_lease_hour": "false losses per lease-hour",
    "server_expiries_per_lease_hour": "server expiries per lease-hour",
    "takeover_seconds_mean": "mean takeover time",
    "requests_per_lease_second": "server load: requests per lease-second",
    "split_brain_seconds_per_lease_hour": "split-brain seconds per lease-hour",
    "ttl_seconds": "TTL granted by the server",
    "network.request.loss": "request loss probability",
    "network.answer.loss": "answer loss probability",
    "loss": "request loss probability",
    "answer_loss": "answer loss probability",
    "pause_rate": "pauses per worker-hour",
    "workers.pauses.rate_per_hour": "pauses per worker-hour",
    "workers": "workers",
}
_UNITS: Final[dict[str, str]] = {
    "ttl_seconds": "s",
    "network.request.loss": "1",
    "network.answer.loss": "1",
    "loss": "1",
    "answer_loss": "1",
    "pause_rate": "1/h",
    "workers.pauses.rate_per_hour": "1/h",
    "workers": "1",
}


def axis_label(column: str) -> str:
    """``"what (unit)"`` for a metric of the glossary or a swept field."""
    unit = METRICS[column].unit if column in METRICS else _UNITS.get(column, "")
    text = _LABELS.get(column, column.replace("_", " "))
    return f"{text} ({unit})" if unit else text


def _figure(rows: int, columns: int, width: float | None = None) -> tuple[Figure, np.ndarray]:
    from matplotlib.figure import Figure

    width, height = (width or _PANEL_SIZE[0]), _PANEL_SIZE[1]
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def _groups(table: pd.DataFrame, column: str | None) -> list[tuple[str, pd.DataFrame]]:
    if column is None or column not in table.columns:
        return [("", table)]
    return [(str(key), rows) for key, rows in table.groupby(column, sort=False)]


def _default_lines(table: pd.DataFrame, panels: str | None) -> str | None:
    for column in ("policy", "network"):
        if column != panels and column in table.columns and table[column].nunique() > 1:
            return column
    return "policy" if "policy" in table.columns and panels != "policy" else None


def _default_panels(table: pd.DataFrame) -> str | None:
    if (
        "network" in table.columns
        and table["network"].nunique() > 1
        and "policy" in table.columns
        and table["policy"].nunique() > 1
    ):
        return "network"
    return None


def _floor(values: np.ndarray, target: float | None) -> float:
    """A bottom for a log axis: under the positive values and the target,
    but not so far under that rates of 1e-20 squash everything that matters
    (values under it are drawn on it, marked as clipped)."""
    positive = values[np.isfinite(values) & (values > 0)]
    if not positive.size:
        return target / 10 if target else 1e-6
    lowest = float(positive.min()) / 3
    if target:
        return min(max(lowest, target * 1e-6), target / 10)
    return max(lowest, float(positive.max()) * 1e-12)


def false_loss_vs_ttl(
    table: pd.DataFrame,
    *,
    metric: str = FALSE_LOSSES,
    target: float | None = None,
    lines: str | None = None,
    panels: str | None = None,
    x: str = "ttl_seconds",
) -> Figure:
    """``metric`` (default: false losses per lease-hour) against the TTL, one
    line per value of ``lines`` (default: ``policy``, else ``network``), one
    panel per value of ``panels`` (default: ``network`` when the table holds
    several networks and policies), with the 95% interval as a band, on a log
    scale, and the ``target`` rate as a dashed line.

    A zero estimate cannot sit on a log scale: it shows as its band alone,
    which goes down to the bottom of the axis. Rates far under the target
    sit on the bottom of the axis, marked with a downward triangle.
    """
    panels = _default_panels(table) if panels is None else panels
    lines = _default_lines(table, panels) if lines is None else lines
    groups = _groups(table, panels)
    columns = min(len(groups), 2)
    figure, axes = _figure(math.ceil(len(groups) / columns), columns)
    floor = _floor(table[[metric, f"{metric}_high"]].to_numpy(dtype=float).ravel(), target)
    for axis, (title, rows) in zip(axes.ravel(), groups, strict=False):
        for name, line in _groups(rows, lines):
            line = line.sort_values(x)
            xs = line[x].to_numpy(dtype=float)
            value = line[metric].to_numpy(dtype=float)
            low = np.maximum(line[f"{metric}_low"].to_numpy(dtype=float), floor)
            high = line[f"{metric}_high"].to_numpy(dtype=float)
            shown = np.where(value > 0, np.maximum(value, floor), np.nan)
            (drawn,) = axis.plot(xs, shown, marker="o", label=name or metric)
            clipped = (value > 0) & (value < floor)
            if clipped.any():
                axis.plot(xs[clipped], shown[clipped], "v", color=drawn.get_color(), markersize=9)
            high = np.maximum(high, floor)
            axis.fill_between(xs, low, high, alpha=0.2, color=drawn.get_color(), linewidth=0)
        if target is not None:
            axis.axhline(target, color="black", linestyle="--", linewidth=1, label="target")
        axis.set_yscale("log")
        axis.set_ylim(bottom=floor)
        axis.set_xlabel(axis_label(x))
        axis.set_ylabel(axis_label(metric))
        axis.set_title(title or "95% intervals as bands", fontsize="medium")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize="small")
    for axis in axes.ravel()[len(groups) :]:
        axis.set_visible(False)
    return figure


def pareto_front(costs: np.ndarray) -> np.ndarray:
    """A boolean mask of the rows of ``costs`` (lower is better in every
    column) that no other row beats in one column without losing in another.
    Rows with a NaN are never on the front."""
    costs = np.asarray(costs, dtype=float)
    finite = np.all(np.isfinite(costs), axis=1)
    front = finite.copy()
    for i in np.flatnonzero(finite):
        others = costs[finite]
        dominated = np.any(np.all(others <= costs[i], axis=1) & np.any(others < costs[i], axis=1))
        front[i] = not dominated
    mask: np.ndarray = front
    return mask


def frontier(
    table: pd.DataFrame,
    *,
    metric: str = FALSE_LOSSES,
    costs: Sequence[str] = ("takeover_seconds_mean", "requests_per_lease_second"),
    target: float | None = None,
    color: str | None = None,
    panels: str | None = None,
    label: str = "ttl_seconds",
) -> Figure:
    """The trade-off: ``metric`` (upper 95% bound, log scale) against each
    cost (default: mean takeover time and server load), one point per row
    coloured by ``color`` (default: ``policy``), one row of panels per value
    of ``panels`` (default: ``network`` when several). The Pareto choices
    (no other point is better in both the rate and the cost) are ringed and
    joined, and labelled with their ``label`` column (the TTL)."""
    panels = _default_panels(table) if panels is None else panels
    color = _default_lines(table, panels) if color is None else color
    groups = _groups(table, panels)
    figure, axes = _figure(len(groups), len(costs))
    bound = f"{metric}_high"
    floor = _floor(table[bound].to_numpy(dtype=float), target)
    for row_axes, (title, rows) in zip(axes, groups, strict=True):
        for axis, cost in zip(row_axes, costs, strict=True):
            for name, points in _groups(rows, color):
                axis.scatter(points[cost], points[bound].clip(lower=floor), label=name, s=24)
            axis.set_ylim(bottom=floor / 1.5)
            pairs = rows[[cost, bound]].to_numpy(dtype=float)
            front = pareto_front(pairs)
            chosen = rows[front].sort_values(cost)
            axis.plot(
                chosen[cost],
                chosen[bound].clip(lower=floor),
                color="black",
                linewidth=1,
                marker="o",
                markerfacecolor="none",
                markersize=10,
                label="Pareto choices",
            )
            if label in chosen.columns:
                for _, point in chosen.iterrows():
                    axis.annotate(
                        f"{point[label]}",
                        (point[cost], max(point[bound], floor)),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize="x-small",
                    )
            if target is not None:
                axis.axhline(target, color="black", linestyle="--", linewidth=1, label="target")
            axis.set_yscale("log")
            axis.set_xlabel(axis_label(cost))
            axis.set_ylabel(f"{axis_label(metric)}, upper 95% bound")
            axis.set_title(title or "trade-off", fontsize="medium")
            axis.grid(alpha=0.3, which="both")
            axis.legend(fontsize="x-small")
    return figure


def heatmap(
    table: pd.DataFrame,
    x: str = "ttl_seconds",
    y: str = "network",
    *,
    metric: str = FALSE_LOSSES,
    bound: str = "high",
    panels: str | None = "policy",
    target: float | None = None,
) -> Figure:
    """``metric`` over two parameters (``x`` and ``y``, e.g. TTL x loss) as
    coloured cells on a log colour scale, one panel per value of ``panels``.
    ``bound`` picks the value (``"value"``), or the ``"low"`` or ``"high"``
    end of its 95% interval (default: the upper bound, what a target needs).
    Each cell shows its number; with a ``target``, cells under it are marked ``*``.
    """
    from matplotlib.colors import LogNorm

    column = metric if bound == "value" else f"{metric}_{bound}"
    groups = _groups(table, panels if panels in table.columns else None)
    figure, axes = _figure(1, len(groups), width=6.0)
    values = table[column].to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    norm = None
    if positive.size:
        top = float(positive.max())
        bottom = max(float(positive.min()), target * 1e-6 if target else top * 1e-12)
        norm = LogNorm(vmin=min(bottom, top), vmax=top, clip=True)
    image = None
    for axis, (title, rows) in zip(axes[0], groups, strict=True):
        grid = rows.pivot_table(index=y, columns=x, values=column, aggfunc="first", sort=False)
        cells = grid.to_numpy(dtype=float)
        image = axis.imshow(
            np.where(cells > 0, cells, np.nan), norm=norm, cmap="viridis", aspect="auto"
        )
        axis.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns])
        axis.set_yticks(range(len(grid.index)), [str(i) for i in grid.index])
        for (i, j), cell in np.ndenumerate(cells):
            if math.isnan(cell):
                continue
            mark = "*" if target is not None and cell < target else ""
            dark = norm is None or float(norm(cell)) < 0.5
            axis.text(
                j,
                i,
                f"{cell:.1g}{mark}",
                ha="center",
                va="center",
                fontsize="x-small",
                color="white" if dark else "black",
            )
        axis.set_xlabel(axis_label(x))
        axis.set_ylabel(axis_label(y))
        note = f" (* under {target:g})" if target is not None else ""
        axis.set_title(f"{title or column}{note}", fontsize="medium")
    if image is not None:
        what = {"value": "", "low": "\nlower 95% bound", "high": "\nupper 95% bound"}[bound]
        figure.colorbar(image, ax=list(axes[0]), label=f"{axis_label(metric)}{what}")
    return figure
