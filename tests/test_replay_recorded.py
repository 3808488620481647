"""A trace recorded for real (leasekit's client against the reference server on
loopback, with dropped requests) replays with the server's own gaps."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from leasekit.client import hold_lease_sync
from leasekit.lease import LeaseConfig
from leasekit.policy import Outcome
from leasekit.protocol import parse_timestamp
from leasekit.replay import load_any_trace, what_if_ttl
from leasekit.server import FaultConfig, create_app, running_server
from leasekit.trace import read_trace


def test_a_recorded_trace_replays_with_the_servers_own_gaps(tmp_path: Path) -> None:
    app = create_app(
        keys={"env_1": "key_1"},
        config=LeaseConfig(default_ttl_seconds=3, min_ttl_seconds=1),
        faults=FaultConfig(drop_request=0.5, seed=3),  # a run of three drops early on
        seed_work={"env_1": 1},
    )
    path = tmp_path / "kept.jsonl"
    with running_server(app) as url:
        # beats every 0.3 s whatever happens: gaps between renewals are
        # multiples of 0.3 s, never near the whole-second TTLs asked about
        hold_lease_sync(
            url, "key_1", "env_1", duration_s=3.0, policy="fixed:interval=0.3", trace_path=path
        )
    attempts = load_any_trace(path)
    pd.testing.assert_frame_equal(attempts, read_trace(path).attempts)
    assert (attempts["outcome"] == Outcome.TIMEOUT.value).any()  # the drops are in it
    ok = attempts[attempts["outcome"] == Outcome.OK.value]
    assert len(ok) >= 3
    # the reference server's last_heartbeat is its clock when it applied the
    # renewal: the gaps between them are the server's own gaps
    stamps = [parse_timestamp(s) / 1e6 for s in ok["last_heartbeat"]]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # end the replay at the last renewal, so only gaps between renewals count
    until_last_ok = attempts.loc[: ok.index[-1]]
    frame = what_if_ttl(until_last_ok, [1, 2, 3])
    for row in frame.itertuples(index=False):
        assert row.expiring_gaps == sum(gap > row.ttl_seconds for gap in gaps), row
        assert row.expiring_gaps_low <= row.expiring_gaps <= row.expiring_gaps_high
        assert row.false_losses == min(1, row.expiring_gaps)  # one lease
    # not a vacuous agreement: three drops in a row make a gap of 1.2 s
    assert frame.loc[frame["ttl_seconds"] == 1, "expiring_gaps"].item() >= 1
