"""A company's bookings: list with a status filter, create, read, update, status changes."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from pyramid.request import Request
from sqlalchemy import select

from myapp.models import Booking

from .. import booking_rules as rules
from ..errors import BadField, Conflict
from ..lookups import (
    assignable_driver,
    body,
    booking_or_404,
    company_or_404,
    created,
    utc_time,
)
from ..pagination import paginate
from . import api_view


def serialize_booking(booking: Booking) -> dict[str, Any]:
    return {
        "id": booking.id,
        "company_id": booking.company_id,
        "pickup_time": booking.pickup_time.astimezone(UTC).isoformat(),
        "pickup_address": booking.pickup_address,
        "dropoff_address": booking.dropoff_address,
        "status": booking.status,
        "driver_id": booking.driver_id,
    }


@api_view(route_name="api.bookings", request_method="GET", permission="company")
def list_bookings(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    query = request.openapi_validated.parameters.query
    stmt = (
        select(Booking)
        .where(Booking.company_id == company.id)
        .order_by(Booking.pickup_time, Booking.id)
    )
    if query.get("status") is not None:
        stmt = stmt.where(Booking.status == str(query["status"]))
    if query.get("driver_id") is not None:
        stmt = stmt.where(Booking.driver_id == int(query["driver_id"]))
    return paginate(request, stmt, serialize_booking)


@api_view(route_name="api.bookings", request_method="POST", permission="company")
def create_booking(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    data = body(request)
    booking = Booking(
        company_id=company.id,
        pickup_time=utc_time(data, "pickup_time"),
        pickup_address=data["pickup_address"].strip(),
        dropoff_address=data["dropoff_address"].strip(),
        status=rules.PENDING,
    )
    if data.get("driver_id") is not None:
        rules.assign(booking, assignable_driver(request, company.id, data["driver_id"]))
    request.dbsession.add(booking)
    rules.flush_booking(request.dbsession, booking)
    created(request, "api.booking", company_id=company.id, booking_id=booking.id)
    return serialize_booking(booking)


@api_view(route_name="api.booking", request_method="GET", permission="company")
def get_booking(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    return serialize_booking(booking_or_404(request, company.id))


@api_view(route_name="api.booking", request_method="PATCH", permission="company")
def update_booking(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    booking = booking_or_404(request, company.id, lock=True)
    if booking.status not in rules.EDITABLE:
        raise Conflict(f"booking {booking.id} is {booking.status} and can no longer be changed")
    data = body(request)
    with request.dbsession.no_autoflush:
        if "pickup_time" in data:
            booking.pickup_time = utc_time(data, "pickup_time")
        for field in ("pickup_address", "dropoff_address"):
            if field in data:
                setattr(booking, field, data[field].strip())
        if "driver_id" in data:
            if data["driver_id"] is None:
                rules.release(booking)
            else:
                rules.assign(booking, assignable_driver(request, company.id, data["driver_id"]))
    rules.flush_booking(request.dbsession, booking)
    return serialize_booking(booking)


@api_view(route_name="api.booking_status", request_method="POST", permission="company")
def change_status(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    booking = booking_or_404(request, company.id, lock=True)
    data = body(request)
    target = str(data["status"])
    rules.check_transition(booking, target)
    driver = None
    if target == rules.ASSIGNED:
        if data.get("driver_id") is None:
            raise BadField("driver_id", "required to assign a booking")
        driver = assignable_driver(request, company.id, data["driver_id"])
    elif data.get("driver_id") is not None:
        raise BadField("driver_id", f"only allowed when the status becomes {rules.ASSIGNED}")
    with request.dbsession.no_autoflush:
        rules.change_status(booking, target, driver)
    rules.flush_booking(request.dbsession, booking)
    return serialize_booking(booking)


@api_view(route_name="api.booking_cancel", request_method="POST", permission="company")
def cancel_booking(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    booking = booking_or_404(request, company.id, lock=True)
    rules.check_transition(booking, rules.CANCELLED)
    rules.change_status(booking, rules.CANCELLED, None)
    rules.flush_booking(request.dbsession, booking)
    return serialize_booking(booking)
