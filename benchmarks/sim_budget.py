"""Where a simulated heartbeat's time goes: its pieces timed alone, in microseconds.

Each line runs one piece of the bench scenario's heartbeat path (SdkPolicy,
TTL 10 s, a renewal of an active lease) in a loop, best of three. A
simulated heartbeat is two SimPy timeouts with a callback (its processing
at the server, its answer at the worker). Compare
the sum with ``benchmarks/bench_sim.py``'s figure for the whole. Run:
``.venv/bin/python benchmarks/sim_budget.py``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import simpy

from leasekit.lease import LeaseBook, LeaseConfig
from leasekit.policy import Outcome, Result, SdkPolicy, Send
from leasekit.protocol import NO_HEARTBEAT, HeartbeatAnswer, WorkState, format_timestamp
from leasekit.sim import Scenario, Workers
from leasekit.sim._engine import EPOCH_US, Attempt, Engine

N = 200_000


def timed(label: str, run: Callable[[int], object]) -> None:
    best = min(_once(run) for _ in range(3))
    print(f"{label:48s} {best / N * 1e6:6.2f} us")


def _once(run: Callable[[int], object]) -> float:
    started = time.perf_counter()
    run(N)
    return time.perf_counter() - started


def book_renewals(n: int) -> None:
    book = LeaseBook(LeaseConfig(10, 10, 10), observer=lambda *_: None, secrets_=lambda: "s")
    book.add_environment("e")
    book.enqueue("e", EPOCH_US, work_id="w")
    now = EPOCH_US + 1000
    last = book.heartbeat("e", "w", now, NO_HEARTBEAT).last_heartbeat
    for _ in range(n):
        now += 997  # many heartbeats a second, as 1,000 workers make
        last = book.heartbeat("e", "w", now, last, None).last_heartbeat


def timestamps(n: int) -> None:
    for i in range(n):
        format_timestamp(EPOCH_US + i)


def policy_cycle(n: int) -> None:
    policy = SdkPolicy(rng=random.Random(1))
    send = policy.start(0.0)
    answer = HeartbeatAnswer("x", True, WorkState.ACTIVE, 10)
    for _ in range(n):
        assert isinstance(send, Send)
        at = policy.due(send)
        action = policy.sending(send, at)
        assert isinstance(action, Send)
        send = policy.observe(Result(Outcome.OK, at, at + 0.1, answer, None, 200))


def results(n: int) -> None:
    answer = HeartbeatAnswer("x", True, WorkState.ACTIVE, 10)
    for _ in range(n):
        Result(Outcome.OK, 1.0, 2.0, answer, None, 200)


def answers(n: int) -> None:
    for _ in range(n):
        HeartbeatAnswer("x", True, WorkState.ACTIVE, 10)


def attempts(n: int) -> None:
    worker = Engine(Scenario(workers=Workers(count=1)), 1).workers[0]
    for _ in range(n):
        Attempt(worker, "heartbeat", 1.0, 5.0, "work_1", 3, "x", None)


def timeout_callbacks(n: int) -> None:
    env = simpy.Environment()
    step = 5.0 / 1000

    def again(event: simpy.Event) -> None:
        env.timeout(5.0).callbacks.append(again)

    for i in range(1000):
        env.timeout(i * step).callbacks.append(again)
    env.run(until=n / 1000 * 5)


def bare_simpy(n: int) -> None:
    env = simpy.Environment()

    def worker(env: simpy.Environment):  # type: ignore[no-untyped-def]
        while True:
            yield env.timeout(5)

    for _ in range(1000):
        env.process(worker(env))
    env.run(until=n / 1000 * 5)


def main() -> None:
    timed("LeaseBook.heartbeat (a renewal, no-op observer)", book_renewals)
    timed("  of which format_timestamp (same second)", timestamps)
    timed("  of which HeartbeatAnswer(...)", answers)
    timed("SdkPolicy: due, sending, Result(...), observe", policy_cycle)
    timed("  of which Result(...)", results)
    timed("engine: Attempt(...)", attempts)
    timed("engine: one timeout with a callback (x2 a heartbeat)", timeout_callbacks)
    timed("bare SimPy: one timeout of a process (baseline)", bare_simpy)


if __name__ == "__main__":
    main()
