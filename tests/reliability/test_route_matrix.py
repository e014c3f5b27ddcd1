"""Every route, every method, every kind of caller, hostile bodies: never a 5xx.

Generated from the application's route table (a new route is covered by
itself): each route gets GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS, with
no token, a company's token, another company's token and the admin token; the
methods that may carry a body send none, a plausible one, and four that cannot
be decoded (malformed JSON, JSON in UTF-16, a form in latin-1, a multipart body
without a boundary). Through the full WSGI stack (tweens, pyramid_tm, the
OpenAPI layer, the error views), on both backends. For every answer:

* the status is below 500;
* the body is JSON with an ``error`` for every error (the dashboard's pages may
  be its HTML page or a redirect to its login page; the JSON API answers JSON
  on success too; documentation, static files and pages have their own types);
  a HEAD answer has no body;
* no ERROR line and no traceback in the log;
* an undecodable body is a 400/415 **before any unit of work**: not a single
  SQL statement is sent for it, whatever the route, method or caller.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import webtest
from reliability_helpers import (
    VALID_BODIES,
    WriteRecorder,
    build_app,
    fill,
    new_token_and_hash,
    route_table,
)

from myapp.testing.factories import BookingFactory, CompanyFactory, DriverFactory
from myapp.testing.plugin import threaded_wsgi

ADMIN_TOKEN, ADMIN_HASH = new_token_and_hash()
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
#: bodies nothing can decode: (name, content type, bytes, the statuses allowed)
UNDECODABLE = (
    ("malformed JSON", "application/json", b'{"name": ', (400,)),
    (
        "JSON in UTF-16",
        "application/json; charset=utf-16",
        '{"name": "x"}'.encode("utf-16"),
        (415,),
    ),
    (
        "form in latin-1",
        "application/x-www-form-urlencoded; charset=latin-1",
        b"token=\xe9",
        (415,),
    ),
    ("multipart without boundary", "multipart/form-data", b"--x\r\n\r\n--x--\r\n", (400,)),
)
#: routes outside /api whose successful answers are JSON too
JSON_ROUTES = {"items", "item", "healthz"}


def _routes() -> list[tuple[str, str]]:
    """Every route, except the static views of ``myapp:`` assets (see below)."""
    from myapp import main

    app = main({}, **{"sqlalchemy.url": "sqlite://", "myapp.env": "testing"})
    # Pyramid's static view reads ``myapp:static`` through pkg_resources; under pytest the
    # myapp package is loaded by pytest's assertion-rewriting loader (myapp ships a pytest
    # plugin), which pkg_resources cannot read ("unregistered loader type"): a 500 that
    # exists only in the test process. These are covered over a real server instead:
    # test_operations.py::test_static_files_on_every_method.
    own_static = {
        "__" + item["introspectable"]["name"]
        for item in app.registry.introspector.get_category("static views")
        if str(item["introspectable"]["spec"]).startswith("myapp:")
    }
    return sorted(
        {(name, pattern) for name, pattern, _, _ in route_table(app) if name not in own_static}
    )


ROUTES = _routes()


class Tenant:
    def __init__(self, token: str, ids: dict[str, int]) -> None:
        self.token = token
        self.ids = ids


def _tenant(db: Any, name: str) -> Tenant:
    token, token_hash = new_token_and_hash()
    company = CompanyFactory(name=name, api_token_hash=token_hash)
    driver = DriverFactory(company_id=company.id)
    booking = BookingFactory(company_id=company.id)
    db.session.commit()
    return Tenant(
        token, {"company_id": company.id, "driver_id": driver.id, "booking_id": booking.id}
    )


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, and every record carrying a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(f"{record.name}: {record.getMessage()[:300]}")


def test_the_route_table_is_covered() -> None:
    names = {name for name, _ in ROUTES}
    assert {"items", "item", "healthz", "api.company", "dashboard.login"} <= names
    assert len(ROUTES) >= 20


@pytest.mark.parametrize(("route", "pattern"), ROUTES, ids=[p for _, p in ROUTES])
def test_every_method_and_caller_on_this_route_is_answered_without_a_5xx(
    db: Any, database: Any, request_thread: Any, route: str, pattern: str
) -> None:
    app = build_app(database, **{"myapp.admin_token_hash": ADMIN_HASH})
    client = webtest.TestApp(
        threaded_wsgi(app, request_thread), extra_environ={"HTTP_HOST": "example.com"}
    )
    acme, globex = _tenant(db, "Acme"), _tenant(db, "Globex")
    recorder = WriteRecorder(database.engine)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    sent = 0
    try:
        path = "/" + fill(pattern.split("*")[0], **acme.ids, id=1).lstrip("/")
        if "*" in pattern:
            path += "dashboard.css"
        for caller in ("none", "company", "other", "admin"):
            for method in METHODS:
                token = {"company": acme.token, "other": globex.token, "admin": ADMIN_TOKEN}.get(
                    caller
                )
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                bodies: list[tuple[str, str | None, bytes | None, tuple[int, ...] | None]] = [
                    ("no body", None, None, None)
                ]
                if method in BODY_METHODS:
                    plausible = VALID_BODIES.get((route, method), {"name": "x"})
                    bodies.append(
                        ("plausible", "application/json", json.dumps(plausible).encode(), None)
                    )
                if method != "HEAD":
                    bodies.extend(UNDECODABLE)
                for label, content_type, raw, statuses in bodies:
                    request_headers = dict(headers)
                    if content_type:
                        request_headers["Content-Type"] = content_type
                    recorder.clear()
                    with recorder.recording():
                        response = client.request(
                            path,
                            method=method,
                            body=raw or b"",
                            headers=request_headers,
                            expect_errors=True,
                        )
                    sent += 1
                    where = (method, path, caller, label, response.status, response.text[:200])
                    assert response.status_int < 500, where
                    if statuses is not None:
                        assert response.status_int in statuses, where
                        assert recorder.statements == [], (where, recorder.statements[:3])
                    _check_type(route, path, method, response, where)
                    if route == "api.company_token" and response.status_int == 200:
                        acme.token = response.json["api_token"]  # a rotation: the live one
    finally:
        logging.getLogger().removeHandler(errors)
    print(f"{pattern}: {sent} requests, {len(errors.bad)} errors logged")
    assert errors.bad == [], errors.bad[:5]
    # per caller: GET and OPTIONS 1 + 4 bodies, HEAD 1, the 4 body methods 1 + 1 + 4
    assert sent == 4 * (5 + 5 + 1 + 4 * 6)


def _check_type(route: str, path: str, method: str, response: Any, where: Any) -> None:
    """Errors: JSON with an ``error`` (the dashboard: its HTML page); the JSON API's answers: JSON.

    Successes of other routes (the documentation, static files, pages) have their own types.
    """
    status = response.status_int
    if method == "HEAD":
        assert response.body == b"", where
        return
    if status >= 400:
        if response.content_type == "application/json":
            assert isinstance(response.json.get("error"), str), where
            return
        assert path.startswith("/dashboard") and response.content_type == "text/html", where
        assert "Nothing was done" in response.text or "expired" in response.text, where
    elif status >= 300:
        assert response.headers["Location"], where  # the dashboard's login redirect
    elif route.startswith("api.") or route in JSON_ROUTES:
        assert response.content_type == "application/json", where
