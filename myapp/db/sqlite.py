"""SQLite made transactional: the one place that works around pysqlite and zope.sqlalchemy.

Two library limits meet here:

1. The ``sqlite3`` driver (pysqlite) begins transactions lazily, only before
   DML, and never emits ``BEGIN`` for ``SAVEPOINT`` or DDL. A released
   savepoint then survives an outer rollback. SQLAlchemy documents the fix
   ("Serializable isolation / Savepoints / Transactional DDL" in its SQLite
   dialect notes): clear the driver's isolation level on connect and emit
   ``BEGIN`` ourselves when SQLAlchemy begins a transaction.
   :func:`install` does exactly that, plus ``PRAGMA foreign_keys=ON``, a busy
   timeout and WAL journaling for file databases.

2. zope.sqlalchemy refuses savepoints for engines whose driver name is
   ``sqlite`` (``TypeError: Savepoints unsupported``) because of limit 1.
   :func:`savepoints_supported` tells the bridge (:mod:`myapp.db.bridge`)
   that an engine carries the fix, and the bridge's data manager then allows
   ``transaction.savepoint()``. Both halves are proved by
   ``tests/db/test_sqlite.py``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine


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


def _on_begin(conn: Connection) -> None:
    # SQLAlchemy began a transaction: make SQLite begin one too.
    conn.exec_driver_sql("BEGIN")


def install(engine: Engine) -> Engine:
    """Apply the pysqlite workaround to ``engine`` (idempotent); return the engine."""
    if engine.dialect.name != "sqlite" or savepoints_supported(engine):
        return engine
    memory = engine.url.database in (None, "", ":memory:")
    event.listen(engine, "connect", _on_connect if memory else _on_connect_file)
    event.listen(engine, "begin", _on_begin)
    return engine


def savepoints_supported(engine: Engine) -> bool:
    """True unless ``engine`` is SQLite without :func:`install` (then SAVEPOINT is unsafe)."""
    if engine.dialect.name != "sqlite":
        return True
    return event.contains(engine, "begin", _on_begin)
