"""Issue 3, item 1: business code finds the current unit of work without globals.

Sources of the current scope: a request, ``Database.scope()`` in scripts, a
script's ``with transaction.manager:`` once the session joined it, and the
test fixtures. ``Database`` is built from settings, an ini file or a URL.
"""

from __future__ import annotations

import contextvars
import textwrap
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import transaction
from sqlalchemy import select, text

from myapp.db import (
    Database,
    NoScope,
    NoUnitOfWork,
    current_scope,
    current_session,
    current_transaction,
    db_transaction,
    is_in_transaction,
)
from myapp.models import Event

from .conftest import event_ids, make_app

ROOT = Path(__file__).resolve().parents[3]


def create_event(event_id: str, title: str = "created by business code") -> Event:
    """Business code: finds its session itself, never commits by hand."""
    with db_transaction() as session:
        assert session is current_session()
        event = Event(id=event_id, title=title)
        session.add(event)
    return event


# ---------------------------------------------------------------------------
# the test fixtures


def test_the_fixture_scope_is_current(db: Any, database: Database) -> None:
    assert current_scope().kind == "test"
    assert current_session() is db.session
    assert database.session is db.session
    assert Event.session is db.session
    create_event("ev_fixture")
    assert current_transaction() is None
    assert event_ids(db.session) == {"ev_fixture"}


def test_outside_any_scope_the_error_says_where_to_open_one() -> None:
    def probe() -> None:
        with pytest.raises(NoScope, match=r"db\.scope\(\)"):
            current_session()
        with pytest.raises(NoScope, match="only available inside a scope"):
            _ = Database.from_url("sqlite://").session
        with pytest.raises(NoScope):
            create_event("ev_nowhere")

    contextvars.Context().run(probe)  # an empty context: no scope, whatever the test has


# ---------------------------------------------------------------------------
# Database.scope() in scripts


def test_database_scope_is_current_and_commits_through_units(real: Any) -> None:
    database = real.database
    with database.scope() as session:
        assert current_session() is session
        assert database.session is session
        assert current_scope().database is database
        assert not is_in_transaction()
        create_event(real.id("a"))
        assert current_transaction() is None
        # committed for real: another connection sees it while the scope is open
        assert real.event_ids() == {real.id("a")}
    assert real.engine.pool.checkedout() == 0
    with pytest.raises(NoScope):
        _ = database.session


def test_a_scope_discards_what_was_not_committed_and_closes(real: Any) -> None:
    with real.database.scope() as session:
        session.add(Event(id=real.id("pending"), title="never committed"))
        session.flush()  # an implicit unit of work holds it
        assert current_transaction() is not None and not is_in_transaction()
    assert current_transaction() is None
    assert real.engine.pool.checkedout() == 0
    assert real.event_ids() == set()


def test_session_commit_in_a_scope_commits_its_implicit_unit_of_work(real: Any) -> None:
    with real.database.scope() as session:
        session.add(Event(id=real.id("s"), title="plain SQLAlchemy style"))
        session.commit()
        assert current_transaction() is None
        session.add(Event(id=real.id("r"), title="rolled back"))
        session.rollback()
    assert real.event_ids() == {real.id("s")}


def test_a_nested_scope_of_the_same_database_reuses_the_session(real: Any) -> None:
    with real.database.scope() as outer, real.database.scope() as inner:
        assert inner is outer
    other = Database(real.engine)
    with real.database.scope() as outer, other.scope() as inner:
        assert inner is not outer
        assert current_scope().database is other
        with pytest.raises(NoScope, match="another Database"):
            _ = real.database.session


# ---------------------------------------------------------------------------
# a script's `with transaction.manager:`


def test_with_transaction_manager_finds_the_joined_session(real: Any) -> None:
    def script() -> None:
        session = real.database.session_factory()
        try:
            with pytest.raises(NoUnitOfWork, match="outside a unit of work"):
                session.execute(select(1))
            with transaction.manager:
                with pytest.raises(NoScope):  # nothing joined yet: no session to find
                    current_session()
                session.execute(text("SELECT 1"))  # joins the transaction
                assert current_session() is session
                assert current_scope().database is real.database
                assert is_in_transaction()
                create_event(real.id("tm"))  # nested: a savepoint of the script's transaction
                assert real.event_ids() == set()  # nothing committed before the outermost
            assert real.event_ids() == {real.id("tm")}
        finally:
            session.close()

    contextvars.Context().run(script)


# ---------------------------------------------------------------------------
# requests


def test_a_request_is_the_current_unit_of_work(db: Any, database: Database, request_thread: Any):
    def view(request: Any) -> dict[str, Any]:
        event = create_event(request.params["id"])  # nested in the request's transaction
        return {
            "kind": current_scope().kind,
            "same_session": current_session() is request.dbsession,
            "in_transaction": is_in_transaction(),
            "id": event.id,
        }

    def failing(request: Any) -> dict[str, Any]:
        create_event(request.params["id"])
        raise RuntimeError("the view failed after the business code succeeded")

    app = make_app(database, {"/create": view, "/fail": failing}, request_thread)
    body = app.post("/create", {"id": "ev_request"}).json
    assert body == {
        "kind": "request",
        "same_session": True,
        "in_transaction": True,
        "id": body["id"],
    }
    with pytest.raises(RuntimeError, match="view failed"):
        app.post("/fail", {"id": "ev_failed"})
    assert event_ids(db.session) == {"ev_request"}


# ---------------------------------------------------------------------------
# Database from settings, an ini file, a URL


def write_ini(path: Path, **settings: str) -> Path:
    lines = "\n".join(f"{key} = {value}" for key, value in settings.items())
    path.write_text(textwrap.dedent("[app:main]\nuse = egg:myapp\n") + lines + "\n")
    return path


def test_from_config_reads_an_ini_file(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MYAPP_ENV", raising=False)
    ini = write_ini(
        tmp_path / "app.ini",
        **{
            "myapp.env": "local",
            "myapp.timezone": "America/New_York",
            "myapp.read_only": "true",
            "sqlalchemy.url": "sqlite:///%(here)s/var/main.sqlite",
            "sqlalchemy.expire_on_commit": "false",
            "sqlalchemy.replica.url": "sqlite:///%(here)s/var/replica.sqlite",
        },
    )
    database = Database.from_config(str(ini))
    try:
        assert database.engine.url.database == str(tmp_path / "var" / "main.sqlite")
        assert database.replica_engine is not None
        assert database.replica_engine.url.database == str(tmp_path / "var" / "replica.sqlite")
        assert database.session_factory.kw["expire_on_commit"] is False
        assert database.timezone == ZoneInfo("America/New_York")
        assert database.maintenance.on
        with database.scope() as session:
            assert session.scalar(text("SELECT 42")) == 42
    finally:
        database.dispose()


def test_from_config_development_ini(monkeypatch: Any) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MYAPP_ENV", raising=False)
    database = Database.from_config(str(ROOT / "development.ini"))
    try:
        assert database.engine.dialect.name == "sqlite"
        assert database.engine.url.database == str(ROOT / "var" / "myapp.sqlite")
        assert database.replica_engine is None
        assert database.timezone == ZoneInfo("Europe/Paris")
        assert not database.maintenance.on
    finally:
        database.dispose()


def test_database_url_environment_variable_wins(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.sqlite'}")
    database = Database.from_config(str(ROOT / "development.ini"))
    try:
        assert database.engine.url.database == str(tmp_path / "env.sqlite")
    finally:
        database.dispose()


def test_from_url(tmp_path: Path, dbengine: Any) -> None:
    database = Database.from_url(f"sqlite:///{tmp_path / 'a.sqlite'}", timezone="UTC")
    try:
        assert database.timezone == ZoneInfo("UTC")
        with database.scope() as session:
            assert session.scalar(text("SELECT 1")) == 1
    finally:
        database.dispose()
    url = dbengine.url.render_as_string(hide_password=False)
    database = Database.from_url(url, expire_on_commit=False)
    try:
        assert database.engine.dialect.name == dbengine.dialect.name
        assert database.session_factory.kw["expire_on_commit"] is False
    finally:
        database.dispose()
