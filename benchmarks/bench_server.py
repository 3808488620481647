"""Heartbeat throughput and latency of the reference server, against a trivial handler.

Each target is served the same way: one uvicorn worker in its own process on
a loopback ephemeral port, through ``leasekit.server.uvicorn_config`` (the
HTTP/1.1 protocol ``leasekit serve`` uses: request timeouts, connection cap),
no access log. The leasekit targets count every request against a
per-environment rate limit set too high to refuse any, so its cost is in the
figures. The
baseline is a trivial ASGI handler that answers every request with a fixed
heartbeat-shaped JSON body, measured in the same run. The load generator
(this process) keeps ``--connections`` keep-alive connections busy, one
claimed work item per connection, each echoing its last ``last_heartbeat``
exactly as a real client does, and records every request's latency.

    .venv/bin/python benchmarks/bench_server.py            # ~50 s
    .venv/bin/python benchmarks/bench_server.py --rounds 1 --seconds 3 --connections 4

Goals on a 2-core machine: memory >= 60% and SQLite >= 40% of the trivial
handler's heartbeats per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENV, KEY = "env_bench", "key_bench"
TARGETS = ("trivial", "memory", "sqlite")
TRIVIAL_BODY = (
    b'{"last_heartbeat":"2026-11-29T09:16:11.123456Z","lease_extended":true,'
    b'"state":"active","ttl_seconds":90,"type":"work_heartbeat"}'
)


# --------------------------------------------------------------------------- servers


async def trivial_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The baseline: the least an ASGI handler can do for a heartbeat."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(TRIVIAL_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": TRIVIAL_BODY})


def serve(kind: str, db: str | None) -> None:
    """Child process: serve one target on an ephemeral port, print the port."""
    import socket

    import uvicorn

    from leasekit.server import Limits, create_app, uvicorn_config

    if kind == "trivial":
        app: Any = trivial_app
    else:
        app = create_app(keys={ENV: KEY}, db_path=db, limits=Limits(requests_per_second=1e9))
    # IPPROTO_TCP so that asyncio sets TCP_NODELAY, as `leasekit serve` does
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn_config(app, log_level="warning", access_log=False, lifespan="auto")
    uvicorn.Server(config).run(sockets=[sock])


class Target:
    def __init__(self, kind: str, db: str | None = None) -> None:
        self.kind = kind
        command = [sys.executable, __file__, "--serve", kind]
        if db:
            command += ["--db", db]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


# --------------------------------------------------------------------------- load


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes = b""
) -> tuple[int, bytes]:
    writer.write(head + body)
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return int(status_line.split()[1]), await reader.readexactly(length)


def _head(method: str, path: str, port: int, length: int = 0) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-api-key: {KEY}\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


async def _connection(port: int, deadline: float, warmup_end: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    base = f"/v1/environments/{ENV}/work"
    status, body = await _request(reader, writer, _head("POST", base, port))
    work_id = json.loads(body).get("id", "work_x")  # the trivial handler has no ids
    echo = "NO_HEARTBEAT"
    errors = 0
    while True:
        path = f"{base}/{work_id}/heartbeat?expected_last_heartbeat={echo}"
        started = time.perf_counter()
        status, body = await _request(reader, writer, _head("POST", path, port))
        finished = time.perf_counter()
        if status != 200:
            errors += 1
        echo = json.loads(body)["last_heartbeat"]
        if finished >= warmup_end:
            latencies.append(finished - started)
        if finished >= deadline:
            break
    writer.close()
    return errors


async def _load(port: int, connections: int, seconds: float, warmup: float) -> dict[str, float]:
    start = time.perf_counter()
    warmup_end = start + warmup
    deadline = warmup_end + seconds
    latencies: list[float] = []
    errors = await asyncio.gather(
        *(_connection(port, deadline, warmup_end, latencies) for _ in range(connections))
    )
    measured = time.perf_counter() - warmup_end
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "rps": len(latencies) / measured,
        "p50_ms": cuts[49] * 1e3,
        "p99_ms": cuts[98] * 1e3,
        "errors": float(sum(errors)),
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per target, interleaved")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.db)
        return 0

    print(
        f"heartbeats on loopback, one uvicorn worker per target, {args.connections} "
        f"keep-alive connections; median of {args.rounds} interleaved runs of {args.seconds:g} s "
        f"(after {args.warmup:g} s warm-up); {os.cpu_count()} cores"
    )
    # Rounds interleave the targets so that a noisy neighbour on the machine
    # hits all of them alike; each figure is the median over rounds.
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):
            for kind in TARGETS:
                db = str(Path(tmp) / f"bench{round_number}.db") if kind == "sqlite" else None
                target = Target(kind, db)
                try:
                    runs[kind].append(
                        asyncio.run(_load(target.port, args.connections, args.seconds, args.warmup))
                    )
                finally:
                    target.close()
    results = {
        kind: {
            name: statistics.median(run[name] for run in figures)
            for name in ("rps", "p50_ms", "p99_ms")
        }
        | {"errors": sum(run["errors"] for run in figures)}
        for kind, figures in runs.items()
    }
    baseline = results["trivial"]["rps"]
    # A baseline that answered anything but 200 is no baseline: no ratio against it.
    baseline_ok = results["trivial"]["errors"] == 0 and baseline > 0
    goals = {"trivial": None, "memory": 0.60, "sqlite": 0.40}
    print(f"{'target':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>9}  goal")
    failed = False  # only on wrong answers: a missed goal is a finding, printed as such
    for kind, figures in results.items():
        goal = goals[kind]
        if baseline_ok and not figures["errors"]:
            ratio = figures["rps"] / baseline
            shown = f"{ratio:>9.0%}"
            verdict = "" if goal is None else f">= {goal:.0%} {'ok' if ratio >= goal else 'MISSED'}"
        else:
            shown, verdict = f"{'-':>9}", "" if goal is None else "no ratio: a run failed"
        print(
            f"{kind:<10}{figures['rps']:>10.0f}{figures['p50_ms']:>10.2f}"
            f"{figures['p99_ms']:>10.2f}{shown}  {verdict}"
        )
        if figures["errors"]:
            print(f"  {kind}: {figures['errors']:.0f} non-200 answers")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
