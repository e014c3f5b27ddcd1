"""Batch invoicing: one invoice per completed, not-yet-invoiced booking of a month.

:func:`generate_invoices` is the business code behind ``myapp invoices
generate --period 2026-10`` (docs/invoicing.md).

Transactional contract: it runs through :func:`~myapp.db.db_batch_operation`,
so it must be called **outside any unit of work**, in a scope (a management
command with ``atomic = False``, ``with db.scope():``, the test fixtures);
inside a request or another transaction it raises
:class:`~myapp.db.NestedTransactionError` before touching anything. Every
chunk of at most ``batch_size`` bookings is **one committed transaction**:
the invoices of a chunk are all committed or none is.

Idempotent and resumable. Each chunk is read afresh, in its own transaction,
as "the next ``batch_size`` completed bookings of the period, by id, after the
last id seen, **that have no invoice**" (keyset pagination plus an anti-join,
``NOT EXISTS``), so a rerun after a crash at any point skips what the crashed
run committed and finishes the rest, and a second run creates nothing. The
unique constraint on ``invoices.booking_id`` backs it: invoices are written
with ``INSERT ... ON CONFLICT (booking_id) DO NOTHING RETURNING booking_id``
(PostgreSQL and SQLite), so a booking that a *concurrent* generator invoiced
between our read and our insert is skipped and counted in
:attr:`InvoicingSummary.conflicts`; the loser neither crashes nor writes a
duplicate. On PostgreSQL the insert waits for the other generator's
transaction to end before deciding (unique-index locking); both insert their
chunk in ascending booking id, one statement per transaction, so two
generators cannot deadlock each other (a transaction blocked on booking *p*
holds only ids below *p*). On SQLite each chunk's transaction
first takes the database's write lock (a write that changes nothing), so
concurrent generators queue on the busy timeout instead of failing with
"database is locked" when upgrading a read transaction.

Memory stays flat: each chunk is fetched as plain rows (id, company,
pickup time), never ORM objects, and nothing stays in the session between
chunks.

The tariff (:func:`tariff`) is deterministic: it depends on the pickup time
only.

With a ``ledger`` database configured (:mod:`myapp.models.ledger`), each
chunk also writes one ledger entry per invoice it created, to the ledger
database, in the same transaction: the chunk then commits in both databases
or in neither (two-phase commit, docs/multiple-databases.md), so a crash at
any point, followed by ``myapp recover`` and a rerun, leaves exactly one
invoice and one ledger entry per booking. Without one, nothing changes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, exists, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import StatementError

from myapp.db import BatchFailed, BatchProgress, current_scope, current_session, db_batch_operation
from myapp.models import Booking, BookingStatus, Invoice
from myapp.models.ledger import LEDGER, LedgerEntry, ensure_ledger_schema
from myapp.observability.units import observe_unit

log = logging.getLogger(__name__)

#: the default number of bookings invoiced per committed transaction
DEFAULT_BATCH_SIZE = 500

# -- the tariff ---------------------------------------------------------------

#: every ride
BASE_FARE = Decimal("25.00")
#: pickups from 22:00 to 05:59 (UTC)
NIGHT_SURCHARGE = Decimal("10.00")
#: pickups on a Saturday or a Sunday (UTC)
WEEKEND_SURCHARGE = Decimal("5.00")
NIGHT_HOURS = frozenset({22, 23, 0, 1, 2, 3, 4, 5})


def tariff(pickup_time: datetime) -> Decimal:
    """The amount of one completed booking: base fare, plus night and weekend surcharges.

    ``BASE_FARE`` (25.00), ``+ NIGHT_SURCHARGE`` (10.00) when the pickup is
    between 22:00 and 05:59, ``+ WEEKEND_SURCHARGE`` (5.00) on a Saturday or a
    Sunday; hours and days are taken in UTC, so the result never depends on
    the server's or the display time zone. Deterministic: the pickup time
    alone decides.
    """
    if pickup_time.tzinfo is None:
        raise ValueError(f"naive datetime {pickup_time!r}: give a timezone-aware pickup time")
    at = pickup_time.astimezone(UTC)
    amount = BASE_FARE
    if at.hour in NIGHT_HOURS:
        amount += NIGHT_SURCHARGE
    if at.weekday() >= 5:
        amount += WEEKEND_SURCHARGE
    return amount


# -- periods ------------------------------------------------------------------

_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


class InvalidPeriod(ValueError):
    """A period string that is not ``YYYY-MM``."""


@dataclass(frozen=True)
class Period:
    """A calendar month in UTC: ``start <= pickup_time < end``."""

    name: str
    start: datetime
    end: datetime


def parse_period(period: str) -> Period:
    """``"2026-10"`` → the month's UTC bounds; :class:`InvalidPeriod` for anything else."""
    match = _PERIOD.match(period) if isinstance(period, str) else None
    year, month = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if match is None or not 1 <= month <= 12 or year < 1:
        raise InvalidPeriod(
            f"invalid period {period!r}: expected YYYY-MM (a year and a month 01-12, e.g. 2026-10)"
        )
    start = datetime(year, month, 1, tzinfo=UTC)
    if month == 12:
        if year == 9999:
            raise InvalidPeriod(f"invalid period {period!r}: the year is too large")
        end = datetime(year + 1, 1, 1, tzinfo=UTC)
    else:
        end = datetime(year, month + 1, 1, tzinfo=UTC)
    return Period(period, start, end)


# -- the summary --------------------------------------------------------------


@dataclass
class InvoicingSummary:
    """What a run did (committed work only). Also the snapshot passed to ``progress``.

    * ``expected``: completed bookings of the period without an invoice when
      the run started (the progress bar's total);
    * ``considered``: completed bookings of the period this run looked at:
      ``already_invoiced`` plus the candidates of the committed batches;
    * ``created``: invoices this run created and committed;
    * ``already_invoiced``: bookings that had an invoice when the run started;
    * ``conflicts``: candidates a concurrent generator invoiced between our
      read and our insert (skipped, never duplicated);
    * ``batches``: transactions committed with work in them;
    * ``total_amount``: the sum of the invoices created;
    * ``done``: the run finished (the last ``progress`` call).
    """

    period: str
    expected: int = 0
    considered: int = 0
    created: int = 0
    already_invoiced: int = 0
    conflicts: int = 0
    batches: int = 0
    total_amount: Decimal = Decimal("0.00")
    done: bool = False

    @property
    def skipped(self) -> int:
        """Bookings left alone because they were invoiced already (before or meanwhile)."""
        return self.already_invoiced + self.conflicts

    @property
    def processed(self) -> int:
        """Candidates handled by committed batches (created or skipped as conflicts)."""
        return self.created + self.conflicts

    def describe(self) -> str:
        """One line for people: what was committed."""
        return (
            f"period {self.period}: {self.created} invoice(s) created "
            f"(total {self.total_amount:.2f}), {self.skipped} booking(s) already invoiced "
            f"skipped, {self.considered} completed booking(s) considered, "
            f"{self.batches} batch(es) committed"
        )


class InvoicingFailed(BatchFailed):
    """Invoicing stopped on an error: the committed batches stay, the current one was rolled back.

    ``summary`` tells what was committed; ``batches``/``rows`` come from the
    batch operation. Run the generator again to finish: it resumes.
    """

    def __init__(self, message: str, *, failure: BatchFailed, summary: InvoicingSummary) -> None:
        super().__init__(
            message,
            batches=failure.batches,
            rows=failure.rows,
            rolled_back_rows=failure.rolled_back_rows,
        )
        self.summary = summary


# -- the generator ------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """One line: the driver's message for database errors (not the SQL and its parameters)."""
    orig = getattr(exc, "orig", None) if isinstance(exc, StatementError) else None
    message = " ".join(str(orig if orig is not None else exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _completed_in(period: Period) -> Any:
    return and_(
        Booking.status == BookingStatus.COMPLETED.value,
        Booking.pickup_time >= period.start,
        Booking.pickup_time < period.end,
    )


def _candidates(period: Period, after_id: int, limit: int) -> Any:
    """The next ``limit`` completed, uninvoiced bookings of ``period`` with ``id > after_id``."""
    invoiced = exists().where(Invoice.booking_id == Booking.id)
    return (
        select(Booking.id, Booking.company_id, Booking.pickup_time)
        .where(_completed_in(period), Booking.id > after_id, ~invoiced)
        .order_by(Booking.id)
        .limit(limit)
    )


def _insert_statement(dialect: str) -> Any:
    """INSERT that skips bookings invoiced meanwhile and returns the booking ids it wrote."""
    if dialect == "postgresql":
        stmt = pg_insert(Invoice).on_conflict_do_nothing(index_elements=["booking_id"])
    elif dialect == "sqlite":
        stmt = sqlite_insert(Invoice).on_conflict_do_nothing(index_elements=["booking_id"])
    else:  # no portable ON CONFLICT: the anti-join avoids duplicates, the constraint refuses races
        stmt = insert(Invoice)
    return stmt.returning(Invoice.booking_id)


def ledger_configured() -> bool:
    """Is a ``ledger`` database configured for the current scope's database?"""
    database = current_scope().database
    return database is not None and database.has_database(LEDGER)


def _take_write_lock(session: Any) -> None:
    # SQLite: take the write lock before reading, so that a concurrent generator waits on
    # the busy timeout instead of failing when this transaction upgrades from read to write.
    # Sent on the connection: it writes nothing and is not a row of the batch.
    session.connection().exec_driver_sql("UPDATE invoices SET id = id WHERE 0")


@observe_unit("invoicing")
def generate_invoices(
    period: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[InvoicingSummary], Any] | None = None,
) -> InvoicingSummary:
    """Invoice every completed, uninvoiced booking whose pickup time falls in ``period``.

    ``period`` is ``YYYY-MM`` (UTC month boundaries; :class:`InvalidPeriod`
    otherwise, before any database work). One invoice per booking, for the
    booking's company, amount :func:`tariff`, ``period`` as given. Works in
    chunks of ``batch_size`` bookings, each one committed transaction (see the
    module documentation for idempotency, resumability and concurrency).

    ``progress(summary)`` is called with a snapshot after every committed
    batch and once more at the end (``summary.done``); an exception it raises
    stops the run like any other error.

    Must run outside any unit of work (``NestedTransactionError`` otherwise).
    On error raises :class:`InvoicingFailed` (a
    :class:`~myapp.db.BatchFailed`): the committed batches stay, the batch in
    progress is rolled back, ``exc.summary`` says what was committed; run it
    again to finish. Returns the :class:`InvoicingSummary`.
    """
    bounds = parse_period(period)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    summary = InvoicingSummary(period=bounds.name)
    pending = InvoicingSummary(period=bounds.name)  # the batch in progress, not committed yet
    ledger = ledger_configured()
    if ledger:
        database = current_scope().database
        assert database is not None
        ensure_ledger_schema(database.database(LEDGER).engine)

    def on_commit(state: BatchProgress) -> None:
        # called by db_batch_operation right after a batch (or the remainder) committed
        summary.considered += pending.considered
        summary.created += pending.created
        summary.conflicts += pending.conflicts
        summary.total_amount += pending.total_amount
        summary.batches = state.batches
        summary.done = state.done
        pending.considered = pending.created = pending.conflicts = 0
        pending.total_amount = Decimal("0.00")
        if progress is not None:
            progress(replace(summary))

    try:
        with db_batch_operation(
            batch_size=batch_size, auto_commit_batch=False, progress=on_commit
        ) as (session, commit_batch):
            dialect = session.connection().dialect.name
            if dialect == "sqlite":
                _take_write_lock(session)
            total, invoiced = session.execute(
                select(func.count(Booking.id), func.count(Invoice.id))
                .select_from(Booking)
                .outerjoin(Invoice, Invoice.booking_id == Booking.id)
                .where(_completed_in(bounds))
            ).one()
            summary.already_invoiced = invoiced
            summary.considered = invoiced
            summary.expected = total - invoiced
            insert_stmt = _insert_statement(dialect)
            last_id = 0
            while True:
                if dialect == "sqlite":
                    _take_write_lock(session)
                rows = session.execute(_candidates(bounds, last_id, batch_size)).all()
                if not rows:
                    break
                last_id = rows[-1].id
                amounts = {row.id: tariff(row.pickup_time) for row in rows}
                written = session.execute(
                    insert_stmt,
                    [
                        {
                            "company_id": row.company_id,
                            "booking_id": row.id,
                            "amount": amounts[row.id],
                            "period": bounds.name,
                        }
                        for row in rows
                    ],
                ).scalars()
                created = set(written)
                if ledger and created:  # same transaction: committed in both or neither
                    current_session(LEDGER).execute(
                        insert(LedgerEntry),
                        [
                            {
                                "booking_id": row.id,
                                "company_id": row.company_id,
                                "amount": amounts[row.id],
                                "period": bounds.name,
                            }
                            for row in rows
                            if row.id in created
                        ],
                    )
                pending.considered = len(rows)
                pending.created = len(created)
                pending.conflicts = len(rows) - len(created)
                pending.total_amount = sum(
                    (amounts[booking_id] for booking_id in created), Decimal("0.00")
                )
                if pending.conflicts:
                    log.info(
                        "invoices %s: %d booking(s) invoiced meanwhile by another run, skipped",
                        bounds.name,
                        pending.conflicts,
                    )
                commit_batch()  # this chunk is one transaction
    except BatchFailed as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise InvoicingFailed(
            f"invoicing {bounds.name} failed after committing {summary.batches} batch(es) "
            f"({summary.created} invoice(s), total {summary.total_amount:.2f}); the batch in "
            f"progress ({exc.rolled_back_rows} booking(s)) was rolled back; run it again to "
            f"finish: {_describe(cause)}",
            failure=exc,
            summary=replace(summary),
        ) from cause
    log.info("invoices: %s", summary.describe())
    return summary


__all__ = [
    "BASE_FARE",
    "DEFAULT_BATCH_SIZE",
    "NIGHT_SURCHARGE",
    "WEEKEND_SURCHARGE",
    "InvalidPeriod",
    "InvoicingFailed",
    "InvoicingSummary",
    "Period",
    "generate_invoices",
    "parse_period",
    "tariff",
]
