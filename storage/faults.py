"""What a database error means: a dropped connection (retry it on a fresh one) or a fault no retry cures (one
line saying what is wrong and what to do), and the retry itself."""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from typing import Any, Callable

import optuna
import sqlalchemy

from cifar_hpo.storage.masking import mask_url

_logger = logging.getLogger(__name__)

# PostgreSQL SQLSTATEs of a connection that is gone: class 08 (connection exception) and the server's
# admin_shutdown, crash_shutdown and cannot_connect_now.
_DISCONNECT_SQLSTATES = ("57P01", "57P02", "57P03")
# SQLAlchemy's "Can't reconnect until invalid transaction is rolled back": the connection died mid-transaction.
_INVALID_TRANSACTION_CODE = "8s2b"


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and what it wraps: explicit and implicit causes, and the DBAPI error under SQLAlchemy's."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        cause = todo.pop(0)
        if cause is None or any(cause is known for known in seen):
            continue
        seen.append(cause)
        todo += [getattr(cause, "orig", None), cause.__cause__, cause.__context__]
    return seen


def _sqlstate(err: BaseException) -> str | None:
    """psycopg's SQLSTATE of a server error (None for sqlite3 and for client-side failures)."""
    sqlstate = getattr(err, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) else None


def _is_disconnect(err: BaseException) -> bool:
    """A lost or invalidated connection (worth a retry on a fresh one), not a bad query, a full disk,
    a read-only file or any other error that the same call would hit again."""
    for cause in _causes(err):
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return True  # SQLAlchemy's dialect judged it a disconnect (server gone, connection reset, ...)
        if isinstance(cause, sqlalchemy.exc.PendingRollbackError) and cause.code == _INVALID_TRANSACTION_CODE:
            return True
        sqlstate = _sqlstate(cause)
        if sqlstate is not None and (sqlstate.startswith("08") or sqlstate in _DISCONNECT_SQLSTATES):
            return True
    return False


# (SQLite result code, PostgreSQL SQLSTATE, what went wrong, what to do) of faults that no retry cures.
_FAULTS: tuple[tuple[tuple[str, ...], tuple[str, ...], str, str], ...] = (
    (("SQLITE_FULL",), ("53100",), "the disk is full", "free disk space, then run the same command to resume"),
    (("SQLITE_READONLY",), ("25006",), "the database is read-only",
     "make the database file and its folder writable (or use another --storage), then resume"),
    (("SQLITE_PERM", "SQLITE_AUTH", "SQLITE_CANTOPEN"), ("42501",), "permission denied",
     "give this user write access to the database, then resume"),
    (("SQLITE_CORRUPT", "SQLITE_NOTADB"), ("XX001", "XX002"), "the database file is damaged",
     "restore it from a backup or use another --storage"),
    (("SQLITE_IOERR",), ("58030",), "the disk failed to read or write", "check the disk, then resume"),
    ((), ("42P01", "42703", "42704"), "the tables are not Optuna's schema",
     "point --storage at an hpo/Optuna database, or run `optuna storage upgrade` on it"),
)
_SQLITE_SCHEMA_ERRORS = ("no such table", "no such column", "has no column named")


def storage_fault(err: BaseException) -> str | None:
    """What is wrong, in one line, when ``err`` comes from a storage fault that retrying cannot fix (disk
    full, read-only, permission denied, damaged file, foreign schema); None for anything else."""
    for cause in _causes(err):
        name = getattr(cause, "sqlite_errorname", None) if isinstance(cause, sqlite3.Error) else None
        if name is not None:
            name = "_".join(name.split("_")[:2])  # extended codes: SQLITE_IOERR_WRITE -> SQLITE_IOERR
        sqlstate = _sqlstate(cause)
        for names, sqlstates, what, todo in _FAULTS:
            if (name is not None and name in names) or (sqlstate is not None and sqlstate in sqlstates):
                return f"{what} ({database_message(cause)}); {todo}"
        if isinstance(cause, sqlite3.OperationalError) and any(t in str(cause) for t in _SQLITE_SCHEMA_ERRORS):
            return f"the tables are not Optuna's schema ({database_message(cause)}); point --storage at an " \
                   "hpo/Optuna database"
    return None


def database_message(err: BaseException) -> str:
    """The database's own first line about ``err`` (not Optuna's generic "... e.g. exceeding max length")."""
    for cause in _causes(err):
        if _is_dbapi_error(cause):
            lines = str(cause).strip().splitlines()
            return mask_url(lines[0] if lines else type(cause).__name__)
    return first_line(err)


def _is_dbapi_error(err: BaseException) -> bool:
    """A driver's own error (sqlite3's or psycopg's), the innermost layer of a storage failure."""
    return isinstance(err, sqlite3.Error) or type(err).__module__.startswith("psycopg")


RETRYABLE = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.DBAPIError, sqlalchemy.exc.PendingRollbackError)


def retry_on_disconnect(method: Callable[..., Any], attempts: int = 5) -> Callable[..., Any]:
    """Retry ``method(storage, ...)`` on a fresh session when the server dropped the connection; any other
    error (a full disk, a read-only file) is raised at once, since the same call would fail again."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(attempts):
            try:
                return method(*args, **kwargs)
            except RETRYABLE as err:
                if attempt == attempts - 1 or not _is_disconnect(err):
                    raise
                _logger.warning("storage connection lost (%s); retrying", type(err.__cause__ or err).__name__)
                storage = args[0] if args else None
                if isinstance(storage, optuna.storages.RDBStorage):
                    storage.remove_session()  # drop the thread's session bound to the dead connection
                time.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")

    return call



def first_line(err: BaseException) -> str:
    cause = getattr(err, "orig", None) or err.__cause__ or err
    text = str(cause).strip().splitlines()
    return mask_url(text[0] if text else type(cause).__name__)
