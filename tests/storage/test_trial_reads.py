"""Trials read in one statement (storage/trial_reads.py) are the trials Optuna's own RDBStorage reads from the
same database, field for field, for every kind of content a trial can hold and every way Optuna chooses them."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from cifar_hpo.storage.statements import count_statements


def fill(study: optuna.Study) -> None:
    """Trials with every kind of row: params of each distribution (suggested out of order, so param ids and
    names sort differently), infinite values, NaN and infinite intermediate values, JSON attrs of each type,
    and every state (a WAITING trial with fixed params, RUNNING, PRUNED, FAIL, COMPLETE)."""
    study.enqueue_trial({"z_float": 0.5, "a_int": 3})
    trial = study.ask()
    trial.suggest_float("z_float", 0.0, 1.0)
    trial.suggest_int("a_int", 1, 8, log=True)
    trial.suggest_categorical("m_cat", ["relu", None, 2.5, True])
    trial.suggest_float("b_step", 0.0, 1.0, step=0.25)
    for step, value in enumerate((0.1, float("nan"), float("inf"), float("-inf"), -0.0)):
        trial.report(value, step)
    trial.set_user_attr("nested", {"a": [1, 2.5, None], "b": "text"})
    trial.set_user_attr("number", 7)
    trial.storage.set_trial_system_attr(trial._trial_id, "system", ["x", 1])
    study.tell(trial, float("inf"))
    pruned = study.ask()
    pruned.suggest_float("z_float", 0.0, 1.0)
    pruned.report(0.3, 0)
    study.tell(pruned, state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.tell(study.ask(), -1.25)
    study.ask().set_user_attr("still", "running")
    study.enqueue_trial({"z_float": 0.75})


def comparable(trial: optuna.trial.FrozenTrial) -> dict:
    """Every field of the trial, NaN as a string (NaN != NaN would make equal trials differ)."""
    fields = dict(vars(trial))
    fields["intermediate_values"] = {step: "nan" if math.isnan(v) else v for step, v in trial.intermediate_values.items()}
    fields["param_order"] = list(trial.params)  # in the order they were suggested
    return fields


def same(ours: list, theirs: list) -> None:
    assert [comparable(t) for t in ours] == [comparable(t) for t in theirs]
    assert [t.number for t in theirs] == sorted(t.number for t in theirs)  # by trial id, as Optuna orders them


def test_one_trial_is_read_as_optuna_reads_it_in_one_statement(beside_optuna) -> None:
    ours, theirs, name = beside_optuna
    study = optuna.create_study(study_name=name, storage=ours)
    fill(study)
    trial_ids = [t._trial_id for t in study.get_trials(deepcopy=False)]
    assert len(trial_ids) == 6
    for trial_id in trial_ids:
        with count_statements(ours.engine) as counter:
            mine = ours.get_trial(trial_id)
        assert counter.counts().statements == 1
        same([mine], [theirs.get_trial(trial_id)])
    with pytest.raises(KeyError):
        ours.get_trial(max(trial_ids) + 1000)


def test_a_studys_trials_are_chosen_and_read_as_optuna_does_it(beside_optuna) -> None:
    ours, theirs, name = beside_optuna
    study = optuna.create_study(study_name=name, storage=ours)
    fill(study)
    other = optuna.create_study(study_name=f"{name}-other", storage=ours)  # its trials must not leak in
    other.enqueue_trial({"x": 1})
    study_id = study._study_id
    ids = [t._trial_id for t in study.get_trials(deepcopy=False)]
    cases = [  # (states, included trial ids, trial_id_greater_than), as Optuna's cache layer and others pass them
        (None, set(), -1),
        ((TrialState.COMPLETE,), set(), -1),
        ((TrialState.WAITING, TrialState.RUNNING), set(), -1),
        (None, {ids[1], ids[4]}, ids[3]),
        (None, set(), ids[2]),
        (None, {ids[0], ids[5]}, ids[2]),  # ids[5] > greater_than: Optuna drops it from the list, reads it anyway
        ((TrialState.RUNNING,), {ids[4]}, ids[4]),
        (None, set(), ids[-1]),
    ]
    for states, included, greater_than in cases:
        with count_statements(ours.engine) as counter:
            mine = ours._get_trials(study_id, states, set(included), greater_than)
        assert counter.counts().statements == 1
        same(mine, theirs._get_trials(study_id, states, set(included), greater_than))
    assert ours._get_trials(study_id, None, set(), ids[-1]) == []  # a study with no such trials: empty ...
    with pytest.raises(KeyError):  # ... a study that does not exist: KeyError, as in Optuna
        ours._get_trials(study_id + 1000, None, set(), -1)


def test_reads_inside_optunas_own_transaction_keep_its_error(beside_optuna) -> None:
    """Optuna reads the trial inside its write transaction before raising UpdateFinishedTrialError: the read
    shares that transaction (on SQLite another connection would wait for the write lock it holds)."""
    ours, _, name = beside_optuna
    study = optuna.create_study(study_name=name, storage=ours)
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        ours.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [2.0])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        ours.set_trial_user_attr(trial._trial_id, "late", 1)


def test_a_long_list_of_unfinished_trials_falls_back_to_optunas_reads(beside_optuna, monkeypatch) -> None:
    from cifar_hpo.storage import trial_reads

    ours, theirs, name = beside_optuna
    study = optuna.create_study(study_name=name, storage=ours)
    for _ in range(4):
        study.ask()
    ids = {t._trial_id for t in study.get_trials(deepcopy=False)}
    monkeypatch.setattr(trial_reads, "MAX_LISTED_TRIAL_IDS", 2)
    with count_statements(ours.engine) as counter:
        mine = ours._get_trials(study._study_id, None, ids, max(ids))
    assert counter.counts().statements > 1  # Optuna's reads, one per table
    same(mine, theirs._get_trials(study._study_id, None, ids, max(ids)))


def test_multi_objective_values_keep_their_order(beside_optuna) -> None:
    ours, theirs, name = beside_optuna
    study = optuna.create_study(study_name=name, storage=ours, directions=["maximize", "minimize", "maximize"])
    trial = study.ask({"x": FloatDistribution(0, 1), "n": IntDistribution(0, 4), "c": CategoricalDistribution("ab")})
    study.tell(trial, [0.5, float("-inf"), 3.0])
    assert ours.get_trial(trial._trial_id).values == [0.5, float("-inf"), 3.0]
    same(ours._get_trials(study._study_id, None, set(), -1), theirs._get_trials(study._study_id, None, set(), -1))
