"""Finishing a trial (tell) in one statement on PostgreSQL, two on SQLite: the same rows Optuna's own storage
writes, and Optuna's errors for a trial that is not RUNNING (Optuna's storage contract tests run on it too)."""

from __future__ import annotations

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from cifar_hpo.storage.statements import count_statements


@pytest.mark.parametrize("state, values", [
    (TrialState.COMPLETE, [0.25]),
    (TrialState.COMPLETE, [float("inf")]),
    (TrialState.COMPLETE, [float("-inf"), 3.0, -0.5]),
    (TrialState.PRUNED, [0.125]),
    (TrialState.PRUNED, None),
    (TrialState.FAIL, None),
])
def test_a_running_trial_is_finished_as_optuna_finishes_it(beside_optuna, state, values) -> None:
    ours, theirs, name = beside_optuna
    directions = ["maximize"] * (len(values) if values else 1)
    mine = optuna.create_study(study_name=name, storage=ours, directions=directions)
    optunas = optuna.create_study(study_name=f"{name}-optuna", storage=theirs, directions=directions)
    ids = [mine.ask()._trial_id, optunas.ask()._trial_id]
    with count_statements(ours.engine) as counter:
        assert ours.set_trial_state_values(ids[0], state, values) is True
    assert theirs.set_trial_state_values(ids[1], state, values) is True
    writes = 1 if ours.engine.dialect.name == "postgresql" else (2 if values else 1)
    assert counter.counts().statements == writes
    done, expected = theirs.get_trial(ids[0]), theirs.get_trial(ids[1])  # both read back by Optuna's own code
    assert (done.state, done.values) == (expected.state, expected.values) == (state, values)
    assert done.datetime_complete is not None and done.datetime_complete >= done.datetime_start


def test_a_trial_that_is_not_running_keeps_optunas_errors_and_its_rows(beside_optuna) -> None:
    ours, theirs, name = beside_optuna
    study = optuna.create_study(study_name=name, storage=ours)
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)  # as the stale-trial reaper fails a silent trial
    for state, values in ((TrialState.COMPLETE, [1.0]), (TrialState.PRUNED, None)):
        with pytest.raises(UpdateFinishedTrialError):
            ours.set_trial_state_values(trial._trial_id, state, values)
    kept = theirs.get_trial(trial._trial_id)
    assert (kept.state, kept.values) == (TrialState.FAIL, None)
    with pytest.raises(KeyError):
        ours.set_trial_state_values(trial._trial_id + 1000, TrialState.COMPLETE, [1.0])


def test_a_waiting_trial_is_taken_once_and_tell_still_works(beside_optuna) -> None:
    ours, theirs, name = beside_optuna
    study = optuna.create_study(study_name=name, storage=ours)
    study.enqueue_trial({"x": 0.5})
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]._trial_id
    assert ours.set_trial_state_values(waiting, TrialState.RUNNING) is True
    assert ours.set_trial_state_values(waiting, TrialState.RUNNING) is False  # another worker took it first
    trial = optuna.Trial(study, waiting)
    study.tell(trial, trial.suggest_float("x", 0, 1))
    assert theirs.get_trial(waiting).values == [0.5]
