"""One function turns a storage URL into an Optuna storage, with settings that keep workers alive.

SQLite files open with WAL, a busy timeout and BEGIN IMMEDIATE (storage/sqlite_files.py); SQLite and PostgreSQL
get the service's RDBStorage (storage/resilient_rdb.py: retries after a dropped connection, one statement per
frequent call). Every RDB storage gets heartbeats, and stale trials (a killed worker) are failed and re-queued.
grpc://HOST:PORT: Optuna's storage proxy (storage/proxy.py), with a liveness attr in place of heartbeats.
"""

from __future__ import annotations

import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cifar_hpo.storage import proxy
from cifar_hpo.storage.errors import StorageError
from cifar_hpo.storage.faults import first_line
from cifar_hpo.storage.masking import mask_url
from cifar_hpo.storage.resilient_rdb import ResilientRDBStorage
from cifar_hpo.storage.sqlite_files import SqliteConnect

DEFAULT_URL = "sqlite:///hpo.db"
DEFAULT_HEARTBEAT_S = 30
MAX_RETRY_OF_STALE_TRIAL = 2
# A trial whose last heartbeat is older than 1.5 intervals is stale. Live trials beat every interval, so
# half an interval is left for a late beat; with the workers' check every quarter interval
# (search/worker.py) a killed worker's trial is failed within 1.75 intervals of the kill.
STALE_AFTER_INTERVALS = 1.5
MEMORY_URL = "memory://"


def is_memory(url: str) -> bool:
    return url in (MEMORY_URL, "memory", ":memory:")


def sqlite_path(url: str) -> Path | None:
    """The absolute database file of a sqlite URL (relative paths resolve against the working directory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser().resolve()


def normalize_url(url: str) -> str:
    """Resolve relative SQLite paths, so every process and message names the same file; check the URL."""
    if is_memory(url):
        return MEMORY_URL
    if proxy.is_proxy_url(url):
        return proxy.normalize_proxy_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: e.g. an unencoded ':' or '@' in the password
        raise StorageError(
            f"storage URL {mask_url(url)!r} is not a database URL; use sqlite:///hpo.db or "
            "postgresql://USER[:PASSWORD]@HOST:PORT/DB (percent-encode / : @ in a password, or set PGPASSWORD), "
            "or grpc://HOST:PORT (hpo storage-proxy)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise StorageError("an in-memory SQLite URL is not shared between processes; use memory:// or a file")
        if not path.parent.is_dir():
            raise StorageError(f"SQLite storage {mask_url(url)!r}: folder {str(path.parent)!r} does not exist")
        return f"sqlite:///{path}"
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed.render_as_string(hide_password=False)
    raise StorageError(f"storage URL {mask_url(url)!r}: unsupported database {backend!r}; use sqlite, postgresql or grpc")


def stale_grace_seconds(heartbeat_interval: int) -> float:
    """How old a trial's last heartbeat may be before the trial counts as dead (at least 1 s past a beat)."""
    return max(STALE_AFTER_INTERVALS * heartbeat_interval, heartbeat_interval + 1.0)


def make_storage(url: str = DEFAULT_URL, heartbeat_interval: int = DEFAULT_HEARTBEAT_S,
                 *, create: bool = True) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``url``; raises StorageError with one clear line when it cannot be opened.

    ``create=False`` refuses to create a new SQLite file (commands that only read or join a study).
    """
    if heartbeat_interval < 1:
        raise StorageError(f"heartbeat interval must be >= 1 s, but got heartbeat_interval={heartbeat_interval}")
    url = normalize_url(url)
    if url == MEMORY_URL:
        return optuna.storages.InMemoryStorage()
    with warnings.catch_warnings():  # heartbeats are stable enough; the caller's warning filters stay as they were
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY_OF_STALE_TRIAL)
    # Optuna types grace_period as int but only uses it in a timedelta, so 1.5 intervals is kept exact.
    common: dict[str, Any] = dict(heartbeat_interval=heartbeat_interval, grace_period=stale_grace_seconds(heartbeat_interval),
                                  heartbeat_stale_trial_callback=retry)
    if proxy.is_proxy_url(url):  # the proxy's own storage holds the database settings below
        return proxy.connect(url, **common)
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        raise StorageError(f"SQLite storage {str(path)!r} does not exist; check --storage")
    if path is not None:
        engine_kwargs: dict[str, Any] = {"creator": SqliteConnect(path)}
    else:
        engine_kwargs = {
            "pool_size": 2, "max_overflow": 4, "pool_recycle": 600,  # pinged when idle: _ping_idle_connections
            "connect_args": {"connect_timeout": 10},
        }
    try:
        storage = _open_rdb(url, engine_kwargs, common)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, sqlite3.Error) as err:
        raise StorageError(f"cannot open storage {mask_url(url)}: {first_line(err)}") from None
    except ImportError as err:
        raise StorageError(f"storage {mask_url(url)} needs a driver: {err}; pip install 'cifar-hpo[postgres]'") from None
    return storage


TRANSIENT_OPEN_ERRORS = ("terminating connection", "closed the connection", "consuming input failed")


def _open_rdb(url: str, engine_kwargs: dict[str, Any], common: dict[str, Any], attempts: int = 5) -> ResilientRDBStorage:
    """Open the storage; a connection the server drops while we open it is retried, while a refused
    connection, a failed login or a missing database fail at once (they are configuration errors)."""
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # RDBStorage warns that heartbeat_interval is experimental
                warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
                return ResilientRDBStorage(url, engine_kwargs=dict(engine_kwargs), **common)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
            transient = any(text in first_line(err) for text in TRANSIENT_OPEN_ERRORS)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")
