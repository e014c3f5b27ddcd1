"""Security properties, generated from the route table where a new route could slip through.

Already proven elsewhere, and not repeated here:

* per-route access control (401 without or with a bad token, another company's
  URL or ids a 404 exactly like a missing id, admin operations a 403, nothing
  written by a refused request; a route without a permission or missing from
  the spec fails): ``tests/api/test_api_access.py``;
* CSRF on the login form and a forged cross-site "Dispatch now" in a real
  browser: ``tests/dashboard/test_dashboard_views.py::test_login_needs_the_csrf_token``
  and ``tests/dashboard/test_dashboard_browser.py::test_a_forged_cross_site_form_is_refused``.

Added here: lists never show another company's rows (every list operation);
token and fingerprint comparisons go through ``hmac.compare_digest`` (spied
on in real requests, and no ``==`` on a secret in the source); every
state-changing dashboard view requires CSRF and refuses a form without it;
no error body, from any route, under production settings, carries a stack
trace, SQL, a driver name or a file path, including when the database is
unreachable or its schema is missing.
"""

from __future__ import annotations

import ast
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest
import webtest
from pyramid.paster import get_appsettings
from reliability_helpers import (
    LEAKS,
    ROOT,
    VALID_BODIES,
    api_operations,
    build_app,
    fill,
    route_table,
)
from sqlalchemy import func, select

from myapp import main
from myapp.api.security import token_fingerprint
from myapp.models.dispatch import DispatchRun
from myapp.services.tokens import hash_token, new_token_and_hash
from myapp.testing.factories import (
    BookingFactory,
    CompanyFactory,
    DriverFactory,
    InvoiceFactory,
)
from myapp.testing.plugin import threaded_wsgi

ADMIN_TOKEN, ADMIN_HASH = new_token_and_hash()
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SECRET = "security-tests-session-secret-0123456789abcdef"


def _tenant(db: Any, name: str) -> dict[str, Any]:
    """A committed company with a driver, bookings, an invoice and a dispatch run."""
    token, token_hash = new_token_and_hash()
    company = CompanyFactory(name=name, api_token_hash=token_hash)
    driver = DriverFactory(company_id=company.id)
    booking = BookingFactory(company_id=company.id)
    done = BookingFactory(company_id=company.id, driver_id=driver.id, status="completed")
    InvoiceFactory(booking=done)
    db.session.add(DispatchRun(company_id=company.id, source="api", details={}))
    db.session.commit()
    return {
        "company_id": company.id,
        "driver_id": driver.id,
        "booking_id": booking.id,
        "headers": {"Authorization": f"Bearer {token}"},
        "token": token,
    }


def _client(app: Any, request_thread: Any) -> webtest.TestApp:
    return webtest.TestApp(threaded_wsgi(app, request_thread), extra_environ={"HTTP_HOST": "x"})


def _company_ids(value: Any) -> set[int]:
    """Every ``company_id`` anywhere in a JSON document."""
    found: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("company_id"), int):
                found.add(item["company_id"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def test_no_list_shows_another_companys_rows(db: Any, database: Any, request_thread: Any) -> None:
    app = build_app(database, **{"myapp.admin_token_hash": ADMIN_HASH})
    acme, globex = _tenant(db, "Acme"), _tenant(db, "Globex")
    client = _client(app, request_thread)
    lists = 0
    for _route, pattern, method, permission in api_operations(app):
        if method != "GET" or permission != "company":
            continue
        response = client.get(fill(pattern, **acme), headers=acme["headers"], status=200)
        body = response.json
        assert _company_ids(body) <= {acme["company_id"]}, (pattern, body)
        if "items" in body:  # a list: it is not vacuously clean
            lists += 1
            assert body["items"], pattern
            assert _company_ids(body) == {acme["company_id"]}, pattern
            # the admin sees the same list for that company: the filter is the URL's company
            as_admin = client.get(fill(pattern, **acme), headers=ADMIN, status=200).json
            assert as_admin["items"] == body["items"]
    assert lists >= 4  # drivers, bookings, dispatch runs, invoices
    assert globex["company_id"] != acme["company_id"]


# ---------------------------------------------------------------------------
# constant-time comparisons


@pytest.fixture
def compare_digest_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Every call of ``hmac.compare_digest`` during the test (the real function still runs)."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


def test_tokens_are_compared_with_hmac_compare_digest(
    db: Any, database: Any, request_thread: Any, compare_digest_calls: list[Any]
) -> None:
    other_hashes = [new_token_and_hash()[1] for _ in range(2)]
    app = build_app(database, **{"myapp.admin_token_hash": ",".join([ADMIN_HASH, *other_hashes])})
    acme = _tenant(db, "Acme")
    client = _client(app, request_thread)
    stored = hash_token(acme["token"]).encode()

    compare_digest_calls.clear()
    client.get(f"/api/companies/{acme['company_id']}", headers=acme["headers"], status=200)
    assert (stored, stored) in compare_digest_calls  # the company token, against its stored hash

    # the admin token: every configured hash is compared, even after the first one matched
    compare_digest_calls.clear()
    client.get("/api/companies", headers=ADMIN, status=200)
    admin_hash = ADMIN_HASH.encode()
    assert sum(1 for a, _ in compare_digest_calls if a == admin_hash) == 3
    assert {b for _, b in compare_digest_calls} >= {h.encode() for h in other_hashes}

    # a wrong token: the admin hashes are still all compared, and the answer is a 401
    compare_digest_calls.clear()
    client.get("/api/companies", headers={"Authorization": "Bearer mya_wrong"}, status=401)
    assert len(compare_digest_calls) == 3

    # a dashboard session: the token fingerprint is compared in constant time too
    login = client.get("/dashboard/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    client.post("/dashboard/login", {"token": acme["token"], "csrf_token": csrf}, status=303)
    compare_digest_calls.clear()
    client.get("/dashboard", status=200)
    fingerprint = token_fingerprint(hash_token(acme["token"])).encode()
    assert (fingerprint, fingerprint) in compare_digest_calls


def test_no_secret_is_compared_with_an_operator() -> None:
    """The only ``==`` on a token or hash in the security code is the database lookup by hash
    (a SQL WHERE on the SHA-256 of a 256-bit token: its timing reveals nothing usable); the
    match is then confirmed with ``hmac.compare_digest``."""
    allowed = {"Company.api_token_hash == token_hash"}
    files = [
        ROOT / "myapp/api/security.py",
        ROOT / "myapp/services/tokens.py",
        *sorted((ROOT / "myapp/dashboard").glob("*.py")),
        *sorted((ROOT / "myapp/api/views").glob("*.py")),
    ]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                continue
            source = ast.unparse(node)
            if re.search(r"token|hash|fingerprint|secret|csrf", source, re.IGNORECASE):
                found.append(source)
    assert set(found) == allowed, found
    assert "compare_digest" in (ROOT / "myapp/services/tokens.py").read_text()


# ---------------------------------------------------------------------------
# CSRF on every dashboard form


def test_every_dashboard_form_requires_csrf_and_refuses_without_it(
    db: Any, database: Any, request_thread: Any
) -> None:
    app = build_app(database, **{"myapp.admin_token_hash": ADMIN_HASH})
    forms = []
    for item in app.registry.introspector.get_category("views"):
        view = item["introspectable"]
        name = view["route_name"] or ""
        methods = view["request_methods"] or ("*",)
        methods = (methods,) if isinstance(methods, str) else methods
        if name.startswith("dashboard.") and set(methods) - {"GET", "HEAD"}:
            assert view["require_csrf"] is True, name  # a new form without CSRF fails here
            forms.append(name)
    assert sorted(forms) == ["dashboard.dispatch", "dashboard.login", "dashboard.logout"]

    acme = _tenant(db, "Acme")
    client = _client(app, request_thread)
    login = client.get("/dashboard/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    client.post("/dashboard/login", {"token": acme["token"], "csrf_token": csrf}, status=303)
    runs = db.session.scalar(select(func.count()).select_from(DispatchRun))
    for name in forms:
        path = app.routes_mapper.get_route(name).pattern
        for form in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
            page = client.post(path, {**form, "token": acme["token"]}, status=400)
            assert "Form expired" in page.text
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).select_from(DispatchRun)) == runs
    client.get("/dashboard", status=200)  # still logged in: the forged logout did nothing


# ---------------------------------------------------------------------------
# no stack trace or SQL in any error response, under production settings


def _production_settings(**overrides: Any) -> dict[str, Any]:
    settings = dict(get_appsettings(str(ROOT / "production.ini"), name="main"))
    assert settings["myapp.expose_errors"] == "false"
    settings["myapp.session_secret"] = SECRET
    settings["myapp.admin_token_hash"] = ADMIN_HASH
    settings.update(overrides)
    return settings


def _hostile_requests(app: Any, ids: dict[str, Any]) -> list[dict[str, Any]]:
    """For every route of the app: bad methods, ids, bodies, encodings, credentials."""
    requests = []
    for route, pattern, method, _permission in route_table(app):
        if route.startswith("__"):
            # a static view: files or a 404, no database. (Under pytest its directory URL is a
            # 500: pytest's assertion rewriter loads the myapp package, and pkg_resources cannot
            # list a package of an unknown loader; under pserve it is a 404.)
            continue
        pattern = "/" + pattern.split("*")[0].lstrip("/")
        url = fill(pattern, **ids, id=1)
        body = json.dumps(VALID_BODIES.get((route, method), {"name": "x"})).encode()
        auth_variants = ({}, ADMIN, {"Authorization": "Bearer mya_wrong"})
        for headers in auth_variants:
            requests.append(
                {
                    "method": method if method != "*" else "GET",
                    "url": url,
                    "headers": headers,
                    "body": body,
                    "content_type": "application/json",
                }
            )
        huge = fill(pattern, **{k: "99999999999999999999" for k in ids}, id="99999999999999999999")
        requests += [
            {"method": "DELETE", "url": url, "headers": ADMIN},
            {
                "method": "PUT",
                "url": url,
                "headers": ADMIN,
                "body": b"{",
                "content_type": "application/json",
            },
            {
                "method": "POST",
                "url": url,
                "headers": ADMIN,
                "body": b"\xff\xfe",
                "content_type": "application/json",
            },
            {
                "method": "POST",
                "url": url,
                "headers": ADMIN,
                "body": b"<x/>",
                "content_type": "application/xml",
            },
            {
                "method": "PATCH",
                "url": url,
                "headers": ADMIN,
                "body": b"[" * 5000,
                "content_type": "application/json",
            },
            {"method": "GET", "url": url.rstrip("/") + "/%FF", "headers": ADMIN},
            {"method": "GET", "url": huge, "headers": ADMIN},
            {
                "method": method if method != "*" else "GET",
                "url": url + "?page=-1&per_page=x&status=%27",
                "headers": ADMIN,
            },
        ]
    return requests


def _scan(client: webtest.TestApp, requests: list[dict[str, Any]]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    for spec in requests:
        client.reset()  # no cookies: WebTest cannot match them against a non-UTF-8 URL
        headers = dict(spec.get("headers") or {})
        if spec.get("content_type"):
            headers["Content-Type"] = spec["content_type"]
        response = client.request(
            spec["url"],
            method=spec["method"],
            body=spec.get("body", b""),
            headers=headers,
            expect_errors=True,
        )
        statuses[response.status_int] = statuses.get(response.status_int, 0) + 1
        if response.status_int < 400:
            continue
        text = response.text
        for leak in LEAKS:
            assert leak not in text, (spec["method"], spec["url"], response.status, text[:400])
    return statuses


def test_no_error_response_leaks_anything_under_production_settings(
    db: Any, database: Any, request_thread: Any
) -> None:
    acme = _tenant(db, "Acme")
    app = build_app(database, **_production_settings())
    ids = {k: acme[k] for k in ("company_id", "driver_id", "booking_id")}
    statuses = _scan(_client(app, request_thread), _hostile_requests(app, ids))
    assert set(statuses) >= {400, 401, 404, 415}, statuses
    assert sum(n for s, n in statuses.items() if s >= 400) > 200, statuses


@pytest.mark.parametrize("failure", ["schema-missing", "unreachable"])
def test_no_error_response_leaks_anything_when_the_database_fails(
    failure: str, tmp_path: Path, request_thread: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production settings; the database has no tables, or cannot be reached at all."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MYAPP_ENV", raising=False)
    if failure == "schema-missing":
        url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    else:
        url = "postgresql+psycopg://127.0.0.1:1/nowhere"
    app = main({}, **_production_settings(**{"sqlalchemy.url": url}))
    try:
        ids = {"company_id": 1, "driver_id": 1, "booking_id": 1}
        statuses = _scan(_client(app, request_thread), _hostile_requests(app, ids))
    finally:
        app.registry["db"].dispose()
    expected = 500 if failure == "schema-missing" else 503
    assert statuses.get(expected, 0) > 20, statuses
