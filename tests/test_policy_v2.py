"""LeasekitPolicy v2 (issue 10): timeouts from the round trip, retries spaced over
the remaining window, the load budget, overload answers, the claim argument,
and part C's safety under a network that suddenly becomes slower."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_support import Play, ok
from test_policy_leasekit import ENV, SAFETY, T0, US, _safety_run

from leasekit.lease import LeaseBook, LeaseConfig
from leasekit.policy import EndReason, FixedPolicy, LeasekitPolicy, Outcome, Result, SdkPolicy, Send
from leasekit.protocol import NO_HEARTBEAT, PreconditionFailed, WorkState

TTL = 10


def v2(seed: int = 1, **options: object) -> LeasekitPolicy:
    options.setdefault("ttl_seconds", TTL)
    return LeasekitPolicy(rng=random.Random(seed), **options)  # type: ignore[arg-type]


def _answered(play: Play, rtt_s: float) -> Play:
    return play.result(Outcome.OK, after=rtt_s, answer=ok(ttl=TTL, value=f"hb{len(play.sends)}"))


# ----------------------------------------------------------------- timeouts


def test_the_timeout_starts_conservative_then_follows_the_measured_round_trip() -> None:
    play = Play(v2())
    assert play.send.timeout_s == pytest.approx(1.0), "before any sample: a tenth of the TTL"
    for _ in range(5):
        _answered(play, 0.002)
    assert play.send.timeout_s == pytest.approx(0.2), "a 2 ms loopback: the 0.2 s floor"
    slow = Play(v2(rto_min_s=0.01))
    for _ in range(20):
        _answered(slow, 0.5)
    policy = slow.policy
    assert isinstance(policy, LeasekitPolicy) and policy.srtt_s == pytest.approx(0.5)
    assert slow.send.timeout_s == pytest.approx(policy.srtt_s + 4 * policy.rttvar_s)
    assert slow.send.timeout_s < 0.6
    capped = Play(v2())
    for _ in range(5):
        _answered(capped, 6.0)
    assert capped.send.timeout_s <= TTL / 4, "the ceiling: a quarter of the TTL"


def test_a_fixed_attempt_timeout_switches_the_estimate_off() -> None:
    play = Play(v2(attempt_timeout_s=0.7))
    for _ in range(3):
        _answered(play, 0.002)
    assert play.send.timeout_s == 0.7


def test_timeouts_in_a_row_back_off_within_the_window_and_a_sample_resets_them() -> None:
    play = _answered(_answered(Play(v2()), 0.002), 0.002)
    timeouts = []
    while isinstance(play.action, Send) and len(timeouts) < 6:
        timeouts.append(play.send.timeout_s)
        play.timeout()
    assert timeouts[1] > timeouts[0] == pytest.approx(0.2), "a slower network may be the cause"
    assert max(timeouts) < 1.0, "but never beyond the attempt's share of the window"
    _answered(play, 0.002)
    assert play.send.timeout_s == pytest.approx(0.2)


# ----------------------------------------------------------------- spacing and budget


@pytest.mark.parametrize("seed", range(10))
def test_lost_answers_get_as_many_attempts_as_the_budget_allows_before_the_deadline(
    seed: int,
) -> None:
    play = _answered(_answered(Play(v2(seed)), 0.002), 0.002)
    policy = play.policy
    deadline = policy.deadline
    assert deadline is not None
    first = len(play.sends)
    while isinstance(play.action, Send):
        send = play.send
        assert send.at < deadline and send.at + send.timeout_s <= deadline + 1e-9
        play.timeout()
    assert play.stop.reason is EndReason.ASSUMED_LOST
    retries = play.sends[first - 1 :]
    # v1 fit about four attempts in this window; the budget is 15 per TTL,
    # two of which (the last success and the one before) still count
    assert len(retries) >= 12
    assert retries[-1].at + retries[-1].timeout_s == pytest.approx(deadline)


def test_a_short_window_packs_retries_closer_than_a_long_one() -> None:
    def first_gap(ttl: int) -> float:
        play = Play(v2(ttl_seconds=ttl, jitter_fraction=0.0))
        play.result(Outcome.OK, after=0.002, answer=ok(ttl=ttl))
        send = play.send
        play.timeout()
        return play.send.at - (send.at + send.timeout_s)

    assert first_gap(10) < first_gap(90)


@pytest.mark.parametrize("cap", [6, 15])
def test_no_ttl_window_holds_more_requests_than_the_budget(cap: int) -> None:
    # a dead server that refuses at once: the worst case for request rate
    play = Play(v2(max_requests_per_ttl=cap, ttl_seconds=30))
    play.result(Outcome.OK, after=0.002, answer=ok(ttl=30))
    while isinstance(play.action, Send):
        play.result(Outcome.TRANSIENT, after=0.001)
    times = [send.at for send in play.sends]
    for start in times:
        assert sum(1 for t in times if start <= t < start + 30) <= cap


def test_retry_after_is_honoured_and_overload_backs_off_harder_than_silence() -> None:
    def next_gap(status: int | None, retry_after_s: float | None = None) -> float:
        play = Play(v2(jitter_fraction=0.0))
        play.result(Outcome.OK, after=0.002, answer=ok(ttl=TTL))
        send = play.send
        ended = send.at + 0.002
        action = play.policy.observe(
            Result(Outcome.TRANSIENT, send.at, ended, status=status, retry_after_s=retry_after_s)
        )
        assert isinstance(action, Send)
        return action.at - ended

    silence = next_gap(None)  # a connection error: no answer at all
    assert next_gap(529) >= 2 * silence * 0.999
    assert next_gap(429, retry_after_s=3.0) >= 3.0
    assert next_gap(429, retry_after_s=0.0) >= 2 * silence * 0.999


def test_a_retry_after_beyond_the_deadline_gives_the_lease_up_at_once() -> None:
    play = Play(v2()).result(Outcome.OK, after=0.002, answer=ok(ttl=TTL))
    send = play.send
    result = Result(Outcome.TRANSIENT, send.at, send.at + 0.002, status=503, retry_after_s=60.0)
    stop = play.policy.observe(result)
    assert not isinstance(stop, Send) and stop.reason is EndReason.ASSUMED_LOST


def test_the_v1_parameter_set_is_reachable_and_sends_what_v1_sent() -> None:
    from leasekit.policy import make_policy

    policy = make_policy("leasekit:v1,ttl_seconds=10", rng=random.Random(1))
    assert isinstance(policy, LeasekitPolicy)
    play = Play(policy).result(Outcome.OK, after=0.002, answer=ok(ttl=TTL))
    assert play.send.timeout_s == 1.0
    play.timeout()
    assert play.send.timeout_s == 1.0, "v1 does not adapt"


# ----------------------------------------------------------------- the lost claim


def _book() -> tuple[LeaseBook, str]:
    book = LeaseBook(LeaseConfig(default_ttl_seconds=TTL, min_ttl_seconds=1))
    book.add_environment(ENV)
    return book, book.enqueue(ENV, T0).work_id


def _at(seconds: float) -> int:
    return T0 + round(seconds * US)


def test_a_412_to_a_claim_is_not_adopted_because_another_poller_may_have_claimed() -> None:
    """The unsafe side: the worker's claim never reached the server; a second
    worker, handed the same unacknowledged item again (reclaim), claimed it in
    the ack-then-claim window. The 412 the worker then meets looks exactly like
    the one after a lost answer (active, a value it never saw), but adopting it
    would make two holders."""
    book, work_id = _book()
    assert book.poll(ENV, _at(0.0), worker_id="first") is not None
    # reclaim after 0 ms: the same item is handed to a second worker
    assert book.poll(ENV, _at(0.1), worker_id="second", reclaim_older_than_ms=0) is not None
    book.ack(ENV, work_id, _at(0.2))  # the first worker's ack wins
    policy = v2()
    claim = policy.start(1.0)
    assert isinstance(claim, Send) and claim.expected_last_heartbeat == NO_HEARTBEAT
    # the claim is lost on its way; the second worker claims the starting item
    rival = book.heartbeat(ENV, work_id, _at(0.3), NO_HEARTBEAT, None)
    action = policy.observe(Result(Outcome.TIMEOUT, claim.at, claim.at + claim.timeout_s))
    assert isinstance(action, Send) and action.expected_last_heartbeat == NO_HEARTBEAT
    with pytest.raises(PreconditionFailed) as refused:
        book.heartbeat(ENV, work_id, _at(action.at), NO_HEARTBEAT, None)
    state = refused.value.current_state
    assert state.state is WorkState.ACTIVE and state.last_heartbeat == rival.last_heartbeat
    end = policy.observe(
        Result(Outcome.PRECONDITION_FAILED, action.at, action.at + 0.002, current_state=state)
    )
    assert not isinstance(end, Send) and end.reason is EndReason.LOST
    assert "claim" in end.detail
    assert policy.held is False and policy.last_heartbeat == NO_HEARTBEAT


def test_a_412_to_a_claim_may_come_from_a_paused_worker_that_acked_in_an_earlier_round() -> None:
    """The unsafe side again, with well-behaved workers only: a worker acked the
    item, paused past the acknowledgement's TTL (the item went back to the
    queue), and its claim arrives while ours, sent after our own poll and ack,
    is lost on the way. Only the 412's stored value is visible to us."""
    book, work_id = _book()
    assert book.poll(ENV, _at(0.0), worker_id="paused") is not None
    book.ack(ENV, work_id, _at(0.0))  # then the paused worker stops for a while
    assert book.record(ENV, work_id, _at(TTL + 0.5)).state is WorkState.QUEUED
    assert book.poll(ENV, _at(TTL + 1.0), worker_id="ours") is not None
    book.ack(ENV, work_id, _at(TTL + 1.0))
    policy = v2()
    claim = policy.start(TTL + 1.0)
    assert isinstance(claim, Send)
    woken = book.heartbeat(ENV, work_id, _at(TTL + 1.1), NO_HEARTBEAT, None)  # it wakes up
    retry = policy.observe(Result(Outcome.TIMEOUT, claim.at, claim.at + claim.timeout_s))
    assert isinstance(retry, Send)
    with pytest.raises(PreconditionFailed) as refused:
        book.heartbeat(ENV, work_id, _at(retry.at), NO_HEARTBEAT, None)
    state = refused.value.current_state
    assert state.state is WorkState.ACTIVE and state.last_heartbeat == woken.last_heartbeat
    end = policy.observe(
        Result(Outcome.PRECONDITION_FAILED, retry.at, retry.at + 0.002, current_state=state)
    )
    assert not isinstance(end, Send) and end.reason is EndReason.LOST
    # the paused worker really holds it: its renewal with its value succeeds
    assert book.heartbeat(ENV, work_id, _at(retry.at + 0.01), woken.last_heartbeat, None)


def test_a_claim_whose_answer_was_lost_costs_the_item_one_ttl_then_it_returns() -> None:
    """The cost side: the claim was applied, its answer lost; the retry's 412 ends
    the lease as lost, the item is held by nobody until its TTL runs out, then
    it is queued again and another worker can take it."""
    book, work_id = _book()
    assert book.poll(ENV, _at(0.0), worker_id="first") is not None
    book.ack(ENV, work_id, _at(0.0))
    policy = v2()
    claim = policy.start(0.0)
    assert isinstance(claim, Send)
    book.heartbeat(ENV, work_id, _at(0.001), NO_HEARTBEAT, claim.desired_ttl_seconds)
    retry = policy.observe(Result(Outcome.TIMEOUT, claim.at, claim.at + claim.timeout_s))
    assert isinstance(retry, Send)
    with pytest.raises(PreconditionFailed) as refused:
        book.heartbeat(ENV, work_id, _at(retry.at), NO_HEARTBEAT, None)
    end = policy.observe(
        Result(
            Outcome.PRECONDITION_FAILED,
            retry.at,
            retry.at + 0.002,
            current_state=refused.value.current_state,
        )
    )
    assert not isinstance(end, Send) and end.reason is EndReason.LOST
    assert book.record(ENV, work_id, _at(TTL - 0.01)).state is WorkState.ACTIVE
    assert book.record(ENV, work_id, _at(TTL + 0.01)).state is WorkState.QUEUED
    assert book.poll(ENV, _at(TTL + 0.01), worker_id="second") is not None


# ----------------------------------------------------------------- part C, slower network

SLOWER = {"runs": 0, "timeouts_after_switch": 0}


def test_a_slow_network_that_suddenly_becomes_slower_never_makes_v2_believe_past_its_deadline() -> (
    None
):
    """Part C's property (the policy never believes in a lease the server could
    have given away) while the adaptive timeout is at its worst: it has learnt
    a round trip, then every trip becomes 2x to 40x longer at once."""
    before = dict(SAFETY)

    @given(
        data=st.data(),
        seed=st.integers(0, 2**16),
        rate=st.sampled_from([1 - 1e-4, 1.0, 1 + 1e-4]),
        base_s=st.floats(0.005, 0.3),
        factor=st.floats(2.0, 40.0),
        switch_s=st.floats(5.0, 60.0),
    )
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def run(
        data: st.DataObject,
        seed: int,
        rate: float,
        base_s: float,
        factor: float,
        switch_s: float,
    ) -> None:
        def network_at(data: st.DataObject, t: float) -> tuple[float, float, int, int]:
            scale = base_s * (factor if t >= switch_s else 1.0)
            d_req = scale * data.draw(st.floats(0.3, 1.0))
            d_ans = scale * data.draw(st.floats(0.3, 1.0))
            return d_req, d_ans, data.draw(st.integers(0, 19)), data.draw(st.integers(0, 4))

        policy = LeasekitPolicy(ttl_seconds=10, rng=random.Random(seed))
        _safety_run(policy, data, rate, network_at=network_at)
        SLOWER["runs"] += 1

    run()
    ran = {key: SAFETY[key] - before[key] for key in SAFETY}
    assert ran["runs"] >= 100 and ran["beliefs_checked"] > 1000
    assert ran["adoptions"] > 0, "lost answers after the slowdown were adopted"


def test_retries_are_jittered_so_a_fleet_does_not_retry_in_step() -> None:
    def retry_at(seed: int) -> float:
        play = Play(v2(seed)).result(Outcome.OK, after=0.002, answer=ok(ttl=TTL))
        return play.timeout().send.at

    times = {round(retry_at(seed), 9) for seed in range(20)}
    assert len(times) == 20
    no_jitter = {
        round(Play(v2(s, jitter_fraction=0.0)).ok(ttl=TTL).timeout().send.at, 9) for s in range(5)
    }
    assert len(no_jitter) == 1


@pytest.mark.parametrize("name", ["sdk", "fixed"])
def test_the_imposed_deadline_is_anchored_at_the_send_for_every_policy(name: str) -> None:
    """issue 8: a driver's ``enforce_deadline`` holds SdkPolicy and FixedPolicy to
    the send time of their last success, not to the receive time they keep."""
    policy = SdkPolicy(rng=random.Random(1)) if name == "sdk" else FixedPolicy(5.0)
    play = Play(policy).result(Outcome.OK, after=2.0, answer=ok(ttl=TTL))
    sent = play.sends[0].at
    assert policy.local_deadline(enforce_deadline=True) == pytest.approx(sent + TTL * (1 - 1e-4))
    assert policy.limit(enforce_deadline=True) == pytest.approx(sent + TTL * (1 - 1e-4))
    assert policy.limit() == math.inf, "alone, the policy keeps its own rules"
    late = sent + TTL  # past the send-anchored deadline, before the receive-anchored one
    stop = policy.sending(play.send, late, enforce_deadline=True)
    assert not isinstance(stop, Send) and stop.reason is EndReason.ASSUMED_LOST
