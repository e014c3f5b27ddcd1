"""Concurrent requests on PostgreSQL, with real commits on real parallel connections.

These tests do not use the ``db`` fixture's single connection: the application
gets its own :class:`~myapp.db.Database` on the run's engine, requests run on
parallel threads (each with its own thread-local transaction manager and pooled
connection), and the test deletes what it created.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import webtest
from sqlalchemy import delete, func, select, text

from myapp import main
from myapp.db import Database, db_transaction
from myapp.models import Booking, Company, Driver, Invoice
from myapp.models.dispatch import DispatchRun
from myapp.services.tokens import new_token_and_hash
from myapp.testing.helpers import lock_waiters

pytestmark = pytest.mark.postgresql_only

T0 = datetime(2042, 2, 2, 8, 0, tzinfo=UTC)


class RealApp:
    """The application on a real engine, and a scope to set up and inspect data."""

    def __init__(self, engine: Any, app_settings: dict[str, Any]) -> None:
        self.database = Database(engine)
        settings = {**app_settings, "myapp.database": self.database}
        settings["myapp.session_secret"] = "concurrency-tests-session-secret-0123456789"
        self.app = main({}, **settings)
        self.company_ids: list[int] = []

    def company(self, drivers: int) -> tuple[int, str, list[int]]:
        token, token_hash = new_token_and_hash()
        with self.database.scope(), db_transaction() as session:
            company = Company(name="Concurrent Cabs", api_token_hash=token_hash)
            session.add(company)
            session.flush()
            people = [
                Driver(company_id=company.id, name=f"D{i}", active=True) for i in range(drivers)
            ]
            session.add_all(people)
            session.flush()
            ids = (company.id, [d.id for d in people])
        self.company_ids.append(ids[0])
        return ids[0], token, ids[1]

    def scalar(self, stmt: Any) -> Any:
        with self.database.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def client(self) -> webtest.TestApp:
        return webtest.TestApp(self.app, extra_environ={"HTTP_HOST": "example.com"})

    def cleanup(self) -> None:
        ids = self.company_ids
        with self.database.engine.begin() as conn:
            for model in (DispatchRun, Invoice, Booking, Driver):
                conn.execute(delete(model).where(model.company_id.in_(ids)))
            conn.execute(delete(Company).where(Company.id.in_(ids)))


@pytest.fixture
def real(backend: str, dbengine: Any, app_settings: dict[str, Any]) -> Iterator[RealApp]:
    real_app = RealApp(dbengine, app_settings)
    try:
        yield real_app
        assert dbengine.pool.checkedout() == 0, "a connection is still checked out"
    finally:
        real_app.cleanup()


def test_concurrent_dispatch_requests_assign_each_booking_once(real: RealApp) -> None:
    company_id, token, _ = real.company(drivers=3)
    with real.database.scope(), db_transaction() as session:
        # 12 pickup times, 3 bookings each: exactly enough drivers for every one of them
        session.add_all(
            Booking(
                company_id=company_id,
                pickup_time=T0 + timedelta(minutes=30 * slot),
                pickup_address=f"{slot}-{n} rue du Départ",
                dropoff_address="Gare",
                status="pending",
            )
            for slot in range(12)
            for n in range(3)
        )
    workers = 4
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers

    def dispatch(i: int) -> None:
        client = real.client()
        barrier.wait(timeout=30)
        results[i] = client.post(
            f"/api/companies/{company_id}/dispatch",
            headers={"Authorization": f"Bearer {token}"},
            expect_errors=True,
        )

    threads = [threading.Thread(target=dispatch, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert [r.status_int for r in results] == [200] * workers, [r.body for r in results]

    assigned = [a["booking_id"] for r in results for a in r.json["assigned"]]
    assert len(assigned) == len(set(assigned)) == 36, "a booking was assigned twice, or missed"
    assert (
        real.scalar(
            select(func.count())
            .select_from(Booking)
            .where(Booking.company_id == company_id, Booking.status == "assigned")
        )
        == 36
    )
    per_slot = real.scalar(
        text(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM bookings WHERE company_id = :c "
            "GROUP BY driver_id, pickup_time) AS slots"
        ).bindparams(c=company_id)
    )
    assert per_slot == 1, "a driver was double-booked"
    assert (
        real.scalar(
            select(func.count())
            .select_from(DispatchRun)
            .where(DispatchRun.company_id == company_id)
        )
        == workers
    )


def test_a_double_booking_race_is_a_409_that_writes_nothing(real: RealApp) -> None:
    """Request B passes the friendly pre-check while A's booking of the same slot is uncommitted;
    B's INSERT then waits on the unique index, and fails when A commits: 409, nothing written."""
    company_id, token, (driver_id,) = real.company(drivers=1)
    when = T0 + timedelta(days=1)
    holder = real.database.engine.connect()
    outcome: dict[str, Any] = {}
    try:
        tx = holder.begin()
        holder.execute(
            Booking.__table__.insert().values(
                company_id=company_id,
                pickup_time=when,
                pickup_address="A",
                dropoff_address="B",
                status="assigned",
                driver_id=driver_id,
                created=T0,
                updated=T0,
            )
        )

        def book() -> None:
            outcome["response"] = real.client().post_json(
                f"/api/companies/{company_id}/bookings",
                {
                    "pickup_time": when.isoformat(),
                    "pickup_address": "C",
                    "dropoff_address": "D",
                    "driver_id": driver_id,
                },
                headers={"Authorization": f"Bearer {token}"},
                expect_errors=True,
            )

        thread = threading.Thread(target=book)
        thread.start()
        waiting = lock_waiters(  # until B waits on A's row lock
            real.database.engine,
            "INSERT INTO bookings%",
            timeout=60,
            give_up=lambda: not thread.is_alive(),
        )
        assert waiting == 1, "request B never waited on A's uncommitted booking"
        tx.commit()
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        holder.close()
    response = outcome["response"]
    assert response.status_int == 409, response.body
    assert response.json["field"] == "driver_id"
    assert (
        real.scalar(
            select(func.count()).select_from(Booking).where(Booking.company_id == company_id)
        )
        == 1
    )
