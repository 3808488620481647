"""The async HTTP client for the work calls of PROTOCOL.md part A (httpx).

Kept lean on purpose: one process may heartbeat 10,000 leases through one
:class:`LeaseClient`, so the heartbeat path builds its request with as little
work as httpx allows and parses only the four fields it needs.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import quote

import httpx

from ._wire import HeartbeatWire
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
    from the API's error envelope when there is one; ``request_id`` likewise.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {error_type or 'error'}: {message}")
        self.status = status
        self.outcome: Outcome = classify_status(status)
        self.error_type = error_type
        self.message = message
        self.request_id = request_id


def _status_error(response: httpx.Response) -> StatusError:
    return _error_from(response.status_code, response.content, response.reason_phrase)


def _error_from(status: int, content: bytes, reason: str = "") -> StatusError:
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
    return StatusError(status, message, error_type=error_type, request_id=request_id)


def _path(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


@lru_cache(maxsize=65_536)
def _heartbeat_path(environment_id: str, work_id: str) -> str:
    # cached: a lease renews the same path thousands of times
    return f"/v1/environments/{_path(environment_id)}/work/{_path(work_id)}/heartbeat"


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
    ``timeout_s`` (seconds, per request, as a backstop: the lease keeper
    bounds each heartbeat itself) and up to ``max_connections`` pooled
    connections. Use it as ``async with LeaseClient(...) as client:``.

    Heartbeats: unless ``http`` or ``transport`` is injected, they skip
    httpx for a lean keep-alive HTTP/1.1 path of their own
    (:mod:`leasekit._wire`), several times cheaper in CPU per call; with an
    injection they go through it like every other call.

    Errors: a heartbeat's 412 raises :class:`leasekit.protocol.PreconditionFailed`
    carrying ``current_state``; any other error status raises
    :class:`StatusError`; connection problems raise :class:`httpx.TransportError`
    (or, on the lean heartbeat path, :class:`OSError`); a 2xx body that does
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
        # heartbeats take the lean path unless the caller injected their own HTTP stack
        self._wire = (
            HeartbeatWire(self.base_url, headers, max_connections)
            if http is None and transport is None
            else None
        )
        self._http = http or httpx.AsyncClient(
            transport=transport,
            timeout=timeout_s,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
        )

    def __repr__(self) -> str:
        # never show the key
        return f"LeaseClient({self.base_url!r})"

    async def aclose(self) -> None:
        """Close the pooled connections (unless the httpx client was injected)."""
        if self._wire is not None:
            await self._wire.aclose()
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
        if self._wire is not None:
            query = "?expected_last_heartbeat=" + quote(expected_last_heartbeat, safe="")
            if desired_ttl_seconds is not None:
                query += f"&desired_ttl_seconds={int(desired_ttl_seconds)}"
            status, content = await self._wire.post(path + query)
        else:
            params = {"expected_last_heartbeat": expected_last_heartbeat}
            if desired_ttl_seconds is not None:
                params["desired_ttl_seconds"] = str(desired_ttl_seconds)
            response = await self._http.request(
                "POST", self.base_url + path, params=params, headers=self._headers
            )
            status, content = response.status_code, response.content
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
        raise _error_from(status, content)

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
