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
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
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


class StoreProcess:
    """A child process that runs one role of a store; :meth:`call` from any
    event loop (one at a time), :meth:`close` from anywhere.

    ``role`` names what the child does (``leasekit.server._sqlite.role_of``);
    ``setup`` is what that is made from (picklable). A child that died
    fails the requests it held (529) and is started again on the next call.
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
        # One log line per 10 s at most, should a child die at every start.
        self._died = Throttled(f"storage {role} process exited; started another")
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        # The child imports the very leasekit this process runs, whatever its
        # working directory or PYTHONPATH would find first.
        package_root = str(Path(__file__).resolve().parents[2])
        code = (
            f"import sys; sys.path.insert(0, {package_root!r}); "
            f"from {__name__} import _main; _main()"
        )
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-c", code, str(theirs.fileno()), self.role],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C stops the server, which then closes us
            )
        ours.sendall(frame(self._setup))
        ours.setblocking(False)
        self._sock = ours
        self._loop = None
        self._in.clear()

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
        if loop is not self._loop:
            self._attach(loop)
        future: asyncio.Future[Any] = loop.create_future()
        job_id = self._next_id
        self._next_id += 1
        self._pending[job_id] = future
        self._out += frame((job_id, operation, arrival_us, args))
        if not self._writing:
            # At once, not at the end of the turn: a request that waited for
            # the next turn of a busy loop would wait a turn more. Requests
            # still share a batch: the child takes all that arrived while it
            # worked.
            self._flush()
        return future

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        old = self._loop
        if old is not None:
            if self._pending and not old.is_closed():
                raise RuntimeError(f"storage {self.role}: in use from another event loop")
            if not old.is_closed():
                old.remove_reader(self._sock.fileno())
                old.remove_writer(self._sock.fileno())
            self._pending.clear()  # answers for a loop that is gone
            self._in.clear()
        if self._process.poll() is not None:
            self._restart()
        self._loop = loop
        self._writing = False
        loop.add_reader(self._sock.fileno(), self._readable)

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the child is gone: _readable sees the end and fails the requests
        del self._out[:sent]
        loop = self._loop
        assert loop is not None
        if self._out and not self._writing:
            self._writing = True
            loop.add_writer(self._sock.fileno(), self._flush)
        elif not self._out and self._writing:
            self._writing = False
            loop.remove_writer(self._sock.fileno())

    def _readable(self) -> None:
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
        """The child closed its end: it died (or was killed)."""
        loop = self._loop
        assert loop is not None
        loop.remove_reader(self._sock.fileno())
        if self._writing:
            loop.remove_writer(self._sock.fileno())
        self._process.wait()
        self._died.hit()
        failure = ApiError(ErrorType.OVERLOADED, "storage unavailable, retry")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        self._pending.clear()
        self._out.clear()
        self._restart()
        self._loop = None  # the next call attaches the new child

    def _restart(self) -> None:
        self._sock.close()
        self._process.wait()
        self._start()

    # ------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Send what is queued, let the child answer everything it got, and
        wait for it to exit (idempotent). Answers that arrive meanwhile go
        to their requests if their event loop is still open."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._sock.fileno())
            loop.remove_writer(self._sock.fileno())
        self._sock.setblocking(True)
        with contextlib.suppress(OSError):
            self._sock.sendall(self._out)
            self._sock.shutdown(socket.SHUT_WR)
        self._out.clear()
        # Read to the end: a child that cannot write its answers never exits.
        while True:
            try:
                data = self._sock.recv(_RECV_BYTES)
            except OSError:
                break
            if not data:
                break
            self._in += data
            self._deliver()
        self._sock.close()
        self._process.wait()


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
