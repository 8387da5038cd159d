"""Ping a pooled connection at checkout only when it sat idle: SQLAlchemy's custom pessimistic disconnect
handling (a pool "checkout" listener that raises DisconnectionError), instead of ``pool_pre_ping``.

``pool_pre_ping`` pings at every checkout, and Optuna checks a connection out for every storage call: a
trial's ~60 transactions came with ~60 extra round trips on PostgreSQL (benchmarks/storage_statements.py).
A connection the server dropped is found the same way after a pause, when it is most likely (a restarted
server, an idle timeout of the server or a proxy); one that dies within a burst of calls fails its call,
which storage.urls.retry_on_disconnect retries on a fresh connection, and the worker loop retries the rest.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError

PING_IF_IDLE_S = 5.0
_RETURNED_AT = "cifar_hpo_returned_at"  # key in the pool entry's info; a replaced connection starts without it


class PingIfIdle:
    """Pool listeners: remember when a connection came back; at checkout, ping it if that was long ago."""

    def __init__(self, dialect: sqlalchemy.engine.Dialect, idle_s: float = PING_IF_IDLE_S) -> None:
        self.dialect, self.idle_s = dialect, idle_s

    def checkin(self, dbapi_connection: Any, connection_record: Any) -> None:
        if dbapi_connection is not None:  # None: the connection was invalidated on its way back
            connection_record.info[_RETURNED_AT] = time.monotonic()

    def checkout(self, dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
        returned_at = connection_record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at < self.idle_s:
            return  # new, or in use a moment ago
        try:
            alive = self.dialect.do_ping(dbapi_connection)  # looked up per call: counters wrap it (storage.statements)
        except self.dialect.loaded_dbapi.Error as err:
            raise DisconnectionError(f"pooled connection is gone: {err}") from err
        if not alive:
            raise DisconnectionError("pooled connection is gone")  # the pool replaces it and checks out again


def ping_idle_connections(engine: sqlalchemy.engine.Engine, idle_s: float = PING_IF_IDLE_S) -> PingIfIdle:
    """Attach a PingIfIdle to ``engine``'s pool (once; the engine's pool must not pre-ping as well)."""
    pinger = PingIfIdle(engine.dialect, idle_s)
    event.listen(engine, "checkin", pinger.checkin)
    event.listen(engine, "checkout", pinger.checkout)
    return pinger


def pings_idle_connections(engine: sqlalchemy.engine.Engine) -> bool:
    """Whether ``engine`` has a PingIfIdle attached (pickled storages rebuild their engine and re-attach)."""
    return any(isinstance(getattr(listener, "__self__", None), PingIfIdle)
               for listener in engine.pool.dispatch.checkout)
