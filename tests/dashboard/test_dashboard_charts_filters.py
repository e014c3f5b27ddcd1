"""The dashboard's charts, filters, pagination and time zone (WebTest, server-rendered SVG)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from dashboard_helpers import Company
from test_dashboard_views import _login

from myapp.testing.factories import BookingFactory, DriverFactory

PARIS = ZoneInfo("Europe/Paris")


def rows(page: Any) -> list[tuple[int, str]]:
    return [
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r'data-booking-id="(\d+)" data-status="(\w+)"', page.text)
    ]


def bars(page: Any, chart: str) -> list[dict[str, str]]:
    svg = re.search(rf'<svg class="chart" data-chart="{chart}".*?</svg>', page.text, re.S)
    assert svg, f"no {chart} chart"
    return [
        dict(re.findall(r'(data-[a-z]+)="([^"]*)"', rect))
        for rect in re.findall(r"<rect [^>]*data-count[^>]*>", svg.group(0))
    ]


def seed(db: Any, acme: Company) -> dict[str, Any]:
    """Two drivers (one with a hostile name); 26 pending tomorrow, 3 completed yesterday."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    ada = DriverFactory(company_id=acme.id, name="Ada")
    evil = DriverFactory(company_id=acme.id, name="<b>Evil</b>")
    tomorrow = (now + timedelta(days=1)).astimezone(PARIS).replace(hour=9)
    pending = [
        BookingFactory(company_id=acme.id, pickup_time=tomorrow + timedelta(minutes=15 * n))
        for n in range(26)
    ]
    yesterday = (now - timedelta(days=1)).astimezone(PARIS).replace(hour=10)
    done = [
        BookingFactory(
            driver=ada if n < 2 else evil,
            status="completed",
            pickup_time=yesterday + timedelta(hours=n),
        )
        for n in range(3)
    ]
    assigned = BookingFactory(driver=ada, pickup_time=tomorrow + timedelta(hours=12))
    db.session.commit()
    return {
        "ada": ada.id,
        "evil": evil.id,
        "pending": [b.id for b in pending],
        "done": [b.id for b in done],
        "assigned": assigned.id,
        "tomorrow": tomorrow.date(),
        "yesterday": yesterday.date(),
    }


def test_the_charts_count_what_the_database_holds(testapp: Any, db: Any, acme: Company) -> None:
    data = seed(db, acme)
    page = _login(testapp, acme)

    per_day = bars(page, "bookings-per-day")
    by_day: dict[tuple[str, str], int] = {}
    for bar in per_day:
        key = (bar["data-day"], bar["data-status"])
        by_day[key] = by_day.get(key, 0) + int(bar["data-count"])
    assert by_day[(data["tomorrow"].isoformat(), "pending")] == 26
    assert by_day[(data["tomorrow"].isoformat(), "assigned")] == 1
    assert by_day[(data["yesterday"].isoformat(), "completed")] == 3
    assert sum(by_day.values()) == 30
    assert f'data-today="{datetime.now(PARIS).date().isoformat()}"' in page.text

    load = {
        (b["data-driver"], b["data-status"]): int(b["data-count"])
        for b in bars(page, "driver-load")
    }
    assert load == {
        ("Ada", "assigned"): 1,
        ("Ada", "completed"): 2,
        ("&lt;b&gt;Evil&lt;/b&gt;", "completed"): 1,
    }
    assert "<b>Evil</b>" not in page.text  # escaped in the SVG and everywhere else


def test_times_carry_their_zone(testapp: Any, db: Any, acme: Company) -> None:
    seed(db, acme)
    page = _login(testapp, acme)
    assert "Times are in Europe/Paris." in page.text
    pickups = re.findall(r'<td class="nowrap">([^<]+)</td>', page.text)
    assert pickups and all(p.endswith((" CET", " CEST")) for p in pickups)


def test_filters_by_status_day_and_driver(testapp: Any, db: Any, acme: Company) -> None:
    data = seed(db, acme)
    _login(testapp, acme)

    completed = testapp.get("/dashboard", {"status": "completed"})
    assert sorted(rows(completed)) == sorted((i, "completed") for i in data["done"])
    assert 'id="bookings-total">3<' in completed.text

    by_driver = testapp.get("/dashboard", {"driver": str(data["ada"])})
    ids = {i for i, _ in rows(by_driver)}
    assert ids == {*data["done"][:2], data["assigned"]}

    one_day = testapp.get("/dashboard", {"day": data["yesterday"].isoformat()})
    assert {i for i, _ in rows(one_day)} == set(data["done"])

    both = testapp.get("/dashboard", {"status": "completed", "driver": str(data["evil"])})
    assert rows(both) == [(data["done"][2], "completed")]

    # nonsense is ignored, never an error
    lenient = testapp.get("/dashboard", {"status": "nope", "day": "yesterday", "driver": "x"})
    assert 'id="bookings-total">30<' in lenient.text


def test_pages_of_25(testapp: Any, db: Any, acme: Company) -> None:
    seed(db, acme)
    _login(testapp, acme)
    first = testapp.get("/dashboard")
    assert len(rows(first)) == 25 and "Page 1 of 2" in first.text
    assert 'rel="next" href="?page=2#bookings"' in first.text
    second = testapp.get("/dashboard", {"page": "2"})
    assert len(rows(second)) == 5 and "Page 2 of 2" in second.text
    assert not {i for i, _ in rows(first)} & {i for i, _ in rows(second)}
    filtered = testapp.get("/dashboard", {"status": "pending", "page": "2"})
    assert len(rows(filtered)) == 1
    assert 'rel="prev" href="?status=pending#bookings"' in filtered.text
    beyond = testapp.get("/dashboard", {"page": "9"})
    assert rows(beyond) == [] and "No booking matches." in beyond.text
