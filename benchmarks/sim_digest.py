"""Determinism check for simulator work: digests of whole runs.

Runs a few scenarios with ``seed=1`` and prints, per scenario, a SHA-256 of
the run's event log (rows in the order the monitor recorded them, floats by
``repr``), its metrics and ``heartbeats_sent``. A change that only makes the
simulator faster must leave every digest as it was.

The digests of the current simulator are committed in
``benchmarks/sim_digest.baseline.json`` (with, under ``"why"``, the reason
for each change of results), so anyone can check a "same event log" claim:
``.venv/bin/python benchmarks/sim_digest.py --check
benchmarks/sim_digest.baseline.json``. Also ``--save FILE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from leasekit.sim import Scenario, Server, Workers, load_scenario, simulate, with_overrides

ROOT = Path(__file__).resolve().parent.parent


def scenarios() -> dict[str, Scenario]:
    """The scenarios checked: the benchmark's, the shipped ones, a lossy
    leasekit-policy one and a fixed-policy one."""
    sims = ROOT / "simulations"
    lossy = load_scenario(sims / "lossy-wan.toml")
    return {
        "bench": Scenario(
            name="bench",
            duration_s=3600.0,
            workers=Workers(count=1000, policy="sdk"),
            server=Server(default_ttl_seconds=10, min_ttl_seconds=10, max_ttl_seconds=10),
        ),
        "lossy-wan": lossy,
        "lossy-wan-leasekit": with_overrides(
            lossy, workers=200, hours=1.0, policy="leasekit", loss=0.05, answer_loss=0.02
        ),
        "lossy-wan-fixed": with_overrides(lossy, hours=1.0, policy="fixed:interval=10"),
        "partition": load_scenario(sims / "partition.toml"),
        "gc-pauses": load_scenario(sims / "gc-pauses.toml"),
    }


def digest(scenario: Scenario) -> str:
    """SHA-256 of one run's event log, metrics and heartbeat count (seed 1)."""
    result = simulate(scenario, seed=1, events=True)
    sha = hashlib.sha256()
    for row in result.rows:
        sha.update(repr(row).encode())
        sha.update(b"\n")
    sha.update(repr(sorted(result.metrics.items())).encode())
    sha.update(repr(result.heartbeats_sent).encode())
    return sha.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--save", type=Path, help="write the digests to this JSON file")
    group.add_argument("--check", type=Path, help="compare with digests saved by --save")
    args = parser.parse_args()
    found = {}
    for name, scenario in scenarios().items():
        started = time.perf_counter()
        found[name] = digest(scenario)
        print(f"{name:20s} {found[name]}  ({time.perf_counter() - started:.1f} s)", flush=True)
    if args.save:
        saved = json.loads(args.save.read_text()) if args.save.exists() else {}
        saved["digests"] = found
        saved.setdefault("why", [])
        args.save.write_text(json.dumps(saved, indent=1) + "\n")
    if args.check:
        expected = json.loads(args.check.read_text())["digests"]
        bad = [name for name in expected if expected[name] != found.get(name)]
        print("digests differ: " + ", ".join(bad) if bad else "digests identical")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
