"""Counting a study's trials by state: one type, TrialCounts, for the worker's budget checks, the progress
display and the reports. Finished means COMPLETE or PRUNED (what a study's --n-trials budget counts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifar_hpo.storage.faults import retry_on_disconnect
from cifar_hpo.storage.resilient_rdb import read_rows

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    infeasible: int = 0  # pruned because the configuration could not be built (counted in pruned too); 0 when unknown
    best: float | None = None  # the study's best objective value, when asked for and one exists

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @property
    def total(self) -> int:
        return self.complete + self.pruned + self.failed + self.running + self.waiting


def count_study_trials(study: optuna.Study, *, before: int | None = None, with_best: bool = False) -> TrialCounts:
    """Trials per state (only those numbered below ``before`` if given). On RDB storages one COUNT query:
    workers check the budget before every trial, and loading every trial each time grows with the study."""
    by_state = _count_by_state(study, before)
    best = study_best_value(study) if with_best and by_state[TrialState.COMPLETE] else None
    return TrialCounts(by_state[TrialState.COMPLETE], by_state[TrialState.PRUNED], by_state[TrialState.FAIL],
                       by_state[TrialState.RUNNING], by_state[TrialState.WAITING], best=best)


def count_frozen_trials(trials: Iterable[FrozenTrial]) -> TrialCounts:
    """The same counts from trials already loaded (reports), with the infeasible ones told apart."""
    states = {state: 0 for state in TrialState}
    infeasible = 0
    for trial in trials:
        states[trial.state] += 1
        infeasible += trial.state == TrialState.PRUNED and "infeasible" in trial.user_attrs
    return TrialCounts(states[TrialState.COMPLETE], states[TrialState.PRUNED], states[TrialState.FAIL],
                       states[TrialState.RUNNING], states[TrialState.WAITING], infeasible=infeasible)


def study_best_value(study: optuna.Study) -> float | None:
    """The study's best objective value, or None before its first completed trial."""
    try:
        return study.best_value
    except ValueError:
        return None


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDBStorage under a study, if any (Optuna wraps it in a private cache layer)."""
    storage = study._storage  # no public accessor for a study's storage in Optuna
    storage = getattr(storage, "_backend", storage)  # no public API unwraps the cache layer either
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def _count_by_state(study: optuna.Study, before: int | None) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    storage = rdb_storage(study)
    if storage is None:
        for trial in study.get_trials(deepcopy=False):
            if before is None or trial.number < before:
                counts[trial.state] += 1
        return counts
    import sqlalchemy
    # No public API counts trials without loading them (BaseStorage.get_n_trials loads every trial), so the
    # query reads Optuna's own schema through Optuna's own model.
    from optuna.storages._rdb.models import TrialModel

    study_id = study._study_id  # no public accessor; get_study_id_from_name would cost a query per count
    query = (sqlalchemy.select(TrialModel.state, sqlalchemy.func.count())
             .where(TrialModel.study_id == study_id).group_by(TrialModel.state))
    if before is not None:
        query = query.where(TrialModel.number < before)
    for state, count in _fetch_all(storage, query):
        counts[state] = count
    return counts


@retry_on_disconnect
def _fetch_all(storage: optuna.storages.RDBStorage, query: Any) -> list[Any]:
    return read_rows(storage.engine, query)
