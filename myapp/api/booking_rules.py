"""A booking's life: the allowed status transitions and the no-double-booking rule.

::

    pending ──assign──▶ assigned ──▶ completed
       │   ◀──release──    │
       └──▶ cancelled ◀────┘

Completed and cancelled are final. Cancelling or releasing frees the driver's
slot (``driver_id`` becomes NULL), so the driver can be booked at that time
again. The database enforces the rule that matters most: a driver never has two
bookings at the same pickup time (``uq_bookings_driver_pickup``); the check here
only words the error nicely, the flush is what decides (a concurrent request can
take the slot between the check and the flush: it then fails at the flush, with
the same 409).

These functions change ORM objects in the caller's unit of work and flush; they
never commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from myapp.models import Booking, BookingStatus, Driver

from .errors import Conflict

PENDING = BookingStatus.PENDING.value
ASSIGNED = BookingStatus.ASSIGNED.value
COMPLETED = BookingStatus.COMPLETED.value
CANCELLED = BookingStatus.CANCELLED.value

TRANSITIONS: dict[str, tuple[str, ...]] = {
    PENDING: (ASSIGNED, CANCELLED),
    ASSIGNED: (COMPLETED, CANCELLED, PENDING),
    COMPLETED: (),
    CANCELLED: (),
}
EDITABLE = (PENDING, ASSIGNED)


def check_transition(booking: Booking, target: str) -> None:
    """409 with the allowed targets unless ``booking`` may go to ``target``."""
    allowed = TRANSITIONS[booking.status]
    if target not in allowed:
        raise Conflict(
            f"booking {booking.id} cannot go from {booking.status} to {target}",
            allowed=list(allowed),
        )


def _slot_taken(
    session: Any, driver_id: int, pickup_time: datetime, booking_id: int | None
) -> bool:
    stmt = select(Booking.id).where(
        Booking.driver_id == driver_id, Booking.pickup_time == pickup_time
    )
    if booking_id is not None:
        stmt = stmt.where(Booking.id != booking_id)
    return session.scalars(stmt.limit(1)).first() is not None


def double_booking(driver_id: int, pickup_time: datetime) -> Conflict:
    return Conflict(
        f"driver {driver_id} already has a booking at {pickup_time.isoformat()}",
        field="driver_id",
    )


def flush_booking(session: Any, booking: Booking) -> None:
    """Flush ``booking``; a taken driver slot (checked first, enforced by the flush) is a 409.

    After an IntegrityError the request's transaction can only abort, which the
    409 response makes it do.
    """
    # read before the flush: a failed flush expires a persistent booking, and reading an
    # expired attribute then raises PendingRollbackError (a 500 instead of the 409)
    driver_id, pickup_time = booking.driver_id, booking.pickup_time
    if driver_id is not None:
        with session.no_autoflush:
            taken = _slot_taken(session, driver_id, pickup_time, booking.id)
        if taken:
            raise double_booking(driver_id, pickup_time)
    try:
        session.flush()
    except IntegrityError as exc:
        if driver_id is not None:
            raise double_booking(driver_id, pickup_time) from exc
        raise


def assign(booking: Booking, driver: Driver) -> None:
    booking.driver_id = driver.id
    booking.status = ASSIGNED


def release(booking: Booking) -> None:
    booking.driver_id = None
    booking.status = PENDING


def change_status(booking: Booking, target: str, driver: Driver | None) -> None:
    """Apply an allowed transition (call :func:`check_transition` first)."""
    if target == ASSIGNED:
        if driver is None:
            raise ValueError("assigning needs a driver")
        assign(booking, driver)
    elif target == PENDING:
        release(booking)
    elif target == CANCELLED:
        booking.driver_id = None
        booking.status = CANCELLED
    else:
        booking.status = target
