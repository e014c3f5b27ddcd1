"""Demo data relative to now: companies, drivers, a history of past weeks, bookings to come.

:func:`generate_demo_data` draws everything from ``random.Random(seed)``:
the same seed, sizes and ``now`` give the same companies, drivers and
bookings (names, addresses, pickup times, statuses, which driver has which
booking), on any backend. Database ids are whatever the database gives; the
API tokens made for the companies (``with_tokens``) are random on purpose (a
token derived from a public seed would be guessable).

What it writes, per company: ``drivers`` drivers (about one in eight
inactive) and ``bookings`` bookings on quarter hours around ``now`` (UTC):

* about :data:`FUTURE_SHARE` of them in the coming ``days_ahead`` days:
  pending (most: what ``myapp dispatch`` then assigns), assigned to a free
  active driver, or cancelled;
* the others in the past ``days_back`` days: completed by a free active
  driver (what ``myapp invoices generate`` invoices), or cancelled.

The database forbids a driver twice at the same pickup time: an assigned or
completed booking whose slot has no free active driver is drawn pending
(future) or cancelled (past) instead.

Transactional contract: it runs through :func:`~myapp.db.db_batch_operation`
(call it outside any unit of work, in a scope: a command with ``atomic =
False``, ``with db.scope():``, the test fixtures); rows are written in
batches of ``batch_size``, each a committed transaction, so large sizes keep
memory flat (except one set of taken driver slots per company). On error the
batches already committed stay. :func:`delete_demo_data` empties the domain
tables in one unit of work (``myapp seed --reset``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from myapp.db import BatchProgress, db_batch_operation, db_transaction, utcnow
from myapp.models import Booking, BookingStatus, Company, Driver

#: the relative weights of the statuses of bookings in the past
PAST_WEIGHTS: dict[str, int] = {
    BookingStatus.COMPLETED.value: 80,
    BookingStatus.CANCELLED.value: 20,
}
#: the relative weights of the statuses of bookings to come
FUTURE_WEIGHTS: dict[str, int] = {
    BookingStatus.PENDING.value: 65,
    BookingStatus.ASSIGNED.value: 20,
    BookingStatus.CANCELLED.value: 15,
}
#: the share of the bookings that are in the future
FUTURE_SHARE = 0.4
DAYS_BACK = 35
DAYS_AHEAD = 7
#: pickup times are on quarter hours
SLOT = timedelta(minutes=15)
#: one driver in INACTIVE_ONE_IN is drawn inactive
INACTIVE_ONE_IN = 8

_TOWNS = ("Lausanne", "Genève", "Montreux", "Vevey", "Nyon", "Morges", "Sion", "Fribourg")
_STREETS = (
    "rue du Lac",
    "avenue de la Gare",
    "chemin des Vignes",
    "place du Marché",
    "route de Berne",
    "quai du Rhône",
    "rue de Bourg",
    "avenue d'Ouchy",
)
_COMPANY_WORDS = ("Léman", "Alpes", "Riviera", "Lavaux", "Jura", "Rhône", "Salève", "Chablais")
_COMPANY_KINDS = ("Taxis", "Cabs", "Transports", "Shuttles", "Limousines", "Rides")
_FIRST_NAMES = ("Alice", "Bruno", "Chloé", "David", "Emma", "Farid", "Gaëlle", "Hugo", "Inès")
_LAST_NAMES = ("Favre", "Rochat", "Bonvin", "Perret", "Morel", "Gerber", "Blanc", "Meylan")


@dataclass
class DemoCompany:
    """One company written: its id, name, counts and (if made) its API token, shown once."""

    id: int
    name: str
    drivers: int
    bookings: int
    token: str | None = None


@dataclass
class DemoSummary:
    """What :func:`generate_demo_data` wrote (all of it committed)."""

    seed: int
    now: datetime
    start: datetime
    end: datetime
    companies: list[DemoCompany] = field(default_factory=list)
    drivers: int = 0
    bookings: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    batches: int = 0


def _address(rng: random.Random) -> str:
    return f"{rng.randint(1, 199)} {rng.choice(_STREETS)}, {rng.choice(_TOWNS)}"


def _free_driver(
    rng: random.Random, active: list[int], taken: set[tuple[int, int]], slot: int
) -> int | None:
    """A random active driver free at ``slot``: a random start, then the next free one."""
    if not active:
        return None
    start = rng.randrange(len(active))
    for step in range(len(active)):
        index = active[(start + step) % len(active)]
        if (index, slot) not in taken:
            return index
    return None


def expected_rows(companies: int, drivers: int, bookings: int) -> int:
    """The rows :func:`generate_demo_data` writes for these sizes (for a progress bar)."""
    return companies * (1 + drivers + bookings)


def generate_demo_data(
    *,
    seed: int = 42,
    companies: int = 3,
    drivers: int = 5,
    bookings: int = 50,
    now: datetime | None = None,
    days_back: int = DAYS_BACK,
    days_ahead: int = DAYS_AHEAD,
    batch_size: int = 500,
    with_tokens: bool = True,
    progress: Callable[[BatchProgress], Any] | None = None,
) -> DemoSummary:
    """Write ``companies`` companies with ``drivers`` drivers and ``bookings`` bookings each.

    Pickup times fall in the ``days_back`` days before ``now`` (default: the
    current time) and the ``days_ahead`` days after it (see the module
    documentation). Deterministic for a given ``seed``, sizes and ``now``.
    ``with_tokens``: give each company a fresh API token (stored hashed; the
    token is in the summary). Writes in committed batches of ``batch_size``
    rows through :func:`~myapp.db.db_batch_operation` (``progress`` is passed
    to it), so it must run outside any unit of work. Returns a :class:`DemoSummary`.
    """
    for name, value in (
        ("companies", companies),
        ("drivers", drivers),
        ("bookings", bookings),
        ("days_back", days_back),
        ("days_ahead", days_ahead),
    ):
        if value < 0:
            raise ValueError(f"{name} must be zero or more, not {value}")
    if days_back + days_ahead < 1:
        raise ValueError("days_back + days_ahead must be at least 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    now = utcnow() if now is None else now.astimezone(UTC)
    # the first quarter hour after now: every future slot is still dispatchable
    first_future = datetime.fromtimestamp(
        (now.timestamp() // SLOT.total_seconds() + 1) * SLOT.total_seconds(), UTC
    )
    start = first_future - timedelta(days=days_back)
    end = first_future + timedelta(days=days_ahead)
    past_slots = int((first_future - start) / SLOT)
    future_slots = int((end - first_future) / SLOT)
    past = (list(PAST_WEIGHTS), list(PAST_WEIGHTS.values()))
    future = (list(FUTURE_WEIGHTS), list(FUTURE_WEIGHTS.values()))
    rng = random.Random(seed)
    summary = DemoSummary(seed=seed, now=now, start=start, end=end)
    if with_tokens:
        from .tokens import new_token_and_hash

    def on_commit(state: BatchProgress) -> None:
        summary.batches = state.batches
        if progress is not None:
            progress(state)

    with db_batch_operation(batch_size=batch_size, progress=on_commit) as (session, commit_batch):
        for number in range(1, companies + 1):
            name = f"{rng.choice(_COMPANY_WORDS)} {rng.choice(_COMPANY_KINDS)} {number}"
            token = token_hash = None
            if with_tokens:
                token, token_hash = new_token_and_hash()
            company = Company(name=name, api_token_hash=token_hash)
            team = []
            for _ in range(drivers):
                active = rng.randrange(INACTIVE_ONE_IN) != 0
                driver_name = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
                team.append(Driver(company=company, name=driver_name, active=active))
            session.add(company)
            session.flush()
            company_id = company.id
            driver_ids = [driver.id for driver in team]
            active_indexes = [i for i, driver in enumerate(team) if driver.active]
            del company, team  # expunged at the next commit: keep ids only
            commit_batch()
            summary.companies.append(DemoCompany(company_id, name, drivers, bookings, token))
            summary.drivers += drivers

            taken: set[tuple[int, int]] = set()  # (driver index, slot) already booked
            rows: list[dict[str, Any]] = []
            for _ in range(bookings):
                in_future = future_slots and (not past_slots or rng.random() < FUTURE_SHARE)
                if in_future:
                    slot = past_slots + rng.randrange(future_slots)
                    status = rng.choices(*future)[0]
                else:
                    slot = rng.randrange(past_slots)
                    status = rng.choices(*past)[0]
                pickup_address = _address(rng)
                dropoff_address = _address(rng)
                driver_id = None
                if status in (BookingStatus.COMPLETED.value, BookingStatus.ASSIGNED.value):
                    index = _free_driver(rng, active_indexes, taken, slot)
                    if index is None:  # no driver free at that time
                        status = (
                            BookingStatus.PENDING.value
                            if in_future
                            else BookingStatus.CANCELLED.value
                        )
                    else:
                        taken.add((index, slot))
                        driver_id = driver_ids[index]
                summary.statuses[status] += 1
                rows.append(
                    {
                        "company_id": company_id,
                        "pickup_time": start + slot * SLOT,
                        "pickup_address": pickup_address,
                        "dropoff_address": dropoff_address,
                        "status": status,
                        "driver_id": driver_id,
                    }
                )
                if len(rows) >= batch_size:
                    session.execute(insert(Booking), rows)
                    rows = []
                    commit_batch()
            if rows:
                session.execute(insert(Booking), rows)
                commit_batch()
            summary.bookings += bookings
    return summary


def delete_demo_data() -> dict[str, int]:
    """Delete every invoice, dispatch run, booking, driver and company, in one unit of work.

    Runs its own ``db_transaction()`` (outermost: committed at the end, or
    nothing deleted on error). Returns the number of rows deleted per table.
    """
    from sqlalchemy import delete

    from myapp.models import Invoice
    from myapp.models.dispatch import DispatchRun

    deleted: dict[str, int] = {}
    with db_transaction() as session:
        for model in (Invoice, DispatchRun, Booking, Driver, Company):
            result = session.execute(delete(model))
            deleted[model.__tablename__] = result.rowcount or 0
    return deleted


__all__ = [
    "FUTURE_WEIGHTS",
    "PAST_WEIGHTS",
    "DemoCompany",
    "DemoSummary",
    "delete_demo_data",
    "expected_rows",
    "generate_demo_data",
]
