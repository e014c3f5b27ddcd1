"""``generate_invoices``: correctness, idempotency, resumability (in-process), flat memory.

On the plugin's ``db`` fixture: the generator's batch commits are savepoint
releases, so "committed" below means "released and kept by a later
rollback", exactly what a real commit guarantees.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from myapp.db import NestedTransactionError, current_session, current_transaction, db_transaction
from myapp.models import Booking, Invoice
from myapp.services.invoicing import (
    InvalidPeriod,
    InvoicingFailed,
    InvoicingSummary,
    generate_invoices,
    parse_period,
    tariff,
)
from myapp.testing.factories import CompanyFactory, InvoiceFactory

OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)


def add_bookings(db: Any, company_id: int, specs: list[tuple[datetime, str]]) -> list[int]:
    """Bookings written with one Core statement (fast); returns their ids in order."""
    rows = [
        {
            "company_id": company_id,
            "pickup_time": pickup,
            "pickup_address": "a",
            "dropoff_address": "b",
            "status": status,
        }
        for pickup, status in specs
    ]
    db.session.execute(insert(Booking), rows)
    ids = list(
        db.session.scalars(
            select(Booking.id).where(Booking.company_id == company_id).order_by(Booking.id)
        )
    )
    return ids[-len(rows) :]


def invoices(db: Any) -> dict[int, tuple[int, Decimal, str]]:
    """booking_id → (company_id, amount, period), read afresh."""
    db.session.expire_all()
    rows = db.session.execute(
        select(Invoice.booking_id, Invoice.company_id, Invoice.amount, Invoice.period)
    ).all()
    assert len(rows) == len({r.booking_id for r in rows}), "a booking was invoiced twice"
    return {r.booking_id: (r.company_id, r.amount, r.period) for r in rows}


def company_id(db: Any) -> int:
    company = CompanyFactory()
    db.session.flush()
    return company.id


# -- the tariff and the period --------------------------------------------------


@pytest.mark.parametrize(
    ("pickup", "amount"),
    [
        (datetime(2026, 10, 7, 12, 0, tzinfo=UTC), "25.00"),  # Wednesday, day
        (datetime(2026, 10, 7, 21, 59, tzinfo=UTC), "25.00"),
        (datetime(2026, 10, 7, 22, 0, tzinfo=UTC), "35.00"),  # night starts at 22:00
        (datetime(2026, 10, 8, 5, 59, tzinfo=UTC), "35.00"),
        (datetime(2026, 10, 8, 6, 0, tzinfo=UTC), "25.00"),  # and ends at 06:00
        (datetime(2026, 10, 10, 12, 0, tzinfo=UTC), "30.00"),  # Saturday
        (datetime(2026, 10, 11, 2, 0, tzinfo=UTC), "40.00"),  # Sunday night
        # 00:30 in Paris (UTC+2) on Saturday is 22:30 UTC on Friday: night, not weekend
        (datetime(2026, 10, 3, 0, 30, tzinfo=timezone(timedelta(hours=2))), "35.00"),
    ],
)
def test_tariff(pickup: datetime, amount: str) -> None:
    assert tariff(pickup) == Decimal(amount)


def test_tariff_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive"):
        tariff(datetime(2026, 10, 7, 12, 0))


def test_parse_period() -> None:
    october = parse_period("2026-10")
    assert (october.name, october.start, october.end) == ("2026-10", OCT, NOV)
    december = parse_period("2026-12")
    assert (december.start, december.end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    "bad", ["2026-13", "2026-00", "2026-1", "26-10", "2026/10", "", " 2026-10"]
)
def test_bad_periods_are_refused_before_any_database_work(db: Any, bad: str) -> None:
    with pytest.raises(InvalidPeriod, match="expected YYYY-MM"):
        generate_invoices(bad)
    assert current_transaction() is None


# -- correctness -------------------------------------------------------------------


def test_one_invoice_per_completed_booking_of_the_period(db: Any) -> None:
    acme, other = company_id(db), company_id(db)
    paris = timezone(timedelta(hours=2))
    inside = add_bookings(
        db,
        acme,
        [
            (OCT, "completed"),  # the first instant of the month
            (datetime(2026, 10, 10, 23, 0, tzinfo=UTC), "completed"),  # Saturday night: 40.00
            (NOV - timedelta(microseconds=1), "completed"),  # the last instant
            (datetime(2026, 11, 1, 0, 30, tzinfo=paris), "completed"),  # 22:30 UTC on 31 Oct
        ],
    )
    inside += add_bookings(db, other, [(datetime(2026, 10, 15, 9, 0, tzinfo=UTC), "completed")])
    outside = add_bookings(
        db,
        acme,
        [
            (NOV, "completed"),  # next month
            (OCT - timedelta(microseconds=1), "completed"),  # previous month
            (datetime(2026, 10, 1, 1, 0, tzinfo=paris), "completed"),  # 23:00 UTC on 30 Sep
            (datetime(2026, 10, 5, 9, 0, tzinfo=UTC), "pending"),
            (datetime(2026, 10, 5, 10, 0, tzinfo=UTC), "assigned"),
            (datetime(2026, 10, 5, 11, 0, tzinfo=UTC), "cancelled"),
        ],
    )
    db.session.commit()

    summary = generate_invoices("2026-10", batch_size=2)

    written = invoices(db)
    assert set(written) == set(inside)
    assert not set(written) & set(outside)
    pickups = {b: p for b, p in db.session.execute(select(Booking.id, Booking.pickup_time))}
    owners = {b: c for b, c in db.session.execute(select(Booking.id, Booking.company_id))}
    for booking_id, (owner, amount, period) in written.items():
        assert owner == owners[booking_id]
        assert amount == tariff(pickups[booking_id])
        assert period == "2026-10"
    assert written[inside[1]][1] == Decimal("40.00")
    total = sum((amount for _, amount, _ in written.values()), Decimal("0"))
    assert summary == InvoicingSummary(
        period="2026-10",
        expected=5,
        considered=5,
        created=5,
        already_invoiced=0,
        conflicts=0,
        batches=3,  # 2 + 2 + 1
        total_amount=total,
        done=True,
    )


def test_already_invoiced_bookings_are_skipped_and_left_alone(db: Any) -> None:
    old = InvoiceFactory(
        booking__pickup_time=datetime(2026, 10, 20, 8, 0, tzinfo=UTC), amount=Decimal("99.00")
    )
    fresh = add_bookings(
        db, old.company_id, [(datetime(2026, 10, 21, 8, 0, tzinfo=UTC), "completed")]
    )
    db.session.commit()
    old_id, old_booking = old.id, old.booking_id

    summary = generate_invoices("2026-10")

    written = invoices(db)
    assert set(written) == {old_booking, *fresh}
    assert written[old_booking][1] == Decimal("99.00")  # untouched
    assert db.session.get(Invoice, old_id) is not None
    assert (summary.created, summary.already_invoiced, summary.skipped, summary.considered) == (
        1,
        1,
        1,
        2,
    )


def test_a_second_run_creates_nothing(db: Any) -> None:
    cid = company_id(db)
    add_bookings(db, cid, [(OCT + timedelta(hours=h), "completed") for h in range(7)])
    db.session.commit()
    first = generate_invoices("2026-10", batch_size=3)
    before = invoices(db)
    ids_before = set(db.session.scalars(select(Invoice.id)))

    second = generate_invoices("2026-10", batch_size=3)

    assert (first.created, first.batches) == (7, 3)
    assert (second.created, second.already_invoiced, second.batches, second.expected) == (
        0,
        7,
        0,
        0,
    )
    assert second.total_amount == Decimal("0.00")
    assert invoices(db) == before
    assert set(db.session.scalars(select(Invoice.id))) == ids_before


def test_an_empty_period(db: Any) -> None:
    summary = generate_invoices("2031-02")
    assert (summary.considered, summary.created, summary.batches, summary.done) == (0, 0, 0, True)


# -- resumability in-process ---------------------------------------------------------


def test_a_failure_after_two_batches_keeps_them_and_a_rerun_finishes(db: Any) -> None:
    cid = company_id(db)
    booking_ids = add_bookings(
        db, cid, [(OCT + timedelta(hours=5 * n), "completed") for n in range(23)]
    )
    db.session.commit()
    seen: list[InvoicingSummary] = []

    def crash_on_batch_two(summary: InvoicingSummary) -> None:
        seen.append(summary)
        if summary.batches == 2:
            raise RuntimeError("injected crash after batch 2")

    with pytest.raises(InvoicingFailed) as info:
        generate_invoices("2026-10", batch_size=5, progress=crash_on_batch_two)

    failure = info.value
    assert current_transaction() is None
    assert (failure.batches, failure.rows) == (2, 10)
    assert (failure.summary.batches, failure.summary.created) == (2, 10)
    message = str(failure)
    assert "failed after committing 2 batch(es) (10 invoice(s)" in message
    assert "run it again to finish" in message
    assert "injected crash after batch 2" in message
    assert [s.created for s in seen] == [5, 10]
    db.session.rollback()  # whatever a crash left: the committed batches stay
    assert set(invoices(db)) == set(booking_ids[:10])  # the lowest ids: keyset order

    rerun = generate_invoices("2026-10", batch_size=5)

    assert (rerun.already_invoiced, rerun.created, rerun.batches) == (10, 13, 3)
    assert set(invoices(db)) == set(booking_ids)


def install_failing_trigger(db: Any, booking_id: int) -> None:
    """A real database error when the invoice of ``booking_id`` is inserted."""
    if db.connection.dialect.name == "postgresql":
        db.session.execute(
            text(
                "CREATE FUNCTION refuse_invoice() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'invoice refused by the test trigger'; END $$"
            )
        )
        db.session.execute(
            text(
                "CREATE TRIGGER refuse_invoice BEFORE INSERT ON invoices FOR EACH ROW "
                f"WHEN (NEW.booking_id = {booking_id}) EXECUTE FUNCTION refuse_invoice()"
            )
        )
    else:
        db.session.execute(
            text(
                "CREATE TRIGGER refuse_invoice BEFORE INSERT ON invoices "
                f"WHEN NEW.booking_id = {booking_id} "
                "BEGIN SELECT RAISE(ABORT, 'invoice refused by the test trigger'); END"
            )
        )
    db.session.commit()


def drop_failing_trigger(db: Any) -> None:
    if db.connection.dialect.name == "postgresql":
        db.session.execute(text("DROP TRIGGER refuse_invoice ON invoices"))
    else:
        db.session.execute(text("DROP TRIGGER refuse_invoice"))
    db.session.commit()


@pytest.mark.not_mysql(
    reason="its trigger is created inside the test's transaction, and MySQL/MariaDB DDL commits "
    "it (the db fixture's isolation needs transactional DDL)"
)
def test_a_database_error_rolls_back_only_the_batch_in_progress(db: Any) -> None:
    cid = company_id(db)
    booking_ids = add_bookings(
        db, cid, [(OCT + timedelta(hours=3 * n), "completed") for n in range(15)]
    )
    db.session.commit()
    install_failing_trigger(db, booking_ids[11])  # in the third batch of 5

    with pytest.raises(InvoicingFailed) as info:
        generate_invoices("2026-10", batch_size=5)

    assert (info.value.batches, info.value.rows, info.value.rolled_back_rows) == (2, 10, 5)
    assert "invoice refused by the test trigger" in str(info.value)
    assert current_transaction() is None
    assert set(invoices(db)) == set(booking_ids[:10])

    drop_failing_trigger(db)
    rerun = generate_invoices("2026-10", batch_size=5)
    assert (rerun.already_invoiced, rerun.created) == (10, 5)
    assert set(invoices(db)) == set(booking_ids)


# -- contract and memory -------------------------------------------------------------


def test_refused_inside_a_unit_of_work_before_writing(db: Any) -> None:
    cid = company_id(db)
    add_bookings(db, cid, [(OCT, "completed")])
    db.session.commit()
    with db_transaction():
        with pytest.raises(NestedTransactionError, match="cannot run inside another transaction"):
            generate_invoices("2026-10")
    assert invoices(db) == {}


def test_memory_stays_flat_nothing_stays_in_the_session(db: Any) -> None:
    cid = company_id(db)
    add_bookings(db, cid, [(OCT + timedelta(minutes=15 * n), "completed") for n in range(600)])
    db.session.commit()
    db.session.expunge_all()
    held: list[int] = []

    def probe(summary: InvoicingSummary) -> None:
        session = current_session()
        held.append(len(session.identity_map) + len(session.new))

    summary = generate_invoices("2026-10", batch_size=100, progress=probe)

    assert summary.created == 600 and summary.batches == 6
    assert held == [0] * 7  # six batches and the final call: no ORM object is ever kept
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 600


def test_invalid_batch_size(db: Any) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        generate_invoices("2026-10", batch_size=0)
