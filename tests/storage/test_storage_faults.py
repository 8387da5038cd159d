"""Storage faults that no retry cures (disk full, read-only, foreign schema) versus lost connections:
the first stop the worker with one clear line (exit 2), only the second are retried."""

import logging
import sqlite3

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy import event

import cifar_hpo.storage.faults as faults
import cifar_hpo.storage.resilient_rdb as resilient_rdb
from cifar_hpo.search.cli import main
from cifar_hpo.storage.errors import StorageError
from cifar_hpo.search.runtime.worker import run_worker
from cifar_hpo.storage import make_storage
from hpo_testkit import create_tiny_study as create

_is_disconnect = faults._is_disconnect


def storage_fault(err: BaseException) -> str | None:
    return faults.storage_fault(err)  # looked up at call time: the old code had no such function


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def raised(call) -> BaseException:
    try:
        call()
    except Exception as err:  # the real error object, as the driver and SQLAlchemy raise it
        return err
    raise AssertionError("no error raised")


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'c.db'}", poolclass=sqlalchemy.pool.NullPool)  # fresh pragmas
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
    yield engine
    engine.dispose()


def insert(engine: sqlalchemy.Engine, *pragmas: str, rows: int = 1) -> None:
    with engine.begin() as conn:
        for pragma in pragmas:
            conn.exec_driver_sql(pragma)
        for _ in range(rows):
            conn.exec_driver_sql("INSERT INTO t VALUES (?)", ("x" * 2000,))


def test_sqlite_faults_are_named_and_never_taken_for_disconnects(sqlite_engine):
    read_only = raised(lambda: insert(sqlite_engine, "PRAGMA query_only=1"))
    full = raised(lambda: insert(sqlite_engine, "PRAGMA max_page_count=3", rows=50))
    schema = raised(lambda: sqlite_engine.connect().exec_driver_sql("SELECT * FROM trials"))
    assert isinstance(read_only, sqlalchemy.exc.OperationalError) and "readonly" in str(read_only)
    assert "database or disk is full" in str(full)
    for err, words in [(read_only, "the database is read-only (attempt to write a readonly database)"),
                       (full, "the disk is full (database or disk is full)"),
                       (schema, "not Optuna's schema (no such table: trials)")]:
        assert not _is_disconnect(err)
        wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit. ...")
        wrapped.__cause__ = err  # how Optuna's session scope raises it
        assert not _is_disconnect(wrapped)
        assert words in storage_fault(err) and words in storage_fault(wrapped)


@pytest.mark.postgres
def test_postgres_connections_are_pinged_only_after_idling_and_a_dropped_one_is_replaced(postgres_url, monkeypatch):
    """A connection back from the pool within PING_AFTER_IDLE_S is used as it is (a trial's calls come in quick
    succession); one idle for longer is pinged, and if the server dropped it meanwhile, replaced unnoticed."""
    from cifar_hpo.storage.statements import count_statements

    storage = make_storage(postgres_url)
    engine = storage.engine
    admin = sqlalchemy.create_engine(sqlalchemy_url(postgres_url), isolation_level="AUTOCOMMIT")
    try:
        engine.dispose()  # one connection in the pool from here on
        with engine.connect() as conn:  # a fresh connection: not pinged
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with count_statements(engine) as counter:
            with engine.connect() as conn:  # back at once: not pinged
                assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
        assert counter.counts().pings == 0
        monkeypatch.setattr(resilient_rdb, "PING_AFTER_IDLE_S", 0.0)  # from now on every pooled connection counts as idle
        with admin.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        with count_statements(engine) as counter:
            with engine.connect() as conn:
                replaced = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        assert counter.counts().pings >= 1 and replaced != pid
    finally:
        engine.dispose()
        admin.dispose()


@pytest.mark.postgres
def test_postgres_errors_classified_by_sqlstate(postgres_url):
    engine = sqlalchemy.create_engine(sqlalchemy_url(postgres_url), connect_args={"application_name": "hpo-classify"})
    admin = sqlalchemy.create_engine(sqlalchemy_url(postgres_url), isolation_level="AUTOCOMMIT")

    def write_in_read_only_transaction() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql("CREATE TEMP TABLE hpo_classify (x int)")

    def terminated() -> None:
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with admin.connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
            conn.exec_driver_sql("SELECT 1")

    try:
        read_only = raised(write_in_read_only_transaction)
        schema = raised(lambda: engine.connect().exec_driver_sql("SELECT * FROM no_such_table_hpo"))
        dropped = raised(terminated)
    finally:
        engine.dispose()
        admin.dispose()
    assert read_only.orig.sqlstate == "25006" and "read-only" in storage_fault(read_only)
    assert schema.orig.sqlstate == "42P01" and "not Optuna's schema" in storage_fault(schema)
    assert not _is_disconnect(read_only) and not _is_disconnect(schema)
    assert _is_disconnect(dropped) and storage_fault(dropped) is None  # retried on a fresh connection
    import psycopg

    full = sqlalchemy.exc.OperationalError("INSERT ...", {}, psycopg.errors.DiskFull("could not extend file"))
    assert not _is_disconnect(full) and "the disk is full (could not extend file)" in storage_fault(full)
    shutdown = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("terminating connection"))
    assert _is_disconnect(shutdown)


class _PragmaOn:
    """Runs ``pragma`` on every new SQLite connection to ``path`` (any engine): a read-only or full database
    that works even as root, where chmod stops no write."""

    def __init__(self, path, pragma: str) -> None:
        self.path, self.pragma = str(path.resolve()), pragma

    def __call__(self, dbapi_conn, record) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection) and dbapi_conn.execute("PRAGMA database_list").fetchone()[2] == self.path:
            dbapi_conn.execute(self.pragma)

    def __enter__(self):
        event.listen(sqlalchemy.pool.Pool, "connect", self)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(sqlalchemy.pool.Pool, "connect", self)


def integrity(path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_command_on_a_read_only_sqlite_file_is_one_line_exit_2(tmp_path, tiny_npz, capsys, caplog):
    db = tmp_path / "ro.db"
    create(f"sqlite:///{db}", "ro", tiny_npz, n_trials=2)
    with _PragmaOn(db, "PRAGMA query_only=1"):
        rc = main(["worker", "--study", "ro", "--storage", f"sqlite:///{db}", "--recycle-after", "0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and "read-only (attempt to write a readonly database)" in err[0], err
    assert "max length" not in err[0] and "connection lost" not in caplog.text
    assert integrity(db) == "ok"


def _fill_disk(db) -> str:
    with sqlite3.connect(db) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    return f"PRAGMA max_page_count={pages + 8}"


def _make_read_only(db) -> str:
    return "PRAGMA query_only=1"


@pytest.mark.parametrize("fault, words, trial_state", [
    (_fill_disk, "the disk is full (database or disk is full)", TrialState.FAIL),
    (_make_read_only, "the database is read-only (attempt to write a readonly database)", TrialState.RUNNING),
])
def test_storage_fault_mid_trial_stops_the_worker_with_one_line(tmp_path, caplog, fault, words, trial_state):
    """Before: 8x "storage connection lost; retrying", then AssertionError, exit 1, the trial left RUNNING."""
    db = tmp_path / "s.db"
    storage = make_storage(f"sqlite:///{db}", heartbeat_interval=60)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    armed: list[str] = []
    event.listen(storage.engine, "begin", lambda conn: [conn.exec_driver_sql(pragma) for pragma in armed])

    def objective(trial: optuna.trial.Trial) -> float:
        trial.set_user_attr("started", True)
        if trial.number == 0:
            armed.append(fault(db))  # mid-run: from the next transaction on
        for step in range(1000):  # a long history of user attrs fills the few pages left
            trial.set_user_attr(f"history_{step}", "x" * 3000)
        return 1.0

    with caplog.at_level(logging.WARNING), pytest.raises(StorageError) as raised_error:
        run_worker(study, objective, n_trials=3, poll_seconds=0.01)
    message = str(raised_error.value)  # a StorageError: the CLI prints it as one line, exit 2
    assert "\n" not in message and words in message, message
    assert "connection lost" not in caplog.text and "retrying" not in caplog.text
    states = [t.state for t in optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials]
    assert states == [trial_state], states  # FAIL whenever the storage still takes that write
    assert integrity(db) == "ok"
