"""The read path: connections the database keeps read-only, on both backends.

Real commits on the run's database (a ``Database`` of its own, rows named with
a per-test token and deleted at the end): the read engine is the production
code path, which the ``db`` fixture's single test connection bypasses.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import webtest
from pyramid.config import Configurator
from sqlalchemy import delete, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from myapp.db import (
    Database,
    MaintenanceMode,
    ReadOnlyViolation,
    create_engine_for,
    current_session,
    db_read_only,
    db_transaction,
)
from myapp.db.readpath import is_read_engine
from myapp.models import Item


class Live:
    """A Database with real commits on the run's database; its items carry ``token``."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine_for(url, pool_size=3, max_overflow=5)
        self.database = Database(self.engine)
        self.token = "rp" + secrets.token_hex(4)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def add(self, n: int = 1) -> list[int]:
        with self.database.scope(), db_transaction() as session:
            items = [Item(name=f"{self.token}_{i}") for i in range(n)]
            session.add_all(items)
            session.flush()
            return [item.id for item in items]

    def names(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.scalars(select(Item.name).where(Item.name.like(self.token + "%"))))

    def close(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(Item).where(Item.name.like(self.token + "%")))
        finally:
            self.database.dispose()


@pytest.fixture
def live(dbengine: Engine) -> Iterator[Live]:
    stack = Live(dbengine.url.render_as_string(hide_password=False))
    try:
        yield stack
        read = stack.database.read_engine
        assert stack.engine.pool.checkedout() == 0
        assert read is None or read.pool.checkedout() == 0
    finally:
        stack.close()


def _read_only_setting(session: Any) -> bool:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return session.scalar(text("SHOW transaction_read_only")) == "on"
    if name in ("mysql", "mariadb"):  # the session's (a read engine's) or the transaction's
        return session.scalar(text("SELECT @@session.tx_read_only")) == 1
    return session.scalar(text("PRAGMA query_only")) == 1


def test_outermost_read_only_units_use_the_read_engine(live: Live) -> None:
    (item_id,) = live.add()
    with live.database.scope():
        with db_read_only() as session:
            assert is_read_engine(session.get_bind())
            assert current_session() is session
            assert _read_only_setting(session)
            assert session.get(Item, item_id).name == f"{live.token}_0"


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("WITH x AS (SELECT name FROM items) SELECT count(*) FROM x", id="cte"),
        pytest.param("/* a comment */ SELECT count(*) FROM items", id="commented"),
    ],
)
def test_cte_and_commented_reads_work_inside_read_only_units(live: Live, sql: str) -> None:
    live.add(2)
    with live.database.scope():
        with db_read_only() as session:
            assert session.scalar(text(sql)) >= 2
        # nested in a writing transaction too (a read-only savepoint)
        with db_transaction() as outer:
            with db_read_only() as session:
                assert session is outer
                assert session.scalar(text(sql)) >= 2


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("UPDATE items SET name = 'x'", id="update"),
        pytest.param("WITH doomed AS (SELECT id FROM items) DELETE FROM items", id="cte-delete"),
        pytest.param("/* sneaky */ INSERT INTO items (name) VALUES ('x')", id="commented-insert"),
    ],
)
def test_writes_are_refused_by_the_database(live: Live, sql: str) -> None:
    sql = mysql_sql(live, sql)
    live.add()
    before = live.names()
    with live.database.scope():
        with pytest.raises(ReadOnlyViolation, match="the database refused a write") as info:
            with db_read_only() as session:
                session.execute(text(sql))
        assert isinstance(info.value, DBAPIError)  # the driver's error, kept as the cause
        # nested in a writing transaction: the savepoint is read-only, the transaction is not
        with db_transaction() as outer:
            if live.dialect in ("mysql", "mariadb"):
                # the documented difference: MySQL/MariaDB cannot make a transaction under
                # way read-only; the write is not refused, the read-only unit's savepoint
                # is rolled back at its end (nothing kept)
                with db_read_only() as session:
                    session.execute(text(sql))
            else:
                with pytest.raises(ReadOnlyViolation):
                    with db_read_only() as session:
                        session.execute(text(sql))
            outer.execute(update(Item).where(Item.name.in_(before)).values(name=Item.name))
    assert live.names() == before


def mysql_sql(live: Live, sql: str) -> str:
    """MariaDB has no ``WITH ... DELETE``: the same write with its CTE in a subquery."""
    if live.dialect in ("mysql", "mariadb") and sql.startswith("WITH"):
        return "DELETE FROM items WHERE id IN (WITH d AS (SELECT 0 AS id) SELECT id FROM d)"
    return sql


def test_raw_driver_writes_are_refused_too(live: Live) -> None:
    with live.database.scope():
        with pytest.raises(ReadOnlyViolation):
            with db_read_only() as session:
                session.connection().exec_driver_sql("DELETE FROM items")


def test_orm_changes_are_still_refused_before_the_database(live: Live) -> None:
    (item_id,) = live.add()
    with live.database.scope():
        with pytest.raises(ReadOnlyViolation, match="pending change"):
            with db_read_only() as session:
                session.get(Item, item_id).name = "changed"
                session.flush()
    assert live.names() == {f"{live.token}_0"}


def test_snapshot_units_read_one_snapshot(live: Live) -> None:
    live.add()
    other = live.database.engine
    with live.database.scope():
        with db_read_only(snapshot=True) as session:
            first = session.scalar(select(Item.id).where(Item.name.like(live.token + "%")).limit(9))
            count = session.scalar(text("SELECT count(*) FROM items"))
            with other.begin() as conn:  # a commit from elsewhere, during the unit
                conn.execute(text("INSERT INTO items (name) VALUES (:n)"), {"n": live.token + "_x"})
            assert session.scalar(text("SELECT count(*) FROM items")) == count
            assert first is not None
        with db_read_only() as session:  # without a snapshot: each statement sees the latest
            assert session.scalar(text("SELECT count(*) FROM items")) == count + 1


def test_maintenance_mode_is_enforced_by_the_database(live: Live) -> None:
    live.add()
    before = live.names()
    live.database.maintenance.on = True
    live.database.maintenance.reason = "an upgrade"
    try:
        with live.database.scope():
            with pytest.raises(MaintenanceMode, match="an upgrade"):
                with db_transaction() as session:
                    session.execute(text("UPDATE items SET name = 'm'"))
            with pytest.raises(MaintenanceMode):
                with db_transaction() as session:
                    session.execute(text(mysql_sql(live, "WITH d AS (SELECT 1) DELETE FROM items")))
            with db_transaction() as session:  # reads work
                assert session.scalar(text("WITH x AS (SELECT 1 AS v) SELECT v FROM x")) == 1
    finally:
        live.database.maintenance.on = False
        live.database.maintenance.reason = ""
    assert live.names() == before
    live.add(2)  # and writes work again on the same pooled connections
    assert len(live.names()) == 2


def test_in_memory_sqlite_has_no_read_engine_but_is_read_only(tmp_path: Any) -> None:
    database = Database.from_url("sqlite://")
    try:
        assert database.read_engine is None
        from myapp.db import init_db
        from myapp.models import Base

        init_db(database.engine, Base.metadata)
        with database.scope():
            with pytest.raises(ReadOnlyViolation):
                with db_read_only() as session:
                    session.execute(text("INSERT INTO items (name) VALUES ('x')"))
            with db_transaction() as session:  # query_only was lifted
                session.execute(text("INSERT INTO items (name) VALUES ('y')"))
            with db_read_only() as session:
                assert session.scalars(select(Item.name)).all() == ["y"]
    finally:
        database.dispose()


# ---------------------------------------------------------------------------
# requests


def _app(database: Database) -> Any:
    config = Configurator(settings={"myapp.database": database, "retry.attempts": 3})
    config.include("myapp.db.pyramid")

    def read(request: Any) -> dict[str, Any]:
        session = request.dbsession
        return {
            "read_engine": is_read_engine(session.get_bind()),
            "read_only": _read_only_setting(session),
            "count": session.scalar(
                text("WITH x AS (SELECT id FROM items) SELECT count(*) FROM x")
            ),
        }

    def write_in_get(request: Any) -> dict[str, Any]:
        request.dbsession.execute(text("INSERT INTO items (name) VALUES ('from a GET')"))
        return {}

    def write(request: Any) -> dict[str, Any]:
        request.dbsession.add(Item(name=request.params["name"]))
        request.dbsession.flush()
        return {"read_engine": is_read_engine(request.dbsession.get_bind())}

    config.add_route("read", "/read")
    config.add_view(read, route_name="read", request_method="GET", renderer="json")
    config.add_route("write_in_get", "/write-in-get")
    config.add_view(write_in_get, route_name="write_in_get", renderer="json")
    config.add_route("write", "/write")
    config.add_view(write, route_name="write", request_method="POST", renderer="json")
    config.scan("myapp.views.errors")
    return config.make_wsgi_app()


def test_safe_requests_read_on_the_read_engine_and_writes_on_the_primary(live: Live) -> None:
    app = webtest.TestApp(_app(live.database))
    live.add(3)
    got = app.get("/read").json
    assert got["read_engine"] and got["read_only"] and got["count"] >= 3
    assert app.head("/read").status_int == 200
    assert app.post("/write", {"name": live.token + "_p"}).json == {"read_engine": False}
    assert live.token + "_p" in live.names()


def test_a_write_in_a_get_request_is_a_clear_json_error_and_writes_nothing(live: Live) -> None:
    app = webtest.TestApp(_app(live.database))
    before = live.names()
    response = app.get("/write-in-get", status=503)
    assert response.content_type == "application/json"
    assert "the database refused a write" in response.json["error"]
    assert live.names() == before
    # the same route in a POST writes
    app.post("/write-in-get")
    with live.engine.begin() as conn:
        assert conn.execute(delete(Item).where(Item.name == "from a GET")).rowcount == 1


@pytest.mark.postgresql_only  # connections to terminate
def test_a_read_after_the_database_dropped_its_connections_is_replayed(live: Live) -> None:
    """No pre-ping: the stale pooled connection fails, the request is replayed on a new one."""
    app = webtest.TestApp(_app(live.database))
    assert app.get("/read").json["read_engine"]
    read = live.database.read_engine
    assert read is not None
    with read.connect() as conn:  # the pooled connection the next request will get
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
    assert read.pool.checkedin() == 1
    with live.engine.connect() as conn:  # the server drops it (as a restart does)
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.commit()
        # pg_stat_activity is a snapshot per transaction: poll in fresh ones, bounded
        deadline = time.monotonic() + 30
        while conn.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ):
            conn.rollback()
            assert time.monotonic() < deadline, f"backend {pid} still there 30 s after termination"
            time.sleep(0.01)
        conn.rollback()
    response = app.get("/read")
    assert response.status_int == 200 and response.json["read_engine"]
    assert read.pool.checkedout() == 0


# ---------------------------------------------------------------------------
# the primary's pipelined BEGIN (PostgreSQL)


@pytest.mark.postgresql_only  # the pipelined BEGIN is PostgreSQL's
def test_the_pipelined_begin_keeps_transactions_whole(live: Live) -> None:
    """BEGIN travels with the first statement: still one transaction, rolled back as one."""
    engine = live.engine
    name = live.token + "_rolled_back"
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        conn.execute(text("INSERT INTO items (name) VALUES (:n)"), {"n": name})
        assert raw.info.transaction_status == 2  # INTRANS: in an explicit block
        conn.execute(text("INSERT INTO items (name) VALUES (:n)"), {"n": name})
        conn.rollback()
        assert raw.autocommit is False  # left as psycopg had it
    assert name not in live.names()
    # the first statement fails: raised as ever, the connection is usable after the rollback
    with engine.connect() as conn:
        with pytest.raises(DBAPIError, match="division by zero"):
            conn.execute(text("SELECT 1 / 0"))
        conn.rollback()
        assert conn.execute(text("SELECT 2")).scalar() == 2
        conn.commit()
    # the isolation level asked for is in the BEGIN sent
    with engine.connect().execution_options(isolation_level="SERIALIZABLE") as conn:
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "serializable"
        conn.rollback()
    with engine.connect() as conn:
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
        # a raw cursor after the first statement is inside the transaction
        conn.execute(text("SELECT 1"))
        with conn.connection.dbapi_connection.cursor() as cursor:
            cursor.execute("INSERT INTO items (name) VALUES (%s)", (name,))
        conn.rollback()
    assert name not in live.names()


def test_streamed_reads_work_on_the_read_engine(live: Live) -> None:
    """stream_results uses a server-side cursor (DECLARE): the read engine opens a block."""
    live.add(5)
    with live.database.scope():
        with db_read_only() as session:
            rows = session.execute(
                select(Item.name).where(Item.name.like(live.token + "%")),
                execution_options={"stream_results": True, "yield_per": 2},
            )
            assert sorted(name for (name,) in rows) == [f"{live.token}_{i}" for i in range(5)]
            assert session.scalar(text("SELECT 1")) == 1  # still usable after the cursor


def test_streamed_reads_work_in_a_write_transaction(live: Live) -> None:
    """On the primary, a server-side cursor as first statement gets its BEGIN (not pipelined)."""
    live.add(3)
    with live.database.scope(), db_transaction() as session:
        rows = session.execute(
            select(Item.name).where(Item.name.like(live.token + "%")),
            execution_options={"stream_results": True, "yield_per": 2},
        )
        assert len(list(rows)) == 3
        session.add(Item(name=live.token + "_after"))
    assert live.token + "_after" in live.names()


def test_a_snapshot_inside_a_get_request(live: Live) -> None:
    """A view's reads agree inside db_read_only(snapshot=True), on the request's read session."""
    live.add()
    config = Configurator(settings={"myapp.database": live.database, "retry.attempts": 3})
    config.include("myapp.db.pyramid")
    count_sql = text("SELECT count(*) FROM items")

    def report(request: Any) -> dict[str, Any]:
        before = request.dbsession.scalar(count_sql)
        with db_read_only(snapshot=True) as session:
            assert session is request.dbsession
            first = session.scalar(count_sql)
            with live.engine.begin() as conn:  # a commit from elsewhere, mid-snapshot
                conn.execute(text("INSERT INTO items (name) VALUES (:n)"), {"n": live.token + "_s"})
            second = session.scalar(count_sql)
        after = request.dbsession.scalar(count_sql)
        return {"before": before, "first": first, "second": second, "after": after}

    config.add_route("report", "/report")
    config.add_view(report, route_name="report", request_method="GET", renderer="json")
    got = webtest.TestApp(config.make_wsgi_app()).get("/report").json
    assert got["first"] == got["second"] == got["before"]
    if live.dialect != "sqlite":  # autocommit reads: the snapshot ended with the block
        assert got["after"] == got["before"] + 1
    else:  # SQLite: the request's read transaction is one snapshot (WAL) from its first read
        assert got["after"] == got["before"]
