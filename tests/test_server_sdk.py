"""The reference server over real HTTP, with the official ``anthropic`` SDK as the client.

Every test runs against both stores (memory and a SQLite file).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import pytest
from anthropic.types.beta.environments import (
    BetaHeartbeatPreconditionFailedError,
    BetaSelfHostedWorkHeartbeatResponse,
)

from leasekit.lease import LeaseConfig
from leasekit.protocol import NO_HEARTBEAT
from leasekit.server import LeaseServerApp, create_app, running_server

ENV, KEY = "env_1", "key_1"
OTHER_ENV, OTHER_KEY = "env_2", "key_2"


@dataclass
class Served:
    app: LeaseServerApp
    url: str
    client: anthropic.Anthropic

    @property
    def work(self):  # type: ignore[no-untyped-def]
        return self.client.beta.environments.work

    def create(self, **body: object) -> str:
        answer = HTTP.post(f"{self.url}/v1/environments/{ENV}/work", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        work_id: str = answer.json()["id"]
        return work_id


AUTH = {"x-api-key": KEY}
HTTP = httpx.Client()  # one client: building one per call costs tens of ms (TLS context)


@pytest.fixture(params=["memory", "sqlite"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    yield from _serve(request.param, tmp_path)


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One server for the tests that only read or make new items (bad input)."""
    yield from _serve(request.param, tmp_path_factory.mktemp("shared"))


def _serve(store: str, tmp_path: Path) -> Iterator[Served]:
    db = tmp_path / "lease.db" if store == "sqlite" else None
    app = create_app(
        keys={ENV: KEY, OTHER_ENV: OTHER_KEY},
        db_path=db,
        config=LeaseConfig(default_ttl_seconds=90, min_ttl_seconds=1, max_ttl_seconds=3600),
    )
    with running_server(app) as url:
        client = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)
        yield Served(app, url, client)
        client.close()


def claim(served: Served) -> tuple[str, str]:
    """Create, poll, ack and claim an item; returns (work_id, last_heartbeat)."""
    served.create()
    item = served.work.poll(ENV, anthropic_worker_id="worker-a")
    assert item is not None
    served.work.ack(item.id, environment_id=ENV)
    beat = served.work.heartbeat(item.id, environment_id=ENV, expected_last_heartbeat=NO_HEARTBEAT)
    return item.id, beat.last_heartbeat


# --------------------------------------------------------------------------- the lifecycle


def test_poll_ack_claim_renew_and_stale_echo(served: Served) -> None:
    work = served.work
    assert work.poll(ENV) is None  # nothing queued: answers at once with null
    served.create(data={"type": "session", "id": "sess_x"}, metadata={"team": "a"})
    item = work.poll(ENV, anthropic_worker_id="worker-a")
    assert item is not None and item.state == "queued" and item.secret
    assert item.data.id == "sess_x" and item.metadata == {"team": "a"}
    assert work.ack(item.id, environment_id=ENV).state == "starting"

    first = work.heartbeat(item.id, environment_id=ENV, expected_last_heartbeat=NO_HEARTBEAT)
    assert (first.state, first.lease_extended, first.ttl_seconds) == ("active", True, 90)
    second = work.heartbeat(
        item.id,
        environment_id=ENV,
        expected_last_heartbeat=first.last_heartbeat,
        desired_ttl_seconds=30,
    )
    assert second.ttl_seconds == 30 and second.last_heartbeat > first.last_heartbeat

    with pytest.raises(BetaHeartbeatPreconditionFailedError) as caught:
        work.heartbeat(item.id, environment_id=ENV, expected_last_heartbeat=first.last_heartbeat)
    current = caught.value.details.current_state
    assert current.last_heartbeat == second.last_heartbeat
    assert (current.state, current.ttl_seconds, current.lease_extended) == ("active", 30, False)
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    # A second claim of a claimed lease is stale too.
    with pytest.raises(BetaHeartbeatPreconditionFailedError):
        work.heartbeat(item.id, environment_id=ENV, expected_last_heartbeat=NO_HEARTBEAT)

    retrieved = work.retrieve(item.id, environment_id=ENV)
    assert retrieved.state == "active" and retrieved.secret is None
    assert retrieved.latest_heartbeat_at == second.last_heartbeat
    assert retrieved.acknowledged_at and retrieved.started_at


def test_stop_graceful_forced_and_409(served: Served) -> None:
    work = served.work
    work_id, last = claim(served)
    assert work.stop(work_id, environment_id=ENV, force=False).state == "stopping"
    # While stopping, the server does not compare: even a stale echo extends.
    beat = work.heartbeat(work_id, environment_id=ENV, expected_last_heartbeat="stale")
    assert (beat.state, beat.lease_extended) == ("stopping", True)
    stopped = work.stop(work_id, environment_id=ENV, force=True)
    assert stopped.state == "stopped" and stopped.stopped_at and stopped.stop_requested_at
    beat = work.heartbeat(work_id, environment_id=ENV, expected_last_heartbeat=last)
    assert (beat.state, beat.lease_extended) == ("stopped", False)
    with pytest.raises(anthropic.ConflictError) as caught:
        work.stop(work_id, environment_id=ENV, force=True)
    assert caught.value.type == "conflict_error"


def test_list_pages_stats_and_metadata(served: Served) -> None:
    work = served.work
    created = [served.create(metadata={"n": str(n)}) for n in range(5)]
    page = work.list(ENV, limit=2)
    assert [w.id for w in page.data] == created[:2] and page.next_page
    assert [w.id for w in work.list(ENV, limit=2)] == created  # the SDK follows next_page
    last = work.list(ENV, limit=2, page=work.list(ENV, limit=4).next_page)
    assert [w.id for w in last.data] == created[4:] and last.next_page is None

    assert work.poll(ENV, anthropic_worker_id="worker-a") is not None
    stats = work.stats(ENV)
    assert (stats.depth, stats.pending, stats.workers_polling) == (4, 1, 1)
    assert stats.oldest_queued_at == work.retrieve(created[0], environment_id=ENV).created_at

    updated = work.update(created[0], environment_id=ENV, metadata={"a": "1", "n": None})
    assert updated.metadata == {"a": "1"}
    assert work.retrieve(created[0], environment_id=ENV).metadata == {"a": "1"}


def test_unacknowledged_item_is_handed_out_again_after_reclaim(served: Served) -> None:
    served.create()
    first = served.work.poll(ENV, reclaim_older_than_ms=100)
    assert first is not None
    assert served.work.poll(ENV, reclaim_older_than_ms=60_000) is None
    again = served.work.poll(ENV, block_ms=999, reclaim_older_than_ms=100)
    assert again is not None and again.id == first.id


def test_long_poll_wakes_on_enqueue(served: Served) -> None:
    started = threading.Event()
    created: list[str] = []

    def enqueue_later() -> None:
        started.wait()
        time.sleep(0.2)
        created.append(served.create())

    thread = threading.Thread(target=enqueue_later)
    thread.start()
    started.set()
    item = served.work.poll(ENV, block_ms=999)  # the poll is waiting when the item arrives
    thread.join()
    assert item is not None and [item.id] == created


def test_expired_lease_answers_expired_and_is_handed_out_again(served: Served) -> None:
    work = served.work
    served.create()
    item = work.poll(ENV)
    assert item is not None
    work.ack(item.id, environment_id=ENV)
    beat = work.heartbeat(
        item.id, environment_id=ENV, expected_last_heartbeat=NO_HEARTBEAT, desired_ttl_seconds=1
    )
    assert beat.ttl_seconds == 1
    # A long poll returns the item once its lease expires, without other traffic.
    again = None
    for _ in range(5):
        again = work.poll(ENV, block_ms=999)
        if again is not None:
            break
    assert again is not None and again.id == item.id and again.state == "queued"
    with pytest.raises(BetaHeartbeatPreconditionFailedError) as caught:
        work.heartbeat(item.id, environment_id=ENV, expected_last_heartbeat=beat.last_heartbeat)
    assert caught.value.details.current_state.state == "queued"
    assert caught.value.details.current_state.last_heartbeat is None


# --------------------------------------------------------------------------- auth


def test_auth_forms_missing_and_foreign_keys(served: Served) -> None:
    work_id = served.create()
    path = f"{served.url}/v1/environments/{ENV}/work/{work_id}"
    assert HTTP.get(path, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert HTTP.get(path, headers={"x-api-key": KEY}).status_code == 200
    missing = HTTP.get(path)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    wrong = HTTP.get(path, headers={"x-api-key": "nope"})
    assert wrong.status_code == 401
    # Another environment's key learns nothing: the item does not exist for it.
    foreign = HTTP.get(path, headers={"x-api-key": OTHER_KEY})
    assert foreign.status_code == 404 and foreign.json()["error"]["type"] == "not_found_error"
    beat = HTTP.post(
        f"{path}/heartbeat",
        params={"expected_last_heartbeat": NO_HEARTBEAT},
        headers={"x-api-key": OTHER_KEY},
    )
    assert beat.status_code == 404
    other = anthropic.Anthropic(base_url=served.url, api_key=OTHER_KEY, max_retries=0)
    assert other.beta.environments.work.poll(OTHER_ENV) is None  # env_1's item is not there
    with pytest.raises(anthropic.NotFoundError):
        other.beta.environments.work.poll(ENV)
    assert served.work.retrieve(work_id, environment_id=ENV).state == "queued"


# --------------------------------------------------------------------------- bad input

BAD_QUERIES = [
    ("GET", "poll", {"block_ms": "0"}, "block_ms"),
    ("GET", "poll", {"block_ms": "1000"}, "block_ms"),
    ("GET", "poll", {"block_ms": "abc"}, "block_ms"),
    ("GET", "poll", {"block_ms": ""}, "block_ms"),
    ("GET", "poll", {"reclaim_older_than_ms": "-1"}, "reclaim_older_than_ms"),
    ("GET", "poll", {"reclaim_older_than_ms": "1e3"}, "reclaim_older_than_ms"),
    ("POST", "{id}/heartbeat", {"desired_ttl_seconds": "abc"}, "desired_ttl_seconds"),
    ("POST", "{id}/heartbeat", {"desired_ttl_seconds": "1.5"}, "desired_ttl_seconds"),
    ("POST", "{id}/heartbeat", {"desired_ttl_seconds": "0"}, "desired_ttl_seconds"),
    ("POST", "{id}/heartbeat", {"desired_ttl_seconds": "86401"}, "desired_ttl_seconds"),
    ("POST", "{id}/heartbeat", {"desired_ttl_seconds": "9" * 40}, "desired_ttl_seconds"),
    ("GET", "", {"limit": "0"}, "limit"),
    ("GET", "", {"limit": "x"}, "limit"),
    ("GET", "", {"page": "garbage"}, "page"),
]


@pytest.mark.parametrize(("method", "suffix", "params", "field"), BAD_QUERIES)
def test_bad_query_parameters_name_the_field(
    shared: Served, method: str, suffix: str, params: dict[str, str], field: str
) -> None:
    work_id = shared.create()
    path = f"{shared.url}/v1/environments/{ENV}/work/{suffix.format(id=work_id)}".rstrip("/")
    answer = HTTP.request(method, path, params=params, headers=AUTH)
    assert_envelope(answer, 400, "invalid_request_error", field)


BAD_BODIES = [
    ("{id}", b"{not json", "request body"),
    ("{id}", b"[1, 2]", "request body"),
    ("{id}", b'{"metadata": [1]}', "metadata"),
    ("{id}", b'{"metadata": {"k": 5}}', "metadata.k"),
    ("{id}", b'{"metadata": {"k": "' + b"v" * 600 + b'"}}', "metadata.k"),
    ("{id}", b'{"metadata": {"": "v"}}', "metadata"),
    ("{id}", b'{"meta": {}}', "meta"),
    ("{id}", b"\xff\xfe\x00garbage", "request body"),
    ("{id}/stop", b'{"force": "yes"}', "force"),
    ("{id}/stop", b'{"force": true, "now": 1}', "now"),
    ("", b'{"data": {"type": "other"}}', "data.type"),
    ("", b'{"data": {"id": 7}}', "data.id"),
    ("", b'{"data": "x"}', "data"),
    ("", b'{"metadata": {"k": 1}}', "metadata.k"),
    ("", b'{"metadata": {"k": null}}', "metadata.k"),
]


@pytest.mark.parametrize(("suffix", "body", "field"), BAD_BODIES)
def test_bad_bodies_name_the_field(shared: Served, suffix: str, body: bytes, field: str) -> None:
    work_id = shared.create()
    path = f"{shared.url}/v1/environments/{ENV}/work/{suffix.format(id=work_id)}".rstrip("/")
    answer = HTTP.post(path, content=body, headers={**AUTH, "content-type": "application/json"})
    assert_envelope(answer, 400, "invalid_request_error", field)


def test_too_many_metadata_keys_and_oversized_body(served: Served) -> None:
    work_id = served.create()
    path = f"{served.url}/v1/environments/{ENV}/work/{work_id}"
    many = {f"k{n}": "v" for n in range(65)}
    assert_envelope(
        HTTP.post(path, json={"metadata": many}, headers=AUTH),
        400,
        "invalid_request_error",
        "metadata",
    )
    huge = b'{"metadata": {"k": "' + b"v" * 100_000 + b'"}}'
    answer = HTTP.post(path, content=huge, headers=AUTH)
    assert_envelope(answer, 413, "request_too_large", "request body")


def test_unknown_things_answer_404_and_extra_params_are_ignored(served: Served) -> None:
    base = f"{served.url}/v1/environments"
    assert_envelope(
        HTTP.get(f"{base}/{ENV}/work/work_nope", headers=AUTH), 404, "not_found_error", "work_nope"
    )
    assert_envelope(HTTP.get(f"{base}/env_9/work", headers=AUTH), 404, "not_found_error", "env_9")
    assert_envelope(
        HTTP.get(f"{served.url}/v2/whatever", headers=AUTH), 404, "not_found_error", "/v2"
    )
    assert_envelope(
        HTTP.delete(f"{base}/{ENV}/work", headers=AUTH), 404, "not_found_error", "DELETE"
    )
    work_id = served.create()
    item = HTTP.get(f"{base}/{ENV}/work/poll", params={"beta": "true", "x": "1"}, headers=AUTH)
    assert item.status_code == 200 and item.json()["id"] == work_id
    beat = HTTP.post(
        f"{base}/{ENV}/work/{work_id}/heartbeat",
        params={"expected_last_heartbeat": NO_HEARTBEAT, "unknown": "1"},
        headers=AUTH,
    )
    assert beat.status_code == 200 and beat.json()["type"] == "work_heartbeat"


def test_unexpected_errors_are_a_generic_500(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    work_id = served.create()

    async def broken(*args: object) -> None:
        raise RuntimeError("boom in the store")

    served.app.state.store.retrieve = broken
    with caplog.at_level("ERROR", logger="leasekit.server"):
        answer = HTTP.get(f"{served.url}/v1/environments/{ENV}/work/{work_id}", headers=AUTH)
    assert_envelope(answer, 500, "api_error", "internal server error")
    assert "boom" not in answer.text and "Traceback" not in answer.text
    assert "boom in the store" in caplog.text  # the operator gets the traceback
    assert KEY not in caplog.text


def assert_envelope(answer: httpx.Response, status: int, error_type: str, needle: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert needle in body["error"]["message"], body
    assert body["request_id"].startswith("req_")
    assert answer.headers["request-id"] == body["request_id"]


def test_async_sdk_concurrent_claims_have_one_winner(served: Served) -> None:
    work_id = served.create()

    async def race() -> list[object]:
        client = anthropic.AsyncAnthropic(base_url=served.url, api_key=KEY, max_retries=0)
        async with client:
            work = client.beta.environments.work
            return await asyncio.gather(
                *(
                    work.heartbeat(
                        work_id, environment_id=ENV, expected_last_heartbeat=NO_HEARTBEAT
                    )
                    for _ in range(10)
                ),
                return_exceptions=True,
            )

    outcomes = asyncio.run(race())
    won = [o for o in outcomes if isinstance(o, BetaSelfHostedWorkHeartbeatResponse)]
    lost = [o for o in outcomes if isinstance(o, BetaHeartbeatPreconditionFailedError)]
    assert len(won) == 1 and len(lost) == 9
    assert all(e.details.current_state.last_heartbeat == won[0].last_heartbeat for e in lost)
