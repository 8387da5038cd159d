"""Storage URLs, SQLite settings, and the one-line errors of bad storage input."""

import os
import subprocess
import sys
import textwrap

import optuna
import pytest

from hpo_testkit import ROOT as REPO_ROOT
from cifar_hpo.search.cli import main
from cifar_hpo.storage.errors import StorageError
from cifar_hpo.storage import make_storage, mask_url
from cifar_hpo.storage.urls import normalize_url

ROOT = str(REPO_ROOT)


def test_passwords_are_masked():
    assert mask_url("postgresql://bob:s3cr3t@db:5432/hpo") == "postgresql://bob:***@db:5432/hpo"
    assert mask_url("postgresql+psycopg://bob:p@ss@db/hpo") == "postgresql+psycopg://bob:***@db/hpo"
    assert mask_url("sqlite:///hpo.db") == "sqlite:///hpo.db"


def test_relative_sqlite_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_url("sqlite:///hpo.db") == f"sqlite:///{tmp_path / 'hpo.db'}"
    with pytest.raises(StorageError, match="folder .* does not exist"):
        normalize_url("sqlite:///no/such/dir/hpo.db")


def test_sqlite_storage_uses_wal_and_a_busy_timeout(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}")
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30_000
    assert storage.get_heartbeat_interval() == 30


def test_joining_never_creates_a_database(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        make_storage(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("url, message", [
    ("not a url", "is not a database URL"),
    ("mysql://root@127.0.0.1/test", "unsupported database 'mysql'"),
    ("postgresql://postgres@127.0.0.1:1/x", "cannot open storage"),
])
def test_bad_storage_is_one_line_exit_2(url, message, capsys):
    rc = main(["worker", "--study", "nope", "--storage", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_unknown_study_on_sqlite(tmp_path, capsys):
    db = tmp_path / "s.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    rc = main(["worker", "--study", "nope", "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "study 'nope' does not exist" in err[0] and "other" in err[0]
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["other"]


def test_password_never_printed(capsys):
    rc = main(["worker", "--study", "nope", "--storage", "postgresql://bob:hunter2@127.0.0.1:1/x"])
    err = capsys.readouterr().err
    assert rc == 2 and "hunter2" not in err and "bob:***@" in err


WRITER = textwrap.dedent("""
    import sys, time
    import optuna
    from cifar_hpo.storage import make_storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(sys.argv[1], heartbeat_interval=5)
    study = optuna.load_study(study_name="busy", storage=storage)
    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for step in range(5):
            trial.report(x * step, step)
            time.sleep(0.01)
        return x
    study.optimize(objective, n_trials=int(sys.argv[2]))
""")

READER = textwrap.dedent("""
    import sys, time
    import optuna
    from cifar_hpo.storage import make_storage
    storage = make_storage(sys.argv[1])
    study = optuna.load_study(study_name="busy", storage=storage)
    deadline = time.time() + float(sys.argv[2])
    reads = 0
    while time.time() < deadline:
        study.get_trials(deepcopy=False)
        reads += 1
    print(reads)
""")


def test_four_sqlite_writers_and_a_reader_never_lock(tmp_path):
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    optuna.create_study(study_name="busy", storage=make_storage(url))
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, "15"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    reader = subprocess.run([sys.executable, "-c", READER, url, "8"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    outputs = [w.communicate(timeout=120) for w in writers]
    assert reader.returncode == 0, reader.stderr
    assert int(reader.stdout.strip()) > 10
    for writer, (out, err) in zip(writers, outputs):
        assert writer.returncode == 0, err
        assert "locked" not in err.lower()
    states = [t.state for t in optuna.load_study(study_name="busy", storage=url).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 60


# Workers opening, at the same instant, a SQLite file that plain Optuna created (rollback journal): each
# connection switches it to WAL; before the switch was retried, 8 of 320 such opens failed with "locked".
SIMULTANEOUS_OPENS = textwrap.dedent("""
    import multiprocessing, sys, tempfile
    import optuna
    from cifar_hpo.storage import make_storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def open_at_once(url, barrier, results):
        barrier.wait()
        try:
            with make_storage(url, create=False).engine.connect() as conn:
                results.put(conn.exec_driver_sql("PRAGMA journal_mode").scalar())
        except Exception as err:
            results.put(f"{type(err).__name__}: {err}")

    ctx = multiprocessing.get_context("fork")  # no re-import, so the opens really coincide
    workers, rounds = int(sys.argv[1]), int(sys.argv[2])
    outcomes = []
    for _ in range(rounds):
        url = "sqlite:///" + tempfile.mkdtemp() + "/plain.db"
        optuna.create_study(study_name="s", storage=url)  # plain Optuna: rollback journal, not WAL
        barrier, results = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=open_at_once, args=(url, barrier, results)) for _ in range(workers)]
        for proc in procs:
            proc.start()
        outcomes += [results.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join()
    for outcome in outcomes:
        print(outcome)
""")


def test_workers_opening_a_plain_optuna_file_at_once_never_lock(tmp_path):
    run = subprocess.run([sys.executable, "-c", SIMULTANEOUS_OPENS, "16", "12"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    outcomes = run.stdout.splitlines()
    assert len(outcomes) == 16 * 12
    assert set(outcomes) == {"wal"}, [o for o in outcomes if o != "wal"][:3]
