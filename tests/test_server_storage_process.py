"""The SQLite store's writer and reader run in processes of their own
(``leasekit.server._store_process``): what crosses the socket, what a dead
child does to its requests, and that no child outlives its server."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import signal
import sqlite3
import time
from collections import deque
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from serve_process import ServeProcess

from leasekit.lease import LeaseConfig
from leasekit.protocol import NO_HEARTBEAT
from leasekit.server import create_app, running_server
from leasekit.server._sqlite import SqliteStore
from leasekit.server._store_process import frame, unframe

ENV, KEY = "env_1", "key_1"
AUTH = {"x-api-key": KEY}
BASE = f"/v1/environments/{ENV}/work"

MESSAGES = st.lists(
    st.recursive(
        st.none() | st.integers() | st.text() | st.binary(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ),
    max_size=8,
)


@given(MESSAGES, st.lists(st.integers(0, 10_000), max_size=10))
def test_messages_arrive_whole_and_in_order_however_the_bytes_are_split(
    messages: list[Any], cuts: list[int]
) -> None:
    wire = b"".join(frame(message) for message in messages)
    points = sorted({0, len(wire), *(cut % (len(wire) + 1) for cut in cuts)})
    buffer = bytearray()
    received: list[Any] = []
    for start, end in itertools.pairwise(points):
        buffer += wire[start:end]
        received += unframe(buffer)
    assert received == messages
    assert not buffer


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _ended(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has ended; reaping it is its new parent's business


def _ok_or_529(answer: httpx.Response) -> httpx.Response | None:
    """The answer if 200; None if the 529 of a request a dead child held."""
    if answer.status_code == 200:
        return answer
    assert answer.status_code == 529, answer.text
    assert answer.json()["error"]["type"] == "overloaded_error"
    return None


@pytest.mark.parametrize("role", ["writer", "reader"])
def test_a_killed_storage_process_fails_only_what_it_held_and_is_started_again(
    tmp_path: Path, role: str
) -> None:
    app = create_app(keys={ENV: KEY}, db_path=tmp_path / "lease.db")
    store: Any = app.store
    with running_server(app) as url, httpx.Client(base_url=url, headers=AUTH) as http:
        work_id = http.post(BASE).json()["id"]
        first = http.post(
            f"{BASE}/{work_id}/heartbeat", params={"expected_last_heartbeat": NO_HEARTBEAT}
        )
        assert first.status_code == 200
        echo = first.json()["last_heartbeat"]
        child = getattr(store, f"_{role}")
        old_pid = child.pid
        os.kill(old_pid, signal.SIGKILL)
        beat: httpx.Response | None = None
        item: httpx.Response | None = None
        for _ in range(200):  # a new child is started at most once per RESTART_AFTER_S
            if beat is None:
                answer = http.post(
                    f"{BASE}/{work_id}/heartbeat", params={"expected_last_heartbeat": echo}
                )
                beat = _ok_or_529(answer)
            if item is None:
                item = _ok_or_529(http.get(f"{BASE}/{work_id}"))
            if beat is not None and item is not None:
                break
            time.sleep(0.02)  # as a client honouring the 529 would
        assert beat is not None and item is not None
        assert child.pid != old_pid
        assert item.json()["state"] == "active"
        # The lease goes on from the last answer: nothing answered was lost.
        again = http.post(
            f"{BASE}/{work_id}/heartbeat",
            params={"expected_last_heartbeat": beat.json()["last_heartbeat"]},
        )
        assert again.status_code == 200, again.text


def test_close_answers_every_request_sent_before_it(tmp_path: Path) -> None:
    path = tmp_path / "lease.db"
    store = SqliteStore(path, LeaseConfig())

    async def main() -> list[Any]:
        now_us = time.time_ns() // 1000
        calls = [asyncio.ensure_future(store.enqueue(ENV, now_us, None, None)) for _ in range(50)]
        await asyncio.sleep(0)  # each call sent its request
        store.close()
        return await asyncio.gather(*calls)

    items = asyncio.run(main())
    assert len({item["id"] for item in items}) == 50
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM work").fetchone() == (50,)


def test_the_storage_processes_end_with_their_server(tmp_path: Path) -> None:
    """kill -9 the server: its writer and reader see their socket close and exit."""
    server = ServeProcess(
        "--db",
        str(tmp_path / "lease.db"),
        log_path=tmp_path / "serve.log",
        env={**os.environ, "LEASEKIT_KEYS": f"{ENV}={KEY}"},
    )
    with server, httpx.Client(base_url=server.url, headers=AUTH) as http:
        assert http.post(BASE).status_code == 200  # both processes are up and used
        assert http.get(BASE).status_code == 200
        children = _children(server.proc.pid)
        assert len(children) == 2
        server.kill()
    deadline = time.monotonic() + 30
    while not all(_ended(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(_ended(child) for child in children)


ARRIVALS = st.lists(
    st.one_of(st.just("take"), st.sampled_from(["enqueue", "heartbeat", "poll", "ack"])),
    max_size=120,
)


@given(ARRIVALS)
def test_the_writer_takes_leases_first_and_new_items_in_turn(steps: list[str]) -> None:
    """Requests arrive and batches are taken in any interleaving: every
    request is taken once, each kind in arrival order; a batch is all
    lease changes or at most MAX_BULK new items; while new items wait, no
    two lease batches come in a row (creates are not starved)."""
    from leasekit.server._sqlite import _BULK, MAX_BATCH, MAX_BULK, _LeasesFirst

    take = _LeasesFirst()
    waiting: deque[Any] = deque()
    taken: list[Any] = []
    previous = ""
    for number, step in enumerate([*steps, *["take"] * len(steps)]):
        if step != "take":
            waiting.append((number, step, 0, ()))
            continue
        if not waiting:
            continue
        bulk_waits = any(job[1] in _BULK for job in waiting)
        batch = take(waiting)
        assert batch
        kinds = {job[1] in _BULK for job in batch}
        assert len(kinds) == 1
        kind = "bulk" if kinds == {True} else "leases"
        assert len(batch) <= (MAX_BULK if kind == "bulk" else MAX_BATCH)
        if bulk_waits and previous == "leases":
            assert kind == "bulk"
        previous = kind
        taken += batch
    assert len(set(taken)) == len(taken)  # no request twice
    assert len(taken) == sum(step != "take" for step in steps)
    for bulk in (True, False):
        numbers = [job[0] for job in taken if (job[1] in _BULK) == bulk]
        assert numbers == sorted(numbers)


def _note(done: list[str], name: str, _call: object) -> None:
    done.append(name)


def test_a_heartbeat_does_not_wait_behind_a_flood_of_creates(tmp_path: Path) -> None:
    """Thirty creates, then a heartbeat, sent to the writer together: at
    most MAX_BULK creates are answered before the heartbeat."""
    from leasekit.server._sqlite import MAX_BULK

    store = SqliteStore(tmp_path / "lease.db", LeaseConfig())

    async def main() -> list[str]:
        now_us = time.time_ns() // 1000
        work_id = (await store.enqueue(ENV, now_us, None, None))["id"]
        done: list[str] = []
        calls = [asyncio.ensure_future(store.enqueue(ENV, now_us, None, None)) for _ in range(30)]
        calls.append(
            asyncio.ensure_future(store.heartbeat(ENV, work_id, now_us, NO_HEARTBEAT, None))
        )
        for number, call in enumerate(calls):
            name = "beat" if number == 30 else "new"
            call.add_done_callback(functools.partial(_note, done, name))
        await asyncio.gather(*calls)
        return done

    try:
        done = asyncio.run(main())
    finally:
        store.close()
    assert done.index("beat") <= MAX_BULK, done


def test_a_signal_to_the_whole_group_leaves_the_storage_processes_to_their_server(
    tmp_path: Path,
) -> None:
    """A service manager's SIGTERM (or a terminal's SIGINT) reaches every
    process of the group: the children keep answering until the server,
    which got it too, closes them."""
    app = create_app(keys={ENV: KEY}, db_path=tmp_path / "lease.db")
    store: Any = app.store
    with running_server(app) as url, httpx.Client(base_url=url, headers=AUTH) as http:
        work_id = http.post(BASE).json()["id"]  # the writer is up
        assert http.get(BASE).status_code == 200  # the reader is up (not still starting)
        pids = (store._writer.pid, store._reader.pid)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        beat = http.post(
            f"{BASE}/{work_id}/heartbeat", params={"expected_last_heartbeat": NO_HEARTBEAT}
        )
        assert beat.status_code == 200, beat.text
        assert http.get(f"{BASE}/{work_id}").status_code == 200
        assert (store._writer.pid, store._reader.pid) == pids
