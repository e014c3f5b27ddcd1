"""The dashboard through WebTest: login, CSRF, what a page shows, dispatch now, logout."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from dashboard_helpers import Company
from sqlalchemy import func, select

from myapp.models import Booking
from myapp.models import Company as CompanyModel
from myapp.models.dispatch import DispatchRun
from myapp.services.tokens import new_token_and_hash
from myapp.testing.factories import BookingFactory, DriverFactory, InvoiceFactory


def _csrf(page: Any) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, "no CSRF token in the page"
    return match.group(1)


def _login(testapp: Any, company: Company) -> Any:
    form = testapp.get("/dashboard/login")
    response = testapp.post(
        "/dashboard/login", {"token": company.token, "csrf_token": _csrf(form)}, status=303
    )
    assert response.location.endswith("/dashboard")
    return testapp.get("/dashboard")


def _count(db: Any, model: Any, *where: Any) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def test_pages_need_a_session(testapp: Any) -> None:
    for path in ("/dashboard",):
        response = testapp.get(path, status=302)
        assert response.location.endswith("/dashboard/login")
    response = testapp.post("/dashboard/dispatch", status=302)
    assert response.location.endswith("/dashboard/login")


def test_dashboard_routes_are_all_protected(app: Any) -> None:
    """Generated from the route table: every /dashboard route is the login, the logout, or needs
    the dashboard permission (a new page without one fails here)."""
    public = {"dashboard.login", "dashboard.logout"}
    for item in app.registry.introspector.get_category("views"):
        name = item["introspectable"]["route_name"]
        if not name or not name.startswith("dashboard.") or name in public:
            continue
        permissions = [r["value"] for r in item["related"] if r.category_name == "permissions"]
        assert permissions == ["dashboard"], name


def test_login_with_a_bad_token(testapp: Any, acme: Company) -> None:
    form = testapp.get("/dashboard/login")
    page = testapp.post("/dashboard/login", {"token": "mya_nope", "csrf_token": _csrf(form)})
    assert "That token is not valid." in page.text
    testapp.get("/dashboard", status=302)


def test_the_admin_token_does_not_open_a_dashboard(testapp: Any, admin_token: str) -> None:
    form = testapp.get("/dashboard/login")
    page = testapp.post("/dashboard/login", {"token": admin_token, "csrf_token": _csrf(form)})
    assert "That token is not valid." in page.text


def test_login_needs_the_csrf_token(testapp: Any, acme: Company) -> None:
    testapp.get("/dashboard/login")
    page = testapp.post("/dashboard/login", {"token": acme.token}, status=400)
    assert "Form expired" in page.text and page.content_type == "text/html"
    page = testapp.post(
        "/dashboard/login", {"token": acme.token, "csrf_token": "forged"}, status=400
    )
    testapp.get("/dashboard", status=302)


def test_the_page(testapp: Any, db: Any, acme: Company, globex: Company) -> None:
    ada = DriverFactory(company_id=acme.id, name="Ada")
    DriverFactory(company_id=acme.id, name="Resting Rita", active=False)
    pending = BookingFactory(company_id=acme.id, pickup_address="1 Rue <b>Bold</b>")
    BookingFactory(driver=ada)
    done = BookingFactory(
        driver=ada, status="completed", pickup_time=datetime(2040, 10, 5, tzinfo=UTC)
    )
    InvoiceFactory(booking=done, amount=Decimal("42.5"))
    theirs = BookingFactory(company_id=globex.id, pickup_address="Globex Secret Street")
    db.session.commit()

    page = _login(testapp, acme)
    assert f'data-company-id="{acme.id}"' in page.text
    counts = dict(re.findall(r'data-status-count="(\w+)">(\d+)<', page.text))
    assert counts == {"pending": "1", "assigned": "1", "completed": "1", "cancelled": "0"}
    assert f'data-booking-id="{pending.id}" data-status="pending"' in page.text
    assert "Resting Rita" in page.text and "inactive" in page.text
    assert "1 Rue &lt;b&gt;Bold&lt;/b&gt;" in page.text  # escaped
    assert (
        "Globex Secret Street" not in page.text
        and f'data-booking-id="{theirs.id}"' not in page.text
    )
    assert "2040-10" in page.text and "42.50" in page.text
    assert "No dispatch has been run" in page.text


def test_dispatch_now(testapp: Any, db: Any, acme: Company) -> None:
    DriverFactory(company_id=acme.id, name="Ada")
    bookings = [BookingFactory(company_id=acme.id) for _ in range(2)]
    db.session.commit()
    page = _login(testapp, acme)

    # without the CSRF token nothing is dispatched
    testapp.post("/dashboard/dispatch", status=400)
    assert _count(db, Booking, Booking.status == "pending") == 2
    assert _count(db, DispatchRun) == 0

    response = testapp.post("/dashboard/dispatch", {"csrf_token": _csrf(page)}, status=303)
    assert response.location.endswith("/dashboard#dispatch")
    page = response.follow()
    assert "Dispatch done: 2 assigned, 0 left pending." in page.text
    assert 'data-assigned="2"' in page.text and "from the dashboard" in page.text
    assert _count(db, Booking, Booking.status == "assigned") == 2
    run = db.session.scalars(select(DispatchRun)).one()
    assert (run.source, run.assigned_count, run.company_id) == ("dashboard", 2, acme.id)
    assert {a["booking_id"] for a in run.details["assigned"]} == {b.id for b in bookings}
    # the flash message is shown once
    assert "Dispatch done" not in testapp.get("/dashboard").text


def test_the_session_cookie(testapp: Any, acme: Company) -> None:
    _login(testapp, acme)
    cookies = [c for c in testapp.cookiejar if c.name == "myapp_dashboard"]
    assert len(cookies) == 1
    cookie = cookies[0]
    assert cookie.path == "/dashboard"
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "Lax"
    # signed, not encrypted: so it must not carry the token (nor the stored hash)
    raw = base64.urlsafe_b64decode(cookie.value.strip('"') + "==")
    assert acme.token.encode() not in raw


def test_rotating_the_token_ends_dashboard_sessions(testapp: Any, db: Any, acme: Company) -> None:
    _login(testapp, acme)
    testapp.get("/dashboard", status=200)
    company = db.session.get(CompanyModel, acme.id)
    company.api_token_hash = new_token_and_hash()[1]
    db.session.commit()
    testapp.get("/dashboard", status=302)


def test_logout(testapp: Any, acme: Company) -> None:
    page = _login(testapp, acme)
    response = testapp.post("/dashboard/logout", {"csrf_token": _csrf(page)}, status=303)
    assert response.location.endswith("/dashboard/login")
    testapp.get("/dashboard", status=302)


@pytest.mark.parametrize("secret", ["", "short"])
def test_the_session_secret_is_required_in_production(secret: str) -> None:
    from pyramid.exceptions import ConfigurationError

    from myapp.dashboard import session_factory_from_settings

    with pytest.raises(ConfigurationError):
        session_factory_from_settings({"myapp.env": "prod", "myapp.session_secret": secret})
