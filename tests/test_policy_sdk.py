"""SdkPolicy, rule by rule (docs/protocol.md §1 (facts)), checked against the SDK's own source.

The reference is ``anthropic/lib/environments/_worker.py::_heartbeat_loop`` of
the installed ``anthropic`` package (read, not copied) and, for
``http_retries``, the SDK HTTP client's retry delay
(``BaseClient._calculate_retry_timeout``). Each test drives the policy by
hand with :class:`Play`, which plays one :class:`Result` per ``Send``.
"""

from __future__ import annotations

import inspect
import random

import anthropic
import httpx2
import pytest
from anthropic import _base_client, _constants
from anthropic._base_client import FinalRequestOptions
from anthropic.lib import _retry
from anthropic.lib.environments import _worker
from policy_support import TRIP_S, FixedRandom, Play

from leasekit.policy import EndReason, Outcome, SdkPolicy, Send, classify_status
from leasekit.protocol import NO_HEARTBEAT, LeaseState, WorkState


def sdk(http_retries: int = 0, seed: int = 1) -> SdkPolicy:
    return SdkPolicy(http_retries=http_retries, rng=random.Random(seed))


# ----------------------------------------------------------------- the SDK's constants


def test_sdk_source_constants_are_the_ones_the_policy_models() -> None:
    assert _worker._HEARTBEAT_DEFAULT == 30.0
    assert _worker._HEARTBEAT_TTL_DEFAULT == 90.0
    assert _worker._NO_HEARTBEAT_SENTINEL == NO_HEARTBEAT
    assert _constants.INITIAL_RETRY_DELAY == 0.5
    assert _constants.DEFAULT_MAX_RETRIES == SdkPolicy().http_retries == 2
    source = inspect.getsource(_worker._heartbeat_loop)
    # the rules the tests below check, as the loop writes them
    assert "anyio.fail_after(interval)" in source
    assert "max(1.0, min(resp.ttl_seconds / 2, _HEARTBEAT_DEFAULT))" in source
    assert "time.monotonic() - last_success > ttl" in source
    assert 'resp.state in ("stopping", "stopped") or not resp.lease_extended' in source
    assert "anyio.move_on_after(interval)" in source


# ----------------------------------------------------------------- rules


def test_assumes_ttl_90_and_interval_30_before_first_answer() -> None:
    play = Play(sdk(), now=100.0)
    first = play.send
    assert (first.at, first.timeout_s, first.expected_last_heartbeat) == (100.0, 30.0, NO_HEARTBEAT)
    assert play.policy.ttl_seconds == 90.0 and first.attempt == 1
    # no answer ever: the 90 s assumption decides when the claim is given up
    play.timeout()  # ends 130, next at 160
    assert play.send.at == 160.0
    play.timeout()  # ends 190: 90 s since start, not more: keep trying
    assert play.send.at == 220.0
    play.timeout()  # ends 250: 150 s > 90 s
    assert play.stop.reason is EndReason.ASSUMED_LOST


def test_never_sends_desired_ttl() -> None:
    play = Play(sdk(http_retries=2))
    for ttl in (90, 10, 3, 0, 600):
        play.ok(ttl=ttl).transient().timeout()
    assert len(play.sends) > 10
    assert all(send.desired_ttl_seconds is None for send in play.sends)
    assert "desired_ttl_seconds" not in inspect.getsource(_worker._heartbeat_loop)


@pytest.mark.parametrize(
    ("ttl", "interval"),
    [(1, 1.0), (2, 1.0), (3, 1.5), (10, 5.0), (45, 22.5), (60, 30.0), (90, 30.0), (3600, 30.0)],
)
def test_interval_is_half_ttl_capped_at_30_floored_at_1(ttl: int, interval: float) -> None:
    play = Play(sdk()).ok(ttl=ttl)
    received = play.sends[0].at + TRIP_S
    assert play.send.at == pytest.approx(received + interval)
    assert play.send.timeout_s == interval
    assert play.policy.ttl_seconds == ttl


def test_attempt_times_out_after_one_interval() -> None:
    play = Play(sdk())
    assert play.send.timeout_s == 30.0
    play.ok(ttl=20)
    assert play.send.timeout_s == 10.0
    play.transient()
    assert play.send.timeout_s == 10.0


def test_next_attempt_one_interval_after_previous_ended() -> None:
    play = Play(sdk()).ok(ttl=20)  # interval 10
    sent = play.send.at
    play.ok(ttl=20)
    assert play.send.at == pytest.approx(sent + TRIP_S + 10)
    sent = play.send.at
    play.transient(after=2.0)
    assert play.send.at == pytest.approx(sent + 2.0 + 10), "no faster retry after a failure"
    assert play.send.expected_last_heartbeat == play.sends[-2].expected_last_heartbeat


def test_timed_out_attempt_costs_two_intervals() -> None:
    play = Play(sdk()).ok(ttl=20)
    sent = play.send.at
    play.timeout()
    assert play.send.at == pytest.approx(sent + 2 * 10)


def test_412_is_lost() -> None:
    play = Play(sdk()).ok(ttl=20)
    current = LeaseState("other", WorkState.ACTIVE, 20)
    play.result(Outcome.PRECONDITION_FAILED, current_state=current, status=412)
    assert play.stop.reason is EndReason.LOST and "active" in play.stop.detail
    assert play.policy.held is False and play.policy.stopped is play.stop
    # even a 412 right after an attempt whose answer was lost: no adoption in the SDK
    play = Play(sdk()).ok(ttl=20).timeout()
    play.result(Outcome.PRECONDITION_FAILED, current_state=current, status=412)
    assert play.stop.reason is EndReason.LOST


def _sdk_error(status: int) -> anthropic.APIStatusError:
    response = httpx2.Response(status, request=httpx2.Request("POST", "http://localhost/x"))
    return anthropic.APIStatusError("status", response=response, body=None)


@pytest.mark.parametrize("status", [*range(400, 452), 499, 500, 502, 503, 504, 529, 599])
def test_fatal_4xx_is_rejected_but_408_409_429_are_transient(status: int) -> None:
    outcome = classify_status(status)
    if status == 412:
        assert outcome is Outcome.PRECONDITION_FAILED  # the loop checks 412 first
        return
    assert (outcome is Outcome.REJECTED) == _retry.is_fatal_status_error(_sdk_error(status))
    expected = Outcome.TRANSIENT if status in (408, 409, 429) or status >= 500 else Outcome.REJECTED
    assert outcome is expected
    play = Play(sdk()).ok(ttl=20).result(outcome, status=status)
    if outcome is Outcome.REJECTED:
        assert play.stop.reason is EndReason.REJECTED and str(status) in play.stop.detail
    else:
        assert isinstance(play.action, Send)


def test_success_statuses_classify_as_ok() -> None:
    assert {classify_status(s) for s in (200, 201, 204)} == {Outcome.OK}


def test_assumed_lost_only_after_more_than_ttl_without_success() -> None:
    play = Play(sdk()).ok(ttl=20)  # last success at 1000.1, interval 10
    success = play.sends[0].at + TRIP_S
    play.transient(after=9.9)  # seen 19.9 s after the success
    assert isinstance(play.action, Send)
    # exactly one TTL after the success: not more than the TTL, keep going
    play.transient(after=success + 20.0 - play.send.at)
    assert isinstance(play.action, Send)
    play.transient(after=0.001)
    assert play.stop.reason is EndReason.ASSUMED_LOST and "20 s" in play.stop.detail


def test_assumed_lost_is_judged_when_the_failure_is_seen_not_when_sent() -> None:
    play = Play(sdk()).ok(ttl=20)
    success = play.sends[0].at + TRIP_S
    assert play.send.at - success == pytest.approx(10)
    play.transient(after=9.0)  # seen at +19: go on, next at +29
    assert play.send.at - success == pytest.approx(29)
    play.timeout()  # seen at +39
    assert play.stop.reason is EndReason.ASSUMED_LOST


@pytest.mark.parametrize(
    ("state", "extended", "shutdown"),
    [
        (WorkState.ACTIVE, True, False),
        (WorkState.ACTIVE, False, True),
        (WorkState.STOPPING, True, True),
        (WorkState.STOPPED, False, True),
        (WorkState.STARTING, True, False),
        (WorkState.QUEUED, False, True),
    ],
)
def test_stopping_stopped_or_not_extended_is_shutdown(
    state: WorkState, extended: bool, shutdown: bool
) -> None:
    play = Play(sdk()).ok(ttl=20, state=state, extended=extended)
    if shutdown:
        assert play.stop.reason is EndReason.SHUTDOWN and state.value in play.stop.detail
    else:
        assert isinstance(play.action, Send)


def test_ttl_zero_answer_keeps_previous_ttl() -> None:
    play = Play(sdk()).ok(ttl=20)
    sent = play.send.at
    play.ok(ttl=0, value="kept")
    assert play.policy.ttl_seconds == 20.0
    assert play.send.at == pytest.approx(sent + TRIP_S + 10) and play.send.timeout_s == 10
    assert play.send.expected_last_heartbeat == "kept"
    # before any TTL was learned, a 0 keeps the assumed 90 s and 30 s
    play = Play(sdk()).ok(ttl=0)
    assert play.policy.ttl_seconds == 90.0 and play.send.timeout_s == 30.0


def test_echoes_the_last_value_exactly() -> None:
    odd = "2026-11-29T09:16:11.1234567+00:00"  # opaque: never re-formatted
    play = Play(sdk()).ok(value=odd)
    assert play.send.expected_last_heartbeat == odd
    play.timeout()
    assert play.send.expected_last_heartbeat == odd


# ----------------------------------------------------------------- http_retries


@pytest.mark.parametrize("draw", [0.0, 0.37, 0.999999])
def test_http_retry_delays_match_the_sdk_client(
    draw: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.5 s * 2**n times a jitter in (0.75, 1], computed by the SDK client itself."""
    monkeypatch.setattr(_base_client, "random", lambda: draw)
    client = anthropic.Anthropic(api_key="test", max_retries=6)
    options = FinalRequestOptions.construct(method="post", url="/heartbeat")
    sdk_delays = [client._calculate_retry_timeout(6 - n, options, None) for n in range(6)]
    policy = SdkPolicy(http_retries=6, rng=FixedRandom(draw))
    play = Play(policy).ok(ttl=90)  # interval 30: room for six retries
    policy_delays = []
    for _ in range(6):
        ended = play.send.at + TRIP_S
        play.transient()
        policy_delays.append(play.send.at - ended)
    assert policy_delays == pytest.approx(sdk_delays)
    assert all(0.75 * 0.5 * 2**n < d <= 0.5 * 2**n for n, d in enumerate(policy_delays[:4]))


def test_http_retries_stay_within_the_attempt_budget() -> None:
    play = Play(SdkPolicy(http_retries=2, rng=random.Random(7))).ok(ttl=20)  # interval 10
    attempt_start = play.send.at
    first = play.send.attempt
    play.transient()
    retry = play.send
    assert retry.attempt == first + 1, "each HTTP retry is an attempt on the wire"
    assert retry.expected_last_heartbeat == play.sends[-2].expected_last_heartbeat
    assert retry.at + retry.timeout_s == pytest.approx(attempt_start + 10)
    play.transient()
    second = play.send
    assert second.at + second.timeout_s == pytest.approx(attempt_start + 10)
    assert 0.75 < second.at - (retry.at + TRIP_S) <= 1.0
    play.transient()  # retries used up: the worker attempt failed, wait one interval
    assert play.send.at == pytest.approx(second.at + TRIP_S + 10)
    assert play.send.timeout_s == 10


def test_http_retry_sleep_cut_by_the_attempt_timeout_ends_the_attempt_there() -> None:
    play = Play(SdkPolicy(http_retries=2, rng=random.Random(3))).ok(ttl=20)
    attempt_start = play.send.at
    play.transient(after=9.8)  # the retry's sleep (>= 0.375 s) would run past 10 s
    assert play.send.at == pytest.approx(attempt_start + 10 + 10)
    assert play.send.timeout_s == 10


def test_no_http_retry_after_a_timeout() -> None:
    play = Play(SdkPolicy(http_retries=2, rng=random.Random(1))).ok(ttl=20)
    sent = play.send.at
    play.timeout()
    assert play.send.at == pytest.approx(sent + 20)


def test_http_retries_zero_models_the_worker_loop_alone() -> None:
    play = Play(sdk(http_retries=0)).ok(ttl=20)
    sent = play.send.at
    play.transient()
    assert play.send.at == pytest.approx(sent + TRIP_S + 10)
    assert play.policy.parameters() == {"http_retries": 0}
