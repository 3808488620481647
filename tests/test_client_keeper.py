"""The lease keeper against the real reference server on loopback (asyncio and trio)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from client_support import ENV, KEY, Server, serve, task_count

from leasekit.client import LeaseClient, LeaseEvent, LeaseNotClaimed, StatusError, keep_lease
from leasekit.policy import EndReason, HeartbeatPolicy, LeasekitPolicy, Outcome, SdkPolicy
from leasekit.protocol import NO_HEARTBEAT, PreconditionFailed, WorkState, parse_timestamp
from leasekit.trace import TraceHeader, TraceWriter, read_trace

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# the structural tests run on trio too; the fault tests on asyncio only, to keep the suite fast
both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve(seed_work=40) as running:
        yield running


async def _claimable(client: LeaseClient) -> str:
    item = await client.poll(ENV, worker_id="tests", block_ms=100)
    assert item is not None, "the test server ran out of queued items"
    await client.ack(ENV, item.id)
    return item.id


def _leasekit(ttl_seconds: int) -> LeasekitPolicy:
    """v2 with its timeout floor at a quarter of the TTL: the tests that expect
    an exact sequence of outcomes must not see a stall of a loaded machine
    time out an answered attempt; the margin follows the TTL, not a guess."""
    return LeasekitPolicy(ttl_seconds=ttl_seconds, rto_min_s=ttl_seconds / 4)


def _policies() -> list[HeartbeatPolicy]:
    return [SdkPolicy(), _leasekit(3)]


async def _wait_attempts(lease_attempts: list[LeaseEvent], count: int) -> None:
    while sum(1 for e in lease_attempts if e.kind == "heartbeat") < count:
        await anyio.sleep(0.05)


@both_backends
@pytest.mark.parametrize("policy_name", ["sdk", "leasekit"])
async def test_both_policies_hold_a_lease_through_a_clean_run(
    server: Server, policy_name: str
) -> None:
    policy = {"sdk": SdkPolicy(), "leasekit": _leasekit(3)}[policy_name]
    before = task_count()
    async with LeaseClient(server.url, KEY) as client:
        work_id = await _claimable(client)
        events: list[LeaseEvent] = []
        async with keep_lease(client, ENV, work_id, policy=policy, on_event=events.append) as lease:
            assert lease.held and lease.state is WorkState.ACTIVE
            assert task_count() > before  # the heartbeat runs beside the body
            # long enough for several renewals past one TTL
            await _wait_attempts(events, 4)
            assert lease.deadline is not None and lease.ttl_seconds in (2.0, 3.0)
        assert lease.end_reason is None and lease.ended and not lease.held
        outcomes = [e.result.outcome for e in events if e.result is not None]
        assert outcomes[:4] == [Outcome.OK] * 4
        assert events[-1].kind == "end"
        # every renewal echoed the previous answer exactly
        sends = [e.send for e in events if e.send is not None]
        answers = [e.result.answer for e in events if e.result is not None]
        assert sends[0].expected_last_heartbeat == NO_HEARTBEAT
        for send, previous in zip(sends[1:], answers, strict=False):
            assert previous is not None and send.expected_last_heartbeat == previous.last_heartbeat
        item = await client.retrieve(ENV, work_id)
        assert item.state is WorkState.ACTIVE
    assert task_count() == before


@both_backends
async def test_the_body_is_cancelled_when_the_lease_ends(server: Server) -> None:
    before = task_count()
    async with LeaseClient(server.url, KEY) as client:
        work_id = await _claimable(client)
        events: list[LeaseEvent] = []
        attempts_at_cancel: list[int] = []
        async with keep_lease(
            client, ENV, work_id, policy=_leasekit(3), on_event=events.append
        ) as lease:
            await client.stop(ENV, work_id, force=True)  # the server ends the lease
            try:
                await anyio.sleep_forever()
            finally:
                attempts_at_cancel.append(lease.attempts)
                assert lease.ended  # the lease ended before the body was cancelled
        assert lease.end_reason is EndReason.SHUTDOWN
        # the body was cancelled right after the answer that ended the lease
        assert attempts_at_cancel == [lease.attempts]
        last = events[-2].result
        assert last is not None and last.answer is not None
        assert last.answer.state is WorkState.STOPPED and not last.answer.lease_extended
    assert task_count() == before


@both_backends
async def test_an_error_in_the_body_propagates_unwrapped(server: Server) -> None:
    before = task_count()
    async with LeaseClient(server.url, KEY) as client:
        work_id = await _claimable(client)
        with pytest.raises(KeyError, match="boom"):
            async with keep_lease(client, ENV, work_id) as lease:
                raise KeyError("boom")
        assert lease.ended and lease.end_reason is None
    assert task_count() == before


async def test_a_lease_that_cannot_be_claimed_raises_before_the_body(server: Server) -> None:
    async with LeaseClient(server.url, KEY) as client:
        work_id = await _claimable(client)
        await client.heartbeat(ENV, work_id, NO_HEARTBEAT)  # someone else claimed it
        ran = False
        with pytest.raises(LeaseNotClaimed) as caught:
            async with keep_lease(client, ENV, work_id, policy=SdkPolicy()):
                ran = True
        assert not ran
        assert caught.value.lease.end_reason is EndReason.LOST


@both_backends
async def test_the_event_stream_ends_with_the_lease(server: Server) -> None:
    async with LeaseClient(server.url, KEY) as client:
        work_id = await _claimable(client)
        seen: list[LeaseEvent] = []
        async with keep_lease(client, ENV, work_id, policy=SdkPolicy()) as lease:
            stream = lease.events()
            await client.stop(ENV, work_id, force=False)  # graceful: stopping
            with anyio.CancelScope(shield=True):
                async with stream:
                    async for event in stream:
                        seen.append(event)
        assert [e.kind for e in seen][-1] == "end"
        assert seen[-1].reason is EndReason.SHUTDOWN


async def test_client_errors_are_typed(server: Server) -> None:
    async with LeaseClient(server.url, KEY, auth="x-api-key") as client:
        work_id = await _claimable(client)
        answer = await client.heartbeat(ENV, work_id, NO_HEARTBEAT, desired_ttl_seconds=5)
        assert answer.ttl_seconds == 5 and answer.state is WorkState.ACTIVE
        with pytest.raises(PreconditionFailed) as lost:
            await client.heartbeat(ENV, work_id, "2020-01-01T00:00:00.000000Z")
        assert lost.value.current_state.last_heartbeat == answer.last_heartbeat
        with pytest.raises(StatusError) as missing:
            await client.retrieve(ENV, "work_nope")
        assert missing.value.status == 404 and missing.value.outcome is Outcome.REJECTED
        stats = await client.stats(ENV)
        assert stats.depth >= 0
        page = await client.list(ENV, limit=2)
        assert len(page.data) == 2
        updated = await client.update(ENV, work_id, {"owner": "tests"})
        assert updated.metadata["owner"] == "tests"
        created = await client.create(ENV, metadata={"k": "v"})
        assert created.state is WorkState.QUEUED
    async with LeaseClient(server.url, "wrong key") as client:
        with pytest.raises(StatusError) as denied:
            await client.stats(ENV)
        assert denied.value.status == 401 and denied.value.outcome is Outcome.REJECTED
        assert "wrong key" not in repr(client)


async def test_the_client_sends_the_sdk_headers_and_an_empty_body(server: Server) -> None:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    http = httpx.AsyncClient(event_hooks={"request": [record]})
    async with http, LeaseClient(server.url, KEY, http=http) as client:
        work_id = await _claimable(client)
        await client.heartbeat(ENV, work_id, NO_HEARTBEAT, desired_ttl_seconds=4)
    beat = seen[-1]
    assert beat.method == "POST" and beat.url.path.endswith(f"/work/{work_id}/heartbeat")
    assert beat.url.params["expected_last_heartbeat"] == NO_HEARTBEAT
    assert beat.url.params["desired_ttl_seconds"] == "4"
    assert beat.content == b"" and beat.headers["content-length"] == "0"
    assert beat.headers["anthropic-version"] == "2023-06-01"
    assert beat.headers["anthropic-beta"] == "managed-agents-2026-04-01"
    assert beat.headers["authorization"] == f"Bearer {KEY}"
    poll = seen[0]
    assert poll.headers["anthropic-worker-id"] == "tests"
    assert poll.url.params["block_ms"] == "100"


async def test_a_recorded_trace_round_trips_and_holds_no_secrets(
    server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "trace.jsonl"
    policy = _leasekit(3)
    async with LeaseClient(server.url, KEY) as client:
        item = await client.poll(ENV, worker_id="tests", block_ms=100)
        assert item is not None and item.secret
        await client.ack(ENV, item.id)
        header = TraceHeader(policy.name, policy.parameters(), 3, source="tests")
        events: list[LeaseEvent] = []
        with TraceWriter(path, header) as writer:
            async with keep_lease(
                client,
                ENV,
                item.id,
                policy=policy,
                trace=writer,
                worker="w1",
                on_event=events.append,
            ):
                await _wait_attempts(events, 3)
                server.queue("drop_answer")  # one timeout, then an adopted 412
                await _wait_attempts(events, 6)
    text = path.read_text()
    assert KEY not in text and item.secret not in text
    trace = read_trace(path)
    assert trace.header.policy_name == "leasekit" and trace.header.desired_ttl_seconds == 3
    frame = trace.attempts
    heartbeats = [e for e in events if e.kind == "heartbeat"]
    assert len(frame) == len(heartbeats)
    assert frame["outcome"].tolist() == [e.result.outcome.value for e in heartbeats if e.result]
    assert "timeout" in frame["outcome"].tolist()
    assert "precondition_failed" in frame["outcome"].tolist()
    assert (frame["received_s"] >= frame["sent_s"]).all()
    assert frame["sent_s"].is_monotonic_increasing
    assert set(frame["worker"]) == {"w1"} and set(frame["work_id"]) == {item.id}
    assert trace.ends["reason"].tolist() == ["released"]


# --------------------------------------------------------------- faults


async def _hold_until_end(
    client: LeaseClient, work_id: str, policy: HeartbeatPolicy, server: Server, fault: str
) -> tuple[EndReason | None, list[LeaseEvent]]:
    events: list[LeaseEvent] = []

    def on_event(event: LeaseEvent) -> None:
        events.append(event)
        oks = sum(1 for e in events if e.result is not None and e.result.outcome is Outcome.OK)
        if event.kind == "heartbeat" and oks == 2 and event.result.outcome is Outcome.OK:
            server.queue(fault)

    async with keep_lease(client, ENV, work_id, policy=policy, on_event=on_event) as lease:
        # a clean run would renew forever; stop waiting some beats after the fault
        await _wait_attempts(events, 6)
    return lease.end_reason, events


async def test_a_lost_answer_ends_the_sdk_lease_but_leasekit_adopts_its_own_heartbeat(
    server: Server,
) -> None:
    async with LeaseClient(server.url, KEY) as client:
        # TTL 2 s, interval 1 s: at most two intervals, so the timed-out attempt
        # already makes the SDK assume the lease lost
        work_id = await _claimable(client)
        reason, events = await _hold_until_end(client, work_id, SdkPolicy(), server, "drop_answer")
        assert reason is EndReason.ASSUMED_LOST
        outcomes = [e.result.outcome for e in events if e.result is not None]
        assert outcomes == [Outcome.OK, Outcome.OK, Outcome.TIMEOUT]
        # ...while the server still holds the lease for it: applied, answer lost
        item = await client.retrieve(ENV, work_id)
        assert item.state is WorkState.ACTIVE

        work_id = await _claimable(client)
        policy = _leasekit(3)
        reason, events = await _hold_until_end(client, work_id, policy, server, "drop_answer")
        assert reason is None  # held to the end
        outcomes = [e.result.outcome for e in events if e.result is not None]
        assert outcomes[:4] == [
            Outcome.OK,
            Outcome.OK,
            Outcome.TIMEOUT,
            Outcome.PRECONDITION_FAILED,
        ]
        assert set(outcomes[4:]) == {Outcome.OK}
        assert policy.adoptions == 1


@pytest.mark.parametrize("policy_name", ["sdk", "leasekit"])
async def test_a_request_held_past_the_deadline_ends_the_lease_before_the_server_does(
    server: Server, policy_name: str, tmp_path: Path
) -> None:
    policy = {"sdk": SdkPolicy(), "leasekit": _leasekit(2)}[policy_name]
    path = tmp_path / "trace.jsonl"
    async with LeaseClient(server.url, KEY) as client:
        work_id = await _claimable(client)
        body_cancelled = False
        events: list[LeaseEvent] = []
        with TraceWriter(path, TraceHeader(policy.name)) as writer:

            def on_event(event: LeaseEvent) -> None:
                events.append(event)
                if len(events) == 2:
                    # more drops than any policy's attempts in one TTL (v2's budget: 15)
                    server.queue(*["drop_request"] * 40)

            async with keep_lease(
                client, ENV, work_id, policy=policy, trace=writer, on_event=on_event
            ) as lease:
                try:
                    await anyio.sleep_forever()
                finally:
                    body_cancelled = True
        assert body_cancelled and lease.end_reason is EndReason.ASSUMED_LOST
        assert lease.deadline is not None
        deadline_s = writer.seconds(lease.deadline)
        server.app.state.faults._queued.clear()  # leave the server clean for other tests
        trace = read_trace(path)
        frame = trace.attempts
        ok = frame[frame["outcome"] == "ok"]
        last_ok = ok.iloc[-1]
        # the server's deadline: when it stored our last renewal, plus the TTL
        server_expiry_us = parse_timestamp(last_ok["last_heartbeat"]) + 2_000_000
        created_us = parse_timestamp(trace.header.created_at)
        deadline_us = created_us + round(deadline_s * 1e6)
        sent_us = created_us + round(last_ok["sent_s"] * 1e6)
        # every attempt after the last success went unanswered
        assert set(frame["outcome"][frame["line"] > last_ok["line"]]) == {"timeout"}
        # anchored at the send time for every policy the keeper drives (the
        # SDK's own belief counts from the receive time; the keeper's rule does
        # not): its deadline is not after the server's, with no tolerance. The
        # end itself is recorded when the event loop wakes, which a loaded
        # machine delays: what the keeper guarantees is the deadline.
        assert deadline_us <= server_expiry_us
        assert deadline_us == pytest.approx(sent_us + 2_000_000 * (1 - 1e-4), abs=2)


def _claim_with_official_sdk(base_url: str, work_id: str, claimed: list[str]) -> None:
    """A second worker, the official SDK, claims ``work_id`` once it expired."""
    from anthropic import Anthropic

    client = Anthropic(base_url=base_url, api_key=KEY)
    work = client.beta.environments.work
    while work.retrieve(work_id, environment_id=ENV).state != "queued":
        time.sleep(0.05)
    item = work.poll(ENV, anthropic_worker_id="second", block_ms=500)
    assert item is not None and item.id == work_id
    work.ack(work_id, environment_id=ENV)
    answer = work.heartbeat(work_id, environment_id=ENV, expected_last_heartbeat=NO_HEARTBEAT)
    claimed.append(answer.last_heartbeat)


@pytest.mark.parametrize("enforce_deadline", [False, True])
async def test_a_second_worker_claiming_after_expiry_ends_the_first_lease(
    enforce_deadline: bool,
) -> None:
    # a server of its own: the second worker must get exactly this item
    with serve(seed_work=1) as own:
        async with LeaseClient(own.url, KEY) as client:
            work_id = await _claimable(client)
            events: list[LeaseEvent] = []
            claimed: list[str] = []
            async with keep_lease(
                client,
                ENV,
                work_id,
                policy=SdkPolicy(),
                on_event=events.append,
                enforce_deadline=enforce_deadline,
            ) as lease:
                await _wait_attempts(events, 2)
                # the whole process stalls (a long GC pause, a stopped VM) while
                # the lease expires and another worker claims the item
                errors: list[BaseException] = []

                def second_worker() -> None:
                    try:
                        _claim_with_official_sdk(own.url, work_id, claimed)
                    except BaseException as error:  # reaches the test below
                        errors.append(error)

                second = threading.Thread(target=second_worker)
                second.start()
                second.join()
                if errors:
                    raise errors[0]
                await anyio.sleep_forever()
    assert claimed, "the second worker did not claim the item"
    results = [e.result for e in events if e.result is not None]
    if enforce_deadline:
        # the keeper noticed its deadline had passed and sent nothing stale
        assert lease.end_reason is EndReason.ASSUMED_LOST
        assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK]
    else:
        # the policy alone sends its stale echo, and the 412 ends the lease
        assert lease.end_reason is EndReason.LOST
        last = results[-1]
        assert last.outcome is Outcome.PRECONDITION_FAILED and last.current_state is not None
        assert last.current_state.state is WorkState.ACTIVE
        assert last.current_state.last_heartbeat == claimed[0]


@pytest.mark.skipif(
    not os.environ.get("LEASEKIT_SLOW_TESTS"), reason="takes 90 s; set LEASEKIT_SLOW_TESTS=1"
)
@pytest.mark.timeout(240)
async def test_with_a_long_ttl_the_sdk_policy_meets_a_412_after_a_lost_answer() -> None:
    # TTL 61 s > two intervals of 30 s: the timed-out attempt does not end the
    # lease; the next attempt echoes the stale value and meets the 412 its
    # own applied heartbeat caused
    with serve(default_ttl_seconds=61, seed_work=1) as own:
        async with LeaseClient(own.url, KEY) as client:
            work_id = await _claimable(client)
            events: list[LeaseEvent] = []

            def on_event(event: LeaseEvent) -> None:
                events.append(event)
                if len(events) == 1:
                    own.queue("drop_answer")

            # the policy as the official worker runs it: the keeper's own
            # deadline rule would end it at the TTL, before the stale echo
            async with keep_lease(
                client,
                ENV,
                work_id,
                policy=SdkPolicy(),
                on_event=on_event,
                enforce_deadline=False,
            ) as lease:
                await anyio.sleep_forever()
    outcomes = [e.result.outcome for e in events if e.result is not None]
    assert outcomes == [Outcome.OK, Outcome.TIMEOUT, Outcome.PRECONDITION_FAILED]
    assert lease.end_reason is EndReason.LOST
    last = events[-2].result
    assert last is not None and last.current_state is not None
    assert last.current_state.state is WorkState.ACTIVE  # nobody else holds it


# --------------------------------------------------------------- defined outcomes


class _CallbackBroke(Exception):
    pass


@both_backends
async def test_a_failing_on_event_callback_ends_the_lease_saying_so_and_reraises(
    server: Server,
) -> None:
    before = task_count()
    async with LeaseClient(server.url, KEY) as client:
        work_id = await _claimable(client)
        seen: list[LeaseEvent] = []
        body_cancelled = False

        def on_event(event: LeaseEvent) -> None:
            seen.append(event)
            if len(seen) == 2:
                raise _CallbackBroke("the callback broke")

        with pytest.raises(_CallbackBroke, match="the callback broke"):  # unwrapped
            async with keep_lease(
                client, ENV, work_id, policy=_leasekit(3), on_event=on_event
            ) as lease:
                try:
                    await anyio.sleep_forever()
                finally:
                    body_cancelled = True
        assert body_cancelled and lease.ended
        assert lease.end_reason is EndReason.ERROR
        assert "on_event callback raised _CallbackBroke" in lease.detail
        assert isinstance(lease.error, _CallbackBroke)
        assert not lease.lost  # the server still holds it until its TTL
    assert task_count() == before


class _BrokenTrace(TraceWriter):
    def attempt(self, **fields: object) -> None:  # type: ignore[override]
        raise OSError("disk full")


async def test_a_failing_trace_writer_ends_the_lease_saying_so_and_reraises(
    server: Server, tmp_path: Path
) -> None:
    async with LeaseClient(server.url, KEY) as client:
        work_id = await _claimable(client)
        events: list[LeaseEvent] = []
        with (
            _BrokenTrace(tmp_path / "t.jsonl", TraceHeader("leasekit")) as writer,
            pytest.raises(OSError, match="disk full"),
        ):
            async with keep_lease(
                client, ENV, work_id, trace=writer, on_event=events.append
            ) as lease:
                await anyio.sleep_forever()
        assert lease.end_reason is EndReason.ERROR
        assert "trace writer raised OSError" in lease.detail
        # the end still reached the callback, and the trace's end line says why
        assert events[-1].kind == "end" and events[-1].reason is EndReason.ERROR
    assert read_trace(tmp_path / "t.jsonl").ends["reason"].tolist() == ["error"]


async def test_a_policy_that_drove_a_lease_is_refused_for_another(server: Server) -> None:
    policy = _leasekit(3)
    async with LeaseClient(server.url, KEY) as client:
        first = await _claimable(client)
        async with keep_lease(client, ENV, first, policy=policy) as lease:
            assert lease.held
        second = await _claimable(client)
        with pytest.raises(ValueError, match=r"already drove a lease.*fresh policy"):
            async with keep_lease(client, ENV, second, policy=policy):
                pass  # pragma: no cover
        # nothing was sent for the second item: it is still unclaimed
        item = await client.retrieve(ENV, second)
        assert item.state is WorkState.STARTING and item.latest_heartbeat_at_us is None


class _OverloadedProxy:
    """A proxy in front of the reference server that answers the first
    ``count`` heartbeats after ``after`` ones with 529 and ``Retry-After``."""

    def __init__(self, app: Any, *, after: int, count: int, retry_after: str) -> None:
        self.app = app
        self.state = app.state
        self.after, self.count, self.retry_after = after, count, retry_after.encode()
        self.heartbeats = 0

    def release_holds(self) -> None:
        self.app.release_holds()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/heartbeat"):
            self.heartbeats += 1
            if self.after < self.heartbeats <= self.after + self.count:
                body = b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 529,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"retry-after", self.retry_after),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "httpx"])
async def test_the_keeper_reports_retry_after_and_the_policy_honours_it(direct: bool) -> None:
    from leasekit.lease import LeaseConfig
    from leasekit.server import create_app, running_server

    app = create_app(
        keys={ENV: KEY},
        config=LeaseConfig(default_ttl_seconds=10, min_ttl_seconds=1),
        seed_work={ENV: 1},
    )
    proxy = _OverloadedProxy(app, after=2, count=1, retry_after="1")
    with running_server(proxy) as url:  # type: ignore[arg-type]
        http = None if direct else httpx.AsyncClient()
        try:
            async with LeaseClient(url, KEY, http=http) as client:
                work_id = await _claimable(client)
                events: list[LeaseEvent] = []
                async with keep_lease(
                    client, ENV, work_id, policy=LeasekitPolicy(), on_event=events.append
                ):
                    await _wait_attempts(events, 4)
        finally:
            if http is not None:
                await http.aclose()
    results = [e.result for e in events if e.result is not None]
    overloaded = next(i for i, r in enumerate(results) if r.status == 529)
    assert results[overloaded].retry_after_s == 1.0
    # the next attempt waited at least what the server asked for
    assert results[overloaded + 1].sent_at - results[overloaded].received_at >= 1.0
