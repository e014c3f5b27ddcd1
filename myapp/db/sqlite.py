"""SQLite made transactional: the one place that works around pysqlite and zope.sqlalchemy.

Two library limits meet here:

1. The ``sqlite3`` driver (pysqlite) begins transactions lazily, only before
   DML, and never emits ``BEGIN`` for ``SAVEPOINT`` or DDL. A released
   savepoint then survives an outer rollback. SQLAlchemy documents the fix
   ("Serializable isolation / Savepoints / Transactional DDL" in its SQLite
   dialect notes): clear the driver's isolation level on connect and emit
   ``BEGIN`` ourselves when SQLAlchemy begins a transaction.
   :func:`install` does exactly that, plus ``PRAGMA foreign_keys=ON``, a busy
   timeout and WAL journaling for file databases. The ``BEGIN`` is sent by
   the engine's dialect (its ``do_begin``, a no-op in pysqlite), straight to
   the driver's connection: SQLAlchemy logs it as ``BEGIN (implicit)`` and
   wraps a failure (``database is locked`` after the busy timeout) in its
   ``OperationalError``, ``handle_error`` listeners included. SQLAlchemy's
   recipe uses a ``begin`` event and ``exec_driver_sql`` instead, which costs
   a full statement execution per transaction and, being a connection event,
   makes the engine dispatch events at every statement, commit and rollback.
   Inside :func:`write_intent` it is ``BEGIN IMMEDIATE`` (see
   :mod:`myapp.db.engine`).

2. zope.sqlalchemy refuses savepoints for engines whose driver name is
   ``sqlite`` (``TypeError: Savepoints unsupported``) because of limit 1.
   :func:`savepoints_supported` tells the data manager
   (:mod:`myapp.db.datamanager`) that an engine carries the fix, and it then allows
   ``transaction.savepoint()``. Both halves are proved by
   ``tests/db/test_sqlite.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

_begin_immediate: ContextVar[bool] = ContextVar("myapp.db.sqlite_begin_immediate", default=False)


@contextmanager
def write_intent() -> Iterator[None]:
    """SQLite transactions begun inside the block take the write lock at once (BEGIN IMMEDIATE)."""
    token = _begin_immediate.set(True)
    try:
        yield
    finally:
        _begin_immediate.reset(token)


def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Stop pysqlite from emitting BEGIN itself (and from committing before DDL).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


def _on_connect_file(dbapi_connection: Any, connection_record: Any) -> None:
    _on_connect(dbapi_connection, connection_record)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _do_begin(dbapi_connection: Any) -> None:
    # The dialect's do_begin (pysqlite's is a no-op): make SQLite begin a transaction.
    statement = "BEGIN IMMEDIATE" if _begin_immediate.get() else "BEGIN"
    getattr(dbapi_connection, "dbapi_connection", dbapi_connection).execute(statement)


def install(engine: Engine) -> Engine:
    """Apply the pysqlite workaround to ``engine`` (idempotent); return the engine."""
    if engine.dialect.name != "sqlite" or savepoints_supported(engine):
        return engine
    memory = engine.url.database in (None, "", ":memory:")
    event.listen(engine, "connect", _on_connect if memory else _on_connect_file)
    # On this engine's dialect instance only. Not a "begin" event listener:
    # any ConnectionEvents listener makes SQLAlchemy dispatch engine events
    # at every execution, commit and rollback (measured in docs/benchmarks.md).
    engine.dialect.do_begin = _do_begin  # type: ignore[method-assign]
    return engine


def savepoints_supported(engine: Engine) -> bool:
    """True unless ``engine`` is SQLite without :func:`install` (then SAVEPOINT is unsafe)."""
    if engine.dialect.name != "sqlite":
        return True
    return vars(engine.dialect).get("do_begin") is _do_begin
