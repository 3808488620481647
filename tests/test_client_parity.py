"""Parity with the official worker: the SDK's own heartbeat loop and ``SdkPolicy``
driven by leasekit's keeper meet the same faults on the same reference server,
and must end the same way after the same number of heartbeat requests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from client_support import ENV, KEY, Server, serve

from leasekit.client import LeaseClient, keep_lease
from leasekit.policy import EndReason, Outcome, Result, SdkPolicy, Send
from leasekit.protocol import HeartbeatAnswer, WorkState

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve(seed_work=20) as running:
        yield running


@dataclass
class Script:
    """Faults by heartbeat count, the same for both clients: after the 2nd
    successful heartbeat queue ``faults``; after the 4th, force-stop the item."""

    server: Server
    work_id: str
    faults: tuple[str, ...]
    statuses: list[int] = field(default_factory=list)
    requests: int = 0

    def hooks(self) -> dict[str, list[object]]:
        # called with httpx objects for leasekit and httpx2 objects for the SDK
        async def on_request(request: httpx.Request) -> None:
            if request.url.path.endswith("/heartbeat"):
                self.requests += 1

        async def on_response(response: httpx.Response) -> None:
            if not response.request.url.path.endswith("/heartbeat"):
                return
            # the server's error fault answers 500 or 529 at random: compare classes
            self.statuses.append(min(response.status_code, 500))
            oks = self.statuses.count(200)
            if response.status_code != 200:
                return
            if oks == 2:
                self.server.queue(*self.faults)
            elif oks == 4:
                async with LeaseClient(self.server.url, KEY) as other:
                    await other.stop(ENV, self.work_id, force=True)

        return {"request": [on_request], "response": [on_response]}


async def _claimable(server: Server) -> str:
    async with LeaseClient(server.url, KEY) as client:
        item = await client.poll(ENV, block_ms=100)
        assert item is not None
        await client.ack(ENV, item.id)
        return item.id


async def _official(server: Server, faults: tuple[str, ...]) -> tuple[EndReason, Script]:
    from anthropic import AsyncAnthropic
    from anthropic.lib.environments._worker import _heartbeat_loop, _Lease, _LeaseEndReason

    script = Script(server, await _claimable(server), faults)
    import httpx2  # the SDK's own fork of httpx

    http = httpx2.AsyncClient(event_hooks=script.hooks())
    async with AsyncAnthropic(base_url=server.url, api_key=KEY, http_client=http) as client:
        lease = _Lease()
        await _heartbeat_loop(
            client.beta.environments.work, work_id=script.work_id, environment_id=ENV, lease=lease
        )
    reasons = {
        _LeaseEndReason.LEASE_LOST: EndReason.LOST,
        _LeaseEndReason.ASSUMED_LOST: EndReason.ASSUMED_LOST,
        _LeaseEndReason.HEARTBEAT_REJECTED: EndReason.REJECTED,
        _LeaseEndReason.HEARTBEAT_STOP: EndReason.SHUTDOWN,
    }
    assert lease._end_reason is not None
    return reasons[lease._end_reason], script


async def _leasekit(server: Server, faults: tuple[str, ...]) -> tuple[EndReason, Script, int]:
    script = Script(server, await _claimable(server), faults)
    http = httpx.AsyncClient(event_hooks=script.hooks())  # type: ignore[arg-type]
    policy = SdkPolicy()
    async with (
        http,
        LeaseClient(server.url, KEY, http=http) as client,
        # the policy alone, as the official worker runs it: the keeper's own
        # local deadline (send-anchored, earlier than the SDK's) would end the
        # lease one attempt before the official worker does
        keep_lease(client, ENV, script.work_id, policy=policy, enforce_deadline=False) as lease,
    ):
        await anyio.sleep_forever()
    assert lease.end_reason is not None
    return lease.end_reason, script, policy.attempts


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        # the answer is lost: the attempt times out after one interval, and at
        # TTL = 2 intervals that is a full TTL without success
        (("drop_answer",), EndReason.ASSUMED_LOST),
        # one 5xx: the HTTP layer retries inside the attempt, the lease survives
        # until the server stops the item
        (("error",), EndReason.SHUTDOWN),
        # two 5xx: the second retry's backoff outlasts the attempt
        (("error", "error"), EndReason.ASSUMED_LOST),
    ],
)
async def test_sdk_policy_does_what_the_official_worker_does(
    server: Server, faults: tuple[str, ...], expected: EndReason
) -> None:
    official_reason, official = await _official(server, faults)
    ours_reason, ours, policy_attempts = await _leasekit(server, faults)
    assert official_reason is expected
    assert ours_reason is official_reason
    assert ours.requests == official.requests
    assert ours.statuses == official.statuses
    assert policy_attempts == ours.requests  # every Send the policy asked for went out


def test_sdk_policy_times_an_attempt_from_its_real_send() -> None:
    # The official worker's fail_after starts when its sleep ends, which may be
    # after the scheduled time; the attempt's budget (and its retries) follow.
    policy = SdkPolicy(http_retries=2)
    first = policy.start(0.0)
    answer = HeartbeatAnswer("2026-11-29T09:00:00.000001Z", True, WorkState.ACTIVE, 2)
    second = policy.observe(Result(Outcome.OK, first.at, 0.1, answer=answer, status=200))
    assert isinstance(second, Send) and second.at == pytest.approx(1.1)
    late_send = 1.3
    retry = policy.observe(Result(Outcome.TRANSIENT, late_send, 1.31, status=500))
    assert isinstance(retry, Send)
    assert retry.at + retry.timeout_s == pytest.approx(late_send + 1.0)
