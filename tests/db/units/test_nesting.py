"""The nesting state: the manager's own commit/abort refused inside units, the rollback flag,
``with transaction.manager:`` adopting a scope's implicit unit, misuse errors, real commits.
"""

from __future__ import annotations

from typing import Any

import pytest
import transaction
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from myapp.db import (
    NoUnitOfWork,
    TransactionFailed,
    TransactionManaged,
    current_transaction,
    db_read_only,
    db_transaction,
    get_rollback,
    is_in_transaction,
    join_transaction,
    mark_changed,
    mark_for_rollback_on_error,
    savepoint,
    set_rollback,
)
from myapp.db.pyramid import manager_hook
from myapp.models import Event


class Boom(Exception):
    pass


def _add(real: Any, session: Any, name: str) -> None:
    session.add(Event(id=real.id(name), title="t"))
    session.flush()


@pytest.mark.parametrize("verb", ["commit", "abort"])
@pytest.mark.parametrize("block", ["db_transaction", "savepoint", "db_read_only", "request.tm"])
def test_the_managers_own_commit_and_abort_are_refused_inside_a_block(
    real: Any, verb: str, block: str
) -> None:
    """Nothing is committed or thrown away: the unit goes on and ends as it would have."""
    with real.database.scope():
        with db_transaction() as session:
            _add(real, session, "before")
            if block == "db_transaction":
                blocks: Any = db_transaction()
            elif block == "savepoint":
                blocks = savepoint()
            elif block == "db_read_only":
                blocks = db_read_only()
            else:
                blocks = db_transaction()
            with blocks:
                manager = manager_hook(None) if block == "request.tm" else transaction
                with pytest.raises(TransactionManaged, match=rf"transaction\.{verb}\(\) inside"):
                    getattr(manager, verb)()
                assert is_in_transaction()
            _add(real, session, "after")
    assert real.event_ids() == {real.id("before"), real.id("after")}
    assert current_transaction() is None


def test_outside_blocks_the_manager_commits_as_usual(real: Any) -> None:
    session = real.database.session_factory()
    try:
        transaction.begin()
        _add(real, session, "tm")
        transaction.commit()
    finally:
        session.close()
    assert real.event_ids() == {real.id("tm")}


def test_set_rollback_rolls_the_unit_back_without_raising(real: Any) -> None:
    with real.database.scope():
        with db_transaction() as session:
            _add(real, session, "kept")
            with db_transaction():
                _add(real, session, "undone")
                assert get_rollback() is False
                set_rollback(True)
                assert get_rollback() is True
                with pytest.raises(TransactionFailed, match="marked for rollback"):
                    session.scalars(select(Event)).all()
            assert get_rollback() is False  # the savepoint rolled back, the flag went with it
        assert real.event_ids() == {real.id("kept")}
        with db_transaction() as session:
            _add(real, session, "never")
            set_rollback(True)
    assert real.event_ids() == {real.id("kept")}


def test_set_rollback_in_a_with_transaction_manager_block_aborts_it(real: Any) -> None:
    session = real.database.session_factory()
    try:
        with transaction.manager:
            _add(real, session, "aborted")
            set_rollback(True)
    finally:
        session.close()
    assert real.event_ids() == set()
    assert current_transaction() is None


def test_the_rollback_flag_outside_a_unit_of_work_says_so(real: Any) -> None:
    with pytest.raises(NoUnitOfWork, match=r"get_rollback\(\) only works inside"):
        get_rollback()
    with pytest.raises(NoUnitOfWork, match=r"set_rollback\(\) only works inside"):
        set_rollback(True)
    with real.database.scope() as session:
        session.scalars(select(Event)).all()  # the scope's implicit unit does not count
        with pytest.raises(NoUnitOfWork):
            get_rollback()


def test_mark_for_rollback_on_error_marks_the_enclosing_unit(real: Any) -> None:
    with real.database.scope():
        with db_transaction() as session:
            _add(real, session, "gone")
            try:
                with mark_for_rollback_on_error():
                    raise Boom()
            except Boom:
                pass  # caught: the unit still rolls back
            assert get_rollback() is True
    assert real.event_ids() == set()
    with pytest.raises(Boom):  # outside a unit of work: it only propagates
        with mark_for_rollback_on_error():
            raise Boom()


def test_a_merged_unit_that_fails_marks_the_enclosing_one(real: Any) -> None:
    with real.database.scope():
        with db_transaction() as session:
            _add(real, session, "outer")
            with pytest.raises(Boom):
                with db_transaction(savepoint=False):
                    _add(real, session, "merged")
                    raise Boom()
            assert get_rollback() is True
            with pytest.raises(TransactionFailed):
                _add(real, session, "refused")
    assert real.event_ids() == set()


def test_with_transaction_manager_adopts_the_scopes_implicit_unit(real: Any) -> None:
    """``Database.scope()``'s promise: writes commit through ``with transaction.manager:``."""
    with real.database.scope() as session:
        session.scalars(select(Event)).all()  # a read: the implicit unit of work began
        session.add(Event(id=real.id("pending"), title="t"))
        with transaction.manager:
            session.add(Event(id=real.id("in block"), title="t"))
        assert current_transaction() is None
    assert real.event_ids() == {real.id("pending"), real.id("in block")}


@pytest.mark.parametrize("call", [join_transaction, mark_changed])
def test_joining_a_bare_session_outside_a_unit_of_work_is_no_unit_of_work(
    real: Any, call: Any
) -> None:
    session = real.database.session_factory()
    try:
        with pytest.raises(NoUnitOfWork, match="outside a unit of work"):
            call(session)
    finally:
        session.close()
    assert current_transaction() is None


@pytest.mark.parametrize("call", [join_transaction, mark_changed])
def test_joining_a_scopes_session_begins_its_implicit_unit(real: Any, call: Any) -> None:
    with real.database.scope() as session:
        call(session)
        txn = current_transaction()
        assert txn is not None and not is_in_transaction()
    assert current_transaction() is None


def test_a_durable_unit_inside_another_writes_nothing(real: Any) -> None:
    from myapp.db import NestedTransactionError

    with real.database.scope():
        with db_transaction() as session:
            _add(real, session, "outer")
            with pytest.raises(NestedTransactionError, match="durable"):
                with db_transaction(durable=True):
                    _add(real, session, "never")  # pragma: no cover
    assert real.event_ids() == {real.id("outer")}


def test_units_ended_out_of_order_are_refused_and_cleaned_up(real: Any) -> None:
    with real.database.scope():
        outer = db_transaction()
        inner = db_transaction()
        outer.__enter__()
        inner.__enter__()
        with pytest.raises(TransactionManaged, match="innermost first"):
            outer.__exit__(None, None, None)
        assert get_rollback() is True
        transaction.commit()  # the owner's commit aborts it
    assert real.event_ids() == set()
    assert current_transaction() is None


def test_a_nested_unit_whose_release_fails_inside_a_savepoint_leaves_the_outer_unit_usable(
    real: Any,
) -> None:
    """The duplicate is flushed by the inner unit's RELEASE; both savepoints end cleanly."""

    def create(name: str) -> None:
        with db_transaction() as session:
            session.add(Event(id=real.id(name), title="t"))  # flushed at the release

    with real.database.scope():
        with db_transaction():
            create("a")
            with pytest.raises(IntegrityError):
                with savepoint():
                    create("b")
                    create("a")
            create("c")
    assert real.event_ids() == {real.id("a"), real.id("c")}
    assert current_transaction() is None
