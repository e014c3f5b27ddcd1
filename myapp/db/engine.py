"""Engines from Pyramid settings.

SQLite write intent: a deferred SQLite transaction that reads first and then
writes must upgrade its read lock, and in WAL mode that fails at once with
"database is locked" (no busy timeout) when another connection committed
since the read began. Under concurrent writers (8 waitress threads) that was
a 409 for about a third of the API's writes, each of which reads first (the
token, the company). Inside :func:`sqlite_write_intent` (the request guard
sets it for POST, PUT, PATCH and DELETE requests), SQLite engines begin their
transactions with ``BEGIN IMMEDIATE`` instead: the write lock is taken first,
waiting on the busy timeout, and the upgrade can no longer fail. Readers are
never blocked (WAL). Other backends are unaffected.

PostgreSQL's pipelined BEGIN: psycopg begins a transaction lazily, sending
``BEGIN`` and waiting for its answer before the transaction's first
statement: one round trip of its own per transaction. :func:`pipeline_begin`
makes the primary engine send that ``BEGIN`` and the first statement together
(psycopg's pipeline mode, for that one statement only), so a write
transaction costs one round trip per statement plus its ``COMMIT``
(``POST /items``: BEGIN+INSERT, UPDATE, COMMIT = 3). Errors are reported as
before (the pipeline syncs before the statement returns). It costs client CPU:
psycopg's pipeline machinery is about 40 µs (~200k instructions) per write
transaction, against one network round trip saved (200-1000 µs between hosts);
``sqlalchemy.pipeline_begin = false`` turns it off (loopback-only deployments).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url

from . import mysql, sqlite
from .settings import database_url, engine_options, normalise_url

#: SQLite transactions begun inside the block take the write lock at once (BEGIN IMMEDIATE).
sqlite_write_intent = sqlite.write_intent


def engine_from_settings(settings: Mapping[str, Any], prefix: str = "sqlalchemy.") -> Engine:
    """Create the engine described by ``settings`` (see :mod:`myapp.db.settings`).

    SQLite engines get the transactional workaround of :mod:`myapp.db.sqlite`
    and their directory is created; PostgreSQL URLs use psycopg 3; MySQL/MariaDB
    engines get utf8mb4, strict mode, UTC and READ COMMITTED (:mod:`myapp.db.mysql`).
    """
    return create_engine_for(database_url(settings, prefix), **engine_options(settings, prefix))


def create_engine_for(url: str, **options: Any) -> Engine:
    """``create_engine`` with myapp's per-dialect rules applied (the URL normalised first)."""
    parsed = make_url(normalise_url(url) if isinstance(url, str) else url)
    pipelined = options.pop("pipeline_begin", True)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
            options.pop("pool_pre_ping", None)
        else:
            for key in ("pool_size", "max_overflow", "pool_timeout"):
                options.pop(key, None)
        options.setdefault("connect_args", {})["check_same_thread"] = False
        return sqlite.install(create_engine(parsed, **options))
    if mysql.is_mysql(parsed.get_backend_name()):
        return mysql.install(create_engine(parsed, **mysql.engine_options(options)))
    engine = create_engine(parsed, **options)
    if pipelined and engine.dialect.driver == "psycopg":
        pipeline_begin(engine)
    return engine


def pipeline_begin(engine: Engine) -> Engine:
    """Send the BEGIN of each transaction together with its first statement (PostgreSQL).

    psycopg begins a transaction lazily and waits for its ``BEGIN`` to be
    answered before sending the first statement: one round trip of its own.
    Here, when SQLAlchemy begins a transaction (the dialect's ``do_begin``),
    the idle psycopg connection is switched to autocommit (a client-side
    flag, no I/O) and the ``BEGIN`` is owed; the first statement executed
    through SQLAlchemy sends it in psycopg's pipeline mode, ``BEGIN`` and the
    statement in one round trip (errors are raised as before: the pipeline is
    synced before the statement returns). From then on the connection is in
    an explicit transaction block; ``COMMIT``/``ROLLBACK`` end it and the
    connection leaves autocommit again. A transaction that runs no statement
    sends nothing at all.

    One thing differs: between the begin and the first statement, a raw
    DBAPI cursor (``connection.connection.cursor()``) runs outside the
    transaction. Run a statement through SQLAlchemy first
    (``session.connection().exec_driver_sql("SELECT 1")``).

    Installed on this engine's dialect instance (no engine event: those would
    make SQLAlchemy dispatch events at every statement); idempotent; a no-op
    where libpq has no pipeline mode. Returns the engine.
    """
    dialect = engine.dialect
    if not psycopg.Pipeline.is_supported() or "do_begin" in vars(dialect):
        return engine
    cls = type(dialect)
    owed: weakref.WeakSet[Any] = weakref.WeakSet()  # raw connections owing their BEGIN
    flipped: weakref.WeakSet[Any] = weakref.WeakSet()  # switched to autocommit by do_begin

    def do_begin(dbapi_connection: Any) -> None:
        raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
        if raw.autocommit or raw.info.transaction_status != IDLE:
            return  # an AUTOCOMMIT connection, or a block is open already
        raw.autocommit = True
        flipped.add(raw)
        owed.add(raw)

    def settle(raw: Any) -> bool:
        """Pop the owed BEGIN of ``raw``: True if the caller must send it."""
        if raw in owed:
            owed.discard(raw)
            return True
        return False

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        raw = cursor.connection
        if not settle(raw):
            cls.do_execute(dialect, cursor, statement, parameters, context)
        elif getattr(cursor, "name", None):  # a server-side cursor: no pipeline mode
            raw.execute(_begin_statement(raw))
            cls.do_execute(dialect, cursor, statement, parameters, context)
        else:
            with raw.pipeline():
                raw.execute(_begin_statement(raw))
                cls.do_execute(dialect, cursor, statement, parameters, context)

    def do_execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
        raw = cursor.connection
        if settle(raw):
            with raw.pipeline():
                raw.execute(_begin_statement(raw))
                cls.do_execute_no_params(dialect, cursor, statement, context)
        else:
            cls.do_execute_no_params(dialect, cursor, statement, context)

    def do_executemany(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        raw = cursor.connection
        if settle(raw):
            raw.execute(_begin_statement(raw))
        cls.do_executemany(dialect, cursor, statement, parameters, context)

    def end(raw_or_fairy: Any, plain: Callable[[Any, Any], None]) -> None:
        raw = getattr(raw_or_fairy, "dbapi_connection", raw_or_fairy)
        owed.discard(raw)
        try:
            plain(dialect, raw_or_fairy)  # psycopg sends COMMIT/ROLLBACK only if a block is open
        finally:
            if raw in flipped and raw.info.transaction_status == IDLE:
                flipped.discard(raw)
                raw.autocommit = False

    dialect.do_begin = do_begin  # type: ignore[method-assign]
    dialect.do_execute = do_execute  # type: ignore[method-assign]
    dialect.do_execute_no_params = do_execute_no_params  # type: ignore[method-assign]
    dialect.do_executemany = do_executemany  # type: ignore[method-assign]
    dialect.do_commit = lambda c: end(c, cls.do_commit)  # type: ignore[method-assign]
    dialect.do_rollback = lambda c: end(c, cls.do_rollback)  # type: ignore[method-assign]
    return engine


IDLE = psycopg.pq.TransactionStatus.IDLE


def _begin_statement(raw: Any) -> str:
    """The BEGIN psycopg itself would send for ``raw`` (its isolation, read-only, deferrable)."""
    parts = ["BEGIN"]
    if raw.isolation_level is not None:
        parts.append(
            "ISOLATION LEVEL " + psycopg.IsolationLevel(raw.isolation_level).name.replace("_", " ")
        )
    if raw.read_only is not None:
        parts.append("READ ONLY" if raw.read_only else "READ WRITE")
    if raw.deferrable is not None:
        parts.append("DEFERRABLE" if raw.deferrable else "NOT DEFERRABLE")
    return " ".join(parts)
