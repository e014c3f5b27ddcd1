"""A company's bookings as the API and the dashboard list them: filters and pages.

Read-only helpers that run in the caller's unit of work (a request's): no
commit, no rollback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, func, select

from myapp.models import Booking


def bookings_query(
    company_id: int,
    *,
    status: str | None = None,
    driver_id: int | None = None,
    day: date | None = None,
    timezone: ZoneInfo | None = None,
) -> Select[Any]:
    """The company's bookings, earliest pickup first; ``day`` is a local day in ``timezone``."""
    stmt = (
        select(Booking)
        .where(Booking.company_id == company_id)
        .order_by(Booking.pickup_time, Booking.id)
    )
    if status is not None:
        stmt = stmt.where(Booking.status == status)
    if driver_id is not None:
        stmt = stmt.where(Booking.driver_id == driver_id)
    if day is not None:
        start, end = local_day_bounds(day, timezone or ZoneInfo("UTC"))
        stmt = stmt.where(Booking.pickup_time >= start, Booking.pickup_time < end)
    return stmt


def local_day_bounds(day: date, timezone: ZoneInfo) -> tuple[datetime, datetime]:
    """``[start, end)`` of a local day, as aware datetimes (23 or 25 hours on DST days)."""
    start = datetime.combine(day, time(0), timezone)
    end = datetime.combine(day + timedelta(days=1), time(0), timezone)
    return start, end


@dataclass
class Page:
    """One page of a listing: its rows, and where it is among the pages."""

    items: list[Any]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return -(-self.total // self.per_page)


def page_of(session: Any, stmt: Select[Any], page: int, per_page: int) -> Page:
    """Run ``stmt`` (already ordered) for one page; a page past the end is empty."""
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = session.scalars(stmt.limit(per_page).offset((page - 1) * per_page)).all()
    return Page(list(rows), page, per_page, total)
