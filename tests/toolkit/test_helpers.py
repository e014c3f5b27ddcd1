"""The seed helpers: persisted_fixture, ensure_committed, nested_savepoint, rollback checks."""

from __future__ import annotations

import pytest
import transaction
from sqlalchemy import func, select

from myapp.db import NestedTransactionError, TransactionManaged, db_transaction
from myapp.models import Booking, Company, Driver
from myapp.services import dispatch as engine
from myapp.testing import (
    capture_original_values,
    ensure_committed,
    nested_savepoint,
    persisted_fixture,
    verify_rollback_restores_values,
)
from myapp.testing.factories import BookingFactory, CompanyFactory, DriverFactory


def count(db, model):
    return db.session.scalar(select(func.count()).select_from(model))


# persisted_fixture ----------------------------------------------------------


def test_persisted_fixture_commits_reloads_and_survives_a_rollback(db):
    company = persisted_fixture(db, CompanyFactory(), Company, name="ACME Transports")
    assert isinstance(company, Company) and company.name == "ACME Transports"
    db.session.rollback()  # committed: a rollback does not undo it
    db.session.expire_all()
    assert db.session.get(Company, company.id).name == "ACME Transports"


def test_persisted_fixture_checks_the_model_class(db):
    with pytest.raises(TypeError, match="expected a Driver, got Company"):
        persisted_fixture(db, CompanyFactory(), Driver)


def test_persisted_fixture_accepts_a_session(db):
    company = persisted_fixture(db.session, CompanyFactory(), Company)
    assert company.id is not None


# ensure_committed -----------------------------------------------------------


def test_ensure_committed_commits_before_and_after_the_block(db):
    company = CompanyFactory()  # flushed only
    with ensure_committed(db) as session:
        assert session is db.session
        session.rollback()  # what engine.run() does first: company survives
        assert count(db, Company) == 1
        DriverFactory(company=company)
    db.session.rollback()
    assert count(db, Driver) == 1  # committed at the end of the block


def test_ensure_committed_does_not_commit_when_the_block_fails(db):
    CompanyFactory()
    with pytest.raises(RuntimeError, match="boom"):
        with ensure_committed(db):
            DriverFactory()
            raise RuntimeError("boom")
    db.session.rollback()
    assert (count(db, Company), count(db, Driver)) == (1, 0)


def test_ensure_committed_is_refused_inside_a_unit_of_work(db):
    with db_transaction():
        with pytest.raises(RuntimeError, match="inside an open unit of work"):
            with ensure_committed(db):
                pass


def test_ensure_committed_then_engine_run_finds_the_company(db):
    company = CompanyFactory()
    DriverFactory(company=company)
    BookingFactory(company=company)
    with ensure_committed(db):
        result = engine.run(company_id=company.id)
    assert result.reason is None and len(result.assigned) == 1


# nested_savepoint -------------------------------------------------------------


def test_nested_savepoint_seed_example(db):
    obj1 = CompanyFactory()
    db.session.add(obj1)
    db.session.commit()

    with nested_savepoint(db):
        obj2 = CompanyFactory()
        db.session.add(obj2)
        db.session.commit()
        obj2_id = obj2.id
        assert db.session.get(Company, obj2_id) is not None

    assert obj1.id is not None
    assert db.session.get(Company, obj1.id) is not None
    assert db.session.get(Company, obj2_id) is None
    assert count(db, Company) == 1


def test_nested_savepoint_rolls_back_work_done_after_an_inner_rollback(db):
    with nested_savepoint(db):
        CompanyFactory()
        db.session.rollback()  # back to the savepoint...
        assert count(db, Company) == 0
        CompanyFactory()  # ...and this is still inside one
        db.session.flush()
        db.session.rollback()
        CompanyFactory()
        db.session.commit()
        assert count(db, Company) == 1
    assert count(db, Company) == 0


def test_nested_savepoint_keeps_work_from_before(db):
    CompanyFactory()  # flushed, not committed, before the savepoint
    with nested_savepoint(db):
        CompanyFactory()
        db.session.rollback()
    assert count(db, Company) == 1
    db.session.commit()
    assert count(db, Company) == 1


def test_units_of_work_nest_inside_nested_savepoint(db):
    with nested_savepoint(db):
        with db_transaction() as session:  # a savepoint, not a commit
            session.add(Company(name="inner"))
        assert count(db, Company) == 1
        with pytest.raises(ZeroDivisionError):
            with db_transaction() as session:
                session.add(Company(name="failed"))
                session.flush()
                raise ZeroDivisionError
        assert count(db, Company) == 1
    assert count(db, Company) == 0


def test_durable_work_is_refused_inside_nested_savepoint(db):
    company = persisted_fixture(db, CompanyFactory(), Company)
    with nested_savepoint(db):
        with pytest.raises(NestedTransactionError):
            with db_transaction(durable=True):
                pass
        with pytest.raises(NestedTransactionError, match="durable unit of work"):
            engine.run(company_id=company.id)
        with pytest.raises(RuntimeError, match="nested_savepoint"):
            with ensure_committed(db):
                pass


def test_nested_savepoints_nest(db):
    with nested_savepoint(db):
        CompanyFactory()
        with nested_savepoint(db):
            CompanyFactory()
            db.session.commit()
            assert count(db, Company) == 2
            db.session.rollback()
            assert count(db, Company) == 1
        assert count(db, Company) == 1
        db.session.rollback()  # the outer floor again
        assert count(db, Company) == 0
    # after the block, commit is a real (savepoint-release) commit again
    CompanyFactory()
    db.session.commit()
    db.session.rollback()
    assert count(db, Company) == 1


def test_nested_savepoint_refuses_the_managers_commit_and_abort(db):
    with nested_savepoint(db):
        CompanyFactory()
        with pytest.raises(TransactionManaged, match=r"transaction\.abort\(\) inside nested"):
            transaction.abort()
        with pytest.raises(TransactionManaged, match=r"transaction\.commit\(\) inside nested"):
            transaction.commit()
        assert db.session.scalar(select(func.count()).select_from(Company)) == 1
    assert db.session.scalar(select(func.count()).select_from(Company)) == 0


# capture_original_values / verify_rollback_restores_values -------------------


def test_capture_refuses_values_that_are_not_originals(db):
    booking = BookingFactory()
    with pytest.raises(ValueError, match="not in the database yet"):
        capture_original_values(Booking(pickup_address="x"), ["pickup_address"])
    booking.status = "cancelled"
    with pytest.raises(ValueError, match=r"Booking\.status has an unflushed change"):
        capture_original_values(booking, ["driver_id", "status"])


def test_capture_loads_expired_attributes_and_copies(db):
    booking = BookingFactory()
    db.session.commit()  # expires the object
    values = capture_original_values(booking, ["status", "pickup_time", "driver_id"])
    assert values == {"status": "pending", "pickup_time": booking.pickup_time, "driver_id": None}


def test_verify_lists_every_differing_field(db):
    driver = DriverFactory()
    booking = BookingFactory(company=driver.company)
    db.session.commit()
    original_values = capture_original_values(
        booking, ["driver_id", "status", "pickup_address", "dropoff_address"]
    )
    booking.driver_id = driver.id
    booking.status = "assigned"
    booking.pickup_address = "changed"
    db.session.commit()  # committed: a rollback cannot restore it

    db.session.rollback()
    with pytest.raises(AssertionError) as info:
        verify_rollback_restores_values(db.session, Booking, booking.id, original_values)
    message = str(info.value)
    assert message.startswith(
        f"the rollback did not restore Booking {booking.id!r} (3 field(s) differ):\n"
    )
    lines = message.splitlines()[1:]
    assert lines[0] == f"  driver_id: expected None, found {driver.id!r}"
    assert lines[1] == "  status: expected 'pending', found 'assigned'"
    assert (
        lines[2]
        == f"  pickup_address: expected {original_values['pickup_address']!r}, found 'changed'"
    )
    assert len(lines) == 3  # dropoff_address did not change: not listed


def test_verify_reads_the_database_not_the_identity_map(db):
    booking = BookingFactory()
    db.session.commit()
    original_values = capture_original_values(booking, ["status"])
    # change the row behind the ORM's back: only a fresh query sees it
    db.session.execute(
        Booking.__table__.update().where(Booking.id == booking.id).values(status="cancelled")
    )
    with pytest.raises(AssertionError, match="status: expected 'pending', found 'cancelled'"):
        verify_rollback_restores_values(db, Booking, booking.id, original_values)


def test_verify_reports_a_missing_row(db):
    booking = BookingFactory()
    original_values = capture_original_values(booking, ["status"])
    booking_id = booking.id
    db.session.rollback()  # never committed: the row is gone
    with pytest.raises(AssertionError, match=f"Booking {booking_id} no longer exists"):
        verify_rollback_restores_values(db.session, Booking, booking_id, original_values)
