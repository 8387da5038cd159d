"""`hpo storage-proxy` and grpc:// storage URLs (issue 17): workers through the proxy reach the budget, a
killed worker's trial is failed and retried through the liveness attr, a proxy restart loses nothing, and
every bad address is one line. Workers run a sleeping objective (no training), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.trial import TrialState

import cifar_hpo.storage.proxy as proxy
from cifar_hpo.search.cli import main
from cifar_hpo.search.settings import StudySettings
from cifar_hpo.storage import make_storage, mask_url
from cifar_hpo.storage.attrs import LIVENESS_ATTR
from cifar_hpo.storage.liveness import LivenessWatch
from cifar_hpo.storage.urls import normalize_url
from hpo_testkit import ROOT, SMALL_CNN, create_tiny_study, make_study, make_trial

pytest.importorskip("grpc")

HEARTBEAT = 2
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# A worker with a sleeping objective (10 reported steps): the real worker loop, budget checks and reaper.
WORKER = textwrap.dedent("""
    import json, os, sys, time, warnings
    import optuna
    from cifar_hpo.search.runtime.interrupts import interrupt_once
    from cifar_hpo.search.runtime.worker import run_worker
    from cifar_hpo.storage import make_storage
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url, name, n_trials, step_s, heartbeat = sys.argv[1:6]
    interrupt_once()
    study = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat_interval=int(heartbeat)))

    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        x = trial.suggest_float("x", 0, 1)
        for step in range(10):
            time.sleep(float(step_s))
            trial.report(x, step)
        return x

    def told(study, trial):
        print(json.dumps({"number": trial.number, "state": trial.state.name, "value": trial.value}), flush=True)

    run_worker(study, objective, n_trials=int(n_trials), poll_seconds=0.2, on_trial_end=told)
""")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Proxy:
    """`hpo storage-proxy` in a subprocess on a fixed port (a restart comes back on the same address)."""

    def __init__(self, database: str, workdir: Path, port: int | None = None, *extra: str) -> None:
        self.database, self.workdir, self.port, self.extra = database, workdir, port or free_port(), extra
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        self.out, self.err = self.workdir / f"proxy{self.starts}.out", self.workdir / f"proxy{self.starts}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "cifar_hpo.search.cli", "storage-proxy", "--storage",
                                          self.database, "--port", str(self.port), *self.extra],
                                         cwd=ROOT, stdout=out, stderr=err)
        deadline = time.monotonic() + 90
        while "workers pass --storage" not in self.out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                pytest.fail(f"storage proxy did not start: {self.err.read_text()}")
            time.sleep(0.1)

    def stop(self, how: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(how)
        return self.proc.wait(timeout=60)


def worker(url: str, study: str, n_trials: int, step_s: float, heartbeat: int = HEARTBEAT) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, url, study, str(n_trials), str(step_s), str(heartbeat)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reported(outputs: list[str]) -> list[dict]:
    """What the workers printed for each trial they told (and so hold for stored)."""
    return [json.loads(line) for out in outputs for line in out.splitlines() if line.startswith("{")]


def finish(workers: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    outputs = []
    for proc in workers:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            pytest.fail(f"a worker did not finish: {proc.communicate()[1][-3000:]}")
        assert proc.returncode == 0, err[-3000:]
        outputs.append(out)
    return outputs


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'proxied.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def study_name(request: pytest.FixtureRequest, database: str, unique_study: str) -> str:
    """A fresh study on ``database`` (deleted afterwards on the shared PostgreSQL server)."""
    if database.startswith("postgresql"):
        unique_study = request.getfixturevalue("pg_study")
    optuna.create_study(study_name=unique_study, storage=make_storage(database), direction="maximize")
    return unique_study


@pytest.fixture
def proxied(database: str, tmp_path: Path) -> Iterator[Proxy]:
    running = Proxy(database, tmp_path)
    yield running
    running.stop(signal.SIGKILL)


def stored(database: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=make_storage(database)).get_trials(deepcopy=False)


# ---------------------------------------------------------------- workers through the proxy

def test_workers_through_the_proxy_reach_the_budget(database, study_name, proxied):
    n_trials = 8
    workers = [worker(proxied.url, study_name, n_trials, 0.03) for _ in range(3)]
    told = reported(finish(workers))
    trials = stored(database, study_name)
    assert sum(t.state in FINISHED for t in trials) == n_trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(LIVENESS_ATTR in t.system_attrs for t in trials)  # born watched: in the creation itself
    assert {r["number"] for r in told if r["state"] == "COMPLETE"} == {t.number for t in trials
                                                                       if t.state == TrialState.COMPLETE}


def test_killed_worker_behind_the_proxy_is_failed_retried_and_the_budget_reached(database, study_name, proxied):
    n_trials = 5
    workers = [worker(proxied.url, study_name, n_trials, 0.4) for _ in range(3)]
    by_pid = {proc.pid: proc for proc in workers}
    study = optuna.load_study(study_name=study_name, storage=make_storage(database))

    def running() -> list[optuna.trial.FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING and "pid" in t.user_attrs]

    wait_for(lambda: bool(running()), "a running trial")
    time.sleep(1.0)  # mid-trial, a beat or two written
    target = running()[0]
    victim = by_pid[target.user_attrs["pid"]]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    wait_for(lambda: study.trials[target.number].state != TrialState.RUNNING, "the FAIL of the dead worker's trial")
    failed_after = time.monotonic() - killed_at
    finish([proc for proc in workers if proc is not victim])
    trials = stored(database, study_name)
    assert trials[target.number].state == TrialState.FAIL
    # stale after 1.5 intervals of an unchanged value, looked at every quarter interval: FAIL within about two
    # intervals of the kill (one second more for this loaded test machine)
    assert failed_after <= 2 * HEARTBEAT + 1, failed_after
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == target.number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == trials[target.number].params
    assert retries[0].system_attrs[LIVENESS_ATTR] != trials[target.number].system_attrs[LIVENESS_ATTR]
    assert sum(t.state in FINISHED for t in trials) == n_trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_proxy_restart_mid_study_loses_nothing(database, study_name, proxied, how):
    """Workers wait for the proxy to come back (no trial failed as stale for the silence), and every trial a
    worker told is stored as it was told; the budget is met exactly."""
    n_trials = 10
    workers = [worker(proxied.url, study_name, n_trials, 0.08) for _ in range(3)]
    study = optuna.load_study(study_name=study_name, storage=make_storage(database))
    wait_for(lambda: sum(t.state in FINISHED for t in study.get_trials(deepcopy=False)) >= 2, "two finished trials")
    proxied.stop(how)
    time.sleep(2 * HEARTBEAT)  # down for longer than the stale grace: the watch must not count it
    proxied.start()
    told = reported(finish(workers))
    trials = stored(database, study_name)
    assert sum(t.state in FINISHED for t in trials) == n_trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    by_number = {t.number: t for t in trials}
    for record in told:
        trial = by_number[record["number"]]
        assert (trial.state.name, trial.value) == (record["state"], record["value"])
    # FAIL only for a trial beyond the budget (two workers asked at once: worker.py's surplus step-back), or,
    # when the proxy was killed mid-call, for one it left orphaned: failed as stale and queued again
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")]
    if how == signal.SIGTERM:  # calls in flight finished before the proxy stopped
        assert failed == [], failed
    for trial in failed:
        assert any(t.system_attrs.get("failed_trial") == trial.number for t in trials), trial


def test_worker_stopped_while_the_proxy_is_down_stops_within_seconds(database, study_name, proxied):
    """SIGTERM reaches a worker whose calls wait for a proxy that is gone: it gives up waiting at once (its
    FAIL of the running trial cannot land) and the trial is failed as stale by the next worker, and retried."""
    first = worker(proxied.url, study_name, 4, 0.3)
    study = optuna.load_study(study_name=study_name, storage=make_storage(database))
    wait_for(lambda: any(t.state == TrialState.RUNNING and "pid" in t.user_attrs
                         for t in study.get_trials(deepcopy=False)), "a running trial")
    proxied.stop(signal.SIGKILL)
    time.sleep(1.0)  # the worker now waits for the proxy, in the objective's report and in its heartbeat
    first.send_signal(signal.SIGTERM)
    started = time.monotonic()
    first.communicate(timeout=60)
    assert time.monotonic() - started < 8
    proxied.start()
    finish([worker(proxied.url, study_name, 4, 0.03)])
    trials = stored(database, study_name)
    dropped = [t for t in trials if t.state == TrialState.FAIL]
    assert len(dropped) == 1 and any(t.system_attrs.get("failed_trial") == dropped[0].number for t in trials)
    assert sum(t.state in FINISHED for t in trials) == 4


# ---------------------------------------------------------------- the command and bad addresses

def test_proxy_command_starts_serves_and_stops_on_sigterm_and_ctrl_c(tmp_path):
    database = f"sqlite:///{tmp_path / 'p.db'}"
    for how in (signal.SIGTERM, signal.SIGINT):
        running = Proxy(database, tmp_path)
        assert "grpc://127.0.0.1:" in running.out.read_text() and running.err.read_text() == ""
        storage = make_storage(running.url)
        optuna.create_study(study_name=f"s{how}", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1),
                                                                            n_trials=3)
        storage.close()
        started = time.monotonic()
        assert running.stop(how) == 0
        assert time.monotonic() - started < 10
        assert running.err.read_text().strip() == "hpo storage-proxy: stopped"
    assert set(optuna.get_all_study_names(database)) == {f"s{signal.SIGINT}", f"s{signal.SIGTERM}"}


def test_proxy_on_another_host_warns_that_it_has_no_authentication(tmp_path):
    running = Proxy(f"sqlite:///{tmp_path / 'p.db'}", tmp_path, None, "--host", "0.0.0.0")
    try:
        warning = running.err.read_text().strip().splitlines()
        assert len(warning) == 1 and "warning: listening on 0.0.0.0" in warning[0]
        assert "no authentication" in warning[0] and "ssh -L" in warning[0]
    finally:
        running.stop()


def test_second_proxy_on_a_port_in_use_is_one_line_exit_2(tmp_path, capsys):
    running = Proxy(f"sqlite:///{tmp_path / 'p.db'}", tmp_path)
    try:
        rc = main(["storage-proxy", "--storage", f"sqlite:///{tmp_path / 'q.db'}", "--port", str(running.port)])
    finally:
        running.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot listen on 127.0.0.1:" in err[0], err


@pytest.mark.parametrize("storage, words", [
    ("memory://", "memory:// lives and dies with the proxy"),
    ("grpc://127.0.0.1:13000", "not another proxy"),
])
def test_proxy_refuses_what_it_cannot_serve(storage, words, capsys):
    rc = main(["storage-proxy", "--storage", storage, "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("url, words", [
    ("grpc://127.0.0.1", "is not a proxy address; use grpc://HOST:PORT"),
    ("grpc://127.0.0.1:notaport", "is not a proxy address"),
    ("grpc://bob:hunter2@127.0.0.1:13000", "is not a proxy address"),
    ("grpc://127.0.0.1:13000/db?x=1", "is not a proxy address"),
])
def test_bad_proxy_url_is_one_line_exit_2(url, words, capsys):
    for command in (["report", "--study", "s"], ["worker", "--study", "s"], ["studies"]):
        rc = main([*command, "--storage", url])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0], err
        assert "hunter2" not in err[0]


def test_unreachable_proxy_is_one_line_exit_2_within_the_open_wait(monkeypatch, capsys):
    monkeypatch.setattr(proxy, "_open_wait_s", 1.0)
    url = f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    for command in (["report", "--study", "s"], ["worker", "--study", "s"], ["dashboard"]):
        started = time.monotonic()
        rc = main([*command, "--storage", url])
        elapsed = time.monotonic() - started
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"no storage proxy answers at {url} (waited 1 s)" in err[0], err
        assert elapsed < 6, elapsed


def test_unreachable_proxy_fails_fast_by_default(capsys):
    started = time.monotonic()
    rc = main(["studies", "--storage", f"grpc://127.0.0.1:{free_port()}"])
    assert rc == 2 and time.monotonic() - started < proxy.OPEN_WAIT_S + 5
    assert "hpo storage-proxy" in capsys.readouterr().err


def test_missing_grpcio_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "grpc", None)  # `import grpc` now raises ImportError
    for command in (["studies", "--storage", "grpc://127.0.0.1:13000"],
                    ["storage-proxy", "--storage", "sqlite:///x.db"]):
        rc = main(command)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "pip install 'cifar-hpo[grpc]'" in err[0], err


def test_proxy_urls_normalize_and_mask():
    assert normalize_url("GRPC://LocalHost:13000/") == "grpc://localhost:13000"
    assert normalize_url("grpc://[::1]:13000") == "grpc://[::1]:13000"
    assert "hunter2" not in mask_url("grpc://bob:hunter2@127.0.0.1:13000")
    assert mask_url("grpc://127.0.0.1:13000") == "grpc://127.0.0.1:13000"


# ---------------------------------------------------------------- the other commands through the proxy

def test_studies_report_and_dashboard_read_through_the_proxy(tmp_path, proxied_sqlite, capsys):
    make_study(proxied_sqlite.database, "r", StudySettings(space="cnn", data_fingerprint="abc123", epochs=3))
    assert main(["studies", "--storage", proxied_sqlite.url]) == 0
    assert "r " in capsys.readouterr().out
    assert main(["report", "--study", "r", "--storage", proxied_sqlite.url, "--out", str(tmp_path / "rep")]) == 0
    assert json.loads((tmp_path / "rep" / "ranking.json").read_text())
    pytest.importorskip("optuna_dashboard")
    out = tmp_path / "dashboard.out"
    with out.open("w") as sink:
        dashboard = subprocess.Popen([sys.executable, "-m", "cifar_hpo.search.cli", "dashboard", "--storage",
                                      proxied_sqlite.url, "--port", "0"], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "open http://" in out.read_text() or dashboard.poll() is not None, "the dashboard")
        base = re.search(r"open (http://[^/\s]+)", out.read_text()).group(1)
        with urllib.request.urlopen(base + "/api/studies", timeout=30) as response:
            names = [s["study_name"] for s in json.loads(response.read())["study_summaries"]]
        assert names == ["r"]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def test_launch_and_its_workers_join_a_study_through_the_proxy(tmp_path, tiny_npz, proxied_sqlite, capsys):
    """hpo launch hands grpc:// to its `hpo worker` processes and their trial processes; the study's budget is
    met already, so they open, check it and stop without training."""
    study = create_tiny_study(proxied_sqlite.url, "s", tiny_npz, n_trials=2)
    for curve in ([0.3, 0.4], [0.2, 0.5]):
        study.add_trial(make_trial(dict(SMALL_CNN), curve))
    rc = main(["launch", "--study", "s", "--storage", proxied_sqlite.url, "--workers", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"study s in {proxied_sqlite.url}: starting 2 workers" in captured.err
    assert "2 finished (2 complete, 0 pruned)" in captured.out
    assert "on PostgreSQL or a storage proxy pass --artifacts" in captured.err


@pytest.fixture
def proxied_sqlite(tmp_path: Path) -> Iterator[Proxy]:
    running = Proxy(f"sqlite:///{tmp_path / 'proxied.db'}", tmp_path)
    yield running
    running.stop(signal.SIGKILL)


def test_restarted_proxy_takes_params_of_trials_created_before_it(tmp_path):
    """A restarted proxy's trial cache is empty; Optuna's own cache raises KeyError for such a trial."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    study = optuna.create_study(study_name="c", storage=make_storage(url))
    trial = study.ask()  # created through the proxy before its restart
    distribution = optuna.distributions.FloatDistribution(0, 1)
    with pytest.raises(KeyError):
        optuna.storages._CachedStorage(make_storage(url)).set_trial_param(trial._trial_id, "x", 0.5, distribution)
    proxy.ProxyTrialCache(make_storage(url)).set_trial_param(trial._trial_id, "x", 0.5, distribution)
    assert optuna.load_study(study_name="c", storage=url).trials[0].params == {"x": 0.5}


# ---------------------------------------------------------------- the liveness watch, on a scripted clock

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def running_trial(trial_id: int, value: float | None) -> optuna.trial.FrozenTrial:
    attrs = {} if value is None else {LIVENESS_ATTR: value}
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs=attrs)
    trial._trial_id = trial_id  # no public API sets a trial's storage id (as a storage would)
    return trial


def test_liveness_watch_fails_only_values_that_stood_still_for_the_grace():
    clock = Clock()
    watch = LivenessWatch(interval_s=2, grace_s=3, clock=clock)
    for second in range(0, 10):
        clock.now = float(second)
        live = running_trial(1, float(second // 2))  # beats every 2 s
        dead = running_trial(2, 0.0)  # never beats again
        native = running_trial(3, None)  # a direct RDB worker's trial: Optuna's own heartbeat judges it
        stale = watch.stale([live, dead, native])
        assert stale == ([2] if second >= 3 else []), (second, stale)


def test_liveness_watch_starts_afresh_after_it_could_not_look():
    """A proxy outage silences beats and looks alike: what stood still meanwhile proves nothing."""
    clock = Clock()
    watch = LivenessWatch(interval_s=2, grace_s=3, clock=clock)
    assert watch.stale([running_trial(1, 1.0)]) == []
    clock.now = 60.0  # the first look after the outage: the value is the old one, its beat has not landed yet
    assert watch.stale([running_trial(1, 1.0)]) == []
    clock.now = 62.0
    assert watch.stale([running_trial(1, 1.0)]) == []
    clock.now = 63.0  # and now it has stood still for the grace, in looks no more than an interval apart
    assert watch.stale([running_trial(1, 1.0)]) == [1]
