"""Counting what an engine sends to its database: statements by kind, transactions and pings.

Counted, not timed, so a per-trial cost can be a test with a threshold (benchmarks/storage_statements.py,
tests/storage/test_statements_per_trial.py). Three SQLAlchemy hooks see every round trip:

- ``before_cursor_execute``: each statement, by its first keyword. Transaction control (BEGIN, BEGIN
  IMMEDIATE, COMMIT, ...) sent as text is not a data statement: hpo's explicit ``BEGIN IMMEDIATE`` on SQLite
  and the driver's implicit BEGIN of plain Optuna are both one transaction, counted by the next hook.
- ``begin``/``commit``/``rollback`` connection events: one transaction each, begun and ended (none on a
  connection in autocommit, where the driver sends no BEGIN or COMMIT).
- ``Dialect.do_ping``: a pool pre-ping (or any other liveness ping) goes to the DBAPI connection directly
  and fires no cursor event, so the dialect's ping method is wrapped while counting.

Round trips = statements + begins + commits + rollbacks + pings (an implicit BEGIN counts as one, as it is
on PostgreSQL; in-process SQLite has no network, but the same count keeps the two modes comparable).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator

import sqlalchemy
from sqlalchemy import event

DATA_KINDS = ("select", "insert", "update", "delete", "other")
_TRANSACTION_CONTROL = frozenset({"begin", "commit", "rollback", "savepoint", "release", "end", "start"})
UNLABELLED = ""


@dataclass
class StatementCounts:
    """Counts of one label (or all): data statements by kind, transactions and pings."""

    select: int = 0
    insert: int = 0
    update: int = 0
    delete: int = 0
    other: int = 0
    begins: int = 0
    commits: int = 0
    rollbacks: int = 0
    pings: int = 0
    transaction_control_sql: int = 0  # BEGIN IMMEDIATE and the like sent as text; part of ``begins``, not extra

    @property
    def statements(self) -> int:
        return self.select + self.insert + self.update + self.delete + self.other

    @property
    def round_trips(self) -> int:
        return self.statements + self.begins + self.commits + self.rollbacks + self.pings

    def __add__(self, other: StatementCounts) -> StatementCounts:
        return StatementCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: StatementCounts) -> StatementCounts:
        return StatementCounts(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        counts = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**counts, "statements": self.statements, "round_trips": self.round_trips}


def statement_kind(sql: str) -> str:
    """"select", "insert", "update", "delete", "other", or "transaction" for transaction control."""
    words = sql.lstrip(" \t\r\n(").split(None, 1)
    word = words[0].lower() if words else ""
    if word in _TRANSACTION_CONTROL:
        return "transaction"
    if word == "with":  # a CTE: the statement's verb follows it; SELECT is what Optuna's queries use
        return "select"
    return word if word in DATA_KINDS else "other"


@dataclass
class StatementCounter:
    """Counts per label: ``label(what)`` names the cause of each event (e.g. from the caller's stack; ``what``
    is a field of StatementCounts), ``UNLABELLED`` when none is given. Thread-safe: heartbeat and reaper
    threads share the engine."""

    label: Callable[[str], str] = lambda what: UNLABELLED
    by_label: dict[str, Counter] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, what: str) -> None:
        name = self.label(what)
        with self._lock:
            self.by_label.setdefault(name, Counter())[what] += 1

    def counts(self, label: str | None = None) -> StatementCounts:
        """All counts so far (of one label, if given)."""
        with self._lock:
            total = sum((c for name, c in self.by_label.items() if label is None or name == label), Counter())
        return _as_counts(total)

    def labels(self) -> dict[str, StatementCounts]:
        """Counts so far of each label (one consistent snapshot)."""
        with self._lock:
            return {name: _as_counts(tally) for name, tally in self.by_label.items()}


def _as_counts(tally: Counter) -> StatementCounts:
    return StatementCounts(**{f.name: tally[f.name] for f in fields(StatementCounts)})


def difference(after: dict[str, StatementCounts], before: dict[str, StatementCounts]) -> dict[str, StatementCounts]:
    """Per-label counts between two ``labels()`` snapshots (labels with nothing new are left out)."""
    changes = {name: counts - before.get(name, StatementCounts()) for name, counts in after.items()}
    return {name: counts for name, counts in changes.items() if counts.round_trips or counts.transaction_control_sql}


@contextlib.contextmanager
def count_statements(engine: sqlalchemy.engine.Engine | type[sqlalchemy.engine.Engine],
                     label: Callable[[str], str] | None = None) -> Iterator[StatementCounter]:
    """Count what ``engine`` sends to the database inside the block; the listeners go when it ends.

    Given the Engine class instead, every engine counts, also one created inside the block (a storage's own
    set-up); pings are then not seen (no dialect exists yet to wrap), nor are they sent: a new engine's
    connections are fresh, and the pool pings none of those.
    """
    counter = StatementCounter(label=label) if label is not None else StatementCounter()

    def before_cursor_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        kind = statement_kind(statement)
        counter.add("transaction_control_sql" if kind == "transaction" else kind)

    def transaction_event(what: str) -> Callable[[Any], None]:
        def listener(conn: Any) -> None:
            # In autocommit a begin, commit or rollback sends nothing: each statement is its own transaction.
            if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                counter.add(what)
        return listener

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", before_cursor_execute),
        ("begin", transaction_event("begins")),
        ("commit", transaction_event("commits")),
        ("rollback", transaction_event("rollbacks")),
    ]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        with _pings_counted(engine.dialect, counter) if isinstance(engine, sqlalchemy.engine.Engine) \
                else contextlib.nullcontext():
            yield counter
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)


@contextlib.contextmanager
def _pings_counted(dialect: sqlalchemy.engine.Dialect, counter: StatementCounter) -> Iterator[None]:
    """Wrap this dialect instance's ``do_ping``, where pool_pre_ping and any other pinger send their ping."""
    shadowed = dialect.__dict__.get("do_ping")  # another counter's wrapper, if counting is nested
    original_ping = dialect.do_ping

    def counted_ping(dbapi_connection: Any) -> bool:
        counter.add("pings")
        return original_ping(dbapi_connection)

    dialect.do_ping = counted_ping  # type: ignore[method-assign]
    try:
        yield
    finally:
        if shadowed is None:
            dialect.__dict__.pop("do_ping", None)  # back to the class's method
        else:
            dialect.do_ping = shadowed  # type: ignore[method-assign]
