"""Module-level ``transaction`` API inside a request acts on the request's transaction.

pyramid_tm is wired to the thread-local ``transaction.manager`` (explicit
mode), so ``transaction.savepoint()`` and ``transaction.get()`` in a view
are the request's; with the starter's per-request manager they would talk to
another manager and do nothing useful. Both backends, both stack modes.
"""

from __future__ import annotations

from typing import Any

import transaction
from stack_helpers import add_view
from transaction.interfaces import AlreadyInTransaction

from myapp.models import Item


def _app(stack: Any) -> Any:
    def savepoint_rollback(request: Any) -> dict[str, Any]:
        session = request.dbsession
        session.add(Item(name=stack.name("-A")))
        sp = transaction.savepoint()
        session.add(Item(name=stack.name("-B")))
        session.flush()  # B really reaches the database inside the SAVEPOINT
        sp.rollback()
        session.add(Item(name=stack.name("-C")))
        return {
            "same_transaction": request.tm.get() is transaction.get(),
            "same_manager": request.tm is transaction.manager,
        }

    def savepoint_pending_only(request: Any) -> dict[str, Any]:
        session = request.dbsession
        session.add(Item(name=stack.name("-A")))
        sp = transaction.savepoint()
        session.add(Item(name=stack.name("-B")))  # never flushed: rollback discards it too
        sp.rollback()
        return {"ok": True}

    def savepoint_then_error(request: Any) -> dict[str, Any]:
        session = request.dbsession
        session.add(Item(name=stack.name("-A")))
        sp = transaction.savepoint()
        session.add(Item(name=stack.name("-B")))
        session.flush()
        sp.rollback()
        session.add(Item(name=stack.name("-C")))
        session.flush()
        raise RuntimeError("the whole request is aborted, savepoints or not")

    def nested_manager(request: Any) -> dict[str, Any]:
        request.dbsession.add(Item(name=stack.name("-A")))
        request.dbsession.flush()
        with transaction.manager:  # explicit mode: raises instead of silently aborting A
            request.dbsession.add(Item(name=stack.name("-B")))
        return {"ok": True}

    def nested_manager_status(request: Any) -> dict[str, Any]:
        try:
            with transaction.manager:
                pass
        except AlreadyInTransaction:
            return {"already_in_transaction": True}
        return {"already_in_transaction": False}

    def configure(config: Any) -> None:
        add_view(config, "/t/sp", savepoint_rollback, request_method="POST")
        add_view(config, "/t/sp-pending", savepoint_pending_only, request_method="POST")
        add_view(config, "/t/sp-error", savepoint_then_error, request_method="POST")
        add_view(config, "/t/nested", nested_manager, request_method="POST")
        add_view(config, "/t/nested-status", nested_manager_status)

    return stack.app(configure)


def test_module_level_savepoint_rolls_back_only_its_part(stack: Any) -> None:
    response = _app(stack).post("/t/sp", status=200)
    assert response.json == {"same_transaction": True, "same_manager": True}
    assert stack.names() == [stack.name("-A"), stack.name("-C")]


def test_savepoint_rollback_of_pending_objects(stack: Any) -> None:
    _app(stack).post("/t/sp-pending", status=200)
    assert stack.names() == [stack.name("-A")]


def test_request_error_after_savepoint_aborts_everything(stack: Any) -> None:
    _app(stack).post("/t/sp-error", status=500)
    assert stack.names() == []


def test_nested_with_transaction_manager_raises_already_in_transaction(stack: Any) -> None:
    app = _app(stack)
    assert app.get("/t/nested-status").json == {"already_in_transaction": True}
    body = app.post("/t/nested", status=500).json
    assert body["error"] == "internal server error"
    assert "AlreadyInTransaction" in body["detail"]  # testing settings expose the error
    assert stack.names() == []
