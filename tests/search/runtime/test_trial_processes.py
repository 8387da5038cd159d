"""A worker stopping its trial process: one that ignores SIGTERM is killed, and its trial is not left RUNNING;
neither is the trial of one that stopped without marking it FAIL."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import hpo_testkit
from cifar_hpo.search.runtime import processes
from cifar_hpo.storage.attrs import WORKER_ATTR


@pytest.mark.parametrize("stand_in", [hpo_testkit.stubborn_trial_process, hpo_testkit.trial_process_that_exits_unheard],
                         ids=["ignores-sigterm", "exits-unheard"])
def test_a_stopped_trial_process_leaves_no_trial_running(tmp_path: Path, monkeypatch, stand_in) -> None:
    url = hpo_testkit.sqlite_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=url)
    other = study.ask()  # another process's running trial: not this worker's to fail
    monkeypatch.setattr(processes, "child_main", stand_in)
    monkeypatch.setattr(processes, "CHILD_STOP_GRACE_S", 1.0)
    job = processes.ChildJob(url=url, study="s", heartbeat=60, worker_index=0, n_trials=None, deadline=None,
                             recycle_after=None, data_override=None, threads=None)

    def ctrl_c_once_the_child_trains() -> None:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if any(WORKER_ATTR in t.user_attrs for t in running):
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        processes.run_in_child_processes(job, ctrl_c_once_the_child_trains, poll_seconds=0.2)
    assert time.monotonic() - started < 60  # the child did not hold the worker past its grace
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {other.number: TrialState.RUNNING, other.number + 1: TrialState.FAIL}


def test_a_trial_process_stopped_before_its_worker_leaves_no_trial_running(tmp_path: Path, monkeypatch) -> None:
    """A terminal's Ctrl-C reaches the trial process too: it exits INTERRUPTED on its own, and the worker then
    marks its trial FAIL should the trial process's own write not have landed."""
    url = hpo_testkit.sqlite_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=url)
    other = study.ask()
    monkeypatch.setattr(processes, "child_main", hpo_testkit.trial_process_interrupted_unheard)
    job = processes.ChildJob(url=url, study="s", heartbeat=60, worker_index=0, n_trials=None, deadline=None,
                             recycle_after=None, data_override=None, threads=None)
    with pytest.raises(KeyboardInterrupt):
        processes.run_in_child_processes(job, lambda: None, poll_seconds=0.2)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {other.number: TrialState.RUNNING, other.number + 1: TrialState.FAIL}
