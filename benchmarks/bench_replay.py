"""What-if TTL on a long trace: attempts replayed per second, against a bare gap count.

A seeded synthetic trace (``--leases`` leases of ``--beats`` heartbeats every
30 s, round trips ``shiftexp:0.02,0.05``, 5% of requests lost, each lease
ending on a success) is written with :class:`leasekit.trace.TraceWriter`,
read back with :func:`leasekit.replay.load_any_trace`, and asked about four
TTLs with :func:`leasekit.replay.what_if_ttl`, which decides every gap with
:class:`leasekit.lease.LeaseRules` (estimate and both bounds).

**Baseline, same run**: the bare arithmetic the lease rules stand for on
the estimate alone, ``numpy.diff`` of the renewals' midpoints in whole
microseconds compared with the TTL. Its counts must equal the estimate's
expiring gaps (otherwise the script prints no ratio and exits 1: a baseline
that does not count the same thing is no baseline); the figure to read is
the cost of deciding each gap by the one lease logic, three times (estimate,
low, high), against this floor.

    .venv/bin/python benchmarks/bench_replay.py              # ~10 s
    .venv/bin/python benchmarks/bench_replay.py --leases 10 --beats 1000
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from leasekit.distributions import parse_delay
from leasekit.policy import Outcome, Result, Send
from leasekit.protocol import HeartbeatAnswer, WorkState
from leasekit.replay import load_any_trace, what_if_ttl
from leasekit.trace import TraceHeader, TraceWriter

TTLS = (30, 31, 45, 60)


def write_trace(path: Path, leases: int, beats: int, seed: int) -> None:
    rng = random.Random(seed)
    rtt = parse_delay("shiftexp:0.02,0.05")
    with TraceWriter(path, TraceHeader("fixed", source="bench_replay"), origin=0.0) as writer:
        for lease in range(leases):
            ids = {"environment_id": "env", "work_id": f"work_{lease}", "worker": f"w{lease}"}
            last = "NO_HEARTBEAT"
            for n in range(beats):
                sent = lease * 1e6 + n * 30.0
                send = Send(sent, 5.0, last, None, n + 1)
                if 0 < n < beats - 1 and rng.random() < 0.05:
                    writer.attempt(**ids, send=send, result=Result(Outcome.TIMEOUT, sent, sent + 5))
                    continue
                answer = HeartbeatAnswer(f"v{lease}-{n}", True, WorkState.ACTIVE, 90)
                received = sent + rtt.sample(rng)
                writer.attempt(
                    **ids,
                    send=send,
                    result=Result(Outcome.OK, sent, received, answer=answer, status=200),
                )
                last = answer.last_heartbeat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=20)
    parser.add_argument("--beats", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.jsonl"
        write_trace(path, args.leases, args.beats, args.seed)
        started = time.perf_counter()
        attempts = load_any_trace(path)
        loaded = time.perf_counter()
        table = what_if_ttl(attempts, TTLS)
        replayed = time.perf_counter()
        # baseline: midpoints of the successes, per lease, gaps in whole microseconds
        ok = attempts[attempts["outcome"] == "ok"]
        mid_us = np.round((ok["sent_s"] + ok["received_s"]).to_numpy() / 2 * 1e6).astype(np.int64)
        bare_started = time.perf_counter()
        counts = dict.fromkeys(TTLS, 0)
        for _work, positions in ok.groupby("work_id", observed=True).indices.items():
            gaps = np.diff(mid_us[positions])
            for ttl in TTLS:
                counts[ttl] += int((gaps > ttl * 1_000_000).sum())
        bare = time.perf_counter() - bare_started
    attempts_n = len(attempts)
    whatif_s = replayed - loaded
    print(f"trace: {attempts_n} attempts, {args.leases} leases, seed {args.seed}")
    load_s = loaded - started
    print(f"load_any_trace:      {load_s:8.3f} s  ({attempts_n / load_s:,.0f} attempts/s)")
    print(
        f"what_if_ttl x{len(TTLS)} TTLs: {whatif_s:8.3f} s  "
        f"({attempts_n * len(TTLS) / whatif_s:,.0f} attempt-TTLs/s, estimate and bounds)"
    )
    print(
        f"baseline numpy diff: {bare:8.3f} s  "
        f"({attempts_n * len(TTLS) / bare:,.0f} attempt-TTLs/s, estimate only)"
    )
    print(
        table[
            ["ttl_seconds", "expiring_gaps", "expiring_gaps_low", "expiring_gaps_high"]
        ].to_string(index=False)
    )
    estimate = dict(zip(table["ttl_seconds"], table["expiring_gaps"], strict=True))
    if estimate != counts:
        print(f"MISMATCH: lease rules {estimate} vs bare count {counts}", file=sys.stderr)
        print("no ratio: the baseline did not count the same gaps", file=sys.stderr)
        return 1
    print(f"cost of the lease rules over the bare count: {whatif_s / bare:,.0f}x")
    print("estimate counts equal the bare count at every TTL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
