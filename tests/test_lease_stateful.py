"""A hypothesis state machine against LeaseBook: single-holder safety and friends.

Three workers, two or three work items, one environment, a monotonic clock
that sometimes stands still. The workers poll, ack, stop, and heartbeat the
way a conditional client can: claim with ``NO_HEARTBEAT``, echo the value it
last saw, echo one of its older values, or echo a value another worker saw.

The model: a worker *holds* an item after a 200 heartbeat with
``lease_extended`` true and state ``active``, until the server's deadline for
that heartbeat passes or the worker meets a 412 (or a shutdown answer). The
invariants checked after every step:

* at most one worker holds a current lease on an item, and it is the worker
  whose value the server stores;
* a 412 changes nothing (full record compared, after the settle-expiry that
  every touch applies first);
* a stale echo never extends; an expired lease is never renewed by its old
  holder;
* ``last_heartbeat`` strictly increases per item, across requeues too, and
  the stored value is always the latest issued;
* ``stopped`` stays ``stopped``; ``stopping`` only moves to ``stopped``.

Unconditional heartbeats are left out: they break single-holder safety by
design, which the example tests at the bottom show.

``STEPS`` counts the rule steps hypothesis actually ran; the test prints the
figure (run with ``-s`` to see it) and asserts a floor.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from leasekit.lease import LeaseBook, LeaseConfig, queue_stats
from leasekit.protocol import (
    NO_HEARTBEAT,
    ApiError,
    PreconditionFailed,
    WorkState,
    format_timestamp,
    parse_timestamp,
)

US = 1_000_000
T0 = 1_790_000_000 * US
ENV = "env_stateful"
CONFIG = LeaseConfig(default_ttl_seconds=10, min_ttl_seconds=5, max_ttl_seconds=30)
TTL_US = CONFIG.default_ttl_seconds * US
WORKERS = ("w1", "w2", "w3")
LIVE = (WorkState.QUEUED, WorkState.STARTING, WorkState.ACTIVE)

STEPS = {"steps": 0, "heartbeats": 0, "claims_won": 0, "refused_412": 0, "skipped_takeovers": 0}
"""Counters across every run of the machine in this process."""

SETTINGS = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

workers = st.sampled_from(WORKERS)
desired_ttls = st.one_of(st.none(), st.integers(1, 40))


class LeaseBookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = LeaseBook(CONFIG)
        self.book.add_environment(ENV)
        self.now_us = T0
        self.items: list[str] = []
        # values each worker got in its own 200 answers, per item, oldest first
        self.seen: dict[tuple[str, str], list[str]] = {}
        # item -> worker -> the server deadline of that worker's last active 200
        self.holds: dict[str, dict[str, int]] = {}
        self.last_issued_us: dict[str, int] = {}
        self.last_state: dict[str, WorkState] = {}

    # ------------------------------------------------------------ set-up

    @initialize(count=st.integers(2, 3))
    def make_items(self, count: int) -> None:
        for _ in range(count):
            work_id = self.book.enqueue(ENV, self.now_us).work_id
            self.items.append(work_id)
            self.holds[work_id] = {}
            self.last_issued_us[work_id] = 0
            self.last_state[work_id] = WorkState.QUEUED

    def _item(self, index: int) -> str:
        return self.items[index % len(self.items)]

    # ------------------------------------------------------------ the clock

    @rule(step_us=st.one_of(st.just(0), st.integers(0, 3 * US)))
    def advance_small(self, step_us: int) -> None:
        STEPS["steps"] += 1
        self.now_us += step_us

    @rule(step_s=st.integers(CONFIG.default_ttl_seconds, 3 * CONFIG.max_ttl_seconds))
    def advance_past_ttl(self, step_s: int) -> None:
        STEPS["steps"] += 1
        self.now_us += step_s * US

    @rule(index=st.integers(0, 2), offset_us=st.sampled_from([-1, 0, 1]))
    def advance_to_a_deadline(self, index: int, offset_us: int) -> None:
        """Land on a deadline, just before or just after it: the boundary cases."""
        STEPS["steps"] += 1
        deadline = self.book.record(ENV, self._item(index), self.now_us).deadline_us
        if deadline is not None and deadline + offset_us > self.now_us:
            self.now_us = deadline + offset_us

    # ------------------------------------------------------------ queue calls

    @rule(worker=workers, reclaim_ms=st.sampled_from([0, 200, 5_000, 60_000]))
    def poll(self, worker: str, reclaim_ms: int) -> None:
        STEPS["steps"] += 1
        self._poll(worker, reclaim_ms)

    @rule(reclaims=st.lists(st.sampled_from([0, 200, 5_000, 60_000]), min_size=2, max_size=4))
    def poll_round(self, reclaims: list[int]) -> None:
        """Workers poll one after another, each with its own reclaim window."""
        STEPS["steps"] += 1
        for worker, reclaim_ms in zip(WORKERS * 2, reclaims, strict=False):
            self._poll(worker, reclaim_ms)

    def _poll(self, worker: str, reclaim_ms: int) -> None:
        now = self.now_us
        # available to this poll: queued, and never handed out or handed out at
        # least reclaim_ms ago (records settled first, as the poll does)
        available = []
        for work_id in self.items:
            record = self.book.record(ENV, work_id, now)
            handed = record.handed_out_at_us
            if record.state is WorkState.QUEUED and (
                handed is None or now - handed >= reclaim_ms * 1_000
            ):
                available.append(record)
        got = self.book.poll(ENV, now, worker_id=worker, reclaim_older_than_ms=reclaim_ms)
        if not available:
            assert got is None
            # the long poll sleeps until next_due_us: it may be early, never late
            due = self.book.next_due_us(ENV, reclaim_ms)
            coming = []
            for work_id in self.items:
                record = self.book.record(ENV, work_id, now)
                if record.state is WorkState.QUEUED and record.handed_out_at_us is not None:
                    coming.append(record.handed_out_at_us + reclaim_ms * 1_000)
                elif record.state in (WorkState.STARTING, WorkState.ACTIVE):
                    assert record.deadline_us is not None
                    coming.append(record.deadline_us + 1)  # expires into the queue
            if coming:
                assert due is not None and due <= min(coming), "next_due_us is late"
            return
        oldest = min(available, key=lambda r: r.seq)
        assert got is oldest, "a poll hands out the oldest available item, if any"
        assert got.state is WorkState.QUEUED
        assert (got.handed_out_to, got.handed_out_at_us) == (worker, now)

    @rule(index=st.integers(0, 2))
    def ack(self, index: int) -> None:
        STEPS["steps"] += 1
        work_id = self._item(index)
        record = self.book.record(ENV, work_id, self.now_us)
        before = dataclasses.asdict(record)
        try:
            self.book.ack(ENV, work_id, self.now_us)
        except ApiError as error:
            assert error.status == 409
            assert before["state"] is not WorkState.QUEUED
            assert dataclasses.asdict(record) == before
        else:
            assert before["state"] is WorkState.QUEUED and record.state is WorkState.STARTING

    @rule(index=st.integers(0, 2), force=st.booleans(), roll=st.integers(0, 3))
    def stop(self, index: int, force: bool, roll: int) -> None:
        STEPS["steps"] += 1
        if roll:  # stops are final: keep them rare so leases live long enough to matter
            return
        work_id = self._item(index)
        record = self.book.record(ENV, work_id, self.now_us)
        before = dataclasses.asdict(record)
        try:
            self.book.stop(ENV, work_id, self.now_us, force=force)
        except ApiError as error:
            assert error.status == 409 and before["state"] is WorkState.STOPPED
            assert dataclasses.asdict(record) == before
            return
        was = before["state"]
        if force or was is WorkState.QUEUED:
            assert record.state is WorkState.STOPPED
        else:
            assert record.state is WorkState.STOPPING

    # ------------------------------------------------------------ heartbeats

    def _beat(self, worker: str, work_id: str, expected: str, desired: int | None) -> None:
        STEPS["heartbeats"] += 1
        now = self.now_us
        record = self.book.record(ENV, work_id, now)  # settles: expiry comes first
        before = dataclasses.asdict(record)
        stored = record.last_heartbeat
        own = self.seen.get((worker, work_id), [])
        hold_deadline = self.holds[work_id].get(worker)
        renewing_own = bool(own) and expected == own[-1]
        matches = expected == stored or (expected == NO_HEARTBEAT and stored is None)
        try:
            answer = self.book.heartbeat(ENV, work_id, now, expected, desired)
        except PreconditionFailed as refused:
            STEPS["refused_412"] += 1
            assert dataclasses.asdict(record) == before, "a 412 changes nothing"
            assert record.state in LIVE and not matches
            current = refused.current_state
            assert (current.last_heartbeat, current.state) == (stored, record.state)
            assert current.lease_extended is False
            self.holds[work_id].pop(worker, None)
            return
        was = before["state"]
        if was in LIVE:
            assert matches, "a stale echo never extends"
        if renewing_own and hold_deadline is not None and hold_deadline < now:
            assert not (answer.lease_extended and answer.state is WorkState.ACTIVE), (
                "an expired lease is never renewed by its old holder"
            )
        if not answer.lease_extended:
            assert answer.state is WorkState.STOPPED and was is WorkState.STOPPED
            assert answer.last_heartbeat == (stored or "")
            self.holds[work_id].pop(worker, None)
            return
        issued = parse_timestamp(answer.last_heartbeat)
        assert issued > self.last_issued_us[work_id], "last_heartbeat strictly increases"
        assert answer.last_heartbeat == format_timestamp(issued)
        self.last_issued_us[work_id] = issued
        self.seen.setdefault((worker, work_id), []).append(answer.last_heartbeat)
        lo, hi = CONFIG.min_ttl_seconds, CONFIG.max_ttl_seconds
        if desired is not None:
            assert answer.ttl_seconds == min(max(desired, lo), hi)
        if answer.state is WorkState.ACTIVE:
            if was is not WorkState.ACTIVE:
                STEPS["claims_won"] += 1
            self.holds[work_id][worker] = now + answer.ttl_seconds * US
            assert record.deadline_us == now + answer.ttl_seconds * US, "lease ends at now + TTL"
        else:
            assert answer.state is WorkState.STOPPING  # a shutdown signal: the worker lets go
            self.holds[work_id].pop(worker, None)

    @rule(worker=workers, index=st.integers(0, 2), desired=desired_ttls)
    def heartbeat_claim(self, worker: str, index: int, desired: int | None) -> None:
        STEPS["steps"] += 1
        self._beat(worker, self._item(index), NO_HEARTBEAT, desired)

    @rule(worker=workers, index=st.integers(0, 2), desired=desired_ttls)
    def heartbeat_echo_last_seen(self, worker: str, index: int, desired: int | None) -> None:
        STEPS["steps"] += 1
        work_id = self._item(index)
        own = self.seen.get((worker, work_id))
        if own:
            self._beat(worker, work_id, own[-1], desired)

    @rule(worker=workers, index=st.integers(0, 2), pick=st.integers(0, 100))
    def heartbeat_echo_older(self, worker: str, index: int, pick: int) -> None:
        """Echo one of this worker's older values, or one the server never issued."""
        STEPS["steps"] += 1
        work_id = self._item(index)
        older = self.seen.get((worker, work_id), [])[:-1]
        never_issued = format_timestamp(T0 - 1)
        choices = [*older, never_issued]
        self._beat(worker, work_id, choices[pick % len(choices)], None)

    @rule(worker=workers, other=workers, index=st.integers(0, 2), pick=st.integers(0, 100))
    def heartbeat_echo_another_workers_value(
        self, worker: str, other: str, index: int, pick: int
    ) -> None:
        """Echo a value another worker saw.

        Its *current* value on an active lease is left out: echoing it is a
        takeover the server cannot tell from a renewal (see
        ``test_echoing_a_value_learned_from_a_412_also_makes_two_holders``).
        """
        STEPS["steps"] += 1
        work_id = self._item(index)
        theirs = self.seen.get((other, work_id), [])
        if other == worker or not theirs:
            return
        value = theirs[pick % len(theirs)]
        record = self.book.record(ENV, work_id, self.now_us)
        if value == record.last_heartbeat and record.state is WorkState.ACTIVE:
            STEPS["skipped_takeovers"] += 1
            return
        self._beat(worker, work_id, value, None)

    # ------------------------------------------------------------ invariants

    @invariant()
    def single_holder_and_monotone_states(self) -> None:
        for work_id in self.items:
            record = self.book.record(ENV, work_id, self.now_us)
            current = {w: d for w, d in self.holds[work_id].items() if d >= self.now_us}
            assert len(current) <= 1, f"two holders of {work_id}: {current}"
            for worker in current:
                assert record.state in (WorkState.ACTIVE, WorkState.STOPPING, WorkState.STOPPED)
                if record.state is WorkState.ACTIVE:
                    assert record.last_heartbeat == self.seen[(worker, work_id)][-1]
            if record.last_heartbeat is not None:
                assert parse_timestamp(record.last_heartbeat) == self.last_issued_us[work_id]
            was = self.last_state[work_id]
            if was is WorkState.STOPPED:
                assert record.state is WorkState.STOPPED, "stopped stays stopped"
            if was is WorkState.STOPPING:
                assert record.state in (WorkState.STOPPING, WorkState.STOPPED)
            self.last_state[work_id] = record.state

    @invariant()
    def stats_counters_match_the_records(self) -> None:
        # The book keeps counters for stats; recounting the settled records must agree.
        stats = self.book.stats(ENV, self.now_us)
        records = list(self.book.records(ENV))
        expected = queue_stats(records, [], self.now_us)
        assert (stats.depth, stats.pending, stats.oldest_queued_at_us) == (
            expected.depth,
            expected.pending,
            expected.oldest_queued_at_us,
        )
        assert self.book.queued_count(ENV) == expected.depth + expected.pending


def test_lease_book_state_machine() -> None:
    before = dict(STEPS)
    run_state_machine_as_test(LeaseBookMachine, settings=SETTINGS)
    ran = {key: STEPS[key] - before[key] for key in STEPS}
    print(f"\nlease state machine: {ran['steps']} hypothesis steps, {ran}")
    # max_examples * stateful_step_count is the ceiling; hypothesis runs fewer
    assert ran["steps"] >= 2_000
    assert ran["claims_won"] > 0 and ran["refused_412"] > 0


# ------------------------------------------------------------------ what is left out, and why


def test_unconditional_heartbeat_breaks_single_holder_safety() -> None:
    """Why leasekit's client never omits expected_last_heartbeat.

    Worker A's lease expires and the item is claimed by B. A, not knowing,
    sends an unconditional heartbeat: the server cannot refuse it (there is
    nothing to compare) and extends the lease for A. Both now hold a 200
    ``active`` answer with a deadline in the future.
    """
    book = LeaseBook(CONFIG)
    book.add_environment(ENV)
    work_id = book.enqueue(ENV, T0).work_id
    a = book.heartbeat(ENV, work_id, T0, NO_HEARTBEAT)
    later = T0 + TTL_US + 1  # A's lease expired (A paused, say)
    b = book.heartbeat(ENV, work_id, later, NO_HEARTBEAT)
    assert b.state is WorkState.ACTIVE and b.lease_extended  # B holds until later + TTL
    a_again = book.heartbeat(ENV, work_id, later + 1, None)
    assert a_again.state is WorkState.ACTIVE and a_again.lease_extended
    # two workers, each holding a current active 200: the invariant the machine checks fails
    holders = {"A": later + 1 + a_again.ttl_seconds * US, "B": later + b.ttl_seconds * US}
    assert all(deadline >= later + 2 for deadline in holders.values())
    assert a.last_heartbeat < b.last_heartbeat < a_again.last_heartbeat
    # the conditional echo of A's own value would have been refused
    book2 = LeaseBook(CONFIG)
    book2.add_environment(ENV)
    work2 = book2.enqueue(ENV, T0).work_id
    a2 = book2.heartbeat(ENV, work2, T0, NO_HEARTBEAT)
    book2.heartbeat(ENV, work2, later, NO_HEARTBEAT)
    with pytest.raises(PreconditionFailed) as refused:
        book2.heartbeat(ENV, work2, later + 1, a2.last_heartbeat)
    assert refused.value.current_state.state is WorkState.ACTIVE


def test_echoing_a_value_learned_from_a_412_also_makes_two_holders() -> None:
    """A 412's ``current_state.last_heartbeat`` is the holder's current value.

    A client that echoes it (adopting any 412 blindly) renews someone else's
    lease: the server cannot tell it from the holder. LeasekitPolicy adopts a
    412's value only when it can prove the value was its own write; this is
    why those conditions matter.
    """
    book = LeaseBook(CONFIG)
    book.add_environment(ENV)
    work_id = book.enqueue(ENV, T0).work_id
    holder = book.heartbeat(ENV, work_id, T0, NO_HEARTBEAT)
    with pytest.raises(PreconditionFailed) as refused:
        book.heartbeat(ENV, work_id, T0 + 1, NO_HEARTBEAT)  # another worker tries to claim
    leaked = refused.value.current_state.last_heartbeat
    assert leaked == holder.last_heartbeat
    thief = book.heartbeat(ENV, work_id, T0 + 2, leaked)
    assert thief.state is WorkState.ACTIVE and thief.lease_extended
    # the holder still has its deadline ahead: two holders; it learns only at its next beat
    assert T0 + holder.ttl_seconds * US > T0 + 2
