"""Access control, tested per route: the cases are generated from the application's route table.

Every view of every ``/api/`` route is collected from Pyramid's introspector
(the real application, configured as ``pserve`` would). A route added without a
permission, or with the wrong one, fails here; so does an operation of the spec
without a route, or a route without an operation in the spec.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from api_helpers import Tenant, count, threaded_testapp
from pyramid.security import NO_PERMISSION_REQUIRED
from sqlalchemy import select

from myapp.api.spec import SPEC_PATH
from myapp.models import Booking, Company, Driver, Invoice
from myapp.models.dispatch import DispatchRun
from myapp.services.tokens import hash_token
from myapp.testing.factories import VALID_API_BODIES, BookingFactory, DriverFactory

TABLES = (Company, Driver, Booking, Invoice, DispatchRun)
#: the only public routes under /api: the documentation
PUBLIC_ROUTES = {"apidocs.spec", "apidocs.explorer", "apidocs.oauth2_redirect"}


def _route_table() -> list[tuple[str, str, str, str]]:
    """``(route name, pattern, method, permission)`` of every view of every /api/ route."""
    from myapp import main

    app = main({}, **{"sqlalchemy.url": "sqlite://", "myapp.env": "testing"})
    patterns = {r.name: r.pattern for r in app.routes_mapper.get_routes()}
    table = []
    for item in app.registry.introspector.get_category("views"):
        view = item["introspectable"]
        name = view["route_name"]
        if name is None or not patterns[name].startswith("/api/"):
            continue
        permissions = [r["value"] for r in item["related"] if r.category_name == "permissions"]
        permission = permissions[0] if permissions else "<none>"
        methods = view["request_methods"] or ("*",)
        if isinstance(methods, str):
            methods = (methods,)
        for method in methods:
            table.append((name, patterns[name], method, permission))
    # every /api/ route has at least one view
    assert {name for name, *_ in table} == {n for n, p in patterns.items() if p.startswith("/api/")}
    return sorted(table)


ROUTES = _route_table()
PROTECTED = [row for row in ROUTES if row[0] not in PUBLIC_ROUTES]


def _spec_operations() -> dict[tuple[str, str], dict[str, Any]]:
    with open(SPEC_PATH) as f:
        spec = yaml.safe_load(f)
    prefix = spec["servers"][0]["url"]
    return {
        (prefix + path, method.upper()): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    }


SPEC = _spec_operations()
VALID_BODIES = VALID_API_BODIES


def test_every_api_route_is_protected_or_documentation() -> None:
    for name, pattern, method, permission in ROUTES:
        if name in PUBLIC_ROUTES:
            assert permission == NO_PERMISSION_REQUIRED, (name, permission)
        else:
            assert permission in ("admin", "company"), f"{method} {pattern}: {permission}"


def test_routes_and_spec_describe_the_same_operations_and_access() -> None:
    from_routes = {(pattern, method): permission for _, pattern, method, permission in PROTECTED}
    from_spec = {key: op.get("x-access", "<missing>") for key, op in SPEC.items()}
    assert from_routes == from_spec


def test_every_operation_with_a_body_has_a_valid_example_here() -> None:
    for route, pattern, method, _ in PROTECTED:
        needs_body = SPEC[(pattern, method)].get("requestBody", {}).get("required", False)
        assert needs_body == ((route, method) in VALID_BODIES), f"{method} {pattern}"


@pytest.fixture
def world(db: Any, acme: Tenant, globex: Tenant) -> dict[str, Any]:
    """Two companies, each with a driver and a pending booking."""
    ids: dict[str, Any] = {}
    for tenant in (acme, globex):
        driver = DriverFactory(company_id=tenant.id)
        booking = BookingFactory(company_id=tenant.id)
        db.session.commit()
        ids[tenant.name] = {
            "company_id": tenant.id,
            "driver_id": driver.id,
            "booking_id": booking.id,
        }
    return ids


def _url(pattern: str, **ids: int) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), pattern)


def _call(
    testapp: Any,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    if body is None:
        return testapp.request(url, method=method, headers=headers or {}, expect_errors=True)
    return testapp._gen_request(
        method,
        url,
        params=json.dumps(body),
        headers=headers or {},
        content_type="application/json",
        expect_errors=True,
    )


def _snapshot(db: Any) -> tuple[Any, ...]:
    counts = tuple(count(db, model) for model in TABLES)
    hashes = tuple(sorted(h or "" for h in db.session.scalars(select(Company.api_token_hash))))
    return counts, hashes


@pytest.mark.parametrize(
    ("route", "pattern", "method", "permission"),
    PROTECTED,
    ids=[f"{method} {pattern}" for _, pattern, method, _ in PROTECTED],
)
def test_access(
    testapp: Any,
    db: Any,
    admin: dict[str, str],
    acme: Tenant,
    globex: Tenant,
    world: dict[str, Any],
    route: str,
    pattern: str,
    method: str,
    permission: str,
) -> None:
    own = world[acme.name]
    other = world[globex.name]
    url = _url(pattern, **own)
    body = VALID_BODIES.get((route, method))
    before = _snapshot(db)
    stored_hash = hash_token(acme.token)

    # no credentials, bad credentials: 401, with the scheme to use
    for headers, message in (
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer mya_not-a-real-token"}, "invalid token"),
        ({"Authorization": f"Bearer {stored_hash}"}, "invalid token"),  # the hash is no credential
        ({"Authorization": f"Basic {acme.token}"}, "missing bearer token"),
        ({"Authorization": "Bearer"}, "missing bearer token"),
    ):
        response = _call(testapp, method, url, headers, body)
        assert response.status_int == 401, (headers, response.body)
        assert response.json == {"error": message}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")

    # another company's token on acme's URL
    response = _call(testapp, method, url, globex.headers, body)
    if permission == "company":
        assert response.status_int == 404, response.body
        # the very answer an id that does not exist gets: existence is not leaked
        missing = _call(testapp, "GET", "/api/companies/999999", admin)
        assert missing.status_int == 404
        assert response.json == missing.json == {"error": "not found"}
    else:
        assert response.status_int == 403, response.body
        assert response.json == {"error": "this operation needs the admin token"}

    # acme's token with globex's ids inside acme's URL: not found
    for key in ("driver_id", "booking_id"):
        if "{" + key + "}" in pattern:
            mixed = _url(pattern, **{**own, key: other[key]})
            response = _call(testapp, method, mixed, acme.headers, body)
            assert response.status_int == 404, (mixed, response.body)

    assert _snapshot(db) == before, "a refused request wrote something"

    # the right token does it (the admin may find a booking already cancelled: 409)
    response = _call(testapp, method, url, acme.headers, body)
    if permission == "admin":
        assert response.status_int == 403, response.body
    else:
        assert response.status_int in (200, 201), response.body
    response = _call(testapp, method, url, admin, body)
    assert response.status_int in (200, 201, 409), response.body


def test_admin_token_can_be_rotated_with_two_hashes(
    app_settings: Any, database: Any, db: Any, request_thread: Any
) -> None:
    """Several admin hashes may be configured: old and new tokens both work during a rotation."""
    from myapp import main
    from myapp.services.tokens import new_token_and_hash

    (old, old_hash), (new, new_hash) = new_token_and_hash(), new_token_and_hash()
    settings = {**app_settings, "myapp.database": database}
    settings["myapp.admin_token_hash"] = f"{old_hash}, {new_hash}"
    client = threaded_testapp(main({}, **settings), request_thread)
    for token in (old, new):
        client.get("/api/companies", headers={"Authorization": f"Bearer {token}"}, status=200)
    client.get("/api/companies", headers={"Authorization": "Bearer mya_x"}, status=401)


def test_a_malformed_admin_hash_stops_the_app_at_startup() -> None:
    from pyramid.exceptions import ConfigurationError

    from myapp import main

    settings = {"sqlalchemy.url": "sqlite://", "myapp.env": "testing"}
    with pytest.raises(ConfigurationError, match="not a SHA-256"):
        main({}, **settings, **{"myapp.admin_token_hash": "the-token-in-clear"})
