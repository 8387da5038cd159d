"""One function creates or loads a study; study settings live in its user attrs (the single source of truth)."""

from __future__ import annotations

import time
from typing import Any, Callable

import optuna

from cifar_hpo.storage.errors import StorageError


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
        raise StorageError(f"study name must be a non-empty string, but got {name!r}")
    if study_exists(storage, name):
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if create_attrs is None:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        hint = f"; studies here: {', '.join(sorted(known)[:10])}" if known else "; create it with `hpo search` or `hpo launch`"
        raise StorageError(f"study {name!r} does not exist in this storage{hint}")
    return create_or_load_study(storage, name, create_attrs, sampler=sampler, pruner=pruner)[0]


# How long a process that lost the race to create a study waits for the winner to store its attrs.
CREATE_WAIT_S = 30.0
CREATE_POLL_S = 0.05


def create_or_load_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    attrs: dict[str, Any],
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    prepare: Callable[[optuna.Study], None] | None = None,
) -> tuple[optuna.Study, bool]:
    """(study, True) if this call created study ``name``; (study, False) if another process did.

    Creation is atomic across processes: the database lets one create win. The winner runs ``prepare``
    (note, baseline) and then writes ``attrs``, so attrs present means a finished setup; a loser waits for
    them, so that it can compare its settings with the winner's instead of taking a half-made study.
    """
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:  # another process created it a moment ago
        _wait_for_attrs(storage, name, attrs)
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner), False
    if prepare is not None:
        prepare(study)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study, True


def _wait_for_attrs(storage: optuna.storages.BaseStorage, name: str, attrs: dict[str, Any]) -> None:
    study_id = storage.get_study_id_from_name(name)
    deadline = time.monotonic() + CREATE_WAIT_S
    while not set(attrs) <= set(storage.get_study_user_attrs(study_id)):
        if time.monotonic() >= deadline:
            raise StorageError(f"study {name!r} was just created by another process that did not finish setting it up "
                              f"within {CREATE_WAIT_S:g} s; run the command again, or choose a new --study name")
        time.sleep(CREATE_POLL_S)
