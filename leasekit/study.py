"""Studies: sweep a scenario over TTLs and policies, with replications.

Every configuration runs the same seeds (common random numbers), so the
difference between two policies is not blurred by different luck; the
runs may go to worker processes. Same scenario and seed, same table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

from .sim import Scenario, replication_seed, simulate, t_interval, with_overrides

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["sweep"]


def _run(scenario: Scenario, seed: int) -> tuple[dict[str, float], int]:
    result = simulate(scenario, seed=seed)
    return result.metrics, result.heartbeats_sent


def sweep(
    scenario: Scenario,
    *,
    ttl: Sequence[int] = (),
    policy: Sequence[str] = (),
    replications: int = 5,
    seed: int | None = None,
    processes: int = 1,
    progress: Callable[[float], None] | None = None,
) -> pd.DataFrame:
    """Run ``scenario`` for every ``ttl`` (seconds the server grants) and
    ``policy`` spec, ``replications`` seeds each (derived from ``seed``,
    default the scenario's), in ``processes`` processes.

    Returns one row per configuration: ``policy``, ``ttl_seconds``,
    ``replications``, ``heartbeats_sent``, and for every metric ``NAME`` its
    mean ``NAME`` with its 95% t-interval ``NAME_low``, ``NAME_high``.
    An empty ``ttl`` or ``policy`` keeps the scenario's.
    """
    import pandas as pd

    base = scenario.seed if seed is None else seed
    seeds = [replication_seed(base, i) for i in range(replications)]
    configs = [
        (p, t)
        for p in (policy or [scenario.workers.policy])
        for t in (ttl or [scenario.server.default_ttl_seconds])
    ]
    jobs: list[tuple[Scenario, int]] = []
    for p, t in configs:
        configured = with_overrides(scenario, policy=p, ttl_seconds=t)
        configured = dataclasses.replace(configured, name=f"{scenario.name} {p} ttl={t}")
        jobs.extend((configured, s) for s in seeds)
    results: list[tuple[dict[str, float], int]] = []
    if processes > 1:
        with ProcessPoolExecutor(max_workers=processes) as pool:
            futures = [pool.submit(_run, job, s) for job, s in jobs]
            for done, future in enumerate(futures, 1):
                results.append(future.result())
                if progress is not None:
                    progress(done / len(jobs))
    else:
        for done, (job, s) in enumerate(jobs, 1):
            results.append(_run(job, s))
            if progress is not None:
                progress(done / len(jobs))
    rows = []
    for k, (p, t) in enumerate(configs):
        chunk = results[k * replications : (k + 1) * replications]
        row: dict[str, object] = {
            "policy": p,
            "ttl_seconds": t,
            "replications": replications,
            "heartbeats_sent": sum(sent for _, sent in chunk),
        }
        for name in chunk[0][0]:
            estimate = t_interval([metrics[name] for metrics, _ in chunk])
            row[name] = estimate.value
            row[f"{name}_low"] = estimate.low
            row[f"{name}_high"] = estimate.high
        rows.append(row)
    return pd.DataFrame(rows)
