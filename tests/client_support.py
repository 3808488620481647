"""Shared set-up of the client tests: a reference server on loopback and task counting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sniffio

from leasekit.lease import LeaseConfig
from leasekit.server import LeaseServerApp, create_app, running_server

ENV = "env_1"
KEY = "key_1"


@dataclass
class Server:
    app: LeaseServerApp
    url: str

    def queue(self, *faults: str) -> None:
        self.app.state.faults.queue(*faults)


@contextmanager
def serve(
    *, default_ttl_seconds: int = 2, min_ttl_seconds: int = 1, seed_work: int = 4
) -> Iterator[Server]:
    """A reference server with a short TTL, so a heartbeat comes every second."""
    app = create_app(
        keys={ENV: KEY, "env_2": "key_2"},
        config=LeaseConfig(
            default_ttl_seconds=default_ttl_seconds, min_ttl_seconds=min_ttl_seconds
        ),
        seed_work={ENV: seed_work},
    )
    with running_server(app) as url:
        yield Server(app, url)


def task_count() -> int:
    """Tasks alive on the current event loop (asyncio or trio)."""
    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

        return count(trio.lowlevel.current_root_task())
    import asyncio

    return len(asyncio.all_tasks())
