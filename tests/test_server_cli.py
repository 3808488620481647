"""``leasekit serve`` as an operator runs it: a real process, its banner, its log, Ctrl-C."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import pytest
from serve_process import ServeProcess

from leasekit.protocol import NO_HEARTBEAT

KEYS = {"env_a": "sk-secret-aaaa-1234", "env_b": "sk-secret-bbbb-5678"}


def test_serve_prints_url_and_keys_keeps_keys_out_of_logs_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    log = tmp_path / "serve.log"
    args = [f"--key={env}={key}" for env, key in KEYS.items()]
    with ServeProcess(
        *args,
        "--seed-work",
        "env_a:2",
        "--access-log",
        "--log-level",
        "debug",
        "--ttl",
        "30",
        log_path=log,
    ) as server:
        banner = server.banner + [server.read_banner_line() for _ in KEYS]
        for env, key in KEYS.items():
            assert any(env in line and key in line for line in banner), banner
        client = anthropic.Anthropic(base_url=server.url, api_key=KEYS["env_a"], max_retries=0)
        work = client.beta.environments.work
        item = work.poll("env_a", block_ms=50, anthropic_worker_id="w1")
        assert item is not None
        beat = work.heartbeat(item.id, environment_id="env_a", expected_last_heartbeat=NO_HEARTBEAT)
        assert beat.ttl_seconds == 30
        with pytest.raises(anthropic.NotFoundError):  # env_b's key on env_a's item
            anthropic.Anthropic(
                base_url=server.url, api_key=KEYS["env_b"], max_retries=0
            ).beta.environments.work.retrieve(item.id, environment_id="env_a")
        # Wrong and missing keys, and bad input, are logged as requests; never the keys.
        httpx.get(
            f"{server.url}/v1/environments/env_a/work", headers={"x-api-key": "sk-wrong-key-9"}
        )
        httpx.get(f"{server.url}/v1/environments/env_a/work/poll?block_ms=0")
        assert server.interrupt() == 0
    text = log.read_text()
    assert "heartbeat" in text and "Application shutdown complete" in text  # it did log
    for secret in [*KEYS.values(), "sk-wrong-key-9"]:
        assert secret not in text


def test_serve_faults_from_the_command_line(tmp_path: Path) -> None:
    with (
        ServeProcess(
            "--key=env_a=k1", "--seed-work=env_a:1", "--drop-answer=1", log_path=tmp_path / "s.log"
        ) as server,
        httpx.Client(headers={"x-api-key": "k1"}) as client,
    ):
        base = f"{server.url}/v1/environments/env_a/work"
        item = client.get(f"{base}/poll").json()  # not a heartbeat: no fault
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                f"{base}/{item['id']}/heartbeat",
                params={"expected_last_heartbeat": NO_HEARTBEAT},
                timeout=0.5,
            )
        assert client.get(f"{base}/{item['id']}").json()["state"] == "active"  # committed
        assert server.interrupt() == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--key", "no-equals"], "ENV_ID=KEY"),
        (["--seed-work", "env:x"], "ENV_ID:N"),
        (["--latency", "gauss:1"], "gauss"),
        (["--drop-answer", "1.5"], "between 0 and 1"),
        (["--ttl", "2", "--min-ttl", "5"], "min_ttl_seconds"),
        (["--seed-work", "env_nope:1"], "env_nope"),
    ],
)
def test_serve_rejects_bad_arguments(args: list[str], needle: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "leasekit.cli", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert needle in done.stderr


def test_serve_refuses_a_file_that_is_not_its_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database\n")
    done = subprocess.run(
        [sys.executable, "-m", "leasekit.cli", "serve", "--port", "0", "--db", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert str(path) in done.stderr and "cannot open as a leasekit database" in done.stderr
