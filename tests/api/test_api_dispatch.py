"""The dispatch trigger: a durable route outside pyramid_tm, and the recorded runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_helpers import Tenant, threaded_testapp
from pyramid.config import Configurator
from sqlalchemy import select

from myapp.api.security import CompanyContext as Ctx
from myapp.db import current_session, current_transaction
from myapp.db.pyramid.durable import activate_hook
from myapp.models import Booking
from myapp.models.dispatch import DispatchRun
from myapp.services.tokens import hash_token
from myapp.testing.factories import BookingFactory, DriverFactory

T0 = datetime(2041, 3, 1, 8, 0, tzinfo=UTC)


def test_dispatch_assigns_and_records_the_run(
    testapp: Any, db: Any, acme: Tenant, rows: Any
) -> None:
    ada = DriverFactory(company_id=acme.id, name="Ada")
    bob = DriverFactory(company_id=acme.id, name="Bob")
    DriverFactory(company_id=acme.id, name="Resting", active=False)
    BookingFactory(driver=ada, pickup_time=T0 - timedelta(days=1))  # Ada already has one
    first = BookingFactory(company_id=acme.id, pickup_time=T0)
    second = BookingFactory(company_id=acme.id, pickup_time=T0 + timedelta(hours=1))
    third = BookingFactory(company_id=acme.id, pickup_time=T0 + timedelta(hours=2))
    db.session.commit()

    body = testapp.post(acme.url("/dispatch"), headers=acme.headers).json
    # earliest pickup first, to the least-loaded active driver (ties: lowest id)
    assert body["assigned"] == [
        {"booking_id": first.id, "driver_id": bob.id},
        {"booking_id": second.id, "driver_id": ada.id},
        {"booking_id": third.id, "driver_id": bob.id},
    ]
    assert (body["assigned_count"], body["unassigned_count"], body["unassigned"]) == (3, 0, [])
    assert (body["company_id"], body["source"], body["reason"]) == (acme.id, "api", None)
    datetime.fromisoformat(body["ran_at"])

    db.session.expire_all()
    assert db.session.get(Booking, first.id).driver_id == bob.id
    assert rows(DispatchRun) == 1
    runs = testapp.get(acme.url("/dispatch-runs"), headers=acme.headers).json
    assert runs["items"] == [body] and runs["total"] == 1

    # nothing left: a second run assigns nothing and is recorded too, newest first
    again = testapp.post(acme.url("/dispatch"), headers=acme.headers).json
    assert again["assigned"] == [] and again["id"] != body["id"]
    runs = testapp.get(acme.url("/dispatch-runs"), headers=acme.headers).json
    assert [r["id"] for r in runs["items"]] == [again["id"], body["id"]]


def test_bookings_left_pending_come_with_a_reason(testapp: Any, db: Any, acme: Tenant) -> None:
    past = BookingFactory(company_id=acme.id, pickup_time=datetime(2020, 1, 1, tzinfo=UTC))
    future = BookingFactory(company_id=acme.id, pickup_time=T0)
    db.session.commit()
    body = testapp.post(acme.url("/dispatch"), headers=acme.headers).json
    assert body["assigned"] == []
    assert body["unassigned"] == [
        {"booking_id": past.id, "reason": "pickup_time_passed"},
        {"booking_id": future.id, "reason": "no_active_driver"},
    ]


def test_a_company_dispatches_only_itself(
    testapp: Any, db: Any, acme: Tenant, globex: Tenant, admin: dict[str, str], rows: Any
) -> None:
    DriverFactory(company_id=globex.id)
    theirs = BookingFactory(company_id=globex.id)
    db.session.commit()
    testapp.post(globex.url("/dispatch"), headers=acme.headers, status=404)
    assert rows(DispatchRun) == 0
    db.session.expire_all()
    assert db.session.get(Booking, theirs.id).status == "pending"
    # the admin may dispatch any company; an unknown one is a 404 that records nothing
    assert testapp.post(globex.url("/dispatch"), headers=admin).json["assigned_count"] == 1
    response = testapp.post("/api/companies/987654/dispatch", headers=admin, status=404)
    assert response.json == {"error": "not found"}
    assert rows(DispatchRun) == 1


def test_the_dispatch_route_is_left_alone_by_pyramid_tm(app: Any) -> None:
    """pyramid_tm's activate hook says no for the durable routes' paths, yes for the rest."""
    from pyramid.request import Request

    def hook(path: str) -> bool:
        request = Request.blank(path)
        request.registry = app.registry
        return activate_hook(request)

    assert hook("/api/companies/12/dispatch") is False
    assert hook("/dashboard/dispatch") is False
    for path in ("/api/companies/12/dispatch-runs", "/api/companies/12", "/items", "/dashboard"):
        assert hook(path) is True, path


def _probe_app(database: Any, app_settings: dict[str, Any], admin_token: str) -> Any:
    """The real application plus two probes reporting the transaction state inside a view."""

    def state(request: Any) -> dict[str, Any]:
        return {
            "tm_active": bool(request.environ.get("tm.active")),
            "transaction_open": current_transaction() is not None,
            "session_in_transaction": current_session().in_transaction(),
            "identity": request.identity.userid,
        }

    def engine_in_request(request: Any) -> dict[str, Any]:
        from myapp.services.dispatching import dispatch_and_record

        return dispatch_and_record(int(request.matchdict["company_id"]), source="api") or {}

    settings = {**app_settings, "myapp.database": database}
    settings["myapp.admin_token_hash"] = hash_token(admin_token)
    settings["myapp.session_secret"] = "probe-app-session-secret-0123456789abcdef"
    with Configurator(settings=settings) as config:
        config.include("myapp")
        prefix = "/api/companies/{company_id}"
        config.add_durable_route("api.probe_durable", f"{prefix}/probe-durable", factory=Ctx)
        config.add_route("api.probe_managed", f"{prefix}/probe-managed", factory=Ctx)
        config.add_route("api.engine_in_request", f"{prefix}/engine-in-request", factory=Ctx)
        for name in ("api.probe_durable", "api.probe_managed"):
            config.add_view(state, route_name=name, renderer="json", permission="company")
        config.add_view(
            engine_in_request,
            route_name="api.engine_in_request",
            renderer="json",
            permission="company",
        )
    return config.make_wsgi_app()


def test_a_durable_view_runs_with_no_transaction_open(
    db: Any,
    database: Any,
    app_settings: dict[str, Any],
    admin_token: str,
    request_thread: Any,
    acme: Tenant,
) -> None:
    """The token was checked in a read-only unit of work that ended before the view ran."""
    client = threaded_testapp(_probe_app(database, app_settings, admin_token), request_thread)
    durable = client.get(acme.url("/probe-durable"), headers=acme.headers).json
    assert durable == {
        "tm_active": False,
        "transaction_open": False,
        "session_in_transaction": False,
        "identity": f"company:{acme.id}",
    }
    managed = client.get(acme.url("/probe-managed"), headers=acme.headers).json
    assert managed["tm_active"] is True and managed["transaction_open"] is True


def test_the_engine_refuses_to_run_inside_a_request_transaction(
    db: Any,
    database: Any,
    app_settings: dict[str, Any],
    admin_token: str,
    request_thread: Any,
    acme: Tenant,
    rows: Any,
) -> None:
    """Why the trigger is a durable route: under pyramid_tm the engine refuses; nothing written."""
    DriverFactory(company_id=acme.id)
    booking = BookingFactory(company_id=acme.id)
    db.session.commit()
    client = threaded_testapp(_probe_app(database, app_settings, admin_token), request_thread)
    response = client.get(acme.url("/engine-in-request"), headers=acme.headers, status=500)
    assert "NestedTransactionError" in response.json.get("detail", "")
    db.session.expire_all()
    assert db.session.get(Booking, booking.id).status == "pending"
    assert rows(DispatchRun) == 0
    # the same company through the real, durable trigger
    client.post(acme.url("/dispatch"), headers=acme.headers, status=200)
    db.session.expire_all()
    assert db.session.scalar(select(Booking.status).where(Booking.id == booking.id)) == "assigned"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_on_the_trigger(testapp: Any, acme: Tenant, method: str) -> None:
    response = testapp.request(
        acme.url("/dispatch"), method=method, headers=acme.headers, expect_errors=True
    )
    assert response.status_int in (404, 405)
    assert response.content_type == "application/json"
