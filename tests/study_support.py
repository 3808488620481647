"""Small studies and scenarios for the study, plot and CLI tests."""

from __future__ import annotations

from pathlib import Path

from leasekit.sim import Scenario, load_scenario
from leasekit.study import set_field

ROOT = Path(__file__).resolve().parent.parent
SIMULATIONS = ROOT / "simulations"


def small(name: str, *, workers: int = 6, hours: float = 0.25) -> Scenario:
    """A shipped network preset, shrunk to run in a fraction of a second."""
    scenario = load_scenario(SIMULATIONS / f"{name}.toml")
    scenario = set_field(set_field(scenario, "workers", workers), "hours", hours)
    return set_field(scenario, "warmup_s", 60.0)


def write_tiny_study(directory: Path, *, engines: str = '["simpy", "fast"]') -> Path:
    """A study of two shipped networks, two policies and two TTLs, sized for tests."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tiny.toml"
    path.write_text(
        f"""name = "tiny"
seed = 5
target = 1e-3
replications = 2
engines = {engines}

[run]
workers = 6
hours = 0.25
warmup_s = 60.0
"workers.crashes.rate_per_hour" = 6.0   # takeovers to time in a quarter of an hour

[grid]
policy = ["sdk", "leasekit"]
ttl_seconds = [10, 30]

[fast]
rel_halfwidth = 0.3
max_seconds = 60

[networks]
lan = "{SIMULATIONS / "lan.toml"}"
gc-host = "{SIMULATIONS / "gc-host.toml"}"
"""
    )
    return path
