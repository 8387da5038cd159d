"""One function creates or loads a study; study settings live in its user attrs (the single source of truth)."""

from __future__ import annotations

from typing import Any

import optuna

from search.errors import ConfigError


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
