"""List pages are joined from each item's JSON, kept while the item is
unchanged (``leasekit/server/_pages.py``): a page must never show an item as
it was before a change, and its bytes must be what encoding the page whole
gives."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leasekit.lease import LeaseConfig
from leasekit.protocol import NO_HEARTBEAT, ApiError, dumps
from leasekit.server._memory import MemoryStore
from leasekit.server._pages import ItemPages
from leasekit.server._sqlite import SqliteStore

ENV = "env_pages"
T0_US = 1_800_000_000 * 1_000_000
CONFIG = LeaseConfig(default_ttl_seconds=10, min_ttl_seconds=5, max_ttl_seconds=60)

OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["enqueue", "poll", "ack", "claim", "renew", "metadata", "stop", "wait"]),
        st.integers(0, 5),  # which item
        st.integers(0, 25),  # seconds to wait
    ),
    max_size=30,
)


async def _pages(store: Any, now_us: int) -> list[bytes]:
    pages, cursor = [], None
    while True:
        page = await store.list(ENV, now_us, 3, cursor)
        pages.append(bytes(page))
        cursor = json.loads(page)["next_page"]
        if cursor is None:
            return pages


async def _check(store: Any, operations: list[tuple[str, int, int]]) -> int:
    """Apply ``operations``; after each, every page must be what encoding it
    whole from each item's retrieve gives. Returns the pages checked."""
    store.add_environment(ENV)
    now_us, ids, stamps, checked = T0_US, [], {}, 0
    for op, which, wait_s in operations:
        work_id = ids[which % len(ids)] if ids else ""
        try:
            if op == "enqueue" or not ids:
                ids.append((await store.enqueue(ENV, now_us, None, {"n": str(len(ids))}))["id"])
            elif op == "poll":
                await store.poll(ENV, now_us, "w", 0)
            elif op == "ack":
                await store.ack(ENV, work_id, now_us)
            elif op in ("claim", "renew"):
                expected = NO_HEARTBEAT if op == "claim" else stamps.get(work_id, NO_HEARTBEAT)
                answer = await store.heartbeat(ENV, work_id, now_us, expected, None)
                stamps[work_id] = answer["last_heartbeat"]
            elif op == "metadata":
                await store.update_metadata(ENV, work_id, now_us, {"m": str(now_us)})
            elif op == "stop":
                await store.stop(ENV, work_id, now_us, which % 2 == 0)
            else:
                now_us += wait_s * 1_000_000  # leases and claim windows expire
        except ApiError:
            pass  # refused by the rules: nothing changed
        pages = await _pages(store, now_us)
        items = [item for page in pages for item in json.loads(page)["data"]]
        assert [item["id"] for item in items] == ids
        for item in items:
            assert item == await store.retrieve(ENV, item["id"], now_us)
        for page in pages:
            decoded = json.loads(page)
            assert page == dumps(decoded), "not the bytes of the page encoded whole"
        checked += len(pages)
    return checked


@settings(max_examples=60, deadline=None)
@given(OPERATIONS, st.integers(1, 4))
def test_memory_pages_show_every_change(operations: list[Any], capacity: int) -> None:
    store = MemoryStore(CONFIG)
    store._pages = ItemPages(capacity)  # a small cache: entries are evicted too
    asyncio.run(_check(store, operations))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(OPERATIONS)
def test_sqlite_pages_show_every_change(tmp_path: Path, operations: list[Any]) -> None:
    path = tmp_path / "pages.db"
    path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = SqliteStore(path, CONFIG)
    try:
        asyncio.run(_check(store, operations))
    finally:
        store.close()


def test_a_page_is_encoded_from_each_item_once_per_version() -> None:
    store = MemoryStore(CONFIG)

    async def run() -> tuple[bytes, bytes, bytes]:
        store.add_environment(ENV)
        work_id = (await store.enqueue(ENV, T0_US, None, None))["id"]
        await store.enqueue(ENV, T0_US, None, None)
        first = bytes(await store.list(ENV, T0_US, None, None))
        again = bytes(await store.list(ENV, T0_US, None, None))
        await store.update_metadata(ENV, work_id, T0_US, {"k": "v"})
        changed = bytes(await store.list(ENV, T0_US, None, None))
        return first, again, changed

    first, again, changed = asyncio.run(run())
    assert first == again and len(store._pages) == 2
    assert json.loads(changed)["data"][0]["metadata"] == {"k": "v"}
    assert json.loads(first)["data"][0]["metadata"] == {}
