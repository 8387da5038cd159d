"""`hpo dashboard`: optuna-dashboard, in this process, on the storage the workers write to.

Why in-process rather than the `optuna-dashboard URL` command: the storage comes from storage.make_storage,
so the dashboard reads SQLite with the workers' settings (WAL, busy timeout, BEGIN IMMEDIATE) and
PostgreSQL with the same pool settings; a reader with pysqlite's defaults is what made live studies die
with "database is locked". It binds to 127.0.0.1 by default: the dashboard can rename and delete studies,
so it must not be reachable from the network (watch a remote study through `ssh -L`).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import socket
import sys
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from cifar_hpo.search.errors import ConfigError, ExitCode
from cifar_hpo.search.cli.search import STORAGE_HELP, default_storage
from cifar_hpo.storage.masking import mask_url
from cifar_hpo.storage.urls import is_memory

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

_logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="watch studies live in optuna-dashboard (local only by default)",
        description="Serve optuna-dashboard on a study storage while workers write to it. Listens on "
        f"{DEFAULT_HOST} unless --host says otherwise; to watch a study on a remote machine, run this there and forward the port: "
        f"ssh -L {DEFAULT_PORT}:127.0.0.1:{DEFAULT_PORT} HOST, then open http://127.0.0.1:{DEFAULT_PORT}/ here.",
    )
    parser.add_argument("--storage", default=default_storage(), metavar="URL", help=STORAGE_HELP)
    parser.add_argument("--study", metavar="NAME", help="also print the direct link to this study's page")
    parser.add_argument("--artifacts", metavar="DIR",
                        help="also serve the trial models in this artifact store (each study's own store, stored "
                        "in it or beside its SQLite file, is served anyway)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; anything else exposes every study "
                        "in the storage to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.set_defaults(run=run_dashboard)


class _QuietHandler(WSGIRequestHandler):
    """wsgiref logs every request to stderr; the dashboard polls, so that would flood the terminal."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (wsgiref's signature)
        _logger.debug("%s " + format, self.address_string(), *args)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request: a slow study page does not hold up the next poll."""

    daemon_threads = True


def bind_server(host: str, port: int, app: Any) -> WSGIServer:
    """A WSGI server listening on host:port; a port in use or a bad host is a ConfigError (checked by binding)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, but got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise ConfigError(f"--host {host!r} is not an address of this machine: {err.strerror}") from None
    server_class = type("DashboardServer", (_ThreadingServer,), {"address_family": family})
    try:
        server = server_class((host, port), _QuietHandler)
    except OSError as err:
        hint = "; stop the other server or pass another --port" if err.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}{hint}") from None
    server.set_app(app)
    return server


def is_loopback(address: str) -> bool:
    """Whether an IP address (IPv6 zone allowed) is this machine's loopback; anything else is reachable."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def dashboard_url(server: WSGIServer, path: str = "/dashboard") -> str:
    address, port = server.server_address[:2]
    if address in ("0.0.0.0", "::"):
        address = socket.gethostname()
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}{path}"


def _study_path(storage: Any, study: str | None) -> str:
    if study is None:
        return "/dashboard"
    from cifar_hpo.storage import open_study

    open_study(storage, study)  # a missing study is one clear error here, not a blank page later
    return f"/dashboard/studies/{storage.get_study_id_from_name(study)}"


def run_dashboard(args: argparse.Namespace) -> int:
    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError("optuna-dashboard is not installed; pip install 'cifar-hpo[dashboard]'") from None
    from cifar_hpo.search.runtime.interrupts import interrupt_once
    from cifar_hpo.storage import make_storage

    if is_memory(args.storage):
        raise ConfigError("memory:// storage lives inside one process and cannot be watched; "
                          "pass the sqlite:/// or postgresql:// URL the workers use")
    from cifar_hpo.storage.artifacts import storage_artifact_store

    storage = make_storage(args.storage, create=False)
    path = _study_path(storage, args.study)
    # The trials' kept models, downloadable from each trial's page (folders of studies created later: restart).
    store = storage_artifact_store(storage, args.storage, args.artifacts)
    server = bind_server(args.host, args.port, optuna_dashboard.wsgi(storage, artifact_store=store))
    if not is_loopback(server.server_address[0]):
        print(f"hpo dashboard: warning: listening on {server.server_address[0]}, reachable from other machines: "
              "anyone who connects can read, rename and delete every study here. Prefer the default "
              f"{DEFAULT_HOST} and `ssh -L {DEFAULT_PORT}:127.0.0.1:{DEFAULT_PORT} HOST`.", file=sys.stderr)
    print(f"optuna-dashboard on {mask_url(args.storage)}: open {dashboard_url(server, path)}  (Ctrl-C stops it)",
          flush=True)
    interrupt_once()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        print("hpo dashboard: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return ExitCode.OK
