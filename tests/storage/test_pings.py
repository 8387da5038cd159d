"""Pooled connections are pinged at checkout only after sitting idle, and a dead one is replaced there."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy

from cifar_hpo.storage.pings import ping_idle_connections
from cifar_hpo.storage.statements import count_statements


def test_only_connections_idle_for_a_while_are_pinged(tmp_path: Path) -> None:
    for idle_s, pings in ((3600.0, 0), (0.0, 2)):
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / f'ping-{pings}.db'}")
        ping_idle_connections(engine, idle_s=idle_s)
        with count_statements(engine) as counter:
            for _ in range(3):  # the first checkout is a new connection: never pinged
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT 1"))
        assert counter.counts().pings == pings, idle_s


@pytest.mark.postgres
def test_an_idle_connection_the_server_dropped_is_replaced_at_checkout(postgres_url: str) -> None:
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0)
    ping_idle_connections(engine, idle_s=0.0)
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            pid = conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        with engine.connect() as conn:  # pinged, found dead, replaced: no error reaches the caller
            assert conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()
        admin.dispose()
