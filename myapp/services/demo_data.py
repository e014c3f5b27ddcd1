"""Deterministic demo data: companies, drivers and bookings over a month (``myapp seed``).

:func:`generate_demo_data` draws everything from ``random.Random(seed)``:
the same seed and sizes give the same companies, drivers and bookings (names,
addresses, pickup times, statuses, which driver has which booking), on any
backend. Database ids are whatever the database gives; the API tokens made
for the companies (``with_tokens``) are random on purpose (a token derived
from a public seed would be guessable) and are the only part that differs.

What it writes, per company: ``drivers`` drivers (about one in eight
inactive) and ``bookings`` bookings whose pickup times fall on quarter hours
of ``period`` (UTC). Statuses are drawn with the weights of
:data:`STATUS_WEIGHTS`; completed and assigned bookings get an active driver
free at that time (the database forbids a driver twice at the same pickup
time), and fall back to pending when none is free; pending and cancelled
bookings have no driver. It only adds rows: run it on an empty database to
get exactly the same data as another run.

Transactional contract: it runs through :func:`~myapp.db.db_batch_operation`
(call it outside any unit of work, in a scope: a command with ``atomic =
False``, ``with db.scope():``, the test fixtures); rows are written in
batches of ``batch_size``, each a committed transaction, so large sizes keep
memory flat (except one set of taken driver slots per company). On error the
batches already committed stay (demo data: run it again on a fresh database).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import insert

from myapp.db import BatchProgress, db_batch_operation
from myapp.models import Booking, BookingStatus, Company, Driver

from .invoicing import parse_period

#: the relative weights of the statuses drawn for demo bookings
STATUS_WEIGHTS: dict[str, int] = {
    BookingStatus.COMPLETED.value: 50,
    BookingStatus.PENDING.value: 25,
    BookingStatus.ASSIGNED.value: 10,
    BookingStatus.CANCELLED.value: 15,
}
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
    period: str
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


def generate_demo_data(
    *,
    seed: int = 42,
    companies: int = 3,
    drivers: int = 5,
    bookings: int = 50,
    period: str = "2026-10",
    batch_size: int = 500,
    with_tokens: bool = True,
    progress: Callable[[BatchProgress], Any] | None = None,
) -> DemoSummary:
    """Write ``companies`` companies with ``drivers`` drivers and ``bookings`` bookings each.

    Deterministic for a given ``seed`` and sizes (see the module
    documentation). ``period`` is ``YYYY-MM``. ``with_tokens``: give each
    company a fresh API token (stored hashed; the token is in the summary).
    Writes in committed batches of ``batch_size`` rows through
    :func:`~myapp.db.db_batch_operation` (``progress`` is passed to it), so it
    must run outside any unit of work. Returns a :class:`DemoSummary`.
    """
    for name, value in (("companies", companies), ("drivers", drivers), ("bookings", bookings)):
        if value < 0:
            raise ValueError(f"{name} must be zero or more, not {value}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    bounds = parse_period(period)
    slots = int((bounds.end - bounds.start) / SLOT)
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    rng = random.Random(seed)
    summary = DemoSummary(seed=seed, period=bounds.name)
    if with_tokens:
        from myapp.api.tokens import new_token_and_hash

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
                slot = rng.randrange(slots)
                status = rng.choices(statuses, weights)[0]
                pickup_address = _address(rng)
                dropoff_address = _address(rng)
                driver_id = None
                if status in (BookingStatus.COMPLETED.value, BookingStatus.ASSIGNED.value):
                    index = _free_driver(rng, active_indexes, taken, slot)
                    if index is None:
                        status = BookingStatus.PENDING.value
                    else:
                        taken.add((index, slot))
                        driver_id = driver_ids[index]
                summary.statuses[status] += 1
                rows.append(
                    {
                        "company_id": company_id,
                        "pickup_time": bounds.start + slot * SLOT,
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


__all__ = ["STATUS_WEIGHTS", "DemoCompany", "DemoSummary", "generate_demo_data"]
