"""MySQL/MariaDB: the one place that knows what the third backend needs.

``mysql://`` and ``mariadb://`` URLs (``DATABASE_URL``, the ini files,
``--dburl``) use the driver :data:`DRIVER` (:func:`driver_url`); SQLAlchemy's
``mysql`` and ``mariadb`` dialects are the same family (:func:`is_mysql`).
Every connection an engine of :func:`install` opens is set up once, in one
statement sent when the driver connects (no round trip per request):

* ``utf8mb4`` on the wire (the driver's ``charset``; the test and ``initdb``
  databases are created ``utf8mb4``, collation :data:`COLLATION`);
* **strict SQL mode** (:data:`SQL_MODE`): an over-long string, a bad date or
  a NULL in a NOT NULL column is an error, never a silent truncation;
* the session **time zone UTC**: ``DATETIME`` columns hold UTC
  (:class:`~myapp.db.model.UTCDateTime` converts aware datetimes to UTC and
  back; ``NOW()`` is UTC too);
* the isolation level **READ COMMITTED** (:data:`ISOLATION_LEVEL`), PostgreSQL's
  default, instead of InnoDB's REPEATABLE READ. myapp's concurrency control
  (``FOR UPDATE`` then a fresh read, unique constraints, ``SKIP LOCKED``
  claims) is written and tested for statement-level snapshots; InnoDB's
  REPEATABLE READ also takes gap locks on every locking read and insert
  check, which turns concurrent inserts next to each other into deadlocks.
  A unit that needs one snapshot asks for it (``db_read_only(snapshot=True)``:
  ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`` at REPEATABLE READ).

Transactional contract: the driver runs with autocommit off, so a transaction
begins at its first statement and ends with SQLAlchemy's ``COMMIT``/``ROLLBACK``;
savepoints are InnoDB's. **DDL is not transactional**: each ``CREATE``,
``ALTER`` or ``DROP`` commits the transaction it runs in (see
:mod:`myapp.commands.migrations`). Transaction characteristics cannot change
inside a transaction (error 1568): a read-only *savepoint* cannot be made
read-only at the database, only by the ORM's refusals (:mod:`myapp.db.writes`).

Retryable errors (:func:`retryable_error`, used by :mod:`myapp.db.retry`), as
MariaDB documents them ("try restarting transaction"): 1213 deadlock (InnoDB
rolled the transaction back), 1205 lock wait timeout (InnoDB rolled back the
statement only, ``innodb_rollback_on_timeout=OFF``; the retry aborts the
whole transaction before the next attempt) and 1020 "record has changed since
last read" (MariaDB 11.6's ``innodb_snapshot_isolation``).
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy.engine import Dialect, Engine

from .events import listen_once

#: the DBAPI driver of ``mysql://`` and ``mariadb://`` URLs (docs/architecture.md says why)
DRIVER = "pymysql"
#: strict mode: errors instead of silent truncation or zero dates
SQL_MODE = "TRADITIONAL"
#: the isolation level of myapp's transactions (see the module docstring)
ISOLATION_LEVEL = "READ COMMITTED"
#: the collation of the databases myapp creates: exact comparisons, like PostgreSQL's
#: (binary, and NO PAD: ``'a' <> 'a '``, so a unique key tells them apart)
COLLATION = "utf8mb4_nopad_bin"
CHARSET = "utf8mb4"
#: what every connection runs once, when it is made
SESSION_SETUP = f"SET SESSION sql_mode = '{SQL_MODE}', time_zone = '+00:00'"
#: MySQL/MariaDB error codes a new attempt of the whole transaction may not meet
RETRYABLE_CODES = {1213: "deadlock", 1205: "lock wait timeout", 1020: "record changed"}
#: "Cannot execute statement in a READ ONLY transaction" (SQLSTATE 25006)
READ_ONLY_CODE = 1792
#: "Connection was killed" (KILL CONNECTION), raised on the killed connection's next statement
CONNECTION_KILLED_CODE = 1927


def is_mysql(dialect_or_name: Dialect | str) -> bool:
    """True for SQLAlchemy's ``mysql`` and ``mariadb`` dialects (or their names)."""
    name = dialect_or_name if isinstance(dialect_or_name, str) else dialect_or_name.name
    return name in ("mysql", "mariadb")


def driver_url(url: str) -> str:
    """``mysql://`` / ``mariadb://`` -> the same URL with myapp's driver; others unchanged."""
    for plain in ("mysql://", "mariadb://"):
        if url.startswith(plain):
            return f"{plain[:-3]}+{DRIVER}://{url[len(plain) :]}"
    return url


def error_code(exc: BaseException) -> int | None:
    """The server's error number of a driver error (``exc.orig`` for SQLAlchemy's), or None."""
    orig = getattr(exc, "orig", exc)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def retryable_error(exc: BaseException) -> bool:
    """Is ``exc`` one of the errors MariaDB documents as "try restarting transaction"?"""
    return error_code(exc) in RETRYABLE_CODES


def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(SESSION_SETUP)
    finally:
        cursor.close()
    _clean.add(dbapi_connection)  # SQLAlchemy rolled back after its first queries


def _on_connect_read_only(dbapi_connection: Any, connection_record: Any) -> None:
    _on_connect(dbapi_connection, connection_record)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET SESSION TRANSACTION READ ONLY")
    finally:
        cursor.close()


def engine_options(options: dict[str, Any], *, read_only: bool = False) -> dict[str, Any]:
    """``create_engine`` options for a MySQL/MariaDB URL: utf8mb4, the isolation level."""
    options = dict(options)
    connect_args = dict(options.pop("connect_args", {}))
    connect_args.setdefault("charset", CHARSET)
    options["connect_args"] = connect_args
    options.setdefault("isolation_level", "AUTOCOMMIT" if read_only else ISOLATION_LEVEL)
    return options


def install(engine: Engine, *, read_only: bool = False) -> Engine:
    """Set up every new connection of ``engine`` (see the module docstring); idempotent.

    ``read_only``: the session is also ``SET SESSION TRANSACTION READ ONLY``:
    every statement, in autocommit or in a transaction, is refused by the
    server if it writes (error 1792, SQLSTATE 25006).
    """
    listener = _on_connect_read_only if read_only else _on_connect
    if not is_mysql(engine.dialect) or not listen_once(engine, "connect", listener):
        return engine
    # On this engine's dialect instance (no engine event: those are dispatched at every
    # statement), myapp knows whether a connection ran a statement since its last COMMIT or
    # ROLLBACK (the server's status flags do not say so for reads): a ROLLBACK with nothing
    # to roll back (the pool's reset of a connection returned after its COMMIT) is not sent,
    # one round trip per write request; SET TRANSACTION is sent only before a transaction.
    dialect = engine.dialect
    for name in ("do_execute", "do_execute_no_params", "do_executemany", "do_commit"):
        setattr(dialect, name, globals()["_" + name].__get__(dialect))
    dialect.do_rollback = _do_rollback.__get__(dialect)  # type: ignore[method-assign]
    return engine


#: raw connections that ran no statement since their last COMMIT or ROLLBACK (or connect)
_clean: weakref.WeakSet[Any] = weakref.WeakSet()
#: raw connections of read engines (autocommit) inside a block myapp began
_blocks: weakref.WeakSet[Any] = weakref.WeakSet()


def _do_execute(dialect: Any, cursor: Any, *args: Any) -> None:
    _clean.discard(cursor.connection)
    type(dialect).do_execute(dialect, cursor, *args)


def _do_execute_no_params(dialect: Any, cursor: Any, *args: Any) -> None:
    _clean.discard(cursor.connection)
    type(dialect).do_execute_no_params(dialect, cursor, *args)


def _do_executemany(dialect: Any, cursor: Any, *args: Any) -> None:
    _clean.discard(cursor.connection)
    type(dialect).do_executemany(dialect, cursor, *args)


def _raw(dbapi_connection: Any) -> Any:
    return getattr(dbapi_connection, "dbapi_connection", dbapi_connection)


def _do_commit(dialect: Any, dbapi_connection: Any) -> None:
    raw = _raw(dbapi_connection)
    type(dialect).do_commit(dialect, dbapi_connection)
    _clean.add(raw)


def _do_rollback(dialect: Any, dbapi_connection: Any) -> None:
    raw = _raw(dbapi_connection)
    if raw in _clean:
        return  # no statement since the last COMMIT/ROLLBACK: nothing to roll back
    type(dialect).do_rollback(dialect, dbapi_connection)
    _clean.add(raw)


def in_transaction(dbapi_connection: Any) -> bool:
    """Did this connection run a statement since its last COMMIT or ROLLBACK (or connect)?

    With autocommit off, MySQL begins a transaction at the first statement, so
    False means the next statement begins one (``SET TRANSACTION`` applies to
    it). Known for the connections of engines made by :func:`install`; others
    count as in a transaction.
    """
    return _raw(dbapi_connection) not in _clean


def begin_block(dbapi_connection: Any, sql: str) -> bool:
    """On a read engine's (autocommit) connection, open a block with ``sql`` unless one is."""
    raw = _raw(dbapi_connection)
    if raw in _blocks:
        return False
    with raw.cursor() as cursor:
        cursor.execute(sql)
    _blocks.add(raw)
    return True


def in_block(dbapi_connection: Any) -> bool:
    """Is a block :func:`begin_block` opened still open on this connection?"""
    return _raw(dbapi_connection) in _blocks


def end_block(dbapi_connection: Any) -> None:
    """End the block :func:`begin_block` opened (a ROLLBACK: it only read); else nothing."""
    raw = _raw(dbapi_connection)
    if raw in _blocks:
        _blocks.discard(raw)
        raw.rollback()
