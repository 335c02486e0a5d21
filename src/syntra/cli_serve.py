"""``syntra serve``: run the gRPC service (see :mod:`syntra.server.app`)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from syntra.errors import InvalidConfig


def add_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the gRPC service",
        description="Serve the syntra.v1 API (decisions, capsules, audit, admin) on gRPC, with health,"
        " reflection and a Prometheus ops port. Needs an admin key (SYNTRA_ADMIN_KEY or --admin-key-file)"
        " unless --dev-mode. Stops gracefully on SIGTERM or Ctrl-C: drains calls, flushes the WAL,"
        " checkpoints.",
    )
    parser.add_argument("--data", default="syntra-data", metavar="DIR",
                        help="the server's directory: its store and tokens (default ./syntra-data)")
    parser.add_argument("--listen", default="127.0.0.1:7443", metavar="HOST:PORT",
                        help="gRPC address (default 127.0.0.1:7443; port 0 picks a free one)")
    parser.add_argument("--ops-listen", default="127.0.0.1:9464", metavar="HOST:PORT",
                        help="ops HTTP address: /metrics, /healthz, /readyz (default 127.0.0.1:9464)")
    parser.add_argument("--no-ops", action="store_true", help="do not open the ops HTTP port")
    parser.add_argument("--admin-key-file", metavar="PATH",
                        help="file holding the admin key (default: the SYNTRA_ADMIN_KEY variable)")
    parser.add_argument("--dev-mode", action="store_true",
                        help="development: loopback only; without an admin key, make one and print it once")
    parser.add_argument("--rate", type=float, default=100_000.0,
                        help="decisions and feedback items per second per token (default 100000; 0: no limit)")
    parser.add_argument("--burst", type=float, default=200_000.0,
                        help="items a token may spend at once (default 200000)")
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync",
                        help="fsync (default) or none (tests and benchmarks only: acknowledged is not durable)")
    parser.add_argument("--commit-window-us", type=int, default=200,
                        help="group-commit window in microseconds (default 200)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="the TLS certificate's private key")
    parser.add_argument("--plaintext", action="store_true",
                        help="allow plaintext on a non-loopback address (behind a TLS-terminating proxy)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.set_defaults(run=run_serve, parser=parser)


def run_serve(args: argparse.Namespace) -> int:
    from syntra.server import jsonlog
    from syntra.server.app import (
        ServerConfig,
        admin_key_from,
        dev_admin_key,
        print_line,
        serve,
    )

    jsonlog.configure(level=args.log_level)
    admin_key = admin_key_from(args.admin_key_file)
    generated = args.dev_mode and admin_key is None
    if generated:
        admin_key = dev_admin_key()
    config = ServerConfig(
        data=Path(args.data), listen=args.listen, ops_listen=None if args.no_ops else args.ops_listen,
        admin_key=admin_key, dev_mode=args.dev_mode, rate=args.rate, burst=args.burst,
        durability=args.durability, commit_window_us=args.commit_window_us,
        tls_cert=args.tls_cert and Path(args.tls_cert), tls_key=args.tls_key and Path(args.tls_key),
        plaintext=args.plaintext)
    try:
        config.check()
    except InvalidConfig as error:
        args.parser.error(str(error))

    def announce(server) -> None:
        ops = f", ops http://{server.ops.host}:{server.ops.port}" if server.ops else ""
        host = config.listen.rpartition(":")[0]
        print_line(f"syntra serve: listening on {host}:{server.port}{ops}, data {config.data}")
        if generated:
            # Dev mode only, on the terminal only (never in the log): how to call this server.
            print_line(f"dev admin token (valid until this server stops): {admin_key}")

    # uvloop's event loop takes about a tenth off each call's server time (bench/grpc_load);
    # where it is not installed (Windows), asyncio's own serves the same.
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, announce=announce))
    else:
        uvloop.run(serve(config, announce=announce))
    return 0
