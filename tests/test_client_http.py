"""The heartbeat's direct httpcore path: exact request bytes, answer framing,
connection reuse, a server closing idle connections, and proxies from the
environment (which route heartbeats through httpx).

A scripted HTTP server on a loopback socket plays each answer byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from anyio.abc import SocketStream

from leasekit.client import LeaseClient, StatusError
from leasekit.protocol import NO_HEARTBEAT, PreconditionFailed

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

ANSWER = json.dumps(
    {
        "last_heartbeat": "2026-11-29T09:00:00.000001Z",
        "lease_extended": True,
        "state": "active",
        "ttl_seconds": 9,
        "type": "work_heartbeat",
    }
).encode()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Script = Callable[[int], bytes | None]
"""Given the request's index, the raw answer (``None``: close without answering,
``HOLD``: never answer)."""
HOLD = b"hold"


@asynccontextmanager
async def scripted(
    script: Script, *, close_after: tuple[int, ...] = (), closed: anyio.Event | None = None
) -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A server playing ``script``; after answering a request whose index is in
    ``close_after`` it closes the connection silently (as a server whose
    keep-alive timeout ran out does) and sets ``closed``."""
    requests: list[bytes] = []
    connections: list[int] = []

    async def handle(stream: SocketStream) -> None:
        connections.append(len(requests))
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                requests.append(head)
                answer = script(len(requests) - 1)
                if answer is None:
                    return
                if answer == HOLD:
                    await anyio.sleep_forever()
                await stream.send(answer)
                if b"connection: close" in answer.lower():
                    return
                if len(requests) - 1 in close_after:
                    await stream.aclose()
                    if closed is not None:
                        closed.set()
                    return

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        yield f"http://127.0.0.1:{port}", requests, connections
        group.cancel_scope.cancel()


def ok(extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: "
        + str(len(ANSWER)).encode()
        + b"\r\n\r\n"
        + ANSWER
    )


async def test_the_request_is_the_sdk_shape_and_connections_are_reused() -> None:
    async with (
        scripted(lambda index: ok()) as (url, requests, connections),
        LeaseClient(url, "secret-key") as client,
    ):
        first = await client.heartbeat("env 1", "work/1", NO_HEARTBEAT, desired_ttl_seconds=9)
        await client.heartbeat("env 1", "work/1", first.last_heartbeat)
    assert first.ttl_seconds == 9 and first.last_heartbeat.endswith("Z")
    line, *headers = requests[0].decode().split("\r\n")
    assert line == (
        "POST /v1/environments/env%201/work/work%2F1/heartbeat"
        "?expected_last_heartbeat=NO_HEARTBEAT&desired_ttl_seconds=9 HTTP/1.1"
    )
    fields = dict(h.split(": ", 1) for h in headers)
    assert fields["content-length"] == "0"
    assert fields["authorization"] == "Bearer secret-key"
    assert fields["anthropic-version"] == "2023-06-01"
    assert fields["anthropic-beta"] == "managed-agents-2026-04-01"
    assert fields["host"] == url.removeprefix("http://")
    second = requests[1].decode().split("\r\n")[0]
    assert "expected_last_heartbeat=2026-11-29T09%3A00%3A00.000001Z" in second
    assert "desired_ttl_seconds" not in second
    assert connections == [0]  # one keep-alive connection carried both


async def test_a_chunked_answer_and_connection_close_are_handled() -> None:
    half = len(ANSWER) // 2
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + f"{half:x}\r\n".encode()
        + ANSWER[:half]
        + b"\r\n"
        + f"{len(ANSWER) - half:x}\r\n".encode()
        + ANSWER[half:]
        + b"\r\n0\r\n\r\n"
    )
    answers = [chunked, ok(b"connection: close\r\n"), ok()]
    async with (
        scripted(lambda index: answers[index]) as (url, _requests, connections),
        LeaseClient(url, "k") as client,
    ):
        for _ in answers:
            answer = await client.heartbeat("e", "w", NO_HEARTBEAT)
            assert answer.lease_extended
    # the chunked answer kept the connection; "connection: close" ended it
    assert connections == [0, 2]


async def test_error_answers_are_typed() -> None:
    envelope = {
        "type": "error",
        "error": {
            "type": "precondition_failed_error",
            "message": "mismatch",
            "details": {
                "error_code": "heartbeat_precondition_failed",
                "current_state": {
                    "last_heartbeat": None,
                    "lease_extended": False,
                    "state": "queued",
                    "ttl_seconds": 9,
                },
            },
        },
        "request_id": "req_1",
    }
    body = json.dumps(envelope).encode()
    not_found = b'{"type":"error","error":{"type":"not_found_error","message":"no such work"}}'

    def answer(index: int) -> bytes:
        status, payload = [(b"412 Precondition Failed", body), (b"404 Not Found", not_found)][index]
        return (
            b"HTTP/1.1 "
            + status
            + b"\r\ncontent-length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )

    async with scripted(answer) as (url, _, _), LeaseClient(url, "k") as client:
        with pytest.raises(PreconditionFailed) as lost:
            await client.heartbeat("e", "w", "x")
        assert lost.value.current_state.state.value == "queued"
        with pytest.raises(StatusError) as missing:
            await client.heartbeat("e", "w", "x")
        assert missing.value.status == 404 and missing.value.error_type == "not_found_error"
        assert missing.value.message == "no such work"


async def test_a_connection_closed_without_an_answer_is_a_transport_error() -> None:
    async with (
        scripted(lambda index: None if index == 0 else ok()) as (url, _, connections),
        LeaseClient(url, "k") as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
            await client.heartbeat("e", "w", NO_HEARTBEAT)
        # the broken connection is not reused
        assert (await client.heartbeat("e", "w", NO_HEARTBEAT)).lease_extended
    assert connections == [0, 1]


async def test_a_server_closing_an_idle_keep_alive_connection_does_not_fail_a_heartbeat() -> None:
    closed = anyio.Event()
    async with (
        scripted(lambda index: ok(), close_after=(0,), closed=closed) as (url, _, connections),
        LeaseClient(url, "k") as client,
    ):
        assert (await client.heartbeat("e", "w", NO_HEARTBEAT)).lease_extended
        await closed.wait()  # the idle connection is now closed by the server
        assert (await client.heartbeat("e", "w", NO_HEARTBEAT)).lease_extended
        assert (await client.heartbeat("e", "w", NO_HEARTBEAT)).lease_extended
    # a fresh connection for the second heartbeat, reused by the third
    assert connections == [0, 1]


async def test_a_cancelled_heartbeat_leaves_no_half_used_connection_behind() -> None:
    answers = [ok(), HOLD, ok()]
    async with (
        scripted(lambda index: answers[index]) as (url, _, connections),
        LeaseClient(url, "k") as client,
    ):
        assert (await client.heartbeat("e", "w", NO_HEARTBEAT)).lease_extended
        with anyio.move_on_after(0.2) as scope:
            await client.heartbeat("e", "w", NO_HEARTBEAT)  # the server never answers
        assert scope.cancelled_caught
        assert (await client.heartbeat("e", "w", NO_HEARTBEAT)).lease_extended
    # the connection left waiting for an answer was not reused
    assert connections == [0, 2]


async def test_a_proxy_from_the_environment_carries_the_heartbeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with scripted(lambda index: ok()) as (proxy_url, requests, _):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with LeaseClient("http://leasekit.invalid:8080", "k") as client:
            assert (await client.heartbeat("e", "w", NO_HEARTBEAT)).lease_extended
    # the proxy got the request in absolute form: the heartbeat went through it
    assert requests[0].split(b"\r\n")[0] == (
        b"POST http://leasekit.invalid:8080/v1/environments/e/work/w/heartbeat"
        b"?expected_last_heartbeat=NO_HEARTBEAT HTTP/1.1"
    )


async def test_no_proxy_sends_the_heartbeats_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    async with scripted(lambda index: ok()) as (url, requests, _):
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with LeaseClient(url, "k") as client:
            assert (await client.heartbeat("e", "w", NO_HEARTBEAT)).lease_extended
    assert requests[0].startswith(b"POST /v1/environments/e/work/w/heartbeat?")
