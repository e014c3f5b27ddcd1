"""Read-only maintenance mode: every write is a 503 and reaches no database; reads keep working.

Switched on at run time (``database.maintenance.on = True``) or at start-up
(``myapp.read_only = true`` in the settings). The writes are generated from the
route table (every API operation that is not a GET, so a new write route is
covered or fails here), plus the items API and the dashboard's "Dispatch now"
form. A ``before_cursor_execute`` listener on the app's engine proves that no
INSERT/UPDATE/DELETE was sent while the switch was on; table counts prove
nothing changed. Switched off, the very same writes succeed.

The unit-level refusals (``db_transaction``, ``save()``, ``db_batch_operation``)
are in ``tests/db/units/test_read_only.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import webtest
from reliability_helpers import (
    VALID_BODIES,
    Live,
    WriteRecorder,
    api_operations,
    fill,
    seed_company,
)

from myapp import main
from myapp.models import Item
from myapp.services.tokens import new_token_and_hash

ADMIN_TOKEN, ADMIN_HASH = new_token_and_hash()
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SECRET = "reliability-tests-session-secret-0123456789"


@pytest.fixture(params=["runtime", "startup"])
def maintenance_app(
    request: pytest.FixtureRequest, live: Live, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, Any]]:
    """``(app, its Database)``: switched on at start-up, or to be switched on at run time.

    The test seeds its data through ``live`` first, then turns the switch on
    (a no-op for the start-up case, where it already is).
    """
    if request.param == "runtime":
        app = live.app(**{"myapp.admin_token_hash": ADMIN_HASH})
        assert not live.database.maintenance.on
        try:
            yield app, live.database
        finally:
            live.database.maintenance.on = False
        return
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MYAPP_ENV", raising=False)
    app = main(
        {},
        **{
            "sqlalchemy.url": live.url,
            "myapp.env": "testing",
            "myapp.read_only": "true",
            "myapp.admin_token_hash": ADMIN_HASH,
            "myapp.session_secret": SECRET,
        },
    )
    database = app.registry["db"]
    assert database.maintenance.on
    try:
        yield app, database
    finally:
        database.dispose()


def _writes(app: Any, world: dict[str, Any], live: Live) -> list[tuple[str, str, Any]]:
    """``(method, url, body)`` of every write operation of the route table, plus POST /items."""
    booking = dict(
        zip(
            ("api.booking", "api.booking_status", "api.booking_cancel"),
            world["booking_ids"],
            strict=True,
        )
    )
    writes = []
    for route, pattern, method, _ in api_operations(app):
        if method == "GET":
            continue
        ids = {
            "company_id": world["company_id"],
            "driver_id": world["driver_ids"][0],
            "booking_id": booking.get(route),
        }
        body = VALID_BODIES.get((route, method))
        if route in ("api.companies", "api.company"):  # names carry the test's token
            body = {"name": live.name(f"-{method.lower()}")}
        writes.append((method, fill(pattern, **ids), body))
    assert {(m, u.split("/")[-1]) for m, u, _ in writes} >= {("POST", "dispatch")}
    return [*writes, ("POST", "/items", None)]


def _reads(app: Any, world: dict[str, Any]) -> list[str]:
    ids = {
        "company_id": world["company_id"],
        "driver_id": world["driver_ids"][0],
        "booking_id": world["booking_ids"][0],
    }
    urls = [fill(p, **ids) for _, p, m, _ in api_operations(app) if m == "GET"]
    return [*urls, "/items", "/healthz"]


def _send(testapp: webtest.TestApp, method: str, url: str, body: Any) -> Any:
    if body is None:
        return testapp.request(url, method=method, headers=ADMIN, expect_errors=True)
    return testapp.request(
        url,
        method=method,
        body=json.dumps(body).encode(),
        headers={**ADMIN, "Content-Type": "application/json"},
        expect_errors=True,
    )


def _csrf(page: Any) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def test_every_write_is_a_503_that_reaches_no_database_then_resumes(
    maintenance_app: tuple[Any, Any], live: Live
) -> None:
    app, database = maintenance_app
    world = seed_company(live)
    database.maintenance.on = True
    testapp = webtest.TestApp(app, extra_environ={"HTTP_HOST": "example.com"})
    recorder = WriteRecorder(database.engine)
    writes = _writes(app, world, live)
    before = live.counts()
    created_items: list[int] = []
    try:
        with recorder.recording():
            for method, url, body in writes:
                response = _send(testapp, method, url, body)
                assert response.status_int == 503, (method, url, response.text)
                assert response.content_type == "application/json"
                assert "read-only maintenance mode" in response.json["error"], response.json
                assert "nothing was written" in response.json["error"]
                assert response.headers["Retry-After"] == "60"
            for url in _reads(app, world):  # reads keep working
                response = testapp.get(url, headers=ADMIN, expect_errors=True)
                assert response.status_int == 200, (url, response.text)
            # the dashboard: logging in only reads; the dispatch form is refused (HTML 503)
            login = testapp.get("/dashboard/login")
            testapp.post(
                "/dashboard/login",
                {"token": world["token"], "csrf_token": _csrf(login)},
                status=303,
            )
            home = testapp.get("/dashboard", status=200)
            page = testapp.post("/dashboard/dispatch", {"csrf_token": _csrf(home)}, status=503)
            assert page.content_type == "text/html"
            assert "read-only maintenance mode" in page.text
            assert page.headers["Retry-After"] == "60"
            sent = list(recorder.statements)
        assert sent, "the reads reached the database"
        assert recorder.writes() == []  # nothing was INSERTed, UPDATEd or DELETEd
        assert live.counts() == before

        database.maintenance.on = False  # switched off: the same writes go through
        with recorder.recording():
            recorder.clear()
            home = testapp.get("/dashboard", status=200)  # before the token rotation below
            testapp.post("/dashboard/dispatch", {"csrf_token": _csrf(home)}, status=303)
            for method, url, body in writes:
                response = _send(testapp, method, url, body)
                assert response.status_int in (200, 201), (method, url, response.text)
                if url == "/items":
                    created_items.append(response.json["id"])
        assert recorder.writes()
        after = live.counts()
        assert after["companies"] == before["companies"] + 1
        assert after["drivers"] == before["drivers"] + 1
        assert after["bookings"] == before["bookings"] + 1
        assert after["dispatch_runs"] == before["dispatch_runs"] + 2  # API and dashboard
    finally:
        with live.engine.begin() as conn:
            conn.execute(Item.__table__.delete().where(Item.id.in_(created_items)))
