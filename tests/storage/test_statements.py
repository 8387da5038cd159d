"""The statement counter counts a known sequence exactly: statements by kind, transactions, pings."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import event, text

from cifar_hpo.storage.statements import StatementCounts, count_statements, difference, statement_kind


@pytest.mark.parametrize("sql, kind", [
    ("SELECT 1", "select"), ("  select x from t", "select"), ("(SELECT 1) UNION (SELECT 2)", "select"),
    ("WITH a AS (SELECT 1) SELECT * FROM a", "select"), ("INSERT INTO t VALUES (1)", "insert"),
    ("UPDATE t SET x = 1", "update"), ("DELETE FROM t", "delete"), ("BEGIN IMMEDIATE", "transaction"),
    ("COMMIT", "transaction"), ("SAVEPOINT sa_1", "transaction"), ("PRAGMA journal_mode=WAL", "other"),
    ("CREATE TABLE t (x INTEGER)", "other"), ("", "other"),
])
def test_statement_kind(sql: str, kind: str) -> None:
    assert statement_kind(sql) == kind


def test_counts_a_known_sequence_exactly(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'count.db'}")
    with count_statements(engine) as counter:
        with engine.begin() as conn:  # one transaction, committed
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            conn.execute(text("INSERT INTO t VALUES (2)"))
        with engine.connect() as conn:  # autobegun, then closed: rolled back
            conn.execute(text("UPDATE t SET x = 3 WHERE x = 1"))
            conn.execute(text("SELECT x FROM t")).all()
            conn.execute(text("DELETE FROM t WHERE x = 2"))
    assert counter.counts() == StatementCounts(select=1, insert=2, update=1, delete=1, other=1, begins=2,
                                               commits=1, rollbacks=1)
    assert counter.counts().statements == 6
    assert counter.counts().round_trips == 6 + 2 + 1 + 1
    with engine.connect() as conn:  # after the block: the listeners are gone
        conn.execute(text("SELECT 1"))
    assert counter.counts().round_trips == 10


def test_an_explicit_begin_is_one_transaction_not_a_statement(tmp_path: Path) -> None:
    """hpo's BEGIN IMMEDIATE on SQLite counts as the transaction plain Optuna begins implicitly."""
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'begin.db'}",
                                      connect_args={"isolation_level": None})
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    with count_statements(engine) as counter:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
    counts = counter.counts()
    assert (counts.statements, counts.begins, counts.commits, counts.transaction_control_sql) == (1, 1, 1, 1)
    assert counts.round_trips == 3


def test_counts_pool_pre_pings_and_restores_the_dialect(tmp_path: Path) -> None:
    """A pre-ping fires no cursor event; the counter still sees it (fresh connections are not pinged)."""
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'ping.db'}", pool_pre_ping=True)
    with count_statements(engine) as counter:
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
    assert (counter.counts().pings, counter.counts().select) == (2, 3)
    assert "do_ping" not in vars(engine.dialect)


def test_labels_split_the_counts_by_cause(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'label.db'}")
    cause = ["setup"]
    with count_statements(engine, label=lambda what: cause[0]) as counter:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        before = counter.labels()
        cause[0] = "work"
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    assert counter.counts("setup") == StatementCounts(other=1, begins=1, commits=1)
    assert difference(counter.labels(), before) == {"work": StatementCounts(insert=1, begins=1, commits=1)}


def test_counts_every_engine_when_given_the_engine_class(tmp_path: Path) -> None:
    """Counting an engine's own construction (a storage that creates its tables) needs the class-wide form."""
    with count_statements(sqlalchemy.engine.Engine) as counter:
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'class.db'}")
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
    assert (counter.counts().select, counter.counts().begins) == (1, 1)
