"""The lease keeper: drives a :mod:`leasekit.policy` policy over real HTTP.

The driver contract of :mod:`leasekit.policy` is followed to the letter:
sleep until ``policy.due(send)``, let ``policy.sending`` bound the attempt,
send with the ``Send``'s echo and TTL, give up after ``Send.timeout_s``,
report a ``Result`` with the real send and receive times on
``time.monotonic()``. The keeper imposes the policy layer's local-deadline
rule on every policy by default (``enforce_deadline``): a holder never
believes in the lease past the policy's ``deadline``; the rule itself lives
in :class:`~leasekit.policy.HeartbeatPolicy`, shared with the simulator.

One lease costs one task (:func:`hold_lease`), or two with a body
(:func:`keep_lease`): 10,000 leases fit on one event loop.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._http import LeaseClient, StatusError
from .policy import EndReason, HeartbeatPolicy, LeasekitPolicy, Outcome, Result, Send, Stop
from .protocol import PreconditionFailed, WorkState
from .trace import TraceWriter

__all__ = ["Lease", "LeaseEvent", "LeaseNotClaimed", "hold_lease", "keep_lease"]

_now = time.monotonic


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """Something that happened to a lease. ``at`` is ``time.monotonic()`` seconds.

    ``kind == "heartbeat"``: one attempt ended; ``send`` is what the policy
    asked for and ``result`` what happened. ``kind == "end"``: heartbeating
    ended; ``reason`` (``None`` when the holder released a lease it still
    held) and ``detail`` say why.
    """

    kind: Literal["heartbeat", "end"]
    at: float
    send: Send | None = None
    result: Result | None = None
    reason: EndReason | None = None
    detail: str = ""


class LeaseNotClaimed(Exception):
    """:func:`keep_lease` could not claim the lease; ``lease.end_reason`` says why."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(
            f"could not claim work {lease.work_id}: {lease.end_reason} ({lease.detail})"
        )
        self.lease = lease


class Lease:
    """One lease as its holder sees it, kept alive by :meth:`run`.

    Readable at any time: ``end_reason`` (``None`` while heartbeating, and
    after the holder released a lease it still held), ``detail``, ``ended``,
    ``held`` (claimed and not ended), ``state`` (the item's state in the
    last answer), ``ttl_seconds`` (the TTL the policy believes in, seconds),
    ``deadline`` (the policy's local deadline, ``time.monotonic()`` seconds,
    or ``None`` before the first success), ``last_heartbeat`` and
    ``attempts``. :meth:`events` streams :class:`LeaseEvent` objects.

    ``enforce_deadline=False`` drives the policy alone, without the keeper's
    local-deadline rule: only for studying a policy as it is (parity with the
    official worker); a real holder keeps it on.

    A policy drives one lease: passing one that has already started raises
    :class:`ValueError`. If ``on_event`` or the trace writer raises,
    heartbeating ends with ``end_reason`` :attr:`EndReason.ERROR` (the server
    may still hold the lease until its TTL) and :meth:`run` re-raises the
    exception.
    """

    def __init__(
        self,
        client: LeaseClient,
        environment_id: str,
        work_id: str,
        *,
        policy: HeartbeatPolicy | None = None,
        trace: TraceWriter | None = None,
        worker: str = "leasekit",
        on_event: Callable[[LeaseEvent], object] | None = None,
        enforce_deadline: bool = True,
    ) -> None:
        if policy is not None and policy.used:
            raise ValueError(
                f"work {work_id}: this {type(policy).__name__} already drove a lease "
                f"({policy.attempts} attempts); give each lease a fresh policy"
            )
        self.client = client
        self.enforce_deadline = enforce_deadline
        self.environment_id = environment_id
        self.work_id = work_id
        self.policy = policy if policy is not None else LeasekitPolicy()
        self.trace = trace
        self.worker = worker
        self.on_event = on_event
        self.end_reason: EndReason | None = None
        self.detail = ""
        self.ended = False
        self.claimed = False
        self.state: WorkState | None = None
        self._finished_attempts = 0
        self._subscribers: list[MemoryObjectSendStream[LeaseEvent]] = []
        self._settled: anyio.Event | None = None
        self._failing_hook: str | None = None
        self.error: Exception | None = None
        """The exception that ended heartbeating (``end_reason`` ``error``), else ``None``."""

    # ------------------------------------------------------------------ views

    @property
    def ttl_seconds(self) -> float:
        return self.policy.ttl_seconds

    @property
    def deadline(self) -> float | None:
        """The local deadline the keeper holds the lease to (the imposed rule's
        when ``enforce_deadline``), else the policy's own belief."""
        deadline = self.policy.local_deadline(enforce_deadline=self.enforce_deadline)
        return deadline if deadline is not None else self.policy.deadline

    @property
    def last_heartbeat(self) -> str:
        return self.policy.last_heartbeat

    @property
    def attempts(self) -> int:
        """Heartbeat attempts sent and finished (answered, failed or timed out)."""
        return self._finished_attempts

    @property
    def held(self) -> bool:
        return self.claimed and not self.ended

    @property
    def lost(self) -> bool:
        """True when the item may belong to the queue or another worker now.

        A holder must then leave the item alone (not stop it), as the
        official worker does.
        """
        return self.end_reason in (EndReason.LOST, EndReason.ASSUMED_LOST)

    def __repr__(self) -> str:
        status = "held" if self.held else f"ended ({self.end_reason})" if self.ended else "new"
        return f"<Lease {self.environment_id}/{self.work_id} {status}>"

    def events(self, max_buffer: float = math.inf) -> MemoryObjectReceiveStream[LeaseEvent]:
        """A stream of the events from now on; it closes when the lease ends.

        ``async for event in lease.events(): ...``
        """
        send, receive = anyio.create_memory_object_stream[LeaseEvent](max_buffer)
        if self.ended:
            send.close()
        else:
            self._subscribers.append(send)
        return receive

    async def wait_claimed(self) -> None:
        """Return once the lease is claimed or heartbeating ended, whichever first."""
        if self.claimed or self.ended:
            return
        if self._settled is None:
            self._settled = anyio.Event()
        await self._settled.wait()

    # ------------------------------------------------------------------ driving

    def _emit(self, event: LeaseEvent) -> None:
        if self.on_event is not None and self._failing_hook != "on_event":
            if self.error is not None:
                # ending because a hook failed: the end event is best effort
                with contextlib.suppress(Exception):
                    self.on_event(event)
            else:
                self._failing_hook = "on_event"
                self.on_event(event)
                self._failing_hook = None
        for stream in self._subscribers:
            # a slow or gone subscriber must not stall the heartbeat
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                stream.send_nowait(event)
        if event.kind == "end":
            for stream in self._subscribers:
                stream.close()
            self._subscribers.clear()

    def _settle(self) -> None:
        if self._settled is not None:
            self._settled.set()

    def _finish(self, reason: EndReason | None, detail: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self.detail = detail
        at = _now()
        try:
            if self.trace is not None:
                if self.error is not None:
                    # ending because a hook failed: the end line is best effort
                    with contextlib.suppress(Exception):
                        self._trace_end(self.trace, at, reason)
                else:
                    self._failing_hook = "trace"
                    self._trace_end(self.trace, at, reason)
                    self._failing_hook = None
        finally:
            self._settle()
            self._emit(LeaseEvent("end", at, reason=reason, detail=detail))

    def _trace_end(self, trace: TraceWriter, at: float, reason: EndReason | None) -> None:
        trace.end(
            environment_id=self.environment_id,
            work_id=self.work_id,
            worker=self.worker,
            at=at,
            reason=reason.value if reason is not None else "released",
        )

    async def _attempt(self, send: Send, sent_at: float, timeout_s: float) -> Result:
        with anyio.move_on_after(timeout_s):
            try:
                answer = await self.client.heartbeat(
                    self.environment_id,
                    self.work_id,
                    send.expected_last_heartbeat,
                    send.desired_ttl_seconds,
                )
            except PreconditionFailed as error:
                return Result(
                    Outcome.PRECONDITION_FAILED,
                    sent_at,
                    _now(),
                    current_state=error.current_state,
                    status=412,
                )
            except StatusError as error:
                return Result(
                    error.outcome,
                    sent_at,
                    _now(),
                    status=error.status,
                    retry_after_s=error.retry_after_s,
                )
            except httpx.TimeoutException:
                # the HTTP layer's own backstop timeout: the server may have applied it
                return Result(Outcome.TIMEOUT, sent_at, _now())
            except (httpx.TransportError, OSError):
                return Result(Outcome.TRANSIENT, sent_at, _now())
            except ValueError:
                # a 2xx whose body does not parse: we cannot echo it, try again
                return Result(Outcome.TRANSIENT, sent_at, _now(), status=200)
            return Result(Outcome.OK, sent_at, _now(), answer=answer, status=200)
        return Result(Outcome.TIMEOUT, sent_at, _now())

    async def run(self) -> Lease:
        """Heartbeat until the policy stops (the local deadline included).

        Returns the lease with ``end_reason`` set. If cancelled, the lease
        ends as released (``end_reason`` ``None``) unless it had already ended.
        If ``on_event`` or the trace writer raises, the lease ends with
        :attr:`EndReason.ERROR` and the exception propagates.
        """
        policy = self.policy
        trace = self.trace
        enforce = self.enforce_deadline
        if policy.used:
            raise ValueError(
                f"work {self.work_id}: this {type(policy).__name__} already drove a lease; "
                "give each lease a fresh policy"
            )
        try:
            action: Send | Stop = policy.start(_now())
            while isinstance(action, Send):
                delay = policy.due(action, enforce_deadline=enforce) - _now()
                if delay > 0:
                    await anyio.sleep(delay)
                sent_at = _now()
                action = policy.sending(action, sent_at, enforce_deadline=enforce)
                if isinstance(action, Stop):
                    break
                result = await self._attempt(action, sent_at, action.timeout_s)
                self._finished_attempts += 1
                if result.outcome is Outcome.OK:
                    assert result.answer is not None
                    self.state = result.answer.state
                    if not self.claimed:
                        self.claimed = True
                        self._settle()
                elif result.current_state is not None:
                    self.state = result.current_state.state
                if trace is not None:
                    self._failing_hook = "trace"
                    trace.attempt(
                        environment_id=self.environment_id,
                        work_id=self.work_id,
                        worker=self.worker,
                        send=action,
                        result=result,
                    )
                    self._failing_hook = None
                self._emit(LeaseEvent("heartbeat", result.received_at, action, result))
                action = policy.observe(result)
            self._finish(action.reason, action.detail)
        except Exception as error:
            hook = self._failing_hook
            if hook is None or self.ended:
                raise
            self.error = error
            what = "the on_event callback" if hook == "on_event" else "the trace writer"
            self._finish(EndReason.ERROR, f"{what} raised {type(error).__name__}: {error}")
            raise
        finally:
            # cancelled from outside (the holder is done): released, not lost
            self._finish(None, "released by the holder")
        return self


async def hold_lease(
    client: LeaseClient,
    environment_id: str,
    work_id: str,
    *,
    policy: HeartbeatPolicy | None = None,
    trace: TraceWriter | None = None,
    worker: str = "leasekit",
    on_event: Callable[[LeaseEvent], object] | None = None,
    enforce_deadline: bool = True,
) -> Lease:
    """Claim and keep one lease in the current task until it ends; return it.

    The cheapest way to hold many leases (one task each). Cancel the
    surrounding scope to release it. ``policy`` defaults to a fresh
    :class:`~leasekit.policy.LeasekitPolicy`; a policy drives one lease only.
    """
    lease = Lease(
        client,
        environment_id,
        work_id,
        policy=policy,
        trace=trace,
        worker=worker,
        on_event=on_event,
        enforce_deadline=enforce_deadline,
    )
    return await lease.run()


@asynccontextmanager
async def keep_lease(
    client: LeaseClient,
    environment_id: str,
    work_id: str,
    *,
    policy: HeartbeatPolicy | None = None,
    trace: TraceWriter | None = None,
    worker: str = "leasekit",
    on_event: Callable[[LeaseEvent], object] | None = None,
    enforce_deadline: bool = True,
) -> AsyncIterator[Lease]:
    """Hold a lease while the body runs; cancel the body when the lease ends.

    ``async with keep_lease(client, env, work_id, policy=SdkPolicy()) as lease:``
    claims the lease first (raising :class:`LeaseNotClaimed` if that fails),
    then heartbeats in a background task on the policy's schedule while the
    body runs. When the lease ends for any reason (lost, assumed lost,
    rejected, shutdown, local deadline) the body is cancelled and the block
    exits normally; ``lease.end_reason`` says why (``None``: the body finished
    while the lease was held). An exception from the body, from ``on_event``
    or from the trace writer propagates as it is, not wrapped in an
    exception group (the last two end the lease with ``end_reason``
    ``error``). A policy that already drove a lease is refused
    (:class:`ValueError`). No task outlives the block.
    """
    lease = Lease(
        client,
        environment_id,
        work_id,
        policy=policy,
        trace=trace,
        worker=worker,
        on_event=on_event,
        enforce_deadline=enforce_deadline,
    )
    body_error: Exception | None = None
    try:
        async with anyio.create_task_group() as group:

            async def heartbeat() -> None:
                try:
                    await lease.run()
                finally:
                    # the lease ended (or the keeper is closing): end the body too
                    group.cancel_scope.cancel()

            group.start_soon(heartbeat)
            await lease.wait_claimed()
            if lease.claimed:
                try:
                    yield lease
                except Exception as error:  # re-raised below, unwrapped
                    body_error = error
                finally:
                    group.cancel_scope.cancel()
    except BaseExceptionGroup as group_error:
        # a callback or the trace writer failed in the heartbeat task: raise
        # it as it is, not wrapped in the task group's exception group
        if lease.error is not None and group_error.subgroup(lambda e: e is lease.error):
            raise lease.error from None
        raise
    if body_error is not None:
        raise body_error
    if not lease.claimed:
        raise LeaseNotClaimed(lease)
