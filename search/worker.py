"""The worker loop: run trials of one study until the study-wide budget of finished trials is reached.

Finished means COMPLETE or PRUNED. A trial of a killed worker stays RUNNING until its heartbeat goes
stale; it is then failed and re-queued (storage/urls.py), so workers wait for running trials instead of
stopping early, and pick the retry up when it appears.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ACTIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class BudgetReached(Exception):
    """Raised in a trial that another worker's trials already made surplus (a race between two asks)."""


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    best: float | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count_trials(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    by_state = {state: 0 for state in TrialState}
    for trial in trials:
        by_state[trial.state] += 1
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return Counts(by_state[TrialState.COMPLETE], by_state[TrialState.PRUNED], by_state[TrialState.FAIL],
                  by_state[TrialState.RUNNING], by_state[TrialState.WAITING], max(values) if values else None)


def _active_before(trial: optuna.trial.Trial) -> int:
    """Trials numbered before ``trial`` that are finished or running (they hold a place in the budget)."""
    return sum(1 for t in trial.study.get_trials(deepcopy=False, states=ACTIVE) if t.number < trial.number)


def _fail_stale(study: optuna.Study) -> None:
    storage = study._storage  # Optuna exposes no public accessor; fail_stale_trials needs an RDB storage
    if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
        optuna.storages.fail_stale_trials(study)


def run_worker(study: optuna.Study, objective: Callable[[optuna.trial.Trial], float], *,
               n_trials: int | None, timeout: float | None = None,
               on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
               poll_seconds: float = 2.0, max_consecutive_failures: int = 5) -> int:
    """Run trials until ``n_trials`` finished trials exist study-wide (or ``timeout``); returns trials run here.

    A failing trial fails only that trial; ``max_consecutive_failures`` in a row means something is wrong
    with the setup, not the trial, and stops the worker with RuntimeError.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    ran, failures_in_a_row = 0, 0
    states: list[TrialState] = []  # this worker's trials only (others interleave in the study)
    callbacks = [lambda _study, trial: states.append(trial.state)] + ([on_trial_end] if on_trial_end else [])
    surplus: list[int] = []

    def guarded(trial: optuna.trial.Trial) -> float:
        # Two workers can pass the budget check at the same moment; trial numbers order them, and the one
        # beyond the budget steps back instead of training (it is recorded as FAIL with user attr surplus).
        if n_trials is not None and _active_before(trial) >= n_trials:
            trial.set_user_attr("surplus", True)
            surplus.append(trial.number)
            raise BudgetReached(f"trial {trial.number} is beyond the study's {n_trials} trials")
        return objective(trial)

    while deadline is None or time.monotonic() < deadline:
        if n_trials is not None:
            counts = count_trials(study)
            if counts.finished >= n_trials:
                break
            if counts.finished + counts.running >= n_trials:
                # The last trials are running elsewhere; if one of their workers died, its trial comes back.
                _fail_stale(study)
                time.sleep(poll_seconds)
                continue
        study.optimize(guarded, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=False)
        ran += 1
        if surplus:
            break
        failures_in_a_row = failures_in_a_row + 1 if states and states[-1] == TrialState.FAIL else 0
        if failures_in_a_row >= max_consecutive_failures:
            raise RuntimeError(f"{failures_in_a_row} trials failed in a row; see the errors above")
    return ran
