"""Failures inside the commit itself: a before-commit hook that raises, a commit that fails.

pyramid_tm 2.6 renders such errors with the exception view from its commit
handler and never aborts the transaction after a before-commit hook raised:
myapp's guard tween must abort it and close the session. Checked on a real
engine: nothing committed, no connection checked out, no transaction left on
the server thread, and the next request on that thread works.
"""

from __future__ import annotations

from typing import Any

from stack_helpers import RealStack, add_view

from myapp.db import get_tm
from myapp.models import Item


class HookFailed(Exception):
    pass


def _app(real: RealStack, existing_id: int | None = None) -> Any:
    def hook_raises(request: Any) -> dict[str, Any]:
        request.dbsession.add(Item(name=real.name("-hook")))
        request.dbsession.flush()

        def boom() -> None:
            raise HookFailed("the before-commit hook failed")

        request.tm.get().addBeforeCommitHook(boom)
        return {"ok": True}

    def duplicate_at_commit(request: Any) -> dict[str, Any]:
        # no flush here: the INSERT (and its unique violation) happen inside the commit
        request.dbsession.add(Item(name=real.name("-first")))
        request.dbsession.add(Item(id=existing_id, name=real.name("-dup")))
        return {"ok": True}

    def write(request: Any) -> dict[str, Any]:
        request.dbsession.add(Item(name=real.name("-next")))
        return {"ok": True}

    def configure(config: Any) -> None:
        add_view(config, "/t/hook", hook_raises, request_method="POST")
        add_view(config, "/t/dup", duplicate_at_commit, request_method="POST")
        add_view(config, "/t/write", write, request_method="POST")

    return real.app(configure)


def _assert_clean(real: RealStack) -> None:
    assert real.engine.pool.checkedout() == 0
    assert real.open_transaction() is None


def test_before_commit_hook_that_raises(real: RealStack) -> None:
    app = _app(real)
    response = app.post("/t/hook", status=500)
    assert response.content_type == "application/json"
    assert response.json["error"] == "internal server error"
    assert real.names() == []
    _assert_clean(real)
    # the next request on the same server thread starts clean and commits
    app.post("/t/write", status=200)
    assert app.get("/items").status_int == 200
    assert real.names() == [real.name("-next")]
    _assert_clean(real)


def test_before_commit_hook_failures_repeated(real: RealStack) -> None:
    app = _app(real)
    for _ in range(5):
        app.post("/t/hook", status=500)
    _assert_clean(real)
    assert real.names() == []


def test_commit_that_fails_with_an_integrity_error(real: RealStack) -> None:
    existing = real.insert("-existing")
    app = _app(real, existing_id=existing)
    response = app.post("/t/dup", status=409)
    assert response.json == {"error": "conflict: the change violates a database constraint"}
    # neither the duplicate nor the other row of that unit of work was committed
    assert real.names() == [real.name("-existing")]
    _assert_clean(real)
    app.post("/t/write", status=200)
    assert real.names() == sorted([real.name("-existing"), real.name("-next")])
    _assert_clean(real)


def test_a_transaction_left_open_on_the_thread_is_aborted_before_the_request(
    real: RealStack,
) -> None:
    """Someone (a buggy script, a hook) left a unit of work open on the server thread."""
    app = _app(real)

    def leave_open() -> None:
        with real.database.scope() as session:
            get_tm().begin()
            session.add(Item(name=real.name("-stale")))
            session.flush()
        get_tm().begin()  # the scope aborted its own; a second one stays open

    real.request_thread.run(leave_open)
    assert real.open_transaction() is not None
    app.post("/t/write", status=200)  # pyramid_tm would raise AlreadyInTransaction
    assert real.names() == [real.name("-next")]
    _assert_clean(real)
