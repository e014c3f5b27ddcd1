"""The dispatch engine (myapp.services.dispatch): policy, defensive rollback, durability, locks."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from pyramid.config import Configurator
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError

from myapp.db import NestedTransactionError, db_transaction
from myapp.models import Booking, Company
from myapp.services import dispatch as engine
from myapp.testing import persisted_fixture
from myapp.testing.factories import (
    BASE_PICKUP_TIME,
    BookingFactory,
    CompanyFactory,
    DriverFactory,
    committed_rows,
)
from myapp.testing.plugin import threaded_wsgi

T0 = BASE_PICKUP_TIME
NOW = T0 - timedelta(hours=1)


def at(minutes: int):
    return T0 + timedelta(minutes=minutes)


def assignments(db, company_id):
    db.session.expire_all()
    rows = db.session.execute(
        select(Booking.id, Booking.driver_id, Booking.status)
        .where(Booking.company_id == company_id)
        .order_by(Booking.id)
    )
    return [tuple(row) for row in rows]


# policy ----------------------------------------------------------------------


def test_earliest_pickup_first_to_the_least_loaded_driver(db, company):
    d1, d2, d3 = DriverFactory.create_batch(3, company=company)
    # d1 already carries two assigned bookings, d2 one, d3 none
    BookingFactory(driver=d1, pickup_time=at(-600))
    BookingFactory(driver=d1, pickup_time=at(-570))
    BookingFactory(driver=d2, pickup_time=at(-540))
    # created out of order: the engine sorts by pickup time
    late = BookingFactory(company=company, pickup_time=at(90))
    early = BookingFactory(company=company, pickup_time=at(0))
    middle = BookingFactory(company=company, pickup_time=at(30))
    last = BookingFactory(company=company, pickup_time=at(120))
    db.session.commit()

    result = engine.run(company_id=company.id, now=NOW)

    assert result.reason is None and result.unassigned == []
    # loads 2/1/0: early→d3 (0), middle→d2 (1; tie d2/d3 at 1 → lowest id), late→d3,
    # last→ d1/d2/d3 all at 2 → d1
    assert result.assigned == [
        (early.id, d3.id),
        (middle.id, d2.id),
        (late.id, d3.id),
        (last.id, d1.id),
    ]
    db.session.expire_all()
    assert db.session.get(Booking, early.id).status == "assigned"


def test_ties_go_to_the_lowest_driver_id(db, company):
    drivers = DriverFactory.create_batch(3, company=company)
    bookings = BookingFactory.create_batch(6, company=company)
    db.session.commit()
    result = engine.run(company_id=company.id, now=NOW)
    ids = [d.id for d in drivers]
    assert result.assigned == [(b.id, ids[i % 3]) for i, b in enumerate(bookings)]


def test_never_two_bookings_of_a_driver_at_the_same_pickup_time(db, company):
    d1, d2 = DriverFactory.create_batch(2, company=company)
    # d1 is taken at at(0) by a cancelled booking: the unique constraint still counts it
    BookingFactory(driver=d1, pickup_time=at(0), status="cancelled")
    same_time = BookingFactory.create_batch(3, company=company, pickup_time=at(0))
    db.session.commit()

    result = engine.run(company_id=company.id, now=NOW)

    assert result.assigned == [(same_time[0].id, d2.id)]
    assert result.unassigned == [
        (same_time[1].id, engine.ALL_DRIVERS_BUSY),
        (same_time[2].id, engine.ALL_DRIVERS_BUSY),
    ]
    pickups = db.session.execute(
        select(Booking.driver_id, Booking.pickup_time, func.count())
        .where(Booking.driver_id.is_not(None))
        .group_by(Booking.driver_id, Booking.pickup_time)
    ).all()
    assert all(n == 1 for _, _, n in pickups)


def test_only_the_company_active_drivers_and_its_pending_unassigned_bookings(db, company):
    other = CompanyFactory()
    DriverFactory(company=other)  # another company's driver: never used
    DriverFactory(company=company, active=False)  # inactive: never used
    active = DriverFactory(company=company)
    mine = BookingFactory(company=company, pickup_time=at(0))
    BookingFactory(company=other, pickup_time=at(30))  # another company's booking: untouched
    BookingFactory(company=company, pickup_time=at(60), status="cancelled")
    BookingFactory(company=company, pickup_time=at(90), status="completed")
    db.session.commit()

    result = engine.run(company_id=company.id, now=NOW)

    assert result.assigned == [(mine.id, active.id)] and result.unassigned == []


def test_pickups_already_passed_and_companies_without_drivers(db, company):
    gone = BookingFactory(company=company, pickup_time=at(0))
    upcoming = BookingFactory(company=company, pickup_time=at(60))
    db.session.commit()

    result = engine.run(company_id=company.id, now=at(30))

    assert result.assigned == []
    assert result.unassigned == [
        (gone.id, engine.PICKUP_TIME_PASSED),
        (upcoming.id, engine.NO_ACTIVE_DRIVER),
    ]
    assert assignments(db, company.id) == [
        (gone.id, None, "pending"),
        (upcoming.id, None, "pending"),
    ]


def test_a_second_run_has_nothing_left_to_do(db, company, driver):
    BookingFactory.create_batch(2, company=company)
    db.session.commit()
    assert len(engine.run(company_id=company.id, now=NOW).assigned) == 2
    again = engine.run(company_id=company.id, now=NOW)
    assert (again.assigned, again.unassigned, again.reason) == ([], [], None)


def test_default_now_and_naive_now(db, company, driver):
    BookingFactory(company=company)  # BASE_PICKUP_TIME is far in the future
    db.session.commit()
    with pytest.raises(ValueError, match="timezone-aware"):
        engine.run(company_id=company.id, now=NOW.replace(tzinfo=None))
    assert len(engine.run(company_id=company.id).assigned) == 1


def test_result_as_dict(db, company, driver):
    booking = BookingFactory(company=company)
    db.session.commit()
    result = engine.run(company_id=company.id, now=NOW)
    assert result.ok
    assert result.as_dict() == {
        "company_id": company.id,
        "assigned": [{"booking_id": booking.id, "driver_id": driver.id}],
        "unassigned": [],
        "reason": None,
    }


# company_not_found, durability, defensive rollback ------------------------------


def test_unknown_company_writes_nothing(db, company, driver):
    booking = BookingFactory(company=company)
    db.session.commit()
    before = assignments(db, company.id)

    result = engine.run(company_id=company.id + 1000, now=NOW)

    assert result.reason == engine.COMPANY_NOT_FOUND and not result.ok
    assert (result.assigned, result.unassigned) == ([], [])
    assert assignments(db, company.id) == before == [(booking.id, None, "pending")]


def test_uncommitted_company_is_not_found(db):
    # the seed's troubleshooting case: the fixture was flushed, never committed
    company = CompanyFactory()
    DriverFactory(company=company)
    BookingFactory(company=company)
    company_id = company.id
    result = engine.run(company_id=company_id, now=NOW)
    assert result.reason == "company_not_found"
    assert db.session.scalar(select(func.count()).select_from(Company)) == 0


def test_the_run_is_committed_and_survives_a_later_rollback(db, company, driver):
    booking = BookingFactory(company=company)
    db.session.commit()
    engine.run(company_id=company.id, now=NOW)
    db.session.rollback()  # nothing pending: the engine's commit stays
    assert assignments(db, company.id) == [(booking.id, driver.id, "assigned")]


def test_refused_inside_a_unit_of_work_before_touching_anything(db, company, driver):
    booking = BookingFactory(company=company)
    db.session.commit()
    with db_transaction() as session:
        booking.pickup_address = "changed in the unit of work"
        session.flush()
        with pytest.raises(NestedTransactionError, match="Nothing was rolled back or written"):
            engine.run(company_id=company.id, now=NOW)
        # the caller's unit of work was not rolled back: it still commits
    db.session.expire_all()
    reloaded = db.session.get(Booking, booking.id)
    assert (reloaded.pickup_address, reloaded.driver_id) == ("changed in the unit of work", None)


@pytest.mark.doomed
def test_refused_in_the_doomed_mode(db):
    company = CompanyFactory()
    with pytest.raises(NestedTransactionError, match="a doomed transaction"):
        engine.run(company_id=company.id, now=NOW)


def test_assign_pending_bookings_runs_in_the_callers_unit_of_work(db, company, driver):
    booking = BookingFactory(company=company)
    db.session.commit()
    with pytest.raises(RuntimeError, match="caller aborts"):
        with db_transaction() as session:
            result = engine.assign_pending_bookings(session, company.id, now=NOW)
            assert result.assigned == [(booking.id, driver.id)]
            raise RuntimeError("caller aborts")
    assert assignments(db, company.id) == [(booking.id, None, "pending")]  # rolled back with it
    with db_transaction() as session:
        engine.assign_pending_bookings(session, company.id, now=NOW)
    assert assignments(db, company.id) == [(booking.id, driver.id, "assigned")]


def test_refused_inside_a_request(db, database, request_thread, company, driver):
    import webtest

    booking = BookingFactory(company=company)
    db.session.commit()
    # plain values: the view runs on the request thread and must not touch the test's objects
    booking_id, company_id = booking.id, company.id

    def dispatch_view(request: Any) -> dict[str, Any]:
        request.dbsession.execute(
            Booking.__table__.update()
            .where(Booking.id == booking_id)
            .values(pickup_address="written by the request")
        )
        try:
            engine.run(company_id=company_id, now=NOW)
        except NestedTransactionError as exc:
            return {"refused": str(exc)}
        return {"refused": None}

    config = Configurator(settings={"myapp.database": database, "myapp.env": "testing"})
    config.include("myapp.db_wiring")
    config.add_route("dispatch", "/dispatch")
    config.add_view(dispatch_view, route_name="dispatch", renderer="json")
    app = webtest.TestApp(threaded_wsgi(config.make_wsgi_app(), request_thread))

    body = app.post("/dispatch").json
    assert "cannot run inside an open one (a request" in body["refused"]
    db.session.expire_all()
    reloaded = db.session.get(Booking, booking.id)
    # the request's own write was neither rolled back nor committed early: it committed
    # with the request; and the engine assigned nothing
    assert (reloaded.pickup_address, reloaded.driver_id) == ("written by the request", None)


def test_double_booking_errors_are_recognised(db, company, driver):
    BookingFactory(driver=driver, pickup_time=at(0))
    db.session.commit()
    with pytest.raises(IntegrityError) as info:
        BookingFactory(driver=driver, pickup_time=at(0))
    db.session.rollback()
    assert engine._is_double_booking(info.value)
    with pytest.raises(IntegrityError) as other:
        BookingFactory(company_id=company.id + 1000)  # a foreign key violation instead
    db.session.rollback()
    assert not engine._is_double_booking(other.value)


# real concurrency, on the run's database with real connections ------------------


@pytest.fixture
def real(dbengine):
    with committed_rows(dbengine, created=T0) as data:
        yield data


def test_concurrent_dispatchers_never_double_assign(real, backend):
    # 5 drivers, 24 bookings on 8 pickup times (3 per time), several dispatchers at once
    company_id, _, booking_ids = real.company(5, [at(30 * (i // 3)) for i in range(24)])
    workers = 3 if backend == "sqlite" else 4
    barrier = threading.Barrier(workers)
    results: list[engine.DispatchResult] = []
    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(real.run(company_id, NOW))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a dispatcher is stuck"
    assert errors == []

    claimed = [booking for result in results for booking, _ in result.assigned]
    assert sorted(claimed) == sorted(booking_ids)  # every booking assigned, by one dispatcher
    rows = real.rows(company_id)
    assert all(status == "assigned" for _, _, _, status in rows)
    assert {b: d for b, d, _, _ in rows} == {b: d for result in results for b, d in result.assigned}
    slots = [(driver, pickup) for _, driver, pickup, _ in rows]
    assert len(slots) == len(set(slots))  # no driver twice at the same pickup time


@pytest.mark.server_only
def test_bookings_locked_elsewhere_are_skipped(real, backend):
    company_id, _, (b1, b2, b3) = real.company(2, [at(0), at(30), at(60)])
    holder = real.engine.connect()
    try:
        holder.begin()
        holder.execute(text("SELECT id FROM bookings WHERE id = :id FOR UPDATE"), {"id": b2})
        first = real.run(company_id, NOW)  # does not wait for b2: skips it
        assert [b for b, _ in first.assigned] == [b1, b3]
        assert first.unassigned == []
    finally:
        holder.rollback()
        holder.close()
    second = real.run(company_id, NOW)
    assert [b for b, _ in second.assigned] == [b2]


@pytest.mark.server_only
def test_loads_are_read_after_the_driver_lock(real, backend):
    company_id, (d1, d2), (booking,) = real.company(2, [at(0)])
    holder = real.engine.connect()
    result: list[Any] = []
    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            result.append(real.run(company_id, NOW))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=dispatcher)
    try:
        holder.begin()
        # another transaction holds d1 (the least-loaded, lowest id) ...
        holder.execute(text("SELECT id FROM drivers WHERE id = :id FOR UPDATE"), {"id": d1})
        thread.start()
        # ... the engine waits for it (seen by the server, bounded wait) ...
        waiting = real.lock_waiters("%FROM drivers%FOR UPDATE%", give_up=lambda: bool(errors))
        assert waiting == 1, (
            f"the dispatcher did not wait for the driver lock: errors {errors!r}, result "
            f"{result!r}, alive {thread.is_alive()}, server {_server_sessions(real)}"
        )
        # ... while that transaction books d1 at the same pickup time and commits
        holder.execute(
            insert(Booking.__table__).values(
                company_id=company_id,
                pickup_time=at(0),
                pickup_address="x",
                dropoff_address="y",
                status="assigned",
                driver_id=d1,
                created=T0,
                updated=T0,
            )
        )
        holder.commit()
    finally:
        if holder.in_transaction():
            holder.rollback()
        holder.close()
        thread.join(timeout=60)
    assert not thread.is_alive()
    # the engine saw the committed booking after the lock: d2, no double booking, no retry needed
    assert result[0].assigned == [(booking, d2)]
    with real.engine.begin() as conn:  # the extra booking belongs to the company: cleaned up too
        assert conn.scalar(select(func.count()).where(Booking.company_id == company_id)) == 2


def _server_sessions(real: Any) -> Any:
    """What the server's sessions on this database do (a diagnostic for a failed wait)."""
    if real.engine.dialect.name not in ("mysql", "mariadb"):
        return None
    with real.engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT p.id, p.command, p.state, LEFT(p.info, 80), t.trx_state "
                "FROM information_schema.processlist p LEFT JOIN information_schema.innodb_trx t "
                "ON t.trx_mysql_thread_id = p.id WHERE p.db = DATABASE()"
            )
        ).all()


def test_company_fixture_is_persisted(db, company):
    # the conftest fixture is committed: the engine (after its rollback) finds it
    assert persisted_fixture  # imported for the docs' example
    assert engine.run(company_id=company.id, now=NOW).reason is None
