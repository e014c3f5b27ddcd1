"""Commit on success, abort on every kind of error; Core and text() writes are committed.

Each test runs on both backends and in two modes (``stack`` fixture): on the
test's connection, and on a real engine whose commits are checked from a
fresh connection.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyramid.httpexceptions import HTTPBadRequest, HTTPServiceUnavailable
from pyramid.response import Response
from sqlalchemy import insert, text, update
from stack_helpers import add_view

from myapp.models import Item


def _write(request: Any, name: str) -> None:
    request.dbsession.add(Item(name=name))
    request.dbsession.flush()  # the INSERT reaches the database before the error


def _routes(stack: Any) -> Any:
    def ok(request: Any) -> dict[str, Any]:
        _write(request, stack.name("-ok"))
        return {"ok": True}

    def raises(request: Any) -> dict[str, Any]:
        _write(request, stack.name("-raise"))
        raise RuntimeError("boom")

    def raises_http_4xx(request: Any) -> dict[str, Any]:
        _write(request, stack.name("-raise400"))
        raise HTTPBadRequest("bad input")

    def raises_http_5xx(request: Any) -> dict[str, Any]:
        _write(request, stack.name("-raise503"))
        raise HTTPServiceUnavailable()

    def returns_4xx(request: Any) -> dict[str, Any]:
        _write(request, stack.name("-ret422"))
        request.response.status = 422
        return {"error": "invalid"}

    def returns_5xx(request: Any) -> Response:
        _write(request, stack.name("-ret500"))
        return Response(status=500, json={"error": "failed"})

    def returns_4xx_forced_commit(request: Any) -> Response:
        # default_commit_veto honours X-Tm: a 4xx that must still commit says so.
        _write(request, stack.name("-xtm"))
        response = Response(status=409, json={"error": "recorded"})
        response.headers["X-Tm"] = "commit"
        return response

    def configure(config: Any) -> None:
        add_view(config, "/t/ok", ok)
        add_view(config, "/t/raise", raises)
        add_view(config, "/t/raise400", raises_http_4xx)
        add_view(config, "/t/raise503", raises_http_5xx)
        add_view(config, "/t/ret422", returns_4xx)
        add_view(config, "/t/ret500", returns_5xx)
        add_view(config, "/t/xtm", returns_4xx_forced_commit)

    return stack.app(configure)


@pytest.mark.parametrize(
    ("path", "status", "committed"),
    [
        ("/t/ok", 200, True),
        ("/t/raise", 500, False),
        ("/t/raise400", 400, False),
        ("/t/raise503", 503, False),
        ("/t/ret422", 422, False),
        ("/t/ret500", 500, False),
        ("/t/xtm", 409, True),
    ],
)
def test_commit_or_abort(stack: Any, path: str, status: int, committed: bool) -> None:
    app = _routes(stack)
    response = app.post(path, status=status)
    assert response.content_type == "application/json"
    suffix = path.rsplit("/", 1)[1]
    expected = [stack.name(f"-{suffix}")] if committed else []
    assert stack.names() == expected


def test_error_bodies_are_json(stack: Any) -> None:
    app = _routes(stack)
    assert app.post("/t/raise", status=500).json["error"] == "internal server error"
    assert app.post("/t/raise400", status=400).json == {"error": "bad input"}
    assert app.post("/t/raise503", status=503).json["error"]
    assert stack.names() == []


def test_a_failed_request_does_not_poison_the_next_one(stack: Any) -> None:
    app = _routes(stack)
    app.post("/t/raise", status=500)
    app.post("/t/ok", status=200)
    app.post("/t/ret422", status=422)
    assert stack.names() == [stack.name("-ok")]


def test_core_and_text_writes_are_committed(stack: Any) -> None:
    """zope.sqlalchemy alone only sees ORM writes (its issue #88); these must commit too."""
    updated = stack.insert("-core-old")
    deleted = stack.insert("-text-delete")
    text_updated = stack.insert("-text-update")

    def core_update(request: Any) -> dict[str, Any]:
        result = request.dbsession.execute(
            update(Item).where(Item.id == updated).values(name=stack.name("-core-new"))
        )
        return {"rows": result.rowcount}

    def core_insert(request: Any) -> dict[str, Any]:
        request.dbsession.execute(insert(Item).values(name=stack.name("-core-insert")))
        return {"ok": True}

    def text_delete(request: Any) -> dict[str, Any]:
        result = request.dbsession.execute(
            text("DELETE FROM items WHERE id = :id"), {"id": deleted}
        )
        return {"rows": result.rowcount}

    def text_update_commented(request: Any) -> dict[str, Any]:
        result = request.dbsession.execute(
            text("-- rename\n/* really */ UPDATE items SET name = :name WHERE id = :id"),
            {"name": stack.name("-text-updated"), "id": text_updated},
        )
        return {"rows": result.rowcount}

    def text_insert(request: Any) -> dict[str, Any]:
        request.dbsession.execute(
            text("INSERT INTO items (name) VALUES (:name)"), {"name": stack.name("-text-insert")}
        )
        return {"ok": True}

    def configure(config: Any) -> None:
        add_view(config, "/t/core-update", core_update, request_method="POST")
        add_view(config, "/t/core-insert", core_insert, request_method="POST")
        add_view(config, "/t/text-delete", text_delete, request_method="POST")
        add_view(config, "/t/text-update", text_update_commented, request_method="POST")
        add_view(config, "/t/text-insert", text_insert, request_method="POST")

    app = stack.app(configure)
    assert app.post("/t/core-update").json == {"rows": 1}
    assert app.post("/t/core-insert").json == {"ok": True}
    assert app.post("/t/text-delete").json == {"rows": 1}
    assert app.post("/t/text-update").json == {"rows": 1}
    assert app.post("/t/text-insert").json == {"ok": True}
    assert stack.names() == sorted(
        stack.name(s) for s in ("-core-new", "-core-insert", "-text-updated", "-text-insert")
    )
