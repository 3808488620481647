"""LeasekitPolicy rule by rule (docs/protocol.md §3 (safety arguments)), FixedPolicy, make_policy.

Plus one end-to-end check: both SdkPolicy and LeasekitPolicy against a real
LeaseBook, over a tiny hand-written network (fixed one-way delay, one lost
answer), with a competing worker polling for the same item.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from policy_support import TRIP_S, Play, ok

from leasekit.lease import LeaseBook, LeaseConfig
from leasekit.policy import (
    LEASEKIT_PRESETS,
    EndReason,
    FixedPolicy,
    HeartbeatPolicy,
    LeasekitPolicy,
    Outcome,
    Result,
    SdkPolicy,
    Send,
    Stop,
    make_policy,
)
from leasekit.protocol import (
    NO_HEARTBEAT,
    HeartbeatAnswer,
    LeaseState,
    PreconditionFailed,
    WorkState,
)

RHO = 1e-4


def leasekit(seed: int = 1, **options: object) -> LeasekitPolicy:
    options.setdefault("ttl_seconds", 30)
    return LeasekitPolicy(rng=random.Random(seed), **options)  # type: ignore[arg-type]


def leasekit_v1(seed: int = 1, **options: object) -> LeasekitPolicy:
    """v1's parameter set (``leasekit:v1``): fixed timeouts, exponential retries."""
    return leasekit(seed, **{**LEASEKIT_PRESETS["v1"], **options})


# ----------------------------------------------------------------- schedule


@pytest.mark.parametrize("seed", range(20))
def test_beats_at_about_a_third_of_ttl_with_bounded_jitter_anchored_at_send_time(
    seed: int,
) -> None:
    slow = Play(leasekit(seed)).ok(ttl=30)
    sent = slow.sends[0].at
    assert 10 * 0.9 <= slow.send.at - sent <= 10 * 1.1
    # the same draw with a slower answer: same beat time, the anchor is the send
    fast = Play(leasekit(seed)).result(Outcome.OK, after=2.5, answer=ok(ttl=30))
    assert fast.send.at == pytest.approx(slow.send.at)


def test_jitter_spreads_beats() -> None:
    gaps = {round(Play(leasekit(seed)).ok(ttl=30).send.at, 6) for seed in range(20)}
    assert len(gaps) == 20, "workers do not beat in step"
    no_jitter = {Play(leasekit(seed, jitter_fraction=0.0)).ok(ttl=30).send.at for seed in range(5)}
    assert no_jitter == {1000.0 + 10.0}


def test_late_answer_sends_the_next_beat_at_once() -> None:
    play = Play(leasekit(jitter_fraction=0.0)).result(Outcome.OK, after=12.0, answer=ok(ttl=30))
    assert play.send.at == pytest.approx(1000.0 + 12.0), "never schedules in the past"


def test_asks_for_its_ttl_seconds() -> None:
    play = Play(leasekit(ttl_seconds=45)).ok(ttl=45).timeout().transient()
    assert {send.desired_ttl_seconds for send in play.sends} == {45}
    default = Play(LeasekitPolicy(rng=random.Random(1)))
    assert default.send.desired_ttl_seconds is None and default.policy.ttl_seconds == 90.0


def test_uses_the_granted_ttl_not_the_asked_one() -> None:
    play = Play(leasekit(ttl_seconds=30, jitter_fraction=0.0)).ok(ttl=60)  # clamped up
    assert play.policy.ttl_seconds == 60.0
    assert play.send.at == pytest.approx(1000.0 + 20.0)
    assert play.policy.deadline == pytest.approx(1000.0 + 60 * (1 - RHO))


@pytest.mark.parametrize(
    ("beat_fraction", "jitter_fraction"), [(0.95, 0.1), (0.91, 0.1), (0.99, 0.02)]
)
def test_refuses_a_schedule_whose_beat_could_fall_after_the_local_deadline(
    beat_fraction: float, jitter_fraction: float
) -> None:
    """Otherwise some beats land past the deadline and the lease is given up at once."""
    with pytest.raises(ValueError, match="beat_fraction"):
        LeasekitPolicy(beat_fraction=beat_fraction, jitter_fraction=jitter_fraction)
    with pytest.raises(ValueError, match="beat_fraction"):
        make_policy(f"leasekit:beat_fraction={beat_fraction},jitter_fraction={jitter_fraction}")
    LeasekitPolicy(beat_fraction=0.5, jitter_fraction=0.5)  # 0.75 of the TTL at most: fine


# ----------------------------------------------------------------- retries and timeouts


@pytest.mark.parametrize("failure", ["transient", "timeout"])
def test_v1_fast_exponential_retry_after_transient_or_timeout_capped(failure: str) -> None:
    policy = leasekit_v1(ttl_seconds=300, jitter_fraction=0.0, attempt_timeout_s=1.0)
    play = Play(policy).ok(ttl=300)
    delays = []
    for _ in range(7):
        send = play.send
        ended = send.at + (send.timeout_s if failure == "timeout" else TRIP_S)
        play.timeout() if failure == "timeout" else play.transient()
        delays.append(play.send.at - ended)
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0])
    # a success resets the backoff
    play.ok(ttl=300)
    send = play.send
    play.transient()
    assert play.send.at - (send.at + TRIP_S) == pytest.approx(0.5)


def test_v1_retry_jitter_is_bounded() -> None:
    for seed in range(30):
        play = Play(leasekit_v1(seed, ttl_seconds=300, attempt_timeout_s=1.0)).ok(ttl=300)
        for n in range(6):
            send = play.send
            play.transient()
            base = min(5.0, 0.5 * 2**n)
            assert base * 0.9 <= play.send.at - (send.at + TRIP_S) <= base * 1.1


@pytest.mark.parametrize(
    ("ttl", "timeout"), [(5, 1.0), (10, 1.0), (30, 3.0), (90, 9.0), (600, 10.0)]
)
def test_v1_attempt_timeout_is_a_tenth_of_ttl_between_1_and_10_s(ttl: int, timeout: float) -> None:
    play = Play(leasekit_v1(ttl_seconds=ttl)).ok(ttl=ttl)
    assert play.send.timeout_s == pytest.approx(timeout)
    explicit = Play(leasekit(ttl_seconds=ttl, attempt_timeout_s=0.25)).ok(ttl=ttl)
    assert explicit.send.timeout_s == 0.25


def test_local_deadline_is_send_time_of_last_success_plus_ttl_times_1_minus_rho() -> None:
    play = Play(leasekit()).result(Outcome.OK, after=3.0, answer=ok(ttl=30))
    first_sent = play.sends[0].at
    assert play.policy.deadline == pytest.approx(first_sent + 30 * (1 - RHO))
    drift = Play(leasekit(clock_drift=0.01)).ok(ttl=30)
    assert drift.policy.deadline == pytest.approx(1000.0 + 30 * 0.99)
    # a failure does not move it
    deadline = play.policy.deadline
    play.timeout()
    assert play.policy.deadline == deadline


def test_per_attempt_timeout_never_past_the_local_deadline_and_no_send_after_it() -> None:
    # beat at +10, then attempts of 3 s with retries 0.5, 1, 2, 4 s apart: the
    # fifth starts at +29.5 and is cut to end at the deadline (+29.997)
    policy = leasekit_v1(ttl_seconds=30, attempt_timeout_s=3.0, jitter_fraction=0.0)
    play = Play(policy).ok(ttl=30)
    deadline = policy.deadline
    assert deadline is not None
    while isinstance(play.action, Send):
        assert play.send.at < deadline
        assert play.send.at + play.send.timeout_s <= deadline + 1e-9
        play.timeout()
    assert play.stop.reason is EndReason.ASSUMED_LOST and "deadline" in play.stop.detail
    last = play.sends[-1]
    assert last.at == pytest.approx(1029.5)
    assert last.at + last.timeout_s == pytest.approx(deadline), "the last attempt is cut short"
    assert policy.held is False


def test_claim_given_up_after_one_ttl_without_an_answer() -> None:
    play = Play(leasekit(ttl_seconds=10), now=0.0)
    assert play.send.expected_last_heartbeat == NO_HEARTBEAT
    while isinstance(play.action, Send):
        assert play.send.at + play.send.timeout_s <= 10.0 + 1e-9
        assert play.send.expected_last_heartbeat == NO_HEARTBEAT
        play.transient()
    assert play.stop.reason is EndReason.ASSUMED_LOST and "claim" in play.stop.detail


# ----------------------------------------------------------------- endings


@pytest.mark.parametrize(
    ("state", "extended"),
    [(WorkState.STOPPING, True), (WorkState.STOPPED, False), (WorkState.ACTIVE, False)],
)
def test_shutdown_signals_end_heartbeating(state: WorkState, extended: bool) -> None:
    play = Play(leasekit()).ok(ttl=30).ok(ttl=30, state=state, extended=extended)
    assert play.stop.reason is EndReason.SHUTDOWN
    assert play.policy.held is False


def test_rejection_ends_heartbeating() -> None:
    play = Play(leasekit()).ok(ttl=30).result(Outcome.REJECTED, status=403)
    assert play.stop.reason is EndReason.REJECTED and "403" in play.stop.detail


# ----------------------------------------------------------------- adopting a self-inflicted 412


def _ambiguous_then_412(
    current: LeaseState | None, *, claim: bool = False, received_after: float = TRIP_S
) -> Play:
    """Success L ("L"), then a timeout and a transient (ambiguous), then a 412."""
    play = Play(leasekit(ttl_seconds=30))
    if not claim:
        play.ok(ttl=30, value="L")
    play.timeout().transient()
    play.result(
        Outcome.PRECONDITION_FAILED, current_state=current, status=412, after=received_after
    )
    return play


ADOPTABLE = LeaseState("L-prime", WorkState.ACTIVE, 20)


def test_adopts_a_self_inflicted_412_and_reanchors_at_the_earliest_ambiguous_send() -> None:
    play = _ambiguous_then_412(ADOPTABLE)
    policy = play.policy
    assert isinstance(policy, LeasekitPolicy) and policy.adoptions == 1
    first_ambiguous, second_ambiguous, refused = play.sends[1], play.sends[2], play.sends[3]
    assert first_ambiguous.at < second_ambiguous.at < refused.at
    renew = play.send
    assert renew.expected_last_heartbeat == "L-prime"
    assert renew.at == pytest.approx(refused.at + TRIP_S), "renews at once"
    assert policy.ttl_seconds == 20.0
    assert policy.deadline == pytest.approx(first_ambiguous.at + 20 * (1 - RHO))
    assert renew.at + renew.timeout_s <= policy.deadline
    # and it goes on normally: the next success anchors at its own send
    play.ok(ttl=20)
    assert policy.deadline == pytest.approx(renew.at + 20 * (1 - RHO))


def test_adoption_works_more_than_once() -> None:
    play = _ambiguous_then_412(ADOPTABLE)
    play.ok(ttl=30, value="M").timeout()
    play.result(
        Outcome.PRECONDITION_FAILED,
        current_state=LeaseState("M-prime", WorkState.ACTIVE, 30),
        status=412,
    )
    assert play.send.expected_last_heartbeat == "M-prime"
    assert isinstance(play.policy, LeasekitPolicy) and play.policy.adoptions == 2


def test_must_not_adopt_without_an_ambiguous_attempt() -> None:
    play = Play(leasekit()).ok(ttl=30, value="L")
    play.result(Outcome.PRECONDITION_FAILED, current_state=ADOPTABLE, status=412)
    assert play.stop.reason is EndReason.LOST


def test_must_not_adopt_when_the_answer_came_after_the_local_deadline() -> None:
    play = Play(leasekit(ttl_seconds=30, attempt_timeout_s=1.0)).ok(ttl=30, value="L")
    deadline = play.policy.deadline
    assert deadline is not None
    play.timeout()
    late = deadline - play.send.at  # arrives exactly at the local deadline: too late
    play.result(Outcome.PRECONDITION_FAILED, current_state=ADOPTABLE, status=412, after=late)
    assert play.stop.reason is EndReason.LOST


def test_adopts_just_before_the_local_deadline() -> None:
    play = Play(leasekit(ttl_seconds=30, attempt_timeout_s=1.0)).ok(ttl=30, value="L")
    deadline = play.policy.deadline
    assert deadline is not None
    play.timeout()
    just = deadline - play.send.at - 1e-6
    current = LeaseState("L-prime", WorkState.ACTIVE, 30)
    play.result(Outcome.PRECONDITION_FAILED, current_state=current, status=412, after=just)
    assert isinstance(play.action, Send) and play.send.expected_last_heartbeat == "L-prime"


@pytest.mark.parametrize(
    "current",
    [
        LeaseState(None, WorkState.QUEUED, 30),
        LeaseState(None, WorkState.STARTING, 30),
        LeaseState("L-prime", WorkState.STARTING, 30),
        LeaseState(None, WorkState.ACTIVE, 30),
        LeaseState("L", WorkState.ACTIVE, 30),  # the stored value equals what it echoed
        None,
    ],
    ids=["queued", "starting", "starting-with-value", "null-value", "same-value", "no-state"],
)
def test_must_not_adopt_unless_active_with_a_different_stored_value(
    current: LeaseState | None,
) -> None:
    play = _ambiguous_then_412(current)
    assert play.stop.reason is EndReason.LOST
    assert isinstance(play.policy, LeasekitPolicy) and play.policy.adoptions == 0


def test_must_not_adopt_a_412_that_answered_a_claim() -> None:
    """Another poller may share a claim: a 412 to NO_HEARTBEAT proves nothing."""
    play = _ambiguous_then_412(ADOPTABLE, claim=True)
    assert all(send.expected_last_heartbeat == NO_HEARTBEAT for send in play.sends)
    assert play.stop.reason is EndReason.LOST


# ----------------------------------------------------------------- end to end with a real LeaseBook

US = 1_000_000
T0 = 1_790_000_000 * US
ENV = "env_e2e"
ONE_WAY_S = 0.05


@dataclass
class Run:
    end: Stop | Send
    ended_at: float
    holder_until: float
    """Until when the policy believed it held the lease (seconds)."""
    rival_claimed_at: float | None
    refusals: int
    book: LeaseBook
    work_id: str


def _run(policy: HeartbeatPolicy, *, lose_answer_of: int, until: float = 400.0) -> Run:
    """One worker runs ``policy``; a rival polls every second and claims what it gets.

    Each request takes ``ONE_WAY_S`` each way; the answer of attempt
    ``lose_answer_of`` is lost (the server applied the request). Times are
    seconds from T0 on one clock shared by client and server.
    """
    book = LeaseBook(LeaseConfig())  # default TTL 90 s
    book.add_environment(ENV)
    work_id = book.enqueue(ENV, T0).work_id
    assert book.poll(ENV, T0, worker_id="worker") is not None
    book.ack(ENV, work_id, T0)

    def at_us(seconds: float) -> int:
        return T0 + round(seconds * US)

    rival_next, rival_claimed_at = 1.0, None

    def rival_polls_until(seconds: float) -> None:
        nonlocal rival_next, rival_claimed_at
        while rival_claimed_at is None and rival_next <= seconds:
            if book.poll(ENV, at_us(rival_next), worker_id="rival") is not None:
                book.ack(ENV, work_id, at_us(rival_next))
                book.heartbeat(ENV, work_id, at_us(rival_next), NO_HEARTBEAT)
                rival_claimed_at = rival_next
            rival_next += 1.0

    action: Stop | Send = policy.start(0.0)
    refusals = 0
    holder_until = 0.0
    while isinstance(action, Send) and action.at < until:
        rival_polls_until(action.at)
        sent = action.at
        arrives = sent + ONE_WAY_S
        try:
            answer = book.heartbeat(
                ENV,
                work_id,
                at_us(arrives),
                action.expected_last_heartbeat,
                action.desired_ttl_seconds,
            )
            result = Result(Outcome.OK, sent, arrives + ONE_WAY_S, answer=answer, status=200)
        except PreconditionFailed as refused:
            refusals += 1
            result = Result(
                Outcome.PRECONDITION_FAILED,
                sent,
                arrives + ONE_WAY_S,
                current_state=refused.current_state,
                status=412,
            )
        if action.attempt == lose_answer_of:
            result = Result(Outcome.TIMEOUT, sent, sent + action.timeout_s)
        believed = policy.held  # it believed in the lease until this result came in
        action = policy.observe(result)
        if believed or policy.held:
            holder_until = result.received_at
    if isinstance(action, Send):  # still holding when the run ended
        assert policy.deadline is not None
        holder_until = min(until, policy.deadline)
    rival_polls_until(until)
    return Run(action, result.received_at, holder_until, rival_claimed_at, refusals, book, work_id)


def test_end_to_end_sdk_loses_and_leasekit_adopts_with_never_two_holders() -> None:
    sdk = _run(SdkPolicy(http_retries=2, rng=random.Random(5)), lose_answer_of=3)
    assert isinstance(sdk.end, Stop) and sdk.end.reason is EndReason.LOST
    assert sdk.refusals == 1 and sdk.ended_at < 150.0  # lost while the server still had it ours
    # the server kept the lease for the lost renewal's full TTL (90 s): the item sat idle
    assert sdk.rival_claimed_at is not None
    assert sdk.rival_claimed_at > 60.0 + 90.0
    assert sdk.holder_until == pytest.approx(sdk.ended_at)
    assert sdk.holder_until < sdk.rival_claimed_at, "never two holders"

    ours = _run(LeasekitPolicy(rng=random.Random(5)), lose_answer_of=3)
    policy_end = ours.end
    assert isinstance(policy_end, Send), f"still holding at the end of the run: {policy_end}"
    assert ours.refusals == 1
    record = ours.book.record(ENV, ours.work_id, T0 + 400 * US)
    assert record.state is WorkState.ACTIVE
    assert record.last_heartbeat == policy_end.expected_last_heartbeat
    assert ours.rival_claimed_at is None, "nobody else ever got the item"


def test_end_to_end_leasekit_counts_its_adoption() -> None:
    policy = LeasekitPolicy(ttl_seconds=30, rng=random.Random(9))
    run = _run(policy, lose_answer_of=4, until=200.0)
    assert policy.adoptions == 1 and isinstance(run.end, Send) and run.rival_claimed_at is None


# ----------------------------------------------------------------- FixedPolicy


def test_fixed_sends_every_interval_from_the_previous_send_whatever_the_answers() -> None:
    play = Play(FixedPolicy(10.0, ttl_seconds=30), now=0.0)
    play.ok(ttl=30).timeout().transient().result(Outcome.TRANSIENT, after=9.0)
    assert [send.at for send in play.sends] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert {send.timeout_s for send in play.sends} == {10.0}
    assert {send.desired_ttl_seconds for send in play.sends} == {30}
    assert play.sends[-1].expected_last_heartbeat == "hb1"
    assert play.policy.deadline == pytest.approx(TRIP_S + 30.0), "from the receive time"


def test_fixed_ends_only_on_412_rejection_or_shutdown() -> None:
    lost = Play(FixedPolicy(5.0)).ok(ttl=30).result(Outcome.PRECONDITION_FAILED, status=412)
    assert lost.stop.reason is EndReason.LOST
    rejected = Play(FixedPolicy(5.0)).result(Outcome.REJECTED, status=401)
    assert rejected.stop.reason is EndReason.REJECTED
    shutdown = Play(FixedPolicy(5.0)).ok(ttl=30, state=WorkState.STOPPING)
    assert shutdown.stop.reason is EndReason.SHUTDOWN
    kept = Play(FixedPolicy(5.0)).ok(ttl=0)
    assert kept.policy.ttl_seconds == 90.0
    with pytest.raises(ValueError, match="interval_s"):
        FixedPolicy(0)


# ----------------------------------------------------------------- make_policy


def test_make_policy_builds_each_policy_from_its_spec() -> None:
    sdk = make_policy("sdk")
    assert isinstance(sdk, SdkPolicy) and sdk.http_retries == 2
    assert isinstance(make_policy(" sdk:http_retries=0 "), SdkPolicy)
    ours = make_policy("leasekit:ttl_seconds=30,beat_fraction=0.25", rng=random.Random(1))
    assert isinstance(ours, LeasekitPolicy)
    assert ours.desired_ttl_seconds == 30 and isinstance(ours.desired_ttl_seconds, int)
    assert ours.beat_fraction == 0.25
    assert ours.parameters()["ttl_seconds"] == 30
    fixed = make_policy("fixed:interval=10")
    assert isinstance(fixed, FixedPolicy) and fixed.interval_s == 10.0


def test_make_policy_passes_the_rng_so_a_seed_reproduces() -> None:
    def beats(seed: int) -> list[float]:
        play = Play(make_policy("leasekit", rng=random.Random(seed)))
        return [play.ok(ttl=30).send.at for _ in range(3)]

    assert beats(4) == beats(4) != beats(5)


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("nope", "'nope'"),
        ("leasekit:ttl_seconds", "'ttl_seconds'"),
        ("leasekit:ttl_seconds=abc", "'abc'"),
        ("leasekit:ttl_seconds=30.5", "'ttl_seconds': not an integer: '30.5'"),
        ("fixed:interval=ten", "'interval': not a number: 'ten'"),
        ("leasekit:bogus=1", "bogus"),
        ("sdk:ttl_seconds=30", "ttl_seconds"),
        ("fixed", "interval"),
        ("fixed:interval=0", "interval"),
        ("leasekit:beat_fraction=2", "beat_fraction"),
    ],
)
def test_make_policy_bad_spec_is_a_value_error_naming_the_part(spec: str, names: str) -> None:
    with pytest.raises(ValueError) as caught:
        make_policy(spec)
    assert names in str(caught.value)


# ----------------------------------------------------------------- part C as a property

SAFETY = {"runs": 0, "adoptions": 0, "rival_claims": 0, "beliefs_checked": 0}
SAFETY_CONFIG = LeaseConfig(default_ttl_seconds=10, min_ttl_seconds=5, max_ttl_seconds=60)

delays_s = st.one_of(st.floats(0.0, 0.3), st.floats(0.3, 4.0))
networks = st.tuples(delays_s, delays_s, st.integers(0, 9), st.integers(0, 4))
"""Per attempt: request delay, answer delay, request lost if 0, answer lost if 0."""


def _safety_run(
    policy: HeartbeatPolicy,
    data: st.DataObject,
    rate: float = 1.0,
    until_s: float = 90.0,
    network_at: Callable[[st.DataObject, float], tuple[float, float, int, int]] | None = None,
) -> None:
    """A worker runs ``policy`` over a random network; a rival polls every second
    (reclaim 0), claims what it gets, and renews every two seconds.

    The worker's clock runs at ``rate`` client seconds per server second (the
    event queue runs on server time, the policy sees client times).

    Checked at every event: whenever the policy believes it holds the lease
    (``held`` and before its local ``deadline``), the server stores a value
    the policy wrote and the server's own deadline is not earlier. Every
    adopted value was written by the policy.
    """
    book = LeaseBook(SAFETY_CONFIG)
    book.add_environment(ENV)
    work_id = book.enqueue(ENV, T0).work_id
    writer: dict[str, str] = {}

    def at_us(seconds: float) -> int:
        return T0 + round(seconds * US)

    def beat(who: str, t: float, expected: str, ttl: int | None) -> HeartbeatAnswer:
        answer = book.heartbeat(ENV, work_id, at_us(t), expected, ttl)
        if answer.lease_extended:
            writer[answer.last_heartbeat] = who
        return answer

    events: list[tuple[float, int, str, object]] = []
    order = iter(range(10**9))

    now = 0.0

    def schedule(t: float, kind: str, payload: object = None) -> None:
        assert t >= now, f"{kind} scheduled in the past"
        heapq.heappush(events, (t, next(order), kind, payload))

    action = policy.start(0.0)
    assert isinstance(action, Send)
    schedule(action.at / rate, "send", action)
    schedule(0.5, "rival", None)
    rival_value: str | None = None
    adoptions = 0
    while events:
        t, _, kind, payload = heapq.heappop(events)
        now = t
        if t > until_s:
            break
        if kind == "send":
            send = payload
            assert isinstance(send, Send)
            d_req, d_ans, lose_req, lose_ans = (
                data.draw(networks) if network_at is None else network_at(data, t)
            )
            answered = lose_req != 0 and lose_ans != 0 and d_req + d_ans < send.timeout_s / rate
            if not answered:  # the client times out, whatever the server does
                timeout_at = send.at + send.timeout_s
                result = Result(Outcome.TIMEOUT, send.at, timeout_at)
                schedule(max(t, timeout_at / rate), "result", result)
            if lose_req != 0:  # the request reaches the server, maybe after the timeout
                schedule(t + d_req, "arrive", (send, d_ans, answered))
        elif kind == "arrive":
            send, d_ans, answered = payload  # type: ignore[misc]
            try:
                answer = beat("policy", t, send.expected_last_heartbeat, send.desired_ttl_seconds)
                result = Result(Outcome.OK, send.at, (t + d_ans) * rate, answer=answer)
            except PreconditionFailed as refused:
                result = Result(
                    Outcome.PRECONDITION_FAILED,
                    send.at,
                    (t + d_ans) * rate,
                    current_state=refused.current_state,
                )
            if answered:
                schedule(t + d_ans, "result", result)
        elif kind == "result":
            assert isinstance(payload, Result)
            action = policy.observe(payload)
            if isinstance(policy, LeasekitPolicy) and policy.adoptions > adoptions:
                adoptions = policy.adoptions
                assert writer.get(policy.last_heartbeat) == "policy", "adopted a foreign value"
            if isinstance(action, Send):
                schedule(max(t, action.at / rate), "send", action)
        else:  # the rival
            try:
                if rival_value is None:
                    if book.poll(ENV, at_us(t), worker_id="rival", reclaim_older_than_ms=0):
                        book.ack(ENV, work_id, at_us(t))
                        rival_value = beat("rival", t, NO_HEARTBEAT, None).last_heartbeat
                        SAFETY["rival_claims"] += 1
                else:
                    rival_value = beat("rival", t, rival_value, None).last_heartbeat
            except PreconditionFailed:
                rival_value = None
            schedule(t + (1.0 if rival_value is None else 2.0), "rival", None)
        deadline = policy.deadline
        if policy.held and deadline is not None and t * rate < deadline:
            SAFETY["beliefs_checked"] += 1
            record = book.record(ENV, work_id, at_us(t))
            assert record.state is WorkState.ACTIVE, f"believes at {t:.3f} s, server {record.state}"
            assert writer.get(record.last_heartbeat or "") == "policy", "believes a rival's lease"
            # 2 us: the rounding of the clock conversion, not the policy
            assert record.deadline_us is not None
            assert record.deadline_us >= at_us(deadline / rate) - 2, (
                "the local deadline is after the server's"
            )
    SAFETY["runs"] += 1
    SAFETY["adoptions"] += adoptions
    target(float(adoptions), label="adoptions")  # steer the search toward adoptions


def test_leasekit_policy_never_believes_in_a_lease_the_server_gave_away() -> None:
    """Part C, with the client clock off by up to rho (the policy's clock_drift)."""
    before = dict(SAFETY)

    @given(
        data=st.data(),
        seed=st.integers(0, 2**16),
        rate=st.sampled_from([1 - RHO, 1.0, 1 + RHO]),
    )
    # Derandomized, no example database: the same 200 networks every run (the
    # search is steered by target(), and with a database it drifts run to run).
    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def run(data: st.DataObject, seed: int, rate: float) -> None:
        _safety_run(LeasekitPolicy(ttl_seconds=10, rng=random.Random(seed)), data, rate)

    run()
    ran = {key: SAFETY[key] - before[key] for key in SAFETY}
    print(f"\npart C property: {ran}")
    # the property was exercised: leases were lost to the rival, and 412s adopted
    assert ran["runs"] >= 100 and ran["rival_claims"] > 0 and ran["adoptions"] > 0


@pytest.mark.parametrize("answer_trip_s", [0.0, 0.5, 2.0])
def test_local_deadline_is_never_after_the_servers_and_the_sdks_is_by_the_answer_trip(
    answer_trip_s: float,
) -> None:
    """Part C's first argument on a real LeaseBook: one claim, a slow answer."""
    for policy in (LeasekitPolicy(rng=random.Random(1)), SdkPolicy(rng=random.Random(1))):
        book = LeaseBook(SAFETY_CONFIG)
        book.add_environment(ENV)
        work_id = book.enqueue(ENV, T0).work_id
        send = policy.start(0.0)
        assert isinstance(send, Send)
        processed = send.at + 0.25
        answer = book.heartbeat(
            ENV, work_id, T0 + round(processed * US), NO_HEARTBEAT, send.desired_ttl_seconds
        )
        policy.observe(Result(Outcome.OK, send.at, processed + answer_trip_s, answer=answer))
        server_deadline_s = (book.record(ENV, work_id, T0).deadline_us or 0) / US - T0 / US
        assert policy.deadline is not None
        if isinstance(policy, LeasekitPolicy):
            assert policy.deadline <= server_deadline_s
        else:  # the SDK believes for the answer's trip past the server's deadline
            assert policy.deadline == pytest.approx(server_deadline_s + answer_trip_s)


# ------------------------------------------------ the local-deadline rule for drivers


def test_a_late_driver_is_told_to_stop_once_the_local_deadline_has_passed() -> None:
    play = Play(leasekit(ttl_seconds=30)).ok(ttl=30)
    policy = play.policy
    assert policy.deadline is not None
    send = play.send
    assert policy.due(send) == send.at < policy.deadline
    # the process was paused past its deadline: it must not send the stale echo
    late = policy.sending(send, policy.deadline + 0.5)
    assert isinstance(late, Stop) and late.reason is EndReason.ASSUMED_LOST
    assert not policy.held


def test_a_send_just_before_the_local_deadline_times_out_at_it() -> None:
    play = Play(leasekit(ttl_seconds=30)).ok(ttl=30)
    policy = play.policy
    assert policy.deadline is not None
    now = policy.deadline - 0.25
    bounded = policy.sending(play.send, now)
    assert isinstance(bounded, Send)
    assert now + bounded.timeout_s == pytest.approx(policy.deadline)
    assert bounded.expected_last_heartbeat == play.send.expected_last_heartbeat


def test_the_sdk_policy_keeps_no_local_deadline_unless_a_driver_imposes_it() -> None:
    play = Play(SdkPolicy(rng=random.Random(1))).ok(ttl=20)
    policy = play.policy
    assert policy.deadline is not None
    late = policy.deadline + 5
    # the official worker sends its stale echo whenever it wakes up
    assert policy.sending(play.send, late) is play.send
    # leasekit's keeper imposes the rule: wake at the deadline, then stop
    timed_out = Play(SdkPolicy(rng=random.Random(1))).ok(ttl=20).result(Outcome.TIMEOUT)
    retry = timed_out.send
    sdk = timed_out.policy
    assert sdk.deadline is not None and retry.at > sdk.deadline
    # ...anchored at the send time of the last success, not at the SDK's receive time
    assert sdk.send_deadline == pytest.approx(1000.0 + 20 * (1 - RHO))
    assert sdk.deadline == pytest.approx(1000.0 + TRIP_S + 20)
    assert sdk.due(retry, enforce_deadline=True) == sdk.send_deadline
    stop = sdk.sending(retry, sdk.send_deadline, enforce_deadline=True)
    assert isinstance(stop, Stop) and stop.reason is EndReason.ASSUMED_LOST
