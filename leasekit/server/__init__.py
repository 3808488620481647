"""The reference lease server: the work-lease API (docs/protocol.md) over real HTTP.

Build an ASGI app with :func:`create_app` and serve it with uvicorn, or run
it in a background thread with :func:`running_server` (tests, notebooks)::

    app = create_app(keys={"env_1": "key_1"}, seed_work={"env_1": 3})
    with running_server(app) as base_url:
        ...  # e.g. anthropic.Anthropic(base_url=base_url, api_key="key_1")

State lives in memory (default) or in a SQLite file (``db_path``); every
rule comes from :mod:`leasekit.lease`. ``app.state.faults`` injects lost
requests, lost answers, errors and latency at run time. :class:`Limits` caps
each environment's request rate and queue (429 with ``Retry-After``), and
:func:`uvicorn_config` serves with idle and slow connections closed and the
number of connections capped. See docs/server.md.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..lease import LeaseConfig
from ._app import LeaseServerApp
from ._connections import (
    LISTEN_BACKLOG,
    REQUEST_TIMEOUT_S,
    GuardedServer,
    default_max_connections,
    guarded_protocol,
    listening_socket,
)
from ._faults import FaultAction, FaultConfig, Faults
from ._limits import Limits
from ._memory import MemoryStore
from ._store import Store

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "REQUEST_TIMEOUT_S",
    "FaultAction",
    "FaultConfig",
    "Faults",
    "GuardedServer",
    "LeaseServerApp",
    "Limits",
    "create_app",
    "default_max_connections",
    "listening_socket",
    "running_server",
    "uvicorn_config",
]


def create_app(
    keys: Mapping[str, str],
    db_path: str | Path | None = None,
    config: LeaseConfig | None = None,
    faults: FaultConfig | None = None,
    seed_work: Mapping[str, int] | None = None,
    limits: Limits | None = None,
) -> LeaseServerApp:
    """Build the reference server.

    ``keys`` maps each environment id to its API key (a key opens exactly one
    environment). ``db_path``: a SQLite file (created if missing) or ``None``
    for memory. ``config``: TTL settings in seconds. ``faults``: the faults
    to start with. ``seed_work``: queued items to create at start, per
    environment (not counted against ``limits.max_queued``). ``limits``:
    per-environment request rate and queue caps (default: none). Raises
    :class:`ValueError` for inconsistent arguments.
    """
    if not keys:
        raise ValueError("keys: at least one environment and its key are needed")
    for environment_id, key in keys.items():
        if not environment_id or "/" in environment_id:
            raise ValueError(f"keys: bad environment id {environment_id!r}")
        if not key or not key.isprintable() or key != key.strip():
            raise ValueError(f"keys: the key of {environment_id!r} is empty or not printable")
    if len(set(keys.values())) != len(keys):
        raise ValueError("keys: each environment needs its own key")
    config = config or LeaseConfig()
    store: Store
    if db_path is None:
        store = MemoryStore(config)
    else:
        from ._sqlite import SqliteStore

        store = SqliteStore(Path(db_path), config)
    for environment_id in keys:
        store.add_environment(environment_id)
    now_us = time.time_ns() // 1000
    for environment_id, count in (seed_work or {}).items():
        if environment_id not in keys:
            raise ValueError(f"seed_work: unknown environment {environment_id!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"seed_work: {environment_id!r} needs a count >= 0, got {count!r}")
        store.seed(environment_id, count, now_us)
    return LeaseServerApp(store, keys, Faults(faults), limits)


def uvicorn_config(
    app: Any,
    *,
    max_connections: int | None = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    **options: Any,
) -> uvicorn.Config:
    """A ``uvicorn.Config`` that serves ``app`` the way ``leasekit serve`` does.

    HTTP/1.1 through :class:`~leasekit.server._connections.GuardedH11Protocol`:
    a connection that sends no complete request head within
    ``request_timeout_s`` seconds of opening or of its last answer is closed;
    beyond ``max_connections`` open connections (default: below the file
    descriptor limit, :func:`default_max_connections`) a new one gets a 529
    envelope and is closed; bytes that are not HTTP get a 400 envelope.
    ``options`` go to ``uvicorn.Config`` (``host``, ``port``, ``log_level``, ...).
    """
    import uvicorn

    http = guarded_protocol(max_connections, request_timeout_s)
    return uvicorn.Config(app, http=http, **options)


@contextmanager
def running_server(
    app: LeaseServerApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    access_log: bool = False,
    max_connections: int | None = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields the base URL.

    ``port=0`` picks a free ephemeral port. Connections are guarded as by
    :func:`uvicorn_config`, and accepted in batches as by ``leasekit serve``.
    On exit, held (dropped) requests are released and the server stops; the
    store is closed.
    """
    sock = listening_socket(host, port, LISTEN_BACKLOG)
    server = GuardedServer(
        uvicorn_config(
            app,
            max_connections=max_connections,
            request_timeout_s=request_timeout_s,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=5,
            backlog=LISTEN_BACKLOG,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="leasekit-server", daemon=True
    )
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.005)
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if sock.family == socket.AF_INET6 else host
    try:
        yield f"http://{url_host}:{bound_port}"
    finally:
        app.release_holds()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
