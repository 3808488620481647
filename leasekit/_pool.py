"""Run independent tasks serially, on any ``concurrent.futures.Executor``, or on Dask.

The one place where leasekit fans work out. Every task carries everything it
needs (its scenario and its seed), so where it runs cannot change what it
returns: serial, a process pool and a Dask cluster give the same results, in
the order the tasks were given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Progress", "executor_for", "run_ordered"]

R = TypeVar("R")


class Progress(Protocol):
    """What :func:`run_ordered` reports to: ``update(amount)`` in tasks done
    (fractions while a serial task runs), as a ``tqdm`` bar takes it."""

    def update(self, n: float = 1) -> bool | None: ...


@contextmanager
def executor_for(
    *,
    executor: Executor | None = None,
    processes: int = 1,
    scheduler: str | Client | None = None,
) -> Iterator[Executor | None]:
    """The executor to run on: ``executor`` itself; a Dask executor on the
    ``scheduler`` (a ``dask.distributed.Client`` or the address of a running
    scheduler, ``tcp://host:8786``); a pool of ``processes`` worker processes
    when above 1; or ``None`` (serial). What this opens it closes."""
    if sum(x is not None for x in (executor, scheduler)) + (processes > 1) > 1:
        raise ValueError("give one of executor, processes > 1 or scheduler, not several")
    if executor is not None:
        yield executor
        return
    if scheduler is not None:
        from distributed import Client

        # distributed has no type hints: its calls are untyped
        client = (
            scheduler if isinstance(scheduler, Client) else Client(scheduler)  # type: ignore[no-untyped-call]
        )
        try:
            # pure=False: two equal tasks are two tasks (no silent deduplication)
            with client.get_executor(pure=False) as dask_executor:  # type: ignore[no-untyped-call]
                yield dask_executor
        finally:
            if client is not scheduler:
                client.close()  # type: ignore[no-untyped-call]
        return
    if processes > 1:
        with ProcessPoolExecutor(max_workers=processes) as pool:
            yield pool
        return
    yield None


def run_ordered(
    fn: Callable[..., R],
    tasks: Sequence[tuple[Any, ...]],
    *,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> list[R]:
    """``[fn(*task) for task in tasks]``, on ``executor`` when given.

    Serially, ``fn`` also gets ``progress=`` a callback taking the fraction
    of its own task done (``None`` when nobody watches), so one long task
    moves the bar; on an executor the bar moves as tasks finish.
    """
    if executor is None:
        results: list[R] = []
        for task in tasks:
            moved = [0.0]

            def part(fraction: float, moved: list[float] = moved) -> None:
                assert progress is not None
                step = min(max(fraction, 0.0), 1.0) - moved[0]
                if step > 0:
                    moved[0] += step
                    progress.update(step)

            results.append(fn(*task, progress=part if progress is not None else None))
            if progress is not None and moved[0] < 1.0:
                progress.update(1.0 - moved[0])
        return results
    futures: list[Future[R]] = [executor.submit(fn, *task) for task in tasks]
    try:
        for _ in as_completed(futures):
            if progress is not None:
                progress.update(1)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return [future.result() for future in futures]
