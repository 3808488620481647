"""Simulator speed: simulated heartbeats per second of wall time.

Two scenarios, one per process (the rate counts start-up and imports):

* ``bench`` (default): 1,000 workers for one simulated hour on the official
  SDK's policy (TTL 10 s, a heartbeat every 5 s: about 706,000 heartbeats),
  lossless 50 ms network.
* ``--fixed``: 1,000 workers for one hour on ``fixed:interval=1``, TTL 5 s,
  ``exp:0.01`` latency both ways (about 3.6 million heartbeats); what
  ``leasekit simulate --workers 1000 --hours 1 --policy fixed:interval=1
  --ttl 5 --latency exp:0.01`` runs.

Baselines in the same run, on the bench scenario's traffic (the machine may
be shared: compare ratios, and CPU time rather than wall time):

* ``bare``: each worker a SimPy process that only does ``yield
  env.timeout(5)``; the floor of any SimPy model.
* ``process``: a plain generator-process SimPy model driving the same
  ``SdkPolicy`` and ``LeaseBook`` (one process per worker, a timeout per
  wait, the send and the answer as timeouts); how a straightforward SimPy
  model of the same thing runs (``--no-process`` skips it).

Goals: at least 100,000 simulated heartbeats per second for the whole
process. Run: ``.venv/bin/python benchmarks/bench_sim.py [--fixed]``.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()
PROCESS_CPU_START = time.process_time()

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from collections.abc import Generator  # noqa: E402
from typing import Any  # noqa: E402

import simpy  # noqa: E402

from leasekit.lease import LeaseBook, LeaseConfig  # noqa: E402
from leasekit.policy import Outcome, Result, SdkPolicy, Send, classify_status  # noqa: E402
from leasekit.protocol import ApiError, HeartbeatAnswer, PreconditionFailed, WorkState  # noqa: E402
from leasekit.sim import (  # noqa: E402
    EPOCH_US,
    Scenario,
    Server,
    Workers,
    simulate,
    with_overrides,
)

WORKERS = 1000
HOURS = 1.0
TTL_SECONDS = 10
INTERVAL_S = 5.0  # the SDK's interval at TTL 10 s: min(TTL / 2, 30)
DELAY_S = 0.05


def bench_scenario() -> Scenario:
    return Scenario(
        name="bench",
        duration_s=HOURS * 3600,
        workers=Workers(count=WORKERS, policy="sdk"),
        server=Server(
            default_ttl_seconds=TTL_SECONDS,
            min_ttl_seconds=TTL_SECONDS,
            max_ttl_seconds=TTL_SECONDS,
        ),
    )


def fixed_scenario() -> Scenario:
    return with_overrides(
        Scenario(name="fixed-1s"),
        workers=WORKERS,
        hours=HOURS,
        policy="fixed:interval=1",
        ttl_seconds=5,
        latency="exp:0.01",
    )


def bare_model() -> tuple[int, float]:
    """Heartbeats and CPU seconds of the bare SimPy model."""
    cpu_started = time.process_time()
    env = simpy.Environment()
    count = [0]

    def worker(offset_s: float) -> Generator[simpy.Event, None, None]:
        yield env.timeout(offset_s)
        while True:
            count[0] += 1
            yield env.timeout(INTERVAL_S)

    rng = random.Random(1)
    for _ in range(WORKERS):
        env.process(worker(rng.uniform(0, INTERVAL_S)))
    env.run(until=HOURS * 3600)
    return count[0], time.process_time() - cpu_started


PARTS_HEARTBEATS = 200_000


def parts_model() -> dict[str, float]:
    """CPU microseconds per heartbeat of the parts any faithful engine of the
    bench scenario pays for, each alone, on the same traffic (1,000 workers,
    a heartbeat every 5 s, 50 ms each way):

    * ``simpy``: the two SimPy events of a heartbeat (its processing at the
      server, its answer at the worker), as ``env.timeout`` with a callback
      that schedules the next: documented SimPy only, nothing else done;
    * ``lease_book``: ``LeaseBook.heartbeat`` renewing 1,000 items in time order;
    * ``policy``: ``SdkPolicy``'s ``due``, ``sending`` and ``observe`` of a
      ``Result`` per heartbeat.

    Their sum is the least a heartbeat can cost with these parts; what the
    simulator costs beyond it is its own work (attempts, faults, counting).
    """
    beats_per_worker = PARTS_HEARTBEATS // WORKERS
    out: dict[str, float] = {}

    cpu_started = time.process_time()
    env = simpy.Environment()
    timeout = env.timeout
    left = [PARTS_HEARTBEATS]

    def answered(event: simpy.Event) -> None:
        left[0] -= 1
        if left[0] > 0:
            timeout(INTERVAL_S - DELAY_S, event.value).callbacks.append(arrived)

    def arrived(event: simpy.Event) -> None:
        timeout(DELAY_S, event.value).callbacks.append(answered)

    rng = random.Random(1)
    for i in range(WORKERS):
        timeout(rng.uniform(0, INTERVAL_S), i).callbacks.append(arrived)
    env.run()
    out["simpy"] = (time.process_time() - cpu_started) / PARTS_HEARTBEATS * 1e6

    book = LeaseBook(LeaseConfig(TTL_SECONDS, TTL_SECONDS, TTL_SECONDS), secrets_=lambda: "s")
    book.add_environment("env")
    work_ids = [f"work_{i:05d}" for i in range(WORKERS)]
    last = []
    for work_id in work_ids:
        book.enqueue("env", EPOCH_US, work_id=work_id)
        answer = book.heartbeat("env", work_id, EPOCH_US, "NO_HEARTBEAT", None)
        last.append(answer.last_heartbeat)
    step_us = round(INTERVAL_S * 1e6 / WORKERS)
    cpu_started = time.process_time()
    now_us = EPOCH_US
    for _ in range(beats_per_worker):
        for i, work_id in enumerate(work_ids):
            now_us += step_us
            last[i] = book.heartbeat("env", work_id, now_us, last[i], None).last_heartbeat
    out["lease_book"] = (time.process_time() - cpu_started) / PARTS_HEARTBEATS * 1e6

    policies = [SdkPolicy(rng=random.Random(i)) for i in range(WORKERS)]
    sends = [policy.start(0.0) for policy in policies]
    answers = [HeartbeatAnswer(f"stamp-{i}", True, WorkState.ACTIVE, 10) for i in range(WORKERS)]
    ok = Outcome.OK
    cpu_started = time.process_time()
    for _ in range(beats_per_worker):
        for i, policy in enumerate(policies):
            send = sends[i]
            at = policy.due(send, False)
            action = policy.sending(send, at, False)
            assert isinstance(action, Send)
            result = Result(ok, at, at + 2 * DELAY_S, answers[i], None, 200)
            next_action = policy.observe(result)
            assert isinstance(next_action, Send)
            sends[i] = next_action
    out["policy"] = (time.process_time() - cpu_started) / PARTS_HEARTBEATS * 1e6
    return out


def process_model() -> tuple[int, float]:
    """Heartbeats and CPU seconds of a plain generator-process model of the
    bench scenario: SdkPolicy and LeaseBook, each worker one process."""
    cpu_started = time.process_time()
    env = simpy.Environment()
    book = LeaseBook(LeaseConfig(TTL_SECONDS, TTL_SECONDS, TTL_SECONDS), secrets_=lambda: "s")
    book.add_environment("env")
    count = [0]

    def worker(index: int, offset_s: float) -> Generator[simpy.Event, Any, None]:
        work_id = f"work_{index:05d}"
        book.enqueue("env", EPOCH_US, work_id=work_id)
        yield env.timeout(offset_s)
        policy = SdkPolicy(rng=random.Random(index))
        action = policy.start(env.now)
        while isinstance(action, Send):
            due = policy.due(action)
            if due > env.now:
                yield env.timeout(due - env.now)
            action = policy.sending(action, env.now)
            if not isinstance(action, Send):
                break
            sent = env.now
            count[0] += 1
            yield env.timeout(DELAY_S)
            now_us = EPOCH_US + round(env.now * 1e6)
            answer = state = None
            try:
                answer = book.heartbeat(
                    "env", work_id, now_us, action.expected_last_heartbeat, None
                )
                status = 200
            except PreconditionFailed as error:
                status, state = 412, error.current_state
            except ApiError as error:
                status = error.status
            yield env.timeout(DELAY_S)
            result = Result(classify_status(status), sent, env.now, answer, state, status)
            action = policy.observe(result)

    rng = random.Random(1)
    for i in range(WORKERS):
        env.process(worker(i, rng.uniform(0, 5)))
    env.run(until=HOURS * 3600)
    return count[0], time.process_time() - cpu_started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed", action="store_true", help="the fixed:interval=1 scenario")
    parser.add_argument("--no-process", action="store_true", help="skip the process baseline")
    args = parser.parse_args()
    scenario = fixed_scenario() if args.fixed else bench_scenario()
    started = time.perf_counter()
    cpu_started = time.process_time()
    result = simulate(scenario, seed=1)
    sim_s = time.perf_counter() - started
    sim_cpu_s = time.process_time() - cpu_started
    process_s = time.perf_counter() - PROCESS_START
    process_cpu_s = time.process_time() - PROCESS_CPU_START
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    beats = result.heartbeats_sent
    print(
        f"scenario {scenario.name}: {WORKERS} workers, {HOURS:g} simulated hour(s), "
        f"{scenario.workers.policy}, TTL {scenario.server.default_ttl_seconds} s"
    )
    print(
        f"leasekit simulator : {beats:9d} heartbeats, wall {sim_s:6.2f} s = "
        f"{beats / sim_s:9.0f}/s, CPU {sim_cpu_s:6.2f} s = {beats / sim_cpu_s:9.0f}/s"
    )
    print(
        f"  whole process    : wall {process_s:6.2f} s = {beats / process_s:9.0f}/s, "
        f"CPU {process_cpu_s:6.2f} s = {beats / process_cpu_s:9.0f}/s (goal >= 100000); "
        f"peak RSS {peak_mb:.0f} MB"
    )
    sim_cpu_rate = beats / sim_cpu_s
    bare_beats, bare_cpu_s = bare_model()
    bare_rate = bare_beats / bare_cpu_s
    print(
        f"bare SimPy model   : {bare_beats:9d} timeouts,   CPU {bare_cpu_s:6.2f} s = "
        f"{bare_rate:9.0f}/s; simulator/bare {sim_cpu_rate / bare_rate:.1%}"
    )
    parts = parts_model()
    floor_us = sum(parts.values())
    print(
        "parts alone (CPU us per heartbeat): "
        + ", ".join(f"{name} {us:.2f}" for name, us in parts.items())
        + f"; together {floor_us:.2f} us = {1e6 / floor_us:.0f}/s at most with these parts;"
        f" the simulator {1e6 / sim_cpu_rate:.2f} us"
    )
    if not args.no_process:
        model_beats, model_cpu_s = process_model()
        model_rate = model_beats / model_cpu_s
        print(
            f"process-per-worker : {model_beats:9d} heartbeats, CPU {model_cpu_s:6.2f} s = "
            f"{model_rate:9.0f}/s; simulator/process model {sim_cpu_rate / model_rate:.2f}x"
        )
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    whole = beats / process_s
    print("goal met" if whole >= 100_000 else "goal NOT met (whole-process wall rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
