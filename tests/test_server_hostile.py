"""The reference server against hostile clients, over real loopback HTTP.

Each test reproduces one hole found by probing the server as an attacker or
a careless operator would, on both stores where the store matters: bad text
that poisoned the memory store, JSON nested past the parser's recursion
limit, idle and half-sent connections that exhausted file descriptors, a
tenant whose queue made everyone's stats slow, unlimited enqueueing, ids
that counted other tenants' work.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_process import ServeProcess

from leasekit.lease import LeaseConfig
from leasekit.protocol import NO_HEARTBEAT, ApiError
from leasekit.server import LeaseServerApp, Limits, create_app, running_server

ENV, KEY = "env_1", "key_1"
OTHER_ENV, OTHER_KEY = "env_2", "key_2"
KEYS = {ENV: KEY, OTHER_ENV: OTHER_KEY}
AUTH = {"x-api-key": KEY, "content-type": "application/json"}
BASE = f"/v1/environments/{ENV}/work"


@contextmanager
def serve(tmp_path: Path, store: str, **options: Any) -> Iterator[tuple[LeaseServerApp, str]]:
    limits = options.pop("limits", None)
    db = tmp_path / "lease.db" if store == "sqlite" else None
    app = create_app(keys=KEYS, db_path=db, limits=limits, **options.pop("create", {}))
    with running_server(app, **options) as url:
        yield app, url


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def assert_envelope(answer: httpx.Response, status: int, error_type: str, *needles: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    assert body["request_id"].startswith("req_")
    for needle in needles:
        assert needle in body["error"]["message"], body


# ------------------------------------------------------------------ 1. bad text


@pytest.mark.parametrize(
    ("raw_body", "field"),
    [
        (rb'{"metadata":{"k":"\ud800"}}', "metadata.k"),
        (rb'{"metadata":{"\udfff":"v"}}', "metadata key"),
        (rb'{"data":{"type":"session","id":"s\ud800"}}', "data.id"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field_and_nothing_is_stored(
    tmp_path: Path, store: str, raw_body: bytes, field: str
) -> None:
    with serve(tmp_path, store) as (_app, url), httpx.Client(base_url=url, headers=AUTH) as http:
        assert_envelope(
            http.post(BASE, content=raw_body), 400, "invalid_request_error", field, "surrogate"
        )
        listed = http.get(BASE)
        assert listed.status_code == 200 and listed.json()["data"] == []
        assert http.get(f"{BASE}/poll").json() is None


def test_a_lone_surrogate_in_an_update_is_a_400_and_the_item_stays_readable(
    tmp_path: Path, store: str
) -> None:
    with serve(tmp_path, store) as (_app, url), httpx.Client(base_url=url, headers=AUTH) as http:
        work_id = http.post(BASE, json={"metadata": {"k": "v"}}).json()["id"]
        answer = http.post(f"{BASE}/{work_id}", content=rb'{"metadata":{"k":"\ud800"}}')
        assert_envelope(answer, 400, "invalid_request_error", "metadata.k")
        for path in (f"{BASE}/{work_id}", BASE, f"{BASE}/poll"):
            assert http.get(path).status_code == 200, path
        assert http.get(f"{BASE}/{work_id}").json()["metadata"] == {"k": "v"}


@pytest.mark.parametrize(
    "body",
    [
        {"metadata": {"k": None}},
        {"metadata": {"k": 7}},
        {"metadata": {"": "v"}},
        {"metadata": {"k": "v" * 513}},
        {"metadata": ["k"]},
        {"data": {"type": "session", "id": ""}},
        {"data": {"type": "session", "id": 7}},
        {"data": {"type": "session", "id": "s" * 257}},
    ],
)
def test_both_stores_refuse_a_bad_new_item_with_the_same_message(
    tmp_path: Path, body: dict[str, Any]
) -> None:
    messages = []
    for store in ("memory", "sqlite"):
        (tmp_path / store).mkdir()
        with (
            serve(tmp_path / store, store) as (_app, url),
            httpx.Client(base_url=url, headers=AUTH) as http,
        ):
            answer = http.post(BASE, json=body)
            assert_envelope(answer, 400, "invalid_request_error")
            messages.append(answer.json()["error"]["message"])
            assert http.get(BASE).json()["data"] == []
    assert messages[0] == messages[1]


@pytest.mark.parametrize(
    ("session_id", "metadata"),
    [(None, {"k": None}), (None, {"k": "\ud800"}), ("s\udc00", None), ("", None)],
)
def test_both_stores_create_items_through_one_validation(
    tmp_path: Path, session_id: Any, metadata: Any
) -> None:
    """Called below HTTP: the SQLite store used to accept a null metadata value
    in a new item (it validated as for an update), the memory store refused it."""
    from leasekit.server._memory import MemoryStore
    from leasekit.server._sqlite import SqliteStore

    async def create(store: Any) -> str:
        store.add_environment(ENV)
        try:
            await store.enqueue(ENV, time.time_ns() // 1000, session_id, metadata)
        except ApiError as error:
            return f"{error.status} {error.message}"
        finally:
            store.close()
        return "created"

    memory = asyncio.run(create(MemoryStore(LeaseConfig())))
    sqlite = asyncio.run(create(SqliteStore(tmp_path / "x.db", LeaseConfig())))
    assert memory == sqlite and memory.startswith("400 "), (memory, sqlite)


# ------------------------------------------------------------------ 2. deep JSON


@pytest.mark.parametrize("depth", [1000, 5000, 30000])
def test_deeply_nested_json_is_a_400_envelope(tmp_path: Path, store: str, depth: int) -> None:
    with serve(tmp_path, store) as (_app, url), httpx.Client(base_url=url, headers=AUTH) as http:
        for body in (b"[" * depth + b"]" * depth, b'{"metadata":' + b"[" * depth + b"]" * depth):
            if len(body) > 64 * 1024:
                assert http.post(BASE, content=body).status_code == 413
                continue
            assert_envelope(http.post(BASE, content=body), 400, "invalid_request_error", "body")
        assert http.get(BASE).status_code == 200


# ------------------------------------------------------------------ 3. connections


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(30)  # the server must close long before: see the timeouts below
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset
    after unread bytes counts as closed)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_idle_and_half_sent_connections_are_closed(tmp_path: Path) -> None:
    with serve(tmp_path, "memory", request_timeout_s=0.3) as (_app, url):
        idle = _connect(url)
        half = _connect(url)
        half.sendall(f"GET {BASE} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n".encode())
        trickle = _connect(url)
        for byte in b"GET / HTTP/1.1\r\nhost: x\r\n":  # a byte at a time, never a whole head
            try:
                trickle.sendall(bytes([byte]))
            except OSError:  # closed by the server: what this test wants to see
                break
            time.sleep(0.05)
        answered = _connect(url)  # a request answered, then nothing more
        answered.sendall(f"GET {BASE} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n\r\n".encode())
        for sock in (idle, half, trickle, answered):
            data = _read_all(sock)  # returns once the server closed the connection
            if sock is answered:
                assert data.startswith(b"HTTP/1.1 200")
            else:
                assert data == b""
            sock.close()


def test_connections_that_send_nothing_wait_in_the_lobby_without_a_protocol() -> None:
    """A burst of idle sockets costs the server a read callback each, not a
    transport and an HTTP parser, and does not hold up a real request."""
    from leasekit.server import GuardedServer, listening_socket, uvicorn_config

    app = create_app(keys=KEYS)
    listener = listening_socket("127.0.0.1", 0, 128)
    server = GuardedServer(uvicorn_config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    idle: list[socket.socket] = []
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.005)
        idle = [_connect(url) for _ in range(40)]
        for _ in range(2_000):  # the lobby takes 16 a turn: wait until it holds all
            if server.waiting_connections == len(idle):
                break
            time.sleep(0.005)
        assert server.waiting_connections == len(idle)
        assert len(server.server_state.connections) == 0  # no protocol for any of them
        with httpx.Client(base_url=url, headers=AUTH) as http:
            assert http.get(BASE).status_code == 200
            assert len(server.server_state.connections) == 1
        idle[0].sendall(f"GET {BASE} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n\r\n".encode())
        assert idle[0].recv(12) == b"HTTP/1.1 200"  # its first bytes made it a connection
        for sock in idle[1:]:
            sock.close()
        for _ in range(2_000):
            if server.waiting_connections == 0:
                break
            time.sleep(0.005)
        assert server.waiting_connections == 0
    finally:
        for sock in idle:
            sock.close()
        server.should_exit = True
        thread.join(30)
        listener.close()


def test_idle_sockets_closed_at_once_are_closed_a_batch_per_loop_turn() -> None:
    """Forty idle sockets whose peer closes them together are looked at
    ACCEPT_BATCH per turn of the event loop, not all in one turn (which held
    up every open connection's request while they were closed)."""
    from leasekit.server import GuardedServer, listening_socket, uvicorn_config
    from leasekit.server._connections import ACCEPT_BATCH

    app = create_app(keys=KEYS)
    listener = listening_socket("127.0.0.1", 0, 128)
    server = GuardedServer(uvicorn_config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    idle: list[socket.socket] = []
    turn = [0]
    ticking = [True]
    looked_at: list[int] = []  # the loop turn each readable lobby socket was looked at in
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.005)
        lobby = server._lobby
        assert lobby is not None
        first_byte = lobby._first_byte

        def counted(sock: socket.socket, deadline: float) -> None:
            looked_at.append(turn[0])
            first_byte(sock, deadline)

        lobby._first_byte = counted  # type: ignore[method-assign]

        def tick() -> None:
            turn[0] += 1
            if ticking[0]:
                lobby.loop.call_soon(tick)

        idle = [_connect(url) for _ in range(40)]
        for _ in range(2_000):
            if server.waiting_connections == len(idle):
                break
            time.sleep(0.005)
        assert server.waiting_connections == len(idle)
        blocked = threading.Event()

        def hold_the_loop() -> None:  # so that every close is seen in one turn
            blocked.set()
            time.sleep(0.3)

        lobby.loop.call_soon_threadsafe(tick)
        lobby.loop.call_soon_threadsafe(hold_the_loop)
        assert blocked.wait(10)
        for sock in idle:
            sock.close()
        for _ in range(2_000):
            if len(looked_at) == len(idle):
                break
            time.sleep(0.005)
        assert len(looked_at) == len(idle)
        assert server.waiting_connections == 0 and not lobby.readable
        per_turn = [looked_at.count(t) for t in set(looked_at)]
        assert max(per_turn) <= ACCEPT_BATCH
    finally:
        ticking[0] = False
        server.should_exit = True
        thread.join(30)
        listener.close()


def test_a_body_that_never_completes_is_a_400_envelope(tmp_path: Path) -> None:
    with serve(tmp_path, "memory") as (app, url):
        app.body_timeout_s = 0.3
        sock = _connect(url)
        sock.sendall(
            f"POST {BASE} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n"
            "content-type: application/json\r\ncontent-length: 100\r\n\r\n{}".encode()
        )
        head, _, body = _read_all(sock).partition(b"\r\n\r\n")
        sock.close()
        assert head.startswith(b"HTTP/1.1 400")
        assert "request body" in json.loads(body)["error"]["message"]


def test_connections_beyond_the_cap_get_a_529_envelope_and_the_cap_frees_up(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, "memory", max_connections=3, request_timeout_s=60) as (_app, url):
        held = [_connect(url) for _ in range(3)]
        with httpx.Client(base_url=url, headers=AUTH) as http:
            refused = http.get(BASE)
            assert_envelope(refused, 529, "overloaded_error", "too many open connections")
            assert refused.headers["retry-after"] == "1"
        for sock in held:
            sock.close()
        # The server learns of the closes asynchronously: the first requests
        # after them may still be refused; within a bounded number, one passes.
        for _ in range(200):
            with httpx.Client(base_url=url, headers=AUTH) as http:
                answer = http.get(BASE)
            if answer.status_code == 200:
                break
            assert answer.status_code == 529
            time.sleep(0.05)
        assert answer.status_code == 200


def test_bytes_that_are_not_http_get_a_400_envelope(tmp_path: Path) -> None:
    with serve(tmp_path, "memory") as (_app, url):
        sock = _connect(url)
        sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        head, _, body = _read_all(sock).partition(b"\r\n\r\n")
        sock.close()
        assert head.startswith(b"HTTP/1.1 400")
        assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_serve_logs_one_line_per_condition_not_one_per_event(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with ServeProcess(
        f"--key={ENV}={KEY}", "--request-timeout=0.3", "--max-connections=20", log_path=log
    ) as server:
        idle = [_connect(server.url) for _ in range(40)]  # 20 over the cap
        for sock in idle:
            _read_all(sock)  # refused at once, or closed after the timeout
            sock.close()
        for _ in range(30):
            sock = _connect(server.url)
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert _read_all(sock).startswith(b"HTTP/1.1 400")
            sock.close()
        assert server.interrupt() == 0
    lines = log.read_text().splitlines()
    for needle in ("over the connection limit", "no complete request head", "malformed HTTP"):
        matching = [line for line in lines if needle in line]
        assert 1 <= len(matching) <= 2, (needle, lines)
    assert sum("Invalid HTTP request" in line for line in lines) <= 2, lines


# ------------------------------------------------------------------ 6. limits


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path, store: str) -> None:
    with (
        serve(tmp_path, store, limits=Limits(max_queued=3)) as (_app, url),
        httpx.Client(base_url=url, headers=AUTH) as http,
    ):
        ids = [http.post(BASE).json()["id"] for _ in range(3)]
        full = http.post(BASE)
        assert_envelope(full, 429, "rate_limit_error", "3 work items queued", "limit is 3")
        assert int(full.headers["retry-after"]) >= 1
        other = http.post(f"/v1/environments/{OTHER_ENV}/work", headers={"x-api-key": OTHER_KEY})
        assert other.status_code == 200  # the limit is per environment
        assert http.post(f"{BASE}/{ids[0]}/ack").status_code == 200  # leaves the queue
        assert http.post(BASE).status_code == 200
        assert http.post(BASE).status_code == 429


def test_a_tenant_over_its_request_rate_gets_429_and_the_others_do_not(
    tmp_path: Path, store: str
) -> None:
    # One token per 100 s: the burst is all a test run can spend.
    limits = Limits(requests_per_second=0.01, burst=5)
    with (
        serve(tmp_path, store, limits=limits) as (_app, url),
        httpx.Client(base_url=url, headers=AUTH) as http,
    ):
        assert [http.get(BASE).status_code for _ in range(5)] == [200] * 5
        refused = http.get(BASE)
        assert_envelope(refused, 429, "rate_limit_error", "requests per second")
        assert int(refused.headers["retry-after"]) >= 1
        other = http.get(f"/v1/environments/{OTHER_ENV}/work", headers={"x-api-key": OTHER_KEY})
        assert other.status_code == 200


# ------------------------------------------------------------------ 4. one tenant's queue


def test_sqlite_stats_list_and_heartbeats_cost_the_same_whatever_another_queue_holds(
    tmp_path: Path,
) -> None:
    """The storage operations, run on a connection of this process, counted
    in SQLite virtual-machine steps (thousands): a cost measure that does
    not depend on the machine's load."""
    from leasekit.server._sqlite import _connect, _Engine, _open_database, _run_reads, _run_writes

    path = tmp_path / "cost.db"
    _open_database(path)
    engine = _Engine(LeaseConfig())
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    with closing(_connect(path)) as conn:

        def run(operation: str, *args: Any) -> Any:
            runs = _run_reads if operation in ("stats", "list_page") else _run_writes
            [(result, error)] = runs(conn, engine, [(0, operation, time.time_ns() // 1000, args)])
            assert error is None, error
            return result

        def steps_of(operation: str, *args: Any) -> int:
            steps[0] = 0
            conn.set_progress_handler(count, 1000)
            try:
                run(operation, *args)
            finally:
                conn.set_progress_handler(None, 1000)
            return steps[0]

        work_id = run("enqueue", OTHER_ENV)["id"]
        echo = [NO_HEARTBEAT]

        def heartbeat_steps() -> int:
            steps[0] = 0
            conn.set_progress_handler(count, 1000)
            try:
                echo[0] = run("heartbeat", OTHER_ENV, work_id, echo[0], None)["last_heartbeat"]
            finally:
                conn.set_progress_handler(None, 1000)
            return steps[0]

        def cost() -> dict[str, int]:
            return {
                "stats of the big queue": steps_of("stats", ENV),
                "list of the big queue": steps_of("list_page", ENV, 0, 100),
                "stats of the other": steps_of("stats", OTHER_ENV),
                "list of the other": steps_of("list_page", OTHER_ENV, 0, 20),
                "heartbeat of the other": heartbeat_steps(),
            }

        for _ in range(100):
            run("enqueue", ENV)
        small = cost()
        for _ in range(5_000):
            run("enqueue", ENV)
        large = cost()
        stats, _due = run("stats", ENV)
        assert stats["depth"] == 5_100 and stats["pending"] == 0
    for name, cost_steps in large.items():
        assert cost_steps <= 2 * small[name] + 20, (name, small, large)


def test_sqlite_queue_counters_agree_with_the_items_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    config = LeaseConfig(default_ttl_seconds=1, min_ttl_seconds=1, max_ttl_seconds=60)

    with (
        serve(tmp_path, "sqlite", create={"config": config}) as (_app, url),
        httpx.Client(base_url=url, headers=AUTH) as http,
    ):
        ids = [http.post(BASE).json()["id"] for _ in range(6)]
        handed = http.get(f"{BASE}/poll").json()["id"]  # pending
        http.post(f"{BASE}/{ids[1]}/ack")  # starting: its claim window is 1 s
        http.post(f"{BASE}/{ids[2]}/heartbeat", params={"expected_last_heartbeat": NO_HEARTBEAT})
        http.post(f"{BASE}/{ids[3]}/stop", json={"force": True})
        stats = http.get(f"{BASE}/stats").json()
        assert (stats["depth"], stats["pending"]) == (2, 1), (stats, handed)
        time.sleep(1.2)  # ids[1] and ids[2] expire back to the queue
        stats = http.get(f"{BASE}/stats").json()
        assert (stats["depth"], stats["pending"]) == (4, 1)
    with (
        serve(tmp_path, "sqlite", create={"config": config}) as (_app, url),
        httpx.Client(base_url=url, headers=AUTH) as http,
    ):
        stats = http.get(f"{BASE}/stats").json()
        assert (stats["depth"], stats["pending"]) == (4, 1)


def test_sqlite_a_slow_read_does_not_hold_another_tenants_heartbeat(tmp_path: Path) -> None:
    """A stats call of one tenant is held in the reader (its process is
    stopped); meanwhile another tenant's heartbeat must be answered."""
    with serve(tmp_path, "sqlite") as (app, url), httpx.Client(base_url=url) as http:
        other = {"x-api-key": OTHER_KEY}
        other_base = f"/v1/environments/{OTHER_ENV}/work"
        work_id = http.post(other_base, headers=other).json()["id"]
        for _ in range(50):
            http.post(BASE, headers=AUTH)
        # Stop the reader's process: a read sent to it now waits as long as we like.
        reader_process = app.store._reader  # type: ignore[attr-defined]
        os.kill(reader_process.pid, signal.SIGSTOP)
        order: list[str] = []

        def slow_stats() -> None:
            with httpx.Client(base_url=url, headers=AUTH, timeout=60) as own:
                assert own.get(f"{BASE}/stats").status_code == 200
            order.append("stats")

        reader = threading.Thread(target=slow_stats)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while not reader_process.waiting and time.monotonic() < deadline:
                time.sleep(0.001)
            assert reader_process.waiting == 1, "the stats call never reached the reader"
            beat = http.post(
                f"{other_base}/{work_id}/heartbeat",
                params={"expected_last_heartbeat": NO_HEARTBEAT},
                headers=other,
                timeout=60,
            )
            order.append("heartbeat")
        finally:
            os.kill(reader_process.pid, signal.SIGCONT)
            reader.join()
        assert beat.status_code == 200, beat.text
        assert order == ["heartbeat", "stats"]


def test_reads_see_every_answered_write_and_due_expiries(tmp_path: Path, store: str) -> None:
    config = LeaseConfig(default_ttl_seconds=1, min_ttl_seconds=1, max_ttl_seconds=60)
    with (
        serve(tmp_path, store, create={"config": config}) as (_app, url),
        httpx.Client(base_url=url, headers=AUTH) as http,
    ):

        def seen() -> tuple[str, str, int, int]:
            item = http.get(f"{BASE}/{work_id}").json()
            (listed,) = http.get(BASE).json()["data"]
            stats = http.get(f"{BASE}/stats").json()
            return item["state"], listed["state"], stats["depth"], stats["pending"]

        work_id = http.post(BASE).json()["id"]
        assert seen() == ("queued", "queued", 1, 0)
        beat = http.post(
            f"{BASE}/{work_id}/heartbeat", params={"expected_last_heartbeat": NO_HEARTBEAT}
        )
        assert beat.status_code == 200
        assert seen() == ("active", "active", 0, 0)
        time.sleep(1.2)  # past the 1 s lease: expired, back in the queue
        assert seen() == ("queued", "queued", 1, 0)
        if store == "sqlite":
            # The stats call asked the writer to write the expiry down; a
            # write answered after it was asked (another item) comes after it.
            assert http.post(BASE).status_code == 200
            db = sqlite3.connect(tmp_path / "lease.db")
            try:
                row = db.execute(
                    "SELECT state, deadline_us FROM work WHERE work_id = ?", (work_id,)
                ).fetchone()
            finally:
                db.close()
            assert row == ("queued", None)


# ------------------------------------------------------------------ 7. tenants


def test_ids_and_cursors_reveal_nothing_of_other_environments(tmp_path: Path, store: str) -> None:
    with serve(tmp_path, store) as (_app, url), httpx.Client(base_url=url) as http:
        other = {"x-api-key": OTHER_KEY}
        other_base = f"/v1/environments/{OTHER_ENV}/work"
        busy_ids = [http.post(BASE, headers=AUTH).json()["id"] for _ in range(5)]
        answers = [http.post(other_base, headers=other) for _ in range(2)]
        quiet_ids = [answer.json()["id"] for answer in answers]
        for work_id in busy_ids + quiet_ids:
            suffix = work_id.removeprefix("work_")
            assert len(suffix) >= 24 and int(suffix, 16) > 10**12, work_id  # random, not a count
        # The quiet environment's cursor is what it would be on an empty server.
        first_page = http.get(other_base, params={"limit": 1}, headers=other).json()
        busy_page = http.get(BASE, params={"limit": 1}, headers=AUTH).json()
        assert first_page["next_page"] == busy_page["next_page"]
        request_ids = [answer.headers["request-id"] for answer in answers]
        assert request_ids[0] != request_ids[1]
        assert request_ids[0][:-4] != request_ids[1][:-4]  # not a counter's neighbours


# ------------------------------------------------------------------ no 5xx under a mixed flood


def test_a_mixed_hostile_flood_gets_no_5xx_and_always_the_envelope(
    tmp_path: Path, store: str
) -> None:
    bodies = [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"metadata":{"k":"\\ud800"}}',
        b'{"metadata":{"k":1e999}}',
        b'{"metadata":{"k":"' + b"x" * 600 + b'"}}',
        b'{"data":{"type":"session","id":"\\udfff"}}',
        b"\xff\xfe\x00",
        b"[" * 2000 + b"]" * 2000,
        b'{"metadata":' + b"{" * 3000 + b"}" * 3000 + b"}",
    ]

    async def flood(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
            work_id = (await http.post(BASE)).json()["id"]
            calls = []
            for body in bodies:
                calls.append(http.post(BASE, content=body))
                calls.append(http.post(f"{BASE}/{work_id}", content=body))
                calls.append(http.post(f"{BASE}/{work_id}/stop", content=body))
            return list(await asyncio.gather(*calls))

    with serve(tmp_path, store) as (_app, url):
        answers = asyncio.run(flood(url))
        with httpx.Client(base_url=url, headers=AUTH) as http:
            assert http.get(BASE).status_code == 200
            assert http.get(f"{BASE}/stats").status_code == 200
    for answer in answers:
        assert answer.status_code < 500, answer.text
        assert answer.json().get("type") in ("error", "work"), answer.text


def test_worker_ids_from_clients_do_not_pile_up_without_stats(tmp_path: Path) -> None:
    """Both stores forget pollers outside the 30 s window as polls go on."""
    from leasekit.lease import WORKERS_POLLING_WINDOW_US, LeaseBook
    from leasekit.server._sqlite import POLLERS_PRUNE_EVERY, SqliteStore

    now = time.time_ns() // 1000
    later = now + WORKERS_POLLING_WINDOW_US + 600_000_000  # the store reads the clock too

    async def sqlite_rows() -> int:
        store = SqliteStore(tmp_path / "p.db", LeaseConfig())
        try:
            for n in range(POLLERS_PRUNE_EVERY):
                await store.poll(ENV, now, f"old-{n}", 5_000)
            for n in range(POLLERS_PRUNE_EVERY):
                await store.poll(ENV, later, f"new-{n}", 5_000)
            with closing(sqlite3.connect(tmp_path / "p.db")) as conn:
                (rows,) = conn.execute("SELECT COUNT(*) FROM pollers").fetchone()
            stats = await store.stats(ENV, later)
            assert stats["workers_polling"] == POLLERS_PRUNE_EVERY
            return int(rows)
        finally:
            store.close()

    assert asyncio.run(sqlite_rows()) == POLLERS_PRUNE_EVERY
    book = LeaseBook(LeaseConfig())
    book.add_environment(ENV)
    for n in range(5_000):
        book.poll(ENV, now, worker_id=f"old-{n}")
    for n in range(5_000):
        book.poll(ENV, later, worker_id=f"new-{n}")
    assert len(book._environments[ENV].pollers) <= 5_000 + 1


def test_one_tenants_bulk_requests_start_one_per_loop_turn_and_others_go_first() -> None:
    """Five list pages of one tenant and one of another, all arriving in the
    same turn of the event loop: the heavy tenant's start one per turn, and
    the other tenant's starts in the first turn, not after them."""
    from leasekit.server._limits import TurnShare

    async def main() -> list[tuple[str, int]]:
        share = TurnShare()
        loop = asyncio.get_running_loop()
        turn = [0]
        ticking = [True]

        def tick() -> None:
            turn[0] += 1
            if ticking[0]:
                loop.call_soon(tick)

        started: list[tuple[str, int]] = []

        async def request(environment_id: str) -> None:
            await share.take(environment_id)
            started.append((environment_id, turn[0]))

        loop.call_soon(tick)
        await asyncio.gather(*[request("env_heavy") for _ in range(5)], request("env_light"))
        ticking[0] = False
        return started

    started = asyncio.run(main())
    heavy_turns = [t for env, t in started if env == "env_heavy"]
    light_turn = next(t for env, t in started if env == "env_light")
    assert len(heavy_turns) == 5 and len(set(heavy_turns)) == 5  # one per turn
    assert light_turn == min(heavy_turns)  # the other tenant is not queued behind them


def test_a_bulk_request_whose_client_left_gives_its_turn_to_the_next() -> None:
    from leasekit.server._limits import TurnShare

    async def main() -> list[int]:
        share = TurnShare()
        order: list[int] = []

        async def request(number: int) -> None:
            await share.take("env")
            order.append(number)

        tasks = [asyncio.create_task(request(n)) for n in range(4)]
        await asyncio.sleep(0)  # all four have asked; the first started
        tasks[1].cancel()  # its client went away while it waited
        await asyncio.gather(*tasks, return_exceptions=True)
        return order

    assert asyncio.run(main()) == [0, 2, 3]
