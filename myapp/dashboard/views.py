"""Dashboard pages. Reads happen in the request's unit of work; "dispatch now" is durable."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

from pyramid.csrf import BadCSRFOrigin, BadCSRFToken
from pyramid.httpexceptions import HTTPNotFound, HTTPSeeOther
from pyramid.request import Request
from pyramid.view import exception_view_config, view_config
from sqlalchemy import func, select

from myapp.api.security import dashboard_login, dashboard_logout
from myapp.db import MaintenanceMode
from myapp.models import BOOKING_STATUSES, Booking, Company, Driver, Invoice
from myapp.services.dispatching import dispatch_and_record
from myapp.services.dispatching import last_run as last_dispatch_run

TEMPLATES = "myapp:templates/"
#: bookings shown per status (the API pages through all of them)
BOOKINGS_PER_STATUS = 25
INVOICES_SHOWN = 50
#: how the page names where a dispatch was run
SOURCE_LABELS = {"cli": "command line", "api": "API", "dashboard": "dashboard"}


def _local(request: Request, value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(request.db.timezone).strftime("%a %d %b %Y %H:%M")


@view_config(
    route_name="dashboard.login",
    request_method="GET",
    renderer=TEMPLATES + "dashboard_login.jinja2",
)
def login_form(request: Request) -> dict[str, Any]:
    return {"error": None, "title": "Log in"}


@view_config(
    route_name="dashboard.login",
    request_method="POST",
    require_csrf=True,
    renderer=TEMPLATES + "dashboard_login.jinja2",
)
def login(request: Request) -> Any:
    token = request.POST.get("token", "")
    identity = dashboard_login(request, token) if token.strip() else None
    if identity is None:
        return {"error": "That token is not valid.", "title": "Log in"}
    return HTTPSeeOther(location=request.route_path("dashboard.home"))


@view_config(route_name="dashboard.logout", request_method="POST", require_csrf=True)
def logout(request: Request) -> HTTPSeeOther:
    dashboard_logout(request)
    return HTTPSeeOther(location=request.route_path("dashboard.login"))


@view_config(
    route_name="dashboard.home",
    request_method="GET",
    permission="dashboard",
    renderer=TEMPLATES + "dashboard.jinja2",
)
def home(request: Request) -> dict[str, Any]:
    """The company's bookings by status, drivers, last dispatch and invoices."""
    session = request.dbsession
    company_id = request.identity.company_id
    company = session.get(Company, company_id)
    if company is None:  # pragma: no cover - the identity was just loaded
        raise HTTPNotFound()

    counts = Counter(
        dict(
            session.execute(
                select(Booking.status, func.count())
                .where(Booking.company_id == company_id)
                .group_by(Booking.status)
            ).all()
        )
    )
    drivers = session.scalars(
        select(Driver).where(Driver.company_id == company_id).order_by(Driver.id)
    ).all()
    driver_names = {driver.id: driver.name for driver in drivers}
    loads = dict(
        session.execute(
            select(Booking.driver_id, func.count())
            .where(Booking.company_id == company_id, Booking.status == "assigned")
            .group_by(Booking.driver_id)
        ).all()
    )
    sections = []
    for status in BOOKING_STATUSES:
        order = (
            Booking.pickup_time.desc()
            if status in ("completed", "cancelled")
            else (Booking.pickup_time)
        )
        bookings = session.scalars(
            select(Booking)
            .where(Booking.company_id == company_id, Booking.status == status)
            .order_by(order, Booking.id)
            .limit(BOOKINGS_PER_STATUS)
        ).all()
        sections.append(
            {
                "status": status,
                "count": counts.get(status, 0),
                "bookings": [
                    {
                        "id": b.id,
                        "pickup": _local(request, b.pickup_time),
                        "from": b.pickup_address,
                        "to": b.dropoff_address,
                        "driver": driver_names.get(b.driver_id, "") if b.driver_id else "",
                    }
                    for b in bookings
                ],
            }
        )

    run = last_dispatch_run(session, company_id)
    last_run = None
    if run is not None:
        data = run.serialize()
        last_run = {
            **data,
            "source": SOURCE_LABELS.get(data["source"], data["source"]),
            "ran_at_local": _local(request, run.created),
            "assigned": [
                {**a, "driver": driver_names.get(a["driver_id"], f"#{a['driver_id']}")}
                for a in data["assigned"]
            ],
        }

    periods = session.scalars(
        select(Invoice.period)
        .where(Invoice.company_id == company_id)
        .group_by(Invoice.period)
        .order_by(Invoice.period.desc())
    ).all()
    period = request.GET.get("period")
    if period not in periods:
        period = periods[0] if periods else None
    invoices: list[Invoice] = []
    total = Decimal("0.00")
    if period is not None:
        invoices = list(
            session.scalars(
                select(Invoice)
                .where(Invoice.company_id == company_id, Invoice.period == period)
                .order_by(Invoice.id)
                .limit(INVOICES_SHOWN)
            )
        )
        total = session.scalar(
            select(func.coalesce(func.sum(Invoice.amount), 0)).where(
                Invoice.company_id == company_id, Invoice.period == period
            )
        )
    invoice_count = (
        session.scalar(
            select(func.count())
            .select_from(Invoice)
            .where(Invoice.company_id == company_id, Invoice.period == period)
        )
        if period
        else 0
    )

    return {
        "title": company.name,
        "company": company,
        "sections": sections,
        "drivers": [
            {"id": d.id, "name": d.name, "active": d.active, "load": loads.get(d.id, 0)}
            for d in drivers
        ],
        "last_run": last_run,
        "periods": periods,
        "period": period,
        "invoices": [
            {"id": i.id, "booking_id": i.booking_id, "amount": f"{Decimal(i.amount):.2f}"}
            for i in invoices
        ],
        "invoice_count": invoice_count,
        "invoice_total": f"{Decimal(total):.2f}",
        "messages": request.session.pop_flash(),
    }


@view_config(
    route_name="dashboard.dispatch",
    request_method="POST",
    permission="dashboard",
    require_csrf=True,
)
def dispatch_now(request: Request) -> HTTPSeeOther:
    """A durable route: no request transaction; the engine commits, then the run is recorded."""
    recorded = dispatch_and_record(request.identity.company_id, source="dashboard")
    if recorded is None:  # the company vanished since the identity was checked
        raise HTTPNotFound()
    request.session.flash(
        f"Dispatch done: {recorded['assigned_count']} assigned, "
        f"{recorded['unassigned_count']} left pending."
    )
    return HTTPSeeOther(location=request.route_path("dashboard.home", _anchor="dispatch"))


@exception_view_config(
    BadCSRFToken, path_info=r"^/dashboard(/|$)", renderer=TEMPLATES + "dashboard_error.jinja2"
)
@exception_view_config(
    BadCSRFOrigin, path_info=r"^/dashboard(/|$)", renderer=TEMPLATES + "dashboard_error.jinja2"
)
def bad_csrf(exc: Exception, request: Request) -> dict[str, Any]:
    """A form without a valid CSRF token (or from another site): nothing was done."""
    request.response.status = 400
    return {
        "title": "Form expired",
        "message": "This form has expired or did not come from this site; nothing was done. "
        "Reload the page and try again.",
    }


@exception_view_config(
    MaintenanceMode, path_info=r"^/dashboard(/|$)", renderer=TEMPLATES + "dashboard_error.jinja2"
)
def maintenance(exc: MaintenanceMode, request: Request) -> dict[str, Any]:
    """A form that would write while the service is read-only: a 503 page; nothing was done."""
    request.response.status = 503
    request.response.headers["Retry-After"] = "60"
    return {
        "title": "Maintenance",
        "message": "The service is in read-only maintenance mode, so nothing was changed. "
        "Reading works; try this again in a few minutes.",
    }
