"""``testapp``: requests through the real pyramid_tm tween on the test's connection.

What the Pyramid starter's doomed-manager fixture gets wrong, and this one
must get right: a failing request is rolled back (its flushed rows are seen
neither by the next request nor by the test), a successful one is committed
(visible to both), and the test's own committed data is visible to requests.
"""

from __future__ import annotations

from typing import Any

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest
from sqlalchemy import func, select

from myapp.db import get_tm
from myapp.models import Company, Item
from myapp.testing.factories import CompanyFactory
from myapp.testing.plugin import threaded_wsgi


def _flush_then(request: Any, failure: str) -> dict[str, Any]:
    request.dbsession.add(Item(name=f"flushed by a failing request ({failure})"))
    request.dbsession.flush()  # the row reaches the database inside the request's transaction
    if failure == "raise":
        raise RuntimeError("the view failed after flushing")
    if failure == "http":
        raise HTTPBadRequest("invalid input, after flushing")
    request.response.status = 500  # a returned error response
    return {"error": "returned"}


@pytest.fixture(scope="module")
def failing_app(database):
    """The real application plus views that flush a row and then fail in three ways."""
    settings = {"myapp.database": database, "myapp.env": "testing", "myapp.expose_errors": "true"}
    with Configurator(settings=settings) as config:
        config.include("myapp")
        config.add_route("fail", "/fail/{how}")
        config.add_view(
            lambda request: _flush_then(request, request.matchdict["how"]),
            route_name="fail",
            renderer="json",
        )
    return config.make_wsgi_app()


@pytest.fixture
def failing_testapp(failing_app, db, request_thread):
    return webtest.TestApp(
        threaded_wsgi(failing_app, request_thread), extra_environ={"HTTP_HOST": "example.com"}
    )


def items(db):
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(Item))


@pytest.mark.parametrize("how", ["raise", "http", "return"])
def test_a_failing_request_is_rolled_back(failing_testapp, db, how):
    ok = failing_testapp.post("/items").json  # committed by its request
    failing_testapp.post(f"/fail/{how}", status=400 if how == "http" else 500)
    # the next request sees the committed item only, and so does the test
    assert failing_testapp.get("/items").json == {"items": [ok]}
    assert items(db) == 1
    assert db.session.scalars(select(Item.name)).all() == [ok["name"]]


def test_successful_requests_are_visible_to_the_next_request_and_the_test(testapp, db):
    first = testapp.post("/items").json
    second = testapp.post("/items").json
    assert testapp.get("/items").json == {"items": [first, second]}
    assert items(db) == 2
    assert db.session.get(Item, first["id"]).name == first["name"]


def test_committed_test_data_is_visible_to_requests(testapp, db):
    db.session.add(Item(name="made by the test"))
    db.session.commit()
    assert [i["name"] for i in testapp.get("/items").json["items"]] == ["made by the test"]


def test_requests_run_on_another_thread_with_their_own_manager(db, request_thread, testapp):
    CompanyFactory()  # the test's implicit unit of work is open on this thread
    assert get_tm().get() is not None
    testapp.post("/items")  # runs anyway: the request thread has its own manager
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(Company)) == 1
    assert request_thread.open_transaction() is None


def test_nothing_survives_the_previous_tests(db):
    assert items(db) == 0
