"""Bookings: create, list, read, update, status transitions, cancel; 409s that write nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from api_helpers import Tenant

from myapp.api.booking_rules import TRANSITIONS
from myapp.models import BOOKING_STATUSES, Booking
from myapp.testing.factories import BookingFactory, DriverFactory

PICKUP = "2041-05-04T09:30:00+02:00"
PICKUP_UTC = datetime(2041, 5, 4, 7, 30, tzinfo=UTC)


def _new(**extra: Any) -> dict[str, Any]:
    return {
        "pickup_time": PICKUP,
        "pickup_address": "Gare de Lausanne",
        "dropoff_address": "EPFL",
        **extra,
    }


def _stored(db: Any, booking_id: int) -> Booking:
    db.session.expire_all()
    return db.session.get(Booking, booking_id)


def test_create_pending(testapp: Any, db: Any, acme: Tenant) -> None:
    response = testapp.post_json(acme.url("/bookings"), _new(), headers=acme.headers, status=201)
    body = response.json
    assert body == {
        "id": body["id"],
        "company_id": acme.id,
        "pickup_time": "2041-05-04T07:30:00+00:00",  # stored and answered in UTC
        "pickup_address": "Gare de Lausanne",
        "dropoff_address": "EPFL",
        "status": "pending",
        "driver_id": None,
    }
    assert response.location.endswith(acme.url(f"/bookings/{body['id']}"))
    stored = _stored(db, body["id"])
    assert (stored.status, stored.pickup_time) == ("pending", PICKUP_UTC)
    assert testapp.get(acme.url(f"/bookings/{body['id']}"), headers=acme.headers).json == body


def test_create_with_a_driver_is_assigned(testapp: Any, db: Any, acme: Tenant) -> None:
    driver = DriverFactory(company_id=acme.id)
    db.session.commit()
    body = testapp.post_json(
        acme.url("/bookings"), _new(driver_id=driver.id), headers=acme.headers, status=201
    ).json
    assert (body["status"], body["driver_id"]) == ("assigned", driver.id)


def test_double_booking_is_a_409_and_writes_nothing(
    testapp: Any, db: Any, acme: Tenant, rows: Any
) -> None:
    driver = DriverFactory(company_id=acme.id)
    db.session.commit()
    testapp.post_json(acme.url("/bookings"), _new(driver_id=driver.id), headers=acme.headers)
    # the same instant written in another offset is the same pickup time
    same_time = _new(driver_id=driver.id, pickup_time="2041-05-04T07:30:00Z")
    response = testapp.post_json(acme.url("/bookings"), same_time, headers=acme.headers, status=409)
    assert response.json == {
        "error": f"driver {driver.id} already has a booking at 2041-05-04T07:30:00+00:00",
        "field": "driver_id",
    }
    assert rows(Booking) == 1
    # without a driver the same time is fine: the dispatcher will find someone
    testapp.post_json(acme.url("/bookings"), _new(), headers=acme.headers, status=201)
    assert rows(Booking) == 2


def test_the_database_constraint_backs_the_check(db: Any, acme: Tenant) -> None:
    """The 409 does not rest on the pre-check: the flush of a duplicate slot fails by itself."""
    from sqlalchemy.exc import IntegrityError

    from myapp.api.booking_rules import flush_booking
    from myapp.api.errors import Conflict

    driver = DriverFactory(company_id=acme.id)
    BookingFactory(company_id=acme.id, driver=driver, pickup_time=PICKUP_UTC)
    db.session.commit()
    duplicate = Booking(
        company_id=acme.id,
        pickup_time=PICKUP_UTC,
        pickup_address="a",
        dropoff_address="b",
        status="assigned",
        driver_id=driver.id,
    )
    db.session.add(duplicate)
    with pytest.raises(IntegrityError):
        db.session.flush()
    db.session.rollback()
    db.session.add(duplicate)
    with pytest.raises(Conflict):
        flush_booking(db.session, duplicate)
    db.session.rollback()


def test_driver_reference_checks(
    testapp: Any, db: Any, acme: Tenant, globex: Tenant, rows: Any
) -> None:
    theirs = DriverFactory(company_id=globex.id)
    resting = DriverFactory(company_id=acme.id, active=False)
    db.session.commit()
    # another company's driver is, for acme, a driver that does not exist: 400 on the field
    for driver_id in (theirs.id, 999999):
        response = testapp.post_json(
            acme.url("/bookings"), _new(driver_id=driver_id), headers=acme.headers, status=400
        )
        assert response.json["field"] == "driver_id"
        assert response.json["error"] == f"driver_id: no driver {driver_id} in this company"
    response = testapp.post_json(
        acme.url("/bookings"), _new(driver_id=resting.id), headers=acme.headers, status=409
    )
    assert "inactive" in response.json["error"]
    assert rows(Booking) == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (_new(pickup_time="tomorrow"), "pickup_time"),
        (_new(pickup_time="2041-05-04T09:30:00"), "pickup_time"),  # no offset: ambiguous
        (_new(pickup_time=1700000000), "pickup_time"),
        (_new(pickup_address=""), "pickup_address"),
        (_new(dropoff_address="x" * 301), "dropoff_address"),
        (_new(driver_id="3"), "driver_id"),
        (_new(driver_id=0), "driver_id"),
        (_new(status="assigned"), "status"),
        ({"pickup_time": PICKUP, "pickup_address": "a"}, "dropoff_address"),
    ],
)
def test_bad_input_names_the_field(
    testapp: Any, acme: Tenant, rows: Any, payload: dict[str, Any], field: str
) -> None:
    response = testapp.post_json(acme.url("/bookings"), payload, headers=acme.headers, status=400)
    assert response.json["field"] == field, response.json
    assert response.json["error"].startswith(f"{field}: ")
    assert rows(Booking) == 0


def test_list_by_pickup_time_with_filters(
    testapp: Any, db: Any, acme: Tenant, globex: Tenant
) -> None:
    driver = DriverFactory(company_id=acme.id)
    late = BookingFactory(company_id=acme.id, pickup_time=datetime(2041, 1, 3, tzinfo=UTC))
    early = BookingFactory(company_id=acme.id, pickup_time=datetime(2041, 1, 1, tzinfo=UTC))
    assigned = BookingFactory(driver=driver, pickup_time=datetime(2041, 1, 2, tzinfo=UTC))
    BookingFactory(company_id=globex.id)
    db.session.commit()

    everything = testapp.get(acme.url("/bookings"), headers=acme.headers).json
    assert [b["id"] for b in everything["items"]] == [early.id, assigned.id, late.id]
    pending = testapp.get(acme.url("/bookings?status=pending"), headers=acme.headers).json
    assert [b["id"] for b in pending["items"]] == [early.id, late.id]
    by_driver = testapp.get(acme.url(f"/bookings?driver_id={driver.id}"), headers=acme.headers).json
    assert [b["id"] for b in by_driver["items"]] == [assigned.id]
    page = testapp.get(acme.url("/bookings?per_page=1&page=3"), headers=acme.headers).json
    assert [b["id"] for b in page["items"]] == [late.id] and page["pages"] == 3
    for query, field in (
        ("status=done", "status"),
        ("per_page=101", "per_page"),
        ("page=0", "page"),
        ("page=x", "page"),
    ):
        response = testapp.get(acme.url(f"/bookings?{query}"), headers=acme.headers, status=400)
        assert response.json["field"] == field


def test_another_companys_booking_is_not_found(
    testapp: Any, db: Any, acme: Tenant, globex: Tenant
) -> None:
    theirs = BookingFactory(company_id=globex.id)
    db.session.commit()
    testapp.get(acme.url(f"/bookings/{theirs.id}"), headers=acme.headers, status=404)
    testapp.post(acme.url(f"/bookings/{theirs.id}/cancel"), headers=acme.headers, status=404)
    assert _stored(db, theirs.id).status == "pending"


ALL_PAIRS = [(a, b) for a in BOOKING_STATUSES for b in BOOKING_STATUSES]


@pytest.mark.parametrize(("start", "target"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_status_transitions(testapp: Any, db: Any, acme: Tenant, start: str, target: str) -> None:
    """Every pair of statuses: allowed ones happen, the others are a 409 that changes nothing."""
    driver = DriverFactory(company_id=acme.id)
    booking = BookingFactory(
        company_id=acme.id,
        status=start,
        driver=driver if start in ("assigned", "completed") else None,
    )
    db.session.commit()
    before = (booking.status, booking.driver_id)
    payload: dict[str, Any] = {"status": target}
    if target == "assigned":
        payload["driver_id"] = driver.id
    url = acme.url(f"/bookings/{booking.id}/status")
    allowed = target in TRANSITIONS[start]
    response = testapp.post_json(url, payload, headers=acme.headers, status=200 if allowed else 409)
    stored = _stored(db, booking.id)
    if allowed:
        expected_driver = driver.id if target in ("assigned", "completed") else None
        assert (response.json["status"], response.json["driver_id"]) == (target, expected_driver)
        assert (stored.status, stored.driver_id) == (target, expected_driver)
    else:
        assert response.json == {
            "error": f"booking {booking.id} cannot go from {start} to {target}",
            "allowed": list(TRANSITIONS[start]),
        }
        assert (stored.status, stored.driver_id) == before


def test_the_transition_table() -> None:
    assert TRANSITIONS == {
        "pending": ("assigned", "cancelled"),
        "assigned": ("completed", "cancelled", "pending"),
        "completed": (),
        "cancelled": (),
    }


def test_assigning_needs_a_free_active_driver_of_the_company(
    testapp: Any, db: Any, acme: Tenant, globex: Tenant
) -> None:
    driver = DriverFactory(company_id=acme.id)
    busy = BookingFactory(driver=driver, pickup_time=PICKUP_UTC)
    booking = BookingFactory(company_id=acme.id, pickup_time=PICKUP_UTC)
    theirs = DriverFactory(company_id=globex.id)
    db.session.commit()
    url = acme.url(f"/bookings/{booking.id}/status")
    response = testapp.post_json(url, {"status": "assigned"}, headers=acme.headers, status=400)
    assert response.json["field"] == "driver_id"
    response = testapp.post_json(
        url, {"status": "assigned", "driver_id": theirs.id}, headers=acme.headers, status=400
    )
    assert response.json["field"] == "driver_id"
    response = testapp.post_json(
        url, {"status": "assigned", "driver_id": driver.id}, headers=acme.headers, status=409
    )
    assert response.json["error"].startswith(f"driver {driver.id} already has a booking")
    response = testapp.post_json(
        url, {"status": "cancelled", "driver_id": driver.id}, headers=acme.headers, status=400
    )
    assert response.json["field"] == "driver_id"
    assert _stored(db, booking.id).status == "pending"
    # cancelling the busy booking frees the slot
    testapp.post(acme.url(f"/bookings/{busy.id}/cancel"), headers=acme.headers, status=200)
    body = testapp.post_json(
        url, {"status": "assigned", "driver_id": driver.id}, headers=acme.headers
    ).json
    assert (body["status"], body["driver_id"]) == ("assigned", driver.id)


def test_cancel(testapp: Any, db: Any, acme: Tenant) -> None:
    driver = DriverFactory(company_id=acme.id)
    booking = BookingFactory(driver=driver)
    db.session.commit()
    body = testapp.post(acme.url(f"/bookings/{booking.id}/cancel"), headers=acme.headers).json
    assert (body["status"], body["driver_id"]) == ("cancelled", None)
    response = testapp.post(
        acme.url(f"/bookings/{booking.id}/cancel"), headers=acme.headers, status=409
    )
    assert response.json["allowed"] == []


def test_patch(testapp: Any, db: Any, acme: Tenant) -> None:
    ada, bob = DriverFactory(company_id=acme.id), DriverFactory(company_id=acme.id)
    booking = BookingFactory(company_id=acme.id)
    db.session.commit()
    url = acme.url(f"/bookings/{booking.id}")
    body = testapp.patch_json(
        url, {"pickup_address": " Flon ", "pickup_time": PICKUP}, headers=acme.headers
    ).json
    assert (body["pickup_address"], body["pickup_time"], body["status"]) == (
        "Flon",
        "2041-05-04T07:30:00+00:00",
        "pending",
    )
    body = testapp.patch_json(url, {"driver_id": ada.id}, headers=acme.headers).json
    assert (body["status"], body["driver_id"]) == ("assigned", ada.id)
    body = testapp.patch_json(url, {"driver_id": bob.id}, headers=acme.headers).json
    assert (body["status"], body["driver_id"]) == ("assigned", bob.id)
    body = testapp.patch_json(url, {"driver_id": None}, headers=acme.headers).json
    assert (body["status"], body["driver_id"]) == ("pending", None)


def test_patch_conflicts_write_nothing(testapp: Any, db: Any, acme: Tenant) -> None:
    driver = DriverFactory(company_id=acme.id)
    BookingFactory(driver=driver, pickup_time=PICKUP_UTC)
    mine = BookingFactory(driver=driver, pickup_time=datetime(2041, 6, 1, tzinfo=UTC))
    done = BookingFactory(driver=driver, status="completed")
    db.session.commit()
    # moving an assigned booking onto the driver's other booking: 409, address untouched too
    response = testapp.patch_json(
        acme.url(f"/bookings/{mine.id}"),
        {"pickup_time": PICKUP, "pickup_address": "Elsewhere"},
        headers=acme.headers,
        status=409,
    )
    assert response.json["field"] == "driver_id"
    stored = _stored(db, mine.id)
    assert (stored.pickup_time, stored.pickup_address) == (
        datetime(2041, 6, 1, tzinfo=UTC),
        mine.pickup_address,
    )
    response = testapp.patch_json(
        acme.url(f"/bookings/{done.id}"), {"pickup_address": "x"}, headers=acme.headers, status=409
    )
    assert response.json["error"] == f"booking {done.id} is completed and can no longer be changed"
    response = testapp.patch_json(
        acme.url(f"/bookings/{mine.id}"), {}, headers=acme.headers, status=400
    )
    assert response.json["field"] == "body"
