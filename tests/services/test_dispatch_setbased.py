"""The dispatch engine's set-based implementation (myapp.services.dispatch).

The policy tests of tests/toolkit/test_dispatch_engine.py pin the observable
behaviour; these pin what the set-based rewrite must keep on top of them:

* the in-memory policy (a heap of ``(load, driver_id)``) gives exactly what the
  documented rule gives, on random loads, busy slots and shared pickup times;
* the caller's unit of work: its pending changes are seen (flushed first) and the
  booking objects it holds reflect the assignments after the Core ``UPDATE``;
* chunked writes give the same result as one statement;
* on PostgreSQL, a double booking that only the database can see (a concurrent,
  uncommitted move of another booking to the same pickup time) is refused by
  the unique constraint and the run is retried from scratch to a correct result;
* many dispatchers on many companies at once: every booking assigned once, no
  driver twice at one pickup time, drivers of the booking's company only.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from myapp.db import db_transaction
from myapp.models import Booking, Company, Driver
from myapp.services import dispatch as engine
from myapp.testing import persisted_fixture
from myapp.testing.factories import (
    BookingFactory,
    CommittedRows,
    CompanyFactory,
    DriverFactory,
    committed_rows,
)

T0 = datetime(2040, 3, 1, 8, 0, tzinfo=UTC)
NOW = T0 - timedelta(hours=1)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


# the policy, in memory ---------------------------------------------------------------


def reference_policy(
    due: list[tuple[int, datetime]], load: dict[int, int], busy: dict[datetime, set[int]]
) -> tuple[list[tuple[int, int]], list[tuple[int, str]]]:
    """docs/domain.md, word for word: least-loaded free driver, ties to the lowest id."""
    load = dict(load)
    busy = defaultdict(set, {t: set(d) for t, d in busy.items()})
    assigned, unassigned = [], []
    for booking_id, pickup in due:
        free = [d for d in sorted(load) if d not in busy[pickup]]
        if not free:
            unassigned.append((booking_id, engine.ALL_DRIVERS_BUSY))
            continue
        chosen = min(free, key=lambda d: (load[d], d))
        load[chosen] += 1
        busy[pickup].add(chosen)
        assigned.append((booking_id, chosen))
    return assigned, unassigned


@pytest.mark.parametrize("seed", range(40))
def test_the_in_memory_policy_is_the_documented_one(seed: int) -> None:
    rng = random.Random(seed)
    drivers = rng.sample(range(1, 60), rng.randint(1, 8))
    load = {d: rng.choice([0, 0, 1, 2, 5]) for d in drivers}
    times = sorted(at(15 * rng.randint(0, 12)) for _ in range(rng.randint(1, 40)))
    due = [(100 + i, t) for i, t in enumerate(times)]  # sorted by pickup time, then id
    busy: dict[datetime, set[int]] = defaultdict(set)
    for _ in range(rng.randint(0, 15)):
        busy[at(15 * rng.randint(0, 12))].add(rng.choice(drivers))

    result = engine.DispatchResult(1)
    engine._assign(due, dict(load), busy, result)

    assert (result.assigned, result.unassigned) == reference_policy(due, load, busy)


# the caller's unit of work -----------------------------------------------------------


@pytest.fixture
def company(db: Any) -> Company:
    return persisted_fixture(db, CompanyFactory(), Company)


def test_objects_held_by_the_caller_see_the_assignment(db: Any, company: Company) -> None:
    d1, d2 = (persisted_fixture(db, DriverFactory(company=company), Driver) for _ in range(2))
    first = BookingFactory(company=company, pickup_time=at(0))
    second = BookingFactory(company=company, pickup_time=at(30))
    db.session.commit()
    with db_transaction() as session:
        held = session.get(Booking, first.id)
        before = held.updated
        assert (held.status, held.driver_id) == ("pending", None)
        result = engine.assign_pending_bookings(session, company.id, now=NOW)
        assert result.assigned == [(first.id, d1.id), (second.id, d2.id)]
        # the object the caller holds reloads what the set-based UPDATE wrote
        assert (held.status, held.driver_id) == ("assigned", d1.id)
        assert held.updated >= before


def test_the_callers_pending_changes_are_part_of_the_state(db: Any, company: Company) -> None:
    driver = persisted_fixture(db, DriverFactory(company=company), Driver)
    db.session.commit()
    with db_transaction() as session:
        added = Booking(
            company_id=company.id,
            pickup_time=at(0),
            pickup_address="a",
            dropoff_address="b",
            status="pending",
        )
        session.add(added)  # not flushed: the engine flushes it first, as a query would
        result = engine.assign_pending_bookings(session, company.id, now=NOW)
        assert result.assigned == [(added.id, driver.id)]
        assert (added.status, added.driver_id) == ("assigned", driver.id)


def test_chunked_writes_give_the_same_result(
    db: Any, company: Company, monkeypatch: pytest.MonkeyPatch
) -> None:
    drivers = [persisted_fixture(db, DriverFactory(company=company), Driver) for _ in range(3)]
    bookings = [BookingFactory(company=company, pickup_time=at(i // 2)) for i in range(7)]
    db.session.commit()
    monkeypatch.setattr(engine, "WRITE_CHUNK", 2)

    result = engine.run(company.id, now=NOW)

    ids = [d.id for d in drivers]
    # two bookings per pickup time, three drivers: round robin by load, never twice at a time
    assert result.assigned == [(b.id, ids[i % 3]) for i, b in enumerate(bookings)]
    db.session.expire_all()
    rows = db.session.execute(
        select(Booking.id, Booking.driver_id, Booking.status).where(
            Booking.company_id == company.id
        )
    ).all()
    assert {(b, d) for b, d, s in rows if s == "assigned"} == set(result.assigned)


# PostgreSQL: the unique constraint behind the locks, and many dispatchers ------------


@pytest.fixture
def real(dbengine: Any, backend: str) -> Iterator[CommittedRows]:
    with committed_rows(dbengine, created=T0) as data:
        yield data


@pytest.mark.postgresql_only
def test_a_double_booking_only_the_database_sees_is_retried(
    real: CommittedRows, caplog: pytest.LogCaptureFixture
) -> None:
    company_id, (d1, d2), _ = real.company(2)
    (pending,) = real.bookings(company_id, [at(0)])
    # d1 drove a completed booking (it does not count in the load): d1 and d2 tie, d1 wins
    (done,) = real.bookings(company_id, [at(-600)], status="completed", driver_id=d1)
    holder = real.engine.connect()
    results: list[engine.DispatchResult] = []
    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            results.append(real.run(company_id, NOW))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=dispatcher)
    try:
        holder.begin()
        # another transaction moves d1's old booking to at(0), uncommitted; changing the
        # pickup time takes no lock on the driver, so only the unique index sees the clash
        holder.execute(
            text("UPDATE bookings SET pickup_time = :t WHERE id = :id"), {"t": at(0), "id": done}
        )
        with caplog.at_level(logging.WARNING, logger="myapp.db"):
            thread.start()
            # the engine picked d1 and its UPDATE waits on the uncommitted index entry
            waiting = real.lock_waiters("UPDATE bookings SET%unnest%")
            assert waiting == 1, "the dispatcher's UPDATE did not wait on the unique index"
            holder.commit()
            thread.join(timeout=60)
    finally:
        if holder.in_transaction():
            holder.rollback()
        holder.close()
        thread.join(timeout=60)
    assert not thread.is_alive() and errors == []
    # refused by the constraint, retried from scratch: d1 is now busy at at(0), d2 gets it
    assert results[0].assigned == [(pending, d2)]
    assert any("retrying" in r.getMessage() for r in caplog.records), caplog.text
    with real.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT driver_id, pickup_time FROM bookings WHERE company_id = :c"),
            {"c": company_id},
        ).all()
    assert sorted(rows) == sorted([(d1, at(0)), (d2, at(0))])


def test_many_dispatchers_on_many_companies(real: CommittedRows, backend: str) -> None:
    companies = []
    for _ in range(3):
        company_id, drivers, _ = real.company(4)
        # 60 bookings on 20 pickup times (3 per time), some slots taken already
        pickups = [at(15 * (i // 3)) for i in range(60)]
        booking_ids = real.bookings(company_id, pickups)
        real.bookings(company_id, [at(0), at(15)], status="cancelled", driver_id=drivers[0])
        companies.append((company_id, drivers, booking_ids))
    workers = 4 if backend == "postgresql" else 2
    barrier = threading.Barrier(workers)
    results: list[engine.DispatchResult] = []
    errors: list[BaseException] = []

    def dispatcher(k: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(len(companies)):  # every dispatcher runs every company
                results.append(real.run(companies[(i + k) % len(companies)][0], NOW))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(k,)) for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and errors == []

    claimed = [b for result in results for b, _ in result.assigned]
    assert len(claimed) == len(set(claimed)) == 3 * 60  # each booking by one dispatcher
    reported = {b: d for result in results for b, d in result.assigned}
    with real.engine.connect() as conn:
        for company_id, drivers, booking_ids in companies:
            rows = conn.execute(
                text(
                    "SELECT id, driver_id, pickup_time, status FROM bookings "
                    "WHERE company_id = :c AND driver_id IS NOT NULL"
                ),
                {"c": company_id},
            ).all()
            slots = [(d, t) for _, d, t, _ in rows]
            assert len(slots) == len(set(slots))  # never a driver twice at one pickup time
            assert {d for _, d, _, _ in rows} <= set(drivers)
            assigned = {b: d for b, d, _, s in rows if s == "assigned"}
            assert set(assigned) == set(booking_ids)
            assert all(reported[b] == d for b, d in assigned.items())
