"""One function turns a storage URL into an Optuna storage, with settings that keep workers alive.

SQLite: WAL journal (readers such as the dashboard never block writers), a 60 s busy timeout, and
``BEGIN IMMEDIATE`` transactions: pysqlite's default deferred BEGIN upgrades a read lock to a write lock
mid-transaction, and SQLite answers that with an immediate "database is locked" that no timeout waits out.
PostgreSQL: a connection idle in the pool for over a second is pinged at checkout (one the server dropped is
replaced), a small pool, and retries of calls that failed on a dropped connection.
Every RDB storage gets heartbeats, and stale trials (a killed worker) are failed and re-queued.
grpc://HOST:PORT: Optuna's storage proxy (storage/proxy.py), with a liveness attr in place of heartbeats.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import re
import sqlite3
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cifar_hpo.storage import proxy, trial_reads, trial_writes
from cifar_hpo.storage.errors import StorageError

_logger = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///hpo.db"
DEFAULT_HEARTBEAT_S = 30
MAX_RETRY_OF_STALE_TRIAL = 2
# A trial whose last heartbeat is older than 1.5 intervals is stale. Live trials beat every interval, so
# half an interval is left for a late beat; with the workers' check every quarter interval
# (search/worker.py) a killed worker's trial is failed within 1.75 intervals of the kill.
STALE_AFTER_INTERVALS = 1.5
SQLITE_BUSY_TIMEOUT_S = 60
MEMORY_URL = "memory://"


# A query-string or libpq keyword that carries a password (postgresql://h/db?password=..., "password=...").
_PASSWORD_KEYS = ("password", "pass", "passwd", "pwd")
_LOOSE_USERINFO = re.compile(r"([a-z][\w+.-]*://[^:/@\s]*):\S*@", re.IGNORECASE)  # greedy: to the last @
_LOOSE_KEYWORD = re.compile(r"\b(" + "|".join(_PASSWORD_KEYS) + r")(\s*=\s*)('[^']*'|[^&\s]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with any password (user info or query string) replaced by ***, for every message, log line
    and report. Text that is not a URL SQLAlchemy parses cleanly is masked by pattern, more than needed
    rather than less: a password with an unencoded / or @ must not leak through a bad parse."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return _mask_loosely(str(url))
    if "@" in (parsed.host or "") or "@" in (parsed.database or "") or ("@" in url and not parsed.host):
        return _mask_loosely(url)  # an unencoded @ in the password: SQLAlchemy split it at the wrong @
    query = {key: ("***" if key.lower() in _PASSWORD_KEYS else value) for key, value in parsed.query.items()}
    masked = parsed.set(query=query).render_as_string(hide_password=True)
    return masked.replace("%2A%2A%2A", "***")  # the query's *** comes back percent-encoded


def _mask_loosely(text: str) -> str:
    return _LOOSE_KEYWORD.sub(r"\1\2***", _LOOSE_USERINFO.sub(r"\1:***@", text))


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


class SqliteConnect:
    """The engine's connection factory for one SQLite file: a class, not a closure, so the storage pickles
    (Optuna's storage contract) and the unpickled engine connects the same way."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False,
                               isolation_level=None)  # transactions begun explicitly, see _begin_immediate
        _switch_to_wal(conn, self.path)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SqliteConnect) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


def _begin_immediate(conn: sqlalchemy.engine.Connection) -> None:
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
    return _first_line(err)


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


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose idempotent calls are retried when the server dropped the connection.

    Creating a trial is not retried (a retry could create two); the worker loop handles that failure.
    On SQLite every transaction begins with BEGIN IMMEDIATE, also on the engine an unpickled copy builds.
    A worker tells it what it already knows (its study's id, its reaper's schedule), so that Optuna does
    not ask the database again on every call (benchmarks/storage_statements.py counts what that saves).
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._forget_process_state()
        super().__init__(url, **kwargs)
        self._prepare_engine()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)  # builds a new engine from url and engine_kwargs, without listeners
        self._forget_process_state()  # what one process's worker knew is not another's
        self._prepare_engine()

    def record_heartbeat(self, trial_id: int) -> None:
        """Retried like the idempotent calls; a storage fault (disk full, read-only) is logged, not raised:
        raised, it would end Optuna's heartbeat thread with a traceback, while the worker loop reports the
        same fault in one line (the silent trial is failed as stale later)."""
        try:
            _record_heartbeat(self, trial_id)
        except RETRYABLE as err:
            fault = storage_fault(err)
            if fault is None:
                raise
            _logger.warning("heartbeat of trial %d not recorded: %s", trial_id, fault)

    def remember_study_id(self, study_name: str, study_id: int | None) -> None:
        """Answer get_study_id_from_name for ``study_name`` from memory (None: from the database again).

        A worker knows its study's id, which never changes while the study exists; Optuna's HyperbandPruner
        looks it up by name on every suggest, report and tell (19 of a scripted trial's 60 transactions)."""
        if study_id is None:
            self._known_study_ids.pop(study_name, None)
        else:
            self._known_study_ids[study_name] = study_id

    def get_study_id_from_name(self, study_name: str) -> int:
        study_id = self._known_study_ids.get(study_name)
        return _get_study_id_from_name(self, study_name) if study_id is None else study_id

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """Store a reported value in one statement while the trial is RUNNING; otherwise (a finished or unknown
        trial) Optuna's own path raises the error it documents. Optuna reads the trial, reads the step's row
        and writes it: 3 statements per report, 10 a trial of 10 epochs (the worker's most frequent call)."""
        if not _insert_intermediate_value_if_running(self, trial_id, step, intermediate_value):
            _set_trial_intermediate_value(self, trial_id, step, intermediate_value)

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: optuna.distributions.BaseDistribution,
                         previous_distribution: optuna.distributions.BaseDistribution | None) -> None:
        """Store a suggested value in one statement while the trial is RUNNING, when Optuna's cache layer
        passes the study's earlier distribution of the parameter (every trial after a parameter's first);
        Optuna reads the trial, then writes (2 statements a parameter). Otherwise Optuna's own path, which
        also raises its documented errors for a finished or unknown trial."""
        if previous_distribution is not None:
            optuna.distributions.check_distribution_compatibility(previous_distribution, distribution)
            if _insert_param_if_running(self, trial_id, param_name, param_value_internal, distribution):
                return
        _set_trial_param(self, trial_id, param_name, param_value_internal, distribution, previous_distribution)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """Finish a RUNNING trial (tell) with its values in one statement on PostgreSQL, two in one transaction
        on SQLite (_finish_if_running); Optuna reads the trial and each value's row before writing (6 round
        trips). Other transitions (ask taking a WAITING trial) and a trial that is not RUNNING go Optuna's way,
        which raises its documented errors."""
        if state.is_finished() and _finish_if_running(self, trial_id, state, values):
            return True
        return _set_trial_state_values(self, trial_id, state, values)

    def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        """The trial in one statement (storage/trial_reads.py) instead of Optuna's 6; KeyError as in Optuna."""
        if _inside_optuna_session(self):
            return _optuna_get_trial(self, trial_id)
        trials, _ = _read_trials(self, trial_reads.one_trial_query(), {"trial_id": trial_id})
        if not trials:
            raise KeyError(_not_found_message())
        return trials[0]

    def _get_trials(self, study_id: int, states: Any, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[optuna.trial.FrozenTrial]:
        """A study's trials in one statement instead of Optuna's 7, chosen as Optuna chooses them (Optuna's
        cache layer calls this on every ask, for the trials that are new or were unfinished when last read)."""
        listed = {i for i in included_trial_ids if i <= trial_id_greater_than}
        if len(listed) > trial_reads.MAX_LISTED_TRIAL_IDS or _inside_optuna_session(self):
            return _optuna_get_trials(self, study_id, states, listed, trial_id_greater_than)
        query, values = trial_reads.study_trials_parameters(study_id, states, listed, trial_id_greater_than)
        trials, study_exists = _read_trials(self, query, values)
        if not study_exists:
            raise KeyError(_not_found_message())
        return trials

    def check_stale_trials_every(self, study_id: int, period: float | None) -> None:
        """Look for the study's stale trials at most every ``period`` seconds in this process (None: at every
        call). A worker's reaper thread checks on this schedule (next_stale_check_in), so Optuna's own check
        before each trial, which would repeat the reaper's, answers from it; the reaper keeps the bound on
        the time from a kill to FAIL."""
        if period is None:
            self._stale_check_periods.pop(study_id, None)
        else:
            self._stale_check_periods[study_id] = period

    def next_stale_check_in(self, study_id: int) -> float:
        """Seconds until the study's next stale check is due on the schedule (0: now)."""
        period = self._stale_check_periods.get(study_id, 0.0)
        return max(0.0, self._stale_checked_at.get(study_id, -math.inf) + period - time.monotonic())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self.next_stale_check_in(study_id) > 0:
            return []  # checked less than a period ago: trials stale since then are found when the next is due
        started = time.monotonic()
        stale = _stale_trial_ids_in_one_query(self, study_id)
        self._stale_checked_at[study_id] = started
        return stale

    def _forget_process_state(self) -> None:
        self._known_study_ids: dict[str, int] = {}
        self._stale_check_periods: dict[int, float] = {}
        self._stale_checked_at: dict[int, float] = {}

    def _prepare_engine(self) -> None:
        if self.engine.dialect.name == "sqlite" and not event.contains(self.engine, "begin", _begin_immediate):
            event.listen(self.engine, "begin", _begin_immediate)
        if self.engine.dialect.name == "postgresql":
            _ping_idle_connections(self.engine)

    _IDEMPOTENT = (
        "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
        "get_study_system_attrs", "get_all_studies", "get_all_trials", "get_n_trials",
        "get_best_trial", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
        "get_trial_param", "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs",
        "set_trial_param", "set_trial_user_attr", "set_trial_system_attr",
        "set_study_user_attr", "set_study_system_attr",
        "get_heartbeat_interval", "_get_best_trial_id",
    )


PING_AFTER_IDLE_S = 1.0
_IDLE_SINCE = "cifar_hpo_idle_since"  # key in a pooled connection's info: when it last went back to the pool


def _ping_idle_connections(engine: sqlalchemy.engine.Engine) -> None:
    """Ping a connection at checkout only when it sat in the pool for over PING_AFTER_IDLE_S; a dropped one is
    replaced (the pool retries on DisconnectionError, SQLAlchemy's documented custom pre-ping).

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: ~20 extra round trips a trial, most of them on a
    connection used milliseconds before (a trial's reports come in quick succession). A connection dropped
    within that second fails its next call once: idempotent calls are retried (retry_on_disconnect), and the
    worker loop waits out a failed ask or tell; SQLAlchemy then replaces every older connection of the pool.
    """
    dialect = engine.dialect  # its do_ping, as patched by a statement counter (storage/statements.py)

    def mark_idle(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get(_IDLE_SINCE, -math.inf) <= PING_AFTER_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as err:
            if dialect.is_disconnect(err, dbapi_connection, None):
                raise sqlalchemy.exc.DisconnectionError(f"connection dropped while idle: {_first_line(err)}") from err
            raise

    event.listen(engine.pool, "connect", mark_idle)  # a fresh connection is not pinged
    event.listen(engine.pool, "checkin", mark_idle)
    event.listen(engine.pool, "checkout", ping_if_idle)


@retry_on_disconnect
def _record_heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> None:
    """Set the trial's heartbeat to the database's time: one INSERT ... ON CONFLICT (trial) DO UPDATE.

    Optuna's RDBStorage.record_heartbeat reads the row, reads it again for update, reads the time and writes
    it (4 statements every heartbeat interval for every running trial).
    """
    with _one_statement(storage.engine) as connection:
        connection.execute(trial_writes.heartbeat_upsert(storage.engine.dialect.name), {"trial_id": trial_id})


@contextlib.contextmanager
def _one_statement(engine: sqlalchemy.engine.Engine) -> Iterator[sqlalchemy.engine.Connection]:
    """A connection for one statement that is complete in itself (an upsert, an INSERT ... SELECT).

    On PostgreSQL it runs in autocommit, so the statement is its own transaction: psycopg would otherwise send
    BEGIN before it and COMMIT after it, 3 round trips instead of 1. SQLite keeps its transaction: the
    storage's BEGIN IMMEDIATE (see _begin_immediate) is what takes its write lock up front.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            yield connection
    else:
        with engine.begin() as connection:
            yield connection


# Optuna's cache layer calls _get_trials (no public API reads only the new and the unfinished trials).
_optuna_get_trials = retry_on_disconnect(optuna.storages.RDBStorage._get_trials)
_optuna_get_trial = retry_on_disconnect(optuna.storages.RDBStorage.get_trial)


def _inside_optuna_session(storage: optuna.storages.RDBStorage) -> bool:
    """Whether this thread is inside one of Optuna's transactions, which reads a trial itself before raising
    UpdateFinishedTrialError: the read must then share its session (another connection would wait for the
    SQLite write lock it holds), so Optuna's own read is used."""
    registry = storage.scoped_session.registry
    return registry.has() and registry().in_transaction()


@retry_on_disconnect
def _read_trials(storage: optuna.storages.RDBStorage, query: Any,
                 values: dict[str, Any]) -> tuple[list[optuna.trial.FrozenTrial], bool]:
    """Run one of storage/trial_reads.py's reads: one statement, in autocommit on PostgreSQL."""
    with _one_statement(storage.engine) as connection:
        return trial_reads.frozen_trials(connection.execute(query, values))


def _not_found_message() -> str:
    return trial_reads.optuna_models().NOT_FOUND_MSG  # Optuna's message for an unknown study or trial


_get_study_id_from_name = retry_on_disconnect(optuna.storages.RDBStorage.get_study_id_from_name)
_set_trial_intermediate_value = retry_on_disconnect(optuna.storages.RDBStorage.set_trial_intermediate_value)
_set_trial_state_values = retry_on_disconnect(optuna.storages.RDBStorage.set_trial_state_values)
# Optuna's cache layer calls _set_trial_param (no public API takes the earlier distribution it passes).
_set_trial_param = retry_on_disconnect(optuna.storages.RDBStorage._set_trial_param)


@retry_on_disconnect
def _write_if_running(storage: optuna.storages.RDBStorage, statement: Any, values: dict[str, Any]) -> bool:
    """Run one of storage/trial_writes.py's INSERT ... SELECT statements. False: nothing written (the
    trial is not RUNNING or does not exist). A retry after a dropped connection is safe for the report's
    upsert; a suggestion written twice fails on the table's unique key, as in Optuna."""
    with _one_statement(storage.engine) as connection:
        return connection.execute(statement, values).rowcount > 0


def _insert_intermediate_value_if_running(storage: optuna.storages.RDBStorage, trial_id: int, step: int,
                                          value: float) -> bool:
    """The report, ON CONFLICT (trial, step) DO UPDATE: a rewrite of a step, as Optuna's own path allows."""
    from optuna.storages._rdb import models  # no public API converts a stored value (private table models)

    stored, value_type = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
    return _write_if_running(storage, trial_writes.intermediate_value_upsert(storage.engine.dialect.name),
                             {"trial_id": trial_id, "step": step, "value": stored, "value_type": value_type})


def _insert_param_if_running(storage: optuna.storages.RDBStorage, trial_id: int, name: str, value: float,
                             distribution: optuna.distributions.BaseDistribution) -> bool:
    return _write_if_running(storage, trial_writes.param_insert(),
                             {"trial_id": trial_id, "name": name, "value": value,
                              "distribution": optuna.distributions.distribution_to_json(distribution)})


@retry_on_disconnect
def _finish_if_running(storage: optuna.storages.RDBStorage, trial_id: int, state: TrialState,
                       values: Any) -> bool:
    """Set a RUNNING trial's finished state, completion time and values (as Optuna does, the time is this
    machine's local time). False: nothing written (the trial is not RUNNING or does not exist).

    PostgreSQL: one statement in autocommit, the UPDATE ... WHERE state = RUNNING as a CTE that the values are
    inserted FROM, so they are written only with the state. SQLite (no UPDATE in a CTE): the UPDATE, then the
    values, in one BEGIN IMMEDIATE transaction."""
    from optuna.storages._rdb import models  # no public API converts a stored value (private table models)

    binds: dict[str, Any] = {"finished_id": trial_id, "finished_state": state, "finished_at": datetime.now()}
    for objective, value in enumerate(values or ()):
        binds[f"value{objective}"], binds[f"type{objective}"] = models.TrialValueModel.value_to_stored_repr(value)
    dialect, count = storage.engine.dialect.name, len(values or ())
    if dialect == "postgresql":
        with _one_statement(storage.engine) as connection:
            result = connection.execute(trial_writes.finish_statement(dialect, count), binds)
            return (len(result.all()) if count else result.rowcount) > 0
    with storage.engine.begin() as connection:
        if connection.execute(trial_writes.finish_statement(dialect, 0), binds).rowcount == 0:
            return False
        if count:
            connection.execute(trial_writes.values_upsert(dialect), [
                {"trial_id": trial_id, "objective": i, "value": binds[f"value{i}"], "value_type": binds[f"type{i}"]}
                for i in range(count)])
    return True


# No public API queries stale trials: Optuna's fail_stale_trials calls this, and so does the scheduled override.
@retry_on_disconnect
def _stale_trial_ids_in_one_query(storage: optuna.storages.RDBStorage, study_id: int) -> list[int]:
    """The study's RUNNING trials whose heartbeat is older than the grace period, by the database's clock.

    What Optuna's RDBStorage._get_stale_trial_ids answers, in one SELECT (the database's time beside each
    running trial's heartbeat) instead of three (the time, the running trials, their heartbeats): every
    worker's reaper asks every quarter heartbeat interval, so this is most of a long trial's statements.
    Trials without a heartbeat row are skipped, as Optuna skips them.
    """
    # Optuna's table models are private (optuna.storages._rdb.models): no public API reads or writes these rows.
    from optuna.storages._rdb import models

    grace = storage.grace_period if storage.grace_period is not None else 2 * storage.heartbeat_interval
    query = (sqlalchemy.select(sqlalchemy.func.now(), models.TrialModel.trial_id, models.TrialHeartbeatModel.heartbeat)
             .join(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
             .where(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING))
    rows = read_rows(storage.engine, query)
    # naive datetimes on both sides, as Optuna compares them (PostgreSQL returns an aware now())
    return [trial_id for now, trial_id, beat in rows
            if now.replace(tzinfo=None) - beat.replace(tzinfo=None) > timedelta(seconds=grace)]
def read_rows(engine: sqlalchemy.engine.Engine, query: Any) -> list[Any]:
    """The rows of a read-only query, its transaction ended by COMMIT rather than the ROLLBACK of a plain
    ``connect()`` block: psycopg 3 forgets every statement the connection had prepared on a ROLLBACK, so each
    of Optuna's statements after it would run unprepared again (1 ROLLBACK a trial from the budget count
    cost the service ~40 unprepared statements a trial on PostgreSQL)."""
    with engine.connect() as connection:
        rows = connection.execute(query).all()
        connection.commit()
    return rows


for _name in ResilientRDBStorage._IDEMPOTENT:
    if hasattr(optuna.storages.RDBStorage, _name):
        setattr(ResilientRDBStorage, _name, retry_on_disconnect(getattr(optuna.storages.RDBStorage, _name)))


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
        raise StorageError(f"cannot open storage {mask_url(url)}: {_first_line(err)}") from None
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
            transient = any(text in _first_line(err) for text in TRANSIENT_OPEN_ERRORS)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")


def _first_line(err: BaseException) -> str:
    cause = getattr(err, "orig", None) or err.__cause__ or err
    text = str(cause).strip().splitlines()
    return mask_url(text[0] if text else type(cause).__name__)
