"""The factory_boy factories write through the current test session, deterministically."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from myapp.models import Booking, Company, Driver, Invoice
from myapp.testing.factories import (
    BASE_PICKUP_TIME,
    BookingFactory,
    CompanyFactory,
    DriverFactory,
    InvoiceFactory,
)


def test_factories_flush_into_the_test_session(db):
    company = CompanyFactory()
    assert company in db.session
    assert company.id is not None  # flushed: the database gave it an id
    assert db.session.scalar(select(func.count()).select_from(Company)) == 1
    db.session.rollback()  # flushed, never committed: gone
    assert db.session.scalar(select(func.count()).select_from(Company)) == 0


def test_sequences_restart_in_every_test(db):
    # the same values whatever ran before (the db fixture resets the sequences)
    assert [CompanyFactory().name for _ in range(2)] == ["Company 1", "Company 2"]
    booking = BookingFactory()
    assert booking.pickup_time == BASE_PICKUP_TIME
    assert BookingFactory().pickup_time == BASE_PICKUP_TIME + timedelta(minutes=30)


def test_sequences_restart_in_every_test_again(db):
    test_sequences_restart_in_every_test(db)


def test_sub_factories_build_a_consistent_graph(db):
    driver = DriverFactory()
    assert driver.company.name == "Company 1" and driver.active is True

    booking = BookingFactory(driver=driver)
    assert booking.company is driver.company  # a driver's booking belongs to its company
    assert booking.status == "assigned" and booking.driver_id == driver.id

    pending = BookingFactory(company=driver.company)
    assert pending.status == "pending" and pending.driver_id is None

    invoice = InvoiceFactory()
    assert invoice.booking.status == "completed"
    assert invoice.booking.driver is not None
    assert invoice.company_id == invoice.booking.company_id
    assert invoice.period == invoice.booking.pickup_time.strftime("%Y-%m")
    assert invoice.amount == Decimal("40.00")
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 1


def test_ids_instead_of_objects(db):
    company = CompanyFactory()
    driver = DriverFactory(company_id=company.id)
    booking = BookingFactory(company_id=company.id, driver_id=driver.id)
    db.session.commit()
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).select_from(Company)) == 1  # no stray company
    assert (booking.company_id, booking.driver_id, booking.status) == (
        company.id,
        driver.id,
        "assigned",
    )
    assert driver.company_id == company.id


def test_seed_style_booking_with_explicit_none(db):
    company = CompanyFactory()
    booking = BookingFactory(company=company, driver_id=None)
    db.session.commit()
    assert (booking.driver_id, booking.status, booking.company_id) == (None, "pending", company.id)


def test_database_constraints_apply(db):
    driver = DriverFactory()
    BookingFactory(driver=driver, pickup_time=BASE_PICKUP_TIME)
    # PostgreSQL/SQLite say "unique", MySQL/MariaDB "Duplicate entry ... for key"
    with pytest.raises(Exception, match=r"(?i)unique|duplicate entry"):
        BookingFactory(driver=driver, pickup_time=BASE_PICKUP_TIME)
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(Driver)) == 0
    assert db.session.scalar(select(func.count()).select_from(Booking)) == 0


@pytest.mark.doomed
def test_factories_work_in_the_doomed_mode(db):
    BookingFactory.create_batch(3)
    assert db.session.scalar(select(func.count()).select_from(Booking)) == 3


def test_a_tests_own_reset_sequence_wins_over_the_scheduled_restart(db):
    # the db fixture only schedules the restart (done before the first value is drawn):
    # a reset_sequence() of the test's own, before any object, must not be undone by it
    CompanyFactory.reset_sequence(10)
    assert CompanyFactory().name == "Company 11"
    assert DriverFactory.build().name == "Driver 1"  # the others restarted all the same


def test_the_restart_reaches_sub_factories_of_any_factory():
    # no db fixture: schedule by hand, then draw through a plain factory's SubFactory
    import factory

    from myapp.testing.factories import schedule_sequence_reset

    class Holder(factory.DictFactory):
        company = factory.SubFactory(CompanyFactory)

    CompanyFactory.build()
    CompanyFactory.build()
    schedule_sequence_reset()
    assert Holder.build()["company"].name == "Company 1"  # restarted by the sub-factory's draw
    assert CompanyFactory.build().name == "Company 2"
