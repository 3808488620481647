"""List pages joined from each item's JSON, encoded once per item version.

Building a 100-item page from scratch (an API item per record, its
timestamps, a dict each, then ``json.dumps``) costs about 1 ms of the
event loop that every tenant shares, so a tenant paging through a long
queue over and over delays every other tenant's heartbeats by that much
(``benchmarks/bench_soak.py``). An item's JSON changes only when the item
does, and every change bumps ``WorkRecord.version``: each item is encoded
once per version, and a page is the join of its items' bytes. The bytes
are the same as ``dumps(WorkList(...).to_json())``'s (a test compares them).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable

from ..lease import WorkRecord
from ..protocol import dumps
from ._store import EncodedJson

DEFAULT_CAPACITY = 100_000
"""Items whose encoding is kept (about 400 bytes each); the oldest go first."""


class ItemPages:
    """Encodes list pages; keeps each listed item's JSON while its key holds.

    ``key`` is whatever identifies the item's content: the record's
    ``version`` for a record that every change goes through (the memory
    store), more where a record is a copy that was settled after it was
    read (the SQLite store). Used from one thread at a time.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"ItemPages: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._encoded: dict[tuple[str, str], tuple[Hashable, bytes]] = {}

    def __len__(self) -> int:
        return len(self._encoded)

    def item(self, record: WorkRecord, key: Hashable) -> bytes:
        """The record's API JSON (no secret), as the server encodes it."""
        name = (record.environment_id, record.work_id)
        kept = self._encoded.get(name)
        if kept is not None and kept[0] == key:
            return kept[1]
        encoded = dumps(record.to_item().to_json())
        if kept is None and len(self._encoded) >= self.capacity:
            del self._encoded[next(iter(self._encoded))]  # the oldest entry
        self._encoded[name] = (key, encoded)
        return encoded

    def page(
        self, records: Iterable[tuple[WorkRecord, Hashable]], next_page: str | None
    ) -> EncodedJson:
        """``{"data": [...], "next_page": ...}`` for ``(record, key)`` pairs."""
        return self.join([self.item(record, key) for record, key in records], next_page)

    @staticmethod
    def join(items: list[bytes], next_page: str | None) -> EncodedJson:
        """The page of these encoded items."""
        cursor = json.dumps(next_page).encode()
        return EncodedJson(b'{"data":[' + b",".join(items) + b'],"next_page":' + cursor + b"}")
