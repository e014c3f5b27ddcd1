"""The error format: 400 names the field; 404/409 are JSON; nothing is written on any error."""

from __future__ import annotations

from typing import Any

from api_helpers import Tenant, threaded_testapp

from myapp.models import Booking, Driver
from myapp.testing.factories import DriverFactory


def test_400_lists_every_invalid_field_and_names_the_first(testapp: Any, acme: Tenant) -> None:
    response = testapp.post_json(
        acme.url("/bookings"),
        {"pickup_time": "soon", "pickup_address": "", "colour": "red"},
        headers=acme.headers,
        status=400,
    )
    body = response.json
    assert body["field"] == "colour"
    assert body["error"] == "colour: unknown field"
    assert {(e["field"], e["message"]) for e in body["errors"]} >= {
        ("colour", "unknown field"),
        ("dropoff_address", "required"),
        ("pickup_time", "'soon' is not a 'date-time'"),
        ("pickup_address", "'' should be non-empty"),
    }


def test_malformed_or_missing_bodies(testapp: Any, acme: Tenant, rows: Any) -> None:
    url = acme.url("/drivers")
    response = testapp.post(
        url, "{not json", headers={**acme.headers, "Content-Type": "application/json"}, status=400
    )
    assert response.json["field"] == "body"
    assert response.json["error"] == "body: the request body is not valid JSON"
    response = testapp.post(url, headers=acme.headers, status=400)
    assert response.json == {
        "error": "body: a JSON request body is required",
        "field": "body",
        "errors": [{"field": "body", "message": "a JSON request body is required"}],
    }
    response = testapp.post_json(url, ["Ada"], headers=acme.headers, status=400)
    assert response.json["field"] == "body"
    assert rows(Driver) == 0


def test_path_parameters(testapp: Any, acme: Tenant, admin: dict[str, str]) -> None:
    response = testapp.get("/api/companies/abc", headers=admin, status=400)
    assert response.json["field"] == "company_id"
    response = testapp.get(acme.url("/bookings/0"), headers=acme.headers, status=400)
    assert response.json["field"] == "booking_id"
    # a company token naming a malformed company id learns nothing either
    testapp.get("/api/companies/abc", headers=acme.headers, status=404)


def test_unknown_ids_are_404_json(testapp: Any, acme: Tenant, admin: dict[str, str]) -> None:
    for url in (acme.url("/bookings/98765"), acme.url("/drivers/98765"), "/api/companies/98765"):
        response = testapp.get(url, headers=admin, status=404)
        assert response.json == {"error": "not found"}
    assert testapp.get("/api/nothing-here", status=404).json == {"error": "not found"}


def test_a_conflict_rolls_back_what_the_request_did_before_it(
    testapp: Any, db: Any, acme: Tenant, rows: Any
) -> None:
    """A PATCH that changes the address, then hits a double booking: the address is not kept."""
    driver = DriverFactory(company_id=acme.id)
    db.session.commit()
    make = {"pickup_address": "A", "dropoff_address": "B", "driver_id": driver.id}
    first = testapp.post_json(
        acme.url("/bookings"), {**make, "pickup_time": "2041-01-01T10:00:00Z"}, headers=acme.headers
    ).json
    second = testapp.post_json(
        acme.url("/bookings"), {**make, "pickup_time": "2041-01-01T11:00:00Z"}, headers=acme.headers
    ).json
    testapp.patch_json(
        acme.url(f"/bookings/{second['id']}"),
        {"dropoff_address": "Changed", "pickup_time": first["pickup_time"]},
        headers=acme.headers,
        status=409,
    )
    db.session.expire_all()
    stored = db.session.get(Booking, second["id"])
    assert (stored.dropoff_address, stored.pickup_time.isoformat()) == ("B", second["pickup_time"])
    assert rows(Booking) == 2


def test_a_response_off_the_spec_is_a_500_and_rolls_back(
    db: Any,
    database: Any,
    app_settings: dict[str, Any],
    admin_token: str,
    request_thread: Any,
    acme: Tenant,
    rows: Any,
) -> None:
    """Response validation runs inside the request's transaction (its tween is under pyramid_tm):
    a view that writes, then answers something the spec does not allow, commits nothing."""
    from pyramid.config import Configurator

    from myapp.services.tokens import hash_token

    def off_spec(request: Any) -> dict[str, Any]:
        request.dbsession.add(Driver(company_id=acme.id, name="Ghost", active=True))
        request.dbsession.flush()
        return {"id": "not-an-integer"}  # Company.id is an integer in the spec

    settings = {**app_settings, "myapp.database": database}
    settings["myapp.admin_token_hash"] = hash_token(admin_token)
    settings["myapp.session_secret"] = "off-spec-app-session-secret-0123456789abcdef"
    with Configurator(settings=settings) as config:
        config.include("myapp")
        config.add_view(
            off_spec,
            route_name="api.company",
            request_method="PATCH",  # a write request: GET requests are read-only
            header="X-Off-Spec",
            openapi=True,
            renderer="json",
            permission="admin",
        )
    client = threaded_testapp(config.make_wsgi_app(), request_thread)
    admin = {"Authorization": f"Bearer {admin_token}", "X-Off-Spec": "1"}
    response = client.patch_json(acme.url(), {"name": "Renamed"}, headers=admin, status=500)
    assert response.json == {"error": "internal server error: invalid response"}
    assert rows(Driver) == 0
    # the regular view of the same route answers within the spec
    assert client.get(acme.url(), headers=acme.headers).json == {"id": acme.id, "name": acme.name}


def test_the_bearer_scheme_is_case_insensitive(testapp: Any, acme: Tenant) -> None:
    token = acme.token
    for scheme in ("bearer", "BEARER", "Bearer"):
        testapp.get(acme.url(), headers={"Authorization": f"{scheme} {token}"}, status=200)
