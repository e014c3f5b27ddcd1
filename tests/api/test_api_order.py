"""The order of the checks, as docs/api.md states it ("Order of the checks").

1. Bytes that cannot be decoded (not JSON, not UTF-8, a form in another charset,
   too large) are refused first, by the input guard, before routing and before
   the token is looked up: the answer is the same for every URL and every
   caller, so it reveals nothing the client did not send, and junk costs no
   database round trip.
2. Then access: 401 without a valid token, 404 for another company's URL, 403
   for a company token on an admin operation.
3. Then the document is checked against the spec (400 naming the field, 415
   for another content type): only a caller allowed in learns what the
   operation expects.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_helpers import Tenant

from myapp.testing.factories import VALID_API_BODIES, BookingFactory, DriverFactory

OPERATIONS = sorted(VALID_API_BODIES)
ROUTES = {
    "api.companies": "/api/companies",
    "api.company": "/api/companies/{cid}",
    "api.drivers": "/api/companies/{cid}/drivers",
    "api.driver": "/api/companies/{cid}/drivers/{did}",
    "api.bookings": "/api/companies/{cid}/bookings",
    "api.booking": "/api/companies/{cid}/bookings/{bid}",
    "api.booking_status": "/api/companies/{cid}/bookings/{bid}/status",
}
ADMIN_ONLY = {("api.companies", "POST"), ("api.company", "PATCH")}


@pytest.fixture
def ids(db: Any, acme: Tenant) -> dict[str, int]:
    driver = DriverFactory(company_id=acme.id)
    booking = BookingFactory(company_id=acme.id)
    db.session.commit()
    return {"did": driver.id, "bid": booking.id}


def _send(testapp: Any, method: str, url: str, raw: bytes, content_type: str, headers: Any) -> Any:
    return testapp.request(
        url,
        method=method,
        body=raw,
        headers={**headers, "Content-Type": content_type},
        expect_errors=True,
    )


@pytest.mark.parametrize(("route", "method"), OPERATIONS, ids=[f"{m} {r}" for r, m in OPERATIONS])
def test_undecodable_bodies_are_refused_before_access_and_identically(
    testapp: Any,
    admin: dict[str, str],
    acme: Tenant,
    globex: Tenant,
    ids: dict[str, int],
    route: str,
    method: str,
) -> None:
    answers = []
    for cid in (acme.id, 999999):  # an existing company, one that does not exist
        url = ROUTES[route].format(cid=cid, **ids)
        for headers in ({}, {"Authorization": "Bearer mya_bogus"}, globex.headers, admin):
            for raw, content_type, status in (
                (b'{"name": ', "application/json", 400),
                (b'{"name": "\xff"}', "application/json", 400),
                (b"{}", "application/json; charset=latin-1", 415),
                (b"name=\xe9", "application/x-www-form-urlencoded; charset=latin-1", 415),
            ):
                response = _send(testapp, method, url, raw, content_type, headers)
                assert response.status_int == status, (url, headers, raw, response.body)
                answers.append((raw.hex(), content_type, response.status_int, response.json))
    distinct = {json.dumps(a, sort_keys=True) for a in answers}
    assert len(distinct) == 4  # one answer per body, whatever the URL and the caller


@pytest.mark.parametrize(("route", "method"), OPERATIONS, ids=[f"{m} {r}" for r, m in OPERATIONS])
def test_access_is_checked_before_the_document(
    testapp: Any,
    admin: dict[str, str],
    acme: Tenant,
    globex: Tenant,
    ids: dict[str, int],
    route: str,
    method: str,
) -> None:
    url = ROUTES[route].format(cid=acme.id, **ids)
    invalid = json.dumps({"no_such_field": 1}).encode()
    for raw, content_type in ((invalid, "application/json"), (b"name=x", "text/plain")):
        response = _send(testapp, method, url, raw, content_type, {})
        assert response.status_int == 401, response.body
        response = _send(testapp, method, url, raw, content_type, globex.headers)
        expected = 403 if (route, method) in ADMIN_ONLY else 404
        assert response.status_int == expected, response.body
    # allowed in: now the document is checked
    headers = admin if (route, method) in ADMIN_ONLY else acme.headers
    response = _send(testapp, method, url, invalid, "application/json", headers)
    assert response.status_int == 400, response.body
    assert "no_such_field" in {e.get("field") for e in response.json["errors"]}, response.json
    response = _send(testapp, method, url, b"name=x", "text/plain", headers)
    assert response.status_int == 415, response.body


def test_a_content_encoding_is_refused_before_access(testapp: Any, acme: Tenant) -> None:
    """Nothing here decodes gzip: 415 for every caller, before the token is looked up."""
    import gzip

    raw = gzip.compress(b'{"name": "x"}')
    for headers in ({}, acme.headers):
        response = testapp.request(
            f"/api/companies/{acme.id}/drivers",
            method="POST",
            body=raw,
            headers={**headers, "Content-Type": "application/json", "Content-Encoding": "gzip"},
            expect_errors=True,
        )
        assert response.status_int == 415, response.body
        assert response.json["error"] == "body: Content-Encoding gzip is not supported"
