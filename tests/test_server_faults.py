"""Fault injection on the reference server, over real HTTP, both stores."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anthropic
import httpx
import pytest
from anthropic.types.beta.environments import BetaHeartbeatPreconditionFailedError

from leasekit.protocol import NO_HEARTBEAT
from leasekit.server import FaultConfig, LeaseServerApp, create_app, running_server

ENV, KEY = "env_1", "key_1"
AUTH = {"x-api-key": KEY}
HTTP = httpx.Client()
GIVE_UP_S = 0.5
"""How long the test client waits for an answer that a fault swallowed."""


class Served:
    def __init__(self, app: LeaseServerApp, url: str) -> None:
        self.app = app
        self.url = url
        self.client = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)
        self.work = self.client.beta.environments.work

    def claim(self) -> tuple[str, str]:
        """A fresh item, claimed; returns (work_id, last_heartbeat)."""
        work_id = HTTP.post(f"{self.url}/v1/environments/{ENV}/work", headers=AUTH).json()["id"]
        beat = self.work.heartbeat(
            work_id, environment_id=ENV, expected_last_heartbeat=NO_HEARTBEAT
        )
        return work_id, beat.last_heartbeat

    def heartbeat_raw(self, work_id: str, echo: str, timeout: float = GIVE_UP_S) -> httpx.Response:
        return HTTP.post(
            f"{self.url}/v1/environments/{ENV}/work/{work_id}/heartbeat",
            params={"expected_last_heartbeat": echo},
            headers=AUTH,
            timeout=timeout,
        )

    def stored(self, work_id: str) -> str | None:
        return self.work.retrieve(work_id, environment_id=ENV).latest_heartbeat_at


@contextmanager
def serve(tmp_path: Path, store: str, faults: FaultConfig | None = None) -> Iterator[Served]:
    db = tmp_path / "lease.db" if store == "sqlite" else None
    app = create_app(keys={ENV: KEY}, db_path=db, faults=faults)
    with running_server(app) as url:
        yield Served(app, url)


@pytest.fixture(params=["memory", "sqlite"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path, request.param) as served:
        yield served


def test_drop_answer_commits_but_the_client_sees_nothing(served: Served) -> None:
    work_id, last = served.claim()
    served.app.state.faults.queue("drop_answer")
    with pytest.raises(httpx.ReadTimeout):
        served.heartbeat_raw(work_id, last)
    stored = served.stored(work_id)
    assert stored is not None and stored > last  # the server moved on
    # The client still holds `last`: its next echo meets the self-inflicted 412.
    with pytest.raises(BetaHeartbeatPreconditionFailedError) as caught:
        served.work.heartbeat(work_id, environment_id=ENV, expected_last_heartbeat=last)
    current = caught.value.details.current_state
    assert (current.state, current.last_heartbeat) == ("active", stored)


def test_drop_request_changes_nothing(served: Served) -> None:
    work_id, last = served.claim()
    served.app.state.faults.queue("drop_request")
    with pytest.raises(httpx.ReadTimeout):
        served.heartbeat_raw(work_id, last)
    assert served.stored(work_id) == last
    beat = served.work.heartbeat(work_id, environment_id=ENV, expected_last_heartbeat=last)
    assert beat.last_heartbeat > last


def test_error_answers_500_or_529_and_changes_nothing(served: Served) -> None:
    work_id, last = served.claim()
    served.app.state.faults.queue("error", "error", "error", "error")
    statuses = set()
    for _ in range(4):
        answer = served.heartbeat_raw(work_id, last)
        assert answer.status_code in (500, 529)
        expected = "overloaded_error" if answer.status_code == 529 else "api_error"
        assert answer.json()["error"]["type"] == expected
        statuses.add(answer.status_code)
    assert served.stored(work_id) == last
    served.app.state.faults.queue("error")
    with pytest.raises(anthropic.APIStatusError) as caught:  # what the SDK makes of it
        served.work.heartbeat(work_id, environment_id=ENV, expected_last_heartbeat=last)
    assert caught.value.status_code in (500, 529)
    assert served.work.heartbeat(work_id, environment_id=ENV, expected_last_heartbeat=last)


def test_faults_match_heartbeats_only_unless_all_calls(served: Served) -> None:
    work_id, last = served.claim()
    faults = served.app.state.faults
    faults.queue("error")
    # Not a heartbeat: untouched, and the queued fault waits for one.
    assert served.work.retrieve(work_id, environment_id=ENV).state == "active"
    assert served.heartbeat_raw(work_id, last).status_code in (500, 529)
    faults.set(all_calls=True)
    faults.queue("error")
    with pytest.raises(anthropic.APIStatusError):
        served.work.retrieve(work_id, environment_id=ENV)


def test_rates_change_at_run_time(served: Served) -> None:
    work_id, last = served.claim()
    faults = served.app.state.faults
    faults.set(error_rate=1.0)
    assert served.heartbeat_raw(work_id, last).status_code in (500, 529)
    faults.set(error_rate=0.0, drop_answer=1.0)
    with pytest.raises(httpx.ReadTimeout):
        served.heartbeat_raw(work_id, last)
    faults.set(drop_answer=0.0)
    assert served.heartbeat_raw(work_id, served.stored(work_id) or "").status_code == 200


def test_latency_delays_the_heartbeat_but_not_other_calls(served: Served) -> None:
    work_id, last = served.claim()
    served.app.state.faults.set(latency="const:0.5")
    answers: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(served.heartbeat_raw(work_id, last, timeout=30))
    )
    thread.start()
    # The heartbeat sits in its added delay: a read now still sees the old value.
    seen_during = served.stored(work_id)
    thread.join()
    assert seen_during == last
    assert answers[0].status_code == 200
    assert served.stored(work_id) == answers[0].json()["last_heartbeat"] > last


def test_seeded_faults_repeat(tmp_path: Path) -> None:
    def statuses() -> list[int]:
        config = FaultConfig(error_rate=0.5, seed=11)
        with serve(tmp_path, "memory", config) as served:
            created = HTTP.post(f"{served.url}/v1/environments/{ENV}/work", headers=AUTH)
            work_id = created.json()["id"]
            return [served.heartbeat_raw(work_id, NO_HEARTBEAT).status_code for _ in range(24)]

    first, second = statuses(), statuses()
    assert first == second
    assert any(s == 200 for s in first) and any(s in (500, 529) for s in first)


def test_shutdown_releases_held_requests(tmp_path: Path) -> None:
    outcome: list[object] = []

    def hang(served: Served, work_id: str) -> None:
        try:
            outcome.append(served.heartbeat_raw(work_id, NO_HEARTBEAT, timeout=60).status_code)
        except httpx.HTTPError as error:
            outcome.append(error)

    with serve(tmp_path, "memory", FaultConfig(drop_request=1.0)) as served:
        work_id = HTTP.post(f"{served.url}/v1/environments/{ENV}/work", headers=AUTH).json()["id"]
        thread = threading.Thread(target=hang, args=(served, work_id))
        thread.start()
        while not served.app.held_requests:  # the request is held by the server
            thread.join(0.01)
    thread.join(30)
    assert not thread.is_alive() and outcome and outcome[0] != 200
