"""The dispatch engine: assign a company's pending bookings to its active drivers.

Two entry points:

:func:`run` — a **durable unit of work**, for scripts, management commands
and tests. It starts with a *defensive rollback* of whatever the current
scope has not committed (in an implicit unit of work, the bridge
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

Set-based (the cost of a booking): the engine reads plain rows, not ORM
objects — the claimed bookings as ``(id, pickup_time)``, the drivers' ids,
their loads and busy slots — applies the policy in memory (a heap of
``(load, driver_id)``, so a booking costs O(log drivers)), and writes every
assignment of the run with one ``UPDATE bookings ... FROM unnest(ids,
drivers)`` per :data:`WRITE_CHUNK` bookings on PostgreSQL (an executemany on
SQLite): five statements per company (claim, drivers, loads, busy slots,
write; the company is looked up only when nothing was claimed), whatever its
number of bookings. Booking objects the caller's session holds are expired
for the columns written, so they reload the assignment; the caller's
pending ORM changes are flushed first.

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
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from heapq import heapify, heappop, heappush, heapreplace
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    String,
    bindparam,
    cast,
    column,
    func,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from transaction.interfaces import TransientError

from myapp.db import (
    NestedTransactionError,
    current_session,
    current_transaction,
    db_transaction,
    is_in_transaction,
    utcnow,
)
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

#: assignments written per ``UPDATE`` statement on PostgreSQL
WRITE_CHUNK = 10_000

# The statements, built once (Core, on the tables: rows are tuples, no ORM objects).
_bookings = Booking.__table__
_drivers = Driver.__table__
_companies = Company.__table__
_COMPANY = select(_companies.c.id).where(_companies.c.id == bindparam("company_id"))


def _claim_statement(pickup: Any) -> Any:
    """The pending bookings, earliest first, locked (``SKIP LOCKED``): ``(id, pickup_time)``."""
    return (
        select(_bookings.c.id, pickup)
        .where(
            _bookings.c.company_id == bindparam("company_id"),
            _bookings.c.status == BookingStatus.PENDING.value,
            _bookings.c.driver_id.is_(None),
        )
        .order_by(_bookings.c.pickup_time, _bookings.c.id)
        .with_for_update(skip_locked=True)
    )


def _busy_statement(pickup: Any) -> Any:
    """``(driver_id, pickup_time)`` of the drivers' bookings between two pickup times."""
    return select(_bookings.c.driver_id, pickup).where(
        _bookings.c.driver_id.in_(bindparam("drivers", expanding=True)),
        _bookings.c.pickup_time.between(bindparam("first"), bindparam("last")),
    )


# psycopg already returns timestamptz as aware datetimes: on PostgreSQL the pickup times skip
# UTCDateTime's per-row conversion (the policy only sorts and compares them); SQLite needs it
_PG_PICKUP = type_coerce(_bookings.c.pickup_time, DateTime(timezone=True))
_CLAIM = {True: _claim_statement(_PG_PICKUP), False: _claim_statement(_bookings.c.pickup_time)}
_BUSY = {True: _busy_statement(_PG_PICKUP), False: _busy_statement(_bookings.c.pickup_time)}
_LOCK_DRIVERS = (
    select(_drivers.c.id)
    .where(_drivers.c.company_id == bindparam("company_id"), _drivers.c.active.is_(True))
    .order_by(_drivers.c.id)
    .with_for_update()
)
_LOADS = (
    select(_bookings.c.driver_id, func.count())
    .where(
        _bookings.c.driver_id.in_(bindparam("drivers", expanding=True)),
        _bookings.c.status == BookingStatus.ASSIGNED.value,
    )
    .group_by(_bookings.c.driver_id)
)
# the two arrays travel as text literals ("{1,2,3}"): joining strings is much cheaper for
# the client than adapting every int of a list
_assignments = (
    func.unnest(
        cast(bindparam("ids", type_=String()), ARRAY(Integer)),
        cast(bindparam("drivers", type_=String()), ARRAY(Integer)),
    )
    .table_valued(column("id", Integer), column("driver_id", Integer))
    .render_derived(name="assignment")
)
#: PostgreSQL: one statement for a whole chunk (``updated`` is set by the column's onupdate)
_WRITE_PG = (
    update(_bookings)
    .where(_bookings.c.id == _assignments.c.id)
    .values(driver_id=_assignments.c.driver_id, status=BookingStatus.ASSIGNED.value)
)
#: SQLite: an executemany of the same change (in-process, no round trips to save)
_WRITE_MANY = (
    update(_bookings)
    .where(_bookings.c.id == bindparam("b_id"))
    .values(driver_id=bindparam("d_id"), status=BookingStatus.ASSIGNED.value)
)
_WRITTEN = ("driver_id", "status", "updated")


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
    caller's transaction should be short. Flushes the caller's pending ORM
    changes first (as a query would), writes with set-based statements, and
    expires the ``driver_id``/``status``/``updated`` of the assigned bookings
    this session holds, so they reload what was written. Raises
    :class:`DoubleBookingConflict` (a ``TransientError``: retry the whole
    transaction) if the database refuses a double booking.
    """
    now = _aware(now)
    result = DispatchResult(company_id)
    session.flush()  # the caller's pending changes are part of the state the policy reads
    dialect = session.connection().dialect.name
    postgresql = dialect == "postgresql"
    if dialect == "sqlite":
        # SQLite's FOR UPDATE: take the database's write lock before reading anything,
        # so a concurrent dispatcher waits (busy timeout) instead of failing its commit
        session.execute(text("UPDATE bookings SET id = id WHERE 0"))
    # (id, pickup_time), earliest first; each row locked, or skipped if another holds it
    pending = session.execute(_CLAIM[postgresql], {"company_id": company_id}).all()
    # a booking references its company (foreign key): only an empty claim needs to ask
    if not pending and session.execute(_COMPANY, {"company_id": company_id}).first() is None:
        result.reason = COMPANY_NOT_FOUND
        return result
    first_due = bisect_left(pending, now, key=itemgetter(1))
    result.unassigned.extend(
        (booking_id, PICKUP_TIME_PASSED) for booking_id, _ in pending[:first_due]
    )
    due = pending[first_due:]
    if not due:
        return result

    driver_ids = session.execute(_LOCK_DRIVERS, {"company_id": company_id}).scalars().all()
    if not driver_ids:
        result.unassigned.extend((booking_id, NO_ACTIVE_DRIVER) for booking_id, _ in due)
        return result

    load: dict[int, int] = dict.fromkeys(driver_ids, 0)
    for driver_id, count in session.execute(_LOADS, {"drivers": driver_ids}):
        load[driver_id] = count
    busy: dict[datetime, set[int]] = defaultdict(set)
    for driver_id, pickup_time in session.execute(
        _BUSY[postgresql], {"drivers": driver_ids, "first": due[0][1], "last": due[-1][1]}
    ):
        busy[pickup_time].add(driver_id)

    assigned = _assign(due, load, busy, result)
    if assigned:
        _write(session, company_id, assigned, postgresql)
    return result


def _assign(
    due: list[Any],
    load: dict[int, int],
    busy: dict[datetime, set[int]],
    result: DispatchResult,
) -> list[tuple[int, int]]:
    """The policy proper, in memory: least-loaded free driver, ties to the lowest id.

    ``due`` is sorted by pickup time, so the drivers this run gives a pickup time
    only matter to the bookings right after it: ``taken`` follows the current
    time. A heap of ``(load, driver_id)`` gives the least-loaded driver; the
    ones busy at that time are popped, set aside and pushed back.
    """
    heap = [(n, driver_id) for driver_id, n in load.items()]
    heapify(heap)
    assigned = result.assigned
    unassigned = result.unassigned
    current: datetime | None = None
    taken: set[int] = set()
    for booking_id, pickup_time in due:
        if pickup_time != current:
            current = pickup_time
            taken = set(busy.get(pickup_time, ()))
        if not taken:
            n, chosen = heap[0]
            heapreplace(heap, (n + 1, chosen))
        else:
            skipped = []
            while heap and heap[0][1] in taken:
                skipped.append(heappop(heap))
            if heap:
                n, chosen = heap[0]
                heapreplace(heap, (n + 1, chosen))
            else:
                chosen = None
            for entry in skipped:
                heappush(heap, entry)
            if chosen is None:
                unassigned.append((booking_id, ALL_DRIVERS_BUSY))
                continue
        taken.add(chosen)
        assigned.append((booking_id, chosen))
    return assigned


def _write(
    session: Any, company_id: int, assigned: list[tuple[int, int]], postgresql: bool
) -> None:
    """Write the assignments: one ``UPDATE ... FROM unnest()`` per chunk on PostgreSQL.

    The claimed rows are ours (locked), so the statement changes exactly them;
    the unique ``(driver_id, pickup_time)`` still checks every row.
    """
    try:
        if postgresql:
            for start in range(0, len(assigned), WRITE_CHUNK):
                chunk = assigned[start : start + WRITE_CHUNK]
                session.execute(
                    _WRITE_PG,
                    {
                        "ids": _int_array(b for b, _ in chunk),
                        "drivers": _int_array(d for _, d in chunk),
                    },
                )
        else:
            session.execute(_WRITE_MANY, [{"b_id": b, "d_id": d} for b, d in assigned])
    except IntegrityError as exc:
        if _is_double_booking(exc):
            raise DoubleBookingConflict(
                f"dispatch company={company_id}: the database refused a double booking "
                f"({exc.orig}); retrying"
            ) from exc
        raise
    _expire_loaded(session, dict(assigned))


def _int_array(values: Any) -> str:
    """A PostgreSQL integer array literal: ``{1,2,3}``."""
    return "{" + ",".join(map(str, values)) + "}"


def _expire_loaded(session: Any, assigned: dict[int, int]) -> None:
    """Expire what the set-based UPDATE changed in the bookings this session holds."""
    for key, obj in list(session.identity_map.items()):
        if key[0] is Booking and key[1][0] in assigned:
            session.expire(obj, _WRITTEN)


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
