"""Seed 001's rollback non-regression suite, on both backends.

Every test follows the seed: commit an initial state, capture it, change it
without committing (flush), roll back, and check with
``verify_rollback_restores_values`` (expire_all + a fresh query) that the
database holds the committed values again. Committed changes are never
undone; under the ``db`` fixture all of it vanishes after the test.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from myapp.models import Booking, Company, Driver
from myapp.services import dispatch as engine
from myapp.testing import (
    capture_original_values,
    persisted_fixture,
    verify_rollback_restores_values,
)
from myapp.testing.factories import (
    BASE_PICKUP_TIME,
    BookingFactory,
    CompanyFactory,
    DriverFactory,
)


@pytest.fixture
def company(db):
    return persisted_fixture(db, CompanyFactory(), Company)


@pytest.fixture
def driver(db, company):
    return persisted_fixture(db, DriverFactory(company=company), Driver)


def test_rollback_restores_original_values(db, company, driver):
    booking = BookingFactory(company=company, driver_id=None)
    db.session.commit()
    original_values = capture_original_values(
        booking, ["driver_id", "status", "pickup_address", "dropoff_address", "pickup_time"]
    )

    booking.driver_id = driver.id
    booking.status = "assigned"
    booking.pickup_address = "1 place Saint-François, Lausanne"
    booking.dropoff_address = "Aéroport de Genève"
    booking.pickup_time = booking.pickup_time + timedelta(hours=2)
    db.session.flush()

    db.session.rollback()

    verify_rollback_restores_values(db.session, Booking, booking.id, original_values)


def test_rollback_restores_single_field(db, company, driver):
    booking = BookingFactory(company=company, driver_id=None)
    db.session.commit()
    original_values = capture_original_values(booking, ["driver_id"])

    booking.driver_id = driver.id
    db.session.flush()
    db.session.rollback()

    reloaded = verify_rollback_restores_values(db.session, Booking, booking.id, original_values)
    assert reloaded.driver_id is None


def test_rollback_restores_multiple_fields(db, company, driver):
    booking = BookingFactory(company=company, driver_id=None)
    db.session.commit()
    fields = ["driver_id", "status", "pickup_address"]
    original_values = capture_original_values(booking, fields)
    assert original_values == {
        "driver_id": None,
        "status": "pending",
        "pickup_address": booking.pickup_address,
    }

    booking.driver_id = driver.id
    booking.status = "assigned"
    booking.pickup_address = "12 avenue de la Gare, Sion"
    db.session.flush()
    db.session.rollback()

    reloaded = verify_rollback_restores_values(db.session, Booking, booking.id, original_values)
    assert (reloaded.driver_id, reloaded.status) == (None, "pending")


def test_rollback_restores_multiple_objects(db, company, driver):
    bookings = BookingFactory.create_batch(3, company=company, driver_id=None)
    other_driver = DriverFactory(company=company)
    db.session.commit()
    originals = {b.id: capture_original_values(b, ["driver_id", "status"]) for b in bookings}
    driver_original = capture_original_values(other_driver, ["name", "active"])

    for booking in bookings:
        booking.driver_id = driver.id
        booking.status = "assigned"
    other_driver.active = False
    other_driver.name = "renamed"
    db.session.flush()
    db.session.rollback()

    for booking_id, original_values in originals.items():
        verify_rollback_restores_values(db.session, Booking, booking_id, original_values)
    verify_rollback_restores_values(db.session, Driver, other_driver.id, driver_original)


def test_rollback_restores_after_flush(db, company, driver):
    booking = BookingFactory(company=company, driver_id=None)
    db.session.commit()
    original_values = capture_original_values(booking, ["driver_id", "status"])

    # a new object flushed (it has an id) and a change flushed: neither is committed
    new_booking = BookingFactory(company=company)
    new_booking_id = new_booking.id
    assert new_booking_id is not None
    booking.driver_id = driver.id
    booking.status = "assigned"
    db.session.flush()
    assert db.session.get(Booking, new_booking_id) is not None

    db.session.rollback()

    verify_rollback_restores_values(db.session, Booking, booking.id, original_values)
    db.session.expire_all()
    assert db.session.get(Booking, new_booking_id) is None  # the flushed insert is gone too


def test_rollback_restores_after_partial_commit(db, company, driver):
    booking1 = BookingFactory(company=company, driver_id=None)
    booking2 = BookingFactory(company=company, driver_id=None)
    db.session.commit()
    original_values2 = capture_original_values(booking2, ["driver_id", "status"])

    booking1.driver_id = driver.id
    booking1.status = "assigned"
    db.session.commit()  # committed: a rollback does not undo it
    committed_values1 = capture_original_values(booking1, ["driver_id", "status"])

    booking2.driver_id = driver.id
    booking2.status = "assigned"
    db.session.flush()
    db.session.rollback()

    # booking1 keeps the committed change, booking2 gets its original values back
    verify_rollback_restores_values(db.session, Booking, booking1.id, committed_values1)
    assert committed_values1 == {"driver_id": driver.id, "status": "assigned"}
    verify_rollback_restores_values(db.session, Booking, booking2.id, original_values2)


def test_rollback_restores_after_engine_run_rollback_defensive(db, company, driver):
    now = BASE_PICKUP_TIME + timedelta(hours=1)
    # committed before engine.run(): a booking already past `now`, and an upcoming one
    past = BookingFactory(company=company, driver_id=None, pickup_time=now - timedelta(minutes=30))
    upcoming = BookingFactory(
        company=company, driver_id=None, pickup_time=now + timedelta(minutes=30)
    )
    db.session.commit()
    original_values = capture_original_values(past, ["driver_id", "status", "pickup_address"])

    # flushed, not committed: engine.run()'s defensive rollback must discard it
    past.driver_id = driver.id
    past.status = "assigned"
    past.pickup_address = "never committed"
    db.session.flush()

    result = engine.run(company_id=company.id, now=now)

    # the committed fixtures were visible to the engine (no company_not_found) ...
    assert result.reason is None
    assert result.assigned == [(upcoming.id, driver.id)]
    # ... and the past booking, back to its committed state, was left pending
    assert result.unassigned == [(past.id, engine.PICKUP_TIME_PASSED)]
    verify_rollback_restores_values(db.session, Booking, past.id, original_values)
    verify_rollback_restores_values(
        db.session, Booking, upcoming.id, {"driver_id": driver.id, "status": "assigned"}
    )
