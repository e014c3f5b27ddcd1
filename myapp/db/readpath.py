"""The read path: connections the database keeps read-only, one round trip per statement.

Safe-method requests (GET, HEAD, OPTIONS) and outermost :func:`~myapp.db.db_read_only`
units read through a *read engine* (:func:`create_read_engine`): the primary's URL or a
replica's, with its own pool, and

* on PostgreSQL: ``isolation_level="AUTOCOMMIT"`` and the server option
  ``default_transaction_read_only=on`` sent in the startup packet (no round trip).
  psycopg sends no ``BEGIN``; the unit of work's commit and the pool's reset on
  return find no open transaction and send nothing. A read costs one round trip
  per statement. When a unit needs a transaction block (a savepoint, a
  repeatable-read snapshot, a server-side cursor for ``stream_results``) ``BEGIN``
  is sent then, and only then; it is read-only too (the connection's default).
* on SQLite: the same database file, ``PRAGMA query_only=ON`` on every new
  connection (no network: transactions stay as they are).

No pool pre-ping: a read that meets a dead pooled connection fails with a
disconnect, SQLAlchemy invalidates the pool, and the request is replayed on a
fresh connection (:func:`myapp.db.pyramid.tag_retryable`: a safe-method request is
always safe to replay).

A write on such a connection fails **in the database** (PostgreSQL SQLSTATE 25006
``read_only_sql_transaction``; SQLite "attempt to write a readonly database"), is
rolled back there, and surfaces as :class:`~myapp.db.errors.ReadOnlyViolation`
(:class:`~myapp.db.errors.MaintenanceMode` while maintenance mode is on):
:func:`install_error_mapping`. Where no read engine applies (an in-memory SQLite
database, a test's connection), the session's transaction is made read-only
instead (:func:`enforce_read_only`: ``SET TRANSACTION READ ONLY`` on PostgreSQL,
``PRAGMA query_only`` on SQLite, lifted when the transaction ends).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError

from . import mysql, sqlite
from .errors import MaintenanceMode, ReadOnlyViolation
from .events import listen_once
from .manager import current_transaction
from .writes import MAINTENANCE, READ_ONLY

#: the server option that makes a PostgreSQL connection read-only from its first byte
PG_READ_ONLY_OPTION = "-c default_transaction_read_only=on"
#: PostgreSQL's SQLSTATE for a write in a read-only transaction
READ_ONLY_SQLSTATE = "25006"
#: ``Transaction.extension`` key: the maintenance switch that made this transaction read-only
MAINTENANCE_TXN = "myapp.maintenance_read_only"
#: ``Session.info`` key: raw SQLite connections made query_only for this session's transaction
QUERY_ONLY_LIFT = "myapp.query_only_lift"

_read_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def is_read_engine(engine: Engine) -> bool:
    """True for engines made by :func:`create_read_engine` (read-only by the server)."""
    return engine in _read_engines


def create_read_engine(url: str, **options: Any) -> Engine:
    """An engine whose connections the database keeps read-only (see the module docstring).

    ``options`` are :func:`sqlalchemy.create_engine`'s; ``pool_pre_ping`` is dropped.
    """
    options = dict(options)
    options.pop("pool_pre_ping", None)
    options.pop("pipeline_begin", None)  # reads begin no transaction
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("an in-memory SQLite database has no separate read engine")
        options.setdefault("connect_args", {})["check_same_thread"] = False
        engine = sqlite.install(create_engine(parsed, **options))
        event.listen(engine, "connect", _sqlite_query_only)
    elif parsed.get_backend_name() == "postgresql":
        connect_args = dict(options.pop("connect_args", {}))
        extra = connect_args.get("options", "")
        connect_args["options"] = f"{extra} {PG_READ_ONLY_OPTION}".strip()
        engine = create_engine(
            parsed, isolation_level="AUTOCOMMIT", connect_args=connect_args, **options
        )
        # on this dialect instance only (a connection event would make SQLAlchemy
        # dispatch engine events at every statement): a savepoint in autocommit
        # needs a transaction block, begun here, read-only by the connection's default
        engine.dialect.do_savepoint = _pg_savepoint_in_block.__get__(engine.dialect)  # type: ignore[method-assign]
        # a server-side cursor (stream_results / yield_per) is DECLAREd: it needs a block too
        engine.dialect.do_execute = _pg_execute_named_in_block.__get__(engine.dialect)  # type: ignore[method-assign]
    elif mysql.is_mysql(parsed.get_backend_name()):
        options = mysql.engine_options(options, read_only=True)
        engine = mysql.install(create_engine(parsed, **options), read_only=True)
        dialect = engine.dialect
        dialect.do_savepoint = _mysql_savepoint_in_block.__get__(dialect)  # type: ignore[method-assign]
        # COMMIT/ROLLBACK only where a block was begun (a snapshot, a savepoint)
        dialect.do_commit = _mysql_end_block.__get__(dialect)  # type: ignore[method-assign]
        dialect.do_rollback = _mysql_end_block.__get__(dialect)  # type: ignore[method-assign]
    else:
        raise ValueError(f"no read path for the {parsed.get_backend_name()!r} backend")
    install_error_mapping(engine)
    _read_engines.add(engine)
    return engine


@contextmanager
def read_intent() -> Iterator[None]:
    """SQLite transactions begun inside the block begin deferred (never BEGIN IMMEDIATE).

    For read-only units inside a write request: a query_only connection
    refuses ``BEGIN IMMEDIATE`` (it takes the write lock).
    """
    token = sqlite._begin_immediate.set(False)
    try:
        yield
    finally:
        sqlite._begin_immediate.reset(token)


def _sqlite_query_only(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.execute("PRAGMA query_only=ON")


def _pg_savepoint_in_block(dialect: Any, connection: Connection, name: str) -> None:
    begin_block(connection)
    type(dialect).do_savepoint(dialect, connection, name)


def _pg_execute_named_in_block(
    dialect: Any, cursor: Any, statement: str, parameters: Any, context: Any = None
) -> None:
    if getattr(cursor, "name", None):  # psycopg's ServerCursor
        raw = cursor.connection
        if raw.autocommit and int(raw.info.transaction_status) == 0:
            raw.execute("BEGIN")
    type(dialect).do_execute(dialect, cursor, statement, parameters, context)


def _mysql_savepoint_in_block(dialect: Any, connection: Connection, name: str) -> None:
    begin_block(connection)
    type(dialect).do_savepoint(dialect, connection, name)


def _mysql_end_block(dialect: Any, dbapi_connection: Any) -> None:
    # a MySQL read engine's COMMIT and ROLLBACK (autocommit): only a block begun by
    # begin_block is open, and it only read (PyMySQL would send one whatever the state)
    mysql.end_block(dbapi_connection)


def begin_block(connection: Connection, sql: str = "BEGIN") -> bool:
    """On an autocommit connection outside a transaction block, send ``sql``.

    PostgreSQL and MySQL/MariaDB read engines. Returns True if it was sent. The
    block ends with the unit of work's commit or rollback (psycopg sends
    ``COMMIT``/``ROLLBACK`` only when a block is open; a MySQL read engine's
    dialect asks the server's status flags). On MySQL ``BEGIN`` is sent as
    ``START TRANSACTION READ ONLY``.
    """
    dbapi = connection.connection.dbapi_connection
    if mysql.is_mysql(connection.dialect):
        if not is_read_engine(connection.engine):
            return False
        return mysql.begin_block(dbapi, "START TRANSACTION READ ONLY" if sql == "BEGIN" else sql)
    info = getattr(dbapi, "info", None)
    if info is None or not getattr(dbapi, "autocommit", False):
        return False
    if int(info.transaction_status) != 0:  # 0: IDLE
        return False
    dbapi.execute(sql)
    return True


def enforce_read_only(session: Any, connection: Connection) -> None:
    """Make the transaction ``session`` just began on ``connection`` read-only at the database.

    Nothing to do on a read engine's connection (read-only already). PostgreSQL:
    ``SET TRANSACTION READ ONLY`` (ends with the transaction or savepoint); SQLite:
    ``PRAGMA query_only=ON``, lifted when the session's transaction ends
    (:func:`lift_read_only`). MySQL/MariaDB: ``SET TRANSACTION READ ONLY``
    before the transaction's first statement (it applies to the transaction the
    statement begins); inside a transaction already under way (a savepoint, a
    test's connection) the server refuses to change it (error 1568), so there
    only the ORM's refusals apply (:mod:`myapp.db.writes`).
    """
    if is_read_engine(connection.engine):
        return
    name = connection.dialect.name
    if name == "postgresql":
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
    elif name == "sqlite":
        raw = connection.connection.dbapi_connection
        raw.execute("PRAGMA query_only=ON")
        session.info.setdefault(QUERY_ONLY_LIFT, []).append(raw)
    elif mysql.is_mysql(name):
        # only for a transaction not yet begun on the server: SET TRANSACTION applies to
        # the next transaction, which for a savepoint would be the whole outer one
        nested = session.in_nested_transaction() or connection.in_nested_transaction()
        if not nested and not mysql.in_transaction(connection.connection.dbapi_connection):
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")


def begin_read_only(session: Any, txn: Any, connection: Connection) -> None:
    """Session ``after_begin``: a read-only or maintenance-mode session's transaction began.

    Makes it read-only at the database (:func:`enforce_read_only`) and
    remembers the maintenance switch, so a refused write surfaces as
    :class:`MaintenanceMode`.
    """
    switch = session.info.get(MAINTENANCE)
    if switch:
        txn.extension[MAINTENANCE_TXN] = switch
    elif not session.info.get(READ_ONLY):
        return
    enforce_read_only(session, connection)


def lift_read_only(session: Any, *args: Any) -> None:
    """End what :func:`enforce_read_only` did on SQLite (PostgreSQL's ends by itself)."""
    raws = session.info.pop(QUERY_ONLY_LIFT, None)
    for raw in raws or ():
        try:
            raw.execute("PRAGMA query_only=OFF")
        except Exception:  # a closed connection: nothing to lift
            pass


def after_transaction_end(session: Any, sa_txn: Any) -> None:
    """Session event: the root transaction ended, lift SQLite's query_only."""
    if sa_txn.parent is None and QUERY_ONLY_LIFT in session.info:
        lift_read_only(session)


def is_read_only_error(exc: BaseException) -> bool:
    """Did the database refuse a write because the transaction or connection is read-only?"""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate == READ_ONLY_SQLSTATE or mysql.error_code(exc) == mysql.READ_ONLY_CODE:
        return True
    return "attempt to write a readonly database" in str(orig)


class _Refused(DBAPIError):
    """A driver error the database raised because the connection or transaction is read-only.

    Also a :class:`DBAPIError` (same statement, parameters and ``orig``), so code
    that handles driver errors (savepoint rollbacks, the failure guard) is unchanged.
    """

    def __init__(self, message: str, original: DBAPIError) -> None:
        DBAPIError.__init__(
            self,
            original.statement,
            original.params,
            original.orig,  # type: ignore[arg-type]
            hide_parameters=original.hide_parameters,
            code=original.code,
        )
        self.message = message

    def __str__(self) -> str:
        return self.message


class DatabaseReadOnlyViolation(ReadOnlyViolation, _Refused):
    """The database refused a write on a read-only connection (a :class:`ReadOnlyViolation`)."""


class DatabaseMaintenanceMode(MaintenanceMode, _Refused):
    """The database refused a write during maintenance mode (a :class:`MaintenanceMode`)."""


def _map_read_only(context: ExceptionContext) -> BaseException | None:
    exc = context.sqlalchemy_exception
    if exc is None or isinstance(exc, _Refused) or not is_read_only_error(exc):
        return None
    txn = current_transaction()
    switch = txn.extension.get(MAINTENANCE_TXN) if txn is not None else None
    text = str(exc.orig).strip()
    first = text.splitlines()[0] if text else ""
    if switch:
        reason = f" ({switch.reason})" if switch.reason else ""
        return DatabaseMaintenanceMode(
            f"the service is in read-only maintenance mode{reason}: the database refused a "
            f"write ({first}) and nothing was written",
            exc,
        )
    return DatabaseReadOnlyViolation(
        "the database refused a write on a read-only connection "
        f"({first}): GET/HEAD/OPTIONS requests and db_read_only() units cannot write; "
        "nothing was written. Write in db_transaction(), in a request whose method may write.",
        exc,
    )


def install_error_mapping(engine: Engine) -> None:
    """Turn the database's read-only refusals on ``engine`` into ReadOnlyViolation (idempotent)."""
    listen_once(engine, "handle_error", _map_read_only)


def begin_snapshot(session: Any, *, outermost: bool = False) -> bool:
    """Give ``session``'s reads from now on one snapshot; True if a block was begun here.

    PostgreSQL: on an autocommit (read engine) connection with no block open,
    ``BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`` (ended by :func:`end_block`,
    or by the session's rollback or close). ``outermost`` on a connection in a
    transaction (no read engine): ``SET TRANSACTION ISOLATION LEVEL REPEATABLE
    READ`` (the transaction has run no query yet). Otherwise (a transaction that
    already ran statements) the snapshot is that transaction's. SQLite: a
    transaction reads one snapshot in WAL mode already. MySQL/MariaDB: on a read
    engine's connection, ``SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`` then
    ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY``; ``outermost`` on a
    primary connection whose transaction has not begun on the server, ``SET
    TRANSACTION ISOLATION LEVEL REPEATABLE READ`` (the default is READ COMMITTED).
    """
    connection = session.connection()
    if mysql.is_mysql(connection.dialect):
        dbapi = connection.connection.dbapi_connection
        if is_read_engine(connection.engine):
            if mysql.in_block(dbapi):
                return False
            with dbapi.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return begin_block(connection, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        if outermost and not mysql.in_transaction(dbapi):
            connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return False
    if connection.dialect.name != "postgresql":
        return False
    if begin_block(connection, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"):
        return True
    if outermost and not getattr(connection.connection.dbapi_connection, "autocommit", False):
        connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    return False


def end_block(session: Any) -> None:
    """End the transaction block :func:`begin_snapshot` began (read-only: a rollback)."""
    try:
        connection = session.connection()
    except Exception:
        return
    dbapi = connection.connection.dbapi_connection
    if mysql.is_mysql(connection.dialect):
        mysql.end_block(dbapi)
        return
    info = getattr(dbapi, "info", None)
    if info is not None and int(info.transaction_status) != 0:
        dbapi.rollback()
