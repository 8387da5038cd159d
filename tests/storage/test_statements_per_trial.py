"""Statements per trial, counted: the service's worker sends no more to the database than plain Optuna for the
same scripted trials (benchmarks/storage_statements.py), and still heartbeats; each saving, counted alone."""

from __future__ import annotations

import importlib.util
import math
import sys
import uuid
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Iterator

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from cifar_hpo.search.runtime import worker
from cifar_hpo.search.runtime.worker import run_worker
from cifar_hpo.storage import make_storage
from cifar_hpo.storage.statements import count_statements
from hpo_testkit import ROOT

TRIALS, WARMUP = 8, 2


def load_benchmark() -> ModuleType:
    """The benchmark script itself (benchmarks/ is not a package): the test runs exactly what it measures."""
    spec = importlib.util.spec_from_file_location("storage_statements", ROOT / "benchmarks" / "storage_statements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(plain URL, service URL, study name): separate SQLite files, or one PostgreSQL server."""
    name = f"stmt-{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'plain.db'}", f"sqlite:///{tmp_path / 'service.db'}", name
        return
    url = request.getfixturevalue("postgres_url")
    yield url, url, name
    try:
        optuna.delete_study(study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg://", 1))
    except KeyError:
        pass


def test_service_sends_no_more_than_plain_optuna_per_trial_and_still_heartbeats(urls) -> None:
    plain_url, service_url, name = urls
    bench = load_benchmark()
    plain = bench.run_trials("plain", plain_url, TRIALS, WARMUP, name)
    service = bench.run_trials("service", service_url, TRIALS, WARMUP, name)
    assert service["trial_states"] == plain["trial_states"]  # the same trials, pruned at the same epochs
    for measure in ("statements", "round_trips", "begins"):
        assert service["per_trial"][measure] <= 1.0 * plain["per_trial"][measure], (measure, service, plain)
    assert service["heartbeat_rows"] == TRIALS and plain["heartbeat_rows"] == 0
    # Every transaction ends in COMMIT: on a ROLLBACK psycopg 3 forgets the statements it prepared, and each of
    # Optuna's statements ran unprepared again (the budget count's rollback did that once a trial).
    assert service["per_trial"]["rollbacks"] == 0 == plain["per_trial"]["rollbacks"]
    # Every trial beats once as it starts (heartbeat_rows above), from Optuna's heartbeat thread, while the
    # measured window's edges are snapshots the objective takes as a trial starts: a beat at an edge can fall
    # either side of it, so the window holds at least one beat fewer than the trials it spans.
    measured = TRIALS - 1 - WARMUP
    assert round(service["per_trial_by_cause"]["heartbeat"]["statements"] * measured) >= measured - 1


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


def test_stale_checks_on_a_schedule_answer_from_the_last_check(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 'stale.db'}", heartbeat_interval=4)
    study_id = optuna.create_study(study_name="stale", storage=storage)._study_id
    storage.check_stale_trials_every(study_id, 3600.0)
    with count_statements(storage.engine) as counter:
        assert storage._get_stale_trial_ids(study_id) == []
        first = counter.counts().statements
        assert storage._get_stale_trial_ids(study_id) == []  # within the period: no query
    assert first >= 1 and counter.counts().statements == first
    assert 3500 < storage.next_stale_check_in(study_id) <= 3600
    storage.check_stale_trials_every(study_id, None)  # off the schedule: every call queries
    assert storage.next_stale_check_in(study_id) == 0
    with count_statements(storage.engine) as counter:
        storage._get_stale_trial_ids(study_id)
    assert counter.counts().statements == first


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_dead_workers_trial_is_failed_and_retried_on_the_schedule(tmp_path: Path) -> None:
    """Crash recovery still works: a RUNNING trial whose heartbeat stopped is failed and run again."""
    storage = make_storage(f"sqlite:///{tmp_path / 'dead.db'}", heartbeat_interval=1)
    study = optuna.create_study(study_name="dead", storage=storage, direction="maximize")
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(dead._trial_id)
    with storage.engine.begin() as conn:  # its worker died long ago
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00'"))
    run_worker(study, lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    trials = study.get_trials(deepcopy=False)
    assert trials[dead.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == dead.params


def test_a_trial_numbered_within_the_budget_needs_no_surplus_count(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 'budget.db'}")
    study = optuna.create_study(study_name="budget", storage=storage, direction="maximize")
    with count_statements(storage.engine, label=lambda what: _caller_named("_active_before")) as counter:
        run_worker(study, lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)  # all three near the budget
    assert len(study.trials) == 3 and counter.counts("_active_before").round_trips == 0


def test_far_from_the_budget_a_worker_does_not_count_trials(tmp_path: Path) -> None:
    """Trial numbers far below the budget say there is room: the budget is counted once at the start, then
    again only within the margin of the end (2 x running + 3 numbers), and the budget is still met exactly."""
    storage = make_storage(f"sqlite:///{tmp_path / 'far.db'}")
    study = optuna.create_study(study_name="far", storage=storage, direction="maximize")
    with count_statements(storage.engine, label=lambda what: _caller_named("_budget_slack")) as counter:
        run_worker(study, lambda trial: trial.suggest_float("x", 0, 1), n_trials=100, max_trials=10)
    assert len(study.trials) == 10 and counter.counts("_budget_slack").select == 1
    with count_statements(storage.engine, label=lambda what: _caller_named("_budget_slack")) as counter:
        run_worker(study, lambda trial: trial.suggest_float("x", 0, 1), n_trials=14)  # 10 done: near the end
    # the start, then after trials 11, 12 and 13 (numbers within 3 of the budget; nothing else runs)
    assert len(study.trials) == 14 and counter.counts("_budget_slack").select == 4


def test_a_trial_beyond_the_budget_steps_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers passed the budget check at once: the one whose trial is numbered beyond it steps back."""
    storage = make_storage(f"sqlite:///{tmp_path / 'surplus.db'}")
    study = optuna.create_study(study_name="surplus", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)  # the other worker's trial
    answers = iter([(1, 0)])  # this worker counted before the other's trial finished
    monkeypatch.setattr(worker, "_budget_slack", lambda *args: next(answers, (0, 0)))
    outcome = run_worker(study, lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    surplus = study.trials[1]
    assert outcome.reason == "done" and surplus.state == TrialState.FAIL and surplus.user_attrs["surplus"]


def _caller_named(name: str) -> str:
    """``name`` when a function of that name is on the caller's stack, else "" (a counter's label)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == name:
            return name
        frame = frame.f_back
    return ""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def heartbeat_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[optuna.storages.RDBStorage]:
    url = (f"sqlite:///{tmp_path / 'beats.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    storage = make_storage(url, heartbeat_interval=10)
    yield storage
    storage.engine.dispose()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_the_stale_check_answers_as_optuna_does_in_one_statement(heartbeat_storage) -> None:
    """Fresh, stale (heartbeat moved back past the grace period), never-beaten and finished trials: the one
    query finds exactly the trials Optuna's own three-query check finds, on both databases."""
    storage = heartbeat_storage
    study = optuna.create_study(study_name=f"beats-{uuid.uuid4().hex[:8]}", storage=storage)
    fresh, stale, silent, done = (study.ask() for _ in range(4))
    for trial in (fresh, stale, done):
        storage.record_heartbeat(trial._trial_id)
    study.tell(done, 1.0)
    back = ("heartbeat - INTERVAL '120 seconds'" if storage.engine.dialect.name == "postgresql"
            else "datetime(heartbeat, '-120 seconds')")  # two minutes back: past the 10 s interval's grace period
    with storage.engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"UPDATE trial_heartbeats SET heartbeat = {back} WHERE trial_id IN (:a, :b)"),
                           {"a": stale._trial_id, "b": done._trial_id})
    storage.check_stale_trials_every(study._study_id, None)
    optunas = optuna.storages.RDBStorage._get_stale_trial_ids(storage, study._study_id)
    with count_statements(storage.engine) as counter:
        ours = storage._get_stale_trial_ids(study._study_id)
    assert ours == optunas == [stale._trial_id]
    assert silent._trial_id not in ours and fresh._trial_id not in ours
    assert counter.counts().statements == 1
    optuna.delete_study(study_name=study.study_name, storage=storage)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_heartbeat_is_one_statement_and_keeps_a_trial_fresh(heartbeat_storage) -> None:
    storage = heartbeat_storage
    study = optuna.create_study(study_name=f"beat-{uuid.uuid4().hex[:8]}", storage=storage)
    trial = study.ask()
    with count_statements(storage.engine) as counter:
        storage.record_heartbeat(trial._trial_id)  # the first beat inserts the row
    assert (counter.counts().insert, counter.counts().statements) == (1, 1)
    with storage.engine.begin() as connection:  # silent for two minutes: stale
        connection.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = :old WHERE trial_id = :id"),
                           {"old": datetime(2000, 1, 1), "id": trial._trial_id})
    storage.check_stale_trials_every(study._study_id, None)
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]
    with count_statements(storage.engine) as counter:
        storage.record_heartbeat(trial._trial_id)  # later beats update it, in the same one statement
    assert counter.counts().statements == 1
    assert storage._get_stale_trial_ids(study._study_id) == []  # beating again made it fresh
    assert optuna.storages.RDBStorage._get_stale_trial_ids(storage, study._study_id) == []  # Optuna agrees
    optuna.delete_study(study_name=study.study_name, storage=storage)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_report_is_one_insert_and_keeps_optunas_rules(heartbeat_storage) -> None:
    """A reported value is stored in one statement while the trial runs (Optuna's path takes 3); values that are
    not finite, a rewritten step, a finished trial and an unknown trial behave as in Optuna's own storage."""
    storage = heartbeat_storage
    study = optuna.create_study(study_name=f"report-{uuid.uuid4().hex[:8]}", storage=storage)
    trial = study.ask()
    with count_statements(storage.engine) as counter:
        trial.report(0.25, 1)
    assert (counter.counts().insert, counter.counts().statements) == (1, 1)
    # PostgreSQL: in autocommit, no BEGIN or COMMIT travels with it (see the next test); SQLite: its transaction
    assert counter.counts().round_trips == {"postgresql": 1, "sqlite": 3}[storage.engine.dialect.name]
    storage.set_trial_intermediate_value(trial._trial_id, 2, float("nan"))
    storage.set_trial_intermediate_value(trial._trial_id, 3, float("-inf"))
    storage.set_trial_intermediate_value(trial._trial_id, 1, 0.5)  # the storage API may rewrite a step
    values = storage.get_trial(trial._trial_id).intermediate_values
    assert values[1] == 0.5 and math.isnan(values[2]) and values[3] == float("-inf") and len(values) == 3
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_intermediate_value(trial._trial_id, 4, 0.75)
    with pytest.raises(KeyError):
        storage.set_trial_intermediate_value(trial._trial_id + 10**6, 1, 0.75)
    assert storage.get_trial(trial._trial_id).intermediate_values.keys() == {1, 2, 3}
    optuna.delete_study(study_name=study.study_name, storage=storage)


@pytest.mark.postgres
def test_a_one_statement_write_on_postgresql_leaves_no_transaction_to_end(postgres_url: str) -> None:
    """What the counter assumes of autocommit, read from psycopg itself: after the statement the server is idle
    (no COMMIT to send), where a transaction's statement leaves it in the transaction."""
    psycopg = pytest.importorskip("psycopg")
    from cifar_hpo.storage import resilient_rdb

    engine = make_storage(postgres_url).engine
    idle, in_transaction = psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS
    with resilient_rdb._one_statement(engine) as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))
        assert connection.connection.dbapi_connection.info.transaction_status == idle
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))
        assert connection.connection.dbapi_connection.info.transaction_status == in_transaction
    with count_statements(engine) as counter, resilient_rdb._one_statement(engine) as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))
    assert (counter.counts().statements, counter.counts().round_trips) == (1, 1)
    engine.dispose()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_suggestion_after_a_parameters_first_is_one_insert_and_keeps_optunas_rules(heartbeat_storage) -> None:
    """Once the study knows a parameter's distribution, a suggestion is one statement (Optuna's path takes 2);
    an incompatible distribution, a finished trial and a parameter set twice fail as in Optuna's own storage."""
    storage = heartbeat_storage
    study = optuna.create_study(study_name=f"param-{uuid.uuid4().hex[:8]}", storage=storage)
    first = study.ask()
    first.suggest_float("x", 0, 1)  # the study's first "x": Optuna's path reads the distribution
    study.tell(first, 1.0)
    trial = study.ask()
    internal = optuna.distributions.FloatDistribution(0, 1)
    with count_statements(storage.engine) as counter:  # what Trial.suggest_float asks of the storage (Optuna's
        study._storage.set_trial_param(trial._trial_id, "x", 0.25, internal)  # cache layer passes the distribution)
    assert (counter.counts().insert, counter.counts().statements) == (1, 1)
    assert storage.get_trial(trial._trial_id).params == {"x": 0.25}
    with pytest.raises(ValueError):  # the same name with another kind of distribution
        study._storage.set_trial_param(trial._trial_id, "x", 3, optuna.distributions.IntDistribution(0, 10))
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # set twice: the table's unique key, as in Optuna
        storage._set_trial_param(trial._trial_id, "x", 0.5, internal, internal)
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage._set_trial_param(trial._trial_id, "y", 0.5, internal, internal)
    assert storage.get_trial(trial._trial_id).params == {"x": 0.25}
    optuna.delete_study(study_name=study.study_name, storage=storage)
