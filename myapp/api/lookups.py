"""Loading a company's objects for a view: another company's ids are simply not found."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pyramid.httpexceptions import HTTPNotFound
from pyramid.request import Request
from sqlalchemy import select

from myapp.models import Booking, Company, Driver

from .errors import BadField, Conflict


def path_id(request: Request, name: str) -> int:
    """A validated integer path parameter."""
    return int(request.openapi_validated.parameters.path[name])


def body(request: Request) -> dict[str, Any]:
    """The validated JSON body (an empty dict for operations without one)."""
    return dict(request.openapi_validated.body or {})


def created(request: Request, route_name: str, **ids: Any) -> None:
    """Answer 201 Created with the new resource's URL in ``Location``."""
    request.response.status = 201
    request.response.location = request.route_url(route_name, **ids)


def utc_time(data: dict[str, Any], field: str) -> datetime:
    """The validated date-time ``data[field]`` in UTC; 400 if it has no UTC equivalent.

    ``9999-12-31T23:59:59-23:59`` is a valid RFC 3339 time whose UTC value is past
    year 9999: Python cannot represent it (``OverflowError``).
    """
    try:
        return data[field].astimezone(UTC)
    except OverflowError:
        raise BadField(field, "out of range: its UTC time must fall in years 1 to 9999") from None


def company_or_404(request: Request, *, lock: bool = False) -> Company:
    """The company named by ``{company_id}``; ``lock``: SELECT ... FOR UPDATE, freshly read.

    The security policy may have loaded this company into the session already
    (a company token is looked up by its hash): a locking read must overwrite
    that copy with the row as it is once the lock is granted.
    """
    stmt = select(Company).where(Company.id == path_id(request, "company_id"))
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    company = request.dbsession.scalars(stmt).first()
    if company is None:
        raise HTTPNotFound()
    return company


def driver_or_404(request: Request, company_id: int) -> Driver:
    stmt = select(Driver).where(
        Driver.id == path_id(request, "driver_id"), Driver.company_id == company_id
    )
    driver = request.dbsession.scalars(stmt).first()
    if driver is None:
        raise HTTPNotFound()
    return driver


def booking_or_404(request: Request, company_id: int, *, lock: bool = False) -> Booking:
    """The company's booking named by ``{booking_id}``; ``lock``: SELECT ... FOR UPDATE.

    Locking (PostgreSQL) makes a status change wait for a dispatcher holding the
    row, instead of deciding on a status that is about to change.
    """
    stmt = select(Booking).where(
        Booking.id == path_id(request, "booking_id"), Booking.company_id == company_id
    )
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    booking = request.dbsession.scalars(stmt).first()
    if booking is None:
        raise HTTPNotFound()
    return booking


def assignable_driver(request: Request, company_id: int, driver_id: int) -> Driver:
    """A driver of this company who may take bookings: 400 if unknown here, 409 if inactive."""
    stmt = select(Driver).where(Driver.id == driver_id, Driver.company_id == company_id)
    driver = request.dbsession.scalars(stmt).first()
    if driver is None:
        raise BadField("driver_id", f"no driver {driver_id} in this company")
    if not driver.active:
        raise Conflict(f"driver {driver_id} is inactive and cannot take bookings")
    return driver
