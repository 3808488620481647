"""Heartbeats over HTTPS: the reference server behind uvicorn with a certificate
from a CA made in the test (trustme); the client trusts that CA and nothing else."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from leasekit.client import LeaseClient
from leasekit.lease import LeaseConfig
from leasekit.protocol import NO_HEARTBEAT
from leasekit.server import create_app

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

ENV, KEY = "env_tls", "key_tls"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_url(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import uvicorn

    pem = Path(tmp_path_factory.mktemp("tls")) / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
    app = create_app(keys={ENV: KEY}, config=LeaseConfig(default_ttl_seconds=5), seed_work={ENV: 4})
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            ssl_certfile=str(pem),
            ssl_keyfile=str(pem),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"https://localhost:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


async def test_claim_and_renew_over_https_trusting_the_ca(ca: trustme.CA, https_url: str) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with LeaseClient(https_url, KEY, verify=context) as client:
        item = await client.poll(ENV)
        assert item is not None
        await client.ack(ENV, item.id)
        claimed = await client.heartbeat(ENV, item.id, NO_HEARTBEAT, desired_ttl_seconds=5)
        renewed = await client.heartbeat(ENV, item.id, claimed.last_heartbeat)
        await client.stop(ENV, item.id, force=True)
    assert claimed.lease_extended and renewed.lease_extended
    assert renewed.last_heartbeat > claimed.last_heartbeat
    assert renewed.state.value == "active"


async def test_an_untrusted_certificate_is_refused(https_url: str) -> None:
    # the default trust store (certifi) does not know the test CA
    async with LeaseClient(https_url, KEY) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.heartbeat(ENV, "work_x", NO_HEARTBEAT)
