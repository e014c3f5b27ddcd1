"""Issue 3, items 2 and 3: ``db_transaction``, ``savepoint()``, ``is_in_transaction()``.

Under the ``db`` fixture a commit is a savepoint release, which goes through
the same code as a real commit; tests that need another connection to see
(or not see) the commit use ``real``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import transaction
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from myapp.db import (
    Database,
    NestedTransactionError,
    NoUnitOfWork,
    TransactionManaged,
    current_session,
    current_transaction,
    db_transaction,
    is_in_transaction,
    savepoint,
)
from myapp.models import Event, Item
from myapp.testing.helpers import count_events

from .conftest import event_ids


def add(event_id: str, title: str = "t") -> Event:
    event = Event(id=event_id, title=title)
    current_session().add(event)
    current_session().flush()
    return event


class Boom(Exception):
    pass


# ---------------------------------------------------------------------------
# outermost


def test_outermost_commits_at_the_end(db: Any) -> None:
    with count_events(db.connection, "release_savepoint") as counts:
        with db_transaction() as session:
            assert session is db.session
            assert is_in_transaction()
            add("a")
            assert counts["release_savepoint"] == 0
        assert counts["release_savepoint"] == 1  # the fixture's form of COMMIT
    assert current_transaction() is None
    assert not is_in_transaction()
    assert event_ids(db.session) == {"a"}


def test_outermost_aborts_on_an_exception(db: Any) -> None:
    with pytest.raises(Boom):
        with db_transaction():
            add("a")
            raise Boom()
    assert current_transaction() is None
    assert event_ids(db.session) == set()


def test_as_a_decorator(db: Any) -> None:
    @db_transaction()
    def create(event_id: str) -> str:
        assert is_in_transaction()
        return add(event_id).id

    @db_transaction()
    def fail() -> None:
        add("failed")
        raise Boom()

    assert create("a") == "a"
    assert create("b") == "b"  # a decorator is reusable: a fresh unit of work per call
    with pytest.raises(Boom):
        fail()
    assert event_ids(db.session) == {"a", "b"}


def test_a_bare_decorator_is_a_unit_of_work(db: Any) -> None:
    @db_transaction
    def create() -> bool:
        return is_in_transaction()

    assert create() is True
    assert db_transaction(create)() is True
    assert current_transaction() is None


def test_a_decorator_on_a_non_callable_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="decorates a callable"):
        db_transaction()(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected True or False"):
        db_transaction(42)  # type: ignore[arg-type]


def test_outermost_adopts_the_scopes_implicit_unit_of_work(db: Any) -> None:
    db.session.add(Event(id="pending", title="added outside any unit of work"))
    assert current_transaction() is not None and not is_in_transaction()
    with db_transaction():
        add("a")
    assert event_ids(db.session) == {"pending", "a"}


def test_nothing_is_committed_before_the_outermost_commits(real: Any) -> None:
    with real.database.scope():
        with db_transaction():
            add(real.id("outer"))
            with db_transaction():
                add(real.id("inner"))
            assert real.event_ids() == set()  # another connection sees nothing yet
        assert real.event_ids() == {real.id("outer"), real.id("inner")}


def test_session_commit_inside_a_managed_unit_is_refused(db: Any) -> None:
    with db_transaction() as session:
        add("a")
        with pytest.raises(TransactionManaged, match="commits when the unit of work ends"):
            session.commit()
        with pytest.raises(TransactionManaged, match="raise an exception to abort it"):
            session.rollback()
    assert event_ids(db.session) == {"a"}


# ---------------------------------------------------------------------------
# Django-style nesting


def test_inner_failure_caught_outer_still_commits(db: Any) -> None:
    with db_transaction():
        add("outer-before")
        try:
            with db_transaction():
                add("inner")
                raise Boom()
        except Boom:
            pass
        assert event_ids(db.session) == {"outer-before"}  # rolled back to the savepoint only
        add("outer-after")
    assert event_ids(db.session) == {"outer-before", "outer-after"}


def test_inner_success_then_outer_failure_commits_nothing(db: Any) -> None:
    with pytest.raises(Boom):
        with db_transaction():
            add("outer")
            with db_transaction():
                add("inner")
            raise Boom()
    assert event_ids(db.session) == set()


def test_three_levels_deep(db: Any) -> None:
    with db_transaction():
        add("L1-a")
        with db_transaction():
            add("L2-a")
            try:
                with db_transaction():
                    add("L3")
                    raise Boom()
            except Boom:
                pass
            add("L2-b")
        try:
            with db_transaction():
                add("L2-c")
                with db_transaction():
                    add("L3-ok")  # released into L2-c, which then fails: gone with it
                raise Boom()
        except Boom:
            pass
        add("L1-b")
    assert event_ids(db.session) == {"L1-a", "L2-a", "L2-b", "L1-b"}


def test_nested_inside_a_script_transaction(db: Any) -> None:
    with transaction.manager:
        add("script")
        assert is_in_transaction()
        try:
            with db_transaction():
                add("inner")
                raise Boom()
        except Boom:
            pass
    assert event_ids(db.session) == {"script"}


def test_nested_releases_its_savepoint(db: Any) -> None:
    with count_events(db.connection, "savepoint", "release_savepoint") as counts:
        with db_transaction():
            for n in range(5):
                with db_transaction():
                    add(f"e{n}")
            inner = dict(counts)
    # five SAVEPOINTs, each released at once (no pile-up on the server)
    assert inner == {"savepoint": 5 + 1, "release_savepoint": 5}  # +1: the fixture's own
    assert len(event_ids(db.session)) == 5


def test_transaction_savepoint_directly(db: Any) -> None:
    with db_transaction():
        add("kept")
        sp = transaction.savepoint()
        add("undone")
        sp.rollback()
        add("after")
    assert event_ids(db.session) == {"kept", "after"}


# ---------------------------------------------------------------------------
# options


def test_durable_inside_a_transaction_is_an_error(db: Any) -> None:
    with db_transaction(durable=True):  # outermost: fine
        add("durable")
    with db_transaction():
        add("outer")
        with pytest.raises(NestedTransactionError, match="durable"):
            with db_transaction(durable=True):
                add("never")
    assert event_ids(db.session) == {"durable", "outer"}


def test_auto_commit_false_commits_what_the_block_commits(db: Any) -> None:
    with db_transaction(auto_commit=False) as session:
        session.add(Event(id="a", title="t"))
        session.flush()  # to get ids without committing
        session.commit()
        assert is_in_transaction()  # still inside the block's unit of work
        session.add(Event(id="b", title="t"))
        session.commit()
        session.add(Event(id="c", title="never committed"))
        session.flush()
    assert current_transaction() is None
    assert event_ids(db.session) == {"a", "b"}


def test_auto_commit_false_commits_for_real(real: Any) -> None:
    with real.database.scope():
        with db_transaction(auto_commit=False) as session:
            session.add(Event(id=real.id("a"), title="t"))
            session.commit()
            assert real.event_ids() == {real.id("a")}  # another connection sees it
            session.add(Event(id=real.id("b"), title="t"))
            session.rollback()
            session.add(Event(id=real.id("c"), title="t"))
    assert real.event_ids() == {real.id("a")}


def test_auto_commit_false_cannot_nest(db: Any) -> None:
    with db_transaction():
        with pytest.raises(NestedTransactionError, match="auto_commit=False"):
            with db_transaction(auto_commit=False):
                pass


def test_reraise_false_logs_and_rolls_back(db: Any, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="myapp.db")
    with db_transaction(reraise=False):
        add("lost")
        raise Boom("swallowed")
    assert current_transaction() is None
    assert event_ids(db.session) == set()
    (record,) = [r for r in caplog.records if r.name == "myapp.db"]
    assert "not re-raised" in record.getMessage()
    assert record.exc_info[0] is Boom


def test_reraise_false_nested_lets_the_outer_carry_on(db: Any, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="myapp.db")
    with db_transaction():
        add("outer")
        with db_transaction(reraise=False):
            add("inner")
            raise Boom()
        add("after")
    assert event_ids(db.session) == {"outer", "after"}
    assert any(r.exc_info and r.exc_info[0] is Boom for r in caplog.records)


def test_auto_rollback_false_nested_leaves_the_decision_to_the_outer(db: Any) -> None:
    with db_transaction():
        try:
            with db_transaction(auto_rollback=False):
                add("kept-by-outer")
                raise Boom()
        except Boom:
            pass
    assert event_ids(db.session) == {"kept-by-outer"}


def test_base_exceptions_are_never_swallowed(db: Any) -> None:
    with pytest.raises(KeyboardInterrupt):
        with db_transaction(reraise=False):
            add("x")
            raise KeyboardInterrupt()
    assert current_transaction() is None
    assert event_ids(db.session) == set()


# ---------------------------------------------------------------------------
# savepoint() and is_in_transaction()


def test_savepoint_needs_a_transaction(db: Any) -> None:
    with pytest.raises(NoUnitOfWork, match="needs an active unit of work"):
        with savepoint():
            pass


def test_savepoint_rolls_back_its_own_changes(db: Any) -> None:
    with db_transaction():
        add("a")
        with pytest.raises(Boom):
            with savepoint():
                add("b")
                raise Boom()
        with savepoint():
            add("c")
    assert event_ids(db.session) == {"a", "c"}


def test_is_in_transaction(db: Any) -> None:
    assert not is_in_transaction()
    db.session.execute(text("SELECT 1"))  # implicit unit of work of the fixture's scope
    assert current_transaction() is not None
    assert not is_in_transaction()
    db.session.rollback()
    with db_transaction():
        assert is_in_transaction()
        with savepoint():
            assert is_in_transaction()
    with transaction.manager:
        assert is_in_transaction()
    assert not is_in_transaction()


# ---------------------------------------------------------------------------
# retries


def test_attempts_needs_the_decorator_form(db: Any) -> None:
    with pytest.raises(TypeError, match="decorator"):
        with db_transaction(attempts=3):
            pass
    with pytest.raises(ValueError, match="at least 1"):
        db_transaction(attempts=0)


def test_attempts_does_not_retry_other_errors(db: Any) -> None:
    calls = []

    @db_transaction(attempts=3)
    def fail() -> None:
        calls.append(1)
        add(f"try{len(calls)}")
        raise Boom()

    with pytest.raises(Boom):
        fail()
    assert calls == [1]
    assert event_ids(db.session) == set()


@pytest.mark.postgresql_only
def test_attempts_retries_a_real_serialization_failure(real: Any, backend: str, caplog: Any):
    """Two connections: the second commits an update between our read and our write."""
    caplog.set_level(logging.WARNING, logger="myapp.db")
    with real.engine.begin() as conn:
        item_id = conn.scalar(
            Item.__table__.insert().values(name=real.id("v0")).returning(Item.__table__.c.id)
        )
    database = Database(real.engine.execution_options(isolation_level="REPEATABLE READ"))
    seen: list[str] = []

    @db_transaction(attempts=3)
    def rename() -> None:
        session = current_session()
        item = session.get(Item, item_id)  # the snapshot is taken here
        seen.append(item.name)
        if len(seen) == 1:
            with real.engine.begin() as other:  # a concurrent transaction commits first
                other.execute(update(Item).where(Item.id == item_id).values(name=real.id("v1")))
        item.name = item.name + "+mine"
        session.flush()  # attempt 1: could not serialize access due to concurrent update

    with database.scope():
        rename()
        assert current_transaction() is None
    assert seen == [real.id("v0"), real.id("v1")]
    with real.engine.connect() as conn:
        name = conn.scalar(select(Item.name).where(Item.id == item_id))
    assert name == real.id("v1") + "+mine"
    assert any("retrying (1/3)" in r.getMessage() for r in caplog.records)


@pytest.mark.postgresql_only
def test_attempts_does_not_retry_when_nested(real: Any, backend: str) -> None:
    """Inside a transaction a retry cannot help: the error goes to the outer unit."""
    with real.engine.begin() as conn:
        item_id = conn.scalar(
            Item.__table__.insert().values(name=real.id("v0")).returning(Item.__table__.c.id)
        )
    database = Database(real.engine.execution_options(isolation_level="REPEATABLE READ"))
    calls = []

    @db_transaction(attempts=3)
    def rename() -> None:
        calls.append(1)
        with real.engine.begin() as other:
            other.execute(update(Item).where(Item.id == item_id).values(name=real.id("other")))
        current_session().execute(
            update(Item).where(Item.id == item_id).values(name=real.id("mine"))
        )

    with database.scope():
        with pytest.raises(OperationalError, match="could not serialize"):
            with db_transaction():
                current_session().get(Item, item_id)  # the outer snapshot
                rename()
    assert calls == [1]


@pytest.mark.postgresql_only
def test_attempts_retries_a_swallowed_serialization_failure(real: Any, backend: str) -> None:
    """The swallowed error fails the commit (TransactionFailed); its cause is transient."""
    with real.engine.begin() as conn:
        item_id = conn.scalar(
            Item.__table__.insert().values(name=real.id("v0")).returning(Item.__table__.c.id)
        )
    database = Database(real.engine.execution_options(isolation_level="REPEATABLE READ"))
    calls = []

    @db_transaction(attempts=2)
    def rename() -> None:
        calls.append(1)
        session = current_session()
        item = session.get(Item, item_id)
        if len(calls) == 1:
            with real.engine.begin() as other:
                other.execute(update(Item).where(Item.id == item_id).values(name=real.id("v1")))
        item.name = real.id("mine")
        try:
            session.flush()
        except OperationalError:
            pass  # swallowed: the commit refuses, and the retry starts afresh

    with database.scope():
        rename()
    assert calls == [1, 1]
    with real.engine.connect() as conn:
        assert conn.scalar(select(Item.name).where(Item.id == item_id)) == real.id("mine")


def test_current_transaction_is_what_the_manager_says() -> None:
    """``current_transaction`` reads an explicit manager's transaction directly: same as get()."""
    from transaction.interfaces import NoTransaction

    from myapp.db import get_tm

    def by_the_book(tm: Any) -> Any:
        try:
            return tm.get()
        except NoTransaction:
            return None

    tm = get_tm()
    assert current_transaction(tm) is None is by_the_book(tm)
    txn = tm.begin()
    try:
        assert current_transaction(tm) is txn is by_the_book(tm)
        assert current_transaction() is txn  # the default: the thread-local manager
    finally:
        tm.abort()
    assert current_transaction(tm) is None is by_the_book(tm)
    plain = transaction.TransactionManager(explicit=False)  # not explicit: get() would begin one
    assert by_the_book(plain) is not None
    plain.abort()
    own = transaction.TransactionManager(explicit=True)
    txn = own.begin()
    assert current_transaction(own) is txn
    own.commit()
    assert current_transaction(own) is None
