"""`hpo launch` stopping its workers: a worker that outlives the grace is killed, its trial process dies with
it, and launch marks that trial process's running trial FAIL (no one else is left to do it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import hpo_testkit
from cifar_hpo.search.cli import launch
from cifar_hpo.storage.attrs import WORKER_ATTR

# A worker stand-in that ignores SIGTERM and runs one trial process; the trial process dies with it, as
# search/runtime/processes.py's children do (PR_SET_PDEATHSIG), and starts a trial tagged with its pid.
STUBBORN_WORKER = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(120)
"""
TRIAL_PROCESS = r"""
import ctypes, os, signal, sys, time
import optuna
from cifar_hpo.storage.attrs import WORKER_ATTR, process_tag
ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
trial = optuna.load_study(study_name="s", storage=sys.argv[1]).ask()
trial.set_user_attr(WORKER_ATTR, process_tag(os.getpid()))
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads a worker's children from /proc")
def test_a_killed_workers_trial_is_marked_fail_by_launch(tmp_path: Path, monkeypatch) -> None:
    url = hpo_testkit.sqlite_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=url)
    other = study.ask()  # another machine's or launch's running trial: not this launch's to fail
    monkeypatch.setattr(launch, "STOP_GRACE_S", 1.0)
    worker = subprocess.Popen([sys.executable, "-c", STUBBORN_WORKER, TRIAL_PROCESS, url])
    try:
        deadline = time.monotonic() + 60
        while not any(WORKER_ATTR in t.user_attrs for t in study.get_trials(states=(TrialState.RUNNING,))):
            assert time.monotonic() < deadline and worker.poll() is None, "the trial process did not start a trial"
            time.sleep(0.2)
        launch.stop_workers([worker], study)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == -9  # it ignored SIGTERM: killed after the grace
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {other.number: TrialState.RUNNING, other.number + 1: TrialState.FAIL}
