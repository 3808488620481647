"""Races and durability of the reference server over real HTTP.

50 concurrent claims of one item, then 50 concurrent renewals with one echo,
must each give exactly one 200: in memory, in SQLite, and with two server
processes on one SQLite file. A kill -9 under heartbeat load loses no
heartbeat that was answered 200.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from raw_http import RawConnection
from serve_process import ServeProcess

from leasekit.protocol import NO_HEARTBEAT
from leasekit.server import create_app, running_server

ENV, KEY = "env_1", "key_1"
AUTH = {"x-api-key": KEY}
RACERS = 50


async def race_rounds(urls: Sequence[str], rounds: int) -> None:
    """Each round: a new item, 50 claims, then 50 renewals echoing the winner,
    spread over ``urls`` (one server, or several on one database), each on
    its own keep-alive connection."""
    connections = [await RawConnection.open(urls[n % len(urls)]) for n in range(RACERS)]
    base = f"/v1/environments/{ENV}/work"
    try:
        for _ in range(rounds):
            status, created = await connections[0].request("POST", base, headers=AUTH)
            work_id = created["id"]
            status, _ = await connections[-1].request("POST", f"{base}/{work_id}/ack", headers=AUTH)
            assert status == 200

            async def beat(n: int, echo: str, work_id: str = work_id) -> tuple[int, Any]:
                return await connections[n].request(
                    "POST",
                    f"{base}/{work_id}/heartbeat",
                    params={"expected_last_heartbeat": echo},
                    headers=AUTH,
                )

            claims = await asyncio.gather(*(beat(n, NO_HEARTBEAT) for n in range(RACERS)))
            winner = single_winner(claims)
            renewals = await asyncio.gather(*(beat(n, winner) for n in range(RACERS)))
            renewed = single_winner(renewals)
            assert renewed > winner
            for status, body in renewals:
                if status == 412:
                    assert body["error"]["details"]["current_state"]["last_heartbeat"] == renewed
    finally:
        for connection in connections:
            connection.close()


def single_winner(answers: Sequence[tuple[int, Any]]) -> str:
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [412] * (len(answers) - 1), statuses
    (won,) = [body["last_heartbeat"] for status, body in answers if status == 200]
    assert isinstance(won, str)
    return won


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_concurrent_claims_and_renewals_have_one_winner(store: str, tmp_path: Path) -> None:
    app = create_app(keys={ENV: KEY}, db_path=tmp_path / "lease.db" if store == "sqlite" else None)
    with running_server(app) as url:
        asyncio.run(race_rounds([url], rounds=20))


def test_two_processes_on_one_sqlite_file_have_one_winner(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    args = ("--db", db, "--key", f"{ENV}={KEY}", "--log-level", "warning")
    with (
        ServeProcess(*args, log_path=tmp_path / "a.log") as first,
        ServeProcess(*args, log_path=tmp_path / "b.log") as second,
    ):
        asyncio.run(race_rounds([first.url, second.url], rounds=10))
        # Both see the same items: ids are unique across the processes.
        with httpx.Client(headers=AUTH) as client:
            listed = [
                client.get(f"{u}/v1/environments/{ENV}/work", params={"limit": 100}).json()
                for u in (first.url, second.url)
            ]
        assert listed[0] == listed[1] and len(listed[0]["data"]) == 10
        # A long poll on one process wakes for an item the other one created.
        created: list[str] = []

        def create_later() -> None:
            time.sleep(0.3)
            answer = httpx.post(f"{first.url}/v1/environments/{ENV}/work", headers=AUTH)
            created.append(answer.json()["id"])

        thread = threading.Thread(target=create_later)
        thread.start()
        polled = httpx.get(
            f"{second.url}/v1/environments/{ENV}/work/poll", params={"block_ms": 999}, headers=AUTH
        )
        thread.join()
        assert polled.json() is not None and polled.json()["id"] == created[0]


def test_kill_9_loses_no_answered_heartbeat(tmp_path: Path) -> None:
    db = str(tmp_path / "durable.db")
    args = ("--db", db, "--key", f"{ENV}={KEY}", "--log-level", "warning")
    items = 4
    last_ok: dict[str, str] = {}
    successes = threading.Semaphore(0)
    stop = threading.Event()

    def load(url: str, work_id: str, echo: str) -> None:
        with httpx.Client(headers=AUTH, timeout=10) as client:
            while not stop.is_set():
                try:
                    answer = client.post(
                        f"{url}/v1/environments/{ENV}/work/{work_id}/heartbeat",
                        params={"expected_last_heartbeat": echo},
                    )
                except httpx.HTTPError:
                    return  # the server died under us: this beat was in flight
                assert answer.status_code == 200, answer.text
                echo = last_ok[work_id] = answer.json()["last_heartbeat"]
                successes.release()

    with ServeProcess(
        *args, "--seed-work", f"{ENV}:{items}", log_path=tmp_path / "1.log"
    ) as server:
        threads = []
        with httpx.Client(headers=AUTH) as client:
            for _ in range(items):
                item = client.get(f"{server.url}/v1/environments/{ENV}/work/poll").json()
                claimed = client.post(
                    f"{server.url}/v1/environments/{ENV}/work/{item['id']}/heartbeat",
                    params={"expected_last_heartbeat": NO_HEARTBEAT},
                ).json()
                last_ok[item["id"]] = claimed["last_heartbeat"]
                threads.append(
                    threading.Thread(
                        target=load, args=(server.url, item["id"], claimed["last_heartbeat"])
                    )
                )
        for thread in threads:
            thread.start()
        for _ in range(200):  # let the load run, then kill in the middle of it
            assert successes.acquire(timeout=30)
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(30)
    answered = dict(last_ok)

    with (
        ServeProcess(*args, log_path=tmp_path / "2.log") as restarted,
        httpx.Client(headers=AUTH) as client,
    ):
        for work_id, value in answered.items():
            base = f"{restarted.url}/v1/environments/{ENV}/work/{work_id}"
            stored = client.get(base).json()["latest_heartbeat_at"]
            # The last answered value, or a later one whose answer the kill swallowed.
            assert stored >= value
            echo = client.post(f"{base}/heartbeat", params={"expected_last_heartbeat": value})
            if stored == value:
                assert echo.status_code == 200
            else:
                assert echo.status_code == 412
                current = echo.json()["error"]["details"]["current_state"]
                assert current["last_heartbeat"] == stored and current["state"] == "active"
