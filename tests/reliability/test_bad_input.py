"""Hostile input gets a clear 4xx JSON and writes nothing: generated over the route table.

Oversized bodies (413), wrong content types (415), invalid UTF-8 in bodies,
paths and query strings, text the database cannot store (NUL, lone
surrogates), absurd nesting, ids beyond the database's integers, SQL
metacharacters in ids, query parameters and strings. Every answer is JSON with
an ``error`` message, carries no stack trace or SQL, and no table changed.
The schema-driven fuzzing is in test_fuzz.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import pytest
import webtest
from reliability_helpers import (
    LEAKS,
    VALID_BODIES,
    WriteRecorder,
    api_operations,
    build_app,
    fill,
    route_table,
)
from sqlalchemy import func, select

from myapp.models import Booking, Company, Driver, Invoice, Item
from myapp.models.dispatch import DispatchRun
from myapp.services.tokens import new_token_and_hash
from myapp.testing.factories import BookingFactory, CompanyFactory, DriverFactory
from myapp.testing.plugin import threaded_wsgi
from myapp.views.guards import DEFAULT_MAX_BODY_BYTES

TABLES = (Company, Driver, Booking, Invoice, DispatchRun, Item)
ADMIN_TOKEN, ADMIN_HASH = new_token_and_hash()
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HUGE_IDS = ("2147483648", "9223372036854775808", "99999999999999999999999999")
SQL_IDS = ("1' OR '1'='1", "1;DROP TABLE companies", "1 --", "1/**/OR/**/1=1")


class World:
    """The app under production error settings, a company with a driver and a booking."""

    def __init__(self, db: Any, database: Any, request_thread: Any, **settings: Any) -> None:
        self.db = db
        self.recorder = WriteRecorder(database.engine)
        self.app = build_app(database, **{"myapp.admin_token_hash": ADMIN_HASH, **settings})
        self.client = webtest.TestApp(
            threaded_wsgi(self.app, request_thread), extra_environ={"HTTP_HOST": "example.com"}
        )
        token, token_hash = new_token_and_hash()
        company = CompanyFactory(name="Acme", api_token_hash=token_hash)
        driver = DriverFactory(company_id=company.id)
        booking = BookingFactory(company_id=company.id)
        db.session.commit()
        self.company = {"Authorization": f"Bearer {token}"}
        self.ids = {"company_id": company.id, "driver_id": driver.id, "booking_id": booking.id}
        self.operations = api_operations(self.app)
        self.with_body = [
            (route, pattern, method)
            for route, pattern, method, _ in self.operations
            if (route, method) in VALID_BODIES
        ]
        assert len(self.with_body) == len(VALID_BODIES)

    def counts(self) -> tuple[int, ...]:
        self.db.session.expire_all()
        return tuple(self.db.session.scalar(select(func.count()).select_from(m)) for m in TABLES)

    def send(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        all_headers = {**ADMIN, **(headers or {})}
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        return self.client.request(
            url, method=method, body=body or b"", headers=all_headers, expect_errors=True
        )


def refused(response: Any, status: int | tuple[int, ...], sent: str = "") -> dict[str, Any]:
    """``response`` is a ``status`` JSON error that leaks nothing; return its body."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_int in statuses, (
        status,
        response.status,
        response.request.method,
        response.request.url,
        response.text[:300],
    )
    assert response.content_type == "application/json", response.headers
    body = response.json
    assert isinstance(body.get("error"), str) and body["error"], body
    for leak in LEAKS:
        assert leak not in response.text or leak in sent, (leak, response.text[:300])
    return body


@pytest.fixture
def world(db: Any, database: Any, request_thread: Any) -> Iterator[World]:
    yield World(db, database, request_thread)


# ---------------------------------------------------------------------------
# bodies


def test_oversized_bodies_are_413_before_anything_runs(world: World) -> None:
    before = world.counts()
    too_big = b"{" + b" " * DEFAULT_MAX_BODY_BYTES + b"}"
    with world.recorder.recording():
        for _route, pattern, method in world.with_body:
            url = fill(pattern, **world.ids)
            body = refused(world.send(method, url, too_big, "application/json"), 413)
            assert body == {
                "error": f"the request body is too large (at most {DEFAULT_MAX_BODY_BYTES} bytes)"
            }
        too_big = b"x" * (DEFAULT_MAX_BODY_BYTES + 1)
        refused(world.send("POST", "/items", too_big, "text/plain"), 413)
        # the dashboard's answer is its HTML error page
        page = world.send("POST", "/dashboard/login", b"t" * 2_000_000, "text/plain")
        assert page.status_int == 413
        assert page.content_type == "text/html"
        assert "too large" in page.text
    assert world.recorder.statements == []  # refused before any unit of work began
    assert world.counts() == before


def test_the_body_limit_is_a_setting_and_exact(db: Any, database: Any, request_thread: Any) -> None:
    world = World(db, database, request_thread, **{"myapp.max_body_bytes": "2048"})
    url = fill("/api/companies/{company_id}/drivers", **world.ids)
    document = json.dumps({"name": "Padded"}).encode()
    exact = document + b" " * (2048 - len(document))
    refused(world.send("POST", url, exact + b" ", "application/json"), 413)
    assert world.send("POST", url, exact, "application/json").status_int == 201


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
    ],
)
def test_wrong_content_types_are_415(world: World, content_type: str) -> None:
    before = world.counts()
    for route, pattern, method in world.with_body:
        url = fill(pattern, **world.ids)
        body = json.dumps(VALID_BODIES[(route, method)]).encode()
        answer = refused(world.send(method, url, body, content_type), 415)
        assert answer["field"] == "body"
        assert "application/json" in answer["error"]
    assert world.counts() == before


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "message"),
    [
        (b'{"name": "\xff\xfe"}', "application/json", 400, "not valid UTF-8"),
        (b'{"name": "caf\xe9"}', "application/json; charset=utf-8", 400, "not valid UTF-8"),
        ('{"name": "café"}'.encode("latin-1"), "application/json; charset=latin-1", 415, "UTF-8"),
        (b'{"name": "a\\u0000b"}', "application/json", 400, "NUL"),
        (b'{"name": "\\ud800"}', "application/json", 400, "surrogate"),
        (b'{"name\\u0000": "x"}', "application/json", 400, "NUL"),
        (b'{"name": NaN}', "application/json", 400, "not valid JSON"),
        (b'{"name": Infinity}', "application/json", 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested too deeply"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "application/json", 400, "nested too deeply"),
        (b'{"name": "x"', "application/json", 400, "not valid JSON"),
    ],
    ids=[
        "invalid-utf8",
        "invalid-utf8-declared",
        "latin-1",
        "nul",
        "lone-surrogate",
        "nul-in-key",
        "nan",
        "infinity",
        "deep-array",
        "deep-object",
        "truncated",
    ],
)
def test_bodies_the_database_cannot_take(
    world: World, raw: bytes, content_type: str, status: int, message: str
) -> None:
    before = world.counts()
    with world.recorder.recording():
        for _route, pattern, method in world.with_body:
            url = fill(pattern, **world.ids)
            answer = refused(world.send(method, url, raw, content_type), status)
            assert message in answer["error"], answer
            assert answer["field"] == "body"
    assert world.recorder.statements == []  # the input guard answered: no SQL at all
    assert world.counts() == before


def test_times_beyond_what_utc_can_hold_are_400(world: World) -> None:
    before = world.counts()
    url = fill("/api/companies/{company_id}/bookings", **world.ids)
    for when in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"):
        body = {**VALID_BODIES[("api.bookings", "POST")], "pickup_time": when}
        answer = refused(
            world.send("POST", url, json.dumps(body).encode(), "application/json"), 400
        )
        assert answer["field"] == "pickup_time"
        patch = fill("/api/companies/{company_id}/bookings/{booking_id}", **world.ids)
        payload = json.dumps({"pickup_time": when}).encode()
        assert refused(world.send("PATCH", patch, payload, "application/json"), 400)["field"] == (
            "pickup_time"
        )
    assert world.counts() == before


def test_long_values_are_not_echoed_whole(world: World) -> None:
    url = fill("/api/companies/{company_id}/drivers", **world.ids)
    body = json.dumps({"name": "x" * 500_000}).encode()
    answer = refused(world.send("POST", url, body, "application/json"), 400)
    assert len(answer["error"]) < 400 and answer["field"] == "name"


# ---------------------------------------------------------------------------
# URLs and ids


def _every_path(world: World) -> list[str]:
    """Every route of the app, its placeholders filled with real ids."""
    paths = set()
    for _name, pattern, _method, _permission in route_table(world.app):
        if "*" in pattern:
            pattern = pattern.split("*")[0]
        paths.add("/" + fill(pattern, **world.ids, id=1).lstrip("/"))
    return sorted(paths)


def test_invalid_utf8_in_any_path_or_query_is_400(world: World) -> None:
    before = world.counts()
    paths = _every_path(world)
    assert any(p.startswith("/dashboard") for p in paths) and "/items/1" in paths
    with world.recorder.recording():
        for path in paths:
            for method in ("GET", "POST"):
                answer = refused(world.send(method, path.rstrip("/") + "/%FF%FE"), 400)
                assert answer == {"error": "the URL path is not valid UTF-8"}
                answer = refused(world.send(method, path + "?status=%FF&page=%C3%28"), 400)
                assert answer == {"error": "the query string is not valid UTF-8"}
    assert world.recorder.statements == []
    assert world.counts() == before


def test_ids_beyond_the_database_integers_are_400_or_404(world: World) -> None:
    before = world.counts()
    checked = 0
    for route, pattern, method, permission in world.operations:
        body = VALID_BODIES.get((route, method))
        raw = json.dumps(body).encode() if body is not None else None
        content_type = "application/json" if body is not None else None
        for name in ("company_id", "driver_id", "booking_id"):
            if "{" + name + "}" not in pattern:
                continue
            for huge in HUGE_IDS:
                url = fill(pattern, **{**world.ids, name: huge})
                answer = refused(world.send(method, url, raw, content_type), 400)
                assert answer["field"] == name, answer
                # a company token: an admin operation is a 403, another company's URL a 404
                # (access is checked before the input), a huge id in its own URL a 400
                status = 403 if permission == "admin" else 404 if name == "company_id" else 400
                refused(world.send(method, url, raw, content_type, world.company), status)
                checked += 1
    assert checked >= 3 * 14
    # ids in bodies and queries
    bookings = fill("/api/companies/{company_id}/bookings", **world.ids)
    for huge in HUGE_IDS:
        body = {**VALID_BODIES[("api.bookings", "POST")], "driver_id": int(huge)}
        raw = json.dumps(body).encode()
        assert refused(world.send("POST", bookings, raw, "application/json"), 400)["field"] == (
            "driver_id"
        )
        assert refused(world.send("GET", f"{bookings}?driver_id={huge}"), 400)["field"] == (
            "driver_id"
        )
        refused(world.send("GET", f"/items/{huge}"), 404)
    assert world.counts() == before


def test_sql_metacharacters_in_ids_and_queries_are_4xx(world: World) -> None:
    before = world.counts()
    for _route, pattern, method, _permission in world.operations:
        for name in ("company_id", "driver_id", "booking_id"):
            if "{" + name + "}" not in pattern:
                continue
            for bad in SQL_IDS:
                url = fill(pattern, **{**world.ids, name: quote(bad, safe="")})
                # a "/" (even as %2F) splits the path: then no route matches (404)
                if "/" in bad:
                    refused(world.send(method, url), 404, sent=bad)
                    continue
                answer = refused(world.send(method, url), 400, sent=bad)
                assert answer["field"] == name
    for bad in SQL_IDS:
        refused(world.send("GET", "/items/" + quote(bad, safe="")), 404)
    bookings = fill("/api/companies/{company_id}/bookings", **world.ids)
    invoices = fill("/api/companies/{company_id}/invoices", **world.ids)
    for url in (
        f"{bookings}?status=" + quote("pending' OR '1'='1"),
        f"{bookings}?driver_id=" + quote("1 OR 1=1"),
        f"{invoices}?period=" + quote("2026-10' OR '1'='1"),
        f"{bookings}?page=" + quote("1;DELETE FROM bookings"),
    ):
        refused(world.send("GET", url), 400, sent=unquote(url))
    assert world.counts() == before


def test_sql_metacharacters_in_strings_are_just_text(world: World) -> None:
    """Parameters are bound, never spliced: hostile names are stored and read back verbatim."""
    drivers = fill("/api/companies/{company_id}/drivers", **world.ids)
    hostile = [
        "Robert'); DROP TABLE drivers;--",
        "x' OR '1'='1",
        '"; DELETE FROM companies; --',
        "%_\\' UNION SELECT api_token_hash FROM companies --",
    ]
    for name in hostile:
        created = world.send(
            "POST", drivers, json.dumps({"name": name}).encode(), "application/json"
        )
        assert created.status_int == 201, created.text
        assert created.json["name"] == name
        again = world.send("GET", f"{drivers}/{created.json['id']}")
        assert again.json["name"] == name
    listed = world.send("GET", f"{drivers}?per_page=100").json["items"]
    assert {d["name"] for d in listed} >= set(hostile)
    assert world.db.session.scalar(select(func.count()).select_from(Company)) >= 1
