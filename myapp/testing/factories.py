"""factory_boy factories for the dispatch domain, wired to the current test session.

Every factory asks :func:`myapp.db.current_session` for its session when it
creates an object, so inside a test it writes through ``db.session`` (the
``db`` fixture's scope), and persists with a **flush**: the object gets its
id, and the test decides when to commit (``db.session.commit()``,
``persisted_fixture``, ``ensure_committed``).

Values are deterministic: the ``db`` fixture restarts the sequences for
every test, so the first company of every test is "Company 1", whatever
order the tests run in (the fixture schedules the restart; it happens just
before the test's first sequence value is drawn, or its first
``reset_sequence()``, so a test that builds no object pays nothing).
Primary keys come from the database: on PostgreSQL its sequences are not
rolled back, so do not hard-code ids.
Pickup times start at :data:`BASE_PICKUP_TIME`, far in the future so that
``engine.run()`` with its default ``now`` treats them as upcoming, and
advance 30 minutes per booking.

Related objects: pass objects (``company=company``, ``driver=driver``) or
ids (``company_id=...``); a booking given a driver belongs to the driver's
company and is ``assigned`` unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import factory
from factory.alchemy import SQLAlchemyModelFactory, SQLAlchemyOptions
from sqlalchemy import insert

from myapp.db import current_session
from myapp.models import Booking, Company, Driver, Invoice
from myapp.testing.committed import CommittedRows as _CommittedRows

#: the first booking's pickup time; each further booking is 30 minutes later
BASE_PICKUP_TIME = datetime(2040, 1, 2, 8, 0, tzinfo=UTC)

# relationship/foreign-key arguments left at None are not passed to the model:
# Booking(driver=None, driver_id=5) would be ambiguous
_DROP_IF_NONE = ("company", "company_id", "driver")


#: set by :func:`schedule_sequence_reset`, cleared by :func:`reset_sequences`
_reset_pending = False


class _DispatchOptions(SQLAlchemyOptions):
    """Applies a scheduled :func:`reset_sequences` before any sequence is drawn or reset.

    Every way a factory gets a sequence value goes through ``next_sequence``
    (``create``/``build``/batches, and sub-factories of any factory), so a
    scheduled restart can never be skipped.
    """

    def next_sequence(self) -> int:
        if _reset_pending:
            reset_sequences()
        return super().next_sequence()

    def reset_sequence(self, value: int | None = None, force: bool = False) -> None:
        if _reset_pending:  # the test's own reset_sequence(...) wins over the scheduled one
            reset_sequences()
        super().reset_sequence(value, force=force)


class _DispatchFactory(SQLAlchemyModelFactory):
    _options_class = _DispatchOptions

    class Meta:
        abstract = True
        sqlalchemy_session_factory = current_session
        sqlalchemy_session_persistence = "flush"

    @classmethod
    def _adjust_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in kwargs.items() if not (v is None and k in _DROP_IF_NONE)}


class CompanyFactory(_DispatchFactory):
    class Meta:
        model = Company

    name = factory.Sequence(lambda n: f"Company {n + 1}")


class DriverFactory(_DispatchFactory):
    class Meta:
        model = Driver

    company_id = None
    company = factory.Maybe("company_id", None, factory.SubFactory(CompanyFactory))
    name = factory.Sequence(lambda n: f"Driver {n + 1}")
    active = True


class BookingFactory(_DispatchFactory):
    class Meta:
        model = Booking

    driver = None
    driver_id = None
    company_id = None
    company = factory.Maybe(
        "company_id",
        None,
        factory.Maybe(
            "driver", factory.SelfAttribute("driver.company"), factory.SubFactory(CompanyFactory)
        ),
    )
    pickup_time = factory.Sequence(lambda n: BASE_PICKUP_TIME + timedelta(minutes=30 * n))
    pickup_address = factory.Sequence(lambda n: f"{n + 1} rue du Départ, Lausanne")
    dropoff_address = factory.Sequence(lambda n: f"{n + 1} avenue de l'Arrivée, Genève")
    status = factory.Maybe(
        factory.LazyAttribute(lambda o: o.driver is not None or o.driver_id is not None),
        "assigned",
        "pending",
    )


class InvoiceFactory(_DispatchFactory):
    """An invoice for a completed booking (with a driver) of the booking's company and month."""

    class Meta:
        model = Invoice

    booking = factory.SubFactory(
        BookingFactory, status="completed", driver=factory.SubFactory(DriverFactory)
    )
    company_id = factory.LazyAttribute(lambda o: o.booking.company_id)
    amount = factory.Sequence(lambda n: Decimal("40.00") + n)
    period = factory.LazyAttribute(lambda o: o.booking.pickup_time.strftime("%Y-%m"))


FACTORIES: tuple[type[SQLAlchemyModelFactory], ...] = (
    CompanyFactory,
    DriverFactory,
    BookingFactory,
    InvoiceFactory,
)


def reset_sequences() -> None:
    """Restart every factory's sequence now (the next company is "Company 1")."""
    global _reset_pending
    _reset_pending = False
    for factory_class in FACTORIES:
        factory_class.reset_sequence()


def schedule_sequence_reset() -> None:
    """Restart every factory's sequence before the next value is drawn (the ``db`` fixture's way).

    O(1): the restart itself happens in the first factory call that needs a
    sequence (or resets one), so tests that build no object do not pay it.
    """
    global _reset_pending
    _reset_pending = True


__all__ = [
    "BASE_PICKUP_TIME",
    "BookingFactory",
    "CompanyFactory",
    "DriverFactory",
    "InvoiceFactory",
    "reset_sequences",
    "schedule_sequence_reset",
]


#: a valid JSON body for every API operation that needs one, by (route name, method);
#: tests that walk the route table use it (a new write operation must be added here)
VALID_API_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("api.companies", "POST"): {"name": "Initech"},
    ("api.company", "PATCH"): {"name": "Acme Cabs SA"},
    ("api.drivers", "POST"): {"name": "Ada"},
    ("api.driver", "PATCH"): {"name": "Ada L."},
    ("api.bookings", "POST"): {
        "pickup_time": "2041-05-04T09:30:00+02:00",
        "pickup_address": "Gare de Lausanne",
        "dropoff_address": "EPFL",
    },
    ("api.booking", "PATCH"): {"pickup_address": "Gare de Renens"},
    ("api.booking_status", "POST"): {"status": "cancelled"},
}


def insert_company_rows(
    conn: Any, name: str = "c", drivers: int = 0, created: datetime = BASE_PICKUP_TIME
) -> tuple[int, list[int]]:
    """Insert a company and ``drivers`` active drivers with Core on ``conn``; return their ids.

    For tests that need rows committed outside the ``db`` fixture (real
    concurrent dispatchers, subprocesses): the caller's ``conn`` transaction
    (``engine.begin()``) commits them, and the caller deletes them.
    """
    companies, drivers_table = Company.__table__, Driver.__table__
    company_id = conn.scalar(
        insert(companies)
        .values(name=name, created=created, updated=created)
        .returning(companies.c.id)
    )
    driver_ids = [
        conn.scalar(
            insert(drivers_table)
            .values(
                company_id=company_id, name=f"d{i}", active=True, created=created, updated=created
            )
            .returning(drivers_table.c.id)
        )
        for i in range(drivers)
    ]
    return company_id, driver_ids


def insert_booking_rows(
    conn: Any,
    company_id: int,
    pickups: list[datetime],
    status: str = "pending",
    driver_id: int | None = None,
    created: datetime = BASE_PICKUP_TIME,
) -> list[int]:
    """Insert one booking per pickup time with Core on ``conn``; return their ids, in order."""
    bookings = Booking.__table__
    return [
        conn.scalar(
            insert(bookings)
            .values(
                company_id=company_id,
                pickup_time=pickup,
                pickup_address="a",
                dropoff_address="b",
                status=status,
                driver_id=driver_id,
                created=created,
                updated=created,
            )
            .returning(bookings.c.id)
        )
        for pickup in pickups
    ]


class CommittedRows(_CommittedRows):
    """Companies, drivers and bookings committed for real, deleted afterwards.

    For tests of real concurrency (dispatchers on several connections, a
    holder connection taking locks): the ``db`` fixture's rows would be
    invisible to other connections. Use :func:`committed_rows`. The engine
    and cleanup are :class:`myapp.testing.committed.CommittedRows`'.
    """

    token_prefix = "f"

    def __init__(self, url: str, created: datetime = BASE_PICKUP_TIME) -> None:
        super().__init__(url, pool_size=10, max_overflow=10)
        self.created = created
        self.company_ids: list[int] = []
        # parents first: deleted in the reverse order
        self.delete_after(Company, lambda: Company.id.in_(self.company_ids))
        self.delete_after(Driver, lambda: Driver.company_id.in_(self.company_ids))
        self.delete_after(Booking, lambda: Booking.company_id.in_(self.company_ids))

    def company(
        self, drivers: int, bookings: list[datetime] | tuple[datetime, ...] = (), name: str = "real"
    ) -> tuple[int, list[int], list[int]]:
        """A company, ``drivers`` active drivers and pending bookings at ``bookings``: their ids."""
        with self.engine.begin() as conn:
            company_id, driver_ids = insert_company_rows(conn, name, drivers, self.created)
            self.company_ids.append(company_id)
            booking_ids = insert_booking_rows(
                conn, company_id, list(bookings), created=self.created
            )
        return company_id, driver_ids, booking_ids

    def bookings(
        self,
        company_id: int,
        pickups: list[datetime],
        status: str = "pending",
        driver_id: int | None = None,
    ) -> list[int]:
        with self.engine.begin() as conn:
            return insert_booking_rows(
                conn, company_id, pickups, status, driver_id, created=self.created
            )

    def rows(self, company_id: int) -> list[tuple[int, int | None, Any, str]]:
        """``(id, driver_id, pickup_time, status)`` of the company's bookings, by id."""
        from sqlalchemy import select

        with self.engine.connect() as conn:
            return [
                tuple(row)
                for row in conn.execute(
                    select(Booking.id, Booking.driver_id, Booking.pickup_time, Booking.status)
                    .where(Booking.company_id == company_id)
                    .order_by(Booking.id)
                )
            ]

    def run(self, company_id: int, now: datetime) -> Any:
        """``myapp.services.dispatch.run`` in a scope of this engine's database."""
        from myapp.services import dispatch

        with self.database.scope():
            return dispatch.run(company_id=company_id, now=now)

    def lock_waiters(
        self, query_like: str, timeout: float = 30, give_up: Callable[[], Any] | None = None
    ) -> int:
        """:func:`myapp.testing.helpers.lock_waiters` on this database."""
        from myapp.testing.helpers import lock_waiters

        return lock_waiters(self.engine, query_like, timeout=timeout, give_up=give_up)


@contextmanager
def committed_rows(engine: Any, created: datetime = BASE_PICKUP_TIME) -> Iterator[CommittedRows]:
    """:class:`CommittedRows` on ``engine``'s database; checks no connection is left checked out."""
    with CommittedRows.on(engine, created=created) as data:
        yield data
