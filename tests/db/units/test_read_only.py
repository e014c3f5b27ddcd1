"""Issue 3, item 4: ``db_read_only()``, replica routing and the maintenance switch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from myapp.db import (
    Database,
    MaintenanceMode,
    ReadOnlyViolation,
    create_engine_for,
    current_session,
    current_transaction,
    db_batch_operation,
    db_read_only,
    db_transaction,
    init_db,
    is_in_transaction,
)
from myapp.models import Base, Event

from .conftest import capture_sql, event_ids, writes

#: the documented difference (tests/db/units/test_mysql.py tests what holds instead)
NESTED_READ_ONLY = (
    "the db fixture's units are savepoints of the test's transaction, and MySQL/MariaDB "
    "cannot make a transaction under way read-only (error 1568): there only the ORM's "
    "refusals apply; the database's refusal is tested on real read engines in test_mysql.py"
)


def seed(db: Any, *ids: str) -> None:
    with db_transaction() as session:
        session.add_all(Event(id=i, title=f"title {i}") for i in ids)


# ---------------------------------------------------------------------------
# writes are refused before the database sees them


def test_reads_work_and_nothing_is_committed(db: Any) -> None:
    seed(db, "a", "b")
    with db_read_only() as session:
        assert is_in_transaction()
        assert current_session() is session
        assert Event.session is session
        events = session.scalars(select(Event).order_by(Event.id)).all()
    assert current_transaction() is None
    # the read-only session is closed: the objects are detached, with what was loaded
    assert [(e.id, e.title) for e in events] == [("a", "title a"), ("b", "title b")]
    assert inspect(events[0]).detached


def test_flush_is_refused_before_the_database_sees_it(db: Any) -> None:
    with capture_sql(db.connection) as sql:
        with pytest.raises(ReadOnlyViolation) as info:
            with db_read_only() as session:
                session.add(Event(id="x", title="never written"))
                session.flush()
    assert writes(sql) == []
    message = str(info.value)
    assert "db_read_only()" in message and "nothing was written" in message
    assert "db_transaction()" in message  # says what to use instead
    assert current_transaction() is None
    assert event_ids(db.session) == set()


def test_autoflush_is_refused_too(db: Any) -> None:
    seed(db, "a")
    with capture_sql(db.connection) as sql:
        with pytest.raises(ReadOnlyViolation):
            with db_read_only() as session:
                session.get(Event, "a").title = "changed"
                session.scalars(select(Event)).all()  # autoflush
    assert writes(sql) == []
    assert db.session.scalar(select(Event.title).where(Event.id == "a")) == "title a"


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param(lambda: update(Event).values(title="x"), id="orm-update"),
        pytest.param(lambda: delete(Event), id="orm-delete"),
        pytest.param(lambda: insert(Event.__table__).values(id="x", title="x"), id="core-insert"),
        pytest.param(lambda: Event.__table__.update().values(title="x"), id="core-update"),
    ],
)
def test_dml_is_refused_before_the_database_sees_it(db: Any, statement: Any) -> None:
    seed(db, "a")
    with capture_sql(db.connection) as sql:
        with pytest.raises(ReadOnlyViolation, match="write statement"):
            with db_read_only() as session:
                session.execute(statement())
    assert writes(sql) == []
    assert db.session.scalar(select(Event.title).where(Event.id == "a")) == "title a"


@pytest.mark.parametrize(
    "sql_text",
    [
        pytest.param("UPDATE events SET title = 'x'", id="text-update"),
        pytest.param("/* hi */ DELETE FROM events", id="text-commented"),
        pytest.param("WITH doomed AS (SELECT id FROM events) DELETE FROM events", id="text-cte"),
    ],
)
@pytest.mark.not_mysql(reason=NESTED_READ_ONLY)
def test_text_writes_are_refused_by_the_database(db: Any, sql_text: str) -> None:
    """No SQL is parsed: the read-only transaction refuses the write (the read path)."""
    seed(db, "a")
    with pytest.raises(ReadOnlyViolation, match="the database refused a write"):
        with db_read_only() as session:
            session.execute(text(sql_text))
    assert db.session.scalar(select(Event.title).where(Event.id == "a")) == "title a"


def test_the_scope_session_is_guarded_too(db: Any) -> None:
    scope_session = db.session
    with pytest.raises(ReadOnlyViolation):
        with db_read_only():
            scope_session.add(Event(id="x", title="through the scope's session"))
            scope_session.flush()
    assert event_ids(db.session) == set()


def test_writing_units_inside_a_read_only_one_are_refused(db: Any) -> None:
    with pytest.raises(ReadOnlyViolation):
        with db_read_only():
            Event(id="x", title="save() inside db_read_only").save()
    with pytest.raises(ReadOnlyViolation):
        with db_read_only():
            with db_transaction() as session:
                session.add(Event(id="y", title="t"))
    assert event_ids(db.session) == set()


@pytest.mark.not_mysql(reason=NESTED_READ_ONLY)
def test_raw_dbapi_writes_are_never_committed(db: Any) -> None:
    """A raw DBAPI write is refused by the database (PostgreSQL and SQLite alike)."""
    try:
        with db_read_only() as session:
            session.connection().exec_driver_sql(
                "INSERT INTO events (id, title, created, updated) "
                "VALUES ('raw', 'raw', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
    except DBAPIError as exc:  # refused by the database: READ ONLY, or SQLite's query_only
        assert isinstance(exc, ReadOnlyViolation)
        if db.connection.dialect.name == "postgresql":
            assert exc.orig.sqlstate == "25006"
    else:
        pytest.fail("the database accepted a write in db_read_only()")
    assert event_ids(db.session) == set()


# ---------------------------------------------------------------------------
# nested inside a transaction


def test_nested_read_only_sees_the_transaction_and_the_transaction_can_still_write(db: Any):
    with db_transaction() as outer:
        outer.add(Event(id="a", title="t"))
        outer.flush()
        with pytest.raises(ReadOnlyViolation):
            with db_read_only() as session:
                assert session is outer  # reads see the transaction's own writes
                assert event_ids(session) == {"a"}
                session.add(Event(id="refused", title="t"))
                session.flush()
        outer.add(Event(id="b", title="t"))  # the READ ONLY state did not leak out
        outer.flush()
    assert event_ids(db.session) == {"a", "b"}


@pytest.mark.postgresql_only
def test_postgresql_transaction_is_read_only_outermost(db: Any, backend: str) -> None:
    with db_read_only() as session:
        assert session.scalar(text("SHOW transaction_read_only")) == "on"
        with pytest.raises(DBAPIError, match="read-only transaction") as info:
            session.connection().exec_driver_sql("DELETE FROM events")
        assert info.value.orig.sqlstate == "25006"
    with db_transaction() as session:
        assert session.scalar(text("SHOW transaction_read_only")) == "off"
        session.add(Event(id="after", title="t"))
    assert event_ids(db.session) == {"after"}


@pytest.mark.postgresql_only
def test_postgresql_read_only_does_not_leak_out_of_a_nested_block(db: Any, backend: str):
    with db_transaction() as outer:
        assert outer.scalar(text("SHOW transaction_read_only")) == "off"
        with db_read_only() as session:
            assert session.scalar(text("SHOW transaction_read_only")) == "on"
            with pytest.raises(DBAPIError, match="read-only transaction"):
                session.connection().exec_driver_sql(
                    "INSERT INTO events (id, title, created, updated) "
                    "VALUES ('raw', 'raw', now(), now())"
                )
        # rolled back with the savepoint: the transaction can write again
        assert outer.scalar(text("SHOW transaction_read_only")) == "off"
        outer.execute(
            text(
                "INSERT INTO events (id, title, created, updated) "
                "VALUES ('raw-after', 'raw', now(), now())"
            )
        )
        outer.add(Event(id="orm-after", title="t"))
    assert event_ids(db.session) == {"raw-after", "orm-after"}


@pytest.mark.postgresql_only
def test_postgresql_read_only_in_a_real_transaction(real: Any, backend: str) -> None:
    with real.database.scope():
        with db_transaction() as outer:
            with db_read_only() as session:
                assert session.scalar(text("SHOW transaction_read_only")) == "on"
            assert outer.scalar(text("SHOW transaction_read_only")) == "off"
            outer.add(Event(id=real.id("a"), title="t"))
        with db_read_only() as session:
            assert session.scalar(text("SHOW transaction_read_only")) == "on"
            with pytest.raises(DBAPIError, match="read-only transaction"):
                session.connection().exec_driver_sql("DELETE FROM events")
    assert real.event_ids() == {real.id("a")}


# ---------------------------------------------------------------------------
# replica routing


def _engine_name(session: Any) -> str:
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(text("SELECT current_setting('application_name')"))
    path = session.scalar(text("SELECT file FROM pragma_database_list WHERE name = 'main'"))
    return Path(path).stem


def test_reads_go_to_the_replica_when_one_is_configured(real: Any, tmp_path: Path) -> None:
    if real.dialect == "postgresql":
        primary = real.new_engine(connect_args={"application_name": "primary"})
        replica = real.new_engine(connect_args={"application_name": "replica"})
    else:  # two SQLite files with the schema; the file name says which one answered
        primary = create_engine_for(f"sqlite:///{tmp_path / 'primary.sqlite'}")
        replica = create_engine_for(f"sqlite:///{tmp_path / 'replica.sqlite'}")
        real.engines += [primary, replica]
        init_db(primary, Base.metadata)
        init_db(replica, Base.metadata)
    database = Database(primary, replica_engine=replica)
    with database.scope():
        with db_read_only() as session:
            assert _engine_name(session) == "replica"
            assert current_session() is session
            with pytest.raises(ReadOnlyViolation):
                session.execute(delete(Event))
        with db_transaction() as session:
            assert _engine_name(session) == "primary"
            # nested, a read-only block stays on the primary: it must see the writes
            with db_read_only() as nested:
                assert nested is session
                assert _engine_name(nested) == "primary"
    assert primary.pool.checkedout() == 0 and replica.pool.checkedout() == 0


def test_from_settings_builds_the_replica(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    database = Database.from_settings(
        {
            "myapp.env": "testing",
            "sqlalchemy.url": f"sqlite:///{tmp_path / 'primary.sqlite'}",
            "sqlalchemy.replica.url": f"sqlite:///{tmp_path / 'replica.sqlite'}",
        }
    )
    try:
        assert database.replica_engine is not None
        assert database.replica_factory is not None
        with database.scope():
            with db_read_only() as session:
                assert _engine_name(session) == "replica"
    finally:
        database.dispose()


# ---------------------------------------------------------------------------
# the maintenance switch


@pytest.fixture
def maintenance(database: Database) -> Any:
    database.maintenance.on = True
    database.maintenance.reason = "database upgrade"
    try:
        yield database.maintenance
    finally:
        database.maintenance.on = False
        database.maintenance.reason = ""


def test_maintenance_refuses_every_write_and_keeps_reads(db: Any, maintenance: Any) -> None:
    maintenance.on = False
    seed(db, "a")
    maintenance.on = True
    with capture_sql(db.connection) as sql:
        with pytest.raises(MaintenanceMode, match=r"maintenance mode \(database upgrade\)") as info:
            with db_transaction() as session:
                session.add(Event(id="b", title="t"))
        assert "nothing was written" in str(info.value)
        with pytest.raises(MaintenanceMode):
            with db_transaction() as session:
                session.execute(update(Event).values(title="x"))
        with pytest.raises(MaintenanceMode):
            Event(id="c", title="t").save()
        with pytest.raises(MaintenanceMode, match="db_batch_operation"):
            with db_batch_operation():
                pass
        with pytest.raises(MaintenanceMode):
            db.session.add(Event(id="d", title="t"))
            db.session.commit()
        assert isinstance(info.value, ReadOnlyViolation)
        # reads keep working, in every kind of unit of work
        with db_transaction() as session:
            assert event_ids(session) == {"a"}
        with db_read_only() as session:
            assert event_ids(session) == {"a"}
    assert writes(sql) == []
    assert current_transaction() is None
    maintenance.on = False
    seed(db, "e")
    assert event_ids(db.session) == {"a", "e"}


def test_maintenance_is_a_503_in_requests(testapp: Any, database: Database) -> None:
    before = testapp.get("/items").json
    database.maintenance.on = True
    try:
        response = testapp.post("/items", status=503)
        assert response.content_type == "application/json"
        assert "maintenance mode" in response.json["error"]
        assert response.headers.get("Retry-After")
        assert testapp.get("/items").json == before  # reads keep working
    finally:
        database.maintenance.on = False
    testapp.post("/items", status=200)
