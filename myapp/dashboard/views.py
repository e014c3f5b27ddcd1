"""Dashboard pages. Reads happen in the request's unit of work; "dispatch now" is durable."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from pyramid.csrf import BadCSRFOrigin, BadCSRFToken
from pyramid.httpexceptions import HTTPNotFound, HTTPSeeOther
from pyramid.request import Request
from pyramid.view import exception_view_config, view_config
from sqlalchemy import func, select

from myapp.api.security import dashboard_login, dashboard_logout
from myapp.db import MaintenanceMode
from myapp.models import BOOKING_STATUSES, Booking, Company, Driver, Invoice
from myapp.services.bookings import bookings_query, local_day_bounds, page_of
from myapp.services.dispatching import dispatch_and_record
from myapp.services.dispatching import last_run as last_dispatch_run

from .charts import horizontal_bars, stacked_bars

TEMPLATES = "myapp:templates/"
#: bookings per page of the bookings table
BOOKINGS_PER_PAGE = 25
#: the bookings-per-day chart: days before and after today
CHART_DAYS_BACK = 14
CHART_DAYS_AHEAD = 7
INVOICES_SHOWN = 50
#: how the page names where a dispatch was run
SOURCE_LABELS = {"cli": "command line", "api": "API", "dashboard": "dashboard"}


def _local(request: Request, value: datetime | None) -> str:
    """A time in the application's time zone, with the zone's abbreviation (CET, CEST...)."""
    if value is None:
        return ""
    return value.astimezone(request.db.timezone).strftime("%a %d %b %Y %H:%M %Z")


def _filters(request: Request, statuses: tuple[str, ...], driver_ids: set[int]) -> dict[str, Any]:
    """The bookings filters of the query string; a value that makes no sense is ignored."""
    status = request.GET.get("status") or None
    if status not in statuses:
        status = None
    driver: int | None = None
    raw_driver = request.GET.get("driver", "")
    if raw_driver.isdigit() and int(raw_driver) in driver_ids:
        driver = int(raw_driver)
    day: date | None = None
    try:
        day = date.fromisoformat(request.GET.get("day", ""))
    except ValueError:
        day = None
    raw_page = request.GET.get("page", "1")
    page = int(raw_page) if raw_page.isdigit() and 0 < int(raw_page) < 1_000_000 else 1
    return {"status": status, "driver": driver, "day": day, "page": page}


def _query_string(filters: dict[str, Any], **changes: Any) -> str:
    values = {**filters, **changes}
    pairs = {
        "status": values["status"],
        "day": values["day"].isoformat() if values["day"] else None,
        "driver": values["driver"],
        "page": values["page"] if values["page"] != 1 else None,
    }
    return urlencode({k: v for k, v in pairs.items() if v is not None})


def _charts(request: Request, company_id: int, drivers: list[Driver]) -> dict[str, Any]:
    """Bookings per local day and status (the past two weeks and the coming week), driver loads."""
    session = request.dbsession
    zone = request.db.timezone
    today = datetime.now(zone).date()
    days = [today + timedelta(days=n) for n in range(-CHART_DAYS_BACK, CHART_DAYS_AHEAD + 1)]
    start, _ = local_day_bounds(days[0], zone)
    _, end = local_day_bounds(days[-1], zone)
    index = {day: i for i, day in enumerate(days)}
    per_day = {status: [0] * len(days) for status in BOOKING_STATUSES}
    rows = session.execute(
        select(Booking.pickup_time, Booking.status, func.count())
        .where(
            Booking.company_id == company_id,
            Booking.pickup_time >= start,
            Booking.pickup_time < end,
        )
        .group_by(Booking.pickup_time, Booking.status)
    )
    for pickup, status, count in rows:
        i = index.get(pickup.astimezone(zone).date())
        if i is not None and status in per_day:
            per_day[status][i] += count
    loads: dict[int, dict[str, int]] = {d.id: {"assigned": 0, "completed": 0} for d in drivers}
    for driver_id, status, count in session.execute(
        select(Booking.driver_id, Booking.status, func.count())
        .where(
            Booking.company_id == company_id,
            Booking.driver_id.is_not(None),
            Booking.status.in_(("assigned", "completed")),
        )
        .group_by(Booking.driver_id, Booking.status)
    ):
        if driver_id in loads:
            loads[driver_id][status] = count
    return {
        "per_day": stacked_bars(
            days,
            per_day,
            today=today,
            title=f"Bookings per day ({zone.key}), {days[0]:%d %b} to {days[-1]:%d %b}",
        ),
        "driver_load": horizontal_bars(
            [(d.name, loads[d.id]) for d in drivers],
            title="Bookings per driver: assigned (to come) and completed",
        ),
        "days_back": CHART_DAYS_BACK,
        "days_ahead": CHART_DAYS_AHEAD,
    }


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
    """Counts, charts, filtered and paged bookings, drivers, last dispatch and invoices."""
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
    filters = _filters(request, BOOKING_STATUSES, set(driver_names))
    listing = page_of(
        session,
        bookings_query(
            company_id,
            status=filters["status"],
            driver_id=filters["driver"],
            day=filters["day"],
            timezone=request.db.timezone,
        ),
        filters["page"],
        BOOKINGS_PER_PAGE,
    )
    bookings = [
        {
            "id": b.id,
            "status": b.status,
            "pickup": _local(request, b.pickup_time),
            "from": b.pickup_address,
            "to": b.dropoff_address,
            "driver": driver_names.get(b.driver_id, "") if b.driver_id else "",
        }
        for b in listing.items
    ]
    pagination = {
        "page": listing.page,
        "pages": listing.pages,
        "total": listing.total,
        "previous": _query_string(filters, page=listing.page - 1) if listing.page > 1 else None,
        "next": (
            _query_string(filters, page=listing.page + 1) if listing.page < listing.pages else None
        ),
    }
    sections = [{"status": status, "count": counts.get(status, 0)} for status in BOOKING_STATUSES]

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
        "bookings": bookings,
        "filters": filters,
        "pagination": pagination,
        "charts": _charts(request, company_id, list(drivers)),
        "timezone": request.db.timezone.key,
        "statuses": BOOKING_STATUSES,
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
