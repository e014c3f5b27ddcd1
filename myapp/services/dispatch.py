"""The dispatch engine: assign a company's pending bookings to its active drivers.

This is the seeds' ``engine.run(company_id=...)``. Two entry points:

:func:`run` — a **durable unit of work**, for scripts, management commands
and tests. It starts with a *defensive rollback* of whatever the current
scope has not committed (seed 001: in an implicit unit of work, the bridge
turns ``session.rollback()`` into an abort; committed work is untouched),
then assigns in its own ``db_transaction(durable=True)``, commits, and
returns a :class:`DispatchResult`. Transient failures (serialization
failures, deadlocks, a double booking caught by the database) are retried
from scratch, up to :data:`ATTEMPTS` times. Inside a request or any other
open unit of work it refuses with :class:`~myapp.db.NestedTransactionError`
*before touching anything*: it cannot roll back or commit someone else's
transaction.

:func:`assign_pending_bookings` — the same policy inside the caller's unit of
work (a request's, say): no rollback, no commit; the caller's transaction
commits or aborts it, and a retrying caller (pyramid_retry) replays it.

Policy (deterministic for a given database state and ``now``):

1. The company's pending, unassigned bookings are taken earliest pickup
   first (ties: lowest id). One whose pickup time is before ``now`` is left
   unassigned (``"pickup_time_passed"``).
2. Each booking goes to the least-loaded active driver of the company: the
   fewest bookings in status ``assigned`` (counting those assigned earlier in
   the same run), ties to the lowest driver id.
3. A driver who already has a booking at that pickup time, in any status, is
   never chosen (the database enforces it with the unique
   ``(driver_id, pickup_time)``). With no active driver the booking stays
   pending (``"no_active_driver"``); when every active driver is taken at that
   time, ``"all_drivers_busy"``.
4. An unknown company gives ``reason="company_not_found"`` and writes nothing.

Concurrency (PostgreSQL): the pending bookings are claimed with
``SELECT ... FOR UPDATE SKIP LOCKED`` (two dispatchers never take the same
booking; each skips what the other holds), then the company's active
drivers — every driver this run may choose — are locked ``FOR UPDATE`` in id
order (one statement, one order: dispatchers queue instead of deadlocking).
Loads and busy slots are read *after* that lock, so they include what a
dispatcher that held it before committed. The unique constraint backs it
all: a violation still aborts the attempt and the run is retried. SQLite
has no ``FOR UPDATE``: the engine takes the database's write lock before
its first read (a write that changes nothing), so dispatchers queue on the
busy timeout; "database is locked" is still retried.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from transaction.interfaces import TransientError

from myapp.db import (
    NestedTransactionError,
    current_session,
    db_transaction,
    is_in_transaction,
    utcnow,
)
from myapp.db.bridge import current_transaction
from myapp.models import Booking, BookingStatus, Company, Driver

log = logging.getLogger(__name__)

#: how many times :func:`run` tries its transaction before giving up on transient errors
ATTEMPTS = 5

COMPANY_NOT_FOUND = "company_not_found"
PICKUP_TIME_PASSED = "pickup_time_passed"
NO_ACTIVE_DRIVER = "no_active_driver"
ALL_DRIVERS_BUSY = "all_drivers_busy"

#: the database constraint that forbids double-booking a driver
DOUBLE_BOOKING_CONSTRAINT = "uq_bookings_driver_pickup"


@dataclass
class DispatchResult:
    """What one dispatch did.

    ``assigned``: ``(booking_id, driver_id)`` in assignment order;
    ``unassigned``: ``(booking_id, reason)`` for the pending bookings left
    pending; ``reason``: why nothing was dispatched at all (``None`` when the
    dispatch ran, e.g. ``"company_not_found"``).
    """

    company_id: int
    assigned: list[tuple[int, int]] = field(default_factory=list)
    unassigned: list[tuple[int, str]] = field(default_factory=list)
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "company_id": self.company_id,
            "assigned": [{"booking_id": b, "driver_id": d} for b, d in self.assigned],
            "unassigned": [{"booking_id": b, "reason": r} for b, r in self.unassigned],
            "reason": self.reason,
        }


class DoubleBookingConflict(TransientError):
    """The database refused a double booking that a concurrent dispatcher caused: retry."""


def run(company_id: int, *, now: datetime | None = None) -> DispatchResult:
    """Dispatch ``company_id``'s pending bookings in a durable unit of work; return the result.

    Contract: must be called outside any unit of work, in a scope
    (``with db.scope():``, a management command, the test fixtures). First
    discards what the current scope has not committed (defensive rollback),
    then assigns and commits in its own transaction, retrying transient
    failures. Raises :class:`~myapp.db.NestedTransactionError` inside a
    request or another open unit of work, before anything is rolled back or
    written. ``now`` (timezone-aware; default: the current time) decides
    which pickup times have passed.
    """
    txn = current_transaction()
    if is_in_transaction():
        doomed = txn is not None and txn.isDoomed()
        raise NestedTransactionError(
            "dispatch.run() is a durable unit of work that starts with a defensive rollback: "
            "it cannot run inside "
            + ("a doomed transaction (it could never commit)" if doomed else "an open one")
            + " (a request, db_transaction(), 'with transaction.manager:'). Nothing was rolled "
            "back or written. Inside a request, call assign_pending_bookings() and let the "
            "request commit; otherwise call run() outside the unit of work."
        )
    now = _aware(now)
    session = current_session()
    session.rollback()  # defensive: whatever the scope did not commit is discarded
    return _run_durable(company_id, now)


@db_transaction(durable=True, attempts=ATTEMPTS)
def _run_durable(company_id: int, now: datetime) -> DispatchResult:
    result = assign_pending_bookings(current_session(), company_id, now=now)
    log.info(
        "dispatch company=%s: %d assigned, %d left pending%s",
        company_id,
        len(result.assigned),
        len(result.unassigned),
        f" ({result.reason})" if result.reason else "",
    )
    return result


def assign_pending_bookings(
    session: Any, company_id: int, *, now: datetime | None = None
) -> DispatchResult:
    """Apply the dispatch policy inside the caller's unit of work (no commit, no rollback).

    Takes the row locks described in the module documentation, so the
    caller's transaction should be short. Raises :class:`DoubleBookingConflict`
    (a ``TransientError``: retry the whole transaction) if the database
    refuses a double booking.
    """
    now = _aware(now)
    result = DispatchResult(company_id)
    if session.connection().dialect.name == "sqlite":
        # SQLite's FOR UPDATE: take the database's write lock before reading anything,
        # so a concurrent dispatcher waits (busy timeout) instead of failing its commit
        session.execute(text("UPDATE bookings SET id = id WHERE 0"))
    if session.get(Company, company_id, populate_existing=True) is None:
        result.reason = COMPANY_NOT_FOUND
        return result

    pending = session.scalars(
        select(Booking)
        .where(
            Booking.company_id == company_id,
            Booking.status == BookingStatus.PENDING.value,
            Booking.driver_id.is_(None),
        )
        .order_by(Booking.pickup_time, Booking.id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    due = []
    for booking in pending:
        if booking.pickup_time < now:
            result.unassigned.append((booking.id, PICKUP_TIME_PASSED))
        else:
            due.append(booking)
    if not due:
        return result

    driver_ids = list(
        session.scalars(
            select(Driver.id)
            .where(Driver.company_id == company_id, Driver.active.is_(True))
            .order_by(Driver.id)
            .with_for_update()
        )
    )
    if not driver_ids:
        result.unassigned.extend((booking.id, NO_ACTIVE_DRIVER) for booking in due)
        return result

    load: dict[int, int] = dict.fromkeys(driver_ids, 0)
    for driver_id, count in session.execute(
        select(Booking.driver_id, func.count())
        .where(Booking.driver_id.in_(driver_ids), Booking.status == BookingStatus.ASSIGNED.value)
        .group_by(Booking.driver_id)
    ):
        load[driver_id] = count
    busy: dict[datetime, set[int]] = defaultdict(set)
    for driver_id, pickup_time in session.execute(
        select(Booking.driver_id, Booking.pickup_time).where(
            Booking.driver_id.in_(driver_ids),
            Booking.pickup_time.between(due[0].pickup_time, due[-1].pickup_time),
        )
    ):
        busy[pickup_time].add(driver_id)

    for booking in due:
        taken = busy[booking.pickup_time]
        free = [driver_id for driver_id in driver_ids if driver_id not in taken]
        if not free:
            result.unassigned.append((booking.id, ALL_DRIVERS_BUSY))
            continue
        chosen = min(free, key=lambda driver_id: (load[driver_id], driver_id))
        booking.driver_id = chosen
        booking.status = BookingStatus.ASSIGNED.value
        load[chosen] += 1
        taken.add(chosen)
        result.assigned.append((booking.id, chosen))

    try:
        session.flush()
    except IntegrityError as exc:
        if _is_double_booking(exc):
            raise DoubleBookingConflict(
                f"dispatch company={company_id}: the database refused a double booking "
                f"({exc.orig}); retrying"
            ) from exc
        raise
    return result


def _aware(now: datetime | None) -> datetime:
    if now is None:
        return utcnow()
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: give a timezone-aware 'now'")
    return now


def _is_double_booking(exc: IntegrityError) -> bool:
    diag = getattr(exc.orig, "diag", None)
    if getattr(diag, "constraint_name", None) == DOUBLE_BOOKING_CONSTRAINT:
        return True
    message = str(exc.orig)
    return DOUBLE_BOOKING_CONSTRAINT in message or (
        "bookings.driver_id" in message and "bookings.pickup_time" in message
    )


__all__ = [
    "ALL_DRIVERS_BUSY",
    "ATTEMPTS",
    "COMPANY_NOT_FOUND",
    "NO_ACTIVE_DRIVER",
    "PICKUP_TIME_PASSED",
    "DispatchResult",
    "DoubleBookingConflict",
    "assign_pending_bookings",
    "run",
]
