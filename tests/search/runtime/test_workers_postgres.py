"""Parallel workers and their faults, against the real PostgreSQL server (required in CI)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from cifar_hpo.search.cli import main
from cifar_hpo.storage import make_storage
from hpo_testkit import ROOT, create_tiny_study as create, make_tiny_cifar

pytestmark = pytest.mark.postgres


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def finished(study: optuna.Study) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def worker(url: str, study: str, *extra: str, app_name: str = "hpo-test-worker") -> subprocess.Popen:
    env = {**os.environ, "PGAPPNAME": app_name}  # libpq names the worker's connections, so a test can find them
    return subprocess.Popen([sys.executable, "-m", "cifar_hpo.search.cli", "worker", "--study", study, "--storage", url,
                             "--quiet", *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def slow_npz(tmp_path: Path) -> Path:
    """Enough images that a trial lasts several seconds (time to kill its worker mid-trial)."""
    path = tmp_path / "slow.npz"
    np.savez(path, **make_tiny_cifar(n_train=3000, n_test=100))
    return path


def test_launch_three_workers_reaches_exactly_the_budget(postgres_url, pg_study, tiny_npz):
    rc = main(["launch", "--study", pg_study, "--storage", postgres_url, "--workers", "3", "--n-trials", "6",
               "--space", "cnn", "--data", str(tiny_npz), "--val-size", "100", "--epochs", "1"])
    assert rc == 0
    study = optuna.load_study(study_name=pg_study, storage=sqlalchemy_url(postgres_url))
    assert finished(study) == 6
    assert study.trials[0].user_attrs.get("baseline") is True
    assert all(t.state != TrialState.RUNNING for t in study.trials)


def test_killed_worker_trial_fails_is_retried_and_the_study_completes(postgres_url, pg_study, slow_npz):
    n_trials, heartbeat = 5, 4
    study = create(postgres_url, pg_study, slow_npz, epochs=4, pruner="none", n_trials=n_trials)
    workers = [worker(postgres_url, pg_study, "--heartbeat", str(heartbeat), "--threads", "1", "--worker-index", str(i))
               for i in range(3)]
    by_pid = {proc.pid: proc for proc in workers}
    deadline = time.monotonic() + 300
    running = []
    while time.monotonic() < deadline and not running and all(p.poll() is None for p in workers):
        running = [t for t in study.get_trials(deepcopy=False)
                   if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        time.sleep(0.2)
    if not running:
        for proc in workers:
            proc.kill()
        pytest.fail("no worker started a trial: " + " | ".join(p.communicate()[1][-2000:] for p in workers))
    time.sleep(1.0)  # mid-trial: the model is training
    target = running[0]
    trial_pid = int(target.user_attrs["worker"].rsplit(":", 1)[1])  # the worker's trial process
    victim = by_pid[parent_pid(trial_pid)]
    complete_before = {t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE}
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    while study.trials[target.number].state == TrialState.RUNNING and time.monotonic() - killed_at < 120:
        time.sleep(0.2)
    failed_after = time.monotonic() - killed_at
    survivors = [proc for proc in workers if proc is not victim]
    outputs = [proc.communicate(timeout=400) for proc in survivors]
    for proc, (out, err) in zip(survivors, outputs):
        assert proc.returncode == 0, err
    trials = study.get_trials(deepcopy=False)
    assert trials[target.number].state == TrialState.FAIL
    # the bound: FAIL within two heartbeat intervals of the kill (stale after 1.5, checked every 0.25)
    assert failed_after <= 2 * heartbeat, failed_after
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == target.number]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].params == trials[target.number].params
    assert finished(study) == n_trials
    assert complete_before <= {t.number for t in trials if t.state == TrialState.COMPLETE}
    assert not alive(trial_pid), "the trial process outlived its killed worker"


def test_workers_survive_dropped_connections(postgres_url, pg_study, tiny_npz):
    study = create(postgres_url, pg_study, tiny_npz, epochs=2, n_trials=6)
    app_name = f"hpo-drop-{pg_study}"
    proc = worker(postgres_url, pg_study, "--heartbeat", "2", app_name=app_name)
    admin = sqlalchemy.create_engine(sqlalchemy_url(postgres_url), isolation_level="AUTOCOMMIT")
    killed = 0
    deadline = time.monotonic() + 180
    with admin.connect() as conn:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
            if finished(study) >= 1:
                killed += conn.execute(
                    sqlalchemy.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE application_name = :name"), {"name": app_name}
                ).scalar()
    admin.dispose()
    out, err = proc.communicate(timeout=300)
    assert killed > 0, "no connection was dropped; the test did not test anything"
    assert proc.returncode == 0, err
    assert finished(study) == 6


def test_unknown_study_and_role_on_postgres_are_one_line(postgres_url, capsys):
    before = optuna.get_all_study_names(sqlalchemy_url(postgres_url))
    rc = main(["worker", "--study", "no-such-study-xyz", "--storage", postgres_url])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0]
    bad_role = postgres_url.replace("postgres@", "nobody_here:wrong@", 1)
    rc = main(["worker", "--study", "x", "--storage", bad_role])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot open storage" in err[0] and "wrong" not in err[0]
    assert optuna.get_all_study_names(sqlalchemy_url(postgres_url)) == before


def test_launch_refuses_several_workers_in_memory(capsys, tiny_npz):
    rc = main(["launch", "--study", "m", "--storage", "memory://", "--workers", "2", "--data", str(tiny_npz)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "in-memory storage" in err[0]


def test_storage_is_resilient_rdb_with_heartbeats(postgres_url):
    storage = make_storage(postgres_url, heartbeat_interval=7)
    assert storage.get_heartbeat_interval() == 7
