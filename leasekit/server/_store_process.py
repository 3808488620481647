"""A store's work in a process of its own, driven from the event loop.

The SQLite store's writer and reader each run in a child process (the same
Python running :func:`_main`), not in threads of the server process.
Threads would share the server's interpreter lock with the event loop: under
hostile traffic the loop, the writer and the reader handed it back and forth,
and a keeper's heartbeat waited a little in every stage
(``benchmarks/bench_soak.py``). A child has a lock of its own; the server
process keeps only its event loop, which talks to each child over a socket
pair without a thread: a request goes out as it is made, the child takes
every request that arrived while it worked as one batch (one transaction
for the writer), and the answers of a batch come back in one write.

Frames on the socket are a 4-byte big-endian length and a pickle. The first
frame to a child is its setup; then each request is ``(job id, operation,
arrival time us, arguments)`` and each answer ``(job id, result, error)``,
with an :class:`~leasekit.protocol.ApiError` sent as its fields (anything
else the child logs and answers as a generic storage error).

The child ignores terminal signals (it runs in a session of its own), and
exits when its socket closes: after the server closed it, once every request
sent before has been answered, or when the server process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from ..protocol import ApiError, ErrorType
from ._connections import LOG_EVERY_S, Throttled

logger = logging.getLogger("leasekit.server")

_LENGTH: Final = struct.Struct("!I")
_RECV_BYTES: Final = 1 << 20

Job = tuple[int, str, int, tuple[Any, ...]]
"""(job id, operation, arrival time us, arguments)"""
Outcome = tuple[Any, "BaseException | None"]
"""(result, error) of one job."""
Runner = Callable[[list[Job]], list[Outcome]]


def frame(payload: Any) -> bytes:
    """One message: its length and its pickle."""
    data = pickle.dumps(payload, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def unframe(buffer: bytearray) -> list[Any]:
    """The complete messages at the start of ``buffer``, removed from it (a
    partial one stays for the next bytes)."""
    messages = []
    at = 0
    end = len(buffer)
    while end - at >= _LENGTH.size:
        (size,) = _LENGTH.unpack_from(buffer, at)
        if end - at - _LENGTH.size < size:
            break
        start = at + _LENGTH.size
        at = start + size
        messages.append(pickle.loads(buffer[start:at]))
    del buffer[:at]
    return messages


_last_traceback_at = [-LOG_EVERY_S]


def _wire_error(error: BaseException | None) -> tuple[str, str, Any] | None:
    """An error as it crosses the socket; an unexpected one is logged here,
    with its traceback at most once per :data:`LOG_EVERY_S`."""
    if error is None:
        return None
    if isinstance(error, ApiError):
        return error.error_type.value, error.message, error.details
    now = time.monotonic()
    if now - _last_traceback_at[0] >= LOG_EVERY_S:
        _last_traceback_at[0] = now
        logger.error("storage process: unexpected error", exc_info=error)
    return ErrorType.API.value, "storage error", None


def _api_error(wire: tuple[str, str, Any]) -> ApiError:
    error_type, message, details = wire
    return ApiError(ErrorType(error_type), message, details)


RESTART_AFTER_S: Final = 1.0
"""At least this long between two starts of a child: one that dies at once
(a broken install, a database it cannot open) is not started again for
every request; the requests in between get a 529."""


class StoreProcess:
    """A child process that runs one role of a store: :meth:`call` from an
    event loop (one at a time; a store moves to another loop once the first
    is closed or idle), :meth:`close` from the loop's thread or when no loop
    runs.

    ``role`` names what the child does (``leasekit.server._sqlite.role_of``);
    ``setup`` is what that is made from (picklable). A child that died
    fails the requests it held (529: one may have been committed before the
    child died, as with a lost answer) and is started again on the next
    call.
    """

    def __init__(self, role: str, setup: Any) -> None:
        self.role = role
        self._setup = setup
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._out = bytearray()
        self._in = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writing = False
        self._closed = False
        self._sock: socket.socket | None = None
        self._retired: list[subprocess.Popen[bytes]] = []  # children let go, to reap
        # One log line per 10 s at most, should a child die at every start.
        self._died = Throttled(f"storage {role} process exited; starting another")
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        # The child imports what this process would: the very leasekit it
        # runs, whatever the child's working directory or PYTHONPATH.
        code = f"import sys; sys.path[:] = {sys.path!r}; from {__name__} import _main; _main()"
        try:
            with theirs:
                process = subprocess.Popen(
                    [sys.executable, "-c", code, str(theirs.fileno()), self.role],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C stops the server, which then closes us
                )
            ours.sendall(frame(self._setup))
        except BaseException:
            ours.close()
            raise
        ours.setblocking(False)
        self._process = process
        self._started_at = time.monotonic()
        self._sock = ours
        self._in.clear()
        self._out.clear()
        self._writing = False
        self._retired = [old for old in self._retired if old.poll() is None]

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @property
    def waiting(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    # ------------------------------------------------------------ event loop side

    async def call(self, operation: str, arrival_us: int, *args: Any) -> Any:
        """Run ``operation`` in the child; its result, or its :class:`ApiError`."""
        return await self.submit(operation, arrival_us, *args)

    def submit(self, operation: str, arrival_us: int, *args: Any) -> asyncio.Future[Any]:
        """Send ``operation`` to the child (from a running event loop); the
        future of its outcome."""
        if self._closed:
            raise ApiError(ErrorType.OVERLOADED, "the server is shutting down")
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._sock is None:
            self._attach(loop)
        job_id = self._next_id
        message = frame((job_id, operation, arrival_us, args))
        self._next_id += 1
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[job_id] = future
        self._out += message
        if not self._writing:
            # At once, not at the end of the turn: a request that waited for
            # the next turn of a busy loop would wait a turn more. Requests
            # still share a batch: the child takes all that arrived while it
            # worked.
            self._flush()
        return future

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        old = self._loop
        if old is not None and old is not loop:
            if self._pending and not old.is_closed():
                raise RuntimeError(f"storage {self.role}: in use from another event loop")
            if self._pending or self._in or self._out:
                # The stream stopped mid-way with the loop that is gone: a
                # fresh child (this one finishes what it got, then exits).
                self._drop(ApiError(ErrorType.OVERLOADED, "storage unavailable, retry"))
            else:
                self._detach()
        if self._sock is None or self._process.poll() is not None:
            if self._sock is not None:
                self._drop(ApiError(ErrorType.OVERLOADED, "storage unavailable, retry"))
            if time.monotonic() - self._started_at < RESTART_AFTER_S:
                raise ApiError(ErrorType.OVERLOADED, "storage unavailable, retry")
            try:
                self._start()
            except OSError as error:
                self._started_at = time.monotonic()
                raise ApiError(
                    ErrorType.OVERLOADED, f"storage unavailable, retry: {error}"
                ) from None
        assert self._sock is not None
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._readable)

    def _detach(self) -> None:
        """Stop watching the socket from the loop (if it is still open)."""
        loop, sock = self._loop, self._sock
        if loop is not None and sock is not None and not loop.is_closed():
            loop.remove_reader(sock.fileno())
            if self._writing:
                loop.remove_writer(sock.fileno())
        self._loop = None
        self._writing = False

    def _drop(self, failure: ApiError) -> None:
        """Let the child go: fail what it held, close its socket (it exits
        when it has read to the end), reap it later."""
        self._detach()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._retired.append(self._process)
        for future in self._pending.values():
            if not future.done() and not future.get_loop().is_closed():
                future.set_exception(failure)
        self._pending.clear()
        self._in.clear()
        self._out.clear()

    def _flush(self) -> None:
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        try:
            sent = sock.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()  # the child is gone
            return
        del self._out[:sent]
        if self._out and not self._writing:
            self._writing = True
            loop.add_writer(sock.fileno(), self._flush)
        elif not self._out and self._writing:
            self._writing = False
            loop.remove_writer(sock.fileno())

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        self._in += data
        self._deliver()

    def _deliver(self) -> None:
        """Hand the answers that arrived whole to their requests."""
        for job_id, result, error in unframe(self._in):
            future = self._pending.pop(job_id, None)
            if future is None or future.done() or future.get_loop().is_closed():
                continue  # the request went away; its change (if any) is committed all the same
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(_api_error(error))

    def _lost(self) -> None:
        """The child closed its end, or cannot be written to: it died (or
        was killed). The next call starts another."""
        self._died.hit()
        self._drop(ApiError(ErrorType.OVERLOADED, "storage unavailable, retry"))

    # ------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Send what is queued, let the child answer everything it got, and
        wait for it to exit (idempotent). Answers go to their requests if
        their event loop is still open; requests the child never answered
        fail with a 529."""
        if self._closed:
            return
        self._closed = True
        sock = self._sock
        if sock is not None:
            self._detach()
            # Write and read at once: a child blocked writing answers would
            # never read the rest of our requests, nor see their end.
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
                ended = False
                while not ended:
                    for _, events in selector.select():
                        if events & selectors.EVENT_WRITE and self._send_rest(sock):
                            selector.modify(sock, selectors.EVENT_READ)
                        if events & selectors.EVENT_READ:
                            ended = self._receive(sock)
            self._drop(ApiError(ErrorType.OVERLOADED, "the server is shutting down"))
        for process in (*self._retired, self._process):
            process.wait()
        self._retired.clear()

    def _receive(self, sock: socket.socket) -> bool:
        """Read and hand out answers; whether the child ended the stream."""
        try:
            data = sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return False
        except OSError:
            return True
        self._in += data
        self._deliver()
        return not data

    def _send_rest(self, sock: socket.socket) -> bool:
        """Send what is left of the requests; at the end, end our side of
        the stream. Whether that end was sent (or the child is gone)."""
        try:
            sent = sock.send(self._out)
        except BlockingIOError:
            return False
        except OSError:
            self._out.clear()
            return True
        del self._out[:sent]
        if self._out:
            return False
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        return True


# ---------------------------------------------------------------- child side


def _has_message(buffer: bytearray) -> bool:
    return len(buffer) >= _LENGTH.size and (
        len(buffer) - _LENGTH.size >= _LENGTH.unpack_from(buffer)[0]
    )


class Role(NamedTuple):
    """What a child does: ``take`` removes the next batch from the requests
    waiting (in arrival order), ``run`` answers a batch, ``close`` ends."""

    take: Callable[[deque[Job]], list[Job]]
    run: Runner
    close: Callable[[], None]


def serve(sock: socket.socket, role: Role, buffer: bytearray) -> None:
    """Answer requests until the socket ends and every request is answered.

    After each batch, the requests that arrived meanwhile join the waiting
    ones before the next batch is taken, so ``role.take`` can put a request
    that arrived later ahead of one that waits. Each batch's answers go
    back in one write. ``buffer`` holds bytes already read.
    """
    waiting: deque[Job] = deque()
    ended = False
    while True:
        if not ended:
            if not waiting and not _has_message(buffer):
                data = sock.recv(_RECV_BYTES)  # nothing to do: wait for a request
                ended = not data
                buffer += data
            while not ended:  # and whatever else is there already
                try:
                    more = sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                ended = not more
                buffer += more
        waiting.extend(unframe(buffer))
        if not waiting:
            if ended:
                return
            continue
        batch = role.take(waiting)
        outcomes = role.run(batch)
        sock.sendall(
            b"".join(
                frame((job[0], result, _wire_error(error)))
                for job, (result, error) in zip(batch, outcomes, strict=True)
            )
        )


def _main() -> None:
    """A child's program: ``argv`` is its socket's descriptor and its role."""
    # The server ends us by closing our socket, once we answered what it
    # sent: a signal to the whole group (a service manager's SIGTERM) would
    # otherwise fail requests the server still waits for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s: leasekit storage process: %(message)s"
    )
    fd, name = int(sys.argv[1]), sys.argv[2]
    sock = socket.socket(fileno=fd)
    buffer = bytearray()
    while not _has_message(buffer):
        data = sock.recv(_RECV_BYTES)
        if not data:
            return
        buffer += data
    size = _LENGTH.size + _LENGTH.unpack_from(buffer)[0]
    [setup] = unframe(bytearray(buffer[:size]))
    del buffer[:size]  # the rest are requests
    from ._sqlite import role_of

    role = role_of(name, setup)
    try:
        serve(sock, role, buffer)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server died: nobody is left to answer (what was committed stays)
    finally:
        role.close()
        sock.close()
