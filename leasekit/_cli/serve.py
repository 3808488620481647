"""``leasekit serve``: run the reference lease server until Ctrl-C.

Prints the URL and the accepted environment ids on standard output, never a
key: keys come from a key file, the ``LEASEKIT_KEYS`` environment variable
or ``--key``, and a generated key goes to a file only its owner can read.
Keys never go into the logs either.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import secrets
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..distributions import parse_delay
from ..lease import LeaseConfig

if TYPE_CHECKING:
    from ..server import LeaseServerApp

DEFAULT_ENVIRONMENT = "env_local"
KEYS_VARIABLE = "LEASEKIT_KEYS"
DEFAULT_RATE = 1000.0
DEFAULT_MAX_QUEUED = 100_000


def _key_pair(text: str) -> tuple[str, str]:
    environment_id, sep, key = text.partition("=")
    if not sep or not environment_id or not key:
        raise argparse.ArgumentTypeError(f"expected ENV_ID=KEY, got {text!r}")
    return environment_id, key


def _read_key_file(path: str) -> list[tuple[str, str]]:
    """``ENV_ID=KEY`` lines; blank lines and ``#`` comments are skipped.
    Raises :class:`ValueError` naming the file and line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--key-file {path}: cannot read: {error}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            pairs.append(_key_pair(text))
        except argparse.ArgumentTypeError:
            # never echo the line: it holds a key
            raise ValueError(f"--key-file {path}, line {number}: expected ENV_ID=KEY") from None
    return pairs


def _keys_from_environment() -> list[tuple[str, str]]:
    """``LEASEKIT_KEYS``: ``ENV_ID=KEY`` pairs separated by commas or spaces."""
    text = os.environ.get(KEYS_VARIABLE, "")
    pairs = []
    for number, item in enumerate(text.replace(",", " ").split(), 1):
        try:
            pairs.append(_key_pair(item))
        except argparse.ArgumentTypeError:
            raise ValueError(f"{KEYS_VARIABLE}: entry {number}: expected ENV_ID=KEY") from None
    return pairs


def _positive_or_off(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 turns it off), got {text}")
    return value


def _seed_pair(text: str) -> tuple[str, int]:
    environment_id, sep, count = text.rpartition(":")
    if not sep or not environment_id or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected ENV_ID:N with N >= 0, got {text!r}")
    return environment_id, int(count)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability must be between 0 and 1, got {text}")
    return value


def _delay_spec(text: str) -> str:
    try:
        parse_delay(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the reference lease server (memory or SQLite, optional fault injection)",
        description="Serve the work-lease API (docs/protocol.md, docs/server.md) on HTTP. "
        "Ctrl-C stops it. Keys come from --key-file, the LEASEKIT_KEYS environment variable "
        "(ENV_ID=KEY pairs separated by commas) or --key; none is ever printed.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8787, help="port to bind; 0 picks a free one (default 8787)"
    )
    parser.add_argument(
        "--db", metavar="PATH", help="SQLite file (created if missing); memory when absent"
    )
    parser.add_argument("--ttl", type=int, default=90, help="default lease TTL, seconds (90)")
    parser.add_argument("--min-ttl", type=int, default=5, help="smallest TTL granted, seconds (5)")
    parser.add_argument(
        "--max-ttl", type=int, default=3600, help="largest TTL granted, seconds (3600)"
    )
    parser.add_argument(
        "--key",
        action="append",
        type=_key_pair,
        default=[],
        metavar="ENV_ID=KEY",
        help="an environment and its API key; repeatable (visible in the process list: "
        "prefer --key-file). Without any key, one is generated into a file only you can read",
    )
    parser.add_argument(
        "--key-file",
        metavar="PATH",
        help="a file of ENV_ID=KEY lines (# comments allowed)",
    )
    limits = parser.add_argument_group("limits (per environment; 0 turns one off)")
    limits.add_argument(
        "--rate",
        type=_positive_or_off,
        default=DEFAULT_RATE,
        metavar="N",
        help=f"requests per second per environment; above it 429 with Retry-After "
        f"(default {DEFAULT_RATE:g})",
    )
    limits.add_argument(
        "--burst",
        type=int,
        metavar="N",
        help="requests an environment may send at once above --rate (default: one second's worth)",
    )
    limits.add_argument(
        "--max-queued",
        type=int,
        default=DEFAULT_MAX_QUEUED,
        metavar="N",
        help=f"queued work items per environment; a create beyond it answers 429 "
        f"(default {DEFAULT_MAX_QUEUED})",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open connections; more are refused with 529 "
        "(default: below the open-files limit, ulimit -n)",
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close a connection that sends no complete request within S seconds (default 10)",
    )
    parser.add_argument(
        "--seed-work",
        action="append",
        type=_seed_pair,
        default=[],
        metavar="ENV_ID:N",
        help="create N queued work items in ENV_ID at start; repeatable",
    )
    faults = parser.add_argument_group(
        "fault injection (heartbeats only, unless --faults-on-all-calls)"
    )
    faults.add_argument(
        "--latency", type=_delay_spec, metavar="SPEC", help="added delay, e.g. exp:0.05, seconds"
    )
    faults.add_argument(
        "--drop-request",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability that a request is not processed and never answered",
    )
    faults.add_argument(
        "--drop-answer",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability that a request is processed and committed, but never answered",
    )
    faults.add_argument(
        "--error-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability of a 500 or 529 answer without processing",
    )
    faults.add_argument("--fault-seed", type=int, metavar="N", help="seed of the fault draws")
    faults.add_argument("--faults-on-all-calls", action="store_true", help="not only heartbeats")
    parser.add_argument("--access-log", action="store_true", help="log every request line")
    parser.add_argument(
        "--freeze-gc",
        action="store_true",
        help="after start-up, move every object made so far out of the garbage collector's "
        "reach (gc.freeze): shorter request stalls on a large seeded queue; changes the "
        "whole process",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..server import FaultConfig, Limits, create_app
    from ..server._connections import guarded_protocol

    generated_key_file: str | None = None
    try:
        pairs = [
            *(_read_key_file(args.key_file) if args.key_file else []),
            *_keys_from_environment(),
            *args.key,
        ]
        keys = dict(pairs)
        if len(keys) != len(pairs):
            raise ValueError("keys: an environment is given more than once")
        if not keys:
            keys = {DEFAULT_ENVIRONMENT: "lk_" + secrets.token_urlsafe(24)}
            fd, generated_key_file = tempfile.mkstemp(prefix="leasekit-keys-", suffix=".txt")
            with os.fdopen(fd, "w") as out:  # mkstemp: mode 0600
                out.write(f"{DEFAULT_ENVIRONMENT}={keys[DEFAULT_ENVIRONMENT]}\n")
        limits = Limits(
            requests_per_second=args.rate or None,
            burst=args.burst,
            max_queued=args.max_queued or None,
        )
        config = LeaseConfig(args.ttl, args.min_ttl, args.max_ttl)
        app = create_app(
            keys=keys,
            db_path=args.db,
            config=config,
            faults=FaultConfig(
                latency=args.latency,
                drop_request=args.drop_request,
                drop_answer=args.drop_answer,
                error_rate=args.error_rate,
                seed=args.fault_seed,
                all_calls=args.faults_on_all_calls,
            ),
            seed_work=dict(args.seed_work),
            limits=limits,
        )
        http_config: dict[str, Any] = {
            "max_connections": args.max_connections,
            "request_timeout_s": args.request_timeout,
        }
        guarded_protocol(**http_config)  # checks the values before anything binds
    except ValueError as error:
        print(f"leasekit serve: {error}", file=sys.stderr)
        if generated_key_file:
            os.unlink(generated_key_file)
        return 2
    try:
        return _serve(args, app, keys, generated_key_file, http_config)
    finally:
        if generated_key_file:
            with contextlib.suppress(OSError):
                os.unlink(generated_key_file)


def _serve(
    args: argparse.Namespace,
    app: LeaseServerApp,
    keys: dict[str, str],
    generated_key_file: str | None,
    http_config: dict[str, Any],
) -> int:
    import uvicorn

    from ..server import uvicorn_config
    from ..server._connections import LISTEN_BACKLOG, GuardedServer, listening_socket

    # Bind and listen before printing, so the printed URL already accepts connections.
    try:
        sock = listening_socket(args.host, args.port, LISTEN_BACKLOG)
    except OSError as error:
        print(f"leasekit serve: cannot bind {args.host}:{args.port}: {error}", file=sys.stderr)
        app.store.close()
        return 2
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if sock.family == socket.AF_INET6 else args.host
    store = f"SQLite {args.db}" if args.db else "memory"
    print(f"leasekit server on http://{host}:{port} ({store}; Ctrl-C stops)")
    for environment_id in keys:
        print(f"  environment {environment_id}")
    if generated_key_file:
        print(f"  its key is in {generated_key_file} (readable by you only; removed at exit)")
    sys.stdout.flush()

    # uvicorn's default config sends the access log to stdout; keep stdout for
    # the banner and every log line on stderr, ours included.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    # One line per kind of event per interval: a hostile client must not
    # be able to flood the log (the access log, when asked for, is complete).
    log_config.setdefault("filters", {})["throttle"] = {
        "()": "leasekit.server._connections.LogThrottle"
    }
    log_config["handlers"]["default"]["filters"] = ["throttle"]
    for name in ("leasekit", "asyncio"):
        log_config["loggers"][name] = {
            "handlers": ["default"],
            "level": args.log_level.upper(),
            "propagate": False,
        }

    class Server(GuardedServer):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.release_holds()  # held (dropped) requests must not delay the stop
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn_config(
            app,
            **http_config,
            log_config=log_config,
            log_level=args.log_level,
            access_log=args.access_log,
            lifespan="on",
            timeout_graceful_shutdown=5,
            backlog=LISTEN_BACKLOG,
        )
    )
    if args.freeze_gc:
        # Opted in: keep everything made at start-up (modules, seeded items) out
        # of the garbage collector's full passes, which otherwise stall every
        # request for tens of milliseconds. A process-wide change, so never by
        # default (``main(["serve", ...])`` may run inside a notebook).
        gc.collect()
        gc.freeze()
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        server.run(sockets=[sock])
    return 0
