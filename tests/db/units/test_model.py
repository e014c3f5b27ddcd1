"""Issue 3, items 7 and 9: ``Base``/``BaseModel``, ``expire_on_commit``, ``init_db()``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text, update
from sqlalchemy.exc import StatementError

from myapp.db import (
    Base,
    Database,
    current_session,
    current_transaction,
    db_transaction,
    init_db,
)
from myapp.models import Booking, Event

from .conftest import capture_sql, event_ids, make_app

PARIS_NOON = datetime(2025, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))  # 10:00 UTC


# ---------------------------------------------------------------------------
# timestamps


def test_created_and_updated_are_set_in_utc(db: Any) -> None:
    before = datetime.now(UTC)
    event = Event(id="a", title="t").save()
    after = datetime.now(UTC)
    db.session.expire_all()
    assert event.created.tzinfo is not None and event.created.utcoffset() == timedelta(0)
    assert before <= event.created <= after
    assert before <= event.updated <= after


def test_updated_changes_on_update_and_created_does_not(db: Any) -> None:
    event = Event(id="a", title="t").save()
    created = event.created
    past = datetime(2000, 1, 1, tzinfo=UTC)
    db.session.execute(update(Event).where(Event.id == "a").values(updated=past))
    db.session.commit()
    assert event.updated == past
    event.title = "changed"
    event.save()
    db.session.expire_all()
    assert event.updated > past + timedelta(days=365)
    assert event.created == created


def test_stored_in_utc(db: Any) -> None:
    """The raw stored value is UTC, whatever zone the value was given in."""
    Event(id="a", title="t", created=PARIS_NOON).save()
    if db.connection.dialect.name == "sqlite":
        raw = db.session.scalar(text("SELECT created FROM events WHERE id = 'a'"))
        assert raw == "2025-07-01 10:00:00.000000"
    elif db.connection.dialect.name in ("mysql", "mariadb"):
        # DATETIME(6) holds the UTC value itself: the session's zone changes nothing
        db.session.execute(text("SET time_zone = '+09:00'"))
        raw = db.session.scalar(text("SELECT created FROM events WHERE id = 'a'"))
        db.session.execute(text("SET time_zone = '+00:00'"))
        assert raw == datetime(2025, 7, 1, 10, 0)  # naive UTC, microseconds kept
        assert db.session.scalar(text("SELECT @@session.time_zone")) == "+00:00"
    else:
        db.session.execute(text("SET LOCAL TIME ZONE 'Asia/Tokyo'"))  # the session's zone
        raw = db.session.scalar(
            text("SELECT to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM events")
        )
        assert raw == "2025-07-01 10:00"
    db.session.expire_all()
    event = db.session.get(Event, "a")
    assert event.created == PARIS_NOON
    assert event.created.tzinfo is UTC
    assert (event.created.hour, event.created.minute) == (10, 0)


def test_naive_datetimes_are_refused(db: Any) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        Event(id="a", title="t", created=datetime(2025, 7, 1, 12, 0)).save()
    assert current_transaction() is None


def test_display_timezone_comes_from_the_settings(db: Any, dbengine: Any) -> None:
    event = Event(id="a", title="t", created=PARIS_NOON)
    assert event.display_timezone() == ZoneInfo("Europe/Paris")  # testing.ini / default
    assert event.local_time(event.created).hour == 12
    new_york = Database(dbengine, timezone="America/New_York")
    with new_york.scope():
        assert event.display_timezone() == ZoneInfo("America/New_York")
        assert event.local_time(event.created).hour == 6


def test_display_timezone_default_without_any_scope() -> None:
    assert Event.display_timezone() == ZoneInfo("Europe/Paris")
    assert Database.from_url("sqlite://").timezone == ZoneInfo("Europe/Paris")


# ---------------------------------------------------------------------------
# save(), delete(), session, is_in_transaction


def test_save_inside_a_transaction_only_flushes(db: Any) -> None:
    with pytest.raises(RuntimeError):
        with db_transaction():
            event = Event(id="a", title="t")
            assert event.save() is event
            assert event.is_in_transaction
            assert inspect(event).persistent  # flushed: in the database, in this transaction
            assert event_ids(current_session()) == {"a"}
            raise RuntimeError("the enclosing unit of work decides")
    assert event_ids(db.session) == set()


def test_save_outside_a_transaction_commits(db: Any) -> None:
    event = Event(id="a", title="t")
    assert not event.is_in_transaction
    event.save()
    assert current_transaction() is None
    db.session.rollback()  # nothing pending to discard: it was committed
    assert event_ids(db.session) == {"a"}


def test_delete_inside_and_outside_a_transaction(db: Any) -> None:
    a = Event(id="a", title="t").save()
    b = Event(id="b", title="t").save()
    with pytest.raises(RuntimeError):
        with db_transaction():
            a.delete()
            assert event_ids(current_session()) == {"b"}  # flushed
            raise RuntimeError()
    assert event_ids(db.session) == {"a", "b"}
    db.session.rollback()
    b.delete()
    assert current_transaction() is None
    assert event_ids(db.session) == {"a"}


def test_session_properties(db: Any) -> None:
    event = Event(id="a", title="t")
    assert event.session is db.session
    assert Event.session is current_session()
    with db_transaction():
        assert event.is_in_transaction


def test_seed003_crud_cycle(db: Any) -> None:
    event = Event(id="ev_001", title="Jazz Festival 2025", description="Annual jazz festival")
    event.save()
    assert [e.id for e in Event.session.query(Event).all()] == ["ev_001"]
    event.title = "Updated Title"
    event.save()
    db.session.expire_all()
    assert db.session.get(Event, "ev_001").title == "Updated Title"
    event.delete()
    assert event_ids(db.session) == set()


# ---------------------------------------------------------------------------
# Base


def test_constraint_names_follow_the_convention() -> None:
    assert Event.__table__.primary_key.name == "pk_events"
    booking = Booking.__table__
    names = {c.name for c in booking.constraints} | {i.name for i in booking.indexes}
    assert {
        "pk_bookings",
        "fk_bookings_company_id_companies",
        "fk_bookings_driver_id_drivers",
        "ck_bookings_status",
        "ix_bookings_pickup_time",
    } <= names
    assert Base.metadata.naming_convention["uq"] == "uq_%(table_name)s_%(column_0_name)s"


# ---------------------------------------------------------------------------
# expire_on_commit (seed 002)


@pytest.mark.parametrize("expire", [True, False])
def test_expire_on_commit_is_honoured(real: Any, expire: bool) -> None:
    database = Database(real.engine, expire_on_commit=expire)
    with database.scope():
        with db_transaction() as session:
            event = Event(id=real.id("a"), title="t")
            session.add(event)
        assert bool(inspect(event).expired_attributes) is expire
        with capture_sql(real.engine) as sql:
            assert event.title == "t"  # expired: reloaded in the scope; else: no SQL
        assert bool(sql) is expire


def test_expire_on_commit_from_settings(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for value, expected in (("false", False), ("true", True)):
        database = Database.from_settings(
            {
                "myapp.env": "testing",
                "sqlalchemy.url": f"sqlite:///{tmp_path / 'x.sqlite'}",
                "sqlalchemy.expire_on_commit": value,
            }
        )
        assert database.session_factory.kw["expire_on_commit"] is expected
        database.dispose()


def test_request_dbsession_honours_the_setting(
    tmp_path: Path, monkeypatch: Any, request_thread: Any
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)

    def view(request: Any) -> dict[str, Any]:
        return {
            "expire_on_commit": request.dbsession.expire_on_commit,
            "current": request.dbsession is current_session(),
        }

    for value, expected in (("false", False), ("true", True)):
        app = make_app(
            None,
            {"/probe": view},
            request_thread,
            **{
                "myapp.env": "testing",
                "sqlalchemy.url": f"sqlite:///{tmp_path / 'r.sqlite'}",
                "sqlalchemy.expire_on_commit": value,
            },
        )
        try:
            assert app.get("/probe").json == {"expire_on_commit": expected, "current": True}
        finally:
            app.registry["db"].dispose()
    assert request_thread.open_transaction() is None


# ---------------------------------------------------------------------------
# init_db (seed 002; `myapp initdb`)


def test_init_db_creates_the_tables(tmp_path: Path) -> None:
    database = Database.from_url(f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    try:
        init_db(database)
        init_db(database)  # idempotent
        assert set(Base.metadata.tables) <= set(inspect(database.engine).get_table_names())
        with database.scope():
            Event(id="ev_001", title="works").save()
        init_db(database, drop=True)
        with database.scope() as session:
            assert event_ids(session) == set()
    finally:
        database.dispose()


def test_init_db_with_migrations_is_myapp_initdb(tmp_path: Path) -> None:
    database = Database.from_url(f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    try:
        init_db(database, alembic_script_location="myapp:alembic")
        init_db(database, alembic_script_location="myapp:alembic")  # up to date: nothing to do
        tables = set(inspect(database.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        with database.engine.connect() as conn:
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head
        with database.scope():
            Event(id="ev_001", title="works").save()
            assert Event.session.get(Event, "ev_001").title == "works"
    finally:
        database.dispose()


@pytest.mark.postgresql_only
def test_init_db_on_a_fresh_postgresql_database(dbengine: Any, backend: str) -> None:
    admin = create_engine(dbengine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"{dbengine.url.database}_initdb"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    database = Database(create_engine(dbengine.url.set(database=name)))
    try:
        init_db(database)
        assert set(Base.metadata.tables) <= set(inspect(database.engine).get_table_names())
        with database.scope():
            Event(id="ev_001", title="works").save()
    finally:
        database.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "myapp:alembic")
    return config
