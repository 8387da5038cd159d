"""The service's Optuna RDBStorage: calls retried when the server dropped the connection, and a trial's most
frequent calls (read, report, suggest, tell, heartbeat, stale check) in one statement each.

PostgreSQL: a connection idle in the pool for over a second is pinged at checkout (one the server dropped is
replaced), and the one-statement calls run in autocommit. SQLite: every transaction begins IMMEDIATE
(storage/sqlite_files.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from datetime import datetime, timedelta
from typing import Any, Iterator

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy import event

from cifar_hpo.storage import trial_reads, trial_writes
from cifar_hpo.storage.faults import RETRYABLE, first_line, retry_on_disconnect, storage_fault
from cifar_hpo.storage.sqlite_files import begin_immediate

_logger = logging.getLogger(__name__)

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
        if self.engine.dialect.name == "sqlite" and not event.contains(self.engine, "begin", begin_immediate):
            event.listen(self.engine, "begin", begin_immediate)
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
                raise sqlalchemy.exc.DisconnectionError(f"connection dropped while idle: {first_line(err)}") from err
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
    storage's BEGIN IMMEDIATE (see begin_immediate) is what takes its write lock up front.
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


