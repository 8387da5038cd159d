"""A worker stopping its trial process: one that ignores SIGTERM is killed, and its trial is not left RUNNING."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import hpo_testkit
from cifar_hpo.search.runtime import processes
from cifar_hpo.storage.attrs import WORKER_ATTR


def test_a_trial_process_that_does_not_stop_is_killed_and_its_trial_failed(tmp_path: Path, monkeypatch) -> None:
    url = hpo_testkit.sqlite_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=url)
    other = study.ask()  # another process's running trial: not this worker's to fail
    monkeypatch.setattr(processes, "child_main", hpo_testkit.stubborn_trial_process)
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
