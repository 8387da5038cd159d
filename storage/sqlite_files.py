"""How the service opens a SQLite file: WAL journal (readers such as the dashboard never block writers), a 60 s
busy timeout, and ``BEGIN IMMEDIATE`` transactions: pysqlite's default deferred BEGIN upgrades a read lock to a
write lock mid-transaction, and SQLite answers that with an immediate "database is locked" that no timeout
waits out."""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from pathlib import Path

import sqlalchemy

_logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60


class SqliteConnect:
    """The engine's connection factory for one SQLite file: a class, not a closure, so the storage pickles
    (Optuna's storage contract) and the unpickled engine connects the same way."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False,
                               isolation_level=None)  # transactions begun explicitly, see begin_immediate
        _switch_to_wal(conn, self.path)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SqliteConnect) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


def begin_immediate(conn: sqlalchemy.engine.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _switch_to_wal(conn: sqlite3.Connection, path: Path) -> None:
    """Put the file in WAL mode (a no-op once it is). Switching a rollback-journal file, e.g. one plain
    Optuna created, upgrades a read lock to a write lock, so when several workers open it at the same
    instant some of them get an immediate "database is locked" that the busy timeout does not wait out;
    they retry until the first switch is done."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0.01, 0.05))  # jittered, so the retries do not collide again
    if mode.lower() != "wal":  # e.g. a file system without shared memory; it works, but readers block writers
        _logger.warning("SQLite file %s stays in %s journal mode (WAL unavailable here); prefer a local disk "
                        "or PostgreSQL for several workers", path, mode)

