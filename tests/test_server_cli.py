"""``leasekit serve`` as an operator runs it: a real process, its banner, its log, Ctrl-C."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import pytest
from serve_process import ServeProcess

from leasekit.protocol import NO_HEARTBEAT

KEYS = {"env_a": "sk-secret-aaaa-1234", "env_b": "sk-secret-bbbb-5678"}


def test_serve_prints_url_and_environments_never_a_key_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    log = tmp_path / "serve.log"
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# the operator's keys\n" + "".join(f"{e}={k}\n" for e, k in KEYS.items()))
    with ServeProcess(
        f"--key-file={key_file}",
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
            assert any(env in line for line in banner), banner
            assert not any(key in line for line in banner), banner
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


def test_serve_takes_keys_from_the_environment_and_a_generated_key_only_from_its_file(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "LEASEKIT_KEYS": "env_a=sk-from-env-1,env_b=sk-from-env-2"}
    with ServeProcess(log_path=tmp_path / "a.log", env=env) as server:
        banner = server.banner + [server.read_banner_line() for _ in range(2)]
        assert "env_a" in banner[1] and "env_b" in banner[2]
        answer = httpx.get(
            f"{server.url}/v1/environments/env_b/work", headers={"x-api-key": "sk-from-env-2"}
        )
        assert answer.status_code == 200
        assert server.interrupt() == 0
    assert not any("sk-from-env" in line for line in banner)

    bare = {k: v for k, v in os.environ.items() if k != "LEASEKIT_KEYS"}
    with ServeProcess(log_path=tmp_path / "b.log", env=bare) as server:
        banner = server.banner + [server.read_banner_line() for _ in range(2)]
        found = re.search(r"key is in (\S+)", banner[2])
        assert found is not None, banner
        key_path = Path(found.group(1))
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        env_id, _, key = key_path.read_text().strip().partition("=")
        assert env_id == "env_local" and not any(key in line for line in banner)
        answer = httpx.get(
            f"{server.url}/v1/environments/env_local/work", headers={"x-api-key": key}
        )
        assert answer.status_code == 200
        assert server.interrupt() == 0
    assert not key_path.exists()  # removed at exit


def test_serve_creates_its_database_readable_by_its_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    with ServeProcess("--key=env_a=k1", f"--db={db}", log_path=tmp_path / "s.log") as server:
        created = httpx.post(
            f"{server.url}/v1/environments/env_a/work", headers={"x-api-key": "k1"}
        )
        assert created.status_code == 200
        for path in tmp_path.glob("leases.db*"):  # the WAL and its index too
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert server.interrupt() == 0


def test_serve_help_shows_the_real_default_port_and_plain_percent_signs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "leasekit.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert "(default 8787)" in done.stdout and "8000" not in done.stdout
    assert "%%" not in done.stdout


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
        (["--key-file", "/nonexistent/keys"], "/nonexistent/keys"),
        (["--max-queued", "-1"], "max_queued"),
        (["--max-connections", "0"], "max_connections"),
        (["--key", "env_a=k1", "--key", "env_a=k2"], "more than once"),
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
