"""Soak: a fleet of well-behaved keepers and hostile traffic against one server.

One ``leasekit serve`` process on loopback (memory or SQLite), started as an
operator would (key file, default limits). In this process a fleet of
keepers (``--tenants`` environments x ``--keepers`` leases) heartbeats every
``--interval`` seconds on keep-alive connections, echoing ``last_heartbeat``
as a real client does. After a quiet phase, a second process adds hostile
traffic in hostile windows that alternate with quiet ones (``--rounds``):

* a heavy tenant (its queue seeded with ``--heavy-queue`` items) that floods
  creates, stats and 100-item list pages without ever honouring 429;
* bad input: lone surrogates, JSON nested 5,000 deep, wrong types, bytes
  that are not HTTP, wrong keys;
* ``--idle-sockets`` connections, opened in one burst, that never send a
  byte and some that send half a request, each re-opened as soon as the
  server closes it, all closed at once a second before the window ends (so
  that the teardown counts as hostile too).

Reported: the keepers' heartbeat latency p50/p99 in the quiet and in the
hostile windows (goal: hostile p99 within 2x of quiet), also per round and
for the first ``BURST_S`` of the hostile windows apart; how late a probe
process woke from 5 ms sleeps in each window (the machine's own noise); the
server's RSS at start and after each round, every answer by status class,
answers without the API's error envelope, and the size of the server's log.

    .venv/bin/python benchmarks/bench_soak.py                    # ~85 s
    .venv/bin/python benchmarks/bench_soak.py --store sqlite
    .venv/bin/python benchmarks/bench_soak.py --rounds 1 --quiet-seconds 5 --hostile-seconds 5

Loopback only; every loop ends at its phase's deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import errno
import itertools
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

GOOD_KEY = "soak-good-{}"
HEAVY_ENV, HEAVY_KEY = "env_heavy", "soak-heavy"
BAD_ENV, BAD_KEY = "env_bad", "soak-bad"
PROBE_SLEEP_S = 0.005
BURST_S = 0.25
"""The first part of a hostile window, reported apart: the attacker opens
its idle sockets and the heavy tenant spends its rate limit's burst then."""


# --------------------------------------------------------------------------- HTTP


class Closed(Exception):
    """The server closed the connection."""


async def request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    path: str,
    key: str,
    body: bytes = b"",
) -> tuple[int, bytes]:
    writer.write(
        (
            f"{method} {path} HTTP/1.1\r\nhost: soak\r\nx-api-key: {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    status_line = await reader.readline()
    if not status_line:
        raise Closed
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return int(status_line.split()[1]), await reader.readexactly(length)


def classify(status: int, body: bytes, tally: Counter[str]) -> None:
    """Count the answer by status class, and any error without the envelope."""
    tally[f"{status // 100}xx"] += 1
    if status >= 400:
        try:
            envelope = json.loads(body)
            ok = envelope["type"] == "error" and isinstance(envelope["error"]["message"], str)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            tally["no envelope"] += 1


# --------------------------------------------------------------------------- keepers


async def keeper(
    host: str,
    port: int,
    env: str,
    key: str,
    interval: float,
    phases: list[tuple[str, float]],
    samples: list[tuple[int, float, float]],
    tally: Counter[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    base = f"/v1/environments/{env}/work"
    status, body = await request(reader, writer, "POST", base, key)
    work_id = json.loads(body)["id"]
    echo = "NO_HEARTBEAT"
    await asyncio.sleep(random.random() * interval)  # spread the fleet over an interval
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    for window, (_, end) in enumerate(phases):
        while loop.time() < end:
            sent_at = loop.time()
            started = time.perf_counter()
            status, body = await request(
                reader,
                writer,
                "POST",
                f"{base}/{work_id}/heartbeat?expected_last_heartbeat={echo}",
                key,
            )
            samples.append((window, sent_at, time.perf_counter() - started))
            classify(status, body, tally)
            if status == 200:
                echo = json.loads(body)["last_heartbeat"]
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    writer.close()


# --------------------------------------------------------------------------- hostile traffic

BAD_BODIES = [
    b'{"metadata":{"k":"\\ud800"}}',
    b'{"data":{"type":"session","id":"\\udfff"}}',
    b"[" * 5000 + b"]" * 5000,
    b'{"metadata":' + b"{" * 3000 + b"}" * 3000 + b"}",
    b'{"metadata":{"k":7}}',
    b'{"metadata":{"k":"' + b"x" * 600 + b'"}}',
    b"{",
    b"\xff\xfe\x00\x00",
]


async def flood(host: str, port: int, end: float, tally: Counter[str], work: Any) -> None:
    """Send ``work(reader, writer)`` requests back to back until ``end``,
    re-opening the connection when the server closes it."""
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally["connect failed"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while loop.time() < end:
                status, body = await work(reader, writer)
                classify(status, body, tally)
        except (Closed, ConnectionError, asyncio.IncompleteReadError):
            tally["closed by server"] += 1
        finally:
            writer.close()


HALF_HEAD = b"POST /v1/environments/env_bad/work HTTP/1.1\r\nhost: soak\r\n"


async def idle(host: str, port: int, end: float, tally: Counter[str], count: int) -> None:
    """``count`` connections that send nothing (every fifth: half a request
    head), each re-opened as soon as the server closes it, all closed at ``end``.

    Raw non-blocking sockets rather than asyncio streams: an attacker opens
    its sockets with a few system calls each, from another machine. A
    thousand streams (a task, a reader and a writer each) would instead burn
    this shared machine's CPU in the hostile client, and the keepers'
    latency would measure that contention rather than the server.
    """
    loop = asyncio.get_running_loop()
    live: set[socket.socket] = set()

    def reopen_later(number: int) -> None:
        tally["connect failed"] += 1
        loop.call_later(0.5, open_one, number)

    def open_one(number: int) -> None:
        if loop.time() >= end:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex((host, port)) not in (0, errno.EINPROGRESS):
            sock.close()
            reopen_later(number)
            return
        live.add(sock)
        loop.add_writer(sock, connected, sock, number)

    def connected(sock: socket.socket, number: int) -> None:
        loop.remove_writer(sock)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            live.discard(sock)
            sock.close()
            reopen_later(number)
            return
        if number % 5 == 0:
            with contextlib.suppress(OSError):
                sock.send(HALF_HEAD)
        loop.add_reader(sock, readable, sock, number, [])

    def readable(sock: socket.socket, number: int, chunks: list[bytes]) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            chunks.append(data)
            return
        loop.remove_reader(sock)
        live.discard(sock)
        sock.close()
        answer = b"".join(chunks)
        if answer.startswith(b"HTTP/1.1 "):  # refused over the connection cap
            classify(int(answer.split()[1]), answer.partition(b"\r\n\r\n")[2], tally)
            tally["idle refused"] += 1
        else:
            tally["idle closed by server"] += 1
        open_one(number)

    for number in range(count):
        open_one(number)
    await asyncio.sleep(max(0.0, end - loop.time()))
    for sock in live:
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        sock.close()


async def hostile_windows(
    host: str, port: int, windows: list[tuple[float, float]], idle_sockets: int, kinds: set[str]
) -> Counter[str]:
    """Hostile traffic in each ``(start, end)`` window of wall-clock time."""
    tally: Counter[str] = Counter()
    for start, end in windows:
        await asyncio.sleep(max(0.0, start - time.time()))
        await hostile(host, port, end - time.time(), idle_sockets, kinds, tally)
    return tally


async def hostile(
    host: str, port: int, seconds: float, idle_sockets: int, kinds: set[str], tally: Counter[str]
) -> None:
    end = asyncio.get_running_loop().time() + seconds
    heavy = f"/v1/environments/{HEAVY_ENV}/work"
    bad = f"/v1/environments/{BAD_ENV}/work"
    bodies = itertools.cycle(BAD_BODIES)

    async def create(r: Any, w: Any) -> tuple[int, bytes]:
        return await request(r, w, "POST", heavy, HEAVY_KEY, b'{"metadata":{"k":"v"}}')

    async def stats(r: Any, w: Any) -> tuple[int, bytes]:
        return await request(r, w, "GET", f"{heavy}/stats", HEAVY_KEY)

    async def page(r: Any, w: Any) -> tuple[int, bytes]:
        return await request(r, w, "GET", f"{heavy}?limit=100", HEAVY_KEY)

    async def bad_body(r: Any, w: Any) -> tuple[int, bytes]:
        return await request(r, w, "POST", bad, BAD_KEY, next(bodies))

    async def wrong_key(r: Any, w: Any) -> tuple[int, bytes]:
        return await request(r, w, "GET", bad, "not-a-key")

    async def garbage(r: Any, w: Any) -> tuple[int, bytes]:
        w.write(b"\x16\x03\x01\x02\x00 NOT HTTP\r\n\r\n")
        data = await r.read()
        if not data:
            raise Closed
        tally["parser refused"] += 1
        return int(data.split()[1]), data.partition(b"\r\n\r\n")[2]

    tasks = []
    if "heavy" in kinds:
        tasks += [flood(host, port, end, tally, create) for _ in range(4)]
        tasks += [flood(host, port, end, tally, stats) for _ in range(2)]
        tasks += [flood(host, port, end, tally, page) for _ in range(2)]
    if kinds & {"bad", "bodies"}:
        tasks += [flood(host, port, end, tally, bad_body) for _ in range(2)]
    if kinds & {"bad", "keys"}:
        tasks.append(flood(host, port, end, tally, wrong_key))
    if kinds & {"bad", "garbage"}:
        tasks.append(flood(host, port, end, tally, garbage))
    if "idle" in kinds:
        tasks.append(idle(host, port, end, tally, idle_sockets))
    await asyncio.gather(*tasks)


# --------------------------------------------------------------------------- the run


def server_pids(pid: int) -> list[int]:
    """The server process and its children (the SQLite store's writer and reader)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(child) for child in children.read_text().split())]


def rss_mib(pid: int) -> float:
    """Resident memory of the server and its children, MiB."""
    total = 0.0
    for each in server_pids(pid):
        text = Path(f"/proc/{each}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", text)
        total += int(found.group(1)) / 1024 if found else float("nan")
    return total


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the server and its live children have used."""
    total = 0.0
    for each in server_pids(pid):
        fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    cuts = statistics.quantiles(values, n=100)
    return cuts[49] * 1e3, cuts[98] * 1e3


def window_of(phases: list[tuple[str, float]], at: float) -> int:
    """The index of the phase (window) that ``at`` (loop time) falls in."""
    return min(bisect.bisect_right([end for _, end in phases], at), len(phases) - 1)


def probe_run(until_wall: float) -> list[tuple[float, float]]:
    """Sleep :data:`PROBE_SLEEP_S` at a time until ``until_wall`` (wall
    clock); each wake-up's time and how late it came, s.

    A process that is neither the server nor a client: how late it wakes
    is the machine's own scheduling delay (other tenants of the VM, the
    hypervisor, and in hostile windows the load on the shared cores), the
    floor under every latency the keepers measure.
    """
    wakeups = []
    while (now := time.time()) < until_wall:
        started = time.perf_counter()
        time.sleep(PROBE_SLEEP_S)
        wakeups.append((now, time.perf_counter() - started - PROBE_SLEEP_S))
    return wakeups


async def fleet(args: argparse.Namespace, host: str, port: int, pid: int) -> dict[str, Any]:
    # Quiet and hostile windows alternate, so that the load of whatever else
    # runs on the machine falls on both alike. The hostile traffic stops
    # (closing its idle sockets at once) a little before its window ends, so
    # that what that teardown costs the server counts as hostile, not quiet.
    teardown = min(1.0, args.hostile_seconds / 5)
    loop = asyncio.get_running_loop()
    start = loop.time() + 2.0  # connections up, items created, hostile process started
    wall_offset = time.time() - loop.time()
    phases = [("warm-up", start)]
    windows = []
    at = start
    for _ in range(args.rounds):
        at += args.quiet_seconds
        phases.append(("quiet", at))
        windows.append((at + wall_offset, at + args.hostile_seconds - teardown + wall_offset))
        at += args.hostile_seconds
        phases.append(("hostile", at))
    samples: list[tuple[int, float, float]] = []
    """(window, when the heartbeat was sent (loop time), its latency s)"""
    durations = {"quiet": args.quiet_seconds, "hostile": args.hostile_seconds}
    tally: Counter[str] = Counter()
    keepers = [
        keeper(
            host,
            port,
            f"env_good_{t}",
            GOOD_KEY.format(t),
            args.interval,
            phases,
            samples,
            tally,
        )
        for t in range(args.tenants)
        for _ in range(args.keepers)
    ]
    memory: dict[str, float] = {}
    cpu: dict[str, float] = {"quiet": 0.0, "hostile": 0.0}

    async def watch() -> dict[str, Any]:
        command = [
            sys.executable,
            __file__,
            "--hostile-run",
            f"{host}:{port}",
            "--windows",
            ",".join(f"{a:.3f}:{b:.3f}" for a, b in windows),
            "--idle-sockets",
            str(args.idle_sockets),
            "--hostile",
            args.hostile,
        ]
        process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
        await asyncio.sleep(max(0.0, start - loop.time()))
        memory["start"] = rss_mib(pid)
        used = cpu_s(pid)
        for number, (name, end) in enumerate(phases[1:], 1):
            await asyncio.sleep(max(0.0, end - loop.time()))
            now_used = cpu_s(pid)
            cpu[name] = cpu.get(name, 0.0) + now_used - used
            used = now_used
            if name == "hostile":
                memory[f"after round {number // 2}"] = rss_mib(pid)
        out, _ = await process.communicate()
        report = json.loads(out)
        cpu["hostile client"] = report["cpu_s"]
        return dict(report["answers"])

    async def probe() -> list[tuple[int, float]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--probe-run",
            f"{phases[-1][1] + wall_offset:.3f}",
            stdout=subprocess.PIPE,
        )
        out, _ = await process.communicate()
        return [(window_of(phases, at - wall_offset), late) for at, late in json.loads(out)]

    results = await asyncio.gather(watch(), probe(), *keepers)
    return {
        "phases": phases,
        "samples": samples,
        "probe": results[1],
        "latencies": {
            name: [latency for window, _, latency in samples if phases[window][0] == name]
            for name in ("quiet", "hostile")
        },
        "keepers": tally,
        "hostile": results[0],
        "memory": memory,
        "cpu": {name: cpu[name] / (args.rounds * seconds) for name, seconds in durations.items()}
        | {"hostile client": cpu["hostile client"] / (args.rounds * args.hostile_seconds)},
    }


def print_windows(result: dict[str, Any], rounds: int) -> None:
    """Each round's windows apart, where in a hostile window the slow
    heartbeats were, and how late the machine probe woke: a quiet window
    whose probe woke late was not quiet, and its p99 says so."""
    phases, samples = result["phases"], result["samples"]
    by_window: dict[int, list[float]] = {}
    for window, _, latency in samples:
        by_window.setdefault(window, []).append(latency)
    probe: dict[int, list[float]] = {}
    for window, lateness in result["probe"]:
        probe.setdefault(window, []).append(lateness)
    print(
        f"{'round':<7}{'quiet p50':>10}{'p99':>8}{'hostile p50':>13}{'p99':>8}{'ratio':>8}"
        f"{'probe p99 quiet':>17}{'hostile':>9}   (ms; probe: how late a 5 ms sleep woke)"
    )
    ratios = []
    for number in range(1, rounds + 1):
        quiet_w, hostile_w = 2 * number - 1, 2 * number
        q50, q99 = quantiles(by_window.get(quiet_w, []))
        h50, h99 = quantiles(by_window.get(hostile_w, []))
        ratios.append(h99 / q99)
        pq = quantiles(probe.get(quiet_w, []))[1]
        ph = quantiles(probe.get(hostile_w, []))[1]
        print(
            f"{number:<7}{q50:>10.2f}{q99:>8.2f}{h50:>13.2f}{h99:>8.2f}{h99 / q99:>7.2f}x"
            f"{pq:>17.2f}{ph:>9.2f}"
        )
    print(f"median of the rounds' ratios: {statistics.median(ratios):.2f}x")
    starts = {
        index: phases[index - 1][1] for index, (name, _) in enumerate(phases) if name == "hostile"
    }
    early: list[float] = []
    late: list[float] = []
    for window, sent_at, latency in samples:
        if window in starts:
            (early if sent_at - starts[window] < BURST_S else late).append(latency)
    cut = statistics.quantiles(early + late, n=100)[98] if len(early + late) > 1 else 0.0
    e50, e99 = quantiles(early)
    l50, l99 = quantiles(late)
    print(
        f"hostile windows, first {BURST_S:g} s: {len(early)} heartbeats, p50 {e50:.2f} ms, "
        f"p99 {e99:.2f} ms; the rest: {len(late)}, p50 {l50:.2f} ms, p99 {l99:.2f} ms; "
        f"of the slowest 1%, {sum(x >= cut for x in early)} in the first {BURST_S:g} s "
        f"and {sum(x >= cut for x in late)} after"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--tenants", type=int, default=4, help="well-behaved environments")
    parser.add_argument("--keepers", type=int, default=25, help="leases per environment")
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, s")
    parser.add_argument("--quiet-seconds", type=float, default=10.0, help="per round")
    parser.add_argument("--hostile-seconds", type=float, default=10.0, help="per round")
    parser.add_argument("--rounds", type=int, default=4, help="quiet + hostile windows")
    parser.add_argument("--windows", help=argparse.SUPPRESS)
    parser.add_argument("--idle-sockets", type=int, default=1000)
    parser.add_argument("--heavy-queue", type=int, default=20_000)
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="the server's --rate: requests per second per environment (the keepers need "
        "tenants' keepers / interval)",
    )
    parser.add_argument(
        "--hostile",
        default="heavy,bad,idle",
        help="which hostile traffic: heavy (tenant flood), bad (= bodies, keys, garbage: "
        "bad input, wrong keys, non-HTTP bytes), idle (idle and half-sent sockets); "
        "comma-separated",
    )
    parser.add_argument("--hostile-run", help=argparse.SUPPRESS)
    parser.add_argument("--probe-run", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_run:
        print(json.dumps(probe_run(args.probe_run)))
        return 0
    if args.hostile_run:
        host, _, port = args.hostile_run.rpartition(":")
        kinds = set(args.hostile.split(","))
        windows = [
            (float(a), float(b)) for a, b in (pair.split(":") for pair in args.windows.split(","))
        ]
        tally = asyncio.run(hostile_windows(host, int(port), windows, args.idle_sockets, kinds))
        print(json.dumps({"answers": tally, "cpu_s": time.process_time()}))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "keys.txt"
        lines = [f"env_good_{t}={GOOD_KEY.format(t)}" for t in range(args.tenants)]
        lines += [f"{HEAVY_ENV}={HEAVY_KEY}", f"{BAD_ENV}={BAD_KEY}"]
        key_file.write_text("\n".join(lines) + "\n")
        log_path = Path(tmp) / "serve.log"
        command = [
            sys.executable,
            "-m",
            "leasekit.cli",
            "serve",
            "--port=0",
            f"--key-file={key_file}",
            f"--seed-work={HEAVY_ENV}:{args.heavy_queue}",
            "--log-level=warning",
            f"--rate={args.rate:g}",
            "--freeze-gc",  # the heavy tenant's seeded queue would stall full collections
        ]
        if args.store == "sqlite":
            command.append(f"--db={Path(tmp) / 'soak.db'}")
        with log_path.open("wb") as log:
            server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
            try:
                assert server.stdout is not None
                url = re.search(r"http://([\d.]+):(\d+)", server.stdout.readline())
                assert url is not None, "serve did not print its URL"
                host, port = url.group(1), int(url.group(2))
                result = asyncio.run(fleet(args, host, port, server.pid))
            finally:
                server.send_signal(2)
                server.wait(30)
        log_bytes = log_path.stat().st_size
        log_lines = len(log_path.read_text(errors="replace").splitlines())

    print(
        f"soak, {args.store} store: {args.tenants} tenants x {args.keepers} keepers every "
        f"{args.interval:g} s; {args.rounds} rounds of {args.quiet_seconds:g} s quiet, then "
        f"{args.hostile_seconds:g} s of {args.hostile} ({args.idle_sockets} idle sockets, heavy "
        "tenant with "
        f"{args.heavy_queue} queued); server --rate {args.rate:g}; {os.cpu_count()} cores, shared"
    )
    quiet = quantiles(result["latencies"]["quiet"])
    loud = quantiles(result["latencies"]["hostile"])
    print(f"{'phase':<10}{'heartbeats':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for name, (p50, p99) in (("quiet", quiet), ("hostile", loud)):
        print(f"{name:<10}{len(result['latencies'][name]):>12}{p50:>10.2f}{p99:>10.2f}")
    ratio = loud[1] / quiet[1]
    verdict = "ok" if ratio <= 2 else "MISSED"
    print(f"hostile p99 / quiet p99: {ratio:.2f}x  (goal <= 2x: {verdict})")
    print_windows(result, args.rounds)
    memory = result["memory"]
    print(
        "server RSS MiB (with its storage processes): "
        + ", ".join(f"{k} {v:.1f}" for k, v in memory.items())
    )
    print(
        "CPU, s per s: "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["cpu"].items())
        + " (the server and its storage processes in quiet and in hostile windows;"
        " the hostile client in its windows)"
    )
    for who in ("keepers", "hostile"):
        print(f"{who} answers: {dict(sorted(result[who].items()))}")
    print(f"server log: {log_lines} lines, {log_bytes} bytes")
    bad = result["keepers"].get("5xx", 0) + result["hostile"].get("5xx", 0)
    bad += result["keepers"].get("no envelope", 0) + result["hostile"].get("no envelope", 0)
    non_200_keepers = sum(v for k, v in result["keepers"].items() if k != "2xx")
    if bad or non_200_keepers:
        print(f"FAILED: {bad} 5xx or envelope-less answers, {non_200_keepers} keeper failures")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
