"""Statements per trial, counted: each saving of the service's worker over plain Optuna, counted alone."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna

from cifar_hpo.search.runtime.worker import run_worker
from cifar_hpo.storage import make_storage
from cifar_hpo.storage.statements import count_statements


def test_a_remembered_study_id_is_not_looked_up_again(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 'ids.db'}")
    study = optuna.create_study(study_name="ids", storage=storage)
    storage.remember_study_id("ids", study._study_id)
    with count_statements(storage.engine) as counter:
        assert storage.get_study_id_from_name("ids") == study._study_id
    assert counter.counts().round_trips == 0
    storage.remember_study_id("ids", None)
    with count_statements(storage.engine) as counter:
        assert storage.get_study_id_from_name("ids") == study._study_id
    assert counter.counts().select == 1


def test_run_worker_remembers_its_study_id_only_while_it_runs(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 'run.db'}")
    study = optuna.create_study(study_name="run", storage=storage, direction="maximize",
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=3))

    def objective(trial: optuna.trial.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        trial.report(x, 1)
        return x

    with count_statements(storage.engine, label=lambda what: _caller_named("get_study_id_from_name")) as counter:
        run_worker(study, objective, n_trials=3)
    assert counter.counts("get_study_id_from_name").round_trips == 0
    with count_statements(storage.engine) as counter:
        storage.get_study_id_from_name("run")
    assert counter.counts().select == 1


def _caller_named(name: str) -> str:
    """``name`` when a function of that name is on the caller's stack, else "" (a counter's label)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == name:
            return name
        frame = frame.f_back
    return ""
