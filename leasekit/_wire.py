"""A lean HTTP/1.1 keep-alive path for the one call that runs 10,000 times a
minute: the heartbeat.

httpx (and the official SDK on its fork) spends most of a heartbeat's CPU in
generic machinery: URL objects, header models, cookie and auth hooks, the
connection pool's bookkeeping. A heartbeat is always the same request shape
(``POST`` with a query string, an empty body, fixed headers) and its answer
is a small JSON object, so this module writes the request bytes directly and
reads the answer with a minimal parser: status line, headers,
``Content-Length`` or chunked body. Everything else in :class:`LeaseClient`
still goes through httpx, and an injected httpx client or transport turns
this path off.
"""

from __future__ import annotations

import select
import ssl
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream, SocketAttribute

__all__ = ["HeartbeatWire"]

_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 4 * 1024 * 1024
# Idle connections are closed before a typical server's keep-alive timeout
# (uvicorn's is 5 s) would close them under us.
_MAX_IDLE_S = 4.0


class WireError(OSError):
    """The connection broke or the answer was not valid HTTP/1.1."""


def _socket_unusable(stream: ByteStream) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server
    (or holds unexpected bytes): it must not carry a request."""
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
    except anyio.TypedAttributeLookupError:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Reader:
    __slots__ = ("buffer", "stream")

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _more(self) -> None:
        try:
            chunk = await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError) as error:
            raise WireError("the server closed the connection") from error
        self.buffer += chunk

    async def until(self, marker: bytes, limit: int) -> bytes:
        while True:
            index = self.buffer.find(marker)
            if index >= 0:
                head, self.buffer = self.buffer[:index], self.buffer[index + len(marker) :]
                return head
            if len(self.buffer) > limit:
                raise WireError("answer head too large")
            await self._more()

    async def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            await self._more()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def rest(self) -> bytes:
        while True:
            try:
                self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return self.buffer
            if len(self.buffer) > _MAX_BODY_BYTES:
                raise WireError("answer body too large")


async def _read_response(stream: ByteStream) -> tuple[int, bytes, bool]:
    """Read one answer: ``(status, body, connection reusable)``."""
    reader = _Reader(stream)
    head = await reader.until(b"\r\n\r\n", _MAX_HEAD_BYTES)
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise WireError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    keep_alive = parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep_alive = value.lower() == b"keep-alive" or (
                keep_alive and value.lower() != b"close"
            )
    if status in (204, 304) or 100 <= status < 200:
        body = b""
    elif chunked:
        pieces = []
        while True:
            size_line = await reader.until(b"\r\n", 1024)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.until(b"\r\n", _MAX_HEAD_BYTES):
                    pass  # trailer fields, up to the empty line
                break
            pieces.append(await reader.exactly(size))
            await reader.exactly(2)
            if sum(map(len, pieces)) > _MAX_BODY_BYTES:
                raise WireError("answer body too large")
        body = b"".join(pieces)
    elif length is not None:
        if length > _MAX_BODY_BYTES:
            raise WireError("answer body too large")
        body = await reader.exactly(length)
    else:
        body = await reader.rest()
        keep_alive = False
    if reader.buffer:  # bytes beyond the answer: the connection is out of step
        keep_alive = False
    return status, body, keep_alive


class HeartbeatWire:
    """Keep-alive HTTP/1.1 connections to one origin, for ``POST target`` with an
    empty body. ``headers`` are sent on every request (``host`` and
    ``content-length`` are added). At most ``max_connections`` at once."""

    def __init__(self, base_url: str, headers: Mapping[str, str], max_connections: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port], got {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        lines = [f"host: {host_header}", "content-length: 0"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._idle: list[tuple[ByteStream, float]] = []
        self._max_connections = max_connections
        self._slots: anyio.Semaphore | None = None
        self._ssl: ssl.SSLContext | None = None

    async def _connect(self) -> ByteStream:
        if self.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return await anyio.connect_tcp(
                self.host, self.port, tls=True, ssl_context=self._ssl, tls_hostname=self.host
            )
        return await anyio.connect_tcp(self.host, self.port)

    async def _reusable(self) -> ByteStream | None:
        now = time.monotonic()
        while self._idle:
            stream, since = self._idle.pop()
            if now - since < _MAX_IDLE_S and not _socket_unusable(stream):
                return stream
            await anyio.aclose_forcefully(stream)
        return None

    async def post(self, target: str) -> tuple[int, bytes]:
        """Send ``POST {prefix}{target}``; return ``(status, body)``.

        Raises :class:`WireError` (an :class:`OSError`) when the connection
        breaks or the answer is not HTTP/1.1. Cancellation closes the connection.
        """
        if self._slots is None:
            self._slots = anyio.Semaphore(self._max_connections)
        request = b"POST " + (self.prefix + target).encode("ascii") + b" HTTP/1.1\r\n" + self._head
        async with self._slots:
            stream = await self._reusable() or await self._connect()
            reusable = False
            try:
                await stream.send(request)
                status, body, reusable = await _read_response(stream)
                return status, body
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as error:
                raise WireError("the connection broke") from error
            finally:
                if reusable:
                    self._idle.append((stream, time.monotonic()))
                else:
                    await anyio.aclose_forcefully(stream)

    async def aclose(self) -> None:
        """Close the idle connections."""
        while self._idle:
            await anyio.aclose_forcefully(self._idle.pop()[0])
