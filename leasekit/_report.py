"""The report of ``leasekit study``: ``index.html`` with figures and tables,
``results.csv``, and the scenario files the study ran."""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import INTERVALS, METRICS
from .study import Recommendation, StudyResult, _plain

if TYPE_CHECKING:
    import pandas as pd

    from .sim import Scenario

__all__ = ["TraceSection", "scenario_toml", "write_report"]

_SHOWN = (
    "false_losses_per_lease_hour",
    "server_expiries_per_lease_hour",
    "split_brain_seconds_per_lease_hour",
    "takeover_seconds_mean",
    "requests_per_lease_second",
)


@dataclass(frozen=True)
class TraceSection:
    """What a study from a recorded trace adds: the trace file, the fitted
    network (:meth:`leasekit.replay.NetworkFit.to_json`) and the what-if
    table of the trace as recorded (:func:`leasekit.replay.what_if_ttl`)."""

    path: str
    fit: dict[str, Any]
    what_if: pd.DataFrame


# --------------------------------------------------------------------------- TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _emit(table: Mapping[str, Any], prefix: str, lines: list[str]) -> None:
    nested = []
    for key, value in table.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        ):
            nested.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in nested:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            lines += ["", f"[{name}]"]
            _emit(value, f"{name}.", lines)
        else:
            for item in value:
                lines += ["", f"[[{name}]]"]
                _emit(item, f"{name}.", lines)


def scenario_toml(scenario: Scenario, comment: str = "") -> str:
    """``scenario`` as a scenario file that :func:`leasekit.sim.load_scenario` reads back."""
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    _emit(_plain(scenario.to_dict()), "", lines)
    return "\n".join(lines).lstrip("\n") + "\n"


# --------------------------------------------------------------------------- text


def number(value: Any) -> str:
    """A number for people: 3 significant digits, ``n/a`` when unknown."""
    if value is None:
        return "n/a"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:.3g}"


def recommendation_lines(result: StudyResult) -> list[str]:
    """The recommendation as plain text lines (what ``leasekit study`` prints)."""
    target = result.study.target
    lines = [
        f"Recommendation: the smallest TTL whose false losses per lease-hour stay under "
        f"{target:g} (upper 95% bound)",
        f"{'network':16s} {'policy':10s} {'TTL s':>6s}  {'false losses / lease-h [95% CI]':36s}"
        f" {'takeover s':>10s} {'requests / lease-s':>18s}",
    ]
    for r in result.recommendations:
        if r.ttl_seconds is None or r.false_losses is None:
            lines.append(f"{r.network:16s} {r.policy:10s} {'none':>6s}  {closest(result, r)}")
            continue
        e = r.false_losses
        rate = f"{number(e.value)} [{number(e.low)}, {number(e.high)}] ({r.engine})"
        lines.append(
            f"{r.network:16s} {r.policy:10s} {r.ttl_seconds:6d}  {rate:36s}"
            f" {number(r.takeover_seconds):>10s} {number(r.requests_per_lease_second):>18s}"
        )
    for network, policy in result.winners.items():
        lines.append(f"{network}: {verdict(result, network, policy)}")
    return lines


def closest(result: StudyResult, r: Recommendation) -> str:
    """For a network and policy that meets the target at no TTL: the lowest
    upper bound the grid reached, where, and from which engine."""
    name = "false_losses_per_lease_hour"
    rows = result.combined[
        (result.combined["network"] == r.network) & (result.combined["policy"] == r.policy)
    ]
    rows = rows[rows[f"{name}_high"].notna()]
    if rows.empty:
        return "no engine gave a false-loss rate"
    best = rows.sort_values(f"{name}_high", kind="stable").iloc[0]
    return (
        f"lowest upper bound {number(best[f'{name}_high'])} "
        f"at TTL {best['ttl_seconds']} s ({best[f'{name}_engine']})"
    )


def verdict(result: StudyResult, network: str, policy: str | None) -> str:
    """Which policy wins on ``network``, and why, in a sentence."""
    if policy is None:
        return "no policy meets the target with a TTL of the grid"
    mine = [r for r in result.recommendations if r.network == network]
    chosen = next(r for r in mine if r.policy == policy)
    others = [r for r in mine if r.policy != policy]
    reasons = []
    for other in others:
        if other.ttl_seconds is None:
            reasons.append(f"{other.policy} meets the target at no TTL of the grid")
        else:
            reasons.append(
                f"{other.policy} needs TTL {other.ttl_seconds} s "
                f"(takeover {number(other.takeover_seconds)} s)"
            )
    why = f"; {'; '.join(reasons)}" if reasons else ""
    return (
        f"{policy} wins: TTL {chosen.ttl_seconds} s, takeover "
        f"{number(chosen.takeover_seconds)} s{why}"
    )


# --------------------------------------------------------------------------- files


def write_report(
    result: StudyResult,
    out: Path,
    *,
    command: str,
    trace: TraceSection | None = None,
) -> Path:
    """Write the report of ``result`` into ``out``; returns ``out / "index.html"``."""
    from . import plot

    out.mkdir(parents=True, exist_ok=True)
    study = result.study
    scenarios = out / "scenarios"
    scenarios.mkdir(exist_ok=True)
    files = []
    for label, scenario in study.networks.items():
        path = scenarios / f"{_slug(label)}.toml"
        path.write_text(
            scenario_toml(
                scenario,
                f"network {label!r} of study {study.name!r}, as the SimPy engine ran it;\n"
                "the study sets workers.policy and the TTL from its grid.",
            )
        )
        files.append(path)
    if study.path is not None and Path(study.path).is_file():
        shutil.copyfile(study.path, out / "study.toml")
        files.append(out / "study.toml")
    result.combined.to_csv(out / "results.csv", index=False)
    result.table.to_csv(out / "results_by_engine.csv", index=False)
    combined = result.combined
    figures = [
        (
            "false_losses_vs_ttl.png",
            "False losses per lease-hour against the TTL (95% intervals as bands; the dashed "
            "line is the target).",
            plot.false_loss_vs_ttl(combined, target=study.target),
        ),
        (
            "frontier.png",
            "The trade-off: the upper bound of the false-loss rate against the takeover time "
            "and the server load; ringed points are Pareto choices, labelled with their TTL.",
            plot.frontier(combined, target=study.target),
        ),
        (
            "heatmap.png",
            "Upper 95% bound of false losses per lease-hour, per network and TTL (* under the "
            "target).",
            plot.heatmap(combined, "ttl_seconds", "network", target=study.target),
        ),
    ]
    for name, _caption, figure in figures:
        figure.savefig(out / name, dpi=100)
    (out / "index.html").write_text(_html(result, figures, files, out, command, trace))
    return out / "index.html"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label) or "network"


def _cell(row: Any, name: str) -> str:
    value, low, high = row[name], row[f"{name}_low"], row[f"{name}_high"]
    if math.isnan(value):
        return "n/a"
    if low == high:
        return number(value)
    return f"{number(value)} [{number(low)}, {number(high)}]"


def _recommendation_table(result: StudyResult) -> str:
    head = (
        "<tr><th>network</th><th>policy</th><th>TTL (s)</th>"
        "<th>false losses per lease-hour [95% CI] (1/h)</th><th>from engine</th>"
        "<th>mean takeover time (s)</th><th>requests per lease-second (1/s)</th></tr>"
    )
    rows = []
    for r in result.recommendations:
        if r.ttl_seconds is None or r.false_losses is None:
            cells = [r.network, r.policy, "none", closest(result, r), "", "", ""]
        else:
            e = r.false_losses
            cells = [
                r.network,
                r.policy,
                str(r.ttl_seconds),
                f"{number(e.value)} [{number(e.low)}, {number(e.high)}]",
                r.engine or "",
                number(r.takeover_seconds),
                number(r.requests_per_lease_second),
            ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _results_table(combined: pd.DataFrame) -> str:
    head = "<tr><th>network</th><th>policy</th><th>TTL (s)</th>" + "".join(
        f"<th>{html.escape(name)} ({html.escape(METRICS[name].unit)})</th>" for name in _SHOWN
    )
    head += "<th>engine of the false-loss rate</th></tr>"
    rows = []
    for _, row in combined.iterrows():
        cells = [str(row["network"]), str(row["policy"]), str(row["ttl_seconds"])]
        cells += [_cell(row, name) for name in _SHOWN]
        cells.append(str(row["false_losses_per_lease_hour_engine"]))
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _interval_kinds(table: pd.DataFrame) -> set[str]:
    kinds: set[str] = set()
    for column in table.columns:
        if str(column).endswith("_interval"):
            kinds.update(str(v) for v in table[column] if v)
    return kinds


def _html(
    result: StudyResult,
    figures: list[tuple[str, str, Any]],
    files: list[Path],
    out: Path,
    command: str,
    trace: TraceSection | None,
) -> str:
    study = result.study
    e = html.escape
    verdicts = "".join(
        f"<li><b>{e(network)}</b>: {e(verdict(result, network, policy))}</li>"
        for network, policy in result.winners.items()
    )
    notes = [
        f"{row['network']}, {row['policy']}, TTL {row['ttl_seconds']} s, {row['engine']} engine: "
        f"{row['note']}"
        for _, row in result.table.iterrows()
        if row["note"]
    ]
    notes_html = (
        "<h3>What the engines could not do (the next engine's number stands in)</h3><ul>"
        + "".join(f"<li>{e(n)}</li>" for n in notes)
        + "</ul>"
        if notes
        else ""
    )
    figures_html = "".join(
        f'<figure><img src="{e(name)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption>'
        "</figure>"
        for name, caption, _ in figures
    )
    trace_html = ""
    if trace is not None:
        what_if = trace.what_if.to_html(index=False, float_format=lambda v: f"{v:.3g}")
        fit = "".join(f"<li>{e(k)}: {e(str(v))}</li>" for k, v in trace.fit.items())
        trace_html = f"""
<h2>The recorded trace</h2>
<p>Network fitted from <code>{e(trace.path)}</code> (the <code>trace</code> network of the
tables above is this fit, at the scale of the study):</p><ul>{fit}</ul>
<p>What the trace as recorded would have met at each TTL (server expiries replayed from its
arrival times by <code>leasekit.lease.LeaseRules</code>, with bounds):</p>{what_if}"""
    rare = "false_losses_per_lease_hour and its causes, server_expiries_per_lease_hour"
    engines = ", ".join(study.engines)
    intervals = "".join(
        f"<li><b>{e(k)}</b>: {e(v)}</li>"
        for k, v in INTERVALS.items()
        if k in _interval_kinds(result.table)
    )
    glossary = "".join(
        f"<li><code>{e(n)}</code> ({e(METRICS[n].unit)}): {e(METRICS[n].definition)}</li>"
        for n in _SHOWN
    )
    links = "".join(
        f'<li><a href="{e(str(p.relative_to(out)))}">{e(str(p.relative_to(out)))}</a></li>'
        for p in files
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>leasekit study: {e(study.name)}</title>
<style>
body {{ font-family: sans-serif; max-width: 75em; margin: 2em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 90%; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
img {{ max-width: 100%; }} figcaption {{ font-style: italic; }}
</style></head><body>
<h1>TTL study: {e(study.name)}</h1>
<h2>Recommendation</h2>
<p>For each network and policy, the smallest TTL of the grid whose false losses per lease-hour
stay under <b>{study.target:g}</b> with 95% confidence (the upper bound of the interval), with
the mean takeover time after a crash and the server load at that TTL.</p>
{_recommendation_table(result)}
<ul>{verdicts}</ul>
<p>Engines: {e(engines)}. The rare-event rates ({e(rare)}) come from the
engine named in each row (analytic, then fast, then SimPy, the best that gave a number; the
fast and analytic engines study one lease's life, one item per worker); takeover time and
server load always come from the SimPy engine ({study.replications} seeds per point, counts
pooled).</p>
{notes_html}
<h2>Figures</h2>
{figures_html}
{trace_html}
<h2>Every configuration</h2>
{_results_table(result.combined)}
<p>Every number with its interval, one row per network, policy and TTL:
<a href="results.csv">results.csv</a>; each engine's own rows:
<a href="results_by_engine.csv">results_by_engine.csv</a>.</p>
<h2>Reproduce</h2>
<p><code>{e(command)}</code> (base seed {study.seed}; the same seed gives the same
numbers wherever the runs go, except fast-engine estimates stopped by their time limit, which
the notes name). Scenario files used:</p><ul>{links}</ul>
<h2>Definitions</h2><ul>{glossary}</ul>
<h3>Intervals</h3><ul>{intervals}</ul>
<p>Wall time: {result.wall_seconds:.1f} s.</p>
</body></html>
"""
