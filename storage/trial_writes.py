"""The one-statement writes of a trial's rows that replace Optuna's read-then-write ones, built once per
dialect (building a statement per call took half a report's time); storage/resilient_rdb.py runs them, with its
retries and, on PostgreSQL, in autocommit. All but the heartbeat check the trial is RUNNING in the statement
that writes, so a finished or unknown trial writes nothing and the caller falls back to Optuna's own path and
its errors:

- heartbeat_upsert: the trial's heartbeat set to the database's time (INSERT ... ON CONFLICT DO UPDATE);
- intermediate_value_upsert: a report, INSERT ... SELECT from the RUNNING trial's row, ON CONFLICT (trial, step);
- param_insert: a suggestion after the parameter's first, INSERT ... SELECT from the RUNNING trial's row;
- finish_statement: tell, UPDATE ... WHERE state = RUNNING (on PostgreSQL with the values inserted FROM it as
  a CTE); values_upsert: the values after that UPDATE on SQLite, which has no UPDATE in a CTE.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.dialects import postgresql as postgresql_dialect, sqlite as sqlite_dialect

from cifar_hpo.storage.trial_reads import optuna_models

DIALECT_INSERTS = {"postgresql": postgresql_dialect.insert, "sqlite": sqlite_dialect.insert}


@functools.cache
def heartbeat_upsert(dialect: str) -> Any:
    """The heartbeat statement (bind parameter trial_id)."""
    models = optuna_models()
    beats = models.TrialHeartbeatModel.__table__
    insert = DIALECT_INSERTS[dialect](beats).values(trial_id=sqlalchemy.bindparam("trial_id"),
                                                     heartbeat=sqlalchemy.func.now())
    return insert.on_conflict_do_update(index_elements=[beats.c.trial_id], set_={"heartbeat": sqlalchemy.func.now()})


def _from_running_trial(insert: Any, table: sqlalchemy.Table, columns: dict[str, str]) -> Any:
    """``insert`` (a dialect's or SQLAlchemy's INSERT into ``table``) of one row, FROM a SELECT of the trial's
    row WHERE it is RUNNING: the trial's state is checked in the same statement that writes. ``columns``:
    column -> bind parameter name; trial_id comes from the trial's row (bind parameter "trial_id")."""
    models = optuna_models()
    trials = models.TrialModel.__table__
    binds = [sqlalchemy.bindparam(name, type_=table.c[column].type) for column, name in columns.items()]
    source = (sqlalchemy.select(trials.c.trial_id, *binds)
              .where(trials.c.trial_id == sqlalchemy.bindparam("trial_id"), trials.c.state == TrialState.RUNNING))
    return insert.from_select(["trial_id", *columns], source)


@functools.cache
def intermediate_value_upsert(dialect: str) -> Any:
    """The report statement (bind parameters trial_id, step, value, value_type)."""
    models = optuna_models()
    values = models.TrialIntermediateValueModel.__table__
    columns = {"step": "step", "intermediate_value": "value", "intermediate_value_type": "value_type"}
    insert = _from_running_trial(DIALECT_INSERTS[dialect](values), values, columns)
    upsert = insert.on_conflict_do_update(
        index_elements=[values.c.trial_id, values.c.step],
        set_={"intermediate_value": insert.excluded.intermediate_value,
              "intermediate_value_type": insert.excluded.intermediate_value_type})
    return upsert.execution_options(preserve_rowcount=True)  # an INSERT's rowcount is kept only when asked for


@functools.cache
def param_insert() -> Any:
    """The suggest statement (bind parameters trial_id, name, value, distribution)."""
    models = optuna_models()
    params = models.TrialParamModel.__table__
    insert = _from_running_trial(sqlalchemy.insert(params), params,
                                 {"param_name": "name", "param_value": "value", "distribution_json": "distribution"})
    return insert.execution_options(preserve_rowcount=True)


@functools.cache
def finish_statement(dialect: str, objectives: int) -> Any:
    """The UPDATE of a RUNNING trial to a finished state; with ``objectives`` (PostgreSQL), the INSERT of that
    many values FROM it, RETURNING a row per value written."""
    models = optuna_models()
    trials, values = models.TrialModel.__table__, models.TrialValueModel.__table__
    update = (sqlalchemy.update(trials)
              .where(trials.c.trial_id == sqlalchemy.bindparam("finished_id"), trials.c.state == TrialState.RUNNING)
              .values(state=sqlalchemy.bindparam("finished_state", type_=trials.c.state.type),
                      datetime_complete=sqlalchemy.bindparam("finished_at", type_=trials.c.datetime_complete.type)))
    if not objectives:
        return update.execution_options(preserve_rowcount=True)
    finished = update.returning(trials.c.trial_id).cte("finished")
    rows = [sqlalchemy.select(  # typed: PostgreSQL would take a UNION of untyped parameters for text
        finished.c.trial_id, sqlalchemy.literal_column(str(i), sqlalchemy.Integer()),
        sqlalchemy.cast(sqlalchemy.bindparam(f"value{i}"), values.c.value.type),
        sqlalchemy.cast(sqlalchemy.bindparam(f"type{i}", type_=values.c.value_type.type), values.c.value_type.type))
        for i in range(objectives)]
    insert = DIALECT_INSERTS[dialect](values).from_select(
        ["trial_id", "objective", "value", "value_type"], rows[0] if objectives == 1 else sqlalchemy.union_all(*rows))
    return _upsert_values(insert, values).returning(values.c.trial_id)


@functools.cache
def values_upsert(dialect: str) -> Any:
    """A trial's value rows (executemany), a value already there replaced as Optuna replaces it."""
    models = optuna_models()
    values = models.TrialValueModel.__table__
    return _upsert_values(DIALECT_INSERTS[dialect](values), values)


def _upsert_values(insert: Any, values: sqlalchemy.Table) -> Any:
    return insert.on_conflict_do_update(index_elements=[values.c.trial_id, values.c.objective],
                                        set_={"value": insert.excluded.value, "value_type": insert.excluded.value_type})
