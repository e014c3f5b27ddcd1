"""Issue 3, item 6: ``on_commit`` hooks (Django's semantics, savepoints included)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import transaction
from sqlalchemy import text

from myapp.db import (
    current_session,
    current_transaction,
    db_transaction,
    is_in_transaction,
    on_commit,
    savepoint,
)
from myapp.models import Event

from .conftest import event_ids, make_app


class Boom(Exception):
    pass


def add(event_id: str) -> None:
    current_session().add(Event(id=event_id, title="t"))
    current_session().flush()


def test_runs_after_the_outermost_commit_in_order(db: Any) -> None:
    calls: list[str] = []
    with db_transaction():
        on_commit(lambda: calls.append("outer"))
        with db_transaction():
            on_commit(lambda: calls.append("inner"))
        assert calls == []  # the nested unit released its savepoint: no commit yet
        add("a")
        assert calls == []
    assert calls == ["outer", "inner"]


def test_runs_outside_the_committed_transaction(db: Any) -> None:
    seen: list[Any] = []

    def hook() -> None:
        seen.append((is_in_transaction(), current_transaction()))
        with db_transaction():  # a hook may open its own unit of work
            add("written-by-the-hook")

    with db_transaction():
        add("a")
        on_commit(hook)
    assert seen == [(False, None)]
    assert current_transaction() is None
    assert event_ids(db.session) == {"a", "written-by-the-hook"}


def test_dropped_when_the_transaction_aborts(db: Any) -> None:
    calls: list[str] = []
    with pytest.raises(Boom):
        with db_transaction():
            on_commit(lambda: calls.append("x"))
            raise Boom()
    with db_transaction():
        pass  # the next transaction does not inherit the dropped hook
    assert calls == []


def test_dropped_with_a_nested_unit_that_rolls_back(db: Any) -> None:
    calls: list[str] = []
    with db_transaction():
        on_commit(lambda: calls.append("before"))
        try:
            with db_transaction():
                add("inner")
                on_commit(lambda: calls.append("rolled back"))
                raise Boom()
        except Boom:
            pass
        with savepoint():
            on_commit(lambda: calls.append("released"))
        on_commit(lambda: calls.append("after"))
    assert calls == ["before", "released", "after"]


def test_dropped_three_levels_deep(db: Any) -> None:
    calls: list[str] = []
    with db_transaction():
        with db_transaction():
            on_commit(lambda: calls.append("L2"))
            try:
                with db_transaction():
                    with db_transaction():
                        on_commit(lambda: calls.append("L4, released into L3"))
                    on_commit(lambda: calls.append("L3"))
                    raise Boom()
            except Boom:
                pass
    assert calls == ["L2"]


def test_dropped_by_transaction_savepoint_rollback(db: Any) -> None:
    """Directly with ``transaction.savepoint()``: with a session joined, and with none."""
    calls: list[str] = []
    with db_transaction() as session:
        session.execute(text("SELECT 1"))  # the session joined before the savepoint
        sp = transaction.savepoint()
        on_commit(lambda: calls.append("after the joined savepoint"))
        sp.rollback()
    with transaction.manager:
        sp = transaction.savepoint()  # nothing joined the transaction yet
        on_commit(lambda: calls.append("after the empty savepoint"))
        sp.rollback()
        on_commit(lambda: calls.append("kept"))
    with transaction.manager:
        on_commit(lambda: calls.append("before"))
        sp = transaction.savepoint()
        on_commit(lambda: calls.append("rolled back"))
        sp.rollback()
    assert calls == ["kept", "before"]


def test_a_failing_robust_hook_is_logged_and_does_not_undo_the_commit(db: Any, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="myapp.db.on_commit")
    calls: list[str] = []

    def failing() -> None:
        raise Boom("the mail server is down")

    with db_transaction():
        add("committed")
        on_commit(failing, robust=True)
        on_commit(lambda: calls.append("next hook"))
    assert calls == ["next hook"]
    assert current_transaction() is None
    assert event_ids(db.session) == {"committed"}
    (record,) = [r for r in caplog.records if r.name == "myapp.db.on_commit"]
    assert "failed after the commit" in record.getMessage()
    assert record.exc_info[0] is Boom


def test_a_failing_hook_propagates_after_the_commit_and_drops_the_next_ones(db: Any) -> None:
    """Django's rule for a hook registered without robust=True: the data is committed."""
    calls: list[str] = []

    def failing() -> None:
        raise Boom("the mail server is down")

    with pytest.raises(Boom, match="mail server"):
        with db_transaction():
            add("committed")
            on_commit(failing)
            on_commit(lambda: calls.append("next hook"))
    assert calls == []
    assert current_transaction() is None
    assert event_ids(db.session) == {"committed"}
    with db_transaction():  # the next unit of work has none of those hooks
        add("again")
    assert calls == []


def test_a_non_callable_is_a_type_error_inside_and_outside(db: Any) -> None:
    with pytest.raises(TypeError, match="callable"):
        on_commit(None)  # type: ignore[arg-type]
    with db_transaction():
        with pytest.raises(TypeError, match="callable"):
            on_commit("send_mail")  # type: ignore[arg-type]


def test_outside_a_transaction_a_failing_hook_propagates_unless_robust(
    db: Any, caplog: Any
) -> None:
    def failing() -> None:
        raise Boom("now")

    with pytest.raises(Boom):
        on_commit(failing)
    caplog.set_level(logging.ERROR, logger="myapp.db.on_commit")
    on_commit(failing, robust=True)
    (record,) = [r for r in caplog.records if r.name == "myapp.db.on_commit"]
    assert record.exc_info[0] is Boom
    assert "no transaction: it ran at once" in record.getMessage()


def test_outside_a_transaction_it_runs_at_once(db: Any) -> None:
    calls: list[str] = []
    on_commit(lambda: calls.append("now"))
    assert calls == ["now"]


def test_with_the_scopes_implicit_unit_of_work(db: Any) -> None:
    calls: list[str] = []
    add("pending")  # an implicit unit of work: not committed yet
    on_commit(lambda: calls.append("committed"))
    assert calls == []
    db.session.commit()
    assert calls == ["committed"]
    add("discarded")
    on_commit(lambda: calls.append("never"))
    db.session.rollback()
    assert calls == ["committed"]


def test_in_a_request(db: Any, database: Any, request_thread: Any) -> None:
    calls: list[str] = []

    def ok(request: Any) -> dict[str, Any]:
        on_commit(lambda: calls.append("ok committed"))
        return {}

    def failing(request: Any) -> dict[str, Any]:
        on_commit(lambda: calls.append("never"))
        raise Boom()

    app = make_app(database, {"/ok": ok, "/fail": failing}, request_thread)
    app.post("/ok")
    with pytest.raises(Boom):
        app.post("/fail")
    assert calls == ["ok committed"]
