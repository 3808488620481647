"""The async HTTP client for the work calls of docs/protocol.md §1 (facts) (httpx).

Kept lean on purpose: one process may heartbeat 10,000 leases through one
:class:`LeaseClient`. Every call goes through httpx except the heartbeat,
which (when no proxy applies and no httpx client or transport is injected)
goes straight to httpcore, httpx's own HTTP/1.1 transport: the same h11
parser, TLS and keep-alive connections, without httpx's request and
response models and without httpcore's connection pool, whose bookkeeping
costs O(connections) syscalls per request and dominates the CPU of a
heartbeat once a few hundred connections are open.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import socket
import ssl
import time
import uuid
from collections import deque
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import quote

import anyio
import httpcore
import httpx

from .policy import Outcome, classify_status
from .protocol import (
    ANTHROPIC_BETA,
    ANTHROPIC_VERSION,
    HeartbeatAnswer,
    PreconditionFailed,
    QueueStats,
    WorkItem,
    WorkList,
    parse_timestamp,
)

__all__ = ["LeaseClient", "StatusError", "default_worker_id"]


def default_worker_id() -> str:
    """A worker id like the official SDK's: ``<hostname>-<12 hex digits>``."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"


class StatusError(Exception):
    """The API answered with an error status (other than a heartbeat's 412).

    ``status`` is the HTTP status; ``outcome`` its classification by
    :func:`leasekit.policy.classify_status` (``rejected`` for a fatal 4xx,
    ``transient`` for 5xx/408/409/429); ``error_type`` and ``message`` come
    from the API's error envelope when there is one; ``request_id`` likewise;
    ``retry_after_s`` the wait (seconds) the ``Retry-After`` header asked
    for, ``None`` without one.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {error_type or 'error'}: {message}")
        self.status = status
        self.outcome: Outcome = classify_status(status)
        self.error_type = error_type
        self.message = message
        self.request_id = request_id
        self.retry_after_s = retry_after_s


def _retry_after_s(value: str | bytes | None) -> float | None:
    """A ``Retry-After`` header's wait in seconds (RFC 9110: delay-seconds or an
    HTTP date); ``None`` when absent or unreadable (then it is ignored)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def _status_error(response: httpx.Response) -> StatusError:
    return _error_from(
        response.status_code,
        response.content,
        response.reason_phrase,
        retry_after=response.headers.get("retry-after"),
    )


def _error_from(
    status: int, content: bytes, reason: str = "", *, retry_after: str | bytes | None = None
) -> StatusError:
    error_type = message = request_id = None
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            error_type = error.get("type") if isinstance(error.get("type"), str) else None
            message = error.get("message") if isinstance(error.get("message"), str) else None
        request_id = body.get("request_id") if isinstance(body.get("request_id"), str) else None
    if message is None:
        message = content[:200].decode("utf-8", "replace") or reason or "error"
    return StatusError(
        status,
        message,
        error_type=error_type,
        request_id=request_id,
        retry_after_s=_retry_after_s(retry_after),
    )


def _path(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


@lru_cache(maxsize=65_536)
def _heartbeat_path(environment_id: str, work_id: str) -> str:
    # cached: a lease renews the same path thousands of times
    return f"/v1/environments/{_path(environment_id)}/work/{_path(work_id)}/heartbeat"


# Every exception httpcore raises for a failed request; mapped to httpx's own types below.
_HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ConnectionNotAvailable,
)


def _as_httpx_error(error: Exception) -> httpx.TransportError:
    """httpx's exception for an httpcore one (httpx mirrors httpcore's names:
    ``ReadTimeout``, ``ConnectError``, ``RemoteProtocolError``...), so callers
    see the same types on both heartbeat paths. The message is the first
    non-empty one down the chain of causes (on trio, httpcore's own is often
    empty while the TLS error beneath says what failed)."""
    message, cause = "", error
    for _ in range(5):
        message = str(cause)
        next_cause = cause.__cause__ or cause.__context__
        if message or next_cause is None or not isinstance(next_cause, Exception):
            break
        cause = next_cause
    message = message or type(error).__name__
    for cls in type(error).__mro__:
        mapped = getattr(httpx, cls.__name__, None)
        if isinstance(mapped, type) and issubclass(mapped, httpx.TransportError):
            return mapped(message)
    return httpx.TransportError(message)


# Idle connections are dropped before a typical server's keep-alive timeout
# (uvicorn's is 5 s) could close them under a request. A connection the server
# has already closed is also caught before reuse: httpcore sees its socket readable.
_KEEPALIVE_S = 4.0


class _HeartbeatConnections:
    """Keep-alive HTTP/1.1 connections to one origin for ``POST target`` with an
    empty body, each an :class:`httpcore.AsyncHTTPConnection` (h11, TLS).

    The pool is a LIFO list of idle connections: a request takes the most
    recently used one that httpcore still finds usable, or opens a new one,
    and gives it back only if httpcore left it idle (not closed, not broken
    by a cancellation). At most ``max_connections`` requests at once.
    """

    def __init__(
        self,
        url: httpx.URL,
        headers: Mapping[str, str],
        ssl_context: ssl.SSLContext,
        max_connections: int,
        timeout_s: float,
    ) -> None:
        self._scheme, self._host = url.raw_scheme, url.raw_host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._origin = httpcore.Origin(self._scheme, self._host, self._port)
        self._prefix = url.raw_path.rstrip(b"/")
        host_header = url.netloc  # host[:port] as httpx sends it (IDNA, no default port)
        self._headers = [(b"host", host_header), (b"content-length", b"0")] + [
            (name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()
        ]
        timeout = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
        self._extensions = {"timeout": timeout}
        self._ssl_context = ssl_context
        self._idle: deque[tuple[httpcore.AsyncHTTPConnection, float]] = deque()
        self._max_connections = max_connections
        self._slots: anyio.Semaphore | None = None
        self._closed = False

    async def _checkout(self) -> httpcore.AsyncHTTPConnection:
        while self._idle:
            connection, _ = self._idle.pop()
            # has_expired: past keepalive_expiry, or the server closed it (socket readable)
            if connection.is_available() and not connection.has_expired():
                return connection
            await connection.aclose()
        return httpcore.AsyncHTTPConnection(
            self._origin, ssl_context=self._ssl_context, keepalive_expiry=_KEEPALIVE_S
        )

    async def _checkin(self, connection: httpcore.AsyncHTTPConnection) -> None:
        now = time.monotonic()
        if connection.is_idle() and not self._closed:
            self._idle.append((connection, now))
        elif not connection.is_closed():
            await connection.aclose()
        # the least recently used sink to the bottom: close them once past their keep-alive
        while self._idle and now - self._idle[0][1] > _KEEPALIVE_S:
            await self._idle.popleft()[0].aclose()

    async def post(self, target: bytes) -> tuple[int, bytes, bytes | None]:
        """Send ``POST {prefix}{target}``; return ``(status, body, retry_after)``,
        the last the ``Retry-After`` header of an error answer (else ``None``).

        Raises :class:`httpx.TransportError` (its subclasses, as httpx would)
        when connecting, sending or reading fails. Cancellation closes the
        connection (httpcore does not reuse a connection left mid-request).
        """
        if self._slots is None:
            self._slots = anyio.Semaphore(self._max_connections)
        url = httpcore.URL(
            scheme=self._scheme, host=self._host, port=self._port, target=self._prefix + target
        )
        request = httpcore.Request(b"POST", url, headers=self._headers, extensions=self._extensions)
        async with self._slots:
            connection = await self._checkout()
            try:
                response = await connection.handle_async_request(request)
                try:
                    content = await response.aread()
                finally:
                    await response.aclose()
            except _HTTPCORE_ERRORS as error:
                raise _as_httpx_error(error) from error
            finally:
                with anyio.CancelScope(shield=True):
                    await self._checkin(connection)
        retry_after = None
        if response.status >= 300:
            retry_after = next(
                (value for name, value in response.headers if name.lower() == b"retry-after"),
                None,
            )
        return response.status, content, retry_after

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        while self._idle:
            await self._idle.pop()[0].aclose()


def _proxied(http: httpx.AsyncClient, url: httpx.URL) -> bool:
    """Whether httpx would send a request for ``url`` through a proxy (from
    ``HTTP(S)_PROXY``/``ALL_PROXY`` minus ``NO_PROXY``, or a mount): asked of
    httpx itself rather than re-implementing its rules. When this httpx does
    not expose the answer, assume a proxy, which keeps every call on httpx."""
    pick = getattr(http, "_transport_for_url", None)
    default = getattr(http, "_transport", None)
    if pick is None or default is None:
        return True
    return pick(url) is not default


class LeaseClient:
    """An async client for one server's work calls.

    ``base_url`` is the API root (``https://api.anthropic.com`` or a
    reference server's ``http://127.0.0.1:PORT``). ``key`` is sent as
    ``Authorization: Bearer <key>`` (``auth="bearer"``, the default) or as
    ``x-api-key`` (``auth="x-api-key"``), with the ``anthropic-version`` and
    ``anthropic-beta`` headers the official SDK sends.

    ``http`` injects a ready :class:`httpx.AsyncClient` (its base URL is
    ignored; the client is not closed by :meth:`aclose`); otherwise one is
    made with ``transport`` (inject an ASGI or mock transport here),
    ``verify`` (TLS verification as httpx takes it: ``True`` for certifi's
    CAs, honouring ``SSL_CERT_FILE``/``SSL_CERT_DIR``; or an
    :class:`ssl.SSLContext`, e.g. trusting a private CA), ``timeout_s``
    (seconds, per request, as a backstop: the lease keeper bounds each
    heartbeat itself) and up to ``max_connections`` pooled connections.
    Proxies come from the environment as httpx takes them. Use it as
    ``async with LeaseClient(...) as client:``.

    Heartbeats: when nothing is injected and no proxy applies to
    ``base_url``, they go straight to httpcore (httpx's own HTTP/1.1
    transport, same TLS context) on keep-alive connections of their own,
    several times cheaper in CPU per call than through httpx; otherwise
    they go through httpx like every other call.

    Errors: a heartbeat's 412 raises :class:`leasekit.protocol.PreconditionFailed`
    carrying ``current_state``; any other error status raises
    :class:`StatusError`; connection problems raise :class:`httpx.TransportError`
    (:class:`httpx.TimeoutException` for timeouts); a 2xx body that does
    not parse raises :class:`ValueError`.
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        auth: Literal["bearer", "x-api-key"] = "bearer",
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 600.0,
        max_connections: int = 1000,
    ) -> None:
        if auth not in ("bearer", "x-api-key"):
            raise ValueError(f"auth must be 'bearer' or 'x-api-key', got {auth!r}")
        self.base_url = base_url.rstrip("/")
        headers = {
            "anthropic-version": ANTHROPIC_VERSION,
            "anthropic-beta": ANTHROPIC_BETA,
            "accept": "application/json",
        }
        if auth == "bearer":
            headers["authorization"] = f"Bearer {key}"
        else:
            headers["x-api-key"] = key
        self._headers = headers
        self._owns_http = http is None
        # one TLS context for both paths, built as httpx builds its own
        ssl_context = httpx.create_ssl_context(verify=verify)
        self._http = http or httpx.AsyncClient(
            transport=transport,
            verify=ssl_context,
            timeout=timeout_s,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
        )
        url = httpx.URL(self.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be http(s)://host[:port][/path], got {base_url!r}")
        # heartbeats skip httpx unless the caller injected their own HTTP stack or
        # a proxy applies: only httpx knows how to go through a proxy
        self._direct = (
            _HeartbeatConnections(url, headers, ssl_context, max_connections, timeout_s)
            if http is None and transport is None and not _proxied(self._http, url)
            else None
        )

    def __repr__(self) -> str:
        # never show the key
        return f"LeaseClient({self.base_url!r})"

    async def aclose(self) -> None:
        """Close the pooled connections (unless the httpx client was injected)."""
        if self._direct is not None:
            await self._direct.aclose()
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> LeaseClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ plumbing

    def _url(self, environment_id: str, *rest: str) -> str:
        tail = ("/" + _path(*rest)) if rest else ""
        return f"{self.base_url}/v1/environments/{_path(environment_id)}/work{tail}"

    async def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        all_headers = self._headers if headers is None else {**self._headers, **headers}
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode()
            all_headers = {**all_headers, "content-type": "application/json"}
        response = await self._http.request(
            method, url, params=params, content=content, headers=all_headers
        )
        if response.status_code >= 300:
            raise _status_error(response)
        if not response.content:
            return None
        return response.json()

    # ------------------------------------------------------------------ work calls

    async def heartbeat(
        self,
        environment_id: str,
        work_id: str,
        expected_last_heartbeat: str,
        desired_ttl_seconds: int | None = None,
    ) -> HeartbeatAnswer:
        """Renew (or, with ``NO_HEARTBEAT``, claim) a lease.

        Parameters go in the query string with an empty body, as the SDK
        sends them; ``desired_ttl_seconds`` is left out when ``None``.
        Raises :class:`PreconditionFailed` on 412.
        """
        path = _heartbeat_path(environment_id, work_id)
        if self._direct is not None:
            query = "?expected_last_heartbeat=" + quote(expected_last_heartbeat, safe="")
            if desired_ttl_seconds is not None:
                query += f"&desired_ttl_seconds={int(desired_ttl_seconds)}"
            status, content, retry_after = await self._direct.post((path + query).encode("ascii"))
        else:
            params = {"expected_last_heartbeat": expected_last_heartbeat}
            if desired_ttl_seconds is not None:
                params["desired_ttl_seconds"] = str(desired_ttl_seconds)
            response = await self._http.request(
                "POST", self.base_url + path, params=params, headers=self._headers
            )
            status, content = response.status_code, response.content
            retry_after = response.headers.get("retry-after")
        if 200 <= status < 300:
            body = json.loads(content)
            if not isinstance(body, Mapping):
                raise ValueError(f"heartbeat answer: expected an object, got {body!r}")
            return HeartbeatAnswer.from_json(body)
        if status == 412:
            try:
                raise PreconditionFailed.from_envelope(json.loads(content))
            except ValueError:
                pass  # a 412 without a readable current_state: report it as a status
        raise _error_from(status, content, retry_after=retry_after)

    async def poll(
        self,
        environment_id: str,
        *,
        worker_id: str | None = None,
        block_ms: int | None = None,
        reclaim_older_than_ms: int | None = None,
    ) -> WorkItem | None:
        """Take the next queued item, or ``None``. ``block_ms`` (1..999) long-polls.

        ``worker_id`` is sent as the ``Anthropic-Worker-ID`` header.
        """
        params: dict[str, Any] = {}
        if block_ms is not None:
            params["block_ms"] = block_ms
        if reclaim_older_than_ms is not None:
            params["reclaim_older_than_ms"] = reclaim_older_than_ms
        headers = {"anthropic-worker-id": worker_id} if worker_id else None
        body = await self._call(
            "GET", self._url(environment_id, "poll"), params=params, headers=headers
        )
        return None if body is None else WorkItem.from_json(body)

    async def ack(self, environment_id: str, work_id: str) -> None:
        """Acknowledge a polled item: ``queued -> starting``."""
        await self._call("POST", self._url(environment_id, work_id, "ack"))

    async def stop(self, environment_id: str, work_id: str, *, force: bool = False) -> None:
        """Stop an item: gracefully (``stopping``) or with ``force`` (``stopped``)."""
        await self._call("POST", self._url(environment_id, work_id, "stop"), body={"force": force})

    async def retrieve(self, environment_id: str, work_id: str) -> WorkItem:
        """One work item."""
        return WorkItem.from_json(await self._call("GET", self._url(environment_id, work_id)))

    async def update(
        self, environment_id: str, work_id: str, metadata: Mapping[str, str | None]
    ) -> WorkItem:
        """Patch an item's metadata; a ``None`` value deletes the key."""
        body = await self._call(
            "POST", self._url(environment_id, work_id), body={"metadata": dict(metadata)}
        )
        return WorkItem.from_json(body)

    async def list(
        self, environment_id: str, *, limit: int | None = None, page: str | None = None
    ) -> WorkList:
        """One page of the environment's items; pass ``next_page`` back as ``page``."""
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if page is not None:
            params["page"] = page
        body = await self._call("GET", self._url(environment_id), params=params)
        items = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(items, list):
            raise ValueError("work list: field 'data': expected a list")
        next_page = body.get("next_page")
        return WorkList(
            tuple(WorkItem.from_json(item) for item in items),
            next_page if isinstance(next_page, str) else None,
        )

    async def stats(self, environment_id: str) -> QueueStats:
        """The environment's queue statistics."""
        body = await self._call("GET", self._url(environment_id, "stats"))
        if not isinstance(body, Mapping) or body.get("type") != "work_queue_stats":
            raise ValueError(f"queue stats: unexpected answer {body!r}")
        oldest = body.get("oldest_queued_at")
        return QueueStats(
            depth=int(body["depth"]),
            pending=int(body["pending"]),
            oldest_queued_at_us=parse_timestamp(oldest) if isinstance(oldest, str) else None,
            workers_polling=int(body["workers_polling"]),
        )

    async def create(
        self,
        environment_id: str,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> WorkItem:
        """Queue a new item: leasekit's reference-server extension, not the hosted API."""
        body: dict[str, Any] = {}
        if session_id is not None:
            body["data"] = {"type": "session", "id": session_id}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        return WorkItem.from_json(await self._call("POST", self._url(environment_id), body=body))
