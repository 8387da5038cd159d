"""The worker loop on an in-memory study with scripted objectives (no training)."""

import time

import optuna
import pytest
from optuna.trial import TrialState

from cifar_hpo.search.runtime.worker import MAX_CONSECUTIVE_FAILURES, WorkerExit, run_worker
from cifar_hpo.search.errors import ExitCode, SearchStopped
from cifar_hpo.search.runtime.processes import recycled_failures


def failing(trial: optuna.trial.Trial) -> float:
    trial.suggest_float("x", 0, 1)
    raise ValueError("this setup cannot train")


def study() -> optuna.Study:
    return optuna.create_study(direction="maximize")


def test_study_wide_budget_of_finished_trials():
    s = study()
    exit_ = run_worker(s, lambda t: t.suggest_float("x", 0, 1), n_trials=4)
    assert exit_ == WorkerExit("done", 0)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 4


def test_recycle_hands_over_the_failures_in_a_row():
    s = study()
    assert run_worker(s, failing, n_trials=10, max_trials=2) == WorkerExit("recycle", 2)
    # the next trial process starts from 2 and stops the worker at the limit, not after 5 more
    with pytest.raises(SearchStopped, match=f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row"):
        run_worker(s, failing, n_trials=10, max_trials=5, failures_in_a_row=2)
    assert len(s.trials) == 2 + (MAX_CONSECUTIVE_FAILURES - 2)


def test_a_success_resets_the_count():
    s = study()
    outcomes = iter([False, True, False])

    def sometimes(trial: optuna.trial.Trial) -> float:
        if not next(outcomes):
            raise ValueError("fails")
        return 0.5

    assert run_worker(s, sometimes, n_trials=10, max_trials=3, failures_in_a_row=3) == WorkerExit("recycle", 1)


def test_exit_codes_carry_the_failures():
    assert recycled_failures(ExitCode.RECYCLE) == 0
    assert recycled_failures(ExitCode.RECYCLE + MAX_CONSECUTIVE_FAILURES - 1) == MAX_CONSECUTIVE_FAILURES - 1
    assert recycled_failures(ExitCode.RECYCLE + MAX_CONSECUTIVE_FAILURES) is None
    assert recycled_failures(ExitCode.OK) is None and recycled_failures(None) is None


def test_a_trial_interrupted_between_ask_and_objective_is_failed(monkeypatch):
    """Ctrl-C inside Optuna's ask (after the trial was created RUNNING, before the objective runs): Optuna
    does not fail that trial; the worker does, instead of leaving it RUNNING until its heartbeat goes stale."""
    from cifar_hpo.search.settings import StudySettings, make_sampler

    study = optuna.create_study(direction="maximize", sampler=make_sampler(StudySettings(seed=3)))

    before_trial = study.sampler.before_trial

    def interrupted(*args, **kwargs):  # the sampler's hook inside ask, after the trial exists
        before_trial(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(study.sampler, "before_trial", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_worker(study, lambda trial: 1.0, n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.FAIL]


def test_a_stop_signal_while_ask_creates_the_trial_fails_that_trial(monkeypatch):
    """SIGTERM right after the storage created the trial RUNNING, before Optuna's ask returned it (a race CI
    hit with `hpo launch`): the interrupt waits for the ask's end, and the worker marks that trial FAIL."""
    import os
    import signal

    from cifar_hpo.search.runtime import interrupts

    study = optuna.create_study(direction="maximize")
    create_new_trial = study._storage.create_new_trial  # the storage call inside Optuna's ask

    def created_then_signalled(*args, **kwargs):
        trial_id = create_new_trial(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at once, in this frame
        return trial_id

    monkeypatch.setattr(study._storage, "create_new_trial", created_then_signalled)
    interrupts.interrupt_once()  # undone after the test by tests/conftest.py
    with pytest.raises(KeyboardInterrupt):
        run_worker(study, lambda trial: 1.0, n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.FAIL]


def _get_trial_calls(study: optuna.Study, monkeypatch) -> list[int]:
    calls: list[int] = []
    get_trial = study._storage.get_trial

    def counted(trial_id: int):
        calls.append(trial_id)
        return get_trial(trial_id)

    monkeypatch.setattr(study._storage, "get_trial", counted)
    return calls


def test_the_worker_reads_no_more_trials_back_than_plain_optuna(monkeypatch):
    """Optuna reads every finished trial back from the storage for optimize()'s callbacks (6 statements a
    trial on PostgreSQL, benchmarks/storage_statements.py); the worker's step after each trial runs without one."""
    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        if x < 0.3:
            raise optuna.TrialPruned()
        return x

    plain = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    plain_calls = _get_trial_calls(plain, monkeypatch)
    plain.optimize(objective, n_trials=8)
    service = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    service_calls = _get_trial_calls(service, monkeypatch)
    outcome = run_worker(service, objective, n_trials=8)
    assert [t.state for t in service.trials] == [t.state for t in plain.trials]
    assert len(service_calls) == len(plain_calls)
    assert outcome == WorkerExit("done", 0)


def test_the_step_after_the_last_trial_runs_when_the_time_is_up():
    """With no next ask (the timeout ended optimize()), the last trial's failure still counts."""
    timed = study()

    def slow_failing(trial):
        time.sleep(0.3)
        raise RuntimeError("broken")

    outcome = run_worker(timed, slow_failing, n_trials=100, timeout=0.5)
    states = [t.state for t in timed.trials]
    assert states and set(states) == {TrialState.FAIL}
    assert outcome.failures_in_a_row == len(states)


def test_a_returned_nan_counts_as_a_failure():
    nan_study = study()
    with pytest.raises(SearchStopped, match=f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row"):
        run_worker(nan_study, lambda trial: float("nan"), n_trials=20)
    assert [t.state for t in nan_study.trials] == [TrialState.FAIL] * MAX_CONSECUTIVE_FAILURES


@pytest.mark.parametrize("reports_after", [True, False], ids=["then-reports", "then-returns"])
def test_a_trial_failed_as_stale_while_the_worker_was_paused_does_not_stop_it(reports_after, caplog):
    """A worker stopped for longer than the heartbeat's grace period (SIGSTOP, a suspended machine) finds its
    trial failed as stale when it runs again: Optuna then refuses the trial's report or its tell. The worker
    says so in one line and goes on to the budget; the failure does not count as the trial's own."""
    s = study()
    paused = []

    def objective(trial: optuna.trial.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if not paused:  # what a stale-trial check does to this trial meanwhile
            paused.append(trial.number)
            s._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            if reports_after:
                trial.report(x, 1)
        return x

    exit_ = run_worker(s, objective, n_trials=3, max_consecutive_failures=1)
    assert exit_ == WorkerExit("done", 0)
    assert [t.state for t in s.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert f"trial {paused[0]} was failed as stale" in caplog.text


def test_an_error_of_the_next_ask_is_not_taken_for_a_stale_trial():
    """After a finished trial, an error of Optuna's ask for the next one is raised as it is (the worker must not
    loop on it thinking its last trial was failed elsewhere)."""
    s = study()
    ask = s.ask
    asks = []

    def ask_that_breaks(*args, **kwargs):
        asks.append(1)
        if len(asks) == 2:
            raise ValueError("the sampler cannot sample")
        return ask(*args, **kwargs)

    s.ask = ask_that_breaks
    with pytest.raises(ValueError, match="the sampler cannot sample"):
        run_worker(s, failing, n_trials=3)
    assert len(asks) == 2 and [t.state for t in s.trials] == [TrialState.FAIL]
