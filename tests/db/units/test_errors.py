"""Issue 3, item 10: failed commits, ``PendingRollbackError``, expired objects after rollback.

Also seed 001's rollback scenarios as they play out in this project (see
docs/rollback-behaviour.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, func, insert, inspect, select
from sqlalchemy.exc import DBAPIError, IntegrityError, PendingRollbackError

from myapp.db import (
    TransactionFailed,
    current_session,
    current_transaction,
    db_transaction,
    savepoint,
)
from myapp.models import Event
from myapp.testing.plugin import threaded_wsgi

from .conftest import event_ids

# A child row whose parent is missing passes every statement and fails at COMMIT:
# the foreign key is checked at the end of the transaction (both backends).
deferred = MetaData()
parents = Table("uow_parents", deferred, Column("id", Integer, primary_key=True))
children = Table(
    "uow_children",
    deferred,
    Column("id", Integer, primary_key=True),
    Column(
        "parent_id",
        Integer,
        ForeignKey("uow_parents.id", deferrable=True, initially="DEFERRED"),
    ),
)


@pytest.fixture
def deferred_fk(real: Any) -> Iterator[Any]:
    deferred.create_all(real.engine)
    try:
        yield real
    finally:
        deferred.drop_all(real.engine)


#: why the failed-COMMIT tests do not run on MySQL/MariaDB
NO_DEFERRED_KEYS = (
    "InnoDB has no deferred constraints: a foreign key is checked at each statement, so no "
    "COMMIT fails on one (the statement does, and that is tested on every backend)"
)


def count(real: Any, table: Table) -> int:
    with real.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def orphan(session: Any, child_id: int = 1) -> None:
    session.execute(insert(children).values(id=child_id, parent_id=999))


# ---------------------------------------------------------------------------
# a failed COMMIT


@pytest.mark.not_mysql(reason=NO_DEFERRED_KEYS)
def test_a_failed_commit_leaves_nothing_open(deferred_fk: Any) -> None:
    real = deferred_fk
    with real.database.scope():
        reached = []
        with pytest.raises(IntegrityError):
            with db_transaction() as session:
                orphan(session)
                reached.append("the statement passed")  # it is the COMMIT that fails
        assert reached
        assert current_transaction() is None
        assert real.engine.pool.checkedout() == 0  # even inside the scope
        with db_transaction() as session:  # the next unit of work works
            session.execute(insert(parents).values(id=999))
            orphan(session)
    assert (count(real, parents), count(real, children)) == (1, 1)


@pytest.mark.not_mysql(reason=NO_DEFERRED_KEYS)
def test_a_failed_session_commit_in_a_scope(deferred_fk: Any) -> None:
    real = deferred_fk
    with real.database.scope() as session:
        orphan(session)
        with pytest.raises(IntegrityError):
            session.commit()
        assert current_transaction() is None
        assert real.engine.pool.checkedout() == 0
        session.execute(insert(parents).values(id=1))
        session.commit()
    assert count(real, parents) == 1


@pytest.mark.not_mysql(reason=NO_DEFERRED_KEYS)
def test_a_failed_commit_with_auto_commit_false(deferred_fk: Any) -> None:
    real = deferred_fk
    with real.database.scope():
        with db_transaction(auto_commit=False) as session:
            orphan(session)
            with pytest.raises(IntegrityError):
                session.commit()
            session.execute(insert(parents).values(id=1))  # the block goes on
            session.commit()
        assert current_transaction() is None
    assert (count(real, parents), count(real, children)) == (1, 0)


@pytest.mark.not_mysql(reason=NO_DEFERRED_KEYS)
def test_after_a_failed_commit_in_with_transaction_manager(deferred_fk: Any, caplog: Any):
    """``transaction`` keeps a transaction whose commit failed; units of work clean it up."""
    caplog.set_level(logging.WARNING, logger="myapp.db")
    real = deferred_fk
    with real.database.scope() as session:
        with pytest.raises(IntegrityError):
            with transaction.manager:
                orphan(session)
        assert current_transaction().status == "Commit failed"
        assert real.engine.pool.checkedout() == 0
        with db_transaction() as session:
            session.execute(insert(parents).values(id=1))
        assert any("commit failed earlier" in r.getMessage() for r in caplog.records)
    assert count(real, parents) == 1


def test_an_integrity_error_raised_at_commit_time(db: Any) -> None:
    """The flush that fails is the one the commit does (nothing was flushed before)."""
    db.session.execute(insert(Event).values(id="taken", title="t"))
    db.session.commit()
    with pytest.raises(IntegrityError):
        with db_transaction() as session:
            session.add(Event(id="ok", title="t"))
            session.add(Event(id="taken", title="duplicate"))
    assert current_transaction() is None
    Event(id="next", title="the next unit of work works").save()
    assert event_ids(db.session) == {"taken", "next"}


# ---------------------------------------------------------------------------
# PendingRollbackError never escapes


def duplicate(session: Any, event_id: str) -> None:
    session.execute(insert(Event).values(id=event_id, title="duplicate"))


def test_a_failed_flush_in_a_nested_unit_caught_by_the_caller(db: Any) -> None:
    Event(id="taken", title="t").save()
    with db_transaction() as session:
        session.add(Event(id="a", title="t"))
        with pytest.raises(IntegrityError):
            with db_transaction():
                session.add(Event(id="b", title="t"))
                duplicate(session, "taken")
        with pytest.raises(IntegrityError):
            with savepoint():
                session.add(Event(id="taken", title="orm duplicate"))
                session.flush()
        session.add(Event(id="c", title="the outer unit still works"))
    assert event_ids(db.session) == {"taken", "a", "c"}


@pytest.mark.parametrize("how", ["core", "orm"])
def test_an_error_caught_without_a_savepoint_fails_the_commit(db: Any, how: str) -> None:
    """PostgreSQL aborts the whole transaction on a failed statement; SQLite would go on.

    Either way the commit refuses, rolls back and says what to do.
    """
    Event(id="taken", title="t").save()
    with pytest.raises(TransactionFailed, match="with savepoint") as info:
        with db_transaction() as session:
            session.add(Event(id="a", title="t"))
            try:
                if how == "core":
                    duplicate(session, "taken")
                else:
                    session.add(Event(id="taken", title="orm duplicate"))
                    session.flush()
            except IntegrityError:
                pass  # swallowed
    assert "IntegrityError" in str(info.value)
    assert isinstance(info.value.__cause__, IntegrityError)
    assert current_transaction() is None
    assert event_ids(db.session) == {"taken"}


def test_no_silent_rollback_at_a_real_commit(real: Any) -> None:
    """Without the guard, PostgreSQL turns this COMMIT into a ROLLBACK without a word."""
    with real.database.scope():
        Event(id=real.id("taken"), title="t").save()
        with pytest.raises(TransactionFailed):
            with db_transaction() as session:
                session.add(Event(id=real.id("a"), title="t"))
                session.flush()
                try:
                    duplicate(session, real.id("taken"))
                except IntegrityError:
                    pass
        Event(id=real.id("b"), title="the next unit of work works").save()
    assert real.event_ids() == {real.id("taken"), real.id("b")}


def test_a_savepoint_rolled_back_clears_the_error(db: Any) -> None:
    Event(id="taken", title="t").save()
    with db_transaction() as session:
        try:
            with savepoint():
                duplicate(session, "taken")
        except IntegrityError:
            pass
        sp = transaction.savepoint()
        try:
            duplicate(session, "taken")
        except IntegrityError:
            sp.rollback()  # rolling back to a savepoint by hand works as well
        session.add(Event(id="a", title="t"))
    assert event_ids(db.session) == {"taken", "a"}


def test_a_plain_sqlalchemy_savepoint_clears_the_error_too(db: Any) -> None:
    Event(id="taken", title="t").save()
    with db_transaction() as session:
        try:
            with session.begin_nested():
                duplicate(session, "taken")
        except IntegrityError:
            pass
        session.add(Event(id="a", title="t"))
    assert event_ids(db.session) == {"taken", "a"}


def test_an_error_outside_the_units_connections_does_not_count(real: Any) -> None:
    with real.database.scope():
        with db_transaction() as session:
            session.add(Event(id=real.id("a"), title="t"))
            session.flush()
            with real.engine.connect() as other:  # not the unit of work's connection
                with pytest.raises(DBAPIError, match="no_such_table"):
                    other.exec_driver_sql("SELECT * FROM no_such_table")
    assert real.event_ids() == {real.id("a")}


def test_using_the_session_after_a_caught_error_becomes_transaction_failed(db: Any) -> None:
    Event(id="taken", title="t").save()
    with db_transaction():
        with pytest.raises(TransactionFailed, match="without rolling back to a savepoint"):
            with db_transaction() as session:
                try:
                    session.add(Event(id="taken", title="orm duplicate"))
                    session.flush()
                except IntegrityError:
                    pass
                session.scalars(select(Event)).all()  # PendingRollbackError inside
        Event(id="after", title="the outer unit carries on").save()
    assert event_ids(db.session) == {"taken", "after"}


@pytest.mark.parametrize("nested", [False, True], ids=["outermost", "nested"])
def test_a_pending_rollback_error_never_leaves_a_unit_unconverted(db: Any, nested: bool) -> None:
    """SQLAlchemy's PendingRollbackError raised in a unit leaves it as TransactionFailed."""
    Event(id="taken", title="t").save()

    def body() -> None:
        with db_transaction() as session:
            try:
                session.add(Event(id="taken", title="orm duplicate"))
                session.flush()
            except IntegrityError:
                pass
            session.connection()  # PendingRollbackError: the ORM refuses to go on

    with pytest.raises(TransactionFailed) as raised:
        if nested:
            with db_transaction():
                body()
        else:
            body()
    assert isinstance(raised.value.__cause__, PendingRollbackError | TransactionFailed)
    assert current_transaction() is None
    assert event_ids(db.session) == {"taken"}


def test_requests_never_show_a_pending_rollback_error(db: Any, database: Any, request_thread):
    """Through pyramid_tm and the application's JSON error views (myapp.views.errors)."""

    def careless(request: Any) -> dict[str, Any]:
        try:
            request.dbsession.add(Event(id="taken", title="duplicate"))
            request.dbsession.flush()
        except IntegrityError:
            pass  # the view swallows it: the request's commit cannot happen
        return {"ok": True}

    def fine(request: Any) -> dict[str, Any]:
        return {"count": len(event_ids(request.dbsession))}

    Event(id="taken", title="t").save()
    settings = {"myapp.database": database, "myapp.expose_errors": "false", "retry.attempts": "1"}
    with Configurator(settings=settings) as config:
        config.include("myapp.db.pyramid")
        config.scan("myapp.views.errors")
        for name, view in (("careless", careless), ("fine", fine)):
            config.add_route(name, f"/u/{name}")
            config.add_view(view, route_name=name, renderer="json")
    app = webtest.TestApp(
        threaded_wsgi(config.make_wsgi_app(), request_thread),
        extra_environ={"HTTP_HOST": "example.com"},
    )
    response = app.post("/u/careless", status=500)
    assert response.json == {"error": "internal server error"}
    assert "PendingRollback" not in response.text
    assert app.get("/u/fine").json == {"count": 1}  # the next request works
    assert request_thread.open_transaction() is None


# ---------------------------------------------------------------------------
# expired objects after a rollback (seed 001)


def test_objects_are_expired_after_a_failed_unit_of_work(db: Any) -> None:
    event = Event(id="a", title="committed").save()
    with pytest.raises(RuntimeError):
        with db_transaction():
            event.title = "changed"
            current_session().flush()
            raise RuntimeError()
    assert "title" in inspect(event).expired_attributes
    assert event.title == "committed"  # reloaded from the database on access


def test_new_objects_of_a_failed_unit_of_work_become_transient(db: Any) -> None:
    with pytest.raises(RuntimeError):
        with db_transaction() as session:
            event = Event(id="a", title="t")
            session.add(event)
            session.flush()
            raise RuntimeError()
    assert inspect(event).transient
    assert event.id == "a"  # a plain object again: save() would insert it afresh
    event.save()
    assert event_ids(db.session) == {"a"}


def test_objects_deleted_in_a_failed_unit_of_work_are_persistent_again(db: Any) -> None:
    event = Event(id="a", title="t").save()
    with pytest.raises(RuntimeError):
        with db_transaction():
            event.delete()
            assert inspect(event).deleted
            raise RuntimeError()
    assert inspect(event).persistent
    assert event_ids(db.session) == {"a"}


def test_a_savepoint_rollback_expires_only_what_changed_inside_it(db: Any) -> None:
    untouched = Event(id="a", title="t").save()
    changed = Event(id="b", title="t").save()
    with db_transaction() as session:
        assert (untouched.title, changed.title) == ("t", "t")  # loaded in this unit
        with pytest.raises(RuntimeError), db_transaction():
            changed.title = "changed in the savepoint"
            added = Event(id="c", title="added in the savepoint")
            session.add(added)
            session.flush()
            raise RuntimeError()
        assert not inspect(untouched).expired_attributes
        assert "title" in inspect(changed).expired_attributes
        assert changed.title == "t"
        assert inspect(added).transient


def test_scenario_1_rollback_of_a_flushed_change(db: Any) -> None:
    event = Event(id="a", title="original").save()
    event.title = "changed"
    db.session.flush()
    db.session.rollback()
    db.session.expire_all()
    reloaded = db.session.scalars(select(Event).where(Event.id == "a")).one()
    assert reloaded is event and reloaded.title == "original"


def test_scenario_2_rollback_after_a_commit_undoes_nothing(db: Any) -> None:
    event = Event(id="a", title="original").save()
    event.title = "changed"
    event.save()
    db.session.rollback()
    assert event.title == "changed"


def test_scenario_4_business_code_adopts_pending_work_instead_of_rolling_it_back(db: Any):
    """No defensive rollback here: the outermost unit adopts the scope's pending work."""
    Event(id="a", title="original").save()
    db.session.get(Event, "a").title = "pending change"
    db.session.flush()

    @db_transaction()
    def business_code() -> None:
        current_session().add(Event(id="b", title="t"))

    business_code()
    db.session.expire_all()
    assert db.session.get(Event, "a").title == "pending change"
    assert event_ids(db.session) == {"a", "b"}


def test_partial_rollback(db: Any) -> None:
    first = Event(id="a", title="original").save()
    second = Event(id="b", title="original").save()
    first.title = "committed change"
    first.save()
    second.title = "flushed change"
    db.session.flush()
    db.session.rollback()
    db.session.expire_all()
    assert (first.title, second.title) == ("committed change", "original")
