"""``leasekit serve``: run the reference lease server until Ctrl-C.

Prints the URL and the accepted environment ids and keys on standard output
(the operator needs them to connect); keys never go into the logs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import secrets
import socket
import sys
from typing import Any

from ..distributions import parse_delay
from ..lease import LeaseConfig

DEFAULT_ENVIRONMENT = "env_local"


def _key_pair(text: str) -> tuple[str, str]:
    environment_id, sep, key = text.partition("=")
    if not sep or not environment_id or not key:
        raise argparse.ArgumentTypeError(f"expected ENV_ID=KEY, got {text!r}")
    return environment_id, key


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
        description="Serve the work-lease API of PROTOCOL.md part A on HTTP. Ctrl-C stops it.",
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
        help="an environment and its API key; repeatable. Without it, one key is generated",
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
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..server import FaultConfig, create_app

    keys = dict(args.key) or {DEFAULT_ENVIRONMENT: "lk_" + secrets.token_urlsafe(24)}
    try:
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
        )
    except ValueError as error:
        print(f"leasekit serve: {error}", file=sys.stderr)
        return 2

    # Bind and listen before printing, so the printed URL already accepts connections.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only
    # then, and without it every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as error:
        print(f"leasekit serve: cannot bind {args.host}:{args.port}: {error}", file=sys.stderr)
        app.store.close()
        return 2
    sock.listen(2048)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    store = f"SQLite {args.db}" if args.db else "memory"
    print(f"leasekit server on http://{host}:{port} ({store}; Ctrl-C stops)")
    for environment_id, key in keys.items():
        print(f"  environment {environment_id}  key {key}")
    sys.stdout.flush()

    # uvicorn's default config sends the access log to stdout; keep stdout for
    # the banner and every log line on stderr, ours included.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    log_config["loggers"]["leasekit"] = {
        "handlers": ["default"],
        "level": args.log_level.upper(),
        "propagate": False,
    }

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.release_holds()  # held (dropped) requests must not delay the stop
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn.Config(
            app,
            log_config=log_config,
            log_level=args.log_level,
            access_log=args.access_log,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        server.run(sockets=[sock])
    return 0
