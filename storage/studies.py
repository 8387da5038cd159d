"""One function creates or loads a study; study settings live in its user attrs (the single source of truth)."""

from __future__ import annotations

from typing import Any

import optuna

from cifar_hpo.search.errors import ConfigError
from cifar_hpo.storage.urls import retry_on_disconnect


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    create_attrs: dict[str, Any] | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Load study ``name``; if it does not exist, create it with ``create_attrs`` as user attrs.

    ``create_attrs=None`` means the study must already exist (workers join, they never create).
    """
    if not name or not isinstance(name, str):
        raise ConfigError(f"study name must be a non-empty string, but got {name!r}")
    if study_exists(storage, name):
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if create_attrs is None:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        hint = f"; studies here: {', '.join(sorted(known)[:10])}" if known else "; create it with `hpo search` or `hpo launch`"
        raise ConfigError(f"study {name!r} does not exist in this storage{hint}")
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:  # another process created it a moment ago
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    for key, value in create_attrs.items():
        study.set_user_attr(key, value)
    return study


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDBStorage under a study, if any (Optuna wraps it in a private cache layer)."""
    storage = study._storage  # Optuna offers no public accessor
    storage = getattr(storage, "_backend", storage)
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def count_trials_by_state(study: optuna.Study, before: int | None = None) -> dict[optuna.trial.TrialState, int]:
    """Trials per state (only those numbered below ``before`` if given), as one COUNT query on RDB storages:
    workers check the budget before every trial, and loading every trial each time grows with the study."""
    counts = {state: 0 for state in optuna.trial.TrialState}
    storage = rdb_storage(study)
    if storage is not None:
        import sqlalchemy
        from optuna.storages._rdb.models import TrialModel  # Optuna's own schema, read through its own model

        query = (sqlalchemy.select(TrialModel.state, sqlalchemy.func.count())
                 .where(TrialModel.study_id == study._study_id).group_by(TrialModel.state))
        if before is not None:
            query = query.where(TrialModel.number < before)
        for state, count in _fetch_all(storage, query):
            counts[state] = count
        return counts
    for trial in study.get_trials(deepcopy=False):
        if before is None or trial.number < before:
            counts[trial.state] += 1
    return counts


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no completed trial yet
        return None


@retry_on_disconnect
def _fetch_all(storage: optuna.storages.RDBStorage, query: Any) -> list[Any]:
    with storage.engine.connect() as conn:
        return list(conn.execute(query))
