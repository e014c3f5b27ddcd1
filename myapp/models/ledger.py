"""The ledger: an append-only journal of invoiced amounts, in its own database when configured.

When a database named ``ledger`` is configured (``myapp.databases = ledger``,
``LEDGER_DATABASE_URL``), invoice generation writes one :class:`LedgerEntry`
per invoice there, in the same unit of work as the invoices of the main
database (which mark the bookings invoiced): the unit commits in both or in
neither (two-phase commit, docs/multiple-databases.md). Without a ledger
database nothing is written here and invoicing works as before.

The ledger has its own metadata (:data:`LedgerBase.metadata`), not the main
database's: alembic migrates the main database only, and the ledger's one
table is created, if missing, when invoicing starts (:func:`ensure_ledger_schema`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Numeric, String
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from myapp.db import UTCDateTime, utcnow

#: the name of the ledger database among the configured databases
LEDGER = "ledger"


class LedgerBase(DeclarativeBase):
    """The ledger database's tables (a metadata of their own)."""


class LedgerEntry(LedgerBase):
    """One invoiced amount: what the accounting side reads. One per booking, never updated."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(unique=True)
    company_id: Mapped[int] = mapped_column(index=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    period: Mapped[str] = mapped_column(String(7), index=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def ensure_ledger_schema(engine: Engine) -> None:
    """Create the ledger's table on ``engine`` if it is missing (idempotent)."""
    LedgerBase.metadata.create_all(engine, checkfirst=True)
