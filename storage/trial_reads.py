"""Reading trials in one statement: the trial rows and their parameters, values, intermediate values and
attributes as one UNION ALL, instead of Optuna's one SELECT per table.

Optuna's RDBStorage reads a trial in 6 statements (the trial, then each of its 5 child tables) and a set of
trials in 7 (a study check, the trials, 5 child tables), each in its own transaction. A worker reads a trial
3 times per trial (ask's refresh of the study's unfinished trials, the new Trial, tell), so on PostgreSQL
that is ~25 of a trial's ~50 round trips; one statement, on a connection in autocommit, is 1 round trip per
read (benchmarks/storage_statements.py counts it). One statement also reads one snapshot on PostgreSQL, where
Optuna's statements each see their own.

Every row has the same 8 columns; ``kind`` says which table it came from and what the others hold:

    kind         number       name         value         text                start / complete
    trial        number       state        -             -                   datetime_start / _complete
    param        param_id     param_name   param_value   distribution_json   -
    value        objective    -            value         value_type          -
    intermediate step         -            value         value_type          -
    user/system  -            key          -             value_json          -
    study        (one row when the study exists, so a missing study is told from one without trials)
"""

from __future__ import annotations

import functools
import json
from typing import Any, Iterable

import sqlalchemy
from optuna.distributions import json_to_distribution
from optuna.trial import FrozenTrial, TrialState

TRIAL, PARAM, VALUE, INTERMEDIATE, USER_ATTR, SYSTEM_ATTR, STUDY = range(7)
# Beyond this many trial ids in one IN list (the cache layer's unfinished trials), Optuna's own reads are used:
# SQLite before 3.32 allows 999 bound variables in a statement.
MAX_LISTED_TRIAL_IDS = 900


def optuna_models() -> Any:
    """Optuna's table models (for the tables' columns and its stored-value conversions)."""
    # Optuna's table models are private (optuna.storages._rdb.models): no public API reads or writes these rows.
    from optuna.storages._rdb import models

    return models


def _union(belongs: Any, study_check: bool) -> Any:
    """The UNION ALL of the trials table and its 5 child tables, each member filtered by ``belongs(trial_id
    column)``; with ``study_check``, one more row that exists when the study (bind parameter study_id) does."""
    models = optuna_models()
    trials = models.TrialModel.__table__
    params = models.TrialParamModel.__table__
    values = models.TrialValueModel.__table__
    steps = models.TrialIntermediateValueModel.__table__
    user_attrs = models.TrialUserAttributeModel.__table__
    system_attrs = models.TrialSystemAttributeModel.__table__
    studies = models.StudyModel.__table__
    types = {"number": sqlalchemy.Integer(), "name": sqlalchemy.String(), "value": params.c.param_value.type,
             "text": sqlalchemy.Text(), "start": trials.c.datetime_start.type, "complete": trials.c.datetime_complete.type}

    def member(kind: int, trial_id: Any, where: Any, **columns: Any) -> Any:
        # Typed NULLs where a table has no such column: PostgreSQL needs one type per column of a UNION.
        cells = [sqlalchemy.literal_column(str(kind), sqlalchemy.Integer()).label("kind"), trial_id.label("trial_id")]
        for name, type_ in types.items():
            cell = columns.get(name)
            cells.append((sqlalchemy.cast(sqlalchemy.null(), type_) if cell is None else cell).label(name))
        return sqlalchemy.select(*cells).where(where)

    def as_text(column: Any) -> Any:  # an Enum column by its stored name, whatever the database's type for it
        return sqlalchemy.cast(column, sqlalchemy.String())

    members = [  # the trials first: the UNION's result columns take their types (datetimes parsed on SQLite)
        member(TRIAL, trials.c.trial_id, belongs(trials.c.trial_id), number=trials.c.number,
               name=as_text(trials.c.state), start=trials.c.datetime_start, complete=trials.c.datetime_complete),
        member(PARAM, params.c.trial_id, belongs(params.c.trial_id), number=params.c.param_id,
               name=params.c.param_name, value=params.c.param_value, text=params.c.distribution_json),
        member(VALUE, values.c.trial_id, belongs(values.c.trial_id), number=values.c.objective,
               value=values.c.value, text=as_text(values.c.value_type)),
        member(INTERMEDIATE, steps.c.trial_id, belongs(steps.c.trial_id), number=steps.c.step,
               value=steps.c.intermediate_value, text=as_text(steps.c.intermediate_value_type)),
        member(USER_ATTR, user_attrs.c.trial_id, belongs(user_attrs.c.trial_id), name=user_attrs.c.key,
               text=user_attrs.c.value_json),
        member(SYSTEM_ATTR, system_attrs.c.trial_id, belongs(system_attrs.c.trial_id), name=system_attrs.c.key,
               text=system_attrs.c.value_json),
    ]
    if study_check:
        members.append(member(STUDY, studies.c.study_id, studies.c.study_id == sqlalchemy.bindparam("study_id")))
    return sqlalchemy.union_all(*members)


@functools.cache
def one_trial_query() -> Any:
    """One trial by its id (bind parameter trial_id)."""
    return _union(lambda trial_id: trial_id == sqlalchemy.bindparam("trial_id"), study_check=False)


@functools.cache
def study_trials_query(by_state: bool, listed: bool, after: bool) -> Any:
    """A study's trials (bind parameter study_id), as Optuna's RDBStorage._get_trials chooses them: in
    ``states`` (by_state), and, when ``listed`` or ``after`` is set, those whose id is in ``trial_ids`` or
    greater than ``after_id``. The chosen ids are a CTE, so the id list is bound once, not per table."""
    trials = optuna_models().TrialModel.__table__
    chosen = sqlalchemy.select(trials.c.trial_id).where(trials.c.study_id == sqlalchemy.bindparam("study_id"))
    if by_state:
        chosen = chosen.where(trials.c.state.in_(sqlalchemy.bindparam("states", expanding=True)))
    wanted = []
    if listed:
        wanted.append(trials.c.trial_id.in_(sqlalchemy.bindparam("trial_ids", expanding=True)))
    if after:
        wanted.append(trials.c.trial_id > sqlalchemy.bindparam("after_id"))
    if wanted:
        chosen = chosen.where(sqlalchemy.or_(*wanted))
    ids = chosen.cte("chosen_trials")
    return _union(lambda trial_id: trial_id.in_(sqlalchemy.select(ids.c.trial_id)), study_check=True)


def study_trials_parameters(study_id: int, states: Iterable[TrialState] | None, trial_ids: set[int],
                            after_id: int) -> tuple[Any, dict[str, Any]]:
    """(query, bind values) for study_trials_query, from RDBStorage._get_trials's arguments."""
    listed, after = bool(trial_ids) and after_id > -1, after_id > -1
    values: dict[str, Any] = {"study_id": study_id}
    if states is not None:
        values["states"] = list(states)
    if listed:
        values["trial_ids"] = sorted(trial_ids)
    if after:
        values["after_id"] = after_id
    return study_trials_query(states is not None, listed, after), values


def frozen_trials(rows: Iterable[Any]) -> tuple[list[FrozenTrial], bool]:
    """(the trials the rows describe, by trial id, built as Optuna's RDBStorage builds them; whether the
    study row was among them)."""
    models = optuna_models()
    parts: dict[int, dict[str, Any]] = {}
    study_seen = False
    for kind, trial_id, number, name, value, text, start, complete in rows:
        if kind == STUDY:
            study_seen = True
            continue
        part = parts.setdefault(trial_id, {"params": [], "values": {}, "steps": {}, "user": {}, "system": {}})
        if kind == TRIAL:
            part["trial"] = (number, TrialState[name], start, complete)
        elif kind == PARAM:
            part["params"].append((number, name, value, text))
        elif kind == VALUE:
            part["values"][number] = models.TrialValueModel.stored_repr_to_value(
                value, models.TrialValueModel.TrialValueType[text])
        elif kind == INTERMEDIATE:
            part["steps"][number] = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                value, models.TrialIntermediateValueModel.TrialIntermediateValueType[text])
        elif kind == USER_ATTR:
            part["user"][name] = json.loads(text)
        else:
            part["system"][name] = json.loads(text)
    trials = []
    for trial_id in sorted(parts):
        part = parts[trial_id]
        number, state, start, complete = part["trial"]
        distributions = {name: json_to_distribution(text) for _, name, _, text in sorted(part["params"])}
        params = {name: distributions[name].to_external_repr(value) for _, name, value, _ in sorted(part["params"])}
        objectives = part["values"]
        trials.append(FrozenTrial(
            number=number, state=state, value=None,
            values=[objectives[i] for i in range(len(objectives))] if objectives else None,
            datetime_start=start, datetime_complete=complete, params=params, distributions=distributions,
            user_attrs=part["user"], system_attrs=part["system"], intermediate_values=part["steps"],
            trial_id=trial_id))
    return trials, study_seen
