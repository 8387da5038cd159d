"""make_storage's storages against Optuna's own storage contract (optuna.testing.pytest_storages), plus what
the contract does not see: pickled SQLite storages keep BEGIN IMMEDIATE, and warning filters stay untouched."""

import pickle
import sqlite3
import uuid
import warnings

import optuna
import pytest
import sqlalchemy
from optuna.testing.pytest_storages import StorageTestCase

from cifar_hpo.storage import make_storage


def _postgres_schema_storage(postgres_url: str):
    """A storage in a fresh PostgreSQL schema: the contract expects an empty storage, and the test database
    is shared with other tests (and other runs) at the same time."""
    schema = f"contract_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1),
                                     isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    storage = make_storage(f"{postgres_url}?options=-csearch_path%3D{schema}", heartbeat_interval=60)
    try:
        yield storage
    finally:
        storage.engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage(request, tmp_path):
    """The storage the contract tests run on (overrides optuna.testing's placeholder fixture)."""
    if request.param == "sqlite":
        storage = make_storage(f"sqlite:///{tmp_path / 'contract.db'}", heartbeat_interval=60)
        yield storage
        storage.engine.dispose()
    else:
        yield from _postgres_schema_storage(request.getfixturevalue("postgres_url"))


class TestMakeStorageContract(StorageTestCase):
    """Every test of Optuna's StorageTestCase, on SQLite and PostgreSQL storages built by make_storage."""


def test_pickled_sqlite_storage_keeps_begin_immediate(tmp_path):
    db = tmp_path / "p.db"
    restored = pickle.loads(pickle.dumps(make_storage(f"sqlite:///{db}")))
    with restored.engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("SELECT 1")
        assert conn.connection.dbapi_connection.in_transaction  # a BEGIN was sent (isolation_level=None)
        other = sqlite3.connect(db, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")  # ... an IMMEDIATE one: it holds the write lock already
        other.close()
    study = optuna.create_study(storage=restored)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{db}").trials) == 2


def test_make_storage_leaves_the_callers_warning_filters_alone(tmp_path):
    with warnings.catch_warnings():
        warnings.resetwarnings()
        before = list(warnings.filters)
        make_storage(f"sqlite:///{tmp_path / 'w.db'}")
        assert warnings.filters == before
