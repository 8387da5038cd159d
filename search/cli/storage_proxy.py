"""`hpo storage-proxy`: Optuna's gRPC storage proxy in front of one database, for very many workers.

Every worker on a database holds its own connections and sends its own statements; the proxy holds a few
connections for all of them (storage/proxy.py), and the workers, hpo launch, hpo report and hpo dashboard
take ``--storage grpc://HOST:PORT``. It binds to 127.0.0.1 by default: the proxy has no authentication, so
anyone who reaches its port can read, change and delete every study in the database.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from cifar_hpo.search.cli.dashboard import is_loopback
from cifar_hpo.search.cli.search import default_storage
from cifar_hpo.search.errors import ConfigError, ExitCode
from cifar_hpo.storage.proxy import DEFAULT_HOST, DEFAULT_PORT, SCHEME, format_address, is_proxy_url
from cifar_hpo.storage.masking import mask_url
from cifar_hpo.storage.urls import is_memory


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "storage-proxy",
        help="serve a study database to many workers through Optuna's gRPC proxy (local only by default)",
        description="Serve the study database --storage through Optuna's gRPC storage proxy: workers (and hpo "
        "launch, report, dashboard) then pass --storage grpc://HOST:PORT, and the database sees the proxy's few "
        "connections instead of every worker's. The proxy has no authentication: it listens on "
        f"{DEFAULT_HOST} unless --host says otherwise; for workers on other machines forward the port "
        f"(ssh -L {DEFAULT_PORT}:127.0.0.1:{DEFAULT_PORT} HOST on each) or use a network only they reach. "
        "Ctrl-C or SIGTERM stops it; calls in flight finish first, and workers wait for it to come back.",
    )
    parser.add_argument("--storage", default=default_storage(), metavar="URL",
                        help="the database to serve: sqlite:///FILE or postgresql://USER[:PASSWORD]@HOST:PORT/DB "
                        "(default: $HPO_STORAGE, else sqlite:///hpo.db)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; anything else exposes every study in "
                        "the database to the network, without authentication)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.set_defaults(run=run)


def _is_loopback(host: str, port: int) -> bool:
    """Whether every address ``host`` stands for is this machine's loopback (start_server checked it resolves)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        return all(is_loopback(address) for address in addresses)
    except OSError:
        return False


def _public_url(host: str, port: int) -> str:
    """The URL workers pass: a wildcard address is named by this machine's host name."""
    return SCHEME + format_address(socket.gethostname() if host in ("0.0.0.0", "::", "") else host, port)


def run(args: argparse.Namespace) -> int:
    from cifar_hpo.search.runtime.interrupts import interrupt_once
    from cifar_hpo.storage import make_storage
    from cifar_hpo.storage.proxy import import_grpc, start_server

    if is_memory(args.storage):
        raise ConfigError("memory:// lives and dies with the proxy process, and every trial with it; "
                          "serve a sqlite:/// or postgresql:// database")
    if is_proxy_url(args.storage):
        raise ConfigError("--storage is the database the proxy serves, not another proxy; pass the "
                          "sqlite:/// or postgresql:// URL")
    import_grpc()  # grpcio missing: one line before the database is opened
    storage = make_storage(args.storage)
    server = start_server(storage, args.host, args.port)
    if not _is_loopback(args.host, server.port):
        print(f"hpo storage-proxy: warning: listening on {args.host}, reachable from other machines: the proxy has "
              f"no authentication, so anyone who connects can read, change and delete every study in "
              f"{mask_url(args.storage)}. Prefer the default {DEFAULT_HOST} and `ssh -L {DEFAULT_PORT}:127.0.0.1:"
              f"{DEFAULT_PORT} HOST` on each worker machine, or a network only your workers reach.", file=sys.stderr)
    print(f"storage proxy for {mask_url(args.storage)}: workers pass --storage {_public_url(args.host, server.port)}"
          "  (Ctrl-C stops it)", flush=True)
    interrupt_once()
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()  # calls in flight finish (their database writes with them); workers wait for a restart
        print("hpo storage-proxy: stopped", file=sys.stderr)
    return ExitCode.OK
