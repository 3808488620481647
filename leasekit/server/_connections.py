"""Connection hygiene: idle and slow connections are closed, the number of
open connections stays below the process's file-descriptor limit, and the
log says so in one line per condition, not one per event.

uvicorn's HTTP/1.1 protocol (h11) closes a keep-alive connection idle after
an answer, but not one that never sends a request or sends it a byte at a
time, and it accepts connections until ``accept()`` fails with "Too many
open files". :class:`GuardedH11Protocol` adds the missing parts.

A burst of new connections (a thousand sockets opened at once) must not
hold up the requests of connections already open: :class:`GuardedServer`
accepts at most :data:`ACCEPT_BATCH` connections per turn of the event loop
(benchmarks/bench_soak.py measures the difference).
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import socket
import time
from typing import Any, Final

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..protocol import ApiError, ErrorType, dumps

logger = logging.getLogger("leasekit.server")
_jitter = random.Random()  # our own: the global generator is the application's

REQUEST_TIMEOUT_S: Final = 10.0
"""A connection must deliver a request's head (request line and headers)
within this long of opening or of its previous answer, or it is closed (the
deadline of each connection is drawn between this and 1.5 times this, so
that a thousand sockets opened at once are not all closed in one tick of the
event loop)."""
MALFORMED_DELAY_S: Final = 0.5
"""How long the answer to bytes that are not HTTP waits before it is sent."""
LOG_EVERY_S: Final = 10.0
"""At most one log line per condition this often."""
LISTEN_BACKLOG: Final = 2048
"""The kernel's queue of connections waiting to be accepted (uvicorn's default)."""
ACCEPT_BATCH: Final = 16
"""At most this many new connections are accepted per turn of the event
loop. Each costs about a tenth of a millisecond to set up (transport,
protocol, timer); accepted all at once, a burst of a thousand held up
every request already waiting by a hundred milliseconds. In batches, those
requests are served between them."""


def default_max_connections() -> int:
    """Below the soft ``RLIMIT_NOFILE``, leaving room for the database, the
    log, the listening socket and the refusals themselves."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(8, soft - max(64, soft // 8))


class Throttled:
    """Counts occurrences of one condition and logs at most one line per
    :data:`LOG_EVERY_S` with the count since the last line."""

    __slots__ = ("_count", "_logged_at", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._count = 0
        self._logged_at = -LOG_EVERY_S

    def hit(self) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            logger.warning("%s: %d in the last %.0f s", self._message, self._count, LOG_EVERY_S)
            self._count = 0
            self._logged_at = now


def _raw_error(status: int, error: ApiError, retry_after_s: int | None = None) -> bytes:
    """A complete ``Connection: close`` answer carrying the API's envelope."""
    body = dumps(error.envelope("req_none"))
    head = [
        f"HTTP/1.1 {status} {'Service Unavailable' if status >= 500 else 'Bad Request'}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after_s is not None:
        head.append(f"retry-after: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request timeout, a connection cap and
    JSON refusals. Configure with :func:`guarded_protocol`."""

    max_connections: int = 1_000
    request_timeout_s: float = REQUEST_TIMEOUT_S
    refused: Throttled
    timed_out: Throttled
    malformed: Throttled
    _request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.refused.hit()
            error = ApiError(
                ErrorType.OVERLOADED,
                f"too many open connections (at most {self.max_connections}); retry later",
            )
            transport.write(_raw_error(529, error, retry_after_s=1))
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        timeout_s = self.request_timeout_s * (1.0 + 0.5 * _jitter.random())
        self._request_timer = self.loop.call_later(timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _too_slow(self) -> None:
        self._request_timer = None
        if self._in_request() or self.transport.is_closing():
            return  # the app has the request; its body has its own timeout
        self.timed_out.hit()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_request():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._in_request() and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # Bytes h11 cannot parse: still the API's envelope, one log line per
        # interval (uvicorn logs a warning per request otherwise), and sent
        # after a delay, so that a flood of them costs its sender more than us.
        self.malformed.hit()
        self._disarm()  # the refusal is on its way: no timeout closes it first
        self.flow.pause_reading()
        error = ApiError(ErrorType.INVALID_REQUEST, f"malformed HTTP request: {msg}")
        self.loop.call_later(MALFORMED_DELAY_S, self._refuse, _raw_error(400, error))

    def _refuse(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` and listening; raises
    :class:`OSError` when it cannot bind. Serve it with :class:`GuardedServer`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only
    # then, and without it every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class GuardedServer(uvicorn.Server):
    """``uvicorn.Server`` that accepts at most :data:`ACCEPT_BATCH` new
    connections per turn of the event loop on the sockets passed to
    :meth:`run` (``config.backlog`` stays the kernel's queue of connections
    waiting to be accepted)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not sockets:
            await super().startup(sockets)
            return
        # asyncio's accept handler takes up to ``backlog`` connections per
        # readiness of the listening socket (and listens with it): start it
        # with the batch size, then give the kernel its full queue again.
        backlog = self.config.backlog
        self.config.backlog = min(backlog, ACCEPT_BATCH)
        try:
            await super().startup(sockets)
        finally:
            self.config.backlog = backlog
        for sock in sockets:
            sock.listen(backlog)


def guarded_protocol(
    max_connections: int | None = None, request_timeout_s: float = REQUEST_TIMEOUT_S
) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` class for ``uvicorn.Config(http=...)``.

    ``max_connections``: open connections beyond it get a 529 envelope and
    are closed at once (default: :func:`default_max_connections`).
    ``request_timeout_s``: see :data:`REQUEST_TIMEOUT_S`.
    """
    if max_connections is not None and max_connections < 1:
        raise ValueError(f"max_connections: must be >= 1, got {max_connections}")
    if not request_timeout_s > 0:
        raise ValueError(f"request_timeout_s: must be > 0, got {request_timeout_s}")
    attributes: dict[str, Any] = {
        "max_connections": max_connections or default_max_connections(),
        "request_timeout_s": request_timeout_s,
        "refused": Throttled("refused connections over the connection limit"),
        "timed_out": Throttled(
            f"closed connections that sent no complete request head within {request_timeout_s:g} s"
        ),
        "malformed": Throttled("refused malformed HTTP requests"),
    }
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attributes)


class LogThrottle(logging.Filter):
    """A handler filter for ``leasekit serve``: each kind of log line (logger
    and message template) passes at most once per :data:`LOG_EVERY_S`, with
    the number held back since. A hostile client can then not flood the log
    with, say, one warning per malformed request. leasekit's own loggers
    already aggregate their conditions (:class:`Throttled`) and pass."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("leasekit"):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        passed_at, held = self._seen.get(key, (-LOG_EVERY_S, 0))
        if now - passed_at < LOG_EVERY_S:
            self._seen[key] = (passed_at, held + 1)
            return False
        if len(self._seen) > 1_000:  # message templates are few; bound it anyway
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {LOG_EVERY_S:.0f} s)"
        return True
