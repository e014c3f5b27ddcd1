"""The transport-dispatch domain of seeds 000 and 001: companies, drivers, bookings, invoices.

Rules the database enforces: a driver never has two bookings at the same
pickup time (unique ``(driver_id, pickup_time)``), and a booking is invoiced
at most once (unique ``invoices.booking_id``).

A company's API token is stored only as its SHA-256 (``companies.api_token_hash``,
unique); see :mod:`myapp.services.tokens`. ``DispatchRun`` records what each dispatch
triggered from the API or the dashboard did (the dashboard's "last dispatch").
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from myapp.db import BaseModel, UTCDateTime


class BookingStatus(enum.StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


BOOKING_STATUSES = tuple(s.value for s in BookingStatus)


class Company(BaseModel):
    __tablename__ = "companies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    #: SHA-256 (hex) of the company's API token; the token itself is never stored.
    api_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)

    drivers: Mapped[list[Driver]] = relationship(back_populates="company")

    def serialize(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}


class Driver(BaseModel):
    __tablename__ = "drivers"

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    company: Mapped[Company] = relationship(back_populates="drivers")

    def serialize(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "company_id": self.company_id,
            "name": self.name,
            "active": self.active,
        }


class Booking(BaseModel):
    __tablename__ = "bookings"
    __table_args__ = (
        UniqueConstraint("driver_id", "pickup_time", name="uq_bookings_driver_pickup"),
        CheckConstraint(
            "status IN ('pending', 'assigned', 'completed', 'cancelled')", name="status"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    pickup_time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    pickup_address: Mapped[str] = mapped_column(String(300))
    dropoff_address: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default=BookingStatus.PENDING.value)
    driver_id: Mapped[int | None] = mapped_column(ForeignKey("drivers.id"), index=True)

    company: Mapped[Company] = relationship()
    driver: Mapped[Driver | None] = relationship()

    def serialize(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "company_id": self.company_id,
            "pickup_time": self.pickup_time.isoformat(),
            "pickup_address": self.pickup_address,
            "dropoff_address": self.dropoff_address,
            "status": self.status,
            "driver_id": self.driver_id,
        }


class Invoice(BaseModel):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), unique=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    period: Mapped[str] = mapped_column(String(7), index=True)  # "2026-10"

    booking: Mapped[Booking] = relationship()

    def serialize(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "company_id": self.company_id,
            "booking_id": self.booking_id,
            "amount": str(self.amount),
            "period": self.period,
        }


class DispatchRun(BaseModel):
    """What one dispatch triggered from the API or the dashboard did (written after it committed).

    ``details`` holds ``{"assigned": [{"booking_id", "driver_id"}, ...],
    "unassigned": [{"booking_id", "reason"}, ...]}``.
    """

    __tablename__ = "dispatch_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    assigned_count: Mapped[int] = mapped_column(Integer, default=0)
    unassigned_count: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(64), default=None)
    #: where the dispatch was triggered: "api" or "dashboard"
    source: Mapped[str] = mapped_column(String(16), default="api")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    def serialize(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "company_id": self.company_id,
            "ran_at": self.created.isoformat(),
            "assigned_count": self.assigned_count,
            "unassigned_count": self.unassigned_count,
            "reason": self.reason,
            "source": self.source,
            "assigned": list(self.details.get("assigned", [])),
            "unassigned": list(self.details.get("unassigned", [])),
        }
