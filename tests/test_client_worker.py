"""The worker loop, ``leasekit keep`` and the synchronous helper, on the reference server."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest
from client_support import ENV, KEY, serve

from leasekit.cli import main
from leasekit.client import Lease, LeaseClient, hold_lease_sync, run_worker
from leasekit.policy import SdkPolicy
from leasekit.protocol import WorkItem, WorkState
from leasekit.trace import read_trace

pytestmark = pytest.mark.timeout(60)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_worker_serves_items_and_a_failing_handler_fails_only_its_item(
    anyio_backend: str,
) -> None:
    served: list[str] = []
    with serve(seed_work=3) as server:

        async def handler(item: WorkItem, lease: Lease) -> None:
            assert lease.held and lease.state is WorkState.ACTIVE
            if len(served) == 1:
                served.append(item.id)
                raise RuntimeError("this item is bad")
            served.append(item.id)
            await anyio.sleep(0.05)

        async with LeaseClient(server.url, KEY) as client:
            stats = await run_worker(
                client,
                ENV,
                handler,
                policy=SdkPolicy,
                worker_id="worker-a",
                rng=random.Random(7),
                max_items=3,
            )
            assert (stats.served, stats.failed, stats.lost) == (2, 1, 0)
            assert len(set(served)) == 3
            # every item was stopped afterwards, the failed one too
            for work_id in served:
                assert (await client.retrieve(ENV, work_id)).state is WorkState.STOPPED
            assert (await client.stats(ENV)).workers_polling == 1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_worker_leaves_an_item_whose_lease_was_lost(anyio_backend: str) -> None:
    with serve(seed_work=1) as server:

        async def handler(item: WorkItem, lease: Lease) -> None:
            # the lease's next heartbeat is lost on its way; the SDK policy
            # gives up, and the handler is cancelled
            server.queue("drop_request")
            await anyio.sleep_forever()

        async with LeaseClient(server.url, KEY) as client:
            stats = await run_worker(
                client, ENV, handler, policy=SdkPolicy, rng=random.Random(1), max_items=1
            )
            assert (stats.served, stats.failed, stats.lost) == (0, 0, 1)
            item = (await client.list(ENV)).data[0]
            assert item.state is not WorkState.STOPPED  # not stopped: not ours any more


def test_keep_holds_a_lease_and_writes_a_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "keep.jsonl"
    with serve(seed_work=1) as server:
        code = main(
            [
                "keep",
                server.url,
                "--env",
                ENV,
                "--key",
                KEY,
                "--policy",
                "sdk",
                "--duration",
                "2.5",
                "--trace",
                str(trace),
            ]
        )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "held work_" in out.out and "to the end" in out.out
    assert out.out.count(" ok ") >= 2
    assert KEY not in out.out + out.err + trace.read_text()
    frame = read_trace(trace).attempts
    assert len(frame) >= 2 and set(frame["outcome"]) == {"ok"}


def test_keep_exits_non_zero_with_the_end_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with serve(seed_work=1) as server:
        with anyio.from_thread.start_blocking_portal() as portal:
            item = portal.call(_ack_one, server.url)
        code = main(["keep", server.url, "--env", ENV, "--key", "not the key", "--work", item])
        assert code == 1
        assert "rejected" in capsys.readouterr().err
        code = main(["keep", server.url, "--env", ENV, "--key", KEY, "--policy", "nope"])
        assert code == 2
        assert "unknown policy 'nope'" in capsys.readouterr().err


async def _ack_one(url: str) -> str:
    async with LeaseClient(url, KEY) as client:
        item = await client.poll(ENV, block_ms=100)
        assert item is not None
        await client.ack(ENV, item.id)
        return item.id


def test_hold_lease_sync_for_scripts(tmp_path: Path) -> None:
    with serve(seed_work=1) as server:
        lease = hold_lease_sync(
            server.url,
            KEY,
            ENV,
            duration_s=1.5,
            policy="leasekit:ttl_seconds=3",
            seed=1,
            trace_path=tmp_path / "t.jsonl",
        )
    assert lease.end_reason is None and lease.attempts >= 1
    assert read_trace(tmp_path / "t.jsonl").header.desired_ttl_seconds == 3


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_hold_lease_sync_refuses_a_running_loop(anyio_backend: str) -> None:
    with pytest.raises(RuntimeError, match="await hold_for"):
        hold_lease_sync("http://127.0.0.1:9", KEY, ENV, duration_s=1)


def test_the_client_works_in_jupyter_with_top_level_await(tmp_path: Path) -> None:
    import nbclient
    import nbformat

    cells = [
        "from leasekit.lease import LeaseConfig\n"
        "from leasekit.server import create_app, running_server\n"
        "app = create_app(keys={'env_1': 'key_1'}, seed_work={'env_1': 1},\n"
        "                 config=LeaseConfig(default_ttl_seconds=2, min_ttl_seconds=1))\n"
        "serving = running_server(app)\n"
        "url = serving.__enter__()",
        "from leasekit.client import LeaseClient, hold_for, hold_lease_sync\n"
        "from leasekit.policy import SdkPolicy\n"
        "async with LeaseClient(url, 'key_1') as client:\n"
        "    lease = await hold_for(client, 'env_1', duration_s=1.5, policy=SdkPolicy())\n"
        "print('ended:', lease.end_reason, 'heartbeats:', lease.attempts)",
        "try:\n"
        "    hold_lease_sync(url, 'key_1', 'env_1', duration_s=1)\n"
        "except RuntimeError as error:\n"
        "    print('refused:', error)",
        "serving.__exit__(None, None, None)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3").execute()
    out = "".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert "ended: None heartbeats:" in out  # held to the end
    assert "refused: hold_lease_sync() cannot run inside a running asyncio event loop" in out


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_worker_follows_the_loop_rules_after_a_failed_poll(anyio_backend: str) -> None:
    # The failed poll goes through leasekit.loop.WorkerLoop (the rules the
    # simulator drives too): counted, backed off, polled again, item served.
    from leasekit.lease import LeaseConfig
    from leasekit.server import FaultConfig, create_app, running_server

    app = create_app(
        keys={ENV: KEY},
        config=LeaseConfig(default_ttl_seconds=2, min_ttl_seconds=1),
        faults=FaultConfig(all_calls=True),
        seed_work={ENV: 1},
    )
    app.state.faults.queue("error")  # the next call, the worker's first poll, fails
    with running_server(app) as url:

        async def handler(item: WorkItem, lease: Lease) -> None:
            assert lease.held

        async with LeaseClient(url, KEY) as client:
            stats = await run_worker(
                client, ENV, handler, policy=SdkPolicy, rng=random.Random(3), max_items=1
            )
    assert (stats.polls, stats.poll_errors, stats.served) == (2, 1, 1)
