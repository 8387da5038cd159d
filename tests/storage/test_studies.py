"""Creating, loading and counting studies: the same behaviour on memory, SQLite and PostgreSQL storages."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from optuna.distributions import FloatDistribution

from cifar_hpo.storage.counting import count_frozen_trials, count_study_trials, rdb_storage
from cifar_hpo.storage.errors import StorageError
from cifar_hpo.storage.studies import create_or_load_study, open_study, study_exists

X = {"x": FloatDistribution(0.0, 1.0)}


def add(study: optuna.Study, state: TrialState, value: float | None = None, **attrs: object) -> None:
    study.add_trial(create_trial(state=state, value=value, params={"x": 0.5}, distributions=X, user_attrs=attrs))


def test_open_study_creates_once_then_loads(any_storage, study_name) -> None:
    assert not study_exists(any_storage, study_name)
    created = open_study(any_storage, study_name, create_attrs={"hpo_settings": {"space": "cnn"}})
    loaded = open_study(any_storage, study_name)
    assert study_exists(any_storage, study_name)
    assert loaded.user_attrs == created.user_attrs == {"hpo_settings": {"space": "cnn"}}
    assert loaded.direction == optuna.study.StudyDirection.MAXIMIZE


def test_joining_an_unknown_study_names_the_known_ones(any_storage, study_name) -> None:
    open_study(any_storage, study_name, create_attrs={})
    with pytest.raises(StorageError, match=f"does not exist in this storage; studies here: .*{study_name}"):
        open_study(any_storage, study_name + "-other")


def test_create_or_load_runs_prepare_only_in_the_creator(any_storage, study_name) -> None:
    prepared: list[str] = []
    study, created = create_or_load_study(any_storage, study_name, {"k": 1}, prepare=lambda s: prepared.append(s.study_name))
    again, created_again = create_or_load_study(any_storage, study_name, {"k": 1}, prepare=lambda s: prepared.append("x"))
    assert (created, created_again) == (True, False)
    assert prepared == [study_name] and again.user_attrs == {"k": 1}


def test_counts_by_state_before_a_trial_and_best(any_storage, study_name) -> None:
    study = open_study(any_storage, study_name, create_attrs={})
    assert count_study_trials(study, with_best=True) == count_study_trials(study)  # no trial: no best
    add(study, TrialState.COMPLETE, 0.4)
    add(study, TrialState.PRUNED, infeasible="feature map shrinks")
    add(study, TrialState.COMPLETE, 0.7)
    add(study, TrialState.FAIL)
    study.enqueue_trial({"x": 0.1})
    counts = count_study_trials(study, with_best=True)
    assert (counts.complete, counts.pruned, counts.failed, counts.running, counts.waiting) == (2, 1, 1, 0, 1)
    assert counts.finished == 3 and counts.total == 5 and counts.best == pytest.approx(0.7)
    assert count_study_trials(study, before=2).finished == 2  # trials 0 and 1 only
    frozen = count_frozen_trials(study.get_trials())
    assert frozen.infeasible == 1 and frozen.finished == counts.finished and frozen.best is None


def test_rdb_storage_only_for_databases(any_storage, study_name, request) -> None:
    study = open_study(any_storage, study_name, create_attrs={})
    is_database = request.node.callspec.params["any_storage"] != "memory"
    assert (rdb_storage(study) is not None) == is_database
