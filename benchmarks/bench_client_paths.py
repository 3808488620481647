"""CPU per heartbeat of candidate HTTP paths, against the official SDK's call.

One run, one ``leasekit serve`` in a subprocess on loopback. Each path renews
its own leases: one at a time (``--quiet`` leases x ``--rounds`` renewals),
then with ``--concurrency`` leases in flight at once (each lease renewing
``--rounds`` times back to back). CPU is ``time.process_time()`` of this
process (the client only); figures are the median of ``--repeat`` runs.

Paths: (a) the hand-rolled ``leasekit._wire`` client (deleted; measured only
if an older checkout still has it); (b) ``httpx.AsyncClient.post``;
(c) ``AsyncClient.send`` of a pre-built request (pre-encoded URL and
headers, ``json.loads`` on the content); (c2) the same request on
``httpx.AsyncHTTPTransport.handle_async_request`` (httpx's public transport
interface, no client); (d) ``httpcore.AsyncConnectionPool`` directly; (d3)
``httpcore.AsyncHTTPConnection`` objects on a LIFO list of idle connections,
the design :class:`~leasekit.client.LeaseClient` ships; (L) ``LeaseClient.heartbeat``
itself; (e) ``AsyncAnthropic(max_retries=0).beta.environments.work.heartbeat``,
the baseline. httpcore's pool scans every connection, with a socket
readability syscall for each idle one, on every request and every release,
so its cost grows with the number of connections: compare (d) and (d3) at
200 in flight.

    .venv/bin/python benchmarks/bench_client_paths.py          # ~1.5 min
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpcore
import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_client_leases import ENV, KEY, all_work_ids, start_server

from leasekit.client import LeaseClient
from leasekit.protocol import ANTHROPIC_BETA, ANTHROPIC_VERSION

Beat = Callable[[str, str], Awaitable[str]]
"""(work_id, expected_last_heartbeat) -> the answer's last_heartbeat."""

HEADERS = {
    "anthropic-version": ANTHROPIC_VERSION,
    "anthropic-beta": ANTHROPIC_BETA,
    "accept": "application/json",
    "authorization": f"Bearer {KEY}",
}


def _target(work_id: str, expected: str) -> str:
    return (
        f"/v1/environments/{ENV}/work/{quote(work_id, safe='')}/heartbeat"
        f"?expected_last_heartbeat={quote(expected, safe='')}"
    )


async def make_paths(url: str, pool_size: int) -> tuple[dict[str, Beat], list[Any]]:
    paths: dict[str, Beat] = {}
    closers: list[Any] = []
    limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)

    try:
        from leasekit._wire import HeartbeatWire
    except ImportError:
        pass
    else:
        wire = HeartbeatWire(url, HEADERS, pool_size)
        closers.append(wire.aclose)

        async def a_wire(work_id: str, expected: str) -> str:
            status, content = await wire.post(_target(work_id, expected))
            assert status == 200, status
            return str(json.loads(content)["last_heartbeat"])

        paths["(a) _wire.py"] = a_wire

    plain = httpx.AsyncClient(limits=limits, headers=HEADERS)
    closers.append(plain.aclose)

    async def b_post(work_id: str, expected: str) -> str:
        response = await plain.post(
            f"{url}/v1/environments/{ENV}/work/{quote(work_id, safe='')}/heartbeat",
            params={"expected_last_heartbeat": expected},
        )
        assert response.status_code == 200, response.status_code
        return str(response.json()["last_heartbeat"])

    paths["(b) httpx post"] = b_post

    sender = httpx.AsyncClient(limits=limits)
    closers.append(sender.aclose)
    prebuilt = httpx.Headers({**HEADERS, "content-length": "0"})

    async def c_send(work_id: str, expected: str) -> str:
        request = httpx.Request("POST", url + _target(work_id, expected), headers=prebuilt)
        response = await sender.send(request)
        assert response.status_code == 200, response.status_code
        return str(json.loads(response.content)["last_heartbeat"])

    paths["(c) httpx send"] = c_send

    transport = httpx.AsyncHTTPTransport(limits=limits)
    closers.append(transport.aclose)

    async def c2_transport(work_id: str, expected: str) -> str:
        request = httpx.Request("POST", url + _target(work_id, expected), headers=prebuilt)
        response = await transport.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        assert response.status_code == 200, response.status_code
        return str(json.loads(content)["last_heartbeat"])

    paths["(c2) httpx transport"] = c2_transport

    pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=pool_size,
        max_keepalive_connections=pool_size,
    )
    closers.append(pool.aclose)
    parts = httpx.URL(url)
    host_header = f"{parts.host}:{parts.port}".encode()
    raw_headers = [(b"host", host_header), (b"content-length", b"0")] + [
        (k.encode(), v.encode()) for k, v in HEADERS.items()
    ]
    scheme, host, port = parts.scheme.encode(), parts.host.encode(), parts.port

    async def d_httpcore(work_id: str, expected: str) -> str:
        target = _target(work_id, expected).encode()
        request = httpcore.Request(
            b"POST",
            httpcore.URL(scheme=scheme, host=host, port=port, target=target),
            headers=raw_headers,
        )
        response = await pool.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        assert response.status == 200, response.status
        return str(json.loads(content)["last_heartbeat"])

    paths["(d) httpcore pool"] = d_httpcore

    origin = httpcore.Origin(scheme, host, port)
    ctx = httpx.create_ssl_context()
    idle: list[httpcore.AsyncHTTPConnection] = []

    async def d3_connections(work_id: str, expected: str) -> str:
        target = _target(work_id, expected).encode()
        request = httpcore.Request(
            b"POST",
            httpcore.URL(scheme=scheme, host=host, port=port, target=target),
            headers=raw_headers,
        )
        while idle:
            conn = idle.pop()
            if conn.is_available() and not conn.has_expired():
                break
            await conn.aclose()
        else:
            conn = httpcore.AsyncHTTPConnection(origin, ssl_context=ctx, keepalive_expiry=4.0)
        response = await conn.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        if conn.is_idle():
            idle.append(conn)
        assert response.status == 200, response.status
        return str(json.loads(content)["last_heartbeat"])

    paths["(d3) httpcore conns"] = d3_connections

    shipped = LeaseClient(url, KEY, max_connections=pool_size)
    closers.append(shipped.aclose)

    async def l_shipped(work_id: str, expected: str) -> str:
        return (await shipped.heartbeat(ENV, work_id, expected)).last_heartbeat

    paths["(L) LeaseClient"] = l_shipped

    from anthropic import AsyncAnthropic

    sdk = AsyncAnthropic(base_url=url, api_key=KEY, max_retries=0)
    closers.append(sdk.close)
    work = sdk.beta.environments.work

    async def e_sdk(work_id: str, expected: str) -> str:
        answer = await work.heartbeat(work_id, environment_id=ENV, expected_last_heartbeat=expected)
        return str(answer.last_heartbeat)

    paths["(e) official SDK"] = e_sdk
    return paths, closers


async def claim(beat: Beat, work_ids: list[str]) -> dict[str, str]:
    return {w: await beat(w, "NO_HEARTBEAT") for w in work_ids}


async def one_at_a_time(beat: Beat, last: dict[str, str], rounds: int) -> float:
    gc.collect()
    cpu0 = time.process_time()
    for _ in range(rounds):
        for work_id in last:
            last[work_id] = await beat(work_id, last[work_id])
    return (time.process_time() - cpu0) / (rounds * len(last)) * 1e6


async def concurrent(beat: Beat, last: dict[str, str], rounds: int) -> float:
    async def renew(work_id: str) -> None:
        for _ in range(rounds):
            last[work_id] = await beat(work_id, last[work_id])

    gc.collect()
    cpu0 = time.process_time()
    await asyncio.gather(*(renew(w) for w in last))
    return (time.process_time() - cpu0) / (rounds * len(last)) * 1e6


async def main(args: argparse.Namespace) -> None:
    per_path = args.quiet + sum(args.concurrency)
    proc, url = start_server(8 * per_path + 10, 600)
    try:
        async with LeaseClient(url, KEY) as lister:
            ids = await all_work_ids(lister)
        paths, closers = await make_paths(url, max(args.concurrency))
        rows = []
        try:
            chunks = {name: ids[i * per_path : (i + 1) * per_path] for i, name in enumerate(paths)}
            leases = {}
            for name, beat in paths.items():
                chunk = chunks[name]
                groups = [chunk[: args.quiet]]
                start = args.quiet
                for count in args.concurrency:
                    groups.append(chunk[start : start + count])
                    start += count
                leases[name] = [await claim(beat, group) for group in groups]
                await one_at_a_time(beat, leases[name][0], 1)  # warm-up
            figures: dict[str, list[list[float]]] = {
                name: [[] for _ in range(1 + len(args.concurrency))] for name in paths
            }
            for _ in range(args.repeat):  # interleaved, so drifts in load hit every path
                for name, beat in paths.items():
                    runs = figures[name]
                    runs[0].append(await one_at_a_time(beat, leases[name][0], args.rounds))
                    for index in range(len(args.concurrency)):
                        group = leases[name][index + 1]
                        runs[index + 1].append(await concurrent(beat, group, args.rounds))
            for name in paths:
                rows.append((name, [statistics.median(runs) for runs in figures[name]]))
        finally:
            for close in closers:
                await close()
    finally:
        proc.terminate()
        proc.wait(30)
    sdk = rows[-1][1]
    print(
        f"CPU us per heartbeat (client process only), median of {args.repeat} runs; "
        f"one at a time: {args.quiet} leases x {args.rounds} renewals; concurrent: N leases "
        f"in flight x {args.rounds} renewals each"
    )
    heads = ["1 at a time"] + [f"{count} in flight" for count in args.concurrency]
    print(f"{'path':<22s}" + "".join(f" {head:>14s} {'x SDK':>6s}" for head in heads))
    for name, values in rows:
        cells = "".join(f" {v:>14.0f} {v / ref:>6.2f}" for v, ref in zip(values, sdk, strict=True))
        print(f"{name:<22s}{cells}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", type=int, default=50, help="leases renewed one at a time")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[20, 200], help="leases in flight at once"
    )
    parser.add_argument("--rounds", type=int, default=5, help="renewals per lease per run")
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
