"""The HTTP layer: a small ASGI app routing the work-lease calls (docs/protocol.md) to a store.

Written against raw ASGI rather than a framework's router because the
heartbeat is the hot path: one split of the path, one dict lookup for the
key, one store call, one precomputed-header response. Everything a rule
decides comes from :mod:`leasekit.lease` through the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

from starlette.datastructures import State

from ..lease import DEFAULT_RECLAIM_OLDER_THAN_MS
from ..protocol import ApiError, ErrorType, dumps
from ._connections import Throttled
from ._faults import Faults
from ._limits import QUEUE_FULL_RETRY_AFTER_S, Limits, RateLimited, RequestRates, TurnShare
from ._store import EncodedJson, Json, Store

logger = logging.getLogger("leasekit.server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES: Final = 64 * 1024
"""Larger request bodies answer 413 (metadata is limited far below this)."""
HOLD_LIMIT_S: Final = 600.0
"""A dropped request or answer holds its connection at most this long."""
BODY_TIMEOUT_S: Final = 10.0
"""A request body must arrive within this long of the request's head (400)."""
REFUSAL_DELAY_S: Final = 0.5
"""How long a 401 (unknown key) or 429 (over a limit) waits before it is sent."""
MAX_WORKER_ID_CHARS: Final = 256
MAX_RECLAIM_OLDER_THAN_MS: Final = 86_400_000

_INTEGER = re.compile(r"-?[0-9]{1,18}")
_JSON_HEADERS: Final = (b"content-type", b"application/json")


def _now_us() -> int:
    return time.time_ns() // 1000


def _bad(message: str) -> ApiError:
    return ApiError(ErrorType.INVALID_REQUEST, message)


def _int_param(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    """An integer query parameter, ``None`` when absent; 400 naming it otherwise."""
    text = query.get(name)
    if text is None:
        return None
    if not _INTEGER.fullmatch(text):
        raise _bad(f"{name}: expected an integer, got {text!r:.80}")
    value = int(text)
    if not low <= value <= high:
        raise _bad(f"{name}: must be between {low} and {high}, got {value}")
    return value


def _parse_query(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    try:
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _bad("query string: not valid percent-encoded UTF-8") from None
    return dict(pairs)


def _json_object(body: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    """Parse a request body that must be a JSON object with only ``allowed`` keys.
    An empty body is an empty object."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except RecursionError:
        raise _bad("request body: JSON nested too deeply") from None
    except json.JSONDecodeError as error:
        raise _bad(
            f"request body: malformed JSON ({error.msg} at line {error.lineno} "
            f"column {error.colno})"
        ) from None
    except ValueError:  # bytes that are not UTF-8/16/32
        raise _bad("request body: not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise _bad(f"request body: expected a JSON object, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise _bad(f"request body: unknown field {key!r:.80}")  # repr: printable text
    return value


# Route names, also what faults match on.
_LIST, _CREATE, _POLL, _STATS, _RETRIEVE, _UPDATE, _ACK, _HEARTBEAT, _STOP = (
    "list",
    "create",
    "poll",
    "stats",
    "retrieve",
    "update",
    "ack",
    "heartbeat",
    "stop",
)
_WITH_BODY: Final = frozenset({_CREATE, _UPDATE, _STOP})
_BULK: Final = frozenset({_LIST, _STATS, _CREATE})
"""Routes whose work is bulk: one environment starts one per event-loop turn
(:class:`~leasekit.server._limits.TurnShare`)."""


def _route(method: str, path: str) -> tuple[str, str, str] | None:
    """``(route, environment_id, work_id)`` for a path under
    ``/v1/environments/{environment_id}/work``, or ``None``."""
    parts = path.split("/")
    count = len(parts)
    if count < 5 or count > 7 or parts[0] or parts[1] != "v1" or parts[2] != "environments":
        return None
    environment_id = parts[3]
    if not environment_id or parts[4] != "work":
        return None
    if count == 5:
        if method == "GET":
            return _LIST, environment_id, ""
        return (_CREATE, environment_id, "") if method == "POST" else None
    work_id = parts[5]
    if not work_id:
        return None
    if count == 6:
        if method == "GET":
            if work_id == "poll":
                return _POLL, environment_id, ""
            if work_id == "stats":
                return _STATS, environment_id, ""
            return _RETRIEVE, environment_id, work_id
        return (_UPDATE, environment_id, work_id) if method == "POST" else None
    action = parts[6]
    if method == "POST" and action in (_HEARTBEAT, _ACK, _STOP):
        return action, environment_id, work_id
    return None


class LeaseServerApp:
    """The reference server as an ASGI app. Build it with
    :func:`leasekit.server.create_app`.

    ``state.faults`` is the live :class:`~leasekit.server.Faults`;
    ``state.store`` the storage backend.
    """

    def __init__(
        self,
        store: Store,
        keys: Mapping[str, str],
        faults: Faults,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.faults = faults
        self.state = State()
        self.state.faults = faults
        self.state.store = store
        # key -> environment; bytes because headers arrive as bytes
        self._environment_by_key = {key.encode(): env for env, key in keys.items()}
        self._arrivals: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._held = 0
        self.body_timeout_s = BODY_TIMEOUT_S
        """Seconds a request body may take to arrive after its head (then 400)."""
        self.refusal_delay_s = REFUSAL_DELAY_S
        """Seconds a 401 or 429 waits before it is sent (0: at once)."""
        self.limits = limits or Limits()
        rate = self.limits.requests_per_second
        self._rates = None if rate is None else RequestRates(rate, self.limits.burst)
        self._bulk = TurnShare()
        self._unexpected = Throttled("unexpected errors (tracebacks: the first of each interval)")
        self._unexpected_traced_at = -1e9

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._bind_loop()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _bind_loop(self) -> asyncio.Event:
        if self._closing is None:
            self._loop = asyncio.get_running_loop()
            self._closing = asyncio.Event()
        return self._closing

    @property
    def held_requests(self) -> int:
        """How many requests a drop fault is holding without an answer now."""
        return self._held

    def release_holds(self) -> None:
        """End every held (dropped) request now; safe from any thread.
        Call before stopping the server so that shutdown does not wait."""
        loop, closing = self._loop, self._closing
        if loop is None or closing is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(closing.set)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Random, not counted: a count would tell a tenant how busy the others are.
        request_id = "req_" + secrets.token_hex(12)
        action = None
        route_name = "?"
        retry_after_s: int | None = None
        try:
            route = _route(scope["method"], scope["path"])
            if route is None:
                raise ApiError(
                    ErrorType.NOT_FOUND,
                    f"no route for {scope['method']} {scope['path']!r:.200}",
                )
            route_name, environment_id, work_id = route
            faults = self.faults
            if faults.active and faults.applies_to(route_name == _HEARTBEAT):
                delay, action = faults.draw()
                if delay > 0:
                    await asyncio.sleep(delay)
                if action == "drop_request":
                    await self._hold(receive, send, request_id)
                    return
                if action == "error":
                    status = faults.error_status()
                    kind = ErrorType.OVERLOADED if status == 529 else ErrorType.API
                    raise ApiError(kind, "injected fault: the server did not process this request")
            headers = scope["headers"]
            self._authorize(headers, environment_id)
            if self._rates is not None:
                self._rates.admit(environment_id, time.monotonic())
            body = b""
            if route_name in _WITH_BODY:
                body = await self._read_body(headers, receive)
            if route_name in _BULK:
                await self._bulk.take(environment_id)
            status = 200
            answer: Json | EncodedJson | None = await self._dispatch(
                route_name, environment_id, work_id, scope, headers, body
            )
        except ApiError as error:
            status, answer = error.status, error.envelope(request_id)
            if status == 429:
                retry_after_s = (
                    error.retry_after_s
                    if isinstance(error, RateLimited)
                    else QUEUE_FULL_RETRY_AFTER_S
                )
            if status in (401, 429) and self.refusal_delay_s > 0:
                # A client over its limit, or guessing keys, waits for its
                # refusal: a flood that ignores Retry-After then sends at most
                # one request per connection per delay instead of taking the
                # event loop from the tenants that behave.
                await asyncio.sleep(min(self.refusal_delay_s, retry_after_s or 60))
        except Exception:
            self._log_unexpected(route_name, request_id)
            status = 500
            answer = ApiError(ErrorType.API, "internal server error").envelope(request_id)
        if action == "drop_answer":
            await self._hold(receive, send, request_id)
            return
        await self._send_json(send, status, answer, request_id, retry_after_s)

    def _log_unexpected(self, route_name: str, request_id: str) -> None:
        """The traceback for the operator (no headers, hence no keys), at most
        one per interval: a client that found a way to fail us must not be
        able to fill the disk; the client only learns that something failed."""
        now = time.monotonic()
        if now - self._unexpected_traced_at >= 10.0:
            self._unexpected_traced_at = now
            logger.exception("unexpected error in %s (request %s)", route_name, request_id)
        self._unexpected.hit()

    async def _send_json(
        self,
        send: Send,
        status: int,
        answer: Json | EncodedJson | None,
        request_id: str,
        retry_after_s: int | None = None,
    ) -> None:
        try:
            payload = answer if isinstance(answer, EncodedJson) else dumps(answer)
        except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
            # Nothing may store text that cannot be encoded (see check_text);
            # if something did, the client still gets the envelope.
            self._log_unexpected("answer encoding", request_id)
            status = 500
            payload = dumps(ApiError(ErrorType.API, "internal server error").envelope(request_id))
        headers = [
            _JSON_HEADERS,
            (b"content-length", str(len(payload)).encode()),
            (b"request-id", request_id.encode()),
        ]
        if retry_after_s is not None:
            headers.append((b"retry-after", str(retry_after_s).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    # ------------------------------------------------------------------ plumbing

    def _authorize(self, headers: list[tuple[bytes, bytes]], environment_id: str) -> None:
        key = b""
        for name, value in headers:
            if name == b"x-api-key":
                key = value.strip()
                break
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                key = value[7:].strip()
        if not key:
            raise ApiError(
                ErrorType.AUTHENTICATION,
                "missing API key: send an x-api-key or an Authorization: Bearer header",
            )
        owner = self._environment_by_key.get(key)
        if owner is None:
            raise ApiError(ErrorType.AUTHENTICATION, "invalid API key")
        if owner != environment_id:
            # A key never learns whether another environment exists.
            raise ApiError(ErrorType.NOT_FOUND, f"environment {environment_id!r:.100} not found")

    async def _read_body(self, headers: list[tuple[bytes, bytes]], receive: Receive) -> bytes:
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                raise ApiError(
                    ErrorType.REQUEST_TOO_LARGE, f"request body: larger than {MAX_BODY_BYTES} bytes"
                )
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await self._receive_body(receive)
        except TimeoutError:
            raise _bad(f"request body: not complete within {self.body_timeout_s:g} s") from None

    async def _receive_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ApiError(ErrorType.INVALID_REQUEST, "request body: client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ApiError(
                    ErrorType.REQUEST_TOO_LARGE, f"request body: larger than {MAX_BODY_BYTES} bytes"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _hold(self, receive: Receive, send: Send, request_id: str) -> None:
        """Keep the connection open without answering until the client gives
        up, the server shuts down, or :data:`HOLD_LIMIT_S` passes. In the
        last two cases the client is still there: tell it we are overloaded
        rather than leave the server to improvise an answer."""
        closing = self._bind_loop()

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        disconnected = asyncio.ensure_future(until_disconnect())
        released = asyncio.ensure_future(closing.wait())
        self._held += 1
        try:
            await asyncio.wait(
                (disconnected, released), timeout=HOLD_LIMIT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._held -= 1
            released.cancel()
            if not disconnected.done():
                disconnected.cancel()
        if not disconnected.done() or disconnected.cancelled():
            error = ApiError(ErrorType.OVERLOADED, "the server stopped holding this request")
            await self._send_json(send, error.status, error.envelope(request_id), request_id)

    def _arrival(self, environment_id: str) -> asyncio.Event:
        event = self._arrivals.get(environment_id)
        if event is None:
            event = self._arrivals[environment_id] = asyncio.Event()
        return event

    def _notify_arrival(self, environment_id: str) -> None:
        event = self._arrivals.pop(environment_id, None)
        if event is not None:
            event.set()

    # ------------------------------------------------------------------ routes

    async def _dispatch(
        self,
        route: str,
        environment_id: str,
        work_id: str,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Json | EncodedJson | None:
        store = self.store
        if route == _HEARTBEAT:
            query = _parse_query(scope["query_string"])
            ttl = _int_param(query, "desired_ttl_seconds", -(10**18), 10**18)
            return await store.heartbeat(
                environment_id, work_id, _now_us(), query.get("expected_last_heartbeat"), ttl
            )
        if route == _POLL:
            return await self._poll(environment_id, scope, headers)
        if route == _ACK:
            return await store.ack(environment_id, work_id, _now_us())
        if route == _RETRIEVE:
            return await store.retrieve(environment_id, work_id, _now_us())
        if route == _STOP:
            fields = _json_object(body, frozenset({"force"}))
            force = fields.get("force")
            if force is None:
                force = False
            elif not isinstance(force, bool):
                raise _bad(f"force: expected a boolean, got {force!r:.80}")
            return await store.stop(environment_id, work_id, _now_us(), force)
        if route == _UPDATE:
            fields = _json_object(body, frozenset({"metadata"}))
            metadata = fields.get("metadata")
            if not isinstance(metadata, dict):
                raise _bad("metadata: expected an object of string or null values")
            # the rules check the patch (leasekit.lease.validate_metadata) before any change
            return await store.update_metadata(environment_id, work_id, _now_us(), metadata)
        if route == _LIST:
            query = _parse_query(scope["query_string"])
            limit = _int_param(query, "limit", -(10**18), 10**18)
            return await store.list(environment_id, _now_us(), limit, query.get("page"))
        if route == _STATS:
            return await store.stats(environment_id, _now_us())
        if route == _CREATE:
            return await self._create(environment_id, body)
        raise AssertionError(f"unrouted {route}")  # pragma: no cover

    async def _create(self, environment_id: str, body: bytes) -> Json:
        # The JSON's shape here; the item's fields (data.id, metadata) are
        # checked once, for both stores, by leasekit.lease.new_record.
        fields = _json_object(body, frozenset({"data", "metadata"}))
        session_id: Any = None
        data = fields.get("data")
        if data is not None:
            if not isinstance(data, dict):
                raise _bad("data: expected an object")
            for key in data:
                if key not in ("type", "id"):
                    raise _bad(f"data: unknown field {key!r:.80}")
            if data.get("type", "session") != "session":
                raise _bad(f"data.type: expected 'session', got {data.get('type')!r:.80}")
            session_id = data.get("id")
        item = await self.store.enqueue(
            environment_id, _now_us(), session_id, fields.get("metadata"), self.limits.max_queued
        )
        self._notify_arrival(environment_id)
        return item

    async def _poll(
        self, environment_id: str, scope: Scope, headers: list[tuple[bytes, bytes]]
    ) -> Json | None:
        query = _parse_query(scope["query_string"])
        block_ms = _int_param(query, "block_ms", 1, 999)
        reclaim = _int_param(query, "reclaim_older_than_ms", 0, MAX_RECLAIM_OLDER_THAN_MS)
        reclaim_ms = DEFAULT_RECLAIM_OLDER_THAN_MS if reclaim is None else reclaim
        worker_id: str | None = None
        for name, value in headers:
            if name == b"anthropic-worker-id":
                worker_id = value.decode("latin-1")
                if not 1 <= len(worker_id) <= MAX_WORKER_ID_CHARS:
                    raise _bad(
                        f"Anthropic-Worker-ID: expected 1 to {MAX_WORKER_ID_CHARS} characters"
                    )
        store = self.store
        loop = asyncio.get_running_loop()
        end = loop.time() + (block_ms or 0) / 1000
        recheck_s = store.recheck_s
        token = 0
        while True:
            # Take the event before looking, so an enqueue in between still wakes us.
            arrival = self._arrival(environment_id)
            if recheck_s is not None:
                token = await store.change_token()
            item = await store.poll(environment_id, _now_us(), worker_id, reclaim_ms)
            if item is not None or loop.time() >= end:
                return item
            # Wait until something could have made an item available: an
            # enqueue here (the event), a deadline or reclaim coming due, or
            # a commit by another process (seen at the next recheck).
            while True:
                remaining = end - loop.time()
                if remaining <= 0:
                    return None
                wait = remaining
                due_us = await store.next_due_us(environment_id, reclaim_ms)
                if due_us is not None:
                    wait = min(wait, max(0.0, (due_us - _now_us()) / 1e6))
                if recheck_s is not None:
                    wait = min(wait, recheck_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrival.wait(), wait)
                if arrival.is_set() or (due_us is not None and _now_us() >= due_us):
                    break
                if recheck_s is not None and await store.change_token() != token:
                    break
