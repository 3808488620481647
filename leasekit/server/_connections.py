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
and makes nothing for a connection but a read callback until it sends
(benchmarks/bench_soak.py measures the difference).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import socket
import time
from collections import deque
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
loop: accepted all at once, a burst of a thousand held up every request
already waiting for as long as setting them all up took. In batches, those
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
    first_deadline: float | None = None
    """When (event-loop time) the first request head must be complete, if
    not request_timeout_s after the connection is made."""

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
        if self.first_deadline is not None:  # set by the lobby: its deadline still holds
            deadline, self.first_deadline = self.first_deadline, None
            self._request_timer = self.loop.call_at(deadline, self._too_slow)
            return
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
    """``uvicorn.Server`` that keeps new connections in a lobby until they send.

    On the sockets passed to :meth:`run` (plain HTTP served by
    :class:`GuardedH11Protocol`), it accepts at most :data:`ACCEPT_BATCH`
    connections per turn of the event loop, and a new connection is only a
    socket, a read callback and a deadline until its first byte arrives:
    the transport, the HTTP parser and the protocol are made then. An idle
    socket thus costs the server about a third less to open, a connection
    over the cap is refused before anything is made for it, and one that
    sends nothing within the request timeout is closed from the lobby.
    Other configurations (TLS, another protocol, an event loop without
    ``add_reader``) are served as ``uvicorn.Server`` does.
    """

    _lobby: _Lobby | None = None

    @property
    def waiting_connections(self) -> int:
        """Connections accepted that have not sent a byte yet."""
        return 0 if self._lobby is None else len(self._lobby.waiting)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        if not config.loaded:
            config.load()
        protocol = config.http_protocol_class
        loop = asyncio.get_running_loop()
        if (
            not sockets
            or config.ssl is not None
            or not issubclass(protocol, GuardedH11Protocol)
            or not isinstance(loop, asyncio.SelectorEventLoop)
        ):
            await super().startup(sockets)
            return
        await super().startup([])  # the lifespan; the listening is ours
        if self.should_exit:
            return

        def make_protocol() -> asyncio.Protocol:
            return protocol(
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=loop,
            )

        self._lobby = _Lobby(loop, sockets, make_protocol, protocol, self.server_state.connections)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._lobby is not None:
            self._lobby.close()
        await super().shutdown(sockets)


class _Lobby:
    """Accepted connections that have not sent a byte: each is a socket, a
    read callback and a deadline (see :class:`GuardedServer`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listeners: list[socket.socket],
        make_protocol: Any,
        protocol: type[GuardedH11Protocol],
        connections: set[Any],
    ) -> None:
        self.loop = loop
        self.listeners = listeners
        self.make_protocol = make_protocol
        self.protocol = protocol
        self.connections = connections  # the served ones (uvicorn's set)
        self.waiting: dict[socket.socket, asyncio.TimerHandle] = {}
        self.readable: deque[tuple[socket.socket, float]] = deque()
        """Lobby sockets that became readable (a first byte, or the peer
        closed), with their deadlines, for :meth:`_triage`."""
        self.handing_over: set[asyncio.Task[Any]] = set()
        self.refusal = _raw_error(
            529,
            ApiError(
                ErrorType.OVERLOADED,
                f"too many open connections (at most {protocol.max_connections}); retry later",
            ),
            retry_after_s=1,
        )
        self.accept_failed = Throttled("accepting a connection failed (file descriptors?)")
        for listener in listeners:
            listener.setblocking(False)
            loop.add_reader(listener, self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        loop = self.loop
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError:
                # Out of descriptors or buffers: the socket stays readable,
                # so listen again in a moment rather than spin on it.
                self.accept_failed.hit()
                loop.remove_reader(listener)
                loop.call_later(0.1, self._resume, listener)
                return
            sock.setblocking(False)
            held = len(self.connections) + len(self.waiting) + len(self.readable)
            if held >= self.protocol.max_connections:
                self.protocol.refused.hit()
                with contextlib.suppress(OSError):
                    sock.send(self.refusal)  # a new socket's buffer takes it whole
                sock.close()
                continue
            timeout_s = self.protocol.request_timeout_s * (1.0 + 0.5 * _jitter.random())
            self.waiting[sock] = loop.call_later(timeout_s, self._too_slow, sock)
            loop.add_reader(sock, self._readable, sock)

    def _resume(self, listener: socket.socket) -> None:
        if listener in self.listeners:
            self.loop.add_reader(listener, self._accept, listener)

    def _leave(self, sock: socket.socket) -> float:
        """Take the socket out of the lobby; returns its deadline."""
        timer = self.waiting.pop(sock)
        timer.cancel()
        self.loop.remove_reader(sock)
        return timer.when()

    def _too_slow(self, sock: socket.socket) -> None:
        self._leave(sock)
        self.protocol.timed_out.hit()
        sock.close()

    def _readable(self, sock: socket.socket) -> None:
        # Only stop watching it now: a thousand sockets closed at once by
        # their peer are all readable in one turn of the event loop, and
        # closing them all then held up the requests of open connections as
        # long as that took. They are looked at ACCEPT_BATCH per turn instead.
        self.readable.append((sock, self._leave(sock)))
        if len(self.readable) == 1:
            self.loop.call_soon(self._triage)

    def _triage(self) -> None:
        """Close or hand over up to :data:`ACCEPT_BATCH` readable lobby
        sockets; the rest on the next turn of the event loop."""
        for _ in range(min(ACCEPT_BATCH, len(self.readable))):
            self._first_byte(*self.readable.popleft())
        if self.readable:
            self.loop.call_soon(self._triage)

    def _first_byte(self, sock: socket.socket, deadline: float) -> None:
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            first = b"?"  # nothing after all: let the protocol wait for it
        except OSError:
            first = b""
        if not first:  # closed before sending anything
            sock.close()
            return
        # The bytes stay in the socket for the transport to read; the
        # request head must still be complete by the lobby's deadline.
        task = self.loop.create_task(self._serve(sock, deadline))
        self.handing_over.add(task)
        task.add_done_callback(self.handing_over.discard)

    async def _serve(self, sock: socket.socket, deadline: float) -> None:
        def make_protocol() -> GuardedH11Protocol:
            protocol: GuardedH11Protocol = self.make_protocol()
            protocol.first_deadline = deadline
            return protocol

        try:
            await self.loop.connect_accepted_socket(make_protocol, sock)
        except OSError:
            sock.close()

    def close(self) -> None:
        """Stop accepting and close the waiting connections."""
        for listener in self.listeners:
            self.loop.remove_reader(listener)
        self.listeners = []
        for sock in list(self.waiting):
            self._leave(sock)
            sock.close()
        while self.readable:
            self.readable.popleft()[0].close()


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
