"""``generate_demo_data``: around now, deterministic for a seed, valid data, batched; the reset."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from myapp.db import BatchProgress, NestedTransactionError, current_session, db_transaction
from myapp.models import Booking, Company, Driver
from myapp.services.demo_data import SLOT, delete_demo_data, generate_demo_data
from myapp.services.tokens import hash_token

NOW = datetime(2026, 12, 1, 9, 37, tzinfo=UTC)


def snapshot(db: Any, company_ids: list[int]) -> list[Any]:
    """The data of these companies with ids replaced by positions (comparable across runs)."""
    db.session.expire_all()
    out: list[Any] = []
    for company_id in company_ids:
        company = db.session.get(Company, company_id)
        drivers = list(
            db.session.scalars(
                select(Driver).where(Driver.company_id == company_id).order_by(Driver.id)
            )
        )
        position = {driver.id: n for n, driver in enumerate(drivers)}
        bookings = db.session.scalars(
            select(Booking).where(Booking.company_id == company_id).order_by(Booking.id)
        )
        out.append(
            (
                company.name,
                [(d.name, d.active) for d in drivers],
                [
                    (
                        b.pickup_time,
                        b.pickup_address,
                        b.dropoff_address,
                        b.status,
                        None if b.driver_id is None else position[b.driver_id],
                    )
                    for b in bookings
                ],
            )
        )
    return out


def ids(summary: Any) -> list[int]:
    return [company.id for company in summary.companies]


def test_the_same_seed_gives_the_same_data(db: Any) -> None:
    sizes = {"companies": 2, "drivers": 4, "bookings": 60, "now": NOW}
    first = generate_demo_data(seed=7, **sizes)
    second = generate_demo_data(seed=7, **sizes)
    other = generate_demo_data(seed=8, **sizes)

    assert set(ids(first)).isdisjoint(ids(second))  # it adds rows, never reuses them
    assert snapshot(db, ids(first)) == snapshot(db, ids(second))
    assert snapshot(db, ids(first)) != snapshot(db, ids(other))
    assert first.statuses == second.statuses
    # the tokens are the one random part, on purpose
    tokens = [c.token for s in (first, second, other) for c in s.companies]
    assert all(tokens) and len(set(tokens)) == len(tokens)


def test_sizes_statuses_and_valid_bookings_around_now(db: Any) -> None:
    summary = generate_demo_data(
        seed=3, companies=3, drivers=4, bookings=80, now=NOW, days_back=14, days_ahead=5
    )

    assert (len(summary.companies), summary.drivers, summary.bookings) == (3, 12, 240)
    assert sum(summary.statuses.values()) == 240
    assert set(summary.statuses) == {"completed", "pending", "assigned", "cancelled"}
    assert summary.statuses["completed"] > summary.statuses["cancelled"]
    assert summary.start == datetime(2026, 11, 17, 9, 45, tzinfo=UTC)  # 14 days before 09:45
    assert summary.end == datetime(2026, 12, 6, 9, 45, tzinfo=UTC)
    for company in summary.companies:
        stored = db.session.get(Company, company.id)
        assert stored.name == company.name
        assert stored.api_token_hash == hash_token(company.token)
        drivers = {
            d.id: d
            for d in db.session.scalars(select(Driver).where(Driver.company_id == company.id))
        }
        assert len(drivers) == 4
        bookings = list(db.session.scalars(select(Booking).where(Booking.company_id == company.id)))
        assert len(bookings) == 80
        for booking in bookings:
            assert summary.start <= booking.pickup_time < summary.end
            assert (booking.pickup_time - summary.start) % SLOT == timedelta(0)
            # the history is done; what is to come can still be dispatched
            if booking.pickup_time < NOW:
                assert booking.status in ("completed", "cancelled")
            else:
                assert booking.status in ("pending", "assigned", "cancelled")
            if booking.status in ("completed", "assigned"):
                assert booking.driver_id in drivers
                assert drivers[booking.driver_id].active
            else:
                assert booking.driver_id is None
        slots = [(b.driver_id, b.pickup_time) for b in bookings if b.driver_id is not None]
        assert len(slots) == len(set(slots))  # never a driver twice at the same time
    counted = Counter(
        dict(
            db.session.execute(select(Booking.status, func.count()).group_by(Booking.status)).all()
        )
    )
    assert counted == summary.statuses


def test_without_drivers_nothing_is_assigned_or_completed(db: Any) -> None:
    summary = generate_demo_data(seed=1, companies=1, drivers=0, bookings=30, with_tokens=False)
    assert set(summary.statuses) <= {"pending", "cancelled"}
    assert summary.companies[0].token is None
    assert db.session.get(Company, summary.companies[0].id).api_token_hash is None


def test_written_in_batches_with_nothing_kept_in_the_session(db: Any) -> None:
    seen: list[tuple[int, int, int]] = []
    history: list[list[int]] = []

    def probe(state: BatchProgress) -> None:
        session = current_session()
        seen.append((state.batches, state.rows, len(session.identity_map)))
        history.append(state.history)

    summary = generate_demo_data(
        seed=5, companies=2, drivers=2, bookings=120, now=NOW, batch_size=50, progress=probe
    )

    # a batch commits once 50 rows are pending: company 1 and its 2 drivers ride with its
    # first 50 bookings, its last 20 with company 2 and its first 50, ...
    assert history[-1] == [53, 50, 73, 50, 20]
    assert summary.batches == seen[-1][0] == 5
    assert seen[-1][1] == 2 * (1 + 2 + 120)  # every row counted once
    assert all(held == 0 for _, _, held in seen)
    assert db.session.scalar(select(func.count()).select_from(Booking)) == 240


def test_bad_sizes_and_windows(db: Any) -> None:
    with pytest.raises(ValueError, match="bookings must be zero or more"):
        generate_demo_data(bookings=-1)
    with pytest.raises(ValueError, match="days_back must be zero or more"):
        generate_demo_data(days_back=-1)
    with pytest.raises(ValueError, match="at least 1"):
        generate_demo_data(days_back=0, days_ahead=0)


def test_the_default_now_is_the_current_time(db: Any) -> None:
    """Without ``now`` the upcoming bookings are after the current time: dispatchable today."""
    before = datetime.now(UTC)
    summary = generate_demo_data(seed=2, companies=1, drivers=3, bookings=60, with_tokens=False)
    assert before <= summary.now <= datetime.now(UTC)
    pending = db.session.scalars(select(Booking.pickup_time).where(Booking.status == "pending"))
    times = list(pending)
    assert times and all(t > before for t in times)


def test_delete_demo_data_empties_the_domain_in_one_unit_of_work(db: Any) -> None:
    generate_demo_data(seed=4, companies=2, drivers=2, bookings=10, now=NOW)
    deleted = delete_demo_data()
    assert deleted["companies"] == 2 and deleted["drivers"] == 4 and deleted["bookings"] == 20
    for model in (Company, Driver, Booking):
        assert db.session.scalar(select(func.count()).select_from(model)) == 0


def test_refused_inside_a_unit_of_work(db: Any) -> None:
    with db_transaction():
        with pytest.raises(NestedTransactionError):
            generate_demo_data(companies=1)
    assert db.session.scalar(select(func.count()).select_from(Company)) == 0
